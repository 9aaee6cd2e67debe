//! # Keel app supervisor
//!
//! A sans-IO state machine that decides when the app runs. The visor feeds it events (boot,
//! app started, crash, restart request, watchdog calls) with the current monotonic time and asks
//! it what to do and when to wake up next ([`Supervisor::poll`], [`Supervisor::next_deadline`]).
//! It never touches hardware, so the whole restart policy is tested on the host.
//!
//! Policy:
//! * After a crash (fault or watchdog expiry) the app is restarted after a backoff that starts at
//!   [`Policy::min_backoff_us`] and doubles with every consecutive crash up to
//!   [`Policy::max_backoff_us`]. A crash after the app ran for at least
//!   [`Policy::stable_after_us`] counts as the first of a new series.
//! * A restart the app asks for happens immediately.
//! * An armed watchdog that is not kicked in time makes [`Supervisor::poll`] return
//!   [`Action::KillForWatchdog`]; the visor then stops the app and reports the crash.
//!
//! Next to the state machine, the visor's other pure decisions about a crash:
//! * [`crash`]: reading an exception's EXC_RETURN ([`ExcReturn`]) and building the app's
//!   [`keel_abi::CrashReport`] from its exception frame ([`crash::crash_report`]).
//! * [`handover`]: the [`Carry`] and crash report handed across a system reset the visor makes
//!   because of the app, as bytes in warm RAM ([`handover::encode`], [`handover::decode`]).
#![no_std]

pub mod crash;
pub mod handover;

pub use crash::{fault_kind_from_ipsr, ExcReturn};

use keel_abi::{BootInfo, StartReason, Status, WATCHDOG_MAX_MS, WATCHDOG_MIN_MS};

/// Restart policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Backoff before the first restart after a crash.
    pub min_backoff_us: u64,
    /// Upper bound of the backoff.
    pub max_backoff_us: u64,
    /// Run time after which the crash series is considered over.
    pub stable_after_us: u64,
}

impl Default for Policy {
    fn default() -> Self {
        Policy { min_backoff_us: 1_000_000, max_backoff_us: 64_000_000, stable_after_us: 300_000_000 }
    }
}

/// What the app is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppState {
    /// No runnable image; nothing will start.
    NoImage,
    /// The app should be (re)started as soon as possible.
    LaunchPending,
    /// The app is running since the given time.
    Running {
        /// Start time.
        since_us: u64,
    },
    /// The app crashed and waits for its backoff to end.
    Backoff {
        /// Time of the restart.
        until_us: u64,
    },
}

/// What the visor must do now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Nothing.
    None,
    /// Load and start the app (reason as in [`Supervisor::boot_info`]).
    Launch,
    /// The watchdog expired: stop the app and report it via [`Supervisor::on_crash`].
    KillForWatchdog,
}

/// Counters that survive a system reset the visor performs because of the app (see
/// [`Supervisor::resume_after_reset`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Carry {
    /// Restarts so far.
    pub restart_count: u32,
    /// Crashes so far.
    pub crash_count: u32,
    /// Crashes in the current series (drives the backoff).
    pub consecutive_crashes: u32,
}

/// The supervisor.
#[derive(Clone, Debug)]
pub struct Supervisor {
    policy: Policy,
    state: AppState,
    reason: StartReason,
    restart_count: u32,
    crash_count: u32,
    consecutive_crashes: u32,
    restart_code: u32,
    visor_boot_count: u32,
    watchdog: Option<(u64, u64)>, // (timeout_us, deadline_us)
    launches: u32,
}

impl Supervisor {
    /// A supervisor for a device whose visor has booted `visor_boot_count` times.
    pub fn new(policy: Policy, visor_boot_count: u32) -> Self {
        Supervisor {
            policy,
            state: AppState::LaunchPending,
            reason: StartReason::ColdBoot,
            restart_count: 0,
            crash_count: 0,
            consecutive_crashes: 0,
            restart_code: 0,
            visor_boot_count,
            watchdog: None,
            launches: 0,
        }
    }

    /// A supervisor continuing after a system reset that the visor made because the app crashed
    /// where it could not be restarted in place (in one of its interrupt handlers). The crash is
    /// already counted in `carry`; the app restarts after the backoff of the current series.
    pub fn resume_after_reset(policy: Policy, visor_boot_count: u32, carry: Carry, now: u64) -> Self {
        let mut s = Supervisor::new(policy, visor_boot_count);
        s.restart_count = carry.restart_count;
        s.crash_count = carry.crash_count;
        s.consecutive_crashes = carry.consecutive_crashes.max(1);
        s.reason = StartReason::Crash;
        s.launches = 1; // the next launch is a restart
        s.state = AppState::Backoff { until_us: now.saturating_add(s.backoff_for(s.consecutive_crashes)) };
        s
    }

