//! A device core wired to an in-memory server session (the server's real Noise end, snow), with
//! a simulated flash: enough to drive every policy of the core on the host.
#![allow(dead_code)]

use keel_bundle::{build_bundle, split_bundle, BundleSpec, LayerSpec, Policies, SigningKey};
use keel_device::{AppAction, Config, Device, Effect, Identity, Output, MAX_FRAME};
use keel_flash::layout::{self, Partition};
use keel_flash::sim::SimFlash;
use keel_flash::{Geometry, Nor, PAGE_SIZE};
use keel_image::{Header, Target, HEADER_SIZE};
use keel_link::frame::Decoder;
use keel_link::msg::{
    decode_up, features, negotiate, Down, Up, UpdateState, VisorEvent, LAYER_CHUNK, PROTOCOL_MIN, PROTOCOL_VERSION,
};
use keel_link::session::server::{Accepting, ServerSession};
use keel_supervisor::Policy;
use keel_update::Updater;
use rand_core::OsRng;

pub const S: u64 = 1_000_000;
pub const SLOT: u32 = 16 * PAGE_SIZE;
pub const JOURNAL: Partition = Partition { name: "journal", offset: 0, size: 2 * PAGE_SIZE };
pub const APP_A: Partition = Partition { name: "app-a", offset: 2 * PAGE_SIZE, size: SLOT };
pub const APP_B: Partition = Partition { name: "app-b", offset: 2 * PAGE_SIZE + SLOT, size: SLOT };
pub const TARGET: Target = Target {
    exec_base: 0x0020_0000,
    exec_size: 0x0020_0000,
    slot_capacity: SLOT - HEADER_SIZE as u32,
    abi: (keel_abi::ABI_MAJOR, keel_abi::ABI_MINOR),
};

pub fn updater() -> Updater {
    Updater::new(JOURNAL, APP_A, APP_B, TARGET)
}

/// The journal and app slots of the real partition layout (`keel_flash::layout`) for flash of
/// geometry `g`: each partition moved up to a page boundary of `g`, slots big enough for the
/// 2 MiB execution region and a header. For [`Geometry::REFERENCE`] it is the real layout.
pub fn layout_for(g: Geometry) -> [Partition; 3] {
    let page = |x: u32| g.page_ceil(x).expect("fits in u32");
    let journal = Partition { name: "journal", offset: page(layout::JOURNAL.offset), size: 2 * g.page_size() };
    let slot = page(TARGET.exec_size + HEADER_SIZE as u32);
    let a = Partition { name: "app-a", offset: page(layout::APP_A.offset).max(journal.end()), size: slot };
    let b = Partition { name: "app-b", offset: a.end(), size: slot };
    [journal, a, b]
}

/// The updater of [`layout_for`]`(g)`, checking images against [`TARGET`] with the slot's capacity.
pub fn updater_for(g: Geometry) -> Updater {
    let [journal, a, b] = layout_for(g);
    Updater::new(journal, a, b, Target { slot_capacity: a.size - HEADER_SIZE as u32, ..TARGET })
}

pub type Dev = Device<SimFlash, OsRng, 8192>;

/// What the core asked the shell to do.
#[derive(Default)]
pub struct Recorder {
    pub connects: u32,
    pub closes: u32,
    pub wall: Option<u64>,
    pub app_events: u32,
    pub console: Vec<String>,
}

impl Output for Recorder {
    fn effect(&mut self, e: Effect<'_>) {
        match e {
            Effect::Connect => self.connects += 1,
            Effect::Close => self.closes += 1,
            Effect::SetWallClock(t) => self.wall = Some(t),
            Effect::AppEvents => self.app_events += 1,
            Effect::Console(a) => self.console.push(a.to_string()),
        }
    }
}

pub fn signing_key() -> SigningKey {
    SigningKey::from_bytes(&[9; 32])
}

/// Slot bytes (header and image) of app `version` with `len` image bytes.
pub fn image(version: &str, len: usize) -> Vec<u8> {
    let body: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(13).wrapping_add(version.as_bytes()[0])).collect();
    let h = keel_image::build_header(&body, TARGET.exec_base, 0, "app", version, TARGET.abi);
    let mut v = h.to_bytes().to_vec();
    v.extend(body);
    v
}

