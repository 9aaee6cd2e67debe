//! Updates on a simulated device: the **shared device agent** (`keel_update::agent`, the same
//! code the visor runs) over an in-RAM flash with a compact layout, wired to the cloud link the
//! way the visor's `update.rs` and `net.rs` wire it:
//!
//! | Link event | Agent call | Sent afterwards |
//! |---|---|---|
//! | online (`Welcome`) | [`Agent::on_connect`] | `FetchLayer` (if [`Next::Fetch`]), `UpdateStatus` |
//! | `UpdateOffer` | [`Agent::on_offer`] | `FetchLayer` (if [`Next::Fetch`]), `UpdateStatus` |
//! | `LayerData` (component 0) | [`Agent::on_data`] | `FetchLayer` (if [`Next::Fetch`]), `UpdateStatus` |
//! | `UpdateCancel` | [`Agent::on_cancel`] | `UpdateStatus` |
//! | `LayerError` | [`Agent::on_layer_error`] | `UpdateStatus` (`error`) |
//!
//! On [`Next::Installed`] the device "restarts into the trial" ([`Updater::boot`], reported as
//! `trial`), and the simulated app works: it confirms ([`Updater::confirm`], reported as
//! `confirmed`). A bundle with a politeness time ([`Next::Ready`], reported as `installing`) is
//! applied by the simulated app at once ([`Agent::apply`]). Nothing runs; only the update
//! bookkeeping and the flash contents are real.

use keel_flash::layout::Partition;
use keel_flash::sim::SimFlash;
use keel_flash::{Nor, PAGE_SIZE};
use keel_image::{Target, HEADER_SIZE};
use keel_link::msg::{Up, UpdateState};
use keel_update::agent::{Agent, Next, Status};
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

/// The updater of a simulated device: the compact layout above and the visor's execution region
/// and ABI (as `keel_vdev::flash::updater` has for a virtual device).
pub fn updater() -> Updater {
    Updater::new(
        JOURNAL,
        APP_A,
        APP_B,
        Target {
            exec_base: 0x0020_0000,
            exec_size: 0x0020_0000,
            slot_capacity: SLOT_SIZE - HEADER_SIZE as u32,
            abi: (keel_abi::ABI_MAJOR, keel_abi::ABI_MINOR),
        },
    )
}

/// This build's version as bundles state their minimum (`keel_bundle::visor_version`); the
/// workspace version, the same as the visor's.
fn visor_version() -> u32 {
    keel_bundle::parse_visor_version(env!("CARGO_PKG_VERSION")).unwrap_or(0)
}

/// What the simulated device reports and did, for tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpdateStats {
    /// Sequence of the confirmed install (0: factory).
    pub installed: u64,
    /// Current state (as last reported to the server).
    pub state: UpdateState,
    /// The bundle the state is about.
    pub sequence: u64,
    /// Reason of the last refusal, rollback or error (`keel_update::Reason::as_str`).
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

/// A message for the link to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Out {
    Status(Status),
    Fetch { sequence: u64, offset: u32, len: u32 },
}

impl Out {
    /// The message, mapped by the agent exactly as the visor maps it.
    pub(crate) fn as_up(&self) -> Up<'static> {
        match *self {
            Out::Status(s) => s.message(),
            Out::Fetch { sequence, offset, len } => Up::FetchLayer { sequence, component: 0, offset, len },
        }
    }
}

/// The update side of a simulated device: its flash, the updater over it and the agent.
pub(crate) struct Device {
    keys: Vec<[u8; 32]>,
    up: Updater,
    flash: Nor<SimFlash>,
    agent: Agent,
    pub(crate) stats: UpdateStats,
    /// Test hook: hold fetches from this layer offset on.
    pause_at: Option<u64>,
    /// A fetch held by `pause_at`, sent once released.
    held: Option<(u64, u32, u32)>,
    /// Session number, for [`UpdateStats::fetches`].
    session: u32,
}

impl Device {
    /// A device trusting `keys` (Ed25519 public keys) with erased flash, or, if `installed` is
    /// not 0, with bundle `installed` confirmed.
    pub(crate) fn new(keys: Vec<[u8; 32]>, installed: u64) -> Device {
        let mut d = Device {
            keys,
            up: updater(),
            flash: Nor::new(SimFlash::new(FLASH_SIZE)),
            agent: Agent::new(),
            stats: UpdateStats::default(),
            pause_at: None,
            held: None,
            session: 0,
        };
        if installed > 0 {
            d.preinstall(installed).expect("install on the in-RAM flash");
        }
        d.refresh(d.status());
        d
    }

