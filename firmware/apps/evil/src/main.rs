//! evil: attacks the visor from the app side.
//!
//! Every start it first checks that the visor still answers correctly, then:
//! * on the first start, passes hostile arguments to every system call (secure, unmapped and
//!   peripheral pointers, huge and wrapping lengths, bad enums, reserved slots) and checks that
//!   each yields the documented status; then tries things that must be silently ignored
//!   (disabling the SAU, resetting the system);
//! * on start number k, runs fault attack k, which must end in a crash the visor contains.
//!
//! Lines the tests look for: `evil: check <name> ... ok|FAILED`, `evil: fault attack #k <name>`,
//! `evil: fault attack #k <name> DID NOT FAULT`, `evil: all attacks done`.
#![no_std]
#![no_main]
#![deny(clippy::undocumented_unsafe_blocks)]

use keel_app::{raw, Call, Status};

keel_app::entry!(main);

const SECURE_CODE: u32 = 0x1000_0000;
const SECURE_RAM: u32 = 0x3820_0000;
const FLASH: u32 = 0x8000_0000;
const NSC: u32 = 0x1007_0000;
const PERIPHERAL: u32 = 0x4020_0000; // UART0 non-secure alias, blocked by its PPC
const UNMAPPED: u32 = 0xF000_0000;
const APP_RAM_END: u32 = 0x2820_0000;

static mut FAILURES: u32 = 0;

fn check(name: &str, got: u32, want: Status) {
    let ok = got == want as u32;
    let got_name = Status::from_u32(got).map_or("?", |s| s.name());
    if ok {
        keel_app::info!("evil: check {} -> {} ok", name, got_name);
    } else {
        keel_app::error!("evil: check {} -> {} (expected {}) FAILED", name, got_name, want.name());
        // SAFETY: single-threaded app, no interrupt handlers touch this.
        unsafe { FAILURES += 1 };
    }
}

fn sys(call: Call, a0: u32, a1: u32, a2: u32) -> u32 {
    // SAFETY: hostile arguments are the point; the visor validates them. Valid pointers passed
    // here point at live locals.
    unsafe { raw::call(call as u32, a0, a1, a2, 0) }
}

fn sanity() {
    let id = keel_app::device_id();
    let abi = keel_app::abi_info();
    let b = keel_app::boot_info();
    match (id, abi, b) {
        (Ok(id), Ok(a), Ok(b)) => keel_app::info!(
            "evil: sanity device={} abi={}.{} start={} uptime_ms={}",
            id,
            a.abi_major,
            a.abi_minor,
            b.restart_count,
            keel_app::monotonic_us() / 1000
        ),
        _ => keel_app::error!("evil: sanity FAILED: a basic call returned an error"),
    }
}

