//! Database access: run SQL in the transaction that acknowledges the batch.
//!
//! ```
//! use pgevents_plugin_sdk::sql;
//!
//! /// Adds `amount` to a customer's balance and returns the new balance.
//! fn credit(customer_id: i64, amount: i64) -> Result<i64, Box<dyn std::error::Error>> {
//!     let rows = sql::query(
//!         "INSERT INTO balances (customer_id, amount) VALUES ($1, $2) \
//!          ON CONFLICT (customer_id) DO UPDATE SET amount = balances.amount + $2 \
//!          RETURNING amount",
//!         &[customer_id.into(), amount.into()],
//!     )?;
//!     let row = rows.row(0).ok_or("no row returned")?;
//!     Ok(row.get("amount")?)
//! }
//!
//! // Natively there is no host: every statement fails with SQLSTATE 58000.
//! assert!(credit(7, 250).unwrap_err().to_string().starts_with("SQLSTATE 58000"));
//! ```
//!
//! - **Granted by the operator.** A plugin may use this module only if the
//!   host's configuration grants it the `sql` capability and names the
//!   database role its statements run as; otherwise every call fails. The
//!   role's privileges decide what the plugin can read and write.
//! - **Exactly once in effect.** Statements run inside the transaction that
//!   also moves the plugin's cursor past the batch. If
//!   [`handle`](crate::Plugin::handle) returns `Ok`, the statements and the
//!   cursor move commit together; if it fails, traps or times out, they roll
//!   back together. When `handle` returns a [`Failure`](crate::Failure) at
//!   `index` > 0, the host rolls back and hands the events before `index`
//!   over again on their own, so that exactly their effects commit (side
//!   effects other than these statements, such as log lines, happen twice).
//!   So a plugin whose only effects are these statements applies each event
//!   exactly once, even across crashes.
//! - **One savepoint per statement.** An error (a [`SqlError`]) undoes only
//!   the statement that failed; the plugin may handle it and go on.
//! - **One statement per call.** Transaction control (`BEGIN`, `COMMIT`,
//!   `ROLLBACK`, savepoints) is refused.
//! - **Parameters in text form.** `$1`, `$2`, ... are sent as PostgreSQL text,
//!   so a [`Value::Text`] binds to any column type: pass a uuid, numeric or
//!   timestamp as a string.
//! - **Results.** Integers, floats, booleans, text-like types (text, varchar,
//!   uuid, numeric, timestamps), json/jsonb and bytea come back as a
//!   [`Value`]. Cast any other type to text in the query
//!   (`SELECT created_at::text ...`); an unsupported result type is an error.
//!
//! Compiled for any other target than WebAssembly (a plugin's native unit
//! tests) there is no database: [`execute`] and [`query`] return a
//! [`SqlError`] with SQLSTATE `58000`.

use std::fmt;

use serde::de::DeserializeOwned;

use crate::bindings::pgevents::plugin::sql as raw;

/// A statement parameter or a result column.
///
/// Build parameters with `From`/`.into()` from Rust values; read results with
/// [`Row::get`]. `Option<T>` maps `None` to [`Value::Null`], and a
/// [`serde_json::Value`] becomes [`Value::Json`].
///
/// ```
/// use pgevents_plugin_sdk::sql::Value;
///
/// assert_eq!(Value::from(42), Value::Int(42));
/// assert_eq!(Value::from("hi"), Value::Text("hi".into()));
/// assert_eq!(Value::from(None::<i64>), Value::Null);
/// assert_eq!(Value::from(serde_json::json!({"a": 1})), Value::Json(r#"{"a":1}"#.into()));
/// ```
pub use crate::bindings::pgevents::plugin::sql::Value;

impl Value {
    /// The WIT name of the case: `"null"`, `"boolean"`, `"int"`, `"float"`,
    /// `"text"`, `"json"` or `"bytes"`.
    ///
    /// ```
    /// use pgevents_plugin_sdk::sql::Value;
    ///
    /// assert_eq!(Value::Float(1.5).kind(), "float");
    /// ```
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Boolean(_) => "boolean",
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::Text(_) => "text",
            Value::Json(_) => "json",
            Value::Bytes(_) => "bytes",
        }
    }

    /// Whether this is [`Value::Null`].
    ///
    /// ```
    /// use pgevents_plugin_sdk::sql::Value;
    ///
    /// assert!(Value::Null.is_null());
    /// assert!(!Value::Int(0).is_null());
    /// ```
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }
}

