//! Storage: one code path for SQLite (default, zero setup) and PostgreSQL (by URL).
//!
//! Queries use `$n` placeholders, which both databases accept, through sqlx's `Any` driver;
//! the migrations in `migrations/` are written in the SQL both understand.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use object_store::memory::InMemory;
use object_store::ObjectStore;
use sqlx::any::{install_default_drivers, AnyPoolOptions};
use sqlx::{AnyPool, Row};
use tokio::sync::broadcast;

use crate::bus::{Bus, DeviceMessage, LocalBus, StorePresence};
use crate::crash::CrashPart;
use crate::{hex, unix_us};

/// Storage errors (database unreachable, constraint violated, ...).
pub type Error = sqlx::Error;

/// A registered device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Device {
    /// Device id (`kd` + 32 hex digits, as the app sees it).
    pub id: String,
    /// Owning account.
    pub account_id: String,
    /// Hex of its X25519 static public key.
    pub public_key: String,
    /// Human name.
    pub name: String,
    /// Connected to the gateway now.
    pub online: bool,
    /// Last time it was seen (µs since the epoch).
    pub last_seen: Option<i64>,
    /// Visor version from its last hello.
    pub visor_version: Option<String>,
    /// Running app name and version from its last hello.
    pub app: Option<(String, String)>,
    /// Boot counter from its last hello.
    pub boot_count: Option<i64>,
    /// Tags, sorted.
    pub tags: Vec<String>,
    /// The last boot event the device reported: (server time µs, event text).
    pub last_boot: Option<(i64, String)>,
    /// The last crash report the device reported: (server time µs, report text).
    pub last_crash: Option<(i64, String)>,
}

/// An API token as listed (the token itself is never stored).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenInfo {
    /// Public id: the first 12 hex digits of the token's SHA-256.
    pub id: String,
    /// Name given at creation.
    pub name: String,
    /// Creation time, µs since the epoch.
    pub created_at: i64,
    /// `read`, `deploy` or `admin`.
    pub scope: String,
    /// When it stops working, µs since the epoch (`None`: never).
    pub expires_at: Option<i64>,
    /// When it was last used (updated at most once a minute), µs since the epoch.
    pub last_used_at: Option<i64>,
}

/// What a valid token grants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenGrant {
    /// The account it belongs to.
    pub account_id: String,
    /// Its public id.
    pub id: String,
    /// `read`, `deploy` or `admin` (as stored; the API maps unknown values to `read`).
    pub scope: String,
    /// When it stops working, µs since the epoch.
    pub expires_at: Option<i64>,
}

/// `last_used_at` is written at most this often per token (µs), so reads stay reads.
const LAST_USED_RESOLUTION_US: i64 = 60_000_000;

/// Counters of the gateway since the process started, for `/metrics`.
#[derive(Debug, Default)]
pub struct Counters {
    /// TCP connections accepted by the gateway.
    pub connections: AtomicU64,
    /// Handshakes that completed (device authenticated and `Ready` received).
    pub handshakes: AtomicU64,
    /// Connections refused or dropped for invalid input (bad handshake, unknown key, bad frame).
    pub rejected: AtomicU64,
    /// Log records received (including duplicates).
    pub log_records: AtomicU64,
    /// Received records that were already stored (redelivery after a reconnect).
    pub log_duplicates: AtomicU64,
    /// Records devices reported as dropped because their ring was full.
    pub log_dropped: AtomicU64,
    /// Bundles accepted by `POST /v1/bundles`.
    pub bundle_uploads: AtomicU64,
    /// Layer bytes sent to devices (`LayerData`).
    pub layer_bytes_served: AtomicU64,
    /// Update offers sent to devices.
    pub offers_sent: AtomicU64,
    /// Device messages (or visor events) of a variant this server does not know, skipped.
    pub unknown_messages: AtomicU64,
    /// Device log records acknowledged but not stored: their sequence number is above 2^63 - 1,
    /// which no database column holds.
    pub log_unstorable: AtomicU64,
    /// Device log records acknowledged but not stored: the device was over its daily log quota.
    pub log_quota_dropped: AtomicU64,
    /// Update events not recorded: the device was over its daily update event quota.
    pub update_events_quota_dropped: AtomicU64,
    /// Device targets (deployments) read by gateway connections: at `Ready` and after each
    /// change of that device's deployment.
    pub target_loads: AtomicU64,
    /// Gateway connections refused at accept: the total connection cap was reached.
    pub refused_total_cap: AtomicU64,
    /// Gateway connections refused at accept: their source address held its cap.
    pub refused_per_address: AtomicU64,
    /// Gateway connections refused at accept: the unauthenticated budget (in total or of their
    /// address) was full.
    pub refused_unauthenticated: AtomicU64,
    /// Gateway connections refused at accept: their address started handshakes too fast.
    pub refused_rate: AtomicU64,
    /// Gateway connections closed because the handshake (through `Ready`) took too long.
    pub handshake_timeouts: AtomicU64,
    /// Remote debugging frames relayed from a debugger to a device's connection.
    pub debug_to_device: AtomicU64,
    /// Remote debugging frames relayed from a device to its debugger.
    pub debug_to_client: AtomicU64,
    /// Debug frames from a device dropped: no debugger attached.
    pub debug_dropped_no_client: AtomicU64,
    /// Debug frames from a device dropped: its debugger's queue was full (it reads too slowly).
    pub debug_dropped_client_slow: AtomicU64,
    /// Debug frames from a debugger dropped: the device is offline.
    pub debug_dropped_offline: AtomicU64,
    /// Debug frames from a debugger dropped: over the session's frame rate.
    pub debug_dropped_rate: AtomicU64,
    /// Debug frames from a debugger dropped by the device's connection: the device did not
    /// announce `DEBUG`, was not online yet, or the frame was too large.
    pub debug_dropped_not_negotiated: AtomicU64,
    /// Debuggers attached (websocket sessions opened).
    pub debug_sessions: AtomicU64,
    /// Debuggers that replaced the one attached to the same device.
    pub debug_sessions_replaced: AtomicU64,
}

