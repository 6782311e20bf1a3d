//! Tunable behaviour in one place. Every constant carries its unit in its name
//! and is overridable from the command line (see `main.rs`) or, per plugin,
//! from the operator's config file ([`ConfigFile`]).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::runtime::{Grants, HttpGrant, Limits, SqlGrant};

/// Schema the host installs its log, cursors and capture function into.
pub const SCHEMA: &str = "pgevents";

/// NOTIFY channel the capture function signals (at most once per transaction:
/// PostgreSQL merges identical notifications within a transaction).
pub const NOTIFY_CHANNEL: &str = "pgevents";

// Batch sizes: what a manifest may ask for (see `runtime/manifest.rs`).
pub use crate::runtime::{DEFAULT_BATCH_SIZE, MAX_BATCH_SIZE};

/// With NOTIFY on, the log is still polled this often as a safety net.
pub const DEFAULT_POLL_INTERVAL_MS: u64 = 1_000;
/// With NOTIFY off, an idle worker polls at an interval that doubles from this
/// floor up to the poll interval, and drops back to it as soon as it finds work.
pub const MIN_POLL_INTERVAL_MS: u64 = 5;
/// After the wake lease lapsed (below), poll this often until every
/// transaction that was running then has ended: its commit may not have sent
/// a notification.
pub const HORIZON_WAIT_POLL_MS: u64 = 50;
/// A deliverer that asked for a tick waits at most this long for it (the
/// ticker may be reconnecting), then reads anyway.
pub const TICK_WAIT_MS: u64 = 1_000;
/// With NOTIFY on, writers notify only while a waiting host keeps
/// `pgevents.wake_until` ahead of the clock (migration 4): it sets it this far
/// ahead, renews it at most this often, and waits at most this long between
/// reads (so that it renews well before the lease runs out).
pub const WAKE_LEASE_MS: u64 = 5_000;
pub const WAKE_RENEW_MS: u64 = 1_000;
pub const WAKE_MAX_WAIT_MS: u64 = 2_000;

/// Retry schedule for a failed batch: `RETRY_BASE_MS * 2^(attempt-1)`, capped at
/// `RETRY_MAX_MS`, with ±20% jitter: 0.5 s, 1 s, 2 s, 4 s, ... 60 s.
pub const DEFAULT_RETRY_BASE_MS: u64 = 500;
pub const DEFAULT_RETRY_MAX_MS: u64 = 60_000;

/// See `Settings::reconcile_interval`.
pub const DEFAULT_RECONCILE_INTERVAL_MS: u64 = 30_000;

/// A failing event is delivered at most this many times; then it goes to the
/// dead-letter table (or the plugin halts, if so configured). With the default
/// schedule the tenth attempt comes about 2 minutes after the first.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 10;

/// A partition lease lasts this long unless renewed. When a host dies or is
/// cut off, its partitions are taken over within one TTL plus `LEASE_CHECK_MS`
/// (a clean shutdown hands them over at once). Must exceed the handle timeout
/// by more than `LEASE_MARGIN_MS + LEASE_CHECK_MS` (see `leases.rs`).
pub const DEFAULT_LEASE_TTL_MS: u64 = 15_000;
/// How often a host renews its leases and looks for partitions to take.
pub const LEASE_CHECK_MS: u64 = 500;
/// A plugin call starts only while the lease is certain to last the handle
/// timeout plus this long.
pub const LEASE_MARGIN_MS: u64 = 1_000;
/// A deliverer that cannot start this many times in a row (its plugin's sql
/// role cannot log in; with the reconnect backoff that is about 35 s) hands
/// its partition back and this host leaves it alone for `PARTITION_REST_MS`,
/// so that another host may deliver it.
pub const WORKER_GIVE_UP_FAILURES: u32 = 8;
pub const PARTITION_REST_MS: u64 = 60_000;

/// Log rows every cursor has passed are pruned once older than this (so that
/// a plugin can be replayed over the recent past).
pub const DEFAULT_RETENTION_MIN_AGE_MS: u64 = 3_600_000;
/// How often the log is pruned, and how many rows one delete removes at most.
pub const DEFAULT_RETENTION_INTERVAL_MS: u64 = 10_000;
pub const RETENTION_BATCH_ROWS: i64 = 10_000;

/// Partitions a plugin may be split into.
pub const MAX_PARTITIONS: u32 = 64;

