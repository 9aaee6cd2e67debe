//! `cargo xtask test`: every test, in the order that fails fastest.

use crate::build::{self, root};
use crate::{cargo, sh};

/// Runs formatting and lint checks, host tests, the firmware build and the QEMU tests.
pub fn run() -> Result<(), String> {
    build::all()?;
    eprintln!("\n== formatting");
    sh(cargo().current_dir(root()).args(["fmt", "--all", "--", "--check"]))?;
    sh(cargo().current_dir(root().join("firmware")).args(["fmt", "--all", "--", "--check"]))?;
    eprintln!("\n== clippy");
    // Every feature except `keel-cli/s3` (S3 object storage): it builds aws-lc from C sources,
    // minutes on a 2-core CI machine. Check it with `cargo clippy -p keel-cli --features s3`.
    sh(cargo().current_dir(root()).args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--features",
        "keel-cli/qemu-tests,keel-vdev/qemu-tests,keel-flash/sim,keel-link/server,keel-bundle/std",
        "--",
        "-D",
        "warnings",
    ]))?;
    sh(cargo().current_dir(root().join("firmware")).args([
        "clippy",
        "--release",
        "--workspace",
        "--",
        "-D",
        "warnings",
    ]))?;
    eprintln!("\n== host unit tests");
    sh(cargo().current_dir(root()).args(["test", "--workspace"]))?;
    eprintln!("\n== QEMU tests");
    sh(cargo().current_dir(root()).args([
        "test",
        "-p",
        "keel-vdev",
        "--features",
        "qemu-tests",
        "--test",
        "qemu",
        "--test",
        "embassy",
        "--test",
        "freertos",
        "--test",
        "hostile",
        "--",
        "--test-threads=2",
    ]))?;
    eprintln!(
        "\n== end to end: server, CLI, QEMU device (logs; over-the-air updates; kill -9 during updates; the hostile-app suite; remote debugging with gdb; app connectivity: HTTPS, MQTT, config and secrets, channels under faults and during an update; the Microvisor-compatible C apps and a FreeRTOS app on channels)"
    );
    sh(cargo().current_dir(root()).args([
        "test",
        "-p",
        "keel-cli",
        "--features",
        "qemu-tests",
        "--test",
        "e2e",
        "--test",
        "ota",
        "--test",
        "hostile",
        "--test",
        "debug",
        "--test",
        "connect",
        "--test",
        "compat",
        "--test",
        "channel_faults",
        "--",
        "--test-threads=2",
    ]))?;
    eprintln!("\nall tests passed");
    Ok(())
}
