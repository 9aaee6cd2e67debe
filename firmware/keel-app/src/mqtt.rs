//! A managed MQTT session through the Keel server (since ABI 2.1).
//!
//! The server holds the broker connection for the device, configured on the server as a
//! **profile** (broker address, credentials, topic rules); the app opens an MQTT channel
//! ([`crate::chan::Kind::Mqtt`]) on the profile's name and speaks simple messages over it:
//! connect, subscribe, publish, acknowledge. Results and incoming messages arrive as
//! [`Event`]s, read in place from the channel's receive buffer ([`Session::next_event`]).
//! Requests carry correlation ids the SDK assigns (returned by [`Session::publish`],
//! [`Session::subscribe`], ...), repeated in their results.
//!
//! If the link to the server drops, the channel closes ([`Error::Closed`] with
//! [`crate::chan::Reason::LinkLost`]); open a new session once the network is back and connect
//! with `clean_start = false` to resume the server's session (subscriptions, messages queued
//! meanwhile): [`ConnectResult::session_present`] says whether it was kept.
//!
//! Sizes: each request is encoded in a scratch buffer — [`crate::chan::STACK_SCRATCH`] bytes of
//! stack unless [`Session::set_scratch`] gave one — and must fit the transmit buffer
//! (`tx_len - 4` bytes): a publish takes 15 bytes plus topic and payload. An incoming message
//! takes 15 bytes plus topic and payload in the receive buffer (`rx_len - 4` bytes at most); the
//! server reports a larger one as [`Event::Lost`] instead.

pub use keel_channel::msg::{mqtt_session, mqtt_state, Will};
use keel_channel::msg::{Msg, Strs, Subs, MAX_MQTT_TOPICS};

use crate::chan::{self, Channel, Kind};
use crate::Error;

/// Tag of the SDK's MQTT channels (in their notification records).
pub const TAG: u32 = 0x4D51_5454;
/// How long a blocking request waits for room in the transmit buffer, unless changed with
/// [`Session::set_send_timeout`] (ms).
pub const SEND_TIMEOUT_MS: u32 = 5_000;

/// The answer to a connect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectResult {
    /// An [`mqtt_state`] code (`COMPLETED` when connected).
    pub state: u8,
    /// The broker's reason code (0 on success).
    pub reason: u32,
    /// The server kept the session from before (subscriptions, queued messages).
    pub session_present: bool,
}

/// Something the server reported on the session. Borrowed slices point into the receive
/// buffer and live until the closure given to [`Session::next_event`] returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// The answer to [`Session::connect`].
    ConnectResult(ConnectResult),
    /// The answer to [`Session::subscribe`].
    SubscribeResult {
        /// The request's id.
        id: u32,
        /// An [`mqtt_state`] code.
        state: u8,
        /// One granted QoS (0, 1) or failure code (>= 0x80) per topic.
        codes: &'a [u8],
    },
    /// The answer to [`Session::unsubscribe`].
    UnsubscribeResult {
        /// The request's id.
        id: u32,
        /// An [`mqtt_state`] code.
        state: u8,
    },
    /// The answer to [`Session::publish`]: QoS 0 when handed to the broker connection, QoS 1
    /// when the broker acknowledged.
    PublishResult {
        /// The request's id.
        id: u32,
        /// An [`mqtt_state`] code.
        state: u8,
        /// The broker's reason code.
        reason: u32,
    },
    /// A message on a subscribed topic. Acknowledge a QoS 1 message with [`Session::ack`] and
    /// its `id`, or it is delivered again.
    Message {
        /// Delivery id (for the ack).
        id: u32,
        /// 0 or 1.
        qos: u8,
        /// A retained message.
        retain: bool,
        /// Its topic.
        topic: &'a [u8],
        /// Its payload.
        payload: &'a [u8],
    },
    /// A message that was not delivered.
    Lost {
        /// 1: larger than the receive buffer; 2: rate limited; 3: the queue of a detached session
        /// overflowed.
        reason: u8,
        /// Its topic.
        topic: &'a [u8],
        /// Its payload length.
        len: u32,
    },
    /// The answer to [`Session::disconnect`].
    DisconnectResult {
        /// An [`mqtt_state`] code.
        state: u8,
        /// The broker's code.
        code: u32,
    },
    /// The server's broker connection changed ([`mqtt_session`] state), with the reason as
    /// text.
    Status {
        /// An [`mqtt_session`] state.
        state: u8,
        /// Why.
        reason: &'a [u8],
    },
    /// The server cannot serve the session (it closes the channel next).
    Error {
        /// An [`crate::msg::http_result`]-style code.
        code: u8,
        /// Why.
        text: &'a [u8],
    },
}

