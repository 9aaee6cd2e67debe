//! Where client commands find the server and the API token.
//!
//! In order: `--server` / `--token` flags, the `KEEL_SERVER` / `KEEL_TOKEN` environment
//! variables, then the config file written by `keel login`:
//! `$KEEL_CONFIG`, else `$XDG_CONFIG_HOME/keel/config.toml`, else `~/.config/keel/config.toml`.
//!
//! ```toml
//! server = "http://127.0.0.1:7447"
//! token = "keel_…"
//! ca = "/etc/keel/ca.pem"   # optional: trust this CA for https:// (or --ca / KEEL_CA)
//! ```

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Server used when nothing else names one.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:7447";

/// The config file's contents.
#[derive(Serialize, Deserialize, Default, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Server API URL.
    pub server: Option<String>,
    /// API token.
    pub token: Option<String>,
    /// PEM file of the certificate authority to trust for an https:// server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
}

/// The config file's path.
pub fn path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("KEEL_CONFIG") {
        return Some(PathBuf::from(p));
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("keel").join("config.toml"))
}

/// Reads the config file; a missing file is an empty config, a malformed one an error that
/// names the file.
pub fn load() -> Result<Config, String> {
    let Some(p) = path() else { return Ok(Config::default()) };
    match std::fs::read_to_string(&p) {
        Ok(text) => toml::from_str(&text).map_err(|e| format!("{}: {e}(fix or delete the file)", p.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Config::default()),
        Err(e) => Err(format!("cannot read {}: {e}", p.display())),
    }
}

/// Writes the config file, readable only by the user (it holds a token).
pub fn save(c: &Config) -> Result<PathBuf, String> {
    let p = path().ok_or("cannot find a config directory: set KEEL_CONFIG or HOME")?;
    if let Some(dir) = p.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let text = toml::to_string(c).map_err(|e| e.to_string())?;
    let tmp = p.with_extension("toml.tmp");
    {
        use std::io::Write;
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let mut f = opts.open(&tmp).map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
        f.write_all(text.as_bytes()).map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    }
    std::fs::rename(&tmp, &p).map_err(|e| format!("cannot write {}: {e}", p.display()))?;
    Ok(p)
}
