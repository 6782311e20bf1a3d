//! Shared test harness: a fresh database per test on a real PostgreSQL, real
//! plugin components built by `./dev build-plugins`, and an in-process host
//! whose events and plugin log lines the test can wait for.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgevents_host::RunOptions;
use pgevents_host::config::Settings;
use pgevents_host::observer::HostEvent;
use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tokio_postgres::{Client, NoTls};

/// Upper bound on any wait for something the host should do; not a timing assertion.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// The server tests run against; each test creates and drops its own database there.
pub fn server_url() -> String {
    std::env::var("PGEVENTS_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@localhost:5432/postgres".to_owned())
}

/// Tables every test database starts with: the shapes the test plugins subscribe to.
const FIXTURE: &str = r#"
    CREATE TABLE public.items (id serial PRIMARY KEY, name text, note text, qty int);
    -- `t` and `pgevents_row` are names the capture function's SQL also uses.
    CREATE TABLE public.uuid_keyed (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), label text, t int, pgevents_row int);
    CREATE TABLE public.composite_keyed (tenant int, code text, value text, PRIMARY KEY (tenant, code));
    CREATE TABLE public.no_key (a int, b text);
    CREATE TABLE public.prices (id int PRIMARY KEY, price numeric, label text);
    CREATE SCHEMA "Odd Schema";
    CREATE TABLE "Odd Schema"."Mixed ""Case""; Table" ("Weird Col" int PRIMARY KEY, "select" text);
"#;

/// A database of its own, dropped (with its connections and the roles made
/// for it) when the test ends.
pub struct TestDb {
    pub name: String,
    pub url: String,
    roles: std::sync::Mutex<Vec<String>>,
}

impl TestDb {
    /// A fresh database with the fixture tables.
    pub async fn new() -> TestDb {
        let db = TestDb::empty().await;
        db.client()
            .await
            .batch_execute(FIXTURE)
            .await
            .expect("fixture");
        db
    }

    /// A fresh database with nothing in it.
    pub async fn empty() -> TestDb {
        let admin = admin().await;
        let name = format!("pgevents_test_{}", uuid::Uuid::new_v4().simple());
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create test database");
        let url = url_for(&server_url(), &name);
        TestDb {
            name,
            url,
            roles: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// A login role of this test's own (roles are cluster-wide), dropped with the database.
    pub async fn role(&self, suffix: &str) -> String {
        let role = format!("{}_{suffix}", self.name);
        self.client()
            .await
            .batch_execute(&format!("CREATE ROLE {role} LOGIN"))
            .await
            .expect("create role");
        self.roles.lock().unwrap().push(role.clone());
        role
    }

    /// The `ledger` plugin's tables, and a role that may write `ledger` only.
    /// Returns the config file granting `ledger` the sql capability as that role.
    pub async fn ledger(&self, partitions: u32) -> String {
        let role = self.role("ledger_writer").await;
        self.client()
            .await
            .batch_execute(&format!(
                "CREATE TABLE public.ledger (event_id uuid NOT NULL, txid bigint, seq bigint,
                                             op text, item_id int, attempt int);
                 CREATE TABLE public.forbidden (id int);
                 GRANT INSERT, SELECT ON public.ledger TO {role};"
            ))
            .await
            .expect("ledger tables");
        format!("[plugins.ledger]\npartitions = {partitions}\nsql = {{ role = \"{role}\" }}\n")
    }

    pub async fn client(&self) -> Client {
        connect(&self.url).await
    }

    /// A client that says who it is, like an application would.
    pub async fn client_as(&self, application_name: &str) -> Client {
        let separator = if self.url.contains('?') { '&' } else { '?' };
        connect(&format!(
            "{}{separator}application_name={application_name}",
            self.url
        ))
        .await
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        let roles = std::mem::take(&mut *self.roles.lock().unwrap());
        // Drop runs outside async context rules: use a private runtime on a thread.
        let _ = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(async {
                    if let Ok((client, connection)) =
                        tokio_postgres::connect(&server_url(), NoTls).await
                    {
                        tokio::spawn(connection);
                        let _ = client
                            .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                            .await;
                        for role in roles {
                            let _ = client
                                .batch_execute(&format!("DROP ROLE IF EXISTS {role}"))
                                .await;
                        }
                    }
                })
        })
        .join();
    }
}

