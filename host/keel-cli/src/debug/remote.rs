//! The real [`Probe`]: the end-to-end encrypted debug session with the device's agent
//! (`keel_debug::session`), carried by the server's websocket relay (`/v1/devices/{id}/debug`).
//!
//! * One request at a time; a request with no answer after [`RETRY`] is sent again with the same
//!   id (the agent answers a retransmission without running it twice), and a websocket that
//!   drops is opened again: the session survives a lost frame or a link drop of up to
//!   [`LINK_GRACE`] (the agent keeps it for 30 s of silence).
//! * [`Probe::idle`] pings the agent when nothing was sent for [`KEEPALIVE`], so a developer who
//!   looks at a stopped program for minutes keeps the session, and reads the socket (which
//!   answers the relay's websocket pings).
//! * A newer `keel debug` for the same device takes the relay over: this one then stops with an
//!   error instead of taking it back.
//! * A frame that fails to decrypt ends the session: the relay altered or replayed it.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use keel_api::{Client, DebugSocket};
use keel_debug::session::{Client as Session, Refusal, MAX_FRAME};
use keel_debug::wire::{Event, Op, OpResult, Request, Results, MAX_MESSAGE};
use rand_core::OsRng;

use super::probe::{DeviceEvent, OpOutcome, Probe, ProbeError};
use crate::client::Conn;

// Every session frame fits what the typed client may send (its copy of the relay's limit).
const _: () = assert!(keel_debug::session::MAX_FRAME <= keel_api::MAX_DEBUG_FRAME);

/// A request unanswered for this long is sent again.
const RETRY: Duration = Duration::from_secs(2);
/// How long a request may go unanswered (link drops included) before the session is given up.
const LINK_GRACE: Duration = Duration::from_secs(30);
/// The agent is pinged when nothing was sent for this long.
const KEEPALIVE: Duration = Duration::from_secs(5);

/// The session with one device's debug agent.
pub struct RemoteProbe {
    api: Client,
    device: String,
    socket: Option<DebugSocket>,
    session: Session<OsRng>,
    next_id: u16,
    events: VecDeque<DeviceEvent>,
    round_trips: u64,
    last_sent: Instant,
    closed: bool,
}

fn err(e: impl std::fmt::Display) -> ProbeError {
    ProbeError(e.to_string())
}

/// Opens a session with `device` as the holder of the debug key `key` (its secret half).
pub fn connect(conn: &Conn, device: &str, key: &[u8; 32]) -> Result<Box<dyn Probe>, String> {
    let api = conn.client()?;
    let d = api.device(device).map_err(|e| format!("device {device}: {e}"))?;
    let device_key: [u8; 32] = keel_server::unhex(&d.public_key)
        .and_then(|v| v.try_into().ok())
        .ok_or_else(|| format!("device {device}: the server gave no usable device key"))?;
    let started = Instant::now();
    loop {
        let mut session = Session::<OsRng>::new(key, &device_key).map_err(|e| format!("{e:?}"))?;
        let mut frame = [0u8; MAX_FRAME];
        let n = session.start(0, &mut frame).map_err(|e| format!("{e:?}"))?;
        let mut socket = api.debug_socket(device).map_err(|e| format!("cannot reach the debug relay: {e}"))?;
        socket.send(&frame[..n]).map_err(|e| format!("cannot reach the debug relay: {e}"))?;
        let deadline = Instant::now() + RETRY * 2;
        while Instant::now() < deadline {
            let Some(reply) = socket.recv(RETRY).map_err(|e| format!("debug relay: {e}"))? else { continue };
            if let Some(r) = Refusal::parse(&reply) {
                return Err(format!("the device refused the debug session: {}", r.as_str()));
            }
            let mut plain = [0u8; MAX_FRAME];
            if session.open(&reply, &mut plain).is_err() {
                return Err("the device's answer did not authenticate (wrong device key?)".into());
            }
            return Ok(Box::new(RemoteProbe {
                api,
                device: device.to_string(),
                socket: Some(socket),
                session,
                next_id: 1,
                events: VecDeque::new(),
                round_trips: 1,
                last_sent: Instant::now(),
                closed: false,
            }));
        }
        if started.elapsed() > LINK_GRACE {
            return Err(format!(
                "device {device} did not answer in {} s: is it online (keel devices show {device})?",
                LINK_GRACE.as_secs()
            ));
        }
    }
}

impl RemoteProbe {
    fn socket(&mut self) -> Result<&mut DebugSocket, ProbeError> {
        if self.socket.is_none() {
            self.socket = Some(self.api.debug_socket(&self.device).map_err(err)?);
        }
        Ok(self.socket.as_mut().expect("just opened"))
    }

    fn send(&mut self, plain: &[u8]) -> Result<(), ProbeError> {
        let mut frame = [0u8; MAX_FRAME];
        let n = self.session.seal(plain, &mut frame).map_err(|e| err(format!("{e:?}")))?;
        self.last_sent = Instant::now();
        let sent = self.socket().and_then(|s| s.send(&frame[..n]).map_err(err));
        if sent.is_err() {
            // The relay link dropped: the frame is lost, the retry sends it again.
            self.socket = None;
        }
        Ok(())
    }

