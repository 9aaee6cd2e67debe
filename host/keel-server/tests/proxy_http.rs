//! The HTTP engine against real local servers (HTTPS with a throwaway CA, and plain HTTP).

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keel_server::proxy::http::{HttpError, HttpLimits, HttpProxy, HttpRequest};
use keel_server::proxy::{Destinations, DnsLimits, NameLookups, Tenant};
#[path = "common/tarpit.rs"]
mod tarpit;
use tarpit::{ReleaseOnDrop, Tarpit};

use keel_testpeers::{counted_stream, full, HttpServer, Leaf, Request, StreamProbe, TestCa};

/// Allows the listed addresses (and plain HTTP only if `http`), recording every check.
struct AllowIps {
    ips: Vec<IpAddr>,
    http: bool,
    checks: Mutex<Vec<(String, String, u16, IpAddr)>>,
}

impl AllowIps {
    fn new(ips: &[&str], http: bool) -> Self {
        AllowIps { ips: ips.iter().map(|i| i.parse().unwrap()).collect(), http, checks: Mutex::new(vec![]) }
    }
}

impl Destinations for AllowIps {
    fn check(&self, scheme: &str, host: &str, port: u16, ip: IpAddr) -> Result<(), String> {
        self.checks.lock().unwrap().push((scheme.to_string(), host.to_string(), port, ip));
        if scheme == "http" && !self.http {
            return Err("plain http not allowed".into());
        }
        if self.ips.contains(&ip) {
            Ok(())
        } else {
            Err(format!("{ip} not allowed"))
        }
    }
}

/// The device the tests' requests are for.
fn who() -> Tenant {
    Tenant { account: "acct".into(), device: "dev".into() }
}

fn get(url: String) -> HttpRequest {
    HttpRequest { method: "GET".into(), url, headers: vec![], body: vec![], timeout_ms: 5_000 }
}

/// Echoes the request as text: method, path, headers, then the body.
async fn echo(r: Request) -> hyper::Response<keel_testpeers::Body> {
    let mut text = format!("{} {}\n", r.method, r.path);
    for (n, v) in &r.headers {
        text.push_str(&format!("{n}: {v}\n"));
    }
    text.push('\n');
    let mut body = text.into_bytes();
    body.extend_from_slice(&r.body);
    let status = if r.path.starts_with("/missing") { 404 } else { 200 };
    hyper::Response::builder().status(status).header("x-echo", "yes").body(full(body)).unwrap()
}

struct Setup {
    _ca: TestCa,
    proxy: HttpProxy,
    server: HttpServer,
}

async fn setup() -> Setup {
    let ca = TestCa::new("proxy test CA");
    let leaf: Leaf = ca.localhost();
    let server = HttpServer::start_tls(&leaf, echo).await;
    let proxy = HttpProxy::new(HttpLimits::default(), &[ca.cert_pem.clone().into_bytes()]).unwrap();
    Setup { _ca: ca, proxy, server }
}

#[tokio::test]
async fn get_with_headers_reads_back_headers_and_body() {
    let s = setup().await;
    let dest = AllowIps::new(&["127.0.0.1"], false);
    let mut req = get(format!("https://127.0.0.1:{}/hello?x=1", s.server.port));
    req.headers = vec![("X-Test".into(), "one".into()), ("Accept".into(), "text/plain".into())];
    let resp = s.proxy.execute(&who(), &dest, req, 64 << 10).await.unwrap();
    assert_eq!(resp.status, 200);
    assert!(resp.headers.iter().any(|(n, v)| n == "x-echo" && v == "yes"), "{:?}", resp.headers);
    let body = String::from_utf8(resp.body).unwrap();
    assert!(body.starts_with("GET /hello?x=1\n"), "{body}");
    assert!(body.contains("x-test: one\n"), "{body}");
    assert!(body.contains("accept: text/plain\n"), "{body}");
    assert!(body.contains(&format!("host: 127.0.0.1:{}\n", s.server.port)), "{body}");
    let stats = s.proxy.stats();
    assert_eq!((stats.requests, stats.completed), (1, 1));
    assert!(stats.bytes_in > 0 && stats.bytes_out > 0);
}

