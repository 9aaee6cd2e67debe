//! A simulated app's managed MQTT session: the MQTT channel messages an app's
//! `keel_app::mqtt::Session` sends and reads, over a [`SimChannel`], so that a fleet of
//! simulated devices can drive the server's managed sessions and a real broker.
//!
//! Requests are made one at a time, each waiting for its result; messages from the broker that
//! arrive meanwhile are kept, in order, for [`SimMqtt::next_message`] (a QoS 1 one is
//! acknowledged as soon as it is read, as an app that has stored it would).

use std::collections::VecDeque;
use std::time::Duration;

use keel_abi::chan::Kind;
use keel_channel::msg::{mqtt_state, Msg, Subs};

use crate::channels::{ChannelError, SimChannel};
use crate::SimDevice;

/// A message from the broker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimMessage {
    /// Its topic.
    pub topic: String,
    /// Its payload.
    pub payload: Vec<u8>,
    /// 0 or 1.
    pub qos: u8,
}

/// A managed MQTT session of a simulated app, open until dropped.
pub struct SimMqtt<'a, const N: usize> {
    ch: SimChannel<'a, N>,
    next_id: u32,
    messages: VecDeque<SimMessage>,
}

impl<const N: usize> SimDevice<N> {
    /// The app opens an MQTT channel to the broker profile `profile` (empty: `default`). The
    /// device must be online; connect with [`SimMqtt::connect`].
    pub fn mqtt(&self, profile: &str) -> Result<SimMqtt<'_, N>, ChannelError> {
        Ok(SimMqtt { ch: self.open_channel(Kind::Mqtt, profile)?, next_id: 1, messages: VecDeque::new() })
    }
}

impl<const N: usize> SimMqtt<'_, N> {
    /// Connects the session to its broker; true if the server kept the session from before.
    /// [`ChannelError::Failed`] with the `mqtt_state` of a refusal.
    pub async fn connect(&mut self, clean_start: bool, timeout: Duration) -> Result<bool, ChannelError> {
        let deadline = tokio::time::Instant::now() + timeout;
        self.ch.send(&Msg::MqttConnect { clean_start, keepalive_s: 60, will: None }, timeout).await?;
        self.answer(deadline, |m| match m {
            Msg::MqttConnectResult { state, session_present, .. } => Some(ok(state).map(|()| session_present)),
            _ => None,
        })
        .await
    }

    /// Subscribes to `filter` at `qos`.
    pub async fn subscribe(&mut self, filter: &str, qos: u8, timeout: Duration) -> Result<(), ChannelError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let id = self.id();
        let topics = [(filter.as_bytes(), qos)];
        self.ch.send(&Msg::MqttSubscribe { id, topics: Subs::Items(&topics) }, timeout).await?;
        self.answer(deadline, |m| match m {
            Msg::MqttSubscribeResult { id: i, state, codes } if i == id => {
                Some(ok(state).and_then(|()| match codes.first() {
                    Some(&c) if c < 0x80 => Ok(()),
                    Some(&c) => Err(ChannelError::Failed(c)),
                    None => Err(ChannelError::Malformed),
                }))
            }
            _ => None,
        })
        .await
    }

    /// Publishes `payload` on `topic` and waits for the result (QoS 0: handed to the broker
    /// connection; QoS 1: acknowledged by the broker).
    pub async fn publish(
        &mut self,
        topic: &str,
        payload: &[u8],
        qos: u8,
        timeout: Duration,
    ) -> Result<(), ChannelError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let id = self.id();
        let m = Msg::MqttPublish { id, qos, retain: false, topic: topic.as_bytes(), payload };
        self.ch.send(&m, timeout).await?;
        self.answer(deadline, |m| match m {
            Msg::MqttPublishResult { id: i, state, .. } if i == id => Some(ok(state)),
            _ => None,
        })
        .await
    }

    /// The next message from the broker (a QoS 1 one is acknowledged), waiting up to `timeout`.
    pub async fn next_message(&mut self, timeout: Duration) -> Result<SimMessage, ChannelError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(m) = self.messages.pop_front() {
                return Ok(m);
            }
            self.read_one(deadline).await?;
        }
    }

    fn id(&mut self) -> u32 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        id
    }

    /// Reads the channel until `pick` accepts a message.
    async fn answer<R>(
        &mut self,
        deadline: tokio::time::Instant,
        mut pick: impl FnMut(Msg<'_>) -> Option<Result<R, ChannelError>>,
    ) -> Result<R, ChannelError> {
        loop {
            if let Some(body) = self.read_one(deadline).await? {
                let m = Msg::decode(&body).map_err(|_| ChannelError::Malformed)?;
                if let Some(r) = pick(m) {
                    return r;
                }
            }
        }
    }

    /// Reads one message: a broker message is kept (a QoS 1 one acknowledged), a session
    /// status or lost-message report skipped, an error returned; anything else is handed back.
    async fn read_one(&mut self, deadline: tokio::time::Instant) -> Result<Option<Vec<u8>>, ChannelError> {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let body = self.ch.recv(left).await?;
        match Msg::decode(&body).map_err(|_| ChannelError::Malformed)? {
            Msg::MqttMessage { id, qos, topic, payload, .. } => {
                let topic = String::from_utf8(topic.to_vec()).map_err(|_| ChannelError::Malformed)?;
                let payload = payload.to_vec();
                if qos == 1 {
                    self.ch.send(&Msg::MqttAck { id }, left).await?;
                }
                self.messages.push_back(SimMessage { topic, payload, qos });
                Ok(None)
            }
            Msg::Error { code, .. } => Err(ChannelError::Server(code)),
            Msg::MqttStatus { .. } | Msg::MqttLost { .. } => Ok(None),
            _ => Ok(Some(body)),
        }
    }
}

/// `Ok` for `mqtt_state::COMPLETED`, else the state as [`ChannelError::Failed`].
fn ok(state: u8) -> Result<(), ChannelError> {
    if state == mqtt_state::COMPLETED {
        Ok(())
    } else {
        Err(ChannelError::Failed(state))
    }
}
