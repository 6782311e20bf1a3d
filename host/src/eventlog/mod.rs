//! The event log in commit order: ticks, reading after a cursor, acknowledging,
//! replay, retention.
//!
//! A transaction's id is taken at its first write, not at commit, so neither
//! `txid` nor `seq` order is the order in which rows changed. A *tick*
//! (`pgevents.tick()`, migration 5) takes a snapshot and numbers the
//! transactions that became visible since the last tick (`ord` in
//! `pgevents.commits`); within one tick by their last event's `seq`. A
//! position is `(ord, seq)`: the transaction's number and the event's
//! sequence number. Events are delivered in position order, which is every
//! row's own history and, across rows, commit order at tick granularity, with
//! each transaction's events together. A long-running transaction holds
//! nobody back: it gets its number in the tick after it commits.
//!
//! Files: `tick.rs` (numbering commits), `reader.rs` (reading after a cursor,
//! acknowledging, barriers), `cursors.rs` (creating, reading, repartitioning
//! cursors), `replay.rs`, `retention.rs` (pruning), `dead_letters.rs`.

mod cursors;
pub mod dead_letters;
mod open_writers;
mod reader;
mod replay;
mod retention;
mod tick;

pub(crate) use cursors::position_text;
pub use cursors::{RepartitionError, cursor, describe, ensure_cursors, repartition};
pub use open_writers::{OpenWriter, open_writers};
pub use reader::{Batch, Reader, Within, ack_with, barrier_open};
pub use replay::{ReplayError, ReplayFrom, Replayed, replay};
pub use retention::{RETENTION_BATCH_ROWS, prune};
pub use tick::{Tick, tick};

pub use crate::event::{EventRef, LoggedEvent, Op, Position};

use tokio_postgres::{GenericClient, Row};

use crate::schema::SCHEMA;

/// The columns [`LoggedEvent::from_row`] reads, from the log (or the dead
/// letters) as `e`, after the position's `ord`.
pub(crate) const EVENT_COLUMNS: &str = "e.txid::text, e.seq, e.op, e.schema_name, e.table_name,
    e.pk::text, e.new_row::text, e.old_row::text,
    to_char(e.captured_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'),
    e.db_user, e.app_name, e.tag";

/// Columns of a row after [`EVENT_COLUMNS`] (and the `ord` before them) start here.
pub(crate) const AFTER_EVENT_COLUMNS: usize = 13;
impl LoggedEvent {
    /// From `ord, EVENT_COLUMNS`.
    pub(crate) fn from_row(row: &Row) -> LoggedEvent {
        LoggedEvent {
            position: Position {
                ord: row.get(0),
                seq: row.get(2),
            },
            txid: parse_txid(row.get(1)),
            op: Op::from_code(row.get(3)),
            schema: row.get(4),
            table: row.get(5),
            key: row.get(6),
            new_row: row.get(7),
            old_row: row.get(8),
            captured_at: row.get(9),
            user: row.get(10),
            application_name: row.get(11),
            tag: row.get(12),
        }
    }
}

pub(crate) fn parse_txid(text: &str) -> u64 {
    text.parse().unwrap_or(0)
}
/// SQL condition: subscription `s` is to the table event `e` came from. By
/// name: a table's events carry the name its plugins subscribed to it by,
/// even after it was renamed (see `capture.sql`).
pub(crate) fn same_table(s: &str, e: &str) -> String {
    format!("({s}.schema_name = {e}.schema_name AND {s}.table_name = {e}.table_name)")
}

/// SQL condition: event `e` matches a subscription of the plugin named by `plugin`
/// (operation, and for updates the changed-columns filter).
pub(crate) fn subscribed(e: &str, plugin: &str) -> String {
    format!(
        "EXISTS (SELECT 1 FROM {SCHEMA}.subscriptions s
                 WHERE s.plugin = {plugin} AND {} AND {e}.op = ANY (s.ops)
                   AND ({e}.op <> 'U' OR s.changed_columns IS NULL OR EXISTS (
                         SELECT 1 FROM unnest(s.changed_columns) AS c
                         WHERE {e}.new_row -> c IS DISTINCT FROM {e}.old_row -> c)))",
        same_table("s", e)
    )
}

/// SQL condition: event `e` orders every partition of a stream: a TRUNCATE,
/// or an update that changed the row's primary key (it belongs to two keys,
/// perhaps of two partitions). With partitions, every partition stops before
/// it, partition 0 delivers it, then all go on (see [`Reader::read`]).
pub(crate) fn barrier(e: &str) -> String {
    format!(
        "({e}.op = 'T' OR ({e}.op = 'U' AND jsonb_typeof({e}.pk) = 'object'
            AND {e}.pk IS DISTINCT FROM {SCHEMA}.key_of({e}.old_row, ARRAY(SELECT jsonb_object_keys({e}.pk)))))"
    )
}

/// SQL condition: event `e` is delivered by partition row `c` (with `part`
/// and `parts`): by key hash, and a [`barrier`] by partition 0.
pub(crate) fn in_partition(e: &str, c: &str) -> String {
    format!(
        "({c}.parts = 1 OR CASE WHEN {} THEN {c}.part = 0
                              ELSE {SCHEMA}.part_of({e}.schema_name, {e}.table_name, {e}.pk, {c}.parts) = {c}.part END)",
        barrier(e)
    )
}

/// SQL FROM item: the log rows `e` of numbered transactions `k`.
pub(crate) const NUMBERED_EVENTS: &str =
    "(pgevents.commits k JOIN pgevents.events e ON e.txid = k.txid)";

/// SQL condition on [`NUMBERED_EVENTS`]: the position `(k.ord, e.seq)` is
/// in `(from, to]`, both given as `(ord, seq)` SQL expressions.
pub(crate) fn between(from: (&str, &str), to: (&str, &str)) -> String {
    let ((from_ord, from_seq), (to_ord, to_seq)) = (from, to);
    format!(
        "k.ord >= {from_ord} AND k.ord <= {to_ord}
         AND (k.ord, e.seq) > ({from_ord}, {from_seq}) AND (k.ord, e.seq) <= ({to_ord}, {to_seq})"
    )
}

/// One partition of one plugin's stream, as a deliverer holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stream {
    pub plugin: String,
    pub part: u32,
    pub parts: u32,
    /// The lease token (see `leases.rs`).
    pub token: uuid::Uuid,
    /// The cursor's rewind count when it was read.
    pub rewinds: i64,
}

impl std::fmt::Display for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.parts == 1 {
            write!(f, "{}", self.plugin)
        } else {
            write!(f, "{}[{}/{}]", self.plugin, self.part, self.parts)
        }
    }
}
/// The position after the last event of the last numbered transaction.
async fn end_of_log(client: &impl GenericClient) -> Result<Position, tokio_postgres::Error> {
    let row = client
        .query_one(
            &format!(
                "SELECT t.last_ord, coalesce(k.last_seq, 0) FROM {SCHEMA}.ticker t
                 LEFT JOIN {SCHEMA}.commits k ON k.ord = t.last_ord WHERE t.id = 1"
            ),
            &[],
        )
        .await?;
    Ok(Position {
        ord: row.get(0),
        seq: row.get(1),
    })
}
