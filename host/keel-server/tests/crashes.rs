//! Crash dumps for post-mortem debugging, end to end: a device driven by hand sends the visor's
//! crash events (crash, registers, stack chunks) through the real gateway, in good and hostile
//! orders, and the API serves what was assembled. Every test runs on SQLite and PostgreSQL.

#[macro_use]
mod common;

use axum::http::StatusCode;
use common::{call, TestDb};
use keel_link::msg::{features, CrashInfo, Down, Hello, Up, VisorEvent, PROTOCOL_VERSION};
use keel_server::crash::{CRASH_CHUNK_WORDS, CRASH_DUMP_BYTES, MAX_CRASHES_PER_DEVICE};
use keel_server::gateway::{generate_keypair, serve};
use keel_server::http::{router, AppState, CrashJson, CrashSummaryJson};
use keel_server::store::Store;
use keel_sim::{new_secret, public_key};
use tokio::net::TcpListener;

on_both_databases!("crash_", a_crash_dump_is_assembled_across_connections_and_served);
on_both_databases!("crash_", hostile_orders_leave_sane_rows);
on_both_databases!("crash_", a_device_keeps_its_newest_crashes);

/// A device end driven by hand: its session, its frames from the server and its write half.
struct RawDevice {
    session: keel_link::session::DeviceSession<rand_core::OsRng>,
    frames: keel_server::framed::FrameReader<tokio::net::tcp::OwnedReadHalf, { keel_link::session::MAX_FRAME }>,
    wr: tokio::net::tcp::OwnedWriteHalf,
}

impl RawDevice {
    /// Connects, handshakes with `hello` and sends `Ready`.
    async fn connect(addr: std::net::SocketAddr, secret: &[u8; 32], server: &[u8; 32], hello: &Hello<'_>) -> Self {
        use tokio::io::AsyncWriteExt;
        let mut session = keel_link::session::DeviceSession::new(secret, server).unwrap();
        let mut out = vec![0u8; keel_link::session::MAX_FRAME];
        let n = session.start_hello(hello, &mut out).unwrap();
        let (rd, mut wr) = tokio::net::TcpStream::connect(addr).await.unwrap().into_split();
        wr.write_all(&out[..n]).await.unwrap();
        let mut frames = keel_server::framed::FrameReader::new(rd);
        let welcome = frames.next().await.unwrap();
        assert!(matches!(session.receive(&welcome).unwrap(), Down::Welcome { .. }));
        let mut dev = RawDevice { session, frames, wr };
        dev.send(&Up::Ready).await;
        dev
    }

    async fn send(&mut self, m: &Up<'_>) {
        use tokio::io::AsyncWriteExt;
        let mut plain = vec![0u8; 1024];
        let n = keel_link::msg::encode(m, &mut plain).unwrap();
        let mut out = vec![0u8; keel_link::session::MAX_FRAME];
        let n = self.session.send_raw(&plain[..n], &mut out).unwrap();
        self.wr.write_all(&out[..n]).await.unwrap();
    }

    /// Sends visor events with consecutive sequence numbers from `seq` and waits until they are
    /// stored (their `LogAck`).
    async fn events(&mut self, seq: u64, events: &[VisorEvent]) {
        for (i, event) in events.iter().enumerate() {
            self.send(&Up::Event { seq: seq + i as u64, time_us: 1000 + i as u64, event: *event }).await;
        }
        let last = seq + events.len() as u64 - 1;
        loop {
            let f = self.frames.next().await.unwrap();
            if let Down::LogAck { upto } = self.session.receive(&f).unwrap() {
                if upto >= last {
                    return;
                }
            }
        }
    }
}

fn hello(boot: u32) -> Hello<'static> {
    Hello {
        protocol: PROTOCOL_VERSION,
        visor_version: "0.9.0",
        boot_count: boot,
        app: Some(("hello", "1.2.0")),
        next_log_seq: (boot as u64) << 32,
        protocol_min: Some(PROTOCOL_VERSION),
        features: Some(features::SUPPORTED),
    }
}

/// Stack word `i` of the tests' dumps.
fn word(i: usize) -> u32 {
    0x2000_0000 + (i as u32) * 0x0101_0101
}

/// The stack chunk at word `from` with `len` words.
fn chunk(from: usize, len: usize) -> VisorEvent {
    let mut words = [0u32; CRASH_CHUNK_WORDS];
    for (k, w) in words.iter_mut().enumerate().take(len) {
        *w = word(from + k);
    }
    VisorEvent::CrashStack { offset: (from * 4) as u16, words, len: len as u8 }
}

