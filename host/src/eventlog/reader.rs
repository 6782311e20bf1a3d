//! Reading a stream after its cursor, acknowledging, and the barriers that
//! order every partition of a stream.

use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, GenericClient, Row, Statement};

use super::{
    AFTER_EVENT_COLUMNS, EVENT_COLUMNS, LoggedEvent, NUMBERED_EVENTS, Position, Stream, barrier,
    between, parse_txid, same_table,
};
use crate::schema::SCHEMA;

/// Prepared statements of one reader connection.
#[derive(Debug, Clone)]
pub struct Reader {
    batch: Statement,
    /// The next rows of one transaction only: a plain index range scan.
    within: Statement,
    ack: Statement,
}

/// A transaction that the last window ended inside of (it was full): the
/// next window most likely lies within it too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Within {
    pub ord: i64,
    pub txid: u64,
}

impl Reader {
    pub async fn prepare(client: &Client) -> Result<Reader, tokio_postgres::Error> {
        // The next `window` rows in position order: the transactions after
        // the cursor in order, each read in `seq` order off the log's primary
        // key. Ordered by the transactions' numbers already, the rows need
        // only an incremental sort within each transaction, so a window reads
        // about one window of rows whatever the statistics say. Then the
        // plugin's filter: the subscription is joined once per window rather
        // than tested per row (a correlated EXISTS cost ~20 us a row); the
        // key (plugin, schema, table) makes it one row at most.
        let barrier = barrier("e");
        // What the plugin wants of a row `e` with its number `ord`.
        let columns = format!(
            "{EVENT_COLUMNS},
             s.plugin IS NOT NULL AND e.op = ANY (s.ops)
               AND (e.op <> 'U' OR s.changed_columns IS NULL OR EXISTS (
                     SELECT 1 FROM unnest(s.changed_columns) AS col
                     WHERE e.new_row -> col IS DISTINCT FROM e.old_row -> col))
               AND ($5::int = 1 OR {barrier}
                    OR {SCHEMA}.part_of(e.schema_name, e.table_name, e.pk, $5::int) = $6::int)
               AS wanted,
             $5::int > 1 AND {barrier} AS barrier,
             (SELECT t.last_ord FROM {SCHEMA}.ticker t WHERE t.id = 1) AS ticked_to"
        );
        let subscription = format!(
            "LEFT JOIN {SCHEMA}.subscriptions s ON s.plugin = $3 AND {}",
            same_table("s", "e")
        );
        let batch_sql = format!(
            "SELECT e.ord, {columns}
             FROM (SELECT c.ord, ev.*
                   FROM (SELECT ord, txid, CASE WHEN ord = $1::bigint THEN $2::bigint ELSE 0 END AS after
                         FROM {SCHEMA}.commits WHERE ord >= $1::bigint
                         ORDER BY ord LIMIT $4::bigint) AS c
                   CROSS JOIN LATERAL (
                         SELECT * FROM {SCHEMA}.events ev
                         WHERE ev.txid = c.txid AND ev.seq > c.after
                         ORDER BY ev.seq LIMIT $4::bigint) AS ev
                   ORDER BY c.ord, ev.seq
                   LIMIT $4::bigint) AS e
             {subscription}
             ORDER BY e.ord, e.seq"
        );
        // Inside one large transaction (a bulk write read in many windows)
        // the rows need no sort at all; the same columns, for transaction
        // `$1` (id `$7`).
        let within_sql = format!(
            "SELECT $1::bigint, {columns}
             FROM (SELECT * FROM {SCHEMA}.events ev
                   WHERE ev.txid = $7::text::xid8 AND ev.seq > $2::bigint
                   ORDER BY ev.seq LIMIT $4::bigint) AS e
             {subscription}
             ORDER BY e.seq"
        );
        let (batch, within, ack) = tokio::try_join!(
            client.prepare(&batch_sql),
            client.prepare(&within_sql),
            client.prepare(ACK_SQL)
        )?;
        Ok(Reader { batch, within, ack })
    }