    /// The counters to carry over a system reset.
    pub fn carry(&self) -> Carry {
        Carry {
            restart_count: self.restart_count,
            crash_count: self.crash_count,
            consecutive_crashes: self.consecutive_crashes,
        }
    }

    /// Current state.
    pub fn state(&self) -> AppState {
        self.state
    }

    /// The policy in force.
    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// What the app sees from the boot-info call.
    pub fn boot_info(&self) -> BootInfo {
        BootInfo {
            version: 1,
            reason: self.reason as u32,
            restart_count: self.restart_count,
            crash_count: self.crash_count,
            restart_code: self.restart_code,
            visor_boot_count: self.visor_boot_count,
        }
    }

    /// The image could not be loaded (missing or corrupt): stay stopped.
    pub fn on_no_image(&mut self) {
        self.state = AppState::NoImage;
        self.watchdog = None;
    }

    /// The app was started at `now`.
    pub fn on_launched(&mut self, now: u64) {
        if self.launches > 0 {
            self.restart_count = self.restart_count.saturating_add(1);
        }
        self.launches = self.launches.saturating_add(1);
        self.state = AppState::Running { since_us: now };
        self.watchdog = None;
    }

    /// The app crashed (or was killed by the watchdog) at `now`. Returns the backoff in µs.
    pub fn on_crash(&mut self, now: u64, watchdog: bool) -> u64 {
        if let AppState::Running { since_us } = self.state {
            if now.saturating_sub(since_us) >= self.policy.stable_after_us {
                self.consecutive_crashes = 0;
            }
        }
        self.consecutive_crashes = self.consecutive_crashes.saturating_add(1);
        self.crash_count = self.crash_count.saturating_add(1);
        self.reason = if watchdog { StartReason::Watchdog } else { StartReason::Crash };
        self.restart_code = 0;
        self.watchdog = None;
        let backoff = self.backoff_for(self.consecutive_crashes);
        self.state = AppState::Backoff { until_us: now.saturating_add(backoff) };
        backoff
    }

    /// Backoff before the restart that follows the `n`th consecutive crash (n >= 1).
    pub fn backoff_for(&self, n: u32) -> u64 {
        let shift = n.saturating_sub(1).min(40);
        self.policy.min_backoff_us.saturating_mul(1u64 << shift).min(self.policy.max_backoff_us)
    }

    /// The app asked to be restarted with `code`.
    pub fn on_restart_request(&mut self, code: u32) {
        self.reason = StartReason::Requested;
        self.restart_code = code;
        self.watchdog = None;
        self.state = AppState::LaunchPending;
    }

    /// Arms or re-arms the watchdog.
    pub fn watchdog_start(&mut self, now: u64, timeout_ms: u32) -> Status {
        if !(WATCHDOG_MIN_MS..=WATCHDOG_MAX_MS).contains(&timeout_ms) {
            return Status::InvalidArgument;
        }
        let t = timeout_ms as u64 * 1000;
        self.watchdog = Some((t, now.saturating_add(t)));
        Status::Ok
    }

    /// Feeds the watchdog. [`Status::Unavailable`] if it was never started.
    pub fn watchdog_kick(&mut self, now: u64) -> Status {
        match &mut self.watchdog {
            Some((t, deadline)) => {
                *deadline = now.saturating_add(*t);
                Status::Ok
            }
            None => Status::Unavailable,
        }
    }

    /// What to do at `now`.
    pub fn poll(&mut self, now: u64) -> Action {
        match self.state {
            AppState::NoImage => Action::None,
            AppState::LaunchPending => Action::Launch,
            AppState::Backoff { until_us } if now >= until_us => Action::Launch,
            AppState::Backoff { .. } => Action::None,
            AppState::Running { .. } => match self.watchdog {
                Some((_, deadline)) if now >= deadline => Action::KillForWatchdog,
                _ => Action::None,
            },
        }
    }

