//! The remote debugging relay end to end, in-process: the gateway on a loopback port with a
//! device driven by hand (its Noise session; it echoes every debug frame back reversed), the
//! HTTP API served by the real listener (websocket upgrades), and websocket clients.

#[macro_use]
mod common;

use common::TestDb;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use keel_link::msg::{features, Down, Hello, Up, MAX_DEBUG_FRAME, PROTOCOL_MIN, PROTOCOL_VERSION};
use keel_server::gateway::{generate_keypair, serve};
use keel_server::http::{router, AppState};
use keel_server::store::Store;
use keel_sim::{new_secret, public_key};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

on_both_databases!("dbg", frames_cross_the_relay_both_ways_and_the_capture_holds_exactly_them);

const DEV: &str = "kd00112233445566778899aabbccddeeff";
const OTHER: &str = "kd99999999999999999999999999999999";

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A server: gateway and HTTP API on loopback, one account with a device, tokens of each scope.
struct Server {
    store: Store,
    http: SocketAddr,
    gateway: SocketAddr,
    server_public: [u8; 32],
    device_secret: [u8; 32],
    deploy: String,
    read: String,
    _tasks: Vec<tokio::task::JoinHandle<()>>,
}

async fn server(store: Store, capture: Option<&std::path::Path>) -> Server {
    let (private, server_public) = generate_keypair();
    store.create_account("a", "A").await.unwrap();
    store.create_account("b", "B").await.unwrap();
    let device_secret = new_secret();
    store.add_device("a", DEV, &public_key(&device_secret), "debuggee").await.unwrap();
    store.add_device("b", OTHER, &public_key(&new_secret()), "not yours").await.unwrap();
    let deploy = store.create_token_with("a", "dbg", "deploy", None).await.unwrap();
    let read = store.create_token_with("a", "ro", "read", None).await.unwrap();
    let gw = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gateway = gw.local_addr().unwrap();
    let mut state = AppState::new(store.clone(), server_public);
    if let Some(path) = capture {
        state = state.with_debug_capture(path).unwrap();
    }
    let http_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = http_listener.local_addr().unwrap();
    let tasks = vec![
        tokio::spawn(serve(gw, store.clone(), private)),
        tokio::spawn(keel_server::listen::serve(
            http_listener,
            router(state),
            None,
            Default::default(),
            Arc::default(),
            std::future::pending(),
        )),
    ];
    Server { store, http, gateway, server_public, device_secret, deploy, read, _tasks: tasks }
}

impl Server {
    /// Opens the debug websocket of `device` with `token`.
    async fn ws(&self, device: &str, token: &str) -> Result<Ws, WsError> {
        let mut req = format!("ws://{}/v1/devices/{device}/debug", self.http).into_client_request().unwrap();
        req.headers_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
        tokio_tungstenite::connect_async(req).await.map(|(ws, _)| ws)
    }

    /// Connects the device; it echoes debug frames reversed (with `features`) until dropped.
    async fn device(&self, features: u32) -> EchoDevice {
        let dev = EchoDevice::start(self.gateway, &self.device_secret, &self.server_public, features).await;
        // Online once the server handled its `Ready`.
        wait_until("the device is online", || async {
            self.store.device(DEV).await.unwrap().is_some_and(|d| d.online)
        })
        .await;
        dev
    }

    fn counter(&self, f: impl Fn(&keel_server::store::Counters) -> &std::sync::atomic::AtomicU64) -> u64 {
        f(self.store.counters()).load(Ordering::Relaxed)
    }
}

async fn wait_until<F: std::future::Future<Output = bool>>(what: &str, mut f: impl FnMut() -> F) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("never: {what}");
}

/// A device connection that answers every `Down::Debug` with an `Up::Debug` of the frame
/// reversed, counts what it got, and answers pings.
struct EchoDevice {
    task: tokio::task::JoinHandle<()>,
    got: Arc<std::sync::atomic::AtomicU64>,
    /// Sends an `Up::Debug` of its own (not an echo).
    say: tokio::sync::mpsc::UnboundedSender<Vec<u8>>,
}

