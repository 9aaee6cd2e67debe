//! QEMU integration tests: real visor, real apps, real QEMU, each device with its own flash file.
//!
//! Run with `cargo xtask test` (it builds the firmware first). All runs use
//! `-icount shift=0,sleep=off`, so virtual time is deterministic; the wall-clock limits passed to
//! `wait_for` only stop a hung run, they never synchronise anything.

use std::path::PathBuf;
use std::time::Duration;

use keel_flash::layout;
use keel_vdev::qemu::{field, message, time_us};
use keel_vdev::qemu::{Clock, Device, Running};
use keel_vdev::{elf, flash};

const LIMIT: Duration = Duration::from_secs(240);

fn flash_path(test: &str) -> PathBuf {
    let dir = keel_vdev::repo_root().join("target/qemu-tests");
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(format!("{test}.flash"));
    let _ = std::fs::remove_file(&p);
    p
}

/// A new device with `app` in slot A (or no app).
fn new_device(test: &str, app: Option<&str>) -> (Device, String) {
    let path = flash_path(test);
    let factory = flash::new_factory().unwrap();
    flash::create(&path, &factory).unwrap();
    if let Some(app) = app {
        let img = elf::image_from_elf(&keel_vdev::app_elf(app), "1.0.0").unwrap();
        flash::program_app(&path, layout::APP_A, &img).unwrap();
    }
    let id = String::from_utf8(factory.device_id_ascii().to_vec()).unwrap();
    (Device { visor: keel_vdev::visor_elf(), flash: path, clock: Clock::Deterministic }, id)
}

fn start(dev: &Device) -> Running {
    dev.start().expect("QEMU starts (run through `cargo xtask test`)")
}

fn assert_visor_healthy(lines: &[String]) {
    for l in lines {
        assert!(!l.contains("FATAL") && !l.contains("PANIC"), "visor failure: {l}");
    }
}

fn hello_prints_id_and_advancing_time(app: &str, prefix: &str) {
    let (dev, id) = new_device(app, Some(app));
    let mut r = start(&dev);
    let mut uptimes = Vec::new();
    while uptimes.len() < 4 {
        let l = r
            .wait_for("hello line", LIMIT, |l| message(l).starts_with(&format!("{prefix}: device=")))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(field(message(&l), "device"), Some(id.as_str()), "{l}");
        assert_eq!(field(message(&l), "wall"), Some("not-set"), "{l}");
        uptimes.push(field(message(&l), "uptime_ms").unwrap().parse::<u64>().unwrap());
    }
    // One line per second of device time, with time advancing accordingly.
    for w in uptimes.windows(2) {
        assert!(w[1] > w[0], "time must advance: {uptimes:?}");
        assert!((990..=1100).contains(&(w[1] - w[0])), "one line per second: {uptimes:?}");
    }
    assert_visor_healthy(&r.kill());
}

#[test]
fn hello_rust_prints_device_id_and_advancing_time() {
    hello_prints_id_and_advancing_time("hello", "hello");
}

#[test]
fn hello_c_prints_device_id_and_advancing_time() {
    hello_prints_id_and_advancing_time("hello-c", "hello-c");
}

