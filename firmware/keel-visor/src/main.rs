//! # The Keel visor
//!
//! Secure-world firmware for Cortex-M33 with TrustZone: a board shell around the device core
//! ([`keel_device::Device`]), which makes every decision (app lifecycle, link, logs, updates,
//! trials). At reset the visor configures the security controllers so the app gets only its own
//! code region and RAM, opens the fixed system-call table, builds the core, and from then on only
//! runs from exceptions, above every app priority:
//!
//! * **The alarm** (a timer interrupt, tickless) and **the Ethernet interrupt** only wake the
//!   service routine.
//! * **PendSV** (the service routine): polls the network adapter ([`net`]) and the core, starts
//!   or stops the app as the core says, and arms the alarm for the earliest deadline of all
//!   ([`rearm`]). It runs with interrupts enabled: exclusion from system calls is by priority
//!   ([`global::Global::with_in_service`]).
//! * **Faults**: anything the app does wrong ends here; the visor captures a crash report
//!   ([`keel_supervisor::crash`]) and hands it to the core, which restarts the app after a
//!   backoff (and counts a trial crash). A fault in visor code resets the system.
//! * **System calls**: NSC veneers at fixed slots, dispatched in [`syscalls`], which validate
//!   every argument and call the core.
//!
//! When the app is stopped, the secure thread runs an idle loop.
//!
//! Module map:
//! * [`rt`]: the vector table, `Reset`, the NSC veneers and system-call entry, the exception
//!   trampolines, the idle thread, the visor's stacks: everything in assembly.
//! * [`board`]: the hardware of the mps2-an505 (memory map, security controllers, timers, UART,
//!   NVIC, flash medium, the NIC, warm RAM).
//! * [`ns_mem`]: checked access to app memory; [`app`]: loading and starting the app.
//! * [`global`]: state shared between execution contexts; [`syscalls`]: the system calls.
//! * [`time`]: the clock and the alarm; [`console`]: the log lines; [`rng`]: randomness.
//! * [`net`]: smoltcp and the LAN9118 as the core's transport.
//! * [`warm`]: the run record in RAM that survives a reset (reset-loop resistance).
//!
//! `unsafe` is denied here and allowed only in [`rt`], [`board`], [`ns_mem`] and [`global`].
#![no_std]
#![no_main]
#![deny(unsafe_code, unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

mod app;
mod board;
mod console;
mod debug;
mod global;
mod net;
mod notify;
mod ns_mem;
mod rng;
mod rt;
mod syscalls;
mod time;
mod warm;

use keel_abi::{CrashReport, FaultKind};
use keel_device::AppAction;
use keel_flash::factory::Factory;
use keel_flash::{layout, Nor, SeqLog};
use keel_supervisor::crash::{self, FaultStatus, NsStacks};
use keel_supervisor::handover::ResetCause;
use keel_supervisor::{fault_kind_from_ipsr, ExcReturn, Policy};
use sha2::{Digest, Sha256};

use crate::board::{Board, FaultReg, This};
use crate::console::Hex;
use crate::global::Global;
use crate::rt::{fresh, keep};

/// Visor version (from Cargo).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Everything the visor keeps between exceptions: the device core (app lifecycle, link, logs,
/// updates) and the board adapters around it. One owner, reached through one [`Global`].
pub struct Visor {
    /// The device core: every decision is made there.
    pub core: net::Core,
    /// The network adapter (absent when the device is not provisioned or has no NIC).
    pub nic: Option<net::Nic>,
    /// Network effects of the core waiting for the service routine.
    pub pending: net::Pending,
    /// Factory data, if the device is provisioned.
    pub factory: Option<Factory>,
    /// The app's notification ring, once it set one up.
    pub notify: Option<notify::Ring>,
    /// The app's timer: deadline and tag.
    pub timer: Option<(u64, u32)>,
    /// A system call (`restart`, `update_apply`) asked the service routine to stop the app.
    pub stop_requested: bool,
    /// The slot and image digest last verified (a restart of the same slot does not hash again).
    pub verified: Option<(keel_update::Slot, [u8; 32])>,
    /// The app, halted for the debugger.
    pub halted: Option<debug::Halted>,
}

/// Where the visor's state lives: uninitialised RAM (`.bss`), built in place at boot. A
/// `static` holding the state itself would be initialised data, copied from flash at reset: 17
/// KiB of flash for nothing.
static STATE: static_cell::StaticCell<Visor> = static_cell::StaticCell::new();

