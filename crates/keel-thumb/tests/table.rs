//! Hand-written tables of known encodings per instruction class, with the next PC worked out
//! from the encoding diagrams of the ARMv7-M / ARMv8-M Architecture Reference Manuals.

mod common;
use common::{cond_holds, Cpu, PC};
use keel_thumb::{next_pc, Error, Fault, Flow, Next, Trap};

fn run(cpu: &Cpu) -> Result<Next, Error> {
    next_pc(cpu)
}

fn branch(pc: u32, len: u8) -> Result<Next, Error> {
    Ok(Next { pc, len, flow: Flow::Branch })
}

fn call(pc: u32) -> Result<Next, Error> {
    Ok(Next { pc, len: 4, flow: Flow::Call })
}

fn seq(len: u8) -> Result<Next, Error> {
    Ok(Next { pc: PC + u32::from(len), len, flow: Flow::Next })
}

fn skipped(len: u8) -> Result<Next, Error> {
    Ok(Next { pc: PC + u32::from(len), len, flow: Flow::Skipped })
}

#[test]
fn b_t2_offsets() {
    // b.n: imm11, target = pc + 4 + SignExtend(imm11:'0').
    for (hw, target) in [
        (0xE7FE, PC),             // b .
        (0xE000, PC + 4),         // b pc+4
        (0xE001, PC + 6),         // b pc+6
        (0xE3FF, PC + 4 + 0x7FE), // largest forward
        (0xE400, PC + 4 - 0x800), // largest backward
        (0xE7FF, PC + 2),         // -2
    ] {
        assert_eq!(run(&Cpu::new(&[hw])), branch(target, 2), "{hw:04x}");
    }
}

#[test]
fn b_t1_conditions() {
    // beq .: D0FE; bne +8: D102 ...; every condition with every flag combination.
    for cond in 0u8..14 {
        for nzcv in 0..16 {
            for (imm8, off) in [(0xFEu16, -4i32), (0x02, 4), (0x7F, 254), (0x80, -256)] {
                let hw = 0xD000 | u16::from(cond) << 8 | imm8;
                let got = run(&Cpu::new(&[hw]).flags(nzcv));
                let want =
                    if cond_holds(cond, nzcv) { branch((PC + 4).wrapping_add_signed(off), 2) } else { skipped(2) };
                assert_eq!(got, want, "{hw:04x} nzcv={nzcv:04b}");
            }
        }
    }
}

#[test]
fn b_t3_conditional_wide() {
    // beq.w +0x100: F000 8080; bne.w -2: F47F AFFF (S=1, J1=J2=1, imm6=3F, imm11=7FF);
    // largest forward +0xFFFFE: F03F AFFF (S=0 J1=1 J2=1); largest backward -0x100000: F400 8000.
    let cases = [
        (0xF000u16, 0x8080u16, 0x100i64),
        (0xF47F, 0xAFFF, -2),
        (0xF43F, 0xAFFE, -4),
        (0xF03F, 0xAFFF, 0xFFFFE),
        (0xF400, 0x8000, -0x100000),
        (0xF000, 0xA000, 0x40000), // J1 only: bit 18
        (0xF000, 0x8800, 0x80000), // J2 only: bit 19
    ];
    for (hw1, hw2, off) in cases {
        let cond = ((hw1 >> 6) & 0xF) as u8;
        for nzcv in 0..16 {
            let got = run(&Cpu::new(&[hw1, hw2]).flags(nzcv));
            let want = if cond_holds(cond, nzcv) { branch((i64::from(PC) + 4 + off) as u32, 4) } else { skipped(4) };
            assert_eq!(got, want, "{hw1:04x} {hw2:04x}");
        }
    }
    // Every condition 0..=13 in T3.
    for cond in 0u16..14 {
        let hw1 = 0xF000 | cond << 6;
        for nzcv in 0..16 {
            let got = run(&Cpu::new(&[hw1, 0x8001]).flags(nzcv));
            let want = if cond_holds(cond as u8, nzcv) { branch(PC + 6, 4) } else { skipped(4) };
            assert_eq!(got, want);
        }
    }
}

