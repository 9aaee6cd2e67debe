//! The app channels of one device connection: the server's end of every channel the device's
//! app opened, and the services behind them (the HTTP proxy, managed MQTT sessions,
//! configuration and secrets).
//!
//! Flow control is `keel_channel::peer::Peer`'s (credit both ways); this module adds what only
//! a server has: a task per channel running its service, the per-device limits (open channels
//! per connection; the open rate per device id, server-wide, so a reconnect does not reset it:
//! [`OpenBudget`]), and the account's destination policy. The engines behind the services bound
//! what one account (requests, MQTT sessions) and one device (name lookups) may take of the
//! server's capacity. A service exchanges whole app messages
//! (`keel_channel::msg`) with its channel: it receives the device's requests in order, answers
//! with messages, and ends the channel with a [`Reason`]. Every message a device sends is
//! untrusted: a malformed one is answered with an error message, never a panic.
//!
//! The gateway's shell owns one [`ChannelHub`] per connection; when the connection ends the hub
//! is dropped, which ends every channel's task (an MQTT session outlives it for its grace
//! period: that is the point of a managed session).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use keel_abi::chan::{Kind, Reason};
use keel_channel::msg::{self, config_result, http_result, mqtt_state, Items, Msg, Strs};
use keel_channel::peer::Peer;
use tokio::sync::mpsc;

use crate::connection::ChanUp;
use crate::policy::{self, Rule};
use crate::proxy::http::{HttpError, HttpLimits, HttpProxy, HttpRequest};
use crate::proxy::mqtt::{BrokerSettings, MqttCommand, MqttEvent, MqttHub, MqttLimits, Will};
use crate::proxy::{Destinations, NameLookups, Tenant};
use crate::settings::{FetchItem, FetchOutcome, Scope, StoreKind};
use crate::store::Store;

/// Channels one device may have open at once (the device's own limit is 8 too).
pub const MAX_CHANNELS: usize = 8;
/// Credit granted to the device per channel: the largest request it may send.
pub const IN_WINDOW: u32 = 16 * 1024;
/// Bytes of a channel's messages the server holds for a device that does not consume them;
/// beyond, a service's message is dropped (an MQTT message not acked is delivered again by the
/// broker later) and the channel counts it.
pub const MAX_QUEUED: usize = 64 * 1024;
/// Room left for the response message's own framing when the proxy's response limit is derived
/// from the channel's largest message (the header, the status, a length per header line and
/// the body's): whatever it does not cover is caught when the message is encoded.
const RESPONSE_FRAMING: usize = 64;
/// Channel opens a device may make in a burst...
pub const OPEN_BURST: f64 = 32.0;
/// ...and per second after it.
pub const OPENS_PER_SECOND: f64 = 20.0;
/// Devices whose open budget the server remembers at once ([`OpenBudget`]).
pub const OPEN_BUDGET_DEVICES: usize = 65_536;
/// How often a full [`OpenBudget`] may look for buckets to forget.
const OPEN_BUDGET_SWEEP: std::time::Duration = std::time::Duration::from_millis(100);

/// The per-device budgets of channel opens, server-wide: a token bucket per device id
/// ([`OPEN_BURST`], then [`OPENS_PER_SECOND`]), kept across the device's connections so a device
/// that reconnects does not get a fresh burst. A bucket that has refilled to the full burst is
/// the same as none: when the map holds its bound of devices, such buckets are forgotten; if none
/// has (more than the bound of devices opened channels within the last 1.6 s), an unknown
/// device's open is refused (`RATE_LIMITED`) rather than given a burst the bound could not
/// remember.
pub struct OpenBudget {
    max_devices: usize,
    state: Mutex<Budgets>,
}

struct Budgets {
    buckets: HashMap<Arc<str>, Bucket>,
    last_sweep: Option<Instant>,
}

#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// The tokens at `now`.
    fn at(self, now: Instant) -> f64 {
        (self.tokens + now.saturating_duration_since(self.at).as_secs_f64() * OPENS_PER_SECOND).min(OPEN_BURST)
    }
}

impl OpenBudget {
    /// Budgets for at most `max_devices` devices at once.
    pub fn new(max_devices: usize) -> Self {
        OpenBudget { max_devices, state: Mutex::new(Budgets { buckets: HashMap::new(), last_sweep: None }) }
    }

    /// Takes one open from `device`'s budget at `now`; false if there is none left.
    pub fn take(&self, device: &str, now: Instant) -> bool {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(b) = st.buckets.get_mut(device) {
            let tokens = b.at(now);
            b.at = b.at.max(now);
            if tokens < 1.0 {
                b.tokens = tokens;
                return false;
            }
            b.tokens = tokens - 1.0;
            return true;
        }
        if st.buckets.len() >= self.max_devices {
            if st.last_sweep.is_some_and(|t| now.saturating_duration_since(t) < OPEN_BUDGET_SWEEP) {
                return false;
            }
            st.last_sweep = Some(now);
            st.buckets.retain(|_, b| b.at(now) < OPEN_BURST);
            if st.buckets.len() >= self.max_devices {
                return false;
            }
        }
        st.buckets.insert(device.into(), Bucket { tokens: OPEN_BURST - 1.0, at: now });
        true
    }

    /// Devices with a bucket now.
    pub fn devices(&self) -> usize {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).buckets.len()
    }
}

