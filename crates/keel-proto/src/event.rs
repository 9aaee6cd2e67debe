//! Structured visor events: what the visor reports about itself (boot, app crash, link loss,
//! update outcome, ...), typed instead of text so the server reads fields instead of parsing
//! prefixes.
//!
//! An event is encoded like a message, `[type, [fields...]]`, with the same rules: fields are
//! only added at the end, a receiver ignores fields beyond those it knows, and an unknown type
//! in 0..=127 decodes as [`VisorEvent::Unknown`] (skipped and counted); anything else malformed
//! is an error. The device keeps events in its log ring as records of `keel_log::Kind::Event`
//! whose bytes are [`VisorEvent::encode`]'s output; the link sends them as `Up::Event`.
//!
//! Producing one (device side):
//!
//! ```
//! use keel_proto::event::{BootReason, VisorEvent};
//!
//! let ev = VisorEvent::Boot { count: 3, reason: BootReason::PowerOn.code() };
//! let mut buf = [0u8; VisorEvent::MAX_LEN];
//! let n = ev.encode(&mut buf).unwrap();
//! // ring.push(keel_log::Kind::Event, 0, now_us, &buf[..n]) on the device; the server renders:
//! let mut text = String::new();
//! VisorEvent::decode(&buf[..n]).unwrap().write_text("0.1.0", &mut text).unwrap();
//! assert_eq!(text, "boot #3 visor 0.1.0 (power-on)");
//! ```

use core::fmt;

use minicbor::decode::Error as DecError;
use minicbor::encode::{Error as EncError, Write};
use minicbor::{Decode, Decoder, Encode, Encoder};

use crate::msg::{MsgError, UpdateState, SKIPPABLE};
use keel_abi::{CrashReport, FaultKind, UpdateReason, CRASH_STACK_WORDS};

/// Why the visor booted ([`VisorEvent::Boot`]'s `reason`).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootReason {
    /// Power-on, or an external reset (indistinguishable on the reference board).
    PowerOn = 0,
    /// The visor reset itself after a fault in an app interrupt handler.
    AppFaultReset = 1,
    /// A reset the visor did not make (none was recorded before it) while the app ran: counted
    /// as a crash of the app (`keel_abi::FaultKind::Reset`).
    UnexplainedReset = 2,
    /// The visor reset itself after the app hung in one of its interrupt handlers (watchdog).
    AppHangReset = 3,
    /// The visor reset itself after a fault in its own code ([`VisorEvent::VisorFault`] follows
    /// with the address).
    VisorFault = 4,
    /// The visor reset itself to start the app (a deadline needed the app out of one of its
    /// exception handlers: an install, a rollback, an apply). Not a crash.
    StartApp = 5,
    /// The secure watchdog reset the device (the visor hung).
    SecureWatchdog = 6,
}

impl BootReason {
    /// Every reason, in code order.
    pub const ALL: [BootReason; 7] = [
        BootReason::PowerOn,
        BootReason::AppFaultReset,
        BootReason::UnexplainedReset,
        BootReason::AppHangReset,
        BootReason::VisorFault,
        BootReason::StartApp,
        BootReason::SecureWatchdog,
    ];

    /// The wire code.
    pub fn code(self) -> u8 {
        self as u8
    }
    /// The reason with code `v`, if known.
    pub fn from_code(v: u8) -> Option<BootReason> {
        BootReason::ALL.into_iter().find(|r| *r as u8 == v)
    }
    /// Text as the server shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            BootReason::PowerOn => "power-on",
            BootReason::AppFaultReset => "reset after app fault",
            BootReason::UnexplainedReset => "unexplained reset",
            BootReason::AppHangReset => "reset after app hang",
            BootReason::VisorFault => "reset after visor fault",
            BootReason::StartApp => "reset to start the app",
            BootReason::SecureWatchdog => "secure watchdog reset",
        }
    }
}

