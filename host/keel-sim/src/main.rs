//! `keel-sim`: load tools built on simulated devices. Each prints a flat JSON object of metrics.
//!
//! - `keel-sim bench [DEVICES] [LOG_LINES]`: gateway throughput with simulated devices against an
//!   in-process server (SQLite in a temporary directory, TCP on loopback): handshakes, log
//!   lines, config fetches over app channels, and QoS 1 publishes through managed MQTT sessions
//!   to a local Mosquitto (started by the bench).
//! - `keel-sim idle --server-bin PATH [--count N] [--concurrency K]`: memory of a real `keel
//!   server run` process (a child process, so its RSS is the server's alone) holding `N`
//!   connected, idle simulated devices.

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_channel::msg::config;
use keel_server::gateway::{generate_keypair, serve};
use keel_server::settings::StoreKind;
use keel_server::store::Store;
use keel_sim::{new_secret, public_key, SimDevice};
use tokio::net::TcpListener;

const USAGE: &str = "usage:
  keel-sim bench [DEVICES] [LOG_LINES]
      handshakes, log ingestion, config fetches and MQTT publishes against an
      in-process server (needs `mosquitto`)
  keel-sim idle --server-bin PATH [--count N] [--concurrency K] [--hold SECS]
      RSS of a `keel server run` child process per connected idle device
      (N devices, default 10000; at most K handshakes in flight, default 64;
      --hold keeps them connected SECS more seconds after the measurement, for a heap profiler)";

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("bench") => {
            bench(&args[1..]).await;
            Ok(())
        }
        Some("idle") => idle(&args[1..]).await,
        _ => {
            eprintln!("{USAGE}");
            std::process::exit(2);
        }
    };
    // Exit without tearing down thousands of device tasks one by one.
    match result {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            eprintln!("keel-sim: {e}");
            std::process::exit(1);
        }
    }
}

/// Starts every device (each reconnects with its core's own backoff; `retry_ms` is passed on
/// but no longer used), with at most `in_flight` of them between connecting and online at any
/// time; returns once the last one started.
async fn connect_all<const N: usize>(sims: &[Arc<SimDevice<N>>], addr: SocketAddr, in_flight: usize, retry_ms: u32) {
    let slots = Arc::new(tokio::sync::Semaphore::new(in_flight));
    for d in sims {
        let slot = slots.clone().acquire_owned().await.expect("semaphore open");
        let d = d.clone();
        tokio::spawn(async move {
            let run = d.run(addr, retry_ms);
            tokio::pin!(run);
            tokio::select! {
                _ = &mut run => {}
                _ = d.wait_online() => {}
            }
            drop(slot);
            run.await
        });
    }
}

