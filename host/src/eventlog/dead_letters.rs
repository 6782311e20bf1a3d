//! Failed deliveries: per-event attempt counts (kept in the database so that
//! they survive restarts), and the dead-letter table an event goes to when
//! the plugin gives up on it.

use std::collections::HashMap;

use serde::Serialize;
use tokio_postgres::{Client, GenericClient};

use super::{AFTER_EVENT_COLUMNS, EVENT_COLUMNS, EventRef, LoggedEvent, Position, Stream};
use crate::schema::{NOTIFY_CHANNEL, SCHEMA};

/// Failed attempts so far of the stream's events that failed at least once.
pub async fn failures(
    client: &impl GenericClient,
    stream: &Stream,
) -> Result<HashMap<Position, u32>, tokio_postgres::Error> {
    let rows = client
        .query(
            &format!(
                "SELECT ord, seq, failures FROM {SCHEMA}.attempts WHERE plugin = $1 AND part = $2"
            ),
            &[&stream.plugin, &(stream.part as i32)],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            (
                Position {
                    ord: r.get(0),
                    seq: r.get(1),
                },
                r.get::<_, i32>(2) as u32,
            )
        })
        .collect())
}

/// Count one more failed attempt of `event` (at `at`); returns the total.
pub async fn record_failure(
    client: &impl GenericClient,
    stream: &Stream,
    at: Position,
    event: EventRef,
    error: &str,
) -> Result<u32, tokio_postgres::Error> {
    let row = client
        .query_one(
            &format!(
                "INSERT INTO {SCHEMA}.attempts AS a (plugin, part, txid, seq, ord, failures, last_error)
                 VALUES ($1, $2, $3::text::xid8, $4, $6, 1, $5)
                 ON CONFLICT (plugin, part, txid, seq) DO UPDATE
                 SET failures = a.failures + 1, last_failed_at = now(), last_error = $5
                 RETURNING failures"
            ),
            &[
                &stream.plugin,
                &(stream.part as i32),
                &event.txid.to_string(),
                &event.seq,
                &error,
                &at.ord,
            ],
        )
        .await?;
    Ok(row.get::<_, i32>(0) as u32)
}

/// Move `event` (at `at`) to the dead letters and the cursor past it, in one
/// transaction. Returns false (and changes nothing) if the lease is gone.
pub async fn bury(
    client: &mut Client,
    stream: &Stream,
    at: Position,
    event: EventRef,
    error: &str,
    attempts: u32,
) -> Result<bool, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    tx.execute(
        &format!(
            "INSERT INTO {SCHEMA}.dead_letters
                 (plugin, txid, seq, op, schema_name, table_name, pk, new_row, old_row,
                  captured_at, db_user, app_name, tag, error, attempts, first_failed_at)
             SELECT $1, e.txid, e.seq, e.op, e.schema_name, e.table_name, e.pk, e.new_row, e.old_row,
                    e.captured_at, e.db_user, e.app_name, e.tag, $5, $6,
                    coalesce((SELECT a.first_failed_at FROM {SCHEMA}.attempts a
                              WHERE a.plugin = $1 AND a.part = $2 AND a.txid = e.txid AND a.seq = e.seq),
                             now())
             FROM {SCHEMA}.events e WHERE e.txid = $3::text::xid8 AND e.seq = $4
             ON CONFLICT (plugin, txid, seq) DO UPDATE
             SET error = $5, attempts = $6, dead_at = now(), redeliver = false"
        ),
        &[
            &stream.plugin,
            &(stream.part as i32),
            &event.txid.to_string(),
            &event.seq,
            &error,
            &(attempts as i32),
        ],
    )
    .await?;
    if !super::ack_with(&tx, None, stream, at).await? {
        return Ok(false);
    }
    tx.commit().await?;
    Ok(true)
}

/// A dead letter the operator asked to deliver again.
#[derive(Debug, Clone)]
pub struct Redelivery {
    pub id: i64,
    pub event: LoggedEvent,
    /// Attempts made so far (the redelivery is attempt `attempts + 1`).
    pub attempts: u32,
}

/// Up to `limit` dead letters of this stream's partition marked for redelivery, oldest first.
pub async fn pending(
    client: &impl GenericClient,
    stream: &Stream,
    limit: u32,
) -> Result<Vec<Redelivery>, tokio_postgres::Error> {
    let rows = client
        .query(
            &format!(
                "SELECT 0::bigint, {EVENT_COLUMNS}, e.id, e.attempts FROM {SCHEMA}.dead_letters e
                 WHERE e.plugin = $1 AND e.redeliver
                   AND CASE WHEN {} THEN $3 = 0
                            ELSE {SCHEMA}.part_of(e.schema_name, e.table_name, e.pk, $2) = $3 END
                 ORDER BY e.id LIMIT $4",
                super::barrier("e")
            ),
            &[
                &stream.plugin,
                &(stream.parts as i32),
                &(stream.part as i32),
                &i64::from(limit),
            ],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Redelivery {
            event: LoggedEvent::from_row(r),
            id: r.get(AFTER_EVENT_COLUMNS),
            attempts: r.get::<_, i32>(AFTER_EVENT_COLUMNS + 1) as u32,
        })
        .collect())
}

