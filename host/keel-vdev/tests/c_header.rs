//! The C header `sdk/c/include/keel.h` must describe the same ABI as the `keel-abi` crate.

use std::collections::HashMap;

use keel_abi::{update_outcome, AbiInfo, BootInfo, Call, CrashReport, FaultKind, StartReason, Status, UpdateInfo};

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

/// The `last_reason` codes of `UpdateInfo`: C name and the start of its description in the
/// keel-abi documentation of `UpdateInfo` (keel-abi has no constants for them).
const UPDATE_REASONS: [(&str, u64, &str); 13] = [
    ("CRASH_LOOP", 1, "crash loop"),
    ("WATCHDOG", 2, "watchdog"),
    ("NOT_CONFIRMED", 3, "not confirmed"),
    ("NO_LINK", 4, "no cloud link"),
    ("TRIAL_RESETS", 5, "too many resets"),
    ("TRIAL_IMAGE_INVALID", 6, "trial image invalid"),
    ("SEQUENCE_NOT_NEWER", 7, "sequence not above"),
    ("TOO_LARGE", 8, "too large"),
    ("DIGEST_MISMATCH", 9, "digest mismatch"),
    ("BAD_IMAGE", 10, "not a valid app image"),
    ("CANCELLED", 11, "cancelled"),
    ("BUSY", 12, "busy"),
    ("FLASH", 13, "flash error"),
];

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
fn update_reasons_match_the_abi_documentation() {
    let c = constants();
    for (name, code, _) in UPDATE_REASONS {
        assert_eq!(get(&c, &format!("KEEL_UPDATE_REASON_{name}")), code, "{name}");
    }
    let mut names: Vec<String> = UPDATE_REASONS.iter().map(|(n, _, _)| format!("KEEL_UPDATE_REASON_{n}")).collect();
    names.sort();
    assert_eq!(with_prefix(&c, "KEEL_UPDATE_REASON_"), names, "keel.h defines other reasons");

    // The list in the doc comment of keel_abi::UpdateInfo: "`last_reason` codes: 1 crash loop,
    // 2 watchdog, ..., 13 flash error; 0 none."
    let abi = std::fs::read_to_string(keel_vdev::repo_root().join("crates/keel-abi/src/lib.rs")).unwrap();
    let doc: Vec<&str> = abi.lines().map(str::trim).filter_map(|l| l.strip_prefix("///")).collect();
    let doc = doc.join(" ").split_whitespace().collect::<Vec<_>>().join(" ");
    let start = doc.find("`last_reason` codes:").expect("keel-abi documents the last_reason codes") + 20;
    let end = start + doc[start..].find("0 none").expect("the list ends with \"0 none\"");
    let listed: Vec<(u64, &str)> = doc[start..end]
        .trim()
        .trim_end_matches(';')
        .split(", ")
        .map(|item| {
            let (n, text) = item.trim().split_once(' ').unwrap_or_else(|| panic!("bad item {item:?}"));
            (n.parse().unwrap_or_else(|_| panic!("bad code in {item:?}")), text)
        })
        .collect();
    assert_eq!(listed.len(), UPDATE_REASONS.len(), "reason codes in keel-abi: {listed:?}");
    for ((code, text), (name, want_code, want_text)) in listed.iter().zip(UPDATE_REASONS) {
        assert_eq!(*code, want_code, "{name}");
        assert!(text.starts_with(want_text), "{name}: keel-abi says {text:?}");
    }
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
