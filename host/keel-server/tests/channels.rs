//! The server's end of a device's app channels (`keel_server::channels::ChannelHub`) driven the
//! way the gateway drives it, with the real store and services: what a hostile device gets when
//! it asks for what it should not have, or keeps asking on a one-request channel.

#[macro_use]
mod common;

use std::sync::Arc;
use std::time::Duration;

use common::TestDb;
use keel_abi::chan::{Kind, Reason};
use keel_channel::msg::{config, config_result, http_result, mqtt_state, Keys, Msg, Strs};
use keel_server::channels::{ChanDown, ChannelHub, Services};
use keel_server::connection::ChanUp;
use keel_server::settings::{MasterKey, StoreKind};
use keel_server::store::Store;

on_both_databases!("channels_", a_device_cannot_fetch_the_servers_broker_credentials);
on_both_databases!("channels_", a_second_http_request_ends_the_channel);
on_both_databases!("channels_", the_open_budget_survives_a_reconnect);
on_both_databases!("channels_", metrics_show_the_connectivity_counters);
on_both_databases!("channels_", a_scrape_does_not_start_the_channel_services);
on_both_databases!("channels_", simulated_devices_fetch_their_config_over_the_link);
on_both_databases!("channels_", a_burst_of_publishes_is_carried_not_refused);
on_both_databases!("channels_", simulated_devices_publish_and_receive_over_managed_mqtt);

const DEV: &str = "kd000000000000000000000000000000c1";
const DEV2: &str = "kd000000000000000000000000000000c2";

async fn hub(store: Store) -> ChannelHub {
    store.create_account("a", "A").await.unwrap();
    store.add_device("a", DEV, &[1; 32], "c1").await.unwrap();
    let services = Arc::new(Services::from_env().unwrap());
    ChannelHub::new(store, Some(services), DEV)
}

/// Sends one whole message on channel `ch` (one piece: the tests' messages are small).
fn send(hub: &mut ChannelHub, ch: u32, m: &Msg<'_>) -> Vec<ChanDown> {
    hub.on_up(ChanUp::Data { ch, last: true, data: m.to_vec().unwrap() })
}

/// The hub's next outputs (bounded wait: a hub that never answers fails the test).
async fn next(hub: &mut ChannelHub) -> Vec<ChanDown> {
    tokio::time::timeout(Duration::from_secs(30), hub.next()).await.expect("the hub answers")
}

/// The hub's one answer on `ch` (a test expecting several reads them with [`Messages`]).
async fn message(hub: &mut ChannelHub, ch: u32) -> Vec<u8> {
    let mut m = Messages::default();
    let answer = m.next(hub, ch).await;
    assert!(m.ready.is_empty(), "more than one answer came: {:?}", m.ready);
    answer
}

async fn a_device_cannot_fetch_the_servers_broker_credentials(store: Store) {
    let store = store.with_secrets_key(MasterKey::from_bytes([7; 32]));
    let mut hub = hub(store.clone()).await;
    store.set_setting("a", None, StoreKind::Secret, "mqtt/default/password", b"broker-pw").await.unwrap().unwrap();
    store.set_setting("a", None, StoreKind::Config, "mqtt/default/username", b"fleet").await.unwrap().unwrap();
    store.set_setting("a", None, StoreKind::Secret, "api-key", b"app-secret").await.unwrap().unwrap();
    let opened = hub.on_up(ChanUp::Open { ch: 1, kind: Kind::Config as u8, endpoint: vec![], window: 4096 });
    assert_eq!(opened, vec![ChanDown::Opened { ch: 1, window: keel_server::channels::IN_WINDOW }]);
    let keys = [
        (config::SCOPE_ACCOUNT, config::STORE_SECRET, &b"mqtt/default/password"[..]),
        (config::SCOPE_ACCOUNT, config::STORE_CONFIG, &b"mqtt/default/username"[..]),
        (config::SCOPE_ACCOUNT, config::STORE_SECRET, &b"api-key"[..]),
    ];
    send(&mut hub, 1, &Msg::ConfigFetch { keys: Keys::Items(&keys) });
    let answer = message(&mut hub, 1).await;
    let Ok(Msg::ConfigResult { result, items }) = Msg::decode(&answer) else { panic!("{answer:?}") };
    assert_eq!(result, config_result::OK);
    let items: Vec<(u8, Vec<u8>)> = items.iter().map(|(r, v)| (r, v.to_vec())).collect();
    assert_eq!(
        items,
        vec![
            (config_result::INVALID_KEY, vec![]),
            (config_result::INVALID_KEY, vec![]),
            (config_result::OK, b"app-secret".to_vec())
        ],
        "the broker's credentials stay on the server; the app's own secret is served"
    );
}

