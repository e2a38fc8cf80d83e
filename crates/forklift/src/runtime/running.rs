//! The jobs this process is running: their leases, contexts and tasks.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Notify;
use tokio::task::AbortHandle;

use crate::job::JobId;
use crate::store::{Lease, ProgressUpdate};
use crate::worker::{CancelReason, JobContext};

/// One running job.
pub(crate) struct RunningJob {
    pub lease: Lease,
    pub ctx: JobContext,
    pub abort: Option<AbortHandle>,
}

/// The running set, shared by the producers (add), executors (remove), the lease keeper
/// (renew, cancel) and shutdown (drain).
#[derive(Default)]
pub(crate) struct Running {
    jobs: Mutex<HashMap<JobId, RunningJob>>,
    emptied: Notify,
    /// Set by the keeper while lease renewals fail; producers take no new jobs then.
    renewals_failing: AtomicBool,
}

impl Running {
    pub fn renewals_failing(&self) -> bool {
        self.renewals_failing.load(Ordering::Acquire)
    }

    /// Records whether the last renewal failed; returns whether that changed.
    pub fn set_renewals_failing(&self, failing: bool) -> bool {
        self.renewals_failing.swap(failing, Ordering::AcqRel) != failing
    }

    pub fn insert(&self, lease: Lease, ctx: JobContext) {
        self.jobs.lock().unwrap().insert(
            lease.job_id,
            RunningJob {
                lease,
                ctx,
                abort: None,
            },
        );
    }

    /// Records the task, unless the job already finished (its task can be that quick).
    pub fn set_abort(&self, id: JobId, abort: AbortHandle) {
        if let Some(job) = self.jobs.lock().unwrap().get_mut(&id) {
            job.abort = Some(abort);
        }
    }

    pub fn remove(&self, id: JobId) -> Option<RunningJob> {
        let mut jobs = self.jobs.lock().unwrap();
        let removed = jobs.remove(&id);
        if jobs.is_empty() {
            self.emptied.notify_waiters();
        }
        removed
    }

    pub fn len(&self) -> usize {
        self.jobs.lock().unwrap().len()
    }

    pub fn leases(&self) -> Vec<Lease> {
        self.jobs
            .lock()
            .unwrap()
            .values()
            .map(|j| j.lease)
            .collect()
    }

    /// Fires the job's token if it runs here.
    pub fn cancel(&self, id: JobId, reason: CancelReason) {
        if let Some(job) = self.jobs.lock().unwrap().get(&id) {
            job.ctx.cancel(reason);
        }
    }

    pub fn cancel_all(&self, reason: CancelReason) {
        for job in self.jobs.lock().unwrap().values() {
            job.ctx.cancel(reason);
        }
    }

    pub fn abort_all(&self) {
        for job in self.jobs.lock().unwrap().values() {
            if let Some(abort) = &job.abort {
                abort.abort();
            }
        }
    }

    /// The progress that changed since the last call, for one batched write.
    pub fn progress_updates(&self) -> Vec<ProgressUpdate> {
        let jobs = self.jobs.lock().unwrap();
        jobs.values()
            .filter_map(|j| {
                j.ctx.take_progress().map(|progress| ProgressUpdate {
                    lease: j.lease,
                    progress,
                })
            })
            .collect()
    }

    /// Resolves once nothing runs.
    pub async fn wait_empty(&self) {
        loop {
            let emptied = self.emptied.notified();
            if self.jobs.lock().unwrap().is_empty() {
                return;
            }
            emptied.await;
        }
    }

    pub fn drain(&self) -> Vec<RunningJob> {
        self.jobs.lock().unwrap().drain().map(|(_, j)| j).collect()
    }
}
