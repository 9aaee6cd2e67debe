//! Managed MQTT sessions against a real Mosquitto broker with TLS on loopback.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use keel_server::proxy::mqtt::AttachError;
use keel_server::proxy::mqtt::{
    BrokerSettings, LostReason, MqttAttachment, MqttCommand, MqttEvent, MqttHub, MqttLimits, MqttStats, RequestState,
    SessionState, Will, MAX_BROKER_PACKET,
};
use keel_server::proxy::{Destinations, DnsLimits, NameLookups, Tenant};
use keel_testpeers::{Mosquitto, TestCa};

#[path = "common/tarpit.rs"]
mod tarpit;
use tarpit::{ReleaseOnDrop, Tarpit};

const WAIT: Duration = Duration::from_secs(20);

struct AllowIps(Vec<IpAddr>);

impl Destinations for AllowIps {
    fn check(&self, _scheme: &str, _host: &str, _port: u16, ip: IpAddr) -> Result<(), String> {
        if self.0.contains(&ip) {
            Ok(())
        } else {
            Err(format!("{ip} not allowed"))
        }
    }
}

/// Device `device` of the tests' account.
fn who(device: &str) -> Tenant {
    Tenant { account: "acct".into(), device: device.into() }
}

fn loopback() -> Arc<dyn Destinations> {
    Arc::new(AllowIps(vec!["127.0.0.1".parse().unwrap()]))
}

fn settings(broker: &Mosquitto, client_id: &str) -> BrokerSettings {
    BrokerSettings {
        host: "localhost".into(),
        port: broker.port,
        tls: true,
        ca_pem: broker.ca_pem.clone().map(String::into_bytes),
        client_cert_pem: None,
        client_key_pem: None,
        username: None,
        password: None,
        client_id: client_id.into(),
    }
}

fn hub() -> MqttHub {
    MqttHub::new(fast_limits()).unwrap()
}

fn fast_limits() -> MqttLimits {
    MqttLimits {
        reconnect_min: Duration::from_millis(100),
        reconnect_max: Duration::from_millis(500),
        ..MqttLimits::default()
    }
}

/// The next event that is not a `Status`, within [`WAIT`].
async fn next(att: &mut MqttAttachment) -> MqttEvent {
    loop {
        match tokio::time::timeout(WAIT, att.events.recv()).await {
            Ok(Some(MqttEvent::Status { .. })) => continue,
            Ok(Some(ev)) => return ev,
            Ok(None) => panic!("the attachment's events ended"),
            Err(_) => panic!("no event within {WAIT:?}"),
        }
    }
}

/// Waits for an event `pred` accepts, skipping others; panics after [`WAIT`].
async fn wait_for(att: &mut MqttAttachment, pred: impl Fn(&MqttEvent) -> bool) -> MqttEvent {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, att.events.recv()).await {
            Ok(Some(ev)) if pred(&ev) => return ev,
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the attachment's events ended"),
            Err(_) => panic!("no matching event within {WAIT:?}"),
        }
    }
}

/// Waits until the hub's counters satisfy `pred`; panics with `what` after [`WAIT`].
async fn wait_stats(hub: &MqttHub, what: &str, pred: impl FnMut(&MqttStats) -> bool) -> MqttStats {
    match tokio::time::timeout(WAIT, hub.wait_stats(pred)).await {
        Ok(stats) => stats,
        Err(_) => panic!("{what} within {WAIT:?}: {:?}", hub.stats()),
    }
}

async fn connect(att: &MqttAttachment, clean_start: bool, will: Option<Will>) {
    att.commands.send(MqttCommand::Connect { clean_start, keepalive_s: 30, will }).await.unwrap();
}

async fn connected(att: &mut MqttAttachment, clean_start: bool) -> bool {
    connect(att, clean_start, None).await;
    match next(att).await {
        MqttEvent::ConnectResult { state: RequestState::Completed, session_present, .. } => session_present,
        other => panic!("{other:?}"),
    }
}

async fn subscribe(att: &mut MqttAttachment, id: u32, filter: &str, qos: u8) {
    att.commands.send(MqttCommand::Subscribe { id, topics: vec![(filter.into(), qos)] }).await.unwrap();
    assert_eq!(next(att).await, MqttEvent::SubscribeResult { id, state: RequestState::Completed, codes: vec![qos] });
}

/// `mosquitto_pub` off the async threads.
async fn broker_publish(broker: &Arc<Mosquitto>, topic: &str, payload: &[u8], qos: u8) {
    let (b, t, p) = (broker.clone(), topic.to_string(), payload.to_vec());
    tokio::task::spawn_blocking(move || b.publish(&t, &p, qos, false)).await.unwrap();
}

