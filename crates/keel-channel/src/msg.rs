//! The app messages a channel carries, in both directions.
//!
//! A small binary format, little endian, chosen so that C code writes and reads it with a few
//! lines and no library (`sdk/c/include/keel_chan.h` mirrors every constant here; a test checks
//! they agree). Every message starts with an 8-byte header:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 1 | `type` ([`ty`]) |
//! | 1 | 1 | `flags` (per type) |
//! | 2 | 2 | `count`: the number of list items (headers, keys, topics) |
//! | 4 | 4 | `id`: a correlation id the app chooses (MQTT), 0 otherwise |
//!
//! then the type's fields in order. A `str` is `u16 length` + bytes, a `blob` is `u32 length` +
//! bytes; neither is NUL-terminated. Nothing follows the last field (trailing bytes are an
//! error). The fields of each type are listed on [`Msg`]'s variants.
//!
//! [`Msg::decode`] checks a whole message (every length, every list item) before it returns,
//! so the lists' iterators cannot fail; [`Msg::encode`] writes one into a buffer.

/// Message types (the header's first byte).
pub mod ty {
    /// [`super::Msg::HttpRequest`], app → server.
    pub const HTTP_REQUEST: u8 = 0x01;
    /// [`super::Msg::HttpResponse`], server → app.
    pub const HTTP_RESPONSE: u8 = 0x02;
    /// [`super::Msg::ConfigFetch`], app → server.
    pub const CONFIG_FETCH: u8 = 0x10;
    /// [`super::Msg::ConfigResult`], server → app.
    pub const CONFIG_RESULT: u8 = 0x11;
    /// [`super::Msg::MqttConnect`], app → server.
    pub const MQTT_CONNECT: u8 = 0x20;
    /// [`super::Msg::MqttConnectResult`], server → app.
    pub const MQTT_CONNECT_RESULT: u8 = 0x21;
    /// [`super::Msg::MqttSubscribe`], app → server.
    pub const MQTT_SUBSCRIBE: u8 = 0x22;
    /// [`super::Msg::MqttSubscribeResult`], server → app.
    pub const MQTT_SUBSCRIBE_RESULT: u8 = 0x23;
    /// [`super::Msg::MqttUnsubscribe`], app → server.
    pub const MQTT_UNSUBSCRIBE: u8 = 0x24;
    /// [`super::Msg::MqttUnsubscribeResult`], server → app.
    pub const MQTT_UNSUBSCRIBE_RESULT: u8 = 0x25;
    /// [`super::Msg::MqttPublish`], app → server.
    pub const MQTT_PUBLISH: u8 = 0x26;
    /// [`super::Msg::MqttPublishResult`], server → app.
    pub const MQTT_PUBLISH_RESULT: u8 = 0x27;
    /// [`super::Msg::MqttMessage`], server → app.
    pub const MQTT_MESSAGE: u8 = 0x28;
    /// [`super::Msg::MqttAck`], app → server.
    pub const MQTT_ACK: u8 = 0x29;
    /// [`super::Msg::MqttLost`], server → app.
    pub const MQTT_LOST: u8 = 0x2A;
    /// [`super::Msg::MqttDisconnect`], app → server.
    pub const MQTT_DISCONNECT: u8 = 0x2B;
    /// [`super::Msg::MqttDisconnectResult`], server → app.
    pub const MQTT_DISCONNECT_RESULT: u8 = 0x2C;
    /// [`super::Msg::MqttStatus`], server → app.
    pub const MQTT_STATUS: u8 = 0x2D;
    /// [`super::Msg::Error`], server → app.
    pub const ERROR: u8 = 0x7F;
}

/// `result` of an [`Msg::HttpResponse`].
pub mod http_result {
    /// The request was made; `status` is the remote server's.
    pub const OK: u8 = 0;
    /// The URL's scheme is not `https` (or `http` where the policy allows it).
    pub const UNSUPPORTED_SCHEME: u8 = 1;
    /// The method is not one of GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS.
    pub const UNSUPPORTED_METHOD: u8 = 2;
    /// A header is malformed (not `Name: value`, a control character, too many).
    pub const INVALID_HEADERS: u8 = 3;
    /// The timeout is outside 1000..=60000 ms.
    pub const INVALID_TIMEOUT: u8 = 4;
    /// The request failed (DNS, connection, TLS); the response's body is a short reason.
    pub const REQUEST_FAILED: u8 = 5;
    /// The response does not fit the channel's receive buffer.
    pub const RESPONSE_TOO_LARGE: u8 = 6;
    /// The destination is denied by the account's policy; the body says which rule.
    pub const DENIED: u8 = 7;
    /// No complete response within the timeout.
    pub const TIMEOUT: u8 = 8;
    /// Too many requests from this device; retry later.
    pub const RATE_LIMITED: u8 = 9;
    /// The request message is malformed.
    pub const BAD_REQUEST: u8 = 10;
    /// A channel carries one request; this was another.
    pub const ALREADY_SENT: u8 = 11;
}

