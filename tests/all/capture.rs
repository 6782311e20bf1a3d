//! Capture: what the triggers record, for every operation and table shape.

use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn insert_update_delete_truncate_carry_old_and_new_rows() {
    let db = TestDb::new().await;
    let mut host = Host::start(&db, &["recorder"]).await;
    let c = db.client().await;
    c.batch_execute(
        "INSERT INTO items (name, qty) VALUES ('apple', 1), ('pear', 2);
         UPDATE items SET qty = 10 WHERE name = 'apple';
         DELETE FROM items WHERE name = 'pear';
         TRUNCATE items;",
    )
    .await
    .unwrap();
    let seen = host.wait_seen("recorder", 5).await;
    host.settle(std::time::Duration::from_millis(300)).await;
    let seen_all = host.seen("recorder");
    assert_eq!(seen_all.len(), 5, "{seen_all:#?}");
    let ops: Vec<&str> = seen.iter().map(|s| s.op.as_str()).collect();
    assert_eq!(ops, ["insert", "insert", "update", "delete", "truncate"]);
    assert_eq!(
        seen[0].new,
        Some(json!({"id": 1, "name": "apple", "note": null, "qty": 1}))
    );
    assert_eq!(seen[0].old, None);
    assert_eq!(seen[0].key, Some(json!({"id": 1})));
    assert_eq!(seen[2].old.as_ref().unwrap()["qty"], json!(1));
    assert_eq!(seen[2].new.as_ref().unwrap()["qty"], json!(10));
    assert_eq!(
        seen[3].old,
        Some(json!({"id": 2, "name": "pear", "note": null, "qty": 2}))
    );
    assert_eq!(seen[3].new, None);
    assert_eq!(seen[3].key, Some(json!({"id": 2})));
    assert_eq!(
        (
            seen[4].key.clone(),
            seen[4].new.clone(),
            seen[4].old.clone()
        ),
        (None, None, None)
    );
    assert!(
        seen.iter()
            .all(|s| s.schema == "public" && s.table == "items" && s.attempt == 1)
    );
    assert_delivery_order(&db.client().await, &seen).await;
    assert_unique(&seen);
    host.stop().await;
}

#[tokio::test]
async fn uuid_composite_and_keyless_tables() {
    let db = TestDb::new().await;
    let mut host = Host::start(&db, &["recorder"]).await;
    let c = db.client().await;
    c.batch_execute(
        "INSERT INTO uuid_keyed (id, label, t, pgevents_row) VALUES ('6f1c2b0e-6a52-4c8e-9d1a-0f3c9b1e2a77', 'u', 42, 7);
         INSERT INTO composite_keyed VALUES (7, 'x-1', 'v');
         INSERT INTO no_key VALUES (1, 'a'), (1, 'a');
         UPDATE no_key SET b = 'b';
         DELETE FROM composite_keyed;",
    )
    .await
    .unwrap();
    let seen = host.wait_seen("recorder", 7).await;
    assert_eq!(
        seen[0].key,
        Some(json!({"id": "6f1c2b0e-6a52-4c8e-9d1a-0f3c9b1e2a77"}))
    );
    assert_eq!(
        seen[0].new,
        Some(
            json!({"id": "6f1c2b0e-6a52-4c8e-9d1a-0f3c9b1e2a77", "label": "u", "t": 42, "pgevents_row": 7})
        ),
        "a column named like the capture function's alias must not replace the row"
    );
    assert_eq!(seen[1].key, Some(json!({"tenant": 7, "code": "x-1"})));
    let keyless: Vec<_> = seen.iter().filter(|s| s.table == "no_key").collect();
    assert_eq!(
        keyless.len(),
        4,
        "two inserts and two updates of identical rows"
    );
    assert!(keyless.iter().all(|s| s.key.is_none()));
    assert_eq!(keyless[2].old, Some(json!({"a": 1, "b": "a"})));
    assert_eq!(keyless[2].new, Some(json!({"a": 1, "b": "b"})));
    assert_eq!(seen[6].op, "delete");
    assert_eq!(seen[6].key, Some(json!({"tenant": 7, "code": "x-1"})));
    host.stop().await;
}

#[tokio::test]
async fn hostile_identifiers_in_a_non_public_schema() {
    let db = TestDb::new().await;
    let mut host = Host::start(&db, &["recorder"]).await;
    let c = db.client().await;
    c.batch_execute(
        r#"INSERT INTO "Odd Schema"."Mixed ""Case""; Table" ("Weird Col", "select") VALUES (1, 'it''s; DROP TABLE x; --');
           UPDATE "Odd Schema"."Mixed ""Case""; Table" SET "select" = 'ok';"#,
    )
    .await
    .unwrap();
    let seen = host.wait_seen("recorder", 2).await;
    assert_eq!(seen[0].schema, "Odd Schema");
    assert_eq!(seen[0].table, "Mixed \"Case\"; Table");
    assert_eq!(seen[0].key, Some(json!({"Weird Col": 1})));
    assert_eq!(
        seen[0].new.as_ref().unwrap()["select"],
        json!("it's; DROP TABLE x; --")
    );
    assert_eq!(
        seen[1].old.as_ref().unwrap()["select"],
        json!("it's; DROP TABLE x; --")
    );
    host.stop().await;
}

