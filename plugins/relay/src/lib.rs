//! Publishes every change to the tables the operator names to a message bus,
//! Debezium-style but with no code to write: each change goes to subject
//! `db.<schema>.<table>.<op>` as a JSON envelope, keyed by the row's primary
//! key. Needs a sink:
//!
//! ```toml
//! [sinks.nats]
//! kind = "nats"
//! url = "nats://127.0.0.1:4222"
//!
//! [plugins.relay]
//! publish = ["nats"]
//! config = { tables = "public.orders" }
//! ```
//!
//! See README.md for the envelope and the config values.

use pgevents_plugin_sdk::publish::{self, Message};
use pgevents_plugin_sdk::{Event, Failure, Manifest, Plugin, Subscription, config, export_plugin};
use serde::Serialize;
use serde_json::value::RawValue;

/// One change as consumers see it. Field order is the JSON's order.
#[derive(Debug, Serialize)]
struct Envelope<'a> {
    operation: &'a str,
    schema: &'a str,
    table: &'a str,
    /// Primary key, old and new row as JSON values (`null` when absent).
    key: Option<Box<RawValue>>,
    old: Option<Box<RawValue>>,
    new: Option<Box<RawValue>>,
    position: Position,
    context: Context<'a>,
    captured_at: &'a str,
    event_id: &'a str,
}

#[derive(Debug, Serialize)]
struct Position {
    txid: u64,
    seq: u64,
}

#[derive(Debug, Serialize)]
struct Context<'a> {
    user: &'a str,
    application_name: &'a str,
    tag: Option<&'a str>,
}

/// The subject `event` is published to: `db.<schema>.<table>.<op>`.
fn subject(event: &Event) -> String {
    format!(
        "db.{}.{}.{}",
        event.schema,
        event.table,
        event.operation.as_str()
    )
}

/// The JSON envelope of `event`. Fails only if the host sent a key or row
/// that is not JSON.
fn envelope(event: &Event) -> Result<Vec<u8>, serde_json::Error> {
    let json = |text: &Option<String>| {
        text.as_ref()
            .map(|t| RawValue::from_string(t.clone()))
            .transpose()
    };
    serde_json::to_vec(&Envelope {
        operation: event.operation.as_str(),
        schema: &event.schema,
        table: &event.table,
        key: json(&event.key)?,
        old: json(&event.old_row)?,
        new: json(&event.new_row)?,
        position: Position {
            txid: event.position.txid,
            seq: event.position.seq,
        },
        context: Context {
            user: &event.context.user,
            application_name: &event.context.application_name,
            tag: event.context.tag.as_deref(),
        },
        captured_at: &event.captured_at,
        event_id: &event.id,
    })
}

/// The tables in config `tables`: comma-separated `schema.table`, a name
/// without a schema in `public`.
fn tables(value: &str) -> Vec<(&str, &str)> {
    value
        .split(',')
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .map(|name| name.split_once('.').unwrap_or(("public", name)))
        .collect()
}

struct Relay;

impl Plugin for Relay {
    fn manifest() -> Manifest {
        let mut manifest = Manifest::new("relay", "1.0.0");
        // Before the host passes config (it asks first for the name), and if
        // `tables` is unset, this subscribes to nothing and the host says so.
        for (schema, table) in tables(&config::get_or("tables", "")) {
            manifest = manifest.subscribe(Subscription::to(schema, table));
        }
        manifest
    }

    fn handle(events: Vec<Event>) -> Result<(), Failure> {
        let sink = config::get_or("sink", "nats");
        for (i, event) in events.iter().enumerate() {
            let payload = envelope(event).map_err(|err| {
                Failure::permanent(i, format!("event {}: not JSON: {err}", event.id))
            })?;
            let mut message = Message::new(&sink, subject(event)).payload(payload);
            if let Some(key) = &event.key {
                message = message.key(key);
            }
            // A refusal (the sink not granted, say) is the operator's to fix:
            // retrying keeps the change until then.
            publish::send(i, &message).map_err(|err| {
                Failure::retry(i, format!("event {}: publishing: {err}", event.id))
            })?;
        }
        Ok(())
    }
}

export_plugin!(Relay);

