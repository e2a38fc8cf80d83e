//! Counts from the counters that triggers keep, and per-minute stats from what workers
//! report (migration 0004): a few rows per tenant, however long the history. Deltas the
//! triggers append are folded into the totals every second by one process at a time; a
//! read adds the deltas not folded yet, so it is exact whenever it runs.

use std::time::Duration;

use super::db::Db;
use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use crate::error::Result;
use crate::job::TenantId;
use crate::store::minutes::{MINUTES_KEPT, MinuteStat, recent_from_rows};
use crate::store::{JobCount, RecentStats, job_counts_from_rows};

/// How often deltas are folded.
const FOLD_EVERY: Duration = Duration::from_secs(1);

/// Folds the deltas into the totals: one transaction, skipped when another process is
/// folding (the advisory lock keeps two folds from updating the same totals in different
/// orders and deadlocking). Its few statements a second are unnamed, so they work behind
/// a transaction pooler as well.
pub async fn fold(pool: &Db) -> Result<()> {
    let mut tx = pool.pool.begin().await?;
    let turn: bool = sqlx::query_scalar(
        "select pg_try_advisory_xact_lock(hashtext('forklift_fold:' || current_schema()))",
    )
    .persistent(false)
    .fetch_one(&mut *tx)
    .await?;
    if !turn {
        return Ok(());
    }
    let totals: Vec<(uuid::Uuid, String, String, String, bool)> = sqlx::query_as(
        "with moved as (delete from forklift_count_deltas returning *)
         insert into forklift_counts
         select tenant_id, queue, job_type, status, sum(jobs) from moved group by 1, 2, 3, 4
         on conflict (tenant_id, queue, job_type, status)
         do update set jobs = forklift_counts.jobs + excluded.jobs
         returning tenant_id, queue, job_type, status, jobs = 0",
    )
    .persistent(false)
    .fetch_all(&mut *tx)
    .await?;
    // Totals this fold brought to zero (a type or queue no longer used): only those.
    let (mut tenants, mut queues, mut types, mut statuses) = (vec![], vec![], vec![], vec![]);
    for (tenant, queue, job_type, status, _) in totals.into_iter().filter(|t| t.4) {
        tenants.push(tenant);
        queues.push(queue);
        types.push(job_type);
        statuses.push(status);
    }
    if !tenants.is_empty() {
        sqlx::query(
            "delete from forklift_counts c
             using unnest($1::uuid[], $2::text[], $3::text[], $4::text[]) as k(tenant_id, queue, job_type, status)
             where (c.tenant_id, c.queue, c.job_type, c.status) = (k.tenant_id, k.queue, k.job_type, k.status)
               and c.jobs = 0",
        )
        .persistent(false)
        .bind(&tenants)
        .bind(&queues)
        .bind(&types)
        .bind(&statuses)
        .execute(&mut *tx)
        .await?;
    }
    // Minutes past any window: a range of the minutes' index.
    sqlx::query("delete from forklift_minutes where minute < now() - make_interval(secs => $1)")
        .persistent(false)
        .bind(MINUTES_KEPT.as_secs_f64())
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// Folds every [`FOLD_EVERY`] until `stop`. Every process with a store does, so deltas
/// never pile up whatever runs (API only, workers only); the lock makes them take turns.
pub async fn fold_forever(pool: Db, stop: CancellationToken) {
    // The first a period from now: a new process migrates first, and there is nothing yet.
    let first = tokio::time::Instant::now() + FOLD_EVERY;
    let mut every = tokio::time::interval_at(first, FOLD_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = every.tick() => {}
        }
        match fold(&pool).await {
            Ok(()) => failing = false,
            // Once per outage at warn: counts stay exact meanwhile (reads add the deltas),
            // but the deltas grow until a fold succeeds.
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %e, "could not fold counters; trying every second");
            }
            Err(e) => tracing::debug!(error = %e, "could not fold counters"),
        }
    }
}

pub async fn job_counts(pool: &Db, tenant: TenantId) -> Result<Vec<JobCount>> {
    let rows: Vec<(String, String, String, i64)> = sqlx::query_as(
        "select job_type, queue, status, sum(jobs)::int8 from (
            select job_type, queue, status, jobs from forklift_counts where tenant_id = $1
            union all
            select job_type, queue, status, jobs from forklift_count_deltas where tenant_id = $1
         ) c group by 1, 2, 3 having sum(jobs) <> 0",
    )
    .bind(tenant.0)
    .fetch_all(pool)
    .await?;
    Ok(job_counts_from_rows(rows))
}

pub async fn stats_recent(pool: &Db, tenant: TenantId, window: Duration) -> Result<RecentStats> {
    let rows: Vec<(DateTime<Utc>, String, i16, i64)> = sqlx::query_as(
        "select minute, metric, bucket, jobs from forklift_minutes
         where tenant_id = $1 and minute >= date_trunc('minute', now() - make_interval(secs => $2))",
    )
    .bind(tenant.0)
    .bind(window.as_secs_f64())
    .fetch_all(pool)
    .await?;
    Ok(recent_from_rows(rows))
}

/// Adds what workers saw. Rows in key order, so that two processes adding to the same
/// minutes lock them in the same order and never deadlock.
pub async fn stats_add(pool: &Db, stats: &[MinuteStat]) -> Result<()> {
    if stats.is_empty() {
        return Ok(());
    }
    let mut sorted: Vec<&MinuteStat> = stats.iter().collect();
    sorted.sort_by_key(|s| (s.tenant, s.minute, s.metric, s.bucket));
    let tenants: Vec<uuid::Uuid> = sorted.iter().map(|s| s.tenant.0).collect();
    let minutes: Vec<DateTime<Utc>> = sorted.iter().map(|s| s.minute).collect();
    let metrics: Vec<&str> = sorted.iter().map(|s| s.metric.as_str()).collect();
    let buckets: Vec<i16> = sorted.iter().map(|s| s.bucket).collect();
    let jobs: Vec<i64> = sorted.iter().map(|s| s.jobs).collect();
    sqlx::query(
        "insert into forklift_minutes (tenant_id, minute, metric, bucket, jobs)
         select * from unnest($1::uuid[], $2::timestamptz[], $3::text[], $4::int2[], $5::int8[])
         on conflict (tenant_id, minute, metric, bucket)
         do update set jobs = forklift_minutes.jobs + excluded.jobs",
    )
    .bind(&tenants)
    .bind(&minutes)
    .bind(&metrics)
    .bind(&buckets)
    .bind(&jobs)
    .execute(pool)
    .await?;
    Ok(())
}
