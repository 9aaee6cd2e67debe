//! hostile: one app, many attacks on the visor (the hostile-app suite of issue 9).
//!
//! The attack is chosen without a rebuild: the tests replace the 16-byte marker [`HOSTILE_MODE`]
//! in the ELF file with an attack name (NUL-padded) before they build an image or a bundle. Every
//! attack is one small function below with a comment saying what it attacks; the review finding
//! it comes from is `../shared/reviews/2026-12-01-visor-security.md` §N.
//!
//! Lines the tests look for: `hostile: attack <name> (start N)` (first thing on every start),
//! `hostile: ... WRONG ...` / `hostile: verify DIRTY ...` (a check failed), `hostile: verify
//! clean`, `hostile: alive N` (once a second when an attack leaves the app running).
//!
//! Only the system calls the ABI 2 plan keeps unchanged are used through `keel-app`; `wait`
//! (ABI 1 only), `notify_setup` and `timer_set` (ABI 2 only) go through [`raw::call`], so the
//! same app runs against both visors.
#![no_std]
#![no_main]
#![deny(clippy::undocumented_unsafe_blocks)]

use core::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile};
use core::sync::atomic::{AtomicBool, AtomicU32, Ordering::Relaxed};

use keel_app::{error, info, raw, Status};

keel_app::entry!(main);

/// The attack to run: the tests overwrite these 16 bytes in the ELF file.
#[used]
#[no_mangle]
static HOSTILE_MODE: [u8; 16] = *b"@@hostile-mode@@";

// ------------------------------------------------------------------------ registers (NS view)
const ICSR: usize = 0xE000_ED04;
const VTOR: usize = 0xE000_ED08;
const AIRCR: usize = 0xE000_ED0C;
const SCR: usize = 0xE000_ED10;
const CCR: usize = 0xE000_ED14;
const SHPR1: usize = 0xE000_ED18;
const SHPR2: usize = 0xE000_ED1C;
const SHPR3: usize = 0xE000_ED20;
const SHCSR: usize = 0xE000_ED24;
const SYST_CSR: usize = 0xE000_E010;
const SYST_RVR: usize = 0xE000_E014;
const SYST_CVR: usize = 0xE000_E018;
const NVIC_ISER: usize = 0xE000_E100;
const NVIC_ISPR: usize = 0xE000_E200;
const NVIC_IABR: usize = 0xE000_E300;
const NVIC_IPR: usize = 0xE000_E400;
const MPU_TYPE: usize = 0xE000_ED90;
const MPU_CTRL: usize = 0xE000_ED94;
const MPU_RNR: usize = 0xE000_ED98;
const MPU_RBAR: usize = 0xE000_ED9C;
const MPU_RLAR: usize = 0xE000_EDA0;
const MPU_MAIR0: usize = 0xE000_EDC0;
const MPU_MAIR1: usize = 0xE000_EDC4;

const APP_CODE: u32 = 0x0020_0000;
const APP_RAM: u32 = 0x2800_0000;
const APP_RAM_END: u32 = 0x2820_0000;

/// System-call slots used raw (not in every SDK version).
const SLOT_WAIT: u32 = 6; // ABI 1 only (ABI 2: NOT_IMPLEMENTED)
const SLOT_NOTIFY_SETUP: u32 = 16; // ABI 2
const SLOT_TIMER_SET: u32 = 17; // ABI 2

fn rd(a: usize) -> u32 {
    // SAFETY: `a` is a system register of the non-secure view or app memory; reading has no side
    // effect the attacks do not intend.
    unsafe { read_volatile(a as *const u32) }
}

fn wr(a: usize, v: u32) {
    // SAFETY: as for `rd`: the app's own system registers or memory.
    unsafe { write_volatile(a as *mut u32, v) }
}

fn barrier() {
    // SAFETY: barriers only.
    unsafe { core::arch::asm!("dsb", "isb") };
}

fn sys(slot: u32, a0: u32, a1: u32, a2: u32) -> u32 {
    // SAFETY: the visor validates every argument; pointers passed here point at live memory of
    // this app.
    unsafe { raw::call(slot, a0, a1, a2, 0) }
}

// ------------------------------------------------------------------------ the mode
struct Mode {
    buf: [u8; 16],
    len: usize,
}

impl Mode {
    fn get() -> Mode {
        // SAFETY: a volatile read of a static, so the compiler cannot fold the unpatched value.
        let buf = unsafe { read_volatile(addr_of!(HOSTILE_MODE)) };
        let len = buf.iter().position(|&b| b == 0).unwrap_or(16);
        Mode { buf, len }
    }
    fn as_str(&self) -> &str {
        core::str::from_utf8(&self.buf[..self.len]).unwrap_or("?")
    }
}

// ------------------------------------------------------------------------ helpers
fn now() -> u64 {
    keel_app::monotonic_us()
}

/// Busy-waits `us` microseconds of device time (system calls only, no `wait`).
fn spin_us(us: u64) {
    let end = now() + us;
    while now() < end {}
}

/// Sleeps about `us` microseconds of device time without keeping the core busy (so that under
/// `-icount sleep=off` idle time costs no wall time), always with a visor deadline at the end
/// (a long idle warp would otherwise jump the device past the server's silence timeout):
/// ABI 2: an app timer and `wfi` (the visor's alarm wakes the core, even in a handler);
/// ABI 1: `wait` in thread mode, a busy wait in a handler.
fn sleep_us(us: u64) {
    let end = now() + us;
    if NOTIFY_LINE.load(Relaxed) != u32::MAX {
        sys(SLOT_TIMER_SET, end as u32, (end >> 32) as u32, 0);
        while now() < end {
            // SAFETY: waits for an interrupt.
            unsafe { core::arch::asm!("wfi") };
        }
        ring_drain();
    } else if ipsr() == 0 {
        while now() < end {
            sys(SLOT_WAIT, (end - now()).min(1_000_000) as u32, 0, 0);
        }
    } else {
        spin_us(us);
    }
}

