//! The flusher of one sink: while this host holds the sink's lease
//! (`@sink:NAME` in `pgevents.leases`, renewed with the host's other leases),
//! it reads the sink's waiting messages in order, sends them in bursts, and
//! deletes them once the broker acknowledged them; a message the broker
//! refuses for good is kept with the reason (a dead letter of the outbox).
//! A broker that is down or slow: the burst is sent again after a backoff,
//! and the outbox grows meanwhile (see `max_pending`).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_postgres::{Client, Statement};

use super::OUTBOX_CHANNEL;
use crate::db;
use crate::leases;
use crate::schema::SCHEMA;
use crate::shutdown::stopped;
use crate::sinks::{BurstResult, Message, Sink, SinkConfig, Unsent};

/// Messages per burst unless the sink says. Measured (`./dev bench`, P9 to
/// NATS): 9,444 messages/s with 100, 13,960 with 500, 15,971 with 2,000; 500
/// keeps most of that while bounding what a lost connection may send twice.
pub const DEFAULT_BURST: u32 = 500;
/// How long a burst may wait to fill after an idle wait, unless the sink says:
/// none, measured (`./dev bench`, P10 at 1,000 messages/s to NATS: p50 29.5 ms
/// with 0, 35.8 ms with 5 ms, 38.5 ms with 20 ms; a backlog fills its bursts
/// anyway). A sink whose broker prefers fewer, fuller bursts can set it.
pub const DEFAULT_LINGER_MS: u64 = 0;
/// Waiting messages past which a sink's publishers pause, unless it says.
pub const DEFAULT_MAX_PENDING: u64 = 100_000;
/// Without a wake-up, the outbox is read this often unless the sink says.
pub const DEFAULT_POLL_INTERVAL_MS: u64 = 1_000;
/// A host that does not hold a sink's lease tries to take it this often.
const LEASE_RETRY_MS: u64 = 2_000;
/// Connecting to a broker, and a burst's acknowledgements, may take this long.
const CONNECT_TIMEOUT_MS: u64 = 10_000;
const SEND_TIMEOUT_MS: u64 = 30_000;

/// The lease that one host at a time holds to flush `sink` (a name no
/// plugin can have).
pub fn lease_name(sink: &str) -> String {
    format!("@sink:{sink}")
}

/// One waiting message as read from the outbox.
struct Row {
    id: i64,
    /// Milliseconds since it was recorded, when read.
    age_ms: f64,
    message: Message,
}

/// Flush `sink` whenever this host holds its lease, until shutdown.
pub(crate) async fn keep_flushing(
    url: String,
    host_id: String,
    sink: String,
    config: SinkConfig,
    ttl: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut failures = 0;
    loop {
        let result = flush_while_leased(&url, &host_id, &sink, &config, ttl, &shutdown).await;
        let delay = match result {
            Ok(()) => {
                failures = 0;
                Duration::from_millis(LEASE_RETRY_MS)
            }
            Err(e) => {
                failures += 1;
                let delay = db::reconnect_delay(failures);
                tracing::warn!(sink = %sink, "outbox flusher: {e}; again in {delay:?}");
                delay
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stopped(&mut shutdown) => return,
        }
    }
}

/// Take the sink's lease if free and flush while holding it. Ok: the lease
/// was another host's, was lost, or shutdown came.
async fn flush_while_leased(
    url: &str,
    host_id: &str,
    sink: &str,
    config: &SinkConfig,
    ttl: Duration,
    shutdown: &watch::Receiver<bool>,
) -> Result<(), String> {
    let mut client = db::connect_once(url)
        .await
        .map_err(|e| db::error_text(&e))?;
    // A lease of this host's from a flusher session that broke: the lease
    // coordinator renews every lease of this host, so it would never expire.
    client
        .execute(
            &format!("DELETE FROM {SCHEMA}.leases WHERE plugin = $1 AND owner = $2"),
            &[&lease_name(sink), &host_id],
        )
        .await
        .map_err(|e| db::error_text(&e))?;
    let Some(token) = leases::acquire(&client, host_id, &lease_name(sink), 0, ttl)
        .await
        .map_err(|e| db::error_text(&e))?
    else {
        return Ok(());
    };
    tracing::info!(sink, "flushing the outbox to this sink");
    let (wake_tx, wake) = watch::channel(0u64);
    let wake_tx = Arc::new(wake_tx);
    // Woken by other hosts' notifications, and by this process's deliverers.
    let listener = tokio::spawn(crate::db::listen(
        url.to_owned(),
        OUTBOX_CHANNEL,
        wake_tx.clone(),
        shutdown.clone(),
    ));
    let mut local = super::local_wake();
    let forwarder = tokio::spawn(async move {
        while local.changed().await.is_ok() {
            wake_tx.send_modify(|n| *n += 1);
        }
    });
    super::set_flushing(url, sink, true);
    let result = Flusher {
        sink,
        config,
        broker: None,
        shutdown: shutdown.clone(),
        wake,
    }
    .run(&mut client, token)
    .await;
    super::set_flushing(url, sink, false);
    listener.abort();
    forwarder.abort();
    if let Err(e) = leases::release(&client, token).await {
        tracing::debug!(
            sink,
            "could not hand the sink's lease back: {}",
            db::error_text(&e)
        );
    }
    result
}

struct Flusher<'a> {
    sink: &'a str,
    config: &'a SinkConfig,
    broker: Option<Sink>,
    shutdown: watch::Receiver<bool>,
    /// Bumped on every outbox notification.
    wake: watch::Receiver<u64>,
}

