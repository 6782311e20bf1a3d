//! Reading the event log after a cursor, and acknowledging.
//!
//! Ordering without gaps: sequence values become visible out of commit order,
//! so reading `seq > cursor` would skip a late-committing transaction. The log
//! is read only below the snapshot horizon (every transaction with a smaller
//! id has finished), in `(txid, seq)` order, with the cursor `(txid, seq)`.

use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, GenericClient, Row, Statement};

use crate::config::SCHEMA;

/// A log position. `(txid, seq)` ordered; `seq` 0 is before every event of `txid`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, serde::Serialize)]
pub struct Position {
    pub txid: u64,
    pub seq: i64,
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.txid, self.seq)
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

impl LoggedEvent {
    /// Stable id: a name-based UUID of the position, identical on every delivery.
    pub fn id(&self) -> uuid::Uuid {
        const NAMESPACE: uuid::Uuid =
            uuid::Uuid::from_u128(0x5d0c_1b6e_8a7e_4f1c_9c3e_2f4b_7a61_0e11);
        let mut name = [0u8; 16];
        name[..8].copy_from_slice(&self.position.txid.to_be_bytes());
        name[8..].copy_from_slice(&self.position.seq.to_be_bytes());
        uuid::Uuid::new_v5(&NAMESPACE, &name)
    }

    pub(crate) fn from_row(row: &Row) -> LoggedEvent {
        LoggedEvent {
            position: Position {
                txid: parse_txid(row.get(0)),
                seq: row.get(1),
            },
            op: Op::from_code(row.get(2)),
            schema: row.get(3),
            table: row.get(4),
            key: row.get(5),
            new_row: row.get(6),
            old_row: row.get(7),
            captured_at: row.get(8),
            user: row.get(9),
            application_name: row.get(10),
            tag: row.get(11),
        }
    }
}

fn parse_txid(text: &str) -> u64 {
    text.parse().unwrap_or(0)
}

/// The first transaction id whose rows may not all be visible yet: the
/// snapshot's xmin, except that in-progress transactions known to belong to
/// other databases of the cluster are skipped (they cannot write our log). An
/// in-progress id whose owner cannot be seen still counts.
const HORIZON_SQL: &str = "
    WITH snap AS MATERIALIZED (SELECT pg_current_snapshot() AS s)
    SELECT (CASE
        -- Nothing in progress: no need for the (costly) activity view.
        WHEN NOT EXISTS (SELECT 1 FROM snap, pg_snapshot_xip(snap.s)) THEN
            (SELECT pg_snapshot_xmax(s) FROM snap)
        ELSE coalesce(
            (SELECT min(x) FROM snap, pg_snapshot_xip(snap.s) AS x
             WHERE x::text::bigint % 4294967296 NOT IN (
                 SELECT backend_xid::text::bigint FROM pg_stat_activity
                 WHERE backend_xid IS NOT NULL AND datname <> current_database()
                 UNION ALL
                 SELECT transaction::text::bigint FROM pg_prepared_xacts
                 WHERE database <> current_database())),
            (SELECT pg_snapshot_xmax(s) FROM snap))
        END)::text";

/// SQL condition: event `e` matches a subscription of the plugin named by `plugin`
/// (operation, and for updates the changed-columns filter).
pub(crate) fn subscribed(e: &str, plugin: &str) -> String {
    format!(
        "EXISTS (SELECT 1 FROM {SCHEMA}.subscriptions s
                 WHERE s.plugin = {plugin} AND s.schema_name = {e}.schema_name
                   AND s.table_name = {e}.table_name AND {e}.op = ANY (s.ops)
                   AND ({e}.op <> 'U' OR s.changed_columns IS NULL OR EXISTS (
                         SELECT 1 FROM unnest(s.changed_columns) AS c
                         WHERE {e}.new_row -> c IS DISTINCT FROM {e}.old_row -> c)))"
    )
}

