//! Gateway and store end to end with simulated devices: real TCP on loopback, and every test
//! runs on SQLite and on PostgreSQL.

#[macro_use]
mod common;

use common::TestDb;

use std::time::Duration;

use keel_link::msg::{Down, Hello, Up};
use keel_server::gateway::{generate_keypair, serve, serve_until, GatewayLimits};
use keel_server::store::Store;
use keel_sim::{new_secret, public_key, SimDevice};
use tokio::net::TcpListener;

/// Waits (polling the store, bounded) until `f` holds.
async fn until<F: std::future::Future<Output = bool>>(mut f: impl FnMut() -> F) {
    for _ in 0..2000 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition not reached");
}

on_both_databases!("", logs_arrive_exactly_once_in_order_across_a_server_restart);
on_both_databases!("", garbage_and_unknown_devices_do_not_disturb_connected_ones);
on_both_databases!("", a_replayed_handshake_does_not_bring_a_device_online);
on_both_databases!("", a_newer_device_connects_at_the_common_version);
on_both_databases!("", unknown_messages_are_skipped_bad_frames_end_one_connection);
on_both_databases!("", visor_events_fill_the_registry_without_text_parsing);
on_both_databases!("", a_handshake_without_ready_times_out_and_is_not_counted_as_rejected);
on_both_databases!("", a_flood_of_garbage_and_replays_does_not_delay_a_device);
on_both_databases!("", connection_caps_and_the_handshake_rate_are_enforced);
on_both_databases!("", the_whole_handshake_has_one_deadline);
on_both_databases!("", bad_bytes_from_a_device_are_stored_alike_on_both_databases);
on_both_databases!("", a_device_whose_boot_counter_went_back_still_gets_its_lines_stored);
on_both_databases!("", deleting_a_device_ends_its_open_session);
on_both_databases!("", daily_quotas_bound_what_one_device_stores);

/// A device end driven by hand: its session, its frames from the server and its write half.
struct RawDevice {
    session: keel_link::session::DeviceSession<rand_core::OsRng>,
    frames: keel_server::framed::FrameReader<tokio::net::tcp::OwnedReadHalf, { keel_link::session::MAX_FRAME }>,
    wr: tokio::net::tcp::OwnedWriteHalf,
}

impl RawDevice {
    /// Connects and handshakes with `hello`; returns the device and the welcome's
    /// (protocol, features).
    async fn connect(
        addr: std::net::SocketAddr,
        secret: &[u8; 32],
        server: &[u8; 32],
        hello: &Hello<'_>,
    ) -> (Self, (u16, u32)) {
        use tokio::io::AsyncWriteExt;
        let mut session = keel_link::session::DeviceSession::new(secret, server).unwrap();
        let mut out = vec![0u8; keel_link::session::MAX_FRAME];
        let n = session.start_hello(hello, &mut out).unwrap();
        let (rd, mut wr) = tokio::net::TcpStream::connect(addr).await.unwrap().into_split();
        wr.write_all(&out[..n]).await.unwrap();
        let mut frames = keel_server::framed::FrameReader::new(rd);
        let welcome = frames.next().await.unwrap();
        let got = match session.receive(&welcome).unwrap() {
            Down::Welcome { protocol, features, .. } => (protocol, features),
            other => panic!("expected a welcome, got {other:?}"),
        };
        let mut dev = RawDevice { session, frames, wr };
        dev.send_raw(&encoded(&Up::Ready)).await;
        (dev, got)
    }

    async fn send_raw(&mut self, plain: &[u8]) {
        use tokio::io::AsyncWriteExt;
        let mut out = vec![0u8; keel_link::session::MAX_FRAME];
        let n = self.session.send_raw(plain, &mut out).unwrap();
        self.wr.write_all(&out[..n]).await.unwrap();
    }

    async fn send(&mut self, m: &Up<'_>) {
        self.send_raw(&encoded(m)).await;
    }

    /// Waits for a `LogAck` of `seq` or above (skipping anything else); returns its `upto`.
    async fn acked(&mut self, seq: u64) -> u64 {
        loop {
            let f = self.frames.next().await.unwrap();
            match self.session.receive(&f).unwrap() {
                Down::LogAck { upto } if upto >= seq => return upto,
                _ => {}
            }
        }
    }
}

fn encoded(m: &Up<'_>) -> Vec<u8> {
    let mut buf = vec![0u8; 1024];
    let n = keel_link::msg::encode(m, &mut buf).unwrap();
    buf.truncate(n);
    buf
}

fn hello_from(protocol_min: u16, protocol: u16, features: u32) -> Hello<'static> {
    Hello {
        protocol,
        visor_version: "9.9.9",
        boot_count: 3,
        app: None,
        next_log_seq: 3 << 32,
        protocol_min: Some(protocol_min),
        features: Some(features),
    }
}

