//! The C header `sdk/c/include/keel.h` must describe the same ABI as the `keel-abi` crate.

use std::collections::HashMap;

use keel_abi::{
    update_outcome, AbiInfo, BootInfo, Call, CrashReport, FaultKind, StartReason, Status, UpdateInfo, UpdateReason,
};

fn header() -> String {
    std::fs::read_to_string(keel_vdev::repo_root().join("sdk/c/include/keel.h")).unwrap()
}

/// `NAME -> value` for `#define NAME value` and `NAME = value,` enumerators.
fn constants() -> HashMap<String, u64> {
    let text = header();
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
        ("KEEL_FAULT_RESET", FaultKind::Reset),
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
    assert_eq!(get(&c, "KEEL_EVENT_UPDATE_READY"), keel_abi::events::UPDATE_READY as u64);
    // The header's NSC base is the board's (the visor checks its own table is there at boot).
    assert_eq!(get(&c, "KEEL_NSC_BASE"), 0x1007_0000);
}

/// The header's constants whose name starts with `prefix`, sorted by name.
fn with_prefix(c: &HashMap<String, u64>, prefix: &str) -> Vec<String> {
    let mut v: Vec<String> = c.keys().filter(|k| k.starts_with(prefix)).cloned().collect();
    v.sort();
    v
}

#[test]
fn update_outcomes_match() {
    let c = constants();
    let expected = [
        ("NONE", update_outcome::NONE),
        ("CONFIRMED", update_outcome::CONFIRMED),
        ("ROLLED_BACK", update_outcome::ROLLED_BACK),
        ("REFUSED", update_outcome::REFUSED),
        ("FAILED", update_outcome::FAILED),
    ];
    for (name, v) in expected {
        assert_eq!(get(&c, &format!("KEEL_UPDATE_OUTCOME_{name}")), v as u64, "{name}");
    }
    let mut names: Vec<String> = expected.iter().map(|(n, _)| format!("KEEL_UPDATE_OUTCOME_{n}")).collect();
    names.sort();
    assert_eq!(with_prefix(&c, "KEEL_UPDATE_OUTCOME_"), names, "keel.h defines other outcomes");
}

#[test]
fn update_reasons_match_the_rust_enum() {
    let c = constants();
    for r in UpdateReason::ALL {
        assert_eq!(get(&c, &format!("KEEL_UPDATE_REASON_{}", r.c_name())), r.code() as u64, "{r:?}");
    }
    let mut names: Vec<String> =
        UpdateReason::ALL.iter().map(|r| format!("KEEL_UPDATE_REASON_{}", r.c_name())).collect();
    names.sort();
    assert_eq!(with_prefix(&c, "KEEL_UPDATE_REASON_"), names, "keel.h defines other reasons");
}

#[test]
fn struct_sizes_and_offsets_match() {
    use core::mem::{offset_of, size_of};
    // `KEEL__STATIC_ASSERT(sizeof(T) == N` and `KEEL__STATIC_ASSERT(offsetof(T, f) == N` lines
    // (an assert may continue on the next line, after the comparison).
    let text = header();
    let mut sizes = HashMap::new();
    let mut offsets = HashMap::new();
    for line in text.lines() {
        let Some(rest) = line.trim().strip_prefix("KEEL__STATIC_ASSERT(") else { continue };
        // `what == N, "message");` with the message possibly on the next line.
        let Some((what, n)) = rest.split_once(") == ") else { continue };
        let n: usize = n.split(',').next().unwrap().trim().parse().unwrap();
        if let Some(ty) = what.strip_prefix("sizeof(") {
            sizes.insert(ty.to_string(), n);
        } else if let Some((ty, field)) = what.strip_prefix("offsetof(").and_then(|a| a.split_once(", ")) {
            offsets.insert(format!("{ty}.{field}"), n);
        }
    }
    for (ty, size) in [
        ("keel_abi_info_t", size_of::<AbiInfo>()),
        ("keel_boot_info_t", size_of::<BootInfo>()),
        ("keel_crash_report_t", size_of::<CrashReport>()),
        ("keel_update_info_t", size_of::<UpdateInfo>()),
    ] {
        assert_eq!(sizes.get(ty), Some(&size), "sizeof({ty})");
    }
    for (field, off) in [
        ("version", offset_of!(UpdateInfo, version)),
        ("on_trial", offset_of!(UpdateInfo, on_trial)),
        ("installed_sequence", offset_of!(UpdateInfo, installed_sequence)),
        ("last_sequence", offset_of!(UpdateInfo, last_sequence)),
        ("last_outcome", offset_of!(UpdateInfo, last_outcome)),
        ("last_reason", offset_of!(UpdateInfo, last_reason)),
    ] {
        assert_eq!(offsets.get(&format!("keel_update_info_t.{field}")), Some(&off), "keel_update_info_t.{field}");
    }
}
