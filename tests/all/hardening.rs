//! Hardening: what a table owner, another role, a careless or hostile plugin
//! author can and cannot do to the host, the log and each other. Each test
//! reproduces an attack or an accident with real roles and real plugin files.

use std::time::{Duration, Instant};

use pgevents_host::observer::HostEvent;
use pgevents_host::{schema, status};

use crate::support::*;

/// A host running `hostile` (configured by `config`, a TOML table body) and
/// `recorder`, with `settings` otherwise.
async fn with_hostile(db: &TestDb, config: &str) -> Host {
    let settings = settings_with(&format!("[plugins.hostile]\nconfig = {{ {config} }}\n"));
    Host::start_with(db, plugins_dir(&["hostile", "recorder"]), settings).await
}

/// The recorder still delivers: one insert arrives.
async fn others_still_run(db: &TestDb, host: &mut Host) {
    let before = host.seen("recorder").len();
    db.client()
        .await
        .batch_execute("INSERT INTO items (name) VALUES ('others run')")
        .await
        .unwrap();
    host.wait_seen("recorder", before + 1).await;
}

/// The script: a table owner's cast to json for a type of its own,
/// which capture's `to_jsonb` runs. It runs as `pgevents_capture`, which may
/// append to the log and nothing else: no role gains anything, in composite
/// values and arrays either.
#[tokio::test]
async fn a_table_owners_cast_to_json_gains_nothing_through_capture() {
    let db = TestDb::new().await;
    let app = db.role("app").await;
    let admin = db.client().await;
    admin
        .batch_execute(&format!("GRANT CREATE ON SCHEMA public TO {app}"))
        .await
        .unwrap();
    let app_url = format!("{}?user={app}", db.url);
    let owner = connect(&app_url).await;
    owner
        .batch_execute(&format!(
            "CREATE TYPE status AS ENUM ('new');
             CREATE TYPE holder AS (s status);
             CREATE TABLE orders (id int PRIMARY KEY, s status, ss status[], h holder);
             -- Tries for more, remembers how each try went, renders the value.
             CREATE FUNCTION status_json(status) RETURNS json LANGUAGE plpgsql AS $$
             BEGIN
                 BEGIN
                     EXECUTE 'ALTER ROLE {app} SUPERUSER';
                     PERFORM set_config('app.superuser', 'gained', false);
                 EXCEPTION WHEN others THEN
                     PERFORM set_config('app.superuser', SQLERRM, false);
                 END;
                 BEGIN
                     DELETE FROM pgevents.cursors;
                     PERFORM set_config('app.cursors', 'deleted', false);
                 EXCEPTION WHEN others THEN
                     PERFORM set_config('app.cursors', SQLERRM, false);
                 END;
                 -- As the owner of capture: re-grant it, re-point its
                 -- search_path, drop it, or make objects for it to find.
                 BEGIN
                     EXECUTE 'GRANT EXECUTE ON FUNCTION pgevents.capture() TO PUBLIC';
                     PERFORM set_config('app.grant', 'done', false);
                 EXCEPTION WHEN others THEN
                     PERFORM set_config('app.grant', SQLERRM, false);
                 END;
                 BEGIN
                     EXECUTE 'ALTER FUNCTION pgevents.capture() SET search_path = public, pg_catalog';
                     PERFORM set_config('app.alter', 'done', false);
                 EXCEPTION WHEN others THEN
                     PERFORM set_config('app.alter', SQLERRM, false);
                 END;
                 BEGIN
                     EXECUTE 'DROP FUNCTION pgevents.capture() CASCADE';
                     PERFORM set_config('app.drop', 'done', false);
                 EXCEPTION WHEN others THEN
                     PERFORM set_config('app.drop', SQLERRM, false);
                 END;
                 BEGIN
                     EXECUTE 'CREATE TABLE public.planted (id int)';
                     PERFORM set_config('app.create', 'done', false);
                 EXCEPTION WHEN others THEN
                     PERFORM set_config('app.create', SQLERRM, false);
                 END;
                 PERFORM set_config('app.ran_as', current_user, false);
                 RETURN to_json($1::text);
             END $$;
             CREATE CAST (status AS json) WITH FUNCTION status_json(status);"
        ))
        .await
        .unwrap();
    let settings = settings_with("[plugins.hostile]\nconfig = { table = \"orders\" }\n");
    let mut host = Host::start_with(&db, plugins_dir(&["hostile", "recorder"]), settings).await;
    owner
        .batch_execute("INSERT INTO orders VALUES (1, 'new', '{new}', ROW('new'))")
        .await
        .unwrap();
    let setting = |name: &str| {
        let name = name.to_owned();
        let owner = &owner;
        async move {
            let row = owner
                .query_one("SELECT current_setting($1, true)", &[&name])
                .await
                .unwrap();
            row.get::<_, Option<String>>(0).unwrap_or_default()
        }
    };
    assert_eq!(setting("app.ran_as").await, schema::CAPTURE_ROLE);
    let superuser = setting("app.superuser").await;
    assert!(
        superuser.contains("must be superuser") || superuser.contains("permission denied"),
        "{superuser}"
    );
    assert!(
        setting("app.cursors").await.contains("permission denied"),
        "{}",
        setting("app.cursors").await
    );
    for what in ["app.grant", "app.alter", "app.drop", "app.create"] {
        let how = setting(what).await;
        assert!(how.contains("may not run DDL"), "{what}: {how}");
    }
    let intact: bool = admin
        .query_one(
            "SELECT p.prosecdef AND p.proconfig @> ARRAY['search_path=pg_catalog, pg_temp']
                    AND NOT EXISTS (SELECT 1 FROM aclexplode(p.proacl) a WHERE a.grantee = 0)
             FROM pg_proc p WHERE p.oid = 'pgevents.capture()'::regprocedure",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(intact, "the capture function was changed");
    let superuser: bool = admin
        .query_one("SELECT rolsuper FROM pg_roles WHERE rolname = $1", &[&app])
        .await
        .unwrap()
        .get(0);
    assert!(!superuser, "the table owner became superuser");
    // The event is delivered, rendered by the owner's cast.
    let seen = host.wait_until(
        "the order's event",
        |e| matches!(e, HostEvent::PluginLog(l) if l.plugin == "hostile" && l.message == "event"),
    );
    seen.await;
    // The issue's own script, without the error handling: the write fails,
    // and nothing was gained.
    owner
        .batch_execute(&format!(
            "CREATE OR REPLACE FUNCTION status_json(status) RETURNS json LANGUAGE plpgsql AS
             $$BEGIN EXECUTE 'ALTER ROLE {app} SUPERUSER'; RETURN to_json($1::text); END$$;"
        ))
        .await
        .unwrap();
    let error = owner
        .batch_execute("INSERT INTO orders VALUES (2, 'new')")
        .await
        .unwrap_err();
    let text = pgevents_host::db::error_text(&error);
    assert!(
        text.contains("must be superuser") || text.contains("permission denied"),
        "{text}"
    );
    let superuser: bool = admin
        .query_one("SELECT rolsuper FROM pg_roles WHERE rolname = $1", &[&app])
        .await
        .unwrap()
        .get(0);
    assert!(!superuser);
    host.stop().await;
}

/// A role with USAGE on the host's schema (every sql grant's role has it)
/// cannot attach the capture function to a table of its own to write rows
/// into the log.
#[tokio::test]
async fn another_role_cannot_attach_capture_to_a_table_of_its_own() {
    let db = TestDb::new().await;
    Host::start(&db, &["recorder"]).await.stop().await;
    let other = db.role("other").await;
    db.client()
        .await
        .batch_execute(&format!(
            "GRANT CREATE ON SCHEMA public TO {other}; GRANT USAGE ON SCHEMA pgevents TO {other}"
        ))
        .await
        .unwrap();
    let c = connect(&format!("{}?user={other}", db.url)).await;
    c.batch_execute("CREATE TABLE mine (id int)").await.unwrap();
    let error = c
        .batch_execute(
            "CREATE TRIGGER forged AFTER INSERT ON mine REFERENCING NEW TABLE AS pgevents_new_rows
             FOR EACH STATEMENT EXECUTE FUNCTION pgevents.capture('quiet')",
        )
        .await
        .unwrap_err();
    let text = pgevents_host::db::error_text(&error);
    assert!(
        text.contains("permission denied for function pgevents.capture"),
        "{text}"
    );
}

/// Subscribing to the host's own tables (a trigger on the log captures its
/// own writes; on the cursors, every acknowledgement) or to system tables is
/// refused at load, naming the subscription; such triggers left by an older
/// version are removed.
#[tokio::test]
async fn the_hosts_own_and_system_tables_cannot_be_subscribed_to() {
    let db = TestDb::new().await;
    let mut host = with_hostile(&db, "schema = \"pgevents\", table = \"events\"").await;
    let rejected = host.rejections().join("\n");
    assert!(
        rejected.contains("`pgevents.events`, in the host's own schema"),
        "{rejected}"
    );
    others_still_run(&db, &mut host).await;
    host.stop().await;
    let host = with_hostile(&db, "schema = \"pg_catalog\", table = \"pg_class\"").await;
    assert!(
        host.rejections().join("\n").contains("a system schema"),
        "{:?}",
        host.rejections()
    );
    host.stop().await;

    // What an older version left: a paused plugin subscribed to the log and
    // the cursors, with their capture triggers.
    let c = db.client().await;
    c.batch_execute(
        "INSERT INTO pgevents.plugins (name, version, file, sha256, manifest, active)
             VALUES ('old', '1', 'old.wasm', '', '{}', false);
         INSERT INTO pgevents.subscriptions (plugin, schema_name, table_name, ops, relid)
             VALUES ('old', 'pgevents', 'events', '{I}', 'pgevents.events'::regclass),
                    ('old', 'pgevents', 'cursors', '{U}', 'pgevents.cursors'::regclass);
         CREATE TRIGGER pgevents_capture_insert AFTER INSERT ON pgevents.events
             REFERENCING NEW TABLE AS pgevents_new_rows FOR EACH STATEMENT
             EXECUTE FUNCTION pgevents.capture('quiet');
         CREATE TRIGGER pgevents_capture_update AFTER UPDATE ON pgevents.cursors
             FOR EACH ROW EXECUTE FUNCTION pgevents.capture('quiet', 'plugin', 'part');",
    )
    .await
    .unwrap();
    let mut host = Host::start(&db, &["recorder"]).await;
    let left = texts(
        &c,
        "SELECT tgname::text FROM pg_trigger WHERE tgrelid IN ('pgevents.events'::regclass, 'pgevents.cursors'::regclass)",
    )
    .await;
    assert!(left.is_empty(), "{left:?}");
    others_still_run(&db, &mut host).await;
    host.stop().await;
}

/// `describe` blocked in a WASI sleep is abandoned like `handle`: the host
/// starts and serves the others, stops on request, `inspect` answers, and a
/// file added later still loads.
#[tokio::test]
async fn a_manifest_that_never_comes_delays_nothing_else() {
    let db = TestDb::new().await;
    let started = Instant::now();
    let mut host = with_hostile(&db, "describe_sleep = \"60\"").await;
    assert!(started.elapsed() < Duration::from_secs(15));
    let rejected = host.rejections().join("\n");
    assert!(
        rejected.contains("did not answer within the time limit"),
        "{rejected}"
    );
    others_still_run(&db, &mut host).await;
    host.stop().await;

    // inspect, with the config that makes it sleep.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("host.toml");
    std::fs::write(
        &config,
        "[plugins.hostile]\nconfig = { describe_sleep = \"60\" }\n",
    )
    .unwrap();
    let started = Instant::now();
    let out = host_bin()
        .arg("inspect")
        .arg(plugin("hostile"))
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(started.elapsed() < Duration::from_secs(15));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("did not answer"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The same during a reload: the sleeping file is reported, and a good file
/// dropped in after it is loaded.
#[tokio::test]
async fn a_sleeping_manifest_does_not_stop_live_reload() {
    let db = TestDb::new().await;
    let settings = settings_with("[plugins.hostile]\nconfig = { describe_sleep = \"60\" }\n");
    let plugins = plugins_dir(&["recorder"]);
    let dir = plugins.path().to_owned();
    let mut host = Host::start_with(&db, plugins, settings).await;
    copy_then_rename(&plugin("hostile"), &dir.join("hostile.wasm"));
    host.wait_until("the sleeping file is rejected", |e| {
        matches!(e, HostEvent::PluginRejected(r)
                if r.error.contains("did not answer") || r.error.contains("still blocked"))
    })
    .await;
    copy_then_rename(&plugin("filtered"), &dir.join("filtered.wasm"));
    host.wait_until(
        "a later file loads",
        |e| matches!(e, HostEvent::PluginStarted { plugin, .. } if plugin == "filtered"),
    )
    .await;
    host.stop().await;
}

/// `bytes` of a component with a custom section appended: the same plugin,
/// other bytes (as a rebuild gives).
fn variant(bytes: &[u8], n: u8) -> Vec<u8> {
    let mut out = bytes.to_vec();
    // Custom section: id 0, size 3, name length 1, name "v", payload n.
    out.extend_from_slice(&[0, 3, 1, b'v', n]);
    out
}

/// An author rebuilding one file whose `describe` sleeps strands one call,
/// not one per rebuild: while its first call is stuck, the file is refused
/// at once; a good file still loads.
#[tokio::test]
async fn a_file_rebuilt_while_its_describe_is_stuck_is_refused_at_once() {
    let db = TestDb::new().await;
    let settings = settings_with("[plugins.hostile]\nconfig = { describe_sleep = \"60\" }\n");
    let plugins = plugins_dir(&["recorder"]);
    let dir = plugins.path().to_owned();
    let mut host = Host::start_with(&db, plugins, settings).await;
    let bytes = std::fs::read(plugin("hostile")).unwrap();
    let file = dir.join("hostile.wasm");
    for n in 0..4u8 {
        let temp = dir.join(".hostile.tmp");
        std::fs::write(&temp, variant(&bytes, n)).unwrap();
        std::fs::rename(&temp, &file).unwrap();
        // The first is asked and abandoned (a young file's first failure
        // may be taken for one still being written, and tried again).
        let want: &[&str] = if n == 0 {
            &["did not answer", "still blocked"]
        } else {
            &["still blocked"]
        };
        host.history
            .retain(|e| !matches!(e, HostEvent::PluginRejected(_)));
        host.wait_until(&format!("version {n} is rejected"), |e| {
            matches!(e, HostEvent::PluginRejected(_))
        })
        .await;
        let last = host.rejections().pop().unwrap();
        assert!(want.iter().any(|w| last.contains(w)), "version {n}: {last}");
    }
    copy_then_rename(&plugin("filtered"), &dir.join("filtered.wasm"));
    host.wait_until(
        "a good file loads",
        |e| matches!(e, HostEvent::PluginStarted { plugin, .. } if plugin == "filtered"),
    )
    .await;
    host.stop().await;
}

/// A subscribed table renamed, and a new one made under the subscribed
/// name: the one of that name is the one captured (the name wins).
#[tokio::test]
async fn a_new_table_of_the_subscribed_name_is_the_one_captured() {
    let db = TestDb::new().await;
    let mut host = Host::start(&db, &["recorder"]).await;
    let c = db.client().await;
    c.batch_execute(
        "ALTER TABLE items RENAME TO items_old;
         CREATE TABLE items (id serial PRIMARY KEY, name text, note text, qty int);",
    )
    .await
    .unwrap();
    let mut admin = db.client().await;
    schema::reconcile_triggers(&mut admin, None).await.unwrap();
    c.batch_execute("INSERT INTO items (name) VALUES ('new table')")
        .await
        .unwrap();
    let seen = host.wait_seen("recorder", 1).await;
    assert_eq!(seen[0].row_str("name").as_deref(), Some("new table"));
    let old = texts(
        &c,
        "SELECT tgname::text FROM pg_trigger WHERE tgrelid = 'items_old'::regclass",
    )
    .await;
    assert!(old.is_empty(), "the old table is still captured: {old:?}");
    host.stop().await;
}

/// One table under two of a plugin's subscriptions (one dropped, another
/// renamed to its name): each of its events is delivered once.
#[tokio::test]
async fn two_subscriptions_never_deliver_one_event_twice() {
    let db = TestDb::new().await;
    let mut host = Host::start(&db, &["recorder"]).await;
    let c = db.client().await;
    c.batch_execute("DROP TABLE uuid_keyed; ALTER TABLE no_key RENAME TO uuid_keyed")
        .await
        .unwrap();
    let mut admin = db.client().await;
    schema::reconcile_triggers(&mut admin, None).await.unwrap();
    c.batch_execute("INSERT INTO uuid_keyed (a, b) VALUES (1, 'once')")
        .await
        .unwrap();
    host.wait_seen("recorder", 1).await;
    host.settle(Duration::from_millis(400)).await;
    assert_eq!(
        host.seen("recorder").len(),
        1,
        "{:#?}",
        host.seen("recorder")
    );
    host.stop().await;
}

/// A capture trigger renamed by the table's owner would capture every change
/// twice beside the one the host installs again: it is dropped.
#[tokio::test]
async fn a_renamed_capture_trigger_is_dropped() {
    let db = TestDb::new().await;
    Host::start(&db, &["recorder"]).await.stop().await;
    let c = db.client().await;
    c.batch_execute("ALTER TRIGGER pgevents_capture_update ON items RENAME TO keep_me")
        .await
        .unwrap();
    let mut admin = db.client().await;
    schema::reconcile_triggers(&mut admin, None).await.unwrap();
    c.batch_execute(
        "INSERT INTO items (name) VALUES ('x'); UPDATE items SET qty = 1 WHERE name = 'x'",
    )
    .await
    .unwrap();
    let updates: i64 = c
        .query_one("SELECT count(*) FROM pgevents.events WHERE op = 'U'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(updates, 1);
    let names = texts(
        &c,
        "SELECT tgname::text FROM pg_trigger WHERE tgrelid = 'items'::regclass ORDER BY 1",
    )
    .await;
    assert!(!names.contains(&"keep_me".to_owned()), "{names:?}");
}

/// Upgrading while a writer holds the log open: the migration that alters
/// the log waits at most a moment at a time, so other writers are not
/// queued behind it for as long as that writer stays open.
#[tokio::test]
async fn an_upgrade_does_not_hold_up_writers_behind_an_open_one() {
    let db = TestDb::new().await;
    let mut admin = db.client().await;
    schema::install_up_to(&mut admin, 5).await.unwrap();
    admin
        .batch_execute(
            "CREATE TRIGGER pgevents_capture_insert AFTER INSERT ON public.items
                 REFERENCING NEW TABLE AS pgevents_new_rows FOR EACH STATEMENT
                 EXECUTE FUNCTION pgevents.capture('quiet', 'id');",
        )
        .await
        .unwrap();
    let open = db.client().await;
    open.batch_execute("BEGIN; INSERT INTO items (name) VALUES ('held open')")
        .await
        .unwrap();
    let url = db.url.clone();
    let upgrade = tokio::spawn(async move {
        let mut c = connect(&url).await;
        schema::install(&mut c).await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Other writers get through, each within about the migration's lock
    // timeout (100 ms) while it keeps trying.
    let writer = db.client().await;
    for i in 0..10 {
        let started = Instant::now();
        writer
            .execute(
                "INSERT INTO items (name) VALUES ($1)",
                &[&format!("not held up {i}")],
            )
            .await
            .unwrap();
        assert!(
            started.elapsed() < Duration::from_millis(800),
            "a writer waited {:?} behind the upgrade",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    open.batch_execute("COMMIT").await.unwrap();
    let version = tokio::time::timeout(PATIENCE, upgrade)
        .await
        .expect("the upgrade finishes once the writer commits")
        .unwrap()
        .unwrap();
    assert!(version >= 6);
}

/// A NUL byte in a manifest string (which PostgreSQL text cannot hold)
/// rejects that file, as a bad file, and the others run.
#[tokio::test]
async fn a_nul_byte_in_a_manifest_rejects_that_file_only() {
    let db = TestDb::new().await;
    for (config, says) in [
        ("version = \"1.0\\u0000\"", "version"),
        ("table = \"it\\u0000ems\"", "NUL byte"),
        ("columns = \"na\\u0000me\"", "NUL byte"),
        (
            "table = \"a_table_name_that_is_much_longer_than_the_sixty_three_bytes_postgres_keeps\"",
            "63-byte limit",
        ),
    ] {
        let mut host = with_hostile(&db, config).await;
        let rejected = host.rejections().join("\n");
        assert!(rejected.contains(says), "{config}: {rejected}");
        others_still_run(&db, &mut host).await;
        host.stop().await;
    }
}

/// A file whose modification time lies in the future is loaded (not taken
/// for one still being written, for ever).
#[tokio::test]
async fn a_file_dated_in_the_future_is_loaded() {
    let db = TestDb::new().await;
    let plugins = plugins_dir(&["recorder"]);
    let dir = plugins.path().to_owned();
    let mut host = Host::start_with(&db, plugins, test_settings()).await;
    let temp = dir.join(".filtered.tmp");
    std::fs::copy(plugin("filtered"), &temp).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&temp)
        .unwrap()
        .set_modified(std::time::SystemTime::now() + Duration::from_secs(86_400))
        .unwrap();
    std::fs::rename(&temp, dir.join("filtered.wasm")).unwrap();
    host.wait_until(
        "the future-dated file loads",
        |e| matches!(e, HostEvent::PluginStarted { plugin, .. } if plugin == "filtered"),
    )
    .await;
    host.stop().await;
}

/// Run `pgevents-host` with `args`; it must finish within 15 s.
fn run_bounded(args: &[&str]) -> (bool, String) {
    let mut child = host_bin()
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut stderr = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
            return (status.success(), stderr);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("pgevents-host {args:?} did not finish");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `inspect` of a device or a named pipe answers at once; a named pipe in
/// the plugins folder is reported and the others run.
#[tokio::test]
async fn devices_and_named_pipes_are_refused_not_read() {
    let (ok, stderr) = run_bounded(&["inspect", "/dev/zero"]);
    assert!(
        !ok && stderr.contains("is not a regular file (a device)"),
        "{stderr}"
    );
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("pipe.wasm");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let (ok, stderr) = run_bounded(&["inspect", fifo.to_str().unwrap()]);
    assert!(!ok && stderr.contains("(a named pipe)"), "{stderr}");

    let db = TestDb::new().await;
    let plugins = plugins_dir(&["recorder"]);
    std::fs::rename(&fifo, plugins.path().join("pipe.wasm")).unwrap();
    let mut host = Host::start_with(&db, plugins, test_settings()).await;
    assert!(
        host.rejections().join("\n").contains("(a named pipe)"),
        "{:?}",
        host.rejections()
    );
    others_still_run(&db, &mut host).await;
    host.stop().await;
}

/// Calls abandoned in WASI sleeps give their instance slot back: with a pool
/// of two, a plugin whose calls all sleep does not keep another from running.
#[tokio::test]
async fn abandoned_calls_do_not_starve_other_plugins() {
    let db = TestDb::new().await;
    let mut settings = settings_with("[plugins.faulty]\nhandle_timeout = \"300ms\"\n");
    settings.max_instances = 2;
    let mut host = Host::start_with(&db, plugins_dir(&["faulty", "recorder"]), settings).await;
    let c = db.client().await;
    c.batch_execute("INSERT INTO items (name, note) VALUES ('nap', 'sleep')")
        .await
        .unwrap();
    host.wait_until("faulty has two calls stuck", |e| {
        matches!(e, HostEvent::BatchFailed { plugin, message, .. }
            if plugin == "faulty" && message.contains("still blocked in host calls"))
    })
    .await;
    for i in 0..5 {
        c.execute(
            "INSERT INTO items (name) VALUES ($1)",
            &[&format!("after {i}")],
        )
        .await
        .unwrap();
    }
    // Within far less than the 30 s the stuck calls sleep.
    tokio::time::timeout(Duration::from_secs(10), host.wait_seen("recorder", 6))
        .await
        .expect("the recorder was starved of instances");
    host.stop().await;
}

/// A statement that fails before it runs (a missing table, a syntax error,
/// CALL of a function) fails alone: the plugin gets the error and the batch
/// commits, once; COPY is refused; a failure message with a NUL byte is
/// stored (with the NUL replaced), not retried for ever.
#[tokio::test]
async fn sql_errors_fail_the_statement_not_the_batch() {
    let db = TestDb::new().await;
    let role = db.role("runner").await;
    for (statement, sqlstate) in [
        ("SELECT * FROM no_such_table", "42P01"),
        ("SELEC 1", "42601"),
        ("CALL now()", "42809"),
        ("COPY items FROM STDIN", "0A000"),
    ] {
        let config = format!(
            "[plugins.sqlrunner]\nsql = {{ role = \"{role}\" }}\nconfig = {{ statement = \"{statement}\" }}\n"
        );
        let mut host =
            Host::start_with(&db, plugins_dir(&["sqlrunner"]), settings_with(&config)).await;
        db.client()
            .await
            .batch_execute("INSERT INTO items (name) VALUES ('a'), ('b')")
            .await
            .unwrap();
        host.wait_until(
            &format!("{statement}: the batch is acknowledged"),
            |e| matches!(e, HostEvent::BatchHandled { plugin, .. } if plugin == "sqlrunner"),
        )
        .await;
        let errors: Vec<String> = host
            .history
            .iter()
            .filter_map(|e| match e {
                HostEvent::PluginLog(l) if l.message == "sql error" => l
                    .fields
                    .iter()
                    .find(|(k, _)| k == "sqlstate")
                    .map(|(_, v)| v.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(errors, [sqlstate, sqlstate], "{statement}");
        assert!(host.failures("sqlrunner").is_empty(), "{statement}");
        host.settle(Duration::from_millis(200)).await;
        assert_eq!(
            host.seen("sqlrunner").len(),
            2,
            "{statement}: delivered once"
        );
        host.stop().await;
    }
    let config = format!(
        "[plugins.sqlrunner]\nsql = {{ role = \"{role}\" }}\nconfig = {{ fail_text = \"bad\\u0000news\" }}\n"
    );
    let mut host = Host::start_with(&db, plugins_dir(&["sqlrunner"]), settings_with(&config)).await;
    db.client()
        .await
        .batch_execute("INSERT INTO items (name) VALUES ('c')")
        .await
        .unwrap();
    host.wait_until(
        "the failure is dead-lettered",
        |e| matches!(e, HostEvent::DeadLettered { plugin, .. } if plugin == "sqlrunner"),
    )
    .await;
    let stored = texts(
        &db.client().await,
        "SELECT error FROM pgevents.dead_letters",
    )
    .await;
    assert_eq!(stored, ["bad\u{FFFD}news"]);
    host.stop().await;
}

/// A failure message is cut like a log line, in the log and in the database;
/// a plugin that prints more than the 1 MiB it may is told so, briefly.
#[tokio::test]
async fn failure_messages_are_bounded_and_name_the_limit() {
    let db = TestDb::new().await;
    let mut host = with_hostile(&db, "fail_bytes = \"60000000\"").await;
    db.client()
        .await
        .batch_execute("INSERT INTO items (name) VALUES ('x')")
        .await
        .unwrap();
    host.wait_until(
        "dead-lettered",
        |e| matches!(e, HostEvent::DeadLettered { plugin, .. } if plugin == "hostile"),
    )
    .await;
    let c = db.client().await;
    let lengths: (i32, i32) = {
        let row = c
            .query_one(
                "SELECT (SELECT max(length(error)) FROM pgevents.dead_letters),
                        (SELECT length(last_error) FROM pgevents.plugins WHERE name = 'hostile')",
                &[],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert!(lengths.0 <= 4200 && lengths.1 <= 4200, "{lengths:?}");
    host.stop().await;

    let mut host = with_hostile(&db, "print_bytes = \"2000000\"").await;
    c.batch_execute("INSERT INTO items (name) VALUES ('y')")
        .await
        .unwrap();
    host.wait_until(
        "the print flood fails the batch",
        |e| matches!(e, HostEvent::BatchFailed { plugin, .. } if plugin == "hostile"),
    )
    .await;
    let message = host.failures("hostile").remove(0);
    assert!(message.contains("printed more than 1 MiB"), "{message}");
    assert!(message.len() < 1000, "{} bytes", message.len());
    host.stop().await;
}

/// Any role can take any advisory lock: the host's coordination does not
/// use one a role could hold against it, and its locks are refused to others.
#[tokio::test]
async fn another_role_cannot_hold_the_hosts_locks() {
    let db = TestDb::new().await;
    Host::start(&db, &["recorder"]).await.stop().await;
    let other = db.role("locker").await;
    // As a sql grant's role has: USAGE on the host's schema.
    db.client()
        .await
        .batch_execute(&format!("GRANT USAGE ON SCHEMA pgevents TO {other}"))
        .await
        .unwrap();
    let c = connect(&format!("{}?user={other}", db.url)).await;
    c.batch_execute("SELECT pg_advisory_lock(8101805613064842355)")
        .await
        .unwrap();
    // Parsing an INSERT takes the table's ROW EXCLUSIVE lock before the
    // privilege check; an immutable function folded at planning holds it.
    let mut trick = Vec::new();
    for table in ["pgevents.migrations", "pgevents.locks"] {
        let c = connect(&format!("{}?user={other}", db.url)).await;
        let statement = format!(
            "CREATE FUNCTION pg_temp.slow() RETURNS int IMMUTABLE LANGUAGE plpgsql AS
                 $$BEGIN PERFORM pg_sleep(20); RETURN 1; END$$;
             INSERT INTO {table} SELECT pg_temp.slow()::text"
        );
        trick.push(tokio::spawn(async move {
            let _ = c.batch_execute(&statement).await;
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    for statement in [
        "BEGIN; LOCK TABLE pgevents.migrations IN SHARE ROW EXCLUSIVE MODE",
        "BEGIN; SELECT 1 FROM pgevents.locks FOR UPDATE",
    ] {
        let error = c.batch_execute(statement).await.unwrap_err();
        assert!(
            pgevents_host::db::error_text(&error).contains("permission denied"),
            "{statement}: {error}"
        );
        c.batch_execute("ROLLBACK").await.unwrap();
    }
    // Start, registration and reconciliation go through.
    let started = Instant::now();
    let mut host = Host::start(&db, &["recorder"]).await;
    assert!(started.elapsed() < Duration::from_secs(10));
    others_still_run(&db, &mut host).await;
    host.stop().await;
    for t in trick {
        t.abort();
    }
}

/// A table owner who disables a capture trigger: `status` says so, and the
/// host's next reconcile enables it again (with a warning).
#[tokio::test]
async fn a_disabled_capture_trigger_is_reported_and_enabled_again() {
    let db = TestDb::new().await;
    Host::start(&db, &["recorder"]).await.stop().await;
    let c = db.client().await;
    c.batch_execute("ALTER TABLE items DISABLE TRIGGER pgevents_capture_insert")
        .await
        .unwrap();
    let report = status::status(&c).await.unwrap();
    assert_eq!(report.disabled_triggers, ["\"public\".\"items\" I"]);
    assert!(
        report.to_string().contains("DISABLED capture trigger"),
        "{report}"
    );
    let mut admin = db.client().await;
    let reconciled = schema::reconcile_triggers(&mut admin, None).await.unwrap();
    assert_eq!(reconciled.enabled.len(), 1, "{reconciled:?}");
    assert!(
        status::status(&c)
            .await
            .unwrap()
            .disabled_triggers
            .is_empty()
    );

    // A running host does it on its own.
    let settings = pgevents_host::config::Settings {
        reconcile_interval: Duration::from_millis(200),
        ..test_settings()
    };
    let mut host = Host::start_with(&db, plugins_dir(&["recorder"]), settings).await;
    c.batch_execute("ALTER TABLE items DISABLE TRIGGER pgevents_capture_insert")
        .await
        .unwrap();
    eventually(
        &c,
        "the trigger is enabled again",
        "SELECT tgenabled = 'O' FROM pg_trigger WHERE tgname = 'pgevents_capture_insert' AND tgrelid = 'items'::regclass",
    )
    .await;
    others_still_run(&db, &mut host).await;
    host.stop().await;
}

/// A subscribed table renamed (and renamed back) while the host runs keeps
/// being captured and delivered: tables are followed by identity.
#[tokio::test]
async fn a_renamed_table_is_followed_by_identity() {
    let db = TestDb::new().await;
    let settings = pgevents_host::config::Settings {
        reconcile_interval: Duration::from_millis(100),
        ..test_settings()
    };
    let mut host = Host::start_with(&db, plugins_dir(&["recorder"]), settings).await;
    let c = db.client().await;
    c.batch_execute("INSERT INTO items (name) VALUES ('before')")
        .await
        .unwrap();
    c.batch_execute("ALTER TABLE items RENAME TO goods")
        .await
        .unwrap();
    c.batch_execute("INSERT INTO goods (name) VALUES ('renamed')")
        .await
        .unwrap();
    // A reconcile sees the rename and keeps the trigger.
    let mut admin = db.client().await;
    let report = schema::reconcile_triggers(&mut admin, None).await.unwrap();
    assert!(report.dropped.is_empty(), "{report:?}");
    assert_eq!(report.renamed.len(), 1, "{report:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.batch_execute("ALTER TABLE goods RENAME TO items")
        .await
        .unwrap();
    c.batch_execute("INSERT INTO items (name) VALUES ('back')")
        .await
        .unwrap();
    let seen = host.wait_seen("recorder", 3).await;
    let got: Vec<(String, String)> = seen
        .iter()
        .map(|s| (s.table.clone(), s.row_str("name").unwrap()))
        .collect();
    assert_eq!(
        got,
        [
            ("items".to_owned(), "before".to_owned()),
            // Under the name the plugin subscribed to.
            ("items".to_owned(), "renamed".to_owned()),
            ("items".to_owned(), "back".to_owned())
        ]
    );
    host.stop().await;
}

/// A plugin that writes into a table it subscribes to feeds itself: the host
/// says so in its log (a `HostEvent`) and `status` counts the events.
#[tokio::test]
async fn a_plugin_feeding_itself_is_detected() {
    let db = TestDb::new().await;
    let role = db.role("feeder").await;
    db.client()
        .await
        .batch_execute(&format!(
            "GRANT INSERT ON items TO {role}; GRANT USAGE ON SEQUENCE items_id_seq TO {role}"
        ))
        .await
        .unwrap();
    let config = format!(
        "[plugins.sqlrunner]\nsql = {{ role = \"{role}\" }}\n\
         config = {{ statement = \"INSERT INTO items (name) SELECT 'again' WHERE $1::text IS NOT NULL\" }}\n"
    );
    let mut host = Host::start_with(&db, plugins_dir(&["sqlrunner"]), settings_with(&config)).await;
    db.client()
        .await
        .batch_execute("INSERT INTO items (name) VALUES ('seed')")
        .await
        .unwrap();
    host.wait_until("the loop is detected", |e| {
        matches!(e, HostEvent::OwnWrites { plugin, events } if plugin == "sqlrunner" && *events > 0)
    })
    .await;
    let report = status::status(&db.client().await).await.unwrap();
    let p = report
        .plugins
        .iter()
        .find(|p| p.name == "sqlrunner")
        .unwrap();
    assert!(p.own_writes > 0, "{report}");
    assert!(
        report.to_string().contains("its own sql writes"),
        "{report}"
    );
    host.stop().await;
}

/// A panic while compiling a file (a compiler bug) rejects that file, with
/// the panic's message, and live reload goes on.
#[tokio::test]
async fn a_panic_while_compiling_rejects_the_file_and_reload_goes_on() {
    let db = TestDb::new().await;
    pgevents_host::runtime::panic_when_loading("panics-when-compiled");
    let plugins = plugins_dir(&["recorder"]);
    let dir = plugins.path().to_owned();
    let mut host = Host::start_with(&db, plugins, test_settings()).await;
    copy_then_rename(&plugin("hostile"), &dir.join("panics-when-compiled.wasm"));
    host.wait_until("the file is rejected", |e| {
        matches!(e, HostEvent::PluginRejected(r)
            if r.error.contains("panicked") && r.error.contains("a panic injected"))
    })
    .await;
    copy_then_rename(&plugin("filtered"), &dir.join("filtered.wasm"));
    host.wait_until(
        "a later file loads",
        |e| matches!(e, HostEvent::PluginStarted { plugin, .. } if plugin == "filtered"),
    )
    .await;
    others_still_run(&db, &mut host).await;
    host.stop().await;
}

/// A cast can make `pgevents_capture` create a large object (a function call,
/// not DDL): the host deletes it at its next start, with a warning, rather
/// than refuse to start.
#[tokio::test]
async fn a_large_object_made_during_capture_does_not_stop_the_host() {
    let db = TestDb::new().await;
    let app = db.role("lo_app").await;
    let admin = db.client().await;
    admin
        .batch_execute(&format!("GRANT CREATE ON SCHEMA public TO {app}"))
        .await
        .unwrap();
    let owner = connect(&format!("{}?user={app}", db.url)).await;
    owner
        .batch_execute(
            "CREATE TYPE mood AS ENUM ('ok');
             CREATE TABLE moods (id int PRIMARY KEY, m mood);
             CREATE FUNCTION mood_json(mood) RETURNS json LANGUAGE plpgsql AS $$
             BEGIN PERFORM lo_create(0); RETURN to_json($1::text); END $$;
             CREATE CAST (mood AS json) WITH FUNCTION mood_json(mood);",
        )
        .await
        .unwrap();
    let settings = settings_with("[plugins.hostile]\nconfig = { table = \"moods\" }\n");
    let host = Host::start_with(&db, plugins_dir(&["hostile"]), settings.clone()).await;
    owner
        .batch_execute("INSERT INTO moods VALUES (1, 'ok')")
        .await
        .unwrap();
    host.stop().await;
    let owned =
        "SELECT count(*) FROM pg_largeobject_metadata m JOIN pg_roles r ON r.oid = m.lomowner
                 WHERE r.rolname = 'pgevents_capture'";
    let before: i64 = admin.query_one(owned, &[]).await.unwrap().get(0);
    assert!(before >= 1);
    // The next start goes through, and the large object is gone.
    let host = Host::start_with(&db, plugins_dir(&["hostile"]), settings).await;
    let after: i64 = admin.query_one(owned, &[]).await.unwrap().get(0);
    assert_eq!(after, 0);
    host.stop().await;
}

/// A row forged into the log with a key that is not a JSON object is refused
/// by the log; one there from before does not stop partitioned readers.
#[tokio::test]
async fn a_forged_log_row_with_a_bad_key_stops_no_reader() {
    let db = TestDb::new().await;
    let settings = settings_with("[plugins.recorder]\npartitions = 2\n");
    Host::start_with(&db, plugins_dir(&["recorder"]), settings.clone())
        .await
        .stop()
        .await;
    let c = db.client().await;
    let forged = "INSERT INTO pgevents.events (op, schema_name, table_name, pk, new_row, old_row)
                  VALUES ('U', 'x', 'y', '[1]', '{}', '{}')";
    let error = c.batch_execute(forged).await.unwrap_err();
    assert!(
        pgevents_host::db::error_text(&error).contains("events_key_is_an_object"),
        "{error}"
    );
    // As if it had been logged before the check existed.
    c.batch_execute(&format!(
        "ALTER TABLE pgevents.events DROP CONSTRAINT events_key_is_an_object; {forged};
         ALTER TABLE pgevents.events ADD CONSTRAINT events_key_is_an_object
             CHECK (pk IS NULL OR jsonb_typeof(pk) = 'object') NOT VALID;"
    ))
    .await
    .unwrap();
    let mut host = Host::start_with(&db, plugins_dir(&["recorder"]), settings).await;
    others_still_run(&db, &mut host).await;
    host.stop().await;
}

/// A subscribed table replaced while events of it wait (renamed away and
/// made again, or dropped and made again, with no host running): the
/// waiting events are delivered, under the subscribed name.
#[tokio::test]
async fn waiting_events_of_a_replaced_table_are_delivered() {
    let db = TestDb::new().await;
    Host::start(&db, &["recorder"]).await.stop().await;
    let c = db.client().await;
    c.batch_execute(
        "INSERT INTO items (name) VALUES ('w1'), ('w2');
         ALTER TABLE items RENAME TO items_old;
         CREATE TABLE items (id serial PRIMARY KEY, name text, note text, qty int);",
    )
    .await
    .unwrap();
    let mut host = Host::start(&db, &["recorder"]).await;
    c.batch_execute("INSERT INTO items (name) VALUES ('new')")
        .await
        .unwrap();
    let seen = host.wait_seen("recorder", 3).await;
    let names: Vec<String> = seen.iter().map(|s| s.row_str("name").unwrap()).collect();
    assert_eq!(names, ["w1", "w2", "new"]);
    host.stop().await;
    c.batch_execute(
        "INSERT INTO items (name) VALUES ('w3');
         DROP TABLE items;
         CREATE TABLE items (id serial PRIMARY KEY, name text, note text, qty int);",
    )
    .await
    .unwrap();
    let mut host = Host::start(&db, &["recorder"]).await;
    let seen = host.wait_seen("recorder", 1).await;
    assert_eq!(seen[0].row_str("name").as_deref(), Some("w3"));
    host.stop().await;
}

/// A table renamed while no host runs is still its plugin's table when one
/// starts: the plugin starts, and the table's events carry the subscribed
/// name.
#[tokio::test]
async fn a_table_renamed_while_no_host_runs_stays_subscribed() {
    let db = TestDb::new().await;
    Host::start(&db, &["recorder"]).await.stop().await;
    let c = db.client().await;
    c.batch_execute("ALTER TABLE items RENAME TO goods")
        .await
        .unwrap();
    let mut host = Host::start(&db, &["recorder"]).await;
    assert!(host.rejections().is_empty(), "{:?}", host.rejections());
    c.batch_execute("INSERT INTO goods (name) VALUES ('renamed')")
        .await
        .unwrap();
    let seen = host.wait_seen("recorder", 1).await;
    assert_eq!(
        (seen[0].table.as_str(), seen[0].row_str("name").as_deref()),
        ("items", Some("renamed"))
    );
    host.stop().await;
}

/// Changing a table's capture triggers while a long reader holds it makes
/// nobody else wait behind the change for long: it tries in short waits and
/// gives way in between; it is done once the reader ends.
#[tokio::test]
async fn a_trigger_change_does_not_queue_a_table_behind_a_long_reader() {
    let db = TestDb::new().await;
    Host::start(&db, &["recorder"]).await.stop().await;
    let c = db.client().await;
    // A stale trigger to drop (dropping takes the table's strongest lock).
    c.batch_execute("ALTER TRIGGER pgevents_capture_update ON items RENAME TO stale")
        .await
        .unwrap();
    let reader = db.client().await;
    reader
        .batch_execute("BEGIN; SELECT count(*) FROM items")
        .await
        .unwrap();
    let url = db.url.clone();
    let reconcile = tokio::spawn(async move {
        let mut admin = connect(&url).await;
        schema::reconcile_triggers(&mut admin, None).await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..5 {
        let started = Instant::now();
        c.batch_execute("SELECT count(*) FROM items").await.unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "a reader waited {:?} behind a trigger change",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    reader.batch_execute("COMMIT").await.unwrap();
    let report = tokio::time::timeout(PATIENCE, reconcile)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(report.failed.is_empty(), "{report:?}");
    assert!(
        report.dropped.iter().any(|t| t.name == "stale"),
        "{report:?}"
    );
}

/// Restored without owners (`pg_dump --no-owner`), the capture function
/// belongs to the restoring role: it refuses to run (a write fails, no
/// cast runs with that role's privileges) until a host start puts it right.
#[tokio::test]
async fn a_capture_function_owned_by_another_role_refuses_until_repaired() {
    let db = TestDb::new().await;
    Host::start(&db, &["recorder"]).await.stop().await;
    let c = db.client().await;
    c.batch_execute("ALTER FUNCTION pgevents.capture() OWNER TO CURRENT_USER")
        .await
        .unwrap();
    let error = c
        .batch_execute("INSERT INTO items (name) VALUES ('x')")
        .await
        .unwrap_err();
    assert!(
        pgevents_host::db::error_text(&error).contains("instead of pgevents_capture"),
        "{error}"
    );
    let mut host = Host::start(&db, &["recorder"]).await;
    others_still_run(&db, &mut host).await;
    host.stop().await;
}