async fn a_newer_device_connects_at_the_common_version(store: Store) {
    use keel_link::msg::{features, PROTOCOL_MIN, PROTOCOL_VERSION};
    let (private, public) = generate_keypair();
    store.create_account("a", "A").await.unwrap();
    let secret = new_secret();
    store.add_device("a", "kd05", &public_key(&secret), "newer").await.unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _gw = tokio::spawn(serve(listener, store.clone(), private));
    // A device speaking versions PROTOCOL_MIN..=PROTOCOL_VERSION + 7 with features this server
    // has never heard of.
    let unknown_bits = 1 << 29 | 1 << 31;
    let hello = hello_from(PROTOCOL_MIN, PROTOCOL_VERSION + 7, features::SUPPORTED | unknown_bits);
    let (mut dev, (protocol, feats)) = RawDevice::connect(addr, &secret, &public, &hello).await;
    assert_eq!(protocol, PROTOCOL_VERSION, "the highest version both speak");
    assert_eq!(feats, features::SUPPORTED, "only the features both announced");
    dev.send(&Up::Log { seq: 3 << 32, kind: 0, level: 2, time_us: 1, text: b"from the future" }).await;
    assert_eq!(dev.acked(3 << 32).await, 3 << 32);
    assert!(store.device("kd05").await.unwrap().unwrap().online);
    // A device that announces no features gets none, and a device whose range is entirely
    // above the server's is refused.
    let (_dev, (_, feats)) =
        RawDevice::connect(addr, &secret, &public, &hello_from(PROTOCOL_VERSION, PROTOCOL_VERSION, 0)).await;
    assert_eq!(feats, 0);
    let too_new = hello_from(PROTOCOL_VERSION + 1, PROTOCOL_VERSION + 3, features::SUPPORTED);
    let rejected = store.counters().rejected.load(std::sync::atomic::Ordering::Relaxed);
    let mut session = keel_link::session::DeviceSession::<rand_core::OsRng>::new(&secret, &public).unwrap();
    let mut out = vec![0u8; keel_link::session::MAX_FRAME];
    let n = session.start_hello(&too_new, &mut out).unwrap();
    let (rd, mut wr) = tokio::net::TcpStream::connect(addr).await.unwrap().into_split();
    tokio::io::AsyncWriteExt::write_all(&mut wr, &out[..n]).await.unwrap();
    let mut frames = keel_server::framed::FrameReader::<_, { keel_link::session::MAX_FRAME }>::new(rd);
    assert!(frames.next().await.is_err(), "no welcome: the connection is closed");
    let now = || store.counters().rejected.load(std::sync::atomic::Ordering::Relaxed);
    until(|| async { now() > rejected }).await;
}

async fn unknown_messages_are_skipped_bad_frames_end_one_connection(store: Store) {
    use keel_link::msg::{features, PROTOCOL_VERSION};
    use std::sync::atomic::Ordering::Relaxed;
    use tokio::io::AsyncWriteExt;
    let (private, public) = generate_keypair();
    store.create_account("a", "A").await.unwrap();
    let secret = new_secret();
    store.add_device("a", "kd06", &public_key(&secret), "odd").await.unwrap();
    let good = new_secret();
    store.add_device("a", "kd07", &public_key(&good), "good").await.unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _gw = tokio::spawn(serve(listener, store.clone(), private));
    let sim = std::sync::Arc::new(SimDevice::new(good, public, 1));
    let s2 = sim.clone();
    let _sim = tokio::spawn(async move { s2.run(addr, 20).await });
    sim.log("before");
    let has = |text: &'static str| {
        let store = store.clone();
        async move { store.logs("kd07", None, 100).await.unwrap().iter().any(|r| r.text == text) }
    };
    until(|| has("before")).await;

    let hello = hello_from(PROTOCOL_VERSION, PROTOCOL_VERSION, features::SUPPORTED);
    let (mut dev, _) = RawDevice::connect(addr, &secret, &public, &hello).await;
    // [18, [1, "x"]] (updates range) and [40, []] (debugging range): from a newer device.
    dev.send_raw(&[0x82, 0x12, 0x82, 0x01, 0x61, b'x']).await;
    dev.send_raw(&[0x82, 0x18, 0x28, 0x80]).await;
    // An event of a type this server does not know: [5, [seq, time, [10, []]]] (9 is the
    // crash stack chunk now).
    let seq = 3u64 << 32;
    let mut ev = vec![0x82, 0x05, 0x83, 0x1B];
    ev.extend_from_slice(&seq.to_be_bytes());
    ev.extend_from_slice(&[0x01, 0x82, 0x0A, 0x80]);
    dev.send_raw(&ev).await;
    dev.send(&Up::Log { seq: seq + 1, kind: 0, level: 2, time_us: 1, text: b"still here" }).await;
    assert_eq!(dev.acked(seq + 1).await, seq + 1, "the connection went on after the unknown messages");
    assert_eq!(store.counters().unknown_messages.load(Relaxed), 3, "two messages and one event skipped");
    let logs = store.logs("kd06", None, 10).await.unwrap();
    assert_eq!(logs.last().map(|r| r.text.as_str()), Some("still here"));

    // Variant 200 is outside the reserved ranges: malformed, that connection ends.
    dev.send_raw(&[0x82, 0x18, 0xC8, 0x80]).await;
    assert!(dev.frames.next().await.is_err(), "closed by the server");
    // A frame cut short (a header announcing 100 bytes, 10 sent, then the end): only that
    // connection ends.
    let (mut dev, _) = RawDevice::connect(addr, &secret, &public, &hello).await;
    dev.wr.write_all(&[0x00, 0x64, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]).await.unwrap();
    dev.wr.shutdown().await.unwrap();
    assert!(dev.frames.next().await.is_err(), "closed by the server");
    // A frame that is not a valid Noise message at all.
    let (mut dev, _) = RawDevice::connect(addr, &secret, &public, &hello).await;
    dev.wr.write_all(&[0x00, 0x03, 1, 2, 3]).await.unwrap();
    assert!(dev.frames.next().await.is_err(), "closed by the server");

    sim.log("after");
    until(|| has("after")).await;
    assert_eq!(sim.stats().sessions, 1, "the other device was never disconnected");
}

