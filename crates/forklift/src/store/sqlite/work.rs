//! The worker's side of the table: claim, renew, report, finish, release, rescue.
//!
//! Each takes a whole batch in one statement, as on PostgreSQL: the batch travels as one
//! JSON array parameter that `json_each` turns into rows (SQLite's `unnest`), ids as hex
//! that `unhex` turns back into blobs, and `update ... from` joins it to the jobs. Every
//! function runs on a connection inside a `BEGIN IMMEDIATE` transaction: SQLite has one
//! writer, so no other write can come between the guard and the change, and the claim
//! needs no `SKIP LOCKED`.

use std::time::Duration;

use serde_json::json;
use sqlx::SqliteConnection;
use uuid::Uuid;

use super::row::{JOB_COLUMNS, JobRow, duration_micros, hex, now_micros};
use crate::error::Result;
use crate::job::{JobId, JobStatus};
use crate::new_job::MAX_DELAY;
use crate::store::{
    Completion, FetchParams, Lease, LeaseStatus, LeasedJob, ProgressUpdate, RescueParams, Rescued,
    in_turn,
};

/// A fresh random (version 4) uuid per row, for lease tokens: SQLite has no uuid
/// function, so it is spelled from random hex with the version and variant digits set.
const NEW_TOKEN: &str = "unhex(hex(randomblob(6)) || '4' || substr(hex(randomblob(2)), 2) \
    || substr('89AB', 1 + (random() & 3), 1) || substr(hex(randomblob(8)), 2))";

/// The batch of leases as rows `t(job, token)`, from the JSON array in parameter `?2`.
const LEASE_ROWS: &str = "(select unhex(value ->> 'id') as job, unhex(value ->> 'token') as token from json_each(?2)) as t";

fn leases_json(leases: &[Lease]) -> String {
    let rows: Vec<_> = leases
        .iter()
        .map(|l| json!({"id": hex(l.job_id.0), "token": hex(l.token)}))
        .collect();
    serde_json::Value::Array(rows).to_string()
}

/// The (tenant, type) pairs with queued jobs in queue `?1`, one index step each (a loose
/// index scan: the next tenant, then each of its types), of the types in `?2`, of tenants
/// whose queue is not paused, with a job due at `?3`. A backlog of a type no worker here handles, or of a paused
/// tenant, costs a step, not a walk over its rows.
const ELIGIBLE_PAIRS: &str = "with recursive tenants(tenant_id) as (
        select min(tenant_id) from forklift_jobs where status = 'QUEUED' and queue = ?1
        union all
        select (select min(j.tenant_id) from forklift_jobs j
                where j.status = 'QUEUED' and j.queue = ?1 and j.tenant_id > t.tenant_id)
        from tenants t where t.tenant_id is not null
    ), pairs(tenant_id, job_type) as (
        select t.tenant_id, (select min(j.job_type) from forklift_jobs j
                             where j.status = 'QUEUED' and j.queue = ?1 and j.tenant_id = t.tenant_id)
        from tenants t where t.tenant_id is not null
        union all
        select p.tenant_id, (select min(j.job_type) from forklift_jobs j
                             where j.status = 'QUEUED' and j.queue = ?1 and j.tenant_id = p.tenant_id
                               and j.job_type > p.job_type)
        from pairs p where p.job_type is not null
    )
    select hex(p.tenant_id) as tenant, p.job_type from pairs p
    where p.job_type in (select value from json_each(?2))
      and not exists (select 1 from forklift_queue_pauses q where q.tenant_id = p.tenant_id and q.queue = ?1)
      and exists (select 1 from forklift_jobs d
                  where d.status = 'QUEUED' and d.queue = ?1 and d.tenant_id = p.tenant_id
                    and d.job_type = p.job_type and d.run_at <= ?3)";

