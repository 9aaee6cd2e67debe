//! The boundary between the GDB server and the device: a [`Probe`] runs batches of debug-agent
//! ops in one round trip and hands over the device's unsolicited events. The real one goes
//! through the end-to-end session relayed by the server ([`super::remote`]); the tests and
//! `keel debug --simulate` use [`super::sim`].

use keel_debug::wire::{Op, RestartReason, Status, Stop};

/// The outcome of one op of a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpOutcome {
    /// Done; data: hello -> `[halted]`, ReadRegs -> 23 LE u32, ReadMem -> bytes, else empty.
    Ok(Vec<u8>),
    /// Refused by the agent.
    Err(Status),
}

/// Something the device says on its own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceEvent {
    /// The app stopped (halt served, breakpoint, fault), with its registers.
    Stop(Stop),
    /// The app was started again: every breakpoint is gone and it runs.
    Restarted(RestartReason),
}

/// The link is lost for good, or the session was refused or ended: fatal for `keel debug`.
#[derive(Debug)]
pub struct ProbeError(pub String);

impl std::fmt::Display for ProbeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A debug agent reached somehow.
pub trait Probe {
    /// Runs `ops` in order on the device in ONE round trip; one outcome per op.
    fn batch(&mut self, ops: &[Op<'_>]) -> Result<Vec<OpOutcome>, ProbeError>;
    /// Waits up to `timeout` for the next unsolicited device event. Ok(None) on timeout.
    fn wait_event(&mut self, timeout: std::time::Duration) -> Result<Option<DeviceEvent>, ProbeError>;
    /// Round trips made so far (batches), for the stats.
    fn round_trips(&self) -> u64;
    /// Called about once a second while the GDB server waits for gdb (target halted, or no gdb
    /// connected yet): the place to keep the session alive (a `Ping` every few seconds; the
    /// agent ends a session after 30 s of silence) and to take in frames. Default: nothing.
    fn idle(&mut self) -> Result<(), ProbeError> {
        Ok(())
    }
}
