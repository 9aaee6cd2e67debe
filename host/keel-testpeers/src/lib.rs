//! Peers for Keel's tests, on loopback only:
//! - [`TestCa`]: a throwaway certificate authority (rcgen) and leaf certificates it signs.
//! - [`Mosquitto`]: a real Mosquitto broker (Debian's `mosquitto` package) on a free loopback
//!   port, with a TLS or plain listener, killed on drop; restartable on the same port.
//!   [`Subscriber`] and [`Mosquitto::publish`] drive `mosquitto_sub` / `mosquitto_pub`
//!   (package `mosquitto-clients`) against it.
//! - [`HttpServer`]: a local HTTP or HTTPS server (hyper) around an async handler, counting the
//!   connections it accepted; [`counted_stream`] bodies report how far they got and when the
//!   server dropped them ([`StreamProbe`]).
//!
//! Readiness is waited for by connecting, never by sleeping; events in the peers (a connection
//! accepted, a response body dropped) can be awaited.

use std::future::Future;
use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use rustls_pki_types::pem::PemObject;
use tokio_rustls::rustls;

/// A throwaway certificate authority.
pub struct TestCa {
    /// The CA certificate (PEM).
    pub cert_pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa").finish_non_exhaustive()
    }
}

/// A leaf certificate and its key.
#[derive(Clone, Debug)]
pub struct Leaf {
    /// The certificate (PEM).
    pub cert_pem: String,
    /// Its private key (PKCS#8 PEM).
    pub key_pem: String,
}

impl TestCa {
    /// A new CA named `name`.
    pub fn new(name: &str) -> Self {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        let key = rcgen::KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("CA certificate");
        TestCa { cert_pem: cert.pem(), issuer: rcgen::Issuer::new(params, key) }
    }

    /// A server certificate for `names` (DNS names or IP addresses), signed by this CA.
    pub fn leaf(&self, names: &[&str]) -> Leaf {
        let params = rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .expect("leaf params");
        let key = rcgen::KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("leaf certificate");
        Leaf { cert_pem: cert.pem(), key_pem: key.serialize_pem() }
    }

    /// A certificate for `localhost` and `127.0.0.1`.
    pub fn localhost(&self) -> Leaf {
        self.leaf(&["localhost", "127.0.0.1"])
    }
}

