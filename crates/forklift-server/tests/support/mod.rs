//! A real Jobs API on a loopback port, over a fresh PostgreSQL schema, with two tenants.
#![allow(dead_code, unused_macros, unused_imports)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use forklift::{Client, PgStore, SqliteStore, Store};
use forklift_server::auth::issue_key;
use forklift_server::server::ServerConfig;
use forklift_server::{ApiConfig, AppState, router};
use forklift_testkit::TestSchema;
use reqwest::{Method, StatusCode};
use serde_json::Value;

/// Which store the API runs on.
#[derive(Clone, Copy, Debug)]
pub enum Backend {
    Pg,
    Sqlite,
}

/// Runs each named test (an `async fn(Backend)`) on both stores, as `pg::name` and `sqlite::name`.
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        mod pg {
            $(#[tokio::test] async fn $name() { super::$name($crate::support::Backend::Pg).await })*
        }
        mod sqlite {
            $(#[tokio::test] async fn $name() { super::$name($crate::support::Backend::Sqlite).await })*
        }
    };
}
pub(crate) use on_both_stores;

/// Keeps the database alive as long as the test runs.
pub enum Db {
    Pg(TestSchema),
    Sqlite(tempfile::TempDir),
}

pub struct TestApi {
    pub db: Db,
    pub store: Arc<dyn Store>,
    pub base: String,
    /// Tenant A's key, and tenant B's.
    pub key_a: String,
    pub key_b: String,
    http: reqwest::Client,
}

/// A server on a free loopback port, serving `store` with `config`, through the binary's
/// own serving loop with its default limits.
pub async fn serve(store: Arc<dyn Store>, config: ApiConfig) -> String {
    serve_with_limits(store, config, ServerConfig::default()).await
}

/// [`serve`] with the serving loop's limits given.
pub async fn serve_with_limits(
    store: Arc<dyn Store>,
    config: ApiConfig,
    limits: ServerConfig,
) -> String {
    let state = AppState::new(Client::new(store), config, None);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(forklift_server::server::serve(
        listener,
        router(state),
        limits,
        stop,
    ));
    format!("http://{addr}")
}

impl TestApi {
    pub async fn start(backend: Backend) -> TestApi {
        Self::with_config(
            backend,
            ApiConfig {
                rate_limit_per_second: 0,
                ..ApiConfig::default()
            },
        )
        .await
    }

    pub async fn with_config(backend: Backend, config: ApiConfig) -> TestApi {
        Self::with_limits(backend, config, ServerConfig::default()).await
    }

    /// A server with the API's `config` and the serving loop's `limits`.
    pub async fn with_limits(backend: Backend, config: ApiConfig, limits: ServerConfig) -> TestApi {
        let (db, store): (Db, Arc<dyn Store>) = match backend {
            Backend::Pg => {
                let schema = forklift_testkit::fresh_schema().await;
                let store = Arc::new(PgStore::from_pool(schema.pool.clone()));
                (Db::Pg(schema), store)
            }
            Backend::Sqlite => {
                let dir = tempfile::tempdir().unwrap();
                let path = dir.path().join("api.db");
                let store = SqliteStore::connect(path.to_str().unwrap()).await.unwrap();
                (Db::Sqlite(dir), Arc::new(store))
            }
        };
        store.migrate().await.unwrap();
        let a = store.tenant_create("tenant-a").await.unwrap();
        let b = store.tenant_create("tenant-b").await.unwrap();
        let key_a = issue_key(&*store, a.tenant_id).await.unwrap().key;
        let key_b = issue_key(&*store, b.tenant_id).await.unwrap().key;
        let base = serve_with_limits(store.clone(), config, limits).await;
        TestApi {
            db,
            store,
            base,
            key_a,
            key_b,
            http: reqwest::Client::new(),
        }
    }

    /// Sends a request as the holder of `key` (None: no Authorization header).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        key: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, Some(&self.key_a), None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, Some(&self.key_a), Some(body))
            .await
    }

    pub fn raw(&self) -> &reqwest::Client {
        &self.http
    }

    /// The server's address, for raw sockets.
    pub fn addr(&self) -> SocketAddr {
        self.base.trim_start_matches("http://").parse().unwrap()
    }
}

/// Sends `request` as is on a new connection and returns what the server writes until it
/// closes the connection or `wait` passes, whichever is first, and whether it closed.
pub async fn raw_exchange(addr: SocketAddr, request: &[u8], wait: Duration) -> (String, bool) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut got = Vec::new();
    let closed = tokio::time::timeout(wait, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .is_ok();
    (String::from_utf8_lossy(&got).into_owned(), closed)
}

/// The JSON body of a raw HTTP/1.1 answer (after the blank line).
pub fn raw_body(answer: &str) -> Value {
    let body = answer.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    serde_json::from_str(body).unwrap_or_else(|_| panic!("a JSON body in {answer:?}"))
}

/// Asserts the SPEC §5 error shape and returns the code.
pub fn error_code(body: &Value) -> &str {
    assert!(
        body["error"]["message"].is_string(),
        "error body has a message: {body}"
    );
    body["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("error body has a code: {body}"))
}
