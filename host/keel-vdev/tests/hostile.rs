//! Quick QEMU-only checks of the hostile app (no server): the probe sweep over every system
//! address the app must not reach, and one run per attack for a look at the console
//! (`KEEL_HOSTILE_MODE=<attack> cargo test -p keel-vdev --features qemu-tests --test hostile
//! -- --ignored look --nocapture`).
//!
//! The attack is chosen by patching the 16-byte marker `@@hostile-mode@@` in the ELF file (see
//! `firmware/apps/hostile`). The server end-to-end tests are `host/keel-cli/tests/hostile.rs`.
#![cfg(feature = "qemu-tests")]

use std::path::PathBuf;
use std::time::Duration;

use keel_flash::layout;
use keel_vdev::qemu::message;
use keel_vdev::qemu::{Clock, Device, Running};
use keel_vdev::{elf, flash};

/// Wall-clock guard only (virtual time is deterministic; this stops a hung run).
const LIMIT: Duration = Duration::from_secs(200);

/// A device without a server, with the hostile app in `mode` in slot A.
fn device(test: &str, mode: &str) -> Device {
    let dir = keel_vdev::repo_root().join("target/qemu-tests");
    std::fs::create_dir_all(&dir).unwrap();
    let path: PathBuf = dir.join(format!("hostile-{test}.flash"));
    let _ = std::fs::remove_file(&path);
    flash::create(&path, &flash::new_factory().unwrap()).unwrap();
    let img = elf::image_from_elf_bytes(&keel_vdev::hostile_elf(mode).unwrap(), "hostile", "1.0.0").unwrap();
    flash::program_app(&path, layout::APP_A, &img).unwrap();
    Device { visor: keel_vdev::visor_elf(), flash: path, clock: Clock::Deterministic }
}

fn visor_boots(lines: &[String]) -> usize {
    lines.iter().filter(|l| message(l).starts_with("Keel visor ")).count()
}

fn tail(r: &Running) -> String {
    let lines: Vec<&String> = r.lines.iter().filter(|l| !l.contains("Slirp")).collect();
    lines[lines.len().saturating_sub(60)..].iter().map(|l| l.as_str()).collect::<Vec<_>>().join("\n")
}

/// Finding 2, the audit: every system address in the app's probe list (the IoT kit blocks, the
/// board's peripherals, a coarse sweep of 0x4xxxxxxx, the secure aliases, flash, the PPB secure
/// alias) is accessed once per start. Each access must fault and be recorded as an app crash;
/// none may reset the system, hang it, or go through.
#[test]
fn probe_sweep_every_system_address_faults() {
    let dev = device("probe-all", "probe-all");
    let mut r = dev.start().unwrap();
    // Stops at the end of the list, or at the second visor banner (a probe reset the system).
    let banners = std::cell::Cell::new(0);
    let done = r.wait_for("the probe list done (or a reset)", LIMIT, |l| {
        banners.set(banners.get() + usize::from(message(l).starts_with("Keel visor ")));
        message(l).contains("hostile: probe list done") || banners.get() > 1
    });
    let done = done.is_ok_and(|l| message(&l).contains("probe list done"));
    let lines = r.kill();
    let probes: Vec<&String> = lines.iter().filter(|l| message(l).starts_with("hostile: probe ")).collect();
    let wrong: Vec<&&String> = probes.iter().filter(|l| l.contains("WRONG")).collect();
    let crashes = lines.iter().filter(|l| message(l).starts_with("app crash: ") && l.contains("pc=")).count();
    let summary = format!(
        "{} probes started, {} went through without a fault:\n{}\n{} app crashes, {} visor boots",
        probes.len() - wrong.len(),
        wrong.len(),
        wrong.iter().map(|l| l.as_str()).collect::<Vec<_>>().join("\n"),
        crashes,
        visor_boots(&lines)
    );
    eprintln!("{summary}");
    assert!(done, "the sweep did not finish: {summary}\n{}", lines[lines.len().saturating_sub(60)..].join("\n"));
    assert!(wrong.is_empty(), "{summary}");
    assert_eq!(visor_boots(&lines), 1, "no probe may reset the system: {summary}");
    assert!(!lines.iter().any(|l| l.contains("FATAL") || l.contains("PANIC")), "{summary}");
}

/// Finding 3 for longer than the end-to-end test can (there the good update replaces the app
/// within milliseconds): calls made the hostile way (interrupts open) under a SysTick every
/// 50-650 instructions whose handler also makes calls, and (ABI 2) the visor's own notification
/// interrupt re-armed a few microseconds ahead, for 1 s of device time (about 100 000 rounds
/// of every call, 2 million SysTicks): no result may be wrong, the visor must not fault.
#[test]
fn preempted_calls_stay_correct_for_a_while() {
    let dev = device("preempt-return", "preempt-return");
    let mut r = dev.start().unwrap();
    let mut reports = 0;
    while reports < 2 {
        let l = r.wait_for("a preemption report", LIMIT, |l| {
            message(l).starts_with("hostile: preempt round ") || l.contains("FATAL")
        });
        let l = l.unwrap_or_else(|e| panic!("{e}"));
        assert!(!l.contains("FATAL"), "{}", tail(&r));
        reports += 1;
    }
    let lines = r.kill();
    let bad: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("WRONG") || l.contains("FATAL") || message(l).starts_with("app crash"))
        .collect();
    assert!(bad.is_empty(), "{bad:#?}");
    let last = lines.iter().rev().find(|l| message(l).starts_with("hostile: preempt round ")).unwrap();
    eprintln!("{last}");
    assert!(last.ends_with("wrong 0"), "{last}");
}