/// Counters of the app channels of every connection ([`Services::channel_stats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChannelStats {
    /// Channels open now.
    pub open: u64,
    /// Channels opened.
    pub opened: u64,
    /// Opens refused by the device's open budget (rate).
    pub refused_rate: u64,
    /// Opens refused because the device had [`MAX_CHANNELS`] open.
    pub refused_limit: u64,
    /// Opens refused as invalid (unknown kind, channel in use, bad window) or because the
    /// services could not start.
    pub refused_invalid: u64,
}

#[derive(Default)]
struct ChanCounters {
    open: AtomicU64,
    opened: AtomicU64,
    refused_rate: AtomicU64,
    refused_limit: AtomicU64,
    refused_invalid: AtomicU64,
}

/// The services every connection's channels share (one set per server), and what the server
/// keeps about devices' channels across their connections (open budgets, counters).
pub struct Services {
    /// The HTTP proxy.
    pub http: HttpProxy,
    /// The managed MQTT sessions.
    pub mqtt: MqttHub,
    opens: OpenBudget,
    counters: ChanCounters,
}

impl std::fmt::Debug for Services {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Services").finish_non_exhaustive()
    }
}

impl Services {
    /// The services with default limits; `KEEL_PROXY_CA` names a PEM file of extra CAs the
    /// HTTP proxy trusts besides the system's roots (an account or test CA).
    pub fn from_env() -> Result<Services, String> {
        let extra = match std::env::var_os("KEEL_PROXY_CA") {
            Some(p) => vec![std::fs::read(&p).map_err(|e| format!("KEEL_PROXY_CA {}: {e}", p.to_string_lossy()))?],
            None => vec![],
        };
        let (http_limits, mqtt_limits, dns_limits) = limits_from_env(|k| std::env::var(k).ok())?;
        let lookups = NameLookups::system(dns_limits);
        let http = HttpProxy::with_lookups(http_limits, &extra, lookups.clone())?;
        let mqtt = MqttHub::with_lookups(mqtt_limits, lookups).map_err(|e| e.to_string())?;
        Ok(Services::new(http, mqtt))
    }

    /// The services around these engines (give both the same [`NameLookups`]), with fresh open
    /// budgets and counters.
    pub fn new(http: HttpProxy, mqtt: MqttHub) -> Services {
        Services { http, mqtt, opens: OpenBudget::new(OPEN_BUDGET_DEVICES), counters: ChanCounters::default() }
    }

    /// A snapshot of the channel counters.
    pub fn channel_stats(&self) -> ChannelStats {
        let c = &self.counters;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ChannelStats {
            open: l(&c.open),
            opened: l(&c.opened),
            refused_rate: l(&c.refused_rate),
            refused_limit: l(&c.refused_limit),
            refused_invalid: l(&c.refused_invalid),
        }
    }
}

/// The services' capacity settings from the environment (`get` reads a variable), each one
/// optional (see docs/operations.md):
/// `KEEL_PROXY_HTTP_MAX` / `KEEL_PROXY_HTTP_PER_ACCOUNT` (concurrent HTTP requests, server-wide
/// and per account), `KEEL_MQTT_MAX_SESSIONS` / `KEEL_MQTT_SESSIONS_PER_ACCOUNT` (managed MQTT
/// sessions), `KEEL_PROXY_DNS_MAX` / `KEEL_PROXY_DNS_PER_ACCOUNT` (name lookups in progress).
/// A share larger than its server-wide limit is the limit (no share).
pub fn limits_from_env(
    get: impl Fn(&str) -> Option<String>,
) -> Result<(HttpLimits, MqttLimits, crate::proxy::DnsLimits), String> {
    let num = |key: &str, default: usize| -> Result<usize, String> {
        match get(key) {
            None => Ok(default),
            Some(v) => match v.trim().parse::<usize>() {
                Ok(n) if n > 0 => Ok(n),
                _ => Err(format!("{key}={v:?}: expected a whole number above 0")),
            },
        }
    };
    let mut http = HttpLimits::default();
    http.max_concurrent = num("KEEL_PROXY_HTTP_MAX", http.max_concurrent)?;
    http.max_per_account = num("KEEL_PROXY_HTTP_PER_ACCOUNT", http.max_per_account)?.min(http.max_concurrent);
    let mut mqtt = MqttLimits::default();
    mqtt.max_sessions = num("KEEL_MQTT_MAX_SESSIONS", mqtt.max_sessions)?;
    mqtt.max_sessions_per_account =
        num("KEEL_MQTT_SESSIONS_PER_ACCOUNT", mqtt.max_sessions_per_account)?.min(mqtt.max_sessions);
    let mut dns = crate::proxy::DnsLimits::default();
    dns.max_concurrent = num("KEEL_PROXY_DNS_MAX", dns.max_concurrent)?;
    dns.per_account = num("KEEL_PROXY_DNS_PER_ACCOUNT", dns.per_account)?.min(dns.max_concurrent);
    Ok((http, mqtt, dns))
}

/// Counts a channel in [`ChannelStats::open`] while it lives.
struct OpenChannel(Arc<Services>);

impl OpenChannel {
    fn new(services: Arc<Services>) -> Self {
        services.counters.open.fetch_add(1, Ordering::Relaxed);
        services.counters.opened.fetch_add(1, Ordering::Relaxed);
        OpenChannel(services)
    }
}