/// The visor's state. `None` only before `visor_main` initialised it.
pub static VISOR: Global<Option<&'static mut Visor>> = Global::new(None);

/// Stops the app: the non-secure side is parked ([`app::prepare_park`]) with every app exception
/// masked until the core starts the app again; returns the trampoline result.
fn go_idle(v: &mut Visor) -> u64 {
    v.stop_requested = false;
    v.halted = None;
    notify::disable(v);
    // The secure thread (a system call) is abandoned.
    rt::abandon_secure_thread();
    board::mask_app_exceptions(true);
    app::prepare_park();
    fresh(app::RETURN_TO_APP)
}

/// Loads and starts the app from `slot` (the core decides the slot, and what to do when a trial
/// image does not load); returns the trampoline result.
fn launch(v: &mut Visor, mut slot: keel_update::Slot, now: u64) -> u64 {
    v.stop_requested = false;
    v.halted = None;
    notify::disable(v);
    let loaded = loop {
        let verified = v.verified.filter(|(s, _)| *s == slot).map(|(_, d)| d);
        v.verified = None;
        match app::load(v.core.partition(slot), verified) {
            Ok(loaded) => {
                v.verified = Some((slot, loaded.header.digest));
                break Some(loaded);
            }
            Err(e) => {
                vlog!("app not started: {} (slot {})", e, slot.as_str());
                match v.core.app_load_failed(now, slot, &mut net::Effects(&mut v.pending)) {
                    Some(next) if next != slot => slot = next,
                    _ => break None,
                }
            }
        }
    };
    let Some(loaded) = loaded else { return go_idle(v) };
    app::prepare_start(&loaded);
    board::mask_app_exceptions(false);
    // The secure thread (a system call or the idle loop) is abandoned.
    rt::abandon_secure_thread();
    // The app's run (its trial grace time, its watchdog) starts now, after the load and the RAM
    // clear, not when the service routine began.
    let info = v.core.app_launched(time::now_us(), slot, loaded.header);
    sync_warm(v);
    let reason = keel_abi::StartReason::from_u32(info.reason).map_or("?", |r| r.name());
    vlog!(
        "starting app '{}' {} ({} bytes, sha256 {}) reason={} restarts={} crashes={}",
        loaded.header.name_str(),
        loaded.header.version_str(),
        loaded.header.image_size,
        Hex(&loaded.header.digest),
        reason,
        info.restart_count,
        info.crash_count
    );
    if info.restart_count > 0 {
        log_integrity();
    }
    log_stack_usage();
    fresh(app::RETURN_TO_APP)
}

/// Arms the alarm for the earliest deadline of everything the visor runs: the one place that
/// knows them all.
fn rearm(v: &mut Visor, now: u64) {
    let nic = v.nic.as_mut().and_then(|n| n.poll_at(now));
    let timer = v.timer.map(|(d, _)| d);
    // The hardware watchdog is fed by every pass: wake up at least every half of its period.
    let feed = Some(now + board::WATCHDOG_TIMEOUT_MS as u64 * 500);
    // A halt the app could not take yet (it was in a handler or a system call): try again soon.
    let halt = v.core.debug_halt_wanted().then_some(now + HALT_RETRY_US);
    time::arm_at(keel_device::earliest([v.core.poll_at(), nic, timer, feed, halt]));
}

