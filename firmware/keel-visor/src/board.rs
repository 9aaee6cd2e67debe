//! Board layer for QEMU `mps2-an505` (Cortex-M33 + TrustZone, SSE-200 subsystem).
//!
//! The hardware the visor drives, by address: the memory map, the security controllers (SAU, MPCs,
//! PPCs), the core's system registers (fault status, NVIC, NS banks), the time base and alarm
//! timers, the console UART, the flash medium and warm RAM. No public function here takes a raw
//! address: registers are named ([`FaultReg`]) or fixed.
//!
//! What a port to another chip (STM32U585 is next) provides: an implementation of [`Board`] (time
//! base and alarm, flash medium, network controller, interrupt numbers, security setup; the
//! visor reaches them only through [`This`], and the vector table takes its interrupt slots from
//! the trait's constants), this file's memory-map constants and the linker script (`visor.ld`).
//! The Armv8-M core registers below (SCB, SAU, NVIC, the non-secure aliases, TT) are the same on
//! every Cortex-M33; the NS reset sequence in [`reset_ns_core`] carries over.
#![allow(unsafe_code)]

use core::ptr::{read_volatile, write_volatile};
#[cfg(feature = "measure")]
use core::sync::atomic::AtomicU32;
use core::sync::atomic::{AtomicBool, Ordering};

/// Start of the app execution region (NS alias of SSRAM-0's upper half). Apps are linked here.
pub const APP_EXEC_BASE: u32 = 0x0020_0000;
/// Size of the app execution region.
pub const APP_EXEC_SIZE: u32 = 0x0020_0000;
/// Start of the app's RAM (SSRAM-1, non-secure).
pub const APP_RAM_BASE: u32 = 0x2800_0000;
/// Size of the app's RAM.
pub const APP_RAM_SIZE: u32 = 0x0020_0000;
/// Base of the NSC veneer table (must match the linker script and the SDK headers).
pub const NSC_BASE: u32 = 0x1007_0000;
/// Start of the visor's code in its secure alias.
pub const VISOR_CODE_BASE: u32 = 0x1000_0000;
/// The flash device: QEMU's 16 MiB `mps.ram`, file backed, secure through the SAU default.
pub const FLASH_BASE: u32 = 0x8000_0000;

const UART0_S: usize = 0x5020_0000;
const SECCTL_S: usize = 0x5008_0000;
const SECRESPCFG: usize = SECCTL_S + 0x10;
const NSCCFG: usize = SECCTL_S + 0x14;
const MPC_SSRAM0: usize = 0x5800_7000;
const MPC_SSRAM1: usize = 0x5800_8000;

const SCB_ICSR: usize = 0xE000_ED04;
const SCB_SCR: usize = 0xE000_ED10;
const SCB_AIRCR: usize = 0xE000_ED0C;
const SCB_SHPR3: usize = 0xE000_ED20;
const SCB_SHCSR: usize = 0xE000_ED24;
const SCB_CFSR: usize = 0xE000_ED28;
const SCB_HFSR: usize = 0xE000_ED2C;
const SCB_MMFAR: usize = 0xE000_ED34;
const SCB_BFAR: usize = 0xE000_ED38;
const SAU_SFSR: usize = 0xE000_EDE4;
const SAU_SFAR: usize = 0xE000_EDE8;
const SAU_CTRL: usize = 0xE000_EDD0;
const SAU_RNR: usize = 0xE000_EDD8;
const SAU_RBAR: usize = 0xE000_EDDC;
const SAU_RLAR: usize = 0xE000_EDE0;
// Non-secure aliases of core registers, reachable from the secure side only.
const VTOR_NS: usize = 0xE002_ED08;
const SCB_SHCSR_NS: usize = 0xE002_ED24;
const SCB_ICSR_NS: usize = 0xE002_ED04;
const SCB_CFSR_NS: usize = 0xE002_ED28;
const SCB_HFSR_NS: usize = 0xE002_ED2C;
const SCB_AIRCR_NS: usize = 0xE002_ED0C;
const SCB_SCR_NS: usize = 0xE002_ED10;
const SCB_CCR_NS: usize = 0xE002_ED14;
const SCB_SHPR1_NS: usize = 0xE002_ED18;
const MPU_TYPE_NS: usize = 0xE002_ED90;
const MPU_CTRL_NS: usize = 0xE002_ED94;
const MPU_RNR_NS: usize = 0xE002_ED98;
const MPU_RBAR_NS: usize = 0xE002_ED9C;
const MPU_RLAR_NS: usize = 0xE002_EDA0;
const MPU_MAIR0_NS: usize = 0xE002_EDC0;
const MPU_MAIR1_NS: usize = 0xE002_EDC4;
const NVIC_ICER: usize = 0xE000_E180;
const NVIC_ISPR: usize = 0xE000_E200;
const NVIC_ICPR: usize = 0xE000_E280;
const NVIC_IABR: usize = 0xE000_E300;
const NVIC_ITNS: usize = 0xE000_E380;
/// Reset value of CCR: STKALIGN and the (v8-M RES1) NONBASETHRDENA.
const CCR_RESET: u32 = 0x201;

