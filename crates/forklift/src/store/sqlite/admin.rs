//! Counts and statistics for the API, and tenants with their API keys (SQLite).

use std::time::Duration;

use sqlx::{SqliteConnection, SqlitePool};
use uuid::Uuid;

use super::row::{duration_micros, from_micros, hex, now_micros};
use crate::error::{Error, Result};
use crate::job::TenantId;
use crate::store::minutes::{MINUTES_KEPT, MinuteStat, recent_from_rows};
use crate::store::{ApiKeyInfo, JobCount, RecentStats, Tenant, job_counts_from_rows};

type CountRow = (String, String, String, i64);

pub async fn job_counts(pool: &SqlitePool, tenant: TenantId) -> Result<Vec<JobCount>> {
    let rows: Vec<CountRow> = sqlx::query_as(
        "select job_type, queue, status, jobs from forklift_counts where tenant_id = ?1 and jobs <> 0",
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

pub async fn stats_recent(
    pool: &SqlitePool,
    tenant: TenantId,
    window: Duration,
) -> Result<RecentStats> {
    let since = now_micros().saturating_sub(duration_micros(window));
    let rows: Vec<(i64, String, i16, i64)> = sqlx::query_as(
        "select minute, metric, bucket, jobs from forklift_minutes
         where tenant_id = ?1 and minute >= ?2 / 60000000 * 60000000",
    )
    .bind(tenant.0)
    .bind(since)
    .fetch_all(pool)
    .await?;
    Ok(recent_from_rows(
        rows.into_iter()
            .map(|(minute, metric, bucket, jobs)| (from_micros(minute), metric, bucket, jobs))
            .collect(),
    ))
}

/// Adds what workers saw, and forgets minutes past any window.
pub async fn stats_add(conn: &mut SqliteConnection, stats: &[MinuteStat]) -> Result<()> {
    let rows: Vec<_> = stats
        .iter()
        .map(|s| {
            serde_json::json!([
                hex(s.tenant.0),
                s.minute.timestamp_micros(),
                s.metric.as_str(),
                s.bucket,
                s.jobs
            ])
        })
        .collect();
    sqlx::query(
        "insert into forklift_minutes (tenant_id, minute, metric, bucket, jobs)
         select unhex(value ->> 0), value ->> 1, value ->> 2, value ->> 3, value ->> 4
         from json_each(?1) where true
         on conflict do update set jobs = jobs + excluded.jobs",
    )
    .bind(serde_json::Value::Array(rows).to_string())
    .execute(&mut *conn)
    .await?;
    sqlx::query("delete from forklift_minutes where minute < ?1")
        .bind(now_micros().saturating_sub(duration_micros(MINUTES_KEPT)))
        .execute(&mut *conn)
        .await?;
    Ok(())
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