// The generated enum derives only `Clone`; compare case by case (floats as `==`).
impl PartialEq for Value {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Value::Null, Value::Null) => true,
            (Value::Boolean(a), Value::Boolean(b)) => a == b,
            (Value::Int(a), Value::Int(b)) => a == b,
            (Value::Float(a), Value::Float(b)) => a == b,
            (Value::Text(a), Value::Text(b)) | (Value::Json(a), Value::Json(b)) => a == b,
            (Value::Bytes(a), Value::Bytes(b)) => a == b,
            _ => false,
        }
    }
}

macro_rules! value_from {
    ($($ty:ty => |$v:ident| $body:expr),* $(,)?) => {
        $(
            impl From<$ty> for Value {
                fn from($v: $ty) -> Self {
                    $body
                }
            }
        )*
    };
}

value_from! {
    bool => |v| Value::Boolean(v),
    i64 => |v| Value::Int(v),
    i32 => |v| Value::Int(v.into()),
    i16 => |v| Value::Int(v.into()),
    u32 => |v| Value::Int(v.into()),
    f64 => |v| Value::Float(v),
    &str => |v| Value::Text(v.to_owned()),
    &String => |v| Value::Text(v.clone()),
    String => |v| Value::Text(v),
    &[u8] => |v| Value::Bytes(v.to_vec()),
    Vec<u8> => |v| Value::Bytes(v),
    serde_json::Value => |v| Value::Json(v.to_string()),
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(value: Option<T>) -> Self {
        value.map_or(Value::Null, Into::into)
    }
}

/// A statement that failed: the SQLSTATE code and PostgreSQL's message.
///
/// Displays as `SQLSTATE 23505: duplicate key value ...`. Common codes:
/// `23505` unique violation, `23503` foreign-key violation, `42501`
/// insufficient privilege, `58000` a host-side problem (no `sql` grant, or
/// not running inside the host).
///
/// ```
/// use pgevents_plugin_sdk::sql::SqlError;
///
/// let err = SqlError::new("23505", "duplicate key value violates unique constraint");
/// assert_eq!(err.to_string(), "SQLSTATE 23505: duplicate key value violates unique constraint");
/// assert!(err.is_unique_violation());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqlError {
    /// The five-character SQLSTATE code.
    pub sqlstate: String,
    /// PostgreSQL's (or the host's) description of the problem.
    pub message: String,
}

impl SqlError {
    /// An error with the given SQLSTATE and message (for a plugin's own tests).
    ///
    /// ```
    /// use pgevents_plugin_sdk::sql::SqlError;
    ///
    /// let err = SqlError::new("42501", "permission denied for table audit");
    /// assert_eq!(err.sqlstate, "42501");
    /// ```
    pub fn new(sqlstate: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            sqlstate: sqlstate.into(),
            message: message.into(),
        }
    }

    /// Whether the statement broke a unique constraint (SQLSTATE `23505`),
    /// the usual sign that an idempotent insert already happened.
    ///
    /// ```
    /// use pgevents_plugin_sdk::sql::SqlError;
    ///
    /// assert!(SqlError::new("23505", "duplicate key").is_unique_violation());
    /// assert!(!SqlError::new("23503", "foreign key").is_unique_violation());
    /// ```
    pub fn is_unique_violation(&self) -> bool {
        self.sqlstate == "23505"
    }

    /// Whether trying again later may succeed: a lost connection (class
    /// `08`), a serialization failure or deadlock (`40`), the server out of
    /// resources (`53`), a cancelled statement or a server shutting down
    /// (`57`), a system error (`58`, with `58000` a problem on the host's
    /// side), an internal error (`XX`), or a lock not available (`55P03`):
    /// the classes the host itself counts as the server's, not the
    /// statement's. A broken constraint, a missing privilege or table, or
    /// a syntax error is not: the same statement fails again. The Python
    /// and JavaScript SDKs decide the same.
    ///
    /// ```
    /// use pgevents_plugin_sdk::sql::SqlError;
    ///
    /// assert!(SqlError::new("40001", "could not serialize access").is_transient());
    /// assert!(!SqlError::new("23505", "duplicate key").is_transient());
    /// ```
    pub fn is_transient(&self) -> bool {
        let class = self.sqlstate.get(..2).unwrap_or_default();
        matches!(class, "08" | "40" | "53" | "57" | "58" | "XX") || self.sqlstate == "55P03"
    }
}

