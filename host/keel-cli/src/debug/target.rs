//! The device as the GDB server sees it: a [`Probe`] plus everything known locally about the
//! halted app, so that most of gdb's packets cost no round trip.
//!
//! * Registers come with every stop; gdb's reads are local, its writes wait (as `WriteReg`
//!   ops) for the next request that goes to the device anyway. The stack pointers and `control`
//!   are written at once, since the device may refuse them and gdb must hear it.
//! * Memory read while halted is kept in aligned [`BLOCK`]s until the app runs again; every
//!   request that must go to the device also fetches the blocks around `sp` and `pc` gdb will
//!   ask for next (backtraces, disassembly) if they fit in the same reply. Code bytes come from
//!   the ELF file ([`CodeImage`]) when there is one.
//! * Breakpoints are a local set: gdb inserts and removes them around every stop, and only the
//!   difference to what the device has planted goes out, in the request that resumes the app.
//! * A single step is one request: the breakpoint difference, a temporary breakpoint at the
//!   next PC (decoded with `keel-thumb` from the cached registers and memory), and `Resume`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use keel_debug::wire::{self, Op, Regs, RestartReason, Status, Stop, StopReason, MAX_MEM, MAX_MESSAGE, NREGS};
use keel_thumb::{Flow, Trap};

use super::board;
use super::elf::CodeImage;
use super::probe::{DeviceEvent, OpOutcome, Probe, ProbeError};

/// Size (and alignment) of the memory cache's blocks.
pub const BLOCK: u32 = 256;
/// Breakpoints gdb may have at once: one of the agent's slots stays free for a step's
/// temporary breakpoint.
pub const MAX_USER_BREAKPOINTS: usize = keel_debug::agent::MAX_BREAKPOINTS - 1;
/// How long the device may take to halt the app or to report its restart.
pub const HALT_TIMEOUT: Duration = Duration::from_secs(10);

/// Index of msp, psp and control in [`Regs`].
const MSP: usize = 17;
const PSP: usize = 18;
const CONTROL: usize = 22;

/// Why a request of gdb's failed.
#[derive(Debug)]
pub enum Fail {
    /// The device refused or cannot do it: gdb gets an error reply, the session goes on.
    Target(String),
    /// The session with the device is gone.
    Probe(ProbeError),
}

impl From<ProbeError> for Fail {
    fn from(e: ProbeError) -> Self {
        Fail::Probe(e)
    }
}

/// What the session did, for `--stats`.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Stats {
    /// Memory bytes gdb read that came from the ELF file.
    pub mem_bytes_from_elf: u64,
    /// Memory bytes gdb read that came from the cache.
    pub mem_bytes_from_cache: u64,
    /// Memory bytes read from the device (prefetched blocks included).
    pub mem_bytes_from_device: u64,
    /// Memory reads of gdb's that needed the device.
    pub mem_reads_remote: u64,
    /// Memory reads of gdb's answered locally.
    pub mem_reads_local: u64,
    /// Register writes sent along with a later request.
    pub reg_writes_deferred: u64,
    /// Breakpoint insertions and removals gdb asked for.
    pub breakpoint_requests: u64,
    /// `SetBreak`/`ClearBreak` ops actually sent.
    pub breakpoint_ops: u64,
    /// Single steps.
    pub steps: u64,
    /// Continues.
    pub resumes: u64,
}

/// An op that owns its data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Req {
    /// Any op but a memory write.
    Op(Op<'static>),
    /// `WriteMem`.
    Write(u32, Vec<u8>),
}

impl Req {
    fn op(&self) -> Op<'_> {
        match self {
            Req::Op(o) => *o,
            Req::Write(addr, data) => Op::WriteMem { addr: *addr, data },
        }
    }
}

/// How a single step starts.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// The app runs to the step's breakpoint: wait for the stop.
    Running,
    /// The instruction cannot be stepped; report this signal at the same PC (and the note).
    Refused(u8, String),
}

/// Signal numbers gdb knows (its own numbering, the same as Linux's for these).
pub mod signal {
    /// Ctrl-C.
    pub const INT: u8 = 2;
    /// An instruction that traps.
    pub const ILL: u8 = 4;
    /// Breakpoints, steps, halts.
    pub const TRAP: u8 = 5;
    /// A fault of the app.
    pub const SEGV: u8 = 11;
}

/// The device's app, with what is cached of it.
pub struct Debuggee {
    probe: Box<dyn Probe>,
    regs: Regs,
    halted: bool,
    pending_regs: BTreeMap<usize, u32>,
    blocks: HashMap<u32, Vec<u8>>,
    code: Option<CodeImage>,
    desired: BTreeSet<u32>,
    planted: BTreeSet<u32>,
    notes: Vec<String>,
    restarted: Option<RestartReason>,
    /// What the session did.
    pub stats: Stats,
}

impl Debuggee {
    /// A debuggee reached through `probe`, with the code of its ELF file if known.
    pub fn new(probe: Box<dyn Probe>, code: Option<CodeImage>) -> Self {
        Debuggee {
            probe,
            regs: [0; NREGS],
            halted: false,
            pending_regs: BTreeMap::new(),
            blocks: HashMap::new(),
            code,
            desired: BTreeSet::new(),
            planted: BTreeSet::new(),
            notes: Vec::new(),
            restarted: None,
            stats: Stats::default(),
        }
    }

    /// Round trips to the device so far.
    pub fn round_trips(&self) -> u64 {
        self.probe.round_trips()
    }

    /// Whether the app is halted (as far as the CLI knows).
    pub fn is_halted(&self) -> bool {
        self.halted
    }

    /// The registers where the app is halted (with gdb's writes applied).
    pub fn regs(&self) -> &Regs {
        &self.regs
    }

    /// Messages for the user that came up since the last call (gdb shows them as console
    /// output when it can; they went to stderr already).
    pub fn take_notes(&mut self) -> Vec<String> {
        std::mem::take(&mut self.notes)
    }

