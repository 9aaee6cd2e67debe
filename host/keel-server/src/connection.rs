//! The server end of one device connection after the Noise handshake, sans-IO: every protocol
//! decision the gateway makes, with no tokio, no database and no sockets. It mirrors the device's
//! side (`keel_link::device::DeviceLink` inside `keel_device::Device`); `gateway.rs` is the async
//! shell around it (TCP, Noise, frames, the store, the object store, timers).
//!
//! The shell feeds inputs with the current time ([`Now`]):
//!
//! * a decrypted device message ([`Connection::receive`], or [`Connection::receive_bytes`] for
//!   its plaintext), or a frame that did not decrypt ([`Connection::undecryptable`]);
//! * timers: [`Connection::tick`] at [`Connection::poll_at`] (ping, time sync, the `Ready` and
//!   idle deadlines);
//! * completions: [`Connection::flush`] when no more frames wait (or [`Connection::wants_more`]
//!   says the batch is full), then [`Connection::logs_stored`] once the batch is stored;
//!   [`Connection::target`] with the deployment after an [`Action::LoadTarget`];
//! * [`Connection::deployment_changed`] when the device's deployment changed;
//! * [`Connection::debug_to_device`] with a remote debugging frame from the attached debugger.
//!
//! What the shell must do comes out, in order, through an [`Output`]: messages to encrypt and
//! send, and [`Action`]s (store, note, serve a fetch, count, close). The shell performs them in
//! that order.
//!
//! The rules it owns:
//!
//! * **The `Ready` gate.** Nothing but `Ready` is accepted before `Ready` (Noise IK's first
//!   message can be replayed; only the device can encrypt `Ready`), and `Ready` must come within
//!   [`HANDSHAKE_TIMEOUT`]. Only then is the device online.
//! * **Negotiated features.** A device message of a feature not negotiated ends the connection,
//!   and the connection never sends a message of a feature the device did not announce.
//! * **Log batching.** Records (and events) received back to back are stored in one batch of at
//!   most [`MAX_BATCH`], acknowledged with one `LogAck` of the highest sequence number once stored.
//! * **Crash dumps.** A crash, crash registers or crash stack event also puts a
//!   [`CrashPart`] in the batch ([`Batch::crashes`]); the store assembles the dump from the
//!   parts whose record it stores for the first time (see [`crate::crash`]).
//! * **Keepalive.** A `Ping` every [`PING_INTERVAL`], a `TimeSync` every
//!   [`TIME_SYNC_EVERY_PINGS`] pings; a device silent for [`IDLE_TIMEOUT`] is disconnected.
//! * **Unknown variants** are skipped and counted; `Hello` after the handshake is fatal.
//! * **Updates**: the target, what the device reported, what this connection offered and
//!   cancelled; [`reconcile`] (a pure function) says what to send; `FetchLayer` requests are
//!   validated here and served by the shell from the object store ([`Fetch`]). A report that
//!   gets neither an offer nor a cancel, from a device that is not downloading or installing,
//!   is answered with `NoUpdate` once the target is known ([`answers_no_update`]): a device
//!   whose app is quarantined waits for that answer (or an offer) before it starts the app
//!   again.
//! * **Remote debugging** (feature `DEBUG`): frames are opaque and only relayed, never parsed.
//!   A device's `Debug` becomes [`Action::Debug`] for the relay; a debugger's frame is sent as
//!   `Down::Debug` only to an online device that announced `DEBUG` (otherwise it is dropped and
//!   counted, [`Notice::DebugDropped`]).

use std::time::Duration;

use keel_proto::msg::{
    decode_up, features, Down, LayerErrorCode, Negotiated, Up, UpdateReason, UpdateState, VisorEvent, LAYER_CHUNK,
    MAX_DEBUG_FRAME, MAX_FETCH,
};

use crate::crash::CrashPart;
use crate::ota::{BundleLayer, UpdateStatus};
use crate::store::LogRecord;

/// How long a connection may take from its accept to its `Ready`, by default: the gateway's
/// `GatewayLimits::handshake_timeout` gives each connection one deadline for the whole
/// handshake ([`Connection::set_ready_deadline`]); a connection without one waits this long for
/// `Ready`.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A device that sends nothing for this long is disconnected.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// How often the gateway pings a device.
pub const PING_INTERVAL: Duration = Duration::from_secs(30);
/// The device's wall clock is re-synchronised every this many pings (10 minutes).
pub const TIME_SYNC_EVERY_PINGS: u32 = 20;
/// At most this many log records already received are stored in one transaction and
/// acknowledged with one `LogAck`.
pub const MAX_BATCH: usize = 64;

