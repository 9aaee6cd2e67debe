//! The warm-reset hand-over: what one visor boot leaves for the next in RAM that survives a
//! system reset, when the visor resets the system because of the app (it crashed or hung inside
//! one of its exception handlers, which only a reset can undo). It carries the supervisor's
//! counters ([`Carry`]) and the app's crash report, so the backoff series and the app's view of
//! its last crash continue.
//!
//! Byte layout (all little endian; [`LEN`] bytes, fixed since the first visor that wrote it):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `0x4D52574B` (the bytes "KWRM") |
//! | 4 | 4 | [`Carry::restart_count`] |
//! | 8 | 4 | [`Carry::crash_count`] |
//! | 12 | 4 | [`Carry::consecutive_crashes`] |
//! | 16 | 112 | [`CrashReport::to_bytes`] |
//! | 128 | 4 | CRC-32 (IEEE) of bytes 0..128 |
//!
//! RAM that was never written (a cold boot) fails the magic or the CRC check.

use keel_abi::CrashReport;
use keel_flash::crc32;

use crate::Carry;

/// Marks a hand-over record.
pub const MAGIC: u32 = 0x4D52_574B;
/// Size of an encoded hand-over, CRC included.
pub const LEN: usize = BODY + 4;
/// Bytes covered by the CRC.
const BODY: usize = 16 + REPORT;
const REPORT: usize = 112;

/// Encodes the hand-over state.
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

/// Decodes a hand-over from the start of `bytes` (anything after the first [`LEN`] bytes is
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
    }
}
