//! Leasing ahead: a queue whose jobs are short leases more than its free slots, so the
//! next jobs are at hand when a slot frees; one whose jobs are slow leases only what it
//! can start, so no process holds jobs another has room to run.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use forklift::{
    Handler, HandlerResult, JobContext, JobStatus, NewJob, Outcome, QueueConfig, Registry, Worker,
    WorkerConfig,
};
use serde_json::json;

use crate::registry;
use crate::support::{Harness, enqueue_ids, fast_config, wait_status};

/// Holds its slot until the test opens it or the worker stops.
#[derive(Clone)]
struct Gate(Arc<tokio::sync::Semaphore>);

impl Default for Gate {
    fn default() -> Self {
        Gate(Arc::new(tokio::sync::Semaphore::new(0)))
    }
}

impl Handler for Gate {
    type Payload = serde_json::Value;
    async fn run(&self, _: serde_json::Value, ctx: JobContext) -> HandlerResult {
        tokio::select! {
            _ = ctx.cancelled() => {}
            _ = self.0.acquire() => {}
        }
        Ok(Outcome::Success)
    }
}

impl Gate {
    fn open(&self) {
        self.0.add_permits(1_000);
    }
}

/// Counts its runs.
#[derive(Clone, Default)]
struct Counted(Arc<AtomicUsize>);

impl Handler for Counted {
    type Payload = serde_json::Value;
    async fn run(&self, _: serde_json::Value, _: JobContext) -> HandlerResult {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(Outcome::Success)
    }
}

/// A worker with one slot whose queue has learnt that its jobs are short, running a gate
/// at priority 0 with `behind` jobs leased ahead of it; returns the ids, gate first.
async fn gate_with_jobs_behind(
    h: &Harness,
    reg: Registry,
    behind: Vec<NewJob>,
    config: WorkerConfig,
) -> (Worker, Vec<forklift::JobId>) {
    let worker = Worker::start(h.dyn_store(), reg, config);
    let client = h.client();
    let warm = enqueue_ids(&client, &vec![NewJob::new("noop", json!({})); 20]).await;
    for id in &warm {
        wait_status(&client, *id, JobStatus::Success).await;
    }
    let mut batch = vec![NewJob::new("gate", json!({})).priority(0)];
    batch.extend(behind);
    let ids = enqueue_ids(&client, &batch).await;
    for id in &ids {
        wait_status(&client, *id, JobStatus::Running).await;
    }
    (worker, ids)
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
    reg.register("gate", Gate::default());
    let behind = vec![NewJob::new("noop", json!({})); 10];
    let (worker, ids) = gate_with_jobs_behind(&h, reg, behind, one_slot()).await;
    worker.shutdown().await;
    // (The gate itself ends as its handler chose when told to stop.)
    let client = h.client();
    for id in &ids[1..] {
        let job = client.get(*id).await.unwrap();
        assert_eq!((job.status, job.attempt), (JobStatus::Queued, 0), "{id}");
        assert!(job.errors.is_empty(), "{id}");
    }
    assert_eq!(h.count_where("status = 'RUNNING'").await, 0);
}

pub async fn jobs_leased_ahead_go_back_to_the_queue_when_no_slot_frees(h: Harness) {
    let gate = Gate::default();
    let mut reg = registry();
    reg.register("gate", gate.clone());
    let behind = vec![NewJob::new("noop", json!({})); 10];
    let (worker, ids) = gate_with_jobs_behind(&h, reg, behind, one_slot()).await;
    let client = h.client();
    // The gate still holds the slot: within a second or two the ten are given back,
    // their attempt returned, for any process with room.
    for id in &ids[1..] {
        let job = wait_status(&client, *id, JobStatus::Queued).await;
        assert_eq!(job.attempt, 0, "{id}");
    }
    assert_eq!(client.get(ids[0]).await.unwrap().status, JobStatus::Running);
    gate.open();
    for id in &ids {
        wait_status(&client, *id, JobStatus::Success).await;
    }
    worker.shutdown().await;
}

/// The database refuses to take the jobs back (a release fails): they stay leased and
/// renewed, in the buffer, rather than dropped to lapse (the rescuer would then count an
/// attempt they never ran); once it takes them, they go back with no attempt used.
pub async fn jobs_leased_ahead_whose_release_fails_stay_leased_and_renewed(h: Harness) {
    let gate = Gate::default();
    let mut reg = registry();
    reg.register("gate", gate.clone());
    let behind = vec![NewJob::new("noop", json!({})); 10];
    let config = WorkerConfig {
        lease_ttl: Duration::from_secs(1),
        ..one_slot()
    };
    h.refuse_updates_when(
        "old.status = 'RUNNING' and new.status = 'QUEUED'",
        "old.status = 'RUNNING' and new.status = 'QUEUED'",
    )
    .await;
    let (worker, ids) = gate_with_jobs_behind(&h, reg, behind, config).await;
    // Past the one second a job waits leased ahead, and past two lease terms.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let client = h.client();
    for id in &ids[1..] {
        assert_eq!(
            client.get(*id).await.unwrap().status,
            JobStatus::Running,
            "{id}"
        );
    }
    let now = if h.is_sqlite() {
        chrono::Utc::now().timestamp_micros().to_string()
    } else {
        "now()".to_string()
    };
    let lapsed = format!("status = 'RUNNING' and lease_expires_at < {now}");
    assert_eq!(
        h.count_where(&lapsed).await,
        0,
        "every lease is still renewed"
    );
    h.allow_updates().await;
    for id in &ids[1..] {
        let job = wait_status(&client, *id, JobStatus::Queued).await;
        assert_eq!(job.attempt, 0, "{id}");
    }
    gate.open();
    for id in &ids {
        wait_status(&client, *id, JobStatus::Success).await;
    }
    worker.shutdown().await;
}

pub async fn a_job_cancelled_while_leased_ahead_never_runs(h: Harness) {
    let (gate, counted) = (Gate::default(), Counted::default());
    let mut reg = registry();
    reg.register("gate", gate.clone());
    reg.register("counted", counted.clone());
    let behind = vec![NewJob::new("counted", json!({}))];
    let (worker, ids) = gate_with_jobs_behind(&h, reg, behind, one_slot()).await;
    let client = h.client();
    client.cancel(ids[1]).await.unwrap();
    // Once the worker has heard of the cancel (at once by NOTIFY; at the next renewal on
    // SQLite), the slot frees and the cancelled job comes up first.
    tokio::time::sleep(Duration::from_millis(500)).await;
    gate.open();
    let job = wait_status(&client, ids[1], JobStatus::Cancelled).await;
    assert_eq!(counted.0.load(Ordering::SeqCst), 0, "its handler never ran");
    assert_eq!(job.attempt, 1);
    worker.shutdown().await;
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
