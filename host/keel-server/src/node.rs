//! One server node: everything `keel server run` starts, assembled from a [`Config`].
//!
//! [`Node::start`] prepares the data directory (mode 0700), the server key and the secrets key
//! (`KEEL_SECRETS_KEY`, else `secrets.key`; both files mode 0600, created atomically), raises the open-file limit, opens the database and the object store and
//! binds the listeners; [`Node::run`] serves the HTTP API ([`crate::listen`], optionally over TLS),
//! the device gateway, the optional metrics listener and log retention until its shutdown future
//! completes, then stops gracefully. [`run`] does both.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::listen::{HttpLimits, HttpStats};
use crate::store::Store;

/// TLS certificate and key files (PEM) for the HTTP API.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// Certificate chain, leaf first.
    pub cert: PathBuf,
    /// Private key.
    pub key: PathBuf,
}

/// Everything a node needs to run.
#[derive(Clone)]
pub struct Config {
    /// Data directory: the server key, the SQLite database, `objects/` by default.
    pub data_dir: PathBuf,
    /// Database URL (`postgres://...`); `None`: SQLite `keel.db` in the data directory.
    pub database_url: Option<String>,
    /// Object store for update layers; `None`: `objects/` in the data directory.
    pub object_store: Option<Arc<dyn object_store::ObjectStore>>,
    /// HTTP API address.
    pub http: SocketAddr,
    /// Device gateway address.
    pub gateway: SocketAddr,
    /// Address of a separate listener for `/metrics` (plain HTTP), if any.
    pub metrics: Option<SocketAddr>,
    /// Serve the API over TLS with these files.
    pub tls: Option<TlsFiles>,
    /// Allow plain HTTP on an address that is not loopback (behind a TLS-terminating proxy).
    pub insecure_http: bool,
    /// Bounds on HTTP connections (API and metrics listeners).
    pub http_limits: HttpLimits,
    /// Bounds on device connections (the gateway), its quotas and presence lease.
    pub gateway_limits: crate::limits::GatewayLimits,
    /// Keep log records this many days (0 = forever).
    pub log_retention_days: u64,
    /// API requests per token.
    pub api_rate: crate::http::ApiRate,
}

impl Config {
    /// A config with default limits, SQLite and the local object store in `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>, http: SocketAddr, gateway: SocketAddr) -> Self {
        Config {
            data_dir: data_dir.into(),
            database_url: None,
            object_store: None,
            http,
            gateway,
            metrics: None,
            tls: None,
            insecure_http: false,
            http_limits: HttpLimits::default(),
            gateway_limits: crate::limits::GatewayLimits::default(),
            log_retention_days: 30,
            api_rate: Default::default(),
        }
    }

    /// The database URL: the configured one, or SQLite in the data directory.
    pub fn database_url(&self) -> String {
        database_url(&self.data_dir, self.database_url.as_deref())
    }
}

/// The database URL for a data directory: `given`, or SQLite `keel.db` in `data_dir`.
pub fn database_url(data_dir: &Path, given: Option<&str>) -> String {
    given.map_or_else(|| format!("sqlite://{}?mode=rwc", data_dir.join("keel.db").display()), String::from)
}

/// Creates the data directory (and missing parents) readable only by its owner (0700 on Unix);
/// an existing directory is left as it is.
pub fn create_data_dir(dir: &Path) -> Result<(), String> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
    b.create(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))
}

/// The server's static key pair `(secret, public)` from `server.key` in `dir`, created on first
/// use. A new key is written to a temporary file created with mode 0600 (never readable by
/// others, not even for a moment), synced, then linked into place, so a concurrent start or a
/// crash never leaves a partial key; if another process linked one first, that one is used.
pub fn server_key(dir: &Path) -> Result<([u8; 32], [u8; 32]), String> {
    let path = dir.join("server.key");
    let load = |path: &Path| -> Result<Option<[u8; 32]>, String> {
        match std::fs::read(path) {
            Ok(b) => b.try_into().map(Some).map_err(|_| format!("{} is not a 32-byte key", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        }
    };
    let public = |s: [u8; 32]| x25519_public(&s);
    if let Some(secret) = load(&path)? {
        return Ok((secret, public(secret)));
    }
    let (private, _) = crate::gateway::generate_keypair();
    let secret: [u8; 32] = private.try_into().map_err(|_| "key generation failed".to_string())?;
    let tmp = dir.join(format!("server.key.{}.tmp", std::process::id()));
    write_private(&tmp, &secret)?;
    let linked = std::fs::hard_link(&tmp, &path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok((secret, public(secret))),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let secret = load(&path)?.ok_or_else(|| format!("{} vanished", path.display()))?;
            Ok((secret, public(secret)))
        }
        Err(e) => Err(format!("cannot create {}: {e}", path.display())),
    }
}

/// Logs a warning when `path` (made by an older keel, or by hand) is open to other users.
fn warn_if_shared(path: &Path) {
    #[cfg(unix)]
    if let Ok(m) = std::fs::metadata(path) {
        use std::os::unix::fs::PermissionsExt;
        let mode = m.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(
                "{} has mode {mode:o}: other users can reach it (chmod go-rwx; it holds the server key, \
                 tokens' hashes and device logs)",
                path.display()
            );
        }
    }
}

