//! Message buses that plugins' messages go to: one client per kind, each
//! sending a burst in order and waiting for the broker's acknowledgement of
//! every message.
//!
//! - `nats.rs`: JetStream publish with `Nats-Msg-Id` = the message id (the
//!   stream's dedupe window makes a resend invisible), waiting for the PubAck.
//! - `rabbitmq.rs`: AMQP 0.9.1 with publisher confirms, `message-id` set,
//!   persistent delivery.
//! - `redis.rs`: `XADD` to a stream, the id in a field.
//! - `mqtt.rs`: QoS 1, waiting for the PUBACK.
//!
//! Sinks are configured by the operator (`[sinks.NAME]`), never by a plugin.

pub mod mqtt;
pub mod nats;
pub mod rabbitmq;
pub mod redis;

use std::time::Duration;

use serde::Deserialize;

/// One message as a sink sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Stable id, the same on every send attempt: NATS `Nats-Msg-Id`,
    /// AMQP `message-id`, the Redis entry's `id` field, the MQTT 5 user
    /// property `message-id` (a `message-id` header under MQTT 3.1.1, which
    /// has no properties, is not sent).
    pub id: uuid::Uuid,
    /// NATS subject, AMQP routing key, Redis stream key, MQTT topic.
    pub subject: String,
    /// Messages with the same key stay in order (sinks send in order anyway).
    pub key: Option<String>,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, String)>,
}

/// Which broker a sink talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Nats,
    Rabbitmq,
    Redis,
    Mqtt,
}

/// A sink as the operator configures it (`[sinks.NAME]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    pub kind: Kind,
    /// The broker's URL (`nats://host:4222`, `amqp://user:pass@host:5672/%2f`,
    /// `redis://host:6379`, `mqtt://host:1883`). Or give `url_env`.
    pub url: Option<String>,
    /// The environment variable that holds the URL (for secrets).
    pub url_env: Option<String>,
    /// RabbitMQ only: the exchange messages are published to (default: the
    /// default exchange, where the routing key names the queue).
    pub exchange: Option<String>,
    /// Messages per burst (default 500).
    pub burst: Option<u32>,
    /// How long the flusher lets a burst fill after an idle wait (default
    /// none).
    #[serde(default, with = "humantime_serde_opt")]
    pub linger: Option<Duration>,
    /// How many messages may wait in the outbox for this sink before the
    /// plugins publishing to it pause (default 100000).
    pub max_pending: Option<u64>,
    /// How often the flusher reads the outbox without being woken (default
    /// 1s). It is woken whenever messages are recorded: in-process when this
    /// host records them, by a NOTIFY when another host does.
    #[serde(default, with = "humantime_serde_opt")]
    pub poll_interval: Option<Duration>,
}

impl SinkConfig {
    /// The URL, from the config or the environment variable it names.
    pub fn url(&self) -> Result<String, String> {
        match (&self.url, &self.url_env) {
            (Some(url), None) => Ok(url.clone()),
            (None, Some(var)) => std::env::var(var)
                .map_err(|_| format!("the environment variable `{var}` (url_env) is not set")),
            (Some(_), Some(_)) => Err("give `url` or `url_env`, not both".into()),
            (None, None) => Err("give the broker's `url` (or `url_env`)".into()),
        }
    }
}

/// The keys of a `[sinks.NAME]` section, for the reference docs (a test
/// checks that this list and [`SinkConfig`]'s fields agree).
pub const SINK_KEYS: &[(&str, &str)] = &[
    ("kind", "`nats`, `rabbitmq`, `redis` or `mqtt`"),
    (
        "url",
        "the broker: `nats://host:4222`, `amqp://user:pass@host:5672/%2f`, `redis://host:6379`, `mqtt://host:1883`",
    ),
    (
        "url_env",
        "instead of `url`: the environment variable that holds it (for secrets)",
    ),
    (
        "exchange",
        "RabbitMQ only: the exchange to publish to (default: the default exchange, where the subject names the queue)",
    ),
    ("burst", "messages per burst (default 500)"),
    (
        "linger",
        "how long a burst may wait to fill after the flusher was idle, e.g. `5ms` (default `0ms`: sent at once)",
    ),
    (
        "max_pending",
        "waiting messages past which the plugins publishing to this sink pause (default 100000)",
    ),
    (
        "poll_interval",
        "how often the flusher reads the outbox without being woken, e.g. `5s` (default `1s`; it is woken when messages are recorded, by any host)",
    ),
];

