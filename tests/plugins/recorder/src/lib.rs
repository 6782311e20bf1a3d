//! Test plugin: logs every event it receives, so tests can read back exactly
//! what the host delivered.

use pgevents_plugin_sdk::{Event, Failure, Manifest, Plugin, Subscription, export_plugin, log};

struct Recorder;

impl Plugin for Recorder {
    fn manifest() -> Manifest {
        Manifest::new("recorder", "1.0.0")
            .subscribe(Subscription::to("public", "items"))
            .subscribe(Subscription::to("public", "uuid_keyed"))
            .subscribe(Subscription::to("public", "composite_keyed"))
            .subscribe(Subscription::to("public", "no_key"))
            // Catalog names, unquoted: exercises quoting in the host's SQL.
            .subscribe(Subscription::to("Odd Schema", r#"Mixed "Case"; Table"#))
            .batch_size(100)
    }

    fn handle(events: Vec<Event>) -> Result<(), Failure> {
        for event in &events {
            log::info_with("event", &event.fields());
        }
        Ok(())
    }
}

export_plugin!(Recorder);
