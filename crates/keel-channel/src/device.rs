//! The channel table the visor keeps for the app (sans-IO).
//!
//! [`Channels`] owns every decision about the app's channels; the shell (the visor, keel-sim)
//! gives it the app's memory ([`AppMemory`], checked on every access), link messages
//! ([`Channels::receive`]) and asks it for messages to send ([`Channels::poll_transmit`]) and
//! for notification records to post ([`Channels::take_notification`]).
//!
//! Buffers hold message records (`u32` length, bytes, padding to 4; see `keel_abi::chan`).
//! Both are linear: records are appended from offset 0 and the buffer starts again at 0 when it
//! is empty. The receive side gives the server credit for exactly the room left, so a message
//! never has to be dropped; the transmit side sends a message only when the server's credit
//! covers it, reading it from the app's buffer at that moment.
//!
//! What the app controls is treated as hostile: a length word it overwrote in either buffer is
//! checked against what the visor wrote, and an access its memory protection refuses closes the
//! channel with [`Reason::BufferFault`]. Handles carry a generation, so a stale handle (closed,
//! or from an earlier app start) is [`Status::InvalidHandle`], never another channel.

use keel_abi::chan::{record_cost, ChanInfo, Kind, MsgInfo, OpenParams, Reason, State, MAX_CHANNELS, MAX_ENDPOINT};
use keel_abi::notify::{Kind as Note, Record};
use keel_abi::Status;
use keel_proto::msg::{Down, Up, MAX_CHAN_DATA};

impl<T: AppMemory + ?Sized> AppMemory for &mut T {
    fn read(&mut self, addr: u32, buf: &mut [u8], unprivileged: bool) -> bool {
        (**self).read(addr, buf, unprivileged)
    }
    fn write(&mut self, addr: u32, data: &[u8], unprivileged: bool) -> bool {
        (**self).write(addr, data, unprivileged)
    }
}

/// The app's memory as the visor reaches it. Every access is checked when it happens (the app
/// may change its memory protection at any time), with the app privilege it is made for:
/// `unprivileged` (the app's thread mode with `CONTROL.nPRIV` set, e.g. an RTOS task) or
/// privileged. A refused access returns `false`.
///
/// A channel's buffers are always reached with the privilege of the code that opened it, also
/// later from the visor's own service routine: a buffer an unprivileged task registered is never
/// written once the app's MPU takes it from unprivileged code.
pub trait AppMemory {
    /// Reads `buf.len()` bytes at `addr`.
    fn read(&mut self, addr: u32, buf: &mut [u8], unprivileged: bool) -> bool;
    /// Writes `data` at `addr`.
    fn write(&mut self, addr: u32, data: &[u8], unprivileged: bool) -> bool;
}

/// Token bucket of wire opens: a burst of this many channels...
pub const OPEN_BURST: u32 = 16;
/// ...then one more every this many microseconds (20 per second).
pub const OPEN_EVERY_US: u64 = 50_000;
/// Notification records held until the shell posts them.
pub const NOTE_QUEUE: usize = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wire {
    /// Not announced to the server yet (nothing sent).
    Local,
    /// `ChanOpen` is due.
    OpenDue,
    /// `ChanOpen` sent; waiting for `ChanOpened`.
    Requested,
    /// Open at both ends.
    Open,
    /// Closed by the server or the link.
    Closed(Reason),
}

#[derive(Clone, Copy, Debug)]
struct Region {
    addr: u32,
    len: u32,
}

