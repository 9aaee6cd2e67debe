//! Live state between the parts of the server, per device: a [`Bus`] delivers typed messages to
//! the mailbox of one device's gateway connection (a deployment changed, the session must end;
//! later remote debugging and app channels), and [`Presence`] says which gateway node holds
//! which device (leases in the database, see `Store::start_node`).
//!
//! In-process implementations today ([`LocalBus`], [`StorePresence`]); a deployment with
//! several nodes replaces them (e.g. with PostgreSQL `LISTEN/NOTIFY` or a message broker)
//! without touching the gateway. Unlike one broadcast channel that every connection listens to,
//! a message reaches only the connections of its device, so a deployment to many devices costs
//! nothing to the others, and nothing overflows: a mailbox coalesces repeated notifications and
//! holds at most [`MAILBOX_CAPACITY`] messages (remote debugging frames, which are never
//! coalesced, are dropped oldest first when it is full, and counted: [`Bus::dropped`]).

use std::collections::{HashMap, VecDeque};
use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// A message to one device's connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceMessage {
    /// The device's deployment changed: re-read the target.
    DeploymentChanged,
    /// End the device's session (the device was deleted, its gateway stops).
    EndSession {
        /// Why, for the log.
        reason: &'static str,
    },
    /// One opaque remote debugging frame from the attached debugger, to send to the device as
    /// `Down::Debug` (see `crate::debug_relay`). Never coalesced.
    Debug(Box<[u8]>),
}

/// At most this many messages wait in one mailbox; repeated `DeploymentChanged` and
/// `EndSession` are coalesced, so only payload-carrying messages (debug frames) can fill it: the
/// oldest debug frame is then dropped (a notification never is) and counted.
pub const MAILBOX_CAPACITY: usize = 64;

/// Delivers messages to device mailboxes.
pub trait Bus: Send + Sync + Debug {
    /// Opens a mailbox for a connection of `device_id` held by gateway node `node` (closed when
    /// dropped).
    fn mailbox(&self, device_id: &Arc<str>, node: &Arc<str>) -> Mailbox;
    /// Sends `msg` to every open mailbox of `device_id`; returns how many got it.
    fn send(&self, device_id: &str, msg: DeviceMessage) -> usize;
    /// Ends every session held by gateway node `node` (it stops); returns how many were told.
    fn end_node(&self, node: &str, reason: &'static str) -> usize;
    /// Messages dropped so far because a mailbox was full (debug frames: notifications are
    /// coalesced and never dropped).
    fn dropped(&self) -> u64 {
        0
    }
}

#[derive(Debug, Default)]
struct Slot {
    queue: Mutex<VecDeque<DeviceMessage>>,
    notify: Notify,
}

impl Slot {
    /// Queues `msg`; returns true if a message was dropped to make room.
    fn push(&self, msg: DeviceMessage) -> bool {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        let coalesce = matches!(msg, DeviceMessage::DeploymentChanged | DeviceMessage::EndSession { .. });
        let mut dropped = false;
        if !(coalesce && q.contains(&msg)) {
            if q.len() >= MAILBOX_CAPACITY {
                // The oldest debug frame goes first: a notification must never be lost to a
                // flood of frames.
                match q.iter().position(|m| matches!(m, DeviceMessage::Debug(_))) {
                    Some(i) => drop(q.remove(i)),
                    None => drop(q.pop_front()),
                }
                dropped = true;
            }
            q.push_back(msg);
        }
        drop(q);
        self.notify.notify_one();
        dropped
    }

    fn pop(&self) -> Option<DeviceMessage> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner()).pop_front()
    }
}

/// One connection's mailbox.
#[derive(Debug)]
pub struct Mailbox {
    slot: Arc<Slot>,
    _close: Option<Box<dyn Send + Sync + Debug>>,
}

impl Mailbox {
    /// A mailbox around `slot`; `close` is dropped with it (it unregisters the mailbox).
    fn new(slot: Arc<Slot>, close: Box<dyn Send + Sync + Debug>) -> Mailbox {
        Mailbox { slot, _close: Some(close) }
    }

