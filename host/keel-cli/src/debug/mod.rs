//! `keel debug`: remote GDB debugging of a device's app.
//!
//! The GDB remote-protocol server runs here, on the developer's machine; the device runs only a
//! small agent (`keel_debug::agent`), reached through an end-to-end encrypted session the Keel
//! server relays ([`remote`]). A round trip to a device can take hundreds of milliseconds, so
//! the server answers what it can locally and batches the rest ([`target`]).
//!
//! * [`probe`]: the boundary to the device (one batch of agent ops per round trip, events).
//! * [`server`]: the RSP server; [`rsp`]: its framing; [`regs`]: the target description.
//! * [`target`]: registers, memory cache, breakpoints and single step over a probe.
//! * [`board`]: the app's memory on the reference board; [`elf`]: code bytes from the ELF file.
//! * [`sim`]: a simulated device, for the tests and `--simulate`.

pub mod board;
pub mod elf;
pub mod probe;
pub mod regs;
pub mod remote;
pub mod rsp;
pub mod server;
#[cfg_attr(not(test), allow(dead_code))] // the tests look inside
pub mod sim;
pub mod target;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Args;

use crate::client::Conn;
use probe::Probe;
use server::{End, Session};
use target::{Debuggee, Fail};

/// `keel debug`.
#[derive(Args)]
pub struct DebugArgs {
    #[command(flatten)]
    conn: Conn,
    /// The device to debug (its id, see `keel devices`).
    #[arg(required_unless_present = "simulate")]
    device: Option<String>,
    /// Secret debug key (NAME.debug.key from `keel keys new --debug`); the app must have been
    /// bundled with its public key (`keel bundle --debug-key NAME.debug.pub`).
    #[arg(long, required_unless_present = "simulate")]
    key: Option<PathBuf>,
    /// The app's ELF file: gdb's symbols come from gdb's own copy, but with it here code bytes
    /// are read from the file instead of the device (faster over slow links).
    #[arg(long)]
    elf: Option<PathBuf>,
    /// TCP port for gdb on 127.0.0.1 (0: any free port).
    #[arg(long, default_value_t = 8001)]
    port: u16,
    /// Write statistics (gdb packets, device round trips, cache hits) as JSON to FILE at exit.
    #[arg(long, value_name = "FILE")]
    stats: Option<PathBuf>,
    /// Debug a simulated device instead (no server needed): try gdb and editor setups.
    #[arg(long, hide = true)]
    simulate: bool,
}

/// What [`run`] needs besides the device.
#[derive(Clone, Debug)]
pub struct Options {
    /// TCP port on 127.0.0.1 (0: any).
    pub port: u16,
    /// The app's ELF file.
    pub elf: Option<PathBuf>,
    /// Where to write the stats.
    pub stats: Option<PathBuf>,
    /// Print JSON lines instead of text.
    pub json: bool,
}

/// `keel debug ...`.
pub fn command(a: DebugArgs, json: bool) -> Result<(), String> {
    let opts = Options { port: a.port, elf: a.elf, stats: a.stats, json };
    if a.simulate {
        return run(&opts, || Ok(Box::new(sim::SimProbe::demo().0)));
    }
    let (Some(device), Some(key_path)) = (a.device, a.key) else {
        return Err("DEVICE and --key are required".into());
    };
    let key = read_debug_secret(&key_path)?;
    let conn = a.conn;
    run(&opts, move || remote::connect(&conn, &device, &key))
}

/// The 32 bytes of 64 hex digits (surrounding white space ignored).
pub fn parse_key_hex(text: &str) -> Option<[u8; 32]> {
    let t = text.trim();
    if t.len() != 64 {
        return None;
    }
    rsp::unhex(t.as_bytes())?.try_into().ok()
}

