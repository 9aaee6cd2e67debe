//! The device core on the host, against the server's real Noise end: connection, logs, updates
//! and every trial policy.

mod common;

use common::*;
use keel_bundle::Policies;
use keel_device::{earliest, AppAction, ConnState};
use keel_link::msg::{BootReason, LinkLossReason, UpdateState, VisorEvent};
use keel_update::{Reason, Slot};

fn state(s: UpdateState) -> u8 {
    s.as_u8()
}

/// A device that boots its factory app and goes online.
fn booted() -> World {
    let mut w = World::new();
    w.run_until(0, &mut |_| AppStep::Run);
    assert_eq!(w.trace, ["launch 1.0.0"]);
    w.online();
    w
}

fn by_link(grace_s: u32) -> Policies<'static> {
    Policies { connectivity_grace_time_s: grace_s, max_trial_crashes: 2, ..Policies::default() }
}

fn by_app() -> Policies<'static> {
    Policies { connectivity_grace_time_s: 0, max_trial_crashes: 2, ..Policies::default() }
}

/// Installs bundle 2 (version 2.0.0) with `policies`; the device restarts into its trial.
fn install(w: &mut World, policies: Policies<'_>) {
    let (env, layer) = bundle(2, "2.0.0", policies);
    w.offer(&env, &layer);
    assert!(w.dev.on_trial(), "console: {:#?}", w.out.console);
    assert_eq!(w.dev.slot(), Slot::B);
}

#[test]
fn boot_connect_handshake_and_logs_are_delivered_once_in_order() {
    let mut w = booted();
    assert!(w.out.wall.is_some(), "the server's clock is set");
    assert_eq!(w.server.received[..2], [Msg::Hello, Msg::Ready]);
    for i in 0..20 {
        w.dev.push_log(w.now, keel_log::Kind::App, 2, format!("line {i}").as_bytes()).unwrap();
    }
    w.pump();
    let texts = w.server.log_texts();
    assert!(texts.iter().any(|t| t.starts_with("boot #1 visor")), "{texts:?}");
    let lines: Vec<_> = texts.iter().filter(|t| t.starts_with("line ")).cloned().collect();
    assert_eq!(lines, (0..20).map(|i| format!("line {i}")).collect::<Vec<_>>());
    assert!(w.dev.logs().is_empty(), "every record acknowledged and released");
}

#[test]
fn a_silent_server_is_dropped_after_100_s_and_the_device_reconnects_after_backoff() {
    let mut w = booted();
    let sessions = w.dev.counters().sessions;
    // The server stops answering (no pings): the device notices within the silence timeout.
    w.server_up = false;
    w.server.auto_ack = false;
    let t0 = w.now;
    w.run_until(t0 + keel_device::conn::SERVER_SILENCE_TIMEOUT_US - 1, &mut |_| AppStep::Run);
    assert!(w.dev.is_online());
    w.run_until(t0 + keel_device::conn::SERVER_SILENCE_TIMEOUT_US, &mut |_| AppStep::Run);
    assert!(matches!(w.dev.connection(), ConnState::Backoff { .. }), "{:?}", w.dev.connection());
    assert!(w.console_has("nothing from the server for 100 s"));
    // While the server is down, attempts fail and back off; when it returns, the device is back.
    w.run_until(w.now + 30 * S, &mut |_| AppStep::Run);
    assert!(!w.dev.is_online());
    w.server_up = true;
    w.server.auto_ack = true;
    w.run_until(w.now + 120 * S, &mut |_| AppStep::Run);
    assert!(w.dev.is_online());
    assert_eq!(w.dev.counters().sessions, sessions + 1);
    let silent = VisorEvent::LinkLost { reason: LinkLossReason::ServerSilent.code() };
    assert!(w.server.received.iter().any(|m| matches!(m, Msg::Event { event, .. } if *event == silent)));
    assert!(w.server.log_texts().iter().any(|t| t == "connection lost (server silent)"));
}

#[test]
fn visor_events_travel_typed_boot_crash_and_update_outcome() {
    let mut w = booted();
    install(&mut w, by_link(600));
    w.run_until(w.now + 10 * S, &mut |w| {
        if w.app.is_some_and(|h| h.version_str() == "2.0.0") {
            AppStep::Crash
        } else {
            AppStep::Run
        }
    });
    let events: Vec<VisorEvent> = w
        .server
        .received
        .iter()
        .filter_map(|m| match m {
            Msg::Event { event, .. } => Some(*event),
            _ => None,
        })
        .collect();
    assert!(events.contains(&VisorEvent::Boot { count: 1, reason: BootReason::PowerOn.code() }));
    assert!(events.contains(&VisorEvent::Online));
    assert!(events.iter().any(|e| matches!(e, VisorEvent::Crash(c) if c.kind == 3)));
    let trial = VisorEvent::Update { sequence: 2, state: UpdateState::Trial.as_u8(), reason: 0 };
    let rolled_back =
        VisorEvent::Update { sequence: 2, state: UpdateState::RolledBack.as_u8(), reason: Reason::CrashLoop as u16 };
    assert!(events.contains(&trial), "{events:?}");
    assert!(events.contains(&rolled_back), "{events:?}");
    assert!(w.server.log_texts().iter().any(|t| t == "update 2: rolled_back (crash loop)"));
}

