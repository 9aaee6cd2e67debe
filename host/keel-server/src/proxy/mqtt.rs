//! Managed MQTT: the server holds an MQTT 3.1.1 session with a broker for each (device,
//! profile), on the device's behalf, and the device's app drives it with [`MqttCommand`]s and
//! sees [`MqttEvent`]s through an [`MqttAttachment`].
//!
//! **The session belongs to the device, not to the app's channel.** [`MqttHub::attach`] joins an
//! attachment to the session (creating it); one attachment at a time — a new one replaces the
//! old (whose `events` then end). When the attachment is dropped (the device's link went
//! down), the broker connection stays up for [`MqttLimits::detached_grace`]: messages keep
//! arriving and are queued ([`MqttLimits::queue_messages`] / [`MqttLimits::queue_bytes`]; more
//! are dropped and reported as [`MqttEvent::Lost`] on re-attach) and delivered when the device
//! re-attaches. A re-attach's `Connect { clean_start: false }` finds the session
//! (`session_present: true`, subscriptions kept); `clean_start: true` resets it. After the grace
//! period the broker connection is closed without DISCONNECT (so the broker publishes the will).
//!
//! **Acknowledgements**: QoS 1 messages are acknowledged to the broker only when the device
//! sends [`MqttCommand::Ack`] (rumqttc's manual acks); a message delivered to an attachment that
//! went away unacknowledged is delivered again to the next one, and messages still
//! unacknowledged when the broker connection drops are redelivered by the broker. Messages the
//! server drops (rate, size, queue) are acknowledged to the broker so they do not come back.
//!
//! **Reconnection**: after the first successful connection, a lost broker connection is
//! retried with exponential backoff ([`MqttLimits::reconnect_min`] to
//! [`MqttLimits::reconnect_max`]), announced by [`MqttEvent::Status`] `Reconnecting` and then
//! `Connected`; if the broker lost the session, the session's subscriptions are made again and
//! requests in flight fail with [`RequestState::SocketError`]. A reconnection refused by the
//! broker (credentials) or by the destination policy ends it: `Status { Down }`.
//!
//! **Destinations**: every connection goes through the hub's relay, a CONNECT proxy on a
//! loopback port (per-session secret in `Proxy-Authorization`) that resolves the broker's name,
//! checks each address with the session's [`Destinations`] and connects to an allowed one.
//! rumqttc's TLS runs end to end through it, with the broker's *name* as SNI and for the
//! certificate check. The relay is the only way rumqttc 0.25 lets the server choose the
//! address connected to. A relay connection ends with the broker connection it was made for
//! (when the session drops it), 5 s after either side closed its direction, or after three
//! keepalive periods without a byte either way; nothing waits on a silent broker for ever.
//!
//! **Limits** ([`MqttLimits`]): topic length, payload size, topics per (un)subscribe,
//! publishes awaiting their result per session, in number and bytes (bounds the app can keep
//! under, and all a broker that stops reading can make the server hold: the gateway holds the
//! app's further messages rather than refuse them while the session catches up), sessions per
//! hub and per account
//! ([`MqttLimits::max_sessions_per_account`]: one tenant's devices cannot take every session),
//! and a token bucket on messages from the broker per session (excess dropped, reported as
//! [`LostReason::RateLimited`]). A message from the broker
//! with a longer topic or a larger payload is dropped ([`LostReason::TooLarge`]), and neither is
//! queued. The client reads packets up to [`MAX_BROKER_PACKET`] so that such a message is read and
//! reported, not refused: rumqttc cannot skip a packet over its limit, it ends the connection, and
//! the broker would deliver the same QoS 1 message again after every reconnect (a session stuck
//! in a reconnect loop). Only a packet above that (1 MiB) ends the connection: it is reported as
//! lost (`TooLarge`, empty topic), the next connection starts clean (the broker forgets it; the
//! subscriptions are made again), and if one comes again before that connection carried a
//! message (a retained one), the session goes down instead of looping (see `drive`).

/// The largest packet the session reads from a broker (see the module docs).
pub const MAX_BROKER_PACKET: usize = 1 << 20;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, LastWill, MqttOptions, Outgoing, Packet, Proxy, ProxyAuth,
    ProxyType, Publish, QoS, SubscribeFilter, SubscribeReasonCode, TlsConfiguration, Transport,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::rustls;

use super::{connect_allowed, find_rustls_error, AbortOnDrop, ConnectError, Destinations, NameLookups, Tenant};

/// Where and how to reach a broker (a device profile's settings).
#[derive(Clone, PartialEq, Eq)]
pub struct BrokerSettings {
    /// The broker's host name or address.
    pub host: String,
    /// The broker's port.
    pub port: u16,
    /// TLS (scheme `mqtts`) or plain TCP (`mqtt`).
    pub tls: bool,
    /// CA certificates (PEM) the broker's certificate must chain to; `None`: Mozilla's roots.
    pub ca_pem: Option<Vec<u8>>,
    /// A client certificate chain (PEM) for TLS client authentication, with `client_key_pem`.
    pub client_cert_pem: Option<Vec<u8>>,
    /// The client certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub client_key_pem: Option<Vec<u8>>,
    /// MQTT user name.
    pub username: Option<String>,
    /// MQTT password (sent only with a user name).
    pub password: Option<String>,
    /// The MQTT client identifier (non-empty).
    pub client_id: String,
}

impl std::fmt::Debug for BrokerSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerSettings")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls)
            .field("client_id", &self.client_id)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// A will message: published by the broker if the session's connection ends without
/// DISCONNECT (server crash, grace period over).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Will {
    /// Topic (no wildcards).
    pub topic: String,
    /// Payload.
    pub payload: Vec<u8>,
    /// 0 or 1.
    pub qos: u8,
    /// Retained.
    pub retain: bool,
}

/// What the device's app asks of its session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MqttCommand {
    /// Connect (or resume the session kept for this device). Answered by
    /// [`MqttEvent::ConnectResult`].
    Connect {
        /// Start a new session (the broker's too) instead of resuming one.
        clean_start: bool,
        /// Keepalive in seconds, 1..=3600; 0 means 60.
        keepalive_s: u16,
        /// The will message.
        will: Option<Will>,
    },
    /// Subscribe to 1..=8 topic filters with QoS 0 or 1. Answered by
    /// [`MqttEvent::SubscribeResult`].
    Subscribe {
        /// The device's request id, echoed.
        id: u32,
        /// (filter, QoS).
        topics: Vec<(String, u8)>,
    },
    /// Unsubscribe from 1..=8 topic filters. Answered by [`MqttEvent::UnsubscribeResult`].
    Unsubscribe {
        /// The device's request id, echoed.
        id: u32,
        /// Filters.
        topics: Vec<String>,
    },
    /// Publish with QoS 0 (answered when sent) or 1 (answered when the broker acknowledged).
    /// Answered by [`MqttEvent::PublishResult`].
    Publish {
        /// The device's request id, echoed.
        id: u32,
        /// Topic (no wildcards).
        topic: String,
        /// Payload.
        payload: Vec<u8>,
        /// 0 or 1.
        qos: u8,
        /// Retained.
        retain: bool,
    },
    /// The device processed the QoS 1 [`MqttEvent::Message`] with this id: acknowledge it to
    /// the broker. Unknown ids are ignored.
    Ack {
        /// The message's id.
        id: u32,
    },
    /// Disconnect gracefully (no will) and forget the session. Answered by
    /// [`MqttEvent::Disconnected`].
    Disconnect,
}

/// How a request ended (numbering is part of the device protocol).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum RequestState {
    /// Done.
    Completed = 0,
    /// The command's parameters break a rule or a limit.
    InvalidParameters = 1,
    /// This attachment already connected.
    AlreadyConnected = 2,
    /// No broker connection (send `Connect` first).
    NotConnected = 3,
    /// The broker's name did not resolve.
    NxDomain = 4,
    /// The broker's certificate does not chain to the configured CA.
    UnknownCa = 5,
    /// The broker's certificate has expired (or is not yet valid).
    CertificateExpired = 6,
    /// Connection, TLS or protocol failure, or the connection was lost before the answer.
    SocketError = 7,
    /// A limit was reached (in-flight publishes, request queue, sessions).
    RateLimited = 8,
    /// The destination policy refused the broker's addresses.
    Denied = 9,
    /// The broker refused the connection (the reason is its CONNACK return code).
    BrokerRefused = 10,
}

