//! A body declared larger than the limit is refused from its `Content-Length` alone,
//! before a byte of it is read: the client is not told `100 Continue` and does not send
//! megabytes that would only be thrown away. (A chunked body has no declared length; the
//! JSON extractor stops reading it at the limit.)

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;

/// Middleware: 413 for a request whose `Content-Length` is over `limit` bytes.
pub async fn refuse_oversized_body(
    State(limit): State<usize>,
    request: Request,
    next: Next,
) -> Response {
    // hyper has already refused a malformed or conflicting Content-Length with 400.
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return ApiError::payload_too_large(limit).into_response();
    }
    next.run(request).await
}
