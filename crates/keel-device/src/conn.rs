//! The connection state machine: waiting for an address → connecting → handshaking → online,
//! and back to a jittered backoff whenever the connection fails or the server falls silent.
//!
//! Pure bookkeeping: the caller opens and closes the TCP connection when told to
//! ([`Step::Connect`], [`Step::Close`]) and reports what happened. Host-tested.

use keel_link::backoff::Backoff;
pub use keel_link::device::SERVER_SILENCE_TIMEOUT_US;

/// Where the connection is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// The device has no server configured (not provisioned): the network stays off.
    Off,
    /// No IP address yet (or it was lost).
    WaitingForAddress,
    /// A TCP connection is being opened.
    Connecting,
    /// TCP is up; the secure channel is being set up.
    Handshaking,
    /// The secure channel is up.
    Online,
    /// Waiting before the next attempt.
    Backoff {
        /// When to try again (µs).
        until_us: u64,
    },
}

/// What the caller must do with the TCP connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Nothing.
    None,
    /// Open a TCP connection to the server.
    Connect,
    /// Close (abort) the TCP connection; the state machine is in backoff.
    Close,
}

/// Why a connection ended, as reported in the visor's `LinkLost` event.
pub use keel_proto::event::LinkLossReason as LossReason;

/// The connection state machine.
#[derive(Clone, Debug)]
pub struct Connection {
    state: State,
    backoff: Backoff,
    last_rx_us: u64,
}

