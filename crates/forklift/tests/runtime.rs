//! The worker runtime end to end, against a real PostgreSQL: handlers run, fail, retry
//! with back-off, time out, panic, snooze, get cancelled, and shutdown puts work back.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use forklift::{
    Handler, HandlerResult, JobContext, JobStatus, NewJob, Outcome, Registry, Store, TypeOptions,
    Worker, builtin,
};
use serde_json::json;
use support::{Db, fast_config, fast_maintenance, quick_backoff, wait_for, wait_status};

fn registry() -> Registry {
    let mut r = Registry::new();
    r.register("noop", builtin::Noop);
    r.register_with(
        "simulate",
        builtin::Simulate,
        TypeOptions {
            backoff: quick_backoff(),
            ..TypeOptions::default()
        },
    );
    r
}

fn simulate(payload: serde_json::Value) -> NewJob {
    NewJob::new("simulate", payload)
}

#[tokio::test]
async fn worker_runs_a_job_to_success_with_its_result() {
    let db = Db::new().await;
    let worker = Worker::start(db.dyn_store(), registry(), fast_config());
    let client = db.client();
    let id = client
        .enqueue(simulate(json!({"steps": 2, "step_ms": 10})))
        .await
        .unwrap()
        .job
        .job_id;
    let job = wait_status(&client, id, JobStatus::Success).await;
    assert_eq!((job.progress, job.attempt), (100, 1));
    assert_eq!(job.result, Some(json!({"steps": 2, "attempt": 1})));
    assert!(job.completed_at.is_some() && job.started_at.is_some());
    worker.shutdown().await;
}

#[tokio::test]
async fn many_jobs_all_finish_once() {
    let db = Db::new().await;
    let worker = Worker::start(db.dyn_store(), registry(), fast_config());
    let client = db.client();
    client
        .enqueue_many(&vec![NewJob::new("noop", json!({})); 2_000])
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let done: i64 = sqlx::query_scalar(
            "select count(*) from forklift_jobs where status = 'SUCCESS' and attempt = 1",
        )
        .fetch_one(&db.schema.pool)
        .await
        .unwrap();
        if done == 2_000 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {done} of 2000 finished"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    worker.shutdown().await;
}

#[tokio::test]
async fn retryable_failures_back_off_and_then_succeed() {
    let db = Db::new().await;
    let worker = Worker::start(db.dyn_store(), registry(), fast_config());
    let client = db.client();
    let id = client
        .enqueue(simulate(json!({"steps": 0, "fail_attempts": 2})))
        .await
        .unwrap()
        .job
        .job_id;
    let job = wait_status(&client, id, JobStatus::Success).await;
    assert_eq!(job.attempt, 3);
    assert_eq!(
        job.errors
            .iter()
            .map(|e| (e.attempt, e.code.as_str()))
            .collect::<Vec<_>>(),
        [(1, "simulated"), (2, "simulated")]
    );
    worker.shutdown().await;
}

#[tokio::test]
async fn a_retry_waits_for_its_back_off() {
    let db = Db::new().await;
    let mut reg = Registry::new();
    let slow = forklift::Backoff {
        base: Duration::from_secs(3600),
        cap: Duration::from_secs(3600),
        jitter: 0.0,
    };
    reg.register_with(
        "simulate",
        builtin::Simulate,
        TypeOptions {
            backoff: slow,
            ..TypeOptions::default()
        },
    );
    let worker = Worker::start(db.dyn_store(), reg, fast_config());
    let client = db.client();
    let id = client
        .enqueue(simulate(json!({"steps": 0, "fail_attempts": 1})))
        .await
        .unwrap()
        .job
        .job_id;
    let job = wait_for(&client, id, "first failure", |j| {
        j.status == JobStatus::Queued && j.attempt == 1
    })
    .await;
    let wait = job.run_at - job.updated_at;
    assert!(
        (3590..=3610).contains(&wait.num_seconds()),
        "run_at is the back-off away: {wait}"
    );
    worker.shutdown().await;
}

#[tokio::test]
async fn exhausted_attempts_fail_the_job() {
    let db = Db::new().await;
    let worker = Worker::start(db.dyn_store(), registry(), fast_config());
    let client = db.client();
    let id = client
        .enqueue(simulate(json!({"steps": 0, "fail_attempts": 9})).max_attempts(2))
        .await
        .unwrap()
        .job
        .job_id;
    let job = wait_status(&client, id, JobStatus::Failed).await;
    assert_eq!((job.attempt, job.errors.len()), (2, 2));
    worker.shutdown().await;
}

