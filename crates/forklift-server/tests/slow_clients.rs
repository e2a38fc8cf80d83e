//! Slow, idle and greedy clients, through the binary's serving loop on a loopback port:
//! floods of idle and half-sent connections, connections over the cap, bodies that arrive
//! too slowly or are declared too large.

mod support;

use std::time::Duration;

use forklift_server::ApiConfig;
use forklift_server::server::{ServerConfig, nofile};
use reqwest::{Method, StatusCode};
use serde_json::json;
use support::{Backend, TestApi, error_code, on_both_stores, raw_body, raw_exchange};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

on_both_stores!(
    an_idle_and_half_sent_flood_leaves_health_and_keyed_calls_answering,
    a_body_slower_than_the_body_timeout_gets_408,
    a_declared_body_over_the_limit_gets_413_before_it_is_sent,
);

fn no_rate_limit() -> ApiConfig {
    ApiConfig {
        rate_limit_per_second: 0,
        ..ApiConfig::default()
    }
}

/// Reads until the peer closes; true if it did within `wait`.
async fn closes_within(stream: &mut TcpStream, wait: Duration) -> bool {
    tokio::time::timeout(wait, async {
        let mut buf = [0u8; 1024];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

/// Connections per flood: 1,000, or fewer where the open-files limit cannot be raised to
/// hold them (each costs this process two descriptors: its end and the server's; the
/// floods of both stores' tests may run at once).
fn flood_size() -> usize {
    (nofile::fit_connections(6 * 1_000) / 6).max(50)
}

async fn an_idle_and_half_sent_flood_leaves_health_and_keyed_calls_answering(b: Backend) {
    let header_timeout = Duration::from_secs(3);
    let api = TestApi::with_limits(
        b,
        no_rate_limit(),
        ServerConfig {
            header_timeout,
            ..ServerConfig::default()
        },
    )
    .await;
    let started = std::time::Instant::now();
    let mut flood = Vec::new();
    for i in 0..flood_size() {
        let mut s = TcpStream::connect(api.addr()).await.unwrap();
        if i % 2 == 1 {
            s.write_all(b"POST /jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Le")
                .await
                .unwrap();
        }
        flood.push(s);
    }
    let prompt = Duration::from_secs(1);
    let health = tokio::time::timeout(prompt, api.call(Method::GET, "/health", None, None)).await;
    assert_eq!(health.expect("/health answers promptly").0, StatusCode::OK);
    let jobs = tokio::time::timeout(prompt, api.get("/jobs")).await;
    assert_eq!(
        jobs.expect("a keyed call answers promptly").0,
        StatusCode::OK
    );
    // Every flooding connection is closed once the header timeout has passed.
    let deadline = started + header_timeout + Duration::from_secs(3);
    for s in &mut flood {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        assert!(
            closes_within(s, left).await,
            "a flooding connection is closed after the header timeout"
        );
    }
}

#[tokio::test]
async fn idle_half_sent_and_kept_alive_connections_are_closed_after_the_header_timeout() {
    let api = TestApi::with_limits(
        Backend::Sqlite,
        no_rate_limit(),
        ServerConfig {
            header_timeout: Duration::from_secs(1),
            ..ServerConfig::default()
        },
    )
    .await;
    let idle = TcpStream::connect(api.addr()).await.unwrap();
    let mut half = TcpStream::connect(api.addr()).await.unwrap();
    half.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .await
        .unwrap();
    let mut kept = TcpStream::connect(api.addr()).await.unwrap();
    kept.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let mut answer = [0u8; 512];
    let n = kept.read(&mut answer).await.unwrap();
    assert!(
        answer[..n].starts_with(b"HTTP/1.1 200"),
        "a first request is served"
    );
    let mut connections = [("idle", idle), ("half-sent", half), ("kept-alive", kept)];
    for (name, s) in &mut connections {
        assert!(
            !closes_within(s, Duration::from_millis(100)).await,
            "the {name} connection is not closed before the timeout"
        );
    }
    for (name, s) in &mut connections {
        assert!(
            closes_within(s, Duration::from_secs(3)).await,
            "the {name} connection is closed after the timeout"
        );
    }
}

#[tokio::test]
async fn connections_over_the_cap_get_503_and_the_cap_frees_as_connections_close() {
    let api = TestApi::with_limits(
        Backend::Sqlite,
        no_rate_limit(),
        ServerConfig {
            max_connections: 20,
            ..ServerConfig::default()
        },
    )
    .await;
    let mut held = Vec::new();
    for _ in 0..20 {
        held.push(TcpStream::connect(api.addr()).await.unwrap());
    }
    // The server accepts in order, so the 21st is turned away whatever the timing.
    for _ in 0..3 {
        let (answer, closed) = raw_exchange(api.addr(), b"", Duration::from_secs(3)).await;
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        assert!(answer.contains("retry-after: 1"), "{answer}");
        assert_eq!(error_code(&raw_body(&answer)), "too_many_connections");
        assert!(closed, "and closed at once");
    }
    held.truncate(15);
    let freed = async {
        loop {
            if let Ok(resp) = api.raw().get(format!("{}/health", api.base)).send().await
                && resp.status() == StatusCode::OK
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(3), freed)
        .await
        .expect("closed connections free their places");
}

async fn a_body_slower_than_the_body_timeout_gets_408(b: Backend) {
    let api = TestApi::with_config(
        b,
        ApiConfig {
            body_timeout: Duration::from_secs(1),
            ..no_rate_limit()
        },
    )
    .await;
    let request = format!(
        "POST /jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 50\r\n\r\n{{\"type\": ",
        api.key_a
    );
    let started = std::time::Instant::now();
    let (answer, closed) =
        raw_exchange(api.addr(), request.as_bytes(), Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert_eq!(error_code(&raw_body(&answer)), "body_timeout");
    assert!(closed, "the connection is closed");
    assert!(started.elapsed() >= Duration::from_millis(900));
    let (_, list) = api.get("/jobs").await;
    assert_eq!(list["jobs"], json!([]), "nothing was written");
}

async fn a_declared_body_over_the_limit_gets_413_before_it_is_sent(b: Backend) {
    let api = TestApi::start(b).await;
    for expect in ["Expect: 100-continue\r\n", ""] {
        let request = format!(
            "POST /jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/json\r\nContent-Length: 2000000\r\n{expect}\r\n",
            api.key_a
        );
        // No body is ever sent: the answer must come from the declared length alone.
        let (answer, _) =
            raw_exchange(api.addr(), request.as_bytes(), Duration::from_secs(2)).await;
        assert!(
            answer.starts_with("HTTP/1.1 413"),
            "{expect:?}: 413 at once, not `100 Continue` or a wait for the body: {answer:?}"
        );
        assert_eq!(error_code(&raw_body(&answer)), "payload_too_large");
    }
}

#[tokio::test]
async fn a_client_that_reads_no_answer_loses_its_connection_after_the_timeout() {
    let write_timeout = Duration::from_secs(2);
    let api = TestApi::with_limits(
        Backend::Sqlite,
        no_rate_limit(),
        ServerConfig {
            max_connections: 1,
            write_timeout,
            ..ServerConfig::default()
        },
    )
    .await;
    // Pipelined requests whose answers (the OpenAPI document, tens of KiB each) are never
    // read: the socket buffers fill and the server's writes wait.
    let mut greedy = TcpStream::connect(api.addr()).await.unwrap();
    let request = b"GET /openapi.json HTTP/1.1\r\nhost: localhost\r\n\r\n";
    for _ in 0..400 {
        if tokio::time::timeout(Duration::from_millis(50), greedy.write_all(request))
            .await
            .is_err()
        {
            break; // the server stopped reading: its writes are stuck
        }
    }
    let freed = async {
        loop {
            if let Ok(resp) = api.raw().get(format!("{}/health", api.base)).send().await
                && resp.status() == StatusCode::OK
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(write_timeout * 4, freed)
        .await
        .expect("the stalled connection is closed and its place freed");
    drop(greedy);
}