    /// The reason of a restart seen since the last call (app restarted behind gdb's back).
    pub fn take_restart(&mut self) -> Option<RestartReason> {
        self.restarted.take()
    }

    fn note(&mut self, text: String) {
        eprintln!("keel debug: {text}");
        self.notes.push(text);
    }

    /// The desired breakpoints (gdb's view).
    #[cfg(test)]
    pub fn breakpoints(&self) -> &BTreeSet<u32> {
        &self.desired
    }

    /// The breakpoints planted on the device.
    #[cfg(test)]
    pub fn planted(&self) -> &BTreeSet<u32> {
        &self.planted
    }

    // ------------------------------------------------------------------ requests and events

    /// Sends `reqs` (after the deferred register writes), split into as few requests as fit
    /// [`MAX_MESSAGE`] both ways; one outcome per element of `reqs`.
    pub fn send(&mut self, reqs: &[Req]) -> Result<Vec<OpOutcome>, ProbeError> {
        let pending: Vec<Req> = std::mem::take(&mut self.pending_regs)
            .into_iter()
            .map(|(n, value)| Req::Op(Op::WriteReg { n: n as u8, value }))
            .collect();
        let all: Vec<Op<'_>> = pending.iter().chain(reqs).map(Req::op).collect();
        let mut outcomes = Vec::with_capacity(all.len());
        let mut start = 0;
        while start < all.len() {
            let (mut req_len, mut rep_len, mut end) = (2, 3, start);
            while end < all.len() {
                let (q, r) = (wire::op_len(&all[end]), 1 + all[end].result_len());
                if end > start && (req_len + q > MAX_MESSAGE || rep_len + r > MAX_MESSAGE) {
                    break;
                }
                req_len += q;
                rep_len += r;
                end += 1;
            }
            let chunk = &all[start..end];
            let got = self.probe.batch(chunk)?;
            if got.len() != chunk.len() {
                return Err(ProbeError(format!("the device answered {} results to {} ops", got.len(), chunk.len())));
            }
            outcomes.extend(got);
            start = end;
        }
        for (req, out) in pending.iter().zip(&outcomes) {
            if let (Req::Op(Op::WriteReg { n, value }), OpOutcome::Err(s)) = (req, out) {
                let name = wire::REG_NAMES[*n as usize];
                self.note(format!("writing {value:#x} to {name} was refused: {}", s.as_str()));
            }
        }
        Ok(outcomes.split_off(pending.len()))
    }

    fn apply(&mut self, ev: &DeviceEvent) {
        match ev {
            DeviceEvent::Stop(s) => {
                self.regs = s.regs;
                self.halted = true;
                self.blocks.clear();
                self.pending_regs.clear();
            }
            DeviceEvent::Restarted(r) => {
                self.halted = false;
                self.planted.clear();
                self.blocks.clear();
                self.pending_regs.clear();
                if let Some(c) = self.code.as_mut() {
                    c.reloaded();
                }
                self.restarted = Some(*r);
            }
        }
    }

    /// The next device event (applied to the local state), waiting up to `timeout`.
    pub fn poll(&mut self, timeout: Duration) -> Result<Option<DeviceEvent>, ProbeError> {
        let ev = self.probe.wait_event(timeout)?;
        if let Some(e) = &ev {
            self.apply(e);
        }
        Ok(ev)
    }

    /// Keeps the session alive while nothing happens, and takes in events (a restart while
    /// halted, say, is noticed here).
    pub fn idle(&mut self) -> Result<(), ProbeError> {
        self.probe.idle()?;
        while self.poll(Duration::ZERO)?.is_some() {}
        Ok(())
    }

    /// Asks the device to halt the app (the stop comes as an event).
    pub fn request_halt(&mut self) -> Result<(), Fail> {
        match self.send(&[Req::Op(Op::Halt)])?.pop() {
            Some(OpOutcome::Ok(_)) => Ok(()),
            Some(OpOutcome::Err(s)) => Err(Fail::Target(format!("cannot halt the app: {}", s.as_str()))),
            None => Err(Fail::Probe(ProbeError("no answer to halt".into()))),
        }
    }

