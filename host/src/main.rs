//! `pgevents-host`: the command line. Wiring only; the work is in the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use pgevents_host::RunOptions;
use pgevents_host::config::{self, ConfigFile, SettingFlags, Settings};

use pgevents_host::eventlog::{self, EventRef, ReplayFrom};
use pgevents_host::runtime::{Grants, Pool, Runtime};
use pgevents_host::{db, demo, registry, schema, status};
use tokio::sync::watch;

#[path = "cli/authoring.rs"]
mod authoring_cli;
#[path = "cli/dead_letters.rs"]
mod dead_letters_cli;
#[path = "cli/outbox.rs"]
mod outbox_cli;

use authoring_cli::{
    CodegenArgs, EventsCommand, NewArgs, TestArgs, codegen_command, events_command, new_command,
    test_command,
};
use dead_letters_cli::{DeadLetterCommand, dead_letter_command};
use outbox_cli::{OutboxCommand, outbox_command};

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
    ///
    /// Installs or upgrades the schema, loads every `*.wasm` in the plugins
    /// folder, reconciles the capture triggers and delivers. On a signal it
    /// finishes the batches in flight, acknowledges them, and exits 0.
    Run(RunArgs),
    /// Install (or upgrade) the `pgevents` schema; with --plugins, also register
    /// those plugins and install their capture triggers, so that changes are
    /// captured before the host first runs.
    ///
    /// Exits 1 if a plugin is rejected.
    Install {
        #[command(flatten)]
        db: DbArgs,
        /// A plugins folder to register (its manifests' tables are captured from now on).
        #[arg(long, env = "PGEVENTS_PLUGINS")]
        plugins: Option<PathBuf>,
        /// Whether the capture triggers installed send NOTIFY (as `run --notify`).
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
    ///
    /// Shows the capabilities it needs, each with the config line that grants
    /// it; or says why the file is not a plugin (not WebAssembly, a core module
    /// rather than a component, another world, a failing `describe`).
    Inspect {
        /// The plugin's `.wasm` file.
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
    ///
    /// Transactions numbered for delivery and the last tick; committed
    /// transactions still waiting for a tick; open transactions that have
    /// written (their events arrive when they commit); per plugin its state,
    /// version, cursor, events waiting, dead letters, each partition's cursor
    /// and host, file hash, when it was loaded, its last error and its last
    /// load error (a newer file that did not load); the tables captured and
    /// their operations.
    Status {
        #[command(flatten)]
        db: DbArgs,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// List, redeliver or purge events that plugins gave up on.
    #[command(subcommand)]
    DeadLetters(DeadLetterCommand),
    /// The outbox: messages plugins published, waiting for their sinks.
    #[command(subcommand)]
    Outbox(OutboxCommand),
    /// Rewind a plugin's cursor, to deliver past events again (e.g. to rebuild
    /// a read model). Every partition is rewound; running hosts follow at once.
    ///
    /// Says how many events will be delivered again, and whether the log was
    /// already pruned past that point. Cursors, events and dead letters are
    /// shown as `TXID/SEQ`, which `--after` takes.
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
    /// Call a plugin's handler on events from a file (or samples), without a
    /// host, and print per batch its outcome, log lines, sql statements, HTTP
    /// requests and published messages. Exits 1 if a batch fails: for a
    /// plugin's own CI.
    ///
    /// The plugin is loaded as the host loads it, with the grants, tables and
    /// limits of --config. Its sql runs as its granted role on
    /// --database-url, rolled back after each batch unless --commit; its HTTP
    /// requests are answered by the --http rules, never sent.
    Test(TestArgs),
    /// Create a plugin project: manifest, a sample handler, the build
    /// command, sample events its test runs on, and a README; with --table,
    /// subscribed to those tables with typed rows from the live catalog. It
    /// builds with its toolchain alone (the SDK and WIT come with it).
    New(NewArgs),
    /// Develop a plugin against a local database: build the project (a
    /// Cargo.toml, or a build.sh like `new` writes), run a host with it, and
    /// on every change to its sources build it again; the host reloads it
    /// live. A failed build is printed and the last good build keeps running.
    ///
    /// The component goes into --plugins (default: PROJECT/.pgevents/plugins,
    /// so the host runs this plugin alone); every other option is `run`'s.
    Dev(DevArgs),
    /// Write row types for tables from the live catalog (Rust, Python or
    /// TypeScript), matching how the host renders values: nullability,
    /// numeric as exact decimal text, timestamps, uuid, json, arrays, enums.
    Codegen(CodegenArgs),
    /// Recorded events, for testing handlers on real traffic.
    #[command(subcommand)]
    Events(EventsCommand),
    /// Print a reference document, generated from what this binary accepts
    /// (docs/reference/ holds them): `config` or `cli`.
    Reference {
        /// `config` (docs/reference/configuration.md) or `cli` (docs/reference/cli.md).
        #[arg(value_parser = ["config", "cli"])]
        which: String,
    },
    /// Demo: create tables in a demo database, run the example plugins, write rows, show the events.
    Demo {
        /// The demo's own database (created if missing; its tables are made anew).
        #[arg(
            long,
            env = "PGEVENTS_DEMO_DATABASE_URL",
            default_value = "postgres://postgres@localhost:5432/pgevents_demo"
        )]
        database_url: String,
        /// The example plugins (`./dev demo` builds them here).
        #[arg(long, default_value = "plugins")]
        plugins: PathBuf,
    },
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
    /// Operator config file (TOML): the database, the plugins folder, every
    /// setting, and per plugin its overrides, tables, config values and
    /// capability grants. Flags and environment variables override it.
    #[arg(long, env = "PGEVENTS_CONFIG")]
    config: Option<PathBuf>,
    #[command(flatten)]
    settings: SettingFlags,
}

