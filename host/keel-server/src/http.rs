//! The HTTP JSON API (`/v1`). Every request carries `Authorization: Bearer <token>`; a token
//! belongs to one account and sees only that account's devices and logs (others answer 404,
//! exactly as if they did not exist).

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::store::{Device, LogRecord, Store};

/// Shared state of the HTTP handlers.
#[derive(Clone)]
pub struct AppState {
    /// The database.
    pub store: Store,
    /// The gateway's static public key (devices pin it in their factory data).
    pub server_public: [u8; 32],
}

/// An API error: an HTTP status and a JSON body `{"error": {"code", "message"}}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into() }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        tracing::error!(error = %e, "database error");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error; see the server log")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": { "code": self.code, "message": self.message } });
        (self.status, Json(body)).into_response()
    }
}

async fn account(state: &AppState, headers: &HeaderMap) -> Result<String, ApiError> {
    let unauthorized = || {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or invalid API token: send `Authorization: Bearer <token>` (see `keel login`)",
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
#[derive(Serialize, Deserialize, Debug, PartialEq, Eq)]
pub struct DeviceJson {
    /// Device id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Hex of its public key.
    pub public_key: String,
    /// Connected now.
    pub online: bool,
    /// Last seen, µs since the epoch.
    pub last_seen_us: Option<i64>,
    /// Visor version.
    pub visor_version: Option<String>,
    /// App name.
    pub app_name: Option<String>,
    /// App version.
    pub app_version: Option<String>,
    /// Boot counter.
    pub boot_count: Option<i64>,
}

impl From<Device> for DeviceJson {
    fn from(d: Device) -> Self {
        let (app_name, app_version) = d.app.map_or((None, None), |(a, b)| (Some(a), Some(b)));
        DeviceJson {
            id: d.id,
            name: d.name,
            public_key: d.public_key,
            online: d.online,
            last_seen_us: d.last_seen,
            visor_version: d.visor_version,
            app_name,
            app_version,
            boot_count: d.boot_count,
        }
    }
}

/// A log record as the API shows it.
#[derive(Serialize, Deserialize, Debug, PartialEq, Eq)]
pub struct LogJson {
    /// Sequence number.
    pub seq: u64,
    /// `app`, `visor` or `server`.
    pub source: String,
    /// Level 0 (error) .. 3 (debug).
    pub level: u8,
    /// Device monotonic time.
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

async fn list_devices(State(st): State<AppState>, headers: HeaderMap) -> Result<Json<Vec<DeviceJson>>, ApiError> {
    let acct = account(&st, &headers).await?;
    Ok(Json(st.store.devices(&acct).await?.into_iter().map(Into::into).collect()))
}

async fn own_device(st: &AppState, acct: &str, id: &str) -> Result<Device, ApiError> {
    match st.store.device(id).await? {
        Some(d) if d.account_id == acct => Ok(d),
        _ => Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no device '{id}' in your account"))),
    }
}

async fn show_device(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<DeviceJson>, ApiError> {
    let acct = account(&st, &headers).await?;
    Ok(Json(own_device(&st, &acct, &id).await?.into()))
}

/// Query of the logs endpoint.
#[derive(Deserialize)]
pub struct LogQuery {
    /// Only records with a sequence number above this.
    pub after: Option<u64>,
    /// At most this many (default 100, max 1000).
    pub limit: Option<u32>,
}

async fn device_logs(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<LogQuery>,
) -> Result<Json<Vec<LogJson>>, ApiError> {
    let acct = account(&st, &headers).await?;
    let d = own_device(&st, &acct, &id).await?;
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    // Sequence numbers are stored as signed 64-bit integers; anything larger matches nothing.
    if q.after.is_some_and(|a| a > i64::MAX as u64) {
        return Ok(Json(Vec::new()));
    }
    Ok(Json(st.store.logs(&d.id, q.after, limit).await?.into_iter().map(Into::into).collect()))
}

/// Body of `POST /v1/devices`.
#[derive(Serialize, Deserialize, Debug)]
pub struct NewDevice {
    /// Device id (`kd` + 32 hex digits).
    pub id: String,
    /// Name.
    pub name: String,
    /// Hex of the device's X25519 static public key (64 hex digits).
    pub public_key: String,
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

async fn create_device(
    State(st): State<AppState>,
    headers: HeaderMap,
    Json(d): Json<NewDevice>,
) -> Result<(StatusCode, Json<DeviceJson>), ApiError> {
    let acct = account(&st, &headers).await?;
    let key = parse_key(&d.public_key)
        .ok_or_else(|| ApiError::new(StatusCode::BAD_REQUEST, "bad_key", "public_key must be 64 hex digits"))?;
    let id_ok = d.id.len() == 34 && d.id.starts_with("kd") && d.id[2..].bytes().all(|c| c.is_ascii_hexdigit());
    if !id_ok || d.name.is_empty() || d.name.len() > 100 {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_device",
            "id must be kd + 32 hex digits, name 1..100 chars",
        ));
    }
    if st.store.device(&d.id).await?.is_some() || st.store.device_by_key(&key).await?.is_some() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "exists",
            "a device with this id or key is already registered",
        ));
    }
    st.store.add_device(&acct, &d.id, &key, &d.name).await?;
    Ok((StatusCode::CREATED, Json(own_device(&st, &acct, &d.id).await?.into())))
}

/// `GET /v1/server`.
#[derive(Serialize, Deserialize, Debug)]
pub struct ServerInfo {
    /// Hex of the gateway's static public key.
    pub public_key: String,
    /// Server version.
    pub version: String,
}

async fn server_info(State(st): State<AppState>, headers: HeaderMap) -> Result<Json<ServerInfo>, ApiError> {
    account(&st, &headers).await?;
    Ok(Json(ServerInfo { public_key: crate::hex(&st.server_public), version: env!("CARGO_PKG_VERSION").into() }))
}

/// Prometheus text exposition of the server's state (no authentication: bind the API to a
/// trusted network or put it behind a proxy).
async fn metrics(State(st): State<AppState>) -> Result<String, ApiError> {
    let (devices, online, logs) = st.store.counts().await?;
    Ok(format!(
        "# HELP keel_devices Registered devices.\n# TYPE keel_devices gauge\nkeel_devices {devices}\n\
         # HELP keel_devices_online Devices connected to the gateway.\n# TYPE keel_devices_online gauge\n\
         keel_devices_online {online}\n\
         # HELP keel_log_records Stored log records.\n# TYPE keel_log_records gauge\nkeel_log_records {logs}\n"
    ))
}

async fn healthz() -> &'static str {
    "ok"
}

/// The API router.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/v1/server", get(server_info))
        .route("/v1/devices", get(list_devices).post(create_device))
        .route("/v1/devices/{id}", get(show_device))
        .route("/v1/devices/{id}/logs", get(device_logs))
        .with_state(state)
}
