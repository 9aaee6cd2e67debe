//! Remote debugging end to end: `gdb-multiarch` -> `keel debug` (the GDB server on this machine)
//! -> the Keel server's relay -> a QEMU device running the visor and a debuggable app, with the
//! session encrypted end to end between the CLI and the visor.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::Instant;

use keel_debug::session::{Client as Session, Refusal, MAX_FRAME};
use keel_debug::wire::{Event, Op, OpResult, Request, Results, Status, Stop, StopReason, MAX_MESSAGE, PC};
use keel_flash::layout;
use keel_vdev::qemu::{Clock, Device, Running};
use keel_vdev::{elf, flash};
use rand_core::OsRng;

mod common;

use common::*;

/// One server, one provisioned QEMU device running `app`, and a debug key pair.
struct Lab {
    dir: PathBuf,
    /// The release signing key (the device trusts it for updates).
    release: String,
    env: Vec<(String, String)>,
    id: String,
    key: PathBuf,
    public: String,
    qemu: Running,
    _server: Kill,
}

impl Lab {
    /// `debuggable`: the app's header names the lab's debug key.
    fn start(name: &str, app: &str, debuggable: bool, capture: Option<&Path>) -> Lab {
        let dir = keel_vdev::repo_root().join("target/debug-e2e").join(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let data = dir.join("data").display().to_string();
        let token = keel(&["server", "init", "--data", &data], &[])["token"].as_str().unwrap().to_string();
        let (http, gw) = (free_port(), free_port());
        let capture = capture.map(|c| c.display().to_string());
        let server_env: Vec<(&str, &str)> = capture.iter().map(|c| ("KEEL_DEBUG_CAPTURE", c.as_str())).collect();
        let server = start_server_with(&data, http, gw, false, &server_env);
        let env = vec![
            ("KEEL_SERVER".to_string(), format!("http://127.0.0.1:{http}")),
            ("KEEL_TOKEN".to_string(), token),
            ("KEEL_CONFIG".to_string(), dir.join("none.toml").display().to_string()),
        ];
        let envr: Vec<(&str, &str)> = env.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        let flash_path = dir.join("dev.flash");
        let fp = flash_path.display().to_string();
        let release = dir.join("release").display().to_string();
        keel(&["keys", "new", "--out", &release], &envr);
        keel(&["keys", "add", &format!("{release}.pub"), "--name", "release"], &envr);
        let signer = format!("{release}.pub");
        let gws = gw.to_string();
        let prov = keel(
            &["device", "provision", "--flash", &fp, "--name", name, "--gateway-port", &gws, "--signer-key", &signer],
            &envr,
        );
        let id = prov["device"]["id"].as_str().unwrap().to_string();
        let keys = keel(&["keys", "new", "--debug", "--out", &dir.join("dev").display().to_string()], &envr);
        let key = PathBuf::from(keys["secret"].as_str().unwrap());
        let public = keys["public_key"].as_str().unwrap().to_string();
        let pk: [u8; 32] = keel_server::unhex(&public).unwrap().try_into().unwrap();
        let img = elf::image_from_elf(&keel_vdev::app_elf(app), "1.0.0").unwrap();
        let img = img.with_debug_key(debuggable.then_some(pk));
        flash::program_app(&flash_path, layout::APP_A, &img).unwrap();
        let dev = Device { visor: keel_vdev::visor_elf(), flash: flash_path, clock: Clock::RealTime };
        let mut qemu = dev.start().unwrap();
        qemu.wait_for("online", LIMIT, |l| l.contains("net: online")).unwrap();
        Lab { dir, release, env, id, key, public, qemu, _server: server }
    }

    fn envr(&self) -> Vec<(&str, &str)> {
        self.env.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect()
    }

    /// `keel debug` on a free port; returns the process and the port once it listens.
    fn debug_server(&self, key: &Path, elf: &Path, stats: &Path) -> (Kill, u16) {
        let mut child = Command::new(KEEL)
            .args(["debug", &self.id, "--key"])
            .arg(key)
            .arg("--elf")
            .arg(elf)
            .args(["--port", "0", "--stats"])
            .arg(stats)
            .envs(self.envr())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                eprintln!("keel debug: {l}");
            }
        });
        let port = line
            .trim()
            .strip_prefix("GDB server listening on 127.0.0.1:")
            .unwrap_or_else(|| panic!("keel debug said: {line:?}"))
            .parse()
            .unwrap();
        (Kill(child), port)
    }

    /// `keel debug` that must fail: its error.
    fn debug_refused(&self, key: &Path) -> String {
        let out = Command::new(KEEL)
            .args(["debug", &self.id, "--key"])
            .arg(key)
            .args(["--port", "0"])
            .envs(self.envr())
            .output()
            .unwrap();
        assert!(!out.status.success(), "keel debug should fail: {}", String::from_utf8_lossy(&out.stdout));
        String::from_utf8_lossy(&out.stderr).to_string()
    }

    /// Waits for an app log line with `prefix` in the device console; returns it.
    fn app_line(&mut self, prefix: &str) -> String {
        self.qemu.wait_for(prefix, LIMIT, |l| l.contains(prefix)).unwrap_or_else(|e| panic!("{e:?}"))
    }
}

