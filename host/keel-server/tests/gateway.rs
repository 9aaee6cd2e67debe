//! Gateway and store end to end with simulated devices: real TCP on loopback, and every test
//! runs on SQLite and on PostgreSQL.

mod common;

use common::TestDb;

use std::time::Duration;

use keel_server::gateway::{generate_keypair, serve};
use keel_server::store::Store;
use keel_sim::{new_secret, public_key, SimDevice};
use tokio::net::TcpListener;

/// Waits (polling the store, bounded) until `f` holds.
async fn until<F: std::future::Future<Output = bool>>(mut f: impl FnMut() -> F) {
    for _ in 0..2000 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition not reached");
}

macro_rules! on_both_databases {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let db = super::TestDb::sqlite(stringify!($name));
                super::$name(db.open().await).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let db = super::TestDb::postgres(stringify!($name));
                super::$name(db.open().await).await;
            }
        }
    };
}

on_both_databases!(logs_arrive_exactly_once_in_order_across_a_server_restart);
on_both_databases!(garbage_and_unknown_devices_do_not_disturb_connected_ones);
on_both_databases!(a_replayed_handshake_does_not_bring_a_device_online);

async fn a_replayed_handshake_does_not_bring_a_device_online(store: Store) {
    use keel_link::msg::Up;
    use keel_link::session::{DeviceSession, MAX_FRAME};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (private, public) = generate_keypair();
    store.create_account("a", "A").await.unwrap();
    let secret = new_secret();
    store.add_device("a", "kd03", &public_key(&secret), "victim").await.unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _gw = tokio::spawn(serve(listener, store.clone(), private));
    // The attacker recorded the device's first handshake message and replays it twice.
    let mut dev = DeviceSession::<rand_core::OsRng>::new(&secret, &public).unwrap();
    let hello = Up::Hello { protocol: 1, visor_version: "x", boot_count: 1, app: None, next_log_seq: 0 };
    let mut frame = vec![0u8; MAX_FRAME];
    let n = dev.start(&hello, &mut frame).unwrap();
    for _ in 0..2 {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(&frame[..n]).await.unwrap();
        let mut len = [0u8; 2];
        s.read_exact(&mut len).await.unwrap(); // the server answers: it cannot tell yet
        let mut welcome = vec![0u8; u16::from_be_bytes(len) as usize];
        s.read_exact(&mut welcome).await.unwrap();
        let d = store.device("kd03").await.unwrap().unwrap();
        assert!(!d.online && d.last_seen.is_none(), "a replay must not mark the device online");
    }
}

/// The app's log lines of `id` (kind 0; the device also sends its own events: boot, online, ...).
async fn app_lines(store: &Store, id: &str) -> Vec<keel_server::store::LogRecord> {
    store.logs(id, None, 10_000).await.unwrap().into_iter().filter(|r| r.kind == 0).collect()
}

async fn logs_arrive_exactly_once_in_order_across_a_server_restart(store: Store) {
    let (private, public) = generate_keypair();
    store.create_account("acct1", "Acme").await.unwrap();
    let secret = new_secret();
    store.add_device("acct1", "kd01", &public_key(&secret), "bench-1").await.unwrap();

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let gw = tokio::spawn(serve(listener, store.clone(), private.clone()));
    let dev = std::sync::Arc::new(SimDevice::new(secret, public, 7));
    let d2 = dev.clone();
    let sim = tokio::spawn(async move { d2.run(addr, 20).await });

    for i in 0..200 {
        dev.log(&format!("line {i}"));
    }
    until(|| async { app_lines(&store, "kd01").await.len() >= 200 }).await;
    let d = store.device("kd01").await.unwrap().unwrap();
    assert!(d.online);
    assert_eq!(d.boot_count, Some(7));
    assert_eq!(d.visor_version.as_deref(), Some(keel_sim::VISOR_VERSION));

    // Restart the server while the device keeps logging.
    gw.abort();
    let _ = gw.await;
    for i in 200..400 {
        dev.log(&format!("line {i}"));
    }
    let listener = TcpListener::bind(addr).await.unwrap();
    let gw = tokio::spawn(serve(listener, store.clone(), private.clone()));
    until(|| async { app_lines(&store, "kd01").await.len() >= 400 }).await;

    let logs = app_lines(&store, "kd01").await;
    assert_eq!(logs.len(), 400, "every record exactly once");
    for (i, r) in logs.iter().enumerate() {
        assert_eq!(r.seq >> 32, 7, "boot 7");
        assert_eq!(r.text, format!("line {i}"));
    }
    assert!(dev.stats().sessions >= 2, "the device reconnected by itself");
    sim.abort();
    gw.abort();
}

async fn garbage_and_unknown_devices_do_not_disturb_connected_ones(store: Store) {
    use tokio::io::AsyncWriteExt;
    let (private, public) = generate_keypair();
    store.create_account("a", "A").await.unwrap();
    let secret = new_secret();
    store.add_device("a", "kd02", &public_key(&secret), "good").await.unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _gw = tokio::spawn(serve(listener, store.clone(), private));
    let dev = std::sync::Arc::new(SimDevice::new(secret, public, 1));
    let d2 = dev.clone();
    let _sim = tokio::spawn(async move { d2.run(addr, 20).await });
    dev.log("before");
    until(|| async { app_lines(&store, "kd02").await.len() == 1 }).await;

    // Garbage, an oversized frame announcement, a truncated handshake, an unknown device.
    for bad in [&b"\x00\x05hello"[..], &b"\xff\xff"[..], &b"\x00\x60\x01\x02"[..]] {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(bad).await.unwrap();
        drop(s);
    }
    let stranger = std::sync::Arc::new(SimDevice::new(new_secret(), public, 1));
    stranger.log("should never be stored");
    let s2 = stranger.clone();
    let stranger_task = tokio::spawn(async move { s2.run(addr, 20).await });
    // Two garbage frames are refused; the third refusal is the stranger's handshake.
    let rejected = || store.counters().rejected.load(std::sync::atomic::Ordering::Relaxed);
    until(|| async { rejected() >= 3 }).await;
    stranger_task.abort();
    assert_eq!(stranger.stats().sessions, 0, "unknown device key refused");

    dev.log("after");
    until(|| async { app_lines(&store, "kd02").await.len() == 2 }).await;
    assert_eq!(dev.stats().sessions, 1, "the good device was never disconnected");

    // The refusals were counted for /metrics (above); the one good device authenticated once.
    assert_eq!(store.counters().handshakes.load(std::sync::atomic::Ordering::Relaxed), 1);
    let stored = store.logs("kd02", None, 1000).await.unwrap().len() as u64;
    assert_eq!(store.counters().log_records.load(std::sync::atomic::Ordering::Relaxed), stored);
}

#[test]
fn only_the_newest_connection_of_a_device_marks_it_offline() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let db = common::TestDb::sqlite("online-generations");
        let store = db.open().await;
        let old = store.claim_online("kd01");
        let new = store.claim_online("kd01");
        assert!(!store.release_online("kd01", old), "the old connection ends after the device reconnected");
        assert!(store.release_online("kd01", new), "the newest one ends: offline");
        assert!(!store.release_online("kd01", new), "only once");
    });
}
