//! `keel debug` as gdb sees it: the GDB remote protocol spoken by hand and by a real
//! `gdb-multiarch` (when installed) against `keel debug --simulate` (the RSP server over a
//! simulated device: see src/debug/sim.rs), plus debug keys and bundles with one.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Kill, KEEL};

fn tmp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("keel-debug-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `keel debug --simulate --port 0 ...`: the process and its port.
fn start(extra: &[&str], json: bool) -> (Kill, u16) {
    let mut cmd = Command::new(KEEL);
    cmd.args(["debug", "--simulate", "--port", "0"]).args(extra).stdout(Stdio::piped()).stderr(Stdio::piped());
    if json {
        cmd.arg("--json");
    }
    let mut child = Kill(cmd.spawn().unwrap());
    let mut out = BufReader::new(child.0.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let addr = if json {
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
        v["listening"].as_str().unwrap().to_string()
    } else {
        line.trim().strip_prefix("GDB server listening on ").unwrap_or_else(|| panic!("{line}")).to_string()
    };
    std::thread::spawn(move || {
        let mut rest = String::new();
        let _ = out.read_to_string(&mut rest);
    });
    let err = child.0.stderr.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(err).lines().map_while(Result::ok) {
            eprintln!("[keel debug] {l}");
        }
    });
    let port = addr.strip_prefix("127.0.0.1:").unwrap().parse().unwrap();
    (child, port)
}