    /// Puts the journal where a device that installed and confirmed bundle `seq` is, through the
    /// updater's own steps (download, commit, trial boot, confirm) with a tiny valid image.
    fn preinstall(&mut self, seq: u64) -> Result<(), keel_update::Error> {
        let image = [0u8; 16];
        let h = keel_image::build_header(&image, 0x0020_0000, 0, "sim", "preinstalled", (keel_abi::ABI_MAJOR, 0));
        let mut layer = h.to_bytes().to_vec();
        layer.extend_from_slice(&image);
        let offer = Offer {
            seq,
            digest: Sha256::digest(&layer).into(),
            size: layer.len() as u32,
            policy: TrialPolicy::default(),
        };
        let (up, f) = (&self.up, &mut self.flash);
        let mut dl = up.offer(f, &offer)?;
        dl.write(up, f, &layer)?;
        dl.finish(up, f)?;
        up.boot(f)?;
        up.confirm(f)?;
        Ok(())
    }

    fn status(&self) -> Status {
        self.agent.status(&self.up, &self.flash)
    }

    /// Publishes `s` in the stats.
    fn refresh(&mut self, s: Status) {
        self.stats.installed = s.installed;
        self.stats.state = UpdateState::from_u8(s.state as u8).unwrap_or(UpdateState::Idle);
        self.stats.sequence = s.sequence;
        self.stats.reason = s.reason.map_or("", |r| r.as_str()).into();
    }

    /// The status report to send (and to show in the stats).
    fn report(&mut self) -> Out {
        let s = self.status();
        self.refresh(s);
        Out::Status(s)
    }

    pub(crate) fn pause_at(&mut self, bytes: Option<u64>) {
        self.pause_at = bytes;
        self.stats.paused = false;
    }

    /// A fetch to send, unless held by the pause hook.
    fn fetch(&mut self, sequence: u64, offset: u32, len: u32) -> Option<Out> {
        if self.pause_at.is_some_and(|p| offset as u64 >= p) {
            self.held = Some((sequence, offset, len));
            self.stats.paused = true;
            return None;
        }
        self.held = None;
        self.stats.fetches.push((self.session, 0, offset, len));
        Some(Out::Fetch { sequence, offset, len })
    }

    /// The fetch held by the pause hook, once the hold is lifted.
    pub(crate) fn release(&mut self) -> Option<Out> {
        let (sequence, offset, len) = self.held?;
        self.fetch(sequence, offset, len)
    }

    /// What to send after an agent call that returned `next` (the visor's order: the fetch,
    /// then the status report).
    fn after(&mut self, mut next: Next) -> Vec<Out> {
        let mut out = Vec::new();
        loop {
            match next {
                Next::Fetch { sequence, offset, len } => out.extend(self.fetch(sequence, offset, len)),
                Next::Ready { .. } => {
                    // Verified, waiting for the app (reported as installing): the simulated app
                    // applies it at once.
                    out.push(self.report());
                    next = self.agent.apply(&self.up, &mut self.flash);
                    continue;
                }
                Next::Installed => {
                    // The app restarts into its trial: the same decision as at a boot.
                    let plan = self.up.boot(&mut self.flash).expect("journal on the in-RAM flash");
                    out.push(self.report());
                    // The simulated app works and confirms.
                    if plan.trial {
                        self.up.confirm(&mut self.flash).expect("journal on the in-RAM flash");
                    }
                }
                Next::None => {}
            }
            break;
        }
        out.push(self.report());
        out
    }

    /// A new connection is up (session number `session`): requests of the old one are lost.
    pub(crate) fn on_online(&mut self, session: u32) -> Vec<Out> {
        self.session = session;
        self.held = None;
        let next = self.agent.on_connect();
        self.after(next)
    }

    /// The server offers a bundle (its envelope without payloads).
    pub(crate) fn on_offer(&mut self, envelope: &[u8]) -> Vec<Out> {
        self.stats.offers += 1;
        let next = self.agent.on_offer(&self.up, &mut self.flash, envelope, &self.keys, visor_version());
        self.after(next)
    }

    /// Bytes of the app layer (component 0) arrived.
    pub(crate) fn on_data(&mut self, sequence: u64, offset: u32, data: &[u8]) -> Vec<Out> {
        self.stats.fetched_bytes += data.len() as u64;
        let next = self.agent.on_data(&self.up, &mut self.flash, sequence, offset, data);
        self.after(next)
    }

    /// The server withdrew the bundle.
    pub(crate) fn on_cancel(&mut self, sequence: u64) -> Vec<Out> {
        self.agent.on_cancel(&self.up, &mut self.flash, sequence);
        self.after(Next::None)
    }

    pub(crate) fn on_layer_error(&mut self, sequence: u64) -> Vec<Out> {
        let next = self.agent.on_layer_error(sequence);
        self.after(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_bundle::{build_bundle, split_bundle, BundleSpec, LayerSpec, Policies, SigningKey};

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[1; 32])
    }

    /// (envelope, app layer) of a bundle of sequence `seq` with an image of `size` bytes.
    fn bundle(seq: u64, size: usize) -> (Vec<u8>, Vec<u8>) {
        bundle_with(seq, size, Policies::default())
    }