#[test]
fn b_t4_and_bl_sign_math() {
    // I1 = NOT(J1 XOR S), I2 = NOT(J2 XOR S); imm32 = SignExtend(S:I1:I2:imm10:imm11:'0').
    // Every S/J1/J2 combination with assorted imm10/imm11 fields.
    let mut cases = Vec::new();
    for (s, j1, j2) in (0..8).map(|k| (k >> 2 & 1, k >> 1 & 1, k & 1)) {
        for (imm10, imm11) in [(0u16, 0u16), (0x3FF, 0x7FF), (0x3FF, 0x7FE), (0x123, 0x456)] {
            cases.push((0xF000 | s << 10 | imm10, 0x9000 | j1 << 13 | j2 << 11 | imm11));
        }
    }
    // Recompute the expected offsets bit by bit, independently of the crate.
    for (hw1, hw2) in cases {
        let s = u32::from(hw1 >> 10) & 1;
        let j1 = u32::from(hw2 >> 13) & 1;
        let j2 = u32::from(hw2 >> 11) & 1;
        let i1 = 1 - (j1 ^ s);
        let i2 = 1 - (j2 ^ s);
        let imm10 = u32::from(hw1) & 0x3FF;
        let imm11 = u32::from(hw2) & 0x7FF;
        let mut off = (i1 << 23 | i2 << 22 | imm10 << 12 | imm11 << 1) as i64;
        if s == 1 {
            off -= 1 << 24;
        }
        let target = (i64::from(PC) + 4 + off) as u32;
        assert_eq!(run(&Cpu::new(&[hw1, hw2])), branch(target, 4), "b.w {hw1:04x} {hw2:04x}");
        let bl = hw2 | 0x4000;
        assert_eq!(run(&Cpu::new(&[hw1, bl])), call(target), "bl {hw1:04x} {bl:04x}");
    }
    // Literal encodings from assembler listings.
    assert_eq!(run(&Cpu::new(&[0xF7FF, 0xFFFE])), call(PC)); // bl .
    assert_eq!(run(&Cpu::new(&[0xF000, 0xF800])), call(PC + 4)); // bl next
    assert_eq!(run(&Cpu::new(&[0xF400, 0xD000])), call(PC + 4 - 0x100_0000)); // bl -16 MiB
    assert_eq!(run(&Cpu::new(&[0xF3FF, 0xD7FF])), call(PC + 4 + 0xFF_FFFE)); // bl +16 MiB - 2
    assert_eq!(run(&Cpu::new(&[0xF000, 0xF802])), call(PC + 8));
    assert_eq!(run(&Cpu::new(&[0xF7FF, 0xFFF0])), call(PC + 4 - 0x20));
    // S=0, J1=J2=0 -> I1=I2=1: +0xC00000.
    assert_eq!(run(&Cpu::new(&[0xF000, 0xD000])), call(PC + 4 + 0xC0_0000));
    // S=1, J1=J2=1 -> I1=I2=1: -0x400000.
    assert_eq!(run(&Cpu::new(&[0xF400, 0xF800])), call(PC + 4 - 0x40_0000));
    // b.w across the address-space wrap.
    let cpu = Cpu::new(&[0xF400, 0x9000]);
    assert_eq!(run(&cpu), branch((PC + 4).wrapping_sub(0x100_0000), 4));
}

#[test]
fn blx_immediate_is_undefined_on_m_profile() {
    // blx imm: F000 E800 (op1 = 1x0).
    let got = run(&Cpu::new(&[0xF000, 0xE800])).unwrap();
    assert_eq!(got.flow, Flow::Trap(Trap::Undefined));
    assert_eq!(got.pc, PC);
}

#[test]
fn cbz_cbnz_forward_only() {
    // cbz r0, pc+4: B100; cbz r3, +0x7E max: B3FB (i=1 imm5=1F), cbnz: BBFB; cbnz r7, +6: B90F.
    for (hw, rn, nonzero, off) in [
        (0xB100u16, 0usize, false, 0u32),
        (0xB3FB, 3, false, 126),
        (0xBBFB, 3, true, 126),
        (0xB90F, 7, true, 2),
        (0xB1F9, 1, false, 62),
        (0xB301, 1, false, 64),
    ] {
        for value in [0u32, 1, 0x8000_0000] {
            let cpu = Cpu::new(&[hw]).reg(rn, value);
            let taken = (value != 0) == nonzero;
            let want = if taken { branch(PC + 4 + off, 2) } else { skipped(2) };
            assert_eq!(run(&cpu), want, "{hw:04x} r{rn}={value:x}");
        }
    }
    // In an IT block: UNPREDICTABLE.
    assert_eq!(run(&Cpu::new(&[0xB100]).it(0x08)), Err(Error::Unpredictable));
}

