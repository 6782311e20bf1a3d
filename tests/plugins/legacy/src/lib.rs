//! Test plugin: a plugin as built before 0.1.1, against `wit/0.1.0/plugin.wit`
//! (world `handler-only`) with wit-bindgen alone, so that its component
//! imports `pgevents:plugin/host@0.1.0` and exports
//! `pgevents:plugin/handler@0.1.0`. Subscribes to inserts into
//! `public.items` and logs "event" for each one: a host that still loads it
//! and delivers to it keeps serving 0.1.0 plugins.

#[allow(unsafe_code, missing_debug_implementations)]
mod bindings {
    wit_bindgen::generate!({
        path: "../../../wit/0.1.0",
        world: "handler-only",
    });
}

use bindings::exports::pgevents::plugin::handler::Guest;
use bindings::pgevents::plugin::host::{self, Level};
use bindings::pgevents::plugin::types::{Event, Failure, Manifest, Operation, Subscription};

struct Legacy;

impl Guest for Legacy {
    fn describe() -> Manifest {
        Manifest {
            name: "legacy".to_owned(),
            version: "0.1.0".to_owned(),
            subscriptions: vec![Subscription {
                schema: "public".to_owned(),
                table: "items".to_owned(),
                operations: vec![Operation::Insert],
                changed_columns: None,
            }],
            batch_size: 0,
        }
    }

    fn handle(events: Vec<Event>) -> Result<(), Failure> {
        for event in &events {
            let text = |value: &Option<String>| value.clone().unwrap_or_default();
            let op = match event.operation {
                Operation::Insert => "insert",
                Operation::Update => "update",
                Operation::Delete => "delete",
                Operation::Truncate => "truncate",
            };
            let fields = [
                ("id", event.id.clone()),
                ("txid", event.position.txid.to_string()),
                ("seq", event.position.seq.to_string()),
                ("op", op.to_owned()),
                ("schema", event.schema.clone()),
                ("table", event.table.clone()),
                ("key", text(&event.key)),
                ("new", text(&event.new_row)),
                ("attempt", event.attempt.to_string()),
            ]
            .map(|(name, value)| (name.to_owned(), value));
            host::log(Level::Info, "event", &fields);
        }
        Ok(())
    }
}

// Native linkers reject the component export names, so natively (clippy,
// `cargo build --workspace`) the export is left out, as the SDK does.
#[cfg(target_arch = "wasm32")]
#[allow(unsafe_code)]
const _: () = {
    bindings::export!(Legacy with_types_in bindings);
};

// Natively nothing exports the type; naming it keeps it from being reported
// as dead code.
#[cfg(not(target_arch = "wasm32"))]
const _: fn() -> Manifest = <Legacy as Guest>::describe;
