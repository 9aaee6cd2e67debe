//! Config values, secrets and the destination policy (see [`crate::settings`] and
//! [`crate::policy`]).
//!
//! Routes (a key may contain `/`: it is the rest of the path, sent as is or percent-encoded):
//! * `GET /v1/config`, `GET|PUT|DELETE /v1/config/{key}`: account-wide config values;
//!   `/v1/devices/{id}/config[/{key}]` the same for one device's values.
//! * `GET /v1/secrets`, `PUT|DELETE /v1/secrets/{key}` and `/v1/devices/{id}/secrets[/{key}]`:
//!   secrets, write-only (the list has keys, sizes and times; no route returns a value).
//! * `GET /v1/policy`, `POST /v1/policy/rules`, `DELETE /v1/policy/rules/{id}`,
//!   `POST /v1/policy/check`: the destination policy.
//!
//! Scopes: every read needs only a valid token (`read`); setting and deleting config values
//! needs `deploy` (like deploying, it changes what devices do); secrets and policy rules need
//! `admin` (credentials, and the limits of where the server connects for devices).

use base64::Engine as _;

use super::*;
use crate::policy::{self, Decision};
use crate::settings::{Entry, Refusal, StoreKind, StoredRule, MAX_KEYS_PER_STORE, MAX_VALUE_BYTES};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

impl From<Entry> for ConfigEntryJson {
    fn from(e: Entry) -> Self {
        let value = e.value.unwrap_or_default();
        ConfigEntryJson {
            key: e.key,
            scope: if e.device_id.is_some() { "device" } else { "account" }.into(),
            device_id: e.device_id,
            value: String::from_utf8(value.clone()).ok(),
            value_base64: B64.encode(&value),
            size: e.size,
            updated_at_us: e.updated_at,
        }
    }
}

impl From<Entry> for SecretJson {
    fn from(e: Entry) -> Self {
        SecretJson {
            key: e.key,
            scope: if e.device_id.is_some() { "device" } else { "account" }.into(),
            device_id: e.device_id,
            size: e.size,
            updated_at_us: e.updated_at,
        }
    }
}

fn rule_json(r: &policy::Rule, created_at: Option<i64>) -> PolicyRuleJson {
    PolicyRuleJson {
        id: r.id.clone(),
        action: r.action.as_str().into(),
        target: r.target.to_string(),
        port: r.port,
        scheme: r.scheme.map(|s| s.as_str().into()),
        created_at_us: created_at,
    }
}

impl From<StoredRule> for PolicyRuleJson {
    fn from(r: StoredRule) -> Self {
        rule_json(&r.rule, Some(r.created_at))
    }
}

fn bad_key(key: &str) -> ApiError {
    ApiError::bad_request(
        "bad_key",
        format!(
            "key '{key}' is not valid: a key is 1..=128 bytes of A-Z a-z 0-9 . _ / - and the parts between '/' are \
             not empty, '.' or '..' (e.g. mqtt/main/host)"
        ),
    )
}

fn refused(r: Refusal, store: StoreKind) -> ApiError {
    match r {
        Refusal::BadKey | Refusal::BadRule => ApiError::bad_request("bad_key", "invalid key"),
        Refusal::TooLarge => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "value_too_large",
            format!("a value is at most {MAX_VALUE_BYTES} bytes"),
        ),
        Refusal::TooMany => ApiError::new(
            StatusCode::CONFLICT,
            "too_many_keys",
            format!(
                "the account holds {MAX_KEYS_PER_STORE} {} keys (account-wide and device keys together), the most; \
                 delete some first",
                store.as_str()
            ),
        ),
        Refusal::NoSecretsKey => secrets_unavailable(),
    }
}

fn secrets_unavailable() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "secrets_unavailable",
        "this server has no secrets key: the operator sets KEEL_SECRETS_KEY (64 hex digits) or lets `keel server \
         run` create secrets.key in its data directory",
    )
}

