//! The flash of a simulated device and what its update side looks like from outside.
//!
//! A device with updates ([`crate::SimDevice::with_updates`]) has an in-RAM [`SimFlash`] with a
//! compact layout: the update journal and two 512 KiB app slots. The device core
//! (`keel_device`) runs the visor's update agent, journal and trial rules on it; this module only
//! lays the flash out and puts a factory app on it. A device without updates gets an empty
//! flash (no memory): its core finds no journal and no app, and refuses offers.

use keel_flash::layout::Partition;
use keel_flash::sim::SimFlash;
use keel_flash::{Nor, PAGE_SIZE};
use keel_image::{Target, HEADER_SIZE};
use keel_link::msg::UpdateState;
use keel_update::{Offer, TrialPolicy, Updater};
use sha2::{Digest, Sha256};

/// Size of each app slot of a simulated device: 512 KiB.
pub const SLOT_SIZE: u32 = 64 * PAGE_SIZE;
/// The update journal: two pages at the start of the simulated flash.
pub const JOURNAL: Partition = Partition { name: "journal", offset: 0, size: 2 * PAGE_SIZE };
/// App slot A.
pub const APP_A: Partition = Partition { name: "app-a", offset: JOURNAL.offset + JOURNAL.size, size: SLOT_SIZE };
/// App slot B.
pub const APP_B: Partition = Partition { name: "app-b", offset: APP_A.offset + APP_A.size, size: SLOT_SIZE };
/// Size of a simulated device's flash (journal and both slots).
pub const FLASH_SIZE: u32 = APP_B.offset + APP_B.size;

/// Name of the factory app every simulated device with updates starts with.
pub const FACTORY_APP: &str = "sim";
/// Version of the factory app.
pub const FACTORY_VERSION: &str = "factory";

/// The execution region and ABI the visor gives apps (as `keel_vdev::flash::updater` has for a
/// virtual device).
pub const TARGET: Target = Target {
    exec_base: 0x0020_0000,
    exec_size: 0x0020_0000,
    slot_capacity: SLOT_SIZE - HEADER_SIZE as u32,
    abi: (keel_abi::ABI_MAJOR, keel_abi::ABI_MINOR),
};

/// The updater of a simulated device: the compact layout above and the visor's target.
pub fn updater() -> Updater {
    Updater::new(JOURNAL, APP_A, APP_B, TARGET)
}

/// Slot contents (header and image) of the factory app: a tiny valid image.
fn factory_slot() -> Vec<u8> {
    let image = [0u8; 16];
    let h =
        keel_image::build_header(&image, TARGET.exec_base, 0, FACTORY_APP, FACTORY_VERSION, (keel_abi::ABI_MAJOR, 0));
    let mut slot = h.to_bytes().to_vec();
    slot.extend_from_slice(&image);
    slot
}

/// The flash of a device without updates: nothing (the core reads no journal and finds no app).
pub(crate) fn no_flash() -> Nor<SimFlash> {
    Nor::new(SimFlash::new(0))
}

/// The flash of a device with updates. `installed == 0`: a factory device (the factory app in
/// slot A, an erased journal). Otherwise the journal is where a device that installed and
/// confirmed bundle `installed` is, reached through the updater's own steps (offer, download,
/// commit, trial boot, confirm) with the factory app as the bundle's image.
pub(crate) fn factory_flash(installed: u64) -> Result<Nor<SimFlash>, keel_update::Error> {
    let mut f = Nor::new(SimFlash::new(FLASH_SIZE));
    let slot = factory_slot();
    if installed == 0 {
        let mut padded = slot;
        padded.resize(padded.len().div_ceil(PAGE_SIZE as usize) * PAGE_SIZE as usize, 0xFF);
        f.erase_range(APP_A.offset, APP_A.offset + PAGE_SIZE).map_err(keel_update::Error::Flash)?;
        f.program(APP_A.offset, &padded).map_err(keel_update::Error::Flash)?;
        return Ok(f);
    }
    let up = updater();
    let offer = Offer {
        seq: installed,
        digest: Sha256::digest(&slot).into(),
        size: slot.len() as u32,
        policy: TrialPolicy::default(),
    };
    let mut dl = up.offer(&mut f, &offer)?;
    dl.write(&up, &mut f, &slot)?;
    dl.finish(&up, &mut f)?;
    up.boot(&mut f).map_err(keel_update::Error::Flash)?;
    up.confirm(&mut f).map_err(keel_update::Error::Flash)?;
    Ok(f)
}

/// The update side of a simulated device as its core reports it (`keel_device::Device::
/// update_status`), sampled after every input, plus what the shell saw of the layer data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpdateStats {
    /// Sequence of the confirmed install (0: factory).
    pub installed: u64,
    /// Current state (as the device reports it to the server).
    pub state: UpdateState,
    /// The bundle the state is about.
    pub sequence: u64,
    /// Reason of the last refusal, rollback or error (`keel_update::Reason::as_str`).
    pub reason: String,
    /// Bytes of the current download stored so far.
    pub progress: u32,
    /// Size of the current download's layer.
    pub total: u32,
    /// Bundles offered that the device took up: each new bundle sequence its status turned to
    /// (a bundle offered again, e.g. on a new connection, counts once).
    pub offers: u32,
    /// Layer bytes the device accepted (from its progress: a download that starts over counts
    /// its bytes again).
    pub fetched_bytes: u64,
    /// Runs of layer data the device accepted: (session number, first offset, bytes). A run
    /// ends with its connection, so a download resumed after a reconnect starts a new run at
    /// the offset the device asked for.
    pub data_runs: Vec<(u32, u32, u32)>,
    /// True while layer data is held by [`crate::SimDevice::pause_download_at`].
    pub paused: bool,
}

