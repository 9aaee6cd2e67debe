//! Device and server sessions against each other, in memory.
#![cfg(feature = "server")]

use keel_link::frame::Decoder;
use keel_link::msg::{decode_up, features, Down, Up, PROTOCOL_VERSION};
use keel_link::session::server::Accepting;
use keel_link::session::{DeviceSession, SessionError, MAX_FRAME, REKEY_INTERVAL};
use rand_core::OsRng;

struct Keys {
    server_private: Vec<u8>,
    server_public: [u8; 32],
}

fn keys() -> Keys {
    let k = snow::Builder::new(keel_link::session::NOISE_PARAMS.parse().unwrap()).generate_keypair().unwrap();
    Keys { server_public: k.public.try_into().unwrap(), server_private: k.private }
}

/// Splits a byte stream with the frame decoder, returning the single frame's payload.
fn payload(bytes: &[u8]) -> Vec<u8> {
    let mut d = Decoder::<{ MAX_FRAME }>::new();
    let (used, done) = d.push(bytes).unwrap();
    assert_eq!(used, bytes.len());
    d.frame()[..done.unwrap()].to_vec()
}

fn hello() -> Up<'static> {
    Up::Hello {
        protocol: PROTOCOL_VERSION,
        visor_version: "0.1.0",
        boot_count: 3,
        app: Some(("hello", "1.0")),
        next_log_seq: 3 << 32,
    }
}

fn connect(k: &Keys) -> (DeviceSession<OsRng>, keel_link::session::server::ServerSession, [u8; 32]) {
    let mut dev = DeviceSession::<OsRng>::new(&[5u8; 32], &k.server_public).unwrap();
    let mut out = vec![0u8; MAX_FRAME];
    let n = dev.start(&hello(), &mut out).unwrap();
    let acc = Accepting::read(&k.server_private, &payload(&out[..n])).unwrap();
    assert_eq!(decode_up(&acc.hello).unwrap(), hello());
    let device_key = acc.device_key;
    let welcome = Down::Welcome { protocol: 2, unix_us: 1_700_000_000_000_000, log_acked: None, features: 0 };
    let (srv, frame) = acc.welcome(&welcome).unwrap();
    assert_eq!(dev.receive(&payload(&frame)).unwrap(), welcome);
    assert!(dev.is_established());
    (dev, srv, device_key)
}

#[test]
fn hello_welcome_then_messages_both_ways_across_rekeys() {
    let k = keys();
    let (mut dev, mut srv, device_key) = connect(&k);
    assert_ne!(device_key, [0u8; 32]);
    let mut out = vec![0u8; MAX_FRAME];
    for i in 0..(2 * REKEY_INTERVAL + 5) {
        let text = format!("line {i}");
        let m = Up::Log { seq: i, kind: 0, level: 2, time_us: i * 10, text: text.as_bytes() };
        let n = dev.send(&m, &mut out).unwrap();
        let plain = srv.receive(&payload(&out[..n])).unwrap();
        assert_eq!(decode_up(&plain).unwrap(), m);
        if i % 97 == 0 {
            let ack = Down::LogAck { upto: i };
            assert_eq!(dev.receive(&payload(&srv.send(&ack).unwrap())).unwrap(), ack);
        }
    }
}

#[test]
fn a_device_unknown_to_the_server_key_pinning_fails() {
    let k = keys();
    let other = keys();
    let mut dev = DeviceSession::<OsRng>::new(&[5u8; 32], &other.server_public).unwrap();
    let mut out = vec![0u8; MAX_FRAME];
    let n = dev.start(&hello(), &mut out).unwrap();
    assert!(matches!(Accepting::read(&k.server_private, &payload(&out[..n])), Err(SessionError::Handshake)));
}

