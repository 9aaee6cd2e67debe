//! Notifications: the app's side of the visor's notification ring ([`keel_abi::notify`]).
//!
//! No system call blocks: the app sleeps in its own world (`wfi`) and the visor wakes it by
//! writing a record into a ring in app memory and pending an interrupt line. This module owns one
//! ring of [`RECORDS`] records on [`keel_abi::notify::DEFAULT_IRQ`], set up on first use, and
//! offers two ways to wait:
//! * blocking: [`crate::wait`] and [`crate::sleep_ms`] (a `wfi` loop);
//! * async: [`next`] and [`sleep_until`], futures woken from the ring's interrupt, usable with any
//!   executor (embassy's included: its executor sleeps with `wfe`/`wfi` and the interrupt wakes
//!   the task that waits).
//!
//! The interrupt handler is the SDK's (`keel_app_notify_irq` in the vector table); it only wakes
//! the waiting task. Records are read in order by whoever polls first, and there is one waker
//! slot: let **one** task read the ring (await [`next`] or [`sleep_until`]) and hand records to
//! the others (`firmware/apps/embassy-ticker` does it with an embassy-sync `Signal`).

use core::cell::UnsafeCell;
use core::future::Future;
use core::pin::Pin;
use core::ptr::{addr_of_mut, read_volatile, write_volatile};
use core::sync::atomic::{AtomicBool, Ordering};
use core::task::{Context, Poll, Waker};

use keel_abi::notify::{ring_bytes, DEFAULT_IRQ, HEADER_LEN, RECORD_LEN};
pub use keel_abi::notify::{Kind, Record};
use keel_abi::{Call, Status};

/// Records in the SDK's ring.
pub const RECORDS: u32 = 16;
const WORDS: usize = ((HEADER_LEN + RECORDS * RECORD_LEN) / 4) as usize;

/// The ring's memory, shared with the visor (which writes `head` and records) and read with
/// volatile accesses only.
#[repr(C, align(8))]
struct RingMem(UnsafeCell<[u32; WORDS]>);
// SAFETY: accessed only through volatile reads and writes of single words; the visor writes the
// words the app only reads and the app writes only `tail`.
unsafe impl Sync for RingMem {}

static RING: RingMem = RingMem(UnsafeCell::new([0; WORDS]));
static READY: AtomicBool = AtomicBool::new(false);
/// The waker of the task waiting in [`next`] (taken by the interrupt handler).
static WAKER: WakerCell = WakerCell(UnsafeCell::new(None));

struct WakerCell(UnsafeCell<Option<Waker>>);
// SAFETY: accessed only with interrupts masked (`masked`), on a single core.
unsafe impl Sync for WakerCell {}

const NVIC_ISER: u32 = 0xE000_E100;
const NVIC_IPR: u32 = 0xE000_E400;

fn word(i: usize) -> *mut u32 {
    // SAFETY: `i` < WORDS at every call site; the pointer stays inside the static.
    unsafe { (RING.0.get() as *mut u32).add(i) }
}

/// Runs `f` with the app's interrupts masked (PRIMASK), restoring the previous mask.
fn masked<R>(f: impl FnOnce() -> R) -> R {
    let primask: u32;
    // SAFETY: saves PRIMASK and masks interrupts; restored below.
    unsafe { core::arch::asm!("mrs {p}, primask", "cpsid i", p = out(reg) primask, options(nostack, preserves_flags)) };
    let r = f();
    if primask & 1 == 0 {
        // SAFETY: interrupts were enabled on entry.
        unsafe { core::arch::asm!("cpsie i", options(nostack, preserves_flags)) };
    }
    r
}

/// Sets up the ring (once per app start; later calls do nothing).
pub fn init() -> Result<(), Status> {
    if READY.load(Ordering::Acquire) {
        return Ok(());
    }
    let base = RING.0.get() as u32;
    // SAFETY: the ring is this app's own static memory, of the size passed.
    let r = unsafe { crate::raw::call(Call::NotifySetup as u32, base, ring_bytes(RECORDS), DEFAULT_IRQ, 0) };
    crate::status(r)?;
    let irq = DEFAULT_IRQ;
    // SAFETY: the app's own NVIC (non-secure view): the line's priority byte (lowest urgency is
    // fine: the handler only wakes a task), then its enable bit. The visor routed the line to the
    // app in the call above.
    unsafe {
        write_volatile((NVIC_IPR + irq) as *mut u8, 0xC0);
        write_volatile((NVIC_ISER + 4 * (irq / 32)) as *mut u32, 1 << (irq % 32));
    }
    READY.store(true, Ordering::Release);
    Ok(())
}

