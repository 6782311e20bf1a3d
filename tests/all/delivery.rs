//! Delivery: commit order, cursors across restarts, filters,
//! several plugins, retries.

use std::time::Duration;

use pgevents_host::config::{OnFailure, PluginPolicy, Settings};
use pgevents_host::observer::HostEvent;
use pgevents_host::status;

use crate::support::*;

#[tokio::test]
async fn changes_made_while_the_host_is_down_are_delivered() {
    let db = TestDb::new().await;
    let host = Host::start(&db, &["recorder"]).await;
    host.stop().await;
    let c = db.client().await;
    c.batch_execute(
        "INSERT INTO items (name) SELECT 'offline ' || g FROM generate_series(1, 25) g",
    )
    .await
    .unwrap();
    let mut host = Host::start(&db, &["recorder"]).await;
    let seen = host.wait_seen("recorder", 25).await;
    assert_eq!(seen.len(), 25);
    assert_unique(&seen);
    assert_delivery_order(&db.client().await, &seen).await;
    host.stop().await;
}

#[tokio::test]
async fn restart_resumes_from_the_cursor_without_redelivery() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let mut host = Host::start(&db, &["recorder"]).await;
    c.batch_execute("INSERT INTO items (name) SELECT 'first ' || g FROM generate_series(1, 10) g")
        .await
        .unwrap();
    let first = host.wait_seen("recorder", 10).await;
    // Wait for the ack of the batch, then stop.
    host.wait_until(
        "the batch is acknowledged",
        |e| matches!(e, HostEvent::BatchHandled { plugin, .. } if plugin == "recorder"),
    )
    .await;
    host.stop().await;

    let mut host = Host::start(&db, &["recorder"]).await;
    c.batch_execute("INSERT INTO items (name) SELECT 'second ' || g FROM generate_series(1, 5) g")
        .await
        .unwrap();
    let second = host.wait_seen("recorder", 5).await;
    host.settle(Duration::from_millis(500)).await;
    let second_all = host.seen("recorder");
    assert_eq!(
        second_all.len(),
        5,
        "acknowledged events were delivered again: {second_all:#?}"
    );
    assert!(
        second
            .iter()
            .all(|s| s.row_str("name").unwrap().starts_with("second"))
    );
    assert!(first.iter().all(|f| second.iter().all(|s| s.id != f.id)));
    host.stop().await;
}

