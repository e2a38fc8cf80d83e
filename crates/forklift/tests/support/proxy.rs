//! A TCP proxy between a store and PostgreSQL, for fault tests: it can blackhole the link
//! (stop forwarding without closing, as a partition does) or go down (close every
//! connection and refuse new ones, as a stopped server does).

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub struct Proxy {
    pub addr: SocketAddr,
    blackholed: watch::Sender<bool>,
    down: CancellationToken,
}

impl Proxy {
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (blackholed, _) = watch::channel(false);
        let down = CancellationToken::new();
        let (b, d) = (blackholed.clone(), down.clone());
        tokio::spawn(async move {
            loop {
                // Dropping the listener when down makes new connections refused.
                let Some(Ok((client, _))) = d.run_until_cancelled(listener.accept()).await else {
                    return;
                };
                let Ok(server) = TcpStream::connect(upstream).await else {
                    continue;
                };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                let (b, d) = (b.clone(), d.clone());
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
        }
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
