//! Power-loss sweep of the device core over a matrix of flash geometries.
//!
//! A [`keel_device::Device`] goes through a whole update story with 256 KiB images, every step
//! through the core as a shell drives it: updates arrive from the in-memory server end (the real
//! Noise IK session) as `UpdateOffer` and `LayerData` frames through `receive`, the device's own
//! `UpdateStatus` and `FetchLayer` frames from `poll_transmit` drive the server, and the
//! simulated app starts on [`AppAction::Launch`] and reports `app_launched`, `app_crashed`,
//! `app_confirm` and `app_apply`. The server follows the gateway's rule (`reconcile` in
//! `host/keel-server/src/gateway.rs`): at every status report it offers the story's next
//! release unless the device reports it installed or already handled.
//!
//! The story: factory v1; v2 (256 KiB) is downloaded, committed, and confirmed by the app in its
//! trial; v3 crashes at every start: crash loop, rollback to v2; v4 is polite: the device tells
//! the app it is ready, the app applies it, trial, confirm. After each outcome (a confirmation,
//! or the previous app running again after the rollback) the device is switched off and on once
//! more, so the uninterrupted run boots four times.
//!
//! For every geometry of [`GEOMETRIES`] the power is cut at every single flash operation of the
//! story (the download's erases and programs and its journal records, the commit, the trial
//! boot, confirm, each crash, the rollback, the polite apply), once before it and once in the
//! middle of it (a torn program unit or a half-erased page). A cut is the `SimFlash` losing
//! power: from then on every write and erase fails with `FlashError::Fault`. The harness sees it
//! (`medium().powered()`) after the core call that hit it, and powers the device on again: a new
//! `Device` on the same flash, RAM lost, the TCP connection gone. Then seeded random **chains**
//! cut the power several times in one story, each cut during the recovery from the one before.
//!
//! Checked at every boot: the journal's newest record decodes. At every app launch: the slot
//! the core chose holds a valid image (`Updater::check_slot`), a trial runs the version on
//! trial, a confirmed app is the one the journal says is installed, and the installed sequence
//! never goes back. A panic of the core is a failure like any other. Checked at the end: the
//! journal's state and both slots' images equal the uninterrupted run's.
//!
//! Speed: a cut run starts from the flash as it was at the last boot before the cut in the
//! uninterrupted run (RAM is empty at a boot, so powering on from there is the same as getting
//! there), and runs to the end of the story; jobs are spread over up to four threads.
//!
//! Environment: `KEEL_POWERCUT_SEED=n` replays the chains of seed `n` (printed by every run),
//! `KEEL_POWERCUT_CHAINS=n` runs `n` chains per geometry instead of the default,
//! `KEEL_POWERCUT_REPORT=path` writes `{"powercut_points_tested": N, "powercut_failures": F}`
//! for `cargo xtask bench`.

mod common;

use core::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use common::{image, layout_for, signing_key, updater_for, Deployment, Release, Report, Server, World};
use keel_bundle::{build_bundle, split_bundle, BundleSpec, LayerSpec, Policies};
use keel_device::{events, AppAction};
use keel_flash::layout::{self, Partition};
use keel_flash::sim::{CutMode, SimFlash};
use keel_flash::{Geometry, Medium, Nor, RecordLog};
use keel_image::{Header, HEADER_SIZE};
use keel_link::msg::UpdateState as Wire;
use keel_update::{Outcome, Phase, Reason, Slot, UpdateState, Updater, JOURNAL_MAGIC, RECORD_SIZE};

/// Slot bytes (header and image) of the story's first update: 256 KiB. The others are a little
/// smaller and end in the middle of a program unit.
const IMAGE_LEN: usize = 256 * 1024;
/// Random chains per geometry (`KEEL_POWERCUT_CHAINS` to change).
const DEFAULT_CHAINS: u64 = 40;
/// Cuts per chain: 2 to this many.
const MAX_CHAIN_CUTS: u64 = 5;
/// A chained cut comes within this many flash operations after the reboot.
const RECOVERY_WINDOW: u64 = 48;
/// Steps of one power cycle (poll, exchange, time jump) before the story counts as stuck.
const MAX_STEPS: u32 = 500;
/// Power cycles of one story (planned and cut) before it counts as a reboot loop.
const MAX_BOOTS: u32 = 40;

