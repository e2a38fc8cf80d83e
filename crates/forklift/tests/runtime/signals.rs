//! What reaches a worker from outside: cancels (in this process, and from another one,
//! by NOTIFY or at the next heartbeat), wake-ups for new jobs (including jobs enqueued in
//! a transaction), a dead listener, a vanished worker's jobs, and shutdown.

use std::time::Duration;

use forklift::{
    Client, Handler, HandlerResult, JobContext, JobStatus, NewJob, Outcome, Worker, WorkerConfig,
};
use serde_json::json;
use sqlx::Connection;

use crate::support::{Harness, fast_config, fast_maintenance, wait_status};
use crate::{registry, simulate};

/// A long job, cancelled by `client` once running, ends `CANCELLED` with its handler stopped.
async fn cancel_while_running(worker: Worker, client: &Client) {
    let id = client
        .enqueue(simulate(json!({"steps": 1000, "step_ms": 50})))
        .await
        .unwrap()
        .job
        .job_id;
    wait_status(client, id, JobStatus::Running).await;
    let asked = client.cancel(id).await.unwrap();
    assert_eq!(
        asked.status,
        JobStatus::Running,
        "a running job is asked, not forced"
    );
    let job = wait_status(client, id, JobStatus::Cancelled).await;
    assert!(job.completed_at.is_some());
    assert_eq!(worker.running(), 0);
    worker.shutdown().await;
}

pub async fn cancelling_a_running_job_reaches_its_handler_at_once(h: Harness) {
    // Leases are renewed rarely here, so only the in-process event can carry the cancel in time.
    let config = WorkerConfig {
        heartbeat_interval: Duration::from_secs(60),
        ..fast_config()
    };
    let worker = Worker::start(h.dyn_store(), registry(), config);
    cancel_while_running(worker, &h.client()).await;
}

pub async fn cancelling_a_running_job_reaches_its_handler_from_another_process(h: Harness) {
    // Leases are renewed rarely here, so only the NOTIFY can carry the cancel in time.
    let config = WorkerConfig {
        heartbeat_interval: Duration::from_secs(60),
        ..fast_config()
    };
    let worker = Worker::start(h.dyn_store(), registry(), config);
    let client = Client::new(h.other_process().await);
    let id = client
        .enqueue(simulate(json!({"steps": 1000, "step_ms": 50})))
        .await
        .unwrap()
        .job
        .job_id;
    wait_status(&client, id, JobStatus::Running).await;
    let asked = client.cancel(id).await.unwrap();
    assert_eq!(
        asked.status,
        JobStatus::Running,
        "a running job is asked, not forced"
    );
    let job = wait_status(&client, id, JobStatus::Cancelled).await;
    assert!(job.completed_at.is_some());
    assert_eq!(worker.running(), 0);
    worker.shutdown().await;
}

pub async fn a_cancel_from_another_process_reaches_the_handler_at_its_next_heartbeat(h: Harness) {
    // No NOTIFY on SQLite: the worker learns of the cancel when it renews its leases.
    let worker = Worker::start(h.dyn_store(), registry(), fast_config());
    cancel_while_running(worker, &Client::new(h.other_process().await)).await;
}

pub async fn a_job_enqueued_by_another_process_is_found_by_polling(h: Harness) {
    let config = WorkerConfig {
        poll_interval: Duration::from_millis(300),
        ..fast_config()
    };
    let worker = Worker::start(h.dyn_store(), registry(), config);
    let other = Client::new(h.other_process().await);
    let id = other
        .enqueue(NewJob::new("noop", json!({})))
        .await
        .unwrap()
        .job
        .job_id;
    wait_status(&h.client(), id, JobStatus::Success).await;
    worker.shutdown().await;
}

pub async fn a_dead_listener_is_replaced_and_wake_ups_resume(h: Harness) {
    // Polling is slow here, so a job started quickly proves the wake-up path works.
    let config = forklift::WorkerConfig {
        poll_interval: Duration::from_secs(600),
        ..fast_config()
    };
    let worker = Worker::start(h.dyn_store(), registry(), config);
    let client = h.client();
    let first = client
        .enqueue(NewJob::new("noop", json!({})))
        .await
        .unwrap()
        .job
        .job_id;
    wait_status(&client, first, JobStatus::Success).await;
    sqlx::query("select pg_terminate_backend(pid) from pg_stat_activity where query ilike 'LISTEN%' and pid <> pg_backend_pid()")
        .execute(&h.pg_schema().pool)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Enqueued from another process, so only a NOTIFY can wake this worker.
    let other = Client::new(h.other_process().await);
    let second = other
        .enqueue(NewJob::new("noop", json!({})))
        .await
        .unwrap()
        .job
        .job_id;
    wait_status(&client, second, JobStatus::Success).await;
    worker.shutdown().await;
}

/// A worker whose polling is too slow to matter: only a wake-up makes it run a job soon.
async fn worker_that_only_wakes(h: &Harness) -> Worker {
    let config = WorkerConfig {
        poll_interval: Duration::from_secs(600),
        ..fast_config()
    };
    let worker = Worker::start(h.dyn_store(), registry(), config);
    // Its first look at the queue happens at start; let that pass.
    tokio::time::sleep(Duration::from_millis(200)).await;
    worker
}

