//! Delivery guarantees: retry schedule, dead letters and their redelivery,
//! replay, the sql capability (exactly once in effect), retention.

use std::time::{Duration, Instant};

use pgevents_host::config::{OnFailure, PluginPolicy, Settings};
use pgevents_host::eventlog::{self, ReplayFrom};
use pgevents_host::observer::HostEvent;
use pgevents_host::status;

use crate::support::*;

/// Settings with the config file `toml` applied over `test_settings()`.
#[tokio::test]
async fn retries_follow_the_documented_schedule_then_dead_letter() {
    let db = TestDb::new().await;
    // Short schedule: 100 ms doubling, capped at 400 ms, ±20% jitter; 5 attempts.
    let settings = Settings {
        retry_base: Duration::from_millis(100),
        retry_max: Duration::from_millis(400),
        max_attempts: 5,
        ..test_settings()
    };
    let mut host = Host::start_with(&db, plugins_dir(&["faulty"]), settings).await;
    db.client()
        .await
        .batch_execute("INSERT INTO items (name, note) VALUES ('always fails', 'trap')")
        .await
        .unwrap();
    let mut failed_at = Vec::new();
    for attempt in 1..=5 {
        host.wait_until(&format!("failure {attempt}"), |e| {
            matches!(e, HostEvent::BatchFailed { .. })
        })
        .await;
        failed_at.push(Instant::now());
        // Forget this failure, so that the next wait is for the next one.
        host.history
            .retain(|e| !matches!(e, HostEvent::BatchFailed { .. }));
    }
    host.wait_until(
        "dead-lettered",
        |e| matches!(e, HostEvent::DeadLettered { plugin, attempts: 5, .. } if plugin == "faulty"),
    )
    .await;
    // Delay before attempt k+1 is 100 ms * 2^(k-1), capped at 400 ms, ±20%;
    // allow 300 ms on top for the call itself and a busy machine.
    let expected_ms = [100u64, 200, 400, 400];
    for (k, pair) in failed_at.windows(2).enumerate() {
        let gap = pair[1] - pair[0];
        let want = Duration::from_millis(expected_ms[k]);
        assert!(
            gap >= want.mul_f64(0.8) && gap <= want.mul_f64(1.2) + Duration::from_millis(300),
            "retry {} came after {gap:?}, expected {want:?} ±20%",
            k + 1
        );
    }
    host.stop().await;
}