    /// The next message (waits for one). Cancel-safe.
    pub async fn recv(&mut self) -> DeviceMessage {
        loop {
            let notified = self.slot.notify.notified();
            if let Some(m) = self.slot.pop() {
                return m;
            }
            notified.await;
        }
    }

    /// The next message if one is waiting.
    pub fn try_recv(&mut self) -> Option<DeviceMessage> {
        self.slot.pop()
    }
}

/// The open mailboxes by device (the key shares the connection's id string): (mailbox id, its
/// gateway node, the slot).
type Mailboxes = Mutex<HashMap<Arc<str>, Vec<(u64, Arc<str>, Arc<Slot>)>>>;

/// The in-process [`Bus`].
#[derive(Debug, Default)]
pub struct LocalBus {
    boxes: Arc<Mailboxes>,
    next: AtomicU64,
    dropped: AtomicU64,
}

/// Unregisters a [`LocalBus`] mailbox when dropped.
#[derive(Debug)]
struct LocalClose {
    boxes: Arc<Mailboxes>,
    device: Arc<str>,
    id: u64,
}

impl Drop for LocalClose {
    fn drop(&mut self) {
        let mut boxes = self.boxes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(v) = boxes.get_mut(&self.device) {
            v.retain(|(id, _, _)| *id != self.id);
            if v.is_empty() {
                boxes.remove(&self.device);
            }
        }
    }
}

impl Bus for LocalBus {
    fn mailbox(&self, device_id: &Arc<str>, node: &Arc<str>) -> Mailbox {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let slot = Arc::new(Slot::default());
        let mut boxes = self.boxes.lock().unwrap_or_else(|e| e.into_inner());
        boxes.entry(device_id.clone()).or_default().push((id, node.clone(), slot.clone()));
        drop(boxes);
        let close = LocalClose { boxes: self.boxes.clone(), device: device_id.clone(), id };
        Mailbox::new(slot, Box::new(close))
    }

