//! Operating the server: the real `keel server run` process under slow and greedy clients, TLS
//! with the CLI, backup and restore with a simulated device, file modes. No QEMU.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keel_api::{Client, NewDevice};
use keel_bundle::{build_bundle, reference_region_capacity, BundleSpec, LayerSpec, Policies, SigningKey, Target};
use keel_sim::{new_secret, public_key, SimDevice};

const KEEL: &str = env!("CARGO_BIN_EXE_keel");
const WAIT: Duration = Duration::from_secs(60);

/// A `keel server run` process, killed when dropped; its stderr after the first line is kept.
struct Server {
    child: Child,
    first: String,
    log: Arc<Mutex<String>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Stops the server with SIGTERM and waits for it to exit (a graceful stop).
    fn stop(mut self) {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let deadline = Instant::now() + WAIT;
        while self.child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "server did not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `keel server run --data DATA --http 127.0.0.1:HTTP --gateway 127.0.0.1:GW EXTRA...`; returns
/// once the first line is out.
fn start(data: &Path, http: u16, gw: u16, extra: &[&str]) -> Server {
    let mut child = Command::new(KEEL)
        .args(["server", "run", "--data", &data.display().to_string()])
        .args(["--http", &format!("127.0.0.1:{http}"), "--gateway", &format!("127.0.0.1:{gw}")])
        .args(extra)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut first = String::new();
    stderr.read_line(&mut first).unwrap();
    if !first.starts_with("keel server: API ") {
        let _ = child.kill();
        let _ = child.wait();
        panic!("server did not start: {first}");
    }
    let log = Arc::new(Mutex::new(String::new()));
    let l = log.clone();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            let mut g = l.lock().unwrap();
            g.push_str(&line);
            g.push('\n');
        }
    });
    Server { child, first, log }
}

/// `keel ARGS --json` with `env`: (success, stdout JSON, stderr).
fn keel(args: &[&str], env: &[(&str, &str)]) -> (bool, serde_json::Value, String) {
    let out = Command::new(KEEL)
        .args(args)
        .arg("--json")
        .env("KEEL_CONFIG", "/nonexistent/keel-config.toml")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let v = serde_json::from_slice(&out.stdout).unwrap_or_default();
    (out.status.success(), v, String::from_utf8_lossy(&out.stderr).into_owned())
}

fn keel_ok(args: &[&str], env: &[(&str, &str)]) -> serde_json::Value {
    let (ok, v, err) = keel(args, env);
    assert!(ok, "keel {args:?}: {v} {err}");
    v
}

/// `keel server init`: the first token.
fn init(data: &Path) -> String {
    let v = keel_ok(&["server", "init", "--data", &data.display().to_string()], &[]);
    v["token"].as_str().unwrap().to_string()
}

/// A raw HTTP/1.1 GET with a token over the connection `s` (one the test holds: over the cap, from
/// another address); the status code, or `None` if the connection ended (or timed out) without
/// an answer.
fn get_status(s: &mut TcpStream, path: &str, token: &str) -> Option<u16> {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).ok()?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

/// `GET /v1/tokens` over plain HTTP on a new connection (a new client each time): the status, or
/// `None` if no answer came within 10 s.
fn api_status(http: u16, token: &str) -> Option<u16> {
    let api = Client::new(format!("http://127.0.0.1:{http}")).with_token(token).with_timeout(Duration::from_secs(10));
    match api.tokens() {
        Ok(_) => Some(200),
        Err(e) => e.status(),
    }
}

/// Registers a device with the API.
fn register(url: &str, token: &str, id: &str, name: &str, key: &[u8; 32]) {
    let new = NewDevice { id: id.into(), name: name.into(), public_key: keel_server::hex(key), tags: Vec::new() };
    Client::new(url).with_token(token).register_device(&new).unwrap_or_else(|e| panic!("register {id}: {e}"));
}

/// True once the peer has closed `s` (a read returns end of file or an error other than a
/// timeout), polled until `deadline`.
fn closed_by_peer(s: &mut TcpStream, deadline: Instant) -> bool {
    s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let mut b = [0u8; 256];
    while Instant::now() < deadline {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return true,
        }
    }
    false
}

