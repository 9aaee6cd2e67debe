//! HTTP API: authentication and account isolation, on SQLite and PostgreSQL.

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::{call, TestDb};
use http_body_util::BodyExt;
use keel_server::http::{openapi, router, AppState, DeviceJson, LogJson};
use keel_server::store::{LogRecord, Store};
use tower::ServiceExt;

async fn get(app: &axum::Router, path: &str, token: Option<&str>) -> (StatusCode, serde_json::Value) {
    call(app, "GET", path, token, None).await
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
    let state = AppState::new(store.clone(), [9; 32]);
    let app = router(state.clone());

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

    // Account A cannot touch B's device either: rename, retag and delete all answer 404.
    let patch = serde_json::json!({ "name": "mine", "tags": ["x"] });
    assert_eq!(call(&app, "PATCH", "/v1/devices/kdbbbb", Some(&ta), Some(patch)).await.0, StatusCode::NOT_FOUND);
    assert_eq!(call(&app, "DELETE", "/v1/devices/kdbbbb", Some(&ta), None).await.0, StatusCode::NOT_FOUND);
    assert_eq!(get(&app, "/v1/devices/kdbbbb/logs/stream", Some(&ta)).await.0, StatusCode::NOT_FOUND);
    let (_, body) = get(&app, "/v1/devices/kdbbbb", Some(&tb)).await;
    assert_eq!((body["name"].as_str(), body["tags"].as_array().map(Vec::len)), (Some("bolt-1"), Some(0)));

    // Own logs, with paging.
    let (s, body) = get(&app, "/v1/devices/kdaaaa/logs?after=1", Some(&ta)).await;
    assert_eq!(s, StatusCode::OK);
    let logs: Vec<LogJson> = serde_json::from_value(body).unwrap();
    assert_eq!(logs.iter().map(|l| l.text.as_str()).collect::<Vec<_>>(), ["a2"]);
    assert_eq!(logs[0].source, "app");

    // Prometheus metrics: on the API listener only with a token (any scope); the separate
    // metrics router serves them without one.
    let (s, body) = get(&app, "/metrics", None).await;
    assert_eq!((s, body["error"]["code"].as_str()), (StatusCode::UNAUTHORIZED, Some("unauthorized")));
    let scrape = |app: axum::Router, token: Option<String>| async move {
        let mut req = Request::get("/metrics");
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let resp = app.oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        String::from_utf8(resp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
    };
    let text = scrape(app.clone(), Some(ta.clone())).await;
    assert!(text.contains("keel_devices 2\n") && text.contains("keel_gateway_connections_total 0\n"), "{text}");
    let text = scrape(keel_server::http::metrics_router(state.clone()), None).await;
    assert!(text.contains("keel_devices 2\n"), "{text}");

    // An `after` beyond the stored range matches nothing (it must not wrap around to everything).
    let (s, body) = get(&app, "/v1/devices/kdaaaa/logs?after=18446744073709551615", Some(&ta)).await;
    assert_eq!((s, body.as_array().map(|a| a.len())), (StatusCode::OK, Some(0)));

    // Retention: records received before the cutoff go, the rest stay.
    assert_eq!(pruner.prune_logs(6).await.unwrap(), 0, "received_at == cutoff is kept");
    assert_eq!(pruner.prune_logs(7).await.unwrap(), 3);
    let (_, body) = get(&app, "/v1/devices/kdaaaa/logs", Some(&ta)).await;
    assert_eq!(body.as_array().map(|a| a.len()), Some(0));

    // Malformed query: a clear 400 with a JSON error, not a 500.
    let (s, body) = get(&app, "/v1/devices/kdaaaa/logs?after=-5", Some(&ta)).await;
    assert_eq!((s, body["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("bad_query")));

    // Tokens: A lists only its own, creates one that works, revokes it; B cannot revoke A's.
    let (s, body) = call(&app, "POST", "/v1/tokens", Some(&ta), Some(serde_json::json!({ "name": "ci" }))).await;
    assert_eq!(s, StatusCode::CREATED);
    let (new_id, new_token) = (body["id"].as_str().unwrap().to_string(), body["token"].as_str().unwrap().to_string());
    assert_eq!(get(&app, "/v1/devices", Some(&new_token)).await.0, StatusCode::OK);
    let (_, body) = get(&app, "/v1/tokens", Some(&ta)).await;
    let names: Vec<&str> = body.as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["cli", "ci"]);
    assert!(!body.to_string().contains(&new_token), "secrets are never listed");
    let path = format!("/v1/tokens/{new_id}");
    assert_eq!(call(&app, "DELETE", &path, Some(&tb), None).await.0, StatusCode::NOT_FOUND);
    assert_eq!(get(&app, "/v1/devices", Some(&new_token)).await.0, StatusCode::OK, "still valid");
    assert_eq!(call(&app, "DELETE", &path, Some(&ta), None).await.0, StatusCode::NO_CONTENT);
    assert_eq!(get(&app, "/v1/devices", Some(&new_token)).await.0, StatusCode::UNAUTHORIZED, "revoked");
    let bad = serde_json::json!({ "name": "" });
    assert_eq!(call(&app, "POST", "/v1/tokens", Some(&ta), Some(bad)).await.0, StatusCode::BAD_REQUEST);

    // Registry: name and tags, tag filter, validation, last boot/crash from visor events.
    let patch = serde_json::json!({ "name": "acme-one", "tags": ["field", "eu-west", "field"] });
    let (s, body) = call(&app, "PATCH", "/v1/devices/kdaaaa", Some(&ta), Some(patch)).await;
    assert_eq!(s, StatusCode::OK);
    let d: DeviceJson = serde_json::from_value(body).unwrap();
    assert_eq!((d.name.as_str(), d.tags.clone()), ("acme-one", vec!["eu-west".to_string(), "field".to_string()]));
    let (_, body) = get(&app, "/v1/devices?tag=field", Some(&ta)).await;
    assert_eq!(body.as_array().map(Vec::len), Some(1));
    let (_, body) = get(&app, "/v1/devices?tag=lab", Some(&ta)).await;
    assert_eq!(body.as_array().map(Vec::len), Some(0));
    for bad in [serde_json::json!({ "tags": ["no spaces"] }), serde_json::json!({ "name": "" }), serde_json::json!([1])]
    {
        let (s, body) = call(&app, "PATCH", "/v1/devices/kdaaaa", Some(&ta), Some(bad)).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
        assert!(body["error"]["message"].is_string());
    }
    use keel_server::store::DeviceEvent;
    store.note_event("kdaaaa", 100, DeviceEvent::Boot("boot #3 visor 0.1.0")).await.unwrap();
    store.note_event("kdaaaa", 200, DeviceEvent::Crash("app crash: hardfault pc=0x00200123")).await.unwrap();
    let (_, body) = get(&app, "/v1/devices/kdaaaa", Some(&ta)).await;
    assert_eq!(body["last_boot"]["text"], "boot #3 visor 0.1.0");
    assert_eq!((body["last_crash"]["at_us"].as_i64(), body["tags"][0].as_str()), (Some(200), Some("eu-west")));

    // Delete: the device, its tags and logs go; the id is then unknown.
    assert_eq!(call(&app, "DELETE", "/v1/devices/kdaaaa", Some(&ta), None).await.0, StatusCode::NO_CONTENT);
    assert_eq!(get(&app, "/v1/devices/kdaaaa", Some(&ta)).await.0, StatusCode::NOT_FOUND);
    assert_eq!(store.device_by_key(&[1; 32]).await.unwrap(), None, "its key can no longer connect");
    drop(state);
}

/// Reads SSE frames from a streaming body until `n` `log` events arrived; returns their data.
async fn sse_events(body: &mut Body, n: usize) -> Vec<LogJson> {
    let mut text = String::new();
    let mut out = Vec::new();
    while out.len() < n {
        let frame = body.frame().await.expect("stream open").unwrap();
        if let Ok(data) = frame.into_data() {
            text.push_str(std::str::from_utf8(&data).unwrap());
        }
        while let Some(end) = text.find("\n\n") {
            let event: String = text.drain(..end + 2).collect();
            if let Some(data) = event.lines().find_map(|l| l.strip_prefix("data: ")) {
                out.push(serde_json::from_str(data).unwrap());
            }
        }
    }
    out
}

async fn live_stream(store: Store) {
    store.create_account("a", "Acme").await.unwrap();
    store.add_device("a", "kdaaaa", &[1; 32], "acme-1").await.unwrap();
    store.add_device("a", "kdcccc", &[3; 32], "acme-2").await.unwrap();
    let rec =
        |seq, text: &str| LogRecord { seq, kind: 0, level: 2, device_time_us: 5, received_at: 6, text: text.into() };
    store.insert_log("kdaaaa", &rec(1, "old")).await.unwrap();
    let token = store.create_token("a", "cli").await.unwrap();
    let state = AppState::new(store.clone(), [9; 32]);
    let app = router(state.clone());
    let open = |query: &str, last_event_id: Option<&str>| {
        let mut req = Request::get(format!("/v1/devices/kdaaaa/logs/stream{query}"))
            .header("authorization", format!("Bearer {token}"));
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id);
        }
        app.clone().oneshot(req.body(Body::empty()).unwrap())
    };

    // From the start: the stored record, then records as they are stored (another device's are
    // not in this stream).
    let resp = open("?after=0", None).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut body = resp.into_body();
    assert_eq!(sse_events(&mut body, 1).await[0].text, "old");
    store.insert_log("kdcccc", &rec(7, "other device")).await.unwrap();
    store.insert_logs("kdaaaa", &[rec(2, "new 1"), rec(3, "new 2")]).await.unwrap();
    let got = sse_events(&mut body, 2).await;
    assert_eq!(got.iter().map(|l| (l.seq, l.text.as_str())).collect::<Vec<_>>(), [(2, "new 1"), (3, "new 2")]);

    // A reconnecting client resumes after Last-Event-ID; without a cursor the stream starts now.
    let mut resumed = open("", Some("2")).await.unwrap().into_body();
    assert_eq!(sse_events(&mut resumed, 1).await[0].text, "new 2");
    let mut fresh = open("", None).await.unwrap().into_body();
    store.insert_log("kdaaaa", &rec(4, "after open")).await.unwrap();
    assert_eq!(sse_events(&mut fresh, 1).await[0].seq, 4);
    assert_eq!(open("", Some("x")).await.unwrap().status(), StatusCode::BAD_REQUEST);

    // Stopping the server ends every stream (graceful shutdown would otherwise wait forever);
    // clients resume from their last event id on the next server.
    state.stop_streams();
    while let Some(frame) = body.frame().await {
        assert!(frame.unwrap().into_data().is_ok_and(|d| !String::from_utf8_lossy(&d).contains("data:")));
    }
}

#[tokio::test]
async fn live_log_stream_sqlite() {
    let db = TestDb::sqlite("http-stream");
    live_stream(db.open().await).await;
}

#[tokio::test]
async fn live_log_stream_postgres() {
    let db = TestDb::postgres("http-stream");
    live_stream(db.open().await).await;
}

/// Every operation in the OpenAPI document is served, with the authentication it documents:
/// called without a token, a protected one answers 401 and an open one answers 200. Routes are
/// registered only through the document's handlers, so nothing is served undocumented.
#[tokio::test]
async fn openapi_covers_every_route() {
    let db = TestDb::sqlite("openapi");
    let store = db.open().await;
    let app = router(AppState::new(store, [9; 32]));
    let doc = serde_json::to_value(openapi()).unwrap();
    let (_, served) = get(&app, "/v1/openapi.json", None).await;
    assert_eq!(served, doc, "the served document is the generated one");
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    let mut ops = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let open = op["security"].as_array().is_some_and(|s| s.iter().all(|r| r.as_object().unwrap().is_empty()));
            let uri = path.replace("{id}", "kd00000000000000000000000000000000");
            let body = matches!(method.as_str(), "post" | "patch").then(|| serde_json::json!({}));
            let (status, _) = call(&app, &method.to_uppercase(), &uri, None, body).await;
            let expected = if open { StatusCode::OK } else { StatusCode::UNAUTHORIZED };
            assert_eq!(status, expected, "{method} {path}");
            ops.push(format!("{} {path}", method.to_uppercase()));
        }
    }
    ops.sort();
    let expected = [
        "DELETE /v1/config/{key}",
        "DELETE /v1/devices/{id}",
        "DELETE /v1/devices/{id}/config/{key}",
        "DELETE /v1/devices/{id}/secrets/{key}",
        "DELETE /v1/policy/rules/{id}",
        "DELETE /v1/secrets/{key}",
        "DELETE /v1/signer-keys/{id}",
        "DELETE /v1/tokens/{id}",
        "GET /healthz",
        "GET /metrics",
        "GET /v1/bundles",
        "GET /v1/bundles/{id}",
        "GET /v1/config",
        "GET /v1/config/{key}",
        "GET /v1/devices",
        "GET /v1/devices/{id}",
        "GET /v1/devices/{id}/config",
        "GET /v1/devices/{id}/config/{key}",
        "GET /v1/devices/{id}/crashes",
        "GET /v1/devices/{id}/crashes/{crash_id}",
        "GET /v1/devices/{id}/debug",
        "GET /v1/devices/{id}/logs",
        "GET /v1/devices/{id}/logs/stream",
        "GET /v1/devices/{id}/secrets",
        "GET /v1/devices/{id}/update-events",
        "GET /v1/openapi.json",
        "GET /v1/policy",
        "GET /v1/secrets",
        "GET /v1/server",
        "GET /v1/signer-keys",
        "GET /v1/tokens",
        "PATCH /v1/devices/{id}",
        "POST /v1/bundles",
        "POST /v1/deployments",
        "POST /v1/devices",
        "POST /v1/policy/check",
        "POST /v1/policy/rules",
        "POST /v1/signer-keys",
        "POST /v1/tokens",
        "PUT /v1/config/{key}",
        "PUT /v1/devices/{id}/config/{key}",
        "PUT /v1/devices/{id}/secrets/{key}",
        "PUT /v1/secrets/{key}",
    ];
    assert_eq!(ops, expected);
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

