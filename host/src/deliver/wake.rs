//! Waking up: the LISTEN connection, the ticker, the wake lease that makes
//! writers notify while a host waits, and the waits themselves.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_postgres::Client;

use super::{Context, DeliverError, Deliverer};
use crate::db;
use crate::eventlog;
use crate::observer::HostEvent;
use crate::schema::SCHEMA;
use crate::shutdown::stopped;

/// With NOTIFY off, an idle deliverer polls at an interval that doubles from this
/// floor up to the poll interval, and drops back to it as soon as it finds work.
pub const MIN_POLL_INTERVAL_MS: u64 = 5;
/// After the wake lease lapsed (below), poll this often until every
/// transaction that was running then has ended: its commit may not have sent
/// a notification.
pub const HORIZON_WAIT_POLL_MS: u64 = 50;
/// A deliverer that asked for a tick waits at most this long for it (the
/// ticker may be reconnecting), then reads anyway.
pub const TICK_WAIT_MS: u64 = 1_000;
/// With NOTIFY on, writers notify only while a waiting host keeps
/// `pgevents.wake_until` ahead of the clock (migration 4): it sets it this far
/// ahead, renews it at most this often, and waits at most this long between
/// reads (so that it renews well before the lease runs out).
pub const WAKE_LEASE_MS: u64 = 5_000;
pub const WAKE_RENEW_MS: u64 = 1_000;
pub const WAKE_MAX_WAIT_MS: u64 = 2_000;

/// This host's hold on `pgevents.wake_until` (migration 4): while it lies
/// ahead, writers notify; once every host has been busy (or gone) for
/// `WAKE_LEASE_MS`, they stop paying for NOTIFY.
#[derive(Debug, Default)]
pub(crate) struct WakeLease {
    /// When this host last began renewing it.
    renewed: Mutex<Option<Instant>>,
    /// At a renewal that found the lease lapsed: the transactions of this
    /// database that had written and were still open. A writer that looked
    /// before the renewal commits without notifying, and it is one of these:
    /// while any of them runs, idle waits are short. Emptied once none does.
    catch_up: Mutex<Vec<String>>,
    /// Catching up ends by this time in any case: a writer that looked
    /// before the renewal and is still open then is a long transaction, and
    /// the idle poll finds its events (rather than a 50 ms poll while it lasts).
    catch_up_until: Mutex<Option<Instant>>,
}

/// Take a tick (see `eventlog`) whenever a notification arrives or a
/// deliverer asks, and bump `ticked` after each; requests that arrive during
/// a tick get another one after it. Also says in the log which transactions
/// that wrote have been open longer than `horizon_warn_after`.
pub(crate) async fn keep_ticking(
    shared: Arc<Context>,
    mut wake: watch::Receiver<u64>,
    requests: Arc<tokio::sync::Notify>,
    ticked: watch::Sender<u64>,
) {
    let mut shutdown = shared.shutdown.clone();
    let warn_every = shared.settings.horizon_warn_after;
    let mut client: Option<Client> = None;
    let mut failures = 0;
    let mut next_look = Instant::now() + warn_every;
    loop {
        let look_in = next_look.saturating_duration_since(Instant::now());
        // After a NOTIFY something surely committed: no need to look first.
        let notified = tokio::select! {
            changed = wake.changed() => if changed.is_err() { return } else { true },
            _ = requests.notified() => false,
            _ = tokio::time::sleep(look_in) => false,
            _ = stopped(&mut shutdown) => return,
        };
        let result = async {
            if client.as_ref().is_none_or(Client::is_closed) {
                let c = db::connect_once(&shared.url).await?;
                // See `pgevents.tick()`: an acknowledgement flushes it.
                c.batch_execute(
                    "SET synchronous_commit = off; SET application_name = 'pgevents-host ticker'",
                )
                .await?;
                client = Some(c);
            }
            let c = client.as_ref().expect("connected");
            eventlog::tick(c, !notified).await?;
            if Instant::now() >= next_look {
                next_look = Instant::now() + warn_every;
                tell_of_long_transactions(c, &shared).await;
            }
            Ok::<(), tokio_postgres::Error>(())
        }
        .await;
        match result {
            Ok(()) => {
                failures = 0;
                ticked.send_modify(|n| *n += 1);
            }
            Err(e) => {
                failures += 1;
                client = None;
                let delay = db::reconnect_delay(failures);
                tracing::warn!("ticker: {}; reconnecting in {delay:?}", db::error_text(&e));
                // Whoever asked is still waiting: tick again after the delay.
                requests.notify_one();
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stopped(&mut shutdown) => return,
                }
            }
        }
    }
}

