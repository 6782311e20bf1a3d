//! What `status` reports: per plugin, its cursor and backlog; and which
//! transaction, if any, holds delivery back.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;
use tokio_postgres::GenericClient;

use crate::eventlog::{self, Position};
use crate::eventlog::{OpenWriter, open_writers};
use crate::schema::SCHEMA;
use crate::schema::{self, SchemaError};

#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub installed: bool,
    /// Transactions numbered for delivery so far (see `log.rs`), and when the
    /// last tick did.
    pub last_ord: i64,
    pub last_tick_at: Option<String>,
    /// Committed transactions with events that no tick has numbered yet
    /// (a running host ticks within milliseconds of a commit).
    pub unticked: i64,
    /// Transactions open in this database that have written, oldest first:
    /// their events arrive once they commit; meanwhile they keep deleted log
    /// rows from being vacuumed.
    pub open_writers: Vec<OpenWriter>,
    pub plugins: Vec<PluginStatus>,
    /// `"schema"."table"` -> operations captured (`I`, `U`, `D`, `T`).
    pub triggers: BTreeMap<String, String>,
    /// Capture triggers someone disabled (`"schema"."table" OP`): they
    /// capture nothing until the host enables them again (at its next
    /// reconcile).
    pub disabled_triggers: Vec<String>,
    /// Per sink: messages waiting in the outbox, refused, sent, last error.
    pub outbox: Vec<crate::outbox::SinkStatus>,
    /// Hosts that said they were alive within the last minute.
    pub running_hosts: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PluginStatus {
    pub name: String,
    pub version: String,
    pub file: String,
    pub sha256: String,
    pub active: bool,
    pub loaded_at: String,
    /// The oldest partition cursor, and as the command line writes it
    /// (`TXID/SEQ`: the last event acknowledged).
    pub cursor: Option<Position>,
    pub cursor_text: Option<String>,
    /// Events after the cursor that this plugin subscribes to.
    pub waiting: i64,
    pub halted: Option<String>,
    pub last_error: Option<String>,
    pub last_error_at: Option<String>,
    /// The last error was an event's that went to the dead letters (the
    /// plugin went on past it).
    pub last_error_dead_lettered: bool,
    /// It never loaded: this row only says why (`load_error`).
    pub never_loaded: bool,
    /// Why the newest file for this plugin was not loaded (the version shown
    /// keeps serving), and when.
    pub load_error: Option<String>,
    pub load_error_at: Option<String>,
    /// Events in the dead-letter table (see `pgevents-host dead-letters list`).
    pub dead_letters: i64,
    /// Events it received that its own sql writes caused (see the README:
    /// a plugin writing to a table it subscribes to).
    pub own_writes: i64,
    pub partitions: Vec<PartitionStatus>,
}

/// One partition of a plugin's stream.
#[derive(Debug, Clone, Serialize)]
pub struct PartitionStatus {
    pub part: u32,
    pub cursor: Position,
    pub cursor_text: String,
    /// The host delivering it (none: no live lease).
    pub host: Option<String>,
    pub lease_expires_in_seconds: Option<f64>,
}

