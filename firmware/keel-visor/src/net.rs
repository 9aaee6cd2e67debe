//! The visor's network: LAN9118 + smoltcp, DHCP, and one TCP connection to the server named in
//! the factory data, re-established with jittered exponential backoff whenever it drops.
//!
//! Everything runs in the service routine: it is requested by the controller's receive
//! interrupt and by the alarm at the stack's next timer deadline ([`next_deadline`]). The app
//! never touches the NIC: it stays secure, behind its PPC, with its interrupt targeting the
//! secure state.
#![allow(unsafe_code)]

use core::sync::atomic::{AtomicBool, Ordering};

use keel_lan9118::Lan9118;
use keel_link::backoff::Backoff;
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet, SocketStorage};
use smoltcp::socket::{dhcpv4, tcp};
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpCidr, Ipv4Address};

use crate::global::Global;
use crate::{board, vlog};

const TCP_BUF: usize = 4096;

static mut SOCKET_STORAGE: [SocketStorage<'static>; 2] = [SocketStorage::EMPTY; 2];
static mut TCP_RX: [u8; TCP_BUF] = [0; TCP_BUF];
static mut TCP_TX: [u8; TCP_BUF] = [0; TCP_BUF];
static BUFFERS_TAKEN: AtomicBool = AtomicBool::new(false);

#[allow(clippy::type_complexity)]
fn take_buffers() -> Option<(&'static mut [SocketStorage<'static>], &'static mut [u8], &'static mut [u8])> {
    if BUFFERS_TAKEN.swap(true, Ordering::AcqRel) {
        return None;
    }
    // SAFETY: the flag above hands these statics out exactly once; nothing else names them.
    unsafe {
        Some((
            &mut *core::ptr::addr_of_mut!(SOCKET_STORAGE),
            &mut *core::ptr::addr_of_mut!(TCP_RX),
            &mut *core::ptr::addr_of_mut!(TCP_TX),
        ))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Link {
    WaitingForAddress,
    Connecting,
    Connected,
    Backoff { until_us: u64 },
}

struct Net {
    dev: Lan9118,
    iface: Interface,
    sockets: SocketSet<'static>,
    dhcp: SocketHandle,
    tcp: SocketHandle,
    server: (Ipv4Address, u16),
    link: Link,
    backoff: Backoff,
    local_port: u16,
    next_poll_us: Option<u64>,
}

static NET: Global<Option<Net>> = Global::new(None);

fn instant(us: u64) -> Instant {
    Instant::from_micros(us as i64)
}

/// Parses a dotted-quad IPv4 address (DNS names come with the cloud link).
fn parse_ipv4(host: &[u8]) -> Option<Ipv4Address> {
    let end = host.iter().position(|&b| b == 0).unwrap_or(host.len());
    let s = core::str::from_utf8(&host[..end]).ok()?;
    let mut parts = s.split('.');
    let mut o = [0u8; 4];
    for b in o.iter_mut() {
        *b = parts.next()?.parse().ok()?;
    }
    parts.next().is_none().then(|| Ipv4Address::new(o[0], o[1], o[2], o[3]))
}

/// Brings the network up if the factory data names a server. `seed` varies the backoff jitter
/// and local ports between devices and boots.
pub fn init(server_host: &[u8], server_port: u16, seed: u64, now_us: u64) {
    let Some(ip) = parse_ipv4(server_host) else {
        vlog!("net: no server address in the factory data; network stays off");
        return;
    };
    if server_port == 0 {
        vlog!("net: no server port in the factory data; network stays off");
        return;
    }
    // SAFETY: the board's LAN9118 register block; the visor owns it and only this driver uses it.
    let Some(mut dev) = (unsafe { Lan9118::new(board::LAN9118_BASE) }) else {
        vlog!("net: no LAN9118 found");
        return;
    };
    let Some((storage, rx, tx)) = take_buffers() else {
        return;
    };
    let mac = EthernetAddress(dev.mac());
    let mut config = Config::new(HardwareAddress::Ethernet(mac));
    config.random_seed = seed;
    let iface = Interface::new(config, &mut dev, instant(now_us));
    let mut sockets = SocketSet::new(storage);
    let dhcp = sockets.add(dhcpv4::Socket::new());
    let tcp = sockets.add(tcp::Socket::new(tcp::SocketBuffer::new(rx), tcp::SocketBuffer::new(tx)));
    dev.enable_rx_interrupt();
    board::enable_net_irq();
    vlog!("net: MAC {}, server {}:{}", mac, ip, server_port);
    NET.with(|n| {
        *n = Some(Net {
            dev,
            iface,
            sockets,
            dhcp,
            tcp,
            server: (ip, server_port),
            link: Link::WaitingForAddress,
            backoff: Backoff::new(1_000, 60_000, seed),
            local_port: 49152 + (seed % 8192) as u16,
            next_poll_us: Some(now_us),
        })
    });
}

impl Net {
    fn connect(&mut self, now_us: u64) {
        let s = self.sockets.get_mut::<tcp::Socket>(self.tcp);
        s.abort();
        self.local_port = if self.local_port >= 65000 { 49152 } else { self.local_port + 1 };
        match s.connect(self.iface.context(), self.server, self.local_port) {
            Ok(()) => self.link = Link::Connecting,
            Err(e) => {
                vlog!("net: cannot connect: {:?}", e);
                self.retry_later(now_us);
            }
        }
    }

    fn retry_later(&mut self, now_us: u64) {
        self.sockets.get_mut::<tcp::Socket>(self.tcp).abort();
        let d = self.backoff.next_delay_ms();
        vlog!("net: retrying in {} ms", d);
        self.link = Link::Backoff { until_us: now_us + d as u64 * 1000 };
    }

    fn poll(&mut self, now_us: u64) {
        self.iface.poll(instant(now_us), &mut self.dev, &mut self.sockets);
        match self.sockets.get_mut::<dhcpv4::Socket>(self.dhcp).poll() {
            Some(dhcpv4::Event::Configured(cfg)) => {
                vlog!("net: address {} via {:?}", cfg.address, cfg.router);
                self.iface.update_ip_addrs(|a| {
                    a.clear();
                    let _ = a.push(IpCidr::Ipv4(cfg.address));
                });
                match cfg.router {
                    Some(r) => {
                        let _ = self.iface.routes_mut().add_default_ipv4_route(r);
                    }
                    None => {
                        let _ = self.iface.routes_mut().remove_default_ipv4_route();
                    }
                };
                if self.link == Link::WaitingForAddress {
                    self.connect(now_us);
                }
            }
            Some(dhcpv4::Event::Deconfigured) => {
                vlog!("net: address lost");
                self.iface.update_ip_addrs(|a| a.clear());
                self.sockets.get_mut::<tcp::Socket>(self.tcp).abort();
                self.link = Link::WaitingForAddress;
            }
            None => {}
        }
        let s = self.sockets.get_mut::<tcp::Socket>(self.tcp);
        let (state, open) = (s.state(), s.is_open());
        // Until the secure channel runs on this connection, incoming bytes are read and dropped
        // so the peer's window never closes.
        if s.can_recv() {
            let _ = s.recv(|b| (b.len(), ()));
        }
        match self.link {
            Link::Connecting if state == tcp::State::Established => {
                vlog!("net: connected to {}:{}", self.server.0, self.server.1);
                self.backoff.reset();
                self.link = Link::Connected;
            }
            Link::Connecting if !open => {
                vlog!("net: connection to {}:{} failed", self.server.0, self.server.1);
                self.retry_later(now_us);
            }
            Link::Connected if state != tcp::State::Established => {
                vlog!("net: connection lost ({})", state);
                self.retry_later(now_us);
            }
            Link::Backoff { until_us } if now_us >= until_us => self.connect(now_us),
            _ => {}
        }
        // Run the stack once more so the effects of the above (SYN, RST) leave now.
        self.iface.poll(instant(now_us), &mut self.dev, &mut self.sockets);
        let stack = self.iface.poll_at(instant(now_us), &self.sockets).map(|t| t.total_micros().max(0) as u64);
        let backoff = match self.link {
            Link::Backoff { until_us } => Some(until_us),
            _ => None,
        };
        self.next_poll_us = match (stack, backoff) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
}

/// Runs the stack and the connection logic (service routine).
pub fn poll(now_us: u64) {
    NET.with(|n| {
        if let Some(n) = n.as_mut() {
            n.poll(now_us);
        }
    });
}

/// When the network next needs [`poll`], if at all.
pub fn next_deadline() -> Option<u64> {
    NET.with(|n| n.as_ref().and_then(|n| n.next_poll_us))
}

/// The controller's interrupt: a frame arrived.
#[no_mangle]
extern "C" fn keel_net_irq() {
    NET.with(|n| {
        if let Some(n) = n.as_ref() {
            n.dev.ack_interrupt();
        }
    });
    board::pend_service();
}