#[derive(Clone, Copy, Debug)]
struct Chan {
    handle: u32,
    ch: u32,
    kind: Kind,
    tag: u32,
    endpoint: [u8; MAX_ENDPOINT as usize],
    endpoint_len: u8,
    rx: Region,
    tx: Region,
    /// Opened by unprivileged app code: its buffers are checked as unprivileged.
    unprivileged: bool,
    wire: Wire,
    // Receive side.
    rx_read: u32,
    rx_write: u32,
    rx_msgs: u32,
    rx_partial: u32,
    /// Credit the server still has.
    rx_credit: u32,
    /// Credit to give the server with the next `ChanCredit`.
    rx_grant: u32,
    // Transmit side.
    tx_read: u32,
    tx_write: u32,
    tx_msgs: u32,
    /// Length of the message being sent (read when its first piece went out) and bytes sent.
    tx_cur: Option<(u32, u32)>,
    /// Credit the server gave us and we have not used.
    tx_credit: u32,
    /// The head message costs more than the credit: wait for `ChanCredit`.
    tx_stalled: bool,
    /// The server's window (`ChanOpened`): no message may cost more (`u32::MAX` until known).
    tx_window: u32,
    tx_blocked: bool,
}

impl Chan {
    fn state(&self) -> State {
        match self.wire {
            Wire::Local | Wire::OpenDue | Wire::Requested => State::Opening,
            Wire::Open => State::Open,
            Wire::Closed(_) => State::Closed,
        }
    }

    fn reason(&self) -> Reason {
        match self.wire {
            Wire::Closed(r) => r,
            _ => Reason::None,
        }
    }

    fn tx_free(&self) -> u32 {
        let room = if self.tx_msgs == 0 && self.tx_cur.is_none() { self.tx.len } else { self.tx.len - self.tx_write };
        room.saturating_sub(4) & !3
    }
}

/// Counters for tests and the bench.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChanCounters {
    /// Channels opened by the app.
    pub opened: u64,
    /// Channels closed by the app.
    pub closed: u64,
    /// Messages received from the server and written to receive buffers.
    pub msgs_in: u64,
    /// Messages sent to the server.
    pub msgs_out: u64,
    /// Channel messages for an unknown channel (ignored).
    pub stray: u64,
    /// Notification records that did not fit [`NOTE_QUEUE`].
    pub notes_lost: u64,
}

/// The app's channels.
#[derive(Debug)]
pub struct Channels {
    slots: [Option<Chan>; MAX_CHANNELS],
    /// Wire id of the next channel announced to the server (never reused on a connection).
    next_ch: u32,
    /// Generation for handles.
    generation: u32,
    /// `ChanClose` messages due for channels the app already freed.
    closes: [u32; MAX_CHANNELS * 2],
    n_closes: usize,
    tokens: u32,
    tokens_at: u64,
    notes: [Record; NOTE_QUEUE],
    n_notes: usize,
    rr: usize,
    counters: ChanCounters,
}

impl Default for Channels {
    fn default() -> Self {
        Channels::new()
    }
}

impl Channels {
    /// No channels.
    pub const fn new() -> Channels {
        Channels {
            slots: [None; MAX_CHANNELS],
            next_ch: 1,
            generation: 0,
            closes: [0; MAX_CHANNELS * 2],
            n_closes: 0,
            tokens: OPEN_BURST,
            tokens_at: 0,
            notes: [Record { kind: 0, flags: 0, tag: 0, value: 0 }; NOTE_QUEUE],
            n_notes: 0,
            rr: 0,
            counters: ChanCounters { opened: 0, closed: 0, msgs_in: 0, msgs_out: 0, stray: 0, notes_lost: 0 },
        }
    }

    /// Counters.
    pub fn counters(&self) -> ChanCounters {
        self.counters
    }

    /// Channels open (any state).
    pub fn open_count(&self) -> usize {
        self.slots.iter().flatten().count()
    }

    /// The address ranges of every open channel's buffers (for overlap checks of other
    /// resources, such as a new notification ring).
    pub fn buffers(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        self.slots.iter().flatten().flat_map(|c| [(c.rx.addr, c.rx.len), (c.tx.addr, c.tx.len)])
    }