/// The bytes the first `n` words of the stack should be stored as, in hex.
fn stack_hex(n: usize) -> String {
    (0..n).flat_map(|i| word(i).to_le_bytes()).map(|b| format!("{b:02x}")).collect()
}

fn crash(pc: u32) -> VisorEvent {
    VisorEvent::Crash(CrashInfo {
        kind: 5,
        pc,
        lr: 0x0020_0101,
        sp: 0x2000_0F00,
        xpsr: 0x0100_0000,
        cfsr: 0x0000_8200,
        hfsr: 0x4000_0000,
        sfsr: 0,
        bfar: 0xDEAD_BEEF,
        exc_return: 0xFFFF_FFBC,
        stack: [9; 8],
    })
}

fn regs(base: u32) -> VisorEvent {
    VisorEvent::CrashRegs { regs: std::array::from_fn(|i| base + i as u32) }
}

/// A server with accounts `a` (device `kd01`, admin and read tokens) and `b` (device `kd02`),
/// its gateway on loopback.
struct Setup {
    app: axum::Router,
    addr: std::net::SocketAddr,
    server: [u8; 32],
    secret: [u8; 32],
    admin: String,
    read: String,
    other: String,
}

async fn setup(store: &Store) -> Setup {
    let (private, server) = generate_keypair();
    store.create_account("a", "A").await.unwrap();
    store.create_account("b", "B").await.unwrap();
    let secret = new_secret();
    store.add_device("a", "kd01", &public_key(&secret), "crashy").await.unwrap();
    store.add_device("b", "kd02", &public_key(&new_secret()), "theirs").await.unwrap();
    let admin = store.create_token("a", "admin").await.unwrap();
    let read = store.create_token_with("a", "reader", "read", None).await.unwrap();
    let other = store.create_token("b", "b").await.unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve(listener, store.clone(), private));
    let app = router(AppState::new(store.clone(), [9; 32]));
    Setup { app, addr, server, secret, admin, read, other }
}

