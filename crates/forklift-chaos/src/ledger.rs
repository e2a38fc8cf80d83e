//! The ledger: what really ran. The `ledger` job type writes one row per execution into
//! `chaos_ledger` *before* doing its work and marks how the execution ended, so the checker
//! can count executions, see which ones completed, and time recoveries. A trigger on
//! `forklift_jobs` writes every status change into `chaos_transitions`, in the same
//! transaction as the change: a second final state, which the jobs table alone would hide
//! (the last write wins), shows there as a second transition into a final status.

use std::time::Duration;

use chrono::{DateTime, Utc};
use forklift::{CancelReason, Handler, HandlerResult, JobContext, JobError, Outcome};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use uuid::Uuid;

/// The chaos tables, created once by the harness after Forklift's own migrations.
pub const SCHEMA: &str = r#"
create table chaos_ledger (
    exec_id    uuid primary key,          -- chosen by the worker, so a retried insert is idempotent
    job_id     uuid not null,
    attempt    integer not null,
    worker     text not null,             -- the worker's lease owner name: slot and generation
    pid        integer not null,
    started_at timestamptz not null,      -- the worker's clock, before any work
    ended_at   timestamptz,
    outcome    text                       -- completed | failed_on_purpose | cancelled:<reason>; null: never recorded
);
create index chaos_ledger_job on chaos_ledger (job_id);

create table chaos_transitions (
    job_id     uuid not null,
    old_status text not null,
    new_status text not null,
    attempt    integer not null,
    old_owner  text,
    at         timestamptz not null default clock_timestamp()
);
create index chaos_transitions_job on chaos_transitions (job_id);

create function chaos_audit() returns trigger language plpgsql as $$
begin
    insert into chaos_transitions (job_id, old_status, new_status, attempt, old_owner)
    values (new.id, old.status, new.status, new.attempt, old.lease_owner);
    return null;
end $$;

create trigger chaos_audit after update of status on forklift_jobs
    for each row when (old.status is distinct from new.status) execute function chaos_audit();

create table chaos_accepted (
    n        bigint primary key,             -- the enqueue's sequence number, also in the payload
    job_id   uuid,                           -- the id answered, when the enqueue was accepted
    via      text not null,                  -- library | api
    outcome  text not null,                  -- accepted | failed
    sent_at  timestamptz not null
);

create table chaos_faults (
    seq      integer primary key,
    kind     text not null,
    worker   text,
    at       timestamptz not null,
    until_at timestamptz
);
"#;

/// The `ledger` job's payload.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LedgerArgs {
    /// The enqueue's sequence number: ties the job to what the load generator was answered.
    pub n: i64,
    /// Steps of simulated work.
    pub steps: u32,
    pub step_ms: u64,
    /// Fail the first attempt on purpose (exercises retries; not a fault).
    pub fail_first: bool,
}

/// Records each execution, then works step by step, honouring cancellation.
pub struct LedgerHandler {
    /// A pool of its own, through the same proxy as the worker's: a cut-off worker cannot
    /// write its ledger either, as a real side effect would not reach its database.
    pub pool: PgPool,
    /// The worker's lease owner name.
    pub worker: String,
}

/// How long one ledger write may take before it is tried again.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a ledger write is retried: longer than any outage or cut the runs make, so
/// the ledger misses only what a SIGKILL interrupts.
const PATIENCE: Duration = Duration::from_secs(30);

impl Handler for LedgerHandler {
    type Payload = LedgerArgs;

    async fn run(&self, args: LedgerArgs, ctx: JobContext) -> HandlerResult {
        let exec_id = Uuid::new_v4();
        let started_at = Utc::now();
        // The start is durable before any work: an execution the ledger does not show did
        // nothing. Cancelled before it could be written: nothing ran.
        tokio::select! {
            _ = ctx.cancelled() => {
                return Err(JobError::retryable("cancelled before the ledger recorded the start").with_code("cancelled"));
            }
            r = self.record_start(exec_id, &ctx, started_at) => r?,
        }
        for step in 1..=args.steps {
            tokio::select! {
                _ = ctx.cancelled() => break,
                _ = tokio::time::sleep(Duration::from_millis(args.step_ms)) => {}
            }
            ctx.set_progress((step * 100 / args.steps.max(1)).min(99) as u8);
        }
        if ctx.is_cancelled() {
            let reason = ctx.cancel_reason();
            let outcome = format!("cancelled:{reason:?}");
            // At shutdown the handler has about a second before it is aborted: one quick try.
            // Otherwise (the lease was lost: the database may be away) keep trying a while.
            let patience = if reason == CancelReason::Shutdown {
                Duration::ZERO
            } else {
                PATIENCE
            };
            let _ = self.record_end(exec_id, &outcome, patience).await;
            return Err(JobError::retryable(outcome).with_code("cancelled"));
        }
        if args.fail_first && ctx.attempt() == 1 {
            let _ = self
                .record_end(exec_id, "failed_on_purpose", PATIENCE)
                .await;
            return Err(
                JobError::retryable("the first attempt fails on purpose").with_code("on_purpose")
            );
        }
        // "completed" means the side effect is done; only then report success.
        self.record_end(exec_id, "completed", PATIENCE).await?;
        Ok(Outcome::Success)
    }
}

impl LedgerHandler {
    async fn record_start(
        &self,
        exec_id: Uuid,
        ctx: &JobContext,
        started_at: DateTime<Utc>,
    ) -> Result<(), JobError> {
        let job_id = ctx.job_id().0;
        let insert = || {
            sqlx::query(
                "insert into chaos_ledger (exec_id, job_id, attempt, worker, pid, started_at)
                 values ($1, $2, $3, $4, $5, $6) on conflict (exec_id) do nothing",
            )
            .bind(exec_id)
            .bind(job_id)
            .bind(ctx.attempt())
            .bind(&self.worker)
            .bind(std::process::id() as i32)
            .bind(started_at)
            .execute(&self.pool)
        };
        retry(PATIENCE, insert).await
    }

    async fn record_end(
        &self,
        exec_id: Uuid,
        outcome: &str,
        patience: Duration,
    ) -> Result<(), JobError> {
        let ended_at = Utc::now();
        let update = || {
            sqlx::query("update chaos_ledger set ended_at = $2, outcome = $3 where exec_id = $1")
                .bind(exec_id)
                .bind(ended_at)
                .bind(outcome)
                .execute(&self.pool)
        };
        retry(patience, update).await
    }
}

/// Runs an idempotent write until it succeeds, for `patience` at most (at least one try),
/// each try bounded by [`WRITE_TIMEOUT`] (a blackholed connection never answers, it does
/// not fail).
async fn retry<F, Fut>(patience: Duration, write: F) -> Result<(), JobError>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<sqlx::postgres::PgQueryResult, sqlx::Error>>,
{
    let mut last = String::new();
    let began = tokio::time::Instant::now();
    while last.is_empty() || began.elapsed() < patience {
        match tokio::time::timeout(WRITE_TIMEOUT, write()).await {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(e)) => last = e.to_string(),
            Err(_) => last = "timed out".into(),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(JobError::retryable(format!("the ledger is unavailable: {last}")).with_code("ledger"))
}