impl Flusher<'_> {
    /// Send bursts while the lease holds.
    async fn run(&mut self, client: &mut Client, token: uuid::Uuid) -> Result<(), String> {
        let burst = i64::from(self.config.burst.unwrap_or(DEFAULT_BURST).max(1));
        let linger = self
            .config
            .linger
            .unwrap_or(Duration::from_millis(DEFAULT_LINGER_MS));
        let poll = self
            .config
            .poll_interval
            .unwrap_or(Duration::from_millis(DEFAULT_POLL_INTERVAL_MS))
            // `0s` would read the outbox in a busy loop.
            .max(Duration::from_millis(10));
        let sql = Statements::prepare(client).await?;
        let lost = |sink: &str| {
            tracing::warn!(sink, "lost the sink's lease; another host flushes it now");
            Ok(())
        };
        let mut failures = 0;
        // After an idle wait, a burst may wait `linger` to fill; after a
        // burst, the next one is read at once (it filled while this one went).
        let mut idle = false;
        loop {
            if *self.shutdown.borrow() {
                return Ok(());
            }
            if idle && !linger.is_zero() {
                tokio::time::sleep(linger).await;
            }
            self.wake.borrow_and_update();
            let (held, rows) = read(client, &sql, self.sink, burst, token).await?;
            if !held {
                return lost(self.sink);
            }
            if rows.is_empty() {
                tokio::select! {
                    _ = self.wake.changed() => {}
                    _ = tokio::time::sleep(poll) => {}
                    _ = stopped(&mut self.shutdown) => return Ok(()),
                }
                idle = true;
                continue;
            }
            idle = false;
            let sending = std::time::Instant::now();
            match self.send(&rows).await {
                Ok(results) => {
                    failures = 0;
                    tracing::debug!(
                        sink = self.sink,
                        messages = rows.len(),
                        oldest_age_ms = rows[0].age_ms,
                        send_us = sending.elapsed().as_micros() as u64,
                        "burst sent"
                    );
                    if !settle(client, &sql, self.sink, token, &rows, &results).await? {
                        // Another host may be sending these now: leave them to it.
                        return lost(self.sink);
                    }
                }
                Err(unsent) => {
                    failures += 1;
                    self.broker = None;
                    let settled = unsent.settled.len();
                    if settled > 0
                        && !settle(
                            client,
                            &sql,
                            self.sink,
                            token,
                            &rows[..settled],
                            &unsent.settled,
                        )
                        .await?
                    {
                        return lost(self.sink);
                    }
                    let rest = &rows[settled..];
                    note_failure(client, self.sink, rest, &unsent.error).await?;
                    let delay = db::reconnect_delay(failures);
                    tracing::warn!(
                        sink = self.sink,
                        messages = rest.len(),
                        "could not send a burst: {unsent}; sending {} again in {delay:?}",
                        if settled > 0 { "the rest" } else { "it" }
                    );
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = stopped(&mut self.shutdown) => return Ok(()),
                    }
                }
            }
        }
    }

    /// Send `rows` as one burst, connecting first if need be.
    async fn send(&mut self, rows: &[Row]) -> Result<BurstResult, Unsent> {
        if self.broker.is_none() {
            let sink =
                Sink::connect(self.config, Duration::from_millis(CONNECT_TIMEOUT_MS)).await?;
            self.broker = Some(sink);
        }
        let broker = self.broker.as_mut().expect("connected");
        let messages: Vec<Message> = rows.iter().map(|r| r.message.clone()).collect();
        broker
            .send(&messages, Duration::from_millis(SEND_TIMEOUT_MS))
            .await
    }
}

