//! One queue's fetch loop: lease jobs while there is room, start them, and sleep until
//! woken (a wake-up, a freed slot when more may be waiting, or the poll interval).

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::executor::{After, Ending, decide, run_attempt};
use super::running::Running;
use crate::metric_labels::RunLabels;
use crate::store::{Completion, FetchParams, Lease, LeasedJob, Store};
use crate::worker::{JobContext, Registered};

/// What a queue's producer shares with the rest of the runtime.
pub(crate) struct QueueState {
    pub name: String,
    /// One permit per job that may run at once in this queue.
    pub slots: Arc<Semaphore>,
    pub wake: Notify,
    /// Set when the last fetch was full or a wake-up came while there was no room:
    /// a freed slot should then fetch again rather than wait for the poll.
    pub maybe_more: AtomicBool,
}

impl QueueState {
    pub fn new(name: String, concurrency: usize) -> Arc<Self> {
        Arc::new(QueueState {
            name,
            slots: Arc::new(Semaphore::new(concurrency)),
            wake: Notify::new(),
            maybe_more: AtomicBool::new(true),
        })
    }

    pub fn poke(&self) {
        self.maybe_more.store(true, Ordering::Release);
        self.wake.notify_one();
    }
}

/// Everything a producer needs, shared by all of a worker's producers.
pub(crate) struct Shared {
    pub store: Arc<dyn Store>,
    pub handlers: HashMap<String, Arc<Registered>>,
    pub running: Arc<Running>,
    /// Jobs of each type with a concurrency limit running (or being fetched) in this
    /// process, across all its queues: the limit is per process, whatever the queue.
    pub per_type: Mutex<HashMap<String, usize>>,
    /// Every queue's state: room a limited type frees in one queue may be what another
    /// queue's producer waits for.
    pub queues: Vec<Arc<QueueState>>,
    /// The labels of this worker's metrics.
    pub labels: RunLabels,
    pub completions: mpsc::UnboundedSender<Completion>,
    pub tasks: TaskTracker,
    pub worker_id: String,
    pub fetch_batch: usize,
    pub poll_interval: Duration,
    pub lease_ttl: Duration,
}

pub(crate) async fn run(shared: Arc<Shared>, queue: Arc<QueueState>, stop: CancellationToken) {
    loop {
        fill(&shared, &queue, &stop).await;
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = queue.wake.notified() => {}
            _ = tokio::time::sleep(shared.poll_interval) => { queue.maybe_more.store(true, Ordering::Release); }
        }
    }
}

/// Fetches until the queue is empty or there is no room left.
async fn fill(shared: &Arc<Shared>, queue: &Arc<QueueState>, stop: &CancellationToken) {
    while !stop.is_cancelled() && queue.maybe_more.swap(false, Ordering::AcqRel) {
        if shared.running.renewals_failing() {
            // Leases cannot be renewed now: taking more jobs would only add leases that
            // lapse. Look again at the next poll or once a renewal succeeds.
            queue.maybe_more.store(true, Ordering::Release);
            return;
        }
        let (mut any_full, mut out_of_room) = (false, false);
        for class in fetch_classes(shared) {
            let free = queue.slots.available_permits().min(shared.fetch_batch);
            let free = match &class.limited {
                None => free,
                Some((name, limit)) => shared.reserve(name, *limit, free),
            };
            if free == 0 {
                out_of_room = true;
                continue;
            }
            let permits = queue
                .slots
                .clone()
                .try_acquire_many_owned(free as u32)
                .expect("permits were available");
            let params = FetchParams {
                queue: queue.name.clone(),
                types: class.types,
                limit: free as i64,
                worker_id: shared.worker_id.clone(),
                lease_ttl: shared.lease_ttl,
            };
            let fetched = shared.store.job_fetch_available(&params).await;
            let taken = fetched.as_ref().map_or(0, Vec::len);
            if let Some((name, _)) = &class.limited
                && free > taken
            {
                shared.unreserve(name, free - taken);
                // Room another queue may have found taken while this fetch held it.
                for other in shared.queues.iter().filter(|q| !Arc::ptr_eq(q, queue)) {
                    other.wake.notify_one();
                }
            }
            match fetched {
                Ok(jobs) => {
                    any_full |= jobs.len() == free;
                    start_all(shared, queue, jobs, permits);
                }
                Err(e) => {
                    tracing::warn!(queue = %queue.name, error = %e, "fetch failed; retrying at the next poll");
                    return;
                }
            }
        }
        if out_of_room {
            // A freed slot fetches again (see `finish`); until then there is nothing to do.
            queue.maybe_more.store(true, Ordering::Release);
            return;
        }
        if any_full {
            queue.maybe_more.store(true, Ordering::Release);
        }
    }
}

/// Types fetched together: all types without a limit in one fetch, each limited type in
/// its own, capped by the room its limit leaves.
struct FetchClass {
    types: Vec<String>,
    /// The type's name and limit, when the class is one limited type.
    limited: Option<(String, usize)>,
}

fn fetch_classes(shared: &Shared) -> Vec<FetchClass> {
    let mut unlimited = Vec::new();
    let mut classes = Vec::new();
    for (name, reg) in &shared.handlers {
        match reg.options.concurrency {
            None => unlimited.push(name.clone()),
            Some(limit) => classes.push(FetchClass {
                types: vec![name.clone()],
                limited: Some((name.clone(), limit)),
            }),
        }
    }
    if !unlimited.is_empty() {
        classes.insert(
            0,
            FetchClass {
                types: unlimited,
                limited: None,
            },
        );
    }
    classes
}

