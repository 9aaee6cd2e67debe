//! `cargo xtask bench`: sizes and speeds, written to `target/bench/report.json` (a flat JSON
//! object of `"metric": number`) and printed as a table. Speeds are measured in instructions
//! under `-icount shift=0` (1 instruction = 1 ns of virtual time), so they are repeatable.
//!
//! With `KEEL_BENCH_DEVICE_ONLY` set, only the device metrics run (sizes, stack, system call,
//! boot, connect, OTA): no gateway, server-memory or power-cut benchmarks.

use std::time::Duration;

use keel_vdev::qemu::{parse_line, Clock, Device};
use keel_vdev::{elf, flash};

use crate::build::{self, root};

const LIMIT: Duration = Duration::from_secs(300);

fn device(name: &str, app: &str) -> Result<Device, String> {
    let path = root().join(format!("target/bench/{name}.flash"));
    std::fs::create_dir_all(path.parent().unwrap()).map_err(|e| e.to_string())?;
    let f = flash::new_factory().map_err(|e| e.to_string())?;
    flash::create(&path, &f).map_err(|e| e.to_string())?;
    let img = elf::image_from_elf(&keel_vdev::app_elf(app), "1.0.0").map_err(|e| e.to_string())?;
    flash::program_app(&path, keel_flash::layout::APP_A, &img).map_err(|e| e.to_string())?;
    Ok(Device { visor: keel_vdev::visor_elf(), flash: path, clock: Clock::Deterministic })
}

fn value_after<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace().find_map(|w| w.strip_prefix(key))
}

