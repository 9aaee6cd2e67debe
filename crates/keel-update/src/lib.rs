//! # Keel update: A/B app install that no power cut can break
//!
//! The device side of an over-the-air update, sans-IO and `no_std`: the visor feeds it the
//! verified manifest's facts and the layer's bytes as they arrive, and calls it at boot and when
//! the trial app confirms, crashes or runs out of time. Every decision is recorded in the
//! **journal** — a [`keel_flash::RecordLog`] of 128-byte, sequence-numbered, CRC-protected
//! records written alternately in two flash pages — so the newest valid record always says
//! exactly what the device is doing, whatever instant the power went.
//!
//! ## The protocol, and why a power cut never bricks
//!
//! | Step | Flash writes | After a power cut here |
//! |---|---|---|
//! | [`Updater::offer`] | journal `Downloading{done: 0}` | boots the active slot; the download restarts or resumes |
//! | [`Download::write`] | erase + program pages of the **inactive** slot; journal `done` after each page | boots the active slot (untouched); resumes from the last journaled page |
//! | [`Download::finish`] | journal `Trial` (after the digest and the image check) — **the commit point** | boots the trial image |
//! | [`Updater::boot`] in trial | journal `boots + 1` | a reset loop during the trial rolls back after [`MAX_TRIAL_BOOTS`] |
//! | [`Updater::app_crashed`] | journal `crashes + 1`, or the rollback record | counted again at worst |
//! | [`Updater::confirm`] | journal `Idle{active: trial slot}` | still trial: confirmed again |
//! | [`Updater::rollback`] | journal `Idle{active unchanged}` | still trial: rolled back again |
//!
//! The active slot (the last confirmed app) is never written while it is active, so there is
//! always a known-good image; switching slots is one journal record. Sequence numbers only grow
//! on confirmation ([`UpdateState::installed_seq`]), which is the anti-rollback check.
//!
//! Pages and program units are those of the flash given ([`Nor::geometry`]): a download erases,
//! programs and journals page by page of that flash, and stages at most
//! [`keel_flash::MAX_PROGRAM_UNIT`] bytes in RAM.
//!
//! The power-cut sweep (`crates/keel-device/tests/powercut.rs`, with
//! [`keel_flash::sim::SimFlash`]) drives the device core, and through it this crate, through a
//! whole story with 256 KiB images — download, commit, trial, confirm, a crashing
//! update's crash loop and rollback, a polite update applied by the app — and cut the power
//! before and in the middle (torn program unit, half-erased page) of every flash operation of it,
//! for a matrix of flash geometries (8 KiB / 16 B reference, 4 KiB / 8 B, 2 KiB / 16 B,
//! 128 KiB / 32 B), plus seeded random chains of cuts during recovery. Every boot must run a
//! valid image, the journal must decode, and every story must end as the uninterrupted one.
#![no_std]

pub mod agent;
mod state;

pub use state::{Confirm, Downloading, Outcome, Phase, Reason, Slot, Trial, TrialPolicy, UpdateState};

use keel_flash::layout::{self, Partition};
use keel_flash::{FlashError, Geometry, Medium, Nor, RecordLog, ERASED, MAX_PROGRAM_UNIT};
use keel_image::{Header, ImageHasher, Target, HEADER_SIZE};
use sha2::{Digest, Sha256};

/// A trial image that boots this many times without being confirmed or rolled back (resets
/// during the trial: power, hard faults in handlers, hangs the watchdog turned into resets) is
/// rolled back at the next boot.
pub const MAX_TRIAL_BOOTS: u8 = 3;

/// Journal record size in flash.
pub const RECORD_SIZE: usize = 128;
/// Magic of journal records (`"KKJ1"`).
pub const JOURNAL_MAGIC: u32 = 0x314A_4B4B;

/// What to boot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootPlan {
    /// The slot to run.
    pub slot: Slot,
    /// True if this is an unconfirmed update on trial.
    pub trial: bool,
    /// Set when this boot rolled a trial back (too many resets): the reason to report.
    pub rolled_back: Option<Reason>,
}

/// An update offer, from a manifest whose signature the caller verified.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Offer {
    /// Manifest sequence number.
    pub seq: u64,
    /// SHA-256 of the app layer.
    pub digest: [u8; 32],
    /// Size of the app layer (slot bytes: header and image).
    pub size: u32,
    /// Trial policy.
    pub policy: TrialPolicy,
}

