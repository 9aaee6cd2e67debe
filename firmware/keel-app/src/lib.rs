//! # keel-app: the Rust SDK for Keel apps
//!
//! An app is a `no_std`, `no_main` binary for `thumbv8m.main-none-eabi` that depends on this crate,
//! links with `-Tkeel_app.ld` (see the example apps' `build.rs`) and names its entry point with
//! [`entry!`]:
//!
//! ```ignore
//! #![no_std]
//! #![no_main]
//! keel_app::entry!(main);
//! fn main() -> ! {
//!     loop {
//!         keel_app::info!("uptime {} ms", keel_app::monotonic_us() / 1000);
//!         keel_app::sleep_ms(1000);
//!     }
//! }
//! ```
//!
//! The crate provides the vector table and reset handler, safe wrappers for every system call
//! (the raw ones are in [`raw`]), formatting log macros and a panic handler that logs the panic
//! and asks the visor for a restart.
//!
//! Since ABI 2.1 an app can reach the cloud through the visor: [`net`] asks for the network and
//! watches the link, [`chan`] opens channels to the Keel server's services over buffers the app
//! provides, and [`http`], [`config`] and [`mqtt`] are ready-made clients of those services
//! (an HTTP(S) request, a configuration and secrets fetch, a managed MQTT session). Each offers
//! blocking calls with timeouts and async ones for an executor (see [`notify`]).
#![no_std]
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]
#![warn(missing_docs)]

use core::fmt::{self, Write};

pub mod chan;
pub mod config;
mod error;
pub mod http;
pub mod mqtt;
pub mod net;
pub mod notify;

pub use error::Error;
/// The app messages channels carry (`keel-channel`'s codec): message types, result codes and
/// their limits. The helpers in [`http`], [`config`] and [`mqtt`] encode and decode them.
pub use keel_channel::msg;

pub use keel_abi::{
    events, update_outcome, AbiInfo, BootInfo, Call, CrashReport, FaultKind, LogLevel, StartReason, Status, UpdateInfo,
};

/// Restart code used by the panic handler.
pub const PANIC_RESTART_CODE: u32 = 0x0000_DEAD;

/// Raw system calls, exactly as the ABI defines them. Prefer the safe wrappers.
pub mod raw {
    /// Base of the visor's NSC table on this board.
    pub const NSC_BASE: u32 = 0x1007_0000;

    /// Address of the veneer of `slot` (Thumb bit set).
    pub const fn slot_address(slot: u32) -> u32 {
        (NSC_BASE + keel_abi::SLOT_SIZE * slot) | 1
    }

    /// Masks the app's interrupts (PRIMASK) and returns the previous mask.
    #[inline(always)]
    fn irq_save() -> u32 {
        let primask: u32;
        // SAFETY: reads PRIMASK and masks interrupts; `irq_restore` puts the mask back.
        unsafe {
            core::arch::asm!("mrs {p}, primask", "cpsid i", p = out(reg) primask, options(nostack, preserves_flags))
        };
        primask
    }

    /// Restores the mask `irq_save` returned.
    #[inline(always)]
    fn irq_restore(primask: u32) {
        // SAFETY: writes back the caller's own earlier PRIMASK value.
        unsafe { core::arch::asm!("msr primask, {p}", p = in(reg) primask, options(nostack, preserves_flags)) };
    }

    /// Calls system-call `slot` with four arguments and returns the raw status. The call is made
    /// with the app's interrupts masked, as the ABI requires (the visor masks them for the call's
    /// body; this closes the instructions on the way in and out, so no interrupt or task switch
    /// of an RTOS can land inside a call).
    ///
    /// # Safety
    /// The visor validates every argument, so no value can harm the visor; but a call that writes
    /// through a pointer writes into *this app's* memory wherever the pointer says.
    #[inline(always)]
    pub unsafe fn call(slot: u32, a0: u32, a1: u32, a2: u32, a3: u32) -> u32 {
        let m = irq_save();
        // SAFETY: the slot address is a secure gateway veneer with the AAPCS signature below
        // (four word arguments, a word result); the visor never faults on bad arguments.
        let r = unsafe {
            let f: extern "C" fn(u32, u32, u32, u32) -> u32 = core::mem::transmute(slot_address(slot) as usize);
            f(a0, a1, a2, a3)
        };
        irq_restore(m);
        r
    }

