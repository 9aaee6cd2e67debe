//! The C header `sdk/c/include/keel.h` must describe the same ABI as the `keel-abi` crate.

use std::collections::HashMap;

use keel_abi::chan::{self, ChanInfo, MsgInfo, NetState, NetStatus, OfflineReason, OpenParams, Reason, State};
use keel_abi::notify::{self, Kind as NotifyKind};
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
        ("keel_net_status_t", size_of::<NetStatus>()),
        ("keel_chan_open_t", size_of::<OpenParams>()),
        ("keel_chan_msg_t", size_of::<MsgInfo>()),
        ("keel_chan_info_t", size_of::<ChanInfo>()),
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
    let abi21: [(&str, &str, usize); 24] = [
        ("keel_net_status_t", "version", offset_of!(NetStatus, version)),
        ("keel_net_status_t", "state", offset_of!(NetStatus, state)),
        ("keel_net_status_t", "offline", offset_of!(NetStatus, offline)),
        ("keel_net_status_t", "wanted_by", offset_of!(NetStatus, wanted_by)),
        ("keel_net_status_t", "app_requests", offset_of!(NetStatus, app_requests)),
        ("keel_chan_open_t", "version", offset_of!(OpenParams, version)),
        ("keel_chan_open_t", "kind", offset_of!(OpenParams, kind)),
        ("keel_chan_open_t", "tag", offset_of!(OpenParams, tag)),
        ("keel_chan_open_t", "rx_buf", offset_of!(OpenParams, rx_buf)),
        ("keel_chan_open_t", "rx_len", offset_of!(OpenParams, rx_len)),
        ("keel_chan_open_t", "tx_buf", offset_of!(OpenParams, tx_buf)),
        ("keel_chan_open_t", "tx_len", offset_of!(OpenParams, tx_len)),
        ("keel_chan_open_t", "endpoint", offset_of!(OpenParams, endpoint)),
        ("keel_chan_open_t", "endpoint_len", offset_of!(OpenParams, endpoint_len)),
        ("keel_chan_msg_t", "version", offset_of!(MsgInfo, version)),
        ("keel_chan_msg_t", "offset", offset_of!(MsgInfo, offset)),
        ("keel_chan_msg_t", "len", offset_of!(MsgInfo, len)),
        ("keel_chan_msg_t", "pending", offset_of!(MsgInfo, pending)),
        ("keel_chan_info_t", "kind", offset_of!(ChanInfo, kind)),
        ("keel_chan_info_t", "state", offset_of!(ChanInfo, state)),
        ("keel_chan_info_t", "reason", offset_of!(ChanInfo, reason)),
        ("keel_chan_info_t", "rx_pending", offset_of!(ChanInfo, rx_pending)),
        ("keel_chan_info_t", "tx_free", offset_of!(ChanInfo, tx_free)),
        ("keel_chan_info_t", "version", offset_of!(ChanInfo, version)),
    ];
    for (ty, field, off) in abi21 {
        assert_eq!(offsets.get(&format!("{ty}.{field}")), Some(&off), "{ty}.{field}");
    }
    // Every field of the ABI 2.1 structs is asserted (no field left unchecked).
    for ty in ["keel_net_status_t", "keel_chan_open_t", "keel_chan_msg_t", "keel_chan_info_t"] {
        let in_header = offsets.keys().filter(|k| k.starts_with(&format!("{ty}."))).count();
        let in_list = abi21.iter().filter(|(t, _, _)| *t == ty).count();
        assert_eq!(in_header, in_list, "{ty}: the header asserts other fields");
        assert_eq!(in_list * 4, sizes[ty], "{ty}: every field is a 32-bit word");
    }
    assert_eq!(size_of::<OpenParams>() as u32, chan::OPEN_PARAMS_LEN);
}

