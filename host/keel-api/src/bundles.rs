//! Update bundles.

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// Query of `POST /v1/bundles`.
#[derive(Serialize, Deserialize, IntoParams, Debug, Clone, Default)]
pub struct UploadQuery {
    /// Accept a sequence more than 10 years ahead of the clock and of the account's bundles.
    #[serde(default)]
    pub force: bool,
}

/// A layer of a bundle.
#[derive(Serialize, Deserialize, ToSchema, Debug, Clone, PartialEq, Eq)]
pub struct LayerJson {
    /// Component index in manifest order.
    pub index: u8,
    /// Component id, e.g. `app`.
    pub component: String,
    /// Target: `app-slot`, `visor-slot` or `app-data`.
    pub target: String,
    /// Size in bytes.
    pub size: u32,
    /// SHA-256, hex (its key in the object store: `layers/<sha256>`).
    pub sha256: String,
}

/// A stored bundle.
#[derive(Serialize, Deserialize, ToSchema, Debug, Clone, PartialEq, Eq)]
pub struct BundleJson {
    /// Bundle id (`bn-...`).
    pub id: String,
    /// App name (from the signed manifest).
    pub app: String,
    /// App version (from the signed manifest).
    pub version: String,
    /// Manifest sequence number: devices install only bundles above what they run.
    pub sequence: u64,
    /// Total layer bytes.
    pub size: u64,
    /// SHA-256 of the manifest, hex.
    pub manifest_digest: String,
    /// The signer key that verified it.
    pub signer_key: String,
    /// Upload time, µs since the epoch.
    pub uploaded_at_us: i64,
    /// Layers in manifest order.
    pub layers: Vec<LayerJson>,
}
