//! A simulated device behind a [`Probe`], for the tests and `keel debug --simulate` (try gdb,
//! VS Code or a script against the GDB server without a device). It keeps the debug agent's
//! rules (breakpoints patched into code and hidden from reads, writes over them refused, only
//! the app's memory reachable, message sizes, temporary breakpoints gone at the next stop) and
//! "runs" the app by following its control flow with `keel-thumb`: branches, calls and returns
//! go where they should, but data instructions do nothing. A call out of the app's memory (a
//! system call's veneer) returns at once.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keel_debug::agent::{BKPT, MAX_BREAKPOINTS};
use keel_debug::wire::{self, Op, Regs, RestartReason, Status, Stop, StopReason, MAX_MEM, MAX_MESSAGE, NREGS};
use keel_thumb::Flow;

use super::board::{APP_CODE_BASE, APP_CODE_SIZE, APP_RAM_BASE, APP_RAM_SIZE};
use super::probe::{DeviceEvent, OpOutcome, Probe, ProbeError};

/// Instructions one resume runs before the app counts as running (until halted).
const RUN_LIMIT: usize = 10_000;

/// The demo app's `main`.
pub const DEMO_MAIN: u32 = 0x0020_0100;
/// Its loop head.
pub const DEMO_LOOP: u32 = 0x0020_0104;
/// The `bl func` in the loop.
pub const DEMO_CALL: u32 = 0x0020_0106;
/// After the call.
pub const DEMO_AFTER_CALL: u32 = 0x0020_010a;
/// The `blx r3` into a system call's veneer.
pub const DEMO_SYSCALL: u32 = 0x0020_010e;
/// The branch back to the loop head.
pub const DEMO_BRANCH: u32 = 0x0020_0110;
/// `func`.
pub const DEMO_FUNC: u32 = 0x0020_0114;
/// The NSC veneer the app calls.
pub const DEMO_VENEER: u32 = 0x1007_0000;
/// Words at the start of app RAM.
pub const DEMO_RAM_WORDS: [u32; 4] = [0xdead_beef, 0x0123_4567, 0x89ab_cdef, 0xcafe_f00d];

/// The demo app: a loop that calls a function and a system call.
///
/// ```text
/// 00200100 main:  b580       push {r7, lr}
/// 00200102        af00       add  r7, sp, #0
/// 00200104 loop:  2001       movs r0, #1
/// 00200106        f000 f805  bl   func
/// 0020010a        3001       adds r0, #1
/// 0020010c        4b02       ldr  r3, [pc, #8]     ; 0x10070001, a system call's veneer
/// 0020010e        4798       blx  r3
/// 00200110        e7f8       b    loop
/// 00200112        bf00       nop
/// 00200114 func:  3002       adds r0, #2
/// 00200116        4770       bx   lr
/// 00200118        10070001   .word
/// ```
pub fn demo_code() -> Vec<(u32, Vec<u8>)> {
    let halfwords: [u16; 12] =
        [0xb580, 0xaf00, 0x2001, 0xf000, 0xf805, 0x3001, 0x4b02, 0x4798, 0xe7f8, 0xbf00, 0x3002, 0x4770];
    let mut code: Vec<u8> = halfwords.iter().flat_map(|h| h.to_le_bytes()).collect();
    code.extend_from_slice(&(DEMO_VENEER | 1).to_le_bytes());
    // The vector table: initial stack pointer and reset handler.
    let mut vectors = (APP_RAM_BASE + 0x1000).to_le_bytes().to_vec();
    vectors.extend_from_slice(&(DEMO_MAIN | 1).to_le_bytes());
    vec![(APP_CODE_BASE, vectors), (DEMO_MAIN, code)]
}

/// The registers the demo app starts with.
pub fn demo_regs() -> Regs {
    let mut r = [0u32; NREGS];
    for (i, v) in r.iter_mut().enumerate().take(13) {
        *v = i as u32 * 0x1111;
    }
    r[3] = DEMO_VENEER | 1; // what the `ldr r3` loads (the simulation does not run loads)
    r[7] = APP_RAM_BASE + 0xff0;
    r[wire::SP] = APP_RAM_BASE + 0xff0;
    r[wire::LR] = 0xffff_ffff;
    r[wire::PC] = DEMO_MAIN;
    r[wire::XPSR] = 0x0100_0000;
    r[17] = APP_RAM_BASE + 0xff0; // msp
    r[18] = 0; // psp
    r
}

#[derive(Clone, Copy, Debug)]
struct Breakpoint {
    addr: u32,
    original: u16,
    temporary: bool,
}

