//! The engine under faults of the network and the database, found by the chaos suite
//! (crates/forklift-chaos): each test here pins one fix.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use forklift::{
    Handler, HandlerResult, JobContext, JobError, JobStatus, NewJob, Registry, Worker, WorkerConfig,
};
use serde_json::json;
use support::proxy::Proxy;
use support::{Harness, fast_config, wait_status};
use tokio::time::Instant;

/// Works until its token fires, and records when that was.
struct Patient(Arc<Mutex<Option<Instant>>>);

impl Handler for Patient {
    type Payload = serde_json::Value;
    async fn run(&self, _: serde_json::Value, ctx: JobContext) -> HandlerResult {
        ctx.cancelled().await;
        *self.0.lock().unwrap() = Some(Instant::now());
        Err(JobError::retryable("stopped"))
    }
}

#[tokio::test]
async fn a_worker_cut_off_from_its_database_stops_its_handlers_when_its_leases_lapse() {
    let db = Harness::pg().await;
    let proxy = Proxy::start(db.upstream()).await;
    let store = db.store_through(&proxy, 5).await;
    let stopped_at = Arc::new(Mutex::new(None));
    let mut registry = Registry::new();
    registry.register("patient", Patient(stopped_at.clone()));
    let lease = Duration::from_secs(1);
    let config = WorkerConfig {
        lease_ttl: lease,
        heartbeat_interval: Duration::from_millis(200),
        ..fast_config()
    };
    let worker = Worker::start(Arc::new(store), registry, config);
    let client = db.client();
    let id = client
        .enqueue(NewJob::new("patient", json!({})))
        .await
        .unwrap()
        .job
        .job_id;
    wait_status(&client, id, JobStatus::Running).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The link stops answering without closing: renewals and progress writes hang.
    let cut_at = Instant::now();
    proxy.blackhole(true);
    tokio::time::sleep(lease * 3).await;
    let stopped = *stopped_at.lock().unwrap();
    let stopped = stopped.map(|t| t - cut_at);
    assert!(
        stopped.is_some_and(|after| after <= lease + Duration::from_millis(300)),
        "the handler must be stopped once the lease can no longer have been renewed; stopped after {stopped:?}"
    );
    proxy.blackhole(false);
    drop(worker);
}

#[tokio::test]
async fn a_store_whose_database_is_down_fails_calls_within_about_a_second() {
    let db = Harness::pg().await;
    let proxy = Proxy::start(db.upstream()).await;
    let store = db.store_through(&proxy, 5).await;
    let client = forklift::Client::new(Arc::new(store));
    let id = client
        .enqueue(NewJob::new("noop", json!({})))
        .await
        .unwrap()
        .job
        .job_id;

    // Connections close and new ones are refused, as when PostgreSQL is stopped. The first
    // call may fail at once on its broken connection; the next ones must open a new one.
    proxy.go_down();
    for _ in 0..3 {
        let began = Instant::now();
        let answer = client.get(id).await;
        let took = began.elapsed();
        assert!(
            matches!(answer, Err(forklift::Error::Database(_))),
            "{answer:?}"
        );
        assert!(
            took <= Duration::from_millis(1500),
            "the call failed only after {took:?}"
        );
    }
}

#[tokio::test]
async fn handlers_stop_when_the_lease_lapses_even_if_each_renewal_fails_before_that() {
    let db = Harness::pg().await;
    let proxy = Proxy::start(db.upstream()).await;
    let store = db.store_through(&proxy, 5).await;
    let stopped_at = Arc::new(Mutex::new(None));
    let mut registry = Registry::new();
    registry.register("patient", Patient(stopped_at.clone()));
    // Renewals 0.9 s apart, lease 1 s: the renewal after the one that fails at 0.9 s
    // comes only at 1.8 s, so a check made at renewals alone is 0.8 s late.
    let lease = Duration::from_secs(1);
    let config = WorkerConfig {
        lease_ttl: lease,
        heartbeat_interval: Duration::from_millis(900),
        ..fast_config()
    };
    let worker = Worker::start(Arc::new(store), registry, config);
    let client = db.client();
    let id = client
        .enqueue(NewJob::new("patient", json!({})))
        .await
        .unwrap()
        .job
        .job_id;
    wait_status(&client, id, JobStatus::Running).await;
    // Cut right after a renewal: then the lease lapses one lease TTL from now.
    let first: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("select lease_expires_at from forklift_jobs where id = $1")
            .bind(id.0)
            .fetch_one(&db.pg_schema().pool)
            .await
            .unwrap();
    loop {
        let now: chrono::DateTime<chrono::Utc> =
            sqlx::query_scalar("select lease_expires_at from forklift_jobs where id = $1")
                .bind(id.0)
                .fetch_one(&db.pg_schema().pool)
                .await
                .unwrap();
        if now != first {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Every call now fails at once (connections reset, none refused).
    let cut_at = Instant::now();
    proxy.reset_all();
    tokio::time::sleep(lease * 3).await;
    let stopped = stopped_at.lock().unwrap().map(|t| t - cut_at);
    assert!(
        stopped.is_some_and(|after| after <= lease + Duration::from_millis(250)),
        "the handler must be stopped when the lease lapses; stopped after {stopped:?}"
    );
    drop(worker);
}
