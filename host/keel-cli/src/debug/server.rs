//! The GDB remote serial protocol server: one gdb connection, answered from the
//! [`Debuggee`]'s local state whenever possible.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::time::Duration;

use keel_debug::wire::{self, NREGS};

use super::board;
use super::probe::DeviceEvent;
use super::regs;
use super::rsp::{self, Framer, Input};
use super::target::{self, signal, Debuggee, Fail, Step};

/// How often the server lets the probe keep the session alive while gdb is quiet.
const IDLE_TICK: Duration = Duration::from_secs(1);
/// How long to wait for a device event before looking at gdb's input again while running.
const RUN_TICK: Duration = Duration::from_millis(50);

/// How a gdb session ended.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// `D`: the app runs on.
    Detached,
    /// gdb went away (treated as a detach).
    Disconnected,
    /// `k` in `target remote` mode: the app was restarted, gdb closes the connection.
    Killed,
}

/// What a packet calls for.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Send these packets (most often one).
    Reply(Vec<Vec<u8>>),
    /// The app runs (continue or step): wait for its stop, then report it.
    Wait,
    /// Send nothing.
    Nothing,
    /// Reply, then end the session.
    End(Option<Vec<u8>>, End),
}

fn reply(p: impl Into<Vec<u8>>) -> Action {
    Action::Reply(vec![p.into()])
}

fn error_reply(e: Fail) -> Result<Action, Fail> {
    match e {
        Fail::Target(msg) => {
            tracing::debug!("error reply: {msg}");
            Ok(reply("E01"))
        }
        Fail::Probe(p) => Err(Fail::Probe(p)),
    }
}

/// A device error that is not fatal goes to stderr; a lost session stays an error.
fn soft(r: Result<(), Fail>) -> Result<(), Fail> {
    match r {
        Err(Fail::Target(msg)) => {
            eprintln!("keel debug: {msg}");
            Ok(())
        }
        other => other,
    }
}

/// An `O` (console output) packet.
pub fn console(text: &str) -> Vec<u8> {
    let mut p = b"O".to_vec();
    p.extend_from_slice(rsp::hex(text.as_bytes()).as_bytes());
    p
}

/// Bytes from gdb's socket, read by a thread; `None` when it closed.
pub type GdbInput = Receiver<Option<Vec<u8>>>;

/// Starts the thread that reads `stream` into a channel.
pub fn spawn_reader(mut stream: TcpStream) -> GdbInput {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => {
                    let _ = tx.send(None);
                    return;
                }
                Ok(n) => {
                    if tx.send(Some(buf[..n].to_vec())).is_err() {
                        return;
                    }
                }
            }
        }
    });
    rx
}

/// One gdb connection.
pub struct Session<W: Write> {
    /// The device.
    pub d: Debuggee,
    out: W,
    input: Option<GdbInput>,
    framer: Framer,
    queue: VecDeque<Input>,
    closed: bool,
    no_ack: bool,
    extended: bool,
    last_sent: Vec<u8>,
    /// The stop gdb was last told about (signal).
    signal: u8,
    /// gdb believes a process is there (not after `vKill`).
    attached: bool,
    /// The app was taken hold of (halted) for this connection.
    taken: bool,
    /// Packets received from gdb.
    pub packets: u64,
}

impl<W: Write> Session<W> {
    /// A session writing to `out`, reading from `input` (`None`: tests feeding packets by hand).
    pub fn new(d: Debuggee, out: W, input: Option<GdbInput>) -> Self {
        Session {
            d,
            out,
            input,
            framer: Framer::default(),
            queue: VecDeque::new(),
            closed: false,
            no_ack: false,
            extended: false,
            last_sent: Vec::new(),
            signal: signal::TRAP,
            attached: true,
            taken: false,
            packets: 0,
        }
    }

    fn send(&mut self, payload: &[u8]) -> Result<(), Fail> {
        let framed = rsp::frame(payload);
        tracing::trace!("-> {}", String::from_utf8_lossy(payload));
        self.out.write_all(&framed).and_then(|_| self.out.flush()).map_err(|_| {
            self.closed = true;
            Fail::Target("gdb closed the connection".into())
        })?;
        self.last_sent = framed;
        Ok(())
    }

    fn send_raw(&mut self, bytes: &[u8]) {
        if self.out.write_all(bytes).and_then(|_| self.out.flush()).is_err() {
            self.closed = true;
        }
    }

