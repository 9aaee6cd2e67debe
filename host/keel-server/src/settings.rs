//! Config values and secrets that apps fetch through their device's link, and the storage of
//! the destination policy ([`crate::policy`]).
//!
//! Two stores ([`StoreKind`]): `config`, readable and writable through the API, and `secret`,
//! write-only through the API (listed by key, scope, size and update time, never by value).
//! Each value is account-wide or belongs to one device of the account ([`Scope`]); a device
//! fetching a device-scoped key ([`Store::fetch_for_device`]) sees only its own values.
//!
//! Limits: a key is 1..=[`MAX_KEY_BYTES`] bytes of `A-Z a-z 0-9 . _ / -` whose `/`-separated
//! segments are not empty, `.` or `..` ([`valid_key`]); a value is at most [`MAX_VALUE_BYTES`]
//! bytes; an account holds at most [`MAX_KEYS_PER_STORE`] keys per store (both scopes counted).
//!
//! Secrets are encrypted at rest with XChaCha20-Poly1305 under the server's master key
//! ([`MasterKey`]: `KEEL_SECRETS_KEY`, else `secrets.key` in the data directory, made at first
//! start), a random 24-byte nonce per value, and associated data binding the account, scope,
//! device and key: a ciphertext copied to another row does not decrypt. Without a master key
//! ([`Store::open`] alone, as in tests) secrets cannot be stored or fetched; `Node::start` always
//! gives one.

use std::path::Path;
use std::sync::Arc;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use sqlx::Row;

use crate::policy::{self, Rule};
use crate::store::{Error, Store};
use crate::{hex, unhex, unix_us};

/// Longest key, in bytes.
pub const MAX_KEY_BYTES: usize = 128;
/// Largest value, in bytes.
pub const MAX_VALUE_BYTES: usize = 4096;
/// Keys an account may hold per store (account-wide and device-scoped together).
pub const MAX_KEYS_PER_STORE: usize = 512;
/// The environment variable holding the master key of secrets (64 hex digits).
pub const SECRETS_KEY_ENV: &str = "KEEL_SECRETS_KEY";
/// The master key's file in the data directory when [`SECRETS_KEY_ENV`] is unset.
pub const SECRETS_KEY_FILE: &str = "secrets.key";

/// Whose value it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// The whole account's.
    Account,
    /// One device's (the fetching device's own).
    Device,
}

impl Scope {
    /// `account` or `device`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Account => "account",
            Scope::Device => "device",
        }
    }
}

/// Which store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreKind {
    /// Config values: readable through the API.
    Config,
    /// Secrets: encrypted at rest, never returned by the API.
    Secret,
}

impl StoreKind {
    /// `config` or `secret` (as stored).
    pub fn as_str(self) -> &'static str {
        match self {
            StoreKind::Config => "config",
            StoreKind::Secret => "secret",
        }
    }
}

/// One value a device asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchItem {
    /// Account-wide, or the device's own.
    pub scope: Scope,
    /// Config or secret.
    pub store: StoreKind,
    /// The key.
    pub key: String,
}

/// What [`Store::fetch_for_device`] found for one [`FetchItem`].
#[derive(Clone, PartialEq, Eq)]
pub enum FetchOutcome {
    /// The value (a secret decrypted).
    Found(Vec<u8>),
    /// No such key.
    NotFound,
    /// The key is not a valid key ([`valid_key`]).
    Invalid,
}

impl std::fmt::Debug for FetchOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never a value (it may be a secret) in a log line.
        match self {
            FetchOutcome::Found(v) => write!(f, "Found({} bytes)", v.len()),
            FetchOutcome::NotFound => f.write_str("NotFound"),
            FetchOutcome::Invalid => f.write_str("Invalid"),
        }
    }
}

