//! One event at a time: [`EventError`] and [`handle_each`], which
//! [`Plugin::handle_event`](crate::Plugin::handle_event) is built on.

use std::cell::Cell;
use std::fmt;

use crate::failure::wit_index;
use crate::http::HttpError;
use crate::publish::PublishError;
use crate::sql::{ColumnError, QueryError, SqlError};
use crate::{Disposition, Event, Failure};

/// Why one event failed, returned from
/// [`Plugin::handle_event`](crate::Plugin::handle_event): a [`Failure`]
/// without its batch index, which the SDK fills in.
///
/// `?` converts the SDK's own errors, choosing the disposition a handler
/// would almost always choose:
///
/// | error | disposition |
/// |---|---|
/// | a row that does not decode (`serde_json::Error`), a [`ColumnError`] | permanent |
/// | a [`SqlError`] of a passing kind: SQLSTATE class `08` (connection), `40` (serialization failure, deadlock), `53` (out of resources), `57` (cancelled, shutting down), `58` (system error; `58000` the host side), `XX` (internal error), `55P03` (lock not available) | retry |
/// | any other [`SqlError`] (a constraint, a privilege, a missing table) | permanent |
/// | an [`HttpError`] (the network, the host's allow-list) | retry; a URL that does not parse is permanent |
/// | a [`PublishError`] (a sink not granted, too large a message) | retry, so the operator can fix the grant |
///
/// Where that is not what you mean, build the error yourself:
///
/// ```
/// use pgevents_plugin_sdk::{Disposition, EventError};
///
/// let err = EventError::retry_after(30_000, "rate limited");
/// assert!(matches!(err.disposition, Disposition::Retry(Some(30_000))));
/// assert_eq!(err.at(4).index, 4);
/// ```
#[derive(Debug, Clone)]
pub struct EventError {
    /// What the host should do with the event.
    pub disposition: Disposition,
    /// Why, in the words the dead letter and `status` show.
    pub message: String,
}

impl EventError {
    /// A passing problem: deliver the event again on the host's backoff schedule.
    ///
    /// ```
    /// use pgevents_plugin_sdk::{Disposition, EventError};
    ///
    /// assert!(matches!(EventError::retry("busy").disposition, Disposition::Retry(None)));
    /// ```
    pub fn retry(message: impl Into<String>) -> Self {
        Self::new(Disposition::Retry(None), message)
    }

    /// Like [`EventError::retry`], after `delay_ms` milliseconds.
    ///
    /// ```
    /// use pgevents_plugin_sdk::{Disposition, EventError};
    ///
    /// let err = EventError::retry_after(500, "busy");
    /// assert!(matches!(err.disposition, Disposition::Retry(Some(500))));
    /// ```
    pub fn retry_after(delay_ms: u64, message: impl Into<String>) -> Self {
        Self::new(Disposition::Retry(Some(delay_ms)), message)
    }

    /// The event can never succeed (bad data, a bug): do not retry it.
    ///
    /// ```
    /// use pgevents_plugin_sdk::{Disposition, EventError};
    ///
    /// assert!(matches!(EventError::permanent("no email").disposition, Disposition::Permanent));
    /// ```
    pub fn permanent(message: impl Into<String>) -> Self {
        Self::new(Disposition::Permanent, message)
    }

    fn new(disposition: Disposition, message: impl Into<String>) -> Self {
        Self {
            disposition,
            message: message.into(),
        }
    }

    /// The same error with `context: ` before its message.
    ///
    /// ```
    /// use pgevents_plugin_sdk::EventError;
    ///
    /// let err = EventError::retry("timed out").context("order 7");
    /// assert_eq!(err.message, "order 7: timed out");
    /// ```
    pub fn context(mut self, context: impl fmt::Display) -> Self {
        self.message = format!("{context}: {}", self.message);
        self
    }

    /// The [`Failure`] of a batch whose event at `index` failed so.
    ///
    /// ```
    /// use pgevents_plugin_sdk::EventError;
    ///
    /// let failure = EventError::permanent("bad row").at(2);
    /// assert_eq!((failure.index, failure.message.as_str()), (2, "bad row"));
    /// ```
    pub fn at(self, index: usize) -> Failure {
        Failure {
            index: wit_index(index),
            disposition: self.disposition,
            message: self.message,
        }
    }
}

impl fmt::Display for EventError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for EventError {}

impl From<serde_json::Error> for EventError {
    fn from(err: serde_json::Error) -> Self {
        Self::permanent(format!("the row does not decode: {err}"))
    }
}

impl From<ColumnError> for EventError {
    fn from(err: ColumnError) -> Self {
        Self::permanent(err.to_string())
    }
}

impl From<SqlError> for EventError {
    fn from(err: SqlError) -> Self {
        if err.is_transient() {
            Self::retry(err.to_string())
        } else {
            Self::permanent(err.to_string())
        }
    }
}

impl From<QueryError> for EventError {
    fn from(err: QueryError) -> Self {
        match err {
            QueryError::Sql(err) => err.into(),
            decode @ QueryError::Decode { .. } => Self::permanent(decode.to_string()),
        }
    }
}

impl From<HttpError> for EventError {
    fn from(err: HttpError) -> Self {
        if err.is_invalid_request() {
            Self::permanent(err.to_string())
        } else {
            Self::retry(err.to_string())
        }
    }
}

impl From<PublishError> for EventError {
    fn from(err: PublishError) -> Self {
        Self::retry(format!("publishing: {err}"))
    }
}

thread_local! {
    /// The batch index of the event [`handle_each`] is handling, for
    /// [`publish::emit`](crate::publish::emit).
    static CURRENT: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The index of the event being handled by [`handle_each`], if any.
pub(crate) fn current_index() -> Option<usize> {
    CURRENT.get()
}

/// Runs `handler` on each event in order and stops at the first error,
/// returning it as the batch's [`Failure`] at that event's index: the events
/// before it are acknowledged, it and the rest are handed back to the host.
///
/// [`Plugin::handle`](crate::Plugin::handle) does this with
/// [`Plugin::handle_event`](crate::Plugin::handle_event) by default; call it
/// yourself to do something before or after the loop.
///
/// ```
/// use pgevents_plugin_sdk::{handle_each, Event, EventError};
///
/// let events = vec![
///     Event::insert("public.items", serde_json::json!({"id": 1})),
///     Event::insert("public.items", serde_json::json!({"id": -2})),
///     Event::insert("public.items", serde_json::json!({"id": 3})),
/// ];
/// let failure = handle_each(&events, |event| {
///     let id: i64 = event.new_row::<serde_json::Value>()?.unwrap()["id"].as_i64().unwrap();
///     if id < 0 {
///         return Err(EventError::permanent(format!("negative id {id}")));
///     }
///     Ok(())
/// })
/// .unwrap_err();
/// assert_eq!((failure.index, failure.message.as_str()), (1, "negative id -2"));
/// ```
pub fn handle_each(
    events: &[Event],
    mut handler: impl FnMut(&Event) -> Result<(), EventError>,
) -> Result<(), Failure> {
    /// Clears the current index however the loop ends (a panic unwinds natively).
    struct Reset(Option<usize>);
    impl Drop for Reset {
        fn drop(&mut self) {
            CURRENT.set(self.0);
        }
    }
    let _reset = Reset(CURRENT.get());
    for (index, event) in events.iter().enumerate() {
        CURRENT.set(Some(index));
        handler(event).map_err(|err| err.at(index))?;
    }
    Ok(())
}