/// Flash geometries of real MCUs: (name, page size, program unit).
const GEOMETRIES: [(&str, u32, u32); 4] = [
    // The reference board (STM32U5: 8 KiB pages, 128-bit quad-word programming).
    ("8 KiB / 16 B (reference, STM32U5)", 8192, 16),
    // STM32WB55: 4 KiB pages, 64-bit double-word programming.
    ("4 KiB / 8 B (STM32WB)", 4096, 8),
    // STM32L4/G4-sized 2 KiB pages with the reference 16-byte unit: the most page switches.
    ("2 KiB / 16 B", 2048, 16),
    // STM32H7: 128 KiB sectors, 256-bit flash words.
    ("128 KiB / 32 B (STM32H7)", 128 * 1024, 32),
];

fn version_of(seq: u64) -> &'static str {
    match seq {
        0 => "1.0.0",
        2 => "2.0.0",
        3 => "3.0.0",
        4 => "4.0.0",
        s => panic!("no version has sequence {s}"),
    }
}

/// The deployment's choice for a device that reported `r` (index in the story's releases: v2,
/// v3, v4): v2 until it is installed, then v3 until the device rolled it back, then v4.
fn story_target(r: &Report) -> Option<usize> {
    let v3_over = (r.sequence == 3 && r.state == Wire::RolledBack.as_u8()) || r.sequence >= 4;
    match r.installed {
        0 => Some(0),
        2 if v3_over => Some(2),
        2 => Some(1),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// The story.

struct Story {
    name: &'static str,
    journal: Partition,
    /// The flash the story writes: the journal and, in each slot, the pages of the largest
    /// image. Everything else stays erased.
    written: [core::ops::Range<usize>; 3],
    up: Updater,
    v1: Vec<u8>,
    geometry: Geometry,
    deployment: Deployment,
}

/// How one power cycle ended.
#[derive(Debug, PartialEq, Eq)]
enum Cycle {
    /// The story is over: v4 runs confirmed and the server has nothing more to offer.
    Done,
    /// A planned power cycle after an outcome.
    Reboot,
    /// The power went.
    Cut,
}

/// A slot's bytes and what `Updater::check_slot` said about them.
type SlotCheck = (Vec<u8>, Result<Header, Reason>);

/// What one story saw.
#[derive(Default)]
struct Trace {
    /// The version of every app launch.
    launches: Vec<&'static str>,
    /// The highest installed sequence seen.
    installed_seq: u64,
    /// If set, the flash at the start of every boot, with the operations done until then.
    checkpoints: Option<Vec<(u64, SimFlash)>>,
    /// The last image check of each slot, with the slot's written pages when it was made (the
    /// check reads nothing else that could change).
    checked: [Option<SlotCheck>; 2],
}

impl Story {
    fn new(name: &'static str, geometry: Geometry) -> Story {
        let [journal, a, b] = layout_for(geometry);
        let up = updater_for(geometry);
        let image_pages = geometry.page_ceil(IMAGE_LEN as u32).unwrap();
        let range = |p: Partition, len: u32| p.offset as usize..(p.offset + len) as usize;
        let written = [range(journal, journal.size), range(a, image_pages), range(b, image_pages)];
        let key = signing_key();
        let release = |seq: u64, len: usize, politeness: u32| {
            let slot_bytes = image(version_of(seq), len - HEADER_SIZE);
            let policies = Policies {
                // The app confirms its trial itself (grace time 0: confirmation by the app).
                connectivity_grace_time_s: 0,
                max_trial_crashes: 3,
                max_politeness_time_s: politeness,
                ..Policies::default()
            };
            let layers = [LayerSpec { id: "app", target: keel_bundle::Target::AppSlot, bytes: &slot_bytes }];
            let spec = BundleSpec { sequence: seq, layers: &layers, policies };
            let signed = build_bundle(&spec, &key, |_| Some(a.size)).expect("bundle builds");
            let mut split = split_bundle(&signed).expect("bundle splits");
            let layer = split.layers.remove(0).bytes;
            assert_eq!(layer, slot_bytes);
            // v3 is meant to be rolled back; v2 and v4 are offered again if several cuts in one
            // trial rolled them back (too many resets), as an operator would redeploy them.
            Release { seq, envelope: split.envelope, layer, retry_after_rollback: seq != 3 }
        };
        Story {
            name,
            journal,
            written,
            up,
            v1: image(version_of(0), 40_000),
            geometry,
            deployment: Deployment {
                releases: vec![
                    release(2, IMAGE_LEN, 0),
                    release(3, IMAGE_LEN - 4099, 0),
                    release(4, IMAGE_LEN - 777, 30),
                ],
                target: story_target,
            },
        }
    }

    /// A factory-fresh flash: v1 in slot A, everything else erased.
    fn factory(&self) -> Nor<SimFlash> {
        let g = self.geometry;
        let [_, a, b] = layout_for(g);
        let mut f = Nor::new(SimFlash::with_geometry(b.end(), g));
        let mut v1 = self.v1.clone();
        v1.resize(g.unit_ceil(v1.len() as u32).unwrap() as usize, 0xFF);
        f.erase_range(a.offset, a.offset + g.page_ceil(v1.len() as u32).unwrap()).unwrap();
        f.program(a.offset, &v1).unwrap();
        f
    }

    /// The story's server (its own key; it serves and offers the story's releases).
    fn server(&self) -> Server {
        let mut s = Server::new();
        s.deployment = Some(self.deployment.clone());
        s
    }

    /// The journal's state, read from the flash.
    fn state(&self, w: &World) -> UpdateState {
        self.up.state(w.dev.flash()).expect("journal readable")
    }

    /// At a boot: the journal's newest record decodes, the installed sequence did not go back.
    fn check_boot(&self, w: &World, trace: &mut Trace) {
        let raw = RecordLog::<RECORD_SIZE>::new(self.journal.offset, JOURNAL_MAGIC);
        if let Some((_, p)) = raw.latest(w.dev.flash()).expect("journal readable") {
            assert!(UpdateState::decode(&p[..UpdateState::LEN]).is_some(), "the journal's record does not decode");
        }
        self.check_installed(w, trace);
    }

    fn check_installed(&self, w: &World, trace: &mut Trace) -> UpdateState {
        let s = self.state(w);
        assert!(s.installed_seq >= trace.installed_seq, "installed sequence went back: {s:?}");
        trace.installed_seq = s.installed_seq;
        s
    }

    /// `Updater::check_slot`, not repeated while the slot's bytes are unchanged (comparing them
    /// is much cheaper than hashing them).
    fn check_slot(&self, w: &World, slot: Slot, trace: &mut Trace) -> Result<Header, Reason> {
        let bytes = &w.dev.flash().medium().bytes()[self.written[1 + slot.index()].clone()];
        match &mut trace.checked[slot.index()] {
            Some((seen, result)) if seen.as_slice() == bytes => *result,
            cache => {
                let result = self.up.check_slot(w.dev.flash(), slot);
                *cache = Some((bytes.to_vec(), result));
                result
            }
        }
    }

    /// At a launch: the slot holds a valid image of the expected version. Returns its header.
    fn check_launch(&self, w: &World, slot: Slot, trace: &mut Trace) -> Header {
        let h = self.check_slot(w, slot, trace).unwrap_or_else(|r| {
            panic!("the core launches slot {} holding no valid image: {}", slot.as_str(), r.as_str())
        });
        let s = self.check_installed(w, trace);
        let expected = match (w.dev.on_trial(), s.phase) {
            (true, Phase::Trial(t)) => {
                assert_eq!(slot, s.active.other(), "a trial runs from the inactive slot");
                version_of(t.seq)
            }
            (true, p) => panic!("the core runs a trial in phase {p:?}"),
            (false, _) => {
                assert_eq!(slot, s.active, "a confirmed app runs from the active slot");
                version_of(s.installed_seq)
            }
        };
        assert_eq!(h.version_str(), expected, "slot {}, journal {s:?}", slot.as_str());
        trace.launches.push(expected);
        h
    }

    /// True if the server has another update for the device as it is now: the device is then
    /// switched off and on between this update's outcome and the next offer.
    fn more_to_come(&self, w: &World) -> bool {
        let s = w.dev.update_status();
        let report = Report { installed: s.installed, sequence: s.sequence, state: s.state.as_u8() };
        w.server.target_for(&report).is_some()
    }

    /// One power cycle of the device just booted in `w`: runs the story until it is over, a
    /// planned reboot, or the power goes.
    fn power_cycle(&self, w: &mut World, trace: &mut Trace) -> Cycle {
        if !w.powered() {
            return Cycle::Cut; // in the boot's own journal write
        }
        self.check_boot(w, trace);
        let mut network = false;
        // Set when a trial was rolled back: the previous app's launch is its outcome.
        let mut rolled_back = false;
        for _ in 0..MAX_STEPS {
            match w.dev.poll(w.now, &mut w.out) {
                _ if !w.powered() => return Cycle::Cut, // the politeness or grace deadline's write
                AppAction::Launch(slot) => {
                    let h = self.check_launch(w, slot, trace);
                    w.dev.app_launched(w.now, slot, h);
                    w.app = Some(h);
                    if rolled_back && self.more_to_come(w) {
                        return Cycle::Reboot;
                    }
                    if w.dev.on_trial() {
                        if h.version_str() == version_of(3) {
                            // v3 crashes at every start; the core restarts it until the policy
                            // says enough.
                            let r = keel_abi::CrashReport { version: 1, kind: 3, ..Default::default() };
                            w.dev.app_crashed(w.now, r, false, &mut w.out);
                            w.app = None;
                            if !w.powered() {
                                return Cycle::Cut;
                            }
                            rolled_back = !w.dev.on_trial();
                        } else {
                            let status = w.dev.app_confirm(w.now, &mut w.out);
                            if !w.powered() {
                                return Cycle::Cut;
                            }
                            assert_eq!(status, keel_abi::Status::Ok, "the trial app confirms");
                            if self.more_to_come(w) {
                                return Cycle::Reboot;
                            }
                        }
                    }
                    continue;
                }
                AppAction::KillForWatchdog => panic!("no app of the story arms its watchdog"),
                AppAction::None => {}
            }
            if !network {
                // The app started; the network comes up.
                network = true;
                w.dev.address_acquired(w.now, &mut w.out);
            }
            w.pump();
            if !w.powered() {
                return Cycle::Cut; // while handling an offer or layer data
            }
            if w.app.is_some() && w.dev.app_events_pending() {
                // The polite update is ready: the running (confirmed) app applies it.
                if w.dev.take_app_events() & events::UPDATE_READY != 0 {
                    assert!(!w.dev.on_trial(), "an update is ready during a trial");
                    let applied = w.dev.app_apply(w.now, &mut w.out);
                    if !w.powered() {
                        return Cycle::Cut;
                    }
                    assert!(applied, "the ready update applies");
                    w.app = None;
                }
                continue;
            }
            if self.over(w) {
                return Cycle::Done;
            }
            let next = w.dev.poll_at().unwrap_or_else(|| panic!("nothing left to do: {:?}", w.dev.update_status()));
            w.now = w.now.max(next);
        }
        panic!(
            "the story does not end: {:?}, journal {:?}, app {:?}, connection {:?}, trial {}, wants transmit {}, last report {:?}",
            w.dev.update_status(),
            self.state(w),
            w.app.map(|h| h.version_str().to_string()),
            w.dev.connection(),
            w.dev.on_trial(),
            w.dev.wants_transmit(),
            w.server.last_report()
        )
    }

    /// True when the confirmed app runs, the device is online with nothing to send, and the
    /// server has nothing to offer it.
    fn over(&self, w: &World) -> bool {
        w.app.is_some()
            && w.dev.is_online()
            && !w.dev.on_trial()
            && !w.dev.wants_transmit()
            && w.server.to_device.is_empty()
            && w.dev.update_status().state != Wire::Downloading
            && w.server.last_report().is_some_and(|r| w.server.target_for(&r).is_none())
    }

    /// True if the flash outside [`Story::written`] is erased.
    fn untouched_erased(&self, sim: &SimFlash) -> bool {
        let [j, a, b] = &self.written;
        [0..j.start, j.end..a.start, a.end..b.start, b.end..sim.bytes().len()]
            .into_iter()
            .all(|r| sim.bytes()[r].iter().all(|&x| x == keel_flash::ERASED))
    }

    /// Runs the story from a device powering on with `flash` to its end, with the power cuts of
    /// `plan` (its operation numbers are the uninterrupted run's; this flash counts `delta`
    /// more); returns the world and how many cuts fired.
    fn run(
        &self,
        mut flash: Nor<SimFlash>,
        server: Server,
        plan: &Plan,
        delta: u64,
        trace: &mut Trace,
    ) -> (World, u64) {
        let mut fired = 0;
        if let Some((at, mode, seed)) = plan.first() {
            flash.medium_mut_for_tests().cut_at(at + delta, mode, seed);
        }
        if let Some(c) = &mut trace.checkpoints {
            c.push((flash.medium().ops(), flash.medium().clone()));
        }
        let mut w = World::with_flash_and_server(flash, self.up, server);
        for _ in 0..MAX_BOOTS {
            match self.power_cycle(&mut w, trace) {
                Cycle::Done => {
                    self.last_boot(&mut w, trace);
                    return (w, fired);
                }
                Cycle::Reboot => {}
                Cycle::Cut => {
                    fired += 1;
                    assert!(fired <= plan.len(), "a power cut nobody scheduled");
                    let sim = w.dev.flash_mut_for_tests().medium_mut_for_tests();
                    sim.power_on();
                    if let Some((after, mode, seed)) = plan.chained(fired) {
                        let now = sim.ops();
                        sim.cut_at(now + after, mode, seed);
                    }
                }
            }
            if let Some(c) = &mut trace.checkpoints {
                c.push((w.dev.flash().medium().ops(), w.dev.flash().medium().clone()));
            }
            w.power_cycle();
        }
        panic!("{} boots and the story is not over", MAX_BOOTS)
    }
}

impl Story {
    /// After the story: one more power-on (without the network) boots the confirmed app.
    fn last_boot(&self, w: &mut World, trace: &mut Trace) {
        w.power_cycle();
        assert!(w.powered(), "a power cut after the story's last flash operation");
        self.check_boot(w, trace);
        match w.dev.poll(w.now, &mut w.out) {
            AppAction::Launch(slot) => {
                self.check_launch(w, slot, trace);
                assert!(!w.dev.on_trial(), "the story ends with a confirmed app");
            }
            a => panic!("the last boot does not launch the app: {a:?}"),
        }
    }
}

/// Where the power goes in one run.
enum Plan {
    /// No cut.
    None,
    /// One cut at this absolute operation.
    One(u64, CutMode),
    /// A first cut at an absolute operation, then one cut `after` operations after each reboot.
    Chain { first: u64, then: Vec<(u64, CutMode)>, mode: CutMode, seed: u64 },
}

impl Plan {
    fn first(&self) -> Option<(u64, CutMode, u64)> {
        match *self {
            Plan::None => None,
            Plan::One(at, mode) => Some((at, mode, at.wrapping_mul(7919) ^ mode as u64)),
            Plan::Chain { first, mode, seed, .. } => Some((first, mode, seed)),
        }
    }

    fn len(&self) -> u64 {
        match self {
            Plan::None => 0,
            Plan::One(..) => 1,
            Plan::Chain { then, .. } => 1 + then.len() as u64,
        }
    }

    /// The cut to schedule after the `n`th cut fired (1-based).
    fn chained(&self, n: u64) -> Option<(u64, CutMode, u64)> {
        match self {
            Plan::Chain { then, seed, .. } => {
                then.get(n as usize - 1).map(|&(after, mode)| (after, mode, seed.wrapping_add(n)))
            }
            _ => None,
        }
    }
}

/// What a finished story leaves: the journal's state and the image version in each slot.
#[derive(Debug, PartialEq, Eq)]
struct End {
    state: UpdateState,
    slots: [Option<String>; 2],
}

impl End {
    fn of(story: &Story, w: &World, trace: &mut Trace) -> End {
        let mut v = |s| story.check_slot(w, s, trace).ok().map(|h| h.version_str().to_string());
        End { slots: [v(Slot::A), v(Slot::B)], state: story.state(w) }
    }
}

/// The uninterrupted run of one geometry, with the flash at every boot.
struct Reference {
    end: End,
    total_ops: u64,
    /// (operations done, flash) at the start of each boot of the uninterrupted run.
    checkpoints: Vec<(u64, SimFlash)>,
}

impl Reference {
    fn of(story: &Story) -> Reference {
        let flash = story.factory();
        let start = flash.medium().ops();
        let mut trace = Trace { checkpoints: Some(Vec::new()), ..Trace::default() };
        let (w, fired) = story.run(flash, story.server(), &Plan::None, 0, &mut trace);
        assert_eq!(fired, 0);
        let v = |s| version_of(s);
        assert_eq!(
            trace.launches,
            [v(0), v(2), v(2), v(3), v(3), v(3), v(2), v(2), v(4), v(4)],
            "{}: launches of the uninterrupted story",
            story.name
        );
        let end = End::of(story, &w, &mut trace);
        assert_eq!(end.state.active, Slot::A, "v4 runs from slot A");
        assert_eq!(end.state.installed_seq, 4);
        assert_eq!(end.state.phase, Phase::Idle);
        assert_eq!(end.state.last, Some((4, Outcome::Confirmed)));
        assert_eq!(end.slots, [Some(v(4).to_string()), Some(v(2).to_string())]);
        let checkpoints = trace.checkpoints.unwrap_or_default();
        assert!(
            checkpoints.iter().all(|(_, sim)| story.untouched_erased(sim)),
            "{}: writes outside the story's pages",
            story.name
        );
        assert_eq!(checkpoints.len(), 3, "the uninterrupted story boots three times (and once more at the end)");
        assert_eq!(checkpoints.first().map(|c| c.0), Some(start));
        Reference { end, total_ops: w.dev.flash().medium().ops() - start, checkpoints }
    }

    /// Puts `flash`, a flash of this story that went through runs of it, where the uninterrupted
    /// run was at its last boot before operation `op`, with the power on and no cut scheduled.
    /// Only the pages the story writes are copied back (raw writes, which count as operations):
    /// returns how many more operations this flash has counted than the uninterrupted run.
    /// The rest stays erased in every run of a correct device: [`Story::untouched_erased`] checks
    /// it once per worker.
    fn restore(&self, story: &Story, flash: &mut Nor<SimFlash>, op: u64) -> u64 {
        let (at, sim) =
            self.checkpoints.iter().rev().find(|(at, _)| *at <= op).expect("the factory checkpoint is first");
        let m = flash.medium_mut_for_tests();
        if m.ops() < *at {
            // A fresh flash (the factory's): take the whole checkpoint.
            m.clone_from(sim);
            return 0;
        }
        m.power_on();
        for r in story.written.iter() {
            m.write(r.start as u32, &sim.bytes()[r.clone()]).expect("powered");
        }
        m.ops() - at
    }
}

// ---------------------------------------------------------------------------------------------
// The sweep.

/// xorshift64* for the chains.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn mode(&mut self) -> CutMode {
        if self.next() & 1 == 0 {
            CutMode::Before
        } else {
            CutMode::Torn
        }
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| v.trim().parse().unwrap_or_else(|_| panic!("{name} is not a number: {v}")))
}

