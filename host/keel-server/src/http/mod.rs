//! The HTTP JSON API (`/v1`). Every request carries `Authorization: Bearer <token>`; a token
//! belongs to one account and sees only that account's devices and logs (others answer 404,
//! exactly as if they did not exist). Registering a device whose id or key is taken answers the
//! same 409 `device_unavailable` whichever account holds it.
//!
//! Tokens have a scope (`read` < `deploy` < `admin`, see [`Scope`]) and may expire. The
//! [`Account`] extractor checks the token before any body extractor runs, so no request body
//! is read for an unauthenticated request; JSON bodies are limited to [`MAX_JSON`], bundle
//! uploads to [`MAX_UPLOAD`] (streamed). Live log streams re-check their token and device and end
//! when either goes away.
//!
//! Routes are registered through `utoipa-axum`, so the OpenAPI document served at
//! `/v1/openapi.json` is generated from the same handlers the router serves: a route cannot
//! exist without being documented. Errors are always JSON: `{"error": {"code", "message"}}`
//! ([`ApiError`], the one error type of every handler).
//!
//! One module per resource: `devices`, `logs`, `crashes` (post-mortem crash dumps), `debug` (the remote debugging websocket),
//! `tokens`, `signer_keys`, `bundles`, `deployments`, `settings` (config values, secrets and the
//! destination policy) and `server` (version, metrics, health, the
//! document); this module holds the state, the
//! error type, authentication ([`Account`], [`Scope`]) and the router.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use futures_util::Stream;
use tokio::sync::{broadcast, watch};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::ota::{Bundle, SignerKey, UpdateEvent};
use crate::store::{Counters, Device, LogRecord, Store, TokenInfo};

mod bundles;
mod crashes;
mod debug;
mod deployments;
mod devices;
mod logs;
mod server;
mod settings;
mod signer_keys;
mod tokens;

pub use bundles::*;
pub use crashes::*;
pub use debug::{BURST as DEBUG_BURST, IDLE as DEBUG_IDLE, PING as DEBUG_PING, RATE as DEBUG_RATE};
pub use deployments::*;
pub use devices::*;
pub use keel_api::*;
pub use logs::*;
pub use server::*;
pub use signer_keys::*;
pub use tokens::*;

/// Shared state of the HTTP handlers.
#[derive(Clone)]
pub struct AppState {
    /// The database.
    pub store: Store,
    /// The gateway's static public key (devices pin it in their factory data).
    pub server_public: [u8; 32],
    stop_tx: Arc<watch::Sender<bool>>,
    stop_rx: watch::Receiver<bool>,
    /// Bumped when a token is revoked or a device deleted: live streams re-check at once.
    auth_tx: Arc<watch::Sender<u64>>,
    /// Held from an upload's sequence checks to its insert (one upload at a time per node).
    uploads: Arc<tokio::sync::Mutex<()>>,
    /// Open live streams per token id (see [`MAX_STREAMS_PER_TOKEN`]).
    streams: Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>,
    /// Requests per token (see [`ApiRate`]).
    rate: ApiRate,
    /// Per token id: requests left in its bucket and when it was last refilled.
    buckets: Arc<std::sync::Mutex<std::collections::HashMap<String, (f64, std::time::Instant)>>>,
}

/// How many API requests one token may make: a token bucket per token, refilled at `per_second`
/// up to `burst`. `per_second` 0: no limit.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ApiRate {
    /// Requests per second, sustained. Default 200.
    pub per_second: f64,
    /// Requests at once after a quiet time. Default 2 000.
    pub burst: f64,
}

impl Default for ApiRate {
    fn default() -> Self {
        ApiRate { per_second: 200.0, burst: 2000.0 }
    }
}

/// Live log streams one token may hold open at once on this node: each holds a connection and a
/// task, and the API's connection slots are shared by every client.
pub const MAX_STREAMS_PER_TOKEN: usize = 16;

impl AppState {
    /// State for a server with this store and gateway public key.
    pub fn new(store: Store, server_public: [u8; 32]) -> Self {
        let (stop_tx, stop_rx) = watch::channel(false);
        let (auth_tx, _) = watch::channel(0);
        AppState {
            store,
            server_public,
            stop_tx: Arc::new(stop_tx),
            stop_rx,
            auth_tx: Arc::new(auth_tx),
            uploads: Default::default(),
            streams: Default::default(),
            rate: ApiRate::default(),
            buckets: Default::default(),
        }
    }

