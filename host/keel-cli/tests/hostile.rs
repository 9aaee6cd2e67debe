//! The hostile-app suite (issue 9): one test per attack of `firmware/apps/hostile`, each against
//! a real `keel server` and a QEMU device.
//!
//! Every test ends the same way: a good update deployed **before** the attack installs and is
//! confirmed within [`BOUND_US`] of device time from the first attack; the crash (where the
//! attack is one) is recorded by the visor and reported to the server as the typed crash event;
//! the visor is healthy (no FATAL or PANIC line, its link carried the confirmation, the new app
//! runs and its calls are answered).
//!
//! The attack is chosen by patching the hostile app's 16-byte marker in its ELF file. The
//! device-time seconds from the first attack to the good update's confirmation are written, per
//! attack, to the JSON file named by `KEEL_HOSTILE_REPORT` (for `cargo xtask bench`).
//!
//! Nothing here sleeps to synchronise: the tests wait on console lines and API state, with a
//! device-time bound and a wall-clock guard. The device runs with `-icount shift=0` (one
//! instruction is 1 ns of device time) but, unlike keel-vdev's deterministic clock, *without*
//! `sleep=off`: an idle device then spends real time, instead of warping ahead to its next
//! deadline. With warps, an idle device runs thousands of times faster than the server can
//! answer, and its 100 s server-silence timeout (device time) drops the link while a busy
//! server is still working on the last message.
#![cfg(feature = "qemu-tests")]

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;
use keel_flash::layout;
use keel_vdev::qemu::message;
use keel_vdev::qemu::{parse_line, Clock, Device};
use keel_vdev::{elf, flash};

/// Device time allowed from the first attack to the good update confirmed.
const BOUND_US: u64 = 180_000_000;
/// Wall-clock guard of one wait (stops a hung run; never synchronises anything).
const WALL: Duration = Duration::from_secs(210);

/// A QEMU device with its console (keel-vdev's runner with `-icount shift=0`, see above).
struct Running {
    child: std::process::Child,
    rx: std::sync::mpsc::Receiver<String>,
    lines: Vec<String>,
}

