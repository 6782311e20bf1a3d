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
        let texts = message
            .headers
            .iter()
            .flat_map(|(k, v)| [k, v])
            .chain(message.key.iter());
        if texts.into_iter().any(|t| t.contains('\0')) {
            return Err("keys and headers must not contain NUL bytes".into());
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