/// The time of an input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Now {
    /// Monotonic microseconds (any origin; timers and [`Connection::poll_at`] use it).
    pub mono_us: u64,
    /// Wall clock, microseconds since the Unix epoch (stored times, `TimeSync`).
    pub unix_us: u64,
}

/// The bundle a device should run, as the gateway serves it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// Bundle id (for the history and logs).
    pub bundle_id: String,
    /// Manifest sequence number.
    pub sequence: u64,
    /// Hex SHA-256 of the manifest: with the sequence, what identifies the bundle (two apps of
    /// an account may have bundles with the same sequence).
    pub manifest_digest: String,
    /// The envelope without payloads (what `UpdateOffer` carries).
    pub envelope: Vec<u8>,
    /// Layers in manifest order (index = `FetchLayer`'s `component`).
    pub layers: Vec<BundleLayer>,
}

/// What the device last said about its updates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reported {
    /// Sequence of the confirmed install (0: factory).
    pub installed: u64,
    /// The sequence the status is about (0: none).
    pub sequence: u64,
    /// Its state.
    pub state: UpdateState,
}

/// What [`reconcile`] says to send.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reconcile {
    /// Send `UpdateCancel` for this sequence (a download that is no longer the target).
    pub cancel: Option<u64>,
    /// Send `UpdateOffer` for the target.
    pub offer: bool,
}

/// The states in which a device already handles the bundle it reports about, so offering that
/// bundle again would be useless (downloading, installing, on trial) or a loop (it confirmed,
/// refused or rolled it back). Not `Idle` and not `Error`: a device whose download failed gets
/// one new offer per connection. This agrees with the update agent's rule for a download its
/// journal knows but this boot has not resumed (`keel_update::agent::Agent::status`): it reports
/// the state *before* that download (the last outcome, about an older sequence, or `Idle`), so
/// the target is offered again and the download resumes from its last page.
pub fn handles(state: UpdateState) -> bool {
    matches!(
        state,
        UpdateState::Downloading
            | UpdateState::Installing
            | UpdateState::Trial
            | UpdateState::Confirmed
            | UpdateState::Refused
            | UpdateState::RolledBack
    )
}

/// What a device needs, given the sequence of its target bundle (`None`: no deployment), its last
/// report (`None`: it has not said where it stands, which devices without an update agent never
/// do), and what this connection already offered and cancelled:
///
/// * `cancel`: the download it reports, if that is not the target and was not cancelled yet;
/// * `offer`: the target, unless it is installed, was offered on this connection already (so a
///   device that fails on it is not offered it in a loop), or the device already [`handles`] it.
///
/// Pure: the gateway and a fleet rollout engine use the same function.
pub fn reconcile(
    target: Option<u64>,
    reported: Option<Reported>,
    offered: Option<u64>,
    cancelled: Option<u64>,
) -> Reconcile {
    let Some(rep) = reported else { return Reconcile::default() };
    let cancel = (rep.state == UpdateState::Downloading
        && rep.sequence != 0
        && target != Some(rep.sequence)
        && cancelled != Some(rep.sequence))
    .then_some(rep.sequence);
    let offer =
        target.is_some_and(|t| rep.installed != t && offered != Some(t) && !(rep.sequence == t && handles(rep.state)));
    Reconcile { cancel, offer }
}

/// True if a device that reported `state` and gets neither an offer nor a cancel is answered
/// with `NoUpdate` (there is nothing for it to install now): every state but `downloading` and
/// `installing`, in which the device is busy with what it was sent.
pub fn answers_no_update(state: UpdateState) -> bool {
    !matches!(state, UpdateState::Downloading | UpdateState::Installing)
}

/// A registry or history entry that a stored record carries (from its typed event).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Note {
    /// The device booted: the registry's last boot.
    Boot {
        /// Server time, µs since the epoch.
        at: u64,
        /// Rendered event.
        text: String,
    },
    /// The app crashed: the registry's last crash.
    Crash {
        /// Server time, µs since the epoch.
        at: u64,
        /// Rendered report.
        text: String,
    },
    /// An update event the device reported: the update history.
    Update {
        /// State name (`unknown` for a state this server does not know).
        state: &'static str,
        /// Bundle sequence.
        sequence: u64,
        /// History text.
        text: String,
    },
}

