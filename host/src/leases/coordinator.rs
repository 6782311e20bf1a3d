//! The lease coordinator: holds this host's fair share of every plugin's
//! partitions, runs one deliverer per partition held, and hands everything
//! back at shutdown.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_postgres::Client;
use uuid::Uuid;

use super::{PARTITION_REST_MS, PartitionEnd};
use crate::config::{LEASE_CHECK_MS, Settings};
use crate::db;
use crate::eventlog::Stream;
use crate::observer::{HostEvent, Observers};
use crate::registry::PluginSet;
use crate::schema::SCHEMA;
use crate::shutdown::{panic_text, stopped};

/// Starts the deliverer of a partition just taken: given the stream, its
/// stop signal and the time until which its lease is certain to hold.
pub(crate) type StartDeliverer = Arc<
    dyn Fn(
            Stream,
            watch::Receiver<bool>,
            watch::Receiver<Instant>,
        ) -> tokio::task::JoinHandle<PartitionEnd>
        + Send
        + Sync,
>;

/// A partition this host holds.
struct Held {
    token: Uuid,
    /// The partition count it was taken under.
    parts: u32,
    /// Until when the lease is certain to hold, by this host's clock.
    valid: watch::Sender<Instant>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<PartitionEnd>,
    /// Asked to stop so that another host can take the partition.
    releasing: bool,
}

impl Held {
    /// Ask its deliverer to stop after its batch (once).
    fn release(&mut self) {
        if !self.releasing {
            self.releasing = true;
            let _ = self.stop.send(true);
        }
    }
}

/// The coordinator actor (see the module doc).
pub(crate) struct Coordinator {
    url: String,
    settings: Settings,
    observers: Observers,
    set: watch::Receiver<PluginSet>,
    start: StartDeliverer,
    shutdown: watch::Receiver<bool>,
    host_id: String,
    held: HashMap<(String, u32), Held>,
    resting: HashMap<(String, u32), Instant>,
}

impl Coordinator {
    pub(crate) fn new(
        host_id: String,
        url: String,
        settings: Settings,
        observers: Observers,
        set: watch::Receiver<PluginSet>,
        start: StartDeliverer,
        shutdown: watch::Receiver<bool>,
    ) -> Coordinator {
        Coordinator {
            url,
            settings,
            observers,
            set,
            start,
            shutdown,
            host_id,
            held: HashMap::new(),
            resting: HashMap::new(),
        }
    }

    /// Balance every `LEASE_CHECK_MS` (and whenever the plugin set changes)
    /// until shutdown; then let every deliverer finish its batch and hand
    /// the leases back.
    pub(crate) async fn run(mut self) {
        let mut client: Option<Client> = None;
        let mut failures = 0;
        tracing::info!(host = %self.host_id, "joining");
        loop {
            if *self.shutdown.borrow() {
                break;
            }
            if client.as_ref().is_none_or(Client::is_closed) {
                match db::connect_once(&self.url).await {
                    Ok(c) => client = Some(c),
                    Err(e) => {
                        failures += 1;
                        let delay = db::reconnect_delay(failures);
                        tracing::warn!(
                            "lease coordinator: {}; reconnecting in {delay:?}",
                            db::error_text(&e)
                        );
                        tokio::select! {
                            _ = tokio::time::sleep(delay) => {}
                            _ = stopped(&mut self.shutdown) => break,
                        }
                        continue;
                    }
                }
            }
            let c = client.as_ref().expect("connected");
            match self.balance(c).await {
                Ok(()) => failures = 0,
                Err(e) => {
                    failures += 1;
                    tracing::warn!("lease coordinator: {}", db::error_text(&e));
                    client = None;
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(LEASE_CHECK_MS)) => {}
                // A plugin added or removed: start or stop its deliverers now.
                _ = self.set.changed() => {}
                _ = stopped(&mut self.shutdown) => break,
            }
        }
        // Shutdown: let every deliverer finish its batch, then hand the leases back.
        for h in self.held.values() {
            let _ = h.stop.send(true);
        }
        for ((plugin, part), h) in self.held.drain() {
            deliverer_end(&plugin, part, h.task.await);
        }
        let left = async {
            let c = db::connect_once(&self.url).await?;
            super::leave(&c, &self.host_id).await
        }
        .await;
        if let Err(e) = left {
            tracing::warn!(
                "could not hand the leases back ({}); other hosts take over when they expire",
                db::error_text(&e)
            );
        }
    }

    /// One round: heartbeat, renew, reap stopped deliverers, then take or
    /// give partitions until this host holds its share.
    async fn balance(&mut self, client: &Client) -> Result<(), tokio_postgres::Error> {
        let plugins = self.set.borrow_and_update().clone();
        let ttl = self.settings.lease_ttl;
        let names: Vec<String> = plugins.keys().cloned().collect();
        let live = super::heartbeat(client, &self.host_id, &names, ttl).await?;
        // Measured before the renewal is sent, so that our idea of the expiry is
        // never later than the database's.
        let sent = Instant::now();
        let renewed = super::renew(client, &self.host_id, ttl).await?;
        for ((plugin, part), h) in self.held.iter() {
            if renewed.contains_key(&h.token) {
                let _ = h.valid.send(sent + ttl);
            } else if !h.task.is_finished() {
                tracing::warn!(plugin, part, "lease lost; stopping its deliverer");
                let _ = h.stop.send(true);
            }
        }
        self.reap(client, &renewed).await?;
        let known = known_plugins(client).await?;
        // Plugins removed from the folder: their deliverers stop after their batch.
        for ((p, _), h) in self.held.iter_mut() {
            if !plugins.contains_key(p) {
                h.release();
            }
        }
        for name in plugins.keys() {
            let (halted, parts) = match known.get(name) {
                Some((halted, Some(parts))) => (*halted, *parts as u32),
                // Forgotten while running: nothing to deliver.
                _ => (true, 0),
            };
            let hosts = live.get(name).map(Vec::as_slice).unwrap_or_default();
            self.balance_plugin(client, name, halted, parts, hosts)
                .await?;
        }
        Ok(())
    }