/// Whether `key` is a valid key: 1..=[`MAX_KEY_BYTES`] bytes of `A-Z a-z 0-9 . _ / -`, and its
/// `/`-separated segments are neither empty nor `.` or `..` (so a key is also a clean URL path).
pub fn valid_key(key: &str) -> bool {
    (1..=MAX_KEY_BYTES).contains(&key.len())
        && key.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'/' | b'-'))
        && key.split('/').all(|s| !s.is_empty() && s != "." && s != "..")
}

/// The master key of secrets (32 bytes). Its `Debug` never shows it.
#[derive(Clone)]
pub struct MasterKey([u8; 32]);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(…)")
    }
}

/// Where [`MasterKey::load`] found the key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeySource {
    /// `KEEL_SECRETS_KEY`.
    Env,
    /// `secrets.key` in the data directory, as it was.
    File,
    /// `secrets.key`, made now.
    Created,
}

impl MasterKey {
    /// A key of these bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> MasterKey {
        MasterKey(bytes)
    }

    /// A key of 64 hex digits (surrounding whitespace ignored).
    pub fn from_hex(s: &str) -> Result<MasterKey, String> {
        let bytes = unhex(s.trim())
            .filter(|b| b.len() == 32)
            .ok_or_else(|| "a secrets key is 64 hex digits (32 bytes), e.g. from `openssl rand -hex 32`".to_string())?;
        Ok(MasterKey(bytes.try_into().unwrap_or([0; 32])))
    }

    /// A new random key.
    pub fn generate() -> Result<MasterKey, String> {
        let mut k = [0u8; 32];
        getrandom::getrandom(&mut k).map_err(|e| format!("no randomness: {e}"))?;
        Ok(MasterKey(k))
    }

    /// The server's key: `KEEL_SECRETS_KEY` if it is set (64 hex digits), else the file
    /// `secrets.key` (64 hex digits) in `data_dir`, created at first use readable only by its
    /// owner (0600; written to a temporary file, then linked into place, so a concurrent start
    /// or a crash never leaves a partial key).
    pub fn load(data_dir: &Path) -> Result<(MasterKey, KeySource), String> {
        match std::env::var(SECRETS_KEY_ENV) {
            Ok(v) if !v.trim().is_empty() => {
                return MasterKey::from_hex(&v)
                    .map(|k| (k, KeySource::Env))
                    .map_err(|e| format!("{SECRETS_KEY_ENV}: {e}"));
            }
            Ok(_) | Err(std::env::VarError::NotPresent) => {}
            Err(e) => return Err(format!("{SECRETS_KEY_ENV}: {e}")),
        }
        let path = data_dir.join(SECRETS_KEY_FILE);
        let read = |path: &Path| -> Result<Option<MasterKey>, String> {
            match std::fs::read_to_string(path) {
                Ok(s) => MasterKey::from_hex(&s).map(Some).map_err(|e| format!("{}: {e}", path.display())),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(format!("cannot read {}: {e}", path.display())),
            }
        };
        if let Some(k) = read(&path)? {
            return Ok((k, KeySource::File));
        }
        let key = MasterKey::generate()?;
        let tmp = data_dir.join(format!("{SECRETS_KEY_FILE}.{}.tmp", std::process::id()));
        crate::node::write_private(&tmp, format!("{}\n", hex(&key.0)).as_bytes())?;
        let linked = std::fs::hard_link(&tmp, &path);
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => Ok((key, KeySource::Created)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let k = read(&path)?.ok_or_else(|| format!("{} vanished", path.display()))?;
                Ok((k, KeySource::File))
            }
            Err(e) => Err(format!("cannot create {}: {e}", path.display())),
        }
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(&self.0.into())
    }
}

/// The first byte of every stored ciphertext: the format (XChaCha20-Poly1305, 24-byte nonce).
const SEALED_V1: u8 = 1;

/// The associated data of a secret: what it belongs to, each part length-prefixed.
fn associated_data(account: &str, device: Option<&str>, key: &str) -> Vec<u8> {
    let scope = if device.is_some() { Scope::Device } else { Scope::Account };
    let mut ad = b"keel secret v1".to_vec();
    for part in [account, scope.as_str(), device.unwrap_or(""), key] {
        ad.extend_from_slice(&(part.len() as u32).to_be_bytes());
        ad.extend_from_slice(part.as_bytes());
    }
    ad
}

