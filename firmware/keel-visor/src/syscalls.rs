//! System-call implementations. Every argument is validated here; nothing an app passes can
//! make the visor fault. See `docs/abi.md` for the reference.

use keel_abi::{AbiInfo, Call, LogLevel, Status, DEVICE_ID_LEN, LOG_MAX_LEN};

use crate::ns_mem::{self, Awake, Read, Write};
use crate::{board, console, time, VISOR};

/// Called by the NSC entry shim with the app's r0..r3 and the slot number.
pub extern "C" fn dispatch(a0: u32, a1: u32, a2: u32, _a3: u32, slot: u32) -> u32 {
    let mut awake = Awake::new();
    let status = match Call::from_slot(slot) {
        Some(call) => handle(&mut awake, call, a0, a1, a2),
        None => Status::NotImplemented,
    };
    status as u32
}

fn handle(awake: &mut Awake, call: Call, a0: u32, a1: u32, a2: u32) -> Status {
    match call {
        Call::AbiInfo => write_struct(awake, a0, |_| {
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
        Call::DeviceId => device_id(awake, a0, a1),
        Call::MonotonicUs => write_u64(awake, a0, Some(time::now_us())),
        Call::WallTimeUs => write_u64(awake, a0, time::wall_us()),
        Call::Log => log(awake, a0, a1, a2),
        Call::Restart => restart(a0),
        Call::Wait => wait(awake, a0, a1),
        Call::WatchdogStart => {
            let now = time::now_us();
            let s = VISOR.with(|v| v.as_mut().map_or(Status::InternalError, |v| v.core.watchdog_start(now, a0)));
            // The new deadline may be earlier than the armed alarm: the service routine re-arms.
            board::pend_service();
            s
        }
        Call::WatchdogKick => {
            let now = time::now_us();
            VISOR.with(|v| v.as_mut().map_or(Status::InternalError, |v| v.core.watchdog_kick(now)))
        }
        Call::BootInfo => write_struct(awake, a0, |v| Some(v.core.boot_info().to_bytes())),
        Call::LastCrash => write_struct(awake, a0, |v| v.core.last_crash().map(|c| c.to_bytes())),
        Call::UpdateConfirm => {
            let now = time::now_us();
            let s = VISOR.with(|v| {
                v.as_mut().map_or(Status::InternalError, |v| {
                    v.core.app_confirm(now, &mut crate::net::Effects(&mut v.pending))
                })
            });
            // The confirmation is reported to the server by the service routine.
            board::pend_service();
            if s == Status::Ok {
                // The update is done: how long did it (and everything since boot) mask interrupts?
                console::log_masked_max();
            }
            s
        }
        Call::UpdateInfo => write_struct(awake, a0, |v| Some(v.core.update_info().to_bytes())),
        Call::UpdateApply => update_apply(),
    }
}

/// Writes a versioned struct: checks the pointer for the whole struct, then its `version`.
/// `make` returns `None` when there is nothing to report ([`Status::Unavailable`]).
fn write_struct<const N: usize>(
    awake: &Awake,
    ptr: u32,
    make: impl FnOnce(&crate::Visor) -> Option<[u8; N]>,
) -> Status {
    const { assert!(N >= 4) };
    let Some(out) = ns_mem::check::<Write>(awake, ptr, N as u32) else {
        return Status::ParameterFault;
    };
    if out.read_u32() != 1 {
        return Status::UnsupportedStructVersion;
    }
    match VISOR.with(|v| v.as_deref().map(make)) {
        None => Status::InternalError,
        Some(None) => Status::Unavailable,
        Some(Some(bytes)) => {
            out.write_from(&bytes);
            Status::Ok
        }
    }
}

fn write_u64(awake: &Awake, ptr: u32, value: Option<u64>) -> Status {
    let Some(out) = ns_mem::check::<Write>(awake, ptr, 8) else {
        return Status::ParameterFault;
    };
    match value {
        Some(v) => {
            out.write_from(&v.to_le_bytes());
            Status::Ok
        }
        None => Status::TimeNotSet,
    }
}

fn device_id(awake: &Awake, ptr: u32, len: u32) -> Status {
    if len < DEVICE_ID_LEN {
        return Status::InvalidBufferSize;
    }
    let Some(out) = ns_mem::check::<Write>(awake, ptr, DEVICE_ID_LEN) else {
        return Status::ParameterFault;
    };
    match VISOR.with(|v| v.as_ref().and_then(|v| v.factory).map(|f| f.device_id_ascii())) {
        Some(id) => {
            out.write_from(&id);
            Status::Ok
        }
        None => Status::Unavailable,
    }
}

// The log ring takes every message the system call accepts (see `log`).
const _: () = assert!(keel_log::MAX_TEXT >= keel_abi::LOG_MAX_LEN as usize);

fn log(awake: &Awake, level: u32, ptr: u32, len: u32) -> Status {
    let Some(level) = LogLevel::from_u32(level) else {
        return Status::InvalidArgument;
    };
    if len > LOG_MAX_LEN {
        return Status::LogMessageTooLong;
    }
    let Some(input) = ns_mem::check::<Read>(awake, ptr, len) else {
        return Status::ParameterFault;
    };
    let mut buf = [0u8; LOG_MAX_LEN as usize];
    let msg = &mut buf[..len as usize];
    input.read_into(msg);
    let msg = msg.strip_suffix(b"\n").unwrap_or(msg);
    // Queued for the server; the ring never refuses a message within LOG_MAX_LEN (asserted above).
    let now = time::now_us();
    let online = VISOR.with(|v| {
        v.as_mut().is_some_and(|v| {
            let _ = v.core.push_log(now, keel_log::Kind::App, level as u8, msg);
            v.core.is_online()
        })
    });
    if online {
        // The service routine sends it now.
        board::pend_service();
    }
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
    let now = time::now_us();
    VISOR.with(|v| {
        if let Some(v) = v.as_mut() {
            v.core.app_restart(now, code, &mut crate::net::Effects(&mut v.pending));
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
    let now = time::now_us();
    let applied =
        VISOR.with(|v| v.as_mut().is_some_and(|v| v.core.app_apply(now, &mut crate::net::Effects(&mut v.pending))));
    if !applied {
        return Status::Unavailable;
    }
    // As for `restart`: the service routine starts the new app; this call never returns.
    board::pend_service();
    loop {
        board::wait_for_interrupt();
    }
}

fn wait(awake: &mut Awake, timeout_us: u32, events_ptr: u32) -> Status {
    if board::ipsr() != 0 {
        return Status::Unavailable;
    }
    if events_ptr != 0 && ns_mem::check::<Write>(awake, events_ptr, 4).is_none() {
        return Status::ParameterFault;
    }
    let deadline = time::now_us().saturating_add(timeout_us as u64);
    let set_deadline = |d: Option<u64>| {
        VISOR.with(|v| {
            if let Some(v) = v.as_mut() {
                v.wait_deadline = d;
            }
        });
        // The service routine arms the alarm for it.
        board::pend_service();
    };
    set_deadline(Some(deadline));
    // App interrupts keep running while the secure thread sleeps here. An event ends the wait;
    // each event is reported once.
    let ready = || VISOR.with(|v| v.as_ref().is_some_and(|v| v.core.app_events_pending()));
    while time::now_us() < deadline && !ready() {
        awake.sleep();
    }
    set_deadline(None);
    // The app's handlers ran during the sleep and may have changed its MPU: check again, before
    // an event is taken, so a refused pointer does not lose it.
    let out = match events_ptr {
        0 => None,
        p => match ns_mem::check::<Write>(awake, p, 4) {
            Some(out) => Some(out),
            None => return Status::ParameterFault,
        },
    };
    let events = VISOR.with(|v| v.as_mut().map_or(keel_abi::events::NONE, |v| v.core.take_app_events()));
    if let Some(out) = out {
        out.write_from(&events.to_le_bytes());
    }
    Status::Ok
}
