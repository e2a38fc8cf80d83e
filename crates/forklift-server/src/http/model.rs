//! The API's JSON shapes (SPEC §3 and §5), kept apart from the library's types so the
//! wire format changes only on purpose.

use chrono::{DateTime, Utc};
use forklift::{ErrorEntry, Job, NewJob};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::ApiError;

/// A job, with every field of SPEC §3.
#[derive(Serialize, ToSchema)]
pub struct JobView {
    /// `job_` + 32 lowercase hex digits.
    #[schema(example = "job_31c8927959d5442e90e3a6bc5a9188ec")]
    pub job_id: String,
    #[serde(rename = "type")]
    pub job_type: String,
    pub queue: String,
    /// QUEUED, RUNNING, SUCCESS, FAILED, PARTIAL_SUCCESS or CANCELLED.
    pub status: String,
    pub priority: i16,
    pub progress: i16,
    pub payload: serde_json::Value,
    pub result: Option<serde_json::Value>,
    pub result_url: Option<String>,
    /// One entry per failed attempt or failed item; null when there is none.
    pub errors: Option<Vec<ErrorView>>,
    pub attempt: i32,
    pub max_attempts: i32,
    pub run_at: DateTime<Utc>,
    pub timeout_seconds: Option<i32>,
    pub unique_key: Option<String>,
    /// Always empty until job dependencies ship.
    pub depends_on: Vec<String>,
    pub tags: Vec<String>,
    /// A cancel was asked while the job ran; it ends `CANCELLED` when its handler stops.
    pub cancel_requested: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
}

/// One failed attempt or item.
#[derive(Serialize, ToSchema)]
pub struct ErrorView {
    pub message: String,
    pub code: String,
    pub attempt: i32,
    pub at: DateTime<Utc>,
    pub details: serde_json::Value,
}

impl From<ErrorEntry> for ErrorView {
    fn from(e: ErrorEntry) -> Self {
        ErrorView {
            message: e.message,
            code: e.code,
            attempt: e.attempt,
            at: e.at,
            details: e.details,
        }
    }
}

impl From<Job> for JobView {
    fn from(j: Job) -> Self {
        JobView {
            job_id: j.job_id.to_string(),
            job_type: j.job_type,
            queue: j.queue,
            status: j.status.as_str().to_string(),
            priority: j.priority,
            progress: j.progress,
            payload: j.payload,
            result: j.result,
            result_url: j.result_url,
            errors: if j.errors.is_empty() {
                None
            } else {
                Some(j.errors.into_iter().map(Into::into).collect())
            },
            attempt: j.attempt,
            max_attempts: j.max_attempts,
            run_at: j.run_at,
            timeout_seconds: j.timeout_seconds,
            unique_key: j.unique_key,
            depends_on: Vec::new(),
            tags: j.tags,
            cancel_requested: j.cancel_requested,
            created_at: j.created_at,
            updated_at: j.updated_at,
            started_at: j.started_at,
            completed_at: j.completed_at,
        }
    }
}

/// The body of `POST /jobs` (and each item of a batch). Unknown fields are refused, so a
/// misspelt option is an error rather than silently ignored.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnqueueRequest {
    /// 1–100 characters of `[A-Za-z0-9_.:-]`.
    #[serde(rename = "type")]
    #[schema(example = "bulk_import")]
    pub job_type: String,
    /// Any JSON value; default `{}`.
    #[serde(default)]
    pub payload: Option<serde_json::Value>,
    /// Default `default`.
    #[serde(default)]
    pub queue: Option<String>,
    /// 0–9, 0 runs first; default 5.
    #[serde(default)]
    pub priority: Option<i16>,
    /// Not before this time (RFC 3339). Exclusive with `delay_seconds`.
    #[serde(default)]
    pub run_at: Option<DateTime<Utc>>,
    /// Not before this many seconds from now.
    #[serde(default)]
    pub delay_seconds: Option<f64>,
    /// 1–1000; default 5.
    #[serde(default)]
    pub max_attempts: Option<i32>,
    /// 1–604800.
    #[serde(default)]
    pub timeout_seconds: Option<i32>,
    /// At most one unfinished job per tenant has it. The `Idempotency-Key` header is
    /// the same thing.
    #[serde(default)]
    pub unique_key: Option<String>,
    /// Reserved for job dependencies (a later release): must be absent or empty.
    #[serde(default)]
    pub depends_on: Option<Vec<String>>,
    #[serde(default)]
    pub tags: Option<Vec<String>>,
}

impl EnqueueRequest {
    /// The library's job, with every field checked (the store validates again).
    pub fn into_new_job(self, idempotency_key: Option<String>) -> Result<NewJob, ApiError> {
        if self.depends_on.as_ref().is_some_and(|d| !d.is_empty()) {
            return Err(ApiError::bad_request(
                "invalid_field",
                "invalid `depends_on`: job dependencies are not supported yet",
            ));
        }
        let mut job = NewJob::new(
            self.job_type,
            self.payload.unwrap_or_else(|| serde_json::json!({})),
        );
        if let Some(q) = self.queue {
            job.queue = q;
        }
        if let Some(p) = self.priority {
            job.priority = p;
        }
        job.run_at = self.run_at;
        if let Some(d) = self.delay_seconds {
            if !(d.is_finite() && d >= 0.0) {
                return Err(ApiError::bad_request(
                    "invalid_field",
                    "invalid `delay_seconds`: must be a number ≥ 0",
                ));
            }
            job.delay = Some(std::time::Duration::from_secs_f64(d.min(1e10)));
        }
        if let Some(m) = self.max_attempts {
            job.max_attempts = m;
        }
        job.timeout_seconds = self.timeout_seconds;
        job.unique_key = self.unique_key.or(idempotency_key);
        job.tags = self.tags.unwrap_or_default();
        job.validate()?;
        Ok(job)
    }
}

/// The body of `POST /jobs/batch`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    /// 1 to 10,000 jobs, enqueued all or nothing.
    pub jobs: Vec<EnqueueRequest>,
}

/// The answer to `POST /jobs/batch`.
#[derive(Serialize, ToSchema)]
pub struct BatchResponse {
    /// In request order. A job whose unique key an unfinished job held is that job's id.
    pub job_ids: Vec<String>,
}

/// A page of `GET /jobs`.
#[derive(Serialize, ToSchema)]
pub struct JobList {
    pub jobs: Vec<JobView>,
    /// Pass as `cursor` for the next page; null on the last.
    pub next_cursor: Option<String>,
}