/// The debug session without gdb: the wire protocol straight through the relay.
struct Raw {
    session: Session<OsRng>,
    socket: keel_api::DebugSocket,
    next: u16,
}

impl Raw {
    fn open(lab: &Lab, secret: &[u8; 32]) -> Result<Raw, Refusal> {
        let envr = lab.envr();
        let url = envr.iter().find(|(k, _)| *k == "KEEL_SERVER").unwrap().1;
        let token = envr.iter().find(|(k, _)| *k == "KEEL_TOKEN").unwrap().1;
        let api = keel_api::Client::new(url).with_token(token);
        let device = api.device(&lab.id).unwrap();
        let device_key: [u8; 32] = keel_server::unhex(&device.public_key).unwrap().try_into().unwrap();
        let mut socket = api.debug_socket(&lab.id).unwrap();
        // The device may be online a moment before the server has its session: like the CLI,
        // start the handshake again until it is answered.
        for _ in 0..20 {
            let mut session = Session::<OsRng>::new(secret, &device_key).unwrap();
            let mut f = [0u8; MAX_FRAME];
            let n = session.start(0, &mut f).unwrap();
            socket.send(&f[..n]).unwrap();
            let Some(reply) = socket.recv(std::time::Duration::from_secs(3)).unwrap() else { continue };
            if let Some(r) = Refusal::parse(&reply) {
                return Err(r);
            }
            let mut plain = [0u8; MAX_FRAME];
            session.open(&reply, &mut plain).expect("the device's handshake authenticates");
            return Ok(Raw { session, socket, next: 1 });
        }
        panic!("no answer to the handshake");
    }

    fn event(&mut self) -> Option<Vec<u8>> {
        let f = self.socket.recv(LIMIT).ok()??;
        let mut plain = [0u8; MAX_FRAME];
        let n = self.session.open(&f, &mut plain).expect("frames from the device authenticate");
        Some(plain[..n].to_vec())
    }

