//! Device logs.

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// A log record as the API shows it.
#[derive(Serialize, Deserialize, ToSchema, Debug, PartialEq, Eq, Clone)]
pub struct LogJson {
    /// Sequence number (`boot << 32 | n`): increasing per device, never reused.
    pub seq: u64,
    /// `app` (an app log line), `visor` (a visor event) or `server` (a server note, e.g. `dropped N`).
    pub source: String,
    /// Level 0 (error) .. 3 (debug).
    pub level: u8,
    /// Device monotonic time, µs since its boot.
    pub device_time_us: u64,
    /// Server receive time, µs since the epoch.
    pub received_at_us: u64,
    /// The text.
    pub text: String,
}

/// Query of the logs endpoint.
#[derive(Serialize, Deserialize, IntoParams, Debug, Clone, Default)]
pub struct LogQuery {
    /// Only records with a sequence number above this.
    pub after: Option<u64>,
    /// At most this many (default 100, max 1000).
    pub limit: Option<u32>,
}

/// Query of the live log stream.
#[derive(Serialize, Deserialize, IntoParams, Debug, Clone, Default)]
pub struct StreamQuery {
    /// Start after this sequence number (the `Last-Event-ID` header, sent by reconnecting SSE
    /// clients, takes precedence). Without either, the stream starts with records stored from now on.
    pub after: Option<u64>,
}