#[test]
fn crashy_crash_report_has_the_faulting_pc_and_restarts_follow_the_backoff() {
    let fault_pc =
        elf::symbol_address(&keel_vdev::app_elf("crashy"), "crashy_fault_insn").unwrap().expect("symbol") as u32 & !1;
    let (dev, _) = new_device("crashy", Some("crashy"));
    let mut r = start(&dev);
    r.wait_for("fifth restart", LIMIT, |l| l.contains("starting app 'crashy'") && l.contains("restarts=5"))
        .unwrap_or_else(|e| panic!("{e}"));
    let lines = r.kill();
    assert_visor_healthy(&lines);
    let crashes: Vec<&String> = lines
        .iter()
        .filter(|l| message(l).starts_with("app crash: ") && !message(l).starts_with("app crash: stack"))
        .collect();
    let starts: Vec<&String> = lines.iter().filter(|l| message(l).starts_with("starting app 'crashy'")).collect();
    assert_eq!(crashes.len(), 5, "{lines:#?}");
    assert_eq!(starts.len(), 6);
    for c in &crashes {
        assert!(message(c).starts_with("app crash: SecureFault"), "{c}");
        let pc = u32::from_str_radix(field(message(c), "pc").unwrap().trim_start_matches("0x"), 16).unwrap();
        assert_eq!(pc, fault_pc, "crash report PC must be the faulting instruction: {c}");
    }
    // The app sees its own crash report through the last-crash call.
    let seen =
        lines.iter().find(|l| message(l).starts_with("crashy: my last crash:")).expect("crashy reads its crash report");
    assert!(seen.contains(&format!("SecureFault at pc={:#010x}", fault_pc)), "{seen}");
    // Backoff: 1 s, then 2 s from the crash to the restart (plus the time to load the image,
    // well under 10 ms). From the third crash in a row the app is quarantined until an update
    // check; this device has no server, so it is released after 120 s each time.
    for (i, c) in crashes.iter().enumerate() {
        let at = lines.iter().position(|l| l == *c).unwrap();
        let next = lines.iter().position(|l| l == starts[i + 1]).unwrap();
        let between: Vec<&str> = lines[at..next].iter().map(|l| message(l)).collect();
        let expected_us = if i < 2 {
            assert!(!between.iter().any(|l| l.contains("quarantined")), "{between:#?}");
            1_000_000u64 << i
        } else {
            let q = format!("app: quarantined after {} crashes in a row", i + 1);
            assert!(between.iter().any(|l| l.starts_with(&q)), "{q}: {between:#?}");
            assert!(between.contains(&"app: released from quarantine (no update check in time)"), "{between:#?}");
            120_000_000
        };
        let delay = time_us(starts[i + 1]) - time_us(c);
        assert!(
            delay >= expected_us && delay < expected_us + 10_000,
            "restart {} after {delay} us, expected {expected_us} us",
            i + 1
        );
        assert!(starts[i + 1].contains("reason=crash"));
    }
    assert!(starts[0].contains("reason=cold-boot"));
}

