//! A first measure of burn-down throughput: one worker process, 50,000 noop jobs
//! committed in one transaction, timed from the commit until none is unfinished.
//!
//! `DATABASE_URL=postgres://postgres@127.0.0.1:5432/test cargo run --release -p forklift --example burndown -- 50000 100`
//! (arguments: jobs, concurrency). It works in a schema of its own and drops it after.

use std::sync::Arc;
use std::time::{Duration, Instant};

use forklift::{
    Client, NewJob, PgStore, QueueConfig, Registry, Store, Worker, WorkerConfig, builtin,
};
use sqlx::postgres::PgConnectOptions;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args.get(1).map_or(Ok(50_000), |s| s.parse())?;
    let concurrency: usize = args.get(2).map_or(Ok(100), |s| s.parse())?;
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let schema = format!("fl_bench_{}", std::process::id());
    let admin = sqlx::PgPool::connect(&url).await?;
    sqlx::query(&format!("create schema {schema}"))
        .execute(&admin)
        .await?;
    let options: PgConnectOptions = url
        .parse::<PgConnectOptions>()?
        .options([("search_path", schema.as_str())]);
    let store = PgStore::connect(options, 20).await?;
    store.migrate().await?;
    let dyn_store: Arc<dyn Store> = Arc::new(store.clone());

    let mut registry = Registry::new();
    builtin::register(&mut registry);
    let config = WorkerConfig {
        queues: vec![QueueConfig::new("default", concurrency)],
        maintenance: None,
        ..WorkerConfig::default()
    };
    let worker = Worker::start(dyn_store.clone(), registry, config);
    tokio::time::sleep(Duration::from_millis(500)).await;

    let client = Client::new(dyn_store);
    let jobs = vec![NewJob::new("noop", serde_json::json!({})); n.min(forklift::MAX_BATCH)];
    let mut tx = store.pool().begin().await?;
    let mut left = n;
    while left > 0 {
        let k = left.min(jobs.len());
        client.enqueue_many_in(&mut tx, &jobs[..k]).await?;
        left -= k;
    }
    tx.commit().await?;
    let start = Instant::now();
    loop {
        let unfinished: i64 = sqlx::query_scalar(
            "select count(*) from forklift_jobs where status in ('QUEUED', 'RUNNING')",
        )
        .fetch_one(store.pool())
        .await?;
        if unfinished == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "burn-down: {n} jobs in {secs:.2} s = {:.0} jobs/s (concurrency {concurrency})",
        n as f64 / secs
    );
    worker.shutdown().await;
    sqlx::query(&format!("drop schema {schema} cascade"))
        .execute(&admin)
        .await?;
    Ok(())
}
