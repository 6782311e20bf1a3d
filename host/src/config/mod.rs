//! Settings, each declared once below: its field, kind, default, flag,
//! environment variable, config key, doc and whether a plugin's section may
//! override it. From the declaration come `Settings`, `PluginPolicy`, the
//! config file's parser (`file.rs`), the command line's flags (`main.rs`),
//! and the reference docs (`reference.rs`, `pgevents-host reference`).
//!
//! A new setting is one entry in [`declare_settings!`]'s invocation here,
//! and the code that reads its field.

#[macro_use]
mod declare;
mod file;
mod flags;
pub mod kinds;
mod policy;
pub mod reference;

use std::collections::BTreeMap;

use serde::Deserialize;

pub use crate::runtime::{DEFAULT_BATCH_SIZE, MAX_BATCH_SIZE};
pub use declare::{Scope, Setting};
pub use file::{ConfigError, ConfigFile};
pub use flags::SettingFlags;
use kinds::{Bytes, CacheDir, Choice, Count, Dur, DurOrForever, Flag, Kind};
pub use kinds::{default_compile_cache, parse_byte_size};
pub use policy::EffectivePolicy;

use crate::runtime::{Grants, HttpGrant, Limits, Pool, SqlGrant};

/// Partitions a plugin may be split into.
pub const MAX_PARTITIONS: u32 = 64;

/// How often a host renews its leases and looks for partitions to take.
pub const LEASE_CHECK_MS: u64 = 500;
/// A plugin call starts only while the lease is certain to last the handle
/// timeout plus this long.
pub const LEASE_MARGIN_MS: u64 = 1_000;

