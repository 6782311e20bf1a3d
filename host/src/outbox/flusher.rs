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
use tokio_postgres::Client;

use super::OUTBOX_CHANNEL;
use crate::db;
use crate::leases;
use crate::schema::SCHEMA;
use crate::shutdown::stopped;
use crate::sinks::{BurstResult, Message, Sink, SinkConfig, Unsent};

/// Messages per burst unless the sink says.
pub const DEFAULT_BURST: u32 = 500;
/// How long a burst may wait to fill once a message waits, unless the sink says.
pub const DEFAULT_LINGER_MS: u64 = 5;
/// Waiting messages past which a sink's publishers pause, unless it says.
pub const DEFAULT_MAX_PENDING: u64 = 100_000;
/// Without a notification, the outbox is looked at this often anyway.
const IDLE_POLL_MS: u64 = 1_000;
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
    let listener = tokio::spawn(crate::db::listen(
        url.to_owned(),
        OUTBOX_CHANNEL,
        Arc::new(wake_tx),
        shutdown.clone(),
    ));
    let result = Flusher {
        sink,
        config,
        broker: None,
        shutdown: shutdown.clone(),
        wake,
    }
    .run(&mut client, token)
    .await;
    listener.abort();
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
        let mut failures = 0;
        loop {
            if *self.shutdown.borrow() {
                return Ok(());
            }
            if !leases::holds(&*client, token)
                .await
                .map_err(|e| db::error_text(&e))?
            {
                tracing::warn!(
                    sink = self.sink,
                    "lost the sink's lease; another host flushes it now"
                );
                return Ok(());
            }
            self.wake.borrow_and_update();
            let mut rows = read(client, self.sink, burst).await?;
            if rows.is_empty() {
                tokio::select! {
                    _ = self.wake.changed() => {}
                    _ = tokio::time::sleep(Duration::from_millis(IDLE_POLL_MS)) => {}
                    _ = stopped(&mut self.shutdown) => return Ok(()),
                }
                continue;
            }
            if (rows.len() as i64) < burst && !linger.is_zero() {
                tokio::time::sleep(linger).await;
                rows = read(client, self.sink, burst).await?;
            }
            match self.send(&rows).await {
                Ok(results) => {
                    failures = 0;
                    let held = leases::holds(&*client, token)
                        .await
                        .map_err(|e| db::error_text(&e))?;
                    if !held {
                        // Another host may be sending these now: leave them to it.
                        tracing::warn!(
                            sink = self.sink,
                            "lost the sink's lease during a burst; another host flushes it now"
                        );
                        return Ok(());
                    }
                    settle(client, self.sink, &rows, &results).await?;
                }
                Err(unsent) => {
                    failures += 1;
                    self.broker = None;
                    let settled = unsent.settled.len();
                    if settled > 0 {
                        if !leases::holds(&*client, token)
                            .await
                            .map_err(|e| db::error_text(&e))?
                        {
                            return Ok(());
                        }
                        settle(client, self.sink, &rows[..settled], &unsent.settled).await?;
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

/// The sink's first `limit` waiting messages, in order.
async fn read(client: &Client, sink: &str, limit: i64) -> Result<Vec<Row>, String> {
    let rows = client
        .query(
            &format!(
                "SELECT id, message_id, subject, key, payload, headers FROM {SCHEMA}.outbox
                 WHERE sink = $1 AND refused IS NULL ORDER BY id LIMIT $2"
            ),
            &[&sink, &limit],
        )
        .await
        .map_err(|e| db::error_text(&e))?;
    Ok(rows
        .iter()
        .map(|r| {
            let headers: serde_json::Value = r.get(5);
            Row {
                id: r.get(0),
                message: Message {
                    id: r.get(1),
                    subject: r.get(2),
                    key: r.get(3),
                    payload: r.get(4),
                    headers: serde_json::from_value(headers).unwrap_or_default(),
                },
            }
        })
        .collect())
}

/// After a burst: delete what the broker acknowledged, keep what it refused
/// (with its reason), in one transaction.
async fn settle(
    client: &mut Client,
    sink: &str,
    rows: &[Row],
    results: &[Option<String>],
) -> Result<(), String> {
    let err = |e: tokio_postgres::Error| db::error_text(&e);
    let acked: Vec<i64> = rows
        .iter()
        .zip(results)
        .filter(|(_, r)| r.is_none())
        .map(|(row, _)| row.id)
        .collect();
    let tx = client.transaction().await.map_err(err)?;
    tx.execute(
        &format!("DELETE FROM {SCHEMA}.outbox WHERE id = ANY ($1)"),
        &[&acked],
    )
    .await
    .map_err(err)?;
    for (row, refused) in rows.iter().zip(results) {
        if let Some(reason) = refused {
            tracing::error!(
                sink, subject = %row.message.subject, message_id = %row.message.id,
                "the broker refused a message for good: {reason}; it stays in the outbox (see `pgevents-host outbox status`)"
            );
            tx.execute(
                &format!(
                    "UPDATE {SCHEMA}.outbox SET refused = $2, refused_at = now() WHERE id = $1"
                ),
                &[&row.id, reason],
            )
            .await
            .map_err(err)?;
        }
    }
    tx.execute(
        &format!(
            "INSERT INTO {SCHEMA}.sinks AS s (name, sent, last_sent_at) VALUES ($1, $2, now())
             ON CONFLICT (name) DO UPDATE SET sent = s.sent + excluded.sent, last_sent_at = now()"
        ),
        &[&sink, &(acked.len() as i64)],
    )
    .await
    .map_err(err)?;
    tx.commit().await.map_err(err)
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
    let mut client = db::connect_once(url)
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
        loop {
            let rows = read(&client, sink, burst).await?;
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
                settle(&mut client, sink, &rows[..results.len()], &results).await?;
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