    fn note(&mut self, kind: Note, tag: u32, value: u64) {
        if self.n_notes == NOTE_QUEUE {
            self.counters.notes_lost += 1;
            return;
        }
        self.notes[self.n_notes] = Record::new(kind, tag, value);
        self.n_notes += 1;
    }

    /// True if [`Channels::take_notification`] has a record.
    pub fn has_notifications(&self) -> bool {
        self.n_notes > 0
    }

    /// The next notification record to post to the app's ring, oldest first.
    pub fn take_notification(&mut self) -> Option<Record> {
        if self.n_notes == 0 {
            return None;
        }
        let r = self.notes[0];
        self.notes.copy_within(1..self.n_notes, 0);
        self.n_notes -= 1;
        Some(r)
    }

    /// Records lost because the queue was full (and forgets them): the shell adds them to the
    /// ring's overrun count.
    pub fn take_notes_lost(&mut self) -> u64 {
        core::mem::take(&mut self.counters.notes_lost)
    }

    fn slot_of(&self, handle: u32) -> Option<usize> {
        let i = (handle & 0xFF).checked_sub(1)? as usize;
        self.slots.get(i)?.as_ref().filter(|c| c.handle == handle).map(|_| i)
    }

    /// Opens a channel. The shell has checked that both buffers are writable app memory for the
    /// caller (`unprivileged`: the caller's privilege, used for every later access to them) and
    /// copied the endpoint; `reserved` are other regions the buffers must not overlap (the
    /// notification ring).
    pub fn open(
        &mut self,
        p: &OpenParams,
        endpoint: &[u8],
        online: bool,
        reserved: &[(u32, u32)],
        unprivileged: bool,
    ) -> Result<u32, Status> {
        let kind = p.check()?;
        if endpoint.len() > MAX_ENDPOINT as usize || endpoint.iter().any(|c| !(0x21..0x7F).contains(c)) {
            return Err(Status::InvalidArgument);
        }
        let free = self.slots.iter().position(|s| s.is_none()).ok_or(Status::TooManyChannels)?;
        let mine = [(p.rx_buf, p.rx_len), (p.tx_buf, p.tx_len)];
        if self.buffers().chain(reserved.iter().copied()).any(|o| mine.iter().any(|m| keel_abi::chan::overlaps(*m, o)))
        {
            return Err(Status::BufferInUse);
        }
        if !online {
            return Err(Status::NetworkNotConnected);
        }
        self.generation = self.generation.wrapping_add(1) & 0x00FF_FFFF;
        let handle = self.generation.max(1) << 8 | (free as u32 + 1);
        let mut ep = [0u8; MAX_ENDPOINT as usize];
        ep[..endpoint.len()].copy_from_slice(endpoint);
        self.slots[free] = Some(Chan {
            handle,
            ch: 0,
            kind,
            tag: p.tag,
            endpoint: ep,
            endpoint_len: endpoint.len() as u8,
            rx: Region { addr: p.rx_buf, len: p.rx_len },
            tx: Region { addr: p.tx_buf, len: p.tx_len },
            unprivileged,
            wire: Wire::Local,
            rx_read: 0,
            rx_write: 0,
            rx_msgs: 0,
            rx_partial: 0,
            rx_credit: p.rx_len,
            rx_grant: 0,
            tx_read: 0,
            tx_write: 0,
            tx_msgs: 0,
            tx_cur: None,
            tx_credit: 0,
            tx_stalled: false,
            tx_window: u32::MAX,
            tx_blocked: false,
        });
        self.counters.opened += 1;
        Ok(handle)
    }

    fn queue_close(&mut self, ch: u32) {
        if self.n_closes < self.closes.len() {
            self.closes[self.n_closes] = ch;
            self.n_closes += 1;
        }
        // More closes than fit cannot happen (at most one per slot per poll); a lost close
        // only leaves the server's end open until the connection ends.
    }

