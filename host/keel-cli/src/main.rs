//! `keel`: run the Keel server, provision devices, look at devices and their logs, and ship
//! signed updates (keys, bundles, uploads, deployments).
//!
//! Client commands find the server and token in `--server`/`--token`, `KEEL_SERVER` /
//! `KEEL_TOKEN`, or the config file `keel login` writes. Every command accepts `--json` for
//! machine-readable output.

mod client;
mod config;
mod crash;
mod debug;
mod ota;
mod server;
mod settings;

use clap::{Parser, Subcommand};

/// Keel: an open microvisor for Cortex-M33 with TrustZone. This tool runs the self-hosted server
/// and talks to it.
///
/// Shipping an update:
///   keel keys new --out release              # once: release.key (secret) + release.pub
///   keel keys add release.pub --name release # once per account
///   keel bundle app.elf --key release.key --version 1.2.0
///   keel apps upload hello-1.2.0.keelb
///   keel deploy hello@1.2.0 --tag field      # or --device ID
///   keel devices show ID                     # target, state, progress
#[derive(Parser)]
#[command(name = "keel", version, propagate_version = true, verbatim_doc_comment)]
struct Cli {
    /// Print JSON instead of tables and text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run or set up the server.
    #[command(subcommand)]
    Server(server::ServerCmd),
    /// Create and inspect devices.
    #[command(subcommand)]
    Device(client::DeviceCmd),
    /// List devices (same as `keel device list`); `keel devices show ID` etc. as `keel device`.
    #[command(args_conflicts_with_subcommands = true)]
    Devices {
        #[command(subcommand)]
        cmd: Option<client::DeviceCmd>,
        #[command(flatten)]
        conn: client::Conn,
        /// Only devices with this tag.
        #[arg(long)]
        tag: Option<String>,
    },
    /// Show a device's logs; `--follow` streams new ones live.
    Logs(client::LogsArgs),
    /// Check a server URL and token and save them in the config file for later commands.
    Login(client::LoginArgs),
    /// Create, list and revoke API tokens.
    #[command(subcommand)]
    Token(client::TokenCmd),
    /// Bundle signing keys: make a key pair, register and revoke public keys on the server.
    #[command(subcommand)]
    Keys(ota::KeysCmd),
    /// Build a signed update bundle from an app ELF (offline; needs the secret key).
    #[command(disable_version_flag = true)]
    Bundle(ota::BundleArgs),
    /// Upload and list update bundles.
    #[command(subcommand)]
    Apps(ota::AppsCmd),
    /// Make a bundle the target of a device or of every device with a tag.
    Deploy(ota::DeployArgs),
    /// Debug a device's app with gdb: serves the GDB remote protocol on 127.0.0.1 and talks to
    /// the device through an end-to-end encrypted session (see docs/debugging.md).
    ///
    ///   keel keys new --debug --out me                   # once: me.debug.key + me.debug.pub
    ///   keel bundle app.elf --key release.key --version 1.2.0 --debug-key me.debug.pub
    ///   keel debug DEVICE --key me.debug.key --elf app.elf
    ///   gdb-multiarch app.elf -ex 'target extended-remote :8001'
    #[command(verbatim_doc_comment)]
    Debug(debug::DebugArgs),
    /// Crash dumps from devices: list, show, and serve one to gdb for a post-mortem (`bt`).
    #[command(subcommand)]
    Crash(crash::CrashCmd),
    /// Config values apps fetch through their device's link (account-wide or per device).
    ///
    ///   keel config set mqtt/main/host broker.example.com
    ///   keel config set sample-rate 10 --device ID
    ///   keel config list --json
    #[command(subcommand, verbatim_doc_comment)]
    Config(settings::ConfigCmd),
    /// Secrets apps fetch through their device's link: encrypted at rest, write-only.
    ///
    ///   keel secrets set mqtt/main/password < pw.txt   # VALUE from stdin: not in shell history
    ///   keel secrets list
    #[command(subcommand, verbatim_doc_comment)]
    Secrets(settings::SecretsCmd),
    /// Which destinations the server may connect to for devices (HTTP(S), MQTT): rules, first
    /// match wins; by default public addresses over https and mqtts only.
    ///
    ///   keel policy allow 10.20.0.5 --port 8883 --scheme mqtts
    ///   keel policy list
    #[command(subcommand, verbatim_doc_comment)]
    Policy(settings::PolicyCmd),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Server(c) => server::run(c, cli.json),
        Cmd::Device(c) => client::device(c, cli.json),
        Cmd::Devices { cmd: Some(c), .. } => client::device(c, cli.json),
        Cmd::Devices { cmd: None, conn, tag } => client::device(client::DeviceCmd::List { conn, tag }, cli.json),
        Cmd::Logs(a) => client::logs(a, cli.json),
        Cmd::Login(a) => client::login(a, cli.json),
        Cmd::Token(c) => client::token(c, cli.json),
        Cmd::Keys(c) => ota::keys(c, cli.json),
        Cmd::Bundle(a) => ota::bundle(a, cli.json),
        Cmd::Apps(c) => ota::apps(c, cli.json),
        Cmd::Deploy(a) => ota::deploy(a, cli.json),
        Cmd::Debug(a) => debug::command(a, cli.json),
        Cmd::Crash(c) => crash::command(c, cli.json),
        Cmd::Config(c) => settings::config(c, cli.json),
        Cmd::Secrets(c) => settings::secrets(c, cli.json),
        Cmd::Policy(c) => settings::policy(c, cli.json),
    };
    match r {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            if cli.json {
                // `error` stays the message; an API error adds its machine-readable code and status.
                let mut v = serde_json::json!({ "error": e });
                if let Some((code, status)) = client::last_api_error() {
                    v["code"] = code.into();
                    v["status"] = status.into();
                }
                println!("{v}");
            } else {
                eprintln!("error: {}", client::escape(&e));
            }
            std::process::ExitCode::FAILURE
        }
    }
}
