//! `/jobs`: enqueue, read, list, cancel, retry.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use chrono::{DateTime, Utc};
use forklift::{Client, Cursor, JobStatus, ListParams, MAX_BATCH};
use serde::Deserialize;
use utoipa::IntoParams;

use super::AppState;
use super::error::{ApiError, ErrorBody};
use super::extract::{ApiJson, ApiQuery, JobIdPath, Tenant, single_header};
use super::model::{BatchRequest, BatchResponse, EnqueueRequest, JobList, JobView, StatusName};
use super::{idempotency, quota};

fn client(state: &AppState, tenant: Tenant) -> Client {
    state.client.for_tenant(tenant.0)
}

/// The `Idempotency-Key` header: 1–255 printable ASCII characters, sent once.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = single_header(headers, "idempotency-key")? else {
        return Ok(None);
    };
    let printable = value.as_bytes().iter().all(|b| (0x20..0x7f).contains(b));
    match value.to_str() {
        Ok(key) if printable && (1..=255).contains(&key.len()) => Ok(Some(key.to_string())),
        _ => Err(ApiError::invalid(
            "Idempotency-Key",
            "must be 1 to 255 printable ASCII characters",
        )),
    }
}

/// Enqueue one job.
///
/// A live job with the same key (`unique_key`, or else the `Idempotency-Key` header)
/// answers 200 with that job and enqueues nothing. With the header, the job must also be
/// the one this request asks for (same `type`, `payload`, `queue`, `priority`,
/// `max_attempts`, `timeout_seconds` and `tags`); otherwise the answer is 409
/// `idempotency_key_reused`.
#[utoipa::path(post, path = "/jobs", tag = "jobs", request_body = EnqueueRequest,
    params(("Idempotency-Key" = Option<String>, Header, nullable = false, min_length = 1, max_length = 255,
        pattern = "^[!-~]([ -~]*[!-~])?$",
        description = "The key of this request, when the body has no `unique_key`: a retry of the same \
            request answers 200 with the job the first one made; a different request with the key of a \
            live job answers 409 `idempotency_key_reused`")),
    responses(
        (status = 202, description = "Enqueued", body = JobView),
        (status = 200, description = "An unfinished job with this unique key exists; nothing enqueued", body = JobView),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 408, description = "The body did not arrive in time", body = ErrorBody),
        (status = 409, description = "`Idempotency-Key` reused with a different request", body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody),
        (status = 429, description = "Rate limited (`rate_limited`), or the tenant's quota of unfinished jobs is full (`quota_exceeded`); see `Retry-After`", body = ErrorBody),
        (status = 503, body = ErrorBody)),
    security(("api_key" = [])))]
pub async fn enqueue(
    State(state): State<AppState>,
    tenant: Tenant,
    headers: HeaderMap,
    ApiJson(req): ApiJson<EnqueueRequest>,
) -> Result<impl IntoResponse, ApiError> {
    // The header is the key only when the body names none; then it also gets the check
    // that a reused key comes with the same request.
    let header_key = idempotency_key(&headers)?.filter(|_| req.unique_key.is_none());
    let job = req.into_new_job(header_key.clone())?;
    let _reserved = quota::reserve(&state, tenant.0, 1).await?;
    let inserted = client(&state, tenant)
        .enqueue_many(std::slice::from_ref(&job))
        .await?
        .pop()
        .expect("one job in, one result out");
    if inserted.inserted {
        return Ok((
            StatusCode::ACCEPTED,
            axum::Json(JobView::from(inserted.job)),
        ));
    }
    if let Some(key) = header_key {
        idempotency::check_reuse(&key, &inserted.job, &job)?;
    }
    Ok((StatusCode::OK, axum::Json(JobView::from(inserted.job))))
}

/// Enqueue up to 10,000 jobs at once, all or nothing.
#[utoipa::path(post, path = "/jobs/batch", tag = "jobs", request_body = BatchRequest,
    responses((status = 202, description = "Enqueued", body = BatchResponse),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 408, description = "The body did not arrive in time", body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody),
        (status = 429, description = "Rate limited (`rate_limited`), or the batch would take the tenant past its quota of unfinished jobs (`quota_exceeded`); see `Retry-After`", body = ErrorBody),
        (status = 503, body = ErrorBody)),
    security(("api_key" = [])))]
pub async fn enqueue_batch(
    State(state): State<AppState>,
    tenant: Tenant,
    ApiJson(req): ApiJson<BatchRequest>,
) -> Result<impl IntoResponse, ApiError> {
    if req.jobs.is_empty() || req.jobs.len() > MAX_BATCH {
        return Err(ApiError::invalid(
            "jobs",
            format!("send 1 to {MAX_BATCH} jobs"),
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
    let _reserved = quota::reserve(&state, tenant.0, jobs.len()).await?;
    let inserted = client(&state, tenant).enqueue_many(&jobs).await?;
    let job_ids = inserted.iter().map(|i| i.job.job_id.to_string()).collect();
    Ok((StatusCode::ACCEPTED, axum::Json(BatchResponse { job_ids })))
}

/// One job.
#[utoipa::path(get, path = "/jobs/{job_id}", tag = "jobs", params(JobIdParam),
    responses((status = 200, body = JobView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("api_key" = [])))]
pub async fn get(
    State(state): State<AppState>,
    tenant: Tenant,
    JobIdPath(id): JobIdPath,
) -> Result<axum::Json<JobView>, ApiError> {
    let job = client(&state, tenant).get(id).await?;
    Ok(axum::Json(job.into()))
}

/// The `{job_id}` of a path, for the document only: [`JobIdPath`] extracts it.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
pub struct JobIdParam {
    /// `job_` + 32 lowercase hex digits; anything else answers 404 like an unknown job.
    #[param(
        example = "job_31c8927959d5442e90e3a6bc5a9188ec",
        pattern = "^job_[0-9a-f]{32}$"
    )]
    job_id: String,
}

