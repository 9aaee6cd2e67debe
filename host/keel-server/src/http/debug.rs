//! Remote debugging: a debugger attaches to a device with a websocket and exchanges opaque
//! frames with it through [`crate::debug_relay`].
//!
//! `GET /v1/devices/{id}/debug`, upgraded to a websocket; a token of scope `deploy` whose
//! account holds the device. Each binary message is exactly one frame (at most
//! `MAX_DEBUG_FRAME` bytes) in either direction. The server closes the socket, with a close
//! frame whose reason says why, when the client sends a text message or a frame that is too
//! large, when another debugger attaches to the same device (`replaced`), when the token or the
//! device goes away, when the client is silent for [`IDLE`] (the server pings every [`PING`]),
//! and when the server stops.
//!
//! Frames from the client beyond [`RATE`] frames a second (after a burst of [`BURST`]) are
//! dropped and counted, as are frames for a device that is offline: nothing queues without a
//! bound, and the end-to-end protocol retransmits.

use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use keel_proto::msg::MAX_DEBUG_FRAME;

use super::*;
use crate::debug_relay::{Attachment, DebugRelay};

/// Sustained frames per second a debugger may send to its device.
pub const RATE: f64 = 200.0;
/// Frames a debugger may send at once after a quiet time.
pub const BURST: f64 = 400.0;
/// The server pings an attached debugger this often.
pub const PING: Duration = Duration::from_secs(30);
/// A debugger from which nothing (not even a pong) arrived for this long is closed.
pub const IDLE: Duration = Duration::from_secs(120);
/// Largest websocket message read at all: a larger one breaks the connection. Between
/// `MAX_DEBUG_FRAME` and this, the socket is closed with a clear reason.
const MAX_MESSAGE: usize = 64 << 10;

/// Close codes (RFC 6455).
const NORMAL: u16 = 1000;
const GOING_AWAY: u16 = 1001;
const UNSUPPORTED: u16 = 1003;
const POLICY: u16 = 1008;
const TOO_BIG: u16 = 1009;

/// Attach a debugger to a device: a websocket carrying opaque end-to-end encrypted frames (one
/// binary message = one frame of at most 960 bytes) between the debugger and the device's debug
/// service. A new websocket for the same device replaces the older one (closed with reason
/// `replaced`). Needs scope `deploy`.
#[utoipa::path(get, path = "/v1/devices/{id}/debug", tag = "devices",
    params(("id" = String, Path, description = "Device id")),
    responses((status = 101, description = "Switching protocols: the websocket"),
        (status = 400, body = ErrorBody, description = "Not a websocket request"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 429, body = ErrorBody)))]
pub(super) async fn debug_device(
    State(st): State<AppState>,
    auth: Account,
    Path(id): Path<String>,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    auth.require(Scope::Deploy)?;
    let d = own_device(&st, &auth.account, &id).await?;
    let ws = ws.map_err(|e| {
        ApiError::bad_request(
            "not_websocket",
            format!("this route is a websocket (GET with `Upgrade: websocket`): {}", e.body_text()),
        )
    })?;
    let relay = st.store.debug_relay().clone();
    if relay.sessions() >= crate::debug_relay::MAX_SESSIONS && !relay.is_attached(&d.id) {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_debug_sessions",
            format!("this server holds {} debug sessions already; try again later", crate::debug_relay::MAX_SESSIONS),
        ));
    }
    let ws = ws.max_message_size(MAX_MESSAGE).max_frame_size(MAX_MESSAGE).write_buffer_size(0);
    Ok(ws.on_upgrade(move |socket| async move {
        // Attached once the websocket is up: the older session of this device is replaced now.
        let Some(att) = relay.attach(&d.id) else {
            let mut socket = socket;
            close(&mut socket, GOING_AWAY, "too many debug sessions on this server").await;
            return;
        };
        tracing::info!(device = %d.id, token = %auth.token_id, "debugger attached");
        let why = Session { st, auth, relay: relay.clone(), att, socket }.run().await;
        tracing::info!(device = %d.id, reason = why, "debugger detached");
    }))
}

/// Frames a session may still send: a token bucket of [`RATE`] per second up to [`BURST`].
struct Bucket {
    left: f64,
    at: Instant,
}

