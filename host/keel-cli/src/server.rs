//! `keel server init|run|backup|restore`: a thin parser around [`keel_server::node`] and
//! [`keel_server::backup`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use keel_server::http::ApiRate;
use keel_server::limits::GatewayLimits;
use keel_server::listen::HttpLimits;
use keel_server::node::{self, Config, Node, TlsFiles};
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

/// The device gateway's limits and presence (see docs/operations.md); defaults from
/// [`GatewayLimits::default`].
#[derive(Args, Clone)]
#[command(next_help_heading = "Device gateway")]
pub struct GatewayArgs {
    /// This gateway's node name: devices are shown online only while their node's presence
    /// lease is current, and a node that starts ends the presence of its previous run. Give each
    /// node of several sharing one database its own name.
    #[arg(long, env = "KEEL_NODE_NAME", default_value_t = GatewayLimits::default().node_name)]
    node_name: String,
    /// Seconds a node's presence lease lasts (renewed every third of it): how long a crashed
    /// node's devices can still be shown online.
    #[arg(long, default_value_t = GatewayLimits::default().presence_lease.as_secs())]
    presence_lease: u64,
    /// Device connections held at once.
    #[arg(long, default_value_t = GatewayLimits::default().max_connections)]
    gateway_max_connections: usize,
    /// Device connections held at once from one source address (devices behind one NAT share
    /// an address).
    #[arg(long, default_value_t = GatewayLimits::default().max_per_address)]
    gateway_max_per_address: usize,
    /// Connections held at once that have not finished their handshake.
    #[arg(long, default_value_t = GatewayLimits::default().max_unauthenticated)]
    gateway_max_unauthenticated: usize,
    /// ... of them from one source address.
    #[arg(long, default_value_t = GatewayLimits::default().max_unauthenticated_per_address)]
    gateway_max_unauthenticated_per_address: usize,
    /// Seconds a device has from its connection's accept to the end of its handshake.
    #[arg(long, default_value_t = GatewayLimits::default().handshake_timeout.as_secs())]
    handshake_timeout: u64,
    /// New device connections per second one source address may start, sustained.
    #[arg(long, default_value_t = GatewayLimits::default().handshakes_per_second_per_address)]
    handshake_rate: f64,
    /// ... and in a burst.
    #[arg(long, default_value_t = GatewayLimits::default().handshake_burst_per_address)]
    handshake_burst: f64,
    /// Log bytes one device may have stored per UTC day (text plus 32 per record); above it
    /// records are acknowledged and counted, not stored.
    #[arg(long, default_value_t = GatewayLimits::default().log_bytes_per_device_per_day)]
    log_quota: u64,
    /// Update history entries one device may add per UTC day.
    #[arg(long, default_value_t = GatewayLimits::default().update_events_per_device_per_day)]
    update_event_quota: u32,
    /// Apply the per-address limits to this host's own 127.0.0.1 and ::1 too (exempt by
    /// default: a local proxy or benchmark is one address).
    #[arg(long)]
    limit_loopback: bool,
}

impl GatewayArgs {
    fn limits(&self) -> GatewayLimits {
        GatewayLimits {
            max_connections: self.gateway_max_connections,
            max_per_address: self.gateway_max_per_address,
            max_unauthenticated: self.gateway_max_unauthenticated,
            max_unauthenticated_per_address: self.gateway_max_unauthenticated_per_address,
            handshake_timeout: Duration::from_secs(self.handshake_timeout.max(1)),
            handshakes_per_second_per_address: self.handshake_rate,
            handshake_burst_per_address: self.handshake_burst,
            node_name: self.node_name.clone(),
            presence_lease: Duration::from_secs(self.presence_lease.max(3)),
            log_bytes_per_device_per_day: self.log_quota,
            update_events_per_device_per_day: self.update_event_quota,
            limit_loopback: self.limit_loopback,
        }
    }
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
// Parsed once per process: the size of its largest variant does not matter.
#[allow(clippy::large_enum_variant)]
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
        /// HTTP API address. Plain HTTP is allowed on loopback addresses only, unless
        /// --insecure-http; elsewhere give --tls-cert and --tls-key.
        #[arg(long, default_value = "127.0.0.1:7447")]
        http: SocketAddr,
        /// Device gateway address.
        #[arg(long, default_value = "127.0.0.1:7448")]
        gateway: SocketAddr,
        /// Serve `/metrics` (plain HTTP, no token) on this address as well.
        #[arg(long, env = "KEEL_METRICS")]
        metrics: Option<SocketAddr>,
        /// TLS certificate chain for the API (PEM, leaf first).
        #[arg(long, env = "KEEL_TLS_CERT", requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// TLS private key for the API (PEM).
        #[arg(long, env = "KEEL_TLS_KEY", requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// Serve plain HTTP on an address that is not loopback (only behind a TLS-terminating
        /// proxy: tokens would otherwise cross the network in clear).
        #[arg(long)]
        insecure_http: bool,
        /// Seconds a client has to send a request's headers (and finish a TLS handshake); also
        /// how long a kept-alive connection may wait for its next request.
        #[arg(long, default_value_t = 10)]
        http_header_timeout: u64,
        /// Seconds without a byte in either direction after which an HTTP connection is closed.
        #[arg(long, default_value_t = 60)]
        http_idle_timeout: u64,
        /// Slowest average request body accepted, in bytes per second (0: no minimum).
        #[arg(long, default_value_t = HttpLimits::default().min_body_rate)]
        http_min_body_rate: u64,
        /// Open HTTP connections at most (0: no cap).
        #[arg(long, default_value_t = HttpLimits::default().max_connections)]
        http_max_connections: usize,
        /// Open HTTP connections from one address at most (0: no cap). Behind a reverse proxy
        /// every request comes from the proxy's address: raise it or set 0.
        #[arg(long, default_value_t = HttpLimits::default().max_connections_per_ip)]
        http_max_connections_per_ip: usize,
        /// Keep log records this many days (0 = forever).
        #[arg(long, default_value_t = 30)]
        log_retention_days: u64,
        /// API requests one token may make per second, sustained (0: no limit); over it the
        /// API answers 429 `rate_limited` with `Retry-After`.
        #[arg(long, default_value_t = ApiRate::default().per_second)]
        api_rate: f64,
        /// ... and at once after a quiet time.
        #[arg(long, default_value_t = ApiRate::default().burst)]
        api_burst: f64,
        #[command(flatten)]
        gateway_limits: GatewayArgs,
        /// Format of the server's own log on stderr: `text` for people, `json` (one object per
        /// line) for log collectors. Verbosity: `RUST_LOG` (default `info`).
        #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "KEEL_LOG_FORMAT")]
        log_format: LogFormat,
    },
    /// Back up a server's data while it runs: the server key, a consistent copy of the SQLite
    /// database (with PostgreSQL: a `pg_dump` hint), the update layers and a manifest.
    Backup {
        #[command(flatten)]
        data: DataArgs,
        /// New directory for the backup (must not exist or be empty).
        #[arg(long)]
        out: PathBuf,
    },
    /// Restore a backup into a new data directory (checked against the backup's manifest).
    Restore {
        /// The backup directory (from `keel server backup`).
        #[arg(long)]
        from: PathBuf,
        /// New data directory (must not exist or be empty).
        #[arg(long, env = "KEEL_DATA")]
        data: PathBuf,
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
        dir => node::local_object_store(&dir.map_or_else(|| d.data.join("objects"), PathBuf::from)),
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
    node::database_url(&d.data, d.database.as_deref())
}

