//! Errors as `application/problem+json` (RFC 9457), with a stable machine
//! `code` and the request id. The one place where an error kind (or, for a
//! few codes, the code itself) becomes an HTTP status, and where a failed
//! event-store append becomes a problem that carries the stream's current
//! version.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use plinth_core::{Error, ErrorKind};
use plinth_events::AppendError;
use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

use crate::middleware::request_context::current_request_id;

pub const PROBLEM_CONTENT_TYPE: &str = "application/problem+json";

/// The body of every error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProblemDocument {
    /// A URI naming the problem type: `urn:plinth:problem:<code>`.
    #[serde(rename = "type")]
    pub problem_type: String,
    pub title: String,
    pub status: u16,
    /// What went wrong and what to change.
    pub detail: String,
    /// Stable machine-readable code (`invalid_name`, `unauthenticated`, ...).
    pub code: String,
    /// The request id, also in the `X-Request-Id` header and the logs.
    pub request_id: Option<String>,
}

/// A [`plinth_core::Error`] on its way out as an HTTP response.
#[derive(Debug)]
pub struct ApiError(pub Error);

impl From<Error> for ApiError {
    fn from(error: Error) -> Self {
        ApiError(error)
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

pub fn status_for(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::InvalidArgument => StatusCode::BAD_REQUEST,
        ErrorKind::Unauthenticated => StatusCode::UNAUTHORIZED,
        ErrorKind::PermissionDenied => StatusCode::FORBIDDEN,
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        ErrorKind::Conflict => StatusCode::CONFLICT,
        ErrorKind::PreconditionFailed => StatusCode::PRECONDITION_FAILED,
        ErrorKind::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorKind::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ErrorKind::Unprocessable => StatusCode::UNPROCESSABLE_ENTITY,
        ErrorKind::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// Codes whose status is more precise than their kind's.
fn status_for_code(code: &str) -> Option<StatusCode> {
    match code {
        // A hard-deleted stream is gone for good: unlike a 404, retrying
        // or creating it will never help.
        "stream_deleted" => Some(StatusCode::GONE),
        _ => None,
    }
}

/// The status an error is answered with.
pub fn status_for_error(error: &Error) -> StatusCode {
    status_for_code(error.code()).unwrap_or_else(|| status_for(error.kind()))
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        problem_response(self.0, Map::new())
    }
}

/// A failed event-store append or delete on its way out. A version
/// conflict is a 409 whose problem document also carries `stream`,
/// `expected_version` and `current_version` (`null` when the stream has
/// no events), so the client can rebase without another read.
#[derive(Debug)]
pub struct AppendProblem(pub AppendError);

impl From<AppendError> for AppendProblem {
    fn from(error: AppendError) -> Self {
        AppendProblem(error)
    }
}

impl From<Error> for AppendProblem {
    fn from(error: Error) -> Self {
        AppendProblem(AppendError::Failed(error))
    }
}

impl IntoResponse for AppendProblem {
    fn into_response(self) -> Response {
        let mut members = Map::new();
        if let AppendError::WrongExpectedVersion(conflict) = &self.0 {
            members.insert("stream".to_string(), Value::from(conflict.stream.clone()));
            members.insert(
                "expected_version".to_string(),
                serde_json::to_value(conflict.expected_version).unwrap_or(Value::Null),
            );
            members.insert(
                "current_version".to_string(),
                serde_json::to_value(conflict.current_version).unwrap_or(Value::Null),
            );
        }
        problem_response(self.0.into_error(), members)
    }
}

/// The problem document of `error`, with RFC 9457 extension `members`.
fn problem_response(error: Error, members: Map<String, Value>) -> Response {
    let status = status_for_error(&error);
    if status.is_server_error() {
        tracing::error!(
            code = error.code(),
            detail = error.detail(),
            "request failed"
        );
    }
    let document = ProblemDocument {
        problem_type: format!("urn:plinth:problem:{}", error.code()),
        title: status.canonical_reason().unwrap_or("Error").to_string(),
        status: status.as_u16(),
        detail: error.detail().to_string(),
        code: error.code().to_string(),
        request_id: current_request_id(),
    };
    let mut body_value = serde_json::to_value(&document).unwrap_or(Value::Null);
    if let Value::Object(fields) = &mut body_value {
        fields.extend(members);
    }
    let body = serde_json::to_vec(&body_value).unwrap_or_default();
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(PROBLEM_CONTENT_TYPE),
    );
    if let Some(retry_after) = error.retry_after() {
        let seconds = retry_after.as_secs().max(1);
        if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
            headers.insert(header::RETRY_AFTER, value);
        }
    }
    if error.kind() == ErrorKind::Unauthenticated {
        headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    response
}
