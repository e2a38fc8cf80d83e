//! The worker's side of the table: claim, renew, report, finish, release, rescue.
//! Each takes a whole batch in one statement, so a busy worker makes a few round trips
//! per hundred jobs instead of a few per job.

use std::time::Duration;

use super::db::Db;
use uuid::Uuid;

use super::row::{JOB_COLUMNS, JobRow};
use crate::error::Result;
use crate::job::{JobId, JobStatus};
use crate::new_job::MAX_DELAY;
use crate::store::{
    Completion, FetchParams, Lease, LeaseStatus, LeasedJob, ProgressUpdate, RescueParams, Rescued,
    in_turn,
};

fn split(leases: &[Lease]) -> (Vec<Uuid>, Vec<Uuid>) {
    leases.iter().map(|l| (l.job_id.0, l.token)).unzip()
}

/// The fetch, one statement in four steps:
/// 1. `pairs`: the (tenant, type) pairs that have queued jobs in the queue, one index step
///    each (a loose index scan), so a backlog of a type no worker here handles, or of a
///    paused tenant, costs one step however many rows it holds;
/// 2. `eligible`: the pairs of types asked for, of tenants whose queue is not paused, with
///    a job due now (jobs scheduled for later do not count);
/// 3. `candidates`: the first due jobs of each eligible pair, locked with SKIP LOCKED (so
///    concurrent fetchers each take different jobs without waiting), numbered by their
///    `turn` within their tenant and priority. Each pair offers twice its share of the
///    limit: about twice the limit in all, or one row per pair when there are more pairs
///    than that (the rows locked and not picked are unlocked when the statement ends);
/// 4. `picked`: by priority, then turn, so that at one priority the tenants with due jobs
///    take turns (one job each, then the second of each, …) instead of the oldest backlog
///    taking the whole fetch; then by `run_at`. Candidates not picked are unlocked when
///    the statement ends.
///
/// The lease is committed without waiting for its WAL flush (`synchronous_commit` off for
/// this statement's transaction alone): half the fetch's time for one job. Nothing is
/// lost that matters: if PostgreSQL itself crashes before the flush, the job is `QUEUED`
/// again after recovery and another worker runs it (at least once, as after any crash);
/// this worker's renewal no longer finds the lease and stops its handler, and its
/// completion, guarded by the token, changes nothing. A completion is flushed, and with
/// it (the WAL being one sequence) every lease committed before it.
const FETCH: &str = "with recursive pairs as (
        (select tenant_id, job_type from forklift_jobs
         where status = 'QUEUED' and queue = $1
         order by tenant_id, job_type limit 1)
        union all
        select n.tenant_id, n.job_type from pairs p cross join lateral (
            select j.tenant_id, j.job_type from forklift_jobs j
            where j.status = 'QUEUED' and j.queue = $1 and (j.tenant_id, j.job_type) > (p.tenant_id, p.job_type)
            order by j.tenant_id, j.job_type limit 1) n
    ), eligible as (
        select e.tenant_id, e.job_type, count(*) over () as pairs from pairs e
        where e.job_type = any($2)
          and not exists (select 1 from forklift_queue_pauses q where q.tenant_id = e.tenant_id and q.queue = $1)
          -- One probe of the due index per pair. (An `exists` was planned as a semi-join
          -- reading the queue's whole backlog, and a bare `limit 1` as a sequential scan
          -- hoping for an early match: the index's own order keeps it a probe.)
          and (select true from forklift_jobs d
               where d.status = 'QUEUED' and d.queue = $1 and d.tenant_id = e.tenant_id
                 and d.job_type = e.job_type and d.run_at <= now()
               order by d.priority, d.run_at, d.id
               limit 1)
    ), candidates as (
        select c.id, c.priority, c.run_at,
               row_number() over (partition by e.tenant_id, c.priority order by c.run_at, c.id) as turn
        from eligible e cross join lateral (
            select j.id, j.priority, j.run_at from forklift_jobs j
            where j.status = 'QUEUED' and j.queue = $1 and j.tenant_id = e.tenant_id
              and j.job_type = e.job_type and j.run_at <= now()
            order by j.priority, j.run_at, j.id
            limit least($3, ceil(2.0 * $3 / e.pairs))
            for update skip locked) c
    ), picked as (
        select id from candidates order by priority, turn, run_at, id limit $3
    )
    update forklift_jobs j set
        status = 'RUNNING', attempt = j.attempt + 1, started_at = now(), updated_at = now(),
        lease_owner = $4, lease_token = gen_random_uuid(),
        lease_expires_at = now() + make_interval(secs => $5)
    from picked, (select set_config('synchronous_commit', 'off', true)) as lease_not_flushed
    where j.id = picked.id
    returning ";

pub async fn fetch(pool: &Db, p: &FetchParams) -> Result<Vec<LeasedJob>> {
    let rows: Vec<JobRow> = sqlx::query_as(&format!(
        "{FETCH}{}",
        JOB_COLUMNS
            .split(", ")
            .map(|c| format!("j.{c}"))
            .collect::<Vec<_>>()
            .join(", ")
    ))
    .bind(&p.queue)
    .bind(&p.types)
    .bind(p.limit)
    .bind(&p.worker_id)
    .bind(p.lease_ttl.as_secs_f64())
    .fetch_all(pool)
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
    // RETURNING does not keep the CTE's order; run in the order the queue promised.
    Ok(in_turn(leased))
}

pub async fn heartbeat(pool: &Db, leases: &[Lease], ttl: Duration) -> Result<Vec<LeaseStatus>> {
    if leases.is_empty() {
        return Ok(Vec::new());
    }
    let (ids, tokens) = split(leases);
    let rows: Vec<(Uuid, bool)> = sqlx::query_as(
        "update forklift_jobs j set lease_expires_at = now() + make_interval(secs => $3)
         from unnest($1::uuid[], $2::uuid[]) as t(id, token)
         where j.id = t.id and j.lease_token = t.token
         returning j.id, j.cancel_requested",
    )
    .bind(&ids)
    .bind(&tokens)
    .bind(ttl.as_secs_f64())
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, c)| LeaseStatus {
            job_id: JobId(id),
            cancel_requested: c,
        })
        .collect())
}

