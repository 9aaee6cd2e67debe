//! The device's channel table against the server's end ([`Peer`]), over an in-memory link, with
//! the app's memory as a byte vector: flow control, pieces, and hostile servers and apps.

use keel_abi::chan::{record_cost, Kind, OpenParams, Reason, State};
use keel_abi::notify::Kind as Note;
use keel_abi::Status;
use keel_channel::device::{AppMemory, Channels, OPEN_BURST, OPEN_EVERY_US};
use keel_channel::peer::Peer;
use keel_proto::msg::{Down, Up, MAX_CHAN_DATA};

const BASE: u32 = 0x2800_0000;

struct Mem {
    bytes: Vec<u8>,
    /// Accesses to this range are refused (the app's MPU).
    deny: Option<(u32, u32)>,
    /// Unprivileged accesses to this range are refused (memory an RTOS kept for its kernel).
    privileged_only: Option<(u32, u32)>,
}

impl Mem {
    fn new() -> Mem {
        Mem { bytes: vec![0; 0x10000], deny: None, privileged_only: None }
    }
    fn ok(&self, addr: u32, len: usize, unprivileged: bool) -> Option<usize> {
        if let Some((a, l)) = self.privileged_only {
            if unprivileged && addr < a + l && a < addr + len as u32 {
                return None;
            }
        }
        let off = addr.checked_sub(BASE)? as usize;
        if off + len > self.bytes.len() {
            return None;
        }
        if let Some((a, l)) = self.deny {
            if addr < a + l && a < addr + len as u32 {
                return None;
            }
        }
        Some(off)
    }
    fn put(&mut self, addr: u32, data: &[u8]) {
        let off = (addr - BASE) as usize;
        self.bytes[off..off + data.len()].copy_from_slice(data);
    }
    fn get(&self, addr: u32, len: u32) -> &[u8] {
        let off = (addr - BASE) as usize;
        &self.bytes[off..off + len as usize]
    }
}

impl AppMemory for Mem {
    fn read(&mut self, addr: u32, buf: &mut [u8], unprivileged: bool) -> bool {
        match self.ok(addr, buf.len(), unprivileged) {
            Some(o) => {
                buf.copy_from_slice(&self.bytes[o..o + buf.len()]);
                true
            }
            None => false,
        }
    }
    fn write(&mut self, addr: u32, data: &[u8], unprivileged: bool) -> bool {
        match self.ok(addr, data.len(), unprivileged) {
            Some(o) => {
                self.bytes[o..o + data.len()].copy_from_slice(data);
                true
            }
            None => false,
        }
    }
}

fn params(kind: Kind, rx: (u32, u32), tx: (u32, u32)) -> OpenParams {
    OpenParams {
        version: 1,
        kind: kind as u32,
        tag: 0x7A6,
        rx_buf: rx.0,
        rx_len: rx.1,
        tx_buf: tx.0,
        tx_len: tx.1,
        endpoint: 0,
        endpoint_len: 0,
    }
}

/// The server side of the test link: one peer, the messages it reassembled, what it sent.
struct Server {
    peer: Option<Peer>,
    received: Vec<Vec<u8>>,
    window: u32,
}

impl Server {
    fn new(window: u32) -> Server {
        Server { peer: None, received: vec![], window }
    }
}