impl Drop for OpenChannel {
    fn drop(&mut self) {
        self.0.counters.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The account's destination rules as the engines' policy.
struct AccountPolicy {
    rules: Vec<Rule>,
}

impl Destinations for AccountPolicy {
    fn check(&self, scheme: &str, host: &str, port: u16, ip: IpAddr) -> Result<(), String> {
        match policy::check(&self.rules, scheme, host, port, ip) {
            policy::Decision::Allow => Ok(()),
            policy::Decision::Deny { reason, rule: Some(rule) } => Err(format!("{reason} (rule {rule})")),
            policy::Decision::Deny { reason, rule: None } => Err(reason),
        }
    }
}

/// A message the shell must send to the device (owned).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChanDown {
    /// `Down::ChanOpened`.
    Opened {
        /// Channel.
        ch: u32,
        /// Credit for the device.
        window: u32,
    },
    /// `Down::ChanData`.
    Data {
        /// Channel.
        ch: u32,
        /// Last piece.
        last: bool,
        /// Bytes.
        data: Vec<u8>,
    },
    /// `Down::ChanCredit`.
    Credit {
        /// Channel.
        ch: u32,
        /// Bytes.
        bytes: u32,
    },
    /// `Down::ChanClosed`.
    Closed {
        /// Channel.
        ch: u32,
        /// A [`Reason`] code.
        reason: u8,
    },
}

impl ChanDown {
    /// The wire message.
    pub fn message(&self) -> keel_proto::msg::Down<'_> {
        use keel_proto::msg::Down;
        match *self {
            ChanDown::Opened { ch, window } => Down::ChanOpened { ch, window },
            ChanDown::Data { ch, last, ref data } => Down::ChanData { ch, last, data },
            ChanDown::Credit { ch, bytes } => Down::ChanCredit { ch, bytes },
            ChanDown::Closed { ch, reason } => Down::ChanClosed { ch, reason },
        }
    }
}

/// What a channel's service produces.
#[derive(Debug)]
enum Out {
    /// A message for the app.
    Msg(Vec<u8>),
    /// Done with a request of this many bytes: give the credit back.
    Release(usize),
    /// End the channel (after the messages already queued).
    Close(Reason),
}

struct Chan {
    peer: Peer,
    input: mpsc::UnboundedSender<Vec<u8>>,
    task: tokio::task::JoinHandle<()>,
    closing: Option<Reason>,
    _open: OpenChannel,
}

impl Drop for Chan {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What a channel's service needs.
#[derive(Clone)]
struct Ctx {
    store: Store,
    services: Arc<Services>,
    device: Arc<str>,
    /// The channel's largest message to the device.
    max_message: usize,
}

/// The channels of one connection.
pub struct ChannelHub {
    store: Store,
    services: Option<Arc<Services>>,
    device: Arc<str>,
    chans: HashMap<u32, Chan>,
    /// The services' outputs, made at the first open: most connections never open a channel,
    /// and an idle fleet should not pay a queue per device (about 2 KB each).
    out: Option<Outputs>,
}

/// Both ends of the queue of the services' outputs (channel number, output).
type Outputs = (mpsc::UnboundedSender<(u32, Out)>, mpsc::UnboundedReceiver<(u32, Out)>);

impl ChannelHub {
    /// The hub of `device`'s connection; `services` is `None` when the server could not start
    /// them (every channel is then refused).
    pub fn new(store: Store, services: Option<Arc<Services>>, device: &str) -> ChannelHub {
        ChannelHub { store, services, device: device.into(), chans: HashMap::new(), out: None }
    }

    /// Channels open.
    pub fn open_count(&self) -> usize {
        self.chans.len()
    }

    /// A channel message from the device; returns the messages to send back, in order.
    pub fn on_up(&mut self, up: ChanUp) -> Vec<ChanDown> {
        let mut out = vec![];
        match up {
            ChanUp::Open { ch, kind, endpoint, window } => self.open(ch, kind, endpoint, window, &mut out),
            ChanUp::Data { ch, last, data } => {
                let Some(c) = self.chans.get_mut(&ch) else { return out };
                match c.peer.data(last, &data) {
                    Ok(Some(m)) => {
                        let _ = c.input.send(m);
                    }
                    Ok(None) => {}
                    Err(r) => {
                        self.chans.remove(&ch);
                        out.push(ChanDown::Closed { ch, reason: r as u8 });
                    }
                }
            }
            ChanUp::Credit { ch, bytes } => {
                let Some(c) = self.chans.get_mut(&ch) else { return out };
                if let Err(r) = c.peer.credit(bytes) {
                    self.chans.remove(&ch);
                    out.push(ChanDown::Closed { ch, reason: r as u8 });
                } else {
                    self.pump(ch, &mut out);
                }
            }
            ChanUp::Close { ch } => {
                self.chans.remove(&ch);
            }
        }
        out
    }

