//! Trial policies end to end: one signed bundle deployed by tag to simulated devices (keel-sim:
//! the visor's device core in a tokio shell) whose apps confirm, crash, panic at every start,
//! hang or stay silent, under a confirm-by-link policy and a confirm-by-app policy. Each device
//! must end in the state the policy says — in its own journal and on the server. Every test runs
//! on SQLite and on PostgreSQL.

#[macro_use]
mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::{sim_until, TestDb, WAIT};
use http_body_util::BodyExt;
use keel_bundle::{build_bundle, reference_region_capacity, BundleSpec, LayerSpec, Policies, SigningKey, Target};
use keel_link::msg::UpdateState;
use keel_server::gateway::{generate_keypair, serve};
use keel_server::http::{router, AppState, BundleJson, DeviceJson, UpdateEventJson};
use keel_server::store::Store;
use keel_sim::{new_secret, public_key, Outcome, Reason, SimApp, SimDevice, Slot};
use tokio::net::TcpListener;
use tower::ServiceExt;

on_both_databases!("trial-", confirm_by_link_each_app_ends_as_the_policy_says);
on_both_databases!("trial-", confirm_by_app_each_app_ends_as_the_policy_says);

/// The grace time of the confirm-by-link bundle: far longer than a crashing, panicking or
/// hanging app needs to spend its crash budget (2 crashes: about 1.1 s with the supervisor's 1 s
/// backoff and a 100 ms watchdog), so a slow machine cannot end a trial by grace time first; the
/// silent app's clock is moved past it instead of waiting.
const LINK_GRACE_S: u32 = 60;

/// The trial's crash budget.
const MAX_CRASHES: u8 = 2;

/// The bundle's sequence number.
const SEQ: u64 = 2;

/// The devices: id, app, and the outcome under each policy (by link, by app).
const DEVICES: [(&str, SimApp, Outcome, Outcome); 6] = [
    ("kdconfirm", SimApp::Confirm, Outcome::Confirmed, Outcome::Confirmed),
    ("kdcrash", SimApp::Crash, Outcome::RolledBack(Reason::CrashLoop), Outcome::RolledBack(Reason::CrashLoop)),
    ("kdpanic", SimApp::PanicLoop, Outcome::RolledBack(Reason::CrashLoop), Outcome::RolledBack(Reason::CrashLoop)),
    ("kdhang", SimApp::Hang, Outcome::RolledBack(Reason::Watchdog), Outcome::RolledBack(Reason::Watchdog)),
    // Silent: the link policy confirms an app that runs with the link up; the app policy rolls
    // back an app that never confirms.
    ("kdsilent", SimApp::Silent, Outcome::Confirmed, Outcome::RolledBack(Reason::NotConfirmed)),
    // Mute: runs with the link up but gives no sign of life: the link policy does not confirm it.
    ("kdmute", SimApp::Mute, Outcome::RolledBack(Reason::NoSignOfLife), Outcome::RolledBack(Reason::NotConfirmed)),
];

/// Indices in [`DEVICES`] of the apps that neither crash nor confirm: their clocks jump.
const QUIET: [usize; 2] = [4, 5];

fn key() -> SigningKey {
    SigningKey::from_bytes(&[1; 32])
}

/// A bundle of app "hello" 2.0.0 (sequence [`SEQ`]) with `grace_s` as its connectivity grace
/// time (0: the app must confirm).
fn bundle(grace_s: u32) -> Vec<u8> {
    let image: Vec<u8> = (0..20_000).map(|i| (i * 7 + i / 251) as u8).collect();
    let h = keel_image::build_header(&image, 0x0020_0000, 0x2800_0000, "hello", "2.0.0", (2, 0)); // the visor ABI major (keel_abi::ABI_MAJOR)
    let mut slot = h.to_bytes().to_vec();
    slot.extend(image);
    let policies = Policies {
        app_name: "hello",
        app_version: "2.0.0",
        connectivity_grace_time_s: grace_s,
        max_trial_crashes: MAX_CRASHES,
        ..Policies::default()
    };
    let layers = [LayerSpec { id: "app", target: Target::AppSlot, bytes: &slot }];
    build_bundle(&BundleSpec { sequence: SEQ, layers: &layers, policies }, &key(), reference_region_capacity).unwrap()
}

struct World {
    store: Store,
    app: axum::Router,
    token: String,
    addr: SocketAddr,
    public: [u8; 32],
    gateway: tokio::task::JoinHandle<()>,
}