    /// Closes a channel (the app's call). [`Status::InvalidHandle`] if the handle is not open.
    pub fn close(&mut self, handle: u32) -> Status {
        let Some(i) = self.slot_of(handle) else {
            return Status::InvalidHandle;
        };
        let c = self.slots[i].take().expect("slot_of checked it");
        if matches!(c.wire, Wire::Requested | Wire::Open) {
            self.queue_close(c.ch);
        }
        self.counters.closed += 1;
        Status::Ok
    }

    fn refill(&mut self, now: u64) {
        let earned = now.saturating_sub(self.tokens_at) / OPEN_EVERY_US;
        if earned > 0 {
            self.tokens = (self.tokens as u64 + earned).min(OPEN_BURST as u64) as u32;
            self.tokens_at += earned * OPEN_EVERY_US;
        }
        if self.tokens == OPEN_BURST {
            self.tokens_at = now;
        }
    }

    /// Queues one whole message in the channel's transmit buffer (the app's call; `src` is
    /// read with the caller's privilege, `caller_unprivileged`).
    pub fn send(
        &mut self,
        now: u64,
        handle: u32,
        src: u32,
        len: u32,
        caller_unprivileged: bool,
        mem: &mut (impl AppMemory + ?Sized),
    ) -> Status {
        let Some(i) = self.slot_of(handle) else {
            return Status::InvalidHandle;
        };
        let c = self.slots[i].as_ref().expect("checked");
        if let Wire::Closed(_) = c.wire {
            return Status::ChannelClosed;
        }
        // `len` first: `record_cost` of a length near u32::MAX would overflow.
        if len > c.tx.len || record_cost(len) > c.tx.len || record_cost(len) > c.tx_window {
            return Status::InvalidBufferSize;
        }
        let cost = record_cost(len);
        if c.wire == Wire::Local {
            self.refill(now);
            if self.tokens == 0 {
                return Status::RateLimited;
            }
        }
        let c = self.slots[i].as_mut().expect("checked");
        if c.tx_msgs == 0 && c.tx_cur.is_none() {
            c.tx_read = 0;
            c.tx_write = 0;
        }
        if c.tx_write + cost > c.tx.len {
            c.tx_blocked = true;
            return Status::WouldBlock;
        }
        // Copy the message into the transmit buffer, through a small bounce buffer.
        let (dst, up) = (c.tx.addr + c.tx_write, c.unprivileged);
        let mut chunk = [0u8; 64];
        let mut off = 0;
        while off < len {
            let n = (len - off).min(64) as usize;
            // A source running past 4 GiB is refused, never wrapped to address 0.
            let Some(at) = src.checked_add(off) else {
                return Status::ParameterFault;
            };
            if !mem.read(at, &mut chunk[..n], caller_unprivileged) {
                return Status::ParameterFault;
            }
            if !mem.write(dst + 4 + off, &chunk[..n], up) {
                return Status::ParameterFault;
            }
            off += n as u32;
        }
        let pad = (cost - 4 - len) as usize;
        if !mem.write(dst, &len.to_le_bytes(), up) || !mem.write(dst + 4 + len, &[0u8; 3][..pad], up) {
            return Status::ParameterFault;
        }
        c.tx_write += cost;
        c.tx_msgs += 1;
        if c.wire == Wire::Local {
            c.wire = Wire::OpenDue;
            self.tokens -= 1;
        }
        Status::Ok
    }

    fn fail(&mut self, i: usize, reason: Reason) {
        let Some(c) = self.slots[i].as_mut() else { return };
        if matches!(c.wire, Wire::Requested | Wire::Open) && reason != Reason::LinkLost {
            let ch = c.ch;
            self.queue_close(ch);
        }
        let c = self.slots[i].as_mut().expect("present");
        c.wire = Wire::Closed(reason);
        c.rx_partial = 0;
        c.tx_cur = None;
        let (tag, handle) = (c.tag, c.handle);
        self.note(Note::ChannelClosed, tag, handle as u64 | (reason as u64) << 32);
    }

