//! What a plugin runs with: the host's settings with its section's
//! overrides, and the checks that settings can work together.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{LEASE_CHECK_MS, LEASE_MARGIN_MS, Settings};
use crate::runtime::{HttpGrant, SqlGrant};

/// A plugin's policy: its section with the host's defaults applied. The
/// settings (`policy.max_attempts`, ...) read through to [`Self::settings`].
#[derive(Debug, Clone)]
pub struct EffectivePolicy {
    /// The host's settings with the plugin's overrides.
    pub settings: Settings,
    pub tables: Option<Vec<String>>,
    pub partitions: u32,
    pub batch_size: Option<u32>,
    pub config: BTreeMap<String, String>,
    pub sql: Option<SqlGrant>,
    pub http: Option<HttpGrant>,
    pub publish: Option<Vec<String>>,
}

impl std::ops::Deref for EffectivePolicy {
    type Target = Settings;

    fn deref(&self) -> &Settings {
        &self.settings
    }
}

impl EffectivePolicy {
    /// Whether the operator lets the plugin subscribe to `schema.table`.
    pub fn allows_table(&self, schema: &str, table: &str) -> bool {
        self.tables
            .as_ref()
            .is_none_or(|tables| tables.iter().any(|t| *t == format!("{schema}.{table}")))
    }
}

impl Settings {
    /// Reject combinations that cannot work.
    pub fn check(&self) -> Result<(), String> {
        let margin = Duration::from_millis(LEASE_MARGIN_MS + LEASE_CHECK_MS);
        if self.lease_ttl <= self.handle_timeout + margin {
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
                && self.lease_ttl <= timeout + margin
            {
                return Err(format!(
                    "[plugins.{name}] handle_timeout = {timeout:?}: the lease TTL ({:?}) must exceed it by more than {} ms",
                    self.lease_ttl,
                    LEASE_MARGIN_MS + LEASE_CHECK_MS
                ));
            }
            for sink in p.publish.iter().flatten() {
                if !self.sinks.contains_key(sink) {
                    return Err(format!(
                        "[plugins.{name}] publish names the sink `{sink}`, which has no [sinks.{sink}] section"
                    ));
                }
            }
        }
        for (name, sink) in &self.sinks {
            sink.url().map_err(|e| format!("[sinks.{name}] {e}"))?;
        }
        Ok(())
    }

    /// The effective policy for `plugin`: its section, defaults filled in.
    pub fn policy(&self, plugin: &str) -> EffectivePolicy {
        let p = self.plugins.get(plugin).cloned().unwrap_or_default();
        EffectivePolicy {
            settings: p.over(self),
            tables: p.tables,
            partitions: p.partitions.unwrap_or(1),
            batch_size: p.batch_size,
            config: p.config,
            sql: p.sql,
            http: p.http,
            publish: p.publish,
        }
    }

    /// The largest memory limit of any plugin (the pool's slot size).
    pub fn largest_memory_limit(&self) -> usize {
        self.plugins
            .values()
            .filter_map(|p| p.memory_limit_bytes)
            .fold(self.memory_limit_bytes, usize::max)
    }
}
