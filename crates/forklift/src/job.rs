//! The job: its public id, its status and the transitions between statuses (pure).

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

/// The tenant a job belongs to. Every read and write of a job is scoped by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TenantId(pub Uuid);

impl TenantId {
    /// The tenant that a library user without tenants, and `forklift serve --dev`, act for.
    pub const DEFAULT: TenantId = TenantId(Uuid::from_u128(0x550e8400_e29b_41d4_a716_446655440000));
}

impl Default for TenantId {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A job's public id: `job_` and 32 lowercase hex digits (a UUID v7, so ids sort by creation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobId(pub Uuid);

impl JobId {
    /// A new time-ordered id: v7 keeps the primary key index append-mostly.
    pub fn new() -> Self {
        JobId(Uuid::now_v7())
    }
}

impl Default for JobId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "job_{}", self.0.simple())
    }
}

/// Why a string is not a job id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a job id is `job_` followed by 32 lowercase hex digits")]
pub struct InvalidJobId;

impl FromStr for JobId {
    type Err = InvalidJobId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let hex = s.strip_prefix("job_").ok_or(InvalidJobId)?;
        if hex.len() != 32
            || !hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(InvalidJobId);
        }
        Uuid::try_parse(hex).map(JobId).map_err(|_| InvalidJobId)
    }
}

impl Serialize for JobId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for JobId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Where a job is in its life. See `docs/state-machine.md` for the diagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum JobStatus {
    /// Waiting to run, now or at `run_at`.
    Queued,
    /// Leased by a worker, which renews the lease while the handler runs.
    Running,
    /// Finished well. Final.
    Success,
    /// Out of attempts, or failed permanently: the dead-letter set. Final until retried by hand.
    Failed,
    /// Finished, but some items failed (listed in `errors`). Final until retried by hand.
    PartialSuccess,
    /// Cancelled before or while running. Final until retried by hand.
    Cancelled,
}

impl JobStatus {
    /// Every status, in lifecycle order.
    pub const ALL: [JobStatus; 6] = [
        JobStatus::Queued,
        JobStatus::Running,
        JobStatus::Success,
        JobStatus::Failed,
        JobStatus::PartialSuccess,
        JobStatus::Cancelled,
    ];

    /// The name used in the API and in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "QUEUED",
            JobStatus::Running => "RUNNING",
            JobStatus::Success => "SUCCESS",
            JobStatus::Failed => "FAILED",
            JobStatus::PartialSuccess => "PARTIAL_SUCCESS",
            JobStatus::Cancelled => "CANCELLED",
        }
    }

    /// A final job has a `completed_at` and no worker will touch it again.
    pub fn is_final(self) -> bool {
        !matches!(self, JobStatus::Queued | JobStatus::Running)
    }

    /// Whether the lifecycle allows moving from `self` to `next`. The store's SQL guards
    /// encode the same table; this is its readable form, tested below.
    pub fn can_become(self, next: JobStatus) -> bool {
        use JobStatus::*;
        match (self, next) {
            // Fetched by a worker, or cancelled before it ran.
            (Queued, Running | Cancelled) => true,
            // Finished; or back to the queue: retry with back-off, snooze, rescue, shutdown release.
            (Running, Success | PartialSuccess | Failed | Cancelled | Queued) => true,
            // Retried by hand.
            (Failed | PartialSuccess | Cancelled, Queued) => true,
            _ => false,
        }
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for JobStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        JobStatus::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| format!("unknown status `{s}`"))
    }
}

/// One entry of a job's `errors`: a failed attempt, or a failed item of a partial success.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorEntry {
    /// For a person.
    pub message: String,
    /// For a program, snake_case (`handler_error`, `timeout`, `panic`, `lease_expired`, ...).
    pub code: String,
    /// The attempt that failed.
    pub attempt: i32,
    /// When it failed.
    pub at: DateTime<Utc>,
    /// Anything else the handler attached (for a failed item, which item).
    #[serde(default)]
    pub details: serde_json::Value,
}

