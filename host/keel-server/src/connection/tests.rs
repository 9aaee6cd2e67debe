//! The connection driven by scripted messages (no sockets, no database), and the reconcile table.

use super::*;
use keel_proto::msg::{encode, BootReason, CrashInfo, UpdateReason};
use UpdateState::*;

/// What came out of the connection, in order; messages are kept encoded (they borrow).
#[derive(Debug, PartialEq)]
enum Out {
    Sent(Vec<u8>),
    Did(Action),
}

fn sent(m: Down<'_>) -> Out {
    let mut b = vec![0u8; 2048];
    let n = encode(&m, &mut b).unwrap();
    b.truncate(n);
    Out::Sent(b)
}

#[derive(Default)]
struct Rec(Vec<Out>);

impl Output for Rec {
    fn send(&mut self, m: &Down<'_>) {
        self.0.push(sent(m.clone()));
    }
    fn act(&mut self, a: Action) {
        self.0.push(Out::Did(a));
    }
}

impl Rec {
    fn take(&mut self) -> Vec<Out> {
        std::mem::take(&mut self.0)
    }
}

const UNIX0: u64 = 1_800_000_000_000_000;

/// `ms` milliseconds after the connection started.
fn at_ms(ms: u64) -> Now {
    Now { mono_us: ms * 1000, unix_us: UNIX0 + ms * 1000 }
}

fn secs(s: u64) -> Now {
    at_ms(s * 1000)
}

const ALL_FEATURES: u32 = features::UPDATES | features::EVENTS;

fn new_conn(features: u32) -> (Connection, Rec) {
    (Connection::new(Negotiated { protocol: 2, features }, "1.2.3", at_ms(0)), Rec::default())
}

/// A connection past `Ready` (its `Online` and `LoadTarget` actions consumed).
fn online(features: u32) -> (Connection, Rec) {
    let (mut c, mut r) = new_conn(features);
    c.receive(at_ms(1), Up::Ready, &mut r);
    assert_eq!(r.take()[0], Out::Did(Action::Online));
    (c, r)
}

fn layer(index: u8, size: u32) -> BundleLayer {
    BundleLayer {
        index,
        component: "app".into(),
        target: "app-slot".into(),
        size,
        sha256: format!("{index:02x}").repeat(32),
    }
}

fn target(sequence: u64, sizes: &[u32]) -> Target {
    Target {
        bundle_id: format!("bn-{sequence}"),
        sequence,
        manifest_digest: format!("{sequence:02x}").repeat(32),
        envelope: vec![0xE0, sequence as u8],
        layers: sizes.iter().enumerate().map(|(i, s)| layer(i as u8, *s)).collect(),
    }
}

fn log(seq: u64, text: &[u8]) -> Up<'_> {
    Up::Log { seq, kind: 0, level: 2, time_us: seq, text }
}

fn status(installed: u64, sequence: u64, state: UpdateState) -> Up<'static> {
    Up::UpdateStatus { installed, sequence, state: state.as_u8(), progress: 0, total: 0, reason: 0 }
}

fn closed(why: Close) -> Out {
    Out::Did(Action::Close(why))
}

fn offered(t: &Target) -> Vec<Out> {
    vec![
        sent(Down::UpdateOffer { envelope: &t.envelope }),
        Out::Did(Action::NoteUpdate {
            state: "offered",
            sequence: t.sequence,
            text: format!("offered {} (sequence {})", t.bundle_id, t.sequence),
        }),
        Out::Did(Action::Notice(Notice::Offered { bundle_id: t.bundle_id.clone(), sequence: t.sequence })),
    ]
}

fn cancelled(sequence: u64) -> Vec<Out> {
    vec![
        sent(Down::UpdateCancel { sequence }),
        Out::Did(Action::NoteUpdate {
            state: "cancelled",
            sequence,
            text: "download cancelled: no longer the target".into(),
        }),
    ]
}

/// The `StoreStatus` a status message turns into (it comes first).
fn is_store_status(o: &Out) -> bool {
    matches!(o, Out::Did(Action::StoreStatus(_)))
}

// ---------------------------------------------------------------- the Ready gate

#[test]
fn ready_brings_the_device_online_and_asks_for_its_target() {
    let (mut c, mut r) = new_conn(ALL_FEATURES);
    assert!(!c.is_online());
    c.receive(at_ms(5), Up::Ready, &mut r);
    assert_eq!(r.take(), vec![Out::Did(Action::Online), Out::Did(Action::LoadTarget)]);
    assert!(c.is_online());
}

#[test]
fn a_device_known_without_target_loads_nothing_until_a_deployment() {
    let (mut c, mut r) = new_conn(ALL_FEATURES);
    c.known_without_target();
    c.receive(at_ms(5), Up::Ready, &mut r);
    assert_eq!(r.take(), vec![Out::Did(Action::Online)], "no target to load");
    // Its status is answered as for a loaded empty target.
    c.receive(at_ms(6), status(3, 3, Confirmed), &mut r);
    let out = r.take();
    assert!(is_store_status(&out[0]));
    assert_eq!(out[1..], [sent(Down::NoUpdate { target: 0 })]);
    // A deployment made later is loaded as usual.
    c.deployment_changed(&mut r);
    assert_eq!(r.take(), vec![Out::Did(Action::LoadTarget)]);
    // Once online it means nothing: a target already known is not forgotten.
    let t = target(6, &[1000]);
    c.target(Some(t.clone()), &mut r);
    assert_eq!(r.take(), offered(&t));
    c.known_without_target();
    c.receive(at_ms(7), status(3, 3, Confirmed), &mut r);
    let out = r.take();
    assert!(!out.contains(&sent(Down::NoUpdate { target: 0 })), "the target was forgotten: {out:?}");
}

#[test]
fn a_deployment_made_before_ready_is_loaded_at_ready_even_if_none_was_known() {
    // The session started knowing the device had no deployment; one was made before its
    // `Ready` arrived (the notification reached the mailbox then).
    let (mut c, mut r) = new_conn(ALL_FEATURES);
    c.known_without_target();
    c.deployment_changed(&mut r);
    assert_eq!(r.take(), vec![], "nothing to do before Ready");
    c.receive(at_ms(5), Up::Ready, &mut r);
    assert_eq!(r.take(), vec![Out::Did(Action::Online), Out::Did(Action::LoadTarget)]);
}

