//! Where jobs live. [`Store`] is the one seam between the engine and a database:
//! PostgreSQL and SQLite, both held to one conformance suite (`tests/store.rs`). All SQL
//! lives below this module; everything above it speaks in jobs, leases and completions.

pub(crate) mod coalesce;
pub mod minutes;
pub mod postgres;
pub mod sqlite;
mod tx;

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::broadcast;
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::job::{ErrorEntry, Job, JobId, JobStatus, TenantId};
use crate::new_job::{MAX_BATCH, NewJob};

pub use self::minutes::{Metric, MinuteStat};
pub use self::tx::TxConnection;

/// Checks a batch before either store writes any of it.
pub(crate) fn check_batch(jobs: &[NewJob]) -> Result<()> {
    if jobs.len() > MAX_BATCH {
        return Err(Error::invalid(
            "jobs",
            format!("at most {MAX_BATCH} jobs per call"),
        ));
    }
    jobs.iter().try_for_each(NewJob::validate)
}

/// The operations the engine needs from a database. Every state change is one
/// statement (or one transaction) guarded by the job's status and, for running jobs,
/// its lease token, so that a race or a crash can neither lose a job nor finish it twice.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Brings the schema up to date; safe when several processes start at once.
    async fn migrate(&self) -> Result<()>;

    /// Answers when the database does (readiness).
    async fn ping(&self) -> Result<()>;

    /// Inserts validated jobs in one round trip. A job whose unique key is held by an
    /// unfinished job is not inserted: that job is returned instead, with `inserted: false`.
    /// The result is in the order of `jobs`.
    async fn job_insert_many(&self, tenant: TenantId, jobs: &[NewJob]) -> Result<Vec<Inserted>>;

    /// One job of this tenant, or `Error::NotFound`.
    async fn job_get(&self, tenant: TenantId, id: JobId) -> Result<Job>;

    /// A page of this tenant's jobs, newest first.
    async fn job_list(&self, tenant: TenantId, params: &ListParams) -> Result<JobPage>;

    /// Cancels a queued job at once; asks a running one to stop (`cancel_requested`).
    /// A finished job is `Error::Conflict`.
    async fn job_cancel(&self, tenant: TenantId, id: JobId) -> Result<Job>;

    /// Queues a `FAILED`, `PARTIAL_SUCCESS` or `CANCELLED` job again with fresh attempts.
    async fn job_retry(&self, tenant: TenantId, id: JobId) -> Result<Job>;

    /// Leases up to `limit` due jobs of one queue to a worker, in the order priority,
    /// run_at, id. Each leased job has `attempt` already counted.
    async fn job_fetch_available(&self, params: &FetchParams) -> Result<Vec<LeasedJob>>;

    /// Extends the leases still held; returns those, each with whether a cancel was asked.
    /// A lease missing from the answer was lost (rescued, or the job was finished elsewhere).
    async fn job_heartbeat_many(&self, leases: &[Lease], ttl: Duration)
    -> Result<Vec<LeaseStatus>>;

    /// Records handlers' progress, for leases still held.
    async fn job_progress_many(&self, updates: &[ProgressUpdate]) -> Result<()>;

    /// Applies finished attempts in one round trip; returns the ids whose lease was still
    /// held. Any other completion is stale and changed nothing.
    async fn job_complete_many(&self, completions: &[Completion]) -> Result<Vec<JobId>>;

    /// Puts running jobs back in the queue without using up their attempt (shutdown).
    async fn job_release_many(&self, leases: &[Lease]) -> Result<u64>;

    /// Requeues (or fails, when out of attempts; or cancels, when a cancel was asked)
    /// running jobs whose lease lapsed: their worker died or was cut off.
    async fn job_rescue_lapsed(&self, params: &RescueParams) -> Result<Vec<Rescued>>;

    /// Deletes up to `limit` jobs that finished more than `older_than` ago.
    async fn job_prune_finished(&self, older_than: Duration, limit: i64) -> Result<u64>;

    /// Pauses a tenant's queue: its queued jobs wait; running ones finish.
    async fn queue_pause(&self, tenant: TenantId, queue: &str) -> Result<()>;

    /// Resumes a paused queue and wakes its workers.
    async fn queue_resume(&self, tenant: TenantId, queue: &str) -> Result<()>;

    /// Becomes (or stays) the leader named `name` for `ttl` if nobody else holds it.
    async fn leader_elect(&self, name: &str, leader_id: &str, ttl: Duration) -> Result<bool>;

    /// Gives leadership up at once, so another process need not wait for the TTL.
    async fn leader_resign(&self, name: &str, leader_id: &str) -> Result<()>;

    /// Wake-ups for workers: jobs available in a queue, a cancel asked for a running job.
    fn subscribe(&self) -> broadcast::Receiver<Event>;

    /// This tenant's job counts by type, queue and status (for `/queues` and `/stats`).
    async fn job_counts(&self, tenant: TenantId) -> Result<Vec<JobCount>>;

    /// This tenant's paused queues.
    async fn queue_paused_list(&self, tenant: TenantId) -> Result<Vec<String>>;

    /// This tenant's throughput per minute and latency percentiles over the last `window`.
    async fn job_stats_recent(&self, tenant: TenantId, window: Duration) -> Result<RecentStats>;

    /// Adds to the per-minute stats what a worker saw (see [`minutes`]).
    async fn stats_add(&self, stats: &[MinuteStat]) -> Result<()>;

    /// Unfinished jobs by queue and status, across tenants (for the operator's metrics).
    async fn queue_depths(&self) -> Result<Vec<JobCount>>;

    /// Creates a tenant; a name already taken is `Error::Invalid` on `name`.
    async fn tenant_create(&self, name: &str) -> Result<Tenant>;

    async fn tenant_list(&self) -> Result<Vec<Tenant>>;

    /// Stores a new key's prefix and hash for a tenant (the secret itself is never stored).
    async fn api_key_insert(&self, tenant: TenantId, prefix: &str, key_hash: &str) -> Result<()>;

    /// The tenant of an unrevoked key with this hash.
    async fn api_key_tenant(&self, key_hash: &str) -> Result<Option<TenantId>>;

    /// Every key, revoked or not, newest first.
    async fn api_key_list(&self) -> Result<Vec<ApiKeyInfo>>;

    /// Revokes the key with this prefix; false if there is no such live key.
    async fn api_key_revoke(&self, prefix: &str) -> Result<bool>;
}