impl Counters {
    /// The gateway's counters of what its limits and quotas refused, as `/metrics` shows them:
    /// (name, help, counter).
    pub fn limit_counters(&self) -> [(&'static str, &'static str, &AtomicU64); 9] {
        [
            (
                "keel_log_records_unstorable_total",
                "Log records acknowledged but not stored: sequence number above 2^63 - 1.",
                &self.log_unstorable,
            ),
            (
                "keel_log_records_quota_dropped_total",
                "Log records acknowledged but not stored: the device was over its daily log quota.",
                &self.log_quota_dropped,
            ),
            (
                "keel_update_events_quota_dropped_total",
                "Update events not recorded: the device was over its daily update event quota.",
                &self.update_events_quota_dropped,
            ),
            (
                "keel_gateway_target_loads_total",
                "Device targets read by gateway connections (at Ready and on a deployment change).",
                &self.target_loads,
            ),
            (
                "keel_gateway_refused_total_cap_total",
                "Gateway connections refused: total connection cap reached.",
                &self.refused_total_cap,
            ),
            (
                "keel_gateway_refused_per_address_total",
                "Gateway connections refused: per-address connection cap reached.",
                &self.refused_per_address,
            ),
            (
                "keel_gateway_refused_unauthenticated_total",
                "Gateway connections refused: unauthenticated connection budget full.",
                &self.refused_unauthenticated,
            ),
            (
                "keel_gateway_refused_rate_total",
                "Gateway connections refused: handshakes per second per address exceeded.",
                &self.refused_rate,
            ),
            (
                "keel_gateway_handshake_timeouts_total",
                "Gateway connections closed: handshake not finished in time.",
                &self.handshake_timeouts,
            ),
        ]
    }

    /// Adds `n` to a counter.
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
}

/// State shared by the gateway and the API that is not in the database: counters and the
/// notification of new log records (which live log streams wait on).
#[derive(Debug)]
struct Live {
    counters: Arc<Counters>,
    /// The remote debugging relay.
    debug_relay: Arc<crate::debug_relay::DebugRelay>,
    /// Per online device, the generation of its newest connection.
    online: std::sync::Mutex<std::collections::HashMap<Arc<str>, u64>>,
    next_generation: AtomicU64,
    /// Counts the deployments made through this store (see [`Store::deploy_epoch`]).
    deploy_epoch: AtomicU64,
    new_logs: broadcast::Sender<String>,
    /// Messages to device connections (per device).
    bus: Arc<dyn Bus>,
    pub(crate) updates: broadcast::Sender<String>,
    /// Gateway writes waiting for the next group commit.
    group: std::sync::Mutex<Group>,
    /// The app channels' services (HTTP proxy, managed MQTT), started on first use.
    channel_services: std::sync::OnceLock<Option<Arc<crate::channels::Services>>>,
}

/// The queue of the group commit.
#[derive(Debug, Default)]
struct Group {
    /// Writes waiting for the next commit.
    jobs: Vec<Job>,
    /// Whether a committer task runs (it commits until the queue is empty, then ends).
    committing: bool,
}

/// A queued write and where its result goes.
type Job = (Write, tokio::sync::oneshot::Sender<Result<u64, Error>>);

/// A gateway write that commits together with other connections' (see [`Store::write`]).
#[derive(Debug)]
pub(crate) enum Write {
    /// [`Store::device_online`].
    Online {
        id: String,
        visor_version: String,
        app: Option<(String, String)>,
        boot_count: u32,
        node: String,
        session: u64,
    },
    /// [`Store::insert_logs_noting`]: the records, then (time, crash?, text) of the events, then
    /// the crash dump parts of the records stored for the first time.
    Logs { device: String, records: Vec<LogRecord>, events: Vec<(u64, bool, String)>, crashes: Vec<CrashPart> },
    /// [`Store::store_update_status`]: the status, and whether a change may add a history entry.
    Status { device: String, status: crate::ota::UpdateStatus, record_event: bool },
}

impl Write {
    /// Runs the write in the group's transaction: rows it added (logs) or changed.
    async fn run(&self, c: &mut sqlx::AnyConnection) -> Result<u64, Error> {
        match self {
            Write::Online { id, visor_version, app, boot_count, node, session } => {
                let done = sqlx::query(
                    "UPDATE devices SET online_node = $1, online_session = $2, last_seen = $3, visor_version = $4, \
                     app_name = $5, app_version = $6, boot_count = $7 WHERE id = $8",
                )
                .bind(node.as_str())
                .bind(*session as i64)
                .bind(unix_us() as i64)
                .bind(visor_version.as_str())
                .bind(app.as_ref().map(|a| a.0.as_str()))
                .bind(app.as_ref().map(|a| a.1.as_str()))
                .bind(*boot_count as i64)
                .bind(id.as_str())
                .execute(&mut *c)
                .await?;
                Ok(done.rows_affected())
            }
            Write::Logs { device, records, events, crashes } => {
                let mut new = 0;
                // Sequence numbers stored now for the first time: only their crash parts apply
                // (a redelivered record must not add to a dump twice).
                let mut fresh = Vec::new();
                for r in records {
                    let n = Store::insert_one(&mut *c, device, r).await?;
                    if n > 0 && !crashes.is_empty() {
                        fresh.push(r.seq);
                    }
                    new += n;
                }
                for (at, crash, text) in events {
                    let event = if *crash { DeviceEvent::Crash(text) } else { DeviceEvent::Boot(text) };
                    Store::note_event_in(&mut *c, device, *at, event).await?;
                }
                for part in crashes.iter().filter(|p| fresh.contains(&p.seq())) {
                    Store::apply_crash_part(&mut *c, device, part).await?;
                }
                Ok(new)
            }
            Write::Status { device, status, record_event } => {
                Store::write_status_if_new(c, device, status, *record_event).await
            }
        }
    }
}

