//! Plugin authors' tools, run as the binary: `test` calls a plugin on
//! events from a file without a host (outcomes, log lines, sql rolled back
//! or committed, HTTP answered by rules, grants as the host applies them),
//! and `events export` writes what the host delivered in the shape `test`
//! reads.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::support::*;

/// `test` on a file: every batch handled exits 0 with the plugin's log
/// lines; a failure at event k reports k, its message, that the events
/// before it were handled, and exits 1 — and the events after it still run.
#[test]
fn test_reports_each_batch_and_a_failure_at_its_index_with_the_prefix_handled() {
    let dir = tempfile::tempdir().unwrap();
    let events = item_events(dir.path(), &["a", "b", "c"]);
    let (code, out, err) = run(host_bin().arg("test").arg(plugin("faulty")).arg(&events));
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("plugin faulty 1.0.0"), "{out}");
    assert!(out.contains("batch of 3 event(s), 1-3: handled"), "{out}");
    assert_eq!(out.matches("  log info: event").count(), 3, "{out}");
    assert!(
        out.contains("3 event(s) in 1 batch(es): all handled"),
        "{out}"
    );

    let events = item_events(dir.path(), &["a", "b", "permanent", "d", "e"]);
    let (code, out, err) = run(host_bin().arg("test").arg(plugin("faulty")).arg(&events));
    assert_eq!(code, 1, "a failed batch fails the run: {out}{err}");
    assert!(
        out.contains("batch of 5 event(s), 1-5: FAILED at event 3 (permanent)"),
        "{out}"
    );
    assert!(out.contains("the 2 before it were handled"), "{out}");
    assert!(out.contains("batch of 2 event(s), 4-5: handled"), "{out}");
    assert!(out.contains("5 event(s) in 2 batch(es): 1 failed"), "{out}");
}

/// A trap is a failure at index 0 with the plugin's panic message; a
/// broken events file is refused with the line and why.
#[test]
fn test_reports_a_trap_with_the_panic_message_and_refuses_a_bad_events_file() {
    let dir = tempfile::tempdir().unwrap();
    let events = item_events(dir.path(), &["trap"]);
    let (code, out, err) = run(host_bin().arg("test").arg(plugin("faulty")).arg(&events));
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("FAILED at event 1 (retry): trapped"), "{out}");
    assert!(out.contains("none before it was handled"), "{out}");

    let bad = dir.path().join("bad.jsonl");
    std::fs::write(
        &bad,
        "{\"operation\":\"insert\",\"schema\":\"public\",\"table\":\"items\"}\n{\"operation\":\"upsert\"}\n",
    )
    .unwrap();
    let (code, out, err) = run(host_bin().arg("test").arg(plugin("faulty")).arg(&bad));
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("line 2: not an event"), "{err}");
}

/// A plugin whose capability the config does not grant is refused as the
/// host refuses it, naming the line to add; events it does not subscribe
/// to are skipped and said so.
#[test]
fn test_refuses_an_ungranted_capability_as_the_host_does_and_skips_unsubscribed_events() {
    let dir = tempfile::tempdir().unwrap();
    let events = item_events(dir.path(), &["a"]);
    let (code, out, err) = run(host_bin().arg("test").arg(plugin("ledger")).arg(&events));
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("sql = { role ="), "names the grant: {err}");
    assert!(err.contains("[plugins.ledger]"), "{err}");

    let other = dir.path().join("other.jsonl");
    std::fs::write(
        &other,
        "{\"operation\":\"insert\",\"schema\":\"public\",\"table\":\"elsewhere\",\"new_row\":{}}\n",
    )
    .unwrap();
    let (code, out, err) = run(host_bin().arg("test").arg(plugin("faulty")).arg(&other));
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("1 of 1 event(s) skipped"), "{out}");
}

/// The plugin's sql runs as its granted role in a transaction that is
/// rolled back: the table is unchanged afterwards. With --commit, it keeps
/// what it wrote. Every statement is printed with its result.
#[tokio::test]
async fn test_runs_sql_as_the_granted_role_rolled_back_unless_commit() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("host.toml");
    std::fs::write(&config, db.ledger(1).await).unwrap();
    let events = item_events(dir.path(), &["a", "b"]);
    let client = db.client().await;
    let count = async || -> i64 {
        client
            .query_one("SELECT count(*) FROM public.ledger", &[])
            .await
            .unwrap()
            .get(0)
    };
    let test = |commit: bool| {
        let mut cmd = host_bin();
        cmd.arg("test")
            .arg(plugin("ledger"))
            .arg(&events)
            .args(["--database-url", &db.url, "--config"])
            .arg(&config);
        if commit {
            cmd.arg("--commit");
        }
        run(&mut cmd)
    };
    let (code, out, err) = test(false);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        out.matches("  sql INSERT INTO public.ledger").count(),
        2,
        "{out}"
    );
    assert!(out.contains("-> 1 row(s) affected"), "{out}");
    assert!(out.contains("sql transaction rolled back"), "{out}");
    assert_eq!(count().await, 0, "rolled back: the table is unchanged");

    let (code, out, err) = test(true);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("sql transaction committed"), "{out}");
    assert_eq!(count().await, 2, "--commit keeps the writes");
}

