//! What `keel debug` and the visor's debug agent say to each other, inside the end-to-end
//! session ([`crate::session`]). Compact little-endian binary, no heap: the visor decodes it in
//! place and the device never sees the GDB remote protocol.
//!
//! * The CLI sends a [`Request`]: an id and a batch of [`Op`]s, run in order in one round trip.
//! * The device answers with a [`Reply`] to that id (one [`Status`] per op, plus the data of
//!   reads), or sends on its own a [`Stop`] (the app halted: why, and its registers) or an
//!   [`Event::Restarted`] (the app was started again: breakpoints and halt are gone).
//!
//! A request with the id of the last one answered is a retransmission: the agent answers it again
//! without running it twice (see [`crate::agent`]).
//!
//! ```text
//! request  = id:u16 op*
//! op       = 0x01 hello | 0x02 halt | 0x03 resume | 0x04 read-regs
//!          | 0x05 write-reg n:u8 value:u32 | 0x06 read-mem addr:u32 len:u16
//!          | 0x07 write-mem addr:u32 len:u16 bytes | 0x08 set-break addr:u32 temporary:u8
//!          | 0x09 clear-break addr:u32 | 0x0a detach | 0x0b restart | 0x0c ping
//! message  = 0x80 id:u16 result* | 0x81 reason:u8 detail:u32 regs | 0x82 reason:u8
//! result   = status:u8 [data]      ; data only when status = 0: hello -> state:u8,
//!                                   ; read-regs -> regs, read-mem -> len bytes
//! regs     = 23 * u32              ; see REG_NAMES
//! ```

/// Registers the agent reports, in this order (the GDB M-profile numbering continues it).
pub const REG_NAMES: [&str; NREGS] = [
    "r0",
    "r1",
    "r2",
    "r3",
    "r4",
    "r5",
    "r6",
    "r7",
    "r8",
    "r9",
    "r10",
    "r11",
    "r12",
    "sp",
    "lr",
    "pc",
    "xpsr",
    "msp",
    "psp",
    "primask",
    "basepri",
    "faultmask",
    "control",
];
/// Number of registers in [`Regs`].
pub const NREGS: usize = 23;
/// Index of `sp` in [`Regs`].
pub const SP: usize = 13;
/// Index of `lr`.
pub const LR: usize = 14;
/// Index of `pc`.
pub const PC: usize = 15;
/// Index of `xpsr`.
pub const XPSR: usize = 16;
/// Largest plaintext of one message either way (the session adds its overhead and must stay
/// within the link's opaque frame, `keel_proto::msg::MAX_DEBUG_FRAME` = 960).
pub const MAX_MESSAGE: usize = 900;
/// Largest `read-mem` / `write-mem` of one op.
pub const MAX_MEM: usize = 768;

/// The app's registers, as the debugger sees them where it halted.
pub type Regs = [u32; NREGS];

/// One operation of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op<'a> {
    /// First op of a session: the answer says whether the app is halted.
    Hello,
    /// Stop the app (a [`Stop`] with [`StopReason::Halted`] follows once it is).
    Halt,
    /// Let the halted app run.
    Resume,
    /// Read every register of the halted app.
    ReadRegs,
    /// Write register `n` (an index in [`REG_NAMES`]).
    WriteReg {
        /// Register index.
        n: u8,
        /// New value.
        value: u32,
    },
    /// Read `len` bytes of app memory.
    ReadMem {
        /// Address.
        addr: u32,
        /// Length (at most [`MAX_MEM`]).
        len: u16,
    },
    /// Write app memory.
    WriteMem {
        /// Address.
        addr: u32,
        /// Bytes (at most [`MAX_MEM`]).
        data: &'a [u8],
    },
    /// Plant a software breakpoint (a 16-bit `bkpt`) at `addr`.
    SetBreak {
        /// Address (halfword aligned).
        addr: u32,
        /// Removed at the next stop, whatever stopped the app (single step).
        temporary: bool,
    },
    /// Remove the breakpoint at `addr` (the original code comes back).
    ClearBreak {
        /// Address.
        addr: u32,
    },
    /// End the session: every breakpoint removed, the app resumed.
    Detach,
    /// Start the app again from its reset handler (GDB's `kill`); breakpoints are removed.
    Restart,
    /// Nothing; keeps the session alive.
    Ping,
}