/// A request body that sends one KiB and then nothing, ever (a client that announced 60 MB).
fn stalled_body() -> Body {
    let first = futures_util::stream::once(async { Ok::<_, std::io::Error>(axum::body::Bytes::from(vec![0u8; 1024])) });
    Body::from_stream(futures_util::StreamExt::chain(first, futures_util::stream::pending()))
}

fn upload(token: Option<&str>, announced: u64, body: Body) -> Request<Body> {
    let mut r = Request::post("/v1/bundles").header("content-length", announced.to_string());
    if let Some(t) = token {
        r = r.header("authorization", format!("Bearer {t}"));
    }
    r.body(body).unwrap()
}

#[tokio::test]
async fn an_upload_is_authenticated_and_size_checked_before_its_body_is_read() {
    // Before: the body was read (up to 64 MiB) before the token was checked, so an unauthenticated
    // client could make the server buffer 64 MiB per connection; this request never got an answer.
    let db = TestDb::sqlite("http-upload-auth-first");
    let store = db.open().await;
    store.create_account("a", "Acme").await.unwrap();
    let token = store.create_token("a", "cli").await.unwrap();
    let app = router(AppState::new(store, [9; 32]));
    let answer = |req| tokio::time::timeout(std::time::Duration::from_secs(10), app.clone().oneshot(req));
    let resp = answer(upload(None, 60 << 20, stalled_body())).await.expect("answered without the body").unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let resp =
        answer(upload(Some("keel_bogus"), 60 << 20, stalled_body())).await.expect("answered without the body").unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    // Authenticated but announcing more than the largest bundle: refused before reading too.
    let resp = answer(upload(Some(&token), keel_server::http::MAX_UPLOAD as u64 + 1, stalled_body()))
        .await
        .expect("answered without the body")
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    // A body larger than the limit without a length is cut off while reading.
    let big = Body::from(vec![0u8; keel_server::http::MAX_UPLOAD + 1]);
    let req = Request::post("/v1/bundles").header("authorization", format!("Bearer {token}")).body(big).unwrap();
    let resp = answer(req).await.expect("answered").unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
}