impl fmt::Display for SqlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SQLSTATE {}: {}", self.sqlstate, self.message)
    }
}

impl std::error::Error for SqlError {}

impl From<raw::SqlError> for SqlError {
    fn from(err: raw::SqlError) -> Self {
        Self {
            sqlstate: err.sqlstate,
            message: err.message,
        }
    }
}

/// Runs a statement and returns the number of rows it affected.
///
/// `params` fill `$1`, `$2`, ... in order. Use it for `INSERT`, `UPDATE`,
/// `DELETE` and other statements whose rows you do not need; use [`query`]
/// to read rows (including `... RETURNING`).
///
/// ```
/// use pgevents_plugin_sdk::sql::{self, SqlError};
///
/// fn reserve(sku: &str, count: i64) -> Result<bool, SqlError> {
///     let updated = sql::execute(
///         "UPDATE stock SET available = available - $1 WHERE sku = $2 AND available >= $1",
///         &[count.into(), sku.into()],
///     )?;
///     Ok(updated == 1)
/// }
///
/// // Natively there is no host to run it.
/// assert_eq!(reserve("A-1", 3).unwrap_err().sqlstate, "58000");
/// ```
pub fn execute(statement: &str, params: &[Value]) -> Result<u64, SqlError> {
    imp::execute(statement, params)
}

/// Runs a statement that returns rows (`SELECT`, `... RETURNING`).
///
/// `params` fill `$1`, `$2`, ... in order. Cast result columns of types
/// [`Value`] has no case for to text in the statement.
///
/// ```
/// use pgevents_plugin_sdk::sql::{self, SqlError};
///
/// fn recent_titles(limit: i64) -> Result<Vec<String>, SqlError> {
///     let rows = sql::query(
///         "SELECT title, created_at::text AS created_at FROM posts ORDER BY created_at DESC LIMIT $1",
///         &[limit.into()],
///     )?;
///     Ok(rows.iter().filter_map(|row| row.get::<String>("title").ok()).collect())
/// }
///
/// // Natively there is no host to run it.
/// assert_eq!(recent_titles(10).unwrap_err().sqlstate, "58000");
/// ```
pub fn query(statement: &str, params: &[Value]) -> Result<Rows, SqlError> {
    imp::query(statement, params)
}

/// Runs a statement that returns rows and decodes each row into `T` with
/// serde, by column name (see [`Rows::decode`]).
///
/// ```
/// use pgevents_plugin_sdk::sql::{self, QueryError};
/// use serde::Deserialize;
///
/// #[derive(Deserialize)]
/// struct Post {
///     id: i64,
///     title: String,
///     published_at: Option<String>,
/// }
///
/// fn drafts() -> Result<Vec<Post>, QueryError> {
///     sql::query_as("SELECT id, title, published_at::text FROM posts WHERE published_at IS NULL", &[])
/// }
///
/// // Natively there is no host to run it.
/// assert!(matches!(drafts(), Err(QueryError::Sql(e)) if e.sqlstate == "58000"));
/// ```
pub fn query_as<T: DeserializeOwned>(
    statement: &str,
    params: &[Value],
) -> Result<Vec<T>, QueryError> {
    query(statement, params)?.decode()
}

/// Why [`query_as`] failed: the statement, or decoding a row it returned.
///
/// ```
/// use pgevents_plugin_sdk::sql::{QueryError, Rows, Value};
///
/// let rows = Rows::new(vec!["id".into()], vec![vec![Value::from("seven")]]);
/// let err = rows.decode::<(i64,)>().unwrap_err();
/// assert!(matches!(err, QueryError::Decode { row: 0, .. }));
/// ```
#[derive(Debug)]
pub enum QueryError {
    /// The statement failed.
    Sql(SqlError),
    /// Row `row` (from 0) does not fit the type asked for.
    Decode {
        /// The row's index in the result.
        row: usize,
        /// What serde said.
        error: serde_json::Error,
    },
}

impl fmt::Display for QueryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QueryError::Sql(err) => err.fmt(f),
            QueryError::Decode { row, error } => {
                write!(f, "row {row} of the result does not decode: {error}")
            }
        }
    }
}

