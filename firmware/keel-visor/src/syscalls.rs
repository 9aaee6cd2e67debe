//! System-call implementations. Every argument is validated here; nothing an app passes can
//! make the visor fault. See `docs/abi.md` for the reference.

use keel_abi::{AbiInfo, Call, LogLevel, Status, DEVICE_ID_LEN, LOG_MAX_LEN};

use crate::{board, console, ns_mem, time, VISOR};

/// Called by the NSC entry shim with the app's r0..r3 and the slot number.
pub extern "C" fn dispatch(a0: u32, a1: u32, a2: u32, _a3: u32, slot: u32) -> u32 {
    let status = match Call::from_slot(slot) {
        Some(call) => handle(call, a0, a1, a2),
        None => Status::NotImplemented,
    };
    status as u32
}

fn handle(call: Call, a0: u32, a1: u32, a2: u32) -> Status {
    match call {
        Call::AbiInfo => write_struct(a0, |_| {
            let v = |s: &str| s.parse::<u16>().unwrap_or(0);
            Some(
                AbiInfo {
                    version: 1,
                    abi_major: keel_abi::ABI_MAJOR,
                    abi_minor: keel_abi::ABI_MINOR,
                    visor_major: v(env!("CARGO_PKG_VERSION_MAJOR")),
                    visor_minor: v(env!("CARGO_PKG_VERSION_MINOR")),
                    visor_patch: v(env!("CARGO_PKG_VERSION_PATCH")),
                    reserved: 0,
                }
                .to_bytes(),
            )
        }),
        Call::DeviceId => device_id(a0, a1),
        Call::MonotonicUs => write_u64(a0, Some(time::now_us())),
        Call::WallTimeUs => write_u64(a0, time::wall_us()),
        Call::Log => log(a0, a1, a2),
        Call::Restart => restart(a0),
        Call::Wait => wait(a0, a1),
        Call::WatchdogStart => {
            let now = time::now_us();
            let s = VISOR.with(|v| v.as_mut().map_or(Status::InternalError, |v| v.sup.watchdog_start(now, a0)));
            // The new deadline may be earlier than the armed alarm.
            time::rearm();
            s
        }
        Call::WatchdogKick => {
            let now = time::now_us();
            VISOR.with(|v| v.as_mut().map_or(Status::InternalError, |v| v.sup.watchdog_kick(now)))
        }
        Call::BootInfo => write_struct(a0, |v| Some(v.sup.boot_info().to_bytes())),
        Call::LastCrash => write_struct(a0, |v| v.last_crash.map(|c| c.to_bytes())),
        Call::UpdateConfirm => VISOR.with(|v| v.as_mut().map_or(Status::InternalError, crate::update::confirm)),
        Call::UpdateInfo => write_struct(a0, |v| Some(crate::update::info(v).to_bytes())),
        Call::UpdateApply => update_apply(),
    }
}

/// Writes a versioned struct: checks the pointer for the whole struct, then its `version`.
/// `make` returns `None` when there is nothing to report ([`Status::Unavailable`]).
fn write_struct<const N: usize>(ptr: u32, make: impl FnOnce(&crate::Visor) -> Option<[u8; N]>) -> Status {
    if !ns_mem::check(ptr, N as u32, true) {
        return Status::ParameterFault;
    }
    if ns_mem::read_u32(ptr) != Some(1) {
        return Status::UnsupportedStructVersion;
    }
    match VISOR.with(|v| v.as_ref().map(make)) {
        None => Status::InternalError,
        Some(None) => Status::Unavailable,
        Some(Some(bytes)) => {
            ns_mem::write_from(ptr, &bytes);
            Status::Ok
        }
    }
}

fn write_u64(ptr: u32, value: Option<u64>) -> Status {
    if !ns_mem::check(ptr, 8, true) {
        return Status::ParameterFault;
    }
    match value {
        Some(v) => {
            ns_mem::write_from(ptr, &v.to_le_bytes());
            Status::Ok
        }
        None => Status::TimeNotSet,
    }
}

