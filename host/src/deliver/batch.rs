//! Handing a batch to the plugin and acknowledging what it handled.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{DeliverError, Deliverer};
use crate::db;
use crate::event::{LoggedEvent, Position};
use crate::eventlog::{self, Within};
use crate::observer::HostEvent;
use crate::outbox;
use crate::runtime::{Effects, Outbox, Outcome, Published, Retry, SqlAccess};
use crate::schema::SCHEMA;

/// The failure a batch ended with, for the event at `index`.
pub(super) struct Failed {
    pub index: usize,
    pub retry: Retry,
    pub message: String,
}

/// What became of a batch.
pub(super) enum Handled {
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

/// A window read ahead, from `from`, of `window` rows: used if the next read
/// would be exactly that one (the batch before it was handled in full and
/// the plugin's version did not change).
pub(super) struct Prefetched {
    pub from: Position,
    pub window: u32,
    pub batch: eventlog::Batch,
}

impl Deliverer {
    /// Hand `events` (read up to `end`) to the plugin and acknowledge what it
    /// handled. With the sql capability, the plugin's statements and the
    /// acknowledgement commit together; after a failure at index i > 0 the
    /// transaction is rolled back and events before i are handed over again on
    /// their own, so that exactly their effects commit.
    ///
    /// `ahead` (window, the transaction it may lie within): read the window
    /// after `end` during the call.
    pub(super) async fn handle(
        &mut self,
        events: Vec<(LoggedEvent, u32)>,
        end: Position,
        mut ahead: Option<(u32, Option<Within>)>,
    ) -> Result<Handled, DeliverError> {
        let positions: Vec<Position> = events.iter().map(|(e, _)| e.position).collect();
        let Some(sql) = self.conn().sql.clone() else {
            if !self.lease_covers_a_call().await {
                return Ok(Handled::Stopped);
            }
            let calling = std::time::Instant::now();
            let (outcome, mut messages) = self.call(events, None, end, ahead).await;
            tracing::trace!(
                stream = %self.stream,
                call_us = calling.elapsed().as_micros() as u64,
                messages = messages.len(),
                "plugin called"
            );
            return Ok(match outcome {
                Outcome::Handled => {
                    if !self.acknowledge_with(end, &messages).await? {
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
                    // The messages of the events acknowledged, not of the
                    // failed one (it records its own when it succeeds).
                    messages.retain(|m| m.event < index);
                    if let Some(to) = to
                        && !self.acknowledge_with(to, &messages).await?
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
            let (outcome, messages) = self
                .call(events[..take].to_vec(), Some(access), end, ahead.take())
                .await;
            match sql.checked(outcome) {
                Outcome::Handled => {
                    let to = if take == events.len() {
                        end
                    } else {
                        positions[take - 1]
                    };
                    let stream = &self.stream;
                    let messages = &messages;
                    let ack = async |client: &tokio_postgres::Client| {
                        Ok(outbox::record(client, stream, messages).await?
                            && eventlog::ack_with(client, None, stream, to).await?)
                    };
                    match sql.acknowledge_and_commit(ack).await {
                        Ok(true) => {
                            let conn = self.conn();
                            outbox::recorded(&conn.client, &self.ctx.url, messages).await;
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
    ///
    /// Returns what became of the call and the messages it published.
    async fn call(
        &mut self,
        events: Vec<(LoggedEvent, u32)>,
        sql: Option<Arc<dyn SqlAccess>>,
        end: Position,
        ahead: Option<(u32, Option<Within>)>,
    ) -> (Outcome, Vec<Published>) {
        let plugin = self.plugin.clone();
        let outbox = self
            .policy
            .publish
            .as_ref()
            .map(|_| Arc::new(Outbox::default()));
        let effects = Effects {
            sql,
            outbox: outbox.clone(),
            http: None,
        };
        let published = |outcome| (outcome, outbox.map(|o| o.take()).unwrap_or_default());
        let Some((window, within)) = ahead else {
            return published(plugin.handle(events, effects).await);
        };
        let conn = self.conn();
        let read = conn
            .reader
            .read(&conn.client, &self.stream, end, window, within);
        let (outcome, read) = tokio::join!(plugin.handle(events, effects), read);
        self.prefetched = read.ok().map(|batch| Prefetched {
            from: end,
            window,
            batch,
        });
        published(outcome)
    }

    /// Acknowledge up to `to` outside a plugin's sql session, recording the
    /// messages of the acknowledged events in the same transaction. False if
    /// the acknowledgement was refused (nothing recorded).
    async fn acknowledge_with(
        &self,
        to: Position,
        messages: &[Published],
    ) -> Result<bool, DeliverError> {
        let conn = self.conn();
        if messages.is_empty() {
            return Ok(conn.reader.ack(&conn.client, &self.stream, to).await?);
        }
        let done = outbox::record_and_ack(&conn.client, &self.stream, messages, to).await?;
        if done {
            outbox::recorded(&conn.client, &self.ctx.url, messages).await;
        }
        Ok(done)
    }

    /// Events that the plugin's own sql writes caused (its session's
    /// application name says so): a plugin writing into a table it
    /// subscribes to feeds itself, perhaps without end. Counted in
    /// `pgevents.plugins.self_events` (`status` shows it) and said in the log
    /// at most once a minute.
    pub(super) async fn notice_own_writes(
        &mut self,
        events: &[(LoggedEvent, u32)],
    ) -> Result<(), DeliverError> {
        let own = crate::runtime::application_name(&self.stream.plugin);
        let n = events
            .iter()
            .filter(|(e, attempt)| *attempt == 1 && e.application_name == own)
            .count() as i64;
        if n == 0 {
            return Ok(());
        }
        let total: i64 = self
            .client()
            .query_one(
                &format!(
                    "UPDATE {SCHEMA}.plugins SET self_events = self_events + $2 WHERE name = $1
                     RETURNING self_events"
                ),
                &[&self.stream.plugin, &n],
            )
            .await?
            .get(0);
        if self
            .warned_own_writes
            .is_none_or(|at| at.elapsed() >= Duration::from_secs(60))
        {
            self.warned_own_writes = Some(Instant::now());
            tracing::warn!(
                stream = %self.stream, events = total,
                "the plugin receives events of its own sql writes to a table it subscribes to: unless it stops writing at some point, it feeds itself without end"
            );
            self.ctx.observe(HostEvent::OwnWrites {
                plugin: self.stream.plugin.clone(),
                events: total,
            });
        }
        Ok(())
    }
}