/// Records to store in one transaction, then [`Connection::logs_stored`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Batch {
    /// Device records and server notes (kind 2), in arrival order.
    pub records: Vec<LogRecord>,
    /// What the records' events add to the registry and the update history, in order (after the
    /// records are stored).
    pub notes: Vec<Note>,
    /// The crash dump parts the records' crash events carry (see [`crate::crash`]), in order;
    /// each applies only if its record (same sequence number) is stored for the first time.
    pub crashes: Vec<CrashPart>,
    /// Device records among `records` (server notes excluded), for the received counter.
    pub received: u64,
    /// The highest device sequence number in the batch: acknowledged once stored.
    pub ack: Option<u64>,
    /// Device records acknowledged but left out of `records`: their sequence number is above
    /// [`MAX_STORED_SEQ`].
    pub unstorable: u64,
}

/// A validated `FetchLayer`: read `[offset, offset + len)` of the layer and answer with
/// [`Fetch::reply`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fetch {
    /// As requested.
    pub sequence: u64,
    /// As requested.
    pub component: u8,
    /// First byte in the layer.
    pub offset: u32,
    /// Bytes, 1..=[`MAX_FETCH`], within the layer.
    pub len: u32,
    /// Hex SHA-256 of the layer (its object key).
    pub sha256: String,
}

impl Fetch {
    /// The byte range to read from the layer.
    pub fn range(&self) -> std::ops::Range<u64> {
        self.offset as u64..self.offset as u64 + self.len as u64
    }

    /// The answer to send given what the object store returned (`None`: it failed): consecutive
    /// `LayerData` of at most [`LAYER_CHUNK`] bytes covering the range, or, if the bytes are
    /// missing or short, `Err` with the `LayerError` (`Unavailable`) to send instead.
    pub fn reply<'d>(&self, data: Option<&'d [u8]>) -> Result<Vec<Down<'d>>, Down<'static>> {
        let (sequence, component, offset) = (self.sequence, self.component, self.offset);
        match data {
            Some(d) if d.len() == self.len as usize => Ok(d
                .chunks(LAYER_CHUNK)
                .enumerate()
                .map(|(i, data)| Down::LayerData {
                    sequence,
                    component,
                    offset: offset.saturating_add((i * LAYER_CHUNK) as u32),
                    data,
                })
                .collect()),
            _ => Err(Down::LayerError { sequence, component, offset, code: LayerErrorCode::Unavailable as u8 }),
        }
    }
}

/// Something worth a log line or a metric, and nothing else.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notice {
    /// A message of a variant this server does not know was skipped.
    UnknownMessage(u16),
    /// A visor event of a type this server does not know (stored with its generic text).
    UnknownEvent(u16),
    /// The device dropped records because its ring was full.
    Dropped {
        /// How many.
        count: u64,
        /// The first sequence number it still held.
        before_seq: u64,
    },
    /// An update state this server does not know (the status is ignored).
    UnknownUpdateState(u8),
    /// The target was offered.
    Offered {
        /// Bundle id.
        bundle_id: String,
        /// Its sequence.
        sequence: u64,
    },
    /// A debugger's frame was not sent to the device.
    DebugDropped(DebugDrop),
}

/// Why a debugger's frame was not sent to the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DebugDrop {
    /// The device did not announce the `DEBUG` feature.
    NotNegotiated,
    /// The device is not online on this connection (before `Ready`, or closed).
    Offline,
    /// The frame is longer than `MAX_DEBUG_FRAME`.
    TooLarge,
}

/// Why the connection ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Close {
    /// Something other than `Ready` came first.
    ExpectedReady,
    /// The first transport message did not decrypt (e.g. a replayed handshake).
    BadReady,
    /// No `Ready` within [`HANDSHAKE_TIMEOUT`].
    ReadyTimeout,
    /// A message did not decrypt.
    BadMessage,
    /// A message did not decode (not a well-formed message of a skippable variant).
    Malformed,
    /// The device sent a message of a feature that was not negotiated.
    FeatureNotNegotiated,
    /// `Hello` after the handshake.
    HelloAfterHandshake,
    /// Nothing from the device for [`IDLE_TIMEOUT`].
    IdleTimeout,
}

impl Close {
    /// Short text for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Close::ExpectedReady => "expected ready",
            Close::BadReady => "bad ready",
            Close::ReadyTimeout => "no ready in time",
            Close::BadMessage => "bad message",
            Close::Malformed => "malformed message",
            Close::FeatureNotNegotiated => "message of a feature not negotiated",
            Close::HelloAfterHandshake => "hello after handshake",
            Close::IdleTimeout => "idle timeout",
        }
    }

    /// True for a timeout, false for invalid input from the device.
    pub fn is_timeout(self) -> bool {
        matches!(self, Close::ReadyTimeout | Close::IdleTimeout)
    }
}

