//! Bad input gets a clear error and loses nothing.

use std::time::Duration;

use pgevents_host::config::Settings;
use pgevents_host::status;

use crate::support::*;

#[tokio::test]
async fn a_manifest_naming_a_missing_table_rejects_only_that_plugin() {
    let db = TestDb::new().await;
    // greeter subscribes to public.user_accounts, which this database lacks;
    // a near miss exists, so the message suggests it.
    db.client()
        .await
        .batch_execute("CREATE TABLE public.user_account (id bigint)")
        .await
        .unwrap();
    let mut host = Host::start(&db, &["greeter", "recorder"]).await;
    let rejections = host.rejections();
    assert_eq!(rejections.len(), 1, "{rejections:#?}");
    assert!(
        rejections[0].contains(
            "plugin `greeter` subscribes to table `public.user_accounts`, which does not exist"
        ) && rejections[0].contains("did you mean `public.user_account`?"),
        "{}",
        rejections[0]
    );
    db.client()
        .await
        .batch_execute("INSERT INTO items (name) VALUES ('still delivered')")
        .await
        .unwrap();
    host.wait_seen("recorder", 1).await;
    host.stop().await;
}

/// A plugin refused because its table is missing is listed by `status` as
/// not loaded, and starts by itself once the table is created (no restart,
/// no touch): the schema may change under a running host.
#[tokio::test]
async fn a_plugin_refused_for_a_missing_table_starts_once_the_table_exists() {
    let db = TestDb::new().await;
    let mut host = Host::start(&db, &["greeter", "recorder"]).await;
    assert_eq!(host.rejections().len(), 1, "{:#?}", host.rejections());
    let client = db.client().await;
    let shown = status::status(&client).await.unwrap();
    let text = shown.to_string();
    assert!(
        text.contains("plugin greeter [not loaded]")
            && text.contains("`public.user_accounts`, which does not exist")
            && text.contains("tried again"),
        "{text}"
    );
    client
        .batch_execute(
            "CREATE TABLE public.user_accounts (id bigserial PRIMARY KEY, email text, name text)",
        )
        .await
        .unwrap();
    host.wait_until("greeter starts", |e| {
        matches!(e, pgevents_host::observer::HostEvent::PluginStarted { plugin, .. } if plugin == "greeter")
    })
    .await;
    eventually(
        &client,
        "greeter's table is captured",
        "SELECT count(*) > 0 FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
         WHERE c.relname = 'user_accounts' AND t.tgname LIKE 'pgevents_capture_%'",
    )
    .await;
    client
        .batch_execute(
            "INSERT INTO public.user_accounts (email, name) VALUES ('a@example.com', 'Ada')",
        )
        .await
        .unwrap();
    host.wait_until("greeter welcomes Ada", |e| {
        matches!(e, pgevents_host::observer::HostEvent::PluginLog(log) if log.message == "Welcome, Ada!")
    })
    .await;
    let text = status::status(&client).await.unwrap().to_string();
    assert!(text.contains("plugin greeter 1.0.0 [active]"), "{text}");
    assert!(!text.contains("[not loaded]"), "{text}");
    // The rejection was reported once, not at every scan.
    assert_eq!(host.rejections().len(), 1, "{:#?}", host.rejections());
    host.stop().await;
}

#[tokio::test]
async fn broken_foreign_and_core_module_files_are_rejected_and_others_run() {
    let db = TestDb::new().await;
    let dir = plugins_dir(&["recorder"]);
    std::fs::write(dir.path().join("garbage.wasm"), b"this is not wasm").unwrap();
    std::fs::write(
        dir.path().join("truncated.wasm"),
        &std::fs::read(plugin("recorder")).unwrap()[..4000],
    )
    .unwrap();
    std::fs::write(
        dir.path().join("core.wasm"),
        wat::parse_str("(module)").unwrap(),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("foreign.wasm"),
        wat::parse_str(
            r#"(component (core module $m (func (export "f"))) (core instance (instantiate $m)))"#,
        )
        .unwrap(),
    )
    .unwrap();
    let mut host = Host::start_with(&db, dir, test_settings()).await;
    let mut rejections = host.rejections();
    rejections.sort();
    assert_eq!(rejections.len(), 4, "{rejections:#?}");
    assert!(
        rejections[0].contains("core.wasm is a core WebAssembly module, not a component"),
        "{}",
        rejections[0]
    );
    assert!(
        rejections[1]
            .contains("foreign.wasm does not implement the `pgevents:plugin/plugin@0.1.1` world"),
        "{}",
        rejections[1]
    );
    assert!(
        rejections[2].contains("garbage.wasm is not a WebAssembly file"),
        "{}",
        rejections[2]
    );
    assert!(
        rejections[3].contains("truncated.wasm is not a valid WebAssembly component"),
        "{}",
        rejections[3]
    );
    db.client()
        .await
        .batch_execute("INSERT INTO items (name) VALUES ('x')")
        .await
        .unwrap();
    host.wait_seen("recorder", 1).await;
    host.stop().await;
}