async fn visor_events_fill_the_registry_without_text_parsing(store: Store) {
    use keel_link::msg::{features, BootReason, CrashInfo, UpdateReason, UpdateState, VisorEvent, PROTOCOL_VERSION};
    let (private, public) = generate_keypair();
    store.create_account("a", "A").await.unwrap();
    let secret = new_secret();
    store.add_device("a", "kd08", &public_key(&secret), "evented").await.unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _gw = tokio::spawn(serve(listener, store.clone(), private));
    let hello = hello_from(PROTOCOL_VERSION, PROTOCOL_VERSION, features::SUPPORTED);
    let (mut dev, _) = RawDevice::connect(addr, &secret, &public, &hello).await;
    let seq = 3u64 << 32;
    let crash = CrashInfo { kind: 3, pc: 0x0020_0123, lr: 0x0020_0101, sp: 0x2000_0F00, ..Default::default() };
    let events = [
        VisorEvent::Boot { count: 3, reason: BootReason::PowerOn.code() },
        VisorEvent::Crash(crash),
        VisorEvent::LinkLost { reason: 1 },
        VisorEvent::Update {
            sequence: 9,
            state: UpdateState::RolledBack.as_u8(),
            reason: UpdateReason::CrashLoop.code(),
        },
    ];
    for (i, event) in events.into_iter().enumerate() {
        dev.send(&Up::Event { seq: seq + i as u64, time_us: 10 + i as u64, event }).await;
    }
    // The acknowledgement goes out once the records and what they say about the device (its
    // registry entry, the update history) are stored.
    assert_eq!(dev.acked(seq + 3).await, seq + 3);
    let texts: Vec<String> = store.logs("kd08", None, 10).await.unwrap().into_iter().map(|r| r.text).collect();
    assert_eq!(texts[0], "boot #3 visor 9.9.9 (power-on)");
    assert!(texts[1].starts_with("app crash: HardFault pc=0x00200123 lr=0x00200101 sp=0x20000f00"), "{}", texts[1]);
    assert_eq!(texts[2], "connection lost (server silent)");
    assert_eq!(texts[3], "update 9: rolled_back (crash loop)");
    let d = store.device("kd08").await.unwrap().unwrap();
    assert_eq!(d.last_boot.map(|b| b.1).as_deref(), Some("boot #3 visor 9.9.9 (power-on)"));
    assert!(d.last_crash.is_some_and(|c| c.1.starts_with("app crash: HardFault")));
    let history = store.update_events("kd08", 10).await.unwrap();
    assert!(
        history.iter().any(|e| e.state == "rolled_back" && e.sequence == 9 && e.text.contains("crash loop")),
        "{history:?}"
    );
    // A text line that looks like an event is just a line: the registry does not parse text.
    dev.send(&Up::Log { seq: seq + 4, kind: 1, level: 2, time_us: 20, text: b"boot #99 visor fake" }).await;
    assert_eq!(dev.acked(seq + 4).await, seq + 4);
    let d = store.device("kd08").await.unwrap().unwrap();
    assert_eq!(d.last_boot.map(|b| b.1).as_deref(), Some("boot #3 visor 9.9.9 (power-on)"));
}

async fn a_replayed_handshake_does_not_bring_a_device_online(store: Store) {
    use keel_link::session::{DeviceSession, MAX_FRAME};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (private, public) = generate_keypair();
    store.create_account("a", "A").await.unwrap();
    let secret = new_secret();
    store.add_device("a", "kd03", &public_key(&secret), "victim").await.unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _gw = tokio::spawn(serve(listener, store.clone(), private));
    // The attacker recorded the device's first handshake message and replays it twice.
    let mut dev = DeviceSession::<rand_core::OsRng>::new(&secret, &public).unwrap();
    let hello = Up::Hello {
        protocol: keel_link::msg::PROTOCOL_VERSION,
        visor_version: "x",
        boot_count: 1,
        app: None,
        next_log_seq: 0,
    };
    let mut frame = vec![0u8; MAX_FRAME];
    let n = dev.start(&hello, &mut frame).unwrap();
    for _ in 0..2 {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(&frame[..n]).await.unwrap();
        let mut len = [0u8; 2];
        s.read_exact(&mut len).await.unwrap(); // the server answers: it cannot tell yet
        let mut welcome = vec![0u8; u16::from_be_bytes(len) as usize];
        s.read_exact(&mut welcome).await.unwrap();
        let d = store.device("kd03").await.unwrap().unwrap();
        assert!(!d.online && d.last_seen.is_none(), "a replay must not mark the device online");
    }
}

/// The app's log lines of `id` (kind 0; the device also sends its own events: boot, online, ...).
async fn app_lines(store: &Store, id: &str) -> Vec<keel_server::store::LogRecord> {
    store.logs(id, None, 10_000).await.unwrap().into_iter().filter(|r| r.kind == 0).collect()
}