#[tokio::test]
async fn a_permanent_error_fails_at_once() {
    let db = Db::new().await;
    let worker = Worker::start(db.dyn_store(), registry(), fast_config());
    let client = db.client();
    let id = client
        .enqueue(simulate(
            json!({"steps": 0, "fail_attempts": 1, "permanent": true}),
        ))
        .await
        .unwrap();
    let job = wait_status(&client, id.job.job_id, JobStatus::Failed).await;
    assert_eq!(job.attempt, 1);
    worker.shutdown().await;
}

#[tokio::test]
async fn a_payload_that_does_not_fit_fails_permanently() {
    let db = Db::new().await;
    let worker = Worker::start(db.dyn_store(), registry(), fast_config());
    let client = db.client();
    let id = client
        .enqueue(simulate(json!({"steps": "many"})))
        .await
        .unwrap()
        .job
        .job_id;
    let job = wait_status(&client, id, JobStatus::Failed).await;
    assert_eq!(
        (job.attempt, job.errors[0].code.as_str()),
        (1, "invalid_payload")
    );
    worker.shutdown().await;
}

#[tokio::test]
async fn a_panic_fails_the_attempt_and_the_worker_goes_on() {
    let db = Db::new().await;
    let worker = Worker::start(db.dyn_store(), registry(), fast_config());
    let client = db.client();
    let panicking = client
        .enqueue(simulate(json!({"steps": 0, "panic": true})).max_attempts(1))
        .await
        .unwrap();
    let job = wait_status(&client, panicking.job.job_id, JobStatus::Failed).await;
    assert_eq!(job.errors[0].code, "panic");
    assert!(job.errors[0].message.contains("simulated panic"));
    let next = client
        .enqueue(NewJob::new("noop", json!({})))
        .await
        .unwrap()
        .job
        .job_id;
    wait_status(&client, next, JobStatus::Success).await;
    worker.shutdown().await;
}

#[tokio::test]
async fn an_attempt_past_its_timeout_is_stopped_and_fails() {
    let db = Db::new().await;
    let worker = Worker::start(db.dyn_store(), registry(), fast_config());
    let client = db.client();
    let job = simulate(json!({"steps": 100, "step_ms": 100}))
        .timeout_seconds(1)
        .max_attempts(1);
    let id = client.enqueue(job).await.unwrap().job.job_id;
    let job = wait_status(&client, id, JobStatus::Failed).await;
    assert_eq!(job.errors[0].code, "timeout");
    worker.shutdown().await;
}

#[tokio::test]
async fn partial_success_lists_the_failed_items() {
    let db = Db::new().await;
    let worker = Worker::start(db.dyn_store(), registry(), fast_config());
    let client = db.client();
    let id = client
        .enqueue(simulate(json!({"steps": 1, "step_ms": 1, "partial": true})))
        .await
        .unwrap()
        .job
        .job_id;
    let job = wait_status(&client, id, JobStatus::PartialSuccess).await;
    assert_eq!(job.errors.len(), 1);
    assert_eq!(job.errors[0].details, json!({"item": 1}));
    worker.shutdown().await;
}

struct SnoozeOnce(Arc<AtomicUsize>);

impl Handler for SnoozeOnce {
    type Payload = serde_json::Value;
    async fn run(&self, _: serde_json::Value, _: JobContext) -> HandlerResult {
        if self.0.fetch_add(1, Ordering::SeqCst) == 0 {
            return Ok(Outcome::Snooze(Duration::from_millis(50)));
        }
        Ok(Outcome::Success)
    }
}

#[tokio::test]
async fn a_snooze_runs_again_without_using_an_attempt() {
    let db = Db::new().await;
    let calls = Arc::new(AtomicUsize::new(0));
    let mut reg = Registry::new();
    reg.register("snoozy", SnoozeOnce(calls.clone()));
    let worker = Worker::start(db.dyn_store(), reg, fast_config());
    let client = db.client();
    let id = client
        .enqueue(NewJob::new("snoozy", json!({})).max_attempts(1))
        .await
        .unwrap()
        .job
        .job_id;
    let job = wait_status(&client, id, JobStatus::Success).await;
    assert_eq!((job.attempt, calls.load(Ordering::SeqCst)), (1, 2));
    worker.shutdown().await;
}