#[test]
fn a_message_before_ready_closes_and_nothing_is_stored() {
    for first in [log(1, b"early"), Up::Pong { nonce: 1 }, Up::Unknown(40), status(0, 0, Idle)] {
        let (mut c, mut r) = new_conn(ALL_FEATURES);
        c.receive(at_ms(1), first.clone(), &mut r);
        assert_eq!(r.take(), vec![closed(Close::ExpectedReady)], "{first:?}");
        assert!(c.is_closed());
        // Whatever follows, even a Ready, is ignored: the connection is over.
        c.receive(at_ms(2), Up::Ready, &mut r);
        c.tick(secs(1000), &mut r);
        assert!(r.take().is_empty());
        assert_eq!(c.flush(), None, "{first:?} was not stored");
        assert_eq!(c.poll_at(), None);
    }
}

#[test]
fn malformed_bytes_before_ready_are_not_a_ready() {
    let (mut c, mut r) = new_conn(ALL_FEATURES);
    c.receive_bytes(at_ms(1), &[0x82, 0x18, 0xC8, 0x80], &mut r);
    assert_eq!(r.take(), vec![closed(Close::ExpectedReady)]);
}

#[test]
fn a_replayed_first_handshake_message_never_gets_past_the_gate() {
    // The attacker replays the device's first handshake message: the server answers with a
    // Welcome but the attacker cannot encrypt a Ready. Either its frame does not decrypt...
    let (mut c, mut r) = new_conn(ALL_FEATURES);
    c.undecryptable(&mut r);
    assert_eq!(r.take(), vec![closed(Close::BadReady)]);
    // ... or it sends nothing: the Ready deadline closes the connection. Never online.
    let (mut c, mut r) = new_conn(ALL_FEATURES);
    let deadline = c.poll_at().unwrap();
    assert_eq!(deadline, us(HANDSHAKE_TIMEOUT));
    c.tick(Now { mono_us: deadline - 1, unix_us: UNIX0 }, &mut r);
    assert!(r.take().is_empty(), "not yet");
    c.tick(Now { mono_us: deadline, unix_us: UNIX0 }, &mut r);
    assert_eq!(r.take(), vec![closed(Close::ReadyTimeout)]);
    assert!(Close::ReadyTimeout.is_timeout() && !Close::BadReady.is_timeout());
    assert!(!c.is_online());
}

#[test]
fn hello_after_the_handshake_is_fatal() {
    let (mut c, mut r) = online(ALL_FEATURES);
    r.take();
    c.receive(at_ms(2), log(1, b"a"), &mut r);
    let hello = Up::Hello { protocol: 2, visor_version: "x", boot_count: 1, app: None, next_log_seq: 0 };
    c.receive(at_ms(3), hello, &mut r);
    assert_eq!(r.take(), vec![closed(Close::HelloAfterHandshake)]);
    assert_eq!(c.flush(), None, "the batch of a closed connection is not stored (nor acked)");
}

#[test]
fn malformed_or_undecryptable_messages_after_ready_close() {
    let (mut c, mut r) = online(ALL_FEATURES);
    r.take();
    c.receive_bytes(at_ms(2), &[0x82, 0x18, 0xC8, 0x80], &mut r);
    assert_eq!(r.take(), vec![closed(Close::Malformed)]);
    let (mut c, mut r) = online(ALL_FEATURES);
    r.take();
    c.undecryptable(&mut r);
    assert_eq!(r.take(), vec![closed(Close::BadMessage)]);
}

// ---------------------------------------------------------------- batching and acks

#[test]
fn records_received_back_to_back_are_one_batch_and_one_ack_of_the_highest() {
    let (mut c, mut r) = online(ALL_FEATURES);
    r.take();
    let base = 3u64 << 32;
    for (i, t) in [&b"a"[..], b"b", b"c"].into_iter().enumerate() {
        c.receive(at_ms(10 + i as u64), log(base + i as u64, t), &mut r);
    }
    assert!(r.take().is_empty(), "nothing is acknowledged before it is stored");
    let b = c.flush().expect("a batch");
    assert_eq!(b.records.iter().map(|r| r.text.as_str()).collect::<Vec<_>>(), ["a", "b", "c"]);
    assert_eq!(b.records[1].received_at, UNIX0 + 11_000, "server time of arrival");
    assert_eq!((b.received, b.ack), (3, Some(base + 2)));
    assert_eq!(c.flush(), None, "handed over once");
    c.logs_stored(&mut r);
    assert_eq!(r.take(), vec![sent(Down::LogAck { upto: base + 2 })]);
    c.logs_stored(&mut r);
    assert!(r.take().is_empty(), "one ack per batch");
}

#[test]
fn the_ack_is_the_highest_sequence_even_out_of_order_and_for_duplicates() {
    // Redelivered records (already stored before a reconnect) are acknowledged like new ones:
    // the store drops duplicates, the device must still move on.
    let (mut c, mut r) = online(ALL_FEATURES);
    r.take();
    for seq in [7, 9, 8, 9] {
        c.receive(at_ms(2), log(seq, b"x"), &mut r);
    }
    let b = c.flush().unwrap();
    assert_eq!((b.records.len(), b.received, b.ack), (4, 4, Some(9)));
    c.logs_stored(&mut r);
    assert_eq!(r.take(), vec![sent(Down::LogAck { upto: 9 })]);
}

#[test]
fn a_dropped_note_is_stored_and_counted_but_not_acknowledged() {
    let (mut c, mut r) = online(ALL_FEATURES);
    r.take();
    c.receive(at_ms(2), Up::Dropped { count: 5, before_seq: 100 }, &mut r);
    assert_eq!(r.take(), vec![Out::Did(Action::Notice(Notice::Dropped { count: 5, before_seq: 100 }))]);
    let b = c.flush().unwrap();
    assert_eq!(b.records.len(), 1);
    let note = &b.records[0];
    assert_eq!((note.seq, note.kind, note.level, note.text.as_str()), (99, 2, 1, "dropped 5"));
    assert_eq!((b.received, b.ack), (0, None), "a server note is not a device record");
    c.logs_stored(&mut r);
    assert!(r.take().is_empty(), "nothing to acknowledge");
    // With records around it, only the records count for the ack.
    c.receive(at_ms(3), log(100, b"after"), &mut r);
    c.receive(at_ms(3), Up::Dropped { count: 1, before_seq: 500 }, &mut r);
    let b = c.flush().unwrap();
    assert_eq!((b.received, b.ack), (1, Some(100)));
}

