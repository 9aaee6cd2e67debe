//! The device's debug agent, sans-IO: the session with `keel debug`, the requests it runs, the
//! software breakpoints and whether the app is halted. The visor feeds it frames and tells it
//! what happened to the app; it answers with frames to send and [`Action`]s for the app.
//!
//! What the agent guarantees, whatever the frames say:
//! * a session opens only with the debug key of the running app (none: no session);
//! * memory goes through the shell's [`Target`], which refuses what the app itself could not
//!   reach (the visor checks with the TT instruction);
//! * every breakpoint it planted is taken out again on detach, on session end (30 s without a
//!   frame), when a new session opens and before anything else replaces the app's code
//!   ([`Agent::app_restarted`]: the code was loaded again, so nothing is restored into it);
//! * a request is run once: a retransmission (same id) gets the same answer again.

use clatter::traits::Rng;

use crate::session::{is_handshake, Accepted, Refusal, Responder, MAX_FRAME};
use crate::wire::{
    begin_reply, Event, Op, Regs, Request, RestartReason, Status, Stop, StopReason, Writer, MAX_MEM, MAX_MESSAGE, NREGS,
};

/// A session ends after this long without a frame from the CLI (µs); its breakpoints are
/// removed and a halted app resumes. The CLI pings every few seconds, so this is how long a
/// session survives a dropped link.
pub const SESSION_TIMEOUT_US: u64 = 30_000_000;
/// A session whose CLI has not yet sent one authenticated frame ends after this long (µs): the
/// relay can replay a recorded first handshake message, and such a session must not keep the app
/// halted nor turn its faults into halts.
pub const UNCONFIRMED_TIMEOUT_US: u64 = 5_000_000;
/// Length of a handshake's first message as the CLI sends it (a `hello` payload): anything else
/// is dropped before any X25519 work and without using up the handshake rate.
pub const HANDSHAKE_LEN: usize = 1 + 32 + 48 + 3 + 16;
/// Software breakpoints one session may plant.
pub const MAX_BREAKPOINTS: usize = 16;
/// A handshake costs the visor three X25519 operations: at most one per this long (µs) is
/// served; the others are dropped unanswered (the CLI tries again), so whoever can send frames
/// through the relay cannot keep the visor busy with them.
pub const HANDSHAKE_INTERVAL_US: u64 = 250_000;
/// The instruction planted: `bkpt #0x4b` ('K').
pub const BKPT: u16 = 0xBE4B;

/// The app as the agent reaches it: registers of the halted app and its memory, both checked
/// by the shell.
pub trait Target {
    /// The registers where the app is halted.
    fn regs(&self) -> Regs;
    /// Writes register `n` of the halted app.
    fn write_reg(&mut self, n: usize, value: u32) -> Result<(), Status>;
    /// Reads app memory.
    fn read(&self, addr: u32, buf: &mut [u8]) -> Result<(), Status>;
    /// Writes app memory (code included: breakpoints are planted with it).
    fn write(&mut self, addr: u32, data: &[u8]) -> Result<(), Status>;
}

/// What the shell must do with the app.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Nothing.
    None,
    /// Halt the app as soon as it can be (then call [`Agent::stopped`]).
    Halt,
    /// Let the halted app run again.
    Resume,
    /// Start the app again from its reset handler (then [`Agent::app_restarted`]).
    Restart,
}

#[derive(Clone, Copy)]
struct Breakpoint {
    addr: u32,
    original: u16,
    temporary: bool,
}

/// The debug agent. About 1.1 KiB, most of it the last reply (kept for retransmissions).
pub struct Agent {
    device_secret: [u8; 32],
    app_key: Option<[u8; 32]>,
    app_running: bool,
    session: Option<Responder>,
    /// The CLI has sent an authenticated frame in this session (not just a handshake, which the
    /// relay could replay).
    confirmed: bool,
    last_rx_us: u64,
    halted: bool,
    /// Why the app is halted (a halt re-reported to a new session keeps its reason: a fault
    /// stays a fault, whose resume restarts the app).
    halted_for: (StopReason, u32),
    halt_wanted: bool,
    breakpoints: [Option<Breakpoint>; MAX_BREAKPOINTS],
    /// The last reply's plaintext (or the handshake's answer, already a frame) and its id.
    reply: [u8; MAX_MESSAGE],
    reply_len: usize,
    reply_id: Option<u16>,
    send_reply: bool,
    send_raw: bool,
    stop: Option<Stop>,
    restarted: Option<RestartReason>,
    refusal: Option<Refusal>,
    pending_detach: bool,
    frames_in: u32,
    sessions: u32,
    last_handshake_us: Option<u64>,
    handshakes_dropped: u32,
}