/// The outcome of one op.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Status {
    /// Done.
    Ok = 0,
    /// The op needs a halted app.
    NotHalted = 1,
    /// The address is not the app's to read or write (secure memory, a peripheral, unmapped).
    Denied = 2,
    /// A malformed argument (register number, length, alignment).
    BadArgument = 3,
    /// Too many breakpoints.
    NoRoom = 4,
    /// No app is running.
    NoApp = 5,
    /// The op is not supported by this visor.
    Unsupported = 6,
    /// Not run: a `resume` after a failed op of the same request (it would let the app run
    /// without what the request set up, e.g. a refused step breakpoint), or a `halt`, `resume` or
    /// `restart` after an op of the same request already let the app go.
    Skipped = 7,
}

impl Status {
    /// The status with wire code `v`.
    pub fn from_u8(v: u8) -> Option<Status> {
        Some(match v {
            0 => Status::Ok,
            1 => Status::NotHalted,
            2 => Status::Denied,
            3 => Status::BadArgument,
            4 => Status::NoRoom,
            5 => Status::NoApp,
            6 => Status::Unsupported,
            7 => Status::Skipped,
            _ => return None,
        })
    }

    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::NotHalted => "not halted",
            Status::Denied => "access denied",
            Status::BadArgument => "bad argument",
            Status::NoRoom => "too many breakpoints",
            Status::NoApp => "no app running",
            Status::Unsupported => "unsupported",
            Status::Skipped => "skipped (an earlier op of the request failed or let the app go)",
        }
    }
}

/// Why the app stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum StopReason {
    /// A [`Op::Halt`] was served.
    Halted = 0,
    /// A breakpoint (one of the session's, or a `bkpt` in the app's own code).
    Breakpoint = 1,
    /// The app faulted (detail: the fault kind, `keel_abi::FaultKind`); it is held where it
    /// faulted until the debugger resumes it, which restarts it as after any crash.
    Fault = 2,
}

impl StopReason {
    /// The reason with wire code `v`.
    pub fn from_u8(v: u8) -> Option<StopReason> {
        Some(match v {
            0 => StopReason::Halted,
            1 => StopReason::Breakpoint,
            2 => StopReason::Fault,
            _ => return None,
        })
    }
}

/// Why the app was started again during a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum RestartReason {
    /// [`Op::Restart`].
    Requested = 0,
    /// The app crashed (outside a halt) or hung, and the visor restarted it.
    Crashed = 1,
    /// An update was installed.
    Updated = 2,
    /// Something else (the app asked, a rollback).
    Other = 3,
}

impl RestartReason {
    /// The reason with wire code `v`.
    pub fn from_u8(v: u8) -> Option<RestartReason> {
        Some(match v {
            0 => RestartReason::Requested,
            1 => RestartReason::Crashed,
            2 => RestartReason::Updated,
            3 => RestartReason::Other,
            _ => return None,
        })
    }
}

/// A stop of the app.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stop {
    /// Why.
    pub reason: StopReason,
    /// The fault kind for [`StopReason::Fault`], the `bkpt` immediate for a breakpoint.
    pub detail: u32,
    /// The registers where it stopped.
    pub regs: Regs,
}

/// Why a message could not be encoded or decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WireError {
    /// The buffer is too small or the message too long.
    TooLarge,
    /// Not a well-formed message.
    Malformed,
}

