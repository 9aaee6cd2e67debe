//! # keel-sim: simulated devices
//!
//! A host-native device that speaks the cloud link exactly like the visor: the same frame codec,
//! messages, Noise session and log ring (`keel-link`, `keel-log`), driven by tokio instead of the
//! visor's interrupt loop. Used by server tests and load benchmarks.
//!
//! With [`SimDevice::with_updates`] the device also takes updates: the shared device agent of
//! `keel-update` (the visor's) over an in-RAM flash ([`update`]), so the server's update path is
//! tested end to end against the device's real rules.

pub mod update;

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use clatter::bytearray::ByteArray;
use clatter::crypto::dh::X25519;
use clatter::traits::Dh;
use keel_link::backoff::Backoff;
use keel_link::device::{DeviceLink, Event};
use keel_link::msg::{Up, PROTOCOL_VERSION};
use keel_link::session::MAX_FRAME;
use keel_log::{Kind, LogRing};
use rand_core::{OsRng, RngCore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{watch, Notify};
pub use update::UpdateStats;

/// The X25519 public key of a device secret.
pub fn public_key(secret: &[u8; 32]) -> [u8; 32] {
    X25519::pubkey(&<X25519 as Dh>::PrivateKey::from_slice(secret))
}

/// A new random device secret.
pub fn new_secret() -> [u8; 32] {
    let mut s = [0u8; 32];
    OsRng.fill_bytes(&mut s);
    s
}

/// What a simulated device observed.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// Completed handshakes.
    pub sessions: u32,
    /// Highest sequence number the device no longer holds: acknowledged by the server (or
    /// dropped, if its ring overflowed).
    pub acked: Option<u64>,
    /// Wall clock received from the server.
    pub wall_us: Option<u64>,
    /// The update agent's view (default when updates are off).
    pub update: UpdateStats,
}

/// The log ring size of [`SimDevice::new`]: 64 KiB.
pub const DEFAULT_RING: usize = 65536;

/// A simulated device holding up to `N` bytes of unsent log records.
///
/// [`SimDevice::new`] gives the default 64 KiB ring; [`SimDevice::with_ring`] picks another
/// size (e.g. a small one for thousands of idle devices in one process).
pub struct SimDevice<const N: usize = DEFAULT_RING> {
    secret: [u8; 32],
    server_public: [u8; 32],
    boot: u32,
    ring: Box<Mutex<LogRing<N>>>,
    /// Wakes the connection when a record was queued.
    queued: Notify,
    stats: watch::Sender<Stats>,
    update: Option<Mutex<update::Device>>,
}

impl SimDevice {
    /// A device with `secret` that trusts `server_public`, in boot number `boot`, with a 64 KiB
    /// log ring.
    pub fn new(secret: [u8; 32], server_public: [u8; 32], boot: u32) -> Self {
        Self::with_ring(secret, server_public, boot)
    }
}

impl<const N: usize> SimDevice<N> {
    /// A device like [`SimDevice::new`] with an `N`-byte log ring (`N` must hold the records it
    /// will be given: 12 bytes of header plus the text).
    pub fn with_ring(secret: [u8; 32], server_public: [u8; 32], boot: u32) -> Self {
        SimDevice {
            secret,
            server_public,
            boot,
            ring: Box::new(Mutex::new(LogRing::new(boot))),
            queued: Notify::new(),
            stats: watch::Sender::new(Stats::default()),
            update: None,
        }
    }

    /// Turns on updates (the shared update agent over an in-RAM flash): offers are verified
    /// against `trusted_keys` (Ed25519 public keys) and the device starts with the bundle of
    /// sequence `installed` confirmed (0: the factory state, an erased journal).
    pub fn with_updates(mut self, trusted_keys: Vec<[u8; 32]>, installed: u64) -> Self {
        let device = update::Device::new(trusted_keys, installed);
        self.stats.send_modify(|s| s.update = device.stats.clone());
        self.update = Some(Mutex::new(device));
        self
    }

    /// Test hook: stop asking for layer pages once `bytes` of the current bundle were received
    /// (`None`: go on). [`UpdateStats::paused`] tells when the hold took effect.
    pub fn pause_download_at(&self, bytes: Option<u64>) {
        if let Some(a) = &self.update {
            let mut a = a.lock().unwrap();
            a.pause_at(bytes);
            let snapshot = a.stats.clone();
            self.stats.send_modify(|s| s.update = snapshot);
        }
        self.queued.notify_one();
    }

    /// Waits until the device's stats satisfy `f` (e.g. an update state); returns them.
    pub async fn wait_for(&self, f: impl FnMut(&Stats) -> bool) -> Stats {
        // The sender lives in `self`, so the channel cannot close while we wait.
        self.stats.subscribe().wait_for(f).await.map(|s| s.clone()).unwrap_or_default()
    }

    /// Runs the update side on `f` and publishes its stats; returns what to send.
    fn with_agent(&self, f: impl FnOnce(&mut update::Device) -> Vec<update::Out>) -> Vec<update::Out> {
        let Some(a) = &self.update else { return Vec::new() };
        let mut a = a.lock().unwrap();
        let out = f(&mut a);
        let snapshot = a.stats.clone();
        drop(a);
        self.stats.send_modify(|s| s.update = snapshot);
        out
    }

    /// Queues a log line; returns its sequence number.
    pub fn log(&self, text: &str) -> u64 {
        let seq = self.ring.lock().unwrap().push(Kind::App, 2, 0, text.as_bytes()).expect("short line");
        self.queued.notify_one();
        seq
    }

