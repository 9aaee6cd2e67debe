//! The device's update agent, sans-IO: turns the server's offer and layer data into install
//! steps (through [`Updater`]) and tells the caller what to send next. Used by the visor and by
//! the simulator, so both follow the same rules.
//!
//! Flow: the server offers a bundle envelope (without its layers) → [`Agent::on_offer`] verifies
//! its signature against the trusted keys, its sequence number and its visor requirement, starts
//! or resumes the download and asks for the first page ([`Next::Fetch`]); every
//! [`Agent::on_data`] writes the bytes and asks for the next page; when the layer is complete the
//! install is committed and [`Next::Installed`] says to restart the app into its trial.
//! [`Agent::status`] is what the device reports to the server.

use keel_flash::{Medium, Nor};
use keel_proto::msg::{Up, MAX_FETCH};

use crate::{Confirm, TrialPolicy};
use crate::{Download, Error, Offer, Outcome, Phase, Reason, Updater};

/// Bytes asked for per request on the reference board: one flash page, the unit of resumption.
/// On flash of another geometry a request is one page of that flash ([`Download::fetch_len`]).
pub const FETCH_LEN: u32 = keel_flash::PAGE_SIZE;

/// Grace time for a bundle whose policy leaves confirmation to the app alone (connectivity grace
/// time 0): an app that does not confirm within it is rolled back.
pub const APP_CONFIRM_TIMEOUT_S: u32 = 600;

/// Update states as reported to the server: the wire enum itself, so the codes live once.
pub use keel_proto::msg::UpdateState as State;

/// What the device reports about updates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status {
    /// Sequence number of the confirmed app (0: factory image).
    pub installed: u64,
    /// The bundle this status is about (0: none).
    pub sequence: u64,
    /// Its state.
    pub state: State,
    /// Bytes downloaded.
    pub progress: u32,
    /// Layer size.
    pub total: u32,
    /// Why, for refused, rolled back and error.
    pub reason: Option<Reason>,
}

impl Status {
    /// The `UpdateStatus` message that reports it.
    pub fn message(&self) -> Up<'static> {
        Up::UpdateStatus {
            installed: self.installed,
            sequence: self.sequence,
            state: self.state.as_u8(),
            progress: self.progress,
            total: self.total,
            reason: self.reason.map_or(0, |r| r.code()),
        }
    }
}

/// What to do after an agent call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Ask the server for `len` bytes of one layer of the bundle at `offset`.
    Fetch {
        /// Bundle sequence number.
        sequence: u64,
        /// The layer's component index in manifest order (the app's).
        component: u8,
        /// Offset in the **layer** (the bytes as the server stores them). For a full image it
        /// is also the offset in the slot; a delta-encoded layer will map the two apart.
        offset: u32,
        /// Bytes: at most one flash page and at most [`MAX_FETCH`].
        len: u32,
    },
    /// The update is installed and committed: restart the app from [`Updater::boot`]'s plan.
    Installed,
    /// The update is downloaded and verified, and the bundle asks for politeness: tell the app
    /// (it applies it with [`Agent::apply`] when it chooses) and apply it anyway after
    /// `politeness_s` seconds.
    Ready {
        /// The longest the app may defer it.
        politeness_s: u32,
    },
    /// Nothing to ask for (report the [`Agent::status`]).
    None,
}

impl Next {
    /// The message to send for it, if any (`FetchLayer` for [`Next::Fetch`]).
    pub fn message(&self) -> Option<Up<'static>> {
        match *self {
            Next::Fetch { sequence, component, offset, len } => {
                Some(Up::FetchLayer { sequence, component, offset, len })
            }
            _ => None,
        }
    }
}

/// The trial policy of a verified manifest.
pub fn trial_policy(p: &keel_bundle::Policies<'_>) -> TrialPolicy {
    match p.connectivity_grace_time_s {
        0 => TrialPolicy {
            max_crashes: p.max_trial_crashes.max(1),
            grace_s: APP_CONFIRM_TIMEOUT_S,
            confirm: Confirm::ByApp,
        },
        g => TrialPolicy { max_crashes: p.max_trial_crashes.max(1), grace_s: g, confirm: Confirm::ByLink },
    }
}

/// The update agent (RAM state of one boot; the journal holds what must survive).
#[derive(Default)]
pub struct Agent {
    download: Option<Download>,
    /// Politeness time of the download's bundle (0: install as soon as it is verified).
    politeness_s: u32,
    /// A verified download waiting for the app (or its politeness time) to be committed.
    ready: Option<Download>,
    /// End of the range last asked for.
    requested_end: u32,
    /// A refusal or failure not recorded in the journal (bad manifest, too-old visor): reported
    /// until the next offer.
    failure: Option<(u64, State, Reason)>,
    /// Manifest index of the layer being downloaded.
    component: u8,
}

