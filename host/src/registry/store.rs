//! The registry's database side: plugins, their subscriptions and cursors,
//! and the capture triggers they need.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use tokio_postgres::{Client, GenericClient, Transaction};

use super::{RegistryError, Rejected};
use crate::config::{Settings, StartFrom};
use crate::runtime::{LoadedPlugin, Manifest};
use crate::schema::SCHEMA;
use crate::schema::{self, SchemaError, TableProblem};

/// Make `plugin` (from `file`) the registered version of its name, if its
/// subscriptions fit the database: record it with its subscriptions and
/// cursors and reconcile the capture triggers, all before it serves. Returns
/// why not, if it does not fit.
pub async fn activate(
    client: &mut Client,
    file: &Path,
    plugin: &LoadedPlugin,
    settings: &Settings,
) -> Result<Result<(), String>, RegistryError> {
    if let Err(problem) = check_subscriptions(client, &plugin.manifest).await? {
        return Ok(Err(format!("{}: {problem}", file.display())));
    }
    let tx = client.transaction().await?;
    schema::lock_install(&tx).await?;
    register_one(&tx, file, plugin, settings).await?;
    tx.commit().await?;
    schema::reconcile_triggers(client, Some(settings.notify)).await?;
    Ok(Ok(()))
}

/// Pause a plugin whose file is gone: it keeps its cursor and subscriptions
/// (its tables stay captured), so putting the file back resumes it.
pub async fn deactivate(client: &Client, name: &str) -> Result<(), RegistryError> {
    client
        .execute(
            &format!("UPDATE {SCHEMA}.plugins SET active = false WHERE name = $1"),
            &[&name],
        )
        .await?;
    Ok(())
}

/// Remember why a file for `name` was not loaded, for `status`: on the
/// plugin's row if it ever served (that version keeps serving), or on a row
/// of its own (version empty, inactive, no cursors) so that `status` lists a
/// plugin that never loaded too.
pub async fn record_load_error(
    client: &impl GenericClient,
    name: &str,
    file: &Path,
    error: &str,
) -> Result<(), RegistryError> {
    client
        .execute(
            &format!(
                "INSERT INTO {SCHEMA}.plugins AS p (name, version, file, sha256, manifest, active, load_error, load_error_at)
                 VALUES ($1, '', $3, '', 'null', false, $2, now())
                 ON CONFLICT (name) DO UPDATE SET load_error = $2, load_error_at = now()"
            ),
            &[
                &name,
                &crate::runtime::plugin_text(error.to_owned()),
                &file.display().to_string(),
            ],
        )
        .await?;
    Ok(())
}

/// Every subscribed table must exist and be a table; filter columns must exist.
pub(super) async fn check_subscriptions(
    client: &Client,
    manifest: &Manifest,
) -> Result<Result<(), String>, SchemaError> {
    for s in &manifest.subscriptions {
        let shown = schema::quote_table(&s.schema, &s.table);
        let mut facts = schema::table_facts(client, &s.schema, &s.table).await?;
        if matches!(facts, Err(TableProblem::Missing { .. }))
            && let Some(row) = client
                .query_opt(
                    &format!(
                        "SELECT n.nspname::text, c.relname::text FROM {SCHEMA}.subscriptions s
                         JOIN pg_class c ON c.oid = s.relid AND c.relkind = 'r'
                         JOIN pg_namespace n ON n.oid = c.relnamespace
                         WHERE s.plugin = $1 AND s.schema_name = $2 AND s.table_name = $3"
                    ),
                    &[&manifest.name, &s.schema, &s.table],
                )
                .await?
        {
            // Renamed since it subscribed: still its table, followed by identity.
            let (schema_now, table_now): (String, String) = (row.get(0), row.get(1));
            tracing::warn!(
                plugin = %manifest.name,
                subscribed = %shown,
                now = %schema::quote_table(&schema_now, &table_now),
                "a subscribed table was renamed: it is still captured and delivered under the subscribed name; update the plugin's manifest"
            );
            facts = schema::table_facts(client, &schema_now, &table_now).await?;
        }
        let facts = match facts {
            Ok(facts) => facts,
            Err(TableProblem::Missing { suggestion }) => {
                let hint = suggestion
                    .map(|t| format!(" (did you mean `{t}`?)"))
                    .unwrap_or_default();
                return Ok(Err(format!(
                    "plugin `{}` subscribes to table `{}.{}`, which does not exist{hint}",
                    manifest.name, s.schema, s.table
                )));
            }
            Err(TableProblem::NotATable { kind }) => {
                return Ok(Err(format!(
                    "plugin `{}` subscribes to {shown}, which is {kind}; only tables can be captured",
                    manifest.name
                )));
            }
        };
        if facts.deferrable_key {
            tracing::warn!(
                plugin = %manifest.name,
                table = %shown,
                "the table's primary key is DEFERRABLE: when one transaction deletes a key and another inserts it at the same time, the two events may arrive in either order (every other change of a row arrives in order)"
            );
        }
        for column in s.changed_columns.iter().flatten() {
            if !facts.columns.contains(column) {
                return Ok(Err(format!(
                    "plugin `{}` filters updates of {shown} on column `{column}`, which the table does not have (columns: {})",
                    manifest.name,
                    facts.columns.join(", ")
                )));
            }
        }
    }
    Ok(Ok(()))
}

