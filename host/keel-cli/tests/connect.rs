//! App connectivity end to end: QEMU devices whose apps reach the outside world through the
//! visor's link and the Keel server — an HTTPS request to a local server, configuration and
//! secrets set with the CLI, a managed MQTT session with a real Mosquitto broker (TLS between the
//! server and the broker), the destination policy, and the faults: broker down, server restarted
//! mid-session, the link dropping under an MQTT session.

use keel_testpeers::{HttpServer, Mosquitto, TestCa};

mod common;
#[path = "common/lab.rs"]
mod lab;

use common::*;
use lab::{ca_file, Lab};

const SUITE: &str = "connect-e2e";

fn lab(name: &str, app: &str, server_env: &[(&str, &str)]) -> Lab {
    Lab::new(SUITE, name, &keel_vdev::app_elf(app), server_env)
}

#[test]
fn http_get_reaches_a_local_https_server_and_the_policy_refuses_the_rest() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ca = TestCa::new("keel connect test CA");
    let leaf = ca.localhost();
    let https = rt.block_on(HttpServer::start_tls(&leaf, |req| async move {
        hyper::Response::builder()
            .header("content-type", "text/plain")
            .body(keel_testpeers::full(format!("hello from {}", req.path)))
            .unwrap()
    }));
    let ca_path = ca_file(SUITE, &ca, "http");
    let mut lab = lab("http-get", "http-get", &[("KEEL_PROXY_CA", &ca_path)]);
    let port = https.port.to_string();
    // The server may reach this one local port; everything else private stays denied.
    lab.keel(&["policy", "allow", "127.0.0.1/32", "--port", &port, "--scheme", "https"]);
    lab.keel(&["config", "set", "http-get/url", &format!("https://localhost:{port}/hello")]);
    lab.boot();
    let line = lab.wait("the response", "http-get: status=");
    assert!(line.contains("status=200") && line.contains("hello from /hello"), "{line}");
    lab.wait("success", "http-get: PASS");
    // The destination no rule allows (a private address) is refused by the server.
    let line = lab.wait("the refusal", "http-get: denied");
    assert!(line.contains("result=7"), "DENIED is 7: {line}");
}

#[test]
fn config_and_secrets_set_with_the_cli_reach_the_app() {
    let mut lab = lab("config-demo", "config-demo", &[]);
    lab.keel(&["config", "set", "greeting", "hello-keel"]);
    let id = lab.id.clone();
    lab.keel(&["config", "set", "site", "lab-7", "--device", &id]);
    lab.secret("api-key", "s3cr3t-api-key-0123456789", None);
    // The secret's value is never listed.
    let listed = lab.keel(&["secrets", "list"]).to_string();
    assert!(!listed.contains("s3cr3t"), "{listed}");
    lab.boot();
    let line = lab.wait("the values", "config-demo: greeting=");
    assert!(line.contains("greeting=hello-keel") && line.contains("site=lab-7"), "{line}");
    assert!(line.contains("api-key-len=25"), "{line}");
    lab.wait("success", "config-demo: PASS");
}

#[test]
fn mqtt_telemetry_through_a_tls_broker_survives_the_broker_and_the_server_going_down() {
    let mut broker = Mosquitto::start_tls();
    let mut lab = lab("mqtt-telemetry", "mqtt-telemetry", &[]);
    let port = broker.port.to_string();
    lab.keel(&["policy", "allow", "127.0.0.1/32", "--port", &port, "--scheme", "mqtts"]);
    lab.keel(&["config", "set", "mqtt/telemetry/url", &format!("mqtts://localhost:{port}")]);
    // From a file, as an operator would set a PEM.
    let ca = keel_vdev::repo_root().join("target/connect-e2e/broker-ca.pem");
    std::fs::write(&ca, broker.ca_pem.as_deref().unwrap()).unwrap();
    lab.keel(&["config", "set", "mqtt/telemetry/ca", "--from-file", &ca.display().to_string()]);
    let id = lab.id.clone();
    let mut readings = broker.subscribe(&format!("sensor/{id}"));
    lab.boot();
    lab.wait("the first publish", "mqtt-telemetry: published n=");
    let reading = readings.next(LIMIT).expect("a reading at the broker");
    assert!(reading.contains("\"n\":"), "{reading}");

    // A command published with mosquitto_pub reaches the app.
    broker.publish(&format!("command/{id}"), b"led on", 1, false);
    lab.wait("the command", "mqtt-telemetry: led=on");

    // The broker goes down and comes back: the session reconnects on its own.
    broker.kill();
    lab.wait("the session's state", "mqtt-telemetry: broker reconnecting");
    broker.restart();
    lab.wait("the session's state", "mqtt-telemetry: broker connected");
    broker.publish(&format!("command/{id}"), b"led off", 1, false);
    lab.wait("a command after the broker came back", "mqtt-telemetry: led=off");

    // The server restarts under the session: the link drops, the app's channel ends with
    // `link lost`, and the app reconnects once the device is online again.
    lab.restart_server();
    let line = lab.wait("the channel's end", "mqtt-telemetry: channel closed");
    assert!(line.contains("reason=LinkLost"), "{line}");
    lab.wait("the new session", "mqtt-telemetry: session_present=");
    lab.wait("publishing again", "mqtt-telemetry: published n=");
    broker.publish(&format!("command/{id}"), b"led on", 1, false);
    lab.wait("a command after the server restart", "mqtt-telemetry: led=on");
}

