//! The binary's HTTP server: serves a [`Router`] on a TCP listener with the limits that
//! `axum::serve` lacks, so that clients which connect and then send nothing, or half a
//! request, cannot exhaust the process's file descriptors and memory:
//!
//! - a cap on open connections ([`ServerConfig::max_connections`]): one over the cap is
//!   accepted, answered `503` at once and closed, rather than left waiting in the kernel's
//!   backlog, so the caller learns at once that it should retry and no descriptor is held;
//! - a deadline for each request head ([`ServerConfig::header_timeout`]), which also closes
//!   keep-alive connections left idle that long (hyper runs one timer for both: it starts
//!   whenever the connection waits for the next request);
//! - a deadline for a response the client stops reading ([`stall`],
//!   [`ServerConfig::write_timeout`]): a client that pipelines requests and reads no
//!   answer cannot hold its place for ever;
//! - graceful shutdown: when `shutdown` fires, listening stops, idle connections close and
//!   requests in flight finish;
//! - after a flood has closed, its memory is given back to the OS ([`trim`]).
//!
//! The request body's deadline is the router's ([`crate::ApiConfig::body_timeout`]): only
//! the handler knows when it reads a body. The router stays mountable in another app; this
//! loop is only how the `forklift` binary (and the tests) serve it.

pub mod nofile;
mod stall;
mod trim;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// Limits of the HTTP server. `Default` gives the documented defaults.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Connections open at once; one more is answered 503 and closed. Default 10,000
    /// (the binary lowers it to fit the open-files limit, see [`nofile`]).
    pub max_connections: usize,
    /// How long a connection may take to send a complete request head, counted from when
    /// it opens or from the end of its previous response: this is also the keep-alive
    /// idle timeout. Default 30 s.
    pub header_timeout: Duration,
    /// How long a response may wait for the client to read any of it before the
    /// connection is closed. Longer than the header timeout: an honest reader on a slow
    /// link frees send buffer in large steps, far apart. Default 120 s.
    pub write_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_connections: 10_000,
            header_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(120),
        }
    }
}

/// What a connection over the cap gets before it is closed: the API's error shape, sent
/// without reading the request (a client that has not sent it yet reads this; one that has
/// may see the connection reset instead).
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: application/json\r\n\
retry-after: 1\r\n\
connection: close\r\n\
content-length: 91\r\n\
\r\n\
{\"error\":{\"code\":\"too_many_connections\",\"message\":\"the server is at its connection limit\"}}";

/// Serves `app` on `listener` until `shutdown` fires, then stops accepting, lets requests
/// in flight finish and returns once every connection has closed (the caller bounds that
/// wait; idle connections close at once).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    config: ServerConfig,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(config.max_connections));
    tokio::spawn(trim::after_floods(
        slots.clone(),
        config.max_connections,
        shutdown.clone(),
    ));
    let graceful = GracefulShutdown::new();
    let mut http = http1::Builder::new();
    // A request head is read into a buffer of at most 16 KiB (hyper's default is ~400 KiB):
    // what a slow, half-sent connection can hold while its header timeout runs.
    http.timer(TokioTimer::new())
        .header_read_timeout(config.header_timeout)
        .max_buf_size(16 * 1024);
    let mut refusals = Refusals::default();
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            refusals.refuse(stream, config.max_connections);
            continue;
        };
        // Responses are written whole; waiting for an ACK before the next small write
        // (Nagle) only adds latency.
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        // A response the peer stops reading fails after the write timeout.
        let stream = stall::StallGuard::new(stream, config.write_timeout);
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        metrics::gauge!("forklift_http_connections").increment(1.0);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                // Timeouts, resets and malformed requests: the client's doing, not ours.
                tracing::debug!(error = %e, "connection ended with an error");
            }
            metrics::gauge!("forklift_http_connections").decrement(1.0);
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// Accept fails when the process is out of file descriptors (or the peer left before it
/// was accepted). Retrying at once would spin: wait a little, as `axum::serve` does.
async fn accept_failed(e: std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %e, "could not accept a connection");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// Turns away connections over the cap, and says so in the log at most every 10 s (a
/// flood would otherwise write a line per connection); the metric
/// `forklift_http_connections_refused_total` counts every one.
#[derive(Default)]
struct Refusals {
    since_warned: u64,
    warned_at: Option<Instant>,
}

impl Refusals {
    fn refuse(&mut self, stream: TcpStream, cap: usize) {
        // A new socket's send buffer is empty, so this small write does not block; if it
        // fails, the client sees the connection close, which says the same.
        let _ = stream.try_write(BUSY);
        drop(stream);
        metrics::counter!("forklift_http_connections_refused_total").increment(1);
        self.since_warned += 1;
        if self
            .warned_at
            .is_none_or(|at| at.elapsed() >= Duration::from_secs(10))
        {
            tracing::warn!(
                refused_since_last_warning = self.since_warned,
                max_connections = cap,
                "connections refused: the server is at its connection limit (--max-connections)"
            );
            self.since_warned = 0;
            self.warned_at = Some(Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_busy_answer_declares_its_exact_length() {
        let (head, body) = std::str::from_utf8(BUSY)
            .unwrap()
            .split_once("\r\n\r\n")
            .unwrap();
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let body: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(body["error"]["code"], "too_many_connections");
    }
}
