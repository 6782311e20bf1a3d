//! The rabbitmq and mqtt sinks against the real brokers.
//!
//! Each test makes its own queues, exchanges and topics (named with a fresh
//! uuid) and removes them. The brokers come from `PGEVENTS_TEST_RABBITMQ_URL`
//! and `PGEVENTS_TEST_MQTT_URL`; a broker that cannot be reached fails the
//! test, saying how to start it.
//!
//! "Every message arrived" is checked without waiting for silence: after the
//! burst the test sends a marker message, and the receiver reads until the
//! marker, since both brokers keep one sender's messages in order.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::{
    BasicConsumeOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use pgevents_host::sinks::{BurstResult, Message, Sink, SinkConfig};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::proxy::Proxy;
use crate::support::PATIENCE;

/// A burst big enough to pipeline and to wrap MQTT packet ids.
const BURST: usize = 200;

/// A lost connection must show this soon: well under RabbitMQ's 60 s
/// heartbeat and MQTT's 30 s keep-alive, so it is noticed, not timed out.
const PROMPTLY: Duration = Duration::from_secs(15);

pub(crate) fn rabbitmq_url() -> String {
    std::env::var("PGEVENTS_TEST_RABBITMQ_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

pub(crate) fn mqtt_url() -> String {
    std::env::var("PGEVENTS_TEST_MQTT_URL").unwrap_or_else(|_| "mqtt://127.0.0.1:1883".to_owned())
}

const START_RABBITMQ: &str = "start RabbitMQ (`sudo service rabbitmq-server start`, or `docker run -d -p 5672:5672 rabbitmq:3`) or point PGEVENTS_TEST_RABBITMQ_URL at one";
const START_MOSQUITTO: &str = "start Mosquitto (`sudo service mosquitto start`, or `docker run -d -p 1883:1883 eclipse-mosquitto:2 mosquitto -c /mosquitto-no-auth.conf`) or point PGEVENTS_TEST_MQTT_URL at an MQTT 5 broker";

/// `host:port` of a broker URL (`scheme://[user:password@]host:port[/path]`).
pub(crate) fn address(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
    authority
        .rsplit_once('@')
        .map_or(authority, |(_, address)| address)
}

/// `url` with its `host:port` replaced by `address`.
fn through(url: &str, address_now: &str) -> String {
    url.replacen(address(url), address_now, 1)
}

fn unique(what: &str) -> String {
    format!("pgevents-test-{what}-{}", Uuid::new_v4().simple())
}

/// `count` messages to `subject`, each with headers and a key.
fn burst(subject: &str, tag: &str, count: usize) -> Vec<Message> {
    (0..count)
        .map(|n| Message {
            id: Uuid::new_v4(),
            subject: subject.to_owned(),
            key: Some(format!("key-{}", n % 7)),
            payload: format!("{tag} #{n}").into_bytes(),
            headers: vec![("burst".into(), tag.into()), ("seq".into(), n.to_string())],
        })
        .collect()
}

/// The message a receiver reads up to.
fn marker(subject: &str) -> Message {
    Message {
        id: Uuid::new_v4(),
        subject: subject.to_owned(),
        key: None,
        payload: b"marker".to_vec(),
        headers: vec![],
    }
}

/// The headers a message should arrive with (sorted: AMQP tables are maps).
fn expected_headers(message: &Message) -> Vec<(String, String)> {
    let mut headers = message.headers.clone();
    headers.extend(
        message
            .key
            .iter()
            .map(|k| ("pgevents-key".to_owned(), k.clone())),
    );
    headers.sort();
    headers
}

/// A message as a test consumer received it.
#[derive(Debug)]
pub(crate) struct Got {
    pub(crate) id: Option<Uuid>,
    pub(crate) subject: String,
    pub(crate) payload: Vec<u8>,
    pub(crate) headers: Vec<(String, String)>,
    /// AMQP only.
    delivery_mode: Option<u8>,
}

impl Got {
    pub(crate) fn from_amqp(delivery: lapin::message::Delivery) -> Got {
        let properties = &delivery.properties;
        let id = properties.message_id().as_ref();
        let id = id.and_then(|id| Uuid::parse_str(id.as_str()).ok());
        let mut headers: Vec<(String, String)> = properties
            .headers()
            .iter()
            .flat_map(|table| table.inner())
            .map(|(name, value)| {
                let value = match value {
                    AMQPValue::LongString(text) => text.to_string(),
                    other => format!("{other:?}"),
                };
                (name.to_string(), value)
            })
            .collect();
        headers.sort();
        Got {
            id,
            subject: delivery.routing_key.to_string(),
            delivery_mode: *properties.delivery_mode(),
            payload: delivery.data,
            headers,
        }
    }
}

/// What a receiver read: the messages before the marker, and whether the
/// marker came within [`PATIENCE`].
#[derive(Debug)]
struct Received {
    messages: Vec<Got>,
    marker_seen: bool,
}

/// `received` holds `sent`, once each and in order, with id, subject,
/// payload and headers.
fn assert_in_order(sent: &[Message], received: &Received) {
    assert!(
        received.marker_seen,
        "the marker never arrived: {received:?}"
    );
    let got = &received.messages;
    assert_eq!(got.len(), sent.len(), "every message once, nothing else");
    for (n, (sent, got)) in sent.iter().zip(got).enumerate() {
        assert_eq!(
            got.id,
            Some(sent.id),
            "message {n} out of order or without its id"
        );
        assert_eq!(got.subject, sent.subject, "message {n}");
        assert_eq!(got.payload, sent.payload, "message {n}");
        assert_eq!(got.headers, expected_headers(sent), "message {n}'s headers");
    }
}

/// Every message of `bursts` arrived at least once, and nothing else; returns
/// how many arrived twice, after checking they are from `resent` only.
fn assert_at_least_once(bursts: &[&[Message]], resent: &[Message], received: &Received) -> usize {
    assert!(
        received.marker_seen,
        "the marker never arrived: {received:?}"
    );
    let mut seen: HashMap<Uuid, usize> = HashMap::new();
    for got in &received.messages {
        *seen
            .entry(got.id.expect("every message has its id"))
            .or_default() += 1;
    }
    let sent: Vec<&Message> = bursts.iter().flat_map(|b| b.iter()).collect();
    for message in &sent {
        assert!(seen.contains_key(&message.id), "{message:?} never arrived");
    }
    assert_eq!(seen.len(), sent.len(), "only the messages sent arrived");
    let twice: Vec<Uuid> = seen
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(id, _)| *id)
        .collect();
    assert!(
        twice.iter().all(|id| resent.iter().any(|m| m.id == *id)),
        "only the burst that was resent may arrive twice"
    );
    assert!(seen.values().all(|n| *n <= 2), "none more than twice");
    twice.len()
}

fn assert_all_accepted(results: &BurstResult) {
    let refused: Vec<_> = results
        .iter()
        .enumerate()
        .filter(|(_, r)| r.is_some())
        .collect();
    assert!(refused.is_empty(), "refused: {refused:?}");
}

fn config(toml: &str) -> SinkConfig {
    toml::from_str(toml).expect("a sink config")
}

async fn connect(config: &SinkConfig, hint: &str) -> Sink {
    Sink::connect(config, PATIENCE).await.unwrap_or_else(|e| {
        panic!(
            "the sink could not connect to {:?} ({e}): {hint}",
            config.url
        )
    })
}

async fn send(sink: &mut Sink, burst: &[Message]) -> BurstResult {
    sink.send(burst, PATIENCE)
        .await
        .unwrap_or_else(|e| panic!("sending a burst of {} failed: {e}", burst.len()))
}

/// Send `burst` through a sink whose connection was just cut: the error must
/// come, and promptly.
async fn send_after_cut(sink: &mut Sink, burst: &[Message]) {
    let started = Instant::now();
    let outcome = sink.send(burst, PATIENCE).await;
    let took = started.elapsed();
    println!("after the cut, send returned {outcome:?} in {took:?}");
    assert!(
        outcome.is_err(),
        "a send over a cut connection must fail, not succeed"
    );
    assert!(took < PROMPTLY, "the cut took {took:?} to show");
}

// ---- RabbitMQ -------------------------------------------------------------

fn rabbitmq_sink(url: &str, exchange: Option<&str>) -> SinkConfig {
    let exchange = exchange
        .map(|x| format!("exchange = {x:?}"))
        .unwrap_or_default();
    config(&format!("kind = \"rabbitmq\"\nurl = {url:?}\n{exchange}"))
}

/// The test's own connection to RabbitMQ, for topology and consuming.
pub(crate) async fn rabbitmq() -> (Connection, Channel) {
    let url = rabbitmq_url();
    let connecting = Connection::connect(&url, ConnectionProperties::default());
    let connection = match tokio::time::timeout(PATIENCE, connecting).await {
        Ok(Ok(connection)) => connection,
        Ok(Err(e)) => panic!("RabbitMQ is not reachable at {url} ({e}): {START_RABBITMQ}"),
        Err(_) => panic!("RabbitMQ at {url} did not answer within {PATIENCE:?}: {START_RABBITMQ}"),
    };
    let channel = connection.create_channel().await.expect("a channel");
    (connection, channel)
}

/// A queue of the test's, consumed from as soon as it is declared. Exclusive,
/// so the broker removes it if the test dies before [`Queue::remove`].
pub(crate) struct Queue {
    pub(crate) name: String,
    channel: Channel,
    consumer: lapin::Consumer,
}

impl Queue {
    pub(crate) async fn declare(channel: &Channel, arguments: FieldTable) -> Queue {
        let name = unique("queue");
        let exclusive = QueueDeclareOptions {
            exclusive: true,
            ..QueueDeclareOptions::default()
        };
        channel
            .queue_declare(name.as_str().into(), exclusive, arguments)
            .await
            .expect("declare a queue");
        let no_ack = BasicConsumeOptions {
            no_ack: true,
            ..BasicConsumeOptions::default()
        };
        let consumer = channel
            .basic_consume(
                name.as_str().into(),
                "".into(),
                no_ack,
                FieldTable::default(),
            )
            .await
            .expect("consume the queue");
        Queue {
            name,
            channel: channel.clone(),
            consumer,
        }
    }

    async fn bind(&self, exchange: &str, routing_key: &str) {
        self.channel
            .queue_bind(
                self.name.as_str().into(),
                exchange.into(),
                routing_key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("bind the queue");
    }

    /// Every message that arrives within `within` of the last one, up to `n`.
    pub(crate) async fn receive(&mut self, n: usize, within: Duration) -> Vec<Got> {
        let mut got = Vec::new();
        while got.len() < n {
            let Ok(Some(Ok(delivery))) = tokio::time::timeout(within, self.consumer.next()).await
            else {
                break;
            };
            got.push(Got::from_amqp(delivery));
        }
        got
    }

    async fn receive_until(&mut self, marker: &Message) -> Received {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        let mut messages = Vec::new();
        loop {
            let delivery = match tokio::time::timeout_at(deadline, self.consumer.next()).await {
                Ok(Some(Ok(delivery))) => delivery,
                _ => {
                    return Received {
                        messages,
                        marker_seen: false,
                    };
                }
            };
            let properties = &delivery.properties;
            let id = properties.message_id().as_ref();
            let id = id.and_then(|id| Uuid::parse_str(id.as_str()).ok());
            if id == Some(marker.id) {
                return Received {
                    messages,
                    marker_seen: true,
                };
            }
            let mut headers: Vec<(String, String)> = properties
                .headers()
                .iter()
                .flat_map(|table| table.inner())
                .map(|(name, value)| {
                    let value = match value {
                        AMQPValue::LongString(text) => text.to_string(),
                        other => format!("{other:?}"),
                    };
                    (name.to_string(), value)
                })
                .collect();
            headers.sort();
            messages.push(Got {
                id,
                subject: delivery.routing_key.to_string(),
                payload: delivery.data,
                headers,
                delivery_mode: *properties.delivery_mode(),
            });
        }
    }

    pub(crate) async fn remove(self) {
        let removing = self
            .channel
            .queue_delete(self.name.as_str().into(), QueueDeleteOptions::default());
        removing.await.expect("delete the queue");
    }
}

async fn declare_exchange(channel: &Channel) -> String {
    let name = unique("exchange");
    // Auto-delete: gone with its last binding if the test dies before deleting it.
    let options = ExchangeDeclareOptions {
        auto_delete: true,
        ..ExchangeDeclareOptions::default()
    };
    channel
        .exchange_declare(
            name.as_str().into(),
            ExchangeKind::Direct,
            options,
            FieldTable::default(),
        )
        .await
        .expect("declare an exchange");
    name
}

async fn delete_exchange(channel: &Channel, name: &str) {
    channel
        .exchange_delete(name.into(), ExchangeDeleteOptions::default())
        .await
        .expect("delete the exchange");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_burst_arrives_once_in_order_persistent_with_id_and_headers() {
    let (connection, channel) = rabbitmq().await;
    let mut queue = Queue::declare(&channel, FieldTable::default()).await;
    let mut sink = connect(&rabbitmq_sink(&rabbitmq_url(), None), START_RABBITMQ).await;

    // The default exchange routes a message to the queue its routing key names.
    let sent = burst(&queue.name, "only", BURST);
    let results = send(&mut sink, &sent).await;
    let end = marker(&queue.name);
    let marker_results = send(&mut sink, std::slice::from_ref(&end)).await;
    let received = queue.receive_until(&end).await;
    queue.remove().await;
    connection.close(200, "OK".into()).await.expect("close");

    assert_all_accepted(&results);
    assert_all_accepted(&marker_results);
    assert_in_order(&sent, &received);
    for got in &received.messages {
        assert_eq!(got.delivery_mode, Some(2), "persistent: {got:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_cut_connection_fails_the_send_and_a_resend_delivers_at_least_once() {
    let (connection, channel) = rabbitmq().await;
    let mut queue = Queue::declare(&channel, FieldTable::default()).await;
    let url = rabbitmq_url();
    let proxy = Proxy::start(address(&url)).await;
    let proxied = rabbitmq_sink(&through(&url, &proxy.addr()), None);
    let mut sink = connect(&proxied, START_RABBITMQ).await;

    let before = burst(&queue.name, "before", BURST);
    assert_all_accepted(&send(&mut sink, &before).await);
    proxy.cut();
    let cut = burst(&queue.name, "cut", BURST);
    send_after_cut(&mut sink, &cut).await;
    proxy.restore();

    // What the flusher does: connect again and send the whole burst again.
    let mut sink = connect(&proxied, START_RABBITMQ).await;
    assert_eq!(proxy.connections(), 2, "one connection, then one reconnect");
    assert_all_accepted(&send(&mut sink, &cut).await);
    let after = burst(&queue.name, "after", BURST);
    assert_all_accepted(&send(&mut sink, &after).await);
    let end = marker(&queue.name);
    assert_all_accepted(&send(&mut sink, std::slice::from_ref(&end)).await);
    let received = queue.receive_until(&end).await;
    queue.remove().await;
    connection.close(200, "OK".into()).await.expect("close");

    let twice = assert_at_least_once(&[&before, &cut, &after], &cut, &received);
    println!("rabbitmq: {twice} of the {BURST} resent messages arrived twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_refused_messages_are_reported_at_their_index_and_a_full_queue_means_later() {
    let (connection, channel) = rabbitmq().await;
    let exchange = declare_exchange(&channel).await;
    let mut routed = Queue::declare(&channel, FieldTable::default()).await;
    routed.bind(&exchange, "routed").await;
    // A queue that takes nothing: RabbitMQ nacks what is routed to it, which
    // means "not now" (a full queue drains), not "never".
    let mut full_arguments = FieldTable::default();
    full_arguments.insert("x-max-length".into(), AMQPValue::LongInt(0));
    full_arguments.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    let full = Queue::declare(&channel, full_arguments).await;
    full.bind(&exchange, "full").await;
    let mut sink = connect(
        &rabbitmq_sink(&rabbitmq_url(), Some(&exchange)),
        START_RABBITMQ,
    )
    .await;

    let mut mixed = burst("routed", "mixed", 6);
    mixed[1].subject = "nowhere".into();
    mixed[5].subject = "full".into();
    let unsent = sink
        .send(&mixed, PATIENCE)
        .await
        .expect_err("a nacked message stops the burst there");
    let results = unsent.settled.clone();
    let end = marker("routed");
    assert_all_accepted(&send(&mut sink, std::slice::from_ref(&end)).await);
    let received = routed.receive_until(&end).await;
    // Once the queue takes messages again, the rest of the burst goes.
    full.remove().await;
    let mut drained = Queue::declare(&channel, FieldTable::default()).await;
    drained.bind(&exchange, "full").await;
    assert_all_accepted(&send(&mut sink, &mixed[5..]).await);
    let got_later = drained.receive(1, PATIENCE).await;

    // An exchange that does not exist: the broker closes the channel at each
    // message; the sink reopens it, and keeps working once the exchange exists.
    let missing = unique("missing-exchange");
    let mut lost = connect(
        &rabbitmq_sink(&rabbitmq_url(), Some(&missing)),
        START_RABBITMQ,
    )
    .await;
    let nowhere = burst("routed", "nowhere", 3);
    let missing_results = send(&mut lost, &nowhere).await;
    let options = ExchangeDeclareOptions {
        auto_delete: true,
        ..ExchangeDeclareOptions::default()
    };
    let declaring = channel.exchange_declare(
        missing.as_str().into(),
        ExchangeKind::Direct,
        options,
        FieldTable::default(),
    );
    declaring.await.expect("declare the missing exchange");
    let mut found = Queue::declare(&channel, FieldTable::default()).await;
    found.bind(&missing, "routed").await;
    let later = burst("routed", "later", 2);
    let later_results = send(&mut lost, &later).await;
    let end_found = marker("routed");
    assert_all_accepted(&send(&mut lost, std::slice::from_ref(&end_found)).await);
    let received_later = found.receive_until(&end_found).await;

    for queue in [routed, drained, found] {
        queue.remove().await;
    }
    delete_exchange(&channel, &exchange).await;
    delete_exchange(&channel, &missing).await;
    connection.close(200, "OK".into()).await.expect("close");

    println!("mixed burst: {unsent:#?}");
    assert_eq!(results.len(), 5, "settled up to the nacked message");
    let refused: Vec<usize> = (0..results.len())
        .filter(|&i| results[i].is_some())
        .collect();
    assert_eq!(refused, [1], "only the unroutable message is refused");
    let unroutable = results[1].as_deref().unwrap_or_default();
    for part in [
        "returned",
        "312",
        "NO_ROUTE",
        exchange.as_str(),
        "`nowhere`",
    ] {
        assert!(unroutable.contains(part), "`{part}` in {unroutable:?}");
    }
    let nacked = &unsent.error;
    for part in ["basic.nack", "now", exchange.as_str(), "`full`"] {
        assert!(nacked.contains(part), "`{part}` in {nacked:?}");
    }
    let flowed: Vec<Message> = [0, 2, 3, 4].map(|i| mixed[i].clone()).into();
    assert_in_order(&flowed, &received);
    let later_ids: Vec<Option<Uuid>> = got_later.iter().map(|g| g.id).collect();
    assert_eq!(later_ids, [Some(mixed[5].id)], "the nacked message, later");

    println!("missing exchange: {missing_results:#?}");
    for (n, result) in missing_results.iter().enumerate() {
        let reason = result
            .as_deref()
            .unwrap_or_else(|| panic!("message {n} was accepted"));
        for part in [
            "404",
            "NOT_FOUND",
            "no exchange",
            missing.as_str(),
            "closed the channel",
        ] {
            assert!(reason.contains(part), "`{part}` in {reason:?}");
        }
    }
    assert_all_accepted(&later_results);
    assert_in_order(&later, &received_later);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_a_message_that_closes_the_channel_mid_burst_is_refused_and_the_rest_flow() {
    let (connection, channel) = rabbitmq().await;
    let mut queue = Queue::declare(&channel, FieldTable::default()).await;
    let mut sink = connect(&rabbitmq_sink(&rabbitmq_url(), None), START_RABBITMQ).await;

    // RabbitMQ reads a `CC` header as more routing keys and closes the
    // channel (406) when it is not an array: with messages before and after
    // it in flight.
    let culprit = 120;
    let mut sent = burst(&queue.name, "cc", BURST);
    sent[culprit]
        .headers
        .push(("CC".into(), "not-an-array".into()));
    let results = send(&mut sink, &sent).await;
    let end = marker(&queue.name);
    assert_all_accepted(&send(&mut sink, std::slice::from_ref(&end)).await);
    let received = queue.receive_until(&end).await;
    queue.remove().await;
    connection.close(200, "OK".into()).await.expect("close");

    let refused: Vec<usize> = (0..sent.len()).filter(|&i| results[i].is_some()).collect();
    assert_eq!(refused, [culprit], "{results:?}");
    let reason = results[culprit].as_deref().unwrap_or_default();
    for part in ["406", "PRECONDITION_FAILED", "CC", "closed the channel"] {
        assert!(reason.contains(part), "`{part}` in {reason:?}");
    }
    // Messages between the close and the culprit are sent again, so some
    // may arrive twice; the first arrivals are in order.
    let flowed: Vec<Message> = sent
        .iter()
        .filter(|m| m.id != sent[culprit].id)
        .cloned()
        .collect();
    let twice = assert_at_least_once(&[&flowed], &flowed, &received);
    let mut first_arrivals: Vec<Uuid> = Vec::new();
    for got in &received.messages {
        let id = got.id.expect("an id");
        if !first_arrivals.contains(&id) {
            first_arrivals.push(id);
        }
    }
    let order: Vec<Uuid> = flowed.iter().map(|m| m.id).collect();
    assert_eq!(first_arrivals, order, "first arrivals in order");
    println!("rabbitmq: {twice} messages arrived twice around the channel close");
}

// ---- MQTT -----------------------------------------------------------------

fn mqtt_sink(url: &str) -> SinkConfig {
    config(&format!("kind = \"mqtt\"\nurl = {url:?}"))
}

/// A second MQTT client, subscribed (QoS 1) before it is returned.
pub(crate) struct Subscriber {
    client: AsyncClient,
    publishes: mpsc::UnboundedReceiver<rumqttc::v5::mqttbytes::v5::Publish>,
    task: tokio::task::JoinHandle<()>,
}

impl Subscriber {
    pub(crate) async fn start(topic: &str) -> Subscriber {
        let url = mqtt_url();
        let (host, port) = address(&url).rsplit_once(':').expect("host:port");
        let port = port.parse().expect("a port");
        // 23 characters: the longest client id every broker must accept.
        let id = format!("sub-{}", &Uuid::new_v4().simple().to_string()[..19]);
        let options = MqttOptions::new(id, host, port);
        let (client, mut eventloop) = AsyncClient::new(options, 10);
        client
            .subscribe(topic, QoS::AtLeastOnce)
            .await
            .expect("queue the subscribe");
        let subscribed = async {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::SubAck(_))) => return,
                    Ok(_) => continue,
                    Err(e) => panic!("MQTT broker at {url} not reachable ({e}): {START_MOSQUITTO}"),
                }
            }
        };
        tokio::time::timeout(PATIENCE, subscribed)
            .await
            .unwrap_or_else(|_| {
                panic!("no SUBACK from {url} within {PATIENCE:?}: {START_MOSQUITTO}")
            });
        let (sender, publishes) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            // Ends at the first error: the test must not read a reconnect's replays.
            while let Ok(event) = eventloop.poll().await {
                if let Event::Incoming(Packet::Publish(publish)) = event
                    && sender.send(publish).is_err()
                {
                    return;
                }
            }
        });
        Subscriber {
            client,
            publishes,
            task,
        }
    }

    /// Every message that arrives within `within` of the last one, up to `n`.
    pub(crate) async fn receive(&mut self, n: usize, within: Duration) -> Vec<Got> {
        let mut got = Vec::new();
        while got.len() < n {
            let Ok(Some(publish)) = tokio::time::timeout(within, self.publishes.recv()).await
            else {
                break;
            };
            let properties = publish.properties.clone().unwrap_or_default();
            let mut id = None;
            let mut headers = Vec::new();
            for (name, value) in properties.user_properties {
                if name == "message-id" {
                    id = Uuid::parse_str(&value).ok();
                }
                headers.push((name, value));
            }
            got.push(Got {
                id,
                subject: String::from_utf8_lossy(&publish.topic).into_owned(),
                payload: publish.payload.to_vec(),
                headers,
                delivery_mode: None,
            });
        }
        got
    }

    async fn receive_until(&mut self, marker: &Message) -> Received {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        let mut messages = Vec::new();
        loop {
            let Ok(Some(publish)) = tokio::time::timeout_at(deadline, self.publishes.recv()).await
            else {
                return Received {
                    messages,
                    marker_seen: false,
                };
            };
            let properties = publish.properties.unwrap_or_default();
            let mut id = None;
            let mut headers = Vec::new();
            for (name, value) in properties.user_properties {
                if name == "message-id" {
                    id = Uuid::parse_str(&value).ok();
                } else {
                    headers.push((name, value));
                }
            }
            if id == Some(marker.id) {
                return Received {
                    messages,
                    marker_seen: true,
                };
            }
            headers.sort();
            messages.push(Got {
                id,
                subject: String::from_utf8_lossy(&publish.topic).into_owned(),
                payload: publish.payload.to_vec(),
                headers,
                delivery_mode: None,
            });
        }
    }

    pub(crate) async fn stop(self) {
        self.client
            .disconnect()
            .await
            .expect("queue the disconnect");
        // The broker closes the connection after DISCONNECT, which ends the task.
        tokio::time::timeout(PATIENCE, self.task)
            .await
            .expect("the subscriber stops")
            .expect("the subscriber's task");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_burst_arrives_in_order_with_id_and_headers() {
    let topic = format!("{}/events", unique("topic"));
    let mut subscriber = Subscriber::start(&topic).await;
    let mut sink = connect(&mqtt_sink(&mqtt_url()), START_MOSQUITTO).await;

    let sent = burst(&topic, "only", BURST);
    let results = send(&mut sink, &sent).await;
    let end = marker(&topic);
    let marker_results = send(&mut sink, std::slice::from_ref(&end)).await;
    let received = subscriber.receive_until(&end).await;
    subscriber.stop().await;

    assert_all_accepted(&results);
    assert_all_accepted(&marker_results);
    assert_in_order(&sent, &received);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_cut_connection_fails_the_send_and_a_resend_delivers_at_least_once() {
    let topic = format!("{}/events", unique("topic"));
    let mut subscriber = Subscriber::start(&topic).await;
    let url = mqtt_url();
    let proxy = Proxy::start(address(&url)).await;
    let proxied = mqtt_sink(&through(&url, &proxy.addr()));
    let mut sink = connect(&proxied, START_MOSQUITTO).await;

    let before = burst(&topic, "before", BURST);
    assert_all_accepted(&send(&mut sink, &before).await);
    proxy.cut();
    let cut = burst(&topic, "cut", BURST);
    send_after_cut(&mut sink, &cut).await;
    proxy.restore();

    let mut sink = connect(&proxied, START_MOSQUITTO).await;
    assert_eq!(proxy.connections(), 2, "one connection, then one reconnect");
    assert_all_accepted(&send(&mut sink, &cut).await);
    let after = burst(&topic, "after", BURST);
    assert_all_accepted(&send(&mut sink, &after).await);
    let end = marker(&topic);
    assert_all_accepted(&send(&mut sink, std::slice::from_ref(&end)).await);
    let received = subscriber.receive_until(&end).await;
    subscriber.stop().await;

    let twice = assert_at_least_once(&[&before, &cut, &after], &cut, &received);
    println!("mqtt: {twice} of the {BURST} resent messages arrived twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_refused_messages_are_reported_at_their_index_and_the_rest_flow() {
    let topic = format!("{}/events", unique("topic"));
    let mut subscriber = Subscriber::start(&topic).await;
    let mut sink = connect(&mqtt_sink(&mqtt_url()), START_MOSQUITTO).await;

    let mut mixed = burst(&topic, "mixed", 5);
    // Mosquitto lets no client publish under `$SYS`: a PUBACK with 0x87.
    mixed[1].subject = format!("$SYS/{}", unique("denied"));
    // Not a topic one can publish to: refused before it is sent.
    mixed[3].subject = format!("{topic}/+");
    let results = send(&mut sink, &mixed).await;
    let end = marker(&topic);
    assert_all_accepted(&send(&mut sink, std::slice::from_ref(&end)).await);
    let received = subscriber.receive_until(&end).await;
    subscriber.stop().await;

    println!("mixed burst: {results:#?}");
    let refused: Vec<usize> = (0..mixed.len()).filter(|&i| results[i].is_some()).collect();
    assert_eq!(refused, [1, 3]);
    let denied = results[1].as_deref().unwrap_or_default();
    for part in ["refused", "0x87", "not authorized", "$SYS/"] {
        assert!(denied.contains(part), "`{part}` in {denied:?}");
    }
    let wildcard = results[3].as_deref().unwrap_or_default();
    assert!(wildcard.contains("wildcard"), "{wildcard:?}");
    let flowed: Vec<Message> = [0, 2, 4].map(|i| mixed[i].clone()).into();
    assert_in_order(&flowed, &received);
}