/// Encrypts a secret for its row: version, nonce, ciphertext and tag.
fn seal(k: &MasterKey, account: &str, device: Option<&str>, key: &str, plain: &[u8]) -> Result<Vec<u8>, Error> {
    let mut nonce = [0u8; 24];
    getrandom::getrandom(&mut nonce).map_err(|e| Error::Protocol(format!("no randomness: {e}")))?;
    let aad = associated_data(account, device, key);
    let ct = k
        .cipher()
        .encrypt(XNonce::from_slice(&nonce), Payload { msg: plain, aad: &aad })
        .map_err(|_| Error::Protocol("secret encryption failed".into()))?;
    let mut out = Vec::with_capacity(1 + 24 + ct.len());
    out.push(SEALED_V1);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    Ok(out)
}

/// Decrypts a row's secret; an error if it was not sealed for exactly this row (or under this key).
fn open(k: &MasterKey, account: &str, device: Option<&str>, key: &str, sealed: &[u8]) -> Result<Vec<u8>, Error> {
    let bad = || Error::Decode(format!("secret '{key}' does not decrypt (another secrets key, or a moved row)").into());
    if sealed.len() < 1 + 24 + 16 || sealed[0] != SEALED_V1 {
        return Err(bad());
    }
    let aad = associated_data(account, device, key);
    k.cipher().decrypt(XNonce::from_slice(&sealed[1..25]), Payload { msg: &sealed[25..], aad: &aad }).map_err(|_| bad())
}

/// What the store needs for settings beyond the database: the master key of secrets and the
/// operator's policy rules.
#[derive(Clone, Debug, Default)]
pub struct SettingsConfig {
    key: Option<MasterKey>,
    operator_rules: Vec<Rule>,
}

/// A stored value as listed.
#[derive(Clone, PartialEq, Eq)]
pub struct Entry {
    /// Config or secret.
    pub store: StoreKind,
    /// The key.
    pub key: String,
    /// The device it belongs to (`None`: account-wide).
    pub device_id: Option<String>,
    /// Its length in bytes.
    pub size: u64,
    /// Last set, µs since the epoch.
    pub updated_at: i64,
    /// The value of a config entry; always `None` for a secret.
    pub value: Option<Vec<u8>>,
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry")
            .field("store", &self.store)
            .field("key", &self.key)
            .field("device_id", &self.device_id)
            .field("size", &self.size)
            .finish()
    }
}

/// Why a write was refused (nothing was written).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The key is not valid ([`valid_key`]).
    BadKey,
    /// The value is over [`MAX_VALUE_BYTES`].
    TooLarge,
    /// The account holds [`MAX_KEYS_PER_STORE`] keys in this store (or
    /// [`policy::MAX_RULES_PER_ACCOUNT`] rules).
    TooMany,
    /// A secret, but the server has no master key.
    NoSecretsKey,
    /// A policy rule that does not parse (see [`policy::parse_rule`]).
    BadRule,
}

/// A stored destination rule with its creation time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredRule {
    /// The rule.
    pub rule: Rule,
    /// When it was added, µs since the epoch.
    pub created_at: i64,
}

fn entry_from_row(r: &sqlx::any::AnyRow, store: StoreKind) -> Result<Entry, Error> {
    let device: String = r.try_get("device_id")?;
    let value = match store {
        StoreKind::Config => {
            let v: String = r.try_get("value")?;
            Some(unhex(&v).ok_or_else(|| Error::Decode("stored config value is not hex".into()))?)
        }
        StoreKind::Secret => None,
    };
    Ok(Entry {
        store,
        key: r.try_get("skey")?,
        device_id: (!device.is_empty()).then_some(device),
        size: r.try_get::<i64, _>("size")? as u64,
        updated_at: r.try_get("updated_at")?,
        value,
    })
}

