//! `pgevents-host`: the command line. Wiring only; the work is in the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use pgevents_host::config::{self, ConfigFile, Settings};
use pgevents_host::dispatch::{self, RunOptions};
use pgevents_host::log::{self, EventRef, ReplayFrom};
use pgevents_host::runtime::{Grants, Pool, Runtime};
use pgevents_host::{db, dead_letters, demo, registry, schema, status};
use tokio::sync::watch;

/// Run sandboxed WebAssembly plugins on every row change in PostgreSQL.
#[derive(Debug, Parser)]
#[command(name = "pgevents-host", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Install the schema, load the plugins folder, and deliver events until Ctrl-C / SIGTERM.
    Run(RunArgs),
    /// Install (or upgrade) the `pgevents` schema; with --plugins, also register
    /// those plugins and install their capture triggers, so that changes are
    /// captured before the host first runs.
    Install {
        #[command(flatten)]
        db: DbArgs,
        #[arg(long, env = "PGEVENTS_PLUGINS")]
        plugins: Option<PathBuf>,
        #[arg(long, env = "PGEVENTS_NOTIFY", default_value_t = true, action = clap::ArgAction::Set)]
        notify: bool,
        /// Operator config file (partitions per plugin matter here).
        #[arg(long, env = "PGEVENTS_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Drop every capture trigger and the `pgevents` schema (log, cursors).
    /// Your tables and their data are not touched.
    Uninstall {
        #[command(flatten)]
        db: DbArgs,
        /// Confirm: undelivered events and all cursors are deleted.
        #[arg(long)]
        yes: bool,
    },
    /// Remove a plugin for good: its cursor and subscriptions, and the capture
    /// triggers no other plugin needs. (A plugin whose file is merely missing is
    /// paused instead: its tables stay captured so it resumes without loss.)
    Forget {
        #[command(flatten)]
        db: DbArgs,
        /// The plugin's manifest name, as `status` shows it.
        name: String,
    },
    /// Print a plugin's manifest, or why the file is not a plugin.
    Inspect {
        file: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Give the plugin its config values from this config file, as the
        /// running host would (a plugin may subscribe by its config).
        #[arg(long, env = "PGEVENTS_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Per plugin: cursor, events waiting, errors; and what holds delivery back.
    Status {
        #[command(flatten)]
        db: DbArgs,
        #[arg(long)]
        json: bool,
    },
    /// List, redeliver or purge events that plugins gave up on.
    #[command(subcommand)]
    DeadLetters(DeadLetterCommand),
    /// Rewind a plugin's cursor, to deliver past events again (e.g. to rebuild
    /// a read model). Every partition is rewound; running hosts follow at once.
    Replay {
        #[command(flatten)]
        db: DbArgs,
        /// The plugin's manifest name.
        plugin: String,
        /// Replay events captured since this time (RFC 3339, e.g. 2026-11-23T10:00:00Z).
        #[arg(long, value_parser = humantime::parse_rfc3339_weak, conflicts_with_all = ["ago", "after", "from_start"])]
        since: Option<std::time::SystemTime>,
        /// Replay events captured within this long (e.g. 15m).
        #[arg(long, value_parser = humantime::parse_duration, conflicts_with_all = ["after", "from_start"])]
        ago: Option<Duration>,
        /// Replay the events after this one, in delivery order (TXID/SEQ, as
        /// events, dead letters and `status` cursors show it; TXID/0: from
        /// that transaction on).
        #[arg(long, conflicts_with = "from_start")]
        after: Option<EventRef>,
        /// Replay everything the log still holds.
        #[arg(long)]
        from_start: bool,
    },
    /// Split a plugin's stream into N partitions (by a hash of table and
    /// primary key; `partitions` in the config file must say the same). Only
    /// while no host delivers the plugin: every new partition starts at the
    /// oldest old cursor, so nothing is skipped and some events come again.
    Repartition {
        #[command(flatten)]
        db: DbArgs,
        /// The plugin's manifest name.
        plugin: String,
        /// 1 to 64.
        #[arg(value_parser = clap::value_parser!(u32).range(1..=64))]
        partitions: u32,
    },
    /// Demo: create tables in a demo database, run the example plugins, write rows, show the events.
    Demo {
        #[arg(
            long,
            env = "PGEVENTS_DEMO_DATABASE_URL",
            default_value = "postgres://postgres@localhost:5432/pgevents_demo"
        )]
        database_url: String,
        #[arg(long, default_value = "plugins")]
        plugins: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum DeadLetterCommand {
    /// Show dead letters: plugin, event, error, attempts, times.
    List {
        #[command(flatten)]
        db: DbArgs,
        #[command(flatten)]
        which: Which,
        #[arg(long)]
        json: bool,
    },
    /// Hand dead letters to their plugin again (that plugin only). One that
    /// fails again stays, with the new error.
    Redeliver {
        #[command(flatten)]
        db: DbArgs,
        #[command(flatten)]
        which: Which,
    },
    /// Delete dead letters for good.
    Purge {
        #[command(flatten)]
        db: DbArgs,
        #[command(flatten)]
        which: Which,
    },
}

#[derive(Debug, Args)]
struct Which {
    /// Only this plugin's dead letters.
    #[arg(long)]
    plugin: Option<String>,
    /// Only the dead letter with this id (see `list`).
    #[arg(long)]
    id: Option<i64>,
    /// All dead letters (of --plugin, if given); required to redeliver or purge without --id.
    #[arg(long)]
    all: bool,
}

impl Which {
    fn selection(&self, verb: &str) -> anyhow::Result<dead_letters::Selection> {
        if verb != "list" && self.id.is_none() && !self.all {
            anyhow::bail!(
                "say which dead letters to {verb}: --id N, or --all (optionally with --plugin NAME)"
            );
        }
        Ok(dead_letters::Selection {
            plugin: self.plugin.clone(),
            id: self.id,
        })
    }
}

#[derive(Debug, Args)]
struct DbArgs {
    /// PostgreSQL URL, e.g. postgres://user:password@host:5432/database.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@localhost:5432/postgres"
    )]
    database_url: String,
    /// Give up connecting after this long (e.g. 30s); default 10s.
    #[arg(long, env = "PGEVENTS_CONNECT_TIMEOUT", value_parser = humantime::parse_duration, default_value = "10s")]
    connect_timeout: Duration,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// PostgreSQL URL, e.g. postgres://user:password@host:5432/database
    /// (default: the config file's `database_url`, else postgres://postgres@localhost:5432/postgres).
    #[arg(long, env = "DATABASE_URL")]
    database_url: Option<String>,
    /// Folder of plugin `.wasm` files (default: the config file's `plugins_dir`, else `plugins`).
    #[arg(long, env = "PGEVENTS_PLUGINS")]
    plugins: Option<PathBuf>,
    /// How often to poll the log (a safety net with NOTIFY on, at most 2s
    /// then; the ceiling of the adaptive interval with NOTIFY off). Default 1s.
    #[arg(long, env = "PGEVENTS_POLL_INTERVAL", value_parser = humantime::parse_duration)]
    poll_interval: Option<Duration>,
    /// Wake on LISTEN/NOTIFY (one notification per writing transaction, sent
    /// only while a host waits for it). With `false` the capture triggers send
    /// none and the host polls adaptively.
    #[arg(long, env = "PGEVENTS_NOTIFY", action = clap::ArgAction::Set)]
    notify: Option<bool>,
    /// Watch the plugins folder and reload plugins whose files change (default true).
    #[arg(long, env = "PGEVENTS_WATCH", action = clap::ArgAction::Set)]
    watch: Option<bool>,
    /// First retry delay of a failed batch; it doubles per attempt (with ±20% jitter). Default 500ms.
    #[arg(long, env = "PGEVENTS_RETRY_BASE", value_parser = humantime::parse_duration)]
    retry_base: Option<Duration>,
    /// Longest retry delay. Default 60s.
    #[arg(long, env = "PGEVENTS_RETRY_MAX", value_parser = humantime::parse_duration)]
    retry_max: Option<Duration>,
    /// How long a `handle` call may run before it is interrupted. Default 10s.
    #[arg(long, env = "PGEVENTS_HANDLE_TIMEOUT", value_parser = humantime::parse_duration)]
    handle_timeout: Option<Duration>,
    /// Linear memory per plugin instance, e.g. 256MiB (the default).
    #[arg(long, env = "PGEVENTS_MEMORY_LIMIT", value_parser = parse_size)]
    memory_limit: Option<usize>,
    /// Plugin instances that may exist at once (the instance pool's size). Default 64.
    #[arg(long, env = "PGEVENTS_MAX_INSTANCES", value_parser = clap::value_parser!(u32).range(1..))]
    max_instances: Option<u32>,
    /// Where a plugin seen for the first time starts: `now` (the default) or `beginning` of the log.
    #[arg(long, env = "PGEVENTS_START_FROM", value_parser = parse_start_from)]
    start_from: Option<config::StartFrom>,
    /// How often to re-check the capture triggers (repairs capture of a subscribed
    /// table that was dropped and re-created, or whose primary key changed).
    #[arg(long, env = "PGEVENTS_RECONCILE_INTERVAL", value_parser = humantime::parse_duration, default_value = "30s")]
    reconcile_interval: Duration,
    /// Give up if the database cannot be reached this long at start (default: retry forever).
    #[arg(long, env = "PGEVENTS_CONNECT_TIMEOUT", value_parser = humantime::parse_duration)]
    connect_timeout: Option<Duration>,
    /// Operator config file (TOML): the database, the plugins folder, defaults,
    /// and per plugin limits, tables, config values and capability grants.
    /// Flags and environment variables override it.
    #[arg(long, env = "PGEVENTS_CONFIG")]
    config: Option<PathBuf>,
    /// Deliveries of a failing event before it is dead-lettered (or the plugin halts).
    #[arg(long, env = "PGEVENTS_MAX_ATTEMPTS")]
    max_attempts: Option<u32>,
    /// How long a partition lease lasts without renewal (failover time when a
    /// host is cut off; a host that dies is replaced within about 0.5 s).
    #[arg(long, env = "PGEVENTS_LEASE_TTL", value_parser = humantime::parse_duration)]
    lease_ttl: Option<Duration>,
    /// Log rows every cursor has passed are pruned once older than this (the replay window).
    #[arg(long, env = "PGEVENTS_RETENTION_MIN_AGE", value_parser = humantime::parse_duration)]
    retention_min_age: Option<Duration>,
    /// How often to prune the log.
    #[arg(long, env = "PGEVENTS_RETENTION_INTERVAL", value_parser = humantime::parse_duration)]
    retention_interval: Option<Duration>,
    /// Folder for compiled plugins, so that restarts do not compile again
    /// (default: $XDG_CACHE_HOME/pgevents-host or ~/.cache/pgevents-host); `off` to disable.
    #[arg(long, env = "PGEVENTS_COMPILE_CACHE")]
    compile_cache: Option<PathBuf>,
}

