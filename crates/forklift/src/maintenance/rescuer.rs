//! Puts back the jobs of workers that died: a lease that lapsed means nobody renews it.

use std::sync::Arc;

use crate::error::Result;
use crate::retry::Backoff;
use crate::store::{RescueParams, Rescued, Store};

/// How many lapsed jobs one sweep moves at most; the next sweep takes the rest.
const BATCH: i64 = 1_000;

pub struct Rescuer {
    store: Arc<dyn Store>,
    backoff: Backoff,
}

impl Rescuer {
    pub fn new(store: Arc<dyn Store>, backoff: Backoff) -> Self {
        Rescuer { store, backoff }
    }

    /// One sweep: requeues (or fails, or cancels) every job whose lease lapsed.
    pub async fn run_once(&self) -> Result<Vec<Rescued>> {
        let mut all = Vec::new();
        loop {
            let rescued = self
                .store
                .job_rescue_lapsed(&RescueParams {
                    backoff: self.backoff,
                    limit: BATCH,
                })
                .await?;
            let n = rescued.len();
            for r in &rescued {
                tracing::warn!(job_id = %r.job_id, status = %r.status, "rescued a job whose lease lapsed");
            }
            all.extend(rescued);
            if (n as i64) < BATCH {
                return Ok(all);
            }
        }
    }
}