/// `result` of a [`Msg::ConfigResult`] and of each of its items.
pub mod config_result {
    /// Done (the message) / found (an item).
    pub const OK: u8 = 0;
    /// The values do not fit the channel's receive buffer (the message; no items follow).
    pub const RESPONSE_TOO_LARGE: u8 = 1;
    /// The request is malformed (the message).
    pub const BAD_REQUEST: u8 = 2;
    /// More than [`super::MAX_CONFIG_KEYS`] keys (the message).
    pub const TOO_MANY_KEYS: u8 = 3;
    /// No such key (an item).
    pub const NOT_FOUND: u8 = 4;
    /// The key is not 1..=128 bytes of `[A-Za-z0-9._/-]`, or scope/store unknown (an item).
    pub const INVALID_KEY: u8 = 5;
    /// The server could not read the value (an item).
    pub const SERVER_ERROR: u8 = 6;
}

/// Scopes and stores of a configuration key.
pub mod config {
    /// Account-wide key.
    pub const SCOPE_ACCOUNT: u8 = 0;
    /// Key of this device.
    pub const SCOPE_DEVICE: u8 = 1;
    /// Write-only (through the API) secret store.
    pub const STORE_SECRET: u8 = 0;
    /// Readable configuration store.
    pub const STORE_CONFIG: u8 = 1;
}

/// `state` of MQTT results and [`Msg::MqttStatus`].
pub mod mqtt_state {
    /// Done.
    pub const COMPLETED: u8 = 0;
    /// The request is malformed or over a limit.
    pub const INVALID_PARAMETERS: u8 = 1;
    /// Connect on a channel that already connected: open a new channel.
    pub const ALREADY_CONNECTED: u8 = 2;
    /// The session is not connected to the broker.
    pub const NOT_CONNECTED: u8 = 3;
    /// The broker's name does not resolve.
    pub const NX_DOMAIN: u8 = 4;
    /// The broker's certificate is not signed by a trusted CA.
    pub const UNKNOWN_CA: u8 = 5;
    /// The broker's certificate expired.
    pub const CERTIFICATE_EXPIRED: u8 = 6;
    /// The broker cannot be reached (refused, reset, timed out).
    pub const SOCKET_ERROR: u8 = 7;
    /// Too many requests in flight, or incoming messages were rate limited.
    pub const RATE_LIMITED: u8 = 8;
    /// The broker is denied by the account's policy, or the profile is not configured.
    pub const DENIED: u8 = 9;
}

/// `state` of an [`Msg::MqttStatus`]: the managed session's connection to the broker.
pub mod mqtt_session {
    /// Connected to the broker.
    pub const CONNECTED: u8 = 0;
    /// Lost the broker; the server reconnects.
    pub const RECONNECTING: u8 = 1;
    /// The session ended (see the reason).
    pub const DOWN: u8 = 2;
}

/// Length of the header.
pub const HEADER_LEN: usize = 8;
/// Most headers of an HTTP request or response.
pub const MAX_HTTP_HEADERS: usize = 32;
/// Most keys in one configuration fetch.
pub const MAX_CONFIG_KEYS: usize = 16;
/// Most topics in one MQTT (un)subscribe.
pub const MAX_MQTT_TOPICS: usize = 8;

/// Encoding or decoding failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// The output buffer is too small.
    BufferTooSmall,
    /// The bytes are not a valid message (truncated, trailing bytes, a list too long, a value
    /// out of range).
    Malformed,
    /// The type byte is unknown.
    UnknownType(u8),
}

/// A list of `str`s (HTTP headers `Name: value`, MQTT topics to unsubscribe).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strs<'a> {
    /// Decoded: `count` items in `raw` (already checked).
    Raw {
        /// Items.
        count: u16,
        /// Their bytes.
        raw: &'a [u8],
    },
    /// To encode.
    Items(&'a [&'a [u8]]),
}

/// One MQTT subscription: topic filter and QoS.
pub type Sub<'a> = (&'a [u8], u8);
/// One key of a configuration fetch: scope, store, key.
pub type Key<'a> = (u8, u8, &'a [u8]);
/// One item of a configuration result: result, value.
pub type Item<'a> = (u8, &'a [u8]);

/// A list of MQTT subscriptions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Subs<'a> {
    /// Decoded.
    Raw {
        /// Items.
        count: u16,
        /// Their bytes.
        raw: &'a [u8],
    },
    /// To encode.
    Items(&'a [Sub<'a>]),
}

/// A list of configuration keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Keys<'a> {
    /// Decoded.
    Raw {
        /// Items.
        count: u16,
        /// Their bytes.
        raw: &'a [u8],
    },
    /// To encode.
    Items(&'a [Key<'a>]),
}

/// A list of configuration values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Items<'a> {
    /// Decoded.
    Raw {
        /// Items.
        count: u16,
        /// Their bytes.
        raw: &'a [u8],
    },
    /// To encode.
    Items(&'a [Item<'a>]),
}

