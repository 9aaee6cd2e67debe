//! State shared between the visor's execution contexts.
#![allow(unsafe_code)]

use core::cell::RefCell;

use crate::board;

/// A value shared between the visor's execution contexts: system calls (the secure thread,
/// entered from the app's thread mode or from its handlers), PendSV (the service routine), the
/// TIMER0 alarm interrupt, the LAN9118 interrupt, and the fault handlers. Access happens inside
/// [`board::critical`] (interrupts masked); a re-entrant access (a visor bug) panics instead of
/// aliasing, and the visor's panic handler resets the system.
pub struct Global<T>(RefCell<T>);

// SAFETY: the visor runs on a single core, and every access to the inner RefCell happens with
// interrupts masked (`board::critical`), so no two contexts interleave inside `with`; `T: Send`
// because the value is handed from one context to another. Faults, which PRIMASK does not mask,
// can interrupt a borrow only if visor code faults; the fault handler then only logs (the log
// line reads the clock, a `Global`) and resets, and a borrow it finds taken panics (and resets)
// rather than aliasing.
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
}
