//! Where does the PC go next? An exact next-PC evaluator for Thumb-2 (ARMv8-M Mainline).
//!
//! # Why
//!
//! Keel's remote GDB debugging of the non-secure app needs single-step. QEMU's `mps2-an505`
//! (Cortex-M33) has no FPB, no DWT and no DebugMonitor step, so stepping is done in software:
//! the debugger patches a temporary `bkpt` at the address the instruction at `pc` will go to
//! next, resumes, and removes it when it hits. That needs the *exact* next PC, computed from
//! the halted registers (r0-r15, xPSR with the APSR flags and the IT state) and memory (for
//! `pop {.., pc}`, `ldr pc, ..`, `tbb`/`tbh`). This crate computes it.
//!
//! # What
//!
//! [`next_pc`] reads the instruction at `pc` through a [`Target`], decodes it ([`decode`]) and
//! evaluates it ([`Next`]): the next PC (bit 0 clear), the instruction length (2 or 4, so a
//! `next` can step over a call by breaking at `pc + len`), and how control leaves it
//! ([`Flow`]): fall-through, condition failed (inside an IT block or a conditional branch),
//! branch, call, exception return (an `EXC_RETURN` value loaded into the PC in Handler mode),
//! or a trap (`svc`, `bkpt`, `udf`, an UNDEFINED encoding, an interworking branch to an even
//! address). UNPREDICTABLE encodings of PC writers are reported as [`Error::Unpredictable`].
//!
//! Every way an ARMv8-M Mainline core writes the PC is handled: `b` (T1-T4), `bl`, `bx`, `blx`
//! (register), `cbz`/`cbnz`, `tbb`/`tbh`, `ldr pc` (literal, immediate offset/pre/post-index,
//! register), `ldm`/`ldmdb`/`pop` with the PC in the list, `mov pc, rm`, `add pc, rm`. The 32-bit
//! data-processing forms with Rd = PC are either the flag-only aliases (`tst`, `teq`, `cmn`,
//! `cmp`) or UNPREDICTABLE in Thumb; no other 32-bit instruction writes the PC.
//!
//! `#![no_std]`, no allocation, no `unsafe`: it runs on the device as well as on the host.
//!
//! # Limits
//!
//! - The PE is assumed to be in Non-secure state: `bxns`/`blxns` are reported as UNDEFINED and
//!   `sg` as a no-op; `FNC_RETURN` values are not recognised.
//! - Non-PC-writing instructions are not validated: an UNDEFINED or UNPREDICTABLE encoding that
//!   cannot write the PC (an unallocated coprocessor op, an UNPREDICTABLE register choice) is
//!   reported as falling through, as the only wrong outcome is that the fault is caught by the
//!   fault handler instead of the breakpoint.
//! - An `ldm`/`pop` continued from an interrupted state (ICI bits in the xPSR) is evaluated
//!   from the current registers, as if it started afresh.
//! - Memory faults reading the instruction or its operand are returned as [`Error::Fault`];
//!   the caller decides (the core would take a MemManage/BusFault).
#![no_std]

/// A memory read failed at `addr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    /// The address that could not be read.
    pub addr: u32,
}

/// The halted core: its registers and its memory.
pub trait Target {
    /// Register `r` (0..=15); 13 is the active SP, 14 the LR, 15 the address of the
    /// instruction to evaluate (bit 0 is ignored).
    fn reg(&self, r: u8) -> u32;
    /// The combined xPSR: APSR flags N Z C V in bits 31..28, the IT state in bits 26:25 and
    /// 15:10, the exception number (0 in Thread mode) in bits 8:0.
    fn xpsr(&self) -> u32;
    /// Reads the little-endian halfword at `addr` (always even).
    fn read_u16(&self, addr: u32) -> Result<u16, Fault>;
    /// Reads the little-endian word at `addr` (always a multiple of 4).
    fn read_u32(&self, addr: u32) -> Result<u32, Fault>;
    /// Reads the byte at `addr`; by default through [`Target::read_u16`].
    fn read_u8(&self, addr: u32) -> Result<u8, Fault> {
        let h = self.read_u16(addr & !1)?;
        Ok((h >> ((addr & 1) * 8)) as u8)
    }
}

