//! `Idempotency-Key` for mutating routes: the first request with a key
//! runs and its response (below 500) is stored for `idempotency.ttl`;
//! repeats of the same request get the stored response again with
//! `Idempotency-Replayed: true`; a repeat while the first still runs gets
//! 409; the same key on a different request (method, path, query or body)
//! gets 422. Keys are scoped by tenant. A 5xx or a panic forgets the key so
//! the client can retry.
//!
//! A handler whose response holds a secret attaches a [`ReplayBody`]: the
//! stored copy is that body instead, so the secret is never persisted.
//!
//! The layer is a hand-written tower service rather than a `from_fn`
//! middleware because most requests (every GET, and mutations without a
//! key) pass straight through: they cost a header lookup, not a cloned
//! inner service and a boxed future.

use std::convert::Infallible;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::FutureExt;
use futures::future::{BoxFuture, Either};
use http_body_util::BodyExt;
use plinth_control::{IdempotencyBegin, Principal, StoredResponse};
use plinth_core::{Error, ErrorKind};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use tower::{Layer, Service, ServiceExt};

use crate::json::payload_too_large;
use crate::problem::ApiError;
use crate::state::AppState;

pub static IDEMPOTENCY_KEY_HEADER: HeaderName = HeaderName::from_static("idempotency-key");
static REPLAYED_HEADER: HeaderName = HeaderName::from_static("idempotency-replayed");
const MAX_KEY_LENGTH: usize = 255;
/// Responses larger than this are served but not stored (the key is then
/// forgotten, as for a 5xx).
const MAX_STORED_RESPONSE_BYTES: usize = 1024 * 1024;
const REPLAYED_HEADERS: [HeaderName; 3] = [header::CONTENT_TYPE, header::LOCATION, header::ETAG];

/// The body to store for replays in place of the real one.
#[derive(Clone, Debug)]
pub struct ReplayBody(pub Bytes);

/// Applies `Idempotency-Key` handling to the routes it wraps.
#[derive(Clone)]
pub struct IdempotencyLayer {
    state: AppState,
}

impl IdempotencyLayer {
    pub fn new(state: AppState) -> IdempotencyLayer {
        IdempotencyLayer { state }
    }
}

impl<Inner> Layer<Inner> for IdempotencyLayer {
    type Service = IdempotencyService<Inner>;

    fn layer(&self, inner: Inner) -> Self::Service {
        IdempotencyService {
            state: self.state.clone(),
            inner,
        }
    }
}

#[derive(Clone)]
pub struct IdempotencyService<Inner> {
    state: AppState,
    inner: Inner,
}

impl<Inner> Service<Request> for IdempotencyService<Inner>
where
    Inner: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    Inner::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Either<Inner::Future, BoxFuture<'static, Result<Response, Infallible>>>;

    fn poll_ready(&mut self, context: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(context)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let Some(key_header) = idempotency_key_of_mutation(&request) else {
            return Either::Left(self.inner.call(request));
        };
        // `inner` was made ready by `poll_ready`: keep that one for this
        // request and leave a fresh clone for the next.
        let fresh_inner = self.inner.clone();
        let ready_inner = std::mem::replace(&mut self.inner, fresh_inner);
        let state = self.state.clone();
        Either::Right(Box::pin(async move {
            Ok(handle_idempotently(state, key_header, request, ready_inner).await)
        }))
    }
}

/// The `Idempotency-Key` of a mutating request; safe methods are never
/// stored, whatever headers they carry.
fn idempotency_key_of_mutation(request: &Request) -> Option<HeaderValue> {
    let is_mutating = matches!(
        *request.method(),
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    );
    if !is_mutating {
        return None;
    }
    request.headers().get(&IDEMPOTENCY_KEY_HEADER).cloned()
}

async fn handle_idempotently<Inner>(
    state: AppState,
    key_header: HeaderValue,
    request: Request,
    inner: Inner,
) -> Response
where
    Inner: Service<Request, Response = Response, Error = Infallible>,
{
    let key = match validate_key(&key_header) {
        Ok(key) => key,
        Err(error) => return ApiError(error).into_response(),
    };
    let Some(principal) = request.extensions().get::<Arc<Principal>>().cloned() else {
        return ApiError(Error::internal("idempotency runs after authentication")).into_response();
    };
    // Records are per credential, not just per tenant: a replay must never
    // hand one credential a response that its own scopes would refuse.
    let key = format!("{}\u{1f}{key}", principal.actor);

    let (parts, body) = request.into_parts();
    let body_bytes = match read_body(body, state.config.server.max_body_bytes).await {
        Ok(bytes) => bytes,
        Err(error) => return ApiError(error).into_response(),
    };
    let fingerprint = fingerprint(&parts.method, &parts.uri, &body_bytes);
    let expires_at = OffsetDateTime::now_utc() + state.config.idempotency.ttl.as_duration();
    let begin = state
        .control
        .begin_idempotent(&principal.tenant, &key, &fingerprint, expires_at)
        .await;
    match begin {
        Err(error) => ApiError(error).into_response(),
        Ok(IdempotencyBegin::InProgress) => ApiError(Error::conflict(
            "idempotency_in_progress",
            "a request with this Idempotency-Key is still being processed; retry later",
        ))
        .into_response(),
        Ok(IdempotencyBegin::FingerprintMismatch) => ApiError(Error::new(
            ErrorKind::Unprocessable,
            "idempotency_key_reused",
            "this Idempotency-Key was used for a different request; use a new key",
        ))
        .into_response(),
        Ok(IdempotencyBegin::Completed(stored)) => {
            metrics::counter!("plinth_idempotent_replays_total").increment(1);
            replay(stored)
        }
        Ok(IdempotencyBegin::Started) => {
            let request = Request::from_parts(parts, Body::from(body_bytes));
            run_and_store(&state, &principal, &key, request, inner).await
        }
    }
}

