//! A TCP proxy the test controls, to cut a broker (or the database) off from
//! the host and bring it back, without touching the machine's services.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Forwards `127.0.0.1:<port>` to a target address until dropped.
#[derive(Debug)]
pub struct Proxy {
    addr: SocketAddr,
    /// True while cut: connections are closed and new ones refused.
    cut: watch::Sender<bool>,
    accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// A proxy to `target` (`host:port`) on a free local port.
    pub async fn start(target: &str) -> Proxy {
        Proxy::with_latency(target, Duration::ZERO).await
    }

    /// A proxy that holds every chunk of bytes, both ways, for `latency`
    /// (a slow network or broker).
    pub async fn with_latency(target: &str, latency: Duration) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a port for the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let (cut, cut_rx) = watch::channel(false);
        let accepted = Arc::new(AtomicUsize::new(0));
        let target = target.to_owned();
        let counter = accepted.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    return;
                };
                if *cut_rx.borrow() {
                    drop(inbound); // refused while cut
                    continue;
                }
                counter.fetch_add(1, Ordering::Relaxed);
                let target = target.clone();
                let mut cut_rx = cut_rx.clone();
                tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(&target).await else {
                        return;
                    };
                    let (mut ri, mut wi) = inbound.into_split();
                    let (mut ro, mut wo) = outbound.into_split();
                    let up = relay(&mut ri, &mut wo, latency);
                    let down = relay(&mut ro, &mut wi, latency);
                    tokio::select! {
                        _ = up => {}
                        _ = down => {}
                        _ = cut_rx.wait_for(|c| *c) => {}
                    }
                    // Dropping both halves closes both connections.
                });
            }
        });
        Proxy {
            addr,
            cut,
            accepted,
            task,
        }
    }

    /// `host:port` to give the host instead of the target's.
    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    /// Close every connection through the proxy and refuse new ones.
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    /// Accept connections again.
    pub fn restore(&self) {
        self.cut.send_replace(false);
    }

    /// Connections accepted so far (a reconnect shows as one more).
    pub fn connections(&self) -> usize {
        self.accepted.load(Ordering::Relaxed)
    }
}

/// Copy `from` to `to`, each chunk after `latency`.
async fn relay(
    from: &mut (impl AsyncReadExt + Unpin),
    to: &mut (impl AsyncWriteExt + Unpin),
    latency: Duration,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut.send_replace(true);
        self.task.abort();
    }
}
