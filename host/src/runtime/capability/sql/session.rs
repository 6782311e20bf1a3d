//! The session a plugin's `sql` calls run on: logged in as the granted role,
//! one statement at a time under a savepoint, inside the batch transaction
//! that the host commits together with the plugin's acknowledgement.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use postgres_types::ToSql;
use tokio_postgres::{Client, NoTls, Statement};

use super::codec::{Raw, TextParam, decode};
use super::lexer::first_word_refused;
use super::{SqlAccess, SqlFailure, SqlGrant, SqlRows, SqlValue};
use crate::db;
use crate::db::sqlstate::{HOST_ERROR, REFUSED};
use crate::runtime::{Outcome, Retry};
use crate::schema::SCHEMA;

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
    /// Log in as the grant's role (see [`grant_acknowledgement`]
    /// for what the host grants it). Statements time out after `timeout`.
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

    /// Acknowledge the batch in its transaction with `ack` (the log's
    /// acknowledgement, run on this session's client) and commit. Deferred
    /// constraints are checked and the plugin's `SET LOCAL`s undone first, so
    /// that their errors come out here, with a SQLSTATE. Returns false
    /// (nothing committed; roll back) if the acknowledgement was refused.
    /// An error says whether it is the batch's (checking its constraints or
    /// committing what it wrote) or the host's (its acknowledgement).
    pub async fn acknowledge_and_commit(
        &self,
        ack: impl AsyncFnOnce(&Client) -> Result<bool, tokio_postgres::Error>,
    ) -> Result<bool, CommitError> {
        let batch = |error| CommitError { error, batch: true };
        self.client
            .batch_execute(&format!(
                "SET CONSTRAINTS ALL IMMEDIATE; SET LOCAL statement_timeout = {}",
                self.timeout.as_millis().max(1)
            ))
            .await
            .map_err(batch)?;
        let acked = ack(&self.client).await.map_err(|error| CommitError {
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

/// Let the grant's role acknowledge its plugin's batches: `USAGE` on the
/// host's schema and `EXECUTE` on the acknowledgement functions and `record_messages` (which
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
    let role = crate::schema::quote_ident(&grant.role);
    tx.batch_execute(&format!(
            "GRANT USAGE ON SCHEMA {SCHEMA} TO {role};
             GRANT EXECUTE ON FUNCTION {SCHEMA}.ack(text, int, int, uuid, bigint, bigint, bigint) TO {role};
             GRANT EXECUTE ON FUNCTION {SCHEMA}.settle_dead_letters(text, int, uuid, bigint[]) TO {role};
             GRANT EXECUTE ON FUNCTION {SCHEMA}.record_messages(text, int, uuid, uuid[], text[], text[], text[], bytea[], jsonb[]) TO {role};"
    ))
    .await
    .map_err(failed)?;
    tx.commit().await.map_err(failed)
}