macro_rules! list_impl {
    ($name:ident, $item:ty, $read:expr, $write:expr) => {
        impl<'a> $name<'a> {
            /// Number of items.
            pub fn len(&self) -> usize {
                match self {
                    $name::Raw { count, .. } => *count as usize,
                    $name::Items(i) => i.len(),
                }
            }

            /// True if there are none.
            pub fn is_empty(&self) -> bool {
                self.len() == 0
            }

            /// The items, in order.
            pub fn iter(&self) -> impl Iterator<Item = $item> + 'a {
                let (raw, items): (&'a [u8], &'a [$item]) = match *self {
                    $name::Raw { raw, .. } => (raw, &[]),
                    $name::Items(i) => (&[], i),
                };
                let mut d = Dec { b: raw, pos: 0 };
                let read = $read;
                core::iter::from_fn(move || if d.pos < d.b.len() { read(&mut d).ok() } else { None })
                    .chain(items.iter().copied())
            }

            fn write(&self, e: &mut Enc<'_>) {
                let write = $write;
                for it in self.iter() {
                    write(e, it);
                }
            }

            fn read(d: &mut Dec<'a>, count: u16) -> Result<Self, Error> {
                let start = d.pos;
                let read = $read;
                for _ in 0..count {
                    read(d)?;
                }
                Ok($name::Raw { count, raw: &d.b[start..d.pos] })
            }
        }
    };
}

list_impl!(Strs, &'a [u8], |d: &mut Dec<'a>| d.str(), |e: &mut Enc<'_>, s: &[u8]| e.str(s));
list_impl!(Subs, Sub<'a>, |d: &mut Dec<'a>| -> Result<Sub<'a>, Error> { Ok((d.str()?, d.u8()?)) }, |e: &mut Enc<
    '_,
>,
                                                                                                    (t, q): Sub<
    '_,
>| {
    e.str(t);
    e.u8(q)
});
list_impl!(
    Keys,
    Key<'a>,
    |d: &mut Dec<'a>| -> Result<Key<'a>, Error> { Ok((d.u8()?, d.u8()?, d.str()?)) },
    |e: &mut Enc<'_>, (scope, store, key): Key<'_>| {
        e.u8(scope);
        e.u8(store);
        e.str(key)
    }
);
list_impl!(
    Items,
    Item<'a>,
    |d: &mut Dec<'a>| -> Result<Item<'a>, Error> { Ok((d.u8()?, d.blob()?)) },
    |e: &mut Enc<'_>, (r, v): Item<'_>| {
        e.u8(r);
        e.blob(v)
    }
);

/// An MQTT will message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Will<'a> {
    /// Topic.
    pub topic: &'a [u8],
    /// Payload.
    pub payload: &'a [u8],
    /// QoS 0 or 1.
    pub qos: u8,
    /// Retained.
    pub retain: bool,
}

/// One app message. Fields are listed in wire order after the header; `count` and `id` live in
/// the header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Msg<'a> {
    /// `method: str, url: str, timeout_ms: u32, headers: str × count, body: blob`.
    HttpRequest {
        /// `GET`, `POST`, ...
        method: &'a [u8],
        /// `https://host[:port]/path?query`.
        url: &'a [u8],
        /// 1000..=60000.
        timeout_ms: u32,
        /// `Name: value` each.
        headers: Strs<'a>,
        /// Request body.
        body: &'a [u8],
    },
    /// `result: u8, reserved: u8, status: u16, headers: str × count, body: blob`.
    HttpResponse {
        /// An [`http_result`] code.
        result: u8,
        /// The remote server's status (0 unless `result` is OK).
        status: u16,
        /// `Name: value` each.
        headers: Strs<'a>,
        /// Response body (or a short reason when `result` is not OK).
        body: &'a [u8],
    },
    /// `(scope: u8, store: u8, key: str) × count`.
    ConfigFetch {
        /// Keys wanted.
        keys: Keys<'a>,
    },
    /// `result: u8, (result: u8, value: blob) × count` — items in request order.
    ConfigResult {
        /// A [`config_result`] code.
        result: u8,
        /// One per key asked for.
        items: Items<'a>,
    },
    /// flags bit 0 `clean_start`, bit 1 will present; `keepalive_s: u16`, then if a will:
    /// `topic: str, payload: blob, qos: u8, retain: u8`.
    MqttConnect {
        /// Start a fresh session (drop subscriptions and queued messages).
        clean_start: bool,
        /// Keepalive towards the broker, seconds.
        keepalive_s: u16,
        /// Will message.
        will: Option<Will<'a>>,
    },
    /// flags bit 0 `session_present`; `state: u8, reason: u32`.
    MqttConnectResult {
        /// An [`mqtt_state`] code.
        state: u8,
        /// The broker's reason code (0 on success).
        reason: u32,
        /// The server kept the session (subscriptions, queued messages) from before.
        session_present: bool,
    },
    /// `(topic: str, qos: u8) × count`.
    MqttSubscribe {
        /// Correlation id.
        id: u32,
        /// Topic filters.
        topics: Subs<'a>,
    },
    /// `state: u8, codes: u8 × count` (one granted QoS or failure code per topic).
    MqttSubscribeResult {
        /// Correlation id.
        id: u32,
        /// An [`mqtt_state`] code.
        state: u8,
        /// Per topic.
        codes: &'a [u8],
    },
    /// `topic: str × count`.
    MqttUnsubscribe {
        /// Correlation id.
        id: u32,
        /// Topic filters.
        topics: Strs<'a>,
    },
    /// `state: u8`.
    MqttUnsubscribeResult {
        /// Correlation id.
        id: u32,
        /// An [`mqtt_state`] code.
        state: u8,
    },
    /// flags bit 0 `retain`; `qos: u8, topic: str, payload: blob`.
    MqttPublish {
        /// Correlation id.
        id: u32,
        /// 0 or 1.
        qos: u8,
        /// Retained.
        retain: bool,
        /// Topic.
        topic: &'a [u8],
        /// Payload.
        payload: &'a [u8],
    },
    /// `state: u8, reason: u32` — QoS 0: when handed to the broker connection; QoS 1: when
    /// the broker acknowledged.
    MqttPublishResult {
        /// Correlation id.
        id: u32,
        /// An [`mqtt_state`] code.
        state: u8,
        /// The broker's reason code.
        reason: u32,
    },
    /// flags bit 0 `retain`; `qos: u8, topic: str, payload: blob`. Acknowledge a QoS 1
    /// message with [`Msg::MqttAck`] and its `id`, or the broker delivers it again.
    MqttMessage {
        /// Delivery id (for the ack).
        id: u32,
        /// 0 or 1.
        qos: u8,
        /// Retained.
        retain: bool,
        /// Topic.
        topic: &'a [u8],
        /// Payload.
        payload: &'a [u8],
    },
    /// No fields.
    MqttAck {
        /// The [`Msg::MqttMessage`]'s id.
        id: u32,
    },
    /// `reason: u8, topic: str, len: u32` — a message that was not delivered.
    MqttLost {
        /// 1: larger than the receive buffer; 2: rate limited; 3: the queue of a detached
        /// session overflowed.
        reason: u8,
        /// Its topic.
        topic: &'a [u8],
        /// Its payload length.
        len: u32,
    },
    /// No fields: disconnect from the broker cleanly (the will is not sent).
    MqttDisconnect,
    /// `state: u8, code: u32`.
    MqttDisconnectResult {
        /// An [`mqtt_state`] code.
        state: u8,
        /// The broker's code.
        code: u32,
    },
    /// `state: u8, reason: str` — the managed session's broker connection changed.
    MqttStatus {
        /// An [`mqtt_session`] state.
        state: u8,
        /// Why, as text.
        reason: &'a [u8],
    },
    /// `code: u8, text: str` — the server could not serve the channel (its next step is to
    /// close it).
    Error {
        /// An [`http_result`]-style code.
        code: u8,
        /// Why, as text.
        text: &'a [u8],
    },
}

