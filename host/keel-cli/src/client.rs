//! Client commands: talk to a running server's HTTP API.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use keel_server::http::{DeviceJson, LogJson, NewDevice, ServerInfo};

#[derive(Args, Clone)]
pub struct Conn {
    /// Server API URL.
    #[arg(long, env = "KEEL_SERVER", default_value = "http://127.0.0.1:7447")]
    pub server: String,
    /// API token (see `keel server init`).
    #[arg(long, env = "KEEL_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

#[derive(Subcommand)]
pub enum DeviceCmd {
    /// List your devices.
    List(Conn),
    /// Show one device.
    Show {
        #[command(flatten)]
        conn: Conn,
        /// Device id.
        device: String,
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
        /// Gateway address as the device reaches it (IPv4; QEMU user networking sees the host as 10.0.2.2).
        #[arg(long, default_value = "10.0.2.2")]
        gateway_host: String,
        /// Gateway port.
        #[arg(long, default_value_t = 7448)]
        gateway_port: u16,
    },
}

#[derive(Args)]
pub struct LogsArgs {
    #[command(flatten)]
    conn: Conn,
    /// Device id.
    device: String,
    /// Keep printing new records as they arrive.
    #[arg(long, short)]
    follow: bool,
}

fn request<T: serde::de::DeserializeOwned>(
    conn: &Conn,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> Result<T, String> {
    let token = conn
        .token
        .as_deref()
        .ok_or("no API token: pass --token or set KEEL_TOKEN (create one with `keel server init`)")?;
    let url = format!("{}{}", conn.server.trim_end_matches('/'), path);
    let auth = format!("Bearer {token}");
    let result = match body {
        None if method == "GET" => {
            ureq::get(&url).header("authorization", &auth).config().http_status_as_error(false).build().call()
        }
        Some(b) => {
            ureq::post(&url).header("authorization", &auth).config().http_status_as_error(false).build().send_json(b)
        }
        None => return Err(format!("unsupported method {method}")),
    };
    let mut resp = result
        .map_err(|e| format!("cannot reach the server at {}: {e} (is `keel server run` running?)", conn.server))?;
    let status = resp.status();
    let value: serde_json::Value =
        resp.body_mut().read_json().map_err(|e| format!("bad response from the server: {e}"))?;
    if !status.is_success() {
        let msg = value["error"]["message"].as_str().unwrap_or("request failed").to_string();
        return Err(format!("{msg} (HTTP {})", status.as_u16()));
    }
    serde_json::from_value(value).map_err(|e| format!("unexpected response: {e}"))
}

fn print_devices(devs: &[DeviceJson]) {
    println!("{:<36} {:<16} {:<8} {:<10} APP", "ID", "NAME", "ONLINE", "VISOR");
    for d in devs {
        let app = match (&d.app_name, &d.app_version) {
            (Some(n), Some(v)) => format!("{n} {v}"),
            _ => "-".into(),
        };
        println!(
            "{:<36} {:<16} {:<8} {:<10} {}",
            d.id,
            d.name,
            if d.online { "yes" } else { "no" },
            d.visor_version.as_deref().unwrap_or("-"),
            app
        );
    }
}

pub fn device(cmd: DeviceCmd, json: bool) -> Result<(), String> {
    match cmd {
        DeviceCmd::List(conn) => {
            let devs: Vec<DeviceJson> = request(&conn, "GET", "/v1/devices", None)?;
            if json {
                println!("{}", serde_json::to_string(&devs).map_err(|e| e.to_string())?);
            } else {
                print_devices(&devs);
            }
            Ok(())
        }
        DeviceCmd::Show { conn, device } => {
            let d: DeviceJson = request(&conn, "GET", &format!("/v1/devices/{device}"), None)?;
            if json {
                println!("{}", serde_json::to_string(&d).map_err(|e| e.to_string())?);
            } else {
                print_devices(std::slice::from_ref(&d));
            }
            Ok(())
        }
        DeviceCmd::Provision { conn, flash, name, gateway_host, gateway_port } => {
            let info: ServerInfo = request(&conn, "GET", "/v1/server", None)?;
            let mut factory =
                keel_vdev::flash::new_factory_for(&gateway_host, gateway_port).map_err(|e| e.to_string())?;
            for (i, b) in factory.server_key.iter_mut().enumerate() {
                let byte = info.public_key.get(2 * i..2 * i + 2).ok_or("the server sent a malformed public key")?;
                *b = u8::from_str_radix(byte, 16).map_err(|_| "the server sent a malformed public key")?;
            }
            let public =
                x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(factory.device_key)).to_bytes();
            let id = String::from_utf8_lossy(&factory.device_id_ascii()).to_string();
            let new = NewDevice { id: id.clone(), name, public_key: keel_server::hex(&public) };
            let d: DeviceJson =
                request(&conn, "POST", "/v1/devices", Some(serde_json::to_value(&new).map_err(|e| e.to_string())?))?;
            if flash.exists() {
                return Err(format!("{} exists; provisioning writes a new flash file", flash.display()));
            }
            keel_vdev::flash::create(&flash, &factory).map_err(|e| format!("cannot write {}: {e}", flash.display()))?;
            if json {
                println!("{}", serde_json::json!({ "device": d, "flash": flash }));
            } else {
                println!("provisioned {} ({}) -> {}", d.id, d.name, flash.display());
            }
            Ok(())
        }
    }
}

fn print_log(l: &LogJson, json: bool) {
    if json {
        println!("{}", serde_json::to_string(l).unwrap_or_default());
    } else {
        let t = l.device_time_us;
        println!("{:>8} [{:5}.{:06} {:<5}] {}", l.seq & 0xFFFF_FFFF, t / 1_000_000, t % 1_000_000, l.source, l.text);
    }
}

/// Prints a device's logs: a table, a JSON array with `--json`, or (with `--follow`) one line or
/// one JSON object per record as they arrive.
pub fn logs(a: LogsArgs, json: bool) -> Result<(), String> {
    let mut after: Option<u64> = None;
    if json && !a.follow {
        let mut all: Vec<LogJson> = Vec::new();
        loop {
            let q = after.map_or(String::new(), |s| format!("&after={s}"));
            let page: Vec<LogJson> =
                request(&a.conn, "GET", &format!("/v1/devices/{}/logs?limit=1000{q}", a.device), None)?;
            let full = page.len() == 1000;
            after = page.last().map(|l| l.seq).or(after);
            all.extend(page);
            if !full {
                println!("{}", serde_json::to_string(&all).map_err(|e| e.to_string())?);
                return Ok(());
            }
        }
    }
    loop {
        let q = after.map_or(String::new(), |s| format!("&after={s}"));
        let page: Vec<LogJson> =
            request(&a.conn, "GET", &format!("/v1/devices/{}/logs?limit=1000{q}", a.device), None)?;
        for l in &page {
            print_log(l, json);
        }
        use std::io::Write;
        let _ = std::io::stdout().flush();
        if let Some(last) = page.last() {
            after = Some(last.seq);
            if page.len() == 1000 {
                continue;
            }
        }
        if !a.follow {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}