    /// Takes in what gdb sent (waiting up to `timeout` if nothing is queued).
    fn fill(&mut self, timeout: Duration) {
        let Some(rx) = &self.input else { return };
        let got = if timeout.is_zero() {
            match rx.try_recv() {
                Ok(v) => Some(v),
                Err(TryRecvError::Empty) => return,
                Err(TryRecvError::Disconnected) => None,
            }
        } else {
            match rx.recv_timeout(timeout) {
                Ok(v) => Some(v),
                Err(RecvTimeoutError::Timeout) => return,
                Err(RecvTimeoutError::Disconnected) => None,
            }
        };
        match got.flatten() {
            Some(bytes) => {
                let mut inputs = Vec::new();
                self.framer.feed(&bytes, &mut inputs);
                self.queue.extend(inputs);
            }
            None => self.closed = true,
        }
    }

    /// Serves gdb until it detaches, kills or goes away. The app is halted by the first packet
    /// that needs it (`?`, right after the handshake gdb answers locally): gdb expects a stopped
    /// target when it connects, and this way its first packets wait for no round trip (gdb
    /// gives up on a reply after `remotetimeout`, 2 s by default).
    pub fn serve(&mut self) -> Result<End, Fail> {
        loop {
            if self.queue.is_empty() {
                if self.closed {
                    let _ = self.d.detach();
                    return Ok(End::Disconnected);
                }
                self.fill(IDLE_TICK);
                if self.queue.is_empty() && !self.closed {
                    self.d.idle()?;
                }
                continue;
            }
            let Some(input) = self.queue.pop_front() else { continue };
            match input {
                Input::Ack | Input::Interrupt => {}
                Input::Nack => {
                    let last = self.last_sent.clone();
                    self.send_raw(&last);
                }
                Input::Corrupt => {
                    if !self.no_ack {
                        self.send_raw(b"-");
                    }
                }
                Input::Packet(p) => {
                    self.packets += 1;
                    tracing::trace!("<- {}", String::from_utf8_lossy(&p));
                    if !self.no_ack {
                        self.send_raw(b"+");
                    }
                    let action = self.handle(&p)?;
                    match action {
                        Action::Reply(ps) => {
                            for p in ps {
                                let _ = self.send(&p);
                            }
                        }
                        Action::Nothing => {}
                        Action::Wait => {
                            if let Some(r) = self.wait_stop()? {
                                let _ = self.send(&r);
                            } else {
                                let _ = self.d.detach();
                                return Ok(End::Disconnected);
                            }
                        }
                        Action::End(r, end) => {
                            if let Some(r) = r {
                                let _ = self.send(&r);
                            }
                            return Ok(end);
                        }
                    }
                    if p == b"QStartNoAckMode" {
                        self.no_ack = true;
                    }
                }
            }
        }
    }

    /// The stop reply for the app where it is halted.
    pub fn stop_reply(&self, sig: u8) -> Vec<u8> {
        let r = self.d.regs();
        let mut s = format!("T{sig:02x}thread:1;");
        for i in [wire::PC, wire::SP, wire::LR, 7, wire::XPSR] {
            s.push_str(&format!("{:02x}:{};", regs::gdb_regnum(i), rsp::hex_u32_le(r[i])));
        }
        s.into_bytes()
    }

    /// Makes sure the app is halted where gdb believes it is stopped (it may have restarted
    /// behind gdb's back).
    fn ensure_halted(&mut self) -> Result<(), Fail> {
        if !self.taken {
            let stop = self.d.attach()?;
            self.signal = target::stop_signal(&stop, false);
            self.taken = true;
            self.d.take_restart();
            return Ok(());
        }
        if let Some(r) = self.d.take_restart() {
            eprintln!("keel debug: the app was restarted ({}); halting it again", target::restart_name(r));
        }
        if !self.d.is_halted() && self.attached {
            self.d.halt()?;
        }
        Ok(())
    }

