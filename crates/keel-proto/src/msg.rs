//! The messages carried inside the secure channel, CBOR encoded (one message per Noise
//! transport message). `docs/wire-protocol.md` has the CDDL.
//!
//! Both directions are a CBOR array of two items, `[variant, [fields...]]` (minicbor's derive
//! with explicit indices: the variant number, then the variant's fields as an array in index
//! order). Fields are only ever added at the end; a receiver ignores fields beyond those it
//! knows, and optional fields at the end may be absent.
//!
//! Variant numbers are stable and allocated in ranges: 0..=15 the link itself, 16..=31 updates,
//! 32..=47 remote debugging, 48..=63 configuration and app channels, 64..=127 reserved. A
//! well-formed message whose variant number is in 0..=127 but unknown to the receiver decodes as
//! `Unknown(n)` ([`Up::Unknown`], [`Down::Unknown`]): the receiver skips and counts it. A number
//! above 127, or bytes that are not one well-formed message, are [`MsgError::Malformed`], which
//! ends the connection. Decode with [`decode_up`] / [`decode_down`] (not with `minicbor::decode`
//! directly, which does not know the skip rule).
//!
//! Negotiation: [`Hello`] carries the device's protocol range and [`features`]; `Welcome` the
//! chosen version and the features both sides announced ([`negotiate`]). Neither side sends a
//! message of a feature ([`Up::feature`], [`Down::feature`]) the other did not announce.

use minicbor::{Decode, Encode};

pub use crate::event::{BootReason, CrashInfo, LinkLossReason, ReleaseReason, VisorEvent};
pub use keel_abi::UpdateReason;

/// Highest protocol version spoken by this crate. Version 2 added negotiation, `Event`,
/// unknown-variant skipping and reason codes; version 1 is not spoken any more (never deployed).
pub const PROTOCOL_VERSION: u16 = 2;
/// Lowest protocol version spoken by this crate.
pub const PROTOCOL_MIN: u16 = 2;

/// Variant numbers a receiver skips (and counts) when it does not know them.
pub const SKIPPABLE: core::ops::RangeInclusive<u16> = 0..=127;

/// Feature bits announced in [`Hello::features`] and [`Down::Welcome`]'s `features`.
pub mod features {
    /// Over-the-air updates: `UpdateStatus`, `FetchLayer`, `UpdateOffer`, `LayerData`,
    /// `LayerError`, `UpdateCancel`.
    pub const UPDATES: u32 = 1 << 0;
    /// Structured visor events (`Up::Event`).
    pub const EVENTS: u32 = 1 << 1;
    /// Remote debugging (variants 32..=47): `Up::Debug` and `Down::Debug`, opaque end-to-end
    /// encrypted frames between the debugger (the CLI) and the visor's debug service, which the
    /// server relays without reading.
    pub const DEBUG: u32 = 1 << 2;
    /// App channels (variants 48..=63): `ChanOpen`, `ChanOpened`, `ChanData`, `ChanCredit`,
    /// `ChanClose`, `ChanClosed` — the app's messages to and from the server's services (HTTP
    /// proxy, managed MQTT, configuration and secrets), with credit-based flow control.
    pub const CHANNELS: u32 = 1 << 3;
    /// Every feature this crate implements.
    pub const SUPPORTED: u32 = UPDATES | EVENTS | DEBUG | CHANNELS;
}

/// The outcome of a negotiation: the version both speak and the features both announced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Negotiated {
    /// Protocol version of the connection.
    pub protocol: u16,
    /// Features both sides announced.
    pub features: u32,
}

impl Negotiated {
    /// True if every bit of `feature` was negotiated (0: always).
    pub fn allows(&self, feature: u32) -> bool {
        self.features & feature == feature
    }
}

/// What a server speaking `[min, max]` with `features` answers a device's `hello`: the highest
/// common version and the common features, or `None` if the ranges do not overlap.
pub fn negotiate(hello: &Hello<'_>, min: u16, max: u16, features: u32) -> Option<Negotiated> {
    let (dmin, dmax) = hello.protocol_range();
    let protocol = dmax.min(max);
    (protocol >= dmin.max(min)).then_some(Negotiated { protocol, features: hello.features.unwrap_or(0) & features })
}

/// The device's first message (variant 0), in full: what [`Up::Hello`] says plus the
/// negotiation fields, which are optional on the wire (absent: `protocol_min = protocol`,
/// `features = 0`).
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct Hello<'a> {
    /// Highest protocol version the device speaks.
    #[n(0)]
    pub protocol: u16,
    /// Visor version.
    #[b(1)]
    pub visor_version: &'a str,
    /// Persistent boot counter.
    #[n(2)]
    pub boot_count: u32,
    /// Name and version of the running app, if one runs.
    #[b(3)]
    pub app: Option<(&'a str, &'a str)>,
    /// Sequence number the next log record will get.
    #[n(4)]
    pub next_log_seq: u64,
    /// Lowest protocol version the device speaks.
    #[n(5)]
    pub protocol_min: Option<u16>,
    /// The device's [`features`].
    #[n(6)]
    pub features: Option<u32>,
}

impl<'a> Hello<'a> {
    /// `(min, max)` protocol versions the device speaks.
    pub fn protocol_range(&self) -> (u16, u16) {
        (self.protocol_min.unwrap_or(self.protocol).min(self.protocol), self.protocol)
    }

    /// The hello of `up` (an [`Up::Hello`]) with this range and these features.
    pub fn from_up(up: &Up<'a>, protocol_min: u16, features: u32) -> Option<Hello<'a>> {
        match *up {
            Up::Hello { protocol, visor_version, boot_count, app, next_log_seq } => Some(Hello {
                protocol,
                visor_version,
                boot_count,
                app,
                next_log_seq,
                protocol_min: Some(protocol_min),
                features: Some(features),
            }),
            _ => None,
        }
    }
}

/// Encodes `h` as message variant 0 into `out`; returns the length.
pub fn encode_hello(h: &Hello<'_>, out: &mut [u8]) -> Result<usize, MsgError> {
    let total = out.len();
    let mut w: &mut [u8] = out;
    let mut e = minicbor::Encoder::new(&mut w);
    e.array(2).and_then(|e| e.u16(0)).and_then(|e| e.encode(h)).map_err(|_| MsgError::BufferTooSmall)?;
    Ok(total - w.len())
}

/// Decodes the full [`Hello`] from the bytes of an [`Up::Hello`] message.
pub fn decode_hello(b: &[u8]) -> Result<Hello<'_>, MsgError> {
    let mut d = minicbor::Decoder::new(b);
    if variant_of(&mut d)? != 0 {
        return Err(MsgError::Malformed);
    }
    let h = d.decode().map_err(|_| MsgError::Malformed)?;
    end_of(&d)?;
    Ok(h)
}