#[test]
fn a_batch_holds_at_most_max_batch_records() {
    let (mut c, mut r) = online(ALL_FEATURES);
    r.take();
    let mut n = 0;
    while c.wants_more() {
        c.receive(at_ms(2), log(n, b"x"), &mut r);
        n += 1;
    }
    assert_eq!(n as usize, MAX_BATCH);
    assert_eq!(c.flush().unwrap().ack, Some(n - 1));
    assert!(c.wants_more(), "room again after the flush");
}

#[test]
fn events_are_rendered_stored_acknowledged_and_noted() {
    let (mut c, mut r) = online(ALL_FEATURES);
    r.take();
    let crash = CrashInfo { kind: 3, pc: 0x0020_0123, ..Default::default() };
    let events = [
        VisorEvent::Boot { count: 3, reason: BootReason::PowerOn.code() },
        VisorEvent::Crash(crash),
        VisorEvent::Update { sequence: 9, state: RolledBack.as_u8(), reason: UpdateReason::CrashLoop.code() },
        VisorEvent::Online,
    ];
    for (i, event) in events.into_iter().enumerate() {
        c.receive(at_ms(2), Up::Event { seq: 10 + i as u64, time_us: 1, event }, &mut r);
    }
    assert!(r.take().is_empty());
    let b = c.flush().unwrap();
    assert_eq!(b.records[0].text, "boot #3 visor 1.2.3 (power-on)");
    assert_eq!(b.records.iter().map(|r| (r.kind, r.level)).collect::<Vec<_>>(), [(1, 2), (1, 1), (1, 2), (1, 2)]);
    assert_eq!(b.ack, Some(13));
    let at = UNIX0 + 2000;
    assert_eq!(
        b.notes,
        vec![
            Note::Boot { at, text: "boot #3 visor 1.2.3 (power-on)".into() },
            Note::Crash { at, text: b.records[1].text.clone() },
            Note::Update {
                state: "rolled_back",
                sequence: 9,
                text: "device: update 9: rolled_back (crash loop)".into()
            },
        ]
    );
}

#[test]
fn crash_events_carry_their_dump_parts_with_their_records() {
    use crate::crash::CrashPart;
    let (mut c, mut r) = online(ALL_FEATURES);
    r.take();
    let info = CrashInfo { kind: 5, pc: 0x0020_0123, sp: 0x2000_0F00, ..Default::default() };
    let mut words = [0u32; 16];
    words[..3].copy_from_slice(&[1, 2, 3]);
    let events = [
        VisorEvent::Crash(info),
        VisorEvent::AppQuarantined { crashes: 3 },
        VisorEvent::CrashRegs { regs: [7; 13] },
        VisorEvent::CrashStack { offset: 0, words, len: 3 },
    ];
    for (i, event) in events.into_iter().enumerate() {
        c.receive(at_ms(2), Up::Event { seq: 10 + i as u64, time_us: 5, event }, &mut r);
    }
    // A crash event whose sequence number cannot be stored carries no part either.
    let last = VisorEvent::Crash(info);
    c.receive(at_ms(2), Up::Event { seq: MAX_STORED_SEQ + 1, time_us: 5, event: last }, &mut r);
    let b = c.flush().unwrap();
    assert_eq!((b.records.len(), b.unstorable), (4, 1));
    assert_eq!(
        b.crashes,
        vec![
            CrashPart::Crash { seq: 10, device_time_us: 5, received_at: UNIX0 + 2000, info },
            CrashPart::Regs { seq: 12, regs: [7; 13] },
            CrashPart::Stack { seq: 13, offset: 0, words: vec![1, 2, 3] },
        ]
    );
    assert!(b.records[2].text.starts_with("app crash registers r0=0x00000007"), "{}", b.records[2].text);
}

// ---------------------------------------------------------------- unknown variants and features

#[test]
fn unknown_messages_and_events_are_skipped_and_counted() {
    let (mut c, mut r) = online(ALL_FEATURES);
    r.take();
    c.receive(at_ms(2), Up::Unknown(18), &mut r);
    c.receive(at_ms(2), Up::Unknown(40), &mut r);
    c.receive(at_ms(2), Up::Event { seq: 5, time_us: 1, event: VisorEvent::Unknown(9) }, &mut r);
    c.receive(at_ms(2), log(6, b"still here"), &mut r);
    assert_eq!(
        r.take(),
        vec![
            Out::Did(Action::Notice(Notice::UnknownMessage(18))),
            Out::Did(Action::Notice(Notice::UnknownMessage(40))),
            Out::Did(Action::Notice(Notice::UnknownEvent(9))),
        ]
    );
    assert_eq!(c.unknown_skipped(), 3);
    assert!(c.is_online());
    let b = c.flush().unwrap();
    assert_eq!(b.ack, Some(6), "the unknown event is stored with its generic text and acknowledged");
    assert_eq!(b.records.len(), 2);
}

#[test]
fn an_unknown_update_state_is_ignored() {
    let (mut c, mut r) = online(ALL_FEATURES);
    r.take();
    c.target(Some(target(5, &[100])), &mut r);
    let odd = Up::UpdateStatus { installed: 0, sequence: 0, state: 42, progress: 0, total: 0, reason: 0 };
    c.receive(at_ms(2), odd, &mut r);
    assert_eq!(r.take(), vec![Out::Did(Action::Notice(Notice::UnknownUpdateState(42)))]);
}

#[test]
fn a_device_without_updates_is_never_offered_anything_and_may_not_speak_updates() {
    let (mut c, mut r) = new_conn(features::EVENTS);
    c.receive(at_ms(1), Up::Ready, &mut r);
    assert_eq!(r.take(), vec![Out::Did(Action::Online)], "no target to load");
    c.deployment_changed(&mut r);
    assert!(r.take().is_empty());
    // Even if a shell hands it a target, nothing update-related goes out.
    c.target(Some(target(5, &[100])), &mut r);
    assert!(r.take().is_empty());
    c.receive(at_ms(2), status(0, 0, Idle), &mut r);
    assert_eq!(r.take(), vec![closed(Close::FeatureNotNegotiated)]);
    let (mut c, mut r) = online(features::EVENTS);
    r.take();
    c.receive(at_ms(2), Up::FetchLayer { sequence: 5, component: 0, offset: 0, len: 10 }, &mut r);
    assert_eq!(r.take(), vec![closed(Close::FeatureNotNegotiated)]);
}

#[test]
fn an_event_without_the_events_feature_closes() {
    let (mut c, mut r) = online(features::UPDATES);
    r.take();
    c.receive(at_ms(2), Up::Event { seq: 1, time_us: 1, event: VisorEvent::Online }, &mut r);
    assert_eq!(r.take(), vec![closed(Close::FeatureNotNegotiated)]);
    // Logs need no feature.
    let (mut c, mut r) = online(0);
    r.take();
    c.receive(at_ms(2), log(1, b"plain"), &mut r);
    assert!(r.take().is_empty() && c.is_online());
}

