//! The API's one error type: every failure becomes `{"error": {"code", "message"}}` with
//! the status SPEC §5 gives. Internal errors are logged here, once, and never leak detail.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Seconds, for 429.
    pub retry_after: Option<u64>,
}

/// The error body.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// What went wrong: `code` for programs (snake_case), `message` for people.
#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
    pub fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", "no such job")
    }
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }
}

impl From<forklift::Error> for ApiError {
    fn from(e: forklift::Error) -> Self {
        match e {
            forklift::Error::Invalid { field, message } => {
                ApiError::bad_request("invalid_field", format!("invalid `{field}`: {message}"))
            }
            forklift::Error::NotFound => ApiError::not_found(),
            forklift::Error::Conflict { message, .. } => {
                ApiError::new(StatusCode::CONFLICT, "invalid_status", message)
            }
            // A value the database refused (validation should have caught it first): the
            // request's fault, and sending it again would fail again, so not a 503.
            e if e.is_refused_value() => {
                tracing::warn!(error = %e, "the database refused a value of the request");
                ApiError::bad_request(
                    "invalid_value",
                    "the database cannot store a value of this request",
                )
            }
            forklift::Error::Database(e) => {
                tracing::error!(error = %e, "database error");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "database_unavailable",
                    "the database is unavailable; try again",
                )
            }
            other => {
                tracing::error!(error = %other, "internal error");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "database_unavailable",
                    "the database is unavailable; try again",
                )
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: self.message,
            },
        };
        let mut response = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}