/// The simulated device's state, shared with the test that made it.
pub struct Sim {
    code: Vec<u8>,
    ram: Vec<u8>,
    /// The app's registers.
    pub regs: Regs,
    /// Halted for the debugger.
    pub halted: bool,
    bps: Vec<Breakpoint>,
    events: VecDeque<DeviceEvent>,
    /// Round trips (batches) so far.
    pub round_trips: u64,
    /// Every batch, as its ops' debug text.
    pub log: Vec<Vec<String>>,
    /// Refuse writes of sp, msp and psp (as a visor may).
    pub refuse_sp_writes: bool,
    /// The session ended (detach).
    pub detached: bool,
}

impl Sim {
    /// A device running the [`demo_code`] app.
    pub fn demo() -> Sim {
        let mut s = Sim {
            code: vec![0; APP_CODE_SIZE as usize],
            ram: vec![0; APP_RAM_SIZE as usize],
            regs: demo_regs(),
            halted: false,
            bps: Vec::new(),
            events: VecDeque::new(),
            round_trips: 0,
            log: Vec::new(),
            refuse_sp_writes: true,
            detached: false,
        };
        for (addr, bytes) in demo_code() {
            s.write(addr, &bytes).expect("demo code in the code region");
        }
        for (i, w) in DEMO_RAM_WORDS.iter().enumerate() {
            s.write(APP_RAM_BASE + 4 * i as u32, &w.to_le_bytes()).expect("ram");
        }
        // Let it run a little, as a device does before anyone connects.
        s.run();
        s
    }

    fn mem(&self, addr: u32, len: usize) -> Option<(bool, usize)> {
        let end = u64::from(addr) + len as u64;
        if addr >= APP_CODE_BASE && end <= u64::from(APP_CODE_BASE + APP_CODE_SIZE) {
            Some((true, (addr - APP_CODE_BASE) as usize))
        } else if addr >= APP_RAM_BASE && end <= u64::from(APP_RAM_BASE + APP_RAM_SIZE) {
            Some((false, (addr - APP_RAM_BASE) as usize))
        } else {
            None
        }
    }

    /// Reads memory as the device has it (breakpoints included).
    pub fn read(&self, addr: u32, len: usize) -> Result<Vec<u8>, Status> {
        let (code, off) = self.mem(addr, len).ok_or(Status::Denied)?;
        let m = if code { &self.code } else { &self.ram };
        Ok(m[off..off + len].to_vec())
    }

    /// Writes memory.
    pub fn write(&mut self, addr: u32, data: &[u8]) -> Result<(), Status> {
        let (code, off) = self.mem(addr, data.len()).ok_or(Status::Denied)?;
        let m = if code { &mut self.code } else { &mut self.ram };
        m[off..off + data.len()].copy_from_slice(data);
        Ok(())
    }