/// A connected sink.
#[derive(Debug)]
pub enum Sink {
    Nats(nats::Nats),
    Rabbitmq(rabbitmq::Rabbitmq),
    Redis(redis::Redis),
    Mqtt(mqtt::Mqtt),
}

/// Each message of a burst, in order: `None` if the broker acknowledged it,
/// or the broker's reason for refusing it for good (too large, no such
/// stream): that one is dead-lettered and the others flow.
pub type BurstResult = Vec<Option<String>>;

/// A burst that did not go through: the broker settled its first
/// `settled.len()` messages (as in [`BurstResult`]), and the rest are to be
/// sent again later because of `error`: the connection failed or timed out
/// (then `settled` is empty: what was acknowledged is unknown), or the
/// broker said "not now" for the message at `settled.len()` (a RabbitMQ
/// queue full with `reject-publish`, an MQTT quota, a Redis out of memory).
/// Messages after that one may have gone through and go again: at most one
/// burst twice, and the outbox's order kept for the resend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsent {
    pub settled: BurstResult,
    pub error: String,
}

impl Unsent {
    /// Nothing of the burst is known to be settled.
    pub fn all(error: String) -> Unsent {
        Unsent {
            settled: Vec::new(),
            error,
        }
    }

    /// `results` hold for the messages before `at`; the one at `at` must
    /// wait, because of `error`.
    pub fn from(mut results: BurstResult, at: usize, error: String) -> Unsent {
        results.truncate(at);
        Unsent {
            settled: results,
            error,
        }
    }
}

impl From<String> for Unsent {
    fn from(error: String) -> Unsent {
        Unsent::all(error)
    }
}

impl std::fmt::Display for Unsent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.settled.is_empty() {
            f.write_str(&self.error)
        } else {
            write!(
                f,
                "{} (after the broker settled the first {} messages)",
                self.error,
                self.settled.len()
            )
        }
    }
}

impl Sink {
    /// Connect to the sink's broker, giving up after `timeout`.
    pub async fn connect(config: &SinkConfig, timeout: Duration) -> Result<Sink, String> {
        let url = config.url()?;
        let connecting = async {
            Ok::<Sink, String>(match config.kind {
                Kind::Nats => Sink::Nats(nats::Nats::connect(&url).await?),
                Kind::Rabbitmq => Sink::Rabbitmq(
                    rabbitmq::Rabbitmq::connect(&url, config.exchange.as_deref()).await?,
                ),
                Kind::Redis => Sink::Redis(redis::Redis::connect(&url).await?),
                Kind::Mqtt => Sink::Mqtt(mqtt::Mqtt::connect(&url).await?),
            })
        };
        tokio::time::timeout(timeout, connecting)
            .await
            .map_err(|_| format!("no answer from the broker within {timeout:?}"))?
    }

    /// Send `burst` in order and wait for the broker's acknowledgements (at
    /// most `timeout` for the whole burst). `Err`: see [`Unsent`]; the caller
    /// settles its prefix, connects again if the connection failed, and sends
    /// the rest again later (at least once: NATS drops the repeats by id; the
    /// other kinds may deliver up to one burst twice).
    pub async fn send(
        &mut self,
        burst: &[Message],
        timeout: Duration,
    ) -> Result<BurstResult, Unsent> {
        let sending = async {
            match self {
                Sink::Nats(s) => s.send(burst).await.map_err(Unsent::all),
                Sink::Rabbitmq(s) => s.send(burst).await,
                Sink::Redis(s) => s.send(burst).await,
                Sink::Mqtt(s) => s.send(burst).await,
            }
        };
        let result = tokio::time::timeout(timeout, sending).await.map_err(|_| {
            Unsent::all(format!(
                "the broker did not acknowledge the burst within {timeout:?}"
            ))
        })??;
        debug_assert_eq!(result.len(), burst.len());
        Ok(result)
    }
}

/// `Option<Duration>` written as "5ms", "1s".
mod humantime_serde_opt {
    use std::time::Duration;

    use serde::Deserialize;

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text)
            .map(Some)
            .map_err(|e| serde::de::Error::custom(format!("`{text}` is not a duration ({e})")))
    }
}