pub fn header(slot_bytes: &[u8]) -> Header {
    Header::parse(&slot_bytes[..HEADER_SIZE], &TARGET).unwrap()
}

/// (envelope, layer) of a signed bundle.
pub fn bundle(seq: u64, version: &str, policies: Policies<'_>) -> (Vec<u8>, Vec<u8>) {
    let slot = image(version, 20_000);
    let layers = [LayerSpec { id: "app", target: keel_bundle::Target::AppSlot, bytes: &slot }];
    let b =
        build_bundle(&BundleSpec { sequence: seq, layers: &layers, policies }, &signing_key(), |_| Some(SLOT)).unwrap();
    let s = split_bundle(&b).unwrap();
    (s.envelope, s.layers[0].bytes.clone())
}

/// The server end of one connection.
pub struct Server {
    private: Vec<u8>,
    pub public: [u8; 32],
    decoder: Decoder<MAX_FRAME>,
    pub session: Option<ServerSession>,
    /// Every device message received, decoded into an owned description.
    pub received: Vec<Msg>,
    /// Frames to the device not delivered yet.
    pub to_device: Vec<u8>,
    pub log_acked: Option<u64>,
    /// Acknowledge log records as they arrive.
    pub auto_ack: bool,
    /// The layer the server serves for fetches.
    pub layer: Vec<u8>,
    /// Fetches from this offset on are not answered (a stalled download).
    pub stall_at: Option<u32>,
    /// If set, the server offers updates by itself, as the gateway does (see [`Deployment`]).
    pub deployment: Option<Deployment>,
    /// The sequence offered on this connection (offered once per connection).
    offered: Option<u64>,
    /// Answer a status that gets no offer with `NoUpdate`, as the gateway does (false: an older
    /// server that never answers).
    pub answers_no_update: bool,
    /// `NoUpdate` answers sent.
    pub no_updates_sent: u32,
}

/// A signed bundle the server can offer and serve.
#[derive(Clone, Debug)]
pub struct Release {
    pub seq: u64,
    pub envelope: Vec<u8>,
    pub layer: Vec<u8>,
    /// Offered again after the device rolled it back (an operator redeploying it); otherwise a
    /// rollback is the end of it, as for the gateway.
    pub retry_after_rollback: bool,
}

/// What the device last said about updates (`UpdateStatus`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Report {
    pub installed: u64,
    pub sequence: u64,
    pub state: u8,
}

/// The server's update model: which release a device should run, and the gateway's rule for
/// offering it (`host/keel-server/src/gateway.rs`, `reconcile`): at every `UpdateStatus`, offer
/// the target unless the device reports it installed, or reports it downloading, installing, on
/// trial, confirmed, refused or rolled back, or it was already offered on this connection.
#[derive(Clone, Debug)]
pub struct Deployment {
    pub releases: Vec<Release>,
    /// The release a device that reported this should get (an index in `releases`), if any.
    pub target: fn(&Report) -> Option<usize>,
}

/// A device message as the test sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Msg {
    Hello,
    Ready,
    Log {
        seq: u64,
        text: String,
    },
    /// A visor event, with the text the server renders for it.
    Event {
        seq: u64,
        event: VisorEvent,
        text: String,
    },
    Status {
        installed: u64,
        sequence: u64,
        state: u8,
        reason: String,
    },
    Dropped {
        count: u64,
    },
    Fetch {
        sequence: u64,
        offset: u32,
        len: u32,
    },
    Other,
}

impl Server {
    pub fn new() -> Server {
        let k = snow::Builder::new(keel_link::session::NOISE_PARAMS.parse().unwrap()).generate_keypair().unwrap();
        Server {
            private: k.private,
            public: k.public.try_into().unwrap(),
            decoder: Decoder::new(),
            session: None,
            received: Vec::new(),
            to_device: Vec::new(),
            log_acked: None,
            auto_ack: true,
            layer: Vec::new(),
            stall_at: None,
            deployment: None,
            offered: None,
            answers_no_update: true,
            no_updates_sent: 0,
        }
    }