fn ipsr() -> u32 {
    let v: u32;
    // SAFETY: reads IPSR.
    unsafe { core::arch::asm!("mrs {}, ipsr", out(reg) v) };
    v
}

/// Stays alive in thread mode: a line a second, nothing else.
fn alive() -> ! {
    let mut n = 0u32;
    loop {
        info!("hostile: alive {}", n);
        n += 1;
        sleep_us(1_000_000);
    }
}

/// A vector table in RAM (512 entries: room for every NVIC line).
#[repr(C, align(2048))]
struct Vectors([u32; 512]);
static mut VECTORS: Vectors = Vectors([0; 512]);

/// Copies the app's vector table to RAM, replaces `(index, handler)` entries and points VTOR at
/// the copy.
fn install_vectors(handlers: &[(usize, u32)]) {
    // SAFETY: only this thread writes the table, before VTOR points at it (and after, only entries
    // of exceptions that are not active).
    unsafe {
        let t = &mut *addr_of_mut!(VECTORS);
        let rom = APP_CODE as *const u32;
        let unhandled = read_volatile(rom.add(3));
        for (i, w) in t.0.iter_mut().enumerate() {
            *w = if i < 48 { read_volatile(rom.add(i)) } else { unhandled };
        }
        for &(i, h) in handlers {
            t.0[i] = h | 1;
        }
        write_volatile(VTOR as *mut u32, t.0.as_ptr() as u32);
    }
    barrier();
}

const VEC_SVCALL: usize = 11;
const VEC_SYSTICK: usize = 15;

/// Starts SysTick_NS on the processor clock, `reload` cycles, with its interrupt.
fn systick_start(reload: u32) {
    wr(SYST_CSR, 0);
    wr(SYST_RVR, reload);
    wr(SYST_CVR, 0);
    wr(SYST_CSR, 0b111);
}

fn systick_stop() {
    wr(SYST_CSR, 0);
}

// ------------------------------------------------------------------------ assembly pieces
core::arch::global_asm!(
    r#"
    .section .text.hostile_asm,"ax",%progbits
    .syntax unified

    @ SVCall handler: exception return with the EXC_RETURN (or FNC_RETURN) value the thread put
    @ in r0 before `svc`.
    .global hostile_forge_return
    .type hostile_forge_return,%function
    .thumb_func
hostile_forge_return:
    mov lr, r0
    bx lr

    @ Thread mode: branch to FNC_RETURN, as if returning from a non-secure call the visor never made.
    .global hostile_fnc_return
    .type hostile_fnc_return,%function
    .thumb_func
hostile_fnc_return:
    ldr r0, =0xFEFFFFFF
    bx r0

    @ SysTick handler: abandon whatever it preempted (a system call on ABI 1) by an exception
    @ return to non-secure thread mode on a fake frame (EXC_RETURN 0xFFFFFFBC: S=0, DCRS=1,
    @ thread, PSP).
    .global hostile_abandon
    .type hostile_abandon,%function
    .thumb_func
hostile_abandon:
    ldr r0, =HOSTILE_FAKE_FRAME
    msr psp, r0
    ldr lr, =0xFFFFFFBC
    bx lr

    @ Where the fake frame returns to: a fresh main stack, then the attack loop again.
    .global hostile_resume
    .type hostile_resume,%function
    .thumb_func
hostile_resume:
    ldr r0, =__keel_stack_top
    msr msp, r0
    movs r0, #0
    msr control, r0
    isb
    b hostile_abandon_loop

    @ SysTick handler of the gateway-window attack: when it preempted secure code (EXC_RETURN.S,
    @ bit 6: a system call's window, where the visor's frame is on its stack), it returns with
    @ its EXC_RETURN XORed with HOSTILE_WINDOW_XOR (and counts it); otherwise it returns as is.
    .global hostile_tick_window
    .type hostile_tick_window,%function
    .thumb_func
hostile_tick_window:
    tst lr, #0x40
    beq 1f
    ldr r1, =HOSTILE_WINDOW_HITS
    ldr r2, [r1]
    adds r2, r2, #1
    str r2, [r1]
    ldr r0, =HOSTILE_WINDOW_XOR
    ldr r0, [r0]
    eor lr, lr, r0
1:  bx lr
    .ltorg
"#
);

extern "C" {
    fn hostile_forge_return();
    fn hostile_fnc_return();
    fn hostile_abandon();
    fn hostile_resume();
    fn hostile_tick_window();
    static __ebss: u32;
    static __keel_stack_limit: u32;
}

fn addr(f: unsafe extern "C" fn()) -> u32 {
    f as usize as u32
}

/// `svc #0` with `r0 = value`, into whatever SVCall handler is installed.
fn svc_with_r0(value: u32) {
    // SAFETY: the SVCall handler decides what happens; the attacks want exactly that.
    unsafe { core::arch::asm!("svc #0", in("r0") value, options(nostack)) };
}

// ------------------------------------------------------------------------ 1. forged returns
/// Finding 1: an NS SVCall handler returns with a forged EXC_RETURN (`value`): S=1, ES=1, DCRS=0
/// or handler-mode variants, or with FNC_RETURN. Whatever the core raises must be an app crash
/// with backoff, never a "fault in visor code" reset.
fn forge_exc_return(value: u32) {
    install_vectors(&[(VEC_SVCALL, addr(hostile_forge_return))]);
    svc_with_r0(value);
}

