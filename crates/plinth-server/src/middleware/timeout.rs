//! Bounds how long a request may run: past `server.request_timeout` the
//! handler is dropped and the client gets 504 with a problem document.

use std::time::Duration;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use plinth_core::{Error, ErrorKind};

use crate::problem::ApiError;

pub async fn request_timeout(
    State(timeout): State<Duration>,
    request: Request,
    next: Next,
) -> Response {
    match tokio::time::timeout(timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError(Error::new(
            ErrorKind::DeadlineExceeded,
            "request_timeout",
            format!(
                "the request took longer than the server's limit of {}",
                humantime_like(timeout)
            ),
        ))
        .into_response(),
    }
}

fn humantime_like(duration: Duration) -> String {
    plinth_core::HumanDuration(duration).to_string()
}