/// Why an update step failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// Refused or failed for this reason (recorded in the journal's `last` where it applies).
    Update(Reason),
    /// The flash failed (on the simulator: the power was cut). Nothing is ambiguous: reboot.
    Flash(FlashError),
    /// Bytes for the wrong offset, or more than the layer's size.
    OutOfOrder,
}

impl From<FlashError> for Error {
    fn from(e: FlashError) -> Self {
        Error::Flash(e)
    }
}

/// Slot install and trial bookkeeping over a journal and two app slots.
#[derive(Clone, Copy, Debug)]
pub struct Updater {
    journal: RecordLog<RECORD_SIZE>,
    slots: [Partition; 2],
    target: Target,
}

impl Updater {
    /// An updater with its journal in `journal` (two pages) and slots `a` and `b`; images are
    /// checked against `target` (its `slot_capacity` must fit both slots).
    pub const fn new(journal: Partition, a: Partition, b: Partition, target: Target) -> Self {
        Updater { journal: RecordLog::new(journal.offset, JOURNAL_MAGIC), slots: [a, b], target }
    }

    /// The partitions of the reference flash layout (`keel_flash::layout`).
    pub const fn reference(target: Target) -> Self {
        Updater::new(layout::JOURNAL, layout::APP_A, layout::APP_B, target)
    }

    /// A slot's partition.
    pub fn partition(&self, slot: Slot) -> Partition {
        self.slots[slot.index()]
    }

    /// The current state ([`UpdateState::FACTORY`] if the journal holds none).
    pub fn state<M: Medium>(&self, f: &Nor<M>) -> Result<UpdateState, FlashError> {
        Ok(match self.journal.latest(f)? {
            // A record with a good CRC that does not decode was written by a newer visor;
            // the safe reading is "nothing in progress, slot A".
            Some((_, p)) => UpdateState::decode(&p[..UpdateState::LEN]).unwrap_or(UpdateState::FACTORY),
            None => UpdateState::FACTORY,
        })
    }

    fn save<M: Medium>(&self, f: &mut Nor<M>, s: &UpdateState) -> Result<(), FlashError> {
        self.journal.write(f, &s.encode()).map(|_| ())
    }

    /// Decides what to boot, counting a trial boot (and rolling back after too many).
    pub fn boot<M: Medium>(&self, f: &mut Nor<M>) -> Result<BootPlan, FlashError> {
        let mut s = self.state(f)?;
        match s.phase {
            Phase::Trial(mut t) => {
                if t.boots >= MAX_TRIAL_BOOTS {
                    self.finish_trial(f, &mut s, t.seq, Outcome::RolledBack(Reason::TrialResets))?;
                    return Ok(BootPlan { slot: s.active, trial: false, rolled_back: Some(Reason::TrialResets) });
                }
                t.boots += 1;
                s.phase = Phase::Trial(t);
                self.save(f, &s)?;
                Ok(BootPlan { slot: s.active.other(), trial: true, rolled_back: None })
            }
            _ => Ok(BootPlan { slot: s.active, trial: false, rolled_back: None }),
        }
    }

    /// Checks the image in `slot`: header (against the target) and digest, read from flash.
    pub fn check_slot<M: Medium>(&self, f: &Nor<M>, slot: Slot) -> Result<Header, Reason> {
        let p = self.partition(slot);
        let mut hdr = [0u8; HEADER_SIZE];
        f.read(p.offset, &mut hdr).map_err(|_| Reason::Flash)?;
        let h = Header::parse(&hdr, &self.target).map_err(|_| Reason::BadImage)?;
        if HEADER_SIZE as u32 + h.image_size > p.size {
            return Err(Reason::BadImage);
        }
        let mut hasher = ImageHasher::new(&hdr);
        let mut buf = [0u8; 256];
        let mut o = 0;
        while o < h.image_size {
            let n = (h.image_size - o).min(buf.len() as u32) as usize;
            f.read(p.offset + HEADER_SIZE as u32 + o, &mut buf[..n]).map_err(|_| Reason::Flash)?;
            hasher.update(&buf[..n]);
            o += n as u32;
        }
        if hasher.finish() == h.digest {
            Ok(h)
        } else {
            Err(Reason::BadImage)
        }
    }