/// A count of jobs with one type, queue and status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobCount {
    /// Empty in [`Store::queue_depths`], which counts by queue and status only.
    pub job_type: String,
    pub queue: String,
    pub status: JobStatus,
    pub count: i64,
}

impl JobCount {
    /// The jobs not finished (queued or running) among `counts`.
    pub fn unfinished(counts: &[JobCount]) -> i64 {
        let live = counts.iter().filter(|c| !c.status.is_final());
        live.map(|c| c.count).sum()
    }
}

/// Recent activity, from [`Store::job_stats_recent`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RecentStats {
    /// Oldest first; minutes with nothing finished are absent.
    pub per_minute: Vec<MinuteCount>,
    /// Seconds from `run_at` to start, over jobs started in the window.
    pub wait_p50: Option<f64>,
    pub wait_p95: Option<f64>,
    /// Seconds from start to finish, over jobs finished in the window.
    pub run_p50: Option<f64>,
    pub run_p95: Option<f64>,
}

/// Jobs finished in one minute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MinuteCount {
    pub minute: DateTime<Utc>,
    /// `SUCCESS` and `PARTIAL_SUCCESS`.
    pub completed: i64,
    pub failed: i64,
}

/// A tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    pub tenant_id: TenantId,
    pub name: String,
    pub created_at: DateTime<Utc>,
}

