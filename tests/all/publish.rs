//! The publish capability end to end: events → plugin → outbox → broker →
//! a consumer in the test. Every message once (NATS: 0 duplicates, by its
//! id), in key order, with its id and headers; nothing lost when the broker
//! is cut off or the host is killed mid-flush.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use pgevents_host::runtime::message_id;

use crate::proxy::Proxy;
use crate::support::*;

/// How long a test waits for messages to arrive.
const ARRIVAL: Duration = Duration::from_secs(60);

pub fn nats_url() -> String {
    std::env::var("PGEVENTS_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// A message as the consumer received it.
#[derive(Debug, Clone)]
pub struct Received {
    /// `Nats-Msg-Id` (or the kind's id field).
    pub id: String,
    pub subject: String,
    pub headers: HashMap<String, String>,
    pub payload: Vec<u8>,
}

impl Received {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("no header {name} in {self:?}"))
    }

    /// The id the host must have given it: from its event and its number.
    fn expected_id(&self) -> String {
        let event: uuid::Uuid = self.header("event-id").parse().expect("event id");
        let n: u32 = self.header("n").parse().expect("message number");
        message_id("publisher", event, n).to_string()
    }

    fn row(&self) -> serde_json::Value {
        serde_json::from_slice(&self.payload).unwrap_or(serde_json::Value::Null)
    }
}

/// A JetStream stream of the test's own, on subjects `PREFIX.>`.
pub struct NatsStream {
    pub prefix: String,
    js: async_nats::jetstream::Context,
}

impl NatsStream {
    pub async fn new() -> NatsStream {
        NatsStream::on(None).await
    }

