//! `pgevents-host test`: a plugin's `handle` on recorded events, without a
//! host. The plugin is loaded as the host loads it (the operator's grants,
//! tables and limits from the config file), the events it subscribes to are
//! handed to it in batches of its batch size, and each batch's outcome, log
//! lines, sql statements, HTTP requests and published messages are reported.
//! Its sql runs as its granted role in a transaction that is rolled back
//! unless asked to commit; HTTP requests are answered by rules, never sent.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde::Deserialize;

use super::catalog;
use crate::config::Settings;
use crate::event::{LoggedEvent, Op};
use crate::registry;
use crate::runtime::{
    Effects, HttpAnswer, HttpRequestSeen, HttpResponder, LoadedPlugin, LogSink, Outbox, Outcome,
    PluginLog, Pool, Published, Retry, Runtime, SqlAccess, SqlFailure, SqlRows, SqlSession,
    SqlValue, Subscription,
};

/// What `test` runs.
#[derive(Debug, Clone)]
pub struct TestOptions {
    pub plugin: PathBuf,
    /// A JSONL file of events; `None`: sample events for each subscription.
    pub events: Option<PathBuf>,
    /// The database the plugin's sql runs on (and samples are drawn from).
    pub database_url: Option<String>,
    /// The operator's settings (`--config`): grants, tables, limits.
    pub settings: Settings,
    pub http: HttpRules,
    /// Commit each handled batch's sql instead of rolling it back.
    pub commit: bool,
}

/// HTTP rules (`--http FILE`, TOML): the first `[[rule]]` whose method and
/// URL prefix match answers a request; a request no rule matches is refused.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpRules {
    #[serde(default, rename = "rule")]
    pub rules: Vec<HttpRule>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpRule {
    /// Any method if absent.
    pub method: Option<String>,
    /// The request's URL starts with this (`https://hooks.example.com/`).
    pub url: String,
    #[serde(default = "ok")]
    pub status: u16,
    #[serde(default)]
    pub body: String,
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
}

fn ok() -> u16 {
    200
}

impl HttpRules {
    pub fn load(path: &std::path::Path) -> anyhow::Result<HttpRules> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }

    fn matching(&self, method: &str, uri: &str) -> Option<(usize, &HttpRule)> {
        self.rules.iter().enumerate().find(|(_, r)| {
            r.method
                .as_deref()
                .is_none_or(|m| m.eq_ignore_ascii_case(method))
                && uri.starts_with(&r.url)
        })
    }
}

/// One batch: its events' numbers in the file (from 1), and what the
/// plugin did.
#[derive(Debug)]
pub struct BatchReport {
    pub numbers: Vec<usize>,
    pub outcome: Outcome,
    pub logs: Vec<PluginLog>,
    pub sql: Vec<String>,
    pub http: Vec<String>,
    pub published: Vec<Published>,
    /// What became of its sql transaction, if it had one.
    pub transaction: Option<&'static str>,
}

/// The whole run.
#[derive(Debug)]
pub struct TestReport {
    pub plugin: String,
    pub version: String,
    pub notes: Vec<String>,
    pub batches: Vec<BatchReport>,
}

impl TestReport {
    pub fn failed(&self) -> bool {
        self.batches
            .iter()
            .any(|b| matches!(b.outcome, Outcome::Failed { .. }))
    }
}

