//! Reconnect backoff: exponential with full jitter, so a fleet that lost its server does not
//! come back in lock-step when it returns.

/// Backoff state for one connection.
#[derive(Clone, Debug)]
pub struct Backoff {
    min_ms: u32,
    max_ms: u32,
    attempt: u32,
    rng: u64,
}

impl Backoff {
    /// Delays grow from `min_ms` and double per failed attempt up to `max_ms`; each delay is
    /// drawn uniformly from `[ceiling / 2, ceiling]`. `seed` should differ between devices (e.g.
    /// derived from the device id and boot count).
    pub fn new(min_ms: u32, max_ms: u32, seed: u64) -> Self {
        Backoff { min_ms: min_ms.max(1), max_ms: max_ms.max(min_ms.max(1)), attempt: 0, rng: seed | 1 }
    }

    fn next_random(&mut self) -> u64 {
        // xorshift64*: plenty for jitter (not for cryptography).
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// The delay before the next attempt, in milliseconds; counts one more failure.
    pub fn next_delay_ms(&mut self) -> u32 {
        let ceiling = (self.min_ms as u64).saturating_mul(1 << self.attempt.min(31)).min(self.max_ms as u64);
        self.attempt = self.attempt.saturating_add(1);
        let low = ceiling / 2;
        (low + self.next_random() % (ceiling - low + 1)) as u32
    }

    /// A connection succeeded: start over at the minimum.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// Failed attempts since the last success.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_within_jitter_bounds_and_caps() {
        let mut b = Backoff::new(1000, 60_000, 42);
        let mut ceiling = 1000u32;
        for _ in 0..12 {
            let d = b.next_delay_ms();
            assert!(d >= ceiling / 2 && d <= ceiling, "{d} not in [{}, {ceiling}]", ceiling / 2);
            ceiling = (ceiling * 2).min(60_000);
        }
        b.reset();
        assert!(b.next_delay_ms() <= 1000);
    }

    #[test]
    fn different_seeds_spread_out() {
        let delays: [u32; 8] = core::array::from_fn(|i| Backoff::new(1000, 60_000, i as u64 * 7919).next_delay_ms());
        let distinct = delays.iter().filter(|d| delays.iter().filter(|e| e == d).count() == 1).count();
        assert!(distinct >= 6, "{delays:?}");
    }

    #[test]
    fn degenerate_parameters_do_not_panic() {
        let mut b = Backoff::new(0, 0, 0);
        for _ in 0..100 {
            assert!(b.next_delay_ms() <= 1);
        }
        let mut b = Backoff::new(u32::MAX, 1, 3);
        for _ in 0..40 {
            b.next_delay_ms();
        }
    }
}