/// Runs the benchmarks.
pub fn run() -> Result<(), String> {
    let device_only = std::env::var_os("KEEL_BENCH_DEVICE_ONLY").is_some();
    build::all()?;
    let mut metrics: Vec<(&str, f64, &str)> = Vec::new();

    // Sizes of the visor image.
    let sections = elf::sections(&keel_vdev::visor_elf()).map_err(|e| e.to_string())?;
    let flash_bytes = visor_flash_bytes(&keel_vdev::visor_elf())?;
    let static_ram: u64 = sections.iter().filter(|s| s.0 == ".data" || s.0 == ".bss").map(|s| s.2).sum();
    metrics.push(("visor_flash_bytes", flash_bytes as f64, "code + read-only data + NSC table + .data image"));

    // Stack high-water over the evil app's full attack sequence (every fault path, every call).
    let dev = device("evil", "evil")?;
    let mut r = dev.start().map_err(|e| e.to_string())?;
    r.wait_for("evil done", LIMIT, |l| l.ends_with("evil: all attacks done")).map_err(|e| e.to_string())?;
    r.wait_for("one more sanity round", LIMIT, |l| l.contains("evil: sanity")).map_err(|e| e.to_string())?;
    let lines = r.kill();
    let mut stack = 0u64;
    for l in &lines {
        if let (Some(m), Some(i)) = (value_after(l, "main="), value_after(l, "idle=")) {
            stack = stack.max(m.parse::<u64>().unwrap_or(0) + i.parse::<u64>().unwrap_or(0));
        }
    }
    metrics.push(("visor_ram_bytes", (static_ram + stack) as f64, "static data + stack high-water (evil run)"));
    metrics.push(("visor_static_ram_bytes", static_ram as f64, ".data + .bss"));
    metrics.push(("visor_stack_high_water_bytes", stack as f64, "max over the evil run"));

    // System-call cost and boot time.
    let dev = device("bench", "bench")?;
    let mut r = dev.start().map_err(|e| e.to_string())?;
    let started = r.wait_for("app start", LIMIT, |l| l.contains("starting app 'bench'")).map_err(|e| e.to_string())?;
    let line = r
        .wait_for("bench result", LIMIT, |l| l.contains("bench: syscall_roundtrip_instructions="))
        .map_err(|e| e.to_string())?;
    let latency_line = r
        .wait_for("notification latency", LIMIT, |l| l.contains("bench: notification_latency_instructions="))
        .map_err(|e| e.to_string())?;
    r.kill();
    let latency: f64 = value_after(&latency_line, "notification_latency_instructions=")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("cannot parse {latency_line}"))?;
    let per_call: f64 = value_after(&line, "bench: syscall_roundtrip_instructions=")
        .or_else(|| value_after(&line, "syscall_roundtrip_instructions="))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("cannot parse {line}"))?;
    metrics.push(("syscall_roundtrip_instructions", per_call, "monotonic_us call, minus a plain function call"));
    metrics.push((
        "notification_latency_instructions",
        latency,
        "app timer deadline -> app awake after wfi (alarm, service routine, record, app interrupt); mean of 200",
    ));
    let boot_us = parse_line(&started).map(|p| p.0).unwrap_or(0);
    metrics.push(("boot_to_app_instructions", (boot_us * 1000) as f64, "reset to app start (incl. SHA-256 of image)"));

    // The hostile-app suite: device time from each attack's first blow to a good update deployed
    // before it confirmed; the worst case over the suite.
    let report = build::root().join("target/bench/hostile.json");
    let _ = std::fs::remove_file(&report);
    std::fs::create_dir_all(build::root().join("target/bench")).map_err(|e| e.to_string())?;
    crate::sh(crate::cargo().current_dir(build::root()).env("KEEL_HOSTILE_REPORT", &report).args([
        "test",
        "-q",
        "-p",
        "keel-cli",
        "--features",
        "qemu-tests",
        "--test",
        "hostile",
        "--",
        "--test-threads=2",
    ]))?;
    // The report is a flat JSON object of `"attack": seconds`, one per line.
    let text = std::fs::read_to_string(&report).map_err(|e| e.to_string())?;
    let per_attack: Vec<(String, f64)> = text
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            Some((k.trim().trim_matches('"').to_string(), v.trim().trim_end_matches(',').parse().ok()?))
        })
        .collect();
    let (worst, secs) = per_attack.iter().cloned().fold((String::new(), 0.0), |a, b| if b.1 > a.1 { b } else { a });
    eprintln!("bench: attack_to_update_seconds worst {secs} ({worst}) over {} attacks", per_attack.len());
    metrics.push((
        "attack_to_update_seconds",
        secs,
        "hostile-app suite: device time (-icount shift=0) from the first attack to a good update deployed before it confirmed; worst attack",
    ));

    // Cloud link: a QEMU device from power-on to online with a real server (wall clock).
    crate::sh(crate::cargo().current_dir(root()).args(["build", "-q", "-p", "keel-cli"]))?;
    metrics.push(("device_connect_seconds", device_connect_seconds()?, "QEMU boot to secure channel up, real time"));

    // OTA: a 256 KiB app from upload to confirmed, through a real server, on a QEMU device.
    let ota = ota_256k(Clock::RealTime, &keel_vdev::visor_elf(), "ota-realtime")?;
    metrics.push((
        "ota_seconds_256k",
        ota.seconds,
        "keel apps upload + deploy -> download, install, trial, confirmed (wall clock)",
    ));
    metrics.push((
        "ota_flash_erases_256k",
        ota.erases,
        "page erases of that update (slot pages + journal), offer to confirmation",
    ));
    metrics.push((
        "ota_flash_writes_256k",
        ota.programs,
        "program operations of that update (one per received chunk or journal record)",
    ));
    metrics.push(("ota_flash_units_256k", ota.units, "16-byte program units written by that update"));
    // The same update under -icount shift=0, for the visor's longest interrupt-masked stretch
    // (the visor logs it when the app confirms): instructions, repeatable. Only a visor built
    // with the `measure` feature measures it, so the production visor carries no instrumentation.
    let measure = measure_visor()?;
    let ota = ota_256k(Clock::Deterministic, &measure, "ota-measure")?;
    metrics.push((
        "service_max_masked_instructions",
        ota.masked_max,
        "longest stretch with interrupts masked (PRIMASK), boot to confirmation of that update",
    ));
    if device_only {
        return write_report(&metrics);
    }

    // Cloud link: gateway throughput with simulated devices (in-process server, SQLite); the
    // median of three runs (one run spreads about 7% on this 2-core machine).
    crate::sh(crate::cargo().current_dir(root()).args(["build", "-q", "--release", "-p", "keel-sim"]))?;
    let mut runs = Vec::new();
    for _ in 0..3 {
        let out = std::process::Command::new(root().join("target/release/keel-sim"))
            .args(["bench", "200", "20000"])
            .output()
            .map_err(|e| e.to_string())?;
        runs.push((
            json_number(&out, "keel-sim bench", "handshakes_per_second")?,
            json_number(&out, "keel-sim bench", "log_lines_per_second")?,
            json_number(&out, "keel-sim bench", "config_fetches_per_second")?,
            json_number(&out, "keel-sim bench", "mqtt_publishes_per_second")?,
        ));
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    metrics.push((
        "handshakes_per_second",
        median(runs.iter().map(|r| r.0).collect()),
        "200 simulated devices, 32 handshakes in flight (Noise IK + registry + SQLite); median of 3 runs",
    ));
    metrics.push((
        "log_lines_per_second",
        median(runs.iter().map(|r| r.1).collect()),
        "one device, 20 000 lines, stored in SQLite (batched) and acknowledged; median of 3 runs",
    ));
    metrics.push((
        "config_fetches_per_second",
        median(runs.iter().map(|r| r.2).collect()),
        "200 simulated devices at once, 5 each: a config channel opened, the fetch answered from \
         SQLite, the channel closed; median of 3 runs",
    ));
    metrics.push((
        "mqtt_publishes_per_second",
        median(runs.iter().map(|r| r.3).collect()),
        "200 simulated devices at once, each with its managed MQTT session to a local Mosquitto, \
         10 QoS 1 publishes each, one at a time (answered once the broker acknowledged); median of 3 runs",
    ));

    // Cloud link: memory of a real `keel server run` process (release build, SQLite) per
    // connected idle device; the 10 000 simulated devices run in another process.
    crate::sh(crate::cargo().current_dir(root()).args([
        "build",
        "-q",
        "--release",
        "-p",
        "keel-cli",
        "-p",
        "keel-sim",
    ]))?;
    let keel_release = root().join("target/release/keel");
    // The median of three: what glibc keeps after the connect storm varies by a few hundred
    // bytes per device from run to run.
    let mut idle = Vec::new();
    for _ in 0..3 {
        let out = std::process::Command::new(root().join("target/release/keel-sim"))
            .arg("idle")
            .arg("--server-bin")
            .arg(&keel_release)
            .args(["--count", "10000"])
            .output()
            .map_err(|e| e.to_string())?;
        idle.push(json_number(&out, "keel-sim idle", "server_bytes_per_idle_device")?);
    }
    metrics.push((
        "server_bytes_per_idle_device",
        median(idle),
        "server RSS growth with 10 000 simulated devices connected at once and idle, per device; median of 3 runs",
    ));

    // The server under abuse: the abuse test (a real `keel server run`, 200 simulated devices
    // logging, unauthenticated uploads, idle connections, slowloris, garbage and replayed
    // handshakes) prints the operator's API latency it measured while under attack.
    let out = crate::cargo()
        .current_dir(root())
        .args(["test", "-q", "-p", "keel-cli", "--test", "abuse", "--", "--nocapture"])
        .output()
        .map_err(|e| e.to_string())?;
    metrics.push((
        "api_p99_ms_under_abuse",
        json_number(&out, "abuse test", "api_p99_ms_under_abuse")?,
        "p99 of an authenticated API request (a page of logs) every 100 ms while the abuse test attacks the server",
    ));
    metrics.push((
        "server_max_rss_bytes_under_abuse",
        json_number(&out, "abuse test", "server_max_rss_bytes")?,
        "largest server RSS sampled during the abuse test (200 devices logging; bound asserted by the test)",
    ));

    // OTA: the exhaustive power-cut test through the device core (every flash operation of
    // download, commit, trial, confirm, crash loop, rollback and polite apply, for a matrix of
    // flash geometries, plus random cut chains; cut before and in the middle of each).
    let dir = root().join("target/bench");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let report = dir.join("powercut.json");
    let _ = std::fs::remove_file(&report);
    // Failures are reported in the metric, so the test's exit status is not fatal here.
    let _ = crate::cargo()
        .current_dir(root())
        .env("KEEL_POWERCUT_REPORT", &report)
        .args(["test", "-q", "-p", "keel-device", "--test", "powercut"])
        .status();
    let text = std::fs::read_to_string(&report).map_err(|e| format!("{}: {e}", report.display()))?;
    let out = std::process::Output { status: Default::default(), stdout: text.into_bytes(), stderr: Vec::new() };
    metrics.push((
        "powercut_points_tested",
        json_number(&out, "powercut test", "powercut_points_tested")?,
        "power cuts injected (before and torn, at every flash operation of the update story)",
    ));
    metrics.push((
        "powercut_failures",
        json_number(&out, "powercut test", "powercut_failures")?,
        "cut points after which the device did not boot a valid image or end in the expected state",
    ));

    debugging(&mut metrics, flash_bytes)?;
    connectivity(&mut metrics)?;

    write_report(&metrics)
}