/// Commits a group of writes in one transaction (one WAL sync for all of them). First as they
/// are, one statement per write; if one of them fails, the transaction is rolled back and the
/// group runs again with each write inside its own savepoint, so that the failing write fails
/// alone (three statements per write: only when needed). Answers each once the group committed.
async fn commit_group(mut c: sqlx::pool::PoolConnection<sqlx::Any>, jobs: Vec<Job>) {
    use sqlx::Connection as _;
    let together = async {
        let mut tx = c.begin().await?;
        let mut results = Vec::with_capacity(jobs.len());
        for (w, _) in &jobs {
            match w.run(&mut tx).await {
                Ok(n) => results.push(Ok(n)),
                // Dropping the transaction rolls it back.
                Err(_) => return Ok(None),
            }
        }
        tx.commit().await?;
        Ok::<_, sqlx::Error>(Some(results))
    }
    .await;
    let committed = match together {
        Ok(Some(results)) => Ok(results),
        Ok(None) => {
            async {
                let mut results = Vec::with_capacity(jobs.len());
                let mut tx = c.begin().await?;
                for (w, _) in &jobs {
                    sqlx::query("SAVEPOINT keel_write").execute(&mut *tx).await?;
                    let r = w.run(&mut tx).await;
                    if r.is_err() {
                        sqlx::query("ROLLBACK TO SAVEPOINT keel_write").execute(&mut *tx).await?;
                    }
                    sqlx::query("RELEASE SAVEPOINT keel_write").execute(&mut *tx).await?;
                    results.push(r);
                }
                tx.commit().await?;
                Ok(results)
            }
            .await
        }
        Err(e) => Err(e),
    };
    match committed {
        Ok(results) => {
            for ((_, reply), r) in jobs.into_iter().zip(results) {
                let _ = reply.send(r);
            }
        }
        Err(e) => {
            let text = e.to_string();
            for (_, reply) in jobs {
                let _ = reply.send(Err(Error::Protocol(format!("group commit failed: {text}"))));
            }
        }
    }
}

/// A device as a handshake finds it ([`Store::device_for_handshake`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HandshakeLookup {
    /// Its id.
    pub id: String,
    /// The highest stored log record below the device's next sequence number (where delivery
    /// resumes), if any.
    pub log_acked: Option<u64>,
    /// The highest stored record, if it is at or above the device's next number (its sequence
    /// went back).
    pub log_above: Option<u64>,
    /// Whether it has a deployment (a target bundle).
    pub deployed: bool,
}

/// One stored log record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogRecord {
    /// Device sequence number.
    pub seq: u64,
    /// 0 app line, 1 visor text or event (events are stored rendered), 2 server note (e.g.
    /// "dropped N").
    pub kind: u8,
    /// Level.
    pub level: u8,
    /// Device monotonic time.
    pub device_time_us: u64,
    /// When the server stored it.
    pub received_at: u64,
    /// Text. Device bytes are stored escaped (see `connection::escape_device_text`): NUL and
    /// bytes that are not valid UTF-8 as `\xNN`.
    pub text: String,
}

/// Something the server noticed about a device (a log sequence that went back, a quota reached).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerEvent {
    /// Server time, µs since the epoch.
    pub at: i64,
    /// What: `log_regression`, `log_quota`, `update_event_quota`.
    pub kind: String,
    /// Details.
    pub text: String,
}

