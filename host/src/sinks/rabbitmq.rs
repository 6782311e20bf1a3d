//! The rabbitmq sink (see the module doc of `sinks`): one AMQP 0.9.1
//! connection with one channel in publisher-confirm mode.
//!
//! A burst is published without waiting (pipelined), then every confirm is
//! awaited in order. A `basic.nack` (a queue it routes to is full, with
//! `x-overflow = reject-publish`, or unavailable) means "not now": that
//! message and the rest of the burst go again later. RabbitMQ refuses a
//! message for good in one of two ways:
//! - `basic.return` then `basic.ack`: it is `mandatory` and no queue is bound
//!   for its routing key. lapin hands a returned message to whichever confirm
//!   completes next, not necessarily its own, so returns are matched to the
//!   burst by `message-id`;
//! - closing the channel (404 no such exchange, 406 too large, 403 no write
//!   permission on a topic). Every confirm pending on that channel then fails
//!   with the same error, so the culprit is found by sending the unconfirmed
//!   messages one at a time until one is refused; then the burst goes on
//!   pipelined. That search starts on a new connection: lapin (4.12) writes
//!   its `channel.close-ok` ahead of publishes it still holds for that
//!   channel, and RabbitMQ closes the whole connection when they arrive
//!   (504 "expected 'channel.open'").

use std::fmt;
use std::ops::Range;

use lapin::message::BasicReturnMessage;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ErrorKind};

use super::{BurstResult, Message, Unsent};

/// AMQP `delivery-mode` 2: a durable queue writes the message to disk.
const PERSISTENT: u8 = 2;

/// The header that carries `Message::key`.
const KEY_HEADER: &str = "pgevents-key";

/// A connection to the broker.
pub struct Rabbitmq {
    /// Kept to connect again within a burst (it may hold a password).
    url: String,
    /// Boxed: lapin's handles are large, and `Sink` is as large as its
    /// largest kind.
    link: Box<Link>,
    exchange: ShortString,
}

#[derive(Debug)]
struct Link {
    connection: Connection,
    channel: Channel,
}

impl fmt::Debug for Rabbitmq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rabbitmq")
            .field("url", &redact(&self.url))
            .field("link", &self.link)
            .field("exchange", &self.exchange)
            .finish()
    }
}

/// Why a pipelined publish stopped before every confirm came back.
enum Broken {
    /// The connection failed: what the broker took is unknown.
    Connection(String),
    /// The broker closed the channel (a soft error) at or after message `at`;
    /// messages up to `sent` were on the wire.
    Channel {
        at: usize,
        sent: usize,
        error: lapin::Error,
    },
}

impl Rabbitmq {
    pub async fn connect(url: &str, exchange: Option<&str>) -> Result<Rabbitmq, String> {
        let exchange = exchange.unwrap_or("");
        let exchange = ShortString::try_new(exchange).map_err(|_| {
            format!("the exchange name `{exchange}` is longer than AMQP's 255 bytes")
        })?;
        Ok(Rabbitmq {
            url: url.to_owned(),
            link: Box::new(open(url).await?),
            exchange,
        })
    }

    pub async fn send(&mut self, burst: &[Message]) -> Result<BurstResult, Unsent> {
        let mut results: BurstResult = vec![None; burst.len()];
        let mut next = 0;
        // Messages before this index go one at a time: the culprit of a
        // channel close is among them.
        let mut singly_until = 0;
        while next < burst.len() {
            let end = if next < singly_until {
                next + 1
            } else {
                burst.len()
            };
            let publishing = self.publish(burst, next..end, &mut results);
            let (at, sent, error) = match publishing.await {
                Ok(None) => {
                    next = end;
                    continue;
                }
                Ok(Some(nacked)) => {
                    let error = self.nack_reason(&burst[nacked]);
                    return Err(Unsent::from(results, nacked, error));
                }
                Err(Broken::Connection(text)) => return Err(text.into()),
                Err(Broken::Channel { at, sent, error }) => (at, sent, error),
            };
            if end - next == 1 {
                // It was alone on the channel: it is the culprit.
                self.link.channel = open_channel(&self.link.connection).await?;
                results[at] = Some(self.closed_reason(&burst[at], &error));
                next = at + 1;
                // The next one likely fails the same way (the exchange is
                // the same): try it alone too, and pipeline again after it.
                singly_until = at + 2;
            } else {
                *self.link = open(&self.url).await?;
                // All from `at` on go again: what was noted for them may change.
                results[at..].fill(None);
                next = at;
                singly_until = sent.max(at + 1);
            }
        }
        Ok(results)
    }

