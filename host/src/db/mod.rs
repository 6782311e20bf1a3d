//! Connecting to PostgreSQL: retries with backoff, and URLs shown without secrets.

use std::time::{Duration, Instant};

use tokio_postgres::{Client, NoTls};

/// Reconnect schedule after a lost or refused database connection: doubling
/// from 250 ms to 10 s.
pub const RECONNECT_BASE_MS: u64 = 250;
pub const RECONNECT_MAX_MS: u64 = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("invalid database URL `{url}`: {source}")]
    InvalidUrl {
        url: String,
        source: tokio_postgres::Error,
    },
    #[error(
        "cannot reach the database at {target} after {attempts} attempts over {waited:?}: {last}\n\
         hint: check that PostgreSQL runs there and the URL (--database-url / DATABASE_URL) is right"
    )]
    Unreachable {
        target: String,
        attempts: u32,
        waited: Duration,
        last: String,
    },
}

/// Where a URL points, for messages: host, port, user and database, never the password.
pub fn describe_target(url: &str) -> String {
    let Ok(config) = url.parse::<tokio_postgres::Config>() else {
        return "<unparseable URL>".to_owned();
    };
    let host = config
        .get_hosts()
        .iter()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(name) => name.clone(),
            tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
        })
        .collect::<Vec<_>>()
        .join(",");
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let user = config.get_user().unwrap_or("?");
    let db = config.get_dbname().unwrap_or(user);
    format!("{host}:{port} (user `{user}`, database `{db}`)")
}

/// One connection attempt; the connection is driven by a spawned task. The
/// session is READ COMMITTED whatever the database's or role's default: the
/// host's SQL relies on each statement seeing what committed before it (a
/// tick's snapshot is taken after its lock; a stricter level would fail
/// concurrent ticks).
pub async fn connect_once(url: &str) -> Result<Client, tokio_postgres::Error> {
    let mut config: tokio_postgres::Config = url.parse()?;
    let options = format!(
        "{} -c default_transaction_isolation=read\\ committed",
        config.get_options().unwrap_or("")
    );
    config.options(options.trim_start());
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "database connection closed");
        }
    });
    Ok(client)
}

/// Connect, retrying with doubling backoff (250 ms .. 10 s) until `timeout`
/// (`None`: forever). Each failed attempt is logged with where it tried.
pub async fn connect(url: &str, timeout: Option<Duration>) -> Result<Client, ConnectError> {
    url.parse::<tokio_postgres::Config>()
        .map_err(|source| ConnectError::InvalidUrl {
            url: redact(url),
            source,
        })?;
    let target = describe_target(url);
    let started = Instant::now();
    let mut attempts = 0;
    loop {
        attempts += 1;
        match connect_once(url).await {
            Ok(client) => return Ok(client),
            Err(e) => {
                let delay = reconnect_delay(attempts);
                let waited = started.elapsed();
                let last = error_text(&e);
                if timeout.is_some_and(|t| waited + delay > t) {
                    return Err(ConnectError::Unreachable {
                        target,
                        attempts,
                        waited,
                        last,
                    });
                }
                tracing::warn!(
                    "cannot reach the database at {target} (attempt {attempts}): {last}; retrying in {delay:?}"
                );
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// Delay after `attempt` consecutive failed connections.
pub fn reconnect_delay(attempt: u32) -> Duration {
    crate::backoff::backoff(
        attempt,
        Duration::from_millis(RECONNECT_BASE_MS),
        Duration::from_millis(RECONNECT_MAX_MS),
    )
}

/// The full cause chain of a database error, including the server's message and SQLSTATE.
pub fn error_text(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut s = format!(
            "{}: {} (SQLSTATE {})",
            db.severity(),
            db.message(),
            db.code().code()
        );
        if let Some(detail) = db.detail() {
            s.push_str(&format!("; {detail}"));
        }
        return s;
    }
    let mut s = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(inner) = source {
        s.push_str(&format!(": {inner}"));
        source = inner.source();
    }
    s
}

/// The URL with any password replaced by `***`.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme + 3],
                    &userinfo[..colon],
                    &url[at..]
                ),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
    }

    #[test]
    fn describes_target_without_password() {
        let d = describe_target("postgres://alice:pw@db.example:6543/shop");
        assert_eq!(d, "db.example:6543 (user `alice`, database `shop`)");
    }
}

mod listen;
pub mod sqlstate;

pub(crate) use listen::listen;
