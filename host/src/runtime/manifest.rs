//! A plugin's manifest, validated: what it is and which changes it wants.

use serde::{Deserialize, Serialize};

use super::bindings::exports::pgevents::plugin::handler as wit;
use super::bindings::pgevents::plugin::types::Operation;
use crate::event::Op;
use crate::schema::SCHEMA;

/// Events per `handle` call when a manifest asks for 0 (the host default).
pub const DEFAULT_BATCH_SIZE: u32 = 500;
/// Largest batch a manifest may ask for.
pub const MAX_BATCH_SIZE: u32 = 10_000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub name: String,
    pub version: String,
    pub subscriptions: Vec<Subscription>,
    /// Effective batch size (the manifest's request, or the host default).
    pub batch_size: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscription {
    pub schema: String,
    pub table: String,
    /// Subset of "insert", "update", "delete", "truncate", in that order.
    pub operations: Vec<String>,
    pub changed_columns: Option<Vec<String>>,
}

impl Subscription {
    /// Log codes of the operations (`I`, `U`, `D`, `T`).
    pub fn op_codes(&self) -> Vec<i8> {
        self.operations
            .iter()
            .filter_map(|o| op_named(o))
            .map(|op| op.code() as i8)
            .collect()
    }
}

fn op_named(name: &str) -> Option<Op> {
    match name {
        "insert" => Some(Op::Insert),
        "update" => Some(Op::Update),
        "delete" => Some(Op::Delete),
        "truncate" => Some(Op::Truncate),
        _ => None,
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("the manifest has an empty name")]
    EmptyName,
    #[error(
        "plugin name {0:?} is not allowed: use letters, digits, `-`, `_` and `.` (at most 63 characters)"
    )]
    BadName(String),
    #[error("plugin `{0}` subscribes to nothing")]
    NoSubscriptions(String),
    #[error("plugin `{plugin}` subscribes to a table with an empty schema or table name")]
    EmptyTable { plugin: String },
    #[error("plugin `{plugin}` subscribes to `{table}` twice; merge the subscriptions")]
    Duplicate { plugin: String, table: String },
    #[error("plugin `{plugin}` subscribes to `{table}` with no operations")]
    NoOperations { plugin: String, table: String },
    #[error("plugin `{plugin}` asks for a changed-columns filter on `{table}` but not for updates")]
    ColumnsWithoutUpdate { plugin: String, table: String },
    #[error("plugin `{plugin}` asks for batch size {size}; the maximum is {MAX_BATCH_SIZE}")]
    BatchTooLarge { plugin: String, size: u32 },
    #[error("plugin `{plugin}`: its manifest's {what} {value:?} {problem}")]
    BadText {
        plugin: String,
        what: &'static str,
        value: String,
        problem: &'static str,
    },
    #[error(
        "plugin `{plugin}` subscribes to `{table}`, in {whose}; a plugin may subscribe to application tables only"
    )]
    ForbiddenSchema {
        plugin: String,
        table: String,
        whose: &'static str,
    },
    #[error("plugin `{plugin}` has {count} subscriptions; at most {MAX_SUBSCRIPTIONS} are allowed")]
    TooManySubscriptions { plugin: String, count: usize },
}

/// Longest identifier PostgreSQL keeps (NAMEDATALEN - 1 bytes); a longer one
/// would be cut short, and name another table.
const MAX_IDENTIFIER_BYTES: usize = 63;
/// Longest version string.
const MAX_VERSION_CHARS: usize = 100;
/// Most subscriptions one plugin may have, and most columns in one filter.
const MAX_SUBSCRIPTIONS: usize = 1000;
const MAX_FILTER_COLUMNS: usize = 1600;

/// Why `text` cannot be stored or used as a PostgreSQL identifier, if it cannot.
fn identifier_problem(text: &str) -> Option<&'static str> {
    if text.is_empty() {
        Some("is empty")
    } else if text.contains('\0') {
        Some("contains a NUL byte, which PostgreSQL text cannot hold")
    } else if text.len() > MAX_IDENTIFIER_BYTES {
        Some("is longer than PostgreSQL's 63-byte limit for names")
    } else {
        None
    }
}