#[tokio::test]
async fn a_plugin_that_traps_every_time_is_retried_with_growing_delays_and_the_host_keeps_serving()
{
    let db = TestDb::new().await;
    let mut host = Host::start(&db, &["faulty", "recorder"]).await;
    let c = db.client().await;
    c.batch_execute("INSERT INTO items (name, note) VALUES ('doomed', 'trap')")
        .await
        .unwrap();
    let mut failures = 0;
    host.wait_until("four failed attempts", |e| {
        if let pgevents_host::observer::HostEvent::BatchFailed { plugin, .. } = e {
            failures += usize::from(plugin == "faulty");
        }
        failures >= 4
    })
    .await;
    let delays: Vec<Duration> = host
        .history
        .iter()
        .filter_map(|e| match e {
            pgevents_host::observer::HostEvent::BatchFailed {
                plugin,
                retry_in,
                message,
                ..
            } if plugin == "faulty" => {
                assert!(
                    message.contains("trapped") && message.contains("note says trap"),
                    "{message}"
                );
                *retry_in
            }
            _ => None,
        })
        .collect();
    // 50 ms base doubling, ±20% jitter, capped at 400 ms.
    assert!(
        delays[0] >= Duration::from_millis(40) && delays[0] <= Duration::from_millis(60),
        "{delays:?}"
    );
    assert!(
        delays[2] >= Duration::from_millis(160) && delays[2] <= Duration::from_millis(240),
        "{delays:?}"
    );
    c.batch_execute("INSERT INTO items (name) VALUES ('others go on')")
        .await
        .unwrap();
    host.wait_seen("recorder", 2).await;
    let report = status::status(&c).await.unwrap();
    let faulty = report.plugins.iter().find(|p| p.name == "faulty").unwrap();
    assert!(
        faulty.last_error.as_deref().unwrap().contains("trapped"),
        "{report}"
    );
    assert_eq!(faulty.waiting, 2, "nothing lost: {report}");
    host.stop().await;
}

#[tokio::test]
async fn an_endless_loop_and_unbounded_allocation_hit_their_limits() {
    let db = TestDb::new().await;
    let settings = Settings {
        handle_timeout: Duration::from_millis(300),
        memory_limit_bytes: 32 << 20,
        ..test_settings()
    };
    let mut host = Host::start_with(&db, plugins_dir(&["faulty", "recorder"]), settings).await;
    let c = db.client().await;
    c.batch_execute("INSERT INTO items (name, note) VALUES ('spin', 'loop')")
        .await
        .unwrap();
    host.wait_until("the loop is interrupted", |e| {
        matches!(e, pgevents_host::observer::HostEvent::BatchFailed { message, .. }
            if message.contains("exceeded the CPU time limit of 300ms"))
    })
    .await;
    c.batch_execute("TRUNCATE items").await.unwrap();
    host.stop().await;

    // A fresh database so the looping event is not in the way.
    let db = TestDb::new().await;
    let settings = Settings {
        memory_limit_bytes: 32 << 20,
        ..test_settings()
    };
    let mut host = Host::start_with(&db, plugins_dir(&["faulty", "recorder"]), settings).await;
    let c = db.client().await;
    c.batch_execute("INSERT INTO items (name, note) VALUES ('hog', 'oom')")
        .await
        .unwrap();
    host.wait_until("the allocation hits the memory limit", |e| {
        matches!(e, pgevents_host::observer::HostEvent::BatchFailed { message, .. }
            if message.contains("exceeded the memory limit of 32 MiB"))
    })
    .await;
    c.batch_execute("INSERT INTO items (name) VALUES ('meanwhile')")
        .await
        .unwrap();
    host.wait_seen("recorder", 2).await;
    host.stop().await;
}

#[tokio::test]
async fn partitioned_tables_are_refused_with_a_clear_message() {
    let db = TestDb::new().await;
    let c = db.client().await;
    c.batch_execute(
        "DROP TABLE items;
         CREATE TABLE items (id int, name text, note text, qty int) PARTITION BY RANGE (id);
         CREATE TABLE items_low PARTITION OF items FOR VALUES FROM (0) TO (1000);",
    )
    .await
    .unwrap();
    let mut host = Host::start(&db, &["recorder", "filtered"]).await;
    let rejections = host.rejections();
    assert_eq!(rejections.len(), 2, "{rejections:#?}");
    assert!(
        rejections
            .iter()
            .all(|r| r
                .contains(r#""public"."items", which is a partitioned table (not supported yet)"#)),
        "{rejections:#?}"
    );
    // Writes to the partitioned table keep working.
    c.batch_execute("INSERT INTO items VALUES (1, 'x')")
        .await
        .unwrap();
    host.settle(std::time::Duration::from_millis(100)).await;
    host.stop().await;
}