impl Agent {
    /// An agent for the device with `device_secret` (its link key, X25519).
    pub fn new(device_secret: [u8; 32]) -> Self {
        Agent {
            device_secret,
            app_key: None,
            app_running: false,
            session: None,
            confirmed: false,
            last_rx_us: 0,
            halted: false,
            halted_for: (StopReason::Halted, 0),
            halt_wanted: false,
            breakpoints: [None; MAX_BREAKPOINTS],
            reply: [0; MAX_MESSAGE],
            reply_len: 0,
            reply_id: None,
            send_reply: false,
            send_raw: false,
            stop: None,
            restarted: None,
            refusal: None,
            pending_detach: false,
            frames_in: 0,
            sessions: 0,
            last_handshake_us: None,
            handshakes_dropped: 0,
        }
    }

    /// The app and its debug key (from its image header; `None`: not debuggable); `running`:
    /// started and not stopped (a crashed app waits for its restart). A session for another key
    /// ends: a new app with another key is not the developer's to debug.
    pub fn set_app(&mut self, running: bool, key: Option<[u8; 32]>) {
        if key != self.app_key {
            self.session = None;
            self.reply_id = None;
            self.send_reply = false;
            self.stop = None;
            self.restarted = None;
        }
        if !running {
            // A halt asked for the app that stopped meanwhile is moot.
            self.halt_wanted = false;
        }
        self.app_running = running;
        self.app_key = key;
    }

    /// The debug key of the app, if it has one.
    pub fn app_key(&self) -> Option<[u8; 32]> {
        self.app_key
    }

    /// True when [`Agent::poll_transmit`] has a frame to send.
    pub fn has_pending(&self) -> bool {
        self.refusal.is_some()
            || (self.send_reply && (self.send_raw || self.session.is_some()))
            || (self.session.is_some() && (self.stop.is_some() || self.restarted.is_some()))
    }

    /// True while a session is open.
    pub fn has_session(&self) -> bool {
        self.session.is_some()
    }

    /// True while the app is halted for the debugger (its watchdog and trial clocks are paused).
    pub fn is_halted(&self) -> bool {
        self.halted
    }

    /// True while a halt waits to be served.
    pub fn halt_wanted(&self) -> bool {
        self.halt_wanted
    }

    /// Whether `addr` holds one of the agent's breakpoints.
    pub fn is_breakpoint(&self, addr: u32) -> bool {
        self.breakpoints.iter().flatten().any(|b| b.addr == addr)
    }

    /// Sessions opened since boot.
    pub fn sessions(&self) -> u32 {
        self.sessions
    }

    /// When [`Agent::poll`] needs to run next.
    pub fn poll_at(&self) -> Option<u64> {
        self.session.as_ref().map(|_| self.last_rx_us.saturating_add(self.timeout()))
    }

    fn timeout(&self) -> u64 {
        if self.confirmed {
            SESSION_TIMEOUT_US
        } else {
            UNCONFIRMED_TIMEOUT_US
        }
    }

    /// Ends a silent session (breakpoints out, the app resumed).
    pub fn poll(&mut self, now: u64, t: &mut impl Target) -> Action {
        if self.session.is_some() && now >= self.last_rx_us.saturating_add(self.timeout()) {
            return self.end_session(t);
        }
        Action::None
    }

    fn end_session(&mut self, t: &mut impl Target) -> Action {
        self.session = None;
        self.confirmed = false;
        self.restarted = None;
        self.reply_id = None;
        self.send_reply = false;
        self.stop = None;
        self.clear_breakpoints(t, false);
        self.halt_wanted = false;
        if self.halted {
            self.halted = false;
            Action::Resume
        } else {
            Action::None
        }
    }