/// HTTP requests are answered by the first matching rule and never sent;
/// a request no rule matches, or one the grant does not allow, is refused
/// and reported.
#[test]
fn test_answers_http_by_rules_and_refuses_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("host.toml");
    // A port nothing listens on: a request that reached the network would fail.
    std::fs::write(
        &config,
        "[plugins.webhook]\nhttp = { allow = [\"127.0.0.1:9\"] }\n\
         config = { url = \"http://127.0.0.1:9/hook\", tables = \"public.items\" }\n",
    )
    .unwrap();
    let rules = dir.path().join("http.toml");
    std::fs::write(
        &rules,
        "[[rule]]\nmethod = \"POST\"\nurl = \"http://127.0.0.1:9/hook\"\nstatus = 204\n",
    )
    .unwrap();
    let events = item_events(dir.path(), &["a"]);
    let webhook = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/webhook.wasm");
    let test = |rules: Option<&Path>| {
        let mut cmd = host_bin();
        cmd.arg("test")
            .arg(&webhook)
            .arg(&events)
            .arg("--config")
            .arg(&config);
        if let Some(r) = rules {
            cmd.arg("--http").arg(r);
        }
        run(&mut cmd)
    };
    let (code, out, err) = test(Some(&rules));
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("  http POST http://127.0.0.1:9/hook (") && out.contains("-> 204 (rule 1)"),
        "{out}"
    );
    let (code, out, err) = test(None);
    assert_eq!(
        code, 1,
        "no rule: refused, and the webhook fails: {out}{err}"
    );
    assert!(out.contains("-> refused: no rule matches"), "{out}");

    std::fs::write(
        &config,
        "[plugins.webhook]\nhttp = { allow = [\"hooks.example.com\"] }\n\
         config = { url = \"http://127.0.0.1:9/hook\", tables = \"public.items\" }\n",
    )
    .unwrap();
    let (code, out, err) = test(Some(&rules));
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains("-> refused: plugin `webhook` may not call 127.0.0.1:9"),
        "{out}"
    );
}

/// What the host delivered, exported with `events export --plugin` and fed
/// to `test`, reaches the plugin exactly as the host gave it: every field,
/// the rows byte for byte (a numeric with 30 digits, NUL-free unicode,
/// nulls), in the same order; and `--table` selects a table's events.
#[tokio::test]
async fn events_export_then_test_reproduces_what_the_host_delivered() {
    let db = TestDb::new().await;
    let mut host = Host::start(&db, &["recorder"]).await;
    let client = db.client().await;
    client
        .batch_execute(
            "ALTER TABLE items ADD COLUMN amount numeric;
             BEGIN;
             SET LOCAL pgevents.context = 'import';
             INSERT INTO items (id, name, qty, amount) VALUES
               (1, 'ümlaut \"quoted\"', 1, 123456789012345678901234567890.123456789),
               (2, NULL, 2, NULL);
             COMMIT;
             UPDATE items SET qty = qty + 10;
             DELETE FROM items WHERE id = 2;",
        )
        .await
        .unwrap();
    let delivered = host.wait_seen("recorder", 5).await;
    host.settle(Duration::from_millis(300)).await;
    host.stop().await;

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("recorded.jsonl");
    let (code, out, err) = run(host_bin()
        .args([
            "events",
            "export",
            "--plugin",
            "recorder",
            "--database-url",
            &db.url,
            "-o",
        ])
        .arg(&file));
    assert_eq!(code, 0, "{out}{err}");
    assert!(err.contains("wrote 5 event(s)"), "{err}");

    let (code, out, err) = run(host_bin()
        .arg("test")
        .arg(plugin("recorder"))
        .arg(&file)
        .arg("--json"));
    assert_eq!(code, 0, "{out}{err}");
    let report: Value = serde_json::from_str(&out).expect("JSON report");
    let replayed: Vec<Seen> = report["batches"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|b| b["logs"].as_array().unwrap().clone())
        .filter(|l| l["message"] == "event")
        .map(|l| {
            let fields: Vec<(String, String)> = l["fields"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
                .collect();
            Seen::from_fields("recorder", &fields)
        })
        .collect();
    assert_eq!(replayed, delivered, "the same events, fields and order");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        text.contains("123456789012345678901234567890.123456789"),
        "numeric keeps its digits: {text}"
    );

    let (code, out, err) = run(host_bin().args([
        "events",
        "export",
        "--table",
        "public.items",
        "--limit",
        "2",
        "--database-url",
        &db.url,
    ]));
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.lines().count(), 2, "{out}");
    let (code, _, err) = run(host_bin().args([
        "events",
        "export",
        "--plugin",
        "nobody",
        "--database-url",
        &db.url,
    ]));
    assert_eq!(code, 1);
    assert!(err.contains("no plugin named `nobody`"), "{err}");
}

