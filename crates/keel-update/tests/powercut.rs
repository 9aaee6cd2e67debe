//! Power-loss sweep over a matrix of flash geometries.
//!
//! A device goes through a whole update story with 256 KiB images, driven through the update
//! agent as the server would drive it: a signed offer (`on_offer`), the layer in 960-byte
//! chunks answering each `Next::Fetch` (`on_data`), verification and commit; the trial boot and
//! the app's confirmation (v2); a crashing update (v3): trial, crash loop, rollback; a polite
//! update (v4): `Next::Ready`, the app applies it, trial, confirm.
//!
//! For every geometry of [`GEOMETRIES`] the power is cut at every single flash operation of the
//! story, once before it and once in the middle of it (a torn program unit or a half-erased
//! page). After each cut the device reboots and carries on. Then seeded random **chains** cut the
//! power several times in one story, each cut during the recovery from the one before.
//!
//! Checked at every boot: the journal's newest record decodes, the chosen slot holds a valid
//! image (`Updater::check_slot`), a trial runs the version on trial and a confirmed app is the
//! one the story expects, and the confirmed sequence never goes back. Checked at the end: the
//! update state and both slots' images equal the uninterrupted run's.
//!
//! Environment: `KEEL_POWERCUT_SEED=n` replays the chains of seed `n` (printed by every run),
//! `KEEL_POWERCUT_CHAINS=n` runs `n` chains per geometry instead of the default,
//! `KEEL_POWERCUT_REPORT=path` writes `{"powercut_points_tested": N, "powercut_failures": F}`
//! for `cargo xtask bench`.

mod common;

use core::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use common::image;
use keel_bundle::{build_bundle, split_bundle, BundleSpec, LayerSpec, Policies, SigningKey};
use keel_flash::layout::{self, Partition};
use keel_flash::sim::{CutMode, SimFlash};
use keel_flash::{FlashError, Geometry, Nor, RecordLog};
use keel_image::{Target, HEADER_SIZE};
use keel_update::agent::{Agent, Next};
use keel_update::{BootPlan, Outcome, Phase, Reason, Slot, UpdateState, Updater, JOURNAL_MAGIC, RECORD_SIZE};

/// Slot bytes (header and image) of the story's first update: 256 KiB. The others are a little
/// smaller and end in the middle of a program unit.
const IMAGE_LEN: usize = 256 * 1024;
/// Bytes per `on_data` call, as the link delivers them.
const CHUNK: usize = 960;
/// Random chains per geometry (`KEEL_POWERCUT_CHAINS` to change).
const DEFAULT_CHAINS: u64 = 40;
/// Cuts per chain: 2 to this many.
const MAX_CHAIN_CUTS: u64 = 5;
/// A chained cut comes within this many flash operations after the reboot.
const RECOVERY_WINDOW: u64 = 48;

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

// ---------------------------------------------------------------------------------------------
// The board: layout and target for a geometry.

/// The journal and app slots for `g`: the reference layout's partitions moved up to page
/// boundaries, slots big enough for the 2 MiB execution region and a header.
fn layout_for(g: Geometry) -> [Partition; 3] {
    let page = |x: u32| g.page_ceil(x).expect("fits in u32");
    let journal = Partition { name: "journal", offset: page(layout::JOURNAL.offset), size: 2 * g.page_size() };
    let slot = page(EXEC_SIZE + HEADER_SIZE as u32);
    let a = Partition { name: "app-a", offset: page(layout::APP_A.offset).max(journal.end()), size: slot };
    let b = Partition { name: "app-b", offset: a.end(), size: slot };
    [journal, a, b]
}

const EXEC_BASE: u32 = 0x0020_0000;
const EXEC_SIZE: u32 = 2 * 1024 * 1024;

fn target(slot: Partition) -> Target {
    Target { exec_base: EXEC_BASE, exec_size: EXEC_SIZE, slot_capacity: slot.size - HEADER_SIZE as u32, abi: (1, 0) }
}