impl Default for UpdateStats {
    fn default() -> Self {
        UpdateStats {
            installed: 0,
            state: UpdateState::Idle,
            sequence: 0,
            reason: String::new(),
            progress: 0,
            total: 0,
            offers: 0,
            fetched_bytes: 0,
            data_runs: Vec::new(),
            paused: false,
        }
    }
}

impl UpdateStats {
    /// Takes a new status sample from the core (`session`: the current session number).
    pub(crate) fn sample(&mut self, s: &keel_update::agent::Status, session: u32) {
        let was_downloading = self.state == UpdateState::Downloading;
        let (old_seq, old_progress, old_total) = (self.sequence, self.progress, self.total);
        if s.sequence != 0 && s.sequence != old_seq {
            self.offers += 1;
        }
        let mut accepted = |from: u32, to: u32| {
            if to <= from {
                return;
            }
            self.fetched_bytes += u64::from(to - from);
            match self.data_runs.last_mut() {
                Some(r) if r.0 == session && r.1 + r.2 == from => r.2 += to - from,
                _ => self.data_runs.push((session, from, to - from)),
            }
        };
        if s.state == UpdateState::Downloading {
            let from = if was_downloading && s.sequence == old_seq { old_progress } else { 0 };
            accepted(from.min(s.progress), s.progress);
        } else if was_downloading
            && s.sequence == old_seq
            && matches!(s.state, UpdateState::Installing | UpdateState::Trial | UpdateState::Confirmed)
        {
            // The last bytes completed the download (its progress is no longer reported).
            accepted(old_progress, old_total);
        }
        self.installed = s.installed;
        self.state = s.state;
        self.sequence = s.sequence;
        self.reason = s.reason.map_or("", |r| r.as_str()).into();
        self.progress = s.progress;
        self.total = s.total;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_update::agent::Status;
    use keel_update::{Outcome, Phase, Slot};

    #[test]
    fn a_factory_device_has_the_factory_app_in_slot_a_and_an_erased_journal() {
        let f = factory_flash(0).unwrap();
        let up = updater();
        let h = up.check_slot(&f, Slot::A).unwrap();
        assert_eq!((h.name_str(), h.version_str()), (FACTORY_APP, FACTORY_VERSION));
        assert!(up.check_slot(&f, Slot::B).is_err(), "nothing in slot B");
        let s = up.state(&f).unwrap();
        assert_eq!((s.installed_seq, s.active, s.last), (0, Slot::A, None));
    }

    #[test]
    fn a_preinstalled_device_went_through_the_updaters_steps() {
        let f = factory_flash(9).unwrap();
        let up = updater();
        let s = up.state(&f).unwrap();
        assert_eq!(
            (s.installed_seq, s.active, s.phase, s.last),
            (9, Slot::B, Phase::Idle, Some((9, Outcome::Confirmed)))
        );
        assert_eq!(up.check_slot(&f, Slot::B).unwrap().version_str(), FACTORY_VERSION);
    }

    #[test]
    fn a_device_without_updates_holds_no_flash() {
        assert!(no_flash().medium().bytes().is_empty());
    }

    fn status(sequence: u64, state: UpdateState, progress: u32) -> Status {
        Status { installed: 0, sequence, state, progress, total: 20_000, reason: None }
    }

    #[test]
    fn data_runs_follow_the_progress_across_sessions_and_a_download_that_starts_over() {
        let mut u = UpdateStats::default();
        u.sample(&status(0, UpdateState::Idle, 0), 1);
        u.sample(&status(3, UpdateState::Downloading, 0), 1);
        u.sample(&status(3, UpdateState::Downloading, 8192), 1);
        // The connection drops; the next session resumes where the download was.
        u.sample(&status(3, UpdateState::Downloading, 16_384), 2);
        u.sample(&status(3, UpdateState::Trial, 0), 2);
        assert_eq!(u.data_runs, [(1, 0, 8192), (2, 8192, 20_000 - 8192)]);
        assert_eq!((u.fetched_bytes, u.offers), (20_000, 1));
        // A new bundle whose download starts over after a first page counts its page twice.
        u.sample(&status(4, UpdateState::Downloading, 8192), 2);
        u.sample(&status(4, UpdateState::Downloading, 0), 3);
        u.sample(&status(4, UpdateState::Downloading, 8192), 3);
        assert_eq!((u.fetched_bytes, u.offers), (20_000 + 2 * 8192, 2));
        assert_eq!(u.data_runs[2..], [(2, 0, 8192), (3, 0, 8192)]);
    }
}
