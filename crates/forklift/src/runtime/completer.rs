//! Writes finished attempts in batches: whatever gathered while the previous write was
//! in flight goes in the next one, so one round trip finishes many jobs under load and a
//! lone job still finishes at once.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::store::{Completion, Store};

/// The most completions in one statement.
const MAX_BATCH: usize = 2_000;

/// Runs until every sender is dropped and everything received is written.
pub(crate) async fn run(store: Arc<dyn Store>, mut rx: mpsc::UnboundedReceiver<Completion>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        write(&*store, &batch, rx.is_closed()).await;
        batch.clear();
    }
}

async fn write(store: &dyn Store, batch: &[Completion], closing: bool) {
    let mut delay = Duration::from_millis(50);
    for attempt in 1.. {
        match store.job_complete_many(batch).await {
            Ok(accepted) => {
                if accepted.len() < batch.len() {
                    for c in batch.iter().filter(|c| !accepted.contains(&c.lease.job_id)) {
                        // Another worker or the rescuer owns the job now; our result is dropped.
                        tracing::warn!(job_id = %c.lease.job_id, status = %c.status, "completion rejected: the lease was lost");
                    }
                }
                return;
            }
            Err(e) => {
                // Keep the batch and try again: while the database is away the leases run
                // on, and if they lapse first, the rescuer retries the jobs (at least once).
                tracing::warn!(error = %e, attempt, jobs = batch.len(), "could not write completions; retrying");
                if closing && attempt >= 20 {
                    tracing::error!(
                        jobs = batch.len(),
                        "giving up on completions at shutdown; the rescuer will retry these jobs"
                    );
                    return;
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}