/// The broker connection's state, in [`MqttEvent::Status`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum SessionState {
    /// Connected (again).
    Connected = 0,
    /// The connection was lost; retrying with backoff.
    Reconnecting = 1,
    /// Given up (the broker or the policy refused a reconnection); send `Connect` again.
    Down = 2,
}

/// Why messages for the device were dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum LostReason {
    /// The queue of messages waiting for the device was full.
    QueueFull = 0,
    /// The session's inbound message rate was exceeded.
    RateLimited = 1,
    /// The topic is longer than [`MqttLimits::max_topic_len`] or the payload larger than
    /// [`MqttLimits::max_payload`].
    TooLarge = 2,
}

/// What the session tells the device's app.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MqttEvent {
    /// The answer to `Connect`. `reason` is the broker's return code for
    /// [`RequestState::BrokerRefused`], else 0.
    ConnectResult {
        /// Outcome.
        state: RequestState,
        /// Broker return code.
        reason: u32,
        /// The session (subscriptions, queued messages) was resumed.
        session_present: bool,
    },
    /// The answer to `Subscribe`: one code per filter (the granted QoS, or 0x80 refused).
    SubscribeResult {
        /// The request's id.
        id: u32,
        /// Outcome.
        state: RequestState,
        /// Codes (empty unless completed).
        codes: Vec<u8>,
    },
    /// The answer to `Unsubscribe`.
    UnsubscribeResult {
        /// The request's id.
        id: u32,
        /// Outcome.
        state: RequestState,
    },
    /// The answer to `Publish`.
    PublishResult {
        /// The request's id.
        id: u32,
        /// Outcome.
        state: RequestState,
        /// Reserved (0).
        reason: u32,
    },
    /// A message from the broker. QoS 1 messages await the device's [`MqttCommand::Ack`].
    Message {
        /// The session's id of this message (for `Ack`).
        id: u32,
        /// Topic.
        topic: String,
        /// Payload.
        payload: Vec<u8>,
        /// 0 or 1.
        qos: u8,
        /// Retained message.
        retain: bool,
    },
    /// `count` messages were dropped for `reason`; `topic` and `len` are the last one's.
    Lost {
        /// Why.
        reason: LostReason,
        /// The last dropped message's topic (cut to [`MqttLimits::max_topic_len`] bytes).
        topic: String,
        /// The last dropped message's payload length.
        len: u32,
        /// How many were dropped since the last report.
        count: u32,
    },
    /// The broker connection's state changed.
    Status {
        /// New state.
        state: SessionState,
        /// Why (empty when connected).
        reason: String,
    },
    /// The answer to `Disconnect`.
    Disconnected {
        /// Outcome ([`RequestState::NotConnected`] if there was no connection).
        state: RequestState,
        /// Reserved (0).
        code: u32,
    },
}

/// The hub's bounds.
#[derive(Clone, Debug, PartialEq)]
pub struct MqttLimits {
    /// Sessions held at once. Default 10,000.
    pub max_sessions: usize,
    /// Sessions held at once for the devices of one account. Default 10,000, the server-wide
    /// default: no share, since a session is one device's, and a single-account server must be
    /// able to give every device one. A server shared by several tenants sets a share
    /// (`KEEL_MQTT_SESSIONS_PER_ACCOUNT`).
    pub max_sessions_per_account: usize,
    /// How long a session outlives its attachment. Default 10 min.
    pub detached_grace: Duration,
    /// Messages waiting for the device (attached or not). Default 64.
    pub queue_messages: usize,
    /// Bytes (topics and payloads) of the messages waiting for the device. Default 64 KiB.
    pub queue_bytes: usize,
    /// A topic or filter's length in bytes. Default 256.
    pub max_topic_len: usize,
    /// A payload's size, either way. Default 16 KiB.
    pub max_payload: usize,
    /// Filters of one (un)subscribe. Default 8.
    pub max_topics_per_request: usize,
    /// QoS 1 publishes sent to the broker and not yet acknowledged (the MQTT in-flight window).
    /// Default 16.
    pub max_inflight_publishes: usize,
    /// Publishes awaiting their result per session: QoS 0 until written to the broker
    /// connection, QoS 1 until acknowledged (those beyond the in-flight window wait in the
    /// session). One more is refused with [`RequestState::RateLimited`]. An app that keeps at
    /// most this many unanswered is never refused, however the server's tasks are scheduled.
    /// Default 64.
    pub max_pending_publishes: usize,
    /// ... and their topics' and payloads' bytes: what a broker that stops reading can make
    /// the server hold for one session. Default 64 KiB (four of the largest publishes).
    pub max_pending_bytes: usize,
    /// Messages from the broker per second per session, sustained. Default 20.
    pub inbound_per_second: f64,
    /// ... and in a burst. Default 100.
    pub inbound_burst: f64,
    /// First reconnection delay. Default 1 s.
    pub reconnect_min: Duration,
    /// Longest reconnection delay. Default 60 s.
    pub reconnect_max: Duration,
    /// A connection attempt's time (TCP, relay, TLS, CONNACK), whole seconds. Default 10 s.
    pub connect_timeout: Duration,
    /// Events an attachment's channel holds. Default 64.
    pub events_capacity: usize,
    /// Commands an attachment's channel holds. Default 32.
    pub commands_capacity: usize,
}

impl Default for MqttLimits {
    fn default() -> Self {
        MqttLimits {
            max_sessions: 10_000,
            max_sessions_per_account: 10_000,
            detached_grace: Duration::from_secs(600),
            queue_messages: 64,
            queue_bytes: 64 << 10,
            max_topic_len: 256,
            max_payload: 16 << 10,
            max_topics_per_request: 8,
            max_inflight_publishes: 16,
            max_pending_publishes: 64,
            max_pending_bytes: 64 << 10,
            inbound_per_second: 20.0,
            inbound_burst: 100.0,
            reconnect_min: Duration::from_secs(1),
            reconnect_max: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(10),
            events_capacity: 64,
            commands_capacity: 32,
        }
    }
}

/// Counters of a hub ([`MqttHub::stats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MqttStats {
    /// Sessions held now.
    pub sessions: u64,
    /// Broker connections made (first connections and reconnections).
    pub connections: u64,
    /// Connection attempts that failed.
    pub connect_failures: u64,
    /// Connections refused by the destination policy.
    pub denied: u64,
    /// Messages published by devices.
    pub published: u64,
    /// Messages received from brokers.
    pub received: u64,
    /// Messages handed to devices.
    pub delivered: u64,
    /// Messages dropped (rate, size, queue).
    pub lost: u64,
    /// Connections through the relay open now (each holds a socket to the broker).
    pub relay_connections: u64,
    /// Attachments refused for a session limit (server-wide or the account's).
    pub refused: u64,
}

struct Counters {
    connections: AtomicU64,
    connect_failures: AtomicU64,
    denied: AtomicU64,
    published: AtomicU64,
    received: AtomicU64,
    delivered: AtomicU64,
    lost: AtomicU64,
    relay_connections: AtomicU64,
    refused: AtomicU64,
    /// Bumped after the counters (or the number of sessions) may have changed.
    changed: tokio::sync::watch::Sender<()>,
}

impl Counters {
    fn new() -> Self {
        Counters {
            connections: AtomicU64::new(0),
            connect_failures: AtomicU64::new(0),
            denied: AtomicU64::new(0),
            published: AtomicU64::new(0),
            received: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            lost: AtomicU64::new(0),
            relay_connections: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            changed: tokio::sync::watch::Sender::new(()),
        }
    }

    fn changed(&self) {
        self.changed.send_modify(|_| ());
    }
}

/// Why [`MqttHub::attach`] refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachError {
    /// [`MqttLimits::max_sessions`] sessions exist.
    TooManySessions,
    /// [`MqttLimits::max_sessions_per_account`] sessions of the device's account exist.
    AccountSessions,
}

impl std::fmt::Display for AttachError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AttachError::TooManySessions => f.write_str("too many MQTT sessions"),
            AttachError::AccountSessions => f.write_str("too many MQTT sessions for the account"),
        }
    }
}

impl std::error::Error for AttachError {}

/// The device's end of its session. Dropping it detaches (the session stays for the grace
/// period).
#[derive(Debug)]
pub struct MqttAttachment {
    /// Commands to the session.
    pub commands: mpsc::Sender<MqttCommand>,
    /// Events from the session; ends when the attachment is replaced or the session closed.
    pub events: mpsc::Receiver<MqttEvent>,
}

