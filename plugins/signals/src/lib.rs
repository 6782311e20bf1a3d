//! The "signal table" of flask_signalbus: the application inserts a row into
//! `public.outgoing_signals` in the transaction that makes the change the
//! signal announces, and this plugin publishes the row as a message and
//! deletes it. Both the message and the delete commit with the event's
//! acknowledgement, so each signal is published once (the host's outbox then
//! delivers it to the broker at least once, with a stable message id) and
//! its row is gone. Needs the `sql` capability and a sink:
//!
//! ```toml
//! [sinks.rabbit]
//! kind = "rabbitmq"
//! url = "amqp://guest:guest@127.0.0.1:5672/%2f"
//!
//! [plugins.signals]
//! sql = { role = "signals_writer" }
//! publish = ["rabbit"]
//! ```
//!
//! See README.md for the table and the config values.

use pgevents_plugin_sdk::publish::{self, MAX_PAYLOAD_BYTES, Message};
use pgevents_plugin_sdk::sql;
use pgevents_plugin_sdk::{
    Event, Failure, Manifest, Operation, Plugin, Subscription, config, export_plugin, log,
};
use serde::Deserialize;
use serde_json::value::RawValue;

/// Events (signals) per call unless config `burst` says otherwise, as
/// a flask_signalbus model's `signalbus_burst_count`.
const DEFAULT_BURST: u32 = 100;

/// The host takes 1 to 10 000 events per call.
const MAX_BURST: u32 = 10_000;

const DELETE: &str = "DELETE FROM public.outgoing_signals WHERE id = $1";

/// A row of `public.outgoing_signals`.
#[derive(Debug, Deserialize)]
struct Signal {
    id: i64,
    subject: String,
    payload: Box<RawValue>,
}

/// The message for `signal`: to its subject (the routing key), keyed by its
/// id so signals stay in order per row id, the payload column as JSON text.
fn message(sink: &str, signal: &Signal) -> Message {
    let id = signal.id.to_string();
    Message::new(sink, &signal.subject)
        .key(&id)
        .payload(signal.payload.get())
        .header("signal-id", id)
}

/// The `burst` config value as a batch size, or why it is not one.
fn burst(value: Option<&str>) -> Result<u32, String> {
    let Some(text) = value else {
        return Ok(DEFAULT_BURST);
    };
    match text.trim().parse::<u32>() {
        Ok(n) if (1..=MAX_BURST).contains(&n) => Ok(n),
        _ => Err(format!(
            "config burst = {text:?} is not a number from 1 to {MAX_BURST}; using {DEFAULT_BURST}"
        )),
    }
}

struct Signals;

impl Plugin for Signals {
    fn manifest() -> Manifest {
        // The host answers config.get during describe, so the batch size can come from it.
        let batch_size = burst(config::get("burst").as_deref()).unwrap_or_else(|err| {
            log::warn(err);
            DEFAULT_BURST
        });
        Manifest::new("signals", "1.0.0")
            .subscribe(Subscription::to("public", "outgoing_signals").on(&[Operation::Insert]))
            .batch_size(batch_size)
    }

    fn handle(events: Vec<Event>) -> Result<(), Failure> {
        let sink = config::get_or("sink", "rabbit");
        for (i, event) in events.iter().enumerate() {
            // A row that does not decode never will: retrying cannot help.
            let signal: Signal = match event.new_row() {
                Ok(Some(signal)) => signal,
                Ok(None) => {
                    return Err(Failure::permanent(
                        i,
                        format!("event {}: insert without a new row", event.id),
                    ));
                }
                Err(err) => {
                    return Err(Failure::permanent(
                        i,
                        format!(
                            "event {}: row of public.outgoing_signals is not a signal \
                             (id bigint, subject text, payload jsonb): {err}",
                            event.id
                        ),
                    ));
                }
            };
            if signal.payload.get().len() > MAX_PAYLOAD_BYTES {
                return Err(Failure::permanent(
                    i,
                    format!(
                        "signal {}: payload of {} bytes is larger than a message may be ({MAX_PAYLOAD_BYTES})",
                        signal.id,
                        signal.payload.get().len()
                    ),
                ));
            }
            // Deleting first tells whether the row is still there: a row
            // already deleted (sent by another sender, or an event replayed
            // from the past) is not published again.
            let deleted = sql::execute(DELETE, &[signal.id.into()]).map_err(|err| {
                Failure::retry(i, format!("signal {}: deleting its row: {err}", signal.id))
            })?;
            if deleted == 0 {
                log::debug_with(
                    "signal row already gone; not publishing",
                    &[("signal_id", signal.id.to_string())],
                );
                continue;
            }
            // A refusal (a sink not granted, say) is the operator's to fix;
            // retrying keeps the signal until then.
            publish::send(i, &message(&sink, &signal)).map_err(|err| {
                Failure::retry(i, format!("signal {}: publishing: {err}", signal.id))
            })?;
        }
        Ok(())
    }
}

export_plugin!(Signals);

#[cfg(test)]
mod tests {
    use super::*;

    fn signal(json: &str) -> Signal {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn a_signal_becomes_a_message_with_its_payload_text() {
        let row = signal(r#"{"id":42,"subject":"user.created","payload":{"b": [1, 2], "a":null}}"#);
        let message = message("rabbit", &row);
        assert_eq!(message.sink, "rabbit");
        assert_eq!(message.subject, "user.created");
        assert_eq!(message.key.as_deref(), Some("42"));
        assert_eq!(message.payload, br#"{"b": [1, 2], "a":null}"#);
        assert_eq!(message.headers, [("signal-id".into(), "42".into())]);
    }

    #[test]
    fn rows_that_are_not_signals_do_not_decode() {
        let missing_subject = r#"{"id":1,"subject":null,"payload":{}}"#;
        assert!(serde_json::from_str::<Signal>(missing_subject).is_err());
        // A null payload column is a JSON null, and is sent as such.
        let null_payload = signal(r#"{"id":1,"subject":"s","payload":null}"#);
        assert_eq!(message("rabbit", &null_payload).payload, b"null");
    }

    #[test]
    fn burst_is_the_batch_size() {
        assert_eq!(burst(None), Ok(100));
        assert_eq!(burst(Some(" 25 ")), Ok(25));
        assert!(burst(Some("0")).is_err());
        assert!(burst(Some("10001")).is_err());
        assert!(burst(Some("many")).unwrap_err().contains("\"many\""));
    }
}
