//! Remote debugging, the board half: holding the app halted while the visor runs on, and the
//! app's registers and memory as the device core's debug agent reaches them
//! ([`keel_device::DebugTarget`]).
//!
//! **Halting.** The app is halted from a visor exception that interrupted it in thread mode (a
//! `bkpt` caught as a HardFault, or the service routine serving a halt request): its exception
//! frame stays on its own stack, r4-r11 (which the core does not stack when a secure exception
//! interrupts non-secure code) are copied from the trampoline's frame into [`Halted`], and the
//! exception returns into a fresh secure idle thread with every app exception masked. The
//! network, the log ring and the update agent keep running from their interrupts and the
//! service routine. **Resuming** writes r4-r11 and the app's EXC_RETURN back into the
//! trampoline frame of the service routine, which then returns into the app exactly where it
//! stopped.
//!
//! An app inside one of its own exception handlers is not halted (returning to the idle thread
//! would leave its exception active): a halt request waits until the app is back in thread
//! mode, and a breakpoint hit in a handler is taken out and the handler continues.

use keel_abi::CrashReport;
use keel_debug::wire::{Status, NREGS};
use keel_device::DebugTarget;
use keel_supervisor::ExcReturn;

use crate::board::{self, APP_EXEC_BASE, APP_EXEC_SIZE};
use crate::ns_mem::{self, Awake, Read, Write};

/// A halted app: where its context is.
pub struct Halted {
    /// The EXC_RETURN that resumes it.
    pub exc_return: u32,
    /// Its exception frame (r0-r3, r12, lr, pc, xPSR) on its stack.
    pub frame: u32,
    /// r4-r11.
    pub callee: [u32; 8],
    /// It stopped on a fault: resuming records the crash and restarts it.
    pub fault: Option<CrashReport>,
}

impl Halted {
    /// The app's context as the exception that interrupted it left it: `sp` is the trampoline's
    /// frame. `None` unless it was interrupted in thread mode with its frame on its own stack.
    pub fn capture(exc_return: u32, sp: u32) -> Option<Halted> {
        let exc = ExcReturn(exc_return);
        // DCRS = 0 (callee registers stacked below the frame) never happens for an exception
        // taken from the app; a forged return could claim it, so such a context is not halted.
        if exc.secure_frame() || !exc.thread_mode() || !exc.dcrs() || board::ns_exception_active() {
            return None;
        }
        let (msp, psp) = board::ns_stack_pointers();
        let frame = if exc.uses_psp() { psp } else { msp };
        Some(Halted { exc_return, frame, callee: crate::rt::trampoline_callee_regs(sp), fault: None })
    }
}

/// Frame words: r0-r3, r12, lr, pc, xPSR.
const FRAME_R12: u32 = 4;
const FRAME_LR: u32 = 5;
const FRAME_PC: u32 = 6;
const FRAME_XPSR: u32 = 7;
/// xPSR bits the debugger may change: N, Z, C, V, Q and GE.
const XPSR_WRITABLE: u32 = 0xF80F_0000;

/// The app as the debug agent reaches it, for one service-routine pass.
pub struct AppTarget<'a> {
    /// The halted app, if it is.
    pub halted: Option<&'a mut Halted>,
    /// The witness for memory checks.
    pub awake: Awake,
}

impl AppTarget<'_> {
    fn frame_word(&self, i: u32) -> Option<u32> {
        let h = self.halted.as_ref()?;
        ns_mem::read_u32(&self.awake, h.frame.wrapping_add(4 * i))
    }

    fn set_frame_word(&mut self, i: u32, v: u32) -> Result<(), Status> {
        let h = self.halted.as_ref().ok_or(Status::NotHalted)?;
        let r = ns_mem::check::<Write>(&self.awake, h.frame.wrapping_add(4 * i), 4).ok_or(Status::Denied)?;
        r.write_from(&v.to_le_bytes());
        Ok(())
    }
}

impl DebugTarget for AppTarget<'_> {
    fn regs(&self) -> [u32; NREGS] {
        let mut r = [0u32; NREGS];
        let Some(h) = self.halted.as_ref() else { return r };
        let w = |i| self.frame_word(i).unwrap_or(0);
        r[..4].copy_from_slice(&[w(0), w(1), w(2), w(3)]);
        r[4..12].copy_from_slice(&h.callee);
        r[12] = w(FRAME_R12);
        r[14] = w(FRAME_LR);
        r[15] = w(FRAME_PC);
        let xpsr = w(FRAME_XPSR);
        r[16] = xpsr;
        // The app's stack pointer before the exception: above the frame and the alignment pad.
        let exc = ExcReturn(h.exc_return);
        // (The app chose its stack pointer: wrap, never overflow.)
        let pad = if xpsr & (1 << 9) != 0 { 4 } else { 0 };
        let sp = h.frame.wrapping_add(exc.stacked_bytes()).wrapping_add(pad);
        r[13] = sp;
        let (msp, psp) = board::ns_stack_pointers();
        r[17] = if exc.uses_psp() { msp } else { sp };
        r[18] = if exc.uses_psp() { sp } else { psp };
        let [primask, basepri, faultmask] = board::ns_masks();
        r[19] = primask;
        r[20] = basepri;
        r[21] = faultmask;
        r[22] = board::control_ns();
        r
    }

    fn write_reg(&mut self, n: usize, value: u32) -> Result<(), Status> {
        match n {
            0..=3 => self.set_frame_word(n as u32, value),
            4..=11 => {
                let h = self.halted.as_mut().ok_or(Status::NotHalted)?;
                h.callee[n - 4] = value;
                Ok(())
            }
            12 => self.set_frame_word(FRAME_R12, value),
            14 => self.set_frame_word(FRAME_LR, value),
            // The PC must stay a halfword address in the app's code.
            15 if value & !1 >= APP_EXEC_BASE && value & !1 < APP_EXEC_BASE + APP_EXEC_SIZE => {
                self.set_frame_word(FRAME_PC, value & !1)
            }
            16 => {
                let old = self.frame_word(FRAME_XPSR).ok_or(Status::Denied)?;
                self.set_frame_word(FRAME_XPSR, (old & !XPSR_WRITABLE) | (value & XPSR_WRITABLE))
            }
            // Stack pointers (the frame would have to move), masks and CONTROL: not from here.
            _ => Err(Status::BadArgument),
        }
    }

    fn read(&self, addr: u32, buf: &mut [u8]) -> Result<(), Status> {
        let r = ns_mem::check::<Read>(&self.awake, addr, buf.len() as u32).ok_or(Status::Denied)?;
        r.read_into(buf);
        Ok(())
    }

    fn write(&mut self, addr: u32, data: &[u8]) -> Result<(), Status> {
        if ns_mem::patch_exec(addr, data) {
            return Ok(());
        }
        let r = ns_mem::check::<Write>(&self.awake, addr, data.len() as u32).ok_or(Status::Denied)?;
        r.write_from(data);
        Ok(())
    }
}

/// The `bkpt` immediate if the app's instruction at `pc` is a `bkpt`.
pub fn bkpt_at(pc: u32) -> Option<u32> {
    let awake = Awake::new();
    let r = ns_mem::check::<Read>(&awake, pc & !1, 2)?;
    let mut b = [0u8; 2];
    r.read_into(&mut b);
    let insn = u16::from_le_bytes(b);
    (insn & 0xFF00 == 0xBE00).then_some((insn & 0xFF) as u32)
}