    /// A new TCP connection: forget the old session.
    pub fn reset(&mut self) {
        self.decoder = Decoder::new();
        self.session = None;
        self.to_device.clear();
        self.offered = None;
    }

    /// The last `UpdateStatus` the device sent, if any.
    pub fn last_report(&self) -> Option<Report> {
        self.received.iter().rev().find_map(|m| match *m {
            Msg::Status { installed, sequence, state, .. } => Some(Report { installed, sequence, state }),
            _ => None,
        })
    }

    /// The release the deployment wants for a device that reported `rep`, if any.
    pub fn target_for(&self, rep: &Report) -> Option<&Release> {
        let d = self.deployment.as_ref()?;
        (d.target)(rep).map(|i| &d.releases[i])
    }

    /// The gateway's reconcile step after an `UpdateStatus`: an offer, or `NoUpdate` when the
    /// device is not downloading or installing.
    fn reconcile(&mut self, rep: Report) {
        if !self.offer(rep) && self.answers_no_update {
            let busy = [UpdateState::Downloading, UpdateState::Installing].iter().any(|s| s.as_u8() == rep.state);
            if !busy {
                let target = self.target_for(&rep).map_or(0, |t| t.seq);
                self.send(&Down::NoUpdate { target });
                self.no_updates_sent += 1;
            }
        }
    }

    /// Offers the target if the device needs it; true if it did.
    fn offer(&mut self, rep: Report) -> bool {
        let Some(t) = self.target_for(&rep) else { return false };
        if rep.installed == t.seq || self.offered == Some(t.seq) {
            return false;
        }
        let mut handled =
            vec![UpdateState::Downloading, UpdateState::Installing, UpdateState::Trial, UpdateState::Confirmed];
        handled.push(UpdateState::Refused);
        if !t.retry_after_rollback {
            handled.push(UpdateState::RolledBack);
        }
        let handled = handled.iter().any(|u| u.as_u8() == rep.state);
        if rep.sequence == t.seq && handled {
            return false;
        }
        let (seq, envelope) = (t.seq, t.envelope.clone());
        self.send(&Down::UpdateOffer { envelope: &envelope });
        self.offered = Some(seq);
        true
    }

    /// The layer of bundle `sequence`: the deployment's release, else [`Server::layer`].
    fn layer_of(&self, sequence: u64) -> &[u8] {
        let release = self.deployment.as_ref().and_then(|d| d.releases.iter().find(|r| r.seq == sequence));
        release.map_or(&self.layer, |r| &r.layer)
    }

    pub fn send(&mut self, m: &Down<'_>) {
        let f = self.session.as_mut().expect("session").send(m).unwrap();
        self.to_device.extend(f);
    }