impl std::error::Error for QueryError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            QueryError::Sql(err) => Some(err),
            QueryError::Decode { error, .. } => Some(error),
        }
    }
}

impl From<SqlError> for QueryError {
    fn from(err: SqlError) -> Self {
        QueryError::Sql(err)
    }
}

/// `value` as JSON text, appended to `out`: `json` columns as their own text
/// (so numbers keep their digits), a float that JSON cannot hold as a string.
fn push_json(out: &mut String, value: &Value) {
    let text = |s: &str| serde_json::to_string(s).unwrap_or_default();
    match value {
        Value::Null => out.push_str("null"),
        Value::Boolean(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Int(i) => out.push_str(&i.to_string()),
        Value::Float(x) if x.is_finite() => out.push_str(
            &serde_json::Number::from_f64(*x).map_or_else(String::new, |n| n.to_string()),
        ),
        Value::Float(x) => out.push_str(&text(&x.to_string())),
        Value::Text(s) => out.push_str(&text(s)),
        Value::Json(json) => out.push_str(json),
        Value::Bytes(bytes) => out.push_str(&serde_json::to_string(bytes).unwrap_or_default()),
    }
}

#[cfg(target_arch = "wasm32")]
mod imp {
    use super::{Rows, SqlError, Value, raw};

    pub(super) fn execute(statement: &str, params: &[Value]) -> Result<u64, SqlError> {
        raw::execute(statement, params).map_err(SqlError::from)
    }

    pub(super) fn query(statement: &str, params: &[Value]) -> Result<Rows, SqlError> {
        raw::query(statement, params)
            .map(|rows| Rows::new(rows.columns, rows.rows))
            .map_err(SqlError::from)
    }
}

// The generated imports are `unreachable!()` off wasm32; failing instead lets
// plugin authors unit-test handlers natively.
#[cfg(not(target_arch = "wasm32"))]
mod imp {
    use super::{Rows, SqlError, Value};

    fn no_host(function: &str) -> SqlError {
        SqlError::new(
            "58000",
            format!(
                "sql::{function} works only inside pgevents-host (this build is not WebAssembly)"
            ),
        )
    }

    pub(super) fn execute(_statement: &str, _params: &[Value]) -> Result<u64, SqlError> {
        Err(no_host("execute"))
    }

    pub(super) fn query(_statement: &str, _params: &[Value]) -> Result<Rows, SqlError> {
        Err(no_host("query"))
    }
}

/// The result of [`query`]: column names, and rows of values in that order.
///
/// ```
/// use pgevents_plugin_sdk::sql::{Rows, Value};
///
/// let rows = Rows::new(
///     vec!["id".into(), "name".into()],
///     vec![vec![Value::Int(1), Value::from("Ada")], vec![Value::Int(2), Value::from("Grace")]],
/// );
/// let names: Vec<String> = rows.iter().map(|row| row.get("name")).collect::<Result<_, _>>()?;
/// assert_eq!(names, ["Ada", "Grace"]);
/// # Ok::<(), pgevents_plugin_sdk::sql::ColumnError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Rows {
    columns: Vec<String>,
    rows: Vec<Vec<Value>>,
}

impl Rows {
    /// Rows with these column names; each row holds one value per column.
    /// [`query`] builds them; this is for a plugin's own tests.
    ///
    /// ```
    /// use pgevents_plugin_sdk::sql::{Rows, Value};
    ///
    /// let rows = Rows::new(vec!["n".into()], vec![vec![Value::Int(3)]]);
    /// assert_eq!(rows.len(), 1);
    /// ```
    pub fn new(columns: Vec<String>, rows: Vec<Vec<Value>>) -> Self {
        Self { columns, rows }
    }

    /// The column names, in result order.
    ///
    /// ```
    /// use pgevents_plugin_sdk::sql::Rows;
    ///
    /// let rows = Rows::new(vec!["id".into(), "name".into()], Vec::new());
    /// assert_eq!(rows.columns(), ["id", "name"]);
    /// ```
    pub fn columns(&self) -> &[String] {
        &self.columns
    }

