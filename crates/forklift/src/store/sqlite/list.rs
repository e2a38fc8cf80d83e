//! Listing a tenant's jobs, newest first, with filters and keyset pagination: as on
//! PostgreSQL (see [`ListPlan`]), with `json_each` where it has `?` on arrays.

use sqlx::{QueryBuilder, Sqlite, SqliteConnection, SqlitePool};
use uuid::Uuid;

use super::row::{JOB_COLUMNS, JobRow, from_micros};
use crate::error::Result;
use crate::job::{JobId, JobStatus, TenantId};
use crate::store::{Cursor, JobPage, LIST_SCAN_ROWS, ListParams, ListPlan};

pub async fn list(pool: &SqlitePool, tenant: TenantId, p: &ListParams) -> Result<JobPage> {
    let plan = ListPlan::new(p);
    // The edge and the page from one snapshot (a read transaction in WAL mode): rows
    // written between two statements would push older ones out of a status's bounded
    // read, and the page would skip them.
    let mut tx = pool.begin().await?;
    let edge = if plan.narrowed {
        edge(&mut tx, tenant, &plan).await?
    } else {
        None
    };
    let mut q = QueryBuilder::new("select * from (");
    for (i, status) in plan.statuses.iter().enumerate() {
        if i > 0 {
            q.push(" union all ");
        }
        q.push("select * from (");
        if plan.narrowed {
            q.push("select * from (");
        }
        q.push(format!("select {JOB_COLUMNS} from forklift_jobs"));
        range(&mut q, tenant, &plan, *status);
        if plan.narrowed {
            // Read in the index's order, at most the bound, then filter (as on PostgreSQL).
            q.push(" order by created_at desc, id desc limit ")
                .push_bind(LIST_SCAN_ROWS)
                .push(") where true");
        }
        if let Some(t) = &plan.params.job_type {
            q.push(" and job_type = ").push_bind(t.clone());
        }
        if let Some(queue) = &plan.params.queue {
            q.push(" and queue = ").push_bind(queue.clone());
        }
        if let Some(tag) = &plan.params.tag {
            q.push(" and exists (select 1 from json_each(tags) where value = ")
                .push_bind(tag.clone())
                .push(")");
        }
        if let Some(e) = edge {
            q.push(" and (created_at, id) >= (")
                .push_bind(e.created_at.timestamp_micros())
                .push(", ")
                .push_bind(e.id.0)
                .push(")");
        }
        q.push(" order by created_at desc, id desc limit ")
            .push_bind(plan.params.limit + 1)
            .push(")");
    }
    q.push(") order by created_at desc, id desc limit ")
        .push_bind(plan.params.limit + 1);
    let rows: Vec<JobRow> = q.build_query_as().fetch_all(&mut *tx).await?;
    tx.commit().await?;
    Ok(plan.page(rows.into_iter().map(JobRow::into_job).collect(), edge))
}

/// `where` the tenant, one status, the time filters and the cursor: one range of the
/// `(tenant_id, status, created_at desc, id desc)` index.
fn range(
    q: &mut QueryBuilder<'_, Sqlite>,
    tenant: TenantId,
    plan: &ListPlan<'_>,
    status: JobStatus,
) {
    q.push(" where tenant_id = ")
        .push_bind(tenant.0)
        .push(" and status = ")
        .push_bind(status.as_str());
    if let Some(t) = plan.params.created_after {
        q.push(" and created_at > ").push_bind(t.timestamp_micros());
    }
    if let Some(t) = plan.params.created_before {
        q.push(" and created_at < ").push_bind(t.timestamp_micros());
    }
    if let Some(c) = plan.params.cursor {
        q.push(" and (created_at, id) < (")
            .push_bind(c.created_at.timestamp_micros())
            .push(", ")
            .push_bind(c.id.0)
            .push(")");
    }
}

/// How deep this page may read: the newest of the statuses' [`LIST_SCAN_ROWS`]-th jobs;
/// none when no status has that many left.
async fn edge(
    conn: &mut SqliteConnection,
    tenant: TenantId,
    plan: &ListPlan<'_>,
) -> Result<Option<Cursor>> {
    let mut q = QueryBuilder::new("select * from (");
    for (i, status) in plan.statuses.iter().enumerate() {
        if i > 0 {
            q.push(" union all ");
        }
        q.push("select * from (select created_at, id from forklift_jobs");
        range(&mut q, tenant, plan, *status);
        q.push(" order by created_at desc, id desc limit 1 offset ")
            .push_bind(LIST_SCAN_ROWS - 1)
            .push(")");
    }
    q.push(") order by created_at desc, id desc limit 1");
    let edge: Option<(i64, Uuid)> = q.build_query_as().fetch_optional(conn).await?;
    Ok(edge.map(|(created_at, id)| Cursor {
        created_at: from_micros(created_at),
        id: JobId(id),
    }))
}