    /// The oldest complete message of a channel (the app's call).
    pub fn recv(&mut self, handle: u32, mem: &mut (impl AppMemory + ?Sized)) -> Result<MsgInfo, Status> {
        let i = self.slot_of(handle).ok_or(Status::InvalidHandle)?;
        let c = self.slots[i].as_ref().expect("checked");
        if c.rx_msgs == 0 {
            return Err(if let Wire::Closed(_) = c.wire { Status::ChannelClosed } else { Status::NoData });
        }
        let len = self.head_len(i, mem)?;
        let c = self.slots[i].as_ref().expect("checked");
        Ok(MsgInfo { version: 1, offset: c.rx_read + 4, len, pending: c.rx_msgs })
    }

    /// Length of the oldest received message, read back from the app's buffer and checked.
    fn head_len(&mut self, i: usize, mem: &mut (impl AppMemory + ?Sized)) -> Result<u32, Status> {
        let c = self.slots[i].as_ref().expect("present");
        let mut w = [0u8; 4];
        if !mem.read(c.rx.addr + c.rx_read, &mut w, c.unprivileged) {
            self.fail(i, Reason::BufferFault);
            return Err(Status::ChannelClosed);
        }
        let len = u32::from_le_bytes(w);
        if len > c.rx_write - c.rx_read || record_cost(len) > c.rx_write - c.rx_read {
            // The app overwrote the length word the visor wrote.
            self.fail(i, Reason::BufferFault);
            return Err(Status::ChannelClosed);
        }
        Ok(len)
    }

    /// Frees the oldest message (the app's call).
    pub fn consume(&mut self, handle: u32, mem: &mut (impl AppMemory + ?Sized)) -> Status {
        let Some(i) = self.slot_of(handle) else {
            return Status::InvalidHandle;
        };
        if self.slots[i].as_ref().is_some_and(|c| c.rx_msgs == 0) {
            return Status::NoData;
        }
        let len = match self.head_len(i, mem) {
            Ok(l) => l,
            Err(s) => return s,
        };
        let c = self.slots[i].as_mut().expect("checked");
        c.rx_read += record_cost(len);
        c.rx_msgs -= 1;
        if c.rx_msgs == 0 && c.rx_partial == 0 {
            // Empty: start again at 0 and give the server the room back.
            c.rx_grant += c.rx_write;
            c.rx_read = 0;
            c.rx_write = 0;
        }
        Status::Ok
    }

    /// The channel's state (the app's call).
    pub fn info(&self, handle: u32) -> Result<ChanInfo, Status> {
        let c = self.slot_of(handle).and_then(|i| self.slots[i].as_ref()).ok_or(Status::InvalidHandle)?;
        Ok(ChanInfo {
            version: 1,
            kind: c.kind as u32,
            state: c.state() as u32,
            reason: c.reason() as u32,
            rx_pending: c.rx_msgs,
            tx_free: c.tx_free(),
        })
    }

    /// A channel message from the server. Returns `false` if it was not one.
    pub fn receive(&mut self, msg: &Down<'_>, mem: &mut (impl AppMemory + ?Sized)) -> bool {
        let ch = match *msg {
            Down::ChanOpened { ch, .. }
            | Down::ChanData { ch, .. }
            | Down::ChanCredit { ch, .. }
            | Down::ChanClosed { ch, .. } => ch,
            _ => return false,
        };
        let Some(i) = self
            .slots
            .iter()
            .position(|s| s.as_ref().is_some_and(|c| c.ch == ch && matches!(c.wire, Wire::Requested | Wire::Open)))
        else {
            self.counters.stray += 1;
            return true;
        };
        let c = self.slots[i].as_mut().expect("found");
        match *msg {
            Down::ChanOpened { window, .. } => {
                if c.wire == Wire::Requested {
                    c.wire = Wire::Open;
                    c.tx_credit = window;
                    c.tx_window = window;
                } else {
                    self.fail(i, Reason::ProtocolError);
                }
            }
            Down::ChanCredit { bytes, .. } => match c.tx_credit.checked_add(bytes) {
                Some(v) if c.wire == Wire::Open => {
                    c.tx_credit = v;
                    c.tx_stalled = false;
                }
                _ => self.fail(i, Reason::ProtocolError),
            },
            Down::ChanClosed { reason, .. } => {
                let r = match Reason::from_u8(reason) {
                    Some(Reason::None | Reason::ByApp) | None => Reason::ByServer,
                    Some(r) => r,
                };
                // The server knows: no ChanClose back.
                c.wire = Wire::Closed(r);
                c.rx_partial = 0;
                c.tx_cur = None;
                let (tag, handle) = (c.tag, c.handle);
                self.note(Note::ChannelClosed, tag, handle as u64 | (r as u64) << 32);
            }
            Down::ChanData { last, data, .. } => self.data(i, last, data, mem),
            _ => {}
        }
        true
    }

