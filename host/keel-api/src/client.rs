//! A typed blocking client of the API (feature `client`): one method per route, the bodies and
//! query parameters as this crate's types, every failure as an [`ApiError`].
//!
//! ```no_run
//! use keel_api::{Client, DevicesQuery};
//!
//! let api = Client::new("http://127.0.0.1:7447").with_token("keel_...");
//! for d in api.devices(&DevicesQuery { tag: Some("field".into()) })? {
//!     println!("{} {}", d.id, d.name);
//! }
//! # Ok::<(), keel_api::ApiError>(())
//! ```

use std::fmt;
use std::io::{BufRead, BufReader, Read};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use ureq::http::{Method, Request, Response};
use ureq::{AsSendBody, Body};

mod debug;
mod settings;
pub use debug::{DebugSocket, MAX_DEBUG_FRAME};

use crate::{
    BundleJson, CrashJson, CrashSummaryJson, CreatedToken, DeploymentJson, DeviceJson, DevicePatch, DevicesQuery,
    EventsQuery, LogJson, LogQuery, NewDeployment, NewDevice, NewSignerKey, NewToken, ServerInfo, SignerKeyJson,
    StreamQuery, TokenJson, UpdateEventJson, UploadQuery,
};

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    /// The server answered with an error status.
    Api {
        /// The HTTP status (401, 404, 409, 413, ...).
        status: u16,
        /// The API's machine-readable `error.code` (`unauthorized`, `not_found`,
        /// `insufficient_scope`, ...), or `http_error` when the answer carried none.
        code: String,
        /// The API's `error.message`, or `request failed` when the answer carried none.
        message: String,
    },
    /// No answer: the server could not be reached, TLS failed, or the connection broke or timed
    /// out.
    Transport {
        /// The server's base URL.
        server: String,
        /// The TLS handshake failed (an untrusted certificate, say): retrying will not help.
        tls: bool,
        /// What the HTTP client said.
        message: String,
    },
    /// The server answered, but not with what the API promises (a body that is not the JSON of
    /// the route, an unreadable body).
    Decode {
        /// What was wrong, e.g. `unexpected response: missing field ...`.
        message: String,
    },
    /// Nothing was sent: a bad setting on this side (a CA file without a certificate, ...).
    Local {
        /// What was wrong.
        message: String,
    },
}

