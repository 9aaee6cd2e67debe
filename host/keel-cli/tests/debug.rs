//! Remote debugging end to end: `gdb-multiarch` -> `keel debug` (the GDB server on this machine)
//! -> the Keel server's relay -> a QEMU device running the visor and a debuggable app, with the
//! session encrypted end to end between the CLI and the visor.

use std::io::{BufRead, BufReader, Read, Write};
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
    /// The server's data directory and ports (to start it again).
    server_at: (String, u16, u16),
    server: Option<Kill>,
}

impl Lab {
    /// `debuggable`: the app's header names the lab's debug key.
    fn start(name: &str, app: &str, debuggable: bool, capture: Option<&Path>) -> Lab {
        let dir = keel_vdev::repo_root().join("target/debug-e2e").join(name);
        let capture = capture.map(|c| c.display().to_string());
        let server_env: Vec<(&str, &str)> = capture.iter().map(|c| ("KEEL_DEBUG_CAPTURE", c.as_str())).collect();
        let srv = TestServer::start(&dir, &server_env);
        let flash_path = dir.join("dev.flash");
        let (id, release) = srv.provision(&dir, name, &flash_path);
        let (env, data, http, gw, server) = (srv.env, srv.data, srv.http, srv.gw, srv.process);
        let envr: Vec<(&str, &str)> = env.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
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
        Lab { dir, release, env, id, key, public, qemu, server_at: (data, http, gw), server: Some(server) }
    }

    /// Kills the server (like a crash) and starts it again on the same data and ports.
    fn restart_server(&mut self) {
        drop(self.server.take());
        let (data, http, gw) = self.server_at.clone();
        self.server = Some(start_server(&data, http, gw, false));
    }

