//! Extractors that turn every bad request into an [`ApiError`]: the JSON body (415, 400,
//! 413) and the caller's tenant (401, 429).

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use forklift::TenantId;
use serde::de::DeserializeOwned;

use super::AppState;
use super::error::ApiError;

/// `Json<T>`, with rejections in the API's error shape.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            Err(JsonRejection::MissingJsonContentType(_)) => Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as JSON with `Content-Type: application/json`",
            )),
            Err(JsonRejection::JsonSyntaxError(e)) => {
                Err(ApiError::bad_request("malformed_json", e.body_text()))
            }
            Err(JsonRejection::JsonDataError(e)) => {
                Err(ApiError::bad_request("invalid_field", e.body_text()))
            }
            Err(JsonRejection::BytesRejection(e))
                if e.status() == StatusCode::PAYLOAD_TOO_LARGE =>
            {
                Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    format!(
                        "the body is over the limit of {} bytes",
                        state.config.max_body_bytes
                    ),
                ))
            }
            Err(e) => Err(ApiError::bad_request("bad_request", e.body_text())),
        }
    }
}

/// The tenant the request acts for: its API key's, or the default tenant in `--dev`
/// mode when no key is sent. Also applies the tenant's rate limit.
pub struct Tenant(pub TenantId);

impl FromRequestParts<AppState> for Tenant {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let header = parts.headers.get(axum::http::header::AUTHORIZATION);
        let tenant = match header {
            None if state.config.dev => TenantId::DEFAULT,
            None => {
                return Err(ApiError::unauthorized(
                    "send `Authorization: Bearer <api key>`",
                ));
            }
            Some(value) => {
                let key = value
                    .to_str()
                    .ok()
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .ok_or_else(|| {
                        ApiError::unauthorized(
                            "the Authorization header must be `Bearer <api key>`",
                        )
                    })?;
                state
                    .keys
                    .tenant_of(key.trim())
                    .await?
                    .ok_or_else(|| ApiError::unauthorized("unknown or revoked API key"))?
            }
        };
        state.limiter.check(tenant)?;
        Ok(Tenant(tenant))
    }
}
