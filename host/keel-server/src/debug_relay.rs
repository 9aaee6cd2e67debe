//! The remote debugging relay: which debugger (a websocket of `GET /v1/devices/{id}/debug`) is
//! attached to which device, and the two directions of opaque frames between them.
//!
//! The frames are transport messages of an end-to-end encrypted session between the debugger
//! (`keel debug`) and the visor's debug service: the relay never parses, merges or reorders
//! them; it forwards, bounds and counts them. Every queue on the way is bounded and a frame that
//! does not fit is **dropped and counted**, never waited for; the end-to-end protocol
//! retransmits.
//!
//! * Debugger -> device: [`DebugRelay::to_device`] puts the frame in the device's mailbox
//!   ([`crate::bus::DeviceMessage::Debug`], at most [`crate::bus::MAILBOX_CAPACITY`] waiting);
//!   the device's gateway connection sends it as `Down::Debug` if the device announced `DEBUG`.
//!   No mailbox (the device is offline): dropped.
//! * Device -> debugger: the gateway hands each `Up::Debug` to [`DebugRelay::to_client`], which
//!   queues it for the attached debugger's websocket (at most [`CLIENT_QUEUE`] waiting). No
//!   debugger attached, or its queue full (it reads too slowly): dropped.
//! * One debugger per device: [`DebugRelay::attach`] replaces the one attached before (whose
//!   [`Attachment::frames`] then ends: its websocket closes with reason `replaced`). This is how
//!   a debugger resumes after its link dropped.
//!
//! **Capture** (a diagnostic, [`DebugRelay::capture_to`]; `keel server run` honours the
//! environment variable [`CAPTURE_ENV`]): every frame the relay forwards is appended to a file as
//! one line `<direction> <hex>`, `down` for debugger -> device and `up` for device -> debugger.
//! It shows exactly what the server sees of a debug session: ciphertext.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use crate::bus::{Bus, DeviceMessage};
use crate::store::Counters;

/// Frames from a device waiting for its debugger's websocket; more are dropped.
pub const CLIENT_QUEUE: usize = 64;

/// Environment variable read once when a server node starts (`Node::start`): the path of a
/// capture file (see the module documentation).
pub const CAPTURE_ENV: &str = "KEEL_DEBUG_CAPTURE";

/// Debug sessions one server node holds at most (each holds a websocket and a task; one per
/// device). A debugger replacing its device's session is always accepted.
pub const MAX_SESSIONS: usize = 1024;

/// The relay. One per store (shared by the gateway and the API of a node).
pub struct DebugRelay {
    bus: Arc<dyn Bus>,
    counters: Arc<Counters>,
    clients: Mutex<HashMap<String, Attached>>,
    next: AtomicU64,
    capture: Mutex<Option<std::fs::File>>,
}

impl std::fmt::Debug for DebugRelay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DebugRelay").field("sessions", &self.sessions()).finish()
    }
}

/// The debugger attached to one device.
struct Attached {
    id: u64,
    tx: mpsc::Sender<Box<[u8]>>,
}

/// A debugger's place in the relay, held by its websocket session: frames from the device
/// arrive on [`Attachment::frames`]. Dropping it detaches the debugger (unless a newer one
/// replaced it already).
pub struct Attachment {
    relay: Arc<DebugRelay>,
    device: String,
    id: u64,
    /// Frames from the device, in order. Ends (`None`) when another debugger attached to the
    /// same device: this one was replaced.
    pub frames: mpsc::Receiver<Box<[u8]>>,
}

impl Attachment {
    /// The device this debugger is attached to.
    pub fn device(&self) -> &str {
        &self.device
    }
}

impl Drop for Attachment {
    fn drop(&mut self) {
        let mut clients = self.relay.clients.lock().unwrap_or_else(|e| e.into_inner());
        if clients.get(&self.device).is_some_and(|a| a.id == self.id) {
            clients.remove(&self.device);
        }
    }
}

/// Which way a frame went, as the capture writes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Debugger -> device (`down`).
    ToDevice,
    /// Device -> debugger (`up`).
    ToClient,
}

impl Direction {
    /// `down` or `up`.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::ToDevice => "down",
            Direction::ToClient => "up",
        }
    }
}

