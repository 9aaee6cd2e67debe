//! The runtime half of a trial: when its grace time ends and whether the cloud link stayed up
//! through it. The journal half (boots, crashes, the decision's record) is
//! [`keel_update::Updater`]; this part lives in RAM for one boot.
//!
//! The link is followed as events ([`Trial::on_link`]), not sampled, so a link that drops and
//! comes back between two polls is still seen to have dropped.

use keel_update::TrialPolicy;

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
}

impl Trial {
    /// A trial of `seq` under `policy`; `link_up` is the link's state now.
    pub fn new(seq: u64, policy: TrialPolicy, link_up: bool) -> Self {
        Trial { seq, policy, deadline_us: None, link_up, link_seen: link_up, link_dropped: false }
    }

    /// The trial app was launched at `now`: the grace time starts at its first launch.
    pub fn on_launch(&mut self, now: u64) {
        if self.deadline_us.is_none() {
            self.deadline_us = Some(now.saturating_add(self.policy.grace_s as u64 * 1_000_000));
        }
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

    /// When the grace time ends (once the app was launched).
    pub fn poll_at(&self) -> Option<u64> {
        self.deadline_us
    }

    /// The end of the grace time could not be recorded: decide again at `until`.
    pub fn postpone(&mut self, until: u64) {
        self.deadline_us = Some(until);
    }

    /// True once the grace time is over.
    pub fn expired(&self, now: u64) -> bool {
        self.deadline_us.is_some_and(|d| now >= d)
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
        t.on_launch(5_000_000);
        t.on_launch(9_000_000);
        assert_eq!(t.poll_at(), Some(15_000_000));
        assert!(!t.expired(14_999_999));
        assert!(t.expired(15_000_000));
    }

    #[test]
    fn link_up_the_whole_time_after_it_came_up() {
        let mut t = Trial::new(2, policy(), false);
        assert!(!t.link_stayed_up(), "never up");
        t.on_link(true);
        assert!(t.link_stayed_up());
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