/// The flusher's two statements, prepared once per session: each checks the
/// lease in the same round trip.
struct Statements {
    read: Statement,
    settle: Statement,
}

impl Statements {
    async fn prepare(client: &Client) -> Result<Statements, String> {
        let err = |e: tokio_postgres::Error| db::error_text(&e);
        // A settle lost in a crash only sends its burst again (at least
        // once; NATS drops the repeats): it need not wait for the disk.
        client
            .batch_execute("SET synchronous_commit = off")
            .await
            .map_err(err)?;
        // Whether the lease holds, then the sink's first waiting messages in
        // order (none if it does not hold).
        let read = client
            .prepare(&format!(
                "SELECT h.held, o.id, o.message_id, o.subject, o.key, o.payload, o.headers,
                        1000 * extract(epoch FROM clock_timestamp() - o.created_at)::float8
                 FROM (SELECT EXISTS (SELECT 1 FROM {SCHEMA}.leases
                                      WHERE token = $3 AND expires_at > clock_timestamp()) AS held) h
                 LEFT JOIN LATERAL (SELECT * FROM {SCHEMA}.outbox
                                    WHERE h.held AND sink = $1 AND refused IS NULL
                                    ORDER BY id LIMIT $2) o ON true
                 ORDER BY o.id"
            ))
            .await
            .map_err(err)?;
        // If the lease holds: delete the acknowledged messages, mark the
        // refused ones with the broker's reason, count what went. One
        // statement, so one transaction.
        let settle = client
            .prepare(&format!(
                "WITH held AS (SELECT EXISTS (SELECT 1 FROM {SCHEMA}.leases
                                              WHERE token = $1 AND expires_at > clock_timestamp()) AS held),
                      sent AS (DELETE FROM {SCHEMA}.outbox
                               WHERE id = ANY ($2::bigint[]) AND (SELECT held FROM held)
                               RETURNING 1),
                      refused AS (UPDATE {SCHEMA}.outbox o SET refused = r.reason, refused_at = now()
                                  FROM unnest($3::bigint[], $4::text[]) AS r(id, reason)
                                  WHERE o.id = r.id AND (SELECT held FROM held)),
                      counted AS (INSERT INTO {SCHEMA}.sinks AS s (name, sent, last_sent_at)
                                  SELECT $5, count(*), now() FROM sent HAVING (SELECT held FROM held)
                                  ON CONFLICT (name) DO UPDATE
                                  SET sent = s.sent + excluded.sent, last_sent_at = now())
                 -- Data-modifying CTEs run whether or not the query reads them.
                 SELECT held FROM held"
            ))
            .await
            .map_err(err)?;
        Ok(Statements { read, settle })
    }
}

/// Whether the lease `token` holds, and if so the sink's first `limit`
/// waiting messages, in order.
async fn read(
    client: &Client,
    sql: &Statements,
    sink: &str,
    limit: i64,
    token: uuid::Uuid,
) -> Result<(bool, Vec<Row>), String> {
    let rows = client
        .query(&sql.read, &[&sink, &limit, &token])
        .await
        .map_err(|e| db::error_text(&e))?;
    let held = rows.first().is_some_and(|r| r.get::<_, bool>(0));
    Ok((
        held,
        rows.iter()
            .filter(|r| r.get::<_, Option<i64>>(1).is_some())
            .map(|r| {
                let headers: serde_json::Value = r.get(6);
                Row {
                    id: r.get(1),
                    age_ms: r.get(7),
                    message: Message {
                        id: r.get(2),
                        subject: r.get(3),
                        key: r.get(4),
                        payload: r.get(5),
                        headers: serde_json::from_value(headers).unwrap_or_default(),
                    },
                }
            })
            .collect(),
    ))
}

