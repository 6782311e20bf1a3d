//! The trigger reconciler: makes the set of capture triggers equal to what the
//! active plugins' subscriptions need, per table and per operation. It only
//! ever drops triggers that call `pgevents.capture()`, but every one of those
//! it does not want, whatever its name: one a table owner renamed would
//! capture every change twice, one another role attached would forge events.

use std::collections::{BTreeMap, BTreeSet};

use tokio_postgres::{Client, GenericClient};

use super::SCHEMA;
use super::{SchemaError, quote_ident, quote_literal, quote_table};

/// One installed or wanted capture trigger.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct CaptureTrigger {
    pub schema: String,
    pub table: String,
    /// `I`, `U`, `D` or `T`.
    pub op: char,
    /// `notify` or `quiet`, then the primary-key columns.
    pub args: Vec<String>,
    /// The trigger's name, and its `pg_trigger.tgtype` (event, row or
    /// statement level): a wanted trigger has its canonical name and type.
    pub name: String,
    pub tgtype: i16,
}

impl CaptureTrigger {
    /// The trigger the host installs on `schema.table` for `op`.
    fn wanted(schema: String, table: String, op: char, args: Vec<String>) -> CaptureTrigger {
        // pg_trigger.tgtype bits: ROW 1, INSERT 4, DELETE 8, UPDATE 16,
        // TRUNCATE 32 (AFTER: no BEFORE bit).
        let tgtype = match op {
            'I' => 4,
            'D' => 8,
            'U' => 16 | 1,
            _ => 32,
        };
        CaptureTrigger {
            schema,
            table,
            op,
            args,
            name: trigger_name(op).to_owned(),
            tgtype,
        }
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn create_sql(&self) -> String {
        let table = quote_table(&self.schema, &self.table);
        let (event, level) = match self.op {
            'I' => (
                "INSERT",
                "REFERENCING NEW TABLE AS pgevents_new_rows FOR EACH STATEMENT",
            ),
            'D' => (
                "DELETE",
                "REFERENCING OLD TABLE AS pgevents_old_rows FOR EACH STATEMENT",
            ),
            'U' => ("UPDATE", "FOR EACH ROW"),
            _ => ("TRUNCATE", "FOR EACH STATEMENT"),
        };
        let args: Vec<String> = self.args.iter().map(|a| quote_literal(a)).collect();
        format!(
            "CREATE TRIGGER {} AFTER {event} ON {table} {level} EXECUTE FUNCTION {SCHEMA}.capture({})",
            quote_ident(self.name()),
            args.join(", ")
        )
    }

    fn enable_sql(&self) -> String {
        format!(
            "ALTER TABLE {} ENABLE TRIGGER {}",
            quote_table(&self.schema, &self.table),
            quote_ident(self.name())
        )
    }

    pub(crate) fn drop_sql(&self) -> String {
        format!(
            "DROP TRIGGER IF EXISTS {} ON {}",
            quote_ident(self.name()),
            quote_table(&self.schema, &self.table)
        )
    }
}

fn trigger_name(op: char) -> &'static str {
    match op {
        'I' => "pgevents_capture_insert",
        'U' => "pgevents_capture_update",
        'D' => "pgevents_capture_delete",
        _ => "pgevents_capture_truncate",
    }
}

/// What a reconcile changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReconcileReport {
    pub created: Vec<CaptureTrigger>,
    pub dropped: Vec<CaptureTrigger>,
    /// Wanted triggers someone had disabled (they captured nothing), enabled again.
    pub enabled: Vec<CaptureTrigger>,
    /// Subscribed tables now under another name: `(plugin, subscribed as, now)`.
    /// They are followed by identity; their events carry the subscribed name.
    pub renamed: Vec<(String, String, String)>,
    /// Changes that failed (a lock timeout, a name clash), with the error; the rest were applied.
    pub failed: Vec<(CaptureTrigger, String)>,
}