/// A write request of `method` to `uri` announcing a 1 MB JSON body that stalls after 1 KiB.
fn stalled_json(method: &str, uri: &str, token: Option<&str>) -> Request<Body> {
    let mut r = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .header("content-length", (1u64 << 20).to_string());
    if let Some(t) = token {
        r = r.header("authorization", format!("Bearer {t}"));
    }
    r.body(stalled_body()).unwrap()
}

#[tokio::test]
async fn every_write_route_authenticates_before_reading_its_body() {
    // Before: JSON routes parsed up to 2 MiB of body before checking the token, so a stalled
    // unauthenticated body held the request (and its buffer) forever.
    let db = TestDb::sqlite("http-auth-before-body");
    let store = db.open().await;
    store.create_account("a", "Acme").await.unwrap();
    store.add_device("a", "kd00000000000000000000000000000000", &[1; 32], "acme-1").await.unwrap();
    let token = store.create_token("a", "cli").await.unwrap();
    let app = router(AppState::new(store, [9; 32]));
    let answer = |req| tokio::time::timeout(std::time::Duration::from_secs(10), app.clone().oneshot(req));
    let doc = serde_json::to_value(openapi()).unwrap();
    let mut writes = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            if matches!(method.as_str(), "post" | "patch" | "put" | "delete") {
                writes.push((method.to_uppercase(), path.replace("{id}", "kd00000000000000000000000000000000")));
            }
        }
    }
    assert_eq!(writes.len(), 20, "{writes:?}");
    for (method, uri) in &writes {
        for bad in [None, Some("keel_bogus")] {
            let resp = answer(stalled_json(method, uri, bad))
                .await
                .unwrap_or_else(|_| panic!("{method} {uri}: no answer before the body"))
                .unwrap();
            assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{method} {uri}");
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(body["error"]["code"], "unauthorized", "{method} {uri}");
        }
    }
    // Authenticated, a JSON body above the small JSON limit answers 413 (the upload route keeps
    // its own, streamed limit).
    let big = serde_json::json!({ "name": "x".repeat(1 << 20), "public_key": "00", "id": "kd", "bundle": "b" });
    for (method, uri) in writes.iter().filter(|(m, u)| m != "DELETE" && u != "/v1/bundles") {
        let (s, body) = call(&app, method, uri, Some(&token), Some(big.clone())).await;
        assert_eq!(
            (s, body["error"]["code"].as_str()),
            (StatusCode::PAYLOAD_TOO_LARGE, Some("too_large")),
            "{method} {uri}"
        );
    }
    // RFC 9110: the scheme name is case-insensitive.
    for scheme in ["bearer", "BEARER", "Bearer"] {
        let req = Request::get("/v1/devices").header("authorization", format!("{scheme} {token}"));
        let resp = app.clone().oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{scheme}");
    }
}

