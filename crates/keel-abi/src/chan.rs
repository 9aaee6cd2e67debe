//! Network control and channels (since ABI 2.1): how an app reaches the cloud through the visor.
//!
//! The app never touches the network. It asks for it ([`crate::Call::NetRequest`]), and opens
//! **channels** to services of the Keel server ([`Kind`]: an HTTP(S) proxy, a managed MQTT
//! session, configuration and secrets). The server talks to the outside world on the device's
//! behalf; the visor carries the channel's messages over the device's one encrypted link.
//!
//! A channel carries whole **messages** in both directions, in buffers the app provides:
//!
//! * **Receive buffer** (`rx`): the visor writes every message the server sends as a record
//!   `u32 length (LE)`, the message bytes, zero padding up to a multiple of 4 ([`record_cost`]
//!   bytes). The app finds the oldest complete one with [`crate::Call::ChanRecv`] (offset and
//!   length in its own buffer, read in place, no copy) and frees it with
//!   [`crate::Call::ChanConsume`]. Records are appended from offset 0; when every record has
//!   been consumed the buffer starts again at offset 0. The server never sends more than the room
//!   the visor granted it (credit), so the visor never drops or overwrites a message, and one
//!   slow app cannot stall the link: its channel just stops receiving.
//! * **Transmit buffer** (`tx`): [`crate::Call::ChanSend`] copies one whole message into it (as
//!   a record of the same layout); the visor sends queued messages as the server's credit and the
//!   link allow, and reads them from the app's buffer at that moment. The app must not use the
//!   transmit buffer itself.
//!
//! Buffer rules: both buffers 4-byte aligned ([`BUFFER_ALIGN`]), lengths multiples of 4 within
//! [`MIN_RX`]..=[`MAX_BUFFER`] (rx) and [`MIN_TX`]..=[`MAX_BUFFER`] (tx), writable app RAM, not
//! overlapping each other, another open channel's buffers or the notification ring. The largest
//! message a channel can receive is `rx_len - 4`; send one up to `tx_len - 4`.
//!
//! The messages themselves (an HTTP request, an MQTT publish, a config fetch, and the answers)
//! are defined by `keel-channel::msg` and mirrored in `keel_chan.h`; the visor does not read
//! them, the server validates them.

use crate::Status;

/// Most channels open at once.
pub const MAX_CHANNELS: usize = 8;
/// Most network requests the app may hold at once.
pub const MAX_NET_REQUESTS: u32 = 255;
/// Required alignment of both buffers.
pub const BUFFER_ALIGN: u32 = 4;
/// Smallest receive buffer.
pub const MIN_RX: u32 = 64;
/// Smallest transmit buffer.
pub const MIN_TX: u32 = 64;
/// Largest buffer (either direction).
pub const MAX_BUFFER: u32 = 65_536;
/// Longest endpoint name.
pub const MAX_ENDPOINT: u32 = 64;
/// Bytes of the length word in front of every message record.
pub const RECORD_HEADER: u32 = 4;
/// Size in bytes of [`OpenParams`] in memory.
pub const OPEN_PARAMS_LEN: u32 = 36;

/// Bytes one message of `len` bytes takes in a buffer (and in credit): the length word plus the
/// message padded to a multiple of 4.
pub const fn record_cost(len: u32) -> u32 {
    RECORD_HEADER + len.div_ceil(4) * 4
}

/// The service a channel talks to. Values are stable.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// One HTTP(S) request and its response (the server makes the request).
    Http = 1,
    /// A managed MQTT session: the server holds the broker connection for the device; the
    /// endpoint names the broker profile (configured on the server).
    Mqtt = 2,
    /// One fetch of configuration values and secrets.
    Config = 3,
}

impl Kind {
    /// Decodes a raw kind.
    pub fn from_u32(v: u32) -> Option<Kind> {
        match v {
            1 => Some(Kind::Http),
            2 => Some(Kind::Mqtt),
            3 => Some(Kind::Config),
            _ => None,
        }
    }

    /// True for kinds that report [`crate::notify::Kind::ChannelWritable`] (streams of
    /// messages); HTTP and config channels carry one request and never do.
    pub fn reports_write_space(self) -> bool {
        self == Kind::Mqtt
    }
}