impl ApiError {
    /// The HTTP status of an error answer.
    pub fn status(&self) -> Option<u16> {
        match self {
            ApiError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The API's `error.code` of an error answer.
    pub fn code(&self) -> Option<&str> {
        match self {
            ApiError::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    /// Whether it is worth trying again later: no answer (except a failed TLS handshake), a
    /// server error (5xx), or 429 (the token's request rate or live streams).
    pub fn is_transient(&self) -> bool {
        match self {
            ApiError::Transport { tls, .. } => !tls,
            // 429: a token over its request rate or its live streams; it passes.
            ApiError::Api { status, .. } => *status >= 500 || *status == 429,
            ApiError::Decode { .. } | ApiError::Local { .. } => false,
        }
    }

    fn transport(server: &str, e: ureq::Error) -> ApiError {
        let tls = matches!(e, ureq::Error::Rustls(_) | ureq::Error::Tls(_)) || e.to_string().contains("certificate");
        ApiError::Transport { server: server.to_string(), tls, message: e.to_string() }
    }

    /// The error of a non-success answer: its JSON `{"error": {"code", "message"}}` if it has one.
    fn from_answer(status: u16, body: &str) -> ApiError {
        let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
        let field = |k: &str, default: &str| v["error"][k].as_str().unwrap_or(default).to_string();
        ApiError::Api { status, code: field("code", "http_error"), message: field("message", "request failed") }
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApiError::Api { status, message, .. } => write!(f, "{message} (HTTP {status})"),
            ApiError::Transport { server, tls: true, message } => write!(f, "TLS with {server} failed: {message}"),
            ApiError::Transport { server, tls: false, message } => {
                write!(f, "cannot reach the server at {server}: {message}")
            }
            ApiError::Decode { message } | ApiError::Local { message } => f.write_str(message),
        }
    }
}

impl std::error::Error for ApiError {}

/// A client of one server: its base URL, an API token, the TLS roots. Cheap to clone (clones
/// share their connection pool).
#[derive(Clone)]
pub struct Client {
    base: String,
    token: Option<String>,
    tls: Option<ureq::tls::TlsConfig>,
    /// The certificates of [`Client::with_ca`] (DER), for the debug websocket's TLS.
    ca: Option<std::sync::Arc<Vec<Vec<u8>>>>,
    timeout: Option<Duration>,
    agent: ureq::Agent,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the token.
        f.debug_struct("Client").field("base", &self.base).field("token", &self.token.as_ref().map(|_| "…")).finish()
    }
}

impl Client {
    /// A client of the server at `base_url` (`http://HOST:PORT` or `https://...`; a trailing `/`
    /// is dropped), without a token, trusting the public web roots for https.
    pub fn new(base_url: impl Into<String>) -> Client {
        let base = base_url.into().trim_end_matches('/').to_string();
        let mut c =
            Client { base, token: None, tls: None, ca: None, timeout: None, agent: ureq::Agent::new_with_defaults() };
        c.rebuild();
        c
    }

    /// Sends `Authorization: Bearer TOKEN` with every request.
    pub fn with_token(mut self, token: impl Into<String>) -> Client {
        self.token = Some(token.into());
        self
    }

    /// Trusts only the certificates in `pem` (a CA, or a self-signed server certificate) for
    /// https. Fails if `pem` holds no certificate.
    pub fn with_ca(mut self, pem: &[u8]) -> Result<Client, ApiError> {
        let mut certs = Vec::new();
        for item in ureq::tls::parse_pem(pem) {
            match item {
                Ok(ureq::tls::PemItem::Certificate(c)) => certs.push(c),
                Ok(_) => {}
                Err(e) => return Err(ApiError::Local { message: e.to_string() }),
            }
        }
        if certs.is_empty() {
            return Err(ApiError::Local { message: "no PEM certificate in the file".into() });
        }
        self.ca = Some(std::sync::Arc::new(certs.iter().map(|c| c.der().to_vec()).collect()));
        let roots = ureq::tls::RootCerts::new_with_certs(&certs);
        self.tls = Some(ureq::tls::TlsConfig::builder().root_certs(roots).build());
        self.rebuild();
        Ok(self)
    }

    /// Gives up on a request (connecting, sending and reading the whole answer) after `timeout`.
    /// Without it requests wait as long as the connection lives; a live log stream
    /// ([`Client::stream_logs`]) is one request, so it ends after `timeout` too.
    pub fn with_timeout(mut self, timeout: Duration) -> Client {
        self.timeout = Some(timeout);
        self.rebuild();
        self
    }

    /// The server's base URL, without a trailing `/`.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// The API token, if one is set.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    fn rebuild(&mut self) {
        let mut cfg = ureq::Agent::config_builder().http_status_as_error(false).timeout_global(self.timeout);
        if let Some(tls) = &self.tls {
            cfg = cfg.tls_config(tls.clone());
        }
        self.agent = cfg.build().into();
    }

    // The server.

    /// `GET /v1/server`: the gateway's public key and the server's version.
    pub fn server_info(&self) -> Result<ServerInfo, ApiError> {
        self.get("/v1/server")
    }

    /// `GET /metrics`: the Prometheus text. Also works without a token against the separate
    /// metrics listener (`keel server run --metrics ADDR`).
    pub fn metrics(&self) -> Result<String, ApiError> {
        let resp = self.send(self.request(Method::GET, "/metrics"), ())?;
        text(resp)
    }

    // Devices.

    /// `GET /v1/devices`: the account's devices.
    pub fn devices(&self, q: &DevicesQuery) -> Result<Vec<DeviceJson>, ApiError> {
        self.get(&format!("/v1/devices{}", query(q)))
    }

    /// `GET /v1/devices/{id}`: one device, with its update.
    pub fn device(&self, id: &str) -> Result<DeviceJson, ApiError> {
        self.get(&format!("/v1/devices/{}", segment(id)))
    }

    /// `POST /v1/devices`: registers a device (admin scope).
    pub fn register_device(&self, d: &NewDevice) -> Result<DeviceJson, ApiError> {
        self.json(Method::POST, "/v1/devices", d)
    }

    /// `PATCH /v1/devices/{id}`: renames a device or replaces its tags.
    pub fn patch_device(&self, id: &str, patch: &DevicePatch) -> Result<DeviceJson, ApiError> {
        self.json(Method::PATCH, &format!("/v1/devices/{}", segment(id)), patch)
    }

    /// `DELETE /v1/devices/{id}`: deletes a device and its logs (admin scope).
    pub fn delete_device(&self, id: &str) -> Result<(), ApiError> {
        self.empty(Method::DELETE, &format!("/v1/devices/{}", segment(id)))
    }

    /// `GET /v1/devices/{id}/update-events`: the device's update history.
    pub fn update_events(&self, id: &str, q: &EventsQuery) -> Result<Vec<UpdateEventJson>, ApiError> {
        self.get(&format!("/v1/devices/{}/update-events{}", segment(id), query(q)))
    }

    // Crash dumps.

    /// `GET /v1/devices/{id}/crashes`: the device's crash dumps, newest first (at most 20).
    pub fn crashes(&self, device: &str) -> Result<Vec<CrashSummaryJson>, ApiError> {
        self.get(&format!("/v1/devices/{}/crashes", segment(device)))
    }

    /// `GET /v1/devices/{id}/crashes/{crash_id}`: one crash dump with its registers and stack.
    pub fn crash(&self, device: &str, crash_id: &str) -> Result<CrashJson, ApiError> {
        self.get(&format!("/v1/devices/{}/crashes/{}", segment(device), segment(crash_id)))
    }

    // Logs.

    /// `GET /v1/devices/{id}/logs`: one page of stored records, oldest first.
    pub fn logs(&self, id: &str, q: &LogQuery) -> Result<Vec<LogJson>, ApiError> {
        self.get(&format!("/v1/devices/{}/logs{}", segment(id), query(q)))
    }

    /// `GET /v1/devices/{id}/logs/stream`: the live stream (server-sent events), as an iterator
    /// of records that ends when the server ends the stream. An error opening it (a bad token,
    /// an unknown device) is returned at once; a broken connection is the iterator's last item.
    pub fn stream_logs(&self, id: &str, q: &StreamQuery) -> Result<LogStream, ApiError> {
        let path = format!("/v1/devices/{}/logs/stream{}", segment(id), query(q));
        let req = self.request(Method::GET, &path).header("accept", "text/event-stream");
        let resp = checked(self.send(req, ())?)?;
        Ok(LogStream {
            lines: BufReader::new(resp.into_body().into_reader()),
            server: self.base.clone(),
            data: String::new(),
            done: false,
        })
    }

    // API tokens.

    /// `GET /v1/tokens`: the account's tokens (never their secrets).
    pub fn tokens(&self) -> Result<Vec<TokenJson>, ApiError> {
        self.get("/v1/tokens")
    }

    /// `POST /v1/tokens`: a new token; its secret is in the answer only (admin scope).
    pub fn create_token(&self, t: &NewToken) -> Result<CreatedToken, ApiError> {
        self.json(Method::POST, "/v1/tokens", t)
    }

    /// `DELETE /v1/tokens/{id}`: revokes a token (admin scope).
    pub fn revoke_token(&self, id: &str) -> Result<(), ApiError> {
        self.empty(Method::DELETE, &format!("/v1/tokens/{}", segment(id)))
    }

    // Signer keys.

    /// `GET /v1/signer-keys`: the account's signer keys, revoked ones too.
    pub fn signer_keys(&self) -> Result<Vec<SignerKeyJson>, ApiError> {
        self.get("/v1/signer-keys")
    }

    /// `POST /v1/signer-keys`: registers a public key bundles may be signed with (admin scope).
    pub fn add_signer_key(&self, k: &NewSignerKey) -> Result<SignerKeyJson, ApiError> {
        self.json(Method::POST, "/v1/signer-keys", k)
    }

    /// `DELETE /v1/signer-keys/{id}`: revokes a signer key (admin scope).
    pub fn revoke_signer_key(&self, id: &str) -> Result<(), ApiError> {
        self.empty(Method::DELETE, &format!("/v1/signer-keys/{}", segment(id)))
    }

    // Bundles and deployments.

    /// `POST /v1/bundles`: uploads a bundle of `len` bytes read from `bundle` as they are sent
    /// (wrap the reader to watch the progress). The server checks its signature before it stores it.
    ///
    /// The request asks `Expect: 100-continue`, so a refusal before the body (a bad token, a
    /// length over the server's limit) comes back as the server's answer (401, 413) instead of a
    /// broken pipe halfway through the body.
    pub fn upload_bundle(&self, bundle: &mut dyn Read, len: u64, q: &UploadQuery) -> Result<BundleJson, ApiError> {
        let req = self
            .request(Method::POST, &format!("/v1/bundles{}", query(q)))
            .header("content-type", "application/octet-stream")
            .header("content-length", len)
            .header("expect", "100-continue");
        let resp = self.send(req, ureq::SendBody::from_reader(bundle))?;
        decode(resp)
    }

    /// `GET /v1/bundles`: the account's bundles, newest first.
    pub fn bundles(&self) -> Result<Vec<BundleJson>, ApiError> {
        self.get("/v1/bundles")
    }

    /// `GET /v1/bundles/{id}`: one bundle.
    pub fn bundle(&self, id: &str) -> Result<BundleJson, ApiError> {
        self.get(&format!("/v1/bundles/{}", segment(id)))
    }

    /// `POST /v1/deployments`: makes a bundle the target of a device or of every device with a tag.
    pub fn deploy(&self, d: &NewDeployment) -> Result<DeploymentJson, ApiError> {
        self.json(Method::POST, "/v1/deployments", d)
    }

    // Plumbing.

    /// A request to `path` (with its query), with the token.
    fn request(&self, method: Method, path: &str) -> ureq::http::request::Builder {
        let mut b = Request::builder().method(method).uri(format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            b = b.header("authorization", format!("Bearer {t}"));
        }
        b
    }

    fn send(&self, req: ureq::http::request::Builder, body: impl AsSendBody) -> Result<Response<Body>, ApiError> {
        let req = req.body(body).map_err(|e| ApiError::Local { message: format!("bad request: {e}") })?;
        self.agent.run(req).map_err(|e| ApiError::transport(&self.base, e))
    }

    /// A `GET` whose answer is JSON.
    fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ApiError> {
        decode(self.send(self.request(Method::GET, path), ())?)
    }

    /// A request with a JSON body whose answer is JSON.
    fn json<B: Serialize, T: DeserializeOwned>(&self, method: Method, path: &str, body: &B) -> Result<T, ApiError> {
        let bytes = serde_json::to_vec(body).map_err(|e| ApiError::Local { message: e.to_string() })?;
        let req = self.request(method, path).header("content-type", "application/json");
        decode(self.send(req, bytes)?)
    }

    /// A request without a body whose answer has none (`204 No Content`).
    fn empty(&self, method: Method, path: &str) -> Result<(), ApiError> {
        let resp = self.send(self.request(method, path), ())?;
        decode::<serde_json::Value>(resp).map(drop)
    }
}

/// The answer if its status is a success, else its error.
fn checked(mut resp: Response<Body>) -> Result<Response<Body>, ApiError> {
    if resp.status().is_success() {
        return Ok(resp);
    }
    let body = resp.body_mut().read_to_string().unwrap_or_default();
    Err(ApiError::from_answer(resp.status().as_u16(), &body))
}

/// The answer's body as text; an error status as an [`ApiError::Api`].
fn text(resp: Response<Body>) -> Result<String, ApiError> {
    checked(resp)?
        .body_mut()
        .read_to_string()
        .map_err(|e| ApiError::Decode { message: format!("bad response from the server: {e}") })
}

/// The answer's JSON body as `T` (an empty body as JSON `null`).
fn decode<T: DeserializeOwned>(resp: Response<Body>) -> Result<T, ApiError> {
    let body = text(resp)?;
    let body = if body.is_empty() { "null" } else { body.as_str() };
    serde_json::from_str(body).map_err(|e| ApiError::Decode { message: format!("unexpected response: {e}") })
}

/// `s` percent-encoded for a path segment or a query value (all but the unreserved characters).
fn encode(s: &str) -> String {
    use fmt::Write;
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            _ => {
                let _ = write!(out, "%{b:02X}");
            }
        }
    }
    out
}