/// `url` with its database name replaced.
pub fn url_for(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let base = match base[scheme_end..].find('/') {
        Some(slash) => &base[..scheme_end + slash],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{database}?{q}"),
        None => format!("{base}/{database}"),
    }
}

async fn admin() -> Client {
    let url = server_url();
    match tokio_postgres::connect(&url, NoTls).await {
        Ok((client, connection)) => {
            tokio::spawn(connection);
            client
        }
        Err(e) => panic!(
            "\n\nThe test suite needs a PostgreSQL server and could not reach it at {url}: {e}\n\
             Start the local one (`pg_ctlcluster 15 main start`) or point \
             PGEVENTS_TEST_DATABASE_URL at a server where this user may create databases.\n"
        ),
    }
}

pub async fn connect(url: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
    tokio::spawn(connection);
    client
}

/// The `pgevents-host` binary, with a clean environment for the settings tests
/// pass, and the tests' shared compile cache.
pub fn host_bin() -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_pgevents-host"));
    cmd.env_remove("DATABASE_URL")
        .env("PGEVENTS_LOG", "info")
        .env("PGEVENTS_COMPILE_CACHE", shared_compile_cache());
    cmd
}

/// Insert events of `public.items` as JSONL, one per `note`.
pub fn item_events(dir: &Path, notes: &[&str]) -> PathBuf {
    let lines: Vec<String> = notes
        .iter()
        .enumerate()
        .map(|(i, note)| {
            serde_json::json!({
                "operation": "insert",
                "schema": "public",
                "table": "items",
                "key": {"id": i + 1},
                "new_row": {"id": i + 1, "name": format!("item {}", i + 1), "qty": 1, "note": note},
            })
            .to_string()
        })
        .collect();
    let path = dir.join("events.jsonl");
    std::fs::write(&path, lines.join("\n")).unwrap();
    path
}