async fn logs_arrive_exactly_once_in_order_across_a_server_restart(store: Store) {
    let (private, public) = generate_keypair();
    store.create_account("acct1", "Acme").await.unwrap();
    let secret = new_secret();
    store.add_device("acct1", "kd01", &public_key(&secret), "bench-1").await.unwrap();

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let gw = tokio::spawn(serve(listener, store.clone(), private.clone()));
    let dev = std::sync::Arc::new(SimDevice::new(secret, public, 7));
    let d2 = dev.clone();
    let sim = tokio::spawn(async move { d2.run(addr, 20).await });

    for i in 0..200 {
        dev.log(&format!("line {i}"));
    }
    until(|| async { app_lines(&store, "kd01").await.len() >= 200 }).await;
    let d = store.device("kd01").await.unwrap().unwrap();
    assert!(d.online);
    assert_eq!(d.boot_count, Some(7));
    assert_eq!(d.visor_version.as_deref(), Some(keel_sim::VISOR_VERSION));

    // Restart the server while the device keeps logging.
    gw.abort();
    let _ = gw.await;
    for i in 200..400 {
        dev.log(&format!("line {i}"));
    }
    let listener = TcpListener::bind(addr).await.unwrap();
    let gw = tokio::spawn(serve(listener, store.clone(), private.clone()));
    until(|| async { app_lines(&store, "kd01").await.len() >= 400 }).await;

    let logs = app_lines(&store, "kd01").await;
    assert_eq!(logs.len(), 400, "every record exactly once");
    for (i, r) in logs.iter().enumerate() {
        assert_eq!(r.seq >> 32, 7, "boot 7");
        assert_eq!(r.text, format!("line {i}"));
    }
    assert!(dev.stats().sessions >= 2, "the device reconnected by itself");
    sim.abort();
    gw.abort();
}

async fn garbage_and_unknown_devices_do_not_disturb_connected_ones(store: Store) {
    use tokio::io::AsyncWriteExt;
    let (private, public) = generate_keypair();
    store.create_account("a", "A").await.unwrap();
    let secret = new_secret();
    store.add_device("a", "kd02", &public_key(&secret), "good").await.unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _gw = tokio::spawn(serve(listener, store.clone(), private));
    let dev = std::sync::Arc::new(SimDevice::new(secret, public, 1));
    let d2 = dev.clone();
    let _sim = tokio::spawn(async move { d2.run(addr, 20).await });
    dev.log("before");
    until(|| async { app_lines(&store, "kd02").await.len() == 1 }).await;

    // Garbage, an oversized frame announcement, a truncated handshake, an unknown device.
    for bad in [&b"\x00\x05hello"[..], &b"\xff\xff"[..], &b"\x00\x60\x01\x02"[..]] {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(bad).await.unwrap();
        drop(s);
    }
    let stranger = std::sync::Arc::new(SimDevice::new(new_secret(), public, 1));
    stranger.log("should never be stored");
    let s2 = stranger.clone();
    let stranger_task = tokio::spawn(async move { s2.run(addr, 20).await });
    // Two garbage frames are refused; the third refusal is the stranger's handshake.
    let rejected = || store.counters().rejected.load(std::sync::atomic::Ordering::Relaxed);
    until(|| async { rejected() >= 3 }).await;
    stranger_task.abort();
    assert_eq!(stranger.stats().sessions, 0, "unknown device key refused");

    dev.log("after");
    until(|| async { app_lines(&store, "kd02").await.len() == 2 }).await;
    assert_eq!(dev.stats().sessions, 1, "the good device was never disconnected");

    // The refusals were counted for /metrics (above); the one good device authenticated once.
    assert_eq!(store.counters().handshakes.load(std::sync::atomic::Ordering::Relaxed), 1);
    let stored = store.logs("kd02", None, 1000).await.unwrap().len() as u64;
    assert_eq!(store.counters().log_records.load(std::sync::atomic::Ordering::Relaxed), stored);
}

#[test]
fn only_the_newest_connection_of_a_device_marks_it_offline() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let db = common::TestDb::sqlite("online-generations");
        let store = db.open().await;
        let id: std::sync::Arc<str> = "kd01".into();
        let old = store.claim_online(&id);
        let new = store.claim_online(&id);
        assert!(!store.release_online("kd01", old), "the old connection ends after the device reconnected");
        assert!(store.release_online("kd01", new), "the newest one ends: offline");
        assert!(!store.release_online("kd01", new), "only once");
    });
}

