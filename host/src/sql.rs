//! The `sql` capability: a plugin's statements run on a session logged in as
//! the role the operator named, inside the transaction that also moves the
//! plugin's cursor (see `dispatch.rs`). Ordinary PostgreSQL privileges bound
//! what a plugin can read and write: the session user *is* that role, so no
//! `RESET ROLE` or `set_config` can widen them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::BytesMut;
use postgres_types::{Format, FromSql, IsNull, ToSql, Type, to_sql_checked};
use tokio_postgres::{Client, NoTls, Statement};

use crate::config::{SCHEMA, SqlGrant};
use crate::db;
use crate::runtime::{Outcome, Retry, SqlAccess, SqlFailure, SqlRows, SqlValue};
use crate::schema::quote_ident;

use crate::db::sqlstate::{HOST_ERROR, REFUSED};
/// Prepared statements kept per session.
const STATEMENT_CACHE_SIZE: usize = 100;

#[derive(Debug, thiserror::Error)]
pub enum SqlSessionError {
    #[error(
        "plugin `{plugin}`: cannot log in as role `{role}` for its sql capability: {message} \
         (create the role with LOGIN, or give its URL as `url` in the plugin's `sql` config)"
    )]
    Login {
        plugin: String,
        role: String,
        message: String,
    },
    #[error("plugin `{plugin}`: {message}")]
    Db { plugin: String, message: String },
}

/// One deliverer's session as the plugin's role.
pub struct SqlSession {
    client: Arc<Client>,
    handle: tokio::runtime::Handle,
    statements: Mutex<HashMap<String, Statement>>,
    /// When the current plugin call's time is up: statements get what is left.
    deadline: Mutex<Instant>,
    /// A statement was abandoned (timed out): the transaction cannot commit.
    poisoned: AtomicBool,
    timeout: Duration,
    plugin: String,
}

impl std::fmt::Debug for SqlSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlSession")
            .field("plugin", &self.plugin)
            .finish_non_exhaustive()
    }
}

