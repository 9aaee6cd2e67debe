//! The secure channel as sans-IO sessions: `Noise_IK_25519_ChaChaPoly_SHA256`.
//!
//! * The device ([`DeviceSession`], clatter, no heap) is the initiator. It knows the server's
//!   static public key (pinned in its factory data) and sends [`Up::Hello`] inside the first
//!   handshake message, already encrypted and authenticated with its own static key.
//! * The server ([`server::Accepting`], snow, behind the `server` feature) learns the device's
//!   static key from that message, looks it up in its registry and either drops the connection
//!   or answers [`Down::Welcome`] inside the second handshake message. Both sides are then in
//!   transport mode.
//! * Every message after that is one Noise transport message in one frame (see [`crate::frame`]).
//! * Both sides rekey each direction after [`REKEY_INTERVAL`] messages, counting independently,
//!   so no rekey message is needed.
//!
//! Any error — a frame that fails to authenticate, a message that does not decode, a message
//! out of place — is fatal to the session: the caller drops that connection, nothing else.

use clatter::bytearray::ByteArray;
use clatter::crypto::cipher::ChaChaPoly;
use clatter::crypto::dh::X25519;
use clatter::crypto::hash::Sha256;
use clatter::handshakepattern::noise_ik;
use clatter::traits::{Dh, Handshaker, Rng};
use clatter::transportstate::TransportState;
use clatter::{KeyPair, NqHandshakeCore};

use crate::frame;
use crate::msg::{self, Down, Hello, Up};

/// Noise protocol name.
pub const NOISE_PARAMS: &str = "Noise_IK_25519_ChaChaPoly_SHA256";
/// Prologue bound into the handshake: the protocol family and version.
pub const PROLOGUE: &[u8] = b"keel/1";
/// Largest plaintext message either side sends.
pub const MAX_PLAINTEXT: usize = keel_proto::msg::MAX_PLAINTEXT;
/// Noise overhead of a transport message (authentication tag).
pub const TAG_LEN: usize = 16;
/// Largest frame a session produces: handshake message 1 (96 bytes of keys and tags) plus the
/// largest plaintext, plus the length prefix.
pub const MAX_FRAME: usize = frame::HEADER_LEN + 96 + MAX_PLAINTEXT + TAG_LEN;
/// Messages per direction after which that direction is rekeyed.
pub const REKEY_INTERVAL: u64 = 10_000;

/// Why a session failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionError {
    /// Handshake failed (wrong keys, tampered or malformed handshake message).
    Handshake,
    /// A transport message failed to authenticate or decrypt.
    Decrypt,
    /// A message did not decode.
    Malformed,
    /// A message arrived that is not allowed in the current state.
    Unexpected,
    /// A buffer was too small or a message too large.
    TooLarge,
    /// The session already failed or is not established yet.
    NotReady,
    /// The message needs a feature the peer did not announce (see `msg::features`).
    NotNegotiated,
}

type Handshake<R> = NqHandshakeCore<X25519, ChaChaPoly, Sha256, R>;

enum DeviceState<R: Rng> {
    Idle(Handshake<R>),
    AwaitWelcome(Handshake<R>),
    Established(TransportState<ChaChaPoly, Sha256>),
    Failed,
}

/// Size of the device's receive buffer: the largest plaintext plus handshake message 2's
/// overhead (the Noise library writes the whole message before it is split).
const RX_BUF: usize = MAX_PLAINTEXT + 96;

/// The device end of a connection. Create one per TCP connection.
///
/// Received messages are decrypted into a buffer the session owns (about 1 KiB), so a decoded
/// [`Down`] can borrow its byte fields from it without a heap and without a large stack buffer.
pub struct DeviceSession<R: Rng> {
    state: DeviceState<R>,
    sent: u64,
    received: u64,
    rx: [u8; RX_BUF],
    rx_len: usize,
}