/// A writer over a buffer; counts when it overflows so [`Msg::encoded_len`] can reuse it.
struct Enc<'b> {
    buf: &'b mut [u8],
    pos: usize,
}

impl Enc<'_> {
    fn bytes(&mut self, b: &[u8]) {
        if let Some(dst) = self.buf.get_mut(self.pos..self.pos + b.len()) {
            dst.copy_from_slice(b);
        }
        self.pos += b.len();
    }
    fn u8(&mut self, v: u8) {
        self.bytes(&[v]);
    }
    fn u16(&mut self, v: u16) {
        self.bytes(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.bytes(&v.to_le_bytes());
    }
    fn str(&mut self, s: &[u8]) {
        self.u16(s.len().min(u16::MAX as usize) as u16);
        self.bytes(&s[..s.len().min(u16::MAX as usize)]);
    }
    fn blob(&mut self, b: &[u8]) {
        self.u32(b.len() as u32);
        self.bytes(b);
    }
}

/// A reader over a message.
struct Dec<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Dec<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
        let end = self.pos.checked_add(n).ok_or(Error::Malformed)?;
        let s = self.b.get(self.pos..end).ok_or(Error::Malformed)?;
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, Error> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, Error> {
        let s = self.take(2)?;
        Ok(u16::from_le_bytes([s[0], s[1]]))
    }
    fn u32(&mut self) -> Result<u32, Error> {
        let s = self.take(4)?;
        Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }
    fn str(&mut self) -> Result<&'a [u8], Error> {
        let n = self.u16()? as usize;
        self.take(n)
    }
    fn blob(&mut self) -> Result<&'a [u8], Error> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn bool(&mut self) -> Result<bool, Error> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(Error::Malformed),
        }
    }
}

fn count_of(n: usize, max: usize) -> Result<u16, Error> {
    if n > max {
        return Err(Error::Malformed);
    }
    Ok(n as u16)
}

impl<'a> Msg<'a> {
    /// The header's type byte.
    pub fn ty(&self) -> u8 {
        match self {
            Msg::HttpRequest { .. } => ty::HTTP_REQUEST,
            Msg::HttpResponse { .. } => ty::HTTP_RESPONSE,
            Msg::ConfigFetch { .. } => ty::CONFIG_FETCH,
            Msg::ConfigResult { .. } => ty::CONFIG_RESULT,
            Msg::MqttConnect { .. } => ty::MQTT_CONNECT,
            Msg::MqttConnectResult { .. } => ty::MQTT_CONNECT_RESULT,
            Msg::MqttSubscribe { .. } => ty::MQTT_SUBSCRIBE,
            Msg::MqttSubscribeResult { .. } => ty::MQTT_SUBSCRIBE_RESULT,
            Msg::MqttUnsubscribe { .. } => ty::MQTT_UNSUBSCRIBE,
            Msg::MqttUnsubscribeResult { .. } => ty::MQTT_UNSUBSCRIBE_RESULT,
            Msg::MqttPublish { .. } => ty::MQTT_PUBLISH,
            Msg::MqttPublishResult { .. } => ty::MQTT_PUBLISH_RESULT,
            Msg::MqttMessage { .. } => ty::MQTT_MESSAGE,
            Msg::MqttAck { .. } => ty::MQTT_ACK,
            Msg::MqttLost { .. } => ty::MQTT_LOST,
            Msg::MqttDisconnect => ty::MQTT_DISCONNECT,
            Msg::MqttDisconnectResult { .. } => ty::MQTT_DISCONNECT_RESULT,
            Msg::MqttStatus { .. } => ty::MQTT_STATUS,
            Msg::Error { .. } => ty::ERROR,
        }
    }

