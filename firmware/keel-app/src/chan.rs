//! Channels (since ABI 2.1): whole messages to and from a service of the Keel server (an HTTP(S)
//! proxy, a managed MQTT session, configuration and secrets), over buffers the app provides.
//!
//! [`Channel::open`] takes a receive and a transmit buffer as `&mut [u32]` (so they are 4-byte
//! aligned, as the ABI requires) and keeps them borrowed until the channel is closed (dropped):
//! from then on only the visor writes the receive buffer and reads the transmit buffer.
//! Sizes: multiples of 4 bytes from 64 bytes ([`keel_abi::chan::MIN_RX`]) to 64 KiB
//! ([`keel_abi::chan::MAX_BUFFER`]); the largest message a channel receives is `rx_len - 4`
//! bytes, the largest it sends `tx_len - 4` (see [`keel_abi::chan`]).
//!
//! Receiving reads a message in place: [`Channel::recv_with`] hands the oldest message to a
//! closure as `&[u8]` pointing into the receive buffer, then frees it. Sending copies the message
//! into the transmit buffer; the visor sends it when the server's credit allows.
//!
//! Every operation has three forms: non-blocking (`recv_with`, `send`: [`Status::NoData`] or
//! [`Status::WouldBlock`] when not ready), blocking with a timeout (`recv_wait_with`,
//! `send_wait`: `wfi` between notifications) and async (`recv_async`, `send_async`, for an
//! executor). The channel's notification records are consumed by the SDK (see
//! [`crate::notify`]); the waits are woken by them and then ask the visor.
//!
//! **Do not leak a channel** (`core::mem::forget`, a reference cycle): closing it is what stops
//! the visor writing its receive buffer, and the borrow of the buffers ends with the leak. Drop
//! it (or [`Channel::close`] it) instead; give it `'static` buffers if it must live forever.

use core::marker::PhantomData;

pub use keel_abi::chan::{ChanInfo, Kind, MsgInfo, Reason, State};
use keel_abi::chan::{OpenParams, MAX_ENDPOINT};
use keel_abi::{Call, Status};

use crate::notify;

/// One open channel over the app's buffers, borrowed for `'b`. Closed when dropped.
pub struct Channel<'b> {
    handle: u32,
    kind: Kind,
    /// Start of the receive buffer (derived from the `&'b mut` given to [`Channel::open`]).
    rx: *const u8,
    /// Its length in bytes.
    rx_len: usize,
    _buffers: PhantomData<&'b mut [u32]>,
}

fn byte_len(words: usize) -> Result<u32, Status> {
    words.checked_mul(4).and_then(|b| u32::try_from(b).ok()).ok_or(Status::InvalidBufferSize)
}

fn call(c: Call, a0: u32, a1: u32, a2: u32) -> Result<(), Status> {
    // SAFETY: callers pass pointers to their own live locals of the right size (the call writes
    // there), or to memory the call only reads.
    crate::status(unsafe { crate::raw::call(c as u32, a0, a1, a2, 0) })
}

fn deadline(timeout_ms: u32) -> u64 {
    crate::monotonic_us().saturating_add(timeout_ms as u64 * 1000)
}