/// The app connectivity benchmarks: the connect test's benchmark (a real server, QEMU devices, a
/// local HTTPS server, Mosquitto with TLS) prints one JSON line.
fn connectivity(metrics: &mut Vec<(&str, f64, &str)>) -> Result<(), String> {
    let out = crate::cargo()
        .current_dir(root())
        .args(["test", "-q", "-p", "keel-cli", "--features", "qemu-tests", "--test", "connect", "--"])
        .args(["--ignored", "--exact", "bench_connectivity", "--nocapture"])
        .output()
        .map_err(|e| e.to_string())?;
    let get = |key: &str| json_number(&out, "connectivity benchmark", key);
    metrics.push((
        "http_request_ms",
        get("http_request_ms")?,
        "http-get's HTTPS GET through the visor's channel and the server's proxy to a local HTTPS server, app GET line to its status line as the host reads QEMU's console (proxy TLS handshake included); median of 5 boots",
    ));
    metrics.push((
        "mqtt_publish_to_broker_ms",
        get("mqtt_publish_to_broker_ms")?,
        "mqtt-telemetry's QoS 1 publish, from its `publishing` console line to the message at mosquitto_sub on a TLS Mosquitto (device -> server's managed session -> broker), loopback; median of 10",
    ));
    let out = crate::cargo()
        .current_dir(root())
        .args(["test", "-q", "-p", "keel-cli", "--features", "qemu-tests", "--test", "channel_faults", "--"])
        .args(["--ignored", "--exact", "bench_channels", "--nocapture"])
        .output()
        .map_err(|e| e.to_string())?;
    let get = |key: &str| json_number(&out, "channel benchmark", key);
    metrics.push((
        "notification_latency_us",
        get("notification_latency_us")?,
        "a channel's READABLE record, from the visor writing it to the app's code holding it (SDK interrupt handler, queue, wake from wfi), -icount shift=0; mean of 20",
    ));
    metrics.push((
        "channel_throughput_kib_s",
        get("channel_throughput_kib_s")?,
        "48 KiB HTTPS responses received by the app per second of device time while a 256 KiB update downloads over the same link (real time, loopback)",
    ));
    metrics.push((
        "update_download_with_channels_s",
        get("update_download_with_channels_s")?,
        "that 256 KiB update, deployment to ready, as the host sees it, with the channel streaming",
    ));
    Ok(())
}

