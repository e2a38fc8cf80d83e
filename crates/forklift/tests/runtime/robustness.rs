//! The runtime when something goes wrong around a job: an outcome the database refuses or
//! cannot store, times past any calendar, renewals that fail, a worker dropped without a
//! shutdown, and per-type limits across queues.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use forklift::{
    Backoff, Handler, HandlerResult, JobContext, JobError, JobStatus, NewJob, Outcome, QueueConfig,
    Registry, TypeOptions, Worker, WorkerConfig, builtin,
};
use serde_json::json;

use crate::support::{Harness, enqueue_ids, fast_config, wait_for, wait_status};

/// Ends its attempt as its payload says: `{"result": ..}` succeeds with that result,
/// `{"error": ".."}` fails permanently (with a NUL character after the text, which no
/// payload can carry), `{"snooze": true}` snoozes past any calendar,
/// `{"retry": true}` fails retryably (its type's back-off decides when it runs again).
struct Scripted;

impl Handler for Scripted {
    type Payload = serde_json::Value;
    async fn run(&self, payload: serde_json::Value, ctx: JobContext) -> HandlerResult {
        if let Some(result) = payload.get("result") {
            ctx.set_result(result);
        }
        if let Some(message) = payload.get("error").and_then(|e| e.as_str()) {
            ctx.set_result(&json!({"half": "made"}));
            return Err(JobError::permanent(format!("{message}\0byte")));
        }
        if payload.get("snooze").is_some() {
            return Ok(Outcome::Snooze(Duration::MAX));
        }
        if payload.get("retry").is_some() {
            return Err(JobError::retryable("again"));
        }
        Ok(Outcome::Success)
    }
}

fn scripted_registry() -> Registry {
    let mut r = Registry::new();
    r.register("noop", builtin::Noop);
    r.register_with(
        "scripted",
        Scripted,
        TypeOptions {
            backoff: Backoff {
                base: Duration::MAX,
                cap: Duration::MAX,
                jitter: 0.5,
            },
            ..TypeOptions::default()
        },
    );
    r
}

fn scripted(payload: serde_json::Value) -> NewJob {
    NewJob::new("scripted", payload)
}

/// Enqueues `first` and three noop jobs behind it; waits until the noop jobs succeed,
/// each at its first attempt, and returns `first`'s id.
async fn beside_three_noops(h: &Harness, first: NewJob) -> forklift::JobId {
    let client = h.client();
    let mut jobs = vec![first];
    jobs.extend(vec![NewJob::new("noop", json!({})); 3]);
    let ids = enqueue_ids(&client, &jobs).await;
    for id in &ids[1..] {
        let job = wait_status(&client, *id, JobStatus::Success).await;
        assert_eq!(job.attempt, 1);
    }
    ids[0]
}

pub async fn an_error_message_with_a_nul_character_fails_only_its_job(h: Harness) {
    let worker = Worker::start(h.dyn_store(), scripted_registry(), fast_config());
    let id = beside_three_noops(&h, scripted(json!({"error": "bad"}))).await;
    let job = wait_status(&h.client(), id, JobStatus::Failed).await;
    assert_eq!(job.attempt, 1);
    assert_eq!(job.errors[0].message, "bad\u{FFFD}byte");
    assert_eq!(job.result, None, "a failed attempt stores no result");
    worker.shutdown().await;
}

pub async fn a_completion_the_database_refuses_fails_that_job_and_not_the_others(h: Harness) {
    h.refuse_updates_when(
        "new.result ? 'poison'",
        "json_extract(new.result, '$.poison') is not null",
    )
    .await;
    let worker = Worker::start(h.dyn_store(), scripted_registry(), fast_config());
    let id = beside_three_noops(&h, scripted(json!({"result": {"poison": 1}}))).await;
    let job = wait_status(&h.client(), id, JobStatus::Failed).await;
    assert_eq!(job.attempt, 1, "not run again");
    assert_eq!(job.errors[0].code, "unstorable_outcome");
    assert!(
        job.errors[0].message.contains("refused"),
        "{:?}",
        job.errors
    );
    assert_eq!(job.result, None);
    worker.shutdown().await;
}

/// An error about no value (here a read-only database, for longer than the completer's
/// first retries) must neither split the batch into a write per job nor give any job up:
/// once writes work again, every job ends at its first attempt.
pub async fn completions_failing_for_a_while_all_land_once_writes_work_again(h: Harness) {
    let worker = Worker::start(h.dyn_store(), scripted_registry(), fast_config());
    h.fail_updates_when("new.status = 'SUCCESS'").await;
    let client = h.client();
    let ids = enqueue_ids(&client, &vec![NewJob::new("noop", json!({})); 40]).await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    h.allow_updates().await;
    for id in ids {
        let job = wait_status(&client, id, JobStatus::Success).await;
        assert_eq!(job.attempt, 1);
    }
    worker.shutdown().await;
}

pub async fn snoozes_and_back_offs_past_any_calendar_wait_at_most_ten_years(h: Harness) {
    let worker = Worker::start(h.dyn_store(), scripted_registry(), fast_config());
    let client = h.client();
    for payload in [json!({"snooze": true}), json!({"retry": true})] {
        let id = client.enqueue(scripted(payload)).await.unwrap().job.job_id;
        let job = wait_for(&client, id, "put off", |j| {
            j.status == JobStatus::Queued && j.started_at.is_some_and(|s| j.run_at > s)
        })
        .await;
        // Ten years, less the back-off's jitter (up to half here), never more.
        let ahead = (job.run_at - chrono::Utc::now()).num_days();
        assert!((1_800..=3_651).contains(&ahead), "{ahead} days ahead");
    }
    worker.shutdown().await;
}

