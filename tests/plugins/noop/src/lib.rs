//! Benchmark plugin: subscribes to inserts into `public.bench_items` and does
//! nothing with them, so a drain measures the host alone (`bench/suite.py`, P3).
//!
//! With `config = { log_events = "true" }` in the host's config file it writes
//! one log line per event, `handled row=ID`, whose host timestamp is the moment
//! the handler saw the row: the latency benchmark (P4) reads those.

use pgevents_plugin_sdk::{
    Event, Failure, Manifest, Operation, Plugin, Subscription, config, export_plugin, log,
};
use serde::Deserialize;

#[derive(Deserialize)]
struct Key {
    id: i64,
}

struct Noop;

impl Plugin for Noop {
    fn manifest() -> Manifest {
        Manifest::new("noop", "1.0.0")
            .subscribe(Subscription::to("public", "bench_items").on(&[Operation::Insert]))
            .batch_size(1000)
    }

    fn handle(events: Vec<Event>) -> Result<(), Failure> {
        if config::get("log_events").as_deref() == Some("true") {
            for event in &events {
                if let Ok(Some(key)) = event.key::<Key>() {
                    log::info_with("handled", &[("row", key.id.to_string())]);
                }
            }
        }
        Ok(())
    }
}

export_plugin!(Noop);