/// Run the binary; (exit code, stdout, stderr).
pub fn run(cmd: &mut std::process::Command) -> (i32, String, String) {
    let out = cmd.output().expect("run pgevents-host");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A `pgevents-host run` process whose log goes to a file.
pub struct HostProcess {
    child: std::process::Child,
    log: PathBuf,
    _log_dir: tempfile::TempDir,
}

impl HostProcess {
    /// Run the binary on `db` with the plugins in `plugins` and `args`.
    pub fn spawn(db: &TestDb, plugins: &Path, args: &[&str]) -> HostProcess {
        let log_dir = tempfile::tempdir().expect("temp dir");
        let log = log_dir.path().join("host.log");
        let file = std::fs::File::create(&log).expect("log file");
        let child = host_bin()
            .args(["run", "--database-url", &db.url, "--plugins"])
            .arg(plugins)
            .args(["--retry-base", "50ms", "--retry-max", "400ms"])
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(file)
            .spawn()
            .expect("spawn pgevents-host");
        HostProcess {
            child,
            log,
            _log_dir: log_dir,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL: no shutdown, no lease hand-back.
    pub fn kill9(&mut self) {
        self.child.kill().expect("kill");
        self.child.wait().expect("wait");
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn stop(&mut self) {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill -TERM");
        assert!(status.success());
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(exit) = self.child.try_wait().expect("wait") {
                assert!(exit.success(), "host exited with {exit:?}:\n{}", self.log());
                return;
            }
            assert!(
                Instant::now() < deadline,
                "host did not stop:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Ids of the events `plugin` logged (the test plugins log "event id=...").
    pub fn logged_ids(&self, plugin: &str) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| {
                l.contains(&format!("plugin=\"{plugin}\""))
                    || l.contains(&format!("plugin={plugin}"))
            })
            .filter_map(|l| l.split(" event id=").nth(1))
            .map(|rest| {
                rest.split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect()
    }
}

impl Drop for HostProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plugin component built from this repository by `./dev build-plugins`.
pub fn plugin(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let path = target
        .join("wasm32-wasip2/release")
        .join(format!("{name}.wasm"));
    assert!(
        path.is_file(),
        "{} is missing: build the plugins first with `./dev build-plugins` (`./dev test` does)",
        path.display()
    );
    path
}

/// A plugins folder holding copies of the named plugins.
pub fn plugins_dir(names: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    for name in names {
        std::fs::copy(plugin(name), dir.path().join(format!("{name}.wasm"))).expect("copy plugin");
    }
    dir
}

/// Settings for tests: quick retries, and the tests' shared compile cache
/// (see [`shared_compile_cache`]); a test about the cache brings its own.
pub fn test_settings() -> Settings {
    Settings {
        compile_cache: Some(shared_compile_cache()),
        retry_base: Duration::from_millis(50),
        retry_max: Duration::from_millis(400),
        connect_timeout: Some(Duration::from_secs(10)),
        ..Settings::default()
    }
}

/// One compile cache for every host the tests start, so that each plugin
/// compiles once rather than once per host. Entries are keyed by the file's
/// hash and the engine's settings, so a rebuilt plugin compiles again; kept
/// in the target folder across runs, private to this user as the host
/// requires.
pub fn shared_compile_cache() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        use std::os::unix::fs::PermissionsExt;
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("test-compile-cache");
        std::fs::create_dir_all(&dir).expect("compile cache folder");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .expect("compile cache folder is private");
        dir
    })
    .clone()
}

/// [`test_settings`] with a config file's contents applied.
pub fn settings_with(toml: &str) -> Settings {
    let mut settings = test_settings();
    pgevents_host::config::ConfigFile::parse(toml)
        .unwrap()
        .apply(&mut settings);
    settings
}

/// Replace `dest` with `src` the careful way: copy to a hidden name in the
/// same folder, then rename over it.
pub fn copy_then_rename(src: &Path, dest: &Path) {
    let temp = dest.with_file_name(format!(
        ".{}.tmp",
        dest.file_name().unwrap().to_string_lossy()
    ));
    std::fs::copy(src, &temp).expect("copy plugin");
    std::fs::rename(&temp, dest).expect("rename plugin");
}

/// An event as a test plugin logged it (`Event::fields()`).
#[derive(Debug, Clone, PartialEq)]
pub struct Seen {
    pub plugin: String,
    pub id: String,
    pub txid: u64,
    pub seq: u64,
    pub op: String,
    pub schema: String,
    pub table: String,
    pub key: Option<Value>,
    pub new: Option<Value>,
    pub old: Option<Value>,
    pub attempt: u32,
    pub user: String,
    pub application_name: String,
    pub tag: Option<String>,
    pub captured_at: String,
}

impl Seen {
    pub fn from_fields(plugin: &str, fields: &[(String, String)]) -> Seen {
        let get = |k: &str| {
            fields
                .iter()
                .find(|(name, _)| name == k)
                .map(|(_, v)| v.clone())
                .unwrap_or_else(|| panic!("field {k} missing in {fields:?}"))
        };
        let json = |k: &str| {
            let v = get(k);
            (!v.is_empty()).then(|| serde_json::from_str(&v).expect("JSON field"))
        };
        let tag = get("tag");
        Seen {
            plugin: plugin.to_owned(),
            id: get("id"),
            txid: get("txid").parse().unwrap(),
            seq: get("seq").parse().unwrap(),
            op: get("op"),
            schema: get("schema"),
            table: get("table"),
            key: json("key"),
            new: json("new"),
            old: json("old"),
            attempt: get("attempt").parse().unwrap(),
            user: get("user"),
            application_name: get("application_name"),
            tag: (!tag.is_empty()).then_some(tag),
            captured_at: get("captured_at"),
        }
    }

    /// A string field of the new (or else old) row.
    pub fn row_str(&self, column: &str) -> Option<String> {
        self.new
            .as_ref()
            .or(self.old.as_ref())
            .and_then(|r| r.get(column))
            .and_then(|v| v.as_str().map(str::to_owned))
    }
}

/// A host running in this process, on a tokio task.
pub struct Host {
    events: mpsc::UnboundedReceiver<HostEvent>,
    stop: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    /// Every event seen so far, in arrival order.
    pub history: Vec<HostEvent>,
    _dir: Option<tempfile::TempDir>,
}

impl Host {
    /// Start a host on `db` with the named plugins, and wait until each has
    /// started or been rejected.
    pub async fn start(db: &TestDb, plugins: &[&str]) -> Host {
        Host::start_with(db, plugins_dir(plugins), test_settings()).await
    }

    pub async fn start_with(db: &TestDb, dir: tempfile::TempDir, settings: Settings) -> Host {
        let files = std::fs::read_dir(dir.path()).unwrap().count();
        let (tx, rx) = mpsc::unbounded_channel();
        let (stop, stop_rx) = watch::channel(false);
        let options = RunOptions {
            database_url: db.url.clone(),
            plugins_dir: dir.path().to_owned(),
            settings,
            observer: Some(Arc::new(move |e| {
                let _ = tx.send(e);
            })),
        };
        let task = tokio::spawn(pgevents_host::run(options, stop_rx));
        let mut host = Host {
            events: rx,
            stop,
            task: Some(task),
            history: Vec::new(),
            _dir: Some(dir),
        };
        let mut settled = 0;
        host.wait_until("every plugin started or rejected", |e| {
            if matches!(
                e,
                HostEvent::PluginStarted { .. } | HostEvent::PluginRejected(_)
            ) {
                settled += 1;
            }
            settled == files
        })
        .await;
        host
    }

    /// Wait until `done` returns true for some event; panics after `PATIENCE`.
    pub async fn wait_until(&mut self, what: &str, mut done: impl FnMut(&HostEvent) -> bool) {
        if self.history.iter().any(&mut done) {
            return;
        }
        let deadline = Instant::now() + PATIENCE;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(remaining, self.events.recv()).await {
                Ok(Some(event)) => {
                    let hit = done(&event);
                    self.history.push(event);
                    if hit {
                        return;
                    }
                }
                Ok(None) => {
                    let result = self.task.take().map(|t| t.is_finished());
                    panic!(
                        "host stopped while waiting for {what} (finished: {result:?}); history: {:#?}",
                        self.history
                    )
                }
                Err(_) => panic!("timed out waiting for {what}; history: {:#?}", self.history),
            }
        }
    }

    /// Events logged by `plugin` so far.
    pub fn seen(&self, plugin: &str) -> Vec<Seen> {
        self.history
            .iter()
            .filter_map(|e| match e {
                HostEvent::PluginLog(log) if log.plugin == plugin && log.message == "event" => {
                    Some(Seen::from_fields(plugin, &log.fields))
                }
                _ => None,
            })
            .collect()
    }

    /// Wait until `plugin` has logged at least `n` events; return all of them.
    pub async fn wait_seen(&mut self, plugin: &str, n: usize) -> Vec<Seen> {
        let mut count = 0;
        let name = plugin.to_owned();
        self.wait_until(&format!("{n} events at plugin {plugin}"), |e| {
            if let HostEvent::PluginLog(log) = e
                && log.plugin == name
                && log.message == "event"
            {
                count += 1;
            }
            count >= n
        })
        .await;
        self.seen(plugin)
    }

    /// Wait until `plugin` has logged `n` distinct events; return all it logged.
    pub async fn wait_unique(&mut self, plugin: &str, n: usize) -> Vec<Seen> {
        let mut ids: HashSet<String> = self.seen(plugin).into_iter().map(|s| s.id).collect();
        if ids.len() < n {
            let name = plugin.to_owned();
            self.wait_until(&format!("{n} distinct events at plugin {plugin}"), |e| {
                if let HostEvent::PluginLog(log) = e
                    && log.plugin == name
                    && log.message == "event"
                {
                    ids.insert(Seen::from_fields(&name, &log.fields).id);
                }
                ids.len() >= n
            })
            .await;
        }
        self.seen(plugin)
    }

    /// Collect whatever arrives during `d` (to check that nothing more comes).
    pub async fn settle(&mut self, d: Duration) {
        let deadline = Instant::now() + d;
        while let Ok(Some(e)) = tokio::time::timeout(
            deadline.saturating_duration_since(Instant::now()),
            self.events.recv(),
        )
        .await
        {
            self.history.push(e);
        }
    }

    pub fn rejections(&self) -> Vec<String> {
        self.history
            .iter()
            .filter_map(|e| match e {
                HostEvent::PluginRejected(r) => Some(r.error.clone()),
                _ => None,
            })
            .collect()
    }

    pub fn failures(&self, plugin: &str) -> Vec<String> {
        self.history
            .iter()
            .filter_map(|e| match e {
                HostEvent::BatchFailed {
                    plugin: p, message, ..
                } if p == plugin => Some(message.clone()),
                _ => None,
            })
            .collect()
    }

    /// Signal shutdown and wait for the host to finish its batches and exit.
    pub async fn stop(mut self) -> Vec<HostEvent> {
        let _ = self.stop.send(true);
        let task = self.task.take().expect("host task");
        tokio::time::timeout(PATIENCE, task)
            .await
            .expect("host did not stop in time")
            .expect("host task panicked")
            .expect("host returned an error");
        while let Ok(e) = self.events.try_recv() {
            self.history.push(e);
        }
        self.history
    }
}

/// Poll `sql` (one boolean; NULL counts as false) until it is true; panics
/// with `what` after `PATIENCE`.
pub async fn eventually(client: &Client, what: &str, sql: &str) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let row = client.query_one(sql, &[]).await.expect("polling query");
        if row.get::<_, Option<bool>>(0).unwrap_or(false) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// SQL, one boolean: every partition of `plugin` has acknowledged every
/// committed event (each numbered by a tick and at or before its cursor).
pub fn caught_up_sql(plugin: &str) -> String {
    format!(
        "SELECT NOT EXISTS (
             SELECT 1 FROM pgevents.events e LEFT JOIN pgevents.commits k ON k.txid = e.txid
             JOIN pgevents.cursors c ON c.plugin = '{plugin}'
             WHERE k.ord IS NULL OR (k.ord, e.seq) > (c.ord, c.seq))"
    )
}

/// The first column of `sql`'s rows, as text.
pub async fn texts(client: &Client, sql: &str) -> Vec<String> {
    client
        .query(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Assert no event id repeats (each event delivered once to this plugin).
pub fn assert_unique(seen: &[Seen]) {
    let mut ids = HashSet::new();
    for s in seen {
        assert!(
            ids.insert(&s.id),
            "event {} delivered twice: {seen:#?}",
            s.id
        );
    }
}

/// Assert events arrive in delivery order: by the number a tick gave their
/// transaction (commit order), then by sequence.
pub async fn assert_delivery_order(client: &Client, seen: &[Seen]) {
    let ords: std::collections::HashMap<u64, i64> = client
        .query("SELECT txid::text, ord FROM pgevents.commits", &[])
        .await
        .expect("commits")
        .iter()
        .map(|r| (r.get::<_, &str>(0).parse().unwrap(), r.get(1)))
        .collect();
    let position = |s: &Seen| (ords.get(&s.txid).copied(), s.seq);
    for pair in seen.windows(2) {
        let (a, b) = (position(&pair[0]), position(&pair[1]));
        assert!(
            a.0.is_some() && a < b,
            "out of delivery order: (ord, seq) {a:?} then {b:?} (txids {} then {})",
            pair[0].txid,
            pair[1].txid
        );
    }
}