/// Runs the link until neither side has anything to send. Returns the device's messages.
fn pump(dev: &mut Channels, srv: &mut Server, mem: &mut Mem) -> Vec<String> {
    let mut log = vec![];
    for _ in 0..10_000 {
        let mut piece = [0u8; MAX_CHAN_DATA];
        let mut moved = false;
        let mut opened: Vec<(u32, u32)> = vec![];
        if let Some(up) = dev.poll_transmit(mem, &mut piece) {
            moved = true;
            match up {
                Up::ChanOpen { ch, window, .. } => {
                    log.push(format!("open {ch}"));
                    srv.peer = Some(Peer::new(ch, window, srv.window));
                    opened.push((ch, srv.window));
                }
                Up::ChanData { last, data, .. } => {
                    let p = srv.peer.as_mut().unwrap();
                    if let Some(m) = p.data(last, data).unwrap() {
                        let g = p.release(m.len());
                        srv.received.push(m);
                        // Give the room back at once.
                        let _ = dev.receive(&Down::ChanCredit { ch: p.ch(), bytes: g }, mem);
                    }
                }
                Up::ChanCredit { bytes, .. } => {
                    log.push(format!("credit {bytes}"));
                    srv.peer.as_mut().unwrap().credit(bytes).unwrap();
                }
                Up::ChanClose { ch } => {
                    log.push(format!("close {ch}"));
                    srv.peer = None;
                }
                other => panic!("{other:?}"),
            }
        }
        for (ch, window) in opened {
            assert!(dev.receive(&Down::ChanOpened { ch, window }, mem));
        }
        if let Some(p) = srv.peer.as_mut() {
            if let Some((last, data)) = p.next_piece() {
                let data = data.to_vec();
                let ch = p.ch();
                p.piece_sent();
                assert!(dev.receive(&Down::ChanData { ch, last, data: &data }, mem));
                moved = true;
            }
        }
        if !moved {
            return log;
        }
    }
    panic!("the link never settled");
}

fn notes(dev: &mut Channels) -> Vec<(Note, u32, u64)> {
    core::iter::from_fn(|| dev.take_notification()).map(|r| (Note::from_u16(r.kind).unwrap(), r.tag, r.value)).collect()
}

#[test]
fn a_request_and_a_response_larger_than_one_piece() {
    let (mut dev, mut mem, mut srv) = (Channels::new(), Mem::new(), Server::new(4096));
    let h = dev.open(&params(Kind::Http, (BASE + 0x1000, 4096), (BASE + 0x3000, 2048)), b"", true, &[], false).unwrap();
    assert_eq!(dev.info(h).unwrap().state, State::Opening as u32);
    // Nothing goes on the wire until there is something to send.
    assert!(!dev.wants_transmit());
    let request: Vec<u8> = (0..1500u32).map(|i| i as u8).collect();
    mem.put(BASE + 0x8000, &request);
    assert_eq!(dev.send(0, h, BASE + 0x8000, request.len() as u32, false, &mut mem), Status::Ok);
    let log = pump(&mut dev, &mut srv, &mut mem);
    assert_eq!(log[0], "open 1");
    assert_eq!(srv.received, vec![request.clone()]);
    assert_eq!(dev.info(h).unwrap().state, State::Open as u32);

    let response: Vec<u8> = (0..3000u32).map(|i| (i * 7) as u8).collect();
    srv.peer.as_mut().unwrap().push(response.clone()).unwrap();
    pump(&mut dev, &mut srv, &mut mem);
    assert_eq!(notes(&mut dev), vec![(Note::ChannelReadable, 0x7A6, h as u64)]);
    let m = dev.recv(h, &mut mem).unwrap();
    assert_eq!((m.offset, m.len, m.pending), (4, 3000, 1));
    assert_eq!(mem.get(BASE + 0x1000 + m.offset, m.len), &response[..]);
    assert_eq!(dev.consume(h, &mut mem), Status::Ok);
    assert_eq!(dev.recv(h, &mut mem), Err(Status::NoData));
    let log = pump(&mut dev, &mut srv, &mut mem);
    assert_eq!(log, vec![format!("credit {}", record_cost(3000))]);
    assert_eq!(dev.close(h), Status::Ok);
    assert_eq!(pump(&mut dev, &mut srv, &mut mem), vec!["close 1"]);
    assert_eq!(dev.close(h), Status::InvalidHandle, "a closed handle is stale");
}