    /// Writes the message into `out`; returns its length.
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, Error> {
        let n = self.write(out)?;
        if n > out.len() {
            return Err(Error::BufferTooSmall);
        }
        Ok(n)
    }

    /// The encoded length.
    pub fn encoded_len(&self) -> Result<usize, Error> {
        self.write(&mut [])
    }

    /// Encodes into a new vector.
    #[cfg(feature = "alloc")]
    pub fn to_vec(&self) -> Result<alloc::vec::Vec<u8>, Error> {
        let mut v = alloc::vec![0u8; self.encoded_len()?];
        self.encode(&mut v)?;
        Ok(v)
    }

    fn write(&self, out: &mut [u8]) -> Result<usize, Error> {
        let mut e = Enc { buf: out, pos: 0 };
        let too_long = |b: &[u8]| b.len() > u16::MAX as usize;
        let (flags, count, id) = match self {
            Msg::HttpRequest { headers, .. } | Msg::HttpResponse { headers, .. } => {
                (0, count_of(headers.len(), MAX_HTTP_HEADERS)?, 0)
            }
            Msg::ConfigFetch { keys } => (0, count_of(keys.len(), MAX_CONFIG_KEYS)?, 0),
            Msg::ConfigResult { items, .. } => (0, count_of(items.len(), MAX_CONFIG_KEYS)?, 0),
            Msg::MqttConnect { clean_start, will, .. } => (*clean_start as u8 | (will.is_some() as u8) << 1, 0, 0),
            Msg::MqttConnectResult { session_present, .. } => (*session_present as u8, 0, 0),
            Msg::MqttSubscribe { id, topics } => (0, count_of(topics.len(), MAX_MQTT_TOPICS)?, *id),
            Msg::MqttSubscribeResult { id, codes, .. } => (0, count_of(codes.len(), MAX_MQTT_TOPICS)?, *id),
            Msg::MqttUnsubscribe { id, topics } => (0, count_of(topics.len(), MAX_MQTT_TOPICS)?, *id),
            Msg::MqttUnsubscribeResult { id, .. } | Msg::MqttAck { id } => (0, 0, *id),
            Msg::MqttPublish { id, retain, .. } | Msg::MqttMessage { id, retain, .. } => (*retain as u8, 0, *id),
            Msg::MqttPublishResult { id, .. } => (0, 0, *id),
            _ => (0, 0, 0),
        };
        e.u8(self.ty());
        e.u8(flags);
        e.u16(count);
        e.u32(id);
        match *self {
            Msg::HttpRequest { method, url, timeout_ms, headers, body } => {
                if too_long(method) || too_long(url) || headers.iter().any(too_long) {
                    return Err(Error::Malformed);
                }
                e.str(method);
                e.str(url);
                e.u32(timeout_ms);
                headers.write(&mut e);
                e.blob(body);
            }
            Msg::HttpResponse { result, status, headers, body } => {
                if headers.iter().any(too_long) {
                    return Err(Error::Malformed);
                }
                e.u8(result);
                e.u8(0);
                e.u16(status);
                headers.write(&mut e);
                e.blob(body);
            }
            Msg::ConfigFetch { keys } => {
                if keys.iter().any(|k| too_long(k.2)) {
                    return Err(Error::Malformed);
                }
                keys.write(&mut e)
            }
            Msg::ConfigResult { result, items } => {
                e.u8(result);
                items.write(&mut e);
            }
            Msg::MqttConnect { keepalive_s, will, .. } => {
                e.u16(keepalive_s);
                if let Some(w) = will {
                    if too_long(w.topic) {
                        return Err(Error::Malformed);
                    }
                    e.str(w.topic);
                    e.blob(w.payload);
                    e.u8(w.qos);
                    e.u8(w.retain as u8);
                }
            }
            Msg::MqttConnectResult { state, reason, .. } => {
                e.u8(state);
                e.u32(reason);
            }
            Msg::MqttSubscribe { topics, .. } => {
                if topics.iter().any(|t| too_long(t.0)) {
                    return Err(Error::Malformed);
                }
                topics.write(&mut e)
            }
            Msg::MqttSubscribeResult { state, codes, .. } => {
                e.u8(state);
                e.bytes(codes);
            }
            Msg::MqttUnsubscribe { topics, .. } => {
                if topics.iter().any(too_long) {
                    return Err(Error::Malformed);
                }
                topics.write(&mut e)
            }
            Msg::MqttUnsubscribeResult { state, .. } => e.u8(state),
            Msg::MqttPublish { qos, topic, payload, .. } | Msg::MqttMessage { qos, topic, payload, .. } => {
                if too_long(topic) {
                    return Err(Error::Malformed);
                }
                e.u8(qos);
                e.str(topic);
                e.blob(payload);
            }
            Msg::MqttPublishResult { state, reason, .. } => {
                e.u8(state);
                e.u32(reason);
            }
            Msg::MqttAck { .. } | Msg::MqttDisconnect => {}
            Msg::MqttLost { reason, topic, len } => {
                if too_long(topic) {
                    return Err(Error::Malformed);
                }
                e.u8(reason);
                e.str(topic);
                e.u32(len);
            }
            Msg::MqttDisconnectResult { state, code } => {
                e.u8(state);
                e.u32(code);
            }
            Msg::MqttStatus { state, reason } => {
                e.u8(state);
                e.str(&reason[..reason.len().min(u16::MAX as usize)]);
            }
            Msg::Error { code, text } => {
                e.u8(code);
                e.str(&text[..text.len().min(u16::MAX as usize)]);
            }
        }
        Ok(e.pos)
    }

