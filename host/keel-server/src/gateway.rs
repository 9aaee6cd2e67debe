//! The device gateway: accepts devices' TCP connections, runs the secure channel (Noise IK, the
//! server end of `keel_link::session`) and stores what they send.
//!
//! One task per connection. A connection that sends anything invalid — garbage, a truncated or
//! replayed handshake, an unknown device key, an oversized frame, a message that fails to
//! authenticate — is closed; no other connection is affected.
//!
//! Updates (see `docs/wire-protocol.md`, "Updates"): after `Ready` the device reports its update
//! status; when its target bundle (the deployment) differs from what it reports, the gateway
//! offers the bundle's envelope and then serves `FetchLayer` requests from the object store.
//! A deployment made while the device is connected reaches it at once (the store broadcasts
//! deployment changes to the connection tasks).

use std::time::Duration;

use keel_link::msg::{
    decode_up, features, negotiate, Down, LayerErrorCode, Negotiated, Up, UpdateReason, UpdateState, VisorEvent,
    LAYER_CHUNK, MAX_FETCH, PROTOCOL_MIN, PROTOCOL_VERSION,
};
use keel_link::session::server::{Accepting, ServerSession};
use keel_link::session::MAX_FRAME;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;
use tokio::task::JoinSet;

use crate::framed::{FrameReader, ReadError};
use crate::ota::{BundleLayer, UpdateStatus};
use crate::store::{Counters, DeviceEvent, LogRecord, Store};
use crate::unix_us;

/// How long a new connection may take to send its first handshake message.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A write to a device that does not complete in this time ends the connection.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// A device that sends nothing for this long is disconnected.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// How often the gateway pings an idle device.
pub const PING_INTERVAL: Duration = Duration::from_secs(30);
/// The device's wall clock is re-synchronised every this many pings (10 minutes).
pub const TIME_SYNC_EVERY_PINGS: u32 = 20;
/// At most this many log records already received are stored in one transaction and
/// acknowledged with one `LogAck`.
pub const MAX_BATCH: usize = 64;

