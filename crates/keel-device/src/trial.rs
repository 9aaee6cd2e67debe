//! The runtime half of a trial: when its grace time ends and whether the cloud link stayed up
//! through it. The journal half (boots, crashes, the decision's record) is
//! [`keel_update::Updater`]; this part lives in RAM for one boot.
//!
//! The link is followed as events ([`Trial::on_link`]), not sampled, so a link that drops and
//! comes back between two polls is still seen to have dropped.
//!
//! The rules that close the trial's loopholes live here too:
//!
//! * **Restarts count.** A restart the trial app asks for counts as a trial crash if it carries
//!   the panic code ([`PANIC_RESTART_CODE`], keel-app's panic handler) or comes within
//!   [`EARLY_RESTART_US`] of the instance's start ([`Trial::restart_counts`]).
//! * **Confirm-by-link needs a sign of life.** At the end of the grace time, `ByLink` confirms
//!   only if the link stayed up **and** the running trial instance has run at least half the
//!   grace time **and** it gave a liveness signal (a watchdog kick, a log line, an update-info
//!   or notification call: `keel_device::Device::app_alive`) within the last
//!   [`LIVENESS_WINDOW_US`] ([`Trial::lively`]); otherwise the trial is rolled back ("no sign of
//!   life").
//! * **Only the trial instance confirms.** The trial remembers the launch generation of the
//!   instance started from its slot ([`Trial::launched_gen`]); the device core accepts a
//!   confirmation only from that instance while it runs (not from the old app between an apply
//!   and the new app's start).

use keel_update::TrialPolicy;

/// The restart code of keel-app's panic handler (`keel_app::PANIC_RESTART_CODE`).
pub const PANIC_RESTART_CODE: u32 = 0xDEAD;
/// A requested restart this soon after the trial instance started counts as a trial crash.
pub const EARLY_RESTART_US: u64 = 30_000_000;
/// Confirm-by-link needs a liveness signal from the trial app at most this long before the end
/// of the grace time.
pub const LIVENESS_WINDOW_US: u64 = 10_000_000;

/// A running trial.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Trial {
    /// The bundle on trial.
    pub seq: u64,
    /// Its policy.
    pub policy: TrialPolicy,
    /// When the grace time ends: set at the trial app's first launch in this boot.
    deadline_us: Option<u64>,
    link_up: bool,
    link_seen: bool,
    link_dropped: bool,
    /// The launch generation of the instance started from the trial slot (the latest).
    launched_gen: Option<u32>,
    /// When the running trial instance started (`None`: not running).
    instance_since: Option<u64>,
    /// Its latest liveness signal.
    alive_at: Option<u64>,
    /// Since when a debugger holds the app halted: the grace time stops meanwhile.
    halted_since: Option<u64>,
}

impl Trial {
    /// A trial of `seq` under `policy`; `link_up` is the link's state now.
    pub fn new(seq: u64, policy: TrialPolicy, link_up: bool) -> Self {
        Trial {
            seq,
            policy,
            deadline_us: None,
            link_up,
            link_seen: link_up,
            link_dropped: false,
            launched_gen: None,
            instance_since: None,
            alive_at: None,
            halted_since: None,
        }
    }

    fn grace_us(&self) -> u64 {
        self.policy.grace_s as u64 * 1_000_000
    }

    /// The trial app was launched at `now` as launch generation `gen`: the grace time starts at
    /// its first launch; the instance's run time and liveness start now.
    pub fn on_launch(&mut self, now: u64, gen: u32) {
        if self.deadline_us.is_none() {
            self.deadline_us = Some(now.saturating_add(self.grace_us()));
        }
        self.launched_gen = Some(gen);
        self.instance_since = Some(now);
        self.alive_at = None;
    }

    /// The trial instance stopped (crashed, killed, restarting).
    pub fn on_stop(&mut self) {
        self.halted_since = None;
        self.instance_since = None;
        self.alive_at = None;
    }

    /// The running trial instance gave a sign of life at `now`.
    pub fn on_alive(&mut self, now: u64) {
        if self.instance_since.is_some() {
            self.alive_at = Some(now);
        }
    }

    /// The launch generation of the latest instance started from the trial slot.
    pub fn launched_gen(&self) -> Option<u32> {
        self.launched_gen
    }

    /// True if a restart the running trial instance asks for at `now` with `code` counts as a
    /// trial crash: the panic code, or early in the instance's life.
    pub fn restart_counts(&self, now: u64, code: u32) -> bool {
        code == PANIC_RESTART_CODE || self.instance_since.is_some_and(|s| now.saturating_sub(s) < EARLY_RESTART_US)
    }

    /// True if the running trial instance has run at least half the grace time and gave a
    /// sign of life within [`LIVENESS_WINDOW_US`] of `now`.
    pub fn lively(&self, now: u64) -> bool {
        self.instance_since.is_some_and(|s| now.saturating_sub(s) >= self.grace_us() / 2)
            && self.alive_at.is_some_and(|a| now.saturating_sub(a) <= LIVENESS_WINDOW_US)
    }

