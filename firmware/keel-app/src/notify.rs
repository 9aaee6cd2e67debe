//! Notifications: the app's side of the visor's notification ring ([`keel_abi::notify`]).
//!
//! No system call blocks: the app sleeps in its own world (`wfi`) and the visor wakes it by
//! writing a record into a ring in app memory and pending an interrupt line. This module owns one
//! ring of [`RECORDS`] records on [`keel_abi::notify::DEFAULT_IRQ`], set up on first use.
//!
//! **Where records go.** The ring's interrupt handler (`keel_app_notify_irq`, in the SDK's vector
//! table) moves every record out of the ring into a software queue of [`QUEUE`] records, so the
//! ring never overflows because a task is busy; then it wakes every waiting future (up to
//! [`WAKERS`] at once). [`pop`] and [`next`] read that queue in order. When the queue is full the
//! oldest record is dropped and counted; the next read returns a [`Kind::Overrun`] record with
//! the count, as the visor does for its ring.
//!
//! The SDK's own records are not queued: those of the timer it uses for sleeps and timeouts
//! (tag [`SLEEP_TAG`]) and those of channels opened with [`crate::chan::Channel::open`] (channel
//! operations check the channel's state with system calls, so they need no records, only the
//! wake-up; and an app that never reads the queue would otherwise fill it).
//!
//! Ways to wait:
//! * blocking: [`crate::wait`], [`crate::sleep_ms`], [`sleep`] (a `wfi` loop), and the blocking
//!   helpers of [`crate::net`] and [`crate::chan`];
//! * async: [`next`], [`sleep_until`], [`at`], [`changed`] and the channel futures, usable with
//!   any executor (embassy's included: its executor sleeps with `wfe`/`wfi` and the interrupt
//!   wakes the tasks that wait).
//!
//! Several futures may wait at once (channel futures in several tasks, a timer in another).
//! Records, though, are read by whoever reads first: let **one** task consume [`next`] (or
//! [`sleep_until`], which reads records too) and hand records to the others.
//!
//! **One timer.** The visor gives the app one timer; the SDK multiplexes it: [`at`],
//! [`sleep_until`], [`crate::wait`] and the blocking helpers' timeouts may all be pending at once
//! (each waiter is woken at or after its deadline). Calling [`timer_set`] yourself replaces the
//! SDK's pending deadline; the SDK notices when that deadline passes unreported and re-arms,
//! but prefer [`at`] when you mix both.

use core::cell::UnsafeCell;
use core::future::Future;
use core::pin::Pin;
use core::ptr::{read_volatile, write_volatile};
use core::sync::atomic::{AtomicBool, Ordering};
use core::task::{Context, Poll, Waker};

use keel_abi::notify::{ring_bytes, DEFAULT_IRQ, HEADER_LEN, RECORD_LEN};
pub use keel_abi::notify::{Kind, Record};
use keel_abi::{Call, Status};

/// Records in the SDK's ring.
pub const RECORDS: u32 = 16;
/// Records the software queue holds (see the module documentation).
pub const QUEUE: usize = 32;
/// Futures that can wait for the ring's interrupt at once. A further one evicts (wakes) the
/// oldest, which registers again when polled: more waiters cost spurious polls, never a lost
/// wake-up.
pub const WAKERS: usize = 8;
/// Tag of the SDK's timer (sleeps and timeouts). Its records are consumed by the SDK.
pub const SLEEP_TAG: u32 = 0x534C_5050;

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

/// Everything the interrupt handler and the app's contexts share.
struct State {
    /// Queued records, oldest first.
    queue: [Record; QUEUE],
    len: usize,
    /// Records dropped from the full queue and not reported yet.
    lost: u32,
    /// Records taken out of the ring so far (wrapping): the event counter of [`events`].
    events: u32,
    wakers: [Option<Waker>; WAKERS],
    /// Next waker slot to evict when all are taken.
    evict: usize,
    /// Deadline the SDK's timer is armed for (0: none pending).
    timer_at: u64,
    /// Handles of channels whose records are not queued (see [`forget_channel_records`]).
    quiet: [u32; keel_abi::chan::MAX_CHANNELS],
}

