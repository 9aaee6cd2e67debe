//! Config values, secrets and the destination policy (issue 12, app connectivity) through the
//! real router and store: both scopes and stores, what each token scope may do, limits and bad
//! keys, secrets never leaving the server (no route returns one, the database holds only
//! ciphertext that does not decrypt in another row), device and account isolation of
//! `fetch_for_device`, and the policy's rules as stored and checked. Every test runs on SQLite
//! and PostgreSQL.

#[macro_use]
mod common;

use axum::http::StatusCode;
use common::{call, TestDb};
use keel_server::http::{router, AppState};
use keel_server::policy::{self, Decision};
use keel_server::settings::{
    FetchItem, FetchOutcome, MasterKey, Refusal, Scope, StoreKind, MAX_KEYS_PER_STORE, MAX_VALUE_BYTES,
};
use keel_server::store::Store;
use serde_json::json;

on_both_databases!("settings_", config_and_secrets_through_the_api);
on_both_databases!("settings_", limits_and_bad_keys_answer_clear_codes);
on_both_databases!("settings_", policy_rules_are_stored_and_checked);

/// `on_both_databases!` for a test that also looks at the database under the store: it gets the
/// database's URL too.
macro_rules! on_both_with_url {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let db = super::TestDb::sqlite(concat!("settings_", stringify!($name)));
                super::$name(db.open().await, db.url.clone()).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let db = super::TestDb::postgres(concat!("settings_", stringify!($name)));
                super::$name(db.open().await, db.url.clone()).await;
            }
        }
    };
}

on_both_with_url!(secrets_are_ciphertext_bound_to_their_row);

const A1: &str = "kd000000000000000000000000000000a1";
const A2: &str = "kd000000000000000000000000000000a2";
const B1: &str = "kd000000000000000000000000000000b1";
const PLAIN: &str = "correct horse battery staple";

/// Tokens of the two accounts' fixture.
struct Fixture {
    store: Store,
    app: axum::Router,
    admin: String,
    deploy: String,
    read: String,
    other: String,
}

/// Account `a` with devices A1 and A2 and an admin, a deploy and a read token; account `b` with
/// device B1 and an admin token. The store has a secrets key.
async fn fixture(store: Store) -> Fixture {
    let store = store.with_secrets_key(MasterKey::from_bytes([42; 32]));
    store.create_account("a", "A").await.unwrap();
    store.create_account("b", "B").await.unwrap();
    store.add_device("a", A1, &[1; 32], "a1").await.unwrap();
    store.add_device("a", A2, &[2; 32], "a2").await.unwrap();
    store.add_device("b", B1, &[3; 32], "b1").await.unwrap();
    let admin = store.create_token("a", "admin").await.unwrap();
    let deploy = store.create_token_with("a", "ci", "deploy", None).await.unwrap();
    let read = store.create_token_with("a", "ro", "read", None).await.unwrap();
    let other = store.create_token("b", "b-admin").await.unwrap();
    let app = router(AppState::new(store.clone(), [9; 32]));
    Fixture { store, app, admin, deploy, read, other }
}

fn item(scope: Scope, store: StoreKind, key: &str) -> FetchItem {
    FetchItem { scope, store, key: key.into() }
}

fn found(v: &str) -> FetchOutcome {
    FetchOutcome::Found(v.as_bytes().to_vec())
}