    /// Starts (or resumes) downloading `offer` into the inactive slot. Refuses an offer whose
    /// sequence is not above the installed one, one that does not fit, or any while a trial
    /// runs. Resumes when the same layer was being downloaded: [`Download::offset`] says from
    /// where to fetch.
    pub fn offer<M: Medium>(&self, f: &mut Nor<M>, offer: &Offer) -> Result<Download, Error> {
        let mut s = self.state(f)?;
        if let Phase::Trial(_) = s.phase {
            return Err(Error::Update(Reason::Busy));
        }
        let refuse = if offer.seq <= s.installed_seq {
            Some(Reason::SequenceNotNewer)
        } else if offer.size > self.partition(s.active.other()).size || (offer.size as usize) < HEADER_SIZE {
            Some(Reason::TooLarge)
        } else {
            None
        };
        if let Some(r) = refuse {
            if s.last != Some((offer.seq, Outcome::Refused(r))) {
                s.last = Some((offer.seq, Outcome::Refused(r)));
                self.save(f, &s)?;
            }
            return Err(Error::Update(r));
        }
        let slot = s.active.other();
        let mut dl = Download {
            slot,
            offer: *offer,
            written: 0,
            hasher: Sha256::new(),
            stage: [ERASED; MAX_PROGRAM_UNIT as usize],
            staged: 0,
            geometry: f.geometry(),
        };
        match s.phase {
            Phase::Downloading(d) if d.seq == offer.seq && d.digest == offer.digest && d.size == offer.size => {
                // Resume: re-hash what the journal says is written.
                let p = self.partition(slot);
                let mut buf = [0u8; 256];
                while dl.written < d.done {
                    let n = (d.done - dl.written).min(buf.len() as u32) as usize;
                    f.read(p.offset + dl.written, &mut buf[..n])?;
                    dl.hasher.update(&buf[..n]);
                    dl.written += n as u32;
                }
            }
            _ => {
                s.phase = Phase::Downloading(Downloading {
                    seq: offer.seq,
                    digest: offer.digest,
                    size: offer.size,
                    done: 0,
                    policy: offer.policy,
                });
                self.save(f, &s)?;
            }
        }
        Ok(dl)
    }

    /// Abandons a download (deployment withdrawn): the inactive slot's contents are ignored.
    pub fn cancel<M: Medium>(&self, f: &mut Nor<M>) -> Result<(), FlashError> {
        let mut s = self.state(f)?;
        if let Phase::Downloading(d) = s.phase {
            s.phase = Phase::Idle;
            s.last = Some((d.seq, Outcome::Failed(Reason::Cancelled)));
            self.save(f, &s)?;
        }
        Ok(())
    }

    /// The trial app confirmed (or the visor confirmed by policy): the trial slot becomes the
    /// active one. Returns false if no trial was running.
    pub fn confirm<M: Medium>(&self, f: &mut Nor<M>) -> Result<bool, FlashError> {
        let mut s = self.state(f)?;
        let Phase::Trial(t) = s.phase else { return Ok(false) };
        s.active = s.active.other();
        s.installed_seq = t.seq;
        self.finish_trial(f, &mut s, t.seq, Outcome::Confirmed)?;
        Ok(true)
    }

    /// Rolls a running trial back: the previous app stays active. Returns false if no trial
    /// was running.
    pub fn rollback<M: Medium>(&self, f: &mut Nor<M>, reason: Reason) -> Result<bool, FlashError> {
        let mut s = self.state(f)?;
        let Phase::Trial(t) = s.phase else { return Ok(false) };
        self.finish_trial(f, &mut s, t.seq, Outcome::RolledBack(reason))?;
        Ok(true)
    }

    fn finish_trial<M: Medium>(
        &self,
        f: &mut Nor<M>,
        s: &mut UpdateState,
        seq: u64,
        o: Outcome,
    ) -> Result<(), FlashError> {
        s.phase = Phase::Idle;
        s.last = Some((seq, o));
        self.save(f, s)
    }