async fn a_second_http_request_ends_the_channel(store: Store) {
    let mut hub = hub(store).await;
    hub.on_up(ChanUp::Open { ch: 5, kind: Kind::Http as u8, endpoint: vec![], window: 4096 });
    // A first "request" that is not one is answered (BAD_REQUEST)...
    send(&mut hub, 5, &Msg::MqttDisconnect);
    let answer = message(&mut hub, 5).await;
    let Ok(Msg::HttpResponse { result, .. }) = Msg::decode(&answer) else { panic!("{answer:?}") };
    assert_eq!(result, http_result::BAD_REQUEST);
    // ... and a device that keeps sending on the channel gets it closed, not an answer per
    // message (which a device that never reads would make the server queue).
    let bad =
        Msg::HttpRequest { method: b"GET", url: b"https://x", timeout_ms: 1000, headers: Strs::Items(&[]), body: b"" };
    send(&mut hub, 5, &bad);
    let mut closed = None;
    while closed.is_none() {
        for d in next(&mut hub).await {
            match d {
                ChanDown::Closed { ch: 5, reason } => closed = Some(reason),
                ChanDown::Credit { .. } => {}
                other => panic!("no answer to a second request: {other:?}"),
            }
        }
    }
    assert_eq!(closed, Some(Reason::ProtocolError as u8));
    assert_eq!(hub.open_count(), 0);
}

/// The whole messages the hub sends on one channel, in order, however they are batched.
#[derive(Default)]
struct Messages {
    partial: Vec<u8>,
    ready: std::collections::VecDeque<Vec<u8>>,
}

impl Messages {
    async fn next(&mut self, hub: &mut ChannelHub, ch: u32) -> Vec<u8> {
        loop {
            if let Some(m) = self.ready.pop_front() {
                return m;
            }
            for d in next(hub).await {
                if let ChanDown::Data { ch: c, last, data } = d {
                    assert_eq!(c, ch);
                    self.partial.extend_from_slice(&data);
                    if last {
                        self.ready.push_back(std::mem::take(&mut self.partial));
                    }
                }
            }
        }
    }
}

/// Opens and at once closes `n` config channels; returns how many the hub opened.
fn open_and_close(hub: &mut ChannelHub, n: u32) -> usize {
    let mut opened = 0;
    for ch in 1..=n {
        match hub.on_up(ChanUp::Open { ch, kind: Kind::Config as u8, endpoint: vec![], window: 4096 }).as_slice() {
            [ChanDown::Opened { .. }] => {
                opened += 1;
                hub.on_up(ChanUp::Close { ch });
            }
            [ChanDown::Closed { reason, .. }] => assert_eq!(*reason, Reason::RateLimited as u8),
            other => panic!("{other:?}"),
        }
    }
    opened
}

async fn the_open_budget_survives_a_reconnect(store: Store) {
    store.create_account("a", "A").await.unwrap();
    store.add_device("a", DEV, &[1; 32], "c1").await.unwrap();
    store.add_device("a", DEV2, &[2; 32], "c2").await.unwrap();
    let services = Arc::new(Services::from_env().unwrap());
    let start = std::time::Instant::now();
    let mut hub = ChannelHub::new(store.clone(), Some(services.clone()), DEV);
    let burst = keel_server::channels::OPEN_BURST as usize;
    assert_eq!(open_and_close(&mut hub, burst as u32), burst);
    // The device drops its connection and comes back at once: its budget is where it was.
    drop(hub);
    let mut hub = ChannelHub::new(store.clone(), Some(services.clone()), DEV);
    let again = open_and_close(&mut hub, burst as u32);
    // What the rate gave back since the start, and no more.
    let refilled = (start.elapsed().as_secs_f64() * keel_server::channels::OPENS_PER_SECOND) as usize;
    assert!(again <= refilled + 1, "{again} opens after reconnecting; the rate allows {refilled}");
    // Another device's budget is its own.
    let mut other = ChannelHub::new(store, Some(services), DEV2);
    assert_eq!(open_and_close(&mut other, 4), 4);
}

