//! The trigger reconciler.

use std::time::Duration;

use tokio::sync::watch;

use crate::shutdown::stopped;
use crate::{db, schema};

/// Re-check the capture triggers every `interval` while running: DDL on a
/// subscribed table (dropped and re-created, primary key changed) otherwise
/// leaves it uncaptured or with stale keys until the next start.
pub(crate) async fn keep_triggers_reconciled(
    url: String,
    notify: bool,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    // Renamed subscribed tables, said once each.
    let mut told: std::collections::HashSet<(String, String, String)> = Default::default();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stopped(&mut shutdown) => return,
        }
        let result = async {
            let mut client = db::connect_once(&url)
                .await
                .map_err(|e| db::error_text(&e))?;
            schema::reconcile_triggers(&mut client, Some(notify))
                .await
                .map_err(|e| e.to_string())
        }
        .await;
        if let Ok(report) = &result {
            for renamed in &report.renamed {
                if told.insert(renamed.clone()) {
                    let (plugin, subscribed, now) = renamed;
                    tracing::warn!(
                        plugin, subscribed = %subscribed, now = %now,
                        "a subscribed table was renamed: it is still captured and delivered (its events carry the subscribed name) until a table of the subscribed name exists; update the plugin's manifest"
                    );
                }
            }
        }
        match result {
            Ok(report) if !report.created.is_empty() || !report.dropped.is_empty() => {
                tracing::warn!(
                    created = report.created.len(),
                    dropped = report.dropped.len(),
                    "capture triggers were out of date (a subscribed table changed) and have been repaired"
                );
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("could not re-check the capture triggers: {e}"),
        }
    }
}
