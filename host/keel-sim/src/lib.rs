//! # keel-sim: simulated devices
//!
//! A simulated device is the device core (`keel_device::Device`, the code the visor runs) in a
//! thin tokio shell: the core decides everything — the connection state machine, the secure
//! link and the log ring, the update agent and journal, the trial rules and the app supervisor —
//! and the shell only carries out what it asks for:
//!
//! * a TCP connection opened on `Effect::Connect` and dropped on `Effect::Close`, reported back
//!   with `tcp_connected` / `tcp_closed`;
//! * bytes read from the socket fed to `receive` (what it does not consume yet is offered again
//!   after `poll_transmit` was drained), and `poll_transmit` drained into the socket;
//! * a timer armed at `poll_at()` (the core's µs clock runs from the device's creation, plus any
//!   [`SimDevice::advance_clock`]);
//! * a simulated app ([`SimApp`]) started on `AppAction::Launch` from the image header in the
//!   slot, which confirms, crashes, panics at every start, hangs or stays silent;
//! * the app's channels ([`SimDevice::open_channel`], and on it [`SimDevice::fetch_config`] and
//!   [`SimDevice::mqtt`]): buffers in a simulated app memory, the same channel calls the
//!   visor's system calls make, and the core's channel messages interleaved with its own on the
//!   link.
//!
//! Used by the server's tests (every trial policy end to end) and by load benchmarks (thousands
//! of devices in one process: a device without updates holds no flash). The core's console lines
//! go to `tracing` at debug level (target `keel_sim::console`), never to stdout.

pub mod channels;
pub mod mqtt;
pub mod update;

use channels::SimMemory;
pub use channels::{ChannelError, SimChannel};
pub use mqtt::{SimMessage, SimMqtt};

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::Duration;

use clatter::bytearray::ByteArray;
use clatter::crypto::dh::X25519;
use clatter::traits::Dh;
use keel_abi::{CrashReport, FaultKind};
use keel_device::{AppAction, Config, Device, Effect, Identity, Output, MAX_FRAME};
use keel_flash::sim::SimFlash;
use keel_link::msg::UpdateState;
use keel_log::Kind;
use keel_supervisor::Policy;
use rand_core::{OsRng, RngCore};
use tokio::net::TcpStream;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

pub use keel_update::agent::APP_CONFIRM_TIMEOUT_S;
pub use keel_update::{Outcome, Reason, Slot, UpdateState as Journal};
pub use update::{updater, UpdateStats, APP_A, APP_B, FLASH_SIZE, JOURNAL, SLOT_SIZE};

/// The visor version a simulated device reports and checks bundles against: the workspace
/// version, the same as the visor's.
pub const VISOR_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The restart code keel-app's panic handler passes to `restart` ([`SimApp::PanicLoop`]).
pub const PANIC_CODE: u32 = 0xDEAD;

/// The watchdog timeout a [`SimApp::Hang`] app arms at launch (and never kicks).
pub const HANG_WATCHDOG_MS: u32 = 100;

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

/// What a simulated app does once launched from an updated image (a bundle's). The factory app
/// runs quietly whatever is chosen; it applies a ready polite update only for
/// [`SimApp::ApplyPolite`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SimApp {
    /// Confirms its trial at launch; a polite update waits for its politeness time.
    Confirm,
    /// Confirms its trial at launch and applies a ready polite update at once.
    #[default]
    ApplyPolite,
    /// Crashes at every launch (a HardFault crash report).
    Crash,
    /// Asks for a restart at every launch with keel-app's panic code ([`PANIC_CODE`]).
    PanicLoop,
    /// Arms the watchdog at launch ([`HANG_WATCHDOG_MS`]) and never kicks it.
    Hang,
    /// Runs and never confirms (it logs and so gives signs of life).
    Silent,
    /// Runs, never confirms and gives no sign of life (no log, no watchdog kick): confirm-by-link
    /// rolls it back ("no sign of life").
    Mute,
}

/// What the simulated app went through.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AppStats {
    /// Version of the app running now (`None`: stopped, crashed or not launched yet).
    pub running: Option<String>,
    /// Launches (every `AppAction::Launch` that found an image).
    pub launches: u32,
    /// Crashes reported (watchdog kills included).
    pub crashes: u32,
    /// Watchdog kills.
    pub watchdog_kills: u32,
    /// Restart requests.
    pub restarts: u32,
    /// Trials the app confirmed.
    pub confirms: u32,
    /// Polite updates the app applied.
    pub applies: u32,
}

