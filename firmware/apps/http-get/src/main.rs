//! http-get: an HTTP(S) GET through the Keel server's proxy.
//!
//! Asks for the network and waits for the link, reads an optional URL override from the
//! configuration (`http-get/url`, the device's value first, then the account's), GETs the URL
//! (default [`DEFAULT_URL`]) and logs
//!
//! * `http-get: status=<n> body=<first 64 bytes>` and `http-get: PASS` for a 2xx answer, or
//! * `http-get: FAIL <why>` (the result code and its name, the remote status, or the SDK's
//!   error).
//!
//! Then it GETs [`DENIED_URL`], which the account's policy denies in the tests, and logs
//! `http-get: denied result=<code>` (the result code of the answer, 7 = DENIED), and idles,
//! applying updates when the visor has one ready.
#![no_std]
#![no_main]

use keel_app::config::{SCOPE_ACCOUNT, SCOPE_DEVICE, STORE_CONFIG};
use keel_app::msg::{config_result, http_result};
use keel_app::{config, http, net, Error, Text};

keel_app::entry!(main);

/// The URL fetched unless the configuration says otherwise.
const DEFAULT_URL: &str = "https://10.0.2.2:8443/hello";
/// A URL the tests' policy denies.
const DENIED_URL: &str = "https://10.0.2.2:9/denied";
/// The configuration key that overrides [`DEFAULT_URL`].
const URL_KEY: &str = "http-get/url";
/// Tag of the app's network request (in its notification records).
const NET_TAG: u32 = 1;
/// How long to wait for the link.
const CONNECT_TIMEOUT_MS: u32 = 60_000;
/// The remote server's time to answer (the SDK waits a little longer for the Keel server).
const REQUEST_TIMEOUT_MS: u32 = 10_000;
/// Bytes of the body logged.
const BODY_LOGGED: usize = 64;

fn main() -> ! {
    keel_app::info!("http-get: started");
    run();
    let _ = net::release();
    idle()
}

fn run() {
    if let Err(e) = net::request(NET_TAG) {
        keel_app::error!("http-get: FAIL net_request: {}", e.name());
        return;
    }
    if let Err(e) = net::wait_connected(CONNECT_TIMEOUT_MS) {
        let state = net::status().map_or("unknown", |s| net::state_name(s.state));
        keel_app::error!("http-get: FAIL not connected: {} (state={})", e.name(), state);
        return;
    }
    keel_app::info!("http-get: connected");
    // Buffers of the channels: 4 KiB for the response, 1 KiB for the request.
    let mut rx = [0u32; 1024];
    let mut tx = [0u32; 256];

    let mut url_buf = [0u8; 256];
    let url = configured_url(&mut url_buf, &mut rx, &mut tx).unwrap_or(DEFAULT_URL);
    keel_app::info!("http-get: GET {}", url);
    match http::get(url, REQUEST_TIMEOUT_MS, &mut rx, &mut tx) {
        Ok(r) if r.result() != http_result::OK => keel_app::error!(
            "http-get: FAIL result={} ({}) reason={}",
            r.result(),
            http::result_name(r.result()),
            Text(truncate(r.body(), BODY_LOGGED))
        ),
        Ok(r) => {
            let body = truncate(r.body(), BODY_LOGGED);
            keel_app::info!("http-get: status={} body={}", r.status(), Text(trim_end(body)));
            if r.is_success() {
                keel_app::info!("http-get: PASS");
            } else {
                keel_app::error!("http-get: FAIL status={}", r.status());
            }
        }
        Err(e) => fail(e),
    }

    keel_app::info!("http-get: GET {} (denied by policy)", DENIED_URL);
    match http::get(DENIED_URL, REQUEST_TIMEOUT_MS, &mut rx, &mut tx) {
        Ok(r) => keel_app::info!(
            "http-get: denied result={} ({}) status={} reason={}",
            r.result(),
            http::result_name(r.result()),
            r.status(),
            Text(truncate(r.body(), BODY_LOGGED))
        ),
        // The server refusing the whole channel with an error message carries a result code too.
        Err(Error::Server(code)) => {
            keel_app::info!("http-get: denied result={} ({})", code, http::result_name(code))
        }
        Err(e) => keel_app::error!("http-get: FAIL denied request: {}", e),
    };
}

fn fail(e: Error) {
    match e {
        Error::Server(code) => keel_app::error!("http-get: FAIL server error {} ({})", code, http::result_name(code)),
        e => keel_app::error!("http-get: FAIL {}", e),
    }
}

/// The URL from the configuration (`http-get/url`, the device's, else the account's), if set
/// and usable; `None` (and a log line) otherwise.
fn configured_url<'u>(buf: &'u mut [u8], rx: &mut [u32], tx: &mut [u32]) -> Option<&'u str> {
    let keys = [(SCOPE_DEVICE, STORE_CONFIG, URL_KEY), (SCOPE_ACCOUNT, STORE_CONFIG, URL_KEY)];
    let mut found: Option<usize> = None;
    let r = config::fetch(&keys, rx, tx, |_, result, value| {
        if found.is_none() && result == config_result::OK && !value.is_empty() && value.len() <= buf.len() {
            buf[..value.len()].copy_from_slice(value);
            found = Some(value.len());
        }
    });
    if let Err(e) = r {
        keel_app::warn!("http-get: no URL from the configuration ({}); using the default", e);
        return None;
    }
    let len = found?;
    match core::str::from_utf8(&buf[..len]) {
        Ok(s) => Some(s),
        Err(_) => {
            keel_app::warn!("http-get: {} is not text; using the default", URL_KEY);
            None
        }
    }
}

fn truncate(b: &[u8], n: usize) -> &[u8] {
    &b[..b.len().min(n)]
}

fn trim_end(mut b: &[u8]) -> &[u8] {
    while let [rest @ .., last] = b {
        if !last.is_ascii_whitespace() {
            break;
        }
        b = rest;
    }
    b
}

/// Sleeps forever, applying an update as soon as the visor says one is ready.
fn idle() -> ! {
    loop {
        if keel_app::wait(1_000_000) & keel_app::events::UPDATE_READY != 0 {
            // Returns only if nothing was ready (a lost record looked like one).
            let s = keel_app::update_apply();
            keel_app::warn!("http-get: update_apply: {}", s.name());
        }
    }
}