enum Ctl {
    Attach {
        commands: mpsc::Receiver<MqttCommand>,
        events: mpsc::Sender<MqttEvent>,
        settings: Box<BrokerSettings>,
        dest: Arc<dyn Destinations>,
    },
    Detach,
    Close,
}

struct Entry {
    id: u64,
    /// The account of the device that made the session (its share counts it).
    account: String,
    ctl: mpsc::UnboundedSender<Ctl>,
}

/// The sessions, and how many each account holds (accounts with none have no entry).
#[derive(Default)]
struct Sessions {
    map: HashMap<Key, Entry>,
    per_account: HashMap<String, usize>,
}

impl Sessions {
    fn get(&self, key: &Key) -> Option<&Entry> {
        self.map.get(key)
    }

    fn len(&self) -> usize {
        self.map.len()
    }

    fn values(&self) -> impl Iterator<Item = &Entry> {
        self.map.values()
    }

    fn of_account(&self, account: &str) -> usize {
        self.per_account.get(account).copied().unwrap_or(0)
    }

    fn insert(&mut self, key: Key, entry: Entry) {
        *self.per_account.entry(entry.account.clone()).or_insert(0) += 1;
        if let Some(old) = self.map.insert(key, entry) {
            self.uncount(&old.account);
        }
    }

    fn remove(&mut self, key: &Key) -> Option<Entry> {
        let entry = self.map.remove(key)?;
        self.uncount(&entry.account);
        Some(entry)
    }

    fn uncount(&mut self, account: &str) {
        if let Some(n) = self.per_account.get_mut(account) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_account.remove(account);
            }
        }
    }
}

type Key = (String, String);

struct Shared {
    limits: MqttLimits,
    sessions: Mutex<Sessions>,
    next_id: AtomicU64,
    counters: Arc<Counters>,
    relay: Arc<Relay>,
}

/// The server-wide registry of managed MQTT sessions.
pub struct MqttHub {
    shared: Arc<Shared>,
    listener: Mutex<Option<std::net::TcpListener>>,
    relay_task: Mutex<Option<AbortOnDrop>>,
}

impl std::fmt::Debug for MqttHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttHub").field("stats", &self.stats()).finish()
    }
}

impl Drop for MqttHub {
    fn drop(&mut self) {
        for entry in self.shared.sessions.lock().unwrap_or_else(|e| e.into_inner()).values() {
            let _ = entry.ctl.send(Ctl::Close);
        }
    }
}

impl MqttHub {
    /// A hub with `limits`; binds its relay's loopback port (the relay starts with the first
    /// attachment).
    pub fn new(limits: MqttLimits) -> std::io::Result<Self> {
        MqttHub::with_lookups(limits, NameLookups::default())
    }

    /// As [`MqttHub::new`], resolving brokers' names through `lookups` (shared with the HTTP
    /// proxy).
    pub fn with_lookups(limits: MqttLimits, lookups: NameLookups) -> std::io::Result<Self> {
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
        listener.set_nonblocking(true)?;
        let counters = Arc::new(Counters::new());
        let relay = Arc::new(Relay {
            port: listener.local_addr()?.port(),
            targets: Mutex::new(HashMap::new()),
            connect_timeout: limits.connect_timeout,
            counters: counters.clone(),
            lookups,
        });
        Ok(MqttHub {
            shared: Arc::new(Shared {
                limits,
                sessions: Mutex::new(Sessions::default()),
                next_id: AtomicU64::new(1),
                counters,
                relay,
            }),
            listener: Mutex::new(Some(listener)),
            relay_task: Mutex::new(None),
        })
    }

    /// The hub's limits.
    pub fn limits(&self) -> &MqttLimits {
        &self.shared.limits
    }

    /// Attaches the app of `who`'s device to its session for `profile`, creating the session if
    /// needed.
    /// One attachment per (device, profile): a new attach replaces the old one (whose `events`
    /// end). `settings` and `dest` apply from the session's next new broker connection. Must be
    /// called within a Tokio runtime.
    pub fn attach(
        &self,
        who: &Tenant,
        profile: &str,
        settings: BrokerSettings,
        dest: Arc<dyn Destinations>,
    ) -> Result<MqttAttachment, AttachError> {
        self.start_relay();
        let limits = &self.shared.limits;
        let (cmd_tx, cmd_rx) = mpsc::channel(limits.commands_capacity.max(1));
        let (ev_tx, ev_rx) = mpsc::channel(limits.events_capacity.max(1));
        let attachment = MqttAttachment { commands: cmd_tx, events: ev_rx };
        let key = (who.device.clone(), profile.to_string());
        let mut sessions = self.shared.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let mut ctl = Ctl::Attach { commands: cmd_rx, events: ev_tx, settings: Box::new(settings), dest };
        if let Some(entry) = sessions.get(&key) {
            match entry.ctl.send(ctl) {
                Ok(()) => return Ok(attachment),
                Err(mpsc::error::SendError(c)) => ctl = c, // the session ended: start another
            }
            sessions.remove(&key);
        }
        if sessions.of_account(&who.account) >= limits.max_sessions_per_account {
            drop(sessions);
            self.shared.counters.refused.fetch_add(1, Ordering::Relaxed);
            return Err(AttachError::AccountSessions);
        }
        if sessions.len() >= limits.max_sessions {
            drop(sessions);
            self.shared.counters.refused.fetch_add(1, Ordering::Relaxed);
            return Err(AttachError::TooManySessions);
        }
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let (ctl_tx, ctl_rx) = mpsc::unbounded_channel();
        let _ = ctl_tx.send(ctl);
        sessions.insert(key.clone(), Entry { id, account: who.account.clone(), ctl: ctl_tx });
        drop(sessions);
        self.shared.counters.changed();
        let session = Session::new(self.shared.clone(), key, who.account.clone(), id, ctl_rx);
        tokio::spawn(session.run());
        Ok(attachment)
    }

    /// Detaches the device's app from its session for `profile` (as dropping the attachment
    /// does); the session stays for the grace period.
    pub fn detach(&self, device_id: &str, profile: &str) {
        self.send(device_id, profile, Ctl::Detach);
    }

    /// Ends the session for `profile` now, without DISCONNECT (the broker publishes the will).
    /// A later attach starts a new session.
    pub fn close(&self, device_id: &str, profile: &str) {
        let mut sessions = self.shared.sessions.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = sessions.remove(&(device_id.to_string(), profile.to_string())) {
            let _ = entry.ctl.send(Ctl::Close);
        }
        drop(sessions);
        self.shared.counters.changed();
    }

    fn send(&self, device_id: &str, profile: &str, ctl: Ctl) {
        let sessions = self.shared.sessions.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = sessions.get(&(device_id.to_string(), profile.to_string())) {
            let _ = entry.ctl.send(ctl);
        }
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> MqttStats {
        let c = &self.shared.counters;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        MqttStats {
            sessions: self.shared.sessions.lock().unwrap_or_else(|e| e.into_inner()).len() as u64,
            connections: l(&c.connections),
            connect_failures: l(&c.connect_failures),
            denied: l(&c.denied),
            published: l(&c.published),
            received: l(&c.received),
            delivered: l(&c.delivered),
            lost: l(&c.lost),
            relay_connections: l(&c.relay_connections),
            refused: l(&c.refused),
        }
    }

    /// Waits until `pred` holds for the counters (checked again whenever they may have changed)
    /// and returns them. Callers bound the wait (`tokio::time::timeout`).
    pub async fn wait_stats(&self, mut pred: impl FnMut(&MqttStats) -> bool) -> MqttStats {
        let mut changed = self.shared.counters.changed.subscribe();
        loop {
            let stats = self.stats();
            if pred(&stats) {
                return stats;
            }
            // The sender lives as long as the hub.
            let _ = changed.changed().await;
        }
    }

    fn start_relay(&self) {
        let mut task = self.relay_task.lock().unwrap_or_else(|e| e.into_inner());
        if task.is_some() {
            return;
        }
        let Some(listener) = self.listener.lock().unwrap_or_else(|e| e.into_inner()).take() else { return };
        let Ok(listener) = tokio::net::TcpListener::from_std(listener) else { return };
        let relay = self.shared.relay.clone();
        *task = Some(AbortOnDrop(tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((stream, _)) => drop(tokio::spawn(relay.clone().serve(stream))),
                    Err(_) => tokio::time::sleep(ACCEPT_ERROR_PAUSE).await,
                }
            }
        })));
    }
}

