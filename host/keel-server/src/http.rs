//! The HTTP JSON API (`/v1`). Every request carries `Authorization: Bearer <token>`; a token
//! belongs to one account and sees only that account's devices and logs (others answer 404,
//! exactly as if they did not exist).
//!
//! Routes are registered through `utoipa-axum`, so the OpenAPI document served at
//! `/v1/openapi.json` is generated from the same handlers the router serves: a route cannot
//! exist without being documented. Errors are always JSON: `{"error": {"code", "message"}}`.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use futures_util::Stream;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, watch};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{IntoParams, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::ota::{Bundle, NewBundle, SignerKey, UpdateEvent};
use crate::store::{Counters, Device, LogRecord, Store, TokenInfo};

/// Shared state of the HTTP handlers.
#[derive(Clone)]
pub struct AppState {
    /// The database.
    pub store: Store,
    /// The gateway's static public key (devices pin it in their factory data).
    pub server_public: [u8; 32],
    stop_tx: Arc<watch::Sender<bool>>,
    stop_rx: watch::Receiver<bool>,
}

impl AppState {
    /// State for a server with this store and gateway public key.
    pub fn new(store: Store, server_public: [u8; 32]) -> Self {
        let (stop_tx, stop_rx) = watch::channel(false);
        AppState { store, server_public, stop_tx: Arc::new(stop_tx), stop_rx }
    }

    /// Ends every open live stream (call before a graceful shutdown, which waits for them).
    pub fn stop_streams(&self) {
        self.stop_tx.send_replace(true);
    }
}

/// An API error: an HTTP status and a JSON body `{"error": {"code", "message"}}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

/// The body of every error response.
#[derive(Serialize, Deserialize, ToSchema, Debug)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// Error details.
#[derive(Serialize, Deserialize, ToSchema, Debug)]
pub struct ErrorDetail {
    /// Stable machine-readable code (`unauthorized`, `not_found`, `bad_request`, ...).
    pub code: String,
    /// What happened and what to do about it.
    pub message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into() }
    }

    fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        tracing::error!(error = %e, "database error");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error; see the server log")
    }
}

impl From<QueryRejection> for ApiError {
    fn from(e: QueryRejection) -> Self {
        ApiError::bad_request("bad_query", e.body_text())
    }
}

impl From<JsonRejection> for ApiError {
    fn from(e: JsonRejection) -> Self {
        ApiError::bad_request("bad_body", e.body_text())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody { error: ErrorDetail { code: self.code.into(), message: self.message } };
        (self.status, Json(body)).into_response()
    }
}

async fn account(state: &AppState, headers: &HeaderMap) -> Result<String, ApiError> {
    let unauthorized = || {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or invalid API token: send `Authorization: Bearer <token>` (`keel login` stores one; \
             `keel server init` prints the first)",
        )
    };
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(unauthorized)?;
    state.store.account_for_token(token.trim()).await?.ok_or_else(unauthorized)
}

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
    /// When the device reported it, µs since the epoch.
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

impl From<Device> for DeviceJson {
    fn from(d: Device) -> Self {
        let (app_name, app_version) = d.app.map_or((None, None), |(a, b)| (Some(a), Some(b)));
        let ev = |e: Option<(i64, String)>| e.map(|(at_us, text)| EventJson { at_us, text });
        DeviceJson {
            id: d.id,
            name: d.name,
            public_key: d.public_key,
            tags: d.tags,
            online: d.online,
            last_seen_us: d.last_seen,
            visor_version: d.visor_version,
            app_name,
            app_version,
            boot_count: d.boot_count,
            last_boot: ev(d.last_boot),
            last_crash: ev(d.last_crash),
            update: None,
        }
    }
}

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

impl From<LogRecord> for LogJson {
    fn from(r: LogRecord) -> Self {
        let source = match r.kind {
            0 => "app",
            1 => "visor",
            _ => "server",
        };
        LogJson {
            seq: r.seq,
            source: source.into(),
            level: r.level,
            device_time_us: r.device_time_us,
            received_at_us: r.received_at,
            text: r.text,
        }
    }
}

/// Query of the device list.
#[derive(Deserialize, IntoParams)]
pub struct DevicesQuery {
    /// Only devices with this tag.
    pub tag: Option<String>,
}

/// List the account's devices.
#[utoipa::path(get, path = "/v1/devices", tag = "devices", params(DevicesQuery),
    responses((status = 200, body = Vec<DeviceJson>), (status = 401, body = ErrorBody)))]
async fn list_devices(
    State(st): State<AppState>,
    headers: HeaderMap,
    q: Result<Query<DevicesQuery>, QueryRejection>,
) -> Result<Json<Vec<DeviceJson>>, ApiError> {
    let acct = account(&st, &headers).await?;
    let Query(q) = q?;
    let devices = st.store.devices(&acct).await?;
    Ok(Json(
        devices.into_iter().filter(|d| q.tag.as_ref().is_none_or(|t| d.tags.contains(t))).map(Into::into).collect(),
    ))
}

