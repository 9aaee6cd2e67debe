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
//! * A restart the app asks for happens immediately, unless it is part of a **restart storm**:
//!   a request that follows [`Policy::restart_burst`] (3) others within
//!   [`Policy::restart_window_us`] (10 s) is delayed by a backoff that starts at
//!   [`Policy::min_backoff_us`] and doubles with every further storm request up to
//!   [`Policy::max_backoff_us`]; the storm is over once an instance ran for the window. The
//!   start reason stays `Requested` and no crash is counted.
//! * A run of [`Policy::stable_after_us`] ends the crash series at once ([`Supervisor::poll`]
//!   wakes up for it), so the counters handed over a reset say so too.
//! * **Quarantine**: when the series reaches [`Policy::quarantine_after`] consecutive crashes
//!   (faults, watchdog kills, unexplained resets), the app is not started again after its
//!   backoff but held ([`AppState::Quarantined`]) until the visor releases it
//!   ([`Supervisor::release_quarantine`]): the device core does that once it has asked the
//!   server for updates, or after [`Policy::quarantine_max_us`] without a check under way.
//! * An armed watchdog that is not kicked in time makes [`Supervisor::poll`] return
//!   [`Action::KillForWatchdog`]; the visor then stops the app and reports the crash.
//! * Every visor reset is described by a **run record** ([`handover::Record`]): the counters,
//!   what the app was doing and why the visor reset. [`Supervisor::resume`] continues from it:
//!   a reset while the app ran that nothing explains counts as a crash of the app.
//!
//! Next to the state machine, the visor's other pure decisions about a crash:
//! * [`crash`]: reading an exception's EXC_RETURN ([`ExcReturn`]) and building the app's
//!   [`keel_abi::CrashReport`] from its exception frame ([`crash::crash_report`]).
//! * [`handover`]: the run record kept in warm RAM across every reset
//!   ([`handover::Record::encode`], [`handover::Record::decode`]).
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
    /// Consecutive crashes of one series after which the app is quarantined (0: never).
    pub quarantine_after: u32,
    /// Longest quarantine, counted while no update check is under way (the device core keeps
    /// this clock; an offline device runs its app again after it).
    pub quarantine_max_us: u64,
    /// Requested restarts allowed within [`Policy::restart_window_us`] before the next one is
    /// delayed (at most [`RESTART_HISTORY`]).
    pub restart_burst: u32,
    /// The window of [`Policy::restart_burst`].
    pub restart_window_us: u64,
}

/// Requested restarts remembered for the storm rule.
pub const RESTART_HISTORY: usize = 8;

impl Default for Policy {
    fn default() -> Self {
        Policy {
            min_backoff_us: 1_000_000,
            max_backoff_us: 64_000_000,
            stable_after_us: 300_000_000,
            quarantine_after: 3,
            quarantine_max_us: 120_000_000,
            restart_burst: 3,
            restart_window_us: 10_000_000,
        }
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
    /// The app crashed (or asked for a restart in a storm) and waits for its backoff to end.
    Backoff {
        /// Time of the restart.
        until_us: u64,
    },
    /// The app crashed [`Policy::quarantine_after`] times in a row: it is held until
    /// [`Supervisor::release_quarantine`], then waits for what is left of its backoff.
    Quarantined {
        /// When the backoff of the last crash ends.
        backoff_until_us: u64,
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
    /// Times of the latest requested restarts (a ring of the newest `requests_n`).
    requests: [u64; RESTART_HISTORY],
    requests_n: usize,
    /// Requests delayed in the current storm (drives its backoff).
    storm: u32,
    /// Since when a debugger holds the app halted: its watchdog does not run meanwhile.
    halted_since: Option<u64>,
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
            requests: [0; RESTART_HISTORY],
            requests_n: 0,
            storm: 0,
            halted_since: None,
        }
    }

