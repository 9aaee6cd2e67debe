//! Upload and deploy rules of the API (issue 10): a bundle sequence is unique per account (the
//! device's anti-rollback counter covers every app), a sequence far ahead is refused unless
//! forced, bundles no device can install are refused, and a bundle whose signer key was revoked
//! is deployed only when forced. On SQLite and PostgreSQL.

#[macro_use]
mod common;

use axum::http::StatusCode;
use common::TestDb;
use keel_bundle::{build_bundle, reference_region_capacity, BundleSpec, LayerSpec, Policies, SigningKey, Target};
use keel_server::http::{router, AppState};
use keel_server::store::Store;

on_both_databases!("api-bundles-", upload_and_deploy_rules);

async fn upload(app: &axum::Router, token: &str, query: &str, bundle: Vec<u8>) -> (StatusCode, serde_json::Value) {
    common::upload(app, token, query, bundle).await
}

fn app_slot(size: usize, name: &str, version: &str) -> Vec<u8> {
    let image: Vec<u8> = (0..size).map(|i| (i * 7 + i / 251) as u8).collect();
    let h = keel_image::build_header(&image, 0x0020_0000, 0x2800_0000, name, version, (2, 0));
    let mut slot = h.to_bytes().to_vec();
    slot.extend(image);
    slot
}