/// Why a connection ended.
#[derive(Debug)]
pub enum ConnError {
    /// Network error or timeout.
    Io(std::io::Error),
    /// The peer sent something invalid.
    Protocol(&'static str),
    /// The device key is not registered.
    UnknownDevice,
    /// Storage failed.
    Store(sqlx::Error),
}

impl From<std::io::Error> for ConnError {
    fn from(e: std::io::Error) -> Self {
        ConnError::Io(e)
    }
}

impl From<sqlx::Error> for ConnError {
    fn from(e: sqlx::Error) -> Self {
        ConnError::Store(e)
    }
}

/// Generates a server static key pair: (private, public).
pub fn generate_keypair() -> (Vec<u8>, [u8; 32]) {
    let params = keel_link::session::NOISE_PARAMS.parse().expect("valid Noise parameters");
    let k = snow::Builder::new(params).generate_keypair().expect("key generation");
    let public: [u8; 32] = k.public.try_into().expect("X25519 public key is 32 bytes");
    (k.private, public)
}

type Frames = FrameReader<tokio::net::tcp::OwnedReadHalf, MAX_FRAME>;

/// The next frame (the one codec, `keel_proto::frame::Decoder`), within `timeout`.
async fn read_frame(r: &mut Frames, timeout: Duration) -> Result<Vec<u8>, ConnError> {
    match tokio::time::timeout(timeout, r.next()).await {
        Err(_) => Err(ConnError::Protocol("timeout")),
        Ok(Err(ReadError::Io(e))) => Err(ConnError::Io(e)),
        Ok(Err(ReadError::Frame(_))) => Err(ConnError::Protocol("oversized frame")),
        Ok(Ok(f)) => Ok(f),
    }
}

/// Serves device connections from `listener` until the task is dropped or aborted; aborting it
/// also closes every connection it accepted.
pub async fn serve(listener: TcpListener, store: Store, server_private: Vec<u8>) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors, typically: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let (store, key) = (store.clone(), server_private.clone());
                Counters::add(&store.counters().connections, 1);
                conns.spawn(async move {
                    match connection(stream, &store, &key).await {
                        Ok(()) => {}
                        Err(e @ (ConnError::Protocol(_) | ConnError::UnknownDevice)) => {
                            Counters::add(&store.counters().rejected, 1);
                            tracing::info!(%peer, error = ?e, "device connection refused or dropped");
                        }
                        Err(e) => tracing::info!(%peer, error = ?e, "device connection closed"),
                    }
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

async fn connection(s: TcpStream, store: &Store, server_private: &[u8]) -> Result<(), ConnError> {
    let (rd, mut wr) = s.into_split();
    let mut rd = Frames::new(rd);
    let first = read_frame(&mut rd, HANDSHAKE_TIMEOUT).await?;
    let acc = Accepting::read(server_private, &first).map_err(|_| ConnError::Protocol("bad handshake"))?;
    let device = store.device_by_key(&acc.device_key).await?.ok_or(ConnError::UnknownDevice)?;
    let hello = acc.hello().map_err(|_| ConnError::Protocol("bad hello"))?;
    // The highest version both speak, and the features both announced.
    let negotiated = negotiate(&hello, PROTOCOL_MIN, PROTOCOL_VERSION, features::SUPPORTED)
        .ok_or(ConnError::Protocol("no common protocol version"))?;
    let (visor_version, boot_count) = (hello.visor_version.to_string(), hello.boot_count);
    let app = hello.app.map(|(a, b)| (a.to_string(), b.to_string()));
    let acked = store.max_seq(&device.id).await?;
    let welcome = Down::Welcome {
        protocol: negotiated.protocol,
        unix_us: unix_us(),
        log_acked: acked,
        features: negotiated.features,
    };
    let (mut session, frame) = acc.welcome(&welcome).map_err(|_| ConnError::Protocol("welcome"))?;
    write_all(&mut wr, &frame).await?;
    // The first handshake message may be a replay; only the device can send a valid `Ready`.
    let ready = read_frame(&mut rd, HANDSHAKE_TIMEOUT).await?;
    let plain = session.receive(&ready).map_err(|_| ConnError::Protocol("bad ready"))?;
    if decode_up(&plain) != Ok(Up::Ready) {
        return Err(ConnError::Protocol("expected ready"));
    }
    store
        .device_online(&device.id, &visor_version, app.as_ref().map(|(a, b)| (a.as_str(), b.as_str())), boot_count)
        .await?;
    // A device that reconnects before its old connection timed out has two for a while: only
    // the newest may mark it offline.
    let generation = store.claim_online(&device.id);
    Counters::add(&store.counters().handshakes, 1);
    tracing::info!(device = %device.id, "device online");
    // Frames are read by their own task and handed over a channel, so waiting for one can be
    // combined with timers without losing half-read frames.
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let reader = tokio::spawn(async move {
        loop {
            let f = read_frame(&mut rd, IDLE_TIMEOUT).await;
            let end = f.is_err();
            if tx.send(f).await.is_err() || end {
                break;
            }
        }
    });
    let peer = Peer { id: &device.id, visor_version: &visor_version, negotiated };
    let result = exchange(wr, rx, &mut session, store, &peer).await;
    reader.abort();
    if store.release_online(&device.id, generation) {
        store.device_offline(&device.id).await?;
    }
    result
}

/// The device at the other end of a connection.
struct Peer<'a> {
    id: &'a str,
    visor_version: &'a str,
    negotiated: Negotiated,
}

/// The record to store for a message, if any; whether it is a device record (which is
/// acknowledged) rather than a server note; and the typed event it carries.
#[allow(clippy::type_complexity)]
fn record_of(
    peer: &Peer<'_>,
    msg: Up<'_>,
    counters: &Counters,
) -> Result<Option<(LogRecord, bool, Option<VisorEvent>)>, ConnError> {
    let id = peer.id;
    Ok(match msg {
        Up::Log { seq, kind, level, time_us, text } => Some((
            LogRecord {
                seq,
                kind,
                level,
                device_time_us: time_us,
                received_at: unix_us(),
                text: String::from_utf8_lossy(text).into_owned(),
            },
            true,
            None,
        )),
        Up::Event { seq, time_us, event } => {
            if let VisorEvent::Unknown(t) = event {
                tracing::debug!(device = %id, event = t, "unknown visor event skipped");
                Counters::add(&counters.unknown_messages, 1);
            }
            let mut text = String::new();
            let _ = event.write_text(peer.visor_version, &mut text);
            let level = if matches!(event, VisorEvent::Crash(_)) { 1 } else { 2 };
            let record = LogRecord { seq, kind: 1, level, device_time_us: time_us, received_at: unix_us(), text };
            Some((record, true, Some(event)))
        }
        Up::Dropped { count, before_seq } => {
            tracing::warn!(device = %id, count, before_seq, "device dropped log records");
            Counters::add(&counters.log_dropped, count);
            let note = LogRecord {
                seq: before_seq.saturating_sub(1),
                kind: 2,
                level: 1,
                device_time_us: 0,
                received_at: unix_us(),
                text: format!("dropped {count}"),
            };
            Some((note, false, None))
        }
        Up::Unknown(v) => {
            tracing::debug!(device = %id, variant = v, "unknown message skipped");
            Counters::add(&counters.unknown_messages, 1);
            None
        }
        Up::Pong { .. } | Up::Ready | Up::UpdateStatus { .. } | Up::FetchLayer { .. } => None,
        Up::Hello { .. } => return Err(ConnError::Protocol("hello after handshake")),
    })
}

/// The text of an update reason code (empty for 0).
fn reason_text(code: u16) -> String {
    match (code, UpdateReason::from_u16(code)) {
        (0, _) => String::new(),
        (_, Some(r)) => r.as_str().to_string(),
        (_, None) => format!("reason {code}"),
    }
}

/// The bundle a device should run, as the gateway serves it.
struct Target {
    bundle_id: String,
    sequence: u64,
    envelope: Vec<u8>,
    layers: Vec<BundleLayer>,
}

/// What the device last said about its updates.
#[derive(Clone, Copy)]
struct Reported {
    installed: u64,
    sequence: u64,
    state: UpdateState,
}

/// The update side of one connection.
struct Ota {
    target: Option<Target>,
    reported: Option<Reported>,
    /// The sequence offered on this connection (offered once per connection and deployment, so
    /// a device that fails on it is not offered it again in a loop).
    offered: Option<u64>,
    cancelled: Option<u64>,
}

/// Encrypts and writes one message.
async fn send(
    s: &mut tokio::net::tcp::OwnedWriteHalf,
    session: &mut ServerSession,
    m: &Down<'_>,
) -> Result<(), ConnError> {
    let f = session.send(m).map_err(|_| ConnError::Protocol("encrypt"))?;
    write_all(s, &f).await
}

/// Writes to a device, giving up after [`WRITE_TIMEOUT`]: a peer that stops reading (zero
/// window, half-open link) must not hold its connection task forever.
async fn write_all<W: AsyncWriteExt + Unpin>(s: &mut W, bytes: &[u8]) -> Result<(), ConnError> {
    match tokio::time::timeout(WRITE_TIMEOUT, s.write_all(bytes)).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(ConnError::Io(std::io::Error::new(std::io::ErrorKind::TimedOut, "device not reading"))),
    }
}

impl Ota {
    async fn load(store: &Store, id: &str) -> Result<Ota, ConnError> {
        Ok(Ota { target: Self::target(store, id).await?, reported: None, offered: None, cancelled: None })
    }