// ---------------------------------------------------------------------------------------------
// The device: one function per device step. Each is a call into the update agent or the
// updater, the calls the device core (keel-device) makes; swap the bodies to drive it instead.

/// The power went during a step.
#[derive(Debug)]
struct Cut;

struct Device {
    up: Updater,
    flash: Nor<SimFlash>,
    agent: Agent,
    trusted: [[u8; 32]; 1],
}

impl Device {
    /// A flash result: a fault is the power cut, any other error is a bug.
    fn flash<T>(&self, r: Result<T, FlashError>) -> Result<T, Cut> {
        match r {
            Ok(v) => Ok(v),
            Err(FlashError::Fault) if !self.flash.medium().powered() => Err(Cut),
            Err(e) => panic!("flash error without a power cut: {e:?}"),
        }
    }

    /// The agent reports no flash errors: it records them and goes on. Look at the power.
    fn agent_step(&self, next: Next) -> Result<Next, Cut> {
        if self.flash.medium().powered() {
            Ok(next)
        } else {
            Err(Cut)
        }
    }

    /// Reset: RAM is gone (a new agent); the updater chooses the slot to run.
    fn boot(&mut self) -> Result<BootPlan, Cut> {
        self.agent = Agent::new();
        let r = self.up.boot(&mut self.flash);
        self.flash(r)
    }

    /// The server offers a bundle (its envelope without the layer).
    fn offer(&mut self, envelope: &[u8]) -> Result<Next, Cut> {
        let next = self.agent.on_offer(&self.up, &mut self.flash, envelope, &self.trusted, 0);
        self.agent_step(next)
    }

    /// Layer bytes arrive.
    fn data(&mut self, sequence: u64, offset: u32, bytes: &[u8]) -> Result<Next, Cut> {
        let next = self.agent.on_data(&self.up, &mut self.flash, sequence, offset, bytes);
        self.agent_step(next)
    }

    /// The app applies a verified update that waits for it.
    fn apply(&mut self) -> Result<Next, Cut> {
        let next = self.agent.apply(&self.up, &mut self.flash);
        self.agent_step(next)
    }

    /// The trial app confirms itself.
    fn app_confirms(&mut self) -> Result<(), Cut> {
        let r = self.up.confirm(&mut self.flash);
        assert!(self.flash(r)?, "confirm without a trial");
        Ok(())
    }

    /// The trial app crashes; `Some` once the trial is rolled back.
    fn app_crashes(&mut self) -> Result<Option<Reason>, Cut> {
        let r = self.up.app_crashed(&mut self.flash, false);
        self.flash(r)
    }

    fn state(&self) -> UpdateState {
        self.up.state(&self.flash).expect("journal readable")
    }
}

// ---------------------------------------------------------------------------------------------
// The story.

struct Bundle {
    seq: u64,
    envelope: Vec<u8>,
    layer: Vec<u8>,
    polite: bool,
}

struct Story {
    name: &'static str,
    geometry: Geometry,
    journal: Partition,
    up: Updater,
    trusted: [u8; 32],
    v1: Vec<u8>,
    /// v2 (works), v3 (crashes), v4 (works, polite).
    bundles: [Bundle; 3],
}

/// What one story saw.
#[derive(Default)]
struct Trace {
    versions_booted: Vec<&'static str>,
    installed_seq: u64,
    /// If set, the flash at the start of every boot, with the operations done until then.
    checkpoints: Option<Vec<(u64, SimFlash)>>,
}

fn version_of(seq: u64) -> &'static str {
    match seq {
        0 => "1",
        2 => "2",
        3 => "3",
        4 => "4",
        s => panic!("no version has sequence {s}"),
    }
}

