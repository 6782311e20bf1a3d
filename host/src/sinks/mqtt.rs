//! The mqtt sink (see the module doc of `sinks`): MQTT 5 (`rumqttc::v5`),
//! QoS 1, the message id and headers as user properties.
//!
//! rumqttc's event loop runs in a task of this sink (`drive`) that forwards
//! what `send` needs: the packet id each publish got and each PUBACK.
//! Publishes leave in the order they were requested, so the n-th
//! `Outgoing::Publish` is the n-th message, and a PUBACK names its packet id.
//! The task ends at the first connection error (polling rumqttc again would
//! reconnect and resend by itself; the flusher does that, with the whole
//! burst) and when the `Mqtt` is dropped.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use bytes::Bytes;
use rumqttc::Outgoing;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Packet, PubAck, PubAckReason, Publish, PublishProperties};
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
use tokio::sync::{mpsc, oneshot};

use super::{BurstResult, Message, Unsent};

/// An idle connection sends a PINGREQ this often; a missing PINGRESP ends it
/// at the next one (so a silent loss shows within 2 x 30 s, sooner if `send`
/// times out).
const KEEP_ALIVE_SECS: u64 = 30;

/// Publishes queued for rumqttc's event loop before `send` waits for room.
const REQUEST_QUEUE: usize = 100;

/// The largest packet MQTT can encode (its "remaining length" limit).
const MAX_PACKET_BYTES: usize = 268_435_455;

/// The longest string (topic, user property) MQTT can encode.
const MAX_STRING_BYTES: usize = u16::MAX as usize;

/// A connection to the broker.
#[derive(Debug)]
pub struct Mqtt {
    client: AsyncClient,
    progress: mpsc::UnboundedReceiver<Result<Progress, String>>,
    /// The broker's limit on a packet, from its CONNACK.
    max_packet_bytes: Option<u32>,
    /// `host:port`, for messages.
    broker: String,
    /// Dropping this ends the task that drives the connection.
    _stop: oneshot::Sender<()>,
    /// Set while a burst waits for PUBACKs, and left set if it fails or is
    /// cancelled: late PUBACKs would be taken for the next burst's.
    interrupted: bool,
}

/// What the event loop did with the publishes `send` requested.
#[derive(Debug)]
/// What a PUBACK says of a message.
enum Refusal {
    None,
    ForGood(String),
    /// Quota exceeded: send it again later.
    NotNow(String),
}

enum Progress {
    /// The next requested publish went out with this packet id.
    Sent(u16),
    Acked(PubAck),
}