#[test]
fn channel_constants_match() {
    let c = constants();
    for (name, v) in [
        ("KEEL_CHAN_MAX_CHANNELS", chan::MAX_CHANNELS as u64),
        ("KEEL_NET_MAX_REQUESTS", chan::MAX_NET_REQUESTS as u64),
        ("KEEL_CHAN_BUFFER_ALIGN", chan::BUFFER_ALIGN as u64),
        ("KEEL_CHAN_MIN_RX", chan::MIN_RX as u64),
        ("KEEL_CHAN_MIN_TX", chan::MIN_TX as u64),
        ("KEEL_CHAN_MAX_BUFFER", chan::MAX_BUFFER as u64),
        ("KEEL_CHAN_MAX_ENDPOINT", chan::MAX_ENDPOINT as u64),
        ("KEEL_CHAN_RECORD_HEADER", chan::RECORD_HEADER as u64),
        ("KEEL_CHAN_OPEN_PARAMS_LEN", chan::OPEN_PARAMS_LEN as u64),
        ("KEEL_NET_WANTED_APP", chan::wanted::APP as u64),
        ("KEEL_NET_WANTED_VISOR", chan::wanted::VISOR as u64),
    ] {
        assert_eq!(get(&c, name), v, "{name}");
    }
    let mut kinds = Vec::new();
    for v in 0..16u32 {
        if let Some(k) = chan::Kind::from_u32(v) {
            let name = format!("KEEL_CHAN_KIND_{}", format!("{k:?}").to_uppercase());
            assert_eq!(get(&c, &name), v as u64, "{name}");
            kinds.push(name);
        }
    }
    kinds.sort();
    assert_eq!(with_prefix(&c, "KEEL_CHAN_KIND_"), kinds, "keel.h defines other kinds");
    let reasons = [
        ("NONE", Reason::None),
        ("BY_SERVER", Reason::ByServer),
        ("REFUSED", Reason::Refused),
        ("LINK_LOST", Reason::LinkLost),
        ("BUFFER_FAULT", Reason::BufferFault),
        ("PROTOCOL_ERROR", Reason::ProtocolError),
        ("BY_APP", Reason::ByApp),
        ("RATE_LIMITED", Reason::RateLimited),
    ];
    for (name, r) in reasons {
        assert_eq!(get(&c, &format!("KEEL_CHAN_REASON_{name}")), r as u64, "{name}");
    }
    // Every reason the crate knows is in the list above, and the header has no other.
    assert_eq!((0..=255u8).filter(|v| Reason::from_u8(*v).is_some()).count(), reasons.len());
    let mut names: Vec<String> = reasons.iter().map(|(n, _)| format!("KEEL_CHAN_REASON_{n}")).collect();
    names.sort();
    assert_eq!(with_prefix(&c, "KEEL_CHAN_REASON_"), names, "keel.h defines other reasons");
    for (name, s) in [("OPENING", State::Opening), ("OPEN", State::Open), ("CLOSED", State::Closed)] {
        assert_eq!(get(&c, &format!("KEEL_CHAN_STATE_{name}")), s as u64, "{name}");
    }
    for (name, s) in
        [("OFFLINE", NetState::Offline), ("CONNECTING", NetState::Connecting), ("CONNECTED", NetState::Connected)]
    {
        assert_eq!(get(&c, &format!("KEEL_NET_STATE_{name}")), s as u64, "{name}");
    }
    for (name, r) in [
        ("NONE", OfflineReason::None),
        ("NO_ADDRESS", OfflineReason::NoAddress),
        ("BACKOFF", OfflineReason::Backoff),
        ("NOT_PROVISIONED", OfflineReason::NotProvisioned),
    ] {
        assert_eq!(get(&c, &format!("KEEL_NET_OFFLINE_{name}")), r as u64, "{name}");
    }
}

#[test]
fn notification_constants_match() {
    let c = constants();
    let mut names = Vec::new();
    for v in 0..=u16::MAX {
        if let Some(k) = NotifyKind::from_u16(v) {
            let name = format!("KEEL_NOTIFY_{}", k.name());
            assert_eq!(get(&c, &name), v as u64, "{name}");
            names.push(name);
        }
    }
    assert_eq!(names.len(), 7);
    assert_eq!(get(&c, "KEEL_NOTIFY_HEADER_LEN"), notify::HEADER_LEN as u64);
    assert_eq!(get(&c, "KEEL_NOTIFY_RECORD_LEN"), notify::RECORD_LEN as u64);
    assert_eq!(get(&c, "KEEL_NOTIFY_MIN_RECORDS"), notify::MIN_RECORDS as u64);
    assert_eq!(get(&c, "KEEL_NOTIFY_MAX_RECORDS"), notify::MAX_RECORDS as u64);
    assert_eq!(get(&c, "KEEL_NOTIFY_IRQ_FIRST"), *notify::APP_IRQS.start() as u64);
    assert_eq!(get(&c, "KEEL_NOTIFY_IRQ_LAST"), *notify::APP_IRQS.end() as u64);
    assert_eq!(get(&c, "KEEL_NOTIFY_DEFAULT_IRQ"), notify::DEFAULT_IRQ as u64);
}

#[test]
fn status_names_match() {
    // keel_status_name() returns the same names as Status::name().
    let text = header();
    for s in Status::ALL {
        let case = format!("case KEEL_STATUS_{}: return \"{}\";", s.name(), s.name());
        assert!(text.contains(&case), "keel_status_name() lacks `{case}`");
    }
}
