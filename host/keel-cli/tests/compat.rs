//! The C apps' connectivity end to end: the Microvisor-compatible conformance apps
//! (`sdk/c/compat/examples`: mv-http-get, mv-config, mv-mqtt, mv-update) and the FreeRTOS
//! channel workload (`sdk/c/examples/freertos-channels`), each on a provisioned QEMU device
//! talking to a real `keel` server, set up with the CLI, with real peers: a local HTTPS server
//! and Mosquitto with TLS (keel-testpeers).
//!
//! The apps' HTTPS URLs are compiled in (as a Microvisor app's would be): each test starts its
//! HTTPS server on a free loopback port and builds its app for that URL.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use keel_testpeers::{HttpServer, Mosquitto, TestCa};

mod common;
#[path = "common/lab.rs"]
mod lab;

use common::*;
use lab::{ca_file, Lab};

const SUITE: &str = "compat-e2e";

/// Builds a C app with its Makefile (`dir` relative to the repository) into
/// `target/c-apps[/sub]`, with `defs` as `DEFS`; returns its ELF. Make rebuilds nothing that is
/// up to date, so this is cheap after `cargo xtask build`.
fn c_app(dir: &str, sub: Option<&str>, defs: Option<&str>) -> PathBuf {
    let root = keel_vdev::repo_root();
    let mut out = root.join("target/c-apps");
    if let Some(s) = sub {
        out = out.join(s);
    }
    std::fs::create_dir_all(&out).unwrap();
    let mut make = Command::new("make");
    make.arg("-s").arg("-C").arg(root.join(dir)).arg(format!("BUILD={}", out.display()));
    if let Some(d) = defs {
        make.arg(format!("DEFS={d}"));
    }
    let o = make.output().expect("run make (arm-none-eabi-gcc needed)");
    assert!(
        o.status.success(),
        "make {dir}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let name = Path::new(dir).file_name().unwrap().to_str().unwrap();
    out.join(format!("{name}.elf"))
}

/// Builds the app in `dir` for `url` (its `URL` define) into a fresh `target/c-apps/<name>-url`
/// (make does not track defines: objects built for another URL must not be reused).
fn c_app_for_url(dir: &str, url: &str) -> PathBuf {
    let name = Path::new(dir).file_name().unwrap().to_str().unwrap();
    let sub = format!("{name}-url");
    let _ = std::fs::remove_dir_all(keel_vdev::repo_root().join("target/c-apps").join(&sub));
    c_app(dir, Some(&sub), Some(&format!("-DURL=\"\\\"{url}\\\"\"")))
}

/// An HTTPS server on a free loopback port answering `hello from <path>`, counting requests.
fn hello_server(rt: &tokio::runtime::Runtime, ca: &TestCa) -> (HttpServer, Arc<AtomicUsize>) {
    let leaf = ca.localhost();
    let requests = Arc::new(AtomicUsize::new(0));
    let count = requests.clone();
    let server = rt.block_on(HttpServer::start_tls(&leaf, move |req| {
        count.fetch_add(1, Ordering::SeqCst);
        async move {
            hyper::Response::builder()
                .header("content-type", "text/plain")
                .body(keel_testpeers::full(format!("hello from {}", req.path)))
                .unwrap()
        }
    }));
    (server, requests)
}

/// The value of `key=` in a console line (up to the next space).
fn field<'a>(line: &'a str, key: &str) -> &'a str {
    let pat = format!(" {key}=");
    let at = line.find(&pat).unwrap_or_else(|| panic!("no {key}= in {line}")) + pat.len();
    line[at..].split(' ').next().unwrap()
}

#[test]
fn mv_http_get_conformance() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ca = TestCa::new("keel compat test CA");
    let (https, requests) = hello_server(&rt, &ca);
    let url = format!("https://localhost:{}/hello", https.port);
    let app = c_app_for_url("sdk/c/compat/examples/mv-http-get", &url);
    let ca_path = ca_file(SUITE, &ca, "mv-http-get");
    let mut lab = Lab::new(SUITE, "mv-http-get", &app, &[("KEEL_PROXY_CA", &ca_path)]);
    let port = https.port.to_string();
    lab.keel(&["policy", "allow", "127.0.0.1/32", "--port", &port, "--scheme", "https"]);
    lab.boot();
    let line = lab.pass("mv-http-get");
    assert_eq!(field(&line, "status"), "200", "{line}");
    assert!(line.contains("body=hello from /hello"), "{line}");
    assert_eq!(requests.load(Ordering::SeqCst), 1, "one request reached the server");
}

#[test]
fn mv_config_conformance() {
    let app = c_app("sdk/c/compat/examples/mv-config", None, None);
    let mut lab = Lab::new(SUITE, "mv-config", &app, &[]);
    lab.keel(&["config", "set", "greeting", "hello-from-keel"]);
    let secret = "mv-s3cr3t-0123456789";
    lab.secret("api-key", secret, None);
    lab.boot();
    let line = lab.pass("mv-config");
    assert_eq!(field(&line, "greeting"), "hello-from-keel", "{line}");
    assert_eq!(field(&line, "secret-len"), secret.len().to_string(), "{line}");
    assert_eq!(field(&line, "missing"), "KEYNOTFOUND", "{line}");
    assert!(!lab.tail(usize::MAX).contains(secret), "the secret's value never reaches the console");
}

