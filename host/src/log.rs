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

use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, GenericClient, Row, Statement};

use crate::config::SCHEMA;

/// A delivery position: the committed transaction's number in delivery
/// order (`ord`) and the event's sequence number. `(ord, 0)` is before every
/// event of transaction `ord`; `(0, 0)` is the start of the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, serde::Serialize)]
pub struct Position {
    pub ord: i64,
    pub seq: i64,
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "#{}/{}", self.ord, self.seq)
    }
}

/// An event's identity: its writing transaction and sequence number, what a
/// plugin sees as `event.position`, written `TXID/SEQ` on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, serde::Serialize)]
pub struct EventRef {
    pub txid: u64,
    pub seq: i64,
}

impl std::fmt::Display for EventRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.txid, self.seq)
    }
}

impl std::str::FromStr for EventRef {
    type Err = String;

    fn from_str(text: &str) -> Result<EventRef, String> {
        let (txid, seq) = text.split_once('/').ok_or_else(|| {
            format!("`{text}` is not an event; write TXID/SEQ, as `status` shows cursors (e.g. 7741/1200)")
        })?;
        Ok(EventRef {
            txid: txid
                .trim()
                .parse()
                .map_err(|e| format!("transaction id `{txid}`: {e}"))?,
            seq: seq
                .trim()
                .parse()
                .map_err(|e| format!("sequence `{seq}`: {e}"))?,
        })
    }
}

/// Operation as stored in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Insert,
    Update,
    Delete,
    Truncate,
}

impl Op {
    pub fn code(self) -> char {
        match self {
            Op::Insert => 'I',
            Op::Update => 'U',
            Op::Delete => 'D',
            Op::Truncate => 'T',
        }
    }

    pub(crate) fn from_code(code: i8) -> Op {
        match code as u8 {
            b'I' => Op::Insert,
            b'U' => Op::Update,
            b'D' => Op::Delete,
            _ => Op::Truncate,
        }
    }
}

/// One captured row change, as read from the log. Rows stay JSON text: the
/// host passes them through unparsed.
#[derive(Debug, Clone)]
pub struct LoggedEvent {
    pub position: Position,
    /// The writing transaction (with `position.seq`, the event's identity).
    pub txid: u64,
    pub op: Op,
    pub schema: String,
    pub table: String,
    pub key: Option<String>,
    pub new_row: Option<String>,
    pub old_row: Option<String>,
    pub captured_at: String,
    pub user: String,
    pub application_name: String,
    pub tag: Option<String>,
}

/// The columns [`LoggedEvent::from_row`] reads, from the log (or the dead
/// letters) as `e`, after the position's `ord`.
pub(crate) const EVENT_COLUMNS: &str = "e.txid::text, e.seq, e.op, e.schema_name, e.table_name,
    e.pk::text, e.new_row::text, e.old_row::text,
    to_char(e.captured_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'),
    e.db_user, e.app_name, e.tag";

/// Columns of a row after [`EVENT_COLUMNS`] (and the `ord` before them) start here.
pub(crate) const AFTER_EVENT_COLUMNS: usize = 13;

impl LoggedEvent {
    pub fn event_ref(&self) -> EventRef {
        EventRef {
            txid: self.txid,
            seq: self.position.seq,
        }
    }

    /// Stable id: a name-based UUID of the event's transaction and sequence
    /// number, identical on every delivery (and across the upgrade to commit
    /// order, which kept both).
    pub fn id(&self) -> uuid::Uuid {
        const NAMESPACE: uuid::Uuid =
            uuid::Uuid::from_u128(0x5d0c_1b6e_8a7e_4f1c_9c3e_2f4b_7a61_0e11);
        let mut name = [0u8; 16];
        name[..8].copy_from_slice(&self.txid.to_be_bytes());
        name[8..].copy_from_slice(&self.position.seq.to_be_bytes());
        uuid::Uuid::new_v5(&NAMESPACE, &name)
    }

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

fn parse_txid(text: &str) -> u64 {
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

/// The last tick's result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Tick {
    /// The highest transaction number handed out so far.
    pub last_ord: i64,
    /// How many ticks have numbered transactions (changes when one did).
    pub ticks: i64,
}

/// Take a tick (see the module doc): number the transactions that became
/// visible since the last one. With `look_first`, cheap and without writes
/// when there are none; without, a little quicker when there surely are
/// (after a NOTIFY).
pub async fn tick(
    client: &impl GenericClient,
    look_first: bool,
) -> Result<Tick, tokio_postgres::Error> {
    let row = client
        .query_one(
            &format!("SELECT last_ord, ticks FROM {SCHEMA}.tick($1)"),
            &[&look_first],
        )
        .await?;
    Ok(Tick {
        last_ord: row.get(0),
        ticks: row.get(1),
    })
}

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
    tx.batch_execute(&format!("NOTIFY {}", crate::config::NOTIFY_CHANNEL))
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
    let limit = crate::config::RETENTION_BATCH_ROWS;
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
async fn lock_retention(tx: &impl GenericClient) -> Result<(), tokio_postgres::Error> {
    tx.execute(
        &format!("SELECT 1 FROM {SCHEMA}.locks WHERE name = 'retention' FOR UPDATE"),
        &[],
    )
    .await?;
    Ok(())
}