// ---------------------------------------------------------------- keepalive

#[test]
fn pings_every_interval_and_a_time_sync_every_twentieth() {
    let (mut c, mut r) = online(ALL_FEATURES);
    r.take();
    let interval = us(PING_INTERVAL);
    let ready_at = 1000; // online() sends Ready at 1 ms
    assert_eq!(c.poll_at(), Some(ready_at + interval));
    c.tick(Now { mono_us: ready_at + interval - 1, unix_us: 0 }, &mut r);
    assert!(r.take().is_empty(), "too early");
    let mut pings = Vec::new();
    for n in 1..=u64::from(TIME_SYNC_EVERY_PINGS) * 2 {
        let now = Now { mono_us: ready_at + n * interval, unix_us: UNIX0 + n };
        // Keep the device alive: it answers every ping.
        c.receive(now, Up::Pong { nonce: n as u32 }, &mut r);
        c.tick(now, &mut r);
        pings.push(r.take());
        assert_eq!(c.poll_at(), Some(ready_at + (n + 1) * interval));
    }
    for (i, out) in pings.iter().enumerate() {
        let n = i as u64 + 1;
        let mut want = vec![sent(Down::Ping { nonce: n as u32 })];
        if n % u64::from(TIME_SYNC_EVERY_PINGS) == 0 {
            want.push(sent(Down::TimeSync { unix_us: UNIX0 + n }));
        }
        assert_eq!(out, &want, "tick {n}");
    }
}

#[test]
fn a_late_tick_sends_one_ping_not_a_burst() {
    let (mut c, mut r) = online(ALL_FEATURES);
    r.take();
    let late = Now { mono_us: 1000 + 3 * us(PING_INTERVAL) + 5, unix_us: UNIX0 };
    c.receive(late, Up::Pong { nonce: 0 }, &mut r);
    c.tick(late, &mut r);
    assert_eq!(r.take(), vec![sent(Down::Ping { nonce: 1 })]);
    c.tick(late, &mut r);
    assert!(r.take().is_empty());
    assert_eq!(c.poll_at(), Some(late.mono_us + us(PING_INTERVAL)));
}

#[test]
fn a_silent_device_is_disconnected_after_the_idle_timeout() {
    let (mut c, mut r) = online(ALL_FEATURES);
    r.take();
    let heard = us(Duration::from_secs(100));
    c.receive(Now { mono_us: heard, unix_us: UNIX0 }, log(1, b"x"), &mut r);
    let idle_at = heard + us(IDLE_TIMEOUT);
    let mut now = heard;
    // Ticks at each poll_at (or now, if that passed) until the connection closes: pings go out,
    // then the idle timeout.
    let mut ticks = 0;
    while let Some(at) = c.poll_at() {
        now = now.max(at);
        c.tick(Now { mono_us: now, unix_us: UNIX0 }, &mut r);
        ticks += 1;
        assert!(ticks < 20, "the connection must close");
    }
    assert_eq!(now, idle_at);
    assert_eq!(r.take().last(), Some(&closed(Close::IdleTimeout)));
    assert!(Close::IdleTimeout.is_timeout());
}

// ---------------------------------------------------------------- offers and cancels

#[test]
fn an_offer_follows_the_status_and_only_once_per_connection() {
    let (mut c, mut r) = online(ALL_FEATURES);
    r.take();
    let t = target(5, &[1000]);
    c.target(Some(t.clone()), &mut r);
    assert!(r.take().is_empty(), "nothing before the device reports");
    c.receive(at_ms(2), status(3, 0, Idle), &mut r);
    let out = r.take();
    assert!(is_store_status(&out[0]));
    assert_eq!(out[1..], offered(&t)[..]);
    // The device fails on it and reports an error: not offered again on this connection, and
    // told there is nothing (more) for it.
    let failed = Up::UpdateStatus { installed: 3, sequence: 5, state: 7, progress: 0, total: 0, reason: 3 };
    c.receive(at_ms(3), failed, &mut r);
    let out = r.take();
    assert_eq!(out.len(), 2, "{out:?}");
    assert_eq!(out[1], sent(Down::NoUpdate { target: 5 }));
    let Out::Did(Action::StoreStatus(s)) = &out[0] else { panic!("{out:?}") };
    assert_eq!((s.state.as_str(), s.sequence, s.installed), ("error", 5, 3));
    assert_eq!(s.reason, UpdateReason::from_u16(3).unwrap().as_str());
}

#[test]
fn a_deployment_change_is_offered_at_once() {
    let (mut c, mut r) = online(ALL_FEATURES);
    r.take();
    c.target(None, &mut r);
    c.receive(at_ms(2), status(3, 3, Confirmed), &mut r);
    let out = r.take();
    assert!(is_store_status(&out[0]));
    assert_eq!(out[1..], [sent(Down::NoUpdate { target: 0 })], "no target: nothing to offer");
    c.deployment_changed(&mut r);
    assert_eq!(r.take(), vec![Out::Did(Action::LoadTarget)]);
    let t = target(6, &[1000]);
    c.target(Some(t.clone()), &mut r);
    assert_eq!(r.take(), offered(&t));
    // The same deployment again (e.g. a lagged notification): offered again, once, since the
    // device may have lost the first offer's state.
    c.target(Some(t.clone()), &mut r);
    assert_eq!(r.take(), offered(&t));
    c.receive(at_ms(3), status(3, 3, Confirmed), &mut r);
    let out = r.take();
    // (The same status as before: answered, not stored again.)
    assert_eq!(out, [sent(Down::NoUpdate { target: 6 })], "not offered twice per connection and deployment");
}

#[test]
fn a_status_that_gets_nothing_is_answered_no_update_once_the_target_is_known() {
    let (mut c, mut r) = online(ALL_FEATURES);
    r.take();
    // Before the target is loaded the server cannot tell: no answer yet.
    c.receive(at_ms(2), status(3, 3, Idle), &mut r);
    assert!(r.take().iter().all(is_store_status));
    // Loaded: the target is installed, so the answer is that there is nothing to install.
    c.target(Some(target(3, &[1000])), &mut r);
    assert_eq!(r.take(), vec![sent(Down::NoUpdate { target: 3 })]);
    // Every status that gets no offer is answered (a device asks again this way), except while
    // the device is busy with a download or an install.
    c.receive(at_ms(3), status(3, 3, Confirmed), &mut r);
    assert_eq!(r.take()[1..], [sent(Down::NoUpdate { target: 3 })]);
    c.receive(at_ms(4), status(3, 3, Installing), &mut r);
    assert!(r.take().iter().all(is_store_status));
    c.receive(at_ms(5), status(3, 3, Downloading), &mut r);
    assert!(r.take().iter().all(is_store_status));
    // A device without the updates feature is never sent it.
    let (mut c, mut r) = online(0);
    r.take();
    c.target(None, &mut r);
    assert!(r.take().is_empty());
    assert!(answers_no_update(Trial) && answers_no_update(Error) && !answers_no_update(Downloading));
}

