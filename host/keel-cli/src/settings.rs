//! `keel config`, `keel secrets` and `keel policy`: the values apps fetch through their device's
//! link, and which destinations the server may connect to for devices (docs/config-and-secrets.md).

use std::io::Read;

use clap::{Args, Subcommand};
use keel_api::{ConfigEntryJson, NewPolicyRule, PolicyRuleJson, SecretJson, SetValue};

use crate::client::{api_error, escape, print_json, time_str, Conn};

/// `--device`: a device's own value instead of the account-wide one.
#[derive(Args, Clone)]
pub struct DeviceOpt {
    /// The device whose own value this is (default: the account-wide value).
    #[arg(long, value_name = "ID")]
    device: Option<String>,
}

/// `keel config ...`.
#[derive(Subcommand)]
pub enum ConfigCmd {
    /// Set a config value (needs a deploy or admin token).
    ///
    ///   keel config set mqtt/main/host broker.example.com
    ///   keel config set sample-rate 10 --device kd0123...
    ///   keel config set mqtt/main/ca --from-file broker-ca.pem
    #[command(verbatim_doc_comment)]
    Set {
        #[command(flatten)]
        conn: Conn,
        /// Key: 1..=128 bytes of A-Z a-z 0-9 . _ / - (e.g. `mqtt/main/host`).
        key: String,
        /// The value (text, at most 4096 bytes); or give --from-file.
        #[arg(allow_hyphen_values = true, required_unless_present = "from_file")]
        value: Option<String>,
        /// Read the value from this file (a PEM certificate, say) instead.
        #[arg(long, value_name = "FILE", conflicts_with = "value")]
        from_file: Option<std::path::PathBuf>,
        #[command(flatten)]
        device: DeviceOpt,
    },
    /// Print one config value.
    ///
    ///   keel config get mqtt/main/host
    #[command(verbatim_doc_comment)]
    Get {
        #[command(flatten)]
        conn: Conn,
        /// Key.
        key: String,
        #[command(flatten)]
        device: DeviceOpt,
    },
    /// List config values (account-wide, or one device's own with --device).
    List {
        #[command(flatten)]
        conn: Conn,
        #[command(flatten)]
        device: DeviceOpt,
    },
    /// Delete a config value (needs a deploy or admin token).
    Delete {
        #[command(flatten)]
        conn: Conn,
        /// Key.
        key: String,
        #[command(flatten)]
        device: DeviceOpt,
    },
}

/// `keel secrets ...`.
#[derive(Subcommand)]
pub enum SecretsCmd {
    /// Set a secret (needs an admin token). It is stored encrypted and never shown again.
    ///
    /// Leave VALUE out to read it from stdin, so that it does not land in your shell history or
    /// in the process list:
    ///   keel secrets set mqtt/main/password             # type it, then Ctrl-D
    ///   keel secrets set mqtt/main/password < pw.txt
    ///   pass show broker | keel secrets set mqtt/main/password --device kd0123...
    /// One trailing newline of stdin is dropped.
    #[command(verbatim_doc_comment)]
    Set {
        #[command(flatten)]
        conn: Conn,
        /// Key: 1..=128 bytes of A-Z a-z 0-9 . _ / - (e.g. `mqtt/main/password`).
        key: String,
        /// The value (at most 4096 bytes) [default: read from stdin].
        value: Option<String>,
        #[command(flatten)]
        device: DeviceOpt,
    },
    /// List secrets: keys, sizes and when they were set (never values).
    List {
        #[command(flatten)]
        conn: Conn,
        #[command(flatten)]
        device: DeviceOpt,
    },
    /// Delete a secret (needs an admin token).
    Delete {
        #[command(flatten)]
        conn: Conn,
        /// Key.
        key: String,
        #[command(flatten)]
        device: DeviceOpt,
    },
}

/// `keel policy allow|deny` arguments.
#[derive(Args)]
pub struct RuleArgs {
    #[command(flatten)]
    conn: Conn,
    /// A host name (`api.example.com`), `*.DOMAIN` (every name under it), or a network
    /// (`10.0.0.0/8`, `192.168.1.20`, `2001:db8::/32`).
    target: String,
    /// Only this port.
    #[arg(long)]
    port: Option<u16>,
    /// Only this scheme.
    #[arg(long, value_parser = ["http", "https", "mqtt", "mqtts"])]
    scheme: Option<String>,
    /// Put the rule before every other rule (default: after them). The first match decides.
    #[arg(long)]
    first: bool,
}

