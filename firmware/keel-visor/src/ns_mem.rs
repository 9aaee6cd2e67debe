//! Checked access to the app's (non-secure) memory.
//!
//! Every pointer an app passes to a system call goes through [`check`] before the visor touches
//! it, and the copy functions take the proof [`check`] returns ([`NsRange`]), not a pointer. A
//! range is accepted only if
//! 1. it lies entirely inside the app's RAM or its execution region (an allow-list: peripheral
//!    addresses are refused even when they are non-secure, because a blocked peripheral access
//!    would fault inside the visor), and
//! 2. the TT instruction says both ends are accessible by the app — readable (and writable for
//!    outputs) under its own privilege level and MPU — and lie in the same SAU, IDAU and MPU
//!    region, so every byte in between has the same attributes.
//!
//! Part 1 is what keeps the visor safe: the app's RAM and code region are non-secure in the SAU
//! and the MPCs, configured at boot and never changed, so a copy through a checked range neither
//! touches visor memory nor faults. Part 2 honours the app's own privilege model; its handlers
//! can reprogram its MPU whenever they run, so a proof is tied to the [`Awake`] stretch it was
//! taken in (a system call, which no app code can interrupt, or one service-routine pass).
#![allow(unsafe_code)]

use core::marker::PhantomData;

use crate::board::{self, tt, APP_EXEC_BASE, APP_EXEC_SIZE, APP_RAM_BASE, APP_RAM_SIZE};

const NSR: u32 = 1 << 20;
const NSRW: u32 = 1 << 21;
const SAME_REGION_MASK: u32 = (1 << 16) | 0xFF | (1 << 17) | (0xFF << 8) | (1 << 23) | (0xFF << 24);

fn inside(start: u32, end_incl: u32, base: u32, size: u32) -> bool {
    start >= base && end_incl <= base + (size - 1)
}

/// How a checked range may be used: [`Read`] or [`Write`] (which includes reading).
pub trait Access {
    /// Whether the app must be allowed to write the range.
    const WRITE: bool;
}

/// A range the app may read.
pub enum Read {}
/// A range the app may read and write.
pub enum Write {}

impl Access for Read {
    const WRITE: bool = false;
}
impl Access for Write {
    const WRITE: bool = true;
}

/// What an [`NsRange`] is checked under: a stretch of visor code during which no app code runs
/// (a system call, which masks every app exception; a service-routine pass; a fault handler).
/// The app may reprogram its MPU whenever it runs, so every [`NsRange`] borrows the `Awake` it was
/// checked under and none outlives it: the next stretch checks again.
pub struct Awake(PhantomData<*const ()>);

impl Awake {
    /// A witness for the code that runs now.
    pub fn new() -> Self {
        Awake(PhantomData)
    }
}

/// Proof that the app may access `len` bytes at `ptr` ([`Read`], or [`Write`] too), obtained
/// from [`check`] and valid while the [`Awake`] it borrows is not used to sleep.
pub struct NsRange<'a, A: Access> {
    ptr: u32,
    len: u32,
    _awake: PhantomData<(&'a Awake, A)>,
}

/// Checks that the app may access `len` bytes at `ptr` (for writing too with [`Write`]); the
/// returned token is what the copy functions need.
pub fn check<'a, A: Access>(_awake: &'a Awake, ptr: u32, len: u32) -> Option<NsRange<'a, A>> {
    allowed(ptr, len, A::WRITE, caller_unprivileged()).then_some(NsRange { ptr, len, _awake: PhantomData })
}

/// [`check`] for an app privilege given explicitly (`unprivileged`: as the app's thread mode
/// with `CONTROL_NS.nPRIV` set), not the caller's: for memory the app registered earlier (a
/// channel's buffers) and the visor reaches later from its service routine.
pub fn check_as<'a, A: Access>(_awake: &'a Awake, ptr: u32, len: u32, unprivileged: bool) -> Option<NsRange<'a, A>> {
    allowed(ptr, len, A::WRITE, unprivileged).then_some(NsRange { ptr, len, _awake: PhantomData })
}

/// True if the code that called the visor is the app's thread mode running unprivileged; its
/// handlers (and thread mode with `nPRIV` clear) are privileged.
pub fn caller_unprivileged() -> bool {
    board::ipsr() == 0 && board::control_ns() & 1 != 0
}

fn allowed(ptr: u32, len: u32, write: bool, unprivileged: bool) -> bool {
    if len == 0 {
        return true;
    }
    let Some(end) = ptr.checked_add(len - 1) else {
        return false;
    };
    if !inside(ptr, end, APP_RAM_BASE, APP_RAM_SIZE) && !inside(ptr, end, APP_EXEC_BASE, APP_EXEC_SIZE) {
        return false;
    }
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

impl<A: Access> NsRange<'_, A> {
    /// Copies the first `buf.len()` bytes of the range (at most its length) into `buf`.
    pub fn read_into(&self, buf: &mut [u8]) {
        assert!(buf.len() <= self.len as usize);
        if buf.is_empty() {
            // A zero-length range may be at any address, NULL included: touch nothing.
            return;
        }
        // SAFETY: `check` found `ptr..ptr + len` inside the app's RAM or code region, which the
        // SAU and MPCs make non-secure for the whole run of the visor, so these are valid,
        // mapped bytes that are not visor memory (no Rust reference aliases them) and reading
        // them cannot fault; `buf` is at most that long. A byte copy has no alignment need.
        unsafe { core::ptr::copy_nonoverlapping(self.ptr as *const u8, buf.as_mut_ptr(), buf.len()) }
    }

    /// The little-endian word at the start of the range (which is at least 4 bytes long).
    pub fn read_u32(&self) -> u32 {
        let mut b = [0u8; 4];
        self.read_into(&mut b);
        u32::from_le_bytes(b)
    }
}