#[test]
fn evil_app_cannot_harm_the_visor() {
    let (dev, id) = new_device("evil", Some("evil"));
    let secrets_before = (
        flash::read_partition(&dev.flash, layout::FACTORY).unwrap(),
        flash::read_partition(&dev.flash, layout::JOURNAL).unwrap(),
    );
    let mut r = start(&dev);
    r.wait_for("all attacks done", LIMIT, |l| message(l) == "evil: all attacks done").unwrap_or_else(|e| panic!("{e}"));
    // After the attacks the visor still answers correctly.
    for _ in 0..2 {
        r.wait_for("sanity line", LIMIT, |l| message(l).starts_with("evil: sanity")).unwrap();
    }
    let lines = r.kill();
    assert_visor_healthy(&lines);

    for l in &lines {
        assert!(!l.contains("FAILED") && !l.contains("DID NOT FAULT"), "attack not contained: {l}");
    }
    let checks = lines.iter().filter(|l| message(l).starts_with("evil: check ") && l.ends_with(" ok")).count();
    assert!(checks >= 70, "parameter attacks ran ({checks} checks)");
    // The network and channel calls (ABI 2.1): secure, unmapped and straddling pointers for
    // every pointer argument, bad sizes and kinds, forged handles.
    let chan = lines
        .iter()
        .filter(|l| message(l).starts_with("evil: check chan_") || message(l).starts_with("evil: check net_"))
        .filter(|l| l.ends_with(" ok"))
        .count();
    assert!(chan >= 110, "channel attacks ran ({chan} checks)");
    assert!(lines.iter().any(|l| message(l) == "evil: parameter attacks done, failures=0"));

    // Every fault attack ended in a contained crash of the app, followed by a restart.
    let attacks: Vec<usize> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| message(l).starts_with("evil: fault attack #"))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(attacks.len(), 16, "all fault attacks ran");
    for (n, &i) in attacks.iter().enumerate() {
        let crash = lines[i..]
            .iter()
            .find(|l| message(l).starts_with("app crash: "))
            .unwrap_or_else(|| panic!("attack {n} crashed"));
        let next_start = lines[i..].iter().position(|l| message(l).starts_with("starting app 'evil'"));
        let crash_pos = lines[i..].iter().position(|l| message(l).starts_with("app crash: ")).unwrap();
        assert!(next_start.is_none_or(|s| crash_pos < s), "attack {n}: crash before the next start");
        let attack = message(&lines[i]).to_string();
        if attack.contains("fault-in-interrupt-handler") {
            // Only a system reset clears an active app exception; the crash series continues.
            let rest = &lines[i..];
            let reset = rest.iter().position(|l| {
                message(l).starts_with("warm reset:") && l.contains("cause AppFault") && l.contains("crashes=15 ")
            });
            let next = rest
                .iter()
                .position(|l| message(l).starts_with("starting app 'evil'") && l.contains("restarts=15 crashes=15"));
            assert!(reset.is_some() && next.is_some() && reset < next, "reset, then backoff and restart");
        }
        if attack.contains("hang-in-exception-handler") {
            let rest = &lines[i..];
            let reset = rest.iter().position(|l| {
                message(l).starts_with("warm reset:") && l.contains("cause AppHung") && l.contains("crashes=16 ")
            });
            assert!(message(crash).starts_with("app crash: Watchdog"), "{crash}");
            assert!(reset.is_some(), "the watchdog ends a hang in handler mode with a reset");
        }
        if attack.contains("hang-with-faultmask") {
            assert!(message(crash).starts_with("app crash: Watchdog"), "{crash}");
        }
        if attack.contains("branch-")
            || attack.contains("visor")
            || attack.contains("flash")
            || attack.contains("factory")
        {
            assert!(message(crash).starts_with("app crash: SecureFault"), "{attack}: {crash}");
        }
    }

    // Visor answers stayed right through every restart.
    let sanity: Vec<&String> = lines.iter().filter(|l| message(l).starts_with("evil: sanity")).collect();
    assert!(sanity.len() >= 16);
    for s in &sanity {
        assert_eq!(field(message(s), "device"), Some(id.as_str()), "{s}");
        let abi = format!("{}.{}", keel_abi::ABI_MAJOR, keel_abi::ABI_MINOR);
        assert_eq!(field(message(s), "abi"), Some(abi.as_str()));
    }

    // The visor's code and secrets are byte-for-byte unchanged: digests taken at boot and at every
    // restart are identical, and the flash file's factory and journal partitions are unchanged.
    let integrity: Vec<&str> =
        lines.iter().filter(|l| message(l).starts_with("integrity: ")).map(|l| message(l)).collect();
    assert!(integrity.len() >= 17, "digest at boot and at each of the 16 restarts");
    assert!(integrity.iter().all(|d| *d == integrity[0]), "{integrity:#?}");
    let secrets_after = (
        flash::read_partition(&dev.flash, layout::FACTORY).unwrap(),
        flash::read_partition(&dev.flash, layout::JOURNAL).unwrap(),
    );
    assert!(secrets_before == secrets_after, "factory or journal changed");
}