fn wait_exit(child: &mut Kill) -> std::process::ExitStatus {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(20) {
        if let Some(s) = child.0.try_wait().unwrap() {
            return s;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("keel debug did not exit");
}

/// A hand-driven gdb.
struct Gdb {
    s: TcpStream,
    buf: Vec<u8>,
    ack: bool,
}

impl Gdb {
    fn connect(port: u16) -> Gdb {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        Gdb { s, buf: Vec::new(), ack: true }
    }

    fn send(&mut self, payload: &[u8]) {
        let mut out = vec![b'$'];
        for &b in payload {
            if matches!(b, b'$' | b'#' | b'}' | b'*') {
                out.extend_from_slice(&[b'}', b ^ 0x20]);
            } else {
                out.push(b);
            }
        }
        let sum = out[1..].iter().fold(0u8, |a, &b| a.wrapping_add(b));
        out.extend_from_slice(format!("#{sum:02x}").as_bytes());
        self.s.write_all(&out).unwrap();
    }

    fn recv(&mut self) -> Vec<u8> {
        loop {
            if let Some(start) = self.buf.iter().position(|&b| b == b'$') {
                if let Some(hash) = self.buf[start..].iter().position(|&b| b == b'#').map(|h| h + start) {
                    if self.buf.len() >= hash + 3 {
                        let raw = self.buf[start + 1..hash].to_vec();
                        let sum = raw.iter().fold(0u8, |a, &b| a.wrapping_add(b));
                        let want = u8::from_str_radix(std::str::from_utf8(&self.buf[hash + 1..hash + 3]).unwrap(), 16);
                        assert_eq!(want, Ok(sum), "checksum of {}", String::from_utf8_lossy(&raw));
                        self.buf.drain(..hash + 3);
                        if self.ack {
                            self.s.write_all(b"+").unwrap();
                        }
                        let mut out = Vec::new();
                        let mut it = raw.into_iter();
                        while let Some(b) = it.next() {
                            out.push(if b == b'}' { it.next().unwrap() ^ 0x20 } else { b });
                        }
                        return out;
                    }
                }
            }
            let mut chunk = [0u8; 4096];
            let n = self.s.read(&mut chunk).expect("a reply from keel debug");
            assert!(n > 0, "keel debug closed the connection");
            // Acknowledgements are not packets.
            let skip = if self.buf.is_empty() { chunk[..n].iter().take_while(|&&b| b == b'+').count() } else { 0 };
            self.buf.extend_from_slice(&chunk[skip..n]);
        }
    }

    fn ask(&mut self, payload: &str) -> String {
        self.send(payload.as_bytes());
        String::from_utf8(self.recv()).unwrap()
    }
}

fn le_hex(v: u32) -> String {
    v.to_le_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

/// The stop reply's value of register `n` (hex gdb number).
fn stop_reg(reply: &str, n: &str) -> u32 {
    let v = reply.split(';').find_map(|kv| kv.strip_prefix(&format!("{n}:"))).unwrap_or_else(|| panic!("{reply}"));
    u32::from_str_radix(&v.as_bytes().chunks(2).rev().map(|c| std::str::from_utf8(c).unwrap()).collect::<String>(), 16)
        .unwrap()
}

const FUNC: u32 = 0x0020_0114;
const AFTER_CALL: u32 = 0x0020_010a;

#[test]
fn a_session_by_hand() {
    let dir = tmp_dir("by-hand");
    let stats = dir.join("stats.json");
    let (mut keel, port) = start(&["--stats", &stats.display().to_string()], false);
    let mut g = Gdb::connect(port);

    let sup = g.ask("qSupported:multiprocess+;swbreak+;hwbreak+;qRelocInsn+;fork-events+;vContSupported+");
    for f in
        ["PacketSize=1000", "qXfer:features:read+", "qXfer:memory-map:read+", "QStartNoAckMode+", "vContSupported+"]
    {
        assert!(sup.split(';').any(|x| x == f), "{sup}");
    }
    assert_eq!(g.ask("vMustReplyEmpty"), "");
    assert_eq!(g.ask("QStartNoAckMode"), "OK");
    g.ack = false;
    assert_eq!(g.ask("!"), "OK");
    let xml = g.ask("qXfer:features:read:target.xml:0,fff");
    assert!(xml.starts_with('l') && xml.contains("org.gnu.gdb.arm.m-profile"), "{xml}");
    let part = g.ask("qXfer:features:read:target.xml:0,20");
    assert!(part.starts_with('m') && part.len() == 0x21, "{part}");
    let map = g.ask("qXfer:memory-map:read::0,fff");
    assert!(map.contains("start=\"0x200000\" length=\"0x200000\""), "{map}");
    assert_eq!(g.ask("qAttached"), "1");
    assert_eq!(g.ask("qC"), "QC1");
    assert_eq!(g.ask("qfThreadInfo"), "m1");
    assert_eq!(g.ask("qsThreadInfo"), "l");
    assert_eq!(g.ask("Hg0"), "OK");
    assert_eq!(g.ask("qTStatus"), "");
    assert_eq!(g.ask("vCont?"), "vCont;c;C;s;S;t");
    let stop = g.ask("?");
    assert!(stop.starts_with("T05thread:1;"), "{stop}");

    // Registers: 23 of them, xpsr is gdb's 25 (0x19).
    let regs = g.ask("g");
    assert_eq!(regs.len(), 23 * 8, "{regs}");
    assert_eq!(g.ask("p19"), le_hex(0x0100_0000));
    assert_eq!(g.ask("p1a"), &regs[17 * 8..18 * 8]); // msp
    assert_eq!(g.ask("p10"), "E01");
    assert_eq!(g.ask(&format!("P0={}", le_hex(0x1234))), "OK");
    assert_eq!(g.ask("p0"), le_hex(0x1234));
    assert_eq!(g.ask(&format!("Pd={}", le_hex(0x2800_0100))), "E01", "the simulated visor refuses sp writes");

    // Memory: RAM, binary writes with escapes, and memory that is not the app's.
    assert_eq!(g.ask("m28000000,10"), "efbeadde67452301efcdab890df0feca");
    g.send(b"X28000010,4:\x23\x24\x7d\x2a");
    assert_eq!(String::from_utf8(g.recv()).unwrap(), "OK");
    assert_eq!(g.ask("m28000010,4"), "23247d2a");
    assert_eq!(g.ask("M28000014,2:abcd"), "OK");
    assert_eq!(g.ask("m28000014,2"), "abcd");
    assert!(g.ask("m10070000,4").starts_with('E'));
    assert_eq!(g.ask("m200114,4"), "02307047");

    // Breakpoints, continue, step.
    assert_eq!(g.ask(&format!("Z0,{FUNC:x},2")), "OK");
    assert!(g.ask("Z0,10070000,2").starts_with('E'));
    assert_eq!(g.ask("Z1,200114,2"), "", "no hardware breakpoints");
    let stop = g.ask("vCont;c");
    assert!(stop.starts_with("T05"), "{stop}");
    assert_eq!(stop_reg(&stop, "0f"), FUNC);
    assert_eq!(stop_reg(&stop, "0e"), AFTER_CALL | 1);
    assert_eq!(g.ask(&format!("z0,{FUNC:x},2")), "OK");
    let stop = g.ask("vCont;s:1;c");
    assert_eq!(stop_reg(&stop, "0f"), FUNC + 2);
    let stop = g.ask("s");
    assert_eq!(stop_reg(&stop, "0f"), AFTER_CALL);
    assert_eq!(g.ask("m200114,2"), "0230", "no breakpoint shows");

    // Ctrl-C while the app runs.
    g.send(b"c");
    std::thread::sleep(Duration::from_millis(300));
    g.s.write_all(&[0x03]).unwrap();
    let stop = String::from_utf8(g.recv()).unwrap();
    assert!(stop.starts_with("T02"), "{stop}");

    // monitor reset: console output, then OK; the app is halted again.
    let out = g.ask("qRcmd,7265736574");
    assert!(out.starts_with('O'), "{out}");
    assert_eq!(String::from_utf8(g.recv()).unwrap(), "OK");
    assert!(g.ask("?").starts_with("T05"));

    assert_eq!(g.ask("D;1"), "OK");
    assert!(wait_exit(&mut keel).success());
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&stats).unwrap()).unwrap();
    assert_eq!(v["end"], "detached");
    let (packets, trips) = (v["gdb_packets"].as_u64().unwrap(), v["device_round_trips"].as_u64().unwrap());
    assert!(packets >= 40 && trips * 2 < packets, "{v}");
}

#[test]
fn a_dropped_connection_detaches() {
    let dir = tmp_dir("dropped");
    let stats = dir.join("stats.json");
    let (mut keel, port) = start(&["--stats", &stats.display().to_string()], true);
    let mut g = Gdb::connect(port);
    assert!(g.ask("?").starts_with("T05"));
    assert_eq!(g.ask("Z0,200114,2"), "OK");
    drop(g);
    assert!(wait_exit(&mut keel).success());
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&stats).unwrap()).unwrap();
    assert_eq!(v["end"], "gdb disconnected");
}