    /// Waits for a stop (after a halt was requested), halting again if the app restarts.
    pub fn wait_halted(&mut self) -> Result<Stop, Fail> {
        let deadline = Instant::now() + HALT_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Fail::Probe(ProbeError(format!(
                    "the device did not halt the app within {} s",
                    HALT_TIMEOUT.as_secs()
                ))));
            }
            match self.poll(left.min(Duration::from_millis(500)))? {
                Some(DeviceEvent::Stop(s)) => return Ok(s),
                // A restart forgets the halt: ask again.
                Some(DeviceEvent::Restarted(_)) => self.request_halt()?,
                None => {}
            }
        }
    }

    /// Halts the app (whether it runs or not: a halted app answers with a stop too).
    pub fn halt(&mut self) -> Result<Stop, Fail> {
        self.request_halt()?;
        self.wait_halted()
    }

    /// Takes hold of the app when gdb connects: halts it, and checks in the same request that
    /// the ELF file's code is what the device runs (if not, the ELF file is not used).
    pub fn attach(&mut self) -> Result<Stop, Fail> {
        let samples = self.code.as_ref().map(|c| c.samples(64)).unwrap_or_default();
        let mut reqs = vec![Req::Op(Op::Halt)];
        reqs.extend(samples.iter().map(|(a, d)| Req::Op(Op::ReadMem { addr: *a, len: d.len() as u16 })));
        let out = self.send(&reqs)?;
        if let Some(OpOutcome::Err(s)) = out.first() {
            return Err(Fail::Target(format!("cannot halt the app: {}", s.as_str())));
        }
        let differs = samples.iter().zip(&out[1..]).any(|((_, want), got)| *got != OpOutcome::Ok(want.clone()));
        if differs {
            self.code = None;
            self.note(
                "the app on the device is not the one in the --elf file: its code is read from the device".into(),
            );
        }
        self.wait_halted()
    }

    // ------------------------------------------------------------------ registers

    /// Writes register `i` (an index in [`wire::REG_NAMES`]).
    pub fn write_reg(&mut self, i: usize, value: u32) -> Result<(), Fail> {
        if !self.halted {
            return Err(Fail::Target("the app is not halted".into()));
        }
        if self.regs[i] == value && !self.pending_regs.contains_key(&i) {
            return Ok(());
        }
        if matches!(i, wire::SP | MSP | PSP | CONTROL) {
            // The device may refuse these (and writing one changes another): now, and read back.
            let out = self.send(&[Req::Op(Op::WriteReg { n: i as u8, value }), Req::Op(Op::ReadRegs)])?;
            if let Some(OpOutcome::Ok(data)) = out.get(1) {
                if let Ok(r) = wire::regs_from(data) {
                    self.regs = r;
                }
            }
            return match &out[0] {
                OpOutcome::Ok(_) => Ok(()),
                OpOutcome::Err(s) => Err(Fail::Target(format!("cannot write {}: {}", wire::REG_NAMES[i], s.as_str()))),
            };
        }
        self.regs[i] = value;
        self.pending_regs.insert(i, value);
        self.stats.reg_writes_deferred += 1;
        Ok(())
    }

    // ------------------------------------------------------------------ memory

    fn local(&self, addr: u32, len: usize) -> Option<(&[u8], bool)> {
        if let Some(b) = self.code.as_ref().and_then(|c| c.get(addr, len)) {
            return Some((b, true));
        }
        let base = addr & !(BLOCK - 1);
        let off = (addr - base) as usize;
        if off + len > BLOCK as usize {
            return None;
        }
        self.blocks.get(&base).map(|b| (&b[off..off + len], false))
    }

    /// Blocks worth fetching along with others: the stack gdb unwinds and the code at `pc`.
    fn prefetch_candidates(&self) -> Vec<u32> {
        let sp = self.regs[wire::SP] & !(BLOCK - 1);
        let pc = self.regs[wire::PC] & !1;
        let mut v = vec![sp, sp.wrapping_add(BLOCK), pc & !(BLOCK - 1), sp.wrapping_add(2 * BLOCK)];
        v.retain(|&b| {
            board::accessible(b, BLOCK)
                && !self.blocks.contains_key(&b)
                && self.code.as_ref().is_none_or(|c| c.get(b, BLOCK as usize).is_none())
        });
        v
    }

    /// Fetches `blocks` (plus prefetched ones if they fit in the same requests); returns those
    /// the device refused.
    fn fetch_blocks(&mut self, mut blocks: Vec<u32>) -> Result<Vec<u32>, ProbeError> {
        blocks.sort_unstable();
        blocks.dedup();
        let per_request = (MAX_MESSAGE - 3) / (1 + BLOCK as usize);
        for b in self.prefetch_candidates() {
            if blocks.len() % per_request == 0 {
                break;
            }
            if !blocks.contains(&b) {
                blocks.push(b);
            }
        }
        let reqs: Vec<Req> = blocks.iter().map(|&addr| Req::Op(Op::ReadMem { addr, len: BLOCK as u16 })).collect();
        let out = self.send(&reqs)?;
        let mut refused = Vec::new();
        for (b, o) in blocks.into_iter().zip(out) {
            match o {
                OpOutcome::Ok(data) if data.len() == BLOCK as usize => {
                    self.stats.mem_bytes_from_device += u64::from(BLOCK);
                    self.blocks.insert(b, data);
                }
                _ => refused.push(b),
            }
        }
        Ok(refused)
    }

    /// Reads `[addr, addr+len)` straight from the device, uncached.
    fn read_direct(&mut self, addr: u32, len: usize) -> Result<Vec<u8>, Fail> {
        let reqs: Vec<Req> = (0..len)
            .step_by(MAX_MEM)
            .map(|o| Req::Op(Op::ReadMem { addr: addr + o as u32, len: (len - o).min(MAX_MEM) as u16 }))
            .collect();
        let mut v = Vec::with_capacity(len);
        for o in self.send(&reqs)? {
            match o {
                OpOutcome::Ok(d) => v.extend_from_slice(&d),
                OpOutcome::Err(s) => {
                    return Err(Fail::Target(format!("cannot read memory at {addr:#x}: {}", s.as_str())))
                }
            }
        }
        self.stats.mem_bytes_from_device += v.len() as u64;
        Ok(v)
    }

    /// Reads app memory for gdb. A range that runs out of the app's memory is cut short (gdb
    /// accepts a partial read); one that starts outside it fails without asking the device.
    pub fn read_mem(&mut self, addr: u32, len: usize) -> Result<Vec<u8>, Fail> {
        if len == 0 {
            return Ok(Vec::new());
        }
        let Some(&(base, size)) = board::APP_REGIONS.iter().find(|&&(b, s)| addr >= b && addr - b < s) else {
            return Err(Fail::Target(format!("{addr:#x} is not the app's memory")));
        };
        let len = len.min((u64::from(base) + u64::from(size) - u64::from(addr)) as usize);
        if !self.halted {
            self.stats.mem_reads_remote += 1;
            return self.read_direct(addr, len);
        }
        let end = addr + len as u32;
        // The blocks the local copies do not cover.
        let mut missing = Vec::new();
        let mut a = addr;
        while a < end {
            let b = a & !(BLOCK - 1);
            let piece_end = (b + BLOCK).min(end);
            if self.local(a, (piece_end - a) as usize).is_none() {
                missing.push(b);
            }
            a = piece_end;
        }
        let mut refused = Vec::new();
        if missing.is_empty() {
            self.stats.mem_reads_local += 1;
        } else {
            self.stats.mem_reads_remote += 1;
            refused = self.fetch_blocks(missing.clone())?;
        }
        let mut out = Vec::with_capacity(len);
        let mut a = addr;
        while a < end {
            let b = a & !(BLOCK - 1);
            let piece_end = (b + BLOCK).min(end);
            let n = (piece_end - a) as usize;
            if refused.contains(&b) {
                // Part of the block may be readable: exactly what gdb asked for, uncached.
                match self.read_direct(a, n) {
                    Ok(d) => out.extend_from_slice(&d),
                    Err(e) if out.is_empty() => return Err(e),
                    Err(_) => break,
                }
            } else {
                let (bytes, from_elf) = self.local(a, n).ok_or_else(|| Fail::Target("memory cache miss".into()))?;
                out.extend_from_slice(bytes);
                if from_elf {
                    self.stats.mem_bytes_from_elf += n as u64;
                } else if missing.is_empty() {
                    self.stats.mem_bytes_from_cache += n as u64;
                }
            }
            a = piece_end;
        }
        Ok(out)
    }

    /// Writes app memory (one round trip), keeping the cache and the ELF copy right.
    pub fn write_mem(&mut self, addr: u32, data: &[u8]) -> Result<(), Fail> {
        if data.is_empty() {
            return Ok(());
        }
        if !board::accessible(addr, data.len() as u32) {
            return Err(Fail::Target(format!("{addr:#x} is not the app's memory")));
        }
        let end = u64::from(addr) + data.len() as u64;
        // The agent refuses writes over its breakpoints: take those out first (the next
        // resume plants them again, over the new code, if gdb still wants them).
        let over: Vec<u32> = self
            .planted
            .iter()
            .copied()
            .filter(|&b| u64::from(b) + 2 > u64::from(addr) && u64::from(b) < end)
            .collect();
        let mut reqs: Vec<Req> = over.iter().map(|&addr| Req::Op(Op::ClearBreak { addr })).collect();
        for (i, chunk) in data.chunks(MAX_MEM).enumerate() {
            reqs.push(Req::Write(addr + (i * MAX_MEM) as u32, chunk.to_vec()));
        }
        let out = self.send(&reqs)?;
        for (b, o) in over.iter().zip(&out) {
            if *o == OpOutcome::Ok(Vec::new()) {
                self.planted.remove(b);
            }
        }
        self.stats.breakpoint_ops += over.len() as u64;
        if let Some(c) = self.code.as_mut() {
            c.invalidate(addr, data.len());
        }
        let failed = out[over.len()..].iter().find_map(|o| match o {
            OpOutcome::Err(s) => Some(*s),
            OpOutcome::Ok(_) => None,
        });
        // Keep cached blocks in step with what was written (or forget them if unsure).
        let first = addr & !(BLOCK - 1);
        let mut b = first;
        while u64::from(b) < end {
            if failed.is_some() {
                self.blocks.remove(&b);
            } else if let Some(block) = self.blocks.get_mut(&b) {
                for (i, byte) in block.iter_mut().enumerate() {
                    let a = u64::from(b) + i as u64;
                    if a >= u64::from(addr) && a < end {
                        *byte = data[(a - u64::from(addr)) as usize];
                    }
                }
            }
            b += BLOCK;
        }
        match failed {
            None => Ok(()),
            Some(s) => Err(Fail::Target(format!("cannot write memory at {addr:#x}: {}", s.as_str()))),
        }
    }

    // ------------------------------------------------------------------ breakpoints

    /// gdb's `Z0`: remembered, planted with the next resume.
    pub fn insert_breakpoint(&mut self, addr: u32) -> Result<(), Fail> {
        self.stats.breakpoint_requests += 1;
        if !board::can_break(addr) {
            return Err(Fail::Target(format!("no breakpoint can be planted at {addr:#x}")));
        }
        if !self.desired.contains(&addr) && self.desired.len() >= MAX_USER_BREAKPOINTS {
            return Err(Fail::Target(format!("at most {MAX_USER_BREAKPOINTS} breakpoints")));
        }
        self.desired.insert(addr);
        Ok(())
    }

    /// gdb's `z0`.
    pub fn remove_breakpoint(&mut self, addr: u32) {
        self.stats.breakpoint_requests += 1;
        self.desired.remove(&addr);
    }

    /// The ops that make the device's breakpoints gdb's set, minus `except`.
    fn breakpoint_diff(&self, except: Option<u32>) -> Vec<Req> {
        let want: BTreeSet<u32> = self.desired.iter().copied().filter(|&a| Some(a) != except).collect();
        let clear = self.planted.difference(&want).map(|&addr| Req::Op(Op::ClearBreak { addr }));
        let set = want.difference(&self.planted).map(|&addr| Req::Op(Op::SetBreak { addr, temporary: false }));
        clear.chain(set).collect()
    }

    /// Records the outcomes of [`Debuggee::breakpoint_diff`]'s ops.
    fn diff_done(&mut self, reqs: &[Req], out: &[OpOutcome]) {
        self.stats.breakpoint_ops += reqs.len() as u64;
        for (r, o) in reqs.iter().zip(out) {
            match (r, o) {
                (Req::Op(Op::ClearBreak { addr }), OpOutcome::Ok(_)) => {
                    self.planted.remove(addr);
                }
                (Req::Op(Op::SetBreak { addr, .. }), OpOutcome::Ok(_)) => {
                    self.planted.insert(*addr);
                }
                (Req::Op(Op::SetBreak { addr, .. }), OpOutcome::Err(s)) => {
                    self.note(format!("the breakpoint at {addr:#x} could not be planted: {}", s.as_str()))
                }
                _ => {}
            }
        }
    }

    // ------------------------------------------------------------------ running

    fn resumed(&mut self, outcome: Option<&OpOutcome>) -> Result<(), Fail> {
        match outcome {
            Some(OpOutcome::Ok(_)) | Some(OpOutcome::Err(Status::NotHalted)) => {
                self.halted = false;
                self.blocks.clear();
                Ok(())
            }
            Some(OpOutcome::Err(s)) => Err(Fail::Target(format!("cannot resume the app: {}", s.as_str()))),
            None => Err(Fail::Probe(ProbeError("no answer to resume".into()))),
        }
    }

    /// Lets the app run (gdb's `c`): plants and removes breakpoints and resumes, in one request.
    pub fn resume(&mut self) -> Result<(), Fail> {
        self.stats.resumes += 1;
        let mut reqs = self.breakpoint_diff(None);
        let n = reqs.len();
        reqs.push(Req::Op(Op::Resume));
        let out = self.send(&reqs)?;
        self.diff_done(&reqs[..n], &out[..n]);
        self.resumed(out.get(n))
    }

    /// Starts a single step (gdb's `s`), in one request once the memory it needs is known.
    pub fn step(&mut self) -> Result<Step, Fail> {
        self.stats.steps += 1;
        if !self.halted {
            return Err(Fail::Target("the app is not halted".into()));
        }
        let pc = self.regs[wire::PC] & !1;
        let target = match self.step_target()? {
            Ok(t) => t,
            Err(refusal) => return Ok(refusal),
        };
        let mut reqs = self.breakpoint_diff(Some(pc));
        let n = reqs.len();
        let temp = target == pc || !self.desired.contains(&target);
        if temp {
            reqs.push(Req::Op(Op::SetBreak { addr: target, temporary: true }));
        }
        reqs.push(Req::Op(Op::Resume));
        let out = self.send(&reqs)?;
        self.diff_done(&reqs[..n], &out[..n]);
        let resume = out.last();
        self.resumed(resume)?;
        if let (true, Some(OpOutcome::Err(s))) = (temp, out.get(n)) {
            // The app runs without the step's breakpoint: stop it again at once.
            let why = format!("single step: no breakpoint could be planted at {target:#x} ({})", s.as_str());
            self.note(why);
            self.request_halt()?;
        }
        Ok(Step::Running)
    }

    /// Where a step from the current PC ends, or why it cannot be done.
    fn step_target(&mut self) -> Result<Result<u32, Step>, Fail> {
        let pc = self.regs[wire::PC] & !1;
        let refuse = |sig: u8, why: String| Ok(Err(Step::Refused(sig, why)));
        for _ in 0..4 {
            let view = View { d: self, missing: std::cell::Cell::new(None) };
            let result = keel_thumb::next_pc(&view).map(|n| (n, view.exception_return_target(&n)));
            let missing = view.missing.get();
            let (next, exc_target) = match result {
                Ok(v) => v,
                Err(keel_thumb::Error::Fault(f)) => match missing {
                    Some(a) => {
                        if !self.fetch_blocks(vec![a & !(BLOCK - 1)])?.is_empty() {
                            return refuse(signal::SEGV, format!("cannot read memory at {:#x} to single-step", f.addr));
                        }
                        continue;
                    }
                    None => return refuse(signal::SEGV, format!("cannot read memory at {:#x} to single-step", f.addr)),
                },
                Err(keel_thumb::Error::Unpredictable) => {
                    return refuse(signal::ILL, format!("the instruction at {pc:#x} is UNPREDICTABLE: not stepped"))
                }
            };
            let target = match next.flow {
                Flow::Next | Flow::Skipped | Flow::Branch | Flow::Call => next.pc,
                // The app's own SVC handler runs and comes back after the `svc`.
                Flow::Trap(Trap::Svc(_)) => next.pc,
                Flow::Trap(t) => {
                    return refuse(signal::ILL, format!("the instruction at {pc:#x} traps ({t:?}): not stepped"))
                }
                Flow::ExceptionReturn(v) => match exc_target {
                    Some(Ok(t)) => t,
                    Some(Err(a)) if missing.is_some() => {
                        if !self.fetch_blocks(vec![a & !(BLOCK - 1)])?.is_empty() {
                            return refuse(signal::SEGV, format!("cannot read the exception frame at {a:#x}"));
                        }
                        continue;
                    }
                    _ => {
                        return refuse(
                            signal::ILL,
                            format!(
                                "exception return ({v:#x}) at {pc:#x}: set a breakpoint where it goes and continue"
                            ),
                        )
                    }
                },
            };
            if board::can_break(target) {
                return Ok(Ok(target));
            }
            // Into memory the app cannot patch (a system call's NSC veneer, say): step over it.
            let back = match next.flow {
                Flow::Call => pc.wrapping_add(u32::from(next.len)),
                _ => self.regs[wire::LR] & !1,
            };
            if board::can_break(back) {
                return Ok(Ok(back));
            }
            return refuse(
                signal::SEGV,
                format!("single step from {pc:#x} goes to {target:#x}, out of the app's memory"),
            );
        }
        refuse(signal::SEGV, format!("cannot read the memory needed to single-step at {pc:#x}"))
    }

    /// Detaches: every breakpoint out, the app runs.
    pub fn detach(&mut self) -> Result<(), Fail> {
        self.pending_regs.clear();
        let out = self.send(&[Req::Op(Op::Detach)])?;
        self.planted.clear();
        self.desired.clear();
        self.halted = false;
        self.blocks.clear();
        match out.first() {
            Some(OpOutcome::Err(s)) => Err(Fail::Target(format!("detach: {}", s.as_str()))),
            _ => Ok(()),
        }
    }

    /// Restarts the app (gdb's `kill`, `monitor reset`) and waits for the device to say so.
    pub fn restart(&mut self) -> Result<(), Fail> {
        self.pending_regs.clear();
        let out = self.send(&[Req::Op(Op::Restart)])?;
        if let Some(OpOutcome::Err(s)) = out.first() {
            return Err(Fail::Target(format!("cannot restart the app: {}", s.as_str())));
        }
        self.planted.clear();
        self.halted = false;
        self.blocks.clear();
        let deadline = Instant::now() + HALT_TIMEOUT;
        while Instant::now() < deadline {
            if let Some(DeviceEvent::Restarted(_)) = self.poll(Duration::from_millis(200))? {
                self.restarted = None;
                return Ok(());
            }
        }
        Ok(())
    }
}

