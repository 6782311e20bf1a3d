//! The operator's config file (TOML): every key optional, an unknown key an
//! error that names it. Flags and environment variables override it.
//!
//! ```toml
//! max_attempts = 10            # then dead-letter (or halt)
//! on_failure = "dead-letter"   # or "halt"
//! lease_ttl = "15s"
//! retention_min_age = "1h"
//!
//! [plugins.ledger]
//! partitions = 4
//! sql = { role = "ledger_writer" }
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::sinks::SinkConfig;

use super::{
    MAX_BATCH_SIZE, MAX_PARTITIONS, PluginOnly, PluginPolicy, SETTINGS, Setting, Settings,
};

/// A parsed config file: the values it gives, checked, to apply over defaults.
#[derive(Debug, Clone, Default)]
pub struct ConfigFile {
    /// PostgreSQL URL (the `--database-url` flag and `DATABASE_URL` win).
    pub database_url: Option<String>,
    /// The plugins folder (the `--plugins` flag wins).
    pub plugins_dir: Option<PathBuf>,
    /// The settings it gives, in the order written.
    values: Vec<(&'static Setting, toml::Value)>,
    pub plugins: BTreeMap<String, PluginPolicy>,
    pub sinks: BTreeMap<String, SinkConfig>,
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
        let table: toml::Table = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut file = ConfigFile::default();
        for (key, value) in table {
            match key.as_str() {
                "database_url" => {
                    file.database_url = Some(string(&key, &value)?.to_owned());
                }
                "plugins_dir" => file.plugins_dir = Some(string(&key, &value)?.into()),
                "plugins" => {
                    let toml::Value::Table(plugins) = value else {
                        return Err(
                            "`plugins` must hold one [plugins.NAME] section per plugin".into()
                        );
                    };
                    for (name, section) in plugins {
                        let policy = plugin_section(&name, section)
                            .map_err(|e| format!("[plugins.{name}] {e}"))?;
                        file.plugins.insert(name, policy);
                    }
                }
                "sinks" => {
                    let toml::Value::Table(sinks) = value else {
                        return Err("`sinks` must hold one [sinks.NAME] section per sink".into());
                    };
                    for (name, section) in sinks {
                        let sink: SinkConfig =
                            section.try_into().map_err(|e: toml::de::Error| {
                                format!("[sinks.{name}] {}", e.message())
                            })?;
                        file.sinks.insert(name, sink);
                    }
                }
                _ => {
                    let setting = SETTINGS.iter().find(|s| s.key == key).ok_or_else(|| {
                        format!("unknown field `{key}`; the settings are {}, and [plugins.NAME] sections", keys())
                    })?;
                    (setting.set_toml)(&mut Settings::default(), &value)
                        .map_err(|e| format!("{key}: {e}"))?;
                    file.values.push((setting, value));
                }
            }
        }
        Ok(file)
    }

    /// Apply the values given over `settings`.
    pub fn apply(self, settings: &mut Settings) {
        for (setting, value) in &self.values {
            (setting.set_toml)(settings, value).expect("checked when parsed");
        }
        settings.plugins.extend(self.plugins);
        settings.sinks.extend(self.sinks);
    }
}

/// One `[plugins.NAME]` section: overrides of per-plugin settings, and the
/// plugin's own keys.
fn plugin_section(name: &str, section: toml::Value) -> Result<PluginPolicy, String> {
    let toml::Value::Table(mut section) = section else {
        return Err(format!("must be a section (write [plugins.{name}])"));
    };
    let mut overrides = Vec::new();
    for setting in SETTINGS {
        if let (Some(set), Some(value)) = (setting.set_plugin, section.remove(setting.key)) {
            overrides.push((set, setting.key, value));
        }
    }
    let only: PluginOnly =
        toml::Value::Table(section)
            .try_into()
            .map_err(|e: toml::de::Error| {
                let message = e.message().to_owned();
                if message.starts_with("unknown field") {
                    format!("{message}, or a per-plugin setting ({})", per_plugin_keys())
                } else {
                    message
                }
            })?;
    let mut policy = PluginPolicy::from_only(only);
    for (set, key, value) in overrides {
        set(&mut policy, &value).map_err(|e| format!("{key}: {e}"))?;
    }
    if let Some(n) = policy.partitions
        && !(1..=MAX_PARTITIONS).contains(&n)
    {
        return Err(format!(
            "partitions = {n}: must be between 1 and {MAX_PARTITIONS}"
        ));
    }
    if let Some(size) = policy.batch_size
        && !(1..=MAX_BATCH_SIZE).contains(&size)
    {
        return Err(format!(
            "batch_size = {size}: must be between 1 and {MAX_BATCH_SIZE}"
        ));
    }
    for t in policy.tables.iter().flatten() {
        if t.split_once('.')
            .is_none_or(|(s, t)| s.is_empty() || t.is_empty())
        {
            return Err(format!("tables: `{t}` is not of the form \"schema.table\""));
        }
    }
    if let Some(http) = &policy.http {
        http.check().map_err(|e| format!("http.allow: {e}"))?;
    }
    Ok(policy)
}

fn string<'a>(key: &str, value: &'a toml::Value) -> Result<&'a str, String> {
    value
        .as_str()
        .ok_or_else(|| format!("{key}: expected a string, found a {}", value.type_str()))
}

fn keys() -> String {
    let mut keys: Vec<&str> = vec!["database_url", "plugins_dir"];
    keys.extend(SETTINGS.iter().map(|s| s.key));
    keys.join(", ")
}

fn per_plugin_keys() -> String {
    SETTINGS
        .iter()
        .filter(|s| s.set_plugin.is_some())
        .map(|s| s.key)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::{StartFrom, parse_byte_size};

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
