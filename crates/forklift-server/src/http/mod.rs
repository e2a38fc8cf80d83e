//! The Jobs API as an axum [`Router`] that another service can mount in its own app.

pub mod content_length;
pub mod error;
pub mod extract;
pub mod idempotency;
pub mod jobs;
pub mod loopback;
pub mod model;
pub mod ops;
pub mod payload;
pub mod queues;
pub mod quota;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::{Router, middleware};
use forklift::Client;
use metrics_exporter_prometheus::PrometheusHandle;
use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use self::error::ApiError;
use crate::auth::{KeyCache, Limiter};

/// How the API behaves. `Default` gives the documented defaults.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Serve requests without a key as the default tenant. Default false.
    pub dev: bool,
    /// The largest request body. Default 1 MiB.
    pub max_body_bytes: usize,
    /// How long a request body may take to arrive in full; a slower one gets 408. Default
    /// 30 s (1 MiB at 35 kB/s).
    pub body_timeout: Duration,
    /// Requests per second per tenant, on average; 0 turns limiting off. Default 100.
    pub rate_limit_per_second: u32,
    /// Requests a tenant may send at once above the rate. Default 200.
    pub rate_limit_burst: u32,
    /// How long a looked-up API key is trusted before it is checked again. Default 10 s.
    pub key_cache_ttl: Duration,
    /// The bearer token that opens `/metrics` (tenants' keys do not). Default none:
    /// `/metrics` is then served only under `dev`.
    pub metrics_token: Option<String>,
    /// Jobs a tenant may have unfinished (queued or running): an enqueue or a retry that
    /// would go past it answers 429 `quota_exceeded`, so that one tenant cannot fill the
    /// database. Requests in flight in this process count (see `quota.rs`); other API
    /// processes' in flight do not. Checked before a unique key is looked up, so while the
    /// quota is full a repeated keyed enqueue is refused too, not answered 200. 0, the
    /// default, is no quota.
    pub max_unfinished_jobs: u64,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            dev: false,
            max_body_bytes: 1024 * 1024,
            body_timeout: Duration::from_secs(30),
            rate_limit_per_second: 100,
            rate_limit_burst: 200,
            key_cache_ttl: Duration::from_secs(10),
            metrics_token: None,
            max_unfinished_jobs: 0,
        }
    }
}

/// What handlers share.
#[derive(Clone)]
pub struct AppState {
    pub client: Client,
    pub config: Arc<ApiConfig>,
    pub keys: Arc<KeyCache>,
    pub limiter: Arc<Limiter>,
    /// Renders `/metrics`; `None` when the embedding app installed its own recorder.
    pub metrics: Option<PrometheusHandle>,
    pub scrapes: Arc<ops::Scrapes>,
    /// Jobs being added by requests in flight, for the quota of unfinished jobs.
    pub reservations: Arc<quota::Reservations>,
}

impl AppState {
    pub fn new(client: Client, config: ApiConfig, metrics: Option<PrometheusHandle>) -> Self {
        AppState {
            keys: Arc::new(KeyCache::new(client.store().clone(), config.key_cache_ttl)),
            limiter: Arc::new(Limiter::new(
                config.rate_limit_per_second,
                config.rate_limit_burst,
            )),
            config: Arc::new(config),
            client,
            metrics,
            scrapes: Arc::default(),
            reservations: Arc::default(),
        }
    }
}

/// What every operation shares, said once in the document's description.
const API_DESCRIPTION: &str = "Background jobs over HTTP: enqueue, watch, cancel, retry.

Every error, whatever the operation, is `{\"error\": {\"code\", \"message\"}}`: `code` is \
snake_case for programs, `message` is for people. Besides the answers each operation lists, \
any request can get 400 `duplicate_header` (`Authorization`, `Idempotency-Key` or \
`Content-Type` sent more than once), 404 `no_route`, 405 `method_not_allowed` or 413 \
`payload_too_large` (a `Content-Length` over the limit is refused before the body is read). \
A server started with `--dev` serves requests without a key, and answers 403 `forbidden` to \
any request whose `Host` is not `localhost`, `127.0.0.1` or `[::1]` (any port), or whose \
`Origin` is not a page on one of those.

`Idempotency-Key` on `POST /jobs`: a retry of the same request answers 200 with the job the \
first one made; the same key with a different request (`type`, `payload`, `queue`, \
`priority`, `max_attempts`, `timeout_seconds` or `tags`) answers 409 `idempotency_key_reused` \
while that job is unfinished. The body's `unique_key` only deduplicates: a live job with the \
key answers 200, whatever the rest of the request; a body with `unique_key` makes the header \
ignored.

A server started with `--max-unfinished-jobs N` answers 429 `quota_exceeded` (with \
`Retry-After`) to an enqueue or retry that would give the tenant more than N queued or \
running jobs, a repeat of a keyed enqueue included: its 200 comes once there is room. Room \
comes back as jobs finish; a paused queue or a type no worker runs keeps it taken. A batch \
larger than N itself can never fit: 400 `batch_exceeds_quota`.";

#[derive(OpenApi)]
#[openapi(
    info(title = "Forklift Jobs API", description = API_DESCRIPTION),
    modifiers(&BearerAuth),
    tags((name = "jobs"), (name = "queues"), (name = "ops"))
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "metrics_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("metrics token")
                    .build(),
            ),
        );
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("API key")
                    .build(),
            ),
        );
    }
}

/// Every route with its documentation: registering a route here is what puts it in
/// `/openapi.json`, so the two cannot drift apart.
fn documented() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(jobs::enqueue, jobs::list))
        .routes(routes!(jobs::enqueue_batch))
        .routes(routes!(jobs::get))
        .routes(routes!(jobs::cancel))
        .routes(routes!(jobs::retry))
        .routes(routes!(queues::list))
        .routes(routes!(queues::pause))
        .routes(routes!(queues::resume))
        .routes(routes!(queues::stats))
        .routes(routes!(ops::health))
        .routes(routes!(ops::ready))
        .routes(routes!(ops::metrics))
        .routes(routes!(openapi_json))
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "ops",
    responses((status = 200, description = "The OpenAPI 3 document of this API", body = Object)))]
async fn openapi_json() -> impl axum::response::IntoResponse {
    // Serialized once: anyone may ask for it, without a key or a rate limit.
    static DOC: std::sync::OnceLock<axum::body::Bytes> = std::sync::OnceLock::new();
    let body = DOC.get_or_init(|| {
        serde_json::to_vec(&openapi())
            .expect("the document serializes")
            .into()
    });
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body.clone(),
    )
}

/// The OpenAPI document of every route [`router`] serves.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut doc = documented().split_for_parts().1;
    model::document_exclusive_fields(&mut doc);
    doc
}

/// The Jobs API. Mount it at the root (existing clients call `/jobs`) or nest it.
pub fn router(state: AppState) -> Router {
    let (api, _) = documented().split_for_parts();
    let limit = state.config.max_body_bytes;
    let mut app = api
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no_route", "no such endpoint") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this endpoint does not take that method",
            )
        })
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn_with_state(
            limit,
            content_length::refuse_oversized_body,
        ));
    if state.config.dev {
        app = app.layer(middleware::from_fn(loopback::loopback_only));
    }
    app.layer(tower_http::catch_panic::CatchPanicLayer::custom(|_| {
        axum::response::IntoResponse::into_response(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "the server failed on this request",
        ))
    }))
    .with_state(state)
}
