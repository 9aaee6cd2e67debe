//! Over-the-air updates end to end: bundle upload and its refusals, deployments, the gateway
//! offering and serving layers to simulated devices (keel-sim, running the shared update agent), a
//! tampered layer, a server restart in the middle of a download, and account isolation. Every
//! test runs on SQLite and on PostgreSQL.

#[macro_use]
mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::{sim_until, TestDb, WAIT};
use futures_util::StreamExt;
use http_body_util::BodyExt;
use keel_bundle::{build_bundle, reference_region_capacity, BundleSpec, LayerSpec, Policies, SigningKey, Target};
use keel_link::msg::UpdateState;
use keel_server::gateway::{generate_keypair, serve};
use keel_server::http::{router, AppState, BundleJson, DeviceJson, UpdateEventJson};
use keel_server::store::Store;
use keel_sim::{new_secret, public_key, SimDevice};
use object_store::{ObjectStoreExt, PutPayload};
use tokio::net::TcpListener;
use tower::ServiceExt;

on_both_databases!("ota-", uploads_that_fail_a_check_store_nothing);
on_both_databases!("ota-", a_deployment_reaches_devices_by_id_and_by_tag);
on_both_databases!("ota-", a_tampered_layer_is_refused_by_the_device);
on_both_databases!("ota-", a_download_resumes_after_a_server_restart);
on_both_databases!("ota-", accounts_cannot_see_or_use_each_others_updates);
on_both_databases!("ota-", a_repeated_status_is_not_written_again);
on_both_databases!("ota-", a_large_tag_deploy_reloads_no_unrelated_connection);

async fn call(
    app: &axum::Router,
    method: &str,
    path: &str,
    token: &str,
    body: Option<serde_json::Value>,
) -> (StatusCode, serde_json::Value) {
    common::call(app, method, path, Some(token), body).await
}

async fn upload(app: &axum::Router, token: &str, bundle: Vec<u8>) -> (StatusCode, serde_json::Value) {
    common::upload(app, token, "", bundle).await
}

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn public(k: &SigningKey) -> [u8; 32] {
    k.verifying_key().to_bytes()
}

/// App slot contents (keel-image header + image) with an image of `size` bytes.
fn app_slot(size: usize, version: &str) -> Vec<u8> {
    let image: Vec<u8> = (0..size).map(|i| (i * 7 + i / 251) as u8).collect();
    let h = keel_image::build_header(&image, 0x0020_0000, 0x2800_0000, "hello", version, (2, 0)); // the visor ABI major (keel_abi::ABI_MAJOR)
    let mut slot = h.to_bytes().to_vec();
    slot.extend(image);
    slot
}

/// A bundle of app "hello" with one app layer.
fn bundle(k: &SigningKey, sequence: u64, version: &str, image_size: usize) -> Vec<u8> {
    let slot = app_slot(image_size, version);
    let policies = Policies { app_name: "hello", app_version: version, ..Policies::default() };
    let layers = [LayerSpec { id: "app", target: Target::AppSlot, bytes: &slot }];
    build_bundle(&BundleSpec { sequence, layers: &layers, policies }, k, reference_region_capacity).unwrap()
}

/// The bundle without its authentication wrapper (envelope key 2): an unsigned bundle.
fn strip_signature(bundle: &[u8]) -> Vec<u8> {
    use minicbor::data::Type;
    let mut d = minicbor::Decoder::new(bundle);
    if d.datatype().unwrap() == Type::Tag {
        d.tag().unwrap();
    }
    let n = d.map().unwrap().unwrap();
    let mut e = minicbor::Encoder::new(Vec::new());
    e.tag(minicbor::data::Tag::new(107)).unwrap().map(n - 1).unwrap();
    for _ in 0..n {
        match d.datatype().unwrap() {
            Type::U8 | Type::U16 | Type::U32 | Type::U64 => {
                let k = d.u64().unwrap();
                let v = d.bytes().unwrap();
                if k != 2 {
                    e.u64(k).unwrap().bytes(v).unwrap();
                }
            }
            _ => {
                let k = d.str().unwrap();
                let v = d.bytes().unwrap();
                e.str(k).unwrap().bytes(v).unwrap();
            }
        }
    }
    e.into_writer()
}

