//! Enqueue: many jobs in one statement, on the pool or inside the caller's transaction.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use super::db::Db;
use uuid::Uuid;

use super::row::{JOB_COLUMNS, JobRow};
use crate::error::{Error, Result};
use crate::job::{Job, JobId, TenantId};
use crate::new_job::NewJob;
use crate::store::Inserted;

/// Inserts `jobs` (already validated) with one `unnest` statement: one round trip for
/// up to 10,000 jobs. A job whose unique key an unfinished job holds is not inserted;
/// that job is looked up and returned instead.
///
/// The connection is the caller's, which may go through a transaction pooler: the
/// statements are unnamed (see `db.rs`), one round trip more than a kept statement, in
/// a transaction that has several anyway.
pub async fn insert_many(
    conn: &mut PgConnection,
    tenant: TenantId,
    jobs: &[NewJob],
) -> Result<Vec<Inserted>> {
    insert_for_tenants(conn, false, &vec![tenant; jobs.len()], jobs).await
}

/// [`insert_for_tenants`] on the pool, all or nothing: several callers' requests, or one
/// large batch, commit together or not at all.
///
/// Without unique keys the insert is one statement, atomic by itself. With them it may
/// take a few rounds (insert, look up the keys' holders, insert again where a holder
/// finished meanwhile), so they run in one transaction: a failure in a later round must
/// not leave the rows of an earlier one behind while the caller hears of an error.
pub async fn insert_atomically(
    pool: &Db,
    tenants: &[TenantId],
    jobs: &[NewJob],
) -> Result<Vec<Inserted>> {
    // Behind a pooler even one statement needs a transaction (see `db.rs`).
    if pool.named() && jobs.iter().all(|j| j.unique_key.is_none()) {
        let mut conn = pool.pool.acquire().await?;
        return insert_for_tenants(&mut conn, true, tenants, jobs).await;
    }
    let mut tx = pool.pool.begin().await?;
    let inserted = insert_for_tenants(&mut tx, pool.named(), tenants, jobs).await?;
    tx.commit().await?;
    Ok(inserted)
}

/// [`insert_many`] where each job has its own tenant: what the coalescer sends, the jobs
/// of many callers in one statement.
/// `named`: whether the statements may be kept on the server (see `db.rs`).
pub async fn insert_for_tenants(
    conn: &mut PgConnection,
    named: bool,
    tenants: &[TenantId],
    jobs: &[NewJob],
) -> Result<Vec<Inserted>> {
    let ids: Vec<Uuid> = jobs.iter().map(|_| JobId::new().0).collect();
    let mut out: Vec<Option<Inserted>> = vec![None; jobs.len()];
    let mut todo: Vec<usize> = (0..jobs.len()).collect();
    // A key's holder can finish between our insert (which saw it) and our look-up (which
    // then does not): insert those again. Three rounds settle any realistic race.
    for _round in 0..3 {
        let inserted = insert_rows(conn, named, tenants, jobs, &ids, &todo).await?;
        let mut by_id: HashMap<Uuid, Written> = inserted.into_iter().map(|w| (w.0, w)).collect();
        let mut conflicted = Vec::new();
        for &i in &todo {
            match by_id.remove(&ids[i]) {
                Some((id, created_at, run_at)) => {
                    let job = Job::queued(JobId(id), tenants[i], &jobs[i], created_at, run_at);
                    out[i] = Some(Inserted {
                        job,
                        inserted: true,
                    })
                }
                None => conflicted.push(i),
            }
        }
        if conflicted.is_empty() {
            break;
        }
        let key_tenants: Vec<Uuid> = conflicted.iter().map(|&i| tenants[i].0).collect();
        let keys: Vec<&str> = conflicted
            .iter()
            .map(|&i| jobs[i].unique_key.as_deref().unwrap_or_default())
            .collect();
        let holders: Vec<JobRow> = sqlx::query_as(&format!(
            "select {JOB_COLUMNS} from forklift_jobs
             where (tenant_id, unique_key) in (select * from unnest($1::uuid[], $2::text[]))
               and status in ('QUEUED', 'RUNNING')"
        ))
        .persistent(named)
        .bind(&key_tenants)
        .bind(&keys)
        .fetch_all(&mut *conn)
        .await?;
        let holders: HashMap<(Uuid, String), JobRow> = holders
            .into_iter()
            .map(|r| ((r.tenant_id, r.unique_key.clone().unwrap_or_default()), r))
            .collect();
        todo.clear();
        for i in conflicted {
            let key = (tenants[i].0, jobs[i].unique_key.clone().unwrap_or_default());
            match holders.get(&key) {
                Some(row) => {
                    out[i] = Some(Inserted {
                        job: row.clone().into_job(),
                        inserted: false,
                    })
                }
                None => todo.push(i),
            }
        }
        if todo.is_empty() {
            break;
        }
    }
    out.into_iter()
        .map(|o| {
            o.ok_or_else(|| Error::invalid("unique_key", "the key's job kept changing; try again"))
        })
        .collect()
}