    fn send(&self, device_id: &str, msg: DeviceMessage) -> usize {
        let slots: Vec<Arc<Slot>> = {
            let boxes = self.boxes.lock().unwrap_or_else(|e| e.into_inner());
            boxes.get(device_id).map(|v| v.iter().map(|(_, _, s)| s.clone()).collect()).unwrap_or_default()
        };
        for s in &slots {
            if s.push(msg.clone()) {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
        slots.len()
    }

    fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    fn end_node(&self, node: &str, reason: &'static str) -> usize {
        let slots: Vec<Arc<Slot>> = {
            let boxes = self.boxes.lock().unwrap_or_else(|e| e.into_inner());
            boxes.values().flatten().filter(|(_, n, _)| &**n == node).map(|(_, _, s)| s.clone()).collect()
        };
        for s in &slots {
            if s.push(DeviceMessage::EndSession { reason }) {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
        slots.len()
    }
}

/// A boxed future (the traits here are object-safe).
pub type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Which gateway node holds which device.
pub trait Presence: Send + Sync {
    /// Starts a node run named `name` (ends a previous run's presence); returns its id.
    fn start_node<'a>(&'a self, name: &'a str, lease: std::time::Duration) -> BoxFut<'a, Result<String, sqlx::Error>>;
    /// Renews node `id`'s lease; false if it is gone.
    fn renew_node<'a>(&'a self, id: &'a str, lease: std::time::Duration) -> BoxFut<'a, Result<bool, sqlx::Error>>;
    /// Ends node `id` and the presence of its devices.
    fn stop_node<'a>(&'a self, id: &'a str) -> BoxFut<'a, Result<(), sqlx::Error>>;
}

/// [`Presence`] as leases in the store's database.
#[derive(Clone)]
pub struct StorePresence(pub crate::store::Store);

impl Presence for StorePresence {
    fn start_node<'a>(&'a self, name: &'a str, lease: std::time::Duration) -> BoxFut<'a, Result<String, sqlx::Error>> {
        Box::pin(self.0.start_node(name, lease))
    }

    fn renew_node<'a>(&'a self, id: &'a str, lease: std::time::Duration) -> BoxFut<'a, Result<bool, sqlx::Error>> {
        Box::pin(self.0.renew_node(id, lease))
    }

    fn stop_node<'a>(&'a self, id: &'a str) -> BoxFut<'a, Result<(), sqlx::Error>> {
        Box::pin(self.0.stop_node(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_reach_only_their_device_and_repeats_coalesce() {
        let bus = LocalBus::default();
        let (kda, kdb, node): (Arc<str>, Arc<str>, Arc<str>) = ("kda".into(), "kdb".into(), "n1".into());
        let mut a = bus.mailbox(&kda, &node);
        let mut a2 = bus.mailbox(&kda, &node);
        let mut b = bus.mailbox(&kdb, &node);
        for _ in 0..5000 {
            assert_eq!(bus.send("kda", DeviceMessage::DeploymentChanged), 2);
        }
        assert_eq!(a.try_recv(), Some(DeviceMessage::DeploymentChanged));
        assert_eq!(a.try_recv(), None, "coalesced");
        assert_eq!(a2.try_recv(), Some(DeviceMessage::DeploymentChanged));
        assert_eq!(b.try_recv(), None);
        drop(a);
        assert_eq!(bus.send("kda", DeviceMessage::EndSession { reason: "x" }), 1);
        drop((a2, b));
        assert!(bus.boxes.lock().unwrap().is_empty(), "closed mailboxes are forgotten");
    }

    #[test]
    fn debug_frames_are_bounded_never_coalesced_and_never_push_out_a_notification() {
        let bus = LocalBus::default();
        let (kda, node): (Arc<str>, Arc<str>) = ("kda".into(), "n1".into());
        let mut a = bus.mailbox(&kda, &node);
        let frame = |i: u32| DeviceMessage::Debug(i.to_be_bytes().to_vec().into_boxed_slice());
        assert_eq!(bus.send("kda", DeviceMessage::DeploymentChanged), 1);
        for i in 0..1000 {
            assert_eq!(bus.send("kda", frame(i)), 1);
        }
        assert_eq!(bus.send("kdb", frame(0)), 0, "no mailbox: nobody got it");
        // The notification survived; the newest frames are kept, in order, up to the bound.
        assert_eq!(a.try_recv(), Some(DeviceMessage::DeploymentChanged));
        let kept: Vec<DeviceMessage> = std::iter::from_fn(|| a.try_recv()).collect();
        assert_eq!(kept.len(), MAILBOX_CAPACITY - 1);
        assert_eq!(kept, (1000 - kept.len() as u32..1000).map(frame).collect::<Vec<_>>());
        assert_eq!(bus.dropped(), 1000 - (MAILBOX_CAPACITY as u64 - 1));
        // The same frame twice is two frames.
        bus.send("kda", frame(7));
        bus.send("kda", frame(7));
        assert_eq!((a.try_recv(), a.try_recv(), a.try_recv()), (Some(frame(7)), Some(frame(7)), None));
    }

    #[test]
    fn a_stopping_node_ends_its_own_sessions_only() {
        let bus = LocalBus::default();
        let (kda, kdb, n1, n2): (Arc<str>, Arc<str>, Arc<str>, Arc<str>) =
            ("kda".into(), "kdb".into(), "n1".into(), "n2".into());
        let (mut a1, mut b1, mut a2) = (bus.mailbox(&kda, &n1), bus.mailbox(&kdb, &n1), bus.mailbox(&kda, &n2));
        assert_eq!(bus.end_node("n1", "stop"), 2);
        let end = Some(DeviceMessage::EndSession { reason: "stop" });
        assert_eq!((a1.try_recv(), b1.try_recv(), a2.try_recv()), (end.clone(), end, None));
    }
}