struct Shared(UnsafeCell<State>);
// SAFETY: accessed only through `with`, with interrupts masked, on a single core.
unsafe impl Sync for Shared {}

const EMPTY: Record = Record { kind: 0, flags: 0, tag: 0, value: 0 };
static STATE: Shared = Shared(UnsafeCell::new(State {
    queue: [EMPTY; QUEUE],
    len: 0,
    lost: 0,
    events: 0,
    wakers: [const { None }; WAKERS],
    evict: 0,
    timer_at: 0,
    quiet: [0; keel_abi::chan::MAX_CHANNELS],
}));

const NVIC_ISER: u32 = 0xE000_E100;
const NVIC_IPR: u32 = 0xE000_E400;

fn word(i: usize) -> *mut u32 {
    // SAFETY: `i` < WORDS at every call site; the pointer stays inside the static.
    unsafe { (RING.0.get() as *mut u32).add(i) }
}

/// Runs `f` with the app's interrupts masked (PRIMASK), restoring the previous mask.
pub(crate) fn masked<R>(f: impl FnOnce() -> R) -> R {
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

/// Runs `f` on the shared state with interrupts masked. `f` must not call `with` again, nor
/// code outside this module that might (wakers are woken after `with` returns).
fn with<R>(f: impl FnOnce(&mut State) -> R) -> R {
    // SAFETY: interrupts are masked and the app has one core, so nothing else runs while `f`
    // holds the reference; `with` is never nested (every caller in this module keeps to that).
    masked(|| f(unsafe { &mut *STATE.0.get() }))
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
    // fine: the handler only moves records and wakes tasks), then its enable bit. The visor
    // routed the line to the app in the call above.
    unsafe {
        write_volatile((NVIC_IPR + irq) as *mut u8, 0xC0);
        write_volatile((NVIC_ISER + 4 * (irq / 32)) as *mut u32, 1 << (irq % 32));
    }
    READY.store(true, Ordering::Release);
    Ok(())
}

/// Takes the next record out of the ring itself.
fn ring_pop() -> Option<Record> {
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

/// The channel handle a record is about, if it is a channel record.
fn channel_of(r: &Record) -> Option<u32> {
    r.channel_handle()
}

impl State {
    /// Moves every record from the ring into the queue.
    fn pump(&mut self) {
        while let Some(r) = ring_pop() {
            self.events = self.events.wrapping_add(1);
            if r.kind == Kind::Timer as u16 && r.tag == SLEEP_TAG {
                // `value` is when it fired: this is the pending deadline's record (not one of a
                // deadline replaced since).
                if self.timer_at != 0 && r.value >= self.timer_at {
                    self.timer_at = 0;
                }
                continue;
            }
            if channel_of(&r).is_some_and(|h| h != 0 && self.quiet.contains(&h)) {
                continue;
            }
            self.push(r);
        }
    }

    fn push(&mut self, r: Record) {
        if self.len == QUEUE {
            self.queue.copy_within(1.., 0);
            self.len -= 1;
            self.lost = self.lost.saturating_add(1);
        }
        self.queue[self.len] = r;
        self.len += 1;
    }

    fn take(&mut self) -> Option<Record> {
        if self.lost > 0 {
            let r = Record::new(Kind::Overrun, 0, self.lost as u64);
            self.lost = 0;
            return Some(r);
        }
        if self.len == 0 {
            return None;
        }
        let r = self.queue[0];
        self.queue.copy_within(1..self.len, 0);
        self.len -= 1;
        Some(r)
    }

    fn has_records(&self) -> bool {
        self.len > 0 || self.lost > 0
    }

    /// Registers `w` to be woken by the next interrupt; returns a waker evicted to make room
    /// (wake it after leaving `with`).
    fn register(&mut self, w: &Waker) -> Option<Waker> {
        if self.wakers.iter().flatten().any(|x| x.will_wake(w)) {
            return None;
        }
        if let Some(slot) = self.wakers.iter_mut().find(|x| x.is_none()) {
            *slot = Some(w.clone());
            return None;
        }
        let i = self.evict % WAKERS;
        self.evict = self.evict.wrapping_add(1);
        self.wakers[i].replace(w.clone())
    }

    /// Makes sure the SDK's timer fires at or before `deadline` (µs). Called with interrupts
    /// masked, so a record of the timer set here is handled after the caller registered.
    fn arm(&mut self, deadline: u64, now: u64) {
        let at = self.timer_at;
        let target = if at != 0 && at <= now {
            // The pending deadline passed unreported (its record is on the way, or the app's
            // own `timer_set` replaced it): fire at once, so its waiters look at the clock.
            at
        } else if at == 0 || deadline < at {
            deadline
        } else {
            return;
        };
        if set_timer(target, SLEEP_TAG).is_ok() {
            self.timer_at = target;
        }
    }
}

fn set_timer(deadline_us: u64, tag: u32) -> Result<(), Status> {
    // SAFETY: no pointers.
    crate::status(unsafe {
        crate::raw::call(Call::TimerSet as u32, deadline_us as u32, (deadline_us >> 32) as u32, tag, 0)
    })
}

/// The next record, if the visor wrote one the app has not read (from the queue, then the
/// ring).
pub fn pop() -> Option<Record> {
    with(|s| {
        s.pump();
        s.take()
    })
}

/// Sleeps until a record is queued (or any interrupt of the app woke the core).
pub fn sleep() {
    with(|s| {
        s.pump();
        if !s.has_records() {
            // WFI wakes on a pending interrupt even with PRIMASK set; the handler runs right
            // after the mask is lifted.
            // SAFETY: WFI only pauses the core.
            unsafe { core::arch::asm!("wfi", options(nomem, nostack, preserves_flags)) };
        }
    });
}

/// Sets the app's timer: a [`Kind::Timer`] record with `tag` at `deadline_us` (monotonic µs;
/// 0 cancels). This is the visor's one timer: it replaces the SDK's pending deadline (see the
/// module documentation; [`at`] does not).
pub fn timer_set(deadline_us: u64, tag: u32) -> Result<(), Status> {
    init()?;
    set_timer(deadline_us, tag)
}

/// The event counter: how many records the visor has posted since the app started (wrapping),
/// the SDK's own included. Read it, check what you wait for with system calls, and if it is
/// not there yet wait for the counter to move ([`changed`], [`block`]): no record can slip in
/// between.
pub fn events() -> u32 {
    with(|s| {
        s.pump();
        s.events
    })
}

/// Blocks (`wfi`) until the event counter differs from `seen` or `deadline_us` (monotonic µs)
/// passes; returns at once if the ring cannot be set up.
pub fn block(seen: u32, deadline_us: Option<u64>) {
    if init().is_err() {
        return;
    }
    let now = crate::monotonic_us();
    if deadline_us.is_some_and(|d| now >= d) {
        return;
    }
    with(|s| {
        if let Some(d) = deadline_us {
            s.arm(d, now);
        }
        s.pump();
        if s.events == seen {
            // SAFETY: WFI only pauses the core; see `sleep`.
            unsafe { core::arch::asm!("wfi", options(nomem, nostack, preserves_flags)) };
        }
    });
}

/// Stops queuing records of channel `handle` (its owner checks the channel with system calls)
/// and removes those already queued. Takes a slot in a table of
/// [`keel_abi::chan::MAX_CHANNELS`] (the visor's limit of open channels), freed by
/// [`channel_closed`].
pub(crate) fn forget_channel_records(handle: u32) {
    with(|s| {
        s.pump();
        if !s.quiet.contains(&handle) {
            if let Some(q) = s.quiet.iter_mut().find(|q| **q == 0) {
                *q = handle;
            }
        }
        let mut n = 0;
        for i in 0..s.len {
            let r = s.queue[i];
            if channel_of(&r) != Some(handle) {
                s.queue[n] = r;
                n += 1;
            }
        }
        s.len = n;
    });
}

/// Queues the records of channel `handle` again, after [`forget_channel_records`] (see
/// [`crate::chan::Channel::keep_records`]).
pub(crate) fn keep_channel_records(handle: u32) {
    with(|s| {
        s.pump();
        if let Some(q) = s.quiet.iter_mut().find(|q| **q == handle) {
            *q = 0;
        }
    });
}

/// The app closed channel `handle`: drops its queued records and frees its slot in the table
/// (records of a closed handle cannot come any more).
pub(crate) fn channel_closed(handle: u32) {
    with(|s| {
        s.pump();
        if let Some(q) = s.quiet.iter_mut().find(|q| **q == handle) {
            *q = 0;
        }
        let mut n = 0;
        for i in 0..s.len {
            let r = s.queue[i];
            if channel_of(&r) != Some(handle) {
                s.queue[n] = r;
                n += 1;
            }
        }
        s.len = n;
    });
}

/// The ring's interrupt handler: moves records into the queue and wakes every waiting future.
#[no_mangle]
pub extern "C" fn keel_app_notify_irq() {
    let wakers = with(|s| {
        s.pump();
        core::mem::take(&mut s.wakers)
    });
    for w in wakers.into_iter().flatten() {
        w.wake();
    }
}

/// Registers the waker of `cx` unless `ready` says (with interrupts masked) not to wait; runs
/// an evicted waker. Returns what `ready` returned.
fn wait_or<T>(cx: &Context<'_>, ready: impl FnOnce(&mut State) -> Option<T>) -> Option<T> {
    let (r, evicted) = with(|s| {
        s.pump();
        match ready(s) {
            Some(v) => (Some(v), None),
            None => (None, s.register(cx.waker())),
        }
    });
    if let Some(w) = evicted {
        w.wake();
    }
    r
}

/// A future for the next record (see [`next`]).
pub struct Next(());

impl Future for Next {
    type Output = Record;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Record> {
        if init().is_err() {
            return Poll::Pending;
        }
        match wait_or(cx, |s| s.take()) {
            Some(r) => Poll::Ready(r),
            None => Poll::Pending,
        }
    }
}

/// The next notification record, as a future (woken by the ring's interrupt).
pub fn next() -> Next {
    Next(())
}

/// A future that completes when the event counter differs from a value read before (see
/// [`changed`]).
pub struct Changed(u32);

impl Future for Changed {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if init().is_err() {
            // No ring, no wake-ups: let the caller look again (it polls a system call).
            return Poll::Ready(());
        }
        let seen = self.0;
        match wait_or(cx, |s| (s.events != seen).then_some(())) {
            Some(()) => Poll::Ready(()),
            None => Poll::Pending,
        }
    }
}

/// Completes when the event counter ([`events`]) differs from `seen`: the async form of
/// [`block`] without a deadline.
pub fn changed(seen: u32) -> Changed {
    Changed(seen)
}

/// A future that completes at a monotonic time (see [`at`]).
pub struct At(u64);

impl Future for At {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if init().is_err() {
            return Poll::Ready(());
        }
        let deadline = self.0;
        let done = wait_or(cx, |s| {
            let now = crate::monotonic_us();
            if now >= deadline {
                return Some(());
            }
            s.arm(deadline, now);
            None
        });
        if done.is_some() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

/// Completes at `deadline_us` (monotonic µs) or shortly after, without reading records; any
/// number of these may be pending (in several tasks) at once. Completes at once if the ring
/// cannot be set up.
pub fn at(deadline_us: u64) -> At {
    At(deadline_us)
}

/// Waits asynchronously until `deadline_us`; records that arrive meanwhile are handed to
/// `on_record` (return `true` to end the sleep early).
pub async fn sleep_until(deadline_us: u64, mut on_record: impl FnMut(&Record) -> bool) {
    core::future::poll_fn(|cx| {
        if init().is_err() {
            return Poll::Ready(());
        }
        loop {
            // Hand out what is queued (outside the masked section: `on_record` is the app's).
            while let Some(r) = pop() {
                if on_record(&r) {
                    return Poll::Ready(());
                }
            }
            let r = wait_or(cx, |s| {
                let now = crate::monotonic_us();
                if now >= deadline_us {
                    return Some(true);
                }
                if s.has_records() {
                    // Arrived after the loop above: hand it out first.
                    return Some(false);
                }
                s.arm(deadline_us, now);
                None
            });
            match r {
                Some(true) => return Poll::Ready(()),
                Some(false) => continue,
                None => return Poll::Pending,
            }
        }
    })
    .await
}
