//! Shared set-up for the engine's integration tests: a fresh schema per test on a real
//! PostgreSQL, migrated, and helpers to wait for a job to reach a state.
#![allow(dead_code)]

pub mod proxy;

use std::sync::Arc;
use std::time::Duration;

use forklift::maintenance::MaintenanceConfig;
use forklift::{Backoff, Client, Job, JobId, JobStatus, PgStore, Store, WorkerConfig};
use forklift_testkit::TestSchema;

pub struct Db {
    pub schema: TestSchema,
    pub store: PgStore,
}

impl Db {
    pub async fn new() -> Db {
        let schema = forklift_testkit::fresh_schema().await;
        let store = PgStore::from_pool(schema.pool.clone());
        store.migrate().await.expect("migrations apply");
        Db { schema, store }
    }

    pub fn dyn_store(&self) -> Arc<dyn Store> {
        Arc::new(self.store.clone())
    }

    pub fn client(&self) -> Client {
        Client::new(self.dyn_store())
    }

    /// A second, independent store on the same schema: another process, as far as
    /// connections and LISTEN go.
    pub async fn other_process(&self) -> PgStore {
        PgStore::connect(self.schema.connect_options(), 5)
            .await
            .expect("second store connects")
    }

    /// A store of its own on this schema whose connections go through `proxy`.
    pub async fn store_through(&self, proxy: &proxy::Proxy, max_connections: u32) -> PgStore {
        let options = self
            .schema
            .connect_options()
            .host(&proxy.addr.ip().to_string())
            .port(proxy.addr.port());
        PgStore::connect(options, max_connections)
            .await
            .expect("store connects through the proxy")
    }

    /// Where the test database listens, for a proxy to forward to.
    pub fn upstream(&self) -> std::net::SocketAddr {
        let o = self.schema.connect_options();
        let host = if o.get_host() == "localhost" {
            "127.0.0.1"
        } else {
            o.get_host()
        };
        format!("{host}:{}", o.get_port())
            .parse()
            .expect("the test database is on an IP address")
    }

    pub async fn sql(&self, sql: &str) {
        sqlx::query(sql)
            .execute(&self.schema.pool)
            .await
            .expect(sql);
    }
}

/// A worker config for tests: quick to react, no maintenance unless asked.
pub fn fast_config() -> WorkerConfig {
    WorkerConfig {
        poll_interval: Duration::from_millis(100),
        heartbeat_interval: Duration::from_millis(200),
        progress_interval: Duration::from_millis(50),
        shutdown_grace: Duration::from_secs(5),
        maintenance: None,
        ..WorkerConfig::default()
    }
}

pub fn fast_maintenance() -> MaintenanceConfig {
    MaintenanceConfig {
        leader_ttl: Duration::from_secs(3),
        rescue_interval: Duration::from_millis(200),
        rescue_backoff: Backoff {
            base: Duration::from_millis(10),
            cap: Duration::from_millis(10),
            jitter: 0.0,
        },
        ..MaintenanceConfig::default()
    }
}

pub fn quick_backoff() -> Backoff {
    Backoff {
        base: Duration::from_millis(20),
        cap: Duration::from_millis(100),
        jitter: 0.0,
    }
}

/// Waits (up to 20 s) until the job satisfies `done`, and returns it.
pub async fn wait_for(client: &Client, id: JobId, what: &str, done: impl Fn(&Job) -> bool) -> Job {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let job = client.get(id).await.expect("job readable");
        if done(&job) {
            return job;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}; job is {job:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn wait_status(client: &Client, id: JobId, status: JobStatus) -> Job {
    wait_for(client, id, status.as_str(), |j| j.status == status).await
}
