//! A halted core for the tests: sixteen registers, an xPSR and sparse memory.
#![allow(dead_code)]

use keel_thumb::{Fault, Target};

pub const PC: u32 = 0x0800_4000;

pub struct Cpu {
    pub regs: [u32; 16],
    pub xpsr: u32,
    /// Halfwords at given addresses (the instruction, tables).
    pub halves: Vec<(u32, u16)>,
    /// Words at given addresses.
    pub words: Vec<(u32, u32)>,
    /// Whether memory that was not given reads as `filler(addr)` (else it faults).
    pub fill: bool,
}

/// The value unlisted memory holds when `fill` is set: odd, and different per word.
pub fn filler(addr: u32) -> u32 {
    (addr & !3).wrapping_mul(0x9E37_79B1) | 1
}

impl Cpu {
    pub fn new(code: &[u16]) -> Cpu {
        let mut regs = [0u32; 16];
        for (i, r) in regs.iter_mut().enumerate() {
            *r = 0x2000_0000 + 0x100 * i as u32 + 1;
        }
        regs[13] = 0x2000_8000;
        regs[14] = 0x0800_1235;
        regs[15] = PC;
        let halves = code.iter().enumerate().map(|(i, h)| (PC + 2 * i as u32, *h)).collect();
        Cpu { regs, xpsr: 0x0100_0000, halves, words: Vec::new(), fill: false }
    }
    pub fn reg(mut self, r: usize, v: u32) -> Cpu {
        self.regs[r] = v;
        self
    }
    pub fn word(mut self, a: u32, v: u32) -> Cpu {
        self.words.push((a, v));
        self
    }
    pub fn half(mut self, a: u32, v: u16) -> Cpu {
        self.halves.push((a, v));
        self
    }
    pub fn flags(mut self, nzcv: u32) -> Cpu {
        self.xpsr = (self.xpsr & 0x0FFF_FFFF) | (nzcv << 28);
        self
    }
    /// Sets ITSTATE<7:0> (bits [15:10] and [26:25] of the xPSR).
    pub fn it(mut self, it: u8) -> Cpu {
        let it = u32::from(it);
        self.xpsr = (self.xpsr & !(0x3F << 10 | 3 << 25)) | ((it >> 2) << 10) | ((it & 3) << 25);
        self
    }
    pub fn handler(mut self, exception: u32) -> Cpu {
        self.xpsr = (self.xpsr & !0x1FF) | exception;
        self
    }
    pub fn filled(mut self) -> Cpu {
        self.fill = true;
        self
    }
}

impl Target for Cpu {
    fn reg(&self, r: u8) -> u32 {
        self.regs[usize::from(r)]
    }
    fn xpsr(&self) -> u32 {
        self.xpsr
    }
    fn read_u16(&self, addr: u32) -> Result<u16, Fault> {
        assert_eq!(addr & 1, 0, "unaligned read_u16");
        if let Some((_, h)) = self.halves.iter().rev().find(|(a, _)| *a == addr) {
            return Ok(*h);
        }
        let w = if let Some((_, w)) = self.words.iter().rev().find(|(a, _)| *a == addr & !3) {
            *w
        } else if self.fill {
            filler(addr)
        } else {
            return Err(Fault { addr });
        };
        Ok((w >> ((addr & 2) * 8)) as u16)
    }
    fn read_u32(&self, addr: u32) -> Result<u32, Fault> {
        assert_eq!(addr & 3, 0, "unaligned read_u32");
        if let Some((_, w)) = self.words.iter().rev().find(|(a, _)| *a == addr) {
            return Ok(*w);
        }
        Ok(u32::from(self.read_u16(addr)?) | u32::from(self.read_u16(addr + 2)?) << 16)
    }
}

/// The fifteen conditions, written from the ARM ARM's table of condition codes.
pub fn cond_holds(cond: u8, nzcv: u32) -> bool {
    let (n, z, c, v) = (nzcv & 8 != 0, nzcv & 4 != 0, nzcv & 2 != 0, nzcv & 1 != 0);
    match cond {
        0 => z,             // EQ
        1 => !z,            // NE
        2 => c,             // CS
        3 => !c,            // CC
        4 => n,             // MI
        5 => !n,            // PL
        6 => v,             // VS
        7 => !v,            // VC
        8 => c && !z,       // HI
        9 => !c || z,       // LS
        10 => n == v,       // GE
        11 => n != v,       // LT
        12 => !z && n == v, // GT
        13 => z || n != v,  // LE
        14 => true,         // AL
        _ => unreachable!(),
    }
}