    /// One request; the results as `Ok(data)` / `Err(status)`.
    fn request(&mut self, ops: &[Op<'_>]) -> Vec<Result<Vec<u8>, Status>> {
        let mut p = [0u8; MAX_MESSAGE];
        let n = Request::encode(self.next, ops, &mut p).unwrap();
        self.next += 1;
        let mut f = [0u8; MAX_FRAME];
        let m = self.session.seal(&p[..n], &mut f).unwrap();
        self.socket.send(&f[..m]).unwrap();
        loop {
            let plain = self.event().expect("a reply");
            if let Event::Reply { results, .. } = Event::decode(&plain).unwrap() {
                let mut r = Results::new(results);
                return ops
                    .iter()
                    .map(|op| match r.next(op).unwrap() {
                        OpResult::Ok(d) => Ok(d.to_vec()),
                        OpResult::Err(s) => Err(s),
                    })
                    .collect();
            }
        }
    }

    fn stop(&mut self) -> Stop {
        loop {
            let plain = self.event().expect("a stop");
            if let Event::Stop(s) = Event::decode(&plain).unwrap() {
                return s;
            }
        }
    }
}

/// gdb-multiarch driven through its standard input, one command at a time.
struct Gdb {
    child: Child,
    stdin: ChildStdin,
    rx: Receiver<String>,
    n: u32,
    /// Everything gdb printed.
    transcript: String,
}

impl Gdb {
    fn start(elf: &Path) -> Gdb {
        let mut child = Command::new("gdb-multiarch")
            .args(["-nx", "-q", "-ex", "set pagination off", "-ex", "set confirm off", "-ex", "set width 0"])
            .arg(elf)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("gdb-multiarch (cargo xtask test installs it)");
        let (tx, rx) = channel();
        for r in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for l in BufReader::new(r).lines().map_while(Result::ok) {
                    if tx.send(l).is_err() {
                        break;
                    }
                }
            });
        }
        let stdin = child.stdin.take().unwrap();
        Gdb { child, stdin, rx, n: 0, transcript: String::new() }
    }

    /// Runs `c`; returns what it printed.
    fn cmd(&mut self, c: &str) -> String {
        self.n += 1;
        let marker = format!("@@done-{}@@", self.n);
        writeln!(self.stdin, "{c}\necho {marker}\\n").unwrap();
        self.stdin.flush().unwrap();
        self.transcript.push_str(&format!("(gdb) {c}\n"));
        let mut out = String::new();
        let deadline = Instant::now() + LIMIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .rx
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("gdb did not finish `{c}`; so far:\n{}{out}", self.transcript));
            if line.contains(&marker) {
                break;
            }
            out.push_str(&line);
            out.push('\n');
        }
        self.transcript.push_str(&out);
        out
    }

    /// Like Ctrl-C in a terminal: SIGINT to gdb, which interrupts the target.
    fn interrupt(&self) {
        let _ = Command::new("kill").args(["-INT", &self.child.id().to_string()]).status();
    }

    /// Sends `c` without waiting for it to finish.
    fn send(&mut self, c: &str) {
        self.n += 1;
        writeln!(self.stdin, "{c}").unwrap();
        self.stdin.flush().unwrap();
        self.transcript.push_str(&format!("(gdb) {c}\n"));
    }

    /// Waits until gdb printed a line containing `what`; returns everything up to it.
    fn expect(&mut self, what: &str) -> String {
        let mut out = String::new();
        loop {
            let line = self
                .rx
                .recv_timeout(LIMIT)
                .unwrap_or_else(|_| panic!("gdb never printed {what:?}; so far:\n{}{out}", self.transcript));
            out.push_str(&line);
            out.push('\n');
            if line.contains(what) {
                self.transcript.push_str(&out);
                return out;
            }
        }
    }
}

impl Drop for Gdb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The bytes gdb shows for `expr` from the ELF file alone (no target).
fn elf_bytes(elf: &Path, expr: &str) -> String {
    let out = Command::new("gdb-multiarch")
        .args(["-nx", "-q", "-batch", "-ex", &format!("x/32xb {expr}")])
        .arg(elf)
        .output()
        .unwrap();
    bytes_of(&String::from_utf8_lossy(&out.stdout))
}