impl Story {
    fn new(name: &'static str, geometry: Geometry) -> Story {
        let [journal, a, b] = layout_for(geometry);
        let up = Updater::new(journal, a, b, target(a));
        let key = SigningKey::from_bytes(&[7; 32]);
        let bundle = |seq: u64, len: usize, politeness: u32| {
            let version = version_of(seq);
            let slot_bytes = image(version, len - HEADER_SIZE);
            let policies = Policies { max_politeness_time_s: politeness, ..Policies::default() };
            let layers = [LayerSpec { id: "app", target: keel_bundle::Target::AppSlot, bytes: &slot_bytes }];
            let spec = BundleSpec { sequence: seq, layers: &layers, policies };
            let signed = build_bundle(&spec, &key, |_| Some(a.size)).expect("bundle builds");
            let mut split = split_bundle(&signed).expect("bundle splits");
            let layer = split.layers.remove(0).bytes;
            assert_eq!(layer, slot_bytes);
            Bundle { seq, envelope: split.envelope, layer, polite: politeness > 0 }
        };
        Story {
            name,
            geometry,
            journal,
            up,
            trusted: key.verifying_key().to_bytes(),
            v1: image("1", 40_000),
            bundles: [bundle(2, IMAGE_LEN, 0), bundle(3, IMAGE_LEN - 4099, 0), bundle(4, IMAGE_LEN - 777, 30)],
        }
    }

    /// A factory-fresh device: v1 in slot A, everything else erased.
    fn factory(&self) -> Device {
        let g = self.geometry;
        let [_, a, b] = layout_for(g);
        let mut f = Nor::new(SimFlash::with_geometry(b.end(), g));
        let mut v1 = self.v1.clone();
        v1.resize(g.unit_ceil(v1.len() as u32).unwrap() as usize, 0xFF);
        f.erase_range(a.offset, a.offset + g.page_ceil(v1.len() as u32).unwrap()).unwrap();
        f.program(a.offset, &v1).unwrap();
        self.device(f.into_inner())
    }

    /// A device with this flash, just powered on.
    fn device(&self, flash: SimFlash) -> Device {
        Device { up: self.up, flash: Nor::new(flash), agent: Agent::new(), trusted: [self.trusted] }
    }

    /// The server's choice: the next bundle for a device in state `s`, `None` when the story is
    /// over. v3 is not offered again once it was rolled back; a bundle rolled back for other
    /// reasons (too many resets in its trial: several cuts in one trial) is offered again.
    fn next_bundle(&self, s: &UpdateState) -> Option<&Bundle> {
        let [v2, v3, v4] = &self.bundles;
        let v3_done = matches!(s.last, Some((3, Outcome::RolledBack(_)))) || s.last.is_some_and(|(seq, _)| seq >= 4);
        match s.installed_seq {
            0 => Some(v2),
            2 if v3_done => Some(v4),
            2 => Some(v3),
            _ => None,
        }
    }

