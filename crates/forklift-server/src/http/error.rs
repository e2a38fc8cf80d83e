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
    /// A field (or parameter) is out of its documented range or shape.
    pub fn invalid(field: &str, message: impl std::fmt::Display) -> Self {
        Self::bad_request("invalid_field", format!("invalid `{field}`: {message}"))
    }
    pub fn payload_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the body is over the limit of {limit} bytes"),
        )
    }
    pub fn unsupported_media_type(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            message,
        )
    }
    /// A header that must come once came more than once: which value to believe is
    /// ambiguous (a proxy may have read the other one), so neither is.
    pub fn duplicate_header(name: &str) -> Self {
        Self::bad_request(
            "duplicate_header",
            format!("send the `{name}` header once, not several times"),
        )
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
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
