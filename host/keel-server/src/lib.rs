//! # Keel server
//!
//! The self-hosted side of Keel. Today: [`store`] (devices and logs in SQLite or PostgreSQL
//! through one set of portable migrations) and [`gateway`] (the devices' secure channel: Noise
//! over TCP, protocol and sessions from `keel-link`, shared with the visor and the simulator).
//! The HTTP API, accounts and tokens, the CLI and metrics build on these.

pub mod gateway;
pub mod http;
pub mod store;

/// Microseconds since the Unix epoch.
pub fn unix_us() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

/// Lowercase hex.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