    fn data(&mut self, i: usize, last: bool, data: &[u8], mem: &mut (impl AppMemory + ?Sized)) {
        let c = self.slots[i].as_mut().expect("present");
        if c.wire != Wire::Open {
            return self.fail(i, Reason::ProtocolError);
        }
        let partial = c.rx_partial + data.len() as u32;
        let cost = record_cost(partial);
        if cost > c.rx_credit || c.rx_write + cost > c.rx.len {
            return self.fail(i, Reason::ProtocolError);
        }
        let at = c.rx.addr + c.rx_write;
        if !mem.write(at + 4 + c.rx_partial, data, c.unprivileged) {
            return self.fail(i, Reason::BufferFault);
        }
        c.rx_partial = partial;
        if !last {
            return;
        }
        let pad = (cost - 4 - partial) as usize;
        if !mem.write(at, &partial.to_le_bytes(), c.unprivileged)
            || !mem.write(at + 4 + partial, &[0u8; 3][..pad], c.unprivileged)
        {
            return self.fail(i, Reason::BufferFault);
        }
        c.rx_write += cost;
        c.rx_credit -= cost;
        c.rx_partial = 0;
        c.rx_msgs += 1;
        let (tag, handle) = (c.tag, c.handle);
        self.counters.msgs_in += 1;
        self.note(Note::ChannelReadable, tag, handle as u64);
    }

    /// The link dropped: every channel the server knew ends with [`Reason::LinkLost`] (channels
    /// not announced yet are closed too: their messages can no longer be sent in order).
    pub fn link_lost(&mut self) {
        self.n_closes = 0;
        for i in 0..MAX_CHANNELS {
            if self.slots[i].as_ref().is_some_and(|c| !matches!(c.wire, Wire::Closed(_))) {
                self.fail(i, Reason::LinkLost);
            }
        }
    }

    /// The app stopped (crash, restart, update): every channel is freed without notifications
    /// (the app's ring is gone); the server is told about those it knew.
    pub fn reset(&mut self) {
        for i in 0..MAX_CHANNELS {
            if let Some(c) = self.slots[i].take() {
                if matches!(c.wire, Wire::Requested | Wire::Open) {
                    self.queue_close(c.ch);
                }
            }
        }
        self.n_notes = 0;
    }

    /// True when [`Channels::poll_transmit`] has something to send.
    pub fn wants_transmit(&self) -> bool {
        self.n_closes > 0
            || self.slots.iter().flatten().any(|c| {
                c.wire == Wire::OpenDue
                    || (c.wire == Wire::Open && (c.rx_grant > 0 || (c.tx_msgs > 0 && !c.tx_stalled)))
            })
    }