/// A minimal ARM ELF file: one loadable `.text` section at `addr`.
fn arm_elf(addr: u32, code: &[u8]) -> Vec<u8> {
    let code_off = 0x100u32;
    let strtab = b"\0.text\0.shstrtab\0";
    let str_off = code_off + code.len() as u32;
    let sh_off = (str_off + strtab.len() as u32 + 3) & !3;
    let mut e = Vec::new();
    let u16_ = |e: &mut Vec<u8>, v: u16| e.extend_from_slice(&v.to_le_bytes());
    let u32_ = |e: &mut Vec<u8>, v: u32| e.extend_from_slice(&v.to_le_bytes());
    e.extend_from_slice(&[0x7f, b'E', b'L', b'F', 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    u16_(&mut e, 2); // executable
    u16_(&mut e, 40); // ARM
    u32_(&mut e, 1);
    u32_(&mut e, addr + 0x101); // entry
    u32_(&mut e, 52); // program headers
    u32_(&mut e, sh_off);
    u32_(&mut e, 0x0500_0200); // EABI 5, hard-float ABI bit clear
    for v in [52u16, 32, 1, 40, 3, 2] {
        u16_(&mut e, v);
    }
    // PT_LOAD, R+X.
    for v in [1, code_off, addr, addr, code.len() as u32, code.len() as u32, 5, 4] {
        u32_(&mut e, v);
    }
    e.resize(code_off as usize, 0);
    e.extend_from_slice(code);
    e.extend_from_slice(strtab);
    e.resize(sh_off as usize, 0);
    e.extend_from_slice(&[0; 40]);
    // .text: PROGBITS, ALLOC|EXECINSTR.
    for v in [1, 1, 6, addr, code_off, code.len() as u32, 0, 0, 4, 0] {
        u32_(&mut e, v);
    }
    // .shstrtab.
    for v in [7, 3, 0, 0, str_off, strtab.len() as u32, 0, 0, 1, 0] {
        u32_(&mut e, v);
    }
    e
}

/// The simulated device's app (src/debug/sim.rs: `demo_code`) as an ELF file.
fn demo_elf(dir: &Path) -> PathBuf {
    let mut code = 0x2800_1000u32.to_le_bytes().to_vec();
    code.extend_from_slice(&0x0020_0101u32.to_le_bytes());
    code.resize(0x100, 0);
    for h in [0xb580u16, 0xaf00, 0x2001, 0xf000, 0xf805, 0x3001, 0x4b02, 0x4798, 0xe7f8, 0xbf00, 0x3002, 0x4770] {
        code.extend_from_slice(&h.to_le_bytes());
    }
    code.extend_from_slice(&0x1007_0001u32.to_le_bytes());
    let p = dir.join("demo.elf");
    std::fs::write(&p, arm_elf(0x0020_0000, &code)).unwrap();
    p
}

#[test]
fn code_comes_from_the_elf_file() {
    let dir = tmp_dir("elf");
    let stats = dir.join("stats.json");
    let elf = demo_elf(&dir);
    let (mut keel, port) =
        start(&["--stats", &stats.display().to_string(), "--elf", &elf.display().to_string()], false);
    let mut g = Gdb::connect(port);
    assert!(g.ask("?").starts_with("T05"));
    for _ in 0..20 {
        assert_eq!(g.ask("m200100,1c"), "80b500af012000f005f80130024b9847f8e700bf0230704701000710");
    }
    assert_eq!(g.ask("D"), "OK");
    assert!(wait_exit(&mut keel).success());
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&stats).unwrap()).unwrap();
    assert_eq!(v["device_round_trips"], 2, "attach and detach only: {v}");
    assert_eq!(v["mem_bytes_from_elf"], 20 * 0x1c, "{v}");
}

