//! Messages for message buses (NATS, RabbitMQ, Redis, MQTT), recorded in the
//! transaction that acknowledges the batch.
//!
//! ```
//! use pgevents_plugin_sdk::publish::{self, Message, PublishError};
//! use pgevents_plugin_sdk::Event;
//!
//! /// Announces every event on `orders.changed`, keyed by the row's primary key.
//! fn announce(i: usize, event: &Event) -> Result<(), PublishError> {
//!     let mut message = Message::new("bus", "orders.changed")
//!         .payload(event.new_row.clone().unwrap_or_default())
//!         .header("event-id", &event.id);
//!     if let Some(key) = &event.key {
//!         message = message.key(key);
//!     }
//!     publish::send(i, &message)
//! }
//! # use pgevents_plugin_sdk::{Context, Operation, Position};
//! # let event = Event {
//! #     id: "e1".into(), position: Position { txid: 1, seq: 1 }, operation: Operation::Insert,
//! #     schema: "public".into(), table: "orders".into(), key: Some(r#"{"id":7}"#.into()),
//! #     new_row: Some(r#"{"id":7}"#.into()), old_row: None,
//! #     captured_at: "2025-01-01T00:00:00.000000Z".into(),
//! #     context: Context { user: "app".into(), application_name: String::new(), tag: None },
//! #     attempt: 1,
//! # };
//! announce(0, &event)?;
//!
//! // Natively there is no host: the message is recorded for the test to read.
//! let sent = publish::take_sent();
//! assert_eq!(sent[0].message.subject, "orders.changed");
//! assert_eq!(sent[0].message.key.as_deref(), Some(r#"{"id":7}"#));
//! # Ok::<(), PublishError>(())
//! ```
//!
//! - **Granted by the operator.** The operator names the sinks a plugin may
//!   publish to (`publish = ["bus"]` in the plugin's section of the host's
//!   config file) and configures each under `[sinks.NAME]`; [`send`] to any
//!   other sink fails. A plugin that never calls [`send`] does not import
//!   the `publish` interface, so it needs no grant.
//! - **Exactly once into the outbox.** [`send`] does not talk to the broker:
//!   the host records the message in its outbox, in the transaction that
//!   acknowledges its event. A message exists if and only if its event is
//!   acknowledged: when [`handle`](crate::Plugin::handle) returns a
//!   [`Failure`](crate::Failure) at `index`, the messages of that event and
//!   of every later one are dropped, and they are recorded once, from the
//!   delivery that succeeds. So publish for event `i` from the loop that
//!   handles event `i`, and a retry never doubles a message.
//! - **Then at least once to the broker**, in order: the host sends each
//!   message and deletes it once the broker acknowledged it. Every message
//!   carries a stable id (derived from its event and its place among that
//!   event's messages, the same on every send attempt) that brokers with
//!   deduplication (NATS JetStream's `Nats-Msg-Id`) use to drop a resend.
//!
//! Compiled for any other target than WebAssembly (a plugin's native unit
//! tests) there is no host: [`send`] records each message in a per-thread
//! list that [`sent`] and [`take_sent`] return (every test runs on its own
//! thread, so tests do not see each other's messages).

use std::cell::RefCell;
use std::fmt;

use serde::Serialize;

/// The largest payload the host accepts, in bytes (1 MiB): [`send`] of a
/// larger one fails (natively too).
///
/// ```
/// use pgevents_plugin_sdk::publish::{self, Message, MAX_PAYLOAD_BYTES};
///
/// let too_big = Message::new("bus", "blobs").payload(vec![0; MAX_PAYLOAD_BYTES + 1]);
/// assert!(publish::send(0, &too_big).is_err());
/// ```
pub const MAX_PAYLOAD_BYTES: usize = 1 << 20;

