//! The board's network, as an adapter for the device core: the LAN9118 under smoltcp, DHCP, and
//! the one TCP socket the core's connection runs over. The core decides when to connect, what to
//! send and when to give up ([`keel_device`]); this module only moves bytes and reports what the
//! stack saw (address acquired or lost, TCP up or closed).
//!
//! Everything runs in the service routine. The controller's interrupt only masks itself and
//! wakes the service routine, which polls the stack and unmasks it ([`Nic::poll`]). The app never
//! touches the NIC: it stays secure, behind its PPC, with its interrupt targeting the secure
//! state.

use keel_device::{Device, MAX_FRAME};
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet, SocketStorage};
use smoltcp::socket::{dhcpv4, tcp};
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpCidr, Ipv4Address};

use crate::board::{Board, This};
use crate::rng::VisorRng;
use crate::vlog;

/// Bytes of secure RAM for log records waiting to be sent.
pub const LOG_RING_BYTES: usize = 8192;

/// The device core as the visor runs it.
pub type Core = Device<<This as Board>::Flash, VisorRng, LOG_RING_BYTES>;

const TCP_BUF: usize = 4096;

/// The socket buffers, handed out once.
struct Buffers {
    storage: [SocketStorage<'static>; 2],
    rx: [u8; TCP_BUF],
    tx: [u8; TCP_BUF],
}

static BUFFERS: static_cell::StaticCell<Buffers> = static_cell::StaticCell::new();

/// Effects of the core that act on the network, collected while the core runs and carried out
/// by the service routine ([`Nic::apply`]).
#[derive(Default)]
pub struct Pending {
    connect: bool,
    close: bool,
    /// The app's memory, for channel messages received while the core runs.
    app_mem: crate::ns_mem::AppMem,
}

/// The visor's [`keel_device::Output`]: network effects are recorded, the rest done at once.
pub struct Effects<'a>(pub &'a mut Pending);

impl keel_device::Output for Effects<'_> {
    fn effect(&mut self, e: keel_device::Effect<'_>) {
        match e {
            keel_device::Effect::Connect => {
                self.0.connect = true;
                self.0.close = false;
            }
            keel_device::Effect::Close => {
                self.0.close = true;
                self.0.connect = false;
            }
            keel_device::Effect::SetWallClock(t) => crate::time::set_wall_us(t),
            // A waiting system call checks for events each time its WFI returns.
            keel_device::Effect::AppEvents => {}
            keel_device::Effect::Console(a) => vlog!("{}", a),
        }
    }

    fn app_memory(&mut self) -> Option<&mut dyn keel_device::AppMemory> {
        Some(&mut self.0.app_mem)
    }
}

/// The NIC, the IP stack and the server's address.
pub struct Nic {
    dev: <This as Board>::Nic,
    iface: Interface,
    sockets: SocketSet<'static>,
    dhcp: SocketHandle,
    tcp: SocketHandle,
    server: (Ipv4Address, u16),
    local_port: u16,
    /// DHCP gave an address (and has not taken it back).
    has_address: bool,
    /// The TCP socket was connecting or established at the last poll.
    was_open: bool,
    was_established: bool,
}

fn instant(us: u64) -> Instant {
    Instant::from_micros(us as i64)
}

/// Parses the factory data's dotted-quad IPv4 address (NUL-padded).
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

impl Nic {
    /// Brings the NIC up if the factory data names a server. `seed` varies local ports between
    /// devices and boots.
    pub fn new(factory: &keel_flash::factory::Factory, seed: u64, now_us: u64) -> Option<Nic> {
        let Some(ip) = parse_ipv4(&factory.server_host) else {
            vlog!("net: no server address in the factory data; network stays off");
            return None;
        };
        let port = factory.server_port;
        if port == 0 {
            vlog!("net: no server port in the factory data; network stays off");
            return None;
        }
        let Some(mut dev) = This::nic() else {
            vlog!("net: no network controller found");
            return None;
        };
        let bufs = BUFFERS.try_init(Buffers {
            storage: [SocketStorage::EMPTY, SocketStorage::EMPTY],
            rx: [0; TCP_BUF],
            tx: [0; TCP_BUF],
        })?;
        let mac = EthernetAddress(dev.mac());
        let mut config = Config::new(HardwareAddress::Ethernet(mac));
        config.random_seed = seed;
        let iface = Interface::new(config, &mut dev, instant(now_us));
        let mut sockets = SocketSet::new(&mut bufs.storage[..]);
        let dhcp = sockets.add(dhcpv4::Socket::new());
        let mut socket =
            tcp::Socket::new(tcp::SocketBuffer::new(&mut bufs.rx[..]), tcp::SocketBuffer::new(&mut bufs.tx[..]));
        // Whole frames are written at once, and a 4 KiB receive window leaves no room for
        // delayed ACKs: acknowledge every segment at once (a layer download is otherwise paced
        // by the 10 ms ACK timer) and send small frames (a fetch, a pong) without waiting.
        socket.set_ack_delay(None);
        socket.set_nagle_enabled(false);
        let tcp = sockets.add(socket);
        dev.enable_rx_interrupt();
        This::enable_net_irq();
        vlog!("net: MAC {}, server {}:{}", mac, ip, port);
        Some(Nic {
            dev,
            iface,
            sockets,
            dhcp,
            tcp,
            server: (ip, port),
            local_port: 49152 + (seed % 8192) as u16,
            has_address: false,
            was_open: false,
            was_established: false,
        })
    }