/// The bytes of a [`SetValue`]: exactly one of its fields.
fn value_bytes(v: SetValue) -> Result<Vec<u8>, ApiError> {
    match (v.value, v.value_base64) {
        (Some(text), None) => Ok(text.into_bytes()),
        (None, Some(b)) => B64.decode(b.trim()).map_err(|e| {
            ApiError::bad_request("bad_value", format!("value_base64 is not standard padded base64: {e}"))
        }),
        _ => Err(ApiError::bad_request(
            "bad_value",
            "give exactly one of `value` (text) and `value_base64` (bytes, base64)",
        )),
    }
}

fn no_key(store: StoreKind, key: &str, device: Option<&str>) -> ApiError {
    let (what, list) = match (store, device) {
        (StoreKind::Config, None) => ("config key", "`keel config list`".to_string()),
        (StoreKind::Config, Some(d)) => ("config key", format!("`keel config list --device {d}`")),
        (StoreKind::Secret, None) => ("secret", "`keel secrets list`".to_string()),
        (StoreKind::Secret, Some(d)) => ("secret", format!("`keel secrets list --device {d}`")),
    };
    let scope = device.map_or("account-wide".to_string(), |d| format!("of device {d}"));
    ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no {what} '{key}' {scope} ({list} lists them)"))
}

/// Checks the device (when given) and returns the scope's device id.
async fn scope_device(st: &AppState, acct: &str, device: Option<&str>) -> Result<Option<String>, ApiError> {
    match device {
        None => Ok(None),
        Some(id) => Ok(Some(own_device(st, acct, id).await?.id)),
    }
}

async fn set(
    st: &AppState,
    auth: &Account,
    device: Option<&str>,
    store: StoreKind,
    key: &str,
    body: Result<Json<SetValue>, JsonRejection>,
) -> Result<Entry, ApiError> {
    auth.require(if store == StoreKind::Secret { Scope::Admin } else { Scope::Deploy })?;
    // A body that is too large or not JSON answers as on every route, before the path's checks.
    let Json(v) = body?;
    let device = scope_device(st, &auth.account, device).await?;
    if !crate::settings::valid_key(key) {
        return Err(bad_key(key));
    }
    let value = value_bytes(v)?;
    if store == StoreKind::Secret && !st.store.has_secrets_key() {
        return Err(secrets_unavailable());
    }
    let entry = st.store.set_setting(&auth.account, device.as_deref(), store, key, &value).await?;
    let entry = entry.map_err(|r| refused(r, store))?;
    tracing::info!(account = %auth.account, by = %auth.token_id, store = store.as_str(), key, device = ?device,
        size = value.len(), "value set");
    Ok(entry)
}

async fn get(st: &AppState, auth: &Account, device: Option<&str>, key: &str) -> Result<ConfigEntryJson, ApiError> {
    let device = scope_device(st, &auth.account, device).await?;
    if !crate::settings::valid_key(key) {
        return Err(bad_key(key));
    }
    match st.store.setting(&auth.account, device.as_deref(), StoreKind::Config, key).await? {
        Some(e) => Ok(e.into()),
        None => Err(no_key(StoreKind::Config, key, device.as_deref())),
    }
}

async fn delete(
    st: &AppState,
    auth: &Account,
    device: Option<&str>,
    store: StoreKind,
    key: &str,
) -> Result<StatusCode, ApiError> {
    auth.require(if store == StoreKind::Secret { Scope::Admin } else { Scope::Deploy })?;
    let device = scope_device(st, &auth.account, device).await?;
    if !crate::settings::valid_key(key) {
        return Err(bad_key(key));
    }
    if st.store.delete_setting(&auth.account, device.as_deref(), store, key).await? {
        tracing::info!(account = %auth.account, by = %auth.token_id, store = store.as_str(), key, device = ?device,
            "value deleted");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(no_key(store, key, device.as_deref()))
    }
}

async fn list(st: &AppState, auth: &Account, device: Option<&str>, store: StoreKind) -> Result<Vec<Entry>, ApiError> {
    let device = scope_device(st, &auth.account, device).await?;
    Ok(st.store.settings(&auth.account, device.as_deref(), store).await?)
}

/// List the account-wide config values, by key.
#[utoipa::path(get, path = "/v1/config", tag = "config",
    responses((status = 200, body = Vec<ConfigEntryJson>), (status = 401, body = ErrorBody)))]
