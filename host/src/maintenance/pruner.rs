//! The pruner.

use tokio::sync::watch;
use tokio_postgres::Client;

use crate::config::Settings;
use crate::db;
use crate::eventlog::{self, RETENTION_BATCH_ROWS};
use crate::shutdown::stopped;

/// Delete old log rows every `retention_interval` (see `eventlog::prune`).
pub(crate) async fn keep_log_pruned(
    url: String,
    settings: Settings,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut client: Option<Client> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(settings.retention_interval) => {}
            _ = stopped(&mut shutdown) => return,
        }
        let result = async {
            if client.as_ref().is_none_or(Client::is_closed) {
                client = Some(db::connect_once(&url).await?);
            }
            let c = client.as_mut().expect("connected");
            let mut total = 0;
            loop {
                let deleted = eventlog::prune(c, settings.retention_min_age).await?;
                total += deleted;
                if deleted < RETENTION_BATCH_ROWS as u64 || *shutdown.borrow() {
                    break;
                }
            }
            Ok::<u64, tokio_postgres::Error>(total)
        }
        .await;
        match result {
            Ok(0) => {}
            Ok(n) => tracing::debug!(rows = n, "pruned the log"),
            Err(e) => {
                tracing::warn!("could not prune the log: {}", db::error_text(&e));
                client = None;
            }
        }
    }
}