/// What a simulated device observed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Completed handshakes.
    pub sessions: u32,
    /// Highest sequence number the device no longer holds: acknowledged by the server (or
    /// dropped, if its ring overflowed).
    pub acked: Option<u64>,
    /// Wall clock received from the server.
    pub wall_us: Option<u64>,
    /// The update side (default when updates are off).
    pub update: UpdateStats,
    /// The simulated app.
    pub app: AppStats,
}

/// The log ring size of [`SimDevice::new`]: 64 KiB.
pub const DEFAULT_RING: usize = 65536;

type Core<const N: usize> = Device<SimFlash, OsRng, N>;

/// The device's state, shared by its task and its handle.
struct Inner<const N: usize> {
    dev: Core<N>,
    updates: bool,
    app: SimApp,
    /// Added to the device's clock ([`SimDevice::advance_clock`]).
    offset_us: u64,
    /// [`SimDevice::pause_download_at`].
    pause_at: Option<u64>,
    wall_us: Option<u64>,
    stats: Stats,
    /// The app's channel memory, from its first channel call on.
    mem: Option<Box<SimMemory>>,
}

/// A simulated device holding up to `N` bytes of unsent log records.
///
/// [`SimDevice::new`] gives the default 64 KiB ring; [`SimDevice::with_ring`] picks another
/// size (e.g. a small one for thousands of idle devices in one process).
pub struct SimDevice<const N: usize = DEFAULT_RING> {
    secret: [u8; 32],
    server_public: [u8; 32],
    boot: u32,
    /// The device clock's zero.
    epoch: Instant,
    inner: Box<Mutex<Inner<N>>>,
    /// Wakes the device's task (a log line, a test hook).
    wake: Notify,
    /// Wakes the app's channel calls waiting for an answer (the core received something).
    app_wake: Notify,
    stats: watch::Sender<Stats>,
}

impl SimDevice {
    /// A device with `secret` that trusts `server_public`, in boot number `boot`, with a 64 KiB
    /// log ring.
    pub fn new(secret: [u8; 32], server_public: [u8; 32], boot: u32) -> Self {
        Self::with_ring(secret, server_public, boot)
    }
}

/// Effects of one core call, carried out by the shell afterwards.
#[derive(Default)]
struct Fx {
    /// `Connect` (true) and `Close` (false), in order.
    net: Vec<bool>,
    wall_us: Option<u64>,
    app_events: bool,
}

impl Output for Fx {
    fn effect(&mut self, effect: Effect<'_>) {
        match effect {
            Effect::Connect => self.net.push(true),
            Effect::Close => self.net.push(false),
            Effect::SetWallClock(t) => self.wall_us = Some(t),
            Effect::AppEvents => self.app_events = true,
            Effect::Console(line) => tracing::debug!(target: "keel_sim::console", "{}", line),
        }
    }
}

impl<const N: usize> SimDevice<N> {
    /// A device like [`SimDevice::new`] with an `N`-byte log ring (`N` must hold the records it
    /// will be given: 12 bytes of header plus the text). It has no flash: no app runs and
    /// offers are refused.
    pub fn with_ring(secret: [u8; 32], server_public: [u8; 32], boot: u32) -> Self {
        let dev = Self::core(secret, server_public, boot, None, update::no_flash());
        let inner = Inner {
            dev,
            updates: false,
            app: SimApp::default(),
            offset_us: 0,
            pause_at: None,
            wall_us: None,
            stats: Stats::default(),
            mem: None,
        };
        SimDevice {
            secret,
            server_public,
            boot,
            epoch: Instant::now(),
            inner: Box::new(Mutex::new(inner)),
            wake: Notify::new(),
            app_wake: Notify::new(),
            stats: watch::Sender::new(Stats::default()),
        }
    }

    fn core(
        secret: [u8; 32],
        server_public: [u8; 32],
        boot: u32,
        signer_key: Option<[u8; 32]>,
        flash: keel_flash::Nor<SimFlash>,
    ) -> Core<N> {
        let cfg = Config {
            identity: Some(Identity { device_key: secret, server_key: server_public, signer_key }),
            boot_count: boot,
            visor_version: VISOR_VERSION,
            policy: Policy::default(),
            warm: None,
            seed: u64::from_le_bytes(secret[..8].try_into().unwrap_or_default()),
            reconnect_min_ms: 1_000,
        };
        Device::new(cfg, flash, updater(), 0, &mut Fx::default())
    }

