//! Name lookups for the engines, bounded.
//!
//! The system resolver (`getaddrinfo`) blocks a thread of Tokio's blocking pool for as long as it
//! takes, and a blocked thread cannot be cancelled: a device asking for names under a name server
//! that never answers would hold a thread per lookup, and could fill the pool (shared with file
//! I/O and the database). So every lookup of [`NameLookups`]:
//!
//! * needs a free slot: at most [`DnsLimits::per_device`] lookups of one device,
//!   [`DnsLimits::per_account`] of the devices of one account (so one tenant cannot take every
//!   slot) and [`DnsLimits::max_concurrent`] server-wide are in progress; beyond, the lookup is
//!   refused at once ([`ConnectError::LookupsBusy`]: the HTTP proxy answers `REQUEST_FAILED` "dns: too many
//!   name lookups in progress", an MQTT connection `RATE_LIMITED`), never queued;
//! * is given up after [`DnsLimits::timeout`] ([`ConnectError::LookupTimeout`]: "name lookup
//!   timed out");
//! * holds its slot **in the blocking thread itself**, until the resolver returns: a lookup that
//!   timed out, or whose request or channel was dropped, still counts until its thread is free.
//!   That is the honest bound: the engines never hold more than `max_concurrent` blocking
//!   threads in lookups, whatever devices do.
//!
//! The resolver is a [`Resolver`] (the system's by default; tests give one that never answers).

use std::collections::HashMap;
use std::net::{IpAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{ConnectError, Tenant};

/// Resolves names, blocking: called on a thread of Tokio's blocking pool.
pub trait Resolver: Send + Sync + 'static {
    /// The addresses of `host` (a name, never an address literal), in the resolver's order.
    fn lookup(&self, host: &str, port: u16) -> std::io::Result<Vec<IpAddr>>;
}

/// The system's resolver (`getaddrinfo`, as `std::net::ToSocketAddrs` calls it).
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemResolver;

impl Resolver for SystemResolver {
    fn lookup(&self, host: &str, port: u16) -> std::io::Result<Vec<IpAddr>> {
        Ok((host, port).to_socket_addrs()?.map(|a| a.ip()).collect())
    }
}

/// Bounds on name lookups.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsLimits {
    /// A lookup's time. Default 5 s.
    pub timeout: Duration,
    /// Lookups in progress for one device. Default 2.
    pub per_device: usize,
    /// Lookups in progress for the devices of one account. Default 16 (a quarter of the
    /// server-wide default).
    pub per_account: usize,
    /// Lookups in progress server-wide. Default 64.
    pub max_concurrent: usize,
}

impl Default for DnsLimits {
    fn default() -> Self {
        DnsLimits { timeout: Duration::from_secs(5), per_device: 2, per_account: 16, max_concurrent: 64 }
    }
}

/// Counters of name lookups ([`NameLookups::stats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DnsStats {
    /// Lookups started.
    pub lookups: u64,
    /// Lookups whose thread has not returned yet (timed out or abandoned ones included).
    pub in_progress: u64,
    /// Lookups that did not answer within [`DnsLimits::timeout`].
    pub timed_out: u64,
    /// Lookups refused because the device's, its account's or the server's lookups were all in
    /// progress.
    pub refused: u64,
}

#[derive(Default)]
struct Counters {
    lookups: AtomicU64,
    in_progress: AtomicU64,
    timed_out: AtomicU64,
    refused: AtomicU64,
}

/// Lookups in progress (their threads not returned yet), server-wide, per account and per
/// device (only those with one in progress have an entry: at most `max_concurrent` each).
#[derive(Default)]
struct Busy {
    total: usize,
    per_account: HashMap<String, usize>,
    per_device: HashMap<String, usize>,
}

struct Inner {
    limits: DnsLimits,
    busy: Mutex<Busy>,
    resolver: Arc<dyn Resolver>,
    counters: Counters,
    changed: tokio::sync::watch::Sender<()>,
}

/// The engines' name lookups. Cheap to clone (clones share limits and counters); one per server,
/// shared by the HTTP proxy and the MQTT hub.
#[derive(Clone)]
pub struct NameLookups {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for NameLookups {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NameLookups").field("limits", &self.inner.limits).field("stats", &self.stats()).finish()
    }
}

impl Default for NameLookups {
    fn default() -> Self {
        NameLookups::system(DnsLimits::default())
    }
}

impl NameLookups {
    /// Lookups through `resolver` within `limits`.
    pub fn new(limits: DnsLimits, resolver: Arc<dyn Resolver>) -> Self {
        NameLookups {
            inner: Arc::new(Inner {
                limits,
                busy: Mutex::new(Busy::default()),
                resolver,
                counters: Counters::default(),
                changed: tokio::sync::watch::Sender::new(()),
            }),
        }
    }

