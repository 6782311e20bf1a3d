// The plugin, shared with `recorder-v2` (which differs only in its version).

use pgevents_plugin_sdk::{Event, Failure, Manifest, Plugin, Subscription, export_plugin, log};

struct Recorder;

impl Plugin for Recorder {
    fn manifest() -> Manifest {
        let manifest = Manifest::new("recorder", VERSION)
            .subscribe(Subscription::to("public", "items"))
            .subscribe(Subscription::to("public", "uuid_keyed"))
            .subscribe(Subscription::to("public", "composite_keyed"))
            .subscribe(Subscription::to("public", "no_key"))
            // Catalog names, unquoted: exercises quoting in the host's SQL.
            .subscribe(Subscription::to("Odd Schema", r#"Mixed "Case"; Table"#))
            .batch_size(100);
        // Version 2 also wants `public.prices`: its triggers come and go with it.
        if VERSION.starts_with('2') {
            manifest.subscribe(Subscription::to("public", "prices"))
        } else {
            manifest
        }
    }

    fn handle(events: Vec<Event>) -> Result<(), Failure> {
        for event in &events {
            let mut fields = event.fields();
            fields.push(("version".to_owned(), VERSION.to_owned()));
            log::info_with("event", &fields);
        }
        Ok(())
    }
}

export_plugin!(Recorder);
