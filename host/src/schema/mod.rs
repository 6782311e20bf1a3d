//! SQL the host installs: versioned migrations, the capture function, and the
//! trigger reconciler (`triggers.rs`).

mod triggers;

pub use triggers::{
    CaptureTrigger, ReconcileReport, TableFacts, TableProblem, by_table, reconcile_triggers,
    table_facts,
};

use tokio_postgres::{Client, GenericClient, Transaction};

/// Schema the host installs its log, cursors and capture function into (a
/// constant: the migrations name it).
pub const SCHEMA: &str = "pgevents";

/// NOTIFY channel the capture function signals (at most once per transaction:
/// PostgreSQL merges identical notifications within a transaction).
pub const NOTIFY_CHANNEL: &str = "pgevents";

/// Migrations in order; the index + 1 is the version recorded in `pgevents.migrations`.
const MIGRATIONS: &[&str] = &[
    include_str!("0001_log.sql"),
    include_str!("0002_delivery.sql"),
    include_str!("0003_reload.sql"),
    include_str!("0004_wake.sql"),
    include_str!("0005_commit_order.sql"),
    include_str!("0006_hardening.sql"),
    include_str!("0007_outbox.sql"),
    include_str!("0008_outbox_wake.sql"),
];

/// Serializes the first install across hosts sharing a database, before the
/// schema exists (after that, a table lock only the host's role can take).
const INSTALL_LOCK_KEY: i64 = 0x7067_6576_656e_7473; // "pgevents"

/// The capture function, its owner, grants and guard (see the file).
const CAPTURE_SQL: &str = include_str!("capture.sql");

/// The role that owns the capture function (migration 6).
pub const CAPTURE_ROLE: &str = "pgevents_capture";

/// How long one try for the install lock waits before the host says who
/// holds it, and tries again.
const LOCK_TRY_MS: u64 = 5_000;

#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("installing the `{SCHEMA}` schema failed at migration {version}: {message}")]
    Migration { version: usize, message: String },
    #[error(
        "the database has `{SCHEMA}` schema version {found}, newer than this host knows ({known}); upgrade pgevents-host"
    )]
    TooNew { found: i32, known: usize },
    #[error(
        "role `{CAPTURE_ROLE}`, which owns the capture function, {problem}; capture would run table owners' code with more than the right to append to the log. Make it a plain NOLOGIN role with no memberships that owns only the capture function (`REASSIGN OWNED BY {CAPTURE_ROLE} TO ...` in this database, `ALTER ROLE`, `REVOKE`)"
    )]
    CaptureRole { problem: String },
    /// A migration's statement waited too long for a lock; tried again.
    #[error("a migration could not get a lock in time: {0}")]
    Busy(String),
    #[error("database error: {0}")]
    Db(String),
}

impl From<tokio_postgres::Error> for SchemaError {
    fn from(e: tokio_postgres::Error) -> Self {
        SchemaError::Db(crate::db::error_text(&e))
    }
}

/// Serialize this transaction with every other install, trigger change and
/// registration on the database (until it ends). Once the schema exists the
/// lock is a row of `pgevents.locks`, which only the host's role may lock
/// (a row lock conflicts with no table lock another role can get by
/// parsing a statement on the table); before, an advisory lock (any role
/// could take that one: it serves the first install, and the upgrade to
/// schema 6, only). Either way the host tries for `LOCK_TRY_MS` at a time
/// and says in the log who holds it meanwhile.
pub(crate) async fn lock_install(tx: &Transaction<'_>) -> Result<(), tokio_postgres::Error> {
    let table = format!("{SCHEMA}.locks");
    let installed: bool = tx
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
        .await?
        .get(0);
    loop {
        let got = if installed {
            tx.batch_execute(&format!(
                "SAVEPOINT pgevents_lock; SET LOCAL lock_timeout = {LOCK_TRY_MS}"
            ))
            .await?;
            let locked = tx
                .batch_execute(&format!(
                    "SELECT 1 FROM {table} WHERE name = 'install' FOR UPDATE"
                ))
                .await;
            match locked {
                Ok(()) => {
                    tx.batch_execute(
                        "RELEASE SAVEPOINT pgevents_lock; SET LOCAL lock_timeout = DEFAULT",
                    )
                    .await?;
                    true
                }
                Err(e) if crate::db::sqlstate::is_lock_timeout(&e) => {
                    tx.batch_execute("ROLLBACK TO SAVEPOINT pgevents_lock")
                        .await?;
                    false
                }
                Err(e) => return Err(e),
            }
        } else {
            let got: bool = tx
                .query_one("SELECT pg_try_advisory_xact_lock($1)", &[&INSTALL_LOCK_KEY])
                .await?
                .get(0);
            if !got {
                tokio::time::sleep(std::time::Duration::from_millis(LOCK_TRY_MS / 5)).await;
            }
            got
        };
        if got {
            return Ok(());
        }
        // Who holds it (a row lock shows as the holder's transaction lock).
        let holders = tx
            .query(
                "SELECT a.pid, a.usename::text, a.application_name, a.state
                 FROM pg_stat_activity a
                 WHERE a.pid <> pg_backend_pid() AND a.datname = current_database()
                   AND a.pid = ANY (pg_blocking_pids(pg_backend_pid())
                                    || ARRAY(SELECT l.pid FROM pg_locks l
                                             WHERE l.granted AND l.locktype = 'advisory'
                                               AND l.objid = ($1 & 4294967295)::oid
                                               AND l.classid = ($1 >> 32)::oid))",
                &[&INSTALL_LOCK_KEY],
            )
            .await?;
        if holders.is_empty() {
            tracing::warn!(
                "waiting for the install lock (another host installs or registers plugins)"
            );
        }
        for h in &holders {
            tracing::warn!(
                pid = h.get::<_, i32>(0),
                user = h.get::<_, Option<String>>(1).unwrap_or_default(),
                application = h.get::<_, Option<String>>(2).unwrap_or_default(),
                state = h.get::<_, Option<String>>(3).unwrap_or_default(),
                "waiting for the install lock, which this session holds"
            );
        }
    }
}