    /// The trial app crashed (`watchdog`: it hung). Returns the rollback reason when this was
    /// one crash too many (the trial is then rolled back), `None` otherwise (or if no trial).
    pub fn app_crashed<M: Medium>(&self, f: &mut Nor<M>, watchdog: bool) -> Result<Option<Reason>, FlashError> {
        let mut s = self.state(f)?;
        let Phase::Trial(mut t) = s.phase else { return Ok(None) };
        t.crashes = t.crashes.saturating_add(1);
        if t.crashes >= t.policy.max_crashes.max(1) {
            let r = if watchdog { Reason::Watchdog } else { Reason::CrashLoop };
            self.finish_trial(f, &mut s, t.seq, Outcome::RolledBack(r))?;
            return Ok(Some(r));
        }
        s.phase = Phase::Trial(t);
        self.save(f, &s)?;
        Ok(None)
    }

    /// The trial's grace time passed. By policy the update is confirmed (link up the whole
    /// time, [`Confirm::ByLink`]) or rolled back. Returns the outcome, `None` if no trial.
    pub fn grace_expired<M: Medium>(
        &self,
        f: &mut Nor<M>,
        link_stayed_up: bool,
    ) -> Result<Option<Outcome>, FlashError> {
        let s = self.state(f)?;
        let Phase::Trial(t) = s.phase else { return Ok(None) };
        let outcome = match (t.policy.confirm, link_stayed_up) {
            (Confirm::ByLink, true) => Outcome::Confirmed,
            (Confirm::ByLink, false) => Outcome::RolledBack(Reason::NoLink),
            (Confirm::ByApp, _) => Outcome::RolledBack(Reason::NotConfirmed),
        };
        match outcome {
            Outcome::Confirmed => self.confirm(f)?,
            Outcome::RolledBack(r) => self.rollback(f, r)?,
            _ => false,
        };
        Ok(Some(outcome))
    }
}

/// A download in progress: receives the layer's bytes in order and writes them to the inactive
/// slot. Lives in RAM; the journal keeps what survives a reset.
///
/// Pages and program units are those of the flash the download was offered on
/// ([`Nor::geometry`]); writing it to a flash of another geometry fails with
/// [`FlashError::Misaligned`].
#[derive(Clone)]
pub struct Download {
    slot: Slot,
    offer: Offer,
    /// Bytes accepted so far (hashed; programmed except for `staged`).
    written: u32,
    hasher: Sha256,
    /// One program unit being filled (the first `geometry.program_unit()` bytes are used).
    stage: [u8; MAX_PROGRAM_UNIT as usize],
    staged: usize,
    geometry: Geometry,
}

impl Download {
    /// The next byte of the layer to send: where to fetch from.
    pub fn offset(&self) -> u32 {
        self.written
    }

    /// The offer being downloaded.
    pub fn offer(&self) -> &Offer {
        &self.offer
    }

    /// The slot being written.
    pub fn slot(&self) -> Slot {
        self.slot
    }

    /// Page size and program unit of the flash being written.
    pub fn geometry(&self) -> Geometry {
        self.geometry
    }

    /// Bytes to fetch per request: one page of the flash being written (a page is what the
    /// journal records as done, so it is the unit of resumption).
    pub fn fetch_len(&self) -> u32 {
        self.geometry.page_size()
    }

    fn unit(&self) -> usize {
        self.geometry.program_unit() as usize
    }

    /// Writes the next `data` of the layer (it must start at [`Self::offset`]). Each page is
    /// erased before its first byte is programmed; each completed page is journaled.
    pub fn write<M: Medium>(&mut self, up: &Updater, f: &mut Nor<M>, data: &[u8]) -> Result<(), Error> {
        if data.len() as u64 > (self.offer.size - self.written) as u64 {
            return Err(Error::OutOfOrder);
        }
        if f.geometry() != self.geometry {
            return Err(Error::Flash(FlashError::Misaligned));
        }
        self.hasher.update(data);
        let base = up.partition(self.slot).offset;
        let (unit, page) = (self.unit(), self.geometry.page_size());
        let mut rest = data;
        // Finish a partly filled program unit first.
        if self.staged > 0 {
            let n = rest.len().min(unit - self.staged);
            self.stage[self.staged..self.staged + n].copy_from_slice(&rest[..n]);
            self.staged += n;
            rest = &rest[n..];
            self.written += n as u32;
            if self.staged == unit {
                let at = self.written - unit as u32;
                let stage = self.stage;
                self.program(up, f, base, at, &stage[..unit])?;
                self.staged = 0;
            }
        }
        // Whole units straight from `data`, at most up to each page end per program operation.
        while rest.len() >= unit {
            let to_page_end = (page - self.written % page) as usize;
            let n = (rest.len() / unit * unit).min(to_page_end);
            let at = self.written;
            self.written += n as u32;
            self.program(up, f, base, at, &rest[..n])?;
            rest = &rest[n..];
        }
        if !rest.is_empty() {
            self.stage = [ERASED; MAX_PROGRAM_UNIT as usize];
            self.stage[..rest.len()].copy_from_slice(rest);
            self.staged = rest.len();
            self.written += rest.len() as u32;
        }
        Ok(())
    }