/// Core clock in Hz.
pub const SYSCLK_HZ: u32 = 20_000_000;

// Private: every caller in this file passes one of the register addresses above (plus a fixed
// offset into its block), so these are never given an address from outside.
fn rd(a: usize) -> u32 {
    // SAFETY: `a` is a 4-aligned memory-mapped register of this board (see above), and reading
    // it has no effect on memory Rust knows about.
    unsafe { read_volatile(a as *const u32) }
}
fn wr(a: usize, v: u32) {
    // SAFETY: as for `rd`; the writes configure hardware only the visor owns.
    unsafe { write_volatile(a as *mut u32, v) }
}

/// A fault status or address register, for crash reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultReg {
    /// Configurable Fault Status Register, secure bank.
    Cfsr,
    /// Configurable Fault Status Register, non-secure bank (where an app fault that escalated
    /// to the visor's HardFault records its cause).
    CfsrNs,
    /// HardFault Status Register.
    Hfsr,
    /// MemManage Fault Address Register.
    Mmfar,
    /// BusFault Address Register.
    Bfar,
    /// SecureFault Status Register.
    Sfsr,
    /// SecureFault Address Register.
    Sfar,
}

impl FaultReg {
    fn addr(self) -> usize {
        match self {
            FaultReg::Cfsr => SCB_CFSR,
            FaultReg::CfsrNs => SCB_CFSR_NS,
            FaultReg::Hfsr => SCB_HFSR,
            FaultReg::Mmfar => SCB_MMFAR,
            FaultReg::Bfar => SCB_BFAR,
            FaultReg::Sfsr => SAU_SFSR,
            FaultReg::Sfar => SAU_SFAR,
        }
    }
}

/// Reads a fault status or address register.
pub fn read_reg(r: FaultReg) -> u32 {
    rd(r.addr())
}

/// Clears the write-one-to-clear fault status registers after a fault was recorded.
pub fn clear_fault_status() {
    wr(SCB_CFSR, rd(SCB_CFSR));
    wr(SCB_HFSR, rd(SCB_HFSR));
    wr(SAU_SFSR, rd(SAU_SFSR));
    wr(SCB_CFSR_NS, rd(SCB_CFSR_NS));
    wr(SCB_HFSR_NS, rd(SCB_HFSR_NS));
}

/// Console UART (CMSDK UART0, secure alias). Output only.
pub mod uart {
    use super::*;
    /// Enables the transmitter.
    pub fn init() {
        wr(UART0_S + 0x10, SYSCLK_HZ / 115_200); // BAUDDIV, must be >= 16
        wr(UART0_S + 0x08, 1); // CTRL.TXEN
    }
    /// Sends one byte, waiting while the TX buffer is full.
    pub fn putc(c: u8) {
        while rd(UART0_S + 0x04) & 1 != 0 {}
        wr(UART0_S, c as u32);
    }
}

fn sau_region(n: u32, base: u32, limit_incl: u32, nsc: bool) {
    wr(SAU_RNR, n);
    wr(SAU_RBAR, base & !0x1f);
    wr(SAU_RLAR, (limit_incl & !0x1f) | ((nsc as u32) << 1) | 1);
}

/// Marks `[start, end)` (offsets into the memory behind `mpc`) non-secure.
fn mpc_set_ns(mpc: usize, start: u32, end: u32) {
    // BLK_CFG: the block size.
    let bs = 1u32 << (rd(mpc + 0x14) + 5);
    // CTRL: SEC_RESP=1 (bus error on violation), AUTOINC=0 — reads of BLK_LUT would otherwise
    // advance BLK_IDX and break read-modify-write (QEMU 7.2, observed).
    wr(mpc, 1 << 4);
    let mut blk = start / bs;
    while blk < end / bs {
        wr(mpc + 0x18, blk / 32);
        let v = rd(mpc + 0x1c);
        wr(mpc + 0x1c, v | (1 << (blk % 32)));
        blk += 1;
    }
}

