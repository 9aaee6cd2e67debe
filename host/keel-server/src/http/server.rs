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
/// grows without bound) and in-memory counters. The connectivity metrics (app channels, HTTP
/// proxy, name lookups, MQTT) need the channel services: a scrape starts them if no device did
/// yet (they are the same ones devices use), and leaves them out if they cannot start.
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
    connectivity_metrics(&mut out, st.store.started_channel_services().as_deref());
    Ok(out)
}

/// The app channels and the services behind them (HTTP proxy, name lookups, managed MQTT), from
/// their in-memory counters; every series is 0 while no channel has started the services (a
/// scrape does not start them).
fn connectivity_metrics(out: &mut String, services: Option<&crate::channels::Services>) {
    use std::fmt::Write;
    let one = |out: &mut String, name: &str, kind: &str, help: &str, value: u64| {
        let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n");
    };
    let labelled = |out: &mut String, name: &str, help: &str, label: &str, values: &[(&str, u64)]| {
        let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} counter\n");
        for (v, n) in values {
            let _ = writeln!(out, "{name}{{{label}=\"{v}\"}} {n}");
        }
    };
    let ch = services.map(|s| s.channel_stats()).unwrap_or_default();
    one(out, "keel_channels_open", "gauge", "App channels open now, all devices.", ch.open);
    one(out, "keel_channel_opens_total", "counter", "App channels opened.", ch.opened);
    labelled(
        out,
        "keel_channel_opens_refused_total",
        "App channel opens refused, by reason (rate: the device's open budget; limit: channels \
         open on its connection; invalid).",
        "reason",
        &[("rate", ch.refused_rate), ("limit", ch.refused_limit), ("invalid", ch.refused_invalid)],
    );
    let h = services.map(|s| s.http.stats()).unwrap_or_default();
    labelled(
        out,
        "keel_proxy_http_requests_total",
        "HTTP proxy requests by result.",
        "result",
        &[
            ("completed", h.completed),
            ("denied", h.denied),
            ("failed", h.failed),
            ("timeout", h.timeouts),
            ("invalid", h.invalid),
            ("too_large", h.too_large),
            ("rate_limited", h.rate_limited),
            ("account_limited", h.account_limited),
        ],
    );
    one(out, "keel_proxy_http_requests_in_progress", "gauge", "HTTP proxy requests in progress.", h.in_progress);
    one(out, "keel_proxy_http_bytes_out_total", "counter", "HTTP proxy request bytes sent.", h.bytes_out);
    one(out, "keel_proxy_http_bytes_in_total", "counter", "HTTP proxy response bytes received.", h.bytes_in);
    let d = services.map(|s| s.http.lookups().stats()).unwrap_or_default();
    one(
        out,
        "keel_proxy_dns_lookups_in_progress",
        "gauge",
        "Name lookups whose thread has not returned (timed out ones included).",
        d.in_progress,
    );
    one(out, "keel_proxy_dns_lookups_total", "counter", "Name lookups started.", d.lookups);
    one(out, "keel_proxy_dns_lookups_timed_out_total", "counter", "Name lookups given up (timeout).", d.timed_out);
    one(
        out,
        "keel_proxy_dns_lookups_refused_total",
        "counter",
        "Name lookups refused: the device's, its account's or the server's lookups were all in progress.",
        d.refused,
    );
    let m = services.map(|s| s.mqtt.stats()).unwrap_or_default();
    let mqtt: [(&str, &str, &str, u64); 10] = [
        ("keel_mqtt_sessions", "gauge", "Managed MQTT sessions held now.", m.sessions),
        (
            "keel_mqtt_sessions_refused_total",
            "counter",
            "MQTT attachments refused for a session limit (server-wide or per account).",
            m.refused,
        ),
        ("keel_mqtt_relay_connections", "gauge", "Broker connections through the relay open now.", m.relay_connections),
        (
            "keel_mqtt_broker_connections_total",
            "counter",
            "Broker connections made (reconnections included).",
            m.connections,
        ),
        ("keel_mqtt_connect_failures_total", "counter", "Broker connection attempts that failed.", m.connect_failures),
        ("keel_mqtt_denied_total", "counter", "Broker connections refused by the destination policy.", m.denied),
        ("keel_mqtt_messages_to_brokers_total", "counter", "Messages devices published to brokers.", m.published),
        ("keel_mqtt_messages_from_brokers_total", "counter", "Messages received from brokers.", m.received),
        ("keel_mqtt_messages_delivered_total", "counter", "Messages from brokers handed to devices.", m.delivered),
        (
            "keel_mqtt_messages_lost_total",
            "counter",
            "Messages from brokers dropped (rate, size, queue) and reported to the device as lost.",
            m.lost,
        ),
    ];
    for (name, kind, help, value) in mqtt {
        one(out, name, kind, help, value);
    }
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
