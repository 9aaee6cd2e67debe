//! The HTTP engine: one request on a device's behalf, over a fresh HTTP/1.1 connection (plain
//! or TLS), with every part bounded.
//!
//! * **Requests**: methods `GET HEAD POST PUT DELETE PATCH OPTIONS`; `https://` and `http://`
//!   URLs (the scheme is part of the [`Destinations`] check: a policy that refuses `"http"`
//!   refuses plain-text requests) of at most [`HttpLimits::max_url_len`] bytes, without user
//!   info or fragment; at most [`HttpLimits::max_headers`] headers with token names and values
//!   free of control characters. The proxy owns the framing and hop-by-hop headers — `Host`,
//!   `Content-Length`, `Transfer-Encoding`, `Connection`, `Keep-Alive`, `TE`, `Trailer`,
//!   `Upgrade`, `Proxy-*` — and a request carrying one is refused ([`HttpError::InvalidHeaders`]).
//! * **Timeout**: `timeout_ms` in [`MIN_TIMEOUT_MS`]`..=`[`MAX_TIMEOUT_MS`] bounds the whole
//!   exchange: name resolution, connection, TLS handshake, request and the complete response.
//! * **Response**: redirects are not followed (a 3xx is returned as it is). Its size — a status
//!   line of [`STATUS_LINE_BYTES`], each header as `name: value\r\n`, the body as received
//!   (content encodings are not undone) — must not exceed the caller's `max_response`: the
//!   response is refused ([`HttpError::ResponseTooLarge`]) as soon as its `Content-Length` or
//!   the bytes read so far exceed it, and the connection is closed, so no more than about
//!   `max_response` (and at least hyper's 8 KiB read buffer) is ever held. Hop-by-hop headers
//!   of the response (`Connection`, `Transfer-Encoding`, ...) are not returned.
//! * **TLS**: rustls (ring), TLS 1.2 and 1.3, ALPN `http/1.1`, certificates checked against
//!   Mozilla's root program as compiled in (`webpki-roots`: the same roots on every host,
//!   independent of the host's CA bundle; a server update brings new roots) plus the extra CA
//!   certificates given to [`HttpProxy::new`] (an account's private CA).
//! * **Concurrency**: at most [`HttpLimits::max_concurrent`] requests at once server-wide, and
//!   at most [`HttpLimits::max_per_account`] of them for the devices of one account (so one
//!   tenant cannot take every permit); more are refused at once ([`HttpError::RateLimited`],
//!   [`HttpError::AccountLimited`]), never queued. Name lookups are bounded per device and
//!   server-wide by the [`NameLookups`] the engine resolves through. Per-device limits on
//!   requests are the caller's (a device has at most 8 channels, one request each).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderName, HeaderValue};
use tokio::sync::Semaphore;
use tokio_rustls::rustls;

use super::{connect_allowed, find_rustls_error, AbortOnDrop, ConnectError, Destinations, NameLookups, Tenant};

/// The shortest timeout a request may ask for, in milliseconds.
pub const MIN_TIMEOUT_MS: u32 = 1_000;
/// The longest timeout a request may ask for, in milliseconds.
pub const MAX_TIMEOUT_MS: u32 = 60_000;
/// What the status line counts toward a response's size.
pub const STATUS_LINE_BYTES: usize = 16;

/// Methods a device may use.
pub const METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"];

/// Headers the proxy sets (or leaves out) itself; a device's request with one is refused.
const PROXY_OWNED: [&str; 10] = [
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
    "proxy-authorization",
    "proxy-connection",
];

/// Response headers that describe the connection, not the resource: not returned.
const HOP_BY_HOP: [&str; 6] = ["connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade"];

/// A request from a device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpRequest {
    /// One of [`METHODS`] (upper case).
    pub method: String,
    /// An absolute `https://` or `http://` URL.
    pub url: String,
    /// Headers in order (names case-insensitive; repeated names are sent repeated).
    pub headers: Vec<(String, String)>,
    /// The body (sent with a `Content-Length`; none for an empty body of GET, HEAD, DELETE,
    /// OPTIONS).
    pub body: Vec<u8>,
    /// The whole exchange's timeout, [`MIN_TIMEOUT_MS`]`..=`[`MAX_TIMEOUT_MS`].
    pub timeout_ms: u32,
}

/// The response, whatever its status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpResponse {
    /// The status code (3xx included: redirects are not followed).
    pub status: u16,
    /// The end-to-end headers in order (names lower case; values not UTF-8 are converted lossily).
    pub headers: Vec<(String, String)>,
    /// The body as received (decoded from chunked framing, content encoding kept).
    pub body: Vec<u8>,
}

