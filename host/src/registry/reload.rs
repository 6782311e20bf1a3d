//! Live reload: watch the plugins folder, load what changed, and swap the
//! plugin set that deliverers read between batches.
//!
//! A file is read only once nothing has written to it for `RELOAD_QUIET_MS`,
//! and compiled from the bytes read (a file changed while being read is read
//! again later). A new version is checked against the database and its
//! subscriptions and triggers are recorded before it serves; until then, and
//! whenever a new file fails, the running version keeps serving.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use sha2::Digest;
use tokio::sync::{mpsc, watch};

use super::{PluginSet, Rejected};
use crate::config::Settings;
use crate::db;
use crate::observer::{HostEvent, Observer};
use crate::registry;
use crate::runtime::{LoadError, LoadedPlugin, Runtime};

/// The plugins folder is watched for changes; after a change, it is read once
/// nothing has changed in it for this long (so a file being copied is not
/// read half-written), and re-checked this often in any case (in case a
/// change notification was missed, as on some network file systems).
pub const RELOAD_QUIET_MS: u64 = 100;
pub const RELOAD_RESCAN_MS: u64 = 2_000;

/// A file that was still young when it failed to load may be half-written:
/// it is reported only once it has stayed unchanged this long.
const SETTLE_MS: u64 = 1_000;

/// A file in the plugins folder, as last read.
#[derive(Debug)]
struct Seen {
    len: u64,
    modified: SystemTime,
    sha256: String,
    /// The plugin this file serves (by name), if it loaded.
    serves: Option<String>,
    /// The plugin it holds compiled but that does not fit the database (a
    /// table it subscribes to is missing), and why: tried again at every
    /// scan, since the schema may change.
    waiting: Option<(Arc<LoadedPlugin>, String)>,
}

/// Keeps the plugin set in step with the plugins folder.
#[allow(missing_debug_implementations)]
pub struct Reloader {
    dir: PathBuf,
    url: String,
    runtime: Runtime,
    settings: Settings,
    observer: Option<Observer>,
    set: Arc<watch::Sender<PluginSet>>,
    files: HashMap<PathBuf, Seen>,
}

impl Reloader {
    /// Start from what `load_folder` loaded: the file of each plugin, and
    /// the files that did not load.
    pub fn new(
        dir: PathBuf,
        url: String,
        runtime: Runtime,
        settings: Settings,
        observer: Option<Observer>,
        set: Arc<watch::Sender<PluginSet>>,
        loaded: &registry::Loaded,
    ) -> Reloader {
        // The size and time are unknown (the file may have changed since it
        // was loaded): the first scan reads each file again and compares hashes.
        let unknown = |sha256: String, serves: Option<String>| Seen {
            len: u64::MAX,
            modified: SystemTime::UNIX_EPOCH,
            sha256,
            serves,
            waiting: None,
        };
        let mut files = HashMap::new();
        for (file, plugin) in &loaded.plugins {
            files.insert(
                file.clone(),
                unknown(plugin.sha256.clone(), Some(plugin.manifest.name.clone())),
            );
        }
        // Files that did not load are not tried again until they change.
        for r in &loaded.rejected {
            let sha256 = crate::runtime::read_plugin_file(&r.file)
                .map(|bytes| hex(&sha2::Sha256::digest(&bytes)))
                .unwrap_or_default();
            files
                .entry(r.file.clone())
                .or_insert_with(|| unknown(sha256, None));
        }
        for (file, plugin, problem) in &loaded.waiting {
            if let Some(seen) = files.get_mut(file) {
                seen.waiting = Some((plugin.clone(), problem.clone()));
            }
        }
        Reloader {
            dir,
            url,
            runtime,
            settings,
            observer,
            set,
            files,
        }
    }