#[test]
fn a_stale_download_is_cancelled_once_and_the_new_target_offered() {
    let (mut c, mut r) = online(ALL_FEATURES);
    r.take();
    let t = target(5, &[1000]);
    c.target(Some(t.clone()), &mut r);
    c.receive(at_ms(2), status(3, 5, Downloading), &mut r);
    assert!(r.take().iter().all(is_store_status), "downloading the target: fine");
    // The deployment moves to 6 while 5 downloads.
    let t6 = target(6, &[1000]);
    c.target(Some(t6.clone()), &mut r);
    let mut want = cancelled(5);
    want.extend(offered(&t6));
    assert_eq!(r.take(), want);
    // The device reports its download of 5 once more (in flight): neither again.
    c.receive(at_ms(3), status(3, 5, Downloading), &mut r);
    assert!(r.take().iter().all(is_store_status));
    // Withdrawn entirely while downloading 6: cancelled, nothing offered.
    c.receive(at_ms(4), status(3, 6, Downloading), &mut r);
    r.take();
    c.target(None, &mut r);
    assert_eq!(r.take(), cancelled(6));
}

#[test]
fn another_bundle_with_the_same_sequence_is_cancelled_offered_and_never_served_in_its_place() {
    let (mut c, mut r) = online(ALL_FEATURES);
    r.take();
    let a = target(5, &[4096]);
    c.target(Some(a.clone()), &mut r);
    c.receive(at_ms(2), status(3, 0, Idle), &mut r);
    assert_eq!(r.take()[1..], offered(&a)[..]);
    c.receive(at_ms(3), status(3, 5, Downloading), &mut r);
    r.take();
    // Another app's bundle with the same sequence becomes the target while 5 downloads.
    let b = Target {
        bundle_id: "bn-other".into(),
        manifest_digest: "ee".repeat(32),
        envelope: vec![0xE0, 0xBB],
        ..target(5, &[8192])
    };
    c.target(Some(b.clone()), &mut r);
    let mut want = cancelled(5);
    want.extend(offered(&b));
    assert_eq!(r.take(), want, "cancelled and offered again, although the sequence is the same");
    // Until the device starts the new download, its fetches are for the old bundle's bytes.
    c.receive(at_ms(4), status(3, 5, Downloading), &mut r);
    r.take();
    let out = fetch_reply(&mut c, 5, 0, 0, 1024);
    assert!(matches!(&out[..], [Out::Did(Action::Fetch(f))] if f.sha256 == b.layers[0].sha256), "{out:?}");
}

#[test]
fn a_repeated_identical_status_is_not_stored_again() {
    let (mut c, mut r) = online(ALL_FEATURES);
    r.take();
    c.target(None, &mut r);
    c.receive(at_ms(2), status(3, 3, Confirmed), &mut r);
    assert!(is_store_status(&r.take()[0]));
    for i in 0..100 {
        c.receive(at_ms(3 + i), status(3, 3, Confirmed), &mut r);
        let out = r.take();
        assert!(!out.iter().any(is_store_status), "coalesced: {out:?}");
        assert_eq!(out, [sent(Down::NoUpdate { target: 0 })], "still answered");
    }
    // Progress is a change.
    let progress = Up::UpdateStatus { installed: 3, sequence: 4, state: 1, progress: 10, total: 20, reason: 0 };
    c.receive(at_ms(200), progress.clone(), &mut r);
    assert!(is_store_status(&r.take()[0]));
    c.receive(at_ms(201), progress, &mut r);
    assert!(!r.take().iter().any(is_store_status));
}

// ---------------------------------------------------------------- fetches

fn fetch_reply(c: &mut Connection, sequence: u64, component: u8, offset: u32, len: u32) -> Vec<Out> {
    let mut r = Rec::default();
    c.receive(at_ms(2), Up::FetchLayer { sequence, component, offset, len }, &mut r);
    r.take()
}

fn layer_error(sequence: u64, component: u8, offset: u32, code: LayerErrorCode) -> Vec<Out> {
    vec![sent(Down::LayerError { sequence, component, offset, code: code as u8 })]
}

#[test]
fn fetch_ranges_are_validated() {
    use LayerErrorCode::*;
    let (mut c, mut r) = online(ALL_FEATURES);
    r.take();
    assert_eq!(fetch_reply(&mut c, 5, 0, 0, 10), layer_error(5, 0, 0, UnknownSequence), "no target at all");
    c.target(Some(target(5, &[20_000, 100])), &mut r);
    let cases = [
        // (sequence, component, offset, len, expected error)
        (4, 0, 0, 10, Some(UnknownSequence)),       // not the target
        (6, 0, 0, 10, Some(UnknownSequence)),       // not the target either
        (5, 2, 0, 10, Some(UnknownComponent)),      // two layers only
        (5, 0, 0, 0, Some(OutOfRange)),             // empty
        (5, 0, 0, MAX_FETCH + 1, Some(OutOfRange)), // above one page
        (5, 1, 90, 11, Some(OutOfRange)),           // one byte past the end
        (5, 1, u32::MAX, 1, Some(OutOfRange)),      // offset + len overflows u32
        (5, 1, 90, 10, None),                       // the last ten bytes
        (5, 0, 0, MAX_FETCH, None),                 // a full page
    ];
    for (sequence, component, offset, len, err) in cases {
        let got = fetch_reply(&mut c, sequence, component, offset, len);
        match err {
            Some(code) => assert_eq!(got, layer_error(sequence, component, offset, code), "{offset}+{len}"),
            None => {
                let sha256 = format!("{component:02x}").repeat(32);
                let f = Fetch { sequence, component, offset, len, sha256 };
                assert_eq!(got, vec![Out::Did(Action::Fetch(f))]);
            }
        }
    }
    assert!(c.is_online(), "a bad fetch does not end the connection");
}