#[test]
fn tampered_garbage_and_replayed_frames_fail_only_that_session() {
    let k = keys();
    // Garbage and truncated handshakes.
    assert!(Accepting::read(&k.server_private, b"").is_err());
    assert!(Accepting::read(&k.server_private, &[0x42; 200]).is_err());
    let mut dev = DeviceSession::<OsRng>::new(&[5u8; 32], &k.server_public).unwrap();
    let mut out = vec![0u8; MAX_FRAME];
    let n = dev.start(&hello(), &mut out).unwrap();
    let msg1 = payload(&out[..n]);
    assert!(Accepting::read(&k.server_private, &msg1[..msg1.len() - 1]).is_err(), "truncated");
    // A replayed first message still parses (IK has no replay protection for message 1); the
    // attacker cannot complete it though: the device never accepts a second welcome.
    assert!(Accepting::read(&k.server_private, &msg1).is_ok());

    let (mut dev, mut srv, _) = connect(&k);
    let n = dev.send(&Up::Pong { nonce: 1 }, &mut out).unwrap();
    let mut bad = payload(&out[..n]);
    bad[0] ^= 0x80;
    assert_eq!(srv.receive(&bad), Err(SessionError::Decrypt));
    // The device side: a forged server message kills the session; later calls are refused.
    assert_eq!(dev.receive(&[1, 2, 3]), Err(SessionError::Decrypt));
    assert_eq!(dev.send(&Up::Pong { nonce: 2 }, &mut out), Err(SessionError::NotReady));
}

#[test]
fn a_second_welcome_is_a_protocol_error() {
    let k = keys();
    let (mut dev, mut srv, _) = connect(&k);
    let again = srv.send(&Down::Welcome { protocol: 2, unix_us: 0, log_acked: None, features: 0 }).unwrap();
    assert_eq!(dev.receive(&payload(&again)), Err(SessionError::Unexpected));
}

#[test]
fn device_link_resumes_after_what_the_server_has_reports_drops_and_answers() {
    use keel_link::device::{DeviceLink, Event};
    use keel_log::{Kind, LogRing};

    let k = keys();
    let mut ring = LogRing::<256>::new(2);
    for i in 0..6u8 {
        ring.push(Kind::App, 2, i as u64, &[b'a' + i; 20]).unwrap(); // 32 bytes each: 8 fit
    }
    let first = 2u64 << 32;
    let mut link = DeviceLink::<OsRng>::new(&[5u8; 32], &k.server_public).unwrap();
    let mut out = vec![0u8; MAX_FRAME];
    assert_eq!(link.next_log_frame(&mut ring, &mut out).unwrap(), None, "nothing before the welcome");
    let n = link.start(&hello(), &mut out).unwrap();
    let acc = Accepting::read(&k.server_private, &payload(&out[..n])).unwrap();
    // The server already stored the first two records.
    let (mut srv, welcome) =
        acc.welcome(&Down::Welcome { protocol: 2, unix_us: 42, log_acked: Some(first + 1), features: 0 }).unwrap();
    let (event, n) = link.on_frame(&payload(&welcome), &mut ring, &mut out).unwrap();
    assert_eq!(event, Event::Online { unix_us: 42 });
    assert_eq!(decode_up(&srv.receive(&payload(&out[..n])).unwrap()).unwrap(), Up::Ready);
    assert_eq!(ring.first_seq(), first + 2, "acknowledged records are released");

    // The ring overflows before the link sends: the drop report goes first, then the survivors.
    for i in 0..6u8 {
        ring.push(Kind::App, 2, 0, &[b'x' + i % 2; 20]).unwrap();
    }
    let mut got = Vec::new();
    while let Some(n) = link.next_log_frame(&mut ring, &mut out).unwrap() {
        got.push(decode_up(&srv.receive(&payload(&out[..n])).unwrap()).unwrap().clone().into_owned_seq());
    }
    assert_eq!(got[0], (u64::MAX, 2), "Dropped{{count: 2}} first");
    let seqs: Vec<u64> = got[1..].iter().map(|g| g.0).collect();
    assert_eq!(seqs, (first + 4..first + 12).collect::<Vec<_>>());

    // Ping -> Pong; LogAck releases.
    let (event, n) =
        link.on_frame(&payload(&srv.send(&Down::Ping { nonce: 9 }).unwrap()), &mut ring, &mut out).unwrap();
    assert_eq!(event, Event::None);
    assert_eq!(decode_up(&srv.receive(&payload(&out[..n])).unwrap()).unwrap(), Up::Pong { nonce: 9 });
    link.on_frame(&payload(&srv.send(&Down::LogAck { upto: first + 11 }).unwrap()), &mut ring, &mut out).unwrap();
    assert!(ring.is_empty());
}