/// SQL condition: event `e` is delivered by partition row `c` (with `part`
/// and `parts`): by key hash, and TRUNCATE by partition 0.
pub(crate) fn in_partition(e: &str, c: &str) -> String {
    format!(
        "({c}.parts = 1 OR CASE WHEN {e}.op = 'T' THEN {c}.part = 0
                              ELSE {SCHEMA}.part_of({e}.schema_name, {e}.table_name, {e}.pk, {c}.parts) = {c}.part END)"
    )
}

/// Prepared statements of one reader connection.
#[derive(Debug, Clone)]
pub struct Reader {
    horizon: Statement,
    batch: Statement,
    held_back: Statement,
    ack: Statement,
}

impl Reader {
    pub async fn prepare(client: &Client) -> Result<Reader, tokio_postgres::Error> {
        // A window of the next rows in index order, then the plugin's filter:
        // the plan is the primary-key index scan whatever the statistics say
        // (right after a bulk insert they say the log is empty, and a
        // filter-then-sort plan re-reads the whole backlog for every batch).
        // The subscription is joined once per window rather than tested per
        // row (a correlated EXISTS cost ~20 us a row, ten times the rest of
        // the read); the key (plugin, schema, table) makes it one row at most.
        let batch_sql = format!(
            "SELECT w.txid::text AS txid_text, w.seq, w.op, w.schema_name, w.table_name,
                    w.pk::text, w.new_row::text, w.old_row::text,
                    to_char(w.captured_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'),
                    w.db_user, w.app_name, w.tag,
                    s.plugin IS NOT NULL AND w.op = ANY (s.ops)
                      AND (w.op <> 'U' OR s.changed_columns IS NULL OR EXISTS (
                            SELECT 1 FROM unnest(s.changed_columns) AS c
                            WHERE w.new_row -> c IS DISTINCT FROM w.old_row -> c))
                      AND ($6 = 1 OR w.op = 'T'
                           OR {SCHEMA}.part_of(w.schema_name, w.table_name, w.pk, $6) = $7)
                      AS wanted
             FROM (SELECT e.txid, e.seq, e.op, e.schema_name, e.table_name, e.captured_at,
                          e.db_user, e.app_name, e.tag, e.pk, e.new_row, e.old_row
                   FROM {SCHEMA}.events e
                   WHERE (e.txid, e.seq) > ($1::text::xid8, $2) AND e.txid < $3::text::xid8
                   ORDER BY e.txid, e.seq
                   LIMIT $5) AS w
             LEFT JOIN {SCHEMA}.subscriptions s
                    ON s.plugin = $4 AND s.schema_name = w.schema_name
                   AND s.table_name = w.table_name
             ORDER BY w.txid, w.seq"
        );
        // Whether events wait at or above the horizon (an open transaction holds
        // them). As `max()`, a one-row backward index probe under any plan; as
        // `EXISTS (... WHERE txid >= $1)` a generic plan may scan the whole log.
        let held_back_sql =
            format!("SELECT coalesce(max(e.txid) >= $1::text::xid8, false) FROM {SCHEMA}.events e");

        let ack_sql = ACK_SQL;
        let (horizon, batch, held_back, ack) = tokio::try_join!(
            client.prepare(HORIZON_SQL),
            client.prepare(&batch_sql),
            client.prepare(&held_back_sql),
            client.prepare(ack_sql),
        )?;
        Ok(Reader {
            horizon,
            batch,
            held_back,
            ack,
        })
    }

    /// The next `window` log rows after `cursor` (below the horizon), and of
    /// those the events `plugin` subscribes to, in log order.
    ///
    /// `known_horizon` may pass the horizon of an earlier read: rows below an
    /// old horizon are final, so while a backlog drains in full windows the
    /// horizon need not be recomputed for every batch.
    pub async fn read(
        &self,
        client: &Client,
        stream: &Stream,
        cursor: Position,
        window: u32,
        known_horizon: Option<u64>,
    ) -> Result<Batch, tokio_postgres::Error> {
        let horizon = match known_horizon {
            Some(h) => h.to_string(),
            None => client.query_one(&self.horizon, &[]).await?.get(0),
        };
        let txid = cursor.txid.to_string();
        let window = i64::from(window);
        let parts = stream.parts as i32;
        let part = stream.part as i32;
        let batch_params: [&(dyn ToSql + Sync); 7] = [
            &txid,
            &cursor.seq,
            &horizon,
            &stream.plugin,
            &window,
            &parts,
            &part,
        ];
        let held_back_params: [&(dyn ToSql + Sync); 1] = [&horizon];
        let (rows, held_back) = tokio::try_join!(
            client.query(&self.batch, &batch_params),
            client.query_one(&self.held_back, &held_back_params),
        )?;
        let mut full = rows.len() as i64 == window;
        let mut rows = rows.as_slice();
        let mut barrier = None;
        // With partitions, a TRUNCATE is a barrier: every partition stops
        // before it, partition 0 delivers it alone, then all go on past it.
        if stream.parts > 1
            && let Some(k) = rows
                .iter()
                .position(|r| r.get::<_, bool>(12) && Op::from_code(r.get(2)) == Op::Truncate)
        {
            if k == 0 {
                barrier = Some(LoggedEvent::from_row(&rows[0]));
            }
            rows = &rows[..k];
            full = false;
        }
        let end = rows.last().map(|row| Position {
            txid: parse_txid(row.get(0)),
            seq: row.get(1),
        });
        let events = rows
            .iter()
            .filter(|row| row.get::<_, bool>(12))
            .map(LoggedEvent::from_row)
            .collect();
        Ok(Batch {
            events,
            end,
            full,
            held_back: held_back.get(0),
            horizon: parse_txid(&horizon),
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

/// `pgevents.ack`: guarded by the lease token and the rewind count.
/// Types are schema-qualified: this also runs on a plugin's sql session,
/// where the plugin could shadow unqualified type names in `pg_temp`.
const ACK_SQL: &str =
    "SELECT pgevents.ack($1, $2, $3, $4, $5, $6::pg_catalog.text::pg_catalog.xid8, $7)";

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
    let txid = to.txid.to_string();
    let params: [&(dyn ToSql + Sync); 7] = [
        &stream.plugin,
        &part,
        &parts,
        &stream.token,
        &stream.rewinds,
        &txid,
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
    /// The window was full: more rows may wait below the same horizon.
    pub full: bool,
    /// Events exist at or above the horizon: a running transaction holds them back.
    pub held_back: bool,
    pub horizon: u64,
    /// With partitions: the next event is a TRUNCATE, which waits for every
    /// partition (see [`barrier_open`]).
    pub barrier: Option<LoggedEvent>,
}

/// Whether the stream may pass the TRUNCATE at `at`: partition 0 (which
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
                   AND EXISTS (SELECT 1 FROM {SCHEMA}.events e
                               WHERE (e.txid, e.seq) > (c.txid, c.seq)
                                 AND (e.txid, e.seq) < ($2::text::xid8, $3)))"
        )
    } else {
        format!(
            "SELECT coalesce((SELECT (txid, seq) >= ($2::text::xid8, $3) FROM {SCHEMA}.cursors
                              WHERE plugin = $1 AND part = 0 AND parts = $4), false)"
        )
    };
    let row = client
        .query_one(
            &sql,
            &[
                &stream.plugin,
                &at.txid.to_string(),
                &at.seq,
                &(stream.parts as i32),
            ],
        )
        .await?;
    Ok(row.get(0))
}