#[test]
fn the_server_sends_only_what_the_receive_buffer_can_hold() {
    let (mut dev, mut mem, mut srv) = (Channels::new(), Mem::new(), Server::new(4096));
    let h = dev
        .open(&params(Kind::Mqtt, (BASE + 0x1000, 1024), (BASE + 0x3000, 256)), b"telemetry", true, &[], false)
        .unwrap();
    mem.put(BASE + 0x8000, b"connect");
    assert_eq!(dev.send(0, h, BASE + 0x8000, 7, false, &mut mem), Status::Ok);
    pump(&mut dev, &mut srv, &mut mem);
    for i in 0..10u8 {
        srv.peer.as_mut().unwrap().push(vec![i; 300]).unwrap();
    }
    pump(&mut dev, &mut srv, &mut mem);
    // 3 × 304 bytes fit in 1024; the rest waits in the server's queue.
    assert_eq!(dev.info(h).unwrap().rx_pending, 3);
    assert_eq!(srv.peer.as_ref().unwrap().queued().0, 7);
    let mut got = vec![];
    let mut rounds = 0;
    while got.len() < 10 {
        rounds += 1;
        assert!(rounds < 100 && srv.peer.is_some(), "stuck after {got:?}: {:?}", dev.info(h));
        while let Ok(m) = dev.recv(h, &mut mem) {
            got.push(mem.get(BASE + 0x1000 + m.offset, m.len)[0]);
            assert_eq!(dev.consume(h, &mut mem), Status::Ok);
        }
        pump(&mut dev, &mut srv, &mut mem);
    }
    assert_eq!(got, (0..10).collect::<Vec<u8>>(), "in order, none lost");
    assert_eq!(notes(&mut dev).len(), 10, "one readable record per message");
}

#[test]
fn a_server_that_oversteps_its_credit_closes_only_that_channel() {
    let (mut dev, mut mem, mut srv) = (Channels::new(), Mem::new(), Server::new(4096));
    let h = dev.open(&params(Kind::Mqtt, (BASE + 0x1000, 256), (BASE + 0x3000, 256)), b"p", true, &[], false).unwrap();
    let h2 = dev.open(&params(Kind::Http, (BASE + 0x2000, 256), (BASE + 0x2100, 256)), b"", true, &[], false).unwrap();
    mem.put(BASE + 0x8000, b"x");
    assert_eq!(dev.send(0, h, BASE + 0x8000, 1, false, &mut mem), Status::Ok);
    pump(&mut dev, &mut srv, &mut mem);
    let ch = srv.peer.as_ref().unwrap().ch();
    // 253 bytes cost 260 > 256.
    assert!(dev.receive(&Down::ChanData { ch, last: true, data: &[1; 253] }, &mut mem));
    assert_eq!(notes(&mut dev), vec![(Note::ChannelClosed, 0x7A6, h as u64 | (Reason::ProtocolError as u64) << 32)]);
    assert_eq!(dev.info(h).unwrap().state, State::Closed as u32);
    assert_eq!(dev.send(0, h, BASE + 0x8000, 1, false, &mut mem), Status::ChannelClosed);
    assert_eq!(pump(&mut dev, &mut srv, &mut mem), vec![format!("close {ch}")], "the server is told");
    // Late pieces for the closed channel, and for channels that never existed, are ignored.
    assert!(dev.receive(&Down::ChanData { ch, last: true, data: b"late" }, &mut mem));
    assert!(dev.receive(&Down::ChanClosed { ch: 999, reason: 1 }, &mut mem));
    assert!(dev.receive(&Down::ChanCredit { ch: 0, bytes: u32::MAX }, &mut mem));
    assert_eq!(dev.counters().stray, 3);
    // The other channel is untouched.
    assert_eq!(dev.info(h2).unwrap().state, State::Opening as u32);
    assert!(!dev.receive(&Down::Ping { nonce: 1 }, &mut mem), "not a channel message");
}

#[test]
fn credit_overflow_and_a_second_opened_are_protocol_errors() {
    for hostile in [Down::ChanCredit { ch: 1, bytes: u32::MAX }, Down::ChanOpened { ch: 1, window: 1 }] {
        let (mut dev, mut mem, mut srv) = (Channels::new(), Mem::new(), Server::new(4096));
        let h =
            dev.open(&params(Kind::Mqtt, (BASE + 0x1000, 256), (BASE + 0x3000, 256)), b"p", true, &[], false).unwrap();
        mem.put(BASE + 0x8000, b"x");
        assert_eq!(dev.send(0, h, BASE + 0x8000, 1, false, &mut mem), Status::Ok);
        pump(&mut dev, &mut srv, &mut mem);
        assert!(dev.receive(&hostile, &mut mem));
        assert_eq!(dev.info(h).unwrap().reason, Reason::ProtocolError as u32, "{hostile:?}");
    }
}