impl Connection {
    /// A connection that waits for an address (`enabled`), or stays off. Reconnect delays start
    /// at `min_ms` and double up to 60 s; `seed` varies their jitter between devices and boots.
    pub fn new(enabled: bool, seed: u64, min_ms: u32) -> Self {
        Connection {
            state: if enabled { State::WaitingForAddress } else { State::Off },
            backoff: Backoff::new(min_ms, 60_000, seed),
            last_rx_us: 0,
        }
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// True while the secure channel is up.
    pub fn is_online(&self) -> bool {
        self.state == State::Online
    }

    /// True while a TCP connection exists (handshaking or online).
    pub fn is_connected(&self) -> bool {
        matches!(self.state, State::Handshaking | State::Online)
    }

    /// An address was acquired: connect if waiting for one.
    pub fn address_acquired(&mut self) -> Step {
        if self.state == State::WaitingForAddress {
            self.state = State::Connecting;
            Step::Connect
        } else {
            Step::None
        }
    }

    /// The address was lost: whatever was open is closed; wait for a new one.
    pub fn address_lost(&mut self) -> Step {
        match self.state {
            State::Off | State::WaitingForAddress => Step::None,
            _ => {
                self.state = State::WaitingForAddress;
                Step::Close
            }
        }
    }

    /// TCP is up: the handshake starts; silence is measured from now.
    pub fn tcp_connected(&mut self, now: u64) -> bool {
        if self.state != State::Connecting {
            return false;
        }
        self.state = State::Handshaking;
        self.last_rx_us = now;
        true
    }

    /// Something arrived from the server.
    pub fn received(&mut self, now: u64) {
        self.last_rx_us = now;
    }

    /// The server's welcome arrived: online, and the backoff starts over.
    pub fn welcomed(&mut self) {
        if self.state == State::Handshaking {
            self.state = State::Online;
            self.backoff.reset();
        }
    }

    /// The connection failed or was dropped: back off. Returns the delay (ms), or `None` if
    /// there was no connection to fail.
    pub fn failed(&mut self, now: u64) -> Option<u32> {
        match self.state {
            State::Connecting | State::Handshaking | State::Online => {
                let d = self.backoff.next_delay_ms();
                self.state = State::Backoff { until_us: now.saturating_add(d as u64 * 1000) };
                Some(d)
            }
            _ => None,
        }
    }

    /// Timers: the end of a backoff ([`Step::Connect`]) or a silent server ([`Step::Close`],
    /// after which the caller reports [`Connection::failed`]).
    pub fn poll(&mut self, now: u64) -> Step {
        match self.state {
            State::Backoff { until_us } if now >= until_us => {
                self.state = State::Connecting;
                Step::Connect
            }
            State::Handshaking | State::Online if self.silent(now) => Step::Close,
            _ => Step::None,
        }
    }

    fn silent(&self, now: u64) -> bool {
        now.saturating_sub(self.last_rx_us) >= SERVER_SILENCE_TIMEOUT_US
    }

    /// Microseconds since the server was last heard.
    pub fn silence_us(&self, now: u64) -> u64 {
        now.saturating_sub(self.last_rx_us)
    }

    /// When [`Connection::poll`] next has something to do.
    pub fn poll_at(&self) -> Option<u64> {
        match self.state {
            State::Backoff { until_us } => Some(until_us),
            State::Handshaking | State::Online => Some(self.last_rx_us.saturating_add(SERVER_SILENCE_TIMEOUT_US)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000;

    #[test]
    fn a_device_without_a_server_never_connects() {
        let mut c = Connection::new(false, 1, 1000);
        assert_eq!(c.address_acquired(), Step::None);
        assert_eq!(c.poll(u64::MAX), Step::None);
        assert_eq!(c.poll_at(), None);
        assert_eq!(c.state(), State::Off);
    }

    #[test]
    fn address_then_tcp_then_welcome_is_online() {
        let mut c = Connection::new(true, 1, 1000);
        assert_eq!(c.poll_at(), None, "nothing to time while waiting for an address");
        assert_eq!(c.address_acquired(), Step::Connect);
        assert_eq!(c.address_acquired(), Step::None, "a second address does not open a second connection");
        assert!(c.tcp_connected(5 * S));
        assert_eq!(c.state(), State::Handshaking);
        c.welcomed();
        assert!(c.is_online());
        assert_eq!(c.poll_at(), Some(5 * S + SERVER_SILENCE_TIMEOUT_US));
    }

    #[test]
    fn a_silent_server_is_dropped_after_the_timeout_and_retried_after_backoff() {
        let mut c = Connection::new(true, 7, 1000);
        c.address_acquired();
        c.tcp_connected(0);
        c.welcomed();
        c.received(10 * S);
        assert_eq!(c.poll(10 * S + SERVER_SILENCE_TIMEOUT_US - 1), Step::None);
        assert_eq!(c.poll(10 * S + SERVER_SILENCE_TIMEOUT_US), Step::Close);
        let now = 10 * S + SERVER_SILENCE_TIMEOUT_US;
        let d = c.failed(now).expect("a connection to fail") as u64;
        assert!((500..=1000).contains(&d), "first delay within the first ceiling: {d} ms");
        let until = now + d * 1000;
        assert_eq!(c.state(), State::Backoff { until_us: until });
        assert_eq!(c.poll_at(), Some(until));
        assert_eq!(c.poll(until - 1), Step::None);
        assert_eq!(c.poll(until), Step::Connect);
        assert_eq!(c.state(), State::Connecting);
    }

    #[test]
    fn a_server_that_never_answers_the_handshake_is_dropped_too() {
        let mut c = Connection::new(true, 7, 1000);
        c.address_acquired();
        c.tcp_connected(3 * S);
        assert_eq!(c.poll(3 * S + SERVER_SILENCE_TIMEOUT_US), Step::Close);
    }

    #[test]
    fn backoff_doubles_on_repeated_failures_and_resets_once_online() {
        let mut c = Connection::new(true, 99, 1000);
        c.address_acquired();
        let mut ceilings = [0u32; 8];
        let mut now = 0;
        for slot in ceilings.iter_mut() {
            let d = c.failed(now).unwrap();
            *slot = d;
            now += d as u64 * 1000;
            assert_eq!(c.poll(now), Step::Connect);
        }
        // Each delay lies in [ceiling/2, ceiling] with the ceiling doubling from 1 s to 60 s.
        for (i, d) in ceilings.iter().enumerate() {
            let ceiling = (1000u32 << i).min(60_000);
            assert!((ceiling / 2..=ceiling).contains(d), "attempt {i}: {d} ms");
        }
        c.tcp_connected(now);
        c.welcomed();
        let d = c.failed(now).unwrap();
        assert!(d <= 1000, "online resets the backoff: {d} ms");
    }

    #[test]
    fn losing_the_address_closes_and_waits_for_a_new_one() {
        let mut c = Connection::new(true, 1, 1000);
        c.address_acquired();
        c.tcp_connected(0);
        assert_eq!(c.address_lost(), Step::Close);
        assert_eq!(c.state(), State::WaitingForAddress);
        assert_eq!(c.failed(1), None, "no connection left to fail");
        assert_eq!(c.address_acquired(), Step::Connect);
    }

    #[test]
    fn failures_outside_a_connection_are_ignored() {
        let mut c = Connection::new(true, 1, 1000);
        assert_eq!(c.failed(0), None);
        assert!(!c.tcp_connected(0), "TCP up without having asked for it");
        assert_eq!(c.state(), State::WaitingForAddress);
    }
}
