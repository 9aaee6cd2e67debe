//! The server's end of a device's app channels (`keel_server::channels::ChannelHub`) driven the
//! way the gateway drives it, with the real store and services: what a hostile device gets when
//! it asks for what it should not have, or keeps asking on a one-request channel.

#[macro_use]
mod common;

use std::sync::Arc;
use std::time::Duration;

use common::TestDb;
use keel_abi::chan::{Kind, Reason};
use keel_channel::msg::{config, config_result, http_result, Keys, Msg, Strs};
use keel_server::channels::{ChanDown, ChannelHub, Services};
use keel_server::connection::ChanUp;
use keel_server::settings::{MasterKey, StoreKind};
use keel_server::store::Store;

on_both_databases!("channels_", a_device_cannot_fetch_the_servers_broker_credentials);
on_both_databases!("channels_", a_second_http_request_ends_the_channel);

const DEV: &str = "kd000000000000000000000000000000c1";

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

/// The next whole message the hub sends on `ch`.
async fn message(hub: &mut ChannelHub, ch: u32) -> Vec<u8> {
    let mut msg = vec![];
    loop {
        for d in next(hub).await {
            if let ChanDown::Data { ch: c, last, data } = d {
                assert_eq!(c, ch);
                msg.extend_from_slice(&data);
                if last {
                    return msg;
                }
            }
        }
    }
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
