//! mqtt-telemetry: telemetry and commands over a managed MQTT session.
//!
//! Opens the MQTT channel on the server's broker profile [`PROFILE`], connects
//! (`clean_start = false`, keepalive 30 s) and logs `mqtt-telemetry: session_present=<bool>`,
//! subscribes to `command/<device-id>` with QoS 1, then once a second publishes
//! `{"n":<i>,"uptime_ms":<ms>}` to `sensor/<device-id>` with QoS 1. Log lines:
//!
//! * `mqtt-telemetry: published n=<i>` when the broker acknowledged reading `i`
//!   (`mqtt-telemetry: publish n=<i> failed state=<STATE> reason=<r>` otherwise);
//! * `mqtt-telemetry: command <payload>` for every command (acknowledged when QoS 1), then
//!   `mqtt-telemetry: led=on` / `mqtt-telemetry: led=off` for the payloads `led on` / `led off`;
//! * `mqtt-telemetry: channel closed reason=<Reason>` (e.g. `LinkLost`) when the channel closes;
//!   the app then waits for the network, opens a new channel and connects again with
//!   `clean_start = false` (logging `session_present=` again);
//! * `mqtt-telemetry: connect failed ...`, `... open failed ...`: retried after a pause.
//!
//! Every wait has a timeout, so a server that stops answering costs a reconnect, never a hang.
#![no_std]
#![no_main]

use core::fmt::Write;

use keel_app::mqtt::{self, mqtt_state, Event, Session};
use keel_app::{net, Error, LineBuf, Text};

keel_app::entry!(main);

/// The broker profile (configured on the server).
const PROFILE: &str = "telemetry";
/// Tag of the app's network request.
const NET_TAG: u32 = 1;
/// MQTT keepalive (s).
const KEEPALIVE_S: u16 = 30;
/// Between two readings (µs).
const PERIOD_US: u64 = 1_000_000;
/// How long to wait for the connect's answer.
const CONNECT_TIMEOUT_MS: u32 = 15_000;
/// How long a publish or ack waits for room in the transmit buffer.
const SEND_TIMEOUT_MS: u32 = 1_000;
/// Pause before retrying after a failure (ms).
const RETRY_MS: u32 = 2_000;
/// Readings whose result is awaited (id, n); older ones are forgotten.
const IN_FLIGHT: usize = 16;

/// What an event asks of the loop once the session is free again.
enum Todo {
    Nothing,
    Ack(u32),
    /// The server ended the session's broker connection for good: start over.
    Restart,
}

fn main() -> ! {
    keel_app::info!("mqtt-telemetry: started");
    let mut id_buf = LineBuf::new();
    match keel_app::device_id() {
        Ok(id) => {
            let _ = write!(id_buf, "{}", id);
        }
        Err(e) => {
            keel_app::warn!("mqtt-telemetry: no device id ({}); using \"unknown\"", e.name());
            let _ = id_buf.write_str("unknown");
        }
    }
    let device = core::str::from_utf8(id_buf.as_bytes()).unwrap_or("unknown");
    let mut command_topic = LineBuf::new();
    let _ = write!(command_topic, "command/{}", device);
    let mut sensor_topic = LineBuf::new();
    let _ = write!(sensor_topic, "sensor/{}", device);
    let command_topic = core::str::from_utf8(command_topic.as_bytes()).unwrap_or("command/unknown");
    let sensor_topic = core::str::from_utf8(sensor_topic.as_bytes()).unwrap_or("sensor/unknown");

    if let Err(e) = net::request(NET_TAG) {
        keel_app::error!("mqtt-telemetry: net_request failed: {}", e.name());
    }
    let mut rx = [0u32; 512];
    let mut tx = [0u32; 256];
    let mut n: u32 = 0;
    loop {
        wait_for_network();
        let mut s = match Session::open(PROFILE, &mut rx, &mut tx) {
            Ok(s) => s,
            Err(e) => {
                keel_app::error!("mqtt-telemetry: open failed: {}", e);
                keel_app::sleep_ms(RETRY_MS);
                continue;
            }
        };
        s.set_send_timeout(SEND_TIMEOUT_MS);
        run(&mut s, command_topic, sensor_topic, &mut n);
        drop(s);
        keel_app::sleep_ms(RETRY_MS);
    }
}

/// Blocks until the link is up, logging while it is not.
fn wait_for_network() {
    loop {
        match net::wait_connected(30_000) {
            Ok(()) => return,
            Err(e) => {
                let (state, offline) = net::status()
                    .map_or(("unknown", "unknown"), |s| (net::state_name(s.state), net::offline_name(s.offline)));
                keel_app::warn!(
                    "mqtt-telemetry: waiting for the network ({}: state={} offline={})",
                    e.name(),
                    state,
                    offline
                );
                if e == keel_app::Status::Unavailable {
                    // Not provisioned: it never connects; look again now and then anyway.
                    keel_app::sleep_ms(30_000);
                }
            }
        }
    }
}