    /// Calls system-call `slot` that returns a 64-bit value in `r0:r1` (`monotonic_us`), with
    /// interrupts masked like [`call`].
    ///
    /// # Safety
    /// As [`call`].
    #[inline(always)]
    pub unsafe fn call64(slot: u32) -> u64 {
        let m = irq_save();
        // SAFETY: as in `call`, with a 64-bit result in r0:r1 (AAPCS).
        let r = unsafe {
            let f: extern "C" fn() -> u64 = core::mem::transmute(slot_address(slot) as usize);
            f()
        };
        irq_restore(m);
        r
    }
}

/// Runs `f` with the app's interrupts masked (a critical section on this single core), then
/// restores the mask as it was. The visor keeps running meanwhile: it writes notification
/// records into the ring (counting those that find it full, see [`notify`]) and the SDK's
/// handler moves them out once the mask is lifted. System calls may be made inside; blocking
/// SDK helpers should not (nothing wakes them until the end).
pub fn interrupt_free<R>(f: impl FnOnce() -> R) -> R {
    notify::masked(f)
}

pub(crate) fn status(raw: u32) -> Result<(), Status> {
    match Status::from_u32(raw) {
        Some(Status::Ok) => Ok(()),
        Some(s) => Err(s),
        None => Err(Status::InternalError),
    }
}

fn call(c: Call, a0: u32, a1: u32, a2: u32) -> Result<(), Status> {
    // SAFETY: callers pass pointers to their own live locals of the right size.
    status(unsafe { raw::call(c as u32, a0, a1, a2, 0) })
}

/// ABI and visor versions.
pub fn abi_info() -> Result<AbiInfo, Status> {
    let mut v = AbiInfo { version: 1, ..Default::default() };
    call(Call::AbiInfo, &mut v as *mut _ as u32, 0, 0)?;
    Ok(v)
}

/// The device id, `kd` + 32 hex digits.
#[derive(Clone, Copy)]
pub struct DeviceId([u8; keel_abi::DEVICE_ID_LEN as usize]);