    /// Answers one packet.
    pub fn handle(&mut self, p: &[u8]) -> Result<Action, Fail> {
        let text = String::from_utf8_lossy(p);
        let (head, rest) = match p.first() {
            Some(&c) => (c, &p[1..]),
            None => return Ok(reply("")),
        };
        // Packets that read or change the halted app.
        if matches!(head, b'g' | b'G' | b'p' | b'P' | b'm' | b'M' | b'X' | b'c' | b'C' | b's' | b'S' | b'?')
            || text.starts_with("vCont;")
        {
            self.ensure_halted()?;
        }
        let r = match head {
            b'?' => reply(self.stop_reply(self.signal)),
            b'!' => {
                self.extended = true;
                reply("OK")
            }
            b'g' => {
                let hex: String = self.d.regs().iter().map(|&v| rsp::hex_u32_le(v)).collect();
                reply(hex)
            }
            b'G' => {
                let Some(bytes) = rsp::unhex(rest) else { return Ok(reply("E01")) };
                for (i, c) in bytes.chunks_exact(4).take(NREGS).enumerate() {
                    let v = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                    if let Err(e) = self.d.write_reg(i, v) {
                        return error_reply(e);
                    }
                }
                reply("OK")
            }
            b'p' => match rsp::parse_hex_u32(rest).and_then(regs::wire_index) {
                Some(i) => reply(rsp::hex_u32_le(self.d.regs()[i])),
                None => reply("E01"),
            },
            b'P' => {
                let mut it = rest.splitn(2, |&b| b == b'=');
                let n = it.next().and_then(rsp::parse_hex_u32).and_then(regs::wire_index);
                let v = it.next().and_then(rsp::parse_u32_le);
                match (n, v) {
                    (Some(i), Some(v)) => match self.d.write_reg(i, v) {
                        Ok(()) => reply("OK"),
                        Err(e) => return error_reply(e),
                    },
                    _ => reply("E01"),
                }
            }
            b'm' => {
                let Some((addr, len)) = addr_len(rest) else { return Ok(reply("E01")) };
                match self.d.read_mem(addr, len.min(rsp::PACKET_SIZE / 2 - 8)) {
                    Ok(bytes) => reply(rsp::hex(&bytes)),
                    Err(Fail::Target(_)) => reply("E14"),
                    Err(e) => return Err(e),
                }
            }
            b'M' | b'X' => {
                let Some(colon) = rest.iter().position(|&b| b == b':') else { return Ok(reply("E01")) };
                let Some((addr, len)) = addr_len(&rest[..colon]) else { return Ok(reply("E01")) };
                let data = if head == b'M' { rsp::unhex(&rest[colon + 1..]) } else { Some(rest[colon + 1..].to_vec()) };
                match data {
                    Some(d) if d.len() == len => match self.d.write_mem(addr, &d) {
                        Ok(()) => reply("OK"),
                        Err(e) => return error_reply(e),
                    },
                    _ => reply("E01"),
                }
            }
            b'Z' | b'z' => {
                let mut f = rest.split(|&b| b == b',');
                let (kind, addr) = (f.next(), f.next().and_then(rsp::parse_hex_u32));
                match (kind, addr) {
                    (Some(b"0"), Some(addr)) => {
                        if head == b'Z' {
                            match self.d.insert_breakpoint(addr) {
                                Ok(()) => reply("OK"),
                                Err(e) => return error_reply(e),
                            }
                        } else {
                            self.d.remove_breakpoint(addr);
                            reply("OK")
                        }
                    }
                    // Hardware breakpoints and watchpoints: not supported.
                    _ => reply(""),
                }
            }
            b'c' | b'C' | b's' | b'S' => {
                let addr = match head {
                    b'c' | b's' => rest,
                    _ => rest.iter().position(|&b| b == b';').map_or(&[][..], |i| &rest[i + 1..]),
                };
                if !addr.is_empty() {
                    match rsp::parse_hex_u32(addr) {
                        Some(a) => {
                            if let Err(e) = self.d.write_reg(wire::PC, a) {
                                return error_reply(e);
                            }
                        }
                        None => return Ok(reply("E01")),
                    }
                }
                if matches!(head, b'c' | b'C') {
                    self.resume()?
                } else {
                    self.step()?
                }
            }
            b'D' => {
                self.d.detach()?;
                Action::End(Some(b"OK".to_vec()), End::Detached)
            }
            b'k' => {
                self.d.restart()?;
                self.attached = false;
                if self.extended {
                    Action::Nothing
                } else {
                    // gdb closes the connection: end the device session too.
                    soft(self.d.detach())?;
                    Action::End(None, End::Killed)
                }
            }
            b'H' | b'T' => reply("OK"),
            b'v' => self.handle_v(&text)?,
            b'q' | b'Q' => self.handle_q(&text)?,
            _ => reply(""),
        };
        Ok(r)
    }