/// While a transaction that wrote stays open longer than this, say which one
/// in the log (and again every time this much more has passed): its events
/// wait for its commit, and it keeps deleted log rows from being vacuumed.
pub const DEFAULT_HORIZON_WARN_AFTER_MS: u64 = 10_000;

/// Reconnect schedule after a lost or refused database connection: doubling
/// from 250 ms to 10 s.
pub const RECONNECT_BASE_MS: u64 = 250;
pub const RECONNECT_MAX_MS: u64 = 10_000;

/// CPU time a `handle` call may use before it is interrupted (epoch ticks of
/// `EPOCH_TICK_MS`), and the budget for `describe`.
pub const DEFAULT_HANDLE_TIMEOUT_MS: u64 = 10_000;
pub const DESCRIBE_TIMEOUT_MS: u64 = 2_000;
pub const EPOCH_TICK_MS: u64 = 10;

/// Linear memory a plugin instance may grow to.
pub const DEFAULT_MEMORY_LIMIT_BYTES: usize = 256 << 20;

/// Plugin instances that may exist at once (the pooling allocator's size).
/// Each partition being delivered holds one while its plugin runs, and a
/// reload holds one while it asks the new file for its manifest.
pub const DEFAULT_MAX_INSTANCES: u32 = 64;

/// A plugin call may write `LOG_LINES_PER_CALL` log lines plus
/// `LOG_LINES_PER_EVENT` per event in its batch; the rest are dropped (and
/// counted, in one warning). So a plugin that logs each event is never cut,
/// and one that logs in a loop cannot flood the host. Longer lines are cut.
pub const LOG_LINES_PER_CALL: u32 = 100;
pub const LOG_LINES_PER_EVENT: u32 = 10;
pub const LOG_LINE_MAX_BYTES: usize = 4096;
/// A failure message (a plugin's own, or a trap's with the plugin's last
/// output) is cut to this many bytes, in the log and in the database.
pub const FAILURE_MESSAGE_MAX_BYTES: usize = 4096;

/// Largest plugin file the host reads (the Python and JavaScript examples,
/// which carry a language runtime, are 12 to 18 MiB).
pub const MAX_PLUGIN_FILE_BYTES: u64 = 256 << 20;

/// The plugins folder is watched for changes; after a change, it is read once
/// nothing has changed in it for this long (so a file being copied is not
/// read half-written), and re-checked this often in any case (in case a
/// change notification was missed, as on some network file systems).
pub const RELOAD_QUIET_MS: u64 = 100;
pub const RELOAD_RESCAN_MS: u64 = 2_000;

/// Runtime settings for `run`, with the defaults above.
#[derive(Debug, Clone)]
pub struct Settings {
    pub poll_interval: Duration,
    pub notify: bool,
    pub retry_base: Duration,
    pub retry_max: Duration,
    pub handle_timeout: Duration,
    pub memory_limit_bytes: usize,
    /// `None`: retry the first connection forever.
    pub connect_timeout: Option<Duration>,
    /// How often the running host re-checks the capture triggers, so that a
    /// subscribed table that was dropped and re-created, or whose primary key
    /// changed, is captured correctly again without a restart.
    pub reconcile_interval: Duration,
    /// Delivery attempts per event before it is dead-lettered (or the plugin halts).
    pub max_attempts: u32,
    pub on_failure: OnFailure,
    pub lease_ttl: Duration,
    pub retention_min_age: Duration,
    pub retention_interval: Duration,
    pub horizon_warn_after: Duration,
    /// Where compiled plugins are cached (`None`: compile on every load).
    pub compile_cache: Option<std::path::PathBuf>,
    /// Per plugin (by manifest name): overrides and grants.
    pub plugins: BTreeMap<String, PluginPolicy>,
    /// Size of the instance pool (see [`DEFAULT_MAX_INSTANCES`]).
    pub max_instances: u32,
    /// Where a plugin seen for the first time starts reading the log.
    pub start_from: StartFrom,
    /// Reload plugins when files in the plugins folder change.
    pub watch: bool,
}

/// Where a plugin seen for the first time starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StartFrom {
    /// With changes committed from now on (the default).
    #[default]
    Now,
    /// With the oldest event the log still holds (see `retention_min_age`).
    Beginning,
}

/// What happens to an event that failed `max_attempts` times, or permanently.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnFailure {
    /// Store it in `pgevents.dead_letters` and go on with the next event.
    DeadLetter,
    /// Stop the plugin at that event until it is restarted or replaced.
    Halt,
}

