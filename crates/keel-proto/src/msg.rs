//! The messages carried inside the secure channel, CBOR encoded (one message per Noise
//! transport message).
//!
//! Both directions are a CBOR array `[variant, fields...]` produced by `minicbor`'s derive with
//! explicit indices, so fields can be added at the end without breaking older peers. Variant
//! numbers are stable; ranges are reserved for what comes next: 16..=31 updates, 32..=47 remote
//! debugging, 48..=63 configuration and app channels.

use minicbor::{Decode, Encode};

/// Protocol version spoken by this crate.
pub const PROTOCOL_VERSION: u16 = 1;

/// Device → server.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub enum Up<'a> {
    /// First message, inside the Noise handshake's first message.
    #[n(0)]
    Hello {
        /// [`PROTOCOL_VERSION`] of the device.
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
    /// One log record or visor event.
    #[n(1)]
    Log {
        /// Sequence number (`boot << 32 | n`).
        #[n(0)]
        seq: u64,
        /// 0 = app line, 1 = visor event.
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
        /// Short reason for `refused`, `rolled_back` and `error` (e.g. `"layer digest mismatch"`);
        /// empty otherwise.
        #[b(5)]
        reason: &'a str,
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
        /// First byte.
        #[n(2)]
        offset: u32,
        /// Bytes wanted, 1..=[`MAX_FETCH`] (one flash page); `offset + len` must not pass the end
        /// of the layer.
        #[n(3)]
        len: u32,
    },
}

/// Server → device. Byte fields borrow from the decrypted message.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub enum Down<'a> {
    /// Answer to [`Up::Hello`], inside the Noise handshake's second message.
    #[n(0)]
    Welcome {
        /// [`PROTOCOL_VERSION`] of the server.
        #[n(0)]
        protocol: u16,
        /// Wall clock, microseconds since the Unix epoch.
        #[n(1)]
        unix_us: u64,
        /// Highest log sequence number the server already stored for this device, if any.
        #[n(2)]
        log_acked: Option<u64>,
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
        /// Offset of `data[0]` in the layer.
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
}

/// Largest plaintext of one message either side sends (the Noise layer adds its tag).
pub const MAX_PLAINTEXT: usize = 1024;

/// Largest `len` of one [`Up::FetchLayer`]: one 8 KiB flash page.
pub const MAX_FETCH: u32 = 8192;

/// Largest `data` of one [`Down::LayerData`]: the encoded message (at most 22 bytes of CBOR
/// around the data) stays within [`MAX_PLAINTEXT`]. A full page is 9 messages.
pub const LAYER_CHUNK: usize = 960;

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

/// Encodes `m` into `out`; returns the length.
pub fn encode<T: Encode<()>>(m: &T, out: &mut [u8]) -> Result<usize, MsgError> {
    let total = out.len();
    let mut w: &mut [u8] = out;
    minicbor::encode(m, &mut w).map_err(|_| MsgError::BufferTooSmall)?;
    Ok(total - w.len())
}

/// Decodes a device message.
pub fn decode_up(b: &[u8]) -> Result<Up<'_>, MsgError> {
    minicbor::decode(b).map_err(|_| MsgError::Malformed)
}

/// Decodes a server message.
pub fn decode_down(b: &[u8]) -> Result<Down<'_>, MsgError> {
    minicbor::decode(b).map_err(|_| MsgError::Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;

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
            Up::Log { seq: 5, kind: 0, level: 2, time_us: 1_000_000, text: b"hello: device=kd..." },
            Up::Dropped { count: 3, before_seq: 9 },
            Up::Pong { nonce: 77 },
            Up::Ready,
            Up::UpdateStatus { installed: 0, sequence: 0, state: 0, progress: 0, total: 0, reason: "" },
            Up::UpdateStatus {
                installed: u64::MAX,
                sequence: 3,
                state: UpdateState::Refused.as_u8(),
                progress: u32::MAX,
                total: 40_960,
                reason: "sequence 3 not above installed 5",
            },
            Up::FetchLayer { sequence: 7, component: 0, offset: 8192, len: MAX_FETCH },
        ];
        for m in ups {
            let n = encode(&m, &mut buf).unwrap();
            assert_eq!(decode_up(&buf[..n]).unwrap(), m);
        }
        let downs = [
            Down::Welcome { protocol: 1, unix_us: 1_795_000_000_000_000, log_acked: Some(4) },
            Down::TimeSync { unix_us: 1 },
            Down::LogAck { upto: u64::MAX },
            Down::Ping { nonce: 1 },
            Down::UpdateOffer { envelope: &[0xd8, 0x6b, 0xa2] },
            Down::LayerData { sequence: 7, component: 1, offset: 960, data: b"layer bytes" },
            Down::LayerData { sequence: 7, component: 0, offset: 0, data: &[] },
            Down::LayerError { sequence: 9, component: 3, offset: 1, code: LayerErrorCode::OutOfRange as u8 },
            Down::UpdateCancel { sequence: u64::MAX },
        ];
        for m in downs {
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
        ];
        for m in downs {
            let n = encode(&m, &mut buf).unwrap();
            for cut in 0..n {
                assert_eq!(decode_down(&buf[..cut]), Err(MsgError::Malformed), "{m:?} cut at {cut}");
            }
        }
        let up = Up::UpdateStatus { installed: 1, sequence: 2, state: 1, progress: 3, total: 4, reason: "why" };
        let n = encode(&up, &mut buf).unwrap();
        for cut in 0..n {
            assert_eq!(decode_up(&buf[..cut]), Err(MsgError::Malformed));
        }
        // A text field that is not UTF-8 is refused.
        let n = encode(&up, &mut buf).unwrap();
        let at = buf[..n].windows(3).position(|w| w == b"why").unwrap();
        buf[at] = 0xFF;
        assert_eq!(decode_up(&buf[..n]), Err(MsgError::Malformed));
        // Variants in the reserved ranges that are not defined are unknown.
        assert_eq!(decode_down(&[0x82, 0x14, 0x80]), Err(MsgError::Malformed), "variant 20");
        assert_eq!(decode_up(&[0x82, 0x12, 0x80]), Err(MsgError::Malformed), "variant 18");
    }

    #[test]
    fn garbage_and_truncation_are_errors() {
        let mut buf = [0u8; 64];
        let n = encode(&Down::Ping { nonce: 1 }, &mut buf).unwrap();
        for cut in 0..n {
            assert_eq!(decode_down(&buf[..cut]), Err(MsgError::Malformed));
        }
        assert_eq!(decode_up(&[0xFF, 0x00, 0x13]), Err(MsgError::Malformed));
        assert_eq!(decode_down(&[0x82, 0x18, 0x63, 0x00]), Err(MsgError::Malformed), "unknown variant");
        let mut tiny = [0u8; 2];
        assert_eq!(encode(&Down::Ping { nonce: 1 }, &mut tiny), Err(MsgError::BufferTooSmall));
    }
}