    fn resume(&mut self) -> Result<Action, Fail> {
        match self.d.resume() {
            Ok(()) => Ok(Action::Wait),
            Err(e) => error_reply(e),
        }
    }

    fn step(&mut self) -> Result<Action, Fail> {
        match self.d.step() {
            Ok(Step::Running) => Ok(Action::Wait),
            Ok(Step::Refused(sig, why)) => {
                eprintln!("keel debug: {why}");
                self.signal = sig;
                Ok(Action::Reply(vec![console(&format!("{why}\n")), self.stop_reply(sig)]))
            }
            Err(e) => error_reply(e),
        }
    }

    fn handle_v(&mut self, text: &str) -> Result<Action, Fail> {
        if text == "vCont?" {
            return Ok(reply("vCont;c;C;s;S;t"));
        }
        if let Some(actions) = text.strip_prefix("vCont;") {
            // One thread: the first action for it (or for all threads) applies.
            let ours = |tid: Option<&str>| match tid {
                None => true,
                Some(t) => {
                    let t = t.rsplit('.').next().unwrap_or(t);
                    t == "1" || t == "-1" || t == "0"
                }
            };
            for a in actions.split(';') {
                let mut parts = a.splitn(2, ':');
                let act = parts.next().unwrap_or("");
                if !ours(parts.next()) {
                    continue;
                }
                return match act.as_bytes().first() {
                    Some(b'c' | b'C') => self.resume(),
                    Some(b's' | b'S') => self.step(),
                    Some(b't') => {
                        self.d.halt()?;
                        self.signal = signal::INT;
                        Ok(reply(self.stop_reply(0)))
                    }
                    _ => Ok(reply("")),
                };
            }
            return Ok(reply("E01"));
        }
        if text.starts_with("vKill") {
            self.d.restart()?;
            self.attached = false;
            return Ok(reply("OK"));
        }
        if text.starts_with("vAttach;") {
            self.attached = true;
            self.taken = true;
            let stop = self.d.halt()?;
            self.signal = target::stop_signal(&stop, false);
            return Ok(reply(self.stop_reply(self.signal)));
        }
        if text.starts_with("vRun;") {
            self.d.restart()?;
            self.attached = true;
            self.taken = true;
            self.d.halt()?;
            self.signal = signal::TRAP;
            return Ok(reply(self.stop_reply(self.signal)));
        }
        Ok(reply(""))
    }

    fn handle_q(&mut self, text: &str) -> Result<Action, Fail> {
        if text.starts_with("qSupported") {
            return Ok(reply(format!(
                "PacketSize={:x};qXfer:features:read+;qXfer:memory-map:read+;QStartNoAckMode+;vContSupported+",
                rsp::PACKET_SIZE
            )));
        }
        if let Some(args) = text.strip_prefix("qXfer:features:read:") {
            let Some((annex, off, len)) = xfer_args(args) else { return Ok(reply("E01")) };
            if annex != "target.xml" {
                return Ok(reply("E00"));
            }
            return Ok(reply(rsp::xfer_chunk(regs::target_xml().as_bytes(), off, len)));
        }
        if let Some(args) = text.strip_prefix("qXfer:memory-map:read:") {
            let Some((_, off, len)) = xfer_args(args) else { return Ok(reply("E01")) };
            return Ok(reply(rsp::xfer_chunk(board::memory_map_xml().as_bytes(), off, len)));
        }
        if let Some(hex) = text.strip_prefix("qRcmd,") {
            let cmd = rsp::unhex(hex.as_bytes()).map(|b| String::from_utf8_lossy(&b).trim().to_string());
            return self.monitor(cmd.as_deref().unwrap_or(""));
        }
        Ok(match text {
            "QStartNoAckMode" => reply("OK"),
            "qAttached" | "qAttached:1" => reply("1"),
            "qC" => reply("QC1"),
            "qfThreadInfo" => reply("m1"),
            "qsThreadInfo" => reply("l"),
            "qOffsets" => reply("Text=0;Data=0;Bss=0"),
            _ if text.starts_with("qSymbol") => reply("OK"),
            _ => reply(""),
        })
    }

