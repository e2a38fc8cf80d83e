//! Queue depths for metrics, and tenants with their API keys.

use super::db::Db;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::job::TenantId;
use crate::store::{ApiKeyInfo, JobCount, Tenant, job_counts_from_rows};

type CountRow = (String, String, String, i64);

pub async fn queue_depths(pool: &Db) -> Result<Vec<JobCount>> {
    // Each status is served by its partial index (fetch, lease), not a table scan.
    let rows: Vec<CountRow> = sqlx::query_as(
        "select '', queue, status, count(*) from forklift_jobs where status = 'QUEUED' group by 2, 3
         union all
         select '', queue, status, count(*) from forklift_jobs where status = 'RUNNING' group by 2, 3",
    )
    .fetch_all(pool)
    .await?;
    Ok(job_counts_from_rows(rows))
}

pub async fn tenant_create(pool: &Db, name: &str) -> Result<Tenant> {
    if name.trim().is_empty() || name.chars().count() > 200 {
        return Err(Error::invalid(
            "name",
            "a tenant name is 1 to 200 characters",
        ));
    }
    let row: std::result::Result<(Uuid, String, DateTime<Utc>), sqlx::Error> = sqlx::query_as(
        "insert into forklift_tenants (id, name) values ($1, $2) returning id, name, created_at",
    )
    .bind(Uuid::new_v4())
    .bind(name)
    .fetch_one(pool)
    .await;
    match row {
        Ok((id, name, created_at)) => Ok(Tenant {
            tenant_id: TenantId(id),
            name,
            created_at,
        }),
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Err(Error::invalid(
            "name",
            format!("a tenant named `{name}` exists already"),
        )),
        Err(e) => Err(e.into()),
    }
}

pub async fn tenant_list(pool: &Db) -> Result<Vec<Tenant>> {
    let rows: Vec<(Uuid, String, DateTime<Utc>)> = sqlx::query_as(
        "select id, name, created_at from forklift_tenants order by created_at, name",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, name, created_at)| Tenant {
            tenant_id: TenantId(id),
            name,
            created_at,
        })
        .collect())
}

pub async fn api_key_insert(
    pool: &Db,
    tenant: TenantId,
    prefix: &str,
    key_hash: &str,
) -> Result<()> {
    sqlx::query("insert into forklift_api_keys (prefix, tenant_id, key_hash) values ($1, $2, $3)")
        .bind(prefix)
        .bind(tenant.0)
        .bind(key_hash)
        .execute(pool)
        .await?;
    Ok(())
}

pub async fn api_key_tenant(pool: &Db, key_hash: &str) -> Result<Option<TenantId>> {
    let id: Option<Uuid> = sqlx::query_scalar(
        "select tenant_id from forklift_api_keys where key_hash = $1 and revoked_at is null",
    )
    .bind(key_hash)
    .fetch_optional(pool)
    .await?;
    Ok(id.map(TenantId))
}

pub async fn api_key_list(pool: &Db) -> Result<Vec<ApiKeyInfo>> {
    type KeyRow = (String, Uuid, String, DateTime<Utc>, Option<DateTime<Utc>>);
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
            |(prefix, tenant, tenant_name, created_at, revoked_at)| ApiKeyInfo {
                prefix,
                tenant_id: TenantId(tenant),
                tenant_name,
                created_at,
                revoked_at,
            },
        )
        .collect())
}

pub async fn api_key_revoke(pool: &Db, prefix: &str) -> Result<bool> {
    let done = sqlx::query(
        "update forklift_api_keys set revoked_at = now() where prefix = $1 and revoked_at is null",
    )
    .bind(prefix)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}
