//! Bounds how long a request may run: past `server.request_timeout` the
//! handler is dropped and the client gets 504 with a problem document.

use std::time::Duration;

use axum::response::{IntoResponse, Response};
use plinth_core::{Error, ErrorKind};

use crate::problem::ApiError;

pub async fn run_with_timeout(
    timeout: Duration,
    handling: impl Future<Output = Response>,
) -> Response {
    match tokio::time::timeout(timeout, handling).await {
        Ok(response) => response,
        Err(_) => ApiError(Error::new(
            ErrorKind::DeadlineExceeded,
            "request_timeout",
            format!(
                "the request took longer than the server's limit of {}",
                plinth_core::HumanDuration(timeout)
            ),
        ))
        .into_response(),
    }
}
