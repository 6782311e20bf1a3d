//! Start-up and wiring: install the schema, load the plugins, start the
//! background tasks (reloader, listener, ticker, reconciler, pruner) and the
//! lease coordinator with its deliverers; stop them all at shutdown.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::config::Settings;
use crate::deliver::{self, Context, Deliverer, WakeLease};
use crate::leases::{Coordinator, PartitionEnd, StartDeliverer};
use crate::maintenance;
use crate::observer::{HostEvent, Observer, Observers};
use crate::registry::{self, PluginSet, Reloader};
use crate::runtime::{LogSink, PluginLog, Pool, Runtime};
use crate::shutdown::{TASK_STOP_MS, Tasks, stopped};
use crate::{db, schema};

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
    let observers = Observers::new(options.observer.clone());
    let ctx = Arc::new(Context {
        url: options.database_url.clone(),
        settings: settings.clone(),
        observers: observers.clone(),
        ticked: ticked_rx,
        tick_requests: tick_requests.clone(),
        wake_lease: WakeLease::default(),
        shutdown: shutdown.clone(),
    });
    for r in &loaded.rejected {
        observers.observe(HostEvent::PluginRejected(r.clone()));
    }
    if loaded.plugins.is_empty() && loaded.rejected.is_empty() {
        tracing::warn!(
            folder = %options.plugins_dir.display(),
            "no plugin is running; add a .wasm file to the plugins folder{}",
            if settings.watch { "" } else { " and restart" }
        );
    } else if loaded.plugins.is_empty() {
        tracing::warn!(
            folder = %options.plugins_dir.display(),
            "no plugin is running: {} file(s) in the plugins folder did not load (see the errors above)",
            loaded.rejected.len()
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
            db::listen(
                ctx.url.clone(),
                schema::NOTIFY_CHANNEL,
                wake_tx.clone(),
                shutdown.clone(),
            ),
        );
    }
    tasks.spawn(
        "ticker",
        deliver::keep_ticking(ctx.clone(), wake_rx, tick_requests, ticked_tx),
    );
    tasks.spawn(
        "trigger reconciler",
        maintenance::keep_triggers_reconciled(
            ctx.url.clone(),
            settings.notify,
            settings.reconcile_interval,
            shutdown.clone(),
        ),
    );
    tasks.spawn(
        "pruner",
        maintenance::keep_log_pruned(ctx.url.clone(), settings.clone(), shutdown.clone()),
    );
    for (_, plugin) in &loaded.plugins {
        observers.observe(HostEvent::PluginStarted {
            plugin: plugin.manifest.name.clone(),
            version: plugin.manifest.version.clone(),
            from_cache: plugin.from_cache,
        });
    }
    let start: StartDeliverer = {
        let (ctx, set_rx) = (ctx.clone(), set_rx.clone());
        Arc::new(move |stream, stop, lease| {
            let deliverer = Deliverer::new(ctx.clone(), set_rx.clone(), stream, stop, lease);
            tokio::spawn(async move {
                match deliverer {
                    Some(d) => d.run().await,
                    None => PartitionEnd::Stopped,
                }
            })
        })
    };
    let host_id = crate::leases::new_host_id();
    for (name, sink) in &settings.sinks {
        tasks.spawn(
            "outbox flusher",
            crate::outbox::keep_flushing(
                ctx.url.clone(),
                host_id.clone(),
                name.clone(),
                sink.clone(),
                settings.lease_ttl,
                shutdown.clone(),
            ),
        );
    }
    let coordinator = Coordinator::new(
        host_id,
        ctx.url.clone(),
        settings.clone(),
        observers.clone(),
        set_rx,
        start,
        shutdown.clone(),
    )
    .run();
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