/// Device → server.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub enum Up<'a> {
    /// First message, inside the Noise handshake's first message. This variant leaves out the
    /// negotiation fields (see [`Hello`], which `keel_link::device::DeviceLink::start` sends).
    #[n(0)]
    Hello {
        /// Highest protocol version of the device ([`PROTOCOL_VERSION`]).
        #[n(0)]
        protocol: u16,
        /// Visor version.
        #[b(1)]
        visor_version: &'a str,
        /// Persistent boot counter.
        #[n(2)]
        boot_count: u32,
        /// Name and version of the running app, if one runs.
        #[b(3)]
        app: Option<(&'a str, &'a str)>,
        /// Sequence number the next log record will get.
        #[n(4)]
        next_log_seq: u64,
    },
    /// One log record (an app line or a visor text line).
    #[n(1)]
    Log {
        /// Sequence number (`boot << 32 | n`).
        #[n(0)]
        seq: u64,
        /// 0 = app line, 1 = visor text.
        #[n(1)]
        kind: u8,
        /// Level.
        #[n(2)]
        level: u8,
        /// Monotonic time of the record.
        #[n(3)]
        time_us: u64,
        /// The text.
        #[cbor(b(4), with = "minicbor::bytes")]
        text: &'a [u8],
    },
    /// Records before `before_seq` were dropped on the device because its ring was full.
    #[n(2)]
    Dropped {
        /// How many.
        #[n(0)]
        count: u64,
        /// The first sequence number still held after the drop.
        #[n(1)]
        before_seq: u64,
    },
    /// Answer to [`Down::Ping`].
    #[n(3)]
    Pong {
        /// The ping's nonce.
        #[n(0)]
        nonce: u32,
    },
    /// First transport message, sent right after [`Down::Welcome`]. Noise IK's first handshake
    /// message can be replayed by anyone who recorded it; only the real device can encrypt this,
    /// so the server treats the device as connected only once it arrives.
    #[n(4)]
    Ready,
    /// A structured visor event (feature [`features::EVENTS`]); it shares the log records'
    /// sequence numbers and `LogAck`.
    #[n(5)]
    Event {
        /// Sequence number (`boot << 32 | n`, from the log ring).
        #[n(0)]
        seq: u64,
        /// Monotonic time of the event.
        #[n(1)]
        time_us: u64,
        /// What happened.
        #[n(2)]
        event: VisorEvent,
    },
    /// Where the device stands with updates. Sent right after [`Up::Ready`], whenever the state
    /// changes, and periodically (e.g. per page) while downloading.
    #[n(16)]
    UpdateStatus {
        /// Manifest sequence number of the confirmed install (0: none, the factory image).
        #[n(0)]
        installed: u64,
        /// Manifest sequence number of the bundle this status is about (0: none).
        #[n(1)]
        sequence: u64,
        /// An [`UpdateState`] code.
        #[n(2)]
        state: u8,
        /// Bytes of the bundle's layers downloaded so far.
        #[n(3)]
        progress: u32,
        /// Total bytes of the bundle's layers (0 if not known).
        #[n(4)]
        total: u32,
        /// An [`UpdateReason`] code for `refused`, `rolled_back` and `error`; 0 otherwise. The
        /// server renders the text.
        #[n(5)]
        reason: u16,
    },
    /// Asks for `[offset, offset + len)` of one layer of the offered bundle; the server answers
    /// with consecutive [`Down::LayerData`] in order (or one [`Down::LayerError`]).
    #[n(17)]
    FetchLayer {
        /// Manifest sequence number of the bundle.
        #[n(0)]
        sequence: u64,
        /// Component index in manifest order (0 = the first component).
        #[n(1)]
        component: u8,
        /// First byte, as an offset in the **layer** (not in the slot the device writes to).
        #[n(2)]
        offset: u32,
        /// Bytes wanted, 1..=[`MAX_FETCH`] (one flash page); `offset + len` must not pass the end
        /// of the layer.
        #[n(3)]
        len: u32,
    },
    /// One opaque frame of a remote debugging session (feature [`features::DEBUG`]) from the
    /// device's debug service to the debugger attached through the server. The bytes are a
    /// transport message of the end-to-end session between the visor and the debugger: the
    /// server relays them without reading them.
    #[n(32)]
    Debug {
        /// At most [`MAX_DEBUG_FRAME`] bytes (a longer one is not sent and does not decode).
        #[cbor(b(0), with = "minicbor::bytes")]
        frame: &'a [u8],
    },
    /// The app opened a channel (feature [`features::CHANNELS`]). Sent when the channel's first
    /// message is ready to go (a channel that never sends anything never reaches the server).
    /// `ch` is chosen by the device and never reused within a connection.
    #[n(48)]
    ChanOpen {
        /// The device's id of the channel.
        #[n(0)]
        ch: u32,
        /// The service (`keel_abi::chan::Kind`).
        #[n(1)]
        kind: u8,
        /// The endpoint (MQTT: broker profile), at most 64 bytes.
        #[cbor(b(2), with = "minicbor::bytes")]
        endpoint: &'a [u8],
        /// Initial credit for the server's messages: the app's receive buffer size. Also the
        /// largest message cost (`keel_abi::chan::record_cost`) the channel can receive.
        #[n(3)]
        window: u32,
    },
    /// A piece of one app message on a channel (feature [`features::CHANNELS`]); `last` ends
    /// the message. Pieces of one message are consecutive on its channel.
    #[n(49)]
    ChanData {
        /// The channel.
        #[n(0)]
        ch: u32,
        /// True on the message's last piece.
        #[n(1)]
        last: bool,
        /// At most [`MAX_CHAN_DATA`] bytes.
        #[cbor(b(2), with = "minicbor::bytes")]
        data: &'a [u8],
    },
    /// More credit for the server's messages on a channel: the app consumed messages.
    #[n(50)]
    ChanCredit {
        /// The channel.
        #[n(0)]
        ch: u32,
        /// Bytes (in `record_cost` units) added to the server's credit.
        #[n(1)]
        bytes: u32,
    },
    /// The app closed a channel (or the device dropped it); the server ends the service's work
    /// for it.
    #[n(51)]
    ChanClose {
        /// The channel.
        #[n(0)]
        ch: u32,
    },
    /// A message in [`SKIPPABLE`] this crate does not know (decoded only, never sent).
    #[n(65535)]
    Unknown(#[n(0)] u16),
}