/// One message: the sink it goes to, where in the broker, an optional
/// ordering key, the payload and headers. Built with [`Message::new`].
///
/// ```
/// use pgevents_plugin_sdk::publish::Message;
///
/// let message = Message::new("rabbit", "emails.welcome")
///     .key("42")
///     .payload("Welcome!")
///     .header("lang", "en");
/// assert_eq!(message.sink, "rabbit");
/// assert_eq!(message.payload, b"Welcome!");
/// assert_eq!(message.headers, [("lang".to_string(), "en".to_string())]);
/// ```
pub use crate::bindings::pgevents::plugin::publish::Message;

impl Message {
    /// A message for the sink the operator named `sink`, to `subject`: a NATS
    /// subject, a RabbitMQ routing key, a Redis stream, an MQTT topic. No
    /// key, an empty payload, no headers.
    ///
    /// ```
    /// use pgevents_plugin_sdk::publish::Message;
    ///
    /// let message = Message::new("nats", "db.public.orders.insert");
    /// assert_eq!(message.subject, "db.public.orders.insert");
    /// assert_eq!(message.key, None);
    /// assert!(message.payload.is_empty() && message.headers.is_empty());
    /// ```
    pub fn new(sink: impl Into<String>, subject: impl Into<String>) -> Self {
        Self {
            sink: sink.into(),
            subject: subject.into(),
            key: None,
            payload: Vec::new(),
            headers: Vec::new(),
        }
    }

    /// Sets the ordering key: messages with the same key arrive in the order
    /// they were published (say, a row's primary key).
    ///
    /// ```
    /// use pgevents_plugin_sdk::publish::Message;
    ///
    /// let message = Message::new("bus", "orders").key(r#"{"id":7}"#);
    /// assert_eq!(message.key.as_deref(), Some(r#"{"id":7}"#));
    /// ```
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Sets the payload: bytes, or text as its UTF-8 bytes.
    ///
    /// ```
    /// use pgevents_plugin_sdk::publish::Message;
    ///
    /// assert_eq!(Message::new("bus", "a").payload(vec![1, 2]).payload, [1, 2]);
    /// assert_eq!(Message::new("bus", "a").payload("hi").payload, b"hi");
    /// ```
    pub fn payload(mut self, payload: impl Into<Vec<u8>>) -> Self {
        self.payload = payload.into();
        self
    }

    /// Sets the payload to `value` serialized as JSON.
    ///
    /// Fails only if `value` does not serialize (a map with non-string keys,
    /// say). Adds no header: set `content-type` with [`Message::header`] if
    /// the consumers want one.
    ///
    /// ```
    /// use pgevents_plugin_sdk::publish::Message;
    /// use serde_json::json;
    ///
    /// let message = Message::new("bus", "orders").json(&json!({"id": 7, "total": "42.00"}))?;
    /// assert_eq!(message.payload, br#"{"id":7,"total":"42.00"}"#);
    /// # Ok::<(), serde_json::Error>(())
    /// ```
    pub fn json<T: Serialize + ?Sized>(mut self, value: &T) -> Result<Self, serde_json::Error> {
        self.payload = serde_json::to_vec(value)?;
        Ok(self)
    }

    /// Adds a header; headers keep the order they were added in.
    ///
    /// ```
    /// use pgevents_plugin_sdk::publish::Message;
    ///
    /// let message = Message::new("bus", "orders").header("op", "insert").header("n", 0.to_string());
    /// assert_eq!(message.headers[1], ("n".to_string(), "0".to_string()));
    /// ```
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
}

/// Why [`send`] refused a message: the host's reason, such as a sink not
/// granted to the plugin, an index outside the batch, or a payload over
/// [`MAX_PAYLOAD_BYTES`].
///
/// Going on would acknowledge the event without its message, so the usual
/// answer is to fail the batch at that event with the error's text:
/// permanently, or with a retry to keep the event until the operator grants
/// the sink (a refusal does not pass by itself).
///
/// ```
/// use pgevents_plugin_sdk::publish::PublishError;
/// use pgevents_plugin_sdk::Failure;
///
/// let err = PublishError::new("sink `bus` is not granted to plugin `audit`");
/// let failure = Failure::permanent(3, err.to_string());
/// assert_eq!(failure.message, "sink `bus` is not granted to plugin `audit`");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishError {
    /// The host's description of the problem.
    pub message: String,
}