/// The halted core for `keel-thumb`: cached registers and local memory; records the first
/// address it could not read locally.
struct View<'a> {
    d: &'a Debuggee,
    missing: std::cell::Cell<Option<u32>>,
}

impl View<'_> {
    fn read(&self, addr: u32, len: usize) -> Result<&[u8], keel_thumb::Fault> {
        match self.d.local(addr, len) {
            Some((b, _)) => Ok(b),
            None => {
                if board::accessible(addr, len as u32) && self.missing.get().is_none() {
                    self.missing.set(Some(addr));
                }
                Err(keel_thumb::Fault { addr })
            }
        }
    }

    /// Where an exception return goes: the return address in the frame on the stack it
    /// selects. `None`: not an exception return, or not one of the forms understood here
    /// (`bx`, `pop`); `Err(addr)`: the frame at `addr` is not known yet.
    fn exception_return_target(&self, next: &keel_thumb::Next) -> Option<Result<u32, u32>> {
        let Flow::ExceptionReturn(exc) = next.flow else { return None };
        let regs = &self.d.regs;
        let pc = regs[wire::PC] & !1;
        let hw = |a: u32| self.read(a, 2).ok().map(|b| u16::from_le_bytes([b[0], b[1]]));
        let hw1 = hw(pc)?;
        let hw2 = if keel_thumb::is_32bit(hw1) { hw(pc + 2)? } else { 0 };
        // Handler mode runs on the main stack; what the instruction pops comes off it first.
        let msp_after = match keel_thumb::decode(hw1, hw2).ok()? {
            keel_thumb::Op::Bx { .. } => regs[wire::SP],
            keel_thumb::Op::LdmPc { rn: 13, offset } if hw1 & 0xFE00 == 0xBC00 || hw1 == 0xE8BD => {
                regs[wire::SP].wrapping_add_signed(offset + 4)
            }
            _ => return None,
        };
        let frame = if exc & 0b100 != 0 { regs[PSP] } else { msp_after };
        let slot = frame.wrapping_add(24);
        match self.read(slot, 4) {
            Ok(b) => Some(Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) & !1)),
            Err(_) => Some(Err(slot)),
        }
    }
}