/// Server → device. Byte fields borrow from the decrypted message.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub enum Down<'a> {
    /// Answer to [`Up::Hello`], inside the Noise handshake's second message.
    #[n(0)]
    Welcome {
        /// The protocol version of this connection (the highest both speak).
        #[n(0)]
        protocol: u16,
        /// Wall clock, microseconds since the Unix epoch.
        #[n(1)]
        unix_us: u64,
        /// Highest log sequence number the server already stored for this device, if any.
        #[n(2)]
        log_acked: Option<u64>,
        /// The [`features`] of this connection: those both sides announced.
        #[n(3)]
        features: u32,
    },
    /// Wall clock update.
    #[n(1)]
    TimeSync {
        /// Microseconds since the Unix epoch.
        #[n(0)]
        unix_us: u64,
    },
    /// Every log record with a sequence number `<= upto` is stored.
    #[n(2)]
    LogAck {
        /// Cumulative acknowledgement.
        #[n(0)]
        upto: u64,
    },
    /// Keepalive; the device answers [`Up::Pong`].
    #[n(3)]
    Ping {
        /// Echoed back.
        #[n(0)]
        nonce: u32,
    },
    /// The bundle the server wants this device to run: its envelope **without** integrated
    /// payloads (SUIT-shaped manifest + COSE_Sign1, see `docs/bundle-format.md`). The device
    /// verifies it and fetches the layers with [`Up::FetchLayer`].
    #[n(16)]
    UpdateOffer {
        /// The envelope (about 230 bytes for one component).
        #[cbor(b(0), with = "minicbor::bytes")]
        envelope: &'a [u8],
    },
    /// A piece of a layer, answering [`Up::FetchLayer`].
    #[n(17)]
    LayerData {
        /// Manifest sequence number of the bundle.
        #[n(0)]
        sequence: u64,
        /// Component index in manifest order.
        #[n(1)]
        component: u8,
        /// Offset of `data[0]` in the **layer** (not in the slot).
        #[n(2)]
        offset: u32,
        /// At most [`LAYER_CHUNK`] bytes.
        #[cbor(b(3), with = "minicbor::bytes")]
        data: &'a [u8],
    },
    /// The server cannot serve a [`Up::FetchLayer`]; `code` is a [`LayerErrorCode`].
    #[n(18)]
    LayerError {
        /// As requested.
        #[n(0)]
        sequence: u64,
        /// As requested.
        #[n(1)]
        component: u8,
        /// As requested.
        #[n(2)]
        offset: u32,
        /// Why.
        #[n(3)]
        code: u8,
    },
    /// The deployment of this bundle was withdrawn or replaced: stop downloading it.
    #[n(19)]
    UpdateCancel {
        /// Manifest sequence number of the cancelled bundle.
        #[n(0)]
        sequence: u64,
    },
    /// The answer to an [`Up::UpdateStatus`] that gets no offer and no cancel while the device
    /// is not downloading or installing: there is nothing for it to install now (no deployment,
    /// the target is installed, or the device already handled it). A device that keeps its app
    /// in quarantine until it has asked the server for updates takes this as the end of the
    /// check. (Variant 20 stays unassigned: older tests use it as an unknown variant.)
    #[n(21)]
    NoUpdate {
        /// Manifest sequence number of the device's target (0: no deployment).
        #[n(0)]
        target: u64,
    },
    /// One opaque frame of a remote debugging session (feature [`features::DEBUG`]) from the
    /// debugger attached through the server to the device's debug service (see [`Up::Debug`]).
    #[n(32)]
    Debug {
        /// At most [`MAX_DEBUG_FRAME`] bytes (a longer one is not sent and does not decode).
        #[cbor(b(0), with = "minicbor::bytes")]
        frame: &'a [u8],
    },
    /// The server accepted a channel (feature [`features::CHANNELS`]).
    #[n(48)]
    ChanOpened {
        /// The device's id of the channel.
        #[n(0)]
        ch: u32,
        /// Initial credit for the device's messages (the server's buffer for this channel).
        #[n(1)]
        window: u32,
    },
    /// A piece of one message from the service on a channel (see [`Up::ChanData`]).
    #[n(49)]
    ChanData {
        /// The channel.
        #[n(0)]
        ch: u32,
        /// True on the message's last piece.
        #[n(1)]
        last: bool,
        /// At most [`MAX_CHAN_DATA`] bytes.
        #[cbor(b(2), with = "minicbor::bytes")]
        data: &'a [u8],
    },
    /// More credit for the device's messages on a channel.
    #[n(50)]
    ChanCredit {
        /// The channel.
        #[n(0)]
        ch: u32,
        /// Bytes (in `record_cost` units) added to the device's credit.
        #[n(1)]
        bytes: u32,
    },
    /// The server closed (or refused) a channel; `reason` is a `keel_abi::chan::Reason`.
    #[n(51)]
    ChanClosed {
        /// The channel.
        #[n(0)]
        ch: u32,
        /// Why.
        #[n(1)]
        reason: u8,
    },
    /// A message in [`SKIPPABLE`] this crate does not know (decoded only, never sent).
    #[n(65535)]
    Unknown(#[n(0)] u16),
}

