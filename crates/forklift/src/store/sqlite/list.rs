//! Listing a tenant's jobs, newest first, with filters and keyset pagination.

use sqlx::{QueryBuilder, SqlitePool};

use super::row::{JOB_COLUMNS, JobRow};
use crate::error::Result;
use crate::job::{Job, TenantId};
use crate::store::{Cursor, JobPage, ListParams};

/// One page; the filters mirror PostgreSQL's, with `json_each` where it has arrays and `?`.
/// The order and the cursor use the `(tenant_id, created_at desc, id desc)` index.
pub async fn list(pool: &SqlitePool, tenant: TenantId, p: &ListParams) -> Result<JobPage> {
    let limit = p.limit;
    let mut q = QueryBuilder::new(format!(
        "select {JOB_COLUMNS} from forklift_jobs where tenant_id = "
    ));
    q.push_bind(tenant.0);
    if !p.statuses.is_empty() {
        let statuses: Vec<&str> = p.statuses.iter().map(|s| s.as_str()).collect();
        let statuses = serde_json::to_string(&statuses).expect("strings serialize");
        q.push(" and status in (select value from json_each(")
            .push_bind(statuses)
            .push("))");
    }
    if let Some(t) = &p.job_type {
        q.push(" and job_type = ").push_bind(t.clone());
    }
    if let Some(queue) = &p.queue {
        q.push(" and queue = ").push_bind(queue.clone());
    }
    if let Some(tag) = &p.tag {
        q.push(" and exists (select 1 from json_each(tags) where value = ")
            .push_bind(tag.clone())
            .push(")");
    }
    if let Some(t) = p.created_after {
        q.push(" and created_at > ").push_bind(t.timestamp_micros());
    }
    if let Some(t) = p.created_before {
        q.push(" and created_at < ").push_bind(t.timestamp_micros());
    }
    if let Some(c) = p.cursor {
        q.push(" and (created_at, id) < (")
            .push_bind(c.created_at.timestamp_micros())
            .push(", ")
            .push_bind(c.id.0)
            .push(")");
    }
    q.push(" order by created_at desc, id desc limit ")
        .push_bind(limit + 1);
    let rows: Vec<JobRow> = q.build_query_as().fetch_all(pool).await?;
    let mut jobs: Vec<Job> = rows.into_iter().map(JobRow::into_job).collect();
    let next_cursor = if jobs.len() as i64 > limit {
        jobs.truncate(limit as usize);
        jobs.last().map(|j| Cursor {
            created_at: j.created_at,
            id: j.job_id,
        })
    } else {
        None
    };
    Ok(JobPage { jobs, next_cursor })
}
