//! Writes finished attempts in batches: whatever gathered while the previous write was
//! in flight goes in the next one, so one round trip finishes many jobs under load and a
//! lone job still finishes at once.
//!
//! One completion the database refuses must not hold up the others: a refused batch is
//! split in halves until the refused completion stands alone, and that one is written as
//! a failure of its job (`unstorable_outcome`) instead. Any other error (the database
//! away, a deadlock, a full disk) is about no one completion: the batch is retried whole
//! until it goes through, so a passing fault never fails a job that did its work.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::error::Error;
use crate::store::{Completion, Store};

/// The most completions in one statement.
const MAX_BATCH: usize = 2_000;

/// The most bytes of results and errors in one statement: far below PostgreSQL's 1 GiB
/// message, so that many large results never make a batch no write can carry.
const MAX_BATCH_BYTES: usize = 32 << 20;

/// The largest result and errors one completion may store; a larger outcome fails its job
/// (a large result belongs in a file, with its URL in `result_url`).
pub const MAX_OUTCOME_BYTES: usize = 16 << 20;

/// Runs until every sender is dropped and everything received is written.
pub(crate) async fn run(store: Arc<dyn Store>, mut rx: mpsc::UnboundedReceiver<Completion>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        for group in by_size(std::mem::take(&mut batch)) {
            write(&*store, group, rx.is_closed()).await;
        }
    }
}

/// Cuts a batch into groups of at most [`MAX_BATCH_BYTES`], replacing an outcome over
/// [`MAX_OUTCOME_BYTES`] by the failure of its job.
fn by_size(batch: Vec<Completion>) -> Vec<Vec<Completion>> {
    let mut groups = vec![Vec::new()];
    let mut bytes = 0;
    for c in batch {
        let mut size = outcome_bytes(&c);
        let c = if size > MAX_OUTCOME_BYTES {
            tracing::error!(job_id = %c.lease.job_id, bytes = size, "outcome too large to store; failing the job");
            let failure = c.unstorable(format_args!(
                "its result and errors take {} MiB, over the limit of {} MiB (store a large result as a file and set result_url)",
                size >> 20,
                MAX_OUTCOME_BYTES >> 20,
            ));
            size = 0;
            failure
        } else {
            c
        };
        if bytes + size > MAX_BATCH_BYTES && !groups.last().is_some_and(Vec::is_empty) {
            groups.push(Vec::new());
            bytes = 0;
        }
        bytes += size;
        groups.last_mut().expect("never empty").push(c);
    }
    groups
}

/// Bytes of a completion's result and errors as JSON (what varies from one to another),
/// counted as they are serialized, without keeping the text.
fn outcome_bytes(c: &Completion) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let json = |v: &serde_json::Value| {
        let mut count = Count(0);
        serde_json::to_writer(&mut count, v).map_or(0, |()| count.0)
    };
    c.result.as_ref().map_or(0, json)
        + c.result_url.as_ref().map_or(0, String::len)
        + c.errors
            .iter()
            .map(|e| e.message.len() + e.code.len() + json(&e.details))
            .sum::<usize>()
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

/// Writes one group: `Ok` once written (or given up at shutdown), `Err` with a refused
/// value, for the group to be split until the refused completion stands alone.
async fn write_group(store: &dyn Store, group: &[Completion], closing: bool) -> Result<(), Error> {
    let mut delay = Duration::from_millis(50);
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
            Err(e) if e.is_refused_value() => return Err(e),
            // Anything else (the database away, a deadlock, a full disk, a read-only standby)
            // says nothing about one completion: keep the group and try again. The leases
            // run on meanwhile; if they lapse first, the rescuer retries the jobs (at least
            // once). Splitting would only multiply the writes that fail.
            Err(e) => {
                tracing::warn!(error = %e, attempt, jobs = group.len(), "could not write completions; retrying");
                if closing && attempt >= 20 {
                    tracing::error!(
                        jobs = group.len(),
                        "giving up on completions at shutdown; the rescuer will retry these jobs"
                    );
                    return Ok(());
                }
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
    unreachable!("the loop returns")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::JobId;
    use crate::store::Lease;

    fn completion(result_bytes: usize) -> Completion {
        Completion {
            lease: Lease {
                job_id: JobId::new(),
                token: uuid::Uuid::new_v4(),
            },
            attempt: 1,
            status: crate::job::JobStatus::Success,
            result: Some(serde_json::Value::String("x".repeat(result_bytes))),
            result_url: None,
            errors: Vec::new(),
            retry_in: Duration::ZERO,
            give_attempt_back: false,
            progress: None,
        }
    }

    #[test]
    fn large_outcomes_are_written_in_groups_under_the_byte_limit() {
        let batch: Vec<_> = (0..8).map(|_| completion(10 << 20)).collect();
        let groups = by_size(batch);
        assert_eq!(groups.iter().map(Vec::len).collect::<Vec<_>>(), [3, 3, 2]);
        assert!(
            groups
                .iter()
                .flatten()
                .all(|c| c.status == crate::job::JobStatus::Success)
        );
    }

    #[test]
    fn an_outcome_over_its_limit_fails_its_job_and_the_rest_are_kept() {
        let groups = by_size(vec![
            completion(10),
            completion(MAX_OUTCOME_BYTES + 1),
            completion(10),
        ]);
        let all: Vec<_> = groups.into_iter().flatten().collect();
        assert_eq!(all.len(), 3);
        assert_eq!(all[1].status, crate::job::JobStatus::Failed);
        assert_eq!(all[1].errors[0].code, "unstorable_outcome");
        assert_eq!(all[0].result, completion(10).result);
    }
}
