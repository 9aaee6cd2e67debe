//! App updates on the device: which slot to boot (from the journal), the trial of a new app, its
//! confirmation and its rollback. The decisions and the power-fail-safe journal live in
//! `keel-update` (host-tested, including power cuts at every flash operation); this module wires
//! them to the visor's events: boot, app launch, app crash, the confirm system call, the clock
//! and the cloud link.

use core::sync::atomic::{AtomicBool, Ordering};

use keel_abi::{update_outcome, Status, UpdateInfo};
use keel_flash::Nor;
use keel_update::agent::{self, Agent, Next};
use keel_update::{Confirm, Outcome, Phase, Slot, TrialPolicy, Updater};

use crate::board::FlashMedium;
use crate::{app, net, vlog, Visor};

/// The update state the visor keeps in RAM for this boot.
pub struct UpdateRt {
    /// The slot the app runs from.
    pub slot: Slot,
    /// Set while the app runs as an update on trial.
    pub trial: Option<TrialRt>,
    /// The download agent.
    pub agent: Agent,
    /// Flash counters when the current update's download started (for its cost report).
    pub stats_at_offer: Option<keel_flash::FlashStats>,
    /// A verified update waits for the app; it is applied anyway at this time.
    pub apply_deadline_us: Option<u64>,
}

/// The app has an `UPDATE_READY` event to receive (reported once by its next wait).
pub static READY_EVENT: AtomicBool = AtomicBool::new(false);

/// Set when the update status changed outside the network code (trial confirmed or rolled
/// back); the link sends a status report and clears it.
pub static STATUS_CHANGED: AtomicBool = AtomicBool::new(true);

/// A running trial.
pub struct TrialRt {
    seq: u64,
    policy: TrialPolicy,
    /// When the grace time ends (set at the first launch of the trial app in this boot).
    deadline_us: Option<u64>,
    /// The cloud link was up at some point of the trial, and whether it dropped after that.
    link_seen: bool,
    link_dropped: bool,
}

/// The updater for this board's flash layout.
pub fn updater() -> Updater {
    Updater::reference(app::target(keel_flash::layout::APP_A))
}

/// At boot: reads the journal and decides the slot (counting a trial boot).
pub fn boot(flash: &mut Nor<FlashMedium>) -> UpdateRt {
    let up = updater();
    let plan = match up.boot(flash) {
        Ok(p) => p,
        Err(e) => {
            vlog!("update: journal error ({}); booting the active slot", e);
            let slot = up.state(flash).map_or(Slot::A, |s| s.active);
            return UpdateRt { slot, trial: None, agent: Agent::new(), stats_at_offer: None, apply_deadline_us: None };
        }
    };
    let state = up.state(flash).unwrap_or(keel_update::UpdateState::FACTORY);
    if let Some(r) = plan.rolled_back {
        let seq = state.last.map_or(0, |l| l.0);
        report(format_args!("update: rolled back seq {} ({})", seq, r.as_str()));
    }
    let trial = match state.phase {
        Phase::Trial(t) if plan.trial => {
            report(format_args!(
                "update: trial of seq {} in slot {} (boot {} of at most {})",
                t.seq,
                plan.slot.as_str(),
                t.boots,
                keel_update::MAX_TRIAL_BOOTS
            ));
            Some(TrialRt { seq: t.seq, policy: t.policy, deadline_us: None, link_seen: false, link_dropped: false })
        }
        _ => None,
    };
    UpdateRt { slot: plan.slot, trial, agent: Agent::new(), stats_at_offer: None, apply_deadline_us: None }
}

fn report(args: core::fmt::Arguments<'_>) {
    vlog!("{}", args);
    net::push_event(args);
    STATUS_CHANGED.store(true, Ordering::Relaxed);
}

/// This visor's version as bundles state their minimum (`keel_bundle::visor_version`).
fn visor_version() -> u32 {
    keel_bundle::parse_visor_version(env!("CARGO_PKG_VERSION")).unwrap_or(0)
}

// The agent entry points below run inside the network code's borrow of the log ring: they must
// not log through `net` (console output only).

/// The server offers a bundle (its envelope without payloads).
pub fn agent_offer(envelope: &[u8]) -> Next {
    crate::VISOR.with(|v| {
        let Some(v) = v.as_mut() else { return Next::None };
        let keys = v.factory.map(|f| f.signer_key).filter(|k| k.iter().any(|&b| b != 0));
        let trusted: &[[u8; 32]] = match &keys {
            Some(k) => core::slice::from_ref(k),
            None => &[],
        };
        let before = v.flash.stats();
        let next = v.update.agent.on_offer(&updater(), &mut v.flash, envelope, trusted, visor_version());
        if v.update.agent.downloading() && v.update.stats_at_offer.is_none() {
            v.update.stats_at_offer = Some(before);
        }
        log_status(&v.update.agent.status(&updater(), &v.flash));
        next
    })
}

