//! channel-stress: channels under faults and load, for the QEMU tests and `cargo xtask bench`.
//!
//! Reads its mode and the base URL of an HTTPS test server from the configuration
//! (`channel-stress/mode`, `channel-stress/url`; the server answers `GET <url>/bytes/<n>` with
//! `n` bytes, byte `i` being `i % 251`), then runs one of:
//!
//! * `faults`: three fault cases, then `channel-stress: PASS ...` (or `FAIL <why>`):
//!   1. **churn**: [`CHURN`] opens and closes of a channel; then every slot is free again
//!      ([`MAX_CHANNELS`] open at once, one more is refused with TOO_MANY_CHANNELS);
//!   2. **mid-transfer closes**: [`MID`] GETs of [`BIG`] bytes each closed after a growing
//!      delay (from right after the request to after the response), then a full GET whose every
//!      byte is checked, and the slots again;
//!   3. **ring overrun**: with the app's interrupts masked, [`FLOOD`] QoS 0 publishes on the MQTT
//!      profile `stress` to a topic the app subscribed to, so that the visor's records for the
//!      results and the echoes overflow the SDK's ring; after the mask is lifted the app gets an
//!      OVERRUN record with the count, and every echo is still read from the channel.
//! * `stream`: GETs of [`BIG`] bytes one after the other, forever, each logged with its size and
//!   the device time (`channel-stress: stream n=.. bytes=.. t_us=..`); a failed GET is logged
//!   (`channel-stress: stream failed: <why>`) and the stream goes on once the link is up; applies
//!   an update as soon as the visor has one ready.
//! * `latency`: [`LATENCY_ROUNDS`] small GETs, timing each channel's READABLE record from the
//!   moment the visor wrote it (the time it carries) to the app holding it; logs
//!   `channel-stress: bench notification_latency_ns=<mean> max_ns=<max>`.
#![no_std]
#![no_main]
// A failure is one log line (256 bytes) returned once per run, on a stack sized for 64 KiB
// buffers: not worth boxing.
#![allow(clippy::result_large_err)]

use core::fmt::Write;

use keel_app::chan::{Channel, Kind};
use keel_app::config::{SCOPE_ACCOUNT, STORE_CONFIG};
use keel_app::mqtt::{Event, Session};
use keel_app::msg::{config_result, http_result, mqtt_state, Msg, Strs};
use keel_app::notify::{self, Kind as Note};
use keel_app::{config, http, net, Error, LineBuf, Status, Text};

keel_app::entry!(main);

/// Channel open/close cycles of the churn.
const CHURN: u32 = 10_000;
/// The visor's limit of open channels.
const MAX_CHANNELS: usize = keel_abi::chan::MAX_CHANNELS;
/// Requests closed mid-transfer.
const MID: u32 = 40;
/// Bytes of a large response.
const BIG: usize = 48 * 1024;
/// QoS 0 publishes sent with interrupts masked.
const FLOOD: u32 = 40;
/// Rounds of the latency benchmark.
const LATENCY_ROUNDS: u32 = 20;
/// Tag of the app's network request.
const NET_TAG: u32 = 1;
/// Tags of the app's channels (in their records).
const TAG: u32 = 0x5354;
/// The remote server's time to answer (ms).
const TIMEOUT_MS: u32 = 20_000;

fn main() -> ! {
    keel_app::info!("channel-stress: started");
    if let Err(e) = net::request(NET_TAG).and_then(|_| net::wait_connected(60_000)) {
        keel_app::error!("channel-stress: FAIL no network: {}", e.name());
        idle();
    }
    let mut mode = [0u8; 16];
    let mut url = [0u8; 128];
    let (mode_len, url_len) = match settings(&mut mode, &mut url) {
        Ok(v) => v,
        Err(e) => {
            keel_app::error!("channel-stress: FAIL configuration: {}", e);
            idle();
        }
    };
    let url = core::str::from_utf8(&url[..url_len]).unwrap_or("");
    match &mode[..mode_len] {
        b"faults" => match faults(url) {
            Ok(line) => keel_app::info!("channel-stress: PASS {}", Text(line.as_bytes())),
            Err(why) => keel_app::error!("channel-stress: FAIL {}", Text(why.as_bytes())),
        },
        b"stream" => stream(url),
        b"latency" => match latency(url) {
            Ok((mean_ns, max_ns)) => {
                keel_app::info!("channel-stress: bench notification_latency_ns={} max_ns={}", mean_ns, max_ns)
            }
            Err(why) => keel_app::error!("channel-stress: FAIL {}", Text(why.as_bytes())),
        },
        other => keel_app::error!("channel-stress: FAIL unknown mode {}", Text(other)),
    }
    idle()
}

