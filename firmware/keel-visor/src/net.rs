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
use keel_link::device::{DeviceLink, Event};
use keel_link::frame::Decoder;
use keel_link::msg::{Up, PROTOCOL_VERSION};
use keel_link::session::MAX_FRAME;
use keel_log::{Kind, LogRing, PushError};
use keel_update::agent::Next;
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet, SocketStorage};
use smoltcp::socket::{dhcpv4, tcp};
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpCidr, Ipv4Address};

use crate::global::Global;
use crate::rng::VisorRng;
use crate::{board, time, vlog};

/// Bytes of secure RAM for log records waiting to be sent.
const LOG_RING_BYTES: usize = 8192;

static LOGS: Global<Option<LogRing<LOG_RING_BYTES>>> = Global::new(None);

/// Starts the log ring for this boot (sequence numbers `boot << 32 | n`).
pub fn init_logs(boot_count: u32) {
    LOGS.with(|l| *l = Some(LogRing::new(boot_count)));
}

/// Queues a log record for the server. Oldest records are dropped (and counted) when full.
pub fn push_log(kind: Kind, level: u8, text: &[u8]) -> Result<(), PushError> {
    let now = time::now_us();
    LOGS.with(|l| match l.as_mut() {
        Some(l) => l.push(kind, level, now, text).map(|_| ()),
        None => Ok(()),
    })?;
    // Send it now if the channel is up (the service routine runs the network).
    if ONLINE.load(Ordering::Relaxed) {
        board::pend_service();
    }
    Ok(())
}

/// True while the secure channel to the server is up; lets log producers wake the network
/// without touching its state (they may run inside it).
pub static ONLINE: AtomicBool = AtomicBool::new(false);

/// Queues a visor event (formatted) for the server.
pub fn push_event(args: core::fmt::Arguments<'_>) {
    struct Buf([u8; 160], usize);
    impl core::fmt::Write for Buf {
        fn write_str(&mut self, s: &str) -> core::fmt::Result {
            let n = s.len().min(self.0.len() - self.1);
            self.0[self.1..self.1 + n].copy_from_slice(&s.as_bytes()[..n]);
            self.1 += n;
            Ok(())
        }
    }
    let mut b = Buf([0; 160], 0);
    let _ = core::fmt::Write::write_fmt(&mut b, args);
    let _ = push_log(Kind::Visor, 2, &b.0[..b.1]);
}

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
    Handshaking,
    Online,
    Backoff { until_us: u64 },
}

/// What a received frame asks the network code to do once the session is free again.
enum Got {
    Online(u64),
    TimeSync(u64),
    Agent(Next),
    Nothing,
}

struct Net {
    dev: Lan9118,
    iface: Interface,
    sockets: SocketSet<'static>,
    dhcp: SocketHandle,
    tcp: SocketHandle,
    server: (Ipv4Address, u16),
    device_key: [u8; 32],
    server_key: [u8; 32],
    boot_count: u32,
    session: Option<DeviceLink<VisorRng>>,
    decoder: Decoder<MAX_FRAME>,
    link: Link,
    backoff: Backoff,
    local_port: u16,
    next_poll_us: Option<u64>,
    /// When the last frame from the server arrived (or the connection was made).
    last_rx_us: u64,
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
pub fn init(factory: &keel_flash::factory::Factory, boot_count: u32, seed: u64, now_us: u64) {
    let (server_host, server_port) = (&factory.server_host[..], factory.server_port);
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
            device_key: factory.device_key,
            server_key: factory.server_key,
            boot_count,
            session: None,
            decoder: Decoder::new(),
            link: Link::WaitingForAddress,
            backoff: Backoff::new(1_000, 60_000, seed),
            local_port: 49152 + (seed % 8192) as u16,
            next_poll_us: Some(now_us),
            last_rx_us: now_us,
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
        ONLINE.store(false, Ordering::Relaxed);
        self.sockets.get_mut::<tcp::Socket>(self.tcp).abort();
        self.session = None;
        let d = self.backoff.next_delay_ms();
        vlog!("net: retrying in {} ms", d);
        self.link = Link::Backoff { until_us: now_us + d as u64 * 1000 };
    }