    fn open(&mut self, ch: u32, kind: u8, endpoint: Vec<u8>, window: u32, out: &mut Vec<ChanDown>) {
        let refuse = |out: &mut Vec<ChanDown>, r: Reason, counter: Option<&AtomicU64>| {
            if let Some(c) = counter {
                c.fetch_add(1, Ordering::Relaxed);
            }
            out.push(ChanDown::Closed { ch, reason: r as u8 })
        };
        let Some(services) = self.services.clone() else {
            return refuse(out, Reason::Refused, None);
        };
        let c = &services.counters;
        if self.chans.contains_key(&ch) || !(keel_abi::chan::MIN_RX..=keel_abi::chan::MAX_BUFFER).contains(&window) {
            return refuse(out, Reason::ProtocolError, Some(&c.refused_invalid));
        }
        // The device's budget, whatever connection it opens on.
        if !services.opens.take(&self.device, Instant::now()) {
            return refuse(out, Reason::RateLimited, Some(&c.refused_rate));
        }
        let Some(kind) = Kind::from_u32(kind as u32) else {
            return refuse(out, Reason::Refused, Some(&c.refused_invalid));
        };
        if self.chans.len() >= MAX_CHANNELS {
            return refuse(out, Reason::Refused, Some(&c.refused_limit));
        }
        let open = OpenChannel::new(services.clone());
        let endpoint = String::from_utf8_lossy(&endpoint).into_owned();
        let peer = Peer::new(ch, window, IN_WINDOW);
        let ctx =
            Ctx { store: self.store.clone(), services, device: self.device.clone(), max_message: peer.max_message() };
        let (in_tx, in_rx) = mpsc::unbounded_channel();
        let tx = self.out.get_or_insert_with(mpsc::unbounded_channel).0.clone();
        let task = tokio::spawn(async move {
            let o = Outbox { ch, tx };
            match kind {
                Kind::Http => http(ctx, in_rx, &o).await,
                Kind::Config => config(ctx, in_rx, &o).await,
                Kind::Mqtt => mqtt(ctx, endpoint, in_rx, &o).await,
            }
        });
        self.chans.insert(ch, Chan { peer, input: in_tx, task, closing: None, _open: open });
        out.push(ChanDown::Opened { ch, window: IN_WINDOW });
    }

    /// The next output of a channel's service (await this in the connection's loop).
    pub async fn next(&mut self) -> Vec<ChanDown> {
        let Some((_, rx)) = self.out.as_mut() else {
            // No channel was ever opened: nothing can come.
            return std::future::pending().await;
        };
        let Some((ch, o)) = rx.recv().await else {
            return vec![];
        };
        let mut ready = vec![(ch, o)];
        // Whatever else is ready, in one go.
        while let Ok(x) = rx.try_recv() {
            ready.push(x);
        }
        let mut out = vec![];
        for (ch, o) in ready {
            self.on_service(ch, o, &mut out);
        }
        out
    }

    fn on_service(&mut self, ch: u32, o: Out, out: &mut Vec<ChanDown>) {
        let Some(c) = self.chans.get_mut(&ch) else { return };
        match o {
            Out::Msg(m) => {
                if c.peer.queued().1 + m.len() > MAX_QUEUED {
                    tracing::debug!(device = %self.device, ch, "channel queue full: message dropped");
                } else if c.peer.push(m).is_err() {
                    // The services size their answers to the buffer; this is a last resort.
                    let e = Msg::Error { code: http_result::RESPONSE_TOO_LARGE, text: b"message too large" };
                    let _ = c.peer.push(e.to_vec().unwrap_or_default());
                }
            }
            Out::Release(n) => {
                let bytes = c.peer.release(n);
                if bytes > 0 {
                    out.push(ChanDown::Credit { ch, bytes });
                }
            }
            Out::Close(r) => c.closing = Some(r),
        }
        self.pump(ch, out);
    }

    /// Sends what the device's credit allows; ends a closing channel once its queue is empty.
    fn pump(&mut self, ch: u32, out: &mut Vec<ChanDown>) {
        let Some(c) = self.chans.get_mut(&ch) else { return };
        while let Some((last, data)) = c.peer.next_piece() {
            out.push(ChanDown::Data { ch, last, data: data.to_vec() });
            c.peer.piece_sent();
        }
        if let Some(r) = c.closing {
            if c.peer.queued().0 == 0 {
                self.chans.remove(&ch);
                out.push(ChanDown::Closed { ch, reason: r as u8 });
            }
        }
    }
}

/// A service's way back to its channel.
struct Outbox {
    ch: u32,
    tx: mpsc::UnboundedSender<(u32, Out)>,
}

impl Outbox {
    fn msg(&self, m: &Msg<'_>) {
        if let Ok(v) = m.to_vec() {
            let _ = self.tx.send((self.ch, Out::Msg(v)));
        }
    }
    fn release(&self, n: usize) {
        let _ = self.tx.send((self.ch, Out::Release(n)));
    }
    fn close(&self, r: Reason) {
        let _ = self.tx.send((self.ch, Out::Close(r)));
    }
}

/// Who the device is (its account) and its account's destination policy.
async fn account_policy(ctx: &Ctx) -> Option<(Tenant, AccountPolicy)> {
    let account = ctx.store.device_account(&ctx.device).await.ok().flatten()?;
    let rules = ctx.store.destination_rules(&account).await.ok()?;
    Some((Tenant { account, device: ctx.device.to_string() }, AccountPolicy { rules }))
}

fn http_code(e: &HttpError) -> u8 {
    match e {
        HttpError::UnsupportedScheme => http_result::UNSUPPORTED_SCHEME,
        HttpError::UnsupportedMethod => http_result::UNSUPPORTED_METHOD,
        HttpError::InvalidUrl | HttpError::BodyTooLarge => http_result::BAD_REQUEST,
        HttpError::InvalidHeaders => http_result::INVALID_HEADERS,
        HttpError::InvalidTimeout => http_result::INVALID_TIMEOUT,
        HttpError::Denied(_) => http_result::DENIED,
        HttpError::Timeout => http_result::TIMEOUT,
        HttpError::RequestFailed(_) => http_result::REQUEST_FAILED,
        HttpError::ResponseTooLarge => http_result::RESPONSE_TOO_LARGE,
        HttpError::RateLimited | HttpError::AccountLimited => http_result::RATE_LIMITED,
    }
}

fn failure(code: u8, why: &str) -> Msg<'_> {
    Msg::HttpResponse { result: code, status: 0, headers: Strs::Items(&[]), body: why.as_bytes() }
}