/// Why the next PC could not be computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// Reading the instruction or a value it loads into the PC failed.
    Fault(Fault),
    /// The instruction is UNPREDICTABLE here (encoding, or position inside an IT block).
    Unpredictable,
}

impl From<Fault> for Error {
    fn from(f: Fault) -> Self {
        Error::Fault(f)
    }
}

/// A trapping instruction; [`Next::pc`] says where execution resumes after it is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trap {
    /// `svc #imm`: resumes at `pc + 2` when the handler returns.
    Svc(u8),
    /// `bkpt #imm`: halts (or faults) at `pc`.
    Bkpt(u8),
    /// `udf #imm` (16- or 32-bit): a UsageFault at `pc`.
    Udf(u16),
    /// Any other UNDEFINED encoding on ARMv8-M Mainline: a UsageFault at `pc`.
    Undefined,
    /// `ldm`/`pop` from an address that is not word-aligned: a UsageFault at `pc`.
    Unaligned,
    /// An interworking branch (`bx`, `blx`, `ldr pc`, `pop {pc}`) to an address with bit 0
    /// clear: the PC becomes [`Next::pc`] and the core takes an INVSTATE UsageFault there.
    InvalidState,
}

/// How control leaves the instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Executed and does not write the PC: `pc + len`.
    Next,
    /// Not executed, its condition failed (IT block or conditional branch): `pc + len`.
    Skipped,
    /// Writes the PC (the target may happen to be `pc + len`).
    Branch,
    /// `bl`/`blx`: writes the PC and sets LR to `pc + len`; break there to step over.
    Call,
    /// An `EXC_RETURN` value (0xFFxx_xxxx) written in Handler mode by `bx`, `pop`, `ldm` or
    /// `ldr pc`: an exception return; the next PC is read from the stack frame by the core.
    ExceptionReturn(u32),
    /// A trap, see [`Trap`].
    Trap(Trap),
}

/// The outcome of one instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Next {
    /// The next PC, bit 0 clear (for [`Flow::ExceptionReturn`]: the EXC_RETURN value with
    /// bit 0 clear, not an address to break at).
    pub pc: u32,
    /// The length of the instruction at `pc`: 2 or 4.
    pub len: u8,
    /// How control leaves it.
    pub flow: Flow,
}

/// An addressing mode of `ldr pc, ...`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadAddr {
    /// `ldr pc, [pc, #+/-imm]`: `Align(pc + 4, 4) + offset`.
    Literal {
        /// Signed offset.
        offset: i32,
    },
    /// `[rn, #off]`, `[rn, #off]!` (`index`), `[rn], #off` (not `index`).
    Imm {
        /// Base register.
        rn: u8,
        /// Signed offset.
        offset: i32,
        /// Pre-indexed (the offset applies to the address) or post-indexed.
        index: bool,
    },
    /// `[rn, rm, lsl #shift]`.
    Reg {
        /// Base register.
        rn: u8,
        /// Index register.
        rm: u8,
        /// Left shift 0..=3.
        shift: u8,
    },
}

/// A decoded instruction, as far as the PC is concerned. Offsets are relative to `pc + 4`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Does not write the PC.
    Other,
    /// `it` with its first condition and mask.
    It {
        /// `firstcond`.
        firstcond: u8,
        /// `mask`, never 0.
        mask: u8,
    },
    /// `b` (all encodings); `cond` is 14 (AL) for the unconditional ones.
    B {
        /// Condition from the encoding (T1, T3) or 14.
        cond: u8,
        /// Signed byte offset from `pc + 4`.
        offset: i32,
    },
    /// `bl`.
    Bl {
        /// Signed byte offset from `pc + 4`.
        offset: i32,
    },
    /// `cbz`/`cbnz`.
    Cbz {
        /// `cbnz` if true.
        nonzero: bool,
        /// Register tested.
        rn: u8,
        /// Byte offset from `pc + 4`, 0..=126.
        offset: u32,
    },
    /// `bx rm` (`link` false) or `blx rm`.
    Bx {
        /// Target register.
        rm: u8,
        /// `blx`.
        link: bool,
    },
    /// `mov pc, rm` (16-bit).
    MovPc {
        /// Source register.
        rm: u8,
    },
    /// `add pc, rm` (16-bit, including `add pc, sp`).
    AddPc {
        /// Added register.
        rm: u8,
    },
    /// `ldr pc, ...`.
    LdrPc(LoadAddr),
    /// `ldm`/`ldmdb`/`pop` with the PC in the list: the PC is loaded from `R[rn] + offset`.
    LdmPc {
        /// Base register.
        rn: u8,
        /// Signed byte offset of the PC's slot from the base.
        offset: i32,
    },
    /// `tbb [rn, rm]` / `tbh [rn, rm, lsl #1]`.
    Tb {
        /// Table base.
        rn: u8,
        /// Index.
        rm: u8,
        /// `tbh`.
        half: bool,
    },
    /// A trapping instruction.
    Trap(Trap),
}