impl<'b> Channel<'b> {
    /// Opens a channel of `kind` to `endpoint` (MQTT: the broker profile's name, at most 64
    /// printable ASCII characters; empty for HTTP and config) with the app's receive and
    /// transmit buffers. `tag` is carried in the channel's notification records. Sets up the
    /// notification ring first.
    ///
    /// The server learns of the channel with its first message; the visor answers
    /// [`Status::NetworkNotConnected`] while the link is down.
    pub fn open(
        kind: Kind,
        endpoint: &str,
        rx: &'b mut [u32],
        tx: &'b mut [u32],
        tag: u32,
    ) -> Result<Channel<'b>, Status> {
        notify::init()?;
        if endpoint.len() > MAX_ENDPOINT as usize {
            return Err(Status::InvalidArgument);
        }
        let rx_len = byte_len(rx.len())?;
        let tx_len = byte_len(tx.len())?;
        let rx_ptr = rx.as_mut_ptr() as *mut u8;
        let p = OpenParams {
            version: 1,
            kind: kind as u32,
            tag,
            rx_buf: rx_ptr as u32,
            rx_len,
            tx_buf: tx.as_mut_ptr() as u32,
            tx_len,
            endpoint: endpoint.as_ptr() as u32,
            endpoint_len: endpoint.len() as u32,
        };
        let mut handle = 0u32;
        call(Call::ChanOpen, &p as *const OpenParams as u32, &mut handle as *mut u32 as u32, 0)?;
        notify::forget_channel_records(handle);
        Ok(Channel { handle, kind, rx: rx_ptr, rx_len: rx_len as usize, _buffers: PhantomData })
    }

    /// The channel's handle (as in its notification records).
    pub fn handle(&self) -> u32 {
        self.handle
    }

    /// Queues this channel's notification records ([`Kind`](crate::notify::Kind)
    /// `CHANNEL_READABLE`, `CHANNEL_WRITABLE`, `CHANNEL_CLOSED`) for [`crate::notify::pop`] and
    /// [`crate::notify::next`] from now on. By default the SDK drops them (the channel's own
    /// waits check its state with system calls); keep them to dispatch or time events yourself
    /// (a readable record carries the visor's time of writing it: see
    /// [`keel_abi::notify::Record::posted_at_us`]). Queued records count against the queue's
    /// [`crate::notify::QUEUE`]: read them.
    pub fn keep_records(&self) {
        notify::keep_channel_records(self.handle);
    }

    /// The channel's kind.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The channel's state, closure reason and buffer levels.
    pub fn info(&self) -> Result<ChanInfo, Status> {
        let mut i = ChanInfo { version: 1, ..Default::default() };
        call(Call::ChanInfo, self.handle, &mut i as *mut ChanInfo as u32, 0)?;
        Ok(i)
    }

    /// Why the channel is closed ([`Reason::None`] while it is open, or if the visor's answer
    /// is unknown to this SDK).
    pub fn close_reason(&self) -> Reason {
        self.info().ok().and_then(|i| Reason::from_u8(i.reason as u8)).unwrap_or(Reason::None)
    }

    /// Queues one whole message (at most `tx_len - 4` bytes). [`Status::WouldBlock`]: no room
    /// yet (retry after earlier messages went out); [`Status::ChannelClosed`]: closed by the
    /// server or the link; [`Status::RateLimited`]: too many channels opened in a short time.
    pub fn send(&mut self, msg: &[u8]) -> Result<(), Status> {
        let len = u32::try_from(msg.len()).map_err(|_| Status::InvalidBufferSize)?;
        call(Call::ChanSend, self.handle, msg.as_ptr() as u32, len)
    }

    /// Where the oldest complete message lies in the receive buffer.
    fn peek(&self) -> Result<MsgInfo, Status> {
        let mut m = MsgInfo { version: 1, ..Default::default() };
        call(Call::ChanRecv, self.handle, &mut m as *mut MsgInfo as u32, 0)?;
        Ok(m)
    }

    /// The range of message `m` (from [`Channel::peek`]) in the receive buffer, checked to lie
    /// inside it.
    fn range(&self, m: &MsgInfo) -> Result<(usize, usize), Status> {
        let (off, len) = (m.offset as usize, m.len as usize);
        match off.checked_add(len) {
            Some(end) if end <= self.rx_len => Ok((off, len)),
            // The visor reports messages inside the buffer; never read outside it anyway.
            _ => Err(Status::InternalError),
        }
    }

    /// The bytes `off..off + len` of the receive buffer.
    ///
    /// # Safety
    /// The range must be that of a message [`Channel::peek`] reported (so checked by
    /// [`Channel::range`]) and not consumed since, for as long as the slice lives.
    pub(crate) unsafe fn rx_slice(&self, off: usize, len: usize) -> &[u8] {
        // SAFETY: the range lies inside the receive buffer this channel borrows for 'b (no other
        // reference to it exists: the `&'b mut` was turned into `rx`). The visor wrote the whole
        // message before `ChanRecv` reported it (a system call, which the compiler treats as able
        // to write the buffer, whose address it was given) and does not write these bytes again
        // until the message is consumed: it appends new messages after the last one and starts
        // again at offset 0 only when every message has been consumed. The caller guarantees no
        // consume happens while the slice lives.
        unsafe { core::slice::from_raw_parts(self.rx.add(off), len) }
    }

    /// Hands the message `m` (from [`Channel::peek`]) to `f`, then frees it.
    fn read<R>(&mut self, m: MsgInfo, f: impl FnOnce(&[u8]) -> R) -> Result<R, Status> {
        let (off, len) = self.range(&m)?;
        // SAFETY: reported by `peek` and checked by `range`; consuming needs `&mut self`, which
        // this borrow holds until `f` returns, and the slice does not outlive `f`.
        let r = f(unsafe { self.rx_slice(off, len) });
        call(Call::ChanConsume, self.handle, 0, 0)?;
        Ok(r)
    }

    /// Waits up to `timeout_ms` for a message and returns its range in the receive buffer
    /// without consuming it ([`Status::NoData`] at the timeout).
    pub(crate) fn peek_wait(&mut self, timeout_ms: u32) -> Result<(usize, usize), Status> {
        // A message already there is taken without touching the notification ring (as
        // `send_wait` does).
        match self.peek() {
            Err(Status::NoData) => {}
            r => return r.and_then(|m| self.range(&m)),
        }
        let end = deadline(timeout_ms);
        loop {
            let seen = notify::events();
            match self.peek() {
                Ok(m) => return self.range(&m),
                Err(Status::NoData) => {}
                Err(e) => return Err(e),
            }
            if crate::monotonic_us() >= end {
                return Err(Status::NoData);
            }
            notify::block(seen, Some(end));
        }
    }

    /// Reads the oldest message in place, handing it to `f`, then frees it (the room goes back
    /// to the server). [`Status::NoData`] if no message waits (`f` is not called);
    /// [`Status::ChannelClosed`] if none waits and the channel was closed (messages received
    /// before the closure are still read first).
    pub fn recv_with<R>(&mut self, f: impl FnOnce(&[u8]) -> R) -> Result<R, Status> {
        let m = self.peek()?;
        self.read(m, f)
    }

    /// [`Channel::recv_with`], waiting up to `timeout_ms` for a message.
    /// [`Status::NoData`] at the timeout.
    pub fn recv_wait_with<R>(&mut self, timeout_ms: u32, f: impl FnOnce(&[u8]) -> R) -> Result<R, Status> {
        let (off, len) = self.peek_wait(timeout_ms)?;
        // SAFETY: the range of a message `peek_wait` reported; consuming needs `&mut self`, held
        // until `f` returns, and the slice does not outlive `f`.
        let r = f(unsafe { self.rx_slice(off, len) });
        call(Call::ChanConsume, self.handle, 0, 0)?;
        Ok(r)
    }

    /// [`Channel::recv_with`] as a future: completes when a message was read or the channel
    /// fails (no timeout: race it with [`crate::notify::at`] for one).
    pub async fn recv_async<R>(&mut self, f: impl FnOnce(&[u8]) -> R) -> Result<R, Status> {
        loop {
            let seen = notify::events();
            match self.peek() {
                Ok(m) => return self.read(m, f),
                Err(Status::NoData) => notify::changed(seen).await,
                Err(e) => return Err(e),
            }
        }
    }

    /// [`Channel::send`], retrying for up to `timeout_ms` while the transmit buffer is full
    /// (after each notification). [`Status::WouldBlock`] at the timeout.
    ///
    /// A send that finds room makes one system call and leaves the notification ring alone: an
    /// app that sends with interrupts masked sees its ring exactly as the visor wrote it.
    pub fn send_wait(&mut self, msg: &[u8], timeout_ms: u32) -> Result<(), Status> {
        match self.send(msg) {
            Err(Status::WouldBlock) => {}
            r => return r,
        }
        let end = deadline(timeout_ms);
        loop {
            let seen = notify::events();
            match self.send(msg) {
                Err(Status::WouldBlock) => {}
                r => return r,
            }
            if crate::monotonic_us() >= end {
                return Err(Status::WouldBlock);
            }
            notify::block(seen, Some(end));
        }
    }

    /// [`Channel::send`] as a future, retrying while the transmit buffer is full (no timeout:
    /// race it with [`crate::notify::at`] for one).
    pub async fn send_async(&mut self, msg: &[u8]) -> Result<(), Status> {
        loop {
            let seen = notify::events();
            match self.send(msg) {
                Err(Status::WouldBlock) => notify::changed(seen).await,
                r => return r,
            }
        }
    }

    /// Closes the channel now (dropping it does the same and ignores the status).
    pub fn close(mut self) -> Result<(), Status> {
        self.close_inner()
    }

    fn close_inner(&mut self) -> Result<(), Status> {
        if self.handle == 0 {
            return Ok(());
        }
        let old = self.handle;
        // The visor writes 0 to the handle, in every case.
        let r = call(Call::ChanClose, &mut self.handle as *mut u32 as u32, 0, 0);
        self.handle = 0;
        notify::channel_closed(old);
        r
    }
}