pub(super) async fn list_config(
    State(st): State<AppState>,
    auth: Account,
) -> Result<Json<Vec<ConfigEntryJson>>, ApiError> {
    Ok(Json(list(&st, &auth, None, StoreKind::Config).await?.into_iter().map(Into::into).collect()))
}

/// Show one account-wide config value. The key is the rest of the path and may contain `/`.
#[utoipa::path(get, path = "/v1/config/{*key}", tag = "config",
    params(("key" = String, Path, description = "Key: 1..=128 bytes of A-Z a-z 0-9 . _ / -")),
    responses((status = 200, body = ConfigEntryJson), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub(super) async fn get_config(
    State(st): State<AppState>,
    auth: Account,
    Path(key): Path<String>,
) -> Result<Json<ConfigEntryJson>, ApiError> {
    Ok(Json(get(&st, &auth, None, &key).await?))
}

/// Set an account-wide config value (scope `deploy`): `{"value": "text"}` or
/// `{"value_base64": "..."}`, at most 4096 bytes; an account holds at most 512 config keys.
#[utoipa::path(put, path = "/v1/config/{*key}", tag = "config", request_body = SetValue,
    params(("key" = String, Path, description = "Key: 1..=128 bytes of A-Z a-z 0-9 . _ / -")),
    responses((status = 200, body = ConfigEntryJson), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody)))]
pub(super) async fn put_config(
    State(st): State<AppState>,
    auth: Account,
    Path(key): Path<String>,
    body: Result<Json<SetValue>, JsonRejection>,
) -> Result<Json<ConfigEntryJson>, ApiError> {
    Ok(Json(set(&st, &auth, None, StoreKind::Config, &key, body).await?.into()))
}

/// Delete an account-wide config value (scope `deploy`).
#[utoipa::path(delete, path = "/v1/config/{*key}", tag = "config",
    params(("key" = String, Path, description = "Key")),
    responses((status = 204), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn delete_config(
    State(st): State<AppState>,
    auth: Account,
    Path(key): Path<String>,
) -> Result<StatusCode, ApiError> {
    delete(&st, &auth, None, StoreKind::Config, &key).await
}

/// List one device's own config values, by key.
#[utoipa::path(get, path = "/v1/devices/{id}/config", tag = "config",
    params(("id" = String, Path, description = "Device id")),
    responses((status = 200, body = Vec<ConfigEntryJson>), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub(super) async fn list_device_config(
    State(st): State<AppState>,
    auth: Account,
    Path(id): Path<String>,
) -> Result<Json<Vec<ConfigEntryJson>>, ApiError> {
    Ok(Json(list(&st, &auth, Some(&id), StoreKind::Config).await?.into_iter().map(Into::into).collect()))
}

/// Show one of a device's config values.
#[utoipa::path(get, path = "/v1/devices/{id}/config/{*key}", tag = "config",
    params(("id" = String, Path, description = "Device id"), ("key" = String, Path, description = "Key")),
    responses((status = 200, body = ConfigEntryJson), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub(super) async fn get_device_config(
    State(st): State<AppState>,
    auth: Account,
    Path((id, key)): Path<(String, String)>,
) -> Result<Json<ConfigEntryJson>, ApiError> {
    Ok(Json(get(&st, &auth, Some(&id), &key).await?))
}

/// Set one of a device's config values (scope `deploy`); see `PUT /v1/config/{key}`.
#[utoipa::path(put, path = "/v1/devices/{id}/config/{*key}", tag = "config", request_body = SetValue,
    params(("id" = String, Path, description = "Device id"), ("key" = String, Path, description = "Key")),
    responses((status = 200, body = ConfigEntryJson), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 413, body = ErrorBody)))]
pub(super) async fn put_device_config(
    State(st): State<AppState>,
    auth: Account,
    Path((id, key)): Path<(String, String)>,
    body: Result<Json<SetValue>, JsonRejection>,
) -> Result<Json<ConfigEntryJson>, ApiError> {
    Ok(Json(set(&st, &auth, Some(&id), StoreKind::Config, &key, body).await?.into()))
}

