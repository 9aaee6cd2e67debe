//! # Keel device core
//!
//! Everything a Keel device decides, sans-IO and `no_std`, written once for the visor (on the
//! board) and `keel-sim` (on the host), and tested on the host:
//!
//! * the app's lifecycle ([`keel_supervisor::Supervisor`]: launches, crash backoff, watchdog);
//! * the connection state machine ([`conn::Connection`]: address → connecting → handshaking →
//!   online → backoff, with the silence timeout);
//! * the secure link to the server and the sequenced log ring (`keel_link::device::DeviceLink`,
//!   `keel_log::LogRing`);
//! * the update agent and the power-fail-safe journal (`keel_update`), and the runtime half of a
//!   trial ([`trial::Trial`]: grace time, link seen or dropped, the trial instance's liveness;
//!   panics and early restarts count as trial crashes; only the trial instance confirms) and of
//!   a polite update (the apply deadline);
//! * reset-loop resistance: the run record the shell keeps in warm RAM
//!   ([`Device::take_run_record`], [`Config::warm`]; an unexplained reset while the app ran is
//!   a crash of the app) and the quarantine of an app that crashed too often in a row until the
//!   device asked the server for updates ([`quarantine`]);
//! * logs operators can trust: app text is escaped and may fill at most 3/4 of the ring
//!   ([`Device::push_log`]); requested restarts are rate-limited (`Policy::restart_burst`).
//!
//! The shape follows smoltcp and rustls: the shell feeds inputs with the current time
//! ([`Device::handle`] with an [`Input`], or the typed method it maps to: [`Device::receive`],
//! [`Device::tcp_connected`], [`Device::app_crashed`], ...), drives timers
//! with [`Device::poll`] at [`Device::poll_at`], and asks for bytes to send with
//! [`Device::poll_transmit`] (one frame per call, so the work per call is bounded). What the
//! shell must do — open or close the TCP connection, set the wall clock, print a console line —
//! comes out through an [`Output`]. The shell never decides policy: the visor is a board adapter
//! around this crate, and the simulator is a tokio adapter around it.
//!
//! Long work is bounded per call: a received frame is handled at once (at most one Ed25519
//! verification of an offer, one 960-byte chunk written to flash, or one image check at the end of
//! a download), and the journal is read only when an update step writes it, never per chunk.
#![no_std]
#![forbid(unsafe_code)]

pub mod conn;
pub mod debug;
pub mod quarantine;
pub mod trial;

use core::fmt;

use clatter::traits::Rng;
use keel_abi::{update_outcome, BootInfo, CrashReport, FaultKind, Status, UpdateInfo};
use keel_flash::layout::Partition;
use keel_flash::{FlashStats, Medium, Nor};
use keel_image::Header;
use keel_link::device::{DeviceLink, Event};
use keel_link::frame::Decoder;
use keel_link::msg::{Up, UpdateState as WireState, PROTOCOL_VERSION};
use keel_log::{Kind, LogRing, PushError};
use keel_proto::event::{BootReason, CrashInfo, ReleaseReason, VisorEvent};
use keel_supervisor::handover::{self, ResetCause};
use keel_supervisor::{Action, Carry, Policy, Supervisor};
use keel_update::agent::{self, Agent, Next};
use keel_update::{Outcome, Phase, Reason, Slot, UpdateState, Updater};

pub use conn::{Connection, LossReason, State as ConnState};
pub use debug::{DebugAction, DebugService, DebugTarget, RestartReason, StopReason};
pub use keel_channel::device::{AppMemory, ChanCounters, Channels};
pub use keel_link::session::MAX_FRAME;
pub use keel_proto::event::CRASH_DUMP_BYTES;
pub use quarantine::Quarantine;
pub use trial::Trial;

/// The earliest of some deadlines (µs), if any: the one function every shell uses to arm its
/// alarm, so a new subsystem adds its deadline in one place.
pub fn earliest(deadlines: impl IntoIterator<Item = Option<u64>>) -> Option<u64> {
    deadlines.into_iter().flatten().min()
}

/// What the shell must do. Delivered through [`Output::effect`] while an input is handled.
#[derive(Clone, Copy, Debug)]
pub enum Effect<'a> {
    /// Open a TCP connection to the server; report [`Device::tcp_connected`] or
    /// [`Device::tcp_closed`].
    Connect,
    /// Abort the TCP connection (the core already forgot it).
    Close,
    /// The server's wall clock, in microseconds since the Unix epoch.
    SetWallClock(u64),
    /// Events for the app became pending ([`Device::take_app_events`]): wake a waiting app.
    AppEvents,
    /// A line for the device's console (diagnostics; the server gets events separately).
    Console(fmt::Arguments<'a>),
}

/// Where effects go.
pub trait Output {
    /// Carries out one effect.
    fn effect(&mut self, effect: Effect<'_>);

    /// The running app's memory, for the channel messages a received frame carries (written
    /// into the app's receive buffers). `None` (the default): no app memory is reachable, and a
    /// channel that receives data closes with `BufferFault`.
    fn app_memory(&mut self) -> Option<&mut dyn AppMemory> {
        None
    }
}

/// App memory that refuses every access (no app runs, or the shell has none).
pub struct NoAppMemory;

impl AppMemory for NoAppMemory {
    fn read(&mut self, _: u32, _: &mut [u8], _: bool) -> bool {
        false
    }
    fn write(&mut self, _: u32, _: &[u8], _: bool) -> bool {
        false
    }
}

/// What the shell must do with the app after [`Device::poll`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppAction {
    /// Nothing.
    None,
    /// Load and start the app from this slot (report [`Device::app_launched`] or
    /// [`Device::app_load_failed`]).
    Launch(Slot),
    /// The app's watchdog expired: stop it and report [`Device::app_crashed`] with
    /// `watchdog: true`.
    KillForWatchdog,
}

/// One input, for shells that prefer a single entry point ([`Device::handle`]); each maps to the
/// typed method of the same name.
#[derive(Clone, Copy, Debug)]
pub enum Input<'a> {
    /// [`Device::address_acquired`].
    AddressAcquired,
    /// [`Device::address_lost`].
    AddressLost,
    /// [`Device::tcp_connected`].
    TcpConnected,
    /// [`Device::tcp_closed`].
    TcpClosed,
    /// [`Device::receive`]: answered with [`Response::Consumed`].
    Received(&'a [u8]),
    /// [`Device::app_launched`]: answered with [`Response::Launched`].
    AppLaunched(Slot, Header),
    /// [`Device::app_load_failed`]: answered with [`Response::TrySlot`].
    AppLoadFailed(Slot),
    /// [`Device::app_crashed`]: answered with [`Response::RestartIn`].
    AppCrashed {
        /// What the fault left.
        report: CrashReport,
        /// The watchdog expired (the app hung).
        watchdog: bool,
    },
    /// [`Device::app_restart`] with the app's restart code.
    AppRestart(u32),
    /// [`Device::app_alive`].
    AppAlive,
    /// [`Device::app_confirm`]: answered with [`Response::Status`].
    AppConfirm,
    /// [`Device::app_apply`]: answered with [`Response::Applied`].
    AppApply,
    /// [`Device::push_log`]: answered with [`Response::Logged`].
    Log {
        /// App line or visor text.
        kind: Kind,
        /// Level.
        level: u8,
        /// The text.
        text: &'a [u8],
    },
}

/// What [`Device::handle`] answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Response {
    /// Nothing to answer.
    Done,
    /// Bytes of [`Input::Received`] consumed.
    Consumed(usize),
    /// The app's boot information after [`Input::AppLaunched`].
    Launched(BootInfo),
    /// After [`Input::AppLoadFailed`]: the slot to load next (a rolled-back trial), if any.
    TrySlot(Option<Slot>),
    /// After [`Input::AppCrashed`]: the restart backoff (µs).
    RestartIn(u64),
    /// The system call's status ([`Input::AppConfirm`]).
    Status(Status),
    /// [`Input::AppApply`]: whether an update was committed (the app restarts).
    Applied(bool),
    /// [`Input::Log`]: the record's sequence number, or why it was not queued.
    Logged(Result<u64, PushError>),
}

/// The device's identity from its factory data.
#[derive(Clone, Copy)]
pub struct Identity {
    /// The device's static X25519 secret.
    pub device_key: [u8; 32],
    /// The server's static X25519 public key.
    pub server_key: [u8; 32],
    /// The Ed25519 key bundles must be signed with (`None`: updates are refused).
    pub signer_key: Option<[u8; 32]>,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity").field("device_key", &"<secret>").finish_non_exhaustive()
    }
}

