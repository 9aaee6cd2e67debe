//! Time: a 64-bit monotonic clock and a one-shot alarm (tickless).
//!
//! The clock extends the board's free-running 32-bit cycle counter to 64 bits; it must be read at
//! least once per counter period (about 214 s at 20 MHz), which the alarm guarantees by never
//! sleeping longer than [`board::ALARM_MAX_CYCLES`]. The alarm (a secure timer interrupt) is armed for the
//! earliest pending deadline: the supervisor's (restart after backoff, watchdog) or a waiting
//! system call's. With nothing to do the visor sleeps until the next deadline instead of waking
//! up periodically, which saves power on silicon and makes deterministic QEMU runs fast.

use crate::board;
use crate::global::Global;

struct Clock {
    /// Wall clock minus monotonic clock, in microseconds, once the server set the time.
    wall_offset: Option<u64>,
    hi: u32,
    last_lo: u32,
    wait_deadline: Option<u64>,
}

static CLOCK: Global<Clock> = Global::new(Clock { wall_offset: None, hi: 0, last_lo: 0, wait_deadline: None });

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

/// Sets (or clears) the deadline of the system call currently waiting, and re-arms the alarm.
pub fn set_wait_deadline(deadline: Option<u64>) {
    CLOCK.with(|c| c.wait_deadline = deadline);
    rearm();
}

/// Arms the alarm for the earliest deadline (supervisor or waiting call), at most
/// [`board::ALARM_MAX_CYCLES`] away. Called from the alarm interrupt and after any change that
/// may bring a deadline forward.
pub fn rearm() {
    let sup = crate::VISOR.with(|v| {
        v.as_ref().and_then(|v| match (v.sup.next_deadline(), crate::update::next_deadline(v)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        })
    });
    let net = crate::net::next_deadline();
    CLOCK.with(|c| {
        let now = cycles(c) / CYCLES_PER_US;
        if sup.is_some_and(|d| d <= now) {
            // Already due: the service routine runs next and re-arms when it is done.
            board::pend_service();
        }
        if net.is_some_and(|d| d <= now) {
            board::pend_service();
        }
        let pending = [sup.filter(|&d| d > now), c.wait_deadline.filter(|&d| d > now), net.filter(|&d| d > now)];
        let delay_us = pending.iter().flatten().map(|d| d - now).min().unwrap_or(u64::MAX);
        let cycles = delay_us.saturating_mul(CYCLES_PER_US).clamp(MIN_ALARM_CYCLES, board::ALARM_MAX_CYCLES as u64);
        board::arm_alarm(cycles as u32);
    });
}

/// Shortest alarm, so a deadline in the past can never cause an interrupt storm.
const MIN_ALARM_CYCLES: u64 = 200;