    /// Decodes and checks one whole message.
    pub fn decode(b: &'a [u8]) -> Result<Msg<'a>, Error> {
        let mut d = Dec { b, pos: 0 };
        let t = d.u8()?;
        let flags = d.u8()?;
        let count = d.u16()?;
        let id = d.u32()?;
        let list = |max: usize| if count as usize > max { Err(Error::Malformed) } else { Ok(count) };
        let m = match t {
            ty::HTTP_REQUEST => {
                let count = list(MAX_HTTP_HEADERS)?;
                let method = d.str()?;
                let url = d.str()?;
                let timeout_ms = d.u32()?;
                let headers = Strs::read(&mut d, count)?;
                Msg::HttpRequest { method, url, timeout_ms, headers, body: d.blob()? }
            }
            ty::HTTP_RESPONSE => {
                let count = list(MAX_HTTP_HEADERS)?;
                let result = d.u8()?;
                d.u8()?;
                let status = d.u16()?;
                let headers = Strs::read(&mut d, count)?;
                Msg::HttpResponse { result, status, headers, body: d.blob()? }
            }
            ty::CONFIG_FETCH => Msg::ConfigFetch { keys: Keys::read(&mut d, list(MAX_CONFIG_KEYS)?)? },
            ty::CONFIG_RESULT => {
                let count = list(MAX_CONFIG_KEYS)?;
                let result = d.u8()?;
                Msg::ConfigResult { result, items: Items::read(&mut d, count)? }
            }
            ty::MQTT_CONNECT => {
                if flags & !3 != 0 {
                    return Err(Error::Malformed);
                }
                let keepalive_s = d.u16()?;
                let will = if flags & 2 != 0 {
                    Some(Will { topic: d.str()?, payload: d.blob()?, qos: d.u8()?, retain: d.bool()? })
                } else {
                    None
                };
                Msg::MqttConnect { clean_start: flags & 1 != 0, keepalive_s, will }
            }
            ty::MQTT_CONNECT_RESULT => {
                Msg::MqttConnectResult { state: d.u8()?, reason: d.u32()?, session_present: flags & 1 != 0 }
            }
            ty::MQTT_SUBSCRIBE => Msg::MqttSubscribe { id, topics: Subs::read(&mut d, list(MAX_MQTT_TOPICS)?)? },
            ty::MQTT_SUBSCRIBE_RESULT => {
                let count = list(MAX_MQTT_TOPICS)?;
                Msg::MqttSubscribeResult { id, state: d.u8()?, codes: d.take(count as usize)? }
            }
            ty::MQTT_UNSUBSCRIBE => Msg::MqttUnsubscribe { id, topics: Strs::read(&mut d, list(MAX_MQTT_TOPICS)?)? },
            ty::MQTT_UNSUBSCRIBE_RESULT => Msg::MqttUnsubscribeResult { id, state: d.u8()? },
            ty::MQTT_PUBLISH | ty::MQTT_MESSAGE => {
                if flags & !1 != 0 {
                    return Err(Error::Malformed);
                }
                let (qos, topic, payload) = (d.u8()?, d.str()?, d.blob()?);
                let retain = flags & 1 != 0;
                if t == ty::MQTT_PUBLISH {
                    Msg::MqttPublish { id, qos, retain, topic, payload }
                } else {
                    Msg::MqttMessage { id, qos, retain, topic, payload }
                }
            }
            ty::MQTT_PUBLISH_RESULT => Msg::MqttPublishResult { id, state: d.u8()?, reason: d.u32()? },
            ty::MQTT_ACK => Msg::MqttAck { id },
            ty::MQTT_LOST => Msg::MqttLost { reason: d.u8()?, topic: d.str()?, len: d.u32()? },
            ty::MQTT_DISCONNECT => Msg::MqttDisconnect,
            ty::MQTT_DISCONNECT_RESULT => Msg::MqttDisconnectResult { state: d.u8()?, code: d.u32()? },
            ty::MQTT_STATUS => Msg::MqttStatus { state: d.u8()?, reason: d.str()? },
            ty::ERROR => Msg::Error { code: d.u8()?, text: d.str()? },
            other => return Err(Error::UnknownType(other)),
        };
        if d.pos != b.len() {
            return Err(Error::Malformed);
        }
        Ok(m)
    }
}

/// What the answer on a config channel says, checked against the request it answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigAnswer<'a> {
    /// One item per key asked for, in request order: its [`config_result`] code and value.
    Items(Items<'a>),
    /// The whole request failed with this [`config_result`] code.
    Failed(u8),
    /// The server answered an error (its code).
    ServerError(u8),
    /// A valid message of another type (its type byte), or an unknown type.
    Unexpected(u8),
    /// Not a valid message, or items that do not match the keys asked for.
    Malformed,
}

impl<'a> ConfigAnswer<'a> {
    /// Decodes `b`, the answer to a [`Msg::ConfigFetch`] of `keys` keys (the apps' SDKs and
    /// the simulated devices read answers the same way).
    pub fn decode(b: &'a [u8], keys: usize) -> ConfigAnswer<'a> {
        match Msg::decode(b) {
            Ok(Msg::ConfigResult { result, .. }) if result != config_result::OK => ConfigAnswer::Failed(result),
            Ok(Msg::ConfigResult { items, .. }) if items.len() == keys => ConfigAnswer::Items(items),
            Ok(Msg::ConfigResult { .. }) => ConfigAnswer::Malformed,
            Ok(Msg::Error { code, .. }) => ConfigAnswer::ServerError(code),
            Ok(m) => ConfigAnswer::Unexpected(m.ty()),
            Err(Error::UnknownType(t)) => ConfigAnswer::Unexpected(t),
            Err(_) => ConfigAnswer::Malformed,
        }
    }
}

/// Splits an HTTP header `Name: value` into its name and value (value without leading spaces).
pub fn split_header(h: &[u8]) -> Option<(&[u8], &[u8])> {
    let colon = h.iter().position(|&c| c == b':')?;
    let (name, rest) = h.split_at(colon);
    let mut value = &rest[1..];
    while let [b' ' | b'\t', tail @ ..] = value {
        value = tail;
    }
    Some((name, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(m: Msg<'_>) {
        let mut buf = [0u8; 2048];
        let n = m.encode(&mut buf).unwrap();
        assert_eq!(m.encoded_len(), Ok(n));
        let d = Msg::decode(&buf[..n]).unwrap();
        // Lists decode as Raw; compare item by item through a second encoding.
        let mut again = [0u8; 2048];
        let n2 = d.encode(&mut again).unwrap();
        assert_eq!(&buf[..n], &again[..n2], "{m:?}");
        for cut in 0..n {
            assert!(Msg::decode(&buf[..cut]).is_err(), "{m:?} cut at {cut}");
        }
        let mut long = buf;
        long[n] = 0;
        assert_eq!(Msg::decode(&long[..n + 1]), Err(Error::Malformed), "trailing byte");
        assert_eq!(m.encode(&mut buf[..n - 1]), Err(Error::BufferTooSmall));
    }

    #[test]
    fn every_message_roundtrips_and_every_truncation_fails() {
        let headers: &[&[u8]] = &[b"Accept: text/plain", b"X-Keel: 1"];
        roundtrip(Msg::HttpRequest {
            method: b"GET",
            url: b"https://example.com/x?y=1",
            timeout_ms: 5000,
            headers: Strs::Items(headers),
            body: b"",
        });
        roundtrip(Msg::HttpResponse { result: 0, status: 200, headers: Strs::Items(headers), body: b"hello" });
        roundtrip(Msg::ConfigFetch { keys: Keys::Items(&[(0, 1, b"greeting"), (1, 0, b"api/key")]) });
        roundtrip(Msg::ConfigResult { result: 0, items: Items::Items(&[(0, b"hi"), (4, b"")]) });
        roundtrip(Msg::MqttConnect {
            clean_start: true,
            keepalive_s: 60,
            will: Some(Will { topic: b"dev/gone", payload: b"bye", qos: 1, retain: true }),
        });
        roundtrip(Msg::MqttConnect { clean_start: false, keepalive_s: 0, will: None });
        roundtrip(Msg::MqttConnectResult { state: 0, reason: 0, session_present: true });
        roundtrip(Msg::MqttSubscribe { id: 7, topics: Subs::Items(&[(b"cmd/#", 1), (b"x", 0)]) });
        roundtrip(Msg::MqttSubscribeResult { id: 7, state: 0, codes: &[1, 0] });
        roundtrip(Msg::MqttUnsubscribe { id: 8, topics: Strs::Items(&[b"cmd/#"]) });
        roundtrip(Msg::MqttUnsubscribeResult { id: 8, state: 0 });
        roundtrip(Msg::MqttPublish { id: 9, qos: 1, retain: false, topic: b"t", payload: &[0; 300] });
        roundtrip(Msg::MqttPublishResult { id: 9, state: 0, reason: 0 });
        roundtrip(Msg::MqttMessage { id: u32::MAX, qos: 1, retain: true, topic: b"cmd/led", payload: b"on" });
        roundtrip(Msg::MqttLost { reason: 1, topic: b"big", len: 100_000 });
        roundtrip(Msg::MqttDisconnectResult { state: 0, code: 0 });
        roundtrip(Msg::MqttStatus { state: mqtt_session::RECONNECTING, reason: b"broker closed the connection" });
        roundtrip(Msg::Error { code: http_result::BAD_REQUEST, text: b"malformed" });
        // Messages without fields after the header.
        for m in [Msg::MqttAck { id: 3 }, Msg::MqttDisconnect] {
            let mut buf = [0u8; 16];
            let n = m.encode(&mut buf).unwrap();
            assert_eq!(n, HEADER_LEN);
            assert_eq!(Msg::decode(&buf[..n]), Ok(m));
        }
    }

    #[test]
    fn hostile_messages_are_refused() {
        // A list count above its limit, whatever follows.
        let mut m = [0u8; 64];
        m[0] = ty::HTTP_REQUEST;
        m[2..4].copy_from_slice(&33u16.to_le_bytes());
        assert_eq!(Msg::decode(&m), Err(Error::Malformed));
        // A length that runs past the end (and one near usize::MAX on 32-bit targets).
        let mut m = [ty::HTTP_RESPONSE, 0, 0, 0, 0, 0, 0, 0, 0, 0, 200, 0, 0xFF, 0xFF, 0xFF, 0xFF];
        assert_eq!(Msg::decode(&m), Err(Error::Malformed));
        m[12..16].copy_from_slice(&0u32.to_le_bytes());
        assert!(Msg::decode(&m).is_ok());
        // Unknown type, unknown flags, a bool that is not 0/1.
        assert_eq!(Msg::decode(&[0x55, 0, 0, 0, 0, 0, 0, 0]), Err(Error::UnknownType(0x55)));
        assert_eq!(Msg::decode(&[ty::MQTT_CONNECT, 4, 0, 0, 0, 0, 0, 0, 60, 0]), Err(Error::Malformed));
        let mut buf = [0u8; 64];
        let n = Msg::MqttConnect {
            clean_start: false,
            keepalive_s: 1,
            will: Some(Will { topic: b"t", payload: b"", qos: 0, retain: true }),
        }
        .encode(&mut buf)
        .unwrap();
        buf[n - 1] = 2;
        assert_eq!(Msg::decode(&buf[..n]), Err(Error::Malformed));
        // Too many items to encode.
        let many: [&[u8]; 33] = [b"A: b"; 33];
        assert_eq!(
            Msg::HttpResponse { result: 0, status: 200, headers: Strs::Items(&many), body: b"" }.encode(&mut [0; 4096]),
            Err(Error::Malformed)
        );
        // Empty input.
        assert_eq!(Msg::decode(&[]), Err(Error::Malformed));
    }

    #[test]
    fn decoded_lists_iterate_in_order() {
        let mut buf = [0u8; 256];
        let n = Msg::ConfigFetch { keys: Keys::Items(&[(0, 1, b"a"), (1, 0, b"bb")]) }.encode(&mut buf).unwrap();
        let Msg::ConfigFetch { keys } = Msg::decode(&buf[..n]).unwrap() else { panic!() };
        let v: [Key<'_>; 2] = {
            let mut it = keys.iter();
            [it.next().unwrap(), it.next().unwrap()]
        };
        assert_eq!(v, [(0, 1, &b"a"[..]), (1, 0, &b"bb"[..])]);
        assert_eq!(keys.len(), 2);
        assert_eq!(split_header(b"Content-Type:  text/html"), Some((&b"Content-Type"[..], &b"text/html"[..])));
        assert_eq!(split_header(b"nocolon"), None);
    }

    #[test]
    fn a_config_answer_is_checked_against_its_request() {
        let enc = |m: Msg<'_>| m.to_vec().unwrap();
        let two = enc(Msg::ConfigResult { result: config_result::OK, items: Items::Items(&[(0, b"a"), (4, b"")]) });
        match ConfigAnswer::decode(&two, 2) {
            ConfigAnswer::Items(items) => {
                let got: alloc::vec::Vec<_> = items.iter().collect();
                assert_eq!(got, [(0, &b"a"[..]), (4, &b""[..])]);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(ConfigAnswer::decode(&two, 3), ConfigAnswer::Malformed, "an item short");
        let failed = enc(Msg::ConfigResult { result: config_result::BAD_REQUEST, items: Items::Items(&[]) });
        assert_eq!(ConfigAnswer::decode(&failed, 1), ConfigAnswer::Failed(config_result::BAD_REQUEST));
        assert_eq!(ConfigAnswer::decode(&enc(Msg::Error { code: 9, text: b"no" }), 1), ConfigAnswer::ServerError(9));
        let other = enc(Msg::ConfigFetch { keys: Keys::Items(&[]) });
        assert_eq!(ConfigAnswer::decode(&other, 1), ConfigAnswer::Unexpected(ty::CONFIG_FETCH));
        assert_eq!(ConfigAnswer::decode(&[0xEE, 0, 0, 0, 0, 0, 0, 0], 1), ConfigAnswer::Unexpected(0xEE));
        assert_eq!(ConfigAnswer::decode(&two[..two.len() - 1], 2), ConfigAnswer::Malformed, "truncated");
    }
}