#[test]
fn a_fetch_is_answered_in_chunks_or_with_unavailable() {
    let f = Fetch { sequence: 5, component: 1, offset: 100, len: 2000, sha256: String::new() };
    assert_eq!(f.range(), 100..2100);
    let data: Vec<u8> = (0..2000u32).map(|i| i as u8).collect();
    let msgs = f.reply(Some(&data)).unwrap();
    let mut next = 0usize;
    for m in &msgs {
        let Down::LayerData { sequence: 5, component: 1, offset, data: d } = m else { panic!("{m:?}") };
        assert_eq!(*offset as usize, 100 + next);
        assert!(d.len() <= LAYER_CHUNK);
        assert_eq!(*d, &data[next..next + d.len()]);
        next += d.len();
    }
    assert_eq!((msgs.len(), next), (3, 2000), "960 + 960 + 80");
    let unavailable =
        Down::LayerError { sequence: 5, component: 1, offset: 100, code: LayerErrorCode::Unavailable as u8 };
    assert_eq!(f.reply(Some(&data[..1999])), Err(unavailable.clone()), "short read");
    assert_eq!(f.reply(None), Err(unavailable), "object store failed");
}

// ---------------------------------------------------------------- reconcile, as a table

/// The target relative to what the device reports about.
#[derive(Clone, Copy, Debug)]
enum Tgt {
    /// The target is the bundle the status is about (sequence 5).
    Same,
    /// Another bundle (sequence 7) than the one the status is about (5).
    Other,
    /// No deployment.
    None,
}

/// Whether the device's confirmed install is the target.
#[derive(Clone, Copy, Debug)]
enum Inst {
    /// `installed` is the target's sequence.
    Target,
    /// `installed` is an older bundle (3).
    Older,
}

/// What this connection already did.
#[derive(Clone, Copy, Debug)]
enum Prior {
    /// Nothing offered or cancelled yet.
    Fresh,
    /// The target was offered and the reported sequence cancelled on this connection.
    Done,
}

/// Expected: (cancel the reported sequence, offer the target).
type Want = (bool, bool);
const NOTHING: Want = (false, false);
const OFFER: Want = (false, true);
const CANCEL: Want = (true, false);
const BOTH: Want = (true, true);

