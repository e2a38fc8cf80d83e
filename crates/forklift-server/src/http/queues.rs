//! `/queues` and `/stats`: what the tenant's queues hold and how fast they move.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::extract::State;
use chrono::{DateTime, Utc};
use forklift::JobStatus;
use serde::Serialize;
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::error::{ApiError, ErrorBody};
use super::extract::{QueuePath, Tenant};

/// One queue of the tenant.
#[derive(Serialize, ToSchema)]
pub struct QueueView {
    pub name: String,
    /// Queued jobs wait while paused; running ones finish.
    pub paused: bool,
    /// Jobs by status (every status is present).
    pub counts: BTreeMap<String, i64>,
}

/// The answer to `GET /queues`.
#[derive(Serialize, ToSchema)]
pub struct QueueList {
    pub queues: Vec<QueueView>,
}

fn zero_counts() -> BTreeMap<String, i64> {
    JobStatus::ALL
        .iter()
        .map(|s| (s.as_str().to_string(), 0))
        .collect()
}

async fn queue_views(state: &AppState, tenant: Tenant) -> Result<Vec<QueueView>, ApiError> {
    let store = state.client.store();
    let counts = store.job_counts(tenant.0).await?;
    let paused = store.queue_paused_list(tenant.0).await?;
    let mut queues: BTreeMap<String, QueueView> = BTreeMap::new();
    let entry = |queues: &mut BTreeMap<String, QueueView>, name: &str| {
        queues.entry(name.to_string()).or_insert_with(|| QueueView {
            name: name.to_string(),
            paused: paused.iter().any(|p| p == name),
            counts: zero_counts(),
        });
    };
    for c in &counts {
        entry(&mut queues, &c.queue);
        *queues
            .get_mut(&c.queue)
            .unwrap()
            .counts
            .get_mut(c.status.as_str())
            .unwrap() += c.count;
    }
    for p in &paused {
        entry(&mut queues, p);
    }
    Ok(queues.into_values().collect())
}

/// The tenant's queues: counts by status, and whether each is paused.
#[utoipa::path(get, path = "/queues", tag = "queues",
    responses((status = 200, body = QueueList), (status = 401, body = ErrorBody), (status = 429, body = ErrorBody),
        (status = 503, body = ErrorBody)),
    security(("api_key" = [])))]
pub async fn list(
    State(state): State<AppState>,
    tenant: Tenant,
) -> Result<axum::Json<QueueList>, ApiError> {
    Ok(axum::Json(QueueList {
        queues: queue_views(&state, tenant).await?,
    }))
}

async fn set_paused(
    state: AppState,
    tenant: Tenant,
    name: String,
    pause: bool,
) -> Result<axum::Json<QueueView>, ApiError> {
    let client = state.client.for_tenant(tenant.0);
    if pause {
        client.pause_queue(&name).await?
    } else {
        client.resume_queue(&name).await?
    };
    let views = queue_views(&state, tenant).await?;
    let view = views
        .into_iter()
        .find(|q| q.name == name)
        .unwrap_or(QueueView {
            name,
            paused: false,
            counts: zero_counts(),
        });
    Ok(axum::Json(view))
}

/// The `{name}` of a queue's path, for the document only: [`QueuePath`] extracts it.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
pub struct QueueParam {
    /// The queue: 1–100 characters of `[A-Za-z0-9_.:-]`.
    #[param(example = "default", pattern = "^[A-Za-z0-9_.:-]{1,100}$")]
    name: String,
}

/// Pause a queue: its queued jobs wait; running ones finish.
#[utoipa::path(post, path = "/queues/{name}/pause", tag = "queues", params(QueueParam),
    responses((status = 200, body = QueueView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("api_key" = [])))]
pub async fn pause(
    State(state): State<AppState>,
    tenant: Tenant,
    QueuePath(name): QueuePath,
) -> Result<axum::Json<QueueView>, ApiError> {
    set_paused(state, tenant, name, true).await
}

/// Resume a paused queue.
#[utoipa::path(post, path = "/queues/{name}/resume", tag = "queues", params(QueueParam),
    responses((status = 200, body = QueueView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("api_key" = [])))]
pub async fn resume(
    State(state): State<AppState>,
    tenant: Tenant,
    QueuePath(name): QueuePath,
) -> Result<axum::Json<QueueView>, ApiError> {
    set_paused(state, tenant, name, false).await
}

/// Jobs by status, by type and by queue.
#[derive(Serialize, ToSchema)]
pub struct Counts {
    pub by_status: BTreeMap<String, i64>,
    pub by_type: BTreeMap<String, BTreeMap<String, i64>>,
    pub by_queue: BTreeMap<String, BTreeMap<String, i64>>,
}

/// Jobs finished in one minute.
#[derive(Serialize, ToSchema)]
pub struct Minute {
    pub minute: DateTime<Utc>,
    pub completed: i64,
    pub failed: i64,
}

/// p50 and p95, in seconds; null when nothing was measured in the window.
#[derive(Serialize, ToSchema)]
pub struct Percentiles {
    pub p50: Option<f64>,
    pub p95: Option<f64>,
}

/// The answer to `GET /stats`.
#[derive(Serialize, ToSchema)]
pub struct StatsView {
    pub counts: Counts,
    /// Completed (SUCCESS and PARTIAL_SUCCESS) and failed per minute over the window.
    pub per_minute: Vec<Minute>,
    /// Queue latency: from `run_at` to start.
    pub wait_seconds: Percentiles,
    /// From start to finish.
    pub run_seconds: Percentiles,
    /// The window the rates and percentiles cover (one hour).
    pub window_seconds: u64,
}

const STATS_WINDOW: Duration = Duration::from_secs(3600);

/// The tenant's counts, throughput and latency.
#[utoipa::path(get, path = "/stats", tag = "queues",
    responses((status = 200, body = StatsView), (status = 401, body = ErrorBody), (status = 429, body = ErrorBody),
        (status = 503, body = ErrorBody)),
    security(("api_key" = [])))]
pub async fn stats(
    State(state): State<AppState>,
    tenant: Tenant,
) -> Result<axum::Json<StatsView>, ApiError> {
    let store = state.client.store();
    let rows = store.job_counts(tenant.0).await?;
    let recent = store.job_stats_recent(tenant.0, STATS_WINDOW).await?;
    let mut counts = Counts {
        by_status: zero_counts(),
        by_type: BTreeMap::new(),
        by_queue: BTreeMap::new(),
    };
    for r in rows {
        let st = r.status.as_str().to_string();
        *counts.by_status.entry(st.clone()).or_default() += r.count;
        *counts
            .by_type
            .entry(r.job_type)
            .or_insert_with(zero_counts)
            .entry(st.clone())
            .or_default() += r.count;
        *counts
            .by_queue
            .entry(r.queue)
            .or_insert_with(zero_counts)
            .entry(st)
            .or_default() += r.count;
    }
    Ok(axum::Json(StatsView {
        counts,
        per_minute: recent
            .per_minute
            .into_iter()
            .map(|m| Minute {
                minute: m.minute,
                completed: m.completed,
                failed: m.failed,
            })
            .collect(),
        wait_seconds: Percentiles {
            p50: recent.wait_p50,
            p95: recent.wait_p95,
        },
        run_seconds: Percentiles {
            p50: recent.run_p50,
            p95: recent.run_p95,
        },
        window_seconds: STATS_WINDOW.as_secs(),
    }))
}