/// The next record, if the visor wrote one the app has not read.
pub fn pop() -> Option<Record> {
    // SAFETY: word 0 is `head` (written by the visor), word 1 `tail` (ours); volatile accesses
    // to the app's own static.
    let (head, tail) = unsafe { (read_volatile(word(0)), read_volatile(word(1))) };
    if head == tail {
        return None;
    }
    let slot = 4 + 4 * (tail % RECORDS) as usize;
    let mut b = [0u8; RECORD_LEN as usize];
    for i in 0..4 {
        // SAFETY: `slot + i` < WORDS (slot <= 4 + 4 * (RECORDS - 1)).
        let w = unsafe { read_volatile(word(slot + i)) };
        b[4 * i..4 * i + 4].copy_from_slice(&w.to_le_bytes());
    }
    // SAFETY: `tail` is the app's word of the ring.
    unsafe { write_volatile(word(1), tail.wrapping_add(1)) };
    Some(Record::from_bytes(&b))
}

fn ring_empty() -> bool {
    // SAFETY: volatile reads of the ring's head and tail words.
    unsafe { read_volatile(word(0)) == read_volatile(word(1)) }
}

/// Sleeps until a record is in the ring (or any interrupt of the app woke the core).
pub fn sleep() {
    masked(|| {
        if ring_empty() {
            // WFI wakes on a pending interrupt even with PRIMASK set; the handler runs right
            // after the mask is lifted.
            // SAFETY: WFI only pauses the core.
            unsafe { core::arch::asm!("wfi", options(nomem, nostack, preserves_flags)) };
        }
    });
}

/// Sets the app's timer: a [`Kind::Timer`] record with `tag` at `deadline_us` (monotonic µs;
/// 0 cancels).
pub fn timer_set(deadline_us: u64, tag: u32) -> Result<(), Status> {
    init()?;
    // SAFETY: no pointers.
    crate::status(unsafe {
        crate::raw::call(Call::TimerSet as u32, deadline_us as u32, (deadline_us >> 32) as u32, tag, 0)
    })
}

/// The ring's interrupt handler: wakes the task waiting in [`next`].
#[no_mangle]
pub extern "C" fn keel_app_notify_irq() {
    // SAFETY: the waker cell is only touched with interrupts masked; in this handler no other
    // context of the app can run between the take and the wake.
    let w = masked(|| unsafe { (*WAKER.0.get()).take() });
    if let Some(w) = w {
        w.wake();
    }
}

/// A future for the next record (see [`next`]).
pub struct Next(());

impl Future for Next {
    type Output = Record;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Record> {
        if init().is_err() {
            return Poll::Pending;
        }
        masked(|| match pop() {
            Some(r) => Poll::Ready(r),
            None => {
                // SAFETY: interrupts are masked, so the handler cannot take the waker meanwhile.
                unsafe { *addr_of_mut!(*WAKER.0.get()) = Some(cx.waker().clone()) };
                Poll::Pending
            }
        })
    }
}

/// The next notification record, as a future (woken by the ring's interrupt).
pub fn next() -> Next {
    Next(())
}

/// Tag of the timer [`sleep_until`] and [`crate::wait`] use.
pub const SLEEP_TAG: u32 = 0x534C_5050;

/// Waits asynchronously until `deadline_us`; records that arrive meanwhile are handed to
/// `on_record` (return `true` to end the sleep early).
pub async fn sleep_until(deadline_us: u64, mut on_record: impl FnMut(&Record) -> bool) {
    if timer_set(deadline_us, SLEEP_TAG).is_err() {
        return;
    }
    loop {
        let r = next().await;
        if r.kind == Kind::Timer as u16 && r.tag == SLEEP_TAG || on_record(&r) {
            return;
        }
    }
}
