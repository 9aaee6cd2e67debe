//! The server's end of one channel (sans-IO, needs `alloc`): reassembles the device's messages
//! within the credit it granted, and cuts its own messages into pieces within the device's
//! credit. The server's connection keeps one [`Peer`] per open channel and its services (HTTP
//! proxy, MQTT session, configuration) exchange whole messages with it.

use alloc::collections::VecDeque;
use alloc::vec::Vec;

use keel_abi::chan::{record_cost, Reason};
use keel_proto::msg::MAX_CHAN_DATA;

/// One channel, server side.
#[derive(Debug)]
pub struct Peer {
    ch: u32,
    /// The device's message being reassembled.
    partial: Vec<u8>,
    /// Credit the device still has for its messages.
    in_credit: u32,
    /// Our buffer for the device's messages (the window we granted).
    in_window: u32,
    /// Credit we have for messages to the device.
    out_credit: u32,
    /// The device's receive buffer: no message may cost more.
    out_max: u32,
    queue: VecDeque<Vec<u8>>,
    /// Bytes of the front message already sent.
    sent: usize,
    /// The front message's cost is reserved from `out_credit`.
    reserved: bool,
}

/// A message too large for the device's receive buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TooLarge;

impl Peer {
    /// A channel the device opened with receive window `window`; `in_window` is the credit
    /// granted to the device (the largest message the server accepts on it).
    pub fn new(ch: u32, window: u32, in_window: u32) -> Peer {
        Peer {
            ch,
            partial: Vec::new(),
            in_credit: in_window,
            in_window,
            out_credit: window,
            out_max: window,
            queue: VecDeque::new(),
            sent: 0,
            reserved: false,
        }
    }

    /// The channel's wire id.
    pub fn ch(&self) -> u32 {
        self.ch
    }

    /// The largest message the device can receive on this channel (its buffer less the
    /// record header).
    pub fn max_message(&self) -> usize {
        self.out_max.saturating_sub(4) as usize
    }

    /// A piece of the device's message: the whole message once `last` arrives. More than the
    /// granted credit is a protocol error.
    pub fn data(&mut self, last: bool, data: &[u8]) -> Result<Option<Vec<u8>>, Reason> {
        let total = self.partial.len() + data.len();
        if total > u32::MAX as usize || record_cost(total as u32) > self.in_credit {
            return Err(Reason::ProtocolError);
        }
        self.partial.extend_from_slice(data);
        if !last {
            return Ok(None);
        }
        self.in_credit -= record_cost(total as u32);
        Ok(Some(core::mem::take(&mut self.partial)))
    }

    /// The service is done with a message of `len` bytes from the device: the credit to give
    /// back (send it as `ChanCredit`).
    pub fn release(&mut self, len: usize) -> u32 {
        let cost = record_cost(len.min(u32::MAX as usize - 8) as u32).min(self.in_window - self.in_credit);
        self.in_credit += cost;
        cost
    }

    /// More credit from the device.
    pub fn credit(&mut self, bytes: u32) -> Result<(), Reason> {
        self.out_credit = self.out_credit.checked_add(bytes).ok_or(Reason::ProtocolError)?;
        if self.out_credit > self.out_max {
            // More than the device's buffer can ever hold: it is lying.
            return Err(Reason::ProtocolError);
        }
        Ok(())
    }

    /// Queues a message for the device.
    pub fn push(&mut self, msg: Vec<u8>) -> Result<(), TooLarge> {
        if msg.len() > self.max_message() {
            return Err(TooLarge);
        }
        self.queue.push_back(msg);
        Ok(())
    }

    /// Messages (and bytes) queued for the device and not fully sent.
    pub fn queued(&self) -> (usize, usize) {
        (self.queue.len(), self.queue.iter().map(Vec::len).sum::<usize>() - self.sent)
    }

    /// True when [`Peer::next_piece`] would return a piece.
    pub fn ready(&self) -> bool {
        self.queue.front().is_some_and(|m| self.reserved || record_cost(m.len() as u32) <= self.out_credit)
    }

    /// The next piece for the device (`last`, bytes), if the device's credit allows; call
    /// [`Peer::piece_sent`] after sending it.
    pub fn next_piece(&mut self) -> Option<(bool, &[u8])> {
        if !self.ready() {
            return None;
        }
        let m = self.queue.front()?;
        if !self.reserved {
            self.out_credit -= record_cost(m.len() as u32);
            self.reserved = true;
        }
        let end = (self.sent + MAX_CHAN_DATA).min(m.len());
        Some((end == m.len(), &m[self.sent..end]))
    }

    /// The piece [`Peer::next_piece`] returned went out.
    pub fn piece_sent(&mut self) {
        let Some(m) = self.queue.front() else { return };
        let end = (self.sent + MAX_CHAN_DATA).min(m.len());
        if end == m.len() {
            self.queue.pop_front();
            self.sent = 0;
            self.reserved = false;
        } else {
            self.sent = end;
        }
    }
}