/// A job as clients see it (SPEC §3). Lease fields stay inside the store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub job_id: JobId,
    #[serde(skip)]
    pub tenant_id: TenantId,
    #[serde(rename = "type")]
    pub job_type: String,
    pub queue: String,
    pub status: JobStatus,
    pub priority: i16,
    pub progress: i16,
    pub payload: serde_json::Value,
    pub result: Option<serde_json::Value>,
    pub result_url: Option<String>,
    pub errors: Vec<ErrorEntry>,
    pub attempt: i32,
    pub max_attempts: i32,
    pub run_at: DateTime<Utc>,
    pub timeout_seconds: Option<i32>,
    pub unique_key: Option<String>,
    pub tags: Vec<String>,
    /// Whether a cancel was asked while the job ran; the handler's token fired.
    pub cancel_requested: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
}

impl Job {
    /// A job as its new row reads: queued, nothing run yet, the rest as the caller sent it.
    /// Stores build the answer to an enqueue from this instead of reading every column back.
    pub(crate) fn queued(
        id: JobId,
        tenant: TenantId,
        job: &crate::new_job::NewJob,
        created_at: DateTime<Utc>,
        run_at: DateTime<Utc>,
    ) -> Job {
        Job {
            job_id: id,
            tenant_id: tenant,
            job_type: job.job_type.clone(),
            queue: job.queue.clone(),
            status: JobStatus::Queued,
            priority: job.priority,
            progress: 0,
            payload: job.payload.clone(),
            result: None,
            result_url: None,
            errors: Vec::new(),
            attempt: 0,
            max_attempts: job.max_attempts,
            run_at,
            timeout_seconds: job.timeout_seconds,
            unique_key: job.unique_key.clone(),
            tags: job.tags.clone(),
            cancel_requested: false,
            created_at,
            updated_at: created_at,
            started_at: None,
            completed_at: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use JobStatus::*;

    #[test]
    fn job_id_round_trips_through_its_public_form() {
        let id = JobId::new();
        let s = id.to_string();
        assert!(s.starts_with("job_") && s.len() == 36, "{s}");
        assert_eq!(s.parse::<JobId>(), Ok(id));
    }

    #[test]
    fn job_id_rejects_other_forms() {
        for bad in [
            "",
            "job_",
            "31c8927959d5442e90e3a6bc5a9188ec",
            "job_31C8927959D5442E90E3A6BC5A9188EC",
            "job_31c89279-59d5-442e-90e3-a6bc5a9188ec",
            "job_31c8927959d5442e90e3a6bc5a9188e",
            "job_31c8927959d5442e90e3a6bc5a9188ecc",
            "job_31c8927959d5442e90e3a6bc5a9188eg",
        ] {
            assert_eq!(bad.parse::<JobId>(), Err(InvalidJobId), "{bad}");
        }
    }

    #[test]
    fn status_names_round_trip() {
        for st in JobStatus::ALL {
            assert_eq!(st.as_str().parse::<JobStatus>(), Ok(st));
            assert_eq!(serde_json::to_value(st).unwrap(), st.as_str());
        }
        assert!("queued".parse::<JobStatus>().is_err());
    }

    #[test]
    fn only_queued_and_running_are_unfinished() {
        let unfinished: Vec<_> = JobStatus::ALL
            .into_iter()
            .filter(|s| !s.is_final())
            .collect();
        assert_eq!(unfinished, [Queued, Running]);
    }

    #[test]
    fn allowed_transitions_are_exactly_the_lifecycle() {
        let allowed = [
            (Queued, Running),
            (Queued, Cancelled),
            (Running, Success),
            (Running, PartialSuccess),
            (Running, Failed),
            (Running, Cancelled),
            (Running, Queued),
            (Failed, Queued),
            (PartialSuccess, Queued),
            (Cancelled, Queued),
        ];
        for from in JobStatus::ALL {
            for to in JobStatus::ALL {
                assert_eq!(
                    from.can_become(to),
                    allowed.contains(&(from, to)),
                    "{from} -> {to}"
                );
            }
        }
    }

    #[test]
    fn success_is_final_forever() {
        assert!(JobStatus::ALL.into_iter().all(|to| !Success.can_become(to)));
    }
}