fn message(ev: MqttEvent) -> (u32, String, Vec<u8>, u8) {
    match ev {
        MqttEvent::Message { id, topic, payload, qos, .. } => (id, topic, payload, qos),
        other => panic!("expected a message, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_subscribe_publish_and_receive_over_tls() {
    let broker = Arc::new(Mosquitto::start_tls());
    let hub = hub();
    let mut att = hub.attach(&who("dev1"), "main", settings(&broker, "dev1-main"), loopback()).unwrap();
    assert!(!connected(&mut att, true).await);

    // Device -> broker, QoS 0 and 1, seen by mosquitto_sub.
    let mut sub = broker.subscribe("up/#");
    for (id, qos) in [(10, 0u8), (11, 1u8)] {
        let payload = format!("hello-{qos}").into_bytes();
        att.commands
            .send(MqttCommand::Publish { id, topic: "up/x".into(), payload, qos, retain: false })
            .await
            .unwrap();
        assert_eq!(next(&mut att).await, MqttEvent::PublishResult { id, state: RequestState::Completed, reason: 0 });
        assert_eq!(sub.next(WAIT).as_deref(), Some(format!("up/x hello-{qos}").as_str()));
    }

    // Broker -> device.
    subscribe(&mut att, 1, "down/+", 1).await;
    broker_publish(&broker, "down/a", b"one", 1).await;
    let (id, topic, payload, qos) = message(next(&mut att).await);
    assert_eq!((topic.as_str(), payload.as_slice(), qos), ("down/a", &b"one"[..], 1));
    att.commands.send(MqttCommand::Ack { id }).await.unwrap();
    broker_publish(&broker, "down/b", b"two", 0).await;
    let (_, topic, payload, qos) = message(next(&mut att).await);
    assert_eq!((topic.as_str(), payload.as_slice(), qos), ("down/b", &b"two"[..], 0));

    // Unsubscribe; then a publish on the old filter does not arrive, a new one does.
    att.commands.send(MqttCommand::Unsubscribe { id: 2, topics: vec!["down/+".into()] }).await.unwrap();
    assert_eq!(next(&mut att).await, MqttEvent::UnsubscribeResult { id: 2, state: RequestState::Completed });
    subscribe(&mut att, 3, "other", 0).await;
    broker_publish(&broker, "down/c", b"gone", 0).await;
    broker_publish(&broker, "other", b"here", 0).await;
    assert_eq!(message(next(&mut att).await).2, b"here");

    // Limits and rules.
    for (cmd, want) in [
        (MqttCommand::Publish { id: 20, topic: "a/+".into(), payload: vec![], qos: 0, retain: false }, 20),
        (MqttCommand::Publish { id: 21, topic: "x".repeat(257), payload: vec![], qos: 0, retain: false }, 21),
        (
            MqttCommand::Publish { id: 22, topic: "a".into(), payload: vec![0; (16 << 10) + 1], qos: 0, retain: false },
            22,
        ),
        (MqttCommand::Publish { id: 23, topic: "a".into(), payload: vec![], qos: 2, retain: false }, 23),
    ] {
        att.commands.send(cmd).await.unwrap();
        assert_eq!(
            next(&mut att).await,
            MqttEvent::PublishResult { id: want, state: RequestState::InvalidParameters, reason: 0 }
        );
    }
    let nine: Vec<(String, u8)> = (0..9).map(|i| (format!("t/{i}"), 0)).collect();
    att.commands.send(MqttCommand::Subscribe { id: 30, topics: nine }).await.unwrap();
    assert_eq!(
        next(&mut att).await,
        MqttEvent::SubscribeResult { id: 30, state: RequestState::InvalidParameters, codes: vec![] }
    );
    connect(&att, true, None).await;
    assert!(matches!(next(&mut att).await, MqttEvent::ConnectResult { state: RequestState::AlreadyConnected, .. }));

    att.commands.send(MqttCommand::Disconnect).await.unwrap();
    assert_eq!(next(&mut att).await, MqttEvent::Disconnected { state: RequestState::Completed, code: 0 });
    att.commands
        .send(MqttCommand::Publish { id: 40, topic: "a".into(), payload: vec![], qos: 0, retain: false })
        .await
        .unwrap();
    assert_eq!(next(&mut att).await, MqttEvent::PublishResult { id: 40, state: RequestState::NotConnected, reason: 0 });
    let stats = hub.stats();
    assert_eq!(stats.sessions, 1);
    assert!(stats.published >= 2 && stats.received >= 3 && stats.delivered >= 3, "{stats:?}");
}

/// Sends QoS 1 publishes `0..n` of `payload` on `up/f` to a broker stopped with
/// [`Mosquitto::freeze`]; returns the ids refused RATE_LIMITED, once `refusals` of them came
/// (any other event fails the test). The broker is left stopped.
async fn publish_to_a_stopped_broker(att: &mut MqttAttachment, n: u32, payload: &[u8], refusals: usize) -> Vec<u32> {
    for id in 0..n {
        let p = MqttCommand::Publish { id, topic: "up/f".into(), payload: payload.to_vec(), qos: 1, retain: false };
        att.commands.send(p).await.unwrap();
    }
    let mut refused = vec![];
    while refused.len() < refusals {
        match next(att).await {
            MqttEvent::PublishResult { id, state: RequestState::RateLimited, .. } => refused.push(id),
            other => panic!("while the broker is stopped, after {refused:?}: {other:?}"),
        }
    }
    refused
}

/// Waits until publishes `0..n` all completed (the broker answers again).
async fn all_completed(att: &mut MqttAttachment, n: u32) {
    let mut done = vec![false; n as usize];
    while done.contains(&false) {
        match next(att).await {
            MqttEvent::PublishResult { id, state: RequestState::Completed, .. } if id < n => done[id as usize] = true,
            other => panic!("after the broker came back: {other:?}"),
        }
    }
}

/// A device that publishes to a broker that has stopped answering cannot make the server
/// hold an unbounded backlog: the session takes `max_pending_publishes` unanswered publishes and
/// refuses each one beyond with RATE_LIMITED, in order; those it took all complete once the broker
/// answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_to_a_broker_that_stopped_answering_are_bounded() {
    let broker = Arc::new(Mosquitto::start_tls());
    let hub = hub();
    let limit = hub.limits().max_pending_publishes as u32;
    let mut att = hub.attach(&who("dev1"), "main", settings(&broker, "dev1-frozen"), loopback()).unwrap();
    connected(&mut att, true).await;
    broker.freeze();
    let refused = publish_to_a_stopped_broker(&mut att, limit + 8, b"p", 8).await;
    assert_eq!(refused, (limit..limit + 8).collect::<Vec<_>>(), "the publishes beyond the limit");
    broker.thaw();
    all_completed(&mut att, limit).await;
}

/// ... and bounded in bytes: large publishes to a stopped broker are refused once their bytes
/// would pass `max_pending_bytes` (a hostile account's own broker, which never reads, can make
/// the server hold that much per session and no more).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_publishes_to_a_broker_that_stopped_answering_are_bounded_in_bytes() {
    let broker = Arc::new(Mosquitto::start_tls());
    let hub = hub();
    let limit = hub.limits().max_pending_bytes;
    let mut att = hub.attach(&who("dev1"), "main", settings(&broker, "dev1-frozen-big"), loopback()).unwrap();
    connected(&mut att, true).await;
    broker.freeze();
    let payload = vec![b'x'; 16_000];
    let fits = (limit / (payload.len() + "up/f".len())) as u32;
    let refused = publish_to_a_stopped_broker(&mut att, fits + 2, &payload, 2).await;
    assert_eq!(refused, [fits, fits + 1], "the publishes past the byte bound");
    broker.thaw();
    all_completed(&mut att, fits).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos1_messages_are_acknowledged_to_the_broker_only_when_the_device_acks() {
    let broker = Arc::new(Mosquitto::start_tls());
    let hub = hub();
    let s = settings(&broker, "acker");
    let mut att = hub.attach(&who("dev2"), "p", s.clone(), loopback()).unwrap();
    assert!(!connected(&mut att, false).await);
    subscribe(&mut att, 1, "ack/t", 1).await;
    broker_publish(&broker, "ack/t", b"m1", 1).await;
    let (_, _, payload, _) = message(next(&mut att).await);
    assert_eq!(payload, b"m1");
    // Not acknowledged; the server's session ends abruptly.
    hub.close("dev2", "p");
    drop(att);

    // A new session for the same client id resumes the broker's session: m1 comes again.
    let mut att = hub.attach(&who("dev2"), "p", s.clone(), loopback()).unwrap();
    assert!(connected(&mut att, false).await, "the broker kept the session");
    let (id, _, payload, _) = message(next(&mut att).await);
    assert_eq!(payload, b"m1", "redelivered: it was never acknowledged");
    att.commands.send(MqttCommand::Ack { id }).await.unwrap();
    broker_publish(&broker, "ack/t", b"m2", 1).await;
    let (id, _, payload, _) = message(next(&mut att).await);
    assert_eq!(payload, b"m2");
    att.commands.send(MqttCommand::Ack { id }).await.unwrap();
    // The acks reach the broker before the marker (same connection, in order).
    broker_publish(&broker, "ack/t", b"marker", 1).await;
    let (id, _, payload, _) = message(next(&mut att).await);
    assert_eq!(payload, b"marker");
    att.commands.send(MqttCommand::Ack { id }).await.unwrap();
    // A publish's acknowledgement orders the acks before the close (one connection, in order).
    let fence = MqttCommand::Publish { id: 10, topic: "fence".into(), payload: vec![], qos: 1, retain: false };
    att.commands.send(fence).await.unwrap();
    assert_eq!(next(&mut att).await, MqttEvent::PublishResult { id: 10, state: RequestState::Completed, reason: 0 });
    hub.close("dev2", "p");
    drop(att);

    // Again: nothing acknowledged comes back; the next message is a new one.
    let mut att = hub.attach(&who("dev2"), "p", s, loopback()).unwrap();
    assert!(connected(&mut att, false).await);
    broker_publish(&broker, "ack/t", b"m3", 1).await;
    assert_eq!(message(next(&mut att).await).2, b"m3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_will_is_published_when_a_detached_session_expires() {
    let broker = Arc::new(Mosquitto::start_tls());
    let hub = MqttHub::new(MqttLimits { detached_grace: Duration::from_millis(300), ..fast_limits() }).unwrap();
    let mut sub = broker.subscribe("will/#");
    let mut att = hub.attach(&who("dev3"), "p", settings(&broker, "willing"), loopback()).unwrap();
    let will = Will { topic: "will/dev3".into(), payload: b"gone".to_vec(), qos: 1, retain: false };
    connect(&att, true, Some(will)).await;
    assert!(matches!(next(&mut att).await, MqttEvent::ConnectResult { state: RequestState::Completed, .. }));
    drop(att); // the device's link dropped; after the grace period the session ends abruptly
    let got = tokio::task::spawn_blocking(move || sub.next(WAIT)).await.unwrap();
    assert_eq!(got.as_deref(), Some("will/dev3 gone"));
    wait_stats(&hub, "the session was not removed", |s| s.sessions == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_disconnect_publishes_no_will() {
    let broker = Arc::new(Mosquitto::start_tls());
    let hub = hub();
    let mut sub = broker.subscribe("will2/#");
    let mut att = hub.attach(&who("dev4"), "p", settings(&broker, "polite"), loopback()).unwrap();
    let will = Will { topic: "will2/dev4".into(), payload: b"gone".to_vec(), qos: 0, retain: false };
    connect(&att, true, Some(will)).await;
    assert!(matches!(next(&mut att).await, MqttEvent::ConnectResult { state: RequestState::Completed, .. }));
    att.commands.send(MqttCommand::Disconnect).await.unwrap();
    assert_eq!(next(&mut att).await, MqttEvent::Disconnected { state: RequestState::Completed, code: 0 });
    // Once the broker connection is gone (the relay carried it), a marker published then is
    // the first thing the subscriber sees: a will would have come before it.
    wait_stats(&hub, "the broker connection did not end", |s| s.relay_connections == 0).await;
    broker_publish(&broker, "will2/marker", b"m", 0).await;
    let got = tokio::task::spawn_blocking(move || sub.next(WAIT)).await.unwrap();
    assert_eq!(got.as_deref(), Some("will2/marker m"), "{}", broker.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_broker_is_reconnected_to_and_subscriptions_made_again() {
    let mut broker = Mosquitto::start_tls();
    let hub = hub();
    let mut att = hub.attach(&who("dev5"), "p", settings(&broker, "phoenix"), loopback()).unwrap();
    assert!(!connected(&mut att, true).await);
    subscribe(&mut att, 1, "re/t", 1).await;
    broker.kill();
    let ev = wait_for(&mut att, |e| matches!(e, MqttEvent::Status { .. })).await;
    assert!(matches!(ev, MqttEvent::Status { state: SessionState::Reconnecting, .. }), "{ev:?}");
    broker.restart();
    let ev = wait_for(&mut att, |e| matches!(e, MqttEvent::Status { state: SessionState::Connected, .. })).await;
    assert_eq!(ev, MqttEvent::Status { state: SessionState::Connected, reason: String::new() });
    // The broker lost the session (no persistence): the server subscribed again. Publish until
    // a message arrives (the resubscription's SUBACK is not reported to the device).
    let broker = Arc::new(broker);
    let mut got = None;
    for _ in 0..50 {
        broker_publish(&broker, "re/t", b"again", 0).await;
        if let Ok(Some(ev)) = tokio::time::timeout(Duration::from_millis(200), att.events.recv()).await {
            got = Some(ev);
            break;
        }
    }
    assert_eq!(message(got.expect("no message after the restart")).2, b"again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_published_while_detached_are_delivered_on_reattach() {
    let broker = Arc::new(Mosquitto::start_tls());
    let hub = MqttHub::new(MqttLimits { queue_messages: 3, ..fast_limits() }).unwrap();
    let s = settings(&broker, "roamer");
    let mut att = hub.attach(&who("dev6"), "p", s.clone(), loopback()).unwrap();
    assert!(!connected(&mut att, false).await);
    subscribe(&mut att, 1, "q/#", 1).await;
    broker_publish(&broker, "q/0", b"delivered-unacked", 1).await;
    assert_eq!(message(next(&mut att).await).2, b"delivered-unacked");
    drop(att);
    for i in 1..=4 {
        broker_publish(&broker, &format!("q/{i}"), format!("m{i}").as_bytes(), 1).await;
    }
    // Wait until the session has them all (its queue holds 3: m1 to m3; m4 is dropped).
    wait_stats(&hub, "the session did not get them all", |s| s.received >= 5 && s.lost >= 1).await;
    let mut att = hub.attach(&who("dev6"), "p", s, loopback()).unwrap();
    assert!(connected(&mut att, false).await, "the session was kept");
    let mut payloads = vec![];
    for _ in 0..4 {
        let (id, _, payload, _) = message(next(&mut att).await);
        att.commands.send(MqttCommand::Ack { id }).await.unwrap();
        payloads.push(String::from_utf8(payload).unwrap());
    }
    // The one delivered to the old attachment and never acknowledged comes first.
    assert_eq!(payloads, ["delivered-unacked", "m1", "m2", "m3"]);
    match next(&mut att).await {
        MqttEvent::Lost { count, topic, len, .. } => assert_eq!((count, topic.as_str(), len), (1, "q/4", 2)),
        other => panic!("{other:?}"),
    }
    // Subscriptions were kept.
    broker_publish(&broker, "q/5", b"m5", 1).await;
    assert_eq!(message(next(&mut att).await).2, b"m5");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_attachment_replaces_the_old_one() {
    let broker = Arc::new(Mosquitto::start_tls());
    let hub = hub();
    let s = settings(&broker, "twice");
    let mut first = hub.attach(&who("dev7"), "p", s.clone(), loopback()).unwrap();
    assert!(!connected(&mut first, true).await);
    let mut second = hub.attach(&who("dev7"), "p", s, loopback()).unwrap();
    assert_eq!(tokio::time::timeout(WAIT, first.events.recv()).await.unwrap(), None, "the old attachment ended");
    assert!(connected(&mut second, false).await);
    // clean_start resets the session.
    subscribe(&mut second, 1, "r/t", 0).await;
    let mut third = hub.attach(&who("dev7"), "p", settings(&broker, "twice"), loopback()).unwrap();
    assert!(!connected(&mut third, true).await);
    assert_eq!(hub.stats().sessions, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_failures_are_reported_by_kind() {
    let broker = Mosquitto::start_tls();
    let hub = hub();
    let failure = |s: BrokerSettings, dest: Arc<dyn Destinations>, device: &'static str| {
        let mut att = hub.attach(&who(device), "p", s, dest).unwrap();
        async move {
            connect(&att, true, None).await;
            match next(&mut att).await {
                MqttEvent::ConnectResult { state, session_present: false, .. } => state,
                other => panic!("{other:?}"),
            }
        }
    };
    // Another CA than the broker's.
    let other = TestCa::new("some other CA");
    let s = BrokerSettings { ca_pem: Some(other.cert_pem.into_bytes()), ..settings(&broker, "c1") };
    assert_eq!(failure(s, loopback(), "d1").await, RequestState::UnknownCa);
    // The policy refuses loopback.
    let nowhere: Arc<dyn Destinations> = Arc::new(AllowIps(vec!["192.0.2.1".parse().unwrap()]));
    assert_eq!(failure(settings(&broker, "c2"), nowhere, "d2").await, RequestState::Denied);
    assert!(hub.stats().denied >= 1);
    // A name that does not resolve.
    let s = BrokerSettings { host: "no-such-host.invalid".into(), ..settings(&broker, "c3") };
    assert_eq!(failure(s, loopback(), "d3").await, RequestState::NxDomain);
    // Nothing listening.
    let s = BrokerSettings { port: keel_testpeers::free_port(), ..settings(&broker, "c4") };
    assert_eq!(failure(s, loopback(), "d4").await, RequestState::SocketError);
    // And a good one still works.
    assert_eq!(failure(settings(&broker, "c5"), loopback(), "d5").await, RequestState::Completed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_noisy_topic_is_rate_limited() {
    let broker = Arc::new(Mosquitto::start_tls());
    let limits = MqttLimits { inbound_per_second: 0.001, inbound_burst: 3.0, ..fast_limits() };
    let hub = MqttHub::new(limits).unwrap();
    let mut att = hub.attach(&who("dev8"), "p", settings(&broker, "noisy"), loopback()).unwrap();
    assert!(!connected(&mut att, true).await);
    subscribe(&mut att, 1, "n", 0).await;
    for i in 0..5 {
        broker_publish(&broker, "n", format!("{i}").as_bytes(), 0).await;
    }
    for i in 0..3 {
        assert_eq!(message(next(&mut att).await).2, format!("{i}").as_bytes());
    }
    // The two others were dropped and reported.
    let mut lost = 0;
    while lost < 2 {
        match next(&mut att).await {
            MqttEvent::Lost { reason: keel_server::proxy::mqtt::LostReason::RateLimited, count, .. } => lost += count,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(lost, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_bounded_per_hub() {
    let broker = Mosquitto::start_tls();
    let hub = MqttHub::new(MqttLimits { max_sessions: 1, ..fast_limits() }).unwrap();
    let _a = hub.attach(&who("a"), "p", settings(&broker, "a"), loopback()).unwrap();
    assert!(hub.attach(&who("b"), "p", settings(&broker, "b"), loopback()).is_err());
    // Re-attaching an existing session is always allowed.
    assert!(hub.attach(&who("a"), "p", settings(&broker, "a"), loopback()).is_ok());
}

/// A "broker" that accepts TCP connections and then never closes them: it answers nothing, or
/// (with `connack`) a CONNACK to the first bytes and nothing after. Each connection's end as
/// the broker sees it (its read returned 0 or an error) is reported on `ended`.
struct SilentBroker {
    port: u16,
    accepted: tokio::sync::mpsc::UnboundedReceiver<()>,
    ended: tokio::sync::mpsc::UnboundedReceiver<()>,
    task: tokio::task::JoinHandle<()>,
}

impl SilentBroker {
    async fn start(connack: bool) -> Self {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (accepted_tx, accepted) = tokio::sync::mpsc::unbounded_channel();
        let (ended_tx, ended) = tokio::sync::mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            let mut held = tokio::task::JoinSet::new();
            while let Ok((mut tcp, _)) = listener.accept().await {
                let _ = accepted_tx.send(());
                let ended_tx = ended_tx.clone();
                held.spawn(async move {
                    let mut buf = [0u8; 4096];
                    let mut answered = !connack;
                    while let Ok(1..) = tcp.read(&mut buf).await {
                        if !answered {
                            let _ = tcp.write_all(&[0x20, 0x02, 0x00, 0x00]).await;
                            answered = true;
                        }
                    }
                    let _ = ended_tx.send(());
                    // Never closes its end.
                    std::future::pending::<()>().await;
                    drop(tcp);
                });
            }
        });
        SilentBroker { port, accepted, ended, task }
    }

    fn settings(&self, client_id: &str) -> BrokerSettings {
        BrokerSettings {
            host: "127.0.0.1".into(),
            port: self.port,
            tls: false,
            ca_pem: None,
            client_cert_pem: None,
            client_key_pem: None,
            username: None,
            password: None,
            client_id: client_id.into(),
        }
    }

    async fn wait(rx: &mut tokio::sync::mpsc::UnboundedReceiver<()>, what: &str) {
        match tokio::time::timeout(WAIT, rx.recv()).await {
            Ok(Some(())) => {}
            _ => panic!("{what} within {WAIT:?}"),
        }
    }
}

impl Drop for SilentBroker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_connections_to_a_silent_broker_are_closed() {
    let limits = MqttLimits { connect_timeout: Duration::from_secs(1), ..fast_limits() };
    let hub = MqttHub::new(limits).unwrap();

    // A broker that never answers: the connection attempt times out, and the relay lets go of
    // its connection to the broker although the broker never closes it.
    let mut silent = SilentBroker::start(false).await;
    let mut att = hub.attach(&who("dev10"), "p", silent.settings("mute"), loopback()).unwrap();
    connect(&att, true, None).await;
    SilentBroker::wait(&mut silent.accepted, "the relay did not connect to the broker").await;
    match next(&mut att).await {
        MqttEvent::ConnectResult { state: RequestState::SocketError, .. } => {}
        other => panic!("{other:?}"),
    }
    SilentBroker::wait(&mut silent.ended, "the broker's connection did not end").await;
    wait_stats(&hub, "the relay connection was not closed", |s| s.relay_connections == 0).await;

    // A broker that answers CONNACK and then nothing: closing the session closes the relay's
    // connection to it.
    let mut mute = SilentBroker::start(true).await;
    let mut att = hub.attach(&who("dev11"), "p", mute.settings("hush"), loopback()).unwrap();
    assert!(!connected(&mut att, true).await);
    SilentBroker::wait(&mut mute.accepted, "the relay did not connect to the broker").await;
    assert_eq!(hub.stats().relay_connections, 1);
    hub.close("dev11", "p");
    SilentBroker::wait(&mut mute.ended, "the broker's connection did not end").await;
    wait_stats(&hub, "the relay connection was not closed", |s| s.relay_connections == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_longer_than_the_limit_is_dropped_as_too_large() {
    let broker = Arc::new(Mosquitto::start_tls());
    let hub = hub();
    let mut att = hub.attach(&who("dev12"), "p", settings(&broker, "long"), loopback()).unwrap();
    assert!(!connected(&mut att, true).await);
    subscribe(&mut att, 1, "long/#", 0).await;
    // Longer than max_topic_len (256), within the broker's limit (65535).
    let topic = format!("long/{}", "x".repeat(1000));
    broker_publish(&broker, &topic, b"big", 0).await;
    broker_publish(&broker, "long/ok", b"fine", 0).await;
    match next(&mut att).await {
        MqttEvent::Lost { reason: LostReason::TooLarge, topic: t, len, count } => {
            assert_eq!((count, len), (1, 3));
            assert!(t.len() <= 256 && topic.starts_with(&t), "the reported topic is cut to the limit: {}", t.len());
        }
        MqttEvent::Message { topic: t, .. } => panic!("delivered a topic of {} bytes", t.len()),
        other => panic!("{other:?}"),
    }
    assert_eq!(message(next(&mut att).await).1, "long/ok");
}

/// A QoS 1 message larger than any packet the session reads (a "poison" message a third party
/// can publish to a subscribed topic): rumqttc cannot skip it and drops the connection, and a
/// broker keeping the session sends it again at every reconnection. The session must get out
/// of that loop (starting clean, its subscriptions made again), report the message lost and
/// go on delivering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_the_packet_limit_does_not_trap_the_session_in_a_reconnect_loop() {
    let broker = Arc::new(Mosquitto::start_tls());
    let hub = hub();
    let mut att = hub.attach(&who("dev15"), "p", settings(&broker, "poisoned"), loopback()).unwrap();
    assert!(!connected(&mut att, false).await);
    subscribe(&mut att, 1, "poison/#", 1).await;
    broker_publish(&broker, "poison/big", &vec![b'p'; MAX_BROKER_PACKET + 1000], 1).await;
    match wait_for(&mut att, |e| matches!(e, MqttEvent::Lost { .. })).await {
        MqttEvent::Lost { reason, topic, len, count } => {
            assert_eq!((reason, topic.as_str(), count), (LostReason::TooLarge, "", 1));
            assert!(len as usize > MAX_BROKER_PACKET, "{len}");
        }
        _ => unreachable!(),
    }
    wait_for(&mut att, |e| matches!(e, MqttEvent::Status { state: SessionState::Connected, .. })).await;
    // The session goes on: its subscription is made again (its SUBACK is not reported to the
    // device: publish until a message arrives), and there is no further reconnection.
    let connections = hub.stats().connections;
    let mut got = None;
    for i in 0..50 {
        broker_publish(&broker, "poison/after", format!("probe {i}").as_bytes(), 1).await;
        if let Ok(Some(ev)) = tokio::time::timeout(Duration::from_millis(200), att.events.recv()).await {
            got = Some(ev);
            break;
        }
    }
    let (id, topic, _, _) = message(got.expect("no message after the clean reconnection"));
    assert_eq!(topic, "poison/after");
    att.commands.send(MqttCommand::Ack { id }).await.unwrap();
    broker_publish(&broker, "poison/after", b"and later", 1).await;
    loop {
        let (id, _, payload, _) = message(next(&mut att).await);
        att.commands.send(MqttCommand::Ack { id }).await.unwrap();
        if payload == b"and later" {
            break;
        }
    }
    assert_eq!(hub.stats().connections, connections, "{}", broker.log());
}

/// The same message retained: every subscription brings it back, so starting clean cannot get
/// rid of it. The session gives up (down, with the reason) instead of looping, and the app can
/// connect again and subscribe to something else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retained_message_over_the_packet_limit_takes_the_session_down_not_into_a_loop() {
    let broker = Arc::new(Mosquitto::start_tls());
    let hub = hub();
    let big = vec![b'r'; MAX_BROKER_PACKET + 1000];
    let (b, payload) = (broker.clone(), big.clone());
    tokio::task::spawn_blocking(move || b.publish("retained/big", &payload, 1, true)).await.unwrap();
    let mut att = hub.attach(&who("dev16"), "p", settings(&broker, "retainer"), loopback()).unwrap();
    assert!(!connected(&mut att, false).await);
    // Its SUBACK and the retained message can come in one read, which fails on the message: the
    // subscription's result is then SocketError (it is made again all the same).
    att.commands.send(MqttCommand::Subscribe { id: 1, topics: vec![("retained/#".into(), 1)] }).await.unwrap();
    // Twice: the message at the subscription, then again after the clean reconnection.
    // One deadline for all of it: a session looping on the message sends statuses for ever.
    let (mut lost, mut down) = (0, None);
    let collect = async {
        while lost < 2 || down.is_none() {
            match wait_for(&mut att, |e| matches!(e, MqttEvent::Lost { .. } | MqttEvent::Status { .. })).await {
                MqttEvent::Lost { reason: LostReason::TooLarge, count, .. } => lost += count,
                MqttEvent::Status { state: SessionState::Down, reason } => down = Some(reason),
                MqttEvent::Status { .. } => {}
                other => panic!("{other:?}"),
            }
        }
    };
    if tokio::time::timeout(WAIT, collect).await.is_err() {
        panic!("the session did not go down within {WAIT:?} (lost {lost}, down {down:?})");
    }
    assert_eq!(lost, 2);
    let reason = down.unwrap();
    assert!(reason.contains("given up"), "{reason}");
    wait_stats(&hub, "the broker connection did not end", |s| s.relay_connections == 0).await;
    let lost = hub.stats().lost;
    // Connected again, elsewhere: the session works.
    assert!(!connected(&mut att, true).await);
    subscribe(&mut att, 2, "fine/#", 1).await;
    broker_publish(&broker, "fine/t", b"ok", 1).await;
    assert_eq!(message(next(&mut att).await).2, b"ok");
    assert_eq!(hub.stats().lost, lost, "no more losses");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_count_toward_the_queued_bytes() {
    let broker = Arc::new(Mosquitto::start_tls());
    let hub = MqttHub::new(MqttLimits { queue_bytes: 300, ..fast_limits() }).unwrap();
    let s = settings(&broker, "wordy");
    let mut att = hub.attach(&who("dev13"), "p", s.clone(), loopback()).unwrap();
    assert!(!connected(&mut att, false).await);
    subscribe(&mut att, 1, "qb/#", 1).await;
    drop(att);
    // 203-byte topics, 1-byte payloads: the first fits in 300 bytes, the second does not.
    let topic = |i: u32| format!("qb/{i}{}", "t".repeat(199));
    for i in 0..2 {
        broker_publish(&broker, &topic(i), b"m", 1).await;
    }
    wait_stats(&hub, "the session did not get both", |s| s.received >= 2 && s.lost >= 1).await;
    let mut att = hub.attach(&who("dev13"), "p", s, loopback()).unwrap();
    assert!(connected(&mut att, false).await);
    let (id, t, _, _) = message(next(&mut att).await);
    assert_eq!(t, topic(0));
    att.commands.send(MqttCommand::Ack { id }).await.unwrap();
    match next(&mut att).await {
        MqttEvent::Lost { reason: LostReason::QueueFull, count: 1, topic: t, .. } => assert_eq!(t, topic(1)),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_account_cannot_take_every_session() {
    let limits = MqttLimits { max_sessions: 2, max_sessions_per_account: 1, ..fast_limits() };
    let hub = MqttHub::new(limits).unwrap();
    let broker = SilentBroker::start(false).await;
    let a = |device: &str| Tenant { account: "a".into(), device: device.into() };
    let _a1 = hub.attach(&a("a1"), "p", broker.settings("a1"), loopback()).unwrap();
    // Account A holds its share: its other devices are refused, with a reason that says so...
    assert_eq!(hub.attach(&a("a2"), "p", broker.settings("a2"), loopback()).err(), Some(AttachError::AccountSessions));
    assert_eq!(hub.attach(&a("a1"), "q", broker.settings("a1q"), loopback()).err(), Some(AttachError::AccountSessions));
    // ... its existing session can be attached to again (an attachment dropped without a broker
    // connection ends its session: keep them)...
    let _a1 = hub.attach(&a("a1"), "p", broker.settings("a1"), loopback()).unwrap();
    // ... and account B still gets a session.
    let b = Tenant { account: "b".into(), device: "b1".into() };
    let _b1 = hub.attach(&b, "p", broker.settings("b1"), loopback()).unwrap();
    assert_eq!(hub.stats().sessions, 2);
    // A closed session frees the account's share.
    hub.close("a1", "p");
    wait_stats(&hub, "the session did not end", |s| s.sessions == 1).await;
    assert!(hub.attach(&a("a2"), "p", broker.settings("a2"), loopback()).is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_name_that_never_resolves_times_out_and_is_reported() {
    let (tarpit, _entered) = Tarpit::new();
    let _release = ReleaseOnDrop(tarpit.clone());
    let lookups = NameLookups::new(DnsLimits { timeout: Duration::from_millis(300), ..DnsLimits::default() }, tarpit);
    // The connection attempt's own timeout is longer than the lookup's.
    let limits = MqttLimits { connect_timeout: Duration::from_secs(15), ..fast_limits() };
    let hub = MqttHub::with_lookups(limits, lookups.clone()).unwrap();
    let s = BrokerSettings {
        host: "broker.tarpit".into(),
        port: 1883,
        tls: false,
        ca_pem: None,
        client_cert_pem: None,
        client_key_pem: None,
        username: None,
        password: None,
        client_id: "slow".into(),
    };
    let mut att = hub.attach(&who("dev14"), "p", s, loopback()).unwrap();
    connect(&att, true, None).await;
    match next(&mut att).await {
        MqttEvent::ConnectResult { state: RequestState::NxDomain, session_present: false, .. } => {}
        other => panic!("{other:?}"),
    }
    let stats = lookups.stats();
    assert_eq!((stats.timed_out, stats.in_progress), (1, 1), "{stats:?}");
}
