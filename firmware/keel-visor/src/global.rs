//! State shared between the visor's execution contexts.
#![allow(unsafe_code)]

use core::cell::RefCell;

use crate::board;

/// A value shared between the visor's execution contexts: system calls (the secure thread,
/// entered from the app's thread mode or from its handlers), PendSV (the service routine), the
/// TIMER0 alarm interrupt, the LAN9118 interrupt, and the fault handlers. Access happens inside
/// [`board::critical`] (interrupts masked), or from the service routine by priority
/// ([`Global::with_in_service`]); a re-entrant access (a visor bug) panics instead of aliasing,
/// and the visor's panic handler resets the system.
pub struct Global<T>(RefCell<T>);

// SAFETY: the visor runs on a single core. Every access to the inner RefCell happens either with
// interrupts masked (`with`, via `board::critical`), so no context can interleave inside it, or
// from the service routine (`with_in_service`, checked by IPSR), which no context that touches a
// `Global` value can preempt: system calls run below PendSV and cannot be entered while it runs,
// and the alarm and NIC interrupts, which can, never touch the values the service routine
// borrows (they only pend it); the borrow flag turns any mistake into a panic, not aliasing.
// `T: Send` because the value is handed from one context to another. Faults, which PRIMASK does
// not mask, can interrupt a borrow only if visor code faults; the fault handler then only logs
// (the log line reads the clock, a `Global`) and resets.
unsafe impl<T: Send> Sync for Global<T> {}

impl<T> Global<T> {
    /// Wraps a value.
    pub const fn new(v: T) -> Self {
        Global(RefCell::new(v))
    }

    /// Runs `f` with exclusive access.
    pub fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        board::critical(|| f(&mut self.0.borrow_mut()))
    }

    /// Runs `f` with exclusive access from the service routine (PendSV), **without** masking
    /// interrupts, so the alarm and the NIC interrupt keep their latency while the service
    /// routine does long work (a signature check, an image hash, a flash page).
    ///
    /// Exclusion holds by priority: the other contexts that touch a `Global` either cannot
    /// preempt the service routine (system calls run below it, and take [`Global::with`], which
    /// it cannot preempt either) or do not touch this value (the alarm and NIC interrupts only
    /// wake the service routine; a fault during it is a visor fault, which logs and resets).
    /// Called outside PendSV this panics, and the `RefCell` still turns any re-entrance into a
    /// panic rather than aliasing.
    pub fn with_in_service<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        assert_eq!(board::ipsr(), board::SERVICE_EXCEPTION, "with_in_service outside the service routine");
        f(&mut self.0.borrow_mut())
    }
}
