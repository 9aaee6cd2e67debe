//! A simulated app's channels: the memory it lends the device core for its channel buffers,
//! and the calls it makes (the same `keel_device` calls the visor's system calls make).
//!
//! The memory is allocated at the first channel call, so an idle simulated device pays for
//! none of it. It holds [`SLOTS`] sets of buffers: that many channels open at once (a config
//! fetch next to an MQTT session, say).

use std::time::Duration;

use keel_abi::chan::Kind;
use keel_channel::msg::Msg;
use keel_device::AppMemory;

use crate::SimDevice;

/// Where the simulated app's channel memory starts (an address in the app's RAM on mps2-an505;
/// only the device core sees it).
pub const MEM_BASE: u32 = 0x2810_0000;
/// Buffer sets, so channels open at once.
pub const SLOTS: usize = 4;
/// A channel's receive buffer.
pub const RX_LEN: u32 = 4096;
/// A channel's transmit buffer.
pub const TX_LEN: u32 = 2048;
/// Where the app builds a message before `send` copies it into the transmit buffer: the
/// largest message a simulated app sends.
pub const SCRATCH_LEN: u32 = 2048;
const SLOT_LEN: u32 = RX_LEN + TX_LEN + SCRATCH_LEN;
const MEM_LEN: u32 = SLOT_LEN * SLOTS as u32;

/// Buffer set `slot`'s receive buffer, transmit buffer and scratch area.
fn layout(slot: usize) -> (u32, u32, u32) {
    let rx = MEM_BASE + SLOT_LEN * slot as u32;
    (rx, rx + RX_LEN, rx + RX_LEN + TX_LEN)
}

/// The simulated app's RAM that channels use.
pub(crate) struct SimMemory {
    bytes: Vec<u8>,
    in_use: [bool; SLOTS],
}

impl SimMemory {
    pub(crate) fn new() -> Box<SimMemory> {
        Box::new(SimMemory { bytes: vec![0; MEM_LEN as usize], in_use: [false; SLOTS] })
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

/// An app channel of a simulated device, open until dropped (or [`SimChannel::close`]d):
/// whole messages sent and received through the device core's channel calls, over the
/// device's link.
pub struct SimChannel<'a, const N: usize> {
    dev: &'a SimDevice<N>,
    handle: u32,
    slot: usize,
}

impl<const N: usize> SimDevice<N> {
    /// The app opens a channel of `kind` to `endpoint` (an MQTT profile's name; empty for HTTP
    /// and config), as `keel_app::chan::Channel::open` does. The device must be online;
    /// [`ChannelError::Status`] `BufferInUse` when all [`SLOTS`] buffer sets are taken.
    pub fn open_channel(&self, kind: Kind, endpoint: &str) -> Result<SimChannel<'_, N>, ChannelError> {
        let mut g = self.lock();
        let now = self.now(&g);
        let g = &mut *g;
        let mem = g.mem.get_or_insert_with(SimMemory::new);
        let slot = mem.in_use.iter().position(|u| !u).ok_or(ChannelError::Status(keel_abi::Status::BufferInUse))?;
        let (rx, tx, _) = layout(slot);
        let p = keel_abi::chan::OpenParams {
            version: 1,
            kind: kind as u32,
            tag: slot as u32 + 1,
            rx_buf: rx,
            rx_len: RX_LEN,
            tx_buf: tx,
            tx_len: TX_LEN,
            endpoint: 0,
            endpoint_len: endpoint.len() as u32,
        };
        let handle = g.dev.chan_open(now, &p, endpoint.as_bytes(), &[], false).map_err(ChannelError::Status)?;
        mem.in_use[slot] = true;
        Ok(SimChannel { dev: self, handle, slot })
    }
}