/// Reads a secret debug key file (`NAME.debug.key`).
pub fn read_debug_secret(path: &Path) -> Result<[u8; 32], String> {
    if path.to_string_lossy().ends_with(".pub") {
        return Err(format!("{} is a public key: --key takes the secret one (NAME.debug.key)", path.display()));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    parse_key_hex(&text)
        .ok_or_else(|| format!("{}: not a debug key (64 hex digits, made by `keel keys new --debug`)", path.display()))
}

/// Serves one gdb connection on `127.0.0.1:PORT` with the probe `probe_factory` makes: prints
/// `GDB server listening on 127.0.0.1:PORT`, halts the app when gdb connects, and returns
/// when gdb detaches, kills or disconnects (a disconnect detaches: breakpoints out, app
/// resumed). The probe is made before listening, so a refused session fails at once.
pub fn run(opts: &Options, probe_factory: impl FnOnce() -> Result<Box<dyn Probe>, String>) -> Result<(), String> {
    let code = match &opts.elf {
        None => None,
        Some(p) => {
            let bytes = std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
            Some(elf::CodeImage::from_elf(&bytes).map_err(|e| format!("{}: {e}", p.display()))?)
        }
    };
    if let (Some(c), Some(p)) = (&code, &opts.elf) {
        eprintln!("keel debug: {} bytes of code from {}", c.len(), p.display());
    }
    let probe = probe_factory()?;
    let mut d = Debuggee::new(probe, code);
    let listener = TcpListener::bind(("127.0.0.1", opts.port))
        .map_err(|e| format!("cannot listen on 127.0.0.1:{}: {e} (choose another --port)", opts.port))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    // stdout may be a pipe whose reader only wanted this line: never fail on it.
    if opts.json {
        say(&serde_json::json!({ "listening": addr.to_string() }).to_string());
    } else {
        say(&format!("GDB server listening on {addr}"));
        eprintln!("keel debug: connect with: gdb-multiarch app.elf -ex 'target extended-remote {addr}'");
    }

    // Wait for gdb, keeping the device session alive.
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    let mut last_idle = Instant::now();
    let stream = loop {
        match listener.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(50));
                if last_idle.elapsed() >= Duration::from_secs(1) {
                    last_idle = Instant::now();
                    if let Err(e) = d.idle() {
                        return Err(lost(&e.0));
                    }
                }
            }
            Err(e) => return Err(format!("accepting gdb's connection: {e}")),
        }
    };
    drop(listener);
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_nodelay(true);
    let reader = stream.try_clone().map_err(|e| e.to_string())?;
    let mut session = Session::new(d, stream, Some(server::spawn_reader(reader)));
    let result = session.serve();
    let end = match &result {
        Ok(End::Detached) => "detached",
        Ok(End::Disconnected) => "gdb disconnected",
        Ok(End::Killed) => "killed",
        Err(_) => "error",
    };
    if let Some(path) = &opts.stats {
        let mut v = serde_json::to_value(&session.d.stats).unwrap_or_default();
        v["gdb_packets"] = session.packets.into();
        v["device_round_trips"] = session.d.round_trips().into();
        v["end"] = end.into();
        std::fs::write(path, format!("{v}\n")).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    match result {
        Ok(e) => {
            let what = match e {
                End::Detached | End::Disconnected => "the app runs on, without breakpoints",
                End::Killed => "the app was restarted",
            };
            let (packets, trips) = (session.packets, session.d.round_trips());
            if opts.json {
                say(&serde_json::json!({ "end": end, "gdb_packets": packets, "device_round_trips": trips }).to_string());
            } else {
                say(&format!("{end}: {what} ({packets} gdb packets, {trips} device round trips)"));
            }
            Ok(())
        }
        Err(Fail::Probe(e)) => Err(lost(&e.0)),
        Err(Fail::Target(msg)) => Err(format!("{msg}; gdb was disconnected")),
    }
}

/// A line on stdout; a closed stdout is not an error.
fn say(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}").and_then(|_| out.flush());
}

fn lost(why: &str) -> String {
    format!(
        "the debug session with the device ended: {why}. gdb was disconnected; check that the device is online \
         (`keel devices show ID`) and run `keel debug` again"
    )
}
