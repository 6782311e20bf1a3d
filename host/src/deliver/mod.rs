//! Delivery: one deliverer per partition held reads the log after the
//! partition's cursor, calls `handle` on a batch in a fresh sandbox, and
//! moves the cursor only after success. The ticker numbers newly committed
//! transactions (see `eventlog`) when NOTIFY wakes it or a deliverer asks;
//! deliverers read after each tick, or poll.
//!
//! Files: this one (the deliverer actor: what it owns, its loop),
//! `batch.rs` (handing a batch over and acknowledging it), `failures.rs`
//! (retries, dead letters, redelivery), `wake.rs` (LISTEN, the ticker, the
//! wake lease, idle waits).

mod batch;
mod failures;
mod wake;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_postgres::Client;

pub(crate) use wake::{WakeLease, keep_ticking};

use crate::config::{EffectivePolicy, LEASE_CHECK_MS, LEASE_MARGIN_MS, Settings};
use crate::db;
use crate::event::{EventRef, LoggedEvent, Position};
use crate::eventlog::{self, Reader, Stream, Within, dead_letters};
use crate::leases::{PARTITION_REST_MS, PartitionEnd};
use crate::observer::{HostEvent, Observers};
use crate::outbox;
use crate::registry::PluginSet;
use crate::runtime::LoadedPlugin;
use crate::runtime::{SqlSession, SqlSessionError};
use crate::shutdown::stopped;
use batch::{Handled, Prefetched};
use failures::record_error;

/// A deliverer that cannot start this many times in a row (its plugin's sql
/// role cannot log in; with the reconnect backoff that is about 35 s) hands
/// its partition back (see `PARTITION_REST_MS`), so that another host may
/// deliver it.
pub const GIVE_UP_FAILURES: u32 = 8;

/// A plugin whose sink's outbox is full looks again this often.
const OUTBOX_FULL_WAIT_MS: u64 = 1_000;

/// What every deliverer of this host shares.
#[derive(Debug)]
pub(crate) struct Context {
    pub url: String,
    pub settings: Settings,
    pub observers: Observers,
    /// Bumped after every tick of this host's ticker.
    pub ticked: watch::Receiver<u64>,
    /// Asks the ticker for a tick.
    pub tick_requests: Arc<tokio::sync::Notify>,
    pub wake_lease: WakeLease,
    pub shutdown: watch::Receiver<bool>,
}

impl Context {
    fn observe(&self, event: HostEvent) {
        self.observers.observe(event);
    }
}

#[derive(Debug, thiserror::Error)]
enum DeliverError {
    #[error("database error: {}", db::error_text(.0))]
    Db(#[from] tokio_postgres::Error),
    #[error(transparent)]
    Sql(#[from] SqlSessionError),
    #[error(
        "partition {part} of plugin `{plugin}` has no cursor (was the plugin forgotten or re-partitioned?)"
    )]
    NoCursor { plugin: String, part: u32 },
}

/// One database session of a deliverer: dropped on any database error and
/// made again.
struct Connection {
    client: Client,
    reader: Reader,
    /// With the sql capability: the plugin's own session, in whose
    /// transaction the acknowledgement commits.
    sql: Option<Arc<SqlSession>>,
}

/// What to do after one step of the loop.
enum Next {
    /// Read again at once.
    Continue,
    /// Wait for a tick, or this long (then ask for one).
    Wait(Duration),
    /// Sleep this long regardless of notifications (retry backoff); a new
    /// version of the plugin ends it.
    Sleep(Duration),
    /// Sleep this long, then read again (waiting at a barrier).
    Pause(Duration),
    End(PartitionEnd),
}

