//! `pgevents-host`: runs sandboxed WebAssembly plugins on every row change in
//! PostgreSQL. One module per moving part of the design (see
//! `docs/repository-layout.md`):
//!
//! - `host`: start-up and wiring; `shutdown`: background tasks, joined.
//! - `event`: the event model; `eventlog/`: ticks, reading, cursors, replay,
//!   retention, dead letters.
//! - `deliver/`: the deliverer of one partition, the ticker and wake-ups.
//! - `leases/`: partition leases and the coordinator that holds them.
//! - `maintenance/`: the trigger reconciler and the log pruner.
//! - `registry/`: loading plugin files, recording them, live reload.
//! - `runtime/`: the WebAssembly engine and each capability plugins may use.
//! - `schema/`: migrations, capture triggers; `db`: connections, SQLSTATEs.
//! - `authoring/`: tools for plugin authors (`test`, `events export`).
//! - `config`, `observer`, `status`, `demo`, `out`, `backoff`.

pub mod authoring;
pub mod backoff;
pub mod config;
pub mod db;
pub mod deliver;
pub mod demo;
pub mod event;
pub mod eventlog;
pub mod host;
pub mod leases;
pub mod maintenance;
pub mod observer;
pub mod out;
pub mod outbox;
pub mod registry;
pub mod runtime;
pub mod schema;
pub mod shutdown;
pub mod sinks;
pub mod status;

pub use host::{RunOptions, run};
