//! `keel server init` and `keel server run`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use keel_server::gateway;
use keel_server::http::{router, AppState};
use keel_server::store::Store;

#[derive(Args, Clone)]
pub struct DataArgs {
    /// Data directory (database, server key).
    #[arg(long, env = "KEEL_DATA", default_value = "keel-data")]
    pub data: PathBuf,
    /// Database URL (`postgres://...`); default: SQLite in the data directory.
    #[arg(long, env = "KEEL_DATABASE")]
    pub database: Option<String>,
    /// Where update layers are stored: a directory, or `s3://BUCKET[/PREFIX]` (needs a `keel`
    /// built with `--features s3`; credentials and region from the usual `AWS_*` variables,
    /// `AWS_ENDPOINT` for S3-compatible stores). Default: `objects/` in the data directory.
    #[arg(long, env = "KEEL_OBJECT_STORE")]
    pub object_store: Option<String>,
}

/// Format of the server's own log.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Subcommand)]
pub enum ServerCmd {
    /// Create the data directory, the server key and a first account with an API token.
    Init {
        #[command(flatten)]
        data: DataArgs,
        /// Account name.
        #[arg(long, default_value = "default")]
        account: String,
    },
    /// Run the HTTP API and the device gateway until interrupted (Ctrl-C / SIGTERM).
    Run {
        #[command(flatten)]
        data: DataArgs,
        /// HTTP API address.
        #[arg(long, default_value = "127.0.0.1:7447")]
        http: SocketAddr,
        /// Device gateway address.
        #[arg(long, default_value = "127.0.0.1:7448")]
        gateway: SocketAddr,
        /// Keep log records this many days (0 = forever).
        #[arg(long, default_value_t = 30)]
        log_retention_days: u64,
        /// Format of the server's own log on stderr: `text` for people, `json` (one object per
        /// line) for log collectors. Verbosity: `RUST_LOG` (default `info`).
        #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "KEEL_LOG_FORMAT")]
        log_format: LogFormat,
    },
}

/// Opens the object store for update layers.
fn object_store(d: &DataArgs) -> Result<std::sync::Arc<dyn object_store::ObjectStore>, String> {
    let spec = d.object_store.clone();
    match spec.as_deref() {
        Some(url) if url.starts_with("s3://") => s3_store(url),
        Some(other) if other.contains("://") => {
            Err(format!("--object-store {other}: give a directory or an s3:// URL"))
        }
        dir => {
            let dir = dir.map_or_else(|| d.data.join("objects"), PathBuf::from);
            std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            let fs = object_store::local::LocalFileSystem::new_with_prefix(&dir)
                .map_err(|e| format!("object store {}: {e}", dir.display()))?;
            Ok(std::sync::Arc::new(fs))
        }
    }
}

#[cfg(feature = "s3")]
fn s3_store(url: &str) -> Result<std::sync::Arc<dyn object_store::ObjectStore>, String> {
    let (bucket, prefix) = url["s3://".len()..].split_once('/').unwrap_or((&url["s3://".len()..], ""));
    let s3 = object_store::aws::AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .build()
        .map_err(|e| format!("--object-store {url}: {e}"))?;
    if prefix.is_empty() {
        Ok(std::sync::Arc::new(s3))
    } else {
        Ok(std::sync::Arc::new(object_store::prefix::PrefixStore::new(s3, prefix)))
    }
}

#[cfg(not(feature = "s3"))]
fn s3_store(url: &str) -> Result<std::sync::Arc<dyn object_store::ObjectStore>, String> {
    Err(format!(
        "--object-store {url}: this keel was built without S3 support; rebuild with \
         `cargo install --path host/keel-cli --features s3` or use a directory"
    ))
}

fn database_url(d: &DataArgs) -> String {
    d.database.clone().unwrap_or_else(|| format!("sqlite://{}?mode=rwc", d.data.join("keel.db").display()))
}