/// A fresh directory under the system's temporary directory, removed on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates `<tmp>/<prefix>-<random>`.
    pub fn new(prefix: &str) -> Self {
        let mut r = [0u8; 8];
        getrandom::getrandom(&mut r).expect("random");
        let name: String = r.iter().map(|b| format!("{b:02x}")).collect();
        let dir = std::env::temp_dir().join(format!("{prefix}-{name}"));
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A free TCP port on 127.0.0.1 (bound and released: another process may take it meanwhile;
/// callers retry).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind").local_addr().expect("addr").port()
}

/// Waits until something accepts TCP connections on 127.0.0.1:`port`; false after `limit`.
pub fn wait_listening(port: u16, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// A Mosquitto broker on 127.0.0.1, killed on drop.
#[derive(Debug)]
pub struct Mosquitto {
    /// Its port.
    pub port: u16,
    /// The CA its TLS certificate chains to (PEM); `None` for a plain listener.
    pub ca_pem: Option<String>,
    dir: TempDir,
    child: Option<Child>,
}

impl Mosquitto {
    /// Starts a broker with a TLS listener (a fresh CA, a certificate for `localhost` and
    /// `127.0.0.1`), anonymous access allowed, no persistence.
    pub fn start_tls() -> Self {
        let ca = TestCa::new("keel test broker CA");
        Self::start_tls_with(&ca, &ca.localhost())
    }

    /// Starts a broker with a TLS listener using `leaf` (issued by `ca`).
    pub fn start_tls_with(ca: &TestCa, leaf: &Leaf) -> Self {
        let dir = TempDir::new("keel-mosquitto");
        std::fs::write(dir.path().join("ca.pem"), &ca.cert_pem).expect("write CA");
        std::fs::write(dir.path().join("server.pem"), &leaf.cert_pem).expect("write cert");
        std::fs::write(dir.path().join("server.key"), &leaf.key_pem).expect("write key");
        Self::start_in(dir, Some(ca.cert_pem.clone()))
    }

    /// Starts a broker with a plain TCP listener.
    pub fn start_plain() -> Self {
        Self::start_in(TempDir::new("keel-mosquitto"), None)
    }

    fn start_in(mut dir: TempDir, ca_pem: Option<String>) -> Self {
        for _ in 0..5 {
            let mut m = Mosquitto { port: free_port(), ca_pem: ca_pem.clone(), dir, child: None };
            if m.spawn() {
                return m;
            }
            dir = m.take_dir();
        }
        panic!("mosquitto did not start (is the `mosquitto` package installed?)");
    }

    fn take_dir(mut self) -> TempDir {
        self.kill();
        let dir = TempDir(self.dir.0.clone());
        self.dir.0 = PathBuf::new(); // nothing to remove for the husk
        dir
    }

    /// Writes the configuration and starts the process; true once it accepts connections.
    fn spawn(&mut self) -> bool {
        let d = self.dir.path();
        let mut conf = format!(
            "listener {} 127.0.0.1\nallow_anonymous true\npersistence false\nuser root\nlog_dest stderr\n",
            self.port
        );
        if self.ca_pem.is_some() {
            conf.push_str(&format!(
                "cafile {}\ncertfile {}\nkeyfile {}\n",
                d.join("ca.pem").display(),
                d.join("server.pem").display(),
                d.join("server.key").display()
            ));
        }
        let conf_path = d.join("mosquitto.conf");
        std::fs::write(&conf_path, conf).expect("write mosquitto.conf");
        let log = std::fs::File::create(d.join("mosquitto.log")).expect("log file");
        let bin = if Path::new("/usr/sbin/mosquitto").exists() { "/usr/sbin/mosquitto" } else { "mosquitto" };
        let child = Command::new(bin)
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn mosquitto (is the `mosquitto` package installed?)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(Ok(Some(_))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                return false; // exited: the port was taken meanwhile, or a bad configuration
            }
            if wait_listening(self.port, Duration::from_millis(200)) {
                return true;
            }
        }
        self.kill();
        false
    }

    /// Kills the broker (abruptly: its clients see their connections reset).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops the broker without closing anything (SIGSTOP): its connections stay open and
    /// the kernel still takes what clients write, but nothing is read or answered until
    /// [`Mosquitto::thaw`].
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// Lets a [`Mosquitto::freeze`]d broker run again (SIGCONT).
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("the broker runs").id().to_string();
        let ok = Command::new("kill").args([sig, &pid]).status().is_ok_and(|s| s.success());
        assert!(ok, "kill {sig} {pid} failed");
    }

    /// Kills the broker and starts it again on the same port and certificates (no session
    /// survives: no persistence).
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.spawn() {
                return;
            }
        }
        panic!("mosquitto did not restart on port {}", self.port);
    }

    /// The broker's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }

    fn client_args(&self) -> Vec<String> {
        let mut a = vec!["-h".into(), "127.0.0.1".into(), "-p".into(), self.port.to_string()];
        if self.ca_pem.is_some() {
            a.push("--cafile".into());
            a.push(self.dir.path().join("ca.pem").display().to_string());
        }
        a
    }

    /// Publishes with `mosquitto_pub` (QoS 1 waits for the broker's acknowledgement). Blocking.
    pub fn publish(&self, topic: &str, payload: &[u8], qos: u8, retain: bool) {
        let file = self.dir.path().join(format!("payload-{}", free_port()));
        std::fs::write(&file, payload).expect("payload file");
        let mut cmd = Command::new("mosquitto_pub");
        cmd.args(self.client_args()).args(["-t", topic, "-q", &qos.to_string(), "-f"]).arg(&file);
        if retain {
            cmd.arg("-r");
        }
        let out = cmd.output().expect("run mosquitto_pub (is `mosquitto-clients` installed?)");
        let _ = std::fs::remove_file(&file);
        assert!(out.status.success(), "mosquitto_pub failed: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Subscribes with `mosquitto_sub` to `filter` at QoS 1; returns once the broker
    /// acknowledged the subscription (tries 3 times).
    pub fn subscribe(&self, filter: &str) -> Subscriber {
        let mut why = String::new();
        for attempt in 0..3 {
            match self.try_subscribe(filter, attempt) {
                Ok(s) => return s,
                Err(e) => why = e,
            }
        }
        panic!("mosquitto_sub did not subscribe: {why}\nbroker log:\n{}", self.log());
    }

    fn try_subscribe(&self, filter: &str, attempt: u32) -> Result<Subscriber, String> {
        let err_path = self.dir.path().join(format!("sub-{}-{attempt}.err", free_port()));
        let err = std::fs::File::create(&err_path).expect("stderr file");
        // Line-buffered output (a pipe is block-buffered): the SUBACK line arrives when it happens.
        let mut child = Command::new("stdbuf")
            .args(["-oL", "mosquitto_sub"])
            .args(self.client_args())
            .args(["-t", filter, "-q", "1", "-v", "-d"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(err)
            .spawn()
            .expect("run mosquitto_sub (is `mosquitto-clients` installed?)");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        let (ready_tx, ready_rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).split(b'\n').map_while(Result::ok) {
                let text = String::from_utf8_lossy(&line).into_owned();
                if text.starts_with("Client ") || text.starts_with("Subscribed (mid:") {
                    if text.contains("received SUBACK") {
                        let _ = ready_tx.send(());
                    }
                    continue;
                }
                if tx.send(text).is_err() {
                    return;
                }
            }
        });
        match ready_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(()) => Ok(Subscriber { child, rx }),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(format!("{e}: {}", std::fs::read_to_string(&err_path).unwrap_or_default()))
            }
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A `mosquitto_sub` process; killed on drop.
#[derive(Debug)]
pub struct Subscriber {
    child: Child,
    rx: mpsc::Receiver<String>,
}

impl Subscriber {
    /// The next message as `topic payload` (payloads without line breaks), or `None` after
    /// `limit`.
    pub fn next(&mut self, limit: Duration) -> Option<String> {
        self.rx.recv_timeout(limit).ok()
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A response body for [`HttpServer`] handlers.
pub type Body = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;

/// A whole body.
pub fn full(data: impl Into<Bytes>) -> Body {
    http_body_util::Full::new(data.into()).boxed()
}

/// What a [`counted_stream`] reports: how many chunks it produced, and when the server dropped
/// it (finished, or its connection went away).
#[derive(Debug)]
pub struct StreamProbe {
    produced: AtomicUsize,
    dropped: tokio::sync::watch::Sender<bool>,
}

impl StreamProbe {
    /// A probe for one stream.
    pub fn new() -> Arc<Self> {
        Arc::new(StreamProbe { produced: AtomicUsize::new(0), dropped: tokio::sync::watch::Sender::new(false) })
    }

    /// Chunks produced so far.
    pub fn produced(&self) -> usize {
        self.produced.load(Ordering::SeqCst)
    }

    /// Waits until the server dropped the stream (no chunk is produced after that).
    pub async fn dropped(&self) {
        let mut rx = self.dropped.subscribe();
        let _ = rx.wait_for(|d| *d).await;
    }
}

/// A body of `chunks` chunks of `chunk` bytes each, reporting to `probe` (a client that stops
/// reading stops it early).
pub fn counted_stream(chunk: usize, chunks: usize, probe: Arc<StreamProbe>) -> Body {
    CountedStream { chunk: Bytes::from(vec![b'x'; chunk]), left: chunks, probe }.boxed()
}

struct CountedStream {
    chunk: Bytes,
    left: usize,
    probe: Arc<StreamProbe>,
}

impl Drop for CountedStream {
    fn drop(&mut self) {
        self.probe.dropped.send_replace(true);
    }
}

impl hyper::body::Body for CountedStream {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        if self.left == 0 {
            return std::task::Poll::Ready(None);
        }
        self.left -= 1;
        self.probe.produced.fetch_add(1, Ordering::SeqCst);
        std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(self.chunk.clone()))))
    }
}

