//! Loading the app from its flash slot into the execution region and starting it.

use keel_flash::layout;
use keel_image::{Header, ImageError, ImageHasher, Target, HEADER_SIZE};

use crate::board::{self, APP_EXEC_BASE, APP_EXEC_SIZE, APP_RAM_BASE, APP_RAM_SIZE};
use crate::ns_mem;

/// Why the app could not be loaded.
#[derive(Clone, Copy, Debug)]
pub enum LoadError {
    /// The header or digest check failed.
    Image(ImageError),
    /// The vector table's initial stack pointer or reset vector is outside the app's memory.
    BadVectorTable,
    /// The stack limit in the header is outside the app's RAM or above the initial stack.
    BadStackLimit,
}

impl core::fmt::Display for LoadError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            LoadError::Image(e) => write!(f, "{}", e),
            LoadError::BadVectorTable => f.write_str("vector table points outside the app's memory"),
            LoadError::BadStackLimit => f.write_str("stack limit outside the app's RAM"),
        }
    }
}

/// A verified, loaded app ready to start.
#[derive(Clone, Copy, Debug)]
pub struct Loaded {
    /// The image header.
    pub header: Header,
    /// Initial main stack pointer.
    pub sp: u32,
    /// Reset handler address (Thumb bit set).
    pub entry: u32,
}

/// Bytes at the end of the execution region that hold the start stub (see [`prepare_start`]); an
/// image may not use them.
pub const STUB_RESERVED: u32 = 64;
const STUB_OFFSET: u32 = APP_EXEC_SIZE - STUB_RESERVED;

/// The app's start stub (Thumb code, in the app's execution region, run in the non-secure state
/// before its reset handler, with `r0` = the reset handler and interrupts masked):
/// ```text
/// movs r1, #0 ; ldr r2, =SYST_CSR ; str r1, [r2] ; str r1, [r2, #4] ; str r1, [r2, #8]
/// ldr r2, =ICSR ; ldr r3, =PENDSTCLR ; str r3, [r2] ; movs r2, #0 ; movs r3, #0
/// cpsie i ; bx r0
/// ```
/// It stops the app's SysTick (control, reload and current value) and clears its pending bit:
/// a SysTick the previous run left running must not fire into the next one, and on QEMU 7.2 the
/// visor cannot reach SYST_CSR_NS through the secure alias.
const START_STUB: [u32; 9] = [
    0x4A05_2100,
    0x6051_6011,
    0x4A04_6091,
    0x6013_4B04,
    0x2300_2200,
    0x4700_B662,
    0xE000_E010, // SYST_CSR (non-secure view)
    0xE000_ED04, // ICSR (non-secure view)
    0x0200_0000, // ICSR.PENDSTCLR
];

/// Where the park loop goes, right after the start stub.
const PARK_OFFSET: u32 = STUB_OFFSET + 4 * START_STUB.len() as u32;
/// The park loop: `1: wfi ; b 1b`.
const PARK_LOOP: u32 = 0xE7FD_BF30;
const _: () = assert!(PARK_OFFSET + 4 <= APP_EXEC_SIZE);

/// What an app image in `slot` must fit: this board's execution region (less the start stub)
/// and ABI.
pub fn target(slot: layout::Partition) -> Target {
    Target {
        exec_base: APP_EXEC_BASE,
        exec_size: STUB_OFFSET,
        slot_capacity: slot.size - HEADER_SIZE as u32,
        abi: (keel_abi::ABI_MAJOR, keel_abi::ABI_MINOR),
    }
}

