//! Reading job rows into [`Job`]s, and the time and id encodings SQLite stores.
//!
//! Timestamps are integer microseconds since the Unix epoch, UTC: PostgreSQL's precision,
//! compared and sorted as plain integers, and turned back into the same `DateTime<Utc>`
//! that the PostgreSQL store returns.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::job::{Job, JobId, TenantId};

/// The columns every job query returns, in [`JobRow`]'s order (the same list as PostgreSQL's).
pub const JOB_COLUMNS: &str = "id, tenant_id, job_type, queue, status, priority, progress, payload, \
    result, result_url, errors, attempt, max_attempts, run_at, timeout_seconds, unique_key, tags, \
    cancel_requested, lease_token, created_at, updated_at, started_at, completed_at";

/// Now, in the stored form. SQLite has no microsecond clock of its own, so every
/// timestamp comes from here (one host's clock, which all processes on a local file share).
pub fn now_micros() -> i64 {
    Utc::now().timestamp_micros()
}

pub fn from_micros(micros: i64) -> DateTime<Utc> {
    // Every stored value was written from a valid DateTime; out of range is unreachable.
    DateTime::from_timestamp_micros(micros).unwrap_or_default()
}

/// Whole microseconds in a duration, saturating (a 10-year delay fits easily).
pub fn duration_micros(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// A uuid as 32 lowercase hex digits: how ids travel inside a JSON batch parameter,
/// where SQL turns them back into blobs with `unhex`.
pub fn hex(id: Uuid) -> String {
    id.simple().to_string()
}

/// One row of `forklift_jobs`, as stored.
#[derive(Clone, sqlx::FromRow)]
pub struct JobRow {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub job_type: String,
    pub queue: String,
    pub status: String,
    pub priority: i16,
    pub progress: i16,
    pub payload: String,
    pub result: Option<String>,
    pub result_url: Option<String>,
    pub errors: String,
    pub attempt: i32,
    pub max_attempts: i32,
    pub run_at: i64,
    pub timeout_seconds: Option<i32>,
    pub unique_key: Option<String>,
    pub tags: String,
    pub cancel_requested: bool,
    pub lease_token: Option<Uuid>,
    pub created_at: i64,
    pub updated_at: i64,
    pub started_at: Option<i64>,
    pub completed_at: Option<i64>,
}

impl JobRow {
    pub fn into_job(self) -> Job {
        // The JSON columns are checked with json_valid by the schema; the parses cannot fail.
        let json = |s: &str| serde_json::from_str(s).unwrap_or_default();
        Job {
            job_id: JobId(self.id),
            tenant_id: TenantId(self.tenant_id),
            job_type: self.job_type,
            queue: self.queue,
            // The column's check constraint admits only known statuses.
            status: self.status.parse().expect("status checked by the schema"),
            priority: self.priority,
            progress: self.progress,
            payload: json(&self.payload),
            result: self.result.as_deref().map(json),
            result_url: self.result_url,
            errors: serde_json::from_str(&self.errors).unwrap_or_default(),
            attempt: self.attempt,
            max_attempts: self.max_attempts,
            run_at: from_micros(self.run_at),
            timeout_seconds: self.timeout_seconds,
            unique_key: self.unique_key,
            tags: serde_json::from_str(&self.tags).unwrap_or_default(),
            cancel_requested: self.cancel_requested,
            created_at: from_micros(self.created_at),
            updated_at: from_micros(self.updated_at),
            started_at: self.started_at.map(from_micros),
            completed_at: self.completed_at.map(from_micros),
        }
    }
}
