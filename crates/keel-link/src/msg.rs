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
}

/// Server → device.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub enum Down {
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
pub fn decode_down(b: &[u8]) -> Result<Down, MsgError> {
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
        ];
        for m in downs {
            let n = encode(&m, &mut buf).unwrap();
            assert_eq!(decode_down(&buf[..n]).unwrap(), m);
        }
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