fn parameter_attacks() {
    let bad_ptrs: [(&str, u32); 8] = [
        ("secure-code", SECURE_CODE),
        ("secure-ram", SECURE_RAM),
        ("flash", FLASH),
        ("nsc", NSC),
        ("peripheral", PERIPHERAL),
        ("unmapped", UNMAPPED),
        ("null", 0),
        ("ram-end-straddle", APP_RAM_END - 2),
    ];
    for (what, p) in bad_ptrs {
        check_named("device_id", what, sys(Call::DeviceId, p, 34, 0), Status::ParameterFault);
        check_named("wall_time_us", what, sys(Call::WallTimeUs, p, 0, 0), Status::ParameterFault);
        check_named("log", what, sys(Call::Log, 2, p, 16), Status::ParameterFault);
        check_named("abi_info", what, sys(Call::AbiInfo, p, 0, 0), Status::ParameterFault);
        check_named("boot_info", what, sys(Call::BootInfo, p, 0, 0), Status::ParameterFault);
        check_named("last_crash", what, sys(Call::LastCrash, p, 0, 0), Status::ParameterFault);
        check_named("update_info", what, sys(Call::UpdateInfo, p, 0, 0), Status::ParameterFault);
        if p != 0 {
            // NULL turns notifications off.
            check_named("notify_setup", what, sys(Call::NotifySetup, p, 16 + 16 * 4, 80), Status::ParameterFault);
        }
    }
    channel_attacks(&bad_ptrs);
    let mut buf = [0u8; 64];
    let b = buf.as_mut_ptr() as u32;
    // Lengths.
    check("log huge length", sys(Call::Log, 2, b, 0xFFFF_FFFF), Status::LogMessageTooLong);
    check("log 513 bytes", sys(Call::Log, 2, b, 513), Status::LogMessageTooLong);
    check("log wrapping range", sys(Call::Log, 2, 0xFFFF_FF00, 0x200), Status::ParameterFault);
    check("log bad level", sys(Call::Log, 99, b, 4), Status::InvalidArgument);
    check("device_id short buffer", sys(Call::DeviceId, b, 33, 0), Status::InvalidBufferSize);
    check("device_id huge len, bad ptr", sys(Call::DeviceId, SECURE_RAM, 0xFFFF_FFFF, 0), Status::ParameterFault);
    // Read-only memory for outputs: the app's own code is readable but writes must be refused? It
    // is RAM on this board and writable by the app, so the visor accepts it; use the NSC table,
    // which is readable by nobody in the app.
    check("abi_info into NSC", sys(Call::AbiInfo, NSC, 0, 0), Status::ParameterFault);
    // Versioned structs.
    let mut s = [0u32; 32];
    s[0] = 2;
    check("abi_info version 2", sys(Call::AbiInfo, s.as_mut_ptr() as u32, 0, 0), Status::UnsupportedStructVersion);
    check("boot_info version 0", sys(Call::BootInfo, buf.as_mut_ptr() as u32, 0, 0), Status::UnsupportedStructVersion);
    check(
        "update_info version 0",
        sys(Call::UpdateInfo, buf.as_mut_ptr() as u32, 0, 0),
        Status::UnsupportedStructVersion,
    );
    // Not an update on trial: nothing to confirm, and nothing in the journal changes.
    check("update_confirm not on trial", sys(Call::UpdateConfirm, 1, 2, 3), Status::Unavailable);
    check("update_apply with nothing ready", sys(Call::UpdateApply, 1, 2, 3), Status::Unavailable);
    // Notification rings: sizes, lines, alignment; the timer needs a ring.
    check("timer_set without a ring", sys(Call::TimerSet, 1, 0, 7), Status::Unavailable);
    let mut ring = [0u32; 4 + 4 * 4];
    let r = ring.as_mut_ptr() as u32;
    check("notify_setup 3 records", sys(Call::NotifySetup, r, 16 + 16 * 3, 80), Status::InvalidBufferSize);
    check("notify_setup 0 bytes", sys(Call::NotifySetup, r, 0, 80), Status::InvalidBufferSize);
    check("notify_setup huge", sys(Call::NotifySetup, r, 0xFFFF_FFF0, 80), Status::InvalidBufferSize);
    check("notify_setup alarm line", sys(Call::NotifySetup, r, 16 + 16 * 4, 3), Status::InvalidArgument);
    check("notify_setup NIC line", sys(Call::NotifySetup, r, 16 + 16 * 4, 48), Status::InvalidArgument);
    check("notify_setup misaligned", sys(Call::NotifySetup, r + 2, 16 + 16 * 4, 80), Status::ParameterFault);
    check("notify_setup off", sys(Call::NotifySetup, 0, 0, 0), Status::Ok);
    // Enums and ranges.
    check("watchdog_start 0 ms", sys(Call::WatchdogStart, 0, 0, 0), Status::InvalidArgument);
    check("watchdog_start 10 hours", sys(Call::WatchdogStart, 36_000_000, 0, 0), Status::InvalidArgument);
    check("watchdog_kick unarmed", sys(Call::WatchdogKick, 0, 0, 0), Status::Unavailable);
    // Reserved slots.
    for slot in [6u32, 11, 27, 35, 63] {
        // SAFETY: reserved slots take no arguments.
        let r = unsafe { raw::call(slot, 1, 2, 3, 4) };
        let mut n = keel_app::LineBuf::new();
        let _ = core::fmt::Write::write_fmt(&mut n, format_args!("{}", slot));
        check_named("reserved slot", core::str::from_utf8(n.as_bytes()).unwrap_or("?"), r, Status::NotImplemented);
    }
    // Things the hardware must silently ignore.
    // SAFETY: writes to secure-only system registers from the non-secure side are RAZ/WI.
    unsafe {
        core::ptr::write_volatile(0xE000_EDD0 as *mut u32, 0); // SAU_CTRL: disable the SAU
        core::ptr::write_volatile(0xE000_ED0C as *mut u32, 0x05FA_0004); // AIRCR: SYSRESETREQ
        core::ptr::write_volatile(0xE000_ED0C as *mut u32, 0x05FA_2000); // AIRCR: BFHFNMINS=1
    }
    keel_app::info!("evil: system reset and SAU/AIRCR writes had no effect");
    // Peripherals (the console UART included) are not in any non-secure SAU region: an access
    // is a SecureFault, recorded like any fault of the app (the hostile-app suite probes every
    // block of the peripheral space).
    // SAFETY: FAILURES is only touched by this thread.
    let f = unsafe { FAILURES };
    keel_app::info!("evil: parameter attacks done, failures={}", f);
}

