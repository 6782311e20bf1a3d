//! Tools for plugin authors, which run without a host: `events export`
//! (events from the log as JSONL), `test` (a plugin's `handle` on such a
//! file, with the host's grants and limits, printing what it did),
//! `codegen` (typed rows from the live catalog).
//!
//! - `mod.rs`: [`RecordedEvent`], the JSONL shape both speak.
//! - `export.rs`: reading events from the log in delivery order.
//! - `harness.rs`: calling a plugin on recorded events, batch by batch.
//! - `catalog.rs`: a table's columns from the live catalog; sample rows.
//! - `codegen.rs`: row types for Rust, Python and TypeScript from them.
//! - `scaffold/`: `new`, a plugin project that builds on its own.
//! - `dev.rs`: `dev`, rebuilding a project into a running host's folder.

pub mod catalog;
pub mod codegen;
pub mod dev;
mod export;
mod harness;
pub mod scaffold;

pub use export::{ExportFilter, export};
pub use harness::{HttpRules, TestOptions, TestReport, run_test};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::event::{LoggedEvent, Op, Position};

/// One event as a line of JSONL: the fields a plugin receives (see
/// docs/event-format.md), with the rows as JSON values. Rows are kept as
/// the exact JSON text the log holds (`numeric` keeps every digit), so a
/// plugin tested on an exported file sees byte for byte what the host gave
/// it. Only `operation`, `schema` and `table` are required in a hand-written
/// file; the position defaults to the line number.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordedEvent {
    /// The event's id, derived from its position; checked when read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default)]
    pub position: Option<RecordedPosition>,
    pub operation: Operation,
    pub schema: String,
    pub table: String,
    #[serde(default)]
    pub key: Option<Box<RawValue>>,
    #[serde(default)]
    pub new_row: Option<Box<RawValue>>,
    #[serde(default)]
    pub old_row: Option<Box<RawValue>>,
    #[serde(default)]
    pub captured_at: Option<String>,
    #[serde(default)]
    pub context: RecordedContext,
    /// The delivery attempt the plugin sees (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RecordedPosition {
    pub txid: u64,
    pub seq: i64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordedContext {
    #[serde(default)]
    pub user: String,
    #[serde(default)]
    pub application_name: String,
    #[serde(default)]
    pub tag: Option<String>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Operation {
    Insert,
    Update,
    Delete,
    Truncate,
}

impl From<Op> for Operation {
    fn from(op: Op) -> Operation {
        match op {
            Op::Insert => Operation::Insert,
            Op::Update => Operation::Update,
            Op::Delete => Operation::Delete,
            Op::Truncate => Operation::Truncate,
        }
    }
}

impl Operation {
    pub fn name(self) -> &'static str {
        match self {
            Operation::Insert => "insert",
            Operation::Update => "update",
            Operation::Delete => "delete",
            Operation::Truncate => "truncate",
        }
    }

    fn op(self) -> Op {
        match self {
            Operation::Insert => Op::Insert,
            Operation::Update => Op::Update,
            Operation::Delete => Op::Delete,
            Operation::Truncate => Op::Truncate,
        }
    }
}

/// JSON text as a raw value, if it is JSON (the log's rows always are).
fn raw(text: Option<String>) -> Option<Box<RawValue>> {
    text.and_then(|t| RawValue::from_string(t).ok())
}

impl RecordedEvent {
    /// The event as the log holds it.
    pub fn from_logged(e: LoggedEvent) -> RecordedEvent {
        RecordedEvent {
            id: Some(e.id().to_string()),
            position: Some(RecordedPosition {
                txid: e.txid,
                seq: e.position.seq,
            }),
            operation: e.op.into(),
            schema: e.schema,
            table: e.table,
            key: raw(e.key),
            new_row: raw(e.new_row),
            old_row: raw(e.old_row),
            captured_at: Some(e.captured_at),
            context: RecordedContext {
                user: e.user,
                application_name: e.application_name,
                tag: e.tag,
            },
            attempt: None,
        }
    }