/// A table with a column of every type the event format lists, nullable and
/// not, with names that are not identifiers.
const EVERYTHING: &str = "
    CREATE TYPE public.mood AS ENUM ('happy', 'sad', 'so-so', 'Self');
    CREATE TABLE public.everything (
        id bigint PRIMARY KEY,
        small smallint NOT NULL,
        count integer,
        ratio double precision,
        amount numeric(50, 12),
        name text NOT NULL,
        code varchar(8),
        flag boolean,
        at timestamptz,
        local_at timestamp,
        day date,
        clock time,
        span interval,
        uid uuid,
        doc json,
        data jsonb,
        raw bytea,
        price money,
        scores integer[],
        tags text[],
        mood public.mood,
        moods public.mood[],
        \"Weird Name\" text,
        type text,
        \"Type\" oid
    );";

/// `codegen` on that table: the Rust file is the one the `typed` test
/// plugin is built with (so it compiles), and that plugin decodes real
/// captured rows — extreme values and all-NULL — into it and encodes them
/// back unchanged, numeric digit for digit. The Python class decodes the
/// same rows with every digit too; the TypeScript file declares each column.
#[tokio::test]
async fn codegen_writes_row_types_that_decode_every_type_the_host_renders() {
    let db = TestDb::new().await;
    let client = db.client().await;
    client.batch_execute(EVERYTHING).await.unwrap();
    let codegen = |lang: &str| {
        let (code, out, err) = run(host_bin().args([
            "codegen",
            "--database-url",
            &db.url,
            "--table",
            "public.everything",
            "--lang",
            lang,
        ]));
        assert_eq!(code, 0, "{err}");
        out
    };
    let rust = codegen("rust");
    let committed =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/plugins/typed/src/rows.rs");
    assert_eq!(
        rust,
        std::fs::read_to_string(&committed).unwrap(),
        "tests/plugins/typed/src/rows.rs is not what codegen writes now; write it again with \
         `pgevents-host codegen --lang rust --table public.everything -o {}` on a database with \
         the table of this test",
        committed.display()
    );

    let mut host = Host::start(&db, &["typed"]).await;
    client
        .batch_execute(
            "INSERT INTO public.everything VALUES
               (9007199254740993, -32768, 2147483647, 0.30000000000000004,
                -12345678901234567890123456789012345678.123456789012,
                'ümlaut \"quoted\" \\ back', 'abc', true,
                '2024-05-06 07:08:09.123456+02', '2024-05-06 07:08:09', '2024-05-06', '23:59:59',
                '1 day 02:00:00', '6f1c2a4e-0b7d-4c8e-9a3f-1d2e3f4a5b6c',
                '{\"a\": [1, 2.5]}', '{\"nested\": {\"amount\": 0.1}}', '\\x00ff', 1234.5,
                '{1, NULL, 3}', '{\"x\", NULL}', 'so-so', '{happy, NULL}', 'w', 't');
             INSERT INTO public.everything (id, small, name) VALUES (2, 0, '');",
        )
        .await
        .unwrap();
    let mut typed = Vec::new();
    host.wait_until("both rows decoded", |e| {
        if let pgevents_host::observer::HostEvent::PluginLog(l) = e
            && l.message == "typed"
        {
            typed.push(l.fields.clone());
        }
        typed.len() == 2
    })
    .await;
    assert!(
        host.failures("typed").is_empty(),
        "{:?}",
        host.failures("typed")
    );
    host.stop().await;
    let field = |fields: &[(String, String)], k: &str| {
        fields.iter().find(|(n, _)| n == k).unwrap().1.clone()
    };
    let full = typed.iter().find(|f| field(f, "id") != "2").unwrap();
    assert_eq!(
        field(full, "amount"),
        "-12345678901234567890123456789012345678.123456789012"
    );
    assert_eq!(field(full, "mood"), "Some(SoSo)");
    let rows = texts(
        &client,
        "SELECT new_row::text FROM pgevents.events WHERE table_name = 'everything' ORDER BY seq",
    )
    .await;
    // Encoded again, each row is the row captured (as JSON values).
    for row in &rows {
        let captured: Value = serde_json::from_str(row).unwrap();
        let id = captured["id"].to_string();
        let again = typed.iter().find(|f| field(f, "id") == id).unwrap();
        let again: Value = serde_json::from_str(&field(again, "json")).unwrap();
        assert_eq!(again, captured, "decoded and encoded again: {row}");
    }

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("everything_rows.py"), codegen("python")).unwrap();
    let script = "import json, sys\nfrom decimal import Decimal\nfrom everything_rows import EverythingRow, Mood\n\
         rows = [EverythingRow.from_row(json.loads(t, parse_float=Decimal)) for t in json.loads(sys.stdin.read())]\n\
         full = [r for r in rows if r.id != 2][0]\n\
         assert full.amount == Decimal('-12345678901234567890123456789012345678.123456789012'), full.amount\n\
         assert str(full.amount) == '-12345678901234567890123456789012345678.123456789012'\n\
         assert full.mood is Mood.SO_SO, full.mood\n\
         assert full.moods == [Mood.HAPPY, None], full.moods\n\
         assert full.scores == [1, None, 3]\n\
         assert full.weird_name == 'w' and full.type == 't'\n\
         empty = [r for r in rows if r.id == 2][0]\n\
         assert empty.amount is None and empty.mood is None and empty.name == ''\n\
         print('ok')\n";
    let mut python = Command::new("python3")
        .arg("-c")
        .arg(script)
        .current_dir(dir.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 (the Python example plugin needs it too)");
    use std::io::Write;
    python
        .stdin
        .take()
        .unwrap()
        .write_all(serde_json::to_string(&rows).unwrap().as_bytes())
        .unwrap();
    let out = python.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let ts = codegen("ts");
    for line in [
        "export type Mood = \"happy\" | \"sad\" | \"so-so\" | \"Self\";",
        "export interface EverythingRow {",
        "\"id\": number;",
        "\"amount\": string | null;",
        "\"moods\": (Mood | null)[] | null;",
        "\"Weird Name\": string | null;",
        "export const EverythingRowDecimals: readonly string[] = [\"amount\"];",
        "export function parseEverythingRow(text: string): EverythingRow {",
    ] {
        assert!(ts.contains(line), "{line} in:\n{ts}");
    }
    // The JavaScript file runs: its parser keeps numeric digits, nested
    // JSON untouched, arrays and enums as values.
    let js = dir.path().join("everything_rows.js");
    std::fs::write(
        &js,
        codegen("js")
            + "\nconst rows = JSON.parse(require('fs').readFileSync(0, 'utf8')).map(parseEverythingRow);\n\
               const full = rows.find((r) => r.id !== 2);\n\
               const check = (ok, what) => { if (!ok) { console.error(what, JSON.stringify(full)); process.exit(1); } };\n\
               check(full.amount === '-12345678901234567890123456789012345678.123456789012', 'amount');\n\
               check(full.data.nested.amount === 0.1, 'nested json untouched');\n\
               check(JSON.stringify(full.scores) === '[1,null,3]' && full.mood === 'so-so', 'arrays, enums');\n\
               check(full['Weird Name'] === 'w' && rows.find((r) => r.id === 2).amount === null, 'names, nulls');\n\
               console.log('ok');\n",
    )
    .unwrap();
    let mut node = Command::new("node")
        .arg(&js)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("node (the JavaScript example plugin needs it too)");
    node.stdin
        .take()
        .unwrap()
        .write_all(serde_json::to_string(&rows).unwrap().as_bytes())
        .unwrap();
    let out = node.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let (code, _, err) = run(host_bin().args([
        "codegen",
        "--database-url",
        &db.url,
        "--table",
        "public.nothing",
        "--lang",
        "rust",
    ]));
    assert_eq!(code, 1);
    assert!(err.contains(r#"no table "public"."nothing""#), "{err}");
}

/// `new --lang rust --table`: a project that builds on its own (the SDK and
/// the WIT come with it) with typed rows of a real table, whose own test
/// passes out of the box, and which a host then runs on live events.
#[tokio::test]
async fn new_writes_a_rust_project_with_typed_rows_that_builds_passes_its_test_and_runs() {
    let db = TestDb::new().await;
    let client = db.client().await;
    client
        .batch_execute(
            "CREATE TABLE public.user_accounts (
                 id bigint PRIMARY KEY, name text NOT NULL, balance numeric(20, 4),
                 joined timestamptz NOT NULL DEFAULT now(), tags text[]);",
        )
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().join("welcome-bot");
    let (code, out, err) = run(host_bin()
        .args([
            "new",
            "welcome-bot",
            "--lang",
            "rust",
            "--table",
            "public.user_accounts",
        ])
        .args(["--database-url", &db.url, "--dir"])
        .arg(&project));
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("cargo build --release --target wasm32-wasip2"),
        "{out}"
    );
    let rows = std::fs::read_to_string(project.join("src/rows.rs")).unwrap();
    assert!(rows.contains("pub struct UserAccountsRow"), "{rows}");
    assert!(
        rows.contains("pub balance: Option<pgevents_plugin_sdk::types::Decimal>"),
        "{rows}"
    );

    // The repository's target folder: the project's dependencies are the
    // plugins' own, built already.
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let build = Command::new("cargo")
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--offline",
            "--quiet",
        ])
        .current_dir(&project)
        .env("CARGO_TARGET_DIR", &target)
        .output()
        .expect("cargo");
    assert!(
        build.status.success(),
        "the new project builds: {}",
        String::from_utf8_lossy(&build.stderr)
    );
    let wasm = target.join("wasm32-wasip2/release/welcome_bot.wasm");
    let (code, out, err) = run(host_bin()
        .arg("test")
        .arg(&wasm)
        .arg(project.join("events.jsonl")));
    assert_eq!(code, 0, "its own test passes: {out}{err}");
    assert!(out.contains("batch of 3 event(s), 1-3: handled"), "{out}");
    assert!(
        out.contains("log info: insert on public.user_accounts"),
        "{out}"
    );

    let plugins = tempfile::tempdir().unwrap();
    std::fs::copy(&wasm, plugins.path().join("welcome_bot.wasm")).unwrap();
    let mut host = Host::start_with(&db, plugins, test_settings()).await;
    client
        .execute(
            "INSERT INTO public.user_accounts (id, name, balance, tags) VALUES (1, 'Ada', 12.5, '{a}')",
            &[],
        )
        .await
        .unwrap();
    host.wait_until("the new plugin handled a live insert", |e| {
        matches!(e, pgevents_host::observer::HostEvent::PluginLog(l)
            if l.plugin == "welcome-bot" && l.message == "insert on public.user_accounts"
                && l.fields.iter().any(|(k, v)| k == "row" && v.contains("\"12.5000\"")))
    })
    .await;
    host.stop().await;

    let (code, _, err) = run(host_bin()
        .args(["new", "welcome-bot", "--dir"])
        .arg(&project));
    assert_eq!(code, 1, "an existing folder is refused");
    assert!(err.contains("exists already"), "{err}");
    let (code, _, err) = run(host_bin().args(["new", "9 lives"]).current_dir(dir.path()));
    assert_eq!(code, 1);
    assert!(err.contains("cannot name a plugin"), "{err}");
}

