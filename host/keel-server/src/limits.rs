//! Bounds on the device gateway before authentication: how many connections it holds in total
//! and per source address, how many have not authenticated yet, how long a handshake may take,
//! and how often one address may start a handshake (a token bucket checked at accept, before
//! any Diffie-Hellman work or database lookup).
//!
//! Authenticated connections (a device whose `Ready` arrived) do not count toward the
//! unauthenticated budget: a flood of garbage or replayed handshakes takes slots from that
//! budget only, and when it is full the *newest* unauthenticated connection is refused, never a
//! connection that already authenticated.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The gateway's limits. [`GatewayLimits::default`] is sized for a server with 10,000+ devices
/// (raise the process's open-file limit accordingly: one descriptor per connection).
#[derive(Clone, Debug, PartialEq)]
pub struct GatewayLimits {
    /// Connections held at once, authenticated or not. Default 50,000.
    pub max_connections: usize,
    /// Connections held at once from one source address (devices behind one NAT share an
    /// address). Default 4,096.
    pub max_per_address: usize,
    /// Connections held at once that have not authenticated yet (no `Ready`). Default 2,048.
    pub max_unauthenticated: usize,
    /// Unauthenticated connections held at once from one source address. Default 256.
    pub max_unauthenticated_per_address: usize,
    /// The whole handshake, from the connection's accept to the device's `Ready`, must finish in
    /// this time. Default 10 s.
    pub handshake_timeout: Duration,
    /// New connections (handshakes) per second one source address may start, sustained.
    /// Default 100.
    pub handshakes_per_second_per_address: f64,
    /// ... and in a burst. Default 500.
    pub handshake_burst_per_address: f64,
    /// This gateway's node name. Devices are shown online only while their node's lease is
    /// current; a gateway that starts ends the leases of a previous run with the same name (a
    /// crash or kill leaves no device shown online). Default `"local"`: one gateway per database;
    /// give each node of several its own name.
    pub node_name: String,
    /// How long a node's presence lease lasts; it is renewed every third of it. Default 30 s: a
    /// crashed node's devices are shown offline at most this long after the crash (at once if
    /// it restarts).
    pub presence_lease: Duration,
    /// Log bytes (text plus 32 per record) one device may have stored per UTC day (counted by
    /// this gateway since it started); records above are acknowledged, not stored, and counted.
    /// Default 16 MiB.
    pub log_bytes_per_device_per_day: u64,
    /// Update events (history entries from the device's own reports) one device may add per
    /// UTC day; above it its statuses are still stored, without history entries. Default 500.
    pub update_events_per_device_per_day: u32,
    /// Whether the per-address limits also apply to this host's own address (127.0.0.1, ::1).
    /// Default `false` (a local proxy or a benchmark on the same host is one address); other
    /// loopback addresses (127.0.0.2 and up) are always limited like remote ones.
    pub limit_loopback: bool,
}

impl Default for GatewayLimits {
    fn default() -> Self {
        GatewayLimits {
            max_connections: 50_000,
            max_per_address: 4_096,
            max_unauthenticated: 2_048,
            max_unauthenticated_per_address: 256,
            handshake_timeout: Duration::from_secs(10),
            handshakes_per_second_per_address: 100.0,
            handshake_burst_per_address: 500.0,
            log_bytes_per_device_per_day: 16 << 20,
            update_events_per_device_per_day: 500,
            node_name: "local".to_string(),
            presence_lease: Duration::from_secs(30),
            limit_loopback: false,
        }
    }
}

/// Why a connection was refused at accept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// [`GatewayLimits::max_connections`].
    Total,
    /// [`GatewayLimits::max_per_address`].
    PerAddress,
    /// [`GatewayLimits::max_unauthenticated`] or [`GatewayLimits::max_unauthenticated_per_address`].
    Unauthenticated,
    /// [`GatewayLimits::handshakes_per_second_per_address`].
    Rate,
}

/// One source address's (or IPv6 /64's) share.
#[derive(Debug)]
struct Source {
    conns: usize,
    unauthenticated: usize,
    tokens: f64,
    refilled: Instant,
}

/// One device's use of its daily quotas.
#[derive(Debug, Default)]
struct Usage {
    day: u64,
    log_bytes: u64,
    update_events: u32,
    log_refused: bool,
    events_refused: bool,
}

