//! The debug session and agent end to end on the host: a CLI-side `Client`, the device's
//! `Agent` over a memory-backed target, and the frames between them (which a test can drop,
//! replay or alter like a hostile relay).

use keel_debug::agent::{Action, Agent, Target, BKPT, SESSION_TIMEOUT_US};
use keel_debug::session::{public_key, Client, Refusal, MAX_FRAME};
use keel_debug::wire::{
    Event, Op, OpResult, Regs, Request, RestartReason, Results, Status, StopReason, MAX_MESSAGE, NREGS, PC,
};
use rand_core::OsRng;

const CODE: u32 = 0x0020_0000;
const SECURE: u32 = 0x1000_0000;

struct Mem {
    code: Vec<u8>,
    regs: Regs,
}

impl Target for Mem {
    fn regs(&self) -> Regs {
        self.regs
    }
    fn write_reg(&mut self, n: usize, value: u32) -> Result<(), Status> {
        if n == 13 {
            return Err(Status::BadArgument);
        }
        self.regs[n] = value;
        Ok(())
    }
    fn read(&self, addr: u32, buf: &mut [u8]) -> Result<(), Status> {
        let off = addr.checked_sub(CODE).ok_or(Status::Denied)? as usize;
        let src = self.code.get(off..off + buf.len()).ok_or(Status::Denied)?;
        buf.copy_from_slice(src);
        Ok(())
    }
    fn write(&mut self, addr: u32, data: &[u8]) -> Result<(), Status> {
        let off = addr.checked_sub(CODE).ok_or(Status::Denied)? as usize;
        let dst = self.code.get_mut(off..off + data.len()).ok_or(Status::Denied)?;
        dst.copy_from_slice(data);
        Ok(())
    }
}

fn mem() -> Mem {
    let mut regs = [0u32; NREGS];
    regs[PC] = CODE + 0x100;
    Mem { code: (0..4096u32).map(|i| (i * 7) as u8).collect(), regs }
}

struct World {
    agent: Agent,
    client: Client<OsRng>,
    target: Mem,
    now: u64,
    next_id: u16,
    /// Every frame the relay carried, both ways.
    capture: Vec<Vec<u8>>,
}

const DEVICE_SECRET: [u8; 32] = [3; 32];
const DEBUG_SECRET: [u8; 32] = [9; 32];

impl World {
    fn new(app_key: Option<[u8; 32]>, debug_secret: [u8; 32]) -> World {
        let mut agent = Agent::new(DEVICE_SECRET);
        agent.set_app(true, app_key);
        let client = Client::new(&debug_secret, &public_key(&DEVICE_SECRET)).unwrap();
        World { agent, client, target: mem(), now: 1_000, next_id: 1, capture: Vec::new() }
    }

    fn debuggable() -> World {
        World::new(Some(public_key(&DEBUG_SECRET)), DEBUG_SECRET)
    }

    /// Sends a frame to the agent; returns the action and every frame it answered.
    fn deliver(&mut self, frame: &[u8]) -> (Action, Vec<Vec<u8>>) {
        self.capture.push(frame.to_vec());
        let a = self.agent.receive::<OsRng>(self.now, frame, &mut self.target);
        (a, self.drain())
    }

