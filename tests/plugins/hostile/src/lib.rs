//! Test plugin: a careless or hostile plugin author, as its config values say.
//! Every value is optional; without any it subscribes to `public.items` and
//! logs "event" for each event.
//!
//! | config            | effect                                                        |
//! |-------------------|---------------------------------------------------------------|
//! | `name`            | the manifest's name (default `hostile`)                       |
//! | `version`         | the manifest's version (default `1.0.0`)                      |
//! | `schema`, `table` | the subscribed table (default `public`.`items`)               |
//! | `columns`         | a changed-columns filter, comma-separated                     |
//! | `describe_sleep`  | seconds `describe` sleeps in a WASI call first                |
//! | `fail_bytes`      | `handle` fails permanently with a message this long           |
//! | `fail_text`       | `handle` fails permanently with this message                  |
//! | `print_bytes`     | `handle` prints this many bytes to stdout first               |
//!
//! Config values arrive only on the second `describe` (the host asks once
//! without config, to learn the name): `name` applies from then on.

use pgevents_plugin_sdk::{
    Event, Failure, Manifest, Operation, Plugin, Subscription, config, export_plugin, log,
};

struct Hostile;

impl Plugin for Hostile {
    fn manifest() -> Manifest {
        if let Some(s) = config::get("describe_sleep").and_then(|s| s.parse().ok()) {
            std::thread::sleep(std::time::Duration::from_secs(s));
        }
        let mut subscription = Subscription::to(
            config::get_or("schema", "public"),
            config::get_or("table", "items"),
        );
        if let Some(columns) = config::get("columns") {
            let columns: Vec<&str> = columns.split(',').collect();
            subscription = subscription.on(&[Operation::Update]).when_changed(&columns);
        }
        Manifest::new(
            config::get_or("name", "hostile"),
            config::get_or("version", "1.0.0"),
        )
        .subscribe(subscription)
        .batch_size(10)
    }

    fn handle(events: Vec<Event>) -> Result<(), Failure> {
        if let Some(n) = config::get("print_bytes").and_then(|s| s.parse::<usize>().ok()) {
            let line = "x".repeat(1023) + "\n";
            for _ in 0..n / 1024 {
                print!("{line}");
            }
        }
        if let Some(n) = config::get("fail_bytes").and_then(|s| s.parse::<usize>().ok()) {
            return Err(Failure::permanent(0, "y".repeat(n)));
        }
        if let Some(text) = config::get("fail_text") {
            return Err(Failure::permanent(0, text));
        }
        for event in &events {
            log::info_with("event", &event.fields());
        }
        Ok(())
    }
}

export_plugin!(Hostile);
