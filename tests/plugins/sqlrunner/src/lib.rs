//! Test plugin: runs the statement its `statement` config value holds for
//! every event of `public.items` through the sql capability (with the event's
//! id as `$1` if the statement mentions `$1`), logs "sql error" with the
//! SQLSTATE if it fails and goes on, then logs "event". With `fail_text`,
//! it fails the batch permanently with that message after the statement.

use pgevents_plugin_sdk::sql::{self, Value};
use pgevents_plugin_sdk::{
    Event, Failure, Manifest, Plugin, Subscription, config, export_plugin, log,
};

struct SqlRunner;

impl Plugin for SqlRunner {
    fn manifest() -> Manifest {
        Manifest::new("sqlrunner", "1.0.0")
            .subscribe(Subscription::to("public", "items"))
            .batch_size(10)
    }

    fn handle(events: Vec<Event>) -> Result<(), Failure> {
        let statement = config::get_or("statement", "SELECT 1");
        for event in &events {
            let params: Vec<Value> = if statement.contains("$1") {
                vec![event.id.as_str().into()]
            } else {
                Vec::new()
            };
            if let Err(e) = sql::execute(&statement, &params) {
                log::info_with(
                    "sql error",
                    &[("sqlstate", e.sqlstate), ("message", e.message)],
                );
            }
            log::info_with("event", &event.fields());
        }
        if let Some(text) = config::get("fail_text") {
            return Err(Failure::permanent(0, text));
        }
        Ok(())
    }
}

export_plugin!(SqlRunner);