/// An API key as listed: never its secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyInfo {
    pub prefix: String,
    pub tenant_id: TenantId,
    pub tenant_name: String,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// A wake-up from the store to the workers of this process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Jobs were enqueued (or became runnable) in this queue.
    JobsAvailable { queue: String },
    /// A cancel was asked for this job, which may be running here.
    CancelRequested { job_id: JobId },
    /// Wake-ups may have been missed (the listener reconnected): look at the database again.
    Resync,
}

/// One result of [`Store::job_insert_many`].
#[derive(Debug, Clone, PartialEq)]
pub struct Inserted {
    /// The new job, or the unfinished job that already held the unique key.
    pub job: Job,
    /// False when the unique key matched an existing job and nothing was inserted.
    pub inserted: bool,
}

/// Filters and page position for [`Store::job_list`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ListParams {
    pub statuses: Vec<JobStatus>,
    pub job_type: Option<String>,
    pub queue: Option<String>,
    pub tag: Option<String>,
    pub created_after: Option<DateTime<Utc>>,
    pub created_before: Option<DateTime<Utc>>,
    /// 1–500; the store clamps it.
    pub limit: i64,
    /// Where the previous page ended.
    pub cursor: Option<Cursor>,
}

impl ListParams {
    /// Checks the filters and brings them into the range both stores can compare: the
    /// same answer from PostgreSQL and SQLite for any input, and never a database error.
    /// A type or queue must be a possible name, a tag 1–100 characters without NUL, a
    /// time filter's year 0000–9999 (one before 1970 selects what 1970 would: no job is
    /// older).
    pub fn validated(&self) -> Result<ListParams> {
        for (field, value) in [("type", &self.job_type), ("queue", &self.queue)] {
            if let Some(v) = value {
                crate::new_job::check_name(field, v)?;
            }
        }
        if let Some(tag) = &self.tag {
            if tag.is_empty() || tag.chars().count() > 100 {
                return Err(Error::invalid("tag", "must be 1 to 100 characters"));
            }
            crate::new_job::check_text("tag", tag)?;
        }
        for (field, value) in [
            ("created_after", &self.created_after),
            ("created_before", &self.created_before),
        ] {
            if let Some(at) = value {
                crate::new_job::check_year(field, at)?;
            }
        }
        Ok(ListParams {
            created_after: self.created_after.map(clamp_to_stored_range),
            created_before: self.created_before.map(clamp_to_stored_range),
            limit: self.limit.clamp(1, 500),
            ..self.clone()
        })
    }
}

/// The range of times a job can carry: from the Unix epoch to the end of year 9999.
fn stored_range() -> (DateTime<Utc>, DateTime<Utc>) {
    (
        DateTime::UNIX_EPOCH,
        DateTime::from_timestamp(253_402_300_799, 0).expect("9999-12-31T23:59:59Z is valid"),
    )
}

fn clamp_to_stored_range(t: DateTime<Utc>) -> DateTime<Utc> {
    let (min, max) = stored_range();
    t.clamp(min, max)
}

/// A position in the newest-first order: the last job of the previous page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub created_at: DateTime<Utc>,
    pub id: JobId,
}

impl Cursor {
    /// An opaque token for clients: microseconds and the id's hex.
    pub fn encode(&self) -> String {
        format!(
            "{}_{}",
            self.created_at.timestamp_micros(),
            self.id.0.simple()
        )
    }

    /// Reads a token made by [`Cursor::encode`], and nothing else: decimal microseconds
    /// (at most 17 digits, a time no job can be older or newer than is not one) and 32
    /// lowercase hex digits.
    pub fn decode(s: &str) -> Option<Cursor> {
        let (micros, hex) = s.split_once('_')?;
        let well_formed = (1..=17).contains(&micros.len())
            && micros.bytes().all(|b| b.is_ascii_digit())
            && hex.len() == 32
            && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !well_formed {
            return None;
        }
        let created_at = DateTime::from_timestamp_micros(micros.parse().ok()?)?;
        let (min, max) = stored_range();
        if !(min..=max).contains(&created_at) {
            return None;
        }
        let id = JobId(Uuid::try_parse(hex).ok()?);
        Some(Cursor { created_at, id })
    }
}