impl Up<'_> {
    /// Variant numbers this crate defines.
    pub const VARIANTS: [u16; 13] = [0, 1, 2, 3, 4, 5, 16, 17, 32, 48, 49, 50, 51];

    /// The feature bit the receiver must have announced for this message (0: none needed).
    pub fn feature(&self) -> u32 {
        match self {
            Up::UpdateStatus { .. } | Up::FetchLayer { .. } => features::UPDATES,
            Up::Event { .. } => features::EVENTS,
            Up::Debug { .. } => features::DEBUG,
            Up::ChanOpen { .. } | Up::ChanData { .. } | Up::ChanCredit { .. } | Up::ChanClose { .. } => {
                features::CHANNELS
            }
            _ => 0,
        }
    }

    /// False for a message over a size limit of its variant (a [`Up::Debug`] frame over
    /// [`MAX_DEBUG_FRAME`]): the sessions refuse to send it and [`decode_up`] calls it malformed.
    pub fn within_limits(&self) -> bool {
        match self {
            Up::Debug { frame } => frame.len() <= MAX_DEBUG_FRAME,
            Up::ChanData { data, .. } => data.len() <= MAX_CHAN_DATA,
            Up::ChanOpen { endpoint, .. } => endpoint.len() <= MAX_ENDPOINT,
            _ => true,
        }
    }
}

impl Down<'_> {
    /// Variant numbers this crate defines.
    pub const VARIANTS: [u16; 14] = [0, 1, 2, 3, 16, 17, 18, 19, 21, 32, 48, 49, 50, 51];

    /// The feature bit the receiver must have announced for this message (0: none needed).
    pub fn feature(&self) -> u32 {
        match self {
            Down::UpdateOffer { .. }
            | Down::LayerData { .. }
            | Down::LayerError { .. }
            | Down::UpdateCancel { .. }
            | Down::NoUpdate { .. } => features::UPDATES,
            Down::Debug { .. } => features::DEBUG,
            Down::ChanOpened { .. } | Down::ChanData { .. } | Down::ChanCredit { .. } | Down::ChanClosed { .. } => {
                features::CHANNELS
            }
            _ => 0,
        }
    }

    /// False for a message over a size limit of its variant (a [`Down::Debug`] frame over
    /// [`MAX_DEBUG_FRAME`]): the sessions refuse to send it and [`decode_down`] calls it
    /// malformed.
    pub fn within_limits(&self) -> bool {
        match self {
            Down::Debug { frame } => frame.len() <= MAX_DEBUG_FRAME,
            Down::ChanData { data, .. } => data.len() <= MAX_CHAN_DATA,
            _ => true,
        }
    }
}

/// Largest plaintext of one message either side sends (the Noise layer adds its tag).
pub const MAX_PLAINTEXT: usize = 1024;

/// Largest `len` of one [`Up::FetchLayer`]: one 8 KiB flash page.
pub const MAX_FETCH: u32 = 8192;

/// Largest `data` of one [`Down::LayerData`]: the encoded message (at most 22 bytes of CBOR
/// around the data) stays within [`MAX_PLAINTEXT`]. A full page is 9 messages.
pub const LAYER_CHUNK: usize = 960;

/// Largest opaque frame of one [`Up::Debug`] or [`Down::Debug`]: the encoded message (at most 8
/// bytes of CBOR around the frame: `[32, [bstr]]` with a two-byte length) stays within
/// [`MAX_PLAINTEXT`]. The frame is a transport message of the end-to-end debug session
/// (ciphertext and its tag), so that session's plaintext is at most this minus its tag.
pub const MAX_DEBUG_FRAME: usize = 960;

const _: () = assert!(MAX_DEBUG_FRAME + 8 <= MAX_PLAINTEXT, "a full debug frame fits one message");

/// Largest `data` of one [`Up::ChanData`] or [`Down::ChanData`]: the encoded message (at most
/// 14 bytes of CBOR around the data: `[49, [u32, bool, bstr]]`) stays within [`MAX_PLAINTEXT`].
pub const MAX_CHAN_DATA: usize = 960;

/// Longest endpoint name of an [`Up::ChanOpen`].
pub const MAX_ENDPOINT: usize = 64;

const _: () = assert!(MAX_CHAN_DATA + 14 <= MAX_PLAINTEXT, "a full channel piece fits one message");

/// The device's update state, as carried in [`Up::UpdateStatus`].
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UpdateState {
    /// Nothing in progress.
    Idle = 0,
    /// Fetching layers.
    Downloading = 1,
    /// Writing / switching slots.
    Installing = 2,
    /// The new bundle runs on trial (crashes or a missing confirmation roll it back).
    Trial = 3,
    /// The new bundle is confirmed (`installed` is its sequence).
    Confirmed = 4,
    /// The trial failed and the previous bundle runs again (`reason` says why).
    RolledBack = 5,
    /// The device refused the offer (bad signature, sequence not above installed, ...).
    Refused = 6,
    /// Something went wrong (e.g. a layer digest mismatch); `reason` says what.
    Error = 7,
}

impl UpdateState {
    /// Every state, in code order.
    pub const ALL: [UpdateState; 8] = [
        UpdateState::Idle,
        UpdateState::Downloading,
        UpdateState::Installing,
        UpdateState::Trial,
        UpdateState::Confirmed,
        UpdateState::RolledBack,
        UpdateState::Refused,
        UpdateState::Error,
    ];

    /// The state with wire code `v`, if known.
    pub fn from_u8(v: u8) -> Option<UpdateState> {
        UpdateState::ALL.get(v as usize).copied()
    }

    /// The wire code.
    pub fn as_u8(self) -> u8 {
        self as u8
    }