async fn own_device(st: &AppState, acct: &str, id: &str) -> Result<Device, ApiError> {
    match st.store.device(id).await? {
        Some(d) if d.account_id == acct => Ok(d),
        _ => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no device '{id}' in your account (`keel devices` lists them)"),
        )),
    }
}

/// Show one device.
#[utoipa::path(get, path = "/v1/devices/{id}", tag = "devices", params(("id" = String, Path, description = "Device id")),
    responses((status = 200, body = DeviceJson), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn show_device(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<DeviceJson>, ApiError> {
    let acct = account(&st, &headers).await?;
    let mut d: DeviceJson = own_device(&st, &acct, &id).await?.into();
    d.update = update_json(&st.store, &d.id).await?;
    Ok(Json(d))
}

async fn update_json(store: &Store, device_id: &str) -> Result<Option<UpdateJson>, ApiError> {
    let target = store.deployment(device_id).await?.map(|d| TargetJson {
        bundle: d.bundle.id,
        app: d.bundle.app_name,
        version: d.bundle.app_version,
        sequence: d.bundle.sequence,
        via: d.via,
        deployed_at_us: d.deployed_at,
    });
    let status = store.update_status(device_id).await?;
    if target.is_none() && status.is_none() {
        return Ok(None);
    }
    let s = status.as_ref();
    let (progress, total) = s.map_or((0, 0), |s| (s.progress, s.total));
    Ok(Some(UpdateJson {
        target,
        state: s.map(|s| s.state.clone()),
        sequence: s.map_or(0, |s| s.sequence),
        installed: s.map_or(0, |s| s.installed),
        progress,
        total,
        progress_pct: (total > 0).then(|| (progress.min(total) * 100 / total) as u8),
        reason: s.map_or(String::new(), |s| s.reason.clone()),
        updated_at_us: s.map(|s| s.updated_at),
    }))
}

/// Body of `PATCH /v1/devices/{id}`: the fields to change.
#[derive(Serialize, Deserialize, ToSchema, Debug, Default)]
pub struct DevicePatch {
    /// New name (1..100 characters).
    pub name: Option<String>,
    /// New tags, replacing the old ones (at most 32; each 1..64 of `a-z A-Z 0-9 - _ . :`).
    pub tags: Option<Vec<String>>,
}

fn valid_name(n: &str) -> bool {
    !n.is_empty() && n.chars().count() <= 100 && !n.chars().any(char::is_control)
}

fn valid_tag(t: &str) -> bool {
    (1..=64).contains(&t.len()) && t.bytes().all(|c| c.is_ascii_alphanumeric() || b"-_.:".contains(&c))
}

/// Rename a device or replace its tags.
#[utoipa::path(patch, path = "/v1/devices/{id}", tag = "devices", params(("id" = String, Path, description = "Device id")),
    request_body = DevicePatch,
    responses((status = 200, body = DeviceJson), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
async fn patch_device(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Json<DevicePatch>, JsonRejection>,
) -> Result<Json<DeviceJson>, ApiError> {
    let acct = account(&st, &headers).await?;
    let d = own_device(&st, &acct, &id).await?;
    let Json(p) = body?;
    if let Some(n) = &p.name {
        if !valid_name(n) {
            return Err(ApiError::bad_request("bad_name", "name must be 1..100 characters without control characters"));
        }
    }
    if let Some(tags) = &p.tags {
        if tags.len() > 32 || !tags.iter().all(|t| valid_tag(t)) {
            return Err(ApiError::bad_request(
                "bad_tags",
                "at most 32 tags, each 1..64 characters of a-z A-Z 0-9 - _ . :",
            ));
        }
    }
    if let Some(n) = &p.name {
        st.store.rename_device(&d.id, n).await?;
    }
    if let Some(tags) = &p.tags {
        let mut tags = tags.clone();
        tags.sort();
        tags.dedup();
        st.store.set_tags(&d.id, &tags).await?;
    }
    Ok(Json(own_device(&st, &acct, &id).await?.into()))
}

/// Delete a device with its logs; its key can no longer connect.
#[utoipa::path(delete, path = "/v1/devices/{id}", tag = "devices", params(("id" = String, Path, description = "Device id")),
    responses((status = 204), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn delete_device(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let acct = account(&st, &headers).await?;
    let d = own_device(&st, &acct, &id).await?;
    st.store.delete_device(&d.id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Query of the logs endpoint.
#[derive(Deserialize, IntoParams)]
pub struct LogQuery {
    /// Only records with a sequence number above this.
    pub after: Option<u64>,
    /// At most this many (default 100, max 1000).
    pub limit: Option<u32>,
}

/// Sequence numbers are stored as signed 64-bit integers; a cursor beyond that matches nothing.
fn beyond_range(after: Option<u64>) -> bool {
    after.is_some_and(|a| a > i64::MAX as u64)
}

/// Read a device's log records in sequence order, a page at a time.
#[utoipa::path(get, path = "/v1/devices/{id}/logs", tag = "logs",
    params(("id" = String, Path, description = "Device id"), LogQuery),
    responses((status = 200, body = Vec<LogJson>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
async fn device_logs(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    q: Result<Query<LogQuery>, QueryRejection>,
) -> Result<Json<Vec<LogJson>>, ApiError> {
    let acct = account(&st, &headers).await?;
    let d = own_device(&st, &acct, &id).await?;
    let Query(q) = q?;
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    if beyond_range(q.after) {
        return Ok(Json(Vec::new()));
    }
    Ok(Json(st.store.logs(&d.id, q.after, limit).await?.into_iter().map(Into::into).collect()))
}

/// Query of the live log stream.
#[derive(Deserialize, IntoParams)]
pub struct StreamQuery {
    /// Start after this sequence number (the `Last-Event-ID` header, sent by reconnecting SSE
    /// clients, takes precedence). Without either, the stream starts with records stored from now on.
    pub after: Option<u64>,
}

struct LiveLogs {
    store: Store,
    device: String,
    cursor: Option<u64>,
    pending: VecDeque<LogRecord>,
    notify: broadcast::Receiver<String>,
    stop: watch::Receiver<bool>,
}

impl LiveLogs {
    /// The next record, waiting for one if needed; `None` ends the stream (server stopping or
    /// database error: the client reconnects with `Last-Event-ID`).
    async fn next(&mut self) -> Option<LogRecord> {
        loop {
            if let Some(r) = self.pending.pop_front() {
                return Some(r);
            }
            if *self.stop.borrow() {
                return None;
            }
            let page = self.store.logs(&self.device, self.cursor, 500).await.ok()?;
            if let Some(last) = page.last() {
                self.cursor = Some(last.seq);
                self.pending.extend(page);
                continue;
            }
            // Nothing new: wait until this device's records are stored (a lagged receiver may
            // have missed it, so re-read then too) or the server stops.
            loop {
                tokio::select! {
                    n = self.notify.recv() => match n {
                        Ok(dev) if dev != self.device => continue,
                        Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => break,
                        Err(broadcast::error::RecvError::Closed) => return None,
                    },
                    _ = self.stop.changed() => return None,
                }
            }
        }
    }
}

/// Follow a device's log records live, as Server-Sent Events: one `log` event per record, with
/// the record's sequence number as event id and a `LogJson` as data. Comments keep the
/// connection alive every 15 s.
#[utoipa::path(get, path = "/v1/devices/{id}/logs/stream", tag = "logs",
    params(("id" = String, Path, description = "Device id"), StreamQuery,
        ("Last-Event-ID" = Option<u64>, Header, description = "Resume after this sequence number")),
    responses((status = 200, description = "`text/event-stream` of `log` events, data: LogJson", content_type = "text/event-stream"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn stream_logs(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    q: Result<Query<StreamQuery>, QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let acct = account(&st, &headers).await?;
    let d = own_device(&st, &acct, &id).await?;
    let Query(q) = q?;
    let last_event_id =
        match headers.get("last-event-id") {
            None => None,
            Some(v) => Some(v.to_str().ok().and_then(|s| s.trim().parse::<u64>().ok()).ok_or_else(|| {
                ApiError::bad_request("bad_last_event_id", "Last-Event-ID must be a sequence number")
            })?),
        };
    // Subscribe before the first read so nothing stored in between is missed.
    let notify = st.store.subscribe_logs();
    let cursor = match last_event_id.or(q.after) {
        Some(a) if beyond_range(Some(a)) => Some(i64::MAX as u64),
        Some(a) => Some(a),
        None => st.store.max_seq(&d.id).await?,
    };
    let live = LiveLogs {
        store: st.store.clone(),
        device: d.id,
        cursor,
        pending: VecDeque::new(),
        notify,
        stop: st.stop_rx.clone(),
    };
    let stream = futures_util::stream::unfold(live, |mut live| async move {
        let r = live.next().await?;
        let seq = r.seq;
        let data = serde_json::to_string(&LogJson::from(r)).unwrap_or_default();
        Some((Ok(Event::default().event("log").id(seq.to_string()).data(data)), live))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
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

fn parse_key(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let mut k = [0u8; 32];
    for (i, b) in k.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(k)
}

/// Register a device (its id and static public key) in the account. `keel device provision`
/// calls this and writes the matching factory data.
#[utoipa::path(post, path = "/v1/devices", tag = "devices", request_body = NewDevice,
    responses((status = 201, body = DeviceJson), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
async fn create_device(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<NewDevice>, JsonRejection>,
) -> Result<(StatusCode, Json<DeviceJson>), ApiError> {
    let acct = account(&st, &headers).await?;
    let Json(d) = body?;
    let key =
        parse_key(&d.public_key).ok_or_else(|| ApiError::bad_request("bad_key", "public_key must be 64 hex digits"))?;
    let id_ok = d.id.len() == 34 && d.id.starts_with("kd") && d.id[2..].bytes().all(|c| c.is_ascii_hexdigit());
    if !id_ok || !valid_name(&d.name) {
        return Err(ApiError::bad_request("bad_device", "id must be kd + 32 hex digits, name 1..100 chars"));
    }
    if d.tags.len() > 32 || !d.tags.iter().all(|t| valid_tag(t)) {
        return Err(ApiError::bad_request("bad_tags", "at most 32 tags, each 1..64 characters of a-z A-Z 0-9 - _ . :"));
    }
    if st.store.device(&d.id).await?.is_some() || st.store.device_by_key(&key).await?.is_some() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "exists",
            "a device with this id or key is already registered",
        ));
    }
    st.store.add_device(&acct, &d.id, &key, &d.name).await?;
    if !d.tags.is_empty() {
        st.store.set_tags(&d.id, &d.tags).await?;
    }
    Ok((StatusCode::CREATED, Json(own_device(&st, &acct, &d.id).await?.into())))
}

/// An API token as listed.
#[derive(Serialize, Deserialize, ToSchema, Debug)]
pub struct TokenJson {
    /// Public id (the first 12 hex digits of the token's SHA-256); used to revoke it.
    pub id: String,
    /// Name.
    pub name: String,
    /// Creation time, µs since the epoch.
    pub created_at_us: i64,
}

impl From<TokenInfo> for TokenJson {
    fn from(t: TokenInfo) -> Self {
        TokenJson { id: t.id, name: t.name, created_at_us: t.created_at }
    }
}

/// Body of `POST /v1/tokens`.
#[derive(Serialize, Deserialize, ToSchema, Debug)]
pub struct NewToken {
    /// Name (1..100 characters), e.g. what the token is for.
    pub name: String,
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
}

/// List the account's API tokens (never their secrets).
#[utoipa::path(get, path = "/v1/tokens", tag = "tokens",
    responses((status = 200, body = Vec<TokenJson>), (status = 401, body = ErrorBody)))]
async fn list_tokens(State(st): State<AppState>, headers: HeaderMap) -> Result<Json<Vec<TokenJson>>, ApiError> {
    let acct = account(&st, &headers).await?;
    Ok(Json(st.store.tokens(&acct).await?.into_iter().map(Into::into).collect()))
}

/// Create an API token for the account.
#[utoipa::path(post, path = "/v1/tokens", tag = "tokens", request_body = NewToken,
    responses((status = 201, body = CreatedToken), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn create_token(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<NewToken>, JsonRejection>,
) -> Result<(StatusCode, Json<CreatedToken>), ApiError> {
    let acct = account(&st, &headers).await?;
    let Json(t) = body?;
    if !valid_name(&t.name) {
        return Err(ApiError::bad_request("bad_name", "name must be 1..100 characters without control characters"));
    }
    let token = st.store.create_token(&acct, &t.name).await?;
    let id = crate::store::token_id(&token);
    Ok((StatusCode::CREATED, Json(CreatedToken { id, name: t.name, token })))
}

/// Revoke one of the account's API tokens (it may be the one making the request).
#[utoipa::path(delete, path = "/v1/tokens/{id}", tag = "tokens", params(("id" = String, Path, description = "Token id")),
    responses((status = 204), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn revoke_token(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let acct = account(&st, &headers).await?;
    if st.store.revoke_token(&acct, &id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no token '{id}' in your account (`keel tokens`)"),
        ))
    }
}

/// `GET /v1/server`.
#[derive(Serialize, Deserialize, ToSchema, Debug)]
pub struct ServerInfo {
    /// Hex of the gateway's static public key.
    pub public_key: String,
    /// Server version.
    pub version: String,
}

/// The server's version and gateway public key (devices pin it in their factory data).
#[utoipa::path(get, path = "/v1/server", tag = "server",
    responses((status = 200, body = ServerInfo), (status = 401, body = ErrorBody)))]
async fn server_info(State(st): State<AppState>, headers: HeaderMap) -> Result<Json<ServerInfo>, ApiError> {
    account(&st, &headers).await?;
    Ok(Json(ServerInfo { public_key: crate::hex(&st.server_public), version: env!("CARGO_PKG_VERSION").into() }))
}

/// Prometheus text exposition of the server's state. No authentication: bind the API to a
/// trusted network or put it behind a proxy.
#[utoipa::path(get, path = "/metrics", tag = "server", security(()),
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain")))]
async fn metrics(State(st): State<AppState>) -> Result<String, ApiError> {
    use std::fmt::Write;
    let (devices, online, logs) = st.store.counts().await?;
    let c: &Counters = st.store.counters();
    let get = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
        let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n");
    };
    metric("keel_devices", "gauge", "Registered devices.", devices as u64);
    metric("keel_devices_online", "gauge", "Devices connected to the gateway.", online as u64);
    metric("keel_log_records", "gauge", "Stored log records.", logs as u64);
    let counters: [(&str, &str, &std::sync::atomic::AtomicU64); 10] = [
        ("keel_gateway_connections_total", "TCP connections accepted by the gateway.", &c.connections),
        ("keel_gateway_handshakes_total", "Devices authenticated (handshake and Ready).", &c.handshakes),
        (
            "keel_gateway_rejected_total",
            "Connections refused or dropped for invalid input or an unknown key.",
            &c.rejected,
        ),
        ("keel_log_records_received_total", "Log records received from devices.", &c.log_records),
        (
            "keel_log_records_duplicate_total",
            "Received log records that were already stored (redelivery).",
            &c.log_duplicates,
        ),
        ("keel_log_records_dropped_total", "Log records devices dropped because their ring was full.", &c.log_dropped),
        ("keel_bundle_uploads_total", "Bundles accepted by POST /v1/bundles.", &c.bundle_uploads),
        ("keel_layer_bytes_served_total", "Update layer bytes sent to devices.", &c.layer_bytes_served),
        ("keel_update_offers_total", "Update offers sent to devices.", &c.offers_sent),
        (
            "keel_gateway_unknown_messages_total",
            "Device messages of a variant or event type this server does not know, skipped.",
            &c.unknown_messages,
        ),
    ];
    for (name, help, counter) in counters.into_iter().chain(c.limit_counters()) {
        metric(name, "counter", help, get(counter));
    }
    Ok(out)
}

/// Liveness probe.
#[utoipa::path(get, path = "/healthz", tag = "server", security(()), responses((status = 200, body = String)))]
async fn healthz() -> &'static str {
    "ok"
}

/// This OpenAPI document.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "server", security(()),
    responses((status = 200, description = "OpenAPI 3.1 document")))]
async fn openapi_json(State(doc): State<Arc<String>>) -> Response {
    ([("content-type", "application/json")], doc.as_str().to_owned()).into_response()
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Keel server API", description = "Devices, logs and tokens of a self-hosted Keel server. \
        Authenticate with `Authorization: Bearer <token>`."),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    tags((name = "devices"), (name = "logs"), (name = "tokens"), (name = "updates"), (name = "server"))
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

fn api() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(healthz))
        .routes(routes!(metrics))
        .routes(routes!(server_info))
        .routes(routes!(list_devices, create_device))
        .routes(routes!(show_device, patch_device, delete_device))
        .routes(routes!(device_logs))
        .routes(routes!(stream_logs))
        .routes(routes!(list_tokens, create_token))
        .routes(routes!(revoke_token))
        .routes(routes!(list_signer_keys, add_signer_key))
        .routes(routes!(revoke_signer_key))
        .merge(
            // Bundles are raw bytes up to 64 MiB; only this route takes bodies that large.
            OpenApiRouter::new().routes(routes!(list_bundles, upload_bundle)).layer(DefaultBodyLimit::max(MAX_UPLOAD)),
        )
        .routes(routes!(show_bundle))
        .routes(routes!(create_deployment))
        .routes(routes!(device_update_events))
}

/// The OpenAPI document of the API (also served at `/v1/openapi.json`).
pub fn openapi() -> utoipa::openapi::OpenApi {
    let (_, mut doc) = api().split_for_parts();
    add_openapi_route(&mut doc);
    doc
}

fn add_openapi_route(doc: &mut utoipa::openapi::OpenApi) {
    let (_, d) = OpenApiRouter::<Arc<String>>::new().routes(routes!(openapi_json)).split_for_parts();
    doc.merge(d);
}

/// The API router.
pub fn router(state: AppState) -> Router {
    let (router, mut doc) = api().split_for_parts();
    add_openapi_route(&mut doc);
    let json = Arc::new(doc.to_pretty_json().unwrap_or_default());
    let (doc_router, _) = OpenApiRouter::new().routes(routes!(openapi_json)).split_for_parts();
    router.with_state(state).merge(doc_router.with_state(json))
}

// ---------------------------------------------------------------------------------------------
// Updates: signer keys, bundles, deployments.

/// Largest request body of `POST /v1/bundles`: a maximal bundle plus headroom. Larger bodies
/// answer 413 before they are read.
pub const MAX_UPLOAD: usize = keel_bundle::MAX_BUNDLE_SIZE + (1 << 20);

fn not_found(what: &str, id: &str, hint: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no {what} '{id}' in your account ({hint})"))
}

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

impl From<SignerKey> for SignerKeyJson {
    fn from(k: SignerKey) -> Self {
        let kid = crate::unhex(&k.public_key)
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .map_or(String::new(), |pk| crate::hex(&keel_bundle::key_id(&pk)));
        SignerKeyJson {
            id: k.id,
            name: k.name,
            public_key: k.public_key,
            kid,
            created_at_us: k.created_at,
            revoked_at_us: k.revoked_at,
        }
    }
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

/// List the account's bundle signer keys, revoked ones included.
#[utoipa::path(get, path = "/v1/signer-keys", tag = "updates",
    responses((status = 200, body = Vec<SignerKeyJson>), (status = 401, body = ErrorBody)))]
async fn list_signer_keys(
    State(st): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Vec<SignerKeyJson>>, ApiError> {
    let acct = account(&st, &headers).await?;
    Ok(Json(st.store.signer_keys(&acct).await?.into_iter().map(Into::into).collect()))
}

/// Register a public key whose signatures the account's bundle uploads are verified against.
#[utoipa::path(post, path = "/v1/signer-keys", tag = "updates", request_body = NewSignerKey,
    responses((status = 201, body = SignerKeyJson), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
async fn add_signer_key(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<NewSignerKey>, JsonRejection>,
) -> Result<(StatusCode, Json<SignerKeyJson>), ApiError> {
    let acct = account(&st, &headers).await?;
    let Json(k) = body?;
    if !valid_name(&k.name) {
        return Err(ApiError::bad_request("bad_name", "name must be 1..100 characters without control characters"));
    }
    let key = keel_bundle::public_key_from_text(&k.public_key).map_err(|e| {
        ApiError::bad_request(
            "bad_key",
            format!("public_key: {e}; give the SPKI PEM `keel keys new` wrote to NAME.pub, or 64 hex digits"),
        )
    })?;
    match st.store.add_signer_key(&acct, &key, &k.name).await? {
        Some(k) => Ok((StatusCode::CREATED, Json(k.into()))),
        None => Err(ApiError::new(
            StatusCode::CONFLICT,
            "exists",
            "this key is already registered in your account (`keel keys list`); a revoked key cannot be added \
             again: make a new one with `keel keys new`",
        )),
    }
}

/// Revoke a signer key: bundles it signed stay stored and deployable, new uploads signed with it
/// are refused.
#[utoipa::path(delete, path = "/v1/signer-keys/{id}", tag = "updates",
    params(("id" = String, Path, description = "Signer key id")),
    responses((status = 204), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn revoke_signer_key(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let acct = account(&st, &headers).await?;
    match st.store.revoke_signer_key(&acct, &id).await? {
        Some(_) => Ok(StatusCode::NO_CONTENT),
        None => Err(not_found("signer key", &id, "`keel keys list`")),
    }
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

impl From<Bundle> for BundleJson {
    fn from(b: Bundle) -> Self {
        BundleJson {
            id: b.id,
            app: b.app_name,
            version: b.app_version,
            sequence: b.sequence,
            size: b.total_size,
            manifest_digest: b.manifest_digest,
            signer_key: b.signer_key_id,
            uploaded_at_us: b.uploaded_at,
            layers: b
                .layers
                .into_iter()
                .map(|l| LayerJson {
                    index: l.index,
                    component: l.component,
                    target: l.target,
                    size: l.size,
                    sha256: l.sha256,
                })
                .collect(),
        }
    }
}

/// The API error for a bundle that fails a check.
fn bundle_error(e: keel_bundle::Error) -> ApiError {
    use keel_bundle::Error as E;
    match e {
        E::TooLarge => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("{e} (the limit is {} MiB)", keel_bundle::MAX_BUNDLE_SIZE >> 20),
        ),
        E::UnknownSigner => ApiError::bad_request(
            "unknown_signer",
            "the bundle is signed by a key that is not registered (or is revoked) in your account: register its \
             public key with `keel keys add KEY.pub --name NAME`, or sign with a registered key",
        ),
        E::BadSignature => ApiError::bad_request(
            "bad_signature",
            "the bundle's signature does not verify with your account's signer keys: the bundle was altered or \
             signed with another key",
        ),
        E::LayerTooLarge | E::NoRegion => ApiError::bad_request(
            "layer_too_large",
            format!("{e}: a layer does not fit its flash region on the device (app slot: 2 MiB + 8 KiB)"),
        ),
        E::MissingField("suit-authentication-wrapper" | "COSE_Sign1") => ApiError::bad_request(
            "unsigned",
            format!("the bundle is not signed ({e}): build it with `keel bundle APP.elf --key KEY.key ...`"),
        ),
        other => ApiError::bad_request(
            "bad_bundle",
            format!("not a valid Keel bundle: {other} (build bundles with `keel bundle`)"),
        ),
    }
}

/// Upload a signed bundle (the raw bytes `keel bundle` writes, `application/octet-stream`).
///
/// Everything is checked before anything is stored: size (at most 64 MiB), structure, every
/// layer against the manifest's digests, the signature against the account's non-revoked signer
/// keys, every layer against its flash region, a non-empty app name and a sequence number of at
/// least 1. A second bundle with the same app name and sequence number is refused (409): devices
/// install only sequences above what they run, so two bundles cannot share one.
#[utoipa::path(post, path = "/v1/bundles", tag = "updates",
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "The signed bundle"),
    responses((status = 201, body = BundleJson), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 413, body = ErrorBody)))]