/// The deliverer of one partition of one plugin's stream: an actor that
/// owns its cursor, its connection and what it remembers across reconnects.
pub(crate) struct Deliverer {
    ctx: Arc<Context>,
    plugins: watch::Receiver<PluginSet>,
    /// The version serving now: looked up in `plugins` before every batch.
    plugin: Arc<LoadedPlugin>,
    policy: EffectivePolicy,
    stream: Stream,
    cursor: Position,
    stop: watch::Receiver<bool>,
    /// Until when the lease is certain to hold (renewed by the coordinator).
    lease: watch::Receiver<Instant>,
    conn: Option<Connection>,
    /// Failed attempts of events that failed at least once (mirrors `pgevents.attempts`).
    failures: HashMap<Position, u32>,
    idle_poll: Duration,
    /// When dead letters were last checked for redelivery requests.
    redelivery_checked: Option<Instant>,
    /// A batch was acknowledged since the last connection error.
    progressed: bool,
    /// The transaction the last window ended inside of (see `Reader::read`).
    within: Option<Within>,
    /// When the log last said that the plugin receives its own writes.
    warned_own_writes: Option<Instant>,
    /// When the log last said that a sink's outbox is full.
    warned_full: Option<Instant>,
    /// The window after the batch in the plugin's hands, read meanwhile.
    prefetched: Option<Prefetched>,
}

impl Deliverer {
    /// A deliverer for `stream`, if its plugin still runs.
    pub(crate) fn new(
        ctx: Arc<Context>,
        plugins: watch::Receiver<PluginSet>,
        stream: Stream,
        stop: watch::Receiver<bool>,
        lease: watch::Receiver<Instant>,
    ) -> Option<Deliverer> {
        let plugin = plugins.borrow().get(&stream.plugin).cloned()?;
        Some(Deliverer {
            policy: ctx.settings.policy(&stream.plugin),
            ctx,
            plugins,
            plugin,
            stream,
            cursor: Position::default(),
            stop,
            lease,
            conn: None,
            failures: HashMap::new(),
            idle_poll: Duration::ZERO,
            redelivery_checked: None,
            progressed: false,
            within: None,
            warned_own_writes: None,
            warned_full: None,
            prefetched: None,
        })
    }