impl DeviceId {
    /// The id as text.
    pub fn as_str(&self) -> &str {
        core::str::from_utf8(&self.0).unwrap_or("?")
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// This device's id.
pub fn device_id() -> Result<DeviceId, Status> {
    let mut id = DeviceId([0; keel_abi::DEVICE_ID_LEN as usize]);
    call(Call::DeviceId, id.0.as_mut_ptr() as u32, id.0.len() as u32, 0)?;
    Ok(id)
}

/// Microseconds since the visor started.
pub fn monotonic_us() -> u64 {
    // SAFETY: no arguments; the call cannot fail.
    unsafe { raw::call64(Call::MonotonicUs as u32) }
}

/// Microseconds since the Unix epoch; `Err(Status::TimeNotSet)` until the clock is synchronised.
pub fn wall_time_us() -> Result<u64, Status> {
    let mut t = 0u64;
    call(Call::WallTimeUs, &mut t as *mut u64 as u32, 0, 0)?;
    Ok(t)
}

/// Logs one message (at most [`keel_abi::LOG_MAX_LEN`] bytes).
pub fn log(level: LogLevel, msg: &[u8]) -> Result<(), Status> {
    call(Call::Log, level as u32, msg.as_ptr() as u32, msg.len() as u32)
}

/// Restarts the app; `code` is reported by [`boot_info`] after the restart.
pub fn restart(code: u32) -> Status {
    match call(Call::Restart, code, 0, 0) {
        Ok(()) => Status::Ok,
        Err(s) => s,
    }
}

/// Sleeps for `us` microseconds or until the visor reports an update ready; returns the events
/// seen ([`events::UPDATE_READY`], or 0 when the time is up). Built on [`notify`]: the app
/// sleeps in its own world with `wfi`; other records queued meanwhile are dropped (use
/// [`notify`] directly to see them all).
pub fn wait(us: u32) -> u32 {
    if notify::init().is_err() {
        return 0;
    }
    let deadline = monotonic_us().saturating_add(us as u64);
    loop {
        let seen = notify::events();
        while let Some(r) = notify::pop() {
            match notify::Kind::from_u16(r.kind) {
                Some(notify::Kind::UpdateReady) => return events::UPDATE_READY,
                // A lost record may have been an update ready: say so (applying is refused with
                // UNAVAILABLE if nothing is ready).
                Some(notify::Kind::Overrun) => return events::UPDATE_READY,
                _ => {}
            }
        }
        if monotonic_us() >= deadline {
            return 0;
        }
        notify::block(seen, Some(deadline));
    }
}

/// Sleeps for `ms` milliseconds (events that end a wait early do not shorten it).
pub fn sleep_ms(ms: u32) {
    let end = monotonic_us().saturating_add(ms as u64 * 1000);
    loop {
        let now = monotonic_us();
        if now >= end {
            return;
        }
        wait((end - now).min(u32::MAX as u64) as u32);
    }
}

/// Arms the app watchdog.
pub fn watchdog_start(timeout_ms: u32) -> Result<(), Status> {
    call(Call::WatchdogStart, timeout_ms, 0, 0)
}

/// Feeds the app watchdog.
pub fn watchdog_kick() -> Result<(), Status> {
    call(Call::WatchdogKick, 0, 0, 0)
}

/// Why and how often the app was started.
pub fn boot_info() -> Result<BootInfo, Status> {
    let mut v = BootInfo { version: 1, ..Default::default() };
    call(Call::BootInfo, &mut v as *mut _ as u32, 0, 0)?;
    Ok(v)
}

/// The last crash report, if the app crashed since the visor booted.
pub fn last_crash() -> Result<CrashReport, Status> {
    let mut v = CrashReport { version: 1, ..Default::default() };
    call(Call::LastCrash, &mut v as *mut _ as u32, 0, 0)?;
    Ok(v)
}

/// Confirms the update this app runs as: it becomes permanent and is never rolled back.
///
/// After an update the new app runs on trial ([`UpdateInfo::on_trial`]); until it is confirmed,
/// crashing too often, hanging (watchdog) or the grace time passing rolls it back to the
/// previous app. Call this once the app knows it works. `Err(Status::Unavailable)` if the app is
/// not on trial (no update, or already confirmed); `Err(Status::NotImplemented)` on a visor with
/// ABI 1.0. Since ABI 1.1.
pub fn update_confirm() -> Result<(), Status> {
    call(Call::UpdateConfirm, 0, 0, 0)
}

/// Whether the app runs on trial, the installed update's sequence number and how the last update
/// ended ([`update_outcome`] and the reason codes documented on [`UpdateInfo`]).
/// `Err(Status::NotImplemented)` on a visor with ABI 1.0. Since ABI 1.1.
pub fn update_info() -> Result<UpdateInfo, Status> {
    let mut v = UpdateInfo { version: 1, ..Default::default() };
    call(Call::UpdateInfo, &mut v as *mut _ as u32, 0, 0)?;
    Ok(v)
}

/// Applies an update that is ready (after a [`notify::Kind::UpdateReady`] record): this app stops
/// and the new version starts on trial. Returns only on error ([`Status::Unavailable`]: none is
/// ready).
pub fn update_apply() -> Status {
    match call(Call::UpdateApply, 0, 0, 0) {
        Ok(()) => Status::Ok,
        Err(e) => e,
    }
}

/// A fixed buffer that `core::fmt` writes into, truncating what does not fit.
pub struct LineBuf {
    buf: [u8; 256],
    len: usize,
}

impl LineBuf {
    /// An empty buffer.
    pub const fn new() -> Self {
        LineBuf { buf: [0; 256], len: 0 }
    }
    /// The bytes written.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Default for LineBuf {
    fn default() -> Self {
        Self::new()
    }
}

impl Write for LineBuf {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

/// Shows bytes as text in logs: printable ASCII as is, every other byte as `\xNN` (for
/// payloads and values the server or a remote party chose).
#[derive(Clone, Copy)]
pub struct Text<'a>(pub &'a [u8]);

impl fmt::Display for Text<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for &c in self.0 {
            if (0x20..0x7F).contains(&c) && c != b'\\' {
                f.write_char(c as char)?;
            } else {
                write!(f, "\\x{c:02x}")?;
            }
        }
        Ok(())
    }
}