/// Finding 1 (variant): NS thread mode branches to FNC_RETURN with no secure call in progress.
fn fnc_return_from_thread() {
    // SAFETY: a deliberate FNC_RETURN; the visor must contain the fault.
    unsafe { hostile_fnc_return() };
}

// ------------------------------------------------------------------------ 2. system addresses
/// Finding 2: the IoT kit's NS watchdog (0x40081000), integration-test mode: WDOGITOP.WDOGRES
/// resets the system at once unless the access faults.
fn nswd_itop() {
    const NSWD: usize = 0x4008_1000;
    wr(NSWD + 0xC00, 0x1ACC_E551); // WDOGLOCK: unlock
    wr(NSWD + 0xF00, 1); // WDOGITCR: integration test mode
    wr(NSWD + 0xF04, 1); // WDOGITOP: WDOGRES
}

/// Finding 2: the NS watchdog the functional way: LOAD small, INTEN|RESEN: a reset after two
/// expiries unless the access faults.
fn nswd_load() {
    const NSWD: usize = 0x4008_1000;
    wr(NSWD + 0xC00, 0x1ACC_E551);
    wr(NSWD, 1000); // LOAD
    wr(NSWD + 8, 3); // CONTROL: INTEN | RESEN
}

/// One access of the probe list: read, then write back what was read (a write of the same value
/// is the least destructive write). Must fault.
fn probe(a: u32) {
    let v = rd(a as usize);
    wr(a as usize, v);
}

/// The PPB's secure alias (0xE002xxxx) from the non-secure side: the architecture makes it
/// RAZ/WI for non-secure accesses (no visor setting can make it fault), so the check is that it
/// shows nothing and takes nothing: SAU_CTRL through the alias reads 0 (the real one is 1), and
/// writing ones to the alias of SCB_NS.VTOR leaves VTOR_NS as it was. True if it held.
fn ppb_alias_razwi() -> bool {
    let sau_ctrl = rd(0xE002_EDD0);
    let vtor = rd(VTOR);
    wr(0xE002_ED08, 0x0030_0000);
    barrier();
    let after = rd(VTOR);
    let ok = sau_ctrl == 0 && after == vtor && rd(0xE002_ED08) == 0;
    info!(
        "hostile: ppb alias: SAU_CTRL reads {:#x}, VTOR {:#x} -> {:#x} after a write to its alias: {}",
        sau_ctrl,
        vtor,
        after,
        if ok { "RAZ/WI ok" } else { "WRONG" }
    );
    ok
}

/// Finding 2 (audit): every NS-reachable system address the app has no business with. One
/// probe per start (each must fault); the index is the restart count.
const PROBES: &[u32] = &[
    // IoT kit (SSE-200) blocks in the NS peripheral space.
    0x4000_0000, // timer 0
    0x4000_1000, // timer 1
    0x4000_2000, // dual timer
    0x4001_0000, // MHU / expansion
    0x4002_0000, // sysinfo (no PPC)
    0x4002_1000, // sysctl
    0x4002_E000, // S32K watchdog
    0x4002_F000, // S32K timer
    0x4008_0000, // NS view of the security controller (no PPC)
    0x4008_1000, // NS watchdog (no PPC)
    // mps2-an505 expansion peripherals.
    0x4010_0000, // GPIO 0
    0x4010_1000, // GPIO 1
    0x4010_2000, // GPIO 2
    0x4010_3000, // GPIO 3
    0x4011_0000, // DMA 0
    0x4020_0000, // UART 0 (the visor's console)
    0x4020_1000, // UART 1
    0x4020_4000, // UART 4
    0x4020_5000, // SPI
    0x4020_7000, // I2C
    0x4030_0000, // SCC
    0x4030_1000, // I2S
    0x4030_2000, // FPGA IO
    0x4100_0000, // VGA
    0x4110_0000, // expansion
    0x4200_0000, // LAN9118 (the visor's network)
    0x4300_0000,
    0x4400_0000,
    0x4800_0000,
    0x4C00_0000,
    0x4FFF_F000,
    // Secure aliases and other secure memory.
    0x5000_0000, // secure timer 0 (the visor's alarm)
    0x5008_0000, // secure security controller
    0x5008_1000, // secure watchdog
    0x5200_0000, // LAN9118, secure alias
    0x5800_7000, // MPC 0
    0x1000_0000, // visor code
    0x1007_0000, // NSC table
    0x3000_0000, // secure SRAM alias
    0x3800_0000, // SSRAM-2 secure
    0x3820_0000, // visor RAM
    0x2820_0000, // past the app's RAM
    0x0040_0000, // past the app's code region
    0x8000_0000, // flash (factory data)
    0x80FF_F000, // flash end
    0xE002_E000, // PPB secure alias (NS view: must not reach the secure SCS)
];

// ------------------------------------------------------------------------ 3. preemption
static TICKS: AtomicU32 = AtomicU32::new(0);
static NOTIFIED: AtomicU32 = AtomicU32::new(0);
static NOTIFY_LINE: AtomicU32 = AtomicU32::new(u32::MAX);

/// SysTick handler that returns normally, with a new, varying period each time (1..=13
/// processor cycles: about every 50-650 instructions), so the interrupts land everywhere in and
/// around the system calls.
extern "C" fn tick_return() {
    let n = TICKS.fetch_add(1, Relaxed);
    wr(SYST_RVR, 1 + n % 13);
    // Every other tick, a call from the handler too (what an RTOS tick hook does), possibly
    // while the thread's call is in the gateway's window.
    if n.is_multiple_of(2) {
        let t = hcall64(2);
        let last = TICK_LAST.swap(t as u32, Relaxed);
        preempt_check("monotonic_us in the handler", (t as u32).wrapping_sub(last) < 0x8000_0000, n);
    }
}