    /// Deliver until stopped; reconnect on database errors. Returns why it ended.
    pub(crate) async fn run(mut self) -> PartitionEnd {
        let mut failures = 0;
        let mut connected: Option<Instant> = None;
        loop {
            let result = async {
                self.connect().await?;
                connected = Some(Instant::now());
                self.serve().await
            }
            .await;
            self.conn = None;
            let e = match result {
                Ok(end) => return end,
                Err(e) => e,
            };
            // The backoff starts over only after a session that worked
            // (acknowledged a batch, or lasted a while): one that fails
            // at once, every time, must not be retried every 250 ms.
            if std::mem::take(&mut self.progressed)
                || connected
                    .take()
                    .is_some_and(|at| at.elapsed() >= Duration::from_secs(60))
            {
                failures = 0;
            }
            failures += 1;
            if failures == 1 && matches!(e, DeliverError::Sql(_)) {
                // A configuration problem: show it in `status` too.
                if let Ok(c) = db::connect_once(&self.ctx.url).await {
                    let _ = record_error(&c, &self.stream.plugin, &e.to_string(), false).await;
                }
            }
            if failures >= GIVE_UP_FAILURES
                && matches!(e, DeliverError::Sql(SqlSessionError::Login { .. }))
            {
                tracing::error!(
                    stream = %self.stream,
                    "{e}; giving the partition up for {} s (another host may be able to deliver it)",
                    PARTITION_REST_MS / 1000
                );
                return PartitionEnd::GaveUp;
            }
            let delay = db::reconnect_delay(failures);
            tracing::warn!(stream = %self.stream, "{e}; reconnecting in {delay:?}");
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stopped(&mut self.stop) => return PartitionEnd::Stopped,
            }
        }
    }

    /// Open a session: the log reader, the cursor, the sql session if the
    /// plugin has the capability, and the attempt counts.
    async fn connect(&mut self) -> Result<(), DeliverError> {
        let mut client = db::connect_once(&self.ctx.url).await?;
        let reader = Reader::prepare(&client).await?;
        let Some((cursor, rewinds)) = eventlog::cursor(&client, &self.stream).await? else {
            return Err(DeliverError::NoCursor {
                plugin: self.stream.plugin.clone(),
                part: self.stream.part,
            });
        };
        self.cursor = cursor;
        self.stream.rewinds = rewinds;
        let sql = match &self.policy.sql {
            Some(grant) => Some(Arc::new({
                crate::runtime::grant_acknowledgement(&mut client, &self.stream.plugin, grant)
                    .await?;
                SqlSession::open(
                    &self.ctx.url,
                    &self.stream.plugin,
                    grant,
                    self.policy.handle_timeout,
                )
                .await?
            })),
            None => None,
        };
        self.failures = dead_letters::failures(&client, &self.stream).await?;
        self.conn = Some(Connection {
            client,
            reader,
            sql,
        });
        Ok(())
    }

    /// The session (only called while serving).
    fn conn(&self) -> &Connection {
        self.conn
            .as_ref()
            .expect("a deliverer serves only while connected")
    }

    fn client(&self) -> &Client {
        &self.conn().client
    }

    /// Read, handle, ack, until stopped.
    async fn serve(&mut self) -> Result<PartitionEnd, DeliverError> {
        let mut ticked = self.ctx.ticked.clone();
        loop {
            if *self.stop.borrow() {
                return Ok(PartitionEnd::Stopped);
            }
            if !self.follow_the_plugin() {
                return Ok(PartitionEnd::Stopped);
            }
            let woken = ticked.has_changed().unwrap_or(false);
            ticked.borrow_and_update();
            match self.step(woken).await? {
                Next::Continue => {}
                Next::End(end) => return Ok(end),
                Next::Wait(d) => {
                    tokio::select! {
                        _ = ticked.changed() => continue,
                        _ = tokio::time::sleep(d) => {}
                        _ = self.plugins.changed() => continue,
                        _ = stopped(&mut self.stop) => return Ok(PartitionEnd::Stopped),
                    }
                    // Polling: a tick, then read again.
                    if !self.wait_for_tick(&mut ticked).await {
                        return Ok(PartitionEnd::Stopped);
                    }
                }
                Next::Pause(d) => {
                    tokio::select! {
                        _ = tokio::time::sleep(d) => {}
                        _ = stopped(&mut self.stop) => return Ok(PartitionEnd::Stopped),
                    }
                }
                Next::Sleep(d) => {
                    if !self.sleep_unless_replaced(d).await {
                        return Ok(PartitionEnd::Stopped);
                    }
                }
            }
        }
    }

    /// Between batches: take up a new version of the plugin. False if it
    /// was removed.
    fn follow_the_plugin(&mut self) -> bool {
        let current = self
            .plugins
            .borrow_and_update()
            .get(&self.stream.plugin)
            .cloned();
        match current {
            None => false,
            Some(p) if !Arc::ptr_eq(&p, &self.plugin) => {
                tracing::info!(
                    stream = %self.stream,
                    version = %p.manifest.version,
                    cursor = %self.cursor,
                    "delivering with the new version from here"
                );
                self.plugin = p;
                self.failures.clear();
                self.prefetched = None;
                true
            }
            Some(_) => true,
        }
    }

    /// One read and what follows it.
    async fn step(&mut self, woken: bool) -> Result<Next, DeliverError> {
        let poll = self.ctx.settings.poll_interval;
        // Redelivery requests: looked for every poll interval, and when woken
        // with nothing new to read (`dead-letters redeliver` notifies).
        if self
            .redelivery_checked
            .is_none_or(|at| at.elapsed() >= poll)
            && self.redeliver().await?
        {
            return Ok(Next::Continue);
        }
        let batch_size = self.plugin.manifest.batch_size;
        let started = Instant::now();
        let mut batch = match self.prefetched.take() {
            Some(ahead) if ahead.from == self.cursor && ahead.window == batch_size => ahead.batch,
            _ => {
                let conn = self.conn();
                conn.reader
                    .read(
                        &conn.client,
                        &self.stream,
                        self.cursor,
                        batch_size,
                        self.within,
                    )
                    .await?
            }
        };
        self.within = batch.within;
        if let Some(truncate) = batch.barrier.take() {
            let at = truncate.position;
            if !eventlog::barrier_open(self.client(), &self.stream, at).await? {
                // The other partitions have yet to reach it (or partition
                // 0 to deliver it). A replay meanwhile must be followed,
                // or the partitions would wait for each other for ever.
                if !self.rewound().await? {
                    return Ok(Next::Pause(Duration::from_millis(
                        wake::HORIZON_WAIT_POLL_MS,
                    )));
                }
                return Ok(Next::Continue);
            }
            batch.end = Some(at);
            if self.stream.part == 0 {
                batch.events = vec![truncate];
            }
        }
        let read_at = started.elapsed();
        if !batch.events.is_empty() {
            self.idle_poll = Duration::ZERO;
            return self.deliver(batch, started, read_at).await;
        }
        if let Some(to) = batch.end {
            // Only rows this partition does not want: skip them and read on.
            return Ok(match self.acknowledge(to).await? {
                true => Next::Continue,
                false => self.after_refusal().await?,
            });
        }
        self.nothing_new(woken).await
    }

    /// Nothing after the cursor: follow a replay, redeliver, or wait.
    async fn nothing_new(&mut self, woken: bool) -> Result<Next, DeliverError> {
        // A replay may have rewound the cursor meanwhile (an acknowledgement
        // would notice, but there is none to make).
        if self.rewound().await? {
            return Ok(Next::Continue);
        }
        if woken && self.redeliver().await? {
            return Ok(Next::Continue);
        }
        // Nothing numbered after the cursor. Writers notify while a host
        // waits, and a NOTIFY makes a tick; without NOTIFY, or while catching
        // up after the wake lease lapsed, poll: tick, then read.
        let poll = self.ctx.settings.poll_interval;
        let notify = self.ctx.settings.notify;
        let catching_up = notify && self.keep_notifications_on().await?;
        self.idle_poll = if notify {
            poll.min(Duration::from_millis(wake::WAKE_MAX_WAIT_MS))
        } else {
            (self.idle_poll * 2).clamp(Duration::from_millis(wake::MIN_POLL_INTERVAL_MS), poll)
        };
        Ok(Next::Wait(if catching_up {
            Duration::from_millis(wake::HORIZON_WAIT_POLL_MS)
        } else {
            self.idle_poll
        }))
    }

    /// Hand a batch to the plugin and act on what became of it.
    async fn deliver(
        &mut self,
        batch: eventlog::Batch,
        started: Instant,
        read_at: Duration,
    ) -> Result<Next, DeliverError> {
        if let Some(sink) = self.full_sink().await? {
            if self
                .warned_full
                .is_none_or(|at| at.elapsed() >= Duration::from_secs(60))
            {
                self.warned_full = Some(Instant::now());
                tracing::warn!(
                    stream = %self.stream, sink = %sink,
                    "the outbox of sink `{sink}` is full (max_pending): this plugin pauses until the flusher catches up"
                );
            }
            return Ok(Next::Pause(Duration::from_millis(OUTBOX_FULL_WAIT_MS)));
        }
        let end = batch.end.expect("a batch with events has an end");
        // More rows wait: read the next window while the plugin handles this one.
        let batch_size = self.plugin.manifest.batch_size;
        let ahead = batch.more.then_some((batch_size, batch.within));
        let events: Vec<(LoggedEvent, u32)> = batch
            .events
            .into_iter()
            .map(|e| {
                let attempt = self.failures.get(&e.position).copied().unwrap_or(0) + 1;
                (e, attempt)
            })
            .collect();
        let positions: Vec<(Position, EventRef)> = events
            .iter()
            .map(|(e, _)| (e.position, e.event_ref()))
            .collect();
        if self.conn().sql.is_some() {
            self.notice_own_writes(&events).await?;
        }
        let handled_from = started.elapsed();
        let (to, failed) = match self.handle(events, end, ahead).await? {
            Handled::Refused => return self.after_refusal().await,
            Handled::Upto { to, failed } => (to, failed),
            Handled::Stopped => return Ok(Next::End(PartitionEnd::Stopped)),
        };
        if let Some(to) = to {
            self.advance(to);
            self.progressed = true;
        }
        match failed {
            None => {
                tracing::debug!(
                    stream = %self.stream,
                    events = positions.len(),
                    read_us = read_at.as_micros() as u64,
                    handle_and_ack_us = (started.elapsed() - handled_from).as_micros() as u64,
                    "batch handled"
                );
                self.ctx.observe(HostEvent::BatchHandled {
                    plugin: self.stream.plugin.clone(),
                    events: positions.len(),
                    cursor: self.cursor,
                });
                Ok(Next::Continue)
            }
            Some(failed) => {
                let (at, event) = positions[failed.index];
                self.failed(at, event, failed).await
            }
        }
    }

    /// With the publish capability: the first granted sink whose outbox
    /// holds `max_pending` messages (its publishers pause until it drains).
    async fn full_sink(&self) -> Result<Option<String>, DeliverError> {
        let Some(sinks) = &self.policy.publish else {
            return Ok(None);
        };
        for sink in sinks {
            let max = self
                .ctx
                .settings
                .sinks
                .get(sink)
                .and_then(|s| s.max_pending)
                .unwrap_or(outbox::DEFAULT_MAX_PENDING);
            if outbox::full(self.client(), sink, max).await? {
                return Ok(Some(sink.clone()));
            }
        }
        Ok(None)
    }

    /// Move the cursor to `to` (acknowledged).
    fn advance(&mut self, to: Position) {
        self.cursor = to;
        self.failures.retain(|p, _| *p > to);
    }

    /// Acknowledge up to `to` outside a plugin's transaction; on success
    /// the cursor moves. False if refused (see [`Self::after_refusal`]).
    async fn acknowledge(&mut self, to: Position) -> Result<bool, DeliverError> {
        let conn = self.conn();
        if !conn.reader.ack(&conn.client, &self.stream, to).await? {
            return Ok(false);
        }
        self.advance(to);
        Ok(true)
    }

    /// If a replay rewound the cursor, go on from where it now is.
    async fn rewound(&mut self) -> Result<bool, DeliverError> {
        if let Some((rewound, rewinds)) = eventlog::cursor(self.client(), &self.stream).await?
            && rewinds != self.stream.rewinds
        {
            tracing::info!(stream = %self.stream, cursor = %rewound, "cursor was rewound (replay); continuing from there");
            self.stream.rewinds = rewinds;
            self.rewind_to(rewound);
            return Ok(true);
        }
        Ok(false)
    }

    /// A replay moved the cursor back (and cleared the attempt counts).
    fn rewind_to(&mut self, cursor: Position) {
        self.cursor = cursor;
        self.failures.clear();
    }

    /// Sleep for `d` (a retry's backoff) unless a new version of this plugin
    /// arrives first: it may well be the fix. False if asked to stop.
    async fn sleep_unless_replaced(&mut self, d: Duration) -> bool {
        let until = tokio::time::Instant::now() + d;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(until) => return true,
                changed = self.plugins.changed() => {
                    // A closed channel (shutting down) ends it too.
                    let replaced = changed.is_err()
                        || self
                            .plugins
                            .borrow()
                            .get(&self.stream.plugin)
                            .is_none_or(|p| !Arc::ptr_eq(p, &self.plugin));
                    if replaced {
                        return true;
                    }
                }
                _ = stopped(&mut self.stop) => return false,
            }
        }
    }

    /// Wait until the lease is certain to outlast a plugin call (the handle
    /// timeout plus `LEASE_MARGIN_MS`). Returns false if asked to stop first.
    async fn lease_covers_a_call(&mut self) -> bool {
        let need = self.plugin.limits().handle_timeout + Duration::from_millis(LEASE_MARGIN_MS);
        let mut warned = false;
        loop {
            let until = *self.lease.borrow_and_update();
            if until.saturating_duration_since(Instant::now()) >= need {
                return true;
            }
            if !warned {
                tracing::warn!(stream = %self.stream, "lease not renewed lately; waiting before the next plugin call");
                warned = true;
            }
            tokio::select! {
                changed = self.lease.changed() => if changed.is_err() { return false },
                _ = tokio::time::sleep(Duration::from_millis(LEASE_CHECK_MS)) => {}
                _ = stopped(&mut self.stop) => return false,
            }
        }
    }
}