#[tokio::test]
async fn a_failing_event_is_dead_lettered_others_go_on_and_the_cli_redelivers_it() {
    let db = TestDb::new().await;
    let settings = Settings {
        max_attempts: 3,
        ..test_settings()
    };
    let mut host = Host::start_with(&db, plugins_dir(&["faulty"]), settings).await;
    let c = db.client().await;
    // `fail-3` fails on attempts 1-3 and succeeds from attempt 4: with three
    // attempts allowed it is dead-lettered, and succeeds when redelivered.
    c.batch_execute(
        "INSERT INTO items (name, note) VALUES ('before', NULL), ('stubborn', 'fail-3'), ('after', NULL);
         INSERT INTO items (name, note) VALUES ('hopeless', 'permanent'), ('last', NULL);",
    )
    .await
    .unwrap();
    host.wait_until("stubborn dead-lettered", |e| {
        matches!(e, HostEvent::DeadLettered { attempts: 3, .. })
    })
    .await;
    host.wait_until("hopeless dead-lettered at once", |e| {
        matches!(e, HostEvent::DeadLettered { attempts: 1, .. })
    })
    .await;
    let seen = host.wait_seen("faulty", 3).await;
    let names: Vec<_> = seen.iter().filter_map(|s| s.row_str("name")).collect();
    assert_eq!(names, ["before", "after", "last"]);

    // The last batch is logged before it is acknowledged.
    eventually(
        &c,
        "the cursor passes the last event",
        &caught_up_sql("faulty"),
    )
    .await;
    let report = status::status(&c).await.unwrap();
    let faulty = report.plugins.iter().find(|p| p.name == "faulty").unwrap();
    assert_eq!(faulty.dead_letters, 2, "{report}");
    assert_eq!(faulty.waiting, 0, "{report}");
    assert!(report.to_string().contains("2 dead letter(s)"), "{report}");
    // Its last error was a dead-lettered event's: said so, not as if the
    // plugin were failing now.
    let text = report.to_string();
    assert!(
        text.contains("last failure (")
            && text.contains("note says permanent")
            && text.contains("that event is in the dead letters")
            && text.contains("plugin faulty 1.0.0 [active]"),
        "{text}"
    );
    assert!(!text.contains("no host is running"), "{text}");

    let (ok, stdout, stderr) = run_cli(&["dead-letters", "list", "--database-url", &db.url]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("faulty insert \"public\".\"items\""),
        "{stdout}"
    );
    assert!(stdout.contains("3 attempt(s)"), "{stdout}");
    assert!(stdout.contains("note says fail-3 (attempt 3)"), "{stdout}");
    assert!(stdout.contains("note says permanent"), "{stdout}");
    let stubborn_id: i64 = c
        .query_one(
            "SELECT id FROM pgevents.dead_letters WHERE new_row->>'name' = 'stubborn'",
            &[],
        )
        .await
        .unwrap()
        .get(0);

    let (ok, _, stderr) = run_cli(&["dead-letters", "redeliver", "--database-url", &db.url]);
    assert!(!ok, "redeliver without --id or --all must refuse");
    assert!(stderr.contains("--id N, or --all"), "{stderr}");
    let (ok, stdout, stderr) = run_cli(&[
        "dead-letters",
        "redeliver",
        "--database-url",
        &db.url,
        "--plugin",
        "faulty",
        "--all",
    ]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("2 dead letter(s) will be delivered again"),
        "{stdout}"
    );
    // The stubborn one now succeeds (attempt 4); the hopeless one fails again and stays.
    let seen = host.wait_seen("faulty", 4).await;
    let redelivered = &seen[3];
    assert_eq!(redelivered.row_str("name").as_deref(), Some("stubborn"));
    assert_eq!(redelivered.attempt, 4);
    eventually(
        &c,
        "only the hopeless dead letter is left, no longer marked for redelivery",
        "SELECT count(*) = 1 AND bool_and(new_row->>'name' = 'hopeless' AND NOT redeliver AND attempts = 2)
         FROM pgevents.dead_letters",
    )
    .await;
    let gone: i64 = c
        .query_one(
            "SELECT count(*) FROM pgevents.dead_letters WHERE id = $1",
            &[&stubborn_id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(gone, 0);

    let (ok, stdout, stderr) =
        run_cli(&["dead-letters", "purge", "--database-url", &db.url, "--all"]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("purged 1 dead letter(s)"), "{stdout}");
    host.settle(Duration::from_millis(300)).await;
    assert_eq!(host.seen("faulty").len(), 4, "nothing else was delivered");
    host.stop().await;
    // With no host running, `status` says so rather than "[active]".
    let text = status::status(&c).await.unwrap().to_string();
    assert!(
        text.contains("no host is running") && text.contains("[active, no host running]"),
        "{text}"
    );
}

#[tokio::test]
async fn attempt_counts_survive_a_restart() {
    let db = TestDb::new().await;
    let settings = Settings {
        max_attempts: 3,
        ..test_settings()
    };
    let mut host = Host::start_with(&db, plugins_dir(&["faulty"]), settings.clone()).await;
    db.client()
        .await
        .batch_execute("INSERT INTO items (name, note) VALUES ('stubborn', 'fail-3')")
        .await
        .unwrap();
    host.wait_until(
        "two failures",
        |e| matches!(e, HostEvent::BatchFailed { message, .. } if message.contains("(attempt 2)")),
    )
    .await;
    host.stop().await;
    let mut host = Host::start_with(&db, plugins_dir(&["faulty"]), settings).await;
    host.wait_until("dead-lettered after the third attempt overall", |e| {
        matches!(e, HostEvent::DeadLettered { attempts: 3, .. })
    })
    .await;
    host.stop().await;
}

#[tokio::test]
async fn halting_instead_of_dead_lettering_is_a_per_plugin_choice() {
    let db = TestDb::new().await;
    let mut settings = settings_with("max_attempts = 2\n[plugins.faulty]\non_failure = \"halt\"\n");
    settings.plugins.insert(
        "recorder".into(),
        PluginPolicy {
            on_failure: Some(OnFailure::DeadLetter),
            ..PluginPolicy::default()
        },
    );
    let mut host = Host::start_with(&db, plugins_dir(&["faulty", "recorder"]), settings).await;
    db.client()
        .await
        .batch_execute(
            "INSERT INTO items (name, note) VALUES ('stubborn', 'fail-3'), ('next', NULL)",
        )
        .await
        .unwrap();
    host.wait_until(
        "faulty halts after two attempts",
        |e| matches!(e, HostEvent::PluginHalted { plugin, .. } if plugin == "faulty"),
    )
    .await;
    host.wait_seen("recorder", 2).await;
    let dead: i64 = db
        .client()
        .await
        .query_one("SELECT count(*) FROM pgevents.dead_letters", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(dead, 0);
    host.stop().await;
}

#[tokio::test]
async fn replay_rewinds_a_running_plugin_to_a_position_or_a_time() {
    let db = TestDb::new().await;
    let mut host = Host::start(&db, &["recorder"]).await;
    let c = db.client().await;
    c.batch_execute("INSERT INTO items (name) VALUES ('one'), ('two')")
        .await
        .unwrap();
    let first = host.wait_seen("recorder", 2).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let between = std::time::SystemTime::now();
    tokio::time::sleep(Duration::from_millis(50)).await;
    c.batch_execute("INSERT INTO items (name) VALUES ('three')")
        .await
        .unwrap();
    host.wait_seen("recorder", 3).await;
    host.wait_until("'three' acknowledged", |e| {
        matches!(e, HostEvent::BatchHandled { plugin, events, .. }
            if plugin == "recorder" && *events == 1)
    })
    .await;

    // By time, from the CLI: only 'three' was captured since `between`.
    let since = humantime::format_rfc3339_micros(between).to_string();
    let (ok, stdout, stderr) = run_cli(&[
        "replay",
        "--database-url",
        &db.url,
        "recorder",
        "--since",
        &since,
    ]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("1 event(s) will be delivered again"),
        "{stdout}"
    );
    let seen = host.wait_seen("recorder", 4).await;
    assert_eq!(seen[3].row_str("name").as_deref(), Some("three"));
    assert_eq!(seen[3].id, seen[2].id, "a replayed event keeps its id");

    // By event, through the library: everything after the first one.
    let after = pgevents_host::event::EventRef {
        txid: first[0].txid,
        seq: first[0].seq as i64,
    };
    let done = eventlog::replay(&mut db.client().await, "recorder", ReplayFrom::After(after))
        .await
        .unwrap();
    assert_eq!(done.events, 2);
    let seen = host.wait_seen("recorder", 6).await;
    let names: Vec<_> = seen[4..].iter().filter_map(|s| s.row_str("name")).collect();
    assert_eq!(names, ["two", "three"]);

    let (ok, _, stderr) = run_cli(&[
        "replay",
        "--database-url",
        &db.url,
        "nobody",
        "--from-start",
    ]);
    assert!(!ok);
    assert!(stderr.contains("no plugin named `nobody`"), "{stderr}");
    let (ok, _, stderr) = run_cli(&["replay", "--database-url", &db.url, "recorder"]);
    assert!(!ok);
    assert!(stderr.contains("say where to replay from"), "{stderr}");
    host.settle(Duration::from_millis(300)).await;
    assert_eq!(host.seen("recorder").len(), 6);
    host.stop().await;
}

#[tokio::test]
async fn sql_capability_applies_each_event_exactly_once_within_its_role() {
    let db = TestDb::new().await;
    let config = db.ledger(1).await;
    let mut host = Host::start_with(&db, plugins_dir(&["ledger"]), settings_with(&config)).await;
    let c = db.client().await;
    c.batch_execute(
        "INSERT INTO items (name, note) VALUES
             ('a', NULL), ('b', 'fail-after-write'), ('c', 'sql-error'), ('d', 'denied'), ('e', NULL);
         UPDATE items SET qty = 1 WHERE name = 'a';
         DELETE FROM items WHERE name = 'e';",
    )
    .await
    .unwrap();
    eventually(
        &c,
        "the ledger holds one row per event",
        "SELECT count(*) = 7 FROM public.ledger",
    )
    .await;
    host.settle(Duration::from_millis(300)).await;
    let rows = c
        .query(
            "SELECT l.op, i.name, l.attempt, count(*) OVER (PARTITION BY l.event_id)
             FROM public.ledger l LEFT JOIN items i ON i.id = l.item_id ORDER BY l.txid, l.seq",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 7, "no event applied twice, none lost");
    for r in &rows {
        assert_eq!(r.get::<_, i64>(3), 1, "an event was applied twice");
    }
    let b = rows
        .iter()
        .find(|r| r.get::<_, Option<String>>(1).as_deref() == Some("b"))
        .unwrap();
    assert_eq!(
        b.get::<_, i32>(2),
        2,
        "the write of the failed attempt was rolled back"
    );
    let ops: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(
        ops,
        [
            "insert", "insert", "insert", "insert", "insert", "update", "delete"
        ]
    );
    let sql_errors: Vec<(String, String)> = host
        .history
        .iter()
        .filter_map(|e| match e {
            HostEvent::PluginLog(l) if l.message == "sql error" => {
                let get = |k: &str| {
                    l.fields
                        .iter()
                        .find(|(n, _)| n == k)
                        .map(|(_, v)| v.clone())
                        .unwrap()
                };
                Some((get("sqlstate"), get("message")))
            }
            _ => None,
        })
        .collect();
    assert!(
        sql_errors
            .iter()
            .any(|(s, m)| s == "22012" && m.contains("division by zero")),
        "{sql_errors:?}"
    );
    assert!(
        sql_errors
            .iter()
            .any(|(s, m)| s == "42501" && m.contains("permission denied for table forbidden")),
        "the role's privileges bound the plugin: {sql_errors:?}"
    );
    let forbidden: i64 = c
        .query_one("SELECT count(*) FROM public.forbidden", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(forbidden, 0);
    host.stop().await;
}

#[tokio::test]
async fn sql_without_a_grant_is_refused_at_load_with_how_to_grant_it() {
    let db = TestDb::new().await;
    db.ledger(1).await;
    let host = Host::start_with(&db, plugins_dir(&["ledger", "recorder"]), test_settings()).await;
    let rejections = host.rejections();
    assert!(
        rejections.iter().any(
            |r| r.contains("plugin `ledger` imports the `sql` capability")
                && r.contains("[plugins.ledger]")
                && r.contains("sql = { role")
        ),
        "{rejections:?}"
    );
    // The other plugin runs.
    db.client()
        .await
        .batch_execute("INSERT INTO items (name) VALUES ('x')")
        .await
        .unwrap();
    let mut host = host;
    host.wait_seen("recorder", 1).await;
    host.stop().await;
}

#[tokio::test]
async fn retention_prunes_what_every_cursor_passed_and_keeps_the_rest() {
    let db = TestDb::new().await;
    let mut settings = settings_with("[plugins.faulty]\non_failure = \"halt\"\n");
    settings.retention_min_age = Duration::ZERO;
    settings.retention_interval = Duration::from_millis(100);
    let mut host = Host::start_with(&db, plugins_dir(&["faulty", "recorder"]), settings).await;
    let c = db.client().await;
    c.batch_execute(
        "INSERT INTO items (name) SELECT 'row ' || g FROM generate_series(1, 300) g;
         INSERT INTO items (name, note) VALUES ('stuck', 'permanent'), ('behind it', NULL);",
    )
    .await
    .unwrap();
    host.wait_seen("recorder", 302).await;
    host.wait_until("faulty halts", |e| {
        matches!(e, HostEvent::PluginHalted { .. })
    })
    .await;
    // faulty's cursor sits before 'stuck': everything up to it goes, the rest stays.
    eventually(
        &c,
        "rows every cursor passed are pruned",
        "SELECT NOT EXISTS (
             SELECT 1 FROM pgevents.events e JOIN pgevents.commits k ON k.txid = e.txid,
                           pgevents.cursors c
             WHERE c.plugin = 'faulty' AND (k.ord, e.seq) <= (c.ord, c.seq))",
    )
    .await;
    let left = texts(
        &c,
        "SELECT new_row->>'name' FROM pgevents.events ORDER BY txid, seq",
    )
    .await;
    assert_eq!(left, ["stuck", "behind it"]);
    host.stop().await;

    // With the default minimum age (1 h) nothing young is pruned.
    let mut host = Host::start_with(
        &db,
        plugins_dir(&["recorder"]),
        Settings {
            retention_interval: Duration::from_millis(100),
            ..test_settings()
        },
    )
    .await;
    c.batch_execute("INSERT INTO items (name) VALUES ('young')")
        .await
        .unwrap();
    host.wait_seen("recorder", 1).await;
    host.settle(Duration::from_millis(400)).await;
    let young: i64 = c
        .query_one(
            "SELECT count(*) FROM pgevents.events WHERE new_row->>'name' = 'young'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(young, 1);
    host.stop().await;
}

#[tokio::test]
async fn partitions_keep_per_key_order_and_split_the_work() {
    let db = TestDb::new().await;
    let config = db.ledger(4).await;
    let mut settings = settings_with(&config);
    settings.plugins.insert(
        "recorder".into(),
        PluginPolicy {
            partitions: Some(3),
            ..PluginPolicy::default()
        },
    );
    let mut host = Host::start_with(&db, plugins_dir(&["ledger", "recorder"]), settings).await;
    let c = db.client().await;
    c.batch_execute(
        "INSERT INTO items (name, qty) SELECT 'item ' || g, 0 FROM generate_series(1, 40) g;
         UPDATE items SET qty = qty + 1;
         UPDATE items SET qty = qty + 1 WHERE id % 2 = 0;
         DELETE FROM items WHERE id % 5 = 0;",
    )
    .await
    .unwrap();
    let total = 40 + 40 + 20 + 8;
    let seen = host.wait_seen("recorder", total).await;
    assert_unique(&seen);
    // Per key, events arrive in log order.
    let mut by_key: std::collections::HashMap<String, Vec<(u64, u64)>> = Default::default();
    for s in &seen {
        by_key
            .entry(s.key.as_ref().unwrap().to_string())
            .or_default()
            .push((s.txid, s.seq));
    }
    for (key, positions) in &by_key {
        assert!(
            positions.windows(2).all(|p| p[0] < p[1]),
            "events of key {key} out of order: {positions:?}"
        );
    }
    eventually(
        &c,
        "the ledger got every event once",
        &format!(
            "SELECT count(*) = {total} AND count(DISTINCT event_id) = {total} FROM public.ledger"
        ),
    )
    .await;
    let report = status::status(&c).await.unwrap();
    let ledger = report.plugins.iter().find(|p| p.name == "ledger").unwrap();
    assert_eq!(ledger.partitions.len(), 4, "{report}");
    assert_eq!(ledger.waiting, 0, "{report}");
    // The events spread over all four partitions.
    let parts: i64 = c
        .query_one(
            "SELECT count(DISTINCT pgevents.part_of('public', 'items', jsonb_build_object('id', item_id), 4))
             FROM public.ledger",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(parts, 4, "{report}");
    host.stop().await;
}

fn run_cli(args: &[&str]) -> (bool, String, String) {
    let out = host_bin().args(args).output().expect("run pgevents-host");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn changing_the_partition_count_skips_nothing() {
    let db = TestDb::new().await;
    let with_parts = |n: u32| {
        let mut settings = test_settings();
        settings.plugins.insert(
            "recorder".into(),
            PluginPolicy {
                partitions: Some(n),
                ..PluginPolicy::default()
            },
        );
        settings
    };
    let c = db.client().await;
    let mut host = Host::start_with(&db, plugins_dir(&["recorder"]), with_parts(2)).await;
    c.batch_execute("INSERT INTO items (name) SELECT 'early ' || g FROM generate_series(1, 30) g")
        .await
        .unwrap();
    host.wait_seen("recorder", 30).await;
    host.stop().await;
    c.batch_execute(
        "INSERT INTO items (name) SELECT 'while down ' || g FROM generate_series(1, 30) g",
    )
    .await
    .unwrap();
    // A host configured otherwise follows the count in the database...
    let mut host = Host::start_with(&db, plugins_dir(&["recorder"]), with_parts(3)).await;
    host.settle(Duration::from_millis(300)).await;
    let parts: i64 = c
        .query_one(
            "SELECT count(*) FROM pgevents.cursors WHERE plugin = 'recorder'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(parts, 2);
    // ... and the count changes only while no host delivers the plugin.
    let busy = eventlog::repartition(&mut db.client().await, "recorder", 3)
        .await
        .unwrap_err();
    assert!(busy.to_string().contains("stop every host"), "{busy}");
    let mut names: std::collections::HashSet<String> = host
        .seen("recorder")
        .iter()
        .filter_map(|s| s.row_str("name"))
        .collect();
    host.stop().await;
    let (ok, stdout, stderr) =
        run_cli(&["repartition", "--database-url", &db.url, "recorder", "3"]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("2 partition(s) -> 3"), "{stdout}");
    let mut host = Host::start_with(&db, plugins_dir(&["recorder"]), with_parts(3)).await;
    c.batch_execute("INSERT INTO items (name) SELECT 'after ' || g FROM generate_series(1, 30) g")
        .await
        .unwrap();
    eventually(
        &c,
        "three partitions, all caught up",
        &format!(
            "SELECT (SELECT count(*) = 3 FROM pgevents.cursors WHERE plugin = 'recorder') AND ({})",
            caught_up_sql("recorder")
        ),
    )
    .await;
    host.settle(Duration::from_millis(200)).await;
    names.extend(
        host.seen("recorder")
            .iter()
            .filter_map(|s| s.row_str("name")),
    );
    for g in 1..=30 {
        assert!(
            names.contains(&format!("while down {g}")),
            "missing while down {g}"
        );
        assert!(names.contains(&format!("after {g}")), "missing after {g}");
    }
    host.stop().await;
}

#[tokio::test]
async fn a_sql_role_that_cannot_log_in_is_reported_and_other_plugins_run() {
    let db = TestDb::new().await;
    db.ledger(1).await;
    let settings = settings_with("[plugins.ledger]\nsql = { role = \"no_such_role_anywhere\" }\n");
    let mut host = Host::start_with(&db, plugins_dir(&["ledger", "recorder"]), settings).await;
    let c = db.client().await;
    c.batch_execute("INSERT INTO items (name) VALUES ('x')")
        .await
        .unwrap();
    host.wait_seen("recorder", 1).await;
    eventually(
        &c,
        "status shows why the ledger does not run",
        "SELECT last_error LIKE '%cannot log in as role `no_such_role_anywhere`%'
         FROM pgevents.plugins WHERE name = 'ledger'",
    )
    .await;
    let waiting = status::status(&c).await.unwrap();
    let ledger = waiting.plugins.iter().find(|p| p.name == "ledger").unwrap();
    assert_eq!(
        ledger.waiting, 1,
        "the event waits for the ledger: {waiting}"
    );
    host.stop().await;
}

#[tokio::test]
async fn with_partitions_a_truncate_is_delivered_once_between_what_came_before_and_after() {
    let db = TestDb::new().await;
    let mut settings = test_settings();
    settings.plugins.insert(
        "recorder".into(),
        PluginPolicy {
            partitions: Some(3),
            ..PluginPolicy::default()
        },
    );
    let mut host = Host::start_with(&db, plugins_dir(&["recorder"]), settings).await;
    db.client()
        .await
        .batch_execute(
            "INSERT INTO items (name) SELECT 'before ' || g FROM generate_series(1, 30) g;
             TRUNCATE items;
             INSERT INTO items (name) SELECT 'after ' || g FROM generate_series(1, 30) g;",
        )
        .await
        .unwrap();
    let seen = host.wait_seen("recorder", 61).await;
    host.settle(Duration::from_millis(300)).await;
    let seen_now = host.seen("recorder");
    assert_eq!(seen_now.len(), 61, "the truncate was delivered once");
    let t = seen.iter().position(|s| s.op == "truncate").unwrap();
    assert!(
        seen[..t]
            .iter()
            .all(|s| s.row_str("name").unwrap().starts_with("before")),
        "only rows from before the truncate come before it"
    );
    assert!(
        seen[t + 1..]
            .iter()
            .all(|s| s.row_str("name").unwrap().starts_with("after")),
        "only rows from after the truncate come after it"
    );
    host.stop().await;
}

#[tokio::test]
async fn a_sql_batch_that_fails_at_commit_counts_as_a_failed_attempt() {
    let db = TestDb::new().await;
    let config = db.ledger(1).await;
    let c = db.client().await;
    // Checked only at commit: ledger rows must name a known item.
    c.batch_execute(
        "CREATE TABLE public.known (id int PRIMARY KEY);
         INSERT INTO public.known VALUES (7);
         ALTER TABLE public.ledger ADD FOREIGN KEY (item_id) REFERENCES public.known (id)
             DEFERRABLE INITIALLY DEFERRED",
    )
    .await
    .unwrap();
    let mut settings = settings_with(&config);
    settings.max_attempts = 2;
    let mut host = Host::start_with(&db, plugins_dir(&["ledger"]), settings).await;
    c.batch_execute("INSERT INTO items (id, name) VALUES (7, 'known')")
        .await
        .unwrap();
    eventually(
        &c,
        "the known item is in the ledger",
        "SELECT count(*) = 1 FROM public.ledger",
    )
    .await;
    c.batch_execute("INSERT INTO items (id, name) VALUES (8, 'unknown')")
        .await
        .unwrap();
    host.wait_until("dead-lettered after two failed commits", |e| {
        matches!(e, HostEvent::DeadLettered { attempts: 2, message, .. }
            if message.contains("committing the batch's sql failed") && message.contains("23503"))
    })
    .await;
    host.stop().await;
}
