//! FreeRTOS under Keel: five tasks (two equal-priority pairs and one above them) and the 20 kHz
//! SysTick interrupt make system calls concurrently, 1,000,000 calls from the tasks, every
//! result checked by the app (`sdk/c/examples/freertos-stress`). System calls must be safe from
//! any task: a task switch while a task is inside a call must neither hand the call's result to
//! another task nor leave anything on the visor's stacks.
//!
//! The app runs a warm-up of 50,000 calls and restarts itself (code 1), runs the 1,000,000
//! calls and restarts again (code 2). The visor logs its stack high-water at every app start:
//! the high-water after the big phase must equal the one after the warm-up.
//!
//! Run with `cargo xtask test` (it builds the firmware and the C apps first). QEMU runs with
//! `-icount shift=0,sleep=off`; the wall-clock limit only stops a hung run.

use std::path::PathBuf;
use std::time::Duration;

use keel_flash::layout;
use keel_vdev::qemu::{field, message};
use keel_vdev::qemu::{Clock, Device};
use keel_vdev::{elf, flash};

const LIMIT: Duration = Duration::from_secs(600);
const STRESS_CALLS: u64 = 1_000_000;
const WARMUP_CALLS: u64 = 50_000;
/// The app's SysTick rate (FreeRTOSConfig.h) and so the tick period in µs.
const TICK_US: u64 = 50;

fn num(line: &str, key: &str) -> u64 {
    field(line, key)
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
        .trim_end_matches(',')
        .parse()
        .unwrap_or_else(|e| panic!("{key}= in {line:?}: {e}"))
}

/// A line that ends the run early: the visor failed, the app crashed or reported a failure.
fn is_failure(line: &str) -> bool {
    let m = message(line);
    line.contains("FATAL")
        || line.contains("PANIC")
        || m.starts_with("app crash")
        || m.starts_with("reset after")
        || (m.starts_with("freertos-stress:") && (m.contains("ERROR") || m.contains("stopped")))
}

/// `(main, idle)` of the visor's `stack high-water` line logged right after the app start with
/// `restarts=N`.
fn high_water_after_start(lines: &[String], restarts: u32) -> (u64, u64) {
    let start = lines
        .iter()
        .position(|l| {
            message(l).starts_with("starting app 'freertos-stress'") && l.contains(&format!("restarts={restarts} "))
        })
        .unwrap_or_else(|| panic!("no app start with restarts={restarts}"));
    let hw = lines[start..]
        .iter()
        .find(|l| message(l).starts_with("stack high-water:"))
        .unwrap_or_else(|| panic!("no stack high-water line after restart {restarts}"));
    let m = message(hw);
    (num(m, "main"), num(m, "idle"))
}

#[test]
fn freertos_tasks_make_a_million_system_calls_under_a_fast_tick() {
    let dir = keel_vdev::repo_root().join("target/qemu-tests");
    std::fs::create_dir_all(&dir).unwrap();
    let flash_file = dir.join("freertos-stress.flash");
    let _ = std::fs::remove_file(&flash_file);
    let factory = flash::new_factory().unwrap();
    flash::create(&flash_file, &factory).unwrap();
    let app: PathBuf = keel_vdev::repo_root().join("target/c-apps/freertos-stress.elf");
    let img = elf::image_from_elf(&app, "1.0.0").unwrap();
    flash::program_app(&flash_file, layout::APP_A, &img).unwrap();
    let id = String::from_utf8(factory.device_id_ascii().to_vec()).unwrap();

    let dev = Device { visor: keel_vdev::visor_elf(), flash: flash_file, clock: Clock::Deterministic };
    let mut r = dev.start().expect("QEMU starts (run through `cargo xtask test`)");
    let wall = std::time::Instant::now();
    let end = r
        .wait_for("freertos-stress: done", LIMIT, |l| message(l) == "freertos-stress: done" || is_failure(l))
        .unwrap_or_else(|e| panic!("{e}"));
    let elapsed = wall.elapsed();
    let lines = r.kill();
    let console = || lines.join("\n");
    assert!(!is_failure(&end), "the run failed at: {end}\nconsole:\n{}", console());
    println!("warm-up + 1,000,000 calls + 2 restarts: {:.1} s wall clock", elapsed.as_secs_f64());

    // The visor stayed healthy and the app never crashed.
    for l in &lines {
        assert!(!is_failure(l), "{l}\nconsole:\n{}", console());
    }

    // The app saw this device's id (and compared every later answer with it).
    let starts: Vec<&str> = lines
        .iter()
        .map(|l| message(l))
        .filter(|m| m.starts_with("freertos-stress:") && m.contains("start:"))
        .collect();
    assert_eq!(starts.len(), 2, "a warm-up and a stress phase:\n{}", console());
    for s in &starts {
        assert_eq!(field(s, "device"), Some(id.as_str()), "{s}");
    }

    let result = |prefix: &str| -> &str {
        lines
            .iter()
            .map(|l| message(l))
            .find(|m| m.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} line:\n{}", console()))
    };
    let warmup = result("freertos-stress: warm-up calls=");
    let stress = result("freertos-stress: calls=");
    println!("{warmup}\n{stress}");
    // Every task made calls (the pool of calls is shared; the high-priority ones block often).
    for prefix in ["freertos-stress: warm-up calls per task:", "freertos-stress: calls per task:"] {
        let per_task = result(prefix);
        println!("{per_task}");
        let counts: Vec<u64> = per_task[prefix.len()..]
            .split_whitespace()
            .map(|kv| kv.split_once('=').and_then(|(_, v)| v.parse().ok()).unwrap_or_else(|| panic!("{per_task}")))
            .collect();
        assert_eq!(counts.len(), 5, "{per_task}");
        assert!(counts.iter().all(|&c| c > 0), "every task made calls: {per_task}");
    }
    for (line, calls) in [(warmup, WARMUP_CALLS), (stress, STRESS_CALLS)] {
        assert_eq!(num(line, "calls"), calls, "{line}");
        assert_eq!(num(line, "errors"), 0, "{line}");
        // The tick ran at its fast rate throughout, and the tick interrupt made its calls.
        let ticks = num(line, "ticks");
        let expected = num(line, "virtual_us") / TICK_US;
        assert!(ticks * 10 >= expected * 9 && ticks * 10 <= expected * 11, "tick rate: {line}");
        assert!(num(line, "isr_calls") * 10 >= ticks * 9, "{line}");
        assert!(num(line, "switches") > ticks, "task switches: {line}");
        // Every system call runs with non-secure exceptions masked: no tick and no task switch
        // ever interrupted the visor.
        assert_eq!(num(line, "ticks_in_visor"), 0, "{line}");
        assert_eq!(num(line, "switches_in_visor"), 0, "{line}");
    }

    // The visor's stacks: the million calls used no more than the warm-up did.
    let after_warmup = high_water_after_start(&lines, 1);
    let after_stress = high_water_after_start(&lines, 2);
    println!(
        "visor stack high-water (main, idle): after warm-up {after_warmup:?}, after 1,000,000 calls {after_stress:?}"
    );
    assert_eq!(after_stress, after_warmup, "visor stack high-water (main, idle) grew during the stress phase");
}
