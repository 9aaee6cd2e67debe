//! Time: a 64-bit monotonic clock, the wall clock the server sets, and a one-shot alarm
//! (tickless). A leaf: it knows nothing of what the deadlines are for; the service routine arms
//! the alarm for the earliest one ([`arm_at`]).
//!
//! The clock extends the board's free-running 32-bit cycle counter to 64 bits; it must be read at
//! least once per counter period (about 214 s at 20 MHz), which the alarm guarantees by never
//! sleeping longer than [`board::ALARM_MAX_CYCLES`]. With nothing to do the visor sleeps until the
//! next deadline instead of waking up periodically, which saves power on silicon and makes
//! deterministic QEMU runs fast.

use crate::board;
use crate::global::Global;

struct Clock {
    /// Wall clock minus monotonic clock, in microseconds, once the server set the time.
    wall_offset: Option<u64>,
    hi: u32,
    last_lo: u32,
}

static CLOCK: Global<Clock> = Global::new(Clock { wall_offset: None, hi: 0, last_lo: 0 });

const CYCLES_PER_US: u64 = board::SYSCLK_HZ as u64 / 1_000_000;

/// Starts the clock.
pub fn init() {
    board::start_clock();
    board::init_alarm();
}

fn cycles(c: &mut Clock) -> u64 {
    let lo = board::clock_cycles();
    if lo < c.last_lo {
        c.hi = c.hi.wrapping_add(1);
    }
    c.last_lo = lo;
    ((c.hi as u64) << 32) | lo as u64
}

/// Microseconds since the visor started. Never goes backwards.
pub fn now_us() -> u64 {
    CLOCK.with(|c| cycles(c) / CYCLES_PER_US)
}

/// Sets the wall clock (from the server). The monotonic clock is unaffected.
pub fn set_wall_us(unix_us: u64) {
    CLOCK.with(|c| {
        let now = cycles(c) / CYCLES_PER_US;
        c.wall_offset = Some(unix_us.saturating_sub(now));
    });
}

/// Microseconds since the Unix epoch, once the server set the clock.
pub fn wall_us() -> Option<u64> {
    CLOCK.with(|c| {
        let now = cycles(c) / CYCLES_PER_US;
        c.wall_offset.map(|o| o.saturating_add(now))
    })
}

/// Arms the alarm for `deadline` (µs; `None`: only the clock's own wrap-around wake-up), at
/// least [`MIN_ALARM_US`] and at most [`board::ALARM_MAX_CYCLES`] away. A deadline already due
/// fires after the minimum delay, so the caller never spins.
pub fn arm_at(deadline: Option<u64>) {
    let now = now_us();
    let delay_us = deadline.map_or(u64::MAX, |d| d.saturating_sub(now)).max(MIN_ALARM_US);
    let cycles = delay_us.saturating_mul(CYCLES_PER_US).min(board::ALARM_MAX_CYCLES as u64);
    board::arm_alarm(cycles as u32);
}

/// Shortest alarm delay: a deadline in the past can never cause an interrupt storm.
pub const MIN_ALARM_US: u64 = 10;