fn build(k: &SigningKey, app: &str, sequence: u64, layers: &[LayerSpec<'_>]) -> Vec<u8> {
    let policies = Policies { app_name: app, app_version: "1.0.0", ..Policies::default() };
    build_bundle(&BundleSpec { sequence, layers, policies }, k, reference_region_capacity).unwrap()
}

fn bundle(k: &SigningKey, app: &str, sequence: u64) -> Vec<u8> {
    let slot = app_slot(1000, app, "1.0.0");
    build(k, app, sequence, &[LayerSpec { id: "app", target: Target::AppSlot, bytes: &slot }])
}

async fn upload_and_deploy_rules(store: Store) {
    store.create_account("a", "Acme").await.unwrap();
    store.create_account("b", "Bolt").await.unwrap();
    store.add_device("a", "kdaaaa", &[1; 32], "acme-1").await.unwrap();
    let token = store.create_token("a", "cli").await.unwrap();
    let tb = store.create_token("b", "cli").await.unwrap();
    let app = router(AppState::new(store.clone(), [9; 32]));
    let key = SigningKey::from_bytes(&[7; 32]);
    let pem = keel_bundle::public_key_to_pem(&key.verifying_key()).unwrap();
    let mut key_ids = Vec::new();
    for t in [&token, &tb] {
        let body = serde_json::json!({ "name": "release", "public_key": pem });
        let (s, body) = common::call(&app, "POST", "/v1/signer-keys", Some(t), Some(body)).await;
        assert_eq!(s, StatusCode::CREATED, "{body}");
        key_ids.push(body["id"].as_str().unwrap().to_string());
    }

    // Sequences are unique per account across apps; another account may use the same one.
    let (s, body) = upload(&app, &token, "", bundle(&key, "hello", 5)).await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    let first = body["id"].as_str().unwrap().to_string();
    let (s, body) = upload(&app, &token, "", bundle(&key, "other", 5)).await;
    assert_eq!((s, body["error"]["code"].as_str()), (StatusCode::CONFLICT, Some("duplicate_sequence")), "{body}");
    assert_eq!(upload(&app, &tb, "", bundle(&key, "other", 5)).await.0, StatusCode::CREATED);

    // A sequence far ahead of the clock and of the account's bundles locks devices out of every
    // later update: refused unless forced.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    for far in [now + 20 * 365 * 86_400, 1 << 62, i64::MAX as u64] {
        let (s, body) = upload(&app, &token, "", bundle(&key, "hello", far)).await;
        assert_eq!((s, body["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("sequence_jump")), "{far}");
        assert!(body["error"]["message"].as_str().unwrap().contains("force"), "{body}");
    }
    let (s, body) = upload(&app, &token, "?force=true", bundle(&key, "hello", 1 << 62)).await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    // A Unix-time sequence (the `keel bundle` default) is fine.
    assert_eq!(upload(&app, &token, "", bundle(&key, "hello", now)).await.0, StatusCode::CREATED);

    // Bundles no device can install: more than one component, another id, another target.
    let slot = app_slot(1000, "hello", "1.0.0");
    let blob = vec![0x5a; 1000];
    let uninstallable: Vec<(&str, Vec<LayerSpec<'_>>)> = vec![
        (
            "two components",
            vec![
                LayerSpec { id: "app", target: Target::AppSlot, bytes: &slot },
                LayerSpec { id: "data", target: Target::AppData, bytes: &blob },
            ],
        ),
        ("another id", vec![LayerSpec { id: "main", target: Target::AppSlot, bytes: &slot }]),
        ("visor slot", vec![LayerSpec { id: "app", target: Target::VisorSlot, bytes: &blob }]),
        ("app data", vec![LayerSpec { id: "app", target: Target::AppData, bytes: &blob }]),
    ];
    for (i, (what, layers)) in uninstallable.iter().enumerate() {
        let (s, body) = upload(&app, &token, "", build(&key, "hello", 100 + i as u64, layers)).await;
        assert_eq!((s, body["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("uninstallable")), "{what}");
    }

    // A bundle whose signer key was revoked is deployed only when forced.
    let deploy = |force: bool| serde_json::json!({ "bundle": first, "device": "kdaaaa", "force": force });
    assert_eq!(
        common::call(&app, "POST", "/v1/deployments", Some(&token), Some(deploy(false))).await.0,
        StatusCode::OK
    );
    let path = format!("/v1/signer-keys/{}", key_ids[0]);
    assert_eq!(common::call(&app, "DELETE", &path, Some(&token), None).await.0, StatusCode::NO_CONTENT);
    let (s, body) = common::call(&app, "POST", "/v1/deployments", Some(&token), Some(deploy(false))).await;
    assert_eq!((s, body["error"]["code"].as_str()), (StatusCode::CONFLICT, Some("signer_revoked")), "{body}");
    let (s, body) = common::call(&app, "POST", "/v1/deployments", Some(&token), Some(deploy(true))).await;
    assert_eq!(s, StatusCode::OK, "{body}");
}

on_both_databases!("api-bundles-", concurrent_uploads_of_one_sequence_store_one);

/// Concurrent uploads of bundles (different apps) with one sequence: exactly one is stored.
async fn concurrent_uploads_of_one_sequence_store_one(store: Store) {
    store.create_account("a", "Acme").await.unwrap();
    let token = store.create_token("a", "cli").await.unwrap();
    let app = router(AppState::new(store.clone(), [9; 32]));
    let key = SigningKey::from_bytes(&[7; 32]);
    let pem = keel_bundle::public_key_to_pem(&key.verifying_key()).unwrap();
    let body = serde_json::json!({ "name": "release", "public_key": pem });
    assert_eq!(common::call(&app, "POST", "/v1/signer-keys", Some(&token), Some(body)).await.0, StatusCode::CREATED);
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let (app, token, b) = (app.clone(), token.clone(), bundle(&key, &format!("app{i}"), 42));
            tokio::spawn(async move { upload(&app, &token, "", b).await.0 })
        })
        .collect();
    let mut got = Vec::new();
    for t in tasks {
        got.push(t.await.unwrap());
    }
    assert_eq!(got.iter().filter(|s| **s == StatusCode::CREATED).count(), 1, "{got:?}");
    assert!(got.iter().all(|s| [StatusCode::CREATED, StatusCode::CONFLICT].contains(s)), "{got:?}");
    let (_, list) = common::call(&app, "GET", "/v1/bundles", Some(&token), None).await;
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
}
