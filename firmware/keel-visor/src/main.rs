//! # The Keel visor
//!
//! Secure-world firmware for Cortex-M33 with TrustZone. At reset it configures the security
//! controllers so the app gets only its own code region and RAM, opens the fixed system-call
//! table, loads and verifies the app from flash, and starts it in the non-secure world. It then
//! only runs from exceptions, above every app priority:
//!
//! * **The alarm** (a timer interrupt, tickless): wakes the service routine when a deadline is
//!   due; time comes from a free-running counter.
//! * **The Ethernet interrupt**: wakes the service routine to run the network ([`net`]).
//! * **PendSV** (the service routine): the app lifecycle, driven by the sans-IO
//!   [`keel_supervisor::Supervisor`]: (re)starts after backoff, watchdog kills.
//! * **Faults**: anything the app does wrong ends here; the visor records a crash report and
//!   restarts the app after a backoff. A fault in visor code resets the system.
//! * **System calls**: NSC veneers at fixed slots, dispatched in [`syscalls`].
//!
//! When the app is stopped, the secure thread runs an idle loop. Module map: [`board`] (all
//! hardware specifics), [`ns_mem`] (checked access to app memory), [`app`] (loading),
//! [`syscalls`], [`time`], [`console`].
#![no_std]
#![no_main]
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

mod app;
mod board;
mod console;
mod global;
mod net;
mod ns_mem;
mod rng;
mod syscalls;
mod time;
mod update;
mod warm;

use core::arch::{asm, global_asm, naked_asm};

use keel_abi::{CrashReport, FaultKind};
use keel_flash::factory::Factory;
use keel_flash::{layout, Nor, SeqLog};
use keel_supervisor::crash::{self, FaultStatus, NsStacks};
use keel_supervisor::{fault_kind_from_ipsr, Action, ExcReturn, Policy, Supervisor};
use sha2::{Digest, Sha256};

use crate::board::FlashMedium;
use crate::console::Hex;
use crate::global::Global;

/// Visor version (from Cargo).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Everything the visor keeps between exceptions.
pub struct Visor {
    /// App lifecycle state machine.
    pub sup: Supervisor,
    /// Factory data, if the device is provisioned.
    pub factory: Option<Factory>,
    /// Last crash report of the app.
    pub last_crash: Option<CrashReport>,
    /// The flash driver.
    pub flash: Nor<FlashMedium>,
    /// Header of the app image running (or last started).
    pub app: Option<keel_image::Header>,
    /// Which slot runs, and the trial of an update.
    pub update: update::UpdateRt,
}

/// The visor's state. `None` only before `visor_main` initialised it.
pub static VISOR: Global<Option<Visor>> = Global::new(None);

const STACK_PAINT: u32 = 0xA5A5_A5A5;

extern "C" {
    static __nsc_start: u8;
    static __nsc_end: u8;
    static __code_end: u8;
    static __stacks_start: u32;
    static __msp_top: u32;
    static __psp_top: u32;
    static __stacks_end: u32;
}

fn sym_addr(p: *const u8) -> u32 {
    p as u32
}