/// Why an app in quarantine may run again ([`VisorEvent::AppReleased`]'s `reason`).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReleaseReason {
    /// The server answered that there is nothing to install (`Down::NoUpdate`).
    NothingToInstall = 0,
    /// The offered update was installed: its app starts on trial.
    UpdateInstalled = 1,
    /// The offered update was refused or its download failed.
    UpdateFailed = 2,
    /// The quarantine's time bound passed without a completed check (e.g. offline).
    Timeout = 3,
}

impl ReleaseReason {
    /// Every reason, in code order.
    pub const ALL: [ReleaseReason; 4] = [
        ReleaseReason::NothingToInstall,
        ReleaseReason::UpdateInstalled,
        ReleaseReason::UpdateFailed,
        ReleaseReason::Timeout,
    ];
    /// The wire code.
    pub fn code(self) -> u8 {
        self as u8
    }
    /// The reason with code `v`, if known.
    pub fn from_code(v: u8) -> Option<ReleaseReason> {
        ReleaseReason::ALL.into_iter().find(|r| *r as u8 == v)
    }
    /// Text as the server shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            ReleaseReason::NothingToInstall => "nothing to install",
            ReleaseReason::UpdateInstalled => "update installed",
            ReleaseReason::UpdateFailed => "update failed",
            ReleaseReason::Timeout => "no update check in time",
        }
    }
}

/// Why the connection to the server was lost ([`VisorEvent::LinkLost`]'s `reason`).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkLossReason {
    /// The server closed the connection (or reset it).
    PeerClosed = 0,
    /// Nothing arrived from the server for `SERVER_SILENCE_TIMEOUT_US`.
    ServerSilent = 1,
    /// The device lost its network address (DHCP).
    AddressLost = 2,
    /// The server sent something invalid (a frame that failed to decrypt or decode).
    ProtocolError = 3,
    /// The TCP connection could not be established or failed.
    NetworkError = 4,
}

impl LinkLossReason {
    /// Every reason, in code order.
    pub const ALL: [LinkLossReason; 5] = [
        LinkLossReason::PeerClosed,
        LinkLossReason::ServerSilent,
        LinkLossReason::AddressLost,
        LinkLossReason::ProtocolError,
        LinkLossReason::NetworkError,
    ];
    /// The wire code.
    pub fn code(self) -> u8 {
        self as u8
    }
    /// The reason with code `v`, if known.
    pub fn from_code(v: u8) -> Option<LinkLossReason> {
        LinkLossReason::ALL.into_iter().find(|r| *r as u8 == v)
    }
    /// Text as the server shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            LinkLossReason::PeerClosed => "peer closed",
            LinkLossReason::ServerSilent => "server silent",
            LinkLossReason::AddressLost => "address lost",
            LinkLossReason::ProtocolError => "protocol error",
            LinkLossReason::NetworkError => "network error",
        }
    }
}

/// The parts of a [`CrashReport`] that travel ([`VisorEvent::Crash`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Encode, Decode)]
pub struct CrashInfo {
    /// `keel_abi::FaultKind` as `u32`.
    #[n(0)]
    pub kind: u32,
    /// Stacked program counter (the faulting instruction for precise faults).
    #[n(1)]
    pub pc: u32,
    /// Stacked link register.
    #[n(2)]
    pub lr: u32,
    /// The app's stack pointer at the fault.
    #[n(3)]
    pub sp: u32,
    /// Stacked xPSR.
    #[n(4)]
    pub xpsr: u32,
    /// Configurable Fault Status Register.
    #[n(5)]
    pub cfsr: u32,
    /// HardFault Status Register.
    #[n(6)]
    pub hfsr: u32,
    /// SecureFault Status Register.
    #[n(7)]
    pub sfsr: u32,
    /// BusFault Address Register.
    #[n(8)]
    pub bfar: u32,
    /// EXC_RETURN of the exception that caught the fault.
    #[n(9)]
    pub exc_return: u32,
    /// Top of the app's stack at the fault, from `sp` on.
    #[n(10)]
    pub stack: [u32; CRASH_STACK_WORDS],
}

