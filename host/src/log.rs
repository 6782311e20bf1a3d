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

    fn from_code(code: i8) -> Op {
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

    fn from_row(row: &Row) -> LoggedEvent {
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
        let batch_sql = format!(
            "SELECT w.txid::text AS txid_text, w.seq, w.op, w.schema_name, w.table_name,
                    w.pk::text, w.new_row::text, w.old_row::text,
                    to_char(w.captured_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'),
                    w.db_user, w.app_name, w.tag, w.wanted
             FROM (SELECT e.txid, e.seq, e.op, e.schema_name, e.table_name, e.captured_at,
                          e.db_user, e.app_name, e.tag, {} AS wanted,
                          e.pk, e.new_row, e.old_row
                   FROM {SCHEMA}.events e
                   WHERE (e.txid, e.seq) > ($1::text::xid8, $2) AND e.txid < $3::text::xid8
                   ORDER BY e.txid, e.seq
                   LIMIT $5) AS w
             ORDER BY w.txid, w.seq",
            subscribed("e", "$4")
        );
        // Whether events wait at or above the horizon (an open transaction holds
        // them). As `max()`, a one-row backward index probe under any plan; as
        // `EXISTS (... WHERE txid >= $1)` a generic plan may scan the whole log.
        let held_back_sql =
            format!("SELECT coalesce(max(e.txid) >= $1::text::xid8, false) FROM {SCHEMA}.events e");

        let ack_sql = format!(
            "UPDATE {SCHEMA}.cursors SET txid = $2::text::xid8, seq = $3, updated_at = now()
             WHERE plugin = $1 AND (txid, seq) < ($2::text::xid8, $3)"
        );
        let (horizon, batch, held_back, ack) = tokio::try_join!(
            client.prepare(HORIZON_SQL),
            client.prepare(&batch_sql),
            client.prepare(&held_back_sql),
            client.prepare(&ack_sql),
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
        plugin: &str,
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
        let batch_params: [&(dyn ToSql + Sync); 5] =
            [&txid, &cursor.seq, &horizon, &plugin, &window];
        let held_back_params: [&(dyn ToSql + Sync); 1] = [&horizon];
        let (rows, held_back) = tokio::try_join!(
            client.query(&self.batch, &batch_params),
            client.query_one(&self.held_back, &held_back_params),
        )?;
        let full = rows.len() as i64 == window;
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
        })
    }

    /// Move `plugin`'s cursor forward to `to` (its own transaction); never backwards.
    pub async fn ack(
        &self,
        client: &impl GenericClient,
        plugin: &str,
        to: Position,
    ) -> Result<(), tokio_postgres::Error> {
        client
            .execute(&self.ack, &[&plugin, &to.txid.to_string(), &to.seq])
            .await?;
        Ok(())
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
}

/// `plugin`'s cursor; a plugin seen for the first time starts at the current
/// horizon, so it gets every event captured from now on (not the history).
pub async fn cursor_or_start(
    client: &impl GenericClient,
    plugin: &str,
) -> Result<Position, tokio_postgres::Error> {
    let row = client
        .query_one(
            &format!(
                "WITH h AS ({HORIZON_SQL}),
                 ins AS (INSERT INTO {SCHEMA}.cursors (plugin, txid, seq)
                         SELECT $1, (SELECT * FROM h)::xid8, 0
                         ON CONFLICT (plugin) DO NOTHING RETURNING txid, seq)
                 SELECT txid::text, seq FROM ins
                 UNION ALL
                 SELECT txid::text, seq FROM {SCHEMA}.cursors WHERE plugin = $1"
            ),
            &[&plugin],
        )
        .await?;
    Ok(Position {
        txid: parse_txid(row.get(0)),
        seq: row.get(1),
    })
}

/// Current horizon (see `HORIZON_SQL`).
pub async fn horizon(client: &impl GenericClient) -> Result<u64, tokio_postgres::Error> {
    let row = client.query_one(HORIZON_SQL, &[]).await?;
    Ok(parse_txid(row.get(0)))
}
