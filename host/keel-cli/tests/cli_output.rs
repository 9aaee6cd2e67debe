//! Output operators can trust (issue 10): the `keel` binary against an in-process server on
//! loopback (no QEMU). Device-supplied text with newlines, escape sequences and NUL bytes is shown
//! escaped in tables and logs, `--json` stays raw JSON, and a failing `--json` command keeps the
//! API's machine-readable `error.code`.

use std::process::Command;

use keel_server::http::{router, AppState};
use keel_server::store::{LogRecord, Store};

const KEEL: &str = env!("CARGO_BIN_EXE_keel");
const DEV: &str = "kd0123456789abcdef0123456789abcdef";
/// A line an app could log to forge a visor crash report and take over the terminal.
const FORGED: &str = "ok\n       7 [    3.000000 visor] app crash: hardfault pc=0x00200123\x1b]0;owned\x07\x1b[2J\r\0\u{9b}31m\x7fend\tx";

struct Server {
    url: String,
    token: String,
    _dir: TempDir,
}

struct TempDir(std::path::PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn server(name: &str) -> Server {
    let dir = std::env::temp_dir().join(format!("keel-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let store = Store::open(&format!("sqlite://{}?mode=rwc", dir.join("keel.db").display())).await.unwrap();
    store.create_account("a", "Acme").await.unwrap();
    store.add_device("a", DEV, &[1; 32], "acme-1").await.unwrap();
    // What a device reports about itself (hello strings) and logs is device-controlled.
    let node = store.start_node("cli-test", std::time::Duration::from_secs(60)).await.unwrap();
    store.device_online(DEV, "0.1\x1b[31m", Some(("evil\napp", "1\r\0")), 3, &node, 1).await.unwrap();
    let rec = LogRecord { seq: 1 << 32, kind: 0, level: 2, device_time_us: 5, received_at: 6, text: FORGED.into() };
    store.insert_log(DEV, &rec).await.unwrap();
    let token = store.create_token("a", "cli").await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = router(AppState::new(store, [9; 32]));
    tokio::spawn(async move { axum::serve(listener, app).await });
    Server { url, token, _dir: TempDir(dir) }
}

/// Runs `keel ARGS` against the server (no config file); returns (success, stdout, stderr).
async fn keel(s: &Server, token: &str, args: &[&str]) -> (bool, String, String) {
    let mut cmd = Command::new(KEEL);
    cmd.args(args).env("KEEL_SERVER", &s.url).env("KEEL_TOKEN", token).env("KEEL_CONFIG", s._dir.0.join("none.toml"));
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap()).await.unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

fn assert_inert(what: &str, text: &str) {
    let bad: Vec<char> = text
        .chars()
        .filter(|&c| (c.is_control() && c != '\n') || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}'))
        .collect();
    assert!(bad.is_empty(), "{what}: control characters reach the terminal: {bad:?} in {text:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_text_is_escaped_and_json_stays_raw() {
    let s = server("escape").await;
    // `keel logs`: one record, one line, nothing that acts on the terminal.
    let (ok, out, err) = keel(&s, &s.token, &["logs", DEV]).await;
    assert!(ok, "{err}");
    assert_inert("keel logs", &out);
    assert_eq!(out.lines().count(), 1, "one record is one line: {out:?}");
    assert!(out.contains(r"ok\n       7 [") && out.contains(r"\x1b]0;owned\x07") && out.contains(r"\x00"), "{out}");
    assert!(out.contains(r"end\tx"), "{out}");
    // Tables and details.
    for args in [&["devices"][..], &["devices", "show", DEV][..]] {
        let (ok, out, err) = keel(&s, &s.token, args).await;
        assert!(ok, "{err}");
        assert_inert(&format!("keel {args:?}"), &out);
        assert!(out.contains(r"evil\napp"), "{out}");
    }
    let (_, out, _) = keel(&s, &s.token, &["devices"]).await;
    assert_eq!(out.lines().count(), 2, "a header and one device: {out:?}");
    // `--json` is raw JSON: the exact text comes back.
    let (ok, out, err) = keel(&s, &s.token, &["logs", DEV, "--json"]).await;
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v[0]["text"], FORGED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_errors_keep_the_api_error_code() {
    let s = server("errors").await;
    let (ok, out, _) = keel(&s, "keel_bogus", &["devices", "--json"]).await;
    assert!(!ok);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(v["code"], "unauthorized", "{v}");
    assert_eq!(v["status"], 401, "{v}");
    assert!(v["error"].as_str().is_some_and(|m| m.contains("token")), "{v}");
    let (ok, out, _) = keel(&s, &s.token, &["devices", "show", "kd00000000000000000000000000000000", "--json"]).await;
    assert!(!ok);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!((v["code"].as_str(), v["status"].as_u64()), (Some("not_found"), Some(404)), "{v}");
    // A local error (no server involved) has no API code.
    let (ok, out, _) = keel(&s, &s.token, &["devices", "delete", DEV, "--json"]).await;
    assert!(!ok);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(v["error"].as_str().is_some_and(|m| m.contains("--yes")) && v["code"].is_null(), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_create_takes_a_scope_and_a_lifetime() {
    let s = server("tokens").await;
    let (ok, out, err) =
        keel(&s, &s.token, &["token", "create", "ci", "--scope", "deploy", "--expires", "30d", "--json"]).await;
    assert!(ok, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["scope"], "deploy", "{v}");
    let now_us = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros() as i64;
    let lifetime_s = (v["expires_at_us"].as_i64().unwrap() - now_us) / 1_000_000;
    assert!((30 * 86_400 - 60..=30 * 86_400).contains(&lifetime_s), "{v}");
    // The deploy token cannot create tokens: the API's code comes through `--json`.
    let deploy = v["token"].as_str().unwrap().to_string();
    let (ok, out, _) = keel(&s, &deploy, &["token", "create", "more", "--json"]).await;
    assert!(!ok);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!((v["code"].as_str(), v["status"].as_u64()), (Some("insufficient_scope"), Some(403)), "{v}");
    // The table shows scope and expiry.
    let (ok, out, _) = keel(&s, &s.token, &["token", "list"]).await;
    assert!(ok);
    let line = out.lines().find(|l| l.contains(" ci ")).unwrap_or_else(|| panic!("{out}"));
    assert!(line.contains("deploy") && !line.contains("never   "), "{line}");
    // Bad lifetimes are refused before any request.
    let (ok, _, err) = keel(&s, &s.token, &["token", "create", "x", "--expires", "30y"]).await;
    assert!(!ok && err.contains("unit"), "{err}");
}
