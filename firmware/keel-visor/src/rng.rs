//! Randomness for the secure channel's ephemeral keys.
//!
//! The reference board has no hardware random number generator, so the visor uses a
//! deterministic generator (SHA-256 in counter mode) seeded from secrets and state that never
//! repeat together: the factory device key, the persistent boot counter, and the cycle counter
//! when the seed is taken. Ephemeral keys therefore differ on every connection of every boot.
//! Limitation: someone who learns the device key and the boot count can recompute them. On
//! silicon with a TRNG (STM32U5 has one) the board layer feeds it in instead.

use clatter::rand_core::{CryptoRng, Error, RngCore};
use sha2::{Digest, Sha256};

use crate::board;
use crate::global::Global;

struct State {
    seed: [u8; 32],
    counter: u64,
}

static STATE: Global<State> = Global::new(State { seed: [0; 32], counter: 0 });

/// Seeds the generator.
pub fn seed(device_key: &[u8; 32], boot_count: u32) {
    let mut h = Sha256::new();
    h.update(b"keel-visor-drbg-v1");
    h.update(device_key);
    h.update(boot_count.to_le_bytes());
    h.update(board::clock_cycles().to_le_bytes());
    let seed: [u8; 32] = h.finalize().into();
    STATE.with(|s| {
        s.seed = seed;
        s.counter = 0;
    });
}

/// The generator as a `rand_core` RNG (what clatter asks for).
#[derive(Clone, Copy, Default)]
pub struct VisorRng;

impl RngCore for VisorRng {
    fn next_u32(&mut self) -> u32 {
        let mut b = [0u8; 4];
        self.fill_bytes(&mut b);
        u32::from_le_bytes(b)
    }
    fn next_u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        self.fill_bytes(&mut b);
        u64::from_le_bytes(b)
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for chunk in dest.chunks_mut(32) {
            let block: [u8; 32] = STATE.with(|s| {
                s.counter += 1;
                let mut h = Sha256::new();
                h.update(s.seed);
                h.update(s.counter.to_le_bytes());
                h.update(board::clock_cycles().to_le_bytes());
                h.finalize().into()
            });
            chunk.copy_from_slice(&block[..chunk.len()]);
        }
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl CryptoRng for VisorRng {}