/// Why a request got no response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HttpError {
    /// The URL's scheme is neither `https` nor `http`.
    UnsupportedScheme,
    /// The method is not one of [`METHODS`].
    UnsupportedMethod,
    /// The URL does not parse, is too long, has user info, a fragment or no host.
    InvalidUrl,
    /// Too many headers, a malformed name or value, or a header the proxy owns.
    InvalidHeaders,
    /// The request's body is larger than [`HttpLimits::max_request_body`].
    BodyTooLarge,
    /// `timeout_ms` is outside [`MIN_TIMEOUT_MS`]`..=`[`MAX_TIMEOUT_MS`].
    InvalidTimeout,
    /// The destination policy refused every address of the host (its reason); no connection
    /// was made.
    Denied(String),
    /// The exchange did not finish within the request's timeout.
    Timeout,
    /// Name resolution, connection, TLS (the reason starts with `tls:`) or HTTP failed.
    RequestFailed(String),
    /// The response is larger than the caller's limit.
    ResponseTooLarge,
    /// [`HttpLimits::max_concurrent`] requests are in progress.
    RateLimited,
    /// [`HttpLimits::max_per_account`] requests of the device's account are in progress.
    AccountLimited,
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HttpError::UnsupportedScheme => f.write_str("unsupported scheme"),
            HttpError::UnsupportedMethod => f.write_str("unsupported method"),
            HttpError::InvalidUrl => f.write_str("invalid URL"),
            HttpError::InvalidHeaders => f.write_str("invalid headers"),
            HttpError::BodyTooLarge => f.write_str("request body too large"),
            HttpError::InvalidTimeout => f.write_str("invalid timeout"),
            HttpError::Denied(r) => write!(f, "destination denied: {r}"),
            HttpError::Timeout => f.write_str("timed out"),
            HttpError::RequestFailed(r) => write!(f, "request failed: {r}"),
            HttpError::ResponseTooLarge => f.write_str("response too large"),
            HttpError::RateLimited => f.write_str("too many requests in progress"),
            HttpError::AccountLimited => f.write_str("too many requests in progress for the account"),
        }
    }
}

impl std::error::Error for HttpError {}

/// The engine's bounds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpLimits {
    /// Requests in progress at once, server-wide. Default 256.
    pub max_concurrent: usize,
    /// Requests in progress at once for the devices of one account. Default 64 (a quarter of
    /// the server-wide default).
    pub max_per_account: usize,
    /// A URL's length in bytes. Default 2048.
    pub max_url_len: usize,
    /// Headers of one request. Default 32.
    pub max_headers: usize,
    /// One header's name plus value, in bytes. Default 8 KiB.
    pub max_header_len: usize,
    /// A request's body. Default 64 KiB.
    pub max_request_body: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_concurrent: 256,
            max_per_account: 64,
            max_url_len: 2048,
            max_headers: 32,
            max_header_len: 8 << 10,
            max_request_body: 64 << 10,
        }
    }
}

/// Counters since the engine was built ([`HttpProxy::stats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HttpStats {
    /// Requests handed to [`HttpProxy::execute`].
    pub requests: u64,
    /// Requests that got a response (any status).
    pub completed: u64,
    /// Requests refused by the destination policy.
    pub denied: u64,
    /// Requests that failed ([`HttpError::RequestFailed`]).
    pub failed: u64,
    /// Requests that timed out.
    pub timeouts: u64,
    /// Requests refused as invalid (method, scheme, URL, headers, body, timeout).
    pub invalid: u64,
    /// Responses refused as too large.
    pub too_large: u64,
    /// Requests refused because [`HttpLimits::max_concurrent`] were in progress.
    pub rate_limited: u64,
    /// Requests refused because [`HttpLimits::max_per_account`] of their account's were in
    /// progress.
    pub account_limited: u64,
    /// Requests in progress now.
    pub in_progress: u64,
    /// Request bytes sent (headers as given plus body).
    pub bytes_out: u64,
    /// Response bytes received (counted as for the response limit).
    pub bytes_in: u64,
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    completed: AtomicU64,
    denied: AtomicU64,
    failed: AtomicU64,
    timeouts: AtomicU64,
    invalid: AtomicU64,
    too_large: AtomicU64,
    rate_limited: AtomicU64,
    account_limited: AtomicU64,
    bytes_out: AtomicU64,
    bytes_in: AtomicU64,
}

