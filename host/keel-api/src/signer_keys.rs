//! Signer keys (the public keys bundles are verified with).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A signer key as the API shows it.
#[derive(Serialize, Deserialize, ToSchema, Debug, Clone)]
pub struct SignerKeyJson {
    /// Id (`sk-...`), used to revoke it.
    pub id: String,
    /// Name.
    pub name: String,
    /// Ed25519 public key, 64 hex digits.
    pub public_key: String,
    /// Key id as bundles carry it (first 8 bytes of SHA-256 of the key, hex).
    pub kid: String,
    /// When it was added, µs since the epoch.
    pub created_at_us: i64,
    /// When it was revoked; revoked keys verify no new uploads.
    pub revoked_at_us: Option<i64>,
}

/// Body of `POST /v1/signer-keys`.
#[derive(Serialize, Deserialize, ToSchema, Debug)]
pub struct NewSignerKey {
    /// Name (1..100 characters), e.g. who or what signs with it.
    pub name: String,
    /// The Ed25519 public key: SPKI PEM (`-----BEGIN PUBLIC KEY-----`, what `keel keys new`
    /// writes to NAME.pub) or 64 hex digits.
    pub public_key: String,
}
