//! A failed batch: counting attempts, retrying with backoff, dead letters
//! (or halting), redelivery on request, and a refused acknowledgement.

use std::sync::Arc;
use std::time::Instant;

use tokio_postgres::GenericClient;

use super::batch::Failed;
use super::{DeliverError, Deliverer, Next};
use crate::backoff::{backoff, jitter};
use crate::config::OnFailure;
use crate::event::{EventRef, LoggedEvent, Position};
use crate::eventlog::{self, dead_letters};
use crate::leases::{self, PartitionEnd};
use crate::observer::HostEvent;
use crate::outbox;
use crate::runtime::{Effects, Outbox, Outcome, Retry, SqlAccess};
use crate::schema::SCHEMA;

impl Deliverer {
    /// The event at `at` failed: count the attempt, then retry later, or give
    /// up on it (dead letter, or halt the plugin).
    pub(super) async fn failed(
        &mut self,
        at: Position,
        event: EventRef,
        failed: Failed,
    ) -> Result<Next, DeliverError> {
        let Failed {
            index,
            retry,
            message,
        } = failed;
        let attempts =
            dead_letters::record_failure(self.client(), &self.stream, at, event, &message).await?;
        self.failures.insert(at, attempts);
        let policy = &self.policy;
        let plugin = self.stream.plugin.clone();
        let give_up = retry == Retry::Never || attempts >= policy.max_attempts;
        if !give_up {
            let delay = match retry {
                Retry::After(d) => d.min(policy.retry_max),
                _ => jitter(backoff(attempts, policy.retry_base, policy.retry_max)),
            };
            record_error(self.client(), &plugin, &message, false).await?;
            tracing::warn!(
                stream = %self.stream, %event, attempt = attempts,
                "batch failed at event {index}: {message}; retrying in {delay:?}"
            );
            self.ctx.observe(HostEvent::BatchFailed {
                plugin,
                index,
                message,
                retry_in: Some(delay),
            });
            return Ok(Next::Sleep(delay));
        }
        self.ctx.observe(HostEvent::BatchFailed {
            plugin: plugin.clone(),
            index,
            message: message.clone(),
            retry_in: None,
        });
        let why = if retry == Retry::Never {
            "permanent failure".to_owned()
        } else {
            format!("failed {attempts} times")
        };
        match self.policy.on_failure {
            OnFailure::DeadLetter => {
                let conn = self.conn.as_mut().expect("connected");
                if !dead_letters::bury(
                    &mut conn.client,
                    &self.stream,
                    at,
                    event,
                    &message,
                    attempts,
                )
                .await?
                {
                    return self.after_refusal().await;
                }
                record_error(self.client(), &plugin, &message, false).await?;
                tracing::error!(
                    stream = %self.stream, %event,
                    "{why}: {message}; moved to the dead letters (see `pgevents-host dead-letters list`)"
                );
                self.ctx.observe(HostEvent::DeadLettered {
                    plugin,
                    event,
                    attempts,
                    message,
                });
                self.advance(at);
                Ok(Next::Continue)
            }
            OnFailure::Halt => {
                record_error(self.client(), &plugin, &message, true).await?;
                tracing::error!(
                    stream = %self.stream, %event,
                    "{why}: {message}; plugin halted there (it resumes when restarted or replaced)"
                );
                self.ctx
                    .observe(HostEvent::PluginHalted { plugin, message });
                Ok(Next::End(PartitionEnd::Halted))
            }
        }
    }

    /// Deliver dead letters the operator asked to redeliver (one batch).
    /// Returns whether there were any. A redelivered event that fails again
    /// stays a dead letter, with the new error.
    pub(super) async fn redeliver(&mut self) -> Result<bool, DeliverError> {
        self.redelivery_checked = Some(Instant::now());
        if !dead_letters::any_pending(self.client(), &self.stream.plugin).await? {
            return Ok(false);
        }
        let pending =
            dead_letters::pending(self.client(), &self.stream, self.plugin.manifest.batch_size)
                .await?;
        if pending.is_empty() {
            return Ok(false);
        }
        let ids: Vec<i64> = pending.iter().map(|r| r.id).collect();
        let events: Vec<(LoggedEvent, u32)> = pending
            .iter()
            .map(|r| (r.event.clone(), r.attempts + 1))
            .collect();
        if !self.lease_covers_a_call().await {
            return Ok(false);
        }
        let outbox = self
            .policy
            .publish
            .as_ref()
            .map(|_| Arc::new(Outbox::default()));
        let published = || outbox.as_ref().map(|o| o.take()).unwrap_or_default();
        let outcome = match &self.conn().sql.clone() {
            Some(sql) => {
                sql.begin(self.policy.handle_timeout).await?;
                let access: Arc<dyn SqlAccess> = sql.clone();
                let effects = Effects {
                    sql: Some(access),
                    outbox: outbox.clone(),
                    http: None,
                };
                let outcome = sql.checked(self.plugin.handle(events, effects).await);
                if outcome == Outcome::Handled
                    && outbox::record(sql.client(), &self.stream, &published()).await?
                    && dead_letters::settle(sql.client(), &self.stream, &ids).await?
                {
                    sql.commit().await?;
                } else {
                    sql.rollback().await?;
                }
                outcome
            }
            None => {
                let effects = Effects {
                    sql: None,
                    outbox: outbox.clone(),
                    http: None,
                };
                let outcome = self.plugin.handle(events, effects).await;
                let done = match &outcome {
                    Outcome::Handled => ids.len(),
                    Outcome::Failed { index, .. } => *index,
                };
                let mut messages = published();
                messages.retain(|m| m.event < done);
                let client = self.client();
                client.batch_execute("BEGIN").await?;
                let settled = outbox::record(client, &self.stream, &messages).await?
                    && dead_letters::settle(client, &self.stream, &ids[..done]).await?;
                client
                    .batch_execute(if settled { "COMMIT" } else { "ROLLBACK" })
                    .await?;
                outcome
            }
        };
        let plugin = self.stream.plugin.clone();
        match outcome {
            Outcome::Handled => {
                tracing::info!(stream = %self.stream, events = ids.len(), "dead letters redelivered");
                self.ctx.observe(HostEvent::Redelivered {
                    plugin,
                    events: ids.len(),
                });
            }
            Outcome::Failed { index, message, .. } => {
                dead_letters::failed_again(self.client(), ids[index], &message).await?;
                tracing::warn!(stream = %self.stream, "redelivered dead letter {} failed again: {message}", ids[index]);
                self.ctx.observe(HostEvent::Redelivered {
                    plugin,
                    events: index,
                });
            }
        }
        Ok(true)
    }

    /// An acknowledgement was refused. If the lease still holds, a replay
    /// rewound the cursor: go on from the new cursor (taking its rewind
    /// count). Otherwise the partition is another host's now.
    pub(super) async fn after_refusal(&mut self) -> Result<Next, DeliverError> {
        if !leases::holds(self.client(), self.stream.token).await? {
            tracing::warn!(stream = %self.stream, "lease lost; another host delivers this partition now");
            return Ok(Next::End(PartitionEnd::LeaseLost));
        }
        let Some((cursor, rewinds)) = eventlog::cursor(self.client(), &self.stream).await? else {
            return Ok(Next::End(PartitionEnd::LeaseLost));
        };
        tracing::info!(stream = %self.stream, cursor = %cursor, "cursor was rewound (replay); continuing from there");
        self.stream.rewinds = rewinds;
        self.rewind_to(cursor);
        Ok(Next::Continue)
    }
}

/// Remember a plugin's last error (and halt it) for `status`.
pub(super) async fn record_error(
    client: &impl GenericClient,
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
