//! The end-to-end debug session: `Noise_IK_25519_ChaChaPoly_SHA256`, between `keel debug` (the
//! initiator, with the developer's debug key) and the visor (the responder, with the device's
//! key). The server relays the frames and can neither read nor change them.
//!
//! * The initiator knows the device's public key; its own static key travels encrypted in the
//!   first message, and the visor accepts the session only if that key is the debug key in the
//!   running app's signed manifest ([`Responder::accept`] returns it; the agent compares).
//! * Frames, each one opaque message of the relay:
//!   ```text
//!   frame = 0x00 noise-handshake-1   ; CLI -> device, payload: a request with only `hello`
//!         | 0x01 noise-handshake-2   ; device -> CLI, payload: the hello's reply
//!         | 0x02 nonce:u64be aead    ; either way, after the handshake
//!   ```
//! * Transport frames carry their nonce in the clear: a frame the relay lost does not break the
//!   session (the requests above retransmit), but each side accepts only nonces above the last
//!   one it accepted, so a replayed, reordered or altered frame fails and ends the session.
//!
//! Noise IK's first message can be replayed by whoever recorded it: the visor then answers with
//! a handshake only the real initiator can complete, but it runs the payload, so the payload
//! may only be a `hello`, which changes nothing ([`Responder::accept`] checks).

use clatter::bytearray::ByteArray;
use clatter::crypto::cipher::ChaChaPoly;
use clatter::crypto::dh::X25519;
use clatter::crypto::hash::Sha256;
use clatter::handshakepattern::noise_ik;
use clatter::traits::{Dh, Handshaker, Rng};
use clatter::transportstate::TransportState;
use clatter::{KeyPair, NqHandshakeCore};

use crate::wire::{Op, Request, MAX_MESSAGE};

/// Prologue bound into the handshake.
pub const PROLOGUE: &[u8] = b"keel-debug/1";
/// Largest frame either side produces: the transport header plus the largest message plus the
/// tag (the handshake's first message is smaller: its payload is a `hello`).
pub const MAX_FRAME: usize = 1 + 8 + MAX_MESSAGE + TAG_LEN;
/// AEAD tag length.
pub const TAG_LEN: usize = 16;
const HS1: u8 = 0x00;
const HS2: u8 = 0x01;
const DATA: u8 = 0x02;
const REFUSED: u8 = 0x03;

/// Why the device refused to open a session, sent in the clear (before any key is agreed): the
/// relay could forge it, but it can drop every frame anyway, so it learns nothing new and the
/// developer gets a clear error instead of a timeout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Refusal {
    /// The running app's manifest names another debug key.
    WrongKey = 1,
    /// The running app was bundled without a debug key: it cannot be debugged.
    NotDebuggable = 2,
    /// No app is running (none installed, or quarantined).
    NoApp = 3,
    /// The handshake failed (not made for this device's key).
    BadHandshake = 4,
}

impl Refusal {
    /// What to tell the developer.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::WrongKey => "the running app accepts another debug key",
            Refusal::NotDebuggable => "the running app was bundled without a debug key (keel bundle --debug-key)",
            Refusal::NoApp => "no app is running on the device",
            Refusal::BadHandshake => "the handshake failed (is the device key right?)",
        }
    }

    /// The frame that carries it.
    pub fn frame(self) -> [u8; 2] {
        [REFUSED, self as u8]
    }

    /// The refusal in `frame`, if it is one.
    pub fn parse(frame: &[u8]) -> Option<Refusal> {
        match frame {
            [REFUSED, 1] => Some(Refusal::WrongKey),
            [REFUSED, 2] => Some(Refusal::NotDebuggable),
            [REFUSED, 3] => Some(Refusal::NoApp),
            [REFUSED, 4] => Some(Refusal::BadHandshake),
            _ => None,
        }
    }
}

/// Why a session failed. Every error ends the session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionError {
    /// The handshake failed (wrong keys, altered message).
    Handshake,
    /// A frame failed to authenticate, or its nonce was not above the last one (a replay).
    Decrypt,
    /// A frame of the wrong kind or shape.
    Malformed,
    /// A buffer was too small or a message too large.
    TooLarge,
    /// Not established yet, or already failed.
    NotReady,
}