static TICK_LAST: AtomicU32 = AtomicU32::new(0);

/// The notification ring (ABI 2): header + 8 records.
#[repr(C, align(16))]
struct Ring([u32; 4 + 4 * 8]);
static mut RING: Ring = Ring([0; 36]);

fn ring_addr() -> u32 {
    addr_of!(RING) as u32
}

/// Registers the notification ring on the first NVIC line the visor accepts (ABI 2); the line,
/// or None on a visor without notifications.
fn notify_setup() -> Option<u32> {
    for irq in 0..480 {
        if sys(SLOT_NOTIFY_SETUP, ring_addr(), 16 + 16 * 8, irq) == Status::Ok as u32 {
            NOTIFY_LINE.store(irq, Relaxed);
            return Some(irq);
        }
    }
    None
}

/// Every record kind consumed so far, as a bit set (1 << kind).
static SEEN: AtomicU32 = AtomicU32::new(0);

/// Consumes every record of the ring; returns the kinds seen so far (this time and before) as a
/// bit set (1 << kind).
fn ring_drain() -> u32 {
    let base = ring_addr() as usize;
    let head = rd(base);
    let mut tail = rd(base + 4);
    let cap = rd(base + 8).max(1);
    let mut kinds = 0;
    while tail != head {
        let rec = base + 16 + 16 * (tail % cap) as usize;
        kinds |= 1 << (rd(rec) & 0xFFFF).min(31);
        tail = tail.wrapping_add(1);
    }
    wr(base + 4, tail);
    SEEN.fetch_or(kinds, Relaxed) | kinds
}

/// The notification interrupt of the preemption attack: drains the ring and sets the next
/// timer a few microseconds ahead, so the visor keeps pending it while calls run.
extern "C" fn notify_irq() {
    ring_drain();
    let n = NOTIFIED.fetch_add(1, Relaxed);
    let at = now() + 1 + (n % 7) as u64;
    sys(SLOT_TIMER_SET, at as u32, (at >> 32) as u32, n);
}

/// Finding 3 (a): system calls under a fast SysTick_NS (and, on ABI 2, the visor's own
/// notification interrupt) whose handlers return normally: every result must stay correct.
fn preempt_return() -> ! {
    install_vectors(&[(VEC_SYSTICK, tick_return as *const () as u32)]);
    if let Some(irq) = notify_setup() {
        install_vectors(&[
            (VEC_SYSTICK, tick_return as *const () as u32),
            (16 + irq as usize, notify_irq as *const () as u32),
        ]);
        wr(NVIC_ISER + 4 * (irq as usize / 32), 1 << (irq % 32));
        let at = now() + 10;
        sys(SLOT_TIMER_SET, at as u32, (at >> 32) as u32, 0);
        info!("hostile: preempt: notifications on line {}", irq);
    }
    // Baselines, then the same calls again and again, made the hostile way ([`hcall`]).
    let abi = snap(0);
    let id = snap_id();
    let boot = snap(9);
    let upd = snap(33);
    let crash = snap(10);
    systick_start(5);
    let mut last = 0u64;
    let mut round = 0u32;
    let mut report = now();
    loop {
        let t = hcall64(2);
        let check = |what: &str, ok: bool| preempt_check(what, ok, round);
        check("monotonic_us", t >= last);
        last = t;
        check("abi_info", snap(0) == abi);
        check("device_id", snap_id() == id);
        check("boot_info", snap(9) == boot);
        check("update_info", snap(33) == upd);
        check("watchdog_kick", hcall(8, 0, 0, 0, 0) == Status::Unavailable as u32);
        // A bad level: the whole argument check, no console output.
        check("log", hcall(4, 99, b"x".as_ptr() as u32, 1, 0) == Status::InvalidArgument as u32);
        let w = hcall(SLOT_WAIT, 0, 0, 0, 0);
        check("wait", w == Status::Ok as u32 || w == Status::NotImplemented as u32);
        check("last_crash", snap(10) == crash);
        let mut wall = 0u64;
        let w = hcall(3, &mut wall as *mut u64 as u32, 0, 0, 0);
        check("wall_time_us", w == Status::Ok as u32 && wall > 1_600_000_000_000_000 || w == Status::TimeNotSet as u32);
        check("watchdog_start", hcall(7, 0, 0, 0, 0) == Status::InvalidArgument as u32);
        check("notify_setup", hcall(16, 0x1000_0000, 48, 80, 0) == Status::ParameterFault as u32);
        check("update_confirm", hcall(32, 0, 0, 0, 0) == Status::Unavailable as u32);
        check("reserved slot", hcall(11, 0, 0, 0, 0) == Status::NotImplemented as u32);
        // Returns only while no update is ready; once one is, this attack ends here.
        check("update_apply", hcall(34, 0, 0, 0, 0) == Status::Unavailable as u32);
        round += 1;
        if t >= report {
            report = t + 1_000_000;
            info!(
                "hostile: preempt round {} ticks {} notifications {} wrong {}",
                round,
                TICKS.load(Relaxed),
                NOTIFIED.load(Relaxed),
                WRONG.load(Relaxed)
            );
        }
    }
}

/// A system call the way a hostile app makes it: a plain call of the veneer with the app's
/// interrupts open (the SDKs mask them around every call; nothing forces an app to).
#[inline(never)]
fn hcall(slot: u32, a0: u32, a1: u32, a2: u32, a3: u32) -> u32 {
    // SAFETY: the veneer takes four words and returns one; the visor checks every argument.
    unsafe {
        let f: extern "C" fn(u32, u32, u32, u32) -> u32 = core::mem::transmute(raw::slot_address(slot) as usize);
        f(a0, a1, a2, a3)
    }
}

