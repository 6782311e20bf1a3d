//! The set of live plugins: load every `.wasm` in the plugins folder, check
//! each manifest against the database, record the effective subscriptions and
//! reconcile the capture triggers.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_postgres::Client;

use crate::config::{SCHEMA, Settings};
use crate::runtime::{Limits, LoadedPlugin, Manifest, Runtime};
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
    pub plugins: Vec<Arc<LoadedPlugin>>,
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
        .filter(|p| p.extension().is_some_and(|e| e == "wasm") && p.is_file())
        .collect();
    files.sort();
    Ok(files)
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
    let limits = Limits::from(settings);
    let mut plugins: Vec<(PathBuf, LoadedPlugin)> = Vec::new();
    let mut rejected = Vec::new();
    for file in plugin_files(dir)? {
        let loader = runtime.clone();
        let path = file.clone();
        // Compiling is CPU work: keep it off the async threads.
        let result = tokio::task::spawn_blocking(move || loader.load(&path, limits))
            .await
            .expect("plugin compilation panicked");
        match result {
            Ok(plugin) => {
                if let Some((other, _)) = plugins
                    .iter()
                    .find(|(_, p)| p.manifest.name == plugin.manifest.name)
                {
                    rejected.push(Rejected {
                        plugin: Some(plugin.manifest.name.clone()),
                        error: format!(
                            "{}: plugin name `{}` is already used by {}",
                            file.display(),
                            plugin.manifest.name,
                            other.display()
                        ),
                        file,
                    });
                } else {
                    plugins.push((file, plugin));
                }
            }
            Err(e) => rejected.push(Rejected {
                file,
                plugin: None,
                error: e.to_string(),
            }),
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
        tracing::info!(
            plugin = %p.manifest.name,
            version = %p.manifest.version,
            file = %file.display(),
            compiled = if p.from_cache { "from cache" } else { "now" },
            "plugin loaded"
        );
    }
    Ok(Loaded {
        plugins: accepted.into_iter().map(|(_, p)| Arc::new(p)).collect(),
        rejected,
    })
}

/// Every subscribed table must exist and be a table; filter columns must exist.
async fn check_subscriptions(
    client: &Client,
    manifest: &Manifest,
) -> Result<Result<(), String>, SchemaError> {
    for s in &manifest.subscriptions {
        let shown = schema::quote_table(&s.schema, &s.table);
        let facts = match schema::table_facts(client, &s.schema, &s.table).await? {
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
        let m = &plugin.manifest;
        let manifest_json = serde_json::to_value(m).expect("manifest serializes");
        tx.execute(
            &format!(
                "INSERT INTO {SCHEMA}.plugins (name, version, file, sha256, manifest, active)
                 VALUES ($1, $2, $3, $4, $5, true)
                 ON CONFLICT (name) DO UPDATE SET version = $2, file = $3, sha256 = $4,
                     manifest = $5, active = true, loaded_at = now(), halted = NULL"
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
        tx.execute(
            &format!("DELETE FROM {SCHEMA}.subscriptions WHERE plugin = $1"),
            &[&m.name],
        )
        .await?;
        for s in &m.subscriptions {
            tx.execute(
                &format!(
                    "INSERT INTO {SCHEMA}.subscriptions (plugin, schema_name, table_name, ops, changed_columns)
                     VALUES ($1, $2, $3, $4::\"char\"[], $5)"
                ),
                &[&m.name, &s.schema, &s.table, &s.op_codes(), &s.changed_columns],
            )
            .await?;
        }
        let policy = settings.policy(&m.name);
        if let Some(stored) = crate::log::ensure_cursors(&tx, &m.name, policy.partitions).await? {
            tracing::warn!(
                plugin = %m.name,
                configured = policy.partitions,
                in_database = stored,
                "the plugin keeps its {stored} partition(s); to change that, stop every host that runs it and use `pgevents-host repartition {} {}`",
                m.name,
                policy.partitions
            );
        }
    }
    let errors: HashMap<&str, &str> = rejected
        .iter()
        .filter_map(|r| Some((r.plugin.as_deref()?, r.error.as_str())))
        .collect();
    for (name, error) in errors {
        tx.execute(
            &format!(
                "UPDATE {SCHEMA}.plugins SET last_error = $2, last_error_at = now() WHERE name = $1"
            ),
            &[&name, &error],
        )
        .await?;
    }
    tx.commit().await?;
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