/// At most this many jobs of each status are read for one page of [`Store::job_list`]
/// when a type, queue or tag filter narrows it: so that a filter nothing matches costs
/// the same with ten million jobs kept as with none. Such a page may hold fewer jobs
/// than its limit, even none, and still have a `next_cursor` to read on from.
pub const LIST_SCAN_ROWS: i64 = 10_000;

/// How a page of [`Store::job_list`] is read, the same on both stores: each status asked
/// for (all six without a status filter) is one range of the `(tenant_id, status,
/// created_at desc, id desc)` index, read newest first from the cursor and merged. A
/// type, queue or tag filter is checked on the rows read; then every status is read no
/// deeper than the newest of their [`LIST_SCAN_ROWS`]-th rows (the edge), and a page
/// that did not fill ends there, with the edge as its `next_cursor`.
pub(crate) struct ListPlan<'a> {
    pub params: &'a ListParams,
    pub statuses: Vec<JobStatus>,
    /// Filters checked on the rows read, not by the index.
    pub narrowed: bool,
}

impl<'a> ListPlan<'a> {
    pub fn new(params: &'a ListParams) -> Self {
        let mut statuses = if params.statuses.is_empty() {
            JobStatus::ALL.to_vec()
        } else {
            params.statuses.clone()
        };
        statuses.sort_by_key(|s| s.as_str());
        statuses.dedup();
        ListPlan {
            params,
            statuses,
            narrowed: params.job_type.is_some() || params.queue.is_some() || params.tag.is_some(),
        }
    }

    /// The page from up to `limit + 1` jobs read, newest first, no deeper than `edge`.
    pub fn page(&self, mut jobs: Vec<Job>, edge: Option<Cursor>) -> JobPage {
        let limit = self.params.limit as usize;
        let next_cursor = if jobs.len() > limit {
            jobs.truncate(limit);
            jobs.last().map(|j| Cursor {
                created_at: j.created_at,
                id: j.job_id,
            })
        } else {
            edge
        };
        JobPage { jobs, next_cursor }
    }
}

/// One page of [`Store::job_list`].
#[derive(Debug, Clone, PartialEq)]
pub struct JobPage {
    pub jobs: Vec<Job>,
    /// Present when more jobs may follow.
    pub next_cursor: Option<Cursor>,
}

/// What a worker asks of [`Store::job_fetch_available`].
#[derive(Debug, Clone, PartialEq)]
pub struct FetchParams {
    pub queue: String,
    /// Only these types: the ones this worker has handlers for and room to run.
    pub types: Vec<String>,
    pub limit: i64,
    /// Written on the lease, to tell which process holds a job.
    pub worker_id: String,
    pub lease_ttl: Duration,
}

/// A job leased to this worker.
#[derive(Debug, Clone, PartialEq)]
pub struct LeasedJob {
    pub job: Job,
    /// Changes at every fetch; every later write for this attempt must present it.
    pub lease_token: Uuid,
}

/// The proof that a worker holds a running job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Lease {
    pub job_id: JobId,
    pub token: Uuid,
}

/// A lease still held, from [`Store::job_heartbeat_many`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseStatus {
    pub job_id: JobId,
    pub cancel_requested: bool,
}

/// A handler's latest progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProgressUpdate {
    pub lease: Lease,
    pub progress: i16,
}