/// Capture triggers currently installed (those calling `pgevents.capture()`).
pub(crate) async fn installed(
    client: &impl GenericClient,
) -> Result<Vec<CaptureTrigger>, SchemaError> {
    Ok(installed_with_state(client)
        .await?
        .into_iter()
        .map(|(t, _)| t)
        .collect())
}

/// [`installed`], each with whether it fires for ordinary sessions (a table
/// owner may have disabled it, or set it to fire for replicas only).
pub(crate) async fn installed_with_state(
    client: &impl GenericClient,
) -> Result<Vec<(CaptureTrigger, bool)>, SchemaError> {
    let rows = client
        .query(
            "SELECT n.nspname::text, c.relname::text, t.tgname::text, t.tgargs,
                    t.tgenabled IN ('O', 'A'), t.tgtype
             FROM pg_trigger t
             JOIN pg_class c ON c.oid = t.tgrelid
             JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE t.tgfoid = to_regprocedure($1) AND NOT t.tgisinternal AND t.tgparentid = 0",
            &[&format!("{SCHEMA}.capture()")],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| {
            let name: String = row.get(2);
            let raw: Vec<u8> = row.get(3);
            // tgargs: each argument is NUL-terminated, so the split leaves an empty tail.
            let mut args: Vec<String> = raw
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            args.pop();
            let op = ['I', 'U', 'D', 'T']
                .into_iter()
                .find(|op| trigger_name(*op) == name)
                .unwrap_or('?');
            let trigger = CaptureTrigger {
                schema: row.get(0),
                table: row.get(1),
                op,
                args,
                name,
                tgtype: row.get(5),
            };
            (trigger, row.get(4))
        })
        .collect())
}