/// Why a channel is closed ([`ChanInfo::reason`], [`crate::notify::Kind::ChannelClosed`]).
/// Values are stable; new ones are only appended.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Not closed.
    None = 0,
    /// The server ended the channel (its service is done or failed; the last message says
    /// why).
    ByServer = 1,
    /// The server refused to open it (unknown endpoint or kind, the device's channel limit).
    Refused = 2,
    /// The link to the server dropped (or the server restarted): in-flight requests are lost;
    /// open a new channel once the network is back.
    LinkLost = 3,
    /// The visor could not write the app's receive buffer or read its transmit buffer (the
    /// app's memory protection forbids it now).
    BufferFault = 4,
    /// The server broke the channel protocol (more data than its credit, a message larger than
    /// the buffer).
    ProtocolError = 5,
    /// The app closed it.
    ByApp = 6,
    /// The server's rate limit for this device.
    RateLimited = 7,
}

impl Reason {
    /// Decodes a raw reason.
    pub fn from_u8(v: u8) -> Option<Reason> {
        Some(match v {
            0 => Reason::None,
            1 => Reason::ByServer,
            2 => Reason::Refused,
            3 => Reason::LinkLost,
            4 => Reason::BufferFault,
            5 => Reason::ProtocolError,
            6 => Reason::ByApp,
            7 => Reason::RateLimited,
            _ => return None,
        })
    }

    /// Lower-case name, for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::None => "none",
            Reason::ByServer => "closed by the server",
            Reason::Refused => "refused by the server",
            Reason::LinkLost => "link lost",
            Reason::BufferFault => "buffer fault",
            Reason::ProtocolError => "protocol error",
            Reason::ByApp => "closed by the app",
            Reason::RateLimited => "rate limited",
        }
    }
}

/// A channel's state ([`ChanInfo::state`]).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Open locally; the server has not accepted it yet (messages wait in the transmit buffer).
    Opening = 0,
    /// Open at both ends.
    Open = 1,
    /// Closed by the server or the link; [`ChanInfo::reason`] says why. Messages already
    /// received can still be read; close the handle to free the slot.
    Closed = 2,
}

/// The link's state ([`NetStatus::state`]).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetState {
    /// Not connected; [`NetStatus::offline`] says why.
    Offline = 0,
    /// Connecting (address, TCP, handshake).
    Connecting = 1,
    /// Connected to the server: channels can open.
    Connected = 2,
}

/// Why the link is down ([`NetStatus::offline`]).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OfflineReason {
    /// It is not down.
    None = 0,
    /// No network address yet (no cable, no DHCP answer).
    NoAddress = 1,
    /// Waiting before the next attempt after a failed one (server unreachable, refused, lost).
    Backoff = 2,
    /// The device is not provisioned (no identity): it never connects.
    NotProvisioned = 3,
}

/// Who wants the link ([`NetStatus::wanted_by`] bits).
pub mod wanted {
    /// The app holds at least one network request.
    pub const APP: u32 = 1 << 0;
    /// The visor's own needs: update checks and downloads, logs, remote debugging. The visor
    /// keeps the link up for them at all times in this version.
    pub const VISOR: u32 = 1 << 1;
}

/// Output of [`crate::Call::NetStatus`] (and, packed, the value of a
/// [`crate::notify::Kind::NetStatus`] record). Set `version` to 1 before the call.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetStatus {
    /// Struct version, set by the caller (1).
    pub version: u32,
    /// A [`NetState`].
    pub state: u32,
    /// An [`OfflineReason`].
    pub offline: u32,
    /// [`wanted`] bits.
    pub wanted_by: u32,
    /// Network requests the app holds.
    pub app_requests: u32,
}

impl NetStatus {
    /// The struct as the app sees it in memory.
    pub fn to_bytes(&self) -> [u8; 20] {
        let mut b = [0u8; 20];
        for (i, v) in [self.version, self.state, self.offline, self.wanted_by, self.app_requests].iter().enumerate() {
            b[4 * i..4 * i + 4].copy_from_slice(&v.to_le_bytes());
        }
        b
    }

