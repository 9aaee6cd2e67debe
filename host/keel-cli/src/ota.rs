//! Update commands: signing keys, bundles, uploads and deployments.
//!
//! The flow: `keel keys new --out release` once (keep `release.key` secret), `keel keys add
//! release.pub --name release` once per server account, then for every release
//! `keel bundle app.elf --key release.key --version 1.2.0`, `keel apps upload app-1.2.0.keelb`
//! and `keel deploy app@1.2.0 --tag field`.

use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use keel_api::{NewDeployment, NewSignerKey, UploadQuery};
use keel_bundle::{BundleSpec, LayerSpec, Policies, Target};

use crate::client::{api_error, escape, print_json, time_str, Conn};

#[derive(Subcommand)]
pub enum KeysCmd {
    /// Make a new Ed25519 signing key pair: NAME.key (secret, mode 0600) and NAME.pub.
    ///
    /// Keep NAME.key off the server and out of version control: whoever has it can sign
    /// updates your devices accept. Register NAME.pub with `keel keys add NAME.pub`.
    New {
        /// Path without extension: writes NAME.key and NAME.pub (never overwrites).
        #[arg(long, value_name = "NAME")]
        out: PathBuf,
    },
    /// Register a public key with the server: bundles must be signed by a registered key.
    Add {
        #[command(flatten)]
        conn: Conn,
        /// The public key file (NAME.pub: SPKI PEM, or 64 hex digits).
        file: PathBuf,
        /// A name for it, e.g. who signs with it.
        #[arg(long)]
        name: String,
    },
    /// List the account's signer keys (revoked ones too).
    List(Conn),
    /// Revoke a signer key: new uploads signed with it are refused (stored bundles stay).
    Revoke {
        #[command(flatten)]
        conn: Conn,
        /// Key id (`sk-...`, see `keel keys list`).
        id: String,
    },
}

/// `keel bundle`: build a signed update bundle from an app ELF.
#[derive(Args)]
pub struct BundleArgs {
    /// The app's ELF file (linked with keel_app.ld, as for `cargo xtask qemu`).
    elf: PathBuf,
    /// Secret signing key (NAME.key from `keel keys new`).
    #[arg(long)]
    key: PathBuf,
    /// App version, e.g. 1.2.0 (at most 31 bytes).
    #[arg(long)]
    version: String,
    /// Manifest sequence number: devices install only bundles with a sequence above the one
    /// they run. Default: the current Unix time in seconds, which grows with every build made
    /// on a machine with a correct clock.
    #[arg(long)]
    sequence: Option<u64>,
    /// Output file [default: APP-VERSION.keelb next to the current directory].
    #[arg(long)]
    out: Option<PathBuf>,
    /// App name [default: the ELF file name].
    #[arg(long)]
    name: Option<String>,
    /// Crashes tolerated while the new app is on trial; one more rolls back (1..=255).
    #[arg(long, default_value_t = keel_bundle::DEFAULT_MAX_TRIAL_CRASHES)]
    max_trial_crashes: u8,
    /// The visor confirms the update once the new app has run this long with the cloud link
    /// up (0: only the app's own confirmation ends the trial).
    #[arg(long, default_value_t = keel_bundle::DEFAULT_CONNECTIVITY_GRACE_TIME_S)]
    grace_s: u32,
    /// How long the visor waits for the running app to accept the install (0: install at once).
    #[arg(long, default_value_t = keel_bundle::DEFAULT_MAX_POLITENESS_TIME_S)]
    politeness_s: u32,
    /// Lowest visor version that may install it, as MAJOR.MINOR.PATCH.
    #[arg(long)]
    min_visor: Option<String>,
    /// Public key (PEM file or 64 hex digits) allowed to open remote debugging sessions.
    #[arg(long)]
    debug_key: Option<String>,
}

#[derive(Subcommand)]
pub enum AppsCmd {
    /// Upload a bundle made by `keel bundle`; the server checks its signature before storing it.
    Upload {
        #[command(flatten)]
        conn: Conn,
        /// The bundle file.
        bundle: PathBuf,
        /// Accept a sequence more than 10 years ahead of the clock and of the account's
        /// bundles (devices that install it refuse every later bundle below it).
        #[arg(long)]
        force: bool,
    },
    /// List uploaded bundles, newest first.
    List(Conn),
}

/// `keel deploy`.
#[derive(Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["device", "tag"])))]
pub struct DeployArgs {
    #[command(flatten)]
    conn: Conn,
    /// Bundle id (`bn-...`) or APP@VERSION (see `keel apps list`).
    bundle: String,
    /// One device.
    #[arg(long)]
    device: Option<String>,
    /// Every device with this tag (as tagged now).
    #[arg(long)]
    tag: Option<String>,
    /// Deploy even if the bundle's signer key has been revoked.
    #[arg(long)]
    force: bool,
}