/// `keel policy ...`.
#[derive(Subcommand)]
pub enum PolicyCmd {
    /// Show the rules in the order they are tried, the operator's rules and the default.
    List(Conn),
    /// Allow a destination (needs an admin token).
    ///
    ///   keel policy allow api.example.com --scheme https
    ///   keel policy allow 10.20.0.5 --port 8883 --scheme mqtts   # a private broker
    ///   keel policy allow '*.example.com'
    /// A host rule never allows a private address by itself: the address the name resolves to
    /// must be public or allowed by a network rule.
    #[command(verbatim_doc_comment)]
    Allow(RuleArgs),
    /// Deny a destination (needs an admin token).
    ///
    ///   keel policy deny '*.ads.example.com' --first
    ///   keel policy deny 203.0.113.0/24
    #[command(verbatim_doc_comment)]
    Deny(RuleArgs),
    /// Remove a rule by id (see `keel policy list`).
    Remove {
        #[command(flatten)]
        conn: Conn,
        /// Rule id (`pr-...`).
        id: String,
    },
}

fn scope_str(device: &Option<String>) -> String {
    device.as_deref().map_or("account-wide".into(), |d| format!("device {}", escape(d)))
}

fn print_config(e: &ConfigEntryJson) {
    match &e.value {
        Some(v) => println!("{}", escape(v)),
        None => println!("(binary, base64) {}", e.value_base64),
    }
}

/// `keel config ...`.
pub fn config(cmd: ConfigCmd, json: bool) -> Result<(), String> {
    match cmd {
        ConfigCmd::Set { conn, key, value, from_file, device } => {
            let value = match (value, from_file) {
                (Some(v), _) => v,
                (None, Some(f)) => std::fs::read_to_string(&f)
                    .map_err(|e| format!("cannot read {}: {e} (the value must be UTF-8 text)", f.display()))?,
                (None, None) => return Err("give a VALUE or --from-file FILE".into()),
            };
            let e =
                conn.client()?.config_set(&key, &SetValue::text(value), device.device.as_deref()).map_err(api_error)?;
            if json {
                return print_json(&e);
            }
            println!("set {} ({}, {} bytes)", escape(&e.key), scope_str(&e.device_id), e.size);
            Ok(())
        }
        ConfigCmd::Get { conn, key, device } => {
            let e = conn.client()?.config_get(&key, device.device.as_deref()).map_err(api_error)?;
            if json {
                return print_json(&e);
            }
            print_config(&e);
            Ok(())
        }
        ConfigCmd::List { conn, device } => {
            let list = conn.client()?.config_list(device.device.as_deref()).map_err(api_error)?;
            if json {
                return print_json(&list);
            }
            if list.is_empty() {
                println!("no config values ({}); `keel config set KEY VALUE` sets one", scope_str(&device.device));
                return Ok(());
            }
            println!("{:<40} {:<20} VALUE", "KEY", "UPDATED");
            for e in &list {
                let v = e.value.as_deref().map_or_else(|| format!("(binary) {}", e.value_base64), |v| escape(v).into());
                println!("{:<40} {:<20} {v}", escape(&e.key), time_str(e.updated_at_us));
            }
            Ok(())
        }
        ConfigCmd::Delete { conn, key, device } => {
            conn.client()?.config_delete(&key, device.device.as_deref()).map_err(api_error)?;
            if json {
                return print_json(&serde_json::json!({ "deleted": key, "device": device.device }));
            }
            println!("deleted {} ({})", escape(&key), scope_str(&device.device));
            Ok(())
        }
    }
}