/// One metric's value from `/metrics`.
async fn metric(store: &Store, name: &str) -> u64 {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let app = keel_server::http::metrics_router(keel_server::http::AppState::new(store.clone(), [9; 32]));
    let req = axum::http::Request::get("/metrics").body(axum::body::Body::empty()).unwrap();
    let body = app.oneshot(req).await.unwrap().into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8(body.to_vec()).unwrap();
    let line = text.lines().find(|l| l.split(' ').next() == Some(name)).unwrap_or_else(|| panic!("{name} in {text}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

async fn a_handshake_without_ready_times_out_and_is_not_counted_as_rejected(store: Store) {
    use keel_server::gateway::HANDSHAKE_TIMEOUT;
    use tokio::io::AsyncWriteExt;
    let (private, public) = generate_keypair();
    store.create_account("a", "A").await.unwrap();
    let secret = new_secret();
    store.add_device("a", "kd09", &public_key(&secret), "slow").await.unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _gw = tokio::spawn(serve(listener, store.clone(), private));
    // A valid first handshake message (as a replay would be); the welcome comes back, and then
    // no Ready is ever sent.
    let mut session = keel_link::session::DeviceSession::<rand_core::OsRng>::new(&secret, &public).unwrap();
    let hello = hello_from(keel_link::msg::PROTOCOL_VERSION, keel_link::msg::PROTOCOL_VERSION, 0);
    let mut out = vec![0u8; keel_link::session::MAX_FRAME];
    let n = session.start_hello(&hello, &mut out).unwrap();
    let started = tokio::time::Instant::now();
    let (rd, mut wr) = tokio::net::TcpStream::connect(addr).await.unwrap().into_split();
    wr.write_all(&out[..n]).await.unwrap();
    let mut frames = keel_server::framed::FrameReader::<_, { keel_link::session::MAX_FRAME }>::new(rd);
    assert!(frames.next().await.is_ok(), "the welcome");
    assert!(frames.next().await.is_err(), "closed by the server");
    assert!(started.elapsed() >= HANDSHAKE_TIMEOUT, "after the Ready deadline, not before");
    // Then garbage, which is invalid input: only that one counts as rejected.
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"\x00\x05hello").await.unwrap();
    drop(s);
    until(|| async { metric(&store, "keel_gateway_rejected_total").await > 0 }).await;
    assert_eq!(metric(&store, "keel_gateway_rejected_total").await, 1, "the timeout was not counted as rejected");
    assert_eq!(metric(&store, "keel_gateway_connections_total").await, 2);
    assert_eq!(metric(&store, "keel_gateway_handshakes_total").await, 0, "never online");
    assert!(!store.device("kd09").await.unwrap().unwrap().online);
}

/// Limits that also apply on loopback (each test's attackers use their own 127.0.0.x).
fn loopback_limits() -> GatewayLimits {
    GatewayLimits { limit_loopback: true, ..GatewayLimits::default() }
}

/// Starts a gateway with `limits`; returns its address (it stops when the test's runtime ends).
async fn gateway_with(store: &Store, private: Vec<u8>, limits: GatewayLimits) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve_until(listener, store.clone(), private, limits, std::future::pending()));
    addr
}

/// A TCP connection to `addr` from the loopback address `src`.
async fn connect_from(src: [u8; 4], addr: std::net::SocketAddr) -> tokio::net::TcpStream {
    let s = tokio::net::TcpSocket::new_v4().unwrap();
    s.bind(std::net::SocketAddr::from((src, 0))).unwrap();
    s.connect(addr).await.unwrap()
}