    /// A stream named `t<uuid>` on `subjects` (default: `t<uuid>.>`).
    pub async fn on(subjects: Option<String>) -> NatsStream {
        let url = nats_url();
        let client = async_nats::connect(&url).await.unwrap_or_else(|e| {
            panic!(
                "NATS with JetStream is not reachable at {url} ({e}): start it (`nats-server -js`) \
                 or set PGEVENTS_TEST_NATS_URL"
            )
        });
        let js = async_nats::jetstream::new(client);
        let prefix = format!("t{}", uuid::Uuid::new_v4().simple());
        js.create_stream(async_nats::jetstream::stream::Config {
            name: prefix.clone(),
            subjects: vec![subjects.unwrap_or_else(|| format!("{prefix}.>"))],
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await
        .expect("create a JetStream stream (is JetStream enabled? `nats-server -js`)");
        NatsStream { prefix, js }
    }

    /// Every message the stream holds, in order.
    pub async fn all(&self) -> Vec<Received> {
        let mut stream = self.js.get_stream(&self.prefix).await.expect("stream");
        let last = stream
            .info()
            .await
            .expect("stream info")
            .state
            .last_sequence;
        let mut out = Vec::new();
        for seq in 1..=last {
            let Ok(m) = stream.get_raw_message(seq).await else {
                continue;
            };
            let headers = m
                .headers
                .iter()
                .map(|(k, v)| {
                    (
                        k.to_string(),
                        v.first().map(|v| v.to_string()).unwrap_or_default(),
                    )
                })
                .collect::<HashMap<_, _>>();
            out.push(Received {
                id: headers.get("Nats-Msg-Id").cloned().unwrap_or_default(),
                subject: m.subject.to_string(),
                headers,
                payload: m.payload.to_vec(),
            });
        }
        out
    }

    /// Wait until the stream holds `n` messages (or fail after `ARRIVAL`).
    pub async fn wait_for(&self, n: usize) -> Vec<Received> {
        let deadline = Instant::now() + ARRIVAL;
        loop {
            let all = self.all().await;
            if all.len() >= n {
                return all;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {n} messages arrived within {ARRIVAL:?}",
                all.len()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for NatsStream {
    fn drop(&mut self) {
        let js = self.js.clone();
        let name = self.prefix.clone();
        // Best effort, off the test's runtime (which may be shutting down).
        std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                let _ = rt.block_on(js.delete_stream(name));
            }
        });
    }
}

/// Config for the `publisher` test plugin publishing to a NATS sink at `url`.
fn nats_config(url: &str, subject: &str, extra: &str) -> String {
    format!(
        "[sinks.bus]\nkind = \"nats\"\nurl = \"{url}\"\nburst = 50\n\n\
         [plugins.publisher]\npublish = [\"bus\"]\nconfig = {{ subject = \"{subject}\" }}\n{extra}"
    )
}

/// Every message once, with the id its event and number give, the event's
/// headers, and per key in the order the rows changed.
fn check_messages(received: &[Received], expected: usize) -> usize {
    let mut ids = HashSet::new();
    let mut duplicates = 0;
    for m in received {
        assert_eq!(m.id, m.expected_id(), "{m:?}");
        if !ids.insert(m.id.clone()) {
            duplicates += 1;
        }
    }
    assert_eq!(ids.len(), expected, "distinct messages");
    // Per key (row id), the `qty` values arrive increasing: each update set
    // the next one.
    let mut by_key: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    let mut seen = HashSet::new();
    for m in received {
        if !seen.insert(m.id.clone()) {
            continue;
        }
        if let Some(qty) = m.row().get("qty").and_then(|q| q.as_i64()) {
            by_key
                .entry(m.row()["id"].to_string())
                .or_default()
                .push(qty);
        }
    }
    for (key, qtys) in &by_key {
        let mut sorted = qtys.clone();
        sorted.sort_unstable();
        assert_eq!(qtys, &sorted, "key {key}: messages out of order");
    }
    duplicates
}

/// Rows 1..=rows inserted with qty 0, then each updated `updates` times
/// (qty 1, 2, ...), the rows' updates interleaved across transactions.
async fn write_history(db: &TestDb, rows: i64, updates: i64) {
    let client = db.client().await;
    client
        .execute(
            "INSERT INTO items (id, name, qty) SELECT g, 'row ' || g, 0 FROM generate_series(1, $1::bigint) g",
            &[&rows],
        )
        .await
        .expect("insert");
    for q in 1..=updates {
        client
            .execute("UPDATE items SET qty = $1 WHERE id % 2 = 0", &[&(q as i32)])
            .await
            .expect("update even");
        client
            .execute("UPDATE items SET qty = $1 WHERE id % 2 = 1", &[&(q as i32)])
            .await
            .expect("update odd");
    }
}

#[tokio::test]
async fn nats_receives_every_message_once_in_key_order_with_ids_and_headers() {
    let db = TestDb::new().await;
    let bus = NatsStream::new().await;
    let subject = format!("{}.items", bus.prefix);
    let settings = settings_with(&nats_config(&nats_url(), &subject, ""));
    let mut host = Host::start_with(&db, plugins_dir(&["publisher"]), settings).await;
    write_history(&db, 20, 5).await;
    let received = bus.wait_for(120).await;
    host.settle(Duration::from_millis(500)).await;
    let received_after = bus.all().await;
    assert_eq!(
        received_after.len(),
        120,
        "no more than one message per event"
    );
    assert_eq!(check_messages(&received, 120), 0);
    for m in &received {
        assert_eq!(m.subject, subject);
        assert!(["insert", "update"].contains(&m.header("op")), "{m:?}");
    }
    eventually(
        &db.client().await,
        "the outbox empties once the broker acknowledged every message",
        "SELECT count(*) = 0 FROM pgevents.outbox",
    )
    .await;
    host.stop().await;
}

#[tokio::test]
async fn a_plugin_without_the_publish_grant_is_refused_at_load_naming_the_line() {
    let db = TestDb::new().await;
    let settings = settings_with("[sinks.bus]\nkind = \"nats\"\nurl = \"nats://127.0.0.1:4222\"\n");
    let host = Host::start_with(&db, plugins_dir(&["publisher"]), settings).await;
    let rejections = host.rejections();
    assert!(
        rejections
            .iter()
            .any(|r| r.contains("publish = [\"SINK\"]")),
        "the refusal names the line that grants it: {rejections:?}"
    );
    host.stop().await;
}

#[tokio::test]
async fn a_message_for_a_failed_event_is_never_recorded_and_the_others_are_sent_once() {
    let db = TestDb::new().await;
    let bus = NatsStream::new().await;
    let subject = format!("{}.items", bus.prefix);
    let settings = settings_with(&nats_config(&nats_url(), &subject, "max_attempts = 2\n"));
    let mut host = Host::start_with(&db, plugins_dir(&["publisher"]), settings).await;
    db.client()
        .await
        .batch_execute(
            "INSERT INTO items (id, name) VALUES (1, 'a'), (2, 'poison'), (3, 'b');
             INSERT INTO items (id, name) VALUES (4, 'fail'), (5, 'c');",
        )
        .await
        .unwrap();
    // 1, 3, 5: published; 2 (permanent) and 4 (fails every attempt) dead-lettered.
    eventually(
        &db.client().await,
        "both failing events are dead letters",
        "SELECT count(*) = 2 FROM pgevents.dead_letters",
    )
    .await;
    bus.wait_for(3).await;
    host.settle(Duration::from_millis(500)).await;
    let received = bus.all().await;
    let names: HashSet<String> = received
        .iter()
        .map(|m| m.row()["name"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(names, HashSet::from(["a".into(), "b".into(), "c".into()]));
    assert_eq!(bus.all().await.len(), 3, "each message once");
    host.stop().await;
}

#[tokio::test]
async fn a_message_the_broker_refuses_is_kept_with_its_reason_the_rest_flow_and_it_can_be_resent() {
    let db = TestDb::new().await;
    let bus = NatsStream::new().await;
    let good = format!("{}.items", bus.prefix);
    // The relay example publishes a table's changes to `db.public.TABLE.insert`,
    // a subject no stream covers: JetStream refuses every message to it.
    let table = format!("t{}", uuid::Uuid::new_v4().simple());
    db.client()
        .await
        .batch_execute(&format!("CREATE TABLE public.{table} (id int PRIMARY KEY)"))
        .await
        .unwrap();
    let nowhere = format!("db.public.{table}.insert");
    let config = format!(
        "{}\n[plugins.relay]\npublish = [\"bus\"]\nconfig = {{ tables = \"public.{table}\", sink = \"bus\" }}\n",
        nats_config(&nats_url(), &good, "")
    );
    let dir = plugins_dir(&["publisher", "relay"]);
    let host = Host::start_with(&db, dir, settings_with(&config)).await;
    db.client()
        .await
        .execute(
            "INSERT INTO items (id, name) SELECT g, 'row ' || g FROM generate_series(1, 10) g",
            &[],
        )
        .await
        .unwrap();
    db.client()
        .await
        .batch_execute(&format!(
            "INSERT INTO public.{table} SELECT g FROM generate_series(1, 10) g"
        ))
        .await
        .unwrap();
    let client = db.client().await;
    let received = bus.wait_for(10).await;
    assert_eq!(check_messages(&received, 10), 0);
    eventually(
        &client,
        "the relay's 10 messages are kept as refused",
        "SELECT count(*) = 10 FROM pgevents.outbox WHERE refused IS NOT NULL",
    )
    .await;
    let reasons = texts(&client, "SELECT DISTINCT refused FROM pgevents.outbox").await;
    assert!(
        reasons.iter().all(|r| r.contains(&nowhere)),
        "the broker's reason names the subject: {reasons:?}"
    );
    let status = pgevents_host::outbox::status(&client).await.unwrap();
    assert_eq!(status[0].refused, 10, "{status:?}");
    assert_eq!(status[0].pending, 0, "{status:?}");

    // `outbox refused` lists them with the broker's reason; once a stream
    // covers their subject, `outbox resend` sends them, each once.
    let listed = host_bin()
        .args(["outbox", "refused", "--database-url", &db.url])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&listed.stdout);
    assert!(listed.status.success(), "{text}");
    assert_eq!(
        text.matches(&nowhere).count(),
        20,
        "subject and reason, 10 times: {text}"
    );
    assert!(text.contains("from plugin relay"), "{text}");
    let late = NatsStream::on(Some(format!("db.public.{table}.>"))).await;
    let none_chosen = host_bin()
        .args(["outbox", "resend", "--database-url", &db.url])
        .output()
        .unwrap();
    assert!(!none_chosen.status.success(), "resend needs --id or --all");
    let resend = host_bin()
        .args([
            "outbox",
            "resend",
            "--all",
            "--sink",
            "bus",
            "--database-url",
            &db.url,
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&resend.stdout);
    assert!(text.contains("10 message(s) wait"), "{text}");
    let resent = late.wait_for(10).await;
    let mut ids: Vec<String> = resent.iter().map(|m| m.id.clone()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 10, "each refused message once, with its id");
    eventually(
        &client,
        "the resent messages leave the outbox",
        "SELECT count(*) = 0 FROM pgevents.outbox",
    )
    .await;
    host.stop().await;
}

#[tokio::test]
async fn nats_cut_off_for_5s_mid_stream_loses_nothing_and_shows_no_duplicates() {
    let db = TestDb::new().await;
    let bus = NatsStream::new().await;
    let subject = format!("{}.items", bus.prefix);
    let proxy = Proxy::start(nats_url().trim_start_matches("nats://")).await;
    let url = format!("nats://{}", proxy.addr());
    let mut host = Host::start_with(
        &db,
        plugins_dir(&["publisher"]),
        settings_with(&nats_config(&url, &subject, "")),
    )
    .await;
    let writer = {
        let client = db.client().await;
        tokio::spawn(async move {
            for i in 1..=80i32 {
                client
                    .execute(
                        "INSERT INTO items (id, name, qty) VALUES ($1, 'row', 0)",
                        &[&i],
                    )
                    .await
                    .expect("insert");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.cut();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let during = bus.all().await.len();
    proxy.restore();
    writer.await.unwrap();
    let received = bus.wait_for(80).await;
    host.settle(Duration::from_secs(1)).await;
    let received = {
        let all = bus.all().await;
        assert!(all.len() >= received.len());
        all
    };
    assert!(
        proxy.connections() >= 2,
        "the host connected to the broker again after the cut"
    );
    let duplicates = check_messages(&received, 80);
    eprintln!(
        "nats cut for 5 s: {during} of 80 had arrived when it came back; {} messages in the stream, {duplicates} duplicates",
        received.len()
    );
    assert_eq!(
        duplicates, 0,
        "JetStream dedupes resent bursts by Nats-Msg-Id"
    );
    assert!(during < 80, "the cut happened mid-stream");
    host.stop().await;
}

#[tokio::test]
async fn a_host_killed_mid_flush_and_restarted_loses_no_message() {
    killed_mid_flush_loses_nothing("nats", 0).await;
}

#[tokio::test]
async fn a_plugin_built_against_wit_0_1_0_still_loads_and_receives_events() {
    let db = TestDb::new().await;
    let mut host = Host::start(&db, &["legacy"]).await;
    assert!(host.rejections().is_empty(), "{:?}", host.rejections());
    db.client()
        .await
        .execute("INSERT INTO items (name) VALUES ('a'), ('b'), ('c')", &[])
        .await
        .unwrap();
    host.wait_until("legacy handled the three inserts", |e| {
        matches!(e, pgevents_host::observer::HostEvent::BatchHandled { plugin, cursor, .. }
                 if plugin == "legacy" && cursor.ord > 0)
    })
    .await;
    host.stop().await;
}

/// A consumer of any kind: a JetStream stream, a RabbitMQ queue (the
/// subject is its name, on the default exchange), a Redis stream, an MQTT topic.
enum Bus {
    Nats(NatsStream),
    Rabbitmq {
        queue: Option<crate::sinks_rabbitmq_mqtt::Queue>,
        _connection: Box<lapin::Connection>,
    },
    Redis {
        key: String,
        client: redis::Client,
    },
    Mqtt {
        subscriber: Option<crate::sinks_rabbitmq_mqtt::Subscriber>,
    },
}

/// The broker's address for `kind`, and a `[sinks.bus]` section reaching it
/// at `address` (the broker's own, or a proxy's).
fn broker(kind: &str) -> String {
    match kind {
        "rabbitmq" => {
            crate::sinks_rabbitmq_mqtt::address(&crate::sinks_rabbitmq_mqtt::rabbitmq_url())
                .to_owned()
        }
        "mqtt" => {
            crate::sinks_rabbitmq_mqtt::address(&crate::sinks_rabbitmq_mqtt::mqtt_url()).to_owned()
        }
        "nats" => nats_url().trim_start_matches("nats://").to_owned(),
        _ => std::env::var("PGEVENTS_TEST_REDIS_URL")
            .unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
            .trim_start_matches("redis://")
            .trim_end_matches('/')
            .to_owned(),
    }
}

fn sink_config(kind: &str, address: &str, subject: &str) -> String {
    let url = match kind {
        "rabbitmq" => format!("amqp://guest:guest@{address}/%2f"),
        "mqtt" => format!("mqtt://{address}"),
        "nats" => format!("nats://{address}"),
        _ => format!("redis://{address}"),
    };
    format!(
        "[sinks.bus]\nkind = \"{kind}\"\nurl = \"{url}\"\nburst = 50\n\n\
         [plugins.publisher]\npublish = [\"bus\"]\nconfig = {{ subject = \"{subject}\" }}\n"
    )
}

impl Bus {
    /// A consumer for `kind`, and the subject to publish to.
    async fn new(kind: &str) -> (Bus, String) {
        let subject = format!("t{}", uuid::Uuid::new_v4().simple());
        let bus = match kind {
            "rabbitmq" => {
                let (connection, channel) = crate::sinks_rabbitmq_mqtt::rabbitmq().await;
                let queue =
                    crate::sinks_rabbitmq_mqtt::Queue::declare(&channel, Default::default()).await;
                let subject = queue.name.clone();
                return (
                    Bus::Rabbitmq {
                        queue: Some(queue),
                        _connection: Box::new(connection),
                    },
                    subject,
                );
            }
            "nats" => {
                let stream = NatsStream::new().await;
                let subject = format!("{}.items", stream.prefix);
                return (Bus::Nats(stream), subject);
            }
            "mqtt" => Bus::Mqtt {
                subscriber: Some(crate::sinks_rabbitmq_mqtt::Subscriber::start(&subject).await),
            },
            _ => {
                let url = format!("redis://{}", broker("redis"));
                let client = redis::Client::open(url.as_str()).expect("a Redis URL");
                client
                    .get_multiplexed_async_connection()
                    .await
                    .unwrap_or_else(|e| {
                        panic!("Redis is not reachable at {url} ({e}): start it (`redis-server`) or set PGEVENTS_TEST_REDIS_URL")
                    });
                Bus::Redis {
                    key: subject.clone(),
                    client,
                }
            }
        };
        (bus, subject)
    }

    /// What arrived, waiting until at least `n` messages did (or `ARRIVAL`
    /// passed), then for stragglers (a resent burst) a little longer.
    async fn receive(&mut self, n: usize, so_far: &mut Vec<Received>) {
        let deadline = Instant::now() + ARRIVAL;
        loop {
            // Take no more than wanted now (a test may act on the n-th one).
            let want = n.saturating_sub(so_far.len()).max(1);
            let more = match self {
                Bus::Nats(stream) => {
                    let all = stream.all().await;
                    so_far.clear();
                    all
                }
                Bus::Rabbitmq { queue, .. } => queue
                    .as_mut()
                    .expect("queue")
                    .receive(want, Duration::from_millis(500))
                    .await
                    .into_iter()
                    .map(Received::from_got)
                    .collect(),
                Bus::Mqtt { subscriber } => subscriber
                    .as_mut()
                    .expect("subscriber")
                    .receive(want, Duration::from_millis(500))
                    .await
                    .into_iter()
                    .map(Received::from_got)
                    .collect(),
                Bus::Redis { key, client } => {
                    let mut conn = client
                        .get_multiplexed_async_connection()
                        .await
                        .expect("redis");
                    let entries: Vec<RedisEntry> = redis::cmd("XRANGE")
                        .arg(&*key)
                        .arg("-")
                        .arg("+")
                        .query_async(&mut conn)
                        .await
                        .expect("XRANGE");
                    so_far.clear();
                    entries
                        .into_iter()
                        .map(Received::from_redis)
                        .collect::<Vec<_>>()
                }
            };
            so_far.extend(more);
            let distinct: HashSet<&str> = so_far.iter().map(|m| m.id.as_str()).collect();
            if distinct.len() >= n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {n} messages arrived within {ARRIVAL:?}",
                distinct.len()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn remove(mut self) {
        match &mut self {
            Bus::Nats(_) => {} // the stream is deleted when dropped
            Bus::Rabbitmq { queue, .. } => queue.take().expect("queue").remove().await,
            Bus::Mqtt { subscriber } => subscriber.take().expect("subscriber").stop().await,
            Bus::Redis { key, client } => {
                let mut conn = client
                    .get_multiplexed_async_connection()
                    .await
                    .expect("redis");
                let _: Result<i64, _> = redis::cmd("DEL").arg(&*key).query_async(&mut conn).await;
            }
        }
    }
}

/// An XRANGE entry: its id and its fields.
type RedisEntry = (String, Vec<(String, Vec<u8>)>);

impl Received {
    fn from_got(got: crate::sinks_rabbitmq_mqtt::Got) -> Received {
        Received {
            id: got.id.map(|id| id.to_string()).unwrap_or_default(),
            subject: got.subject,
            headers: got.headers.into_iter().collect(),
            payload: got.payload,
        }
    }

    fn from_redis((_, fields): RedisEntry) -> Received {
        let field = |name: &str| {
            fields
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        let headers: HashMap<String, String> =
            serde_json::from_slice(&field("headers")).expect("headers as a JSON object");
        Received {
            id: String::from_utf8_lossy(&field("id")).into_owned(),
            subject: String::new(),
            headers,
            payload: field("payload"),
        }
    }
}

/// Events → publisher → outbox → `kind`'s broker: every message once, in key
/// order, with its id and headers.
async fn every_message_once_in_key_order(kind: &str) {
    let db = TestDb::new().await;
    let (mut bus, subject) = Bus::new(kind).await;
    let settings = settings_with(&sink_config(kind, &broker(kind), &subject));
    let mut host = Host::start_with(&db, plugins_dir(&["publisher"]), settings).await;
    write_history(&db, 20, 5).await;
    let mut received = Vec::new();
    bus.receive(120, &mut received).await;
    host.settle(Duration::from_millis(500)).await;
    assert_eq!(
        check_messages(&received, 120),
        0,
        "{kind}: no duplicates without faults"
    );
    eventually(
        &db.client().await,
        "the outbox empties",
        "SELECT count(*) = 0 FROM pgevents.outbox",
    )
    .await;
    host.stop().await;
    bus.remove().await;
}

/// A RabbitMQ queue that is full (`x-max-length` with `reject-publish`)
/// nacks: the host keeps the messages waiting, refuses none, and sends them
/// once a consumer drains the queue — every one, in key order.
#[tokio::test]
async fn a_full_rabbitmq_queue_holds_messages_back_and_loses_none() {
    use lapin::options::{BasicConsumeOptions, QueueDeclareOptions, QueueDeleteOptions};
    use lapin::types::{AMQPValue, FieldTable};
    let db = TestDb::new().await;
    let (_connection, channel) = crate::sinks_rabbitmq_mqtt::rabbitmq().await;
    let queue = format!("t{}", uuid::Uuid::new_v4().simple());
    let mut arguments = FieldTable::default();
    arguments.insert("x-max-length".into(), AMQPValue::LongInt(10));
    arguments.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    let exclusive = QueueDeclareOptions {
        exclusive: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(queue.as_str().into(), exclusive, arguments)
        .await
        .expect("declare a bounded queue");
    let settings = settings_with(&sink_config("rabbitmq", &broker("rabbitmq"), &queue));
    let mut host = Host::start_with(&db, plugins_dir(&["publisher"]), settings).await;
    write_history(&db, 20, 1).await; // 40 messages, 10 of which fit
    let client = db.client().await;
    eventually(
        &client,
        "the flusher meets the full queue",
        "SELECT coalesce(bool_or(last_error LIKE '%basic.nack%'), false) FROM pgevents.sinks WHERE name = 'bus'",
    )
    .await;
    host.settle(Duration::from_millis(500)).await;
    let (waiting, refused): (i64, i64) = {
        let row = client
            .query_one(
                "SELECT count(*) FILTER (WHERE refused IS NULL), count(*) FILTER (WHERE refused IS NOT NULL)
                 FROM pgevents.outbox",
                &[],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!(refused, 0, "a full queue refuses nothing for good");
    assert!(waiting >= 30, "the 30 that do not fit wait: {waiting}");

    // A consumer drains the queue: the rest arrive.
    let no_ack = BasicConsumeOptions {
        no_ack: true,
        ..BasicConsumeOptions::default()
    };
    let mut consumer = channel
        .basic_consume(
            queue.as_str().into(),
            "".into(),
            no_ack,
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let mut received = Vec::new();
    let deadline = Instant::now() + ARRIVAL;
    while received
        .iter()
        .map(|m: &Received| m.id.clone())
        .collect::<HashSet<_>>()
        .len()
        < 40
    {
        use futures_util::StreamExt;
        assert!(
            Instant::now() < deadline,
            "{} of 40 arrived",
            received.len()
        );
        if let Ok(Some(Ok(delivery))) =
            tokio::time::timeout(Duration::from_millis(500), consumer.next()).await
        {
            received.push(Received::from_got(
                crate::sinks_rabbitmq_mqtt::Got::from_amqp(delivery),
            ));
        }
    }
    let duplicates = check_messages(&received, 40);
    println!("full queue: {duplicates} duplicates");
    eventually(
        &client,
        "the outbox empties",
        "SELECT count(*) = 0 FROM pgevents.outbox",
    )
    .await;
    host.stop().await;
    let _ = channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await;
}

#[tokio::test]
async fn rabbitmq_receives_every_message_once_in_key_order_with_ids_and_headers() {
    every_message_once_in_key_order("rabbitmq").await;
}

#[tokio::test]
async fn redis_receives_every_message_once_in_key_order_with_ids_and_headers() {
    every_message_once_in_key_order("redis").await;
}

#[tokio::test]
async fn mqtt_receives_every_message_once_in_key_order_with_ids_and_headers() {
    every_message_once_in_key_order("mqtt").await;
}

/// `kind`'s broker cut off (through a proxy) for 5 s mid-stream: nothing
/// lost; at most one burst (50) delivered twice, counted and reported.
async fn cut_off_for_5s_loses_nothing(kind: &str) {
    let db = TestDb::new().await;
    let (mut bus, subject) = Bus::new(kind).await;
    let proxy = Proxy::start(&broker(kind)).await;
    let settings = settings_with(&sink_config(kind, &proxy.addr(), &subject));
    let mut host = Host::start_with(&db, plugins_dir(&["publisher"]), settings).await;
    let writer = {
        let client = db.client().await;
        tokio::spawn(async move {
            for i in 1..=80i32 {
                client
                    .execute(
                        "INSERT INTO items (id, name, qty) VALUES ($1, 'row', 0)",
                        &[&i],
                    )
                    .await
                    .expect("insert");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.cut();
    tokio::time::sleep(Duration::from_secs(5)).await;
    proxy.restore();
    writer.await.unwrap();
    let mut received = Vec::new();
    bus.receive(80, &mut received).await;
    host.settle(Duration::from_secs(1)).await;
    bus.receive(80, &mut received).await;
    let duplicates = check_messages(&received, 80);
    eprintln!("{kind} cut for 5 s: 80 messages, {duplicates} delivered twice");
    assert!(
        duplicates <= 50,
        "{kind}: at most one burst again, not {duplicates}"
    );
    assert!(
        proxy.connections() >= 2,
        "{kind}: the host connected again after the cut"
    );
    host.stop().await;
    bus.remove().await;
}

#[tokio::test]
async fn rabbitmq_cut_off_for_5s_mid_stream_loses_nothing() {
    cut_off_for_5s_loses_nothing("rabbitmq").await;
}

#[tokio::test]
async fn redis_cut_off_for_5s_mid_stream_loses_nothing() {
    cut_off_for_5s_loses_nothing("redis").await;
}

#[tokio::test]
async fn mqtt_cut_off_for_5s_mid_stream_loses_nothing() {
    cut_off_for_5s_loses_nothing("mqtt").await;
}

/// flask_signalbus's scenario with the `signals` example: rows inserted into
/// a signal table are published to RabbitMQ once each, and deleted in the
/// same transaction as their message is recorded.
#[tokio::test]
async fn the_signal_table_example_publishes_every_signal_once_and_deletes_its_row() {
    let db = TestDb::new().await;
    let role = db.role("signals_writer").await;
    db.client()
        .await
        .batch_execute(&format!(
            "CREATE TABLE public.outgoing_signals (
                 id bigint PRIMARY KEY GENERATED BY DEFAULT AS IDENTITY,
                 subject text NOT NULL, payload jsonb);
             GRANT SELECT, DELETE ON public.outgoing_signals TO {role};"
        ))
        .await
        .unwrap();
    let (connection, channel) = crate::sinks_rabbitmq_mqtt::rabbitmq().await;
    let mut queue = crate::sinks_rabbitmq_mqtt::Queue::declare(&channel, Default::default()).await;
    let config = format!(
        "[sinks.rabbit]\nkind = \"rabbitmq\"\nurl = \"amqp://guest:guest@{}/%2f\"\n\n\
         [plugins.signals]\nsql = {{ role = \"{role}\" }}\npublish = [\"rabbit\"]\nconfig = {{ burst = \"25\" }}\n",
        broker("rabbitmq")
    );
    let mut host = Host::start_with(&db, plugins_dir(&["signals"]), settings_with(&config)).await;
    assert!(host.rejections().is_empty(), "{:?}", host.rejections());
    let client = db.client().await;
    // The application's transactions: a change and its signal, 60 of them.
    for i in 0..60 {
        client
            .execute(
                "INSERT INTO outgoing_signals (subject, payload) VALUES ($1, jsonb_build_object('n', $2::int))",
                &[&queue.name, &i],
            )
            .await
            .unwrap();
    }
    let mut got = Vec::new();
    let deadline = Instant::now() + ARRIVAL;
    while got.len() < 60 && Instant::now() < deadline {
        got.extend(
            queue
                .receive(60 - got.len(), Duration::from_millis(500))
                .await,
        );
    }
    eventually(
        &client,
        "every signal row is deleted",
        "SELECT count(*) = 0 FROM outgoing_signals",
    )
    .await;
    host.settle(Duration::from_millis(500)).await;
    got.extend(queue.receive(100, Duration::from_millis(500)).await);
    let ns: Vec<i64> = got
        .iter()
        .map(|m| {
            let v: serde_json::Value = serde_json::from_slice(&m.payload).expect("JSON payload");
            v["n"].as_i64().expect("n")
        })
        .collect();
    assert_eq!(
        ns,
        (0..60).collect::<Vec<_>>(),
        "every signal once, in order"
    );
    let ids: HashSet<_> = got.iter().map(|m| m.id).collect();
    assert_eq!(ids.len(), 60, "each with its own message id");
    host.stop().await;
    queue.remove().await;
    drop(connection);
}

/// The relay example, configured by table list alone: every change to the
/// table arrives on `db.<schema>.<table>.<op>` as a JSON envelope.
#[tokio::test]
async fn the_relay_example_publishes_changes_as_envelopes_on_table_subjects() {
    let db = TestDb::new().await;
    let table = format!("t{}", uuid::Uuid::new_v4().simple());
    let bus = NatsStream::on(Some(format!("db.public.{table}.>"))).await;
    let client = db.client().await;
    client
        .batch_execute(&format!(
            "CREATE TABLE public.{table} (id int PRIMARY KEY, label text)"
        ))
        .await
        .unwrap();
    let config = format!(
        "[sinks.nats]\nkind = \"nats\"\nurl = \"{}\"\n\n\
         [plugins.relay]\npublish = [\"nats\"]\nconfig = {{ tables = \"public.{table}\" }}\n",
        nats_url()
    );
    let host = Host::start_with(&db, plugins_dir(&["relay"]), settings_with(&config)).await;
    client
        .batch_execute(&format!(
            "INSERT INTO {table} VALUES (1, 'a'); UPDATE {table} SET label = 'b' WHERE id = 1;
             DELETE FROM {table} WHERE id = 1;"
        ))
        .await
        .unwrap();
    let received = bus.wait_for(3).await;
    let subjects: Vec<&str> = received.iter().map(|m| m.subject.as_str()).collect();
    let ops = ["insert", "update", "delete"];
    let want: Vec<String> = ops
        .iter()
        .map(|op| format!("db.public.{table}.{op}"))
        .collect();
    assert_eq!(subjects, want);
    let update = received[1].row();
    assert_eq!(update["operation"], "update", "{update}");
    assert_eq!(update["table"], table.as_str(), "{update}");
    assert_eq!(update["key"], serde_json::json!({"id": 1}), "{update}");
    assert_eq!(update["old"]["label"], "a", "{update}");
    assert_eq!(update["new"]["label"], "b", "{update}");
    assert!(
        update["position"]["txid"].is_number() || update["position"]["txid"].is_string(),
        "{update}"
    );
    host.stop().await;
}

/// The host SIGKILLed mid-flush to `kind`'s broker and restarted: nothing
/// lost; at most `max_duplicates` delivered twice (one burst, 20; NATS drops
/// resends by id), counted and reported.
async fn killed_mid_flush_loses_nothing(kind: &str, max_duplicates: usize) {
    let db = TestDb::new().await;
    let (mut bus, subject) = Bus::new(kind).await;
    // A slow broker, so that the kill lands mid-flush.
    let proxy = Proxy::with_latency(&broker(kind), Duration::from_millis(3)).await;
    let dir = plugins_dir(&["publisher"]);
    let config = dir.path().join("host.toml");
    std::fs::write(
        &config,
        sink_config(kind, &proxy.addr(), &subject).replace("burst = 50", "burst = 20"),
    )
    .unwrap();
    let config = config.to_str().unwrap().to_owned();
    let args = [
        "--config",
        &config,
        "--lease-ttl",
        "3s",
        "--handle-timeout",
        "1s",
    ];
    let mut host = HostProcess::spawn(&db, dir.path(), &args);
    let client = db.client().await;
    eventually(
        &client,
        "the host installed the schema",
        "SELECT to_regclass('pgevents.outbox') IS NOT NULL",
    )
    .await;
    eventually(
        &client,
        "the host installed the capture triggers",
        "SELECT count(*) = 4 FROM pg_trigger
         WHERE tgrelid = 'items'::regclass AND tgname LIKE 'pgevents_capture_%'",
    )
    .await;
    const N: usize = 2000;
    client
        .execute(
            "INSERT INTO items (id, name, qty) SELECT g, 'row', 0 FROM generate_series(1, 2000) g",
            &[],
        )
        .await
        .unwrap();
    let mut received = Vec::new();
    bus.receive(100, &mut received).await;
    host.kill9();
    let at_kill: HashSet<String> = received.iter().map(|m| m.id.clone()).collect();
    assert!(
        at_kill.len() < N,
        "{kind}: killed mid-flush ({} of {N} sent)",
        at_kill.len()
    );
    let mut host = HostProcess::spawn(&db, dir.path(), &args);
    bus.receive(N, &mut received).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    bus.receive(N, &mut received).await;
    let duplicates = check_messages(&received, N);
    eprintln!(
        "{kind} killed mid-flush: {} of {N} received at the kill; after the restart all {N}, {duplicates} delivered twice",
        at_kill.len()
    );
    assert!(
        duplicates <= max_duplicates,
        "{kind}: at most {max_duplicates} again, not {duplicates}"
    );
    host.stop();
    bus.remove().await;
}

#[tokio::test]
async fn rabbitmq_host_killed_mid_flush_loses_nothing() {
    killed_mid_flush_loses_nothing("rabbitmq", 20).await;
}

#[tokio::test]
async fn redis_host_killed_mid_flush_loses_nothing() {
    killed_mid_flush_loses_nothing("redis", 20).await;
}

#[tokio::test]
async fn mqtt_host_killed_mid_flush_loses_nothing() {
    killed_mid_flush_loses_nothing("mqtt", 20).await;
}

/// A sink whose broker is unreachable: its outbox grows to `max_pending`,
/// then the plugin publishing to it pauses (its events wait in the log).
/// `outbox status` shows the waiting messages and the last error; `outbox
/// flush` sends them once the broker is there; `outbox purge` deletes what
/// the broker refused.
#[tokio::test]
async fn a_full_outbox_pauses_its_publisher_and_the_outbox_commands_drain_it() {
    let db = TestDb::new().await;
    let bus = NatsStream::new().await;
    let subject = format!("{}.items", bus.prefix);
    // Nothing listens on port 1.
    let config = nats_config("nats://127.0.0.1:1", &subject, "batch_size = 5\n")
        .replace("burst = 50", "burst = 50\nmax_pending = 5");
    let mut host = Host::start_with(&db, plugins_dir(&["publisher"]), settings_with(&config)).await;
    let client = db.client().await;
    client
        .execute(
            "INSERT INTO items (id, name) SELECT g, 'row' FROM generate_series(1, 50) g",
            &[],
        )
        .await
        .unwrap();
    eventually(
        &client,
        "the outbox fills to max_pending",
        "SELECT count(*) >= 5 FROM pgevents.outbox",
    )
    .await;
    host.settle(Duration::from_secs(2)).await;
    let waiting: i64 = client
        .query_one("SELECT count(*) FROM pgevents.outbox", &[])
        .await
        .unwrap()
        .get(0);
    assert!(
        (5..50).contains(&waiting),
        "the plugin paused at the limit rather than filling the outbox: {waiting} waiting"
    );
    host.stop().await;

    let status = host_bin()
        .args(["outbox", "status", "--database-url", &db.url])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success(), "{text}");
    assert!(
        text.contains(&format!("outbox to sink bus: {waiting} waiting"))
            && text.contains("last error"),
        "{text}"
    );
    // The broker is back (the right URL): flush sends everything waiting.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("host.toml");
    std::fs::write(&file, nats_config(&nats_url(), &subject, "")).unwrap();
    let flush = host_bin()
        .args(["outbox", "flush", "--database-url", &db.url, "--config"])
        .arg(&file)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&flush.stdout);
    assert!(
        flush.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&flush.stderr)
    );
    assert!(
        text.contains(&format!("sink bus: {waiting} message(s) sent")),
        "{text}"
    );
    assert_eq!(bus.all().await.len() as i64, waiting);
    // A host with the broker delivers the rest, each message once.
    let host = Host::start_with(
        &db,
        plugins_dir(&["publisher"]),
        settings_with(&nats_config(&nats_url(), &subject, "")),
    )
    .await;
    let received = bus.wait_for(50).await;
    assert_eq!(check_messages(&received, 50), 0);
    host.stop().await;
    let purge = host_bin()
        .args(["outbox", "purge", "--database-url", &db.url])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&purge.stdout).contains("0 message(s) deleted"),
        "nothing was refused"
    );
}

/// Two hosts with the same sink: one flushes it at a time, under its lease.
/// Host B (no plugins) holds the lease; host A's plugin records messages, and
/// B is woken by A's NOTIFY (the flushers poll only hourly here, so nothing
/// would arrive without it); A never connects to the broker. B is SIGKILLed:
/// A takes the lease over when it expires and flushes what waited, then is
/// woken in-process for what it records next. Redis does not drop repeats,
/// so every duplicate shows: none without a kill mid-burst.
#[tokio::test]
async fn two_hosts_flush_a_sink_one_at_a_time_woken_across_hosts_and_one_takes_over_when_the_other_dies()
 {
    let db = TestDb::new().await;
    let (mut bus, subject) = Bus::new("redis").await;
    let (proxy_a, proxy_b) = (
        Proxy::start(&broker("redis")).await,
        Proxy::start(&broker("redis")).await,
    );
    let config = |dir: &Path, proxy: &Proxy| {
        let path = dir.join("host.toml");
        let toml = sink_config("redis", &proxy.addr(), &subject)
            .replace("burst = 50", "burst = 50\npoll_interval = \"1h\"");
        std::fs::write(&path, toml).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let args = |config: &str| {
        [
            "--config".to_owned(),
            config.to_owned(),
            "--lease-ttl".into(),
            "3s".into(),
            "--handle-timeout".into(),
            "1s".into(),
        ]
    };
    let dir_b = plugins_dir(&[]);
    let config_b = config(dir_b.path(), &proxy_b);
    let args_b = args(&config_b);
    let mut host_b = HostProcess::spawn(&db, dir_b.path(), &args_b.each_ref().map(|s| s.as_str()));
    let client = db.client().await;
    eventually(
        &client,
        "host B installed the schema",
        "SELECT to_regclass('pgevents.leases') IS NOT NULL",
    )
    .await;
    eventually(
        &client,
        "host B holds the sink's lease",
        "SELECT EXISTS (SELECT FROM pgevents.leases WHERE plugin = '@sink:bus')",
    )
    .await;
    let owner_b = texts(
        &client,
        "SELECT owner FROM pgevents.leases WHERE plugin = '@sink:bus'",
    )
    .await;
    let dir_a = plugins_dir(&["publisher"]);
    let config_a = config(dir_a.path(), &proxy_a);
    let args_a = args(&config_a);
    let mut host_a = HostProcess::spawn(&db, dir_a.path(), &args_a.each_ref().map(|s| s.as_str()));
    eventually(
        &client,
        "host A installed the capture triggers",
        "SELECT count(*) = 4 FROM pg_trigger
         WHERE tgrelid = 'items'::regclass AND tgname LIKE 'pgevents_capture_%'",
    )
    .await;
    let insert = |from: i64, to: i64| {
        format!(
            "INSERT INTO items (id, name, qty) SELECT g, 'row', 0 FROM generate_series({from}, {to}) g"
        )
    };
    for k in 0..5 {
        client
            .execute(&insert(k * 100 + 1, k * 100 + 100), &[])
            .await
            .unwrap();
    }
    let mut received = Vec::new();
    bus.receive(500, &mut received).await;
    assert_eq!(check_messages(&received, 500), 0, "no duplicates");
    assert_eq!(
        proxy_a.connections(),
        0,
        "host A never reached the broker: B flushes the sink"
    );
    assert_eq!(
        texts(
            &client,
            "SELECT owner FROM pgevents.leases WHERE plugin = '@sink:bus'"
        )
        .await,
        owner_b,
        "the lease stayed B's"
    );

    host_b.kill9();
    client.execute(&insert(501, 1000), &[]).await.unwrap();
    bus.receive(1000, &mut received).await;
    assert!(proxy_a.connections() > 0, "host A took the sink over");
    // Now A flushes: what it records next wakes its own flusher.
    client.execute(&insert(1001, 1200), &[]).await.unwrap();
    bus.receive(1200, &mut received).await;
    let duplicates = check_messages(&received, 1200);
    eprintln!("two hosts, B killed while idle: 1200 messages, {duplicates} delivered twice");
    assert_eq!(duplicates, 0, "B was idle when killed: nothing sent twice");
    host_a.stop();
    bus.remove().await;
}