#[test]
fn what_the_app_does_to_its_buffers_only_harms_its_channel() {
    let (mut dev, mut mem, mut srv) = (Channels::new(), Mem::new(), Server::new(4096));
    let h = dev.open(&params(Kind::Mqtt, (BASE + 0x1000, 512), (BASE + 0x3000, 256)), b"p", true, &[], false).unwrap();
    mem.put(BASE + 0x8000, b"hello");
    assert_eq!(dev.send(0, h, BASE + 0x8000, 5, false, &mut mem), Status::Ok);
    pump(&mut dev, &mut srv, &mut mem);
    srv.peer.as_mut().unwrap().push(vec![9; 40]).unwrap();
    pump(&mut dev, &mut srv, &mut mem);
    // The app scribbles a huge length over the record the visor wrote.
    mem.put(BASE + 0x1000, &0xFFFF_FFF0u32.to_le_bytes());
    assert_eq!(dev.recv(h, &mut mem), Err(Status::ChannelClosed));
    assert_eq!(dev.info(h).unwrap().reason, Reason::BufferFault as u32);
    assert_eq!(dev.close(h), Status::Ok);

    // The app's MPU forbids its receive buffer while a message arrives.
    let h = dev.open(&params(Kind::Mqtt, (BASE + 0x1000, 512), (BASE + 0x3000, 256)), b"p", true, &[], false).unwrap();
    assert_eq!(dev.send(0, h, BASE + 0x8000, 5, false, &mut mem), Status::Ok);
    pump(&mut dev, &mut srv, &mut mem);
    mem.deny = Some((BASE + 0x1000, 512));
    srv.peer.as_mut().unwrap().push(vec![9; 40]).unwrap();
    pump(&mut dev, &mut srv, &mut mem);
    assert_eq!(dev.info(h).unwrap().reason, Reason::BufferFault as u32);
    mem.deny = None;
    // ... and its transmit buffer's length word changes under a queued message.
    assert_eq!(dev.close(h), Status::Ok);
    let h = dev.open(&params(Kind::Mqtt, (BASE + 0x1000, 512), (BASE + 0x3000, 256)), b"p", true, &[], false).unwrap();
    assert_eq!(dev.send(0, h, BASE + 0x8000, 5, false, &mut mem), Status::Ok);
    mem.put(BASE + 0x3000, &200u32.to_le_bytes());
    pump(&mut dev, &mut srv, &mut mem);
    assert_eq!(dev.info(h).unwrap().reason, Reason::BufferFault as u32);
    // A source the app may not read.
    assert_eq!(dev.close(h), Status::Ok);
    let h = dev.open(&params(Kind::Mqtt, (BASE + 0x1000, 512), (BASE + 0x3000, 256)), b"p", true, &[], false).unwrap();
    mem.deny = Some((BASE + 0x8000, 4));
    assert_eq!(dev.send(0, h, BASE + 0x8000, 5, false, &mut mem), Status::ParameterFault);
}

#[test]
fn open_checks_limits_overlaps_and_the_network() {
    let mut dev = Channels::new();
    let ring = (BASE + 0xF000, 16 + 16 * 8);
    let p = |i: u32| params(Kind::Http, (BASE + i * 0x400, 256), (BASE + i * 0x400 + 0x100, 256));
    assert_eq!(dev.open(&p(0), b"", false, &[], false), Err(Status::NetworkNotConnected));
    assert_eq!(
        dev.open(&params(Kind::Http, (BASE + 0xF000, 256), (BASE, 64)), b"", true, &[ring], false),
        Err(Status::BufferInUse)
    );
    assert_eq!(dev.open(&p(0), b"bad endpoint", true, &[], false), Err(Status::InvalidArgument), "a space");
    let hs: Vec<u32> = (0..8).map(|i| dev.open(&p(i), b"", true, &[ring], false).unwrap()).collect();
    assert_eq!(dev.open(&p(20), b"", true, &[], false), Err(Status::TooManyChannels));
    assert_eq!(dev.open(&p(3), b"", true, &[], false), Err(Status::TooManyChannels));
    assert_eq!(dev.close(hs[3]), Status::Ok);
    assert_eq!(dev.open(&p(2), b"", true, &[], false), Err(Status::BufferInUse), "channel 2's buffers");
    let again = dev.open(&p(3), b"", true, &[], false).unwrap();
    assert_ne!(again, hs[3], "the slot's new handle differs from the stale one");
    assert_eq!(dev.info(hs[3]), Err(Status::InvalidHandle));
    for h in [0, 0xFFFF_FFFF, 0x100, again + 1] {
        assert_eq!(dev.info(h), Err(Status::InvalidHandle), "{h:#x}");
    }
}

