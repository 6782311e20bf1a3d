//! Reading and compiling plugin files, with the operator's grants, limits
//! and table allow-list applied.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_postgres::Client;

use super::store::{check_subscriptions, register};
use super::{Loaded, RegistryError, Rejected};
use crate::config::Settings;
use crate::runtime::{Grants, LoadError, LoadedPlugin, Runtime};
use crate::schema;
use crate::shutdown::panic_text;

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
    let mut waiting = Vec::new();
    for (file, plugin) in plugins {
        match check_subscriptions(client, &plugin.manifest).await? {
            Ok(()) => accepted.push((file, plugin)),
            Err(problem) => {
                // As `activate` words it, for the reloader to compare.
                let raw = format!("{}: {problem}", file.display());
                let error = if settings.watch {
                    format!(
                        "{}: {problem} (tried again whenever the folder is scanned, every {} ms, so it starts once the database has what it needs)",
                        file.display(),
                        super::reload::RELOAD_RESCAN_MS
                    )
                } else {
                    format!(
                        "{}: {problem} (restart the host once the database has what it needs)",
                        file.display()
                    )
                };
                rejected.push(Rejected {
                    plugin: Some(plugin.manifest.name.clone()),
                    error: error.clone(),
                    file: file.clone(),
                });
                waiting.push((file, Arc::new(plugin), raw));
            }
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
        waiting,
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
