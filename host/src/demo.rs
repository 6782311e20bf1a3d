//! `pgevents-host demo`: a demo database with the seed scenario's tables, the
//! example plugins, a few writes from a separate client, and the events they
//! produce, printed as the plugins log them.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::watch;

use crate::config::{ConfigFile, Settings};
use crate::host::{self, RunOptions};
use crate::observer::HostEvent;
use crate::{db, registry, schema, status};

/// Dropped and created afresh on every run, so the demo always tells the same story.
const TABLES: &str = "
    DROP TABLE IF EXISTS public.user_accounts, public.orders;
    CREATE TABLE public.user_accounts (
        id    bigserial PRIMARY KEY,
        name  text NOT NULL,
        email text
    );
    CREATE TABLE public.orders (
        id      uuid PRIMARY KEY DEFAULT gen_random_uuid(),
        user_id bigint NOT NULL,
        total   numeric(10, 2) NOT NULL,
        status  text NOT NULL DEFAULT 'new'
    );";

pub async fn run(database_url: &str, plugins: &Path) -> anyhow::Result<()> {
    let files = registry::plugin_files(plugins)?;
    anyhow::ensure!(
        !files.is_empty(),
        "no .wasm plugins in {}; build the examples with `./dev build-plugins`",
        plugins.display()
    );
    create_database_if_missing(database_url).await?;
    let client = db::connect(database_url, Some(Duration::from_secs(10))).await?;
    client.batch_execute(TABLES).await?;
    crate::outln!(
        "demo: database {} with tables user_accounts and orders",
        db::describe_target(database_url)
    );

    // The webhook example posts to a receiver the demo runs.
    let receiver = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = receiver.local_addr()?.port();
    tokio::spawn(receive_webhooks(receiver));
    let mut settings = Settings::default();
    ConfigFile::parse(&format!(
        "[plugins.webhook]\n\
         http = {{ allow = [\"127.0.0.1:{port}\"] }}\n\
         config = {{ url = \"http://127.0.0.1:{port}/demo\", tables = \"public.orders\" }}\n"
    ))
    .map_err(anyhow::Error::msg)?
    .apply(&mut settings);

    let settled = Arc::new(AtomicUsize::new(0));
    let seen = settled.clone();
    let (stop_tx, stop_rx) = watch::channel(false);
    let options = RunOptions {
        database_url: database_url.to_owned(),
        plugins_dir: plugins.to_owned(),
        settings,
        observer: Some(Arc::new(move |event| {
            if let HostEvent::PluginStarted { .. } | HostEvent::PluginRejected(_) = event {
                seen.fetch_add(1, Ordering::SeqCst);
            }
        })),
    };
    crate::outln!(
        "demo: loading {} plugins (a first run compiles them; the Python and JavaScript ones take up to a minute)",
        files.len()
    );
    let host = tokio::spawn(host::run(options, stop_rx));
    let deadline = Instant::now() + Duration::from_secs(300);
    while settled.load(Ordering::SeqCst) < files.len() {
        anyhow::ensure!(
            !host.is_finished(),
            "the host stopped before every plugin started"
        );
        anyhow::ensure!(
            Instant::now() < deadline,
            "not every plugin started within 300 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let writer_url = with_application_name(database_url, "demo-writer");
    let writer = db::connect(&writer_url, Some(Duration::from_secs(10))).await?;
    crate::outln!("demo: writing rows as application `demo-writer` (think: your web app, or psql)");
    // Separate transactions, as an application would make them.
    for statement in [
        "INSERT INTO user_accounts (name, email) VALUES ('Ada Lovelace', 'ada@example.com'), ('Grace Hopper', 'grace@example.com')",
        "BEGIN; SET LOCAL pgevents.context = 'signup-form';
         INSERT INTO user_accounts (name) VALUES ('Alan Turing');
         INSERT INTO orders (user_id, total) SELECT id, 42.00 FROM user_accounts WHERE name = 'Alan Turing';
         COMMIT",
        "UPDATE orders SET status = 'paid' WHERE status = 'new'",
        "UPDATE user_accounts SET email = 'grace@navy.example' WHERE name = 'Grace Hopper'",
        "DELETE FROM user_accounts WHERE name = 'Ada Lovelace'",
    ] {
        crate::outln!("demo: {}", statement.split_whitespace().collect::<Vec<_>>().join(" "));
        writer
            .batch_execute(statement)
            .await
            .context("writing demo rows")?;
    }

    // Wait until every active plugin has caught up with the log.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let report = status::status(&client).await?;
        let waiting: i64 = report
            .plugins
            .iter()
            .filter(|p| p.active)
            .map(|p| p.waiting)
            .sum();
        if waiting == 0 && report.unticked == 0 {
            crate::outln!("\ndemo: every event delivered. `pgevents-host status` says:\n{report}");
            break;
        }
        if Instant::now() > deadline {
            crate::outln!("\ndemo: events still waiting after 30 s:\n{report}");
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = stop_tx.send(true);
    host.await??;
    crate::outln!(
        "demo: done. Try it yourself: run `pgevents-host run --database-url {}` and change rows from psql.",
        db::redact(database_url)
    );
    Ok(())
}

/// Answer the webhook plugin's requests with 204 and print what each carried.
async fn receive_webhooks(listener: tokio::net::TcpListener) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    while let Ok((mut stream, _)) = listener.accept().await {
        tokio::spawn(async move {
            let mut request = Vec::new();
            let mut buf = [0u8; 8192];
            // Read the headers, then as much body as `content-length` says.
            loop {
                let Ok(n) = stream.read(&mut buf).await else {
                    return;
                };
                if n == 0 {
                    return;
                }
                request.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&request);
                if let Some(end) = text.find("\r\n\r\n") {
                    let length = text[..end]
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse::<usize>().ok())?
                        })
                        .unwrap_or(0);
                    if request.len() >= end + 4 + length {
                        let body: serde_json::Value =
                            serde_json::from_slice(&request[end + 4..end + 4 + length])
                                .unwrap_or_default();
                        crate::outln!(
                            "demo: webhook receiver got POST {} {}.{} id={}",
                            body["operation"].as_str().unwrap_or("?"),
                            body["schema"].as_str().unwrap_or("?"),
                            body["table"].as_str().unwrap_or("?"),
                            body["id"].as_str().unwrap_or("?"),
                        );
                        break;
                    }
                }
            }
            let _ = stream
                .write_all(b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n")
                .await;
        });
    }
}

fn with_application_name(url: &str, name: &str) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}application_name={name}")
}

/// Connect to the server's `postgres` database and create the demo database.
async fn create_database_if_missing(url: &str) -> anyhow::Result<()> {
    let config: tokio_postgres::Config = url.parse()?;
    let name = config
        .get_dbname()
        .context("the demo database URL names no database")?
        .to_owned();
    let mut admin = config.clone();
    admin.dbname("postgres");
    let (client, connection) = admin
        .connect(tokio_postgres::NoTls)
        .await
        .with_context(|| format!("connecting to {}", db::describe_target(url)))?;
    tokio::spawn(connection);
    let exists = client
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .await?
        .is_some();
    if !exists {
        client
            .batch_execute(&format!("CREATE DATABASE {}", schema::quote_ident(&name)))
            .await?;
        crate::outln!("demo: created database `{name}`");
    }
    Ok(())
}