trait SeqOf {
    fn into_owned_seq(self) -> (u64, u64);
}

impl SeqOf for Up<'_> {
    /// (seq, 0) for a log record, (MAX, count) for a drop report.
    fn into_owned_seq(self) -> (u64, u64) {
        match self {
            Up::Log { seq, .. } => (seq, 0),
            Up::Dropped { count, .. } => (u64::MAX, count),
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[test]
fn device_link_surfaces_update_messages_and_sends_update_replies() {
    use keel_link::device::{DeviceLink, Event};
    use keel_link::msg::{LayerErrorCode, UpdateState, LAYER_CHUNK, MAX_FETCH};
    use keel_log::LogRing;

    let k = keys();
    let mut ring = LogRing::<256>::new(1);
    let mut link = DeviceLink::<OsRng>::new(&[5u8; 32], &k.server_public).unwrap();
    let mut out = vec![0u8; MAX_FRAME];
    let status = Up::UpdateStatus { installed: 0, sequence: 0, state: 0, progress: 0, total: 0, reason: 0 };
    assert_eq!(link.send(&status, &mut out), Err(SessionError::NotReady), "not before the welcome");
    let n = link.start(&hello(), &mut out).unwrap();
    let acc = Accepting::read(&k.server_private, &payload(&out[..n])).unwrap();
    let (mut srv, welcome) =
        acc.welcome(&Down::Welcome { protocol: 2, unix_us: 1, log_acked: None, features: features::UPDATES }).unwrap();
    let (_, n) = link.on_frame(&payload(&welcome), &mut ring, &mut out).unwrap();
    assert_eq!(decode_up(&srv.receive(&payload(&out[..n])).unwrap()).unwrap(), Up::Ready);

    // The device reports its state and asks for a page; the server's messages come back as
    // borrowing events, with no reply from the link itself.
    let n = link.send(&status, &mut out).unwrap();
    assert_eq!(decode_up(&srv.receive(&payload(&out[..n])).unwrap()).unwrap(), status);
    let fetch = Up::FetchLayer { sequence: 7, component: 0, offset: 0, len: MAX_FETCH };
    let n = link.send(&fetch, &mut out).unwrap();
    assert_eq!(decode_up(&srv.receive(&payload(&out[..n])).unwrap()).unwrap(), fetch);
    assert_eq!(link.send(&Up::Ready, &mut out), Err(SessionError::Unexpected), "the link's own message");

    let envelope = [0x42u8; 230];
    let chunk = [0xA5u8; LAYER_CHUNK];
    let cases: [(Down<'_>, Event<'_>); 4] = [
        (Down::UpdateOffer { envelope: &envelope }, Event::UpdateOffer { envelope: &envelope }),
        (
            Down::LayerData { sequence: 7, component: 0, offset: 960, data: &chunk },
            Event::LayerData { sequence: 7, component: 0, offset: 960, data: &chunk },
        ),
        (
            Down::LayerError { sequence: 7, component: 2, offset: 0, code: LayerErrorCode::UnknownComponent as u8 },
            Event::LayerError { sequence: 7, component: 2, offset: 0, code: 2 },
        ),
        (Down::UpdateCancel { sequence: 7 }, Event::UpdateCancel { sequence: 7 }),
    ];
    for (down, expected) in cases {
        let frame = payload(&srv.send(&down).unwrap());
        let (event, n) = link.on_frame(&frame, &mut ring, &mut out).unwrap();
        assert_eq!((event, n), (expected, 0));
    }
    // Ping still works between update messages.
    let (_, n) = link.on_frame(&payload(&srv.send(&Down::Ping { nonce: 3 }).unwrap()), &mut ring, &mut out).unwrap();
    assert_eq!(decode_up(&srv.receive(&payload(&out[..n])).unwrap()).unwrap(), Up::Pong { nonce: 3 });
    let done = Up::UpdateStatus {
        installed: 7,
        sequence: 7,
        state: UpdateState::Confirmed.as_u8(),
        progress: 960,
        total: 960,
        reason: 0,
    };
    let n = link.send(&done, &mut out).unwrap();
    assert_eq!(decode_up(&srv.receive(&payload(&out[..n])).unwrap()).unwrap(), done);
}

/// A link connected to an in-memory server that answered its hello with `welcome(hello)`.
fn linked(
    k: &Keys,
    link_features: u32,
    welcome: impl FnOnce(&keel_link::msg::Hello<'_>) -> Down<'static>,
) -> (keel_link::device::DeviceLink<OsRng>, keel_link::session::server::ServerSession, Vec<u8>) {
    use keel_link::device::DeviceLink;
    let mut link = DeviceLink::<OsRng>::new(&[5u8; 32], &k.server_public).unwrap().with_features(link_features);
    let mut out = vec![0u8; MAX_FRAME];
    let n = link.start(&hello(), &mut out).unwrap();
    let acc = Accepting::read(&k.server_private, &payload(&out[..n])).unwrap();
    let w = welcome(&acc.hello().unwrap());
    let (mut srv, frame) = acc.welcome(&w).unwrap();
    let mut ring = keel_log::LogRing::<64>::new(1);
    let ready = link.on_frame(&payload(&frame), &mut ring, &mut out).map(|(_, n)| n);
    assert_eq!(ready.is_ok(), link.is_online(), "online exactly when the welcome was accepted");
    if let Ok(n) = ready {
        assert_eq!(decode_up(&srv.receive(&payload(&out[..n])).unwrap()).unwrap(), Up::Ready);
    }
    (link, srv, out)
}

#[test]
fn device_link_announces_its_range_and_features_and_keeps_the_welcome() {
    use keel_link::msg::{negotiate, Negotiated, PROTOCOL_MIN};
    let k = keys();
    let mut seen = None;
    let (link, _, _) = linked(&k, features::SUPPORTED | 1 << 20, |h| {
        seen = Some((h.protocol_range(), h.features));
        let n = negotiate(h, PROTOCOL_MIN, PROTOCOL_VERSION, features::UPDATES).unwrap();
        Down::Welcome { protocol: n.protocol, unix_us: 1, log_acked: None, features: n.features }
    });
    assert_eq!(seen, Some(((PROTOCOL_MIN, PROTOCOL_VERSION), Some(features::SUPPORTED | 1 << 20))));
    assert_eq!(link.negotiated(), Some(Negotiated { protocol: PROTOCOL_VERSION, features: features::UPDATES }));
    // A welcome choosing a version or a feature the device did not announce is refused.
    let (link, _, _) = linked(&k, features::UPDATES, |_| Down::Welcome {
        protocol: PROTOCOL_VERSION + 1,
        unix_us: 1,
        log_acked: None,
        features: 0,
    });
    assert!(!link.is_online());
    let (link, _, _) = linked(&k, features::UPDATES, |_| Down::Welcome {
        protocol: PROTOCOL_VERSION,
        unix_us: 1,
        log_acked: None,
        features: features::EVENTS,
    });
    assert!(!link.is_online());
}

#[test]
fn device_link_sends_nothing_the_server_did_not_announce_and_refuses_what_it_did_not() {
    use keel_link::msg::{VisorEvent, MAX_FETCH};
    use keel_log::{Kind, LogRing};
    let k = keys();
    // The server announces neither updates nor events.
    let (mut link, mut srv, mut out) =
        linked(&k, features::SUPPORTED, |_| Down::Welcome { protocol: 2, unix_us: 1, log_acked: None, features: 0 });
    assert!(link.is_online());
    let fetch = Up::FetchLayer { sequence: 7, component: 0, offset: 0, len: MAX_FETCH };
    assert_eq!(link.send(&fetch, &mut out), Err(SessionError::NotNegotiated));
    // Event records are skipped, text records still go.
    let mut ring = LogRing::<256>::new(1);
    let mut ev = [0u8; VisorEvent::MAX_LEN];
    let n = VisorEvent::Online.encode(&mut ev).unwrap();
    ring.push(Kind::Event, 0, 1, &ev[..n]).unwrap();
    let text_seq = ring.push(Kind::Visor, 1, 2, b"text").unwrap();
    let n = link.next_log_frame(&mut ring, &mut out).unwrap().unwrap();
    assert!(
        matches!(decode_up(&srv.receive(&payload(&out[..n])).unwrap()).unwrap(), Up::Log { seq, .. } if seq == text_seq)
    );
    assert_eq!(link.next_log_frame(&mut ring, &mut out).unwrap(), None);
    // An update message from this server is a protocol error.
    let offer = srv.send(&Down::UpdateOffer { envelope: &[1] }).unwrap();
    assert_eq!(link.on_frame(&payload(&offer), &mut ring, &mut out), Err(SessionError::NotNegotiated));
}

#[test]
fn device_link_sends_event_records_as_events_and_skips_unknown_server_messages() {
    use keel_link::device::Event;
    use keel_link::msg::{BootReason, VisorEvent};
    use keel_log::{Kind, LogRing};
    let k = keys();
    let (mut link, mut srv, mut out) = linked(&k, features::SUPPORTED, |_| Down::Welcome {
        protocol: 2,
        unix_us: 1,
        log_acked: None,
        features: features::EVENTS,
    });
    let mut ring = LogRing::<256>::new(1);
    let boot = VisorEvent::Boot { count: 1, reason: BootReason::PowerOn.code() };
    let mut ev = [0u8; VisorEvent::MAX_LEN];
    let n = boot.encode(&mut ev).unwrap();
    let seq = ring.push(Kind::Event, 0, 77, &ev[..n]).unwrap();
    let n = link.next_log_frame(&mut ring, &mut out).unwrap().unwrap();
    let got = srv.receive(&payload(&out[..n])).unwrap();
    assert_eq!(decode_up(&got).unwrap(), Up::Event { seq, time_us: 77, event: boot });

    // A server message of a variant this crate does not know ([20, [1]], in the updates range)
    // is skipped and counted; the connection goes on.
    let unknown = unknown_frame(&mut srv, &[0x82, 0x14, 0x81, 0x01]);
    assert_eq!(link.on_frame(&payload(&unknown), &mut ring, &mut out), Ok((Event::None, 0)));
    assert_eq!(link.unknown_received(), 1);
    // The session's counter stays in step: the next (real) message still decrypts.
    let ping = srv.send(&Down::Ping { nonce: 4 }).unwrap();
    let (_, n) = link.on_frame(&payload(&ping), &mut ring, &mut out).unwrap();
    assert!(n > 0, "the ping is answered");
    // Variant 200 is outside the reserved ranges: malformed, the connection ends.
    let bad = unknown_frame(&mut srv, &[0x82, 0x18, 0xC8, 0x80]);
    assert_eq!(link.on_frame(&payload(&bad), &mut ring, &mut out), Err(SessionError::Malformed));
}

/// Encrypts raw message bytes as the server would (for variants no `Down` can express).
fn unknown_frame(srv: &mut keel_link::session::server::ServerSession, plain: &[u8]) -> Vec<u8> {
    srv.send_raw(plain).unwrap()
}

#[test]
fn device_link_carries_debug_frames_both_ways_when_negotiated() {
    use keel_link::device::Event;
    use keel_link::msg::MAX_DEBUG_FRAME;
    use keel_log::LogRing;
    let k = keys();
    let (mut link, mut srv, mut out) = linked(&k, features::SUPPORTED, |_| Down::Welcome {
        protocol: 2,
        unix_us: 1,
        log_acked: None,
        features: features::DEBUG,
    });
    assert!(link.is_online());
    let mut ring = LogRing::<256>::new(1);
    // Server -> device: an event borrowing the opaque frame, no reply from the link.
    for len in [0, 1, 100, MAX_DEBUG_FRAME] {
        let frame: Vec<u8> = (0..len).map(|i| (i * 31 + 7) as u8).collect();
        let wire = payload(&srv.send(&Down::Debug { frame: &frame }).unwrap());
        let (event, n) = link.on_frame(&wire, &mut ring, &mut out).unwrap();
        assert_eq!((event, n), (Event::Debug { frame: &frame }, 0));
    }
    // Device -> server through the link's send path, in order, interleaved with other messages.
    for i in 0..50u8 {
        let frame = [i; 64];
        let n = link.send(&Up::Debug { frame: &frame }, &mut out).unwrap();
        assert_eq!(decode_up(&srv.receive(&payload(&out[..n])).unwrap()).unwrap(), Up::Debug { frame: &frame });
        if i % 10 == 0 {
            let ping = payload(&srv.send(&Down::Ping { nonce: i as u32 }).unwrap());
            let (_, n) = link.on_frame(&ping, &mut ring, &mut out).unwrap();
            let pong = srv.receive(&payload(&out[..n])).unwrap();
            assert_eq!(decode_up(&pong).unwrap(), Up::Pong { nonce: i as u32 });
        }
    }
    let full = [0xEE; MAX_DEBUG_FRAME];
    let n = link.send(&Up::Debug { frame: &full }, &mut out).unwrap();
    assert_eq!(decode_up(&srv.receive(&payload(&out[..n])).unwrap()).unwrap(), Up::Debug { frame: &full });
    // One byte over the limit: refused by both sessions, nothing is sent (the counters stay in
    // step: the next message still decrypts).
    let long = [0xEE; MAX_DEBUG_FRAME + 1];
    assert_eq!(link.send(&Up::Debug { frame: &long }, &mut out), Err(SessionError::TooLarge));
    assert!(matches!(srv.send(&Down::Debug { frame: &long }), Err(SessionError::TooLarge)));
    let n = link.send(&Up::Debug { frame: b"after" }, &mut out).unwrap();
    assert_eq!(decode_up(&srv.receive(&payload(&out[..n])).unwrap()).unwrap(), Up::Debug { frame: b"after" });
    // A server that sends an over-long frame anyway (raw bytes): malformed, the connection ends.
    let mut plain = vec![0u8; 1024];
    let n = keel_link::msg::encode(&Down::Debug { frame: &long }, &mut plain).unwrap();
    let bad = unknown_frame(&mut srv, &plain[..n]);
    assert_eq!(link.on_frame(&payload(&bad), &mut ring, &mut out), Err(SessionError::Malformed));
}

#[test]
fn device_link_refuses_debug_frames_without_the_debug_feature() {
    use keel_log::LogRing;
    let k = keys();
    // The device announces DEBUG, the server does not.
    let (mut link, mut srv, mut out) = linked(&k, features::SUPPORTED, |_| Down::Welcome {
        protocol: 2,
        unix_us: 1,
        log_acked: None,
        features: features::UPDATES | features::EVENTS,
    });
    assert!(link.is_online());
    assert_eq!(link.send(&Up::Debug { frame: b"x" }, &mut out), Err(SessionError::NotNegotiated));
    let mut ring = LogRing::<256>::new(1);
    let frame = srv.send(&Down::Debug { frame: b"x" }).unwrap();
    assert_eq!(link.on_frame(&payload(&frame), &mut ring, &mut out), Err(SessionError::NotNegotiated));
    // A device that does not announce DEBUG: a welcome granting it is refused.
    let (link, _, _) = linked(&k, features::UPDATES | features::EVENTS, |_| Down::Welcome {
        protocol: 2,
        unix_us: 1,
        log_acked: None,
        features: features::DEBUG,
    });
    assert!(!link.is_online());
}
