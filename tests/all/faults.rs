//! Fault tests with real `pgevents-host` processes: kill -9 in the middle of a
//! stream, terminated connections, several hosts sharing partitions.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use tokio_postgres::Client;

use crate::support::*;

/// Long enough for tens of thousands of events on a busy 2-core machine.
const STREAM_PATIENCE: Duration = Duration::from_secs(240);

/// `writers` concurrent clients, each committing `transactions` transactions
/// of `rows` inserted rows. Returns when all committed.
async fn write_stream(url: String, writers: usize, transactions: usize, rows: usize) {
    let mut tasks = Vec::new();
    for w in 0..writers {
        let separator = if url.contains('?') { '&' } else { '?' };
        let client = connect(&format!("{url}{separator}application_name=writer-{w}")).await;
        tasks.push(tokio::spawn(async move {
            for t in 0..transactions {
                let first = t * rows;
                client
                    .execute(
                        "INSERT INTO items (name) SELECT $1 || g FROM generate_series($2::int, $3::int) g",
                        &[
                            &format!("w{w}-"),
                            &(first as i32),
                            &((first + rows - 1) as i32),
                        ],
                    )
                    .await
                    .expect("writer insert");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

async fn count(c: &Client, sql: &str) -> i64 {
    c.query_one(sql, &[]).await.unwrap().get(0)
}

/// Poll until `sql` (a count) reaches `at_least`.
async fn wait_count(c: &Client, what: &str, sql: &str, at_least: i64, patience: Duration) {
    let deadline = Instant::now() + patience;
    loop {
        let n = count(c, sql).await;
        if n >= at_least {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {n} of {at_least} after {patience:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn installed(c: &Client) {
    eventually(
        c,
        "the host installs its schema",
        "SELECT to_regclass('pgevents.leases') IS NOT NULL",
    )
    .await;
}

fn config_file(dir: &tempfile::TempDir, text: &str) -> String {
    let path = dir.path().join("pgevents.toml");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_stream_loses_nothing_and_the_sql_plugin_applies_each_event_once() {
    const EVENTS: i64 = 50_000;
    let db = TestDb::new().await;
    let config_dir = tempfile::tempdir().unwrap();
    let config = config_file(&config_dir, &db.ledger(2).await);
    let plugins = plugins_dir(&["recorder", "ledger"]);
    let c = db.client().await;
    // A short lease: the restarted host waits for the killed one's to expire.
    let args = [
        "--config",
        &config,
        "--lease-ttl",
        "3s",
        "--handle-timeout",
        "1s",
    ];
    let mut first = HostProcess::spawn(&db, plugins.path(), &args);
    // Ready when it holds the recorder's partition and both of the ledger's.
    installed(&c).await;
    wait_count(
        &c,
        "leases taken",
        "SELECT count(*) FROM pgevents.leases",
        3,
        PATIENCE,
    )
    .await;

    let writers = tokio::spawn(write_stream(db.url.clone(), 4, 125, 100));
    wait_count(
        &c,
        "ledger progress before the kill",
        "SELECT count(*) FROM public.ledger",
        10_000,
        STREAM_PATIENCE,
    )
    .await;
    first.kill9();
    let mut second = HostProcess::spawn(&db, plugins.path(), &args);
    writers.await.unwrap();
    wait_count(
        &c,
        "every event in the ledger",
        "SELECT count(*) FROM public.ledger",
        EVENTS,
        STREAM_PATIENCE,
    )
    .await;
    eventually(&c, "the recorder caught up", &caught_up_sql("recorder")).await;
    // Stopped before counting: nothing can arrive after the count.
    second.stop();

    // Exactly once in effect for the sql plugin.
    let rows = count(&c, "SELECT count(*) FROM public.ledger").await;
    let distinct = count(&c, "SELECT count(DISTINCT event_id) FROM public.ledger").await;
    assert_eq!(
        (rows, distinct),
        (EVENTS, EVENTS),
        "ledger rows, distinct events"
    );

    // At least once for the plugin without it; redelivered at most one batch (100).
    let mut ids = first.logged_ids("recorder");
    ids.extend(second.logged_ids("recorder"));
    let unique: HashSet<&String> = ids.iter().collect();
    let duplicates = ids.len() - unique.len();
    eprintln!(
        "kill -9 mid-stream: {EVENTS} events, recorder lost {}, duplicates {duplicates}; ledger rows {rows}, distinct {distinct}",
        EVENTS - unique.len() as i64
    );
    assert_eq!(unique.len() as i64, EVENTS, "events lost by the recorder");
    assert!(
        duplicates <= 100,
        "{duplicates} redeliveries, more than one batch"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hosts_share_partitions_survive_terminated_connections_and_take_over() {
    const EVENTS: i64 = 20_000;
    const LEASE_TTL: Duration = Duration::from_secs(3);
    let db = TestDb::new().await;
    let config_dir = tempfile::tempdir().unwrap();
    let config = config_file(
        &config_dir,
        &format!("lease_ttl = \"3s\"\n{}", db.ledger(4).await),
    );
    let plugins = plugins_dir(&["ledger"]);
    let c = db.client().await;
    let mut hosts: Vec<HostProcess> = (0..3)
        .map(|_| {
            HostProcess::spawn(
                &db,
                plugins.path(),
                &["--config", &config, "--handle-timeout", "1s"],
            )
        })
        .collect();
    // Shares of 4 partitions among 3 hosts: 2, 1, 1.
    installed(&c).await;
    let spread = "SELECT CASE WHEN count(*) = 4 THEN count(DISTINCT owner) ELSE 0 END
                  FROM pgevents.leases WHERE plugin = 'ledger'";
    wait_count(
        &c,
        "four partitions spread over three hosts",
        spread,
        3,
        PATIENCE,
    )
    .await;

    let writers = tokio::spawn(write_stream(db.url.clone(), 2, 100, 100));
    wait_count(
        &c,
        "ledger progress",
        "SELECT count(*) FROM public.ledger",
        4_000,
        STREAM_PATIENCE,
    )
    .await;
    // Cut every host connection (the writers' and ours stay).
    let terminated = count(
        &c,
        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE datname = current_database() AND pid <> pg_backend_pid()
           AND application_name NOT LIKE 'writer-%') t",
    )
    .await;
    assert!(terminated >= 6, "only {terminated} host connections found");
    wait_count(
        &c,
        "ledger progress after the connections were cut",
        "SELECT count(*) FROM public.ledger",
        8_000,
        STREAM_PATIENCE,
    )
    .await;

    // Kill a host that holds a partition; the others take its partitions over.
    let owners = texts(
        &c,
        "SELECT owner FROM pgevents.leases WHERE plugin = 'ledger'",
    )
    .await;
    let victim = hosts
        .iter()
        .position(|h| owners.iter().any(|o| o.contains(&format!(":{}:", h.pid()))))
        .expect("a host holding a lease");
    let victim_pid = hosts[victim].pid();
    let killed_at = Instant::now();
    hosts[victim].kill9();
    let taken_over = format!(
        "SELECT count(*) FROM pgevents.leases WHERE plugin = 'ledger'
           AND owner NOT LIKE '%:{victim_pid}:%' AND expires_at > clock_timestamp()"
    );
    wait_count(&c, "partitions taken over", &taken_over, 4, PATIENCE).await;
    let takeover = killed_at.elapsed();
    eprintln!("takeover after kill -9: {takeover:?} (lease TTL {LEASE_TTL:?})");
    // Within the TTL plus one check (0.5 s), with slack for a busy machine.
    assert!(
        takeover <= LEASE_TTL + Duration::from_secs(2),
        "partitions taken over after {takeover:?}"
    );

    writers.await.unwrap();
    wait_count(
        &c,
        "every event in the ledger",
        "SELECT count(*) FROM public.ledger",
        EVENTS,
        STREAM_PATIENCE,
    )
    .await;
    // A clean stop hands the leases back at once; and once stopped, nothing
    // can arrive after the count.
    for (i, h) in hosts.iter_mut().enumerate() {
        if i != victim {
            h.stop();
        }
    }
    let rows = count(&c, "SELECT count(*) FROM public.ledger").await;
    let distinct = count(&c, "SELECT count(DISTINCT event_id) FROM public.ledger").await;
    eprintln!("three hosts: {EVENTS} events, ledger rows {rows}, distinct {distinct}");
    assert_eq!(
        (rows, distinct),
        (EVENTS, EVENTS),
        "ledger rows, distinct events"
    );

    let left = texts(&c, "SELECT owner || ' part ' || part || ' expires ' || (expires_at - clock_timestamp())::text FROM pgevents.leases").await;
    assert!(
        left.is_empty(),
        "leases left after clean shutdowns: {left:?}\n{}",
        hosts
            .iter()
            .map(|h| h.log())
            .collect::<Vec<_>>()
            .join("\n----\n")
    );
    // Only the killed host is still registered (until ten TTLs pass).
    let others =
        format!("SELECT count(*) FROM pgevents.hosts WHERE id NOT LIKE '%:{victim_pid}:%'");
    assert_eq!(count(&c, &others).await, 0);
}
