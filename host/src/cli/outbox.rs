//! `pgevents-host outbox ...`: the outbox's messages, per sink.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use pgevents_host::config::{ConfigFile, Settings};
use pgevents_host::{db, outbox};

use super::DbArgs;

#[derive(Debug, Subcommand)]
pub(crate) enum OutboxCommand {
    /// Per sink: messages waiting, the oldest one's age, refused ones, the last error.
    Status {
        #[command(flatten)]
        db: DbArgs,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Send every waiting message now and exit (like `flask signalbus
    /// flushmany`), unless a running host flushes the sink.
    Flush {
        #[command(flatten)]
        db: DbArgs,
        /// The config file with the `[sinks.NAME]` sections.
        #[arg(long, env = "PGEVENTS_CONFIG")]
        config: PathBuf,
        /// Only this sink (default: every sink in the config file).
        #[arg(long)]
        sink: Option<String>,
    },
    /// Delete the messages the brokers refused (with --pending, the waiting
    /// ones too: they are then never sent).
    Purge {
        #[command(flatten)]
        db: DbArgs,
        /// Only this sink's.
        #[arg(long)]
        sink: Option<String>,
        /// Also the messages still waiting.
        #[arg(long)]
        pending: bool,
    },
}

pub(crate) async fn outbox_command(command: OutboxCommand) -> anyhow::Result<ExitCode> {
    match command {
        OutboxCommand::Status { db, json } => {
            let client = db::connect(&db.database_url, Some(db.connect_timeout)).await?;
            let sinks = outbox::status(&client).await?;
            if json {
                pgevents_host::outln!("{}", serde_json::to_string_pretty(&sinks)?);
            } else if sinks.is_empty() {
                pgevents_host::outln!("the outbox is empty and no sink has been used");
            } else {
                for s in &sinks {
                    pgevents_host::out!("{s}");
                }
            }
        }
        OutboxCommand::Flush { db, config, sink } => {
            let mut settings = Settings::default();
            ConfigFile::load(&config)?.apply(&mut settings);
            let chosen: Vec<(&String, &pgevents_host::sinks::SinkConfig)> = settings
                .sinks
                .iter()
                .filter(|(name, _)| sink.as_ref().is_none_or(|s| s == *name))
                .collect();
            anyhow::ensure!(
                !chosen.is_empty(),
                "{} has no [sinks.{}] section",
                config.display(),
                sink.as_deref().unwrap_or("NAME")
            );
            db::connect(&db.database_url, Some(db.connect_timeout)).await?;
            for (name, sink) in chosen {
                match outbox::flush_now(&db.database_url, name, sink)
                    .await
                    .map_err(anyhow::Error::msg)?
                {
                    outbox::FlushReport::Flushed { sent, refused } => pgevents_host::outln!(
                        "sink {name}: {sent} message(s) sent, {refused} refused by the broker"
                    ),
                    outbox::FlushReport::HeldByAHost => pgevents_host::outln!(
                        "sink {name}: a running host flushes this sink; it sends what waits"
                    ),
                }
            }
        }
        OutboxCommand::Purge { db, sink, pending } => {
            let client = db::connect(&db.database_url, Some(db.connect_timeout)).await?;
            let n = outbox::purge(&client, sink.as_deref(), pending).await?;
            pgevents_host::outln!("{n} message(s) deleted from the outbox");
        }
    }
    Ok(ExitCode::SUCCESS)
}