fn parse_size(text: &str) -> Result<usize, String> {
    config::parse_byte_size(text).ok_or_else(|| {
        format!("`{text}` is not a size; write e.g. 64MiB, 1GiB or a number of bytes")
    })
}

fn parse_start_from(text: &str) -> Result<config::StartFrom, String> {
    match text {
        "now" => Ok(config::StartFrom::Now),
        "beginning" => Ok(config::StartFrom::Beginning),
        _ => Err(format!("`{text}`: write `now` or `beginning`")),
    }
}

/// What `run` runs with: the URL, the folder and the settings.
struct RunPlan {
    database_url: String,
    plugins_dir: PathBuf,
    settings: Settings,
}

impl RunArgs {
    /// Defaults, then the config file, then flags and environment variables.
    fn plan(&self) -> anyhow::Result<RunPlan> {
        let mut settings = Settings {
            connect_timeout: self.connect_timeout,
            reconcile_interval: self.reconcile_interval,
            ..Settings::default()
        };
        let file = match &self.config {
            Some(path) => ConfigFile::load(path)?,
            None => ConfigFile::default(),
        };
        let database_url = self
            .database_url
            .clone()
            .or_else(|| file.database_url.clone())
            .unwrap_or_else(|| "postgres://postgres@localhost:5432/postgres".into());
        let plugins_dir = self
            .plugins
            .clone()
            .or_else(|| file.plugins_dir.clone())
            .unwrap_or_else(|| "plugins".into());
        file.apply(&mut settings);
        anyhow::ensure!(
            self.max_attempts != Some(0),
            "--max-attempts must be at least 1"
        );
        ConfigFile {
            max_attempts: self.max_attempts,
            lease_ttl: self.lease_ttl,
            retention_min_age: self.retention_min_age,
            retention_interval: self.retention_interval,
            poll_interval: self.poll_interval,
            notify: self.notify,
            watch: self.watch,
            retry_base: self.retry_base,
            retry_max: self.retry_max,
            handle_timeout: self.handle_timeout,
            memory_limit: self.memory_limit,
            max_instances: self.max_instances,
            start_from: self.start_from,
            ..ConfigFile::default()
        }
        .apply(&mut settings);
        match &self.compile_cache {
            Some(dir) if dir.as_os_str() == "off" => settings.compile_cache = None,
            Some(dir) => settings.compile_cache = Some(dir.clone()),
            None => {}
        }
        Ok(RunPlan {
            database_url,
            plugins_dir,
            settings,
        })
    }
}

