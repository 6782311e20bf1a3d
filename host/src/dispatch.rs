//! The host's main loop: one worker per plugin reads the log after the
//! plugin's cursor, calls `handle` on a batch in a fresh sandbox, and moves the
//! cursor only after success. The ticker numbers newly committed
//! transactions (see `log.rs`) when NOTIFY wakes it or a worker asks; workers
//! read after each tick, or poll.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::sync::watch;
use tokio_postgres::{AsyncMessage, Client, GenericClient, NoTls};
use uuid::Uuid;

use crate::config::{
    self, EffectivePolicy, HORIZON_WAIT_POLL_MS, LEASE_CHECK_MS, LEASE_MARGIN_MS,
    MIN_POLL_INTERVAL_MS, NOTIFY_CHANNEL, OnFailure, PARTITION_REST_MS, RETENTION_BATCH_ROWS,
    SCHEMA, Settings, TICK_WAIT_MS, WAKE_LEASE_MS, WAKE_MAX_WAIT_MS, WAKE_RENEW_MS,
    WORKER_GIVE_UP_FAILURES,
};
use crate::log::{self, EventRef, LoggedEvent, Position, Reader, Stream};
use crate::registry::{self, Rejected};
use crate::reload::{PluginSet, Reloader};
use crate::runtime::{LoadedPlugin, LogSink, Outcome, PluginLog, Pool, Retry, Runtime, SqlAccess};
use crate::runtime::{SqlSession, SqlSessionError};
use crate::{db, dead_letters, leases, schema};

/// What the host did, for embedders and tests (the same facts go to the log).
#[derive(Debug, Clone)]
pub enum HostEvent {
    PluginStarted {
        plugin: String,
        version: String,
        /// Its compiled code came from the compile cache.
        from_cache: bool,
    },
    /// A new version of a running plugin serves from its next batch on.
    PluginReloaded {
        plugin: String,
        version: String,
        previous_version: String,
        from_cache: bool,
    },
    /// Its file was removed (or now holds another plugin): paused.
    PluginRemoved {
        plugin: String,
    },
    PluginRejected(Rejected),
    PluginLog(PluginLog),
    BatchHandled {
        plugin: String,
        events: usize,
        cursor: Position,
    },
    BatchFailed {
        plugin: String,
        index: usize,
        message: String,
        retry_in: Option<Duration>,
    },
    PluginHalted {
        plugin: String,
        message: String,
    },
    /// An event was moved to the dead letters and the cursor past it.
    DeadLettered {
        plugin: String,
        event: EventRef,
        attempts: u32,
        message: String,
    },
    /// Dead letters were handed to the plugin again (`events` succeeded).
    Redelivered {
        plugin: String,
        events: usize,
    },
    /// Transactions that wrote have been open for a while (longer than
    /// `horizon_warn_after`): their events arrive when they commit.
    LongTransactions {
        writers: Vec<crate::status::OpenWriter>,
    },
    PartitionAcquired {
        plugin: String,
        part: u32,
        host: String,
    },
    PartitionReleased {
        plugin: String,
        part: u32,
    },
    /// A plugin received events its own sql writes caused (`events` so far).
    OwnWrites {
        plugin: String,
        events: i64,
    },
}

/// Receives every [`HostEvent`].
pub type Observer = Arc<dyn Fn(HostEvent) + Send + Sync>;

/// Everything `run` needs.
#[derive(Clone)]
pub struct RunOptions {
    pub database_url: String,
    pub plugins_dir: PathBuf,
    pub settings: Settings,
    pub observer: Option<Observer>,
}

impl std::fmt::Debug for RunOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunOptions")
            .field("database_url", &db::redact(&self.database_url))
            .field("plugins_dir", &self.plugins_dir)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

struct Shared {
    url: String,
    settings: Settings,
    observer: Option<Observer>,
    /// Bumped after every tick of this host's ticker.
    ticked: watch::Receiver<u64>,
    /// Asks the ticker for a tick.
    tick_requests: Arc<tokio::sync::Notify>,
    wake_lease: WakeLease,
    shutdown: watch::Receiver<bool>,
}

/// This host's hold on `pgevents.wake_until` (migration 4): while it lies
/// ahead, writers notify; once every host has been busy (or gone) for
/// `WAKE_LEASE_MS`, they stop paying for NOTIFY.
#[derive(Debug, Default)]
struct WakeLease {
    /// When this host last began renewing it.
    renewed: Mutex<Option<Instant>>,
    /// At a renewal that found the lease lapsed: the transactions of this
    /// database that had written and were still open. A writer that looked
    /// before the renewal commits without notifying, and it is one of these:
    /// while any of them runs, idle waits are short. Emptied once none does.
    catch_up: Mutex<Vec<String>>,
    /// Catching up ends by this time in any case: a writer that looked
    /// before the renewal and is still open then is a long transaction, and
    /// the idle poll finds its events (rather than a 50 ms poll while it lasts).
    catch_up_until: Mutex<Option<Instant>>,
}

impl Shared {
    fn observe(&self, event: HostEvent) {
        if let Some(observer) = &self.observer {
            observer(event);
        }
    }
}