pub async fn status(client: &impl GenericClient) -> Result<Status, SchemaError> {
    if !schema::is_installed(client).await? {
        return Ok(Status {
            installed: false,
            last_ord: 0,
            last_tick_at: None,
            unticked: 0,
            open_writers: Vec::new(),
            plugins: Vec::new(),
            triggers: BTreeMap::new(),
            disabled_triggers: Vec::new(),
            outbox: Vec::new(),
            running_hosts: Vec::new(),
        });
    }
    let open_writers = open_writers(client, std::time::Duration::ZERO).await?;
    let tick = client
        .query_one(
            &format!(
                "SELECT t.last_ord,
                        to_char(t.ticked_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'),
                        (SELECT count(*) FROM {SCHEMA}.newly_visible(t.snapshot, pg_current_snapshot()))
                 FROM {SCHEMA}.ticker t WHERE t.id = 1"
            ),
            &[],
        )
        .await?;
    let plugins = client
        .query(
            &format!(
                "SELECT p.name, p.version, p.file, p.sha256, p.active,
                        to_char(p.loaded_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'),
                        c.ord, c.seq, p.halted, p.last_error,
                        (SELECT count(*) FROM {SCHEMA}.cursors pc JOIN {} ON {}
                         WHERE pc.plugin = p.name AND {} AND {}),
                        (SELECT count(*) FROM {SCHEMA}.dead_letters d WHERE d.plugin = p.name),
                        p.load_error,
                        to_char(p.load_error_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'),
                        (SELECT k.txid::text FROM {SCHEMA}.commits k WHERE k.ord = c.ord),
                        p.self_events,
                        to_char(p.last_error_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'),
                        EXISTS (SELECT 1 FROM {SCHEMA}.dead_letters d
                                WHERE d.plugin = p.name AND d.error = p.last_error)
                 FROM {SCHEMA}.plugins p
                 LEFT JOIN LATERAL (SELECT ord, seq FROM {SCHEMA}.cursors oc WHERE oc.plugin = p.name
                                    ORDER BY ord, seq LIMIT 1) c ON true
                 ORDER BY p.name",
                eventlog::NUMBERED_EVENTS,
                eventlog::between(("pc.ord", "pc.seq"), ("9223372036854775807", "0")),
                eventlog::subscribed("e", "p.name"),
                eventlog::in_partition("e", "pc")
            ),
            &[],
        )
        .await?
        .iter()
        .map(|r| {
            let cursor = r.get::<_, Option<i64>>(6).map(|ord| Position {
                ord,
                seq: r.get(7),
            });
            PluginStatus {
                name: r.get(0),
                version: r.get(1),
                file: r.get(2),
                sha256: r.get(3),
                active: r.get(4),
                loaded_at: r.get(5),
                cursor,
                cursor_text: cursor.map(|c| eventlog::position_text(c, r.get(14))),
                halted: r.get(8),
                last_error: r.get(9),
                waiting: r.get(10),
                dead_letters: r.get(11),
                load_error: r.get(12),
                load_error_at: r.get(13),
                own_writes: r.get(15),
                last_error_at: r.get(16),
                last_error_dead_lettered: r.get(17),
                never_loaded: r.get::<_, String>(1).is_empty(),
                partitions: Vec::new(),
            }
        })
        .collect::<Vec<_>>();
    let mut plugins = plugins;
    for r in client
        .query(
            &format!(
                "SELECT c.plugin, c.part, c.ord, c.seq, l.owner,
                        extract(epoch FROM l.expires_at - clock_timestamp())::float8,
                        (SELECT k.txid::text FROM {SCHEMA}.commits k WHERE k.ord = c.ord)
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
            let cursor = Position {
                ord: r.get(2),
                seq: r.get(3),
            };
            p.partitions.push(PartitionStatus {
                part: r.get::<_, i32>(1) as u32,
                cursor,
                cursor_text: eventlog::position_text(cursor, r.get(6)),
                host: r.get(4),
                lease_expires_in_seconds: r.get(5),
            });
        }
    }
    let with_state = schema::installed_triggers_with_state(client).await?;
    let disabled_triggers = with_state
        .iter()
        .filter(|(_, enabled)| !enabled)
        .map(|(t, _)| format!("{} {}", schema::quote_table(&t.schema, &t.table), t.op))
        .collect();
    let installed_triggers: Vec<_> = with_state.into_iter().map(|(t, _)| t).collect();
    Ok(Status {
        installed: true,
        last_ord: tick.get(0),
        last_tick_at: tick.get(1),
        unticked: tick.get(2),
        open_writers,
        plugins,
        triggers: schema::by_table(&installed_triggers),
        disabled_triggers,
        outbox: crate::outbox::status(client).await?,
        running_hosts: client
            .query(
                &format!(
                    "SELECT id FROM {SCHEMA}.hosts
                     WHERE seen_at > clock_timestamp() - interval '1 minute' ORDER BY id"
                ),
                &[],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect(),
    })
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.installed {
            return writeln!(
                f,
                "pgevents is not installed in this database (run `pgevents-host install` or `pgevents-host run`)"
            );
        }
        writeln!(
            f,
            "log: {} transaction(s) numbered for delivery, last tick {}{}",
            self.last_ord,
            self.last_tick_at.as_deref().unwrap_or("-"),
            if self.unticked > 0 {
                format!(
                    "; {} committed transaction(s) wait for the next tick",
                    self.unticked
                )
            } else {
                String::new()
            }
        )?;
        for b in &self.open_writers {
            writeln!(
                f,
                "  open writing transaction (its events arrive when it commits): pid {} (user {}, application `{}`), open for {:.1}s, {}: {}",
                b.pid,
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
        if self.running_hosts.is_empty() && self.plugins.iter().any(|p| p.active) {
            writeln!(
                f,
                "no host is running (none said it was alive within the last minute): nothing is delivered until one runs (`pgevents-host run`)"
            )?;
        }
        for p in &self.plugins {
            if p.never_loaded {
                writeln!(
                    f,
                    "plugin {} [not loaded] file {}: {} ({})",
                    p.name,
                    p.file,
                    p.load_error.as_deref().unwrap_or("?"),
                    p.load_error_at.as_deref().unwrap_or("?")
                )?;
                continue;
            }
            let state = match (&p.halted, p.active) {
                (Some(_), _) => "halted",
                (None, true) if self.running_hosts.is_empty() => "active, no host running",
                (None, true) => "active",
                (None, false) => "paused: file missing",
            };
            let cursor = p.cursor_text.as_deref().unwrap_or("-");
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
                    part.cursor_text,
                    part.host.as_deref().unwrap_or("no host")
                )?;
            }
            if let Some(e) = &p.last_error {
                let at = p.last_error_at.as_deref().unwrap_or("?");
                if p.last_error_dead_lettered && p.halted.is_none() {
                    writeln!(
                        f,
                        "  last failure ({at}): {e}\n    that event is in the dead letters (`pgevents-host dead-letters list --plugin {}`); delivery went on past it",
                        p.name
                    )?;
                } else {
                    writeln!(f, "  last error ({at}): {e}")?;
                }
            }
            if p.own_writes > 0 {
                writeln!(
                    f,
                    "  received {} event(s) its own sql writes caused: it writes to a table it subscribes to (a loop?)",
                    p.own_writes
                )?;
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
        for t in &self.disabled_triggers {
            writeln!(
                f,
                "DISABLED capture trigger on {t}: that table's changes are not captured until the host enables it again"
            )?;
        }
        for s in &self.outbox {
            write!(f, "{s}")?;
        }
        Ok(())
    }
}