    /// Carries out the core's network effects.
    fn apply(&mut self, now: u64, core: &mut Core, pending: &mut Pending) {
        for _ in 0..4 {
            if pending.close {
                pending.close = false;
                self.sockets.get_mut::<tcp::Socket>(self.tcp).abort();
                self.was_open = false;
                self.was_established = false;
            }
            if !pending.connect {
                return;
            }
            pending.connect = false;
            let s = self.sockets.get_mut::<tcp::Socket>(self.tcp);
            s.abort();
            self.local_port = if self.local_port >= 65000 { 49152 } else { self.local_port + 1 };
            match s.connect(self.iface.context(), self.server, self.local_port) {
                Ok(()) => {
                    self.was_open = true;
                    self.was_established = false;
                }
                Err(e) => {
                    vlog!("net: cannot connect: {:?}", e);
                    core.tcp_closed(now, &mut Effects(pending));
                }
            }
        }
    }

    /// Runs the stack, reports what it saw to the core and moves bytes both ways.
    pub fn poll(&mut self, now: u64, core: &mut Core, pending: &mut Pending) {
        self.dev.ack_interrupt();
        self.apply(now, core, pending);
        self.iface.poll(instant(now), &mut self.dev, &mut self.sockets);
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
                self.has_address = true;
                core.address_acquired(now, &mut Effects(pending));
            }
            Some(dhcpv4::Event::Deconfigured) => {
                // DHCP also reports this before its first lease: only a lost lease is news.
                if core::mem::take(&mut self.has_address) {
                    vlog!("net: address lost");
                }
                self.iface.update_ip_addrs(|a| a.clear());
                core.address_lost(now, &mut Effects(pending));
            }
            None => {}
        }
        self.apply(now, core, pending);
        // TCP state changes.
        let s = self.sockets.get_mut::<tcp::Socket>(self.tcp);
        let (state, open) = (s.state(), s.is_open());
        if self.was_open && !self.was_established && state == tcp::State::Established {
            self.was_established = true;
            vlog!("net: connected to {}:{}", self.server.0, self.server.1);
            core.tcp_connected(now, &mut Effects(pending));
        } else if self.was_open && (!open || (self.was_established && state != tcp::State::Established)) {
            if self.was_established {
                vlog!("net: connection lost ({})", state);
            } else {
                vlog!("net: connection to {}:{} failed", self.server.0, self.server.1);
            }
            self.was_open = false;
            self.was_established = false;
            core.tcp_closed(now, &mut Effects(pending));
        }
        self.apply(now, core, pending);
        self.exchange(now, core, pending);
        self.apply(now, core, pending);
        // Run the stack once more so what was queued (data, SYN, RST) leaves now.
        self.iface.poll(instant(now), &mut self.dev, &mut self.sockets);
    }

    /// Feeds received bytes to the core and sends what it has, frame by frame.
    fn exchange(&mut self, now: u64, core: &mut Core, pending: &mut Pending) {
        if !self.was_established {
            return;
        }
        let mut frame = [0u8; MAX_FRAME];
        loop {
            let mut progress = false;
            // Send first: an answer the core owes (handshake, Ready, Pong) unblocks its input.
            loop {
                let s = self.sockets.get_mut::<tcp::Socket>(self.tcp);
                if s.send_capacity() - s.send_queue() < MAX_FRAME {
                    break;
                }
                let Some(n) = core.poll_transmit_with(now, &mut frame, &mut crate::ns_mem::AppMem) else { break };
                match s.send_slice(&frame[..n]) {
                    Ok(sent) if sent == n => progress = true,
                    _ => {
                        // Cannot happen with the space checked above; never send half a frame.
                        core.tcp_closed(now, &mut Effects(pending));
                        return;
                    }
                }
            }
            let s = self.sockets.get_mut::<tcp::Socket>(self.tcp);
            if s.can_recv() {
                let used = s.recv(|b| {
                    let n = core.receive(now, b, &mut Effects(pending));
                    (n, n)
                });
                if matches!(used, Ok(n) if n > 0) {
                    progress = true;
                }
            }
            if !progress || pending.close || pending.connect {
                return;
            }
        }
    }

    /// When the stack next needs [`Nic::poll`].
    pub fn poll_at(&mut self, now: u64) -> Option<u64> {
        self.iface.poll_at(instant(now), &self.sockets).map(|t| t.total_micros().max(0) as u64)
    }
}
