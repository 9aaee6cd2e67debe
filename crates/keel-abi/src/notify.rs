//! Notification rings: how the visor reports asynchronous events to the app.
//!
//! No system call blocks. Instead the app gives the visor a ring of records in its own RAM and
//! chooses an interrupt line ([`crate::Call::NotifySetup`]); for every event the visor writes a
//! record, advances the ring's `head` and pends that interrupt. The app reads records from `tail`
//! to `head`, advances `tail`, and sleeps with `wfi` when the ring is empty. Nothing the app
//! writes into the ring (a wrong `tail`, garbage records) can affect the visor: it keeps its own
//! `head` and capacity and reads only `tail`, which it treats as untrusted.
//!
//! Layout (little endian, 4-byte aligned, [`ring_bytes`]`(n)` bytes):
//!
//! | offset | size | field | written by |
//! |---|---|---|---|
//! | 0 | 4 | `head`: records written so far (free running) | visor |
//! | 4 | 4 | `tail`: records consumed so far (free running) | app |
//! | 8 | 4 | `capacity`: `n` | visor, at setup |
//! | 12 | 4 | reserved, 0 | visor, at setup |
//! | 16 + 16 × (i mod n) | 16 | record `i` ([`Record`]) | visor |
//!
//! The ring is full when `head - tail >= n` (wrapping arithmetic). A record that finds the ring
//! full is lost and counted; before the next record that fits, the visor writes one
//! [`Kind::Overrun`] record carrying the count, so the app always knows what it missed.
//!
//! The visor's side of the protocol is [`Writer`] (host-tested here, used by the visor); the
//! SDKs implement the app's side (`keel_app::notify`, `keel_notify_pop` in `keel.h`).

/// Bytes before the first record.
pub const HEADER_LEN: u32 = 16;
/// Bytes per record.
pub const RECORD_LEN: u32 = 16;
/// Fewest records a ring may have.
pub const MIN_RECORDS: u32 = 2;
/// Most records a ring may have.
pub const MAX_RECORDS: u32 = 256;
/// Interrupt lines the app may choose on the reference board (mps2-an505): lines no device of
/// the board drives and the visor does not use.
pub const APP_IRQS: core::ops::RangeInclusive<u32> = 80..=91;
/// The line the SDKs use unless the app chooses another.
pub const DEFAULT_IRQ: u32 = 80;

/// Size in bytes of a ring with `records` records.
pub const fn ring_bytes(records: u32) -> u32 {
    HEADER_LEN + RECORD_LEN * records
}

/// The number of records of a ring of `bytes` bytes, if that is a valid ring size.
pub fn records_for(bytes: u32) -> Option<u32> {
    let n = bytes.checked_sub(HEADER_LEN)? / RECORD_LEN;
    (ring_bytes(n) == bytes && n.is_power_of_two() && (MIN_RECORDS..=MAX_RECORDS).contains(&n)).then_some(n)
}

/// What a record reports ([`Record::kind`]). Values are stable; new ones are only appended.
#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// An update is downloaded, verified and waits for the app to apply it
    /// ([`crate::Call::UpdateApply`]), or for its politeness time to end. `value`: 0.
    UpdateReady = 1,
    /// The app's timer ([`crate::Call::TimerSet`]) expired. `tag`: the tag it was set with;
    /// `value`: the monotonic time it fired (µs).
    Timer = 2,
    /// Records were lost because the ring was full. `value`: how many, since the previous record.
    Overrun = 3,
    /// The link's state changed (and once at once after [`crate::Call::NetRequest`]). `tag`: the
    /// request's tag; `value`: [`crate::chan::NetStatus::to_value`] (state in bits 0..8, offline
    /// reason in bits 8..16, wanted-by bits in 32..64). Since ABI 2.1.
    NetStatus = 4,
    /// A complete message waits on a channel ([`crate::Call::ChanRecv`]). One record per message.
    /// `tag`: the channel's tag; `value`: its handle in bits 0..32, and in bits 32..64 the low
    /// 32 bits of the monotonic time (µs) at which the visor wrote the record
    /// ([`Record::posted_at_us`]: event latency, arrival times). Since ABI 2.1.
    ChannelReadable = 5,
    /// Room came free in a channel's transmit buffer after a send answered
    /// [`crate::Status::WouldBlock`] (MQTT channels only: HTTP and config channels carry one
    /// request). `tag`, `value`: as [`Kind::ChannelReadable`]. Since ABI 2.1.
    ChannelWritable = 6,
    /// The server or the link closed a channel. `tag`: the channel's tag; `value`: the handle in
    /// bits 0..32, the [`crate::chan::Reason`] in bits 32..40. Since ABI 2.1.
    ChannelClosed = 7,
}