impl SqlSession {
    /// Log in as the grant's role (see [`grant_acknowledgement`] for what the
    /// host grants it). Statements time out after `timeout`.
    pub async fn open(
        host_url: &str,
        plugin: &str,
        grant: &SqlGrant,
        timeout: Duration,
    ) -> Result<SqlSession, SqlSessionError> {
        let login = |message: String| SqlSessionError::Login {
            plugin: plugin.to_owned(),
            role: grant.role.clone(),
            message,
        };
        let config = match &grant.url {
            Some(url) => url
                .parse()
                .map_err(|e: tokio_postgres::Error| login(db::error_text(&e)))?,
            None => {
                // The host's server and database, as the role, without the host's password.
                let host: tokio_postgres::Config = host_url
                    .parse()
                    .map_err(|e: tokio_postgres::Error| login(db::error_text(&e)))?;
                let mut config = tokio_postgres::Config::new();
                for h in host.get_hosts() {
                    match h {
                        tokio_postgres::config::Host::Tcp(name) => config.host(name),
                        tokio_postgres::config::Host::Unix(path) => config.host_path(path),
                    };
                }
                for port in host.get_ports() {
                    config.port(*port);
                }
                if let Some(dbname) = host.get_dbname() {
                    config.dbname(dbname);
                }
                if let Some(t) = host.get_connect_timeout() {
                    config.connect_timeout(*t);
                }
                config.ssl_mode(host.get_ssl_mode());
                config.user(&grant.role);
                config
            }
        };
        let (client, connection) = config
            .connect(NoTls)
            .await
            .map_err(|e| login(db::error_text(&e)))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!("sql session ended: {}", db::error_text(&e));
            }
        });
        // The session must be the granted role itself, and not one that
        // bypasses privileges (a URL could name another user).
        let who = client
            .query_one(
                "SELECT session_user::text, r.rolsuper FROM pg_catalog.pg_roles r WHERE r.rolname = session_user",
                &[],
            )
            .await
            .map_err(|e| login(db::error_text(&e)))?;
        let (user, superuser): (String, bool) = (who.get(0), who.get(1));
        if user != grant.role {
            return Err(login(format!(
                "its URL logs in as `{user}`, not as the role"
            )));
        }
        if superuser {
            return Err(login(
                "the role is a superuser, so its privileges would bound nothing; use an ordinary role".into(),
            ));
        }
        client
            .batch_execute(&format!(
                "SET application_name = {}; SET statement_timeout = {}",
                crate::schema::quote_literal(&application_name(plugin)),
                timeout.as_millis().max(1)
            ))
            .await
            .map_err(|e| login(db::error_text(&e)))?;
        Ok(SqlSession {
            client: Arc::new(client),
            handle: tokio::runtime::Handle::current(),
            statements: Mutex::new(HashMap::new()),
            deadline: Mutex::new(Instant::now() + timeout),
            poisoned: AtomicBool::new(false),
            timeout,
            plugin: plugin.to_owned(),
        })
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Open the batch transaction for a plugin call that may take `budget`.
    pub async fn begin(&self, budget: Duration) -> Result<(), tokio_postgres::Error> {
        *self.deadline.lock().expect("deadline") = Instant::now() + budget;
        self.poisoned.store(false, Ordering::SeqCst);
        self.client.batch_execute("BEGIN").await
    }

    /// A call that returned success after one of its statements was abandoned
    /// has not succeeded: the transaction is broken, and the plugin may not
    /// have known. Counted as a failure of the batch.
    pub fn checked(&self, outcome: Outcome) -> Outcome {
        if outcome == Outcome::Handled && self.poisoned.load(Ordering::SeqCst) {
            return Outcome::Failed {
                index: 0,
                retry: Retry::Backoff,
                message: "a sql statement ran out of time, so the batch transaction was abandoned"
                    .into(),
            };
        }
        outcome
    }

    /// Acknowledge `to` for `stream` in the batch transaction and commit.
    /// Deferred constraints are checked and the plugin's `SET LOCAL`s undone
    /// first, so that their errors come out here, with a SQLSTATE. Returns
    /// false (nothing committed; roll back) if the acknowledgement was refused.
    /// An error says whether it is the batch's (checking its constraints or
    /// committing what it wrote) or the host's (its acknowledgement).
    pub async fn acknowledge_and_commit(
        &self,
        stream: &crate::log::Stream,
        to: crate::log::Position,
    ) -> Result<bool, CommitError> {
        let batch = |error| CommitError { error, batch: true };
        self.client
            .batch_execute(&format!(
                "SET CONSTRAINTS ALL IMMEDIATE; SET LOCAL statement_timeout = {}",
                self.timeout.as_millis().max(1)
            ))
            .await
            .map_err(batch)?;
        let acked = crate::log::ack_with(&*self.client, None, stream, to)
            .await
            .map_err(|error| CommitError {
                error,
                batch: false,
            })?;
        if !acked {
            return Ok(false);
        }
        self.client.batch_execute("COMMIT").await.map_err(batch)?;
        // Committed: an error from here on is the connection's, not the batch's.
        if let Err(e) = self.unlock_all().await {
            tracing::debug!("after commit: {}", db::error_text(&e));
        }
        Ok(true)
    }

    // Session-level advisory locks a plugin took are released after every
    // batch: one batch's locks must not outlive it (the host's own
    // coordination takes none a plugin could hold against it). Apart
    // from the COMMIT, so that an error of the unlock is never taken for a
    // failed commit (the batch would be applied again).
    pub async fn commit(&self) -> Result<(), tokio_postgres::Error> {
        self.client.batch_execute("COMMIT").await?;
        self.unlock_all().await
    }

    pub async fn rollback(&self) -> Result<(), tokio_postgres::Error> {
        self.client.batch_execute("ROLLBACK").await?;
        self.unlock_all().await
    }

    async fn unlock_all(&self) -> Result<(), tokio_postgres::Error> {
        self.client
            .batch_execute("SELECT pg_catalog.pg_advisory_unlock_all()")
            .await
            .inspect_err(|e| {
                tracing::warn!(plugin = %self.plugin, "releasing the plugin's advisory locks failed: {}", db::error_text(e));
            })
    }

    /// Run one statement under a savepoint, from the plugin's (blocking) thread.
    fn run<R>(
        &self,
        statement: &str,
        params: &[SqlValue],
        go: impl AsyncFnOnce(
            &Client,
            &Statement,
            &[&(dyn ToSql + Sync)],
        ) -> Result<R, tokio_postgres::Error>,
    ) -> Result<R, SqlFailure> {
        if let Some(word) = first_word_refused(statement) {
            let why = if word == "COPY" {
                "there is no COPY data channel for plugins; use INSERT ... SELECT or a statement with parameters"
            } else {
                "the host owns the batch transaction (each statement already runs under its own savepoint)"
            };
            return Err(SqlFailure {
                sqlstate: REFUSED.code().into(),
                message: format!("`{word}` is refused: {why}"),
            });
        }
        let params: Vec<TextParam> = params.iter().map(TextParam::from).collect();
        let refs: Vec<&(dyn ToSql + Sync)> =
            params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
        let client = self.client.clone();
        let cached = self
            .statements
            .lock()
            .expect("cache")
            .get(statement)
            .cloned();
        let work = async {
            // The savepoint first: a statement that fails to prepare (a typo,
            // a missing table) must undo only itself, not abort the batch.
            client.batch_execute("SAVEPOINT pgevents_statement").await?;
            let result = async {
                let prepared = match cached {
                    Some(s) => s,
                    None => {
                        let s = client.prepare(statement).await?;
                        let mut cache = self.statements.lock().expect("cache");
                        if cache.len() >= STATEMENT_CACHE_SIZE {
                            cache.clear();
                        }
                        cache.insert(statement.to_owned(), s.clone());
                        s
                    }
                };
                go(&client, &prepared, &refs).await
            }
            .await;
            match result {
                Ok(r) => {
                    client
                        .batch_execute("RELEASE SAVEPOINT pgevents_statement")
                        .await?;
                    Ok(r)
                }
                Err(e) => {
                    client
                        .batch_execute("ROLLBACK TO SAVEPOINT pgevents_statement")
                        .await?;
                    Err(e)
                }
            }
        };
        if self.poisoned.load(Ordering::SeqCst) {
            return Err(SqlFailure {
                sqlstate: HOST_ERROR.code().into(),
                message:
                    "an earlier statement of this batch ran out of time; the batch will be retried"
                        .into(),
            });
        }
        let left = self
            .deadline
            .lock()
            .expect("deadline")
            .saturating_duration_since(Instant::now());
        let cancel = self.client.cancel_token();
        self.handle.block_on(async {
            match tokio::time::timeout(left, work).await {
                Ok(result) => result.map_err(|e| failure(&e)),
                Err(_) => {
                    self.poisoned.store(true, Ordering::SeqCst);
                    let _ = cancel.cancel_query(NoTls).await;
                    Err(SqlFailure {
                        sqlstate: HOST_ERROR.code().into(),
                        message: "statement ran out of the plugin call's time (the handle timeout)"
                            .into(),
                    })
                }
            }
        })
    }
}

