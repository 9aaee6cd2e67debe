//! The device gateway: accepts devices' TCP connections, runs the secure channel (Noise IK, the
//! server end of `keel_link::session`) and stores what they send.
//!
//! One task per connection. A connection that sends anything invalid — garbage, a truncated or
//! replayed handshake, an unknown device key, an oversized frame, a message that fails to
//! authenticate — is closed; no other connection is affected.
//!
//! This is the async shell around [`crate::connection::Connection`], which makes every protocol
//! decision (the `Ready` gate, log batching and acks, pings and time syncs, negotiated features,
//! update offers, cancels and fetch validation). The shell owns TCP, Noise, the frame reader, the
//! database, the object store and the timers, and performs the connection's outputs in order.
//!
//! Updates (see `docs/wire-protocol.md`, "Updates"): after `Ready` the device reports its update
//! status; when its target bundle (the deployment) differs from what it reports, the gateway
//! offers the bundle's envelope and then serves `FetchLayer` requests from the object store.
//! A deployment made while the device is connected reaches it at once: the store sends it to
//! that device's mailbox on the [`crate::bus::Bus`], as it does the end of the session when the
//! device is deleted.
//!
//! Remote debugging: the device's `Debug` frames go to the debugger attached to it through
//! [`crate::debug_relay`], and a debugger's frames arrive in the mailbox
//! ([`DeviceMessage::Debug`]) and are sent as `Down::Debug`; opaque both ways.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use keel_link::msg::{encode, features, negotiate, Down, MAX_PLAINTEXT, PROTOCOL_MIN, PROTOCOL_VERSION};
use keel_link::session::server::{Accepting, ServerSession};
use keel_link::session::MAX_FRAME;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::bus::{DeviceMessage, Mailbox, Presence};
use crate::connection::{
    escape_device_text, Action, Batch, ChanUp, Close, Connection, DebugDrop, Fetch, Note, Notice, Now, Output, Target,
};
pub use crate::connection::{HANDSHAKE_TIMEOUT, IDLE_TIMEOUT, MAX_BATCH, PING_INTERVAL, TIME_SYNC_EVERY_PINGS};
use crate::framed::{FrameReader, ReadError};
pub use crate::limits::GatewayLimits;
use crate::limits::{Admission, Limiter, Quota, Refusal};
use crate::store::{Counters, DeviceEvent, Store};
use crate::unix_us;

