//! SQLSTATE decisions, in one place: which database errors are the
//! connection's or the server's (reconnect, retry), which blame a plugin's
//! batch (count an attempt), and the codes the host itself hands a plugin's
//! sql calls.

use tokio_postgres::error::SqlState;

/// A statement the host refuses (transaction control, COPY) or a result
/// type it cannot return.
pub const REFUSED: SqlState = SqlState::FEATURE_NOT_SUPPORTED;
/// The host's side failed (connection lost, time limit of the call).
pub const HOST_ERROR: SqlState = SqlState::SYSTEM_ERROR;
/// The call was abandoned: it outlasted its time limit.
pub const ABANDONED: SqlState = SqlState::QUERY_CANCELED;
/// The plugin has no grant for what it asked.
pub const NOT_GRANTED: SqlState = SqlState::INSUFFICIENT_PRIVILEGE;

/// Classes that are the connection's or the server's, not a statement's:
/// connection exceptions (08: `CONNECTION_FAILURE`,
/// `CONNECTION_DOES_NOT_EXIST`, ...), the server going away (57P:
/// `ADMIN_SHUTDOWN`, `CRASH_SHUTDOWN`, `CANNOT_CONNECT_NOW`, ...), its
/// resources (53: `TOO_MANY_CONNECTIONS`, `DISK_FULL`, ...), system
/// errors (58) and internal errors (XX).
const SERVERS: &[&str] = &["08", "57P", "53", "58", "XX"];

/// Whether a database error at the commit of a batch's own sql
/// transaction is that batch's failure (integrity and data errors,
/// serialization failures and deadlocks, a statement timeout it set, an
/// aborted transaction): everything the server answers, except the
/// connection's and the server's own troubles, which would dead-letter
/// good events if counted.
pub fn blames_the_batch(e: &tokio_postgres::Error) -> bool {
    e.as_db_error().is_some_and(|db| {
        let code = db.code().code();
        !SERVERS.iter().any(|class| code.starts_with(class))
    })
}

/// A lock was not granted within `lock_timeout`.
pub fn is_lock_timeout(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&SqlState::LOCK_NOT_AVAILABLE)
}