/// Account "a" with a token and signer key `key()`, the API and a running gateway.
async fn world(store: Store) -> World {
    store.create_account("a", "Acme").await.unwrap();
    let token = store.create_token("a", "cli").await.unwrap();
    let (private, public) = generate_keypair();
    let app = router(AppState::new(store.clone(), public));
    let pem = keel_bundle::public_key_to_pem(&key().verifying_key()).unwrap();
    let body = serde_json::json!({ "name": "release", "public_key": pem });
    let (s, body) = common::call(&app, "POST", "/v1/signer-keys", Some(&token), Some(body)).await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let gateway = tokio::spawn(serve(listener, store.clone(), private));
    World { store, app, token, addr, public, gateway }
}

impl World {
    /// Registers device `id` (tag "trial") and runs a factory-fresh simulated device for it
    /// whose updated app behaves as `app`.
    async fn device(&self, id: &str, app: SimApp) -> (Arc<SimDevice>, tokio::task::JoinHandle<()>) {
        let secret = new_secret();
        self.store.add_device("a", id, &public_key(&secret), id).await.unwrap();
        self.store.set_tags(id, &["trial".to_string()]).await.unwrap();
        let dev = Arc::new(
            SimDevice::new(secret, self.public, 1)
                .with_updates(vec![key().verifying_key().to_bytes()], 0)
                .with_app(app),
        );
        let (d, addr) = (dev.clone(), self.addr);
        let task = tokio::spawn(async move { d.run(addr, 20).await });
        (dev, task)
    }

    async fn upload_and_deploy_to_the_tag(&self, bundle: Vec<u8>) {
        let req = Request::post("/v1/bundles")
            .header("authorization", format!("Bearer {}", self.token))
            .header("content-type", "application/octet-stream")
            .body(Body::from(bundle))
            .unwrap();
        let resp = self.app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(status, StatusCode::CREATED, "{}", String::from_utf8_lossy(&body));
        let b: BundleJson = serde_json::from_slice(&body).unwrap();
        let deploy = serde_json::json!({ "bundle": b.id, "tag": "trial" });
        let (s, body) = common::call(&self.app, "POST", "/v1/deployments", Some(&self.token), Some(deploy)).await;
        assert_eq!(s, StatusCode::OK, "{body}");
        assert_eq!(body["devices"].as_array().map(Vec::len), Some(DEVICES.len()), "{body}");
    }

    async fn device_json(&self, id: &str) -> DeviceJson {
        let path = format!("/v1/devices/{id}");
        let (s, body) = common::call(&self.app, "GET", &path, Some(&self.token), None).await;
        assert_eq!(s, StatusCode::OK, "{body}");
        serde_json::from_value(body).unwrap()
    }

    async fn events(&self, id: &str) -> Vec<UpdateEventJson> {
        let path = format!("/v1/devices/{id}/update-events");
        let (s, body) = common::call(&self.app, "GET", &path, Some(&self.token), None).await;
        assert_eq!(s, StatusCode::OK, "{body}");
        serde_json::from_value(body).unwrap()
    }

    /// Waits until the server stored an update status of `id` in `state`.
    async fn server_state(&self, id: &str, state: UpdateState) {
        common::wait_update_state(&self.store, id, state.as_str()).await;
    }
}

fn state_of(o: Outcome) -> UpdateState {
    match o {
        Outcome::Confirmed => UpdateState::Confirmed,
        _ => UpdateState::RolledBack,
    }
}