/// Capture triggers the registered plugins' subscriptions need (paused plugins
/// included: events wait for them), on the tables they subscribed to by
/// identity. Tables that no longer exist are left out, and so are the host's
/// own and the system's (an older version accepted such subscriptions: a
/// trigger on the log captured its own writes, one on the cursors every
/// acknowledgement).
async fn wanted(
    client: &impl GenericClient,
    notify: bool,
) -> Result<BTreeSet<CaptureTrigger>, SchemaError> {
    let rows = client
        .query(
            &format!(
                "SELECT n.nspname::text, c.relname::text, array_agg(DISTINCT o::text) AS ops,
                        -- The name its events carry: the subscribed one (the
                        -- table's own, when a subscription uses it).
                        (array_agg(s.schema_name ORDER BY (s.schema_name, s.table_name) = (n.nspname::text, c.relname::text) DESC,
                                                          s.schema_name, s.table_name))[1],
                        (array_agg(s.table_name ORDER BY (s.schema_name, s.table_name) = (n.nspname::text, c.relname::text) DESC,
                                                         s.schema_name, s.table_name))[1],
                        coalesce((SELECT array_agg(a.attname::text ORDER BY k.ord)
                                  FROM pg_index i
                                  CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
                                  JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                                  WHERE i.indrelid = c.oid AND i.indisprimary), '{{}}') AS keys
                 FROM {SCHEMA}.subscriptions s
                 CROSS JOIN LATERAL unnest(s.ops) AS o
                 JOIN pg_class c ON c.oid = s.relid AND c.relkind = 'r' AND NOT c.relispartition
                 JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE n.nspname NOT IN ('{SCHEMA}', 'pg_catalog', 'information_schema')
                   AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'
                 GROUP BY n.nspname, c.relname, c.oid"
            ),
            &[],
        )
        .await?;
    let mut wanted = BTreeSet::new();
    for row in rows {
        let schema: String = row.get(0);
        let table: String = row.get(1);
        let ops: Vec<String> = row.get(2);
        let keys: Vec<String> = row.get(5);
        let mut args = vec![
            if notify {
                "notify/named"
            } else {
                "quiet/named"
            }
            .to_owned(),
            row.get(3),
            row.get(4),
        ];
        args.extend(keys);
        for op in ops {
            wanted.insert(CaptureTrigger::wanted(
                schema.clone(),
                table.clone(),
                op.chars().next().unwrap_or('?'),
                args.clone(),
            ));
        }
    }
    Ok(wanted)
}

/// Install missing capture triggers and drop ones no registered plugin needs.
/// A trigger whose arguments are stale (the key changed, NOTIFY was
/// switched) is replaced. `notify: None` keeps the installed mode.
///
/// Each table's changes are one short transaction of their own: creating or
/// dropping a trigger needs a lock on the table, and a request queued behind
/// a long reader or writer makes every other session of that table wait
/// behind it. So each try waits at most `TRIGGER_LOCK_TRY_MS`, gives way,
/// and tries again a little later (`TRIGGER_LOCK_TRIES` times), and no lock
/// on one table is held while another one is waited for.
pub async fn reconcile_triggers(
    client: &mut Client,
    notify: Option<bool>,
) -> Result<ReconcileReport, SchemaError> {
    let tx = client.transaction().await?;
    super::lock_install(&tx).await?;
    // Which table each subscription means: the one of its name, if there is
    // one (a table renamed and one of the old name created: the new one);
    // else the one it had, by identity, if that still exists under another
    // name (renamed), unless another subscription of the plugin has it.
    tx.execute(
        &format!(
            "WITH named AS (
                 SELECT s.plugin, s.schema_name, s.table_name,
                        (SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                         WHERE n.nspname = s.schema_name AND c.relname = s.table_name
                           AND c.relkind = 'r') AS by_name,
                        (SELECT c.oid FROM pg_class c WHERE c.oid = s.relid AND c.relkind = 'r') AS kept
                 FROM {SCHEMA}.subscriptions s),
             desired AS (
                 SELECT d.plugin, d.schema_name, d.table_name,
                        coalesce(d.by_name,
                                 CASE WHEN NOT EXISTS (SELECT 1 FROM named o
                                                       WHERE o.plugin = d.plugin AND o.by_name = d.kept)
                                      THEN d.kept END) AS relid
                 FROM named d)
             UPDATE {SCHEMA}.subscriptions s SET relid = d.relid FROM desired d
             WHERE d.plugin = s.plugin AND d.schema_name = s.schema_name AND d.table_name = s.table_name
               AND s.relid IS DISTINCT FROM d.relid"
        ),
        &[],
    )
    .await?;
    let mut report = ReconcileReport::default();
    for row in tx
        .query(
            &format!(
                "SELECT s.plugin, format('%I.%I', s.schema_name, s.table_name),
                        format('%I.%I', n.nspname, c.relname)
                 FROM {SCHEMA}.subscriptions s
                 JOIN pg_class c ON c.oid = s.relid JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE (n.nspname, c.relname) <> (s.schema_name, s.table_name)"
            ),
            &[],
        )
        .await?
    {
        report.renamed.push((row.get(0), row.get(1), row.get(2)));
    }
    let with_state = installed_with_state(&tx).await?;
    let have: BTreeSet<CaptureTrigger> = with_state.iter().map(|(t, _)| t.clone()).collect();
    let notify = notify.unwrap_or_else(|| {
        !have
            .iter()
            .any(|t| t.args.first().is_some_and(|a| a.starts_with("quiet")))
    });
    let wanted = wanted(&tx, notify).await?;
    tx.commit().await?;

    // Per table: drops first (a stale trigger and its replacement share a
    // name), then creates, then enabling a wanted trigger someone disabled
    // (ALTER TABLE ... DISABLE TRIGGER: it captured nothing meanwhile).
    let mut per_table: BTreeMap<(String, String), Vec<(CaptureTrigger, Change)>> = BTreeMap::new();
    let changes = have
        .difference(&wanted)
        .map(|t| (t.clone(), Change::Drop))
        .chain(
            wanted
                .difference(&have)
                .map(|t| (t.clone(), Change::Create)),
        )
        .chain(
            with_state
                .iter()
                .filter(|(t, enabled)| !enabled && wanted.contains(t))
                .map(|(t, _)| (t.clone(), Change::Enable)),
        );
    for (trigger, change) in changes {
        per_table
            .entry((trigger.schema.clone(), trigger.table.clone()))
            .or_default()
            .push((trigger, change));
    }
    for ((schema, table), changes) in per_table {
        match change_table(client, &changes).await {
            Ok(()) => {
                for (trigger, change) in changes {
                    match change {
                        Change::Create => report.created.push(trigger),
                        Change::Drop => report.dropped.push(trigger),
                        Change::Enable => report.enabled.push(trigger),
                    }
                }
            }
            Err(error) => {
                tracing::error!(
                    table = %quote_table(&schema, &table),
                    "could not change the capture triggers: {error}"
                );
                for (trigger, _) in changes {
                    report.failed.push((trigger, error.clone()));
                }
            }
        }
    }
    for t in &report.enabled {
        tracing::warn!(
            table = %quote_table(&t.schema, &t.table), op = %t.op,
            "a capture trigger had been disabled (ALTER TABLE ... DISABLE TRIGGER), so changes of this table were not captured meanwhile; enabled it again"
        );
    }
    for t in &report.created {
        tracing::info!(table = %quote_table(&t.schema, &t.table), op = %t.op, "installed capture trigger");
    }
    for t in &report.dropped {
        tracing::info!(table = %quote_table(&t.schema, &t.table), op = %t.op, "dropped capture trigger");
    }
    Ok(report)
}