// ---------------------------------------------------------------------------------------------
// The relay: a loopback CONNECT proxy that applies the destination policy.

/// Where one session may connect.
struct Target {
    /// The device the session is for (its name lookups count toward its and its account's
    /// limits).
    who: Tenant,
    scheme: &'static str,
    host: String,
    port: u16,
    dest: Arc<dyn Destinations>,
    /// A relay connection with no traffic either way for this long is closed (a few keepalive
    /// periods: the client pings at least once per period).
    idle: Duration,
    /// Why the relay refused the last attempt (read by the session's driver).
    failure: Mutex<Option<(RequestState, String)>>,
    /// Set when the broker connection this target was made for is gone ([`TargetGuard`]):
    /// its relay connections close and new ones are refused.
    closed: tokio::sync::watch::Sender<bool>,
}

/// Closes a [`Target`] when dropped (with the [`Conn`] that holds it).
struct TargetGuard(Arc<Target>);

impl Drop for TargetGuard {
    fn drop(&mut self) {
        self.0.closed.send_replace(true);
    }
}

/// How long a relay connection stays up after one direction ended (the other may still
/// deliver what is on its way).
const RELAY_LINGER: Duration = Duration::from_secs(5);

/// Pause after a failed accept (out of file descriptors, say) before the next one.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

struct Relay {
    port: u16,
    /// By the expected `Proxy-Authorization` value.
    targets: Mutex<HashMap<String, Arc<Target>>>,
    connect_timeout: Duration,
    counters: Arc<Counters>,
    lookups: NameLookups,
}

impl Relay {
    /// Serves one connection from a session's client, counted in `relay_connections` until both
    /// its sockets are closed.
    async fn serve(self: Arc<Self>, inbound: TcpStream) {
        let counters = self.counters.clone();
        counters.relay_connections.fetch_add(1, Ordering::Relaxed);
        counters.changed();
        self.serve_inner(inbound).await;
        counters.relay_connections.fetch_sub(1, Ordering::Relaxed);
        counters.changed();
    }

    async fn serve_inner(self: Arc<Self>, mut inbound: TcpStream) {
        let mut head = Vec::with_capacity(512);
        let read_head = async {
            let mut buf = [0u8; 512];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = inbound.read(&mut buf).await.ok()?;
                if n == 0 || head.len() + n > 4096 {
                    return None;
                }
                head.extend_from_slice(&buf[..n]);
            }
            Some(())
        };
        if tokio::time::timeout(Duration::from_secs(10), read_head).await.ok().flatten().is_none() {
            return;
        }
        let end = head.windows(4).position(|w| w == b"\r\n\r\n").map_or(head.len(), |p| p + 4);
        let text = String::from_utf8_lossy(&head[..end]).into_owned();
        let mut lines = text.split("\r\n");
        let request = lines.next().unwrap_or("");
        let auth = lines
            .filter_map(|l| l.split_once(':'))
            .find(|(n, _)| n.trim().eq_ignore_ascii_case("proxy-authorization"))
            .map(|(_, v)| v.trim().to_string());
        let target = auth.and_then(|a| self.targets.lock().unwrap_or_else(|e| e.into_inner()).get(&a).cloned());
        let Some(target) = target.filter(|t| !*t.closed.borrow()) else {
            let _ = inbound.write_all(b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n").await;
            return;
        };
        let wanted = format!("CONNECT {}:{} ", target.host, target.port);
        if !request.to_ascii_lowercase().starts_with(&wanted.to_ascii_lowercase()) {
            let _ = inbound.write_all(b"HTTP/1.1 403 Forbidden\r\n\r\n").await;
            return;
        }
        let mut closed = target.closed.subscribe();
        tokio::select! {
            _ = self.relay_to(&target, inbound, &head[end..]) => {}
            _ = closed.wait_for(|c| *c) => {}
        }
    }

    /// Connects to the target and relays between it and `inbound` (`early`: bytes the client
    /// sent after its request).
    async fn relay_to(&self, target: &Target, mut inbound: TcpStream, early: &[u8]) {
        let fail = |state: RequestState, reason: String| {
            *target.failure.lock().unwrap_or_else(|e| e.into_inner()) = Some((state, reason));
        };
        let connected = connect_allowed(
            &self.lookups,
            &target.who,
            target.dest.as_ref(),
            target.scheme,
            &target.host,
            target.port,
            self.connect_timeout,
        )
        .await;
        let mut outbound = match connected {
            Ok(s) => s,
            Err(e) => {
                let (state, reason, answer): (_, _, &[u8]) = match e {
                    ConnectError::Denied(r) => (RequestState::Denied, r, b"HTTP/1.1 403 Forbidden\r\n\r\n"),
                    ConnectError::NxDomain(r) => (RequestState::NxDomain, r, b"HTTP/1.1 502 Bad Gateway\r\n\r\n"),
                    ConnectError::LookupsBusy => (
                        RequestState::RateLimited,
                        "too many name lookups in progress".into(),
                        b"HTTP/1.1 503 Service Unavailable\r\n\r\n",
                    ),
                    ConnectError::LookupTimeout => (
                        RequestState::NxDomain,
                        "name lookup timed out".into(),
                        b"HTTP/1.1 504 Gateway Timeout\r\n\r\n",
                    ),
                    ConnectError::Connect(e) => {
                        (RequestState::SocketError, format!("connect: {e}"), b"HTTP/1.1 502 Bad Gateway\r\n\r\n")
                    }
                };
                fail(state, reason);
                let _ = inbound.write_all(answer).await;
                return;
            }
        };
        if inbound.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n").await.is_err()
            || outbound.write_all(early).await.is_err()
        {
            return;
        }
        let _ = inbound.set_nodelay(true);
        pump(&mut inbound, &mut outbound, target.idle).await;
    }
}

/// Copies both ways between `a` and `b` until both directions ended, one ended
/// [`RELAY_LINGER`] ago, or nothing moved either way for `idle`.
async fn pump(a: &mut TcpStream, b: &mut TcpStream, idle: Duration) {
    let start = tokio::time::Instant::now();
    // When data last moved, in milliseconds since `start`.
    let last = AtomicU64::new(0);
    let (mut a_read, mut a_write) = a.split();
    let (mut b_read, mut b_write) = b.split();
    let up = one_way(&mut a_read, &mut b_write, &last, start);
    let down = one_way(&mut b_read, &mut a_write, &last, start);
    let idle_out = async {
        loop {
            let deadline = start + Duration::from_millis(last.load(Ordering::Relaxed)) + idle;
            if tokio::time::Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    };
    tokio::pin!(up, down, idle_out);
    tokio::select! {
        _ = &mut up => { let _ = tokio::time::timeout(RELAY_LINGER, &mut down).await; }
        _ = &mut down => { let _ = tokio::time::timeout(RELAY_LINGER, &mut up).await; }
        _ = &mut idle_out => {}
    }
}

/// Copies from `r` to `w` until `r` ends (then shuts `w` down) or either fails; notes in `last`
/// when data moved.
async fn one_way<R, W>(r: &mut R, w: &mut W, last: &AtomicU64, start: tokio::time::Instant)
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 16 << 10];
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        last.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
        if w.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
    let _ = w.shutdown().await;
}

/// Standard base64 with padding.
fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Validation.

fn valid_topic(t: &str, limits: &MqttLimits) -> bool {
    !t.is_empty() && t.len() <= limits.max_topic_len && !t.contains(['\0', '+', '#'])
}

fn valid_filter(f: &str, limits: &MqttLimits) -> bool {
    if f.is_empty() || f.len() > limits.max_topic_len || f.contains('\0') {
        return false;
    }
    let levels: Vec<&str> = f.split('/').collect();
    levels.iter().enumerate().all(|(i, l)| (*l == "#" && i == levels.len() - 1) || *l == "+" || !l.contains(['+', '#']))
}

fn qos(q: u8) -> Option<QoS> {
    match q {
        0 => Some(QoS::AtMostOnce),
        1 => Some(QoS::AtLeastOnce),
        _ => None,
    }
}