/// Loads the server key, creating it on first use.
fn server_key(dir: &Path) -> Result<(Vec<u8>, [u8; 32]), String> {
    let path = dir.join("server.key");
    if let Ok(b) = std::fs::read(&path) {
        let secret: [u8; 32] = b.try_into().map_err(|_| format!("{} is not a 32-byte key", path.display()))?;
        let public = x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(secret)).to_bytes();
        return Ok((secret.to_vec(), public));
    }
    let (private, public) = gateway::generate_keypair();
    std::fs::write(&path, &private).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
    }
    Ok((private, public))
}

pub fn run(cmd: ServerCmd, json: bool) -> Result<(), String> {
    let rt = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    rt.block_on(async move {
        match cmd {
            ServerCmd::Init { data, account } => {
                std::fs::create_dir_all(&data.data).map_err(|e| format!("cannot create {}: {e}", data.data.display()))?;
                let (_, public) = server_key(&data.data)?;
                let store = Store::open(&database_url(&data)).await.map_err(|e| e.to_string())?;
                let id = format!("acct-{}", account);
                store.create_account(&id, &account).await.map_err(|e| format!("cannot create account: {e}"))?;
                let token = store.create_token(&id, "initial").await.map_err(|e| e.to_string())?;
                if json {
                    println!("{}", serde_json::json!({ "account": id, "token": token, "server_public_key": keel_server::hex(&public) }));
                } else {
                    println!("account   {id}\ntoken     {token}\n\nKeep the token: it is shown once. Use it with KEEL_TOKEN=... or --token.");
                }
                Ok(())
            }
            ServerCmd::Run { data, http, gateway: gw, log_retention_days, log_format } => {
                let filter = tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
                let fmt = tracing_subscriber::fmt()
                    .with_env_filter(filter)
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                    .with_writer(|| LossyStderr);
                match log_format {
                    LogFormat::Text => fmt.init(),
                    LogFormat::Json => fmt.json().init(),
                }
                std::fs::create_dir_all(&data.data).map_err(|e| e.to_string())?;
                let (private, public) = server_key(&data.data)?;
                let objects = object_store(&data)?;
                let store = Store::open(&database_url(&data)).await.map_err(|e| e.to_string())?.with_object_store(objects);
                let gl = tokio::net::TcpListener::bind(gw).await.map_err(|e| format!("cannot listen on {gw}: {e}"))?;
                let hl = tokio::net::TcpListener::bind(http).await.map_err(|e| format!("cannot listen on {http}: {e}"))?;
                let gateway_task = tokio::spawn(gateway::serve(gl, store.clone(), private));
                let retention = (log_retention_days > 0).then(|| {
                    let store = store.clone();
                    tokio::spawn(async move {
                        let keep_us = log_retention_days * 86_400 * 1_000_000;
                        let mut every = tokio::time::interval(std::time::Duration::from_secs(3600));
                        loop {
                            every.tick().await;
                            match store.prune_logs(keel_server::unix_us().saturating_sub(keep_us)).await {
                                Ok(n) if n > 0 => tracing::info!(records = n, "log retention: pruned"),
                                Ok(_) => {}
                                Err(e) => tracing::error!(error = %e, "log retention failed"),
                            }
                        }
                    })
                });
                let key = keel_server::hex(&public);
                match log_format {
                    LogFormat::Text => eprintln!("keel server: API http://{http}, device gateway {gw}, key {key}"),
                    LogFormat::Json => tracing::info!(api = %http, gateway = %gw, key, "keel server running"),
                }
                let state = AppState::new(store, public);
                let app = router(state.clone());
                let stop = async move {
                    shutdown().await;
                    // Live log streams never end by themselves; end them so the graceful
                    // shutdown does not wait forever.
                    state.stop_streams();
                };
                axum::serve(hl, app).with_graceful_shutdown(stop).await.map_err(|e| e.to_string())?;
                gateway_task.abort();
                if let Some(r) = retention {
                    r.abort();
                }
                match log_format {
                    LogFormat::Text => eprintln!("keel server: stopped"),
                    LogFormat::Json => tracing::info!("keel server stopped"),
                }
                Ok(())
            }
        }
    })
}

/// The server's log writer: stderr, where a failed write (say, the reader of a pipe went away)
/// loses the line instead of failing the task that logged it.
struct LossyStderr;

impl std::io::Write for LossyStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = std::io::stderr().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}

async fn shutdown() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("signal handler");
        tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