/// Configures TrustZone: the app gets exactly its code region, its RAM and the NSC table;
/// everything else (visor code and data, flash, all peripherals, all interrupts) stays secure.
pub fn configure_security(nsc_start: u32, nsc_end: u32) {
    // Accesses blocked by an MPC raise bus errors instead of reading zero. (On QEMU 7.2 an app
    // access to a PPC-protected peripheral still reads zero and the write is ignored.)
    wr(SECRESPCFG, 1);
    wr(NSCCFG, 1); // CODENSC: allow an SAU NSC region in 0x1xxxxxxx
    sau_region(0, APP_EXEC_BASE, APP_EXEC_BASE + APP_EXEC_SIZE - 1, false);
    sau_region(1, APP_RAM_BASE, APP_RAM_BASE + APP_RAM_SIZE - 1, false);
    sau_region(2, nsc_start, nsc_end - 1, true);
    // Nothing else is non-secure: no peripheral is opened to the app. (The IoT kit's PPC-less
    // blocks at 0x4002_0000 and 0x4008_0000 — among them the non-secure watchdog, which can reset
    // the whole system — would be reachable through an SAU region over 0x4xxx_xxxx; without one,
    // an app access to any peripheral is a SecureFault the visor records.)
    for n in 3..8 {
        wr(SAU_RNR, n);
        wr(SAU_RLAR, 0);
    }
    wr(SAU_CTRL, 1);
    mpc_set_ns(MPC_SSRAM0, APP_EXEC_BASE, APP_EXEC_BASE + APP_EXEC_SIZE);
    mpc_set_ns(MPC_SSRAM1, 0, APP_RAM_SIZE);
    // All external interrupts target the secure state (ITNS = 0).
    for i in 0..16 {
        wr(NVIC_ITNS + 4 * i, 0);
    }
    // MemManage, BusFault, UsageFault and SecureFault as separate secure exceptions.
    wr(SCB_SHCSR, rd(SCB_SHCSR) | (0xF << 16));
    // AIRCR: PRIS=1 (all non-secure priorities below every secure one), SYSRESETREQS=1 (only the
    // visor may reset the system), BFHFNMINS=0 (HardFault/BusFault/NMI go to the visor).
    wr(SCB_AIRCR, 0x05FA_0000 | (1 << 14) | (1 << 3));
    // Secure exception priorities: PendSV 0x60 (the service routine), below the alarm (0x40) and
    // above every app priority (which PRIS maps to 0x80..0xFF).
    wr(SCB_SHPR3, 0x60 << 16);
    // SCR.SLEEPDEEPS: only the visor decides about deep sleep (the app's SLEEPDEEP would
    // otherwise turn the visor's own `wfi` into a deep sleep that may stop its alarm).
    wr(SCB_SCR, rd(SCB_SCR) | (1 << 3));
    barrier();
}

/// CMSDK dual timer, timer 1 (secure alias): the free-running time base.
const DUALTIMER1_S: usize = 0x5000_2000;

/// Starts the time base: a free-running 32-bit down counter at [`SYSCLK_HZ`].
pub fn start_clock() {
    wr(DUALTIMER1_S + 0x08, 0); // disable while configuring
    wr(DUALTIMER1_S, 0xFFFF_FFFF); // load
    wr(DUALTIMER1_S + 0x08, 0x80 | 0x02); // enable, free-running, 32-bit, no prescale, no interrupt
}

/// Cycles counted by the time base (wraps every 2^32 cycles, about 214 s).
pub fn clock_cycles() -> u32 {
    !clock_raw()
}

/// The time base's counter as it is: counting down from 2^32 - 1.
#[inline(always)]
fn clock_raw() -> u32 {
    rd(DUALTIMER1_S + 0x04)
}

/// CMSDK timer 0 (secure alias): the alarm.
const TIMER0_S: usize = 0x5000_0000;
/// Interrupt number of the alarm timer (SSE-200 TIMER0).
pub const ALARM_IRQ: u32 = 3;
const NVIC_ISER: usize = 0xE000_E100;
const NVIC_IPR: usize = 0xE000_E400;

/// Longest alarm delay in cycles (kept below half the time base's period, so the 64-bit clock
/// extension always sees every wrap).
pub const ALARM_MAX_CYCLES: u32 = 0x7FFF_FFFF;

/// Enables the alarm interrupt (secure, priority 0x40: above every app priority).
pub fn init_alarm() {
    wr(TIMER0_S, 0);
    wr(TIMER0_S + 0x0C, 1);
    // SAFETY: byte write to the NVIC priority register of the alarm interrupt.
    unsafe { write_volatile((NVIC_IPR + ALARM_IRQ as usize) as *mut u8, 0x40) };
    wr(NVIC_ICPR + 4 * (ALARM_IRQ as usize / 32), 1 << (ALARM_IRQ % 32));
    wr(NVIC_ISER + 4 * (ALARM_IRQ as usize / 32), 1 << (ALARM_IRQ % 32));
}

