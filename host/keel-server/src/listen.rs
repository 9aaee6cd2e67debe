//! Serving HTTP with bounds: the API (and the metrics listener) over hyper's HTTP/1.1 with a timer,
//! so that a client cannot hold a connection, a file descriptor or a request forever.
//!
//! - **Header timeout**: a request's headers (and a TLS handshake) must arrive within
//!   [`HttpLimits::header_timeout`] of the moment the server waits for them; this also bounds how
//!   long a kept-alive connection may sit between requests. A slowloris client is closed.
//! - **Idle timeout**: a connection on which no byte moves in either direction for
//!   [`HttpLimits::idle_timeout`] is closed (a stalled upload, a client that stopped reading).
//!   Live log streams send a keep-alive comment every 15 s, so they stay open.
//! - **Body rate**: a request body must keep up an average of [`HttpLimits::min_body_rate`]
//!   bytes per second after a grace period of [`HttpLimits::header_timeout`]; a slower body fails.
//! - **Connection caps**: at most [`HttpLimits::max_connections`] in total and
//!   [`HttpLimits::max_connections_per_ip`] per source address. A connection over a cap is closed
//!   at once, before a byte is read, and counted in [`HttpStats::rejected`].
//!
//! Shutdown is graceful: accepting stops, open requests finish, then connections close (waiting
//! at most [`HttpLimits::shutdown_grace`]).
//!
//! Connections may be upgraded (the remote debugging websocket): the upgraded stream leaves
//! hyper, this listener's slot and its idle timeout, and is bounded by its handler instead
//! (`crate::http` closes it on shutdown, on silence and when replaced).

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use bytes::Bytes;
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// Bounds on HTTP connections; see the module documentation.
#[derive(Clone, Debug)]
pub struct HttpLimits {
    /// Time allowed for a request's headers (and a TLS handshake); also the keep-alive idle time.
    pub header_timeout: Duration,
    /// A connection with no traffic in either direction for this long is closed.
    pub idle_timeout: Duration,
    /// Minimum average rate of a request body, in bytes per second (0 = no minimum).
    pub min_body_rate: u64,
    /// Open connections in total (0 = no cap).
    pub max_connections: usize,
    /// Open connections from one source address (0 = no cap).
    pub max_connections_per_ip: usize,
    /// How long a graceful shutdown waits for open connections.
    pub shutdown_grace: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            min_body_rate: 16 * 1024,
            max_connections: 4096,
            max_connections_per_ip: 128,
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

/// Counters of one listener.
#[derive(Debug, Default)]
pub struct HttpStats {
    /// Connections accepted and served.
    pub accepted: AtomicU64,
    /// Connections closed at once because a cap was reached.
    pub rejected: AtomicU64,
    /// Connections closed by the idle timeout.
    pub idle_closed: AtomicU64,
    /// TLS handshakes that failed or did not finish in time.
    pub tls_failed: AtomicU64,
}

/// Open connections, in total and per source address.
struct Slots {
    limits: HttpLimits,
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// One open connection's place in [`Slots`]; given back when dropped.
struct Slot {
    slots: Arc<Slots>,
    ip: IpAddr,
}

impl Slots {
    fn take(self: &Arc<Self>, ip: IpAddr) -> Option<Slot> {
        // The same key as the gateway's limits: an IPv6 host cannot multiply its share by
        // using more addresses of its /64.
        let ip = crate::limits::address_key(ip);
        let mut g = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let (total, per_ip) = &mut *g;
        let mine = per_ip.get(&ip).copied().unwrap_or(0);
        if (self.limits.max_connections > 0 && *total >= self.limits.max_connections)
            || (self.limits.max_connections_per_ip > 0 && mine >= self.limits.max_connections_per_ip)
        {
            return None;
        }
        *total += 1;
        per_ip.insert(ip, mine + 1);
        Some(Slot { slots: self.clone(), ip })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut g = self.slots.open.lock().unwrap_or_else(|p| p.into_inner());
        let (total, per_ip) = &mut *g;
        *total -= 1;
        if let Some(n) = per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&self.ip);
            }
        }
    }
}

/// Serves `app` on `listener` (over TLS when `tls` is given) until `shutdown` completes, then
/// shuts down gracefully. Accept errors (such as running out of file descriptors) are logged and
/// retried; they never end the server.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    limits: HttpLimits,
    stats: Arc<HttpStats>,
    shutdown: impl Future<Output = ()>,
) {
    // Graceful shutdown: every connection holds a sender of `alive` and watches `stop`; once
    // stopped, they finish their requests and close, and the last one dropping its sender ends
    // the wait.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (alive_tx, mut alive_rx) = tokio::sync::mpsc::channel::<()>(1);
    let slots = Arc::new(Slots { limits: limits.clone(), open: Mutex::default() });
    let mut last_reject_log: Option<Instant> = None;
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, addr = ?listener.local_addr().ok(), "HTTP accept failed");
                    // Typically EMFILE: give open connections a moment to close.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Some(slot) = slots.take(peer.ip()) else {
            stats.rejected.fetch_add(1, Ordering::Relaxed);
            if last_reject_log.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                last_reject_log = Some(Instant::now());
                tracing::warn!(%peer, "HTTP connection refused: connection cap reached (logged once per 10 s)");
            }
            drop(tcp);
            continue;
        };
        stats.accepted.fetch_add(1, Ordering::Relaxed);
        let watcher = Watcher { stop: stop_rx.clone(), _alive: alive_tx.clone() };
        let (app, tls, limits, stats) = (app.clone(), tls.clone(), limits.clone(), stats.clone());
        tokio::spawn(async move {
            let _slot = slot;
            connection(tcp, peer, app, tls, limits, stats, watcher).await;
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    drop(alive_tx);
    if tokio::time::timeout(limits.shutdown_grace, alive_rx.recv()).await.is_err() {
        tracing::info!("HTTP shutdown: closing connections that did not finish in time");
    }
}

async fn connection(
    tcp: TcpStream,
    peer: SocketAddr,
    app: Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    limits: HttpLimits,
    stats: Arc<HttpStats>,
    watcher: Watcher,
) {
    let _ = tcp.set_nodelay(true);
    let activity = Activity::new();
    let io = Watched { io: tcp, activity: activity.clone() };
    let serve = async {
        match tls {
            None => serve_io(io, app, &limits, watcher).await,
            Some(acceptor) => match tokio::time::timeout(limits.header_timeout, acceptor.accept(io)).await {
                Ok(Ok(tls_io)) => serve_io(tls_io, app, &limits, watcher).await,
                Ok(Err(e)) => {
                    stats.tls_failed.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                }
                Err(_) => {
                    stats.tls_failed.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%peer, "TLS handshake timed out");
                }
            },
        }
    };
    tokio::select! {
        () = serve => {}
        () = activity.idle_for(limits.idle_timeout) => {
            stats.idle_closed.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%peer, "HTTP connection idle: closed");
        }
    }
}

