//! A tenant's quota of unfinished jobs ([`super::ApiConfig::max_unfinished_jobs`]).
//!
//! The database's count alone would let every request in flight at once add up to the
//! room left: a burst of batches could pass the quota many times over. So each request
//! first reserves its jobs here, and the check counts the reservations of the other
//! requests in flight beside the database's count. A request whose jobs are written but
//! whose reservation is not yet returned is counted twice for that moment: the check errs
//! on the strict side. Reservations are per process: with several API processes the quota
//! can be passed by at most what the others have in flight.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::http::StatusCode;
use forklift::TenantId;
use forklift::store::JobCount;

use super::AppState;
use super::error::ApiError;

/// `Retry-After` of a `quota_exceeded` answer: when jobs finish is not known here, so a
/// client is asked to look again in a few seconds.
const RETRY_AFTER_SECONDS: u64 = 5;

/// Jobs being added per tenant by requests in flight. Entries go when they reach zero, so
/// it holds at most one per request in flight.
#[derive(Default)]
pub struct Reservations(Mutex<HashMap<TenantId, u64>>);

/// Jobs reserved for one request, returned when it is dropped (answered, failed or
/// abandoned alike).
pub struct Reserved {
    reservations: Arc<Reservations>,
    tenant: TenantId,
    jobs: u64,
}

impl Drop for Reserved {
    fn drop(&mut self) {
        let mut map = self.reservations.0.lock().unwrap();
        if let Some(n) = map.get_mut(&self.tenant) {
            *n = n.saturating_sub(self.jobs);
            if *n == 0 {
                map.remove(&self.tenant);
            }
        }
    }
}

/// Reserves `adding` jobs for `tenant` and checks them against its quota: the database's
/// unfinished jobs (from the maintained counters) plus every reservation in flight,
/// this one's included. Hold the answer until the jobs are written.
pub async fn reserve(
    state: &AppState,
    tenant: TenantId,
    adding: usize,
) -> Result<Option<Reserved>, ApiError> {
    let quota = state.config.max_unfinished_jobs;
    if quota == 0 {
        return Ok(None);
    }
    let jobs = adding as u64;
    // Never room for it, however long the client waits: not a 429 to retry.
    if jobs > quota {
        return Err(ApiError::bad_request(
            "batch_exceeds_quota",
            format!(
                "{jobs} jobs in one call, but a tenant may have {quota} unfinished: send fewer"
            ),
        ));
    }
    // Reserved before the count is read, so two requests at once each see the other.
    let in_flight = {
        let mut map = state.reservations.0.lock().unwrap();
        let n = map.entry(tenant).or_default();
        *n += jobs;
        *n
    };
    let reserved = Reserved {
        reservations: state.reservations.clone(),
        tenant,
        jobs,
    };
    let counts = state.client.store().job_counts(tenant).await?;
    let unfinished = JobCount::unfinished(&counts).max(0) as u64;
    if unfinished + in_flight > quota {
        return Err(ApiError {
            retry_after: Some(RETRY_AFTER_SECONDS),
            ..ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "quota_exceeded",
                format!(
                    "this tenant has {unfinished} unfinished jobs, {} more on their way, and may \
                     have {quota}: room comes back as jobs finish",
                    in_flight - jobs
                ),
            )
        });
    }
    Ok(Some(reserved))
}