// ------------------------------------------------------------------------------- vectors, reset
global_asm!(
    r#"
    .section .vectors,"a",%progbits
    .global VECTORS
VECTORS:
    .word __msp_top
    .word Reset
    .word keel_nmi
    .word keel_fault_entry      @ HardFault
    .word keel_fault_entry      @ MemManage
    .word keel_fault_entry      @ BusFault
    .word keel_fault_entry      @ UsageFault
    .word keel_fault_entry      @ SecureFault
    .word 0, 0, 0
    .word keel_unexpected       @ SVCall
    .word keel_unexpected       @ DebugMonitor
    .word 0
    .word keel_service_entry    @ PendSV: the service routine
    .word keel_unexpected       @ SysTick (unused)
    .word keel_unexpected, keel_unexpected, keel_unexpected   @ IRQ 0-2
    .word keel_alarm            @ IRQ 3: TIMER0, the alarm
    .rept 44
    .word keel_unexpected       @ IRQ 4-47: not used
    .endr
    .word keel_net_irq          @ IRQ 48: LAN9118 Ethernet
    .rept 15
    .word keel_unexpected       @ IRQ 49-63: not used
    .endr

    .section .text.Reset,"ax",%progbits
    .global Reset
    .type Reset,%function
    .thumb_func
Reset:
    @ Paint both stacks so their high-water mark can be measured.
    ldr r0, =__stacks_start
    ldr r1, =__stacks_end
    ldr r2, ={paint}
0:  cmp r0, r1
    bhs 1f
    str r2, [r0], #4
    b 0b
1:  ldr r0, =__sbss
    ldr r1, =__ebss
    movs r2, #0
2:  cmp r0, r1
    bhs 3f
    str r2, [r0], #4
    b 2b
3:  ldr r0, =__sdata
    ldr r1, =__edata
    ldr r2, =__sidata
4:  cmp r0, r1
    bhs 5f
    ldr r3, [r2], #4
    str r3, [r0], #4
    b 4b
5:  ldr r0, =__stacks_start
    msr msplim, r0
    ldr r0, =__msp_top
    msr psplim, r0
    bl visor_main
    udf #0
    .ltorg
"#,
    paint = const STACK_PAINT,
);

// ------------------------------------------------------------------------------- NSC veneers
// The system-call table: 64 slots of 16 bytes at NSC_BASE. Each slot is `sg`, then the slot
// number into r12, then a branch to the common entry. Jumping anywhere but the `sg` of a slot is a
// SecureFault (INVEP), so the app cannot choose r12.
global_asm!(
    r#"
    .section .nsc_veneers,"ax",%progbits
    .balign 32
    .thumb
    .global __keel_nsc_table
__keel_nsc_table:
    .set keel_slot, 0
    .rept {slots}
    .thumb_func
    sg
    mov.w r12, #keel_slot
    b.w keel_syscall_entry
    .balign 16
    .set keel_slot, keel_slot + 1
    .endr
"#,
    slots = const keel_abi::SLOT_COUNT,
);

/// Common secure entry of every system call: passes the slot (r12) as 5th argument, calls the
/// dispatcher, clears the caller-saved registers and flags that could hold secure values, and
/// returns to the app with BXNS.
#[unsafe(naked)]
#[no_mangle]
unsafe extern "C" fn keel_syscall_entry() {
    naked_asm!(
        "push {{r4, lr}}",
        "sub sp, sp, #8",
        "str r12, [sp]",
        "bl {dispatch}",
        "add sp, sp, #8",
        "pop {{r4, lr}}",
        "mov r1, lr",
        "mov r2, lr",
        "mov r3, lr",
        "mov r12, lr",
        "msr APSR_nzcvq, lr",
        "bxns lr",
        dispatch = sym syscalls::dispatch,
    );
}

// ------------------------------------------------------------------------------- exceptions
// Exception trampolines. The Rust handler gets EXC_RETURN and returns a u64: the low word is the
// EXC_RETURN to use, the high word is 1 when that return enters a fresh context (a newly started
// app or the idle thread), in which case every general-purpose register is cleared first so no
// secure value reaches the app, and MSP_S is reset to its top.
//
// Stacks: handlers *and system calls* run on MSP_S (exception entry to the secure state clears
// CONTROL_S.SPSEL, so the secure thread entered through a veneer uses MSP_S); only the idle loop
// runs on PSP_S.
macro_rules! trampoline {
    ($name:ident => $handler:path) => {
        #[unsafe(naked)]
        #[no_mangle]
        unsafe extern "C" fn $name() {
            naked_asm!(
                "push {{r3-r11, lr}}",
                "mov r0, lr",
                "mov r1, sp",
                "bl {h}",
                "cbnz r1, 1f",
                "pop {{r3-r11, lr}}",
                "bx lr",
                "1:",
                "add sp, sp, #40",
                "mov lr, r0",
                "movs r0, #0",
                "mov r1, r0",
                "mov r2, r0",
                "mov r3, r0",
                "mov r4, r0",
                "mov r5, r0",
                "mov r6, r0",
                "mov r7, r0",
                "mov r8, r0",
                "mov r9, r0",
                "mov r10, r0",
                "mov r11, r0",
                "mov r12, r0",
                "msr APSR_nzcvq, r0",
                // The abandoned context may have left frames on MSP_S (system calls run there);
                // nothing below this exception needs them, and the return does not unstack from
                // MSP_S (it goes to the app's stack or the idle thread's PSP_S).
                "ldr r1, ={msp_top}",
                "msr msp, r1",
                "mov r1, r0",
                "bx lr",
                h = sym $handler,
                msp_top = sym __msp_top,
            );
        }
    };
}