impl keel_thumb::Target for View<'_> {
    fn reg(&self, r: u8) -> u32 {
        self.d.regs[r as usize]
    }

    fn xpsr(&self) -> u32 {
        self.d.regs[wire::XPSR]
    }

    fn read_u16(&self, addr: u32) -> Result<u16, keel_thumb::Fault> {
        let b = self.read(addr, 2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn read_u32(&self, addr: u32) -> Result<u32, keel_thumb::Fault> {
        let b = self.read(addr, 4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
}

/// gdb's signal for a stop.
pub fn stop_signal(s: &Stop, interrupted: bool) -> u8 {
    match s.reason {
        StopReason::Halted if interrupted => signal::INT,
        StopReason::Fault => signal::SEGV,
        _ => signal::TRAP,
    }
}

/// Why the app faulted, in words (`detail` of a fault stop: `keel_abi::FaultKind`).
pub fn fault_name(detail: u32) -> &'static str {
    match detail {
        3 => "HardFault",
        4 => "MemManage fault",
        5 => "BusFault",
        6 => "UsageFault",
        7 => "SecureFault",
        0x100 => "watchdog expiry",
        _ => "fault",
    }
}

/// A restart reason in words.
pub fn restart_name(r: RestartReason) -> &'static str {
    match r {
        RestartReason::Requested => "requested",
        RestartReason::Crashed => "it crashed",
        RestartReason::Updated => "an update was installed",
        RestartReason::Other => "restarted by the device",
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::debug::sim::{self, Sim, SimProbe};

    fn attached(with_elf: bool) -> (Debuggee, Arc<Mutex<Sim>>) {
        let (p, sim) = SimProbe::demo();
        let code = with_elf.then(|| CodeImage::from_sections(sim::demo_code()));
        let mut d = Debuggee::new(Box::new(p), code);
        let stop = d.attach().unwrap();
        assert_eq!(stop.reason, StopReason::Halted);
        (d, sim)
    }

    fn last_batch(sim: &Arc<Mutex<Sim>>) -> Vec<String> {
        sim.lock().unwrap().log.last().cloned().unwrap_or_default()
    }

    /// Moves the halted app to `pc` (as if stopped there).
    fn stop_at(d: &mut Debuggee, sim: &Arc<Mutex<Sim>>, pc: u32) {
        sim.lock().unwrap().regs[wire::PC] = pc;
        d.halt().unwrap();
        assert_eq!(d.regs()[wire::PC], pc);
    }

    fn wait_stop(d: &mut Debuggee) -> Stop {
        for _ in 0..100 {
            if let Some(DeviceEvent::Stop(s)) = d.poll(Duration::from_millis(10)).unwrap() {
                return s;
            }
        }
        panic!("no stop");
    }

    #[test]
    fn attach_is_one_round_trip_and_checks_the_elf() {
        let (d, _) = attached(true);
        assert_eq!(d.round_trips(), 1);
        assert!(d.code.is_some());
        // Another image than the device's: not used.
        let (p, _) = SimProbe::demo();
        let mut code = sim::demo_code();
        code[1].1[0] ^= 1;
        let mut d = Debuggee::new(Box::new(p), Some(CodeImage::from_sections(code)));
        d.attach().unwrap();
        assert!(d.code.is_none());
        assert_eq!(d.take_notes().len(), 1);
    }

    #[test]
    fn register_writes_wait_for_the_next_request() {
        let (mut d, sim) = attached(true);
        d.write_reg(0, 0x1234).unwrap();
        d.write_reg(0, 0x5678).unwrap();
        d.write_reg(wire::PC, sim::DEMO_FUNC).unwrap();
        assert_eq!(d.round_trips(), 1);
        assert_eq!(d.regs()[0], 0x5678);
        d.resume().unwrap();
        assert_eq!(d.round_trips(), 2);
        assert_eq!(
            last_batch(&sim),
            vec![
                "WriteReg { n: 0, value: 22136 }".to_string(),
                format!("WriteReg {{ n: 15, value: {} }}", sim::DEMO_FUNC),
                "Resume".into()
            ]
        );
    }

    #[test]
    fn refused_stack_pointer_writes_are_errors_at_once() {
        let (mut d, _) = attached(true);
        let sp = d.regs()[wire::SP];
        assert!(matches!(d.write_reg(wire::SP, 0x2800_0100), Err(Fail::Target(_))));
        assert_eq!(d.regs()[wire::SP], sp);
        assert_eq!(d.round_trips(), 2);
    }

    #[test]
    fn memory_is_cached_while_halted_and_code_comes_from_the_elf() {
        let (mut d, _) = attached(true);
        let rt = d.round_trips();
        // Code: from the ELF file.
        assert_eq!(d.read_mem(sim::DEMO_FUNC, 4).unwrap(), vec![0x02, 0x30, 0x70, 0x47]);
        assert_eq!(d.round_trips(), rt);
        // RAM: one round trip, then from the cache (the stack block came with it).
        let words = d.read_mem(board::APP_RAM_BASE, 16).unwrap();
        assert_eq!(words[..4], sim::DEMO_RAM_WORDS[0].to_le_bytes());
        assert_eq!(d.round_trips(), rt + 1);
        d.read_mem(board::APP_RAM_BASE + 200, 100).unwrap(); // crosses into the next block
        let sp = d.regs()[wire::SP];
        d.read_mem(sp - 8, 16).unwrap();
        assert_eq!(d.round_trips(), rt + 2);
        d.read_mem(board::APP_RAM_BASE + 4, 4).unwrap();
        assert_eq!(d.round_trips(), rt + 2);
        // A long read: several ops per request, and the requests fit.
        assert_eq!(d.read_mem(board::APP_RAM_BASE + 0x10000, 2000).unwrap().len(), 2000);
        // Outside the app's memory: refused without asking.
        let rt = d.round_trips();
        assert!(d.read_mem(sim::DEMO_VENEER, 4).is_err());
        assert_eq!(d.round_trips(), rt);
        // Running drops the cache.
        d.resume().unwrap();
        d.halt().unwrap();
        let rt = d.round_trips();
        d.read_mem(board::APP_RAM_BASE, 4).unwrap();
        assert_eq!(d.round_trips(), rt + 1);
    }

    #[test]
    fn writes_update_the_cache_and_the_elf_copy() {
        let (mut d, sim) = attached(true);
        d.read_mem(board::APP_RAM_BASE, 8).unwrap();
        d.write_mem(board::APP_RAM_BASE + 2, &[0xaa, 0xbb]).unwrap();
        let rt = d.round_trips();
        assert_eq!(d.read_mem(board::APP_RAM_BASE, 4).unwrap(), vec![0xef, 0xbe, 0xaa, 0xbb]);
        assert_eq!(d.round_trips(), rt);
        // A write to code: the device's copy is read from then on.
        d.write_mem(sim::DEMO_FUNC, &[0x03, 0x30]).unwrap();
        assert_eq!(d.read_mem(sim::DEMO_FUNC, 2).unwrap(), vec![0x03, 0x30]);
        assert_eq!(sim.lock().unwrap().read(sim::DEMO_FUNC, 2).unwrap(), vec![0x03, 0x30]);
    }

    #[test]
    fn breakpoints_cost_nothing_until_the_app_runs() {
        let (mut d, sim) = attached(true);
        let rt = d.round_trips();
        for _ in 0..3 {
            d.insert_breakpoint(sim::DEMO_FUNC).unwrap();
            d.insert_breakpoint(sim::DEMO_BRANCH).unwrap();
            d.remove_breakpoint(sim::DEMO_BRANCH);
            d.remove_breakpoint(sim::DEMO_FUNC);
        }
        d.insert_breakpoint(sim::DEMO_FUNC).unwrap();
        assert_eq!(d.round_trips(), rt);
        assert!(d.insert_breakpoint(sim::DEMO_VENEER).is_err());
        assert!(d.insert_breakpoint(sim::DEMO_FUNC + 1).is_err());
        d.resume().unwrap();
        assert_eq!(
            last_batch(&sim),
            vec![format!("SetBreak {{ addr: {}, temporary: false }}", sim::DEMO_FUNC), "Resume".into()]
        );
        let s = wait_stop(&mut d);
        assert_eq!((s.reason, s.regs[wire::PC]), (StopReason::Breakpoint, sim::DEMO_FUNC));
        // gdb takes them all out and puts them back around a stop: nothing to send.
        d.remove_breakpoint(sim::DEMO_FUNC);
        d.insert_breakpoint(sim::DEMO_FUNC).unwrap();
        d.insert_breakpoint(sim::DEMO_AFTER_CALL).unwrap();
        d.remove_breakpoint(sim::DEMO_FUNC);
        // Next resume: only the difference.
        d.resume().unwrap();
        assert_eq!(
            last_batch(&sim),
            vec![
                format!("ClearBreak {{ addr: {} }}", sim::DEMO_FUNC),
                format!("SetBreak {{ addr: {}, temporary: false }}", sim::DEMO_AFTER_CALL),
                "Resume".into()
            ]
        );
        assert_eq!(wait_stop(&mut d).regs[wire::PC], sim::DEMO_AFTER_CALL);
        assert_eq!(d.planted().iter().copied().collect::<Vec<_>>(), vec![sim::DEMO_AFTER_CALL]);
        for a in 0..MAX_USER_BREAKPOINTS as u32 - 1 {
            d.insert_breakpoint(board::APP_CODE_BASE + 0x1000 + 2 * a).unwrap();
        }
        assert!(d.insert_breakpoint(board::APP_CODE_BASE + 0x2000).is_err());
    }

    #[test]
    fn a_step_is_one_request() {
        let (mut d, sim) = attached(true);
        stop_at(&mut d, &sim, sim::DEMO_CALL);
        let rt = d.round_trips();
        assert_eq!(d.step().unwrap(), Step::Running);
        assert_eq!(d.round_trips(), rt + 1);
        assert_eq!(
            last_batch(&sim),
            vec![format!("SetBreak {{ addr: {}, temporary: true }}", sim::DEMO_FUNC), "Resume".into()]
        );
        let s = wait_stop(&mut d);
        assert_eq!(s.regs[wire::PC], sim::DEMO_FUNC);
        assert_eq!(s.regs[wire::LR], sim::DEMO_AFTER_CALL | 1);
        assert!(sim.lock().unwrap().breakpoints().is_empty());
        // The return (bx lr) goes back after the call.
        d.step().unwrap();
        assert_eq!(wait_stop(&mut d).regs[wire::PC], sim::DEMO_FUNC + 2);
        d.step().unwrap();
        assert_eq!(wait_stop(&mut d).regs[wire::PC], sim::DEMO_AFTER_CALL);
    }

    #[test]
    fn a_step_without_the_elf_fetches_the_code_first() {
        let (mut d, sim) = attached(false);
        stop_at(&mut d, &sim, sim::DEMO_BRANCH);
        let rt = d.round_trips();
        d.step().unwrap();
        assert_eq!(d.round_trips(), rt + 2);
        assert_eq!(wait_stop(&mut d).regs[wire::PC], sim::DEMO_LOOP);
    }

    #[test]
    fn a_system_call_is_stepped_over() {
        let (mut d, sim) = attached(true);
        stop_at(&mut d, &sim, sim::DEMO_SYSCALL);
        d.step().unwrap();
        assert_eq!(last_batch(&sim)[0], format!("SetBreak {{ addr: {}, temporary: true }}", sim::DEMO_SYSCALL + 2));
        assert_eq!(wait_stop(&mut d).regs[wire::PC], sim::DEMO_BRANCH);
    }

    #[test]
    fn a_step_from_a_breakpoint_lifts_it_and_the_next_resume_plants_it_again() {
        let (mut d, sim) = attached(true);
        d.insert_breakpoint(sim::DEMO_FUNC).unwrap();
        d.resume().unwrap();
        assert_eq!(wait_stop(&mut d).regs[wire::PC], sim::DEMO_FUNC);
        d.step().unwrap();
        assert_eq!(
            last_batch(&sim),
            vec![
                format!("ClearBreak {{ addr: {} }}", sim::DEMO_FUNC),
                format!("SetBreak {{ addr: {}, temporary: true }}", sim::DEMO_FUNC + 2),
                "Resume".into()
            ]
        );
        assert_eq!(wait_stop(&mut d).regs[wire::PC], sim::DEMO_FUNC + 2);
        d.resume().unwrap();
        assert_eq!(last_batch(&sim)[0], format!("SetBreak {{ addr: {}, temporary: false }}", sim::DEMO_FUNC));
        assert_eq!(wait_stop(&mut d).regs[wire::PC], sim::DEMO_FUNC);
    }

    #[test]
    fn traps_are_not_stepped() {
        let (mut d, sim) = attached(true);
        stop_at(&mut d, &sim, sim::DEMO_FUNC);
        d.write_mem(sim::DEMO_FUNC, &0xde00u16.to_le_bytes()).unwrap(); // udf #0
        assert!(matches!(d.step().unwrap(), Step::Refused(signal::ILL, _)));
        // The written code was read back from the device, and nothing ran.
        let batch = last_batch(&sim);
        assert_eq!(batch[0], format!("ReadMem {{ addr: {}, len: 256 }}", sim::DEMO_FUNC & !255));
        assert!(batch.iter().all(|op| op.starts_with("ReadMem")));
        assert!(d.is_halted());
    }

    #[test]
    fn an_exception_return_breaks_at_the_stacked_pc() {
        let (mut d, sim) = attached(true);
        {
            let mut s = sim.lock().unwrap();
            s.regs[wire::XPSR] = 0x0100_000f; // SysTick handler
            s.regs[wire::LR] = 0xffff_fff9; // back to thread mode on the main stack
            let sp = s.regs[wire::SP];
            s.write(sp + 24, &(sim::DEMO_BRANCH | 1).to_le_bytes()).unwrap();
        }
        stop_at(&mut d, &sim, sim::DEMO_FUNC + 2); // bx lr
        d.step().unwrap();
        assert_eq!(last_batch(&sim)[0], format!("SetBreak {{ addr: {}, temporary: true }}", sim::DEMO_BRANCH));
    }

    #[test]
    fn restart_and_detach() {
        let (mut d, sim) = attached(true);
        d.insert_breakpoint(sim::DEMO_FUNC).unwrap();
        d.resume().unwrap();
        wait_stop(&mut d);
        d.restart().unwrap();
        assert!(!d.is_halted());
        assert!(d.planted().is_empty());
        assert!(d.breakpoints().contains(&sim::DEMO_FUNC));
        d.halt().unwrap();
        d.detach().unwrap();
        let s = sim.lock().unwrap();
        assert!(s.detached && !s.halted && s.breakpoints().is_empty());
    }
}