/// After the alarm expired it fires again with this period until its interrupt stops it
/// ([`ack_alarm`]), which bounds the lateness if an expiry is ever missed: QEMU 7.2 with
/// `-icount sleep=off` skips the first expiry when it warps idle time to it (with a 1 ms period
/// a 200 µs app timer fired 200 µs late; now 1 µs). No interrupt storm: the first interrupt
/// stops the timer, and the service routine arms it again.
const ALARM_REPEAT_CYCLES: u32 = SYSCLK_HZ / 1_000_000;

/// Makes the alarm interrupt fire once after `cycles` (1..=[`ALARM_MAX_CYCLES`]).
pub fn arm_alarm(cycles: u32) {
    let c = cycles.clamp(1, ALARM_MAX_CYCLES);
    wr(TIMER0_S, 0); // stop
    wr(TIMER0_S + 0x0C, 1); // clear an expiry that happened meanwhile
    wr(TIMER0_S + 0x08, c.min(ALARM_REPEAT_CYCLES));
    wr(TIMER0_S + 0x04, c);
    wr(TIMER0_S, 0b1001); // enable, interrupt enable
}

/// Acknowledges the alarm interrupt and stops the timer (the service routine re-arms it).
pub fn ack_alarm() {
    wr(TIMER0_S, 0);
    wr(TIMER0_S + 0x0C, 1);
}

/// The SSE-200's S32K watchdog (CMSDK APB watchdog on the 32,768 Hz clock; secure only): its
/// interrupt is the NMI, its reset output resets the system.
const S32K_WATCHDOG: usize = 0x5002_E000;
const WDOG_UNLOCK: u32 = 0x1ACC_E551;
const S32K_HZ: u32 = 32_768;

/// Starts the secure watchdog: the NMI after [`WATCHDOG_TIMEOUT_MS`] without a feed, a system
/// reset after twice that.
pub fn start_watchdog() {
    wr(S32K_WATCHDOG + 0xC00, WDOG_UNLOCK);
    wr(S32K_WATCHDOG, S32K_HZ / 1000 * WATCHDOG_TIMEOUT_MS); // LOAD
    wr(S32K_WATCHDOG + 0x08, 0b11); // CONTROL: INTEN, RESEN
    wr(S32K_WATCHDOG + 0xC00, 0);
}

/// Feeds the secure watchdog (clears its interrupt, which reloads the counter).
pub fn feed_watchdog() {
    wr(S32K_WATCHDOG + 0xC00, WDOG_UNLOCK);
    wr(S32K_WATCHDOG + 0x0C, 1); // INTCLR: reload
    wr(S32K_WATCHDOG + 0xC00, 0);
}

/// LAN9118 Ethernet controller, secure alias.
pub const LAN9118_BASE: usize = 0x5200_0000;
/// Its interrupt number.
pub const NET_IRQ: u32 = 48;

/// Enables the Ethernet interrupt (secure, same priority as the alarm).
pub fn enable_net_irq() {
    // SAFETY: byte write to the NVIC priority register of the Ethernet interrupt.
    unsafe { write_volatile((NVIC_IPR + NET_IRQ as usize) as *mut u8, 0x40) };
    wr(NVIC_ICPR + 4 * (NET_IRQ as usize / 32), 1 << (NET_IRQ % 32));
    wr(NVIC_ISER + 4 * (NET_IRQ as usize / 32), 1 << (NET_IRQ % 32));
}

/// The LAN9118 driver over the board's controller, if one answers. Call once: the driver owns
/// the register block.
pub fn lan9118() -> Option<keel_lan9118::Lan9118> {
    static TAKEN: AtomicBool = AtomicBool::new(false);
    if TAKEN.swap(true, Ordering::AcqRel) {
        return None;
    }
    // SAFETY: LAN9118_BASE is this board's LAN9118 register block (secure alias); the flag above
    // hands it to one driver only, and nothing else in the visor touches those registers.
    unsafe { keel_lan9118::Lan9118::new(LAN9118_BASE) }
}

/// Masks the Ethernet interrupt in the NVIC: its handler does this and wakes the service
/// routine, which polls the controller and unmasks it ([`unmask_net_irq`]).
pub fn mask_net_irq() {
    wr(NVIC_ICER + 4 * (NET_IRQ as usize / 32), 1 << (NET_IRQ % 32));
}

/// Unmasks the Ethernet interrupt (a frame that arrived meanwhile interrupts again at once).
pub fn unmask_net_irq() {
    wr(NVIC_ISER + 4 * (NET_IRQ as usize / 32), 1 << (NET_IRQ % 32));
}

/// The exception number of PendSV, the service routine.
pub const SERVICE_EXCEPTION: u32 = 14;

/// Requests the secure PendSV (the visor's service routine).
pub fn pend_service() {
    wr(SCB_ICSR, 1 << 28);
}