/// One unit of work: a cut point or a chain of one geometry.
#[derive(Clone, Copy, Debug)]
enum Job {
    Point { story: usize, op: u64, mode: CutMode },
    Chain { story: usize, index: u64 },
}

#[derive(Default)]
struct Tally {
    /// Cut points exercised per story (single cuts, chained cuts).
    points: Vec<(u64, u64)>,
    chains: Vec<u64>,
    failures: Vec<String>,
}

/// Chain `index` of `seed` for a story whose operations are `start..start + total_ops`.
fn chain_plan(seed: u64, index: u64, story: usize, start: u64, total_ops: u64) -> Plan {
    let mut rng = Rng((seed ^ (index.wrapping_mul(0x9E37_79B9_7F4A_7C15)) ^ ((story as u64) << 56)) | 1);
    for _ in 0..4 {
        rng.next();
    }
    let cuts = 2 + rng.below(MAX_CHAIN_CUTS - 1);
    let first = start + rng.below(total_ops);
    let mode = rng.mode();
    let then = (1..cuts).map(|_| (rng.below(RECOVERY_WINDOW), rng.mode())).collect();
    Plan::Chain { first, then, mode, seed: rng.next() }
}

/// The flash and server a worker keeps from job to job of one story.
struct Kit {
    story: usize,
    flash: Nor<SimFlash>,
    server: Server,
}

