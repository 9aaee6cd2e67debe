//! State shared between the visor's execution contexts.
#![allow(unsafe_code)]

use core::cell::RefCell;

use crate::board;

/// A value shared between the visor's execution contexts, which exclude each other **by
/// priority**, never by masking every interrupt:
/// * system calls run with BASEPRI_S at the service routine's priority (set by the entry shim),
///   so neither the service routine nor any app code can run during one;
/// * the service routine (PendSV) cannot be preempted by a system call (they are below it) or by
///   the app; [`Global::with_in_service`] checks it runs there;
/// * the alarm and network interrupts (above both) never touch a `Global`: they only pend the
///   service routine;
/// * the fault handlers take the state only for a fault of the app, which runs only while no
///   visor context holds a borrow (a borrow begins after the entry shim masked the app and ends
///   before it unmasks); a fault of the visor itself only reads it with [`Global::try_with`];
/// * the boot takes it before any interrupt is enabled.
///
/// A re-entrant access (a visor bug) panics instead of aliasing, and the visor's panic handler
/// resets the system.
pub struct Global<T>(RefCell<T>);

// SAFETY: the visor runs on a single core, and the contexts that access the inner RefCell
// exclude each other by exception priority as listed above, so no access interleaves with
// another; the borrow flag turns any mistake into a panic, not aliasing. `T: Send` because the
// value is handed from one context to another.
unsafe impl<T: Send> Sync for Global<T> {}

impl<T> Global<T> {
    /// Wraps a value.
    pub const fn new(v: T) -> Self {
        Global(RefCell::new(v))
    }

    /// Runs `f` with exclusive access: from a system call, a fault handler or the boot (see the
    /// type's documentation). No interrupt is masked: the alarm and network interrupts keep their
    /// latency during long work (a journal write in `update_confirm`).
    pub fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        f(&mut self.0.borrow_mut())
    }

    /// As [`Global::with`], but `None` instead of a panic when the value is borrowed (for the
    /// path that handles a fault of the visor itself, which may have struck during a borrow).
    pub fn try_with<R>(&self, f: impl FnOnce(&mut T) -> R) -> Option<R> {
        self.0.try_borrow_mut().ok().map(|mut v| f(&mut v))
    }

    /// Runs `f` with exclusive access from the service routine (PendSV). Called outside PendSV
    /// this panics.
    pub fn with_in_service<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        assert_eq!(board::ipsr(), board::SERVICE_EXCEPTION, "with_in_service outside the service routine");
        f(&mut self.0.borrow_mut())
    }
}