    /// The same state with another request rate per token.
    pub fn with_api_rate(mut self, rate: ApiRate) -> Self {
        self.rate = rate;
        self
    }

    /// The same state with every remote debugging frame the relay forwards appended to the file
    /// at `path` (a diagnostic; see [`crate::debug_relay`]). The capture belongs to the store's
    /// relay, so it applies to the gateway sharing this store too.
    pub fn with_debug_capture(self, path: &std::path::Path) -> std::io::Result<Self> {
        self.store.debug_relay().capture_to(Some(path))?;
        Ok(self)
    }

    /// Takes one request from `token_id`'s bucket; `Err(seconds)` to wait if it is empty.
    fn take_request(&self, token_id: &str) -> Result<(), u64> {
        let ApiRate { per_second, burst } = self.rate;
        if per_second <= 0.0 {
            return Ok(());
        }
        let now = std::time::Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let (left, at) = buckets.entry(token_id.to_string()).or_insert((burst.max(1.0), now));
        *left = (*left + now.duration_since(*at).as_secs_f64() * per_second).min(burst.max(1.0));
        *at = now;
        if *left >= 1.0 {
            *left -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - *left) / per_second).ceil().max(1.0) as u64)
        }
    }

    /// Tells live streams that a token or device went away: each re-checks its authorization.
    fn auth_changed(&self) {
        self.auth_tx.send_modify(|g| *g += 1);
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
    /// Seconds for a `Retry-After` header.
    retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into(), retry_after: None }
    }

    fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        // A check-then-insert that lost a race to a concurrent request: a conflict, not a fault.
        if e.as_database_error().is_some_and(|d| d.is_unique_violation()) {
            tracing::info!(error = %e, "conflict with a concurrent request");
            return ApiError::new(
                StatusCode::CONFLICT,
                "conflict",
                "a concurrent request created the same thing first; list and retry if needed",
            );
        }
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
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            return ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("request body larger than {} KiB", MAX_JSON >> 10),
            );
        }
        ApiError::bad_request("bad_body", e.body_text())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody { error: ErrorDetail { code: self.code.into(), message: self.message } };
        let mut resp = (self.status, Json(body)).into_response();
        if let Some(s) = self.retry_after {
            resp.headers_mut().insert(axum::http::header::RETRY_AFTER, s.into());
        }
        resp
    }
}

/// What a token may do. Each scope includes the ones before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    /// Read devices, logs, bundles, tokens, signer keys, metrics.
    Read,
    /// Also change devices' names and tags, upload bundles and deploy them.
    Deploy,
    /// Also create and revoke tokens and signer keys, register and delete devices.
    Admin,
}

impl Scope {
    /// Its name in the API and the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Deploy => "deploy",
            Scope::Admin => "admin",
        }
    }

    /// The scope of a name, if it is one.
    pub fn parse(s: &str) -> Option<Scope> {
        [Scope::Read, Scope::Deploy, Scope::Admin].into_iter().find(|x| x.as_str() == s)
    }
}

/// The account of the request's API token, with what the token may do. Every authenticated
/// handler takes it before any body extractor, so no request body is read before its token is
/// checked.
#[derive(Debug, Clone)]
pub struct Account {
    /// The account the token belongs to.
    pub account: String,
    /// The token's public id.
    pub token_id: String,
    /// The token's scope.
    pub scope: Scope,
    /// When the token expires, µs since the epoch.
    pub expires_at: Option<i64>,
    /// The token itself (live streams re-check it).
    token: String,
}

impl Account {
    /// `Ok` if the token's scope includes `needed`, else a 403 that says which scope is needed.
    pub fn require(&self, needed: Scope) -> Result<(), ApiError> {
        if self.scope >= needed {
            return Ok(());
        }
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "insufficient_scope",
            format!(
                "this token has scope '{}'; this needs scope '{}' (`keel token create NAME --scope {}` with an \
                 admin token)",
                self.scope.as_str(),
                needed.as_str(),
                needed.as_str()
            ),
        ))
    }
}