#[test]
fn flash_contents_survive_restarts_and_kill_9() {
    let (dev, id) = new_device("persist", Some("hello"));
    for boot in 1..=3 {
        let mut r = start(&dev);
        let l = r.wait_for("boot line", LIMIT, |l| message(l).starts_with("device ")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(message(&l), format!("device {id} (boot #{boot})"));
        r.wait_for("app up", LIMIT, |l| message(l).starts_with("hello: device=")).unwrap();
        r.kill(); // SIGKILL, like pulling the power
    }
}

#[test]
fn the_visor_reaches_its_server_and_reconnects_after_a_drop() {
    use std::net::TcpListener;
    use std::sync::mpsc::channel;

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            if tx.send(conn).is_err() {
                break;
            }
        }
    });
    let path = flash_path("net");
    flash::create(&path, &flash::new_factory_for("10.0.2.2", port).unwrap()).unwrap();
    let img = elf::image_from_elf(&keel_vdev::app_elf("hello"), "1.0.0").unwrap();
    flash::program_app(&path, layout::APP_A, &img).unwrap();
    let dev = Device { visor: keel_vdev::visor_elf(), flash: path, clock: Clock::Deterministic };
    let mut r = start(&dev);
    r.wait_for("address", LIMIT, |l| message(l).starts_with("net: address 10.0.2.15"))
        .unwrap_or_else(|e| panic!("{e}"));
    let first = rx.recv_timeout(LIMIT).expect("the device connects").unwrap();
    r.wait_for("connected", LIMIT, |l| message(l) == format!("net: connected to 10.0.2.2:{port}")).unwrap();
    // The app keeps running alongside the network.
    r.wait_for("app", LIMIT, |l| message(l).starts_with("hello: device=")).unwrap();
    // The server side drops the connection: the device notices and connects again after backoff.
    drop(first);
    r.wait_for("loss", LIMIT, |l| message(l).starts_with("net: connection lost")).unwrap_or_else(|e| panic!("{e}"));
    let retry = r.wait_for("retry", LIMIT, |l| message(l).starts_with("net: retrying in ")).unwrap();
    let delay: u64 = message(&retry).trim_start_matches("net: retrying in ").trim_end_matches(" ms").parse().unwrap();
    assert!((500..=1000).contains(&delay), "first retry after 0.5..1 s (jittered): {delay}");
    let _second = rx.recv_timeout(LIMIT).expect("the device reconnects").unwrap();
    let reconnected =
        r.wait_for("reconnected", LIMIT, |l| message(l) == format!("net: connected to 10.0.2.2:{port}")).unwrap();
    // This server accepts but never answers (a hung server, or a half-open link): after the
    // silence timeout of device time the visor gives up on the connection and connects again.
    let silent = r.wait_for("silence", LIMIT, |l| message(l).starts_with("net: nothing from the server")).unwrap();
    let waited = time_us(&silent) - time_us(&reconnected);
    // The `connected` line is printed a few µs after the moment the silence is measured from.
    assert!(waited + 50 >= keel_link::device::SERVER_SILENCE_TIMEOUT_US, "dropped after {waited} µs");
    assert!(waited < keel_link::device::SERVER_SILENCE_TIMEOUT_US + 2_000_000, "dropped after {waited} µs");
    let _third = rx.recv_timeout(LIMIT).expect("the device reconnects after the silence").unwrap();
    assert_visor_healthy(&r.kill());
}

/// A minimal server end for tests: reads one frame from a TCP stream with the one frame codec
/// (`keel_proto::frame::Decoder`, through `keel_link::frame`), a byte per read so that nothing of
/// the next frame is consumed.
fn read_frame(s: &mut std::net::TcpStream) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut d = keel_link::frame::Decoder::<{ keel_link::session::MAX_FRAME }>::new();
    let mut byte = [0u8; 1];
    loop {
        s.read_exact(&mut byte)?;
        let (_, done) =
            d.push(&byte).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{e:?}")))?;
        if done.is_some() {
            return Ok(d.frame().to_vec());
        }
    }
}