pub fn keys(cmd: KeysCmd, json: bool) -> Result<(), String> {
    match cmd {
        KeysCmd::New { out } => {
            let secret = out.with_extension("key");
            let public = out.with_extension("pub");
            for p in [&secret, &public] {
                if p.exists() {
                    return Err(format!("{} exists; keys are never overwritten (choose another --out)", p.display()));
                }
            }
            let key = keel_bundle::generate_signing_key();
            let pem = keel_bundle::public_key_to_pem(&key.verifying_key()).map_err(|e| e.to_string())?;
            keel_bundle::write_secret_key_file(&secret, &key)
                .map_err(|e| format!("cannot write {}: {e}", secret.display()))?;
            std::fs::write(&public, &pem).map_err(|e| format!("cannot write {}: {e}", public.display()))?;
            let kid = keel_server::hex(&keel_bundle::key_id(&key.verifying_key().to_bytes()));
            if json {
                return print_json(&serde_json::json!({ "secret": secret, "public": public, "kid": kid }));
            }
            println!("wrote {} (secret, keep it safe) and {}", secret.display(), public.display());
            println!("key id {kid}\n\nnext: keel keys add {} --name NAME", public.display());
            Ok(())
        }
        KeysCmd::Add { conn, file, name } => {
            let text = std::fs::read_to_string(&file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
            if text.contains("PRIVATE KEY") {
                return Err(format!(
                    "{} is a secret key: register the public key (the .pub file) and keep the secret one to yourself",
                    file.display()
                ));
            }
            let new = NewSignerKey { name, public_key: text.trim().to_string() };
            let k = conn.client()?.add_signer_key(&new).map_err(api_error)?;
            if json {
                return print_json(&k);
            }
            println!("registered signer key {} ({}, key id {})", escape(&k.id), escape(&k.name), escape(&k.kid));
            Ok(())
        }
        KeysCmd::List(conn) => {
            let keys = conn.client()?.signer_keys().map_err(api_error)?;
            if json {
                return print_json(&keys);
            }
            println!("{:<16} {:<20} {:<17} {:<20} REVOKED", "ID", "NAME", "KEY ID", "ADDED");
            for k in keys {
                let revoked = k.revoked_at_us.map_or("-".into(), time_str);
                println!(
                    "{:<16} {:<20} {:<17} {:<20} {revoked}",
                    escape(&k.id),
                    escape(&k.name),
                    escape(&k.kid),
                    time_str(k.created_at_us)
                );
            }
            Ok(())
        }
        KeysCmd::Revoke { conn, id } => {
            conn.client()?.revoke_signer_key(&id).map_err(api_error)?;
            if json {
                return print_json(&serde_json::json!({ "revoked": id }));
            }
            println!("revoked signer key {id}: uploads signed with it are refused from now on");
            Ok(())
        }
    }
}

fn parse_visor_version(v: &str) -> Result<u32, String> {
    keel_bundle::parse_visor_version(v)
        .ok_or_else(|| format!("--min-visor {v}: expected MAJOR.MINOR.PATCH, e.g. 0.2.0"))
}

/// `keel bundle`.
pub fn bundle(a: BundleArgs, json: bool) -> Result<(), String> {
    let name = match &a.name {
        Some(n) => n.clone(),
        None => a.elf.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default(),
    };
    let data = std::fs::read(&a.elf).map_err(|e| format!("cannot read {}: {e}", a.elf.display()))?;
    let image = keel_vdev::elf::image_from_elf_bytes(&data, &name, &a.version)
        .map_err(|e| format!("{}: {e}", a.elf.display()))?;
    let slot = image.slot_bytes();
    let key = keel_bundle::read_secret_key_file(&a.key).map_err(|e| format!("cannot read {}: {e}", a.key.display()))?;
    let debug_key = match &a.debug_key {
        None => None,
        Some(k) => {
            let text = if Path::new(k).exists() {
                std::fs::read_to_string(k).map_err(|e| format!("cannot read {k}: {e}"))?
            } else {
                k.clone()
            };
            Some(keel_bundle::public_key_from_text(&text).map_err(|e| format!("--debug-key: {e}"))?)
        }
    };
    let sequence = match a.sequence {
        Some(s) => s,
        None => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_err(|_| "the system clock is before 1970: pass --sequence")?
            .as_secs(),
    };
    let policies = Policies {
        app_name: &name,
        app_version: &a.version,
        min_visor_version: a.min_visor.as_deref().map(parse_visor_version).transpose()?.unwrap_or(0),
        debug_key,
        max_trial_crashes: a.max_trial_crashes,
        max_politeness_time_s: a.politeness_s,
        connectivity_grace_time_s: a.grace_s,
    };
    let layers = [LayerSpec { id: "app", target: Target::AppSlot, bytes: &slot }];
    let spec = BundleSpec { sequence, layers: &layers, policies };
    let bytes = keel_bundle::build_bundle(&spec, &key, keel_bundle::reference_region_capacity)
        .map_err(|e| format!("cannot build the bundle: {e}"))?;
    let out = a.out.unwrap_or_else(|| PathBuf::from(format!("{name}-{}.keelb", a.version)));
    if out.exists() {
        return Err(format!("{} exists; remove it or choose another --out", out.display()));
    }
    std::fs::write(&out, &bytes).map_err(|e| format!("cannot write {}: {e}", out.display()))?;
    let kid = keel_server::hex(&keel_bundle::key_id(&key.verifying_key().to_bytes()));
    if json {
        return print_json(&serde_json::json!({
            "bundle": out, "app": name, "version": a.version, "sequence": sequence,
            "size": bytes.len(), "app_layer_size": slot.len(), "key_id": kid,
        }));
    }
    println!(
        "built {}: {name} {} sequence {sequence}, app layer {} bytes, {} bytes in all, signed by key {kid}",
        out.display(),
        a.version,
        slot.len(),
        bytes.len()
    );
    println!("next: keel apps upload {}", out.display());
    Ok(())
}

/// Counts the bytes read through it on a progress bar.
struct Progress<R> {
    inner: R,
    bar: indicatif::ProgressBar,
}

impl<R: Read> Read for Progress<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bar.inc(n as u64);
        Ok(n)
    }
}