#[test]
fn a_server_message_of_an_unknown_kind_is_skipped_and_counted_not_fatal() {
    let mut w = booted();
    // A well-formed message of a variant this device does not know, in the skippable range.
    let frame = w.server.session.as_mut().unwrap().send_raw(&[0x82, 0x18, 0x64, 0x80]).unwrap();
    w.server.to_device.extend(frame);
    w.pump();
    assert_eq!(w.dev.counters().unknown_skipped, 1);
    assert_eq!(w.dev.counters().protocol_errors, 0);
    assert!(w.dev.is_online(), "the connection stays up");
    // And the link still works both ways.
    w.dev.push_log(w.now, keel_log::Kind::App, 2, b"after the unknown message").unwrap();
    w.pump();
    assert!(w.server.log_texts().iter().any(|t| t == "after the unknown message"));
    // A variant outside the skippable range is malformed: that connection ends, nothing else.
    let frame = w.server.session.as_mut().unwrap().send_raw(&[0x82, 0x18, 0xC8, 0x80]).unwrap();
    w.server.to_device.extend(frame);
    w.pump();
    assert_eq!(w.dev.counters().protocol_errors, 1);
    w.run_until(w.now + 5 * S, &mut |_| AppStep::Run);
    assert!(w.dev.is_online(), "reconnected");
    assert_eq!(w.dev.counters().unknown_skipped, 1, "counted across connections");
}

#[test]
fn garbage_from_the_server_ends_only_that_connection() {
    let mut w = booted();
    // An oversized frame header, then the device must back off and reconnect cleanly.
    let used = w.dev.receive(w.now, &[0xFF, 0xFF, 1, 2, 3], &mut w.out);
    assert_eq!(used, 5);
    assert_eq!(w.dev.counters().protocol_errors, 1);
    assert!(matches!(w.dev.connection(), ConnState::Backoff { .. }));
    w.run_until(w.now + 5 * S, &mut |_| AppStep::Run);
    assert!(w.dev.is_online(), "reconnected");
    // A frame that fails to authenticate.
    let used = w.dev.receive(w.now, &[0, 20, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9], &mut w.out);
    assert_eq!(used, 22);
    assert_eq!(w.dev.counters().protocol_errors, 2);
    assert_eq!(w.trace, ["launch 1.0.0"], "the app never noticed");
}

#[test]
fn an_update_is_downloaded_installed_and_confirmed_by_the_app() {
    let mut w = booted();
    install(&mut w, by_app());
    // The app restarts into the trial and confirms.
    w.run_until(w.now, &mut |w| {
        assert_eq!(w.dev.app_confirm(w.now, &mut w.out), keel_abi::Status::Ok);
        AppStep::Run
    });
    assert_eq!(w.trace, ["launch 1.0.0", "launch 2.0.0"]);
    assert!(!w.dev.on_trial());
    assert_eq!(w.dev.journal().installed_seq, 2);
    assert_eq!(w.dev.journal().active, Slot::B);
    assert_eq!(
        w.server.states(),
        [
            state(UpdateState::Idle),
            state(UpdateState::Downloading),
            state(UpdateState::Trial),
            state(UpdateState::Confirmed)
        ]
    );
    assert!(w.console_has("update: confirmed seq 2 (by the app)"));
    assert!(w.console_has("update: flash used by seq 2"));
    assert_eq!(w.dev.update_info().installed_sequence, 2);
}

/// A shell that decided to restart the app from slot A and started it only after an update was
/// installed (the visor's service pass did: it asked the core what to run before the network
/// poll that received the update's last chunk) must not have the old image stand for the trial:
/// that instance is not counted, the core asks for the trial's slot at once, and the update is
/// confirmed as usual. Before, the old image ran as the trial, gave no sign of life as the new
/// app, and the good update was rolled back.
#[test]
fn a_launch_decided_before_an_update_was_installed_does_not_stand_for_its_trial() {
    let mut w = booted();
    w.dev.app_restart(w.now, 0, &mut w.out);
    assert_eq!(w.dev.poll(w.now, &mut w.out), AppAction::Launch(Slot::A));
    // Before the shell acts on that, the update arrives and is installed: the trial runs from B.
    install(&mut w, by_link(30));
    // The shell starts what it had decided: slot A's image.
    let old = w.updater.check_slot(w.dev.flash(), Slot::A).unwrap();
    w.dev.app_launched(w.now, Slot::A, old);
    assert!(w.dev.on_trial());
    assert_eq!(w.dev.poll(w.now, &mut w.out), AppAction::Launch(Slot::B), "the trial's image is started at once");
    w.run_until(w.now + 31 * S, &mut |_| AppStep::Run);
    assert_eq!(w.trace.last().map(String::as_str), Some("launch 2.0.0"));
    assert!(!w.dev.on_trial());
    assert_eq!(w.dev.journal().installed_seq, 2);
    assert_eq!(w.server.states().last(), Some(&state(UpdateState::Confirmed)));
}

#[test]
fn a_trial_with_the_link_up_for_the_grace_time_is_confirmed_by_the_link() {
    let mut w = booted();
    install(&mut w, by_link(30));
    w.run_until(w.now + 29 * S, &mut |_| AppStep::Run);
    assert!(w.dev.on_trial());
    w.run_until(w.now + 2 * S, &mut |_| AppStep::Run);
    assert!(!w.dev.on_trial());
    assert_eq!(w.dev.journal().installed_seq, 2);
    assert!(w.console_has("ran the grace time with the cloud link up"));
    assert_eq!(w.server.states().last(), Some(&state(UpdateState::Confirmed)));
}