impl Kind {
    /// Decodes a raw kind.
    pub fn from_u16(v: u16) -> Option<Kind> {
        match v {
            1 => Some(Kind::UpdateReady),
            2 => Some(Kind::Timer),
            3 => Some(Kind::Overrun),
            4 => Some(Kind::NetStatus),
            5 => Some(Kind::ChannelReadable),
            6 => Some(Kind::ChannelWritable),
            7 => Some(Kind::ChannelClosed),
            _ => None,
        }
    }

    /// The C name (`KEEL_NOTIFY_...`).
    pub fn name(self) -> &'static str {
        match self {
            Kind::UpdateReady => "UPDATE_READY",
            Kind::Timer => "TIMER",
            Kind::Overrun => "OVERRUN",
            Kind::NetStatus => "NET_STATUS",
            Kind::ChannelReadable => "CHANNEL_READABLE",
            Kind::ChannelWritable => "CHANNEL_WRITABLE",
            Kind::ChannelClosed => "CHANNEL_CLOSED",
        }
    }
}

/// One record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Record {
    /// A [`Kind`].
    pub kind: u16,
    /// Reserved, 0.
    pub flags: u16,
    /// Which source (the timer's tag; 0 for visor events).
    pub tag: u32,
    /// The event's value (see [`Kind`]).
    pub value: u64,
}

impl Record {
    /// A record of `kind`.
    pub fn new(kind: Kind, tag: u32, value: u64) -> Record {
        Record { kind: kind as u16, flags: 0, tag, value }
    }

    /// The channel handle of a channel record (readable, writable, closed).
    pub fn channel_handle(&self) -> Option<u32> {
        match Kind::from_u16(self.kind)? {
            Kind::ChannelReadable | Kind::ChannelWritable | Kind::ChannelClosed => Some(self.value as u32),
            _ => None,
        }
    }

    /// When the visor wrote a readable or writable record: the low 32 bits of the monotonic
    /// time in µs (compare with the low 32 bits of the app's clock, wrapping).
    pub fn posted_at_us(&self) -> Option<u32> {
        match Kind::from_u16(self.kind)? {
            Kind::ChannelReadable | Kind::ChannelWritable => Some((self.value >> 32) as u32),
            _ => None,
        }
    }

    /// Stamps a readable or writable record with the time the visor writes it (`now_us`, its
    /// low 32 bits, into bits 32..64 of `value`); other records are left as they are.
    pub fn stamped(mut self, now_us: u64) -> Record {
        if self.posted_at_us().is_some() {
            self.value = (self.value & 0xFFFF_FFFF) | (now_us & 0xFFFF_FFFF) << 32;
        }
        self
    }

    /// Its bytes in the ring.
    pub fn to_bytes(&self) -> [u8; RECORD_LEN as usize] {
        let mut b = [0u8; RECORD_LEN as usize];
        b[0..2].copy_from_slice(&self.kind.to_le_bytes());
        b[2..4].copy_from_slice(&self.flags.to_le_bytes());
        b[4..8].copy_from_slice(&self.tag.to_le_bytes());
        b[8..16].copy_from_slice(&self.value.to_le_bytes());
        b
    }

    /// Decodes a record's bytes.
    pub fn from_bytes(b: &[u8; RECORD_LEN as usize]) -> Record {
        Record {
            kind: u16::from_le_bytes([b[0], b[1]]),
            flags: u16::from_le_bytes([b[2], b[3]]),
            tag: u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
            value: u64::from_le_bytes([b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]]),
        }
    }
}

/// The ring's memory as the visor reaches it: app memory, checked on every access (the app may
/// change its memory protection at any time). A method returns `None`/`false` when the access is
/// refused; the writer then counts the record as lost.
pub trait RingMemory {
    /// Reads the `tail` word.
    fn read_tail(&mut self) -> Option<u32>;
    /// Writes record slot `slot` (`0..capacity`).
    fn write_record(&mut self, slot: u32, bytes: &[u8; RECORD_LEN as usize]) -> bool;
    /// Writes the `head` word.
    fn write_head(&mut self, head: u32) -> bool;
}

