//! Time: a 64-bit monotonic clock, the wall clock the server sets, and a one-shot alarm
//! (tickless). A leaf: it knows nothing of what the deadlines are for; the service routine arms
//! the alarm for the earliest one ([`arm_at`]).
//!
//! The clock extends the board's free-running 32-bit cycle counter to 64 bits; it must be read at
//! least once per counter period (about 214 s at 20 MHz), which the alarm guarantees by never
//! sleeping longer than [`Board::ALARM_MAX_CYCLES`]. With nothing to do the visor sleeps until the
//! next deadline instead of waking up periodically, which saves power on silicon and makes
//! deterministic QEMU runs fast.

use core::sync::atomic::{AtomicBool, AtomicU32, Ordering::Relaxed};

use crate::board::{self, Board, This};

// The clock's state: plain atomics, read and updated inside `board::critical` (so each update is
// one step for every context), with no borrow flag to check on the system-call path.
/// High word of the extended cycle counter.
static HI: AtomicU32 = AtomicU32::new(0);
/// The counter's low word at the last read (a smaller one means it wrapped).
static LAST_LO: AtomicU32 = AtomicU32::new(0);
/// Wall clock minus monotonic clock (µs), low and high words, once the server set the time.
static WALL_LO: AtomicU32 = AtomicU32::new(0);
static WALL_HI: AtomicU32 = AtomicU32::new(0);
static WALL_SET: AtomicBool = AtomicBool::new(false);

const CYCLES_PER_US: u64 = This::SYSCLK_HZ as u64 / 1_000_000;

/// Starts the clock.
pub fn init() {
    This::start_clock();
    This::init_alarm();
}

/// The 64-bit cycle count. Call inside `board::critical`.
fn cycles() -> u64 {
    let lo = This::clock_cycles();
    let mut hi = HI.load(Relaxed);
    if lo < LAST_LO.load(Relaxed) {
        hi = hi.wrapping_add(1);
        HI.store(hi, Relaxed);
    }
    LAST_LO.store(lo, Relaxed);
    ((hi as u64) << 32) | lo as u64
}

/// Microseconds since the visor started. Never goes backwards.
pub fn now_us() -> u64 {
    board::critical(|| cycles() / CYCLES_PER_US)
}

/// Sets the wall clock (from the server). The monotonic clock is unaffected.
pub fn set_wall_us(unix_us: u64) {
    board::critical(|| {
        let offset = unix_us.saturating_sub(cycles() / CYCLES_PER_US);
        WALL_LO.store(offset as u32, Relaxed);
        WALL_HI.store((offset >> 32) as u32, Relaxed);
        WALL_SET.store(true, Relaxed);
    });
}

/// Microseconds since the Unix epoch, once the server set the clock.
pub fn wall_us() -> Option<u64> {
    board::critical(|| {
        let now = cycles() / CYCLES_PER_US;
        let offset = ((WALL_HI.load(Relaxed) as u64) << 32) | WALL_LO.load(Relaxed) as u64;
        WALL_SET.load(Relaxed).then(|| offset.saturating_add(now))
    })
}

/// Arms the alarm for `deadline` (µs; `None`: only the clock's own wrap-around wake-up), at
/// least [`MIN_ALARM_US`] and at most [`Board::ALARM_MAX_CYCLES`] away. A deadline already due
/// fires after the minimum delay, so the caller never spins.
pub fn arm_at(deadline: Option<u64>) {
    let now = now_us();
    let delay_us = deadline.map_or(u64::MAX, |d| d.saturating_sub(now)).max(MIN_ALARM_US);
    let cycles = delay_us.saturating_mul(CYCLES_PER_US).min(This::ALARM_MAX_CYCLES as u64);
    This::arm_alarm(cycles as u32);
}

/// Shortest alarm delay: a deadline in the past can never cause an interrupt storm.
pub const MIN_ALARM_US: u64 = 10;