    fn monitor(&mut self, cmd: &str) -> Result<Action, Fail> {
        let out = match cmd {
            "reset" | "restart" => {
                self.d.restart()?;
                self.d.halt()?;
                self.signal = signal::TRAP;
                "app restarted and halted at its start\n".to_string()
            }
            "halt" => {
                self.d.halt()?;
                "halted\n".to_string()
            }
            "stats" => format!(
                "{} gdb packets, {} device round trips\n{}\n",
                self.packets,
                self.d.round_trips(),
                serde_json::to_string_pretty(&self.d.stats).unwrap_or_default()
            ),
            _ => "keel monitor commands: reset (restart the app, halted), halt, stats\n".to_string(),
        };
        Ok(Action::Reply(vec![console(&out), b"OK".to_vec()]))
    }

    /// Waits for the app to stop (gdb waits for the stop reply), passing on Ctrl-C as a halt and
    /// the device's notes as console output. `None`: gdb went away.
    fn wait_stop(&mut self) -> Result<Option<Vec<u8>>, Fail> {
        let mut interrupted = false;
        let mut restarted = false;
        loop {
            for note in self.d.take_notes() {
                let _ = self.send(&console(&format!("{note}\n")));
            }
            self.fill(Duration::ZERO);
            // Ctrl-C is the only thing gdb sends while the app runs; anything else waits.
            let mut rest = VecDeque::new();
            while let Some(i) = self.queue.pop_front() {
                match i {
                    Input::Interrupt => {
                        soft(self.d.request_halt())?;
                        interrupted = true;
                    }
                    other => rest.push_back(other),
                }
            }
            self.queue = rest;
            if self.closed {
                return Ok(None);
            }
            match self.d.poll(RUN_TICK)? {
                Some(DeviceEvent::Stop(stop)) => {
                    for note in self.d.take_notes() {
                        let _ = self.send(&console(&format!("{note}\n")));
                    }
                    let sig = if restarted { signal::TRAP } else { target::stop_signal(&stop, interrupted) };
                    if stop.reason == wire::StopReason::Fault {
                        let _ = self.send(&console(&format!(
                            "the app faulted ({}); continuing restarts it\n",
                            target::fault_name(stop.detail)
                        )));
                    }
                    self.signal = sig;
                    return Ok(Some(self.stop_reply(sig)));
                }
                Some(DeviceEvent::Restarted(r)) => {
                    self.d.take_restart();
                    let _ = self.send(&console(&format!("app restarted ({})\n", target::restart_name(r))));
                    restarted = true;
                    soft(self.d.request_halt())?;
                }
                None => {}
            }
        }
    }
}

/// `addr,len` in hex.
fn addr_len(text: &[u8]) -> Option<(u32, usize)> {
    let mut it = text.splitn(2, |&b| b == b',');
    let addr = rsp::parse_hex_u32(it.next()?)?;
    let len = rsp::parse_hex_u32(it.next()?)? as usize;
    Some((addr, len))
}

