//! Device logs: pages of stored records and the live stream (SSE).

use super::*;

impl From<LogRecord> for LogJson {
    fn from(r: LogRecord) -> Self {
        let source = match r.kind {
            0 => "app",
            1 => "visor",
            _ => "server",
        };
        LogJson {
            seq: r.seq,
            source: source.into(),
            level: r.level,
            device_time_us: r.device_time_us,
            received_at_us: r.received_at,
            text: r.text,
        }
    }
}

/// Sequence numbers are stored as signed 64-bit integers; a cursor beyond that matches nothing.
pub(super) fn beyond_range(after: Option<u64>) -> bool {
    after.is_some_and(|a| a > i64::MAX as u64)
}

/// Read a device's log records in sequence order, a page at a time.
#[utoipa::path(get, path = "/v1/devices/{id}/logs", tag = "logs",
    params(("id" = String, Path, description = "Device id"), LogQuery),
    responses((status = 200, body = Vec<LogJson>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub(super) async fn device_logs(
    State(st): State<AppState>,
    auth: Account,
    Path(id): Path<String>,
    q: Result<Query<LogQuery>, QueryRejection>,
) -> Result<Json<Vec<LogJson>>, ApiError> {
    let acct = auth.account;
    let d = own_device(&st, &acct, &id).await?;
    let Query(q) = q?;
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    if beyond_range(q.after) {
        return Ok(Json(Vec::new()));
    }
    Ok(Json(st.store.logs(&d.id, q.after, limit).await?.into_iter().map(Into::into).collect()))
}

/// How often an idle live stream re-checks its token and device (expiry, changes made through
/// another server node); revocations and deletions through this node are seen at once.
pub(super) const STREAM_RECHECK: std::time::Duration = std::time::Duration::from_secs(5);

/// A token's place among its live streams; given back when the stream ends.
struct StreamSlot {
    streams: Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>,
    token_id: String,
}

impl StreamSlot {
    /// A slot for `token_id`, or `None` if it holds [`MAX_STREAMS_PER_TOKEN`] already.
    fn take(st: &AppState, token_id: &str) -> Option<StreamSlot> {
        let mut m = st.streams.lock().unwrap_or_else(|e| e.into_inner());
        let n = m.entry(token_id.to_string()).or_default();
        if *n >= MAX_STREAMS_PER_TOKEN {
            return None;
        }
        *n += 1;
        Some(StreamSlot { streams: st.streams.clone(), token_id: token_id.to_string() })
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut m = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = m.get_mut(&self.token_id) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.token_id);
            }
        }
    }
}

pub(super) struct LiveLogs {
    /// Held for as long as the stream is open.
    _slot: StreamSlot,
    store: Store,
    account: String,
    token: String,
    device: String,
    cursor: Option<u64>,
    pending: VecDeque<LogRecord>,
    notify: broadcast::Receiver<String>,
    stop: watch::Receiver<bool>,
    auth: watch::Receiver<u64>,
}

impl LiveLogs {
    /// Whether the stream's token is still valid and its device still belongs to its account.
    async fn allowed(&self) -> bool {
        let token_ok =
            matches!(self.store.authenticate(&self.token).await, Ok(Some(g)) if g.account_id == self.account);
        token_ok && matches!(self.store.device(&self.device).await, Ok(Some(d)) if d.account_id == self.account)
    }

    /// The next record, waiting for one if needed; `None` ends the stream (server stopping,
    /// token revoked or expired, device deleted or moved, or a database error: the client
    /// reconnects with `Last-Event-ID` and is authorized again).
    async fn next(&mut self) -> Option<LogRecord> {
        loop {
            if let Some(r) = self.pending.pop_front() {
                return Some(r);
            }
            if *self.stop.borrow() || !self.allowed().await {
                return None;
            }
            let page = self.store.logs(&self.device, self.cursor, 500).await.ok()?;
            if let Some(last) = page.last() {
                // Checked again after the read: the records are the account's only if the device
                // still is (it may have been deleted and registered elsewhere in between).
                if !self.allowed().await {
                    return None;
                }
                self.cursor = Some(last.seq);
                self.pending.extend(page);
                continue;
            }
            // Nothing new: wait until this device's records are stored (a lagged receiver may
            // have missed it, so re-read then too), authorization may have changed, or the
            // server stops.
            loop {
                tokio::select! {
                    n = self.notify.recv() => match n {
                        Ok(dev) if dev != self.device => continue,
                        Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => break,
                        Err(broadcast::error::RecvError::Closed) => return None,
                    },
                    changed = self.auth.changed() => match changed {
                        Ok(()) => break,
                        Err(_) => return None,
                    },
                    _ = tokio::time::sleep(STREAM_RECHECK) => break,
                    _ = self.stop.changed() => return None,
                }
            }
        }
    }
}

/// Follow a device's log records live, as Server-Sent Events: one `log` event per record, with
/// the record's sequence number as event id and a `LogJson` as data. Comments keep the
/// connection alive every 15 s.
#[utoipa::path(get, path = "/v1/devices/{id}/logs/stream", tag = "logs",
    params(("id" = String, Path, description = "Device id"), StreamQuery,
        ("Last-Event-ID" = Option<u64>, Header, description = "Resume after this sequence number")),
    responses((status = 200, description = "`text/event-stream` of `log` events, data: LogJson", content_type = "text/event-stream"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 429, description = "The token holds 16 live streams already (`too_many_streams`)", body = ErrorBody)))]
pub(super) async fn stream_logs(
    State(st): State<AppState>,
    auth: Account,
    headers: HeaderMap,
    Path(id): Path<String>,
    q: Result<Query<StreamQuery>, QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let acct = auth.account;
    let d = own_device(&st, &acct, &id).await?;
    let Query(q) = q?;
    let last_event_id =
        match headers.get("last-event-id") {
            None => None,
            Some(v) => Some(v.to_str().ok().and_then(|s| s.trim().parse::<u64>().ok()).ok_or_else(|| {
                ApiError::bad_request("bad_last_event_id", "Last-Event-ID must be a sequence number")
            })?),
        };
    let slot = StreamSlot::take(&st, &auth.token_id).ok_or_else(|| {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_streams",
            format!(
                "this token holds {MAX_STREAMS_PER_TOKEN} live log streams already: close one (or use another token) \
                 and try again"
            ),
        )
    })?;
    // Subscribe before the first read so nothing stored in between is missed.
    let notify = st.store.subscribe_logs();
    let cursor = match last_event_id.or(q.after) {
        Some(a) if beyond_range(Some(a)) => Some(i64::MAX as u64),
        Some(a) => Some(a),
        None => st.store.max_seq(&d.id).await?,
    };
    let live = LiveLogs {
        _slot: slot,
        store: st.store.clone(),
        account: acct,
        token: auth.token,
        auth: st.auth_tx.subscribe(),
        device: d.id,
        cursor,
        pending: VecDeque::new(),
        notify,
        stop: st.stop_rx.clone(),
    };
    let stream = futures_util::stream::unfold(live, |mut live| async move {
        let r = live.next().await?;
        let seq = r.seq;
        let data = serde_json::to_string(&LogJson::from(r)).unwrap_or_default();
        Some((Ok(Event::default().event("log").id(seq.to_string()).data(data)), live))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}