/// Say in the log which transactions that wrote have been open for long.
async fn tell_of_long_transactions(client: &Client, shared: &Context) {
    match crate::eventlog::open_writers(client, shared.settings.horizon_warn_after).await {
        Ok(writers) if !writers.is_empty() => {
            for w in &writers {
                tracing::warn!(
                    pid = w.pid,
                    user = w.user.as_deref().unwrap_or("?"),
                    application = w.application_name.as_deref().unwrap_or(""),
                    age_s = w.age_seconds.round() as u64,
                    query = w.query.as_deref().unwrap_or(""),
                    "a transaction that wrote has been open for long: its events arrive when it commits, and it keeps deleted log rows from being vacuumed"
                );
            }
            shared
                .observers
                .observe(HostEvent::LongTransactions { writers });
        }
        Ok(_) => {}
        Err(e) => tracing::debug!("could not look for long transactions: {e}"),
    }
}

impl Deliverer {
    /// Before an idle wait with NOTIFY on: renew the wake lease if due, so
    /// that writers notify. Returns whether to wait only briefly, because
    /// writers that looked while the lease had lapsed may still be running.
    pub(super) async fn keep_notifications_on(&mut self) -> Result<bool, DeliverError> {
        let lease = &self.ctx.wake_lease;
        let last = *lease.renewed.lock().expect("wake lease lock");
        if last.is_none_or(|at| at.elapsed() >= Duration::from_millis(WAKE_RENEW_MS)) {
            let started = Instant::now();
            // The lease runs from the server's clock at the call, which is
            // after `started`: so judged from `started`, a lapse is never missed.
            let lapsed = last.is_none_or(|at| {
                at.elapsed() >= Duration::from_millis(WAKE_LEASE_MS - WAKE_RENEW_MS)
            });
            let row = self
                .client()
                .query_one(
                    &format!(
                        "SELECT setval('{SCHEMA}.wake_until',
                                       (extract(epoch FROM clock_timestamp()) * 1000)::bigint + $1),
                                array(SELECT backend_xid::text FROM pg_stat_activity
                                      WHERE datname = current_database() AND backend_xid IS NOT NULL
                                      UNION ALL
                                      SELECT transaction::text FROM pg_prepared_xacts
                                      WHERE database = current_database())"
                    ),
                    &[&(WAKE_LEASE_MS as i64)],
                )
                .await?;
            *lease.renewed.lock().expect("wake lease lock") = Some(started);
            if lapsed {
                *lease.catch_up.lock().expect("wake lease lock") = row.get(1);
                *lease.catch_up_until.lock().expect("wake lease lock") =
                    Some(started + Duration::from_millis(WAKE_LEASE_MS));
                // A writer may have committed unnoticed since the last tick.
                return Ok(true);
            }
        }
        let waiting_for = lease.catch_up.lock().expect("wake lease lock").clone();
        let until = *lease.catch_up_until.lock().expect("wake lease lock");
        if waiting_for.is_empty() || until.is_none_or(|until| Instant::now() >= until) {
            return Ok(false);
        }
        let running: bool = self
            .client()
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_stat_activity
                                WHERE datname = current_database() AND backend_xid::text = ANY ($1)
                                UNION ALL
                                SELECT 1 FROM pg_prepared_xacts
                                WHERE database = current_database() AND transaction::text = ANY ($1))",
                &[&waiting_for],
            )
            .await?
            .get(0);
        if !running {
            // They ended since the last look, perhaps after the last tick
            // was taken: one more short wait, and the tick after it, find
            // what they wrote (rather than the idle wait).
            lease.catch_up.lock().expect("wake lease lock").clear();
        }
        Ok(true)
    }

    /// Ask the ticker for a tick and wait until one has been taken (at most
    /// `TICK_WAIT_MS`: the ticker may be reconnecting). False if asked to stop.
    pub(super) async fn wait_for_tick(&mut self, ticked: &mut watch::Receiver<u64>) -> bool {
        ticked.borrow_and_update();
        self.ctx.tick_requests.notify_one();
        tokio::select! {
            _ = ticked.changed() => true,
            _ = tokio::time::sleep(Duration::from_millis(TICK_WAIT_MS)) => true,
            _ = stopped(&mut self.stop) => false,
        }
    }
}