#[test]
fn bx_blx_mov_add_pc() {
    // bx lr: 4770; bx r3: 4718; blx r3: 4798; mov pc, lr: 46F7; add pc, r1: 448F.
    let cpu = Cpu::new(&[0x4770]).reg(14, 0x0800_1235);
    assert_eq!(run(&cpu), branch(0x0800_1234, 2));
    let cpu = Cpu::new(&[0x4718]).reg(3, 0x1000_0001);
    assert_eq!(run(&cpu), branch(0x1000_0000, 2));
    let cpu = Cpu::new(&[0x4798]).reg(3, 0x1000_0001);
    assert_eq!(run(&cpu), Ok(Next { pc: 0x1000_0000, len: 2, flow: Flow::Call }));
    let cpu = Cpu::new(&[0x46F7]).reg(14, 0x0800_1235);
    assert_eq!(run(&cpu), branch(0x0800_1234, 2));
    let cpu = Cpu::new(&[0x448F]).reg(1, 0x10);
    assert_eq!(run(&cpu), branch(PC + 4 + 0x10, 2));
    // add pc, pc: UNPREDICTABLE; mov pc, pc: pc + 4.
    assert_eq!(run(&Cpu::new(&[0x44FF])), Err(Error::Unpredictable));
    assert_eq!(run(&Cpu::new(&[0x46FF])), branch(PC + 4, 2));
    // add pc, sp (ADD SP plus register, Rdm = 15): 44EF.
    let cpu = Cpu::new(&[0x44EF]).reg(13, 0x100);
    assert_eq!(run(&cpu), branch(PC + 4 + 0x100, 2));
    // mov r8, pc / add r8, pc: not PC writers.
    assert_eq!(run(&Cpu::new(&[0x46F8])), seq(2));
    assert_eq!(run(&Cpu::new(&[0x44F8])), seq(2));
    // blx pc: UNPREDICTABLE; bx with non-zero low bits: UNPREDICTABLE.
    assert_eq!(run(&Cpu::new(&[0x47F8])), Err(Error::Unpredictable));
    assert_eq!(run(&Cpu::new(&[0x4771])), Err(Error::Unpredictable));
    // bxns lr / blxns r3: UNDEFINED in Non-secure state.
    assert_eq!(run(&Cpu::new(&[0x4774])).unwrap().flow, Flow::Trap(Trap::Undefined));
    assert_eq!(run(&Cpu::new(&[0x479C])).unwrap().flow, Flow::Trap(Trap::Undefined));
}

#[test]
fn interworking_and_exception_return() {
    // bx lr with EXC_RETURN in Handler mode: exception return.
    let cpu = Cpu::new(&[0x4770]).reg(14, 0xFFFF_FFBC).handler(16);
    assert_eq!(run(&cpu), Ok(Next { pc: 0xFFFF_FFBC, len: 2, flow: Flow::ExceptionReturn(0xFFFF_FFBC) }));
    // In Thread mode it is a branch into the XN region.
    let cpu = Cpu::new(&[0x4770]).reg(14, 0xFFFF_FFBD);
    assert_eq!(run(&cpu), branch(0xFFFF_FFBC, 2));
    // bx to an even address: INVSTATE.
    let cpu = Cpu::new(&[0x4770]).reg(14, 0x0800_1234);
    assert_eq!(run(&cpu), Ok(Next { pc: 0x0800_1234, len: 2, flow: Flow::Trap(Trap::InvalidState) }));
    // pop {pc} with EXC_RETURN in Handler mode.
    let cpu = Cpu::new(&[0xBD00]).word(0x2000_8000, 0xFFFF_FFF9).handler(3);
    assert_eq!(run(&cpu).unwrap().flow, Flow::ExceptionReturn(0xFFFF_FFF9));
    // blx never returns from an exception.
    let cpu = Cpu::new(&[0x4798]).reg(3, 0xFFFF_FFF9).handler(3);
    assert_eq!(run(&cpu).unwrap().flow, Flow::Call);
    // mov pc, lr (BranchWritePC): just a branch.
    let cpu = Cpu::new(&[0x46F7]).reg(14, 0xFFFF_FFF9).handler(3);
    assert_eq!(run(&cpu), branch(0xFFFF_FFF8, 2));
}