/// TLS configuration for a broker: its CA (or Mozilla's roots) and an optional client
/// certificate.
fn tls_config(s: &BrokerSettings) -> Result<rustls::ClientConfig, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    match &s.ca_pem {
        Some(pem) => super::add_pem_roots(&mut roots, std::slice::from_ref(pem))?,
        None => roots.roots = webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    }
    let builder = rustls::ClientConfig::builder_with_provider(super::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    match (&s.client_cert_pem, &s.client_key_pem) {
        (Some(cert), Some(key)) => {
            let chain: Vec<CertificateDer<'static>> =
                CertificateDer::pem_slice_iter(cert).collect::<Result<_, _>>().map_err(|e| e.to_string())?;
            let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| e.to_string())?;
            builder.with_client_auth_cert(chain, key).map_err(|e| e.to_string())
        }
        (None, None) => Ok(builder.with_no_client_auth()),
        _ => Err("a client certificate needs its key and the other way round".into()),
    }
}

/// A failed (re)connection or a lost connection, as the device sees it.
#[derive(Debug)]
struct Failure {
    state: RequestState,
    /// The broker's CONNACK code, if it refused.
    code: u32,
    why: String,
    /// The broker sent a packet of this many bytes, over what the session reads
    /// ([`MAX_BROKER_PACKET`]): the connection ended on it.
    oversized: Option<u32>,
    /// The driver gave up: the session is down.
    given_up: bool,
}

impl Failure {
    fn new(state: RequestState, code: u32, why: String) -> Failure {
        Failure { state, code, why, oversized: None, given_up: false }
    }
}

/// The size of the packet `e` ended the connection on, if the broker sent one over the limit.
fn oversized(e: &ConnectionError) -> Option<usize> {
    match e {
        ConnectionError::MqttState(rumqttc::StateError::Deserialization(
            rumqttc::mqttbytes::Error::PayloadSizeLimitExceeded(n),
        )) => Some(*n),
        _ => None,
    }
}

/// What a connection error means for the device.
fn classify(e: &ConnectionError, target: &Target) -> Failure {
    let reason = e.to_string();
    if let ConnectionError::ConnectionRefused(code) = e {
        return Failure::new(RequestState::BrokerRefused, *code as u32, reason);
    }
    if let Some(n) = oversized(e) {
        let why = format!("the broker sent a packet of {n} bytes, over the {MAX_BROKER_PACKET}-byte limit");
        let oversized = Some(u32::try_from(n).unwrap_or(u32::MAX));
        return Failure { oversized, ..Failure::new(RequestState::SocketError, 0, why) };
    }
    if let ConnectionError::Proxy(_) = e {
        if let Some((state, why)) = target.failure.lock().unwrap_or_else(|e| e.into_inner()).take() {
            return Failure::new(state, 0, why);
        }
    }
    if let Some(r) = find_rustls_error(e) {
        use rustls::CertificateError as C;
        let state = match r {
            rustls::Error::InvalidCertificate(C::UnknownIssuer | C::BadSignature) => RequestState::UnknownCa,
            rustls::Error::InvalidCertificate(C::Expired | C::ExpiredContext { .. } | C::NotValidYet) => {
                RequestState::CertificateExpired
            }
            _ => RequestState::SocketError,
        };
        return Failure::new(state, 0, format!("tls: {r}"));
    }
    Failure::new(RequestState::SocketError, 0, reason)
}

// ---------------------------------------------------------------------------------------------
// A session.

/// What a session's driver task reports: an event, or a failed (re)connection / lost connection.
type Driven = Result<Event, Failure>;

