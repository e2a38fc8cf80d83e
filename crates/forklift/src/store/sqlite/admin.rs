//! Counts and statistics for the API, and tenants with their API keys (SQLite).

use std::time::Duration;

use sqlx::SqlitePool;
use uuid::Uuid;

use super::row::{duration_micros, from_micros, now_micros};
use crate::error::{Error, Result};
use crate::job::TenantId;
use crate::store::{ApiKeyInfo, JobCount, MinuteCount, RecentStats, Tenant, job_counts_from_rows};

/// Percentiles come from at most this many of the newest samples: SQLite has no
/// `percentile_cont`, so they are computed here.
const MAX_SAMPLES: i64 = 20_000;

type CountRow = (String, String, String, i64);

pub async fn job_counts(pool: &SqlitePool, tenant: TenantId) -> Result<Vec<JobCount>> {
    let rows: Vec<CountRow> = sqlx::query_as(
        "select job_type, queue, status, count(*) from forklift_jobs where tenant_id = ?1 group by 1, 2, 3",
    )
    .bind(tenant.0)
    .fetch_all(pool)
    .await?;
    Ok(job_counts_from_rows(rows))
}

pub async fn queue_depths(pool: &SqlitePool) -> Result<Vec<JobCount>> {
    let rows: Vec<CountRow> = sqlx::query_as(
        "select '', queue, status, count(*) from forklift_jobs where status = 'QUEUED' group by 2, 3
         union all
         select '', queue, status, count(*) from forklift_jobs where status = 'RUNNING' group by 2, 3",
    )
    .fetch_all(pool)
    .await?;
    Ok(job_counts_from_rows(rows))
}

fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    // Linear interpolation between closest ranks, as PostgreSQL's percentile_cont.
    let pos = q * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    Some(sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64))
}

async fn samples(pool: &SqlitePool, sql: &str, tenant: TenantId, since: i64) -> Result<Vec<f64>> {
    let micros: Vec<i64> = sqlx::query_scalar(sql)
        .bind(tenant.0)
        .bind(since)
        .bind(MAX_SAMPLES)
        .fetch_all(pool)
        .await?;
    let mut secs: Vec<f64> = micros.into_iter().map(|m| m.max(0) as f64 / 1e6).collect();
    secs.sort_by(|a, b| a.total_cmp(b));
    Ok(secs)
}

pub async fn stats_recent(
    pool: &SqlitePool,
    tenant: TenantId,
    window: Duration,
) -> Result<RecentStats> {
    let since = now_micros().saturating_sub(duration_micros(window));
    let minutes: Vec<(i64, i64, i64)> = sqlx::query_as(
        "select completed_at / 60000000 * 60000000 as minute,
                sum(status in ('SUCCESS', 'PARTIAL_SUCCESS')), sum(status = 'FAILED')
         from forklift_jobs
         where tenant_id = ?1 and completed_at > ?2 and status in ('SUCCESS', 'PARTIAL_SUCCESS', 'FAILED')
         group by 1 order by 1",
    )
    .bind(tenant.0)
    .bind(since)
    .fetch_all(pool)
    .await?;
    let waits = samples(
        pool,
        "select started_at - run_at from forklift_jobs where tenant_id = ?1 and started_at > ?2
         order by started_at desc limit ?3",
        tenant,
        since,
    )
    .await?;
    let runs = samples(
        pool,
        "select completed_at - started_at from forklift_jobs
         where tenant_id = ?1 and completed_at > ?2 and started_at is not null
         order by completed_at desc limit ?3",
        tenant,
        since,
    )
    .await?;
    Ok(RecentStats {
        per_minute: minutes
            .into_iter()
            .map(|(m, completed, failed)| MinuteCount {
                minute: from_micros(m),
                completed,
                failed,
            })
            .collect(),
        wait_p50: percentile(&waits, 0.5),
        wait_p95: percentile(&waits, 0.95),
        run_p50: percentile(&runs, 0.5),
        run_p95: percentile(&runs, 0.95),
    })
}

pub async fn tenant_create(pool: &SqlitePool, name: &str) -> Result<Tenant> {
    if name.trim().is_empty() || name.chars().count() > 200 {
        return Err(Error::invalid(
            "name",
            "a tenant name is 1 to 200 characters",
        ));
    }
    let (id, now) = (Uuid::new_v4(), now_micros());
    let done =
        sqlx::query("insert into forklift_tenants (id, name, created_at) values (?1, ?2, ?3)")
            .bind(id)
            .bind(name)
            .bind(now)
            .execute(pool)
            .await;
    match done {
        Ok(_) => Ok(Tenant {
            tenant_id: TenantId(id),
            name: name.to_string(),
            created_at: from_micros(now),
        }),
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Err(Error::invalid(
            "name",
            format!("a tenant named `{name}` exists already"),
        )),
        Err(e) => Err(e.into()),
    }
}

pub async fn tenant_list(pool: &SqlitePool) -> Result<Vec<Tenant>> {
    let rows: Vec<(Uuid, String, i64)> = sqlx::query_as(
        "select id, name, created_at from forklift_tenants order by created_at, name",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, name, at)| Tenant {
            tenant_id: TenantId(id),
            name,
            created_at: from_micros(at),
        })
        .collect())
}

pub async fn api_key_insert(
    pool: &SqlitePool,
    tenant: TenantId,
    prefix: &str,
    key_hash: &str,
) -> Result<()> {
    sqlx::query("insert into forklift_api_keys (prefix, tenant_id, key_hash, created_at) values (?1, ?2, ?3, ?4)")
        .bind(prefix)
        .bind(tenant.0)
        .bind(key_hash)
        .bind(now_micros())
        .execute(pool)
        .await?;
    Ok(())
}

pub async fn api_key_tenant(pool: &SqlitePool, key_hash: &str) -> Result<Option<TenantId>> {
    let id: Option<Uuid> = sqlx::query_scalar(
        "select tenant_id from forklift_api_keys where key_hash = ?1 and revoked_at is null",
    )
    .bind(key_hash)
    .fetch_optional(pool)
    .await?;
    Ok(id.map(TenantId))
}

pub async fn api_key_list(pool: &SqlitePool) -> Result<Vec<ApiKeyInfo>> {
    type KeyRow = (String, Uuid, String, i64, Option<i64>);
    let rows: Vec<KeyRow> = sqlx::query_as(
        "select k.prefix, k.tenant_id, t.name, k.created_at, k.revoked_at
         from forklift_api_keys k join forklift_tenants t on t.id = k.tenant_id
         order by k.created_at desc",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(
            |(prefix, tenant, tenant_name, created, revoked)| ApiKeyInfo {
                prefix,
                tenant_id: TenantId(tenant),
                tenant_name,
                created_at: from_micros(created),
                revoked_at: revoked.map(from_micros),
            },
        )
        .collect())
}

pub async fn api_key_revoke(pool: &SqlitePool, prefix: &str) -> Result<bool> {
    let done = sqlx::query(
        "update forklift_api_keys set revoked_at = ?2 where prefix = ?1 and revoked_at is null",
    )
    .bind(prefix)
    .bind(now_micros())
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

#[cfg(test)]
mod tests {
    use super::percentile;

    #[test]
    fn percentiles_interpolate_like_postgres() {
        let v = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(percentile(&v, 0.5), Some(2.5));
        assert_eq!(percentile(&v, 0.0), Some(1.0));
        assert_eq!(percentile(&v, 1.0), Some(4.0));
        assert_eq!(percentile(&[], 0.5), None);
    }
}