/// The network and channel calls (ABI 2.1) with the same pointers, and forged handles. Every
/// pointer is checked before anything else (the link's state included), so these run without
/// a server; a valid open then answers NETWORK_NOT_CONNECTED.
fn channel_attacks(bad_ptrs: &[(&str, u32)]) {
    use keel_abi::chan::{Kind, OpenParams};
    #[repr(C, align(4))]
    struct Buffers([u8; 64], [u8; 64], [u8; 8]);
    let mut bufs = Buffers([0; 64], [0; 64], *b"endpoint");
    let (rx, tx, ep) = (bufs.0.as_mut_ptr() as u32, bufs.1.as_mut_ptr() as u32, bufs.2.as_ptr() as u32);
    let good = OpenParams {
        version: 1,
        kind: Kind::Http as u32,
        tag: 1,
        rx_buf: rx,
        rx_len: 64,
        tx_buf: tx,
        tx_len: 64,
        endpoint: ep,
        endpoint_len: 0,
    };
    let open = |p: &OpenParams, out: u32| sys(Call::ChanOpen, p as *const OpenParams as u32, out, 0);
    let mut handle = 0xAAAA_AAAAu32;
    let h = &mut handle as *mut u32 as u32;
    for &(what, p) in bad_ptrs {
        // An aligned address that spans the end of app RAM instead of the misaligned one.
        let aligned = if p % 4 == 0 { p } else { APP_RAM_END - 32 };
        check_named("net_status", what, sys(Call::NetStatus, p, 0, 0), Status::ParameterFault);
        check_named("chan_open params", what, sys(Call::ChanOpen, p, h, 0), Status::ParameterFault);
        check_named("chan_open handle out", what, open(&good, p), Status::ParameterFault);
        check_named("chan_open rx", what, open(&OpenParams { rx_buf: aligned, ..good }, h), Status::ParameterFault);
        check_named("chan_open tx", what, open(&OpenParams { tx_buf: aligned, ..good }, h), Status::ParameterFault);
        let ep_bad = OpenParams { endpoint: p, endpoint_len: 8, ..good };
        check_named("chan_open endpoint", what, open(&ep_bad, h), Status::ParameterFault);
        // The visor writes 0 through this pointer: never into memory the app may not write.
        check_named("chan_close", what, sys(Call::ChanClose, p, 0, 0), Status::ParameterFault);
        check_named("chan_recv", what, sys(Call::ChanRecv, 0x0101, p, 0), Status::ParameterFault);
        check_named("chan_info", what, sys(Call::ChanInfo, 0x0101, p, 0), Status::ParameterFault);
    }
    if handle == 0xAAAA_AAAA {
        keel_app::info!("evil: check chan_open wrote no handle on failure ok");
    } else {
        keel_app::error!("evil: check chan_open wrote no handle on failure -> {:#x} FAILED", handle);
        // SAFETY: single-threaded app, no interrupt handlers touch this.
        unsafe { FAILURES += 1 };
    }
    // Sizes, alignment, overlap, versions and kinds.
    check("chan_open version 2", open(&OpenParams { version: 2, ..good }, h), Status::UnsupportedStructVersion);
    check("chan_open kind 99", open(&OpenParams { kind: 99, ..good }, h), Status::UnknownChannelKind);
    check("chan_open rx misaligned", open(&OpenParams { rx_buf: rx + 2, ..good }, h), Status::InvalidBufferAlignment);
    check("chan_open rx 32 bytes", open(&OpenParams { rx_len: 32, ..good }, h), Status::InvalidBufferSize);
    check("chan_open rx 4 GiB", open(&OpenParams { rx_len: 0xFFFF_FFFC, ..good }, h), Status::InvalidBufferSize);
    check("chan_open overlap", open(&OpenParams { tx_buf: rx + 32, ..good }, h), Status::BufferInUse);
    let ep_long = OpenParams { endpoint_len: 65, ..good };
    check("chan_open endpoint 65 bytes", open(&ep_long, h), Status::InvalidArgument);
    // Everything valid, but the visor has no link here.
    check("chan_open offline", open(&good, h), Status::NetworkNotConnected);
    // Forged handles.
    let mut info = [1u32, 0, 0, 0, 0, 0];
    let i = info.as_mut_ptr() as u32;
    for forged in [0u32, 1, 0x0101, 0x0000_FF01, 0xFFFF_FFFF] {
        let mut n = keel_app::LineBuf::new();
        let _ = core::fmt::Write::write_fmt(&mut n, format_args!("{:#x}", forged));
        let what = core::str::from_utf8(n.as_bytes()).unwrap_or("?");
        check_named("chan_send forged", what, sys(Call::ChanSend, forged, tx, 16), Status::InvalidHandle);
        check_named("chan_consume forged", what, sys(Call::ChanConsume, forged, 0, 0), Status::InvalidHandle);
        info[0] = 1;
        check_named("chan_recv forged", what, sys(Call::ChanRecv, forged, i, 0), Status::InvalidHandle);
        info[0] = 1;
        check_named("chan_info forged", what, sys(Call::ChanInfo, forged, i, 0), Status::InvalidHandle);
        let mut hv = forged;
        let r = sys(Call::ChanClose, &mut hv as *mut u32 as u32, 0, 0);
        check_named("chan_close forged", what, r, Status::InvalidHandle);
        // 0 is Status::Ok's value: the handle was zeroed.
        check_named("chan_close zeroes the handle", what, hv, Status::Ok);
    }
    check("chan_send from secure RAM, forged", sys(Call::ChanSend, 0x0101, SECURE_RAM, 64), Status::InvalidHandle);
}