fn segment(id: &str) -> String {
    encode(id)
}

/// The query string (`?k=v&...`, or nothing) of a query type: its fields as serde names them, the
/// absent (`None`) ones left out.
fn query<Q: Serialize>(q: &Q) -> String {
    let Ok(serde_json::Value::Object(fields)) = serde_json::to_value(q) else { return String::new() };
    let pairs: Vec<String> = fields
        .iter()
        .filter_map(|(k, v)| {
            let v = match v {
                serde_json::Value::Null => return None,
                serde_json::Value::String(s) => s.clone(),
                v => v.to_string(),
            };
            Some(format!("{}={}", encode(k), encode(&v)))
        })
        .collect();
    if pairs.is_empty() {
        String::new()
    } else {
        format!("?{}", pairs.join("&"))
    }
}

/// The largest event a [`LogStream`] accepts (a record's JSON is a few KiB at most): a server
/// (or whatever answers in its place) that sends an endless line or event ends the stream with
/// an error instead of filling the client's memory.
pub const MAX_EVENT_BYTES: usize = 64 * 1024;

/// A live log stream ([`Client::stream_logs`]): records as the server sends them. It ends when the
/// server ends the stream (a restart, the token revoked); a broken connection or an event that is
/// not a record is its last item, an `Err`.
pub struct LogStream {
    lines: BufReader<ureq::BodyReader<'static>>,
    server: String,
    data: String,
    done: bool,
}

