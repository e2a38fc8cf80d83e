//! A TCP proxy between a store and PostgreSQL, for fault tests: it can blackhole the link
//! (stop forwarding without closing, as a partition does) or go down (close every
//! connection and refuse new ones, as a stopped server does).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub struct Proxy {
    pub addr: SocketAddr,
    blackholed: watch::Sender<bool>,
    down: CancellationToken,
    /// Set by [`Proxy::reset_all`]: new connections are accepted and closed at once.
    resetting: Arc<AtomicBool>,
    /// Closes the connections open now.
    open: Arc<Mutex<CancellationToken>>,
}

impl Proxy {
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (blackholed, _) = watch::channel(false);
        let down = CancellationToken::new();
        let (b, d) = (blackholed.clone(), down.clone());
        let resetting = Arc::new(AtomicBool::new(false));
        let open = Arc::new(Mutex::new(down.child_token()));
        let (r, o) = (resetting.clone(), open.clone());
        tokio::spawn(async move {
            loop {
                // Dropping the listener when down makes new connections refused.
                let Some(Ok((client, _))) = d.run_until_cancelled(listener.accept()).await else {
                    return;
                };
                if r.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect(upstream).await else {
                    continue;
                };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                let (b, d) = (b.clone(), o.lock().unwrap().clone());
                tokio::spawn(async move {
                    let both = async {
                        tokio::join!(pump(cr, sw, b.subscribe()), pump(sr, cw, b.subscribe()))
                    };
                    d.run_until_cancelled(both).await;
                });
            }
        });
        Proxy {
            addr,
            blackholed,
            down,
            resetting,
            open,
        }
    }

    /// Closes every connection, and from now on accepts new ones only to close them: each
    /// call then fails at once (no refused connection for the pool to retry).
    pub fn reset_all(&self) {
        self.resetting.store(true, Ordering::SeqCst);
        self.open.lock().unwrap().cancel();
    }

    /// Stops (true) or resumes (false) forwarding, without closing anything.
    pub fn blackhole(&self, on: bool) {
        self.blackholed.send_replace(on);
    }

    /// Closes every connection and refuses new ones, for good.
    pub fn go_down(&self) {
        self.down.cancel();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.down.cancel();
    }
}

async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    mut blackholed: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if blackholed.wait_for(|on| !on).await.is_err() || to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