/// Run the host until `shutdown` turns true: install the schema, load the
/// plugins, then deliver. A batch in flight at shutdown is finished and acked.
pub async fn run(
    options: RunOptions,
    shutdown_requested: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let settings = options.settings.clone();
    settings.check().map_err(anyhow::Error::msg)?;
    let mut waiting = shutdown_requested.clone();
    let mut client = tokio::select! {
        client = db::connect(&options.database_url, settings.connect_timeout) => client?,
        _ = stopped(&mut waiting) => {
            tracing::info!("stopped before the database could be reached");
            return Ok(());
        }
    };
    schema::install(&mut client).await?;
    let sink: Option<LogSink> = options.observer.clone().map(|observer| {
        Arc::new(move |log: PluginLog| observer(HostEvent::PluginLog(log))) as LogSink
    });
    let mut runtime = Runtime::new(
        sink,
        Pool {
            max_instances: settings.max_instances,
            max_memory_bytes: settings.largest_memory_limit(),
        },
    )?;
    if let Some(dir) = &settings.compile_cache {
        runtime = runtime.with_compile_cache(dir.clone());
    }
    let loaded =
        registry::load_folder(&runtime, &mut client, &options.plugins_dir, &settings).await?;
    drop(client);

    let (wake_tx, wake_rx) = watch::channel(0u64);
    let (ticked_tx, ticked_rx) = watch::channel(0u64);
    let tick_requests = Arc::new(tokio::sync::Notify::new());
    // Every task stops on this: the caller's shutdown, or a background task
    // that ended (a panic, an error) and so stops the host.
    let (stop_tx, shutdown) = watch::channel(false);
    let mut external = shutdown_requested;
    let shared = Arc::new(Shared {
        url: options.database_url.clone(),
        settings: settings.clone(),
        observer: options.observer.clone(),
        ticked: ticked_rx,
        tick_requests: tick_requests.clone(),
        wake_lease: WakeLease::default(),
        shutdown: shutdown.clone(),
    });
    for r in &loaded.rejected {
        shared.observe(HostEvent::PluginRejected(r.clone()));
    }
    if loaded.plugins.is_empty() {
        tracing::warn!(
            folder = %options.plugins_dir.display(),
            "no plugin is running; add a .wasm file to the plugins folder{}",
            if settings.watch { "" } else { " and restart" }
        );
    }
    let set: PluginSet = Arc::new(
        loaded
            .plugins
            .iter()
            .map(|(_, p)| (p.manifest.name.clone(), p.clone()))
            .collect(),
    );
    // Like `wake_tx`, the sender lives until `run` returns.
    let (set_tx, set_rx) = watch::channel(set);
    let set_tx = Arc::new(set_tx);
    let mut tasks = Tasks::default();
    if settings.watch {
        let reloader = Reloader::new(
            options.plugins_dir.clone(),
            options.database_url.clone(),
            runtime.clone(),
            settings.clone(),
            options.observer.clone(),
            set_tx.clone(),
            &loaded,
        );
        tasks.spawn("reloader", reloader.run(shutdown.clone()));
    }
    // The sender lives until `run` returns: with NOTIFY off nothing sends, and a
    // dropped sender would make every worker's wait return at once (a busy loop).
    let wake_tx = Arc::new(wake_tx);
    if settings.notify {
        tasks.spawn(
            "listener",
            listen(shared.url.clone(), wake_tx.clone(), shutdown.clone()),
        );
    }
    tasks.spawn(
        "ticker",
        keep_ticking(shared.clone(), wake_rx, tick_requests, ticked_tx),
    );
    tasks.spawn(
        "trigger reconciler",
        keep_triggers_reconciled(
            shared.url.clone(),
            settings.notify,
            settings.reconcile_interval,
            shutdown.clone(),
        ),
    );
    tasks.spawn(
        "pruner",
        keep_log_pruned(shared.url.clone(), settings.clone(), shutdown.clone()),
    );
    for (_, plugin) in &loaded.plugins {
        shared.observe(HostEvent::PluginStarted {
            plugin: plugin.manifest.name.clone(),
            version: plugin.manifest.version.clone(),
            from_cache: plugin.from_cache,
        });
    }
    let coordinator = coordinate(set_rx, shared.clone());
    tokio::pin!(coordinator);
    let mut failed: Option<(&'static str, String)> = None;
    loop {
        tokio::select! {
            () = &mut coordinator => break,
            // Before shutdown; after it, tasks end as they should.
            (name, why) = tasks.next_end(), if failed.is_none() && !*stop_tx.borrow() => {
                tracing::error!(task = name, "{why}; stopping the host");
                failed = Some((name, why));
                let _ = stop_tx.send(true);
            }
            () = stopped(&mut external), if !*stop_tx.borrow() => {
                let _ = stop_tx.send(true);
            }
        }
    }
    drop(set_tx);
    tasks.join(Duration::from_millis(TASK_STOP_MS)).await;
    match failed {
        Some((name, why)) => Err(anyhow::anyhow!("the host's {name} {why}")),
        None => {
            tracing::info!("stopped");
            Ok(())
        }
    }
}

/// A background task that ends early has this long to stop with the rest
/// at shutdown; then it is abandoned, with a line in the log.
const TASK_STOP_MS: u64 = 5_000;

/// The host's background tasks, by name. They run until shutdown; one that
/// ends before (an error, a panic) is reported by name, and stops the host.
#[derive(Default)]
struct Tasks {
    set: tokio::task::JoinSet<()>,
    names: HashMap<tokio::task::Id, &'static str>,
}

impl Tasks {
    fn spawn(&mut self, name: &'static str, task: impl Future<Output = ()> + Send + 'static) {
        let handle = self.set.spawn(task);
        self.names.insert(handle.id(), name);
    }

    /// The next task to end, and how (never, if there are none).
    async fn next_end(&mut self) -> (&'static str, String) {
        match self.set.join_next_with_id().await {
            Some(Ok((id, ()))) => (self.name(id), "task ended unexpectedly".into()),
            Some(Err(e)) => (
                self.name(e.id()),
                format!("task panicked: {}", registry::panic_text(e)),
            ),
            None => std::future::pending().await,
        }
    }

    fn name(&self, id: tokio::task::Id) -> &'static str {
        self.names.get(&id).copied().unwrap_or("task")
    }

    /// Wait for every task to stop (they all watch the shutdown), at most
    /// `within`; report panics, abandon what is left.
    async fn join(mut self, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.set.join_next_with_id()).await {
                Ok(None) => return,
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(e))) => {
                    let name = self.name(e.id());
                    tracing::error!(
                        task = name,
                        "task panicked while stopping: {}",
                        registry::panic_text(e)
                    );
                }
                Err(_) => {
                    tracing::warn!(
                        tasks = self.set.len(),
                        "background tasks did not stop within {within:?}; leaving them"
                    );
                    self.set.abort_all();
                    return;
                }
            }
        }
    }
}

/// Resolves when `shutdown` turns true (or its sender is gone).
pub(crate) async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

/// Re-check the capture triggers every `interval` while running: DDL on a
/// subscribed table (dropped and re-created, primary key changed) otherwise
/// leaves it uncaptured or with stale keys until the next start.
async fn keep_triggers_reconciled(
    url: String,
    notify: bool,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    // Renamed subscribed tables, said once each.
    let mut told: std::collections::HashSet<(String, String, String)> = Default::default();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stopped(&mut shutdown) => return,
        }
        let result = async {
            let mut client = db::connect_once(&url)
                .await
                .map_err(|e| db::error_text(&e))?;
            schema::reconcile_triggers(&mut client, Some(notify))
                .await
                .map_err(|e| e.to_string())
        }
        .await;
        if let Ok(report) = &result {
            for renamed in &report.renamed {
                if told.insert(renamed.clone()) {
                    let (plugin, subscribed, now) = renamed;
                    tracing::warn!(
                        plugin, subscribed = %subscribed, now = %now,
                        "a subscribed table was renamed: it is still captured and delivered (its events carry the subscribed name) until a table of the subscribed name exists; update the plugin's manifest"
                    );
                }
            }
        }
        match result {
            Ok(report) if !report.created.is_empty() || !report.dropped.is_empty() => {
                tracing::warn!(
                    created = report.created.len(),
                    dropped = report.dropped.len(),
                    "capture triggers were out of date (a subscribed table changed) and have been repaired"
                );
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("could not re-check the capture triggers: {e}"),
        }
    }
}

/// Take a tick (see `log.rs`) whenever a notification arrives or a
/// deliverer asks, and bump `ticked` after each; requests that arrive during
/// a tick get another one after it. Also says in the log which transactions
/// that wrote have been open longer than `horizon_warn_after`.
async fn keep_ticking(
    shared: Arc<Shared>,
    mut wake: watch::Receiver<u64>,
    requests: Arc<tokio::sync::Notify>,
    ticked: watch::Sender<u64>,
) {
    let mut shutdown = shared.shutdown.clone();
    let warn_every = shared.settings.horizon_warn_after;
    let mut client: Option<Client> = None;
    let mut failures = 0;
    let mut next_look = Instant::now() + warn_every;
    loop {
        let look_in = next_look.saturating_duration_since(Instant::now());
        // After a NOTIFY something surely committed: no need to look first.
        let notified = tokio::select! {
            changed = wake.changed() => if changed.is_err() { return } else { true },
            _ = requests.notified() => false,
            _ = tokio::time::sleep(look_in) => false,
            _ = stopped(&mut shutdown) => return,
        };
        let result = async {
            if client.as_ref().is_none_or(Client::is_closed) {
                let c = db::connect_once(&shared.url).await?;
                // See `pgevents.tick()`: an acknowledgement flushes it.
                c.batch_execute(
                    "SET synchronous_commit = off; SET application_name = 'pgevents-host ticker'",
                )
                .await?;
                client = Some(c);
            }
            let c = client.as_ref().expect("connected");
            log::tick(c, !notified).await?;
            if Instant::now() >= next_look {
                next_look = Instant::now() + warn_every;
                tell_of_long_transactions(c, &shared).await;
            }
            Ok::<(), tokio_postgres::Error>(())
        }
        .await;
        match result {
            Ok(()) => {
                failures = 0;
                ticked.send_modify(|n| *n += 1);
            }
            Err(e) => {
                failures += 1;
                client = None;
                let delay = db::reconnect_delay(failures);
                tracing::warn!("ticker: {}; reconnecting in {delay:?}", db::error_text(&e));
                // Whoever asked is still waiting: tick again after the delay.
                requests.notify_one();
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stopped(&mut shutdown) => return,
                }
            }
        }
    }
}

