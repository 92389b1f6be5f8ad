//! Authentication of every `/v1` request: the bearer credential becomes a
//! [`Principal`] in the request's extensions, or the request ends with 401
//! (and an audit entry). The principal is shared with the authenticator's
//! cache (`Arc<Principal>`), so it is not copied per request. Handlers then
//! check scopes with
//! `Principal::require`; the tenant every resource name is scoped to comes
//! only from the principal, never from the request.
//!
//! The layer is a hand-written tower service rather than a `from_fn`
//! middleware: most requests are decided from memory (a cached API key
//! record, a JWT, the bootstrap key) and go straight to the service below,
//! without a clone of it and a boxed future. Only an API key whose record
//! must be read from the store takes the asynchronous path.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::{ConnectInfo, FromRequestParts, MatchedPath, Request};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use futures::future::{BoxFuture, Either};
use plinth_control::{MemoryAuthentication, Principal};
use plinth_core::{Error, ErrorKind};
use tower::{Layer, Service, ServiceExt};

use crate::audit::RequestOrigin;
use crate::middleware::request_context::current_request_id;
use crate::problem::ApiError;
use crate::state::AppState;

/// Puts [`Authenticate`] in front of the routes it wraps.
#[derive(Clone)]
pub struct AuthenticateLayer {
    state: AppState,
}

impl AuthenticateLayer {
    pub fn new(state: AppState) -> AuthenticateLayer {
        AuthenticateLayer { state }
    }
}

impl<Inner> Layer<Inner> for AuthenticateLayer {
    type Service = Authenticate<Inner>;

    fn layer(&self, inner: Inner) -> Authenticate<Inner> {
        Authenticate {
            state: self.state.clone(),
            inner,
        }
    }
}

#[derive(Clone)]
pub struct Authenticate<Inner> {
    state: AppState,
    inner: Inner,
}

type ReadyResponse = std::future::Ready<Result<Response, Infallible>>;
type AuthenticateFuture<InnerFuture> =
    Either<Either<InnerFuture, ReadyResponse>, BoxFuture<'static, Result<Response, Infallible>>>;

impl<Inner> Service<Request> for Authenticate<Inner>
where
    Inner: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    Inner::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = AuthenticateFuture<Inner::Future>;

    fn poll_ready(&mut self, context: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(context)
    }

    fn call(&mut self, mut request: Request) -> Self::Future {
        let authorization = match authorization_of(&request) {
            Ok(authorization) => authorization,
            Err(error) => return ready_refusal(&self.state, &request, error),
        };
        match self
            .state
            .authenticator
            .authenticate_from_memory(authorization)
        {
            MemoryAuthentication::Decided(Ok(principal)) => {
                request.extensions_mut().insert(principal);
                Either::Left(Either::Left(self.inner.call(request)))
            }
            MemoryAuthentication::Decided(Err(error)) => {
                ready_refusal(&self.state, &request, error)
            }
            MemoryAuthentication::NeedsKeyRecord { .. } => {
                // `inner` was made ready by `poll_ready`: keep that one for
                // this request and leave a fresh clone for the next.
                let fresh_inner = self.inner.clone();
                let ready_inner = std::mem::replace(&mut self.inner, fresh_inner);
                let state = self.state.clone();
                Either::Right(Box::pin(authenticate_from_store(
                    state,
                    request,
                    ready_inner,
                )))
            }
        }
    }
}

/// The asynchronous path: the API key's record is read (and cached)
/// before the request goes on.
async fn authenticate_from_store<Inner>(
    state: AppState,
    mut request: Request,
    inner: Inner,
) -> Result<Response, Infallible>
where
    Inner: Service<Request, Response = Response, Error = Infallible>,
{
    let authorization = match authorization_of(&request) {
        Ok(authorization) => authorization,
        Err(error) => return Ok(refuse(&state, &request, error)),
    };
    match state.authenticator.authenticate(authorization).await {
        Ok(principal) => {
            request.extensions_mut().insert(principal);
            inner.oneshot(request).await
        }
        Err(error) => Ok(refuse(&state, &request, error)),
    }
}

/// The `Authorization` header's value, if any; not valid ASCII is refused.
fn authorization_of(request: &Request) -> Result<Option<&str>, Error> {
    let Some(value) = request.headers().get(AUTHORIZATION) else {
        return Ok(None);
    };
    match value.to_str() {
        Ok(text) => Ok(Some(text)),
        Err(_) => Err(Error::unauthenticated(
            "the Authorization header is not valid ASCII",
        )),
    }
}

/// A refusal, as this service's already finished future.
fn ready_refusal<InnerFuture>(
    state: &AppState,
    request: &Request,
    error: Error,
) -> AuthenticateFuture<InnerFuture> {
    let response = refuse(state, request, error);
    Either::Left(Either::Right(std::future::ready(Ok(response))))
}

fn refuse(state: &AppState, request: &Request, error: Error) -> Response {
    if error.kind() == ErrorKind::Unauthenticated {
        metrics::counter!("plinth_auth_failures_total", "reason" => failure_reason(&error))
            .increment(1);
        let route = request
            .extensions()
            .get::<MatchedPath>()
            .map(|matched_path| matched_path.as_str())
            .unwrap_or("unmatched");
        let origin = origin_of(request.extensions().get::<ConnectInfo<SocketAddr>>());
        tracing::info!(route, detail = error.detail(), "authentication failed");
        state
            .audit
            .record_auth_failure(route, &origin, error.detail());
    }
    ApiError(error).into_response()
}

/// A bounded label for the failure metric.
fn failure_reason(error: &Error) -> &'static str {
    let detail = error.detail();
    if detail.starts_with("missing credentials") {
        "missing"
    } else if detail.contains("revoked") {
        "revoked"
    } else if detail.contains("expired") {
        "expired"
    } else if detail.contains("Authorization header") {
        "malformed"
    } else {
        "invalid"
    }
}

fn origin_of(connect_info: Option<&ConnectInfo<SocketAddr>>) -> RequestOrigin {
    RequestOrigin {
        source_address: connect_info.map(|ConnectInfo(address)| address.ip().to_string()),
        request_id: current_request_id(),
    }
}

impl<S: Send + Sync> FromRequestParts<S> for RequestOrigin {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(origin_of(parts.extensions.get::<ConnectInfo<SocketAddr>>()))
    }
}

/// Handlers take the caller as `Caller(principal)`.
pub struct Caller(pub Arc<Principal>);

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        match parts.extensions.get::<Arc<Principal>>() {
            Some(principal) => Ok(Caller(principal.clone())),
            None => Err(ApiError(Error::internal(
                "route is missing the authentication middleware",
            ))),
        }
    }
}
