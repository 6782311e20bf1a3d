//! Live reload: plugins added, replaced, broken and removed while the host
//! runs and writers keep writing.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use pgevents_host::observer::HostEvent;
use pgevents_host::status;

use crate::support::*;

/// Insert rows into `items` in small transactions until `stop`; returns how many.
fn keep_writing(url: String, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<i64> {
    tokio::spawn(async move {
        let c = connect(&url).await;
        let mut rows = 0;
        while !stop.load(Ordering::SeqCst) {
            c.batch_execute("INSERT INTO items (name) SELECT 'w' FROM generate_series(1, 5)")
                .await
                .expect("writer insert");
            rows += 5;
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        rows
    })
}

fn reloaded_to(e: &HostEvent, name: &str, to: &str) -> bool {
    matches!(e, HostEvent::PluginReloaded { plugin, version, .. } if plugin == name && version == to)
}

/// The `version` field of every event line `plugin` logged.
fn versions(host: &Host, plugin: &str) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for e in &host.history {
        if let HostEvent::PluginLog(log) = e
            && log.plugin == plugin
            && log.message == "event"
            && let Some((_, v)) = log.fields.iter().find(|(k, _)| k == "version")
        {
            *counts.entry(v.clone()).or_default() += 1;
        }
    }
    counts
}

/// Write `bytes` to `dest` in four parts with pauses between them, like a
/// slow copy over the network.
async fn write_slowly(dest: &Path, bytes: &[u8]) {
    use std::io::Write;
    let mut file = std::fs::File::create(dest).unwrap();
    for part in bytes.chunks(bytes.len().div_ceil(4)) {
        file.write_all(part).unwrap();
        file.flush().unwrap();
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
}

#[tokio::test]
async fn replacing_plugins_under_load_loses_nothing_and_a_broken_file_never_serves() {
    let db = TestDb::new().await;
    let mut settings = settings_with(&db.ledger(1).await);
    let cache = tempfile::tempdir().unwrap();
    settings.compile_cache = Some(cache.path().join("cache"));
    let dir = plugins_dir(&["recorder", "ledger"]);
    let folder = dir.path().to_owned();
    let mut host = Host::start_with(&db, dir, settings).await;
    let stop = Arc::new(AtomicBool::new(false));
    let writer = keep_writing(db.url.clone(), stop.clone());
    host.wait_seen("recorder", 50).await;

    // 1. Version 2 of both, copied then renamed into place.
    copy_then_rename(&plugin("recorder_v2"), &folder.join("recorder.wasm"));
    copy_then_rename(&plugin("ledger_v2"), &folder.join("ledger.wasm"));
    host.wait_until("recorder 2.0.0 serves", |e| {
        reloaded_to(e, "recorder", "2.0.0")
    })
    .await;
    host.wait_until("ledger 2.0.0 serves", |e| reloaded_to(e, "ledger", "2.0.0"))
        .await;
    host.settle(Duration::from_millis(300)).await;

    // 2. A broken file: reported, and version 2 keeps serving.
    std::fs::write(
        folder.join("recorder.wasm"),
        b"\0asm\x0d\0\x01\0 not a component",
    )
    .unwrap();
    host.wait_until(
        "the broken file is rejected",
        |e| matches!(e, HostEvent::PluginRejected(r) if r.file.ends_with("recorder.wasm")),
    )
    .await;
    let c = db.client().await;
    let report = status::status(&c).await.unwrap();
    let recorder = report
        .plugins
        .iter()
        .find(|p| p.name == "recorder")
        .unwrap();
    assert_eq!(recorder.version, "2.0.0", "{report}");
    assert!(
        recorder
            .load_error
            .as_deref()
            .is_some_and(|e| e.contains("not a valid WebAssembly component")),
        "{report}"
    );
    assert!(
        report.to_string().contains("version 2.0.0 keeps serving"),
        "{report}"
    );
    host.settle(Duration::from_millis(300)).await;

    // 3. Back to version 1, written slowly in place (never read half-written),
    //    and compiled before: it comes from the compile cache.
    write_slowly(
        &folder.join("recorder.wasm"),
        &std::fs::read(plugin("recorder")).unwrap(),
    )
    .await;
    copy_then_rename(&plugin("ledger"), &folder.join("ledger.wasm"));
    host.wait_until("recorder 1.0.0 serves again, from the cache", |e| {
        matches!(e, HostEvent::PluginReloaded { plugin, version, from_cache: true, .. }
            if plugin == "recorder" && version == "1.0.0")
    })
    .await;
    host.wait_until("ledger 1.0.0 serves again", |e| {
        reloaded_to(e, "ledger", "1.0.0")
    })
    .await;
    host.settle(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    let rows = writer.await.unwrap();

    // Every event reached the recorder (at least once) ...
    let seen = host.wait_unique("recorder", rows as usize).await;
    let ids: HashSet<&str> = seen.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids.len() as i64, rows);
    let by_version = versions(&host, "recorder");
    assert_eq!(
        by_version.keys().collect::<Vec<_>>(),
        ["1.0.0", "2.0.0"],
        "only the two good versions served: {by_version:?}"
    );
    // ... and the ledger applied each exactly once across its versions.
    eventually(
        &c,
        "the ledger has every event",
        &format!("SELECT count(*) >= {rows} FROM public.ledger"),
    )
    .await;
    let counts = texts(
        &c,
        "SELECT count(*)::text || '/' || count(DISTINCT event_id)::text FROM public.ledger",
    )
    .await;
    assert_eq!(
        counts,
        [format!("{rows}/{rows}")],
        "ledger rows/distinct events"
    );
    let report = status::status(&c).await.unwrap();
    let recorder = report
        .plugins
        .iter()
        .find(|p| p.name == "recorder")
        .unwrap();
    assert_eq!(recorder.load_error, None, "a good load clears it: {report}");
    host.stop().await;
}

#[tokio::test]
async fn a_manifest_change_installs_and_drops_triggers_between_batches() {
    let db = TestDb::new().await;
    let dir = plugins_dir(&["recorder"]);
    let folder = dir.path().to_owned();
    let mut host = Host::start_with(&db, dir, test_settings()).await;
    let c = db.client().await;
    let prices_captured = "SELECT EXISTS (SELECT 1 FROM pg_trigger t JOIN pg_class r ON r.oid = t.tgrelid
                                          WHERE r.relname = 'prices' AND t.tgname LIKE 'pgevents%')";
    assert_eq!(
        texts(&c, &format!("SELECT ({prices_captured})::text")).await,
        ["false"]
    );

    copy_then_rename(&plugin("recorder_v2"), &folder.join("recorder.wasm"));
    host.wait_until("version 2 serves", |e| reloaded_to(e, "recorder", "2.0.0"))
        .await;
    // Version 2 also subscribes to prices: captured before it took over.
    assert_eq!(
        texts(&c, &format!("SELECT ({prices_captured})::text")).await,
        ["true"]
    );
    c.batch_execute("INSERT INTO prices VALUES (1, 9.5, 'tea')")
        .await
        .unwrap();
    let seen = host.wait_seen("recorder", 1).await;
    assert_eq!(seen[0].table, "prices");

    copy_then_rename(&plugin("recorder"), &folder.join("recorder.wasm"));
    host.wait_until("version 1 serves", |e| reloaded_to(e, "recorder", "1.0.0"))
        .await;
    // No plugin wants prices any more: its trigger is gone.
    assert_eq!(
        texts(&c, &format!("SELECT ({prices_captured})::text")).await,
        ["false"]
    );
    host.stop().await;
}

#[tokio::test]
async fn plugins_added_removed_and_put_back_while_running() {
    let db = TestDb::new().await;
    // `faulty` starts from the beginning of the log; others from now (the default).
    let settings = settings_with("[plugins.faulty]\nstart_from = \"beginning\"\n");
    let dir = plugins_dir(&["recorder"]);
    let folder = dir.path().to_owned();
    let mut host = Host::start_with(&db, dir, settings).await;
    let c = db.client().await;
    c.batch_execute("INSERT INTO items (name) VALUES ('before')")
        .await
        .unwrap();
    host.wait_seen("recorder", 1).await;

    // Added: `filtered` from now, `faulty` from the beginning.
    copy_then_rename(&plugin("filtered"), &folder.join("filtered.wasm"));
    copy_then_rename(&plugin("faulty"), &folder.join("faulty.wasm"));
    for name in ["filtered", "faulty"] {
        host.wait_until(
            &format!("{name} starts"),
            |e| matches!(e, HostEvent::PluginStarted { plugin, .. } if plugin == name),
        )
        .await;
    }
    c.batch_execute("INSERT INTO items (name) VALUES ('after')")
        .await
        .unwrap();
    let faulty = host.wait_seen("faulty", 2).await;
    let names: Vec<_> = faulty.iter().filter_map(|s| s.row_str("name")).collect();
    assert_eq!(
        names,
        ["before", "after"],
        "faulty starts from the beginning"
    );
    let filtered = host.wait_seen("filtered", 1).await;
    let names: Vec<_> = filtered.iter().filter_map(|s| s.row_str("name")).collect();
    assert_eq!(names, ["after"], "filtered starts from now");

    // Removed: paused, and its tables stay captured.
    std::fs::remove_file(folder.join("filtered.wasm")).unwrap();
    host.wait_until(
        "filtered is removed",
        |e| matches!(e, HostEvent::PluginRemoved { plugin } if plugin == "filtered"),
    )
    .await;
    let report = status::status(&c).await.unwrap();
    assert!(
        report
            .to_string()
            .contains("plugin filtered 1.0.0 [paused: file missing]"),
        "{report}"
    );
    c.batch_execute("INSERT INTO items (name) VALUES ('while away')")
        .await
        .unwrap();
    host.wait_seen("recorder", 3).await;
    host.settle(Duration::from_millis(300)).await;
    assert_eq!(
        host.seen("filtered").len(),
        1,
        "a removed plugin gets nothing"
    );

    // Put back: resumes at its cursor, so nothing is missed.
    copy_then_rename(&plugin("filtered"), &folder.join("filtered.wasm"));
    let filtered = host.wait_seen("filtered", 2).await;
    let names: Vec<_> = filtered.iter().filter_map(|s| s.row_str("name")).collect();
    assert_eq!(names, ["after", "while away"]);
    host.stop().await;
}

#[tokio::test]
async fn per_plugin_limits_fail_the_batch_naming_the_limit_and_others_keep_serving() {
    let db = TestDb::new().await;
    let settings = settings_with(
        "[plugins.faulty]\nhandle_timeout = \"1s\"\nmemory_limit = \"16MiB\"\nmax_attempts = 1\n",
    );
    let mut host = Host::start_with(&db, plugins_dir(&["faulty", "recorder"]), settings).await;
    let c = db.client().await;
    c.batch_execute(
        "INSERT INTO items (name) VALUES ('fine');
         INSERT INTO items (name, note) VALUES ('hog', 'oom');
         INSERT INTO items (name, note) VALUES ('nap', 'sleep');
         INSERT INTO items (name, note) VALUES ('spin', 'loop');
         INSERT INTO items (name, note) VALUES ('talk', 'chatty');",
    )
    .await
    .unwrap();
    for (what, expected) in [
        ("memory", "exceeded the memory limit of 16 MiB per instance"),
        (
            "sleep",
            "exceeded the time limit of 1s per call while blocked in a host call",
        ),
        ("loop", "exceeded the CPU time limit of 1s per call"),
    ] {
        host.wait_until(&format!("{what} dead-lettered"), |e| {
            matches!(e, HostEvent::DeadLettered { plugin, message, .. }
                if plugin == "faulty" && message.contains(expected))
        })
        .await;
    }
    let faulty = host.wait_seen("faulty", 1).await;
    assert_eq!(faulty[0].row_str("name").as_deref(), Some("fine"));
    // The chatty call (a batch of one) wrote what one event may (100 + 10
    // lines); the rest was dropped.
    let mut lines = 0;
    host.wait_until("110 chatter lines", |e| {
        lines += matches!(e, HostEvent::PluginLog(l) if l.message == "chatter") as usize;
        lines >= 110
    })
    .await;
    host.settle(Duration::from_millis(500)).await;
    let chatter = host
        .history
        .iter()
        .filter(|e| matches!(e, HostEvent::PluginLog(l) if l.message == "chatter"))
        .count();
    assert_eq!(chatter, 110);
    // The recorder was never held up by any of it.
    host.wait_seen("recorder", 5).await;
    host.stop().await;
}

#[tokio::test]
async fn the_sandbox_denies_files_environment_sockets_and_ungranted_tables() {
    let db = TestDb::new().await;
    // The recorder may subscribe to `items` only; `filtered` to nothing it wants.
    let settings = settings_with(
        "[plugins.recorder]\ntables = [\"public.items\"]\n\
         [plugins.filtered]\ntables = [\"public.orders\"]\n",
    );
    let mut host = Host::start_with(
        &db,
        plugins_dir(&["faulty", "recorder", "filtered"]),
        settings,
    )
    .await;
    let rejections = host.rejections();
    assert!(
        rejections.iter().any(|r| r.contains(
            "plugin `filtered` subscribes only to tables the operator has not granted it"
        ) && r.contains("public.items")),
        "{rejections:?}"
    );
    let c = db.client().await;
    c.batch_execute(
        "INSERT INTO uuid_keyed (label) VALUES ('not granted');
         INSERT INTO items (name, note) VALUES ('probe', 'probe');",
    )
    .await
    .unwrap();
    host.wait_until(
        "the probe reports",
        |e| matches!(e, HostEvent::PluginLog(l) if l.message == "probe"),
    )
    .await;
    let probe: BTreeMap<String, String> = host
        .history
        .iter()
        .find_map(|e| match e {
            HostEvent::PluginLog(l) if l.message == "probe" => {
                Some(l.fields.iter().cloned().collect())
            }
            _ => None,
        })
        .unwrap();
    for key in ["file", "cwd_list", "env", "socket"] {
        assert!(probe[key].starts_with("denied"), "{key}: {probe:?}");
    }
    assert_eq!(probe["env_count"], "0", "{probe:?}");
    // The recorder gets items, never the table it was not granted.
    let seen = host.wait_seen("recorder", 1).await;
    host.settle(Duration::from_millis(300)).await;
    let tables: Vec<_> = host
        .seen("recorder")
        .iter()
        .map(|s| s.table.clone())
        .collect();
    assert_eq!(tables, ["items"], "{seen:?}");
    host.stop().await;
}