/// How a device starts.
#[derive(Clone, Copy, Debug)]
pub struct Config {
    /// `None` when the device is not provisioned: no network, no updates from a server.
    pub identity: Option<Identity>,
    /// The persistent boot counter (log sequence numbers are `boot << 32 | n`).
    pub boot_count: u32,
    /// The visor's version (`Hello`, and the minimum version bundles may require).
    pub visor_version: &'static str,
    /// The app restart policy.
    pub policy: Policy,
    /// The run record the previous boot left in warm RAM, if one survived (see
    /// [`keel_supervisor::handover`] and [`Device::take_run_record`]): the counters, the crash
    /// series, a quarantine and the last crash report continue; a reset while the app ran that
    /// the record does not explain counts as a crash.
    pub warm: Option<handover::Record>,
    /// Varies backoff jitter between devices and boots.
    pub seed: u64,
    /// The first reconnect delay (ms); it doubles per failed attempt up to 60 s. 1 000 on a
    /// device; simulators and tests may go faster.
    pub reconnect_min_ms: u32,
}

/// App-facing event bits ([`keel_abi::events`]).
pub use keel_abi::events;

/// Counters for diagnostics and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Secure channels that reached online.
    pub sessions: u32,
    /// Frames received from the server.
    pub frames_in: u64,
    /// Frames handed to the transport.
    pub frames_out: u64,
    /// Connections dropped for bad input from the server.
    pub protocol_errors: u32,
    /// Update offers handled.
    pub offers: u32,
    /// Layer bytes received and handed to the update agent.
    pub layer_bytes: u64,
    /// `FetchLayer` requests sent.
    pub fetches_sent: u32,
    /// The last `FetchLayer` sent: (sequence, offset, length).
    pub last_fetch: Option<(u64, u32, u32)>,
    /// Server messages of kinds this device does not know, skipped (on every connection).
    pub unknown_skipped: u64,
}

/// Console and event sink for one input: console lines go to the shell, visor events go to the
/// log ring as structured records (and so to the server).
struct Log<'a, const N: usize, O: Output> {
    logs: &'a mut LogRing<N>,
    out: &'a mut O,
    now: u64,
}

impl<const N: usize, O: Output> Log<'_, N, O> {
    fn console(&mut self, args: fmt::Arguments<'_>) {
        self.out.effect(Effect::Console(args));
    }

    /// A visor event for the server: a `Kind::Event` record in the ring, sent as `Up::Event`.
    fn event(&mut self, ev: VisorEvent) {
        let mut buf = [0u8; VisorEvent::MAX_LEN];
        if let Ok(n) = ev.encode(&mut buf) {
            // The oldest records make room if the ring is full (the drop is counted and reported).
            let _ = self.logs.push(Kind::Event, 0, self.now, &buf[..n]);
        }
    }

    /// An update event: console line and the typed event.
    fn update(&mut self, sequence: u64, state: WireState, reason: Option<Reason>, args: fmt::Arguments<'_>) {
        self.console(args);
        self.event(VisorEvent::Update { sequence, state: state.as_u8(), reason: reason.map_or(0, |r| r as u16) });
    }
}

/// The update side of the device: the journal, the agent, the running slot and trial.
struct Updates<M: Medium> {
    up: Updater,
    flash: Nor<M>,
    agent: Agent,
    signer: Option<[u8; 32]>,
    visor_version: u32,
    /// The slot the app runs from.
    slot: Slot,
    trial: Option<Trial>,
    /// A verified update waits for the app; it is applied anyway at this time.
    apply_deadline: Option<u64>,
    /// Flash counters when the current update's download started (for its cost report).
    stats_at_offer: Option<FlashStats>,
    /// The journal as last read (after every step that writes it).
    journal: UpdateState,
    /// A `FetchLayer` to send.
    fetch: Option<Next>,
    /// Test hook: hold `FetchLayer` requests back (see [`Device::hold_fetches`]).
    hold_fetches: bool,
    /// An `UpdateStatus` is due.
    status_dirty: bool,
    /// App events not taken yet.
    app_events: u32,
}

impl<M: Medium> Updates<M> {
    /// Reads the journal again after a step that wrote it (a failed read keeps the last state).
    fn refresh(&mut self) {
        if let Ok(s) = self.up.state(&self.flash) {
            self.journal = s;
        }
    }

    /// Boot: reads the journal and decides the slot (counting a trial boot).
    fn boot<const N: usize, O: Output>(&mut self, link_up: bool, log: &mut Log<'_, N, O>) {
        self.trial = None;
        match self.up.boot(&mut self.flash) {
            Ok(plan) => {
                self.refresh();
                self.slot = plan.slot;
                if let Some(r) = plan.rolled_back {
                    let seq = self.journal.last.map_or(0, |l| l.0);
                    let text = format_args!("update: rolled back seq {} ({})", seq, r.as_str());
                    log.update(seq, WireState::RolledBack, Some(r), text);
                }
                if let Phase::Trial(t) = self.journal.phase {
                    if plan.trial {
                        let text = format_args!(
                            "update: trial of seq {} in slot {} (boot {} of at most {})",
                            t.seq,
                            plan.slot.as_str(),
                            t.boots,
                            keel_update::MAX_TRIAL_BOOTS
                        );
                        log.update(t.seq, WireState::Trial, None, text);
                        self.trial = Some(Trial::new(t.seq, t.policy, link_up));
                    }
                }
            }
            Err(e) => {
                log.console(format_args!("update: journal error ({}); booting the active slot", e));
                self.refresh();
                self.slot = self.journal.active;
            }
        }
        self.status_dirty = true;
    }

    fn log_status<const N: usize, O: Output>(&self, log: &mut Log<'_, N, O>) {
        let s = self.agent.status(&self.up, &self.flash);
        log.console(format_args!(
            "update: seq {} {:?} {}/{} bytes{}{}",
            s.sequence,
            s.state,
            s.progress,
            s.total,
            if s.reason.is_some() { ": " } else { "" },
            s.reason.map_or("", |r| r.as_str())
        ));
    }

    fn on_offer<const N: usize, O: Output>(&mut self, envelope: &[u8], log: &mut Log<'_, N, O>) -> Next {
        let trusted: &[[u8; 32]] = match &self.signer {
            Some(k) => core::slice::from_ref(k),
            None => &[],
        };
        let before = self.flash.stats();
        let next = self.agent.on_offer(&self.up, &mut self.flash, envelope, trusted, self.visor_version);
        if self.agent.downloading() && self.stats_at_offer.is_none() {
            self.stats_at_offer = Some(before);
        }
        self.refresh();
        self.log_status(log);
        next
    }

    fn on_data<const N: usize, O: Output>(
        &mut self,
        sequence: u64,
        offset: u32,
        data: &[u8],
        log: &mut Log<'_, N, O>,
    ) -> Option<Next> {
        let was_downloading = self.agent.downloading();
        let next = self.agent.on_data(&self.up, &mut self.flash, sequence, offset, data);
        if next == Next::None && self.agent.downloading() {
            // Mid-page: nothing changed that the server or the journal cache needs to know.
            return None;
        }
        self.refresh();
        if was_downloading && !self.agent.downloading() && next == Next::None {
            // The download ended without an install (digest mismatch, flash error, ...).
            self.log_status(log);
        }
        Some(next)
    }

    /// Acts on what the agent asked for. Returns true if the app must restart (an installed
    /// update starts its trial).
    fn next<const N: usize, O: Output>(
        &mut self,
        next: Next,
        now: u64,
        link_up: bool,
        log: &mut Log<'_, N, O>,
    ) -> bool {
        self.status_dirty = true;
        match next {
            Next::Fetch { .. } => {
                self.fetch = Some(next);
                false
            }
            Next::Installed => {
                self.boot(link_up, log);
                true
            }
            Next::Ready { politeness_s } => {
                let first = self.apply_deadline.is_none();
                self.apply_deadline.get_or_insert(now.saturating_add(politeness_s as u64 * 1_000_000));
                self.app_events |= events::UPDATE_READY;
                log.out.effect(Effect::AppEvents);
                if first {
                    let seq = self.agent.status(&self.up, &self.flash).sequence;
                    let text = format_args!("update: ready; the app may apply it within {} s", politeness_s);
                    log.update(seq, WireState::Installing, None, text);
                }
                false
            }
            Next::None => false,
        }
    }