impl<'a> Event<'a> {
    /// Decodes a server message; app-to-server messages are [`Error::Unexpected`].
    pub fn decode(m: &'a [u8]) -> Result<Event<'a>, Error> {
        Ok(match Msg::decode(m) {
            Ok(Msg::MqttConnectResult { state, reason, session_present }) => {
                Event::ConnectResult(ConnectResult { state, reason, session_present })
            }
            Ok(Msg::MqttSubscribeResult { id, state, codes }) => Event::SubscribeResult { id, state, codes },
            Ok(Msg::MqttUnsubscribeResult { id, state }) => Event::UnsubscribeResult { id, state },
            Ok(Msg::MqttPublishResult { id, state, reason }) => Event::PublishResult { id, state, reason },
            Ok(Msg::MqttMessage { id, qos, retain, topic, payload }) => {
                Event::Message { id, qos, retain, topic, payload }
            }
            Ok(Msg::MqttLost { reason, topic, len }) => Event::Lost { reason, topic, len },
            Ok(Msg::MqttDisconnectResult { state, code }) => Event::DisconnectResult { state, code },
            Ok(Msg::MqttStatus { state, reason }) => Event::Status { state, reason },
            Ok(Msg::Error { code, text }) => Event::Error { code, text },
            Ok(_) => return Err(Error::Unexpected(m.first().copied().unwrap_or(0))),
            Err(keel_channel::msg::Error::UnknownType(t)) => return Err(Error::Unexpected(t)),
            Err(_) => return Err(Error::Malformed),
        })
    }
}

/// The name of an [`mqtt_state`] code, for logs.
pub fn state_name(state: u8) -> &'static str {
    match state {
        mqtt_state::COMPLETED => "COMPLETED",
        mqtt_state::INVALID_PARAMETERS => "INVALID_PARAMETERS",
        mqtt_state::ALREADY_CONNECTED => "ALREADY_CONNECTED",
        mqtt_state::NOT_CONNECTED => "NOT_CONNECTED",
        mqtt_state::NX_DOMAIN => "NX_DOMAIN",
        mqtt_state::UNKNOWN_CA => "UNKNOWN_CA",
        mqtt_state::CERTIFICATE_EXPIRED => "CERTIFICATE_EXPIRED",
        mqtt_state::SOCKET_ERROR => "SOCKET_ERROR",
        mqtt_state::RATE_LIMITED => "RATE_LIMITED",
        mqtt_state::DENIED => "DENIED",
        _ => "UNKNOWN",
    }
}

/// The name of an [`mqtt_session`] state, for logs.
pub fn session_state_name(state: u8) -> &'static str {
    match state {
        mqtt_session::CONNECTED => "connected",
        mqtt_session::RECONNECTING => "reconnecting",
        mqtt_session::DOWN => "down",
        _ => "unknown",
    }
}

/// A managed MQTT session on one channel. Dropping it closes the channel (the server keeps the
/// broker session for a later `clean_start = false` connect, as its profile says).
pub struct Session<'b> {
    chan: Channel<'b>,
    next_id: u32,
    send_timeout_ms: u32,
    scratch: Option<&'b mut [u8]>,
}

