//! The outbox: messages plugins publish, recorded in the transaction that
//! acknowledges their events (so a message exists if and only if its event
//! was acknowledged), then sent to the operator's sinks by the flusher
//! (`flusher.rs`), one host per sink at a time, and deleted once the broker
//! acknowledged them.
//!
//! Files: this one (recording, reading, the state of each sink),
//! `flusher.rs` (sending in bursts, under a lease).

mod flusher;

pub(crate) use flusher::keep_flushing;
pub use flusher::{
    DEFAULT_BURST, DEFAULT_LINGER_MS, DEFAULT_MAX_PENDING, FlushReport, flush_now, lease_name,
};

use std::collections::{BTreeSet, HashSet};
use std::sync::{Mutex, OnceLock};

use tokio::sync::watch;
use tokio_postgres::GenericClient;

use crate::eventlog::Stream;
use crate::runtime::Published;
use crate::schema::SCHEMA;

/// The NOTIFY channel that wakes a sink's flusher on another host (payload:
/// the sink); see [`recorded`].
pub const OUTBOX_CHANNEL: &str = "pgevents_outbox";

/// This process's flushers: the sinks whose lease they hold (by database
/// URL and sink), and the wake-up they watch besides [`OUTBOX_CHANNEL`].
struct Local {
    flushing: Mutex<HashSet<(String, String)>>,
    wake: watch::Sender<u64>,
}

fn local() -> &'static Local {
    static LOCAL: OnceLock<Local> = OnceLock::new();
    LOCAL.get_or_init(|| Local {
        flushing: Mutex::new(HashSet::new()),
        wake: watch::channel(0).0,
    })
}

/// Bumped whenever a deliverer of this process recorded messages.
pub(crate) fn local_wake() -> watch::Receiver<u64> {
    local().wake.subscribe()
}

/// Whether this process's flusher of `sink` (in the database at `url`)
/// holds its lease.
pub(crate) fn set_flushing(url: &str, sink: &str, flushing: bool) {
    let mut set = local().flushing.lock().expect("flushing sinks");
    let key = (url.to_owned(), sink.to_owned());
    if flushing {
        set.insert(key);
    } else {
        set.remove(&key);
    }
}

/// After the commit that recorded `messages` (in the database at `url`):
/// wake this process's flushers, and notify for the sinks another host
/// flushes. A NOTIFY inside the recording transaction would hold a
/// database-wide lock through its commit's disk flush, behind every busy
/// writer's; outside it, it costs a round trip, and only for remote sinks.
/// A lost wake-up only delays: flushers look at the outbox every second.
pub(crate) async fn recorded(client: &impl GenericClient, url: &str, messages: &[Published]) {
    if messages.is_empty() {
        return;
    }
    local().wake.send_modify(|n| *n += 1);
    let mut remote: BTreeSet<&str> = messages.iter().map(|m| m.sink.as_str()).collect();
    {
        let set = local().flushing.lock().expect("flushing sinks");
        remote.retain(|sink| !set.contains(&(url.to_owned(), (*sink).to_owned())));
    }
    for sink in remote {
        if let Err(e) = client
            .execute("SELECT pg_notify($1, $2)", &[&OUTBOX_CHANNEL, &sink])
            .await
        {
            tracing::debug!(sink, "could not notify the sink's flusher: {e}");
        }
    }
}

/// Messages as the parallel arrays `pgevents.record_messages` takes.
struct Columns<'a> {
    ids: Vec<uuid::Uuid>,
    sinks: Vec<&'a str>,
    subjects: Vec<&'a str>,
    keys: Vec<Option<&'a str>>,
    payloads: Vec<&'a [u8]>,
    headers: Vec<serde_json::Value>,
}

