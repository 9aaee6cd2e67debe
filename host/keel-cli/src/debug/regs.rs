//! The registers as gdb sees them: the target description (`qXfer:features:read:target.xml`)
//! and the mapping between gdb's register numbers and the agent's ([`keel_debug::wire::REG_NAMES`]).
//!
//! gdb's M-profile convention (its `features/arm/arm-m-profile.xml`): r0-r12, sp, lr, pc are
//! 0..=15 and `xpsr` is 25 (16..=24 were the FPA registers of old ARM targets). The system
//! registers of `org.gnu.gdb.arm.m-system` follow from 26: msp, psp (which gdb knows and uses
//! to unwind exception frames), then primask, basepri, faultmask, control. In the `g` packet the
//! registers go in register-number order, so it is exactly the agent's order.

use keel_debug::wire::{NREGS, REG_NAMES};

/// The agent's index of gdb register `n`, if the target has it.
pub fn wire_index(n: u32) -> Option<usize> {
    match n {
        0..=15 => Some(n as usize),
        25..=31 => Some(n as usize - 9),
        _ => None,
    }
}

/// gdb's number of the agent's register `i`.
pub fn gdb_regnum(i: usize) -> u32 {
    assert!(i < NREGS);
    if i < 16 {
        i as u32
    } else {
        i as u32 + 9
    }
}

/// The target description.
pub fn target_xml() -> String {
    let mut s = String::from(
        "<?xml version=\"1.0\"?>\n<!DOCTYPE target SYSTEM \"gdb-target.dtd\">\n<target version=\"1.0\">\n\
         <architecture>arm</architecture>\n<feature name=\"org.gnu.gdb.arm.m-profile\">\n",
    );
    for (i, name) in REG_NAMES.iter().enumerate() {
        if i == 17 {
            s.push_str("</feature>\n<feature name=\"org.gnu.gdb.arm.m-system\">\n");
        }
        let (ty, group) = match *name {
            "sp" | "msp" | "psp" => ("data_ptr", if i < 16 { "general" } else { "system" }),
            "pc" => ("code_ptr", "general"),
            _ if i <= 16 => ("uint32", "general"),
            _ => ("uint32", "system"),
        };
        s.push_str(&format!(
            "  <reg name=\"{name}\" bitsize=\"32\" regnum=\"{}\" type=\"{ty}\" group=\"{group}\"/>\n",
            gdb_regnum(i)
        ));
    }
    s.push_str("</feature>\n</target>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbering_follows_gdb() {
        assert_eq!(wire_index(15), Some(keel_debug::wire::PC));
        assert_eq!(wire_index(13), Some(keel_debug::wire::SP));
        assert_eq!(wire_index(25), Some(keel_debug::wire::XPSR));
        assert_eq!(REG_NAMES[wire_index(26).unwrap()], "msp");
        assert_eq!(REG_NAMES[wire_index(27).unwrap()], "psp");
        assert_eq!(REG_NAMES[wire_index(31).unwrap()], "control");
        for n in 16..25 {
            assert_eq!(wire_index(n), None);
        }
        assert_eq!(wire_index(32), None);
        for i in 0..NREGS {
            assert_eq!(wire_index(gdb_regnum(i)), Some(i));
        }
    }

    #[test]
    fn description() {
        let x = target_xml();
        assert!(x.contains("<architecture>arm</architecture>"));
        assert!(x.contains("<reg name=\"xpsr\" bitsize=\"32\" regnum=\"25\""));
        assert!(x.contains("<reg name=\"msp\" bitsize=\"32\" regnum=\"26\" type=\"data_ptr\" group=\"system\""));
        let m = x.find("org.gnu.gdb.arm.m-system").unwrap();
        assert!(x.find("name=\"xpsr\"").unwrap() < m && m < x.find("name=\"msp\"").unwrap());
        assert_eq!(x.matches("<reg ").count(), NREGS);
    }
}