/// A connection's part in the graceful shutdown: it watches `stop` and holds its `alive` sender
/// until it closes.
struct Watcher {
    stop: tokio::sync::watch::Receiver<bool>,
    _alive: tokio::sync::mpsc::Sender<()>,
}

async fn serve_io<I>(io: I, app: Router, limits: &HttpLimits, mut watcher: Watcher)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let inner = TowerToHyperService::new(app);
    let (grace, rate) = (limits.header_timeout, limits.min_body_rate);
    let svc = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let req = req.map(|b| axum::body::Body::new(MinRate::new(b, grace, rate)));
        hyper::service::Service::call(&inner, req)
    });
    let mut b = hyper::server::conn::http1::Builder::new();
    b.timer(TokioTimer::new()).header_read_timeout(limits.header_timeout);
    // With upgrades: a websocket handshake hands the stream over to its handler.
    let conn = b.serve_connection(TokioIo::new(io), svc).with_upgrades();
    tokio::pin!(conn);
    let done = tokio::select! {
        r = conn.as_mut() => Some(r),
        _ = watcher.stop.wait_for(|s| *s) => None,
    };
    let result = match done {
        Some(r) => r,
        None => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "HTTP connection ended");
    }
}

/// When a connection last moved a byte.
#[derive(Clone)]
struct Activity {
    start: Instant,
    last_ms: Arc<AtomicU64>,
}

impl Activity {
    fn new() -> Self {
        Activity { start: Instant::now(), last_ms: Arc::new(AtomicU64::new(0)) }
    }

    fn touch(&self) {
        self.last_ms.store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Completes once nothing moved for `idle`.
    async fn idle_for(&self, idle: Duration) {
        loop {
            let deadline = self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed)) + idle;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline.into()).await;
        }
    }
}

/// An IO stream that records its traffic in an [`Activity`].
struct Watched<T> {
    io: T,
    activity: Activity,
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// A request body that fails when it arrives slower than a minimum average rate: after `grace`,
/// the body must have delivered `rate` bytes for every further second.
struct MinRate {
    inner: Incoming,
    start: tokio::time::Instant,
    grace: Duration,
    rate: u64,
    received: u64,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl MinRate {
    fn new(inner: Incoming, grace: Duration, rate: u64) -> Self {
        let start = tokio::time::Instant::now();
        MinRate { inner, start, grace, rate, received: 0, sleep: Box::pin(tokio::time::sleep_until(start + grace)) }
    }

    fn deadline(&self) -> tokio::time::Instant {
        let allowed = Duration::from_secs(self.received / self.rate.max(1));
        self.start + self.grace + allowed
    }
}

impl hyper::body::Body for MinRate {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    this.received += d.len() as u64;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending if this.rate == 0 => Poll::Pending,
            Poll::Pending => {
                let deadline = this.deadline();
                if this.sleep.deadline() != deadline {
                    this.sleep.as_mut().reset(deadline);
                }
                match this.sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        Poll::Ready(Some(Err(
                            format!("request body too slow: under {} bytes/s on average", this.rate).into()
                        )))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod slot_tests {
    use super::*;

    #[test]
    fn the_per_address_cap_counts_an_ipv6_host_by_its_64_and_mapped_ipv4_as_ipv4() {
        let slots = Arc::new(Slots {
            limits: HttpLimits { max_connections_per_ip: 2, ..HttpLimits::default() },
            open: Mutex::default(),
        });
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::7".parse().unwrap();
        let c: IpAddr = "2001:db8:1:2:abcd::9".parse().unwrap();
        let held = [slots.take(a).expect("first"), slots.take(b).expect("second")];
        assert!(slots.take(c).is_none(), "a third address of the same /64 is over the cap");
        assert!(slots.take("2001:db8:1:3::1".parse().unwrap()).is_some(), "another /64 is another host");
        drop(held);
        assert!(slots.take(c).is_some(), "slots come back when connections close");
        let v4: IpAddr = "192.0.2.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        let _v = [slots.take(v4).unwrap(), slots.take(mapped).unwrap()];
        assert!(slots.take(v4).is_none(), "an IPv4-mapped address counts as its IPv4 address");
    }
}