/// The capture role must be able to do no more than migration 6 granted it:
/// a role of that name that logs in, bypasses privileges or belongs to
/// another role would lend capture (and any cast a table owner writes) its
/// power.
async fn check_capture_role(tx: &Transaction<'_>) -> Result<(), SchemaError> {
    let row = tx
        .query_opt(
            "SELECT r.rolsuper, r.rolcanlogin, r.rolcreaterole, r.rolcreatedb, r.rolreplication,
                    r.rolbypassrls,
                    EXISTS (SELECT 1 FROM pg_auth_members m WHERE m.member = r.oid),
                    EXISTS (SELECT 1 FROM pg_auth_members m WHERE m.roleid = r.oid)
             FROM pg_roles r WHERE r.rolname = $1",
            &[&CAPTURE_ROLE],
        )
        .await?;
    let Some(row) = row else {
        return Err(SchemaError::CaptureRole {
            problem: "does not exist".into(),
        });
    };
    let problems: Vec<&str> = [
        "is a superuser",
        "can log in",
        "can create roles",
        "can create databases",
        "can replicate",
        "bypasses row-level security",
        "is a member of another role",
        "has members",
    ]
    .iter()
    .enumerate()
    .filter(|(i, _)| row.get::<_, bool>(*i))
    .map(|(_, p)| *p)
    .collect();
    let mut problems: Vec<String> = problems.into_iter().map(str::to_owned).collect();
    // Large objects it was made to create (`lo_create` is a function, not
    // DDL): nothing of the host's, deleted with a warning.
    let unlinked = tx
        .query(
            "SELECT lo_unlink(m.oid) FROM pg_largeobject_metadata m
             JOIN pg_roles r ON r.oid = m.lomowner WHERE r.rolname = $1",
            &[&CAPTURE_ROLE],
        )
        .await?
        .len();
    if unlinked > 0 {
        tracing::warn!(
            count = unlinked,
            "deleted large objects owned by {CAPTURE_ROLE}: a table owner's cast made them during capture"
        );
    }
    // Anything else it owns in this database besides the capture function.
    let owns: i64 = tx
        .query_one(
            &format!(
                "SELECT count(*) FROM pg_shdepend d JOIN pg_roles r ON r.oid = d.refobjid
                 WHERE r.rolname = $1 AND d.deptype = 'o'
                   AND d.dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
                   AND d.classid <> 'pg_largeobject'::regclass
                   AND NOT (d.classid = 'pg_proc'::regclass
                            AND d.objid = '{SCHEMA}.capture()'::regprocedure)"
            ),
            &[&CAPTURE_ROLE],
        )
        .await?
        .get(0);
    if owns > 0 {
        problems.push("owns objects besides the capture function".into());
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(SchemaError::CaptureRole {
            problem: problems.join("; "),
        })
    }
}

/// `"name"` with embedded quotes doubled: safe for any identifier.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `"schema"."table"`.
pub fn quote_table(schema: &str, table: &str) -> String {
    format!("{}.{}", quote_ident(schema), quote_ident(table))
}

/// A string literal that is correct whatever `standard_conforming_strings` says.
pub fn quote_literal(value: &str) -> String {
    format!("E'{}'", value.replace('\\', "\\\\").replace('\'', "''"))
}

/// Apply every migration the database lacks, in one transaction. Idempotent;
/// concurrent hosts wait on an advisory lock. Returns the schema version.
pub async fn install(client: &mut Client) -> Result<usize, SchemaError> {
    install_up_to(client, MIGRATIONS.len()).await
}

/// [`install`], stopping at schema `version`: a database as an older release
/// left it (the upgrade tests build one).
pub async fn install_up_to(client: &mut Client, version: usize) -> Result<usize, SchemaError> {
    let mut pause = std::time::Duration::from_millis(200);
    loop {
        match install_once(client, version).await {
            Err(SchemaError::Busy(message)) => {
                tracing::warn!(
                    "a migration waits for a lock on the host's tables ({message}): letting writers go on, trying again in {pause:?}"
                );
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(std::time::Duration::from_secs(5));
            }
            result => return result,
        }
    }
}

