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
//! answers with [`DeviceLink::send`] (`UpdateStatus`, `FetchLayer`). Remote debugging frames
//! (feature `DEBUG`) come the same way ([`Event::Debug`], opaque bytes for the caller's debug
//! service) and go with [`DeviceLink::send`] (`Up::Debug`).
//!
//! Negotiation: the hello announces the link's protocol range (`PROTOCOL_MIN..=PROTOCOL_VERSION`)
//! and features ([`DeviceLink::with_features`], default `features::SUPPORTED`); the welcome's
//! answer is kept ([`DeviceLink::negotiated`]). The link refuses to send a message of a feature
//! the server did not announce ([`SessionError::NotNegotiated`]), and treats such a message from
//! the server as a protocol error. A server message of a variant this crate does not know (in
//! the reserved ranges) is skipped and counted ([`DeviceLink::unknown_received`]).
//!
//! Visor events are records of `keel_log::Kind::Event` in the ring (their bytes are a
//! `VisorEvent` encoding); [`DeviceLink::next_log_frame`] sends them as `Up::Event` (or skips
//! them if the server did not announce `EVENTS`).

use clatter::traits::Rng;
use keel_log::{Kind, LogRing};

use crate::msg::{features, Down, Hello, Negotiated, Up, VisorEvent, PROTOCOL_MIN, PROTOCOL_VERSION};
use crate::session::{DeviceSession, SessionError};

/// A device drops its connection when it heard nothing from the server for this long (µs), and
/// reconnects. The server pings every 30 s (`keel_server::gateway::PING_INTERVAL`), so this is
/// three missed pings plus slack: a half-open TCP connection (server crashed, NAT entry expired)
/// is noticed within 100 s instead of never.
pub const SERVER_SILENCE_TIMEOUT_US: u64 = 100_000_000;

/// What the caller should know after a server message. Byte fields borrow from the link's
/// receive buffer: handle the event before the next frame.
#[derive(Clone, Debug, PartialEq, Eq)]
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
    /// The server has nothing for the device to install now ([`Down::NoUpdate`]).
    NoUpdate {
        /// The device's target sequence (0: no deployment).
        target: u64,
    },
    /// One opaque frame from the debugger attached through the server ([`Down::Debug`], feature
    /// `DEBUG`): a transport message of the end-to-end debug session, for the debug service.
    Debug {
        /// At most `msg::MAX_DEBUG_FRAME` bytes.
        frame: &'a [u8],
    },
    /// A channel message ([`Down::ChanOpened`], [`Down::ChanData`], [`Down::ChanCredit`],
    /// [`Down::ChanClosed`], feature `CHANNELS`), for the app's channel table.
    Channel(Down<'a>),
    /// Nothing the caller needs to act on.
    None,
}

/// A server message the link answers itself, copied out of the receive buffer.
enum Control {
    Welcome {
        protocol: u16,
        unix_us: u64,
        log_acked: Option<u64>,
        features: u32,
    },
    Unknown,
    TimeSync {
        unix_us: u64,
    },
    LogAck {
        upto: u64,
    },
    Ping {
        nonce: u32,
    },
    /// A message handed to the caller as an event borrowing from the receive buffer (updates,
    /// debugging).
    Borrowed,
}

/// The device side of one connection.
pub struct DeviceLink<R: Rng> {
    session: DeviceSession<R>,
    cursor: u64,
    online: bool,
    /// Announced in the hello.
    range: (u16, u16),
    features: u32,
    /// From the welcome.
    negotiated: Option<Negotiated>,
    unknown: u64,
}

impl<R: Rng> DeviceLink<R> {
    /// A link for the device with `device_secret`, trusting only `server_public`; it announces
    /// every feature this crate implements (`features::SUPPORTED`).
    pub fn new(device_secret: &[u8; 32], server_public: &[u8; 32]) -> Result<Self, SessionError> {
        Ok(DeviceLink {
            session: DeviceSession::new(device_secret, server_public)?,
            cursor: 0,
            online: false,
            range: (PROTOCOL_MIN, PROTOCOL_VERSION),
            features: features::SUPPORTED,
            negotiated: None,
            unknown: 0,
        })
    }

