//! The run record: what one visor boot leaves for the next in RAM that survives a system reset
//! (warm RAM, secure, CRC-checked), so crash records, restart counts, the backoff series and a
//! quarantine survive **every** kind of reset, including those the visor does not make itself.
//!
//! The shell keeps it continuously: it writes the [`Record`] the device core gives it
//! (`keel_device::Device::take_run_record`) whenever it changed (at every app launch, crash and
//! stop), and before a reset it makes itself it writes it once more with the [`ResetCause`]. A
//! boot that finds a record with the app running and no cause knows that something reset the
//! device under the app (a hostile app's watchdog, a forged exception return, a lockup): that
//! counts as a crash of the app ([`crate::Supervisor::resume`]), so a reset loop ends in the
//! quarantine instead of starting the app again and again.
//!
//! Byte layout of version 2 (all little endian; [`RECORD_LEN`] bytes):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `0x3252524B` (the bytes "KRR2") |
//! | 4 | 4 | [`Carry::restart_count`] |
//! | 8 | 4 | [`Carry::crash_count`] |
//! | 12 | 4 | [`Carry::consecutive_crashes`] |
//! | 16 | 1 | [`RunState`] |
//! | 17 | 1 | [`ResetCause`] code |
//! | 18 | 1 | start reason of the next launch (`keel_abi::StartReason`) |
//! | 19 | 1 | flags: bit 0 = a crash report follows |
//! | 20 | 4 | restart code of the next launch |
//! | 24 | 4 | the visor's faulting PC ([`ResetCause::VisorFault`]), else 0 |
//! | 28 | 112 | the last crash report ([`CrashReport::to_bytes`]), zeros if none |
//! | 140 | 4 | CRC-32 (IEEE) of bytes 0..140 |
//!
//! Version 1 (magic "KWRM", 132 bytes: the three counters, the report and the CRC) was written
//! only before a reset after an app fault in a handler; [`Record::decode`] still reads it as
//! such ([`encode`] and [`decode`] are that format). RAM that was never written (a power-on)
//! fails the magic or the CRC check.

use keel_abi::CrashReport;
use keel_flash::crc32;

use crate::Carry;

/// Marks a version-1 hand-over.
pub const MAGIC: u32 = 0x4D52_574B;
/// Size of an encoded version-1 hand-over, CRC included.
pub const LEN: usize = BODY + 4;
/// Marks a version-2 run record.
pub const RECORD_MAGIC: u32 = 0x3252_524B;
/// Size of an encoded run record, CRC included (fits the visor's 256-byte warm RAM).
pub const RECORD_LEN: usize = RECORD_BODY + 4;
const RECORD_BODY: usize = 28 + REPORT;
/// Bytes covered by the CRC.
const BODY: usize = 16 + REPORT;
const REPORT: usize = 112;

/// What the app was doing when the record was written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RunState {
    /// Not started, stopped, or about to start.
    #[default]
    Stopped = 0,
    /// Running (launched, not crashed or stopped since).
    Running = 1,
    /// Waiting for the backoff of a crash (or of a restart storm).
    Backoff = 2,
    /// Held in quarantine.
    Quarantined = 3,
}

impl RunState {
    fn from_u8(v: u8) -> Option<RunState> {
        [RunState::Stopped, RunState::Running, RunState::Backoff, RunState::Quarantined]
            .into_iter()
            .find(|s| *s as u8 == v)
    }
}

/// Why the visor reset the system, written just before it does; [`ResetCause::None`] in the
/// record kept while nothing is about to happen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ResetCause {
    /// The visor did not reset (code 0): a reset found with this cause came from elsewhere.
    #[default]
    None,
    /// The app faulted in one of its exception handlers (code 1; the crash is already counted).
    AppFault,
    /// The app hung in one of its exception handlers (code 2; the watchdog kill is already
    /// counted).
    AppHung,
    /// The visor's own code faulted at `pc` (code 3).
    VisorFault {
        /// The faulting program counter.
        pc: u32,
    },
    /// The visor reset to start the app: a deadline (an install, a rollback, an apply) needed
    /// the app out of one of its exception handlers (code 4). Not a crash.
    StartApp,
    /// The secure watchdog reset the system: the visor hung (code 5; the shell sets it at boot
    /// from the watchdog's status).
    SecureWatchdog,
}

