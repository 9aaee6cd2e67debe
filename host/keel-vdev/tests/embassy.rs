//! QEMU test: embassy's executor on keel-app's async notifications
//! (`firmware/apps/embassy-ticker`).
//!
//! The run uses `-icount shift=0,sleep=off`, so device time is deterministic; the wall-clock
//! limit passed to `wait_for` only stops a hung run, it never synchronises anything.

use std::time::Duration;

use keel_flash::layout;
use keel_vdev::qemu::{field, message, time_us};
use keel_vdev::qemu::{parse_line, Clock, Device};
use keel_vdev::{elf, flash};

const LIMIT: Duration = Duration::from_secs(240);
const APP: &str = "embassy-ticker";
const PERIOD_US: u64 = 250_000;
const TICKS: usize = 8;

/// The one line whose message is exactly `text`.
fn the_line<'a>(lines: &'a [String], text: &str) -> &'a String {
    let found: Vec<&String> = lines.iter().filter(|l| message(l) == text).collect();
    assert_eq!(found.len(), 1, "one {text:?} line expected: {lines:#?}");
    found[0]
}

#[test]
fn embassy_tasks_tick_every_250_ms_of_device_time_on_keel_notifications() {
    let dir = keel_vdev::repo_root().join("target/qemu-tests");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{APP}.flash"));
    let _ = std::fs::remove_file(&path);
    flash::create(&path, &flash::new_factory().unwrap()).unwrap();
    let img = elf::image_from_elf(&keel_vdev::app_elf(APP), "1.0.0").unwrap();
    flash::program_app(&path, layout::APP_A, &img).unwrap();
    let dev = Device { visor: keel_vdev::visor_elf(), flash: path, clock: Clock::Deterministic };

    let mut r = dev.start().expect("QEMU starts (run through `cargo xtask test`)");
    r.wait_for("the done line", LIMIT, |l| message(l).starts_with("embassy-ticker: done"))
        .unwrap_or_else(|e| panic!("{e}"));
    let lines = r.kill();

    // The visor is healthy and started the app once: no fault, panic or restart.
    for l in &lines {
        assert!(!l.contains("FATAL") && !l.contains("PANIC"), "visor failure: {l}");
        assert!(!message(l).starts_with("app crash") && !message(l).starts_with("panic"), "app failure: {l}");
    }
    assert_eq!(
        lines.iter().filter(|l| message(l).starts_with(&format!("starting app '{APP}'"))).count(),
        1,
        "{lines:#?}"
    );

    let started = the_line(&lines, "embassy-ticker: started");
    // Both tasks run: the update watcher is waiting before the first tick.
    let watcher = the_line(&lines, "embassy-ticker: waiting for updates");
    assert!(parse_line(started).unwrap().1.starts_with("app"), "app line: {started}");

    // Eight ticks, in order, each at least 250 ms of device time after the previous line (and
    // not much more: nothing but the timer's notification latency and one log call in between).
    let ticks: Vec<&String> = lines.iter().filter(|l| message(l).starts_with("embassy-ticker: tick ")).collect();
    let numbers: Vec<usize> =
        ticks.iter().map(|l| message(l)["embassy-ticker: tick ".len()..].parse().expect("tick number")).collect();
    assert_eq!(numbers, (1..=TICKS).collect::<Vec<_>>(), "{lines:#?}");
    assert!(lines.iter().position(|l| l == watcher) < lines.iter().position(|l| l == ticks[0]));
    let mut previous = started;
    for t in &ticks {
        let gap = time_us(t) - time_us(previous);
        assert!((PERIOD_US..PERIOD_US + 1_000).contains(&gap), "{gap} us from {previous:?} to {t:?}");
        previous = t;
    }

    // The done line: eight ticks, and the app's own measure of the time they took agrees with
    // the console's timestamps.
    let done = lines.iter().find(|l| message(l).starts_with("embassy-ticker: done")).unwrap();
    assert_eq!(field(message(done), "ticks"), Some("8"), "{done}");
    let elapsed: u64 = field(message(done), "elapsed_us").expect("elapsed_us").parse().unwrap();
    assert!(elapsed >= TICKS as u64 * PERIOD_US, "{done}");
    assert!(elapsed <= time_us(done) - time_us(started), "{done} after {started}");
    assert!(time_us(done) >= time_us(ticks[TICKS - 1]), "{done}");
}