#[test]
fn pop_and_ldm() {
    let sp = 0x2000_8000;
    // pop {r4, pc}: BD10 -> PC from sp + 4.
    let cpu = Cpu::new(&[0xBD10]).word(sp + 4, 0x0800_2001);
    assert_eq!(run(&cpu), branch(0x0800_2000, 2));
    // pop {pc}: BD00.
    let cpu = Cpu::new(&[0xBD00]).word(sp, 0x0800_3001);
    assert_eq!(run(&cpu), branch(0x0800_3000, 2));
    // pop {r0-r7, pc}: BDFF -> sp + 32.
    let cpu = Cpu::new(&[0xBDFF]).word(sp + 32, 0x0800_3005);
    assert_eq!(run(&cpu), branch(0x0800_3004, 2));
    // pop {r4}: not a PC writer; pop {} UNPREDICTABLE.
    assert_eq!(run(&Cpu::new(&[0xBC10])), seq(2));
    assert_eq!(run(&Cpu::new(&[0xBC00])), Err(Error::Unpredictable));
    // pop.w {r4-r11, pc}: E8BD 8FF0 -> sp + 32.
    let cpu = Cpu::new(&[0xE8BD, 0x8FF0]).word(sp + 32, 0x0800_4441);
    assert_eq!(run(&cpu), branch(0x0800_4440, 4));
    // ldmia r0, {r1, pc}: E890 8002 -> r0 + 4.
    let cpu = Cpu::new(&[0xE890, 0x8002]).reg(0, 0x2000_0400).word(0x2000_0404, 0x0800_0101);
    assert_eq!(run(&cpu), branch(0x0800_0100, 4));
    // ldmdb r0, {r1, pc}: E910 8002 -> r0 - 4.
    let cpu = Cpu::new(&[0xE910, 0x8002]).reg(0, 0x2000_0400).word(0x2000_03FC, 0x0800_0201);
    assert_eq!(run(&cpu), branch(0x0800_0200, 4));
    // ldmdb r0!, {r1, r2, pc}: E930 8006 -> r0 - 4 still.
    let cpu = Cpu::new(&[0xE930, 0x8006]).reg(0, 0x2000_0400).word(0x2000_03FC, 0x0800_0301);
    assert_eq!(run(&cpu), branch(0x0800_0300, 4));
    // UNPREDICTABLE: PC and LR both, a single register, base in list with writeback, SP bit.
    assert_eq!(run(&Cpu::new(&[0xE8BD, 0xC000])), Err(Error::Unpredictable));
    assert_eq!(run(&Cpu::new(&[0xE890, 0x8000])), Err(Error::Unpredictable));
    assert_eq!(run(&Cpu::new(&[0xE8B0, 0x8001])), Err(Error::Unpredictable));
    assert_eq!(run(&Cpu::new(&[0xE890, 0xA002])), Err(Error::Unpredictable));
    // ldm without pc: fall through. stm: fall through.
    assert_eq!(run(&Cpu::new(&[0xE890, 0x4002])), seq(4));
    assert_eq!(run(&Cpu::new(&[0xE92D, 0x4FF0])), seq(4)); // push.w {r4-r11, lr}
                                                           // Unaligned base: UsageFault.
    let cpu = Cpu::new(&[0xE890, 0x8002]).reg(0, 0x2000_0402);
    assert_eq!(run(&cpu).unwrap().flow, Flow::Trap(Trap::Unaligned));
    // Unreadable stack: the fault is reported.
    let cpu = Cpu::new(&[0xBD00]);
    assert_eq!(run(&cpu), Err(Error::Fault(Fault { addr: sp })));
    // SG (E97F E97F): a no-op in Non-secure state, not an LDMDB.
    assert_eq!(run(&Cpu::new(&[0xE97F, 0xE97F])), seq(4));
}