async fn list(s: &Setup, device: &str) -> Vec<CrashSummaryJson> {
    let (status, body) = call(&s.app, "GET", &format!("/v1/devices/{device}/crashes"), Some(&s.read), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    serde_json::from_value(body).unwrap()
}

async fn show(s: &Setup, device: &str, id: &str) -> CrashJson {
    let (status, body) = call(&s.app, "GET", &format!("/v1/devices/{device}/crashes/{id}"), Some(&s.read), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    serde_json::from_value(body).unwrap()
}

async fn a_crash_dump_is_assembled_across_connections_and_served(store: Store) {
    let s = setup(&store).await;
    let mut dev = RawDevice::connect(s.addr, &s.secret, &s.server, &hello(3)).await;
    let seq = 3u64 << 32;
    // Crash, registers, three chunks (the last one short): 16 + 16 + 5 words.
    dev.events(seq, &[crash(0x0020_0123), regs(100), chunk(0, 16), chunk(16, 16), chunk(32, 5)]).await;
    let crashes = list(&s, "kd01").await;
    assert_eq!(crashes.len(), 1);
    let c = &crashes[0];
    assert!(c.id.starts_with("cr-") && c.id.len() == 15, "{}", c.id);
    assert_eq!(
        (c.kind.as_str(), c.kind_code, c.pc, c.lr, c.sp),
        ("BusFault", 5, 0x0020_0123, 0x0020_0101, 0x2000_0F00)
    );
    assert_eq!((c.app_name.as_deref(), c.app_version.as_deref()), (Some("hello"), Some("1.2.0")));
    assert_eq!((c.stack_bytes, c.seq, c.device_time_us), (37 * 4, seq, 1000));
    assert!(c.received_at_us > 0);
    let full = show(&s, "kd01", &c.id).await;
    assert_eq!(full.summary(), *c);
    assert_eq!(full.regs, Some((100..113).collect::<Vec<u32>>()));
    assert_eq!((full.stack_base, full.stack_hex.clone()), (0x2000_0F00, stack_hex(37)));
    assert_eq!((full.xpsr, full.cfsr, full.hfsr, full.sfsr), (0x0100_0000, 0x8200, 0x4000_0000, 0));
    assert_eq!((full.bfar, full.exc_return), (0xDEAD_BEEF, 0xFFFF_FFBC));
    // The log still holds every event as text.
    let texts: Vec<String> = store.logs("kd01", None, 10).await.unwrap().into_iter().map(|r| r.text).collect();
    assert!(texts[0].starts_with("app crash: BusFault") && texts[4].starts_with("app crash stack +128:"));

    // A dump split across connections: the crash and its registers on one, the stack on the
    // next (which resumes after the acknowledged records).
    let seq = seq + 5;
    dev.events(seq, &[crash(0x0020_0200), regs(200)]).await;
    drop(dev);
    let mut dev = RawDevice::connect(s.addr, &s.secret, &s.server, &hello(3)).await;
    dev.events(seq + 2, &[chunk(0, 16), chunk(16, 2)]).await;
    // A record delivered again (its acknowledgement was lost) changes nothing: not the crash,
    // not its chunk.
    dev.events(seq, &[crash(0x0020_0200), regs(300), chunk(0, 16)]).await;
    let crashes = list(&s, "kd01").await;
    assert_eq!(crashes.iter().map(|c| c.pc).collect::<Vec<_>>(), [0x0020_0200, 0x0020_0123], "newest first");
    let second = show(&s, "kd01", &crashes[0].id).await;
    assert_eq!((second.regs, second.stack_hex), (Some((200..213).collect()), stack_hex(18)));

    // Scopes and accounts: any token of the account reads them; another account's token, an
    // unknown crash, or a crash asked for under another device answer 404, no token 401.
    let (first, path) = (&crashes[1].id, format!("/v1/devices/kd01/crashes/{}", crashes[1].id));
    assert_eq!(call(&s.app, "GET", &path, Some(&s.admin), None).await.0, StatusCode::OK);
    assert_eq!(call(&s.app, "GET", &path, None, None).await.0, StatusCode::UNAUTHORIZED);
    let (status, body) = call(&s.app, "GET", &path, Some(&s.other), None).await;
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::NOT_FOUND, Some("not_found")));
    assert!(!body.to_string().contains("0x00200123") && !body.to_string().contains(&stack_hex(2)));
    assert_eq!(call(&s.app, "GET", "/v1/devices/kd01/crashes", Some(&s.other), None).await.0, StatusCode::NOT_FOUND);
    let (status, body) = call(&s.app, "GET", "/v1/devices/kd01/crashes/cr-000000000000", Some(&s.read), None).await;
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::NOT_FOUND, Some("not_found")));
    let theirs = format!("/v1/devices/kd02/crashes/{first}");
    assert_eq!(call(&s.app, "GET", &theirs, Some(&s.other), None).await.0, StatusCode::NOT_FOUND);
    assert_eq!(call(&s.app, "GET", "/v1/devices/kd99/crashes", Some(&s.read), None).await.0, StatusCode::NOT_FOUND);
    let (status, body) = call(&s.app, "GET", "/v1/devices/kd02/crashes", Some(&s.other), None).await;
    assert_eq!((status, body), (StatusCode::OK, serde_json::json!([])));

    // Deleting the device deletes its crashes.
    drop(dev);
    assert_eq!(call(&s.app, "DELETE", "/v1/devices/kd01", Some(&s.admin), None).await.0, StatusCode::NO_CONTENT);
    assert!(store.crashes("a", "kd01").await.unwrap().is_empty());
}

