//! Backup and restore of a node's data directory: `keel server backup` and `keel server restore`.
//!
//! A backup directory holds `server.key` (the fleet's pinned identity: without it no device can
//! connect to a restored server), `secrets.key` if the data directory has one (the master key
//! of the stored secrets), `keel.db` (a consistent online copy of the SQLite database
//! made with `VACUUM INTO` while the server runs), `objects/` (the update layers) and
//! `manifest.json` (what is there, with sizes and SHA-256 digests that restore checks).
//!
//! The database is copied **before** the layers: a bundle is stored only after its layers are,
//! and layers are never changed or deleted, so every bundle in the copied database has its
//! layers in the copied `objects/`. With PostgreSQL the database is not copied (use `pg_dump`);
//! with an S3 object store the layers are not copied (use the bucket's own versioning or
//! replication).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::node::{create_data_dir, write_private};

/// Version of the backup format in `manifest.json`.
pub const FORMAT: u32 = 1;

/// `manifest.json` of a backup.
#[derive(Serialize, Deserialize, Debug)]
pub struct Manifest {
    /// [`FORMAT`].
    pub format: u32,
    /// Version of the keel server that made it.
    pub keel_version: String,
    /// When it was made, µs since the epoch.
    pub created_at_us: u64,
    /// The server's public key (hex), as devices pin it.
    pub server_public_key: String,
    /// `sqlite` (in `keel.db`) or `postgres` (not included: use `pg_dump`).
    pub database: String,
    /// Every file of the backup but the manifest: path relative to the backup, size, SHA-256.
    pub files: Vec<FileEntry>,
    /// What the backup does not hold and how to save it.
    pub notes: Vec<String>,
}

/// One file of a backup.
#[derive(Serialize, Deserialize, Debug)]
pub struct FileEntry {
    /// Path relative to the backup directory, `/`-separated.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256, hex.
    pub sha256: String,
}

/// Where a node keeps its data, as `keel server run` was given it.
pub struct Source<'a> {
    /// The data directory.
    pub data_dir: &'a Path,
    /// `--database`, if any (`None`: SQLite in the data directory).
    pub database_url: Option<&'a str>,
    /// The layers directory, or `None` if they are not in a local directory (S3).
    pub objects_dir: Option<PathBuf>,
}

/// Backs up `src` into `out` (which must not exist, or be empty). Safe while the server runs.
pub async fn backup(src: &Source<'_>, out: &Path) -> Result<Manifest, String> {
    ensure_empty(out)?;
    create_data_dir(out)?;
    let mut notes = Vec::new();
    let key_path = src.data_dir.join("server.key");
    let key = std::fs::read(&key_path).map_err(|e| format!("cannot read {}: {e}", key_path.display()))?;
    let secret: [u8; 32] =
        key.as_slice().try_into().map_err(|_| format!("{} is not a 32-byte key", key_path.display()))?;
    let public = x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(secret)).to_bytes();
    write_private(&out.join("server.key"), &key)?;
    // The secrets' master key (see `crate::settings`): without it the stored secrets are lost.
    let secrets_key = src.data_dir.join(crate::settings::SECRETS_KEY_FILE);
    match std::fs::read(&secrets_key) {
        Ok(k) => write_private(&out.join(crate::settings::SECRETS_KEY_FILE), &k)?,
        // A server that takes its key from the environment has no file: say so.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if std::env::var_os(crate::settings::SECRETS_KEY_ENV).is_some() {
                notes.push(format!(
                    "no {} in the data directory: if the server takes its secrets key from {}, keep that value with \
             this backup (without it the stored secrets cannot be decrypted)",
                    crate::settings::SECRETS_KEY_FILE,
                    crate::settings::SECRETS_KEY_ENV
                ))
            }
        }
        Err(e) => return Err(format!("cannot read {}: {e}", secrets_key.display())),
    }

    let url = crate::node::database_url(src.data_dir, src.database_url);
    let database = if url.starts_with("sqlite:") {
        sqlite_copy(&url, &out.join("keel.db")).await?;
        "sqlite"
    } else {
        notes.push(format!(
            "the PostgreSQL database is not in this backup: save it with `pg_dump --format=custom \
             --file=keel.pgdump '{}'` right after this backup (restore: `pg_restore --clean --dbname=URL \
             keel.pgdump`, then `keel server run --database URL`)",
            redact(&url)
        ));
        "postgres"
    };
    match &src.objects_dir {
        Some(dir) if dir.exists() => copy_tree(dir, &out.join("objects"))?,
        Some(_) => create_data_dir(&out.join("objects"))?,
        None => notes.push(
            "the update layers are in an S3 object store and not in this backup: keep them with the \
             bucket's versioning or replication"
                .into(),
        ),
    }
    let files = list_files(out)?;
    let manifest = Manifest {
        format: FORMAT,
        keel_version: env!("CARGO_PKG_VERSION").into(),
        created_at_us: crate::unix_us(),
        server_public_key: crate::hex(&public),
        database: database.into(),
        files,
        notes,
    };
    let text = serde_json::to_string_pretty(&manifest).map_err(|e| e.to_string())?;
    write_private(&out.join("manifest.json"), text.as_bytes())?;
    Ok(manifest)
}

