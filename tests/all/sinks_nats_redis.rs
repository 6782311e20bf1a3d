//! The nats and redis sinks against the real brokers.
//!
//! Each test makes a JetStream stream (subjects `t<uuid>.>`) or Redis keys
//! (`t<uuid>:...`) of its own and deletes them when it ends, pass or fail. A
//! broker that is not running fails the test and says how to start it.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer, stream};
use futures_util::StreamExt;
use pgevents_host::sinks::nats::Nats;
use pgevents_host::sinks::redis::Redis;
use pgevents_host::sinks::{BurstResult, Message};
use redis::Value;
use redis::aio::MultiplexedConnection;
use redis::streams::{StreamId, StreamRangeReply};
use uuid::Uuid;

use crate::proxy::Proxy;
use crate::support::PATIENCE;

/// A send cut off from its broker fails within this long: "a few seconds"
/// (the sinks wait 5 s at most), with room for a loaded machine.
const PROMPT: Duration = Duration::from_secs(15);
/// How often a test looks again at what the broker has stored.
const POLL: Duration = Duration::from_millis(2);

fn nats_url() -> String {
    std::env::var("PGEVENTS_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

fn redis_url() -> String {
    std::env::var("PGEVENTS_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// `host:port` of a broker URL.
fn host_port(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, rest)| rest);
    rest.split('/').next().unwrap_or(rest)
}

/// `url` pointing at `addr` (the proxy) instead, credentials and path kept.
fn via(url: &str, addr: &str) -> String {
    url.replacen(host_port(url), addr, 1)
}

/// `n` messages to `subject` with payloads `"{tag} {i}"` padded to at least
/// `size` bytes, a key on three in four, and headers.
fn burst(subject: &str, tag: &str, n: usize, size: usize) -> Vec<Message> {
    (0..n)
        .map(|i| {
            let mut payload = format!("{tag} {i}").into_bytes();
            payload.resize(payload.len().max(size), b'.');
            Message {
                id: Uuid::new_v4(),
                subject: subject.to_owned(),
                key: (i % 4 != 0).then(|| format!("customer-{}", i % 7)),
                payload,
                headers: vec![
                    ("Seq".to_owned(), i.to_string()),
                    ("Tag".to_owned(), tag.to_owned()),
                ],
            }
        })
        .collect()
}

fn assert_all_acknowledged(sent: &[Message], result: &BurstResult) {
    assert_eq!(result.len(), sent.len(), "one result per message");
    for (i, outcome) in result.iter().enumerate() {
        assert_eq!(
            outcome, &None,
            "message {i} (to `{}`) was refused",
            sent[i].subject
        );
    }
}

/// Send `burst` and fail the test unless it ends (Ok or Err) within `PATIENCE`.
async fn send_nats(nats: &mut Nats, burst: &[Message]) -> Result<BurstResult, String> {
    tokio::time::timeout(PATIENCE, nats.send(burst))
        .await
        .unwrap_or_else(|_| panic!("a NATS send of {} messages hung", burst.len()))
}

async fn send_redis(redis: &mut Redis, burst: &[Message]) -> Result<BurstResult, String> {
    tokio::time::timeout(PATIENCE, redis.send(burst))
        .await
        .unwrap_or_else(|_| panic!("a Redis send of {} messages hung", burst.len()))
        .map_err(|unsent| unsent.to_string())
}

// ---- NATS ----

const START_NATS: &str = "start it (`nats-server -js`) or set PGEVENTS_TEST_NATS_URL";

async fn jetstream_context(url: &str) -> jetstream::Context {
    let client = async_nats::connect(url).await.unwrap_or_else(|e| {
        panic!(
            "NATS with JetStream is not running on {} ({e}): {START_NATS}",
            host_port(url)
        )
    });
    jetstream::new(client)
}

/// A JetStream stream of the test's own, deleted when dropped.
struct TestStream {
    js: jetstream::Context,
    stream: stream::Stream,
    name: String,
    /// The stream takes subjects `{prefix}.>`.
    prefix: String,
}

impl TestStream {
    /// In memory, with a 2 min dedupe window.
    async fn create() -> TestStream {
        TestStream::create_with(stream::Config::default()).await
    }

    /// `config` with the test's name and subjects, in memory, with a 2 min
    /// dedupe window.
    async fn create_with(config: stream::Config) -> TestStream {
        let js = jetstream_context(&nats_url()).await;
        let prefix = format!("t{}", Uuid::new_v4().simple());
        let name = prefix.clone();
        let stream = js
            .create_stream(stream::Config {
                name: name.clone(),
                subjects: vec![format!("{prefix}.>")],
                storage: stream::StorageType::Memory,
                duplicate_window: Duration::from_secs(120),
                ..config
            })
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "NATS on {} cannot make a JetStream stream ({e}): {START_NATS}",
                    host_port(&nats_url())
                )
            });
        TestStream {
            js,
            stream,
            name,
            prefix,
        }
    }

    fn subject(&self, tail: &str) -> String {
        format!("{}.{tail}", self.prefix)
    }

    async fn stored(&self) -> u64 {
        self.stream
            .get_info()
            .await
            .expect("stream info")
            .state
            .messages
    }

    /// Poll until the stream holds more than `n` messages.
    async fn wait_stored_more_than(&self, n: u64) {
        let deadline = Instant::now() + PATIENCE;
        while self.stored().await <= n {
            assert!(
                Instant::now() < deadline,
                "the stream never got past {n} messages"
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// A consumer that reads the stream from its start.
    async fn reader(&self) -> Reader {
        let consumer = self
            .stream
            .create_consumer(consumer::pull::Config {
                ack_policy: consumer::AckPolicy::None,
                ..Default::default()
            })
            .await
            .expect("create a consumer");
        let messages = consumer.messages().await.expect("consume");
        Reader { consumer, messages }
    }
}

impl Drop for TestStream {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs outside async context rules: use a private runtime on a thread.
        let _ = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(async {
                    if let Ok(client) = async_nats::connect(nats_url()).await {
                        let _ = jetstream::new(client).delete_stream(&name).await;
                    }
                })
        })
        .join();
    }
}

