//! System-call implementations. Every argument is validated here: no argument an app passes can
//! make the visor fault. See `docs/abi.md` for the reference.
//!
//! The entry shim (`rt::keel_syscall_entry`) masks every app exception before it calls a handler
//! from [`TABLE`], so a handler runs to completion with no app code in between (no handler
//! blocks: waiting happens in the app, woken by [`crate::notify`] records), and takes the visor's
//! state with [`crate::global::Global::with`].

use keel_abi::{notify, AbiInfo, Call, LogLevel, Status, DEVICE_ID_LEN, LOG_MAX_LEN, SLOT_COUNT};

use crate::ns_mem::{self, Awake, Read, Write};
use crate::{board, console, time, Visor, VISOR};

/// A system call's handler: r0..r3 in, r0 (and r1) out.
pub type Handler = extern "C" fn(u32, u32, u32, u32) -> u64;

/// The handler of every slot, indexed by the slot number the veneer passes (unused slots answer
/// NOT_IMPLEMENTED). Read by the entry shim.
pub static TABLE: [Handler; SLOT_COUNT as usize] = table();

const fn table() -> [Handler; SLOT_COUNT as usize] {
    let mut t = [not_implemented as Handler; SLOT_COUNT as usize];
    t[Call::AbiInfo as usize] = abi_info;
    t[Call::DeviceId as usize] = device_id;
    t[Call::MonotonicUs as usize] = monotonic_us;
    t[Call::WallTimeUs as usize] = wall_time_us;
    t[Call::Log as usize] = log;
    t[Call::Restart as usize] = restart;
    t[Call::WatchdogStart as usize] = watchdog_start;
    t[Call::WatchdogKick as usize] = watchdog_kick;
    t[Call::BootInfo as usize] = boot_info;
    t[Call::LastCrash as usize] = last_crash;
    t[Call::NotifySetup as usize] = notify_setup;
    t[Call::TimerSet as usize] = timer_set;
    t[Call::NetRequest as usize] = net_request;
    t[Call::NetRelease as usize] = net_release;
    t[Call::NetStatus as usize] = net_status;
    t[Call::ChanOpen as usize] = chan_open;
    t[Call::ChanSend as usize] = chan_send;
    t[Call::ChanRecv as usize] = chan_recv;
    t[Call::ChanConsume as usize] = chan_consume;
    t[Call::ChanClose as usize] = chan_close;
    t[Call::ChanInfo as usize] = chan_info;
    t[Call::UpdateConfirm as usize] = update_confirm;
    t[Call::UpdateInfo as usize] = update_info;
    t[Call::UpdateApply as usize] = update_apply;
    t
}

fn ret(s: Status) -> u64 {
    s as u64
}

/// Runs `f` on the visor's state; INTERNAL_ERROR before it exists.
fn with_visor(f: impl FnOnce(&mut Visor) -> Status) -> u64 {
    ret(VISOR.with(|v| v.as_deref_mut().map_or(Status::InternalError, f)))
}

extern "C" fn not_implemented(_: u32, _: u32, _: u32, _: u32) -> u64 {
    ret(Status::NotImplemented)
}

extern "C" fn abi_info(out: u32, _: u32, _: u32, _: u32) -> u64 {
    ret(write_struct(&Awake::new(), out, |_| {
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
    }))
}

extern "C" fn monotonic_us(_: u32, _: u32, _: u32, _: u32) -> u64 {
    time::now_us()
}

extern "C" fn wall_time_us(out: u32, _: u32, _: u32, _: u32) -> u64 {
    ret(write_u64(&Awake::new(), out, time::wall_us()))
}

extern "C" fn watchdog_start(ms: u32, _: u32, _: u32, _: u32) -> u64 {
    let now = time::now_us();
    let s = with_visor(|v| v.core.watchdog_start(now, ms));
    // The new deadline may be earlier than the armed alarm: the service routine re-arms.
    board::pend_service();
    s
}