/// Say in the log which transactions that wrote have been open for long.
async fn tell_of_long_transactions(client: &Client, shared: &Shared) {
    match crate::status::open_writers(client, shared.settings.horizon_warn_after).await {
        Ok(writers) if !writers.is_empty() => {
            for w in &writers {
                tracing::warn!(
                    pid = w.pid,
                    user = w.user.as_deref().unwrap_or("?"),
                    application = w.application_name.as_deref().unwrap_or(""),
                    age_s = w.age_seconds.round() as u64,
                    query = w.query.as_deref().unwrap_or(""),
                    "a transaction that wrote has been open for long: its events arrive when it commits, and it keeps deleted log rows from being vacuumed"
                );
            }
            shared.observe(HostEvent::LongTransactions { writers });
        }
        Ok(_) => {}
        Err(e) => tracing::debug!("could not look for long transactions: {e}"),
    }
}

/// Keep a LISTEN connection open and bump `wake` on every notification, and
/// after every reconnect (notifications may have been missed meanwhile).
async fn listen(url: String, wake: Arc<watch::Sender<u64>>, mut shutdown: watch::Receiver<bool>) {
    let mut failures = 0;
    loop {
        let session = async {
            let (client, mut connection) = tokio_postgres::connect(&url, NoTls).await?;
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            let driver = tokio::spawn(async move {
                let mut messages =
                    futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
                while let Some(message) = messages.next().await {
                    match message {
                        Ok(AsyncMessage::Notification(_)) => {
                            let _ = tx.send(());
                        }
                        Ok(_) => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok(())
            });
            client
                .batch_execute(&format!("LISTEN {NOTIFY_CHANNEL}"))
                .await?;
            wake.send_modify(|n| *n += 1);
            failures = 0;
            while rx.recv().await.is_some() {
                wake.send_modify(|n| *n += 1);
            }
            drop(client);
            driver.await.expect("listener task panicked")
        };
        tokio::select! {
            result = session => {
                failures += 1;
                let delay = db::reconnect_delay(failures);
                match result {
                    Err(e) => tracing::warn!("LISTEN connection lost: {}; reconnecting in {delay:?}", db::error_text(&e)),
                    Ok(()) => tracing::warn!("LISTEN connection closed; reconnecting in {delay:?}"),
                }
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stopped(&mut shutdown) => return,
                }
            }
            _ = stopped(&mut shutdown) => return,
        }
    }
}

/// Why a deliverer stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WorkerEnd {
    /// Asked to (shutdown, or its partition moves to another host).
    Stopped,
    /// A permanent failure, with `on_failure = "halt"`.
    Halted,
    /// The lease is gone: another host may deliver the partition now.
    LeaseLost,
    /// It could not start for a long time (its sql role cannot log in): let
    /// another host try, and rest the partition here for a while.
    GaveUp,
}

#[derive(Debug, thiserror::Error)]
enum WorkerError {
    #[error("database error: {}", db::error_text(.0))]
    Db(#[from] tokio_postgres::Error),
    #[error(transparent)]
    Sql(#[from] SqlSessionError),
    #[error(
        "partition {part} of plugin `{plugin}` has no cursor (was the plugin forgotten or re-partitioned?)"
    )]
    NoCursor { plugin: String, part: u32 },
}

/// A partition this host holds.
struct Held {
    token: Uuid,
    /// The partition count it was taken under.
    parts: u32,
    /// Until when the lease is certain to hold, by this host's clock.
    valid: watch::Sender<Instant>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<WorkerEnd>,
    /// Asked to stop so that another host can take the partition.
    releasing: bool,
}

/// Hold this host's fair share of every plugin's partitions (see `leases.rs`),
/// run one deliverer per partition held, and hand everything back at shutdown.
async fn coordinate(mut set: watch::Receiver<PluginSet>, shared: Arc<Shared>) {
    let host_id = leases::new_host_id();
    let ttl = shared.settings.lease_ttl;
    let mut shutdown = shared.shutdown.clone();
    let mut held: HashMap<(String, u32), Held> = HashMap::new();
    let mut resting: HashMap<(String, u32), Instant> = HashMap::new();
    let mut client: Option<Client> = None;
    let mut failures = 0;
    tracing::info!(host = %host_id, "joining");
    loop {
        if *shutdown.borrow() {
            break;
        }
        if client.as_ref().is_none_or(Client::is_closed) {
            match db::connect_once(&shared.url).await {
                Ok(c) => client = Some(c),
                Err(e) => {
                    failures += 1;
                    let delay = db::reconnect_delay(failures);
                    tracing::warn!(
                        "lease coordinator: {}; reconnecting in {delay:?}",
                        db::error_text(&e)
                    );
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = stopped(&mut shutdown) => break,
                    }
                    continue;
                }
            }
        }
        let c = client.as_ref().expect("connected");
        let plugins = set.borrow_and_update().clone();
        match balance(
            c,
            &host_id,
            ttl,
            &plugins,
            &set,
            &shared,
            &mut held,
            &mut resting,
        )
        .await
        {
            Ok(()) => failures = 0,
            Err(e) => {
                failures += 1;
                tracing::warn!("lease coordinator: {}", db::error_text(&e));
                client = None;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(LEASE_CHECK_MS)) => {}
            // A plugin added or removed: start or stop its deliverers now.
            _ = set.changed() => {}
            _ = stopped(&mut shutdown) => break,
        }
    }
    // Shutdown: let every deliverer finish its batch, then hand the leases back.
    for h in held.values() {
        let _ = h.stop.send(true);
    }
    for ((plugin, part), h) in held.drain() {
        deliverer_end(&plugin, part, h.task.await);
    }
    let left = async {
        let c = db::connect_once(&shared.url).await?;
        leases::leave(&c, &host_id).await
    }
    .await;
    if let Err(e) = left {
        tracing::warn!(
            "could not hand the leases back ({}); other hosts take over when they expire",
            db::error_text(&e)
        );
    }
}

/// Why a deliverer's task ended; a panic is said in the log with its partition.
fn deliverer_end(
    plugin: &str,
    part: u32,
    ended: Result<WorkerEnd, tokio::task::JoinError>,
) -> WorkerEnd {
    ended.unwrap_or_else(|e| {
        tracing::error!(
            plugin,
            part,
            "the partition's deliverer panicked: {}; it starts again",
            registry::panic_text(e)
        );
        WorkerEnd::Stopped
    })
}

