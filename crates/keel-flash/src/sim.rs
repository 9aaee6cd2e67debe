//! A host flash simulator that loses power at a chosen operation (feature `sim`).
//!
//! [`SimFlash`] is a [`Medium`] in RAM that counts every write (program operation) and erase.
//! It can cut the power at operation `n`: either just before it ([`CutMode::Before`]) or in the
//! middle of it ([`CutMode::Torn`]). A torn program leaves the units before a random point
//! written, one unit with a random subset of its bits programmed, and the rest untouched; a torn
//! erase leaves a random prefix of the page erased, one unit with a random subset of its bits
//! erased, and the rest untouched. This is what real NOR flash can be left with, and it goes
//! further than MCUboot's simulator, which only stops between whole operations. After the cut
//! every write and erase fails with [`Fault`] until [`SimFlash::power_on`].
//!
//! Its [`Geometry`] is the reference board's unless made with [`SimFlash::with_geometry`]; the
//! torn unit is a program unit of that geometry.
//!
//! Written here because no maintained crate does this (see docs/flash-layout.md).

extern crate std;

use std::vec;
use std::vec::Vec;

use crate::{Fault, Geometry, Medium, ERASED};

/// Where in an operation the power goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CutMode {
    /// Before the operation starts: it has no effect.
    Before,
    /// In the middle: partly done, with one torn unit.
    Torn,
}

/// Simulated flash contents with power-cut injection.
pub struct SimFlash {
    mem: Vec<u8>,
    ops: u64,
    cut: Option<(u64, CutMode)>,
    powered: bool,
    rng: u64,
    geometry: Geometry,
}

impl Clone for SimFlash {
    fn clone(&self) -> Self {
        SimFlash { mem: self.mem.clone(), ..*self }
    }

    /// Copies into the existing buffer when the sizes match (a test that restores a snapshot
    /// thousands of times does not allocate megabytes each time).
    fn clone_from(&mut self, source: &Self) {
        self.mem.clone_from(&source.mem);
        let SimFlash { ops, cut, powered, rng, geometry, .. } = *source;
        (self.ops, self.cut, self.powered, self.rng, self.geometry) = (ops, cut, powered, rng, geometry);
    }
}

impl SimFlash {
    /// Erased flash of `size` bytes, of the reference geometry.
    pub fn new(size: u32) -> Self {
        SimFlash::from_bytes(vec![ERASED; size as usize])
    }

    /// Erased flash of `size` bytes with pages and program units of `geometry`.
    pub fn with_geometry(size: u32, geometry: Geometry) -> Self {
        SimFlash::from_bytes_with_geometry(vec![ERASED; size as usize], geometry)
    }

    /// Flash with these contents, of the reference geometry.
    pub fn from_bytes(mem: Vec<u8>) -> Self {
        SimFlash::from_bytes_with_geometry(mem, Geometry::REFERENCE)
    }

    /// Flash with these contents and this geometry.
    pub fn from_bytes_with_geometry(mem: Vec<u8>, geometry: Geometry) -> Self {
        SimFlash { mem, ops: 0, cut: None, powered: true, rng: 0x9E37_79B9_7F4A_7C15, geometry }
    }

    /// The contents.
    pub fn bytes(&self) -> &[u8] {
        &self.mem
    }

    /// Writes and erases attempted so far (including the one the power was cut in).
    pub fn ops(&self) -> u64 {
        self.ops
    }

    /// Cuts the power at operation number `op` (0-based, counted by [`Self::ops`]); `seed`
    /// chooses where a torn operation stops and which bits of the torn unit flipped.
    pub fn cut_at(&mut self, op: u64, mode: CutMode, seed: u64) {
        self.cut = Some((op, mode));
        self.rng = seed.wrapping_mul(0x2545_F491_4F6C_DD1D) | 1;
    }

    /// True while the power is on.
    pub fn powered(&self) -> bool {
        self.powered
    }

    /// Restores power (the next boot); no further cut is scheduled.
    pub fn power_on(&mut self) {
        self.powered = true;
        self.cut = None;
    }