/// One HTTP request per channel: the first message is the request; any other is answered
/// `ALREADY_SENT`. The channel stays open until the app closes it (it reads the response from
/// its buffer meanwhile).
async fn http(ctx: Ctx, mut input: mpsc::UnboundedReceiver<Vec<u8>>, o: &Outbox) {
    let Some(first) = input.recv().await else { return };
    o.release(first.len());
    let req = match Msg::decode(&first) {
        Ok(Msg::HttpRequest { method, url, timeout_ms, headers, body }) => {
            let text = |b: &[u8]| String::from_utf8(b.to_vec()).ok();
            let hs: Option<Vec<(String, String)>> =
                headers.iter().map(|h| msg::split_header(h).and_then(|(n, v)| Some((text(n)?, text(v)?)))).collect();
            match (text(method), text(url), hs) {
                (Some(method), Some(url), Some(headers)) => {
                    Some(HttpRequest { method, url, headers, body: body.to_vec(), timeout_ms })
                }
                (_, _, None) => {
                    o.msg(&failure(http_result::INVALID_HEADERS, "headers must be 'Name: value' in UTF-8"));
                    None
                }
                _ => {
                    o.msg(&failure(http_result::BAD_REQUEST, "method and URL must be UTF-8"));
                    None
                }
            }
        }
        _ => {
            o.msg(&failure(http_result::BAD_REQUEST, "the first message of an HTTP channel is a request"));
            None
        }
    };
    if let Some(req) = req {
        let answer = match account_policy(&ctx).await {
            None => Err(HttpError::Denied("the device's account has no policy".into())),
            Some((who, p)) => {
                ctx.services.http.execute(&who, &p, req, ctx.max_message.saturating_sub(RESPONSE_FRAMING)).await
            }
        };
        match answer {
            Ok(r) => {
                let lines: Vec<Vec<u8>> = r.headers.iter().map(|(n, v)| format!("{n}: {v}").into_bytes()).collect();
                let lines: Vec<&[u8]> = lines.iter().take(msg::MAX_HTTP_HEADERS).map(Vec::as_slice).collect();
                let m = Msg::HttpResponse {
                    result: http_result::OK,
                    status: r.status,
                    headers: Strs::Items(&lines),
                    body: &r.body,
                };
                match m.to_vec() {
                    Ok(v) if v.len() <= ctx.max_message => o.msg(&m),
                    _ => {
                        o.msg(&failure(http_result::RESPONSE_TOO_LARGE, "the response does not fit the receive buffer"))
                    }
                }
            }
            Err(e) => o.msg(&failure(http_code(&e), &e.to_string())),
        }
    }
    if let Some(more) = input.recv().await {
        // One request per channel: a second one ends it (answering each would let a device
        // that never reads make the server queue answers).
        o.release(more.len());
        o.close(Reason::ProtocolError);
    }
}

/// Whether a device may read `key` through a config channel: not the server's own keys (the
/// managed MQTT profiles' `mqtt/...`: broker credentials and TLS material stay on the server).
pub fn device_may_read(key: &str) -> bool {
    !key.starts_with("mqtt/")
}

/// One configuration fetch per channel.
async fn config(ctx: Ctx, mut input: mpsc::UnboundedReceiver<Vec<u8>>, o: &Outbox) {
    let Some(first) = input.recv().await else { return };
    o.release(first.len());
    let bad = |code: u8| Msg::ConfigResult { result: code, items: Items::Items(&[]) };
    let items = match Msg::decode(&first) {
        Ok(Msg::ConfigFetch { keys }) => keys
            .iter()
            .map(|(scope, store, key)| {
                let scope = match scope {
                    msg::config::SCOPE_ACCOUNT => Some(Scope::Account),
                    msg::config::SCOPE_DEVICE => Some(Scope::Device),
                    _ => None,
                };
                let store = match store {
                    msg::config::STORE_CONFIG => Some(StoreKind::Config),
                    msg::config::STORE_SECRET => Some(StoreKind::Secret),
                    _ => None,
                };
                let key = String::from_utf8(key.to_vec()).ok().filter(|k| device_may_read(k));
                match (scope, store, key) {
                    (Some(scope), Some(store), Some(key)) => Some(FetchItem { scope, store, key }),
                    _ => None,
                }
            })
            .collect::<Vec<_>>(),
        _ => {
            o.msg(&bad(config_result::BAD_REQUEST));
            return;
        }
    };
    let valid: Vec<FetchItem> = items.iter().flatten().cloned().collect();
    let found = ctx.store.fetch_for_device(&ctx.device, &valid).await;
    let mut found = match found {
        Ok(f) => f.into_iter(),
        Err(e) => {
            tracing::warn!(device = %ctx.device, "config fetch failed: {e}");
            vec![FetchOutcome::NotFound; 0].into_iter()
        }
    };
    let results: Vec<(u8, Vec<u8>)> = items
        .iter()
        .map(|i| match i {
            None => (config_result::INVALID_KEY, vec![]),
            Some(_) => match found.next() {
                Some(FetchOutcome::Found(v)) => (config_result::OK, v),
                Some(FetchOutcome::NotFound) => (config_result::NOT_FOUND, vec![]),
                Some(FetchOutcome::Invalid) => (config_result::INVALID_KEY, vec![]),
                None => (config_result::SERVER_ERROR, vec![]),
            },
        })
        .collect();
    let refs: Vec<(u8, &[u8])> = results.iter().map(|(r, v)| (*r, v.as_slice())).collect();
    let m = Msg::ConfigResult { result: config_result::OK, items: Items::Items(&refs) };
    match m.to_vec() {
        Ok(v) if v.len() <= ctx.max_message => o.msg(&m),
        _ => o.msg(&bad(config_result::RESPONSE_TOO_LARGE)),
    }
    while let Some(more) = input.recv().await {
        o.release(more.len());
    }
}