impl<'b> Session<'b> {
    /// Opens an MQTT channel on the broker profile `profile` (the channel's endpoint) with the
    /// app's receive and transmit buffers. Nothing is sent yet: [`Session::connect`] next.
    pub fn open(profile: &str, rx: &'b mut [u32], tx: &'b mut [u32]) -> Result<Session<'b>, Error> {
        let chan = Channel::open(Kind::Mqtt, profile, rx, tx, TAG)?;
        Ok(Session { chan, next_id: 1, send_timeout_ms: SEND_TIMEOUT_MS, scratch: None })
    }

    /// The session's channel (its state, why it closed).
    pub fn channel(&self) -> &Channel<'b> {
        &self.chan
    }

    /// How long blocking requests wait for room in the transmit buffer (0: not at all, they
    /// fail with [`crate::Status::WouldBlock`] at once).
    pub fn set_send_timeout(&mut self, ms: u32) {
        self.send_timeout_ms = ms;
    }

    /// Encodes requests into `scratch` from now on instead of [`crate::chan::STACK_SCRATCH`]
    /// bytes of stack (for larger publishes, or to save stack).
    pub fn set_scratch(&mut self, scratch: &'b mut [u8]) {
        self.scratch = Some(scratch);
    }

    /// A fresh correlation id (never 0).
    pub fn next_id(&mut self) -> u32 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        id
    }

    /// Encodes and sends any app message, waiting up to the send timeout for room.
    pub fn send(&mut self, m: &Msg<'_>) -> Result<(), Error> {
        let t = self.send_timeout_ms;
        match self.scratch.as_deref_mut() {
            Some(s) => chan::send_msg(&mut self.chan, m, s, t),
            None => chan::send_msg(&mut self.chan, m, &mut [0u8; chan::STACK_SCRATCH], t),
        }
    }

    /// [`Session::send`] as a future (waits for room as long as it takes).
    pub async fn send_async(&mut self, m: &Msg<'_>) -> Result<(), Error> {
        let mut stack = [0u8; chan::STACK_SCRATCH];
        let scratch = match self.scratch.as_deref_mut() {
            Some(s) => s,
            None => &mut stack[..],
        };
        let n = m.encode(scratch).map_err(|_| Error::TooLarge)?;
        match self.chan.send_async(&scratch[..n]).await {
            Ok(()) => Ok(()),
            Err(e) => Err(chan::send_error(&self.chan, e)),
        }
    }

    /// Asks the server to connect the session to the broker; the answer is an
    /// [`Event::ConnectResult`]. `clean_start`: drop the server's session from before;
    /// `keepalive_s`: towards the broker; `will`: sent by the broker if the session ends
    /// uncleanly.
    pub fn connect(&mut self, clean_start: bool, keepalive_s: u16, will: Option<Will<'_>>) -> Result<(), Error> {
        self.send(&Msg::MqttConnect { clean_start, keepalive_s, will })
    }

    /// [`Session::connect`], then waits up to `timeout_ms` for its answer; other events that
    /// arrive first are dropped. `Ok` whatever the answer's state (check
    /// [`ConnectResult::state`]).
    pub fn connect_wait(
        &mut self,
        clean_start: bool,
        keepalive_s: u16,
        will: Option<Will<'_>>,
        timeout_ms: u32,
    ) -> Result<ConnectResult, Error> {
        self.connect(clean_start, keepalive_s, will)?;
        let end = crate::monotonic_us().saturating_add(timeout_ms as u64 * 1000);
        loop {
            let left = end.saturating_sub(crate::monotonic_us()) / 1000;
            if left == 0 {
                return Err(Error::Timeout);
            }
            let ev = self.next_event(left as u32, |ev| match ev {
                Event::ConnectResult(r) => Ok(Some(r)),
                Event::Error { code, .. } => Err(Error::Server(code)),
                _ => Ok(None),
            });
            match ev {
                Ok(Some(Ok(Some(r)))) => return Ok(r),
                Ok(Some(Err(e))) => return Err(e),
                Ok(Some(Ok(None))) | Err(Error::Malformed | Error::Unexpected(_)) => {}
                Ok(None) => return Err(Error::Timeout),
                Err(e) => return Err(e),
            }
        }
    }

    /// Subscribes to topic filters, each with its QoS (0 or 1; at most
    /// [`crate::msg::MAX_MQTT_TOPICS`]); the answer is an [`Event::SubscribeResult`] with the
    /// returned id.
    pub fn subscribe(&mut self, topics: &[(&str, u8)]) -> Result<u32, Error> {
        if topics.len() > MAX_MQTT_TOPICS {
            return Err(Error::TooLarge);
        }
        let mut ts: [(&[u8], u8); MAX_MQTT_TOPICS] = [(&[], 0); MAX_MQTT_TOPICS];
        for (d, &(t, q)) in ts.iter_mut().zip(topics) {
            *d = (t.as_bytes(), q);
        }
        let id = self.next_id();
        self.send(&Msg::MqttSubscribe { id, topics: Subs::Items(&ts[..topics.len()]) })?;
        Ok(id)
    }

    /// Unsubscribes from topic filters (at most [`crate::msg::MAX_MQTT_TOPICS`]); the answer is
    /// an [`Event::UnsubscribeResult`] with the returned id.
    pub fn unsubscribe(&mut self, topics: &[&str]) -> Result<u32, Error> {
        if topics.len() > MAX_MQTT_TOPICS {
            return Err(Error::TooLarge);
        }
        let mut ts: [&[u8]; MAX_MQTT_TOPICS] = [&[]; MAX_MQTT_TOPICS];
        for (d, t) in ts.iter_mut().zip(topics) {
            *d = t.as_bytes();
        }
        let id = self.next_id();
        self.send(&Msg::MqttUnsubscribe { id, topics: Strs::Items(&ts[..topics.len()]) })?;
        Ok(id)
    }

    /// Publishes `payload` on `topic` with QoS 0 or 1; the answer is an
    /// [`Event::PublishResult`] with the returned id.
    pub fn publish(&mut self, topic: &str, payload: &[u8], qos: u8, retain: bool) -> Result<u32, Error> {
        let id = self.next_id();
        self.send(&Msg::MqttPublish { id, qos, retain, topic: topic.as_bytes(), payload })?;
        Ok(id)
    }

    /// [`Session::publish`] as a future.
    pub async fn publish_async(&mut self, topic: &str, payload: &[u8], qos: u8, retain: bool) -> Result<u32, Error> {
        let id = self.next_id();
        self.send_async(&Msg::MqttPublish { id, qos, retain, topic: topic.as_bytes(), payload }).await?;
        Ok(id)
    }

    /// Acknowledges the QoS 1 message with delivery id `id` ([`Event::Message`]).
    pub fn ack(&mut self, id: u32) -> Result<(), Error> {
        self.send(&Msg::MqttAck { id })
    }

    /// [`Session::ack`] as a future.
    pub async fn ack_async(&mut self, id: u32) -> Result<(), Error> {
        self.send_async(&Msg::MqttAck { id }).await
    }

    /// Disconnects from the broker cleanly (the will is not sent); the answer is an
    /// [`Event::DisconnectResult`].
    pub fn disconnect(&mut self) -> Result<(), Error> {
        self.send(&Msg::MqttDisconnect)
    }

    /// Waits up to `timeout_ms` for the next event and hands it to `f`; `Ok(None)` at the
    /// timeout. A message the SDK cannot decode is consumed and reported as
    /// [`Error::Malformed`] or [`Error::Unexpected`] (the session goes on: call again);
    /// [`Error::Closed`] once the channel is closed and every message was read.
    pub fn next_event<R>(&mut self, timeout_ms: u32, f: impl FnOnce(Event<'_>) -> R) -> Result<Option<R>, Error> {
        match self.chan.recv_wait_with(timeout_ms, |m| Event::decode(m).map(f)) {
            Ok(r) => r.map(Some),
            Err(crate::Status::NoData) => Ok(None),
            Err(e) => Err(chan::recv_error(&self.chan, e)),
        }
    }

    /// [`Session::next_event`] without waiting: `Ok(None)` if no event waits.
    pub fn try_event<R>(&mut self, f: impl FnOnce(Event<'_>) -> R) -> Result<Option<R>, Error> {
        match self.chan.recv_with(|m| Event::decode(m).map(f)) {
            Ok(r) => r.map(Some),
            Err(crate::Status::NoData) => Ok(None),
            Err(e) => Err(chan::recv_error(&self.chan, e)),
        }
    }

    /// [`Session::next_event`] as a future (no timeout: race it with
    /// [`crate::notify::at`] for one).
    pub async fn next_event_async<R>(&mut self, f: impl FnOnce(Event<'_>) -> R) -> Result<R, Error> {
        match self.chan.recv_async(|m| Event::decode(m).map(f)).await {
            Ok(r) => r,
            Err(e) => Err(chan::recv_error(&self.chan, e)),
        }
    }
}
