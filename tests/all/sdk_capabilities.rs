//! The Python and JavaScript SDKs' capabilities, run by `test`.
//!
//! `sql`, on plugins built against the `sql-handler` world, against a real
//! database: values of every kind go in and come back as the language's own
//! types (numeric as exact text; json exact in Python), a caught unique violation lets the
//! handler go on, an uncaught one, a missing privilege or a bad parameter
//! fails the event in the author's words, nothing is written (the
//! transaction is rolled back), and without the grant the plugin is refused
//! as the host refuses it.
//!
//! `http`, on plugins with the wasi:http import (Python: the http-handler
//! world of wit/http; JavaScript: built without `-d http`): each status
//! class fails the event as `check()` promises, and a request no rule
//! answers, one the grant does not allow (also with a 3 MB body), a URL
//! that does not parse and one with credentials each fail it with a message
//! that says so, never an opaque trap.
//!
//! `publish`, on plugins built against the `publisher` world: a message for
//! the event being handled, and a refused one fails that event.

use std::time::Duration;

use crate::support::*;

/// The notes `sql-py` and `sql-js` act on, as `public.items` inserts.
const NOTES: [&str; 7] = [
    "a",
    "caught",
    "duplicate",
    "forbidden",
    "bad-param",
    "b",
    "types",
];

/// SQLSTATEs a statement fails with (`raise-CODE`, after `NOTES`): the
/// kinds the SDKs retry and some they do not.
const RAISED: [&str; 11] = [
    "40001", "40P01", "08006", "53300", "57014", "55P03", "58030", "XX000", "23503", "22P02",
    "42P01",
];

/// The sql test plugins' tables, and a role that may write `public.audit`
/// and not read `public.forbidden`.
async fn audit_tables(db: &TestDb) -> String {
    let role = db.role("auditor").await;
    db.client()
        .await
        .batch_execute(&format!(
            "CREATE TABLE public.audit (item_id int PRIMARY KEY, note text, qty numeric, doc jsonb, raw bytea);
             CREATE TABLE public.forbidden (id int);
             GRANT INSERT, SELECT ON public.audit TO {role};"
        ))
        .await
        .unwrap();
    role
}

/// In a running host, the SDK's statements commit with the cursor: the
/// batch that fails at its third event (an uncaught unique violation) is
/// rolled back, the two events before it are replayed alone and applied
/// once, the failed one is dead-lettered with its SQLSTATE, the next is
/// applied. Python, whose SDK computes the index the host cuts the batch at.
#[tokio::test]
async fn in_a_host_the_python_sdks_statements_apply_each_event_once_around_a_failure() {
    let db = TestDb::new().await;
    let role = audit_tables(&db).await;
    let config = format!("[plugins.sql-py]\nsql = {{ role = \"{role}\" }}\n");
    let mut host = Host::start_with(&db, plugins_dir(&["sql-py"]), settings_with(&config)).await;
    let c = db.client().await;
    c.batch_execute(
        "INSERT INTO items (name, note) VALUES ('a', 'a'), ('b', 'caught'), ('c', 'duplicate'), ('d', 'd')",
    )
    .await
    .unwrap();
    eventually(
        &c,
        "three events applied and one dead-lettered",
        "SELECT (SELECT count(*) FROM public.audit) = 3
            AND (SELECT count(*) FROM pgevents.dead_letters) = 1",
    )
    .await;
    host.settle(Duration::from_millis(300)).await;
    let applied: Vec<(i32, String)> = c
        .query(
            "SELECT item_id, note FROM public.audit ORDER BY item_id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        applied,
        [(1, "a".into()), (2, "caught".into()), (4, "d".into())],
        "each handled event applied once, the failed one not at all"
    );
    let dead = c
        .query_one(
            "SELECT new_row->>'note', error FROM pgevents.dead_letters",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(dead.get::<_, String>(0), "duplicate");
    let error: String = dead.get(1);
    assert!(
        error.contains("SQLSTATE 23505: duplicate key value"),
        "{error}"
    );
}

/// Run `test` on the sql test plugin `name` (granted sql as a role that may
/// write `public.audit` and not read `public.forbidden`); its report, after
/// checking what every language must show.
async fn run_sql_plugin(name: &str) -> String {
    let db = TestDb::new().await;
    let role = audit_tables(&db).await;
    let client = db.client().await;
    let dir = tempfile::tempdir().unwrap();
    let raised: Vec<String> = RAISED.iter().map(|c| format!("raise-{c}")).collect();
    let notes: Vec<&str> = NOTES
        .iter()
        .copied()
        .chain(raised.iter().map(String::as_str))
        .collect();
    let events = item_events(dir.path(), &notes);
    let test = |config: Option<String>| {
        let mut cmd = host_bin();
        cmd.arg("test")
            .arg(plugin(name))
            .arg(&events)
            .args(["--database-url", &db.url]);
        if let Some(config) = config {
            let path = dir.path().join("host.toml");
            std::fs::write(&path, config).unwrap();
            cmd.arg("--config").arg(path);
        }
        run(&mut cmd)
    };

    let (code, _, err) = test(None);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("sql = { role =") && err.contains(&format!("[plugins.{name}]")),
        "refused without the grant, naming it: {err}"
    );

    let (code, out, err) = test(Some(format!(
        "[plugins.{name}]\nsql = {{ role = \"{role}\" }}\n"
    )));
    assert_eq!(code, 1, "events fail: {out}{err}");
    // Retried or not as the Rust SDK decides, in every language.
    for (i, code) in RAISED.iter().enumerate() {
        let retried = pgevents_plugin_sdk::sql::SqlError::new(*code, "").is_transient();
        let expected = format!(
            "FAILED at event {} ({}): SQLSTATE {code}: raised;",
            NOTES.len() + i + 1,
            if retried { "retry" } else { "permanent" }
        );
        assert!(out.contains(&expected), "{expected}\n in:\n{out}");
    }
    for expected in [
        "log info: already recorded unique=yes sqlstate=23505",
        "FAILED at event 3 (permanent): SQLSTATE 23505: duplicate key value violates unique constraint \"audit_pkey\" (Key (item_id)=(1) already exists.); the 2 before it were handled",
        "FAILED at event 4 (permanent): SQLSTATE 42501: permission denied for table forbidden",
        "FAILED at event 5 (retry): TypeError: ",
        "parameter $1 is ",
        "sql transaction rolled back",
    ] {
        assert!(out.contains(expected), "{expected}\n in:\n{out}");
    }
    let rows: i64 = client
        .query_one("SELECT count(*) FROM public.audit", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 0, "rolled back: the table is unchanged\n{out}");
    out
}