#[test]
fn a_trial_whose_link_drops_is_rolled_back_even_if_it_returns() {
    let mut w = booted();
    install(&mut w, by_link(60));
    w.run_until(w.now + 10 * S, &mut |_| AppStep::Run);
    // The link drops (the peer closes), then comes back before the grace time ends.
    w.dev.tcp_closed(w.now, &mut w.out);
    w.run_until(w.now + 10 * S, &mut |_| AppStep::Run);
    assert!(w.dev.is_online(), "back online");
    w.run_until(w.now + 60 * S, &mut |_| AppStep::Run);
    assert!(!w.dev.on_trial());
    assert_eq!(w.dev.journal().installed_seq, 0);
    assert_eq!(w.dev.journal().last, Some((2, keel_update::Outcome::RolledBack(Reason::NoLink))));
    assert_eq!(w.dev.slot(), Slot::A);
    assert_eq!(w.trace.last().map(String::as_str), Some("launch 1.0.0"), "the previous app runs again");
}

#[test]
fn a_trial_that_never_sees_the_link_is_rolled_back() {
    let mut w = booted();
    install(&mut w, by_link(20));
    // The link goes away for good right after the install.
    w.server_up = false;
    w.dev.tcp_closed(w.now, &mut w.out);
    w.run_until(w.now + 25 * S, &mut |_| AppStep::Run);
    assert_eq!(w.dev.journal().last, Some((2, keel_update::Outcome::RolledBack(Reason::NoLink))));
    assert_eq!(w.dev.slot(), Slot::A);
}

#[test]
fn a_trial_app_that_does_not_confirm_is_rolled_back_after_the_app_confirm_timeout() {
    let mut w = booted();
    install(&mut w, by_app());
    let t = keel_update::agent::APP_CONFIRM_TIMEOUT_S as u64 * S;
    w.run_until(w.now + t - S, &mut |_| AppStep::Run);
    assert!(w.dev.on_trial());
    w.run_until(w.now + 2 * S, &mut |_| AppStep::Run);
    assert_eq!(w.dev.journal().last, Some((2, keel_update::Outcome::RolledBack(Reason::NotConfirmed))));
    assert_eq!(w.server.states().last(), Some(&state(UpdateState::RolledBack)));
}

#[test]
fn a_crashing_trial_app_is_rolled_back_after_its_crash_budget() {
    let mut w = booted();
    install(&mut w, by_link(600));
    w.run_until(w.now + 10 * S, &mut |w| {
        if w.app.is_some_and(|h| h.version_str() == "2.0.0") {
            AppStep::Crash
        } else {
            AppStep::Run
        }
    });
    assert_eq!(w.dev.journal().last, Some((2, keel_update::Outcome::RolledBack(Reason::CrashLoop))));
    assert_eq!(w.trace, ["launch 1.0.0", "launch 2.0.0", "crash", "launch 2.0.0", "crash", "launch 1.0.0"]);
    assert!(w.server.log_texts().iter().any(|t| t.starts_with("app crash: ")));
}

#[test]
fn a_trial_app_that_panics_at_every_start_is_rolled_back_not_confirmed_by_the_link() {
    let mut w = booted();
    install(&mut w, by_link(5));
    w.run_until(w.now + 30 * S, &mut |w| {
        if w.app.is_some_and(|h| h.version_str() == "2.0.0") {
            AppStep::Restart
        } else {
            AppStep::Run
        }
    });
    assert_eq!(w.dev.journal().installed_seq, 0);
    assert_eq!(w.dev.journal().last, Some((2, keel_update::Outcome::RolledBack(Reason::CrashLoop))));
}

#[test]
fn a_hanging_trial_app_is_rolled_back_by_its_watchdog() {
    let mut w = booted();
    install(&mut w, by_link(600));
    w.run_until(w.now + 60 * S, &mut |w| {
        if w.app.is_some_and(|h| h.version_str() == "2.0.0") {
            assert_eq!(w.dev.watchdog_start(w.now, 1000), keel_abi::Status::Ok);
        }
        AppStep::Run
    });
    assert_eq!(w.dev.journal().last, Some((2, keel_update::Outcome::RolledBack(Reason::Watchdog))));
    assert!(w.trace.iter().filter(|t| *t == "watchdog").count() >= 2);
}

#[test]
fn a_polite_update_waits_for_the_app_or_its_politeness_time() {
    // The app applies it.
    let mut w = booted();
    let (env, layer) = bundle(2, "2.0.0", Policies { max_politeness_time_s: 100, ..by_app() });
    w.offer(&env, &layer);
    assert!(!w.dev.on_trial(), "held for the app");
    assert!(w.dev.app_events_pending());
    assert_eq!(w.dev.take_app_events(), keel_device::events::UPDATE_READY);
    assert_eq!(w.dev.take_app_events(), 0, "reported once");
    assert!(w.dev.app_apply(w.now, &mut w.out));
    assert!(w.dev.on_trial());
    assert!(w.console_has("update: applying (asked by the app)"));

    // Nobody applies it: the politeness time does.
    let mut w = booted();
    w.offer(&env, &layer);
    w.run_until(w.now + 99 * S, &mut |_| AppStep::Run);
    assert!(!w.dev.on_trial());
    w.run_until(w.now + 2 * S, &mut |_| AppStep::Run);
    assert!(w.dev.on_trial());
    assert!(w.console_has("update: applying (politeness time over)"));
    assert_eq!(w.trace.last().map(String::as_str), Some("launch 2.0.0"));
}