/// Formats and logs one line. Used by [`info!`], [`warn!`] and [`error!`].
pub fn log_fmt(level: LogLevel, args: fmt::Arguments<'_>) {
    let mut b = LineBuf::new();
    let _ = b.write_fmt(args);
    let _ = log(level, b.as_bytes());
}

/// Logs at info level, `format!` style.
#[macro_export]
macro_rules! info {
    ($($arg:tt)*) => { $crate::log_fmt($crate::LogLevel::Info, format_args!($($arg)*)) };
}

/// Logs at warning level, `format!` style.
#[macro_export]
macro_rules! warn {
    ($($arg:tt)*) => { $crate::log_fmt($crate::LogLevel::Warn, format_args!($($arg)*)) };
}

/// Logs at error level, `format!` style.
#[macro_export]
macro_rules! error {
    ($($arg:tt)*) => { $crate::log_fmt($crate::LogLevel::Error, format_args!($($arg)*)) };
}

/// Declares the app's entry point: a `fn() -> !` called after RAM is initialised.
#[macro_export]
macro_rules! entry {
    ($main:path) => {
        #[no_mangle]
        pub extern "C" fn keel_app_main() -> ! {
            let f: fn() -> ! = $main;
            f()
        }
    };
}

mod rt {
    // The vector table and reset handler. Exceptions the app does not handle end in `udf`, which
    // the visor reports as a crash with the exception's return address on the stack.
    core::arch::global_asm!(
        r#"
        .section .vectors,"a",%progbits
        .global __keel_vectors
    __keel_vectors:
        .word __keel_stack_top
        .word keel_app_reset
        .rept 14
        .word keel_app_unhandled
        .endr
        @ External interrupts 0..95: the notification ring's line, every other one unhandled.
        .rept {notify_irq}
        .word keel_app_unhandled
        .endr
        .word keel_app_notify_irq
        .rept 95 - {notify_irq}
        .word keel_app_unhandled
        .endr

        .section .text.keel_app_reset,"ax",%progbits
        .global keel_app_reset
        .type keel_app_reset,%function
        .thumb_func
    keel_app_reset:
        ldr r0, =__sbss
        ldr r1, =__ebss
        movs r2, #0
    0:  cmp r0, r1
        bhs 1f
        str r2, [r0], #4
        b 0b
    1:  ldr r0, =__sdata
        ldr r1, =__edata
        ldr r2, =__sidata
    2:  cmp r0, r1
        bhs 3f
        ldr r3, [r2], #4
        str r3, [r0], #4
        b 2b
    3:  bl keel_app_main
        udf #1
        .ltorg

        .section .text.keel_app_unhandled,"ax",%progbits
        .global keel_app_unhandled
        .type keel_app_unhandled,%function
        .thumb_func
    keel_app_unhandled:
        udf #2
    "#,
        notify_irq = const keel_abi::notify::DEFAULT_IRQ,
    );
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    log_fmt(LogLevel::Error, format_args!("panic: {}", info));
    restart(PANIC_RESTART_CODE);
    loop {}
}