/// The insert of [`insert_rows`]; the keyed one skips a job whose key a live job holds.
macro_rules! insert_jobs {
    ($on_conflict:literal) => {
        concat!(
            "insert into forklift_jobs
                (id, tenant_id, job_type, queue, priority, payload, max_attempts, run_at, timeout_seconds, unique_key, tags)
             select t.id, t.tenant_id, t.job_type, t.queue, t.priority, t.payload, t.max_attempts,
                    coalesce(t.run_at, now() + make_interval(secs => coalesce(t.delay, 0))),
                    t.timeout_seconds, t.unique_key, t.tags
             from unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::int2[], $6::jsonb[], $7::int4[],
                         $8::timestamptz[], $9::float8[], $10::int4[], $11::text[], $12::jsonb[])
                  as t(tenant_id, id, job_type, queue, priority, payload, max_attempts, run_at, delay, timeout_seconds, unique_key, tags) ",
            $on_conflict,
            " returning id, created_at, run_at"
        )
    };
}
const INSERT_PLAIN: &str = insert_jobs!("");
const INSERT_KEYED: &str = insert_jobs!(
    "on conflict (tenant_id, unique_key) where unique_key is not null and status in ('QUEUED', 'RUNNING') do nothing"
);

/// What the database decides for a new row: its id (echoed), creation time and run_at.
type Written = (Uuid, DateTime<Utc>, DateTime<Utc>);

async fn insert_rows(
    conn: &mut PgConnection,
    named: bool,
    tenants: &[TenantId],
    jobs: &[NewJob],
    ids: &[Uuid],
    which: &[usize],
) -> Result<Vec<Written>> {
    let id: Vec<Uuid> = which.iter().map(|&i| ids[i]).collect();
    let tenant: Vec<Uuid> = which.iter().map(|&i| tenants[i].0).collect();
    let job_type: Vec<String> = which.iter().map(|&i| jobs[i].job_type.clone()).collect();
    let queue: Vec<String> = which.iter().map(|&i| jobs[i].queue.clone()).collect();
    let priority: Vec<i16> = which.iter().map(|&i| jobs[i].priority).collect();
    let payload: Vec<serde_json::Value> = which.iter().map(|&i| jobs[i].payload.clone()).collect();
    let max_attempts: Vec<i32> = which.iter().map(|&i| jobs[i].max_attempts).collect();
    let run_at: Vec<Option<chrono::DateTime<chrono::Utc>>> =
        which.iter().map(|&i| jobs[i].future_run_at()).collect();
    let delay: Vec<Option<f64>> = which
        .iter()
        .map(|&i| jobs[i].delay.map(|d| d.as_secs_f64()))
        .collect();
    let timeout: Vec<Option<i32>> = which.iter().map(|&i| jobs[i].timeout_seconds).collect();
    let unique_key: Vec<Option<String>> =
        which.iter().map(|&i| jobs[i].unique_key.clone()).collect();
    let tags: Vec<serde_json::Value> = which
        .iter()
        .map(|&i| serde_json::json!(jobs[i].tags))
        .collect();
    // Without keys, a plain insert: `on conflict` makes each row a speculative insertion
    // (an index pre-check and one more WAL record per row): about 10 % of a batch.
    let keyed = unique_key.iter().any(Option::is_some);
    let sql = if keyed { INSERT_KEYED } else { INSERT_PLAIN };
    let rows = sqlx::query_as(sql)
        .persistent(named)
        .bind(&tenant)
        .bind(&id)
        .bind(&job_type)
        .bind(&queue)
        .bind(&priority)
        .bind(&payload)
        .bind(&max_attempts)
        .bind(&run_at)
        .bind(&delay)
        .bind(&timeout)
        .bind(&unique_key)
        .bind(&tags)
        .fetch_all(&mut *conn)
        .await?;
    Ok(rows)
}