#[test]
fn a_bundle_signed_by_another_key_is_refused_and_nothing_is_written() {
    let mut w = booted();
    let slot = image("2.0.0", 1000);
    let layers = [keel_bundle::LayerSpec { id: "app", target: keel_bundle::Target::AppSlot, bytes: &slot }];
    let other = keel_bundle::SigningKey::from_bytes(&[1; 32]);
    let b = keel_bundle::build_bundle(
        &keel_bundle::BundleSpec { sequence: 5, layers: &layers, policies: Policies::default() },
        &other,
        |_| Some(SLOT),
    )
    .unwrap();
    let env = keel_bundle::split_bundle(&b).unwrap().envelope;
    w.offer(&env, &slot);
    assert_eq!(w.server.states().last(), Some(&state(UpdateState::Refused)));
    assert!(!w.dev.on_trial());
    assert_eq!(w.dev.journal().phase, keel_update::Phase::Idle);
}

#[test]
fn a_download_interrupted_by_a_reboot_resumes_from_its_last_page() {
    let mut w = booted();
    let (env, layer) = bundle(2, "2.0.0", by_app());
    // Serve only the first two pages, then power-cycle.
    w.server.stall_at = Some(2 * keel_flash::PAGE_SIZE);
    w.offer(&env, &layer);
    assert_eq!(w.server.states().last(), Some(&state(UpdateState::Downloading)));
    w.reboot(2);
    w.run_until(w.now, &mut |_| AppStep::Run);
    w.online();
    // The device reports where it was; the server offers again; the download resumes.
    w.offer(&env, &layer);
    let first_fetch = w.server.received.iter().find_map(|m| match m {
        Msg::Fetch { offset, .. } => Some(*offset),
        _ => None,
    });
    assert!(first_fetch.is_some_and(|o| o >= keel_flash::PAGE_SIZE), "resumed at {first_fetch:?}");
    assert!(w.dev.on_trial());
}

#[test]
fn the_next_deadline_is_the_earliest_of_every_subsystem() {
    assert_eq!(earliest([None, Some(5), None, Some(3)]), Some(3));
    assert_eq!(earliest([None::<u64>, None]), None);
    let mut w = booted();
    install(&mut w, by_link(30));
    w.run_until(w.now, &mut |_| AppStep::Run);
    // Online: the silence timeout; on trial: the grace time (earlier); the app runs (no backoff).
    let grace_end = w.now + 30 * S;
    assert_eq!(w.dev.poll_at(), Some(grace_end));
    // A watchdog armed for 1 s comes first.
    w.dev.watchdog_start(w.now, 1000);
    assert_eq!(w.dev.poll_at(), Some(w.now + S));
}

#[test]
fn the_single_entry_point_answers_like_the_typed_methods() {
    use keel_device::{Input, Response};
    let mut w = booted();
    let r =
        w.dev.handle(w.now, Input::Log { kind: keel_log::Kind::App, level: 2, text: b"through handle" }, &mut w.out);
    assert!(matches!(r, Response::Logged(Ok(seq)) if seq >> 32 == 1));
    assert_eq!(w.dev.handle(w.now, Input::AppConfirm, &mut w.out), Response::Status(keel_abi::Status::Unavailable));
    assert_eq!(w.dev.handle(w.now, Input::AppApply, &mut w.out), Response::Applied(false));
    assert_eq!(w.dev.handle(w.now, Input::Received(&[]), &mut w.out), Response::Consumed(0));
    let report = keel_abi::CrashReport { version: 1, kind: 3, ..Default::default() };
    let r = w.dev.handle(w.now, Input::AppCrashed { report, watchdog: false }, &mut w.out);
    assert_eq!(r, Response::RestartIn(1_000_000), "first crash: the minimum backoff");
    assert_eq!(w.dev.last_crash().map(|c| c.kind), Some(3));
    w.pump();
    assert!(w.server.log_texts().iter().any(|t| t == "through handle"));
}

#[test]
fn a_server_that_claims_more_logs_than_the_device_numbered_does_not_stop_its_logs() {
    let mut w = World::new();
    // The server stored records of a later boot (the device's boot counter went back: reflashed).
    w.server.log_acked = Some((7 << 32) | 500);
    w.run_until(0, &mut |_| AppStep::Run);
    w.online();
    w.dev.push_log(w.now, keel_log::Kind::App, 2, b"still heard").unwrap();
    w.pump();
    assert!(w.server.log_texts().iter().any(|t| t == "still heard"), "{:?}", w.server.log_texts());
    assert!(!w.dev.wants_transmit(), "nothing left that the device believes it must send");
}

#[test]
fn a_trial_end_the_journal_cannot_record_is_retried_later_not_spun_on() {
    use keel_flash::sim::CutMode;
    let mut w = booted();
    install(&mut w, by_link(30));
    w.run_until(w.now, &mut |_| AppStep::Run);
    assert!(w.dev.on_trial());
    let installed = w.dev.update_info().installed_sequence;
    // From now on every flash operation fails (the power is going, the visor has not reset yet).
    let at = w.dev.flash().medium().ops();
    w.dev.flash_mut_for_tests().medium_mut_for_tests().cut_at(at, CutMode::Before, 1);
    w.now += 31 * S;
    w.dev.poll(w.now, &mut w.out);
    assert!(w.dev.on_trial(), "nothing was decided");
    let next = w.dev.poll_at().unwrap();
    assert!(next > w.now, "the next attempt is in the future, not a deadline already past: {next} <= {}", w.now);
    assert_eq!(w.dev.update_info().installed_sequence, installed, "the cached journal state is kept");
}