/// Whether any dead letter of `plugin` waits for redelivery (a cheap check).
pub async fn any_pending(
    client: &impl GenericClient,
    plugin: &str,
) -> Result<bool, tokio_postgres::Error> {
    let row = client
        .query_one(
            &format!(
                "SELECT EXISTS (SELECT 1 FROM {SCHEMA}.dead_letters WHERE plugin = $1 AND redeliver)"
            ),
            &[&plugin],
        )
        .await?;
    Ok(row.get(0))
}

/// The redelivered dead letters `ids` were handled: they are gone, if the
/// stream's lease still holds (returns whether it did).
pub async fn settle(
    client: &impl GenericClient,
    stream: &Stream,
    ids: &[i64],
) -> Result<bool, tokio_postgres::Error> {
    let row = client
        .query_one(
            &format!("SELECT {SCHEMA}.settle_dead_letters($1, $2, $3, $4)"),
            &[&stream.plugin, &(stream.part as i32), &stream.token, &ids],
        )
        .await?;
    Ok(row.get(0))
}

/// The redelivered dead letter `id` failed again: it stays, with the new error.
pub async fn failed_again(
    client: &impl GenericClient,
    id: i64,
    error: &str,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            &format!(
                "UPDATE {SCHEMA}.dead_letters
                 SET redeliver = false, attempts = attempts + 1, error = $2, dead_at = now()
                 WHERE id = $1"
            ),
            &[&id, &error],
        )
        .await?;
    Ok(())
}

/// One row of `pgevents-host dead-letters list`.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    pub id: i64,
    pub plugin: String,
    /// The event (`TXID/SEQ`).
    pub event: EventRef,
    pub event_id: String,
    pub operation: String,
    pub table: String,
    pub key: Option<String>,
    pub error: String,
    pub attempts: u32,
    pub first_failed_at: String,
    pub dead_at: String,
    pub redeliver: bool,
}

/// Which dead letters a CLI command acts on.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    pub plugin: Option<String>,
    pub id: Option<i64>,
}

const SELECTED: &str = "($1::text IS NULL OR e.plugin = $1) AND ($2::bigint IS NULL OR e.id = $2)";

pub async fn list(
    client: &impl GenericClient,
    which: &Selection,
) -> Result<Vec<DeadLetter>, tokio_postgres::Error> {
    let rows = client
        .query(
            &format!(
                "SELECT 0::bigint, {EVENT_COLUMNS}, e.id, e.plugin, e.error, e.attempts,
                        to_char(e.first_failed_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'),
                        to_char(e.dead_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'),
                        e.redeliver
                 FROM {SCHEMA}.dead_letters e WHERE {SELECTED} ORDER BY e.plugin, e.id"
            ),
            &[&which.plugin, &which.id],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            let event = LoggedEvent::from_row(r);
            let at = |i: usize| AFTER_EVENT_COLUMNS + i;
            DeadLetter {
                id: r.get(at(0)),
                plugin: r.get(at(1)),
                event: event.event_ref(),
                event_id: event.id().to_string(),
                operation: format!("{:?}", event.op).to_lowercase(),
                table: crate::schema::quote_table(&event.schema, &event.table),
                key: event.key,
                error: r.get(at(2)),
                attempts: r.get::<_, i32>(at(3)) as u32,
                first_failed_at: r.get(at(4)),
                dead_at: r.get(at(5)),
                redeliver: r.get(at(6)),
            }
        })
        .collect())
}

/// Mark the selected dead letters for redelivery to their plugin, and wake
/// the hosts. Returns how many were marked.
pub async fn redeliver(
    client: &impl GenericClient,
    which: &Selection,
) -> Result<u64, tokio_postgres::Error> {
    let marked = client
        .execute(
            &format!("UPDATE {SCHEMA}.dead_letters e SET redeliver = true WHERE {SELECTED}"),
            &[&which.plugin, &which.id],
        )
        .await?;
    client
        .execute(&format!("NOTIFY {NOTIFY_CHANNEL}"), &[])
        .await?;
    Ok(marked)
}

/// Delete the selected dead letters. Returns how many went.
pub async fn purge(
    client: &impl GenericClient,
    which: &Selection,
) -> Result<u64, tokio_postgres::Error> {
    client
        .execute(
            &format!("DELETE FROM {SCHEMA}.dead_letters e WHERE {SELECTED}"),
            &[&which.plugin, &which.id],
        )
        .await
}
