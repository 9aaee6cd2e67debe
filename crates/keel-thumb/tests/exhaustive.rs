//! Exhaustive and sampled sweeps of the encoding space.
//!
//! - Every one of the 65,536 halfwords: 32-bit prefixes are recognised, every 16-bit encoding
//!   is classified by a reference written here from the ARM encoding tables (ranges of the
//!   16-bit instruction map), and the PC writers' targets are recomputed independently.
//! - The same 16-bit space and a structured sample of 32-bit encodings (every first halfword
//!   0xE800..=0xFFFF with 600 second halfwords each, a third of them with Rd or Rt forced to
//!   PC) are cross-checked against an independent decoder, `yaxpeax-arm`'s Thumb-2 decoder.

mod common;
use common::{cond_holds, filler, Cpu, PC};
use keel_thumb::{decode, is_32bit, next_pc, Error, Flow, Next, Op, Trap};
use yaxpeax_arch::{Decoder, U8Reader};
use yaxpeax_arm::armv7::{InstDecoder, Instruction, Opcode, Operand};

#[derive(Debug, PartialEq)]
enum Ref {
    Seq,
    Writer,
    Trap,
    Unpredictable,
}

/// The 16-bit instruction map (ARMv7-M A5.2 / ARMv8-M), written as ranges.
fn ref16(hw: u16) -> Ref {
    let rm = (hw >> 3) & 0xF;
    let d = ((hw >> 4) & 8) | (hw & 7);
    match hw {
        0x4400..=0x44FF if d == 15 && rm == 15 => Ref::Unpredictable,
        0x4400..=0x44FF | 0x4600..=0x46FF if d == 15 => Ref::Writer,
        0x4700..=0x47FF if hw & 3 != 0 => Ref::Unpredictable,
        0x4780..=0x47FF if rm == 15 => Ref::Unpredictable,
        0x4700..=0x47FF if hw & 4 != 0 => Ref::Trap, // bxns/blxns in Non-secure state
        0x4700..=0x47FF => Ref::Writer,
        0xB100..=0xB1FF | 0xB300..=0xB3FF | 0xB900..=0xB9FF | 0xBB00..=0xBBFF => Ref::Writer,
        0xBC00 => Ref::Unpredictable,
        0xBD00..=0xBDFF => Ref::Writer,
        0xB600..=0xB65F | 0xB680..=0xB7FF | 0xB800..=0xB8FF | 0xBA80..=0xBABF => Ref::Trap,
        0xBE00..=0xBEFF => Ref::Trap,
        0xBFF1..=0xBFFF => Ref::Unpredictable, // it with firstcond 1111
        0xBFE0..=0xBFEF if (hw & 0xF).count_ones() > 1 => Ref::Unpredictable,
        0xD000..=0xDDFF => Ref::Writer,
        0xDE00..=0xDFFF => Ref::Trap,
        0xE000..=0xE7FF => Ref::Writer,
        _ => Ref::Seq,
    }
}

/// The target of a 16-bit PC writer, recomputed from the encoding diagrams.
fn ref16_target(cpu: &Cpu, hw: u16) -> u32 {
    let r = |n: u16| if n == 15 { PC + 4 } else { cpu.regs[usize::from(n)] };
    match hw {
        0x4400..=0x44FF => (PC + 4).wrapping_add(r((hw >> 3) & 0xF)),
        0x4600..=0x47FF => r((hw >> 3) & 0xF),
        0xB100..=0xBBFF => PC + 4 + u32::from(((hw >> 9) & 1) << 6 | ((hw >> 3) & 0x1F) << 1),
        0xBD00..=0xBDFF => filler(cpu.regs[13] + 4 * (hw & 0xFF).count_ones()),
        0xD000..=0xDDFF => (PC + 4).wrapping_add(((hw & 0xFF) as i8 as i32 * 2) as u32),
        _ => (PC + 4).wrapping_add((((u32::from(hw) & 0x7FF) << 21) as i32 >> 20) as u32),
    }
}