/// What the shell must do besides sending messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// `Ready` arrived: the device is authenticated; mark it online.
    Online,
    /// Read the device's deployment and give it to [`Connection::target`].
    LoadTarget,
    /// Store the update status the device reported.
    StoreStatus(UpdateStatus),
    /// Add a server step (`offered`, `cancelled`) to the device's update history.
    NoteUpdate {
        /// Step name.
        state: &'static str,
        /// Bundle sequence.
        sequence: u64,
        /// History text.
        text: String,
    },
    /// Read a layer range from the object store and send [`Fetch::reply`].
    Fetch(Fetch),
    /// Hand this opaque frame from the device to the debugger attached to it (the relay drops
    /// it if none is).
    Debug(Box<[u8]>),
    /// A channel message from the device's app (feature `CHANNELS`), for the connection's
    /// channel hub ([`crate::channels`]).
    Channel(ChanUp),
    /// Log or count.
    Notice(Notice),
    /// End the connection.
    Close(Close),
}

/// A device's channel message, owned (see `Up::ChanOpen` and the others).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChanUp {
    /// The app opened a channel.
    Open {
        /// Channel id.
        ch: u32,
        /// `keel_abi::chan::Kind` code.
        kind: u8,
        /// Endpoint name.
        endpoint: Vec<u8>,
        /// The device's receive window.
        window: u32,
    },
    /// A piece of one app message.
    Data {
        /// Channel id.
        ch: u32,
        /// Last piece of the message.
        last: bool,
        /// The bytes.
        data: Vec<u8>,
    },
    /// More credit for the server's messages.
    Credit {
        /// Channel id.
        ch: u32,
        /// Bytes.
        bytes: u32,
    },
    /// The app closed a channel.
    Close {
        /// Channel id.
        ch: u32,
    },
}

/// Where a connection's outputs go, in order.
pub trait Output {
    /// Encrypt and send `msg`.
    fn send(&mut self, msg: &Down<'_>);
    /// Carry out `action` (after the messages sent before it).
    fn act(&mut self, action: Action);
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Handshake done; waiting for `Ready` until `deadline`.
    AwaitingReady { deadline: u64 },
    /// `Ready` received.
    Online,
    /// Closed: inputs are ignored.
    Closed,
}

/// The server end of one device connection after the handshake.
#[derive(Debug)]
pub struct Connection {
    phase: Phase,
    negotiated: Negotiated,
    visor_version: String,
    /// Last frame from the device (monotonic µs).
    last_rx: u64,
    next_ping: u64,
    nonce: u32,
    batch: Batch,
    /// The ack of the batch handed to the shell, sent once it is stored.
    storing: Option<u64>,
    unknown: u64,
    /// Boxed: most connections have none, and an idle one should not keep room for it.
    target: Option<Box<Target>>,
    reported: Option<Reported>,
    /// The sequence offered on this connection (once per connection and deployment).
    offered: Option<u64>,
    cancelled: Option<u64>,
    /// The last status stored (installed, sequence, state, progress, total, reason): the same
    /// status again is not stored again.
    last_status: Option<(u64, u64, u8, u32, u32, u16)>,
    /// The bundle (sequence, manifest digest) last offered on this connection: what the device
    /// downloads when it reports that sequence.
    working: Option<(u64, String)>,
    /// The target was loaded (after [`Action::LoadTarget`]): `None` then means no deployment.
    target_loaded: bool,
}

fn us(d: Duration) -> u64 {
    d.as_micros() as u64
}

/// Sends `m` if the device announced its feature (never otherwise).
fn send(negotiated: &Negotiated, out: &mut impl Output, m: &Down<'_>) {
    if negotiated.allows(m.feature()) {
        out.send(m);
    }
}

/// Device-supplied bytes as stored text, the same on SQLite and PostgreSQL (which refuses NUL in
/// text): valid UTF-8 is kept as it is except NUL, which becomes `\x00`; each byte that is not
/// part of valid UTF-8 becomes `\xNN` (lowercase hex). A backslash is kept as it is, so a device
/// that sends the characters `\x00` is shown the same as one that sent a NUL.
pub fn escape_device_text(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c == '\0' {
                out.push_str("\\x00");
            } else {
                out.push(c);
            }
        }
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out
}