impl<R: Rng> DeviceSession<R> {
    /// A session for the device with static secret `device_secret`, trusting only the server
    /// whose static public key is `server_public`. `R` supplies the ephemeral key's randomness.
    pub fn new(device_secret: &[u8; 32], server_public: &[u8; 32]) -> Result<Self, SessionError> {
        let secret = <X25519 as Dh>::PrivateKey::from_slice(device_secret);
        let s = KeyPair { public: X25519::pubkey(&secret), secret };
        let hs = Handshake::<R>::new(noise_ik(), PROLOGUE, true, Some(s), None, Some(*server_public), None)
            .map_err(|_| SessionError::Handshake)?;
        Ok(DeviceSession { state: DeviceState::Idle(hs), sent: 0, received: 0, rx: [0; RX_BUF], rx_len: 0 })
    }

    /// True once the server's welcome was authenticated.
    pub fn is_established(&self) -> bool {
        matches!(self.state, DeviceState::Established(_))
    }

    /// Writes the first frame (handshake message 1 carrying `hello`) into `out`. `hello` is
    /// sent as it is: an [`Up::Hello`] without negotiation fields announces exactly its
    /// `protocol` and no feature; [`DeviceSession::start_hello`] sends the full [`Hello`].
    pub fn start(&mut self, hello: &Up<'_>, out: &mut [u8]) -> Result<usize, SessionError> {
        if !matches!(hello, Up::Hello { .. }) {
            return Err(SessionError::Unexpected);
        }
        let mut plain = [0u8; MAX_PLAINTEXT];
        let n = msg::encode(hello, &mut plain).map_err(|_| SessionError::TooLarge)?;
        self.start_plain(&plain[..n], out)
    }

    /// Writes the first frame (handshake message 1 carrying `hello`, with its protocol range
    /// and features) into `out`.
    pub fn start_hello(&mut self, hello: &Hello<'_>, out: &mut [u8]) -> Result<usize, SessionError> {
        let mut plain = [0u8; MAX_PLAINTEXT];
        let n = msg::encode_hello(hello, &mut plain).map_err(|_| SessionError::TooLarge)?;
        self.start_plain(&plain[..n], out)
    }

    fn start_plain(&mut self, plain: &[u8], out: &mut [u8]) -> Result<usize, SessionError> {
        let DeviceState::Idle(mut hs) = core::mem::replace(&mut self.state, DeviceState::Failed) else {
            return Err(SessionError::NotReady);
        };
        let n = plain.len();
        if out.len() < frame::HEADER_LEN {
            return Err(SessionError::TooLarge);
        }
        let len = hs.write_message(&plain[..n], &mut out[frame::HEADER_LEN..]).map_err(|_| SessionError::TooLarge)?;
        out[..frame::HEADER_LEN].copy_from_slice(&(len as u16).to_be_bytes());
        self.state = DeviceState::AwaitWelcome(hs);
        Ok(frame::HEADER_LEN + len)
    }