#[test]
fn secure_channel_sets_the_wall_clock_and_delivers_logs_exactly_once_across_reconnects() {
    use std::io::Write;
    use std::net::TcpListener;

    use clatter::bytearray::ByteArray;
    use clatter::traits::Dh;
    use keel_link::msg::{decode_up, features, negotiate, Down, Up, PROTOCOL_MIN, PROTOCOL_VERSION};
    use keel_link::session::server::Accepting;

    let server_keys = snow::Builder::new(keel_link::session::NOISE_PARAMS.parse().unwrap()).generate_keypair().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut factory = flash::new_factory_for("10.0.2.2", port).unwrap();
    factory.server_key.copy_from_slice(&server_keys.public);
    let device_public = clatter::crypto::dh::X25519::pubkey(
        &<clatter::crypto::dh::X25519 as Dh>::PrivateKey::from_slice(&factory.device_key),
    );
    let path = flash_path("channel");
    flash::create(&path, &factory).unwrap();
    let img = elf::image_from_elf(&keel_vdev::app_elf("hello"), "1.2.3").unwrap();
    flash::program_app(&path, layout::APP_A, &img).unwrap();
    let dev = Device { visor: keel_vdev::visor_elf(), flash: path, clock: Clock::Deterministic };
    let mut r = start(&dev);

    const WALL: u64 = 1_800_000_000_000_000;
    let mut received: Vec<(u64, String)> = Vec::new();
    for round in 0..2 {
        let (mut sock, _) = listener.accept().unwrap();
        sock.set_read_timeout(Some(LIMIT)).unwrap();
        let acc = Accepting::read(&server_keys.private, &read_frame(&mut sock).unwrap()).unwrap();
        assert_eq!(acc.device_key, device_public, "the device authenticates with its factory key");
        let hello = acc.hello().unwrap();
        assert_eq!((hello.protocol, hello.boot_count), (keel_link::msg::PROTOCOL_VERSION, 1));
        if round == 1 {
            assert_eq!(hello.app, Some(("hello", "1.2.3")), "the running app is reported");
        }
        let n = negotiate(&hello, PROTOCOL_MIN, PROTOCOL_VERSION, features::SUPPORTED).expect("a common version");
        let acked = received.last().map(|(s, _)| *s);
        let welcome = Down::Welcome { protocol: n.protocol, unix_us: WALL, log_acked: acked, features: n.features };
        let (mut session, welcome) = acc.welcome(&welcome).unwrap();
        sock.write_all(&welcome).unwrap();
        // Collect records until the app has printed three lines with the wall clock set.
        let mut walls = 0;
        while walls < 3 {
            let frame = match read_frame(&mut sock) {
                Ok(f) => f,
                Err(e) => {
                    r.run_for(Duration::from_millis(300));
                    panic!("device closed the connection ({e}); console:\n{}", r.lines.join("\n"));
                }
            };
            let plain = session.receive(&frame).unwrap();
            let record = match decode_up(&plain).unwrap() {
                Up::Log { seq, text, .. } => Some((seq, String::from_utf8_lossy(text).to_string())),
                // Visor events arrive typed; the text is what the server would store.
                Up::Event { seq, event, .. } => {
                    let mut text = String::new();
                    event.write_text("?", &mut text).unwrap();
                    Some((seq, text))
                }
                _ => None,
            };
            if let Some((seq, text)) = record {
                if text.starts_with("hello: device=") && !text.ends_with("wall=not-set") {
                    let wall: u64 = field(&text, "wall").unwrap().parse().unwrap();
                    assert!(wall > WALL && wall < WALL + 600_000_000, "wall clock from the server: {wall}");
                    walls += 1;
                }
                received.push((seq, text));
                sock.write_all(&session.send(&Down::LogAck { upto: seq }).unwrap()).unwrap();
            }
        }
        // Round 0 ends by dropping the connection; the device reconnects by itself.
    }
    let lines = r.kill();
    // Every sequence number exactly once and in order, across the reconnect.
    for w in received.windows(2) {
        assert_eq!(w[1].0, w[0].0 + 1, "gap or duplicate between {:?} and {:?}", w[0], w[1]);
    }
    assert!(received.iter().any(|(_, t)| t.starts_with("boot #1")), "visor events are sent too");
    assert!(lines.iter().any(|l| message(l) == "net: online (secure channel up, wall clock set)"));
    assert_visor_healthy(&lines);
}