pub async fn progress(pool: &Db, updates: &[ProgressUpdate]) -> Result<()> {
    if updates.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = updates.iter().map(|u| u.lease.job_id.0).collect();
    let tokens: Vec<Uuid> = updates.iter().map(|u| u.lease.token).collect();
    let values: Vec<i16> = updates.iter().map(|u| u.progress.clamp(0, 100)).collect();
    sqlx::query(
        "update forklift_jobs j set progress = t.progress, updated_at = now()
         from unnest($1::uuid[], $2::uuid[], $3::int2[]) as t(id, token, progress)
         where j.id = t.id and j.lease_token = t.token",
    )
    .bind(&ids)
    .bind(&tokens)
    .bind(&values)
    .execute(pool)
    .await?;
    Ok(())
}

/// Returns the accepted ids, and the queues of the jobs that went back to `QUEUED`.
pub async fn complete(pool: &Db, cs: &[Completion]) -> Result<(Vec<JobId>, Vec<String>)> {
    if cs.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    let ids: Vec<Uuid> = cs.iter().map(|c| c.lease.job_id.0).collect();
    let tokens: Vec<Uuid> = cs.iter().map(|c| c.lease.token).collect();
    let statuses: Vec<&str> = cs.iter().map(|c| c.status.as_str()).collect();
    let results: Vec<Option<serde_json::Value>> = cs.iter().map(|c| c.result.clone()).collect();
    let result_urls: Vec<Option<String>> = cs.iter().map(|c| c.result_url.clone()).collect();
    let errors: Vec<serde_json::Value> = cs.iter().map(|c| serde_json::json!(c.errors)).collect();
    let retry_in: Vec<f64> = cs.iter().map(|c| c.retry_in.as_secs_f64()).collect();
    let give_back: Vec<i32> = cs.iter().map(|c| i32::from(c.give_attempt_back)).collect();
    let progress: Vec<Option<i16>> = cs.iter().map(|c| c.progress).collect();
    // The guard `lease_token = t.token` is the compare-and-set that makes a completion
    // from a worker that lost its lease a no-op (a job holds a token only while RUNNING:
    // a constraint says so, migration 5; naming the status too would let the planner
    // choose the running jobs' index over the primary key). A retry or a failure of
    // a job whose cancel was asked ends it `CANCELLED` instead: the cancel wins, even when
    // the worker never heard of it (asked between the fetch and the start). The SET reads
    // `j.cancel_requested` from the row it locks, so a cancel committed a moment before is
    // seen.
    let rows: Vec<(Uuid, String, String)> = sqlx::query_as(
        "update forklift_jobs j set
            status = (case when t.status in ('QUEUED', 'FAILED') and j.cancel_requested then 'CANCELLED' else t.status end),
            progress = case when t.status = 'SUCCESS' then 100 else coalesce(t.progress, j.progress) end,
            result = coalesce(t.result, j.result),
            result_url = coalesce(t.result_url, j.result_url),
            errors = j.errors || t.errors,
            attempt = j.attempt - t.give_back,
            run_at = case when t.status = 'QUEUED' and not j.cancel_requested
                          then now() + make_interval(secs => t.retry_in) else j.run_at end,
            completed_at = case when t.status = 'QUEUED' and not j.cancel_requested then null else now() end,
            lease_owner = null, lease_token = null, lease_expires_at = null,
            updated_at = now()
         from unnest($1::uuid[], $2::uuid[], $3::text[], $4::jsonb[], $5::text[], $6::jsonb[], $7::float8[], $8::int4[], $9::int2[])
              as t(id, token, status, result, result_url, errors, retry_in, give_back, progress)
         where j.id = t.id and j.lease_token = t.token
         returning j.id, j.status, j.queue",
    )
    .bind(&ids)
    .bind(&tokens)
    .bind(&statuses)
    .bind(&results)
    .bind(&result_urls)
    .bind(&errors)
    .bind(&retry_in)
    .bind(&give_back)
    .bind(&progress)
    .fetch_all(pool)
    .await?;
    let requeued = rows
        .iter()
        .filter(|(_, s, _)| s == "QUEUED")
        .map(|(_, _, q)| q.clone())
        .collect();
    Ok((
        rows.into_iter().map(|(id, _, _)| JobId(id)).collect(),
        requeued,
    ))
}