impl Mqtt {
    pub async fn connect(url: &str) -> Result<Mqtt, String> {
        let url = BrokerUrl::parse(url)?;
        let broker = format!("{}:{}", url.host, url.port);
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        // 23 characters: the longest client id every broker must accept.
        let client_id = format!("pgevents-{}", &suffix[..14]);
        let mut options = MqttOptions::new(client_id, url.host, url.port);
        options
            .set_keep_alive(Duration::from_secs(KEEP_ALIVE_SECS))
            .set_clean_start(true);
        if let Some((user, password)) = url.credentials {
            options.set_credentials(user, password);
        }
        let (client, mut eventloop) = AsyncClient::new(options, REQUEST_QUEUE);
        // The first poll connects and reads the CONNACK.
        let connack = loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(connack))) => break connack,
                Ok(_) => continue,
                Err(e) => return Err(format!("could not connect to MQTT broker {broker}: {e}")),
            }
        };
        let max_packet_bytes = connack.properties.and_then(|p| p.max_packet_size);
        let (progress_tx, progress) = mpsc::unbounded_channel();
        let (stop, stopped) = oneshot::channel();
        tokio::spawn(drive(eventloop, progress_tx, stopped, broker.clone()));
        Ok(Mqtt {
            client,
            progress,
            max_packet_bytes,
            broker,
            _stop: stop,
            interrupted: false,
        })
    }

    pub async fn send(&mut self, burst: &[Message]) -> Result<BurstResult, Unsent> {
        if self.interrupted {
            return Err(Unsent::all(format!(
                "an earlier burst to MQTT broker {} did not get all its PUBACKs (it failed or was cancelled); connect again",
                self.broker
            )));
        }
        self.interrupted = true;
        let mut results: BurstResult = vec![None; burst.len()];
        // Indexes of the requested publishes that have no packet id yet.
        let mut requested = VecDeque::with_capacity(burst.len());
        for (index, message) in burst.iter().enumerate() {
            let (payload, properties) = match self.prepare(message) {
                Ok(prepared) => prepared,
                Err(reason) => {
                    results[index] = Some(reason);
                    continue;
                }
            };
            let publishing = self.client.publish_with_properties(
                message.subject.as_str(),
                QoS::AtLeastOnce,
                false,
                payload,
                properties,
            );
            if publishing.await.is_err() {
                return Err(self.lost().into());
            }
            requested.push_back(index);
        }
        let mut unacked = requested.len();
        // The first message the broker said "not now" to (quota exceeded).
        let mut later: Option<(usize, String)> = None;
        let mut in_flight = HashMap::with_capacity(unacked);
        while unacked > 0 {
            match self.progress.recv().await {
                Some(Ok(Progress::Sent(pkid))) => {
                    let Some(index) = requested.pop_front() else {
                        return Err(Unsent::all(format!(
                            "rumqttc sent a publish to MQTT broker {} that this burst did not request",
                            self.broker
                        )));
                    };
                    if in_flight.insert(pkid, index).is_some() {
                        return Err(Unsent::all(format!(
                            "rumqttc reused packet id {pkid} toward MQTT broker {} before its PUBACK",
                            self.broker
                        )));
                    }
                }
                Some(Ok(Progress::Acked(ack))) => {
                    let Some(index) = in_flight.remove(&ack.pkid) else {
                        return Err(Unsent::all(format!(
                            "MQTT broker {} acknowledged packet id {}, which this burst is not waiting for",
                            self.broker, ack.pkid
                        )));
                    };
                    unacked -= 1;
                    match self.refusal(&burst[index], &ack)? {
                        Refusal::None => {}
                        Refusal::ForGood(reason) => results[index] = Some(reason),
                        Refusal::NotNow(reason) => {
                            if later.as_ref().is_none_or(|(at, _)| index < *at) {
                                later = Some((index, reason));
                            }
                        }
                    }
                }
                Some(Err(text)) => return Err(text.into()),
                None => return Err(self.lost().into()),
            }
        }
        self.interrupted = false;
        match later {
            Some((at, error)) => Err(Unsent::from(results, at, error)),
            None => Ok(results),
        }
    }

    /// The payload and properties of `message`, or why MQTT cannot carry it.
    fn prepare(&self, message: &Message) -> Result<(Bytes, PublishProperties), String> {
        let topic = &message.subject;
        if topic.is_empty() || topic.contains(['+', '#']) {
            return Err(format!(
                "`{topic}` is not an MQTT topic to publish to (it is empty or has a wildcard, `+` or `#`)"
            ));
        }
        let mut user_properties = vec![("message-id".to_owned(), message.id.to_string())];
        user_properties.extend(message.headers.iter().cloned());
        if let Some(key) = &message.key {
            user_properties.push(("pgevents-key".to_owned(), key.clone()));
        }
        let strings = user_properties.iter().flat_map(|(n, v)| [n, v]);
        for text in std::iter::once(topic).chain(strings) {
            if text.len() > MAX_STRING_BYTES || text.contains('\0') {
                return Err(format!(
                    "a message to MQTT topic `{topic}` has a topic or header longer than 65535 bytes or holding a NUL character, which MQTT cannot carry"
                ));
            }
        }
        let properties = PublishProperties {
            user_properties,
            ..PublishProperties::default()
        };
        let payload = Bytes::copy_from_slice(&message.payload);
        let publish = Publish::new(
            topic,
            QoS::AtLeastOnce,
            payload.clone(),
            Some(properties.clone()),
        );
        // `size` leaves out the packet id, assigned later: 2 bytes.
        let size = publish.size() + 2;
        let limit = self
            .max_packet_bytes
            .map_or(MAX_PACKET_BYTES, |max| MAX_PACKET_BYTES.min(max as usize));
        if size > limit {
            return Err(format!(
                "the message to MQTT topic `{topic}` is a {size}-byte packet; MQTT broker {} takes at most {limit} bytes",
                self.broker
            ));
        }
        Ok((payload, properties))
    }

    /// What the PUBACK says of `message`; `Err` if it shows the session is
    /// confused.
    fn refusal(&self, message: &Message, ack: &PubAck) -> Result<Refusal, String> {
        let reason = match ack.reason {
            PubAckReason::Success | PubAckReason::NoMatchingSubscribers => {
                return Ok(Refusal::None);
            }
            PubAckReason::PacketIdentifierInUse => {
                return Err(format!(
                    "MQTT broker {} says packet id {} is already in use",
                    self.broker, ack.pkid
                ));
            }
            PubAckReason::UnspecifiedError => "0x80 unspecified error",
            PubAckReason::ImplementationSpecificError => "0x83 implementation specific error",
            PubAckReason::NotAuthorized => "0x87 not authorized",
            PubAckReason::TopicNameInvalid => "0x90 topic name invalid",
            PubAckReason::QuotaExceeded => "0x97 quota exceeded",
            PubAckReason::PayloadFormatInvalid => "0x99 payload format invalid",
        };
        let said = ack
            .properties
            .as_ref()
            .and_then(|p| p.reason_string.as_ref());
        let said = said.map(|s| format!(": {s}")).unwrap_or_default();
        let text = format!(
            "MQTT broker {} refused the message to topic `{}` ({reason}{said})",
            self.broker, message.subject
        );
        Ok(match ack.reason {
            PubAckReason::QuotaExceeded => Refusal::NotNow(text),
            _ => Refusal::ForGood(text),
        })
    }

    /// Why the connection ended, as the task reported it.
    fn lost(&mut self) -> String {
        while let Ok(progress) = self.progress.try_recv() {
            if let Err(text) = progress {
                return text;
            }
        }
        format!("the connection to MQTT broker {} has ended", self.broker)
    }
}