    /// Processes the payload of one received frame and returns the server's message, which
    /// borrows from the session's receive buffer. The first one completes the handshake and is
    /// always [`Down::Welcome`].
    pub fn receive(&mut self, payload: &[u8]) -> Result<Down<'_>, SessionError> {
        self.rx_len = 0;
        match core::mem::replace(&mut self.state, DeviceState::Failed) {
            DeviceState::AwaitWelcome(mut hs) => {
                let n = hs.read_message(payload, &mut self.rx).map_err(|_| SessionError::Handshake)?;
                match msg::decode_down(&self.rx[..n]) {
                    Err(_) => return Err(SessionError::Malformed),
                    Ok(Down::Welcome { .. }) if hs.is_finished() => {}
                    Ok(_) => return Err(SessionError::Unexpected),
                }
                self.state = DeviceState::Established(hs.finalize().map_err(|_| SessionError::Handshake)?);
                self.rx_len = n;
            }
            DeviceState::Established(mut t) => {
                let n = t.receive(payload, &mut self.rx).map_err(|_| SessionError::Decrypt)?;
                self.received += 1;
                if self.received % REKEY_INTERVAL == 0 {
                    t.rekey_receiver().map_err(|_| SessionError::Decrypt)?;
                }
                match msg::decode_down(&self.rx[..n]) {
                    Err(_) => return Err(SessionError::Malformed),
                    Ok(Down::Welcome { .. }) => return Err(SessionError::Unexpected),
                    Ok(_) => {}
                }
                self.state = DeviceState::Established(t);
                self.rx_len = n;
            }
            DeviceState::Idle(_) | DeviceState::Failed => return Err(SessionError::NotReady),
        }
        self.last()
    }

    /// The message [`DeviceSession::receive`] returned last, decoded again from the receive
    /// buffer (cheap: decoding borrows and does not copy).
    pub fn last(&self) -> Result<Down<'_>, SessionError> {
        if self.rx_len == 0 {
            return Err(SessionError::NotReady);
        }
        msg::decode_down(&self.rx[..self.rx_len]).map_err(|_| SessionError::Malformed)
    }

    /// Encrypts `m` into one frame in `out` (`Up::Unknown` is never sent; a message over a limit
    /// of its variant, such as a debug frame over `MAX_DEBUG_FRAME`, is [`SessionError::TooLarge`]).
    pub fn send(&mut self, m: &Up<'_>, out: &mut [u8]) -> Result<usize, SessionError> {
        if matches!(m, Up::Unknown(_)) {
            return Err(SessionError::Unexpected);
        }
        if !m.within_limits() {
            return Err(SessionError::TooLarge);
        }
        let mut plain = [0u8; MAX_PLAINTEXT];
        let n = msg::encode(m, &mut plain).map_err(|_| SessionError::TooLarge)?;
        self.send_raw(&plain[..n], out)
    }

    /// Encrypts already encoded message bytes into one frame in `out` (tests use it to send
    /// variants no [`Up`] can express).
    pub fn send_raw(&mut self, plain: &[u8], out: &mut [u8]) -> Result<usize, SessionError> {
        let DeviceState::Established(t) = &mut self.state else {
            return Err(SessionError::NotReady);
        };
        let n = plain.len();
        if n > MAX_PLAINTEXT {
            return Err(SessionError::TooLarge);
        }
        if out.len() < frame::HEADER_LEN + n + TAG_LEN {
            return Err(SessionError::TooLarge);
        }
        let len = t.send(plain, &mut out[frame::HEADER_LEN..]).map_err(|_| SessionError::TooLarge)?;
        out[..frame::HEADER_LEN].copy_from_slice(&(len as u16).to_be_bytes());
        self.sent += 1;
        if self.sent % REKEY_INTERVAL == 0 {
            t.rekey_sender().map_err(|_| SessionError::TooLarge)?;
        }
        Ok(frame::HEADER_LEN + len)
    }
}

/// The server end (needs `std`).
#[cfg(feature = "server")]
pub mod server {
    extern crate std;
    use std::vec;
    use std::vec::Vec;

    use super::*;

