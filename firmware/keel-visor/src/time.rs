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

use crate::board::{Board, This};

// The clock's state: plain atomics. Every reader runs at the service level — a system call (which
// masks up to the service routine's priority), the service routine itself, the boot, or a fault
// handler for an app fault (which only runs while no visor context does) — so no two updates
// interleave; the alarm and network interrupts, which can preempt those, never read the clock.
/// The counter's low word at the last read (a smaller one means it wrapped).
static LAST_LO: AtomicU32 = AtomicU32::new(0);
/// Microseconds (low and high words) and leftover cycles at the start of the current counter
/// period: the clock without a 64-bit division on the system-call path.
static BASE_US_LO: AtomicU32 = AtomicU32::new(0);
static BASE_US_HI: AtomicU32 = AtomicU32::new(0);
static BASE_REM: AtomicU32 = AtomicU32::new(0);
/// Wall clock minus monotonic clock (µs), low and high words, once the server set the time.
static WALL_LO: AtomicU32 = AtomicU32::new(0);
static WALL_HI: AtomicU32 = AtomicU32::new(0);
static WALL_SET: AtomicBool = AtomicBool::new(false);

const CYCLES_PER_US: u32 = This::SYSCLK_HZ / 1_000_000;
const _: () = assert!(CYCLES_PER_US >= 1 && This::SYSCLK_HZ.is_multiple_of(1_000_000));
/// One counter period (2^32 cycles) in whole microseconds, and the cycles left over.
const PERIOD_US: u32 = ((1u64 << 32) / CYCLES_PER_US as u64) as u32;
const PERIOD_REM: u32 = ((1u64 << 32) % CYCLES_PER_US as u64) as u32;

/// Starts the clock.
pub fn init() {
    This::start_clock();
    This::init_alarm();
}

/// Microseconds since the visor started. Never goes backwards. The board's 32-bit cycle counter,
/// extended at every wrap (the alarm never sleeps longer than half a period, so none is missed).
#[inline]
pub fn now_us() -> u64 {
    let lo = This::clock_cycles();
    if lo < LAST_LO.load(Relaxed) {
        // The counter wrapped: the base advances by one period.
        let mut rem = BASE_REM.load(Relaxed) + PERIOD_REM;
        let mut base = ((BASE_US_HI.load(Relaxed) as u64) << 32 | BASE_US_LO.load(Relaxed) as u64) + PERIOD_US as u64;
        if rem >= CYCLES_PER_US {
            rem -= CYCLES_PER_US;
            base += 1;
        }
        BASE_REM.store(rem, Relaxed);
        BASE_US_LO.store(base as u32, Relaxed);
        BASE_US_HI.store((base >> 32) as u32, Relaxed);
    }
    LAST_LO.store(lo, Relaxed);
    let base = (BASE_US_HI.load(Relaxed) as u64) << 32 | BASE_US_LO.load(Relaxed) as u64;
    // 32-bit divisions by a constant: multiplications.
    let extra = (lo % CYCLES_PER_US + BASE_REM.load(Relaxed)) / CYCLES_PER_US;
    base + (lo / CYCLES_PER_US) as u64 + extra as u64
}

/// Sets the wall clock (from the server). The monotonic clock is unaffected.
pub fn set_wall_us(unix_us: u64) {
    let offset = unix_us.saturating_sub(now_us());
    WALL_LO.store(offset as u32, Relaxed);
    WALL_HI.store((offset >> 32) as u32, Relaxed);
    WALL_SET.store(true, Relaxed);
}

/// Microseconds since the Unix epoch, once the server set the clock.
pub fn wall_us() -> Option<u64> {
    let now = now_us();
    let offset = ((WALL_HI.load(Relaxed) as u64) << 32) | WALL_LO.load(Relaxed) as u64;
    WALL_SET.load(Relaxed).then(|| offset.saturating_add(now))
}

/// Arms the alarm for `deadline` (µs; `None`: only the clock's own wrap-around wake-up), at
/// least [`MIN_ALARM_US`] and at most [`Board::ALARM_MAX_CYCLES`] away. A deadline already due
/// fires after the minimum delay, so the caller never spins.
pub fn arm_at(deadline: Option<u64>) {
    let now = now_us();
    let delay_us = deadline.map_or(u64::MAX, |d| d.saturating_sub(now)).max(MIN_ALARM_US);
    let cycles = delay_us.saturating_mul(CYCLES_PER_US as u64).min(This::ALARM_MAX_CYCLES as u64);
    This::arm_alarm(cycles as u32);
}

/// Shortest alarm delay: a deadline in the past can never cause an interrupt storm.
pub const MIN_ALARM_US: u64 = 10;