#[test]
fn power_cut_at_every_flash_operation_of_the_device_core_story_and_random_chains() {
    let seed = env_u64("KEEL_POWERCUT_SEED").unwrap_or_else(|| {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64);
        t ^ u64::from(std::process::id())
    });
    let chains = env_u64("KEEL_POWERCUT_CHAINS").unwrap_or(DEFAULT_CHAINS);
    eprintln!("power-cut chains: seed {seed} (KEEL_POWERCUT_SEED={seed} replays), {chains} chains per geometry");

    assert_eq!(
        layout_for(Geometry::REFERENCE),
        [layout::JOURNAL, layout::APP_A, layout::APP_B],
        "the reference geometry runs on the real partition layout"
    );
    let started = std::time::Instant::now();
    let stories: Vec<Story> = GEOMETRIES
        .iter()
        .map(|&(name, page, unit)| Story::new(name, Geometry::new(page, unit).expect("valid geometry")))
        .collect();
    let refs: Vec<Reference> = stories.iter().map(Reference::of).collect();

    let mut jobs = Vec::new();
    for (s, r) in refs.iter().enumerate() {
        for op in 0..r.total_ops {
            for mode in [CutMode::Before, CutMode::Torn] {
                jobs.push(Job::Point { story: s, op, mode });
            }
        }
        jobs.extend((0..chains).map(|index| Job::Chain { story: s, index }));
    }

    let tally =
        Mutex::new(Tally { points: vec![(0, 0); stories.len()], chains: vec![0; stories.len()], ..Tally::default() });
    let next_job = AtomicUsize::new(0);
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get()).min(4);
    let quiet = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {})); // failures are collected and reported below
    let swept = std::panic::catch_unwind(core::panic::AssertUnwindSafe(|| {
        std::thread::scope(|scope| {
            for _ in 0..workers {
                scope.spawn(|| {
                    // A flash and a server per worker, the flash restored for each job (no megabytes
                    // allocated per job).
                    let mut kit: Option<Kit> = None;
                    let check_untouched = |k: &Kit| {
                        let story = &stories[k.story];
                        if !story.untouched_erased(k.flash.medium()) {
                            let mut t = tally.lock().unwrap_or_else(|e| e.into_inner());
                            t.failures
                                .push(format!("{}: a run wrote outside the journal and the images' pages", story.name));
                        }
                    };
                    loop {
                        let i = next_job.fetch_add(1, Ordering::Relaxed);
                        let Some(&job) = jobs.get(i) else {
                            if let Some(k) = kit.take() {
                                check_untouched(&k);
                            }
                            break;
                        };
                        let (s, plan) = match job {
                            Job::Point { story, op, mode } => {
                                (story, Plan::One(refs[story].checkpoints[0].0 + op, mode))
                            }
                            Job::Chain { story, index } => {
                                let r = &refs[story];
                                (story, chain_plan(seed, index, story, r.checkpoints[0].0, r.total_ops))
                            }
                        };
                        let start_op = plan.first().map_or(0, |c| c.0);
                        let (story, reference) = (&stories[s], &refs[s]);
                        let old = match kit.take() {
                            Some(k) if k.story == s => Some(k),
                            other => {
                                if let Some(k) = other {
                                    check_untouched(&k);
                                }
                                None
                            }
                        };
                        // Everything a job does is inside: whatever panics is that job's failure.
                        let result = std::panic::catch_unwind(core::panic::AssertUnwindSafe(|| {
                            let Kit { mut flash, mut server, .. } = old.unwrap_or_else(|| Kit {
                                story: s,
                                flash: Nor::new(reference.checkpoints[0].1.clone()),
                                server: story.server(),
                            });
                            let delta = reference.restore(story, &mut flash, start_op);
                            // A new story: the server forgets the device (its log position too:
                            // boot numbers start over).
                            server.reset();
                            server.received.clear();
                            server.log_acked = None;
                            let mut trace = Trace::default();
                            let (w, fired) = story.run(flash, server, &plan, delta, &mut trace);
                            let end = End::of(story, &w, &mut trace);
                            assert_eq!(end, reference.end, "end state differs from the uninterrupted run's");
                            if let Plan::One(..) = plan {
                                assert_eq!(fired, 1, "the cut fires");
                            }
                            (w, fired)
                        }));
                        let result = result.map(|(w, fired)| {
                            kit = Some(Kit { story: s, server: w.server, flash: w.dev.into_flash() });
                            fired
                        });
                        let mut t = tally.lock().unwrap_or_else(|e| e.into_inner());
                        match (job, result) {
                            (Job::Point { .. }, Ok(_)) => t.points[s].0 += 1,
                            (Job::Chain { .. }, Ok(fired)) => {
                                t.points[s].1 += fired;
                                t.chains[s] += 1;
                            }
                            (_, Err(e)) => {
                                let why = e
                                    .downcast_ref::<String>()
                                    .cloned()
                                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                                    .unwrap_or_default();
                                if matches!(job, Job::Point { .. }) {
                                    t.points[s].0 += 1;
                                } else {
                                    t.points[s].1 += plan.len();
                                    t.chains[s] += 1;
                                }
                                t.failures.push(format!("{}: {job:?} (seed {seed}): {why}", story.name));
                            }
                        }
                    }
                });
            }
        })
    }));
    std::panic::set_hook(quiet);
    if let Err(e) = swept {
        std::panic::resume_unwind(e); // a bug of the harness itself, reported with the hook back
    }

    let t = tally.into_inner().unwrap_or_else(|e| e.into_inner());
    let mut total = 0;
    for (i, story) in stories.iter().enumerate() {
        let (single, chained) = t.points[i];
        eprintln!(
            "{:<36} {:>5} flash operations: {:>5} single cut points + {:>4} cuts in {} chains",
            story.name, refs[i].total_ops, single, chained, t.chains[i]
        );
        assert_eq!(single, 2 * refs[i].total_ops, "every operation cut before and torn");
        total += single + chained;
    }
    eprintln!(
        "{total} power-cut points, {} failures, {:.1} s on {workers} threads",
        t.failures.len(),
        started.elapsed().as_secs_f64()
    );
    if let Ok(path) = std::env::var("KEEL_POWERCUT_REPORT") {
        let json = format!("{{\"powercut_points_tested\": {total}, \"powercut_failures\": {}}}\n", t.failures.len());
        std::fs::write(path, json).expect("report written");
    }
    assert!(total >= 10_000, "the sweep covers at least 10 000 cut points: {total}");
    let shown: Vec<&String> = t.failures.iter().take(20).collect();
    assert!(t.failures.is_empty(), "{} of {total} power-cut points failed (first 20): {shown:#?}", t.failures.len());
}
