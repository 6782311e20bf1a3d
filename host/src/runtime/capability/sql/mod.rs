//! The `sql` capability: a plugin's statements run on a session logged in as
//! the role the operator named, inside the transaction that also moves the
//! plugin's cursor (see `dispatch.rs`). Ordinary PostgreSQL privileges bound
//! what a plugin can read and write: the session user *is* that role, so no
//! `RESET ROLE` or `set_config` can widen them.
//!
//! - `session.rs`: [`SqlSession`], the session as the plugin's role, and its
//!   batch transaction.
//! - `lexer.rs`: which statements are refused (transaction control, COPY).
//! - `codec.rs`: values to and from PostgreSQL's text and binary forms.

mod codec;
mod lexer;
mod session;

pub use session::{
    CommitError, SqlSession, SqlSessionError, application_name, grant_acknowledgement,
};

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::Deserialize;

use crate::runtime::bindings::pgevents::plugin::sql;

/// The `sql` capability: statements run as `role`, in the batch transaction.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SqlGrant {
    /// The database role the plugin's statements run as; its privileges bound
    /// what the plugin can read and write.
    pub role: String,
    /// How to log in as `role` (default: the host's URL with the user replaced
    /// by `role` and no password).
    pub url: Option<String>,
}

/// A value passed to or returned from the `sql` capability.
#[derive(Debug, Clone, PartialEq)]
pub enum SqlValue {
    Null,
    Boolean(bool),
    Int(i64),
    Float(f64),
    Text(String),
    Json(String),
    Bytes(Vec<u8>),
}

/// A query's result.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SqlRows {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<SqlValue>>,
}

/// A statement that failed, with its SQLSTATE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqlFailure {
    pub sqlstate: String,
    pub message: String,
}

/// Where a plugin's `sql` calls go (a session as the plugin's role, inside
/// the batch transaction). Called from the plugin's thread: it may block.
pub trait SqlAccess: Send + Sync {
    fn query(&self, statement: &str, params: &[SqlValue]) -> Result<SqlRows, SqlFailure>;
    fn execute(&self, statement: &str, params: &[SqlValue]) -> Result<u64, SqlFailure>;
}

/// A call's `sql` capability: where its statements go, if it is granted.
pub(in crate::runtime) struct SqlCtx {
    pub(in crate::runtime) plugin: String,
    /// The session of the plugin's deliverer; `None` if not granted.
    pub(in crate::runtime) session: Option<Arc<dyn SqlAccess>>,
    /// Whether the `sql` capability is granted.
    pub(in crate::runtime) granted: bool,
    /// Set when the host gave up waiting for this call: host calls are refused.
    pub(in crate::runtime) abandoned: Arc<AtomicBool>,
}

impl SqlCtx {
    fn session(&self) -> Result<&Arc<dyn SqlAccess>, sql::SqlError> {
        if self.abandoned.load(Ordering::SeqCst) {
            return Err(sql::SqlError {
                sqlstate: crate::db::sqlstate::ABANDONED.code().into(),
                message: "the host abandoned this call (it outlasted its time limit)".into(),
            });
        }
        if !self.granted {
            return Err(sql::SqlError {
                sqlstate: crate::db::sqlstate::NOT_GRANTED.code().into(),
                message: format!(
                    "plugin `{}` has no sql capability; the operator grants it in the host's config file: \
                     [plugins.{}] sql = {{ role = \"...\" }}",
                    self.plugin, self.plugin
                ),
            });
        }
        self.session.as_ref().ok_or_else(|| sql::SqlError {
            sqlstate: crate::db::sqlstate::NOT_GRANTED.code().into(),
            message: format!(
                "plugin `{}` has no sql capability; the operator grants it in the host's config file: \
                 [plugins.{}] sql = {{ role = \"...\" }}",
                self.plugin, self.plugin
            ),
        })
    }
}

impl sql::Host for SqlCtx {
    fn query(
        &mut self,
        statement: String,
        params: Vec<sql::Value>,
    ) -> Result<sql::Rows, sql::SqlError> {
        let params: Vec<SqlValue> = params.into_iter().map(from_wit_value).collect();
        let rows = self
            .session()?
            .query(&statement, &params)
            .map_err(to_wit_error)?;
        Ok(sql::Rows {
            columns: rows.columns,
            rows: rows
                .rows
                .into_iter()
                .map(|row| row.into_iter().map(to_wit_value).collect())
                .collect(),
        })
    }

    fn execute(
        &mut self,
        statement: String,
        params: Vec<sql::Value>,
    ) -> Result<u64, sql::SqlError> {
        let params: Vec<SqlValue> = params.into_iter().map(from_wit_value).collect();
        self.session()?
            .execute(&statement, &params)
            .map_err(to_wit_error)
    }
}

fn from_wit_value(v: sql::Value) -> SqlValue {
    match v {
        sql::Value::Null => SqlValue::Null,
        sql::Value::Boolean(b) => SqlValue::Boolean(b),
        sql::Value::Int(i) => SqlValue::Int(i),
        sql::Value::Float(f) => SqlValue::Float(f),
        sql::Value::Text(s) => SqlValue::Text(s),
        sql::Value::Json(s) => SqlValue::Json(s),
        sql::Value::Bytes(b) => SqlValue::Bytes(b),
    }
}

fn to_wit_value(v: SqlValue) -> sql::Value {
    match v {
        SqlValue::Null => sql::Value::Null,
        SqlValue::Boolean(b) => sql::Value::Boolean(b),
        SqlValue::Int(i) => sql::Value::Int(i),
        SqlValue::Float(f) => sql::Value::Float(f),
        SqlValue::Text(s) => sql::Value::Text(s),
        SqlValue::Json(s) => sql::Value::Json(s),
        SqlValue::Bytes(b) => sql::Value::Bytes(b),
    }
}

fn to_wit_error(e: SqlFailure) -> sql::SqlError {
    sql::SqlError {
        sqlstate: e.sqlstate,
        message: e.message,
    }
}