#[rustfmt::skip]
const TABLE: &[(UpdateState, Tgt, Inst, Prior, Want, &str)] = &[
    // Idle: nothing in progress. A device back from a reboot mid-download also reports Idle (or its
    // last outcome) because the agent reports the state before an unresumed download.
    (Idle, Tgt::Same, Inst::Target, Prior::Fresh, NOTHING, "runs the target already"),
    (Idle, Tgt::Same, Inst::Target, Prior::Done, NOTHING, "runs the target already"),
    (Idle, Tgt::Same, Inst::Older, Prior::Fresh, OFFER, "idle is not handling the target: offer (resumes an unresumed download)"),
    (Idle, Tgt::Same, Inst::Older, Prior::Done, NOTHING, "offered on this connection already"),
    (Idle, Tgt::Other, Inst::Target, Prior::Fresh, NOTHING, "runs the target already"),
    (Idle, Tgt::Other, Inst::Target, Prior::Done, NOTHING, "runs the target already"),
    (Idle, Tgt::Other, Inst::Older, Prior::Fresh, OFFER, "the target is new to it"),
    (Idle, Tgt::Other, Inst::Older, Prior::Done, NOTHING, "offered on this connection already"),
    (Idle, Tgt::None, Inst::Older, Prior::Fresh, NOTHING, "no deployment, nothing downloading"),
    (Idle, Tgt::None, Inst::Older, Prior::Done, NOTHING, "no deployment, nothing downloading"),
    // Downloading: the status's sequence is being fetched.
    (Downloading, Tgt::Same, Inst::Target, Prior::Fresh, NOTHING, "runs the target (and is downloading it again?): leave it"),
    (Downloading, Tgt::Same, Inst::Target, Prior::Done, NOTHING, "runs the target: nothing to do"),
    (Downloading, Tgt::Same, Inst::Older, Prior::Fresh, NOTHING, "downloading the target: let it finish"),
    (Downloading, Tgt::Same, Inst::Older, Prior::Done, NOTHING, "downloading the target: let it finish"),
    (Downloading, Tgt::Other, Inst::Target, Prior::Fresh, CANCEL, "downloading a bundle that is not the target: cancel; it runs the target, no offer"),
    (Downloading, Tgt::Other, Inst::Target, Prior::Done, NOTHING, "cancelled on this connection already; runs the target"),
    (Downloading, Tgt::Other, Inst::Older, Prior::Fresh, BOTH, "stale download: cancel it and offer the target"),
    (Downloading, Tgt::Other, Inst::Older, Prior::Done, NOTHING, "cancel and offer were both sent on this connection"),
    (Downloading, Tgt::None, Inst::Older, Prior::Fresh, CANCEL, "the deployment was withdrawn: cancel the download"),
    (Downloading, Tgt::None, Inst::Older, Prior::Done, NOTHING, "cancelled on this connection already"),
    // Installing: downloaded and verified, waiting to be applied (too late to cancel).
    (Installing, Tgt::Same, Inst::Target, Prior::Fresh, NOTHING, "runs the target already"),
    (Installing, Tgt::Same, Inst::Target, Prior::Done, NOTHING, "runs the target already"),
    (Installing, Tgt::Same, Inst::Older, Prior::Fresh, NOTHING, "installing the target: it handles it"),
    (Installing, Tgt::Same, Inst::Older, Prior::Done, NOTHING, "installing the target: it handles it"),
    (Installing, Tgt::Other, Inst::Target, Prior::Fresh, NOTHING, "runs the target; installs are never cancelled"),
    (Installing, Tgt::Other, Inst::Target, Prior::Done, NOTHING, "runs the target"),
    (Installing, Tgt::Other, Inst::Older, Prior::Fresh, OFFER, "installing something else: offer the target (the agent decides)"),
    (Installing, Tgt::Other, Inst::Older, Prior::Done, NOTHING, "offered on this connection already"),
    (Installing, Tgt::None, Inst::Older, Prior::Fresh, NOTHING, "no deployment; installs are never cancelled"),
    (Installing, Tgt::None, Inst::Older, Prior::Done, NOTHING, "no deployment"),
    // Trial: the status's sequence runs on trial.
    (Trial, Tgt::Same, Inst::Target, Prior::Fresh, NOTHING, "runs the target already"),
    (Trial, Tgt::Same, Inst::Target, Prior::Done, NOTHING, "runs the target already"),
    (Trial, Tgt::Same, Inst::Older, Prior::Fresh, NOTHING, "the target is on trial: wait for the verdict"),
    (Trial, Tgt::Same, Inst::Older, Prior::Done, NOTHING, "the target is on trial"),
    (Trial, Tgt::Other, Inst::Target, Prior::Fresh, NOTHING, "runs the target (confirmed) already"),
    (Trial, Tgt::Other, Inst::Target, Prior::Done, NOTHING, "runs the target already"),
    (Trial, Tgt::Other, Inst::Older, Prior::Fresh, OFFER, "a bundle that is not the target is on trial: offer the target"),
    (Trial, Tgt::Other, Inst::Older, Prior::Done, NOTHING, "offered on this connection already"),
    (Trial, Tgt::None, Inst::Older, Prior::Fresh, NOTHING, "no deployment; a trial is not a download"),
    (Trial, Tgt::None, Inst::Older, Prior::Done, NOTHING, "no deployment"),
    // Confirmed: the status's sequence was confirmed (installed is normally the same).
    (Confirmed, Tgt::Same, Inst::Target, Prior::Fresh, NOTHING, "the usual end of an update"),
    (Confirmed, Tgt::Same, Inst::Target, Prior::Done, NOTHING, "the usual end of an update"),
    (Confirmed, Tgt::Same, Inst::Older, Prior::Fresh, NOTHING, "it confirmed the target (installed lags): no loop"),
    (Confirmed, Tgt::Same, Inst::Older, Prior::Done, NOTHING, "it confirmed the target"),
    (Confirmed, Tgt::Other, Inst::Target, Prior::Fresh, NOTHING, "runs the target already"),
    (Confirmed, Tgt::Other, Inst::Target, Prior::Done, NOTHING, "runs the target already"),
    (Confirmed, Tgt::Other, Inst::Older, Prior::Fresh, OFFER, "a new target after its last update (or an unresumed download of it)"),
    (Confirmed, Tgt::Other, Inst::Older, Prior::Done, NOTHING, "offered on this connection already"),
    (Confirmed, Tgt::None, Inst::Older, Prior::Fresh, NOTHING, "no deployment"),
    (Confirmed, Tgt::None, Inst::Older, Prior::Done, NOTHING, "no deployment"),
    // RolledBack: the status's sequence failed its trial.
    (RolledBack, Tgt::Same, Inst::Target, Prior::Fresh, NOTHING, "runs the target already"),
    (RolledBack, Tgt::Same, Inst::Target, Prior::Done, NOTHING, "runs the target already"),
    (RolledBack, Tgt::Same, Inst::Older, Prior::Fresh, NOTHING, "the target rolled back: offering it again would loop"),
    (RolledBack, Tgt::Same, Inst::Older, Prior::Done, NOTHING, "the target rolled back"),
    (RolledBack, Tgt::Other, Inst::Target, Prior::Fresh, NOTHING, "runs the target already"),
    (RolledBack, Tgt::Other, Inst::Target, Prior::Done, NOTHING, "runs the target already"),
    (RolledBack, Tgt::Other, Inst::Older, Prior::Fresh, OFFER, "another bundle rolled back: the target is new to it"),
    (RolledBack, Tgt::Other, Inst::Older, Prior::Done, NOTHING, "offered on this connection already"),
    (RolledBack, Tgt::None, Inst::Older, Prior::Fresh, NOTHING, "no deployment"),
    (RolledBack, Tgt::None, Inst::Older, Prior::Done, NOTHING, "no deployment"),
    // Refused: the status's sequence was refused (signature, sequence, requirements).
    (Refused, Tgt::Same, Inst::Target, Prior::Fresh, NOTHING, "runs the target already"),
    (Refused, Tgt::Same, Inst::Target, Prior::Done, NOTHING, "runs the target already"),
    (Refused, Tgt::Same, Inst::Older, Prior::Fresh, NOTHING, "it refused the target: offering it again would loop"),
    (Refused, Tgt::Same, Inst::Older, Prior::Done, NOTHING, "it refused the target"),
    (Refused, Tgt::Other, Inst::Target, Prior::Fresh, NOTHING, "runs the target already"),
    (Refused, Tgt::Other, Inst::Target, Prior::Done, NOTHING, "runs the target already"),
    (Refused, Tgt::Other, Inst::Older, Prior::Fresh, OFFER, "it refused another bundle: the target is new to it"),
    (Refused, Tgt::Other, Inst::Older, Prior::Done, NOTHING, "offered on this connection already"),
    (Refused, Tgt::None, Inst::Older, Prior::Fresh, NOTHING, "no deployment"),
    (Refused, Tgt::None, Inst::Older, Prior::Done, NOTHING, "no deployment"),
    // Error: the status's sequence failed (e.g. a digest mismatch); may work on a new attempt.
    (Error, Tgt::Same, Inst::Target, Prior::Fresh, NOTHING, "runs the target already"),
    (Error, Tgt::Same, Inst::Target, Prior::Done, NOTHING, "runs the target already"),
    (Error, Tgt::Same, Inst::Older, Prior::Fresh, OFFER, "the target failed: one new attempt per connection"),
    (Error, Tgt::Same, Inst::Older, Prior::Done, NOTHING, "offered on this connection already: no loop"),
    (Error, Tgt::Other, Inst::Target, Prior::Fresh, NOTHING, "runs the target already"),
    (Error, Tgt::Other, Inst::Target, Prior::Done, NOTHING, "runs the target already"),
    (Error, Tgt::Other, Inst::Older, Prior::Fresh, OFFER, "another bundle failed: the target is new to it"),
    (Error, Tgt::Other, Inst::Older, Prior::Done, NOTHING, "offered on this connection already"),
    (Error, Tgt::None, Inst::Older, Prior::Fresh, NOTHING, "no deployment, nothing downloading"),
    (Error, Tgt::None, Inst::Older, Prior::Done, NOTHING, "no deployment, nothing downloading"),
];

#[test]
fn reconcile_table() {
    const REPORTED: u64 = 5;
    for &(state, tgt, inst, prior, (cancel, offer), why) in TABLE {
        let target = match tgt {
            Tgt::Same => Some(REPORTED),
            Tgt::Other => Some(7),
            Tgt::None => None,
        };
        let installed = match (inst, target) {
            (Inst::Target, Some(t)) => t,
            _ => 3,
        };
        let (offered, cancelled) = match prior {
            Prior::Fresh => (None, None),
            Prior::Done => (target, Some(REPORTED)),
        };
        let reported = Some(Reported { installed, sequence: REPORTED, state });
        let got = reconcile(target, reported, offered, cancelled);
        let want = Reconcile { cancel: cancel.then_some(REPORTED), offer };
        assert_eq!(got, want, "{state:?} {tgt:?} {inst:?} {prior:?}: {why}");
    }
    // Every state × target × installed × prior appears exactly once (no installed-is-target
    // case without a target).
    for state in UpdateState::ALL {
        let rows = TABLE.iter().filter(|r| r.0 == state).count();
        assert_eq!(rows, 10, "{state:?}");
    }
    assert_eq!(TABLE.len(), 10 * UpdateState::ALL.len());
}