/// Copies the app image from `slot` (chosen by the update journal) into the execution region
/// and verifies it there. The digest is computed over the copy the CPU will execute, not over
/// the slot, unless `verified` says this slot's image with this digest was verified before: only
/// the visor writes the flash, and the update agent never writes the slot the app runs from, so a
/// restart of the same slot copies again (the app may have changed its code) but does not hash.
pub fn load(slot: layout::Partition, verified: Option<[u8; 32]>) -> Result<Loaded, LoadError> {
    let target = target(slot);
    let hdr_bytes = board::flash_slice(slot.offset, HEADER_SIZE as u32);
    let header = Header::parse(hdr_bytes, &target).map_err(LoadError::Image)?;
    let image = board::flash_slice(slot.offset + HEADER_SIZE as u32, header.image_size);
    ns_mem::load_into_exec(0, image);
    if verified != Some(header.digest) {
        let mut h = ImageHasher::new(&header.to_bytes());
        h.update(ns_mem::exec_region(header.image_size));
        if h.finish() != header.digest {
            return Err(LoadError::Image(ImageError::DigestMismatch));
        }
    }
    let loaded = ns_mem::exec_region(8);
    let sp = u32::from_le_bytes([loaded[0], loaded[1], loaded[2], loaded[3]]);
    let entry = u32::from_le_bytes([loaded[4], loaded[5], loaded[6], loaded[7]]);
    let ram_end = APP_RAM_BASE + APP_RAM_SIZE;
    let sp_ok = sp > APP_RAM_BASE + 32 && sp <= ram_end && sp.is_multiple_of(8);
    let entry_ok = entry & 1 == 1 && (entry & !1) >= APP_EXEC_BASE && (entry & !1) < APP_EXEC_BASE + header.image_size;
    if !sp_ok || !entry_ok {
        return Err(LoadError::BadVectorTable);
    }
    let lim = header.stack_limit;
    if lim != 0 && (lim < APP_RAM_BASE || !lim.is_multiple_of(8) || lim.checked_add(32).is_none_or(|l| l >= sp)) {
        return Err(LoadError::BadStackLimit);
    }
    Ok(Loaded { header, sp, entry })
}

/// Prepares the non-secure core so that an exception return with EXC_RETURN
/// [`RETURN_TO_APP`] starts the app with a clean state: the core's non-secure side reset
/// ([`board::reset_ns_core`]), the app's RAM zeroed, and a first frame that runs the start stub
/// ([`START_STUB`]) with interrupts masked, which stops the SysTick and enters the reset handler.
pub fn prepare_start(app: &Loaded) {
    board::reset_ns_core(APP_EXEC_BASE);
    ns_mem::clear_app_ram();
    ns_mem::write_exec_words(STUB_OFFSET, &START_STUB);
    // A fresh exception frame on the app's main stack: r0 = the reset handler (for the stub),
    // r1-r3, r12 = 0, lr = invalid (the reset handler must not return), pc = the stub,
    // xPSR = Thumb.
    let frame_sp = app.sp - 32;
    ns_mem::write_initial_frame(
        frame_sp,
        &[app.entry, 0, 0, 0, 0, 0xFFFF_FFFF, APP_EXEC_BASE + STUB_OFFSET, 0x0100_0000],
    );
    board::set_ns_stack(frame_sp, app.header.stack_limit);
    board::set_primask_ns(true);
}

/// Parks the non-secure side while the app is stopped (crashed and waiting for its backoff, or
/// with no image): a reset non-secure core that runs the start stub (which stops the app's
/// SysTick: a stopped app's timer must not keep running, and on QEMU 7.2 only non-secure code
/// can stop it) and then sleeps in a `wfi` loop, with every app exception masked by the visor.
/// Enter it with [`RETURN_TO_APP`].
pub fn prepare_park() {
    board::reset_ns_core(APP_EXEC_BASE);
    ns_mem::write_exec_words(STUB_OFFSET, &START_STUB);
    ns_mem::write_exec_words(PARK_OFFSET, &[PARK_LOOP]);
    let frame_sp = APP_RAM_BASE + APP_RAM_SIZE - 32;
    ns_mem::write_initial_frame(
        frame_sp,
        &[(APP_EXEC_BASE + PARK_OFFSET) | 1, 0, 0, 0, 0, 0xFFFF_FFFF, APP_EXEC_BASE + STUB_OFFSET, 0x0100_0000],
    );
    board::set_ns_stack(frame_sp, 0);
    board::set_primask_ns(true);
}

/// EXC_RETURN: return to non-secure thread mode on MSP_NS, standard frame.
pub const RETURN_TO_APP: u32 = 0xFFFF_FFB9;