trampoline!(keel_fault_entry => fault_handler);
trampoline!(keel_service_entry => service_handler);

/// The secure thread when the app is not running.
#[unsafe(naked)]
#[no_mangle]
unsafe extern "C" fn keel_idle() {
    naked_asm!("1:", "wfi", "b 1b");
}

fn keep(exc_return: u32) -> u64 {
    exc_return as u64
}

fn fresh(exc_return: u32) -> u64 {
    exc_return as u64 | (1 << 32)
}

/// Switches the secure thread to a fresh idle loop; returns the trampoline result.
fn go_idle() -> u64 {
    let top = sym_addr(core::ptr::addr_of!(__psp_top) as *const u8);
    let frame_sp = top - 32;
    let frame = [0u32, 0, 0, 0, 0, 0xFFFF_FFFF, keel_idle as *const () as u32 & !1, 0x0100_0000];
    for (i, w) in frame.iter().enumerate() {
        // SAFETY: the frame lies at the top of the secure thread stack, which is not in use while
        // a handler runs (handlers use MSP_S); the previous thread context is being abandoned.
        unsafe { core::ptr::write_volatile((frame_sp + 4 * i as u32) as *mut u32, *w) };
    }
    board::set_psp_s(frame_sp);
    board::clear_ns_exceptions();
    board::mask_app_exceptions(true);
    fresh(app::RETURN_TO_IDLE)
}