impl<'a> Columns<'a> {
    fn of(messages: &'a [Published]) -> Columns<'a> {
        Columns {
            ids: messages.iter().map(|m| m.id).collect(),
            sinks: messages.iter().map(|m| m.sink.as_str()).collect(),
            subjects: messages.iter().map(|m| m.subject.as_str()).collect(),
            keys: messages.iter().map(|m| m.key.as_deref()).collect(),
            payloads: messages.iter().map(|m| m.payload.as_slice()).collect(),
            headers: messages
                .iter()
                .map(|m| serde_json::json!(m.headers))
                .collect(),
        }
    }
}

/// Record `messages` for `stream`'s plugin in the caller's transaction, with
/// the lease check of the acknowledgement. Returns false if the lease is gone.
pub async fn record(
    client: &impl GenericClient,
    stream: &Stream,
    messages: &[Published],
) -> Result<bool, tokio_postgres::Error> {
    if messages.is_empty() {
        return Ok(true);
    }
    let c = Columns::of(messages);
    let part = stream.part as i32;
    // Every parameter's type is inferred from the function's signature (this
    // also runs on a plugin's sql session; see `ACK_SQL`).
    let row = client
        .query_one(
            "SELECT pgevents.record_messages($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            &[
                &stream.plugin,
                &part,
                &stream.token,
                &c.ids,
                &c.sinks,
                &c.subjects,
                &c.keys,
                &c.payloads,
                &c.headers,
            ],
        )
        .await?;
    Ok(row.get(0))
}

/// Record `messages` for `stream`'s plugin and acknowledge its events up to
/// `to`, in one statement (so one transaction, and one round trip fewer than
/// BEGIN ... COMMIT): both or neither. Returns false if the lease is gone.
/// Both functions check the same lease, so they agree; were one to record
/// and the other not acknowledge, the messages would be recorded again with
/// the same ids on the next delivery, and skipped.
pub async fn record_and_ack(
    client: &impl GenericClient,
    stream: &Stream,
    messages: &[Published],
    to: crate::eventlog::Position,
) -> Result<bool, tokio_postgres::Error> {
    let c = Columns::of(messages);
    let part = stream.part as i32;
    let parts = stream.parts as i32;
    let row = client
        .query_one(
            "SELECT pgevents.record_messages($1, $2, $3, $4, $5, $6, $7, $8, $9)
                AND pgevents.ack($1, $2, $10, $3, $11, $12, $13)",
            &[
                &stream.plugin,
                &part,
                &stream.token,
                &c.ids,
                &c.sinks,
                &c.subjects,
                &c.keys,
                &c.payloads,
                &c.headers,
                &parts,
                &stream.rewinds,
                &to.ord,
                &to.seq,
            ],
        )
        .await?;
    Ok(row.get(0))
}

/// One sink's outbox, as `outbox status` and `status` show it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SinkStatus {
    pub sink: String,
    /// Messages waiting to be sent.
    pub pending: i64,
    /// Seconds since the oldest waiting message was recorded.
    pub oldest_age_seconds: Option<f64>,
    /// Messages the broker refused for good (kept until resent or purged).
    pub refused: i64,
    pub sent: i64,
    pub last_sent_at: Option<String>,
    pub last_error: Option<String>,
    pub last_error_at: Option<String>,
}

impl std::fmt::Display for SinkStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "outbox to sink {}: {} waiting", self.sink, self.pending)?;
        if let Some(age) = self.oldest_age_seconds {
            write!(f, " (oldest {age:.1}s)")?;
        }
        writeln!(
            f,
            ", {} sent, last {}",
            self.sent,
            self.last_sent_at.as_deref().unwrap_or("-")
        )?;
        if self.refused > 0 {
            writeln!(
                f,
                "  {} refused by the broker for good (kept: `pgevents-host outbox refused --sink {sink}` lists them with the reason, `outbox resend --sink {sink} --all` sends them again, `outbox purge --sink {sink}` deletes them)",
                self.refused,
                sink = self.sink
            )?;
        }
        if let Some(e) = &self.last_error {
            writeln!(
                f,
                "  last error ({}): {e}",
                self.last_error_at.as_deref().unwrap_or("?")
            )?;
        }
        Ok(())
    }
}