    /// The number of rows.
    ///
    /// ```
    /// use pgevents_plugin_sdk::sql::{Rows, Value};
    ///
    /// let rows = Rows::new(vec!["n".into()], vec![vec![Value::Int(1)], vec![Value::Int(2)]]);
    /// assert_eq!(rows.len(), 2);
    /// ```
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether the query returned no rows.
    ///
    /// ```
    /// use pgevents_plugin_sdk::sql::Rows;
    ///
    /// assert!(Rows::new(vec!["n".into()], Vec::new()).is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The row at `index`, or `None` past the end.
    ///
    /// ```
    /// use pgevents_plugin_sdk::sql::{Rows, Value};
    ///
    /// let rows = Rows::new(vec!["n".into()], vec![vec![Value::Int(7)]]);
    /// assert_eq!(rows.row(0).unwrap().get::<i64>("n")?, 7);
    /// assert!(rows.row(1).is_none());
    /// # Ok::<(), pgevents_plugin_sdk::sql::ColumnError>(())
    /// ```
    pub fn row(&self, index: usize) -> Option<Row<'_>> {
        self.rows.get(index).map(|values| Row {
            columns: &self.columns,
            values,
        })
    }

    /// Each row decoded into `T` with serde: the row is a map from column
    /// name to value, so a struct's fields match columns by name (a later
    /// column of the same name wins) and `Option` fields take nulls. Integers,
    /// floats, booleans and text decode as themselves (a `numeric` is text:
    /// read it as [`Decimal`](crate::types::Decimal) or `String`), `json`
    /// columns as the JSON they hold, `bytea` as a list of bytes, and a
    /// float NaN or infinity as the text `"NaN"`, `"inf"` or `"-inf"`.
    ///
    /// ```
    /// use pgevents_plugin_sdk::sql::{Rows, Value};
    /// use pgevents_plugin_sdk::types::Decimal;
    /// use serde::Deserialize;
    ///
    /// #[derive(Deserialize)]
    /// struct Order {
    ///     id: i64,
    ///     total: Decimal,
    ///     note: Option<String>,
    ///     meta: serde_json::Value,
    /// }
    ///
    /// let rows = Rows::new(
    ///     vec!["id".into(), "total".into(), "note".into(), "meta".into()],
    ///     vec![vec![Value::Int(7), Value::from("12345678901234567890.01"), Value::Null, Value::Json(r#"{"rush":true}"#.into())]],
    /// );
    /// let orders: Vec<Order> = rows.decode()?;
    /// assert_eq!(orders[0].id, 7);
    /// assert_eq!(orders[0].total.as_str(), "12345678901234567890.01");
    /// assert_eq!(orders[0].note, None);
    /// assert_eq!(orders[0].meta["rush"], true);
    /// # Ok::<(), pgevents_plugin_sdk::sql::QueryError>(())
    /// ```
    pub fn decode<T: DeserializeOwned>(&self) -> Result<Vec<T>, QueryError> {
        let mut out = Vec::with_capacity(self.rows.len());
        let mut json = String::new();
        for (row, values) in self.rows.iter().enumerate() {
            json.clear();
            json.push('{');
            for (i, (column, value)) in self.columns.iter().zip(values).enumerate() {
                if i > 0 {
                    json.push(',');
                }
                json.push_str(&serde_json::to_string(column).unwrap_or_default());
                json.push(':');
                push_json(&mut json, value);
            }
            json.push('}');
            let decoded =
                serde_json::from_str(&json).map_err(|error| QueryError::Decode { row, error })?;
            out.push(decoded);
        }
        Ok(out)
    }

    /// The rows, in result order.
    ///
    /// ```
    /// use pgevents_plugin_sdk::sql::{Rows, Value};
    ///
    /// let rows = Rows::new(vec!["n".into()], vec![vec![Value::Int(1)], vec![Value::Int(2)]]);
    /// let total: i64 = rows.iter().map(|row| row.get::<i64>("n")).sum::<Result<_, _>>()?;
    /// assert_eq!(total, 3);
    /// # Ok::<(), pgevents_plugin_sdk::sql::ColumnError>(())
    /// ```
    pub fn iter(&self) -> Iter<'_> {
        Iter {
            columns: &self.columns,
            rows: self.rows.iter(),
        }
    }
}