/// Leases the first due jobs: each eligible pair offers twice its share of the limit;
/// among them, by priority, then by turn within the tenant (the tenants with
/// due jobs at one priority take turns), then by `run_at`. As on PostgreSQL, in SQLite's
/// terms: it has no LATERAL and no correlated LIMIT, so the pairs are found first, in the
/// same transaction (SQLite's single writer: nothing changes between the two).
pub async fn fetch(conn: &mut SqliteConnection, p: &FetchParams) -> Result<Vec<LeasedJob>> {
    let now = now_micros();
    let pairs: Vec<(String, String)> = sqlx::query_as(ELIGIBLE_PAIRS)
        .bind(&p.queue)
        .bind(serde_json::to_string(&p.types).expect("strings serialize"))
        .bind(now)
        .fetch_all(&mut *conn)
        .await?;
    if pairs.is_empty() {
        return Ok(Vec::new());
    }
    let limit = p.limit.max(1) as u64;
    let share = (2 * limit).div_ceil(pairs.len() as u64).min(limit) as i64;
    let pairs_json = serde_json::to_string(&pairs).expect("strings serialize");
    let rows: Vec<JobRow> = sqlx::query_as(&format!(
        "with candidates as (
            select c.id, c.priority, c.run_at,
                   row_number() over (partition by c.tenant_id, c.priority order by c.run_at, c.id) as turn
            from (select unhex(value ->> 0) as tenant_id, value ->> 1 as job_type from json_each(?3)) e
            join forklift_jobs c on c.rowid in (
                select j.rowid from forklift_jobs j
                where j.status = 'QUEUED' and j.queue = ?2 and j.tenant_id = e.tenant_id
                  and j.job_type = e.job_type and j.run_at <= ?1
                order by j.priority, j.run_at, j.id
                limit ?7)
         )
         update forklift_jobs set
            status = 'RUNNING', attempt = attempt + 1, started_at = ?1, updated_at = ?1,
            lease_owner = ?5, lease_token = {NEW_TOKEN}, lease_expires_at = ?6
         where id in (select id from candidates order by priority, turn, run_at, id limit ?4)
         returning {JOB_COLUMNS}"
    ))
    .bind(now)
    .bind(&p.queue)
    .bind(pairs_json)
    .bind(p.limit)
    .bind(&p.worker_id)
    .bind(now.saturating_add(duration_micros(p.lease_ttl)))
    .bind(share)
    .fetch_all(&mut *conn)
    .await?;
    let leased: Vec<LeasedJob> = rows
        .into_iter()
        .map(|r| {
            let lease_token = r.lease_token.expect("a running job has a lease token");
            LeasedJob {
                job: r.into_job(),
                lease_token,
            }
        })
        .collect();
    // RETURNING comes in no promised order; run in the order the queue promised.
    Ok(in_turn(leased))
}

pub async fn heartbeat(
    conn: &mut SqliteConnection,
    leases: &[Lease],
    ttl: Duration,
) -> Result<Vec<LeaseStatus>> {
    let rows: Vec<(Uuid, bool)> = sqlx::query_as(&format!(
        "update forklift_jobs as j set lease_expires_at = ?1
         from {LEASE_ROWS}
         where j.id = t.job and j.lease_token = t.token and j.status = 'RUNNING'
         returning id, cancel_requested"
    ))
    .bind(now_micros().saturating_add(duration_micros(ttl)))
    .bind(leases_json(leases))
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, c)| LeaseStatus {
            job_id: JobId(id),
            cancel_requested: c,
        })
        .collect())
}