/// After a burst, while the lease `token` holds: delete what the broker
/// acknowledged, keep what it refused (with its reason). False if the lease
/// is gone (then nothing changed: another host may be sending these now).
async fn settle(
    client: &Client,
    sql: &Statements,
    sink: &str,
    token: uuid::Uuid,
    rows: &[Row],
    results: &[Option<String>],
) -> Result<bool, String> {
    let acked: Vec<i64> = rows
        .iter()
        .zip(results)
        .filter(|(_, r)| r.is_none())
        .map(|(row, _)| row.id)
        .collect();
    let (refused_ids, reasons): (Vec<i64>, Vec<&str>) = rows
        .iter()
        .zip(results)
        .filter_map(|(row, r)| Some((row.id, r.as_deref()?)))
        .unzip();
    let row = client
        .query_one(
            &sql.settle,
            &[&token, &acked, &refused_ids, &reasons, &sink],
        )
        .await
        .map_err(|e| db::error_text(&e))?;
    let held: bool = row.get(0);
    if held {
        for (row, reason) in rows.iter().zip(results) {
            if let Some(reason) = reason {
                tracing::error!(
                    sink, subject = %row.message.subject, message_id = %row.message.id,
                    "the broker refused a message for good: {reason}; it stays in the outbox (see `pgevents-host outbox refused`)"
                );
            }
        }
    }
    Ok(held)
}

/// A burst failed: count it against its messages and remember the error.
async fn note_failure(
    client: &Client,
    sink: &str,
    rows: &[Row],
    error: &str,
) -> Result<(), String> {
    let err = |e: tokio_postgres::Error| db::error_text(&e);
    let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
    client
        .execute(
            &format!("UPDATE {SCHEMA}.outbox SET attempts = attempts + 1 WHERE id = ANY ($1)"),
            &[&ids],
        )
        .await
        .map_err(err)?;
    client
        .execute(
            &format!(
                "INSERT INTO {SCHEMA}.sinks AS s (name, last_error, last_error_at) VALUES ($1, $2, now())
                 ON CONFLICT (name) DO UPDATE SET last_error = excluded.last_error, last_error_at = now()"
            ),
            &[&sink, &error],
        )
        .await
        .map_err(err)?;
    Ok(())
}

/// `pgevents-host outbox flush`: send every waiting message of `sink` now and
/// return how many went, unless a running host holds the sink's lease (then
/// it sends them, and this says so).
pub async fn flush_now(url: &str, sink: &str, config: &SinkConfig) -> Result<FlushReport, String> {
    let client = db::connect_once(url)
        .await
        .map_err(|e| db::error_text(&e))?;
    let host_id = format!("cli:{}", leases::new_host_id());
    let ttl = Duration::from_secs(60);
    let Some(token) = leases::acquire(&client, &host_id, &lease_name(sink), 0, ttl)
        .await
        .map_err(|e| db::error_text(&e))?
    else {
        return Ok(FlushReport::HeldByAHost);
    };
    let (_stop, shutdown) = watch::channel(false);
    let (_wake_tx, wake) = watch::channel(0u64);
    let mut flusher = Flusher {
        sink,
        config,
        broker: None,
        shutdown,
        wake,
    };
    let burst = i64::from(config.burst.unwrap_or(DEFAULT_BURST).max(1));
    let mut sent = 0;
    let mut refused = 0;
    let result = async {
        let sql = Statements::prepare(&client).await?;
        loop {
            let (held, rows) = read(&client, &sql, sink, burst, token).await?;
            if !held {
                return Err("lost the sink's lease (another process took it)".to_owned());
            }
            if rows.is_empty() {
                return Ok(());
            }
            let (results, unsent) = match flusher.send(&rows).await {
                Ok(results) => (results, None),
                Err(unsent) => (unsent.settled, Some(unsent.error)),
            };
            refused += results.iter().filter(|r| r.is_some()).count();
            sent += results.iter().filter(|r| r.is_none()).count();
            if !results.is_empty() {
                settle(&client, &sql, sink, token, &rows[..results.len()], &results).await?;
            }
            if let Some(error) = unsent {
                note_failure(&client, sink, &rows[results.len()..], &error).await?;
                return Err(error);
            }
            // Long flushes keep the lease.
            leases::renew(&client, &host_id, ttl)
                .await
                .map_err(|e| db::error_text(&e))?;
        }
    }
    .await;
    let _ = leases::release(&client, token).await;
    result.map(|()| FlushReport::Flushed { sent, refused })
}

/// What `outbox flush` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushReport {
    Flushed {
        sent: usize,
        refused: usize,
    },
    /// A running host flushes this sink.
    HeldByAHost,
}
