//! For operators: liveness, readiness and Prometheus metrics. No API key: these carry
//! no tenant's data (metrics are totals across tenants).

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde::Serialize;
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

/// Prometheus text format: jobs enqueued and finished by type, queue and status; queue
/// depth; wait-time and run-time histograms.
#[utoipa::path(get, path = "/metrics", tag = "ops",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain", body = String)))]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    // Depth is read at scrape time so that every process reports the same truth.
    match state.client.store().queue_depths().await {
        Ok(depths) => {
            for d in depths {
                metrics::gauge!("forklift_queue_depth", "queue" => d.queue, "status" => d.status.as_str())
                    .set(d.count as f64);
            }
        }
        Err(e) => tracing::warn!(error = %e, "could not read queue depth for metrics"),
    }
    let body = state
        .metrics
        .as_ref()
        .map(|h| h.render())
        .unwrap_or_default();
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        body,
    )
}
