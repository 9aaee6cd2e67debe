//! The visor's runtime: everything written in assembly or reached through raw addresses of the
//! visor's own image. The vector table and `Reset`, the system-call table (NSC veneers) and its
//! entry shim, the exception trampolines, the idle thread and the switch to it at the end of boot,
//! the visor's stacks (painting, high-water, the idle thread's first frame) and the raw views of
//! its code for the integrity digests. The decisions (what a handler does, which context runs
//! next) stay in `main.rs`; this module only provides the mechanisms.
#![allow(unsafe_code)]

use core::arch::{asm, global_asm, naked_asm};

/// Fill pattern of both visor stacks, written by `Reset`; the first word that differs is the
/// stack's high-water mark.
const STACK_PAINT: u32 = 0xA5A5_A5A5;

/// The Armv8-M stack seal: the two words at the top of each secure stack. A function return
/// (`FNC_RETURN`) or exception return that would unstack from an empty secure stack reads the seal
/// instead of stale words and faults (the app cannot use it to enter secure code).
const STACK_SEAL: u32 = 0xFEF5_EDA5;

/// Below this depth of live frames on the secure stack, a system call made from an app
/// exception handler is refused (see `keel_syscall_entry`).
const NESTED_CALL_LIMIT: u32 = 1024;

extern "C" {
    static __nsc_start: u8;
    static __nsc_end: u8;
    static __code_end: u8;
    static __stacks_start: u32;
    static __msp_top: u32;
    static __psp_top: u32;
    static __stacks_end: u32;
}