impl ResetCause {
    /// The code stored in the record.
    pub fn code(self) -> u8 {
        match self {
            ResetCause::None => 0,
            ResetCause::AppFault => 1,
            ResetCause::AppHung => 2,
            ResetCause::VisorFault { .. } => 3,
            ResetCause::StartApp => 4,
            ResetCause::SecureWatchdog => 5,
        }
    }

    fn from_code(v: u8, pc: u32) -> Option<ResetCause> {
        Some(match v {
            0 => ResetCause::None,
            1 => ResetCause::AppFault,
            2 => ResetCause::AppHung,
            3 => ResetCause::VisorFault { pc },
            4 => ResetCause::StartApp,
            5 => ResetCause::SecureWatchdog,
            _ => return None,
        })
    }

    /// True if a reset with this cause while the app was running counts as a crash of the app
    /// now (see [`crate::Supervisor::resume`]): every cause but the app's own faults and hangs
    /// (counted before the reset) and a reset to start the app.
    pub fn charged_to_running_app(self) -> bool {
        matches!(self, ResetCause::None | ResetCause::VisorFault { .. } | ResetCause::SecureWatchdog)
    }
}

/// The run record (version 2).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Record {
    /// The supervisor's counters.
    pub carry: Carry,
    /// What the app was doing.
    pub app: RunState,
    /// `keel_abi::StartReason` of the next launch, as `u32`.
    pub start_reason: u32,
    /// Restart code of the next launch.
    pub restart_code: u32,
    /// Why the visor reset (set by the shell just before it resets).
    pub reset_cause: ResetCause,
    /// The app's last crash report, if any.
    pub last_crash: Option<CrashReport>,
}

impl Record {
    /// True if the app was running.
    pub fn app_running(&self) -> bool {
        self.app == RunState::Running
    }

    /// The same record with `cause` (what the shell writes just before a reset it makes).
    pub fn with_cause(self, cause: ResetCause) -> Record {
        Record { reset_cause: cause, ..self }
    }

