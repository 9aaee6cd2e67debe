//! Code bytes from the app's ELF file (`keel debug --elf`): the read-only loadable sections
//! (code, read-only data, the vector table) are what the visor copied into the app's execution
//! region, so gdb's many reads of code cost no device round trip.

use object::{Object, ObjectSection, SectionKind};

use super::board;

/// The read-only loadable contents of an app ELF, by address.
#[derive(Clone, Debug, Default)]
pub struct CodeImage {
    /// (address, bytes), sorted, not overlapping.
    sections: Vec<(u32, Vec<u8>)>,
    /// Ranges written during the session (served from the device until the app restarts).
    dirty: Vec<(u32, u32)>,
}

impl CodeImage {
    /// The read-only sections of `elf` inside the app's code region.
    pub fn from_elf(elf: &[u8]) -> Result<CodeImage, String> {
        let file = object::File::parse(elf).map_err(|e| format!("not an ELF file: {e}"))?;
        if file.architecture() != object::Architecture::Arm {
            return Err(format!("not an Arm ELF file ({:?})", file.architecture()));
        }
        let mut sections = Vec::new();
        for s in file.sections() {
            if !matches!(s.kind(), SectionKind::Text | SectionKind::ReadOnlyData | SectionKind::ReadOnlyString) {
                continue;
            }
            let (Ok(addr), Ok(data)) = (u32::try_from(s.address()), s.data()) else { continue };
            let Ok(len) = u32::try_from(data.len()) else { continue };
            if len == 0 || !board::accessible(addr, len) || addr < board::APP_CODE_BASE {
                continue;
            }
            sections.push((addr, data.to_vec()));
        }
        sections.sort_by_key(|s| s.0);
        // Keep them disjoint (a malformed file could overlap them).
        let mut out: Vec<(u32, Vec<u8>)> = Vec::new();
        for (a, d) in sections {
            if out.last().is_some_and(|(pa, pd)| u64::from(*pa) + pd.len() as u64 > u64::from(a)) {
                continue;
            }
            out.push((a, d));
        }
        if out.is_empty() {
            return Err("no code in the app's region: link the app with keel_app.ld".into());
        }
        Ok(CodeImage { sections: out, dirty: Vec::new() })
    }

    /// An image made of `sections` (tests).
    #[cfg(test)]
    pub fn from_sections(sections: Vec<(u32, Vec<u8>)>) -> CodeImage {
        CodeImage { sections, dirty: Vec::new() }
    }

    /// Bytes of code in the image.
    pub fn len(&self) -> usize {
        self.sections.iter().map(|s| s.1.len()).sum()
    }

    /// The bytes at `[addr, addr+len)` if the image holds all of them and none was written.
    pub fn get(&self, addr: u32, len: usize) -> Option<&[u8]> {
        let end = u64::from(addr) + len as u64;
        if self.dirty.iter().any(|&(a, b)| u64::from(a) < end && addr < b) {
            return None;
        }
        let (base, data) = self.sections.iter().rev().find(|(a, _)| *a <= addr)?;
        let off = (addr - base) as usize;
        data.get(off..off.checked_add(len)?)
    }

    /// `[addr, addr+len)` was written on the device: serve it from there from now on.
    pub fn invalidate(&mut self, addr: u32, len: usize) {
        let end = (u64::from(addr) + len as u64).min(u64::from(u32::MAX)) as u32;
        let overlaps = |(a, d): &(u32, Vec<u8>)| *a < end && u64::from(addr) < u64::from(*a) + d.len() as u64;
        if end > addr && self.sections.iter().any(overlaps) {
            self.dirty.push((addr, end));
        }
    }

    /// The app was loaded again: its code is the image's again.
    pub fn reloaded(&mut self) {
        self.dirty.clear();
    }

    /// Up to three (address, bytes) samples spread over the code, to check the device runs
    /// this very image.
    pub fn samples(&self, size: usize) -> Vec<(u32, Vec<u8>)> {
        let Some((addr, data)) = self.sections.iter().max_by_key(|s| s.1.len()) else { return Vec::new() };
        let n = size.min(data.len());
        let mut offs = vec![0, ((data.len() / 2) & !3).min(data.len() - n), data.len() - n];
        offs.dedup();
        offs.into_iter().map(|o| (addr + o as u32, data[o..o + n].to_vec())).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serves_and_invalidates() {
        let mut img = CodeImage::from_sections(vec![(0x20_0000, (0..=255).collect()), (0x20_0400, vec![7; 16])]);
        assert_eq!(img.get(0x20_0010, 4), Some(&[16u8, 17, 18, 19][..]));
        assert_eq!(img.get(0x20_00fe, 4), None); // runs past the section
        assert_eq!(img.get(0x20_0404, 2), Some(&[7u8, 7][..]));
        assert_eq!(img.get(0x1f_fffe, 2), None);
        img.invalidate(0x20_0011, 1);
        assert_eq!(img.get(0x20_0010, 4), None);
        assert_eq!(img.get(0x20_0012, 4), Some(&[18u8, 19, 20, 21][..]));
        img.reloaded();
        assert!(img.get(0x20_0010, 4).is_some());
        let s = img.samples(64);
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].0, 0x20_0000);
        assert_eq!(s[2].0, 0x20_00c0);
    }

    #[test]
    fn refuses_what_is_not_an_arm_elf() {
        assert!(CodeImage::from_elf(b"not an elf").is_err());
    }
}