impl<'a> IntoIterator for &'a Rows {
    type Item = Row<'a>;
    type IntoIter = Iter<'a>;

    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

/// Iterator over the [`Row`]s of [`Rows`], from [`Rows::iter`] or `for row in &rows`.
///
/// ```
/// use pgevents_plugin_sdk::sql::{Rows, Value};
///
/// let rows = Rows::new(vec!["n".into()], vec![vec![Value::Int(1)], vec![Value::Int(2)]]);
/// let mut iter = rows.iter();
/// assert_eq!(iter.len(), 2);
/// assert_eq!(iter.next_back().unwrap().get::<i64>("n")?, 2);
/// # Ok::<(), pgevents_plugin_sdk::sql::ColumnError>(())
/// ```
#[derive(Debug, Clone)]
pub struct Iter<'a> {
    columns: &'a [String],
    rows: std::slice::Iter<'a, Vec<Value>>,
}

impl<'a> Iter<'a> {
    fn view(&self, values: &'a [Value]) -> Row<'a> {
        Row {
            columns: self.columns,
            values,
        }
    }
}

impl<'a> Iterator for Iter<'a> {
    type Item = Row<'a>;

    fn next(&mut self) -> Option<Row<'a>> {
        self.rows.next().map(|values| self.view(values))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.rows.size_hint()
    }
}

impl DoubleEndedIterator for Iter<'_> {
    fn next_back(&mut self) -> Option<Self::Item> {
        self.rows.next_back().map(|values| self.view(values))
    }
}

impl ExactSizeIterator for Iter<'_> {}

/// One row of [`Rows`]: read its columns by name with [`Row::get`].
///
/// ```
/// use pgevents_plugin_sdk::sql::{Rows, Value};
///
/// let rows = Rows::new(vec!["id".into(), "note".into()], vec![vec![Value::Int(1), Value::Null]]);
/// for row in &rows {
///     let id: i64 = row.get("id")?;
///     let note: Option<String> = row.get("note")?;
///     assert_eq!((id, note), (1, None));
/// }
/// # Ok::<(), pgevents_plugin_sdk::sql::ColumnError>(())
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Row<'a> {
    columns: &'a [String],
    values: &'a [Value],
}

impl<'a> Row<'a> {
    /// The value of `column` converted to `T`: any type implementing
    /// [`FromValue`], such as `i64`, `String`, `bool`, or `Option<T>` for a
    /// column that may be null.
    ///
    /// Fails if there is no such column or its value does not convert.
    ///
    /// ```
    /// use pgevents_plugin_sdk::sql::{Rows, Value};
    ///
    /// let rows = Rows::new(vec!["id".into()], vec![vec![Value::Int(7)]]);
    /// let row = rows.row(0).unwrap();
    /// assert_eq!(row.get::<i64>("id")?, 7);
    /// assert!(row.get::<String>("id").is_err());
    /// assert!(row.get::<i64>("missing").is_err());
    /// # Ok::<(), pgevents_plugin_sdk::sql::ColumnError>(())
    /// ```
    pub fn get<T: FromValue>(&self, column: &str) -> Result<T, ColumnError> {
        let value = self.value(column).ok_or_else(|| ColumnError::Missing {
            column: column.to_owned(),
        })?;
        T::from_value(value).ok_or_else(|| ColumnError::WrongType {
            column: column.to_owned(),
            found: value.kind(),
            wanted: std::any::type_name::<T>(),
        })
    }

    /// The raw value of `column`, or `None` if there is no such column.
    ///
    /// ```
    /// use pgevents_plugin_sdk::sql::{Rows, Value};
    ///
    /// let rows = Rows::new(vec!["payload".into()], vec![vec![Value::Json("{}".into())]]);
    /// let row = rows.row(0).unwrap();
    /// assert_eq!(row.value("payload"), Some(&Value::Json("{}".into())));
    /// assert_eq!(row.value("other"), None);
    /// ```
    pub fn value(&self, column: &str) -> Option<&'a Value> {
        let index = self.columns.iter().position(|name| name == column)?;
        self.values.get(index)
    }

    /// All values of the row, in column order.
    ///
    /// ```
    /// use pgevents_plugin_sdk::sql::{Rows, Value};
    ///
    /// let rows = Rows::new(vec!["a".into(), "b".into()], vec![vec![Value::Int(1), Value::Null]]);
    /// assert_eq!(rows.row(0).unwrap().values(), [Value::Int(1), Value::Null]);
    /// ```
    pub fn values(&self) -> &'a [Value] {
        self.values
    }
}