fn unauthorized() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "missing or invalid API token: send `Authorization: Bearer <token>` (`keel login` stores one; \
         `keel server init` prints the first)",
    )
}

/// The token of an `Authorization` header: scheme `Bearer`, matched case-insensitively (RFC 9110).
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(axum::http::header::AUTHORIZATION)?.to_str().ok()?.trim_start();
    let (scheme, token) = v.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

impl FromRequestParts<AppState> for Account {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Self, Self::Rejection> {
        let token = bearer(&parts.headers).ok_or_else(unauthorized)?;
        let g = st.store.authenticate(token).await?.ok_or_else(unauthorized)?;
        if let Err(wait) = st.take_request(&g.id) {
            let per_second = st.rate.per_second;
            return Err(ApiError {
                retry_after: Some(wait),
                ..ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    format!(
                        "this token made more than {per_second:.0} requests a second: wait {wait} s (Retry-After) \
                         and slow down, or ask the operator to raise --api-rate"
                    ),
                )
            });
        }
        Ok(Account {
            account: g.account_id,
            token_id: g.id,
            // A scope this server does not know grants the least.
            scope: Scope::parse(&g.scope).unwrap_or(Scope::Read),
            expires_at: g.expires_at,
            token: token.to_string(),
        })
    }
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

fn valid_name(n: &str) -> bool {
    !n.is_empty() && n.chars().count() <= 100 && !n.chars().any(char::is_control)
}

use crate::domain::valid_tag;

#[derive(OpenApi)]
#[openapi(
    info(title = "Keel server API", description = "Devices, logs and tokens of a self-hosted Keel server. \
        Authenticate with `Authorization: Bearer <token>`."),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    tags((name = "devices"), (name = "logs"), (name = "tokens"), (name = "updates"), (name = "config"),
        (name = "policy"), (name = "server"))
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
        .routes(routes!(list_crashes))
        .routes(routes!(show_crash))
        .routes(routes!(stream_logs))
        .routes(routes!(debug::debug_device))
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
        .routes(routes!(settings::list_config))
        .routes(routes!(settings::get_config, settings::put_config, settings::delete_config))
        .routes(routes!(settings::list_device_config))
        .routes(routes!(settings::get_device_config, settings::put_device_config, settings::delete_device_config))
        .routes(routes!(settings::list_secrets))
        .routes(routes!(settings::put_secret, settings::delete_secret))
        .routes(routes!(settings::list_device_secrets))
        .routes(routes!(settings::put_device_secret, settings::delete_device_secret))
        .routes(routes!(settings::show_policy))
        .routes(routes!(settings::add_policy_rule))
        .routes(routes!(settings::remove_policy_rule))
        .routes(routes!(settings::check_policy))
        // JSON bodies are small; the upload route streams its body with its own limit.
        .layer(DefaultBodyLimit::max(MAX_JSON))
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
    // A wildcard (`{*key}`, the rest of the path: keys may contain `/`) is a plain path
    // parameter in OpenAPI.
    let paths = std::mem::take(&mut doc.paths.paths);
    doc.paths.paths = paths.into_iter().map(|(p, item)| (p.replace("{*", "{"), item)).collect();
}

/// The API router.
pub fn router(state: AppState) -> Router {
    let (router, mut doc) = api().split_for_parts();
    add_openapi_route(&mut doc);
    let json = Arc::new(doc.to_pretty_json().unwrap_or_default());
    let (doc_router, _) = OpenApiRouter::new().routes(routes!(openapi_json)).split_for_parts();
    router.with_state(state).merge(doc_router.with_state(json))
}

/// Largest JSON request body of every route but `POST /v1/bundles`: larger ones answer 413.
pub const MAX_JSON: usize = 64 << 10;

/// Largest request body of `POST /v1/bundles`: a maximal bundle plus headroom. Larger bodies
/// answer 413 before they are read.
pub const MAX_UPLOAD: usize = keel_bundle::MAX_BUNDLE_SIZE + (1 << 20);

fn not_found(what: &str, id: &str, hint: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no {what} '{id}' in your account ({hint})"))
}
