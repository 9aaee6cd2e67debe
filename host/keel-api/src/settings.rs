//! Config values, secrets and the destination policy (app connectivity).
//!
//! Keys are 1..=128 bytes of `A-Z a-z 0-9 . _ / -` whose `/`-separated segments are not empty,
//! `.` or `..`; values are at most 4096 bytes; an account holds at most 512 keys per store.
//! Secrets are write-only: the API lists their keys, never their values.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Body of `PUT /v1/config/{key}` and `PUT /v1/secrets/{key}` (and their device forms): exactly
/// one of `value` (UTF-8 text) and `value_base64` (any bytes, standard base64).
#[derive(Serialize, Deserialize, ToSchema, Debug, Clone, Default, PartialEq, Eq)]
pub struct SetValue {
    /// The value as text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// The value's bytes, base64 (standard alphabet, padded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_base64: Option<String>,
}

impl SetValue {
    /// A text value.
    pub fn text(v: impl Into<String>) -> SetValue {
        SetValue { value: Some(v.into()), value_base64: None }
    }
}

/// A config value.
#[derive(Serialize, Deserialize, ToSchema, Debug, Clone, PartialEq, Eq)]
pub struct ConfigEntryJson {
    /// The key.
    pub key: String,
    /// `account` (account-wide) or `device`.
    pub scope: String,
    /// The device, for a device-scoped value.
    #[serde(default)]
    pub device_id: Option<String>,
    /// The value as text (absent if it is not valid UTF-8).
    #[serde(default)]
    pub value: Option<String>,
    /// The value's bytes, base64.
    pub value_base64: String,
    /// Its length in bytes.
    pub size: u64,
    /// When it was last set, µs since the epoch.
    pub updated_at_us: i64,
}

/// A secret as listed: never its value.
#[derive(Serialize, Deserialize, ToSchema, Debug, Clone, PartialEq, Eq)]
pub struct SecretJson {
    /// The key.
    pub key: String,
    /// `account` (account-wide) or `device`.
    pub scope: String,
    /// The device, for a device-scoped secret.
    #[serde(default)]
    pub device_id: Option<String>,
    /// Its length in bytes.
    pub size: u64,
    /// When it was last set, µs since the epoch.
    pub updated_at_us: i64,
}

/// A rule of the destination policy.
#[derive(Serialize, Deserialize, ToSchema, Debug, Clone, PartialEq, Eq)]
pub struct PolicyRuleJson {
    /// Rule id (`pr-` + 12 hex digits; `operator-N` for the operator's rules).
    pub id: String,
    /// `allow` or `deny`.
    pub action: String,
    /// A host name (`api.example.com`), `*.` and a domain (`*.example.com`: names under it), or
    /// a network (`10.0.0.0/8`, `2001:db8::/32`), normalized.
    pub target: String,
    /// Only this port (absent: any).
    #[serde(default)]
    pub port: Option<u16>,
    /// Only this scheme: `http`, `https`, `mqtt` or `mqtts` (absent: any).
    #[serde(default)]
    pub scheme: Option<String>,
    /// When it was added, µs since the epoch (absent for the operator's rules).
    #[serde(default)]
    pub created_at_us: Option<i64>,
}

/// Body of `POST /v1/policy/rules`.
#[derive(Serialize, Deserialize, ToSchema, Debug, Clone, PartialEq, Eq)]
pub struct NewPolicyRule {
    /// `allow` or `deny`.
    pub action: String,
    /// A host name, `*.DOMAIN`, or a network (`ADDRESS/PREFIX`; a bare address is one address).
    pub target: String,
    /// Only this port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Only this scheme (`http`, `https`, `mqtt`, `mqtts`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    /// Put it before every other rule (default: after them). The first matching rule decides.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub first: bool,
}

/// `GET /v1/policy`: the account's rules in evaluation order, then the operator's.
#[derive(Serialize, Deserialize, ToSchema, Debug, Clone, PartialEq, Eq)]
pub struct PolicyJson {
    /// The account's rules, first match wins.
    pub rules: Vec<PolicyRuleJson>,
    /// Allow rules the operator appends for every account (`KEEL_POLICY_ALLOW`).
    pub operator_rules: Vec<PolicyRuleJson>,
    /// What happens when no rule matches.
    pub default: String,
}

/// Body of `POST /v1/policy/check`: a connection to judge.
#[derive(Serialize, Deserialize, ToSchema, Debug, Clone, PartialEq, Eq)]
pub struct PolicyCheck {
    /// `http`, `https`, `mqtt` or `mqtts`.
    pub scheme: String,
    /// The host name asked for (or an address literal).
    pub host: String,
    /// The port.
    pub port: u16,
    /// The address the connection would use (the host's resolved address).
    pub ip: String,
}

/// The answer of `POST /v1/policy/check`.
#[derive(Serialize, Deserialize, ToSchema, Debug, Clone, PartialEq, Eq)]
pub struct PolicyDecisionJson {
    /// Whether the server would connect.
    pub allowed: bool,
    /// Why not.
    #[serde(default)]
    pub reason: Option<String>,
    /// The rule that denied it (absent: the default did).
    #[serde(default)]
    pub rule: Option<String>,
}
