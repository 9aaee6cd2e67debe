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
    ///
    /// With --debug: a remote debugging key pair instead (X25519): NAME.debug.key (secret,
    /// mode 0600, for `keel debug --key`) and NAME.debug.pub (for `keel bundle --debug-key`).
    New {
        /// Path without extension: writes NAME.key and NAME.pub (never overwrites).
        #[arg(long, value_name = "NAME")]
        out: PathBuf,
        /// Make a debug key pair (NAME.debug.key, NAME.debug.pub).
        #[arg(long)]
        debug: bool,
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
    /// Debug public key (NAME.debug.pub from `keel keys new --debug`, or its 64 hex digits):
    /// its holder may debug the app remotely (`keel debug`). An app bundled without a debug
    /// key cannot be debugged.
    #[arg(long, value_name = "PUB")]
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
        KeysCmd::New { out, debug: true } => new_debug_key(&out, json),
        KeysCmd::New { out, debug: false } => {
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

/// `keel keys new --debug`: an X25519 key pair for remote debugging sessions.
fn new_debug_key(out: &Path, json: bool) -> Result<(), String> {
    use rand_core::RngCore;
    let secret_path = out.with_extension("debug.key");
    let public_path = out.with_extension("debug.pub");
    for p in [&secret_path, &public_path] {
        if p.exists() {
            return Err(format!("{} exists; keys are never overwritten (choose another --out)", p.display()));
        }
    }
    let mut secret = [0u8; 32];
    rand_core::OsRng.try_fill_bytes(&mut secret).map_err(|e| format!("no randomness from the OS: {e}"))?;
    let public = keel_debug::session::public_key(&secret);
    let public_hex = keel_server::hex(&public);
    {
        use std::io::Write;
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let mut text = keel_server::hex(&secret);
        text.push('\n');
        opts.open(&secret_path)
            .and_then(|mut f| f.write_all(text.as_bytes()).and_then(|_| f.sync_all()))
            .map_err(|e| format!("cannot write {}: {e}", secret_path.display()))?;
        secret.fill(0);
    }
    std::fs::write(&public_path, format!("{public_hex}\n"))
        .map_err(|e| format!("cannot write {}: {e}", public_path.display()))?;
    if json {
        return print_json(&serde_json::json!({
            "secret": secret_path, "public": public_path, "public_key": public_hex,
        }));
    }
    println!("wrote {} (secret, keep it safe) and {}", secret_path.display(), public_path.display());
    println!(
        "\nnext: keel bundle app.elf --key RELEASE.key --version V --debug-key {}\n      keel debug DEVICE --key {}",
        public_path.display(),
        secret_path.display()
    );
    Ok(())
}

/// The X25519 debug public key `--debug-key` names: a NAME.debug.pub file or 64 hex digits.
fn debug_public_key(arg: &str) -> Result<[u8; 32], String> {
    let text = if Path::new(arg).exists() {
        std::fs::read_to_string(arg).map_err(|e| format!("cannot read {arg}: {e}"))?
    } else {
        arg.to_string()
    };
    if text.contains("PRIVATE KEY") || arg.ends_with(".debug.key") {
        return Err(format!("--debug-key {arg}: that is a secret key; give the public one (NAME.debug.pub)"));
    }
    crate::debug::parse_key_hex(&text).ok_or_else(|| {
        format!("--debug-key {arg}: expected a debug public key (NAME.debug.pub from `keel keys new --debug`, 64 hex digits)")
    })
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
    let debug_key = a.debug_key.as_deref().map(debug_public_key).transpose()?;
    // The key goes in the manifest and in the image header (covered by its digest): the visor
    // accepts debug sessions for the running app only with it.
    let image = keel_vdev::elf::image_from_elf_bytes(&data, &name, &a.version)
        .map_err(|e| format!("{}: {e}", a.elf.display()))?
        .with_debug_key(debug_key);
    let slot = image.slot_bytes();
    let key = keel_bundle::read_secret_key_file(&a.key).map_err(|e| format!("cannot read {}: {e}", a.key.display()))?;
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
            "debug_key": debug_key.map(|k| keel_server::hex(&k)),
        }));
    }
    println!(
        "built {}: {name} {} sequence {sequence}, app layer {} bytes, {} bytes in all, signed by key {kid}",
        out.display(),
        a.version,
        slot.len(),
        bytes.len()
    );
    if debug_key.is_none() {
        println!("no --debug-key: this app cannot be debugged remotely");
    }
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
