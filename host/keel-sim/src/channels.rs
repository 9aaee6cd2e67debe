//! A simulated app's channels: the memory it lends the device core for its channel buffers,
//! and the calls it makes (the same `keel_device` calls the visor's system calls make).
//!
//! The memory is allocated at the first channel call, so an idle simulated device pays for
//! none of it.

use keel_device::AppMemory;

/// Where the simulated app's channel memory starts (an address in the app's RAM on mps2-an505;
/// only the device core sees it).
pub const MEM_BASE: u32 = 0x2810_0000;
/// A channel's receive buffer.
pub(crate) const RX_AT: u32 = MEM_BASE;
/// Its length.
pub(crate) const RX_LEN: u32 = 4096;
/// A channel's transmit buffer.
pub(crate) const TX_AT: u32 = RX_AT + RX_LEN;
/// Its length.
pub(crate) const TX_LEN: u32 = 2048;
/// Where the app builds a message before `send` copies it into the transmit buffer.
pub(crate) const SCRATCH_AT: u32 = TX_AT + TX_LEN;
/// Its length.
pub(crate) const SCRATCH_LEN: u32 = 2048;
const MEM_LEN: u32 = RX_LEN + TX_LEN + SCRATCH_LEN;

/// The simulated app's RAM that channels use.
pub(crate) struct SimMemory {
    bytes: Vec<u8>,
}

impl SimMemory {
    pub(crate) fn new() -> Box<SimMemory> {
        Box::new(SimMemory { bytes: vec![0; MEM_LEN as usize] })
    }

    /// The bytes at `addr..addr + len`, if all of them are the app's.
    pub(crate) fn range(&mut self, addr: u32, len: usize) -> Option<&mut [u8]> {
        let start = addr.checked_sub(MEM_BASE)? as usize;
        self.bytes.get_mut(start..start.checked_add(len)?)
    }
}

impl AppMemory for SimMemory {
    fn read(&mut self, addr: u32, buf: &mut [u8], _unprivileged: bool) -> bool {
        match self.range(addr, buf.len()) {
            Some(src) => {
                buf.copy_from_slice(src);
                true
            }
            None => false,
        }
    }

    fn write(&mut self, addr: u32, data: &[u8], _unprivileged: bool) -> bool {
        match self.range(addr, data.len()) {
            Some(dst) => {
                dst.copy_from_slice(data);
                true
            }
            None => false,
        }
    }
}

/// Why a simulated app's channel request failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChannelError {
    /// A channel call answered this status (e.g. `NetworkNotConnected`, `TooManyChannels`).
    Status(keel_abi::Status),
    /// The channel closed before the answer, for this reason (`keel_abi::chan::Reason`).
    Closed(u32),
    /// No answer within the time asked for.
    Timeout,
    /// The server's answer: this result code for the whole request.
    Failed(u8),
    /// The server answered an error message with this code.
    Server(u8),
    /// The answer could not be decoded, or was not the one expected.
    Malformed,
}

impl std::fmt::Display for ChannelError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChannelError::Status(s) => write!(f, "channel call failed: {s:?}"),
            ChannelError::Closed(r) => write!(f, "channel closed (reason {r})"),
            ChannelError::Timeout => write!(f, "no answer in time"),
            ChannelError::Failed(r) => write!(f, "the server answered result {r}"),
            ChannelError::Server(c) => write!(f, "the server answered error {c}"),
            ChannelError::Malformed => write!(f, "malformed answer"),
        }
    }
}

impl std::error::Error for ChannelError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_apps_channel_memory_is_reachable() {
        let mut m = SimMemory::new();
        assert!(m.write(RX_AT, &[1, 2, 3, 4], true));
        let mut b = [0u8; 4];
        assert!(m.read(RX_AT, &mut b, true));
        assert_eq!(b, [1, 2, 3, 4]);
        assert!(!m.read(MEM_BASE - 1, &mut b, true), "below");
        assert!(!m.read(SCRATCH_AT + SCRATCH_LEN - 3, &mut b, true), "straddling the end");
        assert!(!m.write(u32::MAX - 1, &b, true), "at the top of the address space");
    }
}