/// The app connectivity benchmark (`cargo xtask bench` runs it; ignored by `cargo test`): one
/// JSON line with
/// * `http_request_ms`: `http-get`'s request to the local HTTPS server, from the app's `GET`
///   console line to its `status=` line (device -> server's proxy -> HTTPS server and back; the
///   proxy's TLS handshake to the server included), median of 5 device boots;
/// * `mqtt_publish_to_broker_ms`: `mqtt-telemetry`'s publish, from its `publishing n=` console
///   line to the message at a `mosquitto_sub` on the broker (device -> server -> TLS broker),
///   median of 10 readings.
///
/// Console lines are timed as the host reads them from QEMU (real time, loopback).
#[test]
#[ignore]
fn bench_connectivity() {
    use std::time::Instant;
    let median = |mut v: Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };

    let rt = tokio::runtime::Runtime::new().unwrap();
    let ca = TestCa::new("keel connect bench CA");
    let leaf = ca.localhost();
    let https = rt.block_on(HttpServer::start_tls(&leaf, |req| async move {
        hyper::Response::builder().body(keel_testpeers::full(format!("hello from {}", req.path))).unwrap()
    }));
    let ca_path = ca_file(SUITE, &ca, "bench");
    let mut http_ms = vec![];
    for round in 0..5 {
        let mut lab = lab(&format!("bench-http-{round}"), "http-get", &[("KEEL_PROXY_CA", &ca_path)]);
        let port = https.port.to_string();
        lab.keel(&["policy", "allow", "127.0.0.1/32", "--port", &port, "--scheme", "https"]);
        lab.keel(&["config", "set", "http-get/url", &format!("https://localhost:{port}/hello")]);
        lab.boot();
        lab.wait("the request", "http-get: GET https://localhost");
        let t0 = Instant::now();
        lab.wait("the response", "http-get: status=200");
        http_ms.push(t0.elapsed().as_secs_f64() * 1e3);
    }

    let broker = Mosquitto::start_tls();
    let mut lab = lab("bench-mqtt", "mqtt-telemetry", &[]);
    let port = broker.port.to_string();
    lab.keel(&["policy", "allow", "127.0.0.1/32", "--port", &port, "--scheme", "mqtts"]);
    lab.keel(&["config", "set", "mqtt/telemetry/url", &format!("mqtts://localhost:{port}")]);
    lab.config("mqtt/telemetry/ca", broker.ca_pem.as_deref().unwrap());
    let id = lab.id.clone();
    let mut readings = broker.subscribe(&format!("sensor/{id}"));
    lab.boot();
    lab.wait("the session", "mqtt-telemetry: subscribed");
    let mut mqtt_ms = vec![];
    while mqtt_ms.len() < 10 {
        let line = lab.wait("a publish", "mqtt-telemetry: publishing n=");
        let t0 = Instant::now();
        let n = line.split("n=").nth(1).unwrap().trim().to_string();
        loop {
            let got = readings.next(LIMIT).expect("a reading at the broker");
            if got.contains(&format!("\"n\":{n},")) {
                mqtt_ms.push(t0.elapsed().as_secs_f64() * 1e3);
                break;
            }
        }
    }
    println!(
        "{{\"http_request_ms\": {:.2}, \"mqtt_publish_to_broker_ms\": {:.2}, \"http_request_ms_all\": {:.2?}, \"mqtt_publish_to_broker_ms_all\": {:.2?}}}",
        median(http_ms.clone()),
        median(mqtt_ms.clone()),
        http_ms,
        mqtt_ms
    );
}