/// A request as a handler sees it (the body read whole).
#[derive(Clone, Debug)]
pub struct Request {
    /// Method.
    pub method: String,
    /// Path and query.
    pub path: String,
    /// Headers in order (names lower case).
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

impl Request {
    /// The first value of header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// A local HTTP/1.1 server (TLS or not) on 127.0.0.1; stops on drop.
#[derive(Debug)]
pub struct HttpServer {
    /// Its port.
    pub port: u16,
    /// Connections accepted so far.
    pub connections: Arc<AtomicUsize>,
    /// The same count, to wait on.
    accepted: Arc<tokio::sync::watch::Sender<usize>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl HttpServer {
    /// Waits until at least `n` connections were accepted.
    pub async fn wait_connections(&self, n: usize) {
        let mut rx = self.accepted.subscribe();
        let _ = rx.wait_for(|c| *c >= n).await;
    }

    /// Starts an HTTPS server with `leaf` (ALPN `http/1.1`) calling `handler` for each request.
    pub async fn start_tls<F, Fut>(leaf: &Leaf, handler: F) -> Self
    where
        F: Fn(Request) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = hyper::Response<Body>> + Send + 'static,
    {
        Self::start_tls_on(0, leaf, handler).await
    }

    /// [`HttpServer::start_tls`] on 127.0.0.1:`port` (0: a free port), for clients whose URL
    /// is fixed (compiled into a device app). Panics if the port cannot be bound.
    pub async fn start_tls_on<F, Fut>(port: u16, leaf: &Leaf, handler: F) -> Self
    where
        F: Fn(Request) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = hyper::Response<Body>> + Send + 'static,
    {
        let certs: Vec<_> = rustls_pki_types::CertificateDer::pem_slice_iter(leaf.cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .expect("leaf PEM");
        let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).expect("key PEM");
        let mut config =
            rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .expect("TLS versions")
                .with_no_client_auth()
                .with_single_cert(certs, key)
                .expect("server certificate");
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Self::start_inner(port, Some(tokio_rustls::TlsAcceptor::from(Arc::new(config))), handler).await
    }

    /// Starts a plain HTTP server calling `handler` for each request.
    pub async fn start_plain<F, Fut>(handler: F) -> Self
    where
        F: Fn(Request) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = hyper::Response<Body>> + Send + 'static,
    {
        Self::start_inner(0, None, handler).await
    }

    async fn start_inner<F, Fut>(port: u16, tls: Option<tokio_rustls::TlsAcceptor>, handler: F) -> Self
    where
        F: Fn(Request) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = hyper::Response<Body>> + Send + 'static,
    {
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port))
            .await
            .unwrap_or_else(|e| panic!("bind 127.0.0.1:{port}: {e}"));
        let port = listener.local_addr().expect("addr").port();
        let connections = Arc::new(AtomicUsize::new(0));
        let handler = Arc::new(handler);
        let counter = connections.clone();
        let accepted = Arc::new(tokio::sync::watch::Sender::new(0));
        let accepted_tx = accepted.clone();
        let task = tokio::spawn(async move {
            loop {
                let tcp = match listener.accept().await {
                    Ok((tcp, _)) => tcp,
                    Err(_) => {
                        // Out of file descriptors, say: not a busy loop.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
                accepted_tx.send_replace(n);
                let handler = handler.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let handler = handler.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await.map(|b| b.to_bytes().to_vec()).unwrap_or_default();
                            let request = Request {
                                method: parts.method.to_string(),
                                path: parts.uri.path_and_query().map_or("/", |p| p.as_str()).to_string(),
                                headers: parts
                                    .headers
                                    .iter()
                                    .map(|(n, v)| {
                                        (n.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into())
                                    })
                                    .collect(),
                                body,
                            };
                            Ok::<_, std::convert::Infallible>(handler(request).await)
                        }
                    });
                    let builder = hyper::server::conn::http1::Builder::new();
                    match tls {
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(tcp).await {
                                let _ = builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service).await;
                            }
                        }
                        None => {
                            let _ = builder.serve_connection(hyper_util::rt::TokioIo::new(tcp), service).await;
                        }
                    }
                });
            }
        });
        HttpServer { port, connections, accepted, task }
    }
}