impl TestReport {
    /// The report as JSON (`test --json`), for tools.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::json;
        let batches: Vec<_> = self
            .batches
            .iter()
            .map(|b| {
                let outcome = match &b.outcome {
                    Outcome::Handled => json!({"handled": true}),
                    Outcome::Failed {
                        index,
                        retry,
                        message,
                    } => json!({
                        "handled": false,
                        "failed_event": b.numbers[*index],
                        "index": index,
                        "retry": match retry {
                            Retry::Backoff => json!("backoff"),
                            Retry::After(d) => json!({"after_ms": d.as_millis() as u64}),
                            Retry::Never => json!("permanent"),
                        },
                        "message": message,
                    }),
                };
                json!({
                    "events": b.numbers,
                    "outcome": outcome,
                    "logs": b.logs.iter().map(|l| json!({
                        "level": format!("{:?}", l.level).to_lowercase(),
                        "message": l.message,
                        "fields": l.fields.iter()
                            .map(|(k, v)| (k.clone(), json!(v)))
                            .collect::<serde_json::Map<_, _>>(),
                    })).collect::<Vec<_>>(),
                    "sql": b.sql,
                    "sql_transaction": b.transaction,
                    "http": b.http,
                    "published": b.published.iter().map(|m| json!({
                        "event": b.numbers[m.event],
                        "id": m.id.to_string(),
                        "sink": m.sink,
                        "subject": m.subject,
                        "key": m.key,
                        "payload": String::from_utf8_lossy(&m.payload),
                        "headers": m.headers,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        json!({
            "plugin": self.plugin,
            "version": self.version,
            "notes": self.notes,
            "failed": self.failed(),
            "batches": batches,
        })
    }
}

impl std::fmt::Display for TestReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "plugin {} {}", self.plugin, self.version)?;
        for note in &self.notes {
            writeln!(f, "note: {note}")?;
        }
        for b in &self.batches {
            let (first, last) = (b.numbers[0], b.numbers[b.numbers.len() - 1]);
            let outcome = match &b.outcome {
                Outcome::Handled => "handled".to_owned(),
                Outcome::Failed {
                    index,
                    retry,
                    message,
                } => {
                    let retry = match retry {
                        Retry::Backoff => "retry".to_owned(),
                        Retry::After(d) => format!("retry after {d:?}"),
                        Retry::Never => "permanent".to_owned(),
                    };
                    let before = match index {
                        0 => "none before it was handled".to_owned(),
                        n => format!("the {n} before it were handled"),
                    };
                    format!(
                        "FAILED at event {} ({retry}): {message}; {before}",
                        b.numbers[*index]
                    )
                }
            };
            writeln!(
                f,
                "batch of {} event(s), {first}-{last}: {outcome}",
                b.numbers.len()
            )?;
            for l in &b.logs {
                let fields: String = l.fields.iter().map(|(k, v)| format!(" {k}={v}")).collect();
                writeln!(
                    f,
                    "  log {}: {}{fields}",
                    format!("{:?}", l.level).to_lowercase(),
                    l.message
                )?;
            }
            for s in &b.sql {
                writeln!(f, "  sql {s}")?;
            }
            if let Some(t) = b.transaction {
                writeln!(f, "  sql transaction {t}")?;
            }
            for h in &b.http {
                writeln!(f, "  http {h}")?;
            }
            for m in &b.published {
                let kept = match &b.outcome {
                    Outcome::Failed { index, .. }
                        if m.event >= *index || b.transaction.is_some() =>
                    {
                        " (not recorded: its batch failed)"
                    }
                    _ => "",
                };
                writeln!(
                    f,
                    "  publish to {} subject={} key={} id={} payload={}{kept}",
                    m.sink,
                    m.subject,
                    m.key.as_deref().unwrap_or("-"),
                    m.id,
                    shown(&m.payload)
                )?;
            }
        }
        let failed = self
            .batches
            .iter()
            .filter(|b| matches!(b.outcome, Outcome::Failed { .. }))
            .count();
        let events: std::collections::BTreeSet<usize> = self
            .batches
            .iter()
            .flat_map(|b| b.numbers.iter().copied())
            .collect();
        writeln!(
            f,
            "{} event(s) in {} batch(es): {}",
            events.len(),
            self.batches.len(),
            if failed == 0 {
                "all handled".to_owned()
            } else {
                format!("{failed} failed")
            }
        )
    }
}

/// A payload as text, cut to a line.
fn shown(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut line: String = text.chars().take(200).collect();
    if text.chars().count() > 200 {
        line.push('…');
    }
    line.replace('\n', "\\n")
}

/// Load the plugin as the host would, and call it on the events.
pub async fn run_test(options: TestOptions) -> anyhow::Result<TestReport> {
    let logs: Arc<Mutex<Vec<PluginLog>>> = Arc::default();
    let sink: LogSink = {
        let logs = logs.clone();
        Arc::new(move |line| logs.lock().expect("logs").push(line))
    };
    let mut runtime = Runtime::new(Some(sink), Pool::default())?;
    if let Some(dir) = &options.settings.compile_cache {
        runtime = runtime.with_compile_cache(dir.clone());
    }
    let plugin = registry::load_file(&runtime, &options.plugin, &options.settings)
        .await
        .map_err(|r| anyhow::anyhow!("{}", r.error))?;
    let plugin = Arc::new(plugin);
    let name = plugin.manifest.name.clone();
    let policy = options.settings.policy(&name);
    let mut notes = Vec::new();
    let client = match &options.database_url {
        Some(url) => Some(crate::db::connect(url, Some(std::time::Duration::from_secs(10))).await?),
        None => None,
    };
    let events = match &options.events {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
            super::parse_events(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
        }
        None => {
            notes
                .push("no events file: one sample event per subscribed table and operation".into());
            samples(client.as_ref(), &plugin.manifest.subscriptions, &mut notes).await?
        }
    };
    let total = events.len();
    let events: Vec<_> = events
        .into_iter()
        .enumerate()
        .filter(|(_, (e, _))| wanted(&plugin.manifest.subscriptions, e))
        .collect();
    if events.len() < total {
        notes.push(format!(
            "{} of {total} event(s) skipped: the plugin does not subscribe to them (table, operation or changed columns)",
            total - events.len()
        ));
    }
    let session = match (&policy.sql, &options.database_url) {
        (Some(grant), Some(url)) => Some(Arc::new(
            SqlSession::open(url, &name, grant, policy.handle_timeout).await?,
        )),
        (Some(grant), None) => {
            notes.push(format!(
                "no --database-url: the plugin's sql statements (as role `{}`) fail",
                grant.role
            ));
            None
        }
        _ => None,
    };
    let responder = Arc::new(Recorder {
        rules: options.http,
        seen: Mutex::default(),
        sql: session.clone(),
        statements: Mutex::default(),
    });
    let mut batches = Vec::new();
    let size = plugin.manifest.batch_size.max(1) as usize;
    let mut rest = &events[..];
    while !rest.is_empty() {
        let take = rest.len().min(size);
        let batch = &rest[..take];
        let report = call(
            &plugin,
            batch,
            session.as_deref(),
            &responder,
            options.commit,
            &logs,
        )
        .await?;
        // Like the host: the events before a failure are done; here the rest
        // of the batch goes on in the next one (the host would retry or
        // dead-letter the failed event first).
        let handled = match &report.outcome {
            Outcome::Handled => take,
            Outcome::Failed { index, .. } => index + 1,
        };
        batches.push(report);
        rest = &rest[handled..];
    }
    Ok(TestReport {
        plugin: name,
        version: plugin.manifest.version.clone(),
        notes,
        batches,
    })
}

/// Whether the host would deliver `e` to a plugin with these subscriptions.
fn wanted(subscriptions: &[Subscription], e: &LoggedEvent) -> bool {
    let op = match e.op {
        Op::Insert => "insert",
        Op::Update => "update",
        Op::Delete => "delete",
        Op::Truncate => "truncate",
    };
    subscriptions.iter().any(|s| {
        s.schema == e.schema
            && s.table == e.table
            && s.operations.iter().any(|o| o == op)
            && (e.op != Op::Update
                || s.changed_columns.as_ref().is_none_or(|columns| {
                    let row = |text: &Option<String>| -> serde_json::Value {
                        text.as_deref()
                            .and_then(|t| serde_json::from_str(t).ok())
                            .unwrap_or_default()
                    };
                    let (new, old) = (row(&e.new_row), row(&e.old_row));
                    columns.iter().any(|c| new.get(c) != old.get(c))
                }))
    })
}

/// One call of `handle` on `batch`, with its effects recorded.
async fn call(
    plugin: &Arc<LoadedPlugin>,
    batch: &[(usize, (LoggedEvent, u32))],
    session: Option<&SqlSession>,
    recorder: &Arc<Recorder>,
    commit: bool,
    logs: &Mutex<Vec<PluginLog>>,
) -> anyhow::Result<BatchReport> {
    let events: Vec<(LoggedEvent, u32)> = batch.iter().map(|(_, e)| e.clone()).collect();
    let outbox = Arc::new(Outbox::default());
    if let Some(s) = session {
        s.begin(plugin.limits().handle_timeout).await?;
    }
    let granted_sql = plugin.capabilities.iter().any(|(c, _)| *c == "sql");
    let effects = Effects {
        // Without a database the recorder fails each statement with 58000.
        sql: granted_sql.then(|| recorder.clone() as Arc<dyn SqlAccess>),
        outbox: Some(outbox.clone()),
        http: Some(recorder.clone()),
    };
    let mut outcome = plugin.handle(events, effects).await;
    let mut transaction = None;
    if let Some(s) = session {
        outcome = s.checked(outcome);
        // As the host does before committing: deferred constraints are
        // checked now, and their violation fails the batch.
        if outcome == Outcome::Handled
            && let Err(e) = s
                .client()
                .batch_execute("SET CONSTRAINTS ALL IMMEDIATE")
                .await
        {
            let e = crate::db::error_text(&e);
            recorder
                .statements
                .lock()
                .expect("statements")
                .push(format!(
                    "(checking deferred constraints before the commit) -> error {e}"
                ));
            outcome = Outcome::Failed {
                index: 0,
                retry: Retry::Backoff,
                message: format!("the batch's writes broke a deferred constraint: {e}"),
            };
        }
        if commit && outcome == Outcome::Handled {
            s.commit().await?;
            transaction = Some("committed (--commit)");
        } else {
            s.rollback().await?;
            transaction = Some(if commit {
                "rolled back (the batch failed; the host would run the events before the failure again and commit them)"
            } else {
                "rolled back (give --commit to keep what it wrote)"
            });
        }
        if !granted_sql {
            transaction = None;
        }
    }
    Ok(BatchReport {
        numbers: batch.iter().map(|(i, _)| i + 1).collect(),
        outcome,
        logs: std::mem::take(&mut *logs.lock().expect("logs")),
        sql: std::mem::take(&mut *recorder.statements.lock().expect("statements")),
        http: std::mem::take(&mut *recorder.seen.lock().expect("http")),
        published: outbox.take(),
        transaction,
    })
}

/// The test's stand-in for the network and its window on the sql session:
/// answers HTTP requests by the rules and writes down every request and
/// statement.
struct Recorder {
    rules: HttpRules,
    seen: Mutex<Vec<String>>,
    sql: Option<Arc<SqlSession>>,
    statements: Mutex<Vec<String>>,
}

impl HttpResponder for Recorder {
    fn answer(&self, request: HttpRequestSeen) -> Option<HttpAnswer> {
        let line = format!(
            "{} {} ({} byte body)",
            request.method,
            request.uri,
            request.body.len()
        );
        let mut seen = self.seen.lock().expect("http");
        match self.rules.matching(&request.method, &request.uri) {
            Some((i, rule)) => {
                seen.push(format!("{line} -> {} (rule {})", rule.status, i + 1));
                Some(HttpAnswer {
                    status: rule.status,
                    headers: rule.headers.clone().into_iter().collect(),
                    body: rule.body.clone().into_bytes(),
                })
            }
            None => {
                seen.push(format!(
                    "{line} -> refused: no rule matches (add a [[rule]] to the --http file)"
                ));
                None
            }
        }
    }

    fn refused(&self, method: &str, uri: &str, reason: &str) {
        self.seen
            .lock()
            .expect("http")
            .push(format!("{method} {uri} -> refused: {reason}"));
    }
}

impl Recorder {
    fn note<T>(
        &self,
        statement: &str,
        params: &[SqlValue],
        result: Result<T, SqlFailure>,
        shown: impl Fn(&T) -> String,
    ) -> Result<T, SqlFailure> {
        let params = if params.is_empty() {
            String::new()
        } else {
            format!(" {params:?}")
        };
        let outcome = match &result {
            Ok(v) => shown(v),
            Err(e) => format!("error {}: {}", e.sqlstate, e.message),
        };
        self.statements
            .lock()
            .expect("statements")
            .push(format!("{}{params} -> {outcome}", statement.trim()));
        result
    }

    fn session(&self) -> Result<&SqlSession, SqlFailure> {
        self.sql.as_deref().ok_or_else(|| SqlFailure {
            sqlstate: "58000".into(),
            message: "no database: give `pgevents-host test` a --database-url".into(),
        })
    }
}

impl SqlAccess for Recorder {
    fn query(&self, statement: &str, params: &[SqlValue]) -> Result<SqlRows, SqlFailure> {
        let result = self.session().and_then(|s| s.query(statement, params));
        self.note(statement, params, result, |r| {
            format!("{} row(s)", r.rows.len())
        })
    }

    fn execute(&self, statement: &str, params: &[SqlValue]) -> Result<u64, SqlFailure> {
        let result = self.session().and_then(|s| s.execute(statement, params));
        self.note(statement, params, result, |n| {
            format!("{n} row(s) affected")
        })
    }
}

/// One event per subscribed table and operation, with typed sample values
/// of the table's columns when there is a database, else an empty row.
async fn samples(
    client: Option<&tokio_postgres::Client>,
    subscriptions: &[Subscription],
    notes: &mut Vec<String>,
) -> anyhow::Result<Vec<(LoggedEvent, u32)>> {
    let mut events = Vec::new();
    for s in subscriptions {
        let row = match client {
            Some(c) => catalog::sample_row(c, &s.schema, &s.table).await?,
            None => {
                notes.push(format!(
                    "no --database-url: the sample rows of {}.{} are empty objects",
                    s.schema, s.table
                ));
                "{}".to_owned()
            }
        };
        for op in &s.operations {
            let n = events.len() as u64 + 1;
            let (op, new_row, old_row) = match op.as_str() {
                "insert" => (Op::Insert, Some(row.clone()), None),
                "update" => (Op::Update, Some(row.clone()), Some(row.clone())),
                "delete" => (Op::Delete, None, Some(row.clone())),
                _ => (Op::Truncate, None, None),
            };
            events.push((
                LoggedEvent {
                    position: crate::event::Position {
                        ord: n as i64,
                        seq: 1,
                    },
                    txid: n,
                    op,
                    schema: s.schema.clone(),
                    table: s.table.clone(),
                    key: None,
                    new_row,
                    old_row,
                    captured_at: "2026-01-01T00:00:00.000000Z".into(),
                    user: "sample".into(),
                    application_name: "pgevents-host test".into(),
                    tag: None,
                },
                1,
            ));
        }
    }
    Ok(events)
}