/// One session: connect, subscribe, publish and handle events until the channel closes or the
/// session fails.
fn run(s: &mut Session<'_>, command_topic: &str, sensor_topic: &str, n: &mut u32) {
    match s.connect_wait(false, KEEPALIVE_S, None, CONNECT_TIMEOUT_MS) {
        Ok(r) if r.state == mqtt_state::COMPLETED => {
            keel_app::info!("mqtt-telemetry: session_present={}", r.session_present)
        }
        Ok(r) => {
            keel_app::error!("mqtt-telemetry: connect failed state={} reason={}", mqtt::state_name(r.state), r.reason);
            return;
        }
        Err(e) => return failed(s, "connect", e),
    }
    match s.subscribe(&[(command_topic, 1)]) {
        Ok(_) => keel_app::info!("mqtt-telemetry: subscribing to {}", command_topic),
        Err(e) => return failed(s, "subscribe", e),
    }
    let mut in_flight = [(0u32, 0u32); IN_FLIGHT];
    let mut slot = 0;
    let mut next_at = keel_app::monotonic_us();
    loop {
        let now = keel_app::monotonic_us();
        if now >= next_at {
            next_at = now + PERIOD_US;
            *n += 1;
            let mut payload = LineBuf::new();
            let _ = write!(payload, "{{\"n\":{},\"uptime_ms\":{}}}", *n, now / 1000);
            // The line's time on the console is when the publish starts (the bench measures from
            // it to the broker).
            keel_app::info!("mqtt-telemetry: publishing n={}", *n);
            match s.publish(sensor_topic, payload.as_bytes(), 1, false) {
                Ok(id) => {
                    in_flight[slot] = (id, *n);
                    slot = (slot + 1) % IN_FLIGHT;
                }
                Err(Error::Sys(keel_app::Status::WouldBlock)) => {
                    keel_app::warn!("mqtt-telemetry: publish n={} skipped: transmit buffer full", *n)
                }
                Err(e) => return failed(s, "publish", e),
            }
            continue;
        }
        let timeout_ms = ((next_at - now) / 1000).max(1) as u32;
        let todo = s.next_event(timeout_ms, |ev| handle(ev, &mut in_flight));
        match todo {
            Ok(None) | Ok(Some(Todo::Nothing)) => {}
            Ok(Some(Todo::Ack(id))) => {
                if let Err(e) = s.ack(id) {
                    return failed(s, "ack", e);
                }
            }
            Ok(Some(Todo::Restart)) => return,
            Err(e @ (Error::Malformed | Error::Unexpected(_))) => {
                keel_app::warn!("mqtt-telemetry: ignored a message: {}", e)
            }
            Err(e) => return failed(s, "receive", e),
        }
    }
}

/// Logs why the session ends.
fn failed(s: &Session<'_>, what: &str, e: Error) {
    match e {
        Error::Closed(r) => keel_app::warn!("mqtt-telemetry: channel closed reason={:?}", r),
        e => {
            keel_app::error!("mqtt-telemetry: {} failed: {}", what, e);
            // A channel that closed meanwhile says so too.
            let r = s.channel().close_reason();
            if r != keel_app::chan::Reason::None {
                keel_app::warn!("mqtt-telemetry: channel closed reason={:?}", r);
            }
        }
    }
}

fn handle(ev: Event<'_>, in_flight: &mut [(u32, u32); IN_FLIGHT]) -> Todo {
    match ev {
        Event::PublishResult { id, state, reason } => {
            let Some(entry) = in_flight.iter_mut().find(|(i, _)| *i == id && id != 0) else {
                return Todo::Nothing;
            };
            let n = entry.1;
            *entry = (0, 0);
            if state == mqtt_state::COMPLETED {
                keel_app::info!("mqtt-telemetry: published n={}", n);
            } else {
                keel_app::warn!(
                    "mqtt-telemetry: publish n={} failed state={} reason={}",
                    n,
                    mqtt::state_name(state),
                    reason
                );
            }
            Todo::Nothing
        }
        Event::Message { id, qos, payload, .. } => {
            keel_app::info!("mqtt-telemetry: command {}", Text(payload));
            match payload {
                b"led on" => keel_app::info!("mqtt-telemetry: led=on"),
                b"led off" => keel_app::info!("mqtt-telemetry: led=off"),
                _ => {}
            }
            if qos == 1 {
                Todo::Ack(id)
            } else {
                Todo::Nothing
            }
        }
        Event::SubscribeResult { state, codes, .. } => {
            if state == mqtt_state::COMPLETED && codes.iter().all(|&c| c < 0x80) {
                keel_app::info!("mqtt-telemetry: subscribed");
            } else {
                keel_app::error!(
                    "mqtt-telemetry: subscribe failed state={} codes={:?}",
                    mqtt::state_name(state),
                    codes
                );
            }
            Todo::Nothing
        }
        Event::Status { state, reason } => {
            keel_app::info!("mqtt-telemetry: broker {} ({})", mqtt::session_state_name(state), Text(reason));
            if state == mqtt::mqtt_session::DOWN {
                Todo::Restart
            } else {
                Todo::Nothing
            }
        }
        Event::Lost { reason, topic, len } => {
            keel_app::warn!("mqtt-telemetry: lost a message on {} ({} bytes, reason {})", Text(topic), len, reason);
            Todo::Nothing
        }
        Event::Error { code, text } => {
            keel_app::error!("mqtt-telemetry: server error {}: {}", code, Text(text));
            Todo::Restart
        }
        Event::ConnectResult(_) | Event::UnsubscribeResult { .. } | Event::DisconnectResult { .. } => Todo::Nothing,
    }
}
