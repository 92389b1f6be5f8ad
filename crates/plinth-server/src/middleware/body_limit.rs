//! Refuses a body whose declared `Content-Length` is over the limit before
//! reading any of it. Bodies without a length (chunked) are cut at the same
//! limit while being read, by axum's `DefaultBodyLimit`, and rejected by the
//! JSON extractor with the same 413 problem.

use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};

use crate::json::payload_too_large;
use crate::problem::ApiError;

/// The 413 answer when the declared length is over `max_body_bytes`.
pub fn refuse_oversized_body(headers: &HeaderMap, max_body_bytes: usize) -> Option<Response> {
    let declared_length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|text| text.parse::<u64>().ok())?;
    if declared_length <= max_body_bytes as u64 {
        return None;
    }
    Some(ApiError(payload_too_large()).into_response())
}
