//! Forwards each event as a JSON `POST` to a URL the operator configures,
//! what Hasura event triggers do. Needs the `http` capability:
//!
//! ```toml
//! [plugins.webhook]
//! http = { allow = ["hooks.example.com"] }
//! config = { url = "https://hooks.example.com/rows", tables = "public.orders,public.user_accounts" }
//! ```
//!
//! A 2xx answer acknowledges the event. 408, 429, 5xx and network errors are
//! retried (after `Retry-After` seconds if the receiver sent it); any other
//! answer is permanent. Each request carries the event's id as its
//! `Idempotency-Key`, the same on every attempt, so the receiver can drop
//! the duplicate a retry after a lost answer would bring.

use pgevents_plugin_sdk::{
    Event, EventError, Manifest, Operation, Plugin, Subscription, config, export_plugin, http, log,
};
use serde_json::{Value, json};

/// Events per call: each is one request, so keep a call well inside its time limit.
const BATCH_SIZE: u32 = 10;

struct Webhook;

impl Plugin for Webhook {
    fn manifest() -> Manifest {
        let mut manifest = Manifest::new("webhook", "1.0.0").batch_size(BATCH_SIZE);
        // Before the host passes config (it asks first for the name), and if
        // `tables` is unset, this subscribes to nothing and the host says so.
        for table in config::get_or("tables", "").split(',').map(str::trim) {
            if let Some((schema, table)) = table.split_once('.') {
                manifest = manifest.subscribe(Subscription::to(schema, table).on(&Operation::ALL));
            }
        }
        manifest
    }

    fn handle_event(event: &Event) -> Result<(), EventError> {
        let url = config::get("url").ok_or_else(|| {
            EventError::permanent(
                "no `url` configured: set config = { url = \"https://...\" } in [plugins.webhook]",
            )
        })?;
        deliver(&url, event)
    }
}

/// POSTs `event` to `url`.
fn deliver(url: &str, event: &Event) -> Result<(), EventError> {
    let context = |err: EventError| err.context(format!("event {}", event.id));
    let response = http::post(url)
        .header("idempotency-key", &event.id)
        .header("user-agent", "pgevents-webhook/1.0")
        .json(&payload(event))?
        .send()
        .map_err(|e| context(e.into()))?
        .check()
        .map_err(context)?;
    log::debug(format!(
        "event {} delivered ({})",
        event.id, response.status
    ));
    Ok(())
}

/// The event as the receiver sees it; rows are embedded as JSON objects.
fn payload(event: &Event) -> Value {
    let row = |text: &Option<String>| {
        text.as_deref()
            .map(|t| serde_json::from_str(t).unwrap_or(Value::String(t.to_owned())))
            .unwrap_or(Value::Null)
    };
    json!({
        "id": event.id,
        "operation": event.operation.as_str(),
        "schema": event.schema,
        "table": event.table,
        "key": row(&event.key),
        "new_row": row(&event.new_row),
        "old_row": row(&event.old_row),
        "captured_at": event.captured_at,
        "position": { "txid": event.position.txid, "seq": event.position.seq },
        "context": {
            "user": event.context.user,
            "application_name": event.context.application_name,
            "tag": event.context.tag,
        },
        "attempt": event.attempt,
    })
}

export_plugin!(Webhook);

#[cfg(test)]
mod tests {
    use super::*;
    use pgevents_plugin_sdk::Disposition;

    #[test]
    fn an_event_is_posted_with_its_id_as_idempotency_key_and_its_rows_embedded() {
        let event = Event::update("public.items", json!({"qty": 2}), json!({"qty": 3}))
            .with_key(json!({"id": 7}));
        let id = event.id.clone();
        http::respond_with(move |request| {
            assert_eq!((request.method(), request.url()), ("POST", "http://h/hook"));
            assert_eq!(request.header_value("idempotency-key"), Some(id.as_str()));
            assert_eq!(
                request.header_value("content-type"),
                Some("application/json")
            );
            let body: Value = serde_json::from_slice(request.body_bytes()).unwrap();
            assert_eq!(
                (
                    body["old_row"]["qty"].clone(),
                    body["new_row"]["qty"].clone()
                ),
                (json!(2), json!(3))
            );
            assert_eq!(body["key"]["id"], 7);
            Ok(http::Response::new(204))
        });
        deliver("http://h/hook", &event).unwrap();
    }

    #[test]
    fn refusals_name_the_event_and_are_retried_or_permanent_by_status() {
        let event = Event::delete("public.items", json!({"id": 1}));
        http::respond_with(|_| Ok(http::Response::new(429).with_header("retry-after", "2")));
        let err = deliver("http://h/hook", &event).unwrap_err();
        assert_eq!(
            err.message,
            format!("event {}: POST http://h/hook answered 429", event.id)
        );
        assert!(matches!(err.disposition, Disposition::Retry(Some(2000))));

        http::respond_with(|_| Ok(http::Response::new(400)));
        let err = deliver("http://h/hook", &event).unwrap_err();
        assert!(
            err.message.ends_with("answered 400; not retrying"),
            "{}",
            err.message
        );
        assert!(matches!(err.disposition, Disposition::Permanent));

        http::respond_with(|_| Err(http::HttpError::denied()));
        let err = deliver("http://h/hook", &event).unwrap_err();
        assert!(
            err.message.contains("the host denied the request"),
            "{}",
            err.message
        );
        assert!(matches!(err.disposition, Disposition::Retry(None)));

        let err = deliver("ftp://h/", &event).unwrap_err();
        assert!(
            matches!(err.disposition, Disposition::Permanent),
            "{}",
            err.message
        );
    }
}