impl NsRange<'_, Write> {
    /// Copies `data` to the start of the range (at most its length).
    pub fn write_from(&self, data: &[u8]) {
        assert!(data.len() <= self.len as usize);
        if data.is_empty() {
            return;
        }
        // SAFETY: as in `read_into`: app RAM or code, never visor memory, mapped and non-secure;
        // `data` is at most the range's length.
        unsafe { core::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr as *mut u8, data.len()) }
    }
}

/// Reads a little-endian word from app memory if the app may read it.
pub fn read_u32(awake: &Awake, ptr: u32) -> Option<u32> {
    check::<Read>(awake, ptr, 4).map(|r| r.read_u32())
}

/// Writes the app's initial exception frame: `words` at `sp`, which must be 4-aligned and lie
/// with the frame inside the app's RAM (asserted). Only for the visor's own setup of the app's
/// first frame while the app is stopped; the app's MPU is not consulted.
pub fn write_initial_frame(sp: u32, words: &[u32; 8]) {
    let len = 4 * words.len() as u32;
    assert!(sp.is_multiple_of(4) && sp.checked_add(len - 1).is_some_and(|e| inside(sp, e, APP_RAM_BASE, APP_RAM_SIZE)));
    for (i, w) in words.iter().enumerate() {
        // SAFETY: an aligned word inside the app's RAM (asserted above), non-secure memory that
        // never aliases the visor's, written while the app is stopped.
        unsafe { core::ptr::write_volatile((sp + 4 * i as u32) as *mut u32, *w) }
    }
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

/// Zeroes the app's whole RAM: every app start begins with nothing of the previous run (or the
/// previous version) in memory. Only while the app is stopped.
pub fn clear_app_ram() {
    // SAFETY: the app's RAM, non-secure memory that never aliases the visor's, written while the
    // app is stopped (the service routine is starting it); word-aligned base and size.
    unsafe { core::ptr::write_bytes(APP_RAM_BASE as *mut u32, 0, (APP_RAM_SIZE / 4) as usize) }
}

/// Writes `words` at `offset` into the app execution region (the start stub). Only while the app
/// is stopped.
pub fn write_exec_words(offset: u32, words: &[u32]) {
    assert!(offset.is_multiple_of(4) && offset.checked_add(4 * words.len() as u32).is_some_and(|e| e <= APP_EXEC_SIZE));
    for (i, w) in words.iter().enumerate() {
        // SAFETY: an aligned word inside the execution region (asserted), non-secure memory the
        // visor owns while the app is stopped.
        unsafe { core::ptr::write_volatile((APP_EXEC_BASE + offset + 4 * i as u32) as *mut u32, *w) }
    }
}

/// Writes `data` at `addr` in the app execution region for the debugger (a software breakpoint,
/// or code the developer changes), whatever the app's own MPU says about its code: a debug
/// probe writes code too. False if the range is not entirely inside the region.
pub fn patch_exec(addr: u32, data: &[u8]) -> bool {
    let Some(end) = addr.checked_add(data.len() as u32) else { return false };
    if data.is_empty() || addr < APP_EXEC_BASE || end > APP_EXEC_BASE + APP_EXEC_SIZE {
        return false;
    }
    // SAFETY: in bounds of the execution region (checked above): non-secure memory (SAU, MPC0)
    // that never aliases the visor's; the app is halted or, at worst, sees a halfword change.
    unsafe { core::ptr::copy_nonoverlapping(data.as_ptr(), addr as *mut u8, data.len()) }
    true
}

/// The app's memory for the device core's channels ([`keel_device::AppMemory`]): every access is
/// checked when it happens, like a pointer argument, under the app privilege the core asks for
/// (the privilege of the code that opened the channel, or of the caller of `chan_send`), whether
/// the visor runs a system call or its service routine.
#[derive(Default)]
pub struct AppMem;

impl keel_device::AppMemory for AppMem {
    fn read(&mut self, addr: u32, buf: &mut [u8], unprivileged: bool) -> bool {
        let awake = Awake::new();
        match check_as::<Read>(&awake, addr, buf.len() as u32, unprivileged) {
            Some(r) => {
                r.read_into(buf);
                true
            }
            None => false,
        }
    }

    fn write(&mut self, addr: u32, data: &[u8], unprivileged: bool) -> bool {
        let awake = Awake::new();
        match check_as::<Write>(&awake, addr, data.len() as u32, unprivileged) {
            Some(w) => {
                w.write_from(data);
                true
            }
            None => false,
        }
    }
}