    /// The same link announcing `features` instead (e.g. without `UPDATES` on a device without
    /// an update agent).
    pub fn with_features(mut self, features: u32) -> Self {
        self.features = features;
        self
    }

    /// True once `Welcome` was received.
    pub fn is_online(&self) -> bool {
        self.online
    }

    /// The protocol version and features of this connection, once `Welcome` was received.
    pub fn negotiated(&self) -> Option<Negotiated> {
        self.negotiated
    }

    /// The frame of the last message received, if it was a [`Down::Debug`]: it stays in the
    /// session's receive buffer until the next frame, so the device core need not copy it.
    pub fn last_debug_frame(&self) -> Option<&[u8]> {
        match self.session.last() {
            Ok(Down::Debug { frame }) => Some(frame),
            _ => None,
        }
    }

    /// Server messages of variants this crate does not know, skipped on this connection.
    pub fn unknown_received(&self) -> u64 {
        self.unknown
    }

    /// Writes the first frame (handshake message 1 carrying `hello`, an [`Up::Hello`] whose
    /// `protocol` is the highest version the device speaks), adding the link's lowest version
    /// and its features.
    pub fn start(&mut self, hello: &Up<'_>, out: &mut [u8]) -> Result<usize, SessionError> {
        let h = Hello::from_up(hello, PROTOCOL_MIN, self.features).ok_or(SessionError::Unexpected)?;
        self.start_hello(&h, out)
    }

    /// Writes the first frame carrying the full `hello` (its range and features are what the
    /// link announces).
    pub fn start_hello(&mut self, hello: &Hello<'_>, out: &mut [u8]) -> Result<usize, SessionError> {
        self.range = hello.protocol_range();
        self.features = hello.features.unwrap_or(0);
        self.session.start_hello(hello, out)
    }