/// The remote-debugging benchmarks: the debug test's benchmark (a real server, QEMU devices,
/// gdb-multiarch) prints one JSON line; and what the debug service costs in visor flash.
fn debugging(metrics: &mut Vec<(&str, f64, &str)>, flash_bytes: u64) -> Result<(), String> {
    let out = crate::cargo()
        .current_dir(root())
        .args(["test", "-q", "-p", "keel-cli", "--features", "qemu-tests", "--test", "debug", "--"])
        .args(["--ignored", "--exact", "bench_debugging", "--nocapture"])
        .output()
        .map_err(|e| e.to_string())?;
    let debug = |key: &str| json_number(&out, "debug benchmark", key);
    metrics.push((
        "gdb_roundtrip_ms_relay",
        debug("gdb_roundtrip_ms_relay")?,
        "one RSP request that needs the device (m, 4 bytes, a block not cached), keel debug -> server -> QEMU device on loopback; mean of 50, median of 3 rounds",
    ));
    metrics.push((
        "gdb_roundtrip_ms_qemu_gdbstub",
        debug("gdb_roundtrip_ms_qemu_gdbstub")?,
        "the same 50 m packets against QEMU's own gdbstub (-gdb tcp:...) on the same visor and app image; median of 3 rounds",
    ));
    metrics.push((
        "gdb_session_seconds",
        debug("gdb_session_seconds")?,
        "scripted gdb-multiarch session through keel debug (debuggee: target, break, continue, bt, print, set var, step into offset(), finish x2, next, delete, continue, Ctrl-C once the app logs, detach), wall clock",
    ));
    metrics.push((
        "gdb_device_round_trips",
        debug("gdb_device_round_trips")?,
        "device round trips of that session (keel debug --stats)",
    ));
    metrics.push((
        "gdb_packets_relay",
        debug("gdb_packets_relay")?,
        "RSP packets gdb sent in that session (keel debug --stats)",
    ));
    metrics.push((
        "gdb_packets_qemu_gdbstub",
        debug("gdb_packets_qemu_gdbstub")?,
        "RSP packets gdb sends for the same commands against QEMU's gdbstub (set debug remote 1, `Sending packet:` lines); each one a round trip to the target",
    ));

    // What the debug service costs in visor flash: this visor against the one built from the
    // commit before the debug work.
    match visor_flash_before_debug() {
        Ok(before) => metrics.push((
            "visor_flash_bytes_debug_growth",
            flash_bytes as f64 - before as f64,
            "visor_flash_bytes now minus the visor built from the parent of the commit that added crates/keel-debug (git worktree under target/bench); includes every later visor change too (the crash-dump capture came after)",
        )),
        Err(e) => eprintln!("bench: no visor_flash_bytes_debug_growth: {e}"),
    }

    Ok(())
}