pub async fn progress(conn: &mut SqliteConnection, updates: &[ProgressUpdate]) -> Result<()> {
    let rows: Vec<_> = updates
        .iter()
        .map(|u| {
            json!({"id": hex(u.lease.job_id.0), "token": hex(u.lease.token), "progress": u.progress.clamp(0, 100)})
        })
        .collect();
    sqlx::query(
        "update forklift_jobs as j set progress = t.new_progress, updated_at = ?1
         from (select unhex(value ->> 'id') as job, unhex(value ->> 'token') as token,
                      value ->> 'progress' as new_progress
               from json_each(?2)) as t
         where j.id = t.job and j.lease_token = t.token and j.status = 'RUNNING'",
    )
    .bind(now_micros())
    .bind(serde_json::Value::Array(rows).to_string())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Returns the accepted ids, and the queues of the jobs that went back to `QUEUED`.
pub async fn complete(
    conn: &mut SqliteConnection,
    cs: &[Completion],
) -> Result<(Vec<JobId>, Vec<String>)> {
    let rows: Vec<_> = cs
        .iter()
        .map(|c| {
            let mut row = json!({
                "id": hex(c.lease.job_id.0),
                "token": hex(c.lease.token),
                "status": c.status.as_str(),
                "errors": c.errors,
                "retry_us": duration_micros(c.retry_in),
                "give_back": i32::from(c.give_attempt_back),
                "progress": c.progress.map(|p| p.clamp(0, 100)),
                "result_url": c.result_url,
            });
            // Absent rather than JSON null, so that `->` gives SQL NULL and the job keeps
            // its result; a handler's explicit `null` result is stored as JSON null.
            if let Some(result) = &c.result {
                row["result"] = result.clone();
            }
            row
        })
        .collect();
    // The guard `lease_token = t.token and status = 'RUNNING'` is the compare-and-set that
    // makes a completion from a worker that lost its lease a no-op. A retry or a failure of
    // a job whose cancel was asked ends it `CANCELLED` instead: the cancel wins, even when
    // the worker never heard of it (asked from another process, or between the fetch and
    // the start). New errors are appended in order (part, then position) to the job's array.
    let done: Vec<(Uuid, String, String)> = sqlx::query_as(
        "update forklift_jobs as j set
            status = case when t.new_status in ('QUEUED', 'FAILED') and j.cancel_requested then 'CANCELLED' else t.new_status end,
            progress = case when t.new_status = 'SUCCESS' then 100 else coalesce(t.new_progress, j.progress) end,
            result = coalesce(t.new_result, j.result),
            result_url = coalesce(t.new_result_url, j.result_url),
            errors = case when json_array_length(t.new_errors) = 0 then j.errors else (
                select json_group_array(json(e.value) order by e.part, e.key) from (
                    select 0 as part, key, value from json_each(j.errors)
                    union all
                    select 1 as part, key, value from json_each(t.new_errors)) as e) end,
            attempt = j.attempt - t.give_back,
            run_at = case when t.new_status = 'QUEUED' and not j.cancel_requested then ?1 + t.retry_us else j.run_at end,
            completed_at = case when t.new_status = 'QUEUED' and not j.cancel_requested then null else ?1 end,
            lease_owner = null, lease_token = null, lease_expires_at = null,
            updated_at = ?1
         from (select unhex(value ->> 'id') as job, unhex(value ->> 'token') as token,
                      value ->> 'status' as new_status, value -> 'result' as new_result,
                      value ->> 'result_url' as new_result_url, value -> 'errors' as new_errors,
                      value ->> 'retry_us' as retry_us, value ->> 'give_back' as give_back,
                      value ->> 'progress' as new_progress
               from json_each(?2)) as t
         where j.id = t.job and j.lease_token = t.token and j.status = 'RUNNING'
         returning id, status, queue",
    )
    .bind(now_micros())
    .bind(serde_json::Value::Array(rows).to_string())
    .fetch_all(&mut *conn)
    .await?;
    let requeued = done
        .iter()
        .filter(|(_, s, _)| s == "QUEUED")
        .map(|(_, _, q)| q.clone())
        .collect();
    Ok((
        done.into_iter().map(|(id, _, _)| JobId(id)).collect(),
        requeued,
    ))
}

/// Returns how many were released, and the queues of those that went back to `QUEUED`.
pub async fn release(conn: &mut SqliteConnection, leases: &[Lease]) -> Result<(u64, Vec<String>)> {
    // The attempt was not the job's fault: give it back, and keep the job's place in line.
    // A job whose cancel was asked is not put back: it ends `CANCELLED`, as the rescuer
    // would end it (the worker may not have heard of the cancel before it stopped).
    let rows: Vec<(String, String)> = sqlx::query_as(&format!(
        "update forklift_jobs as j set
            status = case when j.cancel_requested then 'CANCELLED' else 'QUEUED' end,
            attempt = case when j.cancel_requested then j.attempt else max(j.attempt - 1, 0) end,
            started_at = case when j.cancel_requested then j.started_at end,
            completed_at = case when j.cancel_requested then ?1 end,
            lease_owner = null, lease_token = null, lease_expires_at = null, updated_at = ?1
         from {LEASE_ROWS}
         where j.id = t.job and j.lease_token = t.token and j.status = 'RUNNING'
         returning queue, status"
    ))
    .bind(now_micros())
    .bind(leases_json(leases))
    .fetch_all(&mut *conn)
    .await?;
    let released = rows.len() as u64;
    let requeued = rows
        .into_iter()
        .filter(|(_, status)| status == "QUEUED")
        .map(|(queue, _)| queue)
        .collect();
    Ok((released, requeued))
}

pub async fn rescue(conn: &mut SqliteConnection, p: &RescueParams) -> Result<Vec<Rescued>> {
    let now = chrono::Utc::now();
    // A lapsed lease means the worker died, hung or was cut off. The attempt it started
    // counts (it may have had effects): retry with back-off while attempts remain. The
    // back-off is PostgreSQL's formula in integer microseconds (the bundled SQLite has no
    // power()): base * 2^(attempt-1), capped, then jittered by up to ±jitter.
    let rows: Vec<(Uuid, String, String)> = sqlx::query_as(
        "update forklift_jobs set
            status = case when cancel_requested then 'CANCELLED'
                          when attempt >= max_attempts then 'FAILED'
                          else 'QUEUED' end,
            errors = json_insert(errors, '$[#]', json_object(
                'message', 'the lease expired: the worker stopped renewing it (crashed, killed, hung or cut off)',
                'code', 'lease_expired',
                'attempt', attempt,
                'at', ?2,
                'details', json_object('worker', lease_owner))),
            run_at = case when not cancel_requested and attempt < max_attempts
                          then ?1 + cast(min(?4, ?3 * (1 << min(max(attempt - 1, 0), 30)))
                                         * (1 + ?5 * (2 * ((random() & 1048575) / 1048575.0) - 1)) as integer)
                          else run_at end,
            completed_at = case when not cancel_requested and attempt < max_attempts then null else ?1 end,
            lease_owner = null, lease_token = null, lease_expires_at = null, updated_at = ?1
         where id in (
            select id from forklift_jobs
            where status = 'RUNNING' and lease_expires_at < ?1
            order by lease_expires_at
            limit ?6)
         returning id, status, queue",
    )
    .bind(now.timestamp_micros())
    .bind(now.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
    .bind(duration_micros(p.backoff.base.min(MAX_DELAY)))
    .bind(duration_micros(p.backoff.cap.min(MAX_DELAY)))
    .bind(p.backoff.jitter.clamp(0.0, 1.0))
    .bind(p.limit)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, status, queue)| Rescued {
            job_id: JobId(id),
            status: status.parse().unwrap_or(JobStatus::Queued),
            queue,
        })
        .collect())
}