/// Writes a new file (it must not exist) readable only by its owner, and syncs it.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), String> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(path).map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    f.write_all(bytes).and_then(|()| f.sync_all()).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

fn x25519_public(secret: &[u8; 32]) -> [u8; 32] {
    x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(*secret)).to_bytes()
}

/// Raises the soft open-file limit to the hard limit; returns the new soft limit. Every HTTP
/// connection, device connection, database file and layer read uses a file descriptor.
pub fn raise_nofile_limit() -> std::io::Result<u64> {
    #[cfg(unix)]
    {
        rlimit::increase_nofile_limit(u64::MAX)
    }
    #[cfg(not(unix))]
    {
        Ok(0)
    }
}

/// The oldest log timestamp (µs) that `days` of retention keeps at time `now_us`; saturates
/// (a huge retention keeps everything, it never wraps around to "prune all").
pub fn retention_cutoff(now_us: u64, days: u64) -> u64 {
    now_us.saturating_sub(days.saturating_mul(86_400_000_000))
}

/// A started node: its listeners are bound and its storage is open.
pub struct Node {
    config: Config,
    store: Store,
    secret: [u8; 32],
    public: [u8; 32],
    http: tokio::net::TcpListener,
    gateway: tokio::net::TcpListener,
    metrics: Option<tokio::net::TcpListener>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    nofile: std::io::Result<u64>,
    /// `secrets.key` was made by this start (logged once the node runs).
    secrets_key_created: bool,
    /// Counters of the API listener.
    pub http_stats: Arc<HttpStats>,
}

impl Node {
    /// Prepares the data directory and key, raises the open-file limit, opens storage and binds
    /// every listener. Refuses plain HTTP on an address that is not loopback unless
    /// [`Config::insecure_http`].
    pub async fn start(config: Config) -> Result<Node, String> {
        if config.tls.is_none() && !config.insecure_http && !config.http.ip().is_loopback() {
            return Err(format!(
                "refusing to serve the API over plain HTTP on {}, which is not a loopback address: API \
                 tokens would cross the network in clear. Give --tls-cert and --tls-key, or --insecure-http \
                 if a TLS-terminating proxy in front of it is the only client",
                config.http
            ));
        }
        let tls = match &config.tls {
            Some(f) => Some(crate::tls::acceptor(&f.cert, &f.key)?),
            None => None,
        };
        let nofile = raise_nofile_limit();
        create_data_dir(&config.data_dir)?;
        let (secret, public) = server_key(&config.data_dir)?;
        let objects = match &config.object_store {
            Some(o) => o.clone(),
            None => local_object_store(&config.data_dir.join("objects"))?,
        };
        // Secrets at rest and the operator's destination rules (see `crate::settings`).
        let (secrets_key, key_source) = crate::settings::MasterKey::load(&config.data_dir)?;
        let operator_rules = crate::policy::operator_rules_from_env()?;
        // The app services start on first use; their settings are checked now, so a typo stops
        // the server at start rather than refusing every channel later.
        crate::channels::limits_from_env(|k| std::env::var(k).ok())?;
        let store = Store::open(&config.database_url())
            .await
            .map_err(|e| e.to_string())?
            .with_object_store(objects)
            .with_secrets_key(secrets_key)
            .with_operator_rules(operator_rules);
        let secrets_key_created = key_source == crate::settings::KeySource::Created;
        // A diagnostic of the remote debugging relay, read once here (no flag: see
        // `crate::debug_relay`).
        if let Some(path) = std::env::var_os(crate::debug_relay::CAPTURE_ENV).filter(|p| !p.is_empty()) {
            let path = PathBuf::from(path);
            store
                .debug_relay()
                .capture_to(Some(&path))
                .map_err(|e| format!("{}: cannot open {}: {e}", crate::debug_relay::CAPTURE_ENV, path.display()))?;
            tracing::warn!(
                path = %path.display(),
                "capturing every remote debugging frame the relay forwards ({})",
                crate::debug_relay::CAPTURE_ENV
            );
        }
        let bind = |a: SocketAddr| async move {
            tokio::net::TcpListener::bind(a).await.map_err(|e| format!("cannot listen on {a}: {e}"))
        };
        let gateway = bind(config.gateway).await?;
        let http = bind(config.http).await?;
        let metrics = match config.metrics {
            Some(a) => Some(bind(a).await?),
            None => None,
        };
        Ok(Node {
            config,
            store,
            secret,
            public,
            http,
            gateway,
            metrics,
            tls,
            nofile,
            secrets_key_created,
            http_stats: Arc::default(),
        })
    }