/// Layer bytes arrived.
pub fn agent_data(sequence: u64, offset: u32, data: &[u8]) -> Next {
    crate::VISOR.with(|v| {
        let Some(v) = v.as_mut() else { return Next::None };
        let next = v.update.agent.on_data(&updater(), &mut v.flash, sequence, offset, data);
        // Progress is reported to the server; the console shows only how a download ended.
        let st = v.update.agent.status(&updater(), &v.flash);
        if next == Next::None && st.state != agent::State::Downloading {
            log_status(&st);
        }
        next
    })
}

/// The link is up again: a download in progress asks for its data again (the server does not
/// re-offer a bundle the device reports as downloading).
pub fn agent_connected() -> Next {
    crate::VISOR.with(|v| v.as_mut().map_or(Next::None, |v| v.update.agent.on_connect()))
}

/// The server cannot serve a fetch: the download ends with an error (reported), to be resumed
/// from the journal at the next offer.
pub fn agent_layer_error(sequence: u64) -> Next {
    crate::VISOR.with(|v| v.as_mut().map_or(Next::None, |v| v.update.agent.on_layer_error(sequence)))
}

/// The server withdrew the bundle.
pub fn agent_cancel(sequence: u64) {
    crate::VISOR.with(|v| {
        if let Some(v) = v.as_mut() {
            v.update.agent.on_cancel(&updater(), &mut v.flash, sequence);
        }
    });
}

/// A verified update waits for the app (the bundle asks for politeness): the app gets an
/// `UPDATE_READY` event, and the update is applied anyway after `politeness_s`.
pub fn ready(politeness_s: u32) {
    let now = crate::time::now_us();
    let first = crate::VISOR.with(|v| {
        let v = v.as_mut()?;
        let first = v.update.apply_deadline_us.is_none();
        let deadline = *v.update.apply_deadline_us.get_or_insert(now.saturating_add(politeness_s as u64 * 1_000_000));
        Some((first, deadline))
    });
    READY_EVENT.store(true, Ordering::Relaxed);
    if let Some((true, _)) = first {
        report(format_args!("update: ready; the app may apply it within {} s", politeness_s));
    }
    // The service routine re-arms the alarm (for the deadline) when it is done.
}

/// Commits a ready update and switches to its trial. Returns true if the app must restart.
fn apply(v: &mut Visor, why: &str) -> bool {
    v.update.apply_deadline_us = None;
    READY_EVENT.store(false, Ordering::Relaxed);
    match v.update.agent.apply(&updater(), &mut v.flash) {
        Next::Installed => {
            vlog!("update: applying ({})", why);
            let rt = boot(&mut v.flash);
            v.update.slot = rt.slot;
            v.update.trial = rt.trial;
            STATUS_CHANGED.store(true, Ordering::Relaxed);
            true
        }
        _ => false,
    }
}

/// `update_apply` system call: true if the update was committed (the caller restarts the app).
pub fn apply_by_app(v: &mut Visor) -> bool {
    v.update.agent.is_ready() && apply(v, "asked by the app")
}

/// What to report to the server.
pub fn status() -> Option<agent::Status> {
    crate::VISOR.with(|v| v.as_ref().map(|v| v.update.agent.status(&updater(), &v.flash)))
}

fn log_status(s: &agent::Status) {
    vlog!(
        "update: seq {} {:?} {}/{} bytes{}{}",
        s.sequence,
        s.state,
        s.progress,
        s.total,
        if s.reason.is_some() { ": " } else { "" },
        s.reason.map_or("", |r| r.as_str())
    );
}

/// The download completed and the install is committed: restart the app into its trial.
pub fn installed() {
    crate::VISOR.with(|v| {
        if let Some(v) = v.as_mut() {
            // The same decision as at a boot: counts the trial's first boot.
            let rt = boot(&mut v.flash);
            v.update.slot = rt.slot;
            v.update.trial = rt.trial;
            v.sup.on_restart_request(0);
        }
    });
    crate::board::pend_service();
}

/// The trial image failed to load: roll back. Returns true if the caller should load the
/// (now active) other slot.
pub fn load_failed(v: &mut Visor) -> bool {
    let Some(t) = v.update.trial.take() else { return false };
    let up = updater();
    if let Err(e) = up.rollback(&mut v.flash, keel_update::Reason::TrialImageInvalid) {
        vlog!("update: journal error ({})", e);
    }
    report(format_args!("update: rolled back seq {} ({})", t.seq, keel_update::Reason::TrialImageInvalid.as_str()));
    v.update.slot = v.update.slot.other();
    true
}

