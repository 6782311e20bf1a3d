//! The `publish` capability: a plugin's messages for the operator's sinks.
//! During a call they are only collected; the deliverer records those of the
//! events it acknowledges in the outbox, in the acknowledgement's transaction
//! (see `deliver/batch.rs`), and the flusher sends them (see `outbox/`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::runtime::bindings::pgevents::plugin::publish;

/// Largest payload of one message.
pub const MAX_PAYLOAD_BYTES: usize = 1 << 20;
/// Most messages one call may publish.
pub const MAX_MESSAGES_PER_CALL: usize = 100_000;
/// Most bytes (payloads, subjects, keys, headers) one call may publish: the
/// host holds them until the batch is acknowledged.
pub const MAX_BYTES_PER_CALL: usize = 64 << 20;
/// Longest subject, key, header name or value.
pub const MAX_TEXT_BYTES: usize = 4096;
/// Most headers per message.
pub const MAX_HEADERS: usize = 64;

/// A message a plugin published, for the event at `event` in its batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// Index in the batch of the event it was published for.
    pub event: usize,
    /// Stable id: from the event's id and the message's number among the
    /// event's messages, so the same on every delivery of the event.
    pub id: uuid::Uuid,
    pub sink: String,
    pub subject: String,
    pub key: Option<String>,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, String)>,
}

/// The messages of one call, collected for the deliverer.
#[derive(Debug, Default)]
pub struct Outbox {
    messages: Mutex<Vec<Published>>,
}

impl Outbox {
    /// The messages published, in order.
    pub fn take(&self) -> Vec<Published> {
        std::mem::take(&mut *self.messages.lock().expect("outbox lock"))
    }
}

/// The message id of message number `n` that `plugin` published for the
/// event `event_id` (two plugins publishing for one event make two messages).
pub fn message_id(plugin: &str, event_id: uuid::Uuid, n: u32) -> uuid::Uuid {
    const NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x9a3c_27e4_5b1d_4c8e_a6f0_3d2b_8e71_c405);
    let mut name = Vec::with_capacity(20 + plugin.len());
    name.extend_from_slice(event_id.as_bytes());
    name.extend_from_slice(&n.to_be_bytes());
    name.extend_from_slice(plugin.as_bytes());
    uuid::Uuid::new_v5(&NAMESPACE, &name)
}

/// A call's part of the `publish` capability.
pub(in crate::runtime) struct PublishCtx {
    pub(in crate::runtime) plugin: String,
    /// The sinks granted (`publish = [...]`); `None`: not granted.
    pub(in crate::runtime) granted: Option<Vec<String>>,
    /// The batch's event ids, by index.
    pub(in crate::runtime) events: Vec<uuid::Uuid>,
    /// Messages so far per event.
    pub(in crate::runtime) counts: HashMap<usize, u32>,
    /// Bytes published so far in this call.
    pub(in crate::runtime) bytes: usize,
    pub(in crate::runtime) outbox: Option<Arc<Outbox>>,
    /// Set when the call was abandoned: nothing more is collected.
    pub(in crate::runtime) abandoned: Arc<AtomicBool>,
}

