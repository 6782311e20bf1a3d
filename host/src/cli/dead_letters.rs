//! `pgevents-host dead-letters ...`: events plugins gave up on.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use pgevents_host::db;
use pgevents_host::eventlog::dead_letters;

use super::DbArgs;

#[derive(Debug, Subcommand)]
pub(crate) enum DeadLetterCommand {
    /// Show dead letters: plugin, event, error, attempts, times.
    List {
        #[command(flatten)]
        db: DbArgs,
        #[command(flatten)]
        which: Which,
        /// Print JSON instead of text.
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
pub(crate) struct Which {
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

pub(crate) async fn dead_letter_command(command: DeadLetterCommand) -> anyhow::Result<ExitCode> {
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