    /// The value of a [`crate::notify::Kind::NetStatus`] record: state in bits 0..8, offline
    /// reason in 8..16, wanted-by bits in 32..64.
    pub fn to_value(&self) -> u64 {
        (self.state as u64 & 0xFF) | (self.offline as u64 & 0xFF) << 8 | (self.wanted_by as u64) << 32
    }
}

/// Input of [`crate::Call::ChanOpen`] ([`OPEN_PARAMS_LEN`] bytes in memory).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpenParams {
    /// Struct version, set by the caller (1).
    pub version: u32,
    /// A [`Kind`].
    pub kind: u32,
    /// Carried in every notification record of this channel.
    pub tag: u32,
    /// Receive buffer address.
    pub rx_buf: u32,
    /// Receive buffer length.
    pub rx_len: u32,
    /// Transmit buffer address.
    pub tx_buf: u32,
    /// Transmit buffer length.
    pub tx_len: u32,
    /// Endpoint name (MQTT: the broker profile; empty for HTTP and config): address.
    pub endpoint: u32,
    /// Endpoint name length, at most [`MAX_ENDPOINT`].
    pub endpoint_len: u32,
}

impl OpenParams {
    /// Decodes the struct from the app's memory.
    pub fn from_bytes(b: &[u8; OPEN_PARAMS_LEN as usize]) -> OpenParams {
        let w = |i: usize| u32::from_le_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]]);
        OpenParams {
            version: w(0),
            kind: w(1),
            tag: w(2),
            rx_buf: w(3),
            rx_len: w(4),
            tx_buf: w(5),
            tx_len: w(6),
            endpoint: w(7),
            endpoint_len: w(8),
        }
    }

    /// Checks everything that does not need the app's memory, in the documented order:
    /// version, kind, endpoint length, alignment, sizes, overlap of the two buffers.
    pub fn check(&self) -> Result<Kind, Status> {
        if self.version != 1 {
            return Err(Status::UnsupportedStructVersion);
        }
        let kind = Kind::from_u32(self.kind).ok_or(Status::UnknownChannelKind)?;
        if self.endpoint_len > MAX_ENDPOINT {
            return Err(Status::InvalidArgument);
        }
        if self.rx_buf % BUFFER_ALIGN != 0 || self.tx_buf % BUFFER_ALIGN != 0 {
            return Err(Status::InvalidBufferAlignment);
        }
        let size_ok = |len: u32, min: u32| len % 4 == 0 && (min..=MAX_BUFFER).contains(&len);
        if !size_ok(self.rx_len, MIN_RX) || !size_ok(self.tx_len, MIN_TX) {
            return Err(Status::InvalidBufferSize);
        }
        // A buffer must end below 4 GiB, so every offset into it is an address.
        if self.rx_buf.checked_add(self.rx_len).is_none() || self.tx_buf.checked_add(self.tx_len).is_none() {
            return Err(Status::ParameterFault);
        }
        if overlaps((self.rx_buf, self.rx_len), (self.tx_buf, self.tx_len)) {
            return Err(Status::BufferInUse);
        }
        Ok(kind)
    }
}

/// True if the ranges `[a.0, a.0 + a.1)` and `[b.0, b.0 + b.1)` share a byte (no wrap-around:
/// computed in 64 bits).
pub fn overlaps(a: (u32, u32), b: (u32, u32)) -> bool {
    let (a0, a1) = (a.0 as u64, a.0 as u64 + a.1 as u64);
    let (b0, b1) = (b.0 as u64, b.0 as u64 + b.1 as u64);
    a0 < b1 && b0 < a1
}

/// Output of [`crate::Call::ChanRecv`]. Set `version` to 1 before the call.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MsgInfo {
    /// Struct version, set by the caller (1).
    pub version: u32,
    /// Offset of the message's first byte in the receive buffer.
    pub offset: u32,
    /// Message length in bytes.
    pub len: u32,
    /// Complete messages waiting, this one included.
    pub pending: u32,
}

impl MsgInfo {
    /// The struct as the app sees it in memory.
    pub fn to_bytes(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        for (i, v) in [self.version, self.offset, self.len, self.pending].iter().enumerate() {
            b[4 * i..4 * i + 4].copy_from_slice(&v.to_le_bytes());
        }
        b
    }
}