extern "C" fn watchdog_kick(_: u32, _: u32, _: u32, _: u32) -> u64 {
    let now = time::now_us();
    with_visor(|v| {
        v.core.app_alive(now);
        v.core.watchdog_kick(now)
    })
}

extern "C" fn boot_info(out: u32, _: u32, _: u32, _: u32) -> u64 {
    ret(write_struct(&Awake::new(), out, |v| Some(v.core.boot_info().to_bytes())))
}

extern "C" fn last_crash(out: u32, _: u32, _: u32, _: u32) -> u64 {
    ret(write_struct(&Awake::new(), out, |v| v.core.last_crash().map(|c| c.to_bytes())))
}

extern "C" fn update_confirm(_: u32, _: u32, _: u32, _: u32) -> u64 {
    let now = time::now_us();
    let s = with_visor(|v| v.core.app_confirm(now, &mut crate::net::Effects(&mut v.pending)));
    // The confirmation is reported to the server by the service routine.
    board::pend_service();
    if s == Status::Ok as u64 {
        // The update is done: how long did it (and everything since boot) mask interrupts?
        console::log_masked_max();
    }
    s
}

extern "C" fn update_info(out: u32, _: u32, _: u32, _: u32) -> u64 {
    let now = time::now_us();
    ret(write_struct(&Awake::new(), out, |v| {
        v.core.app_alive(now);
        Some(v.core.update_info().to_bytes())
    }))
}

/// Writes a versioned struct: checks the pointer for the whole struct, then its `version`.
/// `make` returns `None` when there is nothing to report ([`Status::Unavailable`]).
fn write_struct<const N: usize>(awake: &Awake, ptr: u32, make: impl FnOnce(&mut Visor) -> Option<[u8; N]>) -> Status {
    write_struct_or(awake, ptr, |v| make(v).ok_or(Status::Unavailable))
}

