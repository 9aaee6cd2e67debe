//! The server itself.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `GET /v1/server`.
#[derive(Serialize, Deserialize, ToSchema, Debug)]
pub struct ServerInfo {
    /// Hex of the gateway's static public key.
    pub public_key: String,
    /// Server version.
    pub version: String,
}