impl SqlAccess for SqlSession {
    fn query(&self, statement: &str, params: &[SqlValue]) -> Result<SqlRows, SqlFailure> {
        let rows = self.run(statement, params, async |client, s, p| {
            client.query(s, p).await
        })?;
        let columns: Vec<String> = match rows.first() {
            Some(row) => row.columns().iter().map(|c| c.name().to_owned()).collect(),
            None => Vec::new(),
        };
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let mut values = Vec::with_capacity(row.len());
            for (i, column) in row.columns().iter().enumerate() {
                let raw: Option<Raw> = row.get(i);
                values.push(decode(column.name(), column.type_(), raw)?);
            }
            out.push(values);
        }
        Ok(SqlRows { columns, rows: out })
    }

    fn execute(&self, statement: &str, params: &[SqlValue]) -> Result<u64, SqlFailure> {
        self.run(statement, params, async |client, s, p| {
            client.execute(s, p).await
        })
    }
}

/// The first word of `statement` if it controls the transaction, or is
/// COPY (no data channel for plugins; `COPY ... FROM STDIN` would wait for
/// data the session never sends). Leading whitespace and comments are
/// skipped as PostgreSQL's lexer does: any of
/// space, tab, CR, LF, form feed and vertical tab; `--` up to CR or LF;
/// nested `/* */`. (A statement that hides transaction control anywhere else
/// is rejected by the server inside our transaction block, or is refused by
/// the extended protocol, which takes one statement only.)
fn first_word_refused(statement: &str) -> Option<String> {
    let bytes = statement.as_bytes();
    let mut i = 0;
    loop {
        match bytes.get(i..) {
            Some([b' ' | b'\t' | b'\n' | b'\r' | 0x0c | 0x0b, ..]) => i += 1,
            Some([b'-', b'-', ..]) => {
                while i < bytes.len() && bytes[i] != b'\n' && bytes[i] != b'\r' {
                    i += 1;
                }
            }
            Some([b'/', b'*', ..]) => {
                let mut depth = 0;
                while i < bytes.len() {
                    if bytes[i..].starts_with(b"/*") {
                        depth += 1;
                        i += 2;
                    } else if bytes[i..].starts_with(b"*/") {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
            }
            _ => break,
        }
    }
    let word: String = statement[i..]
        .chars()
        .take_while(|c| c.is_ascii_alphabetic())
        .collect::<String>()
        .to_ascii_uppercase();
    const CONTROL: &[&str] = &[
        "BEGIN",
        "START",
        "COMMIT",
        "END",
        "ROLLBACK",
        "ABORT",
        "SAVEPOINT",
        "RELEASE",
        "PREPARE",
        "COPY",
    ];
    CONTROL.contains(&word.as_str()).then_some(word)
}

/// A failed commit of a batch's sql transaction.
#[derive(Debug)]
pub struct CommitError {
    pub error: tokio_postgres::Error,
    /// It happened while the batch's own work was checked or committed (not
    /// in the host's acknowledgement).
    pub batch: bool,
}

/// The `application_name` of `plugin`'s sql session: events its writes
/// cause carry it.
pub fn application_name(plugin: &str) -> String {
    let mut name = format!("pgevents-host sql {plugin}");
    // As the server keeps it: at most 63 bytes (plugin names are ASCII).
    name.truncate(63);
    name
}

/// Let the grant's role acknowledge its plugin's batches: `USAGE` on the
/// host's schema and `EXECUTE` on the two acknowledgement functions (which
/// demand a lease token that only the host knows). Done by the host's session
/// `client` before each sql session opens (so a role created after the host
/// started works), under the install lock: concurrent GRANTs on one object fail.
pub async fn grant_acknowledgement(
    client: &mut Client,
    plugin: &str,
    grant: &SqlGrant,
) -> Result<(), SqlSessionError> {
    let failed = |e: tokio_postgres::Error| SqlSessionError::Login {
        plugin: plugin.to_owned(),
        role: grant.role.clone(),
        message: db::error_text(&e),
    };
    let tx = client.transaction().await.map_err(failed)?;
    crate::schema::lock_install(&tx).await.map_err(failed)?;
    let role = quote_ident(&grant.role);
    tx.batch_execute(&format!(
            "GRANT USAGE ON SCHEMA {SCHEMA} TO {role};
             GRANT EXECUTE ON FUNCTION {SCHEMA}.ack(text, int, int, uuid, bigint, bigint, bigint) TO {role};
             GRANT EXECUTE ON FUNCTION {SCHEMA}.settle_dead_letters(text, int, uuid, bigint[]) TO {role};"
    ))
    .await
    .map_err(failed)?;
    tx.commit().await.map_err(failed)
}

fn failure(e: &tokio_postgres::Error) -> SqlFailure {
    match e.as_db_error() {
        Some(db) => SqlFailure {
            sqlstate: db.code().code().to_owned(),
            message: match db.detail() {
                Some(detail) => format!("{} ({detail})", db.message()),
                None => db.message().to_owned(),
            },
        },
        None => SqlFailure {
            sqlstate: HOST_ERROR.code().into(),
            message: db::error_text(e),
        },
    }
}

/// A parameter in PostgreSQL's text form, so that the server parses it as
/// whatever type the statement needs (uuid, numeric, timestamptz, ...).
#[derive(Debug)]
struct TextParam(Option<String>);

impl From<&SqlValue> for TextParam {
    fn from(v: &SqlValue) -> TextParam {
        TextParam(match v {
            SqlValue::Null => None,
            SqlValue::Boolean(b) => Some(if *b { "true" } else { "false" }.into()),
            SqlValue::Int(i) => Some(i.to_string()),
            SqlValue::Float(f) if f.is_nan() => Some("NaN".into()),
            SqlValue::Float(f) if f.is_infinite() => {
                Some(if *f > 0.0 { "Infinity" } else { "-Infinity" }.into())
            }
            SqlValue::Float(f) => Some(f.to_string()),
            SqlValue::Text(s) | SqlValue::Json(s) => Some(s.clone()),
            SqlValue::Bytes(b) => {
                let mut s = String::with_capacity(2 + b.len() * 2);
                s.push_str("\\x");
                for byte in b {
                    s.push_str(&format!("{byte:02x}"));
                }
                Some(s)
            }
        })
    }
}

impl ToSql for TextParam {
    fn to_sql(
        &self,
        _ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match &self.0 {
            None => Ok(IsNull::Yes),
            Some(text) => {
                out.extend_from_slice(text.as_bytes());
                Ok(IsNull::No)
            }
        }
    }

    fn accepts(_ty: &Type) -> bool {
        true
    }

    fn encode_format(&self, _ty: &Type) -> Format {
        Format::Text
    }

    to_sql_checked!();
}

/// A result column's binary value, decoded by `decode`.
struct Raw<'a>(&'a [u8]);

impl<'a> FromSql<'a> for Raw<'a> {
    fn from_sql(
        _ty: &Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(raw))
    }

    fn accepts(_ty: &Type) -> bool {
        true
    }
}

