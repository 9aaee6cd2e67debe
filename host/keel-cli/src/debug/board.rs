//! The memory the app owns on the reference board (QEMU `mps2-an505`), in one place: the memory
//! map gdb gets, where breakpoints can go and which addresses are worth asking the device
//! about (the agent refuses everything else: secure memory, NSC veneers, peripherals).

/// The app's execution region: its code, copied into RAM by the visor (so software
/// breakpoints work).
pub const APP_CODE_BASE: u32 = 0x0020_0000;
/// Size of [`APP_CODE_BASE`]'s region.
pub const APP_CODE_SIZE: u32 = 0x0020_0000;
/// The app's RAM.
pub const APP_RAM_BASE: u32 = 0x2800_0000;
/// Size of [`APP_RAM_BASE`]'s region.
pub const APP_RAM_SIZE: u32 = 0x0020_0000;

/// The regions the app may access: (start, size).
pub const APP_REGIONS: [(u32, u32); 2] = [(APP_CODE_BASE, APP_CODE_SIZE), (APP_RAM_BASE, APP_RAM_SIZE)];

/// Whether `[addr, addr + len)` lies inside one app region.
pub fn accessible(addr: u32, len: u32) -> bool {
    APP_REGIONS
        .iter()
        .any(|&(base, size)| addr >= base && u64::from(addr) + u64::from(len) <= u64::from(base) + u64::from(size))
}

/// Whether a software breakpoint can be planted at `addr` (app memory, halfword aligned).
pub fn can_break(addr: u32) -> bool {
    addr & 1 == 0 && accessible(addr, 2)
}

/// The gdb memory map (`qXfer:memory-map:read`). Both regions are RAM: gdb then uses software
/// breakpoints (`Z0`) everywhere, and refuses on its own to touch anything outside them.
pub fn memory_map_xml() -> String {
    let mut s = String::from(
        "<?xml version=\"1.0\"?>\n<!DOCTYPE memory-map PUBLIC \"+//IDN gnu.org//DTD GDB Memory Map V1.0//EN\" \
         \"http://sourceware.org/gdb/gdb-memory-map.dtd\">\n<memory-map>\n",
    );
    for (base, size) in APP_REGIONS {
        s.push_str(&format!("  <memory type=\"ram\" start=\"{base:#x}\" length=\"{size:#x}\"/>\n"));
    }
    s.push_str("</memory-map>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions() {
        assert!(accessible(APP_CODE_BASE, 4));
        assert!(accessible(APP_RAM_BASE + APP_RAM_SIZE - 4, 4));
        assert!(!accessible(APP_RAM_BASE + APP_RAM_SIZE - 2, 4));
        assert!(!accessible(0x1007_0000, 2));
        assert!(!accessible(0xFFFF_FFFE, 4));
        assert!(can_break(0x0020_0100));
        assert!(!can_break(0x0020_0101));
        assert!(!can_break(0x1007_0010));
        assert!(memory_map_xml().contains("start=\"0x28000000\" length=\"0x200000\""));
    }
}