#[derive(Debug, Args)]
struct DevArgs {
    /// The plugin project's folder.
    project: PathBuf,
    #[command(flatten)]
    run: RunArgs,
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
        let mut settings = Settings::default();
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
        self.settings.apply(&mut settings);
        Ok(RunPlan {
            database_url,
            plugins_dir,
            settings,
        })
    }
}

fn main() -> ExitCode {
    pgevents_host::runtime::tune_allocator();
    let cli = Cli::parse();
    // `test` reports the plugin's log lines itself.
    let quiet = matches!(
        cli.command,
        Command::Test(_) | Command::Events(_) | Command::Codegen(_) | Command::New(_)
    );
    let default_filter = if quiet {
        "warn,tokio_postgres=warn,pgevents_host::runtime::capability::log=off"
    } else {
        "info,tokio_postgres=warn"
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PGEVENTS_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
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
            pgevents_host::run(options, shutdown_on_signal()).await?;
        }
        Command::Dev(args) => {
            let project = pgevents_host::authoring::dev::Project::detect(&args.project)?;
            let mut run = args.run;
            if run.plugins.is_none() {
                run.plugins = Some(project.dir.join(".pgevents/plugins"));
            }
            let plan = run.plan()?;
            std::fs::create_dir_all(&plan.plugins_dir)?;
            let dev = pgevents_host::authoring::dev::build_and_install;
            let (p, dir) = (project.clone(), plan.plugins_dir.clone());
            tokio::task::spawn_blocking(move || dev(&p, &dir)).await?;
            let shutdown = shutdown_on_signal();
            let watcher = tokio::spawn(pgevents_host::authoring::dev::watch(
                project,
                plan.plugins_dir.clone(),
                shutdown.clone(),
            ));
            let options = RunOptions {
                database_url: plan.database_url,
                plugins_dir: plan.plugins_dir,
                settings: plan.settings,
                observer: None,
            };
            let served = pgevents_host::run(options, shutdown).await;
            watcher.abort();
            served?;
        }
        Command::Install {
            db,
            plugins,
            notify,
            config,
        } => {
            let mut client = db::connect(&db.database_url, Some(db.connect_timeout)).await?;
            let version = schema::install(&mut client).await?;
            pgevents_host::outln!("schema `{}` installed (version {version})", schema::SCHEMA);
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
                    schema::SCHEMA
                );
                return Ok(ExitCode::from(2));
            }
            let mut client = db::connect(&db.database_url, Some(db.connect_timeout)).await?;
            let dropped = schema::uninstall(&mut client).await?;
            pgevents_host::outln!(
                "dropped {dropped} capture trigger(s) and the `{}` schema",
                schema::SCHEMA
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
            let mut runtime = Runtime::new(None, Pool::default())?;
            if let Some(dir) = &settings.compile_cache {
                runtime = runtime.with_compile_cache(dir.clone());
            }
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
        Command::Outbox(command) => return outbox_command(command).await,
        Command::Test(args) => return test_command(args).await,
        Command::Codegen(args) => return codegen_command(args).await,
        Command::New(args) => return new_command(args).await,
        Command::Events(command) => return events_command(command).await,
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
            let done = match eventlog::replay(&mut client, &plugin, from).await {
                Ok(done) => done,
                Err(
                    e @ (eventlog::ReplayError::Unknown(_) | eventlog::ReplayError::NoSuchEvent(_)),
                ) => {
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
            let old = eventlog::repartition(&mut client, &plugin, partitions).await?;
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
        Command::Reference { which } => {
            let text = match which.as_str() {
                "config" => config::reference::configuration(),
                _ => config::reference::cli(&<Cli as clap::CommandFactory>::command()),
            };
            pgevents_host::out!("{text}");
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
