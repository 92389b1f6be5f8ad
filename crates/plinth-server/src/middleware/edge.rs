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
//! of microseconds. The service calls the one below it directly and its
//! future is a named type, so it allocates nothing of its own beyond the
//! request's context. The timeout's timer is created only when the request
//! is not answered at its first poll, so a request answered from memory
//! never touches the timer wheel. Each step itself lives in its own module.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use axum::BoxError;
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use metrics::Gauge;
use pin_project_lite::pin_project;
use tokio::task::futures::TaskLocalFuture;
use tokio::time::Sleep;
use tower::{Layer, Service};
use tracing::Span;

use crate::log_lines::log_request_served;
use crate::middleware::body_limit::refuse_oversized_body;
use crate::middleware::request_context::{REQUEST_ID_HEADER, RequestContext};
use crate::middleware::request_metrics::record_request;
use crate::middleware::security_headers::add_security_headers;
use crate::middleware::timeout::timeout_response;

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
    ResponseBody: HttpBody<Data = Bytes> + Send + 'static,
    ResponseBody::Error: Into<BoxError>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = TaskLocalFuture<Arc<RequestContext>, EdgeFuture<Inner::Future>>;

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
        let (refusal, running) = context.sync_scope(|| {
            let _in_span = span.enter();
            match refuse_oversized_body(request.headers(), max_body_bytes) {
                Some(refusal) => (Some(refusal), None),
                None => (None, Some(self.inner.call(request))),
            }
        });
        let future = EdgeFuture {
            running,
            refusal,
            deadline: None,
            request_timeout: self.limits.request_timeout,
            started,
            in_flight: Some(InFlightRequest::enter()),
            request_id_header,
            span,
            context: Arc::clone(&context),
        };
        context.scope_future(future)
    }
}

pin_project! {
    /// The edge's answer to one request: the answer of the services below
    /// (or the edge's own refusal, or a 504 past the deadline), finished
    /// with the headers, metrics and access line every answer gets.
    pub struct EdgeFuture<Running> {
        #[pin]
        running: Option<Running>,
        refusal: Option<Response>,
        #[pin]
        deadline: Option<Sleep>,
        request_timeout: Duration,
        started: Instant,
        in_flight: Option<InFlightRequest>,
        request_id_header: Option<HeaderValue>,
        span: Span,
        context: Arc<RequestContext>,
    }
}

impl<Running, ResponseBody> Future for EdgeFuture<Running>
where
    Running: Future<Output = Result<axum::http::Response<ResponseBody>, Infallible>>,
    ResponseBody: HttpBody<Data = Bytes> + Send + 'static,
    ResponseBody::Error: Into<BoxError>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, task_context: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let response = match this.running.as_mut().as_pin_mut() {
            None => this
                .refusal
                .take()
                .expect("the edge's future is not polled after it completed"),
            Some(running) => {
                let in_span = this.span.enter();
                let polled = running.poll(task_context);
                drop(in_span);
                match polled {
                    Poll::Ready(Ok(response)) => response.map(Body::new),
                    Poll::Pending => {
                        if this.deadline.is_none() {
                            let deadline = tokio::time::Instant::from_std(
                                *this.started + *this.request_timeout,
                            );
                            this.deadline.set(Some(tokio::time::sleep_until(deadline)));
                        }
                        let deadline = this.deadline.as_pin_mut().expect("the deadline is set");
                        ready!(deadline.poll(task_context));
                        timeout_response(*this.request_timeout)
                    }
                }
            }
        };
        this.running.set(None);
        this.in_flight.take();
        Poll::Ready(Ok(finish_response(
            response,
            this.context,
            this.span,
            this.started.elapsed(),
            this.request_id_header.take(),
        )))
    }
}

/// What every answer gets on its way out, once the request is done.
fn finish_response(
    mut response: Response,
    context: &RequestContext,
    span: &Span,
    elapsed: Duration,
    request_id_header: Option<HeaderValue>,
) -> Response {
    add_security_headers(response.headers_mut());
    let status = response.status();
    record_request(&context.method, context.route_template(), status, elapsed);
    log_request_served(context, status.as_u16(), elapsed);
    record_status_on_span(span, status);
    if let Some(request_id_header) = request_id_header {
        response
            .headers_mut()
            .insert(REQUEST_ID_HEADER.clone(), request_id_header);
    }
    response
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

/// The status on the trace span: the access line does not go through
/// `tracing`, so spans do not get it as an event.
fn record_status_on_span(span: &Span, status: StatusCode) {
    if !span.is_disabled() {
        span.record("status", status.as_u16());
    }
}
