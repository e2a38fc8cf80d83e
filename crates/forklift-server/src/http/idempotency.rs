//! `Idempotency-Key`: the client retries a request and gets the job its first attempt
//! made. A key sent again with a *different* request is a client bug (two operations
//! sharing a key); answering with the first job would hide it, so it gets 409
//! `idempotency_key_reused`, as Stripe does. The body's `unique_key` keeps its dedupe
//! meaning (any job with the key stands for the new one) and is not checked this way.

use forklift::{Job, NewJob};

use super::error::ApiError;
use super::payload;

/// The 409 for a job that holds `key` but was made by another request, or `None` when
/// the existing job is what this request asks for.
pub fn check_reuse(key: &str, existing: &Job, asked: &NewJob) -> Result<(), ApiError> {
    match first_difference(existing, asked) {
        None => Ok(()),
        Some(field) => Err(ApiError::new(
            axum::http::StatusCode::CONFLICT,
            "idempotency_key_reused",
            format!(
                "`Idempotency-Key: {key}` was already used for job {} with a different `{field}`; use a new key for a new job",
                existing.job_id
            ),
        )),
    }
}

/// The first field in which the existing job differs from the request. The time fields
/// (`run_at`, `delay_seconds`) are left out: a retried request with a delay asks for a
/// later time than the first did. Tags are labels, so their order does not matter.
fn first_difference(existing: &Job, asked: &NewJob) -> Option<&'static str> {
    if existing.job_type != asked.job_type {
        Some("type")
    } else if !payload::same(&existing.payload, &asked.payload) {
        Some("payload")
    } else if existing.queue != asked.queue {
        Some("queue")
    } else if existing.priority != asked.priority {
        Some("priority")
    } else if existing.max_attempts != asked.max_attempts {
        Some("max_attempts")
    } else if existing.timeout_seconds != asked.timeout_seconds {
        Some("timeout_seconds")
    } else if !same_tags(&existing.tags, &asked.tags) {
        Some("tags")
    } else {
        None
    }
}

fn same_tags(a: &[String], b: &[String]) -> bool {
    let mut a: Vec<&String> = a.iter().collect();
    let mut b: Vec<&String> = b.iter().collect();
    a.sort();
    b.sort();
    a == b
}
