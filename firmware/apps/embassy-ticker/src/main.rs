//! embassy-ticker: embassy-executor running on keel-app's async notifications.
//!
//! Two tasks:
//! * `ticker` logs `embassy-ticker: tick N` every 250 ms of device time, sleeping with
//!   [`keel_app::notify::sleep_until`], then `embassy-ticker: done ticks=8 elapsed_us=...` and
//!   keeps idling;
//! * `updates` waits for the visor to report an update ready and applies it.
//!
//! **One consumer of the records.** keel-app queues the ring's records for whoever reads first:
//! two tasks awaiting [`keel_app::notify::next`] at once would steal each other's records (several
//! futures may wait at once, but each record goes to one of them). So `ticker` is the only task
//! that reads records (its sleeps are `next()` loops); records are handed to [`dispatch`], which
//! forwards "update ready" to `updates` through an embassy-sync [`Signal`]. After its last tick
//! `ticker` goes on reading records with `next()` for the same reason.
//!
//! **The executor.** Tasks, wakers and the run queue are embassy-executor's (`raw::Executor`);
//! the platform, the loop that polls and sleeps, is [`KeelExecutor`] below, the custom platform
//! the embassy-executor docs describe. The chain from the visor to a task is the same as with
//! embassy's stock thread-mode executor: the visor writes a record and pends the ring's line;
//! keel-app's handler (`keel_app_notify_irq`) calls `wake()` on the waker `next()` registered;
//! embassy puts the task on its run queue and calls the pender.
//!
//! The stock executor (feature `stock-executor`) loops `poll(); wfe` and its pender executes
//! `sev`. That is correct with keel's handler (and the QEMU test passes with it too): an interrupt taken while the core sits in `wfe`
//! ends the `wfe`, and one taken between `poll()` and `wfe` leaves the event register set by its
//! `sev`, so that `wfe` falls through at once; no wake-up is lost. But QEMU (7.2 here) implements
//! `wfe` as a yield, so under QEMU that loop never sleeps: it spins through every idle
//! microsecond, and with `-icount` (one instruction per virtual nanosecond) 2 s of device time
//! cost minutes of host time. So this app sleeps the way keel-app does, with `wfi` and a flag
//! the pender sets, tested with interrupts masked (`wfi` still wakes on a pending interrupt
//! while PRIMASK is set): idle time is skipped under QEMU and the core sleeps on silicon.
//!
//! The runtime is keel-app's (`keel_app::entry!`, its vector table and reset handler), not
//! cortex-m-rt: the executor is created by hand in a [`StaticCell`] instead of with
//! `#[embassy_executor::main]`. The `cortex-m` crate provides the single-core critical-section
//! implementation (PRIMASK) that embassy-executor and embassy-sync use.
#![no_std]
#![no_main]

#[cfg(not(feature = "stock-executor"))]
use core::sync::atomic::{AtomicBool, Ordering};
use embassy_executor::Spawner;
use embassy_sync::blocking_mutex::raw::CriticalSectionRawMutex;
use embassy_sync::signal::Signal;
use keel_app::notify::{self, Kind, Record};
use static_cell::StaticCell;

keel_app::entry!(main);

/// Device time between two ticks (µs).
const PERIOD_US: u64 = 250_000;
/// Ticks before the `done` line.
const TICKS: u32 = 8;

/// Set by [`dispatch`] when the visor reports an update ready (or lost records, which may have
/// been one); awaited by [`updates`].
static UPDATE_READY: Signal<CriticalSectionRawMutex, ()> = Signal::new();

#[cfg(not(feature = "stock-executor"))]
type Executor = KeelExecutor;
#[cfg(feature = "stock-executor")]
type Executor = embassy_executor::Executor;

static EXECUTOR: StaticCell<Executor> = StaticCell::new();

/// Set by the pender when a task was woken; cleared before each poll.
#[cfg(not(feature = "stock-executor"))]
static WOKEN: AtomicBool = AtomicBool::new(false);

/// embassy's pender: called (from a task, or from keel-app's notification handler) when a task
/// was woken. It only sets [`WOKEN`]; the loop in [`KeelExecutor::run`] polls.
#[cfg(not(feature = "stock-executor"))]
// SAFETY: embassy-executor declares `__pender` as `extern "Rust" fn(*mut ())` and this is the
// only definition in the program (no `platform-*` feature of embassy-executor is enabled).
#[unsafe(export_name = "__pender")]
fn pender(_context: *mut ()) {
    WOKEN.store(true, Ordering::Release);
}

