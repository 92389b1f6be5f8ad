//! Authentication of every `/v1` request: the bearer credential becomes a
//! [`Principal`] in the request's extensions, or the request ends with 401
//! (and an audit entry). The principal is shared with the authenticator's
//! cache (`Arc<Principal>`), so it is not copied per request. Handlers then
//! check scopes with
//! `Principal::require`; the tenant every resource name is scoped to comes
//! only from the principal, never from the request.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequestParts, MatchedPath, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use plinth_control::Principal;
use plinth_core::{Error, ErrorKind};

use crate::audit::RequestOrigin;
use crate::middleware::request_context::current_request_id;
use crate::problem::ApiError;
use crate::state::AppState;

pub async fn authenticate(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let authorization = match request.headers().get(AUTHORIZATION) {
        None => None,
        Some(value) => match value.to_str() {
            Ok(text) => Some(text),
            Err(_) => {
                return refuse(
                    &state,
                    &request,
                    Error::unauthenticated("the Authorization header is not valid ASCII"),
                );
            }
        },
    };
    let authenticated = state.authenticator.authenticate(authorization).await;
    match authenticated {
        Ok(principal) => {
            request.extensions_mut().insert(principal);
            next.run(request).await
        }
        Err(error) => refuse(&state, &request, error),
    }
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