type Handshake<R> = NqHandshakeCore<X25519, ChaChaPoly, Sha256, R>;

/// The established part shared by both ends.
pub struct Transport {
    t: TransportState<ChaChaPoly, Sha256>,
    /// Highest nonce accepted so far, `None` before the first.
    last_rx: Option<u64>,
}

impl Transport {
    /// Encrypts `plain` into one frame in `out`.
    pub fn seal(&mut self, plain: &[u8], out: &mut [u8]) -> Result<usize, SessionError> {
        if plain.len() > MAX_MESSAGE || out.len() < 9 + plain.len() + TAG_LEN {
            return Err(SessionError::TooLarge);
        }
        let nonce = self.t.sending_nonce();
        out[0] = DATA;
        out[1..9].copy_from_slice(&nonce.to_be_bytes());
        let n = self.t.send(plain, &mut out[9..]).map_err(|_| SessionError::TooLarge)?;
        Ok(9 + n)
    }

    /// Decrypts one frame into `out`; returns the plaintext's length.
    pub fn open(&mut self, frame: &[u8], out: &mut [u8]) -> Result<usize, SessionError> {
        if frame.len() < 9 + TAG_LEN || frame.len() > MAX_FRAME || frame[0] != DATA {
            return Err(SessionError::Malformed);
        }
        let nonce = u64::from_be_bytes(frame[1..9].try_into().map_err(|_| SessionError::Malformed)?);
        if self.last_rx.is_some_and(|l| nonce <= l) || nonce == u64::MAX {
            return Err(SessionError::Decrypt);
        }
        self.t.set_receiving_nonce(nonce);
        let n = self.t.receive(&frame[9..], out).map_err(|_| SessionError::Decrypt)?;
        self.last_rx = Some(nonce);
        Ok(n)
    }
}

fn keypair(secret: &[u8; 32]) -> KeyPair<<X25519 as Dh>::PubKey, <X25519 as Dh>::PrivateKey> {
    let secret = <X25519 as Dh>::PrivateKey::from_slice(secret);
    KeyPair { public: X25519::pubkey(&secret), secret }
}

/// The X25519 public key of `secret` (a debug key pair or a device key).
pub fn public_key(secret: &[u8; 32]) -> [u8; 32] {
    let s = <X25519 as Dh>::PrivateKey::from_slice(secret);
    let p = X25519::pubkey(&s);
    let mut out = [0u8; 32];
    out.copy_from_slice(p.as_slice());
    out
}

enum ClientState<R: Rng> {
    Idle(Handshake<R>),
    AwaitReply(Handshake<R>),
    Established(Transport),
    Failed,
}

/// The CLI's end.
pub struct Client<R: Rng> {
    state: ClientState<R>,
}

impl<R: Rng> Client<R> {
    /// A session for the holder of `debug_secret` with the device whose key is `device_public`.
    pub fn new(debug_secret: &[u8; 32], device_public: &[u8; 32]) -> Result<Self, SessionError> {
        let hs = Handshake::<R>::new(
            noise_ik(),
            PROLOGUE,
            true,
            Some(keypair(debug_secret)),
            None,
            Some(*device_public),
            None,
        )
        .map_err(|_| SessionError::Handshake)?;
        Ok(Client { state: ClientState::Idle(hs) })
    }

    /// Writes the first frame into `out`: the handshake carrying a `hello` request with `id`.
    pub fn start(&mut self, id: u16, out: &mut [u8]) -> Result<usize, SessionError> {
        let ClientState::Idle(mut hs) = core::mem::replace(&mut self.state, ClientState::Failed) else {
            return Err(SessionError::NotReady);
        };
        let mut plain = [0u8; 8];
        let n = Request::encode(id, &[Op::Hello], &mut plain).map_err(|_| SessionError::TooLarge)?;
        if out.is_empty() {
            return Err(SessionError::TooLarge);
        }
        out[0] = HS1;
        let len = hs.write_message(&plain[..n], &mut out[1..]).map_err(|_| SessionError::TooLarge)?;
        self.state = ClientState::AwaitReply(hs);
        Ok(1 + len)
    }

    /// True once the device answered the handshake.
    pub fn is_established(&self) -> bool {
        matches!(self.state, ClientState::Established(_))
    }

