//! The C apps' connectivity end to end: the Microvisor-compatible conformance apps
//! (`sdk/c/compat/examples`: mv-http-get, mv-config, mv-mqtt, mv-update) and the FreeRTOS
//! channel workload (`sdk/c/examples/freertos-channels`), each on a provisioned QEMU device
//! talking to a real `keel` server, set up with the CLI, with real peers: a local HTTPS server
//! and Mosquitto with TLS (keel-testpeers).
//!
//! The apps' HTTPS URLs are compiled in, so their servers listen on fixed loopback ports:
//! 18443 (mv-http-get) and 18444 (freertos-channels). Run with `--test-threads=1`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_flash::layout;
use keel_testpeers::{HttpServer, Mosquitto, TestCa};
use keel_vdev::qemu::{Clock, Device, Running};
use keel_vdev::{elf, flash};

mod common;

use common::*;

/// mv-http-get's compiled-in URL is `https://localhost:18443/hello`.
const MV_HTTP_PORT: u16 = 18443;
/// freertos-channels' compiled-in URL is `https://localhost:18444/hello`.
const RTOS_HTTP_PORT: u16 = 18444;

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

/// One server, one provisioned QEMU device running an app from an ELF file.
struct Lab {
    env: Vec<(String, String)>,
    dir: PathBuf,
    id: String,
    qemu: Option<Running>,
    flash: PathBuf,
    _server: Kill,
}

