//! `cargo xtask`: the single entry point for building, testing, running and measuring Keel.
//!
//! Every command first makes sure the machine has what it needs (QEMU, gdb-multiarch, the Arm
//! GNU toolchain, the Rust target) and installs it when it can.

mod bench;
mod build;
mod provision;
mod run;
mod test;

use std::process::ExitCode;

const HELP: &str = "\
cargo xtask <command> [options]

Commands:
  build                      build the visor, the example apps (Rust and C) and host tools
  test                       run every test: formatting, clippy, host unit tests, firmware build,
                             QEMU tests (this is what CI runs)
  demo                       build everything and boot a virtual device running the sample app
  qemu --app NAME            boot a virtual device with an example app, console to stdout
       [--seconds N]         stop after N seconds of wall time (default: run until Ctrl-C)
       [--device FILE]       use (or create) this flash file instead of target/devices/NAME.flash
       [--deterministic]     run with -icount shift=0,sleep=off (repeatable virtual time)
  bench                      measure sizes and speeds; writes target/bench/report.json

Example apps: hello, hello-c, crashy, hang, evil, bench.
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("build") => build::all().map(|_| ()),
        Some("test") => test::run(),
        Some("demo") => run::demo(),
        Some("qemu") => run::qemu(&args[1..]),
        Some("bench") => bench::run(),
        Some("help") | Some("--help") | Some("-h") | None => {
            print!("{HELP}");
            Ok(())
        }
        Some(other) => Err(format!("unknown command '{other}'\n\n{HELP}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs a command, echoing it; fails with its exit status.
pub fn sh(cmd: &mut std::process::Command) -> Result<(), String> {
    eprintln!("$ {}", show(cmd));
    let status = cmd.status().map_err(|e| format!("cannot run {}: {e}", show(cmd)))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`{}` failed ({status})", show(cmd)))
    }
}

fn show(cmd: &std::process::Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().to_string();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// `cargo` as invoked by the user (respects `$CARGO`).
pub fn cargo() -> std::process::Command {
    std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}