    /// Takes bytes from the device.
    pub fn take(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let (used, done) = self.decoder.push(bytes).unwrap();
            bytes = &bytes[used..];
            let Some(len) = done else { continue };
            let payload = self.decoder.frame()[..len].to_vec();
            match self.session.as_mut() {
                None => {
                    let acc = Accepting::read(&self.private, &payload).unwrap();
                    let hello = acc.hello().unwrap();
                    let n = negotiate(&hello, PROTOCOL_MIN, PROTOCOL_VERSION, features::SUPPORTED)
                        .expect("the device speaks this protocol");
                    self.received.push(Msg::Hello);
                    let welcome = Down::Welcome {
                        protocol: n.protocol,
                        unix_us: 1_800_000_000_000_000,
                        log_acked: self.log_acked,
                        features: n.features,
                    };
                    let (s, f) = acc.welcome(&welcome).unwrap();
                    self.session = Some(s);
                    self.to_device.extend(f);
                }
                Some(s) => {
                    let plain = s.receive(&payload).unwrap();
                    let m = decode_up(&plain).unwrap();
                    let msg = match m {
                        Up::Ready => Msg::Ready,
                        Up::Log { seq, text, .. } => {
                            if self.auto_ack {
                                self.log_acked = Some(seq);
                                self.send(&Down::LogAck { upto: seq });
                            }
                            Msg::Log { seq, text: String::from_utf8_lossy(text).into_owned() }
                        }
                        Up::Event { seq, event, .. } => {
                            if self.auto_ack {
                                self.log_acked = Some(seq);
                                self.send(&Down::LogAck { upto: seq });
                            }
                            let mut text = String::new();
                            event.write_text(env!("CARGO_PKG_VERSION"), &mut text).unwrap();
                            Msg::Event { seq, event, text }
                        }
                        Up::UpdateStatus { installed, sequence, state, reason, .. } => {
                            self.reconcile(Report { installed, sequence, state });
                            Msg::Status {
                                installed,
                                sequence,
                                state,
                                reason: keel_abi::UpdateReason::from_u16(reason).map_or("", |r| r.as_str()).to_string(),
                            }
                        }
                        Up::Dropped { count, .. } => Msg::Dropped { count },
                        Up::FetchLayer { sequence, component, offset, len } => {
                            assert_eq!(component, 0);
                            if self.stall_at.is_some_and(|s| offset >= s) {
                                self.received.push(Msg::Fetch { sequence, offset, len });
                                continue;
                            }
                            let range = self.layer_of(sequence)[offset as usize..(offset + len) as usize].to_vec();
                            for (i, chunk) in range.chunks(LAYER_CHUNK).enumerate() {
                                let at = offset + (i * LAYER_CHUNK) as u32;
                                self.send(&Down::LayerData { sequence, component: 0, offset: at, data: chunk });
                            }
                            Msg::Fetch { sequence, offset, len }
                        }
                        _ => Msg::Other,
                    };
                    self.received.push(msg);
                }
            }
        }
    }

    /// The update states the device reported, in order, without repeats.
    pub fn states(&self) -> Vec<u8> {
        let mut v: Vec<u8> = self
            .received
            .iter()
            .filter_map(|m| match m {
                Msg::Status { state, .. } => Some(*state),
                _ => None,
            })
            .collect();
        v.dedup();
        v
    }

    /// App log lines and rendered visor events, in the order received.
    pub fn log_texts(&self) -> Vec<String> {
        self.received
            .iter()
            .filter_map(|m| match m {
                Msg::Log { text, .. } | Msg::Event { text, .. } => Some(text.clone()),
                _ => None,
            })
            .collect()
    }
}

/// A device, its shell's view and its server.
pub struct World {
    pub dev: Dev,
    pub out: Recorder,
    pub server: Server,
    pub now: u64,
    /// The TCP connection is up (the shell's view).
    pub tcp: bool,
    /// The server accepts connections.
    pub server_up: bool,
    /// What the simulated app does.
    pub app: Option<Header>,
    pub launches: Vec<keel_update::Slot>,
    pub trace: Vec<String>,
    /// The partitions the device was built with (to check images as the shell would).
    pub updater: Updater,
    /// Boots so far (the boot counter of the device's config).
    pub boots: u32,
    /// The simulated app is running (launched, not crashed or restarting since).
    pub running: bool,
    /// A running app gives a sign of life all the time ([`keel_device::Device::app_alive`] at
    /// every step); false: a mute app.
    pub lively: bool,
}

pub fn config(server: &Server, boot: u32) -> Config {
    Config {
        identity: Some(Identity {
            device_key: [7; 32],
            server_key: server.public,
            signer_key: Some(signing_key().verifying_key().to_bytes()),
        }),
        boot_count: boot,
        visor_version: env!("CARGO_PKG_VERSION"),
        policy: Policy::default(),
        warm: None,
        seed: 42,
        reconnect_min_ms: 1000,
    }
}

/// A factory flash: `v1` in slot A.
pub fn factory_flash(v1: &[u8]) -> Nor<SimFlash> {
    let mut f = Nor::new(SimFlash::new(2 * PAGE_SIZE + 2 * SLOT));
    let mut padded = v1.to_vec();
    padded.resize(v1.len().div_ceil(16) * 16, 0xFF);
    f.erase_range(APP_A.offset, APP_A.offset + APP_A.size).unwrap();
    f.program(APP_A.offset, &padded).unwrap();
    f
}