/// A device event the registry remembers, with its rendered text. The gateway builds it from a
/// typed visor event (`keel_proto::event::VisorEvent::{Boot, Crash}`), never from text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceEvent<'a> {
    /// The visor booted (`boot #N visor V (reason)`).
    Boot(&'a str),
    /// The app crashed (`app crash: KIND pc=...`).
    Crash(&'a str),
}

/// The database, and the live state shared by the gateway and the API.
///
/// Update layers live in an object store ([`Store::objects`]): in memory unless
/// [`Store::with_object_store`] gives another (`keel server run` uses a directory in its data
/// directory).
#[derive(Clone)]
pub struct Store {
    /// Writes, and reads that must share a writer's transaction. SQLite: one connection.
    pub(crate) pool: AnyPool,
    /// Reads. SQLite: more connections beside the writer (WAL lets readers run while it
    /// commits), so the API's reads never queue behind the gateway's log commits; PostgreSQL:
    /// the same pool.
    pub(crate) reader: AnyPool,
    live: Arc<Live>,
    objects: Arc<dyn ObjectStore>,
    /// The master key of secrets and the operator's destination rules (see [`crate::settings`]).
    pub(crate) settings: Arc<crate::settings::SettingsConfig>,
}

fn token_hash(token: &str) -> String {
    use sha2::{Digest, Sha256};
    hex(&Sha256::digest(token.as_bytes()))
}

/// The public id of a token: the first 12 hex digits of its SHA-256 (as listed and revoked).
pub fn token_id(token: &str) -> String {
    token_hash(token)[..12].to_string()
}

fn device_from_row(r: &sqlx::any::AnyRow) -> Result<Device, Error> {
    let app_name: Option<String> = r.try_get("app_name")?;
    let app_version: Option<String> = r.try_get("app_version")?;
    Ok(Device {
        id: r.try_get("id")?,
        account_id: r.try_get("account_id")?,
        public_key: r.try_get("public_key")?,
        name: r.try_get("name")?,
        online: r.try_get::<Option<i64>, _>("online_lease")?.is_some_and(|until| until > unix_us() as i64),
        last_seen: r.try_get("last_seen")?,
        visor_version: r.try_get("visor_version")?,
        app: app_name.zip(app_version),
        boot_count: r.try_get("boot_count")?,
        tags: Vec::new(),
        last_boot: r.try_get::<Option<i64>, _>("last_boot_at")?.zip(r.try_get::<Option<String>, _>("last_boot")?),
        last_crash: r.try_get::<Option<i64>, _>("last_crash_at")?.zip(r.try_get::<Option<String>, _>("last_crash")?),
    })
}

macro_rules! device_columns {
    () => {
        "id, account_id, public_key, name, \
         (SELECT n.lease_until FROM gateway_nodes n WHERE n.id = devices.online_node) AS online_lease, last_seen, visor_version, app_name, app_version, boot_count, \
         last_boot_at, last_boot, last_crash_at, last_crash"
    };
}

/// Read connections beside SQLite's one writer.
const SQLITE_READERS: u32 = 4;

/// Page cache of each SQLite reader (negative: KiB).
const READER_CACHE: &str = "PRAGMA cache_size = -512";

impl Store {
    /// Opens (and migrates) the database at `url`: `sqlite://path?mode=rwc` or `postgres://...`.
    pub async fn open(url: &str) -> Result<Store, Error> {
        install_default_drivers();
        let max = if url.starts_with("sqlite:") { 1 } else { 8 };
        let pool = AnyPoolOptions::new().max_connections(max).connect(url).await?;
        if url.starts_with("sqlite:") {
            sqlx::query("PRAGMA journal_mode=WAL").execute(&pool).await?;
        }
        sqlx::migrate!("./migrations").run(&pool).await.map_err(|e| Error::Migrate(Box::new(e)))?;
        let reader = if url.starts_with("sqlite:") && !url.contains(":memory:") && !url.contains("mode=memory") {
            AnyPoolOptions::new()
                .max_connections(SQLITE_READERS)
                .after_connect(|c, _| {
                    Box::pin(async move {
                        // The readers' page caches are small: the kernel's file cache holds the
                        // database once for all of them (SQLite's default is 2 MiB each).
                        sqlx::query(READER_CACHE).execute(c).await.map(|_| ())
                    })
                })
                .connect(url)
                .await?
        } else {
            pool.clone()
        };
        let (new_logs, _) = broadcast::channel(1024);
        let (updates, _) = broadcast::channel(1024);
        let counters = Arc::new(Counters::default());
        let bus: Arc<dyn Bus> = Arc::new(LocalBus::default());
        let debug_relay = Arc::new(crate::debug_relay::DebugRelay::new(bus.clone(), counters.clone()));
        let live = Live {
            counters,
            debug_relay,
            online: Default::default(),
            next_generation: AtomicU64::new(1),
            deploy_epoch: AtomicU64::new(0),
            new_logs,
            bus,
            updates,
            group: Default::default(),
            channel_services: Default::default(),
        };
        Ok(Store {
            pool,
            reader,
            live: Arc::new(live),
            objects: Arc::new(InMemory::new()),
            settings: Default::default(),
        })
    }

    /// The same store with update layers kept in `objects` (e.g. `LocalFileSystem`, S3).
    pub fn with_object_store(mut self, objects: Arc<dyn ObjectStore>) -> Store {
        self.objects = objects;
        self
    }

    /// Where update layers are stored, content-addressed: `layers/<hex SHA-256>`.
    pub fn objects(&self) -> &Arc<dyn ObjectStore> {
        &self.objects
    }

    /// The bus that carries messages to device connections (deployment changes, session ends).
    pub fn bus(&self) -> &Arc<dyn Bus> {
        &self.live.bus
    }

    /// The services behind devices' app channels, started on first use (`None`, logged once,
    /// if they cannot start: channels are then refused).
    pub fn channel_services(&self) -> Option<Arc<crate::channels::Services>> {
        self.live
            .channel_services
            .get_or_init(|| match crate::channels::Services::from_env() {
                Ok(s) => Some(Arc::new(s)),
                Err(e) => {
                    tracing::error!("app channel services cannot start: {e}");
                    None
                }
            })
            .clone()
    }

    /// The services behind app channels if a channel has started them ([`Store::channel_services`]),
    /// without starting them.
    pub fn started_channel_services(&self) -> Option<Arc<crate::channels::Services>> {
        self.live.channel_services.get().cloned().flatten()
    }

    /// The remote debugging relay (debuggers attached to devices, frames both ways).
    pub fn debug_relay(&self) -> &Arc<crate::debug_relay::DebugRelay> {
        &self.live.debug_relay
    }

    /// Which gateway node holds which device (leases in this database).
    pub fn presence(&self) -> StorePresence {
        StorePresence(self.clone())
    }

    /// Subscribes to update status changes: receives the id of each device whose update status
    /// or events were stored.
    pub fn subscribe_updates(&self) -> broadcast::Receiver<String> {
        self.live.updates.subscribe()
    }

    /// Moves on after every deployment, once it is committed and before the devices' mailboxes
    /// hear of it. A connection that read "no deployment" with its handshake and subscribed to
    /// its mailbox afterwards can trust that read if this did not move in between: a deployment
    /// committed after the read moved it before the subscription, or its notification comes
    /// after the subscription.
    pub(crate) fn deploy_epoch(&self) -> u64 {
        self.live.deploy_epoch.load(Ordering::SeqCst)
    }

    pub(crate) fn deployments_committed(&self) {
        self.live.deploy_epoch.fetch_add(1, Ordering::SeqCst);
    }

    pub(crate) fn notify_deployment(&self, device_id: &str) {
        // Only that device's connections hear of it (none connected is not an error).
        self.live.bus.send(device_id, DeviceMessage::DeploymentChanged);
    }

    pub(crate) fn notify_update(&self, device_id: &str) {
        let _ = self.live.updates.send(device_id.to_string());
    }

    /// Records a new connection of `device_id` as its newest; returns its generation.
    pub fn claim_online(&self, device_id: &Arc<str>) -> u64 {
        let g = self.live.next_generation.fetch_add(1, Ordering::Relaxed);
        self.live.online.lock().unwrap_or_else(|e| e.into_inner()).insert(device_id.clone(), g);
        g
    }

    /// A connection of `device_id` ended: true if it was the newest (then the device is offline),
    /// false if a newer connection took over.
    pub fn release_online(&self, device_id: &str, generation: u64) -> bool {
        let mut online = self.live.online.lock().unwrap_or_else(|e| e.into_inner());
        if online.get(device_id) == Some(&generation) {
            online.remove(device_id);
            true
        } else {
            false
        }
    }

    /// The gateway's counters.
    pub fn counters(&self) -> &Counters {
        &self.live.counters
    }

    /// Subscribes to new log records: receives the device id each time records of that device
    /// were stored. A lagging receiver misses ids, so streams re-read the database after a lag.
    pub fn subscribe_logs(&self) -> broadcast::Receiver<String> {
        self.live.new_logs.subscribe()
    }

    /// Creates an account; returns its id.
    pub async fn create_account(&self, id: &str, name: &str) -> Result<(), Error> {
        sqlx::query("INSERT INTO accounts (id, name, created_at) VALUES ($1, $2, $3)")
            .bind(id)
            .bind(name)
            .bind(unix_us() as i64)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Creates a full-power (`admin`) API token for `account_id` that never expires and returns
    /// it. Only its hash is stored.
    pub async fn create_token(&self, account_id: &str, name: &str) -> Result<String, Error> {
        self.create_token_with(account_id, name, "admin", None).await
    }

    /// Creates an API token with a scope (`read`, `deploy`, `admin`) and an optional expiry (µs
    /// since the epoch) and returns it. Only its hash is stored.
    pub async fn create_token_with(
        &self,
        account_id: &str,
        name: &str,
        scope: &str,
        expires_at: Option<i64>,
    ) -> Result<String, Error> {
        let mut raw = [0u8; 32];
        getrandom::getrandom(&mut raw).map_err(|e| Error::Protocol(format!("no randomness: {e}")))?;
        let token = format!("keel_{}", hex(&raw));
        sqlx::query(
            "INSERT INTO api_tokens (token_hash, account_id, name, created_at, scope, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(token_hash(&token))
        .bind(account_id)
        .bind(name)
        .bind(unix_us() as i64)
        .bind(scope)
        .bind(expires_at)
        .execute(&self.pool)
        .await?;
        Ok(token)
    }

    /// What a token grants, if it is known and not expired. Records its last use (at most once a
    /// minute per token).
    pub async fn authenticate(&self, token: &str) -> Result<Option<TokenGrant>, Error> {
        let hash = token_hash(token);
        let row =
            sqlx::query("SELECT account_id, scope, expires_at, last_used_at FROM api_tokens WHERE token_hash = $1")
                .bind(&hash)
                .fetch_optional(&self.reader)
                .await?;
        let Some(row) = row else { return Ok(None) };
        let now = unix_us() as i64;
        let expires_at: Option<i64> = row.try_get("expires_at")?;
        if expires_at.is_some_and(|e| e <= now) {
            return Ok(None);
        }
        let last_used: Option<i64> = row.try_get("last_used_at")?;
        if last_used.is_none_or(|t| now - t >= LAST_USED_RESOLUTION_US) {
            sqlx::query("UPDATE api_tokens SET last_used_at = $1 WHERE token_hash = $2")
                .bind(now)
                .bind(&hash)
                .execute(&self.pool)
                .await?;
        }
        Ok(Some(TokenGrant {
            account_id: row.try_get("account_id")?,
            id: hash[..12].to_string(),
            scope: row.try_get("scope")?,
            expires_at,
        }))
    }

    /// The account a token belongs to, if the token is valid (known and not expired).
    pub async fn account_for_token(&self, token: &str) -> Result<Option<String>, Error> {
        Ok(self.authenticate(token).await?.map(|g| g.account_id))
    }

    /// The devices of an account, by id.
    pub async fn devices(&self, account_id: &str) -> Result<Vec<Device>, Error> {
        let q = concat!("SELECT ", device_columns!(), " FROM devices WHERE account_id = $1 ORDER BY id");
        let rows = sqlx::query(q).bind(account_id).fetch_all(&self.reader).await?;
        let mut devices: Vec<Device> = rows.iter().map(device_from_row).collect::<Result<_, _>>()?;
        let tags = sqlx::query(
            "SELECT t.device_id, t.tag FROM device_tags t JOIN devices d ON d.id = t.device_id \
             WHERE d.account_id = $1 ORDER BY t.device_id, t.tag",
        )
        .bind(account_id)
        .fetch_all(&self.reader)
        .await?;
        for t in &tags {
            let id: String = t.try_get("device_id")?;
            if let Ok(i) = devices.binary_search_by(|d| d.id.cmp(&id)) {
                devices[i].tags.push(t.try_get("tag")?);
            }
        }
        Ok(devices)
    }

    async fn with_tags(&self, d: Option<Device>) -> Result<Option<Device>, Error> {
        let Some(mut d) = d else { return Ok(None) };
        let rows = sqlx::query("SELECT tag FROM device_tags WHERE device_id = $1 ORDER BY tag")
            .bind(&d.id)
            .fetch_all(&self.reader)
            .await?;
        d.tags = rows.iter().map(|r| r.try_get("tag")).collect::<Result<_, _>>()?;
        Ok(Some(d))
    }

    /// Replaces a device's tags.
    pub async fn set_tags(&self, device_id: &str, tags: &[String]) -> Result<(), Error> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM device_tags WHERE device_id = $1").bind(device_id).execute(&mut *tx).await?;
        for t in tags {
            sqlx::query("INSERT INTO device_tags (device_id, tag) VALUES ($1, $2) ON CONFLICT DO NOTHING")
                .bind(device_id)
                .bind(t)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await
    }

    /// Renames a device.
    pub async fn rename_device(&self, device_id: &str, name: &str) -> Result<(), Error> {
        sqlx::query("UPDATE devices SET name = $1 WHERE id = $2")
            .bind(name)
            .bind(device_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Deletes a device with its tags and logs. Its key can no longer connect.
    pub async fn delete_device(&self, device_id: &str) -> Result<(), Error> {
        let mut tx = self.pool.begin().await?;
        for q in [
            "DELETE FROM update_events WHERE device_id = $1",
            "DELETE FROM device_updates WHERE device_id = $1",
            "DELETE FROM deployments WHERE device_id = $1",
            "DELETE FROM logs WHERE device_id = $1",
            "DELETE FROM crashes WHERE device_id = $1",
            "DELETE FROM device_events WHERE device_id = $1",
            "DELETE FROM device_tags WHERE device_id = $1",
            "DELETE FROM settings WHERE device_id = $1",
            "DELETE FROM devices WHERE id = $1",
        ] {
            sqlx::query(q).bind(device_id).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        // Its open session ends too (through the device's mailbox).
        self.live.bus.send(device_id, DeviceMessage::EndSession { reason: "device deleted" });
        Ok(())
    }

    /// Remembers a boot or crash event of a device (from its visor's events) for the registry.
    pub async fn note_event(&self, device_id: &str, at_us: u64, event: DeviceEvent<'_>) -> Result<(), Error> {
        Self::note_event_in(&mut *self.pool.acquire().await?, device_id, at_us, event).await
    }

    async fn note_event_in(
        c: &mut sqlx::AnyConnection,
        device_id: &str,
        at_us: u64,
        event: DeviceEvent<'_>,
    ) -> Result<(), Error> {
        let q = match event {
            DeviceEvent::Boot(_) => "UPDATE devices SET last_boot_at = $1, last_boot = $2 WHERE id = $3",
            DeviceEvent::Crash(_) => "UPDATE devices SET last_crash_at = $1, last_crash = $2 WHERE id = $3",
        };
        let (DeviceEvent::Boot(text) | DeviceEvent::Crash(text)) = event;
        sqlx::query(q).bind(at_us as i64).bind(text).bind(device_id).execute(c).await?;
        Ok(())
    }

    /// The tokens of an account.
    pub async fn tokens(&self, account_id: &str) -> Result<Vec<TokenInfo>, Error> {
        let rows = sqlx::query(
            "SELECT token_hash, name, created_at, scope, expires_at, last_used_at FROM api_tokens \
             WHERE account_id = $1 ORDER BY created_at, token_hash",
        )
        .bind(account_id)
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|r| {
                let hash: String = r.try_get("token_hash")?;
                Ok(TokenInfo {
                    id: hash[..12].to_string(),
                    name: r.try_get("name")?,
                    created_at: r.try_get("created_at")?,
                    scope: r.try_get("scope")?,
                    expires_at: r.try_get("expires_at")?,
                    last_used_at: r.try_get("last_used_at")?,
                })
            })
            .collect()
    }

    /// Revokes the account's token with this public id; returns whether one was revoked.
    pub async fn revoke_token(&self, account_id: &str, id: &str) -> Result<bool, Error> {
        if id.len() != 12 || !id.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
            return Ok(false);
        }
        let done = sqlx::query("DELETE FROM api_tokens WHERE account_id = $1 AND token_hash LIKE $2")
            .bind(account_id)
            .bind(format!("{id}%"))
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Deletes log records the server received before `cutoff_us` (µs since the epoch); returns
    /// how many were deleted.
    pub async fn prune_logs(&self, cutoff_us: u64) -> Result<u64, Error> {
        let done =
            sqlx::query("DELETE FROM logs WHERE received_at < $1").bind(cutoff_us as i64).execute(&self.pool).await?;
        Ok(done.rows_affected())
    }

    /// Counts for monitoring: (devices, devices online). Cheap enough for every scrape.
    pub async fn device_counts(&self) -> Result<(i64, i64), Error> {
        let row = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM devices) AS d, (SELECT COUNT(*) FROM devices v JOIN gateway_nodes n \
             ON n.id = v.online_node WHERE n.lease_until > $1) AS o",
        )
        .bind(unix_us() as i64)
        .fetch_one(&self.reader)
        .await?;
        Ok((row.try_get("d")?, row.try_get("o")?))
    }

    /// Counts: (devices, devices online, stored log records). Counting the logs reads the whole
    /// table: not for `/metrics` (see [`Store::device_counts`]).
    pub async fn counts(&self) -> Result<(i64, i64, i64), Error> {
        let row = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM devices) AS d, (SELECT COUNT(*) FROM devices v JOIN gateway_nodes n \
             ON n.id = v.online_node WHERE n.lease_until > $1) AS o, (SELECT COUNT(*) FROM logs) AS l",
        )
        .bind(unix_us() as i64)
        .fetch_one(&self.reader)
        .await?;
        Ok((row.try_get("d")?, row.try_get("o")?, row.try_get("l")?))
    }

    /// Registers a device with its static public key.
    pub async fn add_device(&self, account_id: &str, id: &str, public_key: &[u8; 32], name: &str) -> Result<(), Error> {
        sqlx::query("INSERT INTO devices (id, account_id, public_key, name, created_at) VALUES ($1, $2, $3, $4, $5)")
            .bind(id)
            .bind(account_id)
            .bind(hex(public_key))
            .bind(name)
            .bind(unix_us() as i64)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The device with this static public key, if registered.
    pub async fn device_by_key(&self, public_key: &[u8; 32]) -> Result<Option<Device>, Error> {
        let q = concat!("SELECT ", device_columns!(), " FROM devices WHERE public_key = $1");
        let row = sqlx::query(q).bind(hex(public_key)).fetch_optional(&self.reader).await?;
        let d = row.as_ref().map(device_from_row).transpose()?;
        self.with_tags(d).await
    }

    /// The id of the device with this static public key, if registered: one indexed lookup (what
    /// the gateway needs before a handshake completes).
    pub async fn device_id_by_key(&self, public_key: &[u8; 32]) -> Result<Option<String>, Error> {
        let row = sqlx::query("SELECT id FROM devices WHERE public_key = $1")
            .bind(hex(public_key))
            .fetch_optional(&self.reader)
            .await?;
        row.map(|r| r.try_get("id")).transpose()
    }

    /// What a handshake needs to know of the device with `public_key` (one indexed query): see
    /// [`HandshakeLookup`]. Log delivery resumes below the device's own `next_log_seq`.
    pub async fn device_for_handshake(
        &self,
        public_key: &[u8; 32],
        next_log_seq: u64,
    ) -> Result<Option<HandshakeLookup>, Error> {
        let next = next_log_seq.min(i64::MAX as u64) as i64;
        let row = sqlx::query(
            "SELECT d.id AS id, MAX(CASE WHEN l.seq < $2 THEN l.seq END) AS r, MAX(l.seq) AS m, \
             (SELECT COUNT(*) FROM deployments t WHERE t.device_id = d.id) AS t FROM devices d \
             LEFT JOIN logs l ON l.device_id = d.id AND l.kind <> 2 WHERE d.public_key = $1 GROUP BY d.id",
        )
        .bind(hex(public_key))
        .bind(next)
        .fetch_optional(&self.reader)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let resume = row.try_get::<Option<i64>, _>("r")?.map(|v| v as u64);
        let max = row.try_get::<Option<i64>, _>("m")?.map(|v| v as u64);
        Ok(Some(HandshakeLookup {
            id: row.try_get("id")?,
            log_acked: resume,
            log_above: max.filter(|&m| m >= next as u64),
            deployed: row.try_get::<i64, _>("t")? > 0,
        }))
    }

    /// A device by id.
    pub async fn device(&self, id: &str) -> Result<Option<Device>, Error> {
        let q = concat!("SELECT ", device_columns!(), " FROM devices WHERE id = $1");
        let row = sqlx::query(q).bind(id).fetch_optional(&self.reader).await?;
        let d = row.as_ref().map(device_from_row).transpose()?;
        self.with_tags(d).await
    }

    /// Starts a gateway node named `name` with a presence lease of `lease`: ends the presence of
    /// every device of a previous run with the same name (it crashed or was killed); returns the
    /// new run's node id (for [`Store::device_online`] and [`Store::renew_node`]).
    pub async fn start_node(&self, name: &str, lease: std::time::Duration) -> Result<String, Error> {
        let mut raw = [0u8; 8];
        getrandom::getrandom(&mut raw).map_err(|e| Error::Protocol(format!("no randomness: {e}")))?;
        let id = format!("{name}/{}", hex(&raw));
        let now = unix_us() as i64;
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE devices SET online_node = NULL, online_session = NULL, last_seen = $1 \
             WHERE online_node IN (SELECT id FROM gateway_nodes WHERE name = $2)",
        )
        .bind(now)
        .bind(name)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM gateway_nodes WHERE name = $1").bind(name).execute(&mut *tx).await?;
        sqlx::query("INSERT INTO gateway_nodes (id, name, started_at, lease_until) VALUES ($1, $2, $3, $4)")
            .bind(&id)
            .bind(name)
            .bind(now)
            .bind(now.saturating_add(lease.as_micros() as i64))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(id)
    }

    /// Extends node `id`'s lease to `lease` from now; false if the node is gone (a newer run of
    /// the same name started, or it was stopped).
    pub async fn renew_node(&self, id: &str, lease: std::time::Duration) -> Result<bool, Error> {
        let until = (unix_us() as i64).saturating_add(lease.as_micros() as i64);
        let done = sqlx::query("UPDATE gateway_nodes SET lease_until = $1 WHERE id = $2")
            .bind(until)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Node `id` stops: every device it still shows online is offline, and the node is gone.
    pub async fn stop_node(&self, id: &str) -> Result<(), Error> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE devices SET online_node = NULL, online_session = NULL, last_seen = $1 WHERE online_node = $2",
        )
        .bind(unix_us() as i64)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM gateway_nodes WHERE id = $1").bind(id).execute(&mut *tx).await?;
        tx.commit().await
    }

    /// Records a hello: the device is online on node `node` (see [`Store::start_node`]) through
    /// the connection `session` (unique within the node), with its versions and boot count.
    #[allow(clippy::too_many_arguments)]
    pub async fn device_online(
        &self,
        id: &str,
        visor_version: &str,
        app: Option<(&str, &str)>,
        boot_count: u32,
        node: &str,
        session: u64,
    ) -> Result<(), Error> {
        self.write(Write::Online {
            id: id.into(),
            visor_version: visor_version.into(),
            app: app.map(|(a, b)| (a.into(), b.into())),
            boot_count,
            node: node.into(),
            session,
        })
        .await?;
        Ok(())
    }

    /// Group commit of gateway writes: the write is queued; one committer task (started by the
    /// write that finds none running) takes the writer connection and commits every write
    /// queued by then in one transaction (on SQLite one WAL sync for many connections' writes
    /// instead of one each), and again until the queue is empty. Returns once this write
    /// committed (a log batch is acknowledged only after that). A waiting caller holds nothing
    /// but its answer's channel, so a fleet connecting at once queues cheaply; a caller that is
    /// dropped meanwhile never abandons the writes of others.
    pub(crate) async fn write(&self, w: Write) -> Result<u64, Error> {
        let (reply, done) = tokio::sync::oneshot::channel();
        let start = {
            let mut g = self.live.group.lock().unwrap_or_else(|e| e.into_inner());
            g.jobs.push((w, reply));
            !std::mem::replace(&mut g.committing, true)
        };
        if start {
            tokio::spawn(self.clone().commit_queued());
        }
        done.await.unwrap_or(Err(Error::WorkerCrashed))
    }

    /// The committer task of [`Store::write`].
    async fn commit_queued(self) {
        // A panic in a write must not leave the queue without a committer for good (every
        // later write would wait forever): the writes it held get an error (their answer's
        // channel is dropped) and a new committer takes the rest.
        struct Restart<'a>(&'a Store);
        impl Drop for Restart<'_> {
            fn drop(&mut self) {
                if std::thread::panicking() {
                    let mut g = self.0.live.group.lock().unwrap_or_else(|e| e.into_inner());
                    g.committing = !g.jobs.is_empty();
                    if g.committing {
                        tokio::spawn(self.0.clone().commit_queued());
                    }
                }
            }
        }
        let _restart = Restart(&self);
        let take = || {
            let mut g = self.live.group.lock().unwrap_or_else(|e| e.into_inner());
            let jobs = std::mem::take(&mut g.jobs);
            if jobs.is_empty() {
                g.committing = false;
            }
            jobs
        };
        loop {
            let c = self.pool.acquire().await;
            let jobs = take();
            if jobs.is_empty() {
                return;
            }
            match c {
                Ok(c) => commit_group(c, jobs).await,
                Err(e) => {
                    let text = e.to_string();
                    for (_, reply) in jobs {
                        let _ = reply.send(Err(Error::Protocol(format!("no database connection: {text}"))));
                    }
                }
            }
        }
    }

    /// Marks a device offline if connection `session` of node `node` is still the one that
    /// marked it online (a newer connection, on any node, keeps it online). Returns whether it did.
    pub async fn device_offline(&self, id: &str, node: &str, session: u64) -> Result<bool, Error> {
        let done = sqlx::query(
            "UPDATE devices SET online_node = NULL, online_session = NULL, last_seen = $1 \
             WHERE id = $2 AND online_node = $3 AND online_session = $4",
        )
        .bind(unix_us() as i64)
        .bind(id)
        .bind(node)
        .bind(session as i64)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Where a device's log delivery resumes: the highest stored sequence number of its own
    /// records (server notes excluded) below `next_log_seq`, the number the device will give its
    /// next record (from its `Hello`); and the highest stored one of all, if that is at or above
    /// `next_log_seq` (the device's sequence went back: a reset boot counter, a reflash, or one
    /// bogus number, which must not make the device discard its new records).
    pub async fn resume_point(&self, device_id: &str, next_log_seq: u64) -> Result<(Option<u64>, Option<u64>), Error> {
        let next = next_log_seq.min(i64::MAX as u64) as i64;
        let row = sqlx::query(
            "SELECT MAX(CASE WHEN seq < $2 THEN seq END) AS r, MAX(seq) AS m FROM logs \
             WHERE device_id = $1 AND kind <> 2",
        )
        .bind(device_id)
        .bind(next)
        .fetch_one(&self.reader)
        .await?;
        let resume = row.try_get::<Option<i64>, _>("r")?.map(|v| v as u64);
        let max = row.try_get::<Option<i64>, _>("m")?.map(|v| v as u64);
        Ok((resume, max.filter(|&m| m >= next as u64)))
    }

    /// Records a server event about a device, unless the same one (kind and text) is recorded
    /// already.
    pub async fn note_server_event(&self, device_id: &str, kind: &str, text: &str) -> Result<(), Error> {
        sqlx::query(
            "INSERT INTO device_events (device_id, at, kind, text) SELECT $1, $2, $3, $4 \
             WHERE NOT EXISTS (SELECT 1 FROM device_events WHERE device_id = $1 AND kind = $3 AND text = $4)",
        )
        .bind(device_id)
        .bind(unix_us() as i64)
        .bind(kind)
        .bind(text)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The newest `limit` server events of a device, oldest first.
    pub async fn device_events(&self, device_id: &str, limit: u32) -> Result<Vec<ServerEvent>, Error> {
        let rows =
            sqlx::query("SELECT at, kind, text FROM device_events WHERE device_id = $1 ORDER BY at DESC LIMIT $2")
                .bind(device_id)
                .bind(limit as i64)
                .fetch_all(&self.reader)
                .await?;
        let mut events = rows
            .iter()
            .map(|r| Ok(ServerEvent { at: r.try_get("at")?, kind: r.try_get("kind")?, text: r.try_get("text")? }))
            .collect::<Result<Vec<_>, Error>>()?;
        events.reverse();
        Ok(events)
    }

    /// Highest stored sequence number of a device.
    pub async fn max_seq(&self, device_id: &str) -> Result<Option<u64>, Error> {
        let row = sqlx::query("SELECT MAX(seq) AS m FROM logs WHERE device_id = $1")
            .bind(device_id)
            .fetch_one(&self.reader)
            .await?;
        Ok(row.try_get::<Option<i64>, _>("m")?.map(|v| v as u64))
    }

    /// Stores a record; a sequence number already stored is ignored (at-least-once delivery).
    /// Returns whether it was new.
    pub async fn insert_log(&self, device_id: &str, r: &LogRecord) -> Result<bool, Error> {
        Ok(self.insert_logs(device_id, core::slice::from_ref(r)).await? == 1)
    }

    /// Stores records in one transaction; sequence numbers already stored are ignored. Returns
    /// how many were new. Live log streams of the device are woken once.
    pub async fn insert_logs(&self, device_id: &str, records: &[LogRecord]) -> Result<u64, Error> {
        self.insert_logs_noting(device_id, records, &[]).await
    }

    /// [`Store::insert_logs`], and the boot and crash events the records carry noted for the
    /// registry (as [`Store::note_event`]) in the same transaction: one commit for both.
    pub async fn insert_logs_noting(
        &self,
        device_id: &str,
        records: &[LogRecord],
        events: &[(u64, DeviceEvent<'_>)],
    ) -> Result<u64, Error> {
        self.insert_logs_with_crashes(device_id, records, events, &[]).await
    }

    /// [`Store::insert_logs_noting`], and the crash dump parts the records carry (see
    /// [`crate::crash`]) in the same transaction. A part applies only if its record (same
    /// sequence number) is among `records` and was not stored before.
    pub async fn insert_logs_with_crashes(
        &self,
        device_id: &str,
        records: &[LogRecord],
        events: &[(u64, DeviceEvent<'_>)],
        crashes: &[CrashPart],
    ) -> Result<u64, Error> {
        if records.is_empty() && events.is_empty() {
            return Ok(0);
        }
        let events = events
            .iter()
            .map(|&(at, e)| match e {
                DeviceEvent::Boot(t) => (at, false, t.to_string()),
                DeviceEvent::Crash(t) => (at, true, t.to_string()),
            })
            .collect();
        let crashes = crashes.to_vec();
        let new =
            self.write(Write::Logs { device: device_id.into(), records: records.to_vec(), events, crashes }).await?;
        if new > 0 {
            // No receiver (no live stream) is not an error.
            let _ = self.live.new_logs.send(device_id.to_string());
        }
        Ok(new)
    }

    async fn insert_one(c: &mut sqlx::AnyConnection, device_id: &str, r: &LogRecord) -> Result<u64, Error> {
        let done = sqlx::query(
            "INSERT INTO logs (device_id, seq, kind, level, device_time_us, received_at, text) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (device_id, seq) DO NOTHING",
        )
        .bind(device_id)
        .bind(r.seq as i64)
        .bind(r.kind as i64)
        .bind(r.level as i64)
        .bind(r.device_time_us as i64)
        .bind(r.received_at as i64)
        .bind(&r.text)
        .execute(c)
        .await?;
        Ok(done.rows_affected())
    }

    /// Records of a device with sequence numbers above `after`, in order.
    pub async fn logs(&self, device_id: &str, after: Option<u64>, limit: u32) -> Result<Vec<LogRecord>, Error> {
        let rows = sqlx::query(
            "SELECT seq, kind, level, device_time_us, received_at, text FROM logs \
             WHERE device_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        )
        .bind(device_id)
        .bind(after.map_or(-1, |a| a as i64))
        .bind(limit as i64)
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(LogRecord {
                    seq: r.try_get::<i64, _>("seq")? as u64,
                    kind: r.try_get::<i64, _>("kind")? as u8,
                    level: r.try_get::<i64, _>("level")? as u8,
                    device_time_us: r.try_get::<i64, _>("device_time_us")? as u64,
                    received_at: r.try_get::<i64, _>("received_at")? as u64,
                    text: r.try_get("text")?,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(seq: u64) -> LogRecord {
        LogRecord { seq, kind: 0, level: 2, device_time_us: 1, received_at: 2, text: format!("line {seq}") }
    }

    /// Writes queued together commit in one transaction; one that fails (a record of a device
    /// that does not exist) fails alone and the others are stored.
    #[tokio::test]
    async fn a_failing_write_fails_alone_in_its_group() {
        let store = Store::open("sqlite::memory:").await.unwrap();
        store.create_account("a", "A").await.unwrap();
        store.add_device("a", "kd01", &[1; 32], "one").await.unwrap();
        // Hold SQLite's one writer connection so that the writes below queue into one group.
        let held = store.pool.acquire().await.unwrap();
        let (s1, s2, s3) = (store.clone(), store.clone(), store.clone());
        let good = tokio::spawn(async move { s1.insert_logs("kd01", &[rec(1), rec(2)]).await });
        let bad = tokio::spawn(async move { s2.insert_logs("kd-none", &[rec(1)]).await });
        let more = tokio::spawn(async move { s3.insert_logs("kd01", &[rec(3)]).await });
        while store.live.group.lock().unwrap().jobs.len() < 3 {
            tokio::task::yield_now().await;
        }
        drop(held);
        assert_eq!(good.await.unwrap().unwrap(), 2);
        assert!(bad.await.unwrap().is_err(), "a record of an unknown device is refused");
        assert_eq!(more.await.unwrap().unwrap(), 1);
        let seqs: Vec<u64> = store.logs("kd01", None, 10).await.unwrap().iter().map(|r| r.seq).collect();
        assert_eq!(seqs, [1, 2, 3]);
    }
}