/// PendSV: the service routine. Runs the network and the device core's timers, delivers the
/// app's notifications, and acts on what the core says about the app. Runs with interrupts
/// enabled (see [`Global::with_in_service`]).
///
/// The app can be stopped or started here only if none of its exceptions is active: an active
/// exception can only be cleared by a reset. So when the app sits in one of its handlers at the
/// moment the core wants it gone (a watchdog kill, an installed update to start, a trial ended,
/// an update to apply), the visor resets the system with the hand-over in warm RAM, and the next
/// boot does what was due. An app cannot hold off an update or a rollback by living in a handler.
extern "C" fn service_handler(exc_return: u32, sp: u32) -> u64 {
    let exc = ExcReturn(exc_return);
    VISOR.with_in_service(|v| {
        let Some(v) = v.as_mut() else { return keep(exc_return) };
        let now = time::now_us();
        This::feed_watchdog();
        if let Some(nic) = v.nic.as_mut() {
            nic.poll(now, &mut v.core, &mut v.pending);
        }
        let mut action = v.core.poll(now, &mut net::Effects(&mut v.pending));
        if let Some(nic) = v.nic.as_mut() {
            // Effects of the timers (a connect after backoff, a close after silence).
            nic.poll(now, &mut v.core, &mut v.pending);
            This::unmask_net_irq();
            // That exchange may have changed what the app must run: an update installed from
            // the frames it received after the poll above chose to restart the app would
            // otherwise start its trial with the old slot's image (seen when an app restarted
            // as an update's last chunk arrived: the good update was rolled back). Ask again;
            // a later answer wins. A watchdog kill is acted on first (an install leaves its
            // launch pending for the next pass).
            if !matches!(action, AppAction::KillForWatchdog) {
                match v.core.poll(now, &mut net::Effects(&mut v.pending)) {
                    AppAction::None => {}
                    later => action = later,
                }
            }
        }
        notify::poll(v, now);
        let in_handler = board::ns_exception_active();
        // The debugger's requests, unless the app is about to be replaced anyway.
        let debug = match action {
            AppAction::None => serve_debug(v, now, exc_return, sp),
            _ => {
                if v.core.debug().is_some_and(|d| d.has_frame()) {
                    // The link reads on only once the frame is served: another pass soon.
                    board::pend_service();
                }
                None
            }
        };
        let result = match action {
            _ if debug.is_some() => debug.unwrap_or(keep(exc_return)),
            AppAction::KillForWatchdog if in_handler => {
                let report = crash_report(FaultKind::Watchdog, exc, now);
                reset_after_app_fault(v, report, app_callee(exc, sp), now, true, "app hung in an exception handler")
            }
            AppAction::KillForWatchdog => {
                let report = crash_report(FaultKind::Watchdog, exc, now);
                record_crash(v, report, app_callee(exc, sp), now, true);
                go_idle(v)
            }
            AppAction::Launch(_) if in_handler => reset_to_start(v, "the app is in an exception handler"),
            AppAction::Launch(slot) => launch(v, slot, now),
            // A restart or apply the core holds back (a restart storm's backoff): the app stops
            // meanwhile.
            AppAction::None if v.stop_requested && !in_handler => go_idle(v),
            AppAction::None => keep(exc_return),
        };
        rearm(v, now);
        sync_warm(v);
        result
    })
}

/// How soon a halt the app could not take is tried again (µs).
const HALT_RETRY_US: u64 = 2_000;
/// The restart code of a restart the debugger asked for (`kill`).
const DEBUGGER_RESTART: u32 = 0x4B44_4247;

/// Serves the debugger from the service routine: runs its request against the app, then
/// resumes, restarts or halts the app as the agent says. Returns the trampoline result when the
/// app's context changes (`None`: return where the service routine interrupted).
fn serve_debug(v: &mut Visor, now: u64, exc_return: u32, sp: u32) -> Option<u64> {
    if v.core.debug().is_some_and(|d| d.has_frame()) {
        // The link stopped reading at this frame: another pass reads what follows it.
        board::pend_service();
    }
    let mut target = debug::AppTarget { halted: v.halted.as_mut(), awake: ns_mem::Awake::new() };
    match v.core.debug_service(now, &mut target) {
        keel_device::DebugAction::Resume => {
            let h = v.halted.take()?;
            if let Some(report) = h.fault {
                // It stopped on a fault: resuming it is the crash's usual restart.
                record_crash(v, report, h.callee, now, false);
                return Some(go_idle(v));
            }
            rt::return_into(sp, &h.callee, h.exc_return);
            board::mask_app_exceptions(false);
            rt::abandon_secure_thread();
            return Some(keep(h.exc_return));
        }
        keel_device::DebugAction::Restart => {
            let _delay = v.core.app_restart_in(now, DEBUGGER_RESTART, &mut net::Effects(&mut v.pending));
            vlog!("debug: app restart requested by the debugger");
            if v.halted.take().is_some() || !board::ns_exception_active() {
                return Some(go_idle(v));
            }
            // Inside one of its handlers the app cannot be stopped: the usual stop path waits
            // until it is back in thread mode.
            v.stop_requested = true;
            return None;
        }
        keel_device::DebugAction::Halt | keel_device::DebugAction::None => {}
    }
    if v.core.debug_halt_wanted() && v.halted.is_none() && !v.stop_requested {
        let h = debug::Halted::capture(exc_return, sp)?;
        return Some(halt(v, h, now, keel_device::StopReason::Halted, 0));
    }
    None
}

