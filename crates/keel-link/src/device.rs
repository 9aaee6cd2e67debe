//! The device end of the cloud link, sans-IO: everything the visor and the simulator do with a
//! connection once TCP is up, written once.
//!
//! [`DeviceLink`] wraps a [`DeviceSession`] and drives the log ring: it answers `Welcome` with
//! `Ready`, resumes sending after what the server already stored, releases records on
//! `LogAck`, answers `Ping`, and produces the next frame to send (a `Dropped` report first, then
//! records in sequence order). The caller moves bytes and owns the clock.
//!
//! Update messages from the server (offer, layer data, layer error, cancel) are handed to the
//! caller as [`Event`]s that borrow from the session's receive buffer; the caller's update agent
//! answers with [`DeviceLink::send`] (`UpdateStatus`, `FetchLayer`).

use clatter::traits::Rng;
use keel_log::LogRing;

use crate::msg::{Down, Up};
use crate::session::{DeviceSession, SessionError};

/// A device drops its connection when it heard nothing from the server for this long (µs), and
/// reconnects. The server pings every 30 s (`keel_server::gateway::PING_INTERVAL`), so this is
/// three missed pings plus slack: a half-open TCP connection (server crashed, NAT entry expired)
/// is noticed within 100 s instead of never.
pub const SERVER_SILENCE_TIMEOUT_US: u64 = 100_000_000;

/// What the caller should know after a server message. Byte fields borrow from the link's
/// receive buffer: handle the event before the next frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// The secure channel is up; the server's wall clock (µs since the epoch).
    Online {
        /// Server time.
        unix_us: u64,
    },
    /// New wall-clock time from the server.
    TimeSync {
        /// Server time.
        unix_us: u64,
    },
    /// The server offers a bundle: its envelope without payloads ([`Down::UpdateOffer`]).
    UpdateOffer {
        /// The envelope, to verify with `keel_bundle::verify_envelope`.
        envelope: &'a [u8],
    },
    /// A piece of a layer ([`Down::LayerData`]).
    LayerData {
        /// Bundle sequence number.
        sequence: u64,
        /// Component index.
        component: u8,
        /// Offset of `data` in the layer.
        offset: u32,
        /// The bytes.
        data: &'a [u8],
    },
    /// The server cannot serve a fetch ([`Down::LayerError`]).
    LayerError {
        /// Bundle sequence number.
        sequence: u64,
        /// Component index.
        component: u8,
        /// Requested offset.
        offset: u32,
        /// A `LayerErrorCode`.
        code: u8,
    },
    /// Stop downloading this bundle ([`Down::UpdateCancel`]).
    UpdateCancel {
        /// Bundle sequence number.
        sequence: u64,
    },
    /// Nothing the caller needs to act on.
    None,
}

/// A server message the link answers itself, copied out of the receive buffer.
enum Control {
    Welcome { unix_us: u64, log_acked: Option<u64> },
    TimeSync { unix_us: u64 },
    LogAck { upto: u64 },
    Ping { nonce: u32 },
    Update,
}

/// The device side of one connection.
pub struct DeviceLink<R: Rng> {
    session: DeviceSession<R>,
    cursor: u64,
    online: bool,
}

impl<R: Rng> DeviceLink<R> {
    /// A link for the device with `device_secret`, trusting only `server_public`.
    pub fn new(device_secret: &[u8; 32], server_public: &[u8; 32]) -> Result<Self, SessionError> {
        Ok(DeviceLink { session: DeviceSession::new(device_secret, server_public)?, cursor: 0, online: false })
    }

    /// True once `Welcome` was received.
    pub fn is_online(&self) -> bool {
        self.online
    }

    /// Writes the first frame (handshake message 1 carrying `hello`).
    pub fn start(&mut self, hello: &Up<'_>, out: &mut [u8]) -> Result<usize, SessionError> {
        self.session.start(hello, out)
    }