/// The Python SDK's per-event handler, run with `test`: each way an author
/// can fail reaches the report (as it would the dead letter) at the right
/// event with the author's own words — raising pg.Failure, an exception of
/// the author's code (with where it was raised), `return Err(...)` (which
/// without the SDK counted as success), a malformed disposition, a stray
/// return value, `pg.sql` or `pg.http` in a world without it (which says
/// how to get it) — and the events before it are handled.
#[test]
fn the_python_sdk_reports_every_failure_at_its_event_in_the_authors_words() {
    let dir = tempfile::tempdir().unwrap();
    let events = item_events(
        dir.path(),
        &[
            "a",
            "permanent",
            "value-error",
            "return-err",
            "bad-disposition",
            "return-value",
            "retry-after",
            "sql",
            "http",
            "publish",
            "z",
        ],
    );
    let out = run_sdk_plugin("sdk-py", &dir, &events);
    for expected in [
        "log info: event note=a id=1 config=hi",
        "FAILED at event 2 (permanent): item 2 cannot be handled; the 1 before it were handled",
        "FAILED at event 3 (retry): ValueError: bad value 3 (at ",
        "in handle_event)",
        "FAILED at event 4 (permanent): returned, not raised",
        "FAILED at event 5 (permanent): malformed failure (disposition is 'permanent' (str)",
        "FAILED at event 6 (permanent): handle_event returned True",
        "FAILED at event 7 (retry after 250ms): downstream busy",
        "FAILED at event 8 (retry): RuntimeError: pg.sql needs the sql-handler world: build with `-w sql-handler`",
        "FAILED at event 9 (retry): RuntimeError: pg.http needs the http-handler world: build with `-d wit/http -w http-handler`",
        "FAILED at event 10 (retry): RuntimeError: pg.publish needs the publisher world: build with `-w publisher`",
        "batch of 1 event(s), 11-11: handled",
        "log info: event note=z id=11 config=hi",
    ] {
        assert!(out.contains(expected), "{expected}\n in:\n{out}");
    }
}