    fn bundle_with(seq: u64, size: usize, policies: Policies<'_>) -> (Vec<u8>, Vec<u8>) {
        let image: Vec<u8> = (0..size).map(|i| (i * 7) as u8).collect();
        let h = keel_image::build_header(&image, 0x0020_0000, 0x2800_0000, "hello", "2.0.0", (1, 0));
        let mut slot = h.to_bytes().to_vec();
        slot.extend(image);
        let layers = [LayerSpec { id: "app", target: keel_bundle::Target::AppSlot, bytes: &slot }];
        let spec = BundleSpec { sequence: seq, layers: &layers, policies };
        let b = build_bundle(&spec, &key(), |_| Some(SLOT_SIZE)).unwrap();
        let split = split_bundle(&b).unwrap();
        (split.envelope, split.layers[0].bytes.clone())
    }

    fn device(installed: u64) -> Device {
        Device::new(vec![key().verifying_key().to_bytes()], installed)
    }

    /// Answers fetches from `layer` (in link-sized chunks) until the device asks for nothing.
    fn serve(d: &mut Device, mut out: Vec<Out>, layer: &[u8]) -> Vec<Out> {
        let mut all = out.clone();
        while let Some(&Out::Fetch { sequence, offset, len }) = out.iter().find(|o| matches!(o, Out::Fetch { .. })) {
            out.clear();
            let range = &layer[offset as usize..(offset + len) as usize];
            for (i, chunk) in range.chunks(keel_link::msg::LAYER_CHUNK).enumerate() {
                let at = offset + (i * keel_link::msg::LAYER_CHUNK) as u32;
                out.extend(d.on_data(sequence, at, chunk));
            }
            all.extend(out.iter().copied());
        }
        all
    }

    fn states(out: &[Out]) -> Vec<UpdateState> {
        let mut v: Vec<UpdateState> = out
            .iter()
            .filter_map(|o| match o {
                Out::Status(s) => Some(s.state),
                Out::Fetch { .. } => None,
            })
            .collect();
        v.dedup();
        v
    }

    #[test]
    fn an_offer_is_downloaded_installed_on_trial_and_confirmed() {
        let mut d = device(0);
        assert_eq!(states(&d.on_online(1)), [UpdateState::Idle]);
        let (env, layer) = bundle(4, 30_000);
        let out = d.on_offer(&env);
        assert_eq!(out[0], Out::Fetch { sequence: 4, offset: 0, len: PAGE_SIZE });
        let out = serve(&mut d, out, &layer);
        assert_eq!(
            states(&out),
            [UpdateState::Downloading, UpdateState::Trial, UpdateState::Confirmed],
            "reported in order"
        );
        assert_eq!((d.stats.installed, d.stats.sequence, d.stats.fetched_bytes), (4, 4, layer.len() as u64));
        assert_eq!(d.up.check_slot(&d.flash, keel_update::Slot::B).unwrap().version_str(), "2.0.0");
    }

    #[test]
    fn a_polite_update_is_applied_by_the_simulated_app_at_once() {
        let mut d = device(0);
        d.on_online(1);
        let (env, layer) = bundle_with(3, 10_000, Policies { max_politeness_time_s: 600, ..Policies::default() });
        let out = d.on_offer(&env);
        let out = serve(&mut d, out, &layer);
        assert_eq!(
            states(&out),
            [UpdateState::Downloading, UpdateState::Installing, UpdateState::Trial, UpdateState::Confirmed]
        );
        assert_eq!(d.stats.installed, 3);
    }

    #[test]
    fn a_preinstalled_sequence_refuses_older_offers() {
        let mut d = device(10);
        assert_eq!((d.stats.installed, d.stats.state), (10, UpdateState::Confirmed));
        let (env, _) = bundle(5, 1000);
        assert_eq!(states(&d.on_offer(&env)), [UpdateState::Refused]);
        assert_eq!(
            (d.stats.installed, d.stats.sequence, d.stats.reason.as_str()),
            (10, 5, keel_update::Reason::SequenceNotNewer.as_str())
        );
    }

    #[test]
    fn a_held_download_resumes_from_its_offset_on_a_new_connection() {
        let mut d = device(0);
        d.on_online(1);
        let (env, layer) = bundle(2, 40_000);
        d.pause_at(Some(2 * PAGE_SIZE as u64));
        let out = d.on_offer(&env);
        serve(&mut d, out, &layer);
        assert!(d.stats.paused);
        assert_eq!(d.stats.fetched_bytes, 2 * PAGE_SIZE as u64);
        // Reconnect, still held; then released.
        let out = d.on_online(2);
        assert_eq!(states(&out), [UpdateState::Downloading]);
        assert!(!out.iter().any(|o| matches!(o, Out::Fetch { .. })));
        d.pause_at(None);
        let first = d.release().expect("the held fetch");
        assert_eq!(first, Out::Fetch { sequence: 2, offset: 2 * PAGE_SIZE, len: PAGE_SIZE });
        let out = serve(&mut d, vec![first], &layer);
        assert_eq!(states(&out).last(), Some(&UpdateState::Confirmed));
        assert_eq!(d.stats.fetched_bytes, layer.len() as u64);
        assert_eq!(d.stats.fetches.iter().find(|f| f.0 == 2).map(|f| f.2), Some(2 * PAGE_SIZE));
    }
}