    /// The next message from the device, decrypted; `None` on timeout.
    fn recv(&mut self, timeout: Duration) -> Result<Option<Vec<u8>>, ProbeError> {
        let got = match self.socket() {
            Ok(s) => s.recv(timeout),
            Err(_) => {
                std::thread::sleep(timeout.min(Duration::from_millis(200)));
                return Ok(None);
            }
        };
        let frame = match got {
            Ok(Some(f)) => f,
            Ok(None) => return Ok(None),
            Err(_) => {
                let replaced =
                    self.socket.as_ref().and_then(|s| s.close_reason()).is_some_and(|(_, r)| r == "replaced");
                if replaced {
                    return Err(err("another `keel debug` took over this device's session"));
                }
                self.socket = None;
                return Ok(None);
            }
        };
        let mut plain = [0u8; MAX_FRAME];
        let n = self
            .session
            .open(&frame, &mut plain)
            .map_err(|_| err("a frame from the relay did not authenticate: the session is over"))?;
        Ok(Some(plain[..n].to_vec()))
    }

    /// Keeps unsolicited events; returns the results of reply `id` if `plain` is it.
    fn take(&mut self, plain: &[u8], id: u16, ops: &[Op<'_>]) -> Result<Option<Vec<OpOutcome>>, ProbeError> {
        match Event::decode(plain).map_err(|_| err("the device sent a malformed message"))? {
            Event::Stop(s) => self.events.push_back(DeviceEvent::Stop(s)),
            Event::Restarted(r) => self.events.push_back(DeviceEvent::Restarted(r)),
            Event::Reply { id: rid, results } if rid == id => {
                let mut r = Results::new(results);
                let mut out = Vec::with_capacity(ops.len());
                for op in ops {
                    out.push(match r.next(op).map_err(|_| err("the device sent a malformed reply"))? {
                        OpResult::Ok(d) => OpOutcome::Ok(d.to_vec()),
                        OpResult::Err(s) => OpOutcome::Err(s),
                    });
                }
                return Ok(Some(out));
            }
            Event::Reply { .. } => {} // a late answer to a retransmitted request or a ping
        }
        Ok(None)
    }

    /// Pings the agent if nothing was sent for [`KEEPALIVE`] (fire and forget: its answer is
    /// skipped by whoever reads next).
    fn keepalive(&mut self) -> Result<(), ProbeError> {
        if self.closed || self.last_sent.elapsed() < KEEPALIVE {
            return Ok(());
        }
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        let mut plain = [0u8; 8];
        let n = Request::encode(id, &[Op::Ping], &mut plain).map_err(|_| err("ping"))?;
        self.send(&plain[..n])
    }

    fn batch(&mut self, ops: &[Op<'_>]) -> Result<Vec<OpOutcome>, ProbeError> {
        if self.closed {
            return Err(err("the debug session is closed"));
        }
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        let mut plain = [0u8; MAX_MESSAGE];
        let n = Request::encode(id, ops, &mut plain).map_err(|_| err("request too large"))?;
        self.round_trips += 1;
        let started = Instant::now();
        loop {
            self.send(&plain[..n])?;
            let sent = Instant::now();
            while sent.elapsed() < RETRY {
                if let Some(m) = self.recv(RETRY - sent.elapsed().min(RETRY))? {
                    if let Some(out) = self.take(&m, id, ops)? {
                        if ops.contains(&Op::Detach) {
                            self.closed = true;
                        }
                        return Ok(out);
                    }
                }
            }
            if started.elapsed() > LINK_GRACE {
                return Err(err(format!(
                    "the device did not answer for {} s: the link is down (the app resumes by itself after 30 s)",
                    LINK_GRACE.as_secs()
                )));
            }
        }
    }
}

impl Probe for RemoteProbe {
    fn batch(&mut self, ops: &[Op<'_>]) -> Result<Vec<OpOutcome>, ProbeError> {
        RemoteProbe::batch(self, ops)
    }

    fn wait_event(&mut self, timeout: Duration) -> Result<Option<DeviceEvent>, ProbeError> {
        let deadline = Instant::now() + timeout;
        let g = self;
        loop {
            if let Some(e) = g.events.pop_front() {
                return Ok(Some(e));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            if let Some(m) = g.recv(left.min(Duration::from_millis(500)))? {
                g.take(&m, 0, &[])?;
            }
            g.keepalive()?;
        }
    }

    fn round_trips(&self) -> u64 {
        self.round_trips
    }

    fn idle(&mut self) -> Result<(), ProbeError> {
        // Reading answers the relay's pings and queues what the device sent meanwhile.
        if let Some(m) = self.recv(Duration::from_millis(1))? {
            self.take(&m, 0, &[])?;
        }
        self.keepalive()
    }
}
