//! Channels under faults and load, on a QEMU device with a real server, a local HTTPS server and
//! a TLS Mosquitto (the `channel-stress` app; see its documentation):
//! * 10,000 channel opens and closes leave every slot free; 40 requests closed mid-transfer
//!   leave nothing behind on the device or the server (a full GET and all slots afterwards);
//!   a notification ring overrun is reported with its count and loses no message;
//! * an update (256 KiB) downloads and installs while the app keeps a channel streaming.
//!
//! `bench_channels` (ignored; `cargo xtask bench` runs it) measures the channel notification
//! latency under `-icount` and the channel throughput while an update downloads.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use keel_testpeers::{HttpServer, Mosquitto, TestCa};
use keel_vdev::qemu::Clock;

mod common;
#[path = "common/lab.rs"]
mod lab;

use common::*;
use lab::{ca_file, Lab};

const SUITE: &str = "channel-faults";

/// Holds requests of the [`bytes_server`] while `hold` is set: the first held one is announced
/// on `held`, and all are let go by `release`.
#[derive(Clone)]
struct Gate {
    hold: Arc<AtomicBool>,
    held: Arc<Mutex<Option<SyncSender<()>>>>,
    release: Arc<tokio::sync::Notify>,
}

impl Gate {
    fn new() -> (Gate, Receiver<()>) {
        let (tx, rx) = sync_channel(1);
        let g = Gate {
            hold: Arc::new(AtomicBool::new(false)),
            held: Arc::new(Mutex::new(Some(tx))),
            release: Arc::new(tokio::sync::Notify::new()),
        };
        (g, rx)
    }
}

/// An HTTPS server answering `GET /bytes/<n>` with `n` bytes, byte `i` being `i % 251`.
fn bytes_server(rt: &tokio::runtime::Runtime, ca: &TestCa, gate: &Gate) -> HttpServer {
    let leaf = ca.localhost();
    let gate = gate.clone();
    rt.block_on(HttpServer::start_tls(&leaf, move |req| {
        let gate = gate.clone();
        async move {
            if gate.hold.load(Ordering::SeqCst) {
                let released = gate.release.notified();
                if let Some(tx) = gate.held.lock().unwrap().take() {
                    let _ = tx.send(());
                }
                released.await;
            }
            let n: usize = req.path.strip_prefix("/bytes/").and_then(|n| n.parse().ok()).unwrap_or(0).min(1 << 20);
            let body: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
            hyper::Response::builder().body(keel_testpeers::full(body)).unwrap()
        }
    }))
}

/// A lab running `channel-stress` in `mode` against `https` (allowed by the policy).
fn stress_lab(name: &str, mode: &str, https: &HttpServer, ca: &TestCa) -> Lab {
    let ca_path = ca_file(SUITE, ca, name);
    let lab = Lab::new(SUITE, name, &keel_vdev::app_elf("channel-stress"), &[("KEEL_PROXY_CA", &ca_path)]);
    let port = https.port.to_string();
    lab.keel(&["policy", "allow", "127.0.0.1/32", "--port", &port, "--scheme", "https"]);
    lab.keel(&["config", "set", "channel-stress/mode", mode]);
    lab.keel(&["config", "set", "channel-stress/url", &format!("https://localhost:{port}")]);
    lab
}

fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split_whitespace().find_map(|w| w.strip_prefix(key).and_then(|v| v.strip_prefix('='))).unwrap_or("")
}

#[test]
fn channels_survive_churn_mid_transfer_closes_and_a_ring_overrun() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ca = TestCa::new("keel channel-faults CA");
    let https = bytes_server(&rt, &ca, &Gate::new().0);
    let broker = Mosquitto::start_tls();
    let mut lab = stress_lab("faults", "faults", &https, &ca);
    let port = broker.port.to_string();
    lab.keel(&["policy", "allow", "127.0.0.1/32", "--port", &port, "--scheme", "mqtts"]);
    lab.keel(&["config", "set", "mqtt/stress/url", &format!("mqtts://localhost:{port}")]);
    lab.config("mqtt/stress/ca", broker.ca_pem.as_deref().unwrap());
    lab.boot();

    lab.wait("the churn", "channel-stress: churn opens=10000");
    let line = lab.wait("the closes mid-transfer", "channel-stress: mid-transfer closes=40");
    eprintln!("{line}");
    let cut: u32 = field(&line, "cut").parse().unwrap();
    assert!(cut >= 1, "the first request is closed right after it was sent: {line}");
    let line = lab.pass("channel-stress");
    eprintln!("{line}");
    let lost: u64 = field(&line, "overrun_lost").parse().unwrap();
    // 40 publish results and 40 echoes for a ring of 16 records: the app reads nothing while
    // masked (its sends do not touch the ring), so every record beyond the 16 is counted.
    assert!(lost >= 80 - 16, "records found the ring full and were counted: {line}");
    assert!(line.contains("echoes=40/40"), "{line}");
    // The visor and the link stayed up throughout: no reconnect, no app restart.
    let console = lab.tail(usize::MAX);
    assert_eq!(console.matches("net: online").count(), 1, "one link for the whole run:\n{console}");
    assert_eq!(console.matches("starting app '").count(), 1, "one app start:\n{console}");
}

