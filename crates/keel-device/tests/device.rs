//! The device core on the host, against the server's real Noise end: connection, logs, updates
//! and every trial policy.

mod common;

use common::*;
use keel_bundle::Policies;
use keel_device::{earliest, ConnState};
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