#[tokio::test]
async fn writers_need_no_privilege_on_the_log_and_keep_their_search_path() {
    let db = TestDb::new().await;
    let mut host = Host::start(&db, &["recorder"]).await;
    let role = format!("writer_{}", &db.name[db.name.len() - 8..]);
    let c = db.client().await;
    c.batch_execute(&format!(
        "CREATE ROLE {role} LOGIN;
         GRANT INSERT, UPDATE, SELECT ON items TO {role};
         GRANT USAGE ON SEQUENCE items_id_seq TO {role};"
    ))
    .await
    .unwrap();
    let mut config: tokio_postgres::Config = db.url.parse().unwrap();
    config.user(&role).application_name("limited-app");
    let (writer, connection) = config.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    writer
        .batch_execute(
            "SET search_path = '';
             INSERT INTO public.items (name) VALUES ('written by a limited role');
             UPDATE public.items SET qty = 3;",
        )
        .await
        .expect("a writer without privileges on pgevents can still write");
    let denied = writer.batch_execute("SELECT * FROM pgevents.events").await;
    assert!(
        denied.is_err(),
        "the writer must not be able to read the log"
    );
    let sp: String = writer
        .query_one("SHOW search_path", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        sp, "\"\"",
        "capture must not change the session's search_path"
    );
    let seen = host.wait_seen("recorder", 2).await;
    assert_eq!(seen[0].user, role);
    assert_eq!(seen[0].application_name, "limited-app");
    host.stop().await;
    drop(writer);
    c.batch_execute(&format!(
        "REVOKE ALL ON items FROM {role}; REVOKE ALL ON SEQUENCE items_id_seq FROM {role}"
    ))
    .await
    .unwrap();
    drop(db);
    let admin = connect(&server_url()).await;
    admin
        .batch_execute(&format!("DROP ROLE IF EXISTS {role}"))
        .await
        .unwrap();
}

#[tokio::test]
async fn context_tag_application_and_capture_time() {
    let db = TestDb::new().await;
    let mut host = Host::start(&db, &["recorder"]).await;
    let app = db.client_as("billing-service").await;
    app.batch_execute(
        "BEGIN;
         SET LOCAL pgevents.context = 'order 42 checkout';
         INSERT INTO items (name) VALUES ('tagged');
         COMMIT;
         INSERT INTO items (name) VALUES ('untagged');",
    )
    .await
    .unwrap();
    let seen = host.wait_seen("recorder", 2).await;
    assert_eq!(seen[0].tag.as_deref(), Some("order 42 checkout"));
    assert_eq!(seen[1].tag, None);
    assert!(seen.iter().all(|s| s.application_name == "billing-service"));
    assert!(seen[0].captured_at.ends_with('Z') && seen[0].captured_at.contains('T'));
    assert_ne!(seen[0].txid, seen[1].txid);
    host.stop().await;
}

#[tokio::test]
async fn bulk_statements_capture_every_row() {
    let db = TestDb::new().await;
    let mut host = Host::start(&db, &["recorder"]).await;
    let c = db.client().await;
    c.batch_execute(
        "INSERT INTO items (name, qty) SELECT 'bulk ' || g, g FROM generate_series(1, 1000) g;
         DELETE FROM items WHERE qty <= 500;",
    )
    .await
    .unwrap();
    let seen = host.wait_seen("recorder", 1500).await;
    host.settle(std::time::Duration::from_millis(300)).await;
    let seen_all = host.seen("recorder");
    assert_eq!(seen_all.len(), 1500);
    assert_unique(&seen);
    assert_delivery_order(&db.client().await, &seen).await;
    assert_eq!(seen.iter().filter(|s| s.op == "delete").count(), 500);
    host.stop().await;
}

