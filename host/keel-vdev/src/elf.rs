//! App ELF file → Keel app image (header + flat image of the execution region).

use std::fmt;
use std::path::Path;

use keel_image::{build_header, Header};
use object::{Object, ObjectSegment, ObjectSymbol};

/// App execution region of the reference board.
pub const EXEC_BASE: u32 = 0x0020_0000;
/// Size of the execution region.
pub const EXEC_SIZE: u32 = 0x0020_0000;

/// Why an ELF file cannot become an app image.
#[derive(Debug)]
pub enum ElfError {
    /// The file could not be read.
    Io(std::io::Error),
    /// Not a parseable 32-bit ARM ELF file.
    Parse(String),
    /// A loadable segment lies outside the app execution region.
    OutsideRegion {
        /// Load address of the segment.
        addr: u64,
        /// Size of its file contents.
        size: u64,
    },
    /// No loadable contents at the start of the execution region (no vector table).
    NoVectorTable,
}

impl fmt::Display for ElfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ElfError::Io(e) => write!(f, "cannot read the ELF file: {e}"),
            ElfError::Parse(e) => write!(f, "not a valid ARM ELF file: {e}"),
            ElfError::OutsideRegion { addr, size } => write!(
                f,
                "segment at {addr:#x} ({size} bytes) is outside the app region {EXEC_BASE:#x}..{:#x}: link the app with keel_app.ld",
                EXEC_BASE + EXEC_SIZE
            ),
            ElfError::NoVectorTable => write!(f, "no vector table at {EXEC_BASE:#x}: link the app with keel_app.ld"),
        }
    }
}

impl std::error::Error for ElfError {}

/// A built app image.
#[derive(Clone, Debug)]
pub struct AppImage {
    /// Its header (digest included).
    pub header: Header,
    /// The flat image.
    pub image: Vec<u8>,
}

impl AppImage {
    /// Header followed by image: what goes into an app slot.
    pub fn slot_bytes(&self) -> Vec<u8> {
        let mut v = self.header.to_bytes().to_vec();
        v.extend_from_slice(&self.image);
        v
    }

    /// The same image, debuggable with `key` (an X25519 public key; see `keel keys new --debug`).
    pub fn with_debug_key(mut self, key: Option<[u8; 32]>) -> AppImage {
        self.header = self.header.with_debug_key(key, &self.image);
        self
    }
}

/// Builds an app image from ELF bytes. Loadable contents must lie in the execution region; the
/// optional symbol `__keel_stack_limit` becomes the stack limit (MSPLIM_NS).
pub fn image_from_elf_bytes(data: &[u8], name: &str, version: &str) -> Result<AppImage, ElfError> {
    let file = object::File::parse(data).map_err(|e| ElfError::Parse(e.to_string()))?;
    if file.architecture() != object::Architecture::Arm {
        return Err(ElfError::Parse(format!("architecture is {:?}, not ARM", file.architecture())));
    }
    let region = EXEC_BASE as u64..(EXEC_BASE + EXEC_SIZE) as u64;
    let mut image: Vec<u8> = Vec::new();
    for seg in file.segments() {
        let bytes = seg.data().map_err(|e| ElfError::Parse(e.to_string()))?;
        if bytes.is_empty() {
            continue; // .bss, .stack: nothing to load
        }
        let (addr, size) = seg.file_range();
        let _ = addr;
        let lma = physical_address(&file, &seg);
        let end = lma + size;
        if !region.contains(&lma) || end > region.end {
            return Err(ElfError::OutsideRegion { addr: lma, size });
        }
        let off = (lma - region.start) as usize;
        if image.len() < off + bytes.len() {
            image.resize(off + bytes.len(), 0xFF);
        }
        image[off..off + bytes.len()].copy_from_slice(bytes);
    }
    if image.len() < 8 || image[..8].iter().all(|&b| b == 0xFF) {
        return Err(ElfError::NoVectorTable);
    }
    // Keep the image a whole number of flash program units.
    while image.len() % keel_flash::PROGRAM_UNIT as usize != 0 {
        image.push(0xFF);
    }
    let stack_limit = file.symbols().find(|s| s.name() == Ok("__keel_stack_limit")).map_or(0, |s| s.address() as u32);
    let header =
        build_header(&image, EXEC_BASE, stack_limit, name, version, (keel_abi::ABI_MAJOR, keel_abi::ABI_MINOR));
    Ok(AppImage { header, image })
}

fn physical_address(file: &object::File<'_>, seg: &object::Segment<'_, '_>) -> u64 {
    // object's `address()` is the virtual address; for ELF the load address (p_paddr) is what
    // matters for `.data` initialisers (VMA in RAM, LMA in the image).
    use object::read::elf::ProgramHeader;
    match (file, seg) {
        (object::File::Elf32(f), _) => {
            let endian = f.endian();
            for ph in f.elf_program_headers() {
                if ph.p_type(endian) == object::elf::PT_LOAD
                    && ph.p_offset(endian) as u64 == seg.file_range().0
                    && ph.p_filesz(endian) as u64 == seg.file_range().1
                {
                    return ph.p_paddr(endian) as u64;
                }
            }
            seg.address()
        }
        _ => seg.address(),
    }
}

/// Builds an app image from an ELF file; the name defaults to the file name.
pub fn image_from_elf(path: &Path, version: &str) -> Result<AppImage, ElfError> {
    let data = std::fs::read(path).map_err(ElfError::Io)?;
    let name = path.file_stem().and_then(|s| s.to_str()).unwrap_or("app").trim_end_matches(".elf");
    image_from_elf_bytes(&data, name, version)
}

/// Allocated sections of an ELF file: (name, address, size, occupies file bytes).
pub fn sections(path: &Path) -> Result<Vec<(String, u64, u64, bool)>, ElfError> {
    use object::ObjectSection;
    let data = std::fs::read(path).map_err(ElfError::Io)?;
    let file = object::File::parse(&*data).map_err(|e| ElfError::Parse(e.to_string()))?;
    let mut out = Vec::new();
    for s in file.sections() {
        let name = s.name().unwrap_or("?").to_string();
        if s.address() == 0 || s.size() == 0 {
            continue;
        }
        let in_file = s.file_range().is_some();
        out.push((name, s.address(), s.size(), in_file));
    }
    Ok(out)
}

/// Address of a symbol.
pub fn symbol_address(path: &Path, name: &str) -> Result<Option<u64>, ElfError> {
    let data = std::fs::read(path).map_err(ElfError::Io)?;
    let file = object::File::parse(&*data).map_err(|e| ElfError::Parse(e.to_string()))?;
    Ok(file.symbols().find(|s| s.name() == Ok(name)).map(|s| s.address()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(matches!(image_from_elf_bytes(b"not an elf", "x", "1"), Err(ElfError::Parse(_))));
        assert!(matches!(image_from_elf_bytes(&[], "x", "1"), Err(ElfError::Parse(_))));
        let mut truncated = b"\x7fELF\x01\x01\x01".to_vec();
        truncated.resize(40, 0);
        assert!(image_from_elf_bytes(&truncated, "x", "1").is_err());
    }

    #[test]
    fn host_binaries_are_refused_as_apps() {
        // This test binary is an x86-64 (or other host) ELF: not an ARM app.
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let e = image_from_elf_bytes(&me, "x", "1").unwrap_err();
        assert!(e.to_string().contains("not ARM") || matches!(e, ElfError::Parse(_)), "{e}");
    }
}