#[tokio::test]
async fn cancelling_a_running_job_reaches_its_handler_from_another_process() {
    let db = Db::new().await;
    // Leases are renewed rarely here, so only the NOTIFY can carry the cancel in time.
    let config = forklift::WorkerConfig {
        heartbeat_interval: Duration::from_secs(60),
        ..fast_config()
    };
    let worker = Worker::start(db.dyn_store(), registry(), config);
    let other: Arc<dyn forklift::Store> = Arc::new(db.other_process().await);
    let client = forklift::Client::new(other);
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

#[tokio::test]
async fn shutdown_lets_short_jobs_finish() {
    let db = Db::new().await;
    let worker = Worker::start(db.dyn_store(), registry(), fast_config());
    let client = db.client();
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

#[tokio::test]
async fn shutdown_releases_jobs_still_running_after_the_grace_without_using_an_attempt() {
    let db = Db::new().await;
    let mut reg = registry();
    reg.register("stubborn", Stubborn);
    let config = forklift::WorkerConfig {
        shutdown_grace: Duration::from_millis(300),
        ..fast_config()
    };
    let worker = Worker::start(db.dyn_store(), reg, config);
    let client = db.client();
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
    let running: i64 =
        sqlx::query_scalar("select count(*) from forklift_jobs where status = 'RUNNING'")
            .fetch_one(&db.schema.pool)
            .await
            .unwrap();
    assert_eq!(running, 0, "nothing is left RUNNING");
}

#[tokio::test]
async fn a_job_whose_worker_vanished_is_rescued_and_run_by_another() {
    let db = Db::new().await;
    let client = db.client();
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
    assert_eq!(
        db.store.job_fetch_available(&params).await.unwrap().len(),
        1
    );
    let config = forklift::WorkerConfig {
        maintenance: Some(fast_maintenance()),
        ..fast_config()
    };
    let worker = Worker::start(db.dyn_store(), registry(), config);
    let job = wait_status(&client, id, JobStatus::Success).await;
    assert_eq!(job.attempt, 2);
    assert_eq!(job.errors[0].code, "lease_expired");
    worker.shutdown().await;
}

#[tokio::test]
async fn progress_is_written_while_the_handler_runs() {
    let db = Db::new().await;
    let worker = Worker::start(db.dyn_store(), registry(), fast_config());
    let client = db.client();
    let id = client
        .enqueue(simulate(json!({"steps": 50, "step_ms": 40})))
        .await
        .unwrap()
        .job
        .job_id;
    let job = wait_for(&client, id, "progress mid-way", |j| {
        j.status == JobStatus::Running && j.progress > 0
    })
    .await;
    assert!(job.progress < 100);
    wait_status(&client, id, JobStatus::Success).await;
    worker.shutdown().await;
}

#[tokio::test]
async fn a_dead_listener_is_replaced_and_wake_ups_resume() {
    let db = Db::new().await;
    // Polling is slow here, so a job started quickly proves the wake-up path works.
    let config = forklift::WorkerConfig {
        poll_interval: Duration::from_secs(600),
        ..fast_config()
    };
    let worker = Worker::start(db.dyn_store(), registry(), config);
    let client = db.client();
    let first = client
        .enqueue(NewJob::new("noop", json!({})))
        .await
        .unwrap()
        .job
        .job_id;
    wait_status(&client, first, JobStatus::Success).await;
    db.sql("select pg_terminate_backend(pid) from pg_stat_activity where query ilike 'LISTEN%' and pid <> pg_backend_pid()")
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Enqueued from another process, so only a NOTIFY can wake this worker.
    let other = forklift::Client::new(Arc::new(db.other_process().await));
    let second = other
        .enqueue(NewJob::new("noop", json!({})))
        .await
        .unwrap()
        .job
        .job_id;
    wait_status(&client, second, JobStatus::Success).await;
    worker.shutdown().await;
}

#[tokio::test]
async fn per_type_concurrency_is_respected() {
    let db = Db::new().await;
    let mut reg = Registry::new();
    reg.register_with(
        "simulate",
        builtin::Simulate,
        TypeOptions {
            concurrency: Some(2),
            ..TypeOptions::default()
        },
    );
    let worker = Worker::start(db.dyn_store(), reg, fast_config());
    let client = db.client();
    client
        .enqueue_many(&vec![simulate(json!({"steps": 4, "step_ms": 50})); 8])
        .await
        .unwrap();
    let mut max_seen = 0;
    for _ in 0..40 {
        let running: i64 =
            sqlx::query_scalar("select count(*) from forklift_jobs where status = 'RUNNING'")
                .fetch_one(&db.schema.pool)
                .await
                .unwrap();
        max_seen = max_seen.max(running);
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(
        (1..=2).contains(&max_seen),
        "at most 2 at once, saw {max_seen}"
    );
    worker.shutdown().await;
}
