//! Logs every change to user accounts and orders, with all of its fields.

use pgevents_plugin_sdk::{Event, Failure, Manifest, Plugin, Subscription, export_plugin, log};

struct Audit;

impl Plugin for Audit {
    fn manifest() -> Manifest {
        Manifest::new("audit", "1.0.0")
            .subscribe(Subscription::to("public", "user_accounts"))
            .subscribe(Subscription::to("public", "orders"))
    }

    fn handle(events: Vec<Event>) -> Result<(), Failure> {
        for event in &events {
            log::info_with(
                format!("{} {}.{}", event.operation, event.schema, event.table),
                &event.fields(),
            );
        }
        Ok(())
    }
}

export_plugin!(Audit);