#[tokio::test]
async fn a_table_recreated_or_rekeyed_while_the_host_runs_is_captured_again() {
    let db = TestDb::new().await;
    let settings = pgevents_host::config::Settings {
        reconcile_interval: std::time::Duration::from_millis(200),
        ..test_settings()
    };
    let mut host = Host::start_with(&db, plugins_dir(&["recorder"]), settings).await;
    let c = db.client().await;
    // A migration tool replaces the table, and another re-keys one.
    c.batch_execute(
        "DROP TABLE items;
         CREATE TABLE items (id serial PRIMARY KEY, name text, note text, qty int);
         ALTER TABLE composite_keyed DROP CONSTRAINT composite_keyed_pkey;
         ALTER TABLE composite_keyed ADD PRIMARY KEY (code);",
    )
    .await
    .unwrap();
    // Wait until the reconciler has repaired capture, then write.
    eventually(
        &c,
        "capture was not repaired",
        "SELECT (SELECT count(*) = 4 FROM pg_trigger
                 WHERE tgrelid = 'items'::regclass AND tgname LIKE 'pgevents_capture_%')
            AND (SELECT bool_and(pg_get_triggerdef(oid) LIKE '%capture(''notify/named'', ''public'', ''composite_keyed'', ''code'')') FROM pg_trigger
                 WHERE tgrelid = 'composite_keyed'::regclass AND tgname LIKE 'pgevents_capture_%')",
    )
    .await;
    c.batch_execute("INSERT INTO items (name) VALUES ('after re-create'); INSERT INTO composite_keyed VALUES (1, 'k', 'v')")
        .await
        .unwrap();
    let seen = host.wait_seen("recorder", 2).await;
    assert_eq!(seen[0].row_str("name").as_deref(), Some("after re-create"));
    assert_eq!(seen[1].key, Some(json!({"code": "k"})));
    host.stop().await;
}

/// The same values written by a session with odd settings are rendered
/// exactly as by a default one: floats shortest-exact, times in UTC, dates
/// ISO, intervals in PostgreSQL's style, bytea as hex, also inside composite
/// values and arrays.
#[tokio::test]
async fn values_do_not_depend_on_the_writers_session_settings() {
    let db = TestDb::new().await;
    let c = db.client().await;
    c.batch_execute(
        "CREATE TYPE public.span AS (d date, i interval);
         ALTER TABLE items ADD COLUMN f float8, ADD COLUMN ts timestamptz, ADD COLUMN d date,
             ADD COLUMN i interval, ADD COLUMN b bytea, ADD COLUMN s public.span,
             ADD COLUMN tss timestamptz[], ADD COLUMN m money;",
    )
    .await
    .unwrap();
    let mut host = Host::start(&db, &["recorder"]).await;
    let insert = "INSERT INTO items (name, f, ts, d, i, b, s, tss, m) VALUES (
        'x', 0.1::float8 + 0.2::float8, '2024-05-06 07:08:09.123456+00', '2024-05-06',
        '1 hour 30 minutes', '\\x00ff', ROW('2024-05-06', '1 hour 30 minutes'),
        ARRAY['2024-05-06 07:08:09+00'::timestamptz], 1234.5)";
    c.batch_execute(insert).await.unwrap();
    let odd = db.client().await;
    odd.batch_execute(
        "SET extra_float_digits = 0; SET TimeZone = 'America/St_Johns';
         SET DateStyle = 'SQL, DMY'; SET IntervalStyle = 'iso_8601'; SET bytea_output = 'escape';
         SET lc_monetary = 'C.utf8';",
    )
    .await
    .unwrap();
    odd.batch_execute(insert).await.unwrap();
    // The writer's own settings are left as it set them.
    let tz: String = odd.query_one("SHOW TimeZone", &[]).await.unwrap().get(0);
    assert_eq!(tz, "America/St_Johns");
    let seen = host.wait_seen("recorder", 2).await;
    let row = |i: usize| {
        let mut row = seen[i].new.clone().unwrap();
        row.as_object_mut().unwrap().remove("id");
        row
    };
    assert_eq!(
        row(0),
        row(1),
        "the writer's session changed how values render"
    );
    let expected = json!({
        "name": "x", "note": null, "qty": null,
        "f": 0.30000000000000004,
        "ts": "2024-05-06T07:08:09.123456+00:00",
        "d": "2024-05-06",
        "i": "01:30:00",
        "b": "\\x00ff",
        "s": {"d": "2024-05-06", "i": "01:30:00"},
        "tss": ["2024-05-06T07:08:09+00:00"],
        "m": "$1,234.50",
    });
    assert_eq!(row(1), expected);
    host.stop().await;
}

/// Delivery order across sessions needs the log's sequence to hand out
/// values in time order; a cache (each session drawing from a block of its
/// own) is taken back out at start.
#[tokio::test]
async fn a_cache_on_the_logs_sequence_is_taken_out_at_start() {
    let db = TestDb::new().await;
    Host::start(&db, &["recorder"]).await.stop().await;
    let c = db.client().await;
    c.batch_execute("ALTER SEQUENCE pgevents.events_seq CACHE 50")
        .await
        .unwrap();
    Host::start(&db, &["recorder"]).await.stop().await;
    let cache: i64 = c
        .query_one(
            "SELECT seqcache FROM pg_sequence WHERE seqrelid = 'pgevents.events_seq'::regclass",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(cache, 1);
}