/// Polls an event loop (reconnecting with backoff after errors) and forwards what happens.
///
/// A packet over the size limit ends the connection (rumqttc cannot skip it), and a broker that
/// kept the session would send it again at every reconnection: after one, the next connection
/// starts clean (the broker forgets the message; the session makes its subscriptions again).
/// If an oversized packet comes again before that connection carried a message or a ping
/// answer (a retained message, sent again at each subscription), the driver gives up: the
/// session is down, and the app decides what to subscribe to when it connects again.
async fn drive(mut el: EventLoop, tx: mpsc::Sender<Driven>, target: Arc<Target>, min: Duration, max: Duration) {
    let mut delay = min;
    let mut poisoned = false;
    loop {
        match el.poll().await {
            Ok(ev) => {
                let disconnected = matches!(ev, Event::Outgoing(Outgoing::Disconnect));
                match ev {
                    Event::Incoming(Packet::ConnAck(_)) => {
                        delay = min;
                        // Reconnections resume the session the first connection started.
                        el.mqtt_options.set_clean_session(false);
                    }
                    Event::Incoming(Packet::Publish(_) | Packet::PingResp) => poisoned = false,
                    _ => {}
                }
                if tx.send(Ok(ev)).await.is_err() {
                    return;
                }
                if disconnected {
                    // The broker closes the connection after DISCONNECT; closing it first could
                    // lose the DISCONNECT on the way (and the broker would publish the will).
                    // Never reconnect after it.
                    let _ =
                        tokio::time::timeout(Duration::from_secs(2), async { while el.poll().await.is_ok() {} }).await;
                    return;
                }
            }
            Err(e) => {
                let mut failure = classify(&e, &target);
                if failure.oversized.is_some() {
                    if poisoned {
                        failure.given_up = true;
                        failure.why = format!("{}, again after a clean reconnection: given up", failure.why);
                        let _ = tx.send(Err(failure)).await;
                        return;
                    }
                    poisoned = true;
                    el.mqtt_options.set_clean_session(true);
                }
                if tx.send(Err(failure)).await.is_err() {
                    return;
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(max);
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ConnState {
    /// Waiting for the first CONNACK (answers the device's `Connect`).
    Connecting,
    Connected,
    Reconnecting,
}

/// A broker connection (rumqttc's client, and its event loop in a driver task).
struct Conn {
    client: AsyncClient,
    rx: mpsc::Receiver<Driven>,
    _driver: AbortOnDrop,
    /// Its relay connections close with it.
    _target: TargetGuard,
    state: ConnState,
    /// Publishes handed to rumqttc, not yet written (id, QoS).
    pending_pubs: VecDeque<(u32, u8, usize)>,
    /// QoS 1 publishes written, by packet id.
    inflight_pubs: HashMap<u16, (u32, usize)>,
    /// Subscribes handed to rumqttc (the device's id; `None` for a resubscription).
    pending_subs: VecDeque<Option<u32>>,
    awaiting_subs: HashMap<u16, Option<u32>>,
    /// Unsubscribes handed to rumqttc, one per filter.
    pending_unsubs: VecDeque<Option<u32>>,
    awaiting_unsubs: HashMap<u16, Option<u32>>,
    /// Unsubscribe packets still unanswered per device request.
    unsub_left: HashMap<u32, usize>,
}

impl Conn {
    /// Publishes awaiting their result (see [`MqttLimits::max_pending_publishes`]).
    fn unanswered(&self) -> usize {
        self.pending_pubs.len() + self.inflight_pubs.len()
    }

    /// Their topics' and payloads' bytes (see [`MqttLimits::max_pending_bytes`]).
    fn unanswered_bytes(&self) -> usize {
        self.pending_pubs.iter().map(|p| p.2).sum::<usize>() + self.inflight_pubs.values().map(|p| p.1).sum::<usize>()
    }
}

struct Session {
    shared: Arc<Shared>,
    key: Key,
    /// The account of the device that made it.
    account: String,
    id: u64,
    ctl: mpsc::UnboundedReceiver<Ctl>,
    settings: Option<BrokerSettings>,
    dest: Option<Arc<dyn Destinations>>,
    /// This session's key in the relay.
    auth: String,
    token: String,
    commands: Option<mpsc::Receiver<MqttCommand>>,
    events: Option<mpsc::Sender<MqttEvent>>,
    /// The current attachment sent `Connect`.
    att_connected: bool,
    detached_at: Option<tokio::time::Instant>,
    conn: Option<Conn>,
    queue: VecDeque<MqttEvent>,
    queued_msgs: usize,
    queued_bytes: usize,
    lost: BTreeMap<LostReason, (u32, String, u32)>,
    /// QoS 1 messages not acknowledged by the device (queued or delivered).
    unacked: BTreeMap<u32, Publish>,
    /// Of those, the ones handed to the current attachment.
    delivered: BTreeSet<u32>,
    next_msg: u32,
    subs: BTreeMap<String, u8>,
    tokens: f64,
    refilled: Instant,
}

impl Session {
    fn new(shared: Arc<Shared>, key: Key, account: String, id: u64, ctl: mpsc::UnboundedReceiver<Ctl>) -> Self {
        let mut secret = [0u8; 16];
        let _ = getrandom::getrandom(&mut secret);
        let token = crate::hex(&secret);
        let auth = format!("Basic {}", base64(format!("keel:{token}").as_bytes()));
        let tokens = shared.limits.inbound_burst;
        Session {
            shared,
            key,
            account,
            id,
            ctl,
            settings: None,
            dest: None,
            auth,
            token,
            commands: None,
            events: None,
            att_connected: false,
            detached_at: None,
            conn: None,
            queue: VecDeque::new(),
            queued_msgs: 0,
            queued_bytes: 0,
            lost: BTreeMap::new(),
            unacked: BTreeMap::new(),
            delivered: BTreeSet::new(),
            next_msg: 1,
            subs: BTreeMap::new(),
            tokens,
            refilled: Instant::now(),
        }
    }

    async fn run(mut self) {
        loop {
            // Whatever the last turn handled may have moved a counter.
            self.shared.counters.changed();
            if self.events.is_some() {
                self.flush_lost();
            }
            let deadline = self.detached_at.map(|t| t + self.shared.limits.detached_grace);
            // Messages wait until the attachment connected (they follow its `ConnectResult`).
            let sendable =
                self.queue.front().is_some_and(|e| self.att_connected || !matches!(e, MqttEvent::Message { .. }));
            tokio::select! {
                ctl = self.ctl.recv() => match ctl {
                    Some(ctl) => {
                        if self.on_ctl(ctl) {
                            break;
                        }
                    }
                    None => break,
                },
                cmd = next_command(&mut self.commands), if self.commands.is_some() => match cmd {
                    Some(cmd) => self.on_command(cmd),
                    None => {
                        if self.detach() {
                            break;
                        }
                    }
                },
                ready = has_room(&self.events), if self.events.is_some() && sendable => {
                    if ready {
                        self.send_one();
                    } else if self.detach() {
                        break;
                    }
                },
                driven = next_driven(&mut self.conn), if self.conn.is_some() => match driven {
                    Some(d) => self.on_driven(d),
                    None => self.conn = None,
                },
                _ = sleep_until(deadline), if deadline.is_some() => {
                    if self.try_exit() {
                        break;
                    }
                },
            }
        }
        self.shared.relay.targets.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.auth);
        let mut sessions = self.shared.sessions.lock().unwrap_or_else(|e| e.into_inner());
        if sessions.get(&self.key).is_some_and(|e| e.id == self.id) {
            sessions.remove(&self.key);
        }
        drop(sessions);
        self.shared.counters.changed();
    }

    /// Handles a control message; true if the session must end.
    fn on_ctl(&mut self, ctl: Ctl) -> bool {
        match ctl {
            Ctl::Attach { commands, events, settings, dest } => {
                self.on_attach(commands, events, *settings, dest);
                false
            }
            Ctl::Detach => self.detach(),
            Ctl::Close => true,
        }
    }

    fn on_attach(
        &mut self,
        commands: mpsc::Receiver<MqttCommand>,
        events: mpsc::Sender<MqttEvent>,
        settings: BrokerSettings,
        dest: Arc<dyn Destinations>,
    ) {
        self.commands = Some(commands);
        self.events = Some(events);
        self.settings = Some(settings);
        self.dest = Some(dest);
        self.att_connected = false;
        self.detached_at = None;
        // Answers were for the previous attachment; messages are for the device.
        self.queue.retain(|e| matches!(e, MqttEvent::Message { .. }));
        // Delivered to the previous attachment but never acknowledged: again, first.
        for id in std::mem::take(&mut self.delivered).into_iter().rev() {
            if let Some(p) = self.unacked.get(&id) {
                self.queued_msgs += 1;
                self.queued_bytes += size(p);
                self.queue.push_front(message(id, p));
            }
        }
    }

    /// The attachment went away; true if the session must end (it holds no broker connection).
    fn detach(&mut self) -> bool {
        self.commands = None;
        self.events = None;
        self.att_connected = false;
        if self.conn.is_none() {
            return self.try_exit();
        }
        self.detached_at.get_or_insert_with(tokio::time::Instant::now);
        false
    }

    /// Removes the session from the hub unless an attach is on its way; true if it did.
    fn try_exit(&mut self) -> bool {
        let shared = self.shared.clone();
        let sessions = shared.sessions.lock().unwrap_or_else(|e| e.into_inner());
        if let Ok(ctl) = self.ctl.try_recv() {
            drop(sessions);
            return self.on_ctl(ctl);
        }
        true
    }

    fn push(&mut self, ev: MqttEvent) {
        if self.events.is_some() {
            self.queue.push_back(ev);
        }
    }

    fn send_one(&mut self) {
        let (Some(events), Some(ev)) = (&self.events, self.queue.pop_front()) else { return };
        if let MqttEvent::Message { id, qos, topic, payload, .. } = &ev {
            self.queued_msgs -= 1;
            self.queued_bytes -= topic.len() + payload.len();
            if *qos == 1 {
                self.delivered.insert(*id);
            }
            self.shared.counters.delivered.fetch_add(1, Ordering::Relaxed);
        }
        let _ = events.try_send(ev);
    }

    fn flush_lost(&mut self) {
        for (reason, (count, topic, len)) in std::mem::take(&mut self.lost) {
            self.queue.push_back(MqttEvent::Lost { reason, topic, len, count });
        }
    }

    fn lose(&mut self, reason: LostReason, p: &Publish) {
        if p.qos == QoS::AtLeastOnce {
            if let Some(c) = &self.conn {
                let _ = c.client.try_ack(p);
            }
        }
        let topic = truncated(&p.topic, self.shared.limits.max_topic_len).to_string();
        self.count_lost(reason, topic, p.payload.len() as u32);
    }

    /// Counts a message lost for `reason` (reported to the device by the next turn: the count,
    /// and the topic and length of the latest).
    fn count_lost(&mut self, reason: LostReason, topic: String, len: u32) {
        self.shared.counters.lost.fetch_add(1, Ordering::Relaxed);
        let e = self.lost.entry(reason).or_insert((0, String::new(), 0));
        e.0 += 1;
        e.1 = topic;
        e.2 = len;
    }

    fn on_command(&mut self, cmd: MqttCommand) {
        let limits = self.shared.limits.clone();
        match cmd {
            MqttCommand::Connect { clean_start, keepalive_s, will } => self.connect(clean_start, keepalive_s, will),
            MqttCommand::Subscribe { id, topics } => {
                let result = |state| MqttEvent::SubscribeResult { id, state, codes: vec![] };
                if topics.is_empty()
                    || topics.len() > limits.max_topics_per_request
                    || !topics.iter().all(|(f, q)| valid_filter(f, &limits) && qos(*q).is_some())
                {
                    return self.push(result(RequestState::InvalidParameters));
                }
                let Some(conn) = self.conn.as_mut().filter(|_| self.att_connected) else {
                    return self.push(result(RequestState::NotConnected));
                };
                let filters = topics.iter().filter_map(|(f, q)| Some(SubscribeFilter::new(f.clone(), qos(*q)?)));
                if conn.client.try_subscribe_many(filters).is_err() {
                    return self.push(result(RequestState::RateLimited));
                }
                conn.pending_subs.push_back(Some(id));
                self.subs.extend(topics);
            }
            MqttCommand::Unsubscribe { id, topics } => {
                let result = |state| MqttEvent::UnsubscribeResult { id, state };
                if topics.is_empty()
                    || topics.len() > limits.max_topics_per_request
                    || !topics.iter().all(|f| valid_filter(f, &limits))
                {
                    return self.push(result(RequestState::InvalidParameters));
                }
                let Some(conn) = self.conn.as_mut().filter(|_| self.att_connected) else {
                    return self.push(result(RequestState::NotConnected));
                };
                let mut sent = 0;
                for f in &topics {
                    if conn.client.try_unsubscribe(f.clone()).is_err() {
                        break;
                    }
                    conn.pending_unsubs.push_back(Some(id));
                    sent += 1;
                }
                if sent < topics.len() {
                    // The ones handed over are answered but not reported.
                    for e in conn.pending_unsubs.iter_mut().rev().take(sent) {
                        *e = None;
                    }
                    return self.push(result(RequestState::RateLimited));
                }
                conn.unsub_left.insert(id, sent);
                for f in &topics {
                    self.subs.remove(f);
                }
            }
            MqttCommand::Publish { id, topic, payload, qos: q, retain } => {
                let result = |state| MqttEvent::PublishResult { id, state, reason: 0 };
                let Some(level) =
                    qos(q).filter(|_| valid_topic(&topic, &limits) && payload.len() <= limits.max_payload)
                else {
                    return self.push(result(RequestState::InvalidParameters));
                };
                let Some(conn) = self.conn.as_mut().filter(|_| self.att_connected) else {
                    return self.push(result(RequestState::NotConnected));
                };
                let bytes = topic.len() + payload.len();
                if conn.unanswered() >= limits.max_pending_publishes
                    || conn.unanswered_bytes() + bytes > limits.max_pending_bytes
                    || conn.client.try_publish(topic, level, retain, payload).is_err()
                {
                    return self.push(result(RequestState::RateLimited));
                }
                conn.pending_pubs.push_back((id, q, bytes));
                self.shared.counters.published.fetch_add(1, Ordering::Relaxed);
            }
            MqttCommand::Ack { id } => {
                if let Some(p) = self.unacked.remove(&id) {
                    self.delivered.remove(&id);
                    if let Some(conn) = &self.conn {
                        let _ = conn.client.try_ack(&p);
                    }
                }
            }
            MqttCommand::Disconnect => {
                let state = match self.conn.take() {
                    Some(conn) => {
                        retire(conn);
                        RequestState::Completed
                    }
                    None => RequestState::NotConnected,
                };
                self.reset();
                self.att_connected = false;
                self.push(MqttEvent::Disconnected { state, code: 0 });
            }
        }
    }

    /// Forgets the session's state (subscriptions, messages awaiting the device).
    fn reset(&mut self) {
        self.subs.clear();
        self.unacked.clear();
        self.delivered.clear();
        self.queue.retain(|e| !matches!(e, MqttEvent::Message { .. }));
        self.queued_msgs = 0;
        self.queued_bytes = 0;
    }

    fn connect(&mut self, clean_start: bool, keepalive_s: u16, will: Option<Will>) {
        let limits = self.shared.limits.clone();
        let result = |state| MqttEvent::ConnectResult { state, reason: 0, session_present: false };
        if self.att_connected {
            return self.push(result(RequestState::AlreadyConnected));
        }
        let (Some(settings), Some(dest)) = (self.settings.clone(), self.dest.clone()) else { return };
        let will_ok = will.as_ref().is_none_or(|w| {
            valid_topic(&w.topic, &limits) && w.payload.len() <= limits.max_payload && qos(w.qos).is_some()
        });
        if keepalive_s > 3600 || !will_ok || settings.client_id.is_empty() || settings.host.is_empty() {
            return self.push(result(RequestState::InvalidParameters));
        }
        if let Some(conn) = self.conn.take() {
            if !clean_start && conn.state != ConnState::Connecting {
                // The session kept for this device.
                self.conn = Some(conn);
                self.att_connected = true;
                // Before the messages queued meanwhile.
                let first = self.queue.iter().position(|e| matches!(e, MqttEvent::Message { .. }));
                let result =
                    MqttEvent::ConnectResult { state: RequestState::Completed, reason: 0, session_present: true };
                self.queue.insert(first.unwrap_or(self.queue.len()), result);
                if self.conn.as_ref().is_some_and(|c| c.state == ConnState::Reconnecting) {
                    self.push(MqttEvent::Status { state: SessionState::Reconnecting, reason: String::new() });
                }
                return;
            }
            retire(conn);
        }
        self.reset();
        let mut o = MqttOptions::new(settings.client_id.clone(), settings.host.clone(), settings.port);
        let keepalive = Duration::from_secs(if keepalive_s == 0 { 60 } else { u64::from(keepalive_s) });
        o.set_keep_alive(keepalive);
        o.set_clean_session(clean_start);
        o.set_manual_acks(true);
        o.set_inflight(limits.max_inflight_publishes.clamp(1, 100) as u16);
        // Large enough to read, and drop with a report, any message over the session's limits
        // (see the module docs); memory is bounded by what is queued, which is checked.
        let packet = MAX_BROKER_PACKET.max(limits.max_payload + limits.max_topic_len + 64);
        o.set_max_packet_size(packet, packet);
        if let Some(user) = &settings.username {
            o.set_credentials(user.clone(), settings.password.clone().unwrap_or_default());
        }
        if let Some(w) = will {
            o.set_last_will(LastWill::new(w.topic, w.payload, qos(w.qos).unwrap_or(QoS::AtMostOnce), w.retain));
        }
        if settings.tls {
            match tls_config(&settings) {
                Ok(c) => o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(Arc::new(c)))),
                Err(_) => return self.push(result(RequestState::InvalidParameters)),
            };
        }
        o.set_proxy(Proxy {
            ty: ProxyType::Http,
            auth: ProxyAuth::Basic { username: "keel".into(), password: self.token.clone() },
            addr: "127.0.0.1".into(),
            port: self.shared.relay.port,
        });
        let target = Arc::new(Target {
            who: Tenant { account: self.account.clone(), device: self.key.0.clone() },
            scheme: if settings.tls { "mqtts" } else { "mqtt" },
            host: settings.host.clone(),
            port: settings.port,
            dest,
            idle: keepalive * 3,
            failure: Mutex::new(None),
            closed: tokio::sync::watch::Sender::new(false),
        });
        self.shared.relay.targets.lock().unwrap_or_else(|e| e.into_inner()).insert(self.auth.clone(), target.clone());
        // Room for every publish the session takes (rumqttc holds those beyond its in-flight
        // window in this queue), and for the subscribes, unsubscribes and acks beside them.
        let requests = limits.max_pending_publishes + limits.queue_messages + 2 * limits.max_topics_per_request + 16;
        let (client, mut el) = AsyncClient::new(o, requests);
        let mut net = rumqttc::NetworkOptions::new();
        net.set_connection_timeout(limits.connect_timeout.as_secs().max(1));
        el.set_network_options(net);
        let (tx, rx) = mpsc::channel(16);
        let driver = tokio::spawn(drive(el, tx, target.clone(), limits.reconnect_min, limits.reconnect_max));
        self.conn = Some(Conn {
            client,
            rx,
            _driver: AbortOnDrop(driver),
            _target: TargetGuard(target),
            state: ConnState::Connecting,
            pending_pubs: VecDeque::new(),
            inflight_pubs: HashMap::new(),
            pending_subs: VecDeque::new(),
            awaiting_subs: HashMap::new(),
            pending_unsubs: VecDeque::new(),
            awaiting_unsubs: HashMap::new(),
            unsub_left: HashMap::new(),
        });
        self.att_connected = true;
    }

    fn on_driven(&mut self, d: Driven) {
        let counters = &self.shared.counters;
        let Some(conn) = self.conn.as_mut() else { return };
        match d {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                counters.connections.fetch_add(1, Ordering::Relaxed);
                let first = conn.state == ConnState::Connecting;
                conn.state = ConnState::Connected;
                if first {
                    self.push(MqttEvent::ConnectResult {
                        state: RequestState::Completed,
                        reason: 0,
                        session_present: ack.session_present,
                    });
                    return;
                }
                self.on_reconnected(ack.session_present);
                self.push(MqttEvent::Status { state: SessionState::Connected, reason: String::new() });
            }
            Ok(Event::Incoming(Packet::Publish(p))) => self.on_message(p),
            Ok(Event::Incoming(Packet::PubAck(a))) => {
                if let Some((id, _)) = conn.inflight_pubs.remove(&a.pkid) {
                    self.push(MqttEvent::PublishResult { id, state: RequestState::Completed, reason: 0 });
                }
            }
            Ok(Event::Incoming(Packet::SubAck(a))) => {
                if let Some(Some(id)) = conn.awaiting_subs.remove(&a.pkid) {
                    let codes = a
                        .return_codes
                        .iter()
                        .map(|c| match c {
                            SubscribeReasonCode::Success(q) => *q as u8,
                            SubscribeReasonCode::Failure => 0x80,
                        })
                        .collect();
                    self.push(MqttEvent::SubscribeResult { id, state: RequestState::Completed, codes });
                }
            }
            Ok(Event::Incoming(Packet::UnsubAck(a))) => {
                if let Some(Some(id)) = conn.awaiting_unsubs.remove(&a.pkid) {
                    let left = conn.unsub_left.entry(id).or_insert(1);
                    *left = left.saturating_sub(1);
                    if *left == 0 {
                        conn.unsub_left.remove(&id);
                        self.push(MqttEvent::UnsubscribeResult { id, state: RequestState::Completed });
                    }
                }
            }
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                if pkid != 0 && conn.inflight_pubs.contains_key(&pkid) {
                    return; // a retransmission after a reconnection
                }
                if let Some((id, q, bytes)) = conn.pending_pubs.pop_front() {
                    if q == 0 {
                        self.push(MqttEvent::PublishResult { id, state: RequestState::Completed, reason: 0 });
                    } else {
                        conn.inflight_pubs.insert(pkid, (id, bytes));
                    }
                }
            }
            Ok(Event::Outgoing(Outgoing::Subscribe(pkid))) => {
                if let Some(id) = conn.pending_subs.pop_front() {
                    conn.awaiting_subs.insert(pkid, id);
                }
            }
            Ok(Event::Outgoing(Outgoing::Unsubscribe(pkid))) => {
                if let Some(id) = conn.pending_unsubs.pop_front() {
                    conn.awaiting_unsubs.insert(pkid, id);
                }
            }
            Ok(_) => {}
            Err(Failure { state, code, why, oversized, given_up }) => {
                if let Some(len) = oversized {
                    // Its topic was never read.
                    self.count_lost(LostReason::TooLarge, String::new(), len);
                }
                let counters = &self.shared.counters;
                let Some(conn) = self.conn.as_mut() else { return };
                counters.connect_failures.fetch_add(u64::from(conn.state != ConnState::Connected), Ordering::Relaxed);
                counters.denied.fetch_add(u64::from(state == RequestState::Denied), Ordering::Relaxed);
                match conn.state {
                    ConnState::Connecting => {
                        self.conn = None;
                        self.att_connected = false;
                        self.push(MqttEvent::ConnectResult { state, reason: code, session_present: false });
                    }
                    _ if given_up || matches!(state, RequestState::BrokerRefused | RequestState::Denied) => {
                        self.conn = None;
                        self.att_connected = false;
                        self.reset();
                        self.push(MqttEvent::Status { state: SessionState::Down, reason: why });
                    }
                    ConnState::Connected => {
                        conn.state = ConnState::Reconnecting;
                        self.push(MqttEvent::Status { state: SessionState::Reconnecting, reason: why });
                    }
                    ConnState::Reconnecting => {}
                }
            }
        }
    }

    /// A reconnection: QoS 1 messages not acknowledged come again from the broker (or are gone
    /// with its session); if the broker lost the session, requests in flight are lost and the
    /// subscriptions are made again.
    fn on_reconnected(&mut self, session_present: bool) {
        let stale: BTreeSet<u32> = std::mem::take(&mut self.unacked).into_keys().collect();
        self.delivered.clear();
        let mut removed = (0, 0);
        self.queue.retain(|e| match e {
            MqttEvent::Message { id, topic, payload, .. } if stale.contains(id) => {
                removed.0 += 1;
                removed.1 += topic.len() + payload.len();
                false
            }
            _ => true,
        });
        self.queued_msgs -= removed.0;
        self.queued_bytes -= removed.1;
        let Some(conn) = self.conn.as_mut() else { return };
        let mut failed: Vec<MqttEvent> = Vec::new();
        let mut sub_failed: Vec<u32> = conn.awaiting_subs.drain().filter_map(|(_, id)| id).collect();
        if !session_present {
            sub_failed.extend(conn.pending_subs.drain(..).flatten());
        }
        for id in sub_failed {
            failed.push(MqttEvent::SubscribeResult { id, state: RequestState::SocketError, codes: vec![] });
        }
        let mut unsub_failed = BTreeSet::new();
        for (_, id) in conn.awaiting_unsubs.drain() {
            unsub_failed.extend(id);
        }
        if !session_present {
            unsub_failed.extend(conn.pending_unsubs.drain(..).flatten());
            for (id, _, _) in conn.pending_pubs.drain(..) {
                failed.push(MqttEvent::PublishResult { id, state: RequestState::SocketError, reason: 0 });
            }
            for (_, (id, _)) in conn.inflight_pubs.drain() {
                failed.push(MqttEvent::PublishResult { id, state: RequestState::SocketError, reason: 0 });
            }
        }
        for id in unsub_failed {
            conn.unsub_left.remove(&id);
            failed.push(MqttEvent::UnsubscribeResult { id, state: RequestState::SocketError });
        }
        if !session_present && !self.subs.is_empty() {
            let subs: Vec<SubscribeFilter> =
                self.subs.iter().filter_map(|(f, q)| Some(SubscribeFilter::new(f.clone(), qos(*q)?))).collect();
            for chunk in subs.chunks(self.shared.limits.max_topics_per_request.max(1)) {
                if conn.client.try_subscribe_many(chunk.to_vec()).is_ok() {
                    conn.pending_subs.push_back(None);
                }
            }
        }
        for ev in failed {
            self.push(ev);
        }
    }

    fn on_message(&mut self, p: Publish) {
        let limits = &self.shared.limits;
        self.shared.counters.received.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let elapsed = now.duration_since(self.refilled).as_secs_f64();
        self.refilled = now;
        self.tokens = (self.tokens + elapsed * limits.inbound_per_second).min(limits.inbound_burst);
        if self.tokens < 1.0 {
            return self.lose(LostReason::RateLimited, &p);
        }
        self.tokens -= 1.0;
        if p.topic.len() > limits.max_topic_len || p.payload.len() > limits.max_payload {
            return self.lose(LostReason::TooLarge, &p);
        }
        if self.queued_msgs >= limits.queue_messages || self.queued_bytes + size(&p) > limits.queue_bytes {
            return self.lose(LostReason::QueueFull, &p);
        }
        let id = self.next_msg;
        self.next_msg = self.next_msg.wrapping_add(1).max(1);
        self.queued_msgs += 1;
        self.queued_bytes += size(&p);
        self.queue.push_back(message(id, &p));
        if p.qos == QoS::AtLeastOnce {
            self.unacked.insert(id, p);
        }
    }
}

