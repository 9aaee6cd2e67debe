//! # Keel flash
//!
//! Everything the visor knows about its persistent storage, written once and tested on the host:
//!
//! * [`Nor`]: a flash driver that enforces the rules of real NOR flash on top of any raw byte
//!   [`Medium`]: pages that erase to `0xFF`, programming in whole program units, and
//!   **programming a unit that is not fully erased is an error**. The page size and program unit
//!   are the medium's [`Geometry`]; the reference board (STM32U5 flavour) has pages of
//!   [`PAGE_SIZE`] bytes and [`PROGRAM_UNIT`]-byte units ([`Geometry::REFERENCE`]), and the
//!   host tests sweep other geometries of real MCUs.
//!   On QEMU the medium is a file-backed RAM region, which would otherwise accept anything; with
//!   these rules, code that works on the virtual device also works on real flash.
//!   `Nor` implements the `embedded-storage` `NorFlash` traits so ecosystem crates can use it.
//! * [`layout`]: the partition map of the device's flash (documented in `docs/flash-layout.md`).
//! * [`RecordLog`]: a power-safe store of the latest fixed-size record, alternating between two
//!   pages; [`SeqLog`] is its 16-byte form (the persistent boot counter); the OTA journal is
//!   another.
//! * [`sim`] (feature `sim`, host only): a flash medium that cuts power before or in the middle
//!   of any write or erase, for exhaustive power-loss tests.
//! * [`crc32`]: CRC-32 (IEEE) for record integrity.
#![no_std]

pub mod factory;
pub mod layout;
mod seqlog;
#[cfg(feature = "sim")]
pub mod sim;

pub use seqlog::{RecordLog, SeqLog, SeqRecord};

/// Erase page size in bytes of the reference board ([`Geometry::REFERENCE`]).
pub const PAGE_SIZE: u32 = 8192;
/// Program unit in bytes of the reference board: the smallest amount written at once, aligned to
/// itself ([`Geometry::REFERENCE`]).
pub const PROGRAM_UNIT: u32 = 16;
/// Value of an erased byte.
pub const ERASED: u8 = 0xFF;
/// The largest program unit a [`Geometry`] may have: buffers that stage one program unit in RAM
/// (`keel-update`'s download) are this big. 32 bytes covers the 256-bit flash word of the
/// STM32H7; 16 (STM32U5, H5), 8 (STM32L4, G4, WB) and 4 (nRF52) fit too.
pub const MAX_PROGRAM_UNIT: u32 = 32;
/// The smallest page a [`Geometry`] may have (it must hold a few journal records).
pub const MIN_PAGE_SIZE: u32 = 256;

/// The shape of a NOR flash: its erase page and its program unit.
///
/// Both are powers of two, the program unit is at most [`MAX_PROGRAM_UNIT`] and the page at least
/// [`MIN_PAGE_SIZE`] (so the unit divides the page). [`Geometry::new`] checks this; a value of
/// this type is always valid.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Geometry {
    page_size: u32,
    program_unit: u32,
}

impl Geometry {
    /// The reference board: 8 KiB pages, 16-byte program units (STM32U5).
    pub const REFERENCE: Geometry = Geometry { page_size: PAGE_SIZE, program_unit: PROGRAM_UNIT };

    /// A geometry of `page_size`-byte erase pages and `program_unit`-byte program units, if
    /// valid (see the type's documentation).
    pub const fn new(page_size: u32, program_unit: u32) -> Option<Geometry> {
        if page_size.is_power_of_two()
            && program_unit.is_power_of_two()
            && program_unit <= MAX_PROGRAM_UNIT
            && page_size >= MIN_PAGE_SIZE
        {
            Some(Geometry { page_size, program_unit })
        } else {
            None
        }
    }

    /// Erase page size in bytes.
    pub const fn page_size(&self) -> u32 {
        self.page_size
    }

    /// Program unit in bytes.
    pub const fn program_unit(&self) -> u32 {
        self.program_unit
    }

    /// True if `offset` starts a page.
    pub const fn is_page_aligned(&self, offset: u32) -> bool {
        offset % self.page_size == 0
    }

    /// True if `offset` starts a program unit.
    pub const fn is_unit_aligned(&self, offset: u32) -> bool {
        offset % self.program_unit == 0
    }

    /// `n` rounded up to a whole number of pages (`None` on overflow).
    pub const fn page_ceil(&self, n: u32) -> Option<u32> {
        match n.checked_add(self.page_size - 1) {
            Some(x) => Some(x & !(self.page_size - 1)),
            None => None,
        }
    }

