//! A TCP proxy the test controls, to cut a broker (or the database) off from
//! the host and bring it back, without touching the machine's services.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

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
                    let up = tokio::io::copy(&mut ri, &mut wo);
                    let down = tokio::io::copy(&mut ro, &mut wi);
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

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut.send_replace(true);
        self.task.abort();
    }
}