/// A thread-mode executor that sleeps with `wfi` (see the module documentation).
#[cfg(not(feature = "stock-executor"))]
struct KeelExecutor(embassy_executor::raw::Executor);

#[cfg(not(feature = "stock-executor"))]
impl KeelExecutor {
    fn new() -> KeelExecutor {
        KeelExecutor(embassy_executor::raw::Executor::new(core::ptr::null_mut()))
    }

    fn run(&'static mut self, init: impl FnOnce(Spawner)) -> ! {
        let executor = &self.0;
        init(executor.spawner());
        loop {
            // A wake after this store, during the poll or after it, sets the flag again; one
            // before it is already on the run queue this poll empties.
            WOKEN.store(false, Ordering::Release);
            // SAFETY: `poll` runs only here, in thread mode, never from the pender or a handler,
            // so it is never reentered.
            unsafe { executor.poll() };
            cortex_m::interrupt::free(|_| {
                // With interrupts masked, a wake cannot slip in between the test and the `wfi`:
                // its interrupt stays pending, which ends the `wfi`, and its handler runs when
                // the mask is lifted.
                if !WOKEN.load(Ordering::Acquire) {
                    cortex_m::asm::wfi();
                }
            });
        }
    }
}

fn main() -> ! {
    keel_app::info!("embassy-ticker: started");
    // Set the ring up before any task waits, so a failure is reported once, here.
    if let Err(e) = notify::init() {
        keel_app::error!("embassy-ticker: notifications unavailable: {}", e.name());
        loop {
            cortex_m::asm::wfi();
        }
    }
    let executor = EXECUTOR.init(Executor::new());
    executor.run(|spawner| {
        spawn(spawner, "ticker", ticker());
        spawn(spawner, "updates", updates());
    })
}

fn spawn<S>(spawner: Spawner, name: &str, task: Result<embassy_executor::SpawnToken<S>, embassy_executor::SpawnError>) {
    match task {
        Ok(t) => spawner.spawn(t),
        Err(_) => keel_app::error!("embassy-ticker: cannot spawn {}", name),
    }
}

/// Handles a ring record that is not the ticker's own timer; `true` ends the current sleep early.
fn dispatch(r: &Record) -> bool {
    match Kind::from_u16(r.kind) {
        Some(Kind::UpdateReady) => {
            UPDATE_READY.signal(());
            false
        }
        // Lost records may have been an update ready (applying is refused with UNAVAILABLE if
        // none is) or the ticker's own timer record: wake the watcher, and end the sleep so the
        // ticker looks at the clock again.
        Some(Kind::Overrun) => {
            UPDATE_READY.signal(());
            true
        }
        _ => false,
    }
}

/// Sleeps until `deadline_us` (device µs), handing other records to [`dispatch`].
async fn sleep_until(deadline_us: u64) {
    while keel_app::monotonic_us() < deadline_us {
        notify::sleep_until(deadline_us, dispatch).await;
    }
}

#[embassy_executor::task]
async fn ticker() {
    let start = keel_app::monotonic_us();
    let mut last = start;
    for n in 1..=TICKS {
        // Each tick is due 250 ms after the previous one was logged (the clock is read after the
        // log call), so consecutive tick lines are at least 250 ms of device time apart.
        sleep_until(last + PERIOD_US).await;
        keel_app::info!("embassy-ticker: tick {}", n);
        last = keel_app::monotonic_us();
    }
    let elapsed = keel_app::monotonic_us() - start;
    keel_app::info!("embassy-ticker: done ticks={} elapsed_us={}", TICKS, elapsed);
    // Idle, still the ring's only reader.
    loop {
        let r = notify::next().await;
        dispatch(&r);
    }
}

#[embassy_executor::task]
async fn updates() {
    keel_app::info!("embassy-ticker: waiting for updates");
    loop {
        UPDATE_READY.wait().await;
        keel_app::info!("embassy-ticker: an update may be ready; applying it");
        // Returns only if there was nothing to apply.
        let s = keel_app::update_apply();
        keel_app::warn!("embassy-ticker: update_apply: {}", s.name());
    }
}