// ------------------------------------------------------------------ issue 9: hostile apps

/// Visor events the server received.
fn events(w: &World) -> Vec<VisorEvent> {
    w.server
        .received
        .iter()
        .filter_map(|m| match m {
            Msg::Event { event, .. } => Some(*event),
            _ => None,
        })
        .collect()
}

/// The app of version `v` does `step` at every launch; any other app runs.
fn version_does(v: &'static str, step: fn() -> AppStep) -> impl FnMut(&mut World) -> AppStep {
    move |w: &mut World| if w.app.is_some_and(|h| h.version_str() == v) { step() } else { AppStep::Run }
}

#[test]
fn a_flood_of_app_logs_while_offline_cannot_evict_the_visors_boot_crash_and_update_events() {
    let mut w = booted();
    install(&mut w, by_link(600));
    // The link goes away; the device reboots into the trial (boot and trial events), the trial
    // app crashes twice (crash events) and is rolled back (update event), all offline.
    w.server_up = false;
    w.dev.tcp_closed(w.now, &mut w.out);
    w.power_cycle();
    w.server_up = false;
    w.run_until(w.now + 10 * S, &mut version_does("2.0.0", || AppStep::Crash));
    assert_eq!(w.dev.journal().last, Some((2, keel_update::Outcome::RolledBack(Reason::CrashLoop))));
    // Then the app floods the ring: 20 lines of 512 bytes, more than the whole 8 KiB ring.
    for i in 0..20u8 {
        let _ = w.dev.push_log(w.now, keel_log::Kind::App, 2, &[b'a' + i; 512]);
    }
    w.server_up = true;
    w.dev.address_acquired(w.now, &mut w.out);
    w.run_until(w.now + 120 * S, &mut |_| AppStep::Run);
    assert!(w.dev.is_online());
    let ev = events(&w);
    assert!(ev.contains(&VisorEvent::Boot { count: 2, reason: BootReason::PowerOn.code() }), "{ev:?}");
    assert_eq!(ev.iter().filter(|e| matches!(e, VisorEvent::Crash(_))).count(), 2, "{ev:?}");
    let trial = VisorEvent::Update { sequence: 2, state: UpdateState::Trial.as_u8(), reason: 0 };
    let rolled_back =
        VisorEvent::Update { sequence: 2, state: UpdateState::RolledBack.as_u8(), reason: Reason::CrashLoop as u16 };
    assert!(ev.contains(&trial) && ev.contains(&rolled_back), "{ev:?}");
    // The app lines that did not fit were dropped and reported as such.
    let dropped: u64 = w.server.received.iter().map(|m| if let Msg::Dropped { count } = m { *count } else { 0 }).sum();
    let lines = w.server.received.iter().filter(|m| matches!(m, Msg::Log { .. })).count() as u64;
    assert!(dropped >= 9 && lines + dropped == 20, "{lines} lines, {dropped} dropped");
}

#[test]
fn app_log_text_reaches_the_server_escaped_so_it_cannot_forge_a_visor_line() {
    let mut w = booted();
    let forged = b"ok\n       7 [   12.000000 visor] update: confirmed seq 99 (by the app)\x1b]0;x\x07";
    w.dev.push_log(w.now, keel_log::Kind::App, 2, forged).unwrap();
    w.pump();
    let texts = w.server.log_texts();
    let got = texts.iter().find(|t| t.starts_with("ok")).expect("delivered");
    assert_eq!(got, "ok\\x0a       7 [   12.000000 visor] update: confirmed seq 99 (by the app)\\x1b]0;x\\x07");
    assert!(!got.chars().any(|c| c.is_control()));
}

#[test]
fn a_trial_app_restarting_early_with_any_code_counts_as_a_trial_crash() {
    let mut w = booted();
    install(&mut w, by_link(600));
    let mut restarts = 0;
    w.run_until(w.now + 30 * S, &mut |w| {
        if w.app.is_some_and(|h| h.version_str() == "2.0.0") && restarts < 10 {
            restarts += 1;
            w.dev.app_restart(w.now, 0, &mut w.out); // not the panic code: a C app's `main` returned
            w.running = false;
        }
        AppStep::Run
    });
    assert_eq!(w.dev.journal().last, Some((2, keel_update::Outcome::RolledBack(Reason::CrashLoop))));
    assert_eq!(restarts, 2, "rolled back after its crash budget of 2");
}

#[test]
fn a_trial_app_that_panics_late_counts_a_deliberate_late_restart_does_not() {
    let mut w = booted();
    install(&mut w, Policies { max_trial_crashes: 1, ..by_link(600) });
    w.run_until(w.now + 40 * S, &mut |_| AppStep::Run);
    // After 40 s a deliberate restart (code 7) is no trial crash...
    w.dev.app_restart(w.now, 7, &mut w.out);
    w.running = false;
    w.run_until(w.now + 40 * S, &mut |_| AppStep::Run);
    assert!(w.dev.on_trial());
    // ...but a panic is, however late.
    w.dev.app_restart(w.now, keel_device::trial::PANIC_RESTART_CODE, &mut w.out);
    assert_eq!(w.dev.journal().last, Some((2, keel_update::Outcome::RolledBack(Reason::CrashLoop))));
}