impl Op {
    /// Whether executing this instruction writes the PC.
    pub fn writes_pc(&self) -> bool {
        !matches!(self, Op::Other | Op::It { .. } | Op::Trap(_))
    }
}

/// Whether a first halfword starts a 32-bit instruction.
pub fn is_32bit(hw1: u16) -> bool {
    matches!(hw1 >> 11, 0b11101..=0b11111)
}

/// Whether `cond` (0..=15) passes with the APSR flags in `xpsr` bits 31..28.
pub fn condition_passed(cond: u8, xpsr: u32) -> bool {
    let n = xpsr & (1 << 31) != 0;
    let z = xpsr & (1 << 30) != 0;
    let c = xpsr & (1 << 29) != 0;
    let v = xpsr & (1 << 28) != 0;
    let base = match cond >> 1 {
        0 => z,
        1 => c,
        2 => n,
        3 => v,
        4 => c && !z,
        5 => n == v,
        6 => n == v && !z,
        _ => true,
    };
    if cond & 1 == 1 && cond != 0b1111 {
        !base
    } else {
        base
    }
}

/// The IT state ITSTATE<7:0> held in xPSR bits [15:10] (IT<7:2>) and [26:25] (IT<1:0>).
pub fn it_state(xpsr: u32) -> u8 {
    ((((xpsr >> 10) & 0x3F) << 2) | ((xpsr >> 25) & 0x3)) as u8
}

fn sign_extend(value: u32, bits: u32) -> i32 {
    let shift = 32 - bits;
    ((value << shift) as i32) >> shift
}

fn ldm_pc(hw1: u16, hw2: u16) -> Result<Op, Error> {
    let rn = (hw1 & 0xF) as u8;
    let wback = hw1 & (1 << 5) != 0;
    let list = hw2;
    if list & 0x8000 == 0 {
        return Ok(Op::Other);
    }
    let count = list.count_ones() as i32;
    if rn == 15 || count < 2 || list & 0x4000 != 0 || list & 0x2000 != 0 {
        return Err(Error::Unpredictable);
    }
    if wback && list & (1 << rn) != 0 {
        return Err(Error::Unpredictable);
    }
    let offset = if hw1 & 0x0180 == 0x0080 { 4 * (count - 1) } else { -4 };
    Ok(Op::LdmPc { rn, offset })
}