#[test]
fn missing_or_corrupt_app_is_refused_and_the_visor_keeps_running() {
    let (dev, _) = new_device("noapp", None);
    let mut r = start(&dev);
    let l =
        r.wait_for("refusal", LIMIT, |l| message(l).starts_with("app not started")).unwrap_or_else(|e| panic!("{e}"));
    assert!(l.contains("bad magic"), "{l}");
    assert_visor_healthy(&r.kill());

    let (dev, _) = new_device("corrupt", Some("hello"));
    // Flip one byte of the image (not the header) in the slot.
    let mut data = std::fs::read(&dev.flash).unwrap();
    data[(layout::APP_A.offset + 256 + 100) as usize] ^= 0x40;
    std::fs::write(&dev.flash, data).unwrap();
    let mut r = start(&dev);
    let l =
        r.wait_for("refusal", LIMIT, |l| message(l).starts_with("app not started")).unwrap_or_else(|e| panic!("{e}"));
    assert!(l.contains("digest mismatch"), "{l}");
    let lines = r.kill();
    assert!(!lines.iter().any(|l| l.contains("app:")), "no app code ran");
    assert_visor_healthy(&lines);
}

/// A device with `v1` running from slot A and `v2` staged in slot B as an update on trial
/// (through the same install path the visor runs for an over-the-air update).
fn device_with_trial(test: &str, v1: &str, v2: &str, policy: keel_update::TrialPolicy) -> Device {
    let (dev, _) = new_device(test, Some(v1));
    let img = elf::image_from_elf(&keel_vdev::app_elf(v2), "2.0.0").unwrap();
    flash::stage_update(&dev.flash, &img, 2, policy).unwrap();
    dev
}

#[test]
fn a_crashing_update_is_rolled_back_after_its_crash_budget() {
    use keel_update::{Confirm, Outcome, Reason, Slot, TrialPolicy};
    let policy = TrialPolicy { max_crashes: 3, grace_s: 600, confirm: Confirm::ByApp };
    let dev = device_with_trial("trial-crashy", "hello", "crashy", policy);
    let mut r = start(&dev);
    r.wait_for("trial", LIMIT, |l| message(l).starts_with("update: trial of seq 2 in slot B")).unwrap();
    let back = r
        .wait_for("rollback", LIMIT, |l| message(l) == "update: rolled back seq 2 (crash loop)")
        .unwrap_or_else(|e| panic!("{e}"));
    r.wait_for("old app", LIMIT, |l| message(l).starts_with("hello: device=")).unwrap();
    let lines = r.kill();
    assert_visor_healthy(&lines);
    let crashes = lines
        .iter()
        .take_while(|l| *l != &back)
        .filter(|l| message(l).starts_with("app crash: ") && !message(l).contains("stack"))
        .count();
    assert_eq!(crashes, 3, "rolled back at the third crash");
    let s = flash::update_state(&dev.flash).unwrap();
    assert_eq!((s.active, s.installed_seq, s.last), (Slot::A, 0, Some((2, Outcome::RolledBack(Reason::CrashLoop)))));

    // After a power cycle the device stays on the previous app.
    let mut r = start(&dev);
    r.wait_for("old app", LIMIT, |l| message(l).starts_with("hello: device=")).unwrap();
    let lines = r.kill();
    assert!(!lines.iter().any(|l| message(l).contains("update: trial")), "{lines:#?}");
    assert!(lines.iter().any(|l| message(l).starts_with("starting app 'hello' 1.0.0")));
}

