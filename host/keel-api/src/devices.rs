//! Devices: the registry.

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// A device as the API shows it.
#[derive(Serialize, Deserialize, ToSchema, Debug, PartialEq, Eq)]
pub struct DeviceJson {
    /// Device id (`kd` + 32 hex digits).
    pub id: String,
    /// Name.
    pub name: String,
    /// Hex of its X25519 static public key.
    pub public_key: String,
    /// Tags, sorted.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Connected to the gateway now.
    pub online: bool,
    /// Last seen, µs since the epoch.
    pub last_seen_us: Option<i64>,
    /// Visor version.
    pub visor_version: Option<String>,
    /// App name.
    pub app_name: Option<String>,
    /// App version.
    pub app_version: Option<String>,
    /// Persistent boot counter.
    pub boot_count: Option<i64>,
    /// The last boot the device reported.
    #[serde(default)]
    pub last_boot: Option<EventJson>,
    /// The last app crash the device reported.
    #[serde(default)]
    pub last_crash: Option<EventJson>,
    /// Its update: target bundle and the state it reported (`GET /v1/devices/{id}` only;
    /// absent when it has neither a target nor a report).
    #[serde(default)]
    pub update: Option<UpdateJson>,
}

/// A device's update: what it should run and what it reported.
#[derive(Serialize, Deserialize, ToSchema, Debug, PartialEq, Eq, Clone)]
pub struct UpdateJson {
    /// The bundle deployed to it, if any.
    pub target: Option<TargetJson>,
    /// Last reported state: `idle`, `downloading`, `installing`, `trial`, `confirmed`,
    /// `rolled_back`, `refused` or `error`; absent before the first report.
    pub state: Option<String>,
    /// The bundle sequence the report is about (0: none).
    pub sequence: u64,
    /// Sequence number of the confirmed install (0: the factory image or none).
    pub installed: u64,
    /// Bytes downloaded of `total`.
    pub progress: u64,
    /// Total bytes to download.
    pub total: u64,
    /// Download progress in percent, when `total` is known.
    pub progress_pct: Option<u8>,
    /// Why (for `refused`, `rolled_back`, `error`).
    pub reason: String,
    /// When the device first reported this status, µs since the epoch (a report repeating it
    /// exactly, as after a reconnect, does not move it).
    pub updated_at_us: Option<i64>,
}

/// A device's target bundle.
#[derive(Serialize, Deserialize, ToSchema, Debug, PartialEq, Eq, Clone)]
pub struct TargetJson {
    /// Bundle id.
    pub bundle: String,
    /// App name.
    pub app: String,
    /// App version.
    pub version: String,
    /// Manifest sequence number.
    pub sequence: u64,
    /// How the device was targeted: `device` or `tag:NAME`.
    pub via: String,
    /// When, µs since the epoch.
    pub deployed_at_us: i64,
}

/// A remembered device event.
#[derive(Serialize, Deserialize, ToSchema, Debug, PartialEq, Eq)]
pub struct EventJson {
    /// When the server received it, µs since the epoch.
    pub at_us: i64,
    /// The visor's event text (for a crash: fault kind and registers).
    pub text: String,
}

/// Query of the device list.
#[derive(Serialize, Deserialize, IntoParams, Debug, Clone, Default)]
pub struct DevicesQuery {
    /// Only devices with this tag.
    pub tag: Option<String>,
}

/// Body of `PATCH /v1/devices/{id}`: the fields to change.
#[derive(Serialize, Deserialize, ToSchema, Debug, Default)]
pub struct DevicePatch {
    /// New name (1..100 characters).
    pub name: Option<String>,
    /// New tags, replacing the old ones (at most 32; each 1..64 of `a-z A-Z 0-9 - _ . :`).
    pub tags: Option<Vec<String>>,
}

/// Body of `POST /v1/devices`.
#[derive(Serialize, Deserialize, ToSchema, Debug)]
pub struct NewDevice {
    /// Device id (`kd` + 32 hex digits).
    pub id: String,
    /// Name.
    pub name: String,
    /// Hex of the device's X25519 static public key (64 hex digits).
    pub public_key: String,
    /// Tags.
    #[serde(default)]
    pub tags: Vec<String>,
}