/// Returns how many were released, and the queues of those that went back to `QUEUED`.
pub async fn release(pool: &Db, leases: &[Lease]) -> Result<(u64, Vec<String>)> {
    if leases.is_empty() {
        return Ok((0, Vec::new()));
    }
    let (ids, tokens) = split(leases);
    // The attempt was not the job's fault: give it back, and keep the job's place in line.
    // A job whose cancel was asked is not put back: it ends `CANCELLED`, as the rescuer
    // would end it (the worker may not have heard of the cancel before it stopped).
    let rows: Vec<(String, String)> = sqlx::query_as(
        "update forklift_jobs j set
            status = case when j.cancel_requested then 'CANCELLED' else 'QUEUED' end,
            attempt = case when j.cancel_requested then j.attempt else greatest(j.attempt - 1, 0) end,
            started_at = case when j.cancel_requested then j.started_at end,
            completed_at = case when j.cancel_requested then now() end,
            lease_owner = null, lease_token = null, lease_expires_at = null, updated_at = now()
         from unnest($1::uuid[], $2::uuid[]) as t(id, token)
         where j.id = t.id and j.lease_token = t.token
         returning j.queue, j.status",
    )
    .bind(&ids)
    .bind(&tokens)
    .fetch_all(pool)
    .await?;
    let released = rows.len() as u64;
    let requeued = rows
        .into_iter()
        .filter(|(_, status)| status == "QUEUED")
        .map(|(queue, _)| queue)
        .collect();
    Ok((released, requeued))
}

pub async fn rescue(pool: &Db, p: &RescueParams) -> Result<Vec<Rescued>> {
    // A lapsed lease means the worker died, hung or was cut off. The attempt it started
    // counts (it may have had effects): retry with back-off while attempts remain.
    let rows: Vec<(Uuid, String, String)> = sqlx::query_as(
        "with lapsed as (
            select id from forklift_jobs
            where status = 'RUNNING' and lease_expires_at < now()
            order by lease_expires_at
            limit $1
            for update skip locked
         ), next as (
            select j.id,
                   case when j.cancel_requested then 'CANCELLED'
                        when j.attempt >= j.max_attempts then 'FAILED'
                        else 'QUEUED' end as status
            from forklift_jobs j join lapsed using (id)
         )
         update forklift_jobs j set
            status = next.status,
            errors = j.errors || jsonb_build_array(jsonb_build_object(
                'message', 'the lease expired: the worker stopped renewing it (crashed, killed, hung or cut off)',
                'code', 'lease_expired',
                'attempt', j.attempt,
                'at', to_char(now() at time zone 'utc', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'),
                'details', jsonb_build_object('worker', j.lease_owner))),
            run_at = case when next.status = 'QUEUED'
                          then now() + make_interval(secs => least($3, $2 * power(2, greatest(j.attempt - 1, 0)))
                                                              * (1 + $4 * (2 * random() - 1)))
                          else j.run_at end,
            completed_at = case when next.status = 'QUEUED' then null else now() end,
            lease_owner = null, lease_token = null, lease_expires_at = null, updated_at = now()
         from next
         where j.id = next.id
         returning j.id, j.status, j.queue",
    )
    .bind(p.limit)
    .bind(p.backoff.base.min(MAX_DELAY).as_secs_f64())
    .bind(p.backoff.cap.min(MAX_DELAY).as_secs_f64())
    .bind(p.backoff.jitter.clamp(0.0, 1.0))
    .fetch_all(pool)
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