impl publish::Host for PublishCtx {
    fn send(&mut self, event: u32, message: publish::Message) -> Result<(), String> {
        let Some(granted) = &self.granted else {
            return Err("this plugin may not publish: the operator grants it with \
                        `publish = [\"SINK\"]` in its section of the host's config file"
                .into());
        };
        if !granted.contains(&message.sink) {
            return Err(format!(
                "sink `{}` is not granted to this plugin (granted: {})",
                message.sink,
                if granted.is_empty() {
                    "none".to_owned()
                } else {
                    granted.join(", ")
                }
            ));
        }
        let index = event as usize;
        let Some(event_id) = self.events.get(index).copied() else {
            return Err(format!(
                "event {event} is not in the batch ({} events)",
                self.events.len()
            ));
        };
        if message.payload.len() > MAX_PAYLOAD_BYTES {
            return Err(format!(
                "the payload is {} bytes, more than the {} a message may have",
                message.payload.len(),
                MAX_PAYLOAD_BYTES
            ));
        }
        if message.subject.is_empty() || message.subject.contains('\0') {
            return Err("the subject must be non-empty text without NUL bytes".into());
        }
        // `$...` subjects and topics are the brokers' own (NATS `$JS.API`,
        // MQTT `$SYS`): a plugin must not reach a broker's administration.
        if message.subject.starts_with('$') {
            return Err(format!(
                "subject `{}` starts with `$`: such subjects are the broker's own",
                message.subject.chars().take(80).collect::<String>()
            ));
        }
        let texts = || {
            std::iter::once(&message.subject)
                .chain(message.key.iter())
                .chain(message.headers.iter().flat_map(|(k, v)| [k, v]))
        };
        if texts().any(|t| t.contains('\0')) {
            return Err("keys and headers must not contain NUL bytes".into());
        }
        if let Some(long) = texts().find(|t| t.len() > MAX_TEXT_BYTES) {
            return Err(format!(
                "a subject, key or header of {} bytes: at most {MAX_TEXT_BYTES}",
                long.len()
            ));
        }
        if message.headers.len() > MAX_HEADERS {
            return Err(format!(
                "{} headers: a message may have at most {MAX_HEADERS}",
                message.headers.len()
            ));
        }
        let size = message.payload.len() + texts().map(String::len).sum::<usize>();
        if self.bytes + size > MAX_BYTES_PER_CALL {
            return Err(format!(
                "a call may publish at most {} MiB in all",
                MAX_BYTES_PER_CALL >> 20
            ));
        }
        if self.abandoned.load(Ordering::SeqCst) {
            return Err("the call was abandoned (time limit)".into());
        }
        let Some(outbox) = &self.outbox else {
            return Err("publishing is not available in this call".into());
        };
        let mut messages = outbox.messages.lock().expect("outbox lock");
        if messages.len() >= MAX_MESSAGES_PER_CALL {
            return Err(format!(
                "a call may publish at most {MAX_MESSAGES_PER_CALL} messages"
            ));
        }
        self.bytes += size;
        let n = self.counts.entry(index).or_default();
        let id = message_id(&self.plugin, event_id, *n);
        *n += 1;
        messages.push(Published {
            event: index,
            id,
            sink: message.sink,
            subject: message.subject,
            key: message.key,
            payload: message.payload,
            headers: message.headers,
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> PublishCtx {
        PublishCtx {
            plugin: "p".into(),
            granted: Some(vec!["bus".into()]),
            events: vec![uuid::Uuid::from_u128(1)],
            counts: HashMap::new(),
            bytes: 0,
            outbox: Some(Arc::new(Outbox::default())),
            abandoned: Arc::new(AtomicBool::new(false)),
        }
    }

    fn message(sink: &str, subject: &str, payload: usize) -> publish::Message {
        publish::Message {
            sink: sink.into(),
            subject: subject.into(),
            key: None,
            payload: vec![b'x'; payload],
            headers: vec![],
        }
    }

    #[test]
    fn hostile_messages_are_refused_with_the_reason() {
        use publish::Host;
        let mut c = ctx();
        assert!(c.send(0, message("bus", "ok", 10)).is_ok());
        let cases = [
            (0, message("other", "ok", 1), "not granted"),
            (1, message("bus", "ok", 1), "not in the batch"),
            (
                0,
                message("bus", "$JS.API.STREAM.DELETE.s", 1),
                "broker's own",
            ),
            (0, message("bus", "a\0b", 1), "NUL"),
            (0, message("bus", &"s".repeat(5000), 1), "at most 4096"),
            (0, message("bus", "ok", MAX_PAYLOAD_BYTES + 1), "more than"),
        ];
        for (event, m, why) in cases {
            let err = c.send(event, m).unwrap_err();
            assert!(err.contains(why), "{why}: {err}");
        }
        // The per-call budget: 64 messages of 1 MiB fit, the 65th does not.
        let mut c = ctx();
        for _ in 0..63 {
            c.send(0, message("bus", "ok", MAX_PAYLOAD_BYTES)).unwrap();
        }
        let err = loop {
            if let Err(e) = c.send(0, message("bus", "ok", MAX_PAYLOAD_BYTES)) {
                break e;
            }
        };
        assert!(err.contains("in all"), "{err}");
        let kept = c.outbox.as_ref().unwrap().take();
        assert!(kept.len() <= 64 && kept.len() >= 63, "{}", kept.len());
        assert_eq!(kept[1].id, message_id("p", uuid::Uuid::from_u128(1), 1));
    }

    #[test]
    fn message_ids_are_stable_and_distinct() {
        let e = uuid::Uuid::from_u128(7);
        assert_eq!(message_id("p", e, 0), message_id("p", e, 0));
        assert_ne!(message_id("p", e, 0), message_id("p", e, 1));
        assert_ne!(
            message_id("p", e, 0),
            message_id("p", uuid::Uuid::from_u128(8), 0)
        );
        assert_ne!(message_id("p", e, 0), message_id("q", e, 0));
    }
}
