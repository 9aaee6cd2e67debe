//! Monotonic time from the secure SysTick (1 ms interrupts, interpolated to microseconds).

use core::sync::atomic::{AtomicU32, Ordering};

use crate::board;

static TICKS_LO: AtomicU32 = AtomicU32::new(0);
static TICKS_HI: AtomicU32 = AtomicU32::new(0);

/// Called from the SysTick handler: one more millisecond.
pub fn tick() {
    let lo = TICKS_LO.load(Ordering::Relaxed).wrapping_add(1);
    if lo == 0 {
        TICKS_HI.fetch_add(1, Ordering::Relaxed);
    }
    TICKS_LO.store(lo, Ordering::Relaxed);
}

fn ms() -> u64 {
    loop {
        let hi = TICKS_HI.load(Ordering::Relaxed);
        let lo = TICKS_LO.load(Ordering::Relaxed);
        if hi == TICKS_HI.load(Ordering::Relaxed) {
            return ((hi as u64) << 32) | lo as u64;
        }
    }
}

/// Microseconds since the visor started. Never goes backwards.
pub fn now_us() -> u64 {
    board::critical(|| {
        let ms = ms();
        let cvr = board::tick_count();
        // If the counter wrapped but the tick interrupt could not run yet (we are masking it),
        // the wrap is pending: count it, but only if `cvr` was read after the wrap.
        let wrapped = board::tick_pending() && cvr > board::TICK_RELOAD / 2;
        let elapsed_cycles = board::TICK_RELOAD - cvr.min(board::TICK_RELOAD);
        let us = ms * 1000 + (elapsed_cycles / (board::SYSCLK_HZ / 1_000_000)) as u64;
        if wrapped {
            us + 1000
        } else {
            us
        }
    })
}
