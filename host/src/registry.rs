//! The set of live plugins: load every `.wasm` in the plugins folder, check
//! each manifest against the database, record the effective subscriptions and
//! reconcile the capture triggers.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_postgres::{Client, Transaction};

use crate::config::{SCHEMA, Settings, StartFrom};
use crate::runtime::{Grants, LoadError, LoadedPlugin, Manifest, Runtime};
use crate::schema::{self, SchemaError, TableProblem};

/// A file that did not become a running plugin, and why.
#[derive(Debug, Clone)]
pub struct Rejected {
    pub file: PathBuf,
    /// Known when the file loaded but its manifest does not fit the database.
    pub plugin: Option<String>,
    pub error: String,
}

/// What loading the folder produced.
#[derive(Debug)]
pub struct Loaded {
    /// Each with the file it came from.
    pub plugins: Vec<(PathBuf, Arc<LoadedPlugin>)>,
    pub rejected: Vec<Rejected>,
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("cannot read the plugins folder {path}: {source}")]
    Folder {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Schema(#[from] SchemaError),
}

impl From<tokio_postgres::Error> for RegistryError {
    fn from(e: tokio_postgres::Error) -> Self {
        RegistryError::Schema(e.into())
    }
}

/// `.wasm` files directly in `dir`, sorted by name.
pub fn plugin_files(dir: &Path) -> Result<Vec<PathBuf>, RegistryError> {
    let entries = std::fs::read_dir(dir).map_err(|source| RegistryError::Folder {
        path: dir.display().to_string(),
        source,
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        // Not only regular files: a named pipe or a device called `x.wasm` is
        // reported as such (reading one would block or never end).
        .filter(|p| p.extension().is_some_and(|e| e == "wasm") && !p.is_dir())
        .collect();
    files.sort();
    Ok(files)
}

/// Compile `bytes` (read from `file`) off the async threads, with the
/// operator's grants and limits for the name the plugin declares; then narrow
/// its subscriptions to the tables the operator allows, and apply the
/// operator's batch size.
pub async fn load_bytes(
    runtime: &Runtime,
    file: &Path,
    bytes: Vec<u8>,
    settings: &Settings,
) -> Result<LoadedPlugin, Rejected> {
    let loader = runtime.clone();
    let shown = file.display().to_string();
    let policies = settings.clone();
    let result = tokio::task::spawn_blocking(move || {
        let result =
            loader.load_bytes(&shown, &bytes, &|name| Grants::from(&policies.policy(name)));
        drop(bytes);
        crate::runtime::release_free_memory();
        result
    })
    .await
    // A panic while compiling (a bug of the compiler or the host) rejects
    // this file; loading and reloading go on.
    .map_err(|e| Rejected {
        file: file.to_owned(),
        plugin: None,
        error: format!(
            "{}: compiling or loading it panicked (a bug, please report it): {}",
            file.display(),
            panic_text(e)
        ),
    })?;
    let mut plugin = result.map_err(|e| Rejected {
        file: file.to_owned(),
        plugin: match &e {
            LoadError::NotGranted { plugin, .. } => Some(plugin.clone()),
            _ => None,
        },
        error: e.to_string(),
    })?;
    let policy = settings.policy(&plugin.manifest.name);
    let name = plugin.manifest.name.clone();
    let (allowed, refused): (Vec<_>, Vec<_>) = plugin
        .manifest
        .subscriptions
        .drain(..)
        .partition(|s| policy.allows_table(&s.schema, &s.table));
    for s in &refused {
        tracing::warn!(
            plugin = %name,
            "not subscribing to {}.{}: the operator's config does not list it in [plugins.{name}] tables",
            s.schema,
            s.table
        );
    }
    if allowed.is_empty() && !refused.is_empty() {
        return Err(Rejected {
            file: file.to_owned(),
            plugin: Some(name.clone()),
            error: format!(
                "{}: plugin `{name}` subscribes only to tables the operator has not granted it ({}); \
                 list them in `tables` under [plugins.{name}] in the host's config file",
                file.display(),
                refused
                    .iter()
                    .map(|s| format!("{}.{}", s.schema, s.table))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        });
    }
    plugin.manifest.subscriptions = allowed;
    if let Some(size) = policy.batch_size {
        plugin.manifest.batch_size = size;
    }
    Ok(plugin)
}

/// What a task that panicked said.
pub(crate) fn panic_text(e: tokio::task::JoinError) -> String {
    match e.try_into_panic() {
        Ok(payload) => payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(no message)".into()),
        Err(e) => e.to_string(),
    }
}

/// Read and load one file (see [`load_bytes`]).
pub async fn load_file(
    runtime: &Runtime,
    file: &Path,
    settings: &Settings,
) -> Result<LoadedPlugin, Rejected> {
    let bytes = crate::runtime::read_plugin_file(file).map_err(|e| Rejected {
        file: file.to_owned(),
        plugin: None,
        error: e.to_string(),
    })?;
    load_bytes(runtime, file, bytes, settings).await
}

/// Load every plugin in `dir`, register the good ones as the active set
/// (plugins no longer present are paused), and reconcile triggers. A bad file
/// or manifest rejects that plugin only.
pub async fn load_folder(
    runtime: &Runtime,
    client: &mut Client,
    dir: &Path,
    settings: &Settings,
) -> Result<Loaded, RegistryError> {
    let mut plugins: Vec<(PathBuf, LoadedPlugin)> = Vec::new();
    let mut rejected = Vec::new();
    for file in plugin_files(dir)? {
        match load_file(runtime, &file, settings).await {
            Ok(plugin) => {
                if let Some((other, _)) = plugins
                    .iter()
                    .find(|(_, p)| p.manifest.name == plugin.manifest.name)
                {
                    rejected.push(Rejected {
                        plugin: Some(plugin.manifest.name.clone()),
                        error: duplicate_name(&file, &plugin.manifest.name, other),
                        file,
                    });
                } else {
                    plugins.push((file, plugin));
                }
            }
            Err(r) => rejected.push(r),
        }
    }

    let mut accepted = Vec::new();
    for (file, plugin) in plugins {
        match check_subscriptions(client, &plugin.manifest).await? {
            Ok(()) => accepted.push((file, plugin)),
            Err(problem) => rejected.push(Rejected {
                plugin: Some(plugin.manifest.name.clone()),
                error: format!("{}: {problem}", file.display()),
                file,
            }),
        }
    }

    register(client, &accepted, &rejected, settings).await?;
    schema::reconcile_triggers(client, Some(settings.notify)).await?;
    for r in &rejected {
        tracing::error!("plugin not started: {}", r.error);
    }
    for (file, p) in &accepted {
        log_loaded(file, p);
    }
    Ok(Loaded {
        plugins: accepted
            .into_iter()
            .map(|(file, p)| (file, Arc::new(p)))
            .collect(),
        rejected,
    })
}

pub(crate) fn duplicate_name(file: &Path, name: &str, other: &Path) -> String {
    format!(
        "{}: plugin name `{name}` is already used by {}",
        file.display(),
        other.display()
    )
}

pub(crate) fn log_loaded(file: &Path, p: &LoadedPlugin) {
    tracing::info!(
        plugin = %p.manifest.name,
        version = %p.manifest.version,
        file = %file.display(),
        sha256 = %&p.sha256[..12],
        compiled = if p.from_cache { "from cache" } else { "now" },
        "plugin loaded"
    );
}

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

/// Remember why a new file for `name` was not loaded (the running version
/// keeps serving), for `status`.
pub async fn record_load_error(
    client: &Client,
    name: &str,
    error: &str,
) -> Result<(), RegistryError> {
    client
        .execute(
            &format!(
                "UPDATE {SCHEMA}.plugins SET load_error = $2, load_error_at = now() WHERE name = $1"
            ),
            &[&name, &crate::runtime::plugin_text(error.to_owned())],
        )
        .await?;
    Ok(())
}

/// Every subscribed table must exist and be a table; filter columns must exist.
async fn check_subscriptions(
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
async fn register(
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
    let errors: HashMap<&str, &str> = rejected
        .iter()
        .filter_map(|r| Some((r.plugin.as_deref()?, r.error.as_str())))
        .collect();
    for (name, error) in errors {
        tx.execute(
            &format!(
                "UPDATE {SCHEMA}.plugins SET load_error = $2, load_error_at = now() WHERE name = $1"
            ),
            &[&name, &crate::runtime::plugin_text(error.to_owned())],
        )
        .await?;
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
        crate::log::ensure_cursors(tx, &m.name, policy.partitions, from_beginning).await?
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