    /// The invariants of a boot; returns the version that runs.
    fn check_boot(&self, dev: &Device, plan: &BootPlan, trace: &mut Trace) -> &'static str {
        let raw = RecordLog::<RECORD_SIZE>::new(self.journal.offset, JOURNAL_MAGIC);
        if let Some((_, p)) = raw.latest(&dev.flash).expect("journal readable") {
            assert!(UpdateState::decode(&p[..UpdateState::LEN]).is_some(), "the journal's record does not decode");
        }
        let h = self
            .up
            .check_slot(&dev.flash, plan.slot)
            .unwrap_or_else(|r| panic!("boot plan {plan:?} points at an invalid image: {}", r.as_str()));
        let s = dev.state();
        assert!(s.installed_seq >= trace.installed_seq, "confirmed sequence went back: {s:?}");
        trace.installed_seq = s.installed_seq;
        let expected = match (plan.trial, s.phase) {
            (true, Phase::Trial(t)) => version_of(t.seq),
            (true, p) => panic!("trial boot in phase {p:?}"),
            (false, _) => version_of(s.installed_seq),
        };
        assert_eq!(h.version_str(), expected, "plan {plan:?}, state {s:?}");
        trace.versions_booted.push(expected);
        expected
    }

    /// One power cycle: boots and follows the story until it is over (`Ok`) or the power goes.
    fn power_cycle(&self, dev: &mut Device, trace: &mut Trace) -> Result<(), Cut> {
        loop {
            if let Some(c) = &mut trace.checkpoints {
                c.push((dev.flash.medium().ops(), dev.flash.medium().clone()));
            }
            let plan = dev.boot()?;
            let running = self.check_boot(dev, &plan, trace);
            if plan.trial {
                match running {
                    "2" | "4" => dev.app_confirms()?,
                    // v3 crashes whenever it runs; the visor restarts it until the policy says enough.
                    _ => while dev.app_crashes()?.is_none() {},
                }
                continue; // restart into the confirmed (or rolled-back) app
            }
            let Some(bundle) = self.next_bundle(&dev.state()) else { return Ok(()) };
            let mut next = dev.offer(&bundle.envelope)?;
            loop {
                match next {
                    Next::Fetch { sequence, offset, len, .. } => {
                        assert_eq!(sequence, bundle.seq);
                        let page = self.geometry.page_size();
                        assert_eq!(len, page.min(bundle.layer.len() as u32 - offset), "a fetch is one page");
                        let end = offset as usize + len as usize;
                        next = Next::None;
                        for (i, chunk) in bundle.layer[offset as usize..end].chunks(CHUNK).enumerate() {
                            next = dev.data(sequence, offset + (i * CHUNK) as u32, chunk)?;
                        }
                    }
                    Next::Ready { .. } => {
                        assert!(bundle.polite, "only the polite bundle waits for the app");
                        next = dev.apply()?;
                    }
                    Next::Installed => break, // restart into the trial
                    Next::None => panic!("the agent stalled: {:?}", dev.agent.status(&dev.up, &dev.flash)),
                }
            }
        }
    }

    /// Runs the story from `dev` to its end with the power cuts of `plan`; returns the device
    /// and how many cuts fired.
    fn run(&self, mut dev: Device, plan: &Plan, trace: &mut Trace) -> (Device, u64) {
        let mut fired = 0;
        if let Some((at, mode, seed)) = plan.first() {
            dev.flash.medium_mut_for_tests().cut_at(at, mode, seed);
        }
        loop {
            match self.power_cycle(&mut dev, trace) {
                Ok(()) => return (dev, fired),
                Err(Cut) => {
                    fired += 1;
                    assert!(fired <= plan.len(), "a power cut nobody scheduled");
                    let sim = dev.flash.medium_mut_for_tests();
                    sim.power_on();
                    if let Some((after, mode, seed)) = plan.chained(fired) {
                        let now = sim.ops();
                        sim.cut_at(now + after, mode, seed);
                    }
                }
            }
        }
    }

    fn check_end(&self, dev: &Device, reference: &End) {
        let end = End::of(self, dev);
        assert_eq!(&end, reference, "end state differs from the uninterrupted run's");
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

/// What a finished story leaves: the update state and the image version in each slot.
#[derive(Debug, PartialEq, Eq)]
struct End {
    state: UpdateState,
    slots: [Option<String>; 2],
}

impl End {
    fn of(story: &Story, dev: &Device) -> End {
        let v = |s| story.up.check_slot(&dev.flash, s).ok().map(|h| h.version_str().to_string());
        End { state: dev.state(), slots: [v(Slot::A), v(Slot::B)] }
    }
}

/// The uninterrupted run of one geometry, with the flash at every boot (a power-on from there
/// is the same as getting there: RAM is empty at a boot).
struct Reference {
    end: End,
    total_ops: u64,
    /// (operations done, flash) at the start of each boot of the uninterrupted run.
    checkpoints: Vec<(u64, SimFlash)>,
}

impl Reference {
    fn of(story: &Story) -> Reference {
        let dev = story.factory();
        let start = dev.flash.medium().ops();
        let mut trace = Trace { checkpoints: Some(Vec::new()), ..Trace::default() };
        let (dev, fired) = story.run(dev, &Plan::None, &mut trace);
        assert_eq!(fired, 0);
        assert_eq!(trace.versions_booted, ["1", "2", "2", "3", "2", "4", "4"], "{}", story.name);
        let end = End::of(story, &dev);
        assert_eq!(end.state.active, Slot::A, "v4 runs from slot A");
        assert_eq!(end.state.installed_seq, 4);
        assert_eq!(end.state.phase, Phase::Idle);
        assert_eq!(end.state.last, Some((4, Outcome::Confirmed)));
        assert_eq!(end.slots, [Some("4".to_string()), Some("2".to_string())]);
        let checkpoints = trace.checkpoints.unwrap_or_default();
        assert_eq!(checkpoints.first().map(|c| c.0), Some(start));
        Reference { end, total_ops: dev.flash.medium().ops() - start, checkpoints }
    }

    /// Puts `dev` (a device of this story) at the last boot before operation `op` of the
    /// uninterrupted run.
    fn restore(&self, dev: &mut Device, op: u64) {
        let (_, sim) =
            self.checkpoints.iter().rev().find(|(at, _)| *at <= op).expect("the factory checkpoint is first");
        dev.flash.medium_mut_for_tests().clone_from(sim);
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

#[test]
fn power_cut_at_every_flash_operation_of_every_geometry_and_random_chains() {
    let seed = env_u64("KEEL_POWERCUT_SEED").unwrap_or_else(|| {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64);
        t ^ u64::from(std::process::id())
    });
    let chains = env_u64("KEEL_POWERCUT_CHAINS").unwrap_or(DEFAULT_CHAINS);
    eprintln!("power-cut chains: seed {seed} (KEEL_POWERCUT_SEED={seed} replays), {chains} chains per geometry");

    let stories: Vec<Story> = GEOMETRIES
        .iter()
        .map(|&(name, page, unit)| Story::new(name, Geometry::new(page, unit).expect("valid geometry")))
        .collect();
    assert_eq!(
        layout_for(Geometry::REFERENCE),
        [layout::JOURNAL, layout::APP_A, layout::APP_B],
        "the reference geometry runs on the real partition layout"
    );
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
    let started = std::time::Instant::now();
    let quiet = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {})); // failures are collected and reported below
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                // A device per worker, its flash restored for each job (no megabytes allocated).
                let mut device: Option<(usize, Device)> = None;
                loop {
                    let i = next_job.fetch_add(1, Ordering::Relaxed);
                    let Some(&job) = jobs.get(i) else { break };
                    let (s, plan) = match job {
                        Job::Point { story, op, mode } => (story, Plan::One(refs[story].checkpoints[0].0 + op, mode)),
                        Job::Chain { story, index } => {
                            let r = &refs[story];
                            (story, chain_plan(seed, index, story, r.checkpoints[0].0, r.total_ops))
                        }
                    };
                    let start_op = plan.first().map_or(0, |c| c.0);
                    let (story, reference) = (&stories[s], &refs[s]);
                    let mut dev = match device.take() {
                        Some((i, d)) if i == s => d,
                        _ => story.device(reference.checkpoints[0].1.clone()),
                    };
                    reference.restore(&mut dev, start_op);
                    let result = std::panic::catch_unwind(core::panic::AssertUnwindSafe(|| {
                        let mut trace = Trace::default();
                        let (dev, fired) = story.run(dev, &plan, &mut trace);
                        story.check_end(&dev, &reference.end);
                        if let Plan::One(..) = plan {
                            assert_eq!(fired, 1, "the cut fires");
                        }
                        (dev, fired)
                    }));
                    let result = result.map(|(dev, fired)| {
                        device = Some((s, dev));
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
    });
    std::panic::set_hook(quiet);

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