struct Reader {
    consumer: consumer::Consumer<consumer::pull::Config>,
    messages: consumer::pull::Stream,
}

impl Reader {
    /// The next `n` messages.
    async fn take(&mut self, n: usize) -> Vec<jetstream::Message> {
        let mut got = Vec::with_capacity(n);
        while got.len() < n {
            let next = tokio::time::timeout(PATIENCE, self.messages.next())
                .await
                .unwrap_or_else(|_| panic!("only {} of {n} messages came", got.len()));
            got.push(next.expect("the consumer ended").expect("a message"));
        }
        got
    }

    /// The stream holds `total` messages and this consumer has had them all,
    /// so it will see nothing more.
    async fn assert_had_all(&self, stream: &TestStream, total: usize) {
        let total = total as u64;
        let stored = stream.stored().await;
        assert_eq!(
            stored, total,
            "the stream holds {stored} messages; {total} were sent"
        );
        let info = self.consumer.get_info().await.expect("consumer info");
        assert_eq!(info.num_pending, 0, "messages left for the consumer");
        assert_eq!(
            info.delivered.consumer_sequence, total,
            "messages delivered"
        );
    }
}

fn values(headers: &HeaderMap, name: &str) -> Vec<String> {
    headers
        .get_all(name)
        .map(|value| value.as_str().to_owned())
        .collect()
}