/// Restores the backup in `from` into the data directory `data` (which must not exist, or be
/// empty), after checking every file against the manifest. Layers go to `data/objects`.
pub fn restore(from: &Path, data: &Path) -> Result<Manifest, String> {
    let mpath = from.join("manifest.json");
    let text = std::fs::read_to_string(&mpath).map_err(|e| format!("cannot read {}: {e}", mpath.display()))?;
    let manifest: Manifest = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", mpath.display()))?;
    if manifest.format != FORMAT {
        return Err(format!("{}: backup format {} (this keel reads {FORMAT})", mpath.display(), manifest.format));
    }
    for f in &manifest.files {
        let p = safe_join(from, &f.path)?;
        let (size, digest) = digest_file(&p)?;
        if size != f.size || digest != f.sha256 {
            return Err(format!("{}: does not match the backup's manifest (damaged or changed)", p.display()));
        }
    }
    ensure_empty(data)?;
    create_data_dir(data)?;
    for f in &manifest.files {
        let src = safe_join(from, &f.path)?;
        let dst = safe_join(data, &f.path)?;
        if let Some(parent) = dst.parent() {
            create_data_dir(parent)?;
        }
        copy_private(&src, &dst)?;
    }
    create_data_dir(&data.join("objects"))?;
    Ok(manifest)
}

/// Refuses a directory that exists and is not empty.
fn ensure_empty(dir: &Path) -> Result<(), String> {
    match std::fs::read_dir(dir) {
        Ok(mut rd) => match rd.next() {
            None => Ok(()),
            Some(_) => Err(format!("{} exists and is not empty: give a new directory", dir.display())),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("{}: {e}", dir.display())),
    }
}

/// A consistent copy of a live SQLite database (`VACUUM INTO`), created with mode 0600.
async fn sqlite_copy(url: &str, to: &Path) -> Result<(), String> {
    use sqlx::sqlite::SqliteConnectOptions;
    use sqlx::{ConnectOptions, Connection};
    use std::str::FromStr;
    let opts = SqliteConnectOptions::from_str(url)
        .map_err(|e| format!("database {url}: {e}"))?
        .create_if_missing(false)
        .busy_timeout(std::time::Duration::from_secs(30));
    let mut conn = opts.connect().await.map_err(|e| format!("cannot open the database: {e}"))?;
    write_private(to, &[])?;
    let r = sqlx::query("VACUUM INTO $1").bind(to.display().to_string()).execute(&mut conn).await;
    let _ = conn.close().await;
    r.map(|_| ()).map_err(|e| format!("cannot copy the database: {e}"))
}

/// Copies the regular files under `from` to `to`, each with mode 0600, directories 0700.
fn copy_tree(from: &Path, to: &Path) -> Result<(), String> {
    create_data_dir(to)?;
    let rd = std::fs::read_dir(from).map_err(|e| format!("cannot read {}: {e}", from.display()))?;
    for entry in rd {
        let entry = entry.map_err(|e| format!("{}: {e}", from.display()))?;
        let ty = entry.file_type().map_err(|e| e.to_string())?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        if ty.is_dir() {
            copy_tree(&src, &dst)?;
        } else if ty.is_file() {
            copy_private(&src, &dst)?;
        }
    }
    Ok(())
}

/// Copies one file into a new file readable only by its owner, and syncs it.
fn copy_private(src: &Path, dst: &Path) -> Result<(), String> {
    let mut from = std::fs::File::open(src).map_err(|e| format!("cannot read {}: {e}", src.display()))?;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut to = opts.open(dst).map_err(|e| format!("cannot create {}: {e}", dst.display()))?;
    std::io::copy(&mut from, &mut to)
        .and_then(|_| to.sync_all())
        .map_err(|e| format!("cannot copy {} to {}: {e}", src.display(), dst.display()))
}

/// Every regular file under `root` (relative paths, sorted) with its size and digest.
fn list_files(root: &Path) -> Result<Vec<FileEntry>, String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<FileEntry>) -> Result<(), String> {
        let rd = std::fs::read_dir(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
        for entry in rd {
            let entry = entry.map_err(|e| e.to_string())?;
            let ty = entry.file_type().map_err(|e| e.to_string())?;
            let p = entry.path();
            if ty.is_dir() {
                walk(root, &p, out)?;
            } else if ty.is_file() {
                let rel = p.strip_prefix(root).map_err(|e| e.to_string())?;
                let rel: Vec<String> = rel.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
                let (size, sha256) = digest_file(&p)?;
                out.push(FileEntry { path: rel.join("/"), size, sha256 });
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(root, root, &mut out)?;
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

fn digest_file(p: &Path) -> Result<(u64, String), String> {
    use std::io::Read;
    let mut f = std::fs::File::open(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
        if n == 0 {
            break;
        }
        size += n as u64;
        h.update(&buf[..n]);
    }
    Ok((size, crate::hex(&h.finalize())))
}

/// `base` joined with a manifest path, refusing anything that could leave `base`.
fn safe_join(base: &Path, rel: &str) -> Result<PathBuf, String> {
    let mut p = base.to_path_buf();
    for part in rel.split('/') {
        if part.is_empty() || part == "." || part == ".." || part.contains('\\') {
            return Err(format!("manifest path {rel:?} is not allowed"));
        }
        p.push(part);
    }
    Ok(p)
}

/// A database URL without its password.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            let user = creds.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..s + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}
