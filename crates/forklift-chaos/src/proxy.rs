//! A TCP proxy between one worker and PostgreSQL that can blackhole the link: stop
//! forwarding in both directions *without closing*, as a dead switch or a partition does.
//! Nothing fails fast then: queries simply never answer, which is the case a worker must
//! notice by itself (a closed connection is the easy case).

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// A running proxy; stops when dropped.
pub struct Proxy {
    /// Where the worker connects.
    pub addr: SocketAddr,
    blackholed: Arc<watch::Sender<bool>>,
    stop: CancellationToken,
}

impl Proxy {
    /// Listens on a free loopback port and forwards each connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (tx, _) = watch::channel(false);
        let blackholed = Arc::new(tx);
        let stop = CancellationToken::new();
        let (b, s) = (blackholed.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = s.cancelled() => return,
                    a = listener.accept() => a,
                };
                let Ok((client, _)) = accepted else { continue };
                let (b, s) = (b.clone(), s.clone());
                tokio::spawn(async move {
                    // While blackholed, even new connections hang: wait before connecting.
                    let _ = b.subscribe().wait_for(|on| !on).await;
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::select! {
                        _ = s.cancelled() => {}
                        _ = async {
                            tokio::join!(pump(cr, sw, b.subscribe()), pump(sr, cw, b.subscribe()))
                        } => {}
                    }
                });
            }
        });
        Ok(Proxy {
            addr,
            blackholed,
            stop,
        })
    }

    /// Stops (true) or resumes (false) forwarding. Bytes already read are held, not lost.
    pub fn set_blackholed(&self, on: bool) {
        self.blackholed.send_replace(on);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Copies one direction, holding everything while the link is blackholed.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut blackholed: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if blackholed.wait_for(|on| !on).await.is_err() {
            return;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return;
            }
            Ok(n) => n,
        };
        // Read while the link was up, but it may have gone down meanwhile: hold the bytes.
        if blackholed.wait_for(|on| !on).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