impl Running {
    fn start(dev: &Device) -> Running {
        use std::io::BufRead;
        let dev = Device { clock: Clock::RealTime, ..dev.clone() };
        let mut cmd = dev.command();
        cmd.args(["-icount", "shift=0"]);
        let mut child = cmd
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("qemu-system-arm runs");
        let (tx, rx) = std::sync::mpsc::channel();
        let out = child.stdout.take().unwrap();
        let err = child.stderr.take().unwrap();
        let tx2 = tx.clone();
        std::thread::spawn(move || {
            for l in std::io::BufReader::new(out).split(b'\n').map_while(Result::ok) {
                let l = String::from_utf8_lossy(&l).trim_end_matches('\r').to_string();
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        std::thread::spawn(move || {
            for l in std::io::BufReader::new(err).lines().map_while(Result::ok) {
                if tx2.send(format!("[qemu stderr] {l}")).is_err() {
                    break;
                }
            }
        });
        Running { child, rx, lines: Vec::new() }
    }

    /// Reads the console until a line satisfies `pred` (returned) or `limit` of wall time passed.
    fn wait_for(&mut self, what: &str, limit: Duration, pred: impl Fn(&str) -> bool) -> Result<String, String> {
        let start = Instant::now();
        loop {
            match self.rx.recv_timeout(limit.saturating_sub(start.elapsed())) {
                Ok(l) => {
                    self.lines.push(l.clone());
                    if pred(&l) {
                        return Ok(l);
                    }
                }
                Err(_) => {
                    let skip = self.lines.len().saturating_sub(80);
                    return Err(format!("timed out waiting for {what}; console:\n{}", self.lines[skip..].join("\n")));
                }
            }
        }
    }

    /// Reads the console for `d` of wall time.
    fn run_for(&mut self, d: Duration) {
        let _ = self.wait_for("", d, |_| false);
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Device time of every console line: the visor's timestamps, continued across resets (each
/// boot starts at 0 again; the next boot is counted from the last line of the one before).
fn device_times(lines: &[String]) -> Vec<u64> {
    let (mut offset, mut last) = (0u64, 0u64);
    lines
        .iter()
        .map(|l| {
            if let Some((t, _, m)) = parse_line(l) {
                if t < last || (m.starts_with("Keel visor ") && t == 0 && last > 0) {
                    offset += last;
                }
                last = t;
            }
            offset + last
        })
        .collect()
}

fn first_line(lines: &[String], from: usize, pred: impl Fn(&str) -> bool) -> Option<usize> {
    lines.iter().enumerate().skip(from).find(|(_, l)| pred(message(l))).map(|(i, _)| i)
}

fn tail(q: &Running) -> String {
    q.lines.iter().rev().take(60).rev().cloned().collect::<Vec<_>>().join("\n")
}

/// Adds `attack: seconds` to the report file (tests run in parallel: one writer at a time).
fn report(attack: &str, seconds: f64) {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    eprintln!("hostile: {attack}: {seconds:.3} s of device time from the first attack to the good update confirmed");
    let Ok(path) = std::env::var("KEEL_HOSTILE_REPORT") else { return };
    let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let mut v: serde_json::Map<String, serde_json::Value> =
        std::fs::read(&path).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
    v.insert(attack.to_string(), serde_json::json!((seconds * 1000.0).round() / 1000.0));
    std::fs::write(&path, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
}

/// A server, an account, a release key, and a device provisioned to trust it.
struct Lab {
    env: Vec<(String, String)>,
    dir: PathBuf,
    device: String,
    data: String,
    http: u16,
    gw: u16,
    server: Option<Kill>,
    dev: Device,
}

impl Lab {
    /// The lab for test `name`, with `installed` programmed in slot A as the device's app:
    /// `Ok(mode)` the hostile app in that mode, `Err(app)` an example app.
    fn new(name: &str, installed: Result<&str, &str>) -> Lab {
        let dir = keel_vdev::repo_root().join("target/hostile").join(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let data = dir.join("data").display().to_string();
        let token = keel(&["server", "init", "--data", &data], &[])["token"].as_str().unwrap().to_string();
        let (http, gw) = (free_port(), free_port());
        let server = start_server(&data, http, gw, false);
        let url = format!("http://127.0.0.1:{http}");
        let config = dir.join("config.toml").display().to_string();
        keel(&["login"], &[("KEEL_SERVER", &url), ("KEEL_TOKEN", &token), ("KEEL_CONFIG", &config)]);
        let fp = dir.join("dev.flash");
        let mut lab = Lab {
            env: vec![("KEEL_CONFIG".into(), config)],
            dir: dir.clone(),
            device: String::new(),
            data,
            http,
            gw,
            server: Some(server),
            dev: Device { visor: keel_vdev::visor_elf(), flash: fp.clone(), clock: Clock::Deterministic },
        };
        let release = dir.join("release").display().to_string();
        lab.keel(&["keys", "new", "--out", &release]);
        lab.keel(&["keys", "add", &format!("{release}.pub"), "--name", "release"]);
        let prov = lab.keel(&[
            "device",
            "provision",
            "--flash",
            &fp.display().to_string(),
            "--name",
            name,
            "--gateway-port",
            &gw.to_string(),
            "--signer-key",
            &format!("{release}.pub"),
        ]);
        lab.device = prov["device"]["id"].as_str().unwrap().to_string();
        let img = match installed {
            Ok(mode) => elf::image_from_elf_bytes(&keel_vdev::hostile_elf(mode).unwrap(), "hostile", "1.0.0").unwrap(),
            Err(app) => elf::image_from_elf(&keel_vdev::app_elf(app), "1.0.0").unwrap(),
        };
        flash::program_app(&fp, layout::APP_A, &img).unwrap();
        lab
    }

    fn env(&self) -> Vec<(&str, &str)> {
        self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
    }

    fn keel(&self, args: &[&str]) -> serde_json::Value {
        keel(args, &self.env())
    }

    /// Builds and uploads a signed bundle of `elf` as app `name` `version`; returns its id.
    fn ship_elf(&self, elf: &std::path::Path, name: &str, version: &str, seq: u64, extra: &[&str]) -> String {
        let out = self.dir.join(format!("{name}-{version}.keelb")).display().to_string();
        let elf = elf.display().to_string();
        let key = self.dir.join("release.key").display().to_string();
        let seq = seq.to_string();
        let mut args = vec!["bundle", &elf, "--key", &key, "--version", version, "--sequence", &seq, "--name", name];
        args.extend_from_slice(&["--out", &out]);
        args.extend_from_slice(extra);
        self.keel(&args);
        self.keel(&["apps", "upload", &out])["id"].as_str().unwrap().to_string()
    }

    /// The good update: `hello` (it confirms itself on trial).
    fn ship_hello(&self, version: &str, seq: u64, extra: &[&str]) -> String {
        self.ship_elf(&keel_vdev::app_elf("hello"), "hello", version, seq, extra)
    }

    /// The hostile app in `mode` as a bundle.
    fn ship_hostile(&self, mode: &str, version: &str, seq: u64, extra: &[&str]) -> String {
        let elf = self.dir.join(format!("hostile-{mode}.elf"));
        std::fs::write(&elf, keel_vdev::hostile_elf(mode).unwrap()).unwrap();
        self.ship_elf(&elf, "hostile", version, seq, extra)
    }

    fn deploy(&self, bundle: &str) {
        self.keel(&["deploy", bundle, "--device", &self.device]);
    }

    fn show(&self) -> serde_json::Value {
        self.keel(&["devices", "show", &self.device])
    }

    fn logs(&self) -> Vec<serde_json::Value> {
        self.keel(&["logs", &self.device]).as_array().cloned().unwrap_or_default()
    }

    fn stop_server(&mut self) {
        self.server = None;
    }

    fn start_server(&mut self) {
        self.server = Some(start_server(&self.data, self.http, self.gw, false));
    }

    /// Stages the hostile app in `mode` as an update on trial (sequence `seq`, the default trial
    /// policy) through the device's own install path: the next boot runs it on trial.
    fn stage_hostile_trial(&self, mode: &str, seq: u64) {
        let img = elf::image_from_elf_bytes(&keel_vdev::hostile_elf(mode).unwrap(), "hostile", "2.0.0").unwrap();
        flash::stage_update(&self.dev.flash, &img, seq, Default::default()).unwrap();
    }
}

/// Waits until `done` holds (checked against the server and the console every 100 ms of wall
/// time, while the console is read), failing once more than `BOUND_US` of device time passed
/// since line `t0` (or the wall-clock guard).
fn wait_until(lab: &Lab, q: &mut Running, t0: usize, what: &str, mut done: impl FnMut(&Lab, &Running) -> bool) {
    let start = Instant::now();
    loop {
        if done(lab, q) {
            return;
        }
        let times = device_times(&q.lines);
        save(lab, q);
        let spent = times.last().copied().unwrap_or(0).saturating_sub(times.get(t0).copied().unwrap_or(0));
        assert!(
            spent <= BOUND_US,
            "{what}: not within {} s of device time from the first attack\n{}",
            BOUND_US / 1_000_000,
            tail(q)
        );
        assert!(start.elapsed() < WALL, "{what}: wall-clock guard ({WALL:?}) hit\n{}", tail(q));
        q.run_for(Duration::from_millis(100));
    }
}

/// Keeps the console next to the test's data (`target/hostile/NAME/console.log`).
fn save(lab: &Lab, q: &Running) {
    let _ = std::fs::write(lab.dir.join("console.log"), q.lines.join("\n"));
}

/// Waits for the first console line `pred` accepts (from line `from`); its index.
fn wait_line(q: &mut Running, from: usize, what: &str, pred: impl Fn(&str) -> bool) -> usize {
    if let Some(i) = first_line(&q.lines, from, &pred) {
        return i;
    }
    q.wait_for(what, WALL, |l| pred(message(l))).unwrap_or_else(|e| panic!("{e}"));
    q.lines.len() - 1
}

/// What a test expects besides the common end.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Crash {
    /// The attack is an app fault: recorded (console and server) before any visor reset.
    Recorded,
    /// The attack faults nothing by itself (the visor must just survive it).
    NotExpected,
    /// The attack faults once it lands, which may take longer than the good update takes to
    /// replace the app: if it crashed, as [`Crash::Recorded`] (keel-vdev checks that it lands).
    IfLanded,
}

/// The common end of every test: the good update `seq` confirmed within the bound from the first
/// attack (line `t0`), the crash recorded and reported (if `crash`), the visor healthy, the new
/// app `good_line` answering after the confirmation. Returns the console.
fn finish(lab: &Lab, q: &mut Running, attack: &str, t0: usize, seq: u64, crash: Crash, good_line: &str) -> Vec<String> {
    wait_until(lab, q, t0, &format!("good update {seq} confirmed"), |lab, _| {
        let u = &lab.show()["update"];
        u["sequence"] == seq && u["state"] == "confirmed"
    });
    let confirmed = wait_line(q, t0, "the confirmation on the console", |m| {
        m.starts_with(&format!("update: confirmed seq {seq} "))
    });
    let times = device_times(&q.lines);
    report(attack, (times[confirmed] - times[t0]) as f64 / 1e6);
    // The new app runs and the visor answers it.
    wait_line(q, confirmed, "the good app running after its confirmation", |m| m.starts_with(good_line));
    let shown = lab.show();
    save(lab, q);
    let landed = first_line(&q.lines, t0, |m| m.starts_with("app crash: ")).is_some();
    if crash == Crash::Recorded || crash == Crash::IfLanded && landed {
        let lines = &q.lines;
        let crash_at = first_line(lines, t0, |m| m.starts_with("app crash: "))
            .unwrap_or_else(|| panic!("{attack}: no app crash recorded\n{}", tail(q)));
        let reset = first_line(lines, t0, |m| m.starts_with("Keel visor "));
        assert!(
            reset.is_none_or(|r| r > crash_at),
            "{attack}: the visor reset before it recorded a crash\n{}",
            lines[t0..=reset.unwrap_or(t0).min(lines.len() - 1)].join("\n")
        );
        let logs = lab.logs();
        assert!(
            logs.iter()
                .any(|r| r["source"] == "visor" && r["text"].as_str().is_some_and(|t| t.starts_with("app crash: "))),
            "{attack}: the crash event reached the server; visor records: {:#?}\n{}",
            logs.iter().filter(|r| r["source"] != "app").map(|r| r["text"].clone()).collect::<Vec<_>>(),
            tail(q)
        );
        assert!(
            shown["last_crash"]["text"].as_str().is_some_and(|t| t.starts_with("app crash: ")),
            "{attack}: the registry's last crash: {shown}"
        );
    }
    let bad: Vec<&String> = q.lines.iter().filter(|l| l.contains("FATAL") || l.contains("PANIC")).collect();
    assert!(bad.is_empty(), "{attack}: visor failure: {bad:#?}");
    q.lines.clone()
}

/// The usual shape: the hostile app in `mode` is the installed app, a good `hello` v2 is
/// deployed before the device starts; the attack runs at every start.
fn installed_attack(name: &str, mode: &str, crash: Crash, v2_extra: &[&str]) -> Vec<String> {
    let lab = Lab::new(name, Ok(mode));
    let v2 = lab.ship_hello("2.0.0", 2, v2_extra);
    lab.deploy(&v2);
    let mut q = Running::start(&lab.dev);
    let t0 = wait_line(&mut q, 0, "the first attack", |m| m.starts_with(&format!("hostile: attack {mode} ")));
    finish(&lab, &mut q, name, t0, 2, crash, "hello: device=")
}

// ------------------------------------------------------------------------ 1. forged returns
// Finding 1: an NS handler returns with a forged EXC_RETURN (or FNC_RETURN): an app crash with
// backoff, never a visor reset without a record.

#[test]
fn exc_return_s1() {
    installed_attack("exc-s1", "exc-s1", Crash::Recorded, &[]);
}

#[test]
fn exc_return_s1_psp() {
    installed_attack("exc-s1-psp", "exc-s1-psp", Crash::Recorded, &[]);
}

#[test]
fn exc_return_s1_to_handler_mode() {
    installed_attack("exc-s1-handler", "exc-s1-handler", Crash::Recorded, &[]);
}

#[test]
fn exc_return_es1() {
    installed_attack("exc-es1", "exc-es1", Crash::Recorded, &[]);
}

#[test]
fn exc_return_dcrs0() {
    installed_attack("exc-dcrs0", "exc-dcrs0", Crash::Recorded, &[]);
}

#[test]
fn exc_return_s1_dcrs0() {
    installed_attack("exc-s1-dcrs0", "exc-s1-dcrs0", Crash::Recorded, &[]);
}

#[test]
fn exc_return_to_handler_mode_with_nothing_active() {
    installed_attack("exc-handler", "exc-handler", Crash::Recorded, &[]);
}

#[test]
fn fnc_return_from_handler() {
    installed_attack("fnc-handler", "fnc-handler", Crash::Recorded, &[]);
}

#[test]
fn fnc_return_from_thread() {
    installed_attack("fnc-thread", "fnc-thread", Crash::Recorded, &[]);
}

// ------------------------------------------------------------------------ 2. system addresses
// Finding 2: every access faults and is recorded as an app crash; none resets the system. (The
// whole probe list runs in keel-vdev's `probe_sweep_every_system_address_faults`.)

#[test]
fn ns_watchdog_integration_test_reset() {
    installed_attack("nswd-itop", "nswd-itop", Crash::Recorded, &[]);
}

#[test]
fn ns_watchdog_load_and_reset_enable() {
    installed_attack("nswd-load", "nswd-load", Crash::Recorded, &[]);
}

#[test]
fn sysinfo_block() {
    installed_attack("sysinfo", "sysinfo", Crash::Recorded, &[]);
}

#[test]
fn security_controller_ns_view() {
    installed_attack("secctl-ns", "secctl-ns", Crash::Recorded, &[]);
}

/// The PPB's secure alias is RAZ/WI for non-secure accesses by the architecture (nothing can
/// make it fault): it must show nothing and take nothing.
#[test]
fn ppb_secure_alias() {
    let lines = installed_attack("ppb-s-alias", "ppb-s-alias", Crash::NotExpected, &[]);
    assert!(lines.iter().any(|l| message(l).starts_with("hostile: ppb alias: ") && l.ends_with("RAZ/WI ok")));
}

// ------------------------------------------------------------------------ 3. preemption
/// Finding 3 (a): a fast SysTick (and on ABI 2 the visor's own notification interrupt) inside
/// every call, handlers that return: no result may be wrong.
#[test]
fn preempted_calls_stay_correct() {
    let lines = installed_attack("preempt-return", "preempt-return", Crash::NotExpected, &[]);
    let wrong: Vec<&String> = lines.iter().filter(|l| l.contains("WRONG")).collect();
    assert!(wrong.is_empty(), "{wrong:#?}");
    // How many rounds ran depends on how soon the update arrives (milliseconds here); the long
    // run is keel-vdev's `preempted_calls_stay_correct_for_a_while`.
}

/// Finding 3 (b): the SysTick handler abandons what it preempted (the secure thread inside a
/// call on ABI 1) by returning to thread mode on a fake frame, every 50-650 instructions.
#[test]
fn abandoned_calls() {
    let lines = installed_attack("preempt-abandon", "preempt-abandon", Crash::NotExpected, &[]);
    // The long run is keel-vdev's `abandoned_calls_for_a_while`.
    assert!(lines.iter().any(|l| message(l) == "hostile: abandon: SysTick armed"), "the attack ran");
}

/// Findings 1 and 3 at the gateway: a SysTick taken in the window around a call's body returns
/// with SPSEL flipped in the visor's EXC_RETURN. Here the visor's handshake may take the CPU
/// until the good update replaces the app before a SysTick lands in a window; keel-vdev's
/// `forged_returns_in_the_gateway_window_are_app_crashes` checks all four forgeries land.
#[test]
fn forged_spsel_in_the_gateway_window() {
    installed_attack("window-spsel", "window-spsel", Crash::IfLanded, &[]);
}

/// ... with DCRS cleared: on the visor before issue 9 this is finding 1 exactly ("FATAL fault in
/// visor code: exc=7 exc_return=0xffffffd9 ... sfsr=0x00000004", then a reset loop).
#[test]
fn forged_dcrs_in_the_gateway_window() {
    installed_attack("window-dcrs0", "window-dcrs0", Crash::IfLanded, &[]);
}

// ------------------------------------------------------------------------ 4. handler mode
/// Finding 4 (a): the app lives in its SVCall handler when a deployed update finishes installing.
#[test]
fn handler_mode_at_update_installed() {
    installed_attack("handler-live", "handler-live", Crash::NotExpected, &[]);
}

/// Finding 4 (c): ... when a polite update's politeness time ends.
#[test]
fn handler_mode_at_politeness_end() {
    let lines = installed_attack("handler-live-polite", "handler-live", Crash::NotExpected, &["--politeness-s", "5"]);
    assert!(lines.iter().any(|l| message(l).starts_with("update: applying")), "the visor applied the update");
}

/// The hostile app in `mode` is an update on trial (sequence 2, default policy) over the factory
/// `hello`; a good `hello` v3 is deployed before the device starts. The trial must be rolled
/// back, never confirmed, and v3 installed.
fn trial_attack(name: &str, mode: &str, crash: Crash) -> Vec<String> {
    let lab = Lab::new(name, Err("hello"));
    lab.stage_hostile_trial(mode, 2);
    let v3 = lab.ship_hello("3.0.0", 3, &[]);
    lab.deploy(&v3);
    let mut q = Running::start(&lab.dev);
    let t0 = wait_line(&mut q, 0, "the first attack", |m| m.starts_with(&format!("hostile: attack {mode} ")));
    trial_end(&lab, &mut q, name, t0, &v3, crash)
}

/// The end of a hostile trial (sequence 2): rolled back, never confirmed, and the good update
/// `v3` (sequence 3) installed and confirmed.
fn trial_end(lab: &Lab, q: &mut Running, name: &str, t0: usize, v3: &str, crash: Crash) -> Vec<String> {
    // The offer of v3 may have come while the trial ran (and been refused): once the trial is
    // over, deploy it again, as an operator would.
    let mut redeployed = false;
    wait_until(lab, q, t0, "the hostile trial ended", |lab, q| {
        let over = first_line(&q.lines, t0, |m| {
            m.starts_with("update: rolled back seq 2 ") || m.starts_with("update: confirmed seq 2 ")
        });
        if over.is_some() && !redeployed {
            let u = &lab.show()["update"];
            if u["sequence"] != 3 {
                lab.deploy(v3);
            }
            redeployed = true;
        }
        over.is_some()
    });
    let lines = finish(lab, q, name, t0, 3, crash, "hello: device=");
    assert!(
        !lines.iter().any(|l| message(l).starts_with("update: confirmed seq 2 ")),
        "{name}: the hostile trial was confirmed:\n{}",
        lines.iter().filter(|l| message(l).starts_with("update: ")).cloned().collect::<Vec<_>>().join("\n")
    );
    assert!(lines.iter().any(|l| message(l).starts_with("update: rolled back seq 2 ")));
    lines
}

/// Finding 4 (b): the trial (a bundle with a 10 s grace time) lives in its SVCall handler, with
/// no system call at all (no sign of life), when its grace time ends: it must be rolled back.
/// The good update is deployed as soon as the trial starts, before the grace time ends.
#[test]
fn handler_mode_at_trial_grace_end() {
    let name = "handler-mute-trial";
    let lab = Lab::new(name, Err("hello"));
    let v2 = lab.ship_hostile("handler-mute", "2.0.0", 2, &["--grace-s", "10"]);
    let v3 = lab.ship_hello("3.0.0", 3, &[]);
    lab.deploy(&v2);
    let mut q = Running::start(&lab.dev);
    // The mute app logs nothing (a log line would be a sign of life): its start is the attack.
    let t0 = wait_line(&mut q, 0, "the hostile trial", |m| m.starts_with("starting app 'hostile' 2.0.0 "));
    lab.deploy(&v3);
    trial_end(&lab, &mut q, name, t0, &v3, Crash::NotExpected);
}

// ------------------------------------------------------------------------ 5. poisoned successor
/// Finding 7: the old app leaves the non-secure core (CCR, SCR, SHPR, AIRCR.PRIGROUP, MPU,
/// SysTick, NVIC, VTOR, PRIMASK, RAM) poisoned; the good update (the hostile app in `verify`
/// mode) must start from reset values.
#[test]
fn poisoned_successor_after_update() {
    let mode = "poison";
    let lab = Lab::new(mode, Ok(mode));
    let v2 = lab.ship_hostile("verify", "2.0.0", 2, &[]);
    lab.deploy(&v2);
    let mut q = Running::start(&lab.dev);
    let t0 = wait_line(&mut q, 0, "the first attack", |m| m.starts_with("hostile: attack poison "));
    let lines = finish(&lab, &mut q, mode, t0, 2, Crash::NotExpected, "hostile: verify: update_confirm -> Ok");
    let v2_start = first_line(&lines, t0, |m| m.starts_with("starting app 'hostile' 2.0.0")).unwrap();
    let after: Vec<&String> =
        lines[v2_start..].iter().filter(|l| l.contains("DIRTY") || message(l).starts_with("app crash")).collect();
    assert!(after.is_empty(), "the update did not start from reset values:\n{after:#?}");
    assert!(lines[v2_start..].iter().any(|l| message(l) == "hostile: verify clean"));
}

/// Finding 7 through a restart: the poisoned app restarts itself and checks its own next start
/// (then poisons again and is replaced by the verifying update).
#[test]
fn poisoned_successor_after_restart() {
    let mode = "poison-restart";
    let lab = Lab::new(mode, Ok(mode));
    let v2 = lab.ship_hostile("verify", "2.0.0", 2, &[]);
    lab.deploy(&v2);
    let mut q = Running::start(&lab.dev);
    let t0 = wait_line(&mut q, 0, "the first attack", |m| m.starts_with("hostile: attack poison-restart "));
    let lines = finish(&lab, &mut q, mode, t0, 2, Crash::NotExpected, "hostile: verify: update_confirm -> Ok");
    let dirty: Vec<&String> =
        lines[t0..].iter().filter(|l| l.contains("DIRTY") || message(l).starts_with("app crash")).collect();
    assert!(dirty.is_empty(), "a start did not begin from reset values:\n{dirty:#?}");
    // The update's start verified clean; the restarted old app's own check may not have run
    // before the update replaced it (keel-vdev's `poisoned_restart_starts_clean` always runs it).
    assert!(lines[t0..].iter().any(|l| message(l) == "hostile: verify clean"));
}

// ------------------------------------------------------------------------ 6. trial loopholes
/// Finding 5: a trial app that panics at every start, under the default policy, is rolled back.
#[test]
fn trial_panicking_at_every_start() {
    trial_attack("panic-start-trial", "panic-start", Crash::NotExpected);
}

/// Finding 5 (variant): a trial app that asks for a restart at every start (a C `main` that
/// returns).
#[test]
fn trial_restarting_at_every_start() {
    trial_attack("exit-start-trial", "exit-start", Crash::NotExpected);
}

/// Finding 6: the old app confirms the new update from an interrupt inside `update_apply`, with
/// the link down. The confirmation must come from the new app only.
#[test]
fn old_app_confirms_inside_update_apply() {
    let mode = "confirm-in-apply";
    let mut lab = Lab::new(mode, Ok(mode));
    let v2 = lab.ship_hello("2.0.0", 2, &["--politeness-s", "120"]);
    lab.deploy(&v2);
    let mut q = Running::start(&lab.dev);
    let t0 = wait_line(&mut q, 0, "the first attack", |m| m.starts_with("hostile: attack confirm-in-apply "));
    let ready = wait_line(&mut q, t0, "update ready", |m| m.starts_with("hostile: confirm-in-apply: update ready"));
    // Take the link down for the apply.
    lab.stop_server();
    wait_line(&mut q, ready, "the link down", |m| m.starts_with("net: connection lost"));
    let started = wait_line(&mut q, ready, "the new app started", |m| m.starts_with("starting app 'hello' 2.0.0"));
    lab.start_server();
    let lines = finish(&lab, &mut q, mode, t0, 2, Crash::NotExpected, "hello: device=");
    let from_irq: Vec<&String> =
        lines.iter().filter(|l| l.contains("update_confirm from an interrupt -> Ok")).collect();
    assert!(from_irq.is_empty(), "the old app confirmed the update: {from_irq:#?}");
    let confirmed = first_line(&lines, ready, |m| m.starts_with("update: confirmed seq 2 ")).unwrap();
    assert!(confirmed > started, "confirmed before the new app ran:\n{}", lines[ready..=confirmed].join("\n"));
}

// ------------------------------------------------------------------------ 7. logs
/// Finding 8: app text with CR, LF and escape sequences reaches the API and `keel logs` escaped,
/// never as a forged visor line.
#[test]
fn forged_log_lines_are_escaped() {
    let mode = "log-forge";
    let lab = Lab::new(mode, Ok(mode));
    let v2 = lab.ship_hello("2.0.0", 2, &[]);
    lab.deploy(&v2);
    let mut q = Running::start(&lab.dev);
    let t0 = wait_line(&mut q, 0, "the first attack", |m| m.starts_with("hostile: attack log-forge "));
    finish(&lab, &mut q, mode, t0, 2, Crash::NotExpected, "hello: device=");
    let logs = lab.logs();
    let forged: Vec<&serde_json::Value> =
        logs.iter().filter(|r| r["text"].as_str().is_some_and(|t| t.contains("hostile-forge"))).collect();
    assert_eq!(forged.len(), 2, "both forged messages stored: {logs:#?}");
    for r in &forged {
        assert_eq!(r["source"], "app", "{r}");
        let t = r["text"].as_str().unwrap();
        assert!(!t.chars().any(|c| c.is_control()), "control characters stored and served: {t:?}");
    }
    // The text output an operator reads: no line starts like a visor line unless it is one.
    let out = std::process::Command::new(KEEL).args(["logs", &lab.device]).envs(lab.env()).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains('\x1b') && !text.contains('\r'), "escape or CR printed to the terminal: {text:?}");
    for l in text.lines().filter(|l| l.contains("confirmed seq 99") || l.contains("FORGED-CR")) {
        assert!(l.contains("hostile-forge"), "a forged line of its own: {l:?}\n{text}");
    }
}

/// Finding 8: a flood of 512-byte app logs while the link is down (and a crash after each
/// flood) must not evict the visor's own boot and crash events.
#[test]
fn log_flood_keeps_visor_events() {
    let mode = "log-flood";
    let mut lab = Lab::new(mode, Ok(mode));
    let v2 = lab.ship_hello("2.0.0", 2, &[]);
    lab.deploy(&v2);
    lab.stop_server();
    let mut q = Running::start(&lab.dev);
    let t0 = wait_line(&mut q, 0, "the first attack", |m| m.starts_with("hostile: attack log-flood "));
    // Two floods and crashes with the link down, then the server comes back.
    let c1 = wait_line(&mut q, t0, "a crash", |m| m.starts_with("app crash: "));
    wait_line(&mut q, c1 + 3, "a second flood", |m| m.starts_with("hostile: attack log-flood "));
    let c2 = wait_line(&mut q, c1 + 3, "a second crash", |m| m.starts_with("app crash: "));
    assert!(c2 > c1);
    lab.start_server();
    finish(&lab, &mut q, mode, t0, 2, Crash::Recorded, "hello: device=");
    let logs = lab.logs();
    let visor: Vec<&str> = logs.iter().filter(|r| r["source"] == "visor").filter_map(|r| r["text"].as_str()).collect();
    assert!(
        visor.iter().any(|t| t.starts_with("boot #") && t.contains("power-on")),
        "the boot event survived the flood: {visor:#?}"
    );
    assert!(
        visor.iter().filter(|t| t.starts_with("app crash: ")).count() >= 2,
        "both crash events survived the flood: {visor:#?}"
    );
}

// ------------------------------------------------------------------------ 8. restart storm
/// `restart()` in a tight loop from the first instruction: the link comes up and the deployed
/// update installs.
#[test]
fn restart_storm() {
    installed_attack("restart-storm", "restart-storm", Crash::NotExpected, &[]);
}