impl PublishError {
    /// An error with this message (for a plugin's own tests).
    ///
    /// ```
    /// use pgevents_plugin_sdk::publish::PublishError;
    ///
    /// assert_eq!(PublishError::new("too large").message, "too large");
    /// ```
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }
}

impl fmt::Display for PublishError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for PublishError {}

/// Publishes `message` for the event at `event_index` of the batch being
/// handled (its index in the `events` passed to
/// [`handle`](crate::Plugin::handle), as from `enumerate()`).
///
/// The message is recorded if and only if that event is acknowledged; see
/// the [module docs](self). Fails if the sink is not granted to the plugin,
/// `event_index` is not an index of the batch, or the payload is larger than
/// [`MAX_PAYLOAD_BYTES`].
///
/// ```
/// use pgevents_plugin_sdk::publish::{self, Message};
///
/// publish::send(0, &Message::new("bus", "greetings").payload("hello"))?;
/// assert_eq!(publish::sent().len(), 1);
/// # Ok::<(), publish::PublishError>(())
/// ```
pub fn send(event_index: usize, message: &Message) -> Result<(), PublishError> {
    imp::send(event_index, message)
}

/// Publishes `message` for the event
/// [`handle_event`](crate::Plugin::handle_event) (or a
/// [`handle_each`](crate::handle_each) loop) is handling: [`send`] with that
/// event's index. Fails when called outside such a handler.
///
/// ```
/// use pgevents_plugin_sdk::publish::{self, Message};
/// use pgevents_plugin_sdk::{handle_each, Event};
///
/// let events = vec![Event::insert("public.orders", serde_json::json!({"id": 1})); 2];
/// handle_each(&events, |_event| Ok(publish::emit(&Message::new("bus", "orders"))?))?;
/// let indices: Vec<usize> = publish::take_sent().iter().map(|s| s.event_index).collect();
/// assert_eq!(indices, [0, 1]);
///
/// assert!(publish::emit(&Message::new("bus", "orders")).is_err());
/// # Ok::<(), pgevents_plugin_sdk::Failure>(())
/// ```
pub fn emit(message: &Message) -> Result<(), PublishError> {
    let index = crate::each::current_index().ok_or_else(|| {
        PublishError::new(
            "publish::emit is called outside handle_event; use publish::send(index, message)",
        )
    })?;
    send(index, message)
}

/// A message [`send`] recorded in a native build, with the index of the
/// event it was published for.
///
/// ```
/// use pgevents_plugin_sdk::publish::{self, Message};
///
/// publish::send(2, &Message::new("bus", "orders"))?;
/// let sent = publish::take_sent();
/// assert_eq!((sent[0].event_index, sent[0].message.subject.as_str()), (2, "orders"));
/// # Ok::<(), publish::PublishError>(())
/// ```
#[derive(Debug, Clone)]
pub struct Sent {
    /// The `event_index` passed to [`send`].
    pub event_index: usize,
    /// The message, as passed to [`send`].
    pub message: Message,
}

thread_local! {
    static SENT: RefCell<Vec<Sent>> = const { RefCell::new(Vec::new()) };
}

/// The messages [`send`] recorded on this thread so far, oldest first.
///
/// Only native builds record: inside the host the messages go to the host's
/// outbox, and this is always empty.
///
/// ```
/// use pgevents_plugin_sdk::publish::{self, Message};
///
/// publish::send(0, &Message::new("bus", "a"))?;
/// publish::send(0, &Message::new("bus", "b"))?;
/// let subjects: Vec<String> = publish::sent().into_iter().map(|s| s.message.subject).collect();
/// assert_eq!(subjects, ["a", "b"]);
/// # Ok::<(), publish::PublishError>(())
/// ```
pub fn sent() -> Vec<Sent> {
    SENT.with_borrow(Vec::clone)
}