/// Works until its token fires.
struct Patient;

impl Handler for Patient {
    type Payload = serde_json::Value;
    async fn run(&self, _: serde_json::Value, ctx: JobContext) -> HandlerResult {
        ctx.cancelled().await;
        Err(JobError::retryable("stopped"))
    }
}

pub async fn a_dropped_worker_stops_fetching_and_releases_its_jobs(h: Harness) {
    let mut registry = Registry::new();
    registry.register("patient", Patient);
    registry.register("noop", builtin::Noop);
    let worker = Worker::start(h.dyn_store(), registry, fast_config());
    let client = h.client();
    let id = client
        .enqueue(NewJob::new("patient", json!({})))
        .await
        .unwrap()
        .job
        .job_id;
    wait_status(&client, id, JobStatus::Running).await;
    drop(worker);
    let job = wait_status(&client, id, JobStatus::Queued).await;
    assert_eq!(job.attempt, 0, "released without using an attempt");
    let later = client
        .enqueue(NewJob::new("noop", json!({})))
        .await
        .unwrap()
        .job
        .job_id;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(client.get(later).await.unwrap().status, JobStatus::Queued);
    assert_eq!(client.get(id).await.unwrap().status, JobStatus::Queued);
}

/// Counts how many of its jobs run at once, and the most there ever were.
#[derive(Clone, Default)]
struct Gauge {
    now: Arc<AtomicUsize>,
    most: Arc<AtomicUsize>,
}

impl Gauge {
    fn most(&self) -> usize {
        self.most.load(Ordering::SeqCst)
    }
}

impl Handler for Gauge {
    type Payload = serde_json::Value;
    async fn run(&self, _: serde_json::Value, _: JobContext) -> HandlerResult {
        let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(n, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(150)).await;
        self.now.fetch_sub(1, Ordering::SeqCst);
        Ok(Outcome::Success)
    }
}

/// Runs one `gauged` job per entry of `job_queues` (in that queue), at most `limit` at
/// once, on a worker with `config`; waits until all succeed; returns the most that ran at
/// once (counted in the handler: a job's row stays RUNNING a moment after its slot is free).
pub async fn most_at_once(
    h: &Harness,
    limit: usize,
    config: WorkerConfig,
    job_queues: &[&str],
) -> usize {
    let gauge = Gauge::default();
    let mut registry = Registry::new();
    registry.register_with(
        "gauged",
        gauge.clone(),
        TypeOptions {
            concurrency: Some(limit),
            ..TypeOptions::default()
        },
    );
    let worker = Worker::start(h.dyn_store(), registry, config);
    let client = h.client();
    let jobs: Vec<NewJob> = job_queues
        .iter()
        .map(|q| NewJob::new("gauged", json!({})).queue(*q))
        .collect();
    for id in enqueue_ids(&client, &jobs).await {
        wait_status(&client, id, JobStatus::Success).await;
    }
    worker.shutdown().await;
    gauge.most()
}

pub async fn per_type_concurrency_is_per_process_across_queues(h: Harness) {
    let config = WorkerConfig {
        queues: ["a", "b", "c"]
            .into_iter()
            .map(|q| QueueConfig::new(q, 10))
            .collect(),
        ..fast_config()
    };
    let most = most_at_once(&h, 1, config, &["a", "b", "c", "a", "b", "c"]).await;
    assert_eq!(most, 1);
}

pub async fn a_worker_whose_lease_renewals_fail_takes_no_new_jobs_until_they_succeed(h: Harness) {
    let mut registry = Registry::new();
    registry.register("patient", Patient);
    registry.register("noop", builtin::Noop);
    let worker = Worker::start(h.dyn_store(), registry, fast_config());
    let client = h.client();
    let patient = client
        .enqueue(NewJob::new("patient", json!({})))
        .await
        .unwrap()
        .job
        .job_id;
    wait_status(&client, patient, JobStatus::Running).await;
    let renewal = "old.status = 'RUNNING' and new.status = 'RUNNING' \
                   and new.lease_expires_at <> old.lease_expires_at";
    h.refuse_updates_when(renewal, renewal).await;
    tokio::time::sleep(Duration::from_millis(700)).await; // heartbeats every 200 ms
    let waiting = client
        .enqueue(NewJob::new("noop", json!({})))
        .await
        .unwrap()
        .job
        .job_id;
    tokio::time::sleep(Duration::from_millis(700)).await; // polls every 100 ms
    assert_eq!(
        client.get(waiting).await.unwrap().status,
        JobStatus::Queued,
        "no new job while renewals fail"
    );
    h.allow_updates().await;
    wait_status(&client, waiting, JobStatus::Success).await;
    client.cancel(patient).await.unwrap();
    wait_status(&client, patient, JobStatus::Cancelled).await;
    worker.shutdown().await;
}

pub async fn room_a_limited_type_frees_in_one_queue_wakes_the_others(h: Harness) {
    // A poll far longer than the test: only a wake-up can start the other queue's jobs.
    let config = WorkerConfig {
        queues: vec![QueueConfig::new("a", 10), QueueConfig::new("b", 10)],
        poll_interval: Duration::from_secs(60),
        ..fast_config()
    };
    assert_eq!(most_at_once(&h, 1, config, &["a", "b", "a", "b"]).await, 1);
}