/// What a message counts toward [`MqttLimits::queue_bytes`]: its topic and payload.
fn size(p: &Publish) -> usize {
    p.topic.len() + p.payload.len()
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
fn truncated(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn message(id: u32, p: &Publish) -> MqttEvent {
    MqttEvent::Message { id, topic: p.topic.clone(), payload: p.payload.to_vec(), qos: p.qos as u8, retain: p.retain }
}

/// Ends a broker connection gracefully: DISCONNECT (no will); the driver then waits (at most
/// 2 s) for the broker to close the connection and ends.
fn retire(conn: Conn) {
    if conn.client.try_disconnect().is_err() {
        return;
    }
    tokio::spawn(async move {
        // The whole connection lives until its driver ends (it does once the broker closed the
        // connection). Naming only `conn.rx` in here would move just that field (closures and
        // async blocks capture the fields they use): the rest, the driver's abort handle with
        // it, would be dropped right away, cutting the connection before the DISCONNECT went
        // out, and the broker would publish the will.
        let mut conn = conn;
        let _ = tokio::time::timeout(Duration::from_secs(3), async { while conn.rx.recv().await.is_some() {} }).await;
    });
}

async fn next_command(commands: &mut Option<mpsc::Receiver<MqttCommand>>) -> Option<MqttCommand> {
    commands.as_mut()?.recv().await
}

async fn has_room(events: &Option<mpsc::Sender<MqttEvent>>) -> bool {
    match events {
        Some(tx) => tx.reserve().await.is_ok(),
        None => false,
    }
}

async fn next_driven(conn: &mut Option<Conn>) -> Option<Driven> {
    conn.as_mut()?.rx.recv().await
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn filters() {
        let l = MqttLimits::default();
        assert!(valid_filter("a/+/b/#", &l));
        assert!(valid_filter("#", &l));
        assert!(!valid_filter("a/#/b", &l));
        assert!(!valid_filter("a/b+", &l));
        assert!(!valid_filter("", &l));
        assert!(valid_topic("a/b", &l));
        assert!(!valid_topic("a/+", &l));
        assert!(!valid_topic(&"x".repeat(257), &l));
    }
}