/// The secret's value: the argument, else stdin without one trailing newline.
fn secret_value(value: Option<String>) -> Result<String, String> {
    if let Some(v) = value {
        return Ok(v);
    }
    use std::io::IsTerminal;
    if std::io::stdin().is_terminal() {
        eprintln!("keel: type the secret, then Ctrl-D (it is not echoed back, but is visible while typing)");
    }
    let mut buf = Vec::new();
    std::io::stdin().take(64 << 10).read_to_end(&mut buf).map_err(|e| format!("cannot read stdin: {e}"))?;
    let mut s = String::from_utf8(buf).map_err(|_| "the secret on stdin is not UTF-8 text".to_string())?;
    if s.ends_with('\n') {
        s.pop();
        if s.ends_with('\r') {
            s.pop();
        }
    }
    if s.is_empty() {
        return Err("no secret on stdin: give VALUE or pipe it in (`keel secrets set KEY < file`)".into());
    }
    Ok(s)
}

fn print_secrets(list: &[SecretJson]) {
    println!("{:<40} {:<8} {:>6} UPDATED", "KEY", "SCOPE", "BYTES");
    for s in list {
        println!("{:<40} {:<8} {:>6} {}", escape(&s.key), escape(&s.scope), s.size, time_str(s.updated_at_us));
    }
}

/// `keel secrets ...`.
pub fn secrets(cmd: SecretsCmd, json: bool) -> Result<(), String> {
    match cmd {
        SecretsCmd::Set { conn, key, value, device } => {
            let api = conn.client()?;
            let value = secret_value(value)?;
            let s = api.secret_set(&key, &SetValue::text(value), device.device.as_deref()).map_err(api_error)?;
            if json {
                return print_json(&s);
            }
            println!("secret {} set ({}, {} bytes)", escape(&s.key), scope_str(&s.device_id), s.size);
            Ok(())
        }
        SecretsCmd::List { conn, device } => {
            let list = conn.client()?.secret_list(device.device.as_deref()).map_err(api_error)?;
            if json {
                return print_json(&list);
            }
            if list.is_empty() {
                println!("no secrets ({}); `keel secrets set KEY` sets one", scope_str(&device.device));
                return Ok(());
            }
            print_secrets(&list);
            Ok(())
        }
        SecretsCmd::Delete { conn, key, device } => {
            conn.client()?.secret_delete(&key, device.device.as_deref()).map_err(api_error)?;
            if json {
                return print_json(&serde_json::json!({ "deleted": key, "device": device.device }));
            }
            println!("deleted secret {} ({})", escape(&key), scope_str(&device.device));
            Ok(())
        }
    }
}

fn rule_line(r: &PolicyRuleJson) -> String {
    let port = r.port.map_or("any".into(), |p| p.to_string());
    let scheme = r.scheme.as_deref().unwrap_or("any");
    format!("{:<16} {:<6} {:<40} {:<6} {}", escape(&r.id), escape(&r.action), escape(&r.target), port, escape(scheme))
}

/// `keel policy ...`.
pub fn policy(cmd: PolicyCmd, json: bool) -> Result<(), String> {
    let add = |a: RuleArgs, action: &str| -> Result<(), String> {
        let new =
            NewPolicyRule { action: action.into(), target: a.target, port: a.port, scheme: a.scheme, first: a.first };
        let r = a.conn.client()?.policy_add(&new).map_err(api_error)?;
        if json {
            return print_json(&r);
        }
        println!("added {}", rule_line(&r));
        Ok(())
    };
    match cmd {
        PolicyCmd::List(conn) => {
            let p = conn.client()?.policy().map_err(api_error)?;
            if json {
                return print_json(&p);
            }
            println!("{:<16} {:<6} {:<40} {:<6} SCHEME", "ID", "ACTION", "TARGET", "PORT");
            for r in p.rules.iter().chain(&p.operator_rules) {
                println!("{}", rule_line(r));
            }
            if p.rules.is_empty() && p.operator_rules.is_empty() {
                println!("(no rules)");
            }
            println!("\nthe first matching rule decides; with none: {}", p.default);
            Ok(())
        }
        PolicyCmd::Allow(a) => add(a, "allow"),
        PolicyCmd::Deny(a) => add(a, "deny"),
        PolicyCmd::Remove { conn, id } => {
            conn.client()?.policy_remove(&id).map_err(api_error)?;
            if json {
                return print_json(&serde_json::json!({ "removed": id }));
            }
            println!("removed rule {}", escape(&id));
            Ok(())
        }
    }
}