    /// Turns on updates: the device gets a simulated flash (the journal and two 512 KiB slots)
    /// with the factory app, verifies offers against `trusted_keys` (Ed25519 public keys; the
    /// device core trusts one key, the first) and starts with the bundle of sequence `installed`
    /// installed and confirmed (0: a factory device, erased journal).
    pub fn with_updates(self, trusted_keys: Vec<[u8; 32]>, installed: u64) -> Self {
        let flash = update::factory_flash(installed).expect("install on the in-RAM flash");
        let dev = Self::core(self.secret, self.server_public, self.boot, trusted_keys.first().copied(), flash);
        {
            let mut g = self.lock();
            g.dev = dev;
            g.updates = true;
            g.stats.update = UpdateStats::default();
            let status = g.dev.update_status();
            g.stats.update.sample(&status, 0);
            // The journal the device starts with is not an offer.
            g.stats.update.offers = 0;
            let snapshot = g.stats.clone();
            drop(g);
            self.stats.send_replace(snapshot);
        }
        self
    }

    /// What the app does when it runs an updated image (see [`SimApp`]); the default is
    /// [`SimApp::ApplyPolite`].
    pub fn with_app(self, app: SimApp) -> Self {
        self.set_app(app);
        self
    }

    /// Changes what the app does from its next launch on (e.g. between two updates).
    pub fn set_app(&self, app: SimApp) {
        self.lock().app = app;
        self.wake.notify_one();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<N>> {
        // A panic while the lock was held is a bug in a test; the state is still usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The device clock (µs).
    fn now(&self, g: &Inner<N>) -> u64 {
        (self.epoch.elapsed().as_micros() as u64).saturating_add(g.offset_us)
    }

    /// The app fetches configuration values and secrets over a config channel, as an app's
    /// `keel_app::config::fetch` does: `keys` are `(scope, store, key)`
    /// (`keel_channel::msg::config`); the answer has one item per key, its value or its result
    /// code. The device must be online; gives up after `timeout`.
    pub async fn fetch_config(
        &self,
        keys: &[(u8, u8, &str)],
        timeout: Duration,
    ) -> Result<Vec<Result<Vec<u8>, u8>>, ChannelError> {
        use keel_channel::msg::{config_result, ConfigAnswer, Keys, Msg};
        let deadline = tokio::time::Instant::now() + timeout;
        let left = || deadline.saturating_duration_since(tokio::time::Instant::now());
        let ks: Vec<(u8, u8, &[u8])> = keys.iter().map(|&(sc, st, k)| (sc, st, k.as_bytes())).collect();
        let ch = self.open_channel(keel_abi::chan::Kind::Config, "")?;
        ch.send(&Msg::ConfigFetch { keys: Keys::Items(&ks) }, left()).await?;
        let body = ch.recv(left()).await?;
        ch.close();
        match ConfigAnswer::decode(&body, keys.len()) {
            ConfigAnswer::Items(items) => {
                Ok(items.iter().map(|(r, v)| if r == config_result::OK { Ok(v.to_vec()) } else { Err(r) }).collect())
            }
            ConfigAnswer::Failed(result) => Err(ChannelError::Failed(result)),
            ConfigAnswer::ServerError(code) => Err(ChannelError::Server(code)),
            ConfigAnswer::Unexpected(_) | ConfigAnswer::Malformed => Err(ChannelError::Malformed),
        }
    }

    /// Test hook: moves the device's clock forward by `d` (timers that fall due run at once:
    /// a trial's grace time, the silence timeout, backoffs).
    pub fn advance_clock(&self, d: Duration) {
        let mut g = self.lock();
        g.offset_us = g.offset_us.saturating_add(d.as_micros() as u64);
        drop(g);
        self.wake.notify_one();
    }

    /// Test hook: stop taking layer data once `bytes` of the current bundle were received
    /// (`None`: go on). Received bytes wait in the shell until the hold is lifted or the
    /// connection ends. [`UpdateStats::paused`] tells when the hold took effect.
    pub fn pause_download_at(&self, bytes: Option<u64>) {
        let mut g = self.lock();
        g.pause_at = bytes;
        refresh_pause(&mut g);
        let snapshot = g.stats.clone();
        drop(g);
        self.stats.send_replace(snapshot);
        self.wake.notify_one();
    }

    /// Waits until the device's stats satisfy `f` (e.g. an update state); returns them.
    pub async fn wait_for(&self, f: impl FnMut(&Stats) -> bool) -> Stats {
        // The sender lives in `self`, so the channel cannot close while we wait.
        self.stats.subscribe().wait_for(f).await.map(|s| s.clone()).unwrap_or_default()
    }

    /// Queues an app log line (escaped by the core, like the visor's); returns its sequence
    /// number, or, if the line was dropped because the app's share of the ring is full, the
    /// sequence number of the last record queued.
    pub fn log(&self, text: &str) -> u64 {
        let mut g = self.lock();
        let now = self.now(&g);
        let seq = match g.dev.push_log(now, Kind::App, 2, text.as_bytes()) {
            Ok(seq) => seq,
            Err(keel_log::PushError::NoRoom) => g.dev.logs().next_seq().saturating_sub(1),
            Err(keel_log::PushError::TooLong) => panic!("a log line of at most {} bytes", keel_log::MAX_TEXT),
        };
        drop(g);
        self.wake.notify_one();
        seq
    }

    /// What the device observed so far.
    pub fn stats(&self) -> Stats {
        self.stats.borrow().clone()
    }

    /// The device's update journal as its core last read it.
    pub fn journal(&self) -> Journal {
        self.lock().dev.journal()
    }

    /// True while the device runs a trial.
    pub fn on_trial(&self) -> bool {
        self.lock().dev.on_trial()
    }

    /// Returns once the device has completed at least one handshake (received `Welcome`).
    pub async fn wait_online(&self) {
        // The sender lives in `self`, so the channel cannot close while we wait.
        let _ = self.stats.subscribe().wait_for(|s| s.sessions > 0).await;
    }

    /// Runs the device against the server at `addr` until the task is dropped: its core
    /// connects, reconnects with its own backoff (1 s doubling up to 60 s, jittered; `_min_ms`
    /// is no longer used), sends queued log records and takes updates; its app runs.
    pub async fn run(&self, addr: SocketAddr, _min_ms: u32) {
        let mut net = Net::default();
        let mut fx = Fx::default();
        {
            let mut g = self.lock();
            let now = self.now(&g);
            // A previous `run` may have been dropped in the middle of a connection.
            g.dev.tcp_closed(now, &mut fx);
            g.dev.address_acquired(now, &mut fx);
        }
        loop {
            let (deadline, now, again) = {
                let mut g = self.lock();
                let now = self.now(&g);
                let again = self.step(&mut g, &mut net, &mut fx, addr, now);
                let snapshot = (g.stats != *self.stats.borrow()).then(|| g.stats.clone());
                let deadline = g.dev.poll_at();
                drop(g);
                if let Some(s) = snapshot {
                    self.stats.send_replace(s);
                }
                (deadline, now, again)
            };
            if again {
                tokio::task::yield_now().await;
                continue;
            }
            // The next deadline, at most a day ahead (no Instant overflow).
            let wait = deadline.map(|d| Duration::from_micros(d.saturating_sub(now).min(86_400_000_000)));
            let wake = {
                let Net { stream, connecting, rx, tx, .. } = &mut net;
                let want_read = rx.len() < RX_CAP;
                tokio::select! {
                    r = async { connecting.as_mut().expect("connecting").await }, if connecting.is_some() => Wake::Connected(r),
                    r = async { stream.as_ref().expect("stream").readable().await }, if stream.is_some() && want_read => Wake::Readable(r.is_ok()),
                    r = async { stream.as_ref().expect("stream").writable().await }, if stream.is_some() && !tx.is_empty() => Wake::Writable(r.is_ok()),
                    _ = tokio::time::sleep(wait.unwrap_or_default()), if wait.is_some() => Wake::Timer,
                    _ = self.wake.notified() => Wake::Timer,
                }
            };
            let mut g = self.lock();
            let now = self.now(&g);
            match wake {
                Wake::Connected(r) => {
                    net.connecting = None;
                    match r {
                        Ok(s) => {
                            let _ = s.set_nodelay(true);
                            net.stream = Some(s);
                            g.dev.tcp_connected(now, &mut fx);
                        }
                        Err(_) => g.dev.tcp_closed(now, &mut fx),
                    }
                }
                Wake::Readable(ok) => {
                    if !ok || !net.read() {
                        net.close();
                        g.dev.tcp_closed(now, &mut fx);
                    }
                }
                Wake::Writable(ok) => {
                    if !ok || !net.write() {
                        net.close();
                        g.dev.tcp_closed(now, &mut fx);
                    }
                }
                Wake::Timer => {}
            }
            if g.mem.is_some() {
                // A lost connection closed the app's channels: its waiting calls see it now.
                self.app_wake.notify_waiters();
            }
        }
    }

    /// Everything the core has to do now: timers and the app, effects, received bytes and
    /// frames to send, until nothing moves. True if it stopped early (call again after a
    /// yield).
    fn step(&self, g: &mut Inner<N>, net: &mut Net, fx: &mut Fx, addr: SocketAddr, now: u64) -> bool {
        for _ in 0..64 {
            let mut moved = self.effects(g, net, fx, addr, now);
            if g.stats.app.running.is_some() {
                // A running simulated app is alive (a real one logs, kicks its watchdog, ...),
                // except a mute one.
                if g.app != SimApp::Mute || behaviour_of_running(g).is_none() {
                    g.dev.app_alive(now);
                }
            }
            match g.dev.poll(now, fx) {
                AppAction::Launch(slot) => {
                    launch(g, slot, now, fx);
                    moved = true;
                }
                AppAction::KillForWatchdog => {
                    let report = CrashReport {
                        version: 1,
                        kind: FaultKind::Watchdog as u32,
                        time_us: now,
                        ..Default::default()
                    };
                    g.dev.app_crashed(now, report, true, fx);
                    g.stats.app.crashes += 1;
                    g.stats.app.watchdog_kills += 1;
                    g.stats.app.running = None;
                    moved = true;
                }
                AppAction::None => {}
            }
            moved |= self.effects(g, net, fx, addr, now);
            if net.stream.is_some() && !net.rx.is_empty() && !held(g) {
                let used = g.dev.receive(now, &net.rx, &mut WithMemory { fx, mem: g.mem.as_deref_mut() });
                net.rx.drain(..used);
                if used > 0 {
                    moved = true;
                    sample(g);
                    if g.mem.is_some() {
                        self.app_wake.notify_waiters();
                    }
                }
                if g.dev.debug().is_some_and(|d| d.has_frame()) {
                    // A simulated app has no code or memory to debug: the agent answers
                    // (refuses) and the link reads on.
                    let _ = g.dev.debug_service(now, &mut NoAppMemory);
                    moved = true;
                }
                moved |= self.effects(g, net, fx, addr, now);
            }
            while net.stream.is_some() && net.tx.len() < TX_CAP {
                let at = net.tx.len();
                net.tx.resize(at + MAX_FRAME, 0);
                let sent = match g.mem.as_deref_mut() {
                    // The app's messages are read from its transmit buffers.
                    Some(mem) => g.dev.poll_transmit_with(now, &mut net.tx[at..], mem),
                    None => g.dev.poll_transmit(now, &mut net.tx[at..]),
                };
                net.tx.truncate(at + sent.unwrap_or(0));
                if sent.is_none() {
                    break;
                }
                moved = true;
            }
            sample(g);
            if !moved {
                return false;
            }
        }
        true
    }

    /// Carries out the effects collected so far. True if there were any.
    fn effects(&self, g: &mut Inner<N>, net: &mut Net, fx: &mut Fx, addr: SocketAddr, now: u64) -> bool {
        let mut any = false;
        if let Some(t) = fx.wall_us.take() {
            g.wall_us = Some(t);
            any = true;
        }
        for connect in fx.net.drain(..) {
            net.close();
            if connect {
                net.connecting = Some(Box::pin(TcpStream::connect(addr)));
            }
            any = true;
        }
        if std::mem::take(&mut fx.app_events) {
            app_events(g, now, fx);
            any = true;
        }
        any
    }
}

/// Received bytes a device holds before it stops reading its socket.
const RX_CAP: usize = 64 * 1024;
/// Bytes to send a device queues before it stops asking its core for frames.
const TX_CAP: usize = 4 * MAX_FRAME;

type Connecting = Pin<Box<dyn std::future::Future<Output = std::io::Result<TcpStream>> + Send>>;

/// The shell's side of the connection.
#[derive(Default)]
struct Net {
    connecting: Option<Connecting>,
    stream: Option<TcpStream>,
    /// Received bytes the core has not consumed yet.
    rx: Vec<u8>,
    /// Frames not written to the socket yet.
    tx: Vec<u8>,
}

impl Net {
    fn close(&mut self) {
        self.connecting = None;
        self.stream = None;
        self.rx = Vec::new();
        self.tx = Vec::new();
    }

    /// Reads what the socket has. False when it closed or failed.
    fn read(&mut self) -> bool {
        let Some(s) = &self.stream else { return true };
        let mut buf = [0u8; 4096];
        let room = RX_CAP.saturating_sub(self.rx.len()).min(buf.len());
        match s.try_read(&mut buf[..room]) {
            Ok(0) => room == 0,
            Ok(n) => {
                self.rx.extend_from_slice(&buf[..n]);
                true
            }
            Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
        }
    }

    /// Writes what the socket takes. False when it failed.
    fn write(&mut self) -> bool {
        let Some(s) = &self.stream else { return true };
        match s.try_write(&self.tx) {
            Ok(n) => {
                self.tx.drain(..n);
                if self.tx.is_empty() && self.tx.capacity() > TX_CAP {
                    self.tx = Vec::new();
                }
                true
            }
            Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
        }
    }
}

/// What woke a device's task.
enum Wake {
    Connected(std::io::Result<TcpStream>),
    Readable(bool),
    Writable(bool),
    Timer,
}

/// True while [`SimDevice::pause_download_at`] holds the layer data of this connection back.
fn held<const N: usize>(g: &Inner<N>) -> bool {
    g.stats.update.paused && g.dev.is_online()
}

fn refresh_pause<const N: usize>(g: &mut Inner<N>) {
    let u = &g.stats.update;
    g.stats.update.paused =
        g.pause_at.is_some_and(|m| u.state == UpdateState::Downloading && u64::from(u.progress) >= m);
}

/// Samples the core's counters and update status into the stats.
fn sample<const N: usize>(g: &mut Inner<N>) {
    let c = g.dev.counters();
    g.stats.sessions = c.sessions;
    g.stats.acked = g.dev.logs().first_seq().checked_sub(1);
    g.stats.wall_us = g.wall_us;
    if g.updates {
        let status = g.dev.update_status();
        g.stats.update.sample(&status, c.sessions);
        refresh_pause(g);
    }
}

/// The behaviour of the app running now (`None`: the factory app, or nothing runs).
fn behaviour_of_running<const N: usize>(g: &Inner<N>) -> Option<SimApp> {
    g.dev.app().and_then(|h| behaviour(g, h))
}

/// The app behaviour for an image: the factory app runs quietly.
fn behaviour<const N: usize>(g: &Inner<N>, h: &keel_image::Header) -> Option<SimApp> {
    let factory = h.name_str() == update::FACTORY_APP && h.version_str() == update::FACTORY_VERSION;
    (!factory).then_some(g.app)
}

/// `AppAction::Launch`: loads the image header from the slot and starts the simulated app.
fn launch<const N: usize>(g: &mut Inner<N>, mut slot: Slot, now: u64, fx: &mut Fx) {
    // A trial image that does not load is rolled back: the core names the slot to try next.
    for _ in 0..2 {
        match updater().check_slot(g.dev.flash(), slot) {
            Ok(h) => return start(g, slot, h, now, fx),
            Err(_) => match g.dev.app_load_failed(now, slot, fx) {
                Some(next) => slot = next,
                None => break,
            },
        }
    }
    g.stats.app.running = None;
}

fn start<const N: usize>(g: &mut Inner<N>, slot: Slot, h: keel_image::Header, now: u64, fx: &mut Fx) {
    g.dev.app_launched(now, slot, h);
    g.stats.app.launches += 1;
    g.stats.app.running = Some(h.version_str().to_string());
    match behaviour(g, &h) {
        None | Some(SimApp::Silent | SimApp::Mute) => {}
        Some(SimApp::Confirm | SimApp::ApplyPolite) => {
            if g.dev.on_trial() && g.dev.app_confirm(now, fx) == keel_abi::Status::Ok {
                g.stats.app.confirms += 1;
            }
        }
        Some(SimApp::Crash) => {
            let report =
                CrashReport { version: 1, kind: FaultKind::HardFault as u32, time_us: now, ..Default::default() };
            g.dev.app_crashed(now, report, false, fx);
            g.stats.app.crashes += 1;
            g.stats.app.running = None;
            return;
        }
        Some(SimApp::PanicLoop) => {
            g.dev.app_restart(now, PANIC_CODE, fx);
            g.stats.app.restarts += 1;
            g.stats.app.running = None;
            return;
        }
        Some(SimApp::Hang) => {
            let _ = g.dev.watchdog_start(now, HANG_WATCHDOG_MS);
        }
    }
    if g.dev.app_events_pending() {
        app_events(g, now, fx);
    }
}

/// The running app takes its events: an update ready for it is applied by an
/// [`SimApp::ApplyPolite`] device's app.
fn app_events<const N: usize>(g: &mut Inner<N>, now: u64, fx: &mut Fx) {
    if g.stats.app.running.is_none() {
        return; // taken at the next launch
    }
    let events = g.dev.take_app_events();
    if events & keel_device::events::UPDATE_READY != 0 && g.app == SimApp::ApplyPolite && g.dev.app_apply(now, fx) {
        g.stats.app.applies += 1;
    }
}

/// The shell's effects with the app's channel memory (for the channel messages a frame
/// carries).
struct WithMemory<'a> {
    fx: &'a mut Fx,
    mem: Option<&'a mut SimMemory>,
}

impl Output for WithMemory<'_> {
    fn effect(&mut self, effect: Effect<'_>) {
        self.fx.effect(effect);
    }