    /// Lower-case name (`idle`, `downloading`, ..., `rolled_back`), as the server's API shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            UpdateState::Idle => "idle",
            UpdateState::Downloading => "downloading",
            UpdateState::Installing => "installing",
            UpdateState::Trial => "trial",
            UpdateState::Confirmed => "confirmed",
            UpdateState::RolledBack => "rolled_back",
            UpdateState::Refused => "refused",
            UpdateState::Error => "error",
        }
    }

    /// The state named `s` (see [`UpdateState::as_str`]).
    pub fn parse(s: &str) -> Option<UpdateState> {
        UpdateState::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

impl From<UpdateState> for u8 {
    fn from(s: UpdateState) -> u8 {
        s as u8
    }
}

impl TryFrom<u8> for UpdateState {
    type Error = u8;
    fn try_from(v: u8) -> Result<Self, u8> {
        UpdateState::from_u8(v).ok_or(v)
    }
}

/// Why the server could not serve a [`Up::FetchLayer`] ([`Down::LayerError`]'s `code`).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LayerErrorCode {
    /// The sequence is not the bundle deployed to this device (any more).
    UnknownSequence = 1,
    /// The bundle has no component with this index.
    UnknownComponent = 2,
    /// `len` is 0 or above [`MAX_FETCH`], or the range passes the end of the layer.
    OutOfRange = 3,
    /// The layer cannot be read from storage now; try again later.
    Unavailable = 4,
}

impl LayerErrorCode {
    /// The code with wire value `v`, if known.
    pub fn from_u8(v: u8) -> Option<LayerErrorCode> {
        match v {
            1 => Some(LayerErrorCode::UnknownSequence),
            2 => Some(LayerErrorCode::UnknownComponent),
            3 => Some(LayerErrorCode::OutOfRange),
            4 => Some(LayerErrorCode::Unavailable),
            _ => None,
        }
    }

    /// Short text for logs and status reasons.
    pub fn as_str(self) -> &'static str {
        match self {
            LayerErrorCode::UnknownSequence => "unknown sequence",
            LayerErrorCode::UnknownComponent => "unknown component",
            LayerErrorCode::OutOfRange => "out of range",
            LayerErrorCode::Unavailable => "layer unavailable",
        }
    }
}

/// Encoding or decoding failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MsgError {
    /// The output buffer is too small.
    BufferTooSmall,
    /// The bytes are not a valid message.
    Malformed,
}

/// Encodes `m` into `out`; returns the length. (`Unknown` is never sent; the sessions refuse it.)
pub fn encode<T: Encode<()>>(m: &T, out: &mut [u8]) -> Result<usize, MsgError> {
    let total = out.len();
    let mut w: &mut [u8] = out;
    minicbor::encode(m, &mut w).map_err(|_| MsgError::BufferTooSmall)?;
    Ok(total - w.len())
}

/// Reads the `[variant,` of a message.
fn variant_of(d: &mut minicbor::Decoder<'_>) -> Result<u16, MsgError> {
    match d.array() {
        Ok(Some(2)) => d.u16().map_err(|_| MsgError::Malformed),
        _ => Err(MsgError::Malformed),
    }
}

/// Refuses bytes after the message.
fn end_of(d: &minicbor::Decoder<'_>) -> Result<(), MsgError> {
    if d.position() == d.input().len() {
        Ok(())
    } else {
        Err(MsgError::Malformed)
    }
}

/// The skip rule: a known variant is decoded with `known`; an unknown one in [`SKIPPABLE`] is
/// checked for well-formedness and reported as `Err(Ok(n))`.
fn decode_with<'b, T: Decode<'b, ()>>(b: &'b [u8], known: &[u16]) -> Result<Result<T, u16>, MsgError> {
    let mut d = minicbor::Decoder::new(b);
    let v = variant_of(&mut d)?;
    if known.contains(&v) {
        let mut d = minicbor::Decoder::new(b);
        let m = d.decode().map_err(|_| MsgError::Malformed)?;
        end_of(&d)?;
        return Ok(Ok(m));
    }
    if !SKIPPABLE.contains(&v) {
        return Err(MsgError::Malformed);
    }
    d.skip().map_err(|_| MsgError::Malformed)?;
    end_of(&d)?;
    Ok(Err(v))
}

/// Decodes a device message; an unknown variant in [`SKIPPABLE`] is [`Up::Unknown`].
pub fn decode_up(b: &[u8]) -> Result<Up<'_>, MsgError> {
    let m = decode_with(b, &Up::VARIANTS)?.unwrap_or_else(Up::Unknown);
    if !m.within_limits() {
        return Err(MsgError::Malformed);
    }
    Ok(m)
}

