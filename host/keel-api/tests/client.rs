//! The client against a real server: a `keel_server` node (what `keel server run` starts: the
//! HTTP listener with its limits, optionally TLS, SQLite, the local object store) run in-process
//! on loopback ports. Every route the client has, and how each kind of failure comes back.

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use keel_api::{
    ApiError, Client, DevicePatch, DevicesQuery, EventsQuery, LogQuery, NewDeployment, NewDevice, NewSignerKey,
    NewToken, StreamQuery, UploadQuery,
};
use keel_server::node::{Config, Node, TlsFiles};
use keel_server::store::{LogRecord, Store};

/// A device registered before the server starts, with three log records.
const DEV: &str = "kd0123456789abcdef0123456789abcdef";

/// A server node on loopback, stopped (gracefully) and its data removed when dropped.
struct Server {
    url: String,
    /// The device gateway and its key.
    gateway: SocketAddr,
    server_public: [u8; 32],
    /// An admin token of account `a`.
    token: String,
    dir: PathBuf,
    rt: tokio::runtime::Runtime,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    done: Option<tokio::task::JoinHandle<Result<(), String>>>,
}

impl Server {
    fn start(name: &str, tls: Option<TlsFiles>) -> Server {
        let dir = std::env::temp_dir().join(format!("keel-api-client-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let data = dir.join("data");
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let any: SocketAddr = ([127, 0, 0, 1], 0).into();
        let (node, token) = rt.block_on(async {
            // What `keel server init` does, plus a device with logs.
            keel_server::node::create_data_dir(&data).unwrap();
            let store = Store::open(&keel_server::node::database_url(&data, None)).await.unwrap();
            store.create_account("a", "Acme").await.unwrap();
            let token = store.create_token("a", "test").await.unwrap();
            store.add_device("a", DEV, &[1; 32], "logger").await.unwrap();
            for n in 1..=3u64 {
                let (text, received_at) = (format!("line {n}"), keel_server::unix_us());
                let rec = LogRecord { seq: 1 << 32 | n, kind: 0, level: 2, device_time_us: n, received_at, text };
                store.insert_log(DEV, &rec).await.unwrap();
            }
            drop(store);
            let mut config = Config::new(&data, any, any);
            config.tls = tls;
            (Node::start(config).await.unwrap(), token)
        });
        let url = node.api_url();
        let (gateway, server_public) = (node.gateway_addr(), node.public_key());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let done = rt.spawn(node.run(async {
            let _ = stopped.await;
        }));
        Server { url, gateway, server_public, token, dir, rt, stop: Some(stop), done: Some(done) }
    }

    fn client(&self) -> Client {
        Client::new(&self.url).with_token(&self.token).with_timeout(Duration::from_secs(30))
    }

    fn stop(&mut self) {
        if let (Some(stop), Some(done)) = (self.stop.take(), self.done.take()) {
            let _ = stop.send(());
            let _ = self.rt.block_on(done);
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn api_error(r: Result<impl std::fmt::Debug, ApiError>) -> (u16, String) {
    match r {
        Err(ApiError::Api { status, code, message }) => {
            assert!(!message.is_empty());
            (status, code)
        }
        other => panic!("expected an error answer, got {other:?}"),
    }
}

/// A bundle of `hello` `version` with a 3000-byte image, signed by `key`.
fn bundle(key: &keel_bundle::SigningKey, version: &str, sequence: u64) -> Vec<u8> {
    use keel_bundle::{BundleSpec, LayerSpec, Policies, Target};
    let image: Vec<u8> = (0..3000).map(|i: usize| (i * 7) as u8).collect();
    let h = keel_image::build_header(&image, 0x0020_0000, 0x2800_0000, "hello", version, (2, 0));
    let mut slot = h.to_bytes().to_vec();
    slot.extend(image);
    let layers = [LayerSpec { id: "app", target: Target::AppSlot, bytes: &slot }];
    let policies = Policies { app_name: "hello", app_version: version, ..Policies::default() };
    let spec = BundleSpec { sequence, layers: &layers, policies };
    keel_bundle::build_bundle(&spec, key, keel_bundle::reference_region_capacity).unwrap()
}

/// Counts the bytes read through it (as the CLI's progress bar does).
struct Counting<R>(R, Arc<AtomicU64>);

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.0.read(buf)?;
        self.1.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

#[test]
fn devices_tokens_and_error_answers() {
    let s = Server::start("devices", None);
    let api = s.client();
    assert!(!api.server_info().unwrap().version.is_empty());

    // 401: a bad token, with the API's code.
    let bad = Client::new(&s.url).with_token("keel_bogus");
    let e = bad.devices(&DevicesQuery::default()).unwrap_err();
    assert_eq!((e.status(), e.code()), (Some(401), Some("unauthorized")), "{e}");
    assert!(e.to_string().ends_with("(HTTP 401)") && !e.is_transient(), "{e}");
    assert_eq!(api_error(Client::new(&s.url).tokens()), (401, "unauthorized".into()));

    // Register, then again: 409.
    let id = format!("kd{}", "ab".repeat(16));
    let new = NewDevice { id: id.clone(), name: "d1".into(), public_key: "02".repeat(32), tags: vec!["field".into()] };
    let d = api.register_device(&new).unwrap();
    assert_eq!((d.id.as_str(), d.name.as_str(), d.online), (id.as_str(), "d1", false));
    assert_eq!(api_error(api.register_device(&new)), (409, "device_unavailable".into()));
    // 413: a JSON body over the API's 64 KiB.
    let huge = NewDevice { name: "x".repeat(70 << 10), id: format!("kd{}", "cd".repeat(16)), ..new };
    assert_eq!(api_error(api.register_device(&huge)).0, 413);

    // Queries and paths.
    let tagged = api.devices(&DevicesQuery { tag: Some("field".into()) }).unwrap();
    assert_eq!(tagged.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(), [id.as_str()]);
    assert!(api.devices(&DevicesQuery { tag: Some("a b&tag=field".into()) }).unwrap().is_empty());
    assert_eq!(api.devices(&DevicesQuery::default()).unwrap().len(), 2);
    assert_eq!(api_error(api.device("kd/../../v1/tokens")), (404, "not_found".into()));
    let patch = DevicePatch { name: Some("renamed".into()), tags: Some(vec![]) };
    let d = api.patch_device(&id, &patch).unwrap();
    assert_eq!((d.name.as_str(), d.tags.len()), ("renamed", 0));
    assert_eq!(api.device(&id).unwrap().name, "renamed");

    // Logs: pages.
    let all = api.logs(DEV, &LogQuery::default()).unwrap();
    assert_eq!(all.iter().map(|l| l.text.as_str()).collect::<Vec<_>>(), ["line 1", "line 2", "line 3"]);
    let page = api.logs(DEV, &LogQuery { after: Some(all[0].seq), limit: Some(1) }).unwrap();
    assert_eq!(page, all[1..2]);
    assert!(api.metrics().unwrap().contains("keel_"));

    // Tokens and scopes: 403 for a read token, 401 once revoked.
    let t = api
        .create_token(&NewToken { name: "ci".into(), scope: Some("read".into()), expires_in_s: Some(3600) })
        .unwrap();
    assert_eq!(t.scope, "read");
    assert!(t.expires_at_us.is_some());
    let reader = Client::new(&s.url).with_token(&t.token);
    assert_eq!(reader.devices(&DevicesQuery::default()).unwrap().len(), 2);
    let e = reader.delete_device(&id).unwrap_err();
    assert_eq!((e.status(), e.code()), (Some(403), Some("insufficient_scope")), "{e}");
    assert!(api.tokens().unwrap().iter().any(|x| x.id == t.id && x.name == "ci"));
    api.revoke_token(&t.id).unwrap();
    assert_eq!(api_error(reader.tokens()), (401, "unauthorized".into()));
    assert_eq!(api_error(api.revoke_token(&t.id)).0, 404);

    api.delete_device(&id).unwrap();
    assert_eq!(api_error(api.device(&id)), (404, "not_found".into()));

    // No server: a transport error, worth a retry.
    drop(s);
    let e = api.server_info().unwrap_err();
    assert!(matches!(&e, ApiError::Transport { tls: false, .. }) && e.is_transient(), "{e:?}");
    assert!(e.to_string().starts_with("cannot reach the server at http://127.0.0.1:"), "{e}");
}

#[test]
fn bundles_uploads_and_deployments() {
    let s = Server::start("bundles", None);
    let api = s.client();
    let key = keel_bundle::SigningKey::from_bytes(&[7; 32]);
    let bytes = bundle(&key, "2.0.0", 5);

    // No signer key registered yet: refused with the API's code.
    let e = api.upload_bundle(&mut bytes.as_slice(), bytes.len() as u64, &UploadQuery::default()).unwrap_err();
    assert_eq!((e.status(), e.code()), (Some(400), Some("no_signer_keys")), "{e}");

    let public_key = keel_server::hex(&key.verifying_key().to_bytes());
    let k = api.add_signer_key(&NewSignerKey { name: "release".into(), public_key }).unwrap();
    assert_eq!(api.signer_keys().unwrap().len(), 1);

    // The upload streams from the reader (as the CLI's progress bar reads it).
    let read = Arc::new(AtomicU64::new(0));
    let mut reader = Counting(bytes.as_slice(), read.clone());
    let b = api.upload_bundle(&mut reader, bytes.len() as u64, &UploadQuery { force: false }).unwrap();
    assert_eq!(read.load(Ordering::Relaxed), bytes.len() as u64);
    assert_eq!((b.app.as_str(), b.version.as_str(), b.sequence), ("hello", "2.0.0", 5));
    assert_eq!(api.bundle(&b.id).unwrap(), b);
    assert_eq!(api.bundles().unwrap(), std::slice::from_ref(&b));
    assert_eq!(api_error(api.bundle("bn-nothing")), (404, "not_found".into()));

    // Bodies the server refuses before reading them (a length over its upload limit, no valid
    // token) are answered, not cut off.
    let e = api.upload_bundle(&mut std::io::repeat(0), 80 << 20, &UploadQuery::default()).unwrap_err();
    assert_eq!((e.status(), e.code()), (Some(413), Some("too_large")), "{e:?}");
    let bad = Client::new(&s.url).with_token("keel_bogus");
    let e = bad.upload_bundle(&mut std::io::repeat(0), 60 << 20, &UploadQuery::default()).unwrap_err();
    assert_eq!((e.status(), e.code()), (Some(401), Some("unauthorized")), "{e:?}");

    // Deploy by APP@VERSION to one device; its update history shows it.
    let d = api
        .deploy(&NewDeployment { bundle: "hello@2.0.0".into(), device: Some(DEV.into()), ..Default::default() })
        .unwrap();
    assert_eq!(
        (d.bundle.id.as_str(), d.via.as_str(), d.devices.as_slice()),
        (b.id.as_str(), "device", [DEV.to_string()].as_slice())
    );
    assert_eq!(api.device(DEV).unwrap().update.and_then(|u| u.target).map(|t| t.sequence), Some(5));
    let events = api.update_events(DEV, &EventsQuery { limit: Some(10) }).unwrap();
    assert!(events.iter().any(|e| e.state == "deployed" && e.sequence == 5), "{events:?}");
    let e = api.deploy(&NewDeployment { bundle: "hello@9.9.9".into(), device: Some(DEV.into()), ..Default::default() });
    assert_eq!(api_error(e).0, 404);

    api.revoke_signer_key(&k.id).unwrap();
    assert!(api.signer_keys().unwrap()[0].revoked_at_us.is_some());
}

#[test]
fn live_log_stream() {
    let mut s = Server::start("stream", None);
    let api = s.client();
    let e = api.stream_logs("kd00000000000000000000000000000000", &StreamQuery::default()).err().unwrap();
    assert_eq!((e.status(), e.code()), (Some(404), Some("not_found")), "{e}");
    let mut stream = api.stream_logs(DEV, &StreamQuery { after: Some(1 << 32 | 1) }).unwrap();
    let texts: Vec<String> = stream.by_ref().take(2).map(|l| l.unwrap().text).collect();
    assert_eq!(texts, ["line 2", "line 3"]);
    // The server ends its streams when it stops: the iterator ends.
    let reader = std::thread::spawn(move || stream.count());
    s.stop();
    assert_eq!(reader.join().unwrap(), 0);
}

/// A certificate authority and a server certificate for 127.0.0.1, as PEM files in `dir`:
/// (ca.pem contents, TLS files).
fn test_pki(dir: &Path) -> (Vec<u8>, TlsFiles) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(rcgen::DnType::CommonName, "keel test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap().signed_by(&key, &issuer).unwrap();
    std::fs::create_dir_all(dir).unwrap();
    let (cert_file, key_file) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    (ca_cert.pem().into_bytes(), TlsFiles { cert: cert_file, key: key_file })
}

#[test]
fn tls_with_a_private_ca() {
    let pki = std::env::temp_dir().join(format!("keel-api-client-{}-pki", std::process::id()));
    let (ca, files) = test_pki(&pki);
    let s = Server::start("tls", Some(files));
    assert!(s.url.starts_with("https://"), "{}", s.url);
    // Trusting the CA: it works.
    let api = Client::new(&s.url).with_token(&s.token).with_ca(&ca).unwrap();
    assert_eq!(api.tokens().unwrap().len(), 1);
    // The public roots do not know it: a TLS error, not worth a retry.
    let e = s.client().tokens().unwrap_err();
    assert!(matches!(&e, ApiError::Transport { tls: true, .. }) && !e.is_transient(), "{e:?}");
    assert!(e.to_string().starts_with("TLS with https://127.0.0.1:"), "{e}");
    // Plain HTTP to the TLS port gets no answer.
    let plain =
        Client::new(s.url.replace("https://", "http://")).with_token(&s.token).with_timeout(Duration::from_secs(10));
    assert!(plain.tokens().is_err());
    let _ = std::fs::remove_dir_all(&pki);
}

/// Something answering in the server's place (a broken proxy, a hostile host on plain HTTP)
/// streams one endless event: the stream ends with an error once the event passes
/// `MAX_EVENT_BYTES`, instead of growing the client's memory (before: it kept reading and, when
/// the connection closed, ended as if nothing was wrong).
#[test]
fn an_endless_event_ends_the_stream_with_an_error() {
    use std::io::Write;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut req = [0u8; 4096];
        let _ = s.read(&mut req).unwrap();
        s.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\ndata: ").unwrap();
        let chunk = [b'x'; 8192];
        // Four times the limit, then the connection closes; a client past the limit stops reading.
        for _ in 0..(4 * keel_api::MAX_EVENT_BYTES / chunk.len()) {
            if s.write_all(&chunk).is_err() {
                break;
            }
        }
    });
    let client = Client::new(format!("http://{addr}")).with_token("kt-any");
    let mut stream = client.stream_logs("kd01", &StreamQuery::default()).unwrap();
    let first = stream.next().expect("an item");
    assert!(matches!(&first, Err(ApiError::Decode { message }) if message.contains("larger than")), "{first:?}");
    assert!(stream.next().is_none());
    drop(stream);
    server.join().unwrap();
}

/// A device on the gateway (blocking, in a thread) that answers each debug frame with the frame
/// reversed, until its connection ends.
fn echo_device(gateway: SocketAddr, server_public: &[u8; 32], secret: &[u8; 32]) -> std::thread::JoinHandle<()> {
    use keel_link::msg::{features, Down, Hello, Up, PROTOCOL_MIN, PROTOCOL_VERSION};
    use keel_link::session::{DeviceSession, MAX_FRAME};
    use std::io::Write;
    let mut session = DeviceSession::<rand_core::OsRng>::new(secret, server_public).unwrap();
    let mut tcp = std::net::TcpStream::connect(gateway).unwrap();
    std::thread::spawn(move || {
        let hello = Hello {
            protocol: PROTOCOL_VERSION,
            visor_version: "9.9.9",
            boot_count: 1,
            app: None,
            next_log_seq: 1 << 32,
            protocol_min: Some(PROTOCOL_MIN),
            features: Some(features::SUPPORTED),
        };
        let mut out = vec![0u8; MAX_FRAME];
        let n = session.start_hello(&hello, &mut out).unwrap();
        tcp.write_all(&out[..n]).unwrap();
        let mut first = true;
        loop {
            let mut len = [0u8; 2];
            if tcp.read_exact(&mut len).is_err() {
                return;
            }
            let mut payload = vec![0u8; u16::from_be_bytes(len) as usize];
            if tcp.read_exact(&mut payload).is_err() {
                return;
            }
            let reply = match session.receive(&payload).unwrap() {
                Down::Welcome { .. } if first => Some(Up::Ready),
                Down::Ping { nonce } => Some(Up::Pong { nonce }),
                Down::Debug { frame } => {
                    let rev: Vec<u8> = frame.iter().rev().copied().collect();
                    let n = session.send(&Up::Debug { frame: &rev }, &mut out).unwrap();
                    if tcp.write_all(&out[..n]).is_err() {
                        return;
                    }
                    None
                }
                _ => None,
            };
            first = false;
            if let Some(m) = reply {
                let n = session.send(&m, &mut out).unwrap();
                if tcp.write_all(&out[..n]).is_err() {
                    return;
                }
            }
        }
    })
}

/// Registers a device with a fresh key through the API; returns its id and secret.
fn debuggee(api: &Client, id: &str) -> [u8; 32] {
    use rand_core::RngCore;
    let mut secret = [0u8; 32];
    rand_core::OsRng.fill_bytes(&mut secret);
    let public = x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(secret));
    let hex: String = public.as_bytes().iter().map(|b| format!("{b:02x}")).collect();
    api.register_device(&NewDevice { id: id.into(), name: "debuggee".into(), public_key: hex, tags: vec![] }).unwrap();
    secret
}

fn wait_online(api: &Client, id: &str) {
    for _ in 0..3000 {
        if api.device(id).unwrap().online {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("{id} never came online");
}

/// Frames through the relay and back, what the relay forwarded in the capture, and every way a
/// debug socket ends. Over plain HTTP, with the capture started by `KEEL_DEBUG_CAPTURE` (as
/// `keel server run` would); then over TLS with a private CA.
#[test]
fn debug_socket_over_http_and_https() {
    let id = "kd0000000000000000000000000000db01";
    let capture = std::env::temp_dir().join(format!("keel-api-client-{}-capture.txt", std::process::id()));
    let _ = std::fs::remove_file(&capture);
    // Set only while this node starts (the variable is read once, at start).
    std::env::set_var("KEEL_DEBUG_CAPTURE", &capture);
    let s = Server::start("debug", None);
    std::env::remove_var("KEEL_DEBUG_CAPTURE");
    let api = s.client();
    let secret = debuggee(&api, id);
    let _device = echo_device(s.gateway, &s.server_public, &secret);
    wait_online(&api, id);

    let mut dbg = api.debug_socket(id).unwrap();
    assert_eq!(dbg.recv(Duration::from_millis(50)).unwrap(), None, "nothing yet: a timeout, not an error");
    let mut expected = String::new();
    for (i, len) in [1usize, 64, 500, keel_api::MAX_DEBUG_FRAME].into_iter().enumerate() {
        let frame: Vec<u8> = (0..len).map(|j| (j * 7 + i) as u8).collect();
        dbg.send(&frame).unwrap();
        let echo = dbg.recv(Duration::from_secs(10)).unwrap().expect("the echo");
        let rev: Vec<u8> = frame.iter().rev().copied().collect();
        assert_eq!(echo, rev);
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        expected += &format!("down {}\nup {}\n", hex(&frame), hex(&rev));
    }
    assert_eq!(std::fs::read_to_string(&capture).unwrap(), expected, "the capture holds exactly the frames");
    let _ = std::fs::remove_file(&capture);
    // Too large: refused here, nothing sent; the socket still works.
    let e = dbg.send(&[0u8; keel_api::MAX_DEBUG_FRAME + 1]).unwrap_err();
    assert!(matches!(e, ApiError::Local { .. }), "{e:?}");
    dbg.send(b"ok").unwrap();
    assert_eq!(dbg.recv(Duration::from_secs(10)).unwrap().unwrap(), b"ko");

    // Refusals are the API's answers.
    let ro = api.create_token(&NewToken { name: "ro".into(), scope: Some("read".into()), expires_in_s: None });
    let ro = Client::new(&s.url).with_token(ro.unwrap().token);
    assert_eq!(api_error(ro.debug_socket(id)), (403, "insufficient_scope".into()));
    assert_eq!(api_error(api.debug_socket("kd0000000000000000000000000000db02")), (404, "not_found".into()));
    assert_eq!(api_error(Client::new(&s.url).debug_socket(id)), (401, "unauthorized".into()));

    // A second socket for the device (a debugger resuming) replaces the first.
    let mut again = api.debug_socket(id).unwrap();
    let e = dbg.recv(Duration::from_secs(10)).unwrap_err();
    assert_eq!(dbg.close_reason(), Some((1000, "replaced")), "{e}");
    assert!(e.to_string().contains("replaced"), "{e}");
    assert!(dbg.send(b"late").is_err());
    again.send(b"abc").unwrap();
    assert_eq!(again.recv(Duration::from_secs(10)).unwrap().unwrap(), b"cba");
    again.close().unwrap();

    // Over TLS, trusting a private CA.
    let pki = std::env::temp_dir().join(format!("keel-api-client-{}-dbgpki", std::process::id()));
    let (ca, files) = test_pki(&pki);
    let s = Server::start("debug-tls", Some(files));
    let api = Client::new(&s.url).with_token(&s.token).with_ca(&ca).unwrap();
    let secret = debuggee(&api, id);
    let _device = echo_device(s.gateway, &s.server_public, &secret);
    wait_online(&api, id);
    let mut dbg = api.debug_socket(id).unwrap();
    dbg.send(b"over tls").unwrap();
    assert_eq!(dbg.recv(Duration::from_secs(10)).unwrap().unwrap(), b"slt revo");
    assert_eq!(dbg.recv(Duration::from_millis(50)).unwrap(), None);
    dbg.send(b"again").unwrap();
    assert_eq!(dbg.recv(Duration::from_secs(10)).unwrap().unwrap(), b"niaga");
    dbg.close().unwrap();
    // The public roots do not know the CA: a TLS error.
    let e = s.client().debug_socket(id).unwrap_err();
    assert!(matches!(&e, ApiError::Transport { tls: true, .. }), "{e:?}");
    // The server stopping closes the socket with a reason.
    let mut dbg = api.debug_socket(id).unwrap();
    let mut s = s;
    s.stop();
    let e = dbg.recv(Duration::from_secs(15)).unwrap_err();
    assert!(e.to_string().contains("stopping"), "{e}");
    let _ = std::fs::remove_dir_all(&pki);
}

/// A device on the gateway (blocking) that reports one crash with its registers and 20 words
/// of stack (a full chunk and a short one), and returns once the server acknowledged them.
fn crashing_device(gateway: SocketAddr, server_public: &[u8; 32], secret: &[u8; 32]) {
    use keel_link::msg::{features, CrashInfo, Down, Hello, Up, VisorEvent, PROTOCOL_MIN, PROTOCOL_VERSION};
    use keel_link::session::{DeviceSession, MAX_FRAME};
    use std::io::Write;
    let mut session = DeviceSession::<rand_core::OsRng>::new(secret, server_public).unwrap();
    let mut tcp = std::net::TcpStream::connect(gateway).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let hello = Hello {
        protocol: PROTOCOL_VERSION,
        visor_version: "9.9.9",
        boot_count: 2,
        app: Some(("crashy", "0.3.0")),
        next_log_seq: 2 << 32,
        protocol_min: Some(PROTOCOL_MIN),
        features: Some(features::SUPPORTED),
    };
    let mut out = vec![0u8; MAX_FRAME];
    let n = session.start_hello(&hello, &mut out).unwrap();
    tcp.write_all(&out[..n]).unwrap();
    let read = |tcp: &mut std::net::TcpStream| {
        let mut len = [0u8; 2];
        tcp.read_exact(&mut len).unwrap();
        let mut payload = vec![0u8; u16::from_be_bytes(len) as usize];
        tcp.read_exact(&mut payload).unwrap();
        payload
    };
    let welcome = read(&mut tcp);
    assert!(matches!(session.receive(&welcome).unwrap(), Down::Welcome { .. }));
    let info =
        CrashInfo { kind: 6, pc: 0x0020_0456, lr: 0x0020_0401, sp: 0x2001_0000, cfsr: 1 << 16, ..Default::default() };
    let mut words = [0u32; 16];
    for (i, w) in words.iter_mut().enumerate() {
        *w = 0x1000 + i as u32;
    }
    let events = [
        VisorEvent::Crash(info),
        VisorEvent::CrashRegs { regs: std::array::from_fn(|i| i as u32) },
        VisorEvent::CrashStack { offset: 0, words, len: 16 },
        VisorEvent::CrashStack { offset: 64, words, len: 4 },
    ];
    let mut messages = vec![Up::Ready];
    messages.extend(events.iter().enumerate().map(|(i, &event)| Up::Event {
        seq: (2 << 32) + i as u64,
        time_us: 7,
        event,
    }));
    for m in &messages {
        let n = session.send(m, &mut out).unwrap();
        tcp.write_all(&out[..n]).unwrap();
    }
    loop {
        let payload = read(&mut tcp);
        if let Down::LogAck { upto } = session.receive(&payload).unwrap() {
            if upto == (2 << 32) + 3 {
                return;
            }
        }
    }
}

/// Crash dumps: the list and one dump, as a post-mortem debugger reads them.
#[test]
fn crash_dumps() {
    let id = "kd00000000000000000000000000000c01";
    let s = Server::start("crashes", None);
    let api = s.client();
    let secret = debuggee(&api, id);
    assert!(api.crashes(id).unwrap().is_empty());
    crashing_device(s.gateway, &s.server_public, &secret);

    let list = api.crashes(id).unwrap();
    assert_eq!(list.len(), 1);
    let c = &list[0];
    assert_eq!(
        (c.kind.as_str(), c.kind_code, c.pc, c.lr, c.sp),
        ("UsageFault", 6, 0x0020_0456, 0x0020_0401, 0x2001_0000)
    );
    assert_eq!((c.app_name.as_deref(), c.app_version.as_deref(), c.stack_bytes), (Some("crashy"), Some("0.3.0"), 80));
    let full = api.crash(id, &c.id).unwrap();
    assert_eq!(full.summary(), *c);
    assert_eq!((full.cfsr, full.stack_base), (1 << 16, 0x2001_0000));
    assert_eq!(full.regs, Some((0..13).collect()));
    let words = (0..16).chain(0..4).map(|i| 0x1000u32 + i);
    let hex: String = words.flat_map(u32::to_le_bytes).map(|b| format!("{b:02x}")).collect();
    assert_eq!(full.stack_hex, hex);

    // A read token is enough; an unknown crash or device is 404.
    let ro = api.create_token(&NewToken { name: "ro".into(), scope: Some("read".into()), expires_in_s: None });
    let ro = Client::new(&s.url).with_token(ro.unwrap().token);
    assert_eq!(ro.crash(id, &c.id).unwrap(), full);
    assert_eq!(api_error(ro.crash(id, "cr-000000000000")), (404, "not_found".into()));
    assert_eq!(api_error(ro.crash(id, "../../tokens")), (404, "not_found".into()));
    assert_eq!(api_error(ro.crashes("kd0000000000000000000000000000c002")), (404, "not_found".into()));
    assert_eq!(api_error(Client::new(&s.url).crashes(id)), (401, "unauthorized".into()));
}

/// The client keeps its own copy of the relay's frame limit (it does not depend on the wire
/// crate): it must be the protocol's.
#[test]
fn the_clients_debug_frame_limit_is_the_protocols() {
    assert_eq!(keel_api::MAX_DEBUG_FRAME, keel_link::msg::MAX_DEBUG_FRAME);
}
