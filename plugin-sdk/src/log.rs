//! Structured logging through the host.
//!
//! Each line goes to the host's log, tagged with the plugin's name. The
//! `*_with` variants attach `(key, value)` fields; any string-like types work.
//!
//! ```
//! use pgevents_plugin_sdk::log;
//!
//! log::info("batch done");
//! log::warn_with("slow mail server", &[("elapsed_ms", "1200")]);
//! log::info_with(format!("Welcome, {}!", "Ada"), &[("user_id", 7.to_string())]);
//! ```
//!
//! Outside WebAssembly (a plugin's native unit tests) there is no host, so
//! lines are written to standard error instead.

/// How severe a log line is, from `Trace` to `Error`.
///
/// ```
/// use pgevents_plugin_sdk::log::{self, Level};
///
/// log::log(Level::Debug, "cache miss", &[("table", "orders")]);
/// ```
pub use crate::bindings::pgevents::plugin::host::Level;

/// Logs `message` at `level` with structured `fields`.
///
/// ```
/// use pgevents_plugin_sdk::log::{self, Level};
///
/// let fields = vec![("order_id".to_string(), "42".to_string())];
/// log::log(Level::Info, "order shipped", &fields);
/// ```
pub fn log<K: AsRef<str>, V: AsRef<str>>(
    level: Level,
    message: impl AsRef<str>,
    fields: &[(K, V)],
) {
    let message = message.as_ref();
    // The generated import takes owned pairs; log lines are rare enough not to mind.
    let fields: Vec<(String, String)> = fields
        .iter()
        .map(|(k, v)| (k.as_ref().to_owned(), v.as_ref().to_owned()))
        .collect();
    emit(level, message, &fields);
}

#[cfg(target_arch = "wasm32")]
fn emit(level: Level, message: &str, fields: &[(String, String)]) {
    crate::bindings::pgevents::plugin::host::log(level, message, fields);
}

// The generated import is `unreachable!()` off wasm32; printing instead lets
// plugin authors unit-test handlers natively.
#[cfg(not(target_arch = "wasm32"))]
fn emit(level: Level, message: &str, fields: &[(String, String)]) {
    use std::fmt::Write;

    let mut line = format!("[{level:?}] {message}");
    for (key, value) in fields {
        let _ = write!(line, " {key}={value:?}");
    }
    eprintln!("{line}");
}

/// Logs `message` at [`Level::Trace`].
///
/// ```
/// pgevents_plugin_sdk::log::trace("entering handle");
/// ```
pub fn trace(message: impl AsRef<str>) {
    log::<&str, &str>(Level::Trace, message, &[]);
}

/// Logs `message` at [`Level::Debug`].
///
/// ```
/// pgevents_plugin_sdk::log::debug("row decoded");
/// ```
pub fn debug(message: impl AsRef<str>) {
    log::<&str, &str>(Level::Debug, message, &[]);
}

/// Logs `message` at [`Level::Info`].
///
/// ```
/// pgevents_plugin_sdk::log::info("batch done");
/// ```
pub fn info(message: impl AsRef<str>) {
    log::<&str, &str>(Level::Info, message, &[]);
}

/// Logs `message` at [`Level::Warn`].
///
/// ```
/// pgevents_plugin_sdk::log::warn("row has no email; skipped");
/// ```
pub fn warn(message: impl AsRef<str>) {
    log::<&str, &str>(Level::Warn, message, &[]);
}

/// Logs `message` at [`Level::Error`].
///
/// ```
/// pgevents_plugin_sdk::log::error("mail server rejected the message");
/// ```
pub fn error(message: impl AsRef<str>) {
    log::<&str, &str>(Level::Error, message, &[]);
}

/// Logs `message` at [`Level::Trace`] with `fields`.
///
/// ```
/// pgevents_plugin_sdk::log::trace_with("event", &[("id", "e1")]);
/// ```
pub fn trace_with<K: AsRef<str>, V: AsRef<str>>(message: impl AsRef<str>, fields: &[(K, V)]) {
    log(Level::Trace, message, fields);
}

/// Logs `message` at [`Level::Debug`] with `fields`.
///
/// ```
/// pgevents_plugin_sdk::log::debug_with("decoded", &[("table", "orders")]);
/// ```
pub fn debug_with<K: AsRef<str>, V: AsRef<str>>(message: impl AsRef<str>, fields: &[(K, V)]) {
    log(Level::Debug, message, fields);
}

/// Logs `message` at [`Level::Info`] with `fields`.
///
/// ```
/// pgevents_plugin_sdk::log::info_with("Welcome, Ada!", &[("user_id", 7.to_string())]);
/// ```
pub fn info_with<K: AsRef<str>, V: AsRef<str>>(message: impl AsRef<str>, fields: &[(K, V)]) {
    log(Level::Info, message, fields);
}

/// Logs `message` at [`Level::Warn`] with `fields`.
///
/// ```
/// pgevents_plugin_sdk::log::warn_with("slow", &[("elapsed_ms", "1200")]);
/// ```
pub fn warn_with<K: AsRef<str>, V: AsRef<str>>(message: impl AsRef<str>, fields: &[(K, V)]) {
    log(Level::Warn, message, fields);
}

/// Logs `message` at [`Level::Error`] with `fields`.
///
/// ```
/// pgevents_plugin_sdk::log::error_with("rejected", &[("status", "550")]);
/// ```
pub fn error_with<K: AsRef<str>, V: AsRef<str>>(message: impl AsRef<str>, fields: &[(K, V)]) {
    log(Level::Error, message, fields);
}