#[test]
fn confirm_by_link_needs_a_sign_of_life_from_the_trial_app() {
    let mut w = booted();
    install(&mut w, by_link(60));
    w.lively = false; // the new app runs, but never kicks a watchdog, logs or asks anything
    w.run_until(w.now + 61 * S, &mut |_| AppStep::Run);
    assert_eq!(w.dev.journal().installed_seq, 0, "not confirmed");
    assert_eq!(w.dev.journal().last, Some((2, keel_update::Outcome::RolledBack(Reason::NoSignOfLife))));
    assert!(w.console_has("update: rolled back seq 2 (no sign of life from the trial app)"));
    assert_eq!(w.trace.last().map(String::as_str), Some("launch 1.0.0"));

    // A sign of life older than 10 s at the end of the grace time is not enough either.
    let mut w = booted();
    install(&mut w, Policies { connectivity_grace_time_s: 60, ..by_link(60) });
    w.lively = false;
    w.run_until(w.now + 40 * S, &mut |_| AppStep::Run);
    w.dev.push_log(w.now, keel_log::Kind::App, 2, b"alive at 40 s").unwrap();
    w.run_until(w.now + 21 * S, &mut |_| AppStep::Run);
    assert_eq!(w.dev.journal().last, Some((2, keel_update::Outcome::RolledBack(Reason::NoSignOfLife))));

    // A log line or a watchdog kick in the last 10 s is.
    let mut w = booted();
    install(&mut w, by_link(60));
    w.lively = false;
    w.run_until(w.now + 55 * S, &mut |_| AppStep::Run);
    assert_eq!(w.dev.watchdog_kick(w.now), keel_abi::Status::Unavailable, "never armed, still a sign of life");
    w.run_until(w.now + 6 * S, &mut |_| AppStep::Run);
    assert_eq!(w.dev.journal().installed_seq, 2);
}

#[test]
fn confirm_by_link_needs_the_running_instance_to_have_run_half_the_grace_time() {
    let mut w = booted();
    install(&mut w, by_link(60));
    // The trial app crashes once 50 s in (one crash of its budget of 2): the instance running
    // at the end of the grace time is 9 s old.
    w.run_until(w.now + 50 * S, &mut |_| AppStep::Run);
    let report = keel_abi::CrashReport { version: 1, kind: 3, ..Default::default() };
    w.dev.app_crashed(w.now, report, false, &mut w.out);
    w.running = false;
    w.run_until(w.now + 11 * S, &mut |_| AppStep::Run);
    assert_eq!(w.dev.journal().last, Some((2, keel_update::Outcome::RolledBack(Reason::NoSignOfLife))));
}

#[test]
fn only_the_running_trial_instance_can_confirm() {
    // The old app cannot confirm the update it applies, between the apply and the new app's start.
    let mut w = booted();
    let (env, layer) = bundle(2, "2.0.0", Policies { max_politeness_time_s: 100, ..by_app() });
    w.offer(&env, &layer);
    assert!(w.dev.app_apply(w.now, &mut w.out));
    assert!(w.dev.on_trial());
    assert_eq!(w.dev.app_confirm(w.now, &mut w.out), keel_abi::Status::Unavailable);
    assert_eq!(w.dev.update_info().on_trial, 1);
    // Nor can it when the install restarts the app without asking it.
    let mut w = booted();
    install(&mut w, by_app());
    assert_eq!(w.dev.app_confirm(w.now, &mut w.out), keel_abi::Status::Unavailable);
    // A crashed trial instance cannot either (e.g. from a handler still running after the fault).
    w.run_until(w.now, &mut |_| AppStep::Crash);
    assert_eq!(w.dev.app_confirm(w.now, &mut w.out), keel_abi::Status::Unavailable);
    // The trial app, once launched, can.
    w.run_until(w.now + 5 * S, &mut |w| {
        assert_eq!(w.dev.app_confirm(w.now, &mut w.out), keel_abi::Status::Ok);
        AppStep::Run
    });
    assert_eq!(w.dev.journal().installed_seq, 2);
}

#[test]
fn a_restart_storm_is_slowed_down_without_counting_crashes() {
    let mut w = booted();
    let mut launches = Vec::new();
    w.dev.app_restart(w.now, 1, &mut w.out);
    w.running = false;
    w.run_until(w.now + 10 * S, &mut |w| {
        launches.push(w.now);
        if launches.len() < 100 {
            AppStep::Restart
        } else {
            AppStep::Run
        }
    });
    // 3 restarts at once, then 1 s, 2 s, 4 s apart: 6 launches in 10 s (not thousands).
    let t0 = launches[0];
    let at: Vec<u64> = launches.iter().map(|t| (t - t0) / S).collect();
    assert_eq!(at, [0, 0, 0, 1, 3, 7], "{launches:?}");
    let bi = w.dev.boot_info();
    assert_eq!((bi.reason, bi.crash_count), (keel_abi::StartReason::Requested as u32, 0));
    assert!(w.console_has("app: restart storm: the restart waits 4000 ms"));
}

// ------------------------------------------------------------------ reset loops and quarantine

use keel_link::msg::ReleaseReason;
use keel_supervisor::handover::{ResetCause, RunState};