/// The address of a linker symbol.
fn sym_addr<T>(p: *const T) -> u32 {
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
    .word {nmi}
    .word keel_fault_entry      @ HardFault
    .word keel_fault_entry      @ MemManage
    .word keel_fault_entry      @ BusFault
    .word keel_fault_entry      @ UsageFault
    .word keel_fault_entry      @ SecureFault
    .word 0, 0, 0
    .word {unexpected}          @ SVCall
    .word {unexpected}          @ DebugMonitor
    .word 0
    .word keel_service_entry    @ PendSV: the service routine
    .word {unexpected}          @ SysTick (unused)
    @ External interrupts 0-63, from the board's interrupt numbers (Board::ALARM_IRQ <
    @ Board::NET_IRQ): every other slot is unexpected.
    .rept {alarm_irq}
    .word {unexpected}
    .endr
    .word {alarm}               @ the alarm timer
    .rept {net_irq} - {alarm_irq} - 1
    .word {unexpected}
    .endr
    .word {net}                 @ the network controller
    .rept 63 - {net_irq}
    .word {unexpected}
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
    @ Seal both stacks and start below the seals.
    ldr r1, ={seal}
    str r1, [r0, #-8]
    str r1, [r0, #-4]
    sub r0, r0, #8
    msr msp, r0
    ldr r0, =__psp_top
    str r1, [r0, #-8]
    str r1, [r0, #-4]
    bl {main}
    udf #0
    .ltorg
"#,
    paint = const STACK_PAINT,
    seal = const STACK_SEAL,
    main = sym crate::visor_main,
    nmi = sym crate::keel_nmi,
    unexpected = sym crate::keel_unexpected,
    alarm = sym crate::keel_alarm,
    net = sym crate::keel_net_irq,
    alarm_irq = const <crate::board::This as crate::board::Board>::ALARM_IRQ,
    net_irq = const <crate::board::This as crate::board::Board>::NET_IRQ,
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

/// Common secure entry of every system call (the veneer put the slot in r12).
///
/// 1. It masks every non-secure exception (BASEPRI_S = 0x60, which also holds off the service
///    routine, PendSV; the alarm and network interrupts at 0x40 still run): no app interrupt,
///    SysTick or RTOS task switch can preempt the call, so the app cannot abandon a call halfway
///    and calls are atomic to every task and handler of the app.
/// 2. It checks the secure stack. Only the few instructions between the `sg` and the mask (and
///    between the unmask and the `bxns`) can be preempted by the app. If the app then left those
///    frames behind (an exception return that does not come back), they stay on MSP_S:
///    - called from the app's thread mode, no app exception is active, so nothing below the
///      seal is live: the call restarts from the sealed top, reclaiming what was left;
///    - called from an app handler, the frames may belong to a call that handler preempted and
///      will resume: the call runs below them, unless they are deeper than
///      [`NESTED_CALL_LIMIT`], which no legitimate nesting reaches: the app is then abusing the
///      call gate, and `keel_abandoned_calls` records it as a crash and resets.
/// 3. It calls the slot's handler from [`crate::syscalls::TABLE`] with r0..r3; the handler
///    returns r0 (the status, or the low word of a value) and r1.
/// 4. It overwrites r2, r3, r12 and every flag (GE included) so no secure value reaches the app,
///    unmasks and returns with BXNS. r4..r11 are preserved by the handler (AAPCS).
#[unsafe(naked)]
#[no_mangle]
unsafe extern "C" fn keel_syscall_entry() {
    naked_asm!(
        "push {{r4, lr}}",
        "movs r4, #0x60",
        "msr basepri, r4",
        "ldr r4, ={empty}",
        "cmp sp, r4",
        "bne 2f",
        "1:",
        "ldr r4, ={table}",
        "ldr r4, [r4, r12, lsl #2]",
        "blx r4",
        "5:",
        "pop {{r4, lr}}",
        "movs r2, #0",
        "mov r3, r2",
        "mov r12, r2",
        // `msr APSR_nzcvqg, r2` (the GE bits too; the M33 of this board has the DSP extension,
        // which the target's assembler does not enable).
        ".inst.w 0xf3828c00",
        "msr basepri, r2",
        "bxns lr",
        // The stack is not empty.
        "2:",
        "mrs r4, ipsr",
        "cbnz r4, 3f",
        // From thread mode: everything on the stack was abandoned. Move the two words pushed
        // above to the sealed top (far above them: they sit below at least one stacked frame)
        // and continue from there.
        "ldr r4, ={empty}",
        "ldr lr, [sp]",
        "str lr, [r4]",
        "ldr lr, [sp, #4]",
        "str lr, [r4, #4]",
        "mov sp, r4",
        "b 1b",
        // From an app handler: run below the frames, within the limit.
        "3:",
        "ldr r4, ={limit}",
        "cmp sp, r4",
        "bhi 1b",
        "b {abandoned}",
        empty = sym __keel_syscall_empty_sp,
        limit = sym __keel_syscall_limit_sp,
        table = sym crate::syscalls::TABLE,
        abandoned = sym crate::keel_abandoned_calls,
    );
}

// The stack pointer of a system call entered on an empty (sealed) MSP_S, after the entry pushed
// two words, and the lowest one a nested call may start at: linker-time constants.
global_asm!(
    ".global __keel_syscall_empty_sp",
    ".set __keel_syscall_empty_sp, __msp_top - 16",
    ".global __keel_syscall_limit_sp",
    ".set __keel_syscall_limit_sp, __msp_top - 16 - {limit}",
    limit = const NESTED_CALL_LIMIT,
);

extern "C" {
    static __keel_syscall_empty_sp: u8;
    static __keel_syscall_limit_sp: u8;
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
                // MSP_S (it goes to the app's stack or the idle thread's PSP_S). Back to just
                // below the seal.
                "ldr r1, ={msp_top}",
                "subs r1, r1, #8",
                "msr msp, r1",
                "mov r1, r0",
                "bx lr",
                h = sym $handler,
                msp_top = sym __msp_top,
            );
        }
    };
}

trampoline!(keel_fault_entry => crate::fault_handler);
trampoline!(keel_service_entry => crate::service_handler);

/// What a trampoline's handler returns: keep the interrupted context.
pub fn keep(exc_return: u32) -> u64 {
    exc_return as u64
}

/// What a trampoline's handler returns: enter a fresh context with `exc_return`.
pub fn fresh(exc_return: u32) -> u64 {
    exc_return as u64 | (1 << 32)
}

/// The secure thread when the app is not running.
#[unsafe(naked)]
unsafe extern "C" fn keel_idle() {
    naked_asm!("1:", "wfi", "b 1b");
}

/// Top of the secure thread's stack (PSP_S), below its seal.
fn psp_top() -> u32 {
    sym_addr(core::ptr::addr_of!(__psp_top)) - 8
}

/// Sets PSP_S; only from handler mode (which runs on MSP_S, so PSP_S is not in use).
fn set_psp_s(v: u32) {
    // SAFETY: in handler mode PSP_S is not in use; callers pass the top of the secure thread's
    // stack or a frame they built inside it.
    unsafe { asm!("msr psp, {v}", v = in(reg) v, options(nostack, preserves_flags)) };
}

/// Abandons the secure thread (a system call or the idle loop) before an exception return enters
/// the app: PSP_S goes back to the top of its stack. Only from handler mode.
pub fn abandon_secure_thread() {
    set_psp_s(psp_top());
}

/// The app's r4-r11 as an exception trampoline pushed them at `sp` (the handler's second
/// argument), when the exception was taken from the app: the core does not stack them when a
/// secure exception interrupts non-secure code, so they are still the app's on entry.
pub fn trampoline_callee_regs(sp: u32) -> [u32; 8] {
    let mut r = [0u32; 8];
    for (i, v) in r.iter_mut().enumerate() {
        // SAFETY: `sp` is the trampoline's own frame on MSP_S (10 words: r3-r11, lr), live for
        // the whole handler; words 1..=8 are r4-r11.
        *v = unsafe { core::ptr::read_volatile((sp as *const u32).add(1 + i)) };
    }
    r
}

/// Makes the trampoline at `sp` return into a halted app's context: r4-r11 and the EXC_RETURN
/// it pops are replaced by the app's, so its exception return unstacks the app's frame (still on
/// the app's stack) with the app's registers. The handler then returns [`keep`].
pub fn return_into(sp: u32, callee: &[u32; 8], exc_return: u32) {
    for (i, v) in callee.iter().enumerate() {
        // SAFETY: as in `trampoline_callee_regs`: the trampoline's frame on MSP_S; words 1..=8
        // are the r4-r11 it pops before returning.
        unsafe { core::ptr::write_volatile((sp as *mut u32).add(1 + i), *v) };
    }
    // SAFETY: word 9 of the same frame is the EXC_RETURN it pops into lr and returns with.
    unsafe { core::ptr::write_volatile((sp as *mut u32).add(9), exc_return) };
}

/// EXC_RETURN: secure thread mode on PSP_S, standard frame.
const RETURN_TO_SECURE_THREAD: u32 = 0xFFFF_FFFD;

/// Prepares a fresh idle thread (a first frame on PSP_S that enters the `wfi` loop) and returns
/// the EXC_RETURN that enters it; the handler returns it with [`fresh`]. Used while the app is
/// halted for the debugger: the app's context stays where it is, untouched.
pub fn idle_thread_entry() -> u32 {
    let frame = psp_top() - 32;
    let words = [0, 0, 0, 0, 0, 0xFFFF_FFFF, (keel_idle as *const () as u32) & !1, 0x0100_0000];
    for (i, w) in words.iter().enumerate() {
        // SAFETY: the top 32 bytes of the idle thread's own stack (PSP_S), which nothing uses:
        // only handler mode runs (on MSP_S) while this is written, and the idle thread is
        // abandoned.
        unsafe { core::ptr::write_volatile((frame as *mut u32).add(i), *w) };
    }
    set_psp_s(frame);
    RETURN_TO_SECURE_THREAD
}

/// The stacked PC of a fault in the visor itself: the secure frame is at `frame` on MSP_S (0 if
/// unknown), or on PSP_S when the faulting context used it (`uses_psp`). 0 if unknown.
pub fn visor_fault_pc(uses_psp: bool, frame: u32) -> u32 {
    if frame == 0 {
        return 0;
    }
    let frame = if uses_psp {
        let psp: u32;
        // SAFETY: reading PSP_S has no side effects.
        unsafe { asm!("mrs {}, psp", out(reg) psp, options(nomem, nostack, preserves_flags)) };
        psp
    } else {
        frame
    };
    let in_stacks = |a: u32| {
        (sym_addr(core::ptr::addr_of!(__stacks_start))..sym_addr(core::ptr::addr_of!(__stacks_end))).contains(&a)
    };
    let pc_at = frame.wrapping_add(24);
    if !in_stacks(pc_at) || !pc_at.is_multiple_of(4) {
        return 0;
    }
    // SAFETY: an aligned word inside the visor's own stack region (checked above).
    unsafe { core::ptr::read_volatile(pc_at as *const u32) }
}

/// Bytes of each visor stack that were ever used: `(main, idle)` (MSP_S, PSP_S).
pub fn stack_high_water() -> (u32, u32) {
    let s = sym_addr(core::ptr::addr_of!(__stacks_start));
    let m = sym_addr(core::ptr::addr_of!(__msp_top));
    let p = sym_addr(core::ptr::addr_of!(__psp_top));
    (high_water(s, m), high_water(m, p))
}

fn high_water(bottom: u32, top: u32) -> u32 {
    let mut a = bottom;
    while a < top {
        // SAFETY: an aligned word of the visor's own stack region, between linker symbols.
        if unsafe { core::ptr::read_volatile(a as *const u32) } != STACK_PAINT {
            break;
        }
        a += 4;
    }
    top - a
}

/// Whether `pc` lies in the visor's own code: a fault there is a fault of the visor.
pub fn in_visor_code(pc: u32) -> bool {
    (crate::board::VISOR_CODE_BASE..sym_addr(core::ptr::addr_of!(__code_end))).contains(&pc)
}

/// The NSC table's bounds `[start, end)`, from the linker script.
pub fn nsc_range() -> (u32, u32) {
    (sym_addr(core::ptr::addr_of!(__nsc_start)), sym_addr(core::ptr::addr_of!(__nsc_end)))
}

/// The visor's code and read-only data (from the image base to the end of the `.data`
/// initialisers), and the NSC table: what the code integrity digest covers.
pub fn code_and_nsc() -> (&'static [u8], &'static [u8]) {
    let base = crate::board::VISOR_CODE_BASE;
    let code_end = sym_addr(core::ptr::addr_of!(__code_end));
    // SAFETY: the visor's own code and read-only data, between the image base and a linker
    // symbol; nothing writes it while the visor runs.
    let code = unsafe { core::slice::from_raw_parts(base as *const u8, (code_end - base) as usize) };
    let (nsc_start, nsc_end) = nsc_range();
    // SAFETY: the system-call table, between linker symbols; never written.
    let nsc = unsafe { core::slice::from_raw_parts(nsc_start as *const u8, (nsc_end - nsc_start) as usize) };
    (code, nsc)
}

/// Ends the boot: switches the secure thread to PSP_S (the idle thread's stack), resets MSP_S to
/// the top of the handler stack, asks for the service routine (which starts the app) and enters
/// the idle loop.
pub fn enter_idle_thread() -> ! {
    let psp_top = psp_top();
    let msp_top = sym_addr(core::ptr::addr_of!(__msp_top)) - 8;
    // SAFETY: called last from `visor_main`, which never returns, so the frames on MSP_S are dead
    // and resetting MSP_S loses nothing; PSP_S is the idle thread's own, unused stack.
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
    crate::board::pend_service();
}