/// What [`Writer::post`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Posted {
    /// The record is in the ring: pend the app's interrupt.
    Written,
    /// The ring was full (or unreachable): the record is lost and counted.
    Lost,
}

/// The visor's side of one ring: its own `head`, the capacity and the lost-record count. The
/// app's `tail` is read on every post and never trusted beyond deciding whether there is room.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Writer {
    head: u32,
    capacity: u32,
    lost: u32,
}

impl Writer {
    /// A writer for a fresh ring of `capacity` records (the caller wrote the header with
    /// `head = tail = 0`).
    pub fn new(capacity: u32) -> Writer {
        Writer { head: 0, capacity: capacity.max(1), lost: 0 }
    }

    /// Records lost and not yet reported by an overrun record.
    pub fn lost(&self) -> u32 {
        self.lost
    }

    /// Counts `n` records lost before they reached the ring (a queue in front of it was full):
    /// reported with the next overrun record like records the ring had no room for.
    pub fn add_lost(&mut self, n: u32) {
        self.lost = self.lost.saturating_add(n);
    }

    /// Free slots according to the app's `tail`; a `tail` that claims more was consumed than
    /// was written (a corrupt ring) counts as full.
    fn free(&self, mem: &mut impl RingMemory) -> u32 {
        match mem.read_tail() {
            Some(tail) => {
                let used = self.head.wrapping_sub(tail);
                self.capacity.saturating_sub(used)
            }
            None => 0,
        }
    }

    fn put(&mut self, mem: &mut impl RingMemory, r: &Record) -> bool {
        if !mem.write_record(self.head % self.capacity, &r.to_bytes()) {
            return false;
        }
        let next = self.head.wrapping_add(1);
        if !mem.write_head(next) {
            return false;
        }
        self.head = next;
        true
    }

