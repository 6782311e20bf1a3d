//! A LISTEN connection that keeps itself open.

use std::sync::Arc;

use futures_util::StreamExt;
use tokio::sync::watch;
use tokio_postgres::{AsyncMessage, NoTls};

use crate::shutdown::stopped;

/// Keep a LISTEN connection open on `channel` and bump `wake` on every notification, and
/// after every reconnect (notifications may have been missed meanwhile).
pub(crate) async fn listen(
    url: String,
    channel: &'static str,
    wake: Arc<watch::Sender<u64>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut failures = 0;
    loop {
        let session = async {
            let (client, mut connection) = tokio_postgres::connect(&url, NoTls).await?;
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            let driver = tokio::spawn(async move {
                let mut messages =
                    futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
                while let Some(message) = messages.next().await {
                    match message {
                        Ok(AsyncMessage::Notification(_)) => {
                            let _ = tx.send(());
                        }
                        Ok(_) => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok(())
            });
            client.batch_execute(&format!("LISTEN {channel}")).await?;
            wake.send_modify(|n| *n += 1);
            failures = 0;
            while rx.recv().await.is_some() {
                wake.send_modify(|n| *n += 1);
            }
            drop(client);
            driver.await.expect("listener task panicked")
        };
        tokio::select! {
            result = session => {
                failures += 1;
                let delay = super::reconnect_delay(failures);
                match result {
                    Err(e) => tracing::warn!("LISTEN connection lost: {}; reconnecting in {delay:?}", super::error_text(&e)),
                    Ok(()) => tracing::warn!("LISTEN connection closed; reconnecting in {delay:?}"),
                }
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stopped(&mut shutdown) => return,
                }
            }
            _ = stopped(&mut shutdown) => return,
        }
    }
}