/// Visor flash: code, read-only data, the NSC table and the `.data` image.
fn visor_flash_bytes(path: &std::path::Path) -> Result<u64, String> {
    let sections = elf::sections(path).map_err(|e| e.to_string())?;
    let in_code = |a: u64| (0x1000_0000..0x1008_0000).contains(&a);
    Ok(sections.iter().filter(|s| s.3 && in_code(s.1)).map(|s| s.2).sum::<u64>()
        + sections.iter().filter(|s| s.0 == ".data").map(|s| s.2).sum::<u64>())
}

/// [`visor_flash_bytes`] of the visor built from the commit before the debug work (the parent of
/// the commit that added `crates/keel-debug`), in a git worktree `target/bench/visor-before-debug`
/// with its own target directory. Needs the repository's history (not a shallow clone).
fn visor_flash_before_debug() -> Result<u64, String> {
    let git = |args: &[&str]| -> Result<String, String> {
        let out = std::process::Command::new("git")
            .current_dir(root())
            .args(args)
            .output()
            .map_err(|e| format!("git: {e}"))?;
        if !out.status.success() {
            return Err(format!("git {args:?}: {}", String::from_utf8_lossy(&out.stderr).trim()));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let added = git(&["log", "--format=%H", "--diff-filter=A", "--", "crates/keel-debug/Cargo.toml"])?;
    let first = added.lines().last().ok_or("no commit adds crates/keel-debug (a shallow clone?)")?;
    let base = git(&["rev-parse", &format!("{first}^")])?;
    let wt = root().join("target/bench/visor-before-debug");
    git(&["worktree", "prune"])?;
    if wt.join(".git").exists() {
        let wts = wt.display().to_string();
        git(&["-C", &wts, "checkout", "-q", "--detach", &base])?;
    } else {
        let _ = std::fs::remove_dir_all(&wt);
        git(&["worktree", "add", "-q", "--detach", &wt.display().to_string(), &base])?;
    }
    let fw = wt.join("firmware");
    crate::sh(crate::cargo().current_dir(&fw).env("CARGO_TARGET_DIR", fw.join("target")).args([
        "build",
        "--release",
        "-p",
        "keel-visor",
    ]))?;
    let elf = fw.join("target/thumbv8m.main-none-eabi/release/keel-visor");
    let bytes = visor_flash_bytes(&elf)?;
    eprintln!("bench: visor flash at {} (before the debug work): {bytes} bytes", &base[..12]);
    Ok(bytes)
}

/// Writes `target/bench/report.json` and prints the table.
fn write_report(metrics: &[(&str, f64, &str)]) -> Result<(), String> {
    let dir = root().join("target/bench");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let body: Vec<String> = metrics.iter().map(|(k, v, _)| format!("  \"{k}\": {v}")).collect();
    let json = format!("{{\n{}\n}}\n", body.join(",\n"));
    std::fs::write(dir.join("report.json"), &json).map_err(|e| e.to_string())?;
    println!("\n{:<34} {:>14}  note", "metric", "value");
    for (k, v, note) in metrics {
        println!("{k:<34} {v:>14}  {note}");
    }
    println!("\nwritten to {}", dir.join("report.json").display());
    Ok(())
}

/// The number `"key": N` in the flat JSON object a tool printed.
fn json_number(out: &std::process::Output, tool: &str, key: &str) -> Result<f64, String> {
    let text = String::from_utf8_lossy(&out.stdout);
    text.split(&format!("\"{key}\": "))
        .nth(1)
        .and_then(|r| r.split([',', '}']).next())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .ok_or_else(|| format!("{tool}: no {key} in {text:?} {}", String::from_utf8_lossy(&out.stderr)))
}

fn device_connect_seconds() -> Result<f64, String> {
    let keel = root().join("target/debug/keel");
    let dir = root().join("target/bench/connect");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let (server, token) = bench_server(&keel, &dir, 17547, 17548)?;
    let env = [("KEEL_SERVER", "http://127.0.0.1:17547"), ("KEEL_TOKEN", token.as_str())];
    let flash_path = dir.join("dev.flash");
    let fp = flash_path.display().to_string();
    crate::run::keel_json(&keel, &["device", "provision", "--flash", &fp, "--gateway-port", "17548"], &env)?;
    crate::run::prepare_device(&flash_path, Some("hello"))?;
    let dev = Device { visor: keel_vdev::visor_elf(), flash: flash_path, clock: Clock::RealTime };
    let t0 = std::time::Instant::now();
    let mut r = dev.start().map_err(|e| e.to_string())?;
    r.wait_for("online", LIMIT, |l| l.contains("net: online")).map_err(|e| e.to_string())?;
    let secs = t0.elapsed().as_secs_f64();
    r.kill();
    drop(server);
    Ok((secs * 1000.0).round() / 1000.0)
}

/// What one 256 KiB update cost.
struct Ota {
    /// Seconds from `keel apps upload` to the device's confirmation (wall clock).
    seconds: f64,
    /// Flash page erases, offer to confirmation.
    erases: f64,
    /// Flash program operations.
    programs: f64,
    /// 16-byte program units.
    units: f64,
    /// The visor's longest interrupt-masked stretch since boot, in instructions (meaningful
    /// under [`Clock::Deterministic`]).
    masked_max: f64,
}

/// Builds the visor with the `measure` feature (interrupt-masked time tracking) and keeps a copy
/// of it; then rebuilds the production visor, so the tree's ELF stays the one without it.
fn measure_visor() -> Result<std::path::PathBuf, String> {
    let fw = root().join("firmware");
    crate::sh(crate::cargo().current_dir(&fw).args([
        "build",
        "--release",
        "-p",
        "keel-visor",
        "--features",
        "measure",
    ]))?;
    let copy = root().join("target/bench/keel-visor-measure.elf");
    std::fs::copy(keel_vdev::visor_elf(), &copy).map_err(|e| format!("cannot copy the measure visor: {e}"))?;
    crate::sh(crate::cargo().current_dir(&fw).args(["build", "--release", "-p", "keel-visor"]))?;
    Ok(copy)
}

/// A 256 KiB app (the `big` example) from `keel apps upload` to the device's confirmation, and
/// what it cost as the visor reports it. The device's console goes to `target/bench/NAME.log`.
fn ota_256k(clock: Clock, visor: &std::path::Path, name: &str) -> Result<Ota, String> {
    let measure = name == "ota-measure";
    let keel = root().join("target/debug/keel");
    let dir = root().join("target/bench/ota");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let (server, token) = bench_server(&keel, &dir, 17549, 17550)?;
    let env = [("KEEL_SERVER", "http://127.0.0.1:17549"), ("KEEL_TOKEN", token.as_str())];
    let key = dir.join("release").display().to_string();
    crate::run::keel_json(&keel, &["keys", "new", "--out", &key], &env)?;
    crate::run::keel_json(&keel, &["keys", "add", &format!("{key}.pub"), "--name", "release"], &env)?;
    let flash_path = dir.join("dev.flash");
    let fp = flash_path.display().to_string();
    let pubkey = format!("{key}.pub");
    let prov = ["device", "provision", "--flash", &fp, "--gateway-port", "17550", "--signer-key", &pubkey];
    crate::run::keel_json(&keel, &prov, &env)?;
    crate::run::prepare_device(&flash_path, Some("hello"))?;
    let bundle = dir.join("big.keelb").display().to_string();
    let elf = keel_vdev::app_elf("big").display().to_string();
    let build =
        ["bundle", &elf, "--key", &format!("{key}.key"), "--version", "2.0.0", "--sequence", "2", "--out", &bundle];
    crate::run::keel_json(&keel, &build, &env)?;
    let dev = Device { visor: visor.to_path_buf(), flash: flash_path, clock };
    let mut r = dev.start().map_err(|e| e.to_string())?;
    r.wait_for("online", LIMIT, |l| l.contains("net: online")).map_err(|e| e.to_string())?;
    let t0 = std::time::Instant::now();
    let up = crate::run::keel_json(&keel, &["apps", "upload", &bundle], &env)?;
    let id = crate::run::json_field(&up, "id").ok_or("no bundle id")?;
    let dev_id = crate::run::json_field(&crate::run::keel_json(&keel, &["devices"], &env)?, "id").ok_or("no device")?;
    crate::run::keel_json(&keel, &["deploy", &id, "--device", &dev_id], &env)?;
    let line =
        r.wait_for("confirmed", LIMIT, |l| l.contains("update: flash used by seq 2")).map_err(|e| e.to_string())?;
    let secs = t0.elapsed().as_secs_f64();
    let masked_max = if measure {
        let masked =
            r.wait_for("masked", LIMIT, |l| l.contains("masked: max_instructions=")).map_err(|e| e.to_string())?;
        value_after(&masked, "max_instructions=")
            .and_then(|v| v.parse::<f64>().ok())
            .ok_or_else(|| format!("cannot parse {masked:?}"))?
    } else {
        0.0
    };
    let lines = r.kill();
    let _ = std::fs::write(root().join(format!("target/bench/{name}.log")), lines.join("\n"));
    drop(server);
    let num = |after: &str| -> Result<f64, String> {
        line.split(after)
            .next()
            .and_then(|h| h.split_whitespace().last())
            .and_then(|v| v.trim_start_matches('(').parse().ok())
            .ok_or_else(|| format!("cannot parse {line:?}"))
    };
    Ok(Ota {
        seconds: (secs * 100.0).round() / 100.0,
        erases: num(" page erases")?,
        programs: num(" program operations")?,
        units: num(" units)")?,
        masked_max,
    })
}

/// Starts `keel server run` with a fresh data directory in `dir` on the given loopback ports;
/// returns it (killed on drop) and an API token, once it listens.
fn bench_server(
    keel: &std::path::Path,
    dir: &std::path::Path,
    http: u16,
    gw: u16,
) -> Result<(crate::run::Kill, String), String> {
    use std::io::BufRead;
    let data = dir.join("data").display().to_string();
    let init = crate::run::keel_json(keel, &["server", "init", "--data", &data], &[])?;
    let token = crate::run::json_field(&init, "token").ok_or("no token")?;
    let (http, gw) = (format!("127.0.0.1:{http}"), format!("127.0.0.1:{gw}"));
    let mut server = crate::run::Kill(
        std::process::Command::new(keel)
            .args(["server", "run", "--data", &data, "--http", &http, "--gateway", &gw])
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?,
    );
    let mut ready = String::new();
    std::io::BufReader::new(server.0.stderr.take().ok_or("no output")?)
        .read_line(&mut ready)
        .map_err(|e| e.to_string())?;
    Ok((server, token))
}