    fn start_session(&mut self, now_us: u64) {
        let mut link = match DeviceLink::<VisorRng>::new(&self.device_key, &self.server_key) {
            Ok(s) => s,
            Err(e) => {
                vlog!("net: cannot start the secure channel: {:?}", e);
                return self.retry_later(now_us);
            }
        };
        let app = crate::VISOR.with(|v| v.as_ref().and_then(|v| v.app));
        let (name, version) = match &app {
            Some(h) => (h.name_str(), h.version_str()),
            None => ("", ""),
        };
        let hello = Up::Hello {
            protocol: PROTOCOL_VERSION,
            visor_version: crate::VERSION,
            boot_count: self.boot_count,
            app: app.as_ref().map(|_| (name, version)),
            next_log_seq: LOGS.with(|l| l.as_ref().map_or(0, |l| l.next_seq())),
        };
        let mut frame = [0u8; MAX_FRAME];
        let sent = link.start(&hello, &mut frame).ok().is_some_and(|n| self.send_frame(&frame[..n]).is_ok());
        if !sent {
            vlog!("net: cannot send the handshake");
            return self.retry_later(now_us);
        }
        self.session = Some(link);
        self.decoder = Decoder::new();
        self.link = Link::Handshaking;
    }

    /// Reads and handles every complete frame, then sends queued log records.
    fn exchange(&mut self, now_us: u64) -> Result<(), &'static str> {
        let mut reply = [0u8; MAX_FRAME];
        loop {
            let s = self.sockets.get_mut::<tcp::Socket>(self.tcp);
            if !s.can_recv() {
                break;
            }
            let decoder = &mut self.decoder;
            let mut frame_len = None;
            let r = s.recv(|b| match decoder.push(b) {
                Ok((used, done)) => {
                    frame_len = done;
                    (used, Ok(()))
                }
                Err(_) => (b.len(), Err("oversized frame")),
            });
            r.map_err(|_| "receive failed")??;
            let Some(len) = frame_len else { continue };
            self.last_rx_us = now_us;
            let link = self.session.as_mut().ok_or("no session")?;
            let payload = &self.decoder.frame()[..len];
            // The event borrows from the session: update messages go to the update agent right
            // here (it must not log through `push_event`, the log ring is borrowed); only what is
            // needed afterwards is kept.
            let (got, n) = LOGS
                .with(|l| {
                    l.as_mut().map(|ring| {
                        link.on_frame(payload, ring, &mut reply).map(|(e, n)| {
                            let got = match e {
                                Event::Online { unix_us } => Got::Online(unix_us),
                                Event::TimeSync { unix_us } => Got::TimeSync(unix_us),
                                Event::UpdateOffer { envelope } => Got::Agent(crate::update::agent_offer(envelope)),
                                Event::LayerData { sequence, component: 0, offset, data } => {
                                    Got::Agent(crate::update::agent_data(sequence, offset, data))
                                }
                                Event::LayerError { sequence, offset, code, .. } => {
                                    vlog!(
                                        "update: the server cannot serve seq {} at {} (code {})",
                                        sequence,
                                        offset,
                                        code
                                    );
                                    Got::Agent(crate::update::agent_layer_error(sequence))
                                }
                                Event::UpdateCancel { sequence } => {
                                    crate::update::agent_cancel(sequence);
                                    Got::Agent(Next::None)
                                }
                                _ => Got::Nothing,
                            };
                            (got, n)
                        })
                    })
                })
                .ok_or("no log ring")?
                .map_err(|_| "server message rejected")?;
            if n > 0 {
                self.send_frame(&reply[..n])?;
            }
            match got {
                Got::Online(unix_us) => {
                    time::set_wall_us(unix_us);
                    vlog!("net: online (secure channel up, wall clock set)");
                    push_event(format_args!("online"));
                    self.backoff.reset();
                    self.link = Link::Online;
                    ONLINE.store(true, Ordering::Relaxed);
                    // The server learns the device's update state first thing, and an interrupted
                    // download continues where it stopped.
                    crate::update::STATUS_CHANGED.store(true, Ordering::Relaxed);
                    if let Some(m) = crate::update::agent_connected().message() {
                        self.send_message(&m, &mut reply)?;
                    }
                }
                Got::TimeSync(unix_us) => time::set_wall_us(unix_us),
                Got::Agent(next) => {
                    match next {
                        Next::Fetch { .. } => {
                            if let Some(m) = next.message() {
                                self.send_message(&m, &mut reply)?;
                            }
                        }
                        Next::Installed => crate::update::installed(),
                        Next::Ready { politeness_s } => crate::update::ready(politeness_s),
                        Next::None => {}
                    }
                    crate::update::STATUS_CHANGED.store(true, Ordering::Relaxed);
                }
                Got::Nothing => {}
            }
        }
        if self.link == Link::Online && crate::update::STATUS_CHANGED.swap(false, Ordering::Relaxed) {
            if let Some(st) = crate::update::status() {
                self.send_message(&st.message(), &mut reply)?;
            }
        }
        if self.link == Link::Online {
            while self.tcp_space() >= MAX_FRAME {
                let link = self.session.as_mut().ok_or("no session")?;
                let next = LOGS
                    .with(|l| l.as_mut().map(|ring| link.next_log_frame(ring, &mut reply)))
                    .ok_or("no log ring")?
                    .map_err(|_| "cannot encrypt")?;
                match next {
                    Some(n) => self.send_frame(&reply[..n])?,
                    None => break,
                }
            }
        }
        Ok(())
    }

    /// Encrypts `m` into `buf` and sends it.
    fn send_message(&mut self, m: &Up<'_>, buf: &mut [u8]) -> Result<(), &'static str> {
        let link = self.session.as_mut().ok_or("no session")?;
        let n = link.send(m, buf).map_err(|_| "cannot encrypt")?;
        self.send_frame(&buf[..n])
    }

    fn send_frame(&mut self, frame: &[u8]) -> Result<(), &'static str> {
        match self.sockets.get_mut::<tcp::Socket>(self.tcp).send_slice(frame) {
            Ok(sent) if sent == frame.len() => Ok(()),
            _ => Err("send buffer full"),
        }
    }

    fn tcp_space(&mut self) -> usize {
        let s = self.sockets.get_mut::<tcp::Socket>(self.tcp);
        s.send_capacity() - s.send_queue()
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
                if self.link != Link::WaitingForAddress {
                    vlog!("net: address lost");
                }
                self.iface.update_ip_addrs(|a| a.clear());
                self.sockets.get_mut::<tcp::Socket>(self.tcp).abort();
                self.session = None;
                ONLINE.store(false, Ordering::Relaxed);
                self.link = Link::WaitingForAddress;
            }
            None => {}
        }
        let s = self.sockets.get_mut::<tcp::Socket>(self.tcp);
        let (state, open) = (s.state(), s.is_open());
        match self.link {
            Link::Connecting if state == tcp::State::Established => {
                vlog!("net: connected to {}:{}", self.server.0, self.server.1);
                self.last_rx_us = now_us;
                self.start_session(now_us);
            }
            Link::Connecting if !open => {
                vlog!("net: connection to {}:{} failed", self.server.0, self.server.1);
                self.retry_later(now_us);
            }
            Link::Handshaking | Link::Online if state != tcp::State::Established => {
                vlog!("net: connection lost ({})", state);
                push_event(format_args!("connection lost ({})", state));
                self.retry_later(now_us);
            }
            Link::Handshaking | Link::Online
                if now_us.saturating_sub(self.last_rx_us) >= keel_link::device::SERVER_SILENCE_TIMEOUT_US =>
            {
                vlog!(
                    "net: nothing from the server for {} s; dropping the connection",
                    (now_us - self.last_rx_us) / 1_000_000
                );
                push_event(format_args!("connection lost (server silent)"));
                self.retry_later(now_us);
            }
            Link::Handshaking | Link::Online => {
                if let Err(e) = self.exchange(now_us) {
                    vlog!("net: {}; dropping the connection", e);
                    self.retry_later(now_us);
                }
            }
            Link::Backoff { until_us } if now_us >= until_us => self.connect(now_us),
            _ => {}
        }
        // Run the stack once more so the effects of the above (SYN, RST) leave now.
        self.iface.poll(instant(now_us), &mut self.dev, &mut self.sockets);
        let stack = self.iface.poll_at(instant(now_us), &self.sockets).map(|t| t.total_micros().max(0) as u64);
        let backoff = match self.link {
            Link::Backoff { until_us } => Some(until_us),
            Link::Handshaking | Link::Online => {
                Some(self.last_rx_us.saturating_add(keel_link::device::SERVER_SILENCE_TIMEOUT_US))
            }
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