/// `new --lang python --table`: app.py on the Python SDK with typed rows
/// (rows.py), built by its build.sh with the pinned componentize-py; its own
/// test passes out of the box. With `WORLD=sql-http-handler` it imports
/// sql and http.
#[tokio::test]
async fn new_writes_a_python_project_with_typed_rows_that_builds_and_passes_its_test() {
    let db = TestDb::new().await;
    db.client()
        .await
        .batch_execute(
            "CREATE TABLE public.orders (id bigint PRIMARY KEY, total numeric(30, 2) NOT NULL, note text);
             INSERT INTO public.orders VALUES (7, 123456789012345678901.25, NULL);",
        )
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().join("order-audit");
    let (code, out, err) = run(host_bin()
        .args([
            "new",
            "order-audit",
            "--lang",
            "python",
            "--table",
            "public.orders",
        ])
        .args(["--database-url", &db.url, "--dir"])
        .arg(&project));
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("./build.sh && pgevents-host test order_audit.wasm"),
        "{out}"
    );
    let tool = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.tools/py/bin/componentize-py");
    let build = Command::new(project.join("build.sh"))
        .env("COMPONENTIZE_PY", &tool)
        .output()
        .expect("build.sh");
    assert!(
        build.status.success(),
        "the new project builds: {}{}",
        String::from_utf8_lossy(&build.stdout),
        String::from_utf8_lossy(&build.stderr)
    );
    let (code, out, err) = run(host_bin()
        .arg("test")
        .arg(project.join("order_audit.wasm"))
        .arg(project.join("events.jsonl")));
    assert_eq!(code, 0, "its own test passes: {out}{err}");
    assert!(out.contains("batch of 3 event(s), 1-3: handled"), "{out}");
    assert!(out.contains("log info: insert on public.orders"), "{out}");
    let big = big_order(&project);
    let (code, out, err) = run(host_bin()
        .arg("test")
        .arg(project.join("order_audit.wasm"))
        .arg(&big));
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("total=Decimal('123456789012345678901234567.25')"),
        "typed rows, numeric exact: {out}"
    );

    // Built for sql and http (wit/http, shipped in the project), the
    // component asks for both grants.
    let needs = rebuilt_needs(
        &project,
        &[
            ("COMPONENTIZE_PY", tool.as_os_str()),
            ("WORLD", "sql-http-handler".as_ref()),
        ],
    );
    assert!(
        needs.contains("needs:      the sql capability")
            && needs.contains("needs:      the http capability"),
        "{needs}"
    );
}