    fn drain(&mut self) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut buf = [0u8; MAX_FRAME];
        while let Some(n) = self.agent.poll_transmit(&mut buf) {
            self.capture.push(buf[..n].to_vec());
            out.push(buf[..n].to_vec());
        }
        out
    }

    fn open(&mut self, frame: &[u8]) -> Vec<u8> {
        let mut plain = [0u8; MAX_FRAME];
        let n = self.client.open(frame, &mut plain).expect("a frame the client accepts");
        plain[..n].to_vec()
    }

    fn handshake(&mut self) -> Result<bool, Refusal> {
        // Handshakes are rate limited: each test handshake comes a while after the previous.
        self.now += keel_debug::agent::HANDSHAKE_INTERVAL_US;
        let mut f = [0u8; MAX_FRAME];
        let n = self.client.start(0, &mut f).unwrap();
        let (_, frames) = self.deliver(&f[..n]);
        assert_eq!(frames.len(), 1);
        if let Some(r) = Refusal::parse(&frames[0]) {
            return Err(r);
        }
        let plain = self.open(&frames[0]);
        let Event::Reply { id: 0, results } = Event::decode(&plain).unwrap() else { panic!("no reply") };
        let mut r = Results::new(results);
        let OpResult::Ok(d) = r.next(&Op::Hello).unwrap() else { panic!("hello refused") };
        Ok(d[0] == 1)
    }

    fn request_frame(&mut self, ops: &[Op<'_>]) -> Vec<u8> {
        let mut plain = [0u8; MAX_MESSAGE];
        let n = Request::encode(self.next_id, ops, &mut plain).unwrap();
        self.next_id += 1;
        let mut f = [0u8; MAX_FRAME];
        let m = self.client.seal(&plain[..n], &mut f).unwrap();
        f[..m].to_vec()
    }

    /// One round trip: the action and the results (owned) in op order.
    fn request(&mut self, ops: &[Op<'_>]) -> (Action, Vec<Result<Vec<u8>, Status>>) {
        let f = self.request_frame(ops);
        let (a, frames) = self.deliver(&f);
        let plain = self.open(&frames[0]);
        let Event::Reply { results, .. } = Event::decode(&plain).unwrap() else { panic!("not a reply") };
        let mut r = Results::new(results);
        let out = ops
            .iter()
            .map(|op| match r.next(op).unwrap() {
                OpResult::Ok(d) => Ok(d.to_vec()),
                OpResult::Err(s) => Err(s),
            })
            .collect();
        assert!(r.is_empty());
        (a, out)
    }

    fn halt(&mut self) {
        let (a, res) = self.request(&[Op::Halt]);
        assert_eq!((a, res[0].clone()), (Action::Halt, Ok(vec![])));
        self.agent.stopped(StopReason::Halted, 0, &mut self.target);
        let frames = self.drain();
        let plain = self.open(&frames[0]);
        assert!(matches!(Event::decode(&plain).unwrap(), Event::Stop(s) if s.reason == StopReason::Halted));
    }
}

#[test]
fn a_session_reads_registers_and_memory_and_plants_breakpoints_that_go_away_on_detach() {
    let mut w = World::debuggable();
    assert_eq!(w.handshake(), Ok(false));
    let original = w.target.code.clone();
    // Registers need a halted app.
    let (_, r) = w.request(&[Op::ReadRegs]);
    assert_eq!(r[0], Err(Status::NotHalted));
    w.halt();
    let bp = CODE + 0x40;
    let (a, r) = w.request(&[
        Op::ReadRegs,
        Op::SetBreak { addr: bp, temporary: false },
        Op::ReadMem { addr: bp, len: 4 },
        Op::ReadMem { addr: SECURE, len: 4 },
        Op::WriteReg { n: 13, value: 0 },
        Op::WriteReg { n: 0, value: 0x1234 },
    ]);
    assert_eq!(a, Action::None);
    assert_eq!(u32::from_le_bytes(r[0].clone().unwrap()[4 * PC..4 * PC + 4].try_into().unwrap()), CODE + 0x100);
    assert_eq!(r[1], Ok(vec![]));
    // The code holds the bkpt, but a read shows the original bytes.
    assert_eq!(&w.target.code[0x40..0x42], &BKPT.to_le_bytes());
    assert_eq!(r[2].clone().unwrap(), original[0x40..0x44].to_vec());
    assert_eq!(r[3], Err(Status::Denied));
    assert_eq!(r[4], Err(Status::BadArgument));
    assert_eq!(w.target.regs[0], 0x1234);
    // Writing over a planted breakpoint is refused.
    let (_, r) = w.request(&[Op::WriteMem { addr: bp, data: &[0, 0] }]);
    assert_eq!(r[0], Err(Status::BadArgument));
    let (a, r) = w.request(&[Op::Detach]);
    assert_eq!((a, r[0].clone()), (Action::Resume, Ok(vec![])));
    assert_eq!(w.target.code, original, "detach restores every byte");
    assert!(!w.agent.has_session());
}

#[test]
fn temporary_breakpoints_go_at_the_next_stop_and_permanent_ones_stay() {
    let mut w = World::debuggable();
    w.handshake().unwrap();
    w.halt();
    let (a, r) = w.request(&[
        Op::SetBreak { addr: CODE + 0x10, temporary: false },
        Op::SetBreak { addr: CODE + 0x20, temporary: true },
        Op::Resume,
    ]);
    assert_eq!(a, Action::Resume);
    assert!(r.iter().all(|r| r.is_ok()));
    assert!(w.agent.is_breakpoint(CODE + 0x20));
    w.agent.stopped(StopReason::Breakpoint, 0x4b, &mut w.target);
    assert!(!w.agent.is_breakpoint(CODE + 0x20));
    assert!(w.agent.is_breakpoint(CODE + 0x10));
    assert_ne!(&w.target.code[0x20..0x22], &BKPT.to_le_bytes());
}

#[test]
fn a_retransmitted_request_is_answered_again_but_run_once() {
    let mut w = World::debuggable();
    w.handshake().unwrap();
    w.halt();
    let f = w.request_frame(&[Op::Resume]);
    let (a, first) = w.deliver(&f);
    assert_eq!(a, Action::Resume);
    // The relay lost the answer; the CLI sends the same request again (a new frame, same id).
    let mut plain = [0u8; MAX_MESSAGE];
    let n = Request::encode(w.next_id - 1, &[Op::Resume], &mut plain).unwrap();
    let mut f2 = [0u8; MAX_FRAME];
    let m = w.client.seal(&plain[..n], &mut f2).unwrap();
    let (a, again) = w.deliver(&f2[..m]);
    assert_eq!(a, Action::None, "not resumed twice");
    let a1 = w.open(&first[0]);
    let a2 = w.open(&again[0]);
    assert_eq!(a1, a2, "the same answer");
}

#[test]
fn a_replayed_or_altered_frame_ends_the_session_and_a_lost_one_does_not() {
    let mut w = World::debuggable();
    w.handshake().unwrap();
    w.halt();
    w.request(&[Op::SetBreak { addr: CODE + 0x30, temporary: false }]);
    // Lost frame: the next one still opens.
    let _lost = w.request_frame(&[Op::Ping]);
    let (_, r) = w.request(&[Op::Ping]);
    assert_eq!(r[0], Ok(vec![]));
    // Replay of an earlier frame.
    let f = w.request_frame(&[Op::Ping]);
    w.deliver(&f);
    let (a, out) = w.deliver(&f);
    assert!(out.is_empty());
    assert_eq!(a, Action::Resume, "the halted app resumes when the session ends");
    assert!(!w.agent.has_session());
    assert!(!w.agent.is_breakpoint(CODE + 0x30));

    let mut w = World::debuggable();
    w.handshake().unwrap();
    let mut f = w.request_frame(&[Op::Ping]);
    let last = f.len() - 1;
    f[last] ^= 1;
    let (_, out) = w.deliver(&f);
    assert!(out.is_empty());
    assert!(!w.agent.has_session());
}

#[test]
fn sessions_are_refused_without_the_apps_debug_key() {
    let mut w = World::new(Some(public_key(&DEBUG_SECRET)), [5; 32]);
    assert_eq!(w.handshake(), Err(Refusal::WrongKey));
    let mut w = World::new(None, DEBUG_SECRET);
    assert_eq!(w.handshake(), Err(Refusal::NotDebuggable));
    let mut w = World::debuggable();
    w.agent.set_app(false, Some(public_key(&DEBUG_SECRET)));
    assert_eq!(w.handshake(), Err(Refusal::NoApp));
    // A handshake made for another device.
    let mut w = World::debuggable();
    w.client = Client::new(&DEBUG_SECRET, &public_key(&[4; 32])).unwrap();
    assert_eq!(w.handshake(), Err(Refusal::BadHandshake));
}

#[test]
fn the_relay_sees_no_plaintext() {
    let mut w = World::debuggable();
    w.handshake().unwrap();
    w.halt();
    let marker = b"KEEL-PLAINTEXT-MARKER";
    w.request(&[Op::WriteMem { addr: CODE + 0x200, data: marker }, Op::ReadMem { addr: CODE + 0x200, len: 21 }]);
    for f in &w.capture {
        assert!(!f.windows(marker.len()).any(|x| x == marker));
    }
}

#[test]
fn a_silent_session_ends_and_resumes_the_app() {
    let mut w = World::debuggable();
    w.handshake().unwrap();
    w.halt();
    w.request(&[Op::SetBreak { addr: CODE + 0x50, temporary: false }]);
    let deadline = w.agent.poll_at().unwrap();
    assert_eq!(w.agent.poll(deadline - 1, &mut w.target), Action::None);
    assert_eq!(deadline, w.now + SESSION_TIMEOUT_US);
    assert_eq!(w.agent.poll(deadline, &mut w.target), Action::Resume);
    assert!(!w.agent.is_breakpoint(CODE + 0x50));
    assert_eq!(w.target.code, mem().code);
}

#[test]
fn a_restart_forgets_breakpoints_and_tells_the_cli() {
    let mut w = World::debuggable();
    w.handshake().unwrap();
    w.halt();
    w.request(&[Op::SetBreak { addr: CODE + 0x60, temporary: false }]);
    let (a, _) = w.request(&[Op::Restart]);
    assert_eq!(a, Action::Restart);
    w.agent.app_restarted(RestartReason::Requested);
    let frames = w.drain();
    let plain = w.open(&frames[0]);
    assert_eq!(Event::decode(&plain).unwrap(), Event::Restarted(RestartReason::Requested));
    assert!(!w.agent.is_halted());
}

#[test]
fn hostile_requests_are_refused_not_obeyed() {
    let mut w = World::debuggable();
    w.handshake().unwrap();
    w.halt();
    let (_, r) = w.request(&[
        Op::ReadMem { addr: u32::MAX - 1, len: 4 },
        Op::ReadMem { addr: CODE, len: 2000 },
        Op::SetBreak { addr: CODE + 1, temporary: false },
        Op::WriteReg { n: 200, value: 0 },
        Op::SetBreak { addr: SECURE, temporary: false },
    ]);
    assert_eq!(r[0], Err(Status::Denied));
    assert_eq!(r[1], Err(Status::BadArgument));
    assert_eq!(r[2], Err(Status::BadArgument));
    assert_eq!(r[3], Err(Status::BadArgument));
    assert_eq!(r[4], Err(Status::Denied));
    // Seventeen breakpoints: the last one has no room.
    let ops: Vec<Op<'_>> = (0..17).map(|i| Op::SetBreak { addr: CODE + 0x400 + 2 * i, temporary: false }).collect();
    let (_, r) = w.request(&ops);
    assert_eq!(r[16], Err(Status::NoRoom));
    // A resume after a failed op of the same request does not run.
    let (a, r) = w.request(&[Op::SetBreak { addr: SECURE, temporary: true }, Op::Resume]);
    assert_eq!((a, r[1].clone()), (Action::None, Err(Status::Skipped)));
    assert!(w.agent.is_halted());
    // Garbage inside a valid frame ends the session.
    let mut f = [0u8; MAX_FRAME];
    let n = w.client.seal(&[1, 0, 0xEE], &mut f).unwrap();
    let (_, out) = w.deliver(&f[..n]);
    assert!(out.is_empty());
    assert!(!w.agent.has_session());
}

#[test]
fn a_flood_of_handshakes_costs_one_per_interval() {
    let mut w = World::debuggable();
    let mut answered = 0;
    for _ in 0..100 {
        let mut c = Client::<OsRng>::new(&DEBUG_SECRET, &public_key(&DEVICE_SECRET)).unwrap();
        let mut f = [0u8; MAX_FRAME];
        let n = c.start(0, &mut f).unwrap();
        let (_, out) = w.deliver(&f[..n]);
        answered += out.len();
        w.now += 1_000; // 100 handshakes in 100 ms
    }
    assert_eq!(answered, 1);
    assert_eq!(w.agent.handshakes_dropped(), 99);
}

#[test]
fn a_replayed_handshake_cannot_keep_the_app_halted_or_turn_faults_into_halts() {
    let mut w = World::debuggable();
    // The relay recorded the CLI's first message.
    let mut f = [0u8; MAX_FRAME];
    let n = w.client.start(0, &mut f).unwrap();
    let recorded = f[..n].to_vec();
    w.now += keel_debug::agent::HANDSHAKE_INTERVAL_US;
    let (_, answer) = w.deliver(&recorded);
    // The real CLI goes on: the session is confirmed, and the app is halted.
    w.open(&answer[0]);
    w.halt();
    assert!(w.agent.wants_stops());
    // Later the relay replays the handshake every 4 s, after the CLI went quiet.
    let quiet_since = w.now;
    for _ in 0..20 {
        w.now += 4_000_000;
        let _ = w.agent.poll(w.now, &mut w.target);
        let (a, _) = w.deliver(&recorded);
        assert_eq!(a, Action::None, "a replayed handshake never halts");
        assert!(!w.agent.wants_stops(), "an unconfirmed session does not turn faults into halts");
        if !w.agent.is_halted() {
            break;
        }
    }
    assert!(!w.agent.is_halted(), "the app was resumed");
    assert!(w.now - quiet_since <= keel_debug::agent::UNCONFIRMED_TIMEOUT_US + 4_000_000);
}

#[test]
fn ops_after_one_that_let_the_app_go_cannot_halt_it_again() {
    let mut w = World::debuggable();
    w.handshake().unwrap();
    w.halt();
    let (a, r) = w.request(&[Op::Resume, Op::Halt]);
    assert_eq!((a, r[1].clone()), (Action::Resume, Err(Status::Skipped)));
    assert!(!w.agent.is_halted() && !w.agent.halt_wanted());
    w.agent.stopped(StopReason::Breakpoint, 0, &mut w.target);
    let (a, r) = w.request(&[Op::Detach, Op::Halt]);
    assert_eq!((a, r[1].clone()), (Action::Resume, Err(Status::Skipped)));
    assert!(!w.agent.halt_wanted(), "no halt is left over for after the session");
}

#[test]
fn a_halt_asked_for_an_app_that_stopped_is_dropped() {
    let mut w = World::debuggable();
    w.handshake().unwrap();
    let (a, _) = w.request(&[Op::Halt]);
    assert_eq!(a, Action::Halt);
    w.agent.set_app(false, Some(public_key(&DEBUG_SECRET)));
    assert!(!w.agent.halt_wanted());
}

#[test]
fn malformed_handshakes_do_not_use_up_the_handshake_rate() {
    let mut w = World::debuggable();
    for _ in 0..10 {
        let (_, out) = w.deliver(&[0x00]);
        assert_eq!(out.iter().filter_map(|f| Refusal::parse(f)).next(), Some(Refusal::BadHandshake));
    }
    assert_eq!(w.handshake(), Ok(false), "the real handshake right after is served");
}

#[test]
fn a_new_session_hears_why_the_app_is_halted() {
    let mut w = World::debuggable();
    w.handshake().unwrap();
    let (a, _) = w.request(&[Op::Halt]);
    assert_eq!(a, Action::Halt);
    // The app faulted meanwhile and is held there; the CLI restarts and opens a new session.
    w.agent.stopped(StopReason::Fault, 3, &mut w.target);
    w.drain();
    w.client = Client::new(&DEBUG_SECRET, &public_key(&DEVICE_SECRET)).unwrap();
    assert_eq!(w.handshake(), Ok(true), "the hello says halted");
    let f = w.request_frame(&[Op::Halt]);
    let (a, frames) = w.deliver(&f);
    assert_eq!(a, Action::None, "already halted");
    // The reply, then the stop.
    let plain = w.open(&frames[1]);
    match Event::decode(&plain).unwrap() {
        Event::Stop(s) => assert_eq!((s.reason, s.detail), (StopReason::Fault, 3)),
        e => panic!("{e:?}"),
    }
}