fn check_named(call: &str, what: &str, got: u32, want: Status) {
    let mut n = keel_app::LineBuf::new();
    let _ = core::fmt::Write::write_fmt(&mut n, format_args!("{} {}", call, what));
    check(core::str::from_utf8(n.as_bytes()).unwrap_or("?"), got, want);
}

#[inline(never)]
fn recurse(n: u32) -> u32 {
    let mut pad = [n; 64];
    core::hint::black_box(&mut pad);
    if n == u32::MAX {
        return 0;
    }
    recurse(n + 1).wrapping_add(pad[3])
}

fn branch_to(addr: u32) {
    // SAFETY: deliberately branches somewhere the app may not execute.
    unsafe {
        let f: extern "C" fn() = core::mem::transmute(addr as usize);
        f();
    }
}

/// The fault attacks, one per start. Each must crash.
const ATTACKS: &[&str] = &[
    "read-visor-code",
    "write-visor-ram",
    "read-factory-keys",
    "write-flash-journal",
    "write-visor-code-ns-alias",
    "write-mpc-config",
    "read-secure-after-sau-disable",
    "branch-into-visor",
    "branch-into-veneer-middle",
    "branch-past-nsc-table",
    "stack-overflow",
    "msp-into-secure-ram-then-svc",
    "hang-with-faultmask",
    "undefined-instruction",
    "fault-in-interrupt-handler",
    "hang-in-exception-handler",
];