    /// The next time [`Supervisor::poll`] may return something other than [`Action::None`].
    pub fn next_deadline(&self) -> Option<u64> {
        match self.state {
            AppState::NoImage => None,
            AppState::LaunchPending => Some(0),
            AppState::Backoff { until_us } => Some(until_us),
            AppState::Running { .. } => self.watchdog.map(|(_, d)| d),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sup() -> Supervisor {
        Supervisor::new(Policy { min_backoff_us: 1_000, max_backoff_us: 8_000, stable_after_us: 100_000 }, 3)
    }

    #[test]
    fn cold_boot_launches_once() {
        let mut s = sup();
        assert_eq!(s.poll(0), Action::Launch);
        s.on_launched(5);
        assert_eq!(s.poll(10), Action::None);
        let bi = s.boot_info();
        assert_eq!(bi.reason, StartReason::ColdBoot as u32);
        assert_eq!(bi.restart_count, 0);
        assert_eq!(bi.visor_boot_count, 3);
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let mut s = sup();
        s.on_launched(0);
        let mut now = 10;
        let mut seen = [0u64; 6];
        for b in seen.iter_mut() {
            *b = s.on_crash(now, false);
            assert_eq!(s.poll(now + *b - 1), Action::None);
            assert_eq!(s.next_deadline(), Some(now + *b));
            assert_eq!(s.poll(now + *b), Action::Launch);
            now += *b;
            s.on_launched(now);
            now += 10;
        }
        assert_eq!(seen, [1_000, 2_000, 4_000, 8_000, 8_000, 8_000]);
        let bi = s.boot_info();
        assert_eq!(bi.reason, StartReason::Crash as u32);
        assert_eq!(bi.crash_count, 6);
        assert_eq!(bi.restart_count, 6);
    }

    #[test]
    fn a_stable_run_resets_the_series() {
        let mut s = sup();
        s.on_launched(0);
        assert_eq!(s.on_crash(10, false), 1_000);
        s.on_launched(2_000);
        assert_eq!(s.on_crash(3_000, false), 2_000);
        s.on_launched(5_000);
        assert_eq!(s.on_crash(5_000 + 100_000, false), 1_000);
    }

    #[test]
    fn requested_restart_is_immediate_and_keeps_the_code() {
        let mut s = sup();
        s.on_launched(0);
        s.on_restart_request(42);
        assert_eq!(s.poll(1), Action::Launch);
        s.on_launched(1);
        let bi = s.boot_info();
        assert_eq!(bi.reason, StartReason::Requested as u32);
        assert_eq!(bi.restart_code, 42);
        assert_eq!(bi.restart_count, 1);
        assert_eq!(bi.crash_count, 0);
    }

    #[test]
    fn watchdog_expires_unless_kicked() {
        let mut s = sup();
        s.on_launched(0);
        assert_eq!(s.watchdog_kick(0), Status::Unavailable);
        assert_eq!(s.watchdog_start(0, 5), Status::InvalidArgument);
        assert_eq!(s.watchdog_start(0, WATCHDOG_MAX_MS + 1), Status::InvalidArgument);
        assert_eq!(s.watchdog_start(0, 100), Status::Ok);
        assert_eq!(s.next_deadline(), Some(100_000));
        assert_eq!(s.watchdog_kick(90_000), Status::Ok);
        assert_eq!(s.poll(150_000), Action::None);
        assert_eq!(s.poll(190_000), Action::KillForWatchdog);
        s.on_crash(190_000, true);
        assert_eq!(s.boot_info().reason, StartReason::Watchdog as u32);
        // The watchdog is disarmed for the next run.
        s.on_launched(191_000);
        assert_eq!(s.poll(10_000_000), Action::None);
    }

    #[test]
    fn resuming_after_a_reset_keeps_counting_and_backing_off() {
        let mut s = sup();
        s.on_launched(0);
        s.on_crash(10, false);
        s.on_launched(2_000);
        s.on_crash(2_010, false);
        let carry = s.carry();
        assert_eq!(carry, Carry { restart_count: 1, crash_count: 2, consecutive_crashes: 2 });
        let mut r = Supervisor::resume_after_reset(s.policy(), 4, carry, 0);
        assert_eq!(r.poll(1_999), Action::None);
        assert_eq!(r.poll(2_000), Action::Launch);
        r.on_launched(2_000);
        let bi = r.boot_info();
        assert_eq!((bi.restart_count, bi.crash_count, bi.reason), (2, 2, StartReason::Crash as u32));
        assert_eq!(r.on_crash(3_000, false), 4_000, "the series continues");
    }

    #[test]
    fn no_image_never_launches() {
        let mut s = sup();
        s.on_no_image();
        assert_eq!(s.poll(u64::MAX), Action::None);
        assert_eq!(s.next_deadline(), None);
    }

    #[test]
    fn backoff_never_overflows() {
        let s =
            Supervisor::new(Policy { min_backoff_us: u64::MAX / 2, max_backoff_us: u64::MAX, stable_after_us: 1 }, 0);
        assert_eq!(s.backoff_for(u32::MAX), u64::MAX);
    }
}