/// Clears every exception the app has pending or active in the core, and disables its system
/// exceptions: while the app is stopped nothing of it may run, and a pending exception would
/// also keep the idle loop's WFI from sleeping.
pub fn clear_ns_exceptions() {
    // Enable, pending and active bits of the app's system exceptions (e.g. an SVCall left pending
    // by a failed exception entry), then its pending PendSV and SysTick.
    wr(SCB_SHCSR_NS, 0);
    wr(SCB_ICSR_NS, (1 << 27) | (1 << 25));
    for i in 0..16 {
        // Only interrupts targeting the non-secure state belong to the app.
        let ns = rd(NVIC_ITNS + 4 * i);
        wr(NVIC_ICER + 4 * i, ns);
        wr(NVIC_ICPR + 4 * i, ns);
    }
}

/// Puts the non-secure side back into its reset state before the app (re)starts, so nothing an
/// earlier run (or an earlier version) configured carries over: every banked SCB register (CCR,
/// SCR, the handler priorities, AIRCR.PRIGROUP, VTOR, SHCSR), the MPU with all its regions and
/// attributes, every interrupt it had (enables, pending bits, priorities, routing), its pending
/// exceptions and its special registers. The SysTick is stopped by the app's start stub (see
/// `app::prepare_start`): QEMU 7.2 refuses the secure alias of SYST_CSR_NS.
pub fn reset_ns_core(vtor: u32) {
    wr(MPU_CTRL_NS, 0);
    let regions = (rd(MPU_TYPE_NS) >> 8) & 0xFF;
    for n in 0..regions {
        wr(MPU_RNR_NS, n);
        wr(MPU_RBAR_NS, 0);
        wr(MPU_RLAR_NS, 0);
    }
    wr(MPU_RNR_NS, 0);
    wr(MPU_MAIR0_NS, 0);
    wr(MPU_MAIR1_NS, 0);
    clear_ns_exceptions();
    for i in 0..16 {
        // Every line back to the secure world (the app's notification line is routed again when
        // it sets up a ring), with its priority reset.
        let ns = rd(NVIC_ITNS + 4 * i);
        for bit in 0..32 {
            if ns & (1 << bit) != 0 {
                // SAFETY: byte write to the priority register of an interrupt the app had.
                unsafe { write_volatile((NVIC_IPR + 32 * i + bit) as *mut u8, 0) };
            }
        }
        wr(NVIC_ITNS + 4 * i, 0);
    }
    wr(SCB_CCR_NS, CCR_RESET);
    wr(SCB_SCR_NS, 0);
    for i in 0..3 {
        wr(SCB_SHPR1_NS + 4 * i, 0);
    }
    // VECTKEY with PRIGROUP = 0; the secure-only bits are not writable through this view.
    wr(SCB_AIRCR_NS, 0x05FA_0000);
    wr(VTOR_NS, vtor);
    // SAFETY: writes the non-secure banked special registers, which only affect the app.
    unsafe {
        core::arch::asm!(
            "msr control_ns, {z}",
            "msr primask_ns, {z}",
            "msr basepri_ns, {z}",
            "msr faultmask_ns, {z}",
            "msr psp_ns, {z}",
            "msr psplim_ns, {z}",
            z = in(reg) 0u32,
            options(nostack, preserves_flags)
        );
    }
    barrier();
}

/// Routes interrupt line `irq` to the app (`true`: non-secure, cleared, left for the app to
/// enable) or back to the visor (`false`: secure, disabled, cleared). Only lines of
/// [`keel_abi::notify::APP_IRQS`].
pub fn route_app_irq(irq: u32, to_app: bool) {
    if !keel_abi::notify::APP_IRQS.contains(&irq) {
        return;
    }
    let (word, bit) = (4 * (irq as usize / 32), 1u32 << (irq % 32));
    wr(NVIC_ICER + word, bit);
    wr(NVIC_ICPR + word, bit);
    let itns = rd(NVIC_ITNS + word);
    wr(NVIC_ITNS + word, if to_app { itns | bit } else { itns & !bit });
    barrier();
}

/// Pends the app's notification interrupt (routed with [`route_app_irq`]).
pub fn pend_app_irq(irq: u32) {
    if keel_abi::notify::APP_IRQS.contains(&irq) {
        wr(NVIC_ISPR + 4 * (irq as usize / 32), 1 << (irq % 32));
    }
}

/// Whether any exception of the app is active (a handler of it is running or was preempted):
/// then the app cannot be stopped by an exception return into another context; only a reset
/// clears an active exception.
pub fn ns_exception_active() -> bool {
    // SHCSR_NS: MEMFAULTACT, BUSFAULTACT, HARDFAULTACT, USGFAULTACT, NMIACT, SVCALLACT,
    // MONITORACT, PENDSVACT, SYSTICKACT.
    const ACTIVE: u32 = 0b1101_1010_1111;
    if rd(SCB_SHCSR_NS) & ACTIVE != 0 {
        return true;
    }
    (0..16).any(|i| rd(NVIC_IABR + 4 * i) & rd(NVIC_ITNS + 4 * i) != 0)
}