/// Holds the app halted in context `h` and tells the debugger why; returns the trampoline
/// result that enters the visor's idle thread.
fn halt(v: &mut Visor, h: debug::Halted, now: u64, reason: keel_device::StopReason, detail: u32) -> u64 {
    v.halted = Some(h);
    let mut target = debug::AppTarget { halted: v.halted.as_mut(), awake: ns_mem::Awake::new() };
    v.core.debug_stopped(now, reason, detail, &mut target);
    board::mask_app_exceptions(true);
    // The stop event goes out from the service routine.
    board::pend_service();
    fresh(rt::idle_thread_entry())
}

/// Keeps the run record in warm RAM current (written only when it changed).
fn sync_warm(v: &mut Visor) {
    if let Some(r) = v.core.take_run_record() {
        warm::write(&r);
    }
}

/// The alarm interrupt: a deadline is due; the service routine finds out which and re-arms.
extern "C" fn keel_alarm() {
    This::ack_alarm();
    board::pend_service();
}

/// The Ethernet interrupt: masks itself and wakes the service routine, which polls the
/// controller and unmasks it.
extern "C" fn keel_net_irq() {
    This::mask_net_irq();
    board::pend_service();
}

/// The app's crash report, from the exception that caught it (see [`keel_supervisor::crash`]).
/// App memory is read through the access-checked [`ns_mem::read_u32`], so a hostile stack
/// pointer reads nothing the app could not read itself.
fn crash_report(kind: FaultKind, exc_return: ExcReturn, now: u64) -> CrashReport {
    let status = FaultStatus {
        // Faults of the app escalate to the visor's HardFault with their cause in the
        // non-secure CFSR bank; report both banks together (the bit meanings are the same).
        cfsr: board::read_reg(FaultReg::Cfsr) | board::read_reg(FaultReg::CfsrNs),
        hfsr: board::read_reg(FaultReg::Hfsr),
        sfsr: board::read_reg(FaultReg::Sfsr),
        sfar: board::read_reg(FaultReg::Sfar),
        bfar: board::read_reg(FaultReg::Bfar),
        mmfar: board::read_reg(FaultReg::Mmfar),
    };
    let (msp, psp) = board::ns_stack_pointers();
    let awake = ns_mem::Awake::new();
    crash::crash_report(kind, exc_return, now, status, NsStacks { msp, psp }, |a| ns_mem::read_u32(&awake, a))
}

/// The app's r4-r11 from the trampoline frame at `sp`, if the exception interrupted the app
/// itself (zeros otherwise: they belong to visor code).
fn app_callee(exc: ExcReturn, sp: u32) -> [u32; 8] {
    if exc.secure_frame() {
        [0; 8]
    } else {
        rt::trampoline_callee_regs(sp)
    }
}

/// Records a crash of the app: the report, then the registers and the top of its stack for a
/// post-mortem debugger (`callee`: r4-r11, read from the trampoline frame).
fn record_crash(v: &mut Visor, report: CrashReport, callee: [u32; 8], now: u64, watchdog: bool) {
    let kind = FaultKind::from_u32(report.kind).map_or("?", |k| k.name());
    vlog!(
        "app crash: {} pc={:#010x} lr={:#010x} sp={:#010x} xpsr={:#010x} cfsr={:#010x} hfsr={:#010x} sfsr={:#010x} bfar={:#010x} exc_return={:#010x}",
        kind,
        report.pc(),
        report.lr(),
        report.sp,
        report.frame[7],
        report.cfsr,
        report.hfsr,
        report.sfsr,
        report.bfar,
        report.exc_return
    );
    vlog!(
        "app crash: stack {:08x} {:08x} {:08x} {:08x} {:08x} {:08x} {:08x} {:08x}",
        report.stack[0],
        report.stack[1],
        report.stack[2],
        report.stack[3],
        report.stack[4],
        report.stack[5],
        report.stack[6],
        report.stack[7]
    );
    let backoff = v.core.app_crashed(now, report, watchdog, &mut net::Effects(&mut v.pending));
    let f = report.frame;
    let regs = [
        f[0], f[1], f[2], f[3], callee[0], callee[1], callee[2], callee[3], callee[4], callee[5], callee[6], callee[7],
        f[4],
    ];
    let mut stack = [0u32; keel_device::CRASH_DUMP_BYTES / 4];
    let awake = ns_mem::Awake::new();
    let mut n = 0;
    // Only a frame the app's own stack held (a secure frame left `sp` raw): then the words from
    // its stack pointer up, as far as the app could read them.
    if report.frame[6] != 0 {
        while n < stack.len() {
            match ns_mem::read_u32(&awake, report.sp.wrapping_add(4 * n as u32)) {
                Some(w) => stack[n] = w,
                None => break,
            }
            n += 1;
        }
    }
    v.core.app_crash_dump(now, regs, &stack[..n]);
    if !v.core.quarantined() {
        vlog!("app restart in {} ms", backoff / 1000);
    }
}