/// The largest device sequence number the store holds (its column is a signed 64-bit integer).
pub const MAX_STORED_SEQ: u64 = i64::MAX as u64;

/// The text of an update reason code (empty for 0).
fn reason_text(code: u16) -> String {
    match (code, UpdateReason::from_u16(code)) {
        (0, _) => String::new(),
        (_, Some(r)) => r.as_str().to_string(),
        (_, None) => format!("reason {code}"),
    }
}

impl Connection {
    /// A connection whose handshake just completed (`Welcome` sent) at `now`, with what was
    /// negotiated and the visor version from the device's `Hello` (events are rendered with it).
    pub fn new(negotiated: Negotiated, visor_version: &str, now: Now) -> Connection {
        Connection {
            phase: Phase::AwaitingReady { deadline: now.mono_us + us(HANDSHAKE_TIMEOUT) },
            negotiated,
            visor_version: visor_version.to_string(),
            last_rx: now.mono_us,
            next_ping: 0,
            nonce: 0,
            batch: Batch::default(),
            storing: None,
            unknown: 0,
            target: None,
            reported: None,
            offered: None,
            cancelled: None,
            working: None,
            last_status: None,
            target_loaded: false,
        }
    }

    /// Moves the `Ready` deadline to `mono_us` (the gateway's one deadline for the whole
    /// handshake, counted from the accept); no effect once `Ready` arrived.
    pub fn set_ready_deadline(&mut self, mono_us: u64) {
        if let Phase::AwaitingReady { deadline } = &mut self.phase {
            *deadline = mono_us;
        }
    }

    /// True once `Ready` arrived (and until the connection closes).
    pub fn is_online(&self) -> bool {
        self.phase == Phase::Online
    }

    /// True once the connection decided to close.
    pub fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    /// Unknown messages and visor events skipped on this connection.
    pub fn unknown_skipped(&self) -> u64 {
        self.unknown
    }

    /// The current target, if any.
    pub fn current_target(&self) -> Option<&Target> {
        self.target.as_deref()
    }

    /// When [`Connection::tick`] has something to do (monotonic µs).
    pub fn poll_at(&self) -> Option<u64> {
        match self.phase {
            Phase::AwaitingReady { deadline } => Some(deadline),
            Phase::Online => Some(self.next_ping.min(self.last_rx + us(IDLE_TIMEOUT))),
            Phase::Closed => None,
        }
    }

    fn close(&mut self, why: Close, out: &mut impl Output) {
        self.phase = Phase::Closed;
        self.batch = Batch::default();
        out.act(Action::Close(why));
    }

    /// Timers: the `Ready` deadline, the idle timeout, pings and time syncs.
    pub fn tick(&mut self, now: Now, out: &mut impl Output) {
        match self.phase {
            Phase::Closed => {}
            Phase::AwaitingReady { deadline } => {
                if now.mono_us >= deadline {
                    self.close(Close::ReadyTimeout, out);
                }
            }
            Phase::Online => {
                if now.mono_us >= self.last_rx + us(IDLE_TIMEOUT) {
                    return self.close(Close::IdleTimeout, out);
                }
                if now.mono_us >= self.next_ping {
                    self.nonce = self.nonce.wrapping_add(1);
                    send(&self.negotiated, out, &Down::Ping { nonce: self.nonce });
                    if self.nonce % TIME_SYNC_EVERY_PINGS == 0 {
                        send(&self.negotiated, out, &Down::TimeSync { unix_us: now.unix_us });
                    }
                    // One ping per interval; missed intervals are not made up for.
                    self.next_ping += us(PING_INTERVAL);
                    if self.next_ping <= now.mono_us {
                        self.next_ping = now.mono_us + us(PING_INTERVAL);
                    }
                }
            }
        }
    }

    /// A frame arrived that did not decrypt.
    pub fn undecryptable(&mut self, out: &mut impl Output) {
        match self.phase {
            Phase::Closed => {}
            Phase::AwaitingReady { .. } => self.close(Close::BadReady, out),
            Phase::Online => self.close(Close::BadMessage, out),
        }
    }

    /// The plaintext of one device message.
    pub fn receive_bytes(&mut self, now: Now, plain: &[u8], out: &mut impl Output) {
        match (decode_up(plain), self.phase) {
            (_, Phase::Closed) => {}
            (Ok(m), _) => self.receive(now, m, out),
            (Err(_), Phase::AwaitingReady { .. }) => self.close(Close::ExpectedReady, out),
            (Err(_), Phase::Online) => self.close(Close::Malformed, out),
        }
    }