#[test]
fn reconcile_edges() {
    // Nothing before the device reported (devices without an update agent never do).
    assert_eq!(reconcile(Some(5), None, None, None), Reconcile::default());
    // A download of sequence 0 is not a bundle: nothing to cancel.
    let zero = Reported { installed: 3, sequence: 0, state: Downloading };
    assert_eq!(reconcile(None, Some(zero), None, None), Reconcile::default());
    // Cancelled another sequence than the one now downloading: cancel this one.
    let dl = Reported { installed: 3, sequence: 6, state: Downloading };
    assert_eq!(reconcile(None, Some(dl), None, Some(5)), Reconcile { cancel: Some(6), offer: false });
    // Offered an older target than the current one: offer the current one.
    let idle = Reported { installed: 3, sequence: 0, state: Idle };
    assert_eq!(reconcile(Some(7), Some(idle), Some(6), None), Reconcile { cancel: None, offer: true });
    // The handled set is exactly the states that are not Idle or Error.
    for s in UpdateState::ALL {
        assert_eq!(handles(s), !matches!(s, Idle | Error), "{s:?}");
    }
}

#[test]
fn device_text_is_escaped_the_same_way_everywhere() {
    assert_eq!(escape_device_text(b"plain \xc3\xa9"), "plain \u{e9}");
    assert_eq!(escape_device_text(b"a\0b"), "a\\x00b");
    assert_eq!(escape_device_text(b"\xff\xe2\x82 x"), "\\xff\\xe2\\x82 x");
    assert_eq!(escape_device_text(b""), "");
}

#[test]
fn debug_frames_are_relayed_opaque_both_ways_when_negotiated() {
    let (mut c, mut r) = online(ALL_FEATURES | features::DEBUG);
    // Device -> debugger: handed to the relay as it is (bytes that are no CBOR, no RSP).
    let frame: Vec<u8> = (0..=255u8).rev().collect();
    c.receive(at_ms(2), Up::Debug { frame: &frame }, &mut r);
    assert_eq!(r.take(), vec![Out::Did(Action::Debug(frame.clone().into_boxed_slice()))]);
    // Nothing is batched or acknowledged for it.
    assert_eq!(c.flush(), None);
    // Debugger -> device: sent as Down::Debug, up to MAX_DEBUG_FRAME.
    c.debug_to_device(&frame, &mut r);
    assert_eq!(r.take(), vec![sent(Down::Debug { frame: &frame })]);
    let full = [7u8; MAX_DEBUG_FRAME];
    c.debug_to_device(&full, &mut r);
    assert_eq!(r.take(), vec![sent(Down::Debug { frame: &full })]);
    c.debug_to_device(&[7u8; MAX_DEBUG_FRAME + 1], &mut r);
    assert_eq!(r.take(), vec![Out::Did(Action::Notice(Notice::DebugDropped(DebugDrop::TooLarge)))]);
    // Debug frames count as traffic: a device busy debugging is not idle.
    c.receive(secs(100), Up::Debug { frame: b"x" }, &mut r);
    c.tick(secs(200), &mut r);
    assert!(!r.take().contains(&closed(Close::IdleTimeout)));
}

#[test]
fn debug_frames_need_the_debug_feature_and_an_online_device() {
    // Before Ready: dropped, the device is not online yet.
    let (mut c, mut r) = new_conn(ALL_FEATURES | features::DEBUG);
    c.debug_to_device(b"early", &mut r);
    assert_eq!(r.take(), vec![Out::Did(Action::Notice(Notice::DebugDropped(DebugDrop::Offline)))]);
    // A device without DEBUG: the server never sends it a frame...
    let (mut c, mut r) = online(ALL_FEATURES);
    c.debug_to_device(b"frame", &mut r);
    assert_eq!(r.take(), vec![Out::Did(Action::Notice(Notice::DebugDropped(DebugDrop::NotNegotiated)))]);
    // ...and a frame from it is a protocol error.
    c.receive(at_ms(3), Up::Debug { frame: b"frame" }, &mut r);
    assert_eq!(r.take(), vec![closed(Close::FeatureNotNegotiated)]);
    c.debug_to_device(b"late", &mut r);
    assert_eq!(r.take(), vec![Out::Did(Action::Notice(Notice::DebugDropped(DebugDrop::Offline)))]);
}

#[test]
fn a_target_offered_during_a_trial_is_offered_again_when_the_trial_ends() {
    let (mut c, mut r) = online(ALL_FEATURES);
    r.take();
    let t = target(6, &[1000]);
    c.target(Some(t.clone()), &mut r);
    // The device runs bundle 5 on trial: it is offered 6, but cannot take it until the trial
    // ends (its other slot holds the fallback), and says it is still on trial.
    c.receive(at_ms(2), status(4, 5, Trial), &mut r);
    let out = r.take();
    assert!(is_store_status(&out[0]));
    assert_eq!(out[1..], offered(&t)[..]);
    c.receive(at_ms(3), status(4, 5, Trial), &mut r);
    assert_eq!(r.take(), [sent(Down::NoUpdate { target: 6 })], "not offered twice while on trial");
    // The trial ends: the target is offered again, once (not at the next connection, which on
    // a good link may be days away).
    c.receive(at_ms(4), status(5, 5, Confirmed), &mut r);
    let out = r.take();
    assert!(is_store_status(&out[0]));
    assert_eq!(out[1..], offered(&t)[..]);
    c.receive(at_ms(5), status(5, 5, Confirmed), &mut r);
    assert_eq!(r.take(), [sent(Down::NoUpdate { target: 6 })], "once");
    // Likewise after a rollback.
    let (mut c, mut r) = online(ALL_FEATURES);
    r.take();
    c.target(Some(t.clone()), &mut r);
    c.receive(at_ms(2), status(4, 5, Trial), &mut r);
    r.take();
    c.receive(at_ms(3), status(4, 5, RolledBack), &mut r);
    assert_eq!(r.take()[1..], offered(&t)[..]);
}
