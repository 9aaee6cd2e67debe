//! Client commands: talk to a running server's HTTP API.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use keel_api::{ApiError, Client, DevicePatch, DevicesQuery, LogJson, LogQuery, NewDevice, NewToken, StreamQuery};
use keel_api::{DeviceJson, ServerInfo};

#[derive(Args, Clone)]
pub struct Conn {
    /// Server API URL [default: from `keel login`, else http://127.0.0.1:7447].
    #[arg(long, env = "KEEL_SERVER")]
    pub server: Option<String>,
    /// API token [default: from `keel login`]. `keel server init` prints the first one.
    #[arg(long, env = "KEEL_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// PEM file of the certificate authority (or self-signed certificate) to trust for an
    /// https:// server [default: from the config's `ca`, else the public web roots].
    #[arg(long, env = "KEEL_CA")]
    pub ca: Option<PathBuf>,
}

impl Conn {
    /// The API client of the server and token these options (or the config file) name, trusting
    /// the `--ca` file if one is given. Warns about a token sent over plain http to another host.
    pub(crate) fn client(&self) -> Result<Client, String> {
        let file = crate::config::load()?;
        let server = self.server.clone().or(file.server).unwrap_or_else(|| crate::config::DEFAULT_SERVER.into());
        let token = self.token.clone().or(file.token).ok_or(
            "no API token: run `keel login --token <token>` once, or pass --token / set KEEL_TOKEN \
             (`keel server init` prints the first token; `keel token create` makes more)",
        )?;
        let mut client = Client::new(server).with_token(token);
        let ca = self.ca.clone().or(file.ca.map(PathBuf::from));
        if let Some(ca) = ca {
            let pem = std::fs::read(&ca).map_err(|e| format!("--ca {}: {e}", ca.display()))?;
            client = client.with_ca(&pem).map_err(|e| format!("--ca {}: {e}", ca.display()))?;
        }
        if let Some(host) = plain_remote_host(client.base_url()) {
            eprintln!(
                "keel: warning: sending the API token over plain http:// to {host}, which is not this machine; \
                 use https:// (keel server run --tls-cert/--tls-key)"
            );
        }
        Ok(client)
    }
}

/// The host of a plain `http://` URL when it is not a loopback address or `localhost`.
fn plain_remote_host(url: &str) -> Option<String> {
    let rest = url.strip_prefix("http://")?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let hostport = authority.rsplit('@').next().unwrap_or("");
    let host = if let Some(v6) = hostport.strip_prefix('[') {
        v6.split(']').next().unwrap_or("")
    } else {
        hostport.split(':').next().unwrap_or("")
    };
    let loopback =
        host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    (!loopback).then(|| host.to_string())
}

/// An API client's error as the message the command ends with: advice for a failed TLS handshake
/// or an unreachable server; an error answer's code and status are kept for `--json` errors.
pub(crate) fn api_error(e: ApiError) -> String {
    match &e {
        ApiError::Api { code, status, .. } => {
            *LAST_API_ERROR.lock().unwrap_or_else(|e| e.into_inner()) = Some((code.clone(), *status));
            e.to_string()
        }
        ApiError::Transport { tls: true, .. } => format!(
            "{e}. If the server's certificate is from a private CA or self-signed, \
             pass --ca FILE (or KEEL_CA, or `ca = \"FILE\"` in the config)"
        ),
        ApiError::Transport { .. } => format!("{e} (is `keel server run` running?)"),
        ApiError::Decode { .. } | ApiError::Local { .. } => e.to_string(),
    }
}