    fn clear_breakpoints(&mut self, t: &mut impl Target, only_temporary: bool) {
        for slot in self.breakpoints.iter_mut() {
            if let Some(b) = *slot {
                if only_temporary && !b.temporary {
                    continue;
                }
                // Put the code back unless the app changed it since (then it is not ours).
                let mut now = [0u8; 2];
                if t.read(b.addr, &mut now).is_ok() && u16::from_le_bytes(now) == BKPT {
                    let _ = t.write(b.addr, &b.original.to_le_bytes());
                }
                *slot = None;
            }
        }
    }

    /// Handles one frame from the relay. Errors end the session (the frame is dropped).
    pub fn receive<R: Rng>(&mut self, now: u64, frame: &[u8], t: &mut impl Target) -> Action {
        self.frames_in = self.frames_in.wrapping_add(1);
        if is_handshake(frame) {
            return self.handshake::<R>(now, frame, t);
        }
        let Some(session) = self.session.as_mut() else { return Action::None };
        let mut plain = [0u8; MAX_MESSAGE];
        let n = match session.open(frame, &mut plain) {
            Ok(n) => n,
            // Altered, replayed or reordered: the session ends.
            Err(_) => return self.end_session(t),
        };
        self.last_rx_us = now;
        self.confirmed = true;
        let Ok(req) = Request::decode(&plain[..n]) else { return self.end_session(t) };
        if self.reply_id == Some(req.id) {
            // A retransmission: the same answer again.
            self.send_reply = true;
            return Action::None;
        }
        self.run(req, t)
    }

    /// Handshakes dropped because they came too fast ([`HANDSHAKE_INTERVAL_US`]).
    pub fn handshakes_dropped(&self) -> u32 {
        self.handshakes_dropped
    }

    fn handshake<R: Rng>(&mut self, now: u64, frame: &[u8], t: &mut impl Target) -> Action {
        if frame.len() != HANDSHAKE_LEN {
            self.refusal = Some(Refusal::BadHandshake);
            return Action::None;
        }
        if self.last_handshake_us.is_some_and(|l| now < l.saturating_add(HANDSHAKE_INTERVAL_US)) {
            self.handshakes_dropped = self.handshakes_dropped.wrapping_add(1);
            return Action::None;
        }
        self.last_handshake_us = Some(now);
        let refuse = |a: &mut Agent, r: Refusal| {
            a.refusal = Some(r);
            Action::None
        };
        let Ok(acc) = Accepted::<R>::accept(&self.device_secret, frame) else {
            return refuse(self, Refusal::BadHandshake);
        };
        if !self.app_running {
            return refuse(self, Refusal::NoApp);
        }
        match self.app_key {
            None => return refuse(self, Refusal::NotDebuggable),
            Some(k) if k != acc.initiator => return refuse(self, Refusal::WrongKey),
            Some(_) => {}
        }
        // A new session: whatever the previous one planted goes (the new CLI does not know it).
        self.clear_breakpoints(t, false);
        self.stop = None;
        self.restarted = None;
        self.pending_detach = false;
        let id = acc.id;
        let mut plain = [0u8; 8];
        let mut w = Writer::new(&mut plain);
        let _ = begin_reply(&mut w, id).and_then(|_| w.u8(Status::Ok as u8)).and_then(|_| w.u8(self.halted as u8));
        let len = w.len();
        let mut out = [0u8; 128];
        match acc.answer(&plain[..len], &mut out) {
            Ok((resp, n)) => {
                // Until the CLI proves it holds the key with a transport frame, the session
                // neither halts the app nor extends a halt: the silence clock keeps running
                // from the last authenticated frame of a session it replaces.
                if self.session.is_none() {
                    self.last_rx_us = now;
                }
                self.session = Some(resp);
                self.confirmed = false;
                self.sessions = self.sessions.wrapping_add(1);
                self.reply[..n].copy_from_slice(&out[..n]);
                self.reply_len = n;
                self.reply_id = None;
                self.send_reply = true;
                self.send_raw = true;
                self.halt_wanted = false;
            }
            Err(_) => return refuse(self, Refusal::BadHandshake),
        }
        Action::None
    }