/// [`write_struct`] for a call that may fail with any status (nothing is written then).
fn write_struct_or<const N: usize>(
    awake: &Awake,
    ptr: u32,
    make: impl FnOnce(&mut Visor) -> Result<[u8; N], Status>,
) -> Status {
    const { assert!(N >= 4) };
    let Some(out) = ns_mem::check::<Write>(awake, ptr, N as u32) else {
        return Status::ParameterFault;
    };
    if out.read_u32() != 1 {
        return Status::UnsupportedStructVersion;
    }
    match VISOR.with(|v| v.as_deref_mut().map(make)) {
        None => Status::InternalError,
        Some(Err(s)) => s,
        Some(Ok(bytes)) => {
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

extern "C" fn device_id(ptr: u32, len: u32, _: u32, _: u32) -> u64 {
    if len < DEVICE_ID_LEN {
        return ret(Status::InvalidBufferSize);
    }
    let awake = Awake::new();
    let Some(out) = ns_mem::check::<Write>(&awake, ptr, DEVICE_ID_LEN) else {
        return ret(Status::ParameterFault);
    };
    ret(match VISOR.with(|v| v.as_ref().and_then(|v| v.factory).map(|f| f.device_id_ascii())) {
        Some(id) => {
            out.write_from(&id);
            Status::Ok
        }
        None => Status::Unavailable,
    })
}

// The log ring takes every message the system call accepts (see `log`).
const _: () = assert!(keel_log::MAX_TEXT >= keel_abi::LOG_MAX_LEN as usize);

extern "C" fn log(level: u32, ptr: u32, len: u32, _: u32) -> u64 {
    let Some(level) = LogLevel::from_u32(level) else {
        return ret(Status::InvalidArgument);
    };
    if len > LOG_MAX_LEN {
        return ret(Status::LogMessageTooLong);
    }
    let awake = Awake::new();
    let Some(input) = ns_mem::check::<Read>(&awake, ptr, len) else {
        return ret(Status::ParameterFault);
    };
    // Copied once; only the copy is used (the app cannot change it between checks and use).
    let mut buf = [0u8; LOG_MAX_LEN as usize];
    let msg = &mut buf[..len as usize];
    input.read_into(msg);
    let msg = msg.strip_suffix(b"\n").unwrap_or(msg);
    // Queued for the server (the core escapes app text and keeps room for the visor's own
    // records); the ring never refuses a message within LOG_MAX_LEN (asserted above).
    let now = time::now_us();
    let online = VISOR.with(|v| {
        v.as_mut().is_some_and(|v| {
            v.core.app_alive(now);
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
    ret(Status::Ok)
}

/// Asks the service routine to stop the running app: it runs as soon as this call unmasks, before
/// any app code (it is above every app priority), so the call never returns to the app.
fn stop_app(v: &mut Visor) {
    v.stop_requested = true;
    board::pend_service();
}

extern "C" fn restart(code: u32, _: u32, _: u32, _: u32) -> u64 {
    if board::ipsr() != 0 {
        return ret(Status::Unavailable);
    }
    let now = time::now_us();
    with_visor(|v| {
        // A restart storm delays the start (the core says when); the app stops now either way.
        let _delay = v.core.app_restart_in(now, code, &mut crate::net::Effects(&mut v.pending));
        stop_app(v);
        Status::Ok
    })
}

extern "C" fn update_apply(_: u32, _: u32, _: u32, _: u32) -> u64 {
    if board::ipsr() != 0 {
        return ret(Status::Unavailable);
    }
    let now = time::now_us();
    with_visor(|v| {
        if !v.core.app_apply(now, &mut crate::net::Effects(&mut v.pending)) {
            return Status::Unavailable;
        }
        // The old app never runs again: the service routine starts the new one.
        stop_app(v);
        Status::Ok
    })
}

extern "C" fn notify_setup(ring: u32, bytes: u32, irq: u32, _: u32) -> u64 {
    let now = time::now_us();
    let awake = Awake::new();
    if ring == 0 {
        return with_visor(|v| {
            crate::notify::disable(v);
            Status::Ok
        });
    }
    let Some(records) = notify::records_for(bytes) else {
        return ret(Status::InvalidBufferSize);
    };
    if !notify::APP_IRQS.contains(&irq) {
        return ret(Status::InvalidArgument);
    }
    if !ring.is_multiple_of(4) || ns_mem::check::<Write>(&awake, ring, bytes).is_none() {
        return ret(Status::ParameterFault);
    }
    let in_use = VISOR.with(|v| {
        v.as_ref().is_some_and(|v| v.core.channels().buffers().any(|b| keel_abi::chan::overlaps(b, (ring, bytes))))
    });
    if in_use {
        return ret(Status::BufferInUse);
    }
    with_visor(|v| {
        v.core.app_alive(now);
        crate::notify::setup(v, &awake, ring, records, irq);
        Status::Ok
    })
}

extern "C" fn timer_set(lo: u32, hi: u32, tag: u32, _: u32) -> u64 {
    let deadline = (hi as u64) << 32 | lo as u64;
    let now = time::now_us();
    with_visor(|v| {
        if v.notify.is_none() {
            return Status::Unavailable;
        }
        v.core.app_alive(now);
        v.timer = (deadline != 0).then_some((deadline, tag));
        // The service routine posts it when due and arms the alarm for it.
        board::pend_service();
        Status::Ok
    })
}

// ------------------------------------------------------------------ network and channels (ABI 2.1)

extern "C" fn net_request(tag: u32, _: u32, _: u32, _: u32) -> u64 {
    let now = time::now_us();
    let s = with_visor(|v| v.core.net_request(now, tag));
    // The service routine reports the current state as a record.
    board::pend_service();
    s
}

extern "C" fn net_release(_: u32, _: u32, _: u32, _: u32) -> u64 {
    let now = time::now_us();
    with_visor(|v| v.core.net_release(now))
}

extern "C" fn net_status(out: u32, _: u32, _: u32, _: u32) -> u64 {
    ret(write_struct(&Awake::new(), out, |v| Some(v.core.net_status().to_bytes())))
}

extern "C" fn chan_open(params: u32, handle_out: u32, _: u32, _: u32) -> u64 {
    use keel_abi::chan::{OpenParams, MAX_ENDPOINT, OPEN_PARAMS_LEN};
    let now = time::now_us();
    let awake = Awake::new();
    let Some(input) = ns_mem::check::<Read>(&awake, params, OPEN_PARAMS_LEN) else {
        return ret(Status::ParameterFault);
    };
    let Some(out) = ns_mem::check::<Write>(&awake, handle_out, 4) else {
        return ret(Status::ParameterFault);
    };
    // Copied once; only the copy is used.
    let mut raw = [0u8; OPEN_PARAMS_LEN as usize];
    input.read_into(&mut raw);
    let p = OpenParams::from_bytes(&raw);
    if let Err(s) = p.check() {
        return ret(s);
    }
    let writable = |addr: u32, len: u32| ns_mem::check::<Write>(&awake, addr, len).is_some();
    if !writable(p.rx_buf, p.rx_len) || !writable(p.tx_buf, p.tx_len) {
        return ret(Status::ParameterFault);
    }
    let mut endpoint = [0u8; MAX_ENDPOINT as usize];
    let endpoint = &mut endpoint[..p.endpoint_len as usize];
    match ns_mem::check::<Read>(&awake, p.endpoint, p.endpoint_len) {
        Some(e) => e.read_into(endpoint),
        None => return ret(Status::ParameterFault),
    }
    with_visor(|v| {
        let ring = v.notify.as_ref().map(|r| r.region());
        let reserved = ring.as_slice();
        match v.core.chan_open(now, &p, endpoint, reserved, ns_mem::caller_unprivileged()) {
            Ok(h) => {
                out.write_from(&h.to_le_bytes());
                Status::Ok
            }
            Err(s) => s,
        }
    })
}

extern "C" fn chan_send(handle: u32, msg: u32, len: u32, _: u32) -> u64 {
    let now = time::now_us();
    let caller = ns_mem::caller_unprivileged();
    let s = with_visor(|v| v.core.chans_mut(now).send(now, handle, msg, len, caller, &mut ns_mem::AppMem));
    if s == Status::Ok as u64 {
        // The service routine sends it.
        board::pend_service();
    }
    s
}

extern "C" fn chan_recv(handle: u32, out: u32, _: u32, _: u32) -> u64 {
    let now = time::now_us();
    ret(write_struct_or(&Awake::new(), out, |v| {
        v.core.chans_mut(now).recv(handle, &mut ns_mem::AppMem).map(|m| m.to_bytes())
    }))
}

extern "C" fn chan_consume(handle: u32, _: u32, _: u32, _: u32) -> u64 {
    let now = time::now_us();
    let s = with_visor(|v| v.core.chans_mut(now).consume(handle, &mut ns_mem::AppMem));
    if s == Status::Ok as u64 {
        // Room came free: the service routine gives it to the server as credit.
        board::pend_service();
    }
    s
}

extern "C" fn chan_close(handle_ptr: u32, _: u32, _: u32, _: u32) -> u64 {
    let now = time::now_us();
    let awake = Awake::new();
    let Some(h) = ns_mem::check::<Write>(&awake, handle_ptr, 4) else {
        return ret(Status::ParameterFault);
    };
    let handle = h.read_u32();
    let s = with_visor(|v| v.core.chans_mut(now).close(handle));
    // Zeroed whatever the handle was: closing twice is harmless.
    h.write_from(&0u32.to_le_bytes());
    if s == Status::Ok as u64 {
        // The server is told.
        board::pend_service();
    }
    s
}

extern "C" fn chan_info(handle: u32, out: u32, _: u32, _: u32) -> u64 {
    ret(write_struct_or(&Awake::new(), out, |v| v.core.channels().info(handle).map(|i| i.to_bytes())))
}