impl From<&CrashReport> for CrashInfo {
    fn from(r: &CrashReport) -> Self {
        CrashInfo {
            kind: r.kind,
            pc: r.pc(),
            lr: r.lr(),
            sp: r.sp,
            xpsr: r.frame[7],
            cfsr: r.cfsr,
            hfsr: r.hfsr,
            sfsr: r.sfsr,
            bfar: r.bfar,
            exc_return: r.exc_return,
            stack: r.stack,
        }
    }
}

/// A visor event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VisorEvent {
    /// Type 0: the visor booted.
    Boot {
        /// Persistent boot counter.
        count: u32,
        /// A [`BootReason`] code.
        reason: u8,
    },
    /// Type 1: the app crashed (or its watchdog expired).
    Crash(CrashInfo),
    /// Type 2: the connection to the server was lost.
    LinkLost {
        /// A [`LinkLossReason`] code.
        reason: u8,
    },
    /// Type 3: the secure channel is up (the wall clock is set).
    Online,
    /// Type 4: an update ended or changed state.
    Update {
        /// Manifest sequence number of the bundle.
        sequence: u64,
        /// An [`UpdateState`] code.
        state: u8,
        /// An [`UpdateReason`] code (0: none).
        reason: u16,
    },
    /// Type 5: the app crashed (or reset the device) too often in a row; it is not started again
    /// until the device asked the server for updates (or a time bound passed).
    AppQuarantined {
        /// Consecutive crashes of the series.
        crashes: u32,
    },
    /// Type 6: the app may run again after a quarantine.
    AppReleased {
        /// A [`ReleaseReason`] code.
        reason: u8,
    },
    /// Type 7: the previous boot ended in a fault of the visor's own code.
    VisorFault {
        /// The faulting program counter.
        pc: u32,
    },
    /// Type 8: the registers of the crash just reported (r0-r12; pc, lr, sp and xPSR are in
    /// the [`VisorEvent::Crash`] before it): with the stack chunks, a post-mortem debugger
    /// unwinds the crash (`keel crash show --gdb`).
    CrashRegs {
        /// r0..r12.
        regs: [u32; 13],
    },
    /// Type 9: a piece of the app's stack at the crash just reported: [`CRASH_CHUNK_WORDS`]
    /// words from `sp + offset` (the chunks of one crash follow its [`VisorEvent::CrashRegs`]
    /// in order; an unreadable word ends the dump early).
    CrashStack {
        /// Byte offset from the crash's `sp`.
        offset: u16,
        /// The words (0 past the readable end, which `len` gives).
        words: [u32; CRASH_CHUNK_WORDS],
        /// Words of `words` that were read.
        len: u8,
    },
    /// A type in 0..=127 this crate does not know (decoded only, never encoded).
    Unknown(u16),
}

/// Words in one [`VisorEvent::CrashStack`] chunk.
pub const CRASH_CHUNK_WORDS: usize = 16;
/// Bytes of app stack a crash dump holds at most (six chunks): enough for gdb to unwind about a
/// dozen frames of typical embedded code (see docs/debugging.md).
pub const CRASH_DUMP_BYTES: usize = 6 * 4 * CRASH_CHUNK_WORDS;