fn rule_id() -> Result<String, Error> {
    let mut raw = [0u8; 6];
    getrandom::getrandom(&mut raw).map_err(|e| Error::Protocol(format!("no randomness: {e}")))?;
    Ok(format!("pr-{}", hex(&raw)))
}

/// Takes the account's row lock for a count-then-insert, so concurrent writers of one account
/// cannot both pass the limit (PostgreSQL; SQLite has one writer). A non-key column: rows that
/// only reference the account (devices, crashes) are not held up.
async fn lock_account(c: &mut sqlx::AnyConnection, account: &str) -> Result<(), Error> {
    sqlx::query("UPDATE accounts SET name = name WHERE id = $1").bind(account).execute(c).await?;
    Ok(())
}

impl Store {
    /// The same store with this master key for secrets.
    pub fn with_secrets_key(mut self, key: MasterKey) -> Store {
        Arc::make_mut(&mut self.settings).key = Some(key);
        self
    }

    /// The same store with the operator's destination rules (`KEEL_POLICY_ALLOW`), appended to
    /// every account's rules by [`Store::destination_rules`].
    pub fn with_operator_rules(mut self, rules: Vec<Rule>) -> Store {
        Arc::make_mut(&mut self.settings).operator_rules = rules;
        self
    }

    /// Whether secrets can be stored and fetched (the store has a master key).
    pub fn has_secrets_key(&self) -> bool {
        self.settings.key.is_some()
    }

    /// The operator's destination rules.
    pub fn operator_rules(&self) -> &[Rule] {
        &self.settings.operator_rules
    }

    /// The account a device belongs to, if the device exists.
    pub async fn device_account(&self, device_id: &str) -> Result<Option<String>, Error> {
        let row = sqlx::query("SELECT account_id FROM devices WHERE id = $1")
            .bind(device_id)
            .fetch_optional(&self.reader)
            .await?;
        row.map(|r| r.try_get("account_id")).transpose()
    }

