//! One queue's fetch loop: lease jobs while there is room, start them, and sleep until
//! woken (a wake-up, a freed slot when more may be waiting, or the poll interval).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::executor::{After, decide, run_attempt};
use super::running::Running;
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
    /// Running jobs per type, for per-type concurrency limits.
    pub per_type: Mutex<HashMap<String, usize>>,
}

impl QueueState {
    pub fn new(name: String, concurrency: usize) -> Arc<Self> {
        Arc::new(QueueState {
            name,
            slots: Arc::new(Semaphore::new(concurrency)),
            wake: Notify::new(),
            maybe_more: AtomicBool::new(true),
            per_type: Mutex::default(),
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
        let (mut any_full, mut out_of_room) = (false, false);
        for (types, room) in fetch_classes(shared, queue) {
            let free = queue
                .slots
                .available_permits()
                .min(room)
                .min(shared.fetch_batch);
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
                types,
                limit: free as i64,
                worker_id: shared.worker_id.clone(),
                lease_ttl: shared.lease_ttl,
            };
            match shared.store.job_fetch_available(&params).await {
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

/// Groups the registered types by the room they have: all types without a limit in one
/// fetch, each limited type in its own, capped by its remaining room.
fn fetch_classes(shared: &Shared, queue: &QueueState) -> Vec<(Vec<String>, usize)> {
    let per_type = queue.per_type.lock().unwrap();
    let mut unlimited = Vec::new();
    let mut classes = Vec::new();
    for (name, reg) in &shared.handlers {
        match reg.options.concurrency {
            None => unlimited.push(name.clone()),
            Some(limit) => {
                let room = limit.saturating_sub(per_type.get(name).copied().unwrap_or(0));
                if room > 0 {
                    classes.push((vec![name.clone()], room));
                }
            }
        }
    }
    if !unlimited.is_empty() {
        classes.insert(0, (unlimited, usize::MAX));
    }
    classes
}

fn start_all(
    shared: &Arc<Shared>,
    queue: &Arc<QueueState>,
    jobs: Vec<LeasedJob>,
    mut permits: OwnedSemaphorePermit,
) {
    for leased in jobs {
        let permit = permits.split(1).expect("one permit per fetched job");
        *queue
            .per_type
            .lock()
            .unwrap()
            .entry(leased.job.job_type.clone())
            .or_default() += 1;
        let Some(reg) = shared.handlers.get(&leased.job.job_type).cloned() else {
            continue; // unreachable: the fetch asked only for registered types
        };
        let lease = Lease {
            job_id: leased.job.job_id,
            token: leased.lease_token,
        };
        let timeout = leased
            .job
            .timeout_seconds
            .map(|s| Duration::from_secs(s as u64))
            .or(reg.options.timeout);
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        let ctx = JobContext::new(leased.job, deadline);
        shared.running.insert(lease, ctx.clone());
        let (shared2, queue2) = (shared.clone(), queue.clone());
        let handle = shared.tasks.spawn(async move {
            let ending = run_attempt(&*reg.handler, &ctx, timeout).await;
            let after = decide(
                ctx.job(),
                lease,
                ending,
                ctx.cancel_reason(),
                &reg.options.backoff,
                ctx.take_result(),
                Some(ctx.latest_progress()),
            );
            finish(&shared2, &queue2, &ctx, after, permit).await;
        });
        shared
            .running
            .set_abort(lease.job_id, handle.abort_handle());
    }
    // Permits left over (fewer jobs than asked for) return to the queue here.
    drop(permits);
}

async fn finish(
    shared: &Shared,
    queue: &QueueState,
    ctx: &JobContext,
    after: After,
    permit: OwnedSemaphorePermit,
) {
    shared.running.remove(ctx.job_id());
    match after {
        After::Complete(c) => {
            let _ = shared.completions.send(c);
        }
        After::Release(lease) => {
            if let Err(e) = shared.store.job_release_many(&[lease]).await {
                tracing::warn!(job_id = %lease.job_id, error = %e, "could not release job; the rescuer will");
            }
        }
        After::Discard => {
            tracing::warn!(job_id = %ctx.job_id(), "attempt finished after its lease was lost; result dropped");
        }
    }
    if let Some(n) = queue.per_type.lock().unwrap().get_mut(&ctx.job().job_type) {
        *n = n.saturating_sub(1);
    }
    drop(permit);
    if queue.maybe_more.load(Ordering::Acquire) {
        queue.wake.notify_one();
    }
}