/// The hex bytes of an `x/..xb` listing, without the addresses.
fn bytes_of(listing: &str) -> String {
    listing
        .lines()
        .filter_map(|l| l.rsplit_once(">:").map(|(_, b)| b.split_whitespace().collect::<Vec<_>>().join(" ")))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The scripted session of the issue: break, continue, bt, print, set var, step, next, finish,
/// delete, continue, Ctrl-C, detach; then the app runs on with its original code.
fn scripted_session(app: &str, scale_var: &str, main_fn: &str, scaled_fn: &str) {
    let stats = keel_vdev::repo_root().join(format!("target/debug-e2e/{app}-stats.json"));
    let capture = keel_vdev::repo_root().join(format!("target/debug-e2e/{app}-capture.txt"));
    let _ = std::fs::remove_file(&capture);
    let mut lab = Lab::start(app, app, true, Some(&capture));
    let elf = keel_vdev::app_elf(app);
    lab.app_line(&format!("{app}: tick="));
    let (_debug, port) = lab.debug_server(&lab.key.clone(), &elf, &stats);
    let mut gdb = Gdb::start(&elf);
    let out = gdb.cmd(&format!("target extended-remote 127.0.0.1:{port}"));
    assert!(!out.contains("Remote communication error") && !out.contains("failed"), "{out}");

    let out = gdb.cmd("break scaled");
    assert!(out.contains("Breakpoint 1 at"), "{out}");
    let bp = out.split("Breakpoint 1 at 0x").nth(1).and_then(|r| r.split(':').next()).unwrap();
    let bp_addr = u32::from_str_radix(bp, 16).unwrap();
    let out = gdb.cmd("continue");
    assert!(out.contains("Breakpoint 1, ") && out.contains("scaled (x="), "{}", gdb.transcript);
    // Halted at a breakpoint: the device stays online.
    let envr = lab.envr();
    assert_eq!(keel(&["device", "show", &lab.id], &envr)["online"], true);
    // ... and keeps logging: the visor's own line about the halt reaches the server meanwhile.
    let mut seen = false;
    for _ in 0..100 {
        let logs = keel(&["logs", &lab.id], &envr);
        let texts: Vec<&str> = logs.as_array().unwrap().iter().filter_map(|r| r["text"].as_str()).collect();
        if texts.iter().any(|t| t.starts_with("debug: app halted (breakpoint) at pc=")) {
            seen = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(seen, "the halted device's log line reaches the server");

    let out = gdb.cmd("bt");
    assert!(out.contains("#0") && out.contains("scaled") && out.contains(main_fn), "{}", gdb.transcript);
    let out = gdb.cmd("print x");
    let x: u64 = out.trim().rsplit(' ').next().unwrap().parse().unwrap_or_else(|_| panic!("{out}"));
    let out = gdb.cmd(&format!("print {scale_var}"));
    assert!(out.trim().ends_with("= 1") || out.contains("value: 1"), "{out}");
    gdb.cmd(&format!("set var {scale_var} = 7"));

    // Into offset() by single steps, then out again with the new scale in the result.
    let mut inside = false;
    for _ in 0..12 {
        let out = gdb.cmd("step");
        // Entering shows the frame, `offset (v=...) at ...` (a source line `offset(product)` is
        // not inside it).
        if out.contains("offset (") {
            inside = true;
            break;
        }
    }
    assert!(inside, "step never entered offset():\n{}", gdb.transcript);
    let out = gdb.cmd("finish");
    assert!(out.contains("Run till exit from") && out.contains(&format!("{}", x * 7 + 1000)), "{}", gdb.transcript);
    let out = gdb.cmd("finish");
    assert!(out.contains("Run till exit from") && out.contains(main_fn), "{}", gdb.transcript);
    let out = gdb.cmd("next");
    assert!(!out.contains("error") && !out.contains("Cannot"), "{}", gdb.transcript);
    let out = gdb.cmd("delete");
    assert!(!out.contains("error"), "{out}");

    // Continue, and Ctrl-C once the app logs with its new scale.
    gdb.send("continue");
    let line = lab.app_line(&format!("value={}", (x + 3) * 7 + 1000));
    assert!(line.contains("tick="), "{line}");
    gdb.interrupt();
    gdb.expect("SIGINT");
    let out = gdb.cmd("detach");
    assert!(out.contains("Detaching") || out.contains("detached"), "{}", gdb.transcript);
    drop(gdb);

    // The app runs on, with the new scale, and its code is what the ELF says.
    lab.app_line(&format!("{app}: tick="));
    let (_debug2, port2) = lab.debug_server(&lab.key.clone(), &elf, &stats.with_extension("2.json"));
    let mut gdb = Gdb::start(&elf);
    gdb.cmd(&format!("target extended-remote 127.0.0.1:{port2}"));
    let listing = gdb.cmd(&format!("x/32xb {scaled_fn}"));
    let live = bytes_of(&listing);
    assert!(!live.is_empty(), "{listing}");
    assert_eq!(live, elf_bytes(&elf, scaled_fn), "the code of scaled() is the ELF's after detach");
    gdb.cmd("detach");
    drop(gdb);

    // The relay saw only ciphertext: none of the RSP packets of the session.
    let seen = std::fs::read_to_string(&capture).unwrap();
    let frames: Vec<Vec<u8>> = seen.lines().filter_map(|l| keel_server::unhex(l.split_whitespace().nth(1)?)).collect();
    assert!(frames.len() > 20, "the capture holds the session's frames");
    // What went through in plaintext inside the session: the breakpoint request on scaled() and
    // the stop event it caused (debug wire encodings), and no RSP either.
    let mut set_break = vec![0x08];
    set_break.extend_from_slice(&bp_addr.to_le_bytes());
    set_break.push(0);
    let stop_at_bkpt = [0x81, 0x01, 0x4b, 0x00, 0x00, 0x00].to_vec();
    for needle in [set_break, stop_at_bkpt, b"qSupported".to_vec(), b"$Z0,".to_vec()] {
        let found = frames.iter().any(|f| f.windows(needle.len()).any(|w| w == needle.as_slice()));
        assert!(!found, "the relay saw {needle:02x?} in the clear");
    }
    let stats: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&stats).unwrap()).unwrap();
    let (packets, trips) = (stats["gdb_packets"].as_u64().unwrap(), stats["device_round_trips"].as_u64().unwrap());
    assert!(trips < packets, "the CLI answers most packets itself: {trips} round trips for {packets} packets");
    drop(lab);
}

#[test]
fn gdb_session_rust_app() {
    scripted_session("debuggee", "debuggee::SCALE.v.value", "debuggee::main", "debuggee::scaled");
}

#[test]
fn gdb_session_c_app() {
    scripted_session("debuggee-c", "scale", "main", "scaled");
}

#[test]
fn sessions_need_the_apps_debug_key() {
    // A debuggable app, the wrong key.
    let lab = Lab::start("refusals", "debuggee", true, None);
    let other = keel(&["keys", "new", "--debug", "--out", &lab.dir.join("other").display().to_string()], &lab.envr());
    let err = lab.debug_refused(Path::new(other["secret"].as_str().unwrap()));
    assert!(err.contains("another debug key"), "{err}");
    assert!(!lab.public.is_empty());
    drop(lab);
    // An app without a debug key.
    let lab = Lab::start("not-debuggable", "debuggee", false, None);
    let err = lab.debug_refused(&lab.key);
    assert!(err.contains("without a debug key"), "{err}");
}

#[test]
fn breakpoints_without_gdb_and_an_update_while_halted() {
    let mut lab = Lab::start("update-halted", "debuggee", true, None);
    lab.app_line("debuggee: tick=");
    let secret_hex = std::fs::read_to_string(&lab.key).unwrap();
    let secret: [u8; 32] = keel_server::unhex(secret_hex.trim()).unwrap().try_into().unwrap();
    let mut raw = Raw::open(&lab, &secret).unwrap();
    let elf_path = keel_vdev::app_elf("debuggee");
    let scaled = elf::symbol_address(&elf_path, "scaled").unwrap().unwrap() as u32 & !1;
    let before = raw.request(&[Op::ReadMem { addr: scaled, len: 16 }]).remove(0).unwrap();
    assert_eq!(raw.request(&[Op::Halt]), vec![Ok(vec![])]);
    assert_eq!(raw.stop().reason, StopReason::Halted);
    let r = raw.request(&[Op::SetBreak { addr: scaled, temporary: false }, Op::Resume]);
    assert!(r.iter().all(|r| r.is_ok()), "{r:?}");
    let stop = raw.stop();
    assert_eq!((stop.reason, stop.regs[PC]), (StopReason::Breakpoint, scaled));
    // The breakpoint is hidden from reads; secure memory is refused.
    let r = raw.request(&[Op::ReadMem { addr: scaled, len: 16 }, Op::ReadMem { addr: 0x1000_0000, len: 4 }]);
    assert_eq!(r[0].as_ref().unwrap(), &before);
    assert_eq!(r[1], Err(Status::Denied));
    // Halted at the breakpoint: the device stays online and an update still arrives, installs
    // and starts (the new app has no debug key: the session ends).
    assert_eq!(keel(&["device", "show", &lab.id], &lab.envr())["online"], true);
    let out = lab.dir.join("hello-2.keelb").display().to_string();
    let hello = keel_vdev::app_elf("hello").display().to_string();
    let key = format!("{}.key", lab.release);
    let envr = lab.envr();
    keel(&["bundle", &hello, "--key", &key, "--version", "2.0.0", "--politeness-s", "2", "--out", &out], &envr);
    let bundle = keel(&["apps", "upload", &out], &envr)["id"].as_str().unwrap().to_string();
    keel(&["deploy", &bundle, "--device", &lab.id], &envr);
    lab.qemu.wait_for("v2 starts", LIMIT, |l| l.contains("starting app 'hello' 2.0.0")).unwrap();
    lab.app_line("hello: device=");
    assert_eq!(Raw::open(&lab, &secret).err(), Some(Refusal::NotDebuggable));
}

#[test]
fn a_tampered_frame_ends_the_session_and_the_app_runs_on() {
    let mut lab = Lab::start("tamper", "debuggee", true, None);
    let secret_hex = std::fs::read_to_string(&lab.key).unwrap();
    let secret: [u8; 32] = keel_server::unhex(secret_hex.trim()).unwrap().try_into().unwrap();
    let mut raw = Raw::open(&lab, &secret).unwrap();
    assert_eq!(raw.request(&[Op::Halt]), vec![Ok(vec![])]);
    assert_eq!(raw.stop().reason, StopReason::Halted);
    let tick = |l: &str| l.split("tick=").nth(1).and_then(|t| t.split(' ').next()).and_then(|t| t.parse::<u64>().ok());
    let halted_at = lab.qemu.console_so_far().iter().rev().find_map(|l| tick(l)).unwrap_or(0);
    // The relay flips one bit of a request: the visor ends the session and lets the app go.
    let mut p = [0u8; MAX_MESSAGE];
    let n = Request::encode(99, &[Op::Ping], &mut p).unwrap();
    let mut f = [0u8; MAX_FRAME];
    let m = raw.session.seal(&p[..n], &mut f).unwrap();
    f[m - 1] ^= 0x01;
    raw.socket.send(&f[..m]).unwrap();
    let resumed = lab.qemu.wait_for("ticks again", LIMIT, |l| tick(l).is_some_and(|t| t > halted_at + 1)).unwrap();
    assert!(resumed.contains("debuggee: tick="), "{resumed}");
    // The session is gone: a well-formed request gets no answer.
    let n = Request::encode(100, &[Op::ReadRegs], &mut p).unwrap();
    let m = raw.session.seal(&p[..n], &mut f).unwrap();
    raw.socket.send(&f[..m]).unwrap();
    assert_eq!(raw.socket.recv(std::time::Duration::from_secs(3)).unwrap(), None);
}

#[test]
fn a_crash_from_the_field_opens_in_gdb() {
    let mut lab = Lab::start("post-mortem", "crashy", false, None);
    lab.qemu.wait_for("the crash", LIMIT, |l| l.contains("app crash: SecureFault")).unwrap();
    // The dump arrives as events after the crash report: wait until the server has its stack.
    let env = lab.env.clone();
    let envr: Vec<(&str, &str)> = env.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    let mut list = serde_json::Value::Null;
    for _ in 0..600 {
        list = keel(&["crash", "list", &lab.id], &envr);
        if list[0]["stack_bytes"].as_u64().unwrap_or(0) > 0 {
            break;
        }
        lab.qemu.run_for(std::time::Duration::from_millis(100));
    }
    assert!(list[0]["stack_bytes"].as_u64().unwrap_or(0) > 0, "{list}");
    let elf = keel_vdev::app_elf("crashy");
    let fault = elf::symbol_address(&elf, "crashy_fault_insn").unwrap().unwrap();
    assert_eq!(list[0]["pc"].as_u64(), Some(fault & !1), "{list}");

    let mut child = Command::new(KEEL)
        .args(["crash", "show", &lab.id, "--last", "--gdb", "--port", "0", "--elf"])
        .arg(&elf)
        .envs(envr.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let _serving = Kill(child);
    let port = line.trim().rsplit(':').next().unwrap().to_string();
    let mut gdb = Gdb::start(&elf);
    gdb.cmd(&format!("target remote 127.0.0.1:{port}"));
    let bt = gdb.cmd("bt");
    // The faulting instruction carries its own label inside crashy_do_fault().
    let faulting = bt.contains("crashy_fault_insn") || bt.contains("crashy_do_fault");
    assert!(bt.contains("#0") && faulting, "{}", gdb.transcript);
    assert!(bt.contains("crashy::main"), "the backtrace reaches main:\n{}", gdb.transcript);
    let regs = gdb.cmd("info registers pc");
    assert!(regs.contains(&format!("{:#x}", fault & !1)), "{regs}");
    gdb.cmd("detach");
}
