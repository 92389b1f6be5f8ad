//! The answer of a request that ran past `server.request_timeout`: 504 with
//! a problem document. The edge drops the handler and sends this.

use std::time::Duration;

use axum::response::{IntoResponse, Response};
use plinth_core::{Error, ErrorKind};

use crate::problem::ApiError;

pub fn timeout_response(timeout: Duration) -> Response {
    ApiError(Error::new(
        ErrorKind::DeadlineExceeded,
        "request_timeout",
        format!(
            "the request took longer than the server's limit of {}",
            plinth_core::HumanDuration(timeout)
        ),
    ))
    .into_response()
}