impl Drop for Channel<'_> {
    fn drop(&mut self) {
        let _ = self.close_inner();
    }
}

/// The name of a closure reason given as a raw value (from [`ChanInfo::reason`] or a
/// [`crate::notify::Kind::ChannelClosed`] record), for logs.
pub fn reason_name(raw: u32) -> &'static str {
    u8::try_from(raw).ok().and_then(Reason::from_u8).map_or("unknown", Reason::as_str)
}

/// Scratch space for encoding a request on the stack: the helpers of [`crate::http`],
/// [`crate::config`] and [`crate::mqtt`] encode into this many bytes unless given a scratch
/// buffer of their own.
pub const STACK_SCRATCH: usize = 1024;

/// Encodes `m` into `scratch` and sends it, waiting up to `timeout_ms` for room.
pub(crate) fn send_msg(
    ch: &mut Channel<'_>,
    m: &crate::msg::Msg<'_>,
    scratch: &mut [u8],
    timeout_ms: u32,
) -> Result<(), crate::Error> {
    let n = m.encode(scratch).map_err(|_| crate::Error::TooLarge)?;
    ch.send_wait(&scratch[..n], timeout_ms).map_err(|e| send_error(ch, e))
}

/// The error of a failed send: a message too large for the buffer is [`crate::Error::TooLarge`],
/// a closed channel says why.
pub(crate) fn send_error(ch: &Channel<'_>, e: Status) -> crate::Error {
    match e {
        Status::InvalidBufferSize => crate::Error::TooLarge,
        Status::ChannelClosed => crate::Error::Closed(ch.close_reason()),
        e => crate::Error::Sys(e),
    }
}

/// The error of a failed receive: a closed channel says why.
pub(crate) fn recv_error(ch: &Channel<'_>, e: Status) -> crate::Error {
    match e {
        Status::ChannelClosed => crate::Error::Closed(ch.close_reason()),
        e => crate::Error::Sys(e),
    }
}