#[test]
fn ldr_pc_forms() {
    // ldr pc, [sp], #4 (pop.w {pc} as T4 post-index): F85D FB04 -> from sp.
    let cpu = Cpu::new(&[0xF85D, 0xFB04]).word(0x2000_8000, 0x0800_5001);
    assert_eq!(run(&cpu), branch(0x0800_5000, 4));
    // ldr.w pc, [r0, #4] (T3): F8D0 F004.
    let cpu = Cpu::new(&[0xF8D0, 0xF004]).reg(0, 0x2000_0100).word(0x2000_0104, 0x0800_6001);
    assert_eq!(run(&cpu), branch(0x0800_6000, 4));
    // ldr pc, [r0, #-8] (T4, P=1 U=0 W=0): F850 FC08.
    let cpu = Cpu::new(&[0xF850, 0xFC08]).reg(0, 0x2000_0100).word(0x2000_00F8, 0x0800_7001);
    assert_eq!(run(&cpu), branch(0x0800_7000, 4));
    // ldr pc, [r0, #8]! (T4, P=1 U=1 W=1): F850 FF08.
    let cpu = Cpu::new(&[0xF850, 0xFF08]).reg(0, 0x2000_0100).word(0x2000_0108, 0x0800_7101);
    assert_eq!(run(&cpu), branch(0x0800_7100, 4));
    // ldr pc, [r0], #-8 (T4, P=0 U=0 W=1): F850 F908 -> from r0.
    let cpu = Cpu::new(&[0xF850, 0xF908]).reg(0, 0x2000_0100).word(0x2000_0100, 0x0800_7201);
    assert_eq!(run(&cpu), branch(0x0800_7200, 4));
    // ldr pc, [r0, r1, lsl #2]: F850 F021.
    let cpu = Cpu::new(&[0xF850, 0xF021]).reg(0, 0x2000_0100).reg(1, 3).word(0x2000_010C, 0x0800_8001);
    assert_eq!(run(&cpu), branch(0x0800_8000, 4));
    // ldr pc, [pc, #8] literal (U=1): F8DF F008 -> Align(pc+4, 4) + 8.
    let cpu = Cpu::new(&[0xF8DF, 0xF008]).word(PC + 12, 0x0800_9001);
    assert_eq!(run(&cpu), branch(0x0800_9000, 4));
    // literal at a pc that is not word aligned, U=0: F85F F004 -> Align(pc+4,4) - 4.
    let mut cpu = Cpu::new(&[]).half(PC + 2, 0xF85F).half(PC + 4, 0xF004);
    cpu.regs[15] = PC + 2;
    let cpu = cpu.word(PC, 0x0800_9101);
    assert_eq!(run(&cpu), branch(0x0800_9100, 4));
    // Unaligned address: UNPREDICTABLE. Even value: INVSTATE.
    let cpu = Cpu::new(&[0xF8D0, 0xF002]).reg(0, 0x2000_0100);
    assert_eq!(run(&cpu), Err(Error::Unpredictable));
    let cpu = Cpu::new(&[0xF8D0, 0xF000]).reg(0, 0x2000_0100).word(0x2000_0100, 0x0800_0000);
    assert_eq!(run(&cpu).unwrap().flow, Flow::Trap(Trap::InvalidState));
    // ldr pc, [r0, sp]: UNPREDICTABLE; ldrt pc: UNPREDICTABLE.
    assert_eq!(run(&Cpu::new(&[0xF850, 0xF00D])), Err(Error::Unpredictable));
    assert_eq!(run(&Cpu::new(&[0xF850, 0xFE04])), Err(Error::Unpredictable));
    // ldr r0, [r1]: not a PC writer.
    assert_eq!(run(&Cpu::new(&[0xF8D1, 0x0000])), seq(4));
    // pld [r0] (ldrb with Rt = PC): a hint.
    assert_eq!(run(&Cpu::new(&[0xF890, 0xF000])), seq(4));
    // ldr.w pc in the UNDEFINED P=0 W=0 form.
    assert_eq!(run(&Cpu::new(&[0xF850, 0xF804])).unwrap().flow, Flow::Trap(Trap::Undefined));
}