impl Lab {
    /// Provisions a device with `app` (1.0.0 in slot A); `server_env` goes to the server. The
    /// device is not started: set its configuration first ([`Lab::boot`]).
    fn new(name: &str, app: &Path, server_env: &[(&str, &str)]) -> Lab {
        let dir = keel_vdev::repo_root().join("target/compat-e2e").join(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let data = dir.join("data").display().to_string();
        let token = keel(&["server", "init", "--data", &data], &[])["token"].as_str().unwrap().to_string();
        let (http, gw) = (free_port(), free_port());
        let server = start_server_with(&data, http, gw, false, server_env);
        let env = vec![
            ("KEEL_SERVER".to_string(), format!("http://127.0.0.1:{http}")),
            ("KEEL_TOKEN".to_string(), token),
            ("KEEL_CONFIG".to_string(), dir.join("none.toml").display().to_string()),
        ];
        let envr: Vec<(&str, &str)> = env.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        let flash_path = dir.join("dev.flash");
        let fp = flash_path.display().to_string();
        let release = dir.join("release").display().to_string();
        keel(&["keys", "new", "--out", &release], &envr);
        keel(&["keys", "add", &format!("{release}.pub"), "--name", "release"], &envr);
        let signer = format!("{release}.pub");
        let gws = gw.to_string();
        let prov = keel(
            &["device", "provision", "--flash", &fp, "--name", name, "--gateway-port", &gws, "--signer-key", &signer],
            &envr,
        );
        let id = prov["device"]["id"].as_str().unwrap().to_string();
        let img = elf::image_from_elf(app, "1.0.0").unwrap();
        flash::program_app(&flash_path, layout::APP_A, &img).unwrap();
        Lab { env, dir, id, qemu: None, flash: flash_path, _server: server }
    }

    fn envr(&self) -> Vec<(&str, &str)> {
        self.env.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect()
    }

    /// `keel ARGS --json`.
    fn keel(&self, args: &[&str]) -> serde_json::Value {
        keel(args, &self.envr())
    }

    /// `keel config set KEY VALUE` for any value: a PEM begins with `-----`, which clap takes
    /// for an option unless it follows `--` (`keel config set mqtt/x/ca "$(cat ca.pem)"` fails
    /// with "unexpected argument").
    fn config(&self, key: &str, value: &str) {
        let out =
            Command::new(KEEL).args(["config", "set", "--json", key, "--", value]).envs(self.envr()).output().unwrap();
        assert!(out.status.success(), "keel config set {key}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// `keel secrets set KEY` with the value on standard input (as a user would).
    fn secret(&self, key: &str, value: &str) {
        use std::io::Write;
        let mut child = Command::new(KEEL)
            .args(["secrets", "set", key, "--json"])
            .envs(self.envr())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(value.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "keel secrets set: {}", String::from_utf8_lossy(&out.stderr));
    }

    fn boot(&mut self) {
        let dev = Device { visor: keel_vdev::visor_elf(), flash: self.flash.clone(), clock: Clock::RealTime };
        self.qemu = Some(dev.start().unwrap());
        self.wait("the link", "net: online");
    }

    fn qemu(&mut self) -> &mut Running {
        self.qemu.as_mut().expect("booted")
    }

    /// Waits for a console line containing `needle`; returns it. Fails with the console's last
    /// lines.
    fn wait(&mut self, what: &str, needle: &str) -> String {
        self.qemu().wait_for(what, LIMIT, |l| l.contains(needle)).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Waits for `<app>: PASS` (returned) and fails at once on `<app>: FAIL` (or an `ERROR`
    /// line of the app, or the visor reporting a crash), with the console's last lines.
    fn pass(&mut self, app: &str) -> String {
        let pass = format!("{app}: PASS");
        let fail = format!("{app}: FAIL");
        let line = self
            .qemu()
            .wait_for(&format!("{pass} (or FAIL)"), LIMIT, |l| l.contains(&pass) || l.contains(&fail))
            .unwrap_or_else(|e| panic!("{e}"));
        if line.contains(&fail) {
            panic!("{line}\nconsole:\n{}", self.tail(60));
        }
        line
    }

    /// The last `n` console lines.
    fn tail(&mut self, n: usize) -> String {
        let lines = self.qemu().console_so_far();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

/// The test CA's PEM in a file, for the server's `KEEL_PROXY_CA`.
fn ca_file(ca: &TestCa, name: &str) -> String {
    let dir = keel_vdev::repo_root().join("target/compat-e2e");
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(format!("{name}-ca.pem"));
    std::fs::write(&p, &ca.cert_pem).unwrap();
    p.display().to_string()
}

/// An HTTPS server on 127.0.0.1:`port` answering `hello from <path>`, counting requests.
fn hello_server(rt: &tokio::runtime::Runtime, ca: &TestCa, port: u16) -> (HttpServer, Arc<AtomicUsize>) {
    let leaf = ca.localhost();
    let requests = Arc::new(AtomicUsize::new(0));
    let count = requests.clone();
    let server = rt.block_on(HttpServer::start_tls_on(port, &leaf, move |req| {
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
    let app = c_app("sdk/c/compat/examples/mv-http-get", None, None);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ca = TestCa::new("keel compat test CA");
    let (_https, requests) = hello_server(&rt, &ca, MV_HTTP_PORT);
    let ca_path = ca_file(&ca, "mv-http-get");
    let mut lab = Lab::new("mv-http-get", &app, &[("KEEL_PROXY_CA", &ca_path)]);
    let port = MV_HTTP_PORT.to_string();
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
    let mut lab = Lab::new("mv-config", &app, &[]);
    lab.keel(&["config", "set", "greeting", "hello-from-keel"]);
    let secret = "mv-s3cr3t-0123456789";
    lab.secret("api-key", secret);
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
    let mut lab = Lab::new("mv-mqtt", &app, &[]);
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
    let mut lab = Lab::new("mv-update", &v1, &[]);
    lab.boot();
    lab.wait("version 1", "mv-update: waiting for an update (version=1)");

    // Version 2, polite (the visor tells the app and waits for it to apply), confirmed by the
    // link (a Microvisor app never confirms) after a short grace time.
    let key = lab.dir.join("release.key").display().to_string();
    let out = lab.dir.join("mv-update-2.0.0.keelb").display().to_string();
    let elf = v2.display().to_string();
    lab.keel(&[
        "bundle",
        &elf,
        "--key",
        &key,
        "--version",
        "2.0.0",
        "--sequence",
        "2",
        "--name",
        "mv-update",
        "--politeness-s",
        "300",
        "--grace-s",
        "10",
        "--out",
        &out,
    ]);
    let bundle = lab.keel(&["apps", "upload", &out])["id"].as_str().unwrap().to_string();
    let id = lab.id.clone();
    lab.keel(&["deploy", &bundle, "--device", &id]);

    let line = lab.wait("the update notification", "mv-update: UPDATEDOWNLOADED");
    assert!(line.contains("tag=7"), "{line}");
    let line = lab.pass("mv-update");
    assert_eq!(field(&line, "version"), "2", "{line}");
    assert_eq!(field(&line, "wake"), "9", "APPLICATIONUPDATE: {line}");
    let console = lab.tail(usize::MAX);
    assert!(!console.contains("politeness time over"), "the app applied it, not the visor:\n{console}");

    // The visor confirms the trial once the link has been up for the grace time.
    let start = Instant::now();
    loop {
        let u = lab.keel(&["devices", "show", &id])["update"].clone();
        if u["sequence"] == 2 && u["state"] == "confirmed" {
            break;
        }
        assert!(start.elapsed() < LIMIT, "version 2 not confirmed: {u}\n{}", lab.tail(40));
        let _ = lab.qemu().wait_for("(polling)", Duration::from_millis(500), |_| false);
    }
}

#[test]
fn freertos_channels_workload() {
    let app = c_app("sdk/c/examples/freertos-channels", None, None);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ca = TestCa::new("keel compat test CA");
    let (_https, requests) = hello_server(&rt, &ca, RTOS_HTTP_PORT);
    let ca_path = ca_file(&ca, "freertos-channels");
    let broker = Mosquitto::start_tls();
    let mut lab = Lab::new("freertos-channels", &app, &[("KEEL_PROXY_CA", &ca_path)]);
    let http_port = RTOS_HTTP_PORT.to_string();
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
