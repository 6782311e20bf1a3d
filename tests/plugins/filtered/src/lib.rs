//! Test plugin: narrow subscriptions, so tests can check that the host
//! delivers only the operations and column changes asked for.

use pgevents_plugin_sdk::{
    Event, Failure, Manifest, Operation, Plugin, Subscription, export_plugin, log,
};

struct Filtered;

impl Plugin for Filtered {
    fn manifest() -> Manifest {
        Manifest::new("filtered", "1.0.0")
            .subscribe(Subscription::to("public", "items").on(&[Operation::Insert]))
            .subscribe(
                Subscription::to("public", "prices")
                    .on(&[Operation::Update])
                    .when_changed(&["price"]),
            )
            .batch_size(100)
    }

    fn handle(events: Vec<Event>) -> Result<(), Failure> {
        for event in &events {
            log::info_with("event", &event.fields());
        }
        Ok(())
    }
}

export_plugin!(Filtered);