async fn upload_bundle(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<(StatusCode, Json<BundleJson>), ApiError> {
    // The token is checked before a byte of the body is read: an unauthenticated upload costs the
    // server its headers only (a `Bytes` extractor would read up to 64 MiB first).
    let acct = account(&st, &headers).await?;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("bundle larger than {} MiB", keel_bundle::MAX_BUNDLE_SIZE >> 20),
        )
    };
    let declared = headers.get("content-length").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_UPLOAD as u64) {
        return Err(too_large());
    }
    // The limit holds while reading, whatever the headers said.
    let bytes = axum::body::to_bytes(body, MAX_UPLOAD).await.map_err(|e| {
        if e.to_string().contains("length limit exceeded") {
            too_large()
        } else {
            ApiError::bad_request("bad_body", e.to_string())
        }
    })?;
    if bytes.len() > keel_bundle::MAX_BUNDLE_SIZE {
        return Err(bundle_error(keel_bundle::Error::TooLarge));
    }
    // Structure and layer digests (no signature yet).
    let split = keel_bundle::split_bundle(&bytes).map_err(bundle_error)?;
    // Signature against the account's keys, then regions, on the envelope the devices will get.
    let keys = st.store.active_signer_keys(&acct).await?;
    if keys.is_empty() {
        return Err(ApiError::bad_request(
            "no_signer_keys",
            "your account has no signer keys: register the public key that signs your bundles with \
             `keel keys add KEY.pub --name NAME` (`keel keys new --out KEY` makes a key pair)",
        ));
    }
    let publics: Vec<[u8; 32]> = keys.iter().map(|k| k.1).collect();
    let env = keel_bundle::Envelope::parse(&split.envelope).map_err(bundle_error)?;
    let signer = env.verify_signature(&publics).map_err(bundle_error)?;
    let manifest = keel_bundle::verify_envelope(&split.envelope, &publics, keel_bundle::reference_region_capacity)
        .map_err(bundle_error)?;
    let p = manifest.policies;
    if p.app_name.is_empty() {
        return Err(ApiError::bad_request(
            "bad_bundle",
            "the bundle names no app (policy app_name is empty): `keel bundle` takes the name from the ELF",
        ));
    }
    if manifest.sequence == 0 || manifest.sequence > i64::MAX as u64 {
        return Err(ApiError::bad_request(
            "bad_sequence",
            "the sequence number must be 1..=9223372036854775807 (0 means \"factory image\" on devices)",
        ));
    }
    if let Some(id) = st.store.bundle_with_sequence(&acct, p.app_name, manifest.sequence).await? {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "duplicate_sequence",
            format!(
                "bundle {id} of app '{}' already has sequence {}: build the new bundle with a higher --sequence",
                p.app_name, manifest.sequence
            ),
        ));
    }
    let layers =
        split.layers.iter().map(|l| (l.id.as_str(), l.target.as_str(), l.bytes.as_slice(), l.digest)).collect();
    let new = NewBundle {
        account_id: &acct,
        app_name: p.app_name,
        app_version: p.app_version,
        sequence: manifest.sequence,
        manifest_digest: env.manifest_digest(),
        envelope: &split.envelope,
        signer_key_id: &keys[signer].0,
        layers,
    };
    let b = st.store.insert_bundle(&new).await?;
    Counters::add(&st.store.counters().bundle_uploads, 1);
    tracing::info!(bundle = %b.id, app = %b.app_name, sequence = b.sequence, "bundle uploaded");
    Ok((StatusCode::CREATED, Json(b.into())))
}