impl World {
    pub fn new() -> World {
        World::with_flash(factory_flash(&image("1.0.0", 5000)), updater())
    }

    /// A device that powers on (boot 1, time 0) with this flash and these partitions.
    pub fn with_flash(flash: Nor<SimFlash>, updater: Updater) -> World {
        World::with_flash_and_server(flash, updater, Server::new())
    }

    /// [`World::with_flash`] with this server (e.g. one that keeps its key over many worlds).
    pub fn with_flash_and_server(flash: Nor<SimFlash>, updater: Updater, server: Server) -> World {
        let mut out = Recorder::default();
        let dev = Dev::new(config(&server, 1), flash, updater, 0, &mut out);
        World {
            dev,
            out,
            server,
            now: 0,
            tcp: false,
            server_up: true,
            app: None,
            launches: Vec::new(),
            trace: Vec::new(),
            updater,
            boots: 1,
            running: false,
            lively: true,
        }
    }

    /// A reset that keeps RAM: a new device on the same flash booted with `warm` (the run record
    /// the shell kept, possibly with a cause), the power and the server as in
    /// [`World::power_cycle`]; the time goes on.
    pub fn warm_reset(&mut self, warm: Option<keel_supervisor::handover::Record>) {
        self.boots += 1;
        let placeholder = Dev::unbooted(config(&self.server, 0), Nor::new(SimFlash::new(0)), self.updater, self.now);
        let flash = core::mem::replace(&mut self.dev, placeholder).into_flash();
        self.server.reset();
        self.server.received.clear();
        self.out = Recorder::default();
        let cfg = Config { warm, ..config(&self.server, self.boots) };
        self.dev = Dev::new(cfg, flash, self.updater, self.now, &mut self.out);
        self.tcp = false;
        self.app = None;
        self.running = false;
    }

    /// True while the flash has power (a `SimFlash` that was cut fails every write and erase).
    pub fn powered(&self) -> bool {
        self.dev.flash().medium().powered()
    }

    /// Power off and on again: a new device on the same flash, with the power restored (a cut
    /// scheduled on a flash that still has power stays scheduled); RAM (the core, the app, the
    /// TCP connection) is lost; the server keeps its key and forgets the connection. The time
    /// goes on.
    pub fn power_cycle(&mut self) {
        self.boots += 1;
        let placeholder = Dev::unbooted(config(&self.server, 0), Nor::new(SimFlash::new(0)), self.updater, self.now);
        let mut flash = core::mem::replace(&mut self.dev, placeholder).into_flash();
        if !flash.medium().powered() {
            flash.medium_mut_for_tests().power_on();
        }
        self.server.reset();
        self.server.received.clear();
        self.out = Recorder::default();
        self.dev = Dev::new(config(&self.server, self.boots), flash, self.updater, self.now, &mut self.out);
        self.tcp = false;
        self.app = None;
        self.running = false;
    }

    /// Reboots the device on the same flash (a power cycle).
    pub fn reboot(&mut self, boot: u32) {
        let mut server = core::mem::replace(&mut self.server, Server::new());
        server.received.clear();
        server.stall_at = None;
        let flash = core::mem::replace(
            &mut self.dev,
            Dev::new(config(&server, boot), Nor::new(SimFlash::new(16)), self.updater, self.now, &mut self.out),
        )
        .into_flash();
        self.dev = Dev::new(config(&server, boot), flash, self.updater, self.now, &mut self.out);
        self.server = server;
        self.server.reset();
        self.tcp = false;
        self.app = None;
        self.running = false;
        self.boots = boot;
    }

