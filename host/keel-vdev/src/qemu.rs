//! Running a virtual device under QEMU and reading its console.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// How virtual time runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Clock {
    /// Real time (interactive use).
    RealTime,
    /// `-icount shift=0,sleep=off`: one instruction = 1 ns of virtual time, idle time skipped.
    /// Runs are bit-for-bit repeatable and time-dependent tests are deterministic.
    Deterministic,
    /// `-icount shift=0,sleep=on`: one instruction = 1 ns of virtual time while the device
    /// runs, idle time follows real time. For devices that talk to real peers (whose answers
    /// take real time) when what is measured is instructions.
    Counted,
}

/// A QEMU invocation for one virtual device.
#[derive(Clone, Debug)]
pub struct Device {
    /// The visor ELF (`-kernel`).
    pub visor: PathBuf,
    /// The device's flash file.
    pub flash: PathBuf,
    /// Virtual clock mode.
    pub clock: Clock,
}

impl Device {
    /// The QEMU command line.
    pub fn command(&self) -> Command {
        let mut c = Command::new("qemu-system-arm");
        c.args(["-M", "mps2-an505", "-display", "none", "-monitor", "none", "-serial", "stdio"]);
        c.args(["-semihosting-config", "enable=on,target=native"]);
        c.arg("-kernel").arg(&self.visor);
        c.arg("-object")
            .arg(format!("memory-backend-file,id=keelflash,size=16M,mem-path={},share=on", self.flash.display()));
        c.args(["-machine", "memory-backend=keelflash"]);
        // User-mode networking: the device reaches the host's loopback as 10.0.2.2 (and nothing
        // listens for connections from outside).
        c.args(["-nic", "user,model=lan9118"]);
        match self.clock {
            Clock::RealTime => {}
            Clock::Deterministic => {
                c.args(["-icount", "shift=0,sleep=off"]);
            }
            Clock::Counted => {
                c.args(["-icount", "shift=0,sleep=on"]);
            }
        }
        c
    }

    /// Starts QEMU and captures its console.
    pub fn start(&self) -> std::io::Result<Running> {
        self.spawn(self.command())
    }

    /// Like [`Device::start`], with QEMU's own gdbstub listening on `127.0.0.1:port` (the
    /// whole system, secure world included, as a debug probe would see it; for comparisons with
    /// `keel debug`). QEMU stops the machine while a debugger is attached.
    pub fn start_with_gdbstub(&self, port: u16) -> std::io::Result<Running> {
        let mut c = self.command();
        c.arg("-gdb").arg(format!("tcp:127.0.0.1:{port}"));
        self.spawn(c)
    }

    fn spawn(&self, mut command: Command) -> std::io::Result<Running> {
        check_file(&self.visor, "visor ELF")?;
        check_file(&self.flash, "flash file")?;
        let mut child = command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
        let stdout = child.stdout.take().expect("piped");
        let stderr = child.stderr.take().expect("piped");
        let (tx, rx) = channel();
        let tx2 = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).split(b'\n').map_while(Result::ok) {
                let s = String::from_utf8_lossy(&line).trim_end_matches('\r').to_string();
                if tx.send(s).is_err() {
                    break;
                }
            }
        });
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx2.send(format!("[qemu stderr] {line}")).is_err() {
                    break;
                }
            }
        });
        Ok(Running { child, rx, lines: Vec::new(), echo: false })
    }
}

fn check_file(p: &Path, what: &str) -> std::io::Result<()> {
    if p.is_file() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!("{what} {} not found (run `cargo xtask build`)", p.display())))
    }
}

/// A running device.
pub struct Running {
    child: Child,
    rx: Receiver<String>,
    /// Every console line received so far.
    pub lines: Vec<String>,
    /// Print lines to stdout as they arrive.
    pub echo: bool,
}

/// The device did not print what was expected.
pub struct Timeout {
    /// What was awaited.
    pub what: String,
    /// The console so far.
    pub console: Vec<String>,
}

impl std::fmt::Display for Timeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The last lines tell what happened; a long run would bury them.
        const TAIL: usize = 80;
        let skip = self.console.len().saturating_sub(TAIL);
        writeln!(f, "timed out waiting for {}; console ({} earlier lines omitted):", self.what, skip)?;
        for l in &self.console[skip..] {
            writeln!(f, "  {l}")?;
        }
        Ok(())
    }
}

impl std::fmt::Debug for Timeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for Timeout {}

impl Running {
    /// Waits until a line satisfies `pred` (returns it). `limit` only guards against a hang.
    pub fn wait_for(&mut self, what: &str, limit: Duration, pred: impl Fn(&str) -> bool) -> Result<String, Timeout> {
        let start = Instant::now();
        loop {
            let left = limit.saturating_sub(start.elapsed());
            match self.rx.recv_timeout(left) {
                Ok(line) => {
                    if self.echo {
                        println!("{line}");
                    }
                    self.lines.push(line.clone());
                    if pred(&line) {
                        return Ok(line);
                    }
                }
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => {
                    return Err(Timeout { what: what.to_string(), console: self.lines.clone() })
                }
            }
        }
    }

    /// Collects lines for `d` of wall time (used by interactive runs, never by tests).
    pub fn run_for(&mut self, d: Duration) {
        let _ = self.wait_for("end of run", d, |_| false);
    }

    /// Every console line printed so far (QEMU keeps running).
    pub fn console_so_far(&mut self) -> &[String] {
        while let Ok(l) = self.rx.try_recv() {
            self.lines.push(l);
        }
        &self.lines
    }

    /// Kills QEMU (like pulling the power) and returns the console.
    pub fn kill(mut self) -> Vec<String> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        while let Ok(l) = self.rx.try_recv() {
            self.lines.push(l);
        }
        std::mem::take(&mut self.lines)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Parses the `[   secs.micros source]` prefix of a console line into (µs, source, message).
pub fn parse_line(line: &str) -> Option<(u64, &str, &str)> {
    let rest = line.strip_prefix('[')?;
    let (head, msg) = rest.split_once("] ")?;
    let mut it = head.split_whitespace();
    let t = it.next()?;
    let source = it.next()?;
    let (s, us) = t.split_once('.')?;
    let t = s.trim().parse::<u64>().ok()? * 1_000_000 + us.parse::<u64>().ok()?;
    Some((t, source, msg))
}

/// The message of a console line (the whole line if it has no prefix).
pub fn message(line: &str) -> &str {
    parse_line(line).map_or(line, |(_, _, m)| m)
}

/// The device time (µs) of a console line; panics on a line without a prefix (for tests).
pub fn time_us(line: &str) -> u64 {
    parse_line(line).unwrap_or_else(|| panic!("no timestamp in {line:?}")).0
}

/// The value of `key=value` in a console line.
pub fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace().find_map(|w| w.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_console_prefix() {
        assert_eq!(parse_line("[    1.000250 visor] hi there"), Some((1_000_250, "visor", "hi there")));
        assert_eq!(parse_line("[12345.000001 app:I] x"), Some((12_345_000_001, "app:I", "x")));
        assert_eq!(parse_line("garbage"), None);
        assert_eq!(parse_line("[abc visor] x"), None);
        assert_eq!(message("[    1.000250 visor] hi there"), "hi there");
        assert_eq!(message("garbage"), "garbage");
        assert_eq!(time_us("[    2.000001 app:I] x"), 2_000_001);
        assert_eq!(field("app crash: x pc=0x10 lr=0x20", "pc"), Some("0x10"));
        assert_eq!(field("pcx=1", "pc"), None);
    }
}