/// The app (whatever runs) is reset under it `n` times with no cause recorded (a hostile app
/// resetting the system), each time after it started again. The device stays offline.
fn unexplained_resets(w: &mut World, n: u32) {
    for _ in 0..n {
        w.run_until(w.now + 70 * S, &mut |_| AppStep::Run);
        assert!(w.running, "the app runs before the reset: {:?}", w.trace);
        let record = w.dev.run_record();
        assert!(record.app_running());
        w.warm_reset(Some(record));
    }
}

fn quarantine_world() -> World {
    let mut w = World::new();
    w.run_until(0, &mut |_| AppStep::Run);
    assert_eq!(w.trace, ["launch 1.0.0"]);
    w
}

#[test]
fn the_run_record_is_offered_when_it_changes_and_carries_the_crash_over_a_reset() {
    let mut w = quarantine_world();
    let r = w.dev.take_run_record().expect("the first call always returns it");
    assert_eq!(r.app, RunState::Running);
    assert_eq!(w.dev.take_run_record(), None, "unchanged");
    w.dev.app_crashed(w.now, keel_abi::CrashReport { version: 1, kind: 5, ..Default::default() }, false, &mut w.out);
    w.running = false;
    let r = w.dev.take_run_record().expect("changed");
    assert_eq!((r.app, r.carry.crash_count, r.last_crash.map(|c| c.kind)), (RunState::Backoff, 1, Some(5)));
    // A reset while the app waits for its backoff: not a crash, the series and report go on.
    w.warm_reset(Some(r));
    assert_eq!(w.dev.last_crash().map(|c| c.kind), Some(5));
    assert_eq!(w.dev.boot_info().crash_count, 1);
    w.run_until(w.now + 2 * S, &mut |_| AppStep::Run);
    assert!(w.running);
    assert_eq!(w.dev.boot_info().restart_count, 1);
}

#[test]
fn three_unexplained_resets_quarantine_the_app_until_an_offered_update_installs_and_runs() {
    let mut w = quarantine_world();
    let (envelope, layer) = bundle(2, "2.0.0", by_app());
    let release = Release { seq: 2, envelope, layer, retry_after_rollback: false };
    w.server.deployment = Some(Deployment { releases: vec![release], target: |_| Some(0) });
    unexplained_resets(&mut w, 2);
    assert!(!w.dev.quarantined(), "two in a row: backoff only");
    let crash = w.dev.last_crash().expect("the reset is a crash of the app");
    assert_eq!(crash.kind, keel_abi::FaultKind::Reset as u32);
    unexplained_resets(&mut w, 1);
    assert!(w.dev.quarantined());
    assert_eq!(w.dev.boot_info().crash_count, 3);
    assert!(w.console_has("app: quarantined after 3 crashes in a row"));
    // Offline, it stays stopped (well past its 4 s backoff).
    let launches = w.trace.len();
    let t0 = w.now;
    w.run_until(t0 + 60 * S, &mut |_| AppStep::Run);
    assert_eq!(w.trace.len(), launches, "{:?}", w.trace);
    // The link comes up: the server offers 2.0.0, it installs and runs on trial right away.
    w.dev.address_acquired(w.now, &mut w.out);
    w.run_until(w.now + 5 * S, &mut |_| AppStep::Run);
    assert_eq!(w.trace.last().map(String::as_str), Some("launch 2.0.0"));
    assert!(w.dev.on_trial() && !w.dev.quarantined());
    assert!(w.now - t0 < 66 * S);
    let ev = events(&w);
    assert!(ev.contains(&VisorEvent::Boot { count: w.boots, reason: BootReason::UnexplainedReset.code() }), "{ev:?}");
    assert!(ev.contains(&VisorEvent::AppQuarantined { crashes: 3 }), "{ev:?}");
    assert!(ev.contains(&VisorEvent::AppReleased { reason: ReleaseReason::UpdateInstalled.code() }), "{ev:?}");
    assert!(ev.iter().any(|e| matches!(e, VisorEvent::Crash(c) if c.kind == keel_abi::FaultKind::Reset as u32)));
    assert_eq!(w.dev.supervisor().consecutive_crashes(), 0, "a new version starts a new series");
}

#[test]
fn a_quarantined_app_runs_again_when_the_server_has_nothing_to_install() {
    let mut w = quarantine_world();
    unexplained_resets(&mut w, 3);
    assert!(w.dev.quarantined());
    let launches = w.trace.len();
    w.online();
    assert!(w.server.no_updates_sent >= 1);
    assert!(!w.dev.quarantined());
    w.run_until(w.now + 5 * S, &mut |_| AppStep::Run);
    assert_eq!(w.trace.len(), launches + 1, "started once its 4 s backoff ran out");
    assert!(events(&w).contains(&VisorEvent::AppReleased { reason: ReleaseReason::NothingToInstall.code() }));
}

#[test]
fn an_offline_quarantined_app_starts_after_the_time_bound() {
    let mut w = quarantine_world();
    unexplained_resets(&mut w, 3);
    let launches = w.trace.len();
    let t0 = w.now;
    w.run_until(t0 + 120 * S - 1, &mut |_| AppStep::Run);
    assert_eq!(w.trace.len(), launches);
    w.run_until(t0 + 120 * S, &mut |_| AppStep::Run);
    assert_eq!(w.trace.len(), launches + 1);
    assert!(w.console_has("app: released from quarantine (no update check in time)"));
}