impl Drop for EchoDevice {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl EchoDevice {
    async fn start(addr: SocketAddr, secret: &[u8; 32], server: &[u8; 32], features: u32) -> EchoDevice {
        use tokio::io::AsyncWriteExt;
        let hello = Hello {
            protocol: PROTOCOL_VERSION,
            visor_version: "9.9.9",
            boot_count: 1,
            app: Some(("hello", "1.0.0")),
            next_log_seq: 1 << 32,
            protocol_min: Some(PROTOCOL_MIN),
            features: Some(features),
        };
        let mut session = keel_link::session::DeviceSession::<rand_core::OsRng>::new(secret, server).unwrap();
        let mut out = vec![0u8; keel_link::session::MAX_FRAME];
        let n = session.start_hello(&hello, &mut out).unwrap();
        let (rd, mut wr) = TcpStream::connect(addr).await.unwrap().into_split();
        wr.write_all(&out[..n]).await.unwrap();
        let mut frames = keel_server::framed::FrameReader::<_, { keel_link::session::MAX_FRAME }>::new(rd);
        let welcome = frames.next().await.unwrap();
        assert!(matches!(session.receive(&welcome).unwrap(), Down::Welcome { .. }));
        let n = session.send(&Up::Ready, &mut out).unwrap();
        wr.write_all(&out[..n]).await.unwrap();
        let got = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (say, mut said) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
        let counted = got.clone();
        let task = tokio::spawn(async move {
            loop {
                let reply = tokio::select! {
                    f = frames.next() => {
                        let Ok(f) = f else { return };
                        match session.receive(&f).unwrap() {
                            Down::Debug { frame } => {
                                counted.fetch_add(1, Ordering::Relaxed);
                                let rev: Vec<u8> = frame.iter().rev().copied().collect();
                                Some(session.send(&Up::Debug { frame: &rev }, &mut out).unwrap())
                            }
                            Down::Ping { nonce } => Some(session.send(&Up::Pong { nonce }, &mut out).unwrap()),
                            _ => None,
                        }
                    }
                    Some(frame) = said.recv() => Some(session.send(&Up::Debug { frame: &frame }, &mut out).unwrap()),
                };
                if let Some(n) = reply {
                    if wr.write_all(&out[..n]).await.is_err() {
                        return;
                    }
                }
            }
        });
        EchoDevice { task, got, say }
    }
}

/// The next binary message (skipping pings), or panics after 10 s.
async fn next_frame(ws: &mut Ws) -> Vec<u8> {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await.expect("a frame in time") {
            Some(Ok(Message::Binary(b))) => return b.to_vec(),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            other => panic!("expected a frame, got {other:?}"),
        }
    }
}