async fn add_key(app: &axum::Router, token: &str, k: &SigningKey, name: &str) -> String {
    let pem = keel_bundle::public_key_to_pem(&k.verifying_key()).unwrap();
    let body = serde_json::json!({ "name": name, "public_key": pem });
    let (s, body) = call(app, "POST", "/v1/signer-keys", token, Some(body)).await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    body["id"].as_str().unwrap().to_string()
}

async fn object_count(store: &Store) -> usize {
    store.objects().list(None).collect::<Vec<_>>().await.len()
}

struct World {
    store: Store,
    app: axum::Router,
    token: String,
    addr: SocketAddr,
    private: Vec<u8>,
    public: [u8; 32],
    gateway: tokio::task::JoinHandle<()>,
}

/// Account "a" with a token and signer key `key(1)`, the API and a running gateway.
async fn world(store: Store) -> World {
    store.create_account("a", "Acme").await.unwrap();
    let token = store.create_token("a", "cli").await.unwrap();
    let (private, public) = generate_keypair();
    let app = router(AppState::new(store.clone(), public));
    add_key(&app, &token, &key(1), "release").await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let gateway = tokio::spawn(serve(listener, store.clone(), private.clone()));
    World { store, app, token, addr, private, public, gateway }
}

impl World {
    /// Registers device `id` (with `tags`) and runs a simulated device for it that trusts
    /// `key(1)` and has sequence `installed` confirmed.
    async fn device(&self, id: &str, tags: &[&str], installed: u64) -> (Arc<SimDevice>, tokio::task::JoinHandle<()>) {
        let secret = new_secret();
        self.store.add_device("a", id, &public_key(&secret), id).await.unwrap();
        let tags: Vec<String> = tags.iter().map(|t| t.to_string()).collect();
        self.store.set_tags(id, &tags).await.unwrap();
        let dev = Arc::new(SimDevice::new(secret, self.public, 1).with_updates(vec![public(&key(1))], installed));
        let (d, addr) = (dev.clone(), self.addr);
        let task = tokio::spawn(async move { d.run(addr, 20).await });
        (dev, task)
    }

    async fn upload_ok(&self, b: Vec<u8>) -> BundleJson {
        let (s, body) = upload(&self.app, &self.token, b).await;
        assert_eq!(s, StatusCode::CREATED, "{body}");
        serde_json::from_value(body).unwrap()
    }

    async fn deploy(&self, body: serde_json::Value) -> (StatusCode, serde_json::Value) {
        call(&self.app, "POST", "/v1/deployments", &self.token, Some(body)).await
    }

    async fn device_json(&self, id: &str) -> DeviceJson {
        let (s, body) = call(&self.app, "GET", &format!("/v1/devices/{id}"), &self.token, None).await;
        assert_eq!(s, StatusCode::OK, "{body}");
        serde_json::from_value(body).unwrap()
    }

    async fn events(&self, id: &str) -> Vec<UpdateEventJson> {
        let (s, body) = call(&self.app, "GET", &format!("/v1/devices/{id}/update-events"), &self.token, None).await;
        assert_eq!(s, StatusCode::OK, "{body}");
        serde_json::from_value(body).unwrap()
    }

    /// Waits until the server stored an update status of `id` in `state`.
    async fn server_state(&self, id: &str, state: UpdateState) {
        common::wait_update_state(&self.store, id, state.as_str()).await;
    }
}