    /// Programs `bytes` (whole units, within one page) at layer offset `at`, erasing the page
    /// first if `at` starts it, and journals the page when `bytes` completes it.
    fn program<M: Medium>(&self, up: &Updater, f: &mut Nor<M>, base: u32, at: u32, bytes: &[u8]) -> Result<(), Error> {
        if self.geometry.is_page_aligned(at) {
            f.erase_page(base + at)?;
        }
        f.program(base + at, bytes)?;
        let end = at + bytes.len() as u32;
        if self.geometry.is_page_aligned(end) {
            self.journal_progress(up, f, end)?;
        }
        Ok(())
    }

    fn journal_progress<M: Medium>(&self, up: &Updater, f: &mut Nor<M>, done: u32) -> Result<(), Error> {
        let mut s = up.state(f)?;
        match &mut s.phase {
            Phase::Downloading(d) if d.seq == self.offer.seq => d.done = done.min(d.size),
            // The journal moved on (cancelled, or another offer): this download is stale.
            _ => return Err(Error::Update(Reason::Cancelled)),
        }
        up.save(f, &s)?;
        Ok(())
    }

    /// Completes the install once every byte arrived: [`Self::verify`], then [`Self::commit`].
    pub fn finish<M: Medium>(mut self, up: &Updater, f: &mut Nor<M>) -> Result<(), Error> {
        self.verify(up, f)?;
        self.commit(up, f)
    }

    /// Flushes the last unit and checks the layer digest and the image. A failure is recorded
    /// as the last outcome (the running app stays). Nothing is committed: until
    /// [`Self::commit`], a reset leaves the device on its current app, and the download resumes
    /// from its last journaled page.
    pub fn verify<M: Medium>(&mut self, up: &Updater, f: &mut Nor<M>) -> Result<(), Error> {
        if self.written != self.offer.size {
            return Err(Error::OutOfOrder);
        }
        if f.geometry() != self.geometry {
            return Err(Error::Flash(FlashError::Misaligned));
        }
        let base = up.partition(self.slot).offset;
        if self.staged > 0 {
            let at = self.written - self.staged as u32;
            let stage = self.stage;
            self.staged = 0;
            self.program(up, f, base, at, &stage[..self.unit()])?;
        }
        let digest: [u8; 32] = self.hasher.clone().finalize().into();
        let verdict = if digest != self.offer.digest {
            Err(Reason::DigestMismatch)
        } else {
            up.check_slot(f, self.slot).map(|_| ())
        };
        if let Err(r) = verdict {
            let mut s = up.state(f)?;
            if matches!(s.phase, Phase::Downloading(d) if d.seq == self.offer.seq) {
                s.phase = Phase::Idle;
                s.last = Some((self.offer.seq, Outcome::Failed(r)));
                up.save(f, &s)?;
            }
            return Err(Error::Update(r));
        }
        Ok(())
    }

    /// Commits a verified install (one journal record): the next [`Updater::boot`] runs it on
    /// trial.
    pub fn commit<M: Medium>(self, up: &Updater, f: &mut Nor<M>) -> Result<(), Error> {
        if self.written != self.offer.size || self.staged != 0 {
            return Err(Error::OutOfOrder);
        }
        let mut s = up.state(f)?;
        if !matches!(s.phase, Phase::Downloading(d) if d.seq == self.offer.seq) {
            return Err(Error::Update(Reason::Cancelled));
        }
        s.phase = Phase::Trial(Trial { seq: self.offer.seq, boots: 0, crashes: 0, policy: self.offer.policy });
        up.save(f, &s)?;
        Ok(())
    }
}