/// Delete one of a device's config values (scope `deploy`).
#[utoipa::path(delete, path = "/v1/devices/{id}/config/{*key}", tag = "config",
    params(("id" = String, Path, description = "Device id"), ("key" = String, Path, description = "Key")),
    responses((status = 204), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn delete_device_config(
    State(st): State<AppState>,
    auth: Account,
    Path((id, key)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    delete(&st, &auth, Some(&id), StoreKind::Config, &key).await
}

/// List the account-wide secrets: keys, sizes and times, never values.
#[utoipa::path(get, path = "/v1/secrets", tag = "config",
    responses((status = 200, body = Vec<SecretJson>), (status = 401, body = ErrorBody)))]
pub(super) async fn list_secrets(State(st): State<AppState>, auth: Account) -> Result<Json<Vec<SecretJson>>, ApiError> {
    Ok(Json(list(&st, &auth, None, StoreKind::Secret).await?.into_iter().map(Into::into).collect()))
}

/// Set an account-wide secret (scope `admin`): stored encrypted, never returned by the API;
/// `{"value": "text"}` or `{"value_base64": "..."}`, at most 4096 bytes, 512 secrets per account.
#[utoipa::path(put, path = "/v1/secrets/{*key}", tag = "config", request_body = SetValue,
    params(("key" = String, Path, description = "Key: 1..=128 bytes of A-Z a-z 0-9 . _ / -")),
    responses((status = 200, body = SecretJson), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 503, body = ErrorBody)))]
pub(super) async fn put_secret(
    State(st): State<AppState>,
    auth: Account,
    Path(key): Path<String>,
    body: Result<Json<SetValue>, JsonRejection>,
) -> Result<Json<SecretJson>, ApiError> {
    Ok(Json(set(&st, &auth, None, StoreKind::Secret, &key, body).await?.into()))
}