impl DebugRelay {
    /// A relay that reaches devices through `bus` and counts in `counters`.
    pub fn new(bus: Arc<dyn Bus>, counters: Arc<Counters>) -> DebugRelay {
        DebugRelay { bus, counters, clients: Mutex::default(), next: AtomicU64::new(1), capture: Mutex::new(None) }
    }

    /// Appends every frame forwarded from now on to the file at `path` (created with mode 0600
    /// if missing); `None` stops capturing.
    pub fn capture_to(&self, path: Option<&Path>) -> std::io::Result<()> {
        let file = match path {
            Some(p) => {
                let mut o = std::fs::OpenOptions::new();
                o.create(true).append(true);
                #[cfg(unix)]
                std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
                Some(o.open(p)?)
            }
            None => None,
        };
        *self.capture.lock().unwrap_or_else(|e| e.into_inner()) = file;
        Ok(())
    }

    /// Appends a capture line if capturing. Called with the capture lock held from before the
    /// frame is handed on until after the line is written, so the file's order is the order in
    /// which the frames could be seen (an answer is never written before its question).
    fn capture_line(capture: &mut Option<std::fs::File>, dir: Direction, frame: &[u8]) {
        if let Some(f) = capture.as_mut() {
            // One write per line, so lines of concurrent sessions never interleave.
            let line = format!("{} {}\n", dir.as_str(), crate::hex(frame));
            if let Err(e) = f.write_all(line.as_bytes()) {
                tracing::warn!(error = %e, "debug capture: cannot write; capture stopped");
                *capture = None;
            }
        }
    }

    /// Debug sessions attached now.
    pub fn sessions(&self) -> usize {
        self.clients.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// True if a debugger is attached to `device`.
    pub fn is_attached(&self, device: &str) -> bool {
        self.clients.lock().unwrap_or_else(|e| e.into_inner()).contains_key(device)
    }

    /// Attaches a debugger to `device`, replacing the one attached before (its frames end).
    /// `None` if [`MAX_SESSIONS`] are attached to other devices.
    pub fn attach(self: &Arc<Self>, device: &str) -> Option<Attachment> {
        let (tx, frames) = mpsc::channel(CLIENT_QUEUE);
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if clients.len() >= MAX_SESSIONS && !clients.contains_key(device) {
            return None;
        }
        if clients.insert(device.to_string(), Attached { id, tx }).is_some() {
            Counters::add(&self.counters.debug_sessions_replaced, 1);
        }
        drop(clients);
        Counters::add(&self.counters.debug_sessions, 1);
        Some(Attachment { relay: self.clone(), device: device.to_string(), id, frames })
    }

    /// A frame from the debugger to `device`: into the device's mailbox (its gateway connection
    /// sends it), or dropped and counted if the device has none (offline). Returns true if a
    /// connection of the device got it.
    pub fn to_device(&self, device: &str, frame: &[u8]) -> bool {
        let c = &self.counters;
        let mut capture = self.capture.lock().unwrap_or_else(|e| e.into_inner());
        if self.bus.send(device, DeviceMessage::Debug(frame.into())) == 0 {
            Counters::add(&c.debug_dropped_offline, 1);
            return false;
        }
        Counters::add(&c.debug_to_device, 1);
        Self::capture_line(&mut capture, Direction::ToDevice, frame);
        true
    }

    /// A frame from `device` to its debugger: queued for the attached websocket, or dropped and
    /// counted (no debugger attached, or its queue is full). Returns true if it was queued.
    pub fn to_client(&self, device: &str, frame: Box<[u8]>) -> bool {
        let c = &self.counters;
        let tx = self.clients.lock().unwrap_or_else(|e| e.into_inner()).get(device).map(|a| a.tx.clone());
        let Some(tx) = tx else {
            Counters::add(&c.debug_dropped_no_client, 1);
            return false;
        };
        let mut capture = self.capture.lock().unwrap_or_else(|e| e.into_inner());
        // The capture (a rare diagnostic) writes the frame once it is queued.
        let copy = capture.is_some().then(|| frame.clone());
        match tx.try_send(frame) {
            Ok(()) => {
                Counters::add(&c.debug_to_client, 1);
                if let Some(frame) = copy {
                    Self::capture_line(&mut capture, Direction::ToClient, &frame);
                }
                true
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                Counters::add(&c.debug_dropped_client_slow, 1);
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                Counters::add(&c.debug_dropped_no_client, 1);
                false
            }
        }
    }
}
