//! Crash capture: what the visor learns from an exception that caught the app.
//!
//! The visor's fault handler and its watchdog kill both start from the exception's EXC_RETURN
//! value ([`ExcReturn`]), the exception number ([`fault_kind_from_ipsr`]), the fault status
//! registers ([`FaultStatus`]) and the app's two stack pointers ([`NsStacks`]). From these,
//! [`crash_report`] finds the exception frame the core pushed for the app, reads it and the top of
//! the app's stack through a memory-reading closure, and fills a [`CrashReport`]. The closure is
//! the visor's access-checked read of app memory, so a report built from a hostile stack pointer
//! only ever reads what the app itself may read; here it is a plain function of its inputs,
//! tested on the host.

use keel_abi::{CrashReport, FaultKind};

/// An EXC_RETURN value (Armv8-M): the `LR` an exception handler sees on entry, which says where
/// the interrupted context was and how its exception frame looks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExcReturn(pub u32);

impl ExcReturn {
    /// Bit 0, ES: the exception was taken to the secure state.
    pub fn taken_to_secure(self) -> bool {
        self.0 & (1 << 0) != 0
    }

    /// Bit 2, SPSEL: the interrupted context used the process stack (PSP); otherwise the main
    /// stack (MSP) of its security state.
    pub fn uses_psp(self) -> bool {
        self.0 & (1 << 2) != 0
    }

    /// Bit 3, Mode: the interrupted context was in thread mode; otherwise it was itself an
    /// exception handler.
    pub fn thread_mode(self) -> bool {
        self.0 & (1 << 3) != 0
    }

    /// Bit 4, FType: the frame is the standard one (no floating-point state); otherwise it is
    /// the extended frame with s0-s15 and FPSCR.
    pub fn standard_frame(self) -> bool {
        self.0 & (1 << 4) != 0
    }

    /// Bit 5, DCRS: the default callee-register stacking rules applied, i.e. r4-r11 were *not*
    /// pushed below the frame (they are pushed only when a secure context is interrupted by a
    /// non-secure exception).
    pub fn dcrs(self) -> bool {
        self.0 & (1 << 5) != 0
    }

    /// Bit 6, S: the frame is on a secure stack, i.e. the interrupted context was secure (the
    /// visor itself, or a system call running in the secure thread); otherwise it was the app.
    pub fn secure_frame(self) -> bool {
        self.0 & (1 << 6) != 0
    }

    /// Bytes the core pushed on the interrupted context's stack, up to and including the basic
    /// frame (r0-r3, r12, lr, pc, xPSR) and, for an extended frame, s0-s15, FPSCR and a reserved
    /// word. The 4-byte realignment pad (xPSR bit 9) comes on top.
    pub fn stacked_bytes(self) -> u32 {
        self.frame_offset() + if self.standard_frame() { 32 } else { 104 }
    }

    /// Offset of the basic frame from the stack pointer: the additional state context (the
    /// integrity signature, a reserved word and r4-r11) lies below it when [`ExcReturn::dcrs`]
    /// is clear.
    pub fn frame_offset(self) -> u32 {
        if self.dcrs() {
            0
        } else {
            40
        }
    }
}

/// The fault that an exception number (IPSR) stands for. Exceptions other than the
/// configurable faults are reported as a HardFault (the one every escalation ends in).
pub fn fault_kind_from_ipsr(ipsr: u32) -> FaultKind {
    match ipsr & 0x1FF {
        4 => FaultKind::MemManage,
        5 => FaultKind::BusFault,
        6 => FaultKind::UsageFault,
        7 => FaultKind::SecureFault,
        _ => FaultKind::HardFault,
    }
}

/// The fault status and address registers at the time of the crash.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultStatus {
    /// CFSR (both banks OR-ed together for an app fault; see [`CrashReport::cfsr`]).
    pub cfsr: u32,
    /// HFSR.
    pub hfsr: u32,
    /// SFSR.
    pub sfsr: u32,
    /// SFAR.
    pub sfar: u32,
    /// BFAR.
    pub bfar: u32,
    /// MMFAR.
    pub mmfar: u32,
}

