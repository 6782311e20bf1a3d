//! What `status` reports: per plugin, its cursor and backlog; and which
//! transaction, if any, holds delivery back.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;
use tokio_postgres::GenericClient;

use crate::config::SCHEMA;
use crate::log::{self, Position};
use crate::schema::{self, SchemaError};

#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub installed: bool,
    /// Transactions with smaller ids are finished; events at or above wait.
    pub horizon: u64,
    /// Open transactions at the horizon, oldest first.
    pub blockers: Vec<Blocker>,
    /// Events captured at or above the horizon (held back until it moves).
    pub held_back: i64,
    pub plugins: Vec<PluginStatus>,
    /// `"schema"."table"` -> operations captured (`I`, `U`, `D`, `T`).
    pub triggers: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Blocker {
    pub pid: i32,
    pub database: Option<String>,
    pub user: Option<String>,
    pub application_name: Option<String>,
    pub state: Option<String>,
    /// Seconds since the transaction began.
    pub age_seconds: f64,
    pub query: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PluginStatus {
    pub name: String,
    pub version: String,
    pub file: String,
    pub sha256: String,
    pub active: bool,
    pub loaded_at: String,
    pub cursor: Option<Position>,
    /// Events after the cursor that this plugin subscribes to.
    pub waiting: i64,
    pub halted: Option<String>,
    pub last_error: Option<String>,
    /// Why the newest file for this plugin was not loaded (the version shown
    /// keeps serving), and when.
    pub load_error: Option<String>,
    pub load_error_at: Option<String>,
    /// Events in the dead-letter table (see `pgevents-host dead-letters list`).
    pub dead_letters: i64,
    pub partitions: Vec<PartitionStatus>,
}

/// One partition of a plugin's stream.
#[derive(Debug, Clone, Serialize)]
pub struct PartitionStatus {
    pub part: u32,
    pub cursor: Position,
    /// The host delivering it (none: no live lease).
    pub host: Option<String>,
    pub lease_expires_in_seconds: Option<f64>,
}

pub async fn status(client: &impl GenericClient) -> Result<Status, SchemaError> {
    if !schema::is_installed(client).await? {
        return Ok(Status {
            installed: false,
            horizon: log::horizon(client).await?,
            blockers: Vec::new(),
            held_back: 0,
            plugins: Vec::new(),
            triggers: BTreeMap::new(),
        });
    }
    let horizon = log::horizon(client).await?;
    let horizon_text = horizon.to_string();
    let blockers = blockers(client, horizon).await?;
    let held_back: i64 = client
        .query_one(
            &format!("SELECT count(*) FROM {SCHEMA}.events WHERE txid >= $1::text::xid8"),
            &[&horizon_text],
        )
        .await?
        .get(0);
    let plugins = client
        .query(
            &format!(
                "SELECT p.name, p.version, p.file, p.sha256, p.active,
                        to_char(p.loaded_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'),
                        c.txid::text, c.seq, p.halted, p.last_error,
                        (SELECT count(*) FROM {SCHEMA}.cursors pc JOIN {SCHEMA}.events e
                             ON (e.txid, e.seq) > (pc.txid, pc.seq)
                         WHERE pc.plugin = p.name AND {} AND {}),
                        (SELECT count(*) FROM {SCHEMA}.dead_letters d WHERE d.plugin = p.name),
                        p.load_error,
                        to_char(p.load_error_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')
                 FROM {SCHEMA}.plugins p
                 LEFT JOIN LATERAL (SELECT txid, seq FROM {SCHEMA}.cursors oc WHERE oc.plugin = p.name
                                    ORDER BY txid, seq LIMIT 1) c ON true
                 ORDER BY p.name",
                log::subscribed("e", "p.name"),
                log::in_partition("e", "pc")
            ),
            &[],
        )
        .await?
        .iter()
        .map(|r| PluginStatus {
            name: r.get(0),
            version: r.get(1),
            file: r.get(2),
            sha256: r.get(3),
            active: r.get(4),
            loaded_at: r.get(5),
            cursor: r.get::<_, Option<String>>(6).map(|t| Position {
                txid: t.parse().unwrap_or(0),
                seq: r.get(7),
            }),
            halted: r.get(8),
            last_error: r.get(9),
            waiting: r.get(10),
            dead_letters: r.get(11),
            load_error: r.get(12),
            load_error_at: r.get(13),
            partitions: Vec::new(),
        })
        .collect::<Vec<_>>();
    let mut plugins = plugins;
    for r in client
        .query(
            &format!(
                "SELECT c.plugin, c.part, c.txid::text, c.seq, l.owner,
                        extract(epoch FROM l.expires_at - clock_timestamp())::float8
                 FROM {SCHEMA}.cursors c
                 LEFT JOIN {SCHEMA}.leases l ON l.plugin = c.plugin AND l.part = c.part
                      AND l.expires_at > clock_timestamp()
                 ORDER BY c.plugin, c.part"
            ),
            &[],
        )
        .await?
    {
        let name: String = r.get(0);
        if let Some(p) = plugins.iter_mut().find(|p| p.name == name) {
            p.partitions.push(PartitionStatus {
                part: r.get::<_, i32>(1) as u32,
                cursor: Position {
                    txid: r.get::<_, &str>(2).parse().unwrap_or(0),
                    seq: r.get(3),
                },
                host: r.get(4),
                lease_expires_in_seconds: r.get(5),
            });
        }
    }
    let installed_triggers = schema::installed_triggers(client).await?;
    Ok(Status {
        installed: true,
        horizon,
        blockers,
        held_back,
        plugins,
        triggers: schema::by_table(&installed_triggers),
    })
}

/// The open transactions at `horizon` (what holds delivery back), oldest first.
pub async fn blockers(
    client: &impl GenericClient,
    horizon: u64,
) -> Result<Vec<Blocker>, tokio_postgres::Error> {
    let horizon_text = horizon.to_string();
    let rows = client
        .query(
            "SELECT pid, datname::text, usename::text, application_name, state,
                    extract(epoch FROM now() - xact_start)::float8, query
             FROM pg_stat_activity
             WHERE backend_xid IS NOT NULL
               AND backend_xid::text::bigint = $1::text::bigint % 4294967296
             UNION ALL
             SELECT 0, database::text, owner::text, 'prepared transaction ' || gid, 'prepared',
                    extract(epoch FROM now() - prepared)::float8, NULL
             FROM pg_prepared_xacts
             WHERE transaction::text::bigint = $1::text::bigint % 4294967296
             ORDER BY 6 DESC",
            &[&horizon_text],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Blocker {
            pid: r.get(0),
            database: r.get(1),
            user: r.get(2),
            application_name: r.get(3),
            state: r.get(4),
            age_seconds: r.get::<_, Option<f64>>(5).unwrap_or(0.0),
            query: r.get(6),
        })
        .collect())
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.installed {
            return writeln!(
                f,
                "pgevents is not installed in this database (run `pgevents-host install` or `pgevents-host run`)"
            );
        }
        writeln!(f, "horizon: transaction {}", self.horizon)?;
        if self.held_back > 0 {
            writeln!(
                f,
                "held back: {} event(s) wait until every older transaction finishes",
                self.held_back
            )?;
        }
        for b in &self.blockers {
            writeln!(
                f,
                "  oldest open transaction: pid {} (database {}, user {}, application `{}`), open for {:.1}s, {}: {}",
                b.pid,
                b.database.as_deref().unwrap_or("?"),
                b.user.as_deref().unwrap_or("?"),
                b.application_name.as_deref().unwrap_or(""),
                b.age_seconds,
                b.state.as_deref().unwrap_or("?"),
                b.query.as_deref().unwrap_or("?").trim()
            )?;
        }
        if self.plugins.is_empty() {
            writeln!(f, "plugins: none registered yet")?;
        }
        for p in &self.plugins {
            let state = match (&p.halted, p.active) {
                (Some(_), _) => "halted",
                (None, true) => "active",
                (None, false) => "paused: file missing",
            };
            let cursor = p
                .cursor
                .map(|c| c.to_string())
                .unwrap_or_else(|| "-".into());
            writeln!(
                f,
                "plugin {} {} [{state}] cursor {cursor}, {} event(s) waiting, {} dead letter(s); file {} (sha256 {}), loaded {}",
                p.name,
                p.version,
                p.waiting,
                p.dead_letters,
                p.file,
                &p.sha256[..p.sha256.len().min(12)],
                p.loaded_at
            )?;
            if let [only] = p.partitions.as_slice() {
                writeln!(
                    f,
                    "  delivered by {}",
                    only.host.as_deref().unwrap_or("no host")
                )?;
            }
            for part in p.partitions.iter().filter(|_| p.partitions.len() > 1) {
                writeln!(
                    f,
                    "  partition {}/{}: cursor {}, delivered by {}",
                    part.part,
                    p.partitions.len(),
                    part.cursor,
                    part.host.as_deref().unwrap_or("no host")
                )?;
            }
            if let Some(e) = &p.last_error {
                writeln!(f, "  last error: {e}")?;
            }
            if let Some(e) = &p.load_error {
                writeln!(
                    f,
                    "  last load error ({}): {e} (version {} keeps serving)",
                    p.load_error_at.as_deref().unwrap_or("?"),
                    p.version
                )?;
            }
        }
        for (table, ops) in &self.triggers {
            writeln!(f, "capturing {table}: {ops}")?;
        }
        Ok(())
    }
}