/// True if the server closes `s` within `within` (what it sent before is skipped).
async fn closed_within(s: &mut tokio::net::TcpStream, within: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 256];
    tokio::time::timeout(within, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

/// How many of `conns` the server closes within `within` (all waited for at once).
async fn count_closed(conns: &mut [tokio::net::TcpStream], within: Duration) -> usize {
    let waits = conns.iter_mut().map(|s| closed_within(s, within));
    futures_util::future::join_all(waits).await.into_iter().filter(|c| *c).count()
}

/// A first handshake message of the device with `secret` (what a replayer recorded).
fn message_one(secret: &[u8; 32], server: &[u8; 32]) -> Vec<u8> {
    let mut session = keel_link::session::DeviceSession::<rand_core::OsRng>::new(secret, server).unwrap();
    let hello = hello_from(keel_link::msg::PROTOCOL_VERSION, keel_link::msg::PROTOCOL_VERSION, 0);
    let mut out = vec![0u8; keel_link::session::MAX_FRAME];
    let n = session.start_hello(&hello, &mut out).unwrap();
    out.truncate(n);
    out
}

fn load(c: &std::sync::atomic::AtomicU64) -> u64 {
    c.load(std::sync::atomic::Ordering::Relaxed)
}

async fn a_flood_of_garbage_and_replays_does_not_delay_a_device(store: Store) {
    use tokio::io::AsyncWriteExt;
    let (private, public) = generate_keypair();
    store.create_account("a", "A").await.unwrap();
    let (victim, good) = (new_secret(), new_secret());
    store.add_device("a", "kd10", &public_key(&victim), "victim").await.unwrap();
    store.add_device("a", "kd11", &public_key(&good), "good").await.unwrap();
    // Garbage is held for the whole (long) handshake time: only the budgets protect the device.
    let limits = GatewayLimits {
        max_unauthenticated: 200,
        max_unauthenticated_per_address: 64,
        handshake_timeout: Duration::from_secs(60),
        ..loopback_limits()
    };
    let addr = gateway_with(&store, private, limits).await;
    // 500 connections of half a frame header from one address, 100 replays of a real device's
    // first handshake message from another.
    let mut garbage = Vec::new();
    for _ in 0..500 {
        let mut s = connect_from([127, 0, 0, 2], addr).await;
        s.write_all(b"\x00").await.unwrap();
        garbage.push(s);
    }
    let replay = message_one(&victim, &public);
    let mut replays = Vec::new();
    for _ in 0..100 {
        let mut s = connect_from([127, 0, 0, 3], addr).await;
        s.write_all(&replay).await.unwrap();
        replays.push(s);
    }
    // The device connects during the flood and its lines are stored.
    let dev = std::sync::Arc::new(SimDevice::new(good, public, 1));
    let d2 = dev.clone();
    let _sim = tokio::spawn(async move { d2.run(addr, 20).await });
    for i in 0..50 {
        dev.log(&format!("line {i}"));
    }
    tokio::time::timeout(Duration::from_secs(20), until(|| async { app_lines(&store, "kd11").await.len() == 50 }))
        .await
        .expect("the device's lines are stored during the flood");
    assert_eq!(dev.stats().sessions, 1, "admitted at its first attempt");
    // Each flooding address holds its budget; the rest was refused at once.
    let within = Duration::from_secs(3);
    let closed = tokio::join!(count_closed(&mut garbage, within), count_closed(&mut replays, within));
    assert_eq!(closed, (500 - 64, 100 - 64));
    assert_eq!(load(&store.counters().refused_unauthenticated), 436 + 36);
    assert!(!store.device("kd10").await.unwrap().unwrap().online, "no replay brought the victim online");
    assert_eq!(metric(&store, "keel_gateway_refused_unauthenticated_total").await, 436 + 36);
}

async fn connection_caps_and_the_handshake_rate_are_enforced(store: Store) {
    use tokio::io::AsyncWriteExt;
    let (private, public) = generate_keypair();
    store.create_account("a", "A").await.unwrap();
    let good = new_secret();
    store.add_device("a", "kd12", &public_key(&good), "good").await.unwrap();
    let slow = Duration::from_secs(60);
    // Per address: 8 connections held, the 12 others refused at accept.
    let limits = GatewayLimits { max_per_address: 8, handshake_timeout: slow, ..loopback_limits() };
    let addr = gateway_with(&store, private.clone(), limits).await;
    let mut conns = Vec::new();
    for _ in 0..20 {
        conns.push(connect_from([127, 0, 0, 5], addr).await);
    }
    assert_eq!(count_closed(&mut conns, Duration::from_secs(3)).await, 12);
    assert_eq!(load(&store.counters().refused_per_address), 12);
    // Another address is not affected by that one's cap.
    let mut other = connect_from([127, 0, 0, 6], addr).await;
    assert!(!closed_within(&mut other, Duration::from_millis(300)).await);

    // Handshakes per second: a burst of 5, then 1 per second.
    let limits = GatewayLimits {
        handshake_burst_per_address: 5.0,
        handshakes_per_second_per_address: 1.0,
        handshake_timeout: slow,
        ..loopback_limits()
    };
    let addr = gateway_with(&store, private.clone(), limits).await;
    let mut conns = Vec::new();
    for _ in 0..20 {
        let mut s = connect_from([127, 0, 0, 7], addr).await;
        s.write_all(b"\x00").await.unwrap();
        conns.push(s);
    }
    let refused = count_closed(&mut conns, Duration::from_secs(2)).await;
    assert!((13..=15).contains(&refused), "{refused} refused");
    assert_eq!(load(&store.counters().refused_rate), refused as u64);

    // In total: 4 connections; an authenticated device holds one of them.
    let limits = GatewayLimits { max_connections: 4, handshake_timeout: slow, ..loopback_limits() };
    let addr = gateway_with(&store, private, limits).await;
    let dev = std::sync::Arc::new(SimDevice::new(good, public, 1));
    let d2 = dev.clone();
    let _sim = tokio::spawn(async move { d2.run(addr, 20).await });
    dev.wait_online().await;
    let mut conns = Vec::new();
    for i in 0..6 {
        conns.push(connect_from([127, 0, 1, i], addr).await);
    }
    assert_eq!(count_closed(&mut conns, Duration::from_secs(3)).await, 3);
    assert_eq!(load(&store.counters().refused_total_cap), 3);
    dev.log("still served");
    until(|| async { app_lines(&store, "kd12").await.len() == 1 }).await;
}

async fn the_whole_handshake_has_one_deadline(store: Store) {
    use tokio::io::AsyncWriteExt;
    let (private, public) = generate_keypair();
    store.create_account("a", "A").await.unwrap();
    let secret = new_secret();
    store.add_device("a", "kd13", &public_key(&secret), "replayed").await.unwrap();
    let deadline = Duration::from_secs(2);
    let addr = gateway_with(&store, private, GatewayLimits { handshake_timeout: deadline, ..loopback_limits() }).await;
    // A replayer sends the first message late (but within the deadline) and never `Ready`:
    // the connection still ends at the deadline counted from the accept.
    let replay = message_one(&secret, &public);
    let started = tokio::time::Instant::now();
    let mut s = connect_from([127, 0, 0, 8], addr).await;
    s.write_all(&replay[..1]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await; // a slow client, not a synchronisation
    s.write_all(&replay[1..]).await.unwrap();
    assert!(closed_within(&mut s, Duration::from_secs(5)).await, "closed by the server");
    let took = started.elapsed();
    assert!(took >= deadline && took < deadline + Duration::from_millis(900), "closed after {took:?}");
    until(|| async { load(&store.counters().handshake_timeouts) == 1 }).await;
}

async fn bad_bytes_from_a_device_are_stored_alike_on_both_databases(store: Store) {
    use keel_link::msg::{features, PROTOCOL_VERSION};
    let (private, public) = generate_keypair();
    store.create_account("a", "A").await.unwrap();
    let secret = new_secret();
    store.add_device("a", "kd14", &public_key(&secret), "odd bytes").await.unwrap();
    let addr = gateway_with(&store, private, loopback_limits()).await;
    // NUL bytes in every string of the hello.
    let hello = Hello {
        visor_version: "9.9\0.9",
        app: Some(("a\0pp", "1.0\0")),
        ..hello_from(PROTOCOL_VERSION, PROTOCOL_VERSION, features::SUPPORTED)
    };
    let (mut dev, _) = RawDevice::connect(addr, &secret, &public, &hello).await;
    let seq = 3u64 << 32;
    // NUL, invalid UTF-8 and a device-chosen "server note" kind; a sequence number no database
    // column holds; then an ordinary line.
    dev.send(&Up::Log { seq, kind: 0, level: 2, time_us: 1, text: b"nul\0here" }).await;
    dev.send(&Up::Log { seq: seq + 1, kind: 0, level: 2, time_us: 2, text: b"bad \xff\xfe utf-8 \xe2\x82" }).await;
    dev.send(&Up::Log { seq: seq + 2, kind: 2, level: 1, time_us: 3, text: b"dropped 999" }).await;
    dev.send(&Up::Log { seq: 1 << 63 | 5, kind: 0, level: 2, time_us: 4, text: b"too far" }).await;
    dev.send(&Up::Log { seq: seq + 3, kind: 0, level: 2, time_us: 5, text: b"plain \\x41 and \xc3\xa9" }).await;
    assert_eq!(dev.acked(1 << 63 | 5).await, 1 << 63 | 5, "everything acknowledged: nothing is resent forever");
    let logs = store.logs("kd14", None, 100).await.unwrap();
    let texts: Vec<(u64, u8, &str)> = logs.iter().map(|r| (r.seq, r.kind, r.text.as_str())).collect();
    assert_eq!(
        texts,
        [
            (seq, 0, "nul\\x00here"),
            (seq + 1, 0, "bad \\xff\\xfe utf-8 \\xe2\\x82"),
            (seq + 2, 1, "dropped 999"),
            (seq + 3, 0, "plain \\x41 and \u{e9}"),
        ],
        "a device cannot write a server note (kind 2)"
    );
    let (_, _, stored) = store.counts().await.unwrap();
    assert_eq!(stored, 4, "no hidden row for the sequence number above 2^63 - 1");
    assert_eq!(load(&store.counters().log_unstorable), 1);
    let d = store.device("kd14").await.unwrap().unwrap();
    assert_eq!(d.visor_version.as_deref(), Some("9.9\\x00.9"));
    assert_eq!(d.app, Some(("a\\x00pp".to_string(), "1.0\\x00".to_string())));
    assert!(d.online);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_is_a_lease_sqlite() {
    presence_is_a_lease(TestDb::sqlite("presence-lease")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_is_a_lease_postgres() {
    presence_is_a_lease(TestDb::postgres("presence-lease")).await;
}

/// A gateway "process" of its own (its own runtime and store), to kill without any cleanup.
struct Node {
    rt: tokio::runtime::Runtime,
    addr: std::net::SocketAddr,
}

impl Node {
    fn start(url: &str, private: Vec<u8>, limits: GatewayLimits) -> Node {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let url = url.to_string();
        rt.spawn(async move {
            let store = Store::open(&url).await.unwrap();
            let listener = TcpListener::from_std(listener).unwrap();
            serve_until(listener, store, private, limits, std::future::pending()).await
        });
        Node { rt, addr }
    }

    /// kill -9: every task of the node is dropped, nothing runs afterwards.
    fn kill(self) {
        self.rt.shutdown_background();
    }
}

async fn presence_is_a_lease(db: TestDb) {
    let store = db.open().await;
    let (private, public) = generate_keypair();
    store.create_account("a", "A").await.unwrap();
    let secret = new_secret();
    store.add_device("a", "kd15", &public_key(&secret), "leased").await.unwrap();
    let online = || {
        let store = store.clone();
        async move { store.device("kd15").await.unwrap().unwrap().online }
    };
    let run_device = |addr| {
        let dev = std::sync::Arc::new(SimDevice::new(secret, public, 1));
        let d2 = dev.clone();
        (dev, tokio::spawn(async move { d2.run(addr, 20).await }))
    };

    // A node is killed, then starts again under the same name: its devices are offline at once
    // (long before the lease would run out), before any of them reconnects.
    let limits =
        GatewayLimits { node_name: "n1".into(), presence_lease: Duration::from_secs(3600), ..loopback_limits() };
    let node = Node::start(&db.url, private.clone(), limits.clone());
    let (_, sim) = run_device(node.addr);
    until(|| async { online().await }).await;
    sim.abort();
    node.kill();
    assert!(online().await, "nothing ran after the kill");
    let again = Node::start(&db.url, private.clone(), limits);
    until(|| async { !online().await }).await;

    // A node is killed and never comes back: its devices go offline when its lease ends.
    let limits =
        GatewayLimits { node_name: "n2".into(), presence_lease: Duration::from_millis(1500), ..loopback_limits() };
    let node = Node::start(&db.url, private.clone(), limits);
    let (_, sim) = run_device(node.addr);
    until(|| async { online().await }).await;
    sim.abort();
    node.kill();
    let killed = tokio::time::Instant::now();
    until(|| async { !online().await }).await;
    assert!(killed.elapsed() < Duration::from_secs(5), "offline within the lease");
    let (_, _, _) = store.counts().await.unwrap();

    // A graceful stop marks the node's devices offline before it returns.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let limits = GatewayLimits { node_name: "n3".into(), ..loopback_limits() };
    let gw = tokio::spawn(serve_until(listener, store.clone(), private, limits, async {
        let _ = stopped.await;
    }));
    let (dev, sim) = run_device(addr);
    until(|| async { online().await }).await;
    dev.log("before the stop");
    until(|| async { app_lines(&store, "kd15").await.len() == 1 }).await;
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), gw).await.expect("the gateway drains and returns").unwrap();
    assert!(!online().await, "offline once the gateway returned");
    sim.abort();
    again.kill();
}

async fn a_device_whose_boot_counter_went_back_still_gets_its_lines_stored(store: Store) {
    let (private, public) = generate_keypair();
    store.create_account("a", "A").await.unwrap();
    let secret = new_secret();
    store.add_device("a", "kd16", &public_key(&secret), "reflashed").await.unwrap();
    let addr = gateway_with(&store, private, loopback_limits()).await;
    // Boot 7 logs and is stored.
    let dev = std::sync::Arc::new(SimDevice::new(secret, public, 7));
    let d2 = dev.clone();
    let sim = tokio::spawn(async move { d2.run(addr, 20).await });
    for i in 0..5 {
        dev.log(&format!("boot 7 line {i}"));
    }
    until(|| async { app_lines(&store, "kd16").await.len() == 5 }).await;
    sim.abort();
    // The same device after its boot counter was reset (boot 3): lines logged before it
    // connects, and after.
    let dev = std::sync::Arc::new(SimDevice::new(secret, public, 3));
    for i in 0..5 {
        dev.log(&format!("boot 3 line {i}"));
    }
    let d2 = dev.clone();
    let _sim = tokio::spawn(async move { d2.run(addr, 20).await });
    dev.wait_online().await;
    dev.log("boot 3 line 5");
    until(|| async { app_lines(&store, "kd16").await.len() == 11 }).await;
    let lines = app_lines(&store, "kd16").await;
    let texts: Vec<&str> = lines.iter().map(|r| r.text.as_str()).collect();
    assert_eq!(&texts[..6], (0..6).map(|i| format!("boot 3 line {i}")).collect::<Vec<_>>(), "stored in its own order");
    let events = store.device_events("kd16", 10).await.unwrap();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].kind, "log_regression");
    assert!(events[0].text.contains("went back"), "{events:?}");
}

async fn deleting_a_device_ends_its_open_session(store: Store) {
    use keel_link::msg::{features, PROTOCOL_VERSION};
    let (private, public) = generate_keypair();
    store.create_account("a", "A").await.unwrap();
    let (secret, other) = (new_secret(), new_secret());
    store.add_device("a", "kd17", &public_key(&secret), "deleted").await.unwrap();
    store.add_device("a", "kd18", &public_key(&other), "kept").await.unwrap();
    let addr = gateway_with(&store, private, loopback_limits()).await;
    let hello = hello_from(PROTOCOL_VERSION, PROTOCOL_VERSION, features::SUPPORTED);
    let (mut dev, _) = RawDevice::connect(addr, &secret, &public, &hello).await;
    let (mut kept, _) = RawDevice::connect(addr, &other, &public, &hello).await;
    let seq = 3u64 << 32;
    dev.send(&Up::Log { seq, kind: 0, level: 2, time_us: 1, text: b"before" }).await;
    assert_eq!(dev.acked(seq).await, seq);
    store.delete_device("kd17").await.unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if dev.frames.next().await.is_err() {
                return;
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the deleted device's session was ended by the server");
    // The other device's session goes on.
    kept.send(&Up::Log { seq, kind: 0, level: 2, time_us: 1, text: b"still here" }).await;
    assert_eq!(kept.acked(seq).await, seq);
}

async fn daily_quotas_bound_what_one_device_stores(store: Store) {
    use keel_link::msg::{features, UpdateState, VisorEvent, PROTOCOL_VERSION};
    let (private, public) = generate_keypair();
    store.create_account("a", "A").await.unwrap();
    let secret = new_secret();
    store.add_device("a", "kd19", &public_key(&secret), "chatty").await.unwrap();
    // 10 records of 68 bytes (36 + 32) per day, 3 update events.
    let limits =
        GatewayLimits { log_bytes_per_device_per_day: 680, update_events_per_device_per_day: 3, ..loopback_limits() };
    let addr = gateway_with(&store, private, limits).await;
    let hello = hello_from(PROTOCOL_VERSION, PROTOCOL_VERSION, features::SUPPORTED);
    let (mut dev, _) = RawDevice::connect(addr, &secret, &public, &hello).await;
    let seq = 3u64 << 32;
    for i in 0..25 {
        let text = format!("a line of thirty-six bytes, no. {i:03}");
        dev.send(&Up::Log { seq: seq + i, kind: 0, level: 2, time_us: i, text: text.as_bytes() }).await;
    }
    assert_eq!(dev.acked(seq + 24).await, seq + 24, "all acknowledged");
    assert_eq!(store.logs("kd19", None, 100).await.unwrap().len(), 10, "the quota's worth stored");
    assert_eq!(load(&store.counters().log_quota_dropped), 15);
    // Update events: alternating states, each a change.
    for i in 0..10u64 {
        let state = if i % 2 == 0 { UpdateState::Downloading } else { UpdateState::Error };
        let event = VisorEvent::Update { sequence: 7, state: state.as_u8(), reason: 0 };
        dev.send(&Up::Event { seq: seq + 100 + i, time_us: i, event }).await;
    }
    assert_eq!(dev.acked(seq + 109).await, seq + 109);
    let history = store.update_events("kd19", 100).await.unwrap();
    assert_eq!(history.len(), 3, "{history:?}");
    let events = store.device_events("kd19", 10).await.unwrap();
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, ["log_quota", "update_event_quota"], "one event per quota");
}