/// Output of [`crate::Call::ChanInfo`]. Set `version` to 1 before the call.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChanInfo {
    /// Struct version, set by the caller (1).
    pub version: u32,
    /// The channel's [`Kind`].
    pub kind: u32,
    /// Its [`State`].
    pub state: u32,
    /// Why it is closed ([`Reason`]; 0 while open).
    pub reason: u32,
    /// Complete messages waiting in the receive buffer.
    pub rx_pending: u32,
    /// Largest message [`crate::Call::ChanSend`] would accept now.
    pub tx_free: u32,
}

impl ChanInfo {
    /// The struct as the app sees it in memory.
    pub fn to_bytes(&self) -> [u8; 24] {
        let mut b = [0u8; 24];
        for (i, v) in
            [self.version, self.kind, self.state, self.reason, self.rx_pending, self.tx_free].iter().enumerate()
        {
            b[4 * i..4 * i + 4].copy_from_slice(&v.to_le_bytes());
        }
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> OpenParams {
        OpenParams {
            version: 1,
            kind: Kind::Http as u32,
            tag: 7,
            rx_buf: 0x2800_1000,
            rx_len: 2048,
            tx_buf: 0x2800_2000,
            tx_len: 512,
            endpoint: 0,
            endpoint_len: 0,
        }
    }

    #[test]
    fn open_params_checks_in_order() {
        assert_eq!(params().check(), Ok(Kind::Http));
        assert_eq!(OpenParams { version: 2, kind: 9, ..params() }.check(), Err(Status::UnsupportedStructVersion));
        assert_eq!(OpenParams { kind: 0, ..params() }.check(), Err(Status::UnknownChannelKind));
        assert_eq!(OpenParams { endpoint_len: 65, ..params() }.check(), Err(Status::InvalidArgument));
        assert_eq!(OpenParams { rx_buf: 0x2800_1002, ..params() }.check(), Err(Status::InvalidBufferAlignment));
        assert_eq!(OpenParams { rx_len: 60, ..params() }.check(), Err(Status::InvalidBufferSize));
        assert_eq!(OpenParams { tx_len: 66, ..params() }.check(), Err(Status::InvalidBufferSize));
        assert_eq!(OpenParams { rx_len: MAX_BUFFER + 4, ..params() }.check(), Err(Status::InvalidBufferSize));
        // Ending at 4 GiB or past it.
        let top = OpenParams { rx_buf: 0xFFFF_FF00, rx_len: 256, ..params() };
        assert_eq!(top.check(), Err(Status::ParameterFault));
        let past = OpenParams { tx_buf: 0xFFFF_FFC0, tx_len: 128, ..params() };
        assert_eq!(past.check(), Err(Status::ParameterFault));
        assert_eq!(OpenParams { tx_buf: 0x2800_17FC, ..params() }.check(), Err(Status::BufferInUse));
        // Buffers at the top of the address space do not wrap into a false "no overlap".
        assert!(overlaps((0xFFFF_FF00, 0x100), (0xFFFF_FFFC, 4)));
        assert!(!overlaps((0xFFFF_FF00, 0x100), (0, 0x100)));
    }

    #[test]
    fn structs_roundtrip_their_layout() {
        let p = params();
        let mut b = [0u8; OPEN_PARAMS_LEN as usize];
        for (i, v) in [p.version, p.kind, p.tag, p.rx_buf, p.rx_len, p.tx_buf, p.tx_len, p.endpoint, p.endpoint_len]
            .iter()
            .enumerate()
        {
            b[4 * i..4 * i + 4].copy_from_slice(&v.to_le_bytes());
        }
        assert_eq!(OpenParams::from_bytes(&b), p);
        let s = NetStatus { version: 1, state: 2, offline: 0, wanted_by: 3, app_requests: 1 };
        assert_eq!(s.to_value(), 2 | 3 << 32);
        assert_eq!(&s.to_bytes()[4..8], &2u32.to_le_bytes());
        assert_eq!(record_cost(0), 4);
        assert_eq!(record_cost(1), 8);
        assert_eq!(record_cost(4), 8);
        assert_eq!(record_cost(5), 12);
        for r in 0..=7u8 {
            assert_eq!(Reason::from_u8(r).map(|r| r as u8), Some(r));
        }
        assert_eq!(Reason::from_u8(8), None);
    }
}
