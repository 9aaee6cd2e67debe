//! State handed from one visor boot to the next across a system reset the visor makes itself
//! (after the app crashed inside one of its interrupt handlers, which only a reset can undo): the
//! supervisor's counters and the crash report, so the backoff series and the app's view of its
//! last crash continue instead of starting over. Kept in RAM that survives a warm reset, checked
//! with a CRC, and consumed (erased) at boot; a cold boot finds nothing valid.

use keel_abi::CrashReport;
use keel_flash::crc32;
use keel_supervisor::Carry;

use crate::board::{self, WARM_RAM_LEN};

const MAGIC: u32 = 0x4D52_574B; // "KWRM"
const LEN: usize = 4 + 12 + 112;

/// Saves the hand-over state.
pub fn save(carry: Carry, report: &CrashReport) {
    let mut b = [0u8; WARM_RAM_LEN];
    b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    b[4..8].copy_from_slice(&carry.restart_count.to_le_bytes());
    b[8..12].copy_from_slice(&carry.crash_count.to_le_bytes());
    b[12..16].copy_from_slice(&carry.consecutive_crashes.to_le_bytes());
    b[16..LEN].copy_from_slice(&report.to_bytes());
    let c = crc32(&b[..LEN]);
    b[LEN..LEN + 4].copy_from_slice(&c.to_le_bytes());
    board::warm_write(&b);
}

/// Takes the hand-over state, if the previous boot left one.
pub fn take() -> Option<(Carry, CrashReport)> {
    let b = board::warm_read();
    board::warm_write(&[0; WARM_RAM_LEN]);
    let w = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
    if w(0) != MAGIC || w(LEN) != crc32(&b[..LEN]) {
        return None;
    }
    let carry = Carry { restart_count: w(4), crash_count: w(8), consecutive_crashes: w(12) };
    let mut r = [0u8; 112];
    r.copy_from_slice(&b[16..LEN]);
    Some((carry, CrashReport::from_bytes(&r)))
}