#[test]
fn every_halfword() {
    for hw in 0..=0xFFFFu16 {
        let prefix = [0b11101, 0b11110, 0b11111].contains(&(hw >> 11));
        assert_eq!(is_32bit(hw), prefix, "{hw:04x}");
        if prefix {
            // The second halfword is fetched: make it unreadable to prove it.
            let got = next_pc(&Cpu::new(&[hw]));
            assert!(matches!(got, Err(Error::Fault(f)) if f.addr == PC + 2), "{hw:04x}");
            continue;
        }
        // All flags set, so every condition but the negated ones passes; registers are odd
        // and non-zero; unlisted memory reads as odd filler.
        let cpu = Cpu::new(&[hw]).flags(0b1111).filled();
        let got = next_pc(&cpu);
        match ref16(hw) {
            Ref::Seq => assert_eq!(got, Ok(Next { pc: PC + 2, len: 2, flow: Flow::Next }), "{hw:04x}"),
            Ref::Unpredictable => assert_eq!(got, Err(Error::Unpredictable), "{hw:04x}"),
            Ref::Trap => {
                let next = got.unwrap();
                assert!(matches!(next.flow, Flow::Trap(_)), "{hw:04x}: {next:?}");
                assert_eq!(next.pc, if hw >> 8 == 0xDF { PC + 2 } else { PC }, "{hw:04x}");
            }
            Ref::Writer => {
                let next = got.unwrap();
                assert_eq!(next.len, 2);
                let cbz = matches!(hw, 0xB100..=0xBBFF);
                let cond_fails = matches!(hw, 0xD000..=0xDDFF) && !cond_holds(((hw >> 8) & 0xF) as u8, 0b1111);
                if (cbz && hw & 0x0800 == 0) || cond_fails {
                    // cbz of a non-zero register, or a condition that fails with all flags set.
                    assert_eq!(next.flow, Flow::Skipped, "{hw:04x}");
                    assert_eq!(next.pc, PC + 2);
                    continue;
                }
                let link = matches!(hw, 0x4780..=0x47FF);
                let target = ref16_target(&cpu, hw);
                assert_eq!(next.pc, target & !1, "{hw:04x}");
                let want = if matches!(hw, 0x4700..=0x47FF | 0xBD00..=0xBDFF) && target & 1 == 0 {
                    Flow::Trap(Trap::InvalidState)
                } else if link {
                    Flow::Call
                } else {
                    Flow::Branch
                };

                assert_eq!(next.flow, want, "{hw:04x}");
            }
        }
    }
}

fn oracle(hw1: u16, hw2: u16) -> Option<Instruction> {
    let mut bytes = [0u8; 4];
    bytes[..2].copy_from_slice(&hw1.to_le_bytes());
    bytes[2..].copy_from_slice(&hw2.to_le_bytes());
    let mut reader = U8Reader::new(&bytes);
    InstDecoder::default_thumb().decode(&mut reader).ok()
}

/// Whether the oracle's instruction writes the PC.
fn oracle_writes_pc(i: &Instruction) -> bool {
    use Opcode::*;
    let list_has_pc = i.operands.iter().any(|o| matches!(o, Operand::RegList(l) if l & 0x8000 != 0));
    let first_is_pc = matches!(i.operands[0], Operand::Reg(r) if r.number() == 15);
    match i.opcode {
        B | BL | BLX | BX | BXJ | CBZ | CBNZ | TBB | TBH | ERET | RFE(..) => true,
        LDM(..) | POP => list_has_pc,
        // The first operand is a source, not a destination.
        STR | STRB | STRH | STRD | STREX | STREXB | STREXH | STREXD | STM(..) | PUSH | STRT | STRBT | STRHT | CMP
        | CMN | TST | TEQ | PLD | PLI | MCR2(..) | MCRR(..) | MCRR2(..) | MSR | STC(..) | STCL(..) | STC2(..)
        | STC2L(..) | LDC(..) | LDCL(..) | LDC2(..) | LDC2L(..) | CDP2(..) | SRS(..) | IT | SVC | BKPT | UDF | HINT
        | NOP | DBG | MRC2(..) | MRRC(..) | MRRC2(..) => false,
        _ => first_is_pc,
    }
}

/// The target the oracle gives a direct branch. yaxpeax-arm counts 16-bit `b<c>` and
/// `cbz` offsets from `pc + 2`, the others from `pc + 4` (halfword units).
fn oracle_target(i: &Instruction, hw1: u16) -> Option<u32> {
    let off = i.operands.iter().find_map(|o| match o {
        Operand::BranchThumbOffset(o) => Some(*o),
        _ => None,
    })?;
    let from = if !i.wide && (hw1 >> 12 == 0xD || hw1 >> 12 == 0xB) { PC + 2 } else { PC + 4 };
    Some(from.wrapping_add((off * 2) as u32))
}