/// A failure, as one log line.
type Why = LineBuf;

macro_rules! why {
    ($($arg:tt)*) => {{
        let mut w = LineBuf::new();
        let _ = write!(w, $($arg)*);
        w
    }};
}

/// Reads `channel-stress/mode` and `channel-stress/url` (account scope).
fn settings(mode: &mut [u8], url: &mut [u8]) -> Result<(usize, usize), Error> {
    let mut rx = [0u32; 256];
    let mut tx = [0u32; 64];
    let keys =
        [(SCOPE_ACCOUNT, STORE_CONFIG, "channel-stress/mode"), (SCOPE_ACCOUNT, STORE_CONFIG, "channel-stress/url")];
    let mut lens = [None, None];
    config::fetch(&keys, &mut rx, &mut tx, |i, result, value| {
        let out: &mut [u8] = if i == 0 { &mut *mode } else { &mut *url };
        if result == config_result::OK && value.len() <= out.len() {
            out[..value.len()].copy_from_slice(value);
            lens[i] = Some(value.len());
        }
    })?;
    match lens {
        [Some(m), Some(u)] => Ok((m, u)),
        _ => Err(Error::Failed(config_result::NOT_FOUND)),
    }
}

fn faults(url: &str) -> Result<Why, Why> {
    churn()?;
    keel_app::info!("channel-stress: churn opens={} then {} open at once, one more refused", CHURN, MAX_CHANNELS);
    let (cut, complete) = mid_transfer(url)?;
    keel_app::info!("channel-stress: mid-transfer closes={} cut={} complete={}; then a full GET", MID, cut, complete);
    let lost = overrun()?;
    Ok(why!("churn={} mid-transfer={} cut={} overrun_lost={} echoes={}/{}", CHURN, MID, cut, lost, FLOOD, FLOOD))
}

/// Opens and closes a channel [`CHURN`] times, then checks every slot is free.
fn churn() -> Result<(), Why> {
    let mut rx = [0u32; 16];
    let mut tx = [0u32; 16];
    for i in 0..CHURN {
        let ch = Channel::open(Kind::Http, "", &mut rx, &mut tx, TAG).map_err(|e| why!("open {}: {}", i, e.name()))?;
        ch.close().map_err(|e| why!("close {}: {}", i, e.name()))?;
    }
    slots_free()
}

