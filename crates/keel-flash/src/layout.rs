//! The partition map of a Keel device's flash (16 MiB on the reference board).
//!
//! Offsets are relative to the start of the flash device; every partition is page aligned.
//! See `docs/flash-layout.md` for what each partition holds and who may write it.

use crate::PAGE_SIZE;

/// A named, page-aligned region of flash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Partition {
    /// Short name used in logs and docs.
    pub name: &'static str,
    /// Offset from the start of flash.
    pub offset: u32,
    /// Size in bytes.
    pub size: u32,
}

impl Partition {
    /// One past the last byte.
    pub const fn end(&self) -> u32 {
        self.offset + self.size
    }
    /// True if `off..off+len` lies inside this partition.
    pub fn contains(&self, off: u32, len: u32) -> bool {
        match off.checked_add(len) {
            Some(end) => off >= self.offset && end <= self.end(),
            None => false,
        }
    }
}

/// Total flash size of the reference board.
pub const FLASH_SIZE: u32 = 16 * 1024 * 1024;

/// Factory data: device identity, keys, server address. Written once at provisioning; read-only
/// for the visor afterwards.
pub const FACTORY: Partition = Partition { name: "factory", offset: 0x0000_0000, size: PAGE_SIZE };
/// Update journal: two pages written alternately (OTA).
pub const JOURNAL: Partition = Partition { name: "journal", offset: 0x0000_2000, size: 2 * PAGE_SIZE };
/// Visor state: boot counter (2 pages) and room for persistent crash and event records.
pub const VISOR_STATE: Partition = Partition { name: "visor-state", offset: 0x0000_6000, size: 5 * PAGE_SIZE };
/// Visor image slot A (visor self-update).
pub const VISOR_A: Partition = Partition { name: "visor-a", offset: 0x0001_0000, size: 0x0008_0000 };
/// Visor image slot B (visor self-update).
pub const VISOR_B: Partition = Partition { name: "visor-b", offset: 0x0009_0000, size: 0x0008_0000 };
/// App slot A: image header + image (up to 2 MiB, the app execution region).
pub const APP_A: Partition = Partition { name: "app-a", offset: 0x0011_0000, size: 0x0020_2000 };
/// App slot B.
pub const APP_B: Partition = Partition { name: "app-b", offset: 0x0031_2000, size: 0x0020_2000 };
/// App data / external-flash area, reachable by the app only through system calls.
pub const APP_DATA: Partition = Partition { name: "app-data", offset: 0x0051_4000, size: FLASH_SIZE - 0x0051_4000 };

/// The boot counter's two pages, at the start of [`VISOR_STATE`].
pub const BOOT_COUNTER: Partition = Partition { name: "boot-counter", offset: VISOR_STATE.offset, size: 2 * PAGE_SIZE };

// An app slot holds a 256-byte image header plus a full 2 MiB execution region, and both slots
// are the same size (an image must fit either).
const _: () = assert!(APP_A.size >= 2 * 1024 * 1024 + 256 && APP_A.size == APP_B.size);

/// Every partition, in address order.
pub const ALL: [Partition; 8] = [FACTORY, JOURNAL, VISOR_STATE, VISOR_A, VISOR_B, APP_A, APP_B, APP_DATA];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_aligned_contiguous_and_fill_flash() {
        let mut next = 0;
        for p in ALL {
            assert_eq!(p.offset % PAGE_SIZE, 0, "{}", p.name);
            assert_eq!(p.size % PAGE_SIZE, 0, "{}", p.name);
            assert_eq!(p.offset, next, "{} leaves a gap or overlaps", p.name);
            next = p.end();
        }
        assert_eq!(next, FLASH_SIZE);
    }

    #[test]
    fn contains_checks_bounds_without_overflow() {
        assert!(FACTORY.contains(0, PAGE_SIZE));
        assert!(!FACTORY.contains(1, PAGE_SIZE));
        assert!(!FACTORY.contains(u32::MAX, 2));
    }
}