/// [`hcall`] of a call that returns 64 bits in r0:r1 (`monotonic_us`, ABI 2).
#[inline(never)]
fn hcall64(slot: u32) -> u64 {
    // SAFETY: as `hcall`.
    unsafe {
        let f: extern "C" fn() -> u64 = core::mem::transmute(raw::slot_address(slot) as usize);
        f()
    }
}

/// A versioned struct (version 1) filled by call `slot`, with the status in the last word.
fn snap(slot: u32) -> [u32; 17] {
    let mut b = [0u32; 17];
    b[0] = 1;
    b[16] = hcall(slot, b.as_mut_ptr() as u32, 0, 0, 0);
    b
}

fn snap_id() -> [u8; 36] {
    let mut b = [0u8; 36];
    let s = hcall(1, b.as_mut_ptr() as u32, 34, 0, 0);
    b[35] = s as u8;
    b
}

static WRONG: AtomicU32 = AtomicU32::new(0);

fn preempt_check(what: &str, ok: bool, round: u32) {
    if !ok && WRONG.fetch_add(1, Relaxed) < 20 {
        error!("hostile: preempt WRONG result of {} in round {}", what, round);
    }
}

/// The fake exception frame `hostile_abandon` returns on: r0-r3, r12 = 0, lr invalid, pc =
/// `hostile_resume`, xPSR = Thumb (set at run time: the address is not a constant).
#[repr(C, align(8))]
struct Frame([u32; 8]);
#[no_mangle]
static mut HOSTILE_FAKE_FRAME: Frame = Frame([0; 8]);
static ABANDONED: AtomicU32 = AtomicU32::new(0);

/// Finding 3 (b): the SysTick handler abandons the context it preempted (on ABI 1 mostly the
/// secure thread inside `wait`) by returning to thread mode on a fake frame. Each round on ABI 1
/// leaks a secure context on the visor's stack.
fn preempt_abandon() -> ! {
    // SAFETY: written before SysTick starts; the handler only reads it (via the core's unstacking).
    unsafe {
        (*addr_of_mut!(HOSTILE_FAKE_FRAME)).0 = [0, 0, 0, 0, 0, 0xFFFF_FFFF, addr(hostile_resume) & !1, 0x0100_0000];
    }
    install_vectors(&[(VEC_SYSTICK, addr(hostile_abandon))]);
    info!("hostile: abandon: SysTick armed");
    systick_start(20_000);
    hostile_abandon_loop()
}

/// The abandon attack's thread: blocking calls (ABI 1) and other calls, until SysTick abandons
/// it. Each round sets a new period of 1..=13 processor cycles for the next SysTick (about every
/// 50-650 instructions), so the abandons land everywhere around the gateway.
#[no_mangle]
extern "C" fn hostile_abandon_loop() -> ! {
    let n = ABANDONED.fetch_add(1, Relaxed);
    wr(SYST_RVR, 1 + n % 13);
    if n.is_multiple_of(256) {
        // A short fixed message: little app code for the SysTick to land in before the call.
        let _ = keel_app::log(keel_app::LogLevel::Info, b"hostile: abandon round +256");
    }
    loop {
        hcall(SLOT_WAIT, 100_000, 0, 0, 0);
        hcall64(2);
        hcall(4, 99, b"y".as_ptr() as u32, 1, 0);
    }
}

/// What the gateway-window attack XORs into the EXC_RETURN of a SysTick that preempted secure
/// code (set before the SysTick starts).
#[no_mangle]
static HOSTILE_WINDOW_XOR: AtomicU32 = AtomicU32::new(0);
/// How many SysTicks preempted secure code (and forged their return).
#[no_mangle]
static HOSTILE_WINDOW_HITS: AtomicU32 = AtomicU32::new(0);

/// Findings 1 and 3 together, at the gateway: calls made with interrupts open under a SysTick
/// every 50-650 instructions; a SysTick pending at the end of a call's masked body is taken in
/// the few instructions before the visor returns, with the visor's frame on its stack
/// (EXC_RETURN.S = 1). The handler then returns with a forged EXC_RETURN (`xor`: SPSEL flipped,
/// S cleared, DCRS cleared or ES set). Whatever the core raises is an app fault: an app crash,
/// never a visor fault.
fn gateway_window(xor: u32) -> ! {
    HOSTILE_WINDOW_XOR.store(xor, Relaxed);
    install_vectors(&[(VEC_SYSTICK, addr(hostile_tick_window))]);
    info!("hostile: gateway window: SysTick armed, EXC_RETURN ^ {:#x}", xor);
    systick_start(5);
    let mut n = 0u32;
    loop {
        wr(SYST_RVR, 1 + n % 13);
        hcall64(2);
        hcall(8, 0, 0, 0, 0);
        n = n.wrapping_add(1);
        if n.is_multiple_of(4096) {
            let _ = keel_app::log(keel_app::LogLevel::Info, b"hostile: gateway window: 4096 more rounds");
        }
    }
}

// ------------------------------------------------------------------------ 4. handler mode
/// Finding 4: the app's main loop runs inside its SVCall handler, forever, making system calls
/// (a heartbeat every 100 ms). Every visor deadline (an update installed, a trial's grace time,
/// a politeness time) falls due while the app is in handler mode.
extern "C" fn svc_live() -> ! {
    let mut n = 0u32;
    info!("hostile: living in handler mode (ipsr={})", ipsr());
    loop {
        if n.is_multiple_of(10) {
            info!("hostile: hb {} (handler mode)", n);
        }
        n += 1;
        sleep_us(100_000);
    }
}

