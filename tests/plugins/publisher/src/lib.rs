//! Test plugin: publishes messages for every event of the tables it
//! subscribes to, through the host's `publish` interface, so that tests can
//! compare the host's outbox and the brokers with what was published.
//!
//! | config     | effect                                                              |
//! |------------|---------------------------------------------------------------------|
//! | `name`     | the manifest's name (default `publisher`)                           |
//! | `tables`   | the subscribed tables, comma-separated `schema.table`, every operation (default `public.items`) |
//! | `sink`     | the sink messages go to (default `bus`)                             |
//! | `subject`  | their subject (default `items`)                                     |
//! | `per_event`| messages per event (default 1)                                      |
//!
//! Each message has the event's primary key JSON text as key (none for
//! truncates and tables without a key), the new row's JSON as payload (the
//! old row for deletes, empty for truncates), and the headers `op`
//! (`insert`, ...), `event-id` and `n` (its number within the event, from 0).
//!
//! After publishing an event's messages, a new row whose `name` is `fail`
//! fails the batch there with a retry, and `poison` permanently: the host
//! must then drop the messages of that event and of every later one. If the
//! host refuses a message, the batch fails permanently at that event with
//! the host's reason as its message.

use pgevents_plugin_sdk::publish::{self, Message};
use pgevents_plugin_sdk::{
    Event, Failure, Manifest, Operation, Plugin, Subscription, config, export_plugin,
};
use serde::Deserialize;

#[derive(Deserialize)]
struct Row {
    name: Option<String>,
}

struct Publisher;

impl Plugin for Publisher {
    fn manifest() -> Manifest {
        let mut manifest = Manifest::new(config::get_or("name", "publisher"), "1.0.0");
        for name in config::get_or("tables", "public.items").split(',') {
            let name = name.trim();
            let (schema, table) = name.split_once('.').unwrap_or(("public", name));
            manifest = manifest.subscribe(Subscription::to(schema, table));
        }
        manifest
    }

    fn handle(events: Vec<Event>) -> Result<(), Failure> {
        let sink = config::get_or("sink", "bus");
        let subject = config::get_or("subject", "items");
        let per_event: u32 = config::get_or("per_event", "1").parse().unwrap_or(1);
        for (i, event) in events.iter().enumerate() {
            let payload = match event.operation {
                Operation::Delete => event.old_row.clone(),
                _ => event.new_row.clone(),
            };
            for n in 0..per_event {
                let mut message = Message::new(&sink, &subject)
                    .payload(payload.clone().unwrap_or_default())
                    .header("op", event.operation.as_str())
                    .header("event-id", &event.id)
                    .header("n", n.to_string());
                if let Some(key) = &event.key {
                    message = message.key(key);
                }
                publish::send(i, &message).map_err(|e| Failure::permanent(i, e.to_string()))?;
            }
            let name = event
                .new_row::<Row>()
                .ok()
                .flatten()
                .and_then(|row| row.name);
            match name.as_deref() {
                Some("fail") => {
                    return Err(Failure::retry(
                        i,
                        format!("event {}: name says fail", event.id),
                    ));
                }
                Some("poison") => {
                    return Err(Failure::permanent(
                        i,
                        format!("event {}: name says poison", event.id),
                    ));
                }
                _ => {}
            }
        }
        Ok(())
    }
}

export_plugin!(Publisher);
