//! The client's config, secrets and destination policy methods.

use ureq::http::Method;

use super::{encode, segment, ApiError, Client};
use crate::{
    ConfigEntryJson, NewPolicyRule, PolicyCheck, PolicyDecisionJson, PolicyJson, PolicyRuleJson, SecretJson, SetValue,
};

/// The path of a store's values: account-wide, or of one device.
fn base(store: &str, device: Option<&str>) -> String {
    match device {
        None => format!("/v1/{store}"),
        Some(d) => format!("/v1/devices/{}/{store}", segment(d)),
    }
}

/// A key in a path: each `/`-separated segment percent-encoded, the `/` kept (the server takes
/// the rest of the path as the key).
fn key_path(key: &str) -> String {
    key.split('/').map(encode).collect::<Vec<_>>().join("/")
}

impl Client {
    /// `PUT /v1/config/{key}` (or `/v1/devices/{id}/config/{key}` with `device`): sets a config
    /// value (deploy scope).
    pub fn config_set(&self, key: &str, value: &SetValue, device: Option<&str>) -> Result<ConfigEntryJson, ApiError> {
        self.json(Method::PUT, &format!("{}/{}", base("config", device), key_path(key)), value)
    }

    /// `GET /v1/config/{key}` (or the device's): one config value.
    pub fn config_get(&self, key: &str, device: Option<&str>) -> Result<ConfigEntryJson, ApiError> {
        self.get(&format!("{}/{}", base("config", device), key_path(key)))
    }

    /// `GET /v1/config` (or `/v1/devices/{id}/config`): the config values of that scope, by key.
    pub fn config_list(&self, device: Option<&str>) -> Result<Vec<ConfigEntryJson>, ApiError> {
        self.get(&base("config", device))
    }

    /// `DELETE /v1/config/{key}` (or the device's): deletes a config value (deploy scope).
    pub fn config_delete(&self, key: &str, device: Option<&str>) -> Result<(), ApiError> {
        self.empty(Method::DELETE, &format!("{}/{}", base("config", device), key_path(key)))
    }

    /// `PUT /v1/secrets/{key}` (or the device's): sets a secret (admin scope). The answer says
    /// its key and size, never its value.
    pub fn secret_set(&self, key: &str, value: &SetValue, device: Option<&str>) -> Result<SecretJson, ApiError> {
        self.json(Method::PUT, &format!("{}/{}", base("secrets", device), key_path(key)), value)
    }

    /// `GET /v1/secrets` (or `/v1/devices/{id}/secrets`): the secrets of that scope, names only.
    pub fn secret_list(&self, device: Option<&str>) -> Result<Vec<SecretJson>, ApiError> {
        self.get(&base("secrets", device))
    }

    /// `DELETE /v1/secrets/{key}` (or the device's): deletes a secret (admin scope).
    pub fn secret_delete(&self, key: &str, device: Option<&str>) -> Result<(), ApiError> {
        self.empty(Method::DELETE, &format!("{}/{}", base("secrets", device), key_path(key)))
    }

    /// `GET /v1/policy`: the account's destination rules, the operator's, and the default.
    pub fn policy(&self) -> Result<PolicyJson, ApiError> {
        self.get("/v1/policy")
    }

    /// `POST /v1/policy/rules`: adds a destination rule (admin scope).
    pub fn policy_add(&self, rule: &NewPolicyRule) -> Result<PolicyRuleJson, ApiError> {
        self.json(Method::POST, "/v1/policy/rules", rule)
    }

    /// `DELETE /v1/policy/rules/{id}`: removes a destination rule (admin scope).
    pub fn policy_remove(&self, id: &str) -> Result<(), ApiError> {
        self.empty(Method::DELETE, &format!("/v1/policy/rules/{}", segment(id)))
    }

    /// `POST /v1/policy/check`: what the policy decides for a connection.
    pub fn policy_check(&self, c: &PolicyCheck) -> Result<PolicyDecisionJson, ApiError> {
        self.json(Method::POST, "/v1/policy/check", c)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn keys_keep_their_slashes() {
        assert_eq!(super::key_path("mqtt/main/host"), "mqtt/main/host");
        assert_eq!(super::key_path("a b/c?d"), "a%20b/c%3Fd");
        assert_eq!(super::base("config", Some("kd 1")), "/v1/devices/kd%201/config");
    }
}