impl Agent {
    /// An idle agent.
    pub const fn new() -> Self {
        Agent { download: None, politeness_s: 0, ready: None, requested_end: 0, failure: None, component: 0 }
    }

    /// The manifest index of the component being downloaded (the app's layer): layer data for
    /// another component is not this agent's.
    pub fn component(&self) -> u8 {
        self.component
    }

    /// Handles an offer: `envelope` is the bundle's SUIT envelope without payloads.
    pub fn on_offer<M: Medium>(
        &mut self,
        up: &Updater,
        f: &mut Nor<M>,
        envelope: &[u8],
        trusted_keys: &[[u8; 32]],
        visor_version: u32,
    ) -> Next {
        let slot_size = up.partition(crate::Slot::A).size;
        let capacity = |c: &keel_bundle::Component<'_>| (c.id == "app").then_some(slot_size);
        let manifest = match keel_bundle::verify_envelope(envelope, trusted_keys, capacity) {
            Ok(m) => m,
            Err(_) => return self.refuse(0, Reason::BadManifest),
        };
        let Some(index) = manifest.components().iter().position(|c| c.id == "app") else {
            return self.refuse(manifest.sequence, Reason::BadManifest);
        };
        let app = manifest.components()[index];
        if manifest.policies.min_visor_version > visor_version {
            return self.refuse(manifest.sequence, Reason::VisorTooOld);
        }
        let offer = Offer {
            seq: manifest.sequence,
            digest: app.digest,
            size: app.size,
            policy: trial_policy(&manifest.policies),
        };
        if self.ready.as_ref().is_some_and(|r| r.offer() == &offer) {
            return Next::Ready { politeness_s: self.politeness_s };
        }
        // The same download, offered again (the server offers on every connection): requests of
        // an earlier connection are lost, so ask again from where the download is.
        if let Some(dl) = &self.download {
            if dl.offer() == &offer {
                self.requested_end = 0;
                return self.fetch_next();
            }
        }
        self.failure = None;
        match up.state(f) {
            Ok(s) if s.installed_seq == offer.seq => return Next::None, // already installed
            Ok(s) if matches!(s.phase, Phase::Trial(t) if t.seq == offer.seq) => return Next::None,
            _ => {}
        }
        match up.offer(f, &offer) {
            Ok(dl) => {
                self.download = Some(dl);
                // A manifest holds at most a handful of components (keel_bundle::MAX_COMPONENTS).
                self.component = u8::try_from(index).unwrap_or(u8::MAX);
                self.ready = None;
                self.politeness_s = manifest.policies.max_politeness_time_s;
                self.requested_end = 0;
                self.advance(up, f)
            }
            Err(Error::Update(_)) => Next::None, // recorded in the journal's last outcome
            Err(_) => self.fail(offer.seq, Reason::Flash),
        }
    }

    fn refuse(&mut self, seq: u64, r: Reason) -> Next {
        self.failure = Some((seq, State::Refused, r));
        Next::None
    }

    fn fail(&mut self, seq: u64, r: Reason) -> Next {
        self.download = None;
        self.failure = Some((seq, State::Error, r));
        Next::None
    }

    /// The link came back: requests of the old connection are lost; ask again.
    pub fn on_connect(&mut self) -> Next {
        self.requested_end = 0;
        self.fetch_next()
    }

    fn fetch_next(&mut self) -> Next {
        let Some(dl) = &self.download else { return Next::None };
        let offset = dl.offset();
        if offset < self.requested_end {
            return Next::None; // still arriving
        }
        // One page, but never more than one request may ask for (a 128 KiB-page flash is
        // fetched in several requests; the page is journaled when its last byte is written).
        let len = dl.fetch_len().min(MAX_FETCH).min(dl.offer().size.saturating_sub(offset));
        if len == 0 {
            return Next::None; // complete: `advance` finishes it
        }
        self.requested_end = offset + len;
        Next::Fetch { sequence: dl.offer().seq, component: self.component, offset, len }
    }

    /// Asks for the next page, or finishes a download whose bytes are all written (also one
    /// resumed after a reboot that came between its last page and its commit).
    fn advance<M: Medium>(&mut self, up: &Updater, f: &mut Nor<M>) -> Next {
        match &self.download {
            Some(dl) if dl.offset() < dl.offer().size => self.fetch_next(),
            Some(_) => self.complete(up, f),
            None => Next::None,
        }
    }

    /// Verifies a complete download, then commits it (or holds it for the app, by policy).
    fn complete<M: Medium>(&mut self, up: &Updater, f: &mut Nor<M>) -> Next {
        let Some(mut dl) = self.download.take() else { return Next::None };
        let seq = dl.offer().seq;
        match dl.verify(up, f) {
            Ok(()) if self.politeness_s > 0 => {
                self.ready = Some(dl);
                Next::Ready { politeness_s: self.politeness_s }
            }
            Ok(()) => self.commit(up, f, dl),
            // Digest or image failures are the journal's last outcome now.
            Err(Error::Update(_)) => Next::None,
            Err(_) => self.fail(seq, Reason::Flash),
        }
    }