fn gdb_multiarch() -> Option<&'static str> {
    let ok = Command::new("gdb-multiarch").arg("--version").stdout(Stdio::null()).status().is_ok_and(|s| s.success());
    if !ok {
        eprintln!("gdb-multiarch is not installed: skipped (apt-get install gdb-multiarch)");
    }
    ok.then_some("gdb-multiarch")
}

fn run_gdb(gdb: &str, port: u16, elf: Option<&Path>, cmds: &[&str]) -> String {
    let mut c = Command::new(gdb);
    c.args(["-batch", "-nx", "-ex", "set architecture arm", "-ex", &format!("target extended-remote :{port}")]);
    for cmd in cmds {
        c.args(["-ex", cmd]);
    }
    if let Some(e) = elf {
        c.arg(e);
    }
    let out = c.output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    text
}

#[test]
fn real_gdb_reads_registers_and_memory() {
    let Some(gdb) = gdb_multiarch() else { return };
    let dir = tmp_dir("gdb");
    let stats = dir.join("stats.json");
    let (mut keel, port) = start(&["--stats", &stats.display().to_string()], false);
    let out = run_gdb(gdb, port, None, &["info registers", "x/4xw 0x28000000", "detach"]);
    for want in [
        "r0 ",
        "r12 ",
        "sp ",
        "lr ",
        "pc ",
        "xpsr ",
        "msp ",
        "control ",
        "0xdeadbeef\t0x01234567\t0x89abcdef\t0xcafef00d",
    ] {
        assert!(out.contains(want), "{want:?} missing in:\n{out}");
    }
    assert!(out.contains("detached"), "{out}");
    assert!(wait_exit(&mut keel).success());
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&stats).unwrap()).unwrap();
    assert!(v["device_round_trips"].as_u64().unwrap() < v["gdb_packets"].as_u64().unwrap(), "{v}");
}