#[test]
fn ten_thousand_opens_and_closes_leak_nothing() {
    let (mut dev, mut mem, mut srv) = (Channels::new(), Mem::new(), Server::new(4096));
    let p = params(Kind::Http, (BASE + 0x1000, 256), (BASE + 0x3000, 256));
    mem.put(BASE + 0x8000, b"GET");
    for i in 0..10_000u64 {
        let h = dev.open(&p, b"", true, &[], false).unwrap();
        // Every tenth one goes on the wire and is closed mid-transfer.
        if i % 10 == 0 {
            assert_eq!(dev.send(i * OPEN_EVERY_US, h, BASE + 0x8000, 3, false, &mut mem), Status::Ok);
            let mut piece = [0u8; MAX_CHAN_DATA];
            assert!(matches!(dev.poll_transmit(&mut mem, &mut piece), Some(Up::ChanOpen { .. })));
        }
        assert_eq!(dev.close(h), Status::Ok);
        pump(&mut dev, &mut srv, &mut mem);
    }
    assert_eq!(dev.open_count(), 0);
    assert_eq!((dev.counters().opened, dev.counters().closed), (10_000, 10_000));
    assert!(!dev.wants_transmit());
}

#[test]
fn wire_opens_are_rate_limited() {
    let (mut dev, mut mem) = (Channels::new(), Mem::new());
    mem.put(BASE + 0x8000, b"GET");
    let p = |i: u32| params(Kind::Http, (BASE + i * 0x400, 256), (BASE + i * 0x400 + 0x100, 256));
    let mut sent = 0;
    let mut t = 0;
    let mut statuses = vec![];
    while sent < OPEN_BURST + 4 {
        let h = dev.open(&p(0), b"", true, &[], false).unwrap();
        let s = dev.send(t, h, BASE + 0x8000, 3, false, &mut mem);
        statuses.push(s);
        if s == Status::Ok {
            sent += 1;
        } else {
            t += OPEN_EVERY_US;
        }
        dev.close(h);
    }
    assert!(statuses[..OPEN_BURST as usize].iter().all(|s| *s == Status::Ok));
    assert_eq!(statuses[OPEN_BURST as usize], Status::RateLimited);
}

#[test]
fn a_dropped_link_closes_every_channel_and_tells_the_app() {
    let (mut dev, mut mem, mut srv) = (Channels::new(), Mem::new(), Server::new(4096));
    let h = dev.open(&params(Kind::Mqtt, (BASE + 0x1000, 512), (BASE + 0x3000, 256)), b"p", true, &[], false).unwrap();
    let h2 =
        dev.open(&params(Kind::Config, (BASE + 0x2000, 256), (BASE + 0x2100, 256)), b"", true, &[], false).unwrap();
    mem.put(BASE + 0x8000, b"hello");
    assert_eq!(dev.send(0, h, BASE + 0x8000, 5, false, &mut mem), Status::Ok);
    pump(&mut dev, &mut srv, &mut mem);
    srv.peer.as_mut().unwrap().push(vec![1; 2000]).unwrap_err();
    srv.peer.as_mut().unwrap().push(vec![1; 300]).unwrap();
    // Half a message arrives, then the link drops.
    let ch = srv.peer.as_ref().unwrap().ch();
    assert!(dev.receive(&Down::ChanData { ch, last: false, data: &[1; 100] }, &mut mem));
    dev.link_lost();
    let n = notes(&mut dev);
    assert_eq!(
        n,
        vec![
            (Note::ChannelClosed, 0x7A6, h as u64 | (Reason::LinkLost as u64) << 32),
            (Note::ChannelClosed, 0x7A6, h2 as u64 | (Reason::LinkLost as u64) << 32)
        ]
    );
    assert_eq!(dev.recv(h, &mut mem), Err(Status::ChannelClosed));
    assert!(!dev.wants_transmit(), "nothing is sent for channels of the dead connection");
    assert_eq!(dev.close(h), Status::Ok);
    assert_eq!(dev.close(h2), Status::Ok);
    assert_eq!(dev.open_count(), 0);
}

