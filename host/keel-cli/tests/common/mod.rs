//! Helpers shared by the end-to-end tests: the `keel` binary, a real server process.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const KEEL: &str = env!("CARGO_BIN_EXE_keel");
pub const LIMIT: Duration = Duration::from_secs(120);

pub struct Kill(pub Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub fn keel(args: &[&str], env: &[(&str, &str)]) -> serde_json::Value {
    let out = Command::new(KEEL).args(args).arg("--json").envs(env.iter().copied()).output().unwrap();
    assert!(
        out.status.success(),
        "keel {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Starts `keel server run`; returns once it says where it listens. With `json_log` the
/// server logs one JSON object per line, and the first says it runs.
pub fn start_server(data: &str, http: u16, gw: u16, json_log: bool) -> Kill {
    start_server_with(data, http, gw, json_log, &[])
}

/// [`start_server`] with extra environment variables for the server.
pub fn start_server_with(data: &str, http: u16, gw: u16, json_log: bool, env: &[(&str, &str)]) -> Kill {
    let mut server = Kill(
        Command::new(KEEL)
            .envs(env.iter().copied())
            .args(["server", "run", "--data", data, "--http", &format!("127.0.0.1:{http}")])
            .args(["--gateway", &format!("127.0.0.1:{gw}")])
            .args(["--log-format", if json_log { "json" } else { "text" }])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut stderr = BufReader::new(server.0.stderr.take().unwrap());
    let mut first = String::new();
    stderr.read_line(&mut first).unwrap();
    // A diagnostic warning (e.g. KEEL_DEBUG_CAPTURE) may come before the line that says it runs.
    while !json_log && first.contains(" WARN ") {
        first.clear();
        stderr.read_line(&mut first).unwrap();
    }
    // Keep reading the server's log so it never blocks on a full pipe; in JSON mode every line
    // must be one JSON object.
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            if json_log {
                assert!(serde_json::from_str::<serde_json::Value>(&line).is_ok(), "not JSON: {line}");
            }
        }
    });
    if json_log {
        let v: serde_json::Value = serde_json::from_str(&first).unwrap_or_else(|e| panic!("{e}: {first}"));
        assert_eq!(v["fields"]["message"], "keel server running", "{first}");
        assert_eq!(v["fields"]["api"], format!("127.0.0.1:{http}"), "{first}");
    } else {
        assert!(first.contains("keel server: API"), "{first}");
    }
    server
}

/// `keel ARGS --json` that is expected to fail: its JSON error message.
pub fn keel_err(args: &[&str], env: &[(&str, &str)]) -> String {
    let out = Command::new(KEEL).args(args).arg("--json").envs(env.iter().copied()).output().unwrap();
    assert!(!out.status.success(), "keel {args:?} should fail: {}", String::from_utf8_lossy(&out.stdout));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v["error"].as_str().unwrap_or_default().to_string()
}

/// A fresh server for one test: `keel server init` in `dir/data`, then `keel server run` on free
/// loopback ports with `server_env`.
pub struct TestServer {
    /// The CLI's environment for it (`KEEL_SERVER`, `KEEL_TOKEN`, no config file).
    pub env: Vec<(String, String)>,
    /// Its data directory.
    pub data: String,
    /// API port.
    pub http: u16,
    /// Device gateway port.
    pub gw: u16,
    /// The process.
    pub process: Kill,
}

impl TestServer {
    /// Starts one under `dir` (which it creates empty).
    pub fn start(dir: &std::path::Path, server_env: &[(&str, &str)]) -> TestServer {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir).unwrap();
        let data = dir.join("data").display().to_string();
        let token = keel(&["server", "init", "--data", &data], &[])["token"].as_str().unwrap().to_string();
        let (http, gw) = (free_port(), free_port());
        let process = start_server_with(&data, http, gw, false, server_env);
        let env = vec![
            ("KEEL_SERVER".to_string(), format!("http://127.0.0.1:{http}")),
            ("KEEL_TOKEN".to_string(), token),
            ("KEEL_CONFIG".to_string(), dir.join("none.toml").display().to_string()),
        ];
        TestServer { env, data, http, gw, process }
    }

    /// [`TestServer::env`] as the helpers take it.
    pub fn envr(&self) -> Vec<(&str, &str)> {
        self.env.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect()
    }

    /// Makes a release signing key `dir/release` (trusted by the account) and provisions a device
    /// named `name` into the flash file `flash` for this server, trusting that key for updates.
    /// Returns the device id and the key's path without extension.
    pub fn provision(&self, dir: &std::path::Path, name: &str, flash: &std::path::Path) -> (String, String) {
        let envr = self.envr();
        let release = dir.join("release").display().to_string();
        keel(&["keys", "new", "--out", &release], &envr);
        keel(&["keys", "add", &format!("{release}.pub"), "--name", "release"], &envr);
        let (fp, gws, signer) = (flash.display().to_string(), self.gw.to_string(), format!("{release}.pub"));
        let prov = keel(
            &["device", "provision", "--flash", &fp, "--name", name, "--gateway-port", &gws, "--signer-key", &signer],
            &envr,
        );
        (prov["device"]["id"].as_str().unwrap().to_string(), release)
    }
}