#[test]
fn an_update_that_never_confirms_is_rolled_back_when_its_grace_time_ends() {
    use keel_update::{Confirm, Outcome, Reason, Slot, TrialPolicy};
    // hello-c never calls update_confirm; the policy needs the app to.
    let policy = TrialPolicy { max_crashes: 3, grace_s: 5, confirm: Confirm::ByApp };
    let dev = device_with_trial("trial-unconfirmed", "crashy", "hello-c", policy);
    let mut r = start(&dev);
    let started = r.wait_for("trial app", LIMIT, |l| message(l).starts_with("starting app 'hello-c' 2.0.0")).unwrap();
    let back = r
        .wait_for("rollback", LIMIT, |l| message(l) == "update: rolled back seq 2 (not confirmed in time)")
        .unwrap_or_else(|e| panic!("{e}"));
    let waited = time_us(&back) - time_us(&started);
    assert!((5_000_000..5_100_000).contains(&waited), "rolled back {waited} µs after the start");
    r.wait_for("previous app", LIMIT, |l| message(l).starts_with("starting app 'crashy' 1.0.0")).unwrap();
    assert_visor_healthy(&r.kill());
    let s = flash::update_state(&dev.flash).unwrap();
    assert_eq!((s.active, s.last), (Slot::A, Some((2, Outcome::RolledBack(Reason::NotConfirmed)))));
}

#[test]
fn an_update_that_confirms_becomes_the_installed_app() {
    use keel_update::{Confirm, Outcome, Phase, Slot, TrialPolicy};
    let policy = TrialPolicy { max_crashes: 3, grace_s: 5, confirm: Confirm::ByApp };
    let dev = device_with_trial("trial-confirmed", "crashy", "hello", policy);
    let mut r = start(&dev);
    // The visor logs the confirmation inside the app's system call, before the app's own line.
    r.wait_for("visor", LIMIT, |l| message(l) == "update: confirmed seq 2 (by the app)")
        .unwrap_or_else(|e| panic!("{e}"));
    r.wait_for("confirm", LIMIT, |l| message(l) == "hello: update confirmed").unwrap_or_else(|e| panic!("{e}"));
    // Well past the grace time: still running, no rollback.
    r.wait_for("later", LIMIT, |l| message(l).starts_with("hello: device=") && time_us(l) > 8_000_000)
        .unwrap_or_else(|e| panic!("{e}"));
    let lines = r.kill();
    assert_visor_healthy(&lines);
    assert!(!lines.iter().any(|l| message(l).contains("rolled back")), "{lines:#?}");
    let s = flash::update_state(&dev.flash).unwrap();
    assert_eq!((s.active, s.installed_seq, s.phase, s.last), (Slot::B, 2, Phase::Idle, Some((2, Outcome::Confirmed))));
    // The next boot runs slot B, not on trial.
    let mut r = start(&dev);
    r.wait_for("v2", LIMIT, |l| message(l).starts_with("starting app 'hello' 2.0.0")).unwrap_or_else(|e| panic!("{e}"));
    assert!(!r.kill().iter().any(|l| message(l).contains("update: trial")));
}

#[test]
fn a_hanging_update_is_rolled_back_by_the_watchdog() {
    use keel_update::{Confirm, Outcome, Reason, Slot, TrialPolicy};
    let policy = TrialPolicy { max_crashes: 2, grace_s: 600, confirm: Confirm::ByApp };
    let dev = device_with_trial("trial-hang", "hello", "hang", policy);
    let mut r = start(&dev);
    r.wait_for("rollback", LIMIT, |l| message(l) == "update: rolled back seq 2 (watchdog)")
        .unwrap_or_else(|e| panic!("{e}"));
    r.wait_for("old app", LIMIT, |l| message(l).starts_with("hello: device=")).unwrap();
    assert_visor_healthy(&r.kill());
    let s = flash::update_state(&dev.flash).unwrap();
    assert_eq!((s.active, s.last), (Slot::A, Some((2, Outcome::RolledBack(Reason::Watchdog)))));
}