    /// The app's code without the breakpoints.
    fn original(&self, addr: u32) -> Result<u16, keel_thumb::Fault> {
        if let Some(b) = self.bps.iter().find(|b| b.addr == addr) {
            return Ok(b.original);
        }
        let b = self.read(addr, 2).map_err(|_| keel_thumb::Fault { addr })?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    /// Addresses of the planted breakpoints.
    pub fn breakpoints(&self) -> Vec<(u32, bool)> {
        self.bps.iter().map(|b| (b.addr, b.temporary)).collect()
    }

    fn stop(&mut self, reason: StopReason, detail: u32) {
        self.halted = true;
        for b in self.bps.clone().iter().filter(|b| b.temporary) {
            let _ = self.write(b.addr, &b.original.to_le_bytes());
        }
        self.bps.retain(|b| !b.temporary);
        self.events.push_back(DeviceEvent::Stop(Stop { reason, detail, regs: self.regs }));
    }

    /// Runs the app until a breakpoint or [`RUN_LIMIT`] instructions (then it keeps running).
    fn run(&mut self) {
        self.halted = false;
        for _ in 0..RUN_LIMIT {
            let pc = self.regs[wire::PC] & !1;
            if self.read(pc, 2).map(|b| u16::from_le_bytes([b[0], b[1]])) == Ok(BKPT) {
                self.stop(StopReason::Breakpoint, u32::from(BKPT & 0xff));
                return;
            }
            let next = match keel_thumb::next_pc(&*self) {
                Ok(n) => n,
                Err(_) => return self.stop(StopReason::Fault, 3),
            };
            let seq = pc + u32::from(next.len);
            match next.flow {
                Flow::Next | Flow::Skipped | Flow::Branch => self.regs[wire::PC] = next.pc,
                Flow::Call if self.mem(next.pc, 2).is_none() => {
                    // A system call: the veneer returns at once with 0 in r0.
                    self.regs[0] = 0;
                    self.regs[wire::PC] = seq;
                }
                Flow::Call => {
                    self.regs[wire::LR] = seq | 1;
                    self.regs[wire::PC] = next.pc;
                }
                Flow::Trap(keel_thumb::Trap::Svc(_)) => self.regs[wire::PC] = seq,
                _ => return self.stop(StopReason::Fault, 3),
            }
        }
    }

    /// The app starts again (it crashed, an update came, or the debugger asked).
    pub fn restart_app(&mut self, reason: RestartReason) {
        // The code is loaded again: the breakpoints are simply gone.
        for b in std::mem::take(&mut self.bps) {
            let _ = self.write(b.addr, &b.original.to_le_bytes());
        }
        self.regs = demo_regs();
        self.events.push_back(DeviceEvent::Restarted(reason));
        self.run();
    }

    fn op(&mut self, op: &Op<'_>) -> Result<Vec<u8>, Status> {
        match *op {
            Op::Hello => Ok(vec![self.halted as u8]),
            Op::Ping => Ok(Vec::new()),
            Op::Halt => {
                // Halting a running app, or saying again where it is halted: a stop either way.
                let regs = self.regs;
                if self.halted {
                    self.events.push_back(DeviceEvent::Stop(Stop { reason: StopReason::Halted, detail: 0, regs }));
                } else {
                    self.stop(StopReason::Halted, 0);
                }
                Ok(Vec::new())
            }
            Op::Resume => {
                if !self.halted {
                    return Err(Status::NotHalted);
                }
                self.run();
                Ok(Vec::new())
            }
            Op::ReadRegs => {
                if !self.halted {
                    return Err(Status::NotHalted);
                }
                Ok(self.regs.iter().flat_map(|r| r.to_le_bytes()).collect())
            }
            Op::WriteReg { n, value } => {
                if !self.halted {
                    return Err(Status::NotHalted);
                }
                let n = n as usize;
                if n >= NREGS || (self.refuse_sp_writes && matches!(n, wire::SP | 17 | 18)) {
                    return Err(Status::BadArgument);
                }
                self.regs[n] = value;
                Ok(Vec::new())
            }
            Op::ReadMem { addr, len } => {
                if len as usize > MAX_MEM {
                    return Err(Status::BadArgument);
                }
                let mut d = self.read(addr, len as usize)?;
                for b in &self.bps {
                    for (i, byte) in b.original.to_le_bytes().into_iter().enumerate() {
                        let a = b.addr + i as u32;
                        if a >= addr && a - addr < u32::from(len) {
                            d[(a - addr) as usize] = byte;
                        }
                    }
                }
                Ok(d)
            }
            Op::WriteMem { addr, data } => {
                if data.len() > MAX_MEM {
                    return Err(Status::BadArgument);
                }
                let end = u64::from(addr) + data.len() as u64;
                if self.bps.iter().any(|b| u64::from(b.addr) < end && addr < b.addr + 2) {
                    return Err(Status::BadArgument);
                }
                self.write(addr, data).map(|_| Vec::new())
            }
            Op::SetBreak { addr, temporary } => {
                if addr & 1 != 0 {
                    return Err(Status::BadArgument);
                }
                if let Some(b) = self.bps.iter_mut().find(|b| b.addr == addr) {
                    b.temporary &= temporary;
                    return Ok(Vec::new());
                }
                if self.bps.len() >= MAX_BREAKPOINTS {
                    return Err(Status::NoRoom);
                }
                let o = self.read(addr, 2)?;
                self.write(addr, &BKPT.to_le_bytes())?;
                self.bps.push(Breakpoint { addr, original: u16::from_le_bytes([o[0], o[1]]), temporary });
                Ok(Vec::new())
            }
            Op::ClearBreak { addr } => {
                if let Some(i) = self.bps.iter().position(|b| b.addr == addr) {
                    let b = self.bps.remove(i);
                    self.write(b.addr, &b.original.to_le_bytes())?;
                }
                Ok(Vec::new())
            }
            Op::Detach => {
                for b in std::mem::take(&mut self.bps) {
                    let _ = self.write(b.addr, &b.original.to_le_bytes());
                }
                self.detached = true;
                if self.halted {
                    self.run();
                }
                Ok(Vec::new())
            }
            Op::Restart => {
                self.restart_app(RestartReason::Requested);
                Ok(Vec::new())
            }
        }
    }
}

impl keel_thumb::Target for Sim {
    fn reg(&self, r: u8) -> u32 {
        self.regs[r as usize]
    }

    fn xpsr(&self) -> u32 {
        self.regs[wire::XPSR]
    }

    fn read_u16(&self, addr: u32) -> Result<u16, keel_thumb::Fault> {
        self.original(addr)
    }

