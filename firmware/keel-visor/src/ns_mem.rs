//! Checked access to the app's (non-secure) memory.
//!
//! Every pointer an app passes to a system call goes through [`check`] before the visor touches
//! it. A range is accepted only if
//! 1. it lies entirely inside the app's RAM or its execution region (an allow-list: peripheral
//!    addresses are refused even when they are non-secure, because a blocked peripheral access
//!    would fault inside the visor), and
//! 2. the TT instruction says both ends are accessible by the app — readable (and writable for
//!    outputs) under its own privilege level and MPU — and lie in the same SAU, IDAU and MPU
//!    region, so every byte in between has the same attributes.
#![allow(unsafe_code)]

use crate::board::{self, tt, APP_EXEC_BASE, APP_EXEC_SIZE, APP_RAM_BASE, APP_RAM_SIZE};

const NSR: u32 = 1 << 20;
const NSRW: u32 = 1 << 21;
const SAME_REGION_MASK: u32 = (1 << 16) | 0xFF | (1 << 17) | (0xFF << 8) | (1 << 23) | (0xFF << 24);

fn inside(start: u32, end_incl: u32, base: u32, size: u32) -> bool {
    start >= base && end_incl <= base + (size - 1)
}

/// True if the app may access `len` bytes at `ptr` (for writing if `write`).
pub fn check(ptr: u32, len: u32, write: bool) -> bool {
    if len == 0 {
        return true;
    }
    let Some(end) = ptr.checked_add(len - 1) else {
        return false;
    };
    if !inside(ptr, end, APP_RAM_BASE, APP_RAM_SIZE) && !inside(ptr, end, APP_EXEC_BASE, APP_EXEC_SIZE) {
        return false;
    }
    // Called from the app's thread mode: use its privilege level; from its handlers: privileged.
    let unprivileged = board::ipsr() == 0 && board::control_ns() & 1 != 0;
    let q = |a| {
        if unprivileged {
            tt::ttat(a)
        } else {
            tt::tta(a)
        }
    };
    let (a, b) = (q(ptr), q(end));
    let need = if write { NSRW } else { NSR };
    a & need != 0 && b & need != 0 && (a & SAME_REGION_MASK) == (b & SAME_REGION_MASK)
}

/// Copies `buf.len()` bytes from app memory at `ptr`. The caller has called [`check`].
pub fn read_into(ptr: u32, buf: &mut [u8]) {
    // SAFETY: `check(ptr, len, false)` succeeded, so the range is mapped non-secure app memory
    // that the app may read; reading it from the secure side issues non-secure transactions.
    unsafe { core::ptr::copy_nonoverlapping(ptr as *const u8, buf.as_mut_ptr(), buf.len()) }
}

/// Copies `data` to app memory at `ptr`. The caller has called [`check`] with `write`.
pub fn write_from(ptr: u32, data: &[u8]) {
    // SAFETY: `check(ptr, len, true)` succeeded, so the range is app memory the app may write;
    // it never aliases visor memory.
    unsafe { core::ptr::copy_nonoverlapping(data.as_ptr(), ptr as *mut u8, data.len()) }
}

/// Reads a little-endian word from app memory if readable.
pub fn read_u32(ptr: u32) -> Option<u32> {
    if !check(ptr, 4, false) {
        return None;
    }
    let mut b = [0u8; 4];
    read_into(ptr, &mut b);
    Some(u32::from_le_bytes(b))
}

/// Writes a word to app memory without an access check. Only for the visor's own setup of the
/// app's initial stack frame, at addresses it derived and validated itself.
pub fn write_u32_trusted(addr: u32, v: u32) {
    // SAFETY: callers pass addresses inside the app RAM they validated; unaligned is allowed.
    unsafe { core::ptr::write_volatile(addr as *mut u32, v) }
}

/// Copies bytes into the app execution region (image loading). `dst..dst+len` must be inside it.
pub fn load_into_exec(offset: u32, data: &[u8]) {
    assert!(offset.checked_add(data.len() as u32).is_some_and(|e| e <= APP_EXEC_SIZE));
    // SAFETY: in bounds of the execution region (asserted), which the visor owns while the app is
    // stopped; the address is the non-secure alias, allowed by MPC0.
    unsafe { core::ptr::copy_nonoverlapping(data.as_ptr(), (APP_EXEC_BASE + offset) as *mut u8, data.len()) }
}

/// The app execution region as bytes (for hashing the loaded image).
pub fn exec_region(len: u32) -> &'static [u8] {
    assert!(len <= APP_EXEC_SIZE);
    // SAFETY: in bounds; read only while the app is stopped, so nothing mutates it meanwhile.
    unsafe { core::slice::from_raw_parts(APP_EXEC_BASE as *const u8, len as usize) }
}
