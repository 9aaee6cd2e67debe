//! Power-safe record logs in two flash pages.
//!
//! [`RecordLog`] keeps the latest of a series of fixed-size records. Each write appends a record
//! `{magic, seq, payload, crc32}` to the page holding the newest record. When that page is full,
//! the *other* page is erased and the record starts it. The newest valid record (highest `seq`,
//! good magic and CRC) always survives a power cut at any point: an interrupted append leaves a
//! torn record that fails its CRC and is skipped (the next write goes after it and never
//! re-programs it), and the page with the previous newest record is never erased while it is the
//! only copy. A half-erased page only holds records older than the other page's.
//!
//! [`SeqLog`] is the 16-byte instance used for the boot counter; the OTA journal
//! (`keel-update`) is a 128-byte instance.
//!
//! Pages and program units are those of the flash given ([`Nor::geometry`]): a record takes a
//! slot of `R` bytes rounded up to whole program units (the rest of the slot is left `0xFF`), and
//! a page holds as many slots as fit.

use crate::{crc32, FlashError, Geometry, Medium, Nor, ERASED, MAX_PROGRAM_UNIT, PAGE_SIZE, PROGRAM_UNIT};

const MAGIC: u32 = 0x314C_534B; // "KSL1" little endian
#[cfg(test)]
const UNITS_PER_PAGE: u32 = PAGE_SIZE / PROGRAM_UNIT;

/// A log of `R`-byte records (`R` a multiple of the reference [`PROGRAM_UNIT`] that divides the
/// reference [`PAGE_SIZE`], at least 16) in the two pages at `base`. Records carry `R - 12` bytes
/// of payload. On flash of another [`Geometry`] each record takes `R` rounded up to whole program
/// units; a page smaller than one record gives [`FlashError::Misaligned`].
#[derive(Clone, Copy, Debug)]
pub struct RecordLog<const R: usize> {
    base: u32,
    magic: u32,
}

struct Scan<const R: usize> {
    /// Newest valid record: (seq, payload, page).
    latest: Option<(u32, [u8; R], u32)>,
    /// First free slot after the last written one, per page (None = page full).
    next_free: [Option<u32>; 2],
}

/// Where records go on flash of one geometry.
#[derive(Clone, Copy)]
struct Slots {
    page: u32,
    /// Bytes per record slot: `R` rounded up to program units.
    stride: u32,
    count: u32,
}

impl<const R: usize> RecordLog<R> {
    const VALID: () = assert!(R >= 16 && R % PROGRAM_UNIT as usize == 0 && PAGE_SIZE as usize % R == 0);

    /// A log in the two pages at `base` (page aligned); `magic` tells its records apart from
    /// other data.
    pub const fn new(base: u32, magic: u32) -> Self {
        #[allow(clippy::let_unit_value)]
        let () = Self::VALID;
        RecordLog { base, magic }
    }

    /// Bytes of payload per record.
    pub const PAYLOAD: usize = R - 12;

    fn decode(&self, b: &[u8; R]) -> Option<u32> {
        let w = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        (w(0) == self.magic && w(R - 4) == crc32(&b[..R - 4])).then(|| w(4))
    }

    fn slots(g: Geometry) -> Result<Slots, FlashError> {
        let stride = g.unit_ceil(R as u32).ok_or(FlashError::Misaligned)?;
        let page = g.page_size();
        if stride > page {
            return Err(FlashError::Misaligned);
        }
        Ok(Slots { page, stride, count: page / stride })
    }

    /// Reads both pages from their ends. Within a page, records are only ever appended after
    /// every used slot, each with a sequence number above every valid record anywhere; so the
    /// last valid record of a page is its newest, and the scan checks CRCs from the last used
    /// slot backwards only until one is valid (usually the first).
    fn scan<M: Medium>(&self, f: &Nor<M>, l: Slots) -> Result<Scan<R>, FlashError> {
        /// Slots checked at once when skipping a page's erased tail.
        const TAIL_BLOCK: u32 = 16;
        let mut s = Scan { latest: None, next_free: [Some(0), Some(0)] };
        for page in 0..2u32 {
            let mut last_used: Option<u32> = None;
            // Skip the page's erased tail a block of slots at a time (a few reads instead of one
            // per slot: a nearly empty page, like the boot counter's after a page switch, has
            // hundreds of erased slots). Only whole erased strides are skipped, which the loop
            // below would skip one by one anyway.
            let mut end = l.count;
            while end >= TAIL_BLOCK
                && f.is_erased(self.base + page * l.page + (end - TAIL_BLOCK) * l.stride, TAIL_BLOCK * l.stride)?
            {
                end -= TAIL_BLOCK;
            }
            for slot in (0..end).rev() {
                let mut b = [0u8; R];
                f.read(self.base + page * l.page + slot * l.stride, &mut b)?;
                if last_used.is_none() {
                    if b.iter().all(|&x| x == ERASED) {
                        continue;
                    }
                    last_used = Some(slot);
                }
                if let Some(seq) = self.decode(&b) {
                    if s.latest.is_none_or(|(l, _, _)| seq > l) {
                        s.latest = Some((seq, b, page));
                    }
                    break;
                }
            }
            s.next_free[page as usize] = match last_used {
                None => Some(0),
                Some(u) if u + 1 < l.count => Some(u + 1),
                Some(_) => None,
            };
        }
        Ok(s)
    }