    fn api(&self) -> keel_api::Client {
        let envr = self.envr();
        let url = envr.iter().find(|(k, _)| *k == "KEEL_SERVER").unwrap().1;
        let token = envr.iter().find(|(k, _)| *k == "KEEL_TOKEN").unwrap().1;
        keel_api::Client::new(url).with_token(token)
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

/// The results of a reply to `ops`, owned: `Ok(data)` or `Err(status)` per op.
fn outcomes(ops: &[Op<'_>], results: &[u8]) -> Vec<Result<Vec<u8>, Status>> {
    let mut r = Results::new(results);
    ops.iter()
        .map(|op| match r.next(op).unwrap() {
            OpResult::Ok(d) => Ok(d.to_vec()),
            OpResult::Err(s) => Err(s),
        })
        .collect()
}

/// The debug session without gdb: the wire protocol straight through the relay.
struct Raw {
    session: Session<OsRng>,
    socket: keel_api::DebugSocket,
    next: u16,
}

impl Raw {
    fn open(lab: &Lab, secret: &[u8; 32]) -> Result<Raw, Refusal> {
        let api = lab.api();
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
                return outcomes(ops, results);
            }
        }
    }

    /// One request, sent again with the same id (the agent answers a repeat without running it
    /// twice) until it is answered; the relay socket is opened again when it drops.
    fn request_until_answered(&mut self, lab: &Lab, ops: &[Op<'_>]) -> Vec<Result<Vec<u8>, Status>> {
        let id = self.next;
        self.next += 1;
        let mut p = [0u8; MAX_MESSAGE];
        let n = Request::encode(id, ops, &mut p).unwrap();
        for _ in 0..40 {
            let mut f = [0u8; MAX_FRAME];
            let m = self.session.seal(&p[..n], &mut f).unwrap();
            if self.socket.send(&f[..m]).is_err() {
                if let Ok(s) = lab.api().debug_socket(&lab.id) {
                    self.socket = s;
                }
                std::thread::sleep(std::time::Duration::from_millis(250));
                continue;
            }
            let deadline = Instant::now() + std::time::Duration::from_secs(2);
            while Instant::now() < deadline {
                let Ok(Some(fr)) = self.socket.recv(std::time::Duration::from_millis(500)) else { continue };
                let mut plain = [0u8; MAX_FRAME];
                let k = self.session.open(&fr, &mut plain).expect("frames from the device authenticate");
                if let Ok(Event::Reply { id: rid, results }) = Event::decode(&plain[..k]) {
                    if rid == id {
                        return outcomes(ops, results);
                    }
                }
            }
        }
        panic!("request {id} never answered");
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

/// What the scripted session measured.
struct SessionNumbers {
    /// Wall time of the scripted commands, `target extended-remote` to the end of `detach`.
    seconds: f64,
    /// The `--stats` file `keel debug` wrote for that session.
    stats: serde_json::Value,
}

/// The scripted gdb commands of the issue against `target` (a `target ...` command): break,
/// continue, bt, print, set var, step, next, finish, delete, continue, Ctrl-C, detach.
/// `console` waits for a line of the device's console containing its argument and returns it;
/// `at_break` runs once, halted at the first breakpoint. Returns the wall time of the commands
/// (without `at_break`'s).
fn script(
    gdb: &mut Gdb,
    target: &str,
    scale_var: &str,
    main_fn: &str,
    console: &mut dyn FnMut(&str) -> String,
    at_break: &mut dyn FnMut(),
) -> f64 {
    let t0 = Instant::now();
    let out = gdb.cmd(target);
    assert!(!out.contains("Remote communication error") && !out.contains("failed"), "{out}");

    let out = gdb.cmd("break scaled");
    assert!(out.contains("Breakpoint 1 at"), "{out}");
    let out = gdb.cmd("continue");
    assert!(out.contains("Breakpoint 1, ") && out.contains("scaled (x="), "{}", gdb.transcript);
    let t1 = Instant::now();
    at_break();
    let aside = t1.elapsed();

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
    let line = console(&format!("value={}", (x + 3) * 7 + 1000));
    assert!(line.contains("tick="), "{line}");
    gdb.interrupt();
    gdb.expect("SIGINT");
    let out = gdb.cmd("detach");
    assert!(out.contains("Detaching") || out.contains("detached"), "{}", gdb.transcript);
    (t0.elapsed() - aside).as_secs_f64()
}

/// The scripted session through `keel debug`; then the app runs on with its original code, and
/// the relay saw only ciphertext.
fn scripted_session(app: &str, scale_var: &str, main_fn: &str, scaled_fn: &str) -> SessionNumbers {
    let stats = keel_vdev::repo_root().join(format!("target/debug-e2e/{app}-stats.json"));
    let capture = keel_vdev::repo_root().join(format!("target/debug-e2e/{app}-capture.txt"));
    let _ = std::fs::remove_file(&capture);
    let _ = std::fs::remove_file(&stats);
    let mut lab = Lab::start(app, app, true, Some(&capture));
    let elf = keel_vdev::app_elf(app);
    lab.app_line(&format!("{app}: tick="));
    let (mut debug, port) = lab.debug_server(&lab.key.clone(), &elf, &stats);
    let mut gdb = Gdb::start(&elf);
    let envr: Vec<(&str, &str)> = lab.env.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    let id = lab.id.clone();
    let qemu = &mut lab.qemu;
    let seconds = script(
        &mut gdb,
        &format!("target extended-remote 127.0.0.1:{port}"),
        scale_var,
        main_fn,
        &mut |what| qemu.wait_for(what, LIMIT, |l| l.contains(what)).unwrap_or_else(|e| panic!("{e:?}")),
        // Halted at a breakpoint: the device stays online and keeps logging (the visor's own
        // line about the halt reaches the server meanwhile).
        &mut || {
            assert_eq!(keel(&["device", "show", &id], &envr)["online"], true);
            let mut seen = false;
            for _ in 0..100 {
                let logs = keel(&["logs", &id], &envr);
                let texts: Vec<&str> = logs.as_array().unwrap().iter().filter_map(|r| r["text"].as_str()).collect();
                if texts.iter().any(|t| t.starts_with("debug: app halted (breakpoint) at pc=")) {
                    seen = true;
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            assert!(seen, "the halted device's log line reaches the server");
        },
    );
    let _ = std::fs::write(stats.with_extension("transcript.txt"), &gdb.transcript);
    let transcript = gdb.transcript.clone();
    drop(gdb);
    // `keel debug` exits after the detach, writing its stats.
    wait_exit(&mut debug);

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
    let bp = transcript.split("Breakpoint 1 at 0x").nth(1).and_then(|r| r.split(':').next()).unwrap();
    let bp_addr = u32::from_str_radix(bp, 16).unwrap();
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
    SessionNumbers { seconds, stats }
}

/// Waits (bounded) for a process that is about to exit on its own.
fn wait_exit(p: &mut Kill) {
    let deadline = Instant::now() + LIMIT;
    while p.0.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the process did not exit");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
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

/// A minimal GDB remote-protocol client (`$payload#checksum`, acknowledgements unless the server
/// takes `QStartNoAckMode`): enough to time packets against a GDB server.
struct Rsp {
    out: std::net::TcpStream,
    input: BufReader<std::net::TcpStream>,
    ack: bool,
}

impl Rsp {
    /// Connects and leaves acknowledgement mode if the server can.
    fn connect(port: u16) -> Rsp {
        let out = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        out.set_nodelay(true).unwrap();
        out.set_read_timeout(Some(LIMIT)).unwrap();
        let input = BufReader::new(out.try_clone().unwrap());
        let mut rsp = Rsp { out, input, ack: true };
        // QEMU's stub may announce the stop of the machine before it answers.
        let mut p = rsp.ask("QStartNoAckMode");
        while p.starts_with('T') {
            p = rsp.packet();
        }
        // QEMU 7.2's stub has no `QStartNoAckMode` (an empty answer): acknowledgements then stay
        // on, without costing a round trip (the `+` comes before each answer, ours goes
        // unanswered).
        assert!(p == "OK" || p.is_empty(), "QStartNoAckMode: {p}");
        rsp.ack = p.is_empty();
        rsp
    }

    /// Sends a packet; returns the first packet of the answer.
    fn ask(&mut self, payload: &str) -> String {
        let sum = payload.bytes().fold(0u8, |a, b| a.wrapping_add(b));
        write!(self.out, "${payload}#{sum:02x}").unwrap();
        self.out.flush().unwrap();
        self.packet()
    }

    /// The next packet (acknowledgements before it are skipped).
    fn packet(&mut self) -> String {
        let mut byte = [0u8; 1];
        loop {
            self.input.read_exact(&mut byte).unwrap();
            if byte[0] == b'$' {
                break;
            }
        }
        let mut body = Vec::new();
        self.input.read_until(b'#', &mut body).unwrap();
        body.pop();
        let mut sum = [0u8; 2];
        self.input.read_exact(&mut sum).unwrap();
        if self.ack {
            self.out.write_all(b"+").unwrap();
        }
        String::from_utf8(body).unwrap()
    }

    /// A `monitor` command: its console output (`O` packets up to `OK`).
    fn monitor(&mut self, cmd: &str) -> String {
        let hex: String = cmd.bytes().map(|b| format!("{b:02x}")).collect();
        let mut p = self.ask(&format!("qRcmd,{hex}"));
        let mut text = Vec::new();
        while p != "OK" {
            let h = p.strip_prefix('O').unwrap_or_else(|| panic!("monitor {cmd}: {p}"));
            text.extend((0..h.len()).step_by(2).map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap()));
            p = self.packet();
        }
        String::from_utf8(text).unwrap()
    }

    /// The times (ms) of `READS` reads of 4 bytes, 1 KiB apart from `base`: with an empty cache
    /// in `keel debug`, each is one device round trip.
    fn read_ms(&mut self, base: u32) -> Vec<f64> {
        (0..READS)
            .map(|i| {
                let t0 = Instant::now();
                let r = self.ask(&format!("m{:x},4", base + i * 1024));
                assert!(!r.is_empty() && !r.starts_with('E'), "m{:x},4: {r}", base + i * 1024);
                t0.elapsed().as_secs_f64() * 1000.0
            })
            .collect()
    }
}

/// Memory reads per timed round.
const READS: u32 = 50;
/// Where each timed round reads (app RAM, 64 KiB apart, above the debuggee's stack, data and
/// `.bss`, so no block was prefetched with the stack).
const ROUNDS: [u32; 3] = [0x2801_0000, 0x2802_0000, 0x2803_0000];

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

/// The rounds of reads from `rsp` (times in ms, one `Vec` per round).
fn timed_rounds(rsp: &mut Rsp) -> Vec<Vec<f64>> {
    ROUNDS.iter().map(|&base| rsp.read_ms(base)).collect()
}

/// The median over the rounds of each round's mean, the means, and the median of all reads.
fn summary(rounds: &[Vec<f64>]) -> (f64, Vec<f64>, f64) {
    let means: Vec<f64> = rounds.iter().map(|r| mean(r)).collect();
    (median(means.clone()), means, median(rounds.concat()))
}

/// `monitor stats`' device round trips.
fn round_trips(rsp: &mut Rsp) -> u64 {
    let s = rsp.monitor("stats");
    let head = s.split(" device round trips").next().unwrap();
    head.rsplit(' ').next().unwrap().parse().unwrap_or_else(|_| panic!("{s}"))
}

/// The debugging benchmarks of `cargo xtask bench` (it runs this with `--ignored --exact`): one
/// JSON line on stdout.
#[test]
#[ignore = "a benchmark, run by cargo xtask bench"]
fn bench_debugging() {
    let root = keel_vdev::repo_root();
    let elf = keel_vdev::app_elf("debuggee");

    // The scripted session through `keel debug`.
    let session = scripted_session("debuggee", "debuggee::SCALE.v.value", "debuggee::main", "debuggee::scaled");
    let packets_relay = session.stats["gdb_packets"].as_u64().unwrap();
    let trips = session.stats["device_round_trips"].as_u64().unwrap();

    // Round trips: `m` packets that each need the device, CLI -> server -> device.
    let mut lab = Lab::start("bench-relay", "debuggee", true, None);
    lab.app_line("debuggee: tick=");
    let stats = lab.dir.join("stats.json");
    let (mut debug, port) = lab.debug_server(&lab.key.clone(), &elf, &stats);
    let mut rsp = Rsp::connect(port);
    assert!(rsp.ask("?").starts_with('T'), "the app halts when gdb asks");
    let before = round_trips(&mut rsp);
    let relay = summary(&timed_rounds(&mut rsp));
    let grew = round_trips(&mut rsp) - before;
    assert_eq!(grew, (READS as usize * ROUNDS.len()) as u64, "one device round trip per read");
    assert_eq!(rsp.ask("D"), "OK");
    wait_exit(&mut debug);
    let s: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&stats).unwrap()).unwrap();
    assert!(s["device_round_trips"].as_u64().unwrap() >= grew, "{s}");
    let pk: [u8; 32] = keel_server::unhex(&lab.public).unwrap().try_into().unwrap();
    drop(lab);

    // The same reads against QEMU's own gdbstub, on the same visor and app image (no server:
    // the stub needs none).
    let dir = root.join("target/debug-e2e/bench-gdbstub");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let flash_path = dir.join("dev.flash");
    flash::create(&flash_path, &flash::new_factory().unwrap()).unwrap();
    let img = elf::image_from_elf(&elf, "1.0.0").unwrap().with_debug_key(Some(pk));
    flash::program_app(&flash_path, layout::APP_A, &img).unwrap();
    let dev = Device { visor: keel_vdev::visor_elf(), flash: flash_path, clock: Clock::RealTime };
    let stub = free_port();
    let mut qemu = dev.start_with_gdbstub(stub).unwrap();
    qemu.wait_for("app", LIMIT, |l| l.contains("debuggee: tick=")).unwrap();
    let mut rsp = Rsp::connect(stub);
    assert!(rsp.ask("?").starts_with('T'), "QEMU stops the machine for the debugger");
    let direct = summary(&timed_rounds(&mut rsp));
    // Detaching resumes the machine; the stub takes the next debugger.
    assert_eq!(rsp.ask("D"), "OK");
    drop(rsp);

    // The scripted session against QEMU's gdbstub, counting the packets gdb sends.
    let log = dir.join("gdb-remote.log");
    let mut gdb = Gdb::start(&elf);
    // The remote-protocol log goes to the file only (mixed into gdb's output it would garble
    // what the script reads).
    gdb.cmd(&format!("set logging file {}", log.display()));
    gdb.cmd("set logging overwrite on");
    gdb.cmd("set logging debugredirect on");
    gdb.cmd("set logging enabled on");
    gdb.cmd("set debug remote 1");
    script(
        &mut gdb,
        &format!("target extended-remote 127.0.0.1:{stub}"),
        "debuggee::SCALE.v.value",
        "debuggee::main",
        &mut |what| qemu.wait_for(what, LIMIT, |l| l.contains(what)).unwrap_or_else(|e| panic!("{e:?}")),
        &mut || {},
    );
    gdb.cmd("set debug remote 0");
    gdb.cmd("set logging enabled off");
    std::fs::write(dir.join("gdb-transcript.txt"), &gdb.transcript).unwrap();
    drop(gdb);
    let sent = std::fs::read_to_string(&log).unwrap();
    let packets_qemu = sent.lines().filter(|l| l.contains("Sending packet:")).count();
    assert!(packets_qemu > 20, "{sent}");
    drop(qemu);

    // The means are what the metrics report; the medians of single reads show the floor (the
    // relay's reads are spread, a few take 10-30 ms).
    println!(
        "{{\"gdb_roundtrip_ms_relay\": {:.3}, \"gdb_roundtrip_ms_qemu_gdbstub\": {:.4}, \"gdb_session_seconds\": {:.2}, \
         \"gdb_device_round_trips\": {trips}, \"gdb_packets_relay\": {packets_relay}, \"gdb_packets_qemu_gdbstub\": \
         {packets_qemu}, \"relay_round_means_ms\": {:.3?}, \"qemu_gdbstub_round_means_ms\": {:.4?}, \
         \"relay_read_median_ms\": {:.3}, \"qemu_gdbstub_read_median_ms\": {:.4}}}",
        relay.0, direct.0, session.seconds, relay.1, direct.1, relay.2, direct.2,
    );
}

#[test]
fn a_session_survives_a_server_restart() {
    let mut lab = Lab::start("server-restart", "debuggee", true, None);
    let secret_hex = std::fs::read_to_string(&lab.key).unwrap();
    let secret: [u8; 32] = keel_server::unhex(secret_hex.trim()).unwrap().try_into().unwrap();
    let mut raw = Raw::open(&lab, &secret).unwrap();
    assert_eq!(raw.request(&[Op::Halt]), vec![Ok(vec![])]);
    let stop = raw.stop();
    // The server dies and comes back: the device reconnects, the debugger's websocket is opened
    // again, and the same end-to-end session goes on with the app still halted where it was.
    lab.restart_server();
    lab.qemu.wait_for("lost", LIMIT, |l| l.contains("net: connection lost")).unwrap();
    lab.qemu.wait_for("online again", LIMIT, |l| l.contains("net: online")).unwrap();
    if let Ok(s) = lab.api().debug_socket(&lab.id) {
        raw.socket = s;
    }
    let regs = raw.request_until_answered(&lab, &[Op::ReadRegs]).remove(0).expect("still halted");
    let before: Vec<u8> = stop.regs.iter().flat_map(|r| r.to_le_bytes()).collect();
    assert_eq!(regs[..4 * 17], before[..4 * 17], "r0-r12, sp, lr, pc and xpsr as they were at the halt");
    assert_eq!(raw.request_until_answered(&lab, &[Op::Detach]), vec![Ok(vec![])]);
    lab.app_line("debuggee: tick=");
}

#[test]
fn kill_restarts_the_app_and_the_session_hears_it() {
    let mut lab = Lab::start("kill", "debuggee", true, None);
    let secret_hex = std::fs::read_to_string(&lab.key).unwrap();
    let secret: [u8; 32] = keel_server::unhex(secret_hex.trim()).unwrap().try_into().unwrap();
    let mut raw = Raw::open(&lab, &secret).unwrap();
    assert_eq!(raw.request(&[Op::Halt]), vec![Ok(vec![])]);
    raw.stop();
    assert_eq!(raw.request(&[Op::Restart]), vec![Ok(vec![])]);
    let restarted = loop {
        let plain = raw.event().expect("an event");
        if let Event::Restarted(r) = Event::decode(&plain).unwrap() {
            break r;
        }
    };
    assert_eq!(restarted, keel_debug::wire::RestartReason::Requested);
    let line = lab
        .qemu
        .wait_for("restart", LIMIT, |l| l.contains("starting app 'debuggee'") && l.contains("restarts=1"))
        .unwrap();
    assert!(line.contains("reason=requested"), "{line}");
    // The session goes on with the new instance.
    assert_eq!(raw.request(&[Op::Ping]), vec![Ok(vec![])]);
    lab.app_line("debuggee: started");
}