    /// The cloud link came up (`true`) or went down.
    pub fn on_link(&mut self, up: bool) {
        if up {
            self.link_seen = true;
        } else if self.link_up {
            self.link_dropped = true;
        }
        self.link_up = up;
    }

    /// True if the link came up during the trial and never dropped since.
    pub fn link_stayed_up(&self) -> bool {
        self.link_seen && !self.link_dropped && self.link_up
    }

    /// When the grace time ends (once the app was launched; never while halted).
    pub fn poll_at(&self) -> Option<u64> {
        self.deadline_us.filter(|_| self.halted_since.is_none())
    }

    /// A debugger halted the app at `now`: the grace time stops (a halted trial is neither
    /// confirmed nor rolled back).
    pub fn halt(&mut self, now: u64) {
        self.halted_since.get_or_insert(now);
    }

    /// The app runs again at `now`: the grace time continues where it stopped.
    pub fn unhalt(&mut self, now: u64) {
        let Some(since) = self.halted_since.take() else { return };
        let d = now.saturating_sub(since);
        self.deadline_us = self.deadline_us.map(|t| t.saturating_add(d));
        self.instance_since = self.instance_since.map(|t| t.saturating_add(d));
    }

    /// The end of the grace time could not be recorded: decide again at `until`.
    pub fn postpone(&mut self, until: u64) {
        self.deadline_us = Some(until);
    }

    /// True once the grace time is over.
    pub fn expired(&self, now: u64) -> bool {
        self.halted_since.is_none() && self.deadline_us.is_some_and(|d| now >= d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_update::Confirm;

    fn policy() -> TrialPolicy {
        TrialPolicy { max_crashes: 3, grace_s: 10, confirm: Confirm::ByLink }
    }

    #[test]
    fn the_grace_time_starts_at_the_first_launch_only() {
        let mut t = Trial::new(2, policy(), false);
        assert_eq!(t.poll_at(), None);
        assert!(!t.expired(u64::MAX), "not launched: never expires");
        t.on_launch(5_000_000, 1);
        t.on_launch(9_000_000, 2);
        assert_eq!(t.poll_at(), Some(15_000_000));
        assert!(!t.expired(14_999_999));
        assert!(t.expired(15_000_000));
    }

    #[test]
    fn lively_needs_half_the_grace_time_in_this_instance_and_a_recent_sign_of_life() {
        const S: u64 = 1_000_000;
        let mut t = Trial::new(2, policy(), true); // grace 10 s
        assert!(!t.lively(100 * S), "never launched");
        t.on_launch(0, 1);
        t.on_alive(4 * S);
        assert!(!t.lively(4 * S), "ran 4 s of the 5 needed");
        assert!(t.lively(5 * S));
        assert!(t.lively(14 * S));
        assert!(!t.lively(14 * S + 1), "silent for more than the window");
        t.on_stop();
        t.on_alive(15 * S);
        assert!(!t.lively(15 * S), "not running: no sign of life counts");
        t.on_launch(16 * S, 2);
        t.on_alive(20 * S);
        assert!(!t.lively(20 * S), "a new instance starts from zero");
        assert_eq!(t.launched_gen(), Some(2));
        assert_eq!(t.poll_at(), Some(10 * S), "the grace time still ends at the first launch's");
    }

    #[test]
    fn panics_and_early_restarts_count_late_deliberate_ones_do_not() {
        let mut t = Trial::new(2, policy(), true);
        t.on_launch(0, 1);
        assert!(t.restart_counts(EARLY_RESTART_US - 1, 0));
        assert!(!t.restart_counts(EARLY_RESTART_US, 0));
        assert!(t.restart_counts(u64::MAX, PANIC_RESTART_CODE));
    }

    #[test]
    fn link_up_the_whole_time_after_it_came_up() {
        let mut t = Trial::new(2, policy(), false);
        assert!(!t.link_stayed_up(), "never up");
        t.on_link(true);
        assert!(t.link_stayed_up());
    }

    #[test]
    fn a_halted_trial_neither_expires_nor_loses_its_remaining_grace_time() {
        const S: u64 = 1_000_000;
        let mut t = Trial::new(2, policy(), true); // grace 10 s
        t.on_launch(0, 1);
        t.halt(4 * S);
        assert_eq!(t.poll_at(), None, "no wake-up while halted");
        assert!(!t.expired(100 * S), "a halted trial is not decided");
        t.unhalt(100 * S);
        // 6 s were left when it halted.
        assert_eq!(t.poll_at(), Some(106 * S));
        assert!(!t.expired(106 * S - 1));
        assert!(t.expired(106 * S));
    }

    #[test]
    fn a_drop_is_remembered_even_if_the_link_comes_back() {
        let mut t = Trial::new(2, policy(), true);
        assert!(t.link_stayed_up());
        t.on_link(false);
        t.on_link(true);
        assert!(!t.link_stayed_up());
    }

    #[test]
    fn a_link_that_is_down_at_the_end_did_not_stay_up() {
        let mut t = Trial::new(2, policy(), false);
        t.on_link(true);
        t.on_link(false);
        assert!(!t.link_stayed_up());
    }
}