/// A finished attempt, ready to write: the runtime has already decided the next status.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    pub lease: Lease,
    /// The attempt this ends (to record it if its outcome cannot be stored).
    pub attempt: i32,
    /// `SUCCESS`, `PARTIAL_SUCCESS`, `FAILED`, `CANCELLED`, or `QUEUED` (retry or snooze).
    /// A `QUEUED` or `FAILED` completion of a job whose cancel was asked becomes `CANCELLED`.
    pub status: JobStatus,
    pub result: Option<serde_json::Value>,
    pub result_url: Option<String>,
    /// Appended to the job's errors.
    pub errors: Vec<ErrorEntry>,
    /// When `QUEUED`: how long from now before it runs again (at most
    /// [`MAX_DELAY`](crate::new_job::MAX_DELAY): a longer one is cut to it).
    pub retry_in: Duration,
    /// A snooze gives the attempt back.
    pub give_attempt_back: bool,
    /// The handler's last progress, if it reported one.
    pub progress: Option<i16>,
}

impl Completion {
    /// What is written instead when the database refused this completion (a value it
    /// cannot store that [`storable`] did not catch): the job fails, with the reason,
    /// rather than blocking the completions written with it or running again for nothing.
    pub fn unstorable(&self, refusal: impl std::fmt::Display) -> Completion {
        let message = format!(
            "the attempt ended ({}) but its outcome cannot be stored: {refusal}",
            self.status
        );
        Completion::by_runtime(
            self.lease,
            self.attempt,
            (JobStatus::Failed, Duration::ZERO),
            "unstorable_outcome",
            &message,
        )
    }

    /// An attempt ended by the runtime rather than by what its handler returned: no result,
    /// one error entry, and `status` (`FAILED`, or `QUEUED` to run again after the delay).
    pub(crate) fn by_runtime(
        lease: Lease,
        attempt: i32,
        (status, retry_in): (JobStatus, Duration),
        code: &str,
        message: &str,
    ) -> Completion {
        Completion {
            lease,
            attempt,
            status,
            result: None,
            result_url: None,
            errors: vec![ErrorEntry {
                message: scrub_text(message).into_owned(),
                code: code.into(),
                attempt,
                at: Utc::now(),
                details: serde_json::Value::Null,
            }],
            retry_in,
            give_attempt_back: false,
            progress: None,
        }
    }
}

/// Makes completions storable on both stores, before either writes them: a NUL character
/// (which PostgreSQL's `text` and `jsonb` refuse) in a result, result URL or error becomes
/// U+FFFD, a retry delay is cut to [`MAX_DELAY`](crate::new_job::MAX_DELAY), so that no
/// computed time leaves a column's range, and progress is brought into 0–100. Borrowed as they are when nothing needs it.
pub(crate) fn storable(cs: &[Completion]) -> std::borrow::Cow<'_, [Completion]> {
    use crate::new_job::MAX_DELAY;
    let needs = |c: &Completion| {
        c.retry_in > MAX_DELAY
            || c.progress.is_some_and(|p| !(0..=100).contains(&p))
            || c.result.as_ref().is_some_and(has_nul)
            || c.result_url.as_deref().is_some_and(|u| u.contains('\0'))
            || c.errors
                .iter()
                .any(|e| e.message.contains('\0') || e.code.contains('\0') || has_nul(&e.details))
    };
    if !cs.iter().any(needs) {
        return std::borrow::Cow::Borrowed(cs);
    }
    let cleaned = cs
        .iter()
        .map(|c| Completion {
            retry_in: c.retry_in.min(MAX_DELAY),
            progress: c.progress.map(|p| p.clamp(0, 100)),
            result: c.result.as_ref().map(scrub_json),
            result_url: c.result_url.as_deref().map(|u| scrub_text(u).into_owned()),
            errors: c
                .errors
                .iter()
                .map(|e| ErrorEntry {
                    message: scrub_text(&e.message).into_owned(),
                    code: scrub_text(&e.code).into_owned(),
                    details: scrub_json(&e.details),
                    ..e.clone()
                })
                .collect(),
            ..c.clone()
        })
        .collect();
    std::borrow::Cow::Owned(cleaned)
}