/// The operator's settings for one plugin.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PluginPolicy {
    /// Tables (`schema.table`) the plugin may subscribe to; its manifest's
    /// other subscriptions are refused. Absent: any table.
    pub tables: Option<Vec<String>>,
    /// Split the plugin's stream into this many partitions (by a hash of table
    /// and primary key), delivered concurrently; events of one row stay in order.
    pub partitions: Option<u32>,
    pub max_attempts: Option<u32>,
    pub on_failure: Option<OnFailure>,
    /// Events per call, overriding the manifest's request.
    pub batch_size: Option<u32>,
    #[serde(default, deserialize_with = "duration")]
    pub handle_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "byte_size")]
    pub memory_limit: Option<usize>,
    #[serde(default, deserialize_with = "duration")]
    pub retry_base: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    pub retry_max: Option<Duration>,
    pub start_from: Option<StartFrom>,
    /// Values the plugin reads with `config.get`.
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    /// Grants the `sql` capability.
    pub sql: Option<SqlGrant>,
    /// Grants outbound HTTP (`wasi:http/outgoing-handler`) to these hosts.
    pub http: Option<HttpGrant>,
}

impl Settings {
    /// Reject combinations that cannot work.
    pub fn check(&self) -> Result<(), String> {
        let floor = self.handle_timeout + Duration::from_millis(LEASE_MARGIN_MS + LEASE_CHECK_MS);
        if self.lease_ttl <= floor {
            return Err(format!(
                "the lease TTL ({:?}) must exceed the handle timeout ({:?}) by more than {} ms, \
                 so that a plugin call always ends while the lease holds; raise --lease-ttl or lower --handle-timeout",
                self.lease_ttl,
                self.handle_timeout,
                LEASE_MARGIN_MS + LEASE_CHECK_MS
            ));
        }
        for (name, p) in &self.plugins {
            if let Some(timeout) = p.handle_timeout
                && self.lease_ttl
                    <= timeout + Duration::from_millis(LEASE_MARGIN_MS + LEASE_CHECK_MS)
            {
                return Err(format!(
                    "[plugins.{name}] handle_timeout = {timeout:?}: the lease TTL ({:?}) must exceed it by more than {} ms",
                    self.lease_ttl,
                    LEASE_MARGIN_MS + LEASE_CHECK_MS
                ));
            }
        }
        Ok(())
    }

    /// The effective policy for `plugin`: its section, defaults filled in.
    pub fn policy(&self, plugin: &str) -> EffectivePolicy {
        let p = self.plugins.get(plugin).cloned().unwrap_or_default();
        EffectivePolicy {
            tables: p.tables,
            partitions: p.partitions.unwrap_or(1),
            max_attempts: p.max_attempts.unwrap_or(self.max_attempts),
            on_failure: p.on_failure.unwrap_or(self.on_failure),
            batch_size: p.batch_size,
            handle_timeout: p.handle_timeout.unwrap_or(self.handle_timeout),
            memory_limit_bytes: p.memory_limit.unwrap_or(self.memory_limit_bytes),
            retry_base: p.retry_base.unwrap_or(self.retry_base),
            retry_max: p.retry_max.unwrap_or(self.retry_max),
            start_from: p.start_from.unwrap_or(self.start_from),
            config: p.config,
            sql: p.sql,
            http: p.http,
        }
    }

    /// The largest memory limit of any plugin (the pool's slot size).
    pub fn largest_memory_limit(&self) -> usize {
        self.plugins
            .values()
            .filter_map(|p| p.memory_limit)
            .fold(self.memory_limit_bytes, usize::max)
    }
}

impl From<&Settings> for Limits {
    fn from(settings: &Settings) -> Limits {
        Limits {
            handle_timeout: settings.handle_timeout,
            memory_bytes: settings.memory_limit_bytes,
        }
    }
}

/// [`PluginPolicy`] with the host's defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EffectivePolicy {
    pub tables: Option<Vec<String>>,
    pub partitions: u32,
    pub max_attempts: u32,
    pub on_failure: OnFailure,
    pub batch_size: Option<u32>,
    pub handle_timeout: Duration,
    pub memory_limit_bytes: usize,
    pub retry_base: Duration,
    pub retry_max: Duration,
    pub start_from: StartFrom,
    pub config: BTreeMap<String, String>,
    pub sql: Option<SqlGrant>,
    pub http: Option<HttpGrant>,
}

