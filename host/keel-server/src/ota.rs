//! Over-the-air updates in storage: signer keys, bundles and their layers, deployments (which
//! bundle each device should run) and what devices report about their updates.
//!
//! Layers are stored content-addressed in the object store ([`Store::objects`]) under
//! `layers/<hex SHA-256>`; the database keeps each bundle's envelope (without payloads) and the
//! layer table. Bundles are immutable once stored.

use object_store::path::Path as ObjectPath;
use object_store::{ObjectStoreExt, PutPayload};
use sqlx::Row;

use crate::store::{Error, Store};
use crate::{hex, unhex, unix_us};

/// A public key that may sign the account's bundles.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignerKey {
    /// Id (`sk-` + 12 hex digits).
    pub id: String,
    /// Owning account.
    pub account_id: String,
    /// Ed25519 public key, 64 hex digits.
    pub public_key: String,
    /// Name given when it was added.
    pub name: String,
    /// When it was added, µs since the epoch.
    pub created_at: i64,
    /// When it was revoked, if it was.
    pub revoked_at: Option<i64>,
}

/// One layer of a stored bundle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BundleLayer {
    /// Component index in manifest order (the `component` of `FetchLayer`).
    pub index: u8,
    /// Component id, e.g. `app`.
    pub component: String,
    /// Target kind (`app-slot`, ...).
    pub target: String,
    /// Size in bytes.
    pub size: u32,
    /// Hex SHA-256: the object key is `layers/<sha256>`.
    pub sha256: String,
}

/// A stored bundle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bundle {
    /// Id (`bn-` + 12 hex digits).
    pub id: String,
    /// Owning account.
    pub account_id: String,
    /// App name from the manifest's policies.
    pub app_name: String,
    /// App version from the manifest's policies.
    pub app_version: String,
    /// Manifest sequence number.
    pub sequence: u64,
    /// Hex SHA-256 of the manifest.
    pub manifest_digest: String,
    /// The envelope without payloads (what `UpdateOffer` carries).
    pub envelope: Vec<u8>,
    /// Sum of the layer sizes.
    pub total_size: u64,
    /// Upload time, µs since the epoch.
    pub uploaded_at: i64,
    /// The signer key that verified it.
    pub signer_key_id: String,
    /// Layers in manifest order.
    pub layers: Vec<BundleLayer>,
}

/// A device's target bundle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deployment {
    /// The bundle.
    pub bundle: Bundle,
    /// How the device was targeted: `device` or `tag:NAME`.
    pub via: String,
    /// When, µs since the epoch.
    pub deployed_at: i64,
}

/// [`Store::write_status_if_new`]: the status equals the stored one (nothing written).
pub(crate) const STATUS_SAME: u64 = 0;
/// Only progress or the installed sequence moved (written, no update event).
pub(crate) const STATUS_PROGRESS: u64 = 1;
/// State, sequence or reason changed (written, an update event unless over quota).
pub(crate) const STATUS_CHANGED: u64 = 2;

/// The last update status a device reported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpdateStatus {
    /// State name (`keel_link::msg::UpdateState::as_str`).
    pub state: String,
    /// The bundle sequence the status is about (0: none).
    pub sequence: u64,
    /// Sequence of the confirmed install (0: factory).
    pub installed: u64,
    /// Bytes downloaded.
    pub progress: u64,
    /// Total bytes.
    pub total: u64,
    /// Reason (refused, rolled back, error).
    pub reason: String,
    /// When it was reported, µs since the epoch.
    pub updated_at: i64,
}

/// One entry of a device's update history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpdateEvent {
    /// When, µs since the epoch.
    pub at: i64,
    /// A device state (`downloading`, `confirmed`, ...) or a server step (`deployed`, `offered`,
    /// `cancelled`).
    pub state: String,
    /// The bundle sequence concerned.
    pub sequence: u64,
    /// What happened.
    pub text: String,
}