fn decode(column: &str, ty: &Type, raw: Option<Raw>) -> Result<SqlValue, SqlFailure> {
    let Some(Raw(b)) = raw else {
        return Ok(SqlValue::Null);
    };
    let bad = || SqlFailure {
        sqlstate: HOST_ERROR.code().into(),
        message: format!("column `{column}`: malformed {ty} value"),
    };
    let be = |n: usize| -> Result<&[u8], SqlFailure> { b.get(..n).ok_or_else(bad) };
    Ok(match *ty {
        Type::BOOL => SqlValue::Boolean(be(1)?[0] != 0),
        Type::INT2 => SqlValue::Int(i16::from_be_bytes(be(2)?.try_into().unwrap()).into()),
        Type::INT4 => SqlValue::Int(i32::from_be_bytes(be(4)?.try_into().unwrap()).into()),
        Type::OID => SqlValue::Int(u32::from_be_bytes(be(4)?.try_into().unwrap()).into()),
        Type::INT8 => SqlValue::Int(i64::from_be_bytes(be(8)?.try_into().unwrap())),
        Type::FLOAT4 => SqlValue::Float(f32::from_be_bytes(be(4)?.try_into().unwrap()).into()),
        Type::FLOAT8 => SqlValue::Float(f64::from_be_bytes(be(8)?.try_into().unwrap())),
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN => {
            SqlValue::Text(String::from_utf8(b.to_vec()).map_err(|_| bad())?)
        }
        Type::JSON => SqlValue::Json(String::from_utf8(b.to_vec()).map_err(|_| bad())?),
        // jsonb's binary form is a version byte, then the text.
        Type::JSONB => SqlValue::Json(
            String::from_utf8(b.get(1..).ok_or_else(bad)?.to_vec()).map_err(|_| bad())?,
        ),
        Type::BYTEA => SqlValue::Bytes(b.to_vec()),
        Type::UUID => SqlValue::Text(
            uuid::Uuid::from_slice(be(16)?)
                .map_err(|_| bad())?
                .to_string(),
        ),
        Type::NUMERIC => SqlValue::Text(numeric_text(b).ok_or_else(bad)?),
        Type::TIMESTAMPTZ | Type::TIMESTAMP => {
            let micros = i64::from_be_bytes(be(8)?.try_into().unwrap());
            let text = timestamp_text(micros).ok_or_else(|| unsupported(column, ty))?;
            SqlValue::Text(if *ty == Type::TIMESTAMP {
                text.trim_end_matches('Z').to_owned()
            } else {
                text
            })
        }
        _ => return Err(unsupported(column, ty)),
    })
}

