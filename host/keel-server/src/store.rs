//! Storage: one code path for SQLite (default, zero setup) and PostgreSQL (by URL).
//!
//! Queries use `$n` placeholders, which both databases accept, through sqlx's `Any` driver;
//! the migrations in `migrations/` are written in the SQL both understand.

use sqlx::any::{install_default_drivers, AnyPoolOptions};
use sqlx::{AnyPool, Row};

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
}

/// One stored log record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogRecord {
    /// Device sequence number.
    pub seq: u64,
    /// 0 app line, 1 visor event, 2 server note (e.g. "dropped N").
    pub kind: u8,
    /// Level.
    pub level: u8,
    /// Device monotonic time.
    pub device_time_us: u64,
    /// When the server stored it.
    pub received_at: u64,
    /// Text (lossy UTF-8).
    pub text: String,
}

/// The database.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
}

fn token_hash(token: &str) -> String {
    use sha2::{Digest, Sha256};
    hex(&Sha256::digest(token.as_bytes()))
}

fn device_from_row(r: &sqlx::any::AnyRow) -> Result<Device, Error> {
    let app_name: Option<String> = r.try_get("app_name")?;
    let app_version: Option<String> = r.try_get("app_version")?;
    Ok(Device {
        id: r.try_get("id")?,
        account_id: r.try_get("account_id")?,
        public_key: r.try_get("public_key")?,
        name: r.try_get("name")?,
        online: r.try_get::<i64, _>("online")? != 0,
        last_seen: r.try_get("last_seen")?,
        visor_version: r.try_get("visor_version")?,
        app: app_name.zip(app_version),
        boot_count: r.try_get("boot_count")?,
    })
}

macro_rules! device_columns {
    () => {
        "id, account_id, public_key, name, online, last_seen, visor_version, app_name, app_version, boot_count"
    };
}

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
        Ok(Store { pool })
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

    /// Creates an API token for `account_id` and returns it. Only its hash is stored.
    pub async fn create_token(&self, account_id: &str, name: &str) -> Result<String, Error> {
        let mut raw = [0u8; 32];
        getrandom::getrandom(&mut raw).map_err(|e| Error::Protocol(format!("no randomness: {e}")))?;
        let token = format!("keel_{}", hex(&raw));
        sqlx::query("INSERT INTO api_tokens (token_hash, account_id, name, created_at) VALUES ($1, $2, $3, $4)")
            .bind(token_hash(&token))
            .bind(account_id)
            .bind(name)
            .bind(unix_us() as i64)
            .execute(&self.pool)
            .await?;
        Ok(token)
    }

    /// The account a token belongs to, if the token is valid.
    pub async fn account_for_token(&self, token: &str) -> Result<Option<String>, Error> {
        let row = sqlx::query("SELECT account_id FROM api_tokens WHERE token_hash = $1")
            .bind(token_hash(token))
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| r.try_get("account_id")).transpose()
    }

    /// The devices of an account, by id.
    pub async fn devices(&self, account_id: &str) -> Result<Vec<Device>, Error> {
        let q = concat!("SELECT ", device_columns!(), " FROM devices WHERE account_id = $1 ORDER BY id");
        let rows = sqlx::query(q).bind(account_id).fetch_all(&self.pool).await?;
        rows.iter().map(device_from_row).collect()
    }

    /// Deletes log records the server received before `cutoff_us` (µs since the epoch); returns
    /// how many were deleted.
    pub async fn prune_logs(&self, cutoff_us: u64) -> Result<u64, Error> {
        let done =
            sqlx::query("DELETE FROM logs WHERE received_at < $1").bind(cutoff_us as i64).execute(&self.pool).await?;
        Ok(done.rows_affected())
    }

    /// Counts for monitoring: (devices, devices online, stored log records).
    pub async fn counts(&self) -> Result<(i64, i64, i64), Error> {
        let row = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM devices) AS d, (SELECT COUNT(*) FROM devices WHERE online = 1) AS o, \
             (SELECT COUNT(*) FROM logs) AS l",
        )
        .fetch_one(&self.pool)
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
        let row = sqlx::query(q).bind(hex(public_key)).fetch_optional(&self.pool).await?;
        row.as_ref().map(device_from_row).transpose()
    }

    /// A device by id.
    pub async fn device(&self, id: &str) -> Result<Option<Device>, Error> {
        let q = concat!("SELECT ", device_columns!(), " FROM devices WHERE id = $1");
        let row = sqlx::query(q).bind(id).fetch_optional(&self.pool).await?;
        row.as_ref().map(device_from_row).transpose()
    }

    /// Records a hello: online, versions, boot count.
    pub async fn device_online(
        &self,
        id: &str,
        visor_version: &str,
        app: Option<(&str, &str)>,
        boot_count: u32,
    ) -> Result<(), Error> {
        sqlx::query(
            "UPDATE devices SET online = 1, last_seen = $1, visor_version = $2, app_name = $3, app_version = $4, \
             boot_count = $5 WHERE id = $6",
        )
        .bind(unix_us() as i64)
        .bind(visor_version)
        .bind(app.map(|a| a.0))
        .bind(app.map(|a| a.1))
        .bind(boot_count as i64)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Marks a device offline.
    pub async fn device_offline(&self, id: &str) -> Result<(), Error> {
        sqlx::query("UPDATE devices SET online = 0, last_seen = $1 WHERE id = $2")
            .bind(unix_us() as i64)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Highest stored sequence number of a device.
    pub async fn max_seq(&self, device_id: &str) -> Result<Option<u64>, Error> {
        let row = sqlx::query("SELECT MAX(seq) AS m FROM logs WHERE device_id = $1")
            .bind(device_id)
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get::<Option<i64>, _>("m")?.map(|v| v as u64))
    }

    /// Stores a record; a sequence number already stored is ignored (at-least-once delivery).
    /// Returns whether it was new.
    pub async fn insert_log(&self, device_id: &str, r: &LogRecord) -> Result<bool, Error> {
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
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
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
        .fetch_all(&self.pool)
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