impl VisorEvent {
    /// Upper bound of [`VisorEvent::encode`]'s output.
    pub const MAX_LEN: usize = 128;
    /// Types this crate defines.
    pub const TYPES: [u16; 10] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9];

    /// The type number.
    pub fn type_code(&self) -> u16 {
        match self {
            VisorEvent::Boot { .. } => 0,
            VisorEvent::Crash(_) => 1,
            VisorEvent::LinkLost { .. } => 2,
            VisorEvent::Online => 3,
            VisorEvent::Update { .. } => 4,
            VisorEvent::AppQuarantined { .. } => 5,
            VisorEvent::AppReleased { .. } => 6,
            VisorEvent::VisorFault { .. } => 7,
            VisorEvent::CrashRegs { .. } => 8,
            VisorEvent::CrashStack { .. } => 9,
            VisorEvent::Unknown(t) => *t,
        }
    }

    /// Encodes the event into `buf` (at most [`VisorEvent::MAX_LEN`] bytes); returns the length.
    /// [`VisorEvent::Unknown`] cannot be encoded ([`MsgError::Malformed`]).
    pub fn encode(&self, buf: &mut [u8]) -> Result<usize, MsgError> {
        if matches!(self, VisorEvent::Unknown(_)) {
            return Err(MsgError::Malformed);
        }
        crate::msg::encode(self, buf)
    }

    /// Decodes an event from exactly `b`.
    pub fn decode(b: &[u8]) -> Result<VisorEvent, MsgError> {
        let mut d = Decoder::new(b);
        let ev = d.decode().map_err(|_| MsgError::Malformed)?;
        if d.position() != b.len() {
            return Err(MsgError::Malformed);
        }
        Ok(ev)
    }

    /// The text the server stores and shows for it (`visor_version` is the device's, from its
    /// hello), e.g. `boot #3 visor 0.1.0 (power-on)` or `app crash: HardFault pc=0x...`.
    pub fn write_text<W: fmt::Write>(&self, visor_version: &str, w: &mut W) -> fmt::Result {
        match *self {
            VisorEvent::Boot { count, reason } => {
                write!(w, "boot #{count} visor {visor_version} (")?;
                match BootReason::from_code(reason) {
                    Some(r) => w.write_str(r.as_str())?,
                    None => write!(w, "reason {reason}")?,
                }
                w.write_str(")")
            }
            VisorEvent::Crash(c) => {
                match FaultKind::from_u32(c.kind) {
                    Some(k) => write!(w, "app crash: {}", k.name())?,
                    None => write!(w, "app crash: kind {:#x}", c.kind)?,
                }
                write!(
                    w,
                    " pc={:#010x} lr={:#010x} sp={:#010x} xpsr={:#010x} cfsr={:#010x} hfsr={:#010x} sfsr={:#010x} \
                     bfar={:#010x} exc_return={:#010x} stack",
                    c.pc, c.lr, c.sp, c.xpsr, c.cfsr, c.hfsr, c.sfsr, c.bfar, c.exc_return
                )?;
                for word in c.stack {
                    write!(w, " {word:08x}")?;
                }
                Ok(())
            }
            VisorEvent::LinkLost { reason } => match LinkLossReason::from_code(reason) {
                Some(r) => write!(w, "connection lost ({})", r.as_str()),
                None => write!(w, "connection lost (reason {reason})"),
            },
            VisorEvent::Online => w.write_str("online"),
            VisorEvent::Update { sequence, state, reason } => {
                match UpdateState::from_u8(state) {
                    Some(s) => write!(w, "update {sequence}: {}", s.as_str())?,
                    None => write!(w, "update {sequence}: state {state}")?,
                }
                match (reason, UpdateReason::from_u16(reason)) {
                    (0, _) => Ok(()),
                    (_, Some(r)) => write!(w, " ({})", r.as_str()),
                    (_, None) => write!(w, " (reason {reason})"),
                }
            }
            VisorEvent::AppQuarantined { crashes } => {
                write!(w, "app quarantined after {crashes} crashes in a row: waiting for an update check")
            }
            VisorEvent::AppReleased { reason } => match ReleaseReason::from_code(reason) {
                Some(r) => write!(w, "app released from quarantine ({})", r.as_str()),
                None => write!(w, "app released from quarantine (reason {reason})"),
            },
            VisorEvent::VisorFault { pc } => write!(w, "visor fault at pc={pc:#010x}"),
            VisorEvent::CrashRegs { regs } => {
                w.write_str("app crash registers")?;
                for (i, r) in regs.iter().enumerate() {
                    write!(w, " r{i}={r:#010x}")?;
                }
                Ok(())
            }
            VisorEvent::CrashStack { offset, words, len } => {
                write!(w, "app crash stack +{offset}:")?;
                for word in words.iter().take(len as usize) {
                    write!(w, " {word:08x}")?;
                }
                Ok(())
            }
            VisorEvent::Unknown(t) => write!(w, "unknown visor event {t}"),
        }
    }
}