/// Finding 4 (b) for a trial: the SVCall handler spins without a single system call (no sign of
/// life any policy could take for one; the mode does not even log its start), through the
/// trial's grace time.
extern "C" fn svc_mute() -> ! {
    quiet_spin()
}

fn handler_mute() {
    install_vectors(&[(VEC_SVCALL, svc_mute as *const () as u32)]);
    svc_with_r0(0);
}

fn handler_live() {
    install_vectors(&[(VEC_SVCALL, svc_live as *const () as u32)]);
    svc_with_r0(0);
}

// ------------------------------------------------------------------------ 5. poison
extern "C" fn tick_count() {
    TICKS.fetch_add(1, Relaxed);
}

extern "C" fn irq_count() {
    NOTIFIED.fetch_add(1, Relaxed);
}

/// Finding 7: leaves every piece of banked non-secure core state the app can write away from its
/// reset value, and junk in RAM, for whatever starts next (a restart or an update). Ends in
/// thread mode with interrupts running; returns (the caller idles or restarts).
fn poison() {
    info!("hostile: poisoning the non-secure core state");
    // RAM outside .data/.bss: a pattern at the top and just past .bss.
    // __ebss is a linker symbol; only its address is used.
    let ebss = addr_of!(__ebss) as u32;
    for a in (ebss.next_multiple_of(16) + 1024..ebss + 65536).step_by(4) {
        wr(a as usize, 0xA5A5_A5A5);
    }
    for a in (APP_RAM_END - 65536..APP_RAM_END).step_by(4) {
        wr(a as usize, 0x5A5A_5A5A);
    }
    // Handler priorities, priority grouping.
    wr(SHPR1, 0x00E0_E0E0);
    wr(SHPR2, 0xE000_0000);
    wr(SHPR3, 0xC0C0_0000);
    wr(AIRCR, 0x05FA_0500);
    // MPU: regions and attributes, enabled (privileged default map kept, so we keep running).
    wr(MPU_MAIR0, 0x0000_44FF);
    wr(MPU_MAIR1, 0x4400_0000);
    let regions = (rd(MPU_TYPE) >> 8) & 0xFF;
    for r in 0..regions {
        wr(MPU_RNR, r);
        // Read-only, execute-never windows at the top of RAM (filled above) and past the code
        // this app runs (windows that do not stop the poisoner itself).
        let (base, limit) =
            if r % 2 == 0 { (APP_RAM_END - 0x1_0000, APP_RAM_END - 32) } else { (0x0030_0000, 0x0030_FFE0) };
        wr(MPU_RBAR, base | (0b11 << 1) | 1);
        wr(MPU_RLAR, limit | 1);
    }
    wr(MPU_RNR, regions.saturating_sub(1));
    wr(MPU_CTRL, 0b101); // ENABLE | PRIVDEFENA
    barrier();
    // Vector table in RAM, SysTick_NS running with its interrupt, an NS line enabled and pending.
    let line = notify_setup();
    let mut h = [(VEC_SYSTICK, tick_count as *const () as u32), (0, 0)];
    if let Some(irq) = line {
        h[1] = (16 + irq as usize, irq_count as *const () as u32);
    }
    install_vectors(&h[..if line.is_some() { 2 } else { 1 }]);
    // SAFETY: masks the app's own configurable interrupts: what is pended below stays pending.
    unsafe { core::arch::asm!("cpsid i") };
    if let Some(irq) = line {
        wr(NVIC_IPR + irq as usize / 4 * 4, 0xE0E0_E0E0);
        wr(NVIC_ISPR + 4 * (irq as usize / 32), 1 << (irq % 32));
        wr(NVIC_ISER + 4 * (irq as usize / 32), 1 << (irq % 32));
    }
    systick_start(20_000);
    // Our own PendSV, pending behind PRIMASK.
    wr(ICSR, 1 << 28);
    info!("hostile: poisoned (notify line {}); setting SCR and CCR last", line.map_or(-1, |l| l as i32));
    wr(SCR, rd(SCR) | (1 << 1) | (1 << 2) | (1 << 4)); // SLEEPONEXIT, SLEEPDEEP, SEVONPEND
    wr(CCR, rd(CCR) | (1 << 3) | (1 << 4)); // UNALIGN_TRP, DIV_0_TRP
    barrier();
}

/// Spins in thread mode without touching memory in ways an unaligned-access trap would catch.
fn quiet_spin() -> ! {
    loop {
        // A plain `nop`: `spin_loop()` is `yield`, which stops QEMU's virtual clock under
        // `-icount` (the device would freeze instead of spinning).
        // SAFETY: no operation.
        unsafe { core::arch::asm!("nop") };
    }
}

static DIRTY: AtomicU32 = AtomicU32::new(0);

fn expect(what: &str, got: u32, want: u32) {
    if got != want {
        DIRTY.fetch_add(1, Relaxed);
        error!("hostile: verify DIRTY {}={:#010x} (reset value {:#010x})", what, got, want);
    }
}

/// First, before anything else uses memory: the first non-zero word of RAM outside .data/.bss
/// and below the stack in use, if any.
fn ram_junk() -> Option<(u32, u32)> {
    // Linker symbols; only their addresses are used.
    let (ebss, limit) = (addr_of!(__ebss) as u32, addr_of!(__keel_stack_limit) as u32);
    let sp: u32;
    // SAFETY: reads the stack pointer.
    unsafe { core::arch::asm!("mov {}, sp", out(reg) sp) };
    let ranges = [(ebss.next_multiple_of(4), APP_RAM_END), (limit.max(APP_RAM), sp.saturating_sub(1024))];
    for (from, to) in ranges {
        let mut a = from;
        while a < to {
            let v = rd(a as usize);
            if v != 0 {
                return Some((a, v));
            }
            a += 4;
        }
    }
    None
}

