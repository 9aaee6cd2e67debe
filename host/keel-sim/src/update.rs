//! The simulator's **stand-in update client**, for server tests, until the shared device agent
//! (`crates/keel-update`) exists and replaces it. It does only what the server side needs to be
//! tested against: verify an offer with `keel_bundle` against the keys given to the simulator,
//! refuse a sequence not above the installed one, fetch every layer page by page (resuming from
//! its own offset after a reconnect), check each layer's SHA-256 and report
//! `downloading` → `installing` → `trial` → `confirmed` (or `refused` / `error` with a reason).
//! Nothing is written anywhere and nothing runs: "installing" is instantaneous.

use keel_bundle::{reference_region_capacity, verify_envelope, Envelope};
use keel_link::device::Event;
use keel_link::msg::{LayerErrorCode, Up, UpdateState, MAX_FETCH};
use sha2::{Digest, Sha256};

/// What the simulated device reports and did, for tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpdateStats {
    /// Sequence of the confirmed install (0: factory).
    pub installed: u64,
    /// Current state.
    pub state: UpdateState,
    /// The bundle the state is about.
    pub sequence: u64,
    /// Reason of the last refusal or error.
    pub reason: String,
    /// Offers received.
    pub offers: u32,
    /// Layer bytes received.
    pub fetched_bytes: u64,
    /// Every `FetchLayer` sent: (session number, component, offset, len).
    pub fetches: Vec<(u32, u8, u32, u32)>,
    /// True while fetching is held by [`crate::SimDevice::pause_download_at`].
    pub paused: bool,
}

impl Default for UpdateStats {
    fn default() -> Self {
        UpdateStats {
            installed: 0,
            state: UpdateState::Idle,
            sequence: 0,
            reason: String::new(),
            offers: 0,
            fetched_bytes: 0,
            fetches: Vec::new(),
            paused: false,
        }
    }
}

/// An owned message for the link to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Out {
    Status { installed: u64, sequence: u64, state: UpdateState, progress: u32, total: u32, reason: String },
    Fetch { sequence: u64, component: u8, offset: u32, len: u32 },
}

impl Out {
    pub(crate) fn as_up(&self) -> Up<'_> {
        match self {
            Out::Status { installed, sequence, state, progress, total, reason } => Up::UpdateStatus {
                installed: *installed,
                sequence: *sequence,
                state: state.as_u8(),
                progress: *progress,
                total: *total,
                reason,
            },
            Out::Fetch { sequence, component, offset, len } => {
                Up::FetchLayer { sequence: *sequence, component: *component, offset: *offset, len: *len }
            }
        }
    }
}

struct Download {
    sequence: u64,
    /// (size, sha256) of each layer, in manifest order.
    layers: Vec<(u32, [u8; 32])>,
    component: usize,
    /// Bytes of the current component received so far.
    data: Vec<u8>,
    /// End of the page asked for, while a fetch is outstanding.
    outstanding: Option<u32>,
    done_before: u32,
}

impl Download {
    fn total(&self) -> u32 {
        self.layers.iter().map(|l| l.0).sum()
    }

    fn progress(&self) -> u32 {
        self.done_before + self.data.len() as u32
    }
}

pub(crate) struct Agent {
    keys: Vec<[u8; 32]>,
    pub(crate) stats: UpdateStats,
    download: Option<Download>,
    pause_at: Option<u64>,
    session: u32,
}

impl Agent {
    pub(crate) fn new(keys: Vec<[u8; 32]>, installed: u64) -> Agent {
        Agent {
            keys,
            stats: UpdateStats { installed, ..UpdateStats::default() },
            download: None,
            pause_at: None,
            session: 0,
        }
    }

    pub(crate) fn pause_at(&mut self, bytes: Option<u64>) {
        self.pause_at = bytes;
        self.stats.paused = false;
    }

    fn status(&self) -> Out {
        let (progress, total) = self.download.as_ref().map_or((0, 0), |d| (d.progress(), d.total()));
        Out::Status {
            installed: self.stats.installed,
            sequence: self.stats.sequence,
            state: self.stats.state,
            progress,
            total,
            reason: self.stats.reason.clone(),
        }
    }

    fn set(&mut self, state: UpdateState, sequence: u64, reason: &str) -> Out {
        self.stats.state = state;
        self.stats.sequence = sequence;
        self.stats.reason = reason.into();
        self.status()
    }

    /// A new connection is up (session number `session`): report, and resume a download.
    pub(crate) fn on_online(&mut self, session: u32) -> Vec<Out> {
        self.session = session;
        if let Some(d) = &mut self.download {
            // Whatever was asked on the old connection is lost; ask again from our own offset.
            d.outstanding = None;
        }
        vec![self.status()]
    }

