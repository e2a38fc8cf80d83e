//! Leasing ahead: a queue whose jobs are short leases more than its free slots, so the
//! next jobs are at hand when a slot frees; one whose jobs are slow leases only what it
//! can start, so no process holds jobs another has room to run.

use std::time::Duration;

use forklift::{
    Handler, HandlerResult, JobContext, JobStatus, NewJob, Outcome, QueueConfig, Worker,
    WorkerConfig,
};
use serde_json::json;

use crate::registry;
use crate::support::{Harness, enqueue_ids, fast_config, wait_status};

/// Holds its slot until the worker stops.
struct Gate;

impl Handler for Gate {
    type Payload = serde_json::Value;
    async fn run(&self, _: serde_json::Value, ctx: JobContext) -> HandlerResult {
        ctx.cancelled().await;
        Ok(Outcome::Success)
    }
}

fn one_slot() -> WorkerConfig {
    WorkerConfig {
        queues: vec![QueueConfig::new("default", 1)],
        shutdown_grace: Duration::from_millis(200),
        ..fast_config()
    }
}

pub async fn jobs_leased_ahead_are_released_at_shutdown_without_using_an_attempt(h: Harness) {
    let mut reg = registry();
    reg.register("gate", Gate);
    let worker = Worker::start(h.dyn_store(), reg, one_slot());
    let client = h.client();
    // Short jobs first, so the queue knows its jobs end well within a fetch.
    let warm = enqueue_ids(&client, &vec![NewJob::new("noop", json!({})); 20]).await;
    for id in &warm {
        wait_status(&client, *id, JobStatus::Success).await;
    }
    let mut batch = vec![NewJob::new("gate", json!({})).priority(0)];
    batch.extend(vec![NewJob::new("noop", json!({})); 10]);
    let ids = enqueue_ids(&client, &batch).await;
    wait_status(&client, ids[0], JobStatus::Running).await;
    // The gate holds the only slot; the ten behind it were leased with it, ahead.
    for id in &ids[1..] {
        wait_status(&client, *id, JobStatus::Running).await;
    }
    assert_eq!(worker.running(), 11);
    worker.shutdown().await;
    // (The gate itself ends as its handler chose when told to stop.)
    for id in &ids[1..] {
        let job = client.get(*id).await.unwrap();
        assert_eq!((job.status, job.attempt), (JobStatus::Queued, 0), "{id}");
        assert!(job.errors.is_empty(), "{id}");
    }
    assert_eq!(h.count_where("status = 'RUNNING'").await, 0);
}

pub async fn slow_jobs_are_not_leased_ahead(h: Harness) {
    let worker = Worker::start(h.dyn_store(), registry(), one_slot());
    let client = h.client();
    let slow = NewJob::new("simulate", json!({"steps": 2, "step_ms": 100}));
    let ids = enqueue_ids(&client, &vec![slow; 4]).await;
    let mut most_held = 0;
    while client.get(ids[3]).await.unwrap().status != JobStatus::Success {
        most_held = most_held.max(h.count_where("status = 'RUNNING'").await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // One slot, jobs far slower than a fetch: one job leased at a time.
    assert_eq!(most_held, 1);
    worker.shutdown().await;
}