/// Finding 7 (the other side): checks that this start began from the reset state: every
/// non-secure core register the app can read, and RAM outside .data/.bss. Logs each difference
/// and `hostile: verify clean` or `hostile: verify dirty N`.
fn verify(junk: Option<(u32, u32)>) -> bool {
    if let Some((a, v)) = junk {
        expect("RAM word (not zeroed)", a, 0);
        error!("hostile: verify DIRTY RAM at {:#010x} holds {:#010x}", a, v);
    }
    let (control, primask, basepri, faultmask): (u32, u32, u32, u32);
    // SAFETY: reads special registers.
    unsafe {
        core::arch::asm!(
            "mrs {0}, control", "mrs {1}, primask", "mrs {2}, basepri", "mrs {3}, faultmask",
            out(reg) control, out(reg) primask, out(reg) basepri, out(reg) faultmask
        )
    };
    expect("CONTROL", control, 0);
    expect("PRIMASK", primask, 0);
    expect("BASEPRI", basepri, 0);
    expect("FAULTMASK", faultmask, 0);
    // CCR: the trap and ignore bits the app can set (STKALIGN etc. are RES1 and not checked).
    expect("CCR traps", rd(CCR) & 0x51A, 0);
    expect("SCR", rd(SCR) & 0x16, 0);
    expect("SHPR1", rd(SHPR1), 0);
    expect("SHPR2", rd(SHPR2), 0);
    expect("SHPR3", rd(SHPR3), 0);
    expect("AIRCR.PRIGROUP", (rd(AIRCR) >> 8) & 7, 0);
    expect("SHCSR", rd(SHCSR), 0);
    expect("ICSR pending SysTick/PendSV", rd(ICSR) & (1 << 26 | 1 << 28), 0);
    expect("VTOR", rd(VTOR), APP_CODE);
    // ENABLE and TICKINT (CLKSOURCE is RAO on QEMU's mps2-an505, which has no reference clock).
    expect("SysTick CSR", rd(SYST_CSR) & 0b011, 0);
    expect("SysTick RVR", rd(SYST_RVR), 0);
    expect("MPU_CTRL", rd(MPU_CTRL), 0);
    expect("MPU_MAIR0", rd(MPU_MAIR0), 0);
    expect("MPU_MAIR1", rd(MPU_MAIR1), 0);
    let regions = (rd(MPU_TYPE) >> 8) & 0xFF;
    for r in 0..regions {
        wr(MPU_RNR, r);
        if rd(MPU_RLAR) != 0 || rd(MPU_RBAR) != 0 {
            expect("MPU region RLAR", rd(MPU_RLAR), 0);
            expect("MPU region RBAR", rd(MPU_RBAR), 0);
        }
    }
    wr(MPU_RNR, 0);
    for w in 0..16 {
        expect("NVIC_ISER", rd(NVIC_ISER + 4 * w), 0);
        expect("NVIC_ISPR", rd(NVIC_ISPR + 4 * w), 0);
        expect("NVIC_IABR", rd(NVIC_IABR + 4 * w), 0);
    }
    for w in 0..120 {
        expect("NVIC_IPR", rd(NVIC_IPR + 4 * w), 0);
    }
    let dirty = DIRTY.load(Relaxed);
    if dirty == 0 {
        info!("hostile: verify clean");
    } else {
        error!("hostile: verify dirty {}", dirty);
    }
    dirty == 0
}

// ------------------------------------------------------------------------ 6. trials
/// Finding 6: the old app confirms the new update from an interrupt inside `update_apply`. The
/// app waits for UPDATE_READY (ABI 1: `wait` events; ABI 2: the notification ring), gives the
/// test 5 s to take the link down, then calls `update_apply` with a fast SysTick whose handler
/// confirms whatever is on trial.
extern "C" fn tick_confirm() {
    if keel_app::update_info().is_ok_and(|u| u.on_trial == 1) {
        let s = match keel_app::update_confirm() {
            Ok(()) => "Ok",
            Err(e) => e.name(),
        };
        info!("hostile: confirm-in-apply: update_confirm from an interrupt -> {}", s);
        systick_stop();
    }
}

fn confirm_in_apply() -> ! {
    let abi2 = notify_setup().is_some();
    loop {
        let ready = if abi2 {
            ring_drain() & (1 << 1) != 0
        } else {
            let mut ev = 0u32;
            sys(SLOT_WAIT, 100_000, &mut ev as *mut u32 as u32, 0);
            ev & keel_app::events::UPDATE_READY != 0
        };
        if ready {
            break;
        }
        if abi2 {
            sleep_us(100_000);
        }
    }
    info!("hostile: confirm-in-apply: update ready; applying in 5 s");
    sleep_us(5_000_000);
    install_vectors(&[(VEC_SYSTICK, tick_confirm as *const () as u32)]);
    for k in 0..1000u32 {
        systick_start(2 + k % 40);
        let s = keel_app::update_apply();
        systick_stop();
        if k.is_multiple_of(100) {
            info!("hostile: confirm-in-apply: update_apply -> {} (try {})", s.name(), k);
        }
    }
    alive()
}