/// Like [`sent`], and forgets them: the next call returns only what was
/// sent after this one.
///
/// ```
/// use pgevents_plugin_sdk::publish::{self, Message};
///
/// publish::send(0, &Message::new("bus", "a"))?;
/// assert_eq!(publish::take_sent().len(), 1);
/// assert!(publish::take_sent().is_empty());
/// # Ok::<(), publish::PublishError>(())
/// ```
pub fn take_sent() -> Vec<Sent> {
    SENT.with_borrow_mut(std::mem::take)
}

#[cfg(target_arch = "wasm32")]
mod imp {
    use super::{Message, PublishError};

    pub(super) fn send(event_index: usize, message: &Message) -> Result<(), PublishError> {
        let event = crate::failure::wit_index(event_index);
        crate::bindings::pgevents::plugin::publish::send(event, message).map_err(PublishError::new)
    }
}

// The generated import is `unreachable!()` off wasm32; recording instead lets
// plugin authors unit-test what their handlers publish.
#[cfg(not(target_arch = "wasm32"))]
mod imp {
    use super::{MAX_PAYLOAD_BYTES, Message, PublishError, SENT, Sent};

    /// Inside the host the host checks the size; natively this stands in for it.
    pub(super) fn send(event_index: usize, message: &Message) -> Result<(), PublishError> {
        if message.payload.len() > MAX_PAYLOAD_BYTES {
            return Err(PublishError::new(format!(
                "the payload of a message to sink `{}` is {} bytes, more than the {MAX_PAYLOAD_BYTES} allowed",
                message.sink,
                message.payload.len()
            )));
        }
        SENT.with_borrow_mut(|sent| {
            sent.push(Sent {
                event_index,
                message: message.clone(),
            });
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builder_sets_every_field() {
        let message = Message::new("bus", "items")
            .key("k")
            .payload(&b"raw"[..])
            .header("op", "insert")
            .header("n", "0");
        assert_eq!(message.sink, "bus");
        assert_eq!(message.subject, "items");
        assert_eq!(message.key.as_deref(), Some("k"));
        assert_eq!(message.payload, b"raw");
        assert_eq!(
            message.headers,
            [
                ("op".to_string(), "insert".to_string()),
                ("n".to_string(), "0".to_string())
            ]
        );
        let json = message.json(&serde_json::json!([1, "two"])).unwrap();
        assert_eq!(json.payload, br#"[1,"two"]"#);
    }

    #[test]
    fn off_wasm_sends_are_recorded_in_order_per_thread() {
        send(0, &Message::new("bus", "first")).unwrap();
        send(3, &Message::new("bus", "second").key("7")).unwrap();
        let sent = sent();
        assert_eq!(sent.len(), 2);
        assert_eq!(
            (sent[0].event_index, sent[0].message.subject.as_str()),
            (0, "first")
        );
        assert_eq!(sent[1].event_index, 3);
        assert_eq!(sent[1].message.key.as_deref(), Some("7"));

        // Another thread (another test) sees none of them.
        assert!(std::thread::spawn(super::sent).join().unwrap().is_empty());

        assert_eq!(take_sent().len(), 2);
        assert!(super::sent().is_empty());
    }

    #[test]
    fn oversized_payloads_are_refused_and_not_recorded() {
        let exactly = Message::new("bus", "blob").payload(vec![0; MAX_PAYLOAD_BYTES]);
        send(0, &exactly).unwrap();
        let over = Message::new("bus", "blob").payload(vec![0; MAX_PAYLOAD_BYTES + 1]);
        let err = send(1, &over).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "the payload of a message to sink `bus` is {} bytes, more than the {MAX_PAYLOAD_BYTES} allowed",
                MAX_PAYLOAD_BYTES + 1
            )
        );
        assert_eq!(take_sent().len(), 1);
    }
}