/// `keel apps ...`.
pub fn apps(cmd: AppsCmd, json: bool) -> Result<(), String> {
    match cmd {
        AppsCmd::Upload { conn, bundle, force } => {
            let api = conn.client()?;
            let cannot_read = |e: std::io::Error| format!("cannot read {}: {e}", bundle.display());
            let file = std::fs::File::open(&bundle).map_err(cannot_read)?;
            let meta = file.metadata().map_err(cannot_read)?;
            if meta.is_dir() {
                return Err(format!("cannot read {}: it is a directory", bundle.display()));
            }
            let len = meta.len();
            // The bar goes to stderr, only for a person watching.
            let bar = if json || !std::io::stderr().is_terminal() {
                indicatif::ProgressBar::hidden()
            } else {
                let bar = indicatif::ProgressBar::new(len);
                if let Ok(style) =
                    indicatif::ProgressStyle::with_template("uploading {bar:40} {bytes}/{total_bytes} {bytes_per_sec}")
                {
                    bar.set_style(style);
                }
                bar
            };
            // The file is streamed as it is sent, through the bar.
            let mut reader = Progress { inner: std::io::BufReader::new(file), bar: bar.clone() };
            let result = api.upload_bundle(&mut reader, len, &UploadQuery { force });
            bar.finish_and_clear();
            let b = result.map_err(|e| format!("{}: {}", bundle.display(), api_error(e)))?;
            if json {
                return print_json(&b);
            }
            let (app, version) = (escape(&b.app), escape(&b.version));
            println!("uploaded {}: {app} {version} sequence {} ({} bytes)", escape(&b.id), b.sequence, b.size);
            println!("next: keel deploy {app}@{version} --device ID   (or --tag TAG)");
            Ok(())
        }
        AppsCmd::List(conn) => {
            let bundles = conn.client()?.bundles().map_err(api_error)?;
            if json {
                return print_json(&bundles);
            }
            println!("{:<16} {:<16} {:<12} {:>12} {:>10} UPLOADED", "ID", "APP", "VERSION", "SEQUENCE", "BYTES");
            for b in bundles {
                println!(
                    "{:<16} {:<16} {:<12} {:>12} {:>10} {}",
                    escape(&b.id),
                    escape(&b.app),
                    escape(&b.version),
                    b.sequence,
                    b.size,
                    time_str(b.uploaded_at_us)
                );
            }
            Ok(())
        }
    }
}

/// `keel deploy`.
pub fn deploy(a: DeployArgs, json: bool) -> Result<(), String> {
    let new = NewDeployment { bundle: a.bundle, device: a.device, tag: a.tag, force: a.force };
    let d = a.conn.client()?.deploy(&new).map_err(api_error)?;
    if json {
        return print_json(&d);
    }
    println!(
        "{} {} (sequence {}, bundle {}) is now the target of {} device(s) via {}: {}",
        escape(&d.bundle.app),
        escape(&d.bundle.version),
        d.bundle.sequence,
        escape(&d.bundle.id),
        d.devices.len(),
        escape(&d.via),
        escape(&d.devices.join(", "))
    );
    println!("connected devices get it now, others when they connect; follow with `keel devices show ID`");
    Ok(())
}