impl Bucket {
    fn take(&mut self) -> bool {
        let now = Instant::now();
        self.left = (self.left + now.duration_since(self.at).as_secs_f64() * RATE).min(BURST);
        self.at = now;
        if self.left >= 1.0 {
            self.left -= 1.0;
            true
        } else {
            false
        }
    }
}

struct Session {
    st: AppState,
    auth: Account,
    relay: Arc<DebugRelay>,
    att: Attachment,
    socket: WebSocket,
}

impl Session {
    /// Relays until one side ends; returns why (also the close reason the client got).
    async fn run(mut self) -> &'static str {
        let (code, why) = self.relay_frames().await;
        if code != 0 {
            close(&mut self.socket, code, why).await;
        }
        why
    }

    /// The relay loop; returns the close code (0: the client is gone, nothing to send) and why.
    async fn relay_frames(&mut self) -> (u16, &'static str) {
        let mut bucket = Bucket { left: BURST, at: Instant::now() };
        let mut stop = self.st.stop_rx.clone();
        let mut auth = self.st.auth_tx.subscribe();
        let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + PING, PING);
        let mut recheck =
            tokio::time::interval_at(tokio::time::Instant::now() + logs::STREAM_RECHECK, logs::STREAM_RECHECK);
        let mut heard = Instant::now();
        let counters = self.st.store.counters();
        let device = self.att.device().to_string();
        loop {
            if *stop.borrow() {
                return (GOING_AWAY, "the server is stopping");
            }
            tokio::select! {
                m = self.socket.recv() => {
                    heard = Instant::now();
                    match m {
                        None | Some(Ok(Message::Close(_))) => return (0, "closed by the client"),
                        Some(Err(e)) => {
                            tracing::debug!(device, error = %e, "debug websocket failed");
                            return (TOO_BIG, "websocket error (a message over 64 KiB?)");
                        }
                        Some(Ok(Message::Binary(frame))) => {
                            if frame.len() > MAX_DEBUG_FRAME {
                                return (TOO_BIG, "frame larger than 960 bytes (MAX_DEBUG_FRAME)");
                            }
                            if bucket.take() {
                                self.relay.to_device(&device, &frame);
                            } else {
                                Counters::add(&counters.debug_dropped_rate, 1);
                            }
                        }
                        Some(Ok(Message::Text(_))) => {
                            return (UNSUPPORTED, "text message: debug frames are binary messages, one frame each");
                        }
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                    }
                }
                f = self.att.frames.recv() => match f {
                    Some(frame) => {
                        if self.socket.send(Message::Binary(frame.into())).await.is_err() {
                            return (0, "write to the client failed");
                        }
                    }
                    None => return (NORMAL, "replaced"),
                },
                _ = ping.tick() => {
                    if heard.elapsed() >= IDLE {
                        return (GOING_AWAY, "idle: nothing from the client for 120 s");
                    }
                    if self.socket.send(Message::Ping(Default::default())).await.is_err() {
                        return (0, "write to the client failed");
                    }
                }
                _ = stop.changed() => {}
                changed = auth.changed() => {
                    if changed.is_err() || !allowed(&self.st, &self.auth, &device).await {
                        return (POLICY, "the token or the device is no longer valid");
                    }
                }
                _ = recheck.tick() => {
                    if !allowed(&self.st, &self.auth, &device).await {
                        return (POLICY, "the token or the device is no longer valid");
                    }
                }
            }
        }
    }
}

/// Whether the session's token is still valid with scope `deploy` and its device still belongs
/// to the token's account.
async fn allowed(st: &AppState, auth: &Account, device: &str) -> bool {
    let (store, acct) = (&st.store, &auth.account);
    let token_ok = matches!(store.authenticate(&auth.token).await, Ok(Some(g))
        if &g.account_id == acct && Scope::parse(&g.scope).unwrap_or(Scope::Read) >= Scope::Deploy);
    token_ok && matches!(store.device(device).await, Ok(Some(d)) if &d.account_id == acct)
}

/// Sends a close frame and waits briefly for the client's answer, so the reason arrives before
/// the connection ends.
async fn close(socket: &mut WebSocket, code: u16, reason: &'static str) {
    let frame = CloseFrame { code, reason: reason.into() };
    if socket.send(Message::Close(Some(frame))).await.is_err() {
        return;
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Some(Ok(m)) = socket.recv().await {
            if matches!(m, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}