    /// The next `window` log rows after `cursor` (of transactions numbered
    /// by a tick so far), and of those the events `plugin` subscribes to, in
    /// delivery order. `within`, the last window's [`Batch::within`], makes a
    /// read that continues inside that transaction a plain range scan (it
    /// stops at the transaction's end: the next read goes on from there).
    pub async fn read(
        &self,
        client: &Client,
        stream: &Stream,
        cursor: Position,
        window: u32,
        within: Option<Within>,
    ) -> Result<Batch, tokio_postgres::Error> {
        let window = i64::from(window);
        let parts = stream.parts as i32;
        let part = stream.part as i32;
        let within_rows = match within.filter(|w| w.ord == cursor.ord) {
            Some(w) => {
                let txid = w.txid.to_string();
                let params: [&(dyn ToSql + Sync); 7] = [
                    &cursor.ord,
                    &cursor.seq,
                    &stream.plugin,
                    &window,
                    &parts,
                    &part,
                    &txid,
                ];
                Some(client.query(&self.within, &params).await?)
            }
            None => None,
        };
        let rows = match within_rows {
            // That transaction had nothing left: what follows is in others.
            Some(rows) if !rows.is_empty() => rows,
            _ => {
                let params: [&(dyn ToSql + Sync); 6] = [
                    &cursor.ord,
                    &cursor.seq,
                    &stream.plugin,
                    &window,
                    &parts,
                    &part,
                ];
                client.query(&self.batch, &params).await?
            }
        };
        let wanted = |r: &Row| r.get::<_, bool>(AFTER_EVENT_COLUMNS);
        let is_barrier = |r: &Row| r.get::<_, bool>(AFTER_EVENT_COLUMNS + 1);
        let ticked_to: Option<i64> = rows.last().map(|r| r.get(AFTER_EVENT_COLUMNS + 2));
        let last_ord: Option<i64> = rows.last().map(|r| r.get(0));
        // More wait after this window: it is full, or it stopped short of the
        // last numbered transaction (at the end of the one it read within).
        let full = rows.len() as i64 == window;
        let mut more = full || last_ord < ticked_to;
        let mut within = rows.last().filter(|_| full).map(|r| Within {
            ord: r.get(0),
            txid: parse_txid(r.get(1)),
        });
        let mut rows = rows.as_slice();
        let mut barrier = None;
        // With partitions, a barrier (a TRUNCATE, a key change): every
        // partition stops before it, partition 0 delivers it alone, then all
        // go on past it.
        if let Some(k) = rows.iter().position(|r| wanted(r) && is_barrier(r)) {
            if k == 0 {
                barrier = Some(LoggedEvent::from_row(&rows[0]));
            }
            rows = &rows[..k];
            more = false;
            within = None;
        }
        let end = rows.last().map(|row| Position {
            ord: row.get(0),
            seq: row.get(2),
        });
        let events = rows
            .iter()
            .filter(|r| wanted(r))
            .map(LoggedEvent::from_row)
            .collect();
        Ok(Batch {
            events,
            end,
            more,
            within,
            barrier,
        })
    }

    /// Move the stream's cursor to `to` if this host still holds its lease and
    /// no replay intervened (see `pgevents.ack`). Returns whether it moved.
    pub async fn ack(
        &self,
        client: &impl GenericClient,
        stream: &Stream,
        to: Position,
    ) -> Result<bool, tokio_postgres::Error> {
        ack_with(client, Some(&self.ack), stream, to).await
    }
}

/// `pgevents.ack`: guarded by the lease token and the rewind count. Every
/// parameter is of a built-in type the server infers from the function's
/// signature: this also runs on a plugin's sql session, where the plugin
/// could shadow unqualified type names in `pg_temp`.
const ACK_SQL: &str = "SELECT pgevents.ack($1, $2, $3, $4, $5, $6, $7)";

/// [`Reader::ack`] on any client (a plugin's SQL session acks in its own
/// transaction), with a prepared statement if the caller has one.
pub async fn ack_with(
    client: &impl GenericClient,
    prepared: Option<&Statement>,
    stream: &Stream,
    to: Position,
) -> Result<bool, tokio_postgres::Error> {
    let part = stream.part as i32;
    let parts = stream.parts as i32;
    let params: [&(dyn ToSql + Sync); 7] = [
        &stream.plugin,
        &part,
        &parts,
        &stream.token,
        &stream.rewinds,
        &to.ord,
        &to.seq,
    ];
    let row = match prepared {
        Some(statement) => client.query_one(statement, &params).await?,
        None => client.query_one(ACK_SQL, &params).await?,
    };
    Ok(row.get(0))
}
/// The result of one read.
#[derive(Debug)]
pub struct Batch {
    /// The window's events that the plugin subscribes to.
    pub events: Vec<LoggedEvent>,
    /// The window's last row: where the cursor goes once `events` are handled
    /// (past the rows the plugin does not subscribe to). `None`: nothing new.
    pub end: Option<Position>,
    /// More numbered rows wait after `end`: read again at once.
    pub more: bool,
    /// The window was full and ended inside this transaction (pass it to
    /// the next read).
    pub within: Option<Within>,
    /// With partitions: the next event is a [`barrier`], which waits for
    /// every partition (see [`barrier_open`]).
    pub barrier: Option<LoggedEvent>,
}

/// Whether the stream may pass the [`barrier`] at `at`: partition 0 (which
/// delivers it) once every other partition has nothing left before it; the
/// others once partition 0 has acknowledged it.
pub async fn barrier_open(
    client: &impl GenericClient,
    stream: &Stream,
    at: Position,
) -> Result<bool, tokio_postgres::Error> {
    let sql = if stream.part == 0 {
        format!(
            "SELECT NOT EXISTS (
                 SELECT 1 FROM {SCHEMA}.cursors c
                 WHERE c.plugin = $1 AND c.parts = $4 AND c.part <> 0
                   AND EXISTS (SELECT 1 FROM {NUMBERED_EVENTS}
                               WHERE {} AND (k.ord, e.seq) < ($2, $3)))",
            between(("c.ord", "c.seq"), ("$2", "$3"))
        )
    } else {
        format!(
            "SELECT coalesce((SELECT (ord, seq) >= ($2, $3) FROM {SCHEMA}.cursors
                              WHERE plugin = $1 AND part = 0 AND parts = $4), false)"
        )
    };
    let row = client
        .query_one(
            &sql,
            &[&stream.plugin, &at.ord, &at.seq, &(stream.parts as i32)],
        )
        .await?;
    Ok(row.get(0))
}