/// Why [`Row::get`] could not read a column.
///
/// ```
/// use pgevents_plugin_sdk::sql::{ColumnError, Rows, Value};
///
/// let rows = Rows::new(vec!["id".into()], vec![vec![Value::Null]]);
/// let err = rows.row(0).unwrap().get::<i64>("id").unwrap_err();
/// assert!(matches!(err, ColumnError::WrongType { found: "null", .. }));
/// assert_eq!(err.to_string(), r#"column "id" holds null, which does not convert to i64"#);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ColumnError {
    /// The result has no column of that name.
    Missing {
        /// The name asked for.
        column: String,
    },
    /// The column's value does not convert to the requested type (for
    /// example a null read as `i64` rather than `Option<i64>`).
    WrongType {
        /// The name asked for.
        column: String,
        /// The [`Value::kind`] found.
        found: &'static str,
        /// The Rust type asked for.
        wanted: &'static str,
    },
}

impl fmt::Display for ColumnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ColumnError::Missing { column } => write!(f, "no column named {column:?}"),
            ColumnError::WrongType {
                column,
                found,
                wanted,
            } => write!(
                f,
                "column {column:?} holds {found}, which does not convert to {wanted}"
            ),
        }
    }
}

impl std::error::Error for ColumnError {}

/// A Rust type a [`Value`] can be read as, with [`Row::get`].
///
/// | type                 | reads                                         |
/// |----------------------|-----------------------------------------------|
/// | `i64`, `i32`, `i16`, `u32`, `u64` | `int`, if it is in range         |
/// | `f64`                | `float`                                       |
/// | `bool`               | `boolean`                                     |
/// | `String`             | `text`, or `json` as its JSON text            |
/// | `serde_json::Value`  | `json`                                        |
/// | `Vec<u8>`            | `bytes`                                       |
/// | `Option<T>`          | `null` as `None`, else as `T`                 |
/// | `Value`              | anything                                      |
///
/// ```
/// use pgevents_plugin_sdk::sql::{FromValue, Value};
///
/// assert_eq!(i32::from_value(&Value::Int(7)), Some(7));
/// assert_eq!(i16::from_value(&Value::Int(1 << 20)), None);
/// assert_eq!(Option::<bool>::from_value(&Value::Null), Some(None));
/// ```
pub trait FromValue: Sized {
    /// Converts `value`, or `None` if it does not fit this type.
    ///
    /// ```
    /// use pgevents_plugin_sdk::sql::{FromValue, Value};
    ///
    /// struct Cents(i64);
    ///
    /// impl FromValue for Cents {
    ///     fn from_value(value: &Value) -> Option<Self> {
    ///         i64::from_value(value).map(Cents)
    ///     }
    /// }
    ///
    /// assert_eq!(Cents::from_value(&Value::Int(250)).map(|c| c.0), Some(250));
    /// ```
    fn from_value(value: &Value) -> Option<Self>;
}

macro_rules! from_int {
    ($($ty:ty),*) => {
        $(
            impl FromValue for $ty {
                fn from_value(value: &Value) -> Option<Self> {
                    match value {
                        Value::Int(v) => <$ty>::try_from(*v).ok(),
                        _ => None,
                    }
                }
            }
        )*
    };
}

from_int!(i64, i32, i16, u32, u64);

impl FromValue for f64 {
    fn from_value(value: &Value) -> Option<Self> {
        match value {
            Value::Float(v) => Some(*v),
            _ => None,
        }
    }
}

impl FromValue for bool {
    fn from_value(value: &Value) -> Option<Self> {
        match value {
            Value::Boolean(v) => Some(*v),
            _ => None,
        }
    }
}

impl FromValue for String {
    fn from_value(value: &Value) -> Option<Self> {
        match value {
            Value::Text(v) | Value::Json(v) => Some(v.clone()),
            _ => None,
        }
    }
}

impl FromValue for serde_json::Value {
    fn from_value(value: &Value) -> Option<Self> {
        match value {
            Value::Json(v) => serde_json::from_str(v).ok(),
            _ => None,
        }
    }
}

impl FromValue for Vec<u8> {
    fn from_value(value: &Value) -> Option<Self> {
        match value {
            Value::Bytes(v) => Some(v.clone()),
            _ => None,
        }
    }
}

impl<T: FromValue> FromValue for Option<T> {
    fn from_value(value: &Value) -> Option<Self> {
        match value {
            Value::Null => Some(None),
            value => T::from_value(value).map(Some),
        }
    }
}