    /// The newest valid record: its sequence number and payload.
    pub fn latest<M: Medium>(&self, f: &Nor<M>) -> Result<Option<(u32, [u8; R])>, FlashError> {
        Ok(self.scan(f, Self::slots(f.geometry())?)?.latest.map(|(seq, b, _)| {
            let mut payload = [0u8; R];
            payload[..R - 12].copy_from_slice(&b[8..R - 4]);
            (seq, payload)
        }))
    }

    /// Appends `payload` (at most [`Self::PAYLOAD`] bytes; the rest of the record is zero) as the
    /// newest record; returns its sequence number.
    pub fn write<M: Medium>(&self, f: &mut Nor<M>, payload: &[u8]) -> Result<u32, FlashError> {
        if payload.len() > R - 12 {
            return Err(FlashError::OutOfBounds);
        }
        let slots = Self::slots(f.geometry())?;
        let s = self.scan(f, slots)?;
        let (seq, page, slot) = match s.latest {
            Some((l, _, p)) => {
                let seq = l.wrapping_add(1);
                match s.next_free[p as usize] {
                    Some(u) => (seq, p, u),
                    None => {
                        let other = 1 - p;
                        f.erase_page(self.base + other * slots.page)?;
                        (seq, other, 0)
                    }
                }
            }
            None => {
                f.erase_page(self.base)?;
                (1, 0, 0)
            }
        };
        let mut b = [0u8; R];
        b[0..4].copy_from_slice(&self.magic.to_le_bytes());
        b[4..8].copy_from_slice(&seq.to_le_bytes());
        b[8..8 + payload.len()].copy_from_slice(payload);
        let c = crc32(&b[..R - 4]);
        b[R - 4..].copy_from_slice(&c.to_le_bytes());
        let at = self.base + page * slots.page + slot * slots.stride;
        // Whole units straight from the record; a last partial unit (a unit that does not divide
        // `R`) padded with erased bytes. Usually one program operation.
        let unit = f.geometry().program_unit() as usize;
        let whole = R / unit * unit;
        if whole > 0 {
            f.program(at, &b[..whole])?;
        }
        if whole < R {
            let mut tail = [ERASED; MAX_PROGRAM_UNIT as usize];
            tail[..R - whole].copy_from_slice(&b[whole..]);
            f.program(at + whole as u32, &tail[..unit])?;
        }
        Ok(seq)
    }
}

/// A decoded boot-counter record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeqRecord {
    /// Sequence number, incremented on every write.
    pub seq: u32,
    /// The stored value.
    pub value: u32,
}

/// The latest `u32` value, power-safe in two pages: a [`RecordLog`] of 16-byte records
/// `{magic "KSL1", seq, value, crc32}` (the persistent boot counter).
#[derive(Clone, Copy, Debug)]
pub struct SeqLog(RecordLog<16>);

#[cfg(test)]
fn encode(r: SeqRecord) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    b[4..8].copy_from_slice(&r.seq.to_le_bytes());
    b[8..12].copy_from_slice(&r.value.to_le_bytes());
    let c = crc32(&b[0..12]);
    b[12..16].copy_from_slice(&c.to_le_bytes());
    b
}

impl SeqLog {
    /// A store occupying the two pages at `base` (page aligned).
    pub const fn new(base: u32) -> Self {
        SeqLog(RecordLog::new(base, MAGIC))
    }

    /// The newest valid record, if any.
    pub fn latest<M: Medium>(&self, f: &Nor<M>) -> Result<Option<SeqRecord>, FlashError> {
        Ok(self.0.latest(f)?.map(|(seq, p)| SeqRecord { seq, value: u32::from_le_bytes([p[0], p[1], p[2], p[3]]) }))
    }

