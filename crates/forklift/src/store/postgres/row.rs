//! Reading job rows into [`Job`]s.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::job::{Job, JobId, TenantId};

/// The columns every job query returns, in [`JobRow`]'s order.
pub const JOB_COLUMNS: &str = "id, tenant_id, job_type, queue, status, priority, progress, payload, \
    result, result_url, errors, attempt, max_attempts, run_at, timeout_seconds, unique_key, tags, \
    cancel_requested, lease_token, created_at, updated_at, started_at, completed_at";

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
    pub payload: serde_json::Value,
    pub result: Option<serde_json::Value>,
    pub result_url: Option<String>,
    pub errors: serde_json::Value,
    pub attempt: i32,
    pub max_attempts: i32,
    pub run_at: DateTime<Utc>,
    pub timeout_seconds: Option<i32>,
    pub unique_key: Option<String>,
    pub tags: serde_json::Value,
    pub cancel_requested: bool,
    pub lease_token: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
}

impl JobRow {
    pub fn into_job(self) -> Job {
        Job {
            job_id: JobId(self.id),
            tenant_id: TenantId(self.tenant_id),
            job_type: self.job_type,
            queue: self.queue,
            // The column's check constraint admits only known statuses.
            status: self.status.parse().expect("status checked by the schema"),
            priority: self.priority,
            progress: self.progress,
            payload: self.payload,
            result: self.result,
            result_url: self.result_url,
            errors: serde_json::from_value(self.errors).unwrap_or_default(),
            attempt: self.attempt,
            max_attempts: self.max_attempts,
            run_at: self.run_at,
            timeout_seconds: self.timeout_seconds,
            unique_key: self.unique_key,
            tags: serde_json::from_value(self.tags).unwrap_or_default(),
            cancel_requested: self.cancel_requested,
            created_at: self.created_at,
            updated_at: self.updated_at,
            started_at: self.started_at,
            completed_at: self.completed_at,
        }
    }
}
