//! `keel-sim bench`: gateway throughput with simulated devices against an in-process server
//! (SQLite in a temporary directory, TCP on loopback). Prints a flat JSON object of metrics.

use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_server::gateway::{generate_keypair, serve};
use keel_server::store::Store;
use keel_sim::{new_secret, public_key, SimDevice};
use tokio::net::TcpListener;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) != Some("bench") {
        eprintln!("usage: keel-sim bench [DEVICES] [LOG_LINES]\n  measures handshakes and log ingestion against an in-process server");
        std::process::exit(2);
    }
    let devices: usize = args.get(2).and_then(|v| v.parse().ok()).unwrap_or(200);
    let lines: usize = args.get(3).and_then(|v| v.parse().ok()).unwrap_or(20_000);

    let dir = std::env::temp_dir().join(format!("keel-sim-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let store = Store::open(&format!("sqlite://{}?mode=rwc", dir.join("keel.db").display())).await.unwrap();
    let (private, public) = generate_keypair();
    store.create_account("bench", "bench").await.unwrap();
    let mut sims = Vec::new();
    for i in 0..devices {
        let secret = new_secret();
        store.add_device("bench", &format!("kd{i:032x}"), &public_key(&secret), "sim").await.unwrap();
        sims.push(Arc::new(SimDevice::new(secret, public, 1)));
    }
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve(listener, store.clone(), private));

    // Handshakes: every device connects at once; time until all are online.
    let t0 = Instant::now();
    for s in &sims {
        let s = s.clone();
        tokio::spawn(async move { s.run(addr, 50).await });
    }
    while sims.iter().any(|s| s.stats().sessions == 0) {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let handshakes_per_second = devices as f64 / t0.elapsed().as_secs_f64();

    // Log ingestion: one device sends `lines` records, in batches that fit its ring (so none is
    // dropped); time until the server stored and acknowledged the last one.
    let dev = &sims[0];
    let t1 = Instant::now();
    let mut sent = 0;
    while sent < lines {
        let mut last = 0;
        for i in sent..(sent + 500).min(lines) {
            last = dev.log(&format!("bench line {i} with some typical payload text"));
        }
        sent = (sent + 500).min(lines);
        while dev.stats().acked.is_none_or(|a| a < last) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let stored = store.logs(&format!("kd{:032x}", 0), None, 1).await.map(|v| v.len()).unwrap_or(0);
    assert!(stored > 0, "records were stored");
    let log_lines_per_second = lines as f64 / t1.elapsed().as_secs_f64();
    println!(
        "{{\"handshakes_per_second\": {:.0}, \"log_lines_per_second\": {:.0}, \"bench_devices\": {devices}}}",
        handshakes_per_second, log_lines_per_second
    );
    let _ = std::fs::remove_dir_all(&dir);
    std::process::exit(0);
}