/// `annex:offset,length` of a `qXfer` read.
fn xfer_args(text: &str) -> Option<(&str, usize, usize)> {
    let (annex, range) = text.rsplit_once(':')?;
    let (off, len) = range.split_once(',')?;
    Some((annex, usize::from_str_radix(off, 16).ok()?, usize::from_str_radix(len, 16).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::debug::sim::{self, SimProbe};
    use keel_debug::wire::RestartReason;

    fn session() -> (Session<Vec<u8>>, std::sync::Arc<std::sync::Mutex<sim::Sim>>) {
        let (p, sim) = SimProbe::demo();
        (Session::new(Debuggee::new(Box::new(p), None), Vec::new(), None), sim)
    }

    fn replies(a: Action) -> Vec<String> {
        match a {
            Action::Reply(ps) => ps.into_iter().map(|p| String::from_utf8(p).unwrap()).collect(),
            other => panic!("{other:?}"),
        }
    }

    /// Whatever gdb (or anything that connects to the port) sends, the server answers or
    /// refuses: no packet may panic it or make it hang. Real commands, cut and mutated.
    #[test]
    fn hostile_packets_never_panic() {
        let seeds: &[&[u8]] = &[
            b"?",
            b"g",
            b"G00112233",
            b"p0f",
            b"P0f=00002000",
            b"m200000,10",
            b"M200000,2:00de",
            b"X28000000,4:abcd",
            b"Z0,200100,2",
            b"z0,200100,2",
            b"c",
            b"s",
            b"vCont;s:1",
            b"vCont;c",
            b"vCont;r200000,200010:1",
            b"qXfer:features:read:target.xml:0,ffb",
            b"qXfer:memory-map:read::0,fff",
            b"qRcmd,7265736574",
            b"qSupported:xmlRegisters=arm",
            b"Hg0",
            b"D",
            b"k",
            b"vAttach;1",
            b"vRun",
            b"QStartNoAckMode",
            b"qC",
            b"qfThreadInfo",
            b"qOffsets",
            b"qSymbol::",
            b"T1",
        ];
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..3_000 {
            let (mut s, _sim) = session();
            let _ = s.handle(b"?");
            for _ in 0..4 {
                let mut p = seeds[next() as usize % seeds.len()].to_vec();
                match next() % 4 {
                    0 => p.truncate(next() as usize % (p.len() + 1)),
                    1 => {
                        let i = next() as usize % p.len();
                        p[i] = next() as u8;
                    }
                    2 => p.extend((0..next() % 40).map(|_| b"0123456789abcdef,:;=xX-"[next() as usize % 23])),
                    _ => p.extend(std::iter::repeat_n(b'f', 20)),
                }
                let _ = s.handle(&p);
            }
        }
    }

    #[test]
    fn the_handshake_costs_no_round_trip() {
        let (mut s, sim) = session();
        for p in ["qSupported:xmlRegisters=arm", "vMustReplyEmpty", "QStartNoAckMode", "!", "qTStatus", "vCont?"] {
            s.handle(p.as_bytes()).unwrap();
        }
        s.handle(b"qXfer:features:read:target.xml:0,ffb").unwrap();
        assert_eq!(sim.lock().unwrap().round_trips, 0);
        let stop = replies(s.handle(b"?").unwrap());
        assert!(stop[0].starts_with("T05thread:1;0f:"), "{stop:?}");
        assert_eq!(sim.lock().unwrap().round_trips, 1);
        assert_eq!(replies(s.handle(b"qXfer:features:read:other.xml:0,ffb").unwrap()), ["E00"]);
        assert_eq!(replies(s.handle(b"Z2,28000000,4").unwrap()), [""]);
        assert_eq!(replies(s.handle(b"vCont;r200000,200010:1").unwrap()), [""]);
    }

    #[test]
    fn a_restart_while_running_is_reported_as_a_stop() {
        let (mut s, sim) = session();
        s.handle(b"?").unwrap();
        assert_eq!(s.handle(b"c").unwrap(), Action::Wait);
        sim.lock().unwrap().restart_app(RestartReason::Crashed);
        let stop = String::from_utf8(s.wait_stop().unwrap().unwrap()).unwrap();
        assert!(stop.starts_with("T05"), "{stop}");
        let console = String::from_utf8_lossy(&s.out).to_string();
        assert!(console.contains(&rsp::hex(b"app restarted (it crashed)")), "{console}");
        assert!(s.d.is_halted());
    }

    #[test]
    fn a_restart_while_halted_is_noticed_before_the_next_packet() {
        let (mut s, sim) = session();
        s.handle(b"?").unwrap();
        sim.lock().unwrap().restart_app(RestartReason::Updated);
        s.d.idle().unwrap();
        assert!(!s.d.is_halted());
        let regs = replies(s.handle(b"g").unwrap());
        assert!(s.d.is_halted());
        assert_eq!(&regs[0][15 * 8..16 * 8], rsp::hex_u32_le(sim.lock().unwrap().regs[15]));
    }

    #[test]
    fn an_unsteppable_instruction_stops_with_a_message() {
        let (mut s, _) = session();
        s.handle(b"?").unwrap();
        s.handle(format!("P0f={}", rsp::hex_u32_le(0x0020_0000)).as_bytes()).unwrap();
        // 0x200000 holds the initial stack pointer 0x28001000: 0x1000 is `asrs r0, r0, #32`
        // and 0x2800 is `cmp r0, #0`; make it `udf` instead.
        s.handle(b"M200000,2:00de").unwrap();
        let r = replies(s.handle(b"vCont;s:1").unwrap());
        assert!(r[0].starts_with('O') && r[1].starts_with("T04"), "{r:?}");
    }
}