/// One coordinator round: heartbeat, renew, reap stopped deliverers, then
/// take or give partitions until this host holds its share.
#[allow(clippy::too_many_arguments)]
async fn balance(
    client: &Client,
    host_id: &str,
    ttl: Duration,
    plugins: &PluginSet,
    set: &watch::Receiver<PluginSet>,
    shared: &Arc<Shared>,
    held: &mut HashMap<(String, u32), Held>,
    resting: &mut HashMap<(String, u32), Instant>,
) -> Result<(), tokio_postgres::Error> {
    let names: Vec<String> = plugins.keys().cloned().collect();
    let live = leases::heartbeat(client, host_id, &names, ttl).await?;
    // Measured before the renewal is sent, so that our idea of the expiry is
    // never later than the database's.
    let sent = Instant::now();
    let renewed = leases::renew(client, host_id, ttl).await?;
    for ((plugin, part), h) in held.iter() {
        if renewed.contains_key(&h.token) {
            let _ = h.valid.send(sent + ttl);
        } else if !h.task.is_finished() {
            tracing::warn!(plugin, part, "lease lost; stopping its deliverer");
            let _ = h.stop.send(true);
        }
    }
    let finished: Vec<(String, u32)> = held
        .iter()
        .filter(|(_, h)| h.task.is_finished())
        .map(|(k, _)| k.clone())
        .collect();
    for key in finished {
        let h = held.remove(&key).expect("held");
        // A deliverer that panicked is reported; its partition is taken up
        // again (by this host or another) like any released one.
        let end = deliverer_end(&key.0, key.1, h.task.await);
        if end == WorkerEnd::GaveUp {
            resting.insert(
                key.clone(),
                Instant::now() + Duration::from_millis(PARTITION_REST_MS),
            );
        }
        if renewed.contains_key(&h.token) {
            leases::release(client, h.token).await?;
        }
        shared.observe(HostEvent::PartitionReleased {
            plugin: key.0.clone(),
            part: key.1,
        });
        tracing::debug!(plugin = %key.0, part = key.1, ?end, "partition released");
    }
    // The partition counts the cursors were made for are authoritative: a
    // host started with another count follows them rather than skipping events.
    let rows = client
        .query(
            &format!(
                "SELECT p.name, p.halted IS NOT NULL, (SELECT max(c.parts) FROM {SCHEMA}.cursors c WHERE c.plugin = p.name)
                 FROM {SCHEMA}.plugins p"
            ),
            &[],
        )
        .await?;
    let known: HashMap<String, (bool, Option<i32>)> = rows
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect();
    // Plugins removed from the folder: their deliverers stop after their batch.
    for ((p, _), h) in held.iter_mut() {
        if !plugins.contains_key(p) && !h.releasing {
            h.releasing = true;
            let _ = h.stop.send(true);
        }
    }
    for name in plugins.keys() {
        let (halted, parts) = match known.get(name) {
            Some((halted, Some(parts))) => (*halted, *parts as u32),
            // Forgotten while running: nothing to deliver.
            _ => (true, 0),
        };
        let configured = shared.settings.policy(name).partitions;
        if parts != configured && !halted {
            tracing::warn!(
                plugin = %name, configured, in_database = parts,
                "this host's partition count differs from the one in the database; following the database (give every host the same config)"
            );
        }
        for ((p, _), h) in held.iter_mut() {
            if p == name && (halted || h.parts != parts) && !h.releasing {
                h.releasing = true;
                let _ = h.stop.send(true);
            }
        }
        if halted {
            continue;
        }
        let hosts = live.get(name).map(Vec::as_slice).unwrap_or_default();
        let share = leases::share(parts, hosts, host_id, name);
        let mut mine: Vec<u32> = held
            .iter()
            .filter(|((p, _), h)| p == name && !h.releasing)
            .map(|((_, part), _)| *part)
            .collect();
        mine.sort_unstable();
        while mine.len() as u32 > share {
            let part = mine.pop().expect("non-empty");
            let h = held.get_mut(&(name.clone(), part)).expect("held");
            h.releasing = true;
            let _ = h.stop.send(true);
            tracing::info!(plugin = %name, part, "handing partition over to another host");
        }
        for part in 0..parts {
            if mine.len() as u32 >= share {
                break;
            }
            let key = (name.clone(), part);
            if held.contains_key(&key)
                || resting
                    .get(&key)
                    .is_some_and(|until| Instant::now() < *until)
            {
                continue;
            }
            resting.remove(&key);
            let sent = Instant::now();
            let Some(token) = leases::acquire(client, host_id, name, part, ttl).await? else {
                continue;
            };
            let stream = Stream {
                plugin: name.clone(),
                part,
                parts,
                token,
                rewinds: 0,
            };
            tracing::info!(stream = %stream, "partition acquired");
            shared.observe(HostEvent::PartitionAcquired {
                plugin: name.clone(),
                part,
                host: host_id.to_owned(),
            });
            let (stop_tx, stop_rx) = watch::channel(false);
            let (valid_tx, valid_rx) = watch::channel(sent + ttl);
            let task = tokio::spawn(worker(
                set.clone(),
                stream,
                shared.clone(),
                stop_rx,
                valid_rx,
            ));
            held.insert(
                (name.clone(), part),
                Held {
                    token,
                    parts,
                    valid: valid_tx,
                    stop: stop_tx,
                    task,
                    releasing: false,
                },
            );
            mine.push(part);
        }
    }
    Ok(())
}

/// Delete old log rows every `retention_interval` (see `log::prune`).
async fn keep_log_pruned(url: String, settings: Settings, mut shutdown: watch::Receiver<bool>) {
    let mut client: Option<Client> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(settings.retention_interval) => {}
            _ = stopped(&mut shutdown) => return,
        }
        let result = async {
            if client.as_ref().is_none_or(Client::is_closed) {
                client = Some(db::connect_once(&url).await?);
            }
            let c = client.as_mut().expect("connected");
            let mut total = 0;
            loop {
                let deleted = log::prune(c, settings.retention_min_age).await?;
                total += deleted;
                if deleted < RETENTION_BATCH_ROWS as u64 || *shutdown.borrow() {
                    break;
                }
            }
            Ok::<u64, tokio_postgres::Error>(total)
        }
        .await;
        match result {
            Ok(0) => {}
            Ok(n) => tracing::debug!(rows = n, "pruned the log"),
            Err(e) => {
                tracing::warn!("could not prune the log: {}", db::error_text(&e));
                client = None;
            }
        }
    }
}

