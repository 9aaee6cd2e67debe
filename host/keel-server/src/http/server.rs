//! The server itself: version and gateway key, metrics, health, the OpenAPI document.

use super::*;

/// The server's version and gateway public key (devices pin it in their factory data).
#[utoipa::path(get, path = "/v1/server", tag = "server",
    responses((status = 200, body = ServerInfo), (status = 401, body = ErrorBody)))]
pub(super) async fn server_info(State(st): State<AppState>, auth: Account) -> Result<Json<ServerInfo>, ApiError> {
    let _ = auth;
    Ok(Json(ServerInfo { public_key: crate::hex(&st.server_public), version: env!("CARGO_PKG_VERSION").into() }))
}

/// Prometheus text exposition of the server's state (any token scope). For a scraper without a
/// token, serve [`metrics_router`] on a separate listener bound to a trusted network.
#[utoipa::path(get, path = "/metrics", tag = "server",
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain"),
        (status = 401, body = ErrorBody)))]
pub(super) async fn metrics(State(st): State<AppState>, auth: Account) -> Result<String, ApiError> {
    let _ = auth;
    metrics_text(&st).await
}

pub(super) async fn metrics_unauthenticated(State(st): State<AppState>) -> Result<String, ApiError> {
    metrics_text(&st).await
}

/// `GET /metrics` without authentication, for a listener of its own (`keel server run --metrics
/// ADDR`): bind it to loopback or a monitoring network, never to the internet.
pub fn metrics_router(state: AppState) -> Router {
    Router::new().route("/metrics", axum::routing::get(metrics_unauthenticated)).with_state(state)
}

/// The metrics. A scrape costs one query over the devices table (no count of the logs, which
/// grows without bound) and in-memory counters.
pub(super) async fn metrics_text(st: &AppState) -> Result<String, ApiError> {
    use std::fmt::Write;
    let (devices, online) = st.store.device_counts().await?;
    let c: &Counters = st.store.counters();
    let get = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
        let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n");
    };
    metric("keel_devices", "gauge", "Registered devices.", devices as u64);
    metric("keel_devices_online", "gauge", "Devices connected to the gateway.", online as u64);
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
    // Remote debugging relay.
    let relay = st.store.debug_relay();
    metric("keel_debug_sessions", "gauge", "Debuggers attached to devices now.", relay.sessions() as u64);
    let debug: [(&str, &str, u64); 4] = [
        ("keel_debug_sessions_total", "Debuggers attached (websockets opened).", get(&c.debug_sessions)),
        (
            "keel_debug_sessions_replaced_total",
            "Debuggers that replaced the one attached to the same device.",
            get(&c.debug_sessions_replaced),
        ),
        (
            "keel_debug_frames_to_device_total",
            "Debug frames relayed from a debugger to its device's connection.",
            get(&c.debug_to_device),
        ),
        (
            "keel_debug_frames_to_client_total",
            "Debug frames relayed from a device to its debugger.",
            get(&c.debug_to_client),
        ),
    ];
    for (name, help, value) in debug {
        metric(name, "counter", help, value);
    }
    let name = "keel_debug_frames_dropped_total";
    let _ = write!(out, "# HELP {name} Debug frames dropped by the relay, by reason.\n# TYPE {name} counter\n");
    let dropped: [(&str, u64); 6] = [
        ("no_client", get(&c.debug_dropped_no_client)),
        ("client_slow", get(&c.debug_dropped_client_slow)),
        ("device_offline", get(&c.debug_dropped_offline)),
        ("rate", get(&c.debug_dropped_rate)),
        ("mailbox_full", st.store.bus().dropped()),
        ("not_negotiated", get(&c.debug_dropped_not_negotiated)),
    ];
    for (reason, value) in dropped {
        let _ = writeln!(out, "{name}{{reason=\"{reason}\"}} {value}");
    }
    Ok(out)
}

/// Liveness probe.
#[utoipa::path(get, path = "/healthz", tag = "server", security(()), responses((status = 200, body = String)))]
pub(super) async fn healthz() -> &'static str {
    "ok"
}

/// This OpenAPI document.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "server", security(()),
    responses((status = 200, description = "OpenAPI 3.1 document")))]
pub(super) async fn openapi_json(State(doc): State<Arc<String>>) -> Response {
    ([("content-type", "application/json")], doc.as_str().to_owned()).into_response()
}
