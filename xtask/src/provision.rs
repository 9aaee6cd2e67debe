//! Makes sure the machine has the tools Keel needs, installing them when possible.

use std::process::Command;

use crate::sh;

const APT_PACKAGES: &[&str] = &[
    "qemu-system-arm",
    "gdb-multiarch",
    "gcc-arm-none-eabi",
    "binutils-arm-none-eabi",
    "make",
    "mosquitto",
    "mosquitto-clients",
];
const TOOLS: &[(&str, &str)] = &[
    ("qemu-system-arm", "qemu-system-arm"),
    ("gdb-multiarch", "gdb-multiarch"),
    ("arm-none-eabi-gcc", "gcc-arm-none-eabi"),
    ("arm-none-eabi-objdump", "binutils-arm-none-eabi"),
    ("make", "make"),
    ("mosquitto", "mosquitto"),
    ("mosquitto_pub", "mosquitto-clients"),
];
const RUST_TARGET: &str = "thumbv8m.main-none-eabi";

fn have(tool: &str) -> bool {
    Command::new("sh").arg("-c").arg(format!("command -v {tool} >/dev/null 2>&1")).status().is_ok_and(|s| s.success())
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Installs missing system tools and the Rust target.
/// PostgreSQL server binaries (Debian installs them outside PATH).
fn have_postgres() -> bool {
    std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| rd.flatten().any(|e| e.path().join("bin/initdb").exists()))
        .unwrap_or(false)
        || have("initdb")
}

pub fn ensure() -> Result<(), String> {
    let mut missing: Vec<&str> = TOOLS.iter().filter(|(t, _)| !have(t)).map(|(_, p)| *p).collect();
    if !have_postgres() {
        missing.push("postgresql");
    }
    if !missing.is_empty() {
        let install = format!("apt-get update && apt-get install -y {}", APT_PACKAGES.join(" "));
        if have("apt-get") && (is_root() || have("sudo")) {
            eprintln!("xtask: installing missing tools ({})", missing.join(", "));
            let prefix = if is_root() { "" } else { "sudo " };
            let cmd = format!(
                "{prefix}apt-get update -qq && {prefix}env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq {}",
                APT_PACKAGES.join(" ")
            );
            sh(Command::new("sh").arg("-c").arg(cmd))
                .map_err(|e| format!("{e}\ninstall them yourself with: {install}"))?;
        } else {
            return Err(format!("missing tools: {}\ninstall them with: sudo {install}", missing.join(", ")));
        }
    }
    for (tool, component) in [("clippy", "clippy"), ("fmt", "rustfmt")] {
        let ok = Command::new("cargo").args([tool, "--version"]).output().is_ok_and(|o| o.status.success());
        if !ok {
            sh(Command::new("rustup").args(["component", "add", component]))
                .map_err(|e| format!("{e}\ninstall it with: rustup component add {component}"))?;
        }
    }
    let installed = Command::new("rustup").args(["target", "list", "--installed"]).output();
    match installed {
        Ok(o) if String::from_utf8_lossy(&o.stdout).lines().any(|l| l.trim() == RUST_TARGET) => Ok(()),
        Ok(_) => sh(Command::new("rustup").args(["target", "add", RUST_TARGET]))
            .map_err(|e| format!("{e}\ninstall it with: rustup target add {RUST_TARGET}")),
        Err(_) => Err(format!("rustup not found; install the Rust target with: rustup target add {RUST_TARGET}")),
    }
}
