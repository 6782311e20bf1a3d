//! The `pgevents-host` binary: install/uninstall, inspect, status, run with signals.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

fn bin() -> Command {
    host_bin()
}

fn output(cmd: &mut Command) -> (bool, String, String) {
    let out = cmd.output().expect("run pgevents-host");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `inspect` compiles a plugin once: the compile cache the config names
/// holds it afterwards, and the second look uses it.
#[test]
fn inspect_uses_the_compile_cache() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let config = dir.path().join("host.toml");
    std::fs::write(
        &config,
        format!("compile_cache = \"{}\"\n", cache.display()),
    )
    .unwrap();
    let entries = || {
        std::fs::read_dir(&cache)
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter(|e| e.path().extension().is_some_and(|x| x == "cwasm"))
                    .count()
            })
            .unwrap_or(0)
    };
    assert_eq!(entries(), 0);
    for _ in 0..2 {
        let (ok, stdout, stderr) = output(
            bin()
                .arg("inspect")
                .arg(plugin("recorder"))
                .arg("--config")
                .arg(&config),
        );
        assert!(ok, "{stderr}");
        assert!(stdout.contains("plugin:     recorder 1.0.0"), "{stdout}");
        assert_eq!(entries(), 1, "one compiled entry, reused");
    }
}

#[test]
fn inspect_prints_a_manifest_or_says_what_is_wrong() {
    let (ok, stdout, stderr) = output(bin().arg("inspect").arg(plugin("recorder")));
    assert!(ok, "{stderr}");
    assert!(stdout.contains("plugin:     recorder 1.0.0"), "{stdout}");
    assert!(
        stdout.contains(r#""Odd Schema"."Mixed ""Case""; Table" insert, update, delete, truncate"#),
        "{stdout}"
    );

    assert!(!stdout.contains("needs:"), "{stdout}");
    let (ok, stdout, stderr) = output(bin().arg("inspect").arg(plugin("ledger")));
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains(
            "needs:      the sql capability (grant: [plugins.ledger] sql = { role = \"...\" })"
        ),
        "{stdout}"
    );

    let (ok, stdout, _) = output(bin().args(["inspect", "--json"]).arg(plugin("filtered")));
    assert!(ok);
    let manifest: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        manifest["subscriptions"][1]["changed_columns"],
        serde_json::json!(["price"])
    );

    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("text.wasm", b"hello".to_vec(), "is not a WebAssembly file"),
        (
            "core.wasm",
            wat::parse_str("(module)").unwrap(),
            "is a core WebAssembly module, not a component",
        ),
        (
            "empty.wasm",
            wat::parse_str("(component)").unwrap(),
            "does not implement the `pgevents:plugin/plugin@0.1.1` world",
        ),
    ];
    for (name, bytes, expected) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        let (ok, _, stderr) = output(bin().arg("inspect").arg(&path));
        assert!(!ok, "{name} should be refused");
        assert!(stderr.contains(expected), "{name}: {stderr}");
    }
    let (ok, _, stderr) = output(bin().arg("inspect").arg(dir.path().join("missing.wasm")));
    assert!(!ok && stderr.contains("cannot read"), "{stderr}");
}