/// Decodes a server message; an unknown variant in [`SKIPPABLE`] is [`Down::Unknown`].
pub fn decode_down(b: &[u8]) -> Result<Down<'_>, MsgError> {
    let m = decode_with(b, &Down::VARIANTS)?.unwrap_or_else(Down::Unknown);
    if !m.within_limits() {
        return Err(MsgError::Malformed);
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn variant<T: Encode<()>>(m: &T, buf: &mut [u8]) -> u16 {
        let n = encode(m, buf).unwrap();
        variant_of(&mut minicbor::Decoder::new(&buf[..n])).unwrap()
    }

    #[test]
    fn every_message_roundtrips() {
        let mut buf = [0u8; 256];
        let ups = [
            Up::Hello {
                protocol: 1,
                visor_version: "0.1.0",
                boot_count: 7,
                app: Some(("hello", "1.0.0")),
                next_log_seq: 7 << 32,
            },
            Up::Hello { protocol: 1, visor_version: "0.1.0", boot_count: 1, app: None, next_log_seq: 0 },
            Up::Event { seq: 3, time_us: 9, event: VisorEvent::Boot { count: 3, reason: 0 } },
            Up::Event { seq: 4, time_us: 10, event: VisorEvent::Crash(CrashInfo { pc: 1, ..Default::default() }) },
            Up::Log { seq: 5, kind: 0, level: 2, time_us: 1_000_000, text: b"hello: device=kd..." },
            Up::Dropped { count: 3, before_seq: 9 },
            Up::Pong { nonce: 77 },
            Up::Ready,
            Up::UpdateStatus { installed: 0, sequence: 0, state: 0, progress: 0, total: 0, reason: 0 },
            Up::UpdateStatus {
                installed: u64::MAX,
                sequence: 3,
                state: UpdateState::Refused.as_u8(),
                progress: u32::MAX,
                total: 40_960,
                reason: UpdateReason::SequenceNotNewer.code(),
            },
            Up::FetchLayer { sequence: 7, component: 0, offset: 8192, len: MAX_FETCH },
            Up::Debug { frame: b"\x00opaque ciphertext\xff" },
            Up::Debug { frame: &[] },
            Up::ChanOpen { ch: u32::MAX, kind: 2, endpoint: b"telemetry", window: 65_536 },
            Up::ChanData { ch: 3, last: true, data: b"\x01\x00request" },
            Up::ChanData { ch: 0, last: false, data: &[] },
            Up::ChanCredit { ch: 3, bytes: u32::MAX },
            Up::ChanClose { ch: 9 },
        ];
        for m in ups {
            assert!(Up::VARIANTS.contains(&variant(&m, &mut buf)), "{m:?} is listed in VARIANTS");
            let n = encode(&m, &mut buf).unwrap();
            assert_eq!(decode_up(&buf[..n]).unwrap(), m);
        }
        let downs = [
            Down::Welcome { protocol: 2, unix_us: 1_795_000_000_000_000, log_acked: Some(4), features: u32::MAX },
            Down::TimeSync { unix_us: 1 },
            Down::LogAck { upto: u64::MAX },
            Down::Ping { nonce: 1 },
            Down::UpdateOffer { envelope: &[0xd8, 0x6b, 0xa2] },
            Down::LayerData { sequence: 7, component: 1, offset: 960, data: b"layer bytes" },
            Down::LayerData { sequence: 7, component: 0, offset: 0, data: &[] },
            Down::LayerError { sequence: 9, component: 3, offset: 1, code: LayerErrorCode::OutOfRange as u8 },
            Down::UpdateCancel { sequence: u64::MAX },
            Down::NoUpdate { target: 0 },
            Down::NoUpdate { target: u64::MAX },
            Down::Debug { frame: &[0xA5; 100] },
            Down::Debug { frame: &[] },
            Down::ChanOpened { ch: 1, window: 16_384 },
            Down::ChanData { ch: u32::MAX, last: false, data: &[7; 200] },
            Down::ChanCredit { ch: 2, bytes: 8 },
            Down::ChanClosed { ch: 2, reason: 3 },
        ];
        for m in downs {
            assert!(Down::VARIANTS.contains(&variant(&m, &mut buf)), "{m:?} is listed in VARIANTS");
            let n = encode(&m, &mut buf).unwrap();
            assert_eq!(decode_down(&buf[..n]).unwrap(), m);
        }
    }

    #[test]
    fn a_full_layer_chunk_fits_one_message() {
        let data = [0xAB; LAYER_CHUNK];
        let worst = Down::LayerData { sequence: u64::MAX, component: u8::MAX, offset: u32::MAX, data: &data };
        let mut buf = [0u8; MAX_PLAINTEXT];
        let n = encode(&worst, &mut buf).unwrap();
        assert!(n <= MAX_PLAINTEXT);
        assert_eq!(decode_down(&buf[..n]).unwrap(), worst);
        // A 230-byte envelope is far inside the limit too.
        let env = [0x5A; 400];
        assert!(encode(&Down::UpdateOffer { envelope: &env }, &mut buf).is_ok());
    }

    #[test]
    fn a_full_debug_frame_fits_one_message_and_a_longer_one_is_refused() {
        let frame = [0x5A; MAX_DEBUG_FRAME];
        let mut buf = [0u8; MAX_PLAINTEXT];
        let up = Up::Debug { frame: &frame };
        let n = encode(&up, &mut buf).unwrap();
        assert!(n <= MAX_DEBUG_FRAME + 8, "{n} bytes");
        assert_eq!(decode_up(&buf[..n]), Ok(up.clone()));
        assert!(up.within_limits());
        let down = Down::Debug { frame: &frame };
        let n = encode(&down, &mut buf).unwrap();
        assert_eq!(decode_down(&buf[..n]), Ok(down));
        // One byte more: the message would still fit, but the frame is over the limit, so no
        // peer sends it and a receiver treats it as malformed (it ends the connection).
        let long = [0x5A; MAX_DEBUG_FRAME + 1];
        assert!(!Up::Debug { frame: &long }.within_limits());
        assert!(!Down::Debug { frame: &long }.within_limits());
        let n = encode(&Up::Debug { frame: &long }, &mut buf).unwrap();
        assert_eq!(decode_up(&buf[..n]), Err(MsgError::Malformed));
        let n = encode(&Down::Debug { frame: &long }, &mut buf).unwrap();
        assert_eq!(decode_down(&buf[..n]), Err(MsgError::Malformed));
        // A debug message without its frame, or with text instead of bytes, is malformed.
        assert_eq!(decode_down(&[0x82, 0x18, 0x20, 0x80]), Err(MsgError::Malformed));
        assert_eq!(decode_up(&[0x82, 0x18, 0x20, 0x81, 0x61, b'x']), Err(MsgError::Malformed));
        // Truncated anywhere: malformed.
        let n = encode(&Up::Debug { frame: b"abc" }, &mut buf).unwrap();
        for cut in 0..n {
            assert_eq!(decode_up(&buf[..cut]), Err(MsgError::Malformed), "cut at {cut}");
        }
    }

    #[test]
    fn debug_needs_the_debug_feature() {
        assert_eq!(Up::Debug { frame: b"x" }.feature(), features::DEBUG);
        assert_eq!(Down::Debug { frame: b"x" }.feature(), features::DEBUG);
        const { assert!(features::SUPPORTED & features::DEBUG != 0, "this crate implements it") };
        // A device that does not announce DEBUG does not get it, whatever the server supports.
        let h = Hello {
            protocol: PROTOCOL_VERSION,
            visor_version: "1",
            boot_count: 1,
            app: None,
            next_log_seq: 0,
            protocol_min: None,
            features: Some(features::UPDATES | features::EVENTS),
        };
        let n = negotiate(&h, PROTOCOL_MIN, PROTOCOL_VERSION, features::SUPPORTED).unwrap();
        assert!(!n.allows(Up::Debug { frame: b"x" }.feature()));
        let with = Hello { features: Some(features::SUPPORTED), ..h };
        let n = negotiate(&with, PROTOCOL_MIN, PROTOCOL_VERSION, features::SUPPORTED).unwrap();
        assert!(n.allows(Down::Debug { frame: b"x" }.feature()));
        // A server without DEBUG does not negotiate it either.
        let n = negotiate(&with, PROTOCOL_MIN, PROTOCOL_VERSION, features::UPDATES | features::EVENTS).unwrap();
        assert!(!n.allows(features::DEBUG));
    }

    #[test]
    fn update_state_codes() {
        for (i, s) in UpdateState::ALL.into_iter().enumerate() {
            assert_eq!(s.as_u8() as usize, i);
            assert_eq!(UpdateState::from_u8(i as u8), Some(s));
            assert_eq!(UpdateState::parse(s.as_str()), Some(s));
            assert_eq!(UpdateState::try_from(u8::from(s)), Ok(s));
        }
        assert_eq!(UpdateState::from_u8(8), None);
        assert_eq!(UpdateState::RolledBack.as_str(), "rolled_back");
        assert_eq!(LayerErrorCode::from_u8(4), Some(LayerErrorCode::Unavailable));
        assert_eq!(LayerErrorCode::from_u8(0), None);
    }

    #[test]
    fn truncated_update_messages_are_errors() {
        let mut buf = [0u8; 128];
        let data = [7u8; 40];
        let downs = [
            Down::LayerData { sequence: 1, component: 0, offset: 5, data: &data },
            Down::UpdateOffer { envelope: &data },
            Down::LayerError { sequence: 1, component: 0, offset: 5, code: 4 },
            Down::UpdateCancel { sequence: 1 },
            Down::NoUpdate { target: 7 },
        ];
        for m in downs {
            let n = encode(&m, &mut buf).unwrap();
            for cut in 0..n {
                assert_eq!(decode_down(&buf[..cut]), Err(MsgError::Malformed), "{m:?} cut at {cut}");
            }
        }
        let ups = [
            Up::UpdateStatus { installed: 1, sequence: 2, state: 1, progress: 3, total: 4, reason: 9 },
            Up::Event { seq: 1, time_us: 2, event: VisorEvent::Update { sequence: 3, state: 5, reason: 1 } },
            Up::Event { seq: 1, time_us: 2, event: VisorEvent::Crash(CrashInfo::default()) },
            Up::Log { seq: 1, kind: 1, level: 2, time_us: 3, text: b"why" },
        ];
        for up in ups {
            let n = encode(&up, &mut buf).unwrap();
            for cut in 0..n {
                assert_eq!(decode_up(&buf[..cut]), Err(MsgError::Malformed), "{up:?} cut at {cut}");
            }
        }
        // A text field that is not UTF-8 is refused.
        let hello = Up::Hello { protocol: 2, visor_version: "why", boot_count: 1, app: None, next_log_seq: 0 };
        let n = encode(&hello, &mut buf).unwrap();
        let at = buf[..n].windows(3).position(|w| w == b"why").unwrap();
        buf[at] = 0xFF;
        assert_eq!(decode_up(&buf[..n]), Err(MsgError::Malformed));
        // A known variant whose fields have the wrong type is malformed, not unknown:
        // [16, ["x"]] and [1, [1, 2]] (a Log without its fields).
        assert_eq!(decode_up(&[0x82, 0x10, 0x81, 0x61, b'x']), Err(MsgError::Malformed));
        assert_eq!(decode_up(&[0x82, 0x01, 0x82, 0x01, 0x02]), Err(MsgError::Malformed));
        // An event of a known type with bad fields inside a known message is malformed too.
        assert_eq!(decode_up(&[0x82, 0x05, 0x83, 0x01, 0x02, 0x82, 0x00, 0x80]), Err(MsgError::Malformed));
    }

    #[test]
    fn unknown_variants_in_the_reserved_ranges_are_skipped_both_ways() {
        // [20, []] and [18, [1, "x", [2]]]: defined by a newer peer.
        assert_eq!(decode_down(&[0x82, 0x14, 0x80]), Ok(Down::Unknown(20)));
        assert_eq!(decode_up(&[0x82, 0x12, 0x83, 0x01, 0x61, b'x', 0x81, 0x02]), Ok(Up::Unknown(18)));
        assert_eq!(decode_up(&[0x82, 0x18, 0x21, 0x80]), Ok(Up::Unknown(33)), "debugging range");
        assert_eq!(decode_down(&[0x82, 0x18, 0x2F, 0x80]), Ok(Down::Unknown(47)), "debugging range");
        assert_eq!(decode_down(&[0x82, 0x18, 0x7F, 0x00]), Ok(Down::Unknown(127)), "last skippable");
        // Outside the ranges, truncated, trailing bytes, or not an array of two: malformed.
        assert_eq!(decode_down(&[0x82, 0x18, 0x80, 0x80]), Err(MsgError::Malformed), "variant 128");
        assert_eq!(decode_down(&[0x82, 0x19, 0xFF, 0xFF, 0x80]), Err(MsgError::Malformed), "variant 65535");
        assert_eq!(decode_up(&[0x82, 0x12, 0x82, 0x01]), Err(MsgError::Malformed), "truncated fields");
        assert_eq!(decode_up(&[0x82, 0x12, 0x80, 0x00]), Err(MsgError::Malformed), "trailing byte");
        assert_eq!(decode_up(&[0x83, 0x12, 0x80, 0x00]), Err(MsgError::Malformed), "three items");
        assert_eq!(decode_up(&[0x9F, 0x12, 0x80, 0xFF]), Err(MsgError::Malformed), "indefinite");
        // The next known message after an unknown one still decodes (nothing is left over).
        let mut buf = [0u8; 16];
        let n = encode(&Up::Pong { nonce: 5 }, &mut buf).unwrap();
        assert_eq!(decode_up(&buf[..n]), Ok(Up::Pong { nonce: 5 }));
    }

    #[test]
    fn hello_negotiates_the_highest_common_version_and_common_features() {
        let mut buf = [0u8; 128];
        let newer = Hello {
            protocol: 9,
            visor_version: "9.0.0",
            boot_count: 1,
            app: Some(("a", "1")),
            next_log_seq: 5,
            protocol_min: Some(2),
            features: Some(features::UPDATES | features::EVENTS | 1 << 30),
        };
        let n = encode_hello(&newer, &mut buf).unwrap();
        assert_eq!(decode_hello(&buf[..n]), Ok(newer.clone()));
        // The short variant reads the same bytes (the negotiation fields are extra fields).
        assert!(matches!(decode_up(&buf[..n]), Ok(Up::Hello { protocol: 9, boot_count: 1, .. })));
        let got = negotiate(&newer, PROTOCOL_MIN, PROTOCOL_VERSION, features::SUPPORTED).unwrap();
        assert_eq!(got, Negotiated { protocol: PROTOCOL_VERSION, features: features::UPDATES | features::EVENTS });
        assert!(got.allows(features::EVENTS) && !got.allows(features::DEBUG) && got.allows(0));
        // A hello without the negotiation fields speaks exactly `protocol` and no feature.
        let short = Up::Hello { protocol: 2, visor_version: "x", boot_count: 1, app: None, next_log_seq: 0 };
        let n = encode(&short, &mut buf).unwrap();
        let h = decode_hello(&buf[..n]).unwrap();
        assert_eq!((h.protocol_range(), h.features), ((2, 2), None));
        assert_eq!(negotiate(&h, 2, 3, features::SUPPORTED), Some(Negotiated { protocol: 2, features: 0 }));
        // No overlap: refused either way.
        assert_eq!(negotiate(&Hello { protocol: 1, protocol_min: Some(1), ..h.clone() }, 2, 3, 0), None);
        assert_eq!(negotiate(&Hello { protocol: 7, protocol_min: Some(4), ..h.clone() }, 2, 3, 0), None);
        // A min above the max means just the max.
        assert_eq!(Hello { protocol: 3, protocol_min: Some(5), ..h.clone() }.protocol_range(), (3, 3));
        // Not a hello.
        let n = encode(&Up::Ready, &mut buf).unwrap();
        assert_eq!(decode_hello(&buf[..n]), Err(MsgError::Malformed));
    }

    #[test]
    fn features_of_messages() {
        let status = Up::UpdateStatus { installed: 0, sequence: 0, state: 0, progress: 0, total: 0, reason: 0 };
        assert_eq!(status.feature(), features::UPDATES);
        assert_eq!(Up::Event { seq: 0, time_us: 0, event: VisorEvent::Online }.feature(), features::EVENTS);
        assert_eq!(Up::Pong { nonce: 0 }.feature(), 0);
        assert_eq!(Down::UpdateCancel { sequence: 1 }.feature(), features::UPDATES);
        assert_eq!(Down::NoUpdate { target: 1 }.feature(), features::UPDATES);
        assert_eq!(Down::LogAck { upto: 1 }.feature(), 0);
    }

    #[test]
    fn garbage_and_truncation_are_errors() {
        let mut buf = [0u8; 64];
        let n = encode(&Down::Ping { nonce: 1 }, &mut buf).unwrap();
        for cut in 0..n {
            assert_eq!(decode_down(&buf[..cut]), Err(MsgError::Malformed));
        }
        assert_eq!(decode_up(&[0xFF, 0x00, 0x13]), Err(MsgError::Malformed));
        assert_eq!(decode_down(&[0x82, 0x18, 0xC8, 0x00]), Err(MsgError::Malformed), "variant 200");
        let mut tiny = [0u8; 2];
        assert_eq!(encode(&Down::Ping { nonce: 1 }, &mut tiny), Err(MsgError::BufferTooSmall));
    }
}