    /// `n` rounded up to a whole number of program units (`None` on overflow).
    pub const fn unit_ceil(&self, n: u32) -> Option<u32> {
        match n.checked_add(self.program_unit - 1) {
            Some(x) => Some(x & !(self.program_unit - 1)),
            None => None,
        }
    }
}

impl Default for Geometry {
    fn default() -> Self {
        Geometry::REFERENCE
    }
}

/// A write or erase the medium could not complete. On real flash: a programming or erase error
/// reported by the controller; in the host simulator ([`sim`]): power was cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault;

/// Raw byte storage under a [`Nor`] driver. It applies no rules of its own.
pub trait Medium {
    /// Size in bytes.
    fn capacity(&self) -> u32;
    /// Page size and program unit of the flash behind this medium (by default the reference
    /// board's, [`Geometry::REFERENCE`]).
    fn geometry(&self) -> Geometry {
        Geometry::REFERENCE
    }
    /// Copies `buf.len()` bytes starting at `offset` into `buf`. The range is in bounds.
    fn read(&self, offset: u32, buf: &mut [u8]);
    /// Stores `data` at `offset` (one program operation; aligned to program units by [`Nor`]).
    /// The range is in bounds.
    fn write(&mut self, offset: u32, data: &[u8]) -> Result<(), Fault>;
    /// Sets `len` bytes at `offset` to [`ERASED`] (one page erase of the medium's
    /// [`Geometry`]). The range is in bounds.
    fn erase(&mut self, offset: u32, len: u32) -> Result<(), Fault> {
        let ff = [ERASED; 256];
        let mut o = offset;
        while o < offset + len {
            let n = core::cmp::min(ff.len() as u32, offset + len - o);
            self.write(o, &ff[..n as usize])?;
            o += n;
        }
        Ok(())
    }
}

/// Errors of flash operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlashError {
    /// The range is outside the device (or the partition).
    OutOfBounds,
    /// Erase not on page boundaries, or program not on program-unit boundaries.
    Misaligned,
    /// Programming a unit that is not fully erased.
    NotErased,
    /// The medium failed the operation (hardware error; power cut in the simulator). The range
    /// may be partly written or partly erased.
    Fault,
}

impl From<Fault> for FlashError {
    fn from(_: Fault) -> Self {
        FlashError::Fault
    }
}

impl FlashError {
    /// Short description for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            FlashError::OutOfBounds => "out of bounds",
            FlashError::Misaligned => "misaligned",
            FlashError::NotErased => "unit not erased",
            FlashError::Fault => "write or erase failed",
        }
    }
}

impl core::fmt::Display for FlashError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Operation counters, for benchmarks and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlashStats {
    /// Pages erased.
    pub erases: u32,
    /// Program units written.
    pub units_programmed: u32,
    /// Program operations (each writes one or more units).
    pub programs: u32,
}

/// A NOR flash driver enforcing erase/program rules over a raw [`Medium`], with the medium's
/// [`Geometry`].
pub struct Nor<M: Medium> {
    medium: M,
    geometry: Geometry,
    stats: FlashStats,
}

impl<M: Medium> Nor<M> {
    /// Wraps a medium. Its capacity must be a multiple of its page size.
    pub fn new(medium: M) -> Self {
        let geometry = medium.geometry();
        Nor { medium, geometry, stats: FlashStats::default() }
    }

    /// Page size and program unit (the medium's, read once by [`Self::new`]).
    pub fn geometry(&self) -> Geometry {
        self.geometry
    }

    /// Size in bytes.
    pub fn capacity(&self) -> u32 {
        self.medium.capacity()
    }

    /// Operation counters since creation.
    pub fn stats(&self) -> FlashStats {
        self.stats
    }

    /// Gives the medium back.
    pub fn into_inner(self) -> M {
        self.medium
    }

    /// Borrows the medium.
    pub fn medium(&self) -> &M {
        &self.medium
    }

    /// Borrows the medium mutably (tests: to schedule a power cut).
    #[cfg(feature = "sim")]
    pub fn medium_mut_for_tests(&mut self) -> &mut M {
        &mut self.medium
    }

    fn check_range(&self, offset: u32, len: usize) -> Result<(), FlashError> {
        let len = u32::try_from(len).map_err(|_| FlashError::OutOfBounds)?;
        match offset.checked_add(len) {
            Some(end) if end <= self.capacity() => Ok(()),
            _ => Err(FlashError::OutOfBounds),
        }
    }

