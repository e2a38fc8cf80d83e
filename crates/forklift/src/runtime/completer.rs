//! Writes finished attempts in batches: whatever gathered while the previous write was
//! in flight goes in the next one, so one round trip finishes many jobs under load and a
//! lone job still finishes at once.
//!
//! One completion the database refuses must not hold up the others: a refused batch is
//! split in halves until the refused completion stands alone, and that one is written as
//! a failure of its job (`unstorable_outcome`) instead. An unreachable database is waited
//! out, since then every write would fail alike; any other error (a deadlock, a full disk)
//! is retried a few times, then the batch is split, and a lone completion that still
//! fails is left to its lease, so a passing fault never fails a job that did its work.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::error::Error;
use crate::store::{Completion, Store};

/// The most completions in one statement.
const MAX_BATCH: usize = 2_000;

/// Tries of a group whose write fails for a reason that is neither an unreachable
/// database nor a refused value, before it is split (or, alone, left to its lease).
const OTHER_TRIES: u32 = 5;

/// Runs until every sender is dropped and everything received is written.
pub(crate) async fn run(store: Arc<dyn Store>, mut rx: mpsc::UnboundedReceiver<Completion>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        write(&*store, std::mem::take(&mut batch), rx.is_closed()).await;
    }
}

/// Writes `batch`, isolating any completion the database refuses.
pub(crate) async fn write(store: &dyn Store, batch: Vec<Completion>, closing: bool) {
    let mut groups = vec![batch];
    while let Some(mut group) = groups.pop() {
        let Err(refusal) = write_group(store, &group, closing).await else {
            continue;
        };
        if group.len() > 1 {
            let second = group.split_off(group.len() / 2);
            groups.push(second);
            groups.push(group);
            continue;
        }
        let refused = &group[0];
        tracing::error!(job_id = %refused.lease.job_id, error = %refusal, "the database refused a completion; failing the job instead");
        let failure = refused.unstorable(&refusal);
        if let Err(e) = write_group(store, std::slice::from_ref(&failure), closing).await {
            // Left to its lease: the rescuer retries or fails the job.
            tracing::error!(job_id = %refused.lease.job_id, error = %e, "could not record the failure either");
        }
    }
}

/// Writes one group: `Ok` once written (or given up: at shutdown, or a lone completion
/// failing for a reason other than its values); `Err` when the group should be split, or
/// with the refusal of a lone completion's values.
async fn write_group(store: &dyn Store, group: &[Completion], closing: bool) -> Result<(), Error> {
    let mut delay = Duration::from_millis(50);
    let mut others = 0;
    for attempt in 1.. {
        match store.job_complete_many(group).await {
            Ok(accepted) => {
                if accepted.len() < group.len() {
                    for c in group.iter().filter(|c| !accepted.contains(&c.lease.job_id)) {
                        // Another worker or the rescuer owns the job now; our result is dropped.
                        tracing::warn!(job_id = %c.lease.job_id, status = %c.status, "completion rejected: the lease was lost");
                    }
                }
                return Ok(());
            }
            Err(e) if e.is_unreachable() => {
                // Keep the group and try again: while the database is away the leases run
                // on, and if they lapse first, the rescuer retries the jobs (at least once).
                tracing::warn!(error = %e, attempt, jobs = group.len(), "could not write completions; retrying");
                if closing && attempt >= 20 {
                    tracing::error!(
                        jobs = group.len(),
                        "giving up on completions at shutdown; the rescuer will retry these jobs"
                    );
                    return Ok(());
                }
            }
            // A value the database refuses: split the group until the refused completion
            // stands alone (then it is written as a failure of its job).
            Err(e) if e.is_refused_value() => return Err(e),
            // Anything else (a deadlock, a serialization failure, a full disk) may pass:
            // try again; a group that keeps failing is split, and a lone completion that
            // keeps failing is left to its lease (the rescuer runs the job again) rather
            // than failed for a fault that was not its own.
            Err(e) => {
                others += 1;
                tracing::warn!(error = %e, attempt, jobs = group.len(), "could not write completions; retrying");
                if others >= OTHER_TRIES {
                    if group.len() > 1 {
                        return Err(e);
                    }
                    tracing::error!(job_id = %group[0].lease.job_id, error = %e, "giving up on a completion; the rescuer will retry its job");
                    return Ok(());
                }
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
    unreachable!("the loop returns")
}