    async fn target(store: &Store, id: &str) -> Result<Option<Target>, ConnError> {
        Ok(store.deployment(id).await?.map(|d| Target {
            bundle_id: d.bundle.id,
            sequence: d.bundle.sequence,
            envelope: d.bundle.envelope,
            layers: d.bundle.layers,
        }))
    }

    /// The deployment changed: forget what was offered and look again.
    async fn reload(&mut self, store: &Store, id: &str) -> Result<(), ConnError> {
        self.target = Self::target(store, id).await?;
        self.offered = None;
        self.cancelled = None;
        Ok(())
    }

    /// Sends what the device needs given its target and its last report: `UpdateCancel` for a
    /// download that is no longer the target, `UpdateOffer` for a target it neither runs nor
    /// already handles (downloading, installing, on trial, confirmed, refused or rolled back).
    async fn reconcile(
        &mut self,
        s: &mut tokio::net::tcp::OwnedWriteHalf,
        session: &mut ServerSession,
        store: &Store,
        id: &str,
    ) -> Result<(), ConnError> {
        // Nothing before the device said where it stands (devices without an update agent never do).
        let Some(rep) = self.reported else { return Ok(()) };
        let target_seq = self.target.as_ref().map(|t| t.sequence);
        if rep.state == UpdateState::Downloading
            && rep.sequence != 0
            && target_seq != Some(rep.sequence)
            && self.cancelled != Some(rep.sequence)
        {
            send(s, session, &Down::UpdateCancel { sequence: rep.sequence }).await?;
            self.cancelled = Some(rep.sequence);
            store.note_update_event(id, "cancelled", rep.sequence, "download cancelled: no longer the target").await?;
        }
        let Some(t) = &self.target else { return Ok(()) };
        if rep.installed == t.sequence || self.offered == Some(t.sequence) {
            return Ok(());
        }
        let handled = matches!(
            rep.state,
            UpdateState::Downloading
                | UpdateState::Installing
                | UpdateState::Trial
                | UpdateState::Confirmed
                | UpdateState::Refused
                | UpdateState::RolledBack
        );
        if rep.sequence == t.sequence && handled {
            return Ok(());
        }
        send(s, session, &Down::UpdateOffer { envelope: &t.envelope }).await?;
        self.offered = Some(t.sequence);
        Counters::add(&store.counters().offers_sent, 1);
        let text = format!("offered {} (sequence {})", t.bundle_id, t.sequence);
        store.note_update_event(id, "offered", t.sequence, &text).await?;
        tracing::info!(device = %id, bundle = %t.bundle_id, sequence = t.sequence, "update offered");
        Ok(())
    }

