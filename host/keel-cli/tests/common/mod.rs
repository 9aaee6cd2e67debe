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