/// A change to a capture trigger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    Create,
    Drop,
    Enable,
}

/// How long one try to change a table's triggers waits for its lock, how
/// many tries there are, and the pause between them (doubling, at most 2 s).
const TRIGGER_LOCK_TRY_MS: u64 = 100;
const TRIGGER_LOCK_TRIES: u32 = 30;
const TRIGGER_LOCK_PAUSE_MS: u64 = 100;

/// Apply one table's `changes` in one transaction under the install lock,
/// in short tries (see [`reconcile_triggers`]).
async fn change_table(
    client: &mut Client,
    changes: &[(CaptureTrigger, Change)],
) -> Result<(), String> {
    let mut pause = std::time::Duration::from_millis(TRIGGER_LOCK_PAUSE_MS);
    for attempt in 1..=TRIGGER_LOCK_TRIES {
        let result = async {
            let tx = client.transaction().await?;
            super::lock_install(&tx).await?;
            tx.batch_execute(&format!("SET LOCAL lock_timeout = {TRIGGER_LOCK_TRY_MS}"))
                .await?;
            let mut ordered: Vec<&(CaptureTrigger, Change)> = changes.iter().collect();
            ordered.sort_by_key(|(_, c)| match c {
                Change::Drop => 0,
                Change::Create => 1,
                Change::Enable => 2,
            });
            for (trigger, change) in ordered {
                let sql = match change {
                    Change::Drop => trigger.drop_sql(),
                    // Another host may have made it meanwhile: replace it.
                    Change::Create => format!("{}; {}", trigger.drop_sql(), trigger.create_sql()),
                    Change::Enable => trigger.enable_sql(),
                };
                tx.batch_execute(&sql).await?;
            }
            tx.commit().await?;
            Ok::<(), tokio_postgres::Error>(())
        }
        .await;
        match result {
            Ok(()) => return Ok(()),
            Err(e) if crate::db::sqlstate::is_lock_timeout(&e) && attempt < TRIGGER_LOCK_TRIES => {
                tracing::debug!(
                    "a table's lock is busy; changing its capture triggers again in {pause:?}"
                );
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(std::time::Duration::from_secs(2));
            }
            Err(e) => return Err(crate::db::error_text(&e)),
        }
    }
    Err("its lock stayed busy".into())
}

/// Primary-key-less and other table facts a subscription is checked against.
#[derive(Debug, Clone)]
pub struct TableFacts {
    pub columns: Vec<String>,
    /// The primary key is DEFERRABLE: a writer inserting a key another one
    /// deletes does not wait for it, so those two changes may arrive in
    /// either order.
    pub deferrable_key: bool,
}