    /// Collect the deliverers that stopped and hand their leases back.
    async fn reap(
        &mut self,
        client: &Client,
        renewed: &HashMap<Uuid, (String, u32)>,
    ) -> Result<(), tokio_postgres::Error> {
        let finished: Vec<(String, u32)> = self
            .held
            .iter()
            .filter(|(_, h)| h.task.is_finished())
            .map(|(k, _)| k.clone())
            .collect();
        for key in finished {
            let h = self.held.remove(&key).expect("held");
            // A deliverer that panicked is reported; its partition is taken up
            // again (by this host or another) like any released one.
            let end = deliverer_end(&key.0, key.1, h.task.await);
            if end == PartitionEnd::GaveUp {
                self.resting.insert(
                    key.clone(),
                    Instant::now() + Duration::from_millis(PARTITION_REST_MS),
                );
            }
            if renewed.contains_key(&h.token) {
                super::release(client, h.token).await?;
            }
            self.observers.observe(HostEvent::PartitionReleased {
                plugin: key.0.clone(),
                part: key.1,
            });
            tracing::debug!(plugin = %key.0, part = key.1, ?end, "partition released");
        }
        Ok(())
    }

    /// Take or give partitions of one plugin until this host holds its share.
    async fn balance_plugin(
        &mut self,
        client: &Client,
        name: &str,
        halted: bool,
        parts: u32,
        hosts: &[String],
    ) -> Result<(), tokio_postgres::Error> {
        let configured = self.settings.policy(name).partitions;
        if parts != configured && !halted {
            tracing::warn!(
                plugin = %name, configured, in_database = parts,
                "this host's partition count differs from the one in the database; following the database (give every host the same config)"
            );
        }
        for ((p, _), h) in self.held.iter_mut() {
            if p == name && (halted || h.parts != parts) {
                h.release();
            }
        }
        if halted {
            return Ok(());
        }
        let share = super::share(parts, hosts, &self.host_id, name);
        let mut mine: Vec<u32> = self
            .held
            .iter()
            .filter(|((p, _), h)| p == name && !h.releasing)
            .map(|((_, part), _)| *part)
            .collect();
        mine.sort_unstable();
        while mine.len() as u32 > share {
            let part = mine.pop().expect("non-empty");
            let h = self.held.get_mut(&(name.to_owned(), part)).expect("held");
            h.release();
            tracing::info!(plugin = %name, part, "handing partition over to another host");
        }
        for part in 0..parts {
            if mine.len() as u32 >= share {
                break;
            }
            if self.take(client, name, part, parts).await? {
                mine.push(part);
            }
        }
        Ok(())
    }

    /// Try to take one partition and start its deliverer. Returns whether
    /// this host holds it now (newly).
    async fn take(
        &mut self,
        client: &Client,
        name: &str,
        part: u32,
        parts: u32,
    ) -> Result<bool, tokio_postgres::Error> {
        let key = (name.to_owned(), part);
        if self.held.contains_key(&key)
            || self
                .resting
                .get(&key)
                .is_some_and(|until| Instant::now() < *until)
        {
            return Ok(false);
        }
        self.resting.remove(&key);
        let ttl = self.settings.lease_ttl;
        let sent = Instant::now();
        let Some(token) = super::acquire(client, &self.host_id, name, part, ttl).await? else {
            return Ok(false);
        };
        let stream = Stream {
            plugin: name.to_owned(),
            part,
            parts,
            token,
            rewinds: 0,
        };
        tracing::info!(stream = %stream, "partition acquired");
        self.observers.observe(HostEvent::PartitionAcquired {
            plugin: name.to_owned(),
            part,
            host: self.host_id.clone(),
        });
        let (stop_tx, stop_rx) = watch::channel(false);
        let (valid_tx, valid_rx) = watch::channel(sent + ttl);
        let task = (self.start)(stream, stop_rx, valid_rx);
        self.held.insert(
            key,
            Held {
                token,
                parts,
                valid: valid_tx,
                stop: stop_tx,
                task,
                releasing: false,
            },
        );
        Ok(true)
    }
}

/// Per plugin: whether it is halted, and the partition count its cursors
/// were made for. That count is authoritative: a host started with another
/// count follows it rather than skipping events.
async fn known_plugins(
    client: &Client,
) -> Result<HashMap<String, (bool, Option<i32>)>, tokio_postgres::Error> {
    let rows = client
        .query(
            &format!(
                "SELECT p.name, p.halted IS NOT NULL, (SELECT max(c.parts) FROM {SCHEMA}.cursors c WHERE c.plugin = p.name)
                 FROM {SCHEMA}.plugins p"
            ),
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect())
}

/// Why a deliverer's task ended; a panic is said in the log with its partition.
fn deliverer_end(
    plugin: &str,
    part: u32,
    ended: Result<PartitionEnd, tokio::task::JoinError>,
) -> PartitionEnd {
    ended.unwrap_or_else(|e| {
        tracing::error!(
            plugin,
            part,
            "the partition's deliverer panicked: {}; it starts again",
            panic_text(e)
        );
        PartitionEnd::Stopped
    })
}