#[test]
fn tbb_tbh() {
    // tbb [pc, r0]: E8DF F000 — the table follows the instruction at pc + 4.
    let cpu = Cpu::new(&[0xE8DF, 0xF000, 0x0503, 0x0907]).reg(0, 1);
    assert_eq!(run(&cpu), branch(PC + 4 + 2 * 0x05, 4));
    let cpu = Cpu::new(&[0xE8DF, 0xF000, 0x0503, 0x0907]).reg(0, 2);
    assert_eq!(run(&cpu), branch(PC + 4 + 2 * 0x07, 4));
    // tbb [r1, r2]: E8D1 F002, byte 0xFF -> +510.
    let cpu = Cpu::new(&[0xE8D1, 0xF002]).reg(1, 0x2000_0200).reg(2, 3).word(0x2000_0200, 0xFF00_0000);
    assert_eq!(run(&cpu), branch(PC + 4 + 510, 4));
    // tbh [pc, r0, lsl #1]: E8DF F010.
    let cpu = Cpu::new(&[0xE8DF, 0xF010, 0x0004, 0x1234]).reg(0, 1);
    assert_eq!(run(&cpu), branch(PC + 4 + 2 * 0x1234, 4));
    // tbh with a halfword at an address that is 2 mod 4, entry 0xFFFF.
    let cpu = Cpu::new(&[0xE8D1, 0xF012]).reg(1, 0x2000_0200).reg(2, 1).word(0x2000_0200, 0xFFFF_0000);
    assert_eq!(run(&cpu), branch(PC + 4 + 2 * 0xFFFF, 4));
    // tbb [r0, sp] / tbb [r0, pc]: UNPREDICTABLE.
    assert_eq!(run(&Cpu::new(&[0xE8D0, 0xF00D])), Err(Error::Unpredictable));
    assert_eq!(run(&Cpu::new(&[0xE8D0, 0xF00F])), Err(Error::Unpredictable));
    // Not last in an IT block: UNPREDICTABLE; last and failing: skipped.
    assert_eq!(run(&Cpu::new(&[0xE8DF, 0xF000]).it(0x04)), Err(Error::Unpredictable));
    assert_eq!(run(&Cpu::new(&[0xE8DF, 0xF000]).it(0x08)), skipped(4)); // EQ, Z clear
}

#[test]
fn it_blocks_every_condition() {
    for cond in 0u8..15 {
        for nzcv in 0..16 {
            let pass = cond_holds(cond, nzcv);
            // Last in the block (ITSTATE = cond:1000): b.n, bx lr, mov r0, r1, bl, pop {pc}.
            let last = cond << 4 | 0b1000;
            let cpu = Cpu::new(&[0xE000]).flags(nzcv).it(last);
            assert_eq!(run(&cpu), if pass { branch(PC + 4, 2) } else { skipped(2) });
            let cpu = Cpu::new(&[0x4770]).flags(nzcv).it(last);
            assert_eq!(run(&cpu), if pass { branch(0x0800_1234, 2) } else { skipped(2) });
            let cpu = Cpu::new(&[0x0008]).flags(nzcv).it(last); // movs r0, r1
            assert_eq!(run(&cpu), if pass { seq(2) } else { skipped(2) });
            let cpu = Cpu::new(&[0xF000, 0xF800]).flags(nzcv).it(last);
            assert_eq!(run(&cpu), if pass { call(PC + 4) } else { skipped(4) });
            let cpu = Cpu::new(&[0xBD00]).flags(nzcv).it(last).word(0x2000_8000, 0x0800_0011);
            assert_eq!(run(&cpu), if pass { branch(0x0800_0010, 2) } else { skipped(2) });
            // Not last (mask bits below): ordinary instructions are conditional, PC writers
            // UNPREDICTABLE.
            for tail in [0b0100u8, 0b0010, 0b0001, 0b1100] {
                let it = cond << 4 | tail;
                let cpu = Cpu::new(&[0x0008]).flags(nzcv).it(it);
                assert_eq!(run(&cpu), if pass { seq(2) } else { skipped(2) });
                let cpu = Cpu::new(&[0xF8D1, 0x0000]).flags(nzcv).it(it); // ldr.w r0, [r1]
                assert_eq!(run(&cpu), if pass { seq(4) } else { skipped(4) });
                for code in [[0xE000u16, 0], [0x4770, 0], [0xF000, 0xF800], [0xBD00, 0]] {
                    let cpu = Cpu::new(&code).flags(nzcv).it(it);
                    assert_eq!(run(&cpu), Err(Error::Unpredictable), "{code:04x?} it={it:08b}");
                }
            }
            // The condition comes from ITSTATE<7:4>, which includes the mask's bit: an
            // "else" slot of `ite eq` carries NE. bkpt is unconditional.
            let cpu = Cpu::new(&[0xBEAB]).flags(nzcv).it(last);
            assert_eq!(run(&cpu).unwrap().flow, Flow::Trap(Trap::Bkpt(0xAB)));
            // Conditional branches (T1, T3), cbz and it itself are UNPREDICTABLE in a block.
            for code in [[0xD000u16, 0], [0xF000, 0x8000], [0xB100, 0], [0xBF08, 0]] {
                let cpu = Cpu::new(&code).flags(nzcv).it(last);
                assert_eq!(run(&cpu), Err(Error::Unpredictable));
            }
        }
    }
}