impl EffectivePolicy {
    /// Whether the operator lets the plugin subscribe to `schema.table`.
    pub fn allows_table(&self, schema: &str, table: &str) -> bool {
        self.tables
            .as_ref()
            .is_none_or(|tables| tables.iter().any(|t| *t == format!("{schema}.{table}")))
    }
}

impl From<&EffectivePolicy> for Grants {
    fn from(policy: &EffectivePolicy) -> Grants {
        Grants {
            limits: Limits {
                handle_timeout: policy.handle_timeout,
                memory_bytes: policy.memory_limit_bytes,
            },
            config: policy.config.clone(),
            sql: policy.sql.is_some(),
            http: policy.http.clone(),
        }
    }
}

/// The operator's config file (TOML). Every field is optional; unknown fields
/// are errors. Command-line flags and environment variables override it.
///
/// ```toml
/// max_attempts = 10            # then dead-letter (or halt)
/// on_failure = "dead-letter"   # or "halt"
/// lease_ttl = "15s"
/// retention_min_age = "1h"
///
/// [plugins.ledger]
/// partitions = 4
/// sql = { role = "ledger_writer" }
/// ```
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// PostgreSQL URL (the `--database-url` flag and `DATABASE_URL` win).
    pub database_url: Option<String>,
    /// The plugins folder (the `--plugins` flag wins).
    pub plugins_dir: Option<std::path::PathBuf>,
    #[serde(default, deserialize_with = "duration")]
    pub handle_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "byte_size")]
    pub memory_limit: Option<usize>,
    pub max_instances: Option<u32>,
    #[serde(default, deserialize_with = "duration")]
    pub poll_interval: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    pub retry_base: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    pub retry_max: Option<Duration>,
    pub start_from: Option<StartFrom>,
    pub notify: Option<bool>,
    pub watch: Option<bool>,
    pub max_attempts: Option<u32>,
    pub on_failure: Option<OnFailure>,
    #[serde(default, deserialize_with = "duration")]
    pub lease_ttl: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    pub retention_min_age: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    pub retention_interval: Option<Duration>,
    #[serde(default)]
    pub plugins: BTreeMap<String, PluginPolicy>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Invalid { path: String, message: String },
}

impl ConfigFile {
    pub fn load(path: &Path) -> Result<ConfigFile, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: shown.clone(),
            source,
        })?;
        ConfigFile::parse(&text).map_err(|message| ConfigError::Invalid {
            path: shown,
            message,
        })
    }

    pub fn parse(text: &str) -> Result<ConfigFile, String> {
        let file: ConfigFile = toml::from_str(text).map_err(|e| e.to_string())?;
        for (name, p) in &file.plugins {
            if let Some(n) = p.partitions
                && !(1..=MAX_PARTITIONS).contains(&n)
            {
                return Err(format!(
                    "[plugins.{name}] partitions = {n}: must be between 1 and {MAX_PARTITIONS}"
                ));
            }
            if p.max_attempts == Some(0) {
                return Err(format!("[plugins.{name}] max_attempts must be at least 1"));
            }
            if let Some(size) = p.batch_size
                && !(1..=MAX_BATCH_SIZE).contains(&size)
            {
                return Err(format!(
                    "[plugins.{name}] batch_size = {size}: must be between 1 and {MAX_BATCH_SIZE}"
                ));
            }
            for t in p.tables.iter().flatten() {
                if t.split_once('.')
                    .is_none_or(|(s, t)| s.is_empty() || t.is_empty())
                {
                    return Err(format!(
                        "[plugins.{name}] tables: `{t}` is not of the form \"schema.table\""
                    ));
                }
            }
            if let Some(http) = &p.http {
                http.check()
                    .map_err(|e| format!("[plugins.{name}] http.allow: {e}"))?;
            }
        }
        if file.max_instances == Some(0) {
            return Err("max_instances must be at least 1".into());
        }
        if file.max_attempts == Some(0) {
            return Err("max_attempts must be at least 1".into());
        }
        Ok(file)
    }

    /// Apply the values given over `settings` (also used for command-line
    /// overrides, which leave `plugins` empty).
    pub fn apply(self, settings: &mut Settings) {
        if let Some(v) = self.handle_timeout {
            settings.handle_timeout = v;
        }
        if let Some(v) = self.memory_limit {
            settings.memory_limit_bytes = v;
        }
        if let Some(v) = self.max_instances {
            settings.max_instances = v;
        }
        if let Some(v) = self.poll_interval {
            settings.poll_interval = v;
        }
        if let Some(v) = self.retry_base {
            settings.retry_base = v;
        }
        if let Some(v) = self.retry_max {
            settings.retry_max = v;
        }
        if let Some(v) = self.start_from {
            settings.start_from = v;
        }
        if let Some(v) = self.notify {
            settings.notify = v;
        }
        if let Some(v) = self.watch {
            settings.watch = v;
        }
        if let Some(v) = self.max_attempts {
            settings.max_attempts = v;
        }
        if let Some(v) = self.on_failure {
            settings.on_failure = v;
        }
        if let Some(v) = self.lease_ttl {
            settings.lease_ttl = v;
        }
        if let Some(v) = self.retention_min_age {
            settings.retention_min_age = v;
        }
        if let Some(v) = self.retention_interval {
            settings.retention_interval = v;
        }
        settings.plugins.extend(self.plugins);
    }
}