/// Make sure `plugin` has cursors. A plugin seen for the first time gets
/// `parts` partitions starting at the current horizon, so it gets every event
/// captured from now on, or, `from_beginning`, before the oldest event the
/// log holds. A known plugin keeps the partition
/// count it has (changing it is [`repartition`]'s job): returns that count
/// when it differs from `parts`.
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
    // From the beginning: before every event (txid 0). Otherwise from now:
    // before every transaction that may still commit.
    let txid = if from_beginning {
        "0".to_owned()
    } else {
        horizon(client).await?.to_string()
    };
    insert_cursors(client, plugin, parts, &txid, 0).await?;
    Ok(None)
}

async fn insert_cursors(
    client: &impl GenericClient,
    plugin: &str,
    parts: u32,
    txid: &str,
    seq: i64,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            &format!(
                "INSERT INTO {SCHEMA}.cursors (plugin, part, parts, txid, seq)
                 SELECT $1, p, $2, $3::text::xid8, $4 FROM generate_series(0, $2 - 1) AS p"
            ),
            &[&plugin, &(parts as i32), &txid, &seq],
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
                "SELECT txid::text, seq, parts FROM {SCHEMA}.cursors WHERE plugin = $1
                 ORDER BY txid, seq LIMIT 1 FOR UPDATE"
            ),
            &[&plugin],
        )
        .await?
    else {
        return Err(RepartitionError::Unknown(plugin.to_owned()));
    };
    let (txid, seq, old): (String, i64, i32) = (oldest.get(0), oldest.get(1), oldest.get(2));
    // Leases before cursors: the order `pgevents.ack` locks them in.
    for table in ["leases", "cursors", "attempts"] {
        tx.execute(
            &format!("DELETE FROM {SCHEMA}.{table} WHERE plugin = $1"),
            &[&plugin],
        )
        .await?;
    }
    insert_cursors(&tx, plugin, parts, &txid, seq).await?;
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
                "SELECT txid::text, seq, rewinds FROM {SCHEMA}.cursors
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
                txid: parse_txid(r.get(0)),
                seq: r.get(1),
            },
            r.get(2),
        )
    }))
}

