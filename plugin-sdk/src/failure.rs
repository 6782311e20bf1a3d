//! Constructors for [`Failure`].

use crate::{Disposition, Failure};

/// A batch index as WIT's `u32`. Batches hold at most 10 000 events, so this
/// never saturates in practice.
pub(crate) fn wit_index(index: usize) -> u32 {
    u32::try_from(index).unwrap_or(u32::MAX)
}

impl Failure {
    /// The event at `index` failed for a passing reason: deliver it (and
    /// everything after it) again on the host's backoff schedule.
    ///
    /// Events before `index` are acknowledged. `index` is the position in the
    /// batch passed to [`handle`](crate::Plugin::handle), as from `enumerate()`.
    ///
    /// ```
    /// use pgevents_plugin_sdk::{Disposition, Failure};
    ///
    /// let failure = Failure::retry(2, "mail server busy");
    /// assert!(matches!(failure.disposition, Disposition::Retry(None)));
    /// ```
    pub fn retry(index: usize, message: impl Into<String>) -> Self {
        Self {
            index: wit_index(index),
            disposition: Disposition::Retry(None),
            message: message.into(),
        }
    }

    /// Like [`Failure::retry`], but asks the host to wait `delay_ms`
    /// milliseconds first (say, what a rate limiter's `Retry-After` said).
    ///
    /// ```
    /// use pgevents_plugin_sdk::{Disposition, Failure};
    ///
    /// let failure = Failure::retry_after(0, 30_000, "rate limited");
    /// assert!(matches!(failure.disposition, Disposition::Retry(Some(30_000))));
    /// ```
    pub fn retry_after(index: usize, delay_ms: u64, message: impl Into<String>) -> Self {
        Self {
            index: wit_index(index),
            disposition: Disposition::Retry(Some(delay_ms)),
            message: message.into(),
        }
    }

    /// The event at `index` can never succeed (bad data, a bug): the host
    /// does not retry it.
    ///
    /// Events before `index` are acknowledged.
    ///
    /// ```
    /// use pgevents_plugin_sdk::{Disposition, Failure};
    ///
    /// let failure = Failure::permanent(0, "row has no email column");
    /// assert!(matches!(failure.disposition, Disposition::Permanent));
    /// assert_eq!(failure.message, "row has no email column");
    /// ```
    pub fn permanent(index: usize, message: impl Into<String>) -> Self {
        Self {
            index: wit_index(index),
            disposition: Disposition::Permanent,
            message: message.into(),
        }
    }
}
