//! Notifications: the visor's side of the app's notification ring ([`keel_abi::notify`]).
//!
//! The ring lives in app memory; every access goes through [`ns_mem::check`] (the app may change
//! its memory protection at any time: a refused access loses the record, counted like a full
//! ring). After each record the visor pends the interrupt line the app chose, which is routed to
//! the non-secure world while the ring is set up and back to the secure world when it is not.

use keel_abi::notify::{Kind, Posted, Record, RingMemory, Writer, RECORD_LEN};

use crate::ns_mem::{self, Awake, Read, Write};
use crate::{board, Visor};

/// A ring the app set up.
pub struct Ring {
    base: u32,
    bytes: u32,
    irq: u32,
    writer: Writer,
}

impl Ring {
    /// The ring's place in app memory (address, bytes): channel buffers may not overlap it.
    pub fn region(&self) -> (u32, u32) {
        (self.base, self.bytes)
    }
}

struct Memory<'a> {
    awake: &'a Awake,
    base: u32,
}

impl RingMemory for Memory<'_> {
    fn read_tail(&mut self) -> Option<u32> {
        ns_mem::check::<Read>(self.awake, self.base + 4, 4).map(|r| r.read_u32())
    }
    fn write_record(&mut self, slot: u32, bytes: &[u8; RECORD_LEN as usize]) -> bool {
        let at = self.base + keel_abi::notify::HEADER_LEN + slot * RECORD_LEN;
        ns_mem::check::<Write>(self.awake, at, RECORD_LEN).map(|w| w.write_from(bytes)).is_some()
    }
    fn write_head(&mut self, head: u32) -> bool {
        ns_mem::check::<Write>(self.awake, self.base, 4).map(|w| w.write_from(&head.to_le_bytes())).is_some()
    }
}

/// Sets up a ring of `records` records at `base` (checked by the caller), reporting on `irq`
/// (one of [`keel_abi::notify::APP_IRQS`]). Replaces any previous ring; events the app has not
/// been told about yet (an update ready) go into the new one.
pub fn setup(v: &mut Visor, awake: &Awake, base: u32, records: u32, irq: u32) {
    disable(v);
    let header = [0u32, 0, records, 0];
    for (i, w) in header.iter().enumerate() {
        if let Some(out) = ns_mem::check::<Write>(awake, base + 4 * i as u32, 4) {
            out.write_from(&w.to_le_bytes());
        }
    }
    board::route_app_irq(irq, true);
    v.notify = Some(Ring { base, bytes: keel_abi::notify::ring_bytes(records), irq, writer: Writer::new(records) });
    deliver_core_events(v, awake);
}

/// Turns notifications off: the ring is forgotten, the timer cancelled and the interrupt line
/// returned to the secure world.
pub fn disable(v: &mut Visor) {
    if let Some(r) = v.notify.take() {
        board::route_app_irq(r.irq, false);
    }
    v.timer = None;
}

/// Posts one record and pends the app's interrupt if it was written. Nothing happens without a
/// ring.
pub fn post(v: &mut Visor, awake: &Awake, record: Record) {
    let Some(ring) = v.notify.as_mut() else { return };
    let mut mem = Memory { awake, base: ring.base };
    if ring.writer.post(&mut mem, &record) == Posted::Written {
        board::pend_app_irq(ring.irq);
    }
}

/// Reports the core's pending app events (an update ready, network state changes, channel
/// events) as records, in the order they happened, once a ring exists.
pub fn deliver_core_events(v: &mut Visor, awake: &Awake) {
    if v.notify.is_none() {
        return;
    }
    if v.core.app_events_pending() {
        let events = v.core.take_app_events();
        if events & keel_abi::events::UPDATE_READY != 0 {
            post(v, awake, Record::new(Kind::UpdateReady, 0, 0));
        }
    }
    let lost = v.core.take_notifications_lost();
    if let Some(ring) = v.notify.as_mut() {
        ring.writer.add_lost(lost.min(u32::MAX as u64) as u32);
    }
    while let Some(r) = v.core.take_notification() {
        // Channel records carry the time they are written (the app's latency measurements).
        post(v, awake, r.stamped(crate::time::now_us()));
    }
}

/// The service routine's part: the timer when due, then the core's events.
pub fn poll(v: &mut Visor, now: u64) {
    let awake = Awake::new();
    if let Some((deadline, tag)) = v.timer {
        if deadline <= now {
            v.timer = None;
            post(v, &awake, Record::new(Kind::Timer, tag, now));
        }
    }
    deliver_core_events(v, &awake);
}