    /// Encodes the record (version 2).
    pub fn encode(&self) -> [u8; RECORD_LEN] {
        let mut b = [0u8; RECORD_LEN];
        let c = &self.carry;
        for (i, w) in [RECORD_MAGIC, c.restart_count, c.crash_count, c.consecutive_crashes].iter().enumerate() {
            b[4 * i..4 * i + 4].copy_from_slice(&w.to_le_bytes());
        }
        b[16] = self.app as u8;
        b[17] = self.reset_cause.code();
        b[18] = self.start_reason.min(255) as u8;
        b[19] = u8::from(self.last_crash.is_some());
        b[20..24].copy_from_slice(&self.restart_code.to_le_bytes());
        let pc = match self.reset_cause {
            ResetCause::VisorFault { pc } => pc,
            _ => 0,
        };
        b[24..28].copy_from_slice(&pc.to_le_bytes());
        if let Some(r) = &self.last_crash {
            b[28..RECORD_BODY].copy_from_slice(&r.to_bytes());
        }
        let crc = crc32(&b[..RECORD_BODY]);
        b[RECORD_BODY..].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes a run record from the start of `bytes` (the rest is ignored): version 2, or a
    /// version-1 hand-over ([`Record::from`] a carry and report). `None` if neither magic and
    /// CRC match, or a field is out of range.
    pub fn decode(bytes: &[u8]) -> Option<Record> {
        if let Some(v1) = decode(bytes) {
            return Some(Record::from(v1));
        }
        let b: &[u8; RECORD_LEN] = bytes.get(..RECORD_LEN)?.try_into().ok()?;
        let w = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        if w(0) != RECORD_MAGIC || w(RECORD_BODY) != crc32(&b[..RECORD_BODY]) {
            return None;
        }
        let report: &[u8; REPORT] = b[28..RECORD_BODY].try_into().ok()?;
        Some(Record {
            carry: Carry { restart_count: w(4), crash_count: w(8), consecutive_crashes: w(12) },
            app: RunState::from_u8(b[16])?,
            reset_cause: ResetCause::from_code(b[17], w(24))?,
            start_reason: b[18] as u32,
            restart_code: w(20),
            last_crash: (b[19] & 1 != 0).then(|| CrashReport::from_bytes(report)),
        })
    }
}

impl From<(Carry, CrashReport)> for Record {
    /// What a version-1 hand-over meant: the app crashed in a handler (counted), the visor reset,
    /// the app restarts after the series' backoff.
    fn from((carry, report): (Carry, CrashReport)) -> Record {
        Record {
            carry,
            app: RunState::Backoff,
            start_reason: keel_abi::StartReason::Crash as u32,
            restart_code: 0,
            reset_cause: ResetCause::AppFault,
            last_crash: Some(report),
        }
    }
}

/// Encodes a version-1 hand-over.
pub fn encode(carry: &Carry, report: &CrashReport) -> [u8; LEN] {
    let mut b = [0u8; LEN];
    for (i, w) in [MAGIC, carry.restart_count, carry.crash_count, carry.consecutive_crashes].iter().enumerate() {
        b[4 * i..4 * i + 4].copy_from_slice(&w.to_le_bytes());
    }
    b[16..BODY].copy_from_slice(&report.to_bytes());
    let crc = crc32(&b[..BODY]);
    b[BODY..LEN].copy_from_slice(&crc.to_le_bytes());
    b
}

/// Decodes a version-1 hand-over from the start of `bytes` (anything after the first [`LEN`] bytes is
/// ignored). `None` if `bytes` is too short or the magic or the CRC does not match.
pub fn decode(bytes: &[u8]) -> Option<(Carry, CrashReport)> {
    let b: &[u8; LEN] = bytes.get(..LEN)?.try_into().ok()?;
    let w = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
    if w(0) != MAGIC || w(BODY) != crc32(&b[..BODY]) {
        return None;
    }
    let carry = Carry { restart_count: w(4), crash_count: w(8), consecutive_crashes: w(12) };
    let report: &[u8; REPORT] = b[16..BODY].try_into().ok()?;
    Some((carry, CrashReport::from_bytes(report)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> (Carry, CrashReport) {
        let carry = Carry { restart_count: 7, crash_count: 5, consecutive_crashes: 3 };
        let mut report = CrashReport {
            version: 1,
            kind: 3,
            time_us: 0x0102_0304_0506_0708,
            sp: 0x2800_1000,
            exc_return: 0xFFFF_FFB1,
            cfsr: 0x100,
            hfsr: 0x4000_0000,
            sfsr: 9,
            sfar: 10,
            bfar: 11,
            mmfar: 12,
            ..Default::default()
        };
        for i in 0..8 {
            report.frame[i] = 0x1000 + i as u32;
            report.stack[i] = 0x2000 + i as u32;
        }
        (carry, report)
    }

    #[test]
    fn a_hand_over_round_trips() {
        let (carry, report) = sample();
        assert_eq!(decode(&encode(&carry, &report)), Some((carry, report)));
    }

    #[test]
    fn the_byte_layout_is_the_one_earlier_visors_wrote() {
        // Rebuilt field by field at the offsets of the visor's original hand-written encoder.
        let (carry, report) = sample();
        let mut old = [0u8; 256];
        old[0..4].copy_from_slice(&0x4D52_574Bu32.to_le_bytes());
        old[4..8].copy_from_slice(&7u32.to_le_bytes());
        old[8..12].copy_from_slice(&5u32.to_le_bytes());
        old[12..16].copy_from_slice(&3u32.to_le_bytes());
        old[16..128].copy_from_slice(&report.to_bytes());
        let crc = crc32(&old[..128]);
        old[128..132].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(&encode(&carry, &report)[..], &old[..LEN]);
        // The visor reads its whole warm RAM area; the tail does not matter.
        old[200] = 0xEE;
        assert_eq!(decode(&old), Some((carry, report)));
    }

    #[test]
    fn a_bad_crc_is_refused() {
        let (carry, report) = sample();
        let good = encode(&carry, &report);
        for i in 0..LEN {
            let mut b = good;
            b[i] ^= 0x01;
            assert_eq!(decode(&b), None, "bit flip in byte {i} accepted");
        }
    }

    #[test]
    fn a_bad_magic_is_refused_even_with_a_matching_crc() {
        let (carry, report) = sample();
        let mut b = encode(&carry, &report);
        b[0] ^= 0xFF;
        let crc = crc32(&b[..BODY]);
        b[BODY..].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(decode(&b), None);
    }

    #[test]
    fn every_truncation_is_refused() {
        let (carry, report) = sample();
        let b = encode(&carry, &report);
        for n in 0..LEN {
            assert_eq!(decode(&b[..n]), None, "accepted {n} bytes");
        }
    }

    #[test]
    fn cold_ram_is_not_a_hand_over() {
        assert_eq!(decode(&[0u8; 256]), None);
        assert_eq!(decode(&[0xFFu8; 256]), None);
        assert_eq!(Record::decode(&[0u8; 256]), None);
        assert_eq!(Record::decode(&[0xFFu8; 256]), None);
    }

    fn records() -> [Record; 4] {
        let (carry, report) = sample();
        let base = Record {
            carry,
            app: RunState::Running,
            start_reason: 3,
            restart_code: 0xDEAD,
            reset_cause: ResetCause::None,
            last_crash: Some(report),
        };
        [
            base,
            Record { app: RunState::Quarantined, reset_cause: ResetCause::VisorFault { pc: 0x1000_4321 }, ..base },
            Record { app: RunState::Stopped, reset_cause: ResetCause::StartApp, last_crash: None, ..base },
            Record { app: RunState::Backoff, reset_cause: ResetCause::SecureWatchdog, ..base },
        ]
    }

    #[test]
    fn a_run_record_round_trips_and_fits_the_warm_ram() {
        const { assert!(RECORD_LEN <= 256) };
        for r in records() {
            let b = r.encode();
            assert_eq!(Record::decode(&b), Some(r));
            let mut long = [0x5Au8; 256];
            long[..RECORD_LEN].copy_from_slice(&b);
            assert_eq!(Record::decode(&long), Some(r), "the tail of the warm RAM does not matter");
        }
        for cause in [ResetCause::None, ResetCause::AppFault, ResetCause::AppHung, ResetCause::StartApp] {
            let r = Record { reset_cause: cause, ..records()[0] };
            assert_eq!(Record::decode(&r.encode()), Some(r));
        }
    }

    #[test]
    fn a_run_record_with_a_flipped_bit_a_bad_field_or_truncated_is_refused() {
        let good = records()[1].encode();
        for i in 0..RECORD_LEN {
            let mut b = good;
            b[i] ^= 0x01;
            assert_eq!(Record::decode(&b), None, "bit flip in byte {i} accepted");
        }
        for n in 0..RECORD_LEN {
            assert_eq!(Record::decode(&good[..n]), None, "accepted {n} bytes");
        }
        // A valid CRC over an unknown state or cause is refused too.
        for (at, v) in [(16, 4u8), (17, 6u8)] {
            let mut b = good;
            b[at] = v;
            let crc = crc32(&b[..RECORD_BODY]);
            b[RECORD_BODY..].copy_from_slice(&crc.to_le_bytes());
            assert_eq!(Record::decode(&b), None);
        }
    }

    #[test]
    fn a_version_1_hand_over_reads_as_an_app_fault_reset() {
        let (carry, report) = sample();
        let r = Record::decode(&encode(&carry, &report)).unwrap();
        assert_eq!(r.carry, carry);
        assert_eq!((r.app, r.reset_cause, r.last_crash), (RunState::Backoff, ResetCause::AppFault, Some(report)));
        assert!(!r.app_running());
        assert!(ResetCause::None.charged_to_running_app() && !ResetCause::StartApp.charged_to_running_app());
    }
}