/// A write to a device that does not complete in this time ends the connection.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a connection ended.
#[derive(Debug)]
pub enum ConnError {
    /// Network error (a write that timed out included).
    Io(std::io::Error),
    /// The peer sent something invalid.
    Protocol(&'static str),
    /// The peer did not send in time (its first handshake message, `Ready`, or anything at all
    /// for [`IDLE_TIMEOUT`]): not invalid input.
    Timeout(&'static str),
    /// The frame reader task ended without a reason (it panicked).
    ReaderEnded,
    /// The device key is not registered.
    UnknownDevice,
    /// Storage failed.
    Store(sqlx::Error),
}

impl ConnError {
    /// True if the connection was refused or dropped for invalid input or an unknown key (what
    /// `keel_gateway_rejected_total` counts); timeouts, network and storage errors are not.
    pub fn is_rejection(&self) -> bool {
        matches!(self, ConnError::Protocol(_) | ConnError::UnknownDevice)
    }
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

impl From<Close> for ConnError {
    fn from(c: Close) -> Self {
        if c.is_timeout() {
            ConnError::Timeout(c.as_str())
        } else {
            ConnError::Protocol(c.as_str())
        }
    }
}

impl From<ReadError> for ConnError {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::Io(e) => ConnError::Io(e),
            ReadError::Frame(_) => ConnError::Protocol("oversized frame"),
        }
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

/// Serves device connections from `listener` with the default [`GatewayLimits`] until the task
/// is dropped or aborted; aborting it also closes every connection it accepted.
pub async fn serve(listener: TcpListener, store: Store, server_private: Vec<u8>) {
    serve_until(listener, store, server_private, GatewayLimits::default(), std::future::pending()).await
}

/// Serves device connections from `listener` within `limits` until `shutdown` completes; then
/// stops accepting, ends every connection (each marks its device offline) and returns once they
/// are all closed. Dropping the future instead closes the connections without that.
pub async fn serve_until(
    listener: TcpListener,
    store: Store,
    server_private: Vec<u8>,
    limits: GatewayLimits,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let limiter = Limiter::new(limits);
    let (name, lease) = (limiter.limits().node_name.clone(), limiter.limits().presence_lease);
    // This run's presence: the devices of a previous run of this node are offline from here on.
    let presence = store.presence();
    let node: Arc<str> = loop {
        match presence.start_node(&name, lease).await {
            Ok(id) => break id.into(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot register the gateway node; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    let mut renew = tokio::time::interval((lease / 3).max(Duration::from_millis(10)));
    renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // What every connection shares (nothing of it is copied per connection).
    let shared =
        Arc::new(Shared { store: store.clone(), server_private, node: node.clone(), stopped: AtomicBool::new(false) });
    let mut conns = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            _ = renew.tick() => match presence.renew_node(&node, lease).await {
                Ok(true) => {}
                Ok(false) => tracing::error!(%node, "this gateway node's lease was taken over by a newer run"),
                Err(e) => tracing::warn!(%node, error = %e, "cannot renew the gateway node's lease"),
            },
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
                let counters = store.counters();
                Counters::add(&counters.connections, 1);
                let admission = match limiter.admit(peer.ip()) {
                    Ok(a) => a,
                    Err(refusal) => {
                        // Closed before a byte is read: no Diffie-Hellman, no database.
                        let c = match refusal {
                            Refusal::Total => &counters.refused_total_cap,
                            Refusal::PerAddress => &counters.refused_per_address,
                            Refusal::Unauthenticated => &counters.refused_unauthenticated,
                            Refusal::Rate => &counters.refused_rate,
                        };
                        Counters::add(c, 1);
                        tracing::debug!(%peer, ?refusal, "device connection refused at accept");
                        continue;
                    }
                };
                let deadline = Instant::now() + limiter.limits().handshake_timeout;
                conns.spawn(connection(stream, peer, admission, deadline, shared.clone()));
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    // Sessions that start from here on end at once; those open are told through their mailbox.
    shared.stopped.store(true, Ordering::SeqCst);
    store.bus().end_node(&node, "the gateway is stopping");
    while conns.join_next().await.is_some() {}
    if let Err(e) = presence.stop_node(&node).await {
        tracing::warn!(%node, error = %e, "cannot end the gateway node's presence (its lease will run out)");
    }
}

/// What a connection gets from the gateway besides its socket.
struct Ctx {
    /// Its place within the limits.
    admission: Admission,
    /// The handshake (accept through `Ready`) must end by then.
    deadline: Instant,
    /// This gateway run's node id (presence).
    node: Arc<str>,
}

/// The device a connection authenticates as.
struct Known {
    /// Its id (shared with the session's inputs while they run).
    id: Arc<str>,
}

/// What the device said in its `Hello`, for the registry.
struct HelloInfo {
    visor_version: String,
    app: Option<(String, String)>,
    boot_count: u32,
    /// (the device's next log sequence number, the highest stored): its sequence went back.
    /// Recorded as an event once the device is authenticated (a replayed old handshake must
    /// not record one).
    regression: Option<(u64, u64)>,
}

/// What the gateway's connections share.
struct Shared {
    store: Store,
    server_private: Vec<u8>,
    /// This gateway run's node id (presence).
    node: Arc<str>,
    /// Set when the gateway stops (before its sessions are told to end).
    stopped: AtomicBool,
}

/// One device connection, accept to close, as one task. Everything it holds for as long as the
/// device is connected is in its [`Session`] box and in this future; what only the handshake or
/// an input needs is boxed apart and freed when done (10 000 idle devices cost what they keep).
/// An `async` block rather than an `async fn`: the future keeps its inputs once, not twice
/// (an `async fn` moves its arguments into locals and keeps room for both).
#[allow(clippy::manual_async_fn)]
fn connection(
    s: TcpStream,
    peer: std::net::SocketAddr,
    admission: Admission,
    deadline: Instant,
    shared: Arc<Shared>,
) -> impl std::future::Future<Output = ()> + Send {
    async move {
        let store = &shared.store;
        // Taken in its own statement: a temporary of a `match` scrutinee would live (and keep
        // the handshake's allocation) until the match ends, that is for the whole session.
        let handshaken = tokio::time::timeout_at(deadline, Box::pin(handshake(s, store, &shared.server_private))).await;
        let result = match handshaken {
            Err(_) => Err(ConnError::Timeout(HANDSHAKE_LATE)),
            Ok(Err(e)) => Err(e),
            Ok(Ok(h)) => {
                let ctx = Ctx { admission, deadline, node: shared.node.clone() };
                let mut session = Session::start(h, store, ctx);
                // Its mailbox exists now: a stop from here on reaches it; one before, this sees.
                let result = if shared.stopped.load(Ordering::SeqCst) { Ok(()) } else { session.run().await };
                // A device that reconnects before its old connection timed out has two for a
                // while: only the newest (on whichever node) may mark it offline; the store
                // checks it in the same statement.
                let shell = &session.shell;
                match shell.generation {
                    Some(generation) => {
                        store.release_online(&shell.device.id, generation);
                        match Box::pin(store.device_offline(&shell.device.id, &shell.node, generation)).await {
                            Ok(_) => result,
                            Err(e) => Err(e.into()),
                        }
                    }
                    None => result,
                }
            }
        };
        let late = Close::ReadyTimeout.as_str();
        if let Err(e) = result {
            if matches!(e, ConnError::Timeout(why) if why == HANDSHAKE_LATE || why == late) {
                Counters::add(&store.counters().handshake_timeouts, 1);
            }
            if e.is_rejection() {
                Counters::add(&store.counters().rejected, 1);
                tracing::info!(%peer, error = ?e, "device connection refused or dropped");
            } else {
                tracing::info!(%peer, error = ?e, "device connection closed");
            }
        }
    }
}

/// The error of a handshake (accept through `Ready`) that took longer than the limit.
const HANDSHAKE_LATE: &str = "handshake not finished in time";

/// A connection whose `Welcome` was sent.
struct Handshaken {
    rd: Frames,
    wr: tokio::net::tcp::OwnedWriteHalf,
    session: ServerSession,
    device: Known,
    info: HelloInfo,
    negotiated: keel_link::msg::Negotiated,
    /// The device had no deployment at the lookup; the deployment epoch read before it.
    no_target: Option<u64>,
}

/// Message 1 through `Welcome`.
async fn handshake(s: TcpStream, store: &Store, server_private: &[u8]) -> Result<Box<Handshaken>, ConnError> {
    // Every write is a whole frame and the protocol is request/response (a fetch and its
    // layer data): Nagle's algorithm would hold each frame until the previous one is
    // acknowledged, which a peer's delayed ACK turns into 40 ms per frame.
    s.set_nodelay(true)?;
    let (rd, wr) = s.into_split();
    let mut rd = Frames::new(rd);
    let first = rd.next().await?;
    let acc = Accepting::read(server_private, &first).map_err(|_| ConnError::Protocol("bad handshake"))?;
    let hello = acc.hello().map_err(|_| ConnError::Protocol("bad hello"))?;
    // The device's id and where its log delivery resumes, in one query. Resume below the
    // device's own next number: a stored number above it (its sequence went back, or one bogus
    // record) must not make the device discard its new records.
    // Read before the lookup: if no deployment is made until the session's mailbox exists, the
    // lookup's "no deployment" still holds then (see `Store::deploy_epoch`).
    let epoch = store.deploy_epoch();
    let found =
        store.device_for_handshake(&acc.device_key, hello.next_log_seq).await?.ok_or(ConnError::UnknownDevice)?;
    let (acked, above) = (found.log_acked, found.log_above);
    let device = Known { id: found.id.into() };
    let no_target = (!found.deployed).then_some(epoch);
    // The highest version both speak, and the features both announced.
    let negotiated = negotiate(&hello, PROTOCOL_MIN, PROTOCOL_VERSION, features::SUPPORTED)
        .ok_or(ConnError::Protocol("no common protocol version"))?;
    // Device strings are stored escaped like log text (no NUL reaches the database).
    let info = HelloInfo {
        visor_version: escape_device_text(hello.visor_version.as_bytes()),
        app: hello.app.map(|(a, b)| (escape_device_text(a.as_bytes()), escape_device_text(b.as_bytes()))),
        boot_count: hello.boot_count,
        regression: above.map(|max| (hello.next_log_seq, max)),
    };
    let welcome = Down::Welcome {
        protocol: negotiated.protocol,
        unix_us: unix_us(),
        log_acked: acked,
        features: negotiated.features,
    };
    let (session, frame) = acc.welcome(&welcome).map_err(|_| ConnError::Protocol("welcome"))?;
    let mut wr = wr;
    write_all(&mut wr, &frame).await?;
    // Boxed: the connection's future keeps no room for it during the session.
    Ok(Box::new(Handshaken { rd, wr, session, device, info, negotiated, no_target }))
}

/// What a connection keeps while its device is connected, in one box.
struct Session<'a> {
    shell: Shell<'a>,
    conn: Connection,
    rd: Frames,
    mailbox: Mailbox,
    clock: Clock,
}

impl<'a> Session<'a> {
    /// The session of a device whose `Welcome` was sent.
    fn start(h: Box<Handshaken>, store: &'a Store, ctx: Ctx) -> Box<Session<'a>> {
        let Handshaken { rd, wr, session, device, info, negotiated, no_target } = *h;
        let Ctx { admission, deadline, node } = ctx;
        // Subscribe before the target is read (after `Ready`) so a deployment made in between is
        // not missed.
        let mailbox = store.bus().mailbox(&device.id, &node);
        let clock = Clock(Instant::now());
        // The first handshake message may be a replay; the connection accepts nothing but `Ready`
        // (which only the device can encrypt) until the device is online.
        let mut conn = Connection::new(negotiated, &info.visor_version, clock.now());
        conn.set_ready_deadline(deadline.saturating_duration_since(clock.0).as_micros() as u64);
        // No deployment at the lookup and none made since (the mailbox exists now): no target
        // to load after `Ready` (a fleet reconnecting at once spares the database a query each).
        if no_target.is_some_and(|epoch| epoch == store.deploy_epoch()) {
            conn.known_without_target();
        }
        let hello = Some(Box::new(info));
        let chans = crate::channels::ChannelHub::new(store.clone(), store.channel_services(), &device.id);
        let shell = Shell { wr, session, store, device, hello, generation: None, admission, node, chans };
        Box::new(Session { shell, conn, rd, mailbox, clock })
    }

    /// Runs the session until the device or the server ends it.
    async fn run(&mut self) -> Result<(), ConnError> {
        let Session { shell, conn, rd, mailbox, clock } = self;
        // The frame reader is cancel-safe: waiting for a frame is combined with timers and the
        // mailbox in one task, without losing half-read frames.
        shell.exchange(conn, rd, mailbox, clock).await
    }
}

/// Monotonic time since the connection's start, as the connection counts it.
struct Clock(Instant);

impl Clock {
    fn now(&self) -> Now {
        Now { mono_us: self.0.elapsed().as_micros() as u64, unix_us: unix_us() }
    }

    fn instant(&self, mono_us: u64) -> Instant {
        self.0 + Duration::from_micros(mono_us)
    }
}

/// One output of the connection. Messages are kept encoded and encrypted only when written, so
/// the session's nonces follow the order of the writes whatever runs in between.
enum Step {
    Send(Vec<u8>),
    EncodeFailed,
    Act(Action),
}

/// The connection's [`Output`] during one input.
#[derive(Default)]
struct Steps {
    steps: VecDeque<Step>,
}

impl Output for Steps {
    fn send(&mut self, msg: &Down<'_>) {
        // Encoded on the stack and kept at its own length: a queued message does not hold a
        // buffer of the largest size.
        let mut plain = [0u8; MAX_PLAINTEXT];
        self.steps.push_back(match encode(msg, &mut plain) {
            Ok(n) => Step::Send(plain[..n].to_vec()),
            Err(_) => Step::EncodeFailed,
        });
    }

    fn act(&mut self, action: Action) {
        self.steps.push_back(Step::Act(action));
    }
}

/// The I/O side of one connection.
struct Shell<'a> {
    wr: tokio::net::tcp::OwnedWriteHalf,
    session: ServerSession,
    store: &'a Store,
    device: Known,
    /// What the hello said, until the device is online (then it is in the registry).
    hello: Option<Box<HelloInfo>>,
    /// Set once the device is online (see [`Store::claim_online`]).
    generation: Option<u64>,
    /// Its place within the gateway's limits.
    admission: Admission,
    /// This gateway run's node id.
    node: Arc<str>,
    /// The app channels of this connection.
    chans: crate::channels::ChannelHub,
}

/// Runs `input` on the connection and returns its outputs.
fn feed(input: impl FnOnce(&mut Steps)) -> VecDeque<Step> {
    let mut out = Steps::default();
    input(&mut out);
    out.steps
}

impl Shell<'_> {
    async fn exchange(
        &mut self,
        conn: &mut Connection,
        frames: &mut Frames,
        mailbox: &mut Mailbox,
        clock: &Clock,
    ) -> Result<(), ConnError> {
        // What runs on an input (database, object store, writes) is boxed: its state exists only
        // while it runs, not in every idle connection's task. Inside, the larger and rarer
        // awaits (queries, the object store, event notes) are boxed again, so an input waiting
        // for the group commit (a fleet connecting at once) holds little.
        loop {
            let wake = conn.poll_at().map(|at| clock.instant(at));
            tokio::select! {
                frame = frames.next() => Box::pin(self.frames(conn, frames, frame?, clock)).await?,
                msg = mailbox.recv() => match msg {
                    DeviceMessage::DeploymentChanged => {
                        let steps = feed(|out| conn.deployment_changed(out));
                        Box::pin(self.perform(conn, steps)).await?;
                    }
                    DeviceMessage::EndSession { reason } => {
                        tracing::info!(device = %self.device.id, reason, "device session ended by the server");
                        return Ok(());
                    }
                    DeviceMessage::Debug(frame) => {
                        let steps = feed(|out| conn.debug_to_device(&frame, out));
                        Box::pin(self.perform(conn, steps)).await?;
                    }
                },
                downs = self.chans.next() => self.send_channel(downs).await?,
                () = tokio::time::sleep_until(wake.unwrap_or_else(Instant::now)), if wake.is_some() => {
                    let now = clock.now();
                    let steps = feed(|out| conn.tick(now, out));
                    Box::pin(self.perform(conn, steps)).await?;
                }
            }
        }
    }

    /// A frame and every one already received (while the connection's batch has room); then the
    /// batch is stored in one transaction and acknowledged once.
    async fn frames(
        &mut self,
        conn: &mut Connection,
        frames: &mut Frames,
        first: Vec<u8>,
        clock: &Clock,
    ) -> Result<(), ConnError> {
        let mut next = Some(first);
        while let Some(frame) = next.take() {
            let now = clock.now();
            let steps = match self.session.receive(&frame) {
                Ok(plain) => feed(|out| conn.receive_bytes(now, &plain, out)),
                Err(_) => feed(|out| conn.undecryptable(out)),
            };
            self.perform(conn, steps).await?;
            if conn.wants_more() {
                next = frames.try_next().await?;
            }
        }
        if let Some(batch) = conn.flush() {
            self.store_batch(&batch).await?;
            let steps = feed(|out| conn.logs_stored(out));
            self.perform(conn, steps).await?;
        }
        Ok(())
    }

    /// Carries out the connection's outputs in order (a target load feeds the connection again;
    /// its outputs come next).
    async fn perform(&mut self, conn: &mut Connection, mut steps: VecDeque<Step>) -> Result<(), ConnError> {
        let (store, device) = (self.store, self.device.id.clone());
        let id = &*device;
        let counters = store.counters();
        while let Some(step) = steps.pop_front() {
            match step {
                Step::Send(plain) => {
                    let frame = self.session.send_raw(&plain).map_err(|_| ConnError::Protocol("encrypt"))?;
                    write_all(&mut self.wr, &frame).await?
                }
                Step::EncodeFailed => return Err(ConnError::Protocol("encrypt")),
                Step::Act(action) => match action {
                    Action::Online => {
                        let info = self.hello.take().ok_or(ConnError::Protocol("online twice"))?;
                        let app = info.app.as_ref().map(|(a, b)| (a.as_str(), b.as_str()));
                        // The session first, then the row: a connection that ends meanwhile cannot
                        // clear this one's presence (review #9).
                        let generation = store.claim_online(&device);
                        self.generation = Some(generation);
                        store
                            .device_online(id, &info.visor_version, app, info.boot_count, &self.node, generation)
                            .await?;
                        self.admission.authenticated();
                        Counters::add(&counters.handshakes, 1);
                        if let Some((next, max)) = info.regression {
                            let text = format!(
                                "log sequence went back: the device numbers its next record {next:#x}, records up \
                                 to {max:#x} are stored; resuming below {next:#x}"
                            );
                            tracing::warn!(device = %id, "{text}");
                            Box::pin(store.note_server_event(id, "log_regression", &text)).await?;
                        }
                        tracing::info!(device = %id, "device online");
                    }
                    Action::LoadTarget => {
                        Counters::add(&counters.target_loads, 1);
                        let target = Box::pin(store.deployment(id)).await?.map(|d| Target {
                            bundle_id: d.bundle.id,
                            sequence: d.bundle.sequence,
                            manifest_digest: d.bundle.manifest_digest,
                            envelope: d.bundle.envelope,
                            layers: d.bundle.layers,
                        });
                        let more = feed(|out| conn.target(target, out));
                        for s in more.into_iter().rev() {
                            steps.push_front(s);
                        }
                    }
                    Action::StoreStatus(status) => {
                        let room = self.update_event_room().await?;
                        if Box::pin(store.store_update_status(id, &status, room)).await? && room {
                            self.admission.limiter().count_update_event(id, unix_us());
                        }
                    }
                    Action::NoteUpdate { state, sequence, text } => {
                        Box::pin(store.note_update_event(id, state, sequence, &text)).await?;
                    }
                    Action::Fetch(fetch) => Box::pin(self.serve_fetch(&fetch)).await?,
                    Action::Debug(frame) => {
                        store.debug_relay().to_client(id, frame);
                    }
                    Action::Channel(up) => self.channel(up).await?,
                    Action::Notice(notice) => self.notice(notice),
                    Action::Close(why) => return Err(why.into()),
                },
            }
        }
        Ok(())
    }

    /// Reads a validated range from the object store and sends it (or `Unavailable`). The read
    /// is async (the local store reads on the blocking pool), so a slow read holds up this
    /// connection only.
    async fn serve_fetch(&mut self, fetch: &Fetch) -> Result<(), ConnError> {
        let range = fetch.range();
        let data = self.store.read_layer(&fetch.sha256, range.start, range.end).await.ok();
        match fetch.reply(data.as_deref()) {
            Ok(messages) => {
                for m in &messages {
                    send(&mut self.wr, &mut self.session, m).await?;
                }
                Counters::add(&self.store.counters().layer_bytes_served, fetch.len as u64);
            }
            Err(refusal) => {
                tracing::warn!(layer = %fetch.sha256, "layer missing or short in the object store");
                send(&mut self.wr, &mut self.session, &refusal).await?;
            }
        }
        Ok(())
    }

    /// A channel message from the device's app, for the connection's channel hub.
    async fn channel(&mut self, up: ChanUp) -> Result<(), ConnError> {
        let downs = self.chans.on_up(up);
        self.send_channel(downs).await
    }

    /// Sends the channel hub's messages to the device, in order.
    async fn send_channel(&mut self, downs: Vec<crate::channels::ChanDown>) -> Result<(), ConnError> {
        for d in &downs {
            send(&mut self.wr, &mut self.session, &d.message()).await?;
        }
        Ok(())
    }

    /// Logs and counts.
    fn notice(&self, notice: Notice) {
        let (id, counters) = (&*self.device.id, self.store.counters());
        match notice {
            Notice::UnknownMessage(variant) => {
                tracing::debug!(device = %id, variant, "unknown message skipped");
                Counters::add(&counters.unknown_messages, 1);
            }
            Notice::UnknownEvent(event) => {
                tracing::debug!(device = %id, event, "unknown visor event skipped");
                Counters::add(&counters.unknown_messages, 1);
            }
            Notice::Dropped { count, before_seq } => {
                tracing::warn!(device = %id, count, before_seq, "device dropped log records");
                Counters::add(&counters.log_dropped, count);
            }
            Notice::UnknownUpdateState(state) => tracing::warn!(device = %id, state, "unknown update state"),
            Notice::Offered { bundle_id, sequence } => {
                Counters::add(&counters.offers_sent, 1);
                tracing::info!(device = %id, bundle = %bundle_id, sequence, "update offered");
            }
            Notice::DebugDropped(why) => {
                match why {
                    DebugDrop::Offline => Counters::add(&counters.debug_dropped_offline, 1),
                    DebugDrop::NotNegotiated | DebugDrop::TooLarge => {
                        Counters::add(&counters.debug_dropped_not_negotiated, 1)
                    }
                }
                tracing::debug!(device = %id, ?why, "debug frame not sent to the device");
            }
        }
    }

    /// Whether the device may add an update event now; the first refusal of the day is recorded
    /// as a device event.
    async fn update_event_room(&self) -> Result<bool, ConnError> {
        let (store, id) = (self.store, &*self.device.id);
        match self.admission.limiter().update_event_room(id, unix_us()) {
            Quota::Room => Ok(true),
            Quota::Full { first } => {
                Counters::add(&store.counters().update_events_quota_dropped, 1);
                if first {
                    let cap = self.admission.limiter().limits().update_events_per_device_per_day;
                    let text = format!("update event quota reached ({cap} per day): further events of the day are not recorded (day {})", unix_us() / 86_400_000_000);
                    tracing::warn!(device = %id, "{text}");
                    Box::pin(store.note_server_event(id, "update_event_quota", &text)).await?;
                }
                Ok(false)
            }
        }
    }

    /// Stores a batch in one transaction, then the registry and history notes its events carry.
    async fn store_batch(&self, batch: &Batch) -> Result<(), ConnError> {
        let (store, id) = (self.store, &*self.device.id);
        let counters = store.counters();
        // The daily log quota: records above it are acknowledged (the device must not resend
        // them forever) but not stored; the first refusal of the day is recorded as an event.
        let limiter = self.admission.limiter();
        let (mut kept, mut refused, mut first) = (Vec::with_capacity(batch.records.len()), 0u64, false);
        for r in &batch.records {
            match limiter.admit_log(id, r.received_at, r.text.len() as u64 + 32) {
                Quota::Room => kept.push(r.clone()),
                Quota::Full { first: f } => {
                    refused += 1;
                    first |= f;
                }
            }
        }
        if refused > 0 {
            Counters::add(&counters.log_quota_dropped, refused);
            if first {
                let cap = limiter.limits().log_bytes_per_device_per_day;
                let text = format!(
                    "log quota reached ({cap} bytes per day): further records of the day are not stored (day {})",
                    unix_us() / 86_400_000_000
                );
                tracing::warn!(device = %id, "{text}");
                Box::pin(store.note_server_event(id, "log_quota", &text)).await?;
            }
        }
        // The registry's boot and crash notes commit with the records (one transaction); update
        // events follow (they depend on the update event quota).
        let events: Vec<(u64, DeviceEvent<'_>)> = batch
            .notes
            .iter()
            .filter_map(|note| match note {
                Note::Boot { at, text } => Some((*at, DeviceEvent::Boot(text))),
                Note::Crash { at, text } => Some((*at, DeviceEvent::Crash(text))),
                Note::Update { .. } => None,
            })
            .collect();
        // Crash dump parts go with their records: one whose record the quota refused (or that
        // was stored before) is not applied.
        let new = store.insert_logs_with_crashes(id, &kept, &events, &batch.crashes).await?;
        Counters::add(&counters.log_records, batch.received);
        Counters::add(&counters.log_unstorable, batch.unstorable);
        if batch.unstorable > 0 {
            tracing::warn!(device = %id, count = batch.unstorable, "log records above sequence 2^63 - 1 not stored");
        }
        Counters::add(&counters.log_duplicates, (kept.len() as u64).saturating_sub(new));
        for note in &batch.notes {
            match note {
                Note::Boot { .. } | Note::Crash { .. } => {}
                Note::Update { state, sequence, text } => {
                    if self.update_event_room().await? {
                        limiter.count_update_event(id, unix_us());
                        Box::pin(store.note_update_event(id, state, *sequence, text)).await?
                    }
                }
            }
        }
        Ok(())
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_and_a_vanished_reader_are_not_rejections() {
        // What `keel_gateway_rejected_total` counts: invalid input and unknown keys only.
        assert!(ConnError::Protocol("bad handshake").is_rejection());
        assert!(ConnError::UnknownDevice.is_rejection());
        assert!(ConnError::from(Close::ExpectedReady).is_rejection());
        assert!(ConnError::from(ReadError::Frame(keel_proto::frame::FrameError::TooLarge { len: 9, limit: 8 }))
            .is_rejection());
        for e in [
            ConnError::from(Close::ReadyTimeout),
            ConnError::from(Close::IdleTimeout),
            ConnError::Timeout("no handshake in time"),
            ConnError::ReaderEnded,
            ConnError::from(ReadError::Io(std::io::ErrorKind::UnexpectedEof.into())),
        ] {
            assert!(!e.is_rejection(), "{e:?}");
        }
    }
}