#[derive(Default)]
struct Tally {
    checked: u64,
    writers: u64,
    ours_err_or_trap: u64,
    oracle_rejects: u64,
    mismatches: Vec<String>,
}

fn cross_check(t: &mut Tally, hw1: u16, hw2: u16) {
    let wide = is_32bit(hw1);
    let ours = decode(hw1, hw2);
    let Some(theirs) = oracle(hw1, hw2) else {
        t.oracle_rejects += 1;
        if let Ok(op) = ours {
            // Every PC writer we decode must be one the oracle knows too.
            if op.writes_pc() {
                t.mismatches.push(format!("{hw1:04x} {hw2:04x}: ours {op:?}, oracle rejects"));
            }
        }
        return;
    };
    t.checked += 1;
    assert_eq!(theirs.wide, wide, "{hw1:04x} {hw2:04x}: length");
    let op = match ours {
        Ok(Op::Trap(_)) | Err(Error::Unpredictable) => {
            t.ours_err_or_trap += 1;
            return;
        }
        Ok(op) => op,
        Err(e) => panic!("{hw1:04x} {hw2:04x}: {e:?}"),
    };
    let theirs_writes = oracle_writes_pc(&theirs);
    if op.writes_pc() != theirs_writes {
        t.mismatches.push(format!("{hw1:04x} {hw2:04x}: ours {op:?}, oracle {theirs} ({:?})", theirs.opcode));
        return;
    }
    if !theirs_writes {
        return;
    }
    t.writers += 1;
    // Direct branches: compare targets and conditions.
    let ours_target = match op {
        Op::B { offset, .. } | Op::Bl { offset } => Some((PC + 4).wrapping_add_signed(offset)),
        Op::Cbz { offset, .. } => Some(PC + 4 + offset),
        _ => None,
    };
    if ours_target.is_some() && ours_target != oracle_target(&theirs, hw1) {
        t.mismatches.push(format!(
            "{hw1:04x} {hw2:04x}: ours {op:?} -> {ours_target:x?}, oracle {theirs} -> {:x?}",
            oracle_target(&theirs, hw1)
        ));
    }
    if let Op::B { cond, .. } = op {
        if cond as u32 != theirs.condition as u32 {
            // yaxpeax's ConditionCode enum is ordered EQ..AL like the encoding.
            t.mismatches.push(format!("{hw1:04x} {hw2:04x}: cond {cond} vs {:?}", theirs.condition));
        }
    }
}

fn report(t: &Tally) {
    println!(
        "checked {} (PC writers {}), ours trap/unpredictable {}, oracle rejects {}",
        t.checked, t.writers, t.ours_err_or_trap, t.oracle_rejects
    );
    let mut kinds: Vec<String> = t.mismatches.iter().map(|m| m.split(" (").last().unwrap_or("").to_string()).collect();
    kinds.sort();
    kinds.dedup();
    println!("kinds: {kinds:?}");
    for m in t.mismatches.iter().take(40) {
        println!("MISMATCH {m}");
    }
    assert!(t.mismatches.is_empty(), "{} mismatches", t.mismatches.len());
}

#[test]
fn oracle_16bit_all() {
    let mut t = Tally::default();
    for hw in 0..=0xFFFFu16 {
        if !is_32bit(hw) {
            cross_check(&mut t, hw, 0);
        }
    }
    report(&t);
}

#[test]
fn oracle_32bit_sample() {
    let mut t = Tally::default();
    let mut x: u32 = 0x1234_5678;
    let mut rng = move || {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        x
    };
    for hw1 in 0xE800..=0xFFFFu16 {
        for k in 0..600 {
            let r = rng() as u16;
            let hw2 = match k % 6 {
                0 => r | 0xF000,            // Rt / RdLo / Ra = PC
                1 => r | 0x0F00,            // Rd / Rt2 / RdHi = PC
                2 => (r & 0x0FFF) | 0x8000, // register lists with the PC
                _ => r,
            };
            cross_check(&mut t, hw1, hw2);
        }
    }
    report(&t);
}