/// Where a replay starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayFrom {
    /// Every event captured at or after this time (and, since the log is in
    /// transaction order, possibly some captured shortly before).
    Time(std::time::SystemTime),
    /// Every event after this position.
    After(Position),
    /// Everything the log still holds.
    Start,
}

/// What a replay did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Replayed {
    pub cursor: Position,
    /// Partitions moved back (those already at or before `cursor` stay).
    pub partitions: u32,
    /// Events that will be delivered again.
    pub events: i64,
    /// The oldest log row still held, if any: events before it were pruned.
    pub oldest_retained: Option<Position>,
}

/// Rewind every partition of `plugin` that is past `from` to it. Running
/// deliverers notice at once (when idle) or at their next acknowledgement
/// (which then fails), and continue from there. Returns `None` if the plugin
/// has no cursor.
pub async fn replay(
    client: &mut Client,
    plugin: &str,
    from: ReplayFrom,
) -> Result<Option<Replayed>, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    let oldest = tx
        .query_opt(
            &format!("SELECT txid::text, seq FROM {SCHEMA}.events ORDER BY txid, seq LIMIT 1"),
            &[],
        )
        .await?
        .map(|r| Position {
            txid: parse_txid(r.get(0)),
            seq: r.get(1),
        });
    let cursor = match from {
        ReplayFrom::After(p) => p,
        ReplayFrom::Start => Position::default(),
        ReplayFrom::Time(at) => {
            let first = tx
                .query_opt(
                    &format!(
                        "SELECT txid::text, seq FROM {SCHEMA}.events WHERE captured_at >= $1
                         ORDER BY txid, seq LIMIT 1"
                    ),
                    &[&at],
                )
                .await?;
            match first {
                Some(r) => Position {
                    txid: parse_txid(r.get(0)),
                    seq: r.get::<_, i64>(1) - 1,
                },
                // Nothing captured since: replay nothing, from the current end.
                None => Position {
                    txid: horizon(&tx).await?,
                    seq: 0,
                },
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
        return Ok(None);
    }
    // Only backwards: a partition already before the target keeps its place
    // (moving it forward would skip events it has not had). Every partition's
    // rewind count changes, so that a batch in flight is not acknowledged
    // past the target either.
    let row = tx
        .query_one(
            &format!(
                "WITH old AS (
                     SELECT part, parts, txid, seq FROM {SCHEMA}.cursors WHERE plugin = $1 FOR UPDATE),
                 moved AS (
                     UPDATE {SCHEMA}.cursors c
                     SET txid = CASE WHEN (c.txid, c.seq) > ($2::text::xid8, $3) THEN $2::text::xid8 ELSE c.txid END,
                         seq = CASE WHEN (c.txid, c.seq) > ($2::text::xid8, $3) THEN $3 ELSE c.seq END,
                         rewinds = c.rewinds + 1, updated_at = now()
                     WHERE c.plugin = $1
                     RETURNING c.part)
                 SELECT (SELECT count(*) FROM old WHERE (txid, seq) > ($2::text::xid8, $3)),
                        (SELECT count(*) FROM moved),
                        (SELECT count(*) FROM old o JOIN {SCHEMA}.events e
                             ON (e.txid, e.seq) > ($2::text::xid8, $3) AND (e.txid, e.seq) <= (o.txid, o.seq)
                         WHERE {} AND {})",
                subscribed("e", "$1"),
                in_partition("e", "o")
            ),
            &[&plugin, &cursor.txid.to_string(), &cursor.seq],
        )
        .await?;
    let (partitions, events): (i64, i64) = (row.get(0), row.get(2));
    tx.execute(
        &format!("DELETE FROM {SCHEMA}.attempts WHERE plugin = $1"),
        &[&plugin],
    )
    .await?;
    // Wake idle deliverers: they look for a rewind when they find nothing new.
    tx.batch_execute(&format!("NOTIFY {}", crate::config::NOTIFY_CHANNEL))
        .await?;
    tx.commit().await?;
    Ok(Some(Replayed {
        cursor,
        partitions: partitions as u32,
        events,
        oldest_retained: oldest,
    }))
}