/// A vector table in RAM whose SVCall handler never returns (for the last attack).
#[repr(C, align(512))]
struct RamVectors([u32; 48]);
static mut RAM_VECTORS: RamVectors = RamVectors([0; 48]);

extern "C" fn spin_forever() {
    loop {
        core::hint::spin_loop();
    }
}

fn fault_attack(k: usize) {
    let name = ATTACKS[k];
    keel_app::info!("evil: fault attack #{} {}", k, name);
    // SAFETY: every access below is meant to fault; the visor must contain it.
    unsafe {
        match k {
            0 => {
                core::ptr::read_volatile(SECURE_CODE as *const u32);
            }
            1 => core::ptr::write_volatile(SECURE_RAM as *mut u32, 0xDEAD_BEEF),
            2 => {
                core::ptr::read_volatile((FLASH + 0x18) as *const u32);
            }
            3 => core::ptr::write_volatile((FLASH + 0x2000) as *mut u32, 0),
            4 => core::ptr::write_volatile(0x0000_0100 as *mut u32, 0),
            5 => core::ptr::write_volatile(0x5800_7000 as *mut u32, 0), // MPC0 CTRL, secure alias
            6 => {
                core::ptr::write_volatile(0xE000_EDD0 as *mut u32, 0);
                core::ptr::read_volatile((SECURE_CODE + 0x40) as *const u32);
            }
            7 => branch_to(SECURE_CODE | 0x101),
            8 => branch_to((NSC + 4) | 1),
            9 => branch_to((NSC + 64 * 16) | 1),
            10 => {
                core::hint::black_box(recurse(0));
            }
            11 => core::arch::asm!("msr msp, {s}", "svc #0", s = in(reg) SECURE_RAM + 0x100),
            12 => {
                keel_app::watchdog_start(200).ok();
                core::arch::asm!("cpsid f", "2:", "b 2b", options(noreturn));
            }
            13 => core::arch::asm!("udf #7"),
            15 => {
                // Our own SVCall handler that never returns, with the watchdog armed: a hang in
                // handler mode, which only a system reset can end.
                let table = &mut *core::ptr::addr_of_mut!(RAM_VECTORS);
                for (i, w) in table.0.iter_mut().enumerate() {
                    *w = core::ptr::read_volatile((0x0020_0000 + 4 * i) as *const u32);
                }
                table.0[11] = spin_forever as *const () as u32 | 1;
                core::ptr::write_volatile(0xE000_ED08 as *mut u32, table.0.as_ptr() as u32); // VTOR
                core::arch::asm!("dsb", "isb");
                keel_app::watchdog_start(200).ok();
                core::arch::asm!("svc #1");
            }
            _ => {
                // Pend our own PendSV; its handler (the SDK default) executes `udf`, so the app
                // faults in handler mode.
                core::ptr::write_volatile(0xE000_ED04 as *mut u32, 1 << 28);
                core::arch::asm!("dsb", "isb");
            }
        }
    }
    keel_app::error!("evil: fault attack #{} {} DID NOT FAULT", k, name);
    // Keep the sequence going so every attack runs.
    keel_app::restart(1);
}

fn main() -> ! {
    sanity();
    let start = keel_app::boot_info().map_or(0, |b| b.restart_count) as usize;
    if start == 0 {
        parameter_attacks();
    }
    if start < ATTACKS.len() {
        fault_attack(start);
    }
    keel_app::info!("evil: all attacks done");
    loop {
        sanity();
        keel_app::sleep_ms(1000);
    }
}