struct Inner {
    limits: HttpLimits,
    tls: tokio_rustls::TlsConnector,
    permits: Semaphore,
    /// Requests in progress per account (only accounts with one have an entry).
    accounts: Mutex<HashMap<String, usize>>,
    counters: Counters,
    lookups: NameLookups,
}

/// A request's place in its account's share of [`HttpLimits::max_per_account`]; freed when
/// dropped.
struct AccountShare<'a> {
    inner: &'a Inner,
    account: &'a str,
}

impl<'a> AccountShare<'a> {
    fn take(inner: &'a Inner, account: &'a str) -> Option<Self> {
        let mut accounts = inner.accounts.lock().unwrap_or_else(|e| e.into_inner());
        let n = accounts.entry(account.to_string()).or_insert(0);
        if *n >= inner.limits.max_per_account {
            if *n == 0 {
                accounts.remove(account);
            }
            return None;
        }
        *n += 1;
        Some(AccountShare { inner, account })
    }
}

impl Drop for AccountShare<'_> {
    fn drop(&mut self) {
        let mut accounts = self.inner.accounts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = accounts.get_mut(self.account) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                accounts.remove(self.account);
            }
        }
    }
}

/// The HTTP engine. Cheap to clone (clones share limits, TLS configuration and counters).
#[derive(Clone)]
pub struct HttpProxy {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for HttpProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpProxy").field("limits", &self.inner.limits).field("stats", &self.stats()).finish()
    }
}

/// A validated request.
struct Prepared {
    method: hyper::Method,
    https: bool,
    host: String,
    authority: String,
    port: u16,
    path: String,
    headers: Vec<(HeaderName, HeaderValue)>,
    out_bytes: u64,
}

impl HttpProxy {
    /// Builds the engine: `limits`, and the TLS roots — Mozilla's compiled in, plus every
    /// certificate of `extra_roots_pem` (PEM bundles). Errors name the bundle that failed.
    pub fn new(limits: HttpLimits, extra_roots_pem: &[Vec<u8>]) -> Result<Self, String> {
        HttpProxy::with_lookups(limits, extra_roots_pem, NameLookups::default())
    }