    fn read_u32(&self, addr: u32) -> Result<u32, keel_thumb::Fault> {
        Ok(u32::from(self.original(addr)?) | u32::from(self.original(addr + 2)?) << 16)
    }
}

/// The [`Probe`] of a [`Sim`].
pub struct SimProbe(pub Arc<Mutex<Sim>>);

impl SimProbe {
    /// A probe of a new demo device, and the device.
    pub fn demo() -> (SimProbe, Arc<Mutex<Sim>>) {
        let sim = Arc::new(Mutex::new(Sim::demo()));
        (SimProbe(sim.clone()), sim)
    }

    fn sim(&self) -> std::sync::MutexGuard<'_, Sim> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Probe for SimProbe {
    fn batch(&mut self, ops: &[Op<'_>]) -> Result<Vec<OpOutcome>, ProbeError> {
        let mut buf = [0u8; MAX_MESSAGE];
        wire::Request::encode(0, ops, &mut buf).map_err(|e| ProbeError(format!("request too large: {e:?}")))?;
        if wire::reply_len(ops) > MAX_MESSAGE {
            return Err(ProbeError(format!("the reply would not fit: {} bytes", wire::reply_len(ops))));
        }
        let mut sim = self.sim();
        if sim.detached {
            return Err(ProbeError("the session ended".into()));
        }
        sim.round_trips += 1;
        sim.log.push(ops.iter().map(|o| format!("{o:?}")).collect());
        Ok(ops
            .iter()
            .map(|op| match sim.op(op) {
                Ok(d) => OpOutcome::Ok(d),
                Err(s) => OpOutcome::Err(s),
            })
            .collect())
    }

    fn wait_event(&mut self, timeout: Duration) -> Result<Option<DeviceEvent>, ProbeError> {
        if let Some(e) = self.sim().events.pop_front() {
            return Ok(Some(e));
        }
        std::thread::sleep(timeout.min(Duration::from_millis(20)));
        Ok(self.sim().events.pop_front())
    }

    fn round_trips(&self) -> u64 {
        self.sim().round_trips
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_decodes_as_documented() {
        let mut s = Sim::demo();
        s.regs[wire::PC] = DEMO_CALL;
        let n = keel_thumb::next_pc(&s).unwrap();
        assert_eq!((n.pc, n.flow), (DEMO_FUNC, Flow::Call));
        s.regs[wire::PC] = DEMO_BRANCH;
        assert_eq!(keel_thumb::next_pc(&s).unwrap().pc, DEMO_LOOP);
        s.regs[wire::PC] = DEMO_SYSCALL;
        let n = keel_thumb::next_pc(&s).unwrap();
        assert_eq!((n.pc, n.flow), (DEMO_VENEER, Flow::Call));
        s.regs[wire::PC] = DEMO_FUNC + 2;
        s.regs[wire::LR] = DEMO_AFTER_CALL | 1;
        assert_eq!(keel_thumb::next_pc(&s).unwrap().pc, DEMO_AFTER_CALL);
    }

    #[test]
    fn runs_to_a_breakpoint_and_hides_it() {
        let (mut p, sim) = SimProbe::demo();
        let out = p.batch(&[Op::Halt]).unwrap();
        assert_eq!(out, vec![OpOutcome::Ok(vec![])]);
        assert!(matches!(p.wait_event(Duration::ZERO).unwrap(), Some(DeviceEvent::Stop(_))));
        p.batch(&[Op::SetBreak { addr: DEMO_FUNC, temporary: false }, Op::Resume]).unwrap();
        let Some(DeviceEvent::Stop(s)) = p.wait_event(Duration::ZERO).unwrap() else { panic!() };
        assert_eq!((s.reason, s.regs[wire::PC]), (StopReason::Breakpoint, DEMO_FUNC));
        assert_eq!(s.regs[wire::LR], DEMO_AFTER_CALL | 1);
        let out = p.batch(&[Op::ReadMem { addr: DEMO_FUNC, len: 2 }]).unwrap();
        assert_eq!(out, vec![OpOutcome::Ok(vec![0x02, 0x30])]);
        assert_eq!(sim.lock().unwrap().read(DEMO_FUNC, 2).unwrap(), BKPT.to_le_bytes());
        let out = p.batch(&[Op::WriteMem { addr: DEMO_FUNC, data: &[0, 0] }]).unwrap();
        assert_eq!(out, vec![OpOutcome::Err(Status::BadArgument)]);
        let out = p.batch(&[Op::ReadMem { addr: DEMO_VENEER, len: 4 }]).unwrap();
        assert_eq!(out, vec![OpOutcome::Err(Status::Denied)]);
        let big = Op::ReadMem { addr: APP_RAM_BASE, len: 768 };
        assert!(p.batch(&[big, big]).is_err());
    }
}