    /// Appends `r` (after an [`Kind::Overrun`] record if records were lost before it).
    pub fn post(&mut self, mem: &mut impl RingMemory, r: &Record) -> Posted {
        let free = self.free(mem);
        let needed = if self.lost > 0 { 2 } else { 1 };
        if free < needed {
            if free == 1 && self.lost > 0 {
                // Room for the overrun record only: report everything lost so far, this one too.
                let overrun = Record::new(Kind::Overrun, 0, self.lost as u64 + 1);
                if self.put(mem, &overrun) {
                    self.lost = 0;
                    return Posted::Written;
                }
            }
            self.lost = self.lost.saturating_add(1);
            return Posted::Lost;
        }
        if self.lost > 0 {
            let overrun = Record::new(Kind::Overrun, 0, self.lost as u64);
            if !self.put(mem, &overrun) {
                self.lost = self.lost.saturating_add(1);
                return Posted::Lost;
            }
            self.lost = 0;
        }
        if self.put(mem, r) {
            Posted::Written
        } else {
            self.lost = self.lost.saturating_add(1);
            Posted::Lost
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use super::*;

    /// A ring in host memory, with the app's side implemented the way the SDKs do it.
    struct Ring {
        tail: u32,
        head: u32,
        slots: Vec<[u8; 16]>,
        refuse: bool,
    }

    impl Ring {
        fn new(n: u32) -> Ring {
            Ring { tail: 0, head: 0, slots: std::vec![[0; 16]; n as usize], refuse: false }
        }
        fn pop(&mut self) -> Option<Record> {
            if self.tail == self.head {
                return None;
            }
            let r = Record::from_bytes(&self.slots[(self.tail % self.slots.len() as u32) as usize]);
            self.tail = self.tail.wrapping_add(1);
            Some(r)
        }
    }

    impl RingMemory for Ring {
        fn read_tail(&mut self) -> Option<u32> {
            (!self.refuse).then_some(self.tail)
        }
        fn write_record(&mut self, slot: u32, bytes: &[u8; 16]) -> bool {
            if self.refuse {
                return false;
            }
            self.slots[slot as usize] = *bytes;
            true
        }
        fn write_head(&mut self, head: u32) -> bool {
            if self.refuse {
                return false;
            }
            self.head = head;
            true
        }
    }

    fn timer(tag: u32) -> Record {
        Record::new(Kind::Timer, tag, tag as u64 * 10)
    }

    #[test]
    fn channel_records_carry_their_handle_and_the_time_they_were_written() {
        let r = Record::new(Kind::ChannelReadable, 7, 0x0000_0102).stamped(0x1_2345_6789);
        assert_eq!(r.channel_handle(), Some(0x102));
        assert_eq!(r.posted_at_us(), Some(0x2345_6789), "the low 32 bits of the clock");
        // A closed record keeps its reason in bits 32..40; others are not stamped.
        let closed = Record::new(Kind::ChannelClosed, 7, 0x102 | 3 << 32).stamped(0xFFFF_FFFF);
        assert_eq!(closed.value, 0x102 | 3 << 32);
        assert_eq!(closed.posted_at_us(), None);
        let timer = Record::new(Kind::Timer, 1, 42).stamped(99);
        assert_eq!((timer.value, timer.channel_handle()), (42, None));
    }

    #[test]
    fn records_arrive_in_order_across_many_wraps() {
        let mut ring = Ring::new(4);
        let mut w = Writer::new(4);
        for i in 0..1000u32 {
            assert_eq!(w.post(&mut ring, &timer(i)), Posted::Written);
            assert_eq!(ring.pop(), Some(timer(i)));
        }
        assert_eq!(ring.pop(), None);
    }

    #[test]
    fn a_full_ring_loses_records_and_reports_them_before_the_next_one() {
        let mut ring = Ring::new(4);
        let mut w = Writer::new(4);
        for i in 0..10 {
            w.post(&mut ring, &timer(i));
        }
        // 4 fit, 6 were lost.
        assert_eq!(w.lost(), 6);
        let got: Vec<_> = core::iter::from_fn(|| ring.pop()).collect();
        assert_eq!(got, (0..4).map(timer).collect::<Vec<_>>());
        assert_eq!(w.post(&mut ring, &timer(99)), Posted::Written);
        assert_eq!(ring.pop(), Some(Record::new(Kind::Overrun, 0, 6)));
        assert_eq!(ring.pop(), Some(timer(99)));
        assert_eq!(ring.pop(), None);
        assert_eq!(w.lost(), 0);
    }

    #[test]
    fn with_one_free_slot_the_overrun_record_counts_the_record_that_did_not_fit() {
        let mut ring = Ring::new(2);
        let mut w = Writer::new(2);
        for i in 0..3 {
            w.post(&mut ring, &timer(i));
        }
        assert_eq!(ring.pop(), Some(timer(0)));
        // One slot free, one record lost so far: the next post writes Overrun(2) and nothing else.
        assert_eq!(w.post(&mut ring, &timer(7)), Posted::Written);
        assert_eq!(ring.pop(), Some(timer(1)));
        assert_eq!(ring.pop(), Some(Record::new(Kind::Overrun, 0, 2)));
        assert_eq!(ring.pop(), None);
    }

    #[test]
    fn a_hostile_tail_never_lets_the_visor_overwrite_unread_records_or_fail() {
        for bogus in [1u32, 3, 5, 100, u32::MAX, u32::MAX - 2, 0x8000_0000] {
            let mut ring = Ring::new(4);
            let mut w = Writer::new(4);
            w.post(&mut ring, &timer(1));
            w.post(&mut ring, &timer(2));
            ring.tail = bogus;
            let before = ring.slots.clone();
            for i in 0..10 {
                w.post(&mut ring, &timer(10 + i));
            }
            // Whatever the tail claims, the visor never writes more than `capacity` records
            // beyond what the tail says was consumed, and a tail ahead of head means full.
            let used = 2u32.wrapping_sub(bogus);
            if used > 4 {
                assert_eq!(ring.slots, before, "tail {bogus:#x}");
            }
        }
    }

    #[test]
    fn unreachable_ring_memory_counts_records_as_lost() {
        let mut ring = Ring::new(4);
        let mut w = Writer::new(4);
        ring.refuse = true;
        assert_eq!(w.post(&mut ring, &timer(1)), Posted::Lost);
        ring.refuse = false;
        w.post(&mut ring, &timer(2));
        assert_eq!(ring.pop(), Some(Record::new(Kind::Overrun, 0, 1)));
        assert_eq!(ring.pop(), Some(timer(2)));
    }

    #[test]
    fn ring_sizes() {
        assert_eq!(records_for(ring_bytes(8)), Some(8));
        assert_eq!(records_for(ring_bytes(256)), Some(256));
        assert_eq!(records_for(ring_bytes(1)), None);
        assert_eq!(records_for(ring_bytes(6)), None);
        assert_eq!(records_for(ring_bytes(512)), None);
        assert_eq!(records_for(ring_bytes(8) + 4), None);
        assert_eq!(records_for(0), None);
        assert_eq!(records_for(u32::MAX), None);
    }
}