/// One partition's deliverer; reconnects on database errors.
async fn worker(
    plugins: watch::Receiver<PluginSet>,
    mut stream: Stream,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    mut lease: watch::Receiver<Instant>,
) -> WorkerEnd {
    let policy = shared.settings.policy(&stream.plugin);
    let mut state = WorkerState::default();
    let Some(first) = plugins.borrow().get(&stream.plugin).cloned() else {
        return WorkerEnd::Stopped;
    };
    let mut plugin = first;
    let mut failures = 0;
    let mut connected: Option<Instant> = None;
    loop {
        let result = async {
            let mut client = db::connect_once(&shared.url).await?;
            let reader = Reader::prepare(&client).await?;
            let Some((cursor, rewinds)) = log::cursor(&client, &stream).await? else {
                return Err(WorkerError::NoCursor {
                    plugin: stream.plugin.clone(),
                    part: stream.part,
                });
            };
            stream.rewinds = rewinds;
            let sql = match &policy.sql {
                Some(grant) => Some(Arc::new({
                    schema::grant_acknowledgement(&mut client, &stream.plugin, grant).await?;
                    SqlSession::open(&shared.url, &stream.plugin, grant, policy.handle_timeout)
                        .await?
                })),
                None => None,
            };
            state.failures = dead_letters::failures(&client, &stream).await?;
            connected = Some(Instant::now());
            let mut d = Deliverer {
                plugin: &mut plugin,
                plugins: plugins.clone(),
                shared: &shared,
                policy: &policy,
                client: &mut client,
                reader: &reader,
                sql,
                stream: &mut stream,
                stop: &mut stop,
                lease: &mut lease,
                prefetched: None,
            };
            d.run(cursor, &mut state).await
        }
        .await;
        match result {
            Ok(end) => return end,
            Err(e) => {
                // The backoff starts over only after a session that worked
                // (acknowledged a batch, or lasted a while): one that fails
                // at once, every time, must not be retried every 250 ms.
                if std::mem::take(&mut state.progressed)
                    || connected
                        .take()
                        .is_some_and(|at| at.elapsed() >= Duration::from_secs(60))
                {
                    failures = 0;
                }
                failures += 1;
                if failures == 1 && matches!(e, WorkerError::Sql(_)) {
                    // A configuration problem: show it in `status` too.
                    if let Ok(c) = db::connect_once(&shared.url).await {
                        let _ = record_error(&c, &stream.plugin, &e.to_string(), false).await;
                    }
                }
                if failures >= WORKER_GIVE_UP_FAILURES
                    && matches!(e, WorkerError::Sql(SqlSessionError::Login { .. }))
                {
                    tracing::error!(
                        stream = %stream,
                        "{e}; giving the partition up for {} s (another host may be able to deliver it)",
                        PARTITION_REST_MS / 1000
                    );
                    return WorkerEnd::GaveUp;
                }
                let delay = db::reconnect_delay(failures);
                tracing::warn!(stream = %stream, "{e}; reconnecting in {delay:?}");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stopped(&mut stop) => return WorkerEnd::Stopped,
                }
            }
        }
    }
}

/// Per-deliverer memory that survives reconnects.
#[derive(Default)]
struct WorkerState {
    /// Failed attempts of events that failed at least once (mirrors `pgevents.attempts`).
    failures: HashMap<Position, u32>,
    idle_poll: Duration,
    /// When dead letters were last checked for redelivery requests.
    redelivery_checked: Option<Instant>,
    /// A batch was acknowledged since the last connection error.
    progressed: bool,
    /// The transaction the last window ended inside of (see `Reader::read`).
    within: Option<log::Within>,
    /// When the log last said that the plugin receives its own writes.
    warned_own_writes: Option<Instant>,
}

impl WorkerState {
    /// A replay moved the cursor back (and cleared the attempt counts).
    fn rewound(&mut self) {
        self.failures.clear();
    }
}

enum Next {
    /// Read again at once.
    Continue,
    /// Wait for a tick, or this long (then ask for one).
    Wait(Duration),
    /// Sleep this long regardless of notifications (retry backoff).
    Sleep(Duration),
    /// Go on from this cursor (past a dead letter).
    Resume(Position),
    /// Go on from where a replay rewound the cursor to.
    Rewound(Position),
    End(WorkerEnd),
}

/// The failure a batch ended with, for the event at `index`.
struct Failed {
    index: usize,
    retry: Retry,
    message: String,
}

/// What became of a batch.
enum Handled {
    /// Events up to `to` are acknowledged; `failed` says what stopped the rest.
    Upto {
        to: Option<Position>,
        failed: Option<Failed>,
    },
    /// An acknowledgement was refused: the lease is gone or a replay rewound the cursor.
    Refused,
    /// Asked to stop while waiting for the lease to be renewed; nothing was called.
    Stopped,
}

struct Deliverer<'a> {
    /// The version serving now: looked up in `plugins` before every batch.
    plugin: &'a mut Arc<LoadedPlugin>,
    plugins: watch::Receiver<PluginSet>,
    shared: &'a Shared,
    policy: &'a EffectivePolicy,
    client: &'a mut Client,
    reader: &'a Reader,
    sql: Option<Arc<SqlSession>>,
    stream: &'a mut Stream,
    stop: &'a mut watch::Receiver<bool>,
    /// Until when the lease is certain to hold (renewed by the coordinator).
    lease: &'a mut watch::Receiver<Instant>,
    /// The window after the batch in the plugin's hands, read meanwhile.
    prefetched: Option<Prefetched>,
}

/// A window read ahead, from `from`, of `window` rows: used if the next read
/// would be exactly that one (the batch before it was handled in full and
/// the plugin's version did not change).
struct Prefetched {
    from: Position,
    window: u32,
    batch: log::Batch,
}