/// SFSR: INVIS (an exception return found no valid integrity signature) and INVER (an exception
/// return from the non-secure state that claimed a secure or an invalid context).
const SFSR_RETURN_FAULTS: u32 = (1 << 1) | (1 << 2);
/// UFSR.INVPC (in CFSR): an exception or function return with an invalid EXC_RETURN or frame.
const CFSR_INVPC: u32 = 1 << 18;

/// Whether a fault was the visor's own: its frame is on a secure stack, its stacked PC is in the
/// visor's code, and it is not one of the exception-return faults, which the app can provoke at
/// will with a forged EXC_RETURN (S = 1 is app-controlled, so `EXC_RETURN.S` alone proves
/// nothing).
fn visor_fault(exc: ExcReturn, frame: u32) -> bool {
    if !exc.secure_frame() {
        return false;
    }
    let sfsr = board::read_reg(FaultReg::Sfsr);
    let cfsr = board::read_reg(FaultReg::Cfsr) | board::read_reg(FaultReg::CfsrNs);
    if sfsr & SFSR_RETURN_FAULTS != 0 || cfsr & CFSR_INVPC != 0 {
        return false;
    }
    rt::in_visor_code(rt::visor_fault_pc(exc.uses_psp(), frame))
}

/// HardFault, MemManage, BusFault, UsageFault, SecureFault.
extern "C" fn fault_handler(exc_return: u32, sp: u32) -> u64 {
    let exc_return = ExcReturn(exc_return);
    let ipsr = board::ipsr();
    // The trampoline pushed 10 words below the secure frame.
    if visor_fault(exc_return, sp + 40) {
        visor_fatal("fault in visor code", exc_return, ipsr, sp + 40);
    }
    let now = time::now_us();
    let report = crash_report(fault_kind_from_ipsr(ipsr), exc_return, now);
    let in_handler = board::ns_exception_active();
    board::clear_fault_status();
    VISOR.with(|v| {
        let v = v.as_mut().expect("visor initialised");
        if v.core.debug_wants_stops() {
            if let Some(r) = debug_stop(v, exc_return, sp, report, in_handler, now) {
                return r;
            }
        }
        if in_handler || !exc_return.thread_mode() {
            // The app faulted inside one of its own exception handlers (or a forged exception
            // return left one active). Its exception stays active in the core, which only a
            // reset clears: record the crash and reset.
            reset_after_app_fault(
                v,
                report,
                app_callee(exc_return, sp),
                now,
                false,
                "app fault in an exception handler",
            );
        }
        record_crash(v, report, app_callee(exc_return, sp), now, false);
        sync_warm(v);
        // The service routine restarts the app after its backoff (and re-arms the alarm).
        board::pend_service();
        go_idle(v)
    })
}

/// A `bkpt` or a fault of the app while a debug session is open: the app halts there for the
/// debugger instead of crashing (a fault is recorded when the debugger lets it go on). A
/// breakpoint of the session hit inside an app exception handler is taken out and the handler
/// continues (the app cannot be halted there). `None`: the usual crash path.
fn debug_stop(v: &mut Visor, exc: ExcReturn, sp: u32, report: CrashReport, in_handler: bool, now: u64) -> Option<u64> {
    let bkpt = if exc.secure_frame() { None } else { debug::bkpt_at(report.pc()) };
    if in_handler || !exc.thread_mode() {
        let pc = report.pc() & !1;
        if bkpt.is_some()
            && v.core.debug_drop_breakpoint(pc, &mut debug::AppTarget { halted: None, awake: ns_mem::Awake::new() })
        {
            vlog!("debug: breakpoint at {:#010x} hit in an app exception handler: removed, the handler continues", pc);
            return Some(keep(exc.0));
        }
        return None;
    }
    let mut h = debug::Halted::capture(exc.0, sp)?;
    let (reason, detail) = match bkpt {
        Some(imm) => (keel_device::StopReason::Breakpoint, imm),
        None => {
            h.fault = Some(report);
            (keel_device::StopReason::Fault, report.kind)
        }
    };
    Some(halt(v, h, now, reason, detail))
}