#[tokio::test]
async fn install_and_uninstall_round_trip_leaves_user_data_and_triggers_alone() {
    let db = TestDb::new().await;
    let c = db.client().await;
    c.batch_execute(
        "INSERT INTO items (name) VALUES ('precious');
         CREATE FUNCTION public.touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$;
         CREATE TRIGGER users_own_trigger BEFORE INSERT ON items FOR EACH ROW EXECUTE FUNCTION public.touch();",
    )
    .await
    .unwrap();
    let dir = plugins_dir(&["recorder", "filtered"]);
    let (ok, stdout, stderr) = output(
        bin()
            .args(["install", "--database-url", &db.url, "--plugins"])
            .arg(dir.path()),
    );
    assert!(ok, "{stdout}{stderr}");
    assert!(
        stdout.contains("registered plugin recorder 1.0.0"),
        "{stdout}"
    );
    assert!(
        stdout.contains(r#"capturing "public"."items": IUDT"#),
        "{stdout}"
    );
    assert!(
        stdout.contains(r#"capturing "public"."prices": U"#),
        "{stdout}"
    );

    // Installed before the first run: changes from now on are captured.
    c.batch_execute("INSERT INTO items (name) VALUES ('captured before the first run')")
        .await
        .unwrap();
    let captured: i64 = c
        .query_one("SELECT count(*) FROM pgevents.events", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(captured, 1);
    // Install is idempotent.
    let (ok, _, stderr) = output(
        bin()
            .args(["install", "--database-url", &db.url, "--plugins"])
            .arg(dir.path()),
    );
    assert!(ok, "{stderr}");

    let (ok, _, stderr) = output(bin().args(["uninstall", "--database-url", &db.url]));
    assert!(
        !ok && stderr.contains("--yes"),
        "uninstall must ask for confirmation: {stderr}"
    );
    let (ok, stdout, stderr) =
        output(bin().args(["uninstall", "--yes", "--database-url", &db.url]));
    assert!(ok, "{stderr}");
    // recorder: 5 tables x 4 operations; filtered adds the update trigger on prices.
    assert!(stdout.contains("dropped 21 capture trigger(s)"), "{stdout}");
    let schema: Option<String> = c
        .query_one(
            "SELECT nspname::text FROM pg_namespace WHERE nspname = 'pgevents'",
            &[],
        )
        .await
        .map(|r| r.get(0))
        .ok();
    assert_eq!(schema, None);
    let triggers = texts(
        &c,
        "SELECT tgname::text FROM pg_trigger WHERE NOT tgisinternal ORDER BY 1",
    )
    .await;
    assert_eq!(triggers, ["users_own_trigger"]);
    let rows: i64 = c
        .query_one("SELECT count(*) FROM items", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 2, "user data must survive uninstall");
    c.batch_execute("INSERT INTO items (name) VALUES ('writes still work')")
        .await
        .unwrap();
}

#[tokio::test]
async fn run_delivers_reports_status_and_stops_cleanly_on_sigterm() {
    let db = TestDb::new().await;
    let dir = plugins_dir(&["recorder", "greeter"]);
    let mut child = bin()
        .args(["run", "--database-url", &db.url, "--plugins"])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let mut log = Vec::new();
    let wait_for = |needle: &str, log: &mut Vec<String>| {
        let deadline = Instant::now() + PATIENCE;
        while !log.iter().any(|l: &String| l.contains(needle)) {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => log.push(line),
                Err(_) => panic!(
                    "`{needle}` never appeared in the host's log:\n{}",
                    log.join("\n")
                ),
            }
        }
    };
    wait_for("plugin loaded", &mut log);
    // greeter's table is missing here: it is reported, the recorder still runs.
    wait_for(
        "plugin `greeter` subscribes to table `public.user_accounts`, which does not exist",
        &mut log,
    );
    let c = db.client().await;
    c.batch_execute("INSERT INTO items (name) VALUES ('via the binary')")
        .await
        .unwrap();
    wait_for("via the binary", &mut log);

    let (ok, stdout, stderr) = output(bin().args(["status", "--database-url", &db.url]));
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("plugin recorder 1.0.0 [active]"),
        "{stdout}"
    );
    assert!(
        stdout.contains("0 event(s) waiting") || stdout.contains("1 event(s) waiting"),
        "{stdout}"
    );

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + PATIENCE;
    let exit = loop {
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        assert!(Instant::now() < deadline, "host did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    while let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
        log.push(line);
    }
    assert!(exit.success(), "exit {exit:?}:\n{}", log.join("\n"));
    assert!(
        log.iter().any(|l| l.contains("stopped")),
        "{}",
        log.join("\n")
    );
}

#[test]
fn an_unreachable_database_is_retried_then_reported_with_where_it_tried() {
    let (ok, _, stderr) = output(bin().args([
        "run",
        "--database-url",
        "postgres://someone:secret@127.0.0.1:1/nowhere",
        "--connect-timeout",
        "2s",
        "--plugins",
        ".",
    ]));
    assert!(!ok);
    assert!(
        stderr.contains(
            "cannot reach the database at 127.0.0.1:1 (user `someone`, database `nowhere`)"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains("retrying in"),
        "it should retry with backoff first: {stderr}"
    );
    assert!(
        !stderr.contains("secret"),
        "the password must not be printed: {stderr}"
    );
}

#[tokio::test]
async fn forget_removes_a_plugin_and_only_the_triggers_it_alone_needed() {
    let db = TestDb::new().await;
    let dir = plugins_dir(&["recorder", "filtered"]);
    let (ok, _, stderr) = output(
        bin()
            .args(["install", "--database-url", &db.url, "--plugins"])
            .arg(dir.path()),
    );
    assert!(ok, "{stderr}");
    let (ok, stdout, stderr) =
        output(bin().args(["forget", "--database-url", &db.url, "filtered"]));
    assert!(ok, "{stderr}");
    assert!(stdout.contains("forgot plugin `filtered`"), "{stdout}");
    assert!(
        !stdout.contains(r#""public"."prices""#),
        "prices was only filtered's: {stdout}"
    );
    assert!(
        stdout.contains(r#"capturing "public"."items": IUDT"#),
        "items is still recorder's: {stdout}"
    );
    let cursors: i64 = db
        .client()
        .await
        .query_one(
            "SELECT count(*) FROM pgevents.cursors WHERE plugin = 'filtered'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(cursors, 0);
    let (ok, _, stderr) = output(bin().args(["forget", "--database-url", &db.url, "nobody"]));
    assert!(
        !ok && stderr.contains("no plugin named `nobody`"),
        "{stderr}"
    );
}

#[test]
fn a_config_file_with_a_typo_or_an_impossible_lease_stops_the_host_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("pgevents.toml");
    std::fs::write(&config, "[plugins.ledger]\npartition = 4\n").unwrap();
    let (ok, _, stderr) = output(
        bin()
            .args(["run", "--connect-timeout", "1s", "--config"])
            .arg(&config),
    );
    assert!(!ok);
    assert!(
        stderr.contains("unknown field `partition`") && stderr.contains("pgevents.toml"),
        "{stderr}"
    );
    let (ok, _, stderr) = output(bin().args([
        "run",
        "--connect-timeout",
        "1s",
        "--lease-ttl",
        "5s",
        "--handle-timeout",
        "10s",
    ]));
    assert!(!ok);
    assert!(
        stderr.contains("must exceed the handle timeout"),
        "{stderr}"
    );
}

/// `pgevents-host inspect F | head -1`: a reader that goes away ends every
/// subcommand quietly, with success, not with a broken-pipe panic.
#[tokio::test]
async fn a_closed_stdout_ends_each_command_quietly() {
    let db = TestDb::new().await;
    Host::start(&db, &["recorder"]).await.stop().await;
    let recorder = plugin("recorder");
    let commands: Vec<Vec<&str>> = vec![
        vec!["inspect", recorder.to_str().unwrap()],
        vec!["inspect", "--json", recorder.to_str().unwrap()],
        vec!["status", "--database-url", &db.url],
        vec!["status", "--json", "--database-url", &db.url],
        vec!["dead-letters", "list", "--database-url", &db.url],
        vec!["install", "--database-url", &db.url],
        vec!["--help"],
    ];
    for args in commands {
        let mut child = bin()
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        // The reader is gone before the command writes anything.
        drop(child.stdout.take());
        let out = child.wait_with_output().expect("wait");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && !stderr.contains("panicked") && !stderr.contains("Broken pipe"),
            "{args:?}: {:?}\n{stderr}",
            out.status
        );
    }
}

/// Every setting is a flag of `run`, an environment variable and a config
/// file key, and each of the three checks the value the same way: a bad
/// value stops the host before it connects, naming the setting.
#[test]
fn every_setting_is_a_flag_a_variable_and_a_file_key() {
    use pgevents_host::config::{ConfigFile, SETTINGS};
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("pgevents.toml");
    // A TCP port nobody listens on: a run that got past the settings fails fast.
    let nowhere = "postgres://postgres@127.0.0.1:1/none";
    for s in SETTINGS {
        // The default, in the file, is accepted.
        let value = match s.default {
            d if d.parse::<u64>().is_ok() || d == "true" || d == "false" => d.to_owned(),
            d => format!("\"{d}\""),
        };
        let line = format!("{} = {value}\n", s.key);
        ConfigFile::parse(&line).unwrap_or_else(|e| panic!("{line}: {e}"));

        let flag = format!("--{}", s.flag);
        // A folder may be called anything: only an empty one is refused.
        let bad = if s.check("%bad%").is_ok() {
            ""
        } else {
            "%bad%"
        };
        let (ok, _, stderr) = output(bin().args(["run", "--database-url", nowhere, &flag, bad]));
        assert!(
            !ok && stderr.contains(&flag) && stderr.contains(&format!("`{bad}`")),
            "{flag} {bad:?}: {stderr}"
        );
        std::fs::write(&config, format!("{} = \"{bad}\"\n", s.key)).unwrap();
        let (ok, _, stderr) = output(
            bin()
                .args(["run", "--database-url", nowhere, "--config"])
                .arg(&config),
        );
        assert!(
            !ok && stderr.contains(s.key) && stderr.contains("pgevents.toml"),
            "{} = {bad:?}: {stderr}",
            s.key
        );
        if bad.is_empty() {
            continue; // an empty variable counts as unset
        }
        let (ok, _, stderr) = output(
            bin()
                .args(["run", "--database-url", nowhere])
                .env(s.env, bad),
        );
        assert!(
            !ok && stderr.contains(&flag) && stderr.contains(bad),
            "{}={bad}: {stderr}",
            s.env
        );
    }
}