async fn run_and_store<Inner>(
    state: &AppState,
    principal: &Principal,
    key: &str,
    request: Request,
    inner: Inner,
) -> Response
where
    Inner: Service<Request, Response = Response, Error = Infallible>,
{
    let response = match AssertUnwindSafe(inner.oneshot(request))
        .catch_unwind()
        .await
    {
        Ok(Ok(response)) => response,
        Ok(Err(infallible)) => match infallible {},
        Err(panic) => {
            // Release the key, then let the panic layer answer 500.
            forget(state, principal, key).await;
            std::panic::resume_unwind(panic);
        }
    };
    if response.status().is_server_error() {
        forget(state, principal, key).await;
        return response;
    }
    let (parts, body) = response.into_parts();
    let body_bytes = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            forget(state, principal, key).await;
            return ApiError(Error::internal("the response body could not be read"))
                .into_response();
        }
    };
    let stored_body = match parts.extensions.get::<ReplayBody>() {
        Some(ReplayBody(replacement)) => replacement.clone(),
        None => body_bytes.clone(),
    };
    if stored_body.len() > MAX_STORED_RESPONSE_BYTES {
        forget(state, principal, key).await;
        return Response::from_parts(parts, Body::from(body_bytes));
    }
    let stored = StoredResponse {
        status: parts.status.as_u16(),
        headers: replayable_headers(&parts.headers),
        body: stored_body.to_vec(),
    };
    if let Err(error) = state
        .control
        .complete_idempotent(&principal.tenant, key, stored)
        .await
    {
        tracing::warn!(error = %error, "idempotent response was not stored");
    }
    Response::from_parts(parts, Body::from(body_bytes))
}

async fn forget(state: &AppState, principal: &Principal, key: &str) {
    if let Err(error) = state
        .control
        .abandon_idempotent(&principal.tenant, key)
        .await
    {
        tracing::warn!(error = %error, "idempotency key could not be released");
    }
}

fn replay(stored: StoredResponse) -> Response {
    let status = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::OK);
    let mut response = (status, stored.body).into_response();
    let headers = response.headers_mut();
    for (name, value) in stored.headers {
        if let (Ok(name), Ok(value)) = (HeaderName::try_from(name), HeaderValue::try_from(value)) {
            headers.insert(name, value);
        }
    }
    headers.insert(REPLAYED_HEADER.clone(), HeaderValue::from_static("true"));
    response
}

fn replayable_headers(headers: &HeaderMap) -> Vec<(String, String)> {
    let mut kept = Vec::new();
    for name in &REPLAYED_HEADERS {
        if let Some(value) = headers.get(name)
            && let Ok(text) = value.to_str()
        {
            kept.push((name.as_str().to_string(), text.to_string()));
        }
    }
    kept
}

fn validate_key(value: &HeaderValue) -> Result<String, Error> {
    let text = value.to_str().unwrap_or_default();
    let acceptable = !text.is_empty()
        && text.len() <= MAX_KEY_LENGTH
        && text.bytes().all(|byte| byte.is_ascii_graphic());
    if !acceptable {
        return Err(Error::invalid_argument(
            "invalid_idempotency_key",
            "Idempotency-Key must be 1 to 255 visible ASCII characters (a UUID is a good choice)",
        ));
    }
    Ok(text.to_string())
}

async fn read_body(body: Body, max_body_bytes: usize) -> Result<Bytes, Error> {
    match axum::body::to_bytes(body, max_body_bytes).await {
        Ok(bytes) => Ok(bytes),
        Err(_) => Err(payload_too_large()),
    }
}

fn fingerprint(method: &Method, uri: &axum::http::Uri, body: &[u8]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(method.as_str().as_bytes());
    hasher.update([0]);
    hasher.update(uri.path().as_bytes());
    hasher.update([0]);
    hasher.update(uri.query().unwrap_or_default().as_bytes());
    hasher.update([0]);
    hasher.update(body);
    hex::encode(hasher.finalize())
}