/// The JavaScript SDK's per-event handler, run with `test`: a Failure
/// thrown is reported at its event (not silently at index 0), an Error of the
/// author's code or a thrown string reaches the report with its message
/// (not an opaque trap), a malformed raw record is named as such, and a
/// raw record's wrong index is corrected to the event it was thrown at;
/// `sql` in a world without it, and `http` in a build without it, say how
/// to get them.
#[test]
fn the_javascript_sdk_reports_every_failure_at_its_event_in_the_authors_words() {
    let dir = tempfile::tempdir().unwrap();
    let events = item_events(
        dir.path(),
        &[
            "a",
            "permanent",
            "throw-error",
            "throw-string",
            "bad-disposition",
            "raw-record",
            "retry-after",
            "index-failure",
            "sql",
            "http",
            "publish",
            "z",
        ],
    );
    let out = run_sdk_plugin("sdk-js", &dir, &events);
    for expected in [
        "log info: event note=a id=1 config=hi",
        "FAILED at event 2 (permanent): item 2 cannot be handled; the 1 before it were handled",
        "FAILED at event 3 (retry): TypeError: bad value 3 (at ",
        "FAILED at event 4 (retry): threw just a string",
        "FAILED at event 5 (permanent): malformed failure (disposition is \"permanent\"",
        "FAILED at event 6 (permanent): a raw record",
        "FAILED at event 7 (retry after 250ms): downstream busy",
        "FAILED at event 8 (retry): an index of its own",
        "FAILED at event 9 (retry): Error: sql.execute needs the sql-handler world: build with -n sql-handler",
        "FAILED at event 10 (retry): Error: http.get needs the wasi:http import: build without `-d http`",
        "FAILED at event 11 (retry): Error: publish needs the publisher world: build with -n publisher",
        "batch of 1 event(s), 12-12: handled",
        "log info: event note=z id=12 config=hi",
    ] {
        assert!(out.contains(expected), "{expected}\n in:\n{out}");
    }
}