    /// Reads any byte range.
    pub fn read(&self, offset: u32, buf: &mut [u8]) -> Result<(), FlashError> {
        self.check_range(offset, buf.len())?;
        self.medium.read(offset, buf);
        Ok(())
    }

    /// Erases the page starting at `offset` to `0xFF`.
    pub fn erase_page(&mut self, offset: u32) -> Result<(), FlashError> {
        let page = self.geometry.page_size();
        if !self.geometry.is_page_aligned(offset) {
            return Err(FlashError::Misaligned);
        }
        self.check_range(offset, page as usize)?;
        self.stats.erases += 1;
        self.medium.erase(offset, page)?;
        Ok(())
    }

    /// Erases every page in `from..to` (both page aligned).
    pub fn erase_range(&mut self, from: u32, to: u32) -> Result<(), FlashError> {
        let g = self.geometry;
        if !g.is_page_aligned(from) || !g.is_page_aligned(to) || to < from {
            return Err(FlashError::Misaligned);
        }
        self.check_range(from, (to - from) as usize)?;
        let mut o = from;
        while o < to {
            self.erase_page(o)?;
            o += g.page_size();
        }
        Ok(())
    }

    /// Programs `data` at `offset`. Both must be multiples of the program unit, and every unit
    /// written must be fully erased beforehand. Nothing is written if any unit is not erased.
    pub fn program(&mut self, offset: u32, data: &[u8]) -> Result<(), FlashError> {
        let unit = self.geometry.program_unit() as usize;
        if !self.geometry.is_unit_aligned(offset) || data.len() % unit != 0 {
            return Err(FlashError::Misaligned);
        }
        self.check_range(offset, data.len())?;
        // The range is whole units: it is all erased exactly when every unit in it is.
        if !self.is_erased(offset, data.len() as u32)? {
            return Err(FlashError::NotErased);
        }
        self.stats.units_programmed += (data.len() / unit) as u32;
        self.stats.programs += 1;
        self.medium.write(offset, data)?;
        Ok(())
    }

    /// True if the whole range reads as erased.
    pub fn is_erased(&self, offset: u32, len: u32) -> Result<bool, FlashError> {
        self.check_range(offset, len as usize)?;
        let mut buf = [0u8; 64];
        let mut o = offset;
        while o < offset + len {
            let n = core::cmp::min(buf.len() as u32, offset + len - o) as usize;
            self.medium.read(o, &mut buf[..n]);
            if buf[..n].iter().any(|&b| b != ERASED) {
                return Ok(false);
            }
            o += n as u32;
        }
        Ok(true)
    }
}

impl embedded_storage::nor_flash::NorFlashError for FlashError {
    fn kind(&self) -> embedded_storage::nor_flash::NorFlashErrorKind {
        use embedded_storage::nor_flash::NorFlashErrorKind as K;
        match self {
            FlashError::OutOfBounds => K::OutOfBounds,
            FlashError::Misaligned => K::NotAligned,
            FlashError::NotErased | FlashError::Fault => K::Other,
        }
    }
}

impl<M: Medium> embedded_storage::nor_flash::ErrorType for Nor<M> {
    type Error = FlashError;
}

impl<M: Medium> embedded_storage::nor_flash::ReadNorFlash for Nor<M> {
    const READ_SIZE: usize = 1;
    fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), FlashError> {
        Nor::read(self, offset, bytes)
    }
    fn capacity(&self) -> usize {
        Nor::capacity(self) as usize
    }
}

/// `embedded-storage` wants the sizes as constants: they are the reference board's. On a medium
/// of another [`Geometry`] the driver still checks its real page and unit (a request aligned only
/// to the constants fails with [`FlashError::Misaligned`]); use [`Nor::geometry`] there.
impl<M: Medium> embedded_storage::nor_flash::NorFlash for Nor<M> {
    const WRITE_SIZE: usize = PROGRAM_UNIT as usize;
    const ERASE_SIZE: usize = PAGE_SIZE as usize;
    fn erase(&mut self, from: u32, to: u32) -> Result<(), FlashError> {
        self.erase_range(from, to)
    }
    fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), FlashError> {
        self.program(offset, bytes)
    }
}