/// A bundle to store: everything but the id and the upload time.
#[derive(Clone, Debug)]
pub struct NewBundle<'a> {
    /// Owning account.
    pub account_id: &'a str,
    /// App name.
    pub app_name: &'a str,
    /// App version.
    pub app_version: &'a str,
    /// Sequence number (1..=i64::MAX).
    pub sequence: u64,
    /// Manifest SHA-256.
    pub manifest_digest: [u8; 32],
    /// Envelope without payloads.
    pub envelope: &'a [u8],
    /// Verifying signer key id.
    pub signer_key_id: &'a str,
    /// Layers in manifest order: (component id, target name, bytes, sha256).
    pub layers: Vec<(&'a str, &'a str, &'a [u8], [u8; 32])>,
}

/// The object key of a layer with this hex SHA-256.
pub fn layer_key(sha256_hex: &str) -> ObjectPath {
    ObjectPath::from(format!("layers/{sha256_hex}"))
}

fn random_id(prefix: &str) -> Result<String, Error> {
    let mut raw = [0u8; 6];
    getrandom::getrandom(&mut raw).map_err(|e| Error::Protocol(format!("no randomness: {e}")))?;
    Ok(format!("{prefix}{}", hex(&raw)))
}

fn object_error(e: object_store::Error) -> Error {
    Error::Io(std::io::Error::other(e.to_string()))
}

fn signer_from_row(r: &sqlx::any::AnyRow) -> Result<SignerKey, Error> {
    Ok(SignerKey {
        id: r.try_get("id")?,
        account_id: r.try_get("account_id")?,
        public_key: r.try_get("public_key")?,
        name: r.try_get("name")?,
        created_at: r.try_get("created_at")?,
        revoked_at: r.try_get("revoked_at")?,
    })
}

macro_rules! bundle_columns {
    () => {
        "id, account_id, app_name, app_version, sequence, manifest_digest, envelope, total_size, uploaded_at, \
         signer_key_id"
    };
}

fn bundle_from_row(r: &sqlx::any::AnyRow) -> Result<Bundle, Error> {
    let envelope: String = r.try_get("envelope")?;
    Ok(Bundle {
        id: r.try_get("id")?,
        account_id: r.try_get("account_id")?,
        app_name: r.try_get("app_name")?,
        app_version: r.try_get("app_version")?,
        sequence: r.try_get::<i64, _>("sequence")? as u64,
        manifest_digest: r.try_get("manifest_digest")?,
        envelope: unhex(&envelope).ok_or_else(|| Error::Decode("stored envelope is not hex".into()))?,
        total_size: r.try_get::<i64, _>("total_size")? as u64,
        uploaded_at: r.try_get("uploaded_at")?,
        signer_key_id: r.try_get("signer_key_id")?,
        layers: Vec::new(),
    })
}