/// Whether a quota has room.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Quota {
    /// Yes (and it was counted, for [`Limiter::admit_log`]).
    Room,
    /// No; `first` is true the first time today (record one event).
    Full {
        /// The first refusal of the day.
        first: bool,
    },
}

const DAY_US: u64 = 86_400_000_000;

#[derive(Debug, Default)]
struct State {
    total: usize,
    unauthenticated: usize,
    sources: HashMap<IpAddr, Source>,
    admitted: u64,
}

/// The gateway's admission control: what [`GatewayLimits`] allows, and what is held now.
#[derive(Debug)]
pub struct Limiter {
    limits: GatewayLimits,
    state: Mutex<State>,
    usage: Mutex<HashMap<String, Usage>>,
}

/// The key per-address limits count under: IPv4 addresses as they are (IPv4-mapped IPv6
/// included), IPv6 by /64 (one host usually holds a whole /64); `None` for the exempt local host
/// (127.0.0.1 and ::1 only: the rest of 127/8 counts like any address, so a test can play a
/// remote attacker from 127.0.0.2).
fn source_key(ip: IpAddr, limits: &GatewayLimits) -> Option<IpAddr> {
    let ip = ip.to_canonical();
    let local_host = ip == IpAddr::from([127, 0, 0, 1]) || ip == IpAddr::from(std::net::Ipv6Addr::LOCALHOST);
    if local_host && !limits.limit_loopback {
        return None;
    }
    Some(address_key(ip))
}

/// The address a per-address limit counts a peer under, on every listener: IPv4 as it is
/// (IPv4-mapped IPv6 included), IPv6 by its /64 (one host usually holds a whole /64, so counting
/// single IPv6 addresses would let one attacker take every slot).
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        v4 @ IpAddr::V4(_) => v4,
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
    }
}

impl Source {
    fn refill(&mut self, now: Instant, limits: &GatewayLimits) {
        let earned = now.duration_since(self.refilled).as_secs_f64() * limits.handshakes_per_second_per_address;
        self.tokens = (self.tokens + earned).min(limits.handshake_burst_per_address);
        self.refilled = now;
    }

    fn idle(&mut self, now: Instant, limits: &GatewayLimits) -> bool {
        self.refill(now, limits);
        self.conns == 0 && self.tokens >= limits.handshake_burst_per_address
    }
}

impl Limiter {
    /// Admission control for `limits`.
    pub fn new(limits: GatewayLimits) -> Arc<Limiter> {
        Arc::new(Limiter { limits, state: Mutex::new(State::default()), usage: Mutex::default() })
    }

    /// The limits.
    pub fn limits(&self) -> &GatewayLimits {
        &self.limits
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admits a new (unauthenticated) connection from `ip`, or says why not. Nothing is read from
    /// the connection before this.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Admission, Refusal> {
        let l = &self.limits;
        let now = Instant::now();
        let key = source_key(ip, l);
        let mut st = self.lock();
        if st.total >= l.max_connections {
            return Err(Refusal::Total);
        }
        if st.unauthenticated >= l.max_unauthenticated {
            return Err(Refusal::Unauthenticated);
        }
        if let Some(key) = key {
            st.admitted += 1;
            if st.admitted % 4096 == 0 {
                // Forget addresses with nothing held and a full bucket (bounded memory).
                st.sources.retain(|_, s| !s.idle(now, l));
            }
            let s = st.sources.entry(key).or_insert(Source {
                conns: 0,
                unauthenticated: 0,
                tokens: l.handshake_burst_per_address,
                refilled: now,
            });
            if s.conns >= l.max_per_address {
                return Err(Refusal::PerAddress);
            }
            if s.unauthenticated >= l.max_unauthenticated_per_address {
                return Err(Refusal::Unauthenticated);
            }
            s.refill(now, l);
            if s.tokens < 1.0 {
                return Err(Refusal::Rate);
            }
            s.tokens -= 1.0;
            s.conns += 1;
            s.unauthenticated += 1;
        }
        st.total += 1;
        st.unauthenticated += 1;
        Ok(Admission { limiter: self.clone(), key, authenticated: false })
    }