impl Deliverer<'_> {
    /// Read, handle, ack, until stopped. Returns why it ended.
    async fn run(
        &mut self,
        mut cursor: Position,
        state: &mut WorkerState,
    ) -> Result<WorkerEnd, WorkerError> {
        let mut ticked = self.shared.ticked.clone();
        let poll = self.shared.settings.poll_interval;
        loop {
            if *self.stop.borrow() {
                return Ok(WorkerEnd::Stopped);
            }
            // Between batches: take up a new version, or stop if removed.
            let current = self
                .plugins
                .borrow_and_update()
                .get(&self.stream.plugin)
                .cloned();
            match current {
                None => return Ok(WorkerEnd::Stopped),
                Some(p) if !Arc::ptr_eq(&p, self.plugin) => {
                    tracing::info!(
                        stream = %self.stream,
                        version = %p.manifest.version,
                        cursor = %cursor,
                        "delivering with the new version from here"
                    );
                    *self.plugin = p;
                    state.failures.clear();
                    self.prefetched = None;
                }
                Some(_) => {}
            }
            let batch_size = self.plugin.manifest.batch_size;
            let woken = ticked.has_changed().unwrap_or(false);
            ticked.borrow_and_update();
            // Redelivery requests: looked for every poll interval, and when woken
            // with nothing new to read (`dead-letters redeliver` notifies).
            if state
                .redelivery_checked
                .is_none_or(|at| at.elapsed() >= poll)
                && self.redeliver(state).await?
            {
                continue;
            }
            let started = Instant::now();
            let mut batch = match self.prefetched.take() {
                Some(ahead) if ahead.from == cursor && ahead.window == batch_size => ahead.batch,
                _ => {
                    self.reader
                        .read(self.client, self.stream, cursor, batch_size, state.within)
                        .await?
                }
            };
            state.within = batch.within;
            if let Some(truncate) = batch.barrier.take() {
                let at = truncate.position;
                if !log::barrier_open(&*self.client, self.stream, at).await? {
                    // The other partitions have yet to reach it (or partition
                    // 0 to deliver it). A replay meanwhile must be followed,
                    // or the partitions would wait for each other for ever.
                    if let Some((rewound, rewinds)) =
                        log::cursor(&*self.client, self.stream).await?
                        && rewinds != self.stream.rewinds
                    {
                        self.stream.rewinds = rewinds;
                        cursor = rewound;
                        state.rewound();
                        continue;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(HORIZON_WAIT_POLL_MS)) => {}
                        _ = stopped(self.stop) => return Ok(WorkerEnd::Stopped),
                    }
                    continue;
                }
                batch.end = Some(at);
                if self.stream.part == 0 {
                    batch.events = vec![truncate];
                }
            }
            let read_at = started.elapsed();
            let next = if batch.events.is_empty() {
                if let Some(to) = batch.end {
                    // Only rows this partition does not want: skip them and read on.
                    if self.reader.ack(&*self.client, self.stream, to).await? {
                        cursor = to;
                    } else if let Some(c) = self.after_refusal().await? {
                        cursor = c;
                        state.rewound();
                    } else {
                        return Ok(WorkerEnd::LeaseLost);
                    }
                    continue;
                }
                // Nothing new. A replay may have rewound the cursor meanwhile
                // (an acknowledgement would notice, but there is none to make).
                if let Some((rewound, rewinds)) = log::cursor(&*self.client, self.stream).await?
                    && rewinds != self.stream.rewinds
                {
                    tracing::info!(stream = %self.stream, cursor = %rewound, "cursor was rewound (replay); continuing from there");
                    self.stream.rewinds = rewinds;
                    cursor = rewound;
                    state.rewound();
                    continue;
                }
                if woken && self.redeliver(state).await? {
                    continue;
                }
                // Nothing numbered after the cursor. Writers notify while a
                // host waits, and a NOTIFY makes a tick; without NOTIFY, or
                // while catching up after the wake lease lapsed, poll: tick,
                // then read.
                let notify = self.shared.settings.notify;
                let catching_up = notify && self.keep_notifications_on().await?;
                state.idle_poll = if notify {
                    poll.min(Duration::from_millis(WAKE_MAX_WAIT_MS))
                } else {
                    (state.idle_poll * 2).clamp(Duration::from_millis(MIN_POLL_INTERVAL_MS), poll)
                };
                Next::Wait(if catching_up {
                    Duration::from_millis(HORIZON_WAIT_POLL_MS)
                } else {
                    state.idle_poll
                })
            } else {
                state.idle_poll = Duration::ZERO;
                let end = batch.end.expect("a batch with events has an end");
                // More rows wait: read the next window while the plugin
                // handles this one.
                let ahead = batch.more.then_some((batch_size, batch.within));
                let events: Vec<(LoggedEvent, u32)> = batch
                    .events
                    .into_iter()
                    .map(|e| {
                        let attempt = state.failures.get(&e.position).copied().unwrap_or(0) + 1;
                        (e, attempt)
                    })
                    .collect();
                let positions: Vec<(Position, EventRef)> = events
                    .iter()
                    .map(|(e, _)| (e.position, e.event_ref()))
                    .collect();
                if self.sql.is_some() {
                    self.notice_own_writes(&events, state).await?;
                }
                let handled_from = started.elapsed();
                let result = self.handle(events, end, ahead).await?;
                let (to, failed) = match result {
                    Handled::Refused => match self.after_refusal().await? {
                        Some(c) => {
                            cursor = c;
                            state.rewound();
                            continue;
                        }
                        None => return Ok(WorkerEnd::LeaseLost),
                    },
                    Handled::Upto { to, failed } => (to, failed),
                    Handled::Stopped => return Ok(WorkerEnd::Stopped),
                };
                if let Some(to) = to {
                    cursor = to;
                    state.failures.retain(|p, _| *p > cursor);
                    state.progressed = true;
                }
                match failed {
                    None => {
                        tracing::debug!(
                            stream = %self.stream,
                            events = positions.len(),
                            read_us = read_at.as_micros() as u64,
                            handle_and_ack_us = (started.elapsed() - handled_from).as_micros() as u64,
                            "batch handled"
                        );
                        self.shared.observe(HostEvent::BatchHandled {
                            plugin: self.stream.plugin.clone(),
                            events: positions.len(),
                            cursor,
                        });
                        Next::Continue
                    }
                    Some(failed) => {
                        let (at, event) = positions[failed.index];
                        self.failed(at, event, failed, state).await?
                    }
                }
            };
            match next {
                Next::Continue => {}
                Next::Resume(at) => {
                    cursor = at;
                    state.failures.retain(|p, _| *p > cursor);
                }
                Next::Rewound(at) => {
                    cursor = at;
                    state.rewound();
                }
                Next::End(end) => return Ok(end),
                Next::Wait(d) => {
                    tokio::select! {
                        _ = ticked.changed() => continue,
                        _ = tokio::time::sleep(d) => {}
                        _ = self.plugins.changed() => continue,
                        _ = stopped(self.stop) => return Ok(WorkerEnd::Stopped),
                    }
                    // Polling: a tick, then read again.
                    if !self.wait_for_tick(&mut ticked).await {
                        return Ok(WorkerEnd::Stopped);
                    }
                }
                Next::Sleep(d) => {
                    // A new version of this plugin ends the wait: it may well be the fix.
                    let until = tokio::time::Instant::now() + d;
                    loop {
                        tokio::select! {
                            _ = tokio::time::sleep_until(until) => break,
                            changed = self.plugins.changed() => {
                                // A closed channel (shutting down) ends it too.
                                let replaced = changed.is_err()
                                    || self
                                        .plugins
                                        .borrow()
                                        .get(&self.stream.plugin)
                                        .is_none_or(|p| !Arc::ptr_eq(p, self.plugin));
                                if replaced {
                                    break;
                                }
                            }
                            _ = stopped(self.stop) => return Ok(WorkerEnd::Stopped),
                        }
                    }
                }
            }
        }
    }

    /// Hand `events` (read up to `end`) to the plugin and acknowledge what it
    /// handled. With the sql capability, the plugin's statements and the
    /// acknowledgement commit together; after a failure at index i > 0 the
    /// transaction is rolled back and events before i are handed over again on
    /// their own, so that exactly their effects commit.
    ///
    /// `ahead` (window, the transaction it may lie within): read the window
    /// after `end` during the call.
    async fn handle(
        &mut self,
        events: Vec<(LoggedEvent, u32)>,
        end: Position,
        mut ahead: Option<(u32, Option<log::Within>)>,
    ) -> Result<Handled, WorkerError> {
        let positions: Vec<Position> = events.iter().map(|(e, _)| e.position).collect();
        let Some(sql) = self.sql.clone() else {
            if !self.lease_covers_a_call().await {
                return Ok(Handled::Stopped);
            }
            return Ok(match self.call(events, None, end, ahead).await {
                Outcome::Handled => {
                    if !self.reader.ack(&*self.client, self.stream, end).await? {
                        return Ok(Handled::Refused);
                    }
                    Handled::Upto {
                        to: Some(end),
                        failed: None,
                    }
                }
                Outcome::Failed {
                    index,
                    retry,
                    message,
                } => {
                    let to = index.checked_sub(1).map(|i| positions[i]);
                    if let Some(to) = to
                        && !self.reader.ack(&*self.client, self.stream, to).await?
                    {
                        return Ok(Handled::Refused);
                    }
                    Handled::Upto {
                        to,
                        failed: Some(Failed {
                            index,
                            retry,
                            message,
                        }),
                    }
                }
            });
        };
        let mut take = events.len();
        let mut failed: Option<Failed> = None;
        loop {
            if !self.lease_covers_a_call().await {
                return Ok(Handled::Stopped);
            }
            sql.begin(self.policy.handle_timeout).await?;
            let access: Arc<dyn SqlAccess> = sql.clone();
            let outcome = self
                .call(events[..take].to_vec(), Some(access), end, ahead.take())
                .await;
            match sql.checked(outcome) {
                Outcome::Handled => {
                    let to = if take == events.len() {
                        end
                    } else {
                        positions[take - 1]
                    };
                    match sql.acknowledge_and_commit(self.stream, to).await {
                        Ok(true) => {
                            return Ok(Handled::Upto {
                                to: Some(to),
                                failed,
                            });
                        }
                        Ok(false) => {
                            sql.rollback().await?;
                            return Ok(Handled::Refused);
                        }
                        // The batch's own doing (a deferred constraint, a
                        // timeout it set): a failed attempt, not a lost
                        // connection. Which event caused it is unknown: halve
                        // the batch until one event alone fails.
                        Err(e) if e.batch && db::sqlstate::blames_the_batch(&e.error) => {
                            let e = e.error;
                            sql.rollback().await?;
                            if take > 1 {
                                take /= 2;
                                continue;
                            }
                            return Ok(Handled::Upto {
                                to: None,
                                failed: Some(Failed {
                                    index: 0,
                                    retry: Retry::Backoff,
                                    message: format!(
                                        "committing the batch's sql failed: {}",
                                        db::error_text(&e)
                                    ),
                                }),
                            });
                        }
                        Err(e) => return Err(e.error.into()),
                    }
                }
                Outcome::Failed {
                    index,
                    retry,
                    message,
                } => {
                    sql.rollback().await?;
                    failed = Some(Failed {
                        index,
                        retry,
                        message,
                    });
                    if index == 0 {
                        return Ok(Handled::Upto { to: None, failed });
                    }
                    take = index;
                }
            }
        }
    }

    /// Call the plugin; meanwhile, with `ahead`, read the window after `end`
    /// on this connection (the sql capability has a session of its own). A
    /// failed read-ahead is dropped: the next read is made again and reports.
    async fn call(
        &mut self,
        events: Vec<(LoggedEvent, u32)>,
        sql: Option<Arc<dyn SqlAccess>>,
        end: Position,
        ahead: Option<(u32, Option<log::Within>)>,
    ) -> Outcome {
        let plugin = self.plugin.clone();
        let Some((window, within)) = ahead else {
            return plugin.handle(events, sql).await;
        };
        let read = self
            .reader
            .read(&*self.client, self.stream, end, window, within);
        let (outcome, read) = tokio::join!(plugin.handle(events, sql), read);
        self.prefetched = read.ok().map(|batch| Prefetched {
            from: end,
            window,
            batch,
        });
        outcome
    }

    /// The event at `at` failed: count the attempt, then retry later, or give
    /// up on it (dead letter, or halt the plugin).
    async fn failed(
        &mut self,
        at: Position,
        event: EventRef,
        failed: Failed,
        state: &mut WorkerState,
    ) -> Result<Next, WorkerError> {
        let Failed {
            index,
            retry,
            message,
        } = failed;
        let attempts =
            dead_letters::record_failure(&*self.client, self.stream, at, event, &message).await?;
        state.failures.insert(at, attempts);
        let policy = self.policy;
        let plugin = self.stream.plugin.clone();
        let give_up = retry == Retry::Never || attempts >= policy.max_attempts;
        if !give_up {
            let delay = match retry {
                Retry::After(d) => d.min(policy.retry_max),
                _ => config::jitter(config::backoff(
                    attempts,
                    policy.retry_base,
                    policy.retry_max,
                )),
            };
            record_error(&*self.client, &plugin, &message, false).await?;
            tracing::warn!(
                stream = %self.stream, %event, attempt = attempts,
                "batch failed at event {index}: {message}; retrying in {delay:?}"
            );
            self.shared.observe(HostEvent::BatchFailed {
                plugin,
                index,
                message,
                retry_in: Some(delay),
            });
            return Ok(Next::Sleep(delay));
        }
        self.shared.observe(HostEvent::BatchFailed {
            plugin: plugin.clone(),
            index,
            message: message.clone(),
            retry_in: None,
        });
        let why = if retry == Retry::Never {
            "permanent failure".to_owned()
        } else {
            format!("failed {attempts} times")
        };
        match self.policy.on_failure {
            OnFailure::DeadLetter => {
                if !dead_letters::bury(self.client, self.stream, at, event, &message, attempts)
                    .await?
                {
                    return Ok(match self.after_refusal().await? {
                        Some(rewound) => Next::Rewound(rewound),
                        None => Next::End(WorkerEnd::LeaseLost),
                    });
                }
                record_error(&*self.client, &plugin, &message, false).await?;
                tracing::error!(
                    stream = %self.stream, %event,
                    "{why}: {message}; moved to the dead letters (see `pgevents-host dead-letters list`)"
                );
                self.shared.observe(HostEvent::DeadLettered {
                    plugin,
                    event,
                    attempts,
                    message,
                });
                Ok(Next::Resume(at))
            }
            OnFailure::Halt => {
                record_error(&*self.client, &plugin, &message, true).await?;
                tracing::error!(
                    stream = %self.stream, %event,
                    "{why}: {message}; plugin halted there (it resumes when restarted or replaced)"
                );
                self.shared
                    .observe(HostEvent::PluginHalted { plugin, message });
                Ok(Next::End(WorkerEnd::Halted))
            }
        }
    }

    /// Deliver dead letters the operator asked to redeliver (one batch).
    /// Returns whether there were any. A redelivered event that fails again
    /// stays a dead letter, with the new error.
    async fn redeliver(&mut self, state: &mut WorkerState) -> Result<bool, WorkerError> {
        state.redelivery_checked = Some(Instant::now());
        if !dead_letters::any_pending(&*self.client, &self.stream.plugin).await? {
            return Ok(false);
        }
        let pending =
            dead_letters::pending(&*self.client, self.stream, self.plugin.manifest.batch_size)
                .await?;
        if pending.is_empty() {
            return Ok(false);
        }
        let ids: Vec<i64> = pending.iter().map(|r| r.id).collect();
        let events: Vec<(LoggedEvent, u32)> = pending
            .iter()
            .map(|r| (r.event.clone(), r.attempts + 1))
            .collect();
        if !self.lease_covers_a_call().await {
            return Ok(false);
        }
        let outcome = match &self.sql {
            Some(sql) => {
                sql.begin(self.policy.handle_timeout).await?;
                let access: Arc<dyn SqlAccess> = sql.clone();
                let outcome = sql.checked(self.plugin.handle(events, Some(access)).await);
                if outcome == Outcome::Handled
                    && dead_letters::settle(sql.client(), self.stream, &ids).await?
                {
                    sql.commit().await?;
                } else {
                    sql.rollback().await?;
                }
                outcome
            }
            None => {
                let outcome = self.plugin.handle(events, None).await;
                let done = match &outcome {
                    Outcome::Handled => ids.len(),
                    Outcome::Failed { index, .. } => *index,
                };
                dead_letters::settle(&*self.client, self.stream, &ids[..done]).await?;
                outcome
            }
        };
        let plugin = self.stream.plugin.clone();
        match outcome {
            Outcome::Handled => {
                tracing::info!(stream = %self.stream, events = ids.len(), "dead letters redelivered");
                self.shared.observe(HostEvent::Redelivered {
                    plugin,
                    events: ids.len(),
                });
            }
            Outcome::Failed { index, message, .. } => {
                dead_letters::failed_again(&*self.client, ids[index], &message).await?;
                tracing::warn!(stream = %self.stream, "redelivered dead letter {} failed again: {message}", ids[index]);
                self.shared.observe(HostEvent::Redelivered {
                    plugin,
                    events: index,
                });
            }
        }
        Ok(true)
    }

    /// An acknowledgement was refused. If the lease still holds, a replay
    /// rewound the cursor: returns the new cursor (and takes its rewind
    /// count). Otherwise the partition is another host's now: `None`.
    async fn after_refusal(&mut self) -> Result<Option<Position>, WorkerError> {
        if !leases::holds(&*self.client, self.stream.token).await? {
            tracing::warn!(stream = %self.stream, "lease lost; another host delivers this partition now");
            return Ok(None);
        }
        let Some((cursor, rewinds)) = log::cursor(&*self.client, self.stream).await? else {
            return Ok(None);
        };
        tracing::info!(stream = %self.stream, cursor = %cursor, "cursor was rewound (replay); continuing from there");
        self.stream.rewinds = rewinds;
        Ok(Some(cursor))
    }

    /// Events that the plugin's own sql writes caused (its session's
    /// application name says so): a plugin writing into a table it
    /// subscribes to feeds itself, perhaps without end. Counted in
    /// `pgevents.plugins.self_events` (`status` shows it) and said in the log
    /// at most once a minute.
    async fn notice_own_writes(
        &mut self,
        events: &[(LoggedEvent, u32)],
        state: &mut WorkerState,
    ) -> Result<(), WorkerError> {
        let own = crate::runtime::application_name(&self.stream.plugin);
        let n = events
            .iter()
            .filter(|(e, attempt)| *attempt == 1 && e.application_name == own)
            .count() as i64;
        if n == 0 {
            return Ok(());
        }
        let total: i64 = self
            .client
            .query_one(
                &format!(
                    "UPDATE {SCHEMA}.plugins SET self_events = self_events + $2 WHERE name = $1
                     RETURNING self_events"
                ),
                &[&self.stream.plugin, &n],
            )
            .await?
            .get(0);
        if state
            .warned_own_writes
            .is_none_or(|at| at.elapsed() >= Duration::from_secs(60))
        {
            state.warned_own_writes = Some(Instant::now());
            tracing::warn!(
                stream = %self.stream, events = total,
                "the plugin receives events of its own sql writes to a table it subscribes to: unless it stops writing at some point, it feeds itself without end"
            );
            self.shared.observe(HostEvent::OwnWrites {
                plugin: self.stream.plugin.clone(),
                events: total,
            });
        }
        Ok(())
    }

    /// Wait until the lease is certain to outlast a plugin call (the handle
    /// timeout plus `LEASE_MARGIN_MS`). Returns false if asked to stop first.
    async fn lease_covers_a_call(&mut self) -> bool {
        let need = self.plugin.limits().handle_timeout + Duration::from_millis(LEASE_MARGIN_MS);
        let mut warned = false;
        loop {
            let until = *self.lease.borrow_and_update();
            if until.saturating_duration_since(Instant::now()) >= need {
                return true;
            }
            if !warned {
                tracing::warn!(stream = %self.stream, "lease not renewed lately; waiting before the next plugin call");
                warned = true;
            }
            tokio::select! {
                changed = self.lease.changed() => if changed.is_err() { return false },
                _ = tokio::time::sleep(Duration::from_millis(LEASE_CHECK_MS)) => {}
                _ = stopped(self.stop) => return false,
            }
        }
    }

    /// Before an idle wait with NOTIFY on: renew the wake lease if due, so
    /// that writers notify. Returns whether to wait only briefly, because
    /// writers that looked while the lease had lapsed may still be running.
    async fn keep_notifications_on(&mut self) -> Result<bool, WorkerError> {
        let lease = &self.shared.wake_lease;
        let last = *lease.renewed.lock().expect("wake lease lock");
        if last.is_none_or(|at| at.elapsed() >= Duration::from_millis(WAKE_RENEW_MS)) {
            let started = Instant::now();
            // The lease runs from the server's clock at the call, which is
            // after `started`: so judged from `started`, a lapse is never missed.
            let lapsed = last.is_none_or(|at| {
                at.elapsed() >= Duration::from_millis(WAKE_LEASE_MS - WAKE_RENEW_MS)
            });
            let row = self
                .client
                .query_one(
                    &format!(
                        "SELECT setval('{SCHEMA}.wake_until',
                                       (extract(epoch FROM clock_timestamp()) * 1000)::bigint + $1),
                                array(SELECT backend_xid::text FROM pg_stat_activity
                                      WHERE datname = current_database() AND backend_xid IS NOT NULL
                                      UNION ALL
                                      SELECT transaction::text FROM pg_prepared_xacts
                                      WHERE database = current_database())"
                    ),
                    &[&(WAKE_LEASE_MS as i64)],
                )
                .await?;
            *lease.renewed.lock().expect("wake lease lock") = Some(started);
            if lapsed {
                *lease.catch_up.lock().expect("wake lease lock") = row.get(1);
                *lease.catch_up_until.lock().expect("wake lease lock") =
                    Some(started + Duration::from_millis(WAKE_LEASE_MS));
                // A writer may have committed unnoticed since the last tick.
                return Ok(true);
            }
        }
        let waiting_for = lease.catch_up.lock().expect("wake lease lock").clone();
        let until = *lease.catch_up_until.lock().expect("wake lease lock");
        if waiting_for.is_empty() || until.is_none_or(|until| Instant::now() >= until) {
            return Ok(false);
        }
        let running: bool = self
            .client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_stat_activity
                                WHERE datname = current_database() AND backend_xid::text = ANY ($1)
                                UNION ALL
                                SELECT 1 FROM pg_prepared_xacts
                                WHERE database = current_database() AND transaction::text = ANY ($1))",
                &[&waiting_for],
            )
            .await?
            .get(0);
        if !running {
            lease.catch_up.lock().expect("wake lease lock").clear();
        }
        Ok(running)
    }

    /// Ask the ticker for a tick and wait until one has been taken (at most
    /// `TICK_WAIT_MS`: the ticker may be reconnecting). False if asked to stop.
    async fn wait_for_tick(&mut self, ticked: &mut watch::Receiver<u64>) -> bool {
        ticked.borrow_and_update();
        self.shared.tick_requests.notify_one();
        tokio::select! {
            _ = ticked.changed() => true,
            _ = tokio::time::sleep(Duration::from_millis(TICK_WAIT_MS)) => true,
            _ = stopped(self.stop) => false,
        }
    }
}

/// Remember a plugin's last error (and halt it) for `status`.
async fn record_error(
    client: &impl GenericClient,
    plugin: &str,
    message: &str,
    halt: bool,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            &format!(
                "UPDATE {SCHEMA}.plugins SET last_error = $2, last_error_at = now(),
                     halted = CASE WHEN $3 THEN $2 ELSE halted END
                 WHERE name = $1"
            ),
            &[&plugin, &message, &halt],
        )
        .await?;
    Ok(())
}
