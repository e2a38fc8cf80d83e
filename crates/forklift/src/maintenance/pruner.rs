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
        let mut total = 0;
        loop {
            let n = self.store.job_prune_finished(self.retention, BATCH).await?;
            total += n;
            if (n as i64) < BATCH {
                return Ok(total);
            }
        }
    }
}
