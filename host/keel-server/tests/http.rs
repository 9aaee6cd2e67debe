//! HTTP API: authentication and account isolation, on SQLite and PostgreSQL.

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::TestDb;
use http_body_util::BodyExt;
use keel_server::http::{router, AppState, DeviceJson, LogJson};
use keel_server::store::{LogRecord, Store};
use tower::ServiceExt;

async fn get(app: &axum::Router, path: &str, token: Option<&str>) -> (StatusCode, serde_json::Value) {
    let mut req = Request::get(path);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let resp = app.clone().oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null))
}

async fn two_accounts(store: Store) {
    let pruner = store.clone();
    store.create_account("a", "Acme").await.unwrap();
    store.create_account("b", "Bolt").await.unwrap();
    store.add_device("a", "kdaaaa", &[1; 32], "acme-1").await.unwrap();
    store.add_device("b", "kdbbbb", &[2; 32], "bolt-1").await.unwrap();
    let rec =
        |seq, text: &str| LogRecord { seq, kind: 0, level: 2, device_time_us: 5, received_at: 6, text: text.into() };
    store.insert_log("kdaaaa", &rec(1, "a1")).await.unwrap();
    store.insert_log("kdaaaa", &rec(2, "a2")).await.unwrap();
    store.insert_log("kdbbbb", &rec(1, "secret of b")).await.unwrap();
    let ta = store.create_token("a", "cli").await.unwrap();
    let tb = store.create_token("b", "cli").await.unwrap();
    let app = router(AppState { store, server_public: [9; 32] });

    // No or bad token: 401 with an error that says what to do.
    let (s, body) = get(&app, "/v1/devices", None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"]["code"], "unauthorized");
    assert_eq!(get(&app, "/v1/devices", Some("keel_0000")).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(get(&app, "/v1/devices/kdaaaa/logs", Some("")).await.0, StatusCode::UNAUTHORIZED);

    // Each account sees exactly its own devices.
    let (s, body) = get(&app, "/v1/devices", Some(&ta)).await;
    assert_eq!(s, StatusCode::OK);
    let devs: Vec<DeviceJson> = serde_json::from_value(body).unwrap();
    assert_eq!(devs.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(), ["kdaaaa"]);
    let (_, body) = get(&app, "/v1/devices", Some(&tb)).await;
    let devs: Vec<DeviceJson> = serde_json::from_value(body).unwrap();
    assert_eq!(devs.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(), ["kdbbbb"]);

    // Account A cannot see or read B's device or logs: 404, as if it did not exist.
    assert_eq!(get(&app, "/v1/devices/kdbbbb", Some(&ta)).await.0, StatusCode::NOT_FOUND);
    let (s, body) = get(&app, "/v1/devices/kdbbbb/logs", Some(&ta)).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(!body.to_string().contains("secret of b"));

    // Own logs, with paging.
    let (s, body) = get(&app, "/v1/devices/kdaaaa/logs?after=1", Some(&ta)).await;
    assert_eq!(s, StatusCode::OK);
    let logs: Vec<LogJson> = serde_json::from_value(body).unwrap();
    assert_eq!(logs.iter().map(|l| l.text.as_str()).collect::<Vec<_>>(), ["a2"]);
    assert_eq!(logs[0].source, "app");

    // Prometheus metrics.
    let resp = app.clone().oneshot(Request::get("/metrics").body(Body::empty()).unwrap()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let text = String::from_utf8(resp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    assert!(text.contains("keel_devices 2\n") && text.contains("keel_log_records 3\n"), "{text}");

    // An `after` beyond the stored range matches nothing (it must not wrap around to everything).
    let (s, body) = get(&app, "/v1/devices/kdaaaa/logs?after=18446744073709551615", Some(&ta)).await;
    assert_eq!((s, body.as_array().map(|a| a.len())), (StatusCode::OK, Some(0)));

    // Retention: records received before the cutoff go, the rest stay.
    assert_eq!(pruner.prune_logs(6).await.unwrap(), 0, "received_at == cutoff is kept");
    assert_eq!(pruner.prune_logs(7).await.unwrap(), 3);
    let (_, body) = get(&app, "/v1/devices/kdaaaa/logs", Some(&ta)).await;
    assert_eq!(body.as_array().map(|a| a.len()), Some(0));

    // Malformed query: a clear 400, not a 500.
    assert_eq!(get(&app, "/v1/devices/kdaaaa/logs?after=-5", Some(&ta)).await.0, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn accounts_are_isolated_and_tokens_required_sqlite() {
    let db = TestDb::sqlite("http");
    two_accounts(db.open().await).await;
}

#[tokio::test]
async fn accounts_are_isolated_and_tokens_required_postgres() {
    let db = TestDb::postgres("http");
    two_accounts(db.open().await).await;
}
