//! State handed from one visor boot to the next across a system reset the visor makes itself
//! (after the app crashed or hung inside one of its exception handlers, which only a reset can
//! undo): the supervisor's counters and the crash report, so the backoff series and the app's view
//! of its last crash continue instead of starting over. The encoding (magic, CRC) is
//! [`keel_supervisor::handover`]; this module only keeps it in RAM that survives a warm reset and
//! consumes (erases) it at boot. A cold boot finds nothing valid.

use keel_abi::CrashReport;
use keel_supervisor::{handover, Carry};

use crate::board::{self, WARM_RAM_LEN};

const _: () = assert!(handover::LEN <= WARM_RAM_LEN);

/// Saves the hand-over state.
pub fn save(carry: Carry, report: &CrashReport) {
    let mut b = [0u8; WARM_RAM_LEN];
    b[..handover::LEN].copy_from_slice(&handover::encode(&carry, report));
    board::warm_write(&b);
}

/// Saves the hand-over before a reset that is not the app's fault (a start that needs the app out
/// of an exception handler, or a fault of the visor): the series so far continues.
pub fn save_for_start(carry: Carry, last: Option<CrashReport>) {
    save(carry, &last.unwrap_or_default());
}

/// Takes the hand-over state, if the previous boot left one.
pub fn take() -> Option<(Carry, CrashReport)> {
    let b = board::warm_read();
    board::warm_write(&[0; WARM_RAM_LEN]);
    handover::decode(&b)
}