async fn bench(args: &[String]) {
    let devices: usize = args.first().and_then(|v| v.parse().ok()).unwrap_or(200);
    let lines: usize = args.get(1).and_then(|v| v.parse().ok()).unwrap_or(20_000);

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

    // Handshakes: every device connects, at most 32 handshakes in flight (all at once would
    // measure the kernel's SYN retry after listen-queue overflows rather than the server); time
    // until all are online.
    let t0 = Instant::now();
    connect_all(&sims, addr, 32, 50).await;
    for s in &sims {
        s.wait_online().await;
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

    // App channels: every device's app fetches a config value and a secret over a channel
    // (open, request, answer from the store, close), CONFIG_ROUNDS times, all devices at once;
    // time until the last answer.
    store.set_setting("bench", None, StoreKind::Config, "greeting", b"hello").await.unwrap().unwrap();
    let t2 = Instant::now();
    let mut fetches = tokio::task::JoinSet::new();
    for s in &sims {
        let s = s.clone();
        fetches.spawn(async move {
            for _ in 0..CONFIG_ROUNDS {
                let keys = [(config::SCOPE_ACCOUNT, config::STORE_CONFIG, "greeting")];
                let got = s.fetch_config(&keys, Duration::from_secs(60)).await.expect("a config fetch");
                assert_eq!(got, vec![Ok(b"hello".to_vec())]);
            }
        });
    }
    while let Some(r) = fetches.join_next().await {
        r.expect("a device's fetches");
    }
    let config_fetches_per_second = (devices * CONFIG_ROUNDS) as f64 / t2.elapsed().as_secs_f64();

    // Managed MQTT: every device's app connects its session to a local Mosquitto, then
    // publishes MQTT_ROUNDS QoS 1 messages one after the other (each answered once the broker
    // acknowledged it), all devices at once; time from the first publish to the last answer.
    let broker = Broker::start(&dir).unwrap_or_else(|e| panic!("{e}"));
    store
        .add_policy_rule("bench", "allow", "127.0.0.1/32", Some(broker.port), Some("mqtt"), false)
        .await
        .unwrap()
        .unwrap();
    let url = format!("mqtt://127.0.0.1:{}", broker.port);
    store.set_setting("bench", None, StoreKind::Config, "mqtt/default/url", url.as_bytes()).await.unwrap().unwrap();
    let start = Arc::new(tokio::sync::Barrier::new(devices + 1));
    let mut sessions = tokio::task::JoinSet::new();
    for (i, s) in sims.iter().enumerate() {
        let (s, start) = (s.clone(), start.clone());
        sessions.spawn(async move {
            let limit = Duration::from_secs(60);
            let mut m = s.mqtt("").expect("an MQTT channel");
            m.connect(true, limit).await.expect("the session connects");
            start.wait().await;
            for r in 0..MQTT_ROUNDS {
                let payload = format!("device {i} reading {r}");
                m.publish(&format!("bench/{i}"), payload.as_bytes(), 1, limit).await.expect("a publish");
            }
        });
    }
    start.wait().await;
    let t3 = Instant::now();
    while let Some(r) = sessions.join_next().await {
        r.expect("a device's publishes");
    }
    let mqtt_publishes_per_second = (devices * MQTT_ROUNDS) as f64 / t3.elapsed().as_secs_f64();
    drop(broker);
    println!(
        "{{\"handshakes_per_second\": {:.0}, \"log_lines_per_second\": {:.0}, \"config_fetches_per_second\": {:.0}, \"mqtt_publishes_per_second\": {:.0}, \"bench_devices\": {devices}}}",
        handshakes_per_second, log_lines_per_second, config_fetches_per_second, mqtt_publishes_per_second
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// QoS 1 publishes each device makes in the bench.
const MQTT_ROUNDS: usize = 10;

/// A Mosquitto broker on a loopback port for the bench (killed when dropped).
struct Broker {
    port: u16,
    child: Child,
}

impl Broker {
    fn start(dir: &std::path::Path) -> Result<Broker, String> {
        let port =
            std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map_err(|e| e.to_string())?.port();
        let conf = dir.join("mosquitto.conf");
        std::fs::write(&conf, format!("listener {port} 127.0.0.1\nallow_anonymous true\n"))
            .map_err(|e| e.to_string())?;
        let bin =
            if std::path::Path::new("/usr/sbin/mosquitto").exists() { "/usr/sbin/mosquitto" } else { "mosquitto" };
        let child = Command::new(bin)
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting mosquitto (is the `mosquitto` package installed?): {e}"))?;
        let mut broker = Broker { port, child };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline || broker.child.try_wait().map_or(true, |s| s.is_some()) {
                return Err(format!("mosquitto did not listen on port {port}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(broker)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Config fetches each device makes in the bench (within the open budget's burst).
const CONFIG_ROUNDS: usize = 5;

/// Log ring of an idle simulated device: it never logs, so 1 KiB (two maximal records) is plenty.
const IDLE_RING: usize = 1024;
/// Overall limit for connecting the devices and for the server to report them online.
const CONNECT_LIMIT: Duration = Duration::from_secs(600);

/// A temporary directory, removed when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The `keel server run` child, killed when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn idle(args: &[String]) -> Result<(), String> {
    let mut server_bin = None;
    let mut count: usize = 10_000;
    let mut concurrency: usize = 64;
    let mut hold = Duration::ZERO;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{a} needs a value\n{USAGE}"));
        match a.as_str() {
            "--server-bin" => server_bin = Some(PathBuf::from(value()?)),
            "--count" => count = value()?.parse().map_err(|_| "--count: not a number")?,
            "--concurrency" => concurrency = value()?.parse().map_err(|_| "--concurrency: not a number")?,
            "--hold" => hold = Duration::from_secs(value()?.parse().map_err(|_| "--hold: not a number")?),
            _ => return Err(format!("unknown argument {a}\n{USAGE}")),
        }
    }
    let server_bin = server_bin.ok_or(format!("--server-bin is required\n{USAGE}"))?;
    if count == 0 || concurrency == 0 {
        return Err("--count and --concurrency must be positive".into());
    }
    // One socket per device in this process and in the server (which inherits the limit).
    check_open_files(count as u64 + 256)?;

    let dir = std::env::temp_dir().join(format!("keel-sim-idle-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let dir = TempDir(dir);
    let data = dir.0.join("data");
    let init = Command::new(&server_bin)
        .args(["--json", "server", "init", "--data"])
        .arg(&data)
        .env_remove("KEEL_DATABASE")
        .output()
        .map_err(|e| format!("cannot run {}: {e}", server_bin.display()))?;
    let init_out = String::from_utf8_lossy(&init.stdout);
    if !init.status.success() {
        return Err(format!("keel server init failed: {init_out}{}", String::from_utf8_lossy(&init.stderr)));
    }
    let token = json_str(&init_out, "token").ok_or_else(|| format!("no token in {init_out}"))?;
    let account = json_str(&init_out, "account").ok_or_else(|| format!("no account in {init_out}"))?;
    let server_public = json_str(&init_out, "server_public_key")
        .and_then(|h| parse_key(&h))
        .ok_or_else(|| format!("no server_public_key in {init_out}"))?;

    // Register the devices directly in the server's store before the server starts.
    let t_reg = Instant::now();
    let store = Store::open(&format!("sqlite://{}?mode=rwc", data.join("keel.db").display()))
        .await
        .map_err(|e| format!("cannot open the store: {e}"))?;
    let mut sims = Vec::with_capacity(count);
    for i in 0..count {
        let secret = new_secret();
        store
            .add_device(&account, &format!("kd{i:032x}"), &public_key(&secret), "idle-sim")
            .await
            .map_err(|e| format!("cannot add device {i}: {e}"))?;
        sims.push(Arc::new(SimDevice::<IDLE_RING>::with_ring(secret, server_public, 1)));
    }
    drop(store);
    eprintln!("keel-sim idle: registered {count} devices in {:.1} s", t_reg.elapsed().as_secs_f64());

    let (http, gateway) = free_ports()?;
    let mut child = Command::new(&server_bin)
        .args(["server", "run", "--data"])
        .arg(&data)
        .args(["--http", &http.to_string(), "--gateway", &gateway.to_string()])
        .env_remove("KEEL_DATABASE")
        // Its own log: warnings and errors only (10 000 "device online" lines are no use here).
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", server_bin.display()))?;
    let stderr = child.stderr.take().ok_or("no server stderr")?;
    std::thread::spawn(move || {
        for l in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("[server] {l}");
        }
    });
    let mut server = Server(child);
    let pid = server.0.id();
    // Ready once the API answers (both listeners are bound before it serves).
    let t_start = Instant::now();
    let online_at_start = loop {
        if let Ok(n) = online_gauge(http, &token).await {
            break n;
        }
        if let Ok(Some(status)) = server.0.try_wait() {
            return Err(format!("the server exited: {status}"));
        }
        if t_start.elapsed() > Duration::from_secs(30) {
            return Err("the server did not answer on its API within 30 s".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // Baseline: the started server, after /metrics requests (the same path used below).
    if online_at_start != 0 {
        return Err("devices online before any connected".into());
    }
    let (baseline, _) = settled_rss(pid).await?;

    // Connect every device, at most `concurrency` handshakes in flight.
    let t0 = Instant::now();
    connect_all(&sims, gateway, concurrency, 1000).await;
    let all_online = async {
        for d in &sims {
            d.wait_online().await;
        }
    };
    tokio::time::timeout(CONNECT_LIMIT, all_online).await.map_err(|_| {
        let n = sims.iter().filter(|d| d.stats().sessions > 0).count();
        format!("only {n} of {count} devices online after {} s", CONNECT_LIMIT.as_secs())
    })?;
    let connect_seconds = t0.elapsed().as_secs_f64();
    // The devices are online once they got `Welcome`; the server counts them after `Ready`.
    loop {
        let online = online_gauge(http, &token).await?;
        if online as usize >= count {
            break;
        }
        if t0.elapsed() > CONNECT_LIMIT {
            return Err(format!("the server reports {online} of {count} devices online"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("keel-sim idle: {count} devices online in {connect_seconds:.1} s");

    let (idle, settled) = settled_rss(pid).await?;
    if !settled {
        eprintln!("keel-sim idle: warning: server RSS still changing; using the last sample");
    }
    // Still all connected on their first session (no drop and reconnect during the measurement).
    let online = online_gauge(http, &token).await?;
    let reconnects: u64 = sims.iter().map(|d| u64::from(d.stats().sessions.saturating_sub(1))).sum();
    if online as usize != count || reconnects > 0 {
        return Err(format!("devices dropped during the measurement: {online} online, {reconnects} reconnects"));
    }
    if !hold.is_zero() {
        eprintln!("keel-sim idle: measured; holding the devices connected for {} s", hold.as_secs());
        tokio::time::sleep(hold).await;
    }
    drop(server);
    drop(dir);
    let per_device = idle.saturating_sub(baseline) as f64 / count as f64;
    println!(
        "{{\"server_bytes_per_idle_device\": {per_device:.0}, \"idle_devices\": {count}, \
         \"server_rss_baseline_bytes\": {baseline}, \"server_rss_idle_bytes\": {idle}, \
         \"idle_connect_seconds\": {connect_seconds:.1}}}"
    );
    Ok(())
}

/// Fails with advice if the soft open-files limit is below `need`.
fn check_open_files(need: u64) -> Result<(), String> {
    let limits = std::fs::read_to_string("/proc/self/limits").map_err(|e| format!("/proc/self/limits: {e}"))?;
    let line = limits.lines().find(|l| l.starts_with("Max open files")).ok_or("no open-files limit")?;
    let mut nums = line["Max open files".len()..].split_whitespace();
    let soft = nums.next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(u64::MAX); // "unlimited"
    let hard = nums.next().unwrap_or("?");
    if soft < need {
        return Err(format!(
            "{need} open files needed (one socket per device, in this process and in the server), \
             but the soft limit is {soft} (hard limit {hard}): run `ulimit -n {need}` in this shell first \
             (if that exceeds the hard limit, raise `nofile` in /etc/security/limits.conf or use --count)"
        ));
    }
    Ok(())
}

/// Resident set size of process `pid`, in bytes.
fn rss(pid: u32) -> Result<u64, String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(|e| format!("server process: {e}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .ok_or_else(|| "no VmRSS in /proc/PID/status".into())
}

/// Polls the RSS of `pid` until it stops moving: 8 samples 250 ms apart (2 s) within 0.5% (at
/// least 64 KiB) of each other. Returns the last sample and whether it settled within 60 s.
async fn settled_rss(pid: u32) -> Result<(u64, bool), String> {
    const WINDOW: usize = 8;
    let t0 = Instant::now();
    let mut samples = std::collections::VecDeque::with_capacity(WINDOW + 1);
    let mut every = tokio::time::interval(Duration::from_millis(250));
    loop {
        every.tick().await;
        let now = rss(pid)?;
        samples.push_back(now);
        if samples.len() > WINDOW {
            samples.pop_front();
        }
        if samples.len() == WINDOW {
            let (lo, hi) = samples.iter().fold((u64::MAX, 0), |(lo, hi), &v| (lo.min(v), hi.max(v)));
            if hi - lo <= (hi / 200).max(64 * 1024) {
                return Ok((now, true));
            }
        }
        if t0.elapsed() > Duration::from_secs(60) {
            return Ok((now, false));
        }
    }
}

/// `keel_devices_online` from the server's Prometheus `/metrics`, through the API client (a new
/// connection each time: none is held open while the server's memory is measured).
async fn online_gauge(http: SocketAddr, token: &str) -> Result<i64, String> {
    let api = keel_api::Client::new(format!("http://{http}")).with_token(token).with_timeout(Duration::from_secs(30));
    let body = tokio::task::spawn_blocking(move || api.metrics())
        .await
        .map_err(|e| format!("metrics: {e}"))?
        .map_err(|e| format!("metrics: {e}"))?;
    body.lines()
        .find_map(|l| l.strip_prefix("keel_devices_online ")?.trim().parse().ok())
        .ok_or_else(|| format!("no keel_devices_online in /metrics: {body:?}"))
}

/// Two distinct free loopback ports (bound, read and released).
fn free_ports() -> Result<(SocketAddr, SocketAddr), String> {
    let a = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let b = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok((a.local_addr().map_err(|e| e.to_string())?, b.local_addr().map_err(|e| e.to_string())?))
}

/// The string value of `"key": "..."` in a flat JSON object (no escapes expected).
fn json_str(json: &str, key: &str) -> Option<String> {
    let rest = json.split(&format!("\"{key}\"")).nth(1)?.trim_start().strip_prefix(':')?.trim_start();
    Some(rest.strip_prefix('"')?.split('"').next()?.to_string())
}

fn parse_key(hex: &str) -> Option<[u8; 32]> {
    let mut key = [0u8; 32];
    if hex.len() != 64 {
        return None;
    }
    for (i, b) in key.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(key)
}
