//! Transactions that have written and are still open: their events arrive
//! when they commit (`status` lists them; the host names long ones in its log).

use serde::Serialize;
use tokio_postgres::GenericClient;

/// A transaction of this database that has written and is still open.
#[derive(Debug, Clone, Serialize)]
pub struct OpenWriter {
    pub pid: i32,
    pub user: Option<String>,
    pub application_name: Option<String>,
    pub state: Option<String>,
    /// Seconds since the transaction began.
    pub age_seconds: f64,
    pub query: Option<String>,
}

/// Transactions of this database that have written (they hold a transaction
/// id) and have been open longer than `older_than`, oldest first, including
/// prepared ones.
pub async fn open_writers(
    client: &impl GenericClient,
    older_than: std::time::Duration,
) -> Result<Vec<OpenWriter>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT * FROM (
                 SELECT pid, usename::text, application_name, state,
                        extract(epoch FROM now() - xact_start)::float8 AS age, query
                 FROM pg_stat_activity
                 WHERE backend_xid IS NOT NULL AND datname = current_database()
                   AND pid <> pg_backend_pid()
                 UNION ALL
                 SELECT 0, owner::text, 'prepared transaction ' || gid, 'prepared',
                        extract(epoch FROM now() - prepared)::float8, NULL
                 FROM pg_prepared_xacts WHERE database = current_database()) AS w
             WHERE w.age >= $1
             ORDER BY w.age DESC LIMIT 20",
            &[&older_than.as_secs_f64()],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| OpenWriter {
            pid: r.get(0),
            user: r.get(1),
            application_name: r.get(2),
            state: r.get(3),
            age_seconds: r.get::<_, Option<f64>>(4).unwrap_or(0.0),
            query: r.get(5),
        })
        .collect())
}
