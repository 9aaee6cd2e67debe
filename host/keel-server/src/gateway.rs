//! The device gateway: accepts devices' TCP connections, runs the secure channel (Noise IK, the
//! server end of `keel_link::session`) and stores what they send.
//!
//! One task per connection. A connection that sends anything invalid — garbage, a truncated or
//! replayed handshake, an unknown device key, an oversized frame, a message that fails to
//! authenticate — is closed; no other connection is affected.

use std::time::Duration;

use keel_link::msg::{decode_up, Down, Up, PROTOCOL_VERSION};
use keel_link::session::server::{Accepting, ServerSession};
use keel_link::session::MAX_FRAME;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use crate::store::{Counters, DeviceEvent, LogRecord, Store};
use crate::unix_us;

/// How long a new connection may take to send its first handshake message.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
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

async fn read_frame<R: AsyncReadExt + Unpin>(s: &mut R, timeout: Duration) -> Result<Vec<u8>, ConnError> {
    let mut len = [0u8; 2];
    tokio::time::timeout(timeout, s.read_exact(&mut len)).await.map_err(|_| ConnError::Protocol("timeout"))??;
    let len = u16::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(ConnError::Protocol("oversized frame"));
    }
    let mut buf = vec![0u8; len];
    tokio::time::timeout(timeout, s.read_exact(&mut buf)).await.map_err(|_| ConnError::Protocol("timeout"))??;
    Ok(buf)
}

/// Serves device connections from `listener` until the task is dropped or aborted; aborting it
/// also closes every connection it accepted.
pub async fn serve(listener: TcpListener, store: Store, server_private: Vec<u8>) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, peer)) = accepted else { continue };
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

async fn connection(mut s: TcpStream, store: &Store, server_private: &[u8]) -> Result<(), ConnError> {
    let first = read_frame(&mut s, HANDSHAKE_TIMEOUT).await?;
    let acc = Accepting::read(server_private, &first).map_err(|_| ConnError::Protocol("bad handshake"))?;
    let device = store.device_by_key(&acc.device_key).await?.ok_or(ConnError::UnknownDevice)?;
    let Ok(Up::Hello { protocol, visor_version, boot_count, app, .. }) = decode_up(&acc.hello) else {
        return Err(ConnError::Protocol("bad hello"));
    };
    let visor_version = visor_version.to_string();
    let app = app.map(|(a, b)| (a.to_string(), b.to_string()));
    if protocol != PROTOCOL_VERSION {
        return Err(ConnError::Protocol("unsupported protocol version"));
    }
    let acked = store.max_seq(&device.id).await?;
    let welcome = Down::Welcome { protocol: PROTOCOL_VERSION, unix_us: unix_us(), log_acked: acked };
    let (mut session, frame) = acc.welcome(&welcome).map_err(|_| ConnError::Protocol("welcome"))?;
    s.write_all(&frame).await?;
    // The first handshake message may be a replay; only the device can send a valid `Ready`.
    let ready = read_frame(&mut s, HANDSHAKE_TIMEOUT).await?;
    let plain = session.receive(&ready).map_err(|_| ConnError::Protocol("bad ready"))?;
    if decode_up(&plain) != Ok(Up::Ready) {
        return Err(ConnError::Protocol("expected ready"));
    }
    store
        .device_online(&device.id, &visor_version, app.as_ref().map(|(a, b)| (a.as_str(), b.as_str())), boot_count)
        .await?;
    Counters::add(&store.counters().handshakes, 1);
    tracing::info!(device = %device.id, "device online");
    // Frames are read by their own task and handed over a channel, so waiting for one can be
    // combined with timers without losing half-read frames.
    let (mut rd, wr) = s.into_split();
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
    let result = exchange(wr, rx, &mut session, store, &device.id).await;
    reader.abort();
    store.device_offline(&device.id).await?;
    result
}

/// The record to store for a message, if any, and whether it is a device log record (which is
/// acknowledged) rather than a server note.
fn record_of(id: &str, msg: Up<'_>, counters: &Counters) -> Result<Option<(LogRecord, bool)>, ConnError> {
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
        )),
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
            Some((note, false))
        }
        Up::Pong { .. } | Up::Ready => None,
        Up::Hello { .. } => return Err(ConnError::Protocol("hello after handshake")),
    })
}

async fn exchange(
    mut s: tokio::net::tcp::OwnedWriteHalf,
    mut frames: tokio::sync::mpsc::Receiver<Result<Vec<u8>, ConnError>>,
    session: &mut ServerSession,
    store: &Store,
    id: &str,
) -> Result<(), ConnError> {
    let mut ping = tokio::time::interval(PING_INTERVAL);
    ping.tick().await;
    let mut nonce = 0u32;
    loop {
        tokio::select! {
            frame = frames.recv() => {
                // Take this frame and every one already waiting (up to a batch), store their
                // records in one transaction, then acknowledge once.
                let mut batch = Vec::new();
                let mut acked = None;
                let mut next = Some(frame.ok_or(ConnError::Protocol("reader ended"))??);
                while let Some(frame) = next.take() {
                    let plain = session.receive(&frame).map_err(|_| ConnError::Protocol("bad message"))?;
                    let msg = decode_up(&plain).map_err(|_| ConnError::Protocol("malformed message"))?;
                    if let Some((record, is_log)) = record_of(id, msg, store.counters())? {
                        if is_log {
                            acked = Some(record.seq);
                        }
                        batch.push(record);
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
                    for r in &batch {
                        if let Some(ev) = DeviceEvent::parse(r.kind, &r.text) {
                            store.note_event(id, r.received_at, ev).await?;
                        }
                    }
                }
                if let Some(upto) = acked {
                    let ack = session.send(&Down::LogAck { upto }).map_err(|_| ConnError::Protocol("encrypt"))?;
                    s.write_all(&ack).await?;
                }
            }
            _ = ping.tick() => {
                nonce = nonce.wrapping_add(1);
                let p = session.send(&Down::Ping { nonce }).map_err(|_| ConnError::Protocol("encrypt"))?;
                s.write_all(&p).await?;
                if nonce % TIME_SYNC_EVERY_PINGS == 0 {
                    let t = session.send(&Down::TimeSync { unix_us: unix_us() }).map_err(|_| ConnError::Protocol("encrypt"))?;
                    s.write_all(&t).await?;
                }
            }
        }
    }
}