    /// One device message.
    pub fn receive(&mut self, now: Now, msg: Up<'_>, out: &mut impl Output) {
        match self.phase {
            Phase::Closed => return,
            Phase::AwaitingReady { .. } => {
                self.last_rx = now.mono_us;
                if msg != Up::Ready {
                    return self.close(Close::ExpectedReady, out);
                }
                self.phase = Phase::Online;
                self.next_ping = now.mono_us + us(PING_INTERVAL);
                out.act(Action::Online);
                if self.negotiated.allows(features::UPDATES) && !self.target_loaded {
                    out.act(Action::LoadTarget);
                }
                return;
            }
            Phase::Online => self.last_rx = now.mono_us,
        }
        // The device must not send what the server did not announce.
        if !self.negotiated.allows(msg.feature()) {
            return self.close(Close::FeatureNotNegotiated, out);
        }
        match msg {
            Up::Log { seq, kind, level, time_us, text } => {
                let text = escape_device_text(text);
                // 0 app line, 1 visor text; 2 (server note) and unknown kinds are the server's
                // to write, not the device's: stored as visor text.
                let kind = if kind == 0 { 0 } else { 1 };
                let record = LogRecord { seq, kind, level, device_time_us: time_us, received_at: now.unix_us, text };
                self.push(record, true, None);
            }
            Up::Event { seq, time_us, event } => {
                if let VisorEvent::Unknown(t) = event {
                    self.unknown += 1;
                    out.act(Action::Notice(Notice::UnknownEvent(t)));
                }
                let mut text = String::new();
                let _ = event.write_text(&self.visor_version, &mut text);
                let level = if matches!(event, VisorEvent::Crash(_)) { 1 } else { 2 };
                let at = now.unix_us;
                let note = match event {
                    VisorEvent::Boot { .. } => Some(Note::Boot { at, text: text.clone() }),
                    VisorEvent::Crash(_) => Some(Note::Crash { at, text: text.clone() }),
                    VisorEvent::Update { sequence, state, .. } => Some(Note::Update {
                        state: UpdateState::from_u8(state).map_or("unknown", |s| s.as_str()),
                        sequence,
                        text: format!("device: {text}"),
                    }),
                    _ => None,
                };
                let crash = match event {
                    VisorEvent::Crash(info) => {
                        Some(CrashPart::Crash { seq, device_time_us: time_us, received_at: at, info })
                    }
                    VisorEvent::CrashRegs { regs } => Some(CrashPart::Regs { seq, regs }),
                    VisorEvent::CrashStack { offset, words, len } => Some(CrashPart::Stack {
                        seq,
                        offset,
                        words: words.iter().take(len as usize).copied().collect(),
                    }),
                    _ => None,
                };
                let record = LogRecord { seq, kind: 1, level, device_time_us: time_us, received_at: at, text };
                if self.push(record, true, note) {
                    self.batch.crashes.extend(crash);
                }
            }
            Up::Dropped { count, before_seq } => {
                out.act(Action::Notice(Notice::Dropped { count, before_seq }));
                let note = LogRecord {
                    seq: before_seq.saturating_sub(1),
                    kind: 2,
                    level: 1,
                    device_time_us: 0,
                    received_at: now.unix_us,
                    text: format!("dropped {count}"),
                };
                self.push(note, false, None);
            }
            Up::UpdateStatus { installed, sequence, state, progress, total, reason } => {
                match UpdateState::from_u8(state) {
                    Some(st) => {
                        // A repeated identical status (a device that reports in a loop) is
                        // answered as usual but stored once.
                        let key = (installed, sequence, state, progress, total, reason);
                        if self.last_status.replace(key) != Some(key) {
                            out.act(Action::StoreStatus(UpdateStatus {
                                state: st.as_str().into(),
                                sequence,
                                installed,
                                progress: progress.into(),
                                total: total.into(),
                                reason: reason_text(reason),
                                updated_at: now.unix_us as i64,
                            }));
                        }
                        // A trial that ends (confirmed or rolled back) frees the device to take
                        // the target: one offered while it was on trial with another bundle
                        // could not be taken then, so it is offered again, once.
                        let trial_ended = matches!(st, UpdateState::Confirmed | UpdateState::RolledBack)
                            && self.reported.is_some_and(|p| p.state == UpdateState::Trial && p.sequence == sequence)
                            && self.offered.is_some_and(|o| o != sequence);
                        if trial_ended {
                            self.offered = None;
                        }
                        self.reported = Some(Reported { installed, sequence, state: st });
                        self.reconcile(out);
                    }
                    // A state a newer device knows and this server does not: ignore it.
                    None => out.act(Action::Notice(Notice::UnknownUpdateState(state))),
                }
            }
            Up::FetchLayer { sequence, component, offset, len } => self.fetch(sequence, component, offset, len, out),
            // Opaque: relayed as it is, never parsed.
            Up::Debug { frame } => out.act(Action::Debug(frame.into())),
            Up::ChanOpen { ch, kind, endpoint, window } => {
                out.act(Action::Channel(ChanUp::Open { ch, kind, endpoint: endpoint.to_vec(), window }))
            }
            Up::ChanData { ch, last, data } => out.act(Action::Channel(ChanUp::Data { ch, last, data: data.to_vec() })),
            Up::ChanCredit { ch, bytes } => out.act(Action::Channel(ChanUp::Credit { ch, bytes })),
            Up::ChanClose { ch } => out.act(Action::Channel(ChanUp::Close { ch })),
            Up::Unknown(v) => {
                self.unknown += 1;
                out.act(Action::Notice(Notice::UnknownMessage(v)));
            }
            Up::Pong { .. } | Up::Ready => {}
            Up::Hello { .. } => self.close(Close::HelloAfterHandshake, out),
        }
    }