    /// As [`HttpProxy::new`], resolving names through `lookups` (shared with the MQTT hub).
    pub fn with_lookups(limits: HttpLimits, extra_roots_pem: &[Vec<u8>], lookups: NameLookups) -> Result<Self, String> {
        let mut roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
        super::add_pem_roots(&mut roots, extra_roots_pem)?;
        let mut config = rustls::ClientConfig::builder_with_provider(super::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let permits = Semaphore::new(limits.max_concurrent);
        Ok(HttpProxy {
            inner: Arc::new(Inner {
                limits,
                tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
                permits,
                accounts: Mutex::new(HashMap::new()),
                counters: Counters::default(),
                lookups,
            }),
        })
    }

    /// The engine's limits.
    pub fn limits(&self) -> &HttpLimits {
        &self.inner.limits
    }

    /// The name lookups it resolves through.
    pub fn lookups(&self) -> &NameLookups {
        &self.inner.lookups
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> HttpStats {
        let c = &self.inner.counters;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        HttpStats {
            requests: l(&c.requests),
            completed: l(&c.completed),
            denied: l(&c.denied),
            failed: l(&c.failed),
            timeouts: l(&c.timeouts),
            invalid: l(&c.invalid),
            too_large: l(&c.too_large),
            rate_limited: l(&c.rate_limited),
            account_limited: l(&c.account_limited),
            in_progress: self.inner.limits.max_concurrent.saturating_sub(self.inner.permits.available_permits()) as u64,
            bytes_out: l(&c.bytes_out),
            bytes_in: l(&c.bytes_in),
        }
    }

    /// Performs `req` for `who` if `dest` allows its destination, and returns the response if
    /// it fits in `max_response` bytes (see the module documentation for how it is counted).
    pub async fn execute(
        &self,
        who: &Tenant,
        dest: &dyn Destinations,
        req: HttpRequest,
        max_response: usize,
    ) -> Result<HttpResponse, HttpError> {
        let c = &self.inner.counters;
        c.requests.fetch_add(1, Ordering::Relaxed);
        let Some(_share) = AccountShare::take(&self.inner, &who.account) else {
            c.account_limited.fetch_add(1, Ordering::Relaxed);
            return Err(HttpError::AccountLimited);
        };
        let Ok(_permit) = self.inner.permits.try_acquire() else {
            c.rate_limited.fetch_add(1, Ordering::Relaxed);
            return Err(HttpError::RateLimited);
        };
        let prepared = match self.prepare(&req) {
            Ok(p) => p,
            Err(e) => {
                c.invalid.fetch_add(1, Ordering::Relaxed);
                return Err(e);
            }
        };
        let timeout = Duration::from_millis(u64::from(req.timeout_ms));
        let result =
            match tokio::time::timeout(timeout, self.exchange(who, dest, prepared, req.body, max_response)).await {
                Ok(r) => r,
                Err(_) => Err(HttpError::Timeout),
            };
        let counter = match &result {
            Ok(_) => &c.completed,
            Err(HttpError::Denied(_)) => &c.denied,
            Err(HttpError::Timeout) => &c.timeouts,
            Err(HttpError::ResponseTooLarge) => &c.too_large,
            Err(_) => &c.failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        result
    }

    /// Validates a request.
    fn prepare(&self, req: &HttpRequest) -> Result<Prepared, HttpError> {
        let limits = &self.inner.limits;
        if !METHODS.contains(&req.method.as_str()) {
            return Err(HttpError::UnsupportedMethod);
        }
        let method = hyper::Method::from_bytes(req.method.as_bytes()).map_err(|_| HttpError::UnsupportedMethod)?;
        if !(MIN_TIMEOUT_MS..=MAX_TIMEOUT_MS).contains(&req.timeout_ms) {
            return Err(HttpError::InvalidTimeout);
        }
        if req.body.len() > limits.max_request_body {
            return Err(HttpError::BodyTooLarge);
        }
        if req.url.len() > limits.max_url_len || req.url.contains('#') {
            return Err(HttpError::InvalidUrl);
        }
        let uri: hyper::Uri = req.url.parse().map_err(|_| HttpError::InvalidUrl)?;
        let https = match uri.scheme_str() {
            Some(s) if s.eq_ignore_ascii_case("https") => true,
            Some(s) if s.eq_ignore_ascii_case("http") => false,
            Some(_) => return Err(HttpError::UnsupportedScheme),
            None => return Err(HttpError::InvalidUrl),
        };
        let authority = uri.authority().ok_or(HttpError::InvalidUrl)?;
        if authority.as_str().contains('@') {
            return Err(HttpError::InvalidUrl);
        }
        let host = authority.host().trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
        if host.is_empty() {
            return Err(HttpError::InvalidUrl);
        }
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
        if req.headers.len() > limits.max_headers {
            return Err(HttpError::InvalidHeaders);
        }
        let mut headers = Vec::with_capacity(req.headers.len());
        let mut out_bytes = req.body.len() as u64;
        for (name, value) in &req.headers {
            if name.len() + value.len() > limits.max_header_len
                || name.is_empty()
                || !name.bytes().all(is_token_char)
                || !value.bytes().all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f))
                || PROXY_OWNED.iter().any(|o| o.eq_ignore_ascii_case(name))
                || name.to_ascii_lowercase().starts_with("proxy-")
            {
                return Err(HttpError::InvalidHeaders);
            }
            let n = HeaderName::from_bytes(name.as_bytes()).map_err(|_| HttpError::InvalidHeaders)?;
            let v = HeaderValue::from_str(value.trim()).map_err(|_| HttpError::InvalidHeaders)?;
            out_bytes += (name.len() + value.len() + 4) as u64;
            headers.push((n, v));
        }
        Ok(Prepared { method, https, authority: authority.as_str().to_string(), host, port, path, headers, out_bytes })
    }

    /// Resolution, connection, TLS and the exchange itself (the caller bounds its time).
    async fn exchange(
        &self,
        who: &Tenant,
        dest: &dyn Destinations,
        p: Prepared,
        body: Vec<u8>,
        max_response: usize,
    ) -> Result<HttpResponse, HttpError> {
        let scheme = if p.https { "https" } else { "http" };
        let lookups = &self.inner.lookups;
        let connected = connect_allowed(lookups, who, dest, scheme, &p.host, p.port, Duration::from_secs(10));
        let tcp = connected.await.map_err(|e| match e {
            ConnectError::Denied(r) => HttpError::Denied(r),
            ConnectError::NxDomain(r) => HttpError::RequestFailed(format!("dns: {r}")),
            ConnectError::LookupsBusy => HttpError::RequestFailed("dns: too many name lookups in progress".into()),
            ConnectError::LookupTimeout => HttpError::RequestFailed("dns: name lookup timed out".into()),
            ConnectError::Connect(e) => HttpError::RequestFailed(format!("connect: {e}")),
        })?;
        let mut builder = hyper::client::conn::http1::Builder::new();
        // Bounds the response head (and each read) to about the response limit; hyper's minimum
        // is 8 KiB.
        builder.max_buf_size(max_response.clamp(8 << 10, 1 << 20)).max_headers(100);
        let request = self.build_request(&p, body)?;
        self.inner.counters.bytes_out.fetch_add(p.out_bytes, Ordering::Relaxed);
        if p.https {
            let name = rustls_pki_types::ServerName::try_from(p.host.clone())
                .map_err(|e| HttpError::RequestFailed(format!("tls: {e}")))?;
            let tls = self.inner.tls.connect(name, tcp).await.map_err(|e| HttpError::RequestFailed(tls_reason(&e)))?;
            self.send(builder, hyper_util::rt::TokioIo::new(tls), request, max_response).await
        } else {
            self.send(builder, hyper_util::rt::TokioIo::new(tcp), request, max_response).await
        }
    }

    fn build_request(&self, p: &Prepared, body: Vec<u8>) -> Result<hyper::Request<Full<Bytes>>, HttpError> {
        let mut b = hyper::Request::builder().method(p.method.clone()).uri(p.path.as_str());
        let h = b.headers_mut().ok_or(HttpError::InvalidUrl)?;
        h.insert(hyper::header::HOST, HeaderValue::from_str(&p.authority).map_err(|_| HttpError::InvalidUrl)?);
        h.insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
        let bodiless = matches!(
            p.method,
            hyper::Method::GET | hyper::Method::HEAD | hyper::Method::DELETE | hyper::Method::OPTIONS
        );
        if !body.is_empty() || !bodiless {
            h.insert(hyper::header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        }
        for (n, v) in &p.headers {
            h.append(n.clone(), v.clone());
        }
        b.body(Full::new(Bytes::from(body))).map_err(|_| HttpError::InvalidHeaders)
    }

    async fn send<T>(
        &self,
        builder: hyper::client::conn::http1::Builder,
        io: T,
        request: hyper::Request<Full<Bytes>>,
        max_response: usize,
    ) -> Result<HttpResponse, HttpError>
    where
        T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let head_only = request.method() == hyper::Method::HEAD;
        let (mut sender, conn) =
            builder.handshake(io).await.map_err(|e| HttpError::RequestFailed(format!("http: {e}")))?;
        let _conn = AbortOnDrop(tokio::spawn(async move {
            let _ = conn.await;
        }));
        let resp = sender.send_request(request).await.map_err(hyper_error)?;
        let mut size = STATUS_LINE_BYTES;
        let mut headers = Vec::with_capacity(resp.headers().len());
        for (name, value) in resp.headers() {
            size += name.as_str().len() + value.len() + 4;
            if HOP_BY_HOP.contains(&name.as_str()) {
                continue;
            }
            headers.push((name.as_str().to_string(), String::from_utf8_lossy(value.as_bytes()).into_owned()));
        }
        let counted = |n: usize| self.inner.counters.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
        if size > max_response {
            counted(size);
            return Err(HttpError::ResponseTooLarge);
        }
        let declared = resp
            .headers()
            .get(hyper::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if !head_only && declared.is_some_and(|d| d > (max_response - size) as u64) {
            counted(size);
            return Err(HttpError::ResponseTooLarge);
        }
        let status = resp.status().as_u16();
        let mut body_in = resp.into_body();
        let mut body = Vec::new();
        while let Some(frame) = body_in.frame().await {
            let frame = frame.map_err(hyper_error)?;
            if let Ok(data) = frame.into_data() {
                if size + body.len() + data.len() > max_response {
                    counted(size + body.len() + data.len());
                    return Err(HttpError::ResponseTooLarge);
                }
                body.extend_from_slice(&data);
            }
        }
        counted(size + body.len());
        Ok(HttpResponse { status, headers, body })
    }
}

/// RFC 9110 token characters.
fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn hyper_error(e: hyper::Error) -> HttpError {
    if e.is_parse_too_large() {
        return HttpError::ResponseTooLarge;
    }
    HttpError::RequestFailed(format!("http: {e}"))
}

/// `tls: <what rustls said>` for a failed handshake.
fn tls_reason(e: &std::io::Error) -> String {
    match find_rustls_error(e) {
        Some(r) => format!("tls: {r}"),
        None => format!("tls: {e}"),
    }
}