/// `new --lang js --table`: app.js on the JavaScript SDK with typed rows
/// (rows.js, numeric kept exact), built by its build.sh with the pinned
/// componentize-js; its own test passes out of the box. With `WORLD=plugin
/// HTTP=1` it builds a component that imports sql, publish and http.
#[tokio::test]
async fn new_writes_a_javascript_project_with_typed_rows_that_builds_and_passes_its_test() {
    let db = TestDb::new().await;
    db.client()
        .await
        .batch_execute(
            "CREATE TABLE public.orders (id bigint PRIMARY KEY, total numeric(30, 2) NOT NULL, note text);
             INSERT INTO public.orders VALUES (7, 123456789012345678901234567.25, NULL);",
        )
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().join("order-audit");
    let (code, out, err) = run(host_bin()
        .args([
            "new",
            "order-audit",
            "--lang",
            "js",
            "--table",
            "public.orders",
        ])
        .args(["--database-url", &db.url, "--dir"])
        .arg(&project));
    assert_eq!(code, 0, "{out}{err}");
    let tool = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../.tools/js/node_modules/.bin/componentize-js");
    let build = Command::new(project.join("build.sh"))
        .env("COMPONENTIZE_JS", &tool)
        .output()
        .expect("build.sh");
    assert!(
        build.status.success(),
        "the new project builds: {}{}",
        String::from_utf8_lossy(&build.stdout),
        String::from_utf8_lossy(&build.stderr)
    );
    let (code, out, err) = run(host_bin()
        .arg("test")
        .arg(project.join("order_audit.wasm"))
        .arg(project.join("events.jsonl")));
    assert_eq!(code, 0, "its own test passes: {out}{err}");
    assert!(out.contains("batch of 3 event(s), 1-3: handled"), "{out}");
    assert!(out.contains("log info: insert on public.orders"), "{out}");
    let big = big_order(&project);
    let (code, out, err) = run(host_bin()
        .arg("test")
        .arg(project.join("order_audit.wasm"))
        .arg(&big));
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(r#""total":"123456789012345678901234567.25""#),
        "typed rows, numeric exact: {out}"
    );

    // Built for sql, publish (the world plugin) and http, the component
    // asks for the three grants.
    let needs = rebuilt_needs(
        &project,
        &[
            ("COMPONENTIZE_JS", tool.as_os_str()),
            ("WORLD", "plugin".as_ref()),
            ("HTTP", "1".as_ref()),
        ],
    );
    for capability in ["sql", "http", "publish"] {
        assert!(
            needs.contains(&format!("needs:      the {capability} capability")),
            "{needs}"
        );
    }
}