fn device_id(ptr: u32, len: u32) -> Status {
    if len < DEVICE_ID_LEN {
        return Status::InvalidBufferSize;
    }
    if !ns_mem::check(ptr, DEVICE_ID_LEN, true) {
        return Status::ParameterFault;
    }
    match VISOR.with(|v| v.as_ref().and_then(|v| v.factory).map(|f| f.device_id_ascii())) {
        Some(id) => {
            ns_mem::write_from(ptr, &id);
            Status::Ok
        }
        None => Status::Unavailable,
    }
}

fn log(level: u32, ptr: u32, len: u32) -> Status {
    let Some(level) = LogLevel::from_u32(level) else {
        return Status::InvalidArgument;
    };
    if len > LOG_MAX_LEN {
        return Status::LogMessageTooLong;
    }
    if !ns_mem::check(ptr, len, false) {
        return Status::ParameterFault;
    }
    let mut buf = [0u8; LOG_MAX_LEN as usize];
    let msg = &mut buf[..len as usize];
    ns_mem::read_into(ptr, msg);
    let msg = msg.strip_suffix(b"\n").unwrap_or(msg);
    // Queued for the server; the ring never refuses a message within LOG_MAX_LEN.
    let _ = crate::net::push_log(keel_log::Kind::App, level as u8, msg);
    let source = match level {
        LogLevel::Error => "app:E",
        LogLevel::Warn => "app:W",
        LogLevel::Info => "app:I",
        LogLevel::Debug => "app:D",
    };
    board::critical(|| {
        console::prefix(source);
        console::write_sanitised(msg);
        board::uart::putc(b'\r');
        board::uart::putc(b'\n');
    });
    Status::Ok
}

fn restart(code: u32) -> Status {
    if board::ipsr() != 0 {
        return Status::Unavailable;
    }
    VISOR.with(|v| {
        if let Some(v) = v.as_mut() {
            v.sup.on_restart_request(code);
        }
    });
    // The service routine preempts this thread right away and starts the app afresh; this system
    // call never returns.
    board::pend_service();
    loop {
        board::wait_for_interrupt();
    }
}

fn update_apply() -> Status {
    if board::ipsr() != 0 {
        return Status::Unavailable;
    }
    let applied = VISOR.with(|v| {
        v.as_mut().is_some_and(|v| {
            let applied = crate::update::apply_by_app(v);
            if applied {
                v.sup.on_restart_request(0);
            }
            applied
        })
    });
    if !applied {
        return Status::Unavailable;
    }
    // As for `restart`: the service routine starts the new app; this call never returns.
    board::pend_service();
    loop {
        board::wait_for_interrupt();
    }
}

fn wait(timeout_us: u32, events_ptr: u32) -> Status {
    if board::ipsr() != 0 {
        return Status::Unavailable;
    }
    if events_ptr != 0 && !ns_mem::check(events_ptr, 4, true) {
        return Status::ParameterFault;
    }
    let deadline = time::now_us().saturating_add(timeout_us as u64);
    time::set_wait_deadline(Some(deadline));
    // App interrupts keep running while the secure thread sleeps here. An event ends the wait;
    // each event is reported once.
    let ready = || crate::update::READY_EVENT.load(core::sync::atomic::Ordering::Relaxed);
    while time::now_us() < deadline && !ready() {
        board::wait_for_interrupt();
    }
    time::set_wait_deadline(None);
    let events = if crate::update::READY_EVENT.swap(false, core::sync::atomic::Ordering::Relaxed) {
        keel_abi::events::UPDATE_READY
    } else {
        keel_abi::events::NONE
    };
    if events_ptr != 0 {
        ns_mem::write_from(events_ptr, &events.to_le_bytes());
    }
    Status::Ok
}