fn duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(&text).map(Some).map_err(|e| {
        serde::de::Error::custom(format!(
            "`{text}` is not a duration ({e}); write e.g. \"15s\" or \"1h\""
        ))
    })
}

/// A size: a number of bytes, or a string such as "64MiB", "1GiB", "512KiB".
fn byte_size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Bytes(u64),
        Text(String),
    }
    let text = match Size::deserialize(d)? {
        Size::Bytes(n) => return Ok(Some(n as usize)),
        Size::Text(text) => text,
    };
    parse_byte_size(&text).map(Some).ok_or_else(|| {
        serde::de::Error::custom(format!(
            "`{text}` is not a size; write e.g. \"64MiB\", \"1GiB\" or a number of bytes"
        ))
    })
}

/// "64MiB" → 67108864 (units B, KiB, MiB, GiB, and KB, MB, GB as powers of 1000).
pub fn parse_byte_size(text: &str) -> Option<usize> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().ok()?;
    let factor: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return None,
    };
    usize::try_from(number.checked_mul(factor)?).ok()
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            poll_interval: Duration::from_millis(DEFAULT_POLL_INTERVAL_MS),
            notify: true,
            retry_base: Duration::from_millis(DEFAULT_RETRY_BASE_MS),
            retry_max: Duration::from_millis(DEFAULT_RETRY_MAX_MS),
            handle_timeout: Duration::from_millis(DEFAULT_HANDLE_TIMEOUT_MS),
            memory_limit_bytes: DEFAULT_MEMORY_LIMIT_BYTES,
            connect_timeout: None,
            reconcile_interval: Duration::from_millis(DEFAULT_RECONCILE_INTERVAL_MS),
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            on_failure: OnFailure::DeadLetter,
            lease_ttl: Duration::from_millis(DEFAULT_LEASE_TTL_MS),
            retention_min_age: Duration::from_millis(DEFAULT_RETENTION_MIN_AGE_MS),
            retention_interval: Duration::from_millis(DEFAULT_RETENTION_INTERVAL_MS),
            horizon_warn_after: Duration::from_millis(DEFAULT_HORIZON_WARN_AFTER_MS),
            compile_cache: default_compile_cache(),
            plugins: BTreeMap::new(),
            max_instances: DEFAULT_MAX_INSTANCES,
            start_from: StartFrom::Now,
            watch: true,
        }
    }
}

/// `$XDG_CACHE_HOME/pgevents-host`, else `$HOME/.cache/pgevents-host`.
pub fn default_compile_cache() -> Option<std::path::PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(std::path::PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| std::path::PathBuf::from(h).join(".cache"))
        })?;
    Some(base.join("pgevents-host"))
}

/// Delay before retry number `attempt` (1-based) of a failed batch, before jitter.
pub fn backoff(attempt: u32, base: Duration, max: Duration) -> Duration {
    let factor = 1u32
        .checked_shl(attempt.saturating_sub(1).min(31))
        .unwrap_or(u32::MAX);
    base.saturating_mul(factor).min(max)
}

