//! `/jobs`: enqueue, read, list, cancel, retry.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use chrono::{DateTime, Utc};
use forklift::{Client, Cursor, JobId, JobStatus, ListParams, MAX_BATCH};
use serde::Deserialize;
use utoipa::IntoParams;

use super::AppState;
use super::error::{ApiError, ErrorBody};
use super::extract::{ApiJson, Tenant};
use super::model::{BatchRequest, BatchResponse, EnqueueRequest, JobList, JobView};

fn client(state: &AppState, tenant: Tenant) -> Client {
    state.client.for_tenant(tenant.0)
}

/// A malformed id cannot name a job: it answers like an unknown one.
fn parse_id(id: &str) -> Result<JobId, ApiError> {
    id.parse().map_err(|_| ApiError::not_found())
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    match headers.get("idempotency-key") {
        None => Ok(None),
        Some(v) => v.to_str().map(|s| Some(s.to_string())).map_err(|_| {
            ApiError::bad_request(
                "invalid_field",
                "invalid `Idempotency-Key`: must be visible ASCII",
            )
        }),
    }
}

/// Enqueue one job.
#[utoipa::path(post, path = "/jobs", tag = "jobs", request_body = EnqueueRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "Same as `unique_key`")),
    responses(
        (status = 202, description = "Enqueued", body = JobView),
        (status = 200, description = "An unfinished job with this unique key exists; nothing enqueued", body = JobView),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 415, body = ErrorBody), (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("api_key" = [])))]
pub async fn enqueue(
    State(state): State<AppState>,
    tenant: Tenant,
    headers: HeaderMap,
    ApiJson(req): ApiJson<EnqueueRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let job = req.into_new_job(idempotency_key(&headers)?)?;
    let inserted = client(&state, tenant).enqueue(job).await?;
    let status = if inserted.inserted {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    Ok((status, axum::Json(JobView::from(inserted.job))))
}

/// Enqueue up to 10,000 jobs at once, all or nothing.
#[utoipa::path(post, path = "/jobs/batch", tag = "jobs", request_body = BatchRequest,
    responses((status = 202, description = "Enqueued", body = BatchResponse),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 415, body = ErrorBody), (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("api_key" = [])))]
pub async fn enqueue_batch(
    State(state): State<AppState>,
    tenant: Tenant,
    ApiJson(req): ApiJson<BatchRequest>,
) -> Result<impl IntoResponse, ApiError> {
    if req.jobs.is_empty() || req.jobs.len() > MAX_BATCH {
        return Err(ApiError::bad_request(
            "invalid_field",
            format!("invalid `jobs`: send 1 to {MAX_BATCH} jobs"),
        ));
    }
    let jobs = req
        .jobs
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            r.into_new_job(None).map_err(|e| ApiError {
                message: format!("jobs[{i}]: {}", e.message),
                ..e
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let inserted = client(&state, tenant).enqueue_many(&jobs).await?;
    let job_ids = inserted.iter().map(|i| i.job.job_id.to_string()).collect();
    Ok((StatusCode::ACCEPTED, axum::Json(BatchResponse { job_ids })))
}

/// One job.
#[utoipa::path(get, path = "/jobs/{job_id}", tag = "jobs", params(("job_id" = String, Path)),
    responses((status = 200, body = JobView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("api_key" = [])))]
pub async fn get(
    State(state): State<AppState>,
    tenant: Tenant,
    Path(id): Path<String>,
) -> Result<axum::Json<JobView>, ApiError> {
    let job = client(&state, tenant).get(parse_id(&id)?).await?;
    Ok(axum::Json(job.into()))
}

/// Filters and paging of `GET /jobs`.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// One status or several, comma-separated.
    status: Option<String>,
    #[serde(rename = "type")]
    #[param(rename = "type")]
    job_type: Option<String>,
    queue: Option<String>,
    tag: Option<String>,
    created_after: Option<DateTime<Utc>>,
    created_before: Option<DateTime<Utc>>,
    /// 1–500, default 50.
    limit: Option<i64>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// List jobs, newest first.
#[utoipa::path(get, path = "/jobs", tag = "jobs", params(ListQuery),
    responses((status = 200, body = JobList), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("api_key" = [])))]
pub async fn list(
    State(state): State<AppState>,
    tenant: Tenant,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<axum::Json<JobList>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request("invalid_field", e.body_text()))?;
    let statuses = match &q.status {
        None => Vec::new(),
        Some(s) => s
            .split(',')
            .map(|st| st.trim().parse::<JobStatus>())
            .collect::<Result<_, _>>()
            .map_err(|e| {
                ApiError::bad_request("invalid_field", format!("invalid `status`: {e}"))
            })?,
    };
    let limit = q.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_field",
            "invalid `limit`: must be from 1 to 500",
        ));
    }
    let cursor = match &q.cursor {
        None => None,
        Some(c) => Some(
            Cursor::decode(c)
                .ok_or_else(|| ApiError::bad_request("invalid_field", "invalid `cursor`"))?,
        ),
    };
    let params = ListParams {
        statuses,
        job_type: q.job_type,
        queue: q.queue,
        tag: q.tag,
        created_after: q.created_after,
        created_before: q.created_before,
        limit,
        cursor,
    };
    let page = client(&state, tenant).list(&params).await?;
    Ok(axum::Json(JobList {
        jobs: page.jobs.into_iter().map(Into::into).collect(),
        next_cursor: page.next_cursor.map(|c| c.encode()),
    }))
}

/// Cancel a job: a queued one at once; a running one is asked to stop.
#[utoipa::path(post, path = "/jobs/{job_id}/cancel", tag = "jobs", params(("job_id" = String, Path)),
    responses((status = 200, body = JobView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "Already finished", body = ErrorBody), (status = 429, body = ErrorBody),
        (status = 503, body = ErrorBody)),
    security(("api_key" = [])))]
pub async fn cancel(
    State(state): State<AppState>,
    tenant: Tenant,
    Path(id): Path<String>,
) -> Result<axum::Json<JobView>, ApiError> {
    let job = client(&state, tenant).cancel(parse_id(&id)?).await?;
    Ok(axum::Json(job.into()))
}

/// Queue a FAILED, PARTIAL_SUCCESS or CANCELLED job again with fresh attempts.
#[utoipa::path(post, path = "/jobs/{job_id}/retry", tag = "jobs", params(("job_id" = String, Path)),
    responses((status = 200, body = JobView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "Not in a retryable status", body = ErrorBody), (status = 429, body = ErrorBody),
        (status = 503, body = ErrorBody)),
    security(("api_key" = [])))]
pub async fn retry(
    State(state): State<AppState>,
    tenant: Tenant,
    Path(id): Path<String>,
) -> Result<axum::Json<JobView>, ApiError> {
    let job = client(&state, tenant).retry(parse_id(&id)?).await?;
    Ok(axum::Json(job.into()))
}
