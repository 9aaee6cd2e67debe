//! Remote debugging inside the device core: the debug agent ([`keel_debug::agent`]) fed with the
//! opaque frames of the link (`Down::Debug`), and what a halt means for the rest of the device.
//!
//! The core does not touch the app: the shell (the visor) implements
//! [`keel_debug::agent::Target`] over the halted app's registers and TT-checked memory, calls
//! [`crate::Device::debug_service`] after feeding received bytes, and performs the
//! [`DebugAction`] it returns. While the app is halted its watchdog and its trial's grace time are
//! paused ([`crate::Device::debug_stopped`], [`crate::Device::debug_resumed`]); the link, the
//! log ring and the update agent run on. An update that becomes ready while the app is halted is
//! applied as usual: starting the new app ends the halt, and the agent forgets its breakpoints
//! (the code was loaded again, so there is nothing to restore).

use keel_debug::agent::Agent;
pub use keel_debug::agent::{Action as DebugAction, Target as DebugTarget};
pub use keel_debug::wire::{RestartReason, StopReason};

// Every frame of the end-to-end session fits the link's opaque debug frame.
const _: () = assert!(keel_debug::session::MAX_FRAME <= keel_proto::msg::MAX_DEBUG_FRAME);

/// The device's debug service: the agent, and whether a received frame waits for the shell (it
/// stays in the link's receive buffer meanwhile: the link reads no further until it is served).
pub struct DebugService {
    pub(crate) agent: Agent,
    pub(crate) pending: bool,
    /// Why the app will start next, for the debugger (the first reason given wins).
    pub(crate) restart_reason: Option<RestartReason>,
    pub(crate) halted_at: Option<u64>,
    /// Frames dropped because the previous one was still waiting (the CLI retransmits).
    pub(crate) dropped: u32,
}

impl DebugService {
    pub(crate) fn new(device_key: [u8; 32]) -> Self {
        DebugService {
            agent: Agent::new(device_key),
            pending: false,
            restart_reason: None,
            halted_at: None,
            dropped: 0,
        }
    }

    /// A frame arrived for [`crate::Device::debug_service`].
    pub(crate) fn keep(&mut self) {
        if self.pending {
            self.dropped = self.dropped.wrapping_add(1);
        }
        self.pending = true;
    }

    /// True while a received frame waits for [`crate::Device::debug_service`] (the link reads
    /// no further meanwhile).
    pub fn has_frame(&self) -> bool {
        self.pending
    }

    /// The agent (read-only: sessions, breakpoints, halt state).
    pub fn agent(&self) -> &Agent {
        &self.agent
    }
}

/// A visor text line for the log ring, formatted without a heap (cut at 120 bytes).
pub(crate) struct Line {
    buf: [u8; 120],
    len: usize,
}

impl Line {
    pub(crate) fn new(args: core::fmt::Arguments<'_>) -> Line {
        let mut l = Line { buf: [0; 120], len: 0 };
        let _ = core::fmt::write(&mut l, args);
        l
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl core::fmt::Write for Line {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}