impl Store {
    /// Adds a signer key to an account; `None` if the account already has this key (revoked or
    /// not: a revoked key cannot come back).
    pub async fn add_signer_key(
        &self,
        account_id: &str,
        public_key: &[u8; 32],
        name: &str,
    ) -> Result<Option<SignerKey>, Error> {
        let exists = sqlx::query("SELECT id FROM signer_keys WHERE account_id = $1 AND public_key = $2")
            .bind(account_id)
            .bind(hex(public_key))
            .fetch_optional(&self.pool)
            .await?;
        if exists.is_some() {
            return Ok(None);
        }
        let key = SignerKey {
            id: random_id("sk-")?,
            account_id: account_id.into(),
            public_key: hex(public_key),
            name: name.into(),
            created_at: unix_us() as i64,
            revoked_at: None,
        };
        sqlx::query(
            "INSERT INTO signer_keys (id, account_id, public_key, name, created_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&key.id)
        .bind(&key.account_id)
        .bind(&key.public_key)
        .bind(&key.name)
        .bind(key.created_at)
        .execute(&self.pool)
        .await?;
        Ok(Some(key))
    }

    /// The account's signer keys (revoked ones too), oldest first.
    pub async fn signer_keys(&self, account_id: &str) -> Result<Vec<SignerKey>, Error> {
        let rows = sqlx::query(
            "SELECT id, account_id, public_key, name, created_at, revoked_at FROM signer_keys \
             WHERE account_id = $1 ORDER BY created_at, id",
        )
        .bind(account_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(signer_from_row).collect()
    }

    /// Revokes one of the account's signer keys; returns the key as it is now, `None` if the
    /// account has no key with this id. Revoking twice keeps the first time.
    pub async fn revoke_signer_key(&self, account_id: &str, id: &str) -> Result<Option<SignerKey>, Error> {
        sqlx::query("UPDATE signer_keys SET revoked_at = $1 WHERE account_id = $2 AND id = $3 AND revoked_at IS NULL")
            .bind(unix_us() as i64)
            .bind(account_id)
            .bind(id)
            .execute(&self.pool)
            .await?;
        let row = sqlx::query(
            "SELECT id, account_id, public_key, name, created_at, revoked_at FROM signer_keys \
             WHERE account_id = $1 AND id = $2",
        )
        .bind(account_id)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(signer_from_row).transpose()
    }

    /// The account's keys that may sign bundles now: (id, public key).
    pub async fn active_signer_keys(&self, account_id: &str) -> Result<Vec<(String, [u8; 32])>, Error> {
        let keys = self.signer_keys(account_id).await?;
        Ok(keys
            .into_iter()
            .filter(|k| k.revoked_at.is_none())
            .filter_map(|k| Some((k.id, unhex(&k.public_key)?.try_into().ok()?)))
            .collect())
    }

    /// The id of the account's bundle of `app_name` with this sequence number, if any.
    pub async fn bundle_with_sequence(
        &self,
        account_id: &str,
        app_name: &str,
        sequence: u64,
    ) -> Result<Option<String>, Error> {
        let row = sqlx::query("SELECT id FROM bundles WHERE account_id = $1 AND app_name = $2 AND sequence = $3")
            .bind(account_id)
            .bind(app_name)
            .bind(sequence as i64)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| r.try_get("id")).transpose()
    }

    /// The account's bundle with this sequence number, whatever its app: (id, app name). A
    /// device's anti-rollback counter covers every app, so a sequence is unique per account.
    pub async fn bundle_at_sequence(&self, account_id: &str, sequence: u64) -> Result<Option<(String, String)>, Error> {
        let row = sqlx::query("SELECT id, app_name FROM bundles WHERE account_id = $1 AND sequence = $2")
            .bind(account_id)
            .bind(sequence as i64)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| Ok((r.try_get("id")?, r.try_get("app_name")?))).transpose()
    }