/// Poll the event loop, forwarding publish progress, until the connection
/// fails (forwarding the error) or `stop` fires (its sender is dropped).
async fn drive(
    mut eventloop: EventLoop,
    progress: mpsc::UnboundedSender<Result<Progress, String>>,
    mut stop: oneshot::Receiver<()>,
    broker: String,
) {
    loop {
        let event = tokio::select! {
            event = eventloop.poll() => event,
            _ = &mut stop => return,
        };
        let forward = match event {
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => Ok(Progress::Sent(pkid)),
            Ok(Event::Incoming(Packet::PubAck(ack))) => Ok(Progress::Acked(ack)),
            Ok(_) => continue,
            Err(e) => Err(format!("lost the connection to MQTT broker {broker}: {e}")),
        };
        let failed = forward.is_err();
        if progress.send(forward).is_err() || failed {
            return;
        }
    }
}

/// `mqtt://[user[:password]@]host[:port]`, the port 1883 unless given.
#[derive(Debug, PartialEq, Eq)]
struct BrokerUrl {
    /// A name, an IPv4 address, or an IPv6 one in brackets (as rumqttc
    /// joins host and port with `:`).
    host: String,
    port: u16,
    credentials: Option<(String, String)>,
}

impl BrokerUrl {
    fn parse(url: &str) -> Result<BrokerUrl, String> {
        let shape = "give `mqtt://host:port` (or `mqtt://user:password@host:port`)";
        let Some(rest) = url.strip_prefix("mqtt://") else {
            let scheme = url.split_once("://").map_or(url, |(scheme, _)| scheme);
            return Err(format!(
                "the MQTT URL must start with `mqtt://`, not `{scheme}` (TLS is not built in): {shape}"
            ));
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        let (credentials, address) = match authority.rsplit_once('@') {
            Some((userinfo, address)) => {
                let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
                (
                    Some((percent_decode(user)?, percent_decode(password)?)),
                    address,
                )
            }
            None => (None, authority),
        };
        if address.contains(['/', '?', '#']) {
            return Err(format!(
                "the MQTT URL for `{address}` has a path or query, which the sink does not use: {shape}"
            ));
        }
        let (host, port) = match address.rsplit_once(':') {
            Some((host, port)) if !port.contains(']') => {
                let port = port
                    .parse()
                    .map_err(|_| format!("`{port}` in the MQTT URL is not a port: {shape}"))?;
                (host, port)
            }
            _ => (address, 1883),
        };
        if host.is_empty() {
            return Err(format!("the MQTT URL names no host: {shape}"));
        }
        Ok(BrokerUrl {
            host: host.to_owned(),
            port,
            credentials,
        })
    }
}

/// `%XX` escapes in a URL's user or password.
fn percent_decode(text: &str) -> Result<String, String> {
    let bad = || format!("`{text}` in the MQTT URL has a broken `%` escape");
    let mut bytes = Vec::with_capacity(text.len());
    let mut rest = text.as_bytes();
    while let Some((&byte, after)) = rest.split_first() {
        if byte == b'%' {
            let hex = after.get(..2).ok_or_else(bad)?;
            let hex = std::str::from_utf8(hex).map_err(|_| bad())?;
            bytes.push(u8::from_str_radix(hex, 16).map_err(|_| bad())?);
            rest = &after[2..];
        } else {
            bytes.push(byte);
            rest = after;
        }
    }
    String::from_utf8(bytes).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::BrokerUrl;

    fn parsed(url: &str) -> (String, u16, Option<(String, String)>) {
        let url = BrokerUrl::parse(url).expect("a good URL");
        (url.host, url.port, url.credentials)
    }

    #[test]
    fn broker_urls() {
        assert_eq!(
            parsed("mqtt://127.0.0.1:1883"),
            ("127.0.0.1".into(), 1883, None)
        );
        assert_eq!(parsed("mqtt://broker/"), ("broker".into(), 1883, None));
        assert_eq!(parsed("mqtt://[::1]:1884"), ("[::1]".into(), 1884, None));
        assert_eq!(parsed("mqtt://[::1]"), ("[::1]".into(), 1883, None));
        let credentials = Some(("ann".into(), "p@ss:w".into()));
        assert_eq!(
            parsed("mqtt://ann:p%40ss%3Aw@h:1"),
            ("h".into(), 1, credentials)
        );
        for bad in [
            "mqtts://h:8883",
            "h:1883",
            "mqtt://:1883",
            "mqtt://h:x",
            "mqtt://h/t",
            "mqtt://a:%4@h",
        ] {
            assert!(BrokerUrl::parse(bad).is_err(), "{bad} should be refused");
        }
    }
}