    /// Commits a ready update and switches to its trial. True if the app must restart.
    fn apply<const N: usize, O: Output>(&mut self, why: &str, link_up: bool, log: &mut Log<'_, N, O>) -> bool {
        self.apply_deadline = None;
        self.app_events &= !events::UPDATE_READY;
        match self.agent.apply(&self.up, &mut self.flash) {
            Next::Installed => {
                log.console(format_args!("update: applying ({})", why));
                self.boot(link_up, log);
                true
            }
            _ => {
                self.refresh();
                self.status_dirty = true;
                false
            }
        }
    }

    fn rolled_back<const N: usize, O: Output>(&mut self, seq: u64, r: Reason, log: &mut Log<'_, N, O>) {
        log.update(
            seq,
            WireState::RolledBack,
            Some(r),
            format_args!("update: rolled back seq {} ({})", seq, r.as_str()),
        );
        self.trial = None;
        self.slot = self.slot.other();
        self.status_dirty = true;
    }

    fn confirmed<const N: usize, O: Output>(&mut self, seq: u64, how: &str, log: &mut Log<'_, N, O>) {
        log.update(seq, WireState::Confirmed, None, format_args!("update: confirmed seq {} ({})", seq, how));
        self.trial = None;
        self.status_dirty = true;
        if let Some(a) = self.stats_at_offer.take() {
            let b = self.flash.stats();
            log.console(format_args!(
                "update: flash used by seq {}: {} page erases, {} program operations ({} units)",
                seq,
                b.erases - a.erases,
                b.programs - a.programs,
                b.units_programmed - a.units_programmed
            ));
        }
    }

    /// A trial app crashed (or asked for a restart that counts): counts it; after too
    /// many, rolls back. True if it rolled back.
    fn trial_failed<const N: usize, O: Output>(&mut self, watchdog: bool, log: &mut Log<'_, N, O>) -> bool {
        let Some(t) = self.trial else { return false };
        let rolled_back = match self.up.app_crashed(&mut self.flash, watchdog) {
            Ok(Some(r)) => {
                self.rolled_back(t.seq, r, log);
                true
            }
            Ok(None) => false,
            Err(e) => {
                log.console(format_args!("update: journal error ({})", e));
                false
            }
        };
        self.refresh();
        rolled_back
    }

    /// Timers: the politeness time of a ready update, the grace time of a trial. True if the
    /// app must restart.
    fn poll<const N: usize, O: Output>(&mut self, now: u64, link_up: bool, log: &mut Log<'_, N, O>) -> bool {
        if self.apply_deadline.is_some_and(|d| now >= d) && self.apply("politeness time over", link_up, log) {
            return true;
        }
        let Some(t) = self.trial else { return false };
        if !t.expired(now) {
            return false;
        }
        // Confirm-by-link needs the link and a sign of life from the running trial instance.
        let by_link = t.policy.confirm == keel_update::Confirm::ByLink;
        let result = if by_link && t.link_stayed_up() && !t.lively(now) {
            let r = Reason::NoSignOfLife;
            self.up.rollback(&mut self.flash, r).map(|done| done.then_some(Outcome::RolledBack(r)))
        } else {
            self.up.grace_expired(&mut self.flash, t.link_stayed_up())
        };
        self.refresh();
        match result {
            Ok(Some(Outcome::Confirmed)) => {
                self.confirmed(t.seq, "ran the grace time with the cloud link up", log);
                false
            }
            Ok(Some(Outcome::RolledBack(r))) => {
                self.rolled_back(t.seq, r, log);
                true
            }
            Ok(_) => {
                self.trial = None;
                false
            }
            Err(e) => {
                // The decision is not recorded: try again in a second (never spin on a past
                // deadline while the flash keeps failing).
                log.console(format_args!("update: journal error ({}); retrying", e));
                if let Some(t) = self.trial.as_mut() {
                    t.postpone(now.saturating_add(1_000_000));
                }
                false
            }
        }
    }

    fn poll_at(&self) -> Option<u64> {
        earliest([self.trial.and_then(|t| t.poll_at()), self.apply_deadline])
    }

    fn info(&self) -> UpdateInfo {
        let s = &self.journal;
        let (last_sequence, last_outcome, last_reason) = match s.last {
            None => (0, update_outcome::NONE, 0),
            Some((seq, o)) => match o {
                Outcome::Confirmed => (seq, update_outcome::CONFIRMED, 0),
                Outcome::RolledBack(r) => (seq, update_outcome::ROLLED_BACK, r as u32),
                Outcome::Refused(r) => (seq, update_outcome::REFUSED, r as u32),
                Outcome::Failed(r) => (seq, update_outcome::FAILED, r as u32),
            },
        };
        UpdateInfo {
            version: 1,
            on_trial: self.trial.is_some() as u32,
            installed_sequence: s.installed_seq,
            last_sequence,
            last_outcome,
            last_reason,
        }
    }
}

/// A Keel device: one owner for all of its state.
///
/// `M` is the flash medium, `R` the randomness for the secure channel's ephemeral keys and `LOG`
/// the log ring's size in bytes.
pub struct Device<M: Medium, R: Rng, const LOG: usize> {
    identity: Option<Identity>,
    boot_count: u32,
    visor_version: &'static str,
    sup: Supervisor,
    last_crash: Option<CrashReport>,
    app: Option<Header>,
    conn: Connection,
    link: Option<DeviceLink<R>>,
    /// The link failed while sending; dropped at the next poll.
    link_failed: bool,
    decoder: Decoder<MAX_FRAME>,
    /// A frame produced while handling input (handshake, `Ready`, `Pong`), sent first.
    tx: [u8; MAX_FRAME],
    tx_len: usize,
    logs: LogRing<LOG>,
    updates: Updates<M>,
    counters: Counters,
    /// App launches in this boot (the launch generation of the latest).
    launch_gen: u32,
    /// The launch generation of the instance running now (`None`: stopped).
    running_gen: Option<u32>,
    /// The update check of a quarantined app.
    quarantine: Option<Quarantine>,
    /// What the previous boot's run record said about this boot (for the boot events).
    resumed: Resumed,
    /// The run record last handed out by [`Device::take_run_record`].
    record_taken: Option<handover::Record>,
    /// Remote debugging (a provisioned device only).
    debug: Option<DebugService>,
    /// The app's channels.
    chans: Channels,
    /// Network requests the app holds, and the tag of its latest.
    net_requests: u32,
    net_tag: u32,
    /// The link state last reported to the app (`NetStatus` records).
    net_reported: Option<u64>,
    /// Alternates the link between channel messages and the core's own.
    chan_turn: bool,
}

/// How this boot continued from the previous one.
#[derive(Clone, Copy, Debug)]
struct Resumed {
    reason: BootReason,
    visor_fault_pc: Option<u32>,
    /// A reset counted as a crash of the app: its report.
    reset_crash: Option<CrashReport>,
    /// The crash of the app in one of its handlers that made the visor reset: recorded before
    /// the reset, but its event was in the log ring the reset lost, so it is reported again.
    carried_crash: Option<CrashReport>,
}

fn release<const N: usize, O: Output>(
    quarantine: &mut Option<Quarantine>,
    sup: &mut Supervisor,
    why: ReleaseReason,
    log: &mut Log<'_, N, O>,
) {
    if quarantine.take().is_some() {
        sup.release_quarantine();
        log.console(format_args!("app: released from quarantine ({})", why.as_str()));
        log.event(VisorEvent::AppReleased { reason: why.code() });
    }
}

impl<M: Medium, R: Rng, const LOG: usize> Device<M, R, LOG> {
    /// Boots the device: [`Device::unbooted`], then [`Device::boot`].
    pub fn new(cfg: Config, flash: Nor<M>, updater: Updater, now: u64, out: &mut impl Output) -> Self {
        let mut d = Self::unbooted(cfg, flash, updater, now);
        d.boot(now, out);
        d
    }