impl FromValue for Value {
    fn from_value(value: &Value) -> Option<Self> {
        Some(value.clone())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn rows_decode_by_column_name_keeping_json_digits_and_naming_the_bad_row() {
        #[derive(serde::Deserialize, Debug)]
        struct R {
            n: i64,
            f: Option<f64>,
            t: String,
            j: Box<serde_json::value::RawValue>,
            b: Vec<u8>,
            ok: bool,
        }
        let columns = ["n", "f", "t", "j", "b", "ok"].map(String::from).to_vec();
        let row = |n: i64, t: &str| {
            vec![
                Value::Int(n),
                Value::Null,
                Value::from(t),
                Value::Json(r#"{"big":123456789012345678901234567890}"#.into()),
                Value::Bytes(vec![0, 255]),
                Value::Boolean(true),
            ]
        };
        let rows = Rows::new(columns.clone(), vec![row(1, "a\"\u{0}"), row(i64::MIN, "")]);
        let decoded: Vec<R> = rows.decode().unwrap();
        assert_eq!(decoded[0].t, "a\"\u{0}");
        assert_eq!(decoded[1].n, i64::MIN);
        assert_eq!(
            decoded[0].j.get(),
            r#"{"big":123456789012345678901234567890}"#
        );
        assert_eq!(decoded[0].b, [0, 255]);
        assert!(decoded[0].ok && decoded[0].f.is_none());

        let mut bad = row(3, "x");
        bad[1] = Value::Float(f64::NAN);
        let rows = Rows::new(columns, vec![row(1, "a"), bad]);
        let err = rows.decode::<R>().unwrap_err();
        assert!(matches!(err, QueryError::Decode { row: 1, .. }), "{err}");
        assert!(
            err.to_string()
                .starts_with("row 1 of the result does not decode"),
            "{err}"
        );
    }

    #[test]
    fn only_passing_sqlstates_are_transient() {
        for code in [
            "08006", "40001", "40P01", "53300", "57014", "55P03", "58000", "58030", "XX000",
        ] {
            assert!(SqlError::new(code, "").is_transient(), "{code}");
        }
        for code in ["23505", "42501", "42P01", "22P02", "", "5"] {
            assert!(!SqlError::new(code, "").is_transient(), "{code}");
        }
    }

    use super::*;

    #[test]
    fn params_convert_to_the_matching_case() {
        assert_eq!(Value::from(true), Value::Boolean(true));
        assert_eq!(Value::from(-3_i16), Value::Int(-3));
        assert_eq!(Value::from(u32::MAX), Value::Int(i64::from(u32::MAX)));
        assert_eq!(Value::from(2.5), Value::Float(2.5));
        assert_eq!(Value::from(String::from("x")), Value::Text("x".into()));
        assert_eq!(Value::from(&[1_u8, 2][..]), Value::Bytes(vec![1, 2]));
        assert_eq!(Value::from(Some("x")), Value::Text("x".into()));
        assert_eq!(Value::from(None::<String>), Value::Null);
    }

    #[test]
    fn off_wasm_statements_fail_with_58000() {
        let err = execute("SELECT 1", &[]).unwrap_err();
        assert_eq!(err.sqlstate, "58000");
        assert!(
            err.to_string()
                .starts_with("SQLSTATE 58000: sql::execute works only inside")
        );
        assert_eq!(query("SELECT 1", &[]).unwrap_err().sqlstate, "58000");
    }

    #[test]
    fn get_reports_missing_and_mistyped_columns() {
        let rows = Rows::new(
            vec!["id".into(), "doc".into()],
            vec![vec![Value::Int(-1), Value::Json(r#"{"a":1}"#.into())]],
        );
        let row = rows.row(0).unwrap();
        assert_eq!(
            row.get::<serde_json::Value>("doc").unwrap(),
            serde_json::json!({"a": 1})
        );
        assert_eq!(row.get::<String>("doc").unwrap(), r#"{"a":1}"#);
        assert!(matches!(
            row.get::<u64>("id"),
            Err(ColumnError::WrongType { found: "int", .. })
        ));
        assert_eq!(
            row.get::<i64>("nope"),
            Err(ColumnError::Missing {
                column: "nope".into()
            })
        );
        assert_eq!(rows.iter().rev().len(), 1);
    }
}