async fn new_token(app: &axum::Router, by: &str, body: serde_json::Value) -> (StatusCode, serde_json::Value) {
    call(app, "POST", "/v1/tokens", Some(by), Some(body)).await
}

/// Scopes: `read` reads, `deploy` also uploads and deploys, `admin` also manages tokens, signer
/// keys and device registration. Expired tokens answer 401; the last admin token stays.
async fn token_scopes_and_expiry(store: Store) {
    store.create_account("a", "Acme").await.unwrap();
    store.add_device("a", "kdaaaa", &[1; 32], "acme-1").await.unwrap();
    let admin = store.create_token("a", "initial").await.unwrap();
    let app = router(AppState::new(store.clone(), [9; 32]));
    let (s, body) = new_token(&app, &admin, serde_json::json!({ "name": "ro", "scope": "read" })).await;
    assert_eq!((s, body["scope"].as_str()), (StatusCode::CREATED, Some("read")), "{body}");
    let read = body["token"].as_str().unwrap().to_string();
    let (s, body) = new_token(&app, &admin, serde_json::json!({ "name": "ci", "scope": "deploy" })).await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    let deploy = body["token"].as_str().unwrap().to_string();
    let (s, body) = new_token(&app, &admin, serde_json::json!({ "name": "x", "scope": "root" })).await;
    assert_eq!((s, body["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("bad_scope")));

    let device_body = serde_json::json!({ "id": "kd0123456789abcdef0123456789abcdef", "name": "n",
        "public_key": "22".repeat(32) });
    let signer_body = serde_json::json!({ "name": "k", "public_key": "33".repeat(32) });
    let deploy_body = serde_json::json!({ "bundle": "bn-000000000000", "device": "kdaaaa" });
    let routes: Vec<(&str, &str, Option<serde_json::Value>, &str)> = vec![
        ("GET", "/v1/devices", None, "read"),
        ("GET", "/v1/tokens", None, "read"),
        ("GET", "/v1/devices/kdaaaa/logs", None, "read"),
        ("PATCH", "/v1/devices/kdaaaa", Some(serde_json::json!({ "name": "renamed" })), "deploy"),
        ("POST", "/v1/deployments", Some(deploy_body), "deploy"),
        ("POST", "/v1/bundles", None, "deploy"),
        ("POST", "/v1/tokens", Some(serde_json::json!({ "name": "more" })), "admin"),
        ("POST", "/v1/signer-keys", Some(signer_body), "admin"),
        ("DELETE", "/v1/signer-keys/sk-000000000000", None, "admin"),
        ("POST", "/v1/devices", Some(device_body), "admin"),
        ("DELETE", "/v1/devices/kd0123456789abcdef0123456789abcdef", None, "admin"),
    ];
    let rank = |s: &str| ["read", "deploy", "admin"].iter().position(|x| *x == s).unwrap();
    for (tname, token) in [("read", &read), ("deploy", &deploy), ("admin", &admin)] {
        for (method, path, body, needs) in &routes {
            let (s, resp) = call(&app, method, path, Some(token), body.clone()).await;
            if rank(tname) < rank(needs) {
                assert_eq!(
                    (s, resp["error"]["code"].as_str()),
                    (StatusCode::FORBIDDEN, Some("insufficient_scope")),
                    "{tname} token: {method} {path}"
                );
                assert!(resp["error"]["message"].as_str().unwrap().contains(needs), "{resp}");
            } else {
                assert!(
                    ![StatusCode::FORBIDDEN, StatusCode::UNAUTHORIZED].contains(&s),
                    "{tname} token: {method} {path}: {s} {resp}"
                );
            }
        }
    }

    // A token cannot mint one that outlives it.
    let (s, body) =
        new_token(&app, &admin, serde_json::json!({ "name": "tmp", "scope": "admin", "expires_in_s": 3600 })).await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    let (tmp, tmp_id) = (body["token"].as_str().unwrap().to_string(), body["id"].as_str().unwrap().to_string());
    assert!(body["expires_at_us"].as_i64().is_some(), "{body}");
    let (s, body) = new_token(&app, &tmp, serde_json::json!({ "name": "forever", "scope": "read" })).await;
    assert_eq!((s, body["error"]["code"].as_str()), (StatusCode::FORBIDDEN, Some("scope_exceeded")), "{body}");

    // Last use is recorded and listed.
    let (_, list) = get(&app, "/v1/tokens", Some(&admin)).await;
    let used = list.as_array().unwrap().iter().find(|t| t["name"] == "ro").unwrap();
    assert!(used["last_used_at_us"].as_i64().is_some(), "{list}");
    assert_eq!(used["scope"], "read");

    // An expired token answers 401 (poll: it expires one second after creation).
    let (s, body) = new_token(&app, &admin, serde_json::json!({ "name": "short", "expires_in_s": 1 })).await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    let short = body["token"].as_str().unwrap().to_string();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (s, body) = get(&app, "/v1/devices", Some(&short)).await;
        if s == StatusCode::UNAUTHORIZED {
            assert_eq!(body["error"]["code"], "unauthorized");
            break;
        }
        assert_eq!(s, StatusCode::OK);
        assert!(std::time::Instant::now() < deadline, "the token never expired");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    // The last admin token without expiry cannot be revoked, not even by an admin token that
    // expires (the account would be locked out once that one expired).
    let (_, list) = get(&app, "/v1/tokens", Some(&admin)).await;
    let admin_id = list.as_array().unwrap().iter().find(|t| t["name"] == "initial").unwrap()["id"].clone();
    let admin_path = format!("/v1/tokens/{}", admin_id.as_str().unwrap());
    let (s, body) = call(&app, "DELETE", &admin_path, Some(&tmp), None).await;
    assert_eq!((s, body["error"]["code"].as_str()), (StatusCode::CONFLICT, Some("last_admin_token")), "{body}");
    let tmp_path = format!("/v1/tokens/{tmp_id}");
    assert_eq!(call(&app, "DELETE", &tmp_path, Some(&admin), None).await.0, StatusCode::NO_CONTENT);
    let (s, body) = call(&app, "DELETE", &admin_path, Some(&admin), None).await;
    assert_eq!((s, body["error"]["code"].as_str()), (StatusCode::CONFLICT, Some("last_admin_token")), "{body}");
    assert_eq!(get(&app, "/v1/devices", Some(&admin)).await.0, StatusCode::OK);
}

mod scopes {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        let db = super::TestDb::sqlite("http-scopes");
        super::token_scopes_and_expiry(db.open().await).await;
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        let db = super::TestDb::postgres("http-scopes");
        super::token_scopes_and_expiry(db.open().await).await;
    }
}

/// Opens a live stream of `device` with `token`; panics unless it answers 200.
async fn open_stream(app: &axum::Router, device: &str, token: &str) -> Body {
    let req = Request::get(format!("/v1/devices/{device}/logs/stream?after=0"))
        .header("authorization", format!("Bearer {token}"))
        .body(Body::empty())
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    resp.into_body()
}

/// Reads a stream until it ends (within 30 s); returns the texts of the `log` events it carried.
async fn until_end(body: &mut Body) -> Vec<String> {
    let mut texts = Vec::new();
    let read = async {
        while let Some(frame) = body.frame().await {
            let Ok(data) = frame.unwrap().into_data() else { continue };
            for line in String::from_utf8_lossy(&data).lines() {
                if let Some(d) = line.strip_prefix("data: ") {
                    texts.push(serde_json::from_str::<LogJson>(d).unwrap().text);
                }
            }
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(30), read).await.expect("the stream never ended");
    texts
}

/// A live stream stays authorized: it ends when its token is revoked or expires, or when its
/// device is deleted (and the id re-registered by another account, whose logs it never shows).
async fn streams_end_when_authorization_ends(store: Store) {
    let dev = "kd0123456789abcdef0123456789abcdef";
    store.create_account("a", "Acme").await.unwrap();
    store.create_account("b", "Bolt").await.unwrap();
    store.add_device("a", dev, &[1; 32], "acme-1").await.unwrap();
    let rec =
        |seq, text: &str| LogRecord { seq, kind: 0, level: 2, device_time_us: 5, received_at: 6, text: text.into() };
    store.insert_log(dev, &rec(1, "a1")).await.unwrap();
    let admin = store.create_token("a", "initial").await.unwrap();
    let tb = store.create_token("b", "initial").await.unwrap();
    let app = router(AppState::new(store.clone(), [9; 32]));
    let token = |scope: &str, expires: Option<u64>| {
        let app = app.clone();
        let admin = admin.clone();
        let body = serde_json::json!({ "name": "s", "scope": scope, "expires_in_s": expires });
        async move {
            let (s, body) = new_token(&app, &admin, body).await;
            assert_eq!(s, StatusCode::CREATED, "{body}");
            (body["token"].as_str().unwrap().to_string(), body["id"].as_str().unwrap().to_string())
        }
    };

    // Revoked: the stream ends.
    let (t1, t1_id) = token("read", None).await;
    let mut s1 = open_stream(&app, dev, &t1).await;
    assert_eq!(sse_events(&mut s1, 1).await[0].text, "a1");
    assert_eq!(
        call(&app, "DELETE", &format!("/v1/tokens/{t1_id}"), Some(&admin), None).await.0,
        StatusCode::NO_CONTENT
    );
    until_end(&mut s1).await;

    // Expired: the stream ends.
    let (t2, _) = token("read", Some(2)).await;
    let mut s2 = open_stream(&app, dev, &t2).await;
    assert_eq!(sse_events(&mut s2, 1).await[0].text, "a1");
    until_end(&mut s2).await;

    // Deleted, then registered again (same id and key) by account B, which logs a secret: A's
    // open stream ends and never carries B's record.
    let (t3, _) = token("read", None).await;
    let mut s3 = open_stream(&app, dev, &t3).await;
    assert_eq!(sse_events(&mut s3, 1).await[0].text, "a1");
    assert_eq!(call(&app, "DELETE", &format!("/v1/devices/{dev}"), Some(&admin), None).await.0, StatusCode::NO_CONTENT);
    let reg = serde_json::json!({ "id": dev, "name": "bolt-1", "public_key": "01".repeat(32) });
    assert_eq!(call(&app, "POST", "/v1/devices", Some(&tb), Some(reg)).await.0, StatusCode::CREATED);
    store.insert_log(dev, &rec(2, "secret of b")).await.unwrap();
    let seen = until_end(&mut s3).await;
    assert!(!seen.iter().any(|t| t.contains("secret of b")), "{seen:?}");
}

/// Registration conflicts answer the same for an id or key of this account and of another one
/// (no existence oracle), and concurrent registrations answer 201 once and 409 otherwise.
async fn registration_reveals_no_other_account(store: Store) {
    store.create_account("a", "Acme").await.unwrap();
    store.create_account("b", "Bolt").await.unwrap();
    let ta = store.create_token("a", "initial").await.unwrap();
    let tb = store.create_token("b", "initial").await.unwrap();
    let app = router(AppState::new(store.clone(), [9; 32]));
    let reg =
        |id: &str, key: u8| serde_json::json!({ "id": id, "name": "n", "public_key": format!("{key:02x}").repeat(32) });
    // Concurrent registrations of one id: exactly one 201, the others 409 (never 500).
    let id = "kd11111111111111111111111111111111";
    let tasks: Vec<_> = (0..16u8)
        .map(|i| {
            let (app, tb) = (app.clone(), tb.clone());
            tokio::spawn(async move { call(&app, "POST", "/v1/devices", Some(&tb), Some(reg(id, 0x40 + i))).await.0 })
        })
        .collect();
    let mut got = Vec::new();
    for t in tasks {
        got.push(t.await.unwrap());
    }
    assert_eq!(got.iter().filter(|s| **s == StatusCode::CREATED).count(), 1, "{got:?}");
    assert!(got.iter().all(|s| [StatusCode::CREATED, StatusCode::CONFLICT].contains(s)), "{got:?}");
    let id_a = "kdaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    assert_eq!(call(&app, "POST", "/v1/devices", Some(&ta), Some(reg(id_a, 0xa1))).await.0, StatusCode::CREATED);
    let fresh = "kdffffffffffffffffffffffffffffffff";
    let answers = [
        ("own id", call(&app, "POST", "/v1/devices", Some(&ta), Some(reg(id_a, 0x01))).await),
        ("own key", call(&app, "POST", "/v1/devices", Some(&ta), Some(reg(fresh, 0xa1))).await),
        ("foreign id", call(&app, "POST", "/v1/devices", Some(&tb), Some(reg(id_a, 0x02))).await),
        ("foreign key", call(&app, "POST", "/v1/devices", Some(&tb), Some(reg(fresh, 0xa1))).await),
    ];
    for (what, (s, body)) in &answers {
        assert_eq!((*s, body["error"]["code"].as_str()), (StatusCode::CONFLICT, Some("device_unavailable")), "{what}");
        assert_eq!(body, &answers[0].1 .1, "{what}: the same answer as for one's own device");
        assert!(!body.to_string().contains("\"a\"") && !body.to_string().contains("Acme"), "{body}");
    }
}

mod authorization_stays_true {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        let db = super::TestDb::sqlite("http-authz");
        super::streams_end_when_authorization_ends(db.open().await).await;
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        let db = super::TestDb::postgres("http-authz");
        super::streams_end_when_authorization_ends(db.open().await).await;
    }
}

mod registration {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        let db = super::TestDb::sqlite("http-reg");
        super::registration_reveals_no_other_account(db.open().await).await;
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        let db = super::TestDb::postgres("http-reg");
        super::registration_reveals_no_other_account(db.open().await).await;
    }
}

/// One token cannot hold the API's connections with live streams: the 17th stream of a token is
/// refused with 429 `too_many_streams` (before: every one was opened), another token still gets
/// one, and a closed stream gives its place back.
#[tokio::test]
async fn live_streams_per_token_are_capped() {
    let db = TestDb::sqlite("http-stream-cap");
    let store = db.open().await;
    let dev = "kd0123456789abcdef0123456789abcdef";
    store.create_account("a", "Acme").await.unwrap();
    store.add_device("a", dev, &[1; 32], "acme-1").await.unwrap();
    let (t1, t2) = (store.create_token("a", "one").await.unwrap(), store.create_token("a", "two").await.unwrap());
    let app = router(AppState::new(store.clone(), [9; 32]));
    let path = format!("/v1/devices/{dev}/logs/stream");
    let mut open = Vec::new();
    for _ in 0..keel_server::http::MAX_STREAMS_PER_TOKEN {
        open.push(open_stream(&app, dev, &t1).await);
    }
    // (An opened stream never ends: the time limit is what fails on a server without the cap.)
    let refused = tokio::time::timeout(std::time::Duration::from_secs(5), get(&app, &path, Some(&t1)));
    let (s, body) = refused.await.expect("the token's 17th stream was opened");
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (StatusCode::TOO_MANY_REQUESTS, Some("too_many_streams")),
        "{body}"
    );
    let other = open_stream(&app, dev, &t2).await;
    open.pop();
    open.push(open_stream(&app, dev, &t1).await);
    drop((open, other));
}