    /// The device before [`Device::boot`]: a plain value, so a shell can build it where it
    /// will live (the visor builds it inside its static state, not on its stack).
    pub fn unbooted(cfg: Config, flash: Nor<M>, updater: Updater, now: u64) -> Self {
        let mut resumed =
            Resumed { reason: BootReason::PowerOn, visor_fault_pc: None, reset_crash: None, carried_crash: None };
        let (sup, last_crash) = match cfg.warm {
            Some(rec) => {
                let (sup, counted) = Supervisor::resume(cfg.policy, cfg.boot_count, &rec, now);
                resumed.reason = match rec.reset_cause {
                    ResetCause::None => BootReason::UnexplainedReset,
                    ResetCause::AppFault => BootReason::AppFaultReset,
                    ResetCause::AppHung => BootReason::AppHangReset,
                    ResetCause::VisorFault { pc } => {
                        resumed.visor_fault_pc = Some(pc);
                        BootReason::VisorFault
                    }
                    ResetCause::StartApp => BootReason::StartApp,
                    ResetCause::SecureWatchdog => BootReason::SecureWatchdog,
                };
                let mut last = rec.last_crash;
                if matches!(rec.reset_cause, ResetCause::AppFault | ResetCause::AppHung) {
                    resumed.carried_crash = rec.last_crash;
                }
                if counted {
                    let report =
                        CrashReport { version: 1, kind: FaultKind::Reset as u32, time_us: now, ..Default::default() };
                    resumed.reset_crash = Some(report);
                    last = Some(report);
                }
                (sup, last)
            }
            None => (Supervisor::new(cfg.policy, cfg.boot_count), None),
        };
        Device {
            identity: cfg.identity,
            boot_count: cfg.boot_count,
            visor_version: cfg.visor_version,
            sup,
            last_crash,
            app: None,
            conn: Connection::new(cfg.identity.is_some(), cfg.seed, cfg.reconnect_min_ms),
            link: None,
            link_failed: false,
            decoder: Decoder::new(),
            tx: [0; MAX_FRAME],
            tx_len: 0,
            logs: LogRing::new(cfg.boot_count),
            updates: Updates {
                up: updater,
                flash,
                agent: Agent::new(),
                signer: cfg.identity.and_then(|i| i.signer_key),
                visor_version: keel_bundle::parse_visor_version(cfg.visor_version).unwrap_or(0),
                slot: Slot::A,
                trial: None,
                apply_deadline: None,
                stats_at_offer: None,
                journal: UpdateState::FACTORY,
                fetch: None,
                hold_fetches: false,
                status_dirty: true,
                app_events: 0,
            },
            counters: Counters::default(),
            launch_gen: 0,
            running_gen: None,
            quarantine: None,
            resumed,
            record_taken: None,
            debug: cfg.identity.map(|i| DebugService::new(i.device_key)),
            chans: Channels::new(),
            net_requests: 0,
            net_tag: 0,
            net_reported: None,
            chan_turn: false,
        }
    }

    /// Reads the update journal and decides the slot (counting a trial boot, or rolling back
    /// after too many), and queues the boot events. Call once, before anything else.
    pub fn boot(&mut self, now: u64, out: &mut impl Output) {
        // Without a run record in warm RAM this is a power-on (or an external reset that also
        // lost the RAM, indistinguishable); otherwise the record says why the last boot ended.
        let r = self.resumed;
        let mut log = Log { logs: &mut self.logs, out, now };
        log.event(VisorEvent::Boot { count: self.boot_count, reason: r.reason.code() });
        if let Some(pc) = r.visor_fault_pc {
            log.event(VisorEvent::VisorFault { pc });
        }
        if let Some(report) = r.carried_crash {
            log.event(VisorEvent::Crash(CrashInfo::from(&report)));
        }
        if let Some(report) = r.reset_crash {
            log.console(format_args!(
                "app crash: the device reset while the app ran ({}): counted as a crash",
                r.reason.as_str()
            ));
            log.event(VisorEvent::Crash(CrashInfo::from(&report)));
        }
        self.updates.boot(false, &mut log);
        self.sync_quarantine(now, out);
    }

    /// Starts the update check of a quarantine the supervisor just entered (event, console,
    /// an `UpdateStatus` to the server if online).
    fn sync_quarantine(&mut self, now: u64, out: &mut impl Output) {
        if !self.sup.is_quarantined() || self.quarantine.is_some() {
            return;
        }
        let online = self.conn.is_online();
        self.quarantine = Some(Quarantine::new(now, online));
        let crashes = self.sup.consecutive_crashes();
        let mut log = Log { logs: &mut self.logs, out, now };
        log.console(format_args!(
            "app: quarantined after {} crashes in a row; it starts again after an update check (at most {} s without one)",
            crashes,
            self.sup.policy().quarantine_max_us / 1_000_000
        ));
        log.event(VisorEvent::AppQuarantined { crashes });
        if online {
            // Ask the server: it answers the status with an offer or `NoUpdate`.
            self.updates.status_dirty = true;
        }
    }

    /// Handles one input: the single entry point over the typed methods below.
    pub fn handle(&mut self, now: u64, input: Input<'_>, out: &mut impl Output) -> Response {
        match input {
            Input::AddressAcquired => self.address_acquired(now, out),
            Input::AddressLost => self.address_lost(now, out),
            Input::TcpConnected => self.tcp_connected(now, out),
            Input::TcpClosed => self.tcp_closed(now, out),
            Input::Received(bytes) => return Response::Consumed(self.receive(now, bytes, out)),
            Input::AppLaunched(slot, h) => return Response::Launched(self.app_launched(now, slot, h)),
            Input::AppLoadFailed(slot) => return Response::TrySlot(self.app_load_failed(now, slot, out)),
            Input::AppCrashed { report, watchdog } => {
                return Response::RestartIn(self.app_crashed(now, report, watchdog, out))
            }
            Input::AppRestart(code) => self.app_restart(now, code, out),
            Input::AppAlive => self.app_alive(now),
            Input::AppConfirm => return Response::Status(self.app_confirm(now, out)),
            Input::AppApply => return Response::Applied(self.app_apply(now, out)),
            Input::Log { kind, level, text } => return Response::Logged(self.push_log(now, kind, level, text)),
        }
        Response::Done
    }

    // ------------------------------------------------------------------ network inputs

    /// The network has an address: connect if waiting for one.
    pub fn address_acquired(&mut self, _now: u64, out: &mut impl Output) {
        if self.conn.address_acquired() == conn::Step::Connect {
            out.effect(Effect::Connect);
        }
    }

    /// The network address was lost.
    pub fn address_lost(&mut self, now: u64, out: &mut impl Output) {
        let was_connected = self.conn.is_connected();
        if self.conn.address_lost() == conn::Step::Close {
            if was_connected {
                self.lost(now, LossReason::AddressLost, out);
            }
            self.forget_link(out);
        }
    }

    /// The TCP connection the core asked for is up: the secure channel starts (its first frame
    /// waits in [`Device::poll_transmit`]).
    pub fn tcp_connected(&mut self, now: u64, out: &mut impl Output) {
        if !self.conn.tcp_connected(now) {
            return;
        }
        let Some(id) = self.identity else { return };
        let mut link = match DeviceLink::<R>::new(&id.device_key, &id.server_key) {
            Ok(l) => l,
            Err(e) => {
                out.effect(Effect::Console(format_args!("net: cannot start the secure channel: {:?}", e)));
                return self.fail(now, out);
            }
        };
        let (name, version) = match &self.app {
            Some(h) => (h.name_str(), h.version_str()),
            None => ("", ""),
        };
        let hello = Up::Hello {
            protocol: PROTOCOL_VERSION,
            visor_version: self.visor_version,
            boot_count: self.boot_count,
            app: self.app.as_ref().map(|_| (name, version)),
            next_log_seq: self.logs.next_seq(),
        };
        match link.start(&hello, &mut self.tx) {
            Ok(n) => {
                self.tx_len = n;
                self.link = Some(link);
                self.decoder = Decoder::new();
            }
            Err(_) => {
                out.effect(Effect::Console(format_args!("net: cannot send the handshake")));
                self.fail(now, out);
            }
        }
    }

    /// The TCP connection closed or could not be opened.
    pub fn tcp_closed(&mut self, now: u64, out: &mut impl Output) {
        match self.conn.state() {
            ConnState::Connecting => {
                out.effect(Effect::Console(format_args!("net: connection to the server failed")));
                self.fail(now, out);
            }
            ConnState::Handshaking | ConnState::Online => {
                self.lost(now, LossReason::PeerClosed, out);
                self.fail(now, out);
            }
            _ => {}
        }
    }

    /// Bytes from the server. Returns how many were consumed: the core stops after a frame
    /// that needs an answer until [`Device::poll_transmit`] took it; offer the rest again then.
    pub fn receive(&mut self, now: u64, bytes: &[u8], out: &mut impl Output) -> usize {
        let mut rest = bytes;
        if !self.conn.is_connected() || self.link.is_none() {
            return bytes.len(); // nothing to talk to: discard
        }
        // A debug frame waits for the shell's `debug_service` before the next is read.
        while !rest.is_empty() && self.tx_len == 0 && self.debug.as_ref().is_none_or(|d| !d.pending) {
            let (used, done) = match self.decoder.push(rest) {
                Ok(r) => r,
                Err(_) => {
                    self.protocol_error(now, "oversized frame", out);
                    return bytes.len();
                }
            };
            rest = &rest[used..];
            if let Some(len) = done {
                self.conn.received(now);
                self.counters.frames_in += 1;
                if let Err(what) = self.on_frame(now, len, out) {
                    self.protocol_error(now, what, out);
                    return bytes.len();
                }
                if self.link.is_none() {
                    return bytes.len();
                }
            }
        }
        bytes.len() - rest.len()
    }

