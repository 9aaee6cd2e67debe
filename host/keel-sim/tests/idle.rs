//! Idle simulated devices cost (almost) nothing: no busy loop, a few KiB each. Runs devices
//! against an in-process gateway (SQLite in a temporary directory).

use std::sync::Arc;
use std::time::Duration;

use keel_server::gateway::{generate_keypair, serve};
use keel_server::store::Store;
use keel_sim::{new_secret, public_key, SimDevice};
use tokio::net::TcpListener;

const DEVICES: usize = 300;

/// CPU time of this process (user + system), in clock ticks.
fn cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

fn rss_bytes() -> u64 {
    let s = std::fs::read_to_string("/proc/self/statm").unwrap();
    s.split(' ').nth(1).unwrap().parse::<u64>().unwrap() * 4096
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_devices_sleep_until_their_next_deadline() {
    let dir = std::env::temp_dir().join(format!("keel-sim-idle-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let store = Store::open(&format!("sqlite://{}?mode=rwc", dir.join("keel.db").display())).await.unwrap();
    let (private, public) = generate_keypair();
    store.create_account("a", "A").await.unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let gw = tokio::spawn(serve(listener, store.clone(), private));
    let mut secrets = Vec::new();
    for i in 0..DEVICES {
        let secret = new_secret();
        store.add_device("a", &format!("kd{i:032x}"), &public_key(&secret), "idle").await.unwrap();
        secrets.push(secret);
    }
    let rss0 = rss_bytes();
    let sims: Vec<_> = secrets.iter().map(|s| Arc::new(SimDevice::<1024>::with_ring(*s, public, 1))).collect();
    let tasks: Vec<_> = sims
        .iter()
        .map(|d| {
            let d = d.clone();
            tokio::spawn(async move { d.run(addr, 1000).await })
        })
        .collect();
    tokio::time::timeout(Duration::from_secs(120), async {
        for d in &sims {
            d.wait_online().await;
        }
    })
    .await
    .expect("every device online");
    // Let the last records and acknowledgements settle, then measure a quiet second.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss1 = rss_bytes();
    let t0 = cpu_ticks();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let used = cpu_ticks() - t0;
    eprintln!(
        "{DEVICES} idle devices (with the in-process server): {} bytes each, {used} ticks of CPU in 2 s",
        rss1.saturating_sub(rss0) / DEVICES as u64
    );
    // A busy loop would use the full 2 s on a core (200 ticks at 100 Hz).
    assert!(used < 40, "idle devices used {used} ticks of CPU in 2 s");
    assert!(sims.iter().all(|d| d.stats().sessions == 1), "no reconnects");
    for t in tasks {
        t.abort();
    }
    gw.abort();
    let _ = std::fs::remove_dir_all(&dir);
}