    /// The next channel message for the link, if any: closes first, then one step of one
    /// channel in turn (open, credit, or one piece of its current message). `piece` holds the
    /// bytes of a `ChanData`.
    pub fn poll_transmit<'p>(
        &'p mut self,
        mem: &mut (impl AppMemory + ?Sized),
        piece: &'p mut [u8; MAX_CHAN_DATA],
    ) -> Option<Up<'p>> {
        if self.n_closes > 0 {
            let ch = self.closes[0];
            self.closes.copy_within(1..self.n_closes, 0);
            self.n_closes -= 1;
            return Some(Up::ChanClose { ch });
        }
        for k in 0..MAX_CHANNELS {
            let i = (self.rr + k) % MAX_CHANNELS;
            let Some(c) = self.slots[i].as_mut() else { continue };
            match c.wire {
                Wire::OpenDue => {
                    c.ch = self.next_ch;
                    self.next_ch = self.next_ch.wrapping_add(1).max(1);
                    c.wire = Wire::Requested;
                    self.rr = i + 1;
                    let c = self.slots[i].as_ref().expect("present");
                    return Some(Up::ChanOpen {
                        ch: c.ch,
                        kind: c.kind as u8,
                        endpoint: &c.endpoint[..c.endpoint_len as usize],
                        window: c.rx.len,
                    });
                }
                Wire::Open if c.rx_grant > 0 => {
                    self.rr = i + 1;
                    let bytes = core::mem::take(&mut c.rx_grant);
                    c.rx_credit += bytes;
                    return Some(Up::ChanCredit { ch: c.ch, bytes });
                }
                Wire::Open if c.tx_msgs > 0 => {
                    if let Some(n) = self.piece(i, mem, piece) {
                        self.rr = i + 1;
                        let c = self.slots[i].as_ref().expect("present");
                        let last = c.tx_cur.is_none();
                        let ch = c.ch;
                        return Some(Up::ChanData { ch, last, data: &piece[..n] });
                    }
                }
                _ => {}
            }
        }
        None
    }

    /// Reads the next piece of channel `i`'s current message into `piece`.
    fn piece(
        &mut self,
        i: usize,
        mem: &mut (impl AppMemory + ?Sized),
        piece: &mut [u8; MAX_CHAN_DATA],
    ) -> Option<usize> {
        let c = self.slots[i].as_mut()?;
        let (len, sent) = match c.tx_cur {
            Some(cur) => cur,
            None => {
                let mut w = [0u8; 4];
                if !mem.read(c.tx.addr + c.tx_read, &mut w, c.unprivileged) {
                    self.fail(i, Reason::BufferFault);
                    return None;
                }
                let len = u32::from_le_bytes(w);
                let avail = c.tx_write - c.tx_read;
                if len > avail || record_cost(len) > avail {
                    // The app overwrote the length word of a queued message.
                    self.fail(i, Reason::BufferFault);
                    return None;
                }
                if record_cost(len) > c.tx_window {
                    // Queued before the server said its window, and larger: it can never go.
                    self.fail(i, Reason::ProtocolError);
                    return None;
                }
                if record_cost(len) > c.tx_credit {
                    c.tx_stalled = true;
                    return None;
                }
                c.tx_credit -= record_cost(len);
                (len, 0)
            }
        };
        let n = (len - sent).min(MAX_CHAN_DATA as u32);
        if !mem.read(c.tx.addr + c.tx_read + 4 + sent, &mut piece[..n as usize], c.unprivileged) {
            self.fail(i, Reason::BufferFault);
            return None;
        }
        let sent = sent + n;
        if sent < len {
            c.tx_cur = Some((len, sent));
        } else {
            c.tx_cur = None;
            c.tx_read += record_cost(len);
            c.tx_msgs -= 1;
            self.counters.msgs_out += 1;
            if c.tx_msgs == 0 {
                c.tx_read = 0;
                c.tx_write = 0;
                if core::mem::take(&mut c.tx_blocked) && c.kind.reports_write_space() {
                    let (tag, handle) = (c.tag, c.handle);
                    self.note(Note::ChannelWritable, tag, handle as u64);
                }
            }
        }
        Some(n as usize)
    }
}