/// The broker profile `name` from the device's configuration: `mqtt/<name>/url`
/// (`mqtts://host[:port]` or `mqtt://...`), optional `mqtt/<name>/ca`, `.../client-cert`,
/// `.../username`, `.../client-id`, and secrets `mqtt/<name>/password`, `.../client-key`. Each
/// key is looked up for the device first, then for its account.
async fn profile(ctx: &Ctx, name: &str) -> Result<BrokerSettings, String> {
    if name.is_empty() || !name.bytes().all(|c| c.is_ascii_alphanumeric() || b"._-".contains(&c)) {
        return Err(format!("'{name}' is not a profile name"));
    }
    let keys = ["url", "ca", "client-cert", "username", "client-id", "password", "client-key"];
    let mut items = vec![];
    for (i, k) in keys.iter().enumerate() {
        let store = if i >= 5 { StoreKind::Secret } else { StoreKind::Config };
        for scope in [Scope::Device, Scope::Account] {
            items.push(FetchItem { scope, store, key: format!("mqtt/{name}/{k}") });
        }
    }
    let found = ctx.store.fetch_for_device(&ctx.device, &items).await.map_err(|e| e.to_string())?;
    let value = |i: usize| -> Option<Vec<u8>> {
        found[2 * i..2 * i + 2].iter().find_map(|f| if let FetchOutcome::Found(v) = f { Some(v.clone()) } else { None })
    };
    let text = |i: usize| value(i).and_then(|v| String::from_utf8(v).ok());
    let url = text(0).ok_or_else(|| format!("profile '{name}' has no mqtt/{name}/url"))?;
    let (tls, rest) = if let Some(r) = url.strip_prefix("mqtts://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("mqtt://") {
        (false, r)
    } else {
        return Err(format!("mqtt/{name}/url must start with mqtts:// or mqtt://"));
    };
    let rest = rest.trim_end_matches('/');
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (
            h.trim_start_matches('[').trim_end_matches(']').to_string(),
            p.parse().map_err(|_| "bad port".to_string())?,
        ),
        _ => (rest.to_string(), if tls { 8883 } else { 1883 }),
    };
    Ok(BrokerSettings {
        host,
        port,
        tls,
        ca_pem: value(1),
        client_cert_pem: value(2),
        username: text(3),
        client_id: text(4).unwrap_or_else(|| ctx.device.to_string()),
        password: text(5),
        client_key_pem: value(6),
    })
}

fn state(s: crate::proxy::mqtt::RequestState) -> u8 {
    use crate::proxy::mqtt::RequestState as R;
    match s {
        R::Completed => mqtt_state::COMPLETED,
        R::InvalidParameters => mqtt_state::INVALID_PARAMETERS,
        R::AlreadyConnected => mqtt_state::ALREADY_CONNECTED,
        R::NotConnected => mqtt_state::NOT_CONNECTED,
        R::NxDomain => mqtt_state::NX_DOMAIN,
        R::UnknownCa => mqtt_state::UNKNOWN_CA,
        R::CertificateExpired => mqtt_state::CERTIFICATE_EXPIRED,
        R::SocketError | R::BrokerRefused => mqtt_state::SOCKET_ERROR,
        R::RateLimited => mqtt_state::RATE_LIMITED,
        R::Denied => mqtt_state::DENIED,
    }
}