/// Sets PRIMASK_NS (the app's interrupt mask).
pub fn set_primask_ns(masked: bool) {
    // SAFETY: a banked non-secure special register; it only affects the app.
    unsafe { core::arch::asm!("msr primask_ns, {v}", v = in(reg) masked as u32, options(nostack, preserves_flags)) };
}

/// Sets MSP_NS and MSPLIM_NS.
pub fn set_ns_stack(msp: u32, limit: u32) {
    // SAFETY: banked non-secure stack registers; the values were validated against the app RAM.
    unsafe {
        core::arch::asm!(
            "msr msplim_ns, {l}",
            "msr msp_ns, {s}",
            l = in(reg) limit,
            s = in(reg) msp,
            options(nostack, preserves_flags)
        );
    }
}

/// Reads MSP_NS and PSP_NS.
pub fn ns_stack_pointers() -> (u32, u32) {
    let (m, p): (u32, u32);
    // SAFETY: reading banked registers has no side effects.
    unsafe {
        core::arch::asm!("mrs {m}, msp_ns", "mrs {p}, psp_ns", m = out(reg) m, p = out(reg) p, options(nomem, nostack, preserves_flags));
    }
    (m, p)
}

/// Reads CONTROL_NS.
pub fn control_ns() -> u32 {
    let c: u32;
    // SAFETY: reading a banked register has no side effects.
    unsafe { core::arch::asm!("mrs {c}, control_ns", c = out(reg) c, options(nomem, nostack, preserves_flags)) };
    c
}

/// PRIMASK_NS, BASEPRI_NS and FAULTMASK_NS (what the debugger shows of the app's masks).
pub fn ns_masks() -> [u32; 3] {
    let (p, b, f): (u32, u32, u32);
    // SAFETY: reading banked registers has no side effects.
    unsafe {
        core::arch::asm!(
            "mrs {p}, primask_ns",
            "mrs {b}, basepri_ns",
            "mrs {f}, faultmask_ns",
            p = out(reg) p,
            b = out(reg) b,
            f = out(reg) f,
            options(nomem, nostack, preserves_flags)
        );
    }
    [p, b, f]
}

/// Masks (true) or unmasks every non-secure exception via BASEPRI_S. While the app is stopped
/// nothing of it may run, not even an interrupt or an exception it left pending.
pub fn mask_app_exceptions(mask: bool) {
    let v: u32 = if mask { 0x80 } else { 0 };
    // SAFETY: BASEPRI_S only changes which exceptions may preempt; secure ones (< 0x80) still do.
    unsafe { core::arch::asm!("msr basepri, {v}", v = in(reg) v, options(nostack, preserves_flags)) };
}

/// Current exception number (0 in thread mode).
pub fn ipsr() -> u32 {
    let v: u32;
    // SAFETY: reading IPSR has no side effects.
    unsafe { core::arch::asm!("mrs {v}, ipsr", v = out(reg) v, options(nomem, nostack, preserves_flags)) };
    v & 0x1FF
}

/// Data and instruction barrier.
pub fn barrier() {
    // SAFETY: barriers have no memory-safety implications.
    unsafe { core::arch::asm!("dsb", "isb", options(nostack, preserves_flags)) };
}

/// Sleeps until the next interrupt.
pub fn wait_for_interrupt() {
    // SAFETY: WFI only pauses the core.
    unsafe { core::arch::asm!("wfi", options(nomem, nostack, preserves_flags)) };
}

/// Runs `f` with every secure and non-secure interrupt masked (PRIMASK_S), restoring the previous
/// mask afterwards. Faults are not masked. With the `measure` feature (bench builds only), the
/// outermost section's duration feeds [`masked_max_cycles`].
pub fn critical<R>(f: impl FnOnce() -> R) -> R {
    let primask: u32;
    // SAFETY: saves PRIMASK and masks interrupts; restored below.
    unsafe { core::arch::asm!("mrs {p}, primask", "cpsid i", p = out(reg) primask, options(nostack, preserves_flags)) };
    #[cfg(feature = "measure")]
    let start = clock_raw();
    let r = f();
    if primask & 1 == 0 {
        #[cfg(feature = "measure")]
        {
            // The time base counts down: elapsed = start - now (wrapping).
            let masked = start.wrapping_sub(clock_raw());
            if masked > MASKED_MAX.load(Ordering::Relaxed) {
                MASKED_MAX.store(masked, Ordering::Relaxed);
            }
        }
        // SAFETY: interrupts were enabled on entry.
        unsafe { core::arch::asm!("cpsie i", options(nostack, preserves_flags)) };
    }
    r
}

