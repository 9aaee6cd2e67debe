//! `cargo xtask qemu` and `cargo xtask demo`: virtual devices for people to watch.

use std::path::{Path, PathBuf};
use std::time::Duration;

use keel_flash::layout;
use keel_vdev::qemu::{Clock, Device};
use keel_vdev::{elf, flash};

use crate::build;

/// Creates the flash file if needed and programs `app` (if given) into app slot A.
pub fn prepare_device(flash_path: &Path, app: Option<&str>) -> Result<(), String> {
    if let Some(dir) = flash_path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    }
    if !flash_path.exists() {
        let f = flash::new_factory().map_err(|e| e.to_string())?;
        flash::create(flash_path, &f).map_err(|e| e.to_string())?;
        eprintln!(
            "xtask: new virtual device {} ({})",
            String::from_utf8_lossy(&f.device_id_ascii()),
            flash_path.display()
        );
    }
    if let Some(app) = app {
        let elf_path = keel_vdev::app_elf(app);
        let image = elf::image_from_elf(&elf_path, env!("CARGO_PKG_VERSION"))
            .map_err(|e| format!("{}: {e}", elf_path.display()))?;
        flash::program_app(flash_path, layout::APP_A, &image).map_err(|e| e.to_string())?;
        eprintln!("xtask: programmed '{}' ({} bytes) into slot {}", app, image.image.len(), layout::APP_A.name);
    }
    Ok(())
}

fn usage(msg: &str) -> String {
    format!("{msg}\nusage: cargo xtask qemu --app NAME [--seconds N] [--device FILE] [--deterministic]\napps: hello, hello-c, crashy, evil, bench")
}

/// `cargo xtask qemu`.
pub fn qemu(args: &[String]) -> Result<(), String> {
    let mut app = None;
    let mut seconds = None;
    let mut device = None;
    let mut clock = Clock::RealTime;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--app" => app = Some(it.next().ok_or_else(|| usage("--app needs a name"))?.clone()),
            "--seconds" => {
                let v = it.next().ok_or_else(|| usage("--seconds needs a number"))?;
                seconds = Some(v.parse::<u64>().map_err(|_| usage(&format!("--seconds: '{v}' is not a number")))?);
            }
            "--device" => device = Some(PathBuf::from(it.next().ok_or_else(|| usage("--device needs a file"))?)),
            "--deterministic" => clock = Clock::Deterministic,
            other => return Err(usage(&format!("unknown option '{other}'"))),
        }
    }
    if app.is_none() && device.is_none() {
        return Err(usage("say which app to run (--app) or which device to boot (--device)"));
    }
    if let Some(a) = &app {
        if !["hello", "hello-c", "crashy", "evil", "bench"].contains(&a.as_str()) {
            return Err(usage(&format!("unknown app '{a}'")));
        }
    }
    build::all()?;
    let flash_path = device
        .unwrap_or_else(|| build::root().join(format!("target/devices/{}.flash", app.as_deref().unwrap_or("device"))));
    prepare_device(&flash_path, app.as_deref())?;
    let dev = Device { visor: keel_vdev::visor_elf(), flash: flash_path, clock };
    let mut running = dev.start().map_err(|e| e.to_string())?;
    running.echo = true;
    running.run_for(seconds.map_or(Duration::from_secs(u64::MAX / 4), Duration::from_secs));
    running.kill();
    Ok(())
}

/// `cargo xtask demo`.
pub fn demo() -> Result<(), String> {
    build::all()?;
    let dir = build::root().join("target/demo");
    let _ = std::fs::remove_dir_all(&dir);
    let flash_path = dir.join("device.flash");

    println!("\n=== Keel demo 1/2: a virtual device boots the visor, which verifies and starts the 'hello' app ===\n");
    prepare_device(&flash_path, Some("hello"))?;
    let dev = Device { visor: keel_vdev::visor_elf(), flash: flash_path.clone(), clock: Clock::RealTime };
    let mut r = dev.start().map_err(|e| e.to_string())?;
    r.echo = true;
    r.run_for(Duration::from_secs(4));
    r.kill();

    println!("\n=== Keel demo 2/2: 'crashy' faults; the visor reports the crash and restarts it with backoff ===\n");
    prepare_device(&flash_path, Some("crashy"))?;
    let dev = Device { clock: Clock::Deterministic, ..dev };
    let mut r = dev.start().map_err(|e| e.to_string())?;
    r.echo = true;
    let restarts = |l: &str| l.contains("starting app 'crashy'") && l.contains("restarts=3");
    r.wait_for("third restart", Duration::from_secs(60), restarts).map_err(|e| e.to_string())?;
    r.kill();
    println!(
        "\nThe device's flash file is {} (boot it again: cargo xtask qemu --device {}).",
        flash_path.display(),
        flash_path.display()
    );
    Ok(())
}