/// Decodes a 32-bit instruction `hw1:hw2`.
fn decode32(hw1: u16, hw2: u16) -> Result<Op, Error> {
    let h1 = u32::from(hw1);
    let h2 = u32::from(hw2);
    let rd = (h2 >> 8) & 0xF;
    match hw1 >> 11 {
        0b11101 => {
            if hw1 & 0xFE40 == 0xE800 {
                // Load/store multiple.
                return match (hw1 >> 7) & 3 {
                    0b01 | 0b10 if hw1 & 0x10 != 0 => {
                        if hw1 == 0xE97F && hw2 == 0xE97F {
                            // SG: a no-op in Non-secure state.
                            Ok(Op::Other)
                        } else {
                            ldm_pc(hw1, hw2)
                        }
                    }
                    0b01 | 0b10 => Ok(Op::Other),
                    _ => Ok(Op::Trap(Trap::Undefined)),
                };
            }
            if hw1 & 0xFE40 == 0xE840 {
                // Load/store dual, exclusive, table branch.
                let op1 = (hw1 >> 7) & 3;
                let op2 = (hw1 >> 4) & 3;
                let op3 = (hw2 >> 4) & 0xF;
                if op1 == 0b01 && op2 == 0b01 && op3 <= 1 {
                    let rn = (hw1 & 0xF) as u8;
                    let rm = (hw2 & 0xF) as u8;
                    if hw2 & 0xFF00 != 0xF000 || rm == 13 || rm == 15 {
                        return Err(Error::Unpredictable);
                    }
                    return Ok(Op::Tb { rn, rm, half: op3 == 1 });
                }
                let load = hw1 & 0x10 != 0;
                let rt = hw2 >> 12;
                if load && (op1 & 2 != 0 || op2 == 0b11) {
                    // LDRD (immediate/literal): Rt or Rt2 = PC is UNPREDICTABLE.
                    if rt == 15 || rd == 15 {
                        return Err(Error::Unpredictable);
                    }
                } else if load && rt == 15 {
                    // LDREX*, LDA*: Rt = PC is UNPREDICTABLE.
                    return Err(Error::Unpredictable);
                }
                return Ok(Op::Other);
            }
            if hw1 & 0xFE00 == 0xEA00 {
                return dp_rd_pc(h1, rd);
            }
            // Coprocessor, floating point.
            Ok(Op::Other)
        }
        0b11110 => {
            if h2 & 0x8000 == 0 {
                if h1 & 0x0200 == 0 {
                    // Data processing (modified immediate).
                    return dp_rd_pc(h1, rd);
                }
                // Data processing (plain binary immediate).
                return if rd == 15 { Err(Error::Unpredictable) } else { Ok(Op::Other) };
            }
            // Branches and miscellaneous control.
            let op = (h1 >> 4) & 0x7F;
            let op1 = (h2 >> 12) & 0x7;
            let s = (h1 >> 10) & 1;
            let j1 = (h2 >> 13) & 1;
            let j2 = (h2 >> 11) & 1;
            let imm11 = h2 & 0x7FF;
            match op1 & 0b101 {
                0b000 => {
                    if op & 0b011_1000 != 0b011_1000 {
                        let cond = ((h1 >> 6) & 0xF) as u8;
                        let imm = (s << 20) | (j2 << 19) | (j1 << 18) | ((h1 & 0x3F) << 12) | (imm11 << 1);
                        Ok(Op::B { cond, offset: sign_extend(imm, 21) })
                    } else if op == 0b111_1111 && op1 == 0b010 {
                        Ok(Op::Trap(Trap::Udf((((h1 & 0xF) << 12) | (h2 & 0xFFF)) as u16)))
                    } else {
                        match op {
                            // MSR, hints, miscellaneous control.
                            0b011_1000..=0b011_1011 => Ok(Op::Other),
                            // MRS: Rd = PC is UNPREDICTABLE.
                            0b011_1110 | 0b011_1111 if rd == 15 => Err(Error::Unpredictable),
                            0b011_1110 | 0b011_1111 => Ok(Op::Other),
                            // BXJ, SUBS PC, LR, SMC and the rest: not in M-profile.
                            _ => Ok(Op::Trap(Trap::Undefined)),
                        }
                    }
                }
                0b100 => Ok(Op::Trap(Trap::Undefined)), // BLX (immediate): no ARM state.
                _ => {
                    let i1 = !(j1 ^ s) & 1;
                    let i2 = !(j2 ^ s) & 1;
                    let imm = (s << 24) | (i1 << 23) | (i2 << 22) | ((h1 & 0x3FF) << 12) | (imm11 << 1);
                    let offset = sign_extend(imm, 25);
                    if op1 & 0b100 != 0 {
                        Ok(Op::Bl { offset })
                    } else {
                        Ok(Op::B { cond: 14, offset })
                    }
                }
            }
        }
        _ => {
            // 0b11111
            let op2 = (h1 >> 4) & 0x7F;
            if op2 & 0b110_0111 == 0b000_0101 {
                // Load word.
                return load_word(hw1, hw2);
            }
            if op2 & 0b110_0101 == 0b000_0001 && h2 >> 12 == 15 && h1 & 0xF != 15 && h1 & 0x80 == 0 {
                // Load byte/halfword with Rt = PC: PLD/PLI and NOP hints, else UNPREDICTABLE
                // (writeback, unprivileged) or UNDEFINED.
                let m = (h2 >> 6) & 0x3F;
                return if m == 0 || m & 0b11_1100 == 0b11_0000 {
                    Ok(Op::Other)
                } else if m & 0b10_0100 == 0b10_0100 || m & 0b11_1100 == 0b11_1000 {
                    Err(Error::Unpredictable)
                } else {
                    Ok(Op::Trap(Trap::Undefined))
                };
            }
            if op2 & 0b110_0111 == 0b000_0111 {
                return Ok(Op::Trap(Trap::Undefined));
            }
            if op2 & 0b111_0000 == 0b010_0000 || op2 & 0b111_1000 == 0b011_0000 {
                // Data processing (register), multiply and accumulate.
                return if rd == 15 { Err(Error::Unpredictable) } else { Ok(Op::Other) };
            }
            if op2 & 0b111_1000 == 0b011_1000 {
                // Long multiply and divide.
                let div = matches!(op2 & 7, 0b001 | 0b011);
                return if rd == 15 || (!div && h2 >> 12 == 15) { Err(Error::Unpredictable) } else { Ok(Op::Other) };
            }
            // Stores, byte/halfword loads and hints, coprocessor.
            Ok(Op::Other)
        }
    }
}