async fn uploads_that_fail_a_check_store_nothing(store: Store) {
    store.create_account("a", "Acme").await.unwrap();
    let token = store.create_token("a", "cli").await.unwrap();
    let app = router(AppState::new(store.clone(), [9; 32]));
    let good = bundle(&key(1), 5, "1.0.0", 4000);

    // No signer key yet: refused, with what to do.
    let (s, body) = upload(&app, &token, good.clone()).await;
    assert_eq!((s, body["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("no_signer_keys")), "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("keel keys add"));
    add_key(&app, &token, &key(1), "release").await;

    let revoked = add_key(&app, &token, &key(3), "old laptop").await;
    let (s, _) = call(&app, "DELETE", &format!("/v1/signer-keys/{revoked}"), &token, None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);

    // A byte of the layer changed after signing.
    let mut altered = good.clone();
    let at = altered.len() - 100;
    altered[at] ^= 1;
    // Bigger than the app slot (2 MiB + 8 KiB), built without the region check.
    let huge_slot = app_slot(2 * 1024 * 1024 + 8 * 1024 - 256 + 1, "9.9.9");
    let huge = build_bundle(
        &BundleSpec {
            sequence: 6,
            layers: &[LayerSpec { id: "app", target: Target::AppSlot, bytes: &huge_slot }],
            policies: Policies { app_name: "hello", app_version: "9.9.9", ..Policies::default() },
        },
        &key(1),
        |_| Some(u32::MAX),
    )
    .unwrap();
    let refusals: Vec<(&str, Vec<u8>, StatusCode, &str)> = vec![
        ("unsigned", strip_signature(&good), StatusCode::BAD_REQUEST, "unsigned"),
        ("wrong key", bundle(&key(2), 5, "1.0.0", 4000), StatusCode::BAD_REQUEST, "unknown_signer"),
        ("revoked key", bundle(&key(3), 5, "1.0.0", 4000), StatusCode::BAD_REQUEST, "unknown_signer"),
        ("malformed", b"PK\x03\x04 not a bundle".to_vec(), StatusCode::BAD_REQUEST, "bad_bundle"),
        ("empty", Vec::new(), StatusCode::BAD_REQUEST, "bad_bundle"),
        ("altered layer", altered, StatusCode::BAD_REQUEST, "bad_bundle"),
        ("layer too big for its region", huge, StatusCode::BAD_REQUEST, "layer_too_large"),
        ("oversized", vec![0xA1; keel_bundle::MAX_BUNDLE_SIZE + 1], StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
        (
            "over the body limit",
            vec![0xA1; keel_server::http::MAX_UPLOAD + 1],
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
        ),
    ];
    for (what, bytes, status, code) in refusals {
        let (s, body) = upload(&app, &token, bytes).await;
        assert_eq!((s, body["error"]["code"].as_str()), (status, Some(code)), "{what}: {body}");
        assert!(!body["error"]["message"].as_str().unwrap_or("").is_empty(), "{what}: a message");
    }
    let (_, body) = call(&app, "GET", "/v1/bundles", &token, None).await;
    assert_eq!(body, serde_json::json!([]), "nothing stored");
    assert_eq!(object_count(&store).await, 0, "no layer stored");

    // The good one is stored; the same app and sequence again is a conflict.
    let (s, body) = upload(&app, &token, good.clone()).await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    let b: BundleJson = serde_json::from_value(body).unwrap();
    assert_eq!((b.app.as_str(), b.version.as_str(), b.sequence, b.layers.len()), ("hello", "1.0.0", 5, 1));
    assert_eq!(b.size, 4256);
    let (s, body) = upload(&app, &token, bundle(&key(1), 5, "1.0.1", 4000)).await;
    assert_eq!((s, body["error"]["code"].as_str()), (StatusCode::CONFLICT, Some("duplicate_sequence")));
    let (_, body) = call(&app, "GET", "/v1/bundles", &token, None).await;
    assert_eq!(body.as_array().map(Vec::len), Some(1));
    assert_eq!(object_count(&store).await, 1);
    let (s, shown) = call(&app, "GET", &format!("/v1/bundles/{}", b.id), &token, None).await;
    assert_eq!((s, serde_json::from_value::<BundleJson>(shown).unwrap()), (StatusCode::OK, b));

    // Signer keys: listed with the revoked one marked; a revoked key cannot be added again.
    let (_, keys) = call(&app, "GET", "/v1/signer-keys", &token, None).await;
    let keys = keys.as_array().unwrap();
    assert_eq!(keys.len(), 2);
    assert!(keys.iter().any(|k| k["id"] == revoked.as_str() && k["revoked_at_us"].is_i64()));
    let pem = keel_bundle::public_key_to_pem(&key(3).verifying_key()).unwrap();
    let (s, _) =
        call(&app, "POST", "/v1/signer-keys", &token, Some(serde_json::json!({ "name": "again", "public_key": pem })))
            .await;
    assert_eq!(s, StatusCode::CONFLICT);
    let (s, body) = call(
        &app,
        "POST",
        "/v1/signer-keys",
        &token,
        Some(serde_json::json!({ "name": "x", "public_key": "not a key" })),
    )
    .await;
    assert_eq!((s, body["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("bad_key")));
}

async fn a_deployment_reaches_devices_by_id_and_by_tag(store: Store) {
    let w = world(store).await;
    let (d1, t1) = w.device("kd01", &[], 0).await;
    let (d2, t2) = w.device("kd02", &["field"], 0).await;
    let (d3, t3) = w.device("kd03", &["field"], 10).await;
    for d in [&d1, &d2, &d3] {
        tokio::time::timeout(WAIT, d.wait_online()).await.unwrap();
    }
    // The server has handled their `Ready`s (a device is online once it has the server's
    // `Welcome`, a little before): every deployment below reaches them as a notification, so
    // each device is offered each bundle once (a deploy landing between a session's start and
    // its `Ready` could load the target twice, and a reload offers again by design).
    tokio::time::timeout(WAIT, async {
        while w.store.counters().handshakes.load(std::sync::atomic::Ordering::Relaxed) < 3 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the server has the three devices online");
    // A 40 KiB layer: five pages.
    let b = w.upload_ok(bundle(&key(1), 5, "1.1.0", 40_000)).await;
    let size = b.size;

    let (s, body) = w.deploy(serde_json::json!({ "bundle": b.id, "device": "kd01" })).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["devices"], serde_json::json!(["kd01"]));
    let st = sim_until(&d1, "confirmed", |s| s.update.state == UpdateState::Confirmed).await;
    assert_eq!((st.update.installed, st.update.fetched_bytes), (5, size));
    let runs: Vec<(u32, u32)> = st.update.data_runs.iter().map(|r| (r.1, r.2)).collect();
    assert_eq!(runs, [(0, size as u32)], "one download from the start");
    assert_eq!(d2.stats().update.offers, 0, "not targeted");
    w.server_state("kd01", UpdateState::Confirmed).await;
    let dev = w.device_json("kd01").await;
    assert_eq!(dev.app_version.as_deref(), Some("1.1.0"), "the registry shows the confirmed app");
    let u = dev.update.expect("update shown");
    assert_eq!((u.state.as_deref(), u.installed, u.sequence), (Some("confirmed"), 5, 5));
    let t = u.target.unwrap();
    assert_eq!(
        (t.bundle.as_str(), t.sequence, t.version.as_str(), t.via.as_str()),
        (b.id.as_str(), 5, "1.1.0", "device")
    );
    let states: Vec<String> = w.events("kd01").await.into_iter().map(|e| e.state).collect();
    // No "installing": the device agent reports it only while a verified update waits for the
    // app (bundles with a politeness time); this one is committed and on trial at once.
    for s in ["deployed", "offered", "downloading", "trial", "confirmed"] {
        assert!(states.iter().any(|x| x == s), "{s} in {states:?}");
    }

    // By tag, by APP@VERSION: the device with sequence 10 installed refuses 5, and is not
    // offered it again.
    let (s, body) = w.deploy(serde_json::json!({ "bundle": "hello@1.1.0", "tag": "field" })).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!((body["via"].as_str(), body["devices"].as_array().map(Vec::len)), (Some("tag:field"), Some(2)));
    let st = sim_until(&d2, "confirmed", |s| s.update.state == UpdateState::Confirmed).await;
    assert_eq!(st.update.installed, 5);
    let st = sim_until(&d3, "refused", |s| s.update.state == UpdateState::Refused).await;
    assert_eq!((st.update.reason.as_str(), st.update.sequence), ("sequence not above the installed one", 5));
    w.server_state("kd03", UpdateState::Refused).await;
    let u = w.device_json("kd03").await.update.unwrap();
    assert_eq!((u.reason.as_str(), u.sequence, u.installed), ("sequence not above the installed one", 5, 10));
    assert_eq!(d3.stats().update.offers, 1);

    // Metrics count uploads, offers and bytes served.
    let metrics = keel_server::http::metrics_router(AppState::new(w.store.clone(), [9; 32]));
    let resp = metrics.oneshot(Request::get("/metrics").body(Body::empty()).unwrap()).await.unwrap();
    let text = String::from_utf8(resp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    assert!(text.contains("keel_bundle_uploads_total 1\n"), "{text}");
    assert!(text.contains("keel_update_offers_total 3\n"), "{text}");
    assert!(text.contains(&format!("keel_layer_bytes_served_total {}\n", 2 * size)), "{text}");

    // Bad deployments: unknown bundle, both or neither target, a tag nobody has.
    for (body, status) in [
        (serde_json::json!({ "bundle": "bn-000000000000", "device": "kd01" }), StatusCode::NOT_FOUND),
        (serde_json::json!({ "bundle": "hello@7.7.7", "device": "kd01" }), StatusCode::NOT_FOUND),
        (serde_json::json!({ "bundle": b.id, "device": "kd01", "tag": "field" }), StatusCode::BAD_REQUEST),
        (serde_json::json!({ "bundle": b.id }), StatusCode::BAD_REQUEST),
        (serde_json::json!({ "bundle": b.id, "tag": "nobody" }), StatusCode::NOT_FOUND),
        (serde_json::json!({ "bundle": b.id, "tag": "bad tag" }), StatusCode::BAD_REQUEST),
        (serde_json::json!({ "bundle": "", "device": "kd01" }), StatusCode::BAD_REQUEST),
        (serde_json::json!({ "bundle": 5 }), StatusCode::BAD_REQUEST),
    ] {
        let (s, resp) = w.deploy(body.clone()).await;
        assert_eq!(s, status, "{body} -> {resp}");
        assert!(resp["error"]["message"].is_string());
    }
    for t in [t1, t2, t3] {
        t.abort();
    }
    w.gateway.abort();
}

async fn a_tampered_layer_is_refused_by_the_device(store: Store) {
    let w = world(store).await;
    let (d, task) = w.device("kd01", &[], 0).await;
    let b = w.upload_ok(bundle(&key(1), 2, "2.0.0", 20_000)).await;
    // Someone with access to the object store swaps the layer for other bytes of the same size.
    let path = keel_server::ota::layer_key(&b.layers[0].sha256);
    let mut bytes = w.store.objects().get(&path).await.unwrap().bytes().await.unwrap().to_vec();
    bytes[300] ^= 0xFF;
    w.store.objects().put(&path, PutPayload::from(bytes)).await.unwrap();

    w.deploy(serde_json::json!({ "bundle": b.id, "device": "kd01" })).await;
    let st = sim_until(&d, "error", |s| s.update.state == UpdateState::Error).await;
    assert_eq!((st.update.reason.as_str(), st.update.installed), ("layer digest mismatch", 0));
    w.server_state("kd01", UpdateState::Error).await;
    let u = w.device_json("kd01").await.update.unwrap();
    assert_eq!((u.state.as_deref(), u.reason.as_str(), u.sequence), (Some("error"), "layer digest mismatch", 2));
    let events = w.events("kd01").await;
    assert!(events.iter().any(|e| e.state == "error" && e.text.contains("layer digest mismatch")), "{events:?}");
    task.abort();
    w.gateway.abort();
}

async fn a_download_resumes_after_a_server_restart(store: Store) {
    let mut w = world(store).await;
    let (d, task) = w.device("kd01", &[], 0).await;
    tokio::time::timeout(WAIT, d.wait_online()).await.unwrap();
    let b = w.upload_ok(bundle(&key(1), 3, "3.0.0", 60_000)).await;
    // Hold the download after two pages, then kill the server.
    d.pause_download_at(Some(16_384));
    w.deploy(serde_json::json!({ "bundle": b.id, "device": "kd01" })).await;
    let st = sim_until(&d, "paused", |s| s.update.paused).await;
    assert_eq!(st.update.fetched_bytes, 16_384);
    w.gateway.abort();
    let _ = (&mut w.gateway).await;
    let listener = TcpListener::bind(w.addr).await.unwrap();
    w.gateway = tokio::spawn(serve(listener, w.store.clone(), w.private.clone()));
    sim_until(&d, "reconnected", |s| s.sessions >= 2).await;
    d.pause_download_at(None);
    let st = sim_until(&d, "confirmed", |s| s.update.state == UpdateState::Confirmed).await;
    assert_eq!(st.update.installed, 3);
    let first_after = st.update.data_runs.iter().find(|r| r.0 >= 2).expect("data after the restart");
    assert_eq!(first_after.1, 16_384, "resumed from its own offset: {:?}", st.update.data_runs);
    assert_eq!(st.update.fetched_bytes, b.size, "nothing fetched twice");
    assert!(st.update.fetched_bytes < 2 * b.size);
    assert_eq!(st.update.offers, 1, "the resumed download needed no new offer");
    w.server_state("kd01", UpdateState::Confirmed).await;
    task.abort();
    w.gateway.abort();
}

async fn accounts_cannot_see_or_use_each_others_updates(store: Store) {
    let w = world(store).await;
    w.store.create_account("b", "Bolt").await.unwrap();
    let tb = w.store.create_token("b", "cli").await.unwrap();
    w.store.add_device("a", "kdaa", &[1; 32], "a-1").await.unwrap();
    w.store.set_tags("kdaa", &["field".to_string()]).await.unwrap();
    w.store.add_device("b", "kdbb", &[2; 32], "b-1").await.unwrap();
    let a_bundle = w.upload_ok(bundle(&key(1), 1, "1.0.0", 1000)).await;
    let (_, a_keys) = call(&w.app, "GET", "/v1/signer-keys", &w.token, None).await;
    let a_key = a_keys[0]["id"].as_str().unwrap().to_string();

    // B sees none of A's bundles or keys.
    assert_eq!(call(&w.app, "GET", "/v1/bundles", &tb, None).await.1, serde_json::json!([]));
    assert_eq!(call(&w.app, "GET", "/v1/signer-keys", &tb, None).await.1, serde_json::json!([]));
    let (s, body) = call(&w.app, "GET", &format!("/v1/bundles/{}", a_bundle.id), &tb, None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(!body.to_string().contains("hello"));
    assert_eq!(call(&w.app, "DELETE", &format!("/v1/signer-keys/{a_key}"), &tb, None).await.0, StatusCode::NOT_FOUND);
    // A's key does not sign for B: B has no keys.
    assert_eq!(upload(&w.app, &tb, bundle(&key(1), 1, "1.0.0", 1000)).await.0, StatusCode::BAD_REQUEST);
    // B cannot deploy A's bundle (by id or name), to its own or A's devices.
    for body in [
        serde_json::json!({ "bundle": a_bundle.id, "device": "kdbb" }),
        serde_json::json!({ "bundle": "hello@1.0.0", "device": "kdbb" }),
        serde_json::json!({ "bundle": a_bundle.id, "tag": "field" }),
    ] {
        assert_eq!(call(&w.app, "POST", "/v1/deployments", &tb, Some(body)).await.0, StatusCode::NOT_FOUND);
    }
    // B registers the same public key and uploads its own bundle; it still cannot target A's
    // devices, by id or by a tag only A's devices have.
    add_key(&w.app, &tb, &key(1), "b release").await;
    let (s, body) = upload(&w.app, &tb, bundle(&key(1), 1, "1.0.0", 1000)).await;
    assert_eq!(s, StatusCode::CREATED, "same app and sequence in another account is fine: {body}");
    let b_bundle = body["id"].as_str().unwrap().to_string();
    for body in [
        serde_json::json!({ "bundle": b_bundle, "device": "kdaa" }),
        serde_json::json!({ "bundle": b_bundle, "tag": "field" }),
    ] {
        assert_eq!(call(&w.app, "POST", "/v1/deployments", &tb, Some(body)).await.0, StatusCode::NOT_FOUND);
    }
    assert!(w.store.deployment("kdaa").await.unwrap().is_none());
    // Nor read A's device's update history.
    assert_eq!(call(&w.app, "GET", "/v1/devices/kdaa/update-events", &tb, None).await.0, StatusCode::NOT_FOUND);
    // A's own deployment works and shows up for A only.
    let (s, _) = w.deploy(serde_json::json!({ "bundle": a_bundle.id, "device": "kdaa" })).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(w.events("kdaa").await.len(), 1);
    w.gateway.abort();
}

async fn a_large_tag_deploy_reloads_no_unrelated_connection(store: Store) {
    use std::sync::atomic::Ordering::Relaxed;
    let w = world(store).await;
    let loads = || w.store.counters().target_loads.load(Relaxed);
    let (other, t1) = w.device("kd-other", &[], 0).await;
    tokio::time::timeout(WAIT, other.wait_online()).await.unwrap();
    // 1,100 registered devices tagged "fleet", and one connected member of the tag.
    let tags = vec!["fleet".to_string()];
    for i in 0..1100 {
        let id = format!("kd{i:032x}");
        w.store.add_device("a", &id, &public_key(&new_secret()), &id).await.unwrap();
        w.store.set_tags(&id, &tags).await.unwrap();
    }
    let (member, t2) = w.device("kd-member", &["fleet"], 0).await;
    tokio::time::timeout(WAIT, member.wait_online()).await.unwrap();
    // Both sessions are up on the server (their `Ready` was handled)...
    tokio::time::timeout(WAIT, async {
        while w.store.counters().handshakes.load(Relaxed) < 2 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("both devices online on the server");
    // ...and neither has a deployment: the handshake's lookup said so, nothing was loaded.
    assert_eq!(loads(), 0);
    let b = w.upload_ok(bundle(&key(1), 5, "1.1.0", 1000)).await;
    let (s, body) = w.deploy(serde_json::json!({ "bundle": b.id, "tag": "fleet" })).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["devices"].as_array().map(Vec::len), Some(1101));
    sim_until(&member, "offered", |s| s.update.offers == 1).await;
    // Then one more deployment, to the unrelated device itself: once it is offered, any reload
    // the tag deployment caused on its connection has happened before.
    let (s, body) = w.deploy(serde_json::json!({ "bundle": b.id, "device": "kd-other" })).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    sim_until(&other, "offered", |s| s.update.offers == 1).await;
    assert_eq!(loads(), 2, "the member and the unrelated device loaded once each, for their own deployments");
    t1.abort();
    t2.abort();
    w.gateway.abort();
}

async fn a_repeated_status_is_not_written_again(store: Store) {
    use keel_server::ota::UpdateStatus;
    store.create_account("a", "Acme").await.unwrap();
    store.add_device("a", "kd01", &[7; 32], "one").await.unwrap();
    let status = |progress, at| UpdateStatus {
        state: "downloading".into(),
        sequence: 5,
        installed: 1,
        progress,
        total: 100,
        reason: String::new(),
        updated_at: at,
    };
    // The first report is stored and is a change (an update event).
    assert!(store.store_update_status("kd01", &status(10, 1_000), true).await.unwrap());
    // The same report again (a device reconnecting, a fleet after a server restart): nothing
    // is written, so the registry keeps when the device first reported it.
    assert!(!store.store_update_status("kd01", &status(10, 2_000), true).await.unwrap());
    assert_eq!(store.update_status("kd01").await.unwrap(), Some(status(10, 1_000)));
    // Progress is written (not an event), with its time.
    assert!(!store.store_update_status("kd01", &status(20, 3_000), true).await.unwrap());
    assert_eq!(store.update_status("kd01").await.unwrap(), Some(status(20, 3_000)));
    assert_eq!(store.update_events("kd01", 10).await.unwrap().len(), 1);
}