/// Record the active set in one transaction: accepted plugins with their
/// subscriptions and cursors. Every other plugin is paused: it keeps its cursor
/// and its subscriptions (so its tables stay captured and nothing is lost while
/// its file is away) until `forget` removes it.
pub(super) async fn register(
    client: &mut Client,
    accepted: &[(PathBuf, LoadedPlugin)],
    rejected: &[Rejected],
    settings: &Settings,
) -> Result<(), RegistryError> {
    let tx = client.transaction().await?;
    schema::lock_install(&tx).await?;
    let names: Vec<&str> = accepted
        .iter()
        .map(|(_, p)| p.manifest.name.as_str())
        .collect();
    tx.execute(
        &format!("UPDATE {SCHEMA}.plugins SET active = false WHERE NOT name = ANY($1)"),
        &[&names],
    )
    .await?;
    for (file, plugin) in accepted {
        register_one(&tx, file, plugin, settings).await?;
    }
    let errors: HashMap<&str, &Rejected> = rejected
        .iter()
        .filter_map(|r| Some((r.plugin.as_deref()?, r)))
        .collect();
    for (name, r) in errors {
        record_load_error(&tx, name, &r.file, &r.error).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Record `plugin` (from `file`) as active with its subscriptions, and give
/// it cursors if it has none (where, `start_from` says).
async fn register_one(
    tx: &Transaction<'_>,
    file: &Path,
    plugin: &LoadedPlugin,
    settings: &Settings,
) -> Result<(), RegistryError> {
    let m = &plugin.manifest;
    let manifest_json = serde_json::to_value(m).expect("manifest serializes");
    tx.execute(
        &format!(
            "INSERT INTO {SCHEMA}.plugins (name, version, file, sha256, manifest, active)
             VALUES ($1, $2, $3, $4, $5, true)
             ON CONFLICT (name) DO UPDATE SET version = $2, file = $3, sha256 = $4,
                 manifest = $5, active = true, loaded_at = now(), halted = NULL,
                 load_error = NULL, load_error_at = NULL"
        ),
        &[
            &m.name,
            &m.version,
            &file.display().to_string(),
            &plugin.sha256,
            &manifest_json,
        ],
    )
    .await?;
    // The table each subscription means: the one of its name, or else the
    // one it followed before (renamed meanwhile: see `reconcile_triggers`).
    let before: Vec<(String, String, Option<u32>)> = tx
        .query(
            &format!(
                "SELECT s.schema_name, s.table_name, c.oid FROM {SCHEMA}.subscriptions s
                 JOIN pg_class c ON c.oid = s.relid AND c.relkind = 'r' WHERE s.plugin = $1"
            ),
            &[&m.name],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    tx.execute(
        &format!("DELETE FROM {SCHEMA}.subscriptions WHERE plugin = $1"),
        &[&m.name],
    )
    .await?;
    for s in &m.subscriptions {
        let followed = before
            .iter()
            .find(|(schema, table, _)| *schema == s.schema && *table == s.table)
            .and_then(|(_, _, oid)| *oid);
        tx.execute(
            &format!(
                "INSERT INTO {SCHEMA}.subscriptions (plugin, schema_name, table_name, ops, changed_columns, relid)
                 SELECT $1, $2, $3, $4::\"char\"[], $5, coalesce(c.oid, $6)
                 FROM (SELECT 1) AS one
                 LEFT JOIN pg_namespace n ON n.nspname = $2
                 LEFT JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = $3 AND c.relkind = 'r'"
            ),
            &[&m.name, &s.schema, &s.table, &s.op_codes(), &s.changed_columns, &followed],
        )
        .await?;
    }
    let policy = settings.policy(&m.name);
    let from_beginning = policy.start_from == StartFrom::Beginning;
    if let Some(stored) =
        crate::eventlog::ensure_cursors(tx, &m.name, policy.partitions, from_beginning).await?
    {
        tracing::warn!(
            plugin = %m.name,
            configured = policy.partitions,
            in_database = stored,
            "the plugin keeps its {stored} partition(s); to change that, stop every host that runs it and use `pgevents-host repartition {} {}`",
            m.name,
            policy.partitions
        );
    }
    Ok(())
}

/// Remove a plugin for good: its registration, subscriptions, cursors, leases
/// and attempt counts (its dead letters stay until purged); then
/// drop the triggers no other plugin needs. Returns whether it was known.
pub async fn forget(client: &mut Client, name: &str) -> Result<bool, RegistryError> {
    let tx = client.transaction().await?;
    schema::lock_install(&tx).await?;
    let plugins = tx
        .execute(
            &format!("DELETE FROM {SCHEMA}.plugins WHERE name = $1"),
            &[&name],
        )
        .await?;
    let cursors = tx
        .execute(
            &format!("DELETE FROM {SCHEMA}.cursors WHERE plugin = $1"),
            &[&name],
        )
        .await?;
    for table in ["leases", "attempts"] {
        tx.execute(
            &format!("DELETE FROM {SCHEMA}.{table} WHERE plugin = $1"),
            &[&name],
        )
        .await?;
    }
    tx.commit().await?;
    schema::reconcile_triggers(client, None).await?;
    Ok(plugins + cursors > 0)
}