/// Finding 3 (b) for longer: the SysTick handler abandons whatever it preempted, every 50-650
/// instructions, while the thread makes calls the hostile way; the visor reclaims what is left in
/// its gateway's window. 40 × 256 rounds: no visor fault, no reset.
#[test]
fn abandoned_calls_for_a_while() {
    let dev = device("preempt-abandon", "preempt-abandon");
    let mut r = dev.start().unwrap();
    let banners = std::cell::Cell::new(0);
    for _ in 0..40 {
        let l = r.wait_for("256 more abandons", LIMIT, |l| {
            banners.set(banners.get() + usize::from(message(l).starts_with("Keel visor ")));
            message(l).starts_with("hostile: abandon round ") || l.contains("FATAL") || banners.get() > 1
        });
        let l = l.unwrap_or_else(|e| panic!("{e}"));
        assert!(message(&l).starts_with("hostile: abandon round "), "{}", tail(&r));
    }
    let lines = r.kill();
    assert_eq!(visor_boots(&lines), 1, "no reset");
    assert!(!lines.iter().any(|l| l.contains("FATAL") || l.contains("PANIC")), "{}", lines.join("\n"));
}

/// Findings 1 and 3 at the gateway: a SysTick taken in the instructions around a call's masked
/// body (where the visor's frame is on its stack) returns with a forged EXC_RETURN (SPSEL
/// flipped, S cleared, DCRS cleared, ES set). Each must end in a recorded app crash: no visor
/// fault, no reset.
#[test]
fn forged_returns_in_the_gateway_window_are_app_crashes() {
    for mode in ["window-spsel", "window-s0", "window-dcrs0", "window-es1"] {
        let dev = device(mode, mode);
        let mut r = dev.start().unwrap();
        let banners = std::cell::Cell::new(0);
        let end = r.wait_for("the first crash (or a visor fault or reset)", LIMIT, |l| {
            banners.set(banners.get() + usize::from(message(l).starts_with("Keel visor ")));
            message(l).starts_with("app crash: ") || l.contains("FATAL") || l.contains("PANIC") || banners.get() > 1
        });
        let end = end.unwrap_or_else(|e| panic!("{mode}: {e}"));
        assert!(message(&end).starts_with("app crash: "), "{mode}: {}", tail(&r));
        // The next start runs the attack again, after the backoff, on the same visor.
        r.wait_for("the restart", LIMIT, |l| message(l).starts_with("hostile: attack ") && l.contains("(start 1)"))
            .unwrap_or_else(|e| panic!("{mode}: {e}"));
        let lines = r.kill();
        assert_eq!(visor_boots(&lines), 1, "{mode}: no reset");
        assert!(!lines.iter().any(|l| l.contains("FATAL") || l.contains("PANIC")), "{mode}");
        eprintln!("{mode}: {}", message(&end));
    }
}

/// Finding 7 through a restart, without a server: the app poisons every piece of non-secure
/// core state it can write (and RAM), restarts itself, and its next start must find reset
/// values everywhere.
#[test]
fn poisoned_restart_starts_clean() {
    let dev = device("poison-restart", "poison-restart");
    let mut r = dev.start().unwrap();
    let l = r
        .wait_for("the restarted app's check", LIMIT, |l| {
            message(l).starts_with("hostile: verify clean") || message(l).starts_with("hostile: verify dirty")
        })
        .unwrap_or_else(|e| panic!("{e}"));
    let lines = r.kill();
    let dirty: Vec<&String> = lines.iter().filter(|l| l.contains("DIRTY")).collect();
    assert_eq!(message(&l), "hostile: verify clean", "{dirty:#?}");
}

/// Runs one attack for a while and prints the console (for looking, not checking).
#[test]
#[ignore]
fn look() {
    let mode = std::env::var("KEEL_HOSTILE_MODE").unwrap_or_else(|_| "exc-s1".into());
    let secs: u64 = std::env::var("KEEL_HOSTILE_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(10);
    let dev = device(&format!("look-{mode}"), &mode);
    let mut r = dev.start().unwrap();
    r.run_for(Duration::from_secs(secs));
    let head: Vec<&String> = r.lines.iter().filter(|l| !l.contains("Slirp")).take(40).collect();
    eprintln!("{}\n...\n{}", head.iter().map(|l| l.as_str()).collect::<Vec<_>>().join("\n"), tail(&r));
    let lines = r.kill();
    eprintln!("{} lines, {} visor boots", lines.len(), visor_boots(&lines));
}