    /// Adds a record to the batch; false if it is not stored (acknowledged and counted only).
    fn push(&mut self, record: LogRecord, device: bool, note: Option<Note>) -> bool {
        if device {
            self.batch.received += 1;
            self.batch.ack = Some(self.batch.ack.map_or(record.seq, |a| a.max(record.seq)));
        }
        if record.seq > MAX_STORED_SEQ {
            // Acknowledged (or the device would resend it forever) but not storable: counted.
            self.batch.unstorable += 1;
            return false;
        }
        self.batch.records.push(record);
        self.batch.notes.extend(note);
        true
    }

    /// True while the batch being gathered has room: the shell hands over frames already waiting
    /// until this is false, then calls [`Connection::flush`].
    pub fn wants_more(&self) -> bool {
        self.phase != Phase::Closed && self.batch.records.len() < MAX_BATCH
    }

    /// The records gathered since the last flush, to store in one transaction (`None`: nothing to
    /// store or acknowledge; `records` may be empty when only unstorable records came). Call [`Connection::logs_stored`] once they are stored.
    pub fn flush(&mut self) -> Option<Batch> {
        if self.phase == Phase::Closed || (self.batch.records.is_empty() && self.batch.ack.is_none()) {
            return None;
        }
        let batch = std::mem::take(&mut self.batch);
        self.storing = batch.ack;
        Some(batch)
    }

    /// The last flushed batch is stored: acknowledge it (one `LogAck`, if it held device records).
    pub fn logs_stored(&mut self, out: &mut impl Output) {
        if let (Some(upto), Phase::Online) = (self.storing.take(), self.phase) {
            send(&self.negotiated, out, &Down::LogAck { upto });
        }
    }

    /// Before `Ready`: the shell knows the device has no deployment (read with the handshake,
    /// and none made since), so no [`Action::LoadTarget`] follows `Ready`. A deployment made
    /// later arrives as usual through [`Connection::deployment_changed`].
    pub fn known_without_target(&mut self) {
        if matches!(self.phase, Phase::AwaitingReady { .. }) {
            self.target = None;
            self.target_loaded = true;
        }
    }

    /// The device's deployment changed (or may have: the notification lagged). Before `Ready`
    /// the target is loaded once the device is online (even if it was known to have none).
    pub fn deployment_changed(&mut self, out: &mut impl Output) {
        match self.phase {
            Phase::Online if self.negotiated.allows(features::UPDATES) => out.act(Action::LoadTarget),
            Phase::AwaitingReady { .. } => self.target_loaded = false,
            _ => {}
        }
    }

    /// A frame from the debugger attached to this device: sent as `Down::Debug` if the device is
    /// online and announced `DEBUG`, otherwise dropped ([`Notice::DebugDropped`]).
    pub fn debug_to_device(&mut self, frame: &[u8], out: &mut impl Output) {
        let drop = if self.phase != Phase::Online {
            Some(DebugDrop::Offline)
        } else if !self.negotiated.allows(features::DEBUG) {
            Some(DebugDrop::NotNegotiated)
        } else if frame.len() > MAX_DEBUG_FRAME {
            Some(DebugDrop::TooLarge)
        } else {
            None
        };
        match drop {
            None => out.send(&Down::Debug { frame }),
            Some(why) => out.act(Action::Notice(Notice::DebugDropped(why))),
        }
    }