    /// The API's URL (`https://` with TLS).
    pub fn api_url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.http_addr())
    }

    /// The bound API address.
    pub fn http_addr(&self) -> SocketAddr {
        self.http.local_addr().unwrap_or(self.config.http)
    }

    /// The bound gateway address.
    pub fn gateway_addr(&self) -> SocketAddr {
        self.gateway.local_addr().unwrap_or(self.config.gateway)
    }

    /// The bound metrics address, if any.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Appends every remote debugging frame the relay forwards, both ways, to the file at
    /// `path` as `<down|up> <hex>` lines (`None`: stop). A diagnostic: it shows what the relay
    /// sees, which is ciphertext. `Node::start` starts one from the environment variable
    /// `KEEL_DEBUG_CAPTURE` if it is set.
    pub fn set_debug_capture(&self, path: Option<&Path>) -> Result<(), String> {
        self.store.debug_relay().capture_to(path).map_err(|e| format!("debug capture: {e}"))
    }

    /// The server's static public key (devices pin it).
    pub fn public_key(&self) -> [u8; 32] {
        self.public
    }

    /// The open-file limit after [`raise_nofile_limit`], or why it could not be read or raised.
    pub fn nofile_limit(&self) -> Result<u64, String> {
        self.nofile.as_ref().map(|n| *n).map_err(|e| e.to_string())
    }

    /// Serves until `shutdown` completes, then ends live log streams, lets open HTTP requests
    /// finish and stops the gateway and retention.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), String> {
        let Node {
            config, store, secret, public, http, gateway, metrics, tls, http_stats, secrets_key_created, ..
        } = self;
        // After the caller's first line (scripts read it), never before.
        warn_if_shared(&config.data_dir);
        warn_if_shared(&config.data_dir.join("server.key"));
        let secrets_key = config.data_dir.join(crate::settings::SECRETS_KEY_FILE);
        warn_if_shared(&secrets_key);
        if secrets_key_created {
            tracing::info!(
                "created {}: it encrypts the secrets; back it up with the database (without it they are lost)",
                secrets_key.display()
            );
        }
        // The gateway drains on the same stop signal as the HTTP listeners: its connections end
        // and mark their devices offline before `run` returns.
        let (gw_stop_tx, gw_stop_rx) = tokio::sync::oneshot::channel::<()>();
        let gateway_task = tokio::spawn(crate::gateway::serve_until(
            gateway,
            store.clone(),
            secret.to_vec(),
            config.gateway_limits.clone(),
            async move {
                let _ = gw_stop_rx.await;
            },
        ));
        let retention = (config.log_retention_days > 0).then(|| {
            let (store, days) = (store.clone(), config.log_retention_days);
            tokio::spawn(async move {
                let mut every = tokio::time::interval(std::time::Duration::from_secs(3600));
                loop {
                    every.tick().await;
                    match store.prune_logs(retention_cutoff(crate::unix_us(), days)).await {
                        Ok(n) if n > 0 => tracing::info!(records = n, "log retention: pruned"),
                        Ok(_) => {}
                        Err(e) => tracing::error!(error = %e, "log retention failed"),
                    }
                }
            })
        });
        let state = crate::http::AppState::new(store, public).with_api_rate(config.api_rate);
        let app = crate::http::router(state.clone());
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let stopped = move || {
            let mut rx = stop_rx.clone();
            async move {
                let _ = rx.wait_for(|s| *s).await;
            }
        };
        let metrics_task = metrics.map(|l| {
            // `/metrics` without a token, alone on its own listener (for a trusted network).
            let m = crate::http::metrics_router(state.clone());
            let limits = config.http_limits.clone();
            tokio::spawn(crate::listen::serve(l, m, None, limits, Arc::default(), stopped()))
        });
        let stop = async move {
            shutdown.await;
            // Live log streams never end by themselves; end them so the graceful shutdown
            // does not wait for them.
            state.stop_streams();
            let _ = stop_tx.send(true);
        };
        crate::listen::serve(http, app, tls, config.http_limits.clone(), http_stats, stop).await;
        if let Some(m) = metrics_task {
            let _ = m.await;
        }
        let _ = gw_stop_tx.send(());
        let _ = gateway_task.await;
        if let Some(r) = retention {
            r.abort();
        }
        Ok(())
    }
}

/// Opens (creating it) a local directory as the object store for update layers.
pub fn local_object_store(dir: &Path) -> Result<Arc<dyn object_store::ObjectStore>, String> {
    create_data_dir(dir)?;
    let fs = object_store::local::LocalFileSystem::new_with_prefix(dir)
        .map_err(|e| format!("object store {}: {e}", dir.display()))?;
    Ok(Arc::new(fs))
}

/// Starts a node and runs it until `shutdown` completes.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), String> {
    Node::start(config).await?.run(shutdown).await
}