/// Enqueues on `tx` and keeps the transaction open a moment, during which the job is
/// invisible (and any wake-up it sent has been heard).
async fn enqueue_and_hold(h: &Harness, tx: &mut impl forklift::TxConnection) -> forklift::JobId {
    let id = h
        .client()
        .enqueue_in(tx, NewJob::new("noop", json!({})))
        .await
        .unwrap()
        .job
        .job_id;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        h.client().get(id).await.is_err(),
        "invisible before the commit"
    );
    id
}

async fn runs_soon(h: &Harness, id: forklift::JobId) {
    let done = tokio::time::timeout(
        Duration::from_secs(3),
        wait_status(&h.client(), id, JobStatus::Success),
    )
    .await;
    assert!(
        done.is_ok(),
        "the committed job ran without waiting for a poll"
    );
}

pub async fn a_job_enqueued_in_a_postgres_transaction_wakes_the_worker_on_commit(h: Harness) {
    let worker = worker_that_only_wakes(&h).await;
    let mut tx = h.pg_store().pool().begin().await.unwrap();
    let id = enqueue_and_hold(&h, &mut tx).await;
    tx.commit().await.unwrap();
    runs_soon(&h, id).await;
    worker.shutdown().await;
}

pub async fn a_job_enqueued_in_a_sqlite_transaction_wakes_the_worker_for_after_commit(h: Harness) {
    let worker = worker_that_only_wakes(&h).await;
    // The application's own connection; the wake-up is sent before the commit, and the
    // woken fetch waits for this transaction's write lock.
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", h.sqlite_path()))
        .await
        .unwrap();
    let mut tx = conn.begin_with("BEGIN IMMEDIATE").await.unwrap();
    let id = enqueue_and_hold(&h, &mut tx).await;
    tx.commit().await.unwrap();
    runs_soon(&h, id).await;
    worker.shutdown().await;
}

pub async fn a_job_whose_worker_vanished_is_rescued_and_run_by_another(h: Harness) {
    let client = h.client();
    let id = client
        .enqueue(NewJob::new("noop", json!({})))
        .await
        .unwrap()
        .job
        .job_id;
    // A worker that leases the job with a short lease and then vanishes (never renews).
    let params = forklift::store::FetchParams {
        queue: "default".into(),
        types: vec!["noop".into()],
        limit: 1,
        worker_id: "vanished".into(),
        lease_ttl: Duration::from_millis(300),
    };
    assert_eq!(h.store.job_fetch_available(&params).await.unwrap().len(), 1);
    let config = forklift::WorkerConfig {
        maintenance: Some(fast_maintenance()),
        ..fast_config()
    };
    let worker = Worker::start(h.dyn_store(), registry(), config);
    let job = wait_status(&client, id, JobStatus::Success).await;
    assert_eq!(job.attempt, 2);
    assert_eq!(job.errors[0].code, "lease_expired");
    worker.shutdown().await;
}

pub async fn shutdown_lets_short_jobs_finish(h: Harness) {
    let worker = Worker::start(h.dyn_store(), registry(), fast_config());
    let client = h.client();
    let id = client
        .enqueue(simulate(json!({"steps": 3, "step_ms": 100})))
        .await
        .unwrap()
        .job
        .job_id;
    wait_status(&client, id, JobStatus::Running).await;
    worker.shutdown().await;
    assert_eq!(client.get(id).await.unwrap().status, JobStatus::Success);
}

struct Stubborn;

impl Handler for Stubborn {
    type Payload = serde_json::Value;
    async fn run(&self, _: serde_json::Value, _: JobContext) -> HandlerResult {
        // Ignores its cancellation token on purpose.
        tokio::time::sleep(Duration::from_secs(3600)).await;
        Ok(Outcome::Success)
    }
}

pub async fn shutdown_releases_jobs_still_running_after_the_grace_without_using_an_attempt(
    h: Harness,
) {
    let mut reg = registry();
    reg.register("stubborn", Stubborn);
    let config = forklift::WorkerConfig {
        shutdown_grace: Duration::from_millis(300),
        ..fast_config()
    };
    let worker = Worker::start(h.dyn_store(), reg, config);
    let client = h.client();
    let polite = client
        .enqueue(simulate(json!({"steps": 1000, "step_ms": 50})))
        .await
        .unwrap()
        .job
        .job_id;
    let stubborn = client
        .enqueue(NewJob::new("stubborn", json!({})))
        .await
        .unwrap()
        .job
        .job_id;
    wait_status(&client, polite, JobStatus::Running).await;
    wait_status(&client, stubborn, JobStatus::Running).await;
    worker.shutdown().await;
    for id in [polite, stubborn] {
        let job = client.get(id).await.unwrap();
        assert_eq!((job.status, job.attempt), (JobStatus::Queued, 0), "{id}");
        assert!(job.errors.is_empty());
    }
    let running = h.count_where("status = 'RUNNING'").await;
    assert_eq!(running, 0, "nothing is left RUNNING");
}
