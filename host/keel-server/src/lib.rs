//! # Keel server
//!
//! The self-hosted side of Keel. Today: [`store`] (devices and logs in SQLite or PostgreSQL
//! through one set of portable migrations) and [`gateway`] (the devices' secure channel: Noise
//! over TCP, protocol and sessions from `keel-link`, shared with the visor and the simulator).
//! The HTTP API, accounts and tokens, the CLI and metrics build on these. [`ota`] holds signer
//! keys, bundles (layers content-addressed in an object store), deployments and the update state
//! devices report; the gateway offers and serves updates from it.

pub mod backup;
pub mod bus;
pub mod connection;
pub mod framed;
pub mod gateway;
pub mod http;
pub mod limits;
pub mod listen;
pub mod node;
pub mod ota;
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