    /// The highest sequence number of the account's bundles (0: none).
    pub async fn highest_sequence(&self, account_id: &str) -> Result<u64, Error> {
        let row = sqlx::query("SELECT MAX(sequence) AS m FROM bundles WHERE account_id = $1")
            .bind(account_id)
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get::<Option<i64>, _>("m")?.map_or(0, |m| m as u64))
    }

    /// Stores a verified bundle: its layers in the object store (content-addressed, so a layer
    /// already there is simply rewritten with the same bytes), then the rows in one transaction.
    pub async fn insert_bundle(&self, b: &NewBundle<'_>) -> Result<Bundle, Error> {
        for (_, _, bytes, digest) in &b.layers {
            let payload = PutPayload::from(bytes.to_vec());
            self.objects().put(&layer_key(&hex(digest)), payload).await.map_err(object_error)?;
        }
        let bundle = Bundle {
            id: random_id("bn-")?,
            account_id: b.account_id.into(),
            app_name: b.app_name.into(),
            app_version: b.app_version.into(),
            sequence: b.sequence,
            manifest_digest: hex(&b.manifest_digest),
            envelope: b.envelope.to_vec(),
            total_size: b.layers.iter().map(|l| l.2.len() as u64).sum(),
            uploaded_at: unix_us() as i64,
            signer_key_id: b.signer_key_id.into(),
            layers: b
                .layers
                .iter()
                .enumerate()
                .map(|(i, (component, target, bytes, digest))| BundleLayer {
                    index: i as u8,
                    component: component.to_string(),
                    target: target.to_string(),
                    size: bytes.len() as u32,
                    sha256: hex(digest),
                })
                .collect(),
        };
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO bundles (id, account_id, app_name, app_version, sequence, manifest_digest, envelope, \
             total_size, uploaded_at, signer_key_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(&bundle.id)
        .bind(&bundle.account_id)
        .bind(&bundle.app_name)
        .bind(&bundle.app_version)
        .bind(bundle.sequence as i64)
        .bind(&bundle.manifest_digest)
        .bind(hex(&bundle.envelope))
        .bind(bundle.total_size as i64)
        .bind(bundle.uploaded_at)
        .bind(&bundle.signer_key_id)
        .execute(&mut *tx)
        .await?;
        for l in &bundle.layers {
            sqlx::query(
                "INSERT INTO bundle_layers (bundle_id, idx, component, target, size, sha256) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(&bundle.id)
            .bind(l.index as i64)
            .bind(&l.component)
            .bind(&l.target)
            .bind(l.size as i64)
            .bind(&l.sha256)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(bundle)
    }

    async fn with_layers(&self, mut b: Bundle) -> Result<Bundle, Error> {
        let rows = sqlx::query(
            "SELECT idx, component, target, size, sha256 FROM bundle_layers WHERE bundle_id = $1 ORDER BY idx",
        )
        .bind(&b.id)
        .fetch_all(&self.pool)
        .await?;
        b.layers = rows
            .iter()
            .map(|r| {
                Ok(BundleLayer {
                    index: r.try_get::<i64, _>("idx")? as u8,
                    component: r.try_get("component")?,
                    target: r.try_get("target")?,
                    size: r.try_get::<i64, _>("size")? as u32,
                    sha256: r.try_get("sha256")?,
                })
            })
            .collect::<Result<_, Error>>()?;
        Ok(b)
    }

    /// A bundle by id (any account: callers check `account_id`).
    pub async fn bundle(&self, id: &str) -> Result<Option<Bundle>, Error> {
        let q = concat!("SELECT ", bundle_columns!(), " FROM bundles WHERE id = $1");
        let row = sqlx::query(q).bind(id).fetch_optional(&self.pool).await?;
        match row.as_ref().map(bundle_from_row).transpose()? {
            Some(b) => Ok(Some(self.with_layers(b).await?)),
            None => Ok(None),
        }
    }

    /// The account's bundles, newest upload first.
    pub async fn bundles(&self, account_id: &str) -> Result<Vec<Bundle>, Error> {
        let q =
            concat!("SELECT ", bundle_columns!(), " FROM bundles WHERE account_id = $1 ORDER BY uploaded_at DESC, id");
        let rows = sqlx::query(q).bind(account_id).fetch_all(&self.pool).await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            out.push(self.with_layers(bundle_from_row(r)?).await?);
        }
        Ok(out)
    }

    /// The account's bundle of `app_name` at `app_version` (the highest sequence if several).
    pub async fn bundle_by_version(
        &self,
        account_id: &str,
        app_name: &str,
        app_version: &str,
    ) -> Result<Option<Bundle>, Error> {
        let q = concat!(
            "SELECT ",
            bundle_columns!(),
            " FROM bundles WHERE account_id = $1 AND app_name = $2 AND app_version = $3 ORDER BY sequence DESC LIMIT 1"
        );
        let row = sqlx::query(q).bind(account_id).bind(app_name).bind(app_version).fetch_optional(&self.pool).await?;
        match row.as_ref().map(bundle_from_row).transpose()? {
            Some(b) => Ok(Some(self.with_layers(b).await?)),
            None => Ok(None),
        }
    }

    /// Makes `bundle_id` the target of each device (replacing any earlier target), notes it in
    /// each device's update history and tells connected devices' gateway tasks.
    pub async fn deploy(&self, bundle: &Bundle, device_ids: &[String], via: &str) -> Result<(), Error> {
        let now = unix_us() as i64;
        let mut tx = self.pool.begin().await?;
        for d in device_ids {
            sqlx::query(
                "INSERT INTO deployments (device_id, bundle_id, via, deployed_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (device_id) DO UPDATE SET bundle_id = $2, via = $3, deployed_at = $4",
            )
            .bind(d)
            .bind(&bundle.id)
            .bind(via)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            sqlx::query("INSERT INTO update_events (device_id, at, state, sequence, text) VALUES ($1, $2, $3, $4, $5)")
                .bind(d)
                .bind(now)
                .bind("deployed")
                .bind(bundle.sequence as i64)
                .bind(format!(
                    "target set to {} ({} {}, sequence {}) via {via}",
                    bundle.id, bundle.app_name, bundle.app_version, bundle.sequence
                ))
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        self.deployments_committed();
        for d in device_ids {
            self.notify_deployment(d);
            self.notify_update(d);
        }
        Ok(())
    }

    /// A device's target bundle, if it has one.
    pub async fn deployment(&self, device_id: &str) -> Result<Option<Deployment>, Error> {
        let row = sqlx::query("SELECT bundle_id, via, deployed_at FROM deployments WHERE device_id = $1")
            .bind(device_id)
            .fetch_optional(&self.reader)
            .await?;
        let Some(row) = row else { return Ok(None) };
        let bundle_id: String = row.try_get("bundle_id")?;
        let Some(bundle) = self.bundle(&bundle_id).await? else { return Ok(None) };
        Ok(Some(Deployment { bundle, via: row.try_get("via")?, deployed_at: row.try_get("deployed_at")? }))
    }

    /// Stores what a device reported. A change of state, sequence or reason (not mere progress)
    /// also adds an update event. Returns whether it was such a change.
    pub async fn set_update_status(&self, device_id: &str, s: &UpdateStatus) -> Result<bool, Error> {
        self.store_update_status(device_id, s, true).await
    }

    /// [`Store::set_update_status`], adding the update event only if `record_event` (a device over
    /// its update event quota). Returns whether it was a change.
    pub async fn store_update_status(
        &self,
        device_id: &str,
        s: &UpdateStatus,
        record_event: bool,
    ) -> Result<bool, Error> {
        // Joins the gateway's group commit (a fleet reporting at once, after a restart, is
        // written in a few transactions, not one each), which compares it with the stored status
        // in the same transaction: a device that reconnects and reports what it reported before
        // changes nothing.
        let done = self
            .write(crate::store::Write::Status { device: device_id.into(), status: s.clone(), record_event })
            .await?;
        if done != STATUS_SAME {
            self.notify_update(device_id);
        }
        Ok(done == STATUS_CHANGED)
    }

    /// Runs in the group commit's transaction (see [`Store::store_update_status`]): writes the
    /// status unless it equals the stored one; returns [`STATUS_SAME`], [`STATUS_PROGRESS`] or
    /// [`STATUS_CHANGED`].
    pub(crate) async fn write_status_if_new(
        c: &mut sqlx::AnyConnection,
        device_id: &str,
        s: &UpdateStatus,
        record_event: bool,
    ) -> Result<u64, Error> {
        let row = sqlx::query(
            "SELECT state, sequence, installed, progress, total, reason FROM device_updates WHERE device_id = $1",
        )
        .bind(device_id)
        .fetch_optional(&mut *c)
        .await?;
        let before = match row {
            Some(r) => Some((
                r.try_get::<String, _>("state")?,
                r.try_get::<i64, _>("sequence")? as u64,
                r.try_get::<i64, _>("installed")? as u64,
                r.try_get::<i64, _>("progress")? as u64,
                r.try_get::<i64, _>("total")? as u64,
                r.try_get::<String, _>("reason")?,
            )),
            None => None,
        };
        if before.as_ref().is_some_and(|b| {
            (&b.0, b.1, b.2, b.3, b.4, &b.5) == (&s.state, s.sequence, s.installed, s.progress, s.total, &s.reason)
        }) {
            return Ok(STATUS_SAME);
        }
        let changed = before.as_ref().is_none_or(|b| (&b.0, b.1, &b.5) != (&s.state, s.sequence, &s.reason));
        Store::write_update_status(c, device_id, s, changed && record_event, changed && s.state == "confirmed").await?;
        Ok(if changed { STATUS_CHANGED } else { STATUS_PROGRESS })
    }

    /// Adds a server note (`offered`, `cancelled`, ...) to a device's update history.
    pub async fn note_update_event(
        &self,
        device_id: &str,
        state: &str,
        sequence: u64,
        text: &str,
    ) -> Result<(), Error> {
        sqlx::query("INSERT INTO update_events (device_id, at, state, sequence, text) VALUES ($1, $2, $3, $4, $5)")
            .bind(device_id)
            .bind(unix_us() as i64)
            .bind(state)
            .bind(sequence as i64)
            .bind(text)
            .execute(&self.pool)
            .await?;
        self.notify_update(device_id);
        Ok(())
    }

    /// Writes a device's update status in `c`'s transaction: the row, the history entry when
    /// `event`, and the registry's app when `confirmed` (see [`Store::store_update_status`]).
    pub(crate) async fn write_update_status(
        c: &mut sqlx::AnyConnection,
        device_id: &str,
        s: &UpdateStatus,
        event: bool,
        confirmed: bool,
    ) -> Result<u64, Error> {
        let done = sqlx::query(
            "INSERT INTO device_updates (device_id, state, sequence, installed, progress, total, reason, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (device_id) DO UPDATE SET state = $2, \
             sequence = $3, installed = $4, progress = $5, total = $6, reason = $7, updated_at = $8",
        )
        .bind(device_id)
        .bind(&s.state)
        .bind(s.sequence as i64)
        .bind(s.installed as i64)
        .bind(s.progress as i64)
        .bind(s.total as i64)
        .bind(&s.reason)
        .bind(s.updated_at)
        .execute(&mut *c)
        .await?;
        if event {
            let text = if s.reason.is_empty() {
                format!("{} (installed {})", s.state, s.installed)
            } else {
                format!("{}: {} (installed {})", s.state, s.reason, s.installed)
            };
            sqlx::query("INSERT INTO update_events (device_id, at, state, sequence, text) VALUES ($1, $2, $3, $4, $5)")
                .bind(device_id)
                .bind(s.updated_at)
                .bind(&s.state)
                .bind(s.sequence as i64)
                .bind(text)
                .execute(&mut *c)
                .await?;
        }
        if confirmed {
            // The device now runs its target bundle's app: the registry shows it without
            // waiting for the next connection's hello.
            macro_rules! of_target {
                () => {
                    "FROM bundles b JOIN deployments d ON d.bundle_id = b.id WHERE d.device_id = $1 AND b.sequence = $2"
                };
            }
            let q = concat!(
                "UPDATE devices SET app_name = COALESCE((SELECT b.app_name ",
                of_target!(),
                "), app_name), app_version = COALESCE((SELECT b.app_version ",
                of_target!(),
                "), app_version) WHERE id = $1"
            );
            sqlx::query(q).bind(device_id).bind(s.sequence as i64).execute(&mut *c).await?;
        }
        Ok(done.rows_affected())
    }

    /// The last update status a device reported, if any.
    pub async fn update_status(&self, device_id: &str) -> Result<Option<UpdateStatus>, Error> {
        let row = sqlx::query(
            "SELECT state, sequence, installed, progress, total, reason, updated_at FROM device_updates \
             WHERE device_id = $1",
        )
        .bind(device_id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(UpdateStatus {
                state: r.try_get("state")?,
                sequence: r.try_get::<i64, _>("sequence")? as u64,
                installed: r.try_get::<i64, _>("installed")? as u64,
                progress: r.try_get::<i64, _>("progress")? as u64,
                total: r.try_get::<i64, _>("total")? as u64,
                reason: r.try_get("reason")?,
                updated_at: r.try_get("updated_at")?,
            })
        })
        .transpose()
    }

    /// A device's update history, oldest first (at most `limit` most recent entries).
    pub async fn update_events(&self, device_id: &str, limit: u32) -> Result<Vec<UpdateEvent>, Error> {
        let rows = sqlx::query(
            "SELECT at, state, sequence, text FROM update_events WHERE device_id = $1 ORDER BY at DESC LIMIT $2",
        )
        .bind(device_id)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        let mut events = rows
            .iter()
            .map(|r| {
                Ok(UpdateEvent {
                    at: r.try_get("at")?,
                    state: r.try_get("state")?,
                    sequence: r.try_get::<i64, _>("sequence")? as u64,
                    text: r.try_get("text")?,
                })
            })
            .collect::<Result<Vec<_>, Error>>()?;
        events.reverse();
        Ok(events)
    }

    /// Reads `[start, end)` of the layer with this hex SHA-256 from the object store.
    pub async fn read_layer(&self, sha256_hex: &str, start: u64, end: u64) -> Result<bytes::Bytes, Error> {
        self.objects().get_range(&layer_key(sha256_hex), start..end).await.map_err(object_error)
    }
}
