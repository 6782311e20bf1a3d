//! `events export`: events from the log, in delivery order, as JSONL in the
//! shape `test` reads.

use std::time::SystemTime;

use tokio_postgres::Client;
use tokio_postgres::types::ToSql;

use super::RecordedEvent;
use crate::event::LoggedEvent;
use crate::eventlog::{EVENT_COLUMNS, same_table};
use crate::schema::SCHEMA;

/// Which events to export.
#[derive(Debug, Clone)]
pub enum ExportFilter {
    /// The events this plugin subscribes to (its tables, operations and
    /// changed-column filters), as the host would deliver them.
    Plugin(String),
    /// Every event of this table (`schema.table`, or a table in `public`).
    Table { schema: String, table: String },
}

/// Write the numbered (committed) events that `filter` selects, captured
/// at or after `since`, oldest first, at most `limit`, one JSON object per
/// line to `out`. Returns how many were written.
pub async fn export(
    client: &Client,
    filter: &ExportFilter,
    since: Option<SystemTime>,
    limit: Option<u64>,
    out: &mut dyn std::io::Write,
) -> anyhow::Result<u64> {
    let since = since.map(|t| {
        let micros = t
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_micros() as i64)
            .unwrap_or(0);
        micros as f64 / 1e6
    });
    let limit = limit.map(|n| n.min(i64::MAX as u64) as i64);
    let (plugin, schema, table): (&str, &str, &str) = match filter {
        ExportFilter::Plugin(plugin) => (plugin, "", ""),
        ExportFilter::Table { schema, table } => ("", schema, table),
    };
    if !plugin.is_empty() {
        let known: bool = client
            .query_one(
                &format!("SELECT EXISTS (SELECT FROM {SCHEMA}.plugins WHERE name = $1)"),
                &[&plugin],
            )
            .await?
            .get(0);
        if !known {
            anyhow::bail!("no plugin named `{plugin}` is registered (see `pgevents-host status`)");
        }
    }
    // What the deliverer's reader wants of a row, for a plugin (see
    // `eventlog/reader.rs`); for a table, every event of it.
    let sql = format!(
        "SELECT c.ord, {EVENT_COLUMNS}
         FROM {SCHEMA}.commits c
         JOIN {SCHEMA}.events e ON e.txid = c.txid
         WHERE ($1::text = '' OR EXISTS (
                  SELECT FROM {SCHEMA}.subscriptions s
                  WHERE s.plugin = $1 AND {same} AND e.op = ANY (s.ops)
                    AND (e.op <> 'U' OR s.changed_columns IS NULL OR EXISTS (
                         SELECT 1 FROM unnest(s.changed_columns) AS col
                         WHERE e.new_row -> col IS DISTINCT FROM e.old_row -> col))))
           AND ($2::text = '' OR (e.schema_name = $2 AND e.table_name = $3::text))
           AND ($4::float8 IS NULL OR e.captured_at >= to_timestamp($4::float8))
         ORDER BY c.ord, e.seq
         LIMIT $5::bigint",
        same = same_table("s", "e")
    );
    let params: [&(dyn ToSql + Sync); 5] = [&plugin, &schema, &table, &since, &limit];
    let rows = client.query(&sql, &params).await?;
    let mut written = 0;
    for row in &rows {
        let line = serde_json::to_string(&RecordedEvent::from_logged(LoggedEvent::from_row(row)))?;
        writeln!(out, "{line}")?;
        written += 1;
    }
    out.flush()?;
    Ok(written)
}