impl<C> Encode<C> for VisorEvent {
    fn encode<W: Write>(&self, e: &mut Encoder<W>, ctx: &mut C) -> Result<(), EncError<W::Error>> {
        e.array(2)?.u16(self.type_code())?;
        match *self {
            VisorEvent::Boot { count, reason } => e.array(2)?.u32(count)?.u8(reason)?.ok(),
            VisorEvent::Crash(c) => c.encode(e, ctx),
            VisorEvent::LinkLost { reason } => e.array(1)?.u8(reason)?.ok(),
            VisorEvent::Online => e.array(0)?.ok(),
            VisorEvent::Update { sequence, state, reason } => e.array(3)?.u64(sequence)?.u8(state)?.u16(reason)?.ok(),
            VisorEvent::AppQuarantined { crashes } => e.array(1)?.u32(crashes)?.ok(),
            VisorEvent::AppReleased { reason } => e.array(1)?.u8(reason)?.ok(),
            VisorEvent::VisorFault { pc } => e.array(1)?.u32(pc)?.ok(),
            VisorEvent::CrashRegs { regs } => {
                e.array(13)?;
                for r in regs {
                    e.u32(r)?;
                }
                Ok(())
            }
            VisorEvent::CrashStack { offset, words, len } => {
                e.array(2 + len as u64)?.u16(offset)?.u8(len)?;
                for w in words.iter().take(len as usize) {
                    e.u32(*w)?;
                }
                Ok(())
            }
            VisorEvent::Unknown(_) => Err(EncError::message("an unknown event is not sent")),
        }
    }
}

/// Reads the definite-length field array header of an event: its length.
fn fields(d: &mut Decoder<'_>, at_least: u64) -> Result<u64, DecError> {
    match d.array()? {
        Some(n) if n >= at_least => Ok(n),
        _ => Err(DecError::message("event fields: a definite array with the known fields")),
    }
}

/// Skips the fields after the `known` ones (added by a newer peer).
fn rest(d: &mut Decoder<'_>, n: u64, known: u64) -> Result<(), DecError> {
    for _ in known..n {
        d.skip()?;
    }
    Ok(())
}