    /// Answers one `FetchLayer`: consecutive `LayerData` covering the range, or one `LayerError`.
    async fn fetch(
        &self,
        s: &mut tokio::net::tcp::OwnedWriteHalf,
        session: &mut ServerSession,
        store: &Store,
        (sequence, component, offset, len): (u64, u8, u32, u32),
    ) -> Result<(), ConnError> {
        let refuse = |code: LayerErrorCode| Down::LayerError { sequence, component, offset, code: code as u8 };
        let Some(t) = self.target.as_ref().filter(|t| t.sequence == sequence) else {
            return send(s, session, &refuse(LayerErrorCode::UnknownSequence)).await;
        };
        let Some(layer) = t.layers.get(component as usize) else {
            return send(s, session, &refuse(LayerErrorCode::UnknownComponent)).await;
        };
        let end = offset as u64 + len as u64;
        if len == 0 || len > MAX_FETCH || end > layer.size as u64 {
            return send(s, session, &refuse(LayerErrorCode::OutOfRange)).await;
        }
        // An object store read is async (the local store reads on the blocking pool), so a slow
        // read holds up this connection only.
        let data = match store.read_layer(&layer.sha256, offset as u64, end).await {
            Ok(d) if d.len() == len as usize => d,
            Ok(_) | Err(_) => {
                tracing::warn!(layer = %layer.sha256, "layer missing or short in the object store");
                return send(s, session, &refuse(LayerErrorCode::Unavailable)).await;
            }
        };
        for (i, chunk) in data.chunks(LAYER_CHUNK).enumerate() {
            let offset = offset + (i * LAYER_CHUNK) as u32;
            send(s, session, &Down::LayerData { sequence, component, offset, data: chunk }).await?;
        }
        Counters::add(&store.counters().layer_bytes_served, len as u64);
        Ok(())
    }
}

async fn exchange(
    mut s: tokio::net::tcp::OwnedWriteHalf,
    mut frames: tokio::sync::mpsc::Receiver<Result<Vec<u8>, ConnError>>,
    session: &mut ServerSession,
    store: &Store,
    peer: &Peer<'_>,
) -> Result<(), ConnError> {
    let id = peer.id;
    let updates = peer.negotiated.allows(features::UPDATES);
    let mut ping = tokio::time::interval(PING_INTERVAL);
    ping.tick().await;
    let mut nonce = 0u32;
    // Subscribe before reading the target so a deployment made in between is not missed.
    let mut deployments = store.subscribe_deployments();
    let mut ota = Ota::load(store, id).await?;
    loop {
        tokio::select! {
            frame = frames.recv() => {
                // Take this frame and every one already waiting (up to a batch), store their
                // records in one transaction, then acknowledge once.
                let mut batch = Vec::new();
                let mut events = Vec::new();
                let mut acked = None;
                let mut next = Some(frame.ok_or(ConnError::Protocol("reader ended"))??);
                while let Some(frame) = next.take() {
                    let plain = session.receive(&frame).map_err(|_| ConnError::Protocol("bad message"))?;
                    let msg = decode_up(&plain).map_err(|_| ConnError::Protocol("malformed message"))?;
                    // The device must not send what the server did not announce.
                    if !peer.negotiated.allows(msg.feature()) {
                        return Err(ConnError::Protocol("message of a feature not negotiated"));
                    }
                    match msg {
                        Up::UpdateStatus { installed, sequence, state, progress, total, reason } => {
                            match UpdateState::from_u8(state) {
                                Some(st) => {
                                    let status = UpdateStatus {
                                        state: st.as_str().into(),
                                        sequence,
                                        installed,
                                        progress: progress.into(),
                                        total: total.into(),
                                        reason: reason_text(reason),
                                        updated_at: unix_us() as i64,
                                    };
                                    store.set_update_status(id, &status).await?;
                                    ota.reported = Some(Reported { installed, sequence, state: st });
                                    if updates {
                                        ota.reconcile(&mut s, session, store, id).await?;
                                    }
                                }
                                // A state a newer device knows and this server does not: ignore it.
                                None => tracing::warn!(device = %id, state, "unknown update state"),
                            }
                        }
                        Up::FetchLayer { sequence, component, offset, len } => {
                            ota.fetch(&mut s, session, store, (sequence, component, offset, len)).await?;
                        }
                        msg => {
                            if let Some((record, is_log, event)) = record_of(peer, msg, store.counters())? {
                                if is_log {
                                    acked = Some(record.seq);
                                }
                                batch.push(record);
                                events.push(event);
                            }
                        }
                    }
                    if batch.len() < MAX_BATCH {
                        next = frames.try_recv().ok().transpose()?;
                    }
                }
                if !batch.is_empty() {
                    let counters = store.counters();
                    let received = batch.iter().filter(|r| r.kind != 2).count() as u64;
                    let new = store.insert_logs(id, &batch).await?;
                    Counters::add(&counters.log_records, received);
                    Counters::add(&counters.log_duplicates, (batch.len() as u64).saturating_sub(new));
                    // The registry and the update history from the typed events.
                    for (r, ev) in batch.iter().zip(&events) {
                        match ev {
                            Some(VisorEvent::Boot { .. }) => {
                                store.note_event(id, r.received_at, DeviceEvent::Boot(&r.text)).await?
                            }
                            Some(VisorEvent::Crash(_)) => {
                                store.note_event(id, r.received_at, DeviceEvent::Crash(&r.text)).await?
                            }
                            Some(VisorEvent::Update { sequence, state, .. }) => {
                                let state = UpdateState::from_u8(*state).map_or("unknown", |s| s.as_str());
                                store.note_update_event(id, state, *sequence, &format!("device: {}", r.text)).await?
                            }
                            _ => {}
                        }
                    }
                }
                if let Some(upto) = acked {
                    send(&mut s, session, &Down::LogAck { upto }).await?;
                }
            }
            changed = deployments.recv() => {
                let ours = match changed {
                    Ok(dev) => dev == id,
                    // Missed some: ours may be among them.
                    Err(broadcast::error::RecvError::Lagged(_)) => true,
                    // Cannot happen while `store` (which holds the sender) lives.
                    Err(broadcast::error::RecvError::Closed) => false,
                };
                if ours && updates {
                    ota.reload(store, id).await?;
                    ota.reconcile(&mut s, session, store, id).await?;
                }
            }
            _ = ping.tick() => {
                nonce = nonce.wrapping_add(1);
                send(&mut s, session, &Down::Ping { nonce }).await?;
                if nonce % TIME_SYNC_EVERY_PINGS == 0 {
                    send(&mut s, session, &Down::TimeSync { unix_us: unix_us() }).await?;
                }
            }
        }
    }
}
