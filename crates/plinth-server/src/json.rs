//! The JSON body extractor every route uses. Unlike axum's own, its
//! rejections are problem documents that say what to change: 415 for a
//! wrong content type, 413 for a body over the limit, 400 for malformed
//! JSON, 422 for wrong types or unknown fields (naming the field).

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use plinth_core::{Error, ErrorKind};
use serde::de::DeserializeOwned;

use crate::problem::ApiError;

pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(request, state).await {
            Ok(axum::Json(value)) => Ok(ApiJson(value)),
            Err(rejection) => Err(ApiError(json_rejection_to_error(rejection))),
        }
    }
}

fn json_rejection_to_error(rejection: JsonRejection) -> Error {
    match rejection {
        JsonRejection::MissingJsonContentType(_) => Error::new(
            ErrorKind::UnsupportedMediaType,
            "unsupported_media_type",
            "send the body as JSON with `Content-Type: application/json`",
        ),
        JsonRejection::JsonSyntaxError(syntax_error) => Error::invalid_argument(
            "malformed_json",
            format!(
                "the body is not valid JSON: {}",
                source_message(&syntax_error)
            ),
        ),
        JsonRejection::JsonDataError(data_error) => Error::new(
            ErrorKind::Unprocessable,
            "invalid_body",
            format!(
                "the body does not match the expected shape: {}",
                source_message(&data_error)
            ),
        ),
        JsonRejection::BytesRejection(bytes_rejection) => {
            if bytes_rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                return payload_too_large();
            }
            Error::invalid_argument("unreadable_body", bytes_rejection.body_text())
        }
        other => Error::invalid_argument("invalid_body", other.body_text()),
    }
}

pub fn payload_too_large() -> Error {
    Error::new(
        ErrorKind::PayloadTooLarge,
        "payload_too_large",
        "the request body is larger than the server accepts (server.max_body_bytes)",
    )
}

/// serde's message without axum's prefix ("Failed to deserialize...").
fn source_message(error: &dyn std::error::Error) -> String {
    let mut innermost: &dyn std::error::Error = error;
    while let Some(source) = innermost.source() {
        innermost = source;
    }
    innermost.to_string()
}