fn unsupported(column: &str, ty: &Type) -> SqlFailure {
    SqlFailure {
        sqlstate: REFUSED.code().into(),
        message: format!(
            "column `{column}` has type {ty}, which the sql capability does not return; cast it to text in the query (`{column}::text`)"
        ),
    }
}

/// PostgreSQL's binary numeric as decimal text (exact).
fn numeric_text(b: &[u8]) -> Option<String> {
    let word =
        |i: usize| -> Option<u16> { Some(u16::from_be_bytes(b.get(i..i + 2)?.try_into().ok()?)) };
    let ndigits = word(0)? as usize;
    let weight = word(2)? as i16 as i32;
    let sign = word(4)?;
    let dscale = word(6)? as usize;
    match sign {
        0xC000 => return Some("NaN".into()),
        0xD000 => return Some("Infinity".into()),
        0xF000 => return Some("-Infinity".into()),
        _ => {}
    }
    let digits: Vec<u16> = (0..ndigits)
        .map(|i| word(8 + 2 * i))
        .collect::<Option<_>>()?;
    let digit = |i: i32| -> u16 {
        if i < 0 {
            0
        } else {
            digits.get(i as usize).copied().unwrap_or(0)
        }
    };
    let mut text = String::new();
    if sign == 0x4000 {
        text.push('-');
    }
    if weight < 0 {
        text.push('0');
    } else {
        for i in 0..=weight {
            if i == 0 {
                text.push_str(&digit(i).to_string());
            } else {
                text.push_str(&format!("{:04}", digit(i)));
            }
        }
    }
    if dscale > 0 {
        let mut fraction = String::new();
        let mut i = weight + 1;
        while fraction.len() < dscale {
            fraction.push_str(&format!("{:04}", digit(i)));
            i += 1;
        }
        fraction.truncate(dscale);
        text.push('.');
        text.push_str(&fraction);
    }
    Some(text)
}

