//! crashy: runs for two seconds, then reads secure memory — a SecureFault the visor contains.
//! The faulting instruction is labelled `crashy_fault_insn`, so tests can check the crash
//! report's PC against the ELF.
#![no_std]
#![no_main]
#![deny(clippy::undocumented_unsafe_blocks)]

keel_app::entry!(main);

core::arch::global_asm!(
    r#"
    .section .text.crashy_do_fault,"ax",%progbits
    .global crashy_do_fault
    .global crashy_fault_insn
    .type crashy_do_fault,%function
    .thumb_func
crashy_do_fault:
    ldr r0, =0x10000000
crashy_fault_insn:
    ldr r0, [r0]
    bx lr
    .ltorg
"#
);

extern "C" {
    fn crashy_do_fault() -> u32;
}

fn main() -> ! {
    let info = keel_app::boot_info();
    match info {
        Ok(b) => keel_app::info!(
            "crashy: start #{} reason={} crashes={}",
            b.restart_count,
            keel_app::StartReason::from_u32(b.reason).map_or("?", |r| r.name()),
            b.crash_count
        ),
        Err(e) => keel_app::error!("crashy: boot_info failed: {}", e.name()),
    }
    if let Ok(c) = keel_app::last_crash() {
        keel_app::info!(
            "crashy: my last crash: {} at pc={:#010x}",
            keel_app::FaultKind::from_u32(c.kind).map_or("?", |k| k.name()),
            c.pc()
        );
    }
    keel_app::info!("crashy: faulting in 2 s");
    keel_app::sleep_ms(2000);
    // SAFETY: deliberately faults: the visor catches the SecureFault and restarts the app.
    let v = unsafe { crashy_do_fault() };
    keel_app::error!("crashy: read secure memory?! {:#x}", v);
    loop {
        keel_app::sleep_ms(1000);
    }
}