    /// Lookups through the system's resolver within `limits`.
    pub fn system(limits: DnsLimits) -> Self {
        NameLookups::new(limits, Arc::new(SystemResolver))
    }

    /// The limits.
    pub fn limits(&self) -> &DnsLimits {
        &self.inner.limits
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> DnsStats {
        let c = &self.inner.counters;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        DnsStats {
            lookups: l(&c.lookups),
            in_progress: l(&c.in_progress),
            timed_out: l(&c.timed_out),
            refused: l(&c.refused),
        }
    }

    /// Waits until `pred` holds for the counters (checked again whenever they may have changed)
    /// and returns them. Callers bound the wait (`tokio::time::timeout`).
    pub async fn wait_stats(&self, mut pred: impl FnMut(&DnsStats) -> bool) -> DnsStats {
        let mut changed = self.inner.changed.subscribe();
        loop {
            let stats = self.stats();
            if pred(&stats) {
                return stats;
            }
            // The sender lives as long as `self`.
            let _ = changed.changed().await;
        }
    }

    /// The addresses of `host` (a name), looked up for `who`: refused at once
    /// ([`ConnectError::LookupsBusy`]) if the device's, its account's or the server's lookups are
    /// all in progress, given up after [`DnsLimits::timeout`] ([`ConnectError::LookupTimeout`]). The
    /// lookup's slots are held by its blocking thread until the resolver returns, so a lookup
    /// given up (timed out, or its request dropped) still counts until its thread is free.
    pub(crate) async fn lookup(&self, who: &Tenant, host: &str, port: u16) -> Result<Vec<IpAddr>, ConnectError> {
        let c = &self.inner.counters;
        let Some(slot) = Slot::take(&self.inner, who) else {
            c.refused.fetch_add(1, Ordering::Relaxed);
            self.inner.changed.send_modify(|_| ());
            return Err(ConnectError::LookupsBusy);
        };
        c.lookups.fetch_add(1, Ordering::Relaxed);
        let name = host.to_string();
        // The slot moves into the thread and is dropped there, after the resolver returned.
        let work = tokio::task::spawn_blocking(move || {
            let held = slot;
            held.inner.resolver.lookup(&name, port)
        });
        match tokio::time::timeout(self.inner.limits.timeout, work).await {
            Ok(Ok(Ok(ips))) => Ok(ips),
            Ok(Ok(Err(e))) => Err(ConnectError::NxDomain(format!("{host}: {e}"))),
            Ok(Err(_)) => Err(ConnectError::NxDomain(format!("{host}: the lookup failed"))),
            Err(_) => {
                c.timed_out.fetch_add(1, Ordering::Relaxed);
                self.inner.changed.send_modify(|_| ());
                Err(ConnectError::LookupTimeout)
            }
        }
    }
}

/// One lookup's place among the device's, its account's and the server's lookups in progress;
/// freed when dropped (by the blocking thread, once the resolver returned).
struct Slot {
    inner: Arc<Inner>,
    who: Tenant,
}

impl Slot {
    fn take(inner: &Arc<Inner>, who: &Tenant) -> Option<Slot> {
        let mut busy = inner.busy.lock().unwrap_or_else(|e| e.into_inner());
        let limits = &inner.limits;
        let device = busy.per_device.get(&who.device).copied().unwrap_or(0);
        let account = busy.per_account.get(&who.account).copied().unwrap_or(0);
        if busy.total >= limits.max_concurrent || account >= limits.per_account || device >= limits.per_device {
            return None;
        }
        busy.total += 1;
        busy.per_account.insert(who.account.clone(), account + 1);
        busy.per_device.insert(who.device.clone(), device + 1);
        drop(busy);
        inner.counters.in_progress.fetch_add(1, Ordering::Relaxed);
        inner.changed.send_modify(|_| ());
        Some(Slot { inner: inner.clone(), who: who.clone() })
    }
}

/// Takes one from `key`'s count, forgetting it at zero.
fn release(counts: &mut HashMap<String, usize>, key: &str) {
    if let Some(n) = counts.get_mut(key) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            counts.remove(key);
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut busy = self.inner.busy.lock().unwrap_or_else(|e| e.into_inner());
        busy.total = busy.total.saturating_sub(1);
        release(&mut busy.per_account, &self.who.account);
        release(&mut busy.per_device, &self.who.device);
        drop(busy);
        self.inner.counters.in_progress.fetch_sub(1, Ordering::Relaxed);
        self.inner.changed.send_modify(|_| ());
    }
}