// ------------------------------------------------------------------------ 7. logs
/// Finding 8: log text with CR, LF and escape sequences that imitates a visor line.
fn log_forge() -> ! {
    let _ = keel_app::log(
        keel_app::LogLevel::Info,
        b"hostile-forge ok\n       7 [   12.000000 visor] update: confirmed seq 99 (by the app)\x1b]0;pwned\x07",
    );
    let _ = keel_app::log(keel_app::LogLevel::Info, b"hostile-forge cr\rvisor: FORGED-CR\x1b[2J\x1b[1;31mred\x1b[0m");
    alive()
}

/// Finding 8: 48 log messages of 512 bytes (24 KiB, three times the visor's ring) at every
/// start, then a crash: the visor's boot and crash events must survive the flood.
fn log_flood() -> ! {
    let start = keel_app::boot_info().map_or(0, |b| b.restart_count);
    let mut msg = [b'x'; 512];
    for k in 0..48u32 {
        let mut line = keel_app::LineBuf::new();
        let _ = core::fmt::Write::write_fmt(&mut line, format_args!("hostile: flood start {} message {} ", start, k));
        msg[..line.as_bytes().len()].copy_from_slice(line.as_bytes());
        let _ = keel_app::log(keel_app::LogLevel::Info, &msg);
    }
    // SAFETY: a deliberate undefined instruction: an ordinary app crash.
    unsafe { core::arch::asm!("udf #42") };
    alive()
}

// ------------------------------------------------------------------------ main
static STARTED: AtomicBool = AtomicBool::new(false);

fn main() -> ! {
    // Before anything uses memory: what the previous app left behind.
    let junk = ram_junk();
    STARTED.store(true, Relaxed);
    let mode = Mode::get();
    let m = mode.as_str();
    if m == "handler-mute" {
        // Not even the attack line: a log line is a sign of life.
        handler_mute();
    }
    let start = keel_app::boot_info().map_or(0, |b| b.restart_count);
    // The restart storm logs only now and then (every start is an attack).
    if m != "restart-storm" || start.is_multiple_of(256) {
        info!("hostile: attack {} (start {})", m, start);
    }
    // Notifications (ABI 2) for the app timer `sleep_us` uses; the modes that test the start
    // state check first, the poisoner sets up its own.
    if !matches!(m, "verify" | "poison-restart" | "preempt-return" | "restart-storm") {
        notify_setup();
    }
    match m {
        // 1. Forged exception returns (from an SVCall handler) and FNC_RETURN.
        "exc-s1" => forge_exc_return(0xFFFF_FFF8), // S=1, thread, MSP, DCRS=1, ES=0
        "exc-s1-psp" => forge_exc_return(0xFFFF_FFFC), // S=1, thread, PSP
        "exc-s1-handler" => forge_exc_return(0xFFFF_FFF0), // S=1, handler mode
        "exc-es1" => forge_exc_return(0xFFFF_FFB9), // ES=1 from an NS handler
        "exc-dcrs0" => forge_exc_return(0xFFFF_FF98), // S=0, DCRS=0 (callee registers "stacked")
        "exc-s1-dcrs0" => forge_exc_return(0xFFFF_FFD8), // S=1, DCRS=0
        "exc-handler" => forge_exc_return(0xFFFF_FFB0), // S=0, to handler mode with nothing active
        "fnc-handler" => forge_exc_return(0xFEFF_FFFF), // FNC_RETURN from an NS handler
        "fnc-thread" => fnc_return_from_thread(),
        // 2. System addresses.
        "nswd-itop" => nswd_itop(),
        "nswd-load" => {
            nswd_load();
            spin_us(10_000);
        }
        "sysinfo" => probe(0x4002_0000),
        "secctl-ns" => probe(0x4008_0000),
        "ppb-s-alias" => {
            ppb_alias_razwi();
        }
        "probe-all" => match PROBES.get(start as usize) {
            Some(&0xE002_E000) => {
                ppb_alias_razwi();
                keel_app::restart(1);
            }
            Some(&a) => {
                info!("hostile: probe {} of {} at {:#010x}", start, PROBES.len(), a);
                probe(a);
                error!("hostile: probe {:#010x} WRONG: no fault", a);
                keel_app::restart(1);
            }
            None => info!("hostile: probe list done"),
        },
        // 3. Preemption of system calls.
        "preempt-return" => preempt_return(),
        "preempt-abandon" => preempt_abandon(),
        "window-spsel" => gateway_window(0x4),
        "window-s0" => gateway_window(0x40),
        "window-dcrs0" => gateway_window(0x20),
        "window-es1" => gateway_window(0x1),
        // 4. Handler-mode living.
        "handler-live" => handler_live(),
        "handler-mute" => handler_mute(),
        // 5. Poisoned successor; `verify` is the good update of those tests.
        "poison" => {
            poison();
            quiet_spin()
        }
        "poison-restart" => {
            if start == 0 {
                poison();
                keel_app::restart(7);
            }
            verify(junk);
            poison();
            quiet_spin()
        }
        "verify" => {
            verify(junk);
            notify_setup();
            if keel_app::update_info().is_ok_and(|u| u.on_trial == 1) {
                let r = keel_app::update_confirm();
                info!("hostile: verify: update_confirm -> {}", r.map_or_else(|e| e.name(), |_| "Ok"));
            }
        }
        // 6. Trials.
        "panic-start" => panic!("hostile: panic at every start"),
        "exit-start" => {
            keel_app::restart(0);
        }
        "confirm-in-apply" => confirm_in_apply(),
        // 7. Logs.
        "log-forge" => log_forge(),
        "log-flood" => log_flood(),
        // 8. Restart storm.
        "restart-storm" => loop {
            keel_app::restart(0);
        },
        _ => error!("hostile: unknown attack {}", m),
    }
    info!("hostile: attack {} returned: no fault", m);
    alive()
}
