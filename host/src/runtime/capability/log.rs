//! The `host.log` import: a plugin's log lines (and what it prints) go to
//! the host's log, tagged with its name, and to the embedder's [`LogSink`],
//! within a budget of lines per call; long lines are cut.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::runtime::bindings::pgevents::plugin::host;

/// A plugin call may write `LOG_LINES_PER_CALL` log lines plus
/// `LOG_LINES_PER_EVENT` per event in its batch; the rest are dropped (and
/// counted, in one warning). So a plugin that logs each event is never cut,
/// and one that logs in a loop cannot flood the host. Longer lines are cut.
pub const LOG_LINES_PER_CALL: u32 = 100;
pub const LOG_LINES_PER_EVENT: u32 = 10;
pub const LOG_LINE_MAX_BYTES: usize = 4096;

/// A log line a plugin wrote through the `host.log` import, or its stdout.
#[derive(Debug, Clone)]
pub struct PluginLog {
    pub plugin: String,
    pub level: LogLevel,
    pub message: String,
    pub fields: Vec<(String, String)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

/// Receives every plugin log line (the host's tracing output gets them too).
pub type LogSink = Arc<dyn Fn(PluginLog) + Send + Sync>;

/// A call's log: where its lines go, and how many more it may write.
pub(in crate::runtime) struct LogCtx {
    pub(in crate::runtime) plugin: String,
    pub(in crate::runtime) sink: Option<LogSink>,
    /// Log lines this call may still write, and those it was refused.
    pub(in crate::runtime) lines_left: u32,
    pub(in crate::runtime) lines_dropped: u32,
    /// Set when the host gave up waiting for this call: host calls are refused.
    pub(in crate::runtime) abandoned: Arc<AtomicBool>,
}

impl LogCtx {
    /// Write a plugin's log line, within its rate limit; long lines are cut.
    pub(in crate::runtime) fn emit(
        &mut self,
        level: LogLevel,
        mut message: String,
        mut fields: Vec<(String, String)>,
    ) {
        if self.abandoned.load(Ordering::SeqCst) {
            return;
        }
        let plugin = self.plugin.as_str();
        let Some(left) = self.lines_left.checked_sub(1) else {
            self.lines_dropped += 1;
            return;
        };
        self.lines_left = left;
        truncate_utf8(&mut message, LOG_LINE_MAX_BYTES);
        fields.truncate(32);
        for (k, v) in &mut fields {
            truncate_utf8(k, 128);
            truncate_utf8(v, LOG_LINE_MAX_BYTES);
        }
        let shown = render_fields(&fields);
        match level {
            LogLevel::Trace => tracing::trace!(plugin, "{message}{shown}"),
            LogLevel::Debug => tracing::debug!(plugin, "{message}{shown}"),
            LogLevel::Info => tracing::info!(plugin, "{message}{shown}"),
            LogLevel::Warn => tracing::warn!(plugin, "{message}{shown}"),
            LogLevel::Error => tracing::error!(plugin, "{message}{shown}"),
        }
        if let Some(sink) = &self.sink {
            sink(PluginLog {
                plugin: self.plugin.clone(),
                level,
                message,
                fields,
            });
        }
    }
}

impl host::Host for LogCtx {
    fn log(&mut self, level: host::Level, message: String, fields: Vec<(String, String)>) {
        let level = match level {
            host::Level::Trace => LogLevel::Trace,
            host::Level::Debug => LogLevel::Debug,
            host::Level::Info => LogLevel::Info,
            host::Level::Warn => LogLevel::Warn,
            host::Level::Error => LogLevel::Error,
        };
        self.emit(level, message, fields);
    }
}

/// ` key=value key2="with space"` for a log line.
fn render_fields(fields: &[(String, String)]) -> String {
    fields
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| {
            if v.contains(char::is_whitespace) || v.contains('"') {
                format!(" {k}={v:?}")
            } else {
                format!(" {k}={v}")
            }
        })
        .collect()
}

/// Cut `text` to at most `max` bytes, at a character boundary, marking the cut.
fn truncate_utf8(text: &mut String, max: usize) {
    if text.len() <= max {
        return;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push('…');
}