/// Why a subscription's table cannot be captured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TableProblem {
    Missing { suggestion: Option<String> },
    NotATable { kind: String },
}

/// Look a table up by its exact (unquoted) schema and name.
pub async fn table_facts(
    client: &impl GenericClient,
    schema: &str,
    table: &str,
) -> Result<Result<TableFacts, TableProblem>, SchemaError> {
    let row = client
        .query_opt(
            "SELECT c.relkind::text, c.relispartition,
                    array(SELECT a.attname::text FROM pg_attribute a
                          WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
                          ORDER BY a.attnum),
                    EXISTS (SELECT 1 FROM pg_index i
                            WHERE i.indrelid = c.oid AND i.indisprimary AND NOT i.indimmediate)
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = $1 AND c.relname = $2",
            &[&schema, &table],
        )
        .await?;
    let Some(row) = row else {
        return Ok(Err(TableProblem::Missing {
            suggestion: suggest_table(client, schema, table).await?,
        }));
    };
    let kind: String = row.get(0);
    let is_partition: bool = row.get(1);
    if kind != "r" || is_partition {
        let kind = match kind.as_str() {
            _ if is_partition => "a partition of a partitioned table (not supported yet)",
            "p" => "a partitioned table (not supported yet)",
            "v" => "a view",
            "m" => "a materialized view",
            "f" => "a foreign table",
            "S" => "a sequence",
            "i" | "I" => "an index",
            _ => "not a plain table",
        };
        return Ok(Err(TableProblem::NotATable { kind: kind.into() }));
    }
    Ok(Ok(TableFacts {
        columns: row.get(2),
        deferrable_key: row.get(3),
    }))
}

/// The closest existing user table by edit distance, if it is close.
async fn suggest_table(
    client: &impl GenericClient,
    schema: &str,
    table: &str,
) -> Result<Option<String>, SchemaError> {
    let rows = client
        .query(
            "SELECT n.nspname::text, c.relname::text FROM pg_class c
             JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE c.relkind IN ('r', 'p')
               AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pgevents')
               AND n.nspname NOT LIKE 'pg_toast%'",
            &[],
        )
        .await?;
    let wanted = format!("{schema}.{table}");
    Ok(rows
        .iter()
        .map(|r| format!("{}.{}", r.get::<_, String>(0), r.get::<_, String>(1)))
        .map(|name| {
            (
                edit_distance(&wanted.to_lowercase(), &name.to_lowercase()),
                name,
            )
        })
        .filter(|(d, _)| *d <= 3.max(wanted.len() / 4))
        .min()
        .map(|(_, name)| name))
}

/// Levenshtein distance over chars.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Group for display: `schema.table` -> operations.
pub fn by_table(triggers: &[CaptureTrigger]) -> BTreeMap<String, String> {
    let mut map: BTreeMap<String, String> = BTreeMap::new();
    for t in triggers {
        map.entry(quote_table(&t.schema, &t.table))
            .or_default()
            .push(t.op);
    }
    for ops in map.values_mut() {
        *ops = "IUDT".chars().filter(|op| ops.contains(*op)).collect();
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance_counts_edits() {
        assert_eq!(edit_distance("public.orderz", "public.orders"), 1);
        assert_eq!(edit_distance("abc", "abc"), 0);
        assert_eq!(edit_distance("", "ab"), 2);
    }

    #[test]
    fn create_sql_quotes_everything() {
        let t = CaptureTrigger::wanted(
            "Odd Schema".into(),
            "Mixed \"Case\"; Table".into(),
            'I',
            vec!["notify".into(), "it's".into()],
        );
        assert_eq!(
            t.create_sql(),
            "CREATE TRIGGER \"pgevents_capture_insert\" AFTER INSERT ON \"Odd Schema\".\"Mixed \"\"Case\"\"; Table\" \
             REFERENCING NEW TABLE AS pgevents_new_rows FOR EACH STATEMENT \
             EXECUTE FUNCTION pgevents.capture(E'notify', E'it''s')"
        );
    }
}
