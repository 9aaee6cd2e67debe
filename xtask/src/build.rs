//! Building the firmware, the C example app and the host tools.

use std::path::PathBuf;
use std::process::Command;

use crate::{cargo, provision, sh};

/// Repository root.
pub fn root() -> PathBuf {
    keel_vdev::repo_root()
}

/// Builds the visor and the Rust example apps (release, with debug info).
pub fn firmware() -> Result<(), String> {
    sh(cargo().current_dir(root().join("firmware")).args(["build", "--release", "--workspace"]))
}

/// Builds the C example apps with the Arm GNU toolchain: `hello-c`, and `freertos-stress`, whose
/// Makefile gets the FreeRTOS kernel sources through cargo (the `freertos-next` crate).
pub fn c_apps() -> Result<(), String> {
    let out = root().join("target/c-apps");
    std::fs::create_dir_all(&out).map_err(|e| e.to_string())?;
    for app in ["hello-c", "debuggee-c", "freertos-stress", "freertos-channels"] {
        sh(Command::new("make")
            .arg("-s")
            .arg("-C")
            .arg(root().join("sdk/c/examples").join(app))
            .arg(format!("BUILD={}", out.display())))?;
    }
    // The Microvisor compatibility layer's conformance apps: C written against `mv_syscalls.h`
    // alone, built with plain arm-none-eabi-gcc.
    for app in ["mv-http-get", "mv-config", "mv-mqtt", "mv-update"] {
        sh(Command::new("make")
            .arg("-s")
            .arg("-C")
            .arg(root().join("sdk/c/compat/examples").join(app))
            .arg(format!("BUILD={}", out.display())))?;
    }
    Ok(())
}

/// Builds everything that runs on a virtual device.
pub fn all() -> Result<(), String> {
    provision::ensure()?;
    firmware()?;
    c_apps()?;
    Ok(())
}