/// `delay` ±20%, so that many failing plugins do not retry in lock step.
pub fn jitter(delay: Duration) -> Duration {
    let factor = 0.8 + rand::random::<f64>() * 0.4;
    delay.mul_f64(factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let base = Duration::from_millis(500);
        let max = Duration::from_secs(60);
        let got: Vec<u64> = (1..=9)
            .map(|a| backoff(a, base, max).as_millis() as u64)
            .collect();
        assert_eq!(
            got,
            [500, 1000, 2000, 4000, 8000, 16000, 32000, 60000, 60000]
        );
        assert_eq!(backoff(200, base, max), max);
    }

    #[test]
    fn config_file_rejects_unknown_fields_and_bad_values() {
        let ok = ConfigFile::parse(
            "max_attempts = 3\nlease_ttl = \"2s\"\n[plugins.ledger]\npartitions = 4\nsql = { role = \"w\" }\n",
        )
        .unwrap();
        let mut settings = Settings::default();
        ok.apply(&mut settings);
        let policy = settings.policy("ledger");
        assert_eq!(policy.partitions, 4);
        assert_eq!(policy.max_attempts, 3);
        assert_eq!(policy.sql.unwrap().role, "w");
        assert_eq!(settings.lease_ttl, Duration::from_secs(2));
        assert_eq!(settings.policy("other").partitions, 1);

        let typo = ConfigFile::parse("[plugins.x]\npartition = 4\n").unwrap_err();
        assert!(typo.contains("unknown field `partition`"), "{typo}");
        let zero = ConfigFile::parse("[plugins.x]\npartitions = 0\n").unwrap_err();
        assert!(zero.contains("between 1 and 64"), "{zero}");
        let bad = ConfigFile::parse("lease_ttl = \"soon\"\n").unwrap_err();
        assert!(bad.contains("not a duration"), "{bad}");
        let table = ConfigFile::parse("[plugins.x]\ntables = [\"orders\"]\n").unwrap_err();
        assert!(table.contains("schema.table"), "{table}");
        let size = ConfigFile::parse("memory_limit = \"lots\"\n").unwrap_err();
        assert!(size.contains("not a size"), "{size}");
    }

    #[test]
    fn per_plugin_limits_grants_and_config_values() {
        let file = ConfigFile::parse(
            "handle_timeout = \"2s\"\nmemory_limit = \"64MiB\"\n\
             [plugins.hook]\ntables = [\"public.orders\"]\nmemory_limit = 1048576\n\
             batch_size = 7\nretry_base = \"10ms\"\nstart_from = \"beginning\"\n\
             config = { url = \"http://127.0.0.1:9/\" }\n",
        )
        .unwrap();
        let mut settings = Settings::default();
        file.apply(&mut settings);
        let hook = settings.policy("hook");
        assert_eq!(hook.memory_limit_bytes, 1 << 20);
        assert_eq!(hook.handle_timeout, Duration::from_secs(2));
        assert_eq!(hook.batch_size, Some(7));
        assert_eq!(hook.retry_base, Duration::from_millis(10));
        assert_eq!(hook.start_from, StartFrom::Beginning);
        assert_eq!(hook.config["url"], "http://127.0.0.1:9/");
        assert!(hook.allows_table("public", "orders"));
        assert!(!hook.allows_table("public", "users"));
        let other = settings.policy("other");
        assert_eq!(other.memory_limit_bytes, 64 << 20);
        assert!(other.allows_table("public", "users"));
        assert_eq!(settings.largest_memory_limit(), 64 << 20);
        assert_eq!(parse_byte_size("512KiB"), Some(512 << 10));
        assert_eq!(parse_byte_size("2GB"), Some(2_000_000_000));
        assert_eq!(parse_byte_size("2 TB"), None);
    }

    #[test]
    fn the_lease_must_outlast_a_plugin_call() {
        assert!(Settings::default().check().is_ok());
        let short = Settings {
            lease_ttl: Duration::from_secs(11),
            ..Settings::default()
        };
        let err = short.check().unwrap_err();
        assert!(err.contains("must exceed the handle timeout"), "{err}");
    }

    #[test]
    fn jitter_stays_within_twenty_percent() {
        for _ in 0..1000 {
            let d = jitter(Duration::from_millis(1000)).as_millis();
            assert!((800..=1200).contains(&d), "{d}");
        }
    }

    #[test]
    fn http_allow_entries_must_be_hosts() {
        for bad in [
            "https://hooks.example.com",
            "hooks.example.com/path",
            "host:port",
            "*.example.com",
            "",
            "[::1]x",
        ] {
            let toml = format!("[plugins.w]\nhttp = {{ allow = [\"{bad}\"] }}\n");
            let err = ConfigFile::parse(&toml).unwrap_err();
            assert!(
                err.contains("is not a host name or host:port"),
                "{bad}: {err}"
            );
        }
        let ok = "[plugins.w]\nhttp = { allow = [\"a.example\", \"10.0.0.1:80\", \"[::1]\"] }\n";
        assert!(ConfigFile::parse(ok).is_ok());
    }
}
