//! The runtime half of a quarantine: whether the update check that ends it is under way, and
//! the time bound that ends it otherwise.
//!
//! When the app crashed (or reset the device) `Policy::quarantine_after` times in a row, the
//! supervisor holds it ([`keel_supervisor::AppState::Quarantined`]). The device core releases it
//! once it has asked the server for updates: the server answered that there is nothing to
//! install, or the offered update was installed (the new app starts on trial) or failed. So that
//! an offline device still runs its app, the quarantine also ends after
//! `Policy::quarantine_max_us`, **counted only while no check is under way**: a check is under
//! way while the link is up and the server said something about updates (the link came up, an
//! offer, layer data) within the last [`CHECK_IDLE_US`]. A server that never answers (or a
//! download that stalls) therefore holds the app for at most [`CHECK_IDLE_US`] plus the bound.

/// A check is under way for this long after the last sign of it (the link coming up, an
/// offer, layer data).
pub const CHECK_IDLE_US: u64 = 30_000_000;

/// A quarantine in progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quarantine {
    /// Time counted towards the bound up to `at_us`.
    counted_us: u64,
    at_us: u64,
    /// The last sign of a check (`None`: the link is down).
    progress_us: Option<u64>,
}

impl Quarantine {
    /// A quarantine entered at `now`; `online`: the link is up (a check starts now).
    pub fn new(now: u64, online: bool) -> Self {
        Quarantine { counted_us: 0, at_us: now, progress_us: online.then_some(now) }
    }

    /// Time counted towards the bound from `at_us` to `now`.
    fn counted_at(&self, now: u64) -> u64 {
        let from = match self.progress_us {
            Some(p) => self.at_us.max(p.saturating_add(CHECK_IDLE_US)),
            None => self.at_us,
        };
        self.counted_us.saturating_add(now.saturating_sub(from))
    }

    fn advance(&mut self, now: u64) {
        if now > self.at_us {
            self.counted_us = self.counted_at(now);
            self.at_us = now;
        }
    }

    /// The check made progress at `now` (the link came up, an offer or data arrived).
    pub fn progress(&mut self, now: u64) {
        self.advance(now);
        self.progress_us = Some(now);
    }

    /// The link went down at `now`: no check is under way.
    pub fn offline(&mut self, now: u64) {
        self.advance(now);
        self.progress_us = None;
    }

    /// True if a check is under way at `now`.
    pub fn under_way(&self, now: u64) -> bool {
        self.progress_us.is_some_and(|p| now < p.saturating_add(CHECK_IDLE_US))
    }

    /// True once `max_us` was counted.
    pub fn expired(&self, now: u64, max_us: u64) -> bool {
        self.counted_at(now) >= max_us
    }

    /// When the bound `max_us` is reached if nothing happens.
    pub fn poll_at(&self, max_us: u64) -> u64 {
        let left = max_us.saturating_sub(self.counted_us);
        let from = match self.progress_us {
            Some(p) => self.at_us.max(p.saturating_add(CHECK_IDLE_US)),
            None => self.at_us,
        };
        from.saturating_add(left)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000;
    const MAX: u64 = 120 * S;

    #[test]
    fn offline_the_bound_runs_from_the_start() {
        let q = Quarantine::new(10 * S, false);
        assert!(!q.under_way(10 * S));
        assert_eq!(q.poll_at(MAX), 130 * S);
        assert!(!q.expired(130 * S - 1, MAX));
        assert!(q.expired(130 * S, MAX));
    }

    #[test]
    fn a_check_under_way_stops_the_clock_and_a_silent_one_lets_it_run_again() {
        let mut q = Quarantine::new(0, false);
        q.progress(20 * S); // online after 20 s offline: 20 s counted
        assert!(q.under_way(20 * S));
        assert_eq!(q.poll_at(MAX), 50 * S + 100 * S, "the rest after the check went idle");
        q.progress(45 * S); // an offer
        q.progress(70 * S); // data
        assert_eq!(q.poll_at(MAX), 100 * S + 100 * S);
        assert!(!q.expired(199 * S, MAX));
        q.offline(110 * S); // 10 s idle counted before the link dropped
        assert_eq!(q.poll_at(MAX), 110 * S + 90 * S);
        assert!(q.expired(200 * S, MAX));
    }
}