/// Sample rows (`new --table`, `test` without an events file) are typed
/// sample values, never a row of the table, and making them runs no code of
/// the table owner's under the caller's role: not a domain's CHECK, not an
/// enum's cast to json.
#[tokio::test]
async fn sample_rows_hold_no_table_data_and_run_no_code_of_the_table_owners() {
    let db = TestDb::new().await;
    db.client()
        .await
        .batch_execute(
            "CREATE TYPE public.level AS ENUM ('low', 'high');
             CREATE DOMAIN public.code AS text;
             CREATE TABLE public.accounts (id bigint PRIMARY KEY, secret text, lvl public.level, c public.code);
             INSERT INTO public.accounts VALUES (1, 'the-secret-value', 'high', 'x');
             CREATE FUNCTION public.boom() RETURNS boolean LANGUAGE plpgsql AS
               $$ BEGIN RAISE EXCEPTION 'owner code ran as %', current_user; END $$;
             ALTER DOMAIN public.code ADD CONSTRAINT checked CHECK (public.boom()) NOT VALID;
             CREATE FUNCTION public.level_json(public.level) RETURNS json LANGUAGE plpgsql AS
               $$ BEGIN RAISE EXCEPTION 'owner cast ran as %', current_user; END $$;
             CREATE CAST (public.level AS json) WITH FUNCTION public.level_json(public.level);",
        )
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().join("acct");
    let (code, out, err) = run(host_bin()
        .args([
            "new",
            "acct",
            "--lang",
            "python",
            "--table",
            "public.accounts",
        ])
        .args(["--database-url", &db.url, "--dir"])
        .arg(&project));
    assert_eq!(code, 0, "{out}{err}");
    let events = std::fs::read_to_string(project.join("events.jsonl")).unwrap();
    assert!(!events.contains("the-secret-value"), "{events}");
    assert!(
        events.contains(r#""lvl": "low""#),
        "a typed sample value: {events}"
    );
}

/// Build the `order_audit` project again with `envs`; what `inspect` says of it.
fn rebuilt_needs(project: &Path, envs: &[(&str, &std::ffi::OsStr)]) -> String {
    let build = Command::new(project.join("build.sh"))
        .envs(envs.iter().copied())
        .output()
        .expect("build.sh");
    assert!(build.status.success(), "{build:?}");
    let (code, out, err) = run(host_bin()
        .arg("inspect")
        .arg(project.join("order_audit.wasm")));
    assert_eq!(code, 0, "{out}{err}");
    out
}

/// An events file with one order whose total no double can hold.
fn big_order(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("big.jsonl");
    std::fs::write(
        &path,
        r#"{"operation":"insert","schema":"public","table":"orders","new_row":{"id": 7, "note": null, "total": 123456789012345678901234567.25}}"#,
    )
    .unwrap();
    path
}

/// Run `test` on an SDK test plugin with a config value; it must exit 1
/// (the notes make batches fail). Returns its report.
fn run_sdk_plugin(name: &str, dir: &tempfile::TempDir, events: &Path) -> String {
    let config = dir.path().join("host.toml");
    std::fs::write(
        &config,
        format!("[plugins.{name}]\nconfig = {{ greeting = \"hi\" }}\n"),
    )
    .unwrap();
    let (code, out, err) = run(host_bin()
        .arg("test")
        .arg(plugin(name))
        .arg(events)
        .arg("--config")
        .arg(&config));
    assert_eq!(code, 1, "{out}{err}");
    out
}

/// `dev` on a project `new` wrote: it builds the project, runs a host with
/// it, and on each change to its sources builds it again into the running
/// host, which reloads it live. A build that fails is printed and the last
/// good build keeps handling events.
#[tokio::test]
async fn dev_rebuilds_a_project_on_change_and_the_running_host_reloads_it() {
    let db = TestDb::new().await;
    let client = db.client().await;
    client
        .batch_execute("CREATE TABLE public.user_accounts (id bigint PRIMARY KEY, name text)")
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().join("dev-bot");
    let (code, out, err) = run(host_bin()
        .args(["new", "dev-bot", "--lang", "rust", "--dir"])
        .arg(&project));
    assert_eq!(code, 0, "{out}{err}");

    // The repository's target folder holds the SDK's dependencies already.
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let log = dir.path().join("dev.log");
    let mut child = host_bin()
        .arg("dev")
        .arg(&project)
        .args(["--database-url", &db.url])
        .env("CARGO_TARGET_DIR", &target)
        .env("CARGO_NET_OFFLINE", "true")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("spawn pgevents-host dev");
    let read = || std::fs::read_to_string(&log).unwrap_or_default();
    let wait_for = |what: &str, count: usize| {
        let deadline = std::time::Instant::now() + Duration::from_secs(240);
        while read().matches(what).count() < count {
            assert!(
                std::time::Instant::now() < deadline,
                "no {count}× `{what}` in the dev log:\n{}",
                read()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let insert = |id: i64| {
        let client = &client;
        async move {
            client
                .execute(
                    "INSERT INTO public.user_accounts VALUES ($1, 'Ada')",
                    &[&id],
                )
                .await
                .unwrap();
        }
    };

    wait_for("the host reloads it", 1);
    wait_for("plugin loaded", 1);
    // Inserts until one is handled: the capture trigger is installed just
    // after the plugin loads.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut id = 1;
    while !read().contains("insert on public.user_accounts") {
        assert!(
            std::time::Instant::now() < deadline,
            "the plugin never ran:\n{}",
            read()
        );
        insert(id).await;
        id += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let lib = project.join("src/lib.rs");
    let source = std::fs::read_to_string(&lib).unwrap();
    let v2 = source.replace("\"{} on {}.{}\"", "\"v2: {} on {}.{}\"");
    assert_ne!(
        v2, source,
        "the handler's log line is where the test expects it"
    );
    std::fs::write(&lib, &v2).unwrap();
    wait_for("the host reloads it", 2);
    // The reloaded plugin handles the next insert (and only the new one).
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !read().contains("v2: insert on public.user_accounts") {
        assert!(
            std::time::Instant::now() < deadline,
            "v2 never ran:\n{}",
            read()
        );
        insert(id).await;
        id += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    std::fs::write(&lib, format!("{v2}\nthis is not Rust\n")).unwrap();
    wait_for("the build failed; the running plugin stays as it was", 1);
    assert!(
        read().contains("this is not Rust"),
        "the compiler's words are shown"
    );
    let handled = read().matches("v2: insert on public.user_accounts").count();
    insert(1000).await;
    wait_for("v2: insert on public.user_accounts", handled + 1);

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = child.wait().unwrap();
    assert!(
        exit.success(),
        "dev exits cleanly on SIGTERM: {exit:?}\n{}",
        read()
    );
    assert!(project.join(".pgevents/plugins/dev_bot.wasm").is_file());
}