async fn config_and_secrets_through_the_api(store: Store) {
    let f = fixture(store).await;
    let app = &f.app;
    // Config, account-wide: a deploy token sets, a read token reads; the key keeps its slashes.
    let (s, v) =
        call(app, "PUT", "/v1/config/mqtt/main/host", Some(&f.deploy), Some(json!({"value": "broker.example.com"})))
            .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        (v["key"].as_str(), v["scope"].as_str(), v["size"].as_u64()),
        (Some("mqtt/main/host"), Some("account"), Some(18))
    );
    let (s, v) = call(app, "GET", "/v1/config/mqtt/main/host", Some(&f.read), None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["value"], "broker.example.com");
    // Percent-encoded slashes name the same key.
    let (s, v) = call(app, "GET", "/v1/config/mqtt%2Fmain%2Fhost", Some(&f.read), None).await;
    assert_eq!((s, v["value"].as_str()), (StatusCode::OK, Some("broker.example.com")));
    // Binary values go as base64.
    let (s, v) = call(app, "PUT", "/v1/config/blob", Some(&f.admin), Some(json!({"value_base64": "AP8B"}))).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (_, v) = call(app, "GET", "/v1/config/blob", Some(&f.read), None).await;
    assert_eq!((v["value"].is_null(), v["value_base64"].as_str(), v["size"].as_u64()), (true, Some("AP8B"), Some(3)));
    // Device-scoped config: its own list, not in the account's.
    let (s, v) =
        call(app, "PUT", &format!("/v1/devices/{A1}/config/rate"), Some(&f.deploy), Some(json!({"value": "10"}))).await;
    assert_eq!((s, v["scope"].as_str(), v["device_id"].as_str()), (StatusCode::OK, Some("device"), Some(A1)));
    let (_, v) = call(app, "GET", &format!("/v1/devices/{A1}/config"), Some(&f.read), None).await;
    assert_eq!(v.as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v[0]["value"], "10");
    let (_, v) = call(app, "GET", "/v1/config", Some(&f.read), None).await;
    let keys: Vec<&str> = v.as_array().unwrap().iter().map(|e| e["key"].as_str().unwrap()).collect();
    assert_eq!(keys, ["blob", "mqtt/main/host"]);
    let (_, v) = call(app, "GET", &format!("/v1/devices/{A2}/config"), Some(&f.read), None).await;
    assert_eq!(v, json!([]));

    // Scopes: read cannot write config; deploy cannot write secrets; read cannot delete.
    for (token, method, path, body) in [
        (&f.read, "PUT", "/v1/config/x".to_string(), Some(json!({"value": "1"}))),
        (&f.read, "DELETE", "/v1/config/mqtt/main/host".to_string(), None),
        (&f.deploy, "PUT", "/v1/secrets/x".to_string(), Some(json!({"value": "1"}))),
        (&f.deploy, "DELETE", "/v1/secrets/x".to_string(), None),
        (&f.deploy, "PUT", format!("/v1/devices/{A1}/secrets/x"), Some(json!({"value": "1"}))),
        (&f.read, "PUT", format!("/v1/devices/{A1}/config/x"), Some(json!({"value": "1"}))),
    ] {
        let (s, v) = call(app, method, &path, Some(token), body).await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (StatusCode::FORBIDDEN, Some("insufficient_scope")),
            "{method} {path}"
        );
    }

    // Secrets: set by an admin, listed without values, never returned.
    let (s, v) =
        call(app, "PUT", "/v1/secrets/mqtt/main/password", Some(&f.admin), Some(json!({"value": PLAIN}))).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!((v["key"].as_str(), v["size"].as_u64()), (Some("mqtt/main/password"), Some(PLAIN.len() as u64)));
    let (s, _) = call(
        app,
        "PUT",
        &format!("/v1/devices/{A1}/secrets/token"),
        Some(&f.admin),
        Some(json!({"value": "a1-token"})),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let mut everything = String::new();
    for path in [
        "/v1/secrets".to_string(),
        "/v1/secrets/mqtt/main/password".to_string(),
        format!("/v1/devices/{A1}/secrets"),
        format!("/v1/devices/{A1}/secrets/token"),
        "/v1/config/mqtt/main/password".to_string(),
        "/v1/config".to_string(),
        format!("/v1/devices/{A1}/config"),
        format!("/v1/devices/{A1}/config/token"),
        "/v1/openapi.json".to_string(),
    ] {
        for token in [&f.admin, &f.read] {
            let (s, v) = call(app, "GET", &path, Some(token), None).await;
            assert!(s == StatusCode::OK || s.is_client_error(), "{path}: {s}");
            everything.push_str(&v.to_string());
        }
    }
    assert!(!everything.contains(PLAIN) && !everything.contains("a1-token"), "a secret left the server");
    let (_, v) = call(app, "GET", "/v1/secrets", Some(&f.read), None).await;
    assert_eq!(v.as_array().unwrap().len(), 1);
    assert_eq!(v[0]["key"], "mqtt/main/password");
    assert_eq!(v[0]["scope"], "account");
    assert!(v[0].get("value").is_none(), "{v}");
    let (s, _) = call(app, "GET", "/v1/secrets/mqtt/main/password", Some(&f.admin), None).await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);

    // The device path: its account's values and its own, never another device's.
    let items = [
        item(Scope::Account, StoreKind::Config, "mqtt/main/host"),
        item(Scope::Account, StoreKind::Secret, "mqtt/main/password"),
        item(Scope::Device, StoreKind::Config, "rate"),
        item(Scope::Device, StoreKind::Secret, "token"),
        item(Scope::Account, StoreKind::Config, "rate"),
        item(Scope::Account, StoreKind::Config, "missing"),
        item(Scope::Device, StoreKind::Secret, "../token"),
        item(Scope::Account, StoreKind::Config, ""),
    ];
    let got = f.store.fetch_for_device(A1, &items).await.unwrap();
    assert_eq!(
        got,
        [
            found("broker.example.com"),
            found(PLAIN),
            found("10"),
            found("a1-token"),
            FetchOutcome::NotFound,
            FetchOutcome::NotFound,
            FetchOutcome::Invalid,
            FetchOutcome::Invalid
        ]
    );
    let got = f.store.fetch_for_device(A2, &items[..4]).await.unwrap();
    assert_eq!(got, [found("broker.example.com"), found(PLAIN), FetchOutcome::NotFound, FetchOutcome::NotFound]);
    // Another account's device sees nothing of account a.
    let got = f.store.fetch_for_device(B1, &items[..4]).await.unwrap();
    assert!(got.iter().all(|o| *o == FetchOutcome::NotFound), "{got:?}");
    assert!(f.store.fetch_for_device("kd-unknown", &items[..1]).await.is_err());
    assert_eq!(f.store.device_account(A1).await.unwrap().as_deref(), Some("a"));
    assert_eq!(f.store.device_account("kd-unknown").await.unwrap(), None);

    // Account isolation through the API: b sees none of a's values or devices.
    for path in [
        "/v1/config/mqtt/main/host".to_string(),
        format!("/v1/devices/{A1}/config"),
        format!("/v1/devices/{A1}/secrets"),
    ] {
        let (s, _) = call(app, "GET", &path, Some(&f.other), None).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{path}");
    }
    let (_, v) = call(app, "GET", "/v1/config", Some(&f.other), None).await;
    assert_eq!(v, json!([]));
    let (s, _) =
        call(app, "PUT", &format!("/v1/devices/{A1}/config/x"), Some(&f.other), Some(json!({"value": "1"}))).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = call(app, "DELETE", "/v1/secrets/mqtt/main/password", Some(&f.other), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // b's own value of the same key is b's alone.
    let (s, _) =
        call(app, "PUT", "/v1/config/mqtt/main/host", Some(&f.other), Some(json!({"value": "b.example"}))).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(f.store.fetch_for_device(B1, &items[..1]).await.unwrap(), [found("b.example")]);
    assert_eq!(f.store.fetch_for_device(A1, &items[..1]).await.unwrap(), [found("broker.example.com")]);

    // Updates replace; deletes answer 204 then 404.
    let (s, _) =
        call(app, "PUT", "/v1/config/mqtt/main/host", Some(&f.deploy), Some(json!({"value": "new.example"}))).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(f.store.fetch_for_device(A1, &items[..1]).await.unwrap(), [found("new.example")]);
    let (s, _) = call(app, "DELETE", "/v1/config/mqtt/main/host", Some(&f.deploy), None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, v) = call(app, "DELETE", "/v1/config/mqtt/main/host", Some(&f.deploy), None).await;
    assert_eq!((s, v["error"]["code"].as_str()), (StatusCode::NOT_FOUND, Some("not_found")));
    let (s, _) = call(app, "GET", "/v1/config/mqtt/main/host", Some(&f.read), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = call(app, "DELETE", "/v1/secrets/mqtt/main/password", Some(&f.admin), None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = call(app, "DELETE", &format!("/v1/devices/{A1}/config/rate"), Some(&f.deploy), None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert_eq!(
        f.store.fetch_for_device(A1, &items[1..3]).await.unwrap(),
        [FetchOutcome::NotFound, FetchOutcome::NotFound]
    );
    // Deleting a device deletes its values.
    f.store.delete_device(A1).await.unwrap();
    assert!(f.store.settings("a", Some(A1), StoreKind::Secret).await.unwrap().is_empty());

    // The OpenAPI document names the key a plain path parameter.
    let (_, doc) = call(app, "GET", "/v1/openapi.json", None, None).await;
    let paths = doc["paths"].as_object().unwrap();
    for p in ["/v1/config/{key}", "/v1/devices/{id}/secrets/{key}", "/v1/policy/rules/{id}", "/v1/policy"] {
        assert!(paths.contains_key(p), "{p} missing");
    }
    assert!(!paths.keys().any(|p| p.contains('*')));
}

async fn secrets_are_ciphertext_bound_to_their_row(store: Store, url: String) {
    let f = fixture(store).await;
    let app = &f.app;
    let (s, _) = call(app, "PUT", "/v1/secrets/db/password", Some(&f.admin), Some(json!({"value": PLAIN}))).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) =
        call(app, "PUT", &format!("/v1/devices/{A1}/secrets/db/password"), Some(&f.admin), Some(json!({"value": "x"})))
            .await;
    assert_eq!(s, StatusCode::OK);
    // The row holds neither the value nor its hex.
    let raw = raw_secret_values(&url).await;
    assert_eq!(raw.len(), 2);
    let plain_hex: String = PLAIN.bytes().map(|b| format!("{b:02x}")).collect();
    for r in &raw {
        assert!(!r.contains(PLAIN) && !r.contains(&plain_hex), "plaintext in the database: {r}");
        // Version byte, 24-byte nonce, ciphertext, 16-byte tag.
        assert!(r.len() >= 2 * (1 + 24 + 16), "{r}");
    }
    // A ciphertext moved to another row (the device's) does not decrypt there.
    let account_row = raw_secret(&url, "").await;
    set_raw_secret(&url, A1, &account_row).await;
    let moved = f.store.fetch_for_device(A1, &[item(Scope::Device, StoreKind::Secret, "db/password")]).await;
    assert!(moved.is_err(), "a moved ciphertext decrypted: {moved:?}");
    // The account's own row still does.
    let ok = f.store.fetch_for_device(A1, &[item(Scope::Account, StoreKind::Secret, "db/password")]).await.unwrap();
    assert_eq!(ok, [found(PLAIN)]);
    // Under another master key nothing decrypts.
    let other_key = f.store.clone().with_secrets_key(MasterKey::from_bytes([43; 32]));
    assert!(other_key.fetch_for_device(A1, &[item(Scope::Account, StoreKind::Secret, "db/password")]).await.is_err());
    // Without a master key secrets are refused with a clear code; config still works.
    {
        let keyless = Store::open(&url).await.unwrap();
        let app = router(AppState::new(keyless, [9; 32]));
        let (s, v) = call(&app, "PUT", "/v1/secrets/k", Some(&f.admin), Some(json!({"value": "v"}))).await;
        assert_eq!((s, v["error"]["code"].as_str()), (StatusCode::SERVICE_UNAVAILABLE, Some("secrets_unavailable")));
        let (s, _) = call(&app, "PUT", "/v1/config/k", Some(&f.admin), Some(json!({"value": "v"}))).await;
        assert_eq!(s, StatusCode::OK);
    }
    // The SQLite file and its WAL hold no plaintext either.
    if let Some(path) = url.strip_prefix("sqlite://").map(|p| p.split('?').next().unwrap_or(p).to_string()) {
        for p in [path.clone(), format!("{path}-wal")] {
            if let Ok(bytes) = std::fs::read(&p) {
                assert!(!bytes.windows(PLAIN.len()).any(|w| w == PLAIN.as_bytes()), "plaintext in {p}");
            }
        }
    }
}

async fn limits_and_bad_keys_answer_clear_codes(store: Store) {
    let f = fixture(store).await;
    let app = &f.app;
    let code = |v: &serde_json::Value| v["error"]["code"].as_str().unwrap_or_default().to_string();
    let long_key = "k".repeat(129);
    for path in [
        "/v1/config/a//b".to_string(),
        "/v1/config/a/../b".to_string(),
        "/v1/config/./a".to_string(),
        "/v1/config/a%20b".to_string(),
        "/v1/config/a%00b".to_string(),
        "/v1/config/caf%C3%A9".to_string(),
        "/v1/config/a/".to_string(),
        format!("/v1/config/{long_key}"),
        "/v1/secrets/a;b".to_string(),
        format!("/v1/devices/{A1}/config/a//b"),
    ] {
        for method in ["PUT", "GET", "DELETE"] {
            let (s, v) = call(app, method, &path, Some(&f.admin), Some(json!({"value": "1"}))).await;
            if method == "GET" && path.starts_with("/v1/secrets") {
                assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
                continue;
            }
            assert_eq!((s, code(&v).as_str()), (StatusCode::BAD_REQUEST, "bad_key"), "{method} {path}: {v}");
        }
    }
    let (s, _) =
        call(app, "PUT", &format!("/v1/config/{}", "k".repeat(128)), Some(&f.admin), Some(json!({"value": "1"}))).await;
    assert_eq!(s, StatusCode::OK);
    // Values: at most 4096 bytes, exactly one form.
    let (s, _) =
        call(app, "PUT", "/v1/config/big", Some(&f.admin), Some(json!({"value": "x".repeat(MAX_VALUE_BYTES)}))).await;
    assert_eq!(s, StatusCode::OK);
    for (path, body) in [
        ("/v1/config/big", json!({"value": "x".repeat(MAX_VALUE_BYTES + 1)})),
        ("/v1/secrets/big", json!({"value": "é".repeat(MAX_VALUE_BYTES / 2 + 1)})),
    ] {
        let (s, v) = call(app, "PUT", path, Some(&f.admin), Some(body)).await;
        assert_eq!((s, code(&v).as_str()), (StatusCode::PAYLOAD_TOO_LARGE, "value_too_large"), "{path}");
    }
    for body in
        [json!({}), json!({"value": "a", "value_base64": "YQ=="}), json!({"value_base64": "!!"}), json!({"value": 5})]
    {
        let (s, v) = call(app, "PUT", "/v1/config/x", Some(&f.admin), Some(body.clone())).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}: {v}");
        assert!(["bad_value", "bad_body"].contains(&code(&v).as_str()), "{body}: {v}");
    }
    // At most 512 keys per store per account, both scopes counted; an update at the limit is fine.
    let have = f.store.settings("a", None, StoreKind::Config).await.unwrap().len();
    for i in have..MAX_KEYS_PER_STORE - 1 {
        let r = f.store.set_setting("a", None, StoreKind::Config, &format!("fill/{i}"), b"v").await.unwrap();
        assert!(r.is_ok(), "{i}: {r:?}");
    }
    let (s, _) =
        call(app, "PUT", &format!("/v1/devices/{A1}/config/last"), Some(&f.admin), Some(json!({"value": "1"}))).await;
    assert_eq!(s, StatusCode::OK);
    let (s, v) = call(app, "PUT", "/v1/config/one-more", Some(&f.admin), Some(json!({"value": "1"}))).await;
    assert_eq!((s, code(&v).as_str()), (StatusCode::CONFLICT, "too_many_keys"), "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("512"), "{v}");
    let (s, _) = call(app, "PUT", "/v1/config/big", Some(&f.admin), Some(json!({"value": "smaller"}))).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        f.store.set_setting("a", Some(A2), StoreKind::Config, "x", b"v").await.unwrap().unwrap_err(),
        Refusal::TooMany
    );
    // The other store and the other account are not full.
    let (s, _) = call(app, "PUT", "/v1/secrets/one-more", Some(&f.admin), Some(json!({"value": "1"}))).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = call(app, "PUT", "/v1/config/one-more", Some(&f.other), Some(json!({"value": "1"}))).await;
    assert_eq!(s, StatusCode::OK);
}

async fn policy_rules_are_stored_and_checked(store: Store) {
    let f = fixture(store).await;
    let app = &f.app;
    let (s, v) = call(app, "GET", "/v1/policy", Some(&f.read), None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["rules"], json!([]));
    assert!(v["default"].as_str().unwrap().contains("https"), "{v}");
    // Only admin tokens change the policy.
    let rule = json!({"action": "allow", "target": "127.0.0.1/32", "port": 8443, "scheme": "https"});
    for token in [&f.read, &f.deploy] {
        let (s, _) = call(app, "POST", "/v1/policy/rules", Some(token), Some(rule.clone())).await;
        assert_eq!(s, StatusCode::FORBIDDEN);
    }
    let (s, loopback) = call(app, "POST", "/v1/policy/rules", Some(&f.admin), Some(rule)).await;
    assert_eq!(s, StatusCode::CREATED, "{loopback}");
    assert_eq!((loopback["target"].as_str(), loopback["port"].as_u64()), (Some("127.0.0.1/32"), Some(8443)));
    let (s, _) = call(
        app,
        "POST",
        "/v1/policy/rules",
        Some(&f.admin),
        Some(json!({"action": "deny", "target": "EVIL.example.com."})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, _) = call(
        app,
        "POST",
        "/v1/policy/rules",
        Some(&f.admin),
        Some(json!({"action": "allow", "target": "*.example.com", "scheme": "mqtt"})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    for bad in [
        json!({"action": "permit", "target": "a.com"}),
        json!({"action": "allow", "target": "10.0.0.0/33"}),
        json!({"action": "allow", "target": "a b"}),
        json!({"action": "allow", "target": "a.com", "scheme": "ftp"}),
        json!({"action": "allow", "target": "a.com", "port": 0}),
    ] {
        let (s, v) = call(app, "POST", "/v1/policy/rules", Some(&f.admin), Some(bad.clone())).await;
        assert_eq!((s, v["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("bad_rule")), "{bad}: {v}");
    }
    let (s, v) = call(
        app,
        "POST",
        "/v1/policy/rules",
        Some(&f.admin),
        Some(json!({"action": "allow", "target": "a.com", "port": 70000})),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");

    // The stored rules, in order, as `check` takes them.
    let account = f.store.device_account(A1).await.unwrap().unwrap();
    let rules = f.store.destination_rules(&account).await.unwrap();
    assert_eq!(rules.len(), 3);
    let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
    let allowed = |rules: &[policy::Rule], scheme: &str, host: &str, port: u16, a: &str| {
        policy::check(rules, scheme, host, port, ip(a)).allowed()
    };
    assert!(allowed(&rules, "https", "localhost", 8443, "127.0.0.1"));
    assert!(allowed(&rules, "https", "localhost", 8443, "::ffff:127.0.0.1"));
    assert!(!allowed(&rules, "https", "localhost", 8444, "127.0.0.1"));
    assert!(!allowed(&rules, "http", "localhost", 8443, "127.0.0.1"));
    assert!(!allowed(&rules, "mqtt", "evil.example.com", 1883, "93.184.216.34"));
    assert!(allowed(&rules, "mqtt", "broker.example.com", 1883, "93.184.216.34"));
    // DNS rebinding: the allowed name resolving to a private address is still denied.
    assert!(!allowed(&rules, "mqtt", "broker.example.com", 1883, "169.254.169.254"));
    assert!(!allowed(&rules, "mqtt", "broker.example.com", 1883, "::1"));
    // Defaults apply where no rule matches.
    assert!(allowed(&rules, "https", "api.other.net", 443, "93.184.216.34"));
    assert!(!allowed(&rules, "http", "api.other.net", 80, "93.184.216.34"));

    // A deny put first wins over the allow.
    let (s, first) = call(
        app,
        "POST",
        "/v1/policy/rules",
        Some(&f.admin),
        Some(json!({"action": "deny", "target": "127.0.0.1", "first": true})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    let rules = f.store.destination_rules("a").await.unwrap();
    assert_eq!(rules[0].id, first["id"].as_str().unwrap());
    let d = policy::check(&rules, "https", "localhost", 8443, ip("127.0.0.1"));
    assert_eq!(
        d,
        Decision::Deny {
            reason: format!("denied by rule {} (127.0.0.1/32)", first["id"].as_str().unwrap()),
            rule: Some(first["id"].as_str().unwrap().into())
        }
    );
    // The same through the check route.
    let (s, v) = call(
        app,
        "POST",
        "/v1/policy/check",
        Some(&f.read),
        Some(json!({"scheme": "https", "host": "localhost", "port": 8443, "ip": "127.0.0.1"})),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!((v["allowed"].as_bool(), v["rule"].as_str()), (Some(false), first["id"].as_str()));
    let (_, v) = call(app, "GET", "/v1/policy", Some(&f.read), None).await;
    let ids: Vec<&str> = v["rules"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 4);
    assert_eq!(ids[0], first["id"].as_str().unwrap());
    assert_eq!(ids[1], loopback["id"].as_str().unwrap());

    // Another account sees none of them and cannot remove them.
    let (_, v) = call(app, "GET", "/v1/policy", Some(&f.other), None).await;
    assert_eq!(v["rules"], json!([]));
    assert!(f.store.destination_rules("b").await.unwrap().is_empty());
    let path = format!("/v1/policy/rules/{}", first["id"].as_str().unwrap());
    let (s, _) = call(app, "DELETE", &path, Some(&f.other), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = call(app, "DELETE", &path, Some(&f.deploy), None).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = call(app, "DELETE", &path, Some(&f.admin), None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = call(app, "DELETE", &path, Some(&f.admin), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(allowed(&f.store.destination_rules("a").await.unwrap(), "https", "localhost", 8443, "127.0.0.1"));

    // The operator's rules come after every account's own.
    let op = f.store.clone().with_operator_rules(policy::operator_rules("10.0.0.0/8").unwrap());
    let rules = op.destination_rules("b").await.unwrap();
    assert_eq!(rules.len(), 1);
    assert!(allowed(&rules, "mqtt", "broker.internal", 1883, "10.1.2.3"));
    let app_op = router(AppState::new(op, [9; 32]));
    let (_, v) = call(&app_op, "GET", "/v1/policy", Some(&f.other), None).await;
    assert_eq!(v["operator_rules"][0]["target"], "10.0.0.0/8");

    // At most 256 rules per account.
    let have = f.store.policy_rules("a").await.unwrap().len();
    for i in have..policy::MAX_RULES_PER_ACCOUNT {
        let r = f.store.add_policy_rule("a", "deny", &format!("h{i}.example.net"), None, None, false).await.unwrap();
        assert!(r.is_ok(), "{i}");
    }
    let (s, v) = call(
        app,
        "POST",
        "/v1/policy/rules",
        Some(&f.admin),
        Some(json!({"action": "deny", "target": "x.example.net"})),
    )
    .await;
    assert_eq!((s, v["error"]["code"].as_str()), (StatusCode::CONFLICT, Some("too_many_rules")), "{v}");
}

/// A backup holds `secrets.key`, and a restore brings it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_keeps_the_secrets_key() {
    if std::env::var_os(keel_server::settings::SECRETS_KEY_ENV).is_some() {
        return;
    }
    let base = std::env::temp_dir().join(format!("keel-settings-backup-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let (data, out, restored) = (base.join("data"), base.join("out"), base.join("restored"));
    keel_server::node::create_data_dir(&data).unwrap();
    keel_server::node::server_key(&data).unwrap();
    MasterKey::load(&data).unwrap();
    let db = TestDb::sqlite("settings-backup");
    let src = keel_server::backup::Source { data_dir: &data, database_url: Some(&db.url), objects_dir: None };
    db.open().await;
    keel_server::backup::backup(&src, &out).await.unwrap();
    keel_server::backup::restore(&out, &restored).unwrap();
    let key = keel_server::settings::SECRETS_KEY_FILE;
    assert_eq!(std::fs::read(restored.join(key)).unwrap(), std::fs::read(data.join(key)).unwrap());
    let _ = std::fs::remove_dir_all(&base);
}

// Raw database access (the test looks under the store, as an attacker with the database would).

async fn pool(url: &str) -> sqlx::AnyPool {
    sqlx::AnyPool::connect(url).await.unwrap()
}

async fn raw_secret_values(url: &str) -> Vec<String> {
    use sqlx::Row;
    let rows =
        sqlx::query("SELECT value FROM settings WHERE store = 'secret'").fetch_all(&pool(url).await).await.unwrap();
    rows.iter().map(|r| r.try_get::<String, _>("value").unwrap()).collect()
}

async fn raw_secret(url: &str, device: &str) -> String {
    use sqlx::Row;
    let row = sqlx::query("SELECT value FROM settings WHERE store = 'secret' AND device_id = $1")
        .bind(device)
        .fetch_one(&pool(url).await)
        .await
        .unwrap();
    row.try_get("value").unwrap()
}

async fn set_raw_secret(url: &str, device: &str, value: &str) {
    sqlx::query("UPDATE settings SET value = $1 WHERE store = 'secret' AND device_id = $2")
        .bind(value)
        .bind(device)
        .execute(&pool(url).await)
        .await
        .unwrap();
}