#[test]
fn a_server_that_never_answers_holds_the_app_for_the_idle_time_plus_the_bound_at_most() {
    let mut w = quarantine_world();
    w.server.answers_no_update = false;
    unexplained_resets(&mut w, 3);
    w.server.answers_no_update = false;
    let launches = w.trace.len();
    let t0 = w.now;
    w.online();
    let bound = keel_device::quarantine::CHECK_IDLE_US + 120 * S;
    // The server keeps the connection alive (it pings) but never answers the status.
    let mut nonce = 0;
    while w.now < t0 + bound - 1 {
        w.run_until((w.now + 20 * S).min(t0 + bound - 1), &mut |_| AppStep::Run);
        nonce += 1;
        w.server.send(&keel_link::msg::Down::Ping { nonce });
        w.pump();
    }
    assert!(w.dev.is_online());
    assert_eq!(w.trace.len(), launches);
    w.run_until(t0 + bound, &mut |_| AppStep::Run);
    assert_eq!(w.trace.len(), launches + 1);
}

#[test]
fn a_visor_reset_to_start_the_app_is_not_a_crash() {
    let mut w = quarantine_world();
    for _ in 0..5 {
        w.run_until(w.now + S, &mut |_| AppStep::Run);
        assert!(w.running);
        let launches = w.trace.len();
        w.warm_reset(Some(w.dev.run_record().with_cause(ResetCause::StartApp)));
        w.run_until(w.now, &mut |_| AppStep::Run);
        assert_eq!(w.trace.len(), launches + 1, "started again at once");
    }
    assert!(!w.dev.quarantined());
    let bi = w.dev.boot_info();
    assert_eq!((bi.crash_count, bi.restart_count), (0, 5));
    assert!(w.dev.last_crash().is_none());
    w.online();
    assert!(events(&w).contains(&VisorEvent::Boot { count: w.boots, reason: BootReason::StartApp.code() }));
}

#[test]
fn three_crashes_in_a_row_quarantine_too_and_a_quarantine_survives_a_reset() {
    let mut w = quarantine_world();
    w.online();
    w.server.answers_no_update = false; // an older server: the check stays under way
    w.dev.app_crashed(w.now, keel_abi::CrashReport { version: 1, kind: 3, ..Default::default() }, false, &mut w.out);
    w.running = false;
    w.run_until(w.now + 10 * S, &mut |_| AppStep::Crash);
    assert!(w.dev.quarantined());
    assert_eq!(w.trace, ["launch 1.0.0", "launch 1.0.0", "crash", "launch 1.0.0", "crash"]);
    // The visor resets (a visor fault, say): still quarantined, and the reset is no extra crash.
    let r = w.dev.run_record().with_cause(ResetCause::VisorFault { pc: 0x1000_0042 });
    assert_eq!(r.app, RunState::Quarantined);
    w.warm_reset(Some(r));
    assert!(w.dev.quarantined());
    assert_eq!(w.dev.boot_info().crash_count, 3);
    w.server.answers_no_update = true; // an up-to-date server this time
    w.online();
    assert!(!w.dev.quarantined(), "released by the server's answer");
    let ev = events(&w);
    assert!(ev.contains(&VisorEvent::VisorFault { pc: 0x1000_0042 }), "{ev:?}");
    assert!(ev.contains(&VisorEvent::Boot { count: w.boots, reason: BootReason::VisorFault.code() }));
}

#[test]
fn a_polite_update_offered_to_a_quarantined_device_is_applied_at_once() {
    let mut w = quarantine_world();
    let (envelope, layer) = bundle(2, "2.0.0", Policies { max_politeness_time_s: 600, ..by_app() });
    let release = Release { seq: 2, envelope, layer, retry_after_rollback: false };
    w.server.deployment = Some(Deployment { releases: vec![release], target: |_| Some(0) });
    unexplained_resets(&mut w, 3);
    assert!(w.dev.quarantined());
    w.dev.address_acquired(w.now, &mut w.out);
    w.run_until(w.now + 5 * S, &mut |_| AppStep::Run);
    assert!(w.console_has("update: applying (the app is quarantined)"));
    assert_eq!(w.trace.last().map(String::as_str), Some("launch 2.0.0"));
    assert!(w.dev.on_trial() && !w.dev.quarantined());
}

#[test]
fn a_crash_in_an_app_handler_that_reset_the_system_reaches_the_server_after_the_reset() {
    // The visor records the crash, adds the cause to the run record and resets (only a reset
    // clears an active exception of the app): the log ring with the crash event is lost, so the
    // next boot reports the crash again from the record.
    let mut w = quarantine_world();
    let report =
        keel_abi::CrashReport { version: 1, kind: 7, frame: [0, 0, 0, 0, 0, 0, 0x0020_0101, 0], ..Default::default() };
    w.dev.app_crashed(w.now, report, false, &mut w.out);
    w.running = false;
    let record = w.dev.run_record().with_cause(ResetCause::AppFault);
    w.warm_reset(Some(record));
    w.online();
    w.run_until(w.now + 5 * S, &mut |_| AppStep::Run);
    let crashes: Vec<VisorEvent> = events(&w).into_iter().filter(|e| matches!(e, VisorEvent::Crash(_))).collect();
    assert_eq!(crashes.len(), 1, "{:?}", events(&w));
    let VisorEvent::Crash(c) = crashes[0] else { unreachable!() };
    assert_eq!((c.kind, c.pc), (7, 0x0020_0101));
    assert_eq!(w.dev.boot_info().crash_count, 1, "counted once, not again for the reset");
}