impl Iterator for LogStream {
    type Item = Result<LogJson, ApiError>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut line = String::new();
        while !self.done {
            line.clear();
            // One byte more than allowed, so an over-long line is told from one that fits.
            match (&mut self.lines).take(MAX_EVENT_BYTES as u64 + 1).read_line(&mut line) {
                Ok(0) => self.done = true,
                Ok(_) if line.len() > MAX_EVENT_BYTES || self.data.len() + line.len() > MAX_EVENT_BYTES => {
                    self.done = true;
                    let message = format!("an event larger than {} KiB", MAX_EVENT_BYTES >> 10);
                    return Some(Err(ApiError::Decode { message }));
                }
                Ok(_) => {
                    let line = line.trim_end_matches(['\n', '\r']);
                    if let Some(d) = line.strip_prefix("data:") {
                        self.data.push_str(d.trim_start());
                    } else if line.is_empty() && !self.data.is_empty() {
                        let event = std::mem::take(&mut self.data);
                        let r = serde_json::from_str(&event)
                            .map_err(|e| ApiError::Decode { message: format!("bad event: {e}") });
                        self.done = r.is_err();
                        return Some(r);
                    }
                }
                Err(e) => {
                    self.done = true;
                    let message = e.to_string();
                    return Some(Err(ApiError::Transport { server: self.server.clone(), tls: false, message }));
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_use_the_serde_names_and_leave_out_absent_fields() {
        assert_eq!(query(&DevicesQuery::default()), "");
        assert_eq!(query(&DevicesQuery { tag: Some("a b&c=d/é".into()) }), "?tag=a%20b%26c%3Dd%2F%C3%A9");
        assert_eq!(query(&LogQuery { after: Some(7), limit: Some(1000) }), "?after=7&limit=1000");
        assert_eq!(query(&StreamQuery { after: None }), "");
        assert_eq!(query(&UploadQuery { force: true }), "?force=true");
        assert_eq!(segment("kd/../x y"), "kd%2F..%2Fx%20y");
    }

    #[test]
    fn error_answers_keep_the_api_code() {
        let e = ApiError::from_answer(404, r#"{"error":{"code":"not_found","message":"no device 'x'"}}"#);
        assert_eq!((e.status(), e.code()), (Some(404), Some("not_found")));
        assert_eq!(e.to_string(), "no device 'x' (HTTP 404)");
        assert!(!e.is_transient());
        // An answer without the API's error body (a proxy's page, an empty body).
        let e = ApiError::from_answer(502, "<html>bad gateway</html>");
        assert_eq!((e.code(), e.to_string().as_str()), (Some("http_error"), "request failed (HTTP 502)"));
        assert!(e.is_transient());
    }

    #[test]
    fn debug_hides_the_token() {
        let c = Client::new("http://127.0.0.1:7447/").with_token("keel_secret");
        assert_eq!(c.base_url(), "http://127.0.0.1:7447");
        assert!(!format!("{c:?}").contains("secret"));
    }

    #[test]
    fn a_ca_file_needs_a_certificate() {
        let e = Client::new("https://x").with_ca(b"not a pem").unwrap_err();
        assert!(matches!(e, ApiError::Local { .. }), "{e:?}");
    }
}