/// Microseconds since 2000-01-01 UTC as RFC 3339; `None` before 1970.
fn timestamp_text(micros: i64) -> Option<String> {
    match micros {
        i64::MAX => return Some("infinity".into()),
        i64::MIN => return Some("-infinity".into()),
        _ => {}
    }
    const Y2K_UNIX_MICROS: i64 = 946_684_800_000_000;
    let unix = micros.checked_add(Y2K_UNIX_MICROS)?;
    if unix < 0 {
        return None;
    }
    let at = SystemTime::UNIX_EPOCH + Duration::from_micros(unix as u64);
    Some(humantime::format_rfc3339_micros(at).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_decodes_exactly() {
        // 12345.678: weight 1, digits [1, 2345, 6780], dscale 3
        let mut b = Vec::new();
        for w in [3u16, 1, 0, 3, 1, 2345, 6780] {
            b.extend_from_slice(&w.to_be_bytes());
        }
        assert_eq!(numeric_text(&b).unwrap(), "12345.678");
        // -0.00001: weight -2, digits [1000], dscale 5
        let mut b = Vec::new();
        for w in [1u16, (-2i16) as u16, 0x4000, 5, 1000] {
            b.extend_from_slice(&w.to_be_bytes());
        }
        assert_eq!(numeric_text(&b).unwrap(), "-0.00001");
    }

    #[test]
    fn transaction_control_is_recognised() {
        assert_eq!(first_word_refused(" commit").as_deref(), Some("COMMIT"));
        assert_eq!(
            first_word_refused("/* x */ -- y\n Rollback to s").as_deref(),
            Some("ROLLBACK")
        );
        assert_eq!(first_word_refused("INSERT INTO t VALUES (1)"), None);
        assert_eq!(
            first_word_refused("/* data */ copy t FROM STDIN").as_deref(),
            Some("COPY")
        );
        assert_eq!(first_word_refused("select 'commit'"), None);
        assert_eq!(
            first_word_refused("/* /* nested */ */ COMMIT").as_deref(),
            Some("COMMIT")
        );
        assert_eq!(
            first_word_refused("-- x\rCOMMIT").as_deref(),
            Some("COMMIT")
        );
        assert_eq!(first_word_refused("\x0b\x0cend").as_deref(), Some("END"));
    }
}
