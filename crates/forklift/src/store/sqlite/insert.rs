//! Enqueue: many jobs in a few prepared multi-row statements, inside one transaction
//! (the store's own, or the caller's).

use std::collections::HashMap;
use std::fmt::Write;

use sqlx::SqliteConnection;
use uuid::Uuid;

use super::row::{JOB_COLUMNS, JobRow, duration_micros, now_micros};
use crate::error::{Error, Result};
use crate::job::{JobId, TenantId};
use crate::new_job::NewJob;
use crate::store::Inserted;

/// Rows per insert statement. Each row binds [`PER_ROW`] values, so a full chunk uses about
/// 10,000 of the 32,766 variables SQLite allows; every full chunk has the same SQL, which
/// the connection prepares once and reuses. Larger chunks measured no faster.
const CHUNK: usize = 1_000;
const PER_ROW: usize = 10;

/// Inserts `jobs` (already validated) on `conn`, which must be inside a transaction, so
/// that the chunks are all or nothing. A job whose unique key an unfinished job holds is
/// not inserted; that job is looked up and returned instead.
pub async fn insert_many(
    conn: &mut SqliteConnection,
    tenant: TenantId,
    jobs: &[NewJob],
) -> Result<Vec<Inserted>> {
    let now = now_micros();
    let ids: Vec<Uuid> = jobs.iter().map(|_| JobId::new().0).collect();
    let mut out: Vec<Option<Inserted>> = vec![None; jobs.len()];
    for start in (0..jobs.len()).step_by(CHUNK) {
        let end = (start + CHUNK).min(jobs.len());
        let rows = insert_chunk(conn, tenant, now, &jobs[start..end], &ids[start..end]).await?;
        let mut by_id: HashMap<Uuid, JobRow> = rows.into_iter().map(|r| (r.id, r)).collect();
        for i in start..end {
            if let Some(row) = by_id.remove(&ids[i]) {
                out[i] = Some(Inserted {
                    job: row.into_job(),
                    inserted: true,
                });
            }
        }
    }
    let conflicted: Vec<usize> = (0..jobs.len()).filter(|&i| out[i].is_none()).collect();
    if !conflicted.is_empty() {
        // The transaction holds SQLite's write lock since the first insert, so the holder
        // of a key cannot finish between the conflict and this look-up (PostgreSQL's store
        // has to allow for that race; here there is none).
        let keys: Vec<&str> = conflicted
            .iter()
            .filter_map(|&i| jobs[i].unique_key.as_deref())
            .collect();
        let holders: Vec<JobRow> = sqlx::query_as(&format!(
            "select {JOB_COLUMNS} from forklift_jobs
             where tenant_id = ?1 and status in ('QUEUED', 'RUNNING')
               and unique_key in (select value from json_each(?2))"
        ))
        .bind(tenant.0)
        .bind(serde_json::to_string(&keys).expect("strings serialize"))
        .fetch_all(&mut *conn)
        .await?;
        let holders: HashMap<String, JobRow> = holders
            .into_iter()
            .map(|r| (r.unique_key.clone().unwrap_or_default(), r))
            .collect();
        for i in conflicted {
            let key = jobs[i].unique_key.as_deref().unwrap_or_default();
            out[i] = holders.get(key).map(|row| Inserted {
                job: row.clone().into_job(),
                inserted: false,
            });
        }
    }
    out.into_iter()
        .map(|o| {
            o.ok_or_else(|| Error::invalid("unique_key", "the key's job kept changing; try again"))
        })
        .collect()
}

/// One multi-row `insert ... returning`; `?1` is the tenant and `?2` now, shared by all rows.
async fn insert_chunk(
    conn: &mut SqliteConnection,
    tenant: TenantId,
    now: i64,
    jobs: &[NewJob],
    ids: &[Uuid],
) -> Result<Vec<JobRow>> {
    let mut sql = String::with_capacity(200 + jobs.len() * 80);
    sql.push_str(
        "insert into forklift_jobs (id, job_type, queue, priority, payload, max_attempts, run_at,
            timeout_seconds, unique_key, tags, tenant_id, created_at, updated_at) values ",
    );
    for row in 0..jobs.len() {
        let p = 3 + row * PER_ROW;
        let sep = if row == 0 { "" } else { ", " };
        let _ = write!(sql, "{sep}(?{}", p);
        for k in 1..PER_ROW {
            let _ = write!(sql, ", ?{}", p + k);
        }
        sql.push_str(", ?1, ?2, ?2)");
    }
    // The conflict target names the partial unique index (its columns and its WHERE):
    // only a live job holding the key turns the insert into a no-op.
    let _ = write!(
        sql,
        " on conflict (tenant_id, unique_key) where unique_key is not null and status in ('QUEUED', 'RUNNING')
          do nothing returning {JOB_COLUMNS}"
    );
    let mut q = sqlx::query_as::<_, JobRow>(&sql).bind(tenant.0).bind(now);
    for (job, id) in jobs.iter().zip(ids) {
        let run_at = match (job.run_at, job.delay) {
            (Some(at), _) => at.timestamp_micros(),
            (None, Some(delay)) => now.saturating_add(duration_micros(delay)),
            (None, None) => now,
        };
        q = q
            .bind(*id)
            .bind(job.job_type.clone())
            .bind(job.queue.clone())
            .bind(job.priority)
            .bind(job.payload.to_string())
            .bind(job.max_attempts)
            .bind(run_at)
            .bind(job.timeout_seconds)
            .bind(job.unique_key.clone())
            .bind(serde_json::to_string(&job.tags).expect("strings serialize"));
    }
    Ok(q.fetch_all(&mut *conn).await?)
}
