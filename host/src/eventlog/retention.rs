//! Retention: deleting log rows every cursor has passed.

use tokio_postgres::{Client, GenericClient};

use super::{Position, end_of_log};
use crate::schema::SCHEMA;

/// How many log rows one prune deletes at most.
pub const RETENTION_BATCH_ROWS: i64 = 10_000;

/// Delete up to `RETENTION_BATCH_ROWS` log rows of the oldest transactions
/// that every cursor has passed (paused plugins' included) and that
/// committed longer than `min_age` ago, and the numbers of transactions left
/// without rows. Returns how many rows went (call again while it returns a
/// full batch). Only one host prunes at a time; the others return 0 at once.
pub async fn prune(
    client: &mut Client,
    min_age: std::time::Duration,
) -> Result<u64, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    let mine = tx
        .query_opt(
            &format!(
                "SELECT 1 FROM {SCHEMA}.locks WHERE name = 'retention' FOR UPDATE SKIP LOCKED"
            ),
            &[],
        )
        .await?
        .is_some();
    if !mine {
        return Ok(0);
    }
    // Up to the oldest cursor. Without any cursor, everything numbered.
    let oldest = tx
        .query_opt(
            &format!("SELECT ord, seq FROM {SCHEMA}.cursors ORDER BY ord, seq LIMIT 1"),
            &[],
        )
        .await?;
    let floor = match oldest {
        Some(row) => Position {
            ord: row.get(0),
            seq: row.get(1),
        },
        None => Position {
            ord: end_of_log(&tx).await?.ord + 1,
            seq: 0,
        },
    };
    let doomed = |ord: &str| {
        format!(
            "SELECT ord, txid FROM {SCHEMA}.commits
             WHERE ord <= {ord} AND ticked_at < now() - make_interval(secs => $2)
             ORDER BY ord LIMIT $1"
        )
    };
    let limit = RETENTION_BATCH_ROWS;
    let min_age = min_age.as_secs_f64();
    let deleted = tx
        .execute(
            &format!(
                "WITH doomed AS (
                     SELECT e.txid, e.seq FROM ({}) AS k
                     CROSS JOIN LATERAL (
                         SELECT e.txid, e.seq FROM {SCHEMA}.events e
                         WHERE e.txid = k.txid
                           -- The oldest cursor's own transaction up to it only:
                           -- a bound of the index scan, not a filter.
                           AND e.seq <= CASE WHEN k.ord < $3 THEN 9223372036854775807 ELSE $4 END
                         ORDER BY e.seq LIMIT $1) AS e
                     LIMIT $1)
                 DELETE FROM {SCHEMA}.events e USING doomed d
                 WHERE e.txid = d.txid AND e.seq = d.seq",
                doomed("$3::bigint")
            ),
            &[&limit, &min_age, &floor.ord, &floor.seq],
        )
        .await?;
    // Numbers of transactions left without rows go too; a cursor's own stays
    // (`status` names the cursor by it).
    tx.execute(
        &format!(
            "DELETE FROM {SCHEMA}.commits k USING ({}) AS d
             WHERE k.ord = d.ord
               AND NOT EXISTS (SELECT 1 FROM {SCHEMA}.events e WHERE e.txid = k.txid)",
            doomed("$3::bigint - 1")
        ),
        &[&limit, &min_age, &floor.ord],
    )
    .await?;
    tx.commit().await?;
    Ok(deleted)
}

/// Wait for the retention lock (a row only the host's role may lock) until
/// the transaction ends: a rewind (or a new cursor at the start) must not
/// race a prune that read the old cursors.
pub(super) async fn lock_retention(tx: &impl GenericClient) -> Result<(), tokio_postgres::Error> {
    tx.execute(
        &format!("SELECT 1 FROM {SCHEMA}.locks WHERE name = 'retention' FOR UPDATE"),
        &[],
    )
    .await?;
    Ok(())
}