impl<const N: usize> SimChannel<'_, N> {
    /// Sends one whole message, waiting up to `timeout` for room in the transmit buffer.
    pub async fn send(&self, m: &Msg<'_>, timeout: Duration) -> Result<(), ChannelError> {
        let mut buf = [0u8; SCRATCH_LEN as usize];
        let n = m.encode(&mut buf).map_err(|_| ChannelError::Malformed)?;
        let (_, _, scratch) = layout(self.slot);
        self.wait(timeout, |g, now| {
            let mem = g.mem.as_deref_mut().expect("allocated at the open");
            mem.range(scratch, n).expect("within the scratch area").copy_from_slice(&buf[..n]);
            match g.dev.chans_mut(now).send(now, self.handle, scratch, n as u32, false, &mut *mem) {
                keel_abi::Status::Ok => Some(Ok(())),
                keel_abi::Status::WouldBlock => None,
                keel_abi::Status::ChannelClosed => Some(Err(closed(g, self.handle))),
                s => Some(Err(ChannelError::Status(s))),
            }
        })
        .await
    }

    /// The next whole message the server sent, waiting up to `timeout`.
    pub async fn recv(&self, timeout: Duration) -> Result<Vec<u8>, ChannelError> {
        let (rx, _, _) = layout(self.slot);
        self.wait(timeout, |g, now| {
            let mem = g.mem.as_deref_mut().expect("allocated at the open");
            match g.dev.chans_mut(now).recv(self.handle, &mut *mem) {
                Ok(info) => {
                    let body = mem.range(rx + info.offset, info.len as usize).map(|b| b.to_vec());
                    g.dev.chans_mut(now).consume(self.handle, &mut *mem);
                    Some(body.ok_or(ChannelError::Malformed))
                }
                Err(keel_abi::Status::NoData) => None,
                Err(keel_abi::Status::ChannelClosed) => Some(Err(closed(g, self.handle))),
                Err(s) => Some(Err(ChannelError::Status(s))),
            }
        })
        .await
    }

    /// Closes the channel (as dropping it does).
    pub fn close(self) {}

    /// Runs `attempt` on the device until it gives an answer, after each thing the core
    /// received; [`ChannelError::Timeout`] after `timeout`.
    async fn wait<R>(
        &self,
        timeout: Duration,
        mut attempt: impl FnMut(&mut crate::Inner<N>, u64) -> Option<Result<R, ChannelError>>,
    ) -> Result<R, ChannelError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let woken = self.dev.app_wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            let answer = {
                let mut g = self.dev.lock();
                let now = self.dev.now(&g);
                attempt(&mut g, now)
            };
            if let Some(answer) = answer {
                // The core may have something to send now (a message, or room given back).
                self.dev.wake.notify_one();
                return answer;
            }
            if tokio::time::timeout_at(deadline, woken).await.is_err() {
                return Err(ChannelError::Timeout);
            }
        }
    }
}

impl<const N: usize> Drop for SimChannel<'_, N> {
    fn drop(&mut self) {
        let mut g = self.dev.lock();
        let now = self.dev.now(&g);
        g.dev.chans_mut(now).close(self.handle);
        if let Some(mem) = g.mem.as_deref_mut() {
            mem.in_use[self.slot] = false;
        }
        drop(g);
        self.dev.wake.notify_one();
    }
}

/// Why the channel closed, as an error.
fn closed<const N: usize>(g: &crate::Inner<N>, handle: u32) -> ChannelError {
    ChannelError::Closed(g.dev.channels().info(handle).map_or(0, |i| i.reason))
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
        let (rx, _, _) = layout(0);
        assert!(m.write(rx, &[1, 2, 3, 4], true));
        let mut b = [0u8; 4];
        assert!(m.read(rx, &mut b, true));
        assert_eq!(b, [1, 2, 3, 4]);
        assert!(!m.read(MEM_BASE - 1, &mut b, true), "below");
        let (_, _, scratch) = layout(SLOTS - 1);
        assert!(!m.read(scratch + SCRATCH_LEN - 3, &mut b, true), "straddling the end");
        assert!(!m.write(u32::MAX - 1, &b, true), "at the top of the address space");
    }
}