async fn hostile_orders_leave_sane_rows(store: Store) {
    let s = setup(&store).await;
    let mut dev = RawDevice::connect(s.addr, &s.secret, &s.server, &hello(4)).await;
    let mut seq = 4u64 << 32;
    let mut send = |events: Vec<VisorEvent>| {
        let at = seq;
        seq += events.len() as u64;
        (at, events)
    };

    // Registers and stack with no crash before them: nothing.
    let (at, evs) = send(vec![regs(1), chunk(0, 16), chunk(16, 3)]);
    dev.events(at, &evs).await;
    assert!(list(&s, "kd01").await.is_empty());

    // A gap, a duplicate offset, an overlap and too much stack: only the chunks that continue
    // the stack exactly, up to CRASH_DUMP_BYTES. The second registers are ignored.
    let full = CRASH_DUMP_BYTES / 4;
    let mut evs = vec![crash(0x0020_1000), chunk(16, 16), regs(10), chunk(0, 16), chunk(0, 16), regs(20)];
    let mut overlap = chunk(8, 16);
    if let VisorEvent::CrashStack { offset, .. } = &mut overlap {
        *offset = 32; // not where the stack ends (64), inside it
    }
    evs.push(overlap);
    for from in (16..full).step_by(CRASH_CHUNK_WORDS) {
        evs.push(chunk(from, 16));
    }
    evs.push(chunk(full, 16)); // past CRASH_DUMP_BYTES
    let (at, evs) = send(evs);
    dev.events(at, &evs).await;
    let c = &list(&s, "kd01").await[0];
    assert_eq!(c.stack_bytes as usize, CRASH_DUMP_BYTES);
    let c = show(&s, "kd01", &c.id).await;
    assert_eq!((c.regs, c.stack_hex), (Some((10..23).collect()), stack_hex(full)));

    // After a short chunk the dump has ended: a chunk at the right offset is ignored.
    let (at, evs) = send(vec![crash(0x0020_2000), chunk(0, 4), chunk(4, 16)]);
    dev.events(at, &evs).await;
    let c = &list(&s, "kd01").await[0];
    assert_eq!((c.pc, c.stack_bytes), (0x0020_2000, 16));

    // Two crashes back to back: the first stays as it is (no registers, no stack), the parts
    // that follow go to the second.
    let (at, evs) = send(vec![crash(0x0020_3000), crash(0x0020_4000), regs(30), chunk(0, 16), chunk(16, 1)]);
    dev.events(at, &evs).await;
    let crashes = list(&s, "kd01").await;
    assert_eq!(crashes.iter().map(|c| c.pc).collect::<Vec<_>>(), [0x0020_4000, 0x0020_3000, 0x0020_2000, 0x0020_1000]);
    let (newest, older) = (show(&s, "kd01", &crashes[0].id).await, show(&s, "kd01", &crashes[1].id).await);
    assert_eq!((newest.regs, newest.stack_hex), (Some((30..43).collect()), stack_hex(17)));
    assert_eq!((older.regs, older.stack_hex, older.stack_bytes), (None, String::new(), 0));

    // A crash whose parts never came, then parts of the next boot: they do not belong to it.
    let (at, evs) = send(vec![crash(0x0020_5000)]);
    dev.events(at, &evs).await;
    drop(dev);
    let mut dev = RawDevice::connect(s.addr, &s.secret, &s.server, &hello(5)).await;
    dev.events(5 << 32, &[regs(50), chunk(0, 16)]).await;
    let c = show(&s, "kd01", &list(&s, "kd01").await[0].id).await;
    assert_eq!((c.pc, c.regs, c.stack_bytes), (0x0020_5000, None, 0));

    // A chunk of more than 16 words is malformed on the wire: that connection ends, the rows
    // stay as they were and the device connects again.
    let before = list(&s, "kd01").await;
    let mut bad = vec![0x82, 0x05, 0x83, 0x1B];
    bad.extend_from_slice(&((5u64 << 32) + 2).to_be_bytes());
    bad.extend_from_slice(&[0x01, 0x82, 0x09, 0x93, 0x00, 0x11]); // [9, [0, 17, 17 words]]
    bad.extend(std::iter::repeat_n(0x01, 17));
    {
        use tokio::io::AsyncWriteExt;
        let mut out = vec![0u8; keel_link::session::MAX_FRAME];
        let n = dev.session.send_raw(&bad, &mut out).unwrap();
        dev.wr.write_all(&out[..n]).await.unwrap();
    }
    assert!(dev.frames.next().await.is_err(), "closed by the server");
    assert_eq!(list(&s, "kd01").await, before);
    let mut dev = RawDevice::connect(s.addr, &s.secret, &s.server, &hello(5)).await;
    dev.events((5 << 32) + 2, &[crash(0x0020_6000)]).await;
    assert_eq!(list(&s, "kd01").await.len(), before.len() + 1);
}

async fn a_device_keeps_its_newest_crashes(store: Store) {
    let s = setup(&store).await;
    let mut dev = RawDevice::connect(s.addr, &s.secret, &s.server, &hello(6)).await;
    let n = MAX_CRASHES_PER_DEVICE as u64 + 5;
    let seq = 6u64 << 32;
    // One at a time, so each arrives in its own batch, and a few more with their dumps.
    for i in 0..n {
        dev.events(seq + 3 * i, &[crash(i as u32), regs(i as u32), chunk(0, 2)]).await;
    }
    let crashes = list(&s, "kd01").await;
    assert_eq!(crashes.len(), MAX_CRASHES_PER_DEVICE as usize);
    let pcs: Vec<u32> = crashes.iter().map(|c| c.pc).collect();
    assert_eq!(pcs, (5..n as u32).rev().collect::<Vec<_>>(), "the newest 20, newest first");
    assert!(crashes.iter().all(|c| c.stack_bytes == 8));
    // The oldest crash's record delivered again (its log record is stored already): it does
    // not come back as a new crash, though its row was deleted.
    dev.events(seq, &[crash(0)]).await;
    assert_eq!(list(&s, "kd01").await, crashes);
    // Another account's query sees none of them.
    assert!(store.crashes("b", "kd01").await.unwrap().is_empty());
}