/// Whose schema `schema` is, if not the application's: the host's own, or
/// the system's. Their tables are never captured (a trigger on the log would
/// capture its own writes; on the cursors, every acknowledgement).
fn reserved_schema(schema: &str) -> Option<&'static str> {
    if schema == SCHEMA {
        Some("the host's own schema")
    } else if matches!(schema, "pg_catalog" | "information_schema")
        || schema.starts_with("pg_toast")
        || schema.starts_with("pg_temp")
    {
        Some("a system schema")
    } else {
        None
    }
}

impl Manifest {
    pub(super) fn placeholder() -> Manifest {
        Manifest {
            name: String::new(),
            version: String::new(),
            subscriptions: Vec::new(),
            batch_size: DEFAULT_BATCH_SIZE,
        }
    }

    pub(super) fn from_wit(m: wit::Manifest) -> Result<Manifest, ManifestError> {
        let name = m.name;
        if name.is_empty() {
            return Err(ManifestError::EmptyName);
        }
        let name_ok = name.len() <= 63
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !name_ok {
            return Err(ManifestError::BadName(name.chars().take(80).collect()));
        }
        if m.subscriptions.is_empty() {
            return Err(ManifestError::NoSubscriptions(name));
        }
        if m.subscriptions.len() > MAX_SUBSCRIPTIONS {
            return Err(ManifestError::TooManySubscriptions {
                count: m.subscriptions.len(),
                plugin: name,
            });
        }
        let bad = |plugin: &str, what: &'static str, value: &str, problem: &'static str| {
            ManifestError::BadText {
                plugin: plugin.to_owned(),
                what,
                value: value.chars().take(80).collect(),
                problem,
            }
        };
        if m.version.chars().any(char::is_control) {
            return Err(bad(
                &name,
                "version",
                &m.version,
                "contains a control character (a NUL byte, say)",
            ));
        }
        if m.version.chars().count() > MAX_VERSION_CHARS {
            return Err(bad(
                &name,
                "version",
                &m.version,
                "is longer than 100 characters",
            ));
        }
        if m.batch_size > MAX_BATCH_SIZE {
            return Err(ManifestError::BatchTooLarge {
                plugin: name,
                size: m.batch_size,
            });
        }
        let mut subscriptions: Vec<Subscription> = Vec::new();
        for s in m.subscriptions {
            let table = format!("{}.{}", s.schema, s.table);
            if s.schema.is_empty() || s.table.is_empty() {
                return Err(ManifestError::EmptyTable { plugin: name });
            }
            for (what, text) in [("schema name", &s.schema), ("table name", &s.table)] {
                if let Some(problem) = identifier_problem(text) {
                    return Err(bad(&name, what, text, problem));
                }
            }
            if let Some(whose) = reserved_schema(&s.schema) {
                return Err(ManifestError::ForbiddenSchema {
                    plugin: name,
                    table,
                    whose,
                });
            }
            for column in s.changed_columns.iter().flatten() {
                if let Some(problem) = identifier_problem(column) {
                    return Err(bad(&name, "changed-columns entry", column, problem));
                }
            }
            if s.changed_columns
                .as_ref()
                .is_some_and(|c| c.len() > MAX_FILTER_COLUMNS)
            {
                return Err(bad(
                    &name,
                    "changed-columns filter of",
                    &table,
                    "names more than 1600 columns (PostgreSQL's limit for a table)",
                ));
            }
            if subscriptions
                .iter()
                .any(|o| o.schema == s.schema && o.table == s.table)
            {
                return Err(ManifestError::Duplicate {
                    plugin: name,
                    table,
                });
            }
            let operations: Vec<String> = [
                (Operation::Insert, "insert"),
                (Operation::Update, "update"),
                (Operation::Delete, "delete"),
                (Operation::Truncate, "truncate"),
            ]
            .into_iter()
            .filter(|(op, _)| s.operations.contains(op))
            .map(|(_, n)| n.to_owned())
            .collect();
            if operations.is_empty() {
                return Err(ManifestError::NoOperations {
                    plugin: name,
                    table,
                });
            }
            if s.changed_columns.is_some() && !operations.iter().any(|o| o == "update") {
                return Err(ManifestError::ColumnsWithoutUpdate {
                    plugin: name,
                    table,
                });
            }
            subscriptions.push(Subscription {
                schema: s.schema,
                table: s.table,
                operations,
                changed_columns: s.changed_columns,
            });
        }
        Ok(Manifest {
            name,
            version: m.version,
            subscriptions,
            batch_size: if m.batch_size == 0 {
                DEFAULT_BATCH_SIZE
            } else {
                m.batch_size
            },
        })
    }
}