/// The app's (non-secure) stack pointers when the exception was taken.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NsStacks {
    /// MSP_NS.
    pub msp: u32,
    /// PSP_NS.
    pub psp: u32,
}

/// xPSR bit 9: the core inserted a 4-byte pad above the frame to align the stack to 8 bytes.
const XPSR_REALIGNED: u32 = 1 << 9;
/// Words of the basic exception frame.
const FRAME_WORDS: u32 = 8;

/// Builds the crash report of the app from what the exception left behind.
///
/// If the frame is on the app's stack (not [`ExcReturn::secure_frame`]: the app itself was
/// interrupted, not a system call in the secure thread), the stack is the one
/// [`ExcReturn::uses_psp`] selects. The frame is captured only if every word of it is readable
/// through `read` (which returns `None` for an address the app may not read); then the report's
/// `sp` is the app's stack pointer before the exception (above the frame and any realignment
/// pad) and `stack` holds the words from there (0 where unreadable). If the frame is unreadable,
/// `sp` is the raw stack pointer and frame and stack stay 0. With a secure frame, nothing of the
/// app's stack is read.
pub fn crash_report(
    kind: FaultKind,
    exc_return: ExcReturn,
    time_us: u64,
    status: FaultStatus,
    stacks: NsStacks,
    mut read: impl FnMut(u32) -> Option<u32>,
) -> CrashReport {
    let mut r = CrashReport {
        version: 1,
        kind: kind as u32,
        time_us,
        exc_return: exc_return.0,
        cfsr: status.cfsr,
        hfsr: status.hfsr,
        sfsr: status.sfsr,
        sfar: status.sfar,
        bfar: status.bfar,
        mmfar: status.mmfar,
        ..Default::default()
    };
    if exc_return.secure_frame() {
        return r;
    }
    let sp = if exc_return.uses_psp() { stacks.psp } else { stacks.msp };
    r.sp = sp;
    let Some(frame_at) = sp.checked_add(exc_return.frame_offset()) else {
        return r;
    };
    let mut frame = [0u32; FRAME_WORDS as usize];
    for (i, w) in frame.iter_mut().enumerate() {
        match frame_at.checked_add(4 * i as u32).and_then(&mut read) {
            Some(v) => *w = v,
            None => return r,
        }
    }
    r.frame = frame;
    let pad = if frame[7] & XPSR_REALIGNED != 0 { 4 } else { 0 };
    r.sp = sp.wrapping_add(exc_return.stacked_bytes() + pad);
    for (i, w) in r.stack.iter_mut().enumerate() {
        *w = r.sp.checked_add(4 * i as u32).and_then(&mut read).unwrap_or(0);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    /// App thread mode on MSP_NS, standard frame, taken to the secure state.
    const APP_THREAD_MSP: ExcReturn = ExcReturn(0xFFFF_FFB9);
    /// As above on PSP_NS.
    const APP_THREAD_PSP: ExcReturn = ExcReturn(0xFFFF_FFBD);
    /// App handler mode (MSP_NS).
    const APP_HANDLER: ExcReturn = ExcReturn(0xFFFF_FFB1);
    /// The secure thread (a system call or the idle loop) on PSP_S.
    const SECURE_THREAD: ExcReturn = ExcReturn(0xFFFF_FFFD);

    /// App memory from `base`: word i holds `base + 4 * i` unless listed in `holes`.
    struct Mem {
        base: u32,
        words: usize,
        holes: &'static [u32],
    }

    impl Mem {
        fn read(&self, a: u32) -> Option<u32> {
            let inside = a >= self.base && a < self.base + 4 * self.words as u32 && a % 4 == 0;
            (inside && !self.holes.contains(&a)).then_some(a ^ 0x5A00_0000)
        }
    }

    fn frame_with_xpsr(mem_base: u32, xpsr: u32) -> impl FnMut(u32) -> Option<u32> {
        let mem = Mem { base: mem_base, words: 64, holes: &[] };
        move |a| if a == mem_base + 28 { Some(xpsr) } else { mem.read(a) }
    }

    #[test]
    fn exc_return_predicates_name_the_architectural_bits() {
        assert!(APP_THREAD_MSP.thread_mode() && !APP_THREAD_MSP.uses_psp() && !APP_THREAD_MSP.secure_frame());
        assert!(APP_THREAD_MSP.standard_frame() && APP_THREAD_MSP.dcrs() && APP_THREAD_MSP.taken_to_secure());
        assert!(APP_THREAD_PSP.uses_psp());
        assert!(!APP_HANDLER.thread_mode());
        assert!(SECURE_THREAD.secure_frame() && SECURE_THREAD.uses_psp() && SECURE_THREAD.thread_mode());
        assert!(!ExcReturn(0xFFFF_FFA9).standard_frame());
        assert!(!ExcReturn(0xFFFF_FF99).dcrs());
        assert!(!ExcReturn(0xFFFF_FFB8).taken_to_secure());
    }

    #[test]
    fn the_frame_size_follows_ftype_and_dcrs() {
        assert_eq!(APP_THREAD_MSP.stacked_bytes(), 32);
        assert_eq!(ExcReturn(0xFFFF_FFA9).stacked_bytes(), 104);
        assert_eq!(ExcReturn(0xFFFF_FF99).frame_offset(), 40);
        assert_eq!(ExcReturn(0xFFFF_FF99).stacked_bytes(), 72);
    }

    #[test]
    fn ipsr_maps_configurable_faults_and_everything_else_to_hardfault() {
        assert_eq!(fault_kind_from_ipsr(3), FaultKind::HardFault);
        assert_eq!(fault_kind_from_ipsr(4), FaultKind::MemManage);
        assert_eq!(fault_kind_from_ipsr(5), FaultKind::BusFault);
        assert_eq!(fault_kind_from_ipsr(6), FaultKind::UsageFault);
        assert_eq!(fault_kind_from_ipsr(7), FaultKind::SecureFault);
        assert_eq!(fault_kind_from_ipsr(2), FaultKind::HardFault);
        assert_eq!(fault_kind_from_ipsr(0x200 | 5), FaultKind::BusFault, "only the exception-number bits count");
    }

    #[test]
    fn a_report_copies_kind_time_exc_return_and_fault_registers() {
        let status = FaultStatus { cfsr: 1, hfsr: 2, sfsr: 3, sfar: 4, bfar: 5, mmfar: 6 };
        let r = crash_report(FaultKind::BusFault, SECURE_THREAD, 77, status, NsStacks::default(), |_| None);
        assert_eq!((r.version, r.kind, r.time_us, r.exc_return), (1, FaultKind::BusFault as u32, 77, 0xFFFF_FFFD));
        assert_eq!((r.cfsr, r.hfsr, r.sfsr, r.sfar, r.bfar, r.mmfar), (1, 2, 3, 4, 5, 6));
    }

    #[test]
    fn a_secure_frame_reads_nothing_of_the_app() {
        let stacks = NsStacks { msp: 0x2800_1000, psp: 0x2800_2000 };
        let r = crash_report(FaultKind::Watchdog, SECURE_THREAD, 0, FaultStatus::default(), stacks, |a| {
            panic!("read {a:#x}")
        });
        assert_eq!((r.sp, r.frame, r.stack), (0, [0; 8], [0; 8]));
    }

    #[test]
    fn the_frame_is_read_from_the_stack_spsel_selects() {
        let mem = Mem { base: 0x2800_2000, words: 64, holes: &[] };
        let stacks = NsStacks { msp: 0x2800_1000, psp: 0x2800_2000 };
        let r = crash_report(FaultKind::HardFault, APP_THREAD_PSP, 0, FaultStatus::default(), stacks, |a| mem.read(a));
        assert_eq!(r.frame[0], 0x2800_2000 ^ 0x5A00_0000);
        assert_eq!(r.pc(), 0x2800_2018 ^ 0x5A00_0000);
        assert_eq!(r.lr(), 0x2800_2014 ^ 0x5A00_0000);
        // With MSP selected, the same memory is not where the frame is.
        let r = crash_report(FaultKind::HardFault, APP_THREAD_MSP, 0, FaultStatus::default(), stacks, |a| mem.read(a));
        assert_eq!((r.sp, r.frame), (0x2800_1000, [0; 8]));
    }

    #[test]
    fn sp_is_above_the_frame_and_the_stack_words_follow_it() {
        let stacks = NsStacks { msp: 0x2800_0100, psp: 0 };
        let r = crash_report(
            FaultKind::HardFault,
            APP_THREAD_MSP,
            0,
            FaultStatus::default(),
            stacks,
            frame_with_xpsr(0x2800_0100, 0x0100_0000),
        );
        assert_eq!(r.sp, 0x2800_0120);
        assert_eq!(r.frame[7], 0x0100_0000);
        for (i, w) in r.stack.iter().enumerate() {
            assert_eq!(*w, (0x2800_0120 + 4 * i as u32) ^ 0x5A00_0000);
        }
    }

    #[test]
    fn the_realignment_bit_of_xpsr_adds_the_pad_word() {
        let stacks = NsStacks { msp: 0x2800_0104, psp: 0 };
        let r = crash_report(
            FaultKind::HardFault,
            APP_THREAD_MSP,
            0,
            FaultStatus::default(),
            stacks,
            frame_with_xpsr(0x2800_0104, 0x0100_0200),
        );
        assert_eq!(r.sp, 0x2800_0104 + 32 + 4);
        assert_eq!(r.stack[0], 0x2800_0128 ^ 0x5A00_0000);
    }

    #[test]
    fn an_extended_frame_puts_sp_above_the_floating_point_state() {
        let stacks = NsStacks { msp: 0x2800_0100, psp: 0 };
        let r = crash_report(
            FaultKind::HardFault,
            ExcReturn(0xFFFF_FFA9),
            0,
            FaultStatus::default(),
            stacks,
            frame_with_xpsr(0x2800_0100, 0x0100_0000),
        );
        assert_eq!(r.sp, 0x2800_0100 + 104);
    }

    #[test]
    fn an_unreadable_frame_leaves_the_raw_sp_and_no_words() {
        let stacks = NsStacks { msp: 0x1000_0000, psp: 0 };
        let r = crash_report(FaultKind::HardFault, APP_THREAD_MSP, 0, FaultStatus::default(), stacks, |_| None);
        assert_eq!((r.sp, r.frame, r.stack), (0x1000_0000, [0; 8], [0; 8]));
        // One unreadable word anywhere in the frame is enough to refuse the whole frame.
        let mem = Mem { base: 0x2800_0000, words: 64, holes: &[0x2800_0010] };
        let stacks = NsStacks { msp: 0x2800_0000, psp: 0 };
        let r = crash_report(FaultKind::HardFault, APP_THREAD_MSP, 0, FaultStatus::default(), stacks, |a| mem.read(a));
        assert_eq!((r.sp, r.frame), (0x2800_0000, [0; 8]));
    }

    #[test]
    fn unreadable_stack_words_read_as_zero() {
        // Memory ends 2 words above the frame.
        let mem = Mem { base: 0x2800_0000, words: 10, holes: &[] };
        let stacks = NsStacks { msp: 0x2800_0000, psp: 0 };
        let r = crash_report(FaultKind::HardFault, APP_THREAD_MSP, 0, FaultStatus::default(), stacks, |a| {
            if a == 0x2800_001C {
                Some(0x0100_0000)
            } else {
                mem.read(a)
            }
        });
        assert_eq!(r.sp, 0x2800_0020);
        assert_ne!(r.stack[1], 0);
        assert_eq!(&r.stack[2..], &[0; 6]);
    }

    #[test]
    fn a_stack_pointer_at_the_top_of_the_address_space_does_not_wrap_into_reads() {
        let stacks = NsStacks { msp: 0xFFFF_FFF0, psp: 0 };
        let mut reads = 0;
        let r = crash_report(FaultKind::HardFault, APP_THREAD_MSP, 0, FaultStatus::default(), stacks, |a| {
            reads += 1;
            assert!(a >= 0xFFFF_FFF0, "wrapped to {a:#x}");
            Some(0)
        });
        assert_eq!((r.sp, r.frame), (0xFFFF_FFF0, [0; 8]));
        assert_eq!(reads, 4);
    }
}