pub fn run(cmd: ServerCmd, json: bool) -> Result<(), String> {
    let rt = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    rt.block_on(async move {
        match cmd {
            ServerCmd::Init { data, account } => {
                node::create_data_dir(&data.data)?;
                let (_, public) = node::server_key(&data.data)?;
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
            ServerCmd::Run {
                data,
                http,
                gateway,
                metrics,
                tls_cert,
                tls_key,
                insecure_http,
                http_header_timeout,
                http_idle_timeout,
                http_min_body_rate,
                http_max_connections,
                http_max_connections_per_ip,
                log_retention_days,
                api_rate,
                api_burst,
                gateway_limits,
                log_format,
            } => {
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
                let config = Config {
                    database_url: data.database.clone(),
                    object_store: Some(object_store(&data)?),
                    data_dir: data.data,
                    http,
                    gateway,
                    metrics,
                    tls: tls_cert.zip(tls_key).map(|(cert, key)| TlsFiles { cert, key }),
                    insecure_http,
                    http_limits: HttpLimits {
                        header_timeout: Duration::from_secs(http_header_timeout.max(1)),
                        idle_timeout: Duration::from_secs(http_idle_timeout.max(1)),
                        min_body_rate: http_min_body_rate,
                        max_connections: http_max_connections,
                        max_connections_per_ip: http_max_connections_per_ip,
                        ..HttpLimits::default()
                    },
                    gateway_limits: gateway_limits.limits(),
                    log_retention_days,
                    api_rate: ApiRate { per_second: api_rate, burst: api_burst },
                };
                let node = Node::start(config).await?;
                let (api, gw) = (node.api_url(), node.gateway_addr());
                let key = keel_server::hex(&node.public_key());
                // The first line's format is read by scripts and tests: keep it.
                match log_format {
                    LogFormat::Text => eprintln!("keel server: API {api}, device gateway {gw}, key {key}"),
                    LogFormat::Json => {
                        tracing::info!(api = %node.http_addr(), url = %api, gateway = %gw, key, "keel server running")
                    }
                }
                match node.nofile_limit() {
                    Ok(n) => tracing::info!("open files: {n} (the soft limit, raised to the hard limit)"),
                    Err(e) => tracing::warn!("open files: cannot raise the limit: {e}"),
                }
                if let Some(m) = node.metrics_addr() {
                    tracing::info!("metrics: http://{m}/metrics");
                }
                node.run(shutdown()).await?;
                match log_format {
                    LogFormat::Text => eprintln!("keel server: stopped"),
                    LogFormat::Json => tracing::info!("keel server stopped"),
                }
                Ok(())
            }
            ServerCmd::Backup { data, out } => {
                let objects_dir = match data.object_store.as_deref() {
                    Some(s) if s.contains("://") => None,
                    Some(dir) => Some(PathBuf::from(dir)),
                    None => Some(data.data.join("objects")),
                };
                let src = keel_server::backup::Source {
                    data_dir: &data.data,
                    database_url: data.database.as_deref(),
                    objects_dir,
                };
                let m = keel_server::backup::backup(&src, &out).await?;
                report("backed up", &out, &m, json)
            }
            ServerCmd::Restore { from, data } => {
                let m = keel_server::backup::restore(&from, &data)?;
                report("restored into", &data, &m, json)
            }
        }
    })
}

fn report(what: &str, dir: &std::path::Path, m: &keel_server::backup::Manifest, json: bool) -> Result<(), String> {
    if json {
        println!(
            "{}",
            serde_json::json!({ "dir": dir, "database": m.database, "files": m.files.len(),
                "server_public_key": m.server_public_key, "notes": m.notes })
        );
    } else {
        println!(
            "{what} {} ({} files, database {}, key {})",
            dir.display(),
            m.files.len(),
            m.database,
            m.server_public_key
        );
        for n in &m.notes {
            println!("note: {n}");
        }
    }
    Ok(())
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
