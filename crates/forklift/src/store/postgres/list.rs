//! Listing a tenant's jobs, newest first, with filters and keyset pagination (see
//! [`ListPlan`] for how a page is read).

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, Postgres, QueryBuilder};

use super::db::Db;
use uuid::Uuid;

use super::row::{JOB_COLUMNS, JobRow};
use crate::error::Result;
use crate::job::{JobId, JobStatus, TenantId};
use crate::store::{Cursor, JobPage, LIST_SCAN_ROWS, ListParams, ListPlan};

pub async fn list(pool: &Db, tenant: TenantId, p: &ListParams) -> Result<JobPage> {
    let plan = ListPlan::new(p);
    if !plan.narrowed {
        return read_page(page_query(tenant, &plan, None), true, &plan, None, pool).await;
    }
    // The edge and the page from one snapshot: rows written between two statements would
    // push older ones out of a status's bounded read, and the page would skip them.
    let mut tx = pool
        .pool
        .begin_with("begin isolation level repeatable read read only")
        .await?;
    let named = pool.named();
    let edge = edge(&mut tx, named, tenant, &plan).await?;
    let q = page_query(tenant, &plan, edge);
    let page = read_page(q, named, &plan, edge, &mut *tx).await?;
    tx.commit().await?;
    Ok(page)
}

/// The page's rows, newest first, up to `limit + 1`.
fn page_query(
    tenant: TenantId,
    plan: &ListPlan<'_>,
    edge: Option<Cursor>,
) -> QueryBuilder<'static, Postgres> {
    let mut q = QueryBuilder::new("select * from (");
    for (i, status) in plan.statuses.iter().enumerate() {
        if i > 0 {
            q.push(" union all ");
        }
        if plan.narrowed {
            q.push("(select * from ");
        }
        q.push(format!("(select {JOB_COLUMNS} from forklift_jobs"));
        range(&mut q, tenant, plan, *status);
        if plan.narrowed {
            // Read in the index's order, at most the bound, then filter: the bound is in
            // the query's shape, whatever plan the statistics would suggest.
            q.push(" order by created_at desc, id desc limit ")
                .push_bind(LIST_SCAN_ROWS)
                .push(") read where true");
        }
        if let Some(t) = &plan.params.job_type {
            q.push(" and job_type = ").push_bind(t.clone());
        }
        if let Some(queue) = &plan.params.queue {
            q.push(" and queue = ").push_bind(queue.clone());
        }
        if let Some(tag) = &plan.params.tag {
            q.push(" and tags ? ").push_bind(tag.clone());
        }
        if let Some(e) = edge {
            q.push(" and (created_at, id) >= (")
                .push_bind(e.created_at)
                .push(", ")
                .push_bind(e.id.0)
                .push(")");
        }
        q.push(" order by created_at desc, id desc limit ")
            .push_bind(plan.params.limit + 1)
            .push(")");
    }
    q.push(") page order by created_at desc, id desc limit ")
        .push_bind(plan.params.limit + 1);
    q
}

/// Runs [`page_query`]; `named`: whether the statement may be kept on the server (inside a
/// transaction of our own behind a pooler it may not; the pool's executor sees to itself).
async fn read_page<'c>(
    mut q: QueryBuilder<'static, Postgres>,
    named: bool,
    plan: &ListPlan<'_>,
    edge: Option<Cursor>,
    on: impl sqlx::Executor<'c, Database = Postgres>,
) -> Result<JobPage> {
    let rows: Vec<JobRow> = q.build_query_as().persistent(named).fetch_all(on).await?;
    Ok(plan.page(rows.into_iter().map(JobRow::into_job).collect(), edge))
}

/// `where` the tenant, one status, the time filters and the cursor: one range of the
/// `(tenant_id, status, created_at desc, id desc)` index.
fn range(
    q: &mut QueryBuilder<'static, Postgres>,
    tenant: TenantId,
    plan: &ListPlan<'_>,
    status: JobStatus,
) {
    q.push(" where tenant_id = ")
        .push_bind(tenant.0)
        .push(" and status = ")
        .push_bind(status.as_str());
    if let Some(t) = plan.params.created_after {
        q.push(" and created_at > ").push_bind(t);
    }
    if let Some(t) = plan.params.created_before {
        q.push(" and created_at < ").push_bind(t);
    }
    if let Some(c) = plan.params.cursor {
        q.push(" and (created_at, id) < (")
            .push_bind(c.created_at)
            .push(", ")
            .push_bind(c.id.0)
            .push(")");
    }
}

/// How deep this page may read: the newest of the statuses' [`LIST_SCAN_ROWS`]-th jobs;
/// none when no status has that many left.
async fn edge(
    conn: &mut PgConnection,
    named: bool,
    tenant: TenantId,
    plan: &ListPlan<'_>,
) -> Result<Option<Cursor>> {
    let mut q = QueryBuilder::new("select * from (");
    for (i, status) in plan.statuses.iter().enumerate() {
        if i > 0 {
            q.push(" union all ");
        }
        q.push("(select created_at, id from forklift_jobs");
        range(&mut q, tenant, plan, *status);
        q.push(" order by created_at desc, id desc offset ")
            .push_bind(LIST_SCAN_ROWS - 1)
            .push(" limit 1)");
    }
    q.push(") edges order by created_at desc, id desc limit 1");
    let edge: Option<(DateTime<Utc>, Uuid)> = q
        .build_query_as()
        .persistent(named)
        .fetch_optional(conn)
        .await?;
    Ok(edge.map(|(created_at, id)| Cursor {
        created_at,
        id: JobId(id),
    }))
}
