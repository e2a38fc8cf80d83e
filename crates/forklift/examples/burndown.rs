//! A measure of burn-down throughput: one worker process, N noop jobs committed in one
//! transaction, timed from the commit until none is unfinished.
//!
//! `DATABASE_URL=postgres://postgres@127.0.0.1:5432/test cargo run --release -p forklift --example burndown -- 50000 100`
//! `DATABASE_URL=sqlite:///tmp/burndown.db cargo run --release -p forklift --example burndown -- 50000 100`
//! (arguments: jobs, concurrency). On PostgreSQL it works in a schema of its own and drops
//! it after; on SQLite it starts from a fresh file at the path and removes it after.

use std::sync::Arc;
use std::time::{Duration, Instant};

use forklift::{
    Client, NewJob, PgStore, QueueConfig, Registry, SqliteStore, Store, Worker, WorkerConfig,
    builtin,
};
use sqlx::postgres::PgConnectOptions;
use sqlx::{PgPool, SqlitePool};

type BoxError = Box<dyn std::error::Error>;

/// Unfinished jobs, as two counts that each partial index (queued; running) answers alone,
/// so that watching costs the database under test little. The same SQL on both.
const UNFINISHED: &str = "select (select count(*) from forklift_jobs where status = 'QUEUED')
    + (select count(*) from forklift_jobs where status = 'RUNNING')";

/// The database under test, and what it takes to clean up after.
enum Db {
    Pg {
        store: PgStore,
        admin: PgPool,
        schema: String,
    },
    Sqlite {
        store: SqliteStore,
        path: String,
        watch: SqlitePool,
    },
}

impl Db {
    async fn open(url: &str) -> Result<Db, BoxError> {
        if let Some(path) = url.strip_prefix("sqlite://") {
            remove_sqlite_files(path);
            let store = SqliteStore::connect(url).await?;
            store.migrate().await?;
            let watch = SqlitePool::connect(url).await?;
            return Ok(Db::Sqlite {
                store,
                path: path.to_string(),
                watch,
            });
        }
        let schema = format!("fl_bench_{}", std::process::id());
        let admin = PgPool::connect(url).await?;
        sqlx::query(&format!("create schema {schema}"))
            .execute(&admin)
            .await?;
        let options = url
            .parse::<PgConnectOptions>()?
            .options([("search_path", schema.as_str())]);
        let store = PgStore::connect(options, 20).await?;
        store.migrate().await?;
        Ok(Db::Pg {
            store,
            admin,
            schema,
        })
    }

    fn store(&self) -> Arc<dyn Store> {
        match self {
            Db::Pg { store, .. } => Arc::new(store.clone()),
            Db::Sqlite { store, .. } => Arc::new(store.clone()),
        }
    }

    /// Enqueues `n` jobs in one transaction, in calls of up to 10,000.
    async fn enqueue_all(&self, client: &Client, n: usize) -> Result<(), BoxError> {
        let jobs = vec![NewJob::new("noop", serde_json::json!({})); n.min(forklift::MAX_BATCH)];
        let chunks = (0..n)
            .step_by(jobs.len())
            .map(|start| (n - start).min(jobs.len()));
        match self {
            Db::Pg { store, .. } => {
                let mut tx = store.pool().begin().await?;
                for k in chunks {
                    client.enqueue_many_in(&mut tx, &jobs[..k]).await?;
                }
                tx.commit().await?;
            }
            Db::Sqlite { store, .. } => {
                let mut tx = store.pool().begin_with("BEGIN IMMEDIATE").await?;
                for k in chunks {
                    client.enqueue_many_in(&mut tx, &jobs[..k]).await?;
                }
                tx.commit().await?;
            }
        }
        Ok(())
    }

    async fn unfinished(&self) -> Result<i64, BoxError> {
        Ok(match self {
            Db::Pg { store, .. } => {
                sqlx::query_scalar(UNFINISHED)
                    .fetch_one(store.pool())
                    .await?
            }
            Db::Sqlite { watch, .. } => sqlx::query_scalar(UNFINISHED).fetch_one(watch).await?,
        })
    }

    async fn close(self) -> Result<(), BoxError> {
        match self {
            Db::Pg { admin, schema, .. } => {
                sqlx::query(&format!("drop schema {schema} cascade"))
                    .execute(&admin)
                    .await?;
            }
            Db::Sqlite { store, path, watch } => {
                watch.close().await;
                store.pool().close().await;
                drop(store);
                remove_sqlite_files(&path);
            }
        }
        Ok(())
    }

    fn name(&self) -> &'static str {
        match self {
            Db::Pg { .. } => "postgres",
            Db::Sqlite { .. } => "sqlite",
        }
    }
}

fn remove_sqlite_files(path: &str) {
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{path}{suffix}"));
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args.get(1).map_or(Ok(50_000), |s| s.parse())?;
    let concurrency: usize = args.get(2).map_or(Ok(100), |s| s.parse())?;
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let db = Db::open(&url).await?;
    let store = db.store();

    let mut registry = Registry::new();
    builtin::register(&mut registry);
    let config = WorkerConfig {
        queues: vec![QueueConfig::new("default", concurrency)],
        maintenance: None,
        ..WorkerConfig::default()
    };
    let worker = Worker::start(store.clone(), registry, config);
    tokio::time::sleep(Duration::from_millis(500)).await;

    let client = Client::new(store);
    let enqueue_start = Instant::now();
    db.enqueue_all(&client, n).await?;
    let enqueue_secs = enqueue_start.elapsed().as_secs_f64();
    let start = Instant::now();
    while db.unfinished().await? > 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "burn-down ({}): {n} jobs in {secs:.2} s = {:.0} jobs/s (concurrency {concurrency}; enqueue took {enqueue_secs:.2} s)",
        db.name(),
        n as f64 / secs
    );
    worker.shutdown().await;
    db.close().await
}