    /// The server cannot serve a fetch of `sequence` (`LayerError`): the download ends with an
    /// error the device reports. Its journaled pages stay: the next offer (the server repeats
    /// it on the next connection after an error) resumes from them.
    pub fn on_layer_error(&mut self, sequence: u64) -> Next {
        if self.download.as_ref().is_some_and(|d| d.offer().seq == sequence) {
            return self.fail(sequence, Reason::LayerUnavailable);
        }
        Next::None
    }

    /// Handles layer data. Data for another bundle, or not at the expected offset, is ignored.
    pub fn on_data<M: Medium>(
        &mut self,
        up: &Updater,
        f: &mut Nor<M>,
        sequence: u64,
        offset: u32,
        data: &[u8],
    ) -> Next {
        let Some(dl) = self.download.as_mut() else { return Next::None };
        if dl.offer().seq != sequence || dl.offset() != offset || data.is_empty() {
            return Next::None;
        }
        let seq = dl.offer().seq;
        if let Err(e) = dl.write(up, f, data) {
            return match e {
                Error::Update(r) => self.fail(seq, r),
                Error::OutOfOrder => self.fail(seq, Reason::TooLarge),
                Error::Flash(_) => self.fail(seq, Reason::Flash),
            };
        }
        self.advance(up, f)
    }

    fn commit<M: Medium>(&mut self, up: &Updater, f: &mut Nor<M>, dl: Download) -> Next {
        let seq = dl.offer().seq;
        match dl.commit(up, f) {
            Ok(()) => Next::Installed,
            Err(Error::Update(r)) => self.fail(seq, r),
            Err(_) => self.fail(seq, Reason::Flash),
        }
    }

    /// Applies a verified update that waits for the app ([`Next::Ready`]): commits it.
    /// [`Next::Installed`] then says to restart into the trial; [`Next::None`] if none waits.
    pub fn apply<M: Medium>(&mut self, up: &Updater, f: &mut Nor<M>) -> Next {
        match self.ready.take() {
            Some(dl) => self.commit(up, f, dl),
            None => Next::None,
        }
    }

    /// True while a verified update waits to be applied.
    pub fn is_ready(&self) -> bool {
        self.ready.is_some()
    }

    /// The deployment was withdrawn: stop downloading `sequence`.
    pub fn on_cancel<M: Medium>(&mut self, up: &Updater, f: &mut Nor<M>, sequence: u64) {
        let pending = self.download.as_ref().or(self.ready.as_ref());
        if pending.is_some_and(|d| d.offer().seq == sequence) {
            self.download = None;
            self.ready = None;
            let _ = up.cancel(f);
        }
    }

    /// True while a download runs.
    pub fn downloading(&self) -> bool {
        self.download.is_some()
    }

    /// What to report to the server.
    pub fn status<M: Medium>(&self, up: &Updater, f: &Nor<M>) -> Status {
        let s = up.state(f).unwrap_or(crate::UpdateState::FACTORY);
        let base =
            Status { installed: s.installed_seq, sequence: 0, state: State::Idle, progress: 0, total: 0, reason: None };
        if let Some(dl) = &self.download {
            let o = dl.offer();
            return Status { sequence: o.seq, state: State::Downloading, progress: dl.offset(), total: o.size, ..base };
        }
        if let Some(dl) = &self.ready {
            // Downloaded and verified, waiting for the app to apply it.
            let o = dl.offer();
            return Status { sequence: o.seq, state: State::Installing, progress: o.size, total: o.size, ..base };
        }
        if let Some((seq, state, r)) = self.failure {
            return Status { sequence: seq, state, reason: Some(r), ..base };
        }
        match (s.phase, s.last) {
            (Phase::Trial(t), _) => Status { sequence: t.seq, state: State::Trial, ..base },
            // A download the journal knows but this boot has not resumed yet (it needs the
            // offer, to verify the manifest again): report the state before it, so the server
            // offers the bundle again; the download then resumes from its last page.
            (Phase::Downloading(_) | Phase::Idle, Some((seq, o))) => {
                let (state, reason) = match o {
                    Outcome::Confirmed => (State::Confirmed, None),
                    Outcome::RolledBack(r) => (State::RolledBack, Some(r)),
                    Outcome::Refused(r) => (State::Refused, Some(r)),
                    Outcome::Failed(r) => (State::Error, Some(r)),
                };
                Status { sequence: seq, state, reason, ..base }
            }
            (Phase::Downloading(_) | Phase::Idle, None) => base,
        }
    }
}