declare_settings! {
    host {
        /// How often to poll the log: a safety net with NOTIFY on (at most
        /// 2 s then, so that the host renews its wake lease), the ceiling of
        /// the adaptive interval with NOTIFY off.
        poll_interval: Dur = "1s", flag "poll-interval", env "PGEVENTS_POLL_INTERVAL";
        /// Wake on LISTEN/NOTIFY (one notification per writing transaction,
        /// sent only while a host waits for it). `false` makes the capture
        /// triggers send none (NOTIFY takes a cluster-wide lock at commit) and
        /// the host polls adaptively, from 5 ms up to the poll interval.
        notify: Flag = "true", flag "notify", env "PGEVENTS_NOTIFY";
        /// Reload plugins whose files in the plugins folder change.
        watch: Flag = "true", flag "watch", env "PGEVENTS_WATCH";
        /// Plugin instances that may exist at once, over all plugins (the
        /// instance pool's size); a call waits for a free slot.
        max_instances: Count = "64", flag "max-instances", env "PGEVENTS_MAX_INSTANCES";
        /// How long a partition lease lasts unrenewed: the failover time when
        /// a host dies or is cut off. Must exceed the handle timeout by more
        /// than 1.5 s.
        lease_ttl: Dur = "15s", flag "lease-ttl", env "PGEVENTS_LEASE_TTL";
        /// Acknowledged log rows are kept at least this long (the replay window).
        retention_min_age: Dur = "1h", flag "retention-min-age", env "PGEVENTS_RETENTION_MIN_AGE";
        /// How often the log is pruned.
        retention_interval: Dur = "10s", flag "retention-interval", env "PGEVENTS_RETENTION_INTERVAL";
        /// How often the running host re-checks the capture triggers against
        /// the catalog (repairs the capture of a subscribed table that was
        /// dropped and re-created, or whose primary key changed).
        reconcile_interval: Dur = "30s", flag "reconcile-interval", env "PGEVENTS_RECONCILE_INTERVAL";
        /// A transaction that wrote and stays open longer than this is named
        /// in the log (again each time this much more has passed): its events
        /// arrive when it commits, and it keeps deleted log rows from being vacuumed.
        horizon_warn_after: Dur = "10s", flag "horizon-warn-after", env "PGEVENTS_HORIZON_WARN_AFTER";
        /// Give up connecting at start after this long. Until then the host
        /// retries with backoff (250 ms doubling to 10 s) and logs where it
        /// tried, never the password.
        connect_timeout: DurOrForever = "forever", flag "connect-timeout", env "PGEVENTS_CONNECT_TIMEOUT";
        /// Where compiled plugins are kept, keyed by the file's SHA-256 and
        /// the engine's compatibility hash, so that a restart does not compile
        /// again: a folder, `auto` (`$XDG_CACHE_HOME/pgevents-host`, else
        /// `~/.cache/pgevents-host`) or `off`. A damaged entry is ignored and rewritten.
        compile_cache: CacheDir = "auto", flag "compile-cache", env "PGEVENTS_COMPILE_CACHE";
    }
    per_plugin {
        /// How long a `handle` call may run before it is interrupted.
        handle_timeout: Dur = "10s", flag "handle-timeout", env "PGEVENTS_HANDLE_TIMEOUT";
        /// Linear memory a plugin instance may grow to.
        memory_limit_bytes as "memory_limit": Bytes = "256MiB", flag "memory-limit", env "PGEVENTS_MEMORY_LIMIT";
        /// First retry delay of a failed batch; it doubles per attempt, with
        /// ±20% jitter.
        retry_base: Dur = "500ms", flag "retry-base", env "PGEVENTS_RETRY_BASE";
        /// Longest retry delay.
        retry_max: Dur = "60s", flag "retry-max", env "PGEVENTS_RETRY_MAX";
        /// Deliveries of a failing event before it is dead-lettered (or its
        /// plugin halts). With the default schedule the tenth comes about
        /// 2 minutes after the first.
        max_attempts: Count = "10", flag "max-attempts", env "PGEVENTS_MAX_ATTEMPTS";
        /// What becomes of an event that failed `max_attempts` times, or
        /// permanently: `dead-letter` (kept in `pgevents.dead_letters`, and the
        /// plugin goes on) or `halt` (the plugin stops at that event until it
        /// is restarted or replaced).
        on_failure: Choice<OnFailure> = "dead-letter", flag "on-failure", env "PGEVENTS_ON_FAILURE";
        /// Where a plugin seen for the first time starts: `now` (with changes
        /// committed from now on) or `beginning` (the oldest event the log
        /// still holds).
        start_from: Choice<StartFrom> = "now", flag "start-from", env "PGEVENTS_START_FROM";
    }
    plugin_only {
        /// `schema.table` names the plugin may subscribe to; its other
        /// subscriptions are refused with a log line (and the plugin, if none
        /// is left). Absent: any table.
        tables: Option<Vec<String>>,
        /// Split the plugin's stream into this many partitions (1 to 64, by a
        /// hash of table and primary key), delivered concurrently; events of
        /// one row stay in order. Fixed when the plugin first registers, then
        /// changed only by `pgevents-host repartition` (see Guarantees).
        partitions: Option<u32>,
        /// Events per call (1 to 10000), overriding the manifest's request.
        batch_size: Option<u32>,
        /// String values the plugin reads with `config.get`.
        config: BTreeMap<String, String>,
        /// Grants the sql capability: `role`, and optionally `url` (default:
        /// the host's URL with the user replaced by the role).
        sql: Option<SqlGrant>,
        /// Grants outbound HTTP: `allow` lists `"host"` (any port) or
        /// `"host:port"` entries, without a scheme or path.
        http: Option<HttpGrant>,
        /// Grants the publish capability: the sinks (`[sinks.NAME]`
        /// sections) the plugin may publish to.
        publish: Option<Vec<String>>,
    }
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

impl std::str::FromStr for StartFrom {
    type Err = String;

    fn from_str(text: &str) -> Result<StartFrom, String> {
        match text {
            "now" => Ok(StartFrom::Now),
            "beginning" => Ok(StartFrom::Beginning),
            _ => Err(format!("`{text}`: write `now` or `beginning`")),
        }
    }
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

impl std::str::FromStr for OnFailure {
    type Err = String;

    fn from_str(text: &str) -> Result<OnFailure, String> {
        match text {
            "dead-letter" => Ok(OnFailure::DeadLetter),
            "halt" => Ok(OnFailure::Halt),
            _ => Err(format!("`{text}`: write `dead-letter` or `halt`")),
        }
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

/// The defaults of `handle_timeout` and `memory_limit`.
impl Default for Limits {
    fn default() -> Limits {
        Limits::from(&Settings::default())
    }
}

/// `max_instances` instances of at most the default `memory_limit` each.
impl Default for Pool {
    fn default() -> Pool {
        let settings = Settings::default();
        Pool {
            max_instances: settings.max_instances,
            max_memory_bytes: settings.memory_limit_bytes,
        }
    }
}

impl From<&EffectivePolicy> for Grants {
    fn from(policy: &EffectivePolicy) -> Grants {
        Grants {
            limits: Limits::from(&policy.settings),
            config: policy.config.clone(),
            sql: policy.sql.is_some(),
            http: policy.http.clone(),
            publish: policy.publish.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_setting_has_its_flag_and_variable_named_after_its_key() {
        for s in SETTINGS {
            assert_eq!(s.flag, s.key.replace('_', "-"), "{}", s.key);
            assert_eq!(
                s.env,
                format!("PGEVENTS_{}", s.key.to_uppercase()),
                "{}",
                s.key
            );
            assert!(
                s.check(s.default).is_ok(),
                "{}: default {}",
                s.key,
                s.default
            );
            assert!(!s.doc.trim().is_empty(), "{}", s.key);
        }
        let keys: std::collections::BTreeSet<&str> = SETTINGS.iter().map(|s| s.key).collect();
        assert_eq!(keys.len(), SETTINGS.len(), "a key is declared twice");
    }

    #[test]
    fn flags_win_over_the_file_and_the_file_over_the_defaults() {
        use clap::{Args, FromArgMatches};
        let command = SettingFlags::augment_args(clap::Command::new("run"));
        let matches = command
            .try_get_matches_from(["run", "--max-attempts", "5", "--on-failure", "halt"])
            .unwrap();
        let flags = SettingFlags::from_arg_matches(&matches).unwrap();
        let mut settings = Settings::default();
        ConfigFile::parse("max_attempts = 3\nlease_ttl = \"20s\"\n")
            .unwrap()
            .apply(&mut settings);
        flags.apply(&mut settings);
        assert_eq!(settings.max_attempts, 5);
        assert_eq!(settings.on_failure, OnFailure::Halt);
        assert_eq!(settings.lease_ttl, std::time::Duration::from_secs(20));
        assert_eq!(settings.retry_base, std::time::Duration::from_millis(500));
    }

    #[test]
    fn the_reference_example_is_a_valid_config_file() {
        let file = ConfigFile::parse(reference::EXAMPLE_CONFIG).unwrap();
        let mut settings = Settings::default();
        file.apply(&mut settings);
        assert_eq!(settings.policy("ledger").partitions, 4);
        assert!(settings.check().is_ok());
    }

    #[test]
    fn sinks_are_sections_and_a_grant_must_name_one() {
        let file = ConfigFile::parse(
            "[sinks.bus]\nkind = \"nats\"\nurl = \"nats://127.0.0.1:4222\"\nburst = 10\n\
             [plugins.p]\npublish = [\"bus\"]\n",
        )
        .unwrap();
        let mut settings = Settings::default();
        file.apply(&mut settings);
        assert_eq!(settings.sinks["bus"].burst, Some(10));
        assert_eq!(settings.policy("p").publish, Some(vec!["bus".to_owned()]));
        assert!(settings.check().is_ok());
        let mut missing = Settings::default();
        ConfigFile::parse("[plugins.p]\npublish = [\"nope\"]\n")
            .unwrap()
            .apply(&mut missing);
        let err = missing.check().unwrap_err();
        assert!(err.contains("[sinks.nope]"), "{err}");
        let typo = ConfigFile::parse("[sinks.bus]\nkind = \"kafka\"\n").unwrap_err();
        assert!(
            typo.contains("[sinks.bus]") && typo.contains("kafka"),
            "{typo}"
        );
        let no_url = ConfigFile::parse("[sinks.bus]\nkind = \"redis\"\n").unwrap();
        let mut s = Settings::default();
        no_url.apply(&mut s);
        assert!(
            s.check().unwrap_err().contains("url"),
            "a sink needs its broker"
        );
    }

    #[test]
    fn the_reference_lists_every_sink_key() {
        // Every key the parser accepts is documented, and nothing else.
        for (key, _) in crate::sinks::SINK_KEYS {
            let value = match *key {
                "kind" => "\"nats\"",
                "burst" | "max_pending" => "1",
                "linger" | "poll_interval" => "\"5ms\"",
                _ => "\"x\"",
            };
            let toml = format!("[sinks.s]\nkind = \"nats\"\n{key} = {value}\n");
            let toml = if *key == "kind" {
                "[sinks.s]\nkind = \"nats\"\n".to_owned()
            } else {
                toml
            };
            assert!(ConfigFile::parse(&toml).is_ok(), "{key}: {toml}");
        }
        let unknown = ConfigFile::parse("[sinks.s]\nkind = \"nats\"\nbogus = 1\n").unwrap_err();
        for (key, _) in crate::sinks::SINK_KEYS {
            assert!(unknown.contains(key), "the parser knows `{key}`: {unknown}");
        }
    }
}
