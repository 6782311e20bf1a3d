//! `pgevents-host test` and `pgevents-host events export`: a plugin's
//! handler on recorded events, without a host; and those recordings.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use pgevents_host::authoring::{self, ExportFilter, HttpRules, TestOptions};
use pgevents_host::config::{ConfigFile, Settings};
use pgevents_host::db;

use super::DbArgs;

/// `test`'s arguments.
#[derive(Debug, Args)]
pub(crate) struct TestArgs {
    /// The plugin's `.wasm` file.
    plugin: PathBuf,
    /// Events as JSONL (`events export` writes them); default: one sample
    /// event per subscribed table and operation.
    events: Option<PathBuf>,
    /// The database the plugin's sql runs on, as its granted role, inside a
    /// transaction rolled back after each batch (see --commit); sample rows
    /// come from its tables. Without it, sql statements fail.
    #[arg(long)]
    database_url: Option<String>,
    /// The operator's config file: the plugin's grants, tables, limits and
    /// config values, as the host applies them.
    #[arg(long, env = "PGEVENTS_CONFIG")]
    config: Option<PathBuf>,
    /// HTTP rules (TOML, `[[rule]]` with `url`, `method`, `status`, `body`,
    /// `headers`): the first matching rule answers a request; any other is
    /// refused. Nothing is sent to the network.
    #[arg(long)]
    http: Option<PathBuf>,
    /// Commit each handled batch's sql instead of rolling it back.
    #[arg(long)]
    commit: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

pub(crate) async fn test_command(args: TestArgs) -> anyhow::Result<ExitCode> {
    let mut settings = Settings::default();
    if let Some(path) = &args.config {
        ConfigFile::load(path)?.apply(&mut settings);
    }
    if settings.compile_cache.is_none()
        && let Some(dir) = default_cache()
    {
        settings.compile_cache = Some(dir);
    }
    let http = match &args.http {
        Some(path) => HttpRules::load(path)?,
        None => HttpRules::default(),
    };
    let json = args.json;
    let report = authoring::run_test(TestOptions {
        plugin: args.plugin,
        events: args.events,
        database_url: args.database_url,
        settings,
        http,
        commit: args.commit,
    })
    .await;
    match report {
        Ok(report) => {
            if json {
                pgevents_host::outln!("{}", serde_json::to_string_pretty(&report.to_json())?);
            } else {
                pgevents_host::out!("{report}");
            }
            Ok(if report.failed() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// The compile cache `test` uses unless the config names one:
/// `PGEVENTS_COMPILE_CACHE`, else the user's cache folder, so that testing
/// again does not compile again.
fn default_cache() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("PGEVENTS_COMPILE_CACHE") {
        return Some(dir.into());
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("pgevents-host"))
}

#[derive(Debug, Subcommand)]
pub(crate) enum EventsCommand {
    /// Write events from the log as JSONL, oldest first, in the shape
    /// `pgevents-host test` reads: to test a handler on real traffic.
    Export {
        #[command(flatten)]
        db: DbArgs,
        /// The events this plugin subscribes to (as the host delivers them).
        #[arg(long, conflicts_with = "table", required_unless_present = "table")]
        plugin: Option<String>,
        /// Every event of this table (`SCHEMA.TABLE`, or `TABLE` in public).
        #[arg(long)]
        table: Option<String>,
        /// Only events captured at or after this time (RFC 3339, e.g. 2026-11-23T10:00:00Z).
        #[arg(long, value_parser = humantime::parse_rfc3339_weak, conflicts_with = "ago")]
        since: Option<std::time::SystemTime>,
        /// Only events captured within this long (e.g. 1h).
        #[arg(long, value_parser = humantime::parse_duration)]
        ago: Option<std::time::Duration>,
        /// At most this many events.
        #[arg(long)]
        limit: Option<u64>,
        /// Write to this file instead of standard output.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
}

pub(crate) async fn events_command(command: EventsCommand) -> anyhow::Result<ExitCode> {
    let EventsCommand::Export {
        db,
        plugin,
        table,
        since,
        ago,
        limit,
        output,
    } = command;
    let filter = match (plugin, table) {
        (Some(p), _) => ExportFilter::Plugin(p),
        (None, Some(t)) => {
            let (schema, table) = split_table(&t);
            ExportFilter::Table { schema, table }
        }
        (None, None) => anyhow::bail!("give --plugin NAME or --table SCHEMA.TABLE"),
    };
    let since = since.or_else(|| ago.map(|d| std::time::SystemTime::now() - d));
    let client = db::connect(&db.database_url, Some(db.connect_timeout)).await?;
    let mut out: Box<dyn std::io::Write> = match &output {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path)
                .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let n = authoring::export(&client, &filter, since, limit, &mut out).await?;
    if let Some(path) = &output {
        eprintln!("wrote {n} event(s) to {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// `codegen`'s arguments.
#[derive(Debug, Args)]
pub(crate) struct CodegenArgs {
    #[command(flatten)]
    db: DbArgs,
    /// The table (`SCHEMA.TABLE`, or `TABLE` in public); repeat for several.
    #[arg(long, required = true)]
    table: Vec<String>,
    /// `rust`, `python`, `ts` or `js` (JSDoc, for componentize-js).
    #[arg(long)]
    lang: authoring::codegen::Lang,
    /// Write to this file instead of standard output.
    #[arg(long, short)]
    output: Option<PathBuf>,
}

/// `SCHEMA.TABLE` or `TABLE` (in public).
pub(crate) fn split_table(name: &str) -> (String, String) {
    let (schema, table) = name.split_once('.').unwrap_or(("public", name));
    (schema.to_owned(), table.to_owned())
}

pub(crate) async fn codegen_command(args: CodegenArgs) -> anyhow::Result<ExitCode> {
    let client = db::connect(&args.db.database_url, Some(args.db.connect_timeout)).await?;
    let mut text = String::new();
    for name in &args.table {
        let (schema, table) = split_table(name);
        let columns = authoring::catalog::columns(&client, &schema, &table).await?;
        let first = text.is_empty();
        if !first {
            text.push('\n');
        }
        text.push_str(&authoring::codegen::generate(
            &schema, &table, &columns, args.lang, first,
        ));
    }
    match &args.output {
        Some(path) => {
            std::fs::write(path, &text)
                .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
            eprintln!("wrote {}", path.display());
        }
        None => pgevents_host::out!("{text}"),
    }
    Ok(ExitCode::SUCCESS)
}

/// `new`'s arguments.
#[derive(Debug, Args)]
pub(crate) struct NewArgs {
    /// The plugin's name (its manifest name and folder).
    name: String,
    /// `rust`, `python` or `js`.
    #[arg(long, default_value = "rust")]
    lang: authoring::codegen::Lang,
    /// Subscribe to this table (`SCHEMA.TABLE`), with typed rows from the
    /// live catalog (needs the database); repeat for several.
    #[arg(long)]
    table: Vec<String>,
    #[command(flatten)]
    db: DbArgs,
    /// The folder to create (default: ./NAME).
    #[arg(long)]
    dir: Option<PathBuf>,
}

pub(crate) async fn new_command(args: NewArgs) -> anyhow::Result<ExitCode> {
    let mut tables = Vec::new();
    if !args.table.is_empty() {
        let client = db::connect(&args.db.database_url, Some(args.db.connect_timeout)).await?;
        for name in &args.table {
            let (schema, table) = split_table(name);
            let columns = authoring::catalog::columns(&client, &schema, &table).await?;
            let sample_row = authoring::catalog::sample_row(&client, &schema, &table).await?;
            tables.push(authoring::scaffold::TableSpec {
                schema,
                table,
                columns,
                sample_row,
            });
        }
    }
    let plugin = authoring::scaffold::NewPlugin {
        name: args.name.clone(),
        lang: args.lang,
        tables,
    };
    let files = match authoring::scaffold::files(&plugin) {
        Ok(files) => files,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let dir = args.dir.unwrap_or_else(|| PathBuf::from(&args.name));
    authoring::scaffold::write(&dir, &files)?;
    pgevents_host::outln!(
        "created {} ({} files); build and test it:\n  cd {}\n  {}",
        dir.display(),
        files.len(),
        dir.display(),
        authoring::scaffold::next_steps(&plugin)
    );
    Ok(ExitCode::SUCCESS)
}