    fn run(&mut self, req: Request<'_>, t: &mut impl Target) -> Action {
        let mut action = Action::None;
        let mut end = false;
        let mut failed = false;
        // Once an op let the app go (resume, restart, detach), no later op of the request may
        // change that again: the agent and the visor must agree on whether the app is halted.
        let mut settled = false;
        let mut buf = [0u8; MAX_MESSAGE];
        let mut w = Writer::new(&mut buf);
        let _ = begin_reply(&mut w, req.id);
        for op in req.ops() {
            let mark = w.len();
            if w.u8(Status::Ok as u8).is_err() {
                break;
            }
            let status = match op {
                // The app never runs on without what the request set up before (e.g. a step's
                // temporary breakpoint that was refused).
                Op::Resume if failed => Status::Skipped,
                Op::Halt | Op::Resume | Op::Restart if settled => Status::Skipped,
                _ => match self.op(op, t, &mut w, &mut action) {
                    Ok(()) => Status::Ok,
                    Err(s) => s,
                },
            };
            failed |= status != Status::Ok;
            settled |= status == Status::Ok && matches!(op, Op::Resume | Op::Restart | Op::Detach);
            if status != Status::Ok {
                w.truncate(mark);
                let _ = w.u8(status as u8);
            }
            if op == Op::Detach {
                end = true;
            }
        }
        let n = w.len();
        self.reply[..n].copy_from_slice(&buf[..n]);
        self.reply_len = n;
        self.reply_id = Some(req.id);
        self.send_reply = true;
        self.send_raw = false;
        if end {
            // Send the detach's answer, then forget the session.
            self.pending_detach = true;
        }
        action
    }

    fn op(&mut self, op: Op<'_>, t: &mut impl Target, w: &mut Writer<'_>, action: &mut Action) -> Result<(), Status> {
        match op {
            Op::Hello => w.u8(self.halted as u8).map_err(|_| Status::BadArgument),
            Op::Ping => Ok(()),
            Op::Halt => {
                if !self.app_running {
                    return Err(Status::NoApp);
                }
                if !self.halted {
                    self.halt_wanted = true;
                    *action = Action::Halt;
                } else {
                    // Already halted: say so again, with why (GDB's interrupt needs a stop).
                    let (reason, detail) = self.halted_for;
                    self.stop = Some(Stop { reason, detail, regs: t.regs() });
                }
                Ok(())
            }
            Op::Resume => {
                if !self.halted {
                    return Err(Status::NotHalted);
                }
                self.halted = false;
                self.stop = None;
                *action = Action::Resume;
                Ok(())
            }
            Op::ReadRegs => {
                if !self.halted {
                    return Err(Status::NotHalted);
                }
                w.regs(&t.regs()).map_err(|_| Status::BadArgument)
            }
            Op::WriteReg { n, value } => {
                if !self.halted {
                    return Err(Status::NotHalted);
                }
                if n as usize >= NREGS {
                    return Err(Status::BadArgument);
                }
                t.write_reg(n as usize, value)
            }
            Op::ReadMem { addr, len } => {
                if len as usize > MAX_MEM || w.remaining() < len as usize {
                    return Err(Status::BadArgument);
                }
                let dst = w.reserve(len as usize).map_err(|_| Status::BadArgument)?;
                t.read(addr, dst)?;
                // The app sees its own code, not the breakpoints.
                for b in self.breakpoints.iter().flatten() {
                    for (i, byte) in b.original.to_le_bytes().into_iter().enumerate() {
                        let a = b.addr.wrapping_add(i as u32);
                        if a >= addr && a - addr < len as u32 {
                            dst[(a - addr) as usize] = byte;
                        }
                    }
                }
                Ok(())
            }
            Op::WriteMem { addr, data } => {
                if data.len() > MAX_MEM {
                    return Err(Status::BadArgument);
                }
                let overlaps = self
                    .breakpoints
                    .iter()
                    .flatten()
                    .any(|b| b.addr < addr.wrapping_add(data.len() as u32) && addr < b.addr + 2);
                if overlaps {
                    // Writing over a planted breakpoint would lose either the write or the
                    // original code: the debugger must remove the breakpoint first.
                    return Err(Status::BadArgument);
                }
                t.write(addr, data)
            }
            Op::SetBreak { addr, temporary } => {
                if addr & 1 != 0 {
                    return Err(Status::BadArgument);
                }
                if let Some(b) = self.breakpoints.iter_mut().flatten().find(|b| b.addr == addr) {
                    // Permanent wins over temporary.
                    b.temporary &= temporary;
                    return Ok(());
                }
                let slot = self.breakpoints.iter_mut().find(|s| s.is_none()).ok_or(Status::NoRoom)?;
                let mut orig = [0u8; 2];
                t.read(addr, &mut orig)?;
                t.write(addr, &BKPT.to_le_bytes())?;
                let mut check = [0u8; 2];
                t.read(addr, &mut check)?;
                if u16::from_le_bytes(check) != BKPT {
                    // Not writable memory (code in flash on real silicon without an FPB).
                    return Err(Status::Denied);
                }
                *slot = Some(Breakpoint { addr, original: u16::from_le_bytes(orig), temporary });
                Ok(())
            }
            Op::ClearBreak { addr } => {
                let slot = self.breakpoints.iter_mut().find(|s| s.is_some_and(|b| b.addr == addr));
                if let Some(slot) = slot {
                    if let Some(b) = slot.take() {
                        t.write(b.addr, &b.original.to_le_bytes())?;
                    }
                }
                Ok(())
            }
            Op::Detach => {
                self.clear_breakpoints(t, false);
                self.halt_wanted = false;
                if self.halted {
                    self.halted = false;
                    *action = Action::Resume;
                }
                Ok(())
            }
            Op::Restart => {
                if !self.app_running {
                    return Err(Status::NoApp);
                }
                self.clear_breakpoints(t, false);
                self.halt_wanted = false;
                self.halted = false;
                *action = Action::Restart;
                Ok(())
            }
        }
    }