/// Longest time interrupts were masked by [`critical`] (outermost sections only; updated with
/// interrupts still masked, so a plain load and store suffice on this single core).
#[cfg(feature = "measure")]
static MASKED_MAX: AtomicU32 = AtomicU32::new(0);

/// The longest stretch, in time-base cycles ([`SYSCLK_HZ`]), that [`critical`] kept interrupts
/// masked since boot (`measure` builds only).
#[cfg(feature = "measure")]
pub fn masked_max_cycles() -> u32 {
    MASKED_MAX.load(Ordering::Relaxed)
}

/// Resets the whole system (visor included).
pub fn system_reset() -> ! {
    barrier();
    wr(SCB_AIRCR, 0x05FA_0000 | (1 << 14) | (1 << 3) | (1 << 2)); // keep PRIS/SYSRESETREQS, SYSRESETREQ
    barrier();
    loop {
        wait_for_interrupt();
    }
}

/// Test-target queries (TT instructions) for the app's view of an address.
pub mod tt {
    /// TTA: security attribution and the non-secure MPU's privileged permissions.
    pub fn tta(addr: u32) -> u32 {
        let r: u32;
        // SAFETY: TT instructions only query attribution; they never access memory.
        unsafe {
            core::arch::asm!("tta {r}, {a}", r = out(reg) r, a = in(reg) addr, options(nomem, nostack, preserves_flags))
        };
        r
    }
    /// TTAT: as [`tta`] with the non-secure MPU's unprivileged permissions.
    pub fn ttat(addr: u32) -> u32 {
        let r: u32;
        // SAFETY: as above.
        unsafe {
            core::arch::asm!("ttat {r}, {a}", r = out(reg) r, a = in(reg) addr, options(nomem, nostack, preserves_flags))
        };
        r
    }
}

/// RAM that survives a warm (system) reset: the tail of SSRAM-2, outside every ELF segment (QEMU
/// re-copies ELF segments on reset) and unused by the visor's linker script.
const WARM_RAM: usize = 0x383F_0000;
/// Size of the warm RAM area.
pub const WARM_RAM_LEN: usize = 256;

/// Reads the warm RAM area.
pub fn warm_read() -> [u8; WARM_RAM_LEN] {
    let mut b = [0u8; WARM_RAM_LEN];
    // SAFETY: a fixed secure SRAM area reserved for this purpose (see `WARM_RAM`).
    unsafe { core::ptr::copy_nonoverlapping(WARM_RAM as *const u8, b.as_mut_ptr(), WARM_RAM_LEN) };
    b
}

/// Writes the warm RAM area.
pub fn warm_write(b: &[u8; WARM_RAM_LEN]) {
    // SAFETY: as for `warm_read`.
    unsafe { core::ptr::copy_nonoverlapping(b.as_ptr(), WARM_RAM as *mut u8, WARM_RAM_LEN) };
}

/// The flash medium: the file-backed `mps.ram` region, with raw access only. `keel_flash::Nor`
/// puts the NOR rules on top.
pub struct FlashMedium;

impl keel_flash::Medium for FlashMedium {
    fn capacity(&self) -> u32 {
        keel_flash::layout::FLASH_SIZE
    }
    fn read(&self, offset: u32, buf: &mut [u8]) {
        // SAFETY: `Nor` checks `offset + buf.len() <= capacity`; the region is secure memory owned
        // by the visor and never aliased by a Rust reference.
        unsafe {
            core::ptr::copy_nonoverlapping((FLASH_BASE + offset) as *const u8, buf.as_mut_ptr(), buf.len());
        }
    }
    fn write(&mut self, offset: u32, data: &[u8]) -> Result<(), keel_flash::Fault> {
        // SAFETY: as for `read`.
        unsafe {
            core::ptr::copy_nonoverlapping(data.as_ptr(), (FLASH_BASE + offset) as *mut u8, data.len());
        }
        Ok(())
    }
}

/// Reads `len` bytes of flash directly (memory mapped), for hashing without a copy.
pub fn flash_slice(offset: u32, len: u32) -> &'static [u8] {
    assert!(offset.checked_add(len).is_some_and(|e| e <= keel_flash::layout::FLASH_SIZE));
    // SAFETY: in bounds (asserted); flash is only written through `FlashMedium`, never while a
    // slice from here is alive (the visor is single threaded at the points it hashes).
    unsafe { core::slice::from_raw_parts((FLASH_BASE + offset) as *const u8, len as usize) }
}

