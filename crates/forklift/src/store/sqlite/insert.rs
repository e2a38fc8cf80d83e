//! Enqueue: many jobs in a few prepared multi-row statements, inside one transaction
//! (the store's own, or the caller's).

use std::collections::{HashMap, HashSet};

use sqlx::{Row, SqliteConnection};
use uuid::Uuid;

use super::row::{JOB_COLUMNS, JobRow, duration_micros, from_micros, now_micros};
use crate::error::{Error, Result};
use crate::job::{Job, JobId, TenantId};
use crate::new_job::NewJob;
use crate::store::Inserted;

/// Rows per insert statement. Each row binds [`PER_ROW`] values, so a full chunk uses
/// 13,000 of the 32,766 variables SQLite allows; every full chunk has the same SQL, which
/// the connection prepares once and reuses.
const CHUNK: usize = 1_000;
const PER_ROW: usize = 13;

/// Inserts `jobs` (already validated) on `conn`, which must be inside a transaction, so
/// that the chunks are all or nothing. A job whose unique key an unfinished job holds is
/// not inserted; that job is looked up and returned instead.
///
/// An inserted job is returned as built here from what was written, not read back: every
/// column is either given or a fixed starting value, and reading 10,000 rows back through
/// sqlx's row channel cost more than the insert. The conformance suite checks that a
/// job read back equals the one returned.
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
        let inserted = insert_chunk(conn, tenant, now, &jobs[start..end], &ids[start..end]).await?;
        for i in start..end {
            if inserted
                .as_ref()
                .is_none_or(|ids_in| ids_in.contains(&ids[i]))
            {
                let job = as_inserted(tenant, now, &jobs[i], ids[i]);
                out[i] = Some(Inserted {
                    job,
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

/// When the job may run: its `run_at` if still ahead, or now plus its delay, or now.
fn run_at_micros(job: &NewJob, now: i64) -> i64 {
    match (job.future_run_at(), job.delay) {
        (Some(at), _) => at.timestamp_micros(),
        (None, Some(delay)) => now.saturating_add(duration_micros(delay)),
        (None, None) => now,
    }
}

/// The job exactly as its new row reads back.
fn as_inserted(tenant: TenantId, now: i64, job: &NewJob, id: Uuid) -> Job {
    Job::queued(
        JobId(id),
        tenant,
        job,
        from_micros(now),
        from_micros(run_at_micros(job, now)),
    )
}

/// One multi-row insert. Returns the ids inserted when some job has a unique key (only
/// those can be skipped), and `None` when every row was inserted.
///
/// The placeholders are anonymous (`?`), not numbered: sqlx looks up each parameter's name
/// when binding, and SQLite finds a numbered one by a linear search, which made a 10,000-
/// variable statement quadratic (50,000 jobs took 6.6 s to insert).
async fn insert_chunk(
    conn: &mut SqliteConnection,
    tenant: TenantId,
    now: i64,
    jobs: &[NewJob],
    ids: &[Uuid],
) -> Result<Option<HashSet<Uuid>>> {
    let keyed = jobs.iter().any(|j| j.unique_key.is_some());
    let mut sql = String::with_capacity(400 + jobs.len() * 42);
    sql.push_str(
        "insert into forklift_jobs (id, job_type, queue, priority, payload, max_attempts, run_at,
            timeout_seconds, unique_key, tags, tenant_id, created_at, updated_at) values ",
    );
    let row = format!("({})", vec!["?"; PER_ROW].join(", "));
    for i in 0..jobs.len() {
        sql.push_str(if i == 0 { "" } else { ", " });
        sql.push_str(&row);
    }
    // The conflict target names the partial unique index (its columns and its WHERE):
    // only a live job holding the key turns the insert into a no-op.
    sql.push_str(
        " on conflict (tenant_id, unique_key) where unique_key is not null and status in ('QUEUED', 'RUNNING')
          do nothing",
    );
    if keyed {
        sql.push_str(" returning id");
    }
    let mut q = sqlx::query(&sql);
    for (job, id) in jobs.iter().zip(ids) {
        q = q
            .bind(*id)
            .bind(job.job_type.clone())
            .bind(job.queue.clone())
            .bind(job.priority)
            .bind(job.payload.to_string())
            .bind(job.max_attempts)
            .bind(run_at_micros(job, now))
            .bind(job.timeout_seconds)
            .bind(job.unique_key.clone())
            .bind(serde_json::to_string(&job.tags).expect("strings serialize"))
            .bind(tenant.0)
            .bind(now)
            .bind(now);
    }
    if keyed {
        let rows = q.fetch_all(&mut *conn).await?;
        return Ok(Some(
            rows.iter()
                .map(|r| r.try_get(0))
                .collect::<sqlx::Result<_>>()?,
        ));
    }
    let written = q.execute(&mut *conn).await?;
    // Without a key nothing can conflict (an id collision would have been an error).
    debug_assert_eq!(written.rows_affected() as usize, jobs.len());
    Ok(None)
}