    /// The app stopped for the debugger: a halt was served, or it hit a `bkpt` or faulted while a
    /// session is open. Temporary breakpoints go; the CLI hears why, with the registers.
    pub fn stopped(&mut self, reason: StopReason, detail: u32, t: &mut impl Target) {
        self.halted = true;
        self.halted_for = (reason, detail);
        self.halt_wanted = false;
        self.clear_breakpoints(t, true);
        self.stop = Some(Stop { reason, detail, regs: t.regs() });
    }

    /// The app was started again (its code loaded again): breakpoints and the halt are gone.
    pub fn app_restarted(&mut self, reason: RestartReason) {
        self.breakpoints = [None; MAX_BREAKPOINTS];
        self.halted = false;
        self.halt_wanted = false;
        self.stop = None;
        if self.session.is_some() {
            self.restarted = Some(reason);
        }
    }

    /// Takes out the breakpoint at `addr` (the original code goes back); false if there is none.
    /// For a breakpoint the app cannot be halted at (inside one of its exception handlers).
    pub fn drop_breakpoint(&mut self, addr: u32, t: &mut impl Target) -> bool {
        let Some(slot) = self.breakpoints.iter_mut().find(|s| s.is_some_and(|b| b.addr == addr)) else {
            return false;
        };
        if let Some(b) = slot.take() {
            let _ = t.write(b.addr, &b.original.to_le_bytes());
        }
        true
    }

    /// Whether a `bkpt` the app hit is the debugger's business: a session is open.
    pub fn wants_stops(&self) -> bool {
        self.session.is_some() && self.confirmed
    }

    /// The next frame to send to the CLI, if any, into `out` (at least [`MAX_FRAME`] bytes).
    pub fn poll_transmit(&mut self, out: &mut [u8]) -> Option<usize> {
        if let Some(r) = self.refusal.take() {
            let f = r.frame();
            out.get_mut(..2)?.copy_from_slice(&f);
            return Some(2);
        }
        if out.len() < MAX_FRAME {
            return None;
        }
        if self.send_reply && self.send_raw {
            self.send_reply = false;
            self.send_raw = false;
            let n = self.reply_len;
            out[..n].copy_from_slice(&self.reply[..n]);
            return Some(n);
        }
        let session = self.session.as_mut()?;
        if self.send_reply {
            self.send_reply = false;
            let n = session.seal(&self.reply[..self.reply_len], out).ok();
            if self.pending_detach {
                self.pending_detach = false;
                self.session = None;
                self.reply_id = None;
            }
            return n;
        }
        let mut plain = [0u8; MAX_MESSAGE];
        if let Some(s) = self.stop.take() {
            let n = Event::encode_stop(&s, &mut plain).ok()?;
            return session.seal(&plain[..n], out).ok();
        }
        if let Some(r) = self.restarted.take() {
            let n = Event::encode_restarted(r, &mut plain).ok()?;
            return session.seal(&plain[..n], out).ok();
        }
        None
    }
}
