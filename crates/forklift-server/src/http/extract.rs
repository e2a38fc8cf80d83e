//! Extractors that turn every bad request into an [`ApiError`]: the JSON body (415, 400,
//! 408, 413), path and query parameters (400, 404), and the caller's tenant (401, 429).
//! axum's own extractors answer in plain text; none of them is used bare.

use axum::body::Bytes;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use forklift::{JobId, TenantId, check_name};
use serde::de::DeserializeOwned;

use super::AppState;
use super::error::ApiError;

/// The one value of a header that must not be repeated: two `Authorization` headers (or
/// two `Idempotency-Key`s) are refused rather than one of them silently chosen.
pub fn single_header<'a>(
    headers: &'a HeaderMap,
    name: &str,
) -> Result<Option<&'a HeaderValue>, ApiError> {
    let mut values = headers.get_all(name).iter();
    let first = values.next();
    if values.next().is_some() {
        return Err(ApiError::duplicate_header(name));
    }
    Ok(first)
}

/// `Json<T>`, with rejections in the API's error shape. The body must be JSON in UTF-8
/// (`application/json` or `application/*+json`, with no charset or `charset=utf-8`) and
/// arrive in full within [`crate::ApiConfig::body_timeout`].
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        check_json_content_type(req.headers())?;
        let timeout = state.config.body_timeout;
        let bytes = match tokio::time::timeout(timeout, Bytes::from_request(req, state)).await {
            Err(_) => {
                return Err(ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "body_timeout",
                    format!("the body did not arrive within {} s", timeout.as_secs_f64()),
                ));
            }
            Ok(Err(e)) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                return Err(ApiError::payload_too_large(state.config.max_body_bytes));
            }
            Ok(Err(e)) => return Err(ApiError::bad_request("bad_request", e.body_text())),
            Ok(Ok(bytes)) => bytes,
        };
        match axum::Json::<T>::from_bytes(&bytes) {
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            Err(JsonRejection::JsonSyntaxError(e)) => {
                Err(ApiError::bad_request("malformed_json", e.body_text()))
            }
            Err(e) => Err(ApiError::bad_request("invalid_field", e.body_text())),
        }
    }
}

/// JSON is UTF-8 (RFC 8259): a body declared in another charset would be misread, so it
/// is refused rather than parsed as UTF-8.
fn check_json_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let not_json = || {
        ApiError::unsupported_media_type(
            "send the body as JSON with `Content-Type: application/json`",
        )
    };
    let value = single_header(headers, header::CONTENT_TYPE.as_str())?.ok_or_else(not_json)?;
    let mime: mime::Mime = value
        .to_str()
        .ok()
        .and_then(|v| v.parse().ok())
        .ok_or_else(not_json)?;
    let is_json = mime.type_() == mime::APPLICATION
        && (mime.subtype() == mime::JSON || mime.suffix() == Some(mime::JSON));
    if !is_json {
        return Err(not_json());
    }
    match mime.get_param(mime::CHARSET) {
        Some(charset) if !charset.as_str().eq_ignore_ascii_case("utf-8") => {
            Err(ApiError::unsupported_media_type(format!(
                "JSON bodies are UTF-8; charset `{charset}` is not supported"
            )))
        }
        _ => Ok(()),
    }
}

/// The `{job_id}` of a path. Anything that is not a job id, including a segment that is
/// not UTF-8, cannot name a job: it answers 404 like an unknown one.
pub struct JobIdPath(pub JobId);

impl FromRequestParts<AppState> for JobIdPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Path(id) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::not_found())?;
        id.parse().map(JobIdPath).map_err(|_| ApiError::not_found())
    }
}

/// The `{name}` of a queue's path: 1–100 characters of `[A-Za-z0-9_.:-]`, else 400.
pub struct QueuePath(pub String);

impl FromRequestParts<AppState> for QueuePath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let name = Path::<String>::from_request_parts(parts, state)
            .await
            .map(|Path(name)| name)
            .unwrap_or_default(); // not UTF-8: refused by check_name as empty
        check_name("queue", &name)?;
        Ok(QueuePath(name))
    }
}

/// `Query<T>`, with rejections in the API's error shape.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned + Send> FromRequestParts<AppState> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(q)| ApiQuery(q))
            .map_err(|e| ApiError::bad_request("invalid_field", e.body_text()))
    }
}

/// The tenant the request acts for: its API key's, or the default tenant in `--dev`
/// mode when no key is sent. Also applies the tenant's rate limit.
pub struct Tenant(pub TenantId);

/// The credential of an `Authorization: Bearer <credential>` value, trimmed; the scheme is
/// case-insensitive (RFC 9110).
pub fn bearer(value: &HeaderValue) -> Option<&str> {
    let (scheme, credential) = value.to_str().ok()?.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(credential.trim())
}

impl FromRequestParts<AppState> for Tenant {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let tenant = match single_header(&parts.headers, header::AUTHORIZATION.as_str())? {
            None if state.config.dev => TenantId::DEFAULT,
            None => {
                return Err(ApiError::unauthorized(
                    "send `Authorization: Bearer <api key>`",
                ));
            }
            Some(value) => {
                let key = bearer(value).ok_or_else(|| {
                    ApiError::unauthorized("the Authorization header must be `Bearer <api key>`")
                })?;
                state
                    .keys
                    .tenant_of(key)
                    .await?
                    .ok_or_else(|| ApiError::unauthorized("unknown or revoked API key"))?
            }
        };
        state.limiter.check(tenant)?;
        Ok(Tenant(tenant))
    }
}
