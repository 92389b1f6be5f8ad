//! What the server knows about the request being served: its id (from
//! `X-Request-Id` or generated), method, route template and the trace id of
//! a W3C `traceparent`. The edge middleware sets it as a task-local for the
//! whole request, so problem documents, the audit log and every log line can
//! name the request without threading it through every call.

use std::sync::Arc;

use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderName, Method};
use tokio::task::futures::TaskLocalFuture;

pub static REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");
const MAX_REQUEST_ID_LENGTH: usize = 128;
/// The route label of requests that matched no route.
const UNMATCHED_ROUTE: &str = "unmatched";

tokio::task_local! {
    static CURRENT_REQUEST: Arc<RequestContext>;
}

#[derive(Clone, Debug)]
pub struct RequestContext {
    pub request_id: String,
    pub method: Method,
    /// The route template (`/v1/cache/{keyspace}/{key}`), never the raw
    /// path, so it is safe as a metric label.
    pub route: Option<MatchedPath>,
    pub trace_id: Option<String>,
}

impl RequestContext {
    pub fn of(request: &Request) -> RequestContext {
        let request_id = incoming_request_id(request).unwrap_or_else(generate_request_id);
        let trace_id = request
            .headers()
            .get("traceparent")
            .and_then(|value| value.to_str().ok())
            .and_then(parse_traceparent_trace_id);
        RequestContext {
            request_id,
            method: request.method().clone(),
            route: request.extensions().get::<MatchedPath>().cloned(),
            trace_id,
        }
    }

    pub fn route_template(&self) -> &str {
        match &self.route {
            Some(matched_path) => matched_path.as_str(),
            None => UNMATCHED_ROUTE,
        }
    }

    /// `future`, run with this context as the task's current request.
    pub fn scope_future<F: Future>(self: Arc<Self>, future: F) -> TaskLocalFuture<Arc<Self>, F> {
        CURRENT_REQUEST.scope(self, future)
    }

    /// Runs `call` with this context as the current request, for the
    /// synchronous part of handling (calling the services below the edge,
    /// before their futures run).
    pub fn sync_scope<R>(self: &Arc<Self>, call: impl FnOnce() -> R) -> R {
        CURRENT_REQUEST.sync_scope(Arc::clone(self), call)
    }
}

/// Reads the context of the request being served on this task, if any.
pub fn with_current_request<R>(read: impl FnOnce(&RequestContext) -> R) -> Option<R> {
    CURRENT_REQUEST.try_with(|request| read(request)).ok()
}

/// The id of the request being served on this task, if any.
pub fn current_request_id() -> Option<String> {
    with_current_request(|request| request.request_id.clone())
}

/// A UUIDv7: sortable by time to the millisecond, so ids in logs line up
/// with their order. Ids of the same millisecond are ordered at random:
/// `Uuid::now_v7` would order them by a counter that every worker thread
/// updates, one contended cache line per request.
fn generate_request_id() -> String {
    let timestamp = uuid::Timestamp::now(uuid::NoContext);
    let mut text = uuid::Uuid::encode_buffer();
    uuid::Uuid::new_v7(timestamp)
        .hyphenated()
        .encode_lower(&mut text)
        .to_owned()
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
    fn generated_request_ids_are_uuid_v7_in_time_order() {
        let earlier = generate_request_id();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let later = generate_request_id();
        let parsed = uuid::Uuid::parse_str(&earlier).expect("a generated id is a UUID");
        assert_eq!(parsed.get_version_num(), 7);
        assert!(earlier < later, "{earlier} should sort before {later}");
    }

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