/// Loads and starts the app; returns the trampoline result.
fn launch(now: u64) -> u64 {
    let slot = VISOR.with(|v| v.as_ref().map_or(keel_update::Slot::A, |v| v.update.slot));
    let mut loaded = app::load(update::updater().partition(slot));
    if let Err(e) = &loaded {
        // A trial image that does not load is rolled back; then the previous app loads.
        if VISOR.with(|v| v.as_mut().is_some_and(|v| v.update.trial.is_some() && update::load_failed(v))) {
            vlog!("app not started: {} (slot {}); rolled back", e, slot.as_str());
            loaded = app::load(update::updater().partition(slot.other()));
        }
    }
    match loaded {
        Ok(loaded) => {
            app::prepare_start(&loaded);
            board::mask_app_exceptions(false);
            // The secure thread (a system call or the idle loop) is abandoned.
            board::set_psp_s(sym_addr(core::ptr::addr_of!(__psp_top) as *const u8));
            let info = VISOR.with(|v| {
                let v = v.as_mut().expect("visor initialised");
                v.sup.on_launched(now);
                update::on_launch(v, now);
                v.app = Some(loaded.header);
                v.sup.boot_info()
            });
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
        Err(e) => {
            vlog!("app not started: {} (slot {})", e, slot.as_str());
            VISOR.with(|v| v.as_mut().expect("visor initialised").sup.on_no_image());
            go_idle()
        }
    }
}

/// PendSV: the service routine. Runs the supervisor and acts on its decision.
extern "C" fn service_handler(exc_return: u32, _sp: u32) -> u64 {
    let now = time::now_us();
    net::poll(now);
    // Only switch contexts when we interrupted thread mode; if the app (or a system call made from
    // one of its handlers) was in handler mode, try again at the next alarm.
    if !ExcReturn(exc_return).thread_mode() {
        // The app is inside one of its exception handlers. If its watchdog expired there, only
        // a system reset can take it out (its exception stays active in the core).
        let expired = VISOR.with(|v| v.as_mut().is_some_and(|v| v.sup.poll(now) == Action::KillForWatchdog));
        if expired {
            let report = crash_report(FaultKind::Watchdog, ExcReturn(exc_return), now);
            reset_after_app_fault(report, now, true, "app hung in an exception handler");
        }
        time::rearm();
        return keep(exc_return);
    }
    let action = VISOR.with(|v| {
        v.as_mut().map_or(Action::None, |v| {
            // A trial rolled back at the end of its grace time: the previous app starts now.
            if update::poll(v, now) {
                v.sup.on_restart_request(0);
            }
            v.sup.poll(now)
        })
    });
    let result = match action {
        Action::None => keep(exc_return),
        Action::Launch => launch(now),
        Action::KillForWatchdog => {
            let report = crash_report(FaultKind::Watchdog, ExcReturn(exc_return), now);
            record_crash(report, now, true);
            go_idle()
        }
    };
    time::rearm();
    result
}

/// The alarm interrupt. Wakes the service routine when a supervisor deadline is due (a waiting
/// system call checks its own deadline when its WFI returns) and re-arms for the next deadline.
#[no_mangle]
extern "C" fn keel_alarm() {
    board::ack_alarm();
    let now = time::now_us();
    let due = VISOR.with(|v| {
        v.as_ref().is_some_and(|v| {
            v.sup.next_deadline().is_some_and(|d| now >= d) || update::next_deadline(v).is_some_and(|d| now >= d)
        })
    });
    if due || net::next_deadline().is_some_and(|d| now >= d) {
        board::pend_service();
    }
    time::rearm();
}

/// The app's crash report, from the exception that caught it (see [`keel_supervisor::crash`]).
/// App memory is read through the access-checked [`ns_mem::read_u32`].
fn crash_report(kind: FaultKind, exc_return: ExcReturn, now: u64) -> CrashReport {
    let status = FaultStatus {
        // Faults of the app escalate to the visor's HardFault with their cause in the
        // non-secure CFSR bank; report both banks together (the bit meanings are the same).
        cfsr: board::read_reg(board::SCB_CFSR) | board::read_reg(board::SCB_CFSR_NS),
        hfsr: board::read_reg(board::SCB_HFSR),
        sfsr: board::read_reg(board::SAU_SFSR),
        sfar: board::read_reg(board::SAU_SFAR),
        bfar: board::read_reg(board::SCB_BFAR),
        mmfar: board::read_reg(board::SCB_MMFAR),
    };
    let (msp, psp) = board::ns_stack_pointers();
    crash::crash_report(kind, exc_return, now, status, NsStacks { msp, psp }, ns_mem::read_u32)
}

fn record_crash(report: CrashReport, now: u64, watchdog: bool) {
    let kind = FaultKind::from_u32(report.kind).map_or("?", |k| k.name());
    net::push_event(format_args!(
        "app crash: {} pc={:#010x} lr={:#010x} sp={:#010x} cfsr={:#010x} hfsr={:#010x} sfsr={:#010x}",
        kind,
        report.pc(),
        report.lr(),
        report.sp,
        report.cfsr,
        report.hfsr,
        report.sfsr
    ));
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
    let backoff = VISOR.with(|v| {
        let v = v.as_mut().expect("visor initialised");
        v.last_crash = Some(report);
        update::on_crash(v, watchdog);
        v.sup.on_crash(now, watchdog)
    });
    vlog!("app restart in {} ms", backoff / 1000);
}

/// HardFault, MemManage, BusFault, UsageFault, SecureFault.
extern "C" fn fault_handler(exc_return: u32, sp: u32) -> u64 {
    let exc_return = ExcReturn(exc_return);
    let ipsr = board::ipsr();
    if exc_return.secure_frame() {
        // The trampoline pushed 10 words below the secure frame.
        visor_fatal("fault in visor code", exc_return, ipsr, sp + 40);
    }
    let now = time::now_us();
    let report = crash_report(fault_kind_from_ipsr(ipsr), exc_return, now);
    board::clear_fault_status();
    if !exc_return.thread_mode() {
        // The app faulted inside one of its own interrupt handlers. Its exception stays active in
        // the core, which only a reset clears: record the crash and reset the system.
        reset_after_app_fault(report, now, false, "app fault in an exception handler");
    }
    record_crash(report, now, false);
    time::rearm();
    go_idle()
}

/// Records a crash of the app that happened inside one of its exception handlers and resets the
/// system: an active exception of the app can only be cleared by a reset. The crash series and
/// report are carried over the reset (see [`warm`]), so the backoff continues.
fn reset_after_app_fault(report: CrashReport, now: u64, watchdog: bool, why: &str) -> ! {
    record_crash(report, now, watchdog);
    let carry = VISOR.with(|v| v.as_ref().map(|v| v.sup.carry()).unwrap_or_default());
    warm::save(carry, &report);
    vlog!("{}: resetting the system to clear it", why);
    board::system_reset()
}

/// Logs a fault of the visor itself and resets the system. `frame` is the secure exception frame
/// on MSP_S when known (0 otherwise); if the faulting context used PSP_S, the frame is there.
fn visor_fatal(what: &str, exc_return: ExcReturn, ipsr: u32, frame: u32) -> ! {
    let psp: u32;
    // SAFETY: reading PSP has no side effects.
    unsafe { asm!("mrs {}, psp", out(reg) psp) };
    // The secure frame is on MSP_S (just above the trampoline's push) or on PSP_S.
    let frame = if frame != 0 && exc_return.uses_psp() { psp } else { frame };
    let pc = if frame != 0 {
        // SAFETY: `frame` points at a secure exception frame on one of the visor's stacks.
        unsafe { core::ptr::read_volatile((frame + 24) as *const u32) }
    } else {
        0
    };
    vlog!(
        "FATAL {}: exc={} exc_return={:#010x} pc={:#010x} bfar={:#010x} cfsr={:#010x} hfsr={:#010x} sfsr={:#010x}",
        what,
        ipsr,
        exc_return.0,
        pc,
        board::read_reg(board::SCB_BFAR),
        board::read_reg(board::SCB_CFSR),
        board::read_reg(board::SCB_HFSR),
        board::read_reg(board::SAU_SFSR)
    );
    board::system_reset()
}

#[no_mangle]
extern "C" fn keel_nmi() {
    visor_fatal("NMI", ExcReturn(0), 2, 0);
}

#[no_mangle]
extern "C" fn keel_unexpected() {
    visor_fatal("unexpected exception", ExcReturn(0), board::ipsr(), 0);
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    vlog!("PANIC: {}", info);
    board::system_reset()
}

// ------------------------------------------------------------------------------- diagnostics
fn high_water(bottom: u32, top: u32) -> u32 {
    let mut a = bottom;
    while a < top {
        // SAFETY: the visor's own stack region, between linker symbols.
        if unsafe { core::ptr::read_volatile(a as *const u32) } != STACK_PAINT {
            break;
        }
        a += 4;
    }
    top - a
}

fn log_stack_usage() {
    let s = sym_addr(core::ptr::addr_of!(__stacks_start) as *const u8);
    let m = sym_addr(core::ptr::addr_of!(__msp_top) as *const u8);
    let p = sym_addr(core::ptr::addr_of!(__psp_top) as *const u8);
    vlog!("stack high-water: main={} idle={} bytes", high_water(s, m), high_water(m, p));
}

/// Digests of the visor's code and of its secret flash data, logged at boot and at every app
/// restart: any change while the app runs shows up as a different line.
fn log_integrity() {
    let code_end = sym_addr(core::ptr::addr_of!(__code_end));
    // SAFETY: the visor's own code and read-only data, between the image base and a linker symbol.
    let code = unsafe {
        core::slice::from_raw_parts(board::VISOR_CODE_BASE as *const u8, (code_end - board::VISOR_CODE_BASE) as usize)
    };
    let nsc_start = sym_addr(core::ptr::addr_of!(__nsc_start));
    let nsc_end = sym_addr(core::ptr::addr_of!(__nsc_end));
    // SAFETY: the system-call table, between linker symbols.
    let nsc = unsafe { core::slice::from_raw_parts(nsc_start as *const u8, (nsc_end - nsc_start) as usize) };
    let code_digest: [u8; 32] = Sha256::new().chain_update(code).chain_update(nsc).finalize().into();
    let mut h = Sha256::new();
    h.update(board::flash_slice(layout::FACTORY.offset, layout::FACTORY.size));
    h.update(board::flash_slice(layout::JOURNAL.offset, layout::JOURNAL.size));
    let secrets: [u8; 32] = h.finalize().into();
    vlog!("integrity: code={} secrets={}", Hex(&code_digest), Hex(&secrets));
}

// ------------------------------------------------------------------------------- boot
#[no_mangle]
extern "C" fn visor_main() -> ! {
    time::init();
    board::uart::init();
    vlog!("Keel visor {} on mps2-an505", VERSION);
    let nsc_start = sym_addr(core::ptr::addr_of!(__nsc_start));
    let nsc_end = sym_addr(core::ptr::addr_of!(__nsc_end));
    if nsc_start != board::NSC_BASE {
        visor_fatal("NSC table not at its ABI address", ExcReturn(0), 0, 0);
    }
    board::configure_security(nsc_start, nsc_end);
    vlog!(
        "security: app code {:#010x}+{:#x}, app RAM {:#010x}+{:#x}, NSC {:#010x}..{:#010x}",
        board::APP_EXEC_BASE,
        board::APP_EXEC_SIZE,
        board::APP_RAM_BASE,
        board::APP_RAM_SIZE,
        nsc_start,
        nsc_end
    );

    let mut flash = Nor::new(FlashMedium);
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
    let (sup, last_crash) = match warm::take() {
        Some((carry, report)) => {
            let sup = Supervisor::resume_after_reset(Policy::default(), boot_count, carry, now);
            let wait = sup.next_deadline().unwrap_or(now).saturating_sub(now);
            vlog!("reset after an app crash (crashes={}): app restart in {} ms", carry.crash_count, wait / 1000);
            (sup, Some(report))
        }
        None => (Supervisor::new(Policy::default(), boot_count), None),
    };
    net::init_logs(boot_count);
    // Reason: warm RAM carries a crash series only across the visor's own reset after a fault in
    // an app handler; any other boot is a power-on (or an external reset, indistinguishable here).
    let reason = if last_crash.is_some() { "reset after app fault" } else { "power-on" };
    net::push_event(format_args!("boot #{} visor {} ({})", boot_count, VERSION, reason));
    if let Some(f) = &factory {
        rng::seed(&f.device_key, boot_count);
        let seed = u64::from_le_bytes(f.device_id[..8].try_into().unwrap_or([0; 8])) ^ boot_count as u64;
        net::init(f, boot_count, seed, now);
    }
    let update = update::boot(&mut flash);
    VISOR.with(|v| {
        *v = Some(Visor { sup, factory, last_crash, flash, app: None, update });
    });
    time::rearm();

    let psp_top = sym_addr(core::ptr::addr_of!(__psp_top) as *const u8);
    let msp_top = sym_addr(core::ptr::addr_of!(__msp_top) as *const u8);
    // SAFETY: switches the secure thread to PSP_S (its own stack), resets MSP_S to the top of the
    // handler stack (this function never returns, so its frames are dead), asks for the service
    // routine (which starts the app) and enters the idle loop.
    unsafe {
        asm!(
            "msr psp, {psp}",
            "msr control, {two}",
            "isb",
            "msr msp, {msp}",
            "bl {pend}",
            "b {idle}",
            psp = in(reg) psp_top,
            msp = in(reg) msp_top,
            two = in(reg) 2u32,
            pend = sym pend_service_c,
            idle = sym keel_idle,
            options(noreturn)
        );
    }
}

extern "C" fn pend_service_c() {
    board::pend_service();
}