/// Delete the log rows, among the oldest `RETENTION_BATCH_ROWS`, that every
/// cursor has passed and that are older than `min_age`. Returns how many went
/// (call again while it returns a full batch). Only one host
/// prunes at a time; the others return 0 at once.
pub async fn prune(
    client: &mut Client,
    min_age: std::time::Duration,
) -> Result<u64, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    let mine: bool = tx
        .query_one(
            "SELECT pg_try_advisory_xact_lock(hashtextextended('pgevents retention', 0))",
            &[],
        )
        .await?
        .get(0);
    if !mine {
        return Ok(0);
    }
    // The oldest cursor, including those of paused plugins: their events must
    // wait. Without any cursor, nothing will read below the horizon.
    let floor = tx
        .query_opt(
            &format!("SELECT txid::text, seq FROM {SCHEMA}.cursors ORDER BY txid, seq LIMIT 1"),
            &[],
        )
        .await?;
    let (txid, seq): (String, i64) = match floor {
        Some(row) => (row.get(0), row.get(1)),
        None => (horizon(&tx).await?.to_string(), 0),
    };
    // The oldest window of the log, of which the rows old enough go: the scan
    // is bounded by the window whatever the age of the rows.
    let deleted = tx
        .execute(
            &format!(
                "WITH doomed AS (
                     SELECT e.txid, e.seq, e.captured_at FROM {SCHEMA}.events e
                     WHERE (e.txid, e.seq) <= ($1::text::xid8, $2)
                     ORDER BY e.txid, e.seq
                     LIMIT $3)
                 DELETE FROM {SCHEMA}.events e USING doomed d
                 WHERE e.txid = d.txid AND e.seq = d.seq
                   AND d.captured_at < now() - make_interval(secs => $4)"
            ),
            &[
                &txid,
                &seq,
                &crate::config::RETENTION_BATCH_ROWS,
                &min_age.as_secs_f64(),
            ],
        )
        .await?;
    tx.commit().await?;
    Ok(deleted)
}

/// Current horizon (see `HORIZON_SQL`).
pub async fn horizon(client: &impl GenericClient) -> Result<u64, tokio_postgres::Error> {
    let row = client.query_one(HORIZON_SQL, &[]).await?;
    Ok(parse_txid(row.get(0)))
}