    /// The next fetch, if a download waits for one and is not held.
    pub(crate) fn next_fetch(&mut self) -> Option<Out> {
        let progress = self.download.as_ref()?.progress() as u64;
        if self.pause_at.is_some_and(|p| progress >= p) {
            self.stats.paused = true;
            return None;
        }
        let d = self.download.as_mut()?;
        if d.outstanding.is_some() {
            return None;
        }
        let size = d.layers[d.component].0;
        let offset = d.data.len() as u32;
        let len = (size - offset).min(MAX_FETCH);
        d.outstanding = Some(offset + len);
        self.stats.fetches.push((self.session, d.component as u8, offset, len));
        Some(Out::Fetch { sequence: d.sequence, component: d.component as u8, offset, len })
    }

    /// Handles an update event from the link; returns what to send.
    pub(crate) fn on_event(&mut self, e: &Event<'_>) -> Vec<Out> {
        match *e {
            Event::UpdateOffer { envelope } => self.offer(envelope),
            Event::LayerData { sequence, component, offset, data } => self.data(sequence, component, offset, data),
            Event::LayerError { sequence, code, .. }
                if self.download.as_ref().is_some_and(|d| d.sequence == sequence) =>
            {
                self.download = None;
                let why = LayerErrorCode::from_u8(code).map_or("layer error", LayerErrorCode::as_str);
                vec![self.set(UpdateState::Error, sequence, &format!("server: {why}"))]
            }
            Event::UpdateCancel { sequence } if self.download.as_ref().is_some_and(|d| d.sequence == sequence) => {
                self.download = None;
                vec![self.set(UpdateState::Idle, 0, "")]
            }
            _ => Vec::new(),
        }
    }

    fn offer(&mut self, envelope: &[u8]) -> Vec<Out> {
        self.stats.offers += 1;
        // The sequence is reported even for a refused offer (unauthenticated, for the server only).
        let claimed = Envelope::parse(envelope).and_then(|e| e.manifest_unverified()).map_or(0, |m| m.sequence);
        let m = match verify_envelope(envelope, &self.keys, reference_region_capacity) {
            Ok(m) => m,
            Err(e) => return vec![self.set(UpdateState::Refused, claimed, &e.to_string())],
        };
        if m.sequence <= self.stats.installed {
            let why = format!("sequence {} not above installed {}", m.sequence, self.stats.installed);
            return vec![self.set(UpdateState::Refused, m.sequence, &why)];
        }
        if self.download.as_ref().is_some_and(|d| d.sequence == m.sequence) {
            return Vec::new(); // already on it
        }
        self.download = Some(Download {
            sequence: m.sequence,
            layers: m.components().iter().map(|c| (c.size, c.digest)).collect(),
            component: 0,
            data: Vec::new(),
            outstanding: None,
            done_before: 0,
        });
        vec![self.set(UpdateState::Downloading, m.sequence, "")]
    }

    fn data(&mut self, sequence: u64, component: u8, offset: u32, data: &[u8]) -> Vec<Out> {
        let Some(d) = self.download.as_mut().filter(|d| d.sequence == sequence) else { return Vec::new() };
        if component as usize != d.component || offset as usize != d.data.len() || d.outstanding.is_none() {
            self.download = None;
            return vec![self.set(UpdateState::Error, sequence, "unexpected layer data")];
        }
        d.data.extend_from_slice(data);
        self.stats.fetched_bytes += data.len() as u64;
        let page_end = d.outstanding.unwrap_or(0);
        if (d.data.len() as u32) < page_end {
            return Vec::new();
        }
        if d.data.len() as u32 > page_end {
            self.download = None;
            return vec![self.set(UpdateState::Error, sequence, "more layer data than asked for")];
        }
        d.outstanding = None;
        let (size, digest) = d.layers[d.component];
        if (d.data.len() as u32) < size {
            // A page done: report progress (the server shows it).
            return vec![self.status()];
        }
        let got: [u8; 32] = Sha256::digest(&d.data).into();
        if got != digest {
            self.download = None;
            return vec![self.set(UpdateState::Error, sequence, "layer digest mismatch")];
        }
        d.done_before += size;
        d.data.clear();
        d.component += 1;
        if d.component < d.layers.len() {
            return vec![self.status()];
        }
        // Every layer verified: the stand-in "installs" at once and confirms.
        let mut out = vec![self.set(UpdateState::Installing, sequence, "")];
        out.push(self.set(UpdateState::Trial, sequence, ""));
        self.download = None;
        self.stats.installed = sequence;
        out.push(self.set(UpdateState::Confirmed, sequence, ""));
        out
    }
}