#[test]
fn it_instruction_itself() {
    // it eq: BF08; ite eq: BF0C; itttt ne: BF11; it al: BFE8 -> pc + 2.
    for hw in [0xBF08u16, 0xBF0C, 0xBF11, 0xBFE8, 0xBFC4] {
        assert_eq!(run(&Cpu::new(&[hw])), seq(2), "{hw:04x}");
    }
    // firstcond = 1111 or AL with an "else" slot: UNPREDICTABLE.
    assert_eq!(run(&Cpu::new(&[0xBFF8])), Err(Error::Unpredictable));
    assert_eq!(run(&Cpu::new(&[0xBFEC])), Err(Error::Unpredictable));
    // Hints: nop, yield, wfe, wfi, sev.
    for hw in [0xBF00u16, 0xBF10, 0xBF20, 0xBF30, 0xBF40] {
        assert_eq!(run(&Cpu::new(&[hw])), seq(2));
    }
}

#[test]
fn traps() {
    assert_eq!(run(&Cpu::new(&[0xDF05])), Ok(Next { pc: PC + 2, len: 2, flow: Flow::Trap(Trap::Svc(5)) }));
    assert_eq!(run(&Cpu::new(&[0xBEAB])), Ok(Next { pc: PC, len: 2, flow: Flow::Trap(Trap::Bkpt(0xAB)) }));
    assert_eq!(run(&Cpu::new(&[0xDE12])), Ok(Next { pc: PC, len: 2, flow: Flow::Trap(Trap::Udf(0x12)) }));
    // udf.w #0x1234: F7F1 A234.
    assert_eq!(run(&Cpu::new(&[0xF7F1, 0xA234])), Ok(Next { pc: PC, len: 4, flow: Flow::Trap(Trap::Udf(0x1234)) }));
    // svc in a failing IT slot is skipped.
    let cpu = Cpu::new(&[0xDF00]).it(0x08);
    assert_eq!(run(&cpu), skipped(2));
}

#[test]
fn data_processing_rd_pc() {
    // cmp.w r0, #1: F1B0 0F01 (Rd = 1111, S = 1): flags only.
    assert_eq!(run(&Cpu::new(&[0xF1B0, 0x0F01])), seq(4));
    // tst.w r0, r1: EA10 0F01; teq.w: EA90 0F01; cmn.w: EB10 0F01; cmp.w r0, r1: EBB0 0F01.
    for hw1 in [0xEA10u16, 0xEA90, 0xEB10, 0xEBB0] {
        assert_eq!(run(&Cpu::new(&[hw1, 0x0F01])), seq(4));
    }
    // add.w pc, r0, r1 (EB00 0F01), mov.w pc, r0 (EA4F 0F00), movw pc, #1
    // (F240 0F01), mul pc, r0, r1 (FB00 FF01), lsl.w pc, r0, r1 (FA00 FF01), add.w pc, r0, #1 (F100 0F01): UNPREDICTABLE.
    for code in
        [[0xEB00u16, 0x0F01], [0xEA4F, 0x0F00], [0xF240, 0x0F01], [0xFB00, 0xFF01], [0xFA00, 0xFF01], [0xF100, 0x0F01]]
    {
        assert_eq!(run(&Cpu::new(&code)), Err(Error::Unpredictable), "{code:04x?}");
    }
}

#[test]
fn fetch_faults() {
    let cpu = Cpu::new(&[]);
    assert_eq!(run(&cpu), Err(Error::Fault(Fault { addr: PC })));
    let cpu = Cpu::new(&[0xF000]);
    assert_eq!(run(&cpu), Err(Error::Fault(Fault { addr: PC + 2 })));
}
