//! Test databases: a fresh SQLite file, or a throwaway PostgreSQL cluster started from Debian's
//! packages on a loopback port (run as the `postgres` user when the tests run as root).

use std::path::{Path, PathBuf};
use std::process::Command;

use keel_server::store::Store;

/// Runs `async fn $name(store: Store)` of the test file as two tests, on SQLite and on
/// PostgreSQL, with database names prefixed `$prefix` (test binaries run in parallel).
#[allow(unused_macros)] // not every test binary runs on both databases
macro_rules! on_both_databases {
    ($prefix:literal, $name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let db = super::TestDb::sqlite(concat!($prefix, stringify!($name)));
                super::$name(db.open().await).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let db = super::TestDb::postgres(concat!($prefix, stringify!($name)));
                super::$name(db.open().await).await;
            }
        }
    };
}

/// One API request through the router: `token` as a bearer token, `body` as JSON. Returns the
/// status and the JSON body (`Null` if the body is not JSON).
#[allow(dead_code)] // not every test binary sends requests
pub async fn call(
    app: &axum::Router,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<serde_json::Value>,
) -> (axum::http::StatusCode, serde_json::Value) {
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let mut req = Request::builder().method(method).uri(path);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let body = match body {
        Some(b) => {
            req = req.header("content-type", "application/json");
            Body::from(b.to_string())
        }
        None => Body::empty(),
    };
    let resp = app.clone().oneshot(req.body(body).unwrap()).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null))
}

/// `POST /v1/bundles{query}` with the raw bundle bytes and `token`. Returns the status and the
/// JSON body (`Null` if the body is not JSON).
#[allow(dead_code)] // not every test binary uploads
pub async fn upload(
    app: &axum::Router,
    token: &str,
    query: &str,
    bundle: Vec<u8>,
) -> (axum::http::StatusCode, serde_json::Value) {
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let req = Request::post(format!("/v1/bundles{query}"))
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/octet-stream")
        .body(Body::from(bundle))
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null))
}

/// A database the test owns; PostgreSQL is stopped when it is dropped.
pub struct TestDb {
    pub url: String,
    pg_dir: Option<PathBuf>,
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some(dir) = &self.pg_dir {
            let _ = as_postgres(&pg_bin("pg_ctl"), &["-D", &dir.display().to_string(), "-m", "immediate", "stop"]);
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn pg_bin(name: &str) -> PathBuf {
    if let Ok(rd) = std::fs::read_dir("/usr/lib/postgresql") {
        let mut versions: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
        versions.sort();
        if let Some(v) = versions.last() {
            return v.join("bin").join(name);
        }
    }
    PathBuf::from(name)
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn as_postgres(bin: &Path, args: &[&str]) -> std::io::Result<std::process::Output> {
    if is_root() {
        Command::new("runuser").arg("-u").arg("postgres").arg("--").arg(bin).args(args).output()
    } else {
        Command::new(bin).args(args).output()
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl TestDb {
    pub fn sqlite(name: &str) -> TestDb {
        let dir = std::env::temp_dir().join(format!("keel-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TestDb { url: format!("sqlite://{}?mode=rwc", dir.join("keel.db").display()), pg_dir: None }
    }

    /// Starts PostgreSQL; panics with the command to install it if it is missing.
    pub fn postgres(name: &str) -> TestDb {
        let initdb = pg_bin("initdb");
        assert!(
            initdb.exists() || which("initdb"),
            "PostgreSQL is not installed: apt-get install -y postgresql (cargo xtask test does this)"
        );
        let dir = PathBuf::from(format!("/tmp/keel-pg-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        if is_root() {
            Command::new("chown").arg("postgres:postgres").arg(&dir).status().unwrap();
        }
        let d = dir.display().to_string();
        let out = as_postgres(&initdb, &["-D", &d, "-U", "keel", "--auth=trust", "-E", "UTF8"]).unwrap();
        assert!(out.status.success(), "initdb: {}", String::from_utf8_lossy(&out.stderr));
        let port = free_port();
        let opts = format!("-p {port} -k {d} -c listen_addresses=127.0.0.1 -c fsync=off");
        let out =
            as_postgres(&pg_bin("pg_ctl"), &["-D", &d, "-o", &opts, "-l", &format!("{d}/log"), "-w", "start"]).unwrap();
        assert!(out.status.success(), "pg_ctl start: {}", String::from_utf8_lossy(&out.stderr));
        TestDb { url: format!("postgres://keel@127.0.0.1:{port}/postgres"), pg_dir: Some(dir) }
    }

    pub async fn open(&self) -> Store {
        Store::open(&self.url).await.unwrap()
    }
}

fn which(name: &str) -> bool {
    Command::new("sh").arg("-c").arg(format!("command -v {name}")).status().is_ok_and(|s| s.success())
}

/// Bound on every wait of the update tests: a test that would hang fails instead.
#[allow(dead_code)] // used by the update tests only
pub const WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// Waits (at most [`WAIT`]) until the store holds an update status of device `id` in `state`.
#[allow(dead_code)] // used by the update tests only
pub async fn wait_update_state(store: &Store, id: &str, state: &str) {
    let mut changes = store.subscribe_updates();
    tokio::time::timeout(WAIT, async {
        loop {
            if store.update_status(id).await.unwrap().is_some_and(|s| s.state == state) {
                return;
            }
            let _ = changes.recv().await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("server never saw {id} {state}"));
}

/// Waits (at most [`WAIT`]) until a simulated device's stats satisfy `f`; returns them.
#[allow(dead_code)] // used by the update tests only
pub async fn sim_until(
    dev: &keel_sim::SimDevice,
    what: &str,
    f: impl FnMut(&keel_sim::Stats) -> bool,
) -> keel_sim::Stats {
    tokio::time::timeout(WAIT, dev.wait_for(f)).await.unwrap_or_else(|_| panic!("device never reached: {what}"))
}