#[tokio::test]
async fn post_body_is_echoed() {
    let s = setup().await;
    let dest = AllowIps::new(&["127.0.0.1"], false);
    let payload: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    let req = HttpRequest {
        method: "POST".into(),
        url: format!("https://127.0.0.1:{}/post", s.server.port),
        headers: vec![("Content-Type".into(), "application/octet-stream".into())],
        body: payload.clone(),
        timeout_ms: 5_000,
    };
    let resp = s.proxy.execute(&who(), &dest, req, 64 << 10).await.unwrap();
    assert_eq!(resp.status, 200);
    let split = resp.body.windows(2).position(|w| w == b"\n\n").unwrap() + 2;
    let head = String::from_utf8_lossy(&resp.body[..split]);
    assert!(head.contains("content-length: 10000\n"), "{head}");
    assert_eq!(&resp.body[split..], &payload[..]);
}

#[tokio::test]
async fn not_found_and_redirects_pass_through_as_statuses() {
    let ca = TestCa::new("proxy test CA");
    let server = HttpServer::start_tls(&ca.localhost(), |r: Request| async move {
        if r.path == "/moved" {
            hyper::Response::builder().status(302).header("location", "/elsewhere").body(full("")).unwrap()
        } else {
            hyper::Response::builder().status(404).body(full("nope")).unwrap()
        }
    })
    .await;
    let proxy = HttpProxy::new(HttpLimits::default(), &[ca.cert_pem.into_bytes()]).unwrap();
    let dest = AllowIps::new(&["127.0.0.1"], false);
    let resp =
        proxy.execute(&who(), &dest, get(format!("https://127.0.0.1:{}/missing", server.port)), 4096).await.unwrap();
    assert_eq!((resp.status, resp.body.as_slice()), (404, &b"nope"[..]));
    let resp =
        proxy.execute(&who(), &dest, get(format!("https://127.0.0.1:{}/moved", server.port)), 4096).await.unwrap();
    assert_eq!(resp.status, 302);
    assert!(resp.headers.iter().any(|(n, v)| n == "location" && v == "/elsewhere"));
    assert_eq!(server.connections.load(Ordering::SeqCst), 2, "the redirect was not followed");
}

#[tokio::test]
async fn a_server_that_never_answers_times_out() {
    let ca = TestCa::new("proxy test CA");
    let server = HttpServer::start_tls(&ca.localhost(), |_r: Request| std::future::pending()).await;
    let proxy = HttpProxy::new(HttpLimits::default(), &[ca.cert_pem.into_bytes()]).unwrap();
    let dest = AllowIps::new(&["127.0.0.1"], false);
    let mut req = get(format!("https://127.0.0.1:{}/slow", server.port));
    req.timeout_ms = 1_000;
    assert_eq!(proxy.execute(&who(), &dest, req, 4096).await, Err(HttpError::Timeout));
    assert_eq!(proxy.stats().timeouts, 1);
}

#[tokio::test]
async fn a_response_larger_than_the_limit_is_refused_without_reading_it_all() {
    let ca = TestCa::new("proxy test CA");
    let probe = StreamProbe::new();
    let p = probe.clone();
    // 4096 chunks of 16 KiB (64 MiB), chunked (no Content-Length); and a declared 1 MiB body.
    let server = HttpServer::start_tls(&ca.localhost(), move |r: Request| {
        let p = p.clone();
        async move {
            if r.path == "/declared" {
                return hyper::Response::new(full(vec![b'y'; 1 << 20]));
            }
            hyper::Response::new(counted_stream(16 << 10, 4096, p))
        }
    })
    .await;
    let proxy = HttpProxy::new(HttpLimits::default(), &[ca.cert_pem.into_bytes()]).unwrap();
    let dest = AllowIps::new(&["127.0.0.1"], false);
    let r = proxy.execute(&who(), &dest, get(format!("https://127.0.0.1:{}/big", server.port)), 64 << 10).await;
    assert_eq!(r, Err(HttpError::ResponseTooLarge));
    let r = proxy.execute(&who(), &dest, get(format!("https://127.0.0.1:{}/declared", server.port)), 64 << 10).await;
    assert_eq!(r, Err(HttpError::ResponseTooLarge));
    // The server's stream stops (is dropped) once its connection is gone, long before its end
    // (socket buffers hold a few MiB).
    let dropped = tokio::time::timeout(std::time::Duration::from_secs(10), probe.dropped()).await;
    assert!(dropped.is_ok(), "the server's stream is still going ({} chunks)", probe.produced());
    let produced = probe.produced();
    assert!(produced < 4096, "the whole body was produced ({produced} chunks)");
    // The headers count: a limit below the response head refuses even an empty body.
    let r = proxy.execute(&who(), &dest, get(format!("https://127.0.0.1:{}/declared", server.port)), 20).await;
    assert_eq!(r, Err(HttpError::ResponseTooLarge));
    assert_eq!(proxy.stats().too_large, 3);
}