/// Data processing (shifted register or modified immediate) with `rd`: only the compare
/// aliases may name the PC.
fn dp_rd_pc(h1: u32, rd: u32) -> Result<Op, Error> {
    if rd != 15 {
        return Ok(Op::Other);
    }
    let op = (h1 >> 5) & 0xF;
    let s = h1 & 0x10 != 0;
    if s && matches!(op, 0b0000 | 0b0100 | 0b1000 | 0b1101) {
        Ok(Op::Other)
    } else {
        Err(Error::Unpredictable)
    }
}

fn load_word(hw1: u16, hw2: u16) -> Result<Op, Error> {
    let rn = (hw1 & 0xF) as u8;
    let rt = hw2 >> 12;
    let op1 = (hw1 >> 7) & 3;
    if op1 & 2 != 0 {
        return Ok(Op::Trap(Trap::Undefined));
    }
    let mode = if rn == 15 {
        let imm = i32::from(hw2 & 0xFFF);
        let offset = if hw1 & 0x80 != 0 { imm } else { -imm };
        LoadAddr::Literal { offset }
    } else if op1 == 1 {
        LoadAddr::Imm { rn, offset: i32::from(hw2 & 0xFFF), index: true }
    } else if hw2 & 0x0FC0 == 0 {
        let rm = (hw2 & 0xF) as u8;
        if rt == 15 && (rm == 13 || rm == 15) {
            return Err(Error::Unpredictable);
        }
        LoadAddr::Reg { rn, rm, shift: ((hw2 >> 4) & 3) as u8 }
    } else if hw2 & 0x0800 != 0 {
        let p = hw2 & 0x0400 != 0;
        let u = hw2 & 0x0200 != 0;
        let w = hw2 & 0x0100 != 0;
        if !p && !w {
            return Ok(Op::Trap(Trap::Undefined));
        }
        if p && u && !w {
            // LDRT: Rt = PC is UNPREDICTABLE.
            return if rt == 15 { Err(Error::Unpredictable) } else { Ok(Op::Other) };
        }
        let imm = i32::from(hw2 & 0xFF);
        LoadAddr::Imm { rn, offset: if u { imm } else { -imm }, index: p }
    } else {
        return Ok(Op::Trap(Trap::Undefined));
    };
    if rt == 15 {
        Ok(Op::LdrPc(mode))
    } else {
        Ok(Op::Other)
    }
}