    /// Watch the folder until `shutdown`: scan after every change (once quiet),
    /// and every `RELOAD_RESCAN_MS` in case a notification was missed.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let (tx, mut changes) = mpsc::unbounded_channel();
        let watcher = {
            use notify::Watcher;
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                // Reading a file or listing the folder is an event too: the
                // scan's own reads must not start another scan.
                if !matches!(
                    event,
                    Ok(notify::Event {
                        kind: notify::EventKind::Access(_),
                        ..
                    })
                ) {
                    let _ = tx.send(());
                }
            })
            .and_then(|mut w| {
                w.watch(&self.dir, notify::RecursiveMode::NonRecursive)?;
                Ok(w)
            })
        };
        let _watcher = match watcher {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(
                    folder = %self.dir.display(),
                    "cannot watch the plugins folder ({e}); looking for changes every {} ms instead",
                    RELOAD_RESCAN_MS
                );
                None
            }
        };
        let quiet = Duration::from_millis(RELOAD_QUIET_MS);
        let mut next = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(next) => {
                    let again = self.scan().await;
                    next = tokio::time::Instant::now()
                        + again.unwrap_or(Duration::from_millis(RELOAD_RESCAN_MS));
                }
                Some(()) = changes.recv() => {
                    while changes.try_recv().is_ok() {}
                    next = next.min(tokio::time::Instant::now() + quiet);
                }
                _ = crate::shutdown::stopped(&mut shutdown) => return,
            }
        }
    }

    /// Look at every file once; returns how soon to look again if a file is
    /// still being written.
    async fn scan(&mut self) -> Option<Duration> {
        let quiet = Duration::from_millis(RELOAD_QUIET_MS);
        let present = match registry::plugin_files(&self.dir) {
            Ok(files) => files,
            Err(e) => {
                tracing::warn!("{e}");
                return None;
            }
        };
        let mut again: Option<Duration> = None;
        let mut soon = |d: Duration| again = Some(again.map_or(d, |a| a.min(d)));
        for file in &present {
            let Some((len, modified)) = stat(file) else {
                continue;
            };
            if self
                .files
                .get(file)
                .is_some_and(|s| s.len == len && s.modified == modified)
            {
                continue;
            }
            let age = match modified.elapsed() {
                Ok(age) => age,
                // A clock set back, or a copy that kept a future time: do not
                // wait for a moment that may be far off.
                Err(_) => {
                    tracing::warn!(
                        file = %file.display(),
                        "the file's modification time is in the future; reading it now"
                    );
                    Duration::from_millis(SETTLE_MS)
                }
            };
            if age < quiet {
                soon(quiet - age);
                continue;
            }
            let bytes = match crate::runtime::read_plugin_file(file) {
                Ok(bytes) => bytes,
                // Reported once per state of the file; one that cannot be
                // read (permissions) only once it has stayed so a while.
                Err(e)
                    if matches!(e, LoadError::NotAFile { .. } | LoadError::TooLarge { .. })
                        || age >= quiet * 10 =>
                {
                    let seen = Seen {
                        len,
                        modified,
                        sha256: String::new(),
                        serves: self.files.get(file).and_then(|s| s.serves.clone()),
                        waiting: None,
                    };
                    let name = seen.serves.clone();
                    self.files.insert(file.to_owned(), seen);
                    let rejected = Rejected {
                        file: file.to_owned(),
                        plugin: None,
                        error: e.to_string(),
                    };
                    self.report(rejected, name).await;
                    continue;
                }
                Err(_) => continue,
            };
            if stat(file) != Some((len, modified)) || bytes.len() as u64 != len {
                soon(quiet);
                continue;
            }
            let sha256 = hex(&sha2::Sha256::digest(&bytes));
            if let Some(seen) = self.files.get_mut(file)
                && seen.sha256 == sha256
            {
                // The same bytes, touched: a file that serves, or that waits
                // for the schema (tried below anyway), stays as it is; one
                // that did not load is tried again (`touch` means "try
                // again"), unless this is the first look since startup.
                let touched = seen.modified != SystemTime::UNIX_EPOCH;
                seen.len = len;
                seen.modified = modified;
                if !touched || seen.serves.is_some() || seen.waiting.is_some() {
                    continue;
                }
            }
            let settle = Duration::from_millis(SETTLE_MS);
            let young = age < settle;
            if let Some(wait) = self
                .load(
                    file,
                    bytes,
                    Seen {
                        len,
                        modified,
                        sha256,
                        serves: None,
                        waiting: None,
                    },
                    young,
                )
                .await
            {
                soon(wait.min(settle - age.min(settle)).max(quiet));
            }
        }
        let gone: Vec<PathBuf> = self
            .files
            .keys()
            .filter(|f| !present.contains(f))
            .cloned()
            .collect();
        for file in gone {
            self.remove(&file).await;
        }
        // Plugins that did not fit the database: the schema may have changed.
        let waiting: Vec<PathBuf> = self
            .files
            .iter()
            .filter(|(_, s)| s.waiting.is_some())
            .map(|(f, _)| f.clone())
            .collect();
        for file in waiting {
            let Some(mut seen) = self.files.remove(&file) else {
                continue;
            };
            let (plugin, problem) = seen.waiting.take().expect("waiting");
            let previous = seen.serves.clone();
            if let Some(wait) = self
                .serve(&file, plugin, seen, previous, Some(problem))
                .await
            {
                soon(wait);
            }
        }
        again
    }

    /// Load `bytes` read from `file` and, if good, make it serve. Returns a
    /// delay after which to look again when the file should be read again
    /// (it may have been half-written, or the database was unreachable).
    async fn load(
        &mut self,
        file: &Path,
        bytes: Vec<u8>,
        mut seen: Seen,
        young: bool,
    ) -> Option<Duration> {
        let previous = self.files.get(file).and_then(|s| s.serves.clone());
        seen.serves = previous.clone();
        let plugin = match registry::load_bytes(&self.runtime, file, bytes, &self.settings).await {
            Ok(plugin) => plugin,
            Err(rejected) if young => {
                tracing::debug!(
                    "{}; looking again once the file has not changed for {SETTLE_MS} ms",
                    rejected.error
                );
                return Some(Duration::from_millis(SETTLE_MS));
            }
            Err(rejected) => {
                let name = rejected.plugin.clone().or(previous.clone());
                self.files.insert(file.to_owned(), seen);
                self.report(rejected, name).await;
                return None;
            }
        };
        let name = plugin.manifest.name.clone();
        if let Some((other, _)) = self
            .files
            .iter()
            .find(|(f, s)| f.as_path() != file && s.serves.as_deref() == Some(&name))
        {
            let rejected = Rejected {
                file: file.to_owned(),
                plugin: Some(name.clone()),
                error: registry::duplicate_name(file, &name, other),
            };
            self.files.insert(file.to_owned(), seen);
            self.report(rejected, previous).await;
            return None;
        }
        self.serve(file, Arc::new(plugin), seen, previous, None)
            .await
    }

    /// Make `plugin` (compiled from `file`) serve if it fits the database,
    /// in place of `previous` (the plugin the file served). If it does not
    /// fit, it waits for the schema to change (`Seen::waiting`); `known` is
    /// the problem it had last time, not reported again.
    async fn serve(
        &mut self,
        file: &Path,
        plugin: Arc<LoadedPlugin>,
        mut seen: Seen,
        previous: Option<String>,
        known: Option<String>,
    ) -> Option<Duration> {
        let name = plugin.manifest.name.clone();
        let activated = async {
            let mut client = db::connect_once(&self.url).await?;
            let result = registry::activate(&mut client, file, &plugin, &self.settings).await;
            if result.as_ref().is_ok_and(|r| r.is_ok())
                && let Some(old) = previous.as_ref().filter(|old| **old != name)
            {
                registry::deactivate(&client, old).await?;
            }
            result
        }
        .await;
        match activated {
            Ok(Ok(())) => {}
            Ok(Err(problem)) => {
                let again = known.as_deref() == Some(problem.as_str());
                seen.waiting = Some((plugin, problem.clone()));
                self.files.insert(file.to_owned(), seen);
                if !again {
                    let rejected = Rejected {
                        file: file.to_owned(),
                        plugin: Some(name.clone()),
                        error: format!(
                            "{problem} (tried again whenever the folder is scanned, every {RELOAD_RESCAN_MS} ms, so it starts once the database has what it needs)"
                        ),
                    };
                    self.report(rejected, previous.or(Some(name))).await;
                }
                return None;
            }
            Err(e) => {
                tracing::warn!(
                    file = %file.display(),
                    "could not register the new version ({e}); trying again shortly"
                );
                if let Some(problem) = known {
                    seen.waiting = Some((plugin, problem));
                    self.files.insert(file.to_owned(), seen);
                    return None;
                }
                return Some(Duration::from_millis(RELOAD_RESCAN_MS));
            }
        }
        registry::log_loaded(file, &plugin);
        let old_version = self
            .set
            .borrow()
            .get(&name)
            .map(|p| p.manifest.version.clone());
        self.set.send_modify(|set| {
            let mut plugins = (**set).clone();
            if let Some(old) = previous.as_ref().filter(|old| **old != name) {
                plugins.remove(old);
            }
            plugins.insert(name.clone(), plugin.clone());
            *set = Arc::new(plugins);
        });
        seen.serves = Some(name.clone());
        self.files.insert(file.to_owned(), seen);
        if let Some(old) = previous.filter(|old| *old != name) {
            tracing::info!(plugin = %old, "plugin paused: its file now holds plugin `{name}`");
            self.observe(HostEvent::PluginRemoved { plugin: old });
        }
        match old_version {
            Some(from) => {
                tracing::info!(
                    plugin = %name,
                    from = %from,
                    to = %plugin.manifest.version,
                    "plugin reloaded: the next batch goes to the new version"
                );
                self.observe(HostEvent::PluginReloaded {
                    plugin: name,
                    version: plugin.manifest.version.clone(),
                    previous_version: from,
                    from_cache: plugin.from_cache,
                });
            }
            None => self.observe(HostEvent::PluginStarted {
                plugin: name,
                version: plugin.manifest.version.clone(),
                from_cache: plugin.from_cache,
            }),
        }
        None
    }

    /// `file` is gone: pause the plugin it served (its cursor is kept).
    async fn remove(&mut self, file: &Path) {
        let Some(seen) = self.files.remove(file) else {
            return;
        };
        let Some(name) = seen.serves else {
            return;
        };
        self.set.send_modify(|set| {
            let mut plugins = (**set).clone();
            plugins.remove(&name);
            *set = Arc::new(plugins);
        });
        tracing::info!(
            plugin = %name,
            file = %file.display(),
            "plugin file removed: plugin paused after its batch in flight; its cursor is kept, so putting the file back resumes it"
        );
        if let Ok(client) = db::connect_once(&self.url).await
            && let Err(e) = registry::deactivate(&client, &name).await
        {
            tracing::warn!(plugin = %name, "could not mark the plugin paused: {e}");
        }
        self.observe(HostEvent::PluginRemoved { plugin: name });
    }

    /// A file did not load: say so, and for `status`, on the plugin it was for.
    async fn report(&self, rejected: Rejected, plugin: Option<String>) {
        let serving = plugin
            .as_ref()
            .and_then(|name| self.set.borrow().get(name).cloned());
        match &serving {
            Some(p) => tracing::error!(
                "plugin file not loaded: {}; version {} keeps serving",
                rejected.error,
                p.manifest.version
            ),
            None => tracing::error!("plugin file not loaded: {}", rejected.error),
        }
        if let Some(name) = &plugin
            && let Ok(client) = db::connect_once(&self.url).await
            && let Err(e) =
                registry::record_load_error(&client, name, &rejected.file, &rejected.error).await
        {
            tracing::warn!(plugin = %name, "could not record the load error: {e}");
        }
        self.observe(HostEvent::PluginRejected(rejected));
    }

    fn observe(&self, event: HostEvent) {
        if let Some(observer) = &self.observer {
            observer(event);
        }
    }
}

/// Size and modification time, or `None` if the file cannot be read.
fn stat(file: &Path) -> Option<(u64, SystemTime)> {
    let meta = std::fs::metadata(file).ok()?;
    Some((meta.len(), meta.modified().ok()?))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
