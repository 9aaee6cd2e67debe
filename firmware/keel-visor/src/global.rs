//! Shared visor state, accessed from exception handlers and system calls.
#![allow(unsafe_code)]

use core::cell::RefCell;

use crate::board;

/// A value shared between the visor's execution contexts (thread-mode system calls, SysTick,
/// PendSV, fault handlers). Access happens inside [`board::critical`]; re-entrant access (a visor
/// bug) panics instead of aliasing.
pub struct Global<T>(RefCell<T>);

// SAFETY: the visor runs on a single core; every access to the inner RefCell happens with
// interrupts masked (`board::critical`), so no two contexts can interleave inside `with`. Faults,
// which PRIMASK does not mask, only touch the state when they come from the app, i.e. never while
// visor code holds a borrow.
unsafe impl<T> Sync for Global<T> {}

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
