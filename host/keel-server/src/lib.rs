//! # Keel server
//!
//! The self-hosted side of Keel, in layers:
//! - [`node`] assembles a server: listeners ([`listen`], [`tls`]), the gateway, the API, log
//!   retention and a graceful shutdown; the `keel` CLI is a parser around it.
//! - Front ends: [`http`] (the JSON API: one router per resource, an `Account` extractor that
//!   checks the token and its scope before any body is read) and [`gateway`] (devices' Noise
//!   connections, an async shell around the sans-IO [`connection`], bounded by [`limits`]).
//! - [`debug_relay`]: remote debugging, opaque end-to-end encrypted frames between a debugger's
//!   websocket and a device's gateway connection (forwarded, bounded and counted, never read).
//! - [`domain`]: the rules with no transport in them (bundle acceptance, deployment resolution);
//!   offer reconciliation is sans-IO in [`connection`].
//! - [`proxy`]: outbound engines for device apps (HTTP requests and managed MQTT sessions the
//!   server performs on a device's behalf, behind a destination policy).
//! - [`crash`]: crash dumps for post-mortem debugging, assembled from the visor's crash events.
//! - [`settings`]: config values and secrets (encrypted at rest) that apps fetch through their
//!   device's link; [`policy`]: which destinations the server may connect to for a device.
//! - State: [`store`] and [`ota`] (SQLite or PostgreSQL through one set of portable migrations,
//!   layers in an object store), [`bus`] (live state: per-device mailboxes and presence leases
//!   behind traits, in-process today), [`backup`].

pub mod backup;
pub mod bus;
pub mod channels;
pub mod connection;
pub mod crash;
pub mod debug_relay;
pub mod domain;
pub mod framed;
pub mod gateway;
pub mod http;
pub mod limits;
pub mod listen;
pub mod node;
pub mod ota;
pub mod policy;
pub mod proxy;
pub mod settings;
pub mod store;
pub mod tls;

/// Microseconds since the Unix epoch.
pub fn unix_us() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

/// Lowercase hex.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Parses lowercase or uppercase hex into bytes; `None` if it is not even-length hex.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 || !s.bytes().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}