#[cfg(test)]
mod tests {
    use pgevents_plugin_sdk::{Context, Operation, Position};
    use serde_json::{Value, json};

    use super::*;

    fn update() -> Event {
        Event {
            id: "0b9e3f4c-6a51-4a8e-9d59-5f1c2f7e8a10".into(),
            position: Position { txid: 812, seq: 5 },
            operation: Operation::Update,
            schema: "public".into(),
            table: "orders".into(),
            key: Some(r#"{"id":7}"#.into()),
            new_row: Some(r#"{"id":7,"status":"paid","total":"42.00"}"#.into()),
            old_row: Some(r#"{"id":7,"status":"new","total":"42.00"}"#.into()),
            captured_at: "2025-01-01T00:00:00.000001Z".into(),
            context: Context {
                user: "app".into(),
                application_name: "checkout".into(),
                tag: Some("payment".into()),
            },
            attempt: 1,
        }
    }

    #[test]
    fn the_envelope_embeds_rows_as_json_values() {
        let envelope: Value = serde_json::from_slice(&envelope(&update()).unwrap()).unwrap();
        assert_eq!(
            envelope,
            json!({
                "operation": "update",
                "schema": "public",
                "table": "orders",
                "key": {"id": 7},
                "old": {"id": 7, "status": "new", "total": "42.00"},
                "new": {"id": 7, "status": "paid", "total": "42.00"},
                "position": {"txid": 812, "seq": 5},
                "context": {"user": "app", "application_name": "checkout", "tag": "payment"},
                "captured_at": "2025-01-01T00:00:00.000001Z",
                "event_id": "0b9e3f4c-6a51-4a8e-9d59-5f1c2f7e8a10",
            })
        );
    }

    #[test]
    fn the_envelope_keeps_its_field_order_and_the_rows_text() {
        let text = String::from_utf8(envelope(&update()).unwrap()).unwrap();
        assert!(text.starts_with(
            r#"{"operation":"update","schema":"public","table":"orders","key":{"id":7},"old":{"id":7,"status":"new","#
        ));
        assert!(text.ends_with(r#""event_id":"0b9e3f4c-6a51-4a8e-9d59-5f1c2f7e8a10"}"#));
    }

    #[test]
    fn a_truncate_has_null_key_and_rows() {
        let mut event = update();
        event.operation = Operation::Truncate;
        (event.key, event.old_row, event.new_row) = (None, None, None);
        event.context.tag = None;
        let envelope: Value = serde_json::from_slice(&envelope(&event).unwrap()).unwrap();
        assert_eq!(envelope["operation"], "truncate");
        assert_eq!(
            (&envelope["key"], &envelope["old"], &envelope["new"]),
            (&Value::Null, &Value::Null, &Value::Null)
        );
        assert_eq!(envelope["context"]["tag"], Value::Null);
        assert_eq!(subject(&event), "db.public.orders.truncate");
    }

    #[test]
    fn a_row_that_is_not_json_is_an_error() {
        let mut event = update();
        event.new_row = Some("{not json".into());
        assert!(envelope(&event).is_err());
    }

    #[test]
    fn handle_publishes_each_change_to_its_subject_keyed_by_primary_key() {
        let mut delete = update();
        delete.operation = Operation::Delete;
        delete.new_row = None;
        Relay::handle(vec![update(), delete]).unwrap();
        let sent = publish::take_sent();
        let seen: Vec<(usize, &str, &str, Option<&str>)> = sent
            .iter()
            .map(|s| {
                (
                    s.event_index,
                    s.message.sink.as_str(),
                    s.message.subject.as_str(),
                    s.message.key.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            seen,
            [
                (0, "nats", "db.public.orders.update", Some(r#"{"id":7}"#)),
                (1, "nats", "db.public.orders.delete", Some(r#"{"id":7}"#)),
            ]
        );
        let payload: Value = serde_json::from_slice(&sent[1].message.payload).unwrap();
        assert_eq!(payload["new"], Value::Null);
    }

    #[test]
    fn tables_are_in_public_unless_qualified() {
        assert_eq!(
            tables(" public.orders, items ,audit.log,"),
            [("public", "orders"), ("public", "items"), ("audit", "log")]
        );
        assert!(tables("").is_empty());
    }
}