/// Per sink known to the database (configured or with messages).
pub async fn status(client: &impl GenericClient) -> Result<Vec<SinkStatus>, tokio_postgres::Error> {
    let installed: bool = client
        .query_one(
            &format!("SELECT to_regclass('{SCHEMA}.outbox') IS NOT NULL"),
            &[],
        )
        .await?
        .get(0);
    if !installed {
        return Ok(Vec::new());
    }
    let rows = client
        .query(
            &format!(
                "WITH names AS (SELECT name FROM {SCHEMA}.sinks UNION SELECT DISTINCT sink FROM {SCHEMA}.outbox)
                 SELECT n.name,
                        (SELECT count(*) FROM {SCHEMA}.outbox o WHERE o.sink = n.name AND o.refused IS NULL),
                        (SELECT extract(epoch FROM now() - min(o.created_at))::float8 FROM {SCHEMA}.outbox o
                          WHERE o.sink = n.name AND o.refused IS NULL),
                        (SELECT count(*) FROM {SCHEMA}.outbox o WHERE o.sink = n.name AND o.refused IS NOT NULL),
                        coalesce(s.sent, 0),
                        to_char(s.last_sent_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'),
                        s.last_error,
                        to_char(s.last_error_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')
                 FROM names n LEFT JOIN {SCHEMA}.sinks s ON s.name = n.name
                 ORDER BY n.name"
            ),
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| SinkStatus {
            sink: r.get(0),
            pending: r.get(1),
            oldest_age_seconds: r.get(2),
            refused: r.get(3),
            sent: r.get(4),
            last_sent_at: r.get(5),
            last_error: r.get(6),
            last_error_at: r.get(7),
        })
        .collect())
}

/// Whether `sink` holds `max` or more waiting messages (then its publishers pause).
pub async fn full(
    client: &impl GenericClient,
    sink: &str,
    max: u64,
) -> Result<bool, tokio_postgres::Error> {
    let row = client
        .query_one(
            &format!(
                "SELECT count(*) >= $2 FROM (SELECT 1 FROM {SCHEMA}.outbox
                                            WHERE sink = $1 AND refused IS NULL LIMIT $2) w"
            ),
            &[&sink, &(max as i64)],
        )
        .await?;
    Ok(row.get(0))
}

/// A message a broker refused for good, as `outbox refused` lists it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RefusedMessage {
    /// Its row in the outbox (for `outbox resend --id`).
    pub id: i64,
    pub sink: String,
    pub message_id: String,
    pub subject: String,
    pub key: Option<String>,
    pub plugin: String,
    pub payload_bytes: i32,
    pub created_at: String,
    pub refused_at: Option<String>,
    /// The broker's reason.
    pub reason: String,
}

/// The refused messages of `sink` (or of every sink), oldest first, at most `limit`.
pub async fn refused(
    client: &impl GenericClient,
    sink: Option<&str>,
    limit: i64,
) -> Result<Vec<RefusedMessage>, tokio_postgres::Error> {
    let time = |column: &str| {
        format!("to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')")
    };
    let rows = client
        .query(
            &format!(
                "SELECT id, sink, message_id, subject, key, plugin, octet_length(payload),
                        {}, {}, refused
                 FROM {SCHEMA}.outbox WHERE refused IS NOT NULL AND ($1::text IS NULL OR sink = $1)
                 ORDER BY id LIMIT $2",
                time("created_at"),
                time("refused_at")
            ),
            &[&sink, &limit],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| RefusedMessage {
            id: r.get(0),
            sink: r.get(1),
            message_id: r.get::<_, uuid::Uuid>(2).to_string(),
            subject: r.get(3),
            key: r.get(4),
            plugin: r.get(5),
            payload_bytes: r.get(6),
            created_at: r.get(7),
            refused_at: r.get(8),
            reason: r.get(9),
        })
        .collect())
}

/// Make refused messages wait to be sent again (once the operator fixed what
/// the broker refused them for: created the stream, raised a size limit):
/// those of `sink` (or of every sink), or only the one with outbox row `id`.
/// They keep their place (their row id) and message id. Returns how many.
pub async fn resend(
    client: &impl GenericClient,
    sink: Option<&str>,
    id: Option<i64>,
) -> Result<u64, tokio_postgres::Error> {
    let n = client
        .execute(
            &format!(
                "UPDATE {SCHEMA}.outbox SET refused = NULL, refused_at = NULL
                 WHERE refused IS NOT NULL AND ($1::text IS NULL OR sink = $1)
                   AND ($2::bigint IS NULL OR id = $2)"
            ),
            &[&sink, &id],
        )
        .await?;
    if n > 0 {
        client
            .execute(
                &format!("SELECT pg_notify('{OUTBOX_CHANNEL}', coalesce($1::text, ''))"),
                &[&sink],
            )
            .await?;
    }
    Ok(n)
}

/// Delete messages: the refused ones of `sink` (or of every sink), or with
/// `pending`, the waiting ones too. Returns how many went.
pub async fn purge(
    client: &impl GenericClient,
    sink: Option<&str>,
    pending: bool,
) -> Result<u64, tokio_postgres::Error> {
    client
        .execute(
            &format!(
                "DELETE FROM {SCHEMA}.outbox WHERE ($1::text IS NULL OR sink = $1)
                                              AND ($2 OR refused IS NOT NULL)"
            ),
            &[&sink, &pending],
        )
        .await
}
