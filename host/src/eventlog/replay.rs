//! Replay: moving cursors back, so that events are delivered again.

use tokio_postgres::Client;

use super::retention::lock_retention;
use super::{
    EventRef, NUMBERED_EVENTS, Position, between, describe, end_of_log, in_partition, subscribed,
};
use crate::schema::SCHEMA;

/// Where a replay starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayFrom {
    /// Every transaction that committed (was numbered) at or after this time:
    /// every event captured since, and possibly some captured shortly before
    /// in transactions that committed after it.
    Time(std::time::SystemTime),
    /// Every event after this one, in delivery order (`TXID/0`: the whole
    /// transaction `TXID` and everything after it).
    After(EventRef),
    /// Everything the log still holds.
    Start,
}

/// What a replay did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Replayed {
    pub cursor: Position,
    /// `cursor` as the command line writes it (see [`describe`]).
    pub cursor_text: String,
    /// Partitions moved back (those already at or before `cursor` stay).
    pub partitions: u32,
    /// Events that will be delivered again.
    pub events: i64,
    /// The oldest log row still held, if any: events before it were pruned.
    pub oldest_retained: Option<Position>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("no plugin named `{0}` has a cursor (see `pgevents-host status`)")]
    Unknown(String),
    #[error(
        "no event {0} in the log: its transaction was pruned, has not committed, or does not exist (`status` shows cursors as TXID/SEQ)"
    )]
    NoSuchEvent(EventRef),
    #[error("database error: {0}")]
    Db(String),
}

impl From<tokio_postgres::Error> for ReplayError {
    fn from(e: tokio_postgres::Error) -> Self {
        ReplayError::Db(crate::db::error_text(&e))
    }
}

/// Rewind every partition of `plugin` that is past `from` to it. Running
/// deliverers notice at once (when idle) or at their next acknowledgement
/// (which then fails), and continue from there.
pub async fn replay(
    client: &mut Client,
    plugin: &str,
    from: ReplayFrom,
) -> Result<Replayed, ReplayError> {
    let tx = client.transaction().await?;
    // Not while the log is pruned: the prune would delete what this rewinds to.
    lock_retention(&tx).await?;
    let oldest = tx
        .query_opt(
            &format!("SELECT ord FROM {SCHEMA}.commits ORDER BY ord LIMIT 1"),
            &[],
        )
        .await?
        .map(|r| Position {
            ord: r.get(0),
            seq: 0,
        });
    let cursor = match from {
        ReplayFrom::Start => Position::default(),
        ReplayFrom::After(event) => {
            let ord: Option<i64> = tx
                .query_opt(
                    &format!("SELECT ord FROM {SCHEMA}.commits WHERE txid = $1::text::xid8"),
                    &[&event.txid.to_string()],
                )
                .await?
                .map(|r| r.get(0));
            match ord {
                Some(ord) => Position {
                    ord,
                    seq: event.seq,
                },
                None => return Err(ReplayError::NoSuchEvent(event)),
            }
        }
        ReplayFrom::Time(at) => {
            let first: Option<i64> = tx
                .query_opt(
                    &format!(
                        "SELECT ord FROM {SCHEMA}.commits WHERE ticked_at >= $1 ORDER BY ord LIMIT 1"
                    ),
                    &[&at],
                )
                .await?
                .map(|r| r.get(0));
            match first {
                Some(ord) => Position { ord, seq: 0 },
                // Nothing committed since: replay nothing, from the end.
                None => end_of_log(&tx).await?,
            }
        }
    };
    let known: i64 = tx
        .query_one(
            &format!("SELECT count(*) FROM {SCHEMA}.cursors WHERE plugin = $1"),
            &[&plugin],
        )
        .await?
        .get(0);
    if known == 0 {
        return Err(ReplayError::Unknown(plugin.to_owned()));
    }
    // Only backwards: a partition already before the target keeps its place
    // (moving it forward would skip events it has not had). Every partition's
    // rewind count changes, so that a batch in flight is not acknowledged
    // past the target either.
    let row = tx
        .query_one(
            &format!(
                "WITH old AS (
                     SELECT part, parts, ord, seq FROM {SCHEMA}.cursors WHERE plugin = $1 FOR UPDATE),
                 moved AS (
                     UPDATE {SCHEMA}.cursors c
                     SET ord = CASE WHEN (c.ord, c.seq) > ($2, $3) THEN $2 ELSE c.ord END,
                         seq = CASE WHEN (c.ord, c.seq) > ($2, $3) THEN $3 ELSE c.seq END,
                         rewinds = c.rewinds + 1, updated_at = now()
                     WHERE c.plugin = $1
                     RETURNING c.part)
                 SELECT (SELECT count(*) FROM old WHERE (ord, seq) > ($2, $3)),
                        (SELECT count(*) FROM moved),
                        (SELECT count(*) FROM old o JOIN {NUMBERED_EVENTS} ON {} WHERE {} AND {})",
                between(("$2", "$3"), ("o.ord", "o.seq")),
                subscribed("e", "$1"),
                in_partition("e", "o")
            ),
            &[&plugin, &cursor.ord, &cursor.seq],
        )
        .await?;
    let (partitions, events): (i64, i64) = (row.get(0), row.get(2));
    tx.execute(
        &format!("DELETE FROM {SCHEMA}.attempts WHERE plugin = $1"),
        &[&plugin],
    )
    .await?;
    let cursor_text = describe(&tx, cursor).await?;
    // Wake idle deliverers: they look for a rewind when they find nothing new.
    tx.batch_execute(&format!("NOTIFY {}", crate::schema::NOTIFY_CHANNEL))
        .await?;
    tx.commit().await?;
    Ok(Replayed {
        cursor,
        cursor_text,
        partitions: partitions as u32,
        events,
        oldest_retained: oldest,
    })
}