    fn with_usage<T>(&self, device: &str, now_us: u64, f: impl FnOnce(&mut Usage) -> T) -> T {
        let mut all = self.usage.lock().unwrap_or_else(|e| e.into_inner());
        let day = now_us / DAY_US;
        if all.len() > 100_000 {
            all.retain(|_, u| u.day == day);
        }
        let u = all.entry(device.to_string()).or_default();
        if u.day != day {
            *u = Usage { day, ..Usage::default() };
        }
        f(u)
    }

    /// Counts a log record of `bytes` of `device` at `now_us` against its daily quota.
    pub fn admit_log(&self, device: &str, now_us: u64, bytes: u64) -> Quota {
        let cap = self.limits.log_bytes_per_device_per_day;
        self.with_usage(device, now_us, |u| {
            if u.log_bytes.saturating_add(bytes) > cap {
                Quota::Full { first: !std::mem::replace(&mut u.log_refused, true) }
            } else {
                u.log_bytes += bytes;
                Quota::Room
            }
        })
    }

    /// Whether `device` may add an update event now (not counted: see
    /// [`Limiter::count_update_event`]).
    pub fn update_event_room(&self, device: &str, now_us: u64) -> Quota {
        let cap = self.limits.update_events_per_device_per_day;
        self.with_usage(device, now_us, |u| {
            if u.update_events >= cap {
                Quota::Full { first: !std::mem::replace(&mut u.events_refused, true) }
            } else {
                Quota::Room
            }
        })
    }

    /// Counts an update event of `device`.
    pub fn count_update_event(&self, device: &str, now_us: u64) {
        self.with_usage(device, now_us, |u| u.update_events += 1);
    }

    /// Connections held now: (in total, not yet authenticated).
    pub fn held(&self) -> (usize, usize) {
        let st = self.lock();
        (st.total, st.unauthenticated)
    }
}

/// A connection's place within the limits; released when dropped.
#[derive(Debug)]
pub struct Admission {
    limiter: Arc<Limiter>,
    key: Option<IpAddr>,
    authenticated: bool,
}

impl Admission {
    /// The limiter this admission belongs to (quotas).
    pub fn limiter(&self) -> &Limiter {
        &self.limiter
    }

    /// The device authenticated: the connection leaves the unauthenticated budget.
    pub fn authenticated(&mut self) {
        if std::mem::replace(&mut self.authenticated, true) {
            return;
        }
        let mut st = self.limiter.lock();
        st.unauthenticated -= 1;
        if let Some(s) = self.key.and_then(|k| st.sources.get_mut(&k)) {
            s.unauthenticated -= 1;
        }
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        let l = &self.limiter.limits;
        let mut st = self.limiter.lock();
        st.total -= 1;
        if !self.authenticated {
            st.unauthenticated -= 1;
        }
        if let Some(key) = self.key {
            if let Some(s) = st.sources.get_mut(&key) {
                s.conns -= 1;
                if !self.authenticated {
                    s.unauthenticated -= 1;
                }
                if s.idle(Instant::now(), l) {
                    st.sources.remove(&key);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authenticated_connections_leave_the_unauthenticated_budget() {
        let l = Limiter::new(GatewayLimits { max_unauthenticated: 2, ..GatewayLimits::default() });
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let mut a = l.admit(ip).unwrap();
        let _b = l.admit(ip).unwrap();
        assert_eq!(l.admit(ip).unwrap_err(), Refusal::Unauthenticated, "the newest is refused");
        a.authenticated();
        let c = l.admit(ip).unwrap();
        assert_eq!(l.held(), (3, 2));
        drop((a, c));
        assert_eq!(l.held(), (1, 1));
    }

    #[test]
    fn ipv6_counts_per_64_and_loopback_is_exempt_by_default() {
        let l = Limiter::new(GatewayLimits { max_per_address: 1, ..GatewayLimits::default() });
        let _a = l.admit("2001:db8::1".parse().unwrap()).unwrap();
        assert_eq!(l.admit("2001:db8::2".parse().unwrap()).unwrap_err(), Refusal::PerAddress);
        let _b = l.admit("2001:db8:0:1::1".parse().unwrap()).unwrap();
        let _c = l.admit("127.0.0.1".parse().unwrap()).unwrap();
        let _d = l.admit("127.0.0.1".parse().unwrap()).unwrap();
        assert_eq!(l.admit("::ffff:192.0.2.9".parse().unwrap()).map(|_| ()), Ok(()));
    }
}
