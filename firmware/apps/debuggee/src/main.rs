//! debuggee: the example app of remote debugging (`keel debug`). Every 100 ms it computes a value
//! from a counter and a global scale and logs it, so a debugger session can break in `scaled`,
//! print its argument and the global, change the scale, and see the next log lines change.
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU32, Ordering};

keel_app::entry!(main);

/// The scale `scaled` applies; a debugger changes it (`set var debuggee::SCALE.v.value = 7`).
#[no_mangle]
pub static SCALE: AtomicU32 = AtomicU32::new(1);

/// `x` scaled: the function a debugger breaks in.
#[inline(never)]
#[no_mangle]
pub fn scaled(x: u32) -> u32 {
    let product = x.wrapping_mul(current_scale());
    offset(product)
}

/// The scale now (a call of its own, so a breakpoint in `scaled` lands on `scaled`'s own line).
#[inline(never)]
#[no_mangle]
pub fn current_scale() -> u32 {
    SCALE.load(Ordering::Relaxed)
}

/// Adds 1000 to `v` (a call to step into and finish out of).
#[inline(never)]
#[no_mangle]
pub fn offset(v: u32) -> u32 {
    core::hint::black_box(v) + 1000
}

fn main() -> ! {
    keel_app::info!("debuggee: started");
    let mut tick: u32 = 0;
    loop {
        tick = tick.wrapping_add(1);
        let value = scaled(core::hint::black_box(tick));
        keel_app::info!("debuggee: tick={} value={}", tick, value);
        keel_app::sleep_ms(100);
    }
}