#[cfg(test)]
mod doc_tests {
    extern crate std;
    use std::format;

    use super::*;

    /// The CDDL in `docs/wire-protocol.md` names every variant and event type this crate defines,
    /// with its number, and the document states this crate's protocol version.
    #[test]
    fn the_wire_document_lists_every_variant_number() {
        let doc = include_str!("../../../docs/wire-protocol.md");
        let cddl = &doc[doc.find("```cddl").expect("a CDDL block")..];
        for v in Up::VARIANTS.into_iter().chain(Down::VARIANTS).chain(VisorEvent::TYPES) {
            assert!(cddl.contains(&format!("[{v}, [")), "variant {v} is not in the CDDL");
        }
        assert!(doc.contains(&format!("protocol version {PROTOCOL_VERSION}")));
    }

    #[test]
    fn a_full_channel_piece_fits_one_message_and_a_longer_one_is_refused() {
        let data = [0xC3; MAX_CHAN_DATA];
        let mut buf = [0u8; MAX_PLAINTEXT];
        let up = Up::ChanData { ch: u32::MAX, last: true, data: &data };
        let n = encode(&up, &mut buf).unwrap();
        assert!(n <= MAX_CHAN_DATA + 14, "{n} bytes");
        assert_eq!(decode_up(&buf[..n]), Ok(up));
        let down = Down::ChanData { ch: u32::MAX, last: false, data: &data };
        let n = encode(&down, &mut buf).unwrap();
        assert_eq!(decode_down(&buf[..n]), Ok(down));
        let long = [0xC3; MAX_CHAN_DATA + 1];
        let n = encode(&Up::ChanData { ch: 1, last: true, data: &long }, &mut buf).unwrap();
        assert_eq!(decode_up(&buf[..n]), Err(MsgError::Malformed));
        let n = encode(&Down::ChanData { ch: 1, last: true, data: &long }, &mut buf).unwrap();
        assert_eq!(decode_down(&buf[..n]), Err(MsgError::Malformed));
        let name = [b'a'; MAX_ENDPOINT + 1];
        let n = encode(&Up::ChanOpen { ch: 1, kind: 2, endpoint: &name, window: 64 }, &mut buf).unwrap();
        assert_eq!(decode_up(&buf[..n]), Err(MsgError::Malformed));
        // Every channel message belongs to the CHANNELS feature.
        assert_eq!(Up::ChanClose { ch: 1 }.feature(), features::CHANNELS);
        assert_eq!(Down::ChanCredit { ch: 1, bytes: 1 }.feature(), features::CHANNELS);
    }
}