/// The session command for an app's MQTT request, or the answer refusing it: topics must be
/// UTF-8 (MQTT's rule; converting them lossily would publish to, or subscribe to, another topic
/// than the app named).
fn mqtt_command(req: Msg<'_>) -> Result<MqttCommand, Msg<'static>> {
    let text = |b: &[u8]| String::from_utf8(b.to_vec()).ok();
    let invalid = mqtt_state::INVALID_PARAMETERS;
    match req {
        Msg::MqttConnect { clean_start, keepalive_s, will } => {
            let will = match will {
                None => None,
                Some(w) => Some(Will {
                    topic: text(w.topic).ok_or(Msg::MqttConnectResult {
                        state: invalid,
                        reason: 0,
                        session_present: false,
                    })?,
                    payload: w.payload.to_vec(),
                    qos: w.qos,
                    retain: w.retain,
                }),
            };
            Ok(MqttCommand::Connect { clean_start, keepalive_s, will })
        }
        Msg::MqttSubscribe { id, topics } => {
            let topics: Option<Vec<(String, u8)>> = topics.iter().map(|(t, q)| Some((text(t)?, q))).collect();
            let topics = topics.ok_or(Msg::MqttSubscribeResult { id, state: invalid, codes: &[] })?;
            Ok(MqttCommand::Subscribe { id, topics })
        }
        Msg::MqttUnsubscribe { id, topics } => {
            let topics: Option<Vec<String>> = topics.iter().map(text).collect();
            let topics = topics.ok_or(Msg::MqttUnsubscribeResult { id, state: invalid })?;
            Ok(MqttCommand::Unsubscribe { id, topics })
        }
        Msg::MqttPublish { id, qos, retain, topic, payload } => {
            let topic = text(topic).ok_or(Msg::MqttPublishResult { id, state: invalid, reason: 0 })?;
            Ok(MqttCommand::Publish { id, topic, payload: payload.to_vec(), qos, retain })
        }
        Msg::MqttAck { id } => Ok(MqttCommand::Ack { id }),
        Msg::MqttDisconnect => Ok(MqttCommand::Disconnect),
        _ => Err(Msg::Error { code: http_result::BAD_REQUEST, text: b"not an MQTT request" }),
    }
}

/// The device's managed MQTT session for one profile: app messages become session commands,
/// session events become app messages.
async fn mqtt(ctx: Ctx, endpoint: String, mut input: mpsc::UnboundedReceiver<Vec<u8>>, o: &Outbox) {
    let name = if endpoint.is_empty() { "default".to_string() } else { endpoint };
    let refuse_as = |state: u8, why: &str| {
        o.msg(&Msg::MqttConnectResult { state, reason: 0, session_present: false });
        o.msg(&Msg::MqttStatus { state: msg::mqtt_session::DOWN, reason: why.as_bytes() });
        o.close(Reason::ByServer);
    };
    let refuse = |why: &str| refuse_as(mqtt_state::DENIED, why);
    let settings = match profile(&ctx, &name).await {
        Ok(s) => s,
        Err(why) => return refuse(&why),
    };
    let Some((who, policy)) = account_policy(&ctx).await else { return refuse("the device's account has no policy") };
    let mut att = match ctx.services.mqtt.attach(&who, &name, settings, Arc::new(policy)) {
        Ok(a) => a,
        // A session limit (the server's or the account's): this channel only.
        Err(e) => return refuse_as(mqtt_state::RATE_LIMITED, &e.to_string()),
    };
    // A command the session has no room for yet waits here, and the app's next messages wait
    // unread (their credit unreleased) behind it: a burst is carried at the session's pace,
    // never refused because a queue between two tasks was momentarily full.
    let mut held: Option<MqttCommand> = None;
    loop {
        tokio::select! {
            permit = att.commands.reserve(), if held.is_some() => match permit {
                Ok(permit) => permit.send(held.take().expect("a held command")),
                Err(_) => {
                    o.msg(&Msg::MqttStatus { state: msg::mqtt_session::DOWN, reason: b"session replaced or closed" });
                    o.close(Reason::ByServer);
                    return;
                }
            },
            m = input.recv(), if held.is_none() => {
                let Some(m) = m else { return };
                o.release(m.len());
                let cmd = match Msg::decode(&m) {
                    Ok(req) => match mqtt_command(req) {
                        Ok(cmd) => Some(cmd),
                        Err(answer) => {
                            o.msg(&answer);
                            None
                        }
                    },
                    Err(_) => {
                        o.msg(&Msg::Error { code: http_result::BAD_REQUEST, text: b"not an MQTT request" });
                        None
                    }
                };
                if let Some(cmd) = cmd {
                    if let Err(mpsc::error::TrySendError::Full(cmd)) = att.commands.try_send(cmd) {
                        held = Some(cmd);
                    }
                }
            }
            ev = att.events.recv() => {
                let Some(ev) = ev else {
                    o.msg(&Msg::MqttStatus { state: msg::mqtt_session::DOWN, reason: b"session replaced or closed" });
                    o.close(Reason::ByServer);
                    return;
                };
                match ev {
                    MqttEvent::ConnectResult { state: s, reason, session_present } => {
                        o.msg(&Msg::MqttConnectResult { state: state(s), reason, session_present })
                    }
                    MqttEvent::SubscribeResult { id, state: s, codes } => {
                        o.msg(&Msg::MqttSubscribeResult { id, state: state(s), codes: &codes })
                    }
                    MqttEvent::UnsubscribeResult { id, state: s } => o.msg(&Msg::MqttUnsubscribeResult { id, state: state(s) }),
                    MqttEvent::PublishResult { id, state: s, reason } => {
                        o.msg(&Msg::MqttPublishResult { id, state: state(s), reason })
                    }
                    MqttEvent::Message { id, topic, payload, qos, retain } => {
                        let m = Msg::MqttMessage { id, qos, retain, topic: topic.as_bytes(), payload: &payload };
                        if m.encoded_len().is_ok_and(|n| n <= ctx.max_message) {
                            o.msg(&m);
                        } else {
                            o.msg(&Msg::MqttLost { reason: 1, topic: topic.as_bytes(), len: payload.len() as u32 });
                            // Acknowledged so the broker does not deliver it again.
                            if let Err(mpsc::error::TrySendError::Full(ack)) = att.commands.try_send(MqttCommand::Ack { id }) {
                                held.get_or_insert(ack);
                            }
                        }
                    }
                    MqttEvent::Lost { reason, topic, len, .. } => {
                        let r = match reason {
                            crate::proxy::mqtt::LostReason::TooLarge => 1,
                            crate::proxy::mqtt::LostReason::RateLimited => 2,
                            crate::proxy::mqtt::LostReason::QueueFull => 3,
                        };
                        o.msg(&Msg::MqttLost { reason: r, topic: topic.as_bytes(), len })
                    }
                    MqttEvent::Status { state: s, reason } => {
                        o.msg(&Msg::MqttStatus { state: s as u8, reason: reason.as_bytes() })
                    }
                    MqttEvent::Disconnected { state: s, code } => {
                        o.msg(&Msg::MqttDisconnectResult { state: state(s), code })
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_settings_come_from_the_environment_and_garbage_is_refused() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
        };
        let (h, m, d) = limits_from_env(env(&[])).unwrap();
        assert_eq!((h.max_concurrent, h.max_per_account), (256, 64));
        assert_eq!((m.max_sessions, m.max_sessions_per_account), (10_000, 10_000), "no MQTT share by default");
        assert_eq!((d.max_concurrent, d.per_account), (64, 16));
        let (h, m, d) = limits_from_env(env(&[
            ("KEEL_PROXY_HTTP_PER_ACCOUNT", "32"),
            ("KEEL_MQTT_SESSIONS_PER_ACCOUNT", "2500"),
            ("KEEL_PROXY_DNS_MAX", "8"),
            ("KEEL_PROXY_DNS_PER_ACCOUNT", "100"),
        ]))
        .unwrap();
        assert_eq!((h.max_concurrent, h.max_per_account), (256, 32));
        assert_eq!(m.max_sessions_per_account, 2_500);
        assert_eq!((d.max_concurrent, d.per_account), (8, 8), "a share above the limit is the limit");
        for bad in ["0", "-1", "many", ""] {
            let e = limits_from_env(move |k: &str| (k == "KEEL_MQTT_MAX_SESSIONS").then(|| bad.to_string()));
            assert!(e.unwrap_err().contains("KEEL_MQTT_MAX_SESSIONS"), "{bad:?}");
        }
    }

    #[test]
    fn mqtt_topics_that_are_not_utf8_are_refused_not_rewritten() {
        let bad: &[u8] = b"sensor/\xff";
        let subs = [(bad, 1u8)];
        let cases = [
            (
                Msg::MqttPublish { id: 7, qos: 1, retain: false, topic: bad, payload: b"x" },
                msg::ty::MQTT_PUBLISH_RESULT,
            ),
            (Msg::MqttSubscribe { id: 8, topics: msg::Subs::Items(&subs) }, msg::ty::MQTT_SUBSCRIBE_RESULT),
            (Msg::MqttUnsubscribe { id: 9, topics: Strs::Items(&[bad]) }, msg::ty::MQTT_UNSUBSCRIBE_RESULT),
        ];
        for (req, answer) in cases {
            let refusal = mqtt_command(req).expect_err("refused");
            assert_eq!(refusal.ty(), answer);
            let v = refusal.to_vec().unwrap();
            assert_eq!(Msg::decode(&v).unwrap(), refusal);
        }
        let ok = Msg::MqttPublish { id: 1, qos: 0, retain: false, topic: b"sensor/\xc3\xa9", payload: b"" };
        assert!(matches!(mqtt_command(ok), Ok(MqttCommand::Publish { topic, .. }) if topic == "sensor/\u{e9}"));
        assert!(mqtt_command(Msg::MqttLost { reason: 1, topic: b"t", len: 1 }).is_err(), "not a request");
    }

    #[test]
    fn the_open_budget_is_a_burst_then_a_rate() {
        let budget = OpenBudget::new(16);
        let t0 = Instant::now();
        for _ in 0..OPEN_BURST as usize {
            assert!(budget.take("d", t0));
        }
        assert!(!budget.take("d", t0), "the burst is spent");
        // 1/20 s later: one more.
        let later = t0 + std::time::Duration::from_millis(50);
        assert!(budget.take("d", later));
        assert!(!budget.take("d", later));
        // A clock read a little earlier on another thread takes nothing back.
        assert!(!budget.take("d", t0));
        assert!(budget.take("e", t0), "each device has its own");
    }

    #[test]
    fn the_open_budget_is_bounded_and_forgets_only_full_buckets() {
        let budget = OpenBudget::new(2);
        let t0 = Instant::now();
        for _ in 0..OPEN_BURST as usize {
            assert!(budget.take("a", t0));
            assert!(budget.take("b", t0));
        }
        // Full of buckets still refilling: an unknown device is refused, not given a burst.
        assert!(!budget.take("c", t0));
        assert!(!budget.take("c", t0 + std::time::Duration::from_millis(500)));
        assert_eq!(budget.devices(), 2);
        // Once they are full again they are forgotten, and "c" gets its burst.
        let refilled = t0 + std::time::Duration::from_secs_f64(OPEN_BURST / OPENS_PER_SECOND + 0.1);
        assert!(budget.take("c", refilled));
        assert_eq!(budget.devices(), 1);
        // A known device's bucket is kept however full the map is.
        for _ in 1..OPEN_BURST as usize {
            assert!(budget.take("c", refilled));
        }
        assert!(!budget.take("c", refilled));
    }

    #[test]
    fn devices_cannot_read_the_servers_mqtt_credentials() {
        for key in ["mqtt/default/password", "mqtt/telemetry/client-key", "mqtt/x/url"] {
            assert!(!device_may_read(key), "{key}");
        }
        for key in ["greeting", "api-key", "site/mqtt/x", "mqttx/y"] {
            assert!(device_may_read(key), "{key}");
        }
    }
}