    /// A supervisor continuing after any reset, from the run record the previous boot kept
    /// (see [`handover`]). Returns it and whether the reset was counted as a crash of the app:
    /// the app was running and the record names no cause, or a cause that is not the app's
    /// own (a visor fault or the secure watchdog while the app ran count too: a reset loop
    /// must end in quarantine whoever is to blame). A fault or hang in an app handler was
    /// counted before the reset; a reset to start the app is not a crash.
    pub fn resume(policy: Policy, visor_boot_count: u32, rec: &handover::Record, now: u64) -> (Self, bool) {
        use handover::{ResetCause, RunState};
        let mut s = Supervisor::new(policy, visor_boot_count);
        let c = rec.carry;
        s.restart_count = c.restart_count;
        s.crash_count = c.crash_count;
        s.consecutive_crashes = c.consecutive_crashes;
        s.reason = StartReason::from_u32(rec.start_reason).unwrap_or(StartReason::ColdBoot);
        s.restart_code = rec.restart_code;
        s.launches = u32::from(rec.app != RunState::Stopped || c.restart_count > 0 || c.crash_count > 0);
        if rec.app == RunState::Running && rec.reset_cause.charged_to_running_app() {
            s.launches = 1;
            s.state = AppState::Running { since_us: now };
            s.on_crash(now, false);
            return (s, true);
        }
        let backoff_until = |s: &mut Supervisor| {
            s.consecutive_crashes = s.consecutive_crashes.max(1);
            now.saturating_add(s.backoff_for(s.consecutive_crashes))
        };
        s.state = match (rec.app, rec.reset_cause) {
            (RunState::Quarantined, _) => AppState::Quarantined { backoff_until_us: backoff_until(&mut s) },
            (_, ResetCause::StartApp) => AppState::LaunchPending,
            (RunState::Backoff, _) | (_, ResetCause::AppFault | ResetCause::AppHung) => {
                AppState::Backoff { until_us: backoff_until(&mut s) }
            }
            _ => AppState::LaunchPending,
        };
        (s, false)
    }