/// `GET /metrics` on the metrics listener's router.
async fn scrape(store: &Store) -> String {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let app = keel_server::http::metrics_router(keel_server::http::AppState::new(store.clone(), [9; 32]));
    let req = axum::http::Request::get("/metrics").body(axum::body::Body::empty()).unwrap();
    let resp = app.oneshot(req).await.unwrap();
    assert_eq!(resp.status(), axum::http::StatusCode::OK);
    String::from_utf8(resp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
}

/// A server whose devices never opened a channel shows the connectivity series at zero, and a
/// scrape does not start the services behind channels (an HTTP client, a name-lookup pool, the
/// MQTT relay's listener) just to count nothing.
async fn a_scrape_does_not_start_the_channel_services(store: Store) {
    let text = scrape(&store).await;
    for series in ["keel_channels_open", "keel_proxy_http_requests_in_progress", "keel_mqtt_sessions"] {
        assert_eq!(sample(&text, series), 0, "{series}");
    }
    assert!(store.started_channel_services().is_none(), "the scrape started the channel services");
    // They start with the first use, and the scrape then reads them.
    let services = store.channel_services().expect("the services start");
    assert!(store.started_channel_services().is_some_and(|s| std::sync::Arc::ptr_eq(&s, &services)));
}

/// The value of the sample `series` (name and labels as written) in a scrape.
fn sample(text: &str, series: &str) -> u64 {
    let line = text.lines().find(|l| l.strip_prefix(series).is_some_and(|rest| rest.starts_with(' ')));
    let Some(line) = line else { panic!("no {series} in\n{text}") };
    line[series.len() + 1..].parse().unwrap_or_else(|e| panic!("{line}: {e}"))
}

async fn metrics_show_the_connectivity_counters(store: Store) {
    store.create_account("a", "A").await.unwrap();
    store.add_device("a", DEV, &[1; 32], "c1").await.unwrap();
    store.add_policy_rule("a", "allow", "127.0.0.0/8", None, None, false).await.unwrap().unwrap();
    // A broker profile pointing nowhere: attaching needs no broker.
    store.set_setting("a", None, StoreKind::Config, "mqtt/default/url", b"mqtt://127.0.0.1:9").await.unwrap().unwrap();
    let server = keel_testpeers::HttpServer::start_plain(|_r: keel_testpeers::Request| async {
        hyper::Response::new(keel_testpeers::full("hello"))
    })
    .await;
    // The scrape shows the services the devices' connections use.
    let services = store.channel_services().expect("the services start");
    let mut hub = ChannelHub::new(store.clone(), Some(services.clone()), DEV);

    let before = scrape(&store).await;
    for series in [
        "keel_channels_open",
        "keel_channel_opens_total",
        "keel_channel_opens_refused_total{reason=\"rate\"}",
        "keel_channel_opens_refused_total{reason=\"limit\"}",
        "keel_channel_opens_refused_total{reason=\"invalid\"}",
        "keel_proxy_http_requests_total{result=\"completed\"}",
        "keel_proxy_http_requests_total{result=\"denied\"}",
        "keel_proxy_http_requests_total{result=\"rate_limited\"}",
        "keel_proxy_http_requests_total{result=\"account_limited\"}",
        "keel_proxy_http_requests_in_progress",
        "keel_proxy_http_bytes_in_total",
        "keel_proxy_http_bytes_out_total",
        "keel_proxy_dns_lookups_in_progress",
        "keel_proxy_dns_lookups_total",
        "keel_proxy_dns_lookups_timed_out_total",
        "keel_proxy_dns_lookups_refused_total",
        "keel_mqtt_sessions",
        "keel_mqtt_sessions_refused_total",
        "keel_mqtt_relay_connections",
        "keel_mqtt_messages_to_brokers_total",
        "keel_mqtt_messages_from_brokers_total",
        "keel_mqtt_messages_delivered_total",
        "keel_mqtt_messages_lost_total",
    ] {
        assert_eq!(sample(&before, series), 0, "{series}");
    }
    assert!(before.contains("# TYPE keel_channels_open gauge\n"), "{before}");
    assert!(before.contains("# TYPE keel_proxy_http_requests_total counter\n"), "{before}");

    // An HTTP request by name on a channel that stays open, and a refused open.
    hub.on_up(ChanUp::Open { ch: 1, kind: Kind::Http as u8, endpoint: vec![], window: 4096 });
    let url = format!("http://localhost:{}/x", server.port);
    let req = Msg::HttpRequest {
        method: b"GET",
        url: url.as_bytes(),
        timeout_ms: 10_000,
        headers: Strs::Items(&[b"X-Test: 1"]),
        body: b"",
    };
    send(&mut hub, 1, &req);
    let answer = message(&mut hub, 1).await;
    let Ok(Msg::HttpResponse { result, status, body, .. }) = Msg::decode(&answer) else { panic!("{answer:?}") };
    assert_eq!((result, status, body), (http_result::OK, 200, &b"hello"[..]));
    let refused = hub.on_up(ChanUp::Open { ch: 2, kind: 99, endpoint: vec![], window: 4096 });
    assert_eq!(refused, vec![ChanDown::Closed { ch: 2, reason: Reason::Refused as u8 }]);
    // An MQTT channel: its session is attached (no broker connection until the app connects).
    hub.on_up(ChanUp::Open { ch: 3, kind: Kind::Mqtt as u8, endpoint: vec![], window: 4096 });
    let attached = tokio::time::timeout(Duration::from_secs(30), services.mqtt.wait_stats(|s| s.sessions == 1)).await;
    assert!(attached.is_ok(), "no session: {:?}", services.mqtt.stats());

    let after = scrape(&store).await;
    assert_eq!(sample(&after, "keel_channels_open"), 2, "{after}");
    assert_eq!(sample(&after, "keel_channel_opens_total"), 2);
    assert_eq!(sample(&after, "keel_channel_opens_refused_total{reason=\"invalid\"}"), 1);
    assert_eq!(sample(&after, "keel_proxy_http_requests_total{result=\"completed\"}"), 1);
    assert_eq!(sample(&after, "keel_proxy_http_requests_in_progress"), 0);
    assert!(sample(&after, "keel_proxy_http_bytes_in_total") >= 5, "{after}");
    assert!(sample(&after, "keel_proxy_http_bytes_out_total") > 0, "{after}");
    assert_eq!(sample(&after, "keel_proxy_dns_lookups_total"), 1, "localhost was looked up");
    assert_eq!(sample(&after, "keel_proxy_dns_lookups_in_progress"), 0);
    assert_eq!(sample(&after, "keel_mqtt_sessions"), 1);

    // Closed channels leave the gauge.
    hub.on_up(ChanUp::Close { ch: 1 });
    hub.on_up(ChanUp::Close { ch: 3 });
    assert_eq!(sample(&scrape(&store).await, "keel_channels_open"), 0);
}

/// Twenty simulated devices (the visor's device core in keel-sim, its channel table and link)
/// fetch configuration over real links through the gateway at once: each gets the account's
/// value and secret and its own device value, never another device's, and a key that does not
/// exist is answered NOT_FOUND on its own.
async fn simulated_devices_fetch_their_config_over_the_link(store: Store) {
    use keel_sim::{new_secret, public_key, SimDevice};
    let store = store.with_secrets_key(MasterKey::from_bytes([7; 32]));
    store.create_account("a", "A").await.unwrap();
    store.set_setting("a", None, StoreKind::Config, "greeting", b"hello").await.unwrap().unwrap();
    store.set_setting("a", None, StoreKind::Secret, "api-key", b"s3cret").await.unwrap().unwrap();
    let (private, public) = keel_server::gateway::generate_keypair();
    let mut devices = Vec::new();
    for i in 0..20u32 {
        let secret = new_secret();
        let id = format!("kd{:032x}", 0x5100 + i);
        store.add_device("a", &id, &public_key(&secret), &format!("sim-{i}")).await.unwrap();
        let site = format!("site-{i}");
        store.set_setting("a", Some(&id), StoreKind::Config, "site", site.as_bytes()).await.unwrap().unwrap();
        devices.push((Arc::new(SimDevice::new(secret, public, 1)), site));
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let gateway = tokio::spawn(keel_server::gateway::serve(listener, store.clone(), private));
    let mut fetches = tokio::task::JoinSet::new();
    for (dev, site) in devices {
        fetches.spawn(async move {
            let d = dev.clone();
            let run = tokio::spawn(async move { d.run(addr, 0).await });
            dev.wait_online().await;
            let keys = [
                (config::SCOPE_ACCOUNT, config::STORE_CONFIG, "greeting"),
                (config::SCOPE_DEVICE, config::STORE_CONFIG, "site"),
                (config::SCOPE_ACCOUNT, config::STORE_SECRET, "api-key"),
                (config::SCOPE_DEVICE, config::STORE_CONFIG, "nothing-here"),
            ];
            let got = dev.fetch_config(&keys, Duration::from_secs(20)).await;
            run.abort();
            (got, site)
        });
    }
    let mut answered = 0;
    while let Some(r) = fetches.join_next().await {
        let (got, site) = r.unwrap();
        let items = got.unwrap_or_else(|e| panic!("{site}: {e}"));
        assert_eq!(items[0], Ok(b"hello".to_vec()));
        assert_eq!(items[1], Ok(site.into_bytes()), "the device's own value");
        assert_eq!(items[2], Ok(b"s3cret".to_vec()));
        assert_eq!(items[3], Err(config_result::NOT_FOUND));
        answered += 1;
    }
    assert_eq!(answered, 20);
    gateway.abort();
}

/// An app that publishes a burst without waiting for each result (QoS 0 telemetry, fire and
/// forget) gets every publish carried: the server holds what its session cannot take yet
/// (backpressure through the channel's credit), it does not refuse it because its own tasks
/// had not caught up. On the old code the session took 16 unanswered publishes and the
/// gateway 32 queued commands, so whether a burst of 40 was refused depended on scheduling.
async fn a_burst_of_publishes_is_carried_not_refused(store: Store) {
    let broker = keel_testpeers::Mosquitto::start_plain();
    store.create_account("a", "A").await.unwrap();
    store.add_device("a", DEV, &[1; 32], "c1").await.unwrap();
    store.add_policy_rule("a", "allow", "127.0.0.1/32", Some(broker.port), Some("mqtt"), false).await.unwrap().unwrap();
    let url = format!("mqtt://127.0.0.1:{}", broker.port);
    store.set_setting("a", None, StoreKind::Config, "mqtt/default/url", url.as_bytes()).await.unwrap().unwrap();
    let services = store.channel_services().expect("the services start");
    let mut hub = ChannelHub::new(store.clone(), Some(services), DEV);
    let mut sub = broker.subscribe("burst/#");

    hub.on_up(ChanUp::Open { ch: 1, kind: Kind::Mqtt as u8, endpoint: vec![], window: 64 << 10 });
    send(&mut hub, 1, &Msg::MqttConnect { clean_start: true, keepalive_s: 30, will: None });
    let answer = message(&mut hub, 1).await;
    assert!(
        matches!(Msg::decode(&answer), Ok(Msg::MqttConnectResult { state: mqtt_state::COMPLETED, .. })),
        "{:?}",
        Msg::decode(&answer)
    );
    const BURST: u32 = 48;
    for id in 0..BURST {
        let payload = format!("m{id}");
        let p =
            Msg::MqttPublish { id, qos: (id % 2) as u8, retain: false, topic: b"burst/x", payload: payload.as_bytes() };
        send(&mut hub, 1, &p);
    }
    let mut done = vec![false; BURST as usize];
    let mut answers = Messages::default();
    while done.contains(&false) {
        let answer = answers.next(&mut hub, 1).await;
        match Msg::decode(&answer) {
            Ok(Msg::MqttPublishResult { id, state: mqtt_state::COMPLETED, .. }) if id < BURST => {
                done[id as usize] = true
            }
            other => {
                panic!("publish results: {} of {BURST} so far, then {other:?}", done.iter().filter(|d| **d).count())
            }
        }
    }
    let mut seen = 0;
    while seen < BURST {
        let line = sub.next(Duration::from_secs(20)).unwrap_or_else(|| panic!("the broker saw {seen} of {BURST}"));
        assert!(line.starts_with("burst/x m"), "{line}");
        seen += 1;
    }
}

/// Ten simulated devices (the device core's channels over real links, through the gateway)
/// each drive their own managed MQTT session to a real Mosquitto: every device's publish
/// reaches the broker, and a command published to one device's topic reaches that device
/// alone.
async fn simulated_devices_publish_and_receive_over_managed_mqtt(store: Store) {
    use keel_sim::{new_secret, public_key, SimDevice};
    const WAIT: Duration = Duration::from_secs(20);
    let broker = Arc::new(keel_testpeers::Mosquitto::start_plain());
    store.create_account("a", "A").await.unwrap();
    store.add_policy_rule("a", "allow", "127.0.0.1/32", Some(broker.port), Some("mqtt"), false).await.unwrap().unwrap();
    let url = format!("mqtt://127.0.0.1:{}", broker.port);
    store.set_setting("a", None, StoreKind::Config, "mqtt/default/url", url.as_bytes()).await.unwrap().unwrap();
    let (private, public) = keel_server::gateway::generate_keypair();
    let mut devices = Vec::new();
    for i in 0..10u32 {
        let secret = new_secret();
        store.add_device("a", &format!("kd{:032x}", 0x6100 + i), &public_key(&secret), "sim").await.unwrap();
        devices.push(Arc::new(SimDevice::new(secret, public, 1)));
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let gateway = tokio::spawn(keel_server::gateway::serve(listener, store.clone(), private));
    let mut ups = broker.subscribe("sim/+/up");

    let (subscribed_tx, mut subscribed) = tokio::sync::mpsc::channel(10);
    let mut apps = tokio::task::JoinSet::new();
    for (i, dev) in devices.into_iter().enumerate() {
        let subscribed_tx = subscribed_tx.clone();
        apps.spawn(async move {
            let d = dev.clone();
            let run = tokio::spawn(async move { d.run(addr, 0).await });
            dev.wait_online().await;
            let mut s = dev.mqtt("").unwrap();
            s.connect(true, WAIT).await.unwrap_or_else(|e| panic!("device {i}: connect: {e}"));
            s.subscribe(&format!("sim/{i}/down"), 1, WAIT).await.unwrap_or_else(|e| panic!("device {i}: {e}"));
            subscribed_tx.send(()).await.unwrap();
            s.publish(&format!("sim/{i}/up"), format!("hello from {i}").as_bytes(), 1, WAIT)
                .await
                .unwrap_or_else(|e| panic!("device {i}: publish: {e}"));
            let got = s.next_message(WAIT).await.unwrap_or_else(|e| panic!("device {i}: no command: {e}"));
            drop(s);
            run.abort();
            (i, got)
        });
    }
    for _ in 0..10 {
        tokio::time::timeout(WAIT, subscribed.recv()).await.expect("every device subscribed");
    }
    for i in 0..10 {
        let b = broker.clone();
        tokio::task::spawn_blocking(move || {
            b.publish(&format!("sim/{i}/down"), format!("cmd {i}").as_bytes(), 1, false)
        })
        .await
        .unwrap();
    }
    let mut got = 0;
    while let Some(r) = apps.join_next().await {
        let (i, m) = r.unwrap();
        assert_eq!((m.topic, m.payload, m.qos), (format!("sim/{i}/down"), format!("cmd {i}").into_bytes(), 1));
        got += 1;
    }
    assert_eq!(got, 10);
    let mut seen: Vec<String> = (0..10).map(|_| ups.next(WAIT).expect("the broker saw every publish")).collect();
    seen.sort();
    let mut want: Vec<String> = (0..10).map(|i| format!("sim/{i}/up hello from {i}")).collect();
    want.sort();
    assert_eq!(seen, want);
    gateway.abort();
}
