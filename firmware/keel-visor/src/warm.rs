//! The run record in warm RAM: what one visor boot leaves for the next across any reset that
//! keeps RAM (the visor's own, the hardware watchdog's, one the app provoked). The device core
//! keeps it current ([`keel_device::Device::take_run_record`]: the app's counters, whether it is
//! running, its last crash); before a reset the visor makes, it adds why
//! ([`handover::ResetCause`]). At boot a record that says the app was running and names no cause
//! is an unexplained reset, counted as a crash of the app, so the backoff and the quarantine of a
//! reset loop work whoever caused the resets. The encoding (magic, CRC) is
//! [`keel_supervisor::handover`]; a cold boot finds nothing valid.

use keel_supervisor::handover::{self, Record};

use crate::board::{self, WARM_RAM_LEN};

const _: () = assert!(handover::RECORD_LEN <= WARM_RAM_LEN);

/// Writes the run record.
pub fn write(r: &Record) {
    let mut b = [0u8; WARM_RAM_LEN];
    b[..handover::RECORD_LEN].copy_from_slice(&r.encode());
    board::warm_write(&b);
}

/// Takes the run record the previous boot left, if any (the area is cleared; the core writes the
/// new boot's record right after it started).
pub fn take() -> Option<Record> {
    let b = board::warm_read();
    board::warm_write(&[0; WARM_RAM_LEN]);
    Record::decode(&b)
}