    /// Decrypts a frame from the device into `out` (the first one completes the handshake).
    pub fn open(&mut self, frame: &[u8], out: &mut [u8]) -> Result<usize, SessionError> {
        match core::mem::replace(&mut self.state, ClientState::Failed) {
            ClientState::AwaitReply(mut hs) => {
                if frame.first() != Some(&HS2) || frame.len() > MAX_FRAME {
                    return Err(SessionError::Malformed);
                }
                let n = hs.read_message(&frame[1..], out).map_err(|_| SessionError::Handshake)?;
                if !hs.is_finished() {
                    return Err(SessionError::Handshake);
                }
                let t = hs.finalize().map_err(|_| SessionError::Handshake)?;
                self.state = ClientState::Established(Transport { t, last_rx: None });
                Ok(n)
            }
            ClientState::Established(mut t) => {
                let n = t.open(frame, out)?;
                self.state = ClientState::Established(t);
                Ok(n)
            }
            _ => Err(SessionError::NotReady),
        }
    }

    /// Encrypts a message to the device into one frame in `out`.
    pub fn seal(&mut self, plain: &[u8], out: &mut [u8]) -> Result<usize, SessionError> {
        match &mut self.state {
            ClientState::Established(t) => t.seal(plain, out),
            _ => Err(SessionError::NotReady),
        }
    }
}

/// A handshake the device accepted and has not answered yet.
pub struct Accepted<R: Rng> {
    hs: Handshake<R>,
    /// The initiator's static key (the agent compares it with the app's debug key).
    pub initiator: [u8; 32],
    /// The hello request's id.
    pub id: u16,
}

/// The device's end, once established.
pub struct Responder {
    t: Transport,
}

/// True if `frame` starts a new session (a handshake's first message).
pub fn is_handshake(frame: &[u8]) -> bool {
    frame.first() == Some(&HS1)
}

impl<R: Rng> Accepted<R> {
    /// Reads a handshake's first message with the device's key. Its payload must be a request
    /// with exactly one `hello` (anything else could be replayed by the relay).
    pub fn accept(device_secret: &[u8; 32], frame: &[u8]) -> Result<Accepted<R>, SessionError> {
        if !is_handshake(frame) || frame.len() > MAX_FRAME {
            return Err(SessionError::Malformed);
        }
        let mut hs = Handshake::<R>::new(noise_ik(), PROLOGUE, false, Some(keypair(device_secret)), None, None, None)
            .map_err(|_| SessionError::Handshake)?;
        let mut plain = [0u8; 64];
        let n = hs.read_message(&frame[1..], &mut plain).map_err(|_| SessionError::Handshake)?;
        let req = Request::decode(&plain[..n]).map_err(|_| SessionError::Malformed)?;
        let mut ops = req.ops();
        if ops.next() != Some(Op::Hello) || ops.next().is_some() {
            return Err(SessionError::Malformed);
        }
        let rs = hs.get_remote_static().ok_or(SessionError::Handshake)?;
        let mut initiator = [0u8; 32];
        initiator.copy_from_slice(rs.as_slice());
        Ok(Accepted { hs, initiator, id: req.id })
    }

    /// Answers the handshake with `reply` (the hello's reply) in `out`.
    pub fn answer(mut self, reply: &[u8], out: &mut [u8]) -> Result<(Responder, usize), SessionError> {
        if out.is_empty() {
            return Err(SessionError::TooLarge);
        }
        out[0] = HS2;
        let n = self.hs.write_message(reply, &mut out[1..]).map_err(|_| SessionError::TooLarge)?;
        let t = self.hs.finalize().map_err(|_| SessionError::Handshake)?;
        Ok((Responder { t: Transport { t, last_rx: None } }, 1 + n))
    }
}

impl Responder {
    /// Decrypts a frame from the CLI into `out`.
    pub fn open(&mut self, frame: &[u8], out: &mut [u8]) -> Result<usize, SessionError> {
        self.t.open(frame, out)
    }

    /// Encrypts a message to the CLI into one frame in `out`.
    pub fn seal(&mut self, plain: &[u8], out: &mut [u8]) -> Result<usize, SessionError> {
        self.t.seal(plain, out)
    }
}