    fn next_random(&mut self) -> u64 {
        // xorshift64*
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Starts an operation: `Ok(None)` to do it fully, `Ok(Some(()))` to tear it, `Err` if the
    /// power is (now) off.
    fn begin(&mut self) -> Result<bool, Fault> {
        if !self.powered {
            return Err(Fault);
        }
        let n = self.ops;
        self.ops += 1;
        match self.cut {
            Some((at, mode)) if at == n => {
                self.powered = false;
                match mode {
                    CutMode::Before => Err(Fault),
                    CutMode::Torn => Ok(true),
                }
            }
            _ => Ok(false),
        }
    }

    /// Splits `len` bytes at a random unit boundary for a torn operation: (whole units done,
    /// offset of the torn unit's end).
    fn tear_point(&mut self, len: usize) -> usize {
        let unit = self.unit();
        let units = len.div_ceil(unit).max(1);
        (self.next_random() % units as u64) as usize * unit
    }

    fn unit(&self) -> usize {
        self.geometry.program_unit() as usize
    }
}

impl Medium for SimFlash {
    fn capacity(&self) -> u32 {
        self.mem.len() as u32
    }

    fn geometry(&self) -> Geometry {
        self.geometry
    }

    fn read(&self, offset: u32, buf: &mut [u8]) {
        let o = offset as usize;
        buf.copy_from_slice(&self.mem[o..o + buf.len()]);
    }

    fn write(&mut self, offset: u32, data: &[u8]) -> Result<(), Fault> {
        let o = offset as usize;
        if !self.begin()? {
            self.mem[o..o + data.len()].copy_from_slice(data);
            return Ok(());
        }
        let done = self.tear_point(data.len());
        self.mem[o..o + done].copy_from_slice(&data[..done]);
        let end = (done + self.unit()).min(data.len());
        for (i, &target) in data.iter().enumerate().take(end).skip(done) {
            // Programming clears bits: a torn unit has some of its target zeros, not all.
            let keep_one = self.next_random() as u8;
            self.mem[o + i] &= target | keep_one;
        }
        Err(Fault)
    }

    fn erase(&mut self, offset: u32, len: u32) -> Result<(), Fault> {
        let (o, len) = (offset as usize, len as usize);
        if !self.begin()? {
            self.mem[o..o + len].fill(ERASED);
            return Ok(());
        }
        let done = self.tear_point(len);
        self.mem[o..o + done].fill(ERASED);
        let end = (done + self.unit()).min(len);
        for i in done..end {
            // Erasing sets bits: a torn unit has some of its bits set, not all.
            let set = self.next_random() as u8;
            self.mem[o + i] |= set;
        }
        Err(Fault)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{FlashError, Nor};

    #[test]
    fn counts_operations_and_cuts_before() {
        let mut f = Nor::new(SimFlash::new(4 * 8192));
        f.program(0, &[0u8; 32]).unwrap();
        f.erase_page(8192).unwrap();
        assert_eq!(f.medium().ops(), 2);
        let mut sim = f.into_inner();
        sim.cut_at(2, CutMode::Before, 1);
        let mut f = Nor::new(sim);
        assert_eq!(f.program(32, &[0u8; 16]), Err(FlashError::Fault));
        assert_eq!(f.program(48, &[0u8; 16]), Err(FlashError::Fault), "still off");
        assert!(f.is_erased(32, 32).unwrap(), "nothing written");
    }

    #[test]
    fn torn_program_and_erase_leave_partial_results() {
        let mut torn_units = 0;
        for seed in 0..32 {
            let mut f = Nor::new(SimFlash::new(2 * 8192));
            f.medium_mut_for_tests().cut_at(0, CutMode::Torn, seed);
            assert_eq!(f.program(0, &[0u8; 256]), Err(FlashError::Fault));
            let b = f.medium().bytes();
            let zeros = b[..256].iter().take_while(|&&x| x == 0).count();
            assert_eq!(zeros % 16, 0, "whole units before the torn one");
            assert!(b[zeros + 16..256].iter().all(|&x| x == ERASED), "nothing after the torn unit");
            torn_units += usize::from(b[zeros..zeros + 16].iter().any(|&x| x != 0 && x != ERASED));

            let mut sim = f.into_inner();
            sim.power_on();
            let mut f = Nor::new(sim);
            f.program(8192, &[0u8; 8192]).unwrap();
            let at = f.medium().ops();
            f.medium_mut_for_tests().cut_at(at, CutMode::Torn, seed);
            assert_eq!(f.erase_page(8192), Err(FlashError::Fault));
            let b = &f.medium().bytes()[8192..];
            let erased = b.iter().take_while(|&&x| x == ERASED).count();
            assert!(erased < 8192 && b[erased + 16..].iter().all(|&x| x == 0), "a prefix erased, one torn unit");
        }
        assert!(torn_units > 16, "torn units have mixed bits");
    }
}