/// A client that sends its request headers one byte a second (slowloris) is closed within the
/// header timeout (10 s by default), while an authenticated request still answers.
#[test]
fn slowloris_is_closed_and_the_api_still_answers() {
    let dir = tempdir("slowloris");
    let token = init(&dir);
    let (http, gw) = (free_port(), free_port());
    let _server = start(&dir, http, gw, &[]);
    let mut slow = TcpStream::connect(("127.0.0.1", http)).unwrap();
    slow.set_read_timeout(Some(Duration::from_millis(1000))).unwrap();
    let header = b"GET /v1/tokens HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let started = Instant::now();
    let mut closed_after = None;
    for &b in header.iter().cycle() {
        if started.elapsed() > Duration::from_secs(20) {
            break;
        }
        if slow.write_all(&[b]).is_err() {
            closed_after = Some(started.elapsed());
            break;
        }
        // The read timeout paces the client at one byte a second and notices the close.
        let mut buf = [0u8; 64];
        match slow.read(&mut buf) {
            Ok(_) => {
                closed_after = Some(started.elapsed());
                break;
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => {
                closed_after = Some(started.elapsed());
                break;
            }
        }
        assert_eq!(api_status(http, &token), Some(200), "the API stopped answering during slowloris");
    }
    let after = closed_after.expect("the slowloris connection was still open after 20 s");
    assert!(after < Duration::from_secs(15), "closed only after {after:?}");
}

/// An upload whose body stops coming is ended after the grace period (here the 2 s header
/// timeout): the client gets an answer or a close, not a connection held forever.
#[test]
fn a_stalled_upload_is_ended() {
    let dir = tempdir("stalled");
    let token = init(&dir);
    let (http, gw) = (free_port(), free_port());
    let _server = start(&dir, http, gw, &["--http-header-timeout", "2", "--http-idle-timeout", "30"]);
    let mut s = TcpStream::connect(("127.0.0.1", http)).unwrap();
    let head = format!(
        "POST /v1/bundles HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/octet-stream\r\nContent-Length: 1000000\r\n\r\n"
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(&[0u8; 1000]).unwrap();
    let started = Instant::now();
    assert!(closed_by_peer(&mut s, started + Duration::from_secs(20)), "stalled upload still open after 20 s");
    assert!(started.elapsed() < Duration::from_secs(15), "ended only after {:?}", started.elapsed());
    // The server still answers.
    assert_eq!(api_status(http, &token), Some(200));
}

/// Connections over the per-address cap are closed at once, and a request from another address
/// is still answered; once the hog lets go, its address is served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_per_address_cap_are_refused() {
    let dir = tempdir("percap");
    let token = init(&dir);
    let (http, gw) = (free_port(), free_port());
    let server = start(&dir, http, gw, &["--http-max-connections-per-ip", "8"]);
    let mut hog: Vec<TcpStream> = (0..8).map(|_| TcpStream::connect(("127.0.0.1", http)).unwrap()).collect();
    // The next ones from 127.0.0.1 are accepted by the kernel and closed by the server at once.
    for _ in 0..4 {
        let mut s = TcpStream::connect(("127.0.0.1", http)).unwrap();
        assert!(closed_by_peer(&mut s, Instant::now() + Duration::from_secs(5)), "over-cap connection kept open");
    }
    // Another source address (127.0.0.2 reaches the loopback listener too) is served.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let other = sock.connect(SocketAddr::from(([127, 0, 0, 1], http))).await.unwrap().into_std().unwrap();
    other.set_nonblocking(false).unwrap();
    let t = token.clone();
    let status = tokio::task::spawn_blocking(move || {
        let mut other = other;
        get_status(&mut other, "/v1/tokens", &t)
    })
    .await
    .unwrap();
    assert_eq!(status, Some(200));
    // The hog's own connections still work, and when they close the address is served again.
    assert_eq!(get_status(&mut hog[0], "/v1/tokens", &token), Some(200));
    hog.clear();
    let deadline = Instant::now() + WAIT;
    while api_status(http, &token) != Some(200) {
        assert!(Instant::now() < deadline, "127.0.0.1 never served again");
    }
    let _ = server;
}

/// The gateway's limits are `keel server run` flags: with at most two unauthenticated
/// connections per address, applied to loopback too, a third from 127.0.0.1 is closed at once
/// while the first two wait for their handshake (its time limit raised to a minute).
#[test]
fn the_gateway_limits_are_flags() {
    let dir = tempdir("gwflags");
    init(&dir);
    let (http, gw) = (free_port(), free_port());
    let limits = ["--gateway-max-unauthenticated-per-address", "2", "--limit-loopback", "--handshake-timeout", "60"];
    let server = start(&dir, http, gw, &limits);
    let mut held: Vec<TcpStream> = (0..2).map(|_| TcpStream::connect(("127.0.0.1", gw)).unwrap()).collect();
    let mut third = TcpStream::connect(("127.0.0.1", gw)).unwrap();
    assert!(closed_by_peer(&mut third, Instant::now() + Duration::from_secs(5)), "the third connection was kept");
    for s in &mut held {
        assert!(
            !closed_by_peer(s, Instant::now() + Duration::from_secs(1)),
            "a connection within the limit was closed"
        );
    }
    let _ = server;
}

/// `keel server run` says what open-file limit it got, after its first line (which keeps its
/// format for scripts).
#[test]
fn the_server_reports_its_open_file_limit() {
    let dir = tempdir("nofile");
    init(&dir);
    let (http, gw) = (free_port(), free_port());
    let server = start(&dir, http, gw, &[]);
    assert!(server.first.contains(&format!("API http://127.0.0.1:{http}, device gateway 127.0.0.1:{gw}, key ")));
    let deadline = Instant::now() + WAIT;
    while !server.log().contains("open files") {
        assert!(Instant::now() < deadline, "no open-file limit reported: {}", server.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    let limit = rlimit_hard();
    assert!(server.log().contains(&format!("open files: {limit}")), "{} (hard limit {limit})", server.log());
}

fn rlimit_hard() -> String {
    let out = Command::new("sh").args(["-c", "ulimit -Hn"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `keel server init` makes the data directory 0700 and the server key 0600.
#[cfg(unix)]
#[test]
fn the_data_directory_and_key_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempdir("modes").join("data");
    init(&dir);
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700, "data directory");
    assert_eq!(mode(&dir.join("server.key")), 0o600, "server key");
    assert_eq!(std::fs::read(dir.join("server.key")).unwrap().len(), 32);
}

/// Plain HTTP on an address that is not loopback is refused with a clear message.
#[test]
fn plain_http_off_loopback_is_refused() {
    let dir = tempdir("plain");
    init(&dir);
    let mut child = Command::new(KEEL)
        .args(["server", "run", "--data", &dir.display().to_string()])
        .args(["--http", &format!("0.0.0.0:{}", free_port()), "--gateway", &format!("127.0.0.1:{}", free_port())])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + WAIT;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the server ran on 0.0.0.0 over plain HTTP");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("plain HTTP") && err.contains("--tls-cert") && err.contains("--insecure-http"), "{err}");
}

/// A certificate authority and a server certificate for 127.0.0.1 and localhost, as PEM files
/// in `dir`: (ca.pem, cert.pem, key.pem).
fn test_pki(dir: &Path) -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(rcgen::DnType::CommonName, "keel test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    let w = |name: &str, text: String| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    (w("ca.pem", ca_cert.pem()), w("cert.pem", cert.pem()), w("key.pem", key.serialize_pem()))
}

/// The API over TLS: `keel token list` works with `--ca` (and `KEEL_CA`) and fails clearly
/// without it; the first line says https.
#[test]
fn the_cli_uses_the_api_over_tls() {
    let dir = tempdir("tls");
    let token = init(&dir.join("data"));
    let (ca, cert, key) = test_pki(&dir);
    let (http, gw) = (free_port(), free_port());
    let server = start(&dir.join("data"), http, gw, &["--tls-cert", &cert, "--tls-key", &key]);
    assert!(server.first.contains(&format!("API https://127.0.0.1:{http},")), "{}", server.first);
    let url = format!("https://127.0.0.1:{http}");
    let env = [("KEEL_TOKEN", token.as_str())];
    let v = keel_ok(&["token", "list", "--server", &url, "--ca", &ca], &env);
    assert_eq!(v.as_array().map(Vec::len), Some(1), "{v}");
    let v = keel_ok(&["token", "list", "--server", &url], &[("KEEL_TOKEN", &token), ("KEEL_CA", &ca)]);
    assert_eq!(v.as_array().map(Vec::len), Some(1), "{v}");
    let (ok, v, err) = keel(&["token", "list", "--server", &url], &env);
    assert!(!ok);
    let msg = v["error"].as_str().unwrap_or_default().to_string() + &err;
    assert!(msg.contains("certificate") && msg.contains("--ca"), "{msg}");
    // Plain HTTP to the TLS port gets no answer, and no token leaks in clear to a TLS server.
    assert_ne!(api_status(http, &token), Some(200));
}

fn tempdir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("keel-ops-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// App slot contents (keel-image header + image) with an image of `size` bytes.
fn app_slot(size: usize, version: &str) -> Vec<u8> {
    let image: Vec<u8> = (0..size).map(|i| (i * 7 + i / 251) as u8).collect();
    let h = keel_image::build_header(&image, 0x0020_0000, 0x2800_0000, "hello", version, (2, 0));
    let mut slot = h.to_bytes().to_vec();
    slot.extend(image);
    slot
}

/// Polls the device's logs through the API until `pred` holds on their texts.
fn wait_logs(url: &str, token: &str, dev: &str, pred: impl Fn(&[String]) -> bool) -> Vec<String> {
    let deadline = Instant::now() + WAIT;
    loop {
        let (ok, v, _) = keel(&["logs", dev, "--server", url], &[("KEEL_TOKEN", token)]);
        let texts: Vec<String> = if ok {
            v.as_array().into_iter().flatten().filter_map(|l| l["text"].as_str().map(String::from)).collect()
        } else {
            Vec::new()
        };
        if pred(&texts) {
            return texts;
        }
        assert!(Instant::now() < deadline, "logs never matched: {texts:?} {v}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Backup while running, restore into a fresh directory, a new server on it: the device
/// reconnects (same server key), its logs and the bundle are there, and the bundle's layer
/// downloads and installs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_and_restore_keep_devices_logs_and_bundles() {
    let dir = tempdir("backup");
    let data = dir.join("data");
    let token = init(&data);
    let (http, gw) = (free_port(), free_port());
    let server = start(&data, http, gw, &[]);
    let url = format!("http://127.0.0.1:{http}");
    let env = [("KEEL_TOKEN", token.as_str())];
    let key_hex: String = server.first.rsplit("key ").next().unwrap().trim().to_string();
    let server_public: [u8; 32] = keel_server::unhex(&key_hex).unwrap().try_into().unwrap();

    // A device, its log line, a signer key and a bundle.
    let secret = new_secret();
    let dev_id = format!("kd{}", "ab".repeat(16));
    register(&url, &token, &dev_id, "d1", &public_key(&secret));
    let signer = SigningKey::from_bytes(&[7; 32]);
    let pubfile = dir.join("signer.pub");
    std::fs::write(&pubfile, keel_server::hex(&signer.verifying_key().to_bytes())).unwrap();
    keel_ok(&["keys", "add", &pubfile.display().to_string(), "--name", "ci", "--server", &url], &env);
    let slot = app_slot(3000, "2.0.0");
    let policies = Policies { app_name: "hello", app_version: "2.0.0", ..Policies::default() };
    let layers = [LayerSpec { id: "app", target: Target::AppSlot, bytes: &slot }];
    let bundle =
        build_bundle(&BundleSpec { sequence: 5, layers: &layers, policies }, &signer, reference_region_capacity)
            .unwrap();
    let bfile = dir.join("hello.keelb");
    std::fs::write(&bfile, bundle).unwrap();
    keel_ok(&["apps", "upload", &bfile.display().to_string(), "--server", &url], &env);

    let dev =
        Arc::new(SimDevice::new(secret, server_public, 1).with_updates(vec![signer.verifying_key().to_bytes()], 0));
    let d = dev.clone();
    let gw_addr = SocketAddr::from(([127, 0, 0, 1], gw));
    let task = tokio::spawn(async move { d.run(gw_addr, 20).await });
    tokio::time::timeout(WAIT, dev.wait_online()).await.expect("device online");
    dev.log("before the backup");
    let (u, t, i) = (url.clone(), token.clone(), dev_id.clone());
    tokio::task::spawn_blocking(move || wait_logs(&u, &t, &i, |l| l.iter().any(|x| x == "before the backup")))
        .await
        .unwrap();

    // Backup while it runs.
    let backup = dir.join("backup");
    let v = keel_ok(
        &["server", "backup", "--data", &data.display().to_string(), "--out", &backup.display().to_string()],
        &[],
    );
    assert_eq!(v["server_public_key"], key_hex.as_str(), "{v}");
    server.stop();

    // Restore into a fresh directory; a new server on it, same ports.
    let restored = dir.join("restored");
    keel_ok(
        &["server", "restore", "--from", &backup.display().to_string(), "--data", &restored.display().to_string()],
        &[],
    );
    // Restoring over existing data is refused.
    let (ok, _, _) = keel(
        &["server", "restore", "--from", &backup.display().to_string(), "--data", &restored.display().to_string()],
        &[],
    );
    assert!(!ok, "restore over an existing data directory");
    let server = start(&restored, http, gw, &[]);
    assert!(server.first.ends_with(&format!("key {key_hex}\n")), "{}", server.first);
    tokio::time::timeout(WAIT, dev.wait_for(|s| s.sessions >= 2)).await.expect("device reconnected");
    dev.log("after the restore");
    let (u, t, i) = (url.clone(), token.clone(), dev_id.clone());
    let texts =
        tokio::task::spawn_blocking(move || wait_logs(&u, &t, &i, |l| l.iter().any(|x| x == "after the restore")))
            .await
            .unwrap();
    assert!(texts.iter().any(|x| x == "before the backup"), "{texts:?}");
    let apps = keel_ok(&["apps", "list", "--server", &url], &env);
    assert_eq!(apps.as_array().map(Vec::len), Some(1), "{apps}");
    // The layer came along: the device downloads and installs the bundle.
    keel_ok(&["deploy", "hello@2.0.0", "--device", &dev_id, "--server", &url], &env);
    let st = tokio::time::timeout(WAIT, dev.wait_for(|s| s.update.installed == 5)).await;
    assert!(st.is_ok(), "bundle not installed after restore: {:?} {}", dev.stats().update, server.log());
    task.abort();
}

/// A retention of more days than microseconds fit in 64 bits keeps every record (it used to
/// overflow: a panic in debug builds, "prune everything" in release builds).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_log_retention_keeps_logs() {
    let dir = tempdir("retention");
    let token = init(&dir);
    let (http, gw) = (free_port(), free_port());
    let server = start(&dir, http, gw, &["--log-retention-days", &u64::MAX.to_string()]);
    let url = format!("http://127.0.0.1:{http}");
    let key_hex: String = server.first.rsplit("key ").next().unwrap().trim().to_string();
    let server_public: [u8; 32] = keel_server::unhex(&key_hex).unwrap().try_into().unwrap();
    let secret = new_secret();
    let dev_id = format!("kd{}", "cd".repeat(16));
    register(&url, &token, &dev_id, "d", &public_key(&secret));
    let dev = Arc::new(SimDevice::new(secret, server_public, 1));
    let d = dev.clone();
    let task = tokio::spawn(async move { d.run(SocketAddr::from(([127, 0, 0, 1], gw)), 20).await });
    dev.log("kept");
    let (u, t, i) = (url.clone(), token.clone(), dev_id.clone());
    tokio::task::spawn_blocking(move || wait_logs(&u, &t, &i, |l| l.iter().any(|x| x == "kept"))).await.unwrap();
    task.abort();
    let log = server.log();
    assert!(!log.contains("panicked"), "{log}");
}

/// `--metrics ADDR` serves `/metrics` there, and only that.
#[test]
fn metrics_listen_on_their_own_address() {
    let dir = tempdir("metrics");
    let token = init(&dir);
    let (http, gw, metrics) = (free_port(), free_port(), free_port());
    let _server = start(&dir, http, gw, &["--metrics", &format!("127.0.0.1:{metrics}")]);
    // Without a token: the metrics listener has no authentication.
    let text = Client::new(format!("http://127.0.0.1:{metrics}")).metrics().unwrap();
    assert!(text.contains("keel_"), "{text}");
    let mut s = TcpStream::connect(("127.0.0.1", metrics)).unwrap();
    assert_eq!(get_status(&mut s, "/v1/tokens", &token), Some(404));
}
