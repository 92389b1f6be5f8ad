//! The outermost middleware: gives each request its id (from
//! `X-Request-Id` or generated), reads the W3C `traceparent`, opens the
//! span every log line of the request is written in, and records the
//! request's metrics and its one access-log line.
//!
//! Metric labels use the route template (`/v1/admin/tenants/{tenant}`),
//! never the raw path, so label cardinality stays bounded.

use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

pub static REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");
const MAX_REQUEST_ID_LENGTH: usize = 128;

tokio::task_local! {
    static REQUEST_ID: String;
}

/// The id of the request being served on this task, if any.
pub fn current_request_id() -> Option<String> {
    REQUEST_ID.try_with(Clone::clone).ok()
}

pub async fn request_context(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let request_id =
        incoming_request_id(&request).unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    let route = match request.extensions().get::<MatchedPath>() {
        Some(matched_path) => matched_path.as_str().to_string(),
        None => "unmatched".to_string(),
    };
    let method = request.method().as_str().to_string();
    let trace_id = request
        .headers()
        .get("traceparent")
        .and_then(|value| value.to_str().ok())
        .and_then(parse_traceparent_trace_id)
        .unwrap_or_default();

    let span = tracing::info_span!(
        "http_request",
        request_id = %request_id,
        method = %method,
        route = %route,
        trace_id = %trace_id,
    );
    crate::observability::attach_remote_parent(&span, request.headers());

    metrics::gauge!("plinth_http_requests_in_flight").increment(1.0);
    let mut response = REQUEST_ID
        .scope(
            request_id.clone(),
            next.run(request).instrument(span.clone()),
        )
        .await;
    metrics::gauge!("plinth_http_requests_in_flight").decrement(1.0);

    let elapsed = started.elapsed();
    let status = response.status().as_u16().to_string();
    metrics::counter!("plinth_http_requests_total", "method" => method.clone(), "route" => route.clone(), "status" => status.clone())
        .increment(1);
    metrics::histogram!("plinth_http_request_duration_seconds", "method" => method, "route" => route, "status" => status)
        .record(elapsed.as_secs_f64());
    span.in_scope(|| {
        tracing::info!(
            status = response.status().as_u16(),
            latency_us = elapsed.as_micros() as u64,
            "request served"
        );
    });

    if let Ok(header_value) = HeaderValue::from_str(&request_id) {
        response
            .headers_mut()
            .insert(REQUEST_ID_HEADER.clone(), header_value);
    }
    response
}

/// A client's request id is kept when it is short, visible ASCII; anything
/// else is replaced, so it is safe in headers and logs.
fn incoming_request_id(request: &Request) -> Option<String> {
    let value = request.headers().get(&REQUEST_ID_HEADER)?.to_str().ok()?;
    let acceptable = !value.is_empty()
        && value.len() <= MAX_REQUEST_ID_LENGTH
        && value.bytes().all(|byte| byte.is_ascii_graphic());
    if !acceptable {
        return None;
    }
    Some(value.to_string())
}

/// The trace id of a W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`), so
/// log lines can be joined with traces even when no exporter is set up.
fn parse_traceparent_trace_id(traceparent: &str) -> Option<String> {
    let mut parts = traceparent.trim().split('-');
    let version = parts.next()?;
    let trace_id = parts.next()?;
    let parent_id = parts.next()?;
    let flags = parts.next()?;
    let well_formed = version.len() == 2
        && trace_id.len() == 32
        && parent_id.len() == 16
        && flags.len() == 2
        && trace_id.bytes().all(|byte| byte.is_ascii_hexdigit())
        && parent_id.bytes().all(|byte| byte.is_ascii_hexdigit())
        && trace_id.bytes().any(|byte| byte != b'0');
    if !well_formed {
        return None;
    }
    Some(trace_id.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_trace_ids_are_extracted_and_validated() {
        assert_eq!(
            parse_traceparent_trace_id("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
                .as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(
            parse_traceparent_trace_id("00-0000000000000000000000000000000-00f067aa0ba902b7-01"),
            None
        );
        assert_eq!(
            parse_traceparent_trace_id("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
            None
        );
        assert_eq!(parse_traceparent_trace_id("garbage"), None);
    }
}
