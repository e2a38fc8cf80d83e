//! One queue's fetch loop: lease jobs while there is room, start them, and sleep until
//! woken (a wake-up, a freed slot when more may be waiting, or the poll interval).
//!
//! **Leasing ahead.** A fetch is a round trip. A queue that leased only as many jobs as it
//! has free slots would leave its slots idle for one round trip per batch whenever jobs are
//! shorter than that. So a queue leases ahead, beyond its free slots, as many jobs as its
//! slots get through in two fetch round trips (from the recent average run time and fetch
//! time; at most `fetch_batch`). Those wait in a buffer that each ending job starts the
//! next one from, at once, while the next fetch is already on its way. Short jobs get deep
//! batches and a fetch always in flight; jobs slower than a round trip get nothing leased
//! ahead, so no process holds jobs that another process has room to run.

use std::collections::{HashMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::executor::{After, Ending, decide, run_attempt};
use super::running::Running;
use super::telemetry::Telemetry;
use crate::metric_labels::RunLabels;
use crate::store::{Completion, FetchParams, Lease, LeasedJob, Store};
use crate::worker::{JobContext, JobError, Registered};

/// What a queue's producer shares with the rest of the runtime.
pub(crate) struct QueueState {
    pub name: String,
    /// One permit per job that may run at once in this queue.
    pub slots: Arc<Semaphore>,
    pub wake: Notify,
    /// Set when the last fetch found jobs or a wake-up came while there was no room:
    /// a freed slot should then fetch again rather than wait for the poll.
    pub maybe_more: AtomicBool,
    /// Jobs leased ahead, in the order to start them, waiting for a slot.
    ready: Mutex<VecDeque<Prepared>>,
    /// Recent average run time of this queue's attempts, in µs (0: none yet).
    run_micros: AtomicU64,
    /// Recent average time of this queue's fetches, in µs.
    fetch_micros: AtomicU64,
    /// Slots: the concurrency.
    concurrency: usize,
}

impl QueueState {
    pub fn new(name: String, concurrency: usize) -> Arc<Self> {
        Arc::new(QueueState {
            name,
            slots: Arc::new(Semaphore::new(concurrency)),
            wake: Notify::new(),
            maybe_more: AtomicBool::new(true),
            ready: Mutex::default(),
            run_micros: AtomicU64::new(0),
            fetch_micros: AtomicU64::new(0),
            concurrency,
        })
    }

    /// How many jobs to hold leased ahead of the free slots: what the slots get through in
    /// two fetch round trips, at the recent averages, at most `most`. None before any
    /// attempt ended: a new queue assumes its jobs are slow.
    fn ahead(&self, most: usize) -> usize {
        let run = self.run_micros.load(Ordering::Relaxed);
        if run == 0 {
            return 0;
        }
        let fetch = self.fetch_micros.load(Ordering::Relaxed);
        let jobs = 2 * self.concurrency as u64 * fetch / run.max(1);
        (jobs as usize).min(most)
    }

    /// Takes the jobs leased ahead, not started, that were leased at least `waited` ago
    /// (all of them for `Duration::ZERO`); the buffer is in lease order.
    fn take_ready(&self, waited: Duration) -> Vec<Prepared> {
        let mut ready = self.ready.lock().unwrap();
        let young = ready
            .iter()
            .position(|p| p.leased_at.elapsed() < waited)
            .unwrap_or(ready.len());
        ready.drain(..young).collect()
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
    /// This worker's per-minute stats for `/stats`.
    pub telemetry: Arc<Telemetry>,
    pub completions: mpsc::UnboundedSender<Completion>,
    pub tasks: TaskTracker,
    /// Fired at shutdown: no more fetches, and no job leased ahead starts any more.
    pub stop_fetching: CancellationToken,
    pub worker_id: String,
    pub fetch_batch: usize,
    pub poll_interval: Duration,
    pub lease_ttl: Duration,
}

pub(crate) async fn run(shared: Arc<Shared>, queue: Arc<QueueState>, stop: CancellationToken) {
    loop {
        release_stale(&shared, &queue).await;
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
    // Jobs leased ahead first (held back while renewals failed, say).
    start_ready(shared, queue);
    while !stop.is_cancelled() && queue.maybe_more.swap(false, Ordering::AcqRel) {
        if shared.running.renewals_failing() {
            // Leases cannot be renewed now: taking more jobs would only add leases that
            // lapse. Look again at the next poll or once a renewal succeeds.
            queue.maybe_more.store(true, Ordering::Release);
            return;
        }
        let (mut any_found, mut out_of_room) = (false, false);
        for class in fetch_classes(shared) {
            let free = queue.slots.available_permits();
            let wanted = match &class.limited {
                // Free slots and the jobs to lease ahead, less those already leased ahead;
                // not before half of those are gone, so that fetches stay large.
                None => {
                    let ahead = queue.ahead(shared.fetch_batch);
                    let ready = queue.ready.lock().unwrap().len();
                    if ready > 0 && ready >= ahead / 2 {
                        0
                    } else {
                        (free + ahead).saturating_sub(ready).min(shared.fetch_batch)
                    }
                }
                // A limited type is never leased ahead: what it reserves must run now.
                Some((name, limit)) => shared.reserve(name, *limit, free.min(shared.fetch_batch)),
            };
            if wanted == 0 {
                out_of_room = true;
                continue;
            }
            let params = FetchParams {
                queue: queue.name.clone(),
                types: class.types,
                limit: wanted as i64,
                worker_id: shared.worker_id.clone(),
                lease_ttl: shared.lease_ttl,
            };
            let sent = std::time::Instant::now();
            let fetched = shared.store.job_fetch_available(&params).await;
            average(&queue.fetch_micros, sent.elapsed());
            let taken = fetched.as_ref().map_or(0, Vec::len);
            if let Some((name, _)) = &class.limited
                && wanted > taken
            {
                shared.unreserve(name, wanted - taken);
                // Room another queue may have found taken while this fetch held it.
                for other in shared.queues.iter().filter(|q| !Arc::ptr_eq(q, queue)) {
                    other.wake.notify_one();
                }
            }
            match fetched {
                Ok(jobs) => {
                    // Fewer than wanted does not mean the queue is empty: each tenant's
                    // share, or rows other workers were claiming, may have cut the fetch
                    // short. A fetch that finds nothing does.
                    any_found |= !jobs.is_empty();
                    take(shared, queue, jobs);
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
        if any_found {
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

/// The longest a job waits leased ahead for a slot: past it, it goes back to the queue
/// for any process with room (slow jobs took the slots the estimate counted on).
const MOST_AHEAD_WAIT: Duration = Duration::from_secs(1);

/// Gives back the jobs leased ahead that waited longer than [`MOST_AHEAD_WAIT`].
async fn release_stale(shared: &Shared, queue: &QueueState) {
    let stale = queue.take_ready(MOST_AHEAD_WAIT);
    if stale.is_empty() {
        return;
    }
    // The estimate leased too deep: count the queue's jobs as slow until its next attempts
    // say otherwise (a few dozen short ones bring the average back), so that it does not
    // lease as deep again at once.
    queue
        .run_micros
        .fetch_max(MOST_AHEAD_WAIT.as_micros() as u64, Ordering::Relaxed);
    match give_back(shared, stale).await {
        Ok(n) => {
            tracing::debug!(queue = %queue.name, released = n, "gave back jobs that waited leased ahead")
        }
        // Still leased and renewed: back at the head of the buffer, for a slot or the next
        // try, rather than left to lapse (the rescuer would count an attempt they never ran).
        Err((e, jobs)) => {
            tracing::warn!(queue = %queue.name, error = %e, "could not give back jobs leased ahead; keeping them");
            let mut ready = queue.ready.lock().unwrap();
            for p in jobs.into_iter().rev() {
                ready.push_front(p);
            }
        }
    }
}

/// Gives back every queue's jobs leased ahead, at shutdown: they have not started, so
/// they go back at once, not after the grace.
pub(crate) async fn give_back_all_ready(shared: &Shared) {
    let ready: Vec<Prepared> = shared
        .queues
        .iter()
        .flat_map(|q| q.take_ready(Duration::ZERO))
        .collect();
    if let Err((e, jobs)) = give_back(shared, ready).await {
        tracing::error!(error = %e, "could not release jobs leased ahead; the rescuer will retry them");
        forget(shared, &jobs);
    }
}

/// Gives back jobs leased ahead that never started, without using their attempt: their
/// leases released, then out of the running set with their type's room returned. When the
/// release fails they are handed back as they were, still leased and renewed.
async fn give_back(
    shared: &Shared,
    jobs: Vec<Prepared>,
) -> Result<u64, (crate::Error, Vec<Prepared>)> {
    if jobs.is_empty() {
        return Ok(0);
    }
    let leases: Vec<Lease> = jobs.iter().map(|p| p.lease).collect();
    match shared.store.job_release_many(&leases).await {
        Ok(n) => {
            forget(shared, &jobs);
            Ok(n)
        }
        Err(e) => Err((e, jobs)),
    }
}

/// Drops jobs that will not run here from the running set and returns their type's room.
fn forget(shared: &Shared, jobs: &[Prepared]) {
    for p in jobs {
        shared.running.remove(p.lease.job_id);
        shared.unreserve(&p.ctx.job().job_type, 1);
    }
}

/// Folds one more measurement into a recent average (an exponential moving average, with
/// a weight of 1/8 for the newest).
fn average(avg: &AtomicU64, took: Duration) {
    let new = (took.as_micros() as u64).max(1);
    let old = avg.load(Ordering::Relaxed);
    let next = if old == 0 {
        new
    } else {
        old - old / 8 + new / 8
    };
    avg.store(next.max(1), Ordering::Relaxed);
}

/// The time from `from` to `to`, none if `to` is earlier (clocks of two machines).
fn elapsed(from: chrono::DateTime<chrono::Utc>, to: chrono::DateTime<chrono::Utc>) -> Duration {
    (to - from).to_std().unwrap_or(Duration::ZERO)
}

/// A leased job ready to start: in the running set (so its lease is renewed, and
/// released at shutdown), with its handler.
struct Prepared {
    lease: Lease,
    ctx: JobContext,
    reg: Arc<Registered>,
    leased_at: std::time::Instant,
}

/// Adds fetched jobs to the running set, then starts as many as there are free slots; the
/// others wait, leased ahead, for the next slot that frees.
fn take(shared: &Arc<Shared>, queue: &Arc<QueueState>, jobs: Vec<LeasedJob>) {
    let mut ready = Vec::with_capacity(jobs.len());
    let leased_at = std::time::Instant::now();
    for leased in jobs {
        let Some(reg) = shared.handlers.get(&leased.job.job_type).cloned() else {
            continue; // unreachable: the fetch asked only for registered types
        };
        let lease = Lease {
            job_id: leased.job.job_id,
            token: leased.lease_token,
        };
        let ctx = JobContext::new(leased.job);
        shared.running.insert(lease, ctx.clone());
        ready.push(Prepared {
            lease,
            ctx,
            reg,
            leased_at,
        });
    }
    queue.ready.lock().unwrap().extend(ready);
    start_ready(shared, queue);
}

/// Starts jobs leased ahead while there are free slots: not once shutdown began (they are
/// released instead), nor while lease renewals fail (their leases may lapse and the jobs
/// run elsewhere; they start once a renewal succeeds).
fn start_ready(shared: &Arc<Shared>, queue: &Arc<QueueState>) {
    while !shared.stop_fetching.is_cancelled() && !shared.running.renewals_failing() {
        let Ok(permit) = queue.slots.clone().try_acquire_owned() else {
            return;
        };
        let Some(next) = queue.ready.lock().unwrap().pop_front() else {
            return;
        };
        start(shared, queue, next, permit);
    }
}

fn start(
    shared: &Arc<Shared>,
    queue: &Arc<QueueState>,
    job: Prepared,
    permit: OwnedSemaphorePermit,
) {
    let Prepared {
        lease, ctx, reg, ..
    } = job;
    if let Some(started) = ctx.job().started_at {
        let wait = elapsed(ctx.job().run_at, started);
        shared.telemetry.started(ctx.job().tenant_id, started, wait);
        let (type_label, queue_label) = shared.labels.of(&ctx.job().job_type, &queue.name);
        metrics::histogram!("forklift_job_wait_seconds", "type" => type_label, "queue" => queue_label)
            .record(wait.as_secs_f64());
    }
    let timeout = ctx
        .job()
        .timeout_seconds
        .map(|s| Duration::from_secs(s as u64))
        .or(reg.options.timeout);
    ctx.set_deadline(timeout);
    let (shared2, queue2) = (shared.clone(), queue.clone());
    let handle = shared.tasks.spawn(async move {
        // The handler runs under its own panic guard; this one catches the rest (a
        // handler future whose drop panics at its timeout): a panic here would leave the
        // job in the running set, renewed for ever, and its per-type room taken.
        let began = std::time::Instant::now();
        let ending = if ctx.is_cancelled() {
            // Cancelled while it waited, leased ahead (asked by a user, its lease lost, the
            // worker stopping): not run at all, and ended as that reason says.
            Ending::Returned(Err(
                JobError::permanent("cancelled before it started").with_code("cancelled")
            ))
        } else {
            AssertUnwindSafe(run_attempt(&*reg.handler, &ctx, timeout))
                .catch_unwind()
                .await
                .unwrap_or_else(|_| {
                    Ending::Panicked("the handler's future panicked when dropped".into())
                })
        };
        average(&queue2.run_micros, began.elapsed());
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
    shared: &Arc<Shared>,
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
                let now = chrono::Utc::now();
                let run = elapsed(started, now);
                shared.telemetry.ended(job.tenant_id, c.status, now, run);
                metrics::histogram!("forklift_job_run_seconds", "type" => job_type, "queue" => queue)
                    .record(run.as_secs_f64());
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
    start_ready(shared, queue);
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