    fn app_memory(&mut self) -> Option<&mut dyn keel_device::AppMemory> {
        self.mem.as_deref_mut().map(|m| m as &mut dyn keel_device::AppMemory)
    }
}

/// The simulated app as a debugger would see it: no registers, no memory.
struct NoAppMemory;

impl keel_device::DebugTarget for NoAppMemory {
    fn regs(&self) -> [u32; keel_debug::wire::NREGS] {
        [0; keel_debug::wire::NREGS]
    }
    fn write_reg(&mut self, _: usize, _: u32) -> Result<(), keel_debug::wire::Status> {
        Err(keel_debug::wire::Status::Unsupported)
    }
    fn read(&self, _: u32, _: &mut [u8]) -> Result<(), keel_debug::wire::Status> {
        Err(keel_debug::wire::Status::Denied)
    }
    fn write(&mut self, _: u32, _: &[u8]) -> Result<(), keel_debug::wire::Status> {
        Err(keel_debug::wire::Status::Denied)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The idle bench runs 10 000 devices in one process with a 1 KiB ring: a device without
    /// updates is its core (decoder, tx buffer, ring, supervisor, update agent, the debug
    /// agent: 1.3 KiB, most of it the last reply kept for a retransmission, and the app's
    /// channel table: about 1.3 KiB for 8 channels and 16 queued notification records) and no
    /// flash.
    #[test]
    fn an_idle_device_without_updates_stays_small() {
        let d = SimDevice::<1024>::with_ring(new_secret(), [1; 32], 1);
        let state = std::mem::size_of::<Inner<1024>>();
        let handle = std::mem::size_of::<SimDevice<1024>>();
        assert!(d.lock().dev.flash().medium().bytes().is_empty(), "no flash allocated");
        assert!(state + handle < 11 * 1024, "{state} + {handle} bytes per device");
        eprintln!("idle device: {state} bytes of state + {handle} bytes of handle");
    }

    #[tokio::test]
    async fn an_offline_devices_app_is_told_the_network_is_not_connected() {
        let d = SimDevice::new(new_secret(), [1; 32], 1);
        let keys = [(0, 1, "greeting")];
        let got = d.fetch_config(&keys, Duration::from_secs(1)).await;
        assert_eq!(got, Err(ChannelError::Status(keel_abi::Status::NetworkNotConnected)));
        assert_eq!(d.lock().dev.channels().open_count(), 0, "no channel left open");
    }

    #[test]
    fn a_device_with_updates_boots_its_factory_app_journal() {
        let d = SimDevice::new(new_secret(), [1; 32], 1).with_updates(vec![[2; 32]], 4);
        let st = d.stats();
        assert_eq!((st.update.installed, st.update.state, st.update.sequence), (4, UpdateState::Confirmed, 4));
        assert_eq!(st.update.offers, 0, "the journal it starts with is no offer");
        assert_eq!(d.journal().last, Some((4, Outcome::Confirmed)));
        assert!(!d.on_trial());
    }
}