    fn framed(body: &[u8]) -> Vec<u8> {
        let mut v = Vec::with_capacity(frame::HEADER_LEN + body.len());
        v.extend_from_slice(&(body.len() as u16).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    /// A connection whose first handshake message was read: the caller checks the device key.
    pub struct Accepting {
        hs: snow::HandshakeState,
        /// The device's static public key (authenticated by the handshake).
        pub device_key: [u8; 32],
        /// The decrypted `Hello` bytes (decode with [`msg::decode_hello`]).
        pub hello: Vec<u8>,
    }

    impl Accepting {
        /// The device's hello, with its protocol range and features.
        pub fn hello(&self) -> Result<Hello<'_>, SessionError> {
            msg::decode_hello(&self.hello).map_err(|_| SessionError::Malformed)
        }

        /// Reads handshake message 1 (a frame payload) with the server's static private key.
        pub fn read(server_private: &[u8], payload: &[u8]) -> Result<Accepting, SessionError> {
            let params = NOISE_PARAMS.parse().map_err(|_| SessionError::Handshake)?;
            let mut hs = snow::Builder::new(params)
                .prologue(PROLOGUE)
                .and_then(|b| b.local_private_key(server_private))
                .and_then(|b| b.build_responder())
                .map_err(|_| SessionError::Handshake)?;
            let mut buf = vec![0u8; MAX_FRAME];
            let n = hs.read_message(payload, &mut buf).map_err(|_| SessionError::Handshake)?;
            buf.truncate(n);
            let device_key: [u8; 32] =
                hs.get_remote_static().and_then(|k| k.try_into().ok()).ok_or(SessionError::Handshake)?;
            match (msg::decode_up(&buf), msg::decode_hello(&buf)) {
                (Ok(Up::Hello { .. }), Ok(_)) => Ok(Accepting { hs, device_key, hello: buf }),
                (Ok(_), _) => Err(SessionError::Unexpected),
                _ => Err(SessionError::Malformed),
            }
        }

        /// Completes the handshake with `welcome`; returns the session and the frame to send.
        pub fn welcome(mut self, welcome: &Down<'_>) -> Result<(ServerSession, Vec<u8>), SessionError> {
            let mut plain = [0u8; MAX_PLAINTEXT];
            let n = msg::encode(welcome, &mut plain).map_err(|_| SessionError::TooLarge)?;
            let mut out = vec![0u8; MAX_FRAME];
            let len = self.hs.write_message(&plain[..n], &mut out).map_err(|_| SessionError::Handshake)?;
            let t = self.hs.into_transport_mode().map_err(|_| SessionError::Handshake)?;
            Ok((ServerSession { t, sent: 0, received: 0 }, framed(&out[..len])))
        }
    }

    /// An established server session.
    pub struct ServerSession {
        t: snow::TransportState,
        sent: u64,
        received: u64,
    }

    impl ServerSession {
        /// Encrypts `m` into one frame (`Down::Unknown` is never sent; a message over a limit of
        /// its variant, such as a debug frame over `MAX_DEBUG_FRAME`, is
        /// [`SessionError::TooLarge`]).
        pub fn send(&mut self, m: &Down<'_>) -> Result<Vec<u8>, SessionError> {
            if matches!(m, Down::Unknown(_)) {
                return Err(SessionError::Unexpected);
            }
            if !m.within_limits() {
                return Err(SessionError::TooLarge);
            }
            let mut plain = [0u8; MAX_PLAINTEXT];
            let n = msg::encode(m, &mut plain).map_err(|_| SessionError::TooLarge)?;
            self.send_raw(&plain[..n])
        }

        /// Encrypts already encoded message bytes into one frame (tests use it to send variants
        /// no [`Down`] can express).
        pub fn send_raw(&mut self, plain: &[u8]) -> Result<Vec<u8>, SessionError> {
            if plain.len() > MAX_PLAINTEXT {
                return Err(SessionError::TooLarge);
            }
            let mut out = vec![0u8; plain.len() + TAG_LEN];
            let len = self.t.write_message(plain, &mut out).map_err(|_| SessionError::TooLarge)?;
            self.sent += 1;
            if self.sent % REKEY_INTERVAL == 0 {
                self.t.rekey_outgoing();
            }
            Ok(framed(&out[..len]))
        }

        /// Decrypts one frame payload; decode the result with [`msg::decode_up`].
        pub fn receive(&mut self, payload: &[u8]) -> Result<Vec<u8>, SessionError> {
            let mut out = vec![0u8; payload.len()];
            let n = self.t.read_message(payload, &mut out).map_err(|_| SessionError::Decrypt)?;
            out.truncate(n);
            self.received += 1;
            if self.received % REKEY_INTERVAL == 0 {
                self.t.rekey_incoming();
            }
            Ok(out)
        }
    }
}