/// The app was launched at `now`: starts the trial's grace time on its first launch.
pub fn on_launch(v: &mut Visor, now: u64) {
    if let Some(t) = v.update.trial.as_mut() {
        if t.deadline_us.is_none() {
            t.deadline_us = Some(now.saturating_add(t.policy.grace_s as u64 * 1_000_000));
        }
    }
}

/// The app crashed. On trial, counts the crash; after too many, rolls back (the supervisor's
/// restart then starts the previous app).
pub fn on_crash(v: &mut Visor, watchdog: bool) {
    let Some(t) = v.update.trial.as_ref() else { return };
    let seq = t.seq;
    match updater().app_crashed(&mut v.flash, watchdog) {
        Ok(Some(r)) => {
            report(format_args!("update: rolled back seq {} ({})", seq, r.as_str()));
            v.update.trial = None;
            v.update.slot = v.update.slot.other();
        }
        Ok(None) => {}
        Err(e) => vlog!("update: journal error ({})", e),
    }
}

/// `update_confirm` system call.
pub fn confirm(v: &mut Visor) -> Status {
    let Some(t) = v.update.trial.as_ref() else { return Status::Unavailable };
    let seq = t.seq;
    match updater().confirm(&mut v.flash) {
        Ok(true) => {
            report(format_args!("update: confirmed seq {} (by the app)", seq));
            v.update.trial = None;
            report_cost(v, seq);
            Status::Ok
        }
        Ok(false) => Status::Unavailable,
        Err(e) => {
            vlog!("update: journal error ({})", e);
            Status::InternalError
        }
    }
}

/// Logs the flash an update cost from its offer to its confirmation (this boot only).
fn report_cost(v: &mut Visor, seq: u64) {
    if let Some(a) = v.update.stats_at_offer.take() {
        let b = v.flash.stats();
        vlog!(
            "update: flash used by seq {}: {} page erases, {} program operations ({} units)",
            seq,
            b.erases - a.erases,
            b.programs - a.programs,
            b.units_programmed - a.units_programmed
        );
    }
}

/// `update_info` system call.
pub fn info(v: &Visor) -> UpdateInfo {
    let s = updater().state(&v.flash).unwrap_or(keel_update::UpdateState::FACTORY);
    let (last_sequence, last_outcome, last_reason) = match s.last {
        None => (0, update_outcome::NONE, 0),
        Some((seq, o)) => match o {
            Outcome::Confirmed => (seq, update_outcome::CONFIRMED, 0),
            Outcome::RolledBack(r) => (seq, update_outcome::ROLLED_BACK, r as u32),
            Outcome::Refused(r) => (seq, update_outcome::REFUSED, r as u32),
            Outcome::Failed(r) => (seq, update_outcome::FAILED, r as u32),
        },
    };
    UpdateInfo {
        version: 1,
        on_trial: v.update.trial.is_some() as u32,
        installed_sequence: s.installed_seq,
        last_sequence,
        last_outcome,
        last_reason,
    }
}

/// When [`poll`] next needs to run.
pub fn next_deadline(v: &Visor) -> Option<u64> {
    let trial = v.update.trial.as_ref().and_then(|t| t.deadline_us);
    match (trial, v.update.apply_deadline_us) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Service routine hook: follows the link during a trial and ends the trial when its grace time
/// is over (confirmed by policy, or rolled back). Returns true if the app must be restarted now
/// (rolled back: the previous app takes over).
pub fn poll(v: &mut Visor, now: u64) -> bool {
    if v.update.apply_deadline_us.is_some_and(|d| now >= d) && apply(v, "politeness time over") {
        return true;
    }
    let online = net::ONLINE.load(Ordering::Relaxed);
    let Some(t) = v.update.trial.as_mut() else { return false };
    if online {
        t.link_seen = true;
    } else if t.link_seen {
        t.link_dropped = true;
    }
    if t.deadline_us.is_none_or(|d| now < d) {
        return false;
    }
    let (seq, confirm) = (t.seq, t.policy.confirm);
    let link_stayed_up = t.link_seen && !t.link_dropped && online;
    match updater().grace_expired(&mut v.flash, link_stayed_up) {
        Ok(Some(Outcome::Confirmed)) => {
            report(format_args!("update: confirmed seq {} (ran the grace time with the cloud link up)", seq));
            v.update.trial = None;
            report_cost(v, seq);
            false
        }
        Ok(Some(Outcome::RolledBack(r))) => {
            report(format_args!("update: rolled back seq {} ({})", seq, r.as_str()));
            v.update.trial = None;
            v.update.slot = v.update.slot.other();
            true
        }
        Ok(_) => {
            v.update.trial = None;
            false
        }
        Err(e) => {
            vlog!("update: journal error ({}); policy {:?}", e, confirm == Confirm::ByLink);
            false
        }
    }
}