/// Waits for the server's close frame; returns its code and reason.
async fn closed(ws: &mut Ws) -> (CloseCode, String) {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await.expect("a close in time") {
            Some(Ok(Message::Close(Some(f)))) => return (f.code, f.reason.to_string()),
            Some(Ok(Message::Binary(_) | Message::Ping(_) | Message::Pong(_))) => {}
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

fn frame_of(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

async fn frames_cross_the_relay_both_ways_and_the_capture_holds_exactly_them(store: Store) {
    let dir = std::env::temp_dir().join(format!("keel-debug-relay-{}-{}", std::process::id(), rand_tag()));
    std::fs::create_dir_all(&dir).unwrap();
    let capture = dir.join("capture.txt");
    let s = server(store, Some(&capture)).await;
    let dev = s.device(features::SUPPORTED).await;
    let mut ws = s.ws(DEV, &s.deploy).await.unwrap();
    wait_until("attached", || async { s.store.debug_relay().is_attached(DEV) }).await;
    let mut expected = String::new();
    for (i, len) in [1usize, 2, 17, 100, 512, 959, MAX_DEBUG_FRAME].into_iter().enumerate() {
        let f = frame_of(len, i as u8);
        ws.send(Message::Binary(f.clone().into())).await.unwrap();
        let echo = next_frame(&mut ws).await;
        let rev: Vec<u8> = f.iter().rev().copied().collect();
        assert_eq!(echo, rev, "frame {i} ({len} bytes) came back reversed");
        expected += &format!("down {}\nup {}\n", keel_server::hex(&f), keel_server::hex(&rev));
    }
    assert_eq!(dev.got.load(Ordering::Relaxed), 7);
    assert_eq!(s.counter(|c| &c.debug_to_device), 7);
    assert_eq!(s.counter(|c| &c.debug_to_client), 7);
    assert_eq!(s.counter(|c| &c.debug_sessions), 1);
    // The capture holds exactly the frames the relay forwarded, in order, as hex: ciphertext
    // in real sessions; here the test's bytes.
    assert_eq!(std::fs::read_to_string(&capture).unwrap(), expected);
    // The metrics show the relay.
    let metrics = keel_server::http::metrics_router(AppState::new(s.store.clone(), [0; 32]));
    let text = metrics_text(&metrics).await;
    for line in [
        "keel_debug_sessions 1",
        "keel_debug_frames_to_device_total 7",
        "keel_debug_frames_to_client_total 7",
        "keel_debug_frames_dropped_total{reason=\"rate\"} 0",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
    }
    // The client closes: detached.
    ws.close(None).await.unwrap();
    wait_until("detached", || async { !s.store.debug_relay().is_attached(DEV) }).await;
    let _ = std::fs::remove_dir_all(&dir);
}

async fn metrics_text(app: &axum::Router) -> String {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let req = axum::http::Request::get("/metrics").body(axum::body::Body::empty()).unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    String::from_utf8(resp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
}

fn rand_tag() -> u64 {
    use rand_core::RngCore;
    rand_core::OsRng.next_u64()
}

fn status_of(r: Result<Ws, WsError>) -> u16 {
    match r {
        Err(WsError::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("expected an HTTP answer, got {e}"),
        Ok(_) => panic!("expected a refusal, got a websocket"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_deploy_token_of_the_devices_account_may_attach() {
    let db = TestDb::sqlite("dbg_scope");
    let s = server(db.open().await, None).await;
    assert_eq!(status_of(s.ws(DEV, &s.read).await), 403, "a read-only token");
    assert_eq!(status_of(s.ws(DEV, "keel_not_a_token").await), 401);
    assert_eq!(status_of(s.ws("kd0000000000000000000000000000000f", &s.deploy).await), 404, "no such device");
    assert_eq!(status_of(s.ws(OTHER, &s.deploy).await), 404, "another account's device");
    // A plain GET (no upgrade) with a good token: a JSON 400 saying it is a websocket.
    let app = router(AppState::new(s.store.clone(), [0; 32]));
    let (status, body) = common::call(&app, "GET", &format!("/v1/devices/{DEV}/debug"), Some(&s.deploy), None).await;
    assert_eq!(status, axum::http::StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "not_websocket");
    assert_eq!(s.counter(|c| &c.debug_sessions), 0);
    // An admin token may (scopes include the ones below).
    let admin = s.store.create_token("a", "admin").await.unwrap();
    assert!(s.ws(DEV, &admin).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_websocket_replaces_the_first() {
    let db = TestDb::sqlite("dbg_replace");
    let s = server(db.open().await, None).await;
    let _dev = s.device(features::SUPPORTED).await;
    let mut first = s.ws(DEV, &s.deploy).await.unwrap();
    first.send(Message::Binary(b"one".to_vec().into())).await.unwrap();
    assert_eq!(next_frame(&mut first).await, b"eno");
    let mut second = s.ws(DEV, &s.deploy).await.unwrap();
    let (code, reason) = closed(&mut first).await;
    assert_eq!((code, reason.as_str()), (CloseCode::Normal, "replaced"));
    // The device's frames now reach the second one only.
    second.send(Message::Binary(b"two".to_vec().into())).await.unwrap();
    assert_eq!(next_frame(&mut second).await, b"owt");
    assert_eq!(s.counter(|c| &c.debug_sessions_replaced), 1);
    assert_eq!(s.store.debug_relay().sessions(), 1);
    // The replaced one leaving does not detach the new one.
    drop(first);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(s.store.debug_relay().is_attached(DEV));
    second.send(Message::Binary(b"three".to_vec().into())).await.unwrap();
    assert_eq!(next_frame(&mut second).await, b"eerht");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_frame_or_a_text_message_closes_the_socket_with_a_reason() {
    let db = TestDb::sqlite("dbg_oversize");
    let s = server(db.open().await, None).await;
    let dev = s.device(features::SUPPORTED).await;
    let mut ws = s.ws(DEV, &s.deploy).await.unwrap();
    ws.send(Message::Binary(vec![0u8; MAX_DEBUG_FRAME + 1].into())).await.unwrap();
    let (code, reason) = closed(&mut ws).await;
    assert_eq!(code, CloseCode::Size);
    assert!(reason.contains("960"), "{reason}");
    // Far over the limit (beyond what the server reads at all): closed too.
    let mut ws = s.ws(DEV, &s.deploy).await.unwrap();
    let _ = ws.send(Message::Binary(vec![0u8; 100_000].into())).await;
    let end = tokio::time::timeout(Duration::from_secs(10), ws.next()).await.expect("closed in time");
    assert!(!matches!(end, Some(Ok(Message::Binary(_)))), "{end:?}");
    let mut ws = s.ws(DEV, &s.deploy).await.unwrap();
    ws.send(Message::Text("vCont?".into())).await.unwrap();
    let (code, reason) = closed(&mut ws).await;
    assert_eq!(code, CloseCode::Unsupported);
    assert!(reason.contains("binary"), "{reason}");
    assert_eq!(dev.got.load(Ordering::Relaxed), 0, "nothing reached the device");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_nobody_can_take_are_dropped_and_counted() {
    let db = TestDb::sqlite("dbg_drops");
    let s = server(db.open().await, None).await;
    // The device is offline: the client's frames are dropped.
    let mut ws = s.ws(DEV, &s.deploy).await.unwrap();
    for _ in 0..5 {
        ws.send(Message::Binary(b"lost".to_vec().into())).await.unwrap();
    }
    wait_until("5 dropped, device offline", || async { s.counter(|c| &c.debug_dropped_offline) == 5 }).await;
    drop(ws);
    wait_until("detached", || async { !s.store.debug_relay().is_attached(DEV) }).await;
    // A device frame with no debugger attached: dropped.
    let dev = s.device(features::SUPPORTED).await;
    dev.say.send(b"anyone?".to_vec()).unwrap();
    wait_until("dropped, no client", || async { s.counter(|c| &c.debug_dropped_no_client) == 1 }).await;
    drop(dev);
    wait_until("offline", || async { !s.store.device(DEV).await.unwrap().is_some_and(|d| d.online) }).await;
    // A device that did not announce DEBUG never gets a frame.
    let dev = s.device(features::UPDATES | features::EVENTS).await;
    let mut ws = s.ws(DEV, &s.deploy).await.unwrap();
    ws.send(Message::Binary(b"x".to_vec().into())).await.unwrap();
    wait_until("dropped, not negotiated", || async { s.counter(|c| &c.debug_dropped_not_negotiated) == 1 }).await;
    assert_eq!(dev.got.load(Ordering::Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_from_the_client_is_rate_limited_not_queued() {
    use keel_server::http::{DEBUG_BURST, DEBUG_RATE};
    let db = TestDb::sqlite("dbg_flood");
    let s = server(db.open().await, None).await;
    let dev = s.device(features::SUPPORTED).await;
    let ws = s.ws(DEV, &s.deploy).await.unwrap();
    let (mut tx, mut rx) = ws.split();
    // Drain the echoes so the device side never blocks.
    let echoes = tokio::spawn(async move {
        let mut n = 0u64;
        while let Some(Ok(m)) = rx.next().await {
            if matches!(m, Message::Binary(_)) {
                n += 1;
            }
        }
        n
    });
    let start = Instant::now();
    const SENT: u64 = 5000;
    let f = frame_of(256, 1);
    for _ in 0..SENT {
        tx.feed(Message::Binary(f.clone().into())).await.unwrap();
    }
    tx.flush().await.unwrap();
    // Every frame is accounted for: relayed to the device's mailbox or dropped for the rate.
    wait_until("every frame accounted for", || async {
        s.counter(|c| &c.debug_to_device) + s.counter(|c| &c.debug_dropped_rate) == SENT
    })
    .await;
    let elapsed = start.elapsed().as_secs_f64();
    let relayed = s.counter(|c| &c.debug_to_device);
    let bound = (DEBUG_BURST + DEBUG_RATE * elapsed).ceil() as u64 + 1;
    assert!(relayed <= bound, "{relayed} frames relayed in {elapsed:.2} s (bound {bound})");
    assert!(relayed >= DEBUG_BURST as u64, "the burst passes: {relayed}");
    assert!(s.counter(|c| &c.debug_dropped_rate) >= SENT - bound);
    // What the device got is at most what was relayed (a full mailbox drops, counted, too).
    wait_until("the device has the relayed frames", || async {
        dev.got.load(Ordering::Relaxed) + s.store.bus().dropped() == relayed
    })
    .await;
    // The session still works after the flood (once the bucket refills).
    tokio::time::sleep(Duration::from_millis(50)).await;
    tx.send(Message::Binary(b"after".to_vec().into())).await.unwrap();
    wait_until("the frame after the flood", || async { s.counter(|c| &c.debug_to_device) == relayed + 1 }).await;
    tx.send(Message::Close(None)).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), echoes).await.unwrap().unwrap();
    assert!(got <= relayed + 1, "{got} echoes");
}