    /// The run record of now (no reset cause; the shell sets one before a reset it makes).
    pub fn run_record(&self, last_crash: Option<keel_abi::CrashReport>) -> handover::Record {
        use handover::RunState;
        handover::Record {
            carry: self.carry(),
            app: match self.state {
                AppState::NoImage | AppState::LaunchPending => RunState::Stopped,
                AppState::Running { .. } => RunState::Running,
                AppState::Backoff { .. } => RunState::Backoff,
                AppState::Quarantined { .. } => RunState::Quarantined,
            },
            start_reason: self.reason as u32,
            restart_code: self.restart_code,
            reset_cause: handover::ResetCause::None,
            last_crash,
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
        self.halted_since = None;
        if self.launches > 0 {
            self.restart_count = self.restart_count.saturating_add(1);
        }
        self.launches = self.launches.saturating_add(1);
        self.state = AppState::Running { since_us: now };
        self.watchdog = None;
    }

    /// The app crashed (or was killed by the watchdog) at `now`. Returns the backoff in µs.
    pub fn on_crash(&mut self, now: u64, watchdog: bool) -> u64 {
        self.halted_since = None;
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
        let until_us = now.saturating_add(backoff);
        let q = self.policy.quarantine_after;
        self.state = if q > 0 && self.consecutive_crashes >= q {
            AppState::Quarantined { backoff_until_us: until_us }
        } else {
            AppState::Backoff { until_us }
        };
        backoff
    }

    /// True while the app is held in quarantine.
    pub fn is_quarantined(&self) -> bool {
        matches!(self.state, AppState::Quarantined { .. })
    }

    /// Consecutive crashes of the current series.
    pub fn consecutive_crashes(&self) -> u32 {
        self.consecutive_crashes
    }

    /// Ends a quarantine: the app starts once the backoff of its last crash is over. False if
    /// it was not quarantined.
    pub fn release_quarantine(&mut self) -> bool {
        match self.state {
            AppState::Quarantined { backoff_until_us } => {
                self.state = AppState::Backoff { until_us: backoff_until_us };
                true
            }
            _ => false,
        }
    }

    /// Another app (version) takes over: a new crash series and no restart storm; a quarantine
    /// ends (the state is otherwise kept: a pending backoff still runs out).
    pub fn new_series(&mut self) {
        self.consecutive_crashes = 0;
        self.storm = 0;
        self.requests_n = 0;
        self.release_quarantine();
    }

    /// The visor restarts the app into another version (an update installed, applied or rolled
    /// back): at once, as a new series, never rate-limited. The app sees reason `Requested`
    /// with code 0.
    pub fn on_switch(&mut self) {
        self.halted_since = None;
        self.new_series();
        self.reason = StartReason::Requested;
        self.restart_code = 0;
        self.watchdog = None;
        self.state = AppState::LaunchPending;
    }

    /// Backoff before the restart that follows the `n`th consecutive crash (n >= 1).
    pub fn backoff_for(&self, n: u32) -> u64 {
        let shift = n.saturating_sub(1).min(40);
        self.policy.min_backoff_us.saturating_mul(1u64 << shift).min(self.policy.max_backoff_us)
    }

    /// The app asked at `now` to be restarted with `code`. Returns the delay (µs): 0, or the
    /// storm backoff when this request follows [`Policy::restart_burst`] others within
    /// [`Policy::restart_window_us`] (see the crate docs). The app is stopped either way.
    pub fn on_restart_request(&mut self, now: u64, code: u32) -> u64 {
        let window = self.policy.restart_window_us;
        if let AppState::Running { since_us } = self.state {
            if now.saturating_sub(since_us) >= window {
                self.storm = 0; // a calm instance: the storm is over
            }
        }
        let recent = self.requests[..self.requests_n].iter().filter(|&&t| now.saturating_sub(t) < window).count();
        if self.requests_n < RESTART_HISTORY {
            self.requests_n += 1;
        } else {
            self.requests.rotate_left(1);
        }
        self.requests[self.requests_n - 1] = now;
        self.reason = StartReason::Requested;
        self.restart_code = code;
        self.watchdog = None;
        let burst = (self.policy.restart_burst as usize).min(RESTART_HISTORY);
        if burst > 0 && recent >= burst {
            self.storm = self.storm.saturating_add(1);
            let delay = self.backoff_for(self.storm);
            self.state = AppState::Backoff { until_us: now.saturating_add(delay) };
            delay
        } else {
            self.state = AppState::LaunchPending;
            0
        }
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

    /// A debugger halted the app at `now`: its watchdog stops counting until [`Supervisor::unhalt`].
    pub fn halt(&mut self, now: u64) {
        self.halted_since.get_or_insert(now);
    }

    /// The debugger let the app run again at `now`: the watchdog and the series' clock continue
    /// where they stopped (a halt neither kills the app nor ends a crash series).
    pub fn unhalt(&mut self, now: u64) {
        let Some(since) = self.halted_since.take() else { return };
        let d = now.saturating_sub(since);
        if let Some((_, deadline)) = self.watchdog.as_mut() {
            *deadline = deadline.saturating_add(d);
        }
        if let AppState::Running { since_us } = &mut self.state {
            *since_us = since_us.saturating_add(d);
        }
    }

    /// True while a debugger holds the app halted.
    pub fn is_halted(&self) -> bool {
        self.halted_since.is_some()
    }

    /// When a running app's series (or restart storm) ends, if one is in progress.
    fn stable_at(&self) -> Option<u64> {
        match self.state {
            AppState::Running { since_us } if self.consecutive_crashes > 0 || self.storm > 0 => {
                Some(since_us.saturating_add(self.policy.stable_after_us))
            }
            _ => None,
        }
    }

    /// What to do at `now`.
    pub fn poll(&mut self, now: u64) -> Action {
        if self.stable_at().is_some_and(|t| now >= t) {
            self.consecutive_crashes = 0;
            self.storm = 0;
        }
        match self.state {
            AppState::NoImage | AppState::Quarantined { .. } => Action::None,
            AppState::LaunchPending => Action::Launch,
            AppState::Backoff { until_us } if now >= until_us => Action::Launch,
            AppState::Backoff { .. } => Action::None,
            AppState::Running { .. } => match self.watchdog {
                Some((_, deadline)) if now >= deadline && self.halted_since.is_none() => Action::KillForWatchdog,
                _ => Action::None,
            },
        }
    }

    /// The next time [`Supervisor::poll`] may return something other than [`Action::None`] (or
    /// end a crash series).
    pub fn next_deadline(&self) -> Option<u64> {
        match self.state {
            AppState::NoImage | AppState::Quarantined { .. } => None,
            AppState::LaunchPending => Some(0),
            AppState::Backoff { until_us } => Some(until_us),
            AppState::Running { .. } if self.halted_since.is_some() => None,
            AppState::Running { .. } => [self.watchdog.map(|(_, d)| d), self.stable_at()].into_iter().flatten().min(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sup() -> Supervisor {
        Supervisor::new(
            Policy {
                min_backoff_us: 1_000,
                max_backoff_us: 8_000,
                stable_after_us: 100_000,
                quarantine_after: 0,
                ..Policy::default()
            },
            3,
        )
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
        assert_eq!(s.on_restart_request(0, 42), 0);
        assert_eq!(s.poll(1), Action::Launch);
        s.on_launched(1);
        let bi = s.boot_info();
        assert_eq!(bi.reason, StartReason::Requested as u32);
        assert_eq!(bi.restart_code, 42);
        assert_eq!(bi.restart_count, 1);
        assert_eq!(bi.crash_count, 0);
    }

    #[test]
    fn a_halted_app_is_not_killed_by_its_watchdog() {
        let mut s = sup();
        assert_eq!(s.poll(0), Action::Launch);
        s.on_launched(0);
        assert_eq!(s.watchdog_start(0, 100), Status::Ok);
        s.halt(50_000);
        assert_eq!(s.next_deadline(), None, "no wake-ups while halted");
        assert_eq!(s.poll(10_000_000), Action::None);
        s.unhalt(10_000_000);
        // 50 ms were left when it halted.
        assert_eq!(s.poll(10_049_999), Action::None);
        assert_eq!(s.poll(10_050_000), Action::KillForWatchdog);
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
        let s = Supervisor::new(
            Policy { min_backoff_us: u64::MAX / 2, max_backoff_us: u64::MAX, stable_after_us: 1, ..Policy::default() },
            0,
        );
        assert_eq!(s.backoff_for(u32::MAX), u64::MAX);
    }

    fn quarantining() -> Supervisor {
        Supervisor::new(
            Policy { min_backoff_us: 1_000, max_backoff_us: 8_000, stable_after_us: 100_000, ..Policy::default() },
            1,
        )
    }

    #[test]
    fn a_restart_storm_is_delayed_with_a_doubling_backoff_and_counts_no_crash() {
        let mut s = quarantining();
        let mut now = 0;
        s.on_launched(now);
        let mut delays = [0u64; 8];
        for slot in delays.iter_mut() {
            now += 10;
            let d = s.on_restart_request(now, 0xDEAD);
            *slot = d;
            assert_eq!(s.poll(now + d.saturating_sub(1)), if d == 0 { Action::Launch } else { Action::None });
            now += d;
            assert_eq!(s.poll(now), Action::Launch);
            s.on_launched(now);
        }
        // Three within 10 s go at once; the fourth and later wait 1, 2, 4, 8 (the cap), 8 ms.
        assert_eq!(delays, [0, 0, 0, 1_000, 2_000, 4_000, 8_000, 8_000]);
        let bi = s.boot_info();
        assert_eq!((bi.reason, bi.restart_code, bi.crash_count), (StartReason::Requested as u32, 0xDEAD, 0));
        assert_eq!(bi.restart_count, 8);
        assert_eq!(s.consecutive_crashes(), 0);
    }

    #[test]
    fn restarts_spread_out_or_after_a_calm_run_are_not_a_storm() {
        let mut s = quarantining();
        let window = s.policy().restart_window_us;
        let mut now = 0;
        s.on_launched(now);
        // One restart every 4 s: never more than 3 in 10 s.
        for _ in 0..10 {
            now += 4_000_000;
            assert_eq!(s.on_restart_request(now, 0), 0);
            s.on_launched(now);
        }
        // A storm, then an instance that runs for the window: the next burst starts from zero.
        for _ in 0..5 {
            let d = s.on_restart_request(now, 0);
            now += d;
            s.on_launched(now);
        }
        now += window;
        for _ in 0..3 {
            assert_eq!(s.on_restart_request(now, 0), 0);
            s.on_launched(now);
        }
        assert_eq!(s.on_restart_request(now, 0), 1_000, "the fourth in the window again waits the minimum");
    }

    #[test]
    fn a_stable_run_ends_the_series_at_once_so_a_record_says_so() {
        let mut s = quarantining();
        s.on_launched(0);
        s.on_crash(10, false);
        s.on_launched(2_000);
        assert_eq!(s.next_deadline(), Some(102_000), "wakes up when the run becomes stable");
        assert_eq!(s.poll(101_999), Action::None);
        assert_eq!(s.consecutive_crashes(), 1);
        assert_eq!(s.poll(102_000), Action::None);
        assert_eq!(s.consecutive_crashes(), 0);
        assert_eq!(s.run_record(None).carry.consecutive_crashes, 0);
        assert_eq!(s.next_deadline(), None);
    }

    #[test]
    fn the_third_crash_in_a_row_quarantines_until_released() {
        let mut s = quarantining();
        s.on_launched(0);
        assert_eq!(s.on_crash(10, false), 1_000);
        s.on_launched(1_010);
        assert_eq!(s.on_crash(1_020, true), 2_000);
        s.on_launched(3_020);
        assert!(!s.is_quarantined());
        assert_eq!(s.on_crash(3_030, false), 4_000);
        assert!(s.is_quarantined());
        assert_eq!(s.state(), AppState::Quarantined { backoff_until_us: 7_030 });
        assert_eq!(s.poll(u64::MAX), Action::None, "held whatever the time");
        assert_eq!(s.next_deadline(), None);
        assert_eq!(s.run_record(None).app, handover::RunState::Quarantined);
        // Released early: the rest of the backoff still runs out.
        assert!(s.release_quarantine());
        assert!(!s.release_quarantine());
        assert_eq!(s.poll(7_029), Action::None);
        assert_eq!(s.poll(7_030), Action::Launch);
        s.on_launched(7_030);
        // A fourth crash in the same series quarantines again.
        s.on_crash(7_040, false);
        assert!(s.is_quarantined());
        // Another version takes over: a new series, no quarantine.
        s.on_switch();
        assert_eq!((s.state(), s.consecutive_crashes()), (AppState::LaunchPending, 0));
    }

    fn record(app: handover::RunState, cause: handover::ResetCause, consecutive: u32) -> handover::Record {
        handover::Record {
            carry: Carry { restart_count: 4, crash_count: consecutive, consecutive_crashes: consecutive },
            app,
            start_reason: StartReason::Crash as u32,
            restart_code: 0,
            reset_cause: cause,
            last_crash: None,
        }
    }

    #[test]
    fn an_unexplained_reset_while_the_app_ran_is_a_crash_of_the_series() {
        use handover::{ResetCause, RunState};
        let p = quarantining().policy();
        let (mut s, counted) = Supervisor::resume(p, 9, &record(RunState::Running, ResetCause::None, 1), 50);
        assert!(counted);
        assert_eq!(s.state(), AppState::Backoff { until_us: 50 + 2_000 }, "the second of the series");
        assert_eq!(s.poll(2_050), Action::Launch);
        s.on_launched(2_050);
        let bi = s.boot_info();
        assert_eq!((bi.reason, bi.crash_count, bi.restart_count), (StartReason::Crash as u32, 2, 5));
        // The third one quarantines; so do a visor fault and the secure watchdog while it ran.
        for cause in [ResetCause::None, ResetCause::VisorFault { pc: 4 }, ResetCause::SecureWatchdog] {
            let (s, counted) = Supervisor::resume(p, 9, &record(RunState::Running, cause, 2), 0);
            assert!(counted && s.is_quarantined(), "{cause:?}");
        }
    }

    #[test]
    fn a_reset_to_start_the_app_or_one_already_counted_is_not_a_crash() {
        use handover::{ResetCause, RunState};
        let p = quarantining().policy();
        let (s, counted) = Supervisor::resume(p, 9, &record(RunState::Running, ResetCause::StartApp, 2), 0);
        assert!(!counted);
        assert_eq!((s.state(), s.consecutive_crashes()), (AppState::LaunchPending, 2));
        let (s, counted) = Supervisor::resume(p, 9, &record(RunState::Backoff, ResetCause::AppFault, 2), 0);
        assert!(!counted);
        assert_eq!(s.state(), AppState::Backoff { until_us: 2_000 });
        // Not running: nothing to charge (e.g. a reset while the app waited for its backoff).
        let (s, counted) = Supervisor::resume(p, 9, &record(RunState::Backoff, ResetCause::None, 1), 0);
        assert!(!counted);
        assert_eq!(s.state(), AppState::Backoff { until_us: 1_000 });
        let (s, counted) = Supervisor::resume(p, 9, &record(RunState::Stopped, ResetCause::None, 0), 0);
        assert!(!counted);
        assert_eq!(s.state(), AppState::LaunchPending);
        // A quarantine survives any reset, a reset to start the app included.
        for cause in [ResetCause::None, ResetCause::StartApp, ResetCause::VisorFault { pc: 0 }] {
            let (s, counted) = Supervisor::resume(p, 9, &record(RunState::Quarantined, cause, 3), 0);
            assert!(!counted && s.is_quarantined(), "{cause:?}");
        }
        // A version-1 hand-over resumes like resume_after_reset.
        let carry = Carry { restart_count: 1, crash_count: 2, consecutive_crashes: 2 };
        let (s, _) = Supervisor::resume(p, 9, &handover::Record::from((carry, Default::default())), 0);
        assert_eq!(s.state(), Supervisor::resume_after_reset(p, 9, carry, 0).state());
    }
}