// ------------------------------------------------------------------------------- encoding
/// Appends to a byte buffer, failing instead of overflowing.
pub struct Writer<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl<'a> Writer<'a> {
    /// A writer into `buf`.
    pub fn new(buf: &'a mut [u8]) -> Self {
        Writer { buf, len: 0 }
    }

    /// Bytes written.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True if nothing was written.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Room left.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.len
    }

    /// Appends bytes.
    pub fn bytes(&mut self, b: &[u8]) -> Result<(), WireError> {
        let end = self.len.checked_add(b.len()).filter(|&e| e <= self.buf.len()).ok_or(WireError::TooLarge)?;
        self.buf[self.len..end].copy_from_slice(b);
        self.len = end;
        Ok(())
    }

    /// Appends one byte.
    pub fn u8(&mut self, v: u8) -> Result<(), WireError> {
        self.bytes(&[v])
    }

    /// Appends a little-endian u16.
    pub fn u16(&mut self, v: u16) -> Result<(), WireError> {
        self.bytes(&v.to_le_bytes())
    }

    /// Appends a little-endian u32.
    pub fn u32(&mut self, v: u32) -> Result<(), WireError> {
        self.bytes(&v.to_le_bytes())
    }

    /// Appends registers.
    pub fn regs(&mut self, r: &Regs) -> Result<(), WireError> {
        r.iter().try_for_each(|&v| self.u32(v))
    }

    /// Reserves `n` bytes and returns them to be filled in place.
    pub fn reserve(&mut self, n: usize) -> Result<&mut [u8], WireError> {
        let end = self.len.checked_add(n).filter(|&e| e <= self.buf.len()).ok_or(WireError::TooLarge)?;
        let start = self.len;
        self.len = end;
        Ok(&mut self.buf[start..end])
    }

    /// Forgets everything after `len` bytes.
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// What was written.
    pub fn written(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// Reads a byte buffer, failing instead of panicking.
#[derive(Clone, Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    /// A reader over `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    /// True when everything was read.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The next `n` bytes.
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if n > self.buf.len() {
            return Err(WireError::Malformed);
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Ok(a)
    }

    /// The next byte.
    pub fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.bytes(1)?[0])
    }

    /// The next little-endian u16.
    pub fn u16(&mut self) -> Result<u16, WireError> {
        let b = self.bytes(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    /// The next little-endian u32.
    pub fn u32(&mut self) -> Result<u32, WireError> {
        let b = self.bytes(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// The next registers.
    pub fn regs(&mut self) -> Result<Regs, WireError> {
        let mut r = [0u32; NREGS];
        for v in r.iter_mut() {
            *v = self.u32()?;
        }
        Ok(r)
    }
}

mod code {
    pub const HELLO: u8 = 0x01;
    pub const HALT: u8 = 0x02;
    pub const RESUME: u8 = 0x03;
    pub const READ_REGS: u8 = 0x04;
    pub const WRITE_REG: u8 = 0x05;
    pub const READ_MEM: u8 = 0x06;
    pub const WRITE_MEM: u8 = 0x07;
    pub const SET_BREAK: u8 = 0x08;
    pub const CLEAR_BREAK: u8 = 0x09;
    pub const DETACH: u8 = 0x0a;
    pub const RESTART: u8 = 0x0b;
    pub const PING: u8 = 0x0c;
    pub const REPLY: u8 = 0x80;
    pub const STOP: u8 = 0x81;
    pub const RESTARTED: u8 = 0x82;
}

impl<'a> Op<'a> {
    /// Appends the op's encoding.
    pub fn encode(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
        match *self {
            Op::Hello => w.u8(code::HELLO),
            Op::Halt => w.u8(code::HALT),
            Op::Resume => w.u8(code::RESUME),
            Op::ReadRegs => w.u8(code::READ_REGS),
            Op::WriteReg { n, value } => {
                w.u8(code::WRITE_REG)?;
                w.u8(n)?;
                w.u32(value)
            }
            Op::ReadMem { addr, len } => {
                w.u8(code::READ_MEM)?;
                w.u32(addr)?;
                w.u16(len)
            }
            Op::WriteMem { addr, data } => {
                let len = u16::try_from(data.len()).map_err(|_| WireError::TooLarge)?;
                w.u8(code::WRITE_MEM)?;
                w.u32(addr)?;
                w.u16(len)?;
                w.bytes(data)
            }
            Op::SetBreak { addr, temporary } => {
                w.u8(code::SET_BREAK)?;
                w.u32(addr)?;
                w.u8(temporary as u8)
            }
            Op::ClearBreak { addr } => {
                w.u8(code::CLEAR_BREAK)?;
                w.u32(addr)
            }
            Op::Detach => w.u8(code::DETACH),
            Op::Restart => w.u8(code::RESTART),
            Op::Ping => w.u8(code::PING),
        }
    }

    /// Decodes one op.
    pub fn decode(r: &mut Reader<'a>) -> Result<Op<'a>, WireError> {
        Ok(match r.u8()? {
            code::HELLO => Op::Hello,
            code::HALT => Op::Halt,
            code::RESUME => Op::Resume,
            code::READ_REGS => Op::ReadRegs,
            code::WRITE_REG => Op::WriteReg { n: r.u8()?, value: r.u32()? },
            code::READ_MEM => Op::ReadMem { addr: r.u32()?, len: r.u16()? },
            code::WRITE_MEM => {
                let addr = r.u32()?;
                let len = r.u16()? as usize;
                Op::WriteMem { addr, data: r.bytes(len)? }
            }
            code::SET_BREAK => Op::SetBreak {
                addr: r.u32()?,
                temporary: match r.u8()? {
                    0 => false,
                    1 => true,
                    _ => return Err(WireError::Malformed),
                },
            },
            code::CLEAR_BREAK => Op::ClearBreak { addr: r.u32()? },
            code::DETACH => Op::Detach,
            code::RESTART => Op::Restart,
            code::PING => Op::Ping,
            _ => return Err(WireError::Malformed),
        })
    }

    /// Bytes of data a successful result of this op carries.
    pub fn result_len(&self) -> usize {
        match *self {
            Op::Hello => 1,
            Op::ReadRegs => 4 * NREGS,
            Op::ReadMem { len, .. } => len as usize,
            _ => 0,
        }
    }
}

/// A request: an id and a batch of ops.
#[derive(Clone, Debug)]
pub struct Request<'a> {
    /// Request id (the reply carries it).
    pub id: u16,
    ops: Reader<'a>,
}

impl<'a> Request<'a> {
    /// Encodes a request with `ops` into `buf`; returns its length.
    pub fn encode(id: u16, ops: &[Op<'_>], buf: &mut [u8]) -> Result<usize, WireError> {
        let cap = buf.len().min(MAX_MESSAGE);
        let mut w = Writer::new(&mut buf[..cap]);
        w.u16(id)?;
        for op in ops {
            op.encode(&mut w)?;
        }
        Ok(w.len())
    }

    /// Decodes a request and checks every op is well formed.
    pub fn decode(bytes: &'a [u8]) -> Result<Request<'a>, WireError> {
        let mut r = Reader::new(bytes);
        let id = r.u16()?;
        let req = Request { id, ops: r.clone() };
        while !r.is_empty() {
            Op::decode(&mut r)?;
        }
        Ok(req)
    }

    /// The ops, in order (already validated by [`Request::decode`]).
    pub fn ops(&self) -> impl Iterator<Item = Op<'a>> + 'a {
        let mut r = self.ops.clone();
        core::iter::from_fn(move || if r.is_empty() { None } else { Op::decode(&mut r).ok() })
    }
}

/// Bytes a reply to `ops` needs (the CLI keeps requests within [`MAX_MESSAGE`]).
pub fn reply_len(ops: &[Op<'_>]) -> usize {
    3 + ops.iter().map(|o| 1 + o.result_len()).sum::<usize>()
}

/// Bytes `op` takes in a request.
pub fn op_len(op: &Op<'_>) -> usize {
    match op {
        Op::WriteReg { .. } => 6,
        Op::ReadMem { .. } => 7,
        Op::WriteMem { data, .. } => 7 + data.len(),
        Op::SetBreak { .. } => 6,
        Op::ClearBreak { .. } => 5,
        _ => 1,
    }
}

/// A message from the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// The answer to request `id`: per op, a status and (for a successful read) its data, in
    /// the request's order; walk it with [`Results`].
    Reply {
        /// The request's id.
        id: u16,
        /// The encoded results.
        results: &'a [u8],
    },
    /// The app stopped.
    Stop(Stop),
    /// The app was started again: every breakpoint is gone and it runs.
    Restarted(RestartReason),
}

impl<'a> Event<'a> {
    /// Decodes a device message.
    pub fn decode(bytes: &'a [u8]) -> Result<Event<'a>, WireError> {
        let mut r = Reader::new(bytes);
        let e = match r.u8()? {
            code::REPLY => Event::Reply { id: r.u16()?, results: r.bytes(bytes.len() - 3)? },
            code::STOP => {
                let reason = StopReason::from_u8(r.u8()?).ok_or(WireError::Malformed)?;
                Event::Stop(Stop { reason, detail: r.u32()?, regs: r.regs()? })
            }
            code::RESTARTED => Event::Restarted(RestartReason::from_u8(r.u8()?).ok_or(WireError::Malformed)?),
            _ => return Err(WireError::Malformed),
        };
        if !r.is_empty() {
            return Err(WireError::Malformed);
        }
        Ok(e)
    }

    /// Encodes a stop event into `buf`.
    pub fn encode_stop(s: &Stop, buf: &mut [u8]) -> Result<usize, WireError> {
        let mut w = Writer::new(buf);
        w.u8(code::STOP)?;
        w.u8(s.reason as u8)?;
        w.u32(s.detail)?;
        w.regs(&s.regs)?;
        Ok(w.len())
    }

    /// Encodes a restart event into `buf`.
    pub fn encode_restarted(r: RestartReason, buf: &mut [u8]) -> Result<usize, WireError> {
        let mut w = Writer::new(buf);
        w.u8(code::RESTARTED)?;
        w.u8(r as u8)?;
        Ok(w.len())
    }
}

/// Starts a reply to request `id` in `w`; the agent then appends one result per op.
pub fn begin_reply(w: &mut Writer<'_>, id: u16) -> Result<(), WireError> {
    w.u8(code::REPLY)?;
    w.u16(id)
}

/// One op's result in a reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpResult<'a> {
    /// Done; `data` is the read's bytes (registers: [`NREGS`] little-endian words; hello: one
    /// byte, 1 if the app is halted).
    Ok(&'a [u8]),
    /// Refused.
    Err(Status),
}

/// Walks the results of a reply against the ops of its request.
pub struct Results<'a> {
    r: Reader<'a>,
}

impl<'a> Results<'a> {
    /// The results in `results` (from [`Event::Reply`]).
    pub fn new(results: &'a [u8]) -> Self {
        Results { r: Reader::new(results) }
    }

    /// The result of the next op, `op`.
    pub fn next(&mut self, op: &Op<'_>) -> Result<OpResult<'a>, WireError> {
        let status = Status::from_u8(self.r.u8()?).ok_or(WireError::Malformed)?;
        if status != Status::Ok {
            return Ok(OpResult::Err(status));
        }
        Ok(OpResult::Ok(self.r.bytes(op.result_len())?))
    }

    /// True when every result was read.
    pub fn is_empty(&self) -> bool {
        self.r.is_empty()
    }
}

/// Registers from the bytes of a successful [`Op::ReadRegs`].
pub fn regs_from(data: &[u8]) -> Result<Regs, WireError> {
    Reader::new(data).regs()
}