/// CRC-32 (IEEE 802.3, reflected, as zlib's `crc32`).
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc = (crc >> 4) ^ CRC_NIBBLE[((crc ^ b as u32) & 0xF) as usize];
        crc = (crc >> 4) ^ CRC_NIBBLE[((crc ^ (b as u32 >> 4)) & 0xF) as usize];
    }
    !crc
}

/// The CRC of every 4-bit value: two lookups per byte, 64 bytes of read-only data (a byte table
/// is 1 KiB, which the visor's flash feels; a bit-at-a-time loop is 4 times slower, which the
/// host power-cut sweep, scanning the journal at every step, feels).
const CRC_NIBBLE: [u32; 16] = {
    let mut t = [0u32; 16];
    let mut i = 0;
    while i < 16 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 4 {
            c = (c >> 1) ^ (0xEDB8_8320 & (c & 1).wrapping_neg());
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
};

/// A [`Medium`] over a byte slice, for host tests and tools.
pub struct SliceMedium<'a>(pub &'a mut [u8]);

impl Medium for SliceMedium<'_> {
    fn capacity(&self) -> u32 {
        self.0.len() as u32
    }
    fn read(&self, offset: u32, buf: &mut [u8]) {
        let o = offset as usize;
        buf.copy_from_slice(&self.0[o..o + buf.len()]);
    }
    fn write(&mut self, offset: u32, data: &[u8]) -> Result<(), Fault> {
        let o = offset as usize;
        self.0[o..o + data.len()].copy_from_slice(data);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flash(mem: &mut [u8]) -> Nor<SliceMedium<'_>> {
        Nor::new(SliceMedium(mem))
    }

    #[test]
    fn crc32_matches_reference() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn erase_sets_whole_page_to_ff_and_counts() {
        let mut mem = [0u8; 2 * PAGE_SIZE as usize];
        let mut f = flash(&mut mem);
        f.erase_page(PAGE_SIZE).unwrap();
        assert!(f.is_erased(PAGE_SIZE, PAGE_SIZE).unwrap());
        assert!(!f.is_erased(0, PAGE_SIZE).unwrap());
        assert_eq!(f.stats().erases, 1);
    }

    #[test]
    fn erase_must_be_page_aligned_and_in_bounds() {
        let mut mem = [0u8; 2 * PAGE_SIZE as usize];
        let mut f = flash(&mut mem);
        assert_eq!(f.erase_page(16), Err(FlashError::Misaligned));
        assert_eq!(f.erase_page(2 * PAGE_SIZE), Err(FlashError::OutOfBounds));
        assert_eq!(f.erase_range(0, 100), Err(FlashError::Misaligned));
        assert_eq!(f.erase_range(PAGE_SIZE, 0), Err(FlashError::Misaligned));
    }

    #[test]
    fn program_requires_unit_alignment() {
        let mut mem = [0xFFu8; PAGE_SIZE as usize];
        let mut f = flash(&mut mem);
        assert_eq!(f.program(8, &[0u8; 16]), Err(FlashError::Misaligned));
        assert_eq!(f.program(0, &[0u8; 15]), Err(FlashError::Misaligned));
        assert_eq!(f.program(0, &[0u8; 17]), Err(FlashError::Misaligned));
        assert_eq!(f.program(PAGE_SIZE - 16, &[0u8; 32]), Err(FlashError::OutOfBounds));
        assert_eq!(f.program(u32::MAX - 15, &[0u8; 16]), Err(FlashError::OutOfBounds));
        f.program(32, &[0x5Au8; 32]).unwrap();
        assert_eq!(f.stats().units_programmed, 2);
    }

    #[test]
    fn programming_an_unerased_unit_fails_even_if_only_clearing_bits() {
        let mut mem = [0xFFu8; PAGE_SIZE as usize];
        let mut f = flash(&mut mem);
        f.program(0, &[0xF0u8; 16]).unwrap();
        // 0xF0 -> 0x00 only clears bits, but the unit is not erased: real STM32U5 flash refuses it.
        assert_eq!(f.program(0, &[0x00u8; 16]), Err(FlashError::NotErased));
        let mut buf = [0u8; 16];
        f.read(0, &mut buf).unwrap();
        assert_eq!(buf, [0xF0u8; 16], "a refused program must not change the unit");
    }

    #[test]
    fn refused_multi_unit_program_writes_nothing() {
        let mut mem = [0xFFu8; PAGE_SIZE as usize];
        let mut f = flash(&mut mem);
        f.program(16, &[1u8; 16]).unwrap();
        assert_eq!(f.program(0, &[2u8; 48]), Err(FlashError::NotErased));
        let mut buf = [0u8; 48];
        f.read(0, &mut buf).unwrap();
        assert_eq!(&buf[..16], &[0xFF; 16]);
        assert_eq!(&buf[16..32], &[1; 16]);
        assert_eq!(&buf[32..], &[0xFF; 16]);
    }

    #[test]
    fn erase_then_program_again_works() {
        let mut mem = [0xFFu8; PAGE_SIZE as usize];
        let mut f = flash(&mut mem);
        f.program(0, &[1u8; 16]).unwrap();
        f.erase_page(0).unwrap();
        f.program(0, &[2u8; 16]).unwrap();
        let mut buf = [0u8; 16];
        f.read(0, &mut buf).unwrap();
        assert_eq!(buf, [2u8; 16]);
    }

    /// A slice with another geometry.
    pub(crate) struct GeoSlice<'a>(pub &'a mut [u8], pub Geometry);

    impl Medium for GeoSlice<'_> {
        fn capacity(&self) -> u32 {
            self.0.len() as u32
        }
        fn geometry(&self) -> Geometry {
            self.1
        }
        fn read(&self, offset: u32, buf: &mut [u8]) {
            let o = offset as usize;
            buf.copy_from_slice(&self.0[o..o + buf.len()]);
        }
        fn write(&mut self, offset: u32, data: &[u8]) -> Result<(), Fault> {
            SliceMedium(self.0).write(offset, data)
        }
    }

    #[test]
    fn geometry_is_validated() {
        assert_eq!(Geometry::new(8192, 16), Some(Geometry::REFERENCE));
        assert_eq!(Geometry::default(), Geometry::REFERENCE);
        assert!(Geometry::new(128 * 1024, 32).is_some());
        assert!(Geometry::new(2048, 8).is_some());
        assert_eq!(Geometry::new(3000, 16), None, "page not a power of two");
        assert_eq!(Geometry::new(4096, 12), None, "unit not a power of two");
        assert_eq!(Geometry::new(4096, 64), None, "unit above MAX_PROGRAM_UNIT");
        assert_eq!(Geometry::new(128, 16), None, "page below MIN_PAGE_SIZE");
        assert_eq!(Geometry::new(0, 0), None);
        let g = Geometry::new(2048, 8).unwrap();
        assert_eq!((g.page_ceil(1), g.page_ceil(2048), g.page_ceil(2049)), (Some(2048), Some(2048), Some(4096)));
        assert_eq!((g.unit_ceil(9), g.unit_ceil(u32::MAX)), (Some(16), None));
    }

    #[test]
    fn the_driver_uses_the_geometry_of_its_medium() {
        let g = Geometry::new(2048, 32).unwrap();
        let mut mem = [0u8; 4 * 2048];
        let mut f = Nor::new(GeoSlice(&mut mem, g));
        assert_eq!(f.geometry(), g);
        assert_eq!(f.erase_page(1024), Err(FlashError::Misaligned), "not a 2 KiB page start");
        f.erase_page(2048).unwrap();
        assert!(f.is_erased(2048, 2048).unwrap() && !f.is_erased(4096, 16).unwrap());
        f.erase_range(4096, 8192).unwrap();
        assert_eq!(f.stats().erases, 3);
        assert_eq!(f.program(2048 + 16, &[0u8; 32]), Err(FlashError::Misaligned), "16 is not a 32-byte unit start");
        assert_eq!(f.program(2048, &[0u8; 16]), Err(FlashError::Misaligned), "half a unit");
        f.program(2048, &[1u8; 64]).unwrap();
        assert_eq!(f.program(2048 + 32, &[2u8; 32]), Err(FlashError::NotErased));
        assert_eq!(f.stats().units_programmed, 2);
    }

    #[test]
    fn implements_embedded_storage_traits() {
        use embedded_storage::nor_flash::{NorFlash, ReadNorFlash};
        let mut mem = [0u8; PAGE_SIZE as usize];
        let mut f = flash(&mut mem);
        NorFlash::erase(&mut f, 0, PAGE_SIZE).unwrap();
        NorFlash::write(&mut f, 0, &[7u8; 16]).unwrap();
        let mut b = [0u8; 4];
        ReadNorFlash::read(&mut f, 2, &mut b).unwrap();
        assert_eq!(b, [7; 4]);
        assert_eq!(<Nor<SliceMedium<'_>> as NorFlash>::WRITE_SIZE, 16);
    }
}