/// Decodes a 16-bit instruction.
fn decode16(hw: u16) -> Result<Op, Error> {
    let h = u32::from(hw);
    match hw >> 12 {
        0b0100 if hw & 0x0C00 == 0x0400 => {
            // Special data processing, branch and exchange.
            let d = ((h >> 4) & 8) | (h & 7);
            let m = ((h >> 3) & 0xF) as u8;
            match (hw >> 8) & 3 {
                0b00 if d == 15 => {
                    if m == 15 {
                        Err(Error::Unpredictable)
                    } else {
                        Ok(Op::AddPc { rm: m })
                    }
                }
                0b10 if d == 15 => Ok(Op::MovPc { rm: m }),
                0b11 => {
                    let link = hw & 0x80 != 0;
                    if hw & 3 != 0 || (link && m == 15) {
                        Err(Error::Unpredictable)
                    } else if hw & 4 != 0 {
                        // BXNS/BLXNS: UNDEFINED in Non-secure state.
                        Ok(Op::Trap(Trap::Undefined))
                    } else {
                        Ok(Op::Bx { rm: m, link })
                    }
                }
                _ => Ok(Op::Other),
            }
        }
        0b1011 => {
            // Miscellaneous 16-bit instructions.
            let op = (hw >> 5) & 0x7F;
            match op {
                _ if hw & 0x0500 == 0x0100 => Ok(Op::Cbz {
                    nonzero: hw & 0x0800 != 0,
                    rn: (hw & 7) as u8,
                    offset: (((h >> 9) & 1) << 6) | (((h >> 3) & 0x1F) << 1),
                }),
                0b000_0000..=0b000_0111 => Ok(Op::Other), // ADD/SUB SP
                0b001_0000..=0b001_0111 => Ok(Op::Other), // extend
                0b010_0000..=0b010_1111 => Ok(Op::Other), // PUSH
                0b011_0011 => Ok(Op::Other),              // CPS
                0b101_0000..=0b101_0011 | 0b101_0110 | 0b101_0111 => Ok(Op::Other), // REV*
                0b110_0000..=0b110_1111 => {
                    // POP
                    let list = (hw & 0x1FF) as u32;
                    if list == 0 {
                        Err(Error::Unpredictable)
                    } else if list & 0x100 != 0 {
                        Ok(Op::LdmPc { rn: 13, offset: 4 * (list.count_ones() as i32 - 1) })
                    } else {
                        Ok(Op::Other)
                    }
                }
                0b111_0000..=0b111_0111 => Ok(Op::Trap(Trap::Bkpt(hw as u8))),
                0b111_1000..=0b111_1111 => {
                    let mask = (hw & 0xF) as u8;
                    let firstcond = ((hw >> 4) & 0xF) as u8;
                    if mask == 0 {
                        Ok(Op::Other) // hints
                    } else if firstcond == 0b1111 || (firstcond == 0b1110 && mask.count_ones() != 1) {
                        Err(Error::Unpredictable)
                    } else {
                        Ok(Op::It { firstcond, mask })
                    }
                }
                _ => Ok(Op::Trap(Trap::Undefined)),
            }
        }
        0b1101 => {
            let cond = ((hw >> 8) & 0xF) as u8;
            match cond {
                0b1110 => Ok(Op::Trap(Trap::Udf(hw & 0xFF))),
                0b1111 => Ok(Op::Trap(Trap::Svc(hw as u8))),
                _ => Ok(Op::B { cond, offset: sign_extend(h & 0xFF, 8) * 2 }),
            }
        }
        0b1110 if hw & 0x0800 == 0 => Ok(Op::B { cond: 14, offset: sign_extend(h & 0x7FF, 11) * 2 }),
        _ => Ok(Op::Other),
    }
}

/// Decodes the instruction `hw1` (and `hw2` if [`is_32bit`]`(hw1)`; ignored otherwise).
pub fn decode(hw1: u16, hw2: u16) -> Result<Op, Error> {
    if is_32bit(hw1) {
        decode32(hw1, hw2)
    } else {
        decode16(hw1)
    }
}

/// Where a PC written by an interworking write (`bx`, `ldr pc`, `pop`/`ldm`) goes.
fn bx_write(value: u32, xpsr: u32, allow_return: bool, len: u8, call: bool) -> Next {
    let pc = value & !1;
    let flow = if allow_return && xpsr & 0x1FF != 0 && value >> 24 == 0xFF {
        Flow::ExceptionReturn(value)
    } else if value & 1 == 0 {
        Flow::Trap(Trap::InvalidState)
    } else if call {
        Flow::Call
    } else {
        Flow::Branch
    };
    Next { pc, len, flow }
}