    /// Parse line `number` (from 1) of a JSONL file into an event and its
    /// attempt number.
    pub fn parse_line(line: &str, number: usize) -> Result<(LoggedEvent, u32), String> {
        let recorded: RecordedEvent = serde_json::from_str(line).map_err(|e| {
            format!("line {number}: not an event ({e}); see docs/plugins/testing.md for the shape")
        })?;
        recorded.into_logged(number)
    }

    fn into_logged(self, number: usize) -> Result<(LoggedEvent, u32), String> {
        let position = self.position.unwrap_or(RecordedPosition {
            txid: number as u64,
            seq: 1,
        });
        for (name, value) in [
            ("key", &self.key),
            ("new_row", &self.new_row),
            ("old_row", &self.old_row),
        ] {
            if let Some(v) = value
                && !v.get().trim_start().starts_with('{')
            {
                return Err(format!(
                    "line {number}: `{name}` must be a JSON object (a row, by column name), not {}",
                    v.get()
                ));
            }
        }
        let event = LoggedEvent {
            position: Position {
                ord: number as i64,
                seq: position.seq,
            },
            txid: position.txid,
            op: self.operation.op(),
            schema: self.schema,
            table: self.table,
            key: self.key.map(|v| v.get().to_owned()),
            new_row: self.new_row.map(|v| v.get().to_owned()),
            old_row: self.old_row.map(|v| v.get().to_owned()),
            captured_at: self
                .captured_at
                .unwrap_or_else(|| "2026-01-01T00:00:00.000000Z".into()),
            user: self.context.user,
            application_name: self.context.application_name,
            tag: self.context.tag,
        };
        if let Some(id) = &self.id
            && *id != event.id().to_string()
        {
            return Err(format!(
                "line {number}: `id` {id} is not the id of position {}/{} ({}); ids are derived \
                 from the position: drop `id`, or give the position it came with",
                position.txid,
                position.seq,
                event.id()
            ));
        }
        Ok((event, self.attempt.unwrap_or(1).max(1)))
    }
}

/// Every event of a JSONL text (blank lines and lines starting with `#` are
/// skipped), or the first line that is not one.
pub fn parse_events(text: &str) -> Result<Vec<(LoggedEvent, u32)>, String> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .map(|(i, l)| RecordedEvent::parse_line(l, i + 1))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recorded_event_keeps_its_rows_byte_for_byte() {
        let line = r#"{"position":{"txid":7,"seq":2},"operation":"update","schema":"public","table":"t","key":{"id": 1},"new_row":{"id": 1, "n": 12345678901234567890.123456789012},"old_row":{"id": 1, "n": 0.1}}"#;
        let (event, attempt) = RecordedEvent::parse_line(line, 1).unwrap();
        assert_eq!(attempt, 1);
        assert_eq!(
            event.new_row.as_deref(),
            Some(r#"{"id": 1, "n": 12345678901234567890.123456789012}"#)
        );
        let back = serde_json::to_string(&RecordedEvent::from_logged(event.clone())).unwrap();
        let (again, _) = RecordedEvent::parse_line(&back, 1).unwrap();
        assert_eq!(again.new_row, event.new_row);
        assert_eq!(again.id(), event.id());
    }

    #[test]
    fn bad_lines_are_refused_with_their_number_and_why() {
        let e = parse_events("\n{\"operation\":\"insert\"}").unwrap_err();
        assert!(e.starts_with("line 2: not an event"), "{e}");
        let e = parse_events(r#"{"operation":"upsert","schema":"s","table":"t"}"#).unwrap_err();
        assert!(e.contains("upsert"), "{e}");
        let e = parse_events(r#"{"operation":"insert","schema":"s","table":"t","new_row":[1]}"#)
            .unwrap_err();
        assert!(e.contains("must be a JSON object"), "{e}");
        let e = parse_events(
            r#"{"id":"00000000-0000-0000-0000-000000000000","operation":"insert","schema":"s","table":"t"}"#,
        )
        .unwrap_err();
        assert!(e.contains("is not the id of position"), "{e}");
    }
}
