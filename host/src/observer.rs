//! What the host did, as events for embedders and tests (the same facts go
//! to the log).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::event::{EventRef, Position};
use crate::runtime::PluginLog;

/// What the host did, for embedders and tests (the same facts go to the log).
#[derive(Debug, Clone)]
pub enum HostEvent {
    PluginStarted {
        plugin: String,
        version: String,
        /// Its compiled code came from the compile cache.
        from_cache: bool,
    },
    /// A new version of a running plugin serves from its next batch on.
    PluginReloaded {
        plugin: String,
        version: String,
        previous_version: String,
        from_cache: bool,
    },
    /// Its file was removed (or now holds another plugin): paused.
    PluginRemoved {
        plugin: String,
    },
    PluginRejected(Rejected),
    PluginLog(PluginLog),
    BatchHandled {
        plugin: String,
        events: usize,
        cursor: Position,
    },
    BatchFailed {
        plugin: String,
        index: usize,
        message: String,
        retry_in: Option<Duration>,
    },
    PluginHalted {
        plugin: String,
        message: String,
    },
    /// An event was moved to the dead letters and the cursor past it.
    DeadLettered {
        plugin: String,
        event: EventRef,
        attempts: u32,
        message: String,
    },
    /// Dead letters were handed to the plugin again (`events` succeeded).
    Redelivered {
        plugin: String,
        events: usize,
    },
    /// Transactions that wrote have been open for a while (longer than
    /// `horizon_warn_after`): their events arrive when they commit.
    LongTransactions {
        writers: Vec<crate::eventlog::OpenWriter>,
    },
    PartitionAcquired {
        plugin: String,
        part: u32,
        host: String,
    },
    PartitionReleased {
        plugin: String,
        part: u32,
    },
    /// A plugin received events its own sql writes caused (`events` so far).
    OwnWrites {
        plugin: String,
        events: i64,
    },
}

/// Receives every [`HostEvent`].
pub type Observer = Arc<dyn Fn(HostEvent) + Send + Sync>;

/// Hands events to the observer, if there is one.
#[derive(Clone, Default)]
pub struct Observers(Option<Observer>);

impl Observers {
    pub fn new(observer: Option<Observer>) -> Observers {
        Observers(observer)
    }

    pub fn observe(&self, event: HostEvent) {
        if let Some(observer) = &self.0 {
            observer(event);
        }
    }

    pub fn get(&self) -> Option<&Observer> {
        self.0.as_ref()
    }
}

impl std::fmt::Debug for Observers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Observers(1)"
        } else {
            "Observers(0)"
        })
    }
}

/// A file that did not become a running plugin, and why.
#[derive(Debug, Clone)]
pub struct Rejected {
    pub file: PathBuf,
    /// Known when the file loaded but its manifest does not fit the database.
    pub plugin: Option<String>,
    pub error: String,
}
