//! `keel`: run the Keel server, provision devices, and look at devices and their logs.
//!
//! Client commands find the server and token in `--server`/`--token`, `KEEL_SERVER` /
//! `KEEL_TOKEN`, or the config file `keel login` writes. Every command accepts `--json` for
//! machine-readable output.

mod client;
mod config;
mod server;

use clap::{Parser, Subcommand};

/// Keel: an open microvisor for Cortex-M33 with TrustZone. This tool runs the self-hosted server
/// and talks to it.
#[derive(Parser)]
#[command(name = "keel", version, propagate_version = true)]
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
    /// List devices (same as `keel device list`).
    Devices {
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
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Server(c) => server::run(c, cli.json),
        Cmd::Device(c) => client::device(c, cli.json),
        Cmd::Devices { conn, tag } => client::device(client::DeviceCmd::List { conn, tag }, cli.json),
        Cmd::Logs(a) => client::logs(a, cli.json),
        Cmd::Login(a) => client::login(a, cli.json),
        Cmd::Token(c) => client::token(c, cli.json),
    };
    match r {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            if cli.json {
                println!("{}", serde_json::json!({ "error": e }));
            } else {
                eprintln!("error: {e}");
            }
            std::process::ExitCode::FAILURE
        }
    }
}
