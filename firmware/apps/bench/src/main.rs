//! bench: measures the cost of a system call. Run under `-icount shift=0`, where one
//! instruction takes exactly 1 ns of virtual time, so microseconds × 1000 = instructions.
#![no_std]
#![no_main]
#![deny(clippy::undocumented_unsafe_blocks)]

use keel_app::raw;

keel_app::entry!(main);

const N: u32 = 100_000;

#[inline(never)]
extern "C" fn local_call(p: u32, _a: u32, _b: u32, _c: u32) -> u32 {
    // A non-secure function with the same shape as the system call, as the baseline.
    // SAFETY: `p` points at a live u64 below.
    unsafe { core::ptr::write_volatile(p as *mut u64, 1) };
    0
}

fn main() -> ! {
    let mut t = 0u64;
    let p = &mut t as *mut u64 as u32;
    let f: extern "C" fn(u32, u32, u32, u32) -> u32 = local_call;
    let f = core::hint::black_box(f);

    let t0 = keel_app::monotonic_us();
    for _ in 0..N {
        // SAFETY: `p` points at a live u64.
        unsafe { raw::call(keel_app::Call::MonotonicUs as u32, p, 0, 0, 0) };
    }
    let t1 = keel_app::monotonic_us();
    for _ in 0..N {
        f(p, 0, 0, 0);
    }
    let t2 = keel_app::monotonic_us();
    let syscall_ns = (t1 - t0) * 1000;
    let local_ns = (t2 - t1) * 1000;
    // Hundredths of an instruction per call.
    let per_call = (syscall_ns.saturating_sub(local_ns)) * 100 / N as u64;
    keel_app::info!("bench: syscall_roundtrip_instructions={}.{:02}", per_call / 100, per_call % 100);
    // Clock check: 5M iterations of a 2-instruction loop = 10M instructions = 10 ms of virtual
    // time under -icount shift=0.
    let c0 = keel_app::monotonic_us();
    // SAFETY: a pure register loop.
    unsafe { core::arch::asm!("1:", "subs {n}, {n}, #1", "bne 1b", n = inout(reg) 5_000_000u32 => _) };
    let c1 = keel_app::monotonic_us();
    keel_app::info!("bench: clock_check_10M_instructions_us={}", c1 - c0);
    // Notification latency: from a timer's deadline to the app running again after `wfi`
    // (the alarm interrupt, the service routine posting the record, the app's interrupt).
    const M: u64 = 200;
    let mut total = 0u64;
    for i in 0..M {
        let deadline = keel_app::monotonic_us() + 200;
        let _ = keel_app::notify::timer_set(deadline, i as u32);
        loop {
            match keel_app::notify::pop() {
                Some(r) if r.tag == i as u32 => break,
                Some(_) => {}
                None => keel_app::notify::sleep(),
            }
        }
        total += keel_app::monotonic_us() - deadline;
    }
    keel_app::info!("bench: notification_latency_instructions={}", total * 1000 / M);
    keel_app::info!("bench: done");
    loop {
        keel_app::sleep_ms(1000);
    }
}