#[test]
fn a_full_transmit_buffer_blocks_and_mqtt_hears_when_it_drains() {
    let (mut dev, mut mem, mut srv) = (Channels::new(), Mem::new(), Server::new(8192));
    let h = dev.open(&params(Kind::Mqtt, (BASE + 0x1000, 512), (BASE + 0x3000, 256)), b"p", true, &[], false).unwrap();
    mem.put(BASE + 0x8000, &[5; 200]);
    assert_eq!(dev.send(0, h, BASE + 0x8000, 200, false, &mut mem), Status::Ok);
    assert_eq!(dev.send(0, h, BASE + 0x8000, 200, false, &mut mem), Status::WouldBlock);
    assert_eq!(dev.send(0, h, BASE + 0x8000, 253, false, &mut mem), Status::InvalidBufferSize, "never fits");
    for huge in [0xFFFF_FFFD, u32::MAX] {
        assert_eq!(dev.send(0, h, BASE + 0x8000, huge, false, &mut mem), Status::InvalidBufferSize, "no overflow");
    }
    assert_eq!(dev.info(h).unwrap().tx_free, 256 - 204 - 4);
    pump(&mut dev, &mut srv, &mut mem);
    assert_eq!(notes(&mut dev), vec![(Note::ChannelWritable, 0x7A6, h as u64)]);
    assert_eq!(dev.send(0, h, BASE + 0x8000, 200, false, &mut mem), Status::Ok);
    pump(&mut dev, &mut srv, &mut mem);
    assert_eq!(srv.received.len(), 2);
    // HTTP channels never report write space.
    let h = dev.open(&params(Kind::Http, (BASE + 0x4000, 512), (BASE + 0x5000, 256)), b"", true, &[], false).unwrap();
    assert_eq!(dev.send(0, h, BASE + 0x8000, 200, false, &mut mem), Status::Ok);
    assert_eq!(dev.send(0, h, BASE + 0x8000, 200, false, &mut mem), Status::WouldBlock);
    pump(&mut dev, &mut srv, &mut mem);
    assert_eq!(notes(&mut dev), vec![]);
}

#[test]
fn reset_forgets_every_channel_and_tells_the_server() {
    let (mut dev, mut mem, mut srv) = (Channels::new(), Mem::new(), Server::new(4096));
    let h = dev.open(&params(Kind::Mqtt, (BASE + 0x1000, 512), (BASE + 0x3000, 256)), b"p", true, &[], false).unwrap();
    mem.put(BASE + 0x8000, b"hello");
    assert_eq!(dev.send(0, h, BASE + 0x8000, 5, false, &mut mem), Status::Ok);
    pump(&mut dev, &mut srv, &mut mem);
    dev.reset();
    assert_eq!(dev.open_count(), 0);
    assert_eq!(dev.info(h), Err(Status::InvalidHandle));
    assert_eq!(pump(&mut dev, &mut srv, &mut mem), vec!["close 1"]);
}