/// Delete an account-wide secret (scope `admin`).
#[utoipa::path(delete, path = "/v1/secrets/{*key}", tag = "config",
    params(("key" = String, Path, description = "Key")),
    responses((status = 204), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn delete_secret(
    State(st): State<AppState>,
    auth: Account,
    Path(key): Path<String>,
) -> Result<StatusCode, ApiError> {
    delete(&st, &auth, None, StoreKind::Secret, &key).await
}

/// List one device's own secrets: keys, sizes and times, never values.
#[utoipa::path(get, path = "/v1/devices/{id}/secrets", tag = "config",
    params(("id" = String, Path, description = "Device id")),
    responses((status = 200, body = Vec<SecretJson>), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn list_device_secrets(
    State(st): State<AppState>,
    auth: Account,
    Path(id): Path<String>,
) -> Result<Json<Vec<SecretJson>>, ApiError> {
    Ok(Json(list(&st, &auth, Some(&id), StoreKind::Secret).await?.into_iter().map(Into::into).collect()))
}

/// Set one of a device's secrets (scope `admin`); see `PUT /v1/secrets/{key}`.
#[utoipa::path(put, path = "/v1/devices/{id}/secrets/{*key}", tag = "config", request_body = SetValue,
    params(("id" = String, Path, description = "Device id"), ("key" = String, Path, description = "Key")),
    responses((status = 200, body = SecretJson), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(super) async fn put_device_secret(
    State(st): State<AppState>,
    auth: Account,
    Path((id, key)): Path<(String, String)>,
    body: Result<Json<SetValue>, JsonRejection>,
) -> Result<Json<SecretJson>, ApiError> {
    Ok(Json(set(&st, &auth, Some(&id), StoreKind::Secret, &key, body).await?.into()))
}

/// Delete one of a device's secrets (scope `admin`).
#[utoipa::path(delete, path = "/v1/devices/{id}/secrets/{*key}", tag = "config",
    params(("id" = String, Path, description = "Device id"), ("key" = String, Path, description = "Key")),
    responses((status = 204), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn delete_device_secret(
    State(st): State<AppState>,
    auth: Account,
    Path((id, key)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    delete(&st, &auth, Some(&id), StoreKind::Secret, &key).await
}

/// What [`policy::check`] does when no rule matches, in words.
const DEFAULT_POLICY: &str = "deny private and special addresses (loopback, RFC 1918, link-local and cloud metadata, \
    CGNAT, multicast, reserved; IPv6 loopback, ULA, link-local, multicast; mapped/NAT64/6to4 forms by their IPv4 \
    address) and the unencrypted schemes http and mqtt; allow public addresses over https and mqtts";

/// Show the destination policy: the account's rules in evaluation order (the first that matches
/// decides), the operator's rules after them, and the default.
#[utoipa::path(get, path = "/v1/policy", tag = "policy",
    responses((status = 200, body = PolicyJson), (status = 401, body = ErrorBody)))]
pub(super) async fn show_policy(State(st): State<AppState>, auth: Account) -> Result<Json<PolicyJson>, ApiError> {
    let rules = st.store.policy_rules(&auth.account).await?;
    Ok(Json(PolicyJson {
        rules: rules.into_iter().map(Into::into).collect(),
        operator_rules: st.store.operator_rules().iter().map(|r| rule_json(r, None)).collect(),
        default: DEFAULT_POLICY.into(),
    }))
}

/// Add a destination rule (scope `admin`), after the others or, with `first`, before them. At
/// most 256 rules per account.
#[utoipa::path(post, path = "/v1/policy/rules", tag = "policy", request_body = NewPolicyRule,
    responses((status = 201, body = PolicyRuleJson), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(super) async fn add_policy_rule(
    State(st): State<AppState>,
    auth: Account,
    body: Result<Json<NewPolicyRule>, JsonRejection>,
) -> Result<(StatusCode, Json<PolicyRuleJson>), ApiError> {
    auth.require(Scope::Admin)?;
    let Json(r) = body?;
    let added =
        st.store.add_policy_rule(&auth.account, &r.action, &r.target, r.port, r.scheme.as_deref(), r.first).await?;
    match added {
        Ok(rule) => {
            tracing::info!(account = %auth.account, by = %auth.token_id, rule = %rule.rule.id,
                action = rule.rule.action.as_str(), target = %rule.rule.target, "policy rule added");
            Ok((StatusCode::CREATED, Json(rule.into())))
        }
        Err((Refusal::TooMany, msg)) => Err(ApiError::new(StatusCode::CONFLICT, "too_many_rules", msg)),
        Err((_, msg)) => Err(ApiError::bad_request("bad_rule", msg)),
    }
}

/// Remove a destination rule (scope `admin`).
#[utoipa::path(delete, path = "/v1/policy/rules/{id}", tag = "policy",
    params(("id" = String, Path, description = "Rule id")),
    responses((status = 204), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub(super) async fn remove_policy_rule(
    State(st): State<AppState>,
    auth: Account,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    auth.require(Scope::Admin)?;
    if st.store.remove_policy_rule(&auth.account, &id).await? {
        tracing::info!(account = %auth.account, by = %auth.token_id, rule = %id, "policy rule removed");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(not_found("policy rule", &id, "`keel policy list`"))
    }
}

/// What the policy decides for a connection (scheme, host name, port and the address it
/// resolves to), without connecting.
#[utoipa::path(post, path = "/v1/policy/check", tag = "policy", request_body = PolicyCheck,
    responses((status = 200, body = PolicyDecisionJson), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody)))]
pub(super) async fn check_policy(
    State(st): State<AppState>,
    auth: Account,
    body: Result<Json<PolicyCheck>, JsonRejection>,
) -> Result<Json<PolicyDecisionJson>, ApiError> {
    let Json(c) = body?;
    let ip: std::net::IpAddr =
        c.ip.trim()
            .parse()
            .map_err(|_| ApiError::bad_request("bad_ip", format!("'{}' is not an IPv4 or IPv6 address", c.ip)))?;
    let rules = st.store.destination_rules(&auth.account).await?;
    Ok(Json(match policy::check(&rules, &c.scheme, &c.host, c.port, ip) {
        Decision::Allow => PolicyDecisionJson { allowed: true, reason: None, rule: None },
        Decision::Deny { reason, rule } => PolicyDecisionJson { allowed: false, reason: Some(reason), rule },
    }))
}