impl<'b, C> Decode<'b, C> for VisorEvent {
    fn decode(d: &mut Decoder<'b>, ctx: &mut C) -> Result<Self, DecError> {
        if d.array()? != Some(2) {
            return Err(DecError::message("an event is [type, [fields...]]"));
        }
        let t = d.u16()?;
        let ev = match t {
            0 => {
                let n = fields(d, 2)?;
                let ev = VisorEvent::Boot { count: d.u32()?, reason: d.u8()? };
                rest(d, n, 2)?;
                ev
            }
            1 => VisorEvent::Crash(CrashInfo::decode(d, ctx)?),
            2 => {
                let n = fields(d, 1)?;
                let ev = VisorEvent::LinkLost { reason: d.u8()? };
                rest(d, n, 1)?;
                ev
            }
            3 => {
                let n = fields(d, 0)?;
                rest(d, n, 0)?;
                VisorEvent::Online
            }
            4 => {
                let n = fields(d, 3)?;
                let ev = VisorEvent::Update { sequence: d.u64()?, state: d.u8()?, reason: d.u16()? };
                rest(d, n, 3)?;
                ev
            }
            5 => {
                let n = fields(d, 1)?;
                let ev = VisorEvent::AppQuarantined { crashes: d.u32()? };
                rest(d, n, 1)?;
                ev
            }
            6 => {
                let n = fields(d, 1)?;
                let ev = VisorEvent::AppReleased { reason: d.u8()? };
                rest(d, n, 1)?;
                ev
            }
            7 => {
                let n = fields(d, 1)?;
                let ev = VisorEvent::VisorFault { pc: d.u32()? };
                rest(d, n, 1)?;
                ev
            }
            8 => {
                let n = fields(d, 13)?;
                let mut regs = [0u32; 13];
                for r in regs.iter_mut() {
                    *r = d.u32()?;
                }
                rest(d, n, 13)?;
                VisorEvent::CrashRegs { regs }
            }
            9 => {
                let n = fields(d, 2)?;
                let offset = d.u16()?;
                let len = d.u8()?;
                if len as usize > CRASH_CHUNK_WORDS || n < 2 + len as u64 {
                    return Err(DecError::message("crash stack: at most 16 words, all present"));
                }
                let mut words = [0u32; CRASH_CHUNK_WORDS];
                for w in words.iter_mut().take(len as usize) {
                    *w = d.u32()?;
                }
                rest(d, n, 2 + len as u64)?;
                VisorEvent::CrashStack { offset, words, len }
            }
            t if SKIPPABLE.contains(&t) => {
                d.skip()?;
                VisorEvent::Unknown(t)
            }
            _ => return Err(DecError::message("event type out of range")),
        };
        Ok(ev)
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::format;
    use std::string::String;

    use super::*;

    fn all() -> [VisorEvent; 12] {
        let crash =
            CrashInfo { kind: 3, pc: 0x0020_0123, lr: u32::MAX, stack: [7; CRASH_STACK_WORDS], ..Default::default() };
        [
            VisorEvent::Boot { count: 3, reason: BootReason::PowerOn.code() },
            VisorEvent::Boot { count: u32::MAX, reason: 200 },
            VisorEvent::Crash(crash),
            VisorEvent::LinkLost { reason: LinkLossReason::ServerSilent.code() },
            VisorEvent::Online,
            VisorEvent::Update { sequence: u64::MAX, state: UpdateState::RolledBack.as_u8(), reason: u16::MAX },
            VisorEvent::AppQuarantined { crashes: 3 },
            VisorEvent::AppReleased { reason: ReleaseReason::NothingToInstall.code() },
            VisorEvent::VisorFault { pc: 0x1000_0123 },
            VisorEvent::CrashRegs { regs: [u32::MAX; 13] },
            VisorEvent::CrashStack { offset: 320, words: [u32::MAX; CRASH_CHUNK_WORDS], len: 16 },
            VisorEvent::CrashStack { offset: 0, words: [0; CRASH_CHUNK_WORDS], len: 0 },
        ]
    }

    #[test]
    fn every_event_roundtrips_within_max_len() {
        for ev in all() {
            let mut buf = [0u8; VisorEvent::MAX_LEN];
            let n = ev.encode(&mut buf).unwrap();
            assert_eq!(VisorEvent::decode(&buf[..n]), Ok(ev));
            for cut in 0..n {
                assert_eq!(VisorEvent::decode(&buf[..cut]), Err(MsgError::Malformed), "{ev:?} cut at {cut}");
            }
        }
        assert_eq!(VisorEvent::Unknown(10).encode(&mut [0u8; 16]), Err(MsgError::Malformed));
    }

    #[test]
    fn unknown_types_are_skipped_and_extra_fields_ignored() {
        // [10, [1, "x"]]: a type of a newer visor.
        assert_eq!(VisorEvent::decode(&[0x82, 0x0A, 0x82, 0x01, 0x61, b'x']), Ok(VisorEvent::Unknown(10)));
        // [200, []]: outside the skippable range.
        assert_eq!(VisorEvent::decode(&[0x82, 0x18, 0xC8, 0x80]), Err(MsgError::Malformed));
        // [2, [1, 5]]: link lost with a field added by a newer visor.
        assert_eq!(VisorEvent::decode(&[0x82, 0x02, 0x82, 0x01, 0x05]), Ok(VisorEvent::LinkLost { reason: 1 }));
        // [2, []]: a known type without its fields.
        assert_eq!(VisorEvent::decode(&[0x82, 0x02, 0x80]), Err(MsgError::Malformed));
    }

    #[test]
    fn rendered_text_keeps_the_prefixes_tools_look_for() {
        let text = |ev: VisorEvent| {
            let mut s = String::new();
            ev.write_text("0.1.0", &mut s).unwrap();
            s
        };
        let [boot, odd_boot, crash, lost, online, update, quarantined, released, visor_fault, ..] = all();
        assert_eq!(text(quarantined), "app quarantined after 3 crashes in a row: waiting for an update check");
        assert_eq!(text(released), "app released from quarantine (nothing to install)");
        assert_eq!(text(visor_fault), "visor fault at pc=0x10000123");
        assert_eq!(text(VisorEvent::AppReleased { reason: 9 }), "app released from quarantine (reason 9)");
        assert_eq!(
            text(VisorEvent::Boot { count: 2, reason: BootReason::UnexplainedReset.code() }),
            "boot #2 visor 0.1.0 (unexplained reset)"
        );
        assert_eq!(text(boot), "boot #3 visor 0.1.0 (power-on)");
        assert_eq!(text(odd_boot), format!("boot #{} visor 0.1.0 (reason 200)", u32::MAX));
        assert!(text(crash).starts_with("app crash: HardFault pc=0x00200123 lr=0xffffffff sp=0x00000000"));
        assert!(text(crash).ends_with(" 00000007 00000007"));
        assert_eq!(text(lost), "connection lost (server silent)");
        assert_eq!(text(online), "online");
        assert_eq!(text(update), format!("update {}: rolled_back (reason 65535)", u64::MAX));
        let confirmed = VisorEvent::Update { sequence: 4, state: 4, reason: UpdateReason::CrashLoop.code() };
        assert_eq!(text(confirmed), "update 4: confirmed (crash loop)");
    }

    #[test]
    fn crash_info_takes_the_registers_from_the_report() {
        let mut r = CrashReport { kind: 7, sp: 0x100, cfsr: 2, bfar: 3, exc_return: 0xFFFF_FFBC, ..Default::default() };
        r.frame[5] = 0xAA; // lr
        r.frame[6] = 0xBB; // pc
        r.frame[7] = 0x0100_0000; // xpsr
        r.stack[7] = 9;
        let c = CrashInfo::from(&r);
        assert_eq!((c.kind, c.pc, c.lr, c.sp, c.xpsr), (7, 0xBB, 0xAA, 0x100, 0x0100_0000));
        assert_eq!((c.cfsr, c.bfar, c.exc_return, c.stack[7]), (2, 3, 0xFFFF_FFBC, 9));
    }

    #[test]
    fn reason_codes_roundtrip() {
        for r in BootReason::ALL {
            assert_eq!(BootReason::from_code(r.code()), Some(r));
        }
        for r in LinkLossReason::ALL {
            assert_eq!(LinkLossReason::from_code(r.code()), Some(r));
        }
        for (i, r) in BootReason::ALL.into_iter().enumerate() {
            assert_eq!(r.code() as usize, i);
        }
        for (i, r) in ReleaseReason::ALL.into_iter().enumerate() {
            assert_eq!((r.code() as usize, ReleaseReason::from_code(r.code())), (i, Some(r)));
        }
        assert_eq!(ReleaseReason::from_code(4), None);
        assert_eq!(LinkLossReason::from_code(LinkLossReason::ALL.len() as u8), None);
    }
}
