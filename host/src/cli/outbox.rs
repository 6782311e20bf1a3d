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
    /// List the messages the brokers refused for good, with the broker's reason.
    Refused {
        #[command(flatten)]
        db: DbArgs,
        /// Only this sink's.
        #[arg(long)]
        sink: Option<String>,
        /// At most this many (oldest first).
        #[arg(long, default_value_t = 100)]
        limit: i64,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Send refused messages again, once what the broker refused them for is
    /// fixed (the stream or queue created, a limit raised).
    Resend {
        #[command(flatten)]
        db: DbArgs,
        /// Only this sink's.
        #[arg(long)]
        sink: Option<String>,
        /// Only the message with this id (see `outbox refused`).
        #[arg(long)]
        id: Option<i64>,
        /// Every refused message (of --sink, if given); required without --id.
        #[arg(long)]
        all: bool,
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
        OutboxCommand::Refused {
            db,
            sink,
            limit,
            json,
        } => {
            let client = db::connect(&db.database_url, Some(db.connect_timeout)).await?;
            let messages = outbox::refused(&client, sink.as_deref(), limit).await?;
            if json {
                pgevents_host::outln!("{}", serde_json::to_string_pretty(&messages)?);
            } else if messages.is_empty() {
                pgevents_host::outln!("no refused messages");
            } else {
                for m in &messages {
                    pgevents_host::outln!(
                        "#{} sink {} subject {} key {} from plugin {} ({} bytes, message id {}), recorded {}, refused {}\n    {}",
                        m.id,
                        m.sink,
                        m.subject,
                        m.key.as_deref().unwrap_or("-"),
                        m.plugin,
                        m.payload_bytes,
                        m.message_id,
                        m.created_at,
                        m.refused_at.as_deref().unwrap_or("-"),
                        m.reason
                    );
                }
            }
        }
        OutboxCommand::Resend { db, sink, id, all } => {
            anyhow::ensure!(
                id.is_some() || all,
                "say which refused messages to send again: --id N, or --all (optionally with --sink NAME)"
            );
            let client = db::connect(&db.database_url, Some(db.connect_timeout)).await?;
            let n = outbox::resend(&client, sink.as_deref(), id).await?;
            pgevents_host::outln!(
                "{n} message(s) wait to be sent again (by a running host, or `outbox flush`)"
            );
            if n == 0 {
                return Ok(ExitCode::FAILURE);
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
