//! The outermost middleware, one pass per request: it sets the request's
//! context (id, route, trace id) for everything below, opens the request's
//! trace span, refuses oversized bodies, bounds the handling time, adds the
//! security headers and the `X-Request-Id` answer header, and records the
//! request's metrics and its one access-log line.
//!
//! These steps live in one hand-written service rather than one layer
//! each, and rather than an `axum::middleware::from_fn`, because every
//! such layer costs a boxed future and a clone of the services below it
//! per request, and the HTTP benchmark holds the whole stack to a few tens
//! of microseconds. The service calls the one below it directly, so what
//! it allocates per request is its own future and the request's context
//! (shared by the call and the future). Each step itself lives in its own
//! module.

use std::convert::Infallible;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::BoxError;
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use futures::future::BoxFuture;
use metrics::Gauge;
use tower::{Layer, Service};
use tracing::{Instrument, Span};

use crate::log_lines::log_request_served;
use crate::middleware::body_limit::refuse_oversized_body;
use crate::middleware::request_context::{REQUEST_ID_HEADER, RequestContext, with_current_request};
use crate::middleware::request_metrics::record_request;
use crate::middleware::security_headers::add_security_headers;
use crate::middleware::timeout::run_with_timeout;

/// The limits every request is held to.
#[derive(Clone, Copy, Debug)]
pub struct EdgeLimits {
    pub request_timeout: Duration,
    pub max_body_bytes: usize,
}

/// Puts [`Edge`] in front of the services it wraps.
#[derive(Clone, Copy, Debug)]
pub struct EdgeLayer {
    limits: EdgeLimits,
}

impl EdgeLayer {
    pub fn new(limits: EdgeLimits) -> EdgeLayer {
        EdgeLayer { limits }
    }
}

impl<Inner> Layer<Inner> for EdgeLayer {
    type Service = Edge<Inner>;

    fn layer(&self, inner: Inner) -> Edge<Inner> {
        Edge {
            limits: self.limits,
            inner,
        }
    }
}

/// The outermost service of every route.
#[derive(Clone, Debug)]
pub struct Edge<Inner> {
    limits: EdgeLimits,
    inner: Inner,
}

impl<Inner, ResponseBody> Service<Request> for Edge<Inner>
where
    Inner: Service<Request, Response = axum::http::Response<ResponseBody>, Error = Infallible>,
    Inner::Future: Send + 'static,
    ResponseBody: HttpBody<Data = Bytes> + Send + 'static,
    ResponseBody::Error: Into<BoxError>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response, Infallible>>;

    fn poll_ready(&mut self, context: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(context)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let started = Instant::now();
        let context = Arc::new(RequestContext::of(&request));
        let request_id_header = HeaderValue::from_str(&context.request_id).ok();
        let span = request_span(&context, request.headers());
        // What runs here, before the future, belongs to the request too: a
        // refusal's problem document reads its id, and the services below
        // may log (an authentication failure) while they are called.
        let max_body_bytes = self.limits.max_body_bytes;
        let handling = context.sync_scope(|| {
            let _in_span = span.enter();
            match refuse_oversized_body(request.headers(), max_body_bytes) {
                Some(refusal) => Handling::Refused(refusal),
                None => Handling::Running(self.inner.call(request)),
            }
        });
        let request_timeout = self.limits.request_timeout;
        Box::pin(context.scope(async move {
            let in_flight = InFlightRequest::enter();
            let mut response = match handling {
                Handling::Refused(refusal) => refusal,
                Handling::Running(running) => {
                    let answered = async move {
                        let Ok(response) = running.await;
                        response.map(Body::new)
                    };
                    run_with_timeout(request_timeout, answered)
                        .instrument(span.clone())
                        .await
                }
            };
            drop(in_flight);
            add_security_headers(response.headers_mut());
            record_request_served(&span, response.status(), started.elapsed());
            if let Some(request_id_header) = request_id_header {
                response
                    .headers_mut()
                    .insert(REQUEST_ID_HEADER.clone(), request_id_header);
            }
            Ok(response)
        }))
    }
}

/// What became of the request when the edge was called.
enum Handling<Running> {
    /// Refused before the services below saw it (a body over the limit).
    Refused(Response),
    Running(Running),
}

/// The request's span for trace exporters. Without an exporter no layer
/// wants it and it costs next to nothing; log lines take the request's
/// context from the task-local instead.
fn request_span(context: &RequestContext, headers: &HeaderMap) -> Span {
    let span = tracing::info_span!(
        "http_request",
        request_id = %context.request_id,
        method = %context.method,
        route = context.route_template(),
        trace_id = context.trace_id.as_deref().unwrap_or_default(),
        status = tracing::field::Empty,
    );
    if !span.is_disabled() {
        crate::observability::attach_remote_parent(&span, headers);
    }
    span
}

/// Counts the request in `plinth_http_requests_in_flight` until dropped,
/// also when the client goes away and the request's future is dropped.
struct InFlightRequest;

impl InFlightRequest {
    fn enter() -> InFlightRequest {
        requests_in_flight().increment(1.0);
        InFlightRequest
    }
}

impl Drop for InFlightRequest {
    fn drop(&mut self) {
        requests_in_flight().decrement(1.0);
    }
}

/// The gauge's handle, looked up once rather than twice per request.
/// Metrics are recorded only after the recorder is installed, at start-up,
/// so the handle is never one of the no-op recorder.
fn requests_in_flight() -> &'static Gauge {
    static REQUESTS_IN_FLIGHT: OnceLock<Gauge> = OnceLock::new();
    REQUESTS_IN_FLIGHT.get_or_init(|| metrics::gauge!("plinth_http_requests_in_flight"))
}

/// The request's metrics, its access-log line, and its status on the trace
/// span (the access line does not go through `tracing`, so spans do not
/// get it as an event).
fn record_request_served(span: &Span, status: StatusCode, elapsed: Duration) {
    with_current_request(|request| {
        record_request(&request.method, request.route_template(), status, elapsed);
        log_request_served(request, status.as_u16(), elapsed);
    });
    if !span.is_disabled() {
        span.record("status", status.as_u16());
    }
}