/// How long a migration's statement may wait for a lock (the log's, say,
/// held by a writer) before the migration gives way and is tried again (after
/// a pause that doubles from 200 ms to 5 s): a waiting ALTER holds up every
/// writer queued behind it, so not for longer than this at a time.
const MIGRATION_LOCK_TIMEOUT_MS: u64 = 100;

async fn install_once(client: &mut Client, version: usize) -> Result<usize, SchemaError> {
    let tx = client.transaction().await?;
    lock_install(&tx).await?;
    tx.batch_execute(&format!(
        "SET LOCAL lock_timeout = {MIGRATION_LOCK_TIMEOUT_MS}"
    ))
    .await?;
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {SCHEMA};
         CREATE TABLE IF NOT EXISTS {SCHEMA}.migrations (
             version    integer     PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT now());"
    ))
    .await?;
    let current: i32 = tx
        .query_one(
            &format!("SELECT coalesce(max(version), 0) FROM {SCHEMA}.migrations"),
            &[],
        )
        .await?
        .get(0);
    if current as usize > MIGRATIONS.len() {
        return Err(SchemaError::TooNew {
            found: current,
            known: MIGRATIONS.len(),
        });
    }
    for (index, sql) in MIGRATIONS
        .iter()
        .enumerate()
        .take(version)
        .skip(current as usize)
    {
        let version = index + 1;
        tx.batch_execute(sql).await.map_err(|e| {
            if crate::db::sqlstate::is_lock_timeout(&e) {
                SchemaError::Busy(crate::db::error_text(&e))
            } else {
                SchemaError::Migration {
                    version,
                    message: crate::db::error_text(&e),
                }
            }
        })?;
        tx.execute(
            &format!("INSERT INTO {SCHEMA}.migrations (version) VALUES ($1)"),
            &[&(version as i32)],
        )
        .await?;
        tracing::info!(version, "applied migration");
    }
    if version >= 5 {
        keep_sequence_in_time_order(&tx).await?;
    }
    if version >= 6 {
        // What runs as capture is always this, owned and guarded so.
        tx.batch_execute(CAPTURE_SQL)
            .await
            .map_err(|e| SchemaError::Migration {
                version: 6,
                message: format!(
                    "re-applying the capture function: {}",
                    crate::db::error_text(&e)
                ),
            })?;
        check_capture_role(&tx).await?;
    }
    tx.commit().await?;
    Ok(version.min(MIGRATIONS.len()))
}

/// Commit order within a tick relies on the log's sequence handing out
/// values in time order across sessions, which a sequence cache would break
/// (each session would draw from a block of its own).
async fn keep_sequence_in_time_order(tx: &Transaction<'_>) -> Result<(), SchemaError> {
    let cache: i64 = tx
        .query_one(
            &format!(
                "SELECT seqcache FROM pg_sequence WHERE seqrelid = '{SCHEMA}.events_seq'::regclass"
            ),
            &[],
        )
        .await?
        .get(0);
    if cache != 1 {
        tx.batch_execute(&format!("ALTER SEQUENCE {SCHEMA}.events_seq CACHE 1"))
            .await?;
        tracing::warn!(
            cache,
            "the log's sequence had a cache, which breaks delivery order across sessions; set it back to 1"
        );
    }
    Ok(())
}

/// Whether the schema is installed (without changing anything).
pub async fn is_installed(client: &impl GenericClient) -> Result<bool, SchemaError> {
    let row = client
        .query_one(
            "SELECT to_regclass($1) IS NOT NULL",
            &[&format!("{SCHEMA}.migrations")],
        )
        .await?;
    Ok(row.get(0))
}

/// Capture triggers currently installed, each with whether it fires.
pub async fn installed_triggers_with_state(
    client: &impl GenericClient,
) -> Result<Vec<(CaptureTrigger, bool)>, SchemaError> {
    triggers::installed_with_state(client).await
}

/// Capture triggers currently installed.
pub async fn installed_triggers(
    client: &impl GenericClient,
) -> Result<Vec<CaptureTrigger>, SchemaError> {
    triggers::installed(client).await
}

/// Drop every trigger the host installed and the host's schema (log, cursors,
/// registry). The user's tables and their data are not touched.
pub async fn uninstall(client: &mut Client) -> Result<usize, SchemaError> {
    let tx = client.transaction().await?;
    lock_install(&tx).await?;
    let mut dropped = 0;
    if is_installed(&tx).await? {
        for trigger in triggers::installed(&tx).await? {
            tx.batch_execute(&trigger.drop_sql()).await?;
            dropped += 1;
        }
    }
    tx.batch_execute(&format!("DROP SCHEMA IF EXISTS {SCHEMA} CASCADE"))
        .await?;
    tx.commit().await?;
    Ok(dropped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_neutralizes_hostile_names() {
        assert_eq!(
            quote_ident(r#"a"; DROP TABLE x; --"#),
            r#""a""; DROP TABLE x; --""#
        );
        assert_eq!(
            quote_table("Odd Schema", "Mixed \"Case\""),
            r#""Odd Schema"."Mixed ""Case""""#
        );
        assert_eq!(quote_literal(r"it's \n"), r"E'it''s \\n'");
    }
}
