//! Exhaustive power-loss test: a device goes through a full update story — install v2, trial,
//! confirm; install a crashing v3, trial, crash loop, rollback — and the power is cut at every
//! single flash operation of it, once before the operation and once in the middle of it (a torn
//! program unit or a half-erased page). After each cut the device reboots and carries on. At
//! every boot it must run a valid image, the journal must decode, and every story must end in
//! the same place as the uninterrupted one: v2 confirmed in slot B, v3 rolled back.
//!
//! `KEEL_POWERCUT_REPORT=path` writes `{"powercut_points_tested": N, "powercut_failures": F}`
//! for `cargo xtask bench`.

mod common;

use common::*;
use keel_flash::sim::{CutMode, SimFlash};
use keel_flash::{FlashError, Nor, RecordLog};
use keel_update::{Error, Outcome, Phase, Reason, Slot, UpdateState, Updater, JOURNAL_MAGIC, RECORD_SIZE};

struct Story {
    v1: Vec<u8>,
    v2: Vec<u8>,
    v3: Vec<u8>,
}

/// What the device saw, for the assertions.
#[derive(Default, Debug)]
struct Trace {
    boots: u32,
    versions_booted: Vec<String>,
}

fn flash_err(e: Error) -> FlashError {
    match e {
        Error::Flash(e) => e,
        other => panic!("unexpected update error without a power cut: {other:?}"),
    }
}

/// One power cycle: boots and follows the story until it is complete (`Ok`) or the flash
/// fails (`Err`: the power was cut).
fn power_cycle(up: &Updater, f: &mut Nor<SimFlash>, story: &Story, trace: &mut Trace) -> Result<(), FlashError> {
    loop {
        let plan = up.boot(f)?;
        trace.boots += 1;
        // Invariants at every boot: the journal decodes, and the chosen slot holds a valid image.
        let raw = RecordLog::<RECORD_SIZE>::new(JOURNAL.offset, JOURNAL_MAGIC).latest(f)?;
        if let Some((_, p)) = raw {
            assert!(UpdateState::decode(&p[..UpdateState::LEN]).is_some(), "journal record does not decode");
        }
        let running = up
            .check_slot(f, plan.slot)
            .unwrap_or_else(|r| panic!("boot plan {plan:?} points at an invalid image: {}", r.as_str()));
        let version = running.version_str().to_string();
        trace.versions_booted.push(version.clone());
        let s = up.state(f)?;
        if plan.trial {
            match version.as_str() {
                // v2 works: it confirms itself.
                "2" => {
                    up.confirm(f)?;
                }
                // v3 crashes every time it runs; the visor restarts it until the policy says enough.
                "3" => while up.app_crashed(f, false)?.is_none() {},
                v => panic!("trial of unexpected version {v}"),
            }
            continue;
        }
        assert_eq!(version, if s.installed_seq >= 2 { "2" } else { "1" }, "a confirmed app runs: {s:?}");
        // The server's side: deploy v2, then v3; never re-offer a rolled-back sequence.
        let (seq, layer) = if s.installed_seq < 2 {
            (2, &story.v2)
        } else if !matches!(s.last, Some((3, Outcome::RolledBack(_)))) {
            (3, &story.v3)
        } else {
            return Ok(());
        };
        let mut dl = up.offer(f, &offer(seq, layer, policy())).map_err(flash_err)?;
        let mut at = dl.offset() as usize;
        while at < layer.len() {
            let end = (at + 700).min(layer.len());
            dl.write(up, f, &layer[at..end]).map_err(flash_err)?;
            at = end;
        }
        dl.finish(up, f).map_err(flash_err)?;
    }
}

/// Runs the story to its end, with a power cut at `cut` (if any) in the first cycle.
fn run(story: &Story, cut: Option<(u64, CutMode)>) -> (Nor<SimFlash>, Trace, u64) {
    let up = updater();
    let mut f = factory(&story.v1);
    let start = f.medium().ops();
    if let Some((at, mode)) = cut {
        f.medium_mut_for_tests().cut_at(start + at, mode, at.wrapping_mul(7919) ^ mode as u64);
    }
    let mut trace = Trace::default();
    for cycle in 0.. {
        assert!(cycle < 8, "the story does not finish: {trace:?}");
        match power_cycle(&up, &mut f, story, &mut trace) {
            Ok(()) => break,
            Err(FlashError::Fault) => f.medium_mut_for_tests().power_on(),
            Err(e) => panic!("flash error {e:?}"),
        }
    }
    let ops = f.medium().ops() - start;
    (f, trace, ops)
}

fn check_end(f: &Nor<SimFlash>, what: &str) {
    let up = updater();
    let s = up.state(f).unwrap();
    assert_eq!(s.active, Slot::B, "{what}: {s:?}");
    assert_eq!(s.installed_seq, 2, "{what}: {s:?}");
    assert_eq!(s.phase, Phase::Idle, "{what}: {s:?}");
    assert_eq!(s.last, Some((3, Outcome::RolledBack(Reason::CrashLoop))), "{what}: {s:?}");
    assert_eq!(version_in(&up, f, Slot::B).as_deref(), Some("2"), "{what}");
}

#[test]
fn power_cut_at_every_flash_operation_of_update_confirm_and_rollback() {
    let story = Story { v1: image("1", 5000), v2: image("2", 30_000), v3: image("3", 21_000) };
    let (f, trace, total) = run(&story, None);
    check_end(&f, "uninterrupted");
    assert_eq!(trace.versions_booted, ["1", "2", "2", "3", "2"], "factory, trial, confirmed, trial, rolled back");
    assert!(total > 50, "the story exercises the flash: {total} operations");

    let mut points = 0u64;
    let mut failures = Vec::new();
    for at in 0..total {
        for mode in [CutMode::Before, CutMode::Torn] {
            points += 1;
            let what = format!("cut {mode:?} operation {at} of {total}");
            let result = std::panic::catch_unwind(|| {
                let (f, _, _) = run(&story, Some((at, mode)));
                check_end(&f, &what);
            });
            if result.is_err() {
                failures.push(what);
            }
        }
    }
    if let Ok(path) = std::env::var("KEEL_POWERCUT_REPORT") {
        let json = format!("{{\"powercut_points_tested\": {points}, \"powercut_failures\": {}}}\n", failures.len());
        std::fs::write(path, json).unwrap();
    }
    assert!(failures.is_empty(), "{} of {points} power-cut points failed: {failures:#?}", failures.len());
    eprintln!("power cut at {points} points ({total} flash operations, before and torn): all recovered");
}