/// Every channel slot is free: [`MAX_CHANNELS`] open at once, one more is refused.
fn slots_free() -> Result<(), Why> {
    let mut bufs = [[0u32; 16]; 2 * MAX_CHANNELS + 2];
    let (pairs, extra) = bufs.split_at_mut(2 * MAX_CHANNELS);
    let mut open: [Option<Channel<'_>>; MAX_CHANNELS] = Default::default();
    for (i, (slot, pair)) in open.iter_mut().zip(pairs.chunks_mut(2)).enumerate() {
        let (rx, tx) = pair.split_at_mut(1);
        *slot = Some(
            Channel::open(Kind::Http, "", &mut rx[0], &mut tx[0], TAG)
                .map_err(|e| why!("slot {} of {} not free: {}", i, MAX_CHANNELS, e.name()))?,
        );
    }
    let (rx, tx) = extra.split_at_mut(1);
    let one_more = Channel::open(Kind::Http, "", &mut rx[0], &mut tx[0], TAG);
    let r = match one_more {
        Err(Status::TooManyChannels) => Ok(()),
        Err(e) => Err(why!("channel {}: {} (expected TOO_MANY_CHANNELS)", MAX_CHANNELS + 1, e.name())),
        Ok(_) => Err(why!("channel {} opened: more than {} slots", MAX_CHANNELS + 1, MAX_CHANNELS)),
    };
    r
}

/// Encodes `GET <url>/bytes/<n>` into `out`.
fn get_request(url: &str, n: usize, path: &mut LineBuf, out: &mut [u8]) -> Result<usize, Why> {
    let _ = write!(path, "{}/bytes/{}", url, n);
    let url = core::str::from_utf8(path.as_bytes()).map_err(|_| why!("URL is not text"))?;
    let m = Msg::HttpRequest {
        method: b"GET",
        url: url.as_bytes(),
        timeout_ms: TIMEOUT_MS,
        headers: Strs::Items(&[]),
        body: &[],
    };
    m.encode(out).map_err(|_| why!("request too large"))
}

/// Sends `msg`, waiting while the visor's open rate limit says so.
fn send_paced(ch: &mut Channel<'_>, msg: &[u8]) -> Result<(), Status> {
    loop {
        match ch.send(msg) {
            Err(Status::RateLimited) => keel_app::sleep_ms(60),
            r => return r,
        }
    }
}

/// [`MID`] requests closed after 0, 50, 100, ... µs; then a full GET and the slots. Returns how many
/// were closed before their response was complete, and after.
fn mid_transfer(url: &str) -> Result<(u32, u32), Why> {
    let mut rx = [0u32; 16 * 1024];
    let mut tx = [0u32; 128];
    let mut req = [0u8; 256];
    let n = get_request(url, BIG, &mut LineBuf::new(), &mut req)?;
    let (mut cut, mut complete) = (0, 0);
    for i in 0..MID {
        let mut ch =
            Channel::open(Kind::Http, "", &mut rx, &mut tx, TAG).map_err(|e| why!("open {}: {}", i, e.name()))?;
        send_paced(&mut ch, &req[..n]).map_err(|e| why!("send {}: {}", i, e.name()))?;
        // 0 to 2 ms: a 48 KiB response takes about that long on a loopback link.
        let until = keel_app::monotonic_us() + 50 * i as u64;
        loop {
            let now = keel_app::monotonic_us();
            if now >= until {
                break;
            }
            keel_app::wait((until - now) as u32);
        }
        let pending = ch.info().map(|x| x.rx_pending).unwrap_or(0);
        if pending == 0 {
            cut += 1;
        } else {
            complete += 1;
        }
        ch.close().map_err(|e| why!("close {}: {}", i, e.name()))?;
    }
    full_get(url, &mut rx, &mut tx)?;
    slots_free()?;
    Ok((cut, complete))
}

/// A GET of [`BIG`] bytes whose every byte is checked.
fn full_get(url: &str, rx: &mut [u32], tx: &mut [u32]) -> Result<usize, Why> {
    let mut path = LineBuf::new();
    let _ = write!(path, "{}/bytes/{}", url, BIG);
    let u = core::str::from_utf8(path.as_bytes()).map_err(|_| why!("URL is not text"))?;
    // Channels opened in a burst before may have used up the visor's open budget: wait for it.
    let mut tries = 0;
    let r = loop {
        match http::get(u, TIMEOUT_MS, rx, tx) {
            Err(Error::Sys(Status::RateLimited)) if tries < 100 => {
                tries += 1;
                keel_app::sleep_ms(60);
            }
            r => break r.map_err(|e| why!("GET {}: {}", u, e))?,
        }
    };
    if r.result() != http_result::OK || r.status() != 200 {
        return Err(why!("GET {}: result={} status={}", u, r.result(), r.status()));
    }
    let body = r.body();
    if body.len() != BIG {
        return Err(why!("GET {}: {} bytes, not {}", u, body.len(), BIG));
    }
    if let Some(i) = body.iter().enumerate().position(|(i, &b)| b != (i % 251) as u8) {
        return Err(why!("GET {}: byte {} is wrong", u, i));
    }
    Ok(body.len())
}

/// The ring overrun: see the module documentation. Returns the OVERRUN record's count.
fn overrun() -> Result<u64, Why> {
    let mut id = LineBuf::new();
    match keel_app::device_id() {
        Ok(d) => {
            let _ = write!(id, "keel-stress/{}", d);
        }
        Err(e) => return Err(why!("device id: {}", e.name())),
    }
    let topic = core::str::from_utf8(id.as_bytes()).map_err(|_| why!("topic"))?;
    let mut rx = [0u32; 4096];
    let mut tx = [0u32; 1024];
    let mut s = Session::open("stress", &mut rx, &mut tx).map_err(|e| why!("mqtt open: {}", e))?;
    // The closes before used up the burst of channel opens: wait for the rate limit.
    let c = loop {
        match s.connect_wait(true, 30, None, TIMEOUT_MS) {
            Err(Error::Sys(Status::RateLimited)) => keel_app::sleep_ms(60),
            r => break r.map_err(|e| why!("mqtt connect: {}", e))?,
        }
    };
    if c.state != mqtt_state::COMPLETED {
        return Err(why!("mqtt connect: state {} reason {}", c.state, c.reason));
    }
    let sub = s.subscribe(&[(topic, 0)]).map_err(|e| why!("subscribe: {}", e))?;
    loop {
        match s.next_event(TIMEOUT_MS, |ev| matches!(ev, Event::SubscribeResult { id, .. } if id == sub)) {
            Ok(Some(true)) => break,
            Ok(Some(false)) => {}
            Ok(None) => return Err(why!("no answer to subscribe")),
            Err(e) => return Err(why!("subscribe: {}", e)),
        }
    }
    // Forget older records: the count below is the flood's alone.
    while notify::pop().is_some() {}

    // Interrupts masked: the SDK's handler cannot empty the ring while the visor writes a
    // record per result and per echo (2 x FLOOD for a ring of notify::RECORDS).
    let flooded = keel_app::interrupt_free(|| -> Result<u32, Why> {
        for i in 0..FLOOD {
            let mut payload = LineBuf::new();
            let _ = write!(payload, "m{}", i);
            s.publish(topic, payload.as_bytes(), 0, false).map_err(|e| why!("publish {}: {}", i, e))?;
        }
        let end = keel_app::monotonic_us() + TIMEOUT_MS as u64 * 1000;
        loop {
            let pending = s.channel().info().map(|i| i.rx_pending).unwrap_or(0);
            if pending >= 2 * FLOOD || keel_app::monotonic_us() > end {
                return Ok(pending);
            }
        }
    })?;
    if flooded < 2 * FLOOD {
        // Say which answer is missing: a publish refused, or an echo.
        let mut refused = None;
        while let Ok(Some(Some(r))) = s.next_event(0, |ev| match ev {
            Event::PublishResult { id, state, .. } if state != mqtt_state::COMPLETED => Some(Some((id, state))),
            _ => Some(None),
        }) {
            refused = refused.or(r);
        }
        if let Some((id, state)) = refused {
            return Err(why!("{} of {} messages; publish #{} answered state {}", flooded, 2 * FLOOD, id, state));
        }
        return Err(why!("only {} of {} messages arrived while masked", flooded, 2 * FLOOD));
    }
    // One more publish: its records come after the OVERRUN record the visor owes the app.
    s.publish(topic, b"last", 0, false).map_err(|e| why!("publish last: {}", e))?;
    let mut seen = [false; FLOOD as usize];
    loop {
        let got = s.next_event(TIMEOUT_MS, |ev| match ev {
            Event::Message { payload, .. } if payload == b"last" => Some(Ok(u32::MAX)),
            Event::Message { payload, .. } => {
                core::str::from_utf8(payload.get(1..).unwrap_or(b"")).ok().and_then(|n| n.parse::<u32>().ok()).map(Ok)
            }
            // Every publish is answered COMPLETED: the flood stays within what the server takes.
            Event::PublishResult { id, state, .. } if state != mqtt_state::COMPLETED => Some(Err((id, state))),
            _ => None,
        });
        match got {
            Ok(Some(Some(Ok(u32::MAX)))) => break,
            Ok(Some(Some(Ok(i)))) if (i as usize) < seen.len() => seen[i as usize] = true,
            Ok(Some(Some(Err((id, state))))) => return Err(why!("publish #{} answered state {}", id, state)),
            Ok(Some(_)) => {}
            Ok(None) => return Err(why!("the echo of the last publish never came")),
            Err(e) => return Err(why!("reading the echoes: {}", e)),
        }
    }
    let echoes = seen.iter().filter(|&&s| s).count();
    if echoes != FLOOD as usize {
        return Err(why!("{} of {} echoes read", echoes, FLOOD));
    }
    let mut lost = 0;
    while let Some(r) = notify::pop() {
        if r.kind == Note::Overrun as u16 {
            lost += r.value;
        }
    }
    // Nothing read the ring while masked (a send that finds room leaves it alone), so every
    // record beyond the ring's own were lost and counted.
    if lost < u64::from(2 * FLOOD - notify::RECORDS) {
        return Err(why!("OVERRUN counted {} records, not at least {}", lost, 2 * FLOOD - notify::RECORDS));
    }
    keel_app::info!("channel-stress: overrun lost={} echoes={}/{} read after the mask", lost, echoes, FLOOD);
    Ok(lost)
}

/// GETs of [`BIG`] bytes, forever (applying an update when one is ready).
fn stream(url: &str) -> ! {
    let mut rx = [0u32; 16 * 1024];
    let mut tx = [0u32; 128];
    let mut n = 0u32;
    loop {
        match full_get(url, &mut rx, &mut tx) {
            Ok(bytes) => {
                n += 1;
                keel_app::info!("channel-stress: stream n={} bytes={} t_us={}", n, bytes, keel_app::monotonic_us());
            }
            Err(why) => {
                // A link lost or a server restarted mid-request: wait for the link, go on.
                keel_app::warn!("channel-stress: stream failed: {}", Text(why.as_bytes()));
                keel_app::sleep_ms(100);
                let _ = net::wait_connected(60_000);
            }
        }
        while let Some(r) = notify::pop() {
            if r.kind == Note::UpdateReady as u16 {
                let s = keel_app::update_apply();
                keel_app::warn!("channel-stress: update_apply: {}", s.name());
            }
        }
    }
}

/// Times [`LATENCY_ROUNDS`] READABLE records; returns the mean and the largest (ns, at µs
/// resolution).
fn latency(url: &str) -> Result<(u64, u64), Why> {
    let mut rx = [0u32; 256];
    let mut tx = [0u32; 128];
    let mut req = [0u8; 256];
    let n = get_request(url, 16, &mut LineBuf::new(), &mut req)?;
    let (mut total, mut max) = (0u64, 0u64);
    for i in 0..LATENCY_ROUNDS {
        let mut ch =
            Channel::open(Kind::Http, "", &mut rx, &mut tx, TAG).map_err(|e| why!("open {}: {}", i, e.name()))?;
        ch.keep_records();
        send_paced(&mut ch, &req[..n]).map_err(|e| why!("send {}: {}", i, e.name()))?;
        let end = keel_app::monotonic_us() + TIMEOUT_MS as u64 * 1000;
        let us = loop {
            if let Some(r) = notify::pop() {
                if r.kind == Note::ChannelReadable as u16 && r.channel_handle() == Some(ch.handle()) {
                    let now = keel_app::monotonic_us() as u32;
                    break now.wrapping_sub(r.posted_at_us().unwrap_or(now)) as u64;
                }
                continue;
            }
            if keel_app::monotonic_us() > end {
                return Err(why!("round {}: no READABLE record", i));
            }
            notify::sleep();
        };
        total += us * 1000;
        max = max.max(us * 1000);
        ch.close().map_err(|e| why!("close {}: {}", i, e.name()))?;
    }
    Ok((total / LATENCY_ROUNDS as u64, max))
}

/// Sleeps forever, applying an update as soon as the visor says one is ready.
fn idle() -> ! {
    loop {
        if keel_app::wait(1_000_000) & keel_app::events::UPDATE_READY != 0 {
            let s = keel_app::update_apply();
            keel_app::warn!("channel-stress: update_apply: {}", s.name());
        }
    }
}
