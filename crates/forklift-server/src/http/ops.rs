//! For operators: liveness and readiness (no key: they carry no tenant's data), and
//! Prometheus metrics (the operator's metrics token: they count every tenant's jobs).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use forklift::metric_labels::queue_label;
use serde::Serialize;
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use super::AppState;
use super::error::{ApiError, ErrorBody};

/// `{"status": "ok"}`.
#[derive(Serialize, ToSchema)]
pub struct Health {
    pub status: String,
}

/// The process is up.
#[utoipa::path(get, path = "/health", tag = "ops", responses((status = 200, body = Health)))]
pub async fn health() -> axum::Json<Health> {
    axum::Json(Health {
        status: "ok".into(),
    })
}

/// The database answers.
#[utoipa::path(get, path = "/ready", tag = "ops",
    responses((status = 200, body = Health), (status = 503, body = ErrorBody)))]
pub async fn ready(State(state): State<AppState>) -> Result<axum::Json<Health>, ApiError> {
    state.client.store().ping().await?;
    Ok(axum::Json(Health {
        status: "ready".into(),
    }))
}

/// How long a queue-depth reading serves scrapes before the database is asked again.
const DEPTH_TTL: Duration = Duration::from_secs(5);

/// What scrapes share: one at a time, and the last queue-depth reading.
#[derive(Default)]
pub struct Scrapes {
    last: tokio::sync::Mutex<DepthReading>,
}

#[derive(Default)]
struct DepthReading {
    at: Option<Instant>,
    /// Every (queue, status) gauge set so far: one that is absent from a reading goes
    /// back to 0, rather than keeping its last value after its queue emptied.
    gauges: HashSet<(String, &'static str)>,
}

/// Prometheus text format: jobs enqueued and finished by type, queue and status; queue
/// depth; wait-time and run-time histograms. For the operator only: send the metrics
/// token (`--metrics-token`, `FORKLIFT_METRICS_TOKEN`) as a bearer token; tenants' API keys
/// do not open it, since it counts every tenant's jobs. Without a token configured it is
/// served only under `--dev`. Type and queue labels are bounded (the first 100 pairs by
/// name, the rest as `_other`); queue depth is read at most every 5 s.
#[utoipa::path(get, path = "/metrics", tag = "ops",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain", body = String),
        (status = 401, description = "Missing or wrong metrics token", body = ErrorBody),
        (status = 403, description = "No metrics token is configured", body = ErrorBody)),
    security(("metrics_token" = [])))]
pub async fn metrics(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    authorize(&state, &headers)?;
    // One scrape at a time: concurrent ones wait here rather than each counting and
    // rendering, which is what let 32 scrapes stall the API.
    let mut last = state.scrapes.last.lock().await;
    if last.at.is_none_or(|at| at.elapsed() >= DEPTH_TTL) {
        match state.client.store().queue_depths().await {
            Ok(depths) => set_depth_gauges(&mut last, depths),
            Err(e) => tracing::warn!(error = %e, "could not read queue depth for metrics"),
        }
        last.at = Some(Instant::now());
    }
    let body = match state.metrics.clone() {
        // Rendering walks every series: off the async threads, so requests go on.
        Some(handle) => tokio::task::spawn_blocking(move || handle.render())
            .await
            .unwrap_or_default(),
        None => String::new(),
    };
    drop(last);
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        body,
    ))
}

fn authorize(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(token) = &state.config.metrics_token else {
        if state.config.dev {
            return Ok(());
        }
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "metrics_disabled",
            "metrics need a token: start the server with --metrics-token (FORKLIFT_METRICS_TOKEN) and scrape with it as a bearer token",
        ));
    };
    let mut sent = headers.get_all(header::AUTHORIZATION).iter();
    let given = match (sent.next(), sent.next()) {
        (Some(value), None) => super::extract::bearer(value),
        _ => None,
    };
    // Compared as digests, so the time taken says nothing about how much of it matched.
    let digest = |s: &str| Sha256::digest(s.as_bytes());
    match given {
        Some(given) if digest(given) == digest(token.trim()) => Ok(()),
        _ => Err(ApiError::unauthorized(
            "send the metrics token as `Authorization: Bearer <token>`",
        )),
    }
}

fn set_depth_gauges(last: &mut DepthReading, depths: Vec<forklift::store::JobCount>) {
    let mut now: HashMap<(String, &'static str), i64> = HashMap::new();
    for d in depths {
        let key = (queue_label(&d.queue), d.status.as_str());
        *now.entry(key).or_default() += d.count;
    }
    for gone in last.gauges.difference(&now.keys().cloned().collect()) {
        metrics::gauge!("forklift_queue_depth", "queue" => gone.0.clone(), "status" => gone.1)
            .set(0.0);
    }
    for ((queue, status), count) in &now {
        metrics::gauge!("forklift_queue_depth", "queue" => queue.clone(), "status" => *status)
            .set(*count as f64);
    }
    last.gauges.extend(now.into_keys());
}