/// A transaction that writes first and stays open holds nobody back: other
/// writers' events arrive while it is open (status and the log name it), and
/// its own arrive, in order, once it commits.
#[tokio::test]
async fn a_long_transaction_holds_nobody_back_and_arrives_after_its_commit() {
    let db = TestDb::new().await;
    let settings = Settings {
        horizon_warn_after: Duration::from_millis(200),
        ..test_settings()
    };
    let mut host = Host::start_with(&db, plugins_dir(&["recorder"]), settings).await;
    let slow = db.client_as("slow-writer").await;
    let fast = db.client().await;
    slow.batch_execute("BEGIN; INSERT INTO items (name) VALUES ('slow 1')")
        .await
        .unwrap();
    // Longer than the whole of the fast writer's traffic.
    for i in 0..30 {
        fast.execute(
            "INSERT INTO items (name) VALUES ($1)",
            &[&format!("fast {i}")],
        )
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let seen = host.wait_seen("recorder", 30).await;
    let names: Vec<String> = seen.iter().map(|s| s.row_str("name").unwrap()).collect();
    let expected: Vec<String> = (0..30).map(|i| format!("fast {i}")).collect();
    assert_eq!(names, expected, "the open transaction held others back");
    // status names the open writer: its events arrive when it commits.
    let report = status::status(&db.client().await).await.unwrap();
    assert!(
        report
            .open_writers
            .iter()
            .any(|w| w.application_name.as_deref() == Some("slow-writer")),
        "status should name the open writer: {report}"
    );
    assert!(report.to_string().contains("slow-writer"), "{report}");
    // ... and so does the host's log, once it has been open a while.
    host.wait_until("the host names the long transaction", |e| {
        matches!(e, HostEvent::LongTransactions { writers }
            if writers.iter().any(|w| w.application_name.as_deref() == Some("slow-writer")
                && w.query.as_deref().is_some_and(|q| q.contains("slow 1"))))
    })
    .await;
    slow.batch_execute("INSERT INTO items (name) VALUES ('slow 2'); COMMIT")
        .await
        .unwrap();
    let seen = host.wait_seen("recorder", 32).await;
    assert_eq!(seen[30].row_str("name").as_deref(), Some("slow 1"));
    assert_eq!(seen[31].row_str("name").as_deref(), Some("slow 2"));
    host.settle(Duration::from_millis(300)).await;
    assert_eq!(host.seen("recorder").len(), 32);
    assert_unique(&host.seen("recorder"));
    host.stop().await;
}

#[tokio::test]
async fn interleaved_transactions_deliver_everything_exactly_once() {
    let db = TestDb::new().await;
    let mut host = Host::start(&db, &["recorder"]).await;
    let a = db.client().await;
    let b = db.client().await;
    a.batch_execute("BEGIN; INSERT INTO items (name) VALUES ('a1')")
        .await
        .unwrap();
    b.batch_execute("BEGIN; INSERT INTO items (name) VALUES ('b1')")
        .await
        .unwrap();
    a.batch_execute("INSERT INTO items (name) VALUES ('a2')")
        .await
        .unwrap();
    b.batch_execute("INSERT INTO items (name) VALUES ('b2'); COMMIT")
        .await
        .unwrap();
    a.batch_execute("INSERT INTO items (name) VALUES ('a3'); COMMIT")
        .await
        .unwrap();
    let seen = host.wait_seen("recorder", 5).await;
    host.settle(Duration::from_millis(300)).await;
    let names: Vec<String> = host
        .seen("recorder")
        .iter()
        .map(|s| s.row_str("name").unwrap())
        .collect();
    // In commit order (b committed first, though a wrote first), each
    // transaction's events together and in statement order.
    assert_eq!(names, ["b1", "b2", "a1", "a2", "a3"]);
    assert_unique(&seen);
    host.stop().await;
}

#[tokio::test]
async fn two_plugins_on_one_table_each_see_every_event_once() {
    let db = TestDb::new().await;
    let mut host = Host::start(&db, &["recorder", "filtered"]).await;
    let c = db.client().await;
    for i in 0..20 {
        c.execute(
            "INSERT INTO items (name) VALUES ($1)",
            &[&format!("row {i}")],
        )
        .await
        .unwrap();
    }
    host.wait_seen("recorder", 20).await;
    host.wait_seen("filtered", 20).await;
    host.settle(Duration::from_millis(300)).await;
    for plugin in ["recorder", "filtered"] {
        let seen = host.seen(plugin);
        assert_eq!(seen.len(), 20, "{plugin}");
        assert_unique(&seen);
        assert_delivery_order(&db.client().await, &seen).await;
    }
    host.stop().await;
}

#[tokio::test]
async fn operation_and_changed_column_filters() {
    let db = TestDb::new().await;
    let mut host = Host::start(&db, &["filtered"]).await;
    let c = db.client().await;
    c.batch_execute(
        "INSERT INTO items (name) VALUES ('insert is wanted');
         UPDATE items SET qty = 1;
         DELETE FROM items;
         INSERT INTO prices VALUES (1, 9.99, 'a'), (2, 5, 'b');
         UPDATE prices SET label = 'label change only' WHERE id = 1;
         UPDATE prices SET price = 12.50 WHERE id = 1;
         UPDATE prices SET price = price, label = 'same price' WHERE id = 2;
         DELETE FROM prices;",
    )
    .await
    .unwrap();
    host.wait_seen("filtered", 2).await;
    host.settle(Duration::from_millis(500)).await;
    let seen = host.seen("filtered");
    let summary: Vec<(String, String)> = seen
        .iter()
        .map(|s| (s.table.clone(), s.op.clone()))
        .collect();
    assert_eq!(
        summary,
        [
            ("items".to_owned(), "insert".to_owned()),
            ("prices".to_owned(), "update".to_owned())
        ]
    );
    assert_eq!(
        seen[1].new.as_ref().unwrap()["price"],
        serde_json::json!(12.50)
    );
    // Filtered-out events still move the cursor: nothing stays waiting.
    let report = status::status(&db.client().await).await.unwrap();
    let filtered = report
        .plugins
        .iter()
        .find(|p| p.name == "filtered")
        .unwrap();
    assert_eq!(filtered.waiting, 0, "{report}");
    host.stop().await;
}

#[tokio::test]
async fn a_failing_handler_is_retried_and_does_not_block_other_plugins() {
    let db = TestDb::new().await;
    let mut host = Host::start(&db, &["faulty", "recorder"]).await;
    let c = db.client().await;
    c.batch_execute("INSERT INTO items (name) VALUES ('before')")
        .await
        .unwrap();
    host.wait_seen("faulty", 1).await;
    // One misbehaving row at a time, so each failure is its own.
    let cases = [
        ("flaky", "retry-once", "note says retry-once"),
        (
            "crashy",
            "trap-once",
            "trapped: wasm `unreachable` instruction executed",
        ),
        ("patient", "retry-after", "note says retry-after"),
    ];
    for (i, (name, note, failure)) in cases.iter().enumerate() {
        c.execute(
            "INSERT INTO items (name, note) VALUES ($1, $2)",
            &[name, note],
        )
        .await
        .unwrap();
        let seen = host.wait_seen("faulty", i + 2).await;
        let last = seen.last().unwrap();
        assert_eq!(last.row_str("name").as_deref(), Some(*name));
        assert_eq!(last.attempt, 2, "{name} is handled on its second attempt");
        let failures = host.failures("faulty");
        assert_eq!(failures.len(), i + 1, "{failures:#?}");
        assert!(failures[i].contains(failure), "{}", failures[i]);
    }
    let crash = &host.failures("faulty")[1];
    assert!(
        crash.contains("plugin output:") && crash.contains("note says trap-once"),
        "{crash}"
    );
    // The plugin asked for 200 ms; the host honoured it rather than its own backoff.
    let asked: Vec<Option<Duration>> = host
        .history
        .iter()
        .filter_map(|e| match e {
            HostEvent::BatchFailed {
                plugin, retry_in, ..
            } if plugin == "faulty" => Some(*retry_in),
            _ => None,
        })
        .collect();
    assert_eq!(asked[2], Some(Duration::from_millis(200)));
    // The other plugin saw everything, once.
    let recorded = host.wait_seen("recorder", 4).await;
    assert_unique(&recorded);
    // Events before a failure were acknowledged, not delivered again.
    host.settle(Duration::from_millis(300)).await;
    let seen = host.seen("faulty");
    assert_eq!(seen.len(), 4, "{seen:#?}");
    assert_unique(&seen);
    host.stop().await;
}

#[tokio::test]
async fn a_permanent_failure_halts_only_that_plugin_when_configured_to() {
    let db = TestDb::new().await;
    let mut settings = test_settings();
    settings.plugins.insert(
        "faulty".into(),
        PluginPolicy {
            on_failure: Some(OnFailure::Halt),
            ..PluginPolicy::default()
        },
    );
    let mut host = Host::start_with(&db, plugins_dir(&["faulty", "recorder"]), settings).await;
    let c = db.client().await;
    c.batch_execute(
        "INSERT INTO items (name, note) VALUES ('ok', NULL), ('bad', 'permanent'), ('later', NULL)",
    )
    .await
    .unwrap();
    host.wait_until(
        "faulty halts",
        |e| matches!(e, HostEvent::PluginHalted { plugin, .. } if plugin == "faulty"),
    )
    .await;
    host.wait_seen("recorder", 3).await;
    let report = status::status(&db.client().await).await.unwrap();
    let faulty = report.plugins.iter().find(|p| p.name == "faulty").unwrap();
    assert!(
        faulty.halted.as_deref().unwrap().contains("permanent"),
        "{report}"
    );
    assert_eq!(
        faulty.waiting, 2,
        "the failed event and the one after it wait: {report}"
    );
    assert_eq!(faulty.dead_letters, 0, "{report}");
    assert_eq!(host.seen("faulty").len(), 1);
    host.stop().await;
}

#[tokio::test]
async fn polling_without_notify_delivers_too() {
    let db = TestDb::new().await;
    let settings = Settings {
        notify: false,
        ..test_settings()
    };
    let mut host = Host::start_with(&db, plugins_dir(&["recorder"]), settings).await;
    let c = db.client().await;
    let args: String = c
        .query_one(
            "SELECT encode(tgargs, 'escape') FROM pg_trigger WHERE tgname = 'pgevents_capture_insert' LIMIT 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        args.starts_with("quiet"),
        "capture triggers must not NOTIFY: {args}"
    );
    c.batch_execute("INSERT INTO items (name) VALUES ('polled')")
        .await
        .unwrap();
    host.wait_seen("recorder", 1).await;
    // Idle, the adaptive poll backs off to the poll interval (1 s): a handful of
    // reads, not a busy loop. Statistics are flushed about once a second.
    let commits = "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()";
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before: i64 = c.query_one(commits, &[]).await.unwrap().get(0);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after: i64 = c.query_one(commits, &[]).await.unwrap().get(0);
    assert!(
        after - before < 200,
        "{} transactions in 3 s of idling",
        after - before
    );
    host.stop().await;
}

#[tokio::test]
async fn two_hosts_never_deliver_one_plugin_at_once_and_the_second_takes_over() {
    let db = TestDb::new().await;
    let mut first = Host::start(&db, &["recorder"]).await;
    let mut second = Host::start(&db, &["recorder"]).await;
    let c = db.client().await;
    c.batch_execute("INSERT INTO items (name) SELECT 'one ' || g FROM generate_series(1, 50) g")
        .await
        .unwrap();
    first.wait_seen("recorder", 50).await;
    second.settle(Duration::from_millis(500)).await;
    assert!(
        second.seen("recorder").is_empty(),
        "both hosts delivered the same plugin"
    );
    first.stop().await;
    c.batch_execute("INSERT INTO items (name) SELECT 'two ' || g FROM generate_series(1, 50) g")
        .await
        .unwrap();
    let taken_over = second.wait_seen("recorder", 50).await;
    assert!(
        taken_over
            .iter()
            .all(|s| s.row_str("name").unwrap().starts_with("two"))
    );
    second.settle(Duration::from_millis(300)).await;
    assert_eq!(second.seen("recorder").len(), 50);
    second.stop().await;
}

#[tokio::test]
async fn terminated_connections_are_reestablished_and_nothing_is_lost() {
    let db = TestDb::new().await;
    let mut host = Host::start(&db, &["recorder"]).await;
    let c = db.client().await;
    let terminate = "SELECT count(pg_terminate_backend(pid))::int8 FROM pg_stat_activity
                     WHERE datname = current_database() AND pid <> pg_backend_pid()";
    for round in 0..3 {
        c.execute(
            "INSERT INTO items (name) SELECT $1 || g FROM generate_series(1, 200) g",
            &[&format!("round {round} ")],
        )
        .await
        .unwrap();
        // Once the host is connected (again): its listener and its worker...
        eventually(
            &c,
            "the host did not reconnect",
            "SELECT count(*) >= 2 FROM pg_stat_activity
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        .await;
        // ...cut its connections while it works through the rows.
        let killed: i64 = c.query_one(terminate, &[]).await.unwrap().get(0);
        assert!(killed >= 2, "killed {killed}");
    }
    host.wait_seen("recorder", 600).await;
    host.settle(Duration::from_millis(300)).await;
    let seen = host.seen("recorder");
    let names: std::collections::HashSet<String> =
        seen.iter().map(|s| s.row_str("name").unwrap()).collect();
    assert_eq!(names.len(), 600, "every event is delivered at least once");
    // A batch cut off before its ack may come again, never more than that.
    assert!(seen.len() <= 600 + 3 * 100, "{} deliveries", seen.len());
    // And after the storm, delivery goes on as usual.
    c.batch_execute("INSERT INTO items (name) VALUES ('calm again')")
        .await
        .unwrap();
    host.wait_until("the host delivers after reconnecting", |e| {
        matches!(e, HostEvent::PluginLog(l) if l.fields.iter().any(|(_, v)| v.contains("calm again")))
    })
    .await;
    host.stop().await;
}

#[tokio::test]
async fn a_plugin_whose_file_is_missing_is_paused_and_resumes_without_loss() {
    let db = TestDb::new().await;
    Host::start(&db, &["recorder", "filtered"])
        .await
        .stop()
        .await;
    // The host restarts without filtered.wasm (a deploy in progress, a wrong folder).
    let mut host = Host::start(&db, &["recorder"]).await;
    let c = db.client().await;
    c.batch_execute(
        "INSERT INTO items (name) SELECT 'while away ' || g FROM generate_series(1, 3) g",
    )
    .await
    .unwrap();
    host.wait_seen("recorder", 3).await;
    let report = status::status(&c).await.unwrap();
    let filtered = report
        .plugins
        .iter()
        .find(|p| p.name == "filtered")
        .unwrap();
    assert!(!filtered.active && filtered.waiting == 3, "{report}");
    assert!(
        report.to_string().contains("[paused: file missing]"),
        "{report}"
    );
    host.stop().await;
    // Putting the file back resumes where it stopped.
    let mut host = Host::start(&db, &["recorder", "filtered"]).await;
    let seen = host.wait_seen("filtered", 3).await;
    assert!(
        seen.iter()
            .all(|s| s.row_str("name").unwrap().starts_with("while away"))
    );
    host.stop().await;
}

#[tokio::test]
async fn shutdown_finishes_and_acknowledges_the_batch_in_flight() {
    let db = TestDb::new().await;
    let mut host = Host::start(&db, &["faulty"]).await;
    let c = db.client().await;
    c.batch_execute(
        "INSERT INTO items (name, note) VALUES ('takes a while', 'slow'), ('same batch', NULL)",
    )
    .await
    .unwrap();
    // The plugin is inside `handle` (it logged the first event and is busy) when shutdown comes.
    host.wait_seen("faulty", 1).await;
    let history = host.stop().await;
    let logged = history
        .iter()
        .filter(|e| matches!(e, HostEvent::PluginLog(l) if l.message == "event"))
        .count();
    assert_eq!(logged, 2, "the batch in flight runs to its end");
    assert!(
        history
            .iter()
            .any(|e| matches!(e, HostEvent::BatchHandled { events: 2, .. })),
        "and is acknowledged before the host exits"
    );
    let report = status::status(&c).await.unwrap();
    assert_eq!(report.plugins[0].waiting, 0, "{report}");
    // A restart delivers nothing again.
    let mut host = Host::start(&db, &["faulty"]).await;
    host.settle(Duration::from_millis(500)).await;
    assert!(host.seen("faulty").is_empty(), "{:#?}", host.seen("faulty"));
    host.stop().await;
}

#[tokio::test]
async fn concurrent_writers_lose_nothing_and_arrive_in_delivery_order() {
    let db = TestDb::new().await;
    let mut host = Host::start(&db, &["recorder"]).await;
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let url = db.url.clone();
            tokio::spawn(async move {
                let c = connect(&url).await;
                for i in 0..50 {
                    // Small transactions of 1-5 rows that overlap with the other writers'.
                    let rows = 1 + (i % 5);
                    c.batch_execute(&format!(
                        "BEGIN; INSERT INTO items (name, qty) SELECT 'w{w}', g FROM generate_series(1, {rows}) g; COMMIT"
                    ))
                    .await
                    .unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    let expected = 4 * (10 * (1 + 2 + 3 + 4 + 5));
    let seen = host.wait_seen("recorder", expected).await;
    host.settle(Duration::from_millis(300)).await;
    assert_eq!(host.seen("recorder").len(), expected);
    assert_unique(&seen);
    assert_delivery_order(&db.client().await, &seen).await;
    host.stop().await;
}

#[tokio::test]
async fn a_restart_loads_plugins_from_the_compile_cache() {
    let db = TestDb::new().await;
    let cache = tempfile::tempdir().unwrap();
    let settings = Settings {
        compile_cache: Some(cache.path().to_owned()),
        ..test_settings()
    };
    let from_cache = |host: &Host| {
        host.history.iter().find_map(|e| match e {
            HostEvent::PluginStarted { from_cache, .. } => Some(*from_cache),
            _ => None,
        })
    };
    let host = Host::start_with(&db, plugins_dir(&["recorder"]), settings.clone()).await;
    assert_eq!(from_cache(&host), Some(false), "first start compiles");
    host.stop().await;
    let entries: Vec<_> = std::fs::read_dir(cache.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(entries.len(), 1, "{entries:?}");

    let mut host = Host::start_with(&db, plugins_dir(&["recorder"]), settings.clone()).await;
    assert_eq!(from_cache(&host), Some(true), "a restart uses the cache");
    db.client()
        .await
        .batch_execute("INSERT INTO items (name) VALUES ('from cached code')")
        .await
        .unwrap();
    host.wait_seen("recorder", 1).await;
    host.stop().await;

    // A damaged entry is not trusted: the plugin is compiled again.
    std::fs::write(&entries[0], b"not a compiled component").unwrap();
    let host = Host::start_with(&db, plugins_dir(&["recorder"]), settings.clone()).await;
    assert_eq!(from_cache(&host), Some(false));
    host.stop().await;

    // Nor is a folder others may write to: its entries would run as native code.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(cache.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let host = Host::start_with(&db, plugins_dir(&["recorder"]), settings).await;
    assert_eq!(from_cache(&host), Some(false));
    host.stop().await;
}

/// A connection that LISTENs on the host's channel; each notification is sent on.
async fn listener(
    url: &str,
) -> (
    tokio_postgres::Client,
    tokio::sync::mpsc::UnboundedReceiver<()>,
) {
    use futures_util::StreamExt;
    let (client, mut connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("listener connection");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = messages.next().await {
            if let tokio_postgres::AsyncMessage::Notification(_) = message {
                let _ = tx.send(());
            }
        }
    });
    client.batch_execute("LISTEN pgevents").await.unwrap();
    (client, rx)
}

/// Whether a notification arrives within `d`.
async fn notified(rx: &mut tokio::sync::mpsc::UnboundedReceiver<()>, d: Duration) -> bool {
    tokio::time::timeout(d, rx.recv()).await.is_ok()
}

#[tokio::test]
async fn writers_notify_only_while_a_host_waits_for_it() {
    let db = TestDb::new().await;
    let mut host = Host::start(&db, &["recorder"]).await;
    let c = db.client().await;
    let (_listening, mut rx) = listener(&db.url).await;
    // Once the host is idle it has set the wake lease, and a writer notifies.
    eventually(
        &c,
        "the host sets the wake lease",
        "SELECT coalesce(pg_sequence_last_value('pgevents.wake_until')
                         > extract(epoch FROM clock_timestamp()) * 1000, false)",
    )
    .await;
    c.batch_execute("INSERT INTO items (name) VALUES ('while waiting')")
        .await
        .unwrap();
    assert!(
        notified(&mut rx, Duration::from_secs(5)).await,
        "no NOTIFY while a host waits"
    );
    host.wait_seen("recorder", 1).await;
    host.stop().await;
    // No host renews the lease: once it has run out, writers skip the NOTIFY
    // (here it is made to run out at once, rather than in WAKE_LEASE_MS).
    c.batch_execute("SELECT setval('pgevents.wake_until', 1)")
        .await
        .unwrap();
    while rx.try_recv().is_ok() {}
    c.batch_execute("INSERT INTO items (name) VALUES ('nobody waits')")
        .await
        .unwrap();
    assert!(
        !notified(&mut rx, Duration::from_millis(500)).await,
        "a NOTIFY although no host waits"
    );
    // The events are in the log all the same, and the next host delivers them.
    let mut host = Host::start(&db, &["recorder"]).await;
    let seen = host.wait_seen("recorder", 1).await;
    assert_eq!(seen[0].row_str("name").as_deref(), Some("nobody waits"));
    host.stop().await;
}

#[tokio::test]
async fn a_writer_that_looked_before_the_host_waited_is_not_left_to_the_poll() {
    let db = TestDb::new().await;
    // Install the schema and triggers, then let the wake lease run out.
    Host::start(&db, &["recorder"]).await.stop().await;
    let c = db.client().await;
    c.batch_execute("SELECT setval('pgevents.wake_until', 1)")
        .await
        .unwrap();
    // This writer's trigger runs now, while no host waits: it will not notify.
    let mut writer = db.client().await;
    let tx = writer.transaction().await.unwrap();
    tx.batch_execute("INSERT INTO items (name) VALUES ('looked early')")
        .await
        .unwrap();
    // A host starts, finds the lease lapsed, and must watch the transactions
    // that were running then rather than wait for a notification.
    let settings = Settings {
        poll_interval: Duration::from_secs(60),
        ..test_settings()
    };
    let mut host = Host::start_with(&db, plugins_dir(&["recorder"]), settings).await;
    host.settle(Duration::from_millis(300)).await;
    let committed = std::time::Instant::now();
    tx.commit().await.unwrap();
    host.wait_seen("recorder", 1).await;
    // Idle waits last up to WAKE_MAX_WAIT_MS (2 s); the catch-up polls every 50 ms.
    assert!(
        committed.elapsed() < Duration::from_millis(1500),
        "delivered {:?} after the commit: the host waited for a poll",
        committed.elapsed()
    );
    host.stop().await;
}
