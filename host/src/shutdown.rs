//! Lifecycle: the host's background tasks are tracked by name and joined at
//! shutdown; one that ends early (an error, a panic) is reported by name.

use std::collections::HashMap;
use std::time::Duration;

use tokio::sync::watch;

/// A background task that ends early has this long to stop with the rest
/// at shutdown; then it is abandoned, with a line in the log.
pub(crate) const TASK_STOP_MS: u64 = 5_000;

/// The host's background tasks, by name. They run until shutdown; one that
/// ends before (an error, a panic) is reported by name, and stops the host.
#[derive(Default)]
pub(crate) struct Tasks {
    set: tokio::task::JoinSet<()>,
    names: HashMap<tokio::task::Id, &'static str>,
}

impl Tasks {
    pub(crate) fn spawn(
        &mut self,
        name: &'static str,
        task: impl Future<Output = ()> + Send + 'static,
    ) {
        let handle = self.set.spawn(task);
        self.names.insert(handle.id(), name);
    }

    /// The next task to end, and how (never, if there are none).
    pub(crate) async fn next_end(&mut self) -> (&'static str, String) {
        match self.set.join_next_with_id().await {
            Some(Ok((id, ()))) => (self.name(id), "task ended unexpectedly".into()),
            Some(Err(e)) => (
                self.name(e.id()),
                format!("task panicked: {}", panic_text(e)),
            ),
            None => std::future::pending().await,
        }
    }

    fn name(&self, id: tokio::task::Id) -> &'static str {
        self.names.get(&id).copied().unwrap_or("task")
    }

    /// Wait for every task to stop (they all watch the shutdown), at most
    /// `within`; report panics, abandon what is left.
    pub(crate) async fn join(mut self, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.set.join_next_with_id()).await {
                Ok(None) => return,
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(e))) => {
                    let name = self.name(e.id());
                    tracing::error!(
                        task = name,
                        "task panicked while stopping: {}",
                        panic_text(e)
                    );
                }
                Err(_) => {
                    tracing::warn!(
                        tasks = self.set.len(),
                        "background tasks did not stop within {within:?}; leaving them"
                    );
                    self.set.abort_all();
                    return;
                }
            }
        }
    }
}

/// Resolves when `shutdown` turns true (or its sender is gone).
pub(crate) async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

/// What a task that panicked said.
pub(crate) fn panic_text(e: tokio::task::JoinError) -> String {
    match e.try_into_panic() {
        Ok(payload) => payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(no message)".into()),
        Err(e) => e.to_string(),
    }
}