#[test]
fn mv_mqtt_conformance() {
    let app = c_app("sdk/c/compat/examples/mv-mqtt", None, None);
    let broker = Mosquitto::start_tls();
    let mut lab = Lab::new(SUITE, "mv-mqtt", &app, &[]);
    let port = broker.port.to_string();
    lab.keel(&["policy", "allow", "127.0.0.1/32", "--port", &port, "--scheme", "mqtts"]);
    lab.keel(&["config", "set", "mqtt/default/url", &format!("mqtts://localhost:{port}")]);
    lab.config("mqtt/default/ca", broker.ca_pem.as_deref().unwrap());
    let id = lab.id.clone();
    let mut sensor = broker.subscribe(&format!("sensor/{id}/#"));
    lab.boot();
    let ready = lab.wait("the app's subscription", "mv-mqtt: READY");
    assert!(ready.contains(&format!("subscribed=command/{id}")), "{ready}");
    let hello = sensor.next(LIMIT).unwrap_or_else(|| panic!("no hello at the broker\n{}", broker.log()));
    assert_eq!(hello, format!("sensor/{id} {{\"hello\":1}}"));

    broker.publish(&format!("command/{id}"), b"blink-3", 1, false);
    let line = lab.pass("mv-mqtt");
    assert_eq!(field(&line, "command"), "blink-3", "{line}");
    assert_eq!(field(&line, "published"), "2", "{line}");
    let echo = sensor.next(LIMIT).unwrap_or_else(|| panic!("no echo at the broker\n{}", broker.log()));
    assert_eq!(echo, format!("sensor/{id}/ack blink-3"));
}

#[test]
fn mv_update_conformance() {
    let v1 = c_app("sdk/c/compat/examples/mv-update", None, None);
    let v2 = c_app("sdk/c/compat/examples/mv-update", Some("mv-update-v2"), Some("-DAPP_VERSION=2"));
    let mut lab = Lab::new(SUITE, "mv-update", &v1, &[]);
    lab.boot();
    // The app says so at once, often before the link is up (which `boot` waited for).
    lab.wait_or_seen("version 1", "mv-update: waiting for an update (version=1)");

    // Version 2, polite (the visor tells the app and waits for it to apply), confirmed by the
    // link (a Microvisor app never confirms) after a short grace time.
    lab.deploy(&v2, "mv-update", "2.0.0", 2, &["--politeness-s", "300", "--grace-s", "10"]);

    let line = lab.wait("the update notification", "mv-update: UPDATEDOWNLOADED");
    assert!(line.contains("tag=7"), "{line}");
    let line = lab.pass("mv-update");
    assert_eq!(field(&line, "version"), "2", "{line}");
    assert_eq!(field(&line, "wake"), "9", "APPLICATIONUPDATE: {line}");
    let console = lab.tail(usize::MAX);
    assert!(!console.contains("politeness time over"), "the app applied it, not the visor:\n{console}");

    // The visor confirms the trial once the link has been up for the grace time, then reports
    // it; the server's view follows that report (checked again until it has stored it).
    lab.wait("the confirmation", "update: confirmed seq 2");
    let start = Instant::now();
    loop {
        let u = lab.keel(&["devices", "show", &lab.id])["update"].clone();
        if u["sequence"] == 2 && u["state"] == "confirmed" {
            break;
        }
        assert!(start.elapsed() < LIMIT, "the server never stored the confirmation: {u}\n{}", lab.tail(40));
    }
}

#[test]
fn freertos_channels_workload() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ca = TestCa::new("keel compat test CA");
    let (https, requests) = hello_server(&rt, &ca);
    let app = c_app_for_url("sdk/c/examples/freertos-channels", &format!("https://localhost:{}/hello", https.port));
    let ca_path = ca_file(SUITE, &ca, "freertos-channels");
    let broker = Mosquitto::start_tls();
    let mut lab = Lab::new(SUITE, "freertos-channels", &app, &[("KEEL_PROXY_CA", &ca_path)]);
    let http_port = https.port.to_string();
    let mqtt_port = broker.port.to_string();
    lab.keel(&["policy", "allow", "127.0.0.1/32", "--port", &http_port, "--scheme", "https"]);
    lab.keel(&["policy", "allow", "127.0.0.1/32", "--port", &mqtt_port, "--scheme", "mqtts"]);
    lab.keel(&["config", "set", "greeting", "hello-rtos"]);
    lab.keel(&["config", "set", "mqtt/default/url", &format!("mqtts://localhost:{mqtt_port}")]);
    lab.config("mqtt/default/ca", broker.ca_pem.as_deref().unwrap());
    let id = lab.id.clone();
    let mut sensor = broker.subscribe(&format!("sensor/{id}/rtos"));
    lab.boot();
    let line = lab.pass("freertos-channels");
    assert!(line.contains("PASS http=10/10 config=5/5 mqtt=10/10"), "{line}");
    assert_eq!(requests.load(Ordering::SeqCst), 10, "ten GETs reached the server");
    for i in 0..10 {
        sensor.next(LIMIT).unwrap_or_else(|| panic!("publish {i} not at the broker\n{}", broker.log()));
    }
}
