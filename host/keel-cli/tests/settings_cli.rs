//! `keel config`, `keel secrets` and `keel policy` (issue 12): the `keel` binary against an
//! in-process server on loopback. A secret given on stdin never shows up in any output.

use std::io::Write;
use std::process::{Command, Stdio};

use keel_server::http::{router, AppState};
use keel_server::settings::MasterKey;
use keel_server::store::Store;

const KEEL: &str = env!("CARGO_BIN_EXE_keel");
const DEV: &str = "kd0123456789abcdef0123456789abcdef";
const PLAIN: &str = "s3cr3t-broker-password";

struct Server {
    url: String,
    admin: String,
    read: String,
    dir: std::path::PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn server(name: &str) -> Server {
    let dir = std::env::temp_dir().join(format!("keel-cli-settings-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let store = Store::open(&format!("sqlite://{}?mode=rwc", dir.join("keel.db").display()))
        .await
        .unwrap()
        .with_secrets_key(MasterKey::generate().unwrap());
    store.create_account("a", "Acme").await.unwrap();
    store.add_device("a", DEV, &[1; 32], "acme-1").await.unwrap();
    let admin = store.create_token("a", "cli").await.unwrap();
    let read = store.create_token_with("a", "ro", "read", None).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = router(AppState::new(store, [9; 32]));
    tokio::spawn(async move { axum::serve(listener, app).await });
    Server { url, admin, read, dir }
}

/// Runs `keel ARGS` with `stdin` piped in; returns (success, stdout, stderr).
async fn keel(s: &Server, token: &str, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    let mut cmd = Command::new(KEEL);
    cmd.args(args)
        .env("KEEL_SERVER", &s.url)
        .env("KEEL_TOKEN", token)
        .env("KEEL_CONFIG", s.dir.join("none.toml"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let input = stdin.map(String::from);
    let out = tokio::task::spawn_blocking(move || {
        let mut child = cmd.spawn().unwrap();
        let mut pipe = child.stdin.take().unwrap();
        if let Some(i) = input {
            pipe.write_all(i.as_bytes()).unwrap();
        }
        drop(pipe);
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

async fn keel_json(s: &Server, args: &[&str], stdin: Option<&str>) -> serde_json::Value {
    let mut all = args.to_vec();
    all.push("--json");
    let (ok, out, err) = keel(s, &s.admin, &all, stdin).await;
    assert!(ok, "keel {args:?}: {out}{err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("keel {args:?}: {e}: {out}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_secrets_and_policy_from_the_cli() {
    let s = server("all").await;
    // Config: set (account-wide and for a device), get, list, delete.
    let v = keel_json(&s, &["config", "set", "mqtt/main/host", "broker.example.com"], None).await;
    assert_eq!((v["key"].as_str(), v["scope"].as_str()), (Some("mqtt/main/host"), Some("account")));
    let v = keel_json(&s, &["config", "set", "rate", "10", "--device", DEV], None).await;
    assert_eq!(v["device_id"], DEV);
    let v = keel_json(&s, &["config", "get", "mqtt/main/host"], None).await;
    assert_eq!(v["value"], "broker.example.com");
    let (ok, out, _) = keel(&s, &s.read, &["config", "get", "mqtt/main/host"], None).await;
    assert!(ok);
    assert_eq!(out, "broker.example.com\n");
    let v = keel_json(&s, &["config", "list"], None).await;
    assert_eq!(v.as_array().unwrap().len(), 1, "{v}");
    let v = keel_json(&s, &["config", "list", "--device", DEV], None).await;
    assert_eq!(v[0]["key"], "rate");
    keel_json(&s, &["config", "delete", "rate", "--device", DEV], None).await;
    assert_eq!(keel_json(&s, &["config", "list", "--device", DEV], None).await, serde_json::json!([]));

    // Secrets: the value from stdin (one trailing newline dropped), listed by name only.
    let v = keel_json(&s, &["secrets", "set", "mqtt/main/password"], Some(&format!("{PLAIN}\n"))).await;
    assert_eq!((v["key"].as_str(), v["size"].as_u64()), (Some("mqtt/main/password"), Some(PLAIN.len() as u64)));
    assert!(!v.to_string().contains(PLAIN));
    let v = keel_json(&s, &["secrets", "set", "token", "dev-token", "--device", DEV], None).await;
    assert_eq!(v["scope"], "device");
    let v = keel_json(&s, &["secrets", "list"], None).await;
    assert_eq!(v.as_array().unwrap().len(), 1);
    assert_eq!(v[0]["key"], "mqtt/main/password");
    for args in
        [&["secrets", "list"][..], &["secrets", "list", "--json"], &["config", "list"], &["config", "list", "--json"]]
    {
        let (ok, out, err) = keel(&s, &s.admin, args, None).await;
        assert!(ok, "{err}");
        assert!(!out.contains(PLAIN) && !err.contains(PLAIN), "keel {args:?} shows the secret");
    }
    // An empty stdin is refused before anything is sent.
    let (ok, _, err) = keel(&s, &s.admin, &["secrets", "set", "empty"], Some("")).await;
    assert!(!ok && err.contains("no secret on stdin"), "{err}");
    // Errors keep the API's code: a read token, a bad key.
    let (ok, out, _) = keel(&s, &s.read, &["secrets", "set", "k", "v", "--json"], None).await;
    assert!(!ok);
    let e: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!((e["code"].as_str(), e["status"].as_u64()), (Some("insufficient_scope"), Some(403)));
    let (ok, out, _) = keel(&s, &s.admin, &["config", "set", "a b", "v", "--json"], None).await;
    assert!(!ok);
    let e: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(e["code"], "bad_key", "{e}");
    keel_json(&s, &["secrets", "delete", "mqtt/main/password"], None).await;
    assert_eq!(keel_json(&s, &["secrets", "list"], None).await, serde_json::json!([]));

    // Policy: allow, list, remove.
    let r = keel_json(&s, &["policy", "allow", "127.0.0.1/32", "--port", "8443", "--scheme", "https"], None).await;
    let id = r["id"].as_str().unwrap().to_string();
    assert_eq!(
        (r["action"].as_str(), r["port"].as_u64(), r["scheme"].as_str()),
        (Some("allow"), Some(8443), Some("https"))
    );
    let d = keel_json(&s, &["policy", "deny", "*.ads.example.com", "--first"], None).await;
    let p = keel_json(&s, &["policy", "list"], None).await;
    let ids: Vec<&str> = p["rules"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [d["id"].as_str().unwrap(), id.as_str()]);
    let (ok, out, _) = keel(&s, &s.read, &["policy", "list"], None).await;
    assert!(ok && out.contains("127.0.0.1/32") && out.contains("first matching rule"), "{out}");
    keel_json(&s, &["policy", "remove", &id], None).await;
    let p = keel_json(&s, &["policy", "list"], None).await;
    assert_eq!(p["rules"].as_array().unwrap().len(), 1);
    let (ok, out, _) = keel(&s, &s.admin, &["policy", "remove", &id, "--json"], None).await;
    assert!(!ok);
    assert!(out.contains("not_found"), "{out}");
    // `--help` teaches with examples and says why stdin is the safer way.
    let (ok, out, _) = keel(&s, &s.admin, &["secrets", "set", "--help"], None).await;
    assert!(ok && out.contains("shell history") && out.contains("keel secrets set mqtt/main/password"), "{out}");
}

/// `keel server run` makes `secrets.key` (0600) at first start and keeps it, applies
/// `KEEL_POLICY_ALLOW`, and refuses to start with a bad `KEEL_SECRETS_KEY` or `KEEL_POLICY_ALLOW`.
#[test]
fn the_server_process_manages_its_secrets_key_and_operator_rules() {
    use std::io::{BufRead, BufReader};
    let dir = std::env::temp_dir().join(format!("keel-cli-settings-{}-process", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let data = dir.join("data");
    let out =
        Command::new(KEEL).args(["server", "init", "--data", &data.display().to_string(), "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let token =
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["token"].as_str().unwrap().to_string();
    let free = || std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let run = |env: &[(&str, &str)]| {
        let http = free();
        let mut child = Command::new(KEEL)
            .args(["server", "run", "--data", &data.display().to_string()])
            .args(["--http", &format!("127.0.0.1:{http}"), "--gateway", &format!("127.0.0.1:{}", free())])
            .env_remove("KEEL_SECRETS_KEY")
            .env_remove("KEEL_POLICY_ALLOW")
            .envs(env.iter().copied())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut first = String::new();
        BufReader::new(child.stderr.take().unwrap()).read_line(&mut first).unwrap();
        (child, http, first)
    };
    let stop = |mut c: std::process::Child| {
        let _ = c.kill();
        let _ = c.wait();
    };
    let keel = |http: u16, args: &[&str], stdin: &str| {
        let mut child = Command::new(KEEL)
            .args(args)
            .arg("--json")
            .env("KEEL_SERVER", format!("http://127.0.0.1:{http}"))
            .env("KEEL_TOKEN", &token)
            .env("KEEL_CONFIG", dir.join("none.toml"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "keel {args:?}: {}", String::from_utf8_lossy(&out.stdout));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };

    let (server, http, first) = run(&[("KEEL_POLICY_ALLOW", "127.0.0.1/32, 10.0.0.0/8")]);
    assert!(first.contains("keel server: API"), "{first}");
    let key_file = data.join("secrets.key");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777, 0o600);
    }
    let key = std::fs::read_to_string(&key_file).unwrap();
    assert_eq!(key.trim().len(), 64);
    keel(http, &["secrets", "set", "db/password"], PLAIN);
    let p = keel(http, &["policy", "list"], "");
    let targets: Vec<&str> =
        p["operator_rules"].as_array().unwrap().iter().map(|r| r["target"].as_str().unwrap()).collect();
    assert_eq!(targets, ["127.0.0.1/32", "10.0.0.0/8"]);
    stop(server);
    // A restart keeps the key; the database never held the plaintext.
    let (server, http, _) = run(&[]);
    assert_eq!(std::fs::read_to_string(&key_file).unwrap(), key);
    assert_eq!(keel(http, &["policy", "list"], "")["operator_rules"], serde_json::json!([]));
    stop(server);
    let db = std::fs::read(data.join("keel.db")).unwrap();
    assert!(!db.windows(PLAIN.len()).any(|w| w == PLAIN.as_bytes()));
    // Bad settings stop the server with a message that says what is wrong.
    for (var, value) in [("KEEL_SECRETS_KEY", "abcd"), ("KEEL_POLICY_ALLOW", "127.0.0.1/32,localhost")] {
        let (mut server, _, first) = run(&[(var, value)]);
        let status = server.wait().unwrap();
        assert!(!status.success(), "{var}={value} started");
        assert!(first.contains(var), "{var}: {first}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