/// `got` is `sent`, message for message, in order, with id, key and headers.
fn assert_received(sent: &[Message], got: &[jetstream::Message]) {
    assert_eq!(got.len(), sent.len(), "messages received");
    for (i, (sent, got)) in sent.iter().zip(got).enumerate() {
        assert_eq!(
            String::from_utf8_lossy(&got.payload),
            String::from_utf8_lossy(&sent.payload),
            "message {i}: out of order, or not the one sent"
        );
        assert_eq!(got.subject.as_str(), sent.subject, "message {i}: subject");
        let headers = got.headers.as_ref().expect("headers");
        assert_eq!(
            values(headers, "Nats-Msg-Id"),
            [sent.id.hyphenated().to_string()],
            "message {i}: Nats-Msg-Id"
        );
        assert_eq!(
            values(headers, "Pgevents-Key"),
            Vec::from_iter(sent.key.clone()),
            "message {i}: key"
        );
        for (name, _) in sent.headers.iter().filter(|(n, _)| n != "Nats-Msg-Id") {
            let want: Vec<&str> = sent
                .headers
                .iter()
                .filter(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
                .collect();
            assert_eq!(values(headers, name), want, "message {i}: header `{name}`");
        }
    }
}

#[tokio::test]
async fn nats_burst_arrives_once_in_order_with_headers_and_a_resend_is_deduplicated() {
    let stream = TestStream::create().await;
    let mut reader = stream.reader().await;
    let mut sent = burst(&stream.subject("orders"), "first", 200, 0);
    for message in sent.iter_mut().step_by(2) {
        message.subject = stream.subject("refunds");
        message
            .headers
            .push(("Tag".to_owned(), "repeated".to_owned()));
    }
    // The id NATS dedupes by is the message's, whatever a plugin's headers say.
    sent[7]
        .headers
        .push(("Nats-Msg-Id".to_owned(), "forged".to_owned()));
    let mut nats = Nats::connect(&nats_url()).await.expect("connect");

    assert_all_acknowledged(&sent, &send_nats(&mut nats, &sent).await.expect("send"));
    assert_received(&sent, &reader.take(sent.len()).await);

    // A resend after a failure: NATS drops the repeats by Nats-Msg-Id, so
    // the next message the consumer sees is the next burst's first.
    let again = send_nats(&mut nats, &sent).await.expect("resend");
    assert_all_acknowledged(&sent, &again);
    let next = burst(&stream.subject("orders"), "second", 20, 0);
    assert_all_acknowledged(&next, &send_nats(&mut nats, &next).await.expect("send"));
    assert_received(&next, &reader.take(next.len()).await);
    reader
        .assert_had_all(&stream, sent.len() + next.len())
        .await;
}

#[tokio::test]
async fn nats_cut_connection_fails_the_burst_promptly_and_the_resend_adds_no_duplicates() {
    let stream = TestStream::create().await;
    let mut reader = stream.reader().await;
    let subject = stream.subject("orders");
    let url = nats_url();
    let proxy = Proxy::start(host_port(&url)).await;
    let through_proxy = via(&url, &proxy.addr());
    let mut nats = Nats::connect(&through_proxy).await.expect("connect");

    let before = burst(&subject, "before", 200, 0);
    assert_all_acknowledged(&before, &send_nats(&mut nats, &before).await.expect("send"));

    // A large burst, cut off once part of it is stored.
    let cut_off = burst(&subject, "cut off", 2000, 1024);
    let (result, ()) = tokio::join!(send_nats(&mut nats, &cut_off), async {
        stream.wait_stored_more_than(before.len() as u64).await;
        proxy.cut();
    });
    let stored_at_cut = stream.stored().await - before.len() as u64;
    let mut resend = vec![];
    match result {
        Err(e) => {
            eprintln!(
                "cut off after {stored_at_cut} of {} stored: {e}",
                cut_off.len()
            );
            resend.push(&cut_off);
        }
        Ok(result) => {
            eprintln!("the burst was all acknowledged before the cut");
            assert_all_acknowledged(&cut_off, &result);
        }
    }

    // While cut off: an error within seconds, neither a hang nor a false Ok.
    let during = burst(&subject, "during", 100, 0);
    let started = Instant::now();
    let e = send_nats(&mut nats, &during)
        .await
        .expect_err("a send while cut off reported success");
    let took = started.elapsed();
    eprintln!("a send while cut off failed after {took:?}: {e}");
    assert!(took < PROMPT, "a send while cut off took {took:?} to fail");
    assert!(e.contains(&proxy.addr()), "the error names the server: {e}");
    resend.push(&during);
    let e = Nats::connect(&through_proxy)
        .await
        .expect_err("connected while cut off");
    assert!(e.contains(&proxy.addr()), "the error names the server: {e}");

    proxy.restore();
    drop(nats);
    let connections = proxy.connections();
    let mut nats = Nats::connect(&through_proxy).await.expect("connect again");
    // At least one: the dropped client may reconnect in the background too.
    assert!(
        proxy.connections() > connections,
        "connected again through the proxy"
    );
    for burst in resend {
        assert_all_acknowledged(burst, &send_nats(&mut nats, burst).await.expect("resend"));
    }
    let after = burst(&subject, "after", 100, 0);
    assert_all_acknowledged(&after, &send_nats(&mut nats, &after).await.expect("send"));

    let sent: Vec<Message> = [before, cut_off, during, after].concat();
    assert_received(&sent, &reader.take(sent.len()).await);
    reader.assert_had_all(&stream, sent.len()).await;
}

#[tokio::test]
async fn nats_refuses_unroutable_oversized_and_malformed_messages_and_delivers_the_rest() {
    const STREAM_MAX_MESSAGE_BYTES: i32 = 16 * 1024;
    let stream = TestStream::create_with(stream::Config {
        max_message_size: STREAM_MAX_MESSAGE_BYTES,
        ..Default::default()
    })
    .await;
    let mut reader = stream.reader().await;
    let max_payload = stream.js.client().max_payload();
    let nowhere = format!("u{}.nowhere", Uuid::new_v4().simple());
    let mut sent = burst(&stream.subject("orders"), "mixed", 10, 0);
    sent[1].subject = nowhere;
    sent[3].payload = vec![b'x'; max_payload + 1];
    sent[4].payload = vec![b'y'; 2 * STREAM_MAX_MESSAGE_BYTES as usize];
    sent[6]
        .headers
        .push(("Note".to_owned(), "two\nlines".to_owned()));
    sent[8].subject = format!("{} with spaces", stream.subject("orders"));
    let mut nats = Nats::connect(&nats_url()).await.expect("connect");

    let result = send_nats(&mut nats, &sent).await.expect("send");
    let reason = |i: usize| {
        let reason = result[i]
            .clone()
            .unwrap_or_else(|| panic!("message {i} was not refused"));
        assert!(reason.contains(&sent[i].subject), "{reason}");
        reason
    };
    assert!(reason(1).contains("no JetStream stream"), "{}", reason(1));
    assert!(reason(3).contains("too large"), "{}", reason(3));
    assert!(reason(4).contains("JetStream refused"), "{}", reason(4));
    assert!(
        reason(6).contains("line break in header `Note`"),
        "{}",
        reason(6)
    );
    assert!(reason(8).contains("not a subject"), "{}", reason(8));
    let refused = [1, 3, 4, 6, 8];
    for (i, message) in sent.iter().enumerate() {
        if !refused.contains(&i) {
            assert_eq!(
                result[i], None,
                "message {i} (to `{}`) refused",
                message.subject
            );
        }
    }

    let delivered: Vec<Message> = [0, 2, 5, 7, 9].map(|i| sent[i].clone()).to_vec();
    assert_received(&delivered, &reader.take(delivered.len()).await);
    reader.assert_had_all(&stream, delivered.len()).await;
}

#[tokio::test]
async fn nats_full_stream_fails_the_burst_instead_of_refusing_its_messages() {
    // Discarding new messages when full: JetStream answers 503, "not now".
    let stream = TestStream::create_with(stream::Config {
        max_messages: 5,
        discard: stream::DiscardPolicy::New,
        ..Default::default()
    })
    .await;
    let sent = burst(&stream.subject("orders"), "full", 8, 0);
    let mut nats = Nats::connect(&nats_url()).await.expect("connect");

    let e = send_nats(&mut nats, &sent)
        .await
        .expect_err("a full stream refused messages for good");
    eprintln!("a full stream: {e}");
    assert!(
        e.contains("cannot store") && e.contains(&sent[5].subject),
        "{e}"
    );
    assert_eq!(stream.stored().await, 5, "the stream kept what fit");
}

// ---- Redis ----

/// Redis keys of the test's own (`t<uuid>:<name>`), deleted when dropped.
struct TestKeys {
    connection: MultiplexedConnection,
    prefix: String,
    made: Mutex<Vec<String>>,
}

impl TestKeys {
    async fn new() -> TestKeys {
        let url = redis_url();
        let fail = |e: redis::RedisError| -> ! {
            panic!(
                "Redis is not running on {} ({e}): start it (`redis-server`) or set PGEVENTS_TEST_REDIS_URL",
                host_port(&url)
            )
        };
        let client = redis::Client::open(url.as_str()).unwrap_or_else(|e| fail(e));
        let connection = client
            .get_multiplexed_async_connection()
            .await
            .unwrap_or_else(|e| fail(e));
        TestKeys {
            connection,
            prefix: format!("t{}", Uuid::new_v4().simple()),
            made: Mutex::new(Vec::new()),
        }
    }

    fn key(&self, name: &str) -> String {
        let key = format!("{}:{name}", self.prefix);
        self.made.lock().unwrap().push(key.clone());
        key
    }

    async fn query<T: redis::FromRedisValue>(&self, command: &redis::Cmd) -> T {
        command
            .query_async(&mut self.connection.clone())
            .await
            .unwrap_or_else(|e| panic!("{command:?}: {e}"))
    }

    async fn entries(&self, key: &str) -> Vec<StreamId> {
        let reply: StreamRangeReply = self
            .query(redis::cmd("XRANGE").arg(key).arg("-").arg("+"))
            .await;
        reply.ids
    }

    /// Poll until the stream at `key` holds more than `n` entries.
    async fn wait_len_more_than(&self, key: &str, n: usize) {
        let deadline = Instant::now() + PATIENCE;
        while self.query::<usize>(redis::cmd("XLEN").arg(key)).await <= n {
            assert!(
                Instant::now() < deadline,
                "`{key}` never got past {n} entries"
            );
            tokio::time::sleep(POLL).await;
        }
    }
}

impl Drop for TestKeys {
    fn drop(&mut self) {
        let keys = std::mem::take(&mut *self.made.lock().unwrap());
        if keys.is_empty() {
            return;
        }
        // The blocking client: Drop cannot await.
        if let Ok(mut connection) =
            redis::Client::open(redis_url().as_str()).and_then(|c| c.get_connection())
        {
            let _ = redis::cmd("DEL").arg(&keys).exec(&mut connection);
        }
    }
}

fn field(entry: &StreamId, name: &str) -> Vec<u8> {
    match entry.map.get(name) {
        Some(Value::BulkString(bytes)) => bytes.clone(),
        other => panic!("entry {}: field `{name}` is {other:?}", entry.id),
    }
}

/// `entries` are `sent`, in order, each with its id, key, payload and headers.
fn assert_stored(sent: &[&Message], entries: &[StreamId]) {
    assert_eq!(entries.len(), sent.len(), "entries stored");
    for (i, (sent, entry)) in sent.iter().zip(entries).enumerate() {
        assert_eq!(
            entry.map.len(),
            4,
            "entry {i}: fields {:?}",
            entry.map.keys()
        );
        assert_eq!(
            String::from_utf8_lossy(&field(entry, "payload")),
            String::from_utf8_lossy(&sent.payload),
            "entry {i}: out of order, or not the one sent"
        );
        assert_eq!(
            field(entry, "id"),
            sent.id.hyphenated().to_string().into_bytes()
        );
        assert_eq!(
            field(entry, "key"),
            sent.key.clone().unwrap_or_default().into_bytes(),
            "entry {i}: key"
        );
        let headers: HashMap<String, String> =
            serde_json::from_slice(&field(entry, "headers")).expect("headers are a JSON object");
        assert_eq!(
            headers,
            sent.headers.iter().cloned().collect(),
            "entry {i}: headers"
        );
    }
}

#[tokio::test]
async fn redis_burst_lands_in_order_with_its_fields_and_a_non_stream_key_refuses_only_its_message()
{
    let keys = TestKeys::new().await;
    let orders = keys.key("orders");
    let refunds = keys.key("refunds");
    let plain = keys.key("plain");
    keys.query::<()>(redis::cmd("SET").arg(&plain).arg("not a stream"))
        .await;
    let mut sent = burst(&orders, "redis", 200, 0);
    for message in sent.iter_mut().skip(1).step_by(3) {
        message.subject = refunds.clone();
    }
    const WRONG: usize = 10;
    sent[WRONG].subject = plain.clone();
    let mut redis = Redis::connect(&redis_url()).await.expect("connect");

    let result = send_redis(&mut redis, &sent).await.expect("send");
    let reason = result[WRONG]
        .clone()
        .expect("the message to a string key is refused");
    assert!(
        reason.contains("WRONGTYPE") && reason.contains(&plain),
        "{reason}"
    );
    for (i, outcome) in result.iter().enumerate() {
        if i != WRONG {
            assert_eq!(outcome, &None, "message {i} refused");
        }
    }

    for key in [&orders, &refunds] {
        let to_key: Vec<&Message> = sent.iter().filter(|m| &m.subject == key).collect();
        assert_stored(&to_key, &keys.entries(key).await);
    }
    let value: String = keys.query(redis::cmd("GET").arg(&plain)).await;
    assert_eq!(value, "not a stream");
}

#[tokio::test]
async fn redis_cut_connection_fails_the_burst_promptly_and_the_resend_keeps_every_message() {
    let keys = TestKeys::new().await;
    let key = keys.key("orders");
    let url = redis_url();
    let proxy = Proxy::start(host_port(&url)).await;
    let through_proxy = via(&url, &proxy.addr());
    let mut redis = Redis::connect(&through_proxy).await.expect("connect");

    let before = burst(&key, "before", 200, 0);
    assert_all_acknowledged(
        &before,
        &send_redis(&mut redis, &before).await.expect("send"),
    );

    // A large burst, cut off once part of it is stored.
    let cut_off = burst(&key, "cut off", 5000, 1024);
    let (result, ()) = tokio::join!(send_redis(&mut redis, &cut_off), async {
        keys.wait_len_more_than(&key, before.len()).await;
        proxy.cut();
    });
    let mut resend = vec![];
    match result {
        Err(e) => {
            eprintln!("cut off: {e}");
            resend.push(&cut_off);
        }
        Ok(result) => {
            eprintln!("the burst was all stored before the cut");
            assert_all_acknowledged(&cut_off, &result);
        }
    }

    // While cut off: an error within seconds, neither a hang nor a false Ok.
    let during = burst(&key, "during", 100, 0);
    let started = Instant::now();
    let e = send_redis(&mut redis, &during)
        .await
        .expect_err("a send while cut off reported success");
    let took = started.elapsed();
    eprintln!("a send while cut off failed after {took:?}: {e}");
    assert!(took < PROMPT, "a send while cut off took {took:?} to fail");
    assert!(e.contains(&proxy.addr()), "the error names the server: {e}");
    resend.push(&during);
    let e = Redis::connect(&through_proxy)
        .await
        .expect_err("connected while cut off");
    assert!(e.contains(&proxy.addr()), "the error names the server: {e}");

    proxy.restore();
    let connections = proxy.connections();
    let mut redis = Redis::connect(&through_proxy).await.expect("connect again");
    assert_eq!(
        proxy.connections(),
        connections + 1,
        "connected again through the proxy"
    );
    for burst in resend {
        assert_all_acknowledged(burst, &send_redis(&mut redis, burst).await.expect("resend"));
    }
    let after = burst(&key, "after", 100, 0);
    assert_all_acknowledged(&after, &send_redis(&mut redis, &after).await.expect("send"));

    // Every message at least once, first appearances in the order sent; the
    // repeats can only be the resent part of the burst that was cut off.
    let sent: Vec<String> = [&before, &cut_off, &during, &after]
        .into_iter()
        .flatten()
        .map(|m| m.id.hyphenated().to_string())
        .collect();
    let stored: Vec<String> = keys
        .entries(&key)
        .await
        .iter()
        .map(|entry| String::from_utf8(field(entry, "id")).expect("id"))
        .collect();
    let mut seen = HashSet::new();
    let first_appearances: Vec<&String> = stored.iter().filter(|id| seen.insert(*id)).collect();
    assert_eq!(
        first_appearances,
        sent.iter().collect::<Vec<_>>(),
        "stored ids"
    );
    let duplicates = stored.len() - sent.len();
    eprintln!(
        "{duplicates} duplicates after resending a burst of {} cut off mid-way",
        cut_off.len()
    );
    assert!(
        duplicates <= cut_off.len(),
        "{duplicates} duplicates: more than one burst"
    );
}