    /// Sets a value: account-wide (`device` `None`) or of one device of the account (the caller
    /// checked that the device is the account's). A secret is encrypted. `Ok(Err(_))`: refused,
    /// nothing written.
    pub async fn set_setting(
        &self,
        account: &str,
        device: Option<&str>,
        store: StoreKind,
        key: &str,
        value: &[u8],
    ) -> Result<Result<Entry, Refusal>, Error> {
        if !valid_key(key) {
            return Ok(Err(Refusal::BadKey));
        }
        if value.len() > MAX_VALUE_BYTES {
            return Ok(Err(Refusal::TooLarge));
        }
        let stored = match store {
            StoreKind::Config => hex(value),
            StoreKind::Secret => {
                let Some(k) = &self.settings.key else { return Ok(Err(Refusal::NoSecretsKey)) };
                hex(&seal(k, account, device, key, value)?)
            }
        };
        let device_col = device.unwrap_or("");
        let now = unix_us() as i64;
        let mut tx = self.pool.begin().await?;
        lock_account(&mut tx, account).await?;
        let exists = sqlx::query(
            "SELECT 1 AS x FROM settings WHERE account_id = $1 AND store = $2 AND device_id = $3 AND skey = $4",
        )
        .bind(account)
        .bind(store.as_str())
        .bind(device_col)
        .bind(key)
        .fetch_optional(&mut *tx)
        .await?
        .is_some();
        if !exists {
            let n: i64 = sqlx::query("SELECT COUNT(*) AS n FROM settings WHERE account_id = $1 AND store = $2")
                .bind(account)
                .bind(store.as_str())
                .fetch_one(&mut *tx)
                .await?
                .try_get("n")?;
            if n as usize >= MAX_KEYS_PER_STORE {
                return Ok(Err(Refusal::TooMany));
            }
        }
        sqlx::query(
            "INSERT INTO settings (account_id, store, device_id, skey, value, size, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (account_id, store, device_id, skey) \
             DO UPDATE SET value = excluded.value, size = excluded.size, updated_at = excluded.updated_at",
        )
        .bind(account)
        .bind(store.as_str())
        .bind(device_col)
        .bind(key)
        .bind(stored)
        .bind(value.len() as i64)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Ok(Entry {
            store,
            key: key.to_string(),
            device_id: device.map(String::from),
            size: value.len() as u64,
            updated_at: now,
            value: (store == StoreKind::Config).then(|| value.to_vec()),
        }))
    }

    /// The values of one scope of a store, by key (secrets without their values).
    pub async fn settings(&self, account: &str, device: Option<&str>, store: StoreKind) -> Result<Vec<Entry>, Error> {
        let rows = sqlx::query(
            "SELECT skey, device_id, value, size, updated_at FROM settings \
             WHERE account_id = $1 AND store = $2 AND device_id = $3 ORDER BY skey",
        )
        .bind(account)
        .bind(store.as_str())
        .bind(device.unwrap_or(""))
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(|r| entry_from_row(r, store)).collect()
    }

    /// One entry (a secret without its value); `None` if there is none (or the key is invalid).
    pub async fn setting(
        &self,
        account: &str,
        device: Option<&str>,
        store: StoreKind,
        key: &str,
    ) -> Result<Option<Entry>, Error> {
        if !valid_key(key) {
            return Ok(None);
        }
        let row = sqlx::query(
            "SELECT skey, device_id, value, size, updated_at FROM settings \
             WHERE account_id = $1 AND store = $2 AND device_id = $3 AND skey = $4",
        )
        .bind(account)
        .bind(store.as_str())
        .bind(device.unwrap_or(""))
        .bind(key)
        .fetch_optional(&self.reader)
        .await?;
        row.as_ref().map(|r| entry_from_row(r, store)).transpose()
    }

    /// Deletes a value; returns whether there was one.
    pub async fn delete_setting(
        &self,
        account: &str,
        device: Option<&str>,
        store: StoreKind,
        key: &str,
    ) -> Result<bool, Error> {
        let done =
            sqlx::query("DELETE FROM settings WHERE account_id = $1 AND store = $2 AND device_id = $3 AND skey = $4")
                .bind(account)
                .bind(store.as_str())
                .bind(device.unwrap_or(""))
                .bind(key)
                .execute(&self.pool)
                .await?;
        Ok(done.rows_affected() > 0)
    }

    /// A value for the server's own use (e.g. an MQTT broker profile `mqtt/<profile>/...`): a
    /// config value as stored, a secret decrypted. `None` if there is none or the key is invalid.
    /// A secret without a master key, or one that does not decrypt, is an error.
    pub async fn value(
        &self,
        account: &str,
        device: Option<&str>,
        store: StoreKind,
        key: &str,
    ) -> Result<Option<Vec<u8>>, Error> {
        if !valid_key(key) {
            return Ok(None);
        }
        let row = sqlx::query(
            "SELECT value FROM settings WHERE account_id = $1 AND store = $2 AND device_id = $3 AND skey = $4",
        )
        .bind(account)
        .bind(store.as_str())
        .bind(device.unwrap_or(""))
        .bind(key)
        .fetch_optional(&self.reader)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let stored: String = row.try_get("value")?;
        let bytes = unhex(&stored).ok_or_else(|| Error::Decode("stored value is not hex".into()))?;
        match store {
            StoreKind::Config => Ok(Some(bytes)),
            StoreKind::Secret => {
                let k = self.settings.key.as_ref().ok_or_else(|| {
                    Error::Protocol(format!("no secrets key ({SECRETS_KEY_ENV} or {SECRETS_KEY_FILE})"))
                })?;
                open(k, account, device, key, &bytes).map(Some)
            }
        }
    }

    /// The values a device asks for, in order: account-wide values of its account, or its own
    /// device-scoped values (never another device's); secrets decrypted. An invalid key is
    /// [`FetchOutcome::Invalid`]. An unknown device is `Err(RowNotFound)`; a secret that cannot
    /// be decrypted (no master key, a moved or damaged row) is an error too.
    pub async fn fetch_for_device(&self, device_id: &str, items: &[FetchItem]) -> Result<Vec<FetchOutcome>, Error> {
        let account = self.device_account(device_id).await?.ok_or(Error::RowNotFound)?;
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            if !valid_key(&item.key) {
                out.push(FetchOutcome::Invalid);
                continue;
            }
            let device = match item.scope {
                Scope::Account => None,
                Scope::Device => Some(device_id),
            };
            out.push(match self.value(&account, device, item.store, &item.key).await? {
                Some(v) => FetchOutcome::Found(v),
                None => FetchOutcome::NotFound,
            });
        }
        Ok(out)
    }

    /// The account's destination rules as stored, in evaluation order.
    pub async fn policy_rules(&self, account: &str) -> Result<Vec<StoredRule>, Error> {
        let rows = sqlx::query(
            "SELECT id, action, target, port, scheme, created_at FROM destination_rules \
             WHERE account_id = $1 ORDER BY position, id",
        )
        .bind(account)
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|r| {
                let id: String = r.try_get("id")?;
                let action: String = r.try_get("action")?;
                let target: String = r.try_get("target")?;
                let port: Option<i64> = r.try_get("port")?;
                let scheme: Option<String> = r.try_get("scheme")?;
                let port = port.map(|p| u16::try_from(p).unwrap_or(0));
                let rule = policy::parse_rule(&id, &action, &target, port, scheme.as_deref())
                    .map_err(|e| Error::Decode(format!("stored rule {id}: {e}").into()))?;
                Ok(StoredRule { rule, created_at: r.try_get("created_at")? })
            })
            .collect()
    }

    /// The rules [`policy::check`] takes for a device of `account_id`: the account's, in order,
    /// then the operator's (`KEEL_POLICY_ALLOW`).
    pub async fn destination_rules(&self, account_id: &str) -> Result<Vec<Rule>, Error> {
        let mut rules: Vec<Rule> = self.policy_rules(account_id).await?.into_iter().map(|r| r.rule).collect();
        rules.extend(self.settings.operator_rules.iter().cloned());
        Ok(rules)
    }

    /// Adds a rule to the account's policy: last, or first with `first`. `Ok(Err(_))`: refused
    /// (a rule that does not parse, or the account holds [`policy::MAX_RULES_PER_ACCOUNT`]).
    pub async fn add_policy_rule(
        &self,
        account: &str,
        action: &str,
        target: &str,
        port: Option<u16>,
        scheme: Option<&str>,
        first: bool,
    ) -> Result<Result<StoredRule, (Refusal, String)>, Error> {
        let rule = match policy::parse_rule(&rule_id()?, action, target, port, scheme) {
            Ok(r) => r,
            Err(e) => return Ok(Err((Refusal::BadRule, e))),
        };
        let now = unix_us() as i64;
        let mut tx = self.pool.begin().await?;
        lock_account(&mut tx, account).await?;
        let row = sqlx::query(
            "SELECT COUNT(*) AS n, MIN(position) AS lo, MAX(position) AS hi FROM destination_rules \
             WHERE account_id = $1",
        )
        .bind(account)
        .fetch_one(&mut *tx)
        .await?;
        let n: i64 = row.try_get("n")?;
        if n as usize >= policy::MAX_RULES_PER_ACCOUNT {
            return Ok(Err((
                Refusal::TooMany,
                format!("the account holds {} rules, the most; remove some first", policy::MAX_RULES_PER_ACCOUNT),
            )));
        }
        let (lo, hi): (Option<i64>, Option<i64>) = (row.try_get("lo")?, row.try_get("hi")?);
        let position = if first { lo.map_or(0, |p| p - 1) } else { hi.map_or(0, |p| p + 1) };
        sqlx::query(
            "INSERT INTO destination_rules (id, account_id, position, action, target, port, scheme, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&rule.id)
        .bind(account)
        .bind(position)
        .bind(rule.action.as_str())
        .bind(rule.target.to_string())
        .bind(rule.port.map(i64::from))
        .bind(rule.scheme.map(|s| s.as_str()))
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Ok(StoredRule { rule, created_at: now }))
    }

    /// Removes a rule of the account; returns whether there was one.
    pub async fn remove_policy_rule(&self, account: &str, id: &str) -> Result<bool, Error> {
        let done = sqlx::query("DELETE FROM destination_rules WHERE account_id = $1 AND id = $2")
            .bind(account)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        for ok in ["a", "mqtt/main/host", "A-b_c.d", "x.y/z-1", &"k".repeat(128)] {
            assert!(valid_key(ok), "{ok}");
        }
        for bad in
            ["", "a b", "a//b", "/a", "a/", "./a", "a/../b", "..", ".", "é", "a\0", "a?b", "a%2Fb", &"k".repeat(129)]
        {
            assert!(!valid_key(bad), "{bad:?}");
        }
    }

    #[test]
    fn a_secret_opens_only_in_its_own_row() {
        let k = MasterKey::from_bytes([7; 32]);
        let sealed = seal(&k, "acct", Some("kd1"), "mqtt/pw", b"hunter2").unwrap();
        assert!(!sealed.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(open(&k, "acct", Some("kd1"), "mqtt/pw", &sealed).unwrap(), b"hunter2");
        for (a, d, key) in [
            ("acct2", Some("kd1"), "mqtt/pw"),
            ("acct", Some("kd2"), "mqtt/pw"),
            ("acct", None, "mqtt/pw"),
            ("acct", Some("kd1"), "mqtt/pw2"),
        ] {
            assert!(open(&k, a, d, key, &sealed).is_err(), "{a} {d:?} {key}");
        }
        assert!(open(&MasterKey::from_bytes([8; 32]), "acct", Some("kd1"), "mqtt/pw", &sealed).is_err());
        let mut flipped = sealed.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(open(&k, "acct", Some("kd1"), "mqtt/pw", &flipped).is_err());
        assert!(open(&k, "acct", Some("kd1"), "mqtt/pw", &sealed[..20]).is_err());
        // Two seals of the same value differ (random nonce).
        assert_ne!(sealed, seal(&k, "acct", Some("kd1"), "mqtt/pw", b"hunter2").unwrap());
    }

    #[test]
    fn master_keys_parse_and_hide() {
        assert!(MasterKey::from_hex(&"ab".repeat(32)).is_ok());
        assert!(MasterKey::from_hex(&format!("{}\n", "AB".repeat(32))).is_ok());
        for bad in ["", "ab", &"ab".repeat(31), &"zz".repeat(32), &"ab".repeat(33)] {
            assert!(MasterKey::from_hex(bad).is_err(), "{bad}");
        }
        assert_eq!(format!("{:?}", MasterKey::from_bytes([1; 32])), "MasterKey(…)");
        assert_eq!(format!("{:?}", FetchOutcome::Found(b"secret".to_vec())), "Found(6 bytes)");
    }

    #[test]
    fn a_new_key_file_is_private_and_reused() {
        let dir = std::env::temp_dir().join(format!("keel-secrets-key-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // (KEEL_SECRETS_KEY is not set in the test environment.)
        if std::env::var_os(SECRETS_KEY_ENV).is_none() {
            let (a, src) = MasterKey::load(&dir).unwrap();
            assert_eq!(src, KeySource::Created);
            let (b, src) = MasterKey::load(&dir).unwrap();
            assert_eq!(src, KeySource::File);
            assert_eq!(a.0, b.0);
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let mode = std::fs::metadata(dir.join(SECRETS_KEY_FILE)).unwrap().permissions().mode();
                assert_eq!(mode & 0o777, 0o600);
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