#[tokio::test]
async fn a_denied_destination_is_never_connected_to() {
    let s = setup().await;
    let dest = AllowIps::new(&["192.0.2.1"], true);
    let r = s.proxy.execute(&who(), &dest, get(format!("https://127.0.0.1:{}/", s.server.port)), 4096).await;
    assert_eq!(r, Err(HttpError::Denied("127.0.0.1 not allowed".into())));
    assert_eq!(s.server.connections.load(Ordering::SeqCst), 0);
    assert_eq!(s.proxy.stats().denied, 1);
}

#[tokio::test]
async fn an_unknown_ca_fails_with_a_tls_reason() {
    let s = setup().await;
    // Mozilla's roots only: the test CA is unknown.
    let proxy = HttpProxy::new(HttpLimits::default(), &[]).unwrap();
    let dest = AllowIps::new(&["127.0.0.1"], false);
    match proxy.execute(&who(), &dest, get(format!("https://127.0.0.1:{}/", s.server.port)), 4096).await {
        Err(HttpError::RequestFailed(reason)) => {
            assert!(reason.starts_with("tls:"), "{reason}");
            assert!(reason.contains("UnknownIssuer"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    assert!(HttpProxy::new(HttpLimits::default(), &[b"not a pem".to_vec()]).is_err());
}

#[tokio::test]
async fn plain_http_only_where_the_policy_allows_it() {
    let server = HttpServer::start_plain(echo).await;
    let proxy = HttpProxy::new(HttpLimits::default(), &[]).unwrap();
    let url = format!("http://127.0.0.1:{}/plain", server.port);
    let strict = AllowIps::new(&["127.0.0.1"], false);
    assert_eq!(
        proxy.execute(&who(), &strict, get(url.clone()), 4096).await,
        Err(HttpError::Denied("plain http not allowed".into()))
    );
    assert_eq!(server.connections.load(Ordering::SeqCst), 0);
    let lax = AllowIps::new(&["127.0.0.1"], true);
    let resp = proxy.execute(&who(), &lax, get(url), 4096).await.unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(lax.checks.lock().unwrap()[0].0, "http");
}

#[tokio::test]
async fn invalid_requests_are_refused_before_any_connection() {
    let s = setup().await;
    let dest = AllowIps::new(&["127.0.0.1"], true);
    let url = format!("https://127.0.0.1:{}/", s.server.port);
    let with_header = |n: &str, v: &str| {
        let mut r = get(url.clone());
        r.headers = vec![(n.into(), v.into())];
        r
    };
    for (req, want) in [
        (with_header("X-Evil", "a\r\nInjected: 1"), HttpError::InvalidHeaders),
        (with_header("X-Evil\r\nInjected", "1"), HttpError::InvalidHeaders),
        (with_header("Bad Name", "1"), HttpError::InvalidHeaders),
        (with_header("Host", "example.com"), HttpError::InvalidHeaders),
        (with_header("transfer-encoding", "chunked"), HttpError::InvalidHeaders),
        (with_header("Content-Length", "5"), HttpError::InvalidHeaders),
        (
            HttpRequest { headers: (0..33).map(|i| (format!("x-{i}"), "v".into())).collect(), ..get(url.clone()) },
            HttpError::InvalidHeaders,
        ),
        (HttpRequest { method: "CONNECT".into(), ..get(url.clone()) }, HttpError::UnsupportedMethod),
        (HttpRequest { method: "get".into(), ..get(url.clone()) }, HttpError::UnsupportedMethod),
        (get(format!("ftp://127.0.0.1:{}/", s.server.port)), HttpError::UnsupportedScheme),
        (get(format!("https://user:pw@127.0.0.1:{}/", s.server.port)), HttpError::InvalidUrl),
        (get(format!("https://127.0.0.1:{}/{}", s.server.port, "a".repeat(2048))), HttpError::InvalidUrl),
        (HttpRequest { timeout_ms: 999, ..get(url.clone()) }, HttpError::InvalidTimeout),
        (HttpRequest { timeout_ms: 60_001, ..get(url.clone()) }, HttpError::InvalidTimeout),
    ] {
        assert_eq!(s.proxy.execute(&who(), &dest, req.clone(), 4096).await, Err(want), "{req:?}");
    }
    assert_eq!(s.server.connections.load(Ordering::SeqCst), 0);
    assert!(dest.checks.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_name_is_judged_by_the_address_it_resolves_to() {
    let s = setup().await;
    let url = format!("https://localhost:{}/named", s.server.port);
    let only_loopback = AllowIps::new(&["127.0.0.1"], false);
    let resp = s.proxy.execute(&who(), &only_loopback, get(url.clone()), 4096).await.unwrap();
    assert_eq!(resp.status, 200);
    let checks = only_loopback.checks.lock().unwrap().clone();
    assert!(checks.iter().any(|(scheme, host, port, ip)| scheme == "https"
        && host == "localhost"
        && *port == s.server.port
        && *ip == "127.0.0.1".parse::<IpAddr>().unwrap()));
    // The same name, with 127.0.0.1 refused: denied without a connection.
    let before = s.server.connections.load(Ordering::SeqCst);
    let public_only = AllowIps::new(&["192.0.2.1"], false);
    assert!(matches!(s.proxy.execute(&who(), &public_only, get(url), 4096).await, Err(HttpError::Denied(_))));
    assert_eq!(s.server.connections.load(Ordering::SeqCst), before);
}

#[tokio::test]
async fn concurrency_is_bounded_server_wide() {
    let ca = TestCa::new("proxy test CA");
    let server = HttpServer::start_tls(&ca.localhost(), |_r: Request| std::future::pending()).await;
    let limits = HttpLimits { max_concurrent: 1, ..HttpLimits::default() };
    let proxy = HttpProxy::new(limits, &[ca.cert_pem.into_bytes()]).unwrap();
    let dest = Arc::new(AllowIps::new(&["127.0.0.1"], false));
    let url = format!("https://127.0.0.1:{}/", server.port);
    let (p, d, u) = (proxy.clone(), dest.clone(), url.clone());
    let first =
        tokio::spawn(
            async move { p.execute(&who(), d.as_ref(), HttpRequest { timeout_ms: 3_000, ..get(u) }, 4096).await },
        );
    // Wait until the first request holds its connection.
    let accepted = tokio::time::timeout(std::time::Duration::from_secs(10), server.wait_connections(1)).await;
    assert!(accepted.is_ok(), "the first request did not connect");
    assert_eq!(proxy.execute(&who(), dest.as_ref(), get(url), 4096).await, Err(HttpError::RateLimited));
    assert_eq!(first.await.unwrap(), Err(HttpError::Timeout));
    assert_eq!(proxy.stats().rate_limited, 1);
}

fn tenant(account: &str, device: &str) -> Tenant {
    Tenant { account: account.into(), device: device.into() }
}

async fn entered(rx: &mut tokio::sync::mpsc::UnboundedReceiver<String>) -> String {
    tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.expect("a lookup started").expect("open")
}

const BUSY: &str = "dns: too many name lookups in progress";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn name_lookups_are_bounded_per_device_and_server_wide_until_their_threads_return() {
    let (tarpit, mut started) = Tarpit::new();
    let _release = ReleaseOnDrop(tarpit.clone());
    let limits = DnsLimits { timeout: Duration::from_secs(60), per_device: 2, per_account: 8, max_concurrent: 3 };
    let lookups = NameLookups::new(limits, tarpit.clone());
    let proxy = HttpProxy::with_lookups(HttpLimits::default(), &[], lookups.clone()).unwrap();
    let server = HttpServer::start_plain(echo).await;
    let dest = Arc::new(AllowIps::new(&["127.0.0.1"], true));
    let ok_url = format!("http://ok.test:{}/", server.port);
    let request = |who: Tenant, url: String| {
        let (p, d) = (proxy.clone(), dest.clone());
        tokio::spawn(
            async move { p.execute(&who, d.as_ref(), HttpRequest { timeout_ms: 5_000, ..get(url) }, 4096).await },
        )
    };
    // Device d1 asks for two names the tarpit holds: both lookups start...
    let a = request(tenant("acct", "d1"), "http://a.tarpit/".into());
    let b = request(tenant("acct", "d1"), "http://b.tarpit/".into());
    entered(&mut started).await;
    entered(&mut started).await;
    // ... and its third is refused at once, not queued behind them.
    let third = proxy.execute(&tenant("acct", "d1"), dest.as_ref(), get("http://c.tarpit/".into()), 4096).await;
    assert_eq!(third, Err(HttpError::RequestFailed(BUSY.into())));
    // Another device is served meanwhile.
    let resp = proxy.execute(&tenant("acct", "d2"), dest.as_ref(), get(ok_url.clone()), 4096).await.unwrap();
    assert_eq!(resp.status, 200);
    // With d2 holding the last server-wide lookup, a third device is refused too.
    let c = request(tenant("acct", "d2"), "http://d.tarpit/".into());
    entered(&mut started).await;
    let r = proxy.execute(&tenant("other", "d3"), dest.as_ref(), get(ok_url.clone()), 4096).await;
    assert_eq!(r, Err(HttpError::RequestFailed(BUSY.into())));
    // Abandoning the requests does not free their lookups: the threads are still blocked.
    for t in [a, b, c] {
        t.abort();
        assert!(t.await.is_err_and(|e| e.is_cancelled()));
    }
    assert_eq!(lookups.stats().in_progress, 3);
    let r = proxy.execute(&tenant("acct", "d1"), dest.as_ref(), get(ok_url.clone()), 4096).await;
    assert_eq!(r, Err(HttpError::RequestFailed(BUSY.into())));
    // Once the name server answers, the threads return and lookups are served again.
    tarpit.release();
    let idle = tokio::time::timeout(Duration::from_secs(10), lookups.wait_stats(|s| s.in_progress == 0)).await;
    assert!(idle.is_ok(), "the lookups never ended: {:?}", lookups.stats());
    let resp = proxy.execute(&tenant("acct", "d1"), dest.as_ref(), get(ok_url), 4096).await.unwrap();
    assert_eq!(resp.status, 200);
    let stats = lookups.stats();
    assert_eq!((stats.refused, stats.timed_out), (3, 0), "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_lookup_that_never_answers_times_out() {
    let (tarpit, mut started) = Tarpit::new();
    let _release = ReleaseOnDrop(tarpit.clone());
    let limits = DnsLimits { timeout: Duration::from_millis(300), ..DnsLimits::default() };
    let lookups = NameLookups::new(limits, tarpit.clone());
    let proxy = HttpProxy::with_lookups(HttpLimits::default(), &[], lookups.clone()).unwrap();
    let dest = AllowIps::new(&["127.0.0.1"], true);
    // The request's own timeout is much longer: the lookup's ends it.
    let req = HttpRequest { timeout_ms: 30_000, ..get("http://slow.tarpit/".into()) };
    let r = proxy.execute(&tenant("acct", "d1"), &dest, req, 4096).await;
    assert_eq!(r, Err(HttpError::RequestFailed("dns: name lookup timed out".into())));
    assert_eq!(entered(&mut started).await, "slow.tarpit");
    let stats = lookups.stats();
    assert_eq!((stats.timed_out, stats.in_progress), (1, 1), "the thread is still held: {stats:?}");
    tarpit.release();
    let idle = tokio::time::timeout(Duration::from_secs(10), lookups.wait_stats(|s| s.in_progress == 0)).await;
    assert!(idle.is_ok(), "the lookup never ended: {:?}", lookups.stats());
}

#[tokio::test]
async fn one_account_cannot_take_every_request_permit() {
    let ca = TestCa::new("proxy test CA");
    let silent = HttpServer::start_tls(&ca.localhost(), |_r: Request| std::future::pending()).await;
    let answering = HttpServer::start_tls(&ca.localhost(), echo).await;
    let limits = HttpLimits { max_concurrent: 2, max_per_account: 1, ..HttpLimits::default() };
    let proxy = HttpProxy::new(limits, &[ca.cert_pem.into_bytes()]).unwrap();
    let dest = Arc::new(AllowIps::new(&["127.0.0.1"], false));
    let slow = format!("https://127.0.0.1:{}/", silent.port);
    // Account A's first request holds its share...
    let (p, d, u) = (proxy.clone(), dest.clone(), slow.clone());
    let first = tokio::spawn(async move {
        p.execute(&tenant("a", "a1"), d.as_ref(), HttpRequest { timeout_ms: 3_000, ..get(u) }, 4096).await
    });
    let accepted = tokio::time::timeout(Duration::from_secs(10), silent.wait_connections(1)).await;
    assert!(accepted.is_ok(), "the first request did not connect");
    // ... so its other devices are refused, with a status that says why...
    let r =
        proxy.execute(&tenant("a", "a2"), dest.as_ref(), HttpRequest { timeout_ms: 2_000, ..get(slow) }, 4096).await;
    assert_eq!(r, Err(HttpError::AccountLimited));
    assert_eq!(silent.connections.load(Ordering::SeqCst), 1);
    // ... while account B is still served.
    let ok = format!("https://127.0.0.1:{}/b", answering.port);
    let resp = proxy.execute(&tenant("b", "b1"), dest.as_ref(), get(ok), 4096).await.unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(first.await.unwrap(), Err(HttpError::Timeout));
    let stats = proxy.stats();
    assert_eq!((stats.account_limited, stats.rate_limited, stats.in_progress), (1, 0, 0), "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_account_cannot_take_every_name_lookup() {
    let (tarpit, mut started) = Tarpit::new();
    let _release = ReleaseOnDrop(tarpit.clone());
    let limits = DnsLimits { timeout: Duration::from_secs(60), per_device: 2, per_account: 3, max_concurrent: 8 };
    let lookups = NameLookups::new(limits, tarpit.clone());
    let proxy = HttpProxy::with_lookups(HttpLimits::default(), &[], lookups.clone()).unwrap();
    let server = HttpServer::start_plain(echo).await;
    let dest = Arc::new(AllowIps::new(&["127.0.0.1"], true));
    let ok_url = format!("http://ok.test:{}/", server.port);
    let mut held = vec![];
    // Account A's devices hold three lookups in the tarpit (two devices, within their own caps).
    for (device, name) in [("a1", "x"), ("a1", "y"), ("a2", "z")] {
        let (p, d) = (proxy.clone(), dest.clone());
        let url = format!("http://{name}.tarpit/");
        held.push(tokio::spawn(async move {
            p.execute(&tenant("A", device), d.as_ref(), HttpRequest { timeout_ms: 5_000, ..get(url) }, 4096).await
        }));
        entered(&mut started).await;
    }
    // A third device of A is refused although it has none in progress...
    let r = proxy.execute(&tenant("A", "a3"), dest.as_ref(), get(ok_url.clone()), 4096).await;
    assert_eq!(r, Err(HttpError::RequestFailed(BUSY.into())));
    // ... and account B is served.
    let resp = proxy.execute(&tenant("B", "b1"), dest.as_ref(), get(ok_url), 4096).await.unwrap();
    assert_eq!(resp.status, 200);
    for t in held {
        t.abort();
    }
}
