//! API tokens.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// An API token as listed.
#[derive(Serialize, Deserialize, ToSchema, Debug)]
pub struct TokenJson {
    /// Public id (the first 12 hex digits of the token's SHA-256); used to revoke it.
    pub id: String,
    /// Name.
    pub name: String,
    /// Creation time, µs since the epoch.
    pub created_at_us: i64,
    /// `read`, `deploy` or `admin`.
    #[serde(default)]
    pub scope: String,
    /// When it stops working, µs since the epoch (absent: never).
    #[serde(default)]
    pub expires_at_us: Option<i64>,
    /// When it was last used (to the minute), µs since the epoch.
    #[serde(default)]
    pub last_used_at_us: Option<i64>,
}

/// Body of `POST /v1/tokens`.
#[derive(Serialize, Deserialize, ToSchema, Debug)]
pub struct NewToken {
    /// Name (1..100 characters), e.g. what the token is for.
    pub name: String,
    /// `read` (the default), `deploy` or `admin`; at most the creating token's own scope.
    #[serde(default)]
    pub scope: Option<String>,
    /// Lifetime in seconds (absent: no expiry). A token that expires cannot create one that
    /// outlives it.
    #[serde(default)]
    pub expires_in_s: Option<u64>,
}

/// A newly created token: the only time the secret is shown.
#[derive(Serialize, Deserialize, ToSchema, Debug)]
pub struct CreatedToken {
    /// Public id.
    pub id: String,
    /// Name.
    pub name: String,
    /// The secret token (`keel_` + 64 hex digits). Only its hash is stored.
    pub token: String,
    /// `read`, `deploy` or `admin`.
    #[serde(default)]
    pub scope: String,
    /// When it stops working, µs since the epoch (absent: never).
    #[serde(default)]
    pub expires_at_us: Option<i64>,
}