    /// What the device observed so far.
    pub fn stats(&self) -> Stats {
        self.stats.borrow().clone()
    }

    /// Returns once the device has completed at least one handshake (received `Welcome`).
    pub async fn wait_online(&self) {
        // The sender lives in `self`, so the channel cannot close while we wait.
        let _ = self.stats.subscribe().wait_for(|s| s.sessions > 0).await;
    }

    /// Stays connected to `addr`: reconnects with backoff (`min_ms`..60 s) whenever the
    /// connection drops, and sends queued log records. Runs until the task is dropped.
    pub async fn run(&self, addr: SocketAddr, min_ms: u32) {
        let mut backoff = Backoff::new(min_ms, 60_000, u64::from_le_bytes(self.secret[..8].try_into().unwrap()));
        loop {
            if self.session(addr).await.is_ok() {
                backoff.reset();
            }
            tokio::time::sleep(Duration::from_millis(backoff.next_delay_ms() as u64)).await;
        }
    }

    async fn session(&self, addr: SocketAddr) -> Result<(), &'static str> {
        let s = TcpStream::connect(addr).await.map_err(|_| "connect")?;
        let mut link = DeviceLink::<OsRng>::new(&self.secret, &self.server_public).map_err(|_| "session")?;
        let next = self.ring.lock().unwrap().next_seq();
        let hello = Up::Hello {
            protocol: PROTOCOL_VERSION,
            visor_version: "sim",
            boot_count: self.boot,
            app: None,
            next_log_seq: next,
        };
        let mut frame = vec![0u8; MAX_FRAME];
        let n = link.start(&hello, &mut frame).map_err(|_| "start")?;
        let (mut rd, mut wr) = s.into_split();
        wr.write_all(&frame[..n]).await.map_err(|_| "write")?;
        // A reader task hands complete frames over a channel (cancel-safe in `select!`).
        let (tx, mut frames) = tokio::sync::mpsc::channel(16);
        let reader = tokio::spawn(async move {
            while let Ok(f) = read_frame(&mut rd).await {
                if tx.send(f).await.is_err() {
                    break;
                }
            }
        });
        let _abort = AbortOnDrop(reader);
        // Event-driven: records go out when one is queued (`log` notifies) and after every
        // received frame (which covers `Welcome`, after which the backlog is sent).
        let silence = Duration::from_micros(keel_link::device::SERVER_SILENCE_TIMEOUT_US);
        let mut last_rx = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(last_rx + silence) => return Err("server silent"),
                f = frames.recv() => {
                    let f = f.ok_or("closed")?;
                    last_rx = tokio::time::Instant::now();
                    // The event borrows from the link: act on it before the link sends again.
                    let (online, sync, mut out, n) = {
                        let mut ring = self.ring.lock().unwrap();
                        let (event, n) = link.on_frame(&f, &mut ring, &mut frame).map_err(|_| "decrypt")?;
                        let acked = ring.first_seq().checked_sub(1);
                        self.stats.send_modify(|s| s.acked = acked);
                        match event {
                            Event::Online { unix_us } => (Some(unix_us), None, Vec::new(), n),
                            Event::TimeSync { unix_us } => (None, Some(unix_us), Vec::new(), n),
                            Event::None => (None, None, Vec::new(), n),
                            Event::UpdateOffer { envelope } => (None, None, self.with_agent(|a| a.on_offer(envelope)), n),
                            Event::LayerData { sequence, component: 0, offset, data } => {
                                (None, None, self.with_agent(|a| a.on_data(sequence, offset, data)), n)
                            }
                            Event::UpdateCancel { sequence } => {
                                (None, None, self.with_agent(|a| a.on_cancel(sequence)), n)
                            }
                            Event::LayerError { sequence, .. } => {
                                (None, None, self.with_agent(|a| a.on_layer_error(sequence)), n)
                            }
                            // Other components are not the agent's.
                            _ => (None, None, Vec::new(), n),
                        }
                    };
                    if n > 0 {
                        wr.write_all(&frame[..n]).await.map_err(|_| "write")?;
                    }
                    if let Some(unix_us) = online {
                        self.stats.send_modify(|s| {
                            s.sessions += 1;
                            s.wall_us = Some(unix_us);
                        });
                        let session = self.stats.borrow().sessions;
                        out = self.with_agent(|a| a.on_online(session));
                    }
                    if let Some(unix_us) = sync {
                        self.stats.send_modify(|s| s.wall_us = Some(unix_us));
                    }
                    for m in &out {
                        let n = link.send(&m.as_up(), &mut frame).map_err(|_| "encrypt")?;
                        wr.write_all(&frame[..n]).await.map_err(|_| "write")?;
                    }
                }
                _ = self.queued.notified() => {}
            }
            loop {
                let next = link.next_log_frame(&mut self.ring.lock().unwrap(), &mut frame).map_err(|_| "encrypt")?;
                let Some(n) = next else { break };
                wr.write_all(&frame[..n]).await.map_err(|_| "write")?;
            }
            if link.is_online() {
                for m in self.with_agent(|a| a.release().into_iter().collect()) {
                    let n = link.send(&m.as_up(), &mut frame).map_err(|_| "encrypt")?;
                    wr.write_all(&frame[..n]).await.map_err(|_| "write")?;
                }
            }
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn read_frame<R: AsyncReadExt + Unpin>(s: &mut R) -> Result<Vec<u8>, &'static str> {
    let mut len = [0u8; 2];
    s.read_exact(&mut len).await.map_err(|_| "closed")?;
    let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
    s.read_exact(&mut buf).await.map_err(|_| "closed")?;
    Ok(buf)
}