/// What a stream did while an update downloaded.
struct Window {
    /// (t_us, bytes) of each GET completed during the download.
    gets: Vec<(u64, u64)>,
    /// Host time the download took.
    seconds: f64,
}

/// Deploys `big` 2.0.0 (256 KiB) to the streaming device and waits until it runs, confirmed;
/// returns the GETs completed between the download's first progress line and the update being
/// ready, and the download's time as the host saw it.
fn update_while_streaming(lab: &mut Lab) -> Window {
    let mark = lab.qemu().console_so_far().len();
    // Polite: the visor says when it is ready and the app applies it.
    lab.deploy(&keel_vdev::app_elf("big"), "stress", "2.0.0", 2, &["--politeness-s", "300"]);
    let t0 = Instant::now();
    lab.wait("the download", "update: seq 2 ");
    lab.wait("the downloaded update", "update: ready");
    let seconds = t0.elapsed().as_secs_f64();
    lab.wait("the new version", "big: started");
    lab.wait("its confirmation", "big: update confirmed");
    let lines = lab.qemu().console_so_far();
    let lines = &lines[mark..];
    let start = lines.iter().position(|l| l.contains("update: seq 2 ")).unwrap();
    let end = lines.iter().position(|l| l.contains("update: ready")).unwrap();
    let gets = lines[start..end]
        .iter()
        .filter(|l| l.contains("channel-stress: stream n="))
        .map(|l| (field(l, "t_us").parse().unwrap(), field(l, "bytes").parse().unwrap()))
        .collect();
    Window { gets, seconds }
}

#[test]
fn a_channel_streams_through_a_server_restart_and_an_update_download() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ca = TestCa::new("keel channel-faults CA");
    let (gate, held) = Gate::new();
    let https = bytes_server(&rt, &ca, &gate);
    let mut lab = stress_lab("update", "stream", &https, &ca);
    lab.boot();
    lab.wait("the stream", "channel-stress: stream n=2 ");

    // The server restarts while a request is in flight (held at the HTTPS server): the app's
    // GET ends with `link lost`, and the stream goes on once the device is online again.
    gate.hold.store(true, Ordering::SeqCst);
    held.recv_timeout(LIMIT).expect("a request held at the HTTPS server");
    lab.restart_server();
    gate.hold.store(false, Ordering::SeqCst);
    gate.release.notify_waiters();
    let line = lab.wait("the request's end", "channel-stress: stream failed");
    assert!(line.contains("link lost"), "{line}");
    lab.wait("the link again", "net: online");
    lab.wait("the stream again", "channel-stress: stream n=");

    let w = update_while_streaming(&mut lab);
    assert!(
        !w.gets.is_empty(),
        "the channel kept streaming during the {:.1} s download: {} GETs completed\n{}",
        w.seconds,
        w.gets.len(),
        lab.tail(80)
    );
    let console = lab.tail(usize::MAX);
    assert_eq!(
        console.matches("channel-stress: stream failed").count(),
        1,
        "only the restart failed a GET:\n{console}"
    );
}

/// The channel benchmarks (`cargo xtask bench` runs it; ignored by `cargo test`): one JSON line
/// with
/// * `notification_latency_us`: a channel's READABLE record, from the visor writing it (the
///   time the record carries) to the app's code holding it (the SDK's interrupt handler, its
///   queue and the app waking from `wfi`), under `-icount shift=0` (1 instruction = 1 ns);
///   mean of 20 records;
/// * `channel_throughput_kib_s`: bytes of 48 KiB HTTPS responses the app received per second
///   of device time while a 256 KiB update downloaded over the same link.
#[test]
#[ignore]
fn bench_channels() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ca = TestCa::new("keel channel bench CA");
    let https = bytes_server(&rt, &ca, &Gate::new().0);

    let mut lab = stress_lab("bench-latency", "latency", &https, &ca);
    lab.boot_with(Clock::Counted);
    let line = lab.wait("the latency", "channel-stress: bench notification_latency_ns=");
    let mean_ns: f64 = field(&line, "notification_latency_ns").parse().unwrap();
    let max_ns: f64 = field(&line, "max_ns").parse().unwrap();

    let mut lab = stress_lab("bench-throughput", "stream", &https, &ca);
    lab.boot();
    lab.wait("the stream", "channel-stress: stream n=2 ");
    let w = update_while_streaming(&mut lab);
    assert!(w.gets.len() >= 2, "too few GETs during the download to measure: {}", w.gets.len());
    let (first, last) = (w.gets[0].0, w.gets[w.gets.len() - 1].0);
    let bytes: u64 = w.gets[1..].iter().map(|g| g.1).sum();
    let kib_s = bytes as f64 / 1024.0 / ((last - first) as f64 / 1e6);
    println!(
        "{{\"notification_latency_us\": {:.3}, \"notification_latency_max_us\": {:.3}, \"channel_throughput_kib_s\": {:.1}, \"update_download_with_channels_s\": {:.2}, \"gets_during_download\": {}}}",
        mean_ns / 1e3,
        max_ns / 1e3,
        kib_s,
        w.seconds,
        w.gets.len()
    );
}
