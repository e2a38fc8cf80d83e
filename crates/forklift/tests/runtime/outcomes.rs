//! How an attempt ends and what the job becomes: success, retries with back-off,
//! exhausted attempts, permanent errors, bad payloads, panics, timeouts, partial success,
//! snoozes; progress and per-type limits while it runs.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use forklift::{
    Handler, HandlerResult, JobContext, JobStatus, NewJob, Outcome, Registry, TypeOptions, Worker,
    builtin,
};
use serde_json::json;

use crate::support::{Harness, fast_config, wait_for, wait_status};
use crate::{registry, simulate};

pub async fn worker_runs_a_job_to_success_with_its_result(h: Harness) {
    let worker = Worker::start(h.dyn_store(), registry(), fast_config());
    let client = h.client();
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

pub async fn many_jobs_all_finish_once(h: Harness) {
    let worker = Worker::start(h.dyn_store(), registry(), fast_config());
    let client = h.client();
    client
        .enqueue_many(&vec![NewJob::new("noop", json!({})); 2_000])
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let done = h.count_where("status = 'SUCCESS' and attempt = 1").await;
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

pub async fn retryable_failures_back_off_and_then_succeed(h: Harness) {
    let worker = Worker::start(h.dyn_store(), registry(), fast_config());
    let client = h.client();
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

pub async fn a_retry_waits_for_its_back_off(h: Harness) {
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
    let worker = Worker::start(h.dyn_store(), reg, fast_config());
    let client = h.client();
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

pub async fn exhausted_attempts_fail_the_job(h: Harness) {
    let worker = Worker::start(h.dyn_store(), registry(), fast_config());
    let client = h.client();
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

pub async fn a_permanent_error_fails_at_once(h: Harness) {
    let worker = Worker::start(h.dyn_store(), registry(), fast_config());
    let client = h.client();
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

pub async fn a_payload_that_does_not_fit_fails_permanently(h: Harness) {
    let worker = Worker::start(h.dyn_store(), registry(), fast_config());
    let client = h.client();
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

pub async fn a_panic_fails_the_attempt_and_the_worker_goes_on(h: Harness) {
    let worker = Worker::start(h.dyn_store(), registry(), fast_config());
    let client = h.client();
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

pub async fn an_attempt_past_its_timeout_is_stopped_and_fails(h: Harness) {
    let worker = Worker::start(h.dyn_store(), registry(), fast_config());
    let client = h.client();
    let job = simulate(json!({"steps": 100, "step_ms": 100}))
        .timeout_seconds(1)
        .max_attempts(1);
    let id = client.enqueue(job).await.unwrap().job.job_id;
    let job = wait_status(&client, id, JobStatus::Failed).await;
    assert_eq!(job.errors[0].code, "timeout");
    worker.shutdown().await;
}

pub async fn partial_success_lists_the_failed_items(h: Harness) {
    let worker = Worker::start(h.dyn_store(), registry(), fast_config());
    let client = h.client();
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

pub async fn a_snooze_runs_again_without_using_an_attempt(h: Harness) {
    let calls = Arc::new(AtomicUsize::new(0));
    let mut reg = Registry::new();
    reg.register("snoozy", SnoozeOnce(calls.clone()));
    let worker = Worker::start(h.dyn_store(), reg, fast_config());
    let client = h.client();
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

pub async fn progress_is_written_while_the_handler_runs(h: Harness) {
    let worker = Worker::start(h.dyn_store(), registry(), fast_config());
    let client = h.client();
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

pub async fn per_type_concurrency_is_respected(h: Harness) {
    let most = crate::robustness::most_at_once(&h, 2, fast_config(), &["default"; 8]).await;
    assert_eq!(most, 2, "at most 2 at once, and the room used");
}

pub async fn a_worker_reports_its_attempts_to_the_stats(h: Harness) {
    let worker = Worker::start(h.dyn_store(), registry(), fast_config());
    let client = h.client();
    let mut jobs = vec![NewJob::new("noop", json!({})); 5];
    jobs.push(simulate(
        json!({"steps": 1, "step_ms": 1, "fail_attempts": 1, "permanent": true}),
    ));
    let ids = crate::support::enqueue_ids(&client, &jobs).await;
    wait_status(&client, ids[5], JobStatus::Failed).await;
    for id in &ids[..5] {
        wait_status(&client, *id, JobStatus::Success).await;
    }
    // Written within a second; shutdown writes what is left.
    worker.shutdown().await;
    let stats = h
        .dyn_store()
        .job_stats_recent(client.tenant(), Duration::from_secs(3600))
        .await
        .unwrap();
    let (completed, failed) = stats
        .per_minute
        .iter()
        .fold((0, 0), |(c, f), m| (c + m.completed, f + m.failed));
    assert_eq!((completed, failed), (5, 1));
    assert!(stats.wait_p50.is_some() && stats.run_p95.is_some());
}