/// List the account's bundles, newest first.
#[utoipa::path(get, path = "/v1/bundles", tag = "updates",
    responses((status = 200, body = Vec<BundleJson>), (status = 401, body = ErrorBody)))]
async fn list_bundles(State(st): State<AppState>, headers: HeaderMap) -> Result<Json<Vec<BundleJson>>, ApiError> {
    let acct = account(&st, &headers).await?;
    Ok(Json(st.store.bundles(&acct).await?.into_iter().map(Into::into).collect()))
}

async fn own_bundle(st: &AppState, acct: &str, id: &str) -> Result<Bundle, ApiError> {
    match st.store.bundle(id).await? {
        Some(b) if b.account_id == acct => Ok(b),
        _ => Err(not_found("bundle", id, "`keel apps list`")),
    }
}

/// Show one bundle.
#[utoipa::path(get, path = "/v1/bundles/{id}", tag = "updates", params(("id" = String, Path, description = "Bundle id")),
    responses((status = 200, body = BundleJson), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn show_bundle(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<BundleJson>, ApiError> {
    let acct = account(&st, &headers).await?;
    Ok(Json(own_bundle(&st, &acct, &id).await?.into()))
}

/// Body of `POST /v1/deployments`: a bundle and either one device or a tag.
#[derive(Serialize, Deserialize, ToSchema, Debug, Default)]
pub struct NewDeployment {
    /// Bundle id (`bn-...`) or `APP@VERSION` (the highest sequence of that app and version).
    pub bundle: String,
    /// One device id.
    pub device: Option<String>,
    /// Every device with this tag (as they are now; devices tagged later are not included).
    pub tag: Option<String>,
}

/// The result of a deployment.
#[derive(Serialize, Deserialize, ToSchema, Debug)]
pub struct DeploymentJson {
    /// The bundle now targeted.
    pub bundle: BundleJson,
    /// `device` or `tag:NAME`.
    pub via: String,
    /// The devices whose target it now is.
    pub devices: Vec<String>,
}

/// Make a bundle the target of one device or of every device with a tag. Connected devices get
/// the offer at once; others when they connect. A device's earlier target is replaced (a
/// download in progress of it is cancelled).
#[utoipa::path(post, path = "/v1/deployments", tag = "updates", request_body = NewDeployment,
    responses((status = 200, body = DeploymentJson), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
async fn create_deployment(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<NewDeployment>, JsonRejection>,
) -> Result<Json<DeploymentJson>, ApiError> {
    let acct = account(&st, &headers).await?;
    let Json(d) = body?;
    let bundle = match d.bundle.rsplit_once('@') {
        Some((app, version)) => st
            .store
            .bundle_by_version(&acct, app, version)
            .await?
            .ok_or_else(|| not_found("bundle", &d.bundle, "`keel apps list`"))?,
        None if d.bundle.is_empty() => {
            return Err(ApiError::bad_request("bad_bundle", "bundle: give a bundle id or APP@VERSION"))
        }
        None => own_bundle(&st, &acct, &d.bundle).await?,
    };
    let (devices, via) = match (&d.device, &d.tag) {
        (Some(dev), None) => (vec![own_device(&st, &acct, dev).await?.id], "device".to_string()),
        (None, Some(tag)) => {
            if !valid_tag(tag) {
                return Err(ApiError::bad_request("bad_tags", "tag: 1..64 characters of a-z A-Z 0-9 - _ . :"));
            }
            let ids: Vec<String> =
                st.store.devices(&acct).await?.into_iter().filter(|x| x.tags.contains(tag)).map(|x| x.id).collect();
            if ids.is_empty() {
                return Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    format!("no device in your account has tag '{tag}' (`keel devices --tag {tag}`)"),
                ));
            }
            (ids, format!("tag:{tag}"))
        }
        _ => return Err(ApiError::bad_request("bad_target", "give exactly one of `device` and `tag`")),
    };
    st.store.deploy(&bundle, &devices, &via).await?;
    tracing::info!(bundle = %bundle.id, %via, devices = devices.len(), "deployment");
    Ok(Json(DeploymentJson { bundle: bundle.into(), via, devices }))
}

/// One entry of a device's update history.
#[derive(Serialize, Deserialize, ToSchema, Debug, Clone, PartialEq, Eq)]
pub struct UpdateEventJson {
    /// When, µs since the epoch.
    pub at_us: i64,
    /// A state the device reported (`downloading`, `confirmed`, `refused`, `error`, ...) or a
    /// server step (`deployed`, `offered`, `cancelled`).
    pub state: String,
    /// The bundle sequence concerned.
    pub sequence: u64,
    /// What happened.
    pub text: String,
}

impl From<UpdateEvent> for UpdateEventJson {
    fn from(e: UpdateEvent) -> Self {
        UpdateEventJson { at_us: e.at, state: e.state, sequence: e.sequence, text: e.text }
    }
}

/// Query of the update events endpoint.
#[derive(Deserialize, IntoParams)]
pub struct EventsQuery {
    /// The most recent this many (default 100, max 1000).
    pub limit: Option<u32>,
}

/// A device's update history (deployments, offers and the states it reported), oldest first.
#[utoipa::path(get, path = "/v1/devices/{id}/update-events", tag = "updates",
    params(("id" = String, Path, description = "Device id"), EventsQuery),
    responses((status = 200, body = Vec<UpdateEventJson>), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn device_update_events(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    q: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Json<Vec<UpdateEventJson>>, ApiError> {
    let acct = account(&st, &headers).await?;
    let d = own_device(&st, &acct, &id).await?;
    let Query(q) = q?;
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    Ok(Json(st.store.update_events(&d.id, limit).await?.into_iter().map(Into::into).collect()))
}