    /// Stores `value` as the newest record and returns it.
    pub fn write<M: Medium>(&self, f: &mut Nor<M>, value: u32) -> Result<SeqRecord, FlashError> {
        let seq = self.0.write(f, &value.to_le_bytes())?;
        Ok(SeqRecord { seq, value })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SliceMedium;

    extern crate std;
    use std::vec;

    #[test]
    fn empty_store_has_no_record_and_first_write_is_seq_1() {
        let mut mem = vec![0xFFu8; 2 * PAGE_SIZE as usize];
        let mut f = Nor::new(SliceMedium(&mut mem));
        let log = SeqLog::new(0);
        assert_eq!(log.latest(&f).unwrap(), None);
        assert_eq!(log.write(&mut f, 7).unwrap(), SeqRecord { seq: 1, value: 7 });
        assert_eq!(log.latest(&f).unwrap(), Some(SeqRecord { seq: 1, value: 7 }));
    }

    #[test]
    fn garbage_pages_are_erased_before_first_use() {
        let mut mem = vec![0u8; 2 * PAGE_SIZE as usize];
        let mut f = Nor::new(SliceMedium(&mut mem));
        let log = SeqLog::new(0);
        assert_eq!(log.latest(&f).unwrap(), None);
        log.write(&mut f, 1).unwrap();
        assert_eq!(log.latest(&f).unwrap().unwrap().value, 1);
    }

    #[test]
    fn many_writes_wrap_between_pages_and_keep_the_newest() {
        let mut mem = vec![0xFFu8; 2 * PAGE_SIZE as usize];
        let mut f = Nor::new(SliceMedium(&mut mem));
        let log = SeqLog::new(0);
        let n = 3 * UNITS_PER_PAGE + 5;
        for i in 0..n {
            log.write(&mut f, i * 3).unwrap();
            assert_eq!(log.latest(&f).unwrap(), Some(SeqRecord { seq: i + 1, value: i * 3 }));
        }
        // One erase per page switch, never more.
        assert_eq!(f.stats().erases, 1 + 3);
    }

    #[test]
    fn torn_record_is_skipped_and_next_write_goes_after_it() {
        let mut mem = vec![0xFFu8; 2 * PAGE_SIZE as usize];
        {
            let mut f = Nor::new(SliceMedium(&mut mem));
            let log = SeqLog::new(0);
            log.write(&mut f, 10).unwrap();
        }
        // Simulate a power cut in the middle of programming unit 1: half of it written.
        let mut torn = encode(SeqRecord { seq: 2, value: 11 });
        torn[8..].fill(0xFF);
        mem[16..32].copy_from_slice(&torn);
        let mut f = Nor::new(SliceMedium(&mut mem));
        let log = SeqLog::new(0);
        assert_eq!(log.latest(&f).unwrap(), Some(SeqRecord { seq: 1, value: 10 }));
        assert_eq!(log.write(&mut f, 12).unwrap(), SeqRecord { seq: 2, value: 12 });
        assert_eq!(log.latest(&f).unwrap().unwrap().value, 12);
    }

    #[test]
    fn logs_follow_the_geometry_of_the_flash() {
        use crate::tests::GeoSlice;
        use crate::Geometry;
        // 16-byte records on 32-byte program units: one unit per record, half of it padding.
        let g = Geometry::new(256, 32).unwrap();
        let mut mem = vec![0u8; 2 * 256];
        let mut f = Nor::new(GeoSlice(&mut mem, g));
        let log = SeqLog::new(0);
        for i in 0..20 {
            log.write(&mut f, i).unwrap();
            assert_eq!(log.latest(&f).unwrap(), Some(SeqRecord { seq: i + 1, value: i }));
        }
        // 8 records per 256-byte page: the first write erases page 0, then a switch every 8.
        assert_eq!(f.stats().erases, 1 + 2);
        assert_eq!(f.stats().units_programmed, 20);
        // A page smaller than one record is refused, not a panic.
        let log = RecordLog::<512>::new(0, 7);
        assert_eq!(log.write(&mut f, &[1]), Err(FlashError::Misaligned));
        assert_eq!(log.latest(&f), Err(FlashError::Misaligned));
        // 128-byte records on 2 KiB pages with 8-byte units: 16 per page.
        let g = Geometry::new(2048, 8).unwrap();
        let mut mem = vec![0xFFu8; 2 * 2048];
        let mut f = Nor::new(GeoSlice(&mut mem, g));
        let log = RecordLog::<128>::new(0, 7);
        for i in 0..40u8 {
            log.write(&mut f, &[i; 116]).unwrap();
            assert_eq!(log.latest(&f).unwrap().map(|(s, p)| (s, p[0])), Some((u32::from(i) + 1, i)));
        }
        assert_eq!(f.stats().erases, 1 + 2, "page switches after 16 and 32 records");
    }

    #[test]
    fn power_cut_during_page_switch_keeps_previous_value() {
        let mut mem = vec![0xFFu8; 2 * PAGE_SIZE as usize];
        {
            let mut f = Nor::new(SliceMedium(&mut mem));
            let log = SeqLog::new(0);
            for i in 0..UNITS_PER_PAGE {
                log.write(&mut f, i).unwrap();
            }
        }
        // Page 0 is full. Cut power after the erase of page 1 (half-erased: some garbage left).
        mem[PAGE_SIZE as usize..PAGE_SIZE as usize + 100].fill(0x00);
        let mut f = Nor::new(SliceMedium(&mut mem));
        let log = SeqLog::new(0);
        assert_eq!(log.latest(&f).unwrap().unwrap().value, UNITS_PER_PAGE - 1);
        log.write(&mut f, 999).unwrap();
        assert_eq!(log.latest(&f).unwrap().unwrap().value, 999);
    }
}
