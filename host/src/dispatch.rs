//! The host's main loop: one worker per plugin reads the log after the
//! plugin's cursor, calls `handle` on a batch in a fresh sandbox, and moves the
//! cursor only after success. Workers wake on NOTIFY, or poll.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::watch;
use tokio_postgres::{AsyncMessage, Client, NoTls};

use crate::config::{
    self, CLAIM_RETRY_MS, HORIZON_WAIT_POLL_MS, MIN_POLL_INTERVAL_MS, NOTIFY_CHANNEL, SCHEMA,
    Settings,
};
use crate::db;
use crate::log::{Position, Reader};
use crate::registry::{self, Rejected};
use crate::runtime::{Limits, LoadedPlugin, LogSink, Outcome, PluginLog, Retry, Runtime};
use crate::schema;

/// What the host did, for embedders and tests (the same facts go to the log).
#[derive(Debug, Clone)]
pub enum HostEvent {
    PluginStarted {
        plugin: String,
        version: String,
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
    wake: watch::Receiver<u64>,
    shutdown: watch::Receiver<bool>,
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
pub async fn run(options: RunOptions, shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    let settings = options.settings.clone();
    let mut waiting = shutdown.clone();
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
    let runtime = Runtime::new(sink)?;
    let limits = Limits::from(&settings);
    let loaded = registry::load_folder(
        &runtime,
        &mut client,
        &options.plugins_dir,
        limits,
        settings.notify,
    )
    .await?;
    drop(client);

    let (wake_tx, wake_rx) = watch::channel(0u64);
    let shared = Arc::new(Shared {
        url: options.database_url.clone(),
        settings: settings.clone(),
        observer: options.observer.clone(),
        wake: wake_rx,
        shutdown: shutdown.clone(),
    });
    for r in loaded.rejected {
        shared.observe(HostEvent::PluginRejected(r));
    }
    if loaded.plugins.is_empty() {
        tracing::warn!(
            folder = %options.plugins_dir.display(),
            "no plugin is running; add a .wasm file to the plugins folder and restart"
        );
    }
    // The sender lives until `run` returns: with NOTIFY off nothing sends, and a
    // dropped sender would make every worker's wait return at once (a busy loop).
    let wake_tx = Arc::new(wake_tx);
    let listener = settings.notify.then(|| {
        tokio::spawn(listen(
            shared.url.clone(),
            wake_tx.clone(),
            shutdown.clone(),
        ))
    });
    let reconciler = tokio::spawn(keep_triggers_reconciled(
        shared.url.clone(),
        settings.notify,
        settings.reconcile_interval,
        shutdown.clone(),
    ));
    let workers: Vec<_> = loaded
        .plugins
        .into_iter()
        .map(|plugin| {
            shared.observe(HostEvent::PluginStarted {
                plugin: plugin.manifest.name.clone(),
                version: plugin.manifest.version.clone(),
            });
            tokio::spawn(worker(plugin, shared.clone()))
        })
        .collect();
    for w in workers {
        w.await?;
    }
    if let Some(listener) = listener {
        listener.abort();
    }
    reconciler.abort();
    tracing::info!("stopped");
    Ok(())
}

/// Resolves when `shutdown` turns true (or its sender is gone).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
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

/// One plugin's delivery loop; reconnects on database errors.
async fn worker(plugin: Arc<LoadedPlugin>, shared: Arc<Shared>) {
    let name = plugin.manifest.name.clone();
    let mut shutdown = shared.shutdown.clone();
    let mut state = WorkerState::default();
    let mut failures = 0;
    loop {
        let result = async {
            let client = db::connect_once(&shared.url).await?;
            if !claim(&client, &name, &mut shutdown).await? {
                return Ok(());
            }
            let reader = Reader::prepare(&client).await?;
            let cursor = crate::log::cursor_or_start(&client, &name).await?;
            failures = 0;
            deliver(&plugin, &shared, &client, &reader, cursor, &mut state).await
        }
        .await;
        match result {
            Ok(()) => return,
            Err(e) => {
                failures += 1;
                let delay = db::reconnect_delay(failures);
                tracing::warn!(plugin = %name, "database error: {}; reconnecting in {delay:?}", db::error_text(&e));
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stopped(&mut shutdown) => return,
                }
            }
        }
    }
}

/// While any other process delivers this plugin (a second host on the same
/// database, an old one still draining), wait: one deliverer per plugin keeps
/// the order and the at-most-one-batch redelivery promise. The session-level
/// advisory lock is released when the connection ends, even if the process dies.
/// Returns false if shutdown came first.
async fn claim(
    client: &Client,
    plugin: &str,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<bool, tokio_postgres::Error> {
    let mut warned = false;
    loop {
        let claimed: bool = client
            .query_one(
                "SELECT pg_try_advisory_lock(hashtextextended('pgevents plugin ' || $1, 0))",
                &[&plugin],
            )
            .await?
            .get(0);
        if claimed {
            if warned {
                tracing::info!(plugin, "the other deliverer is gone; delivering");
            }
            return Ok(true);
        }
        if !warned {
            tracing::warn!(
                plugin,
                "another process is delivering this plugin on this database; waiting until it stops"
            );
            warned = true;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(CLAIM_RETRY_MS)) => {}
            _ = stopped(shutdown) => return Ok(false),
        }
    }
}

/// Delivery attempts per event that failed at least once (cleared once acked).
#[derive(Default)]
struct WorkerState {
    attempts: HashMap<Position, u32>,
    idle_poll: Duration,
    /// The last horizon, reusable while windows come back full (see `Reader::read`).
    horizon: Option<u64>,
}

enum Next {
    /// Read again at once.
    Continue,
    /// Wait for a notification or this long.
    Wait(Duration),
    /// Sleep this long regardless of notifications (retry backoff).
    Sleep(Duration),
    Halt,
}

/// Read, handle, ack, until shutdown. Returns Ok on shutdown or halt.
async fn deliver(
    plugin: &Arc<LoadedPlugin>,
    shared: &Shared,
    client: &Client,
    reader: &Reader,
    mut cursor: Position,
    state: &mut WorkerState,
) -> Result<(), tokio_postgres::Error> {
    let name = plugin.manifest.name.as_str();
    let mut wake = shared.wake.clone();
    let mut shutdown = shared.shutdown.clone();
    let poll = shared.settings.poll_interval;
    loop {
        if *shutdown.borrow() {
            return Ok(());
        }
        wake.borrow_and_update();
        let started = std::time::Instant::now();
        let batch = reader
            .read(
                client,
                name,
                cursor,
                plugin.manifest.batch_size,
                state.horizon.take(),
            )
            .await?;
        if batch.full {
            state.horizon = Some(batch.horizon);
        }
        let read_at = started.elapsed();
        let next = if batch.events.is_empty() {
            if let Some(to) = batch.end {
                // Only rows this plugin does not subscribe to: skip them and read on.
                reader.ack(client, name, to).await?;
                cursor = to;
                continue;
            }
            state.idle_poll = if shared.settings.notify {
                poll
            } else {
                (state.idle_poll * 2).clamp(Duration::from_millis(MIN_POLL_INTERVAL_MS), poll)
            };
            let wait = if batch.held_back {
                state
                    .idle_poll
                    .min(Duration::from_millis(HORIZON_WAIT_POLL_MS))
            } else {
                state.idle_poll
            };
            Next::Wait(wait)
        } else {
            state.idle_poll = Duration::ZERO;
            let events: Vec<_> = batch
                .events
                .into_iter()
                .map(|e| {
                    let attempt = state.attempts.get(&e.position).copied().unwrap_or(0) + 1;
                    (e, attempt)
                })
                .collect();
            let positions: Vec<Position> = events.iter().map(|(e, _)| e.position).collect();
            let attempts: Vec<u32> = events.iter().map(|(_, a)| *a).collect();
            let runner = plugin.clone();
            let outcome = tokio::task::spawn_blocking(move || runner.handle(events))
                .await
                .unwrap_or_else(|panic| Outcome::Failed {
                    index: 0,
                    retry: Retry::Backoff,
                    message: format!("host panicked while calling the plugin: {panic}"),
                });
            match outcome {
                Outcome::Handled => {
                    let to = batch.end.expect("a batch with events has an end");
                    let handled_at = started.elapsed();
                    reader.ack(client, name, to).await?;
                    tracing::debug!(
                        plugin = name,
                        events = positions.len(),
                        read_us = read_at.as_micros() as u64,
                        handle_us = (handled_at - read_at).as_micros() as u64,
                        ack_us = (started.elapsed() - handled_at).as_micros() as u64,
                        "batch handled"
                    );
                    cursor = to;
                    state.attempts.retain(|p, _| *p > cursor);
                    shared.observe(HostEvent::BatchHandled {
                        plugin: name.to_owned(),
                        events: positions.len(),
                        cursor,
                    });
                    Next::Continue
                }
                Outcome::Failed {
                    index,
                    retry,
                    message,
                } => {
                    if index > 0 {
                        cursor = positions[index - 1];
                        reader.ack(client, name, cursor).await?;
                        state.attempts.retain(|p, _| *p > cursor);
                    }
                    for (p, a) in positions[index..].iter().zip(&attempts[index..]) {
                        state.attempts.insert(*p, *a);
                    }
                    let attempt = attempts[index];
                    let delay = match retry {
                        Retry::Never => None,
                        Retry::After(d) => Some(d.min(shared.settings.retry_max)),
                        Retry::Backoff => Some(config::jitter(config::backoff(
                            attempt,
                            shared.settings.retry_base,
                            shared.settings.retry_max,
                        ))),
                    };
                    let failing = positions[index];
                    record_error(client, name, &message, delay.is_none()).await?;
                    shared.observe(HostEvent::BatchFailed {
                        plugin: name.to_owned(),
                        index,
                        message: message.clone(),
                        retry_in: delay,
                    });
                    match delay {
                        Some(delay) => {
                            tracing::warn!(
                                plugin = name, event = %failing, attempt,
                                "batch failed at event {index}: {message}; retrying in {delay:?}"
                            );
                            Next::Sleep(delay)
                        }
                        None => {
                            tracing::error!(
                                plugin = name, event = %failing,
                                "permanent failure: {message}; plugin halted at {cursor} (it resumes there when restarted or replaced)"
                            );
                            shared.observe(HostEvent::PluginHalted {
                                plugin: name.to_owned(),
                                message,
                            });
                            Next::Halt
                        }
                    }
                }
            }
        };
        match next {
            Next::Continue => {}
            Next::Halt => return Ok(()),
            Next::Wait(d) => {
                tokio::select! {
                    _ = wake.changed() => {}
                    _ = tokio::time::sleep(d) => {}
                    _ = stopped(&mut shutdown) => return Ok(()),
                }
            }
            Next::Sleep(d) => {
                tokio::select! {
                    _ = tokio::time::sleep(d) => {}
                    _ = stopped(&mut shutdown) => return Ok(()),
                }
            }
        }
    }
}

/// Remember a plugin's last error (and halt it, for a permanent failure) for `status`.
async fn record_error(
    client: &Client,
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