#[test]
fn real_gdb_breaks_steps_and_continues() {
    let Some(gdb) = gdb_multiarch() else { return };
    let dir = tmp_dir("gdb-run");
    let stats = dir.join("stats.json");
    let elf = demo_elf(&dir);
    let (mut keel, port) =
        start(&["--stats", &stats.display().to_string(), "--elf", &elf.display().to_string()], false);
    let out = run_gdb(
        gdb,
        port,
        Some(&elf),
        &[
            "break *0x200114",
            "continue",
            "stepi",
            "stepi",
            "print/x $pc",
            "stepi",
            "stepi",
            "print/x $pc",
            "stepi",
            "print/x $pc",
            "continue",
            "print/x $pc",
            "delete",
            "set var $r0 = 0x77",
            "print/x $r0",
            "monitor stats",
            "detach",
        ],
    );
    let pcs: Vec<&str> = out.lines().filter_map(|l| l.strip_prefix('$')).collect();
    assert_eq!(
        pcs,
        ["1 = 0x20010a", "2 = 0x20010e", "3 = 0x200110", "4 = 0x200114", "5 = 0x77"],
        "the call returns, the system call is stepped over:\n{out}"
    );
    assert!(out.contains("Breakpoint 1, 0x00200114"), "{out}");
    assert!(out.contains("device round trips"), "{out}");
    assert!(wait_exit(&mut keel).success());
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&stats).unwrap()).unwrap();
    let (packets, trips) = (v["gdb_packets"].as_u64().unwrap(), v["device_round_trips"].as_u64().unwrap());
    assert!(trips * 3 < packets, "{v}");
}

#[test]
fn debug_keys_and_bundles() {
    let dir = tmp_dir("keys");
    let name = dir.join("me").display().to_string();
    let v = common::keel(&["keys", "new", "--debug", "--out", &name], &[]);
    let (secret, public) = (dir.join("me.debug.key"), dir.join("me.debug.pub"));
    assert_eq!(v["secret"], secret.display().to_string());
    assert_eq!(v["public"], public.display().to_string());
    let public_hex = std::fs::read_to_string(&public).unwrap().trim().to_string();
    assert_eq!(v["public_key"], public_hex.as_str());
    let secret_hex = std::fs::read_to_string(&secret).unwrap();
    assert!(secret_hex.ends_with('\n') && secret_hex.trim().len() == 64);
    let s: [u8; 32] = (0..32)
        .map(|i| u8::from_str_radix(&secret_hex[2 * i..2 * i + 2], 16).unwrap())
        .collect::<Vec<_>>()
        .try_into()
        .unwrap();
    assert_eq!(keel_server::hex(&keel_debug::session::public_key(&s)), public_hex);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&secret).unwrap().permissions().mode() & 0o777, 0o600);
    }
    let e = common::keel_err(&["keys", "new", "--debug", "--out", &name], &[]);
    assert!(e.contains("never overwritten"), "{e}");

    // A bundle with the debug key: in the manifest and in the image header.
    let rel = dir.join("rel").display().to_string();
    common::keel(&["keys", "new", "--out", &rel], &[]);
    let elf = demo_elf(&dir).display().to_string();
    let out = dir.join("demo.keelb").display().to_string();
    let args = ["bundle", &elf, "--key", &format!("{rel}.key"), "--version", "1.0.0", "--sequence", "1", "--out", &out];
    let mut with_key = args.to_vec();
    with_key.extend(["--debug-key", public.to_str().unwrap()]);
    let v = common::keel(&with_key, &[]);
    assert_eq!(v["debug_key"], public_hex.as_str());
    let bundle = std::fs::read(&out).unwrap();
    let pk = keel_debug::session::public_key(&s);
    let count = bundle.windows(32).filter(|w| *w == pk).count();
    assert_eq!(count, 2, "once in the manifest, once in the image header");

    // The secret key, or a signing key, is refused; 64 hex digits are fine.
    std::fs::remove_file(&out).unwrap();
    let mut wrong = args.to_vec();
    wrong.extend(["--debug-key", secret.to_str().unwrap()]);
    assert!(common::keel_err(&wrong, &[]).contains("secret"));
    let mut pem = args.to_vec();
    let rel_pub = format!("{rel}.pub");
    pem.extend(["--debug-key", &rel_pub]);
    assert!(common::keel_err(&pem, &[]).contains("debug public key"));
    let mut hex = args.to_vec();
    hex.extend(["--debug-key", &public_hex]);
    assert_eq!(common::keel(&hex, &[])["debug_key"], public_hex.as_str());

    // keel debug refuses a public key as --key.
    let e = common::keel_err(&["debug", "dev", "--key", public.to_str().unwrap(), "--port", "0"], &[]);
    assert!(e.contains("public key"), "{e}");
}
