//! Deletes finished jobs past the retention period, in small batches so that it never
//! holds many row locks or bloats one transaction.

use std::sync::Arc;
use std::time::Duration;

use crate::error::Result;
use crate::store::Store;

const BATCH: i64 = 5_000;

pub struct Pruner {
    store: Arc<dyn Store>,
    retention: Duration,
}

impl Pruner {
    pub fn new(store: Arc<dyn Store>, retention: Duration) -> Self {
        Pruner { store, retention }
    }

    /// Deletes every finished job older than the retention; returns how many.
    pub async fn run_once(&self) -> Result<u64> {
        self.run_while(|| true).await
    }

    /// [`Pruner::run_once`], checking `go_on` before each batch: the leader passes "my term
    /// is not over", so that a long prune stops at a batch boundary when the term ends.
    pub async fn run_while(&self, go_on: impl Fn() -> bool) -> Result<u64> {
        let mut total = 0;
        while go_on() {
            let n = self.store.job_prune_finished(self.retention, BATCH).await?;
            total += n;
            if (n as i64) < BATCH {
                break;
            }
        }
        Ok(total)
    }
}
