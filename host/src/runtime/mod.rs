//! The wasmtime engine, limits and bindings: the only module that touches
//! wasmtime types. The rest of the host sees [`Runtime`], [`LoadedPlugin`],
//! [`Manifest`] and [`Outcome`].
//!
//! - `engine.rs`: [`Runtime`], the engine and its instance [`Pool`], the
//!   epoch ticker for CPU deadlines, the linker; the allocator's tuning.
//! - `cache.rs`: the compile cache, and why its entries can be trusted.
//! - `load.rs`: from a file to a [`LoadedPlugin`]: read, compile, link, ask
//!   for the manifest (`describe`), check the grants.
//! - `call.rs`: [`LoadedPlugin`] and its calls: a thread, a pool slot and a
//!   fresh instance each; a call stuck past its time is abandoned.
//! - `state.rs`: the store state of one call: WASI, memory limit, and each
//!   capability's own part.
//! - `capability/`: one module per capability a plugin may import (`log`,
//!   `config`, `sql`, `http`), and which of them the operator must grant.
//! - `manifest.rs`: the plugin's manifest, validated.
//! - `bindings.rs`: the Rust side of `wit/plugin.wit`.

mod bindings;
mod cache;
mod call;
mod capability;
mod engine;
mod load;
mod manifest;
mod state;

pub use call::{ABANDON_GRACE, Effects, LoadedPlugin, plugin_text};
pub use capability::Grants;
pub use capability::http::{HttpAnswer, HttpGrant, HttpRequestSeen, HttpResponder};
pub use capability::log::{LogLevel, LogSink, PluginLog};
pub use capability::publish::{Outbox, Published, message_id};
pub use capability::sql::{
    CommitError, SqlAccess, SqlFailure, SqlGrant, SqlRows, SqlSession, SqlSessionError, SqlValue,
    application_name, grant_acknowledgement,
};
pub use engine::{ABANDONED_RESERVE, Pool, Runtime, release_free_memory, tune_allocator};
pub use load::{LoadError, panic_when_loading, read_plugin_file};
pub use manifest::{DEFAULT_BATCH_SIZE, MAX_BATCH_SIZE, Manifest, ManifestError, Subscription};

use std::time::Duration;

/// The world this host implements, as plugins name it.
pub const WORLD: &str = "pgevents:plugin/plugin@0.1.1";

/// Per-instance limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// How long a call may run: wasm code is interrupted at this deadline, and
    /// a call still blocked in a host call just after it is abandoned.
    pub handle_timeout: Duration,
    pub memory_bytes: usize,
}

/// How a batch went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every event was handled.
    Handled,
    /// Events before `index` were handled; the rest should be delivered again.
    Failed {
        index: usize,
        retry: Retry,
        message: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// On the host's backoff schedule.
    Backoff,
    /// After the delay the plugin asked for.
    After(Duration),
    /// Retrying will not help.
    Never,
}