    /// Publish `burst[range]` without waiting, then await each confirm in
    /// order, noting refusals in `results`. `Some`: the first message the
    /// broker nacked.
    async fn publish(
        &self,
        burst: &[Message],
        range: Range<usize>,
        results: &mut BurstResult,
    ) -> Result<Option<usize>, Broken> {
        let mandatory = BasicPublishOptions {
            mandatory: true,
            immediate: false,
        };
        let mut confirms = Vec::with_capacity(range.len());
        let mut broken = None;
        for index in range.clone() {
            let message = &burst[index];
            let (routing_key, properties) = match self.prepare(message) {
                Ok(prepared) => prepared,
                Err(reason) => {
                    results[index] = Some(reason);
                    continue;
                }
            };
            let publishing = self.link.channel.basic_publish(
                self.exchange.clone(),
                routing_key,
                mandatory,
                &message.payload,
                properties,
            );
            match publishing.await {
                Ok(confirm) => confirms.push((index, confirm)),
                Err(error) => {
                    broken = Some((index, error));
                    break;
                }
            }
        }
        let sent = broken.as_ref().map_or(range.end, |(index, _)| *index);
        let mut nacked = None;
        // A confirm that fails is earlier than a publish that failed.
        for (index, confirm) in confirms {
            match confirm.await {
                Ok(Confirmation::Ack(returned)) => {
                    self.attribute_return(burst, results, returned);
                }
                Ok(Confirmation::Nack(returned)) => {
                    nacked = nacked.or(Some(index));
                    self.attribute_return(burst, results, returned);
                }
                Ok(Confirmation::NotRequested) => {
                    return Err(Broken::Connection(format!(
                        "the RabbitMQ channel for {} is not in publisher-confirm mode",
                        self.exchange_name()
                    )));
                }
                Err(error) => {
                    broken = Some((index, error));
                    break;
                }
            }
        }
        match broken {
            None => Ok(nacked),
            Some((at, error)) if error.is_amqp_soft_error() => {
                Err(Broken::Channel { at, sent, error })
            }
            Some((at, error)) => Err(Broken::Connection(format!(
                "lost the connection to RabbitMQ while publishing to {} with routing key `{}`: {error}",
                self.exchange_name(),
                burst[at].subject
            ))),
        }
    }

    /// The routing key and properties of `message`, or why AMQP cannot carry it.
    fn prepare(&self, message: &Message) -> Result<(ShortString, BasicProperties), String> {
        let routing_key = ShortString::try_new(message.subject.as_str()).map_err(|_| {
            format!(
                "the routing key `{}` for {} is longer than AMQP's 255 bytes",
                message.subject,
                self.exchange_name()
            )
        })?;
        let mut headers = FieldTable::default();
        let key = message.key.as_ref().map(|key| (KEY_HEADER, key.as_str()));
        let pairs = message
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()));
        for (name, value) in pairs.chain(key) {
            let name = ShortString::try_new(name).map_err(|_| {
                format!(
                    "the header name `{name}` on a message for {} with routing key `{}` is longer than AMQP's 255 bytes",
                    self.exchange_name(),
                    message.subject
                )
            })?;
            headers.insert(name, AMQPValue::LongString(value.into()));
        }
        let properties = BasicProperties::default()
            .with_message_id(message.id.to_string().into())
            .with_delivery_mode(PERSISTENT)
            .with_headers(headers);
        Ok((routing_key, properties))
    }

    /// Put the broker's reason for returning a message at the index of the
    /// message with its id (not that of the confirm lapin attached it to).
    fn attribute_return(
        &self,
        burst: &[Message],
        results: &mut BurstResult,
        returned: Option<BasicReturnMessage>,
    ) {
        let Some(message) = returned else {
            return;
        };
        let id = message.delivery.properties.message_id().as_ref();
        let id = id.and_then(|id| uuid::Uuid::parse_str(id.as_str()).ok());
        let mut same_id = (0..burst.len()).filter(|&i| Some(burst[i].id) == id);
        let Some(index) = same_id.find(|&i| results[i].is_none()) else {
            tracing::warn!(?id, "RabbitMQ returned a message this burst did not send");
            return;
        };
        results[index] = Some(format!(
            "RabbitMQ returned the message: {} routes routing key `{}` to no queue ({} {})",
            self.exchange_name(),
            burst[index].subject,
            message.reply_code,
            message.reply_text
        ));
    }

    fn nack_reason(&self, message: &Message) -> String {
        format!(
            "RabbitMQ cannot take the message to {} with routing key `{}` now (basic.nack): a queue it routes to is full (`x-overflow` = `reject-publish`) or unavailable",
            self.exchange_name(),
            message.subject
        )
    }

    fn closed_reason(&self, message: &Message, error: &lapin::Error) -> String {
        let broker = match error.kind() {
            ErrorKind::ProtocolError(e) => format!("{} ({})", e.get_message(), e.get_id()),
            _ => error.to_string(),
        };
        format!(
            "RabbitMQ refused the message to {} with routing key `{}` and closed the channel: {broker}",
            self.exchange_name(),
            message.subject
        )
    }

    fn exchange_name(&self) -> String {
        match self.exchange.as_str() {
            "" => "the default exchange".to_owned(),
            name => format!("exchange `{name}`"),
        }
    }
}

/// A connection to `url` and a channel on it in publisher-confirm mode.
async fn open(url: &str) -> Result<Link, String> {
    let properties = ConnectionProperties::default().with_connection_name("pgevents-host".into());
    let connection = Connection::connect(url, properties)
        .await
        .map_err(|e| format!("could not connect to RabbitMQ at {}: {e}", redact(url)))?;
    let channel = open_channel(&connection).await?;
    Ok(Link {
        connection,
        channel,
    })
}

/// A channel in publisher-confirm mode.
async fn open_channel(connection: &Connection) -> Result<Channel, String> {
    let channel = connection
        .create_channel()
        .await
        .map_err(|e| format!("could not open a channel to RabbitMQ: {e}"))?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(|e| format!("RabbitMQ did not turn on publisher confirms: {e}"))?;
    Ok(channel)
}

/// `url` without its password, for messages.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rsplit_once('@') {
        Some((userinfo, _)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            let after = &rest[userinfo.len()..];
            format!("{scheme}://{user}:***{after}")
        }
        None => url.to_owned(),
    }
}