/// Computes where the instruction at `t.reg(15)` goes next.
pub fn next_pc(t: &impl Target) -> Result<Next, Error> {
    let pc = t.reg(15) & !1;
    let hw1 = t.read_u16(pc)?;
    let (hw2, len) = if is_32bit(hw1) { (t.read_u16(pc.wrapping_add(2))?, 4u8) } else { (0, 2u8) };
    let op = decode(hw1, hw2)?;
    evaluate(t, pc, len, op)
}

/// Evaluates a decoded instruction `op` of length `len` at `pc` (see [`next_pc`]).
pub fn evaluate(t: &impl Target, pc: u32, len: u8, op: Op) -> Result<Next, Error> {
    let xpsr = t.xpsr();
    let it = it_state(xpsr);
    let in_it = it & 0xF != 0;
    let last_in_it = it & 0xF == 0b1000;
    let seq = pc.wrapping_add(u32::from(len));
    let base = pc.wrapping_add(4);
    let reg = |r: u8| if r == 15 { base } else { t.reg(r) };
    match op {
        Op::It { .. } | Op::Cbz { .. } | Op::B { cond: 0..=13, .. } if in_it => return Err(Error::Unpredictable),
        _ if op.writes_pc() && in_it && !last_in_it => return Err(Error::Unpredictable),
        Op::Trap(Trap::Bkpt(_)) => {}
        _ => {
            let cond = match op {
                _ if in_it => it >> 4,
                Op::B { cond, .. } => cond,
                _ => 14,
            };
            if !condition_passed(cond, xpsr) {
                return Ok(Next { pc: seq, len, flow: Flow::Skipped });
            }
        }
    }
    let branch = |target: u32| Next { pc: target & !1, len, flow: Flow::Branch };
    Ok(match op {
        Op::Other | Op::It { .. } => Next { pc: seq, len, flow: Flow::Next },
        Op::B { offset, .. } => branch(base.wrapping_add_signed(offset)),
        Op::Bl { offset } => Next { pc: base.wrapping_add_signed(offset), len, flow: Flow::Call },
        Op::Cbz { nonzero, rn, offset } => {
            if (t.reg(rn) != 0) == nonzero {
                branch(base.wrapping_add(offset))
            } else {
                Next { pc: seq, len, flow: Flow::Skipped }
            }
        }
        Op::Bx { rm, link } => bx_write(reg(rm), xpsr, !link, len, link),
        Op::MovPc { rm } => branch(reg(rm)),
        Op::AddPc { rm } => branch(base.wrapping_add(reg(rm))),
        Op::LdrPc(mode) => {
            let addr = match mode {
                LoadAddr::Literal { offset } => (base & !3).wrapping_add_signed(offset),
                LoadAddr::Imm { rn, offset, index } => {
                    if index {
                        reg(rn).wrapping_add_signed(offset)
                    } else {
                        reg(rn)
                    }
                }
                LoadAddr::Reg { rn, rm, shift } => reg(rn).wrapping_add(reg(rm) << shift),
            };
            if addr & 3 != 0 {
                return Err(Error::Unpredictable);
            }
            bx_write(t.read_u32(addr)?, xpsr, true, len, false)
        }
        Op::LdmPc { rn, offset } => {
            if reg(rn) & 3 != 0 {
                return Ok(Next { pc, len, flow: Flow::Trap(Trap::Unaligned) });
            }
            let addr = reg(rn).wrapping_add_signed(offset);
            bx_write(t.read_u32(addr)?, xpsr, true, len, false)
        }
        Op::Tb { rn, rm, half } => {
            let entry = if half {
                let a = reg(rn).wrapping_add(reg(rm) << 1);
                u32::from(t.read_u8(a)?) | u32::from(t.read_u8(a.wrapping_add(1))?) << 8
            } else {
                u32::from(t.read_u8(reg(rn).wrapping_add(reg(rm)))?)
            };
            branch(base.wrapping_add(entry * 2))
        }
        Op::Trap(trap) => Next { pc: if matches!(trap, Trap::Svc(_)) { seq } else { pc }, len, flow: Flow::Trap(trap) },
    })
}
