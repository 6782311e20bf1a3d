//! Test plugin: copies every event of the tables its `tables` config value
//! names (comma-separated `schema.table`, default `public.items`) into
//! `public.delivered`, through the host's `sql` interface, so that the rows
//! of `delivered` in insertion order are exactly what the host delivered,
//! once each in effect:
//!
//! ```sql
//! CREATE TABLE public.delivered (n bigserial, event_id uuid, txid bigint, seq bigint,
//!     op text, tbl text, pk jsonb, new_row jsonb, old_row jsonb);
//! ```
//!
//! Its batch size is the `batch` config value (default 37, so that batches
//! end in the middle of transactions).

use pgevents_plugin_sdk::sql::{self, Value};
use pgevents_plugin_sdk::{
    Event, Failure, Manifest, Operation, Plugin, Subscription, config, export_plugin,
};

const INSERT: &str = "INSERT INTO public.delivered (event_id, txid, seq, op, tbl, pk, new_row, old_row) \
                      VALUES ($1::uuid, $2, $3, $4, $5, $6::jsonb, $7::jsonb, $8::jsonb)";

struct Mirror;

impl Plugin for Mirror {
    fn manifest() -> Manifest {
        let batch = config::get_or("batch", "37").parse().unwrap_or(37);
        let mut manifest = Manifest::new("mirror", "1.0.0").batch_size(batch);
        for name in config::get_or("tables", "public.items").split(',') {
            let (schema, table) = name.trim().split_once('.').unwrap_or(("public", name));
            manifest = manifest.subscribe(Subscription::to(schema, table).on(&[
                Operation::Insert,
                Operation::Update,
                Operation::Delete,
                Operation::Truncate,
            ]));
        }
        manifest
    }

    fn handle(events: Vec<Event>) -> Result<(), Failure> {
        for (i, event) in events.iter().enumerate() {
            let text = |v: &Option<String>| match v {
                Some(s) => Value::Text(s.clone()),
                None => Value::Null,
            };
            let params = [
                event.id.as_str().into(),
                Value::Int(event.position.txid as i64),
                Value::Int(event.position.seq as i64),
                event.operation.as_str().into(),
                format!("{}.{}", event.schema, event.table).into(),
                text(&event.key),
                text(&event.new_row),
                text(&event.old_row),
            ];
            sql::execute(INSERT, &params)
                .map_err(|err| Failure::retry(i, format!("insert into delivered failed: {err}")))?;
        }
        Ok(())
    }
}

export_plugin!(Mirror);