#[tokio::test]
async fn the_python_sdk_runs_sql_with_exact_values_and_fails_events_on_sql_errors() {
    let out = run_sql_plugin("sql-py").await;
    for id in [1, 2, 6] {
        let expected = format!(
            "log info: row inserted=1 item_id=int:{id} note=str:'{}' qty=str:'12345678901234567890.125' \
             doc=dict:{{'d': Decimal('0.1'), 'k': [1, 'x', None]}} raw=bytes:b'\\x00\\xff' \
             positive=bool:True nothing=NoneType:None",
            NOTES[id - 1]
        );
        assert!(out.contains(&expected), "{expected}\n in:\n{out}");
    }
    let types = "log info: types f=float:1.5 neg=float:-0.0 b=bool:True big=str:'1180591620717411303424' \
                 i=int:-9223372036854775808 t=str:'2026-01-02T03:04:05.678901Z' \
                 u=str:'00000000-0000-0000-0000-000000000001' \
                 j=dict:{'k': Decimal('12345678901234567890.125'), 't': [1, None]}";
    assert!(out.contains(types), "{types}\n in:\n{out}");
}

#[tokio::test]
async fn the_javascript_sdk_runs_sql_with_exact_values_and_fails_events_on_sql_errors() {
    let out = run_sql_plugin("sql-js").await;
    for id in [1, 2, 6] {
        let expected = format!(
            "log info: row inserted=1 item_id=number:{id} note=string:\"{}\" \
             qty=string:\"12345678901234567890.125\" doc=object:{{\"d\":0.1,\"k\":[1,\"x\",null]}} \
             raw=Uint8Array:0,255 positive=boolean:true nothing=null:null big=bigint:9007199254740993n",
            NOTES[id - 1]
        );
        assert!(out.contains(&expected), "{expected}\n in:\n{out}");
    }
    // A BigInt goes into json with its digits; JSON.parse reads them back as a double.
    let types = "log info: types f=number:1.5 neg=number:0 b=boolean:true \
                 big=string:\"1180591620717411303424\" i=bigint:-9223372036854775808n \
                 t=string:\"2026-01-02T03:04:05.678000Z\" u=string:\"00000000-0000-0000-0000-000000000001\" \
                 j=object:{\"k\":12345678901234567000,\"t\":[1,null]}";
    assert!(out.contains(types), "{types}\n in:\n{out}");
}