/// What the board-independent visor needs from a board: time base and alarm, flash, network
/// controller, interrupt numbers, and the security setup. The visor reaches the board through
/// [`This`]; a port (STM32U585 next) implements this trait for its chip, provides its memory map
/// constants and linker script, and the rest of the visor — the device core, system calls, fault
/// handling, the network adapter — stays as it is. The core registers every Armv8-M chip has
/// (SCB, SAU, NVIC, the non-secure aliases, TT) remain free functions of this module.
pub trait Board {
    /// The board's name, for the boot banner.
    const NAME: &'static str;
    /// Frequency of the time base (Hz).
    const SYSCLK_HZ: u32;
    /// Interrupt number of the alarm timer.
    const ALARM_IRQ: u32;
    /// Longest alarm delay, in time-base cycles.
    const ALARM_MAX_CYCLES: u32;
    /// Interrupt number of the network controller.
    const NET_IRQ: u32;
    /// The flash the journal, the slots and the factory data live in.
    type Flash: keel_flash::Medium;
    /// The network controller.
    type Nic: NicDevice;

    /// Starts the free-running time base.
    fn start_clock();
    /// Time-base cycles (wrapping 32-bit counter).
    fn clock_cycles() -> u32;
    /// Prepares the alarm timer and its interrupt.
    fn init_alarm();
    /// Fires the alarm interrupt once after `cycles`.
    fn arm_alarm(cycles: u32);
    /// Acknowledges the alarm interrupt.
    fn ack_alarm();
    /// The flash medium.
    fn flash() -> Self::Flash;
    /// The network controller, if the board has one that answers (handed out once).
    fn nic() -> Option<Self::Nic>;
    /// Enables the network controller's interrupt.
    fn enable_net_irq();
    /// Masks it (its handler does, until the service routine polled the controller).
    fn mask_net_irq();
    /// Unmasks it.
    fn unmask_net_irq();
    /// Configures the SAU, the memory and peripheral protection controllers and the interrupt
    /// targets so the app gets exactly its regions; opens the system-call table
    /// `nsc_start..nsc_end`.
    fn configure_security(nsc_start: u32, nsc_end: u32);
    /// Starts the visor's hardware watchdog: if [`Board::feed_watchdog`] is not called for
    /// [`WATCHDOG_TIMEOUT_MS`], the board raises the NMI (whose handler records why and resets),
    /// and if even that does not run, resets the system.
    fn start_watchdog();
    /// Feeds the hardware watchdog.
    fn feed_watchdog();
}

/// The visor's hardware watchdog period: the service routine feeds it at least every half of it.
pub const WATCHDOG_TIMEOUT_MS: u32 = 4_000;

/// A network controller as the visor drives it: a smoltcp device with its MAC address and its
/// receive interrupt.
pub trait NicDevice: smoltcp::phy::Device {
    /// The controller's MAC address.
    fn mac(&self) -> [u8; 6];
    /// Asserts the interrupt while a received frame waits.
    fn enable_rx_interrupt(&self);
    /// Acknowledges the interrupt (before polling the stack).
    fn ack_interrupt(&self);
}

impl NicDevice for keel_lan9118::Lan9118 {
    fn mac(&self) -> [u8; 6] {
        keel_lan9118::Lan9118::mac(self)
    }
    fn enable_rx_interrupt(&self) {
        keel_lan9118::Lan9118::enable_rx_interrupt(self)
    }
    fn ack_interrupt(&self) {
        keel_lan9118::Lan9118::ack_interrupt(self)
    }
}

/// QEMU's `mps2-an505` (SSE-200, Cortex-M33): the reference board.
pub struct Mps2An505;

impl Board for Mps2An505 {
    const NAME: &'static str = "mps2-an505";
    const SYSCLK_HZ: u32 = SYSCLK_HZ;
    const ALARM_IRQ: u32 = ALARM_IRQ;
    const ALARM_MAX_CYCLES: u32 = ALARM_MAX_CYCLES;
    const NET_IRQ: u32 = NET_IRQ;
    type Flash = FlashMedium;
    type Nic = keel_lan9118::Lan9118;

    fn start_clock() {
        start_clock()
    }
    fn clock_cycles() -> u32 {
        clock_cycles()
    }
    fn init_alarm() {
        init_alarm()
    }
    fn arm_alarm(cycles: u32) {
        arm_alarm(cycles)
    }
    fn ack_alarm() {
        ack_alarm()
    }
    fn flash() -> FlashMedium {
        FlashMedium
    }
    fn nic() -> Option<keel_lan9118::Lan9118> {
        lan9118()
    }
    fn enable_net_irq() {
        enable_net_irq()
    }
    fn mask_net_irq() {
        mask_net_irq()
    }
    fn unmask_net_irq() {
        unmask_net_irq()
    }
    fn configure_security(nsc_start: u32, nsc_end: u32) {
        configure_security(nsc_start, nsc_end)
    }
    fn start_watchdog() {
        start_watchdog()
    }
    fn feed_watchdog() {
        feed_watchdog()
    }
}

/// The board this visor is built for.
pub type This = Mps2An505;
