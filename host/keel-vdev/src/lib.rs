//! # keel-vdev: virtual Keel devices
//!
//! A virtual device is QEMU's `mps2-an505` running the Keel visor, with its own 16 MiB flash
//! file (the board's file-backed `mps.ram`) that survives restarts and `kill -9`. This crate:
//!
//! * turns an app ELF file into a Keel app image ([`elf`]),
//! * creates flash files holding factory data and programs app slots ([`flash`]),
//! * starts QEMU and captures the console line by line ([`qemu`]).
//!
//! It is used by `cargo xtask` (qemu, demo, bench) and by the QEMU integration tests.

pub mod elf;
pub mod flash;
pub mod qemu;

use std::path::PathBuf;

/// The repository root (two levels above this crate).
pub fn repo_root() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.parent().and_then(|p| p.parent()).map(PathBuf::from).unwrap_or(here)
}

/// Where `cargo xtask build` puts the firmware: `firmware/target/thumbv8m.main-none-eabi/release`.
pub fn firmware_dir() -> PathBuf {
    repo_root().join("firmware/target/thumbv8m.main-none-eabi/release")
}

/// The visor ELF.
pub fn visor_elf() -> PathBuf {
    firmware_dir().join("keel-visor")
}

/// The ELF of an example app (`hello`, `crashy`, `evil`, `bench`, or `hello-c`).
pub fn app_elf(name: &str) -> PathBuf {
    if name.ends_with("-c") {
        repo_root().join(format!("target/c-apps/{name}.elf"))
    } else {
        firmware_dir().join(name)
    }
}

/// The marker the `hostile` app keeps in its image: the attack it runs (see
/// `firmware/apps/hostile`).
const HOSTILE_MARKER: &[u8; 16] = b"@@hostile-mode@@";

/// The `hostile` app's ELF file with its attack marker replaced by `attack` (at most 16 bytes,
/// NUL-padded): one build, every attack.
pub fn hostile_elf(attack: &str) -> Result<Vec<u8>, String> {
    if attack.len() > 16 {
        return Err(format!("attack names have at most 16 bytes: {attack}"));
    }
    let path = app_elf("hostile");
    let mut data =
        std::fs::read(&path).map_err(|e| format!("{}: {e} (build it: cargo xtask build)", path.display()))?;
    let at: Vec<usize> = data.windows(16).enumerate().filter(|(_, w)| w == HOSTILE_MARKER).map(|(i, _)| i).collect();
    let [at] = at[..] else {
        return Err(format!("{}: the attack marker occurs {} times, not once", path.display(), at.len()));
    };
    let mut m = [0u8; 16];
    m[..attack.len()].copy_from_slice(attack.as_bytes());
    data[at..at + 16].copy_from_slice(&m);
    Ok(data)
}