    /// Handles one received frame payload. A reply the protocol requires (`Ready` after
    /// `Welcome`, `Pong` after `Ping`) is written to `reply`; the returned length is 0 if none.
    /// Update and debug messages come back as events borrowing from the link's receive buffer.
    pub fn on_frame<const N: usize>(
        &mut self,
        payload: &[u8],
        ring: &mut LogRing<N>,
        reply: &mut [u8],
    ) -> Result<(Event<'_>, usize), SessionError> {
        // Copy what the link handles itself out of the message first, so the reply can be
        // encrypted with the same session; update messages are decoded again below and
        // returned borrowing from the receive buffer.
        let allowed = self.negotiated.map_or(0, |n| n.features);
        let control = match self.session.receive(payload)? {
            Down::Welcome { protocol, unix_us, log_acked, features } => {
                Control::Welcome { protocol, unix_us, log_acked, features }
            }
            // The server must not send what the device did not announce.
            m if m.feature() & !allowed != 0 => return Err(SessionError::NotNegotiated),
            Down::TimeSync { unix_us } => Control::TimeSync { unix_us },
            Down::LogAck { upto } => Control::LogAck { upto },
            Down::Ping { nonce } => Control::Ping { nonce },
            Down::UpdateOffer { .. }
            | Down::LayerData { .. }
            | Down::LayerError { .. }
            | Down::UpdateCancel { .. }
            | Down::NoUpdate { .. }
            | Down::Debug { .. }
            | Down::ChanOpened { .. }
            | Down::ChanData { .. }
            | Down::ChanCredit { .. }
            | Down::ChanClosed { .. } => Control::Borrowed,
            Down::Unknown(_) => Control::Unknown,
        };
        match control {
            Control::Unknown => {
                self.unknown += 1;
                Ok((Event::None, 0))
            }
            Control::Welcome { protocol, unix_us, log_acked, features } => {
                // The server picks a version the device announced and no feature it did not.
                if protocol < self.range.0 || protocol > self.range.1 || features & !self.features != 0 {
                    return Err(SessionError::Unexpected);
                }
                self.negotiated = Some(Negotiated { protocol, features });
                if let Some(a) = log_acked {
                    ring.ack(a);
                }
                // A server that claims more than this device ever numbered (its log sequence went
                // back: a reset boot counter, a reflashed device) must not stop the device's logs
                // for good: new records are sent from the next sequence number on.
                self.cursor = log_acked
                    .map_or(ring.first_seq(), |a| a.saturating_add(1))
                    .max(ring.first_seq())
                    .min(ring.next_seq());
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
            Control::Borrowed => {
                let event = match self.session.last()? {
                    Down::UpdateOffer { envelope } => Event::UpdateOffer { envelope },
                    Down::LayerData { sequence, component, offset, data } => {
                        Event::LayerData { sequence, component, offset, data }
                    }
                    Down::LayerError { sequence, component, offset, code } => {
                        Event::LayerError { sequence, component, offset, code }
                    }
                    Down::UpdateCancel { sequence } => Event::UpdateCancel { sequence },
                    Down::NoUpdate { target } => Event::NoUpdate { target },
                    Down::Debug { frame } => Event::Debug { frame },
                    m @ (Down::ChanOpened { .. }
                    | Down::ChanData { .. }
                    | Down::ChanCredit { .. }
                    | Down::ChanClosed { .. }) => Event::Channel(m),
                    _ => Event::None,
                };
                Ok((event, 0))
            }
        }
    }

    /// Encrypts any device message (e.g. `UpdateStatus`, `FetchLayer`, `Debug`) into one frame in
    /// `out`. Only once the link is online (after `Welcome`); `Hello` and `Ready` are the link's
    /// own. A message of a feature the server did not announce is
    /// [`SessionError::NotNegotiated`]; a debug frame over `MAX_DEBUG_FRAME` is
    /// [`SessionError::TooLarge`].
    pub fn send(&mut self, m: &Up<'_>, out: &mut [u8]) -> Result<usize, SessionError> {
        if !self.online {
            return Err(SessionError::NotReady);
        }
        if matches!(m, Up::Hello { .. } | Up::Ready) {
            return Err(SessionError::Unexpected);
        }
        if !self.negotiated.is_some_and(|n| n.allows(m.feature())) {
            return Err(SessionError::NotNegotiated);
        }
        self.session.send(m, out)
    }

    /// True if [`DeviceLink::next_log_frame`] has something to send: a drop report, or a record
    /// not sent on this connection yet (records sent but not acknowledged do not count).
    pub fn has_log_frame<const N: usize>(&self, ring: &LogRing<N>) -> bool {
        self.online && (ring.dropped() > 0 || ring.iter_from(self.cursor).next().is_some())
    }

    /// Writes the next log frame into `out` (a `Dropped` report first, then the oldest record not
    /// sent on this connection: `Log` for app and visor text records, `Event` for
    /// [`Kind::Event`] records). Returns `None` when there is nothing to send. Call only when the
    /// transport can take a whole frame: the record counts as sent. An event record is skipped
    /// (not sent; released by the next acknowledgement) if the server did not announce `EVENTS`
    /// or its bytes are not an event.
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
        let events = self.negotiated.is_some_and(|n| n.allows(features::EVENTS));
        let mut text = [0u8; keel_log::MAX_TEXT];
        loop {
            let Some(r) = ring.iter_from(self.cursor).next() else {
                return Ok(None);
            };
            let len = r.copy_text(&mut text);
            self.cursor = r.seq + 1;
            let m = match r.kind {
                Kind::Event => match VisorEvent::decode(&text[..len]) {
                    Ok(event) if events => Up::Event { seq: r.seq, time_us: r.time_us, event },
                    _ => continue,
                },
                Kind::App | Kind::Visor => {
                    Up::Log { seq: r.seq, kind: r.kind as u8, level: r.level, time_us: r.time_us, text: &text[..len] }
                }
            };
            return self.session.send(&m, out).map(Some);
        }
    }
}
