//! `pgevents-host`: the command line. Wiring only; the work is in the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use pgevents_host::config::{self, Settings};
use pgevents_host::dispatch::{self, RunOptions};
use pgevents_host::runtime::{Limits, Runtime};
use pgevents_host::{db, demo, registry, schema, status};
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
    },
    /// Per plugin: cursor, events waiting, errors; and what holds delivery back.
    Status {
        #[command(flatten)]
        db: DbArgs,
        #[arg(long)]
        json: bool,
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
    /// PostgreSQL URL, e.g. postgres://user:password@host:5432/database.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@localhost:5432/postgres"
    )]
    database_url: String,
    /// Folder of plugin `.wasm` files.
    #[arg(long, env = "PGEVENTS_PLUGINS", default_value = "plugins")]
    plugins: PathBuf,
    /// How often to poll the log (a safety net with NOTIFY on; the ceiling of
    /// the adaptive interval with NOTIFY off).
    #[arg(long, env = "PGEVENTS_POLL_INTERVAL", value_parser = humantime::parse_duration, default_value = "1s")]
    poll_interval: Duration,
    /// Wake on LISTEN/NOTIFY (one notification per writing transaction). With
    /// `false` the capture triggers send none and the host polls adaptively.
    #[arg(long, env = "PGEVENTS_NOTIFY", default_value_t = true, action = clap::ArgAction::Set)]
    notify: bool,
    /// First retry delay of a failed batch; it doubles per attempt (with ±20% jitter).
    #[arg(long, env = "PGEVENTS_RETRY_BASE", value_parser = humantime::parse_duration, default_value = "500ms")]
    retry_base: Duration,
    /// Longest retry delay.
    #[arg(long, env = "PGEVENTS_RETRY_MAX", value_parser = humantime::parse_duration, default_value = "60s")]
    retry_max: Duration,
    /// CPU time a `handle` call may use before it is interrupted.
    #[arg(long, env = "PGEVENTS_HANDLE_TIMEOUT", value_parser = humantime::parse_duration, default_value = "10s")]
    handle_timeout: Duration,
    /// Linear memory per plugin instance, in MiB.
    #[arg(long, env = "PGEVENTS_MEMORY_LIMIT_MIB", default_value_t = config::DEFAULT_MEMORY_LIMIT_BYTES >> 20)]
    memory_limit_mib: usize,
    /// How often to re-check the capture triggers (repairs capture of a subscribed
    /// table that was dropped and re-created, or whose primary key changed).
    #[arg(long, env = "PGEVENTS_RECONCILE_INTERVAL", value_parser = humantime::parse_duration, default_value = "30s")]
    reconcile_interval: Duration,
    /// Give up if the database cannot be reached this long at start (default: retry forever).
    #[arg(long, env = "PGEVENTS_CONNECT_TIMEOUT", value_parser = humantime::parse_duration)]
    connect_timeout: Option<Duration>,
}

fn main() -> ExitCode {
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
            let options = RunOptions {
                database_url: args.database_url,
                plugins_dir: args.plugins,
                settings: Settings {
                    poll_interval: args.poll_interval,
                    notify: args.notify,
                    retry_base: args.retry_base,
                    retry_max: args.retry_max,
                    handle_timeout: args.handle_timeout,
                    memory_limit_bytes: args.memory_limit_mib << 20,
                    connect_timeout: args.connect_timeout,
                    reconcile_interval: args.reconcile_interval,
                },
                observer: None,
            };
            dispatch::run(options, shutdown_on_signal()).await?;
        }
        Command::Install {
            db,
            plugins,
            notify,
        } => {
            let mut client = db::connect(&db.database_url, Some(db.connect_timeout)).await?;
            let version = schema::install(&mut client).await?;
            println!("schema `{}` installed (version {version})", config::SCHEMA);
            if let Some(dir) = plugins {
                let runtime = Runtime::new(None)?;
                let loaded =
                    registry::load_folder(&runtime, &mut client, &dir, default_limits(), notify)
                        .await?;
                for p in &loaded.plugins {
                    println!(
                        "registered plugin {} {}",
                        p.manifest.name, p.manifest.version
                    );
                }
                for r in &loaded.rejected {
                    eprintln!("error: plugin not registered: {}", r.error);
                }
                for (table, ops) in schema::by_table(&schema::installed_triggers(&client).await?) {
                    println!("capturing {table}: {ops}");
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
            println!(
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
            println!("forgot plugin `{name}`");
            for (table, ops) in schema::by_table(&schema::installed_triggers(&client).await?) {
                println!("capturing {table}: {ops}");
            }
        }
        Command::Inspect { file, json } => {
            let runtime = Runtime::new(None)?;
            let plugin = tokio::task::spawn_blocking(move || runtime.load(&file, default_limits()))
                .await??;
            if json {
                println!("{}", serde_json::to_string_pretty(&plugin.manifest)?);
            } else {
                let m = &plugin.manifest;
                println!("plugin:     {} {}", m.name, m.version);
                println!("sha256:     {}", plugin.sha256);
                println!("batch size: {}", m.batch_size);
                for s in &m.subscriptions {
                    let filter = s
                        .changed_columns
                        .as_ref()
                        .map(|c| format!(" (updates only when {} change)", c.join(", ")))
                        .unwrap_or_default();
                    println!(
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
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{report}");
            }
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

fn default_limits() -> Limits {
    Limits::from(&Settings::default())
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
