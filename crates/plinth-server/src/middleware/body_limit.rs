//! Refuses a body whose declared `Content-Length` is over the limit before
//! reading any of it. Bodies without a length (chunked) are cut at the same
//! limit while being read, by axum's `DefaultBodyLimit`, and rejected by the
//! JSON extractor with the same 413 problem.

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::json::payload_too_large;
use crate::problem::ApiError;

pub async fn reject_oversized_body(
    State(max_body_bytes): State<usize>,
    request: Request,
    next: Next,
) -> Response {
    let declared_length = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|text| text.parse::<u64>().ok());
    if let Some(declared_length) = declared_length
        && declared_length > max_body_bytes as u64
    {
        return ApiError(payload_too_large()).into_response();
    }
    next.run(request).await
}