fn scrub_text(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains('\0') {
        std::borrow::Cow::Owned(s.replace('\0', "\u{FFFD}"))
    } else {
        std::borrow::Cow::Borrowed(s)
    }
}

fn has_nul(v: &serde_json::Value) -> bool {
    use crate::new_job::{JsonLeaf, json_leaves};
    !json_leaves(
        v,
        &mut |leaf| !matches!(leaf, JsonLeaf::Text(s) if s.contains('\0')),
    )
}

fn scrub_json(v: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::String(s) => Value::String(scrub_text(s).into_owned()),
        Value::Array(items) => Value::Array(items.iter().map(scrub_json).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, item)| (scrub_text(k).into_owned(), scrub_json(item)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Settings for [`Store::job_rescue_lapsed`].
#[derive(Debug, Clone, PartialEq)]
pub struct RescueParams {
    /// The back-off before a rescued job runs again.
    pub backoff: crate::retry::Backoff,
    pub limit: i64,
}

/// A job moved by the rescuer.
#[derive(Debug, Clone, PartialEq)]
pub struct Rescued {
    pub job_id: JobId,
    pub status: JobStatus,
    pub queue: String,
}

/// Puts fetched jobs in the order the fetch chose them: by priority, then by turn (at that
/// priority, each tenant's first job, then each tenant's second, …), then by `run_at`. A
/// database's `RETURNING` keeps no order.
pub(crate) fn in_turn(mut jobs: Vec<LeasedJob>) -> Vec<LeasedJob> {
    jobs.sort_by_key(|l| (l.job.tenant_id, l.job.priority, l.job.run_at, l.job.job_id));
    let mut numbered: Vec<(usize, LeasedJob)> = Vec::with_capacity(jobs.len());
    for l in jobs {
        let turn = match numbered.last() {
            Some((turn, prev))
                if (prev.job.tenant_id, prev.job.priority) == (l.job.tenant_id, l.job.priority) =>
            {
                turn + 1
            }
            _ => 0,
        };
        numbered.push((turn, l));
    }
    numbered.sort_by_key(|(turn, l)| (l.job.priority, *turn, l.job.run_at, l.job.job_id));
    numbered.into_iter().map(|(_, l)| l).collect()
}

/// Rows of (type, queue, status, count) as both stores' count queries return them.
pub(crate) fn job_counts_from_rows(rows: Vec<(String, String, String, i64)>) -> Vec<JobCount> {
    rows.into_iter()
        .filter_map(|(job_type, queue, status, count)| {
            Some(JobCount {
                job_type,
                queue,
                status: status.parse().ok()?,
                count,
            })
        })
        .collect()
}

/// After a guarded update matched no row: the job is unknown (to this tenant), or its
/// status forbids `action`.
pub(crate) fn conflict_or_not_found(
    found: Result<Option<Job>>,
    action: &str,
) -> crate::error::Error {
    match found {
        Ok(Some(job)) => crate::error::Error::Conflict {
            status: job.status,
            message: format!("cannot {action} a job whose status is {}", job.status),
        },
        Ok(None) => crate::error::Error::NotFound,
        Err(e) => e,
    }
}

/// Tells this process's subscribers that jobs are available, once per distinct queue: a
/// batch of 10,000 jobs in one queue is one wake-up, not 10,000 (which would also overflow
/// the channel and force every subscriber into a resync).
pub(crate) fn send_jobs_available<'a>(
    events: &broadcast::Sender<Event>,
    queues: impl IntoIterator<Item = &'a str>,
) -> Vec<&'a str> {
    let distinct: Vec<&str> = queues
        .into_iter()
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    for queue in &distinct {
        // No subscriber is fine: then nobody here is waiting.
        let _ = events.send(Event::JobsAvailable {
            queue: queue.to_string(),
        });
    }
    distinct
}