/// Run `test` on the http test plugin `name` (granted hooks.example.com,
/// answered by rules for each status class); its report, after checking what
/// every language must show.
fn run_http_plugin(name: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.toml");
    std::fs::write(
        &rules,
        r#"
[[rule]]
method = "POST"
url = "https://hooks.example.com/ok"
body = '{"ack": 1}'
headers = { "content-type" = "application/json" }
[[rule]]
url = "https://hooks.example.com/busy"
status = 503
headers = { "retry-after" = "7" }
[[rule]]
url = "https://hooks.example.com/overloaded"
status = 500
[[rule]]
url = "https://hooks.example.com/gone"
status = 410
[[rule]]
url = "https://hooks.example.com/late"
status = 429
headers = { "retry-after" = "1e3" }
[[rule]]
url = "https://elsewhere.example.com/"
"#,
    )
    .unwrap();
    let config = dir.path().join("host.toml");
    std::fs::write(
        &config,
        format!(
            "[plugins.{name}]\nhttp = {{ allow = [\"hooks.example.com:443\"] }}\n\
             config = {{ url = \"https://hooks.example.com/\" }}\n"
        ),
    )
    .unwrap();
    let notes = [
        "ok",
        "busy",
        "overloaded",
        "gone",
        "unruled",
        "elsewhere",
        "bad-url",
        "late",
        "huge",
        "userinfo",
        "ok",
    ];
    let events = item_events(dir.path(), &notes);
    let (code, out, err) = run(host_bin()
        .arg("test")
        .arg(plugin(name))
        .arg(&events)
        .arg("--config")
        .arg(&config)
        .arg("--http")
        .arg(&rules));
    assert_eq!(code, 1, "{out}{err}");
    for expected in [
        "log info: sent status=200 type=application/json ack=1",
        "http POST https://hooks.example.com/ok (20 byte body) -> 200 (rule 1)",
        "FAILED at event 2 (retry after 7s): POST https://hooks.example.com/busy answered 503; retrying after 7s; the 1 before it were handled",
        "FAILED at event 3 (retry): POST https://hooks.example.com/overloaded answered 500; retrying",
        "FAILED at event 4 (permanent): POST https://hooks.example.com/gone answered 410; not retrying",
        "-> refused: no rule matches",
        &format!("-> refused: plugin `{name}` may not call elsewhere.example.com:443"),
        "FAILED at event 7 (permanent): POST not a url: not an http(s) URL",
        "FAILED at event 8 (retry): POST https://hooks.example.com/late answered 429; retrying;",
        "FAILED at event 10 (permanent): POST hooks.example.com: a URL with credentials is not sent",
        "batch of 1 event(s), 11-11: handled",
    ] {
        assert!(out.contains(expected), "{expected}\n in:\n{out}");
    }
    for (event, url) in [
        (5, "https://hooks.example.com/unruled"),
        (6, "https://elsewhere.example.com/"),
        (9, "https://elsewhere.example.com/"),
    ] {
        let failed = format!("FAILED at event {event} (retry): ");
        assert!(
            out.lines()
                .any(|l| l.contains(&failed) && l.contains(&format!("POST {url}: "))),
            "a refused request fails its event, naming it: {failed}POST {url}\n in:\n{out}"
        );
    }
    assert!(!out.contains("trapped"), "{out}");
    out
}

#[test]
fn the_python_sdk_sends_http_and_fails_each_event_as_its_response_says() {
    let out = run_http_plugin("http-py");
    assert!(
        out.contains("POST https://elsewhere.example.com/: refused by the host"),
        "{out}"
    );
}

#[test]
fn the_javascript_sdk_sends_http_and_fails_each_event_as_its_response_says() {
    run_http_plugin("http-js");
}

/// Run `test` on the publish test plugin `name` (granted the sink `bus`):
/// each event's message is recorded for that event (not the batch's first),
/// with its subject, key and payload; a sink not granted and a payload over
/// 1 MiB fail their event, retried, in the host's words.
fn run_publish_plugin(name: &str) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("host.toml");
    std::fs::write(&config, format!("[plugins.{name}]\npublish = [\"bus\"]\n")).unwrap();
    let events = item_events(dir.path(), &["a", "b", "c", "elsewhere", "huge", "d"]);
    let (code, out, err) = run(host_bin()
        .arg("test")
        .arg(plugin(name))
        .arg(&events)
        .arg("--config")
        .arg(&config)
        .arg("--json"));
    assert_eq!(code, 1, "{out}{err}");
    let report: serde_json::Value = serde_json::from_str(&out).expect("--json");
    let batches = report["batches"].as_array().expect("batches");
    let published = |batch: usize| -> Vec<(u64, String, String, String)> {
        batches[batch]["published"]
            .as_array()
            .expect("published")
            .iter()
            .map(|m| {
                (
                    m["event"].as_u64().unwrap(),
                    m["subject"].as_str().unwrap().to_owned(),
                    m["key"].as_str().unwrap().to_owned(),
                    m["payload"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    let expected = |id: u64, note: &str| {
        (
            id,
            format!("items.{id}"),
            id.to_string(),
            format!(r#"{{"id":{id},"note":"{note}"}}"#),
        )
    };
    assert_eq!(
        published(0),
        [expected(1, "a"), expected(2, "b"), expected(3, "c")],
        "{out}"
    );
    let failures: Vec<String> = batches.iter().map(|b| b["outcome"].to_string()).collect();
    for expected in [
        "publishing to other (items.4): sink `other` is not granted to this plugin (granted: bus)",
        "publishing to bus (items.5): the payload is 2097152 bytes, more than the 1048576",
    ] {
        assert!(
            failures
                .iter()
                .any(|f| f.contains(expected) && f.contains("retry")),
            "{expected}\n in:\n{failures:?}"
        );
    }
    assert_eq!(batches.len(), 3, "{out}");
    assert_eq!(published(2), [expected(6, "d")], "{out}");
}

#[test]
fn the_python_sdk_publishes_for_the_event_being_handled() {
    run_publish_plugin("pub-py");
}

#[test]
fn the_javascript_sdk_publishes_for_the_event_being_handled() {
    run_publish_plugin("pub-js");
}