fn main() -> ExitCode {
    pgevents_host::runtime::tune_allocator();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PGEVENTS_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,tokio_postgres=warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(execute(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn execute(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run(args) => {
            let plan = args.plan()?;
            let options = RunOptions {
                database_url: plan.database_url,
                plugins_dir: plan.plugins_dir,
                settings: plan.settings,
                observer: None,
            };
            dispatch::run(options, shutdown_on_signal()).await?;
        }
        Command::Install {
            db,
            plugins,
            notify,
            config,
        } => {
            let mut client = db::connect(&db.database_url, Some(db.connect_timeout)).await?;
            let version = schema::install(&mut client).await?;
            pgevents_host::outln!("schema `{}` installed (version {version})", config::SCHEMA);
            if let Some(dir) = plugins {
                let runtime = Runtime::new(None, Pool::default())?;
                let mut settings = Settings {
                    notify,
                    ..Settings::default()
                };
                if let Some(path) = &config {
                    ConfigFile::load(path)?.apply(&mut settings);
                }
                let loaded = registry::load_folder(&runtime, &mut client, &dir, &settings).await?;
                for (_, p) in &loaded.plugins {
                    pgevents_host::outln!(
                        "registered plugin {} {}",
                        p.manifest.name,
                        p.manifest.version
                    );
                }
                for r in &loaded.rejected {
                    eprintln!("error: plugin not registered: {}", r.error);
                }
                for (table, ops) in schema::by_table(&schema::installed_triggers(&client).await?) {
                    pgevents_host::outln!("capturing {table}: {ops}");
                }
                if !loaded.rejected.is_empty() {
                    return Ok(ExitCode::FAILURE);
                }
            }
        }
        Command::Uninstall { db, yes } => {
            if !yes {
                eprintln!(
                    "uninstall drops every capture trigger and the `{}` schema, with undelivered events and cursors; \
                     your tables and data stay. Run again with --yes to proceed.",
                    config::SCHEMA
                );
                return Ok(ExitCode::from(2));
            }
            let mut client = db::connect(&db.database_url, Some(db.connect_timeout)).await?;
            let dropped = schema::uninstall(&mut client).await?;
            pgevents_host::outln!(
                "dropped {dropped} capture trigger(s) and the `{}` schema",
                config::SCHEMA
            );
        }
        Command::Forget { db, name } => {
            let mut client = db::connect(&db.database_url, Some(db.connect_timeout)).await?;
            if !registry::forget(&mut client, &name).await? {
                eprintln!(
                    "error: no plugin named `{name}` is registered (see `pgevents-host status`)"
                );
                return Ok(ExitCode::FAILURE);
            }
            pgevents_host::outln!("forgot plugin `{name}`");
            for (table, ops) in schema::by_table(&schema::installed_triggers(&client).await?) {
                pgevents_host::outln!("capturing {table}: {ops}");
            }
        }
        Command::Inspect { file, json, config } => {
            let mut settings = Settings::default();
            if let Some(path) = &config {
                ConfigFile::load(path)?.apply(&mut settings);
            }
            let runtime = Runtime::new(None, Pool::default())?;
            let grants = move |name: &str| Grants {
                config: settings.policy(name).config,
                ..Grants::permissive()
            };
            let plugin =
                tokio::task::spawn_blocking(move || runtime.load(&file, &grants)).await??;
            if json {
                pgevents_host::outln!("{}", serde_json::to_string_pretty(&plugin.manifest)?);
            } else {
                let m = &plugin.manifest;
                pgevents_host::outln!("plugin:     {} {}", m.name, m.version);
                pgevents_host::outln!("sha256:     {}", plugin.sha256);
                for (capability, grant) in &plugin.capabilities {
                    pgevents_host::outln!(
                        "needs:      the {capability} capability (grant: [plugins.{}] {grant})",
                        m.name
                    );
                }
                pgevents_host::outln!("batch size: {}", m.batch_size);
                for s in &m.subscriptions {
                    let filter = s
                        .changed_columns
                        .as_ref()
                        .map(|c| format!(" (updates only when {} change)", c.join(", ")))
                        .unwrap_or_default();
                    pgevents_host::outln!(
                        "subscribes: {} {}{filter}",
                        schema::quote_table(&s.schema, &s.table),
                        s.operations.join(", ")
                    );
                }
            }
        }
        Command::Status { db, json } => {
            let client = db::connect(&db.database_url, Some(db.connect_timeout)).await?;
            let report = status::status(&client).await?;
            if json {
                pgevents_host::outln!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                pgevents_host::out!("{report}");
            }
        }
        Command::DeadLetters(command) => return dead_letter_command(command).await,
        Command::Replay {
            db,
            plugin,
            since,
            ago,
            after,
            from_start,
        } => {
            let from = match (since, ago, after, from_start) {
                (Some(t), ..) => ReplayFrom::Time(t),
                (_, Some(d), ..) => ReplayFrom::Time(std::time::SystemTime::now() - d),
                (_, _, Some(p), _) => ReplayFrom::After(p),
                (_, _, _, true) => ReplayFrom::Start,
                _ => anyhow::bail!(
                    "say where to replay from: --since TIME, --ago DURATION, --after TXID/SEQ or --from-start"
                ),
            };
            let mut client = db::connect(&db.database_url, Some(db.connect_timeout)).await?;
            let done = match log::replay(&mut client, &plugin, from).await {
                Ok(done) => done,
                Err(e @ (log::ReplayError::Unknown(_) | log::ReplayError::NoSuchEvent(_))) => {
                    eprintln!("error: {e}");
                    return Ok(ExitCode::FAILURE);
                }
                Err(e) => return Err(e.into()),
            };
            if done.partitions == 0 {
                pgevents_host::outln!(
                    "nothing to replay: plugin `{plugin}` is already at or before {}",
                    done.cursor_text
                );
            } else {
                pgevents_host::outln!(
                    "plugin `{plugin}` rewound to {} ({} partition(s)): {} event(s) will be delivered again",
                    done.cursor_text,
                    done.partitions,
                    done.events
                );
            }
            if let Some(oldest) = done.oldest_retained
                && oldest > done.cursor
                && from != ReplayFrom::Start
            {
                pgevents_host::outln!(
                    "note: the log was pruned: older events are gone (see --retention-min-age)"
                );
            }
        }
        Command::Repartition {
            db,
            plugin,
            partitions,
        } => {
            let mut client = db::connect(&db.database_url, Some(db.connect_timeout)).await?;
            let old = log::repartition(&mut client, &plugin, partitions).await?;
            pgevents_host::outln!(
                "plugin `{plugin}`: {old} partition(s) -> {partitions}; every partition starts at the oldest old cursor"
            );
        }
        Command::Demo {
            database_url,
            plugins,
        } => {
            demo::run(&database_url, &plugins).await?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn dead_letter_command(command: DeadLetterCommand) -> anyhow::Result<ExitCode> {
    match command {
        DeadLetterCommand::List { db, which, json } => {
            let selection = which.selection("list")?;
            let client = db::connect(&db.database_url, Some(db.connect_timeout)).await?;
            let letters = dead_letters::list(&client, &selection).await?;
            if json {
                pgevents_host::outln!("{}", serde_json::to_string_pretty(&letters)?);
            } else if letters.is_empty() {
                pgevents_host::outln!("no dead letters");
            } else {
                for d in &letters {
                    pgevents_host::outln!(
                        "#{} {} {} {} key {} at {} (event {}): {} attempt(s), first failed {}, dead since {}{}\n    {}",
                        d.id,
                        d.plugin,
                        d.operation,
                        d.table,
                        d.key.as_deref().unwrap_or("-"),
                        d.event,
                        d.event_id,
                        d.attempts,
                        d.first_failed_at,
                        d.dead_at,
                        if d.redeliver {
                            " [redelivery requested]"
                        } else {
                            ""
                        },
                        d.error
                    );
                }
            }
        }
        DeadLetterCommand::Redeliver { db, which } => {
            let selection = which.selection("redeliver")?;
            let client = db::connect(&db.database_url, Some(db.connect_timeout)).await?;
            let n = dead_letters::redeliver(&client, &selection).await?;
            pgevents_host::outln!(
                "{n} dead letter(s) will be delivered again by the running host(s)"
            );
            if n == 0 {
                return Ok(ExitCode::FAILURE);
            }
        }
        DeadLetterCommand::Purge { db, which } => {
            let selection = which.selection("purge")?;
            let client = db::connect(&db.database_url, Some(db.connect_timeout)).await?;
            let n = dead_letters::purge(&client, &selection).await?;
            pgevents_host::outln!("purged {n} dead letter(s)");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A shutdown signal that turns true on Ctrl-C or SIGTERM.
fn shutdown_on_signal() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down: finishing the batches in flight");
        let _ = tx.send(true);
    });
    rx
}