/// Checks that device `id` ended in `expected`: in its journal, its app, and on the server.
async fn check(w: &World, id: &str, dev: &SimDevice, app: SimApp, expected: Outcome) {
    let want = state_of(expected);
    let st = sim_until(dev, &format!("{id}: {want:?}"), |s| s.update.sequence == SEQ && s.update.state == want).await;
    // The device's own journal.
    let j = dev.journal();
    assert_eq!(j.last, Some((SEQ, expected)), "{id}: {j:?}");
    assert!(!dev.on_trial(), "{id}: the trial is over");
    let (installed, active, version) = match expected {
        Outcome::Confirmed => (SEQ, Slot::B, "2.0.0"),
        _ => (0, Slot::A, "factory"),
    };
    assert_eq!((j.installed_seq, j.active), (installed, active), "{id}: {j:?}");
    assert_eq!(st.update.installed, installed, "{id}");
    // The app that runs afterwards: the new one, or the factory app again.
    let st = sim_until(dev, &format!("{id}: {version} running"), |s| s.app.running.as_deref() == Some(version)).await;
    match app {
        SimApp::Confirm => assert_eq!(st.app.confirms, 1, "{id}: confirmed by the app"),
        SimApp::Crash => assert_eq!(st.app.crashes, u32::from(MAX_CRASHES), "{id}: crashed through its budget"),
        SimApp::PanicLoop => assert_eq!(st.app.restarts, u32::from(MAX_CRASHES), "{id}: panicked through its budget"),
        SimApp::Hang => assert_eq!(st.app.watchdog_kills, u32::from(MAX_CRASHES), "{id}: killed by its watchdog"),
        SimApp::Silent | SimApp::Mute | SimApp::ApplyPolite => {
            assert_eq!(st.app.confirms, 0, "{id}: never confirmed")
        }
    }
    // The server.
    w.server_state(id, want).await;
    let u = w.device_json(id).await.update.expect("update shown");
    let reason = match expected {
        Outcome::RolledBack(r) => r.as_str(),
        _ => "",
    };
    assert_eq!(
        (u.state.as_deref(), u.sequence, u.installed, u.reason.as_str()),
        (Some(want.as_str()), SEQ, installed, reason),
        "{id}"
    );
    let states: Vec<String> = w.events(id).await.into_iter().map(|e| e.state).collect();
    let trial = states.iter().position(|s| s == "trial");
    let end = states.iter().rposition(|s| s == want.as_str());
    assert!(trial.is_some() && end > trial, "{id}: trial, then {}: {states:?}", want.as_str());
}

async fn confirm_by_link_each_app_ends_as_the_policy_says(store: Store) {
    let w = world(store).await;
    let mut devices = Vec::new();
    for (id, app, by_link, _) in DEVICES {
        let (d, task) = w.device(id, app).await;
        devices.push((id, app, by_link, d, task));
    }
    for (_, _, _, d, _) in &devices {
        tokio::time::timeout(WAIT, d.wait_online()).await.unwrap();
    }
    w.upload_and_deploy_to_the_tag(bundle(LINK_GRACE_S)).await;
    // The silent and mute apps run their trials with the link up; their clocks move past the
    // grace time (less than the silence timeout, so the link stays up through the jump).
    for i in QUIET {
        let quiet = &devices[i].3;
        sim_until(quiet, "quiet on trial", |s| {
            s.update.state == UpdateState::Trial && s.app.running.as_deref() == Some("2.0.0")
        })
        .await;
        assert!(quiet.on_trial());
        quiet.advance_clock(Duration::from_secs(u64::from(LINK_GRACE_S) + 1));
    }
    let silent = &devices[4].3;
    for (id, app, expected, d, _) in &devices {
        check(&w, id, d, *app, *expected).await;
    }
    // The silent app was confirmed by the link, not by itself, after its grace time.
    assert_eq!(silent.stats().app.confirms, 0);
    for (_, _, _, _, task) in devices {
        task.abort();
    }
    w.gateway.abort();
}

async fn confirm_by_app_each_app_ends_as_the_policy_says(store: Store) {
    let w = world(store).await;
    let mut devices = Vec::new();
    for (id, app, _, by_app) in DEVICES {
        let (d, task) = w.device(id, app).await;
        devices.push((id, app, by_app, d, task));
    }
    for (_, _, _, d, _) in &devices {
        tokio::time::timeout(WAIT, d.wait_online()).await.unwrap();
    }
    w.upload_and_deploy_to_the_tag(bundle(0)).await;
    // The silent app runs its trial; 5 s before the app-confirm timeout it is still on it (its
    // clock jumps, so it also drops the silent-looking connection and connects again: waiting
    // for that session shows the device handled the jump)...
    let timeout = Duration::from_secs(u64::from(keel_sim::APP_CONFIRM_TIMEOUT_S));
    for i in QUIET {
        let quiet = &devices[i].3;
        let st = sim_until(quiet, "quiet on trial", |s| {
            s.update.state == UpdateState::Trial && s.app.running.as_deref() == Some("2.0.0")
        })
        .await;
        quiet.advance_clock(timeout - Duration::from_secs(5));
        sim_until(quiet, "reconnected after the jump", |s| s.sessions > st.sessions).await;
        assert!(quiet.on_trial(), "still on trial 5 s before the timeout");
        assert_eq!(quiet.journal().last, None, "nothing decided yet");
    }
    // ...and are rolled back once it passed.
    for i in QUIET {
        devices[i].3.advance_clock(Duration::from_secs(6));
    }
    for (id, app, expected, d, _) in &devices {
        check(&w, id, d, *app, *expected).await;
    }
    for (_, _, _, _, task) in devices {
        task.abort();
    }
    w.gateway.abort();
}
