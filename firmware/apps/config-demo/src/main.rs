//! config-demo: fetches configuration values and a secret from the Keel server.
//!
//! Asks for the network, waits for the link and fetches, in one request, the account's config
//! value `greeting`, the device's config value `site` and the account's secret `api-key` (each
//! scope exactly as asked: a device key does not fall back to the account's). Logs
//!
//! * `config-demo: greeting=<v> site=<v> api-key-len=<n>` and `config-demo: PASS` when all three
//!   are found (the secret's value is never logged, only its length), or
//! * `config-demo: <key> not found` for each key that is missing (`config-demo: <key> <RESULT>`
//!   for another per-key result) and `config-demo: FAIL <n> of 3 keys missing`, or
//! * `config-demo: FAIL <why>` when the fetch itself failed,
//!
//! then idles, applying updates when the visor has one ready.
#![no_std]
#![no_main]

use keel_app::config::{self, SCOPE_ACCOUNT, SCOPE_DEVICE, STORE_CONFIG, STORE_SECRET};
use keel_app::msg::config_result;
use keel_app::{net, Text};

keel_app::entry!(main);

/// Tag of the app's network request.
const NET_TAG: u32 = 1;
/// How long to wait for the link.
const CONNECT_TIMEOUT_MS: u32 = 60_000;
/// Longest value kept (longer ones are logged truncated).
const VALUE_MAX: usize = 128;

/// The keys, in request order, with their names for logs.
const KEYS: [config::Key<'static>; 3] = [
    (SCOPE_ACCOUNT, STORE_CONFIG, "greeting"),
    (SCOPE_DEVICE, STORE_CONFIG, "site"),
    (SCOPE_ACCOUNT, STORE_SECRET, "api-key"),
];

/// One fetched value: the per-key result, its length and its first [`VALUE_MAX`] bytes.
#[derive(Clone, Copy)]
struct Value {
    result: Option<u8>,
    len: usize,
    bytes: [u8; VALUE_MAX],
}

impl Value {
    fn text(&self) -> Text<'_> {
        Text(&self.bytes[..self.len.min(VALUE_MAX)])
    }
}

fn main() -> ! {
    keel_app::info!("config-demo: started");
    run();
    let _ = net::release();
    idle()
}

fn run() {
    if let Err(e) = net::request(NET_TAG) {
        keel_app::error!("config-demo: FAIL net_request: {}", e.name());
        return;
    }
    if let Err(e) = net::wait_connected(CONNECT_TIMEOUT_MS) {
        let state = net::status().map_or("unknown", |s| net::state_name(s.state));
        keel_app::error!("config-demo: FAIL not connected: {} (state={})", e.name(), state);
        return;
    }
    keel_app::info!("config-demo: connected");
    let mut rx = [0u32; 512];
    let mut tx = [0u32; 128];
    let mut values = [Value { result: None, len: 0, bytes: [0; VALUE_MAX] }; 3];
    let r = config::fetch(&KEYS, &mut rx, &mut tx, |i, result, value| {
        if let Some(v) = values.get_mut(i) {
            let n = value.len().min(VALUE_MAX);
            v.result = Some(result);
            v.len = value.len();
            v.bytes[..n].copy_from_slice(&value[..n]);
        }
    });
    if let Err(e) = r {
        keel_app::error!("config-demo: FAIL {}", e);
        return;
    }
    let mut missing = 0;
    for (v, (_, _, key)) in values.iter().zip(KEYS) {
        match v.result {
            Some(config_result::OK) => {}
            Some(config_result::NOT_FOUND) => {
                keel_app::warn!("config-demo: {} not found", key);
                missing += 1;
            }
            Some(other) => {
                keel_app::warn!("config-demo: {} {}", key, config::result_name(other));
                missing += 1;
            }
            None => {
                keel_app::warn!("config-demo: {} no answer", key);
                missing += 1;
            }
        }
    }
    if missing > 0 {
        keel_app::error!("config-demo: FAIL {} of {} keys missing", missing, KEYS.len());
        return;
    }
    keel_app::info!(
        "config-demo: greeting={} site={} api-key-len={}",
        values[0].text(),
        values[1].text(),
        values[2].len
    );
    keel_app::info!("config-demo: PASS");
}

/// Sleeps forever, applying an update as soon as the visor says one is ready.
fn idle() -> ! {
    loop {
        if keel_app::wait(1_000_000) & keel_app::events::UPDATE_READY != 0 {
            let s = keel_app::update_apply();
            keel_app::warn!("config-demo: update_apply: {}", s.name());
        }
    }
}