    /// Handles one received frame payload. A reply the protocol requires (`Ready` after
    /// `Welcome`, `Pong` after `Ping`) is written to `reply`; the returned length is 0 if none.
    /// Update messages come back as events borrowing from the link's receive buffer.
    pub fn on_frame<const N: usize>(
        &mut self,
        payload: &[u8],
        ring: &mut LogRing<N>,
        reply: &mut [u8],
    ) -> Result<(Event<'_>, usize), SessionError> {
        // Copy what the link handles itself out of the message first, so the reply can be
        // encrypted with the same session; update messages are decoded again below and
        // returned borrowing from the receive buffer.
        let control = match self.session.receive(payload)? {
            Down::Welcome { unix_us, log_acked, .. } => Control::Welcome { unix_us, log_acked },
            Down::TimeSync { unix_us } => Control::TimeSync { unix_us },
            Down::LogAck { upto } => Control::LogAck { upto },
            Down::Ping { nonce } => Control::Ping { nonce },
            Down::UpdateOffer { .. } | Down::LayerData { .. } | Down::LayerError { .. } | Down::UpdateCancel { .. } => {
                Control::Update
            }
        };
        match control {
            Control::Welcome { unix_us, log_acked } => {
                if let Some(a) = log_acked {
                    ring.ack(a);
                }
                self.cursor = log_acked.map_or(ring.first_seq(), |a| a.saturating_add(1)).max(ring.first_seq());
                self.online = true;
                // Proves to the server that this is not a replayed handshake message.
                let n = self.session.send(&Up::Ready, reply)?;
                Ok((Event::Online { unix_us }, n))
            }
            Control::TimeSync { unix_us } => Ok((Event::TimeSync { unix_us }, 0)),
            Control::LogAck { upto } => {
                ring.ack(upto);
                Ok((Event::None, 0))
            }
            Control::Ping { nonce } => Ok((Event::None, self.session.send(&Up::Pong { nonce }, reply)?)),
            Control::Update => {
                let event = match self.session.last()? {
                    Down::UpdateOffer { envelope } => Event::UpdateOffer { envelope },
                    Down::LayerData { sequence, component, offset, data } => {
                        Event::LayerData { sequence, component, offset, data }
                    }
                    Down::LayerError { sequence, component, offset, code } => {
                        Event::LayerError { sequence, component, offset, code }
                    }
                    Down::UpdateCancel { sequence } => Event::UpdateCancel { sequence },
                    _ => Event::None,
                };
                Ok((event, 0))
            }
        }
    }

    /// Encrypts any device message (e.g. `UpdateStatus`, `FetchLayer`) into one frame in `out`.
    /// Only once the link is online (after `Welcome`); `Hello` and `Ready` are the link's own.
    pub fn send(&mut self, m: &Up<'_>, out: &mut [u8]) -> Result<usize, SessionError> {
        if !self.online {
            return Err(SessionError::NotReady);
        }
        if matches!(m, Up::Hello { .. } | Up::Ready) {
            return Err(SessionError::Unexpected);
        }
        self.session.send(m, out)
    }

    /// Writes the next log frame into `out` (a `Dropped` report first, then the oldest record not
    /// sent on this connection). Returns `None` when there is nothing to send. Call only when the
    /// transport can take a whole frame: the record counts as sent.
    pub fn next_log_frame<const N: usize>(
        &mut self,
        ring: &mut LogRing<N>,
        out: &mut [u8],
    ) -> Result<Option<usize>, SessionError> {
        if !self.online {
            return Ok(None);
        }
        if ring.dropped() > 0 {
            let before_seq = ring.first_seq();
            let n = self.session.send(&Up::Dropped { count: ring.dropped(), before_seq }, out)?;
            ring.take_dropped();
            self.cursor = self.cursor.max(before_seq);
            return Ok(Some(n));
        }
        let mut text = [0u8; keel_log::MAX_TEXT];
        let Some(r) = ring.iter_from(self.cursor).next() else {
            return Ok(None);
        };
        let len = r.copy_text(&mut text);
        let m = Up::Log { seq: r.seq, kind: r.kind as u8, level: r.level, time_us: r.time_us, text: &text[..len] };
        let n = self.session.send(&m, out)?;
        self.cursor = r.seq + 1;
        Ok(Some(n))
    }
}