    /// The device's target (after [`Action::LoadTarget`]): forget what was offered and cancelled,
    /// and send what the device needs now.
    pub fn target(&mut self, target: Option<Target>, out: &mut impl Output) {
        if self.phase == Phase::Closed {
            return;
        }
        // Another bundle with the sequence of the one the device is downloading or installing
        // (from this connection's offer): the device cannot tell them apart by sequence, so its
        // work is cancelled and the new bundle offered.
        let replaced = match (&self.working, &target, self.reported) {
            (Some((seq, digest)), Some(t), Some(rep))
                if t.sequence == *seq
                    && t.manifest_digest != *digest
                    && rep.sequence == *seq
                    && matches!(rep.state, UpdateState::Downloading | UpdateState::Installing) =>
            {
                Some((*seq, rep.installed))
            }
            _ => None,
        };
        self.target = target.map(Box::new);
        self.target_loaded = true;
        self.offered = None;
        self.cancelled = None;
        if let Some((sequence, installed)) = replaced {
            send(&self.negotiated, out, &Down::UpdateCancel { sequence });
            self.working = None;
            let text = "download cancelled: no longer the target".to_string();
            out.act(Action::NoteUpdate { state: "cancelled", sequence, text });
            // What the device does next is to drop that work.
            self.reported = Some(Reported { installed, sequence: 0, state: UpdateState::Idle });
        }
        self.reconcile(out);
    }

    fn reconcile(&mut self, out: &mut impl Output) {
        if !self.negotiated.allows(features::UPDATES) {
            return;
        }
        let r = reconcile(self.target.as_ref().map(|t| t.sequence), self.reported, self.offered, self.cancelled);
        if let Some(sequence) = r.cancel {
            send(&self.negotiated, out, &Down::UpdateCancel { sequence });
            self.cancelled = Some(sequence);
            let text = "download cancelled: no longer the target".to_string();
            out.act(Action::NoteUpdate { state: "cancelled", sequence, text });
        }
        if let (true, Some(t)) = (r.offer, self.target.as_deref()) {
            send(&self.negotiated, out, &Down::UpdateOffer { envelope: &t.envelope });
            self.offered = Some(t.sequence);
            self.working = Some((t.sequence, t.manifest_digest.clone()));
            let text = format!("offered {} (sequence {})", t.bundle_id, t.sequence);
            out.act(Action::NoteUpdate { state: "offered", sequence: t.sequence, text });
            out.act(Action::Notice(Notice::Offered { bundle_id: t.bundle_id.clone(), sequence: t.sequence }));
        } else if let (true, None, Some(rep)) = (self.target_loaded, r.cancel, self.reported) {
            if answers_no_update(rep.state) {
                let target = self.target.as_ref().map_or(0, |t| t.sequence);
                send(&self.negotiated, out, &Down::NoUpdate { target });
            }
        }
    }

    /// Validates one `FetchLayer`: a `LayerError` for a sequence that is not the target, a
    /// component it does not have, or a range that is empty, above [`MAX_FETCH`] or past the end
    /// of the layer; otherwise a [`Fetch`] for the shell.
    fn fetch(&mut self, sequence: u64, component: u8, offset: u32, len: u32, out: &mut impl Output) {
        let refuse = |code: LayerErrorCode| Down::LayerError { sequence, component, offset, code: code as u8 };
        // The target's sequence, and (if this connection offered one with that sequence) the
        // same bundle: never another bundle's bytes for a download of the first.
        let same_bundle =
            |t: &Target| self.working.as_ref().is_none_or(|(s, d)| *s != t.sequence || *d == t.manifest_digest);
        let Some(t) = self.target.as_ref().filter(|t| t.sequence == sequence && same_bundle(t)) else {
            return send(&self.negotiated, out, &refuse(LayerErrorCode::UnknownSequence));
        };
        let Some(layer) = t.layers.get(component as usize) else {
            return send(&self.negotiated, out, &refuse(LayerErrorCode::UnknownComponent));
        };
        if len == 0 || len > MAX_FETCH || offset as u64 + len as u64 > layer.size as u64 {
            return send(&self.negotiated, out, &refuse(LayerErrorCode::OutOfRange));
        }
        out.act(Action::Fetch(Fetch { sequence, component, offset, len, sha256: layer.sha256.clone() }));
    }
}

#[cfg(test)]
mod tests;