    fn on_frame(&mut self, now: u64, len: usize, out: &mut impl Output) -> Result<(), &'static str> {
        let Device {
            link,
            decoder,
            logs,
            tx,
            tx_len,
            updates,
            conn,
            sup,
            counters,
            quarantine,
            running_gen,
            debug,
            chans,
            ..
        } = self;
        let link = link.as_mut().ok_or("no session")?;
        let (event, n) = link.on_frame(&decoder.frame()[..len], logs, tx).map_err(|_| "server message rejected")?;
        *tx_len = n;
        let mut log = Log { logs, out, now };
        let link_up = conn.is_online();
        let checking = matches!(event, Event::UpdateOffer { .. } | Event::LayerData { .. } | Event::LayerError { .. });
        let next = match event {
            Event::Online { unix_us } => {
                conn.welcomed();
                counters.sessions += 1;
                log.out.effect(Effect::SetWallClock(unix_us));
                log.console(format_args!("net: online (secure channel up, wall clock set)"));
                log.event(VisorEvent::Online);
                if let Some(t) = updates.trial.as_mut() {
                    t.on_link(true);
                }
                if let Some(q) = quarantine.as_mut() {
                    q.progress(now);
                }
                // The server learns the update state first thing (which is also how a
                // quarantined app's update check asks), and an interrupted download continues
                // where it stopped.
                updates.status_dirty = true;
                Some(updates.agent.on_connect())
            }
            Event::TimeSync { unix_us } => {
                log.out.effect(Effect::SetWallClock(unix_us));
                None
            }
            Event::UpdateOffer { envelope } => {
                counters.offers += 1;
                if let Some(q) = quarantine.as_mut() {
                    q.progress(now);
                }
                Some(updates.on_offer(envelope, &mut log))
            }
            Event::LayerData { sequence, component, offset, data } if component == updates.agent.component() => {
                counters.layer_bytes += data.len() as u64;
                if let Some(q) = quarantine.as_mut() {
                    q.progress(now);
                }
                updates.on_data(sequence, offset, data, &mut log)
            }
            Event::NoUpdate { .. } => {
                if !updates.agent.downloading() {
                    release(quarantine, sup, ReleaseReason::NothingToInstall, &mut log);
                }
                None
            }
            Event::LayerError { sequence, offset, code, .. } => {
                log.console(format_args!(
                    "update: the server cannot serve seq {} at {} (code {})",
                    sequence, offset, code
                ));
                let next = updates.agent.on_layer_error(sequence);
                updates.refresh();
                Some(next)
            }
            Event::Debug { .. } => {
                if let Some(d) = debug.as_mut() {
                    d.keep();
                }
                None
            }
            Event::Channel(m) => {
                match log.out.app_memory() {
                    Some(mem) => chans.receive(&m, mem),
                    None => chans.receive(&m, &mut NoAppMemory),
                };
                None
            }
            Event::UpdateCancel { sequence } => {
                updates.agent.on_cancel(&updates.up, &mut updates.flash, sequence);
                updates.apply_deadline = updates.agent.is_ready().then_some(updates.apply_deadline).flatten();
                updates.refresh();
                Some(Next::None)
            }
            _ => None,
        };
        let link_up = link_up || conn.is_online();
        let mut installed = false;
        if let Some(next) = next {
            installed = updates.next(next, now, link_up, &mut log);
        }
        if quarantine.is_some() && updates.agent.is_ready() {
            // Nobody to be polite to: the app is not running.
            installed |= updates.apply("the app is quarantined", link_up, &mut log);
        }
        if installed {
            release(quarantine, sup, ReleaseReason::UpdateInstalled, &mut log);
            *running_gen = None;
            sup.on_switch();
        } else if checking && !updates.agent.downloading() {
            release(quarantine, sup, ReleaseReason::UpdateFailed, &mut log);
        }
        Ok(())
    }

    /// The server sent something the device cannot accept: drop this connection only.
    fn protocol_error(&mut self, now: u64, what: &str, out: &mut impl Output) {
        self.counters.protocol_errors += 1;
        out.effect(Effect::Console(format_args!("net: {}; dropping the connection", what)));
        self.lost(now, LossReason::ProtocolError, out);
        self.fail(now, out);
    }

    /// Reports a lost connection (console and event) and tells the trial.
    fn lost(&mut self, now: u64, reason: LossReason, out: &mut impl Output) {
        let mut log = Log { logs: &mut self.logs, out, now };
        log.console(format_args!("net: connection lost ({})", reason.as_str()));
        log.event(VisorEvent::LinkLost { reason: reason.code() });
        if let Some(q) = self.quarantine.as_mut() {
            q.offline(now);
        }
        if self.conn.is_online() {
            if let Some(t) = self.updates.trial.as_mut() {
                t.on_link(false);
            }
        }
    }

    fn forget_link(&mut self, out: &mut impl Output) {
        out.effect(Effect::Close);
        if let Some(link) = self.link.take() {
            self.counters.unknown_skipped += link.unknown_received();
            if let Some(t) = self.updates.trial.as_mut() {
                t.on_link(false);
            }
        }
        self.link_failed = false;
        self.tx_len = 0;
        self.updates.fetch = None;
        self.decoder = Decoder::new();
        self.chans.link_lost();
    }

    /// Closes the connection and backs off.
    fn fail(&mut self, now: u64, out: &mut impl Output) {
        self.forget_link(out);
        if let Some(d) = self.conn.failed(now) {
            out.effect(Effect::Console(format_args!("net: retrying in {} ms", d)));
        }
    }

    /// The next frame to send (framed and encrypted) into `buf`, which must hold [`MAX_FRAME`]
    /// bytes; call only when the transport can take that much. One frame per call.
    pub fn poll_transmit(&mut self, now: u64, buf: &mut [u8]) -> Option<usize> {
        self.poll_transmit_with(now, buf, &mut NoAppMemory)
    }

    /// [`Device::poll_transmit`] with the running app's memory, from which channel messages are
    /// read as they are sent. Channel messages and the core's own (debugging, update fetches
    /// and status, logs) take turns, so busy channels cannot hold up an update and an update
    /// cannot hold up the channels.
    pub fn poll_transmit_with(&mut self, _now: u64, buf: &mut [u8], mem: &mut dyn AppMemory) -> Option<usize> {
        if buf.len() < MAX_FRAME || self.link_failed {
            return None;
        }
        if self.tx_len > 0 {
            let n = core::mem::take(&mut self.tx_len);
            buf[..n].copy_from_slice(&self.tx[..n]);
            self.counters.frames_out += 1;
            return Some(n);
        }
        if !self.conn.is_online() {
            return None;
        }
        let core_wants = self.core_wants_transmit();
        let link = self.link.as_mut()?;
        let channels = link.negotiated().is_some_and(|n| n.allows(keel_proto::msg::features::CHANNELS));
        if channels && self.chans.wants_transmit() && (self.chan_turn || !core_wants) {
            self.chan_turn = false;
            let mut piece = [0u8; keel_proto::msg::MAX_CHAN_DATA];
            if let Some(m) = self.chans.poll_transmit(mem, &mut piece) {
                return match link.send(&m, buf) {
                    Ok(n) => {
                        self.counters.frames_out += 1;
                        Some(n)
                    }
                    Err(_) => {
                        self.link_failed = true;
                        None
                    }
                };
            }
        }
        self.chan_turn = true;
        let u = &mut self.updates;
        let fetch = u.fetch.filter(|_| !u.hold_fetches);
        let mut frame = [0u8; keel_proto::msg::MAX_DEBUG_FRAME];
        let debug = match self.debug.as_mut() {
            Some(d) if link.negotiated().is_some_and(|n| n.allows(keel_proto::msg::features::DEBUG)) => {
                d.agent.poll_transmit(&mut frame)
            }
            _ => None,
        };
        let sent = if let Some(n) = debug {
            link.send(&Up::Debug { frame: &frame[..n] }, buf).map(Some)
        } else if let Some((m, Next::Fetch { sequence, offset, len, .. })) = fetch.and_then(|n| Some((n.message()?, n)))
        {
            u.fetch = None;
            self.counters.fetches_sent += 1;
            self.counters.last_fetch = Some((sequence, offset, len));
            link.send(&m, buf).map(Some)
        } else if u.status_dirty {
            u.status_dirty = false;
            link.send(&u.agent.status(&u.up, &u.flash).message(), buf).map(Some)
        } else {
            link.next_log_frame(&mut self.logs, buf)
        };
        match sent {
            Ok(Some(n)) => {
                self.counters.frames_out += 1;
                Some(n)
            }
            Ok(None) => None,
            Err(_) => {
                self.link_failed = true;
                None
            }
        }
    }

    /// True when [`Device::poll_transmit`] has something to send.
    pub fn wants_transmit(&self) -> bool {
        self.tx_len > 0 || (self.conn.is_online() && (self.core_wants_transmit() || self.chans.wants_transmit()))
    }

    fn core_wants_transmit(&self) -> bool {
        (self.updates.fetch.is_some() && !self.updates.hold_fetches)
            || self.updates.status_dirty
            || self.debug.as_ref().is_some_and(|d| d.agent.has_pending())
            || self.link.as_ref().is_some_and(|l| l.has_log_frame(&self.logs))
    }

    // ------------------------------------------------------------------ timers

    /// Runs the timers (connection backoff and silence, politeness and trial deadlines, app
    /// backoff and watchdog) and says what to do with the app.
    pub fn poll(&mut self, now: u64, out: &mut impl Output) -> AppAction {
        if self.link_failed {
            self.protocol_error(now, "cannot encrypt", out);
        }
        match self.conn.poll(now) {
            conn::Step::Connect => out.effect(Effect::Connect),
            conn::Step::Close => {
                out.effect(Effect::Console(format_args!(
                    "net: nothing from the server for {} s; dropping the connection",
                    self.conn.silence_us(now) / 1_000_000
                )));
                self.lost(now, LossReason::ServerSilent, out);
                self.fail(now, out);
            }
            conn::Step::None => {}
        }
        let link_up = self.conn.is_online();
        let mut log = Log { logs: &mut self.logs, out, now };
        let max = self.sup.policy().quarantine_max_us;
        if self.quarantine.is_some_and(|q| q.expired(now, max)) {
            release(&mut self.quarantine, &mut self.sup, ReleaseReason::Timeout, &mut log);
        }
        let mut switch = self.updates.poll(now, link_up, &mut log);
        if self.quarantine.is_some()
            && self.updates.agent.is_ready()
            // Nobody to be polite to: the app is not running.
            && self.updates.apply("the app is quarantined", link_up, &mut log)
        {
            release(&mut self.quarantine, &mut self.sup, ReleaseReason::UpdateInstalled, &mut log);
            switch = true;
        }
        if switch {
            self.switch();
        }
        match self.sup.poll(now) {
            Action::None => AppAction::None,
            Action::Launch => AppAction::Launch(self.updates.slot),
            Action::KillForWatchdog => AppAction::KillForWatchdog,
        }
    }

    /// When [`Device::poll`] next has something to do (µs), if ever.
    pub fn poll_at(&self) -> Option<u64> {
        let now_if = |b: bool| b.then_some(0);
        let quarantine = self.quarantine.map(|q| q.poll_at(self.sup.policy().quarantine_max_us));
        earliest([
            now_if(self.link_failed),
            self.conn.poll_at(),
            self.sup.next_deadline(),
            self.updates.poll_at(),
            quarantine,
            self.debug.as_ref().and_then(|d| d.agent.poll_at()),
        ])
    }

    /// The app restarts into another version: the running instance is gone, the supervisor
    /// starts a new series at once.
    fn switch(&mut self) {
        self.running_gen = None;
        self.app_gone();
        self.debug_restart_reason(RestartReason::Updated);
        if let Some(t) = self.updates.trial.as_mut() {
            t.on_stop();
        }
        self.sup.on_switch();
    }

    /// The running instance stopped (crashed, killed, asked for a restart).
    fn stopped(&mut self) {
        self.running_gen = None;
        self.app_gone();
        if let Some(d) = self.debug.as_mut() {
            d.halted_at = None;
            let key = d.agent.app_key();
            d.agent.set_app(false, key);
        }
        if let Some(t) = self.updates.trial.as_mut() {
            t.on_stop();
        }
    }

    // ------------------------------------------------------------------ network and channels

    /// The app instance is gone: its channels and network requests with it.
    fn app_gone(&mut self) {
        self.chans.reset();
        self.net_requests = 0;
        self.net_reported = None;
    }

    /// The link's state as the app sees it ([`keel_abi::Call::NetStatus`]).
    pub fn net_status(&self) -> keel_abi::chan::NetStatus {
        use keel_abi::chan::{wanted, NetState, OfflineReason};
        let (state, offline) = match self.conn.state() {
            ConnState::Online => (NetState::Connected, OfflineReason::None),
            ConnState::Connecting | ConnState::Handshaking => (NetState::Connecting, OfflineReason::None),
            ConnState::Backoff { .. } => (NetState::Offline, OfflineReason::Backoff),
            ConnState::WaitingForAddress => (NetState::Offline, OfflineReason::NoAddress),
            ConnState::Off => (NetState::Offline, OfflineReason::NotProvisioned),
        };
        let app = if self.net_requests > 0 { wanted::APP } else { 0 };
        keel_abi::chan::NetStatus {
            version: 1,
            state: state as u32,
            offline: offline as u32,
            wanted_by: app | wanted::VISOR,
            app_requests: self.net_requests,
        }
    }

    /// The app wants the network ([`keel_abi::Call::NetRequest`]); its state changes are
    /// reported with `tag` while it holds a request (the current state at once).
    pub fn net_request(&mut self, now: u64, tag: u32) -> Status {
        self.app_alive(now);
        if self.net_requests >= keel_abi::chan::MAX_NET_REQUESTS {
            return Status::Unavailable;
        }
        self.net_requests += 1;
        self.net_tag = tag;
        self.net_reported = None;
        Status::Ok
    }

    /// Drops one network request ([`keel_abi::Call::NetRelease`]).
    pub fn net_release(&mut self, now: u64) -> Status {
        self.app_alive(now);
        if self.net_requests == 0 {
            return Status::Unavailable;
        }
        self.net_requests -= 1;
        Status::Ok
    }

    /// The next notification record for the app: a network state change (while the app holds
    /// a request), then the channels' records in order.
    pub fn take_notification(&mut self) -> Option<keel_abi::notify::Record> {
        if self.net_requests > 0 {
            let v = self.net_status().to_value();
            if self.net_reported != Some(v & 0xFFFF) {
                self.net_reported = Some(v & 0xFFFF);
                return Some(keel_abi::notify::Record::new(keel_abi::notify::Kind::NetStatus, self.net_tag, v));
            }
        }
        self.chans.take_notification()
    }

    /// Notification records lost because the channels' queue was full (the shell adds them to
    /// the ring's overrun count).
    pub fn take_notifications_lost(&mut self) -> u64 {
        self.chans.take_notes_lost()
    }

    /// The app's channels (read only).
    pub fn channels(&self) -> &Channels {
        &self.chans
    }

    /// Opens a channel ([`keel_abi::Call::ChanOpen`]); the shell checked both buffers for the
    /// caller (`unprivileged`: its privilege, used for every later access) and copied the
    /// endpoint. `reserved`: app memory the buffers must not overlap (the notification ring).
    pub fn chan_open(
        &mut self,
        now: u64,
        p: &keel_abi::chan::OpenParams,
        endpoint: &[u8],
        reserved: &[(u32, u32)],
        unprivileged: bool,
    ) -> Result<u32, Status> {
        self.app_alive(now);
        let online = self.conn.is_online()
            && self
                .link
                .as_ref()
                .and_then(|l| l.negotiated())
                .is_some_and(|n| n.allows(keel_proto::msg::features::CHANNELS));
        self.chans.open(p, endpoint, online, reserved, unprivileged)
    }

    /// The app's channel calls that need its memory ([`keel_abi::Call::ChanSend`], ...).
    pub fn chans_mut(&mut self, now: u64) -> &mut Channels {
        self.app_alive(now);
        &mut self.chans
    }

    // ------------------------------------------------------------------ debugging

    fn debug_restart_reason(&mut self, r: RestartReason) {
        if let Some(d) = self.debug.as_mut() {
            d.restart_reason.get_or_insert(r);
        }
    }

    /// The debug service, if the device is provisioned.
    pub fn debug(&self) -> Option<&DebugService> {
        self.debug.as_ref()
    }

    /// Serves the debug frame received last (if any) and the session's timeout against the app
    /// as the shell reaches it; says what to do with the app. Call after feeding received bytes,
    /// and at [`Device::poll_at`].
    pub fn debug_service(&mut self, now: u64, t: &mut impl DebugTarget) -> DebugAction {
        let Some(d) = self.debug.as_mut() else { return DebugAction::None };
        let was_halted = d.agent.is_halted();
        let (sessions, had_session) = (d.agent.sessions(), d.agent.has_session());
        let mut action = d.agent.poll(now, t);
        if core::mem::take(&mut d.pending) {
            if let Some(frame) = self.link.as_ref().and_then(|l| l.last_debug_frame()) {
                match d.agent.receive::<R>(now, frame, t) {
                    DebugAction::None => {}
                    a => action = a,
                }
            }
        }
        if action == DebugAction::Restart {
            d.restart_reason = Some(RestartReason::Requested);
        }
        // An audit trail in the device's logs: who debugged, the server keeps it.
        let line = if d.agent.sessions() != sessions {
            Some(debug::Line::new(format_args!("debug: session opened (debug key of the running app)")))
        } else if had_session && !d.agent.has_session() {
            Some(debug::Line::new(format_args!("debug: session ended")))
        } else {
            None
        };
        if let Some(l) = line {
            let _ = self.logs.push(Kind::Visor, 2, now, l.bytes());
        }
        if was_halted && !d.agent.is_halted() {
            self.debug_unhalt(now);
        }
        action
    }

    /// The app stopped for the debugger (a served halt, a breakpoint, a fault while a session is
    /// open): its watchdog and trial grace time pause until it runs again.
    pub fn debug_stopped(&mut self, now: u64, reason: StopReason, detail: u32, t: &mut impl DebugTarget) {
        let Some(d) = self.debug.as_mut() else { return };
        d.agent.stopped(reason, detail, t);
        d.halted_at.get_or_insert(now);
        let why = match reason {
            StopReason::Halted => "halt request",
            StopReason::Breakpoint => "breakpoint",
            StopReason::Fault => "fault",
        };
        let pc = t.regs()[keel_debug::wire::PC];
        let l = debug::Line::new(format_args!("debug: app halted ({}) at pc={:#010x}", why, pc));
        let _ = self.logs.push(Kind::Visor, 2, now, l.bytes());
        self.sup.halt(now);
        if self.running_trial_instance() {
            if let Some(tr) = self.updates.trial.as_mut() {
                tr.halt(now);
            }
        }
    }

    fn debug_unhalt(&mut self, now: u64) {
        if let Some(d) = self.debug.as_mut() {
            d.halted_at = None;
        }
        self.sup.unhalt(now);
        if let Some(tr) = self.updates.trial.as_mut() {
            tr.unhalt(now);
        }
    }

    /// Takes out the session's breakpoint at `addr`, if there is one (see
    /// [`keel_debug::agent::Agent::drop_breakpoint`]).
    pub fn debug_drop_breakpoint(&mut self, addr: u32, t: &mut impl DebugTarget) -> bool {
        self.debug.as_mut().is_some_and(|d| d.agent.drop_breakpoint(addr, t))
    }

    /// True while a debug session is open (a `bkpt` or a fault of the app is then the
    /// debugger's, and halts the app instead of restarting it).
    pub fn debug_wants_stops(&self) -> bool {
        self.debug.as_ref().is_some_and(|d| d.agent.wants_stops())
    }

    /// True while a halt waits for the app to be haltable.
    pub fn debug_halt_wanted(&self) -> bool {
        self.debug.as_ref().is_some_and(|d| d.agent.halt_wanted())
    }

    /// True while the debugger holds the app halted.
    pub fn debug_halted(&self) -> bool {
        self.debug.as_ref().is_some_and(|d| d.agent.is_halted())
    }

    // ------------------------------------------------------------------ the app

    /// The app was started from `slot` (the one [`AppAction::Launch`] named).
    ///
    /// A launch from a slot other than the one the app runs from now was decided before an
    /// update switched slots (the shell acted on an older [`Device::poll`]): that instance is
    /// not the trial's and is replaced at once (the next poll says
    /// [`AppAction::Launch`] with the current slot). Counting it as the trial's would let the
    /// old image stand for the new one, and a good update be rolled back.
    pub fn app_launched(&mut self, now: u64, slot: Slot, header: Header) -> BootInfo {
        self.sup.on_launched(now);
        if slot != self.updates.slot {
            self.running_gen = None;
            self.app = Some(header);
            let info = self.sup.boot_info();
            self.sup.on_switch();
            return info;
        }
        if let Some(d) = self.debug.as_mut() {
            let reason = d.restart_reason.take().unwrap_or(RestartReason::Other);
            d.halted_at = None;
            d.agent.set_app(true, header.debug_key());
            d.agent.app_restarted(reason);
        }
        self.launch_gen = self.launch_gen.wrapping_add(1);
        self.running_gen = Some(self.launch_gen);
        if let Some(t) = self.updates.trial.as_mut() {
            t.on_launch(now, self.launch_gen);
        }
        self.app = Some(header);
        self.sup.boot_info()
    }

    /// The image in `slot` did not load. A trial image is rolled back: returns the slot to try
    /// next. Otherwise the app stays stopped (`None`).
    pub fn app_load_failed(&mut self, now: u64, slot: Slot, out: &mut impl Output) -> Option<Slot> {
        if slot == self.updates.slot {
            if let Some(t) = self.updates.trial {
                let mut log = Log { logs: &mut self.logs, out, now };
                if let Err(e) = self.updates.up.rollback(&mut self.updates.flash, Reason::TrialImageInvalid) {
                    log.console(format_args!("update: journal error ({})", e));
                }
                self.updates.refresh();
                self.updates.rolled_back(t.seq, Reason::TrialImageInvalid, &mut log);
                return Some(self.updates.slot);
            }
        }
        self.sup.on_no_image();
        None
    }

    /// The app crashed (`watchdog`: it hung). Records the report, counts a trial crash (rolling
    /// back after too many) and starts the restart backoff; returns the backoff (µs).
    /// The third crash in a row (see `Policy::quarantine_after`) quarantines the app: it is not
    /// started again until the device asked the server for updates (or the time bound passed).
    pub fn app_crashed(&mut self, now: u64, report: CrashReport, watchdog: bool, out: &mut impl Output) -> u64 {
        self.stopped();
        self.debug_restart_reason(RestartReason::Crashed);
        let mut log = Log { logs: &mut self.logs, out, now };
        log.event(VisorEvent::Crash(CrashInfo::from(&report)));
        self.last_crash = Some(report);
        let rolled_back = self.updates.trial_failed(watchdog, &mut log);
        let backoff = self.sup.on_crash(now, watchdog);
        if rolled_back {
            // The previous version runs next: a new series (and no quarantine for it).
            self.sup.new_series();
        }
        self.sync_quarantine(now, out);
        backoff
    }

    /// After [`Device::app_crashed`]: the crash's r0-r12 and the top of the app's stack (from
    /// its `sp`, at most `keel_proto::event::CRASH_DUMP_BYTES`), queued as structured events for
    /// a post-mortem debugger.
    pub fn app_crash_dump(&mut self, now: u64, regs: [u32; 13], stack: &[u32]) {
        use keel_proto::event::{CRASH_CHUNK_WORDS, CRASH_DUMP_BYTES};
        let mut push = |ev: VisorEvent| {
            let mut buf = [0u8; VisorEvent::MAX_LEN];
            if let Ok(n) = ev.encode(&mut buf) {
                let _ = self.logs.push(Kind::Event, 0, now, &buf[..n]);
            }
        };
        push(VisorEvent::CrashRegs { regs });
        let stack = &stack[..stack.len().min(CRASH_DUMP_BYTES / 4)];
        for (i, chunk) in stack.chunks(CRASH_CHUNK_WORDS).enumerate() {
            let mut words = [0u32; CRASH_CHUNK_WORDS];
            words[..chunk.len()].copy_from_slice(chunk);
            let offset = (i * 4 * CRASH_CHUNK_WORDS) as u16;
            push(VisorEvent::CrashStack { offset, words, len: chunk.len() as u8 });
        }
    }

    /// The app asked for a restart (`code` is its reason); see [`Device::app_restart_in`].
    pub fn app_restart(&mut self, now: u64, code: u32, out: &mut impl Output) {
        self.app_restart_in(now, code, out);
    }

    /// The app asked for a restart (`code` is its reason). Returns the delay (µs): 0, or the
    /// backoff of a restart storm (`Policy::restart_burst` requests within
    /// `Policy::restart_window_us`); either way the app is stopped now and started again at
    /// [`AppAction::Launch`]. A trial app's restart counts as a trial crash when it carries the
    /// panic code or comes early in the instance's life ([`Trial::restart_counts`]): a trial app
    /// panicking at every start must not be confirmed by the link policy.
    pub fn app_restart_in(&mut self, now: u64, code: u32, out: &mut impl Output) -> u64 {
        let trial_instance = self.running_trial_instance();
        let counts = trial_instance && self.updates.trial.is_some_and(|t| t.restart_counts(now, code));
        self.stopped();
        if counts {
            let mut log = Log { logs: &mut self.logs, out, now };
            log.console(format_args!("update: the trial app asked for a restart (code {:#x}): a failed start", code));
            if self.updates.trial_failed(false, &mut log) {
                self.switch();
                return 0;
            }
        }
        let delay = self.sup.on_restart_request(now, code);
        if delay > 0 {
            out.effect(Effect::Console(format_args!("app: restart storm: the restart waits {} ms", delay / 1000)));
        }
        delay
    }

    /// True while the running instance is the one launched from the trial slot.
    fn running_trial_instance(&self) -> bool {
        self.updates.trial.is_some_and(|t| t.launched_gen().is_some() && t.launched_gen() == self.running_gen)
    }

    /// The app gave a sign of life at `now`. The shell calls it from the app's watchdog kick,
    /// log, update-info and notification-setup calls ([`Device::push_log`] of an app line and
    /// [`Device::watchdog_kick`] call it themselves); confirm-by-link needs one from the trial
    /// app (see [`trial`]).
    pub fn app_alive(&mut self, now: u64) {
        if self.running_trial_instance() {
            if let Some(t) = self.updates.trial.as_mut() {
                t.on_alive(now);
            }
        }
    }

    /// `update_confirm`: the trial app confirms itself. Only the instance launched from the
    /// trial slot may, while it runs: `Unavailable` otherwise (e.g. the old app between
    /// `update_apply` and the new app's start).
    pub fn app_confirm(&mut self, now: u64, out: &mut impl Output) -> Status {
        if !self.running_trial_instance() {
            return Status::Unavailable;
        }
        let Some(t) = self.updates.trial else { return Status::Unavailable };
        let result = self.updates.up.confirm(&mut self.updates.flash);
        self.updates.refresh();
        let mut log = Log { logs: &mut self.logs, out, now };
        match result {
            Ok(true) => {
                self.updates.confirmed(t.seq, "by the app", &mut log);
                Status::Ok
            }
            Ok(false) => Status::Unavailable,
            Err(e) => {
                log.console(format_args!("update: journal error ({})", e));
                Status::InternalError
            }
        }
    }

    /// `update_apply`: commits a verified update that waits for the app. True if it was
    /// committed: the app restarts into the new version's trial.
    pub fn app_apply(&mut self, now: u64, out: &mut impl Output) -> bool {
        if !self.updates.agent.is_ready() {
            return false;
        }
        let link_up = self.conn.is_online();
        let mut log = Log { logs: &mut self.logs, out, now };
        let applied = self.updates.apply("asked by the app", link_up, &mut log);
        if applied {
            self.switch();
        }
        applied
    }

    /// Test hook: while `hold` is true, `FetchLayer` requests wait (a download stalls as if the
    /// server were slow); releasing sends the one waiting.
    pub fn hold_fetches(&mut self, hold: bool) {
        self.updates.hold_fetches = hold;
    }

    /// Takes the app's pending event bits (each event is reported once).
    pub fn take_app_events(&mut self) -> u32 {
        core::mem::take(&mut self.updates.app_events)
    }

    /// True if the app has events to take.
    pub fn app_events_pending(&self) -> bool {
        self.updates.app_events != 0
    }

    /// Queues a log record for the server. An app line ([`Kind::App`]) is escaped, may fill at
    /// most 3/4 of the ring and never pushes a visor record out: if it does not fit it is
    /// dropped itself ([`PushError::NoRoom`]; counted and reported as dropped); it is also a
    /// sign of life ([`Device::app_alive`]). Other kinds are the visor's own: stored as given,
    /// the oldest records making room.
    pub fn push_log(&mut self, now: u64, kind: Kind, level: u8, text: &[u8]) -> Result<u64, PushError> {
        match kind {
            Kind::App => {
                self.app_alive(now);
                self.logs.push_app(level, now, text)
            }
            _ => self.logs.push(kind, level, now, text),
        }
    }

    /// `watchdog_start`.
    pub fn watchdog_start(&mut self, now: u64, timeout_ms: u32) -> Status {
        self.sup.watchdog_start(now, timeout_ms)
    }

    /// `watchdog_kick` (also a sign of life, [`Device::app_alive`]).
    pub fn watchdog_kick(&mut self, now: u64) -> Status {
        self.app_alive(now);
        self.sup.watchdog_kick(now)
    }

    /// `boot_info`.
    pub fn boot_info(&self) -> BootInfo {
        self.sup.boot_info()
    }

    /// `last_crash`.
    pub fn last_crash(&self) -> Option<CrashReport> {
        self.last_crash
    }

    /// `update_info`, from the cached journal state (no flash scan).
    pub fn update_info(&self) -> UpdateInfo {
        self.updates.info()
    }

    // ------------------------------------------------------------------ state for the shell

    /// The slot the app runs from (or will).
    pub fn slot(&self) -> Slot {
        self.updates.slot
    }

    /// A slot's partition.
    pub fn partition(&self, slot: Slot) -> Partition {
        self.updates.up.partition(slot)
    }

    /// True while a trial runs.
    pub fn on_trial(&self) -> bool {
        self.updates.trial.is_some()
    }

    /// The supervisor's counters to carry over a reset the visor makes itself.
    pub fn carry(&self) -> Carry {
        self.sup.carry()
    }

    /// The run record of now, with no reset cause: what the shell keeps in warm RAM (see
    /// [`keel_supervisor::handover`]). Before a reset it makes itself, the shell writes it once
    /// more with the cause ([`handover::Record::with_cause`]); at the next boot it hands it back
    /// through [`Config::warm`].
    pub fn run_record(&self) -> handover::Record {
        self.sup.run_record(self.last_crash)
    }

    /// The run record if it changed since the last call (the first call always returns it): the
    /// shell writes it to warm RAM then. Call it after every input that touches the app (launch,
    /// crash, restart, apply, kill) and after [`Device::poll`] (a quarantine, the end of a crash
    /// series); calling it more often only costs the comparison.
    pub fn take_run_record(&mut self) -> Option<handover::Record> {
        let r = self.run_record();
        (self.record_taken != Some(r)).then(|| {
            self.record_taken = Some(r);
            r
        })
    }

    /// True while the app is held in quarantine (see [`quarantine`]).
    pub fn quarantined(&self) -> bool {
        self.quarantine.is_some()
    }

    /// The app supervisor (read-only).
    pub fn supervisor(&self) -> &Supervisor {
        &self.sup
    }

    /// The connection state.
    pub fn connection(&self) -> ConnState {
        self.conn.state()
    }

    /// True while the secure channel is up.
    pub fn is_online(&self) -> bool {
        self.conn.is_online()
    }

    /// Counters.
    pub fn counters(&self) -> Counters {
        let live = self.link.as_ref().map_or(0, |l| l.unknown_received());
        Counters { unknown_skipped: self.counters.unknown_skipped + live, ..self.counters }
    }

    /// The update status as the device reports it.
    pub fn update_status(&self) -> agent::Status {
        self.updates.agent.status(&self.updates.up, &self.updates.flash)
    }

    /// The journal state as last read.
    pub fn journal(&self) -> UpdateState {
        self.updates.journal
    }

    /// The flash (read-only).
    pub fn flash(&self) -> &Nor<M> {
        &self.updates.flash
    }

    /// The flash, for test hooks (e.g. cutting the power of a simulated flash).
    pub fn flash_mut_for_tests(&mut self) -> &mut Nor<M> {
        &mut self.updates.flash
    }

    /// The log ring (read-only).
    pub fn logs(&self) -> &LogRing<LOG> {
        &self.logs
    }

    /// The running app's header, once launched.
    pub fn app(&self) -> Option<&Header> {
        self.app.as_ref()
    }

    /// Takes the flash back (e.g. to "power-cycle" a simulated device).
    pub fn into_flash(self) -> Nor<M> {
        self.updates.flash
    }
}