/// The entry shim found more frames left on the secure stack by system calls the app's handlers
/// preempted and never resumed than nested calls can explain: the app abuses the call gate.
/// Recorded as a crash of the app; its exception is active, so the system resets.
pub extern "C" fn keel_abandoned_calls() -> ! {
    let now = time::now_us();
    let report = crash_report(FaultKind::SecureFault, ExcReturn(0), now);
    VISOR.with(|v| {
        let v = v.as_mut().expect("visor initialised");
        reset_after_app_fault(v, report, [0; 8], now, false, "app abandoned system calls")
    })
}

/// Records a crash of the app that happened inside one of its exception handlers and resets the
/// system: an active exception of the app can only be cleared by a reset. The crash series and
/// report are carried over the reset (see [`warm`]), so the backoff continues.
fn reset_after_app_fault(
    v: &mut Visor,
    report: CrashReport,
    callee: [u32; 8],
    now: u64,
    watchdog: bool,
    why: &str,
) -> ! {
    record_crash(v, report, callee, now, watchdog);
    let cause = if watchdog { ResetCause::AppHung } else { ResetCause::AppFault };
    warm::write(&v.core.run_record().with_cause(cause));
    vlog!("{}: resetting the system to clear it", why);
    board::system_reset()
}

/// The core wants the app started (or stopped) while one of its exceptions is active: resets the
/// system with the hand-over, and the next boot starts what the journal says.
fn reset_to_start(v: &mut Visor, why: &str) -> ! {
    warm::write(&v.core.run_record().with_cause(ResetCause::StartApp));
    vlog!("{}: resetting the system to start the app", why);
    board::system_reset()
}

/// Logs a fault of the visor itself and resets the system. `frame` is the secure exception frame
/// on MSP_S when known (0 otherwise); if the faulting context used PSP_S, the frame is there.
fn visor_fatal(what: &str, exc_return: ExcReturn, ipsr: u32, frame: u32) -> ! {
    let pc = rt::visor_fault_pc(exc_return.uses_psp(), frame);
    let cause = if ipsr == 2 { ResetCause::SecureWatchdog } else { ResetCause::VisorFault { pc } };
    // The run record says why (the visor may have faulted during a borrow of its state: then the
    // record written last stands, and the reset counts as unexplained).
    let _ = VISOR.try_with(|v| {
        if let Some(v) = v.as_ref() {
            warm::write(&v.core.run_record().with_cause(cause));
        }
    });
    vlog_untimed!(
        "FATAL {}: exc={} exc_return={:#010x} pc={:#010x} bfar={:#010x} cfsr={:#010x} hfsr={:#010x} sfsr={:#010x}",
        what,
        ipsr,
        exc_return.0,
        pc,
        board::read_reg(FaultReg::Bfar),
        board::read_reg(FaultReg::Cfsr),
        board::read_reg(FaultReg::Hfsr),
        board::read_reg(FaultReg::Sfsr)
    );
    board::system_reset()
}

/// The NMI: only the visor's hardware watchdog raises it (the app cannot: `AIRCR.BFHFNMINS` = 0),
/// when the service routine has not run for [`board::WATCHDOG_TIMEOUT_MS`]: the visor hangs.
extern "C" fn keel_nmi() {
    visor_fatal("visor watchdog: the service routine stopped running", ExcReturn(0), 2, 0);
}

extern "C" fn keel_unexpected() {
    visor_fatal("unexpected exception", ExcReturn(0), board::ipsr(), 0);
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    vlog_untimed!("PANIC: {}", info);
    board::system_reset()
}