/// A token that hammers the API is slowed down, alone: past its burst it is answered 429
/// `rate_limited` with `Retry-After` (before: every request was served), while another token is
/// served as usual.
#[tokio::test]
async fn requests_per_token_are_rate_limited() {
    use keel_server::http::ApiRate;
    let db = TestDb::sqlite("http-rate");
    let store = db.open().await;
    store.create_account("a", "Acme").await.unwrap();
    let (t1, t2) = (store.create_token("a", "one").await.unwrap(), store.create_token("a", "two").await.unwrap());
    let app = router(AppState::new(store.clone(), [9; 32]).with_api_rate(ApiRate { per_second: 0.5, burst: 5.0 }));
    for _ in 0..5 {
        assert_eq!(get(&app, "/v1/devices", Some(&t1)).await.0, StatusCode::OK);
    }
    let req = Request::get("/v1/devices").header("authorization", format!("Bearer {t1}")).body(Body::empty()).unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    let wait: u64 = resp.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&wait), "Retry-After {wait}");
    let body: serde_json::Value =
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    assert_eq!(get(&app, "/v1/devices", Some(&t2)).await.0, StatusCode::OK, "another token is not slowed");
    // A bad token is refused as before (401), whatever the rate.
    assert_eq!(get(&app, "/v1/devices", Some("kt-bogus")).await.0, StatusCode::UNAUTHORIZED);
}
