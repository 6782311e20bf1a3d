//! Cursors: where each partition of a plugin's stream stands.

use tokio_postgres::{Client, GenericClient};

use super::retention::lock_retention;
use super::{Position, Stream, end_of_log, tick};
use crate::schema::SCHEMA;

/// Make sure `plugin` has cursors. A plugin seen for the first time gets
/// `parts` partitions starting now (after a tick: every transaction that
/// commits from here on), or, `from_beginning`, before the oldest event the
/// log holds. A known plugin keeps the partition count it has (changing it
/// is [`repartition`]'s job): returns that count when it differs from `parts`.
pub async fn ensure_cursors(
    client: &impl GenericClient,
    plugin: &str,
    parts: u32,
    from_beginning: bool,
) -> Result<Option<u32>, tokio_postgres::Error> {
    let existing: Option<i32> = client
        .query_one(
            &format!("SELECT max(parts) FROM {SCHEMA}.cursors WHERE plugin = $1"),
            &[&plugin],
        )
        .await?
        .get(0);
    if let Some(existing) = existing {
        return Ok((existing as u32 != parts).then_some(existing as u32));
    }
    let start = if from_beginning {
        lock_retention(client).await?;
        Position::default()
    } else {
        tick(client, true).await?;
        end_of_log(client).await?
    };
    insert_cursors(client, plugin, parts, start).await?;
    Ok(None)
}

async fn insert_cursors(
    client: &impl GenericClient,
    plugin: &str,
    parts: u32,
    at: Position,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            &format!(
                "INSERT INTO {SCHEMA}.cursors (plugin, part, parts, ord, seq)
                 SELECT $1, p, $2, $3, $4 FROM generate_series(0, $2 - 1) AS p"
            ),
            &[&plugin, &(parts as i32), &at.ord, &at.seq],
        )
        .await?;
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum RepartitionError {
    #[error("no plugin named `{0}` has a cursor (see `pgevents-host status`)")]
    Unknown(String),
    #[error(
        "plugin `{plugin}` is being delivered (leases held by {owners}); stop every host that runs it first, so that no batch is in flight while its partitions change"
    )]
    Busy { plugin: String, owners: String },
    #[error("database error: {0}")]
    Db(String),
}

impl From<tokio_postgres::Error> for RepartitionError {
    fn from(e: tokio_postgres::Error) -> Self {
        RepartitionError::Db(crate::db::error_text(&e))
    }
}

/// Split `plugin`'s stream into `parts` partitions. Only while no host
/// delivers it. Every new partition starts at the oldest old cursor: nothing
/// is skipped, and events between the old cursors are delivered again (at
/// least once; a plugin using the sql capability applies those again too).
/// Returns the old count.
pub async fn repartition(
    client: &mut Client,
    plugin: &str,
    parts: u32,
) -> Result<u32, RepartitionError> {
    let tx = client.transaction().await?;
    crate::schema::lock_install(&tx).await?;
    let owners: Option<String> = tx
        .query_one(
            &format!(
                "SELECT string_agg(DISTINCT owner, ', ') FROM {SCHEMA}.leases
                 WHERE plugin = $1 AND expires_at > clock_timestamp()"
            ),
            &[&plugin],
        )
        .await?
        .get(0);
    if let Some(owners) = owners {
        return Err(RepartitionError::Busy {
            plugin: plugin.to_owned(),
            owners,
        });
    }
    let Some(oldest) = tx
        .query_opt(
            &format!(
                "SELECT ord, seq, parts FROM {SCHEMA}.cursors WHERE plugin = $1
                 ORDER BY ord, seq LIMIT 1 FOR UPDATE"
            ),
            &[&plugin],
        )
        .await?
    else {
        return Err(RepartitionError::Unknown(plugin.to_owned()));
    };
    let at = Position {
        ord: oldest.get(0),
        seq: oldest.get(1),
    };
    let old: i32 = oldest.get(2);
    // Leases before cursors: the order `pgevents.ack` locks them in.
    for table in ["leases", "cursors", "attempts"] {
        tx.execute(
            &format!("DELETE FROM {SCHEMA}.{table} WHERE plugin = $1"),
            &[&plugin],
        )
        .await?;
    }
    insert_cursors(&tx, plugin, parts, at).await?;
    tx.commit().await?;
    Ok(old as u32)
}

/// A stream's cursor and its rewind count.
pub async fn cursor(
    client: &impl GenericClient,
    stream: &Stream,
) -> Result<Option<(Position, i64)>, tokio_postgres::Error> {
    // A cursor made for another partition count is not this stream's.
    let row = client
        .query_opt(
            &format!(
                "SELECT ord, seq, rewinds FROM {SCHEMA}.cursors
                 WHERE plugin = $1 AND part = $2 AND parts = $3"
            ),
            &[
                &stream.plugin,
                &(stream.part as i32),
                &(stream.parts as i32),
            ],
        )
        .await?;
    Ok(row.map(|r| {
        (
            Position {
                ord: r.get(0),
                seq: r.get(1),
            },
            r.get(2),
        )
    }))
}

/// A position as the command line shows it: the last event before it
/// (`TXID/SEQ`, what `replay --after` takes), or the start of the log.
pub async fn describe(
    client: &impl GenericClient,
    at: Position,
) -> Result<String, tokio_postgres::Error> {
    let txid: Option<String> = client
        .query_opt(
            &format!("SELECT txid::text FROM {SCHEMA}.commits WHERE ord = $1"),
            &[&at.ord],
        )
        .await?
        .map(|r| r.get(0));
    Ok(position_text(at, txid.as_deref()))
}

/// [`describe`], given the position's transaction id if it is still known.
pub(crate) fn position_text(at: Position, txid: Option<&str>) -> String {
    match txid {
        _ if at.ord == 0 => "the start of the log".into(),
        Some(txid) if at.seq == 0 => format!("{txid}/0 (before transaction {txid})"),
        Some(txid) => format!("{txid}/{}", at.seq),
        None => format!("transaction number {} (pruned), seq {}", at.ord, at.seq),
    }
}