#[test]
fn a_message_larger_than_the_servers_window_is_refused_not_stalled() {
    let (mut dev, mut mem, mut srv) = (Channels::new(), Mem::new(), Server::new(64));
    let h = dev.open(&params(Kind::Mqtt, (BASE + 0x1000, 512), (BASE + 0x3000, 512)), b"p", true, &[], false).unwrap();
    mem.put(BASE + 0x8000, &[1; 200]);
    // Queued before the server's window is known: it fails the channel once the window says no.
    assert_eq!(dev.send(0, h, BASE + 0x8000, 100, false, &mut mem), Status::Ok);
    pump(&mut dev, &mut srv, &mut mem);
    assert_eq!(dev.info(h).unwrap().reason, Reason::ProtocolError as u32);
    assert_eq!(dev.close(h), Status::Ok);
    // Once the window is known, a send above it is refused at once.
    let h = dev.open(&params(Kind::Mqtt, (BASE + 0x1000, 512), (BASE + 0x3000, 512)), b"p", true, &[], false).unwrap();
    assert_eq!(dev.send(0, h, BASE + 0x8000, 8, false, &mut mem), Status::Ok);
    pump(&mut dev, &mut srv, &mut mem);
    assert_eq!(dev.info(h).unwrap().state, State::Open as u32);
    assert_eq!(dev.send(0, h, BASE + 0x8000, 100, false, &mut mem), Status::InvalidBufferSize);
    assert_eq!(dev.send(0, h, BASE + 0x8000, 60, false, &mut mem), Status::Ok);
}

#[test]
fn buffers_are_reached_with_the_privilege_of_the_code_that_opened_the_channel() {
    // An unprivileged task opens a channel; later the app's MPU gives its receive buffer to the
    // kernel (privileged only). The visor, writing from its service routine, must not write it.
    let (mut dev, mut mem, mut srv) = (Channels::new(), Mem::new(), Server::new(4096));
    let p = params(Kind::Mqtt, (BASE + 0x1000, 512), (BASE + 0x3000, 256));
    let h = dev.open(&p, b"p", true, &[], true).unwrap();
    mem.put(BASE + 0x8000, b"hello");
    assert_eq!(dev.send(0, h, BASE + 0x8000, 5, true, &mut mem), Status::Ok);
    pump(&mut dev, &mut srv, &mut mem);
    mem.privileged_only = Some((BASE + 0x1000, 512));
    srv.peer.as_mut().unwrap().push(vec![9; 40]).unwrap();
    pump(&mut dev, &mut srv, &mut mem);
    assert_eq!(dev.info(h).unwrap().reason, Reason::BufferFault as u32);
    assert!(mem.get(BASE + 0x1004, 40).iter().all(|b| *b == 0), "nothing written");
    // The same channel opened by privileged code keeps working.
    assert_eq!(dev.close(h), Status::Ok);
    let h = dev.open(&p, b"p", true, &[], false).unwrap();
    assert_eq!(dev.send(0, h, BASE + 0x8000, 5, false, &mut mem), Status::Ok);
    pump(&mut dev, &mut srv, &mut mem);
    srv.peer.as_mut().unwrap().push(vec![9; 40]).unwrap();
    pump(&mut dev, &mut srv, &mut mem);
    assert_eq!(dev.recv(h, &mut mem).map(|m| m.len), Ok(40));
    // A source the caller may not read is a parameter fault, whoever opened the channel.
    mem.privileged_only = Some((BASE + 0x8000, 16));
    assert_eq!(dev.send(0, h, BASE + 0x8000, 5, true, &mut mem), Status::ParameterFault);
}

/// App memory where every range below 4 GiB reads as zeros (an app whose MPU allows the top of
/// the address space); writes go to [`Mem`].
struct Anywhere(Mem);

impl AppMemory for Anywhere {
    fn read(&mut self, addr: u32, buf: &mut [u8], _: bool) -> bool {
        buf.fill(0);
        addr as u64 + buf.len() as u64 <= 1 << 32
    }
    fn write(&mut self, addr: u32, data: &[u8], unprivileged: bool) -> bool {
        self.0.write(addr, data, unprivileged)
    }
}

#[test]
fn a_message_read_from_the_top_of_the_address_space_does_not_wrap_to_address_zero() {
    let (mut dev, mut mem) = (Channels::new(), Anywhere(Mem::new()));
    let h = dev.open(&params(Kind::Mqtt, (BASE + 0x1000, 512), (BASE + 0x3000, 256)), b"p", true, &[], false).unwrap();
    // The first 64 bytes end exactly at 4 GiB; the next would start at address 0.
    assert_eq!(dev.send(0, h, 0xFFFF_FFC0, 128, false, &mut mem), Status::ParameterFault);
    assert_eq!(dev.send(0, h, 0xFFFF_FFF0, 16, false, &mut mem), Status::Ok, "a range that ends at 4 GiB is fine");
}