impl Shared {
    /// Counts up to `wanted` more jobs of a limited type as running before they are
    /// fetched, so that two queues fetching at once cannot both fill the same room.
    /// Returns how many were counted.
    fn reserve(&self, job_type: &str, limit: usize, wanted: usize) -> usize {
        let mut per_type = self.per_type.lock().unwrap();
        let n = per_type.entry(job_type.to_string()).or_default();
        let room = limit.saturating_sub(*n).min(wanted);
        *n += room;
        room
    }

    /// Gives back what was counted and did not run (a fetch that found fewer, a job done).
    fn unreserve(&self, job_type: &str, count: usize) {
        if let Some(n) = self.per_type.lock().unwrap().get_mut(job_type) {
            *n = n.saturating_sub(count);
        }
    }
}

fn start_all(
    shared: &Arc<Shared>,
    queue: &Arc<QueueState>,
    jobs: Vec<LeasedJob>,
    mut permits: OwnedSemaphorePermit,
) {
    for leased in jobs {
        let permit = permits.split(1).expect("one permit per fetched job");
        let Some(reg) = shared.handlers.get(&leased.job.job_type).cloned() else {
            continue; // unreachable: the fetch asked only for registered types
        };
        let lease = Lease {
            job_id: leased.job.job_id,
            token: leased.lease_token,
        };
        if let Some(started) = leased.job.started_at {
            let wait = (started - leased.job.run_at)
                .num_microseconds()
                .unwrap_or(0)
                .max(0) as f64
                / 1e6;
            let (type_label, queue_label) = shared.labels.of(&leased.job.job_type, &queue.name);
            metrics::histogram!("forklift_job_wait_seconds", "type" => type_label, "queue" => queue_label)
                .record(wait);
        }
        let timeout = leased
            .job
            .timeout_seconds
            .map(|s| Duration::from_secs(s as u64))
            .or(reg.options.timeout);
        // A timeout past what an Instant can hold means none (adding would panic).
        let deadline = timeout.and_then(|t| tokio::time::Instant::now().checked_add(t));
        let ctx = JobContext::new(leased.job, deadline);
        shared.running.insert(lease, ctx.clone());
        let (shared2, queue2) = (shared.clone(), queue.clone());
        let handle = shared.tasks.spawn(async move {
            // The handler runs under its own panic guard; this one catches the rest (a
            // handler future whose drop panics at its timeout): a panic here would leave the
            // job in the running set, renewed for ever, and its per-type room taken.
            let ending = AssertUnwindSafe(run_attempt(&*reg.handler, &ctx, timeout))
                .catch_unwind()
                .await
                .unwrap_or_else(|_| {
                    Ending::Panicked("the handler's future panicked when dropped".into())
                });
            let after = std::panic::catch_unwind(AssertUnwindSafe(|| {
                decide(
                    ctx.job(),
                    lease,
                    ending,
                    ctx.cancel_reason(),
                    &reg.options.backoff,
                    ctx.take_result(),
                    Some(ctx.latest_progress()),
                )
            }))
            .unwrap_or_else(|_| After::Complete(internal_failure(ctx.job(), lease)));
            finish(&shared2, &queue2, &ctx, after, permit);
        });
        shared
            .running
            .set_abort(lease.job_id, handle.abort_handle());
    }
    // Permits left over (fewer jobs than asked for) return to the queue here.
    drop(permits);
}

/// The end of an attempt whose outcome could not be decided (a bug in the runtime, caught
/// rather than leaving the job running for ever): failed, retryable.
fn internal_failure(job: &crate::job::Job, lease: Lease) -> Completion {
    let next = if job.attempt < job.max_attempts {
        (crate::job::JobStatus::Queued, Duration::from_secs(1))
    } else {
        (crate::job::JobStatus::Failed, Duration::ZERO)
    };
    Completion::by_runtime(
        lease,
        job.attempt,
        next,
        "internal_error",
        "the worker failed while ending this attempt",
    )
}

fn finish(
    shared: &Shared,
    queue: &Arc<QueueState>,
    ctx: &JobContext,
    after: After,
    permit: OwnedSemaphorePermit,
) {
    // No await in here: shutdown may abort this task at any await, and a job must never be
    // half-finished (out of the running set, yet not handed to the completer).
    let job = ctx.job();
    match after {
        After::Complete(c) => {
            shared.running.remove(ctx.job_id());
            let (job_type, queue) = shared.labels.of(&job.job_type, &job.queue);
            let labels = [
                ("type", job_type.clone()),
                ("queue", queue.clone()),
                ("status", c.status.as_str().to_string()),
            ];
            metrics::counter!("forklift_jobs_finished_total", &labels).increment(1);
            if let Some(started) = job.started_at {
                let run = (chrono::Utc::now() - started)
                    .num_microseconds()
                    .unwrap_or(0)
                    .max(0) as f64
                    / 1e6;
                metrics::histogram!("forklift_job_run_seconds", "type" => job_type, "queue" => queue)
                    .record(run);
            }
            let _ = shared.completions.send(c);
        }
        // Shutting down: the job stays in the running set, and shutdown releases every
        // job left there in one statement.
        After::Release(_) => {}
        After::Discard => {
            shared.running.remove(ctx.job_id());
            tracing::warn!(job_id = %ctx.job_id(), "attempt finished after its lease was lost; result dropped");
        }
    }
    shared.unreserve(&job.job_type, 1);
    drop(permit);
    let limited = shared
        .handlers
        .get(&job.job_type)
        .is_some_and(|r| r.options.concurrency.is_some());
    let waiting: &[Arc<QueueState>] = if limited {
        &shared.queues
    } else {
        std::slice::from_ref(queue)
    };
    // Unconditionally: a producer that has just found no room but not yet said so would
    // miss a wake-up sent only when it had (`Notify` keeps one permit for it).
    for q in waiting {
        q.wake.notify_one();
    }
}
