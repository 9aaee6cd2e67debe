//! Live state between the parts of the server, per device: a [`Bus`] delivers typed messages to
//! the mailbox of one device's gateway connection (a deployment changed, the session must end;
//! later remote debugging and app channels), and [`Presence`] says which gateway node holds
//! which device (leases in the database, see `Store::start_node`).
//!
//! In-process implementations today ([`LocalBus`], [`StorePresence`]); a deployment with
//! several nodes replaces them (e.g. with PostgreSQL `LISTEN/NOTIFY` or a message broker)
//! without touching the gateway. Unlike one broadcast channel that every connection listens to,
//! a message reaches only the connections of its device, so a deployment to many devices costs
//! nothing to the others, and nothing overflows: a mailbox coalesces repeated notifications.

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
}

/// At most this many messages wait in one mailbox; repeated `DeploymentChanged` and
/// `EndSession` are coalesced, so only future payload-carrying messages can reach it (the oldest
/// is then dropped).
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
}

#[derive(Debug, Default)]
struct Slot {
    queue: Mutex<VecDeque<DeviceMessage>>,
    notify: Notify,
}

impl Slot {
    fn push(&self, msg: DeviceMessage) {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        let coalesce = matches!(msg, DeviceMessage::DeploymentChanged | DeviceMessage::EndSession { .. });
        if !(coalesce && q.contains(&msg)) {
            if q.len() >= MAILBOX_CAPACITY {
                q.pop_front();
            }
            q.push_back(msg);
        }
        drop(q);
        self.notify.notify_one();
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
            s.push(msg.clone());
        }
        slots.len()
    }

    fn end_node(&self, node: &str, reason: &'static str) -> usize {
        let slots: Vec<Arc<Slot>> = {
            let boxes = self.boxes.lock().unwrap_or_else(|e| e.into_inner());
            boxes.values().flatten().filter(|(_, n, _)| &**n == node).map(|(_, _, s)| s.clone()).collect()
        };
        for s in &slots {
            s.push(DeviceMessage::EndSession { reason });
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