#[derive(Subcommand)]
pub enum DeviceCmd {
    /// List your devices.
    List {
        #[command(flatten)]
        conn: Conn,
        /// Only devices with this tag.
        #[arg(long)]
        tag: Option<String>,
    },
    /// Show one device: versions, tags, last boot and last crash.
    Show {
        #[command(flatten)]
        conn: Conn,
        /// Device id.
        device: String,
    },
    /// Rename a device or replace its tags.
    Set {
        #[command(flatten)]
        conn: Conn,
        /// Device id.
        device: String,
        /// New name.
        #[arg(long)]
        name: Option<String>,
        /// New tags, comma separated (replacing the old ones; "" removes all).
        #[arg(long)]
        tags: Option<String>,
    },
    /// Delete a device and its logs; its key can no longer connect.
    Delete {
        #[command(flatten)]
        conn: Conn,
        /// Device id.
        device: String,
        /// Confirm the deletion.
        #[arg(long)]
        yes: bool,
    },
    /// Create a device identity, register it, and write its factory flash file.
    Provision {
        #[command(flatten)]
        conn: Conn,
        /// Flash file to create (16 MiB, the virtual device's flash).
        #[arg(long)]
        flash: PathBuf,
        /// Device name.
        #[arg(long, default_value = "device")]
        name: String,
        /// Tags, comma separated.
        #[arg(long, default_value = "")]
        tags: String,
        /// Gateway address as the device reaches it (IPv4; QEMU user networking sees the host as 10.0.2.2).
        #[arg(long, default_value = "10.0.2.2")]
        gateway_host: String,
        /// Gateway port.
        #[arg(long, default_value_t = 7448)]
        gateway_port: u16,
        /// Public key (NAME.pub from `keel keys new`, or 64 hex digits) whose signed bundles the
        /// device installs. Without it the device refuses every update.
        #[arg(long)]
        signer_key: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
pub enum TokenCmd {
    /// List your account's API tokens (ids and names; secrets are never shown again).
    List(Conn),
    /// Create an API token; it is printed once. Needs an admin token.
    Create {
        #[command(flatten)]
        conn: Conn,
        /// What the token is for, e.g. "ci".
        name: String,
        /// What it may do: `read` (devices, logs, bundles), `deploy` (also upload bundles,
        /// deploy, rename and tag devices) or `admin` (also tokens, signer keys, registering
        /// and deleting devices). At most the scope of the token that creates it.
        #[arg(long, default_value = "read", value_parser = ["read", "deploy", "admin"])]
        scope: String,
        /// Lifetime, e.g. `30d`, `12h`, `15m`, `3600s` (default: no expiry).
        #[arg(long, value_parser = parse_lifetime)]
        expires: Option<u64>,
    },
    /// Revoke an API token by id (see `keel token list`).
    Revoke {
        #[command(flatten)]
        conn: Conn,
        /// Token id.
        id: String,
    },
}

#[derive(Args)]
pub struct LogsArgs {
    #[command(flatten)]
    conn: Conn,
    /// Device id.
    device: String,
    /// Keep printing new records as they arrive (a live stream; reconnects by itself).
    #[arg(long, short)]
    follow: bool,
    /// Only records after this sequence number.
    #[arg(long)]
    after: Option<u64>,
}

#[derive(Args)]
pub struct LoginArgs {
    #[command(flatten)]
    conn: Conn,
}

pub(crate) fn print_json<T: serde::Serialize>(v: &T) -> Result<(), String> {
    println!("{}", serde_json::to_string(v).map_err(|e| e.to_string())?);
    Ok(())
}

/// Whether a character must not reach a terminal as is: C0 controls (newline and tab included),
/// DEL, C1 controls, and the Unicode line separators and bidirectional overrides that can make
/// text look like something else.
fn unsafe_char(c: char) -> bool {
    c.is_control() || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// Device- or user-supplied text made safe for a terminal line: newline, CR and tab as `\n`,
/// `\r`, `\t`, other control bytes as `\xNN` (C0, DEL) or `\u{NN}` (C1 and the rest), so an app
/// can neither forge a line (a visor line in `keel logs`) nor send escape sequences. `--json`
/// output is never escaped this way (JSON has its own escaping).
pub(crate) fn escape(s: &str) -> std::borrow::Cow<'_, str> {
    use std::fmt::Write;
    if !s.chars().any(unsafe_char) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x80 && unsafe_char(c) => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if unsafe_char(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

/// The API's `error.code` and HTTP status of the last failed request, for `--json` errors.
static LAST_API_ERROR: std::sync::Mutex<Option<(String, u16)>> = std::sync::Mutex::new(None);

/// The `error.code` and HTTP status of the API error that ended the command, if one did.
pub(crate) fn last_api_error() -> Option<(String, u16)> {
    LAST_API_ERROR.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

fn split_tags(t: &str) -> Vec<String> {
    t.split(',').map(str::trim).filter(|t| !t.is_empty()).map(String::from).collect()
}

/// `keel login`: checks the token against the server and saves both in the config file.
pub fn login(a: LoginArgs, json: bool) -> Result<(), String> {
    let api = a.conn.client()?;
    let info: ServerInfo = api.server_info().map_err(api_error)?;
    let server = api.base_url();
    let path = crate::config::save(&crate::config::Config {
        server: Some(server.to_string()),
        token: api.token().map(String::from),
        ca: a.conn.ca.as_deref().map(|p| std::path::absolute(p).unwrap_or(p.into()).display().to_string()),
    })?;
    if json {
        print_json(&serde_json::json!({ "server": server, "server_version": info.version, "config": path }))
    } else {
        println!("logged in to {server} (keel {}); saved in {}", escape(&info.version), path.display());
        Ok(())
    }
}

/// `keel token ...`.
pub fn token(cmd: TokenCmd, json: bool) -> Result<(), String> {
    match cmd {
        TokenCmd::List(conn) => {
            let tokens = conn.client()?.tokens().map_err(api_error)?;
            if json {
                return print_json(&tokens);
            }
            println!("{:<14} {:<24} {:<7} {:<20} {:<20} LAST USED", "ID", "NAME", "SCOPE", "CREATED", "EXPIRES");
            for t in tokens {
                println!(
                    "{:<14} {:<24} {:<7} {:<20} {:<20} {}",
                    t.id,
                    escape(&t.name),
                    escape(&t.scope),
                    time_str(t.created_at_us),
                    t.expires_at_us.map_or("never".into(), time_str),
                    t.last_used_at_us.map_or("never".into(), time_str)
                );
            }
            Ok(())
        }
        TokenCmd::Create { conn, name, scope, expires } => {
            let new = NewToken { name, scope: Some(scope), expires_in_s: expires };
            let t = conn.client()?.create_token(&new).map_err(api_error)?;
            if json {
                return print_json(&t);
            }
            let until = t.expires_at_us.map_or("no expiry".into(), |e| format!("expires {} UTC", time_str(e)));
            println!(
                "token {} ({}, scope {}, {until})
{}

Keep it: it is shown once.",
                t.id,
                escape(&t.name),
                t.scope,
                t.token
            );
            Ok(())
        }
        TokenCmd::Revoke { conn, id } => {
            conn.client()?.revoke_token(&id).map_err(api_error)?;
            if json {
                return print_json(&serde_json::json!({ "revoked": id }));
            }
            println!("revoked token {id}");
            Ok(())
        }
    }
}

/// A lifetime such as `30d`, `12h`, `15m`, `45s` or `3600` (seconds), in seconds.
fn parse_lifetime(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = num.parse().map_err(|_| format!("'{s}': expected a number and a unit, e.g. 30d"))?;
    let mul = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(format!("'{s}': the unit must be s, m, h, d or w")),
    };
    match n.checked_mul(mul) {
        Some(v) if v > 0 => Ok(v),
        _ => Err(format!("'{s}': must be above zero and at most 100 years")),
    }
}

/// UTC time of µs since the epoch, as `YYYY-MM-DD HH:MM:SS`.
pub(crate) fn time_str(us: i64) -> String {
    let secs = us.div_euclid(1_000_000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}", rem / 3600, rem / 60 % 60, rem % 60)
}

fn print_devices(devs: &[DeviceJson]) {
    println!("{:<36} {:<16} {:<8} {:<10} APP", "ID", "NAME", "ONLINE", "VISOR");
    for d in devs {
        let app = match (&d.app_name, &d.app_version) {
            (Some(n), Some(v)) => format!("{} {}", escape(n), escape(v)),
            _ => "-".into(),
        };
        println!(
            "{:<36} {:<16} {:<8} {:<10} {}",
            escape(&d.id),
            escape(&d.name),
            if d.online { "yes" } else { "no" },
            escape(d.visor_version.as_deref().unwrap_or("-")),
            app
        );
    }
}

fn show_device(d: &DeviceJson) {
    let or_dash = |v: &Option<String>| v.as_deref().map_or("-".into(), |v| escape(v).into_owned());
    println!("id          {}", escape(&d.id));
    println!("name        {}", escape(&d.name));
    let tags: Vec<String> = d.tags.iter().map(|t| escape(t).into_owned()).collect();
    println!("tags        {}", if tags.is_empty() { "-".into() } else { tags.join(", ") });
    println!("online      {}", if d.online { "yes" } else { "no" });
    println!("last seen   {}", d.last_seen_us.map_or("never".into(), time_str));
    println!("visor       {}", or_dash(&d.visor_version));
    let app = match (&d.app_name, &d.app_version) {
        (Some(n), Some(v)) => format!("{} {}", escape(n), escape(v)),
        _ => "-".into(),
    };
    println!("app         {app}");
    println!("boot count  {}", d.boot_count.map_or("-".into(), |b| b.to_string()));
    let ev = |e: &Option<keel_api::EventJson>| {
        e.as_ref().map_or("-".into(), |e| format!("{}  {}", time_str(e.at_us), escape(&e.text)))
    };
    println!("last boot   {}", ev(&d.last_boot));
    println!("last crash  {}", ev(&d.last_crash));
    println!("public key  {}", escape(&d.public_key));
    match &d.update {
        None => println!("update      - (no bundle deployed: `keel deploy BUNDLE --device {}`)", escape(&d.id)),
        Some(u) => {
            let target = u.target.as_ref().map_or("none".into(), |t| {
                format!(
                    "{} {} (sequence {}, bundle {}, via {})",
                    escape(&t.app),
                    escape(&t.version),
                    t.sequence,
                    escape(&t.bundle),
                    escape(&t.via)
                )
            });
            println!("target      {target}");
            let mut state = u.state.as_deref().map_or_else(|| "not reported yet".into(), |s| escape(s).into_owned());
            if u.state.is_some() && u.sequence != 0 {
                state.push_str(&format!(" (sequence {})", u.sequence));
            }
            if let (Some(pct), Some("downloading")) = (u.progress_pct, u.state.as_deref()) {
                state.push_str(&format!(" {pct}% ({} of {} bytes)", u.progress, u.total));
            }
            if !u.reason.is_empty() {
                state.push_str(&format!(": {}", escape(&u.reason)));
            }
            println!("update      {state}");
            println!("installed   sequence {}", u.installed);
        }
    }
}

pub fn device(cmd: DeviceCmd, json: bool) -> Result<(), String> {
    match cmd {
        DeviceCmd::List { conn, tag } => {
            let devs = conn.client()?.devices(&DevicesQuery { tag }).map_err(api_error)?;
            if json {
                return print_json(&devs);
            }
            print_devices(&devs);
            Ok(())
        }
        DeviceCmd::Show { conn, device } => {
            let d = conn.client()?.device(&device).map_err(api_error)?;
            if json {
                return print_json(&d);
            }
            show_device(&d);
            Ok(())
        }
        DeviceCmd::Set { conn, device, name, tags } => {
            if name.is_none() && tags.is_none() {
                return Err("nothing to change: pass --name and/or --tags".into());
            }
            let patch = DevicePatch { name, tags: tags.as_deref().map(split_tags) };
            let d = conn.client()?.patch_device(&device, &patch).map_err(api_error)?;
            if json {
                return print_json(&d);
            }
            show_device(&d);
            Ok(())
        }
        DeviceCmd::Delete { conn, device, yes } => {
            if !yes {
                return Err(format!("deleting {device} removes it and all its logs; run again with --yes to confirm"));
            }
            conn.client()?.delete_device(&device).map_err(api_error)?;
            if json {
                return print_json(&serde_json::json!({ "deleted": device }));
            }
            println!("deleted {device}");
            Ok(())
        }
        DeviceCmd::Provision { conn, flash, name, tags, gateway_host, gateway_port, signer_key } => {
            let signer = match &signer_key {
                None => None,
                Some(p) => {
                    let text = std::fs::read_to_string(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
                    Some(keel_bundle::public_key_from_text(&text).map_err(|e| {
                        format!("{}: not an Ed25519 public key ({e}); use NAME.pub from `keel keys new`", p.display())
                    })?)
                }
            };
            let api = conn.client()?;
            if flash.exists() {
                return Err(format!(
                    "{} exists; provisioning writes a new flash file (choose another path)",
                    flash.display()
                ));
            }
            let info = api.server_info().map_err(api_error)?;
            let mut factory =
                keel_vdev::flash::new_factory_for(&gateway_host, gateway_port).map_err(|e| e.to_string())?;
            if let Some(k) = signer {
                factory.signer_key = k;
            }
            for (i, b) in factory.server_key.iter_mut().enumerate() {
                let byte = info.public_key.get(2 * i..2 * i + 2).ok_or("the server sent a malformed public key")?;
                *b = u8::from_str_radix(byte, 16).map_err(|_| "the server sent a malformed public key")?;
            }
            let public =
                x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(factory.device_key)).to_bytes();
            let id = String::from_utf8_lossy(&factory.device_id_ascii()).to_string();
            let new =
                NewDevice { id: id.clone(), name, public_key: keel_server::hex(&public), tags: split_tags(&tags) };
            let d = api.register_device(&new).map_err(api_error)?;
            keel_vdev::flash::create(&flash, &factory).map_err(|e| format!("cannot write {}: {e}", flash.display()))?;
            if json {
                return print_json(&serde_json::json!({ "device": d, "flash": flash }));
            }
            println!("provisioned {} ({}) -> {}", escape(&d.id), escape(&d.name), flash.display());
            Ok(())
        }
    }
}

fn print_log(l: &LogJson, json: bool) {
    if json {
        println!("{}", serde_json::to_string(l).unwrap_or_default());
    } else {
        let t = l.device_time_us;
        println!(
            "{:>8} [{:5}.{:06} {:<5}] {}",
            l.seq & 0xFFFF_FFFF,
            t / 1_000_000,
            t % 1_000_000,
            escape(&l.source),
            escape(&l.text)
        );
    }
}

/// Prints a device's logs: a table, a JSON array with `--json`, or (with `--follow`) one line or
/// one JSON object per record as they arrive.
pub fn logs(a: LogsArgs, json: bool) -> Result<(), String> {
    let api = a.conn.client()?;
    let mut after = a.after;
    let mut all: Vec<LogJson> = Vec::new();
    // Stored records first, a page at a time.
    loop {
        let page = api.logs(&a.device, &LogQuery { after, limit: Some(1000) }).map_err(api_error)?;
        let full = page.len() == 1000;
        after = page.last().map(|l| l.seq).or(after);
        if json && !a.follow {
            all.extend(page);
        } else {
            for l in &page {
                print_log(l, json);
            }
        }
        if !full {
            break;
        }
    }
    if !a.follow {
        if json {
            print_json(&all)?;
        }
        return Ok(());
    }
    // Then the live stream, resumed after the last record seen whenever it breaks.
    let mut retry = Duration::from_millis(250);
    loop {
        match follow(&api, &a.device, &mut after, json) {
            Ok(()) => retry = Duration::from_millis(250),
            Err(Stream::Fatal(e)) => return Err(e),
            Err(Stream::Broken(e)) => {
                eprintln!("keel: log stream interrupted ({e}); reconnecting");
                retry = (retry * 2).min(Duration::from_secs(8));
            }
        }
        std::thread::sleep(retry);
    }
}

enum Stream {
    /// Worth retrying (network, server restart).
    Broken(String),
    /// Not worth retrying (bad token, unknown device, untrusted certificate).
    Fatal(String),
}

/// Reads the live stream until it ends; advances `after` with every record printed.
fn follow(api: &Client, dev: &str, after: &mut Option<u64>, json: bool) -> Result<(), Stream> {
    use std::io::Write;
    // Sequence numbers start at 1 << 32 (boot 1), so `after=0` means every record.
    let stream = api.stream_logs(dev, &StreamQuery { after: Some(after.unwrap_or(0)) }).map_err(|e| {
        if e.is_transient() {
            Stream::Broken(api_error(e))
        } else {
            Stream::Fatal(api_error(e))
        }
    })?;
    for l in stream {
        // A broken connection or a bad event: what broke, then a reconnect.
        let l = l.map_err(|e| match e {
            ApiError::Transport { message, .. } => Stream::Broken(message),
            e => Stream::Broken(e.to_string()),
        })?;
        if after.is_none_or(|a| l.seq > a) {
            *after = Some(l.seq);
            print_log(&l, json);
            let _ = std::io::stdout().flush();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{escape, parse_lifetime};

    #[test]
    fn lifetimes() {
        assert_eq!(parse_lifetime("30d"), Ok(30 * 86_400));
        assert_eq!(parse_lifetime("12h"), Ok(12 * 3600));
        assert_eq!(parse_lifetime("15m"), Ok(900));
        assert_eq!(parse_lifetime("3600"), Ok(3600));
        assert_eq!(parse_lifetime("2w"), Ok(14 * 86_400));
        for bad in ["", "0d", "d", "30y", "-1h", "99999999999999999999d"] {
            assert!(parse_lifetime(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn escape_makes_device_text_inert() {
        assert_eq!(escape("plain text, ünïcödé ✓"), "plain text, ünïcödé ✓");
        assert!(matches!(escape("plain"), std::borrow::Cow::Borrowed(_)));
        assert_eq!(escape("a\nb\r\tc"), r"a\nb\r\tc");
        assert_eq!(escape("\x1b]0;owned\x07\x1b[2J"), r"\x1b]0;owned\x07\x1b[2J");
        assert_eq!(escape("nul\0del\x7f"), r"nul\x00del\x7f");
        assert_eq!(escape("c1\u{9b}31m \u{85}"), r"c1\u{9b}31m \u{85}");
        assert_eq!(escape("bidi\u{202e}txt\u{2028}"), r"bidi\u{202e}txt\u{2028}");
        // The escaped text never contains a control character.
        let all: String = (0u32..0x300).filter_map(char::from_u32).collect();
        assert!(!escape(&all).chars().any(char::is_control));
    }
}

#[cfg(test)]
mod transport_tests {
    use super::plain_remote_host;

    #[test]
    fn plain_http_to_another_host_is_flagged() {
        assert_eq!(plain_remote_host("http://keel.example.com:7447"), Some("keel.example.com".into()));
        assert_eq!(plain_remote_host("http://10.1.2.3/"), Some("10.1.2.3".into()));
        assert_eq!(plain_remote_host("http://[2001:db8::1]:7447"), Some("2001:db8::1".into()));
        for quiet in ["http://127.0.0.1:7447", "http://localhost:7447", "http://[::1]:7447", "https://keel.example.com"]
        {
            assert_eq!(plain_remote_host(quiet), None, "{quiet}");
        }
    }
}
