//! The C header `sdk/c/include/keel.h` must describe the same ABI as the `keel-abi` crate.

use std::collections::HashMap;

use keel_abi::{Call, FaultKind, StartReason, Status};

/// `NAME -> value` for `#define NAME value` and `NAME = value,` enumerators.
fn constants() -> HashMap<String, u64> {
    let text = std::fs::read_to_string(keel_vdev::repo_root().join("sdk/c/include/keel.h")).unwrap();
    let mut out = HashMap::new();
    for line in text.lines() {
        let line = line.trim().trim_end_matches(',');
        let (name, value) = if let Some(rest) = line.strip_prefix("#define ") {
            match rest.split_once(char::is_whitespace) {
                Some((n, v)) => (n, v.trim()),
                None => continue,
            }
        } else if let Some((n, v)) = line.split_once(" = ") {
            (n.trim(), v.trim())
        } else {
            continue;
        };
        let v = value.trim_end_matches('u').trim_end_matches('U');
        let parsed =
            if let Some(hex) = v.strip_prefix("0x") { u64::from_str_radix(hex, 16).ok() } else { v.parse().ok() };
        if let Some(p) = parsed {
            out.insert(name.to_string(), p);
        }
    }
    out
}

fn get(c: &HashMap<String, u64>, name: &str) -> u64 {
    *c.get(name).unwrap_or_else(|| panic!("keel.h does not define {name}"))
}

#[test]
fn status_codes_match() {
    let c = constants();
    for s in Status::ALL {
        assert_eq!(get(&c, &format!("KEEL_STATUS_{}", s.name())), s as u64, "{s:?}");
    }
}

#[test]
fn call_slots_match() {
    let c = constants();
    for call in Call::ALL {
        let name = call.c_name().trim_start_matches("keel_").to_uppercase();
        assert_eq!(get(&c, &format!("KEEL_CALL_{name}")), call as u64, "{call:?}");
    }
}

#[test]
fn limits_and_enums_match() {
    let c = constants();
    assert_eq!(get(&c, "KEEL_ABI_MAJOR"), keel_abi::ABI_MAJOR as u64);
    assert_eq!(get(&c, "KEEL_ABI_MINOR"), keel_abi::ABI_MINOR as u64);
    assert_eq!(get(&c, "KEEL_SLOT_SIZE"), keel_abi::SLOT_SIZE as u64);
    assert_eq!(get(&c, "KEEL_SLOT_COUNT"), keel_abi::SLOT_COUNT as u64);
    assert_eq!(get(&c, "KEEL_LOG_MAX_LEN"), keel_abi::LOG_MAX_LEN as u64);
    assert_eq!(get(&c, "KEEL_DEVICE_ID_LEN"), keel_abi::DEVICE_ID_LEN as u64);
    assert_eq!(get(&c, "KEEL_WATCHDOG_MIN_MS"), keel_abi::WATCHDOG_MIN_MS as u64);
    assert_eq!(get(&c, "KEEL_WATCHDOG_MAX_MS"), keel_abi::WATCHDOG_MAX_MS as u64);
    assert_eq!(get(&c, "KEEL_CRASH_STACK_WORDS"), keel_abi::CRASH_STACK_WORDS as u64);
    for (name, r) in [
        ("KEEL_START_COLD_BOOT", StartReason::ColdBoot),
        ("KEEL_START_CRASH", StartReason::Crash),
        ("KEEL_START_WATCHDOG", StartReason::Watchdog),
        ("KEEL_START_REQUESTED", StartReason::Requested),
    ] {
        assert_eq!(get(&c, name), r as u64);
    }
    for (name, k) in [
        ("KEEL_FAULT_HARDFAULT", FaultKind::HardFault),
        ("KEEL_FAULT_MEMMANAGE", FaultKind::MemManage),
        ("KEEL_FAULT_BUSFAULT", FaultKind::BusFault),
        ("KEEL_FAULT_USAGEFAULT", FaultKind::UsageFault),
        ("KEEL_FAULT_SECUREFAULT", FaultKind::SecureFault),
        ("KEEL_FAULT_WATCHDOG", FaultKind::Watchdog),
    ] {
        assert_eq!(get(&c, name), k as u64);
    }
    for (name, l) in [
        ("KEEL_LOG_ERROR", keel_abi::LogLevel::Error),
        ("KEEL_LOG_WARN", keel_abi::LogLevel::Warn),
        ("KEEL_LOG_INFO", keel_abi::LogLevel::Info),
        ("KEEL_LOG_DEBUG", keel_abi::LogLevel::Debug),
    ] {
        assert_eq!(get(&c, name), l as u64);
    }
    assert_eq!(get(&c, "KEEL_EVENT_NONE"), keel_abi::events::NONE as u64);
    // The header's NSC base is the board's (the visor checks its own table is there at boot).
    assert_eq!(get(&c, "KEEL_NSC_BASE"), 0x1007_0000);
}