    /// Moves bytes both ways until nothing moves, handling connects. Stops at once when the
    /// flash loses power (the device is dead until [`World::power_cycle`]).
    pub fn pump(&mut self) {
        for _ in 0..10_000 {
            if !self.powered() {
                return;
            }
            let mut moved = false;
            if self.out.connects > 0 {
                self.out.connects = 0;
                self.out.closes = 0;
                if self.server_up {
                    self.server.reset();
                    self.tcp = true;
                    self.dev.tcp_connected(self.now, &mut self.out);
                } else {
                    self.dev.tcp_closed(self.now, &mut self.out);
                }
                moved = true;
            }
            if self.out.closes > 0 {
                self.out.closes = 0;
                self.tcp = false;
            }
            if self.tcp {
                let mut buf = vec![0u8; MAX_FRAME];
                while let Some(n) = self.dev.poll_transmit(self.now, &mut buf) {
                    self.server.take(&buf[..n]);
                    moved = true;
                }
                if !self.powered() {
                    return;
                }
                if !self.server.to_device.is_empty() {
                    let bytes = core::mem::take(&mut self.server.to_device);
                    let used = self.dev.receive(self.now, &bytes, &mut self.out);
                    self.server.to_device = bytes[used..].to_vec();
                    moved = true;
                }
            }
            if !moved {
                return;
            }
        }
        panic!("the exchange does not settle");
    }

    /// Runs the device's timers and the simulated app until `until`, jumping from deadline to
    /// deadline; `app` decides what the app does at each launch.
    pub fn run_until(&mut self, until: u64, app: &mut dyn FnMut(&mut World) -> AppStep) {
        loop {
            if self.running && self.lively {
                self.dev.app_alive(self.now);
            }
            self.pump();
            match self.dev.poll(self.now, &mut self.out) {
                AppAction::Launch(slot) => {
                    self.launches.push(slot);
                    let p = self.dev.partition(slot);
                    let mut hdr = [0u8; HEADER_SIZE];
                    self.dev.flash().read(p.offset, &mut hdr).unwrap();
                    match self.updater.check_slot(self.dev.flash(), slot) {
                        Ok(h) => {
                            self.dev.app_launched(self.now, slot, h);
                            self.app = Some(h);
                            self.running = true;
                            self.trace.push(format!("launch {}", h.version_str()));
                            self.pump();
                            match app(self) {
                                AppStep::Run => {}
                                AppStep::Crash => {
                                    self.running = false;
                                    self.trace.push("crash".into());
                                    let r = keel_abi::CrashReport { version: 1, kind: 3, ..Default::default() };
                                    self.dev.app_crashed(self.now, r, false, &mut self.out);
                                }
                                AppStep::Restart => {
                                    self.running = false;
                                    self.trace.push("restart".into());
                                    self.dev.app_restart(self.now, 0xDEAD, &mut self.out);
                                }
                            }
                        }
                        Err(_) => {
                            self.dev.app_load_failed(self.now, slot, &mut self.out);
                        }
                    }
                    continue;
                }
                AppAction::KillForWatchdog => {
                    self.running = false;
                    self.trace.push("watchdog".into());
                    let r = keel_abi::CrashReport { version: 1, kind: 6, ..Default::default() };
                    self.dev.app_crashed(self.now, r, true, &mut self.out);
                    continue;
                }
                AppAction::None => {}
            }
            self.pump();
            let next = self.dev.poll_at().unwrap_or(u64::MAX);
            if next > until {
                self.now = until;
                self.pump();
                return;
            }
            self.now = next.max(self.now);
        }
    }

    /// Brings the link up (address, TCP, handshake).
    pub fn online(&mut self) {
        self.dev.address_acquired(self.now, &mut self.out);
        self.pump();
        assert!(self.dev.is_online(), "console: {:#?}", self.out.console);
    }

    /// Offers `(envelope, layer)` and lets the device download it.
    pub fn offer(&mut self, envelope: &[u8], layer: &[u8]) {
        self.server.layer = layer.to_vec();
        self.server.send(&Down::UpdateOffer { envelope });
        self.pump();
    }

    pub fn console_has(&self, s: &str) -> bool {
        self.out.console.iter().any(|l| l.contains(s))
    }
}

/// What the simulated app does once launched.
pub enum AppStep {
    /// Runs (maybe after confirming, done by the closure itself).
    Run,
    /// Crashes right away.
    Crash,
    /// Asks for a restart right away (a panic handler).
    Restart,
}