/// Filters and paging of `GET /jobs`. Each filter narrows the list; a malformed one is
/// refused (400) rather than matching nothing.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// One status or several, comma-separated: `status=QUEUED,RUNNING`.
    #[param(value_type = Option<Vec<StatusName>>, style = Form, explode = false, min_items = 1)]
    status: Option<String>,
    /// The job type: 1–100 characters of `[A-Za-z0-9_.:-]`.
    #[serde(rename = "type")]
    #[param(rename = "type", pattern = "^[A-Za-z0-9_.:-]{1,100}$")]
    job_type: Option<String>,
    /// The queue: 1–100 characters of `[A-Za-z0-9_.:-]`.
    #[param(pattern = "^[A-Za-z0-9_.:-]{1,100}$")]
    queue: Option<String>,
    /// Jobs with this tag: 1–100 characters, not U+0000.
    #[param(min_length = 1, max_length = 100, pattern = "^[^\\u0000]*$")]
    tag: Option<String>,
    /// Created at or after this time (RFC 3339, years 0000–9999).
    created_after: Option<DateTime<Utc>>,
    /// Created before this time (RFC 3339, years 0000–9999).
    created_before: Option<DateTime<Utc>>,
    /// 1–500, default 50.
    #[param(minimum = 1, maximum = 500)]
    limit: Option<i64>,
    /// `next_cursor` of the previous page.
    #[param(pattern = "^[0-9]{1,17}_[0-9a-f]{32}$")]
    cursor: Option<String>,
}

/// List jobs, newest first.
///
/// A status filter costs the same however many jobs are kept. A `type`, `queue` or `tag`
/// filter is checked on the jobs read, and one page reads at most 10,000 jobs of each
/// status: a page may then hold fewer jobs than `limit`, even none, and still have a
/// `next_cursor`. Only a null `next_cursor` ends the list.
#[utoipa::path(get, path = "/jobs", tag = "jobs", params(ListQuery),
    responses((status = 200, body = JobList), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("api_key" = [])))]
pub async fn list(
    State(state): State<AppState>,
    tenant: Tenant,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<axum::Json<JobList>, ApiError> {
    let statuses = match &q.status {
        None => Vec::new(),
        Some(s) => s
            .split(',')
            .map(|st| st.trim().parse::<JobStatus>())
            .collect::<Result<_, _>>()
            .map_err(|e| ApiError::invalid("status", e))?,
    };
    let limit = q.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::invalid("limit", "must be from 1 to 500"));
    }
    let cursor = match &q.cursor {
        None => None,
        Some(c) => Some(decode_cursor(c)?),
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

/// A `next_cursor` as this server makes them ([`Cursor::decode`] refuses anything else).
fn decode_cursor(c: &str) -> Result<Cursor, ApiError> {
    Cursor::decode(c)
        .ok_or_else(|| ApiError::invalid("cursor", "pass back a `next_cursor` unchanged"))
}

/// Cancel a job: a queued one at once; a running one is asked to stop.
#[utoipa::path(post, path = "/jobs/{job_id}/cancel", tag = "jobs", params(JobIdParam),
    responses((status = 200, body = JobView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "Already finished", body = ErrorBody), (status = 429, body = ErrorBody),
        (status = 503, body = ErrorBody)),
    security(("api_key" = [])))]
pub async fn cancel(
    State(state): State<AppState>,
    tenant: Tenant,
    JobIdPath(id): JobIdPath,
) -> Result<axum::Json<JobView>, ApiError> {
    let job = client(&state, tenant).cancel(id).await?;
    Ok(axum::Json(job.into()))
}

/// Queue a FAILED, PARTIAL_SUCCESS or CANCELLED job again with fresh attempts.
#[utoipa::path(post, path = "/jobs/{job_id}/retry", tag = "jobs", params(JobIdParam),
    responses((status = 200, body = JobView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "Not in a retryable status", body = ErrorBody),
        (status = 429, description = "Rate limited (`rate_limited`), or the tenant's quota of unfinished jobs is full (`quota_exceeded`); see `Retry-After`", body = ErrorBody),
        (status = 503, body = ErrorBody)),
    security(("api_key" = [])))]
pub async fn retry(
    State(state): State<AppState>,
    tenant: Tenant,
    JobIdPath(id): JobIdPath,
) -> Result<axum::Json<JobView>, ApiError> {
    // A retry makes a finished job unfinished again: it counts against the quota.
    let _reserved = quota::reserve(&state, tenant.0, 1).await?;
    let job = client(&state, tenant).retry(id).await?;
    Ok(axum::Json(job.into()))
}