// ------------------------------------------------------------------------------- diagnostics
fn log_stack_usage() {
    let (main, idle) = rt::stack_high_water();
    vlog!("stack high-water: main={} idle={} bytes", main, idle);
    console::log_masked_max();
}

/// Digests of the visor's code and of its secret flash data, logged at boot and at every app
/// restart: any change while the app runs shows up as a different line.
fn log_integrity() {
    let (code, nsc) = rt::code_and_nsc();
    let code_digest: [u8; 32] = Sha256::new().chain_update(code).chain_update(nsc).finalize().into();
    let mut h = Sha256::new();
    h.update(board::flash_slice(layout::FACTORY.offset, layout::FACTORY.size));
    h.update(board::flash_slice(layout::JOURNAL.offset, layout::JOURNAL.size));
    let secrets: [u8; 32] = h.finalize().into();
    vlog!("integrity: code={} secrets={}", Hex(&code_digest), Hex(&secrets));
}

// ------------------------------------------------------------------------------- boot
extern "C" fn visor_main() -> ! {
    time::init();
    This::start_watchdog();
    board::uart::init();
    vlog!("Keel visor {} on {}", VERSION, This::NAME);
    let (nsc_start, nsc_end) = rt::nsc_range();
    if nsc_start != board::NSC_BASE {
        visor_fatal("NSC table not at its ABI address", ExcReturn(0), 0, 0);
    }
    This::configure_security(nsc_start, nsc_end);
    vlog!(
        "security: app code {:#010x}+{:#x}, app RAM {:#010x}+{:#x}, NSC {:#010x}..{:#010x}",
        board::APP_EXEC_BASE,
        board::APP_EXEC_SIZE,
        board::APP_RAM_BASE,
        board::APP_RAM_SIZE,
        nsc_start,
        nsc_end
    );

    let mut flash = Nor::new(This::flash());
    let boots = SeqLog::new(layout::BOOT_COUNTER.offset);
    let boot_count = match boots
        .latest(&flash)
        .and_then(|last| boots.write(&mut flash, last.map_or(1, |r| r.value.wrapping_add(1))))
    {
        Ok(r) => r.value,
        Err(e) => {
            vlog!("boot counter: flash error: {}", e);
            0
        }
    };
    let factory =
        match Factory::parse(board::flash_slice(layout::FACTORY.offset, keel_flash::factory::FACTORY_LEN as u32)) {
            Ok(f) => {
                vlog!("device {} (boot #{})", core::str::from_utf8(&f.device_id_ascii()).unwrap_or("?"), boot_count);
                Some(f)
            }
            Err(e) => {
                vlog!("device not provisioned ({:?}); boot #{}", e, boot_count);
                None
            }
        };
    log_integrity();
    let now = time::now_us();
    let warm = warm::take();
    if let Some(r) = &warm {
        vlog!(
            "warm reset: app {:?}, cause {:?}, crashes={} in a row={}",
            r.app,
            r.reset_cause,
            r.carry.crash_count,
            r.carry.consecutive_crashes
        );
    }
    let seed = factory.as_ref().map_or(0, |f| {
        rng::seed(&f.device_key, boot_count);
        u64::from_le_bytes(f.device_id[..8].try_into().unwrap_or([0; 8])) ^ boot_count as u64
    });
    let config = keel_device::Config {
        identity: factory.as_ref().map(|f| keel_device::Identity {
            device_key: f.device_key,
            server_key: f.server_key,
            signer_key: Some(f.signer_key).filter(|k| k.iter().any(|&b| b != 0)),
        }),
        boot_count,
        visor_version: VERSION,
        policy: Policy::default(),
        warm,
        seed,
        reconnect_min_ms: 1_000,
    };
    let nic = factory.as_ref().and_then(|f| net::Nic::new(f, seed, now));
    let updater = keel_update::Updater::reference(app::target(layout::APP_A));
    // Built in place (the core holds the log ring and frame buffers: too big to move around on
    // the boot stack), then booted, then shared.
    let state = STATE.init_with(|| Visor {
        core: net::Core::unbooted(config, flash, updater, now),
        nic,
        pending: net::Pending::default(),
        factory,
        notify: None,
        timer: None,
        stop_requested: false,
        verified: None,
        halted: None,
    });
    state.core.boot(now, &mut net::Effects(&mut state.pending));
    sync_warm(state);
    VISOR.with(|v| *v = Some(state));

    rt::enter_idle_thread()
}
