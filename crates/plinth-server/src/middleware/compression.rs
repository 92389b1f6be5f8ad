//! Response compression, for the requests that can use it.
//!
//! tower-http's `Compression` negotiates gzip from `Accept-Encoding`. It
//! takes apart, inspects and rebuilds every answer and wraps every body,
//! even for a request that sent no `Accept-Encoding` and gets its body as
//! it is. This service sends such requests past it, straight to the
//! services below, and does the same for every request when compression is
//! switched off. Under `wrk -c64` on `/v1/whoami`, which sends no
//! `Accept-Encoding`, that took a median 3 µs off the server's CPU per
//! request (BENCHMARKS.md, HTTP section).
//!
//! An answer that went past compression while it is switched on still gets
//! `Vary: Accept-Encoding` when tower-http would have given it one: a cache
//! that stored it must not hand it to a client that asked for gzip without
//! asking the server.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use axum::BoxError;
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::Request;
use axum::http::{HeaderValue, header};
use axum::response::Response;
use pin_project_lite::pin_project;
use tower::{Layer, Service};
use tower_http::compression::{
    Compression, CompressionBody, CompressionLayer, DefaultPredicate, Predicate,
};

/// Puts [`NegotiatedCompression`] in front of the services it wraps.
#[derive(Clone, Copy, Debug)]
pub struct NegotiatedCompressionLayer {
    enabled: bool,
}

impl NegotiatedCompressionLayer {
    /// `enabled: false` sends every answer as the services below made it.
    pub fn new(enabled: bool) -> NegotiatedCompressionLayer {
        NegotiatedCompressionLayer { enabled }
    }
}

impl<Inner> Layer<Inner> for NegotiatedCompressionLayer {
    type Service = NegotiatedCompression<Inner>;

    fn layer(&self, inner: Inner) -> NegotiatedCompression<Inner> {
        // gzip is the only encoding compiled in (tower-http's features in
        // the workspace).
        NegotiatedCompression {
            compression: CompressionLayer::new().layer(inner),
            enabled: self.enabled,
        }
    }
}

/// Compresses through tower-http when the request names encodings it
/// accepts; otherwise calls the service below directly.
#[derive(Clone)]
pub struct NegotiatedCompression<Inner> {
    compression: Compression<Inner>,
    enabled: bool,
}

impl<Inner, ResponseBody> Service<Request> for NegotiatedCompression<Inner>
where
    Inner: Service<Request, Response = axum::http::Response<ResponseBody>, Error = Infallible>,
    ResponseBody: HttpBody<Data = Bytes> + Send + 'static,
    ResponseBody::Error: Into<BoxError> + Send,
{
    type Response = Response;
    type Error = Infallible;
    type Future = NegotiatedFuture<
        Inner::Future,
        tower_http::compression::ResponseFuture<Inner::Future, DefaultPredicate>,
    >;

    fn poll_ready(&mut self, context: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.compression.poll_ready(context)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        if self.enabled && request.headers().contains_key(header::ACCEPT_ENCODING) {
            return NegotiatedFuture::Negotiated {
                answer: self.compression.call(request),
            };
        }
        NegotiatedFuture::Uncompressed {
            answer: self.compression.get_mut().call(request),
            compression_enabled: self.enabled,
        }
    }
}

pin_project! {
    /// The answer of the services below, compressed or not.
    #[project = NegotiatedFutureProjection]
    pub enum NegotiatedFuture<UncompressedAnswer, NegotiatedAnswer> {
        Uncompressed {
            #[pin]
            answer: UncompressedAnswer,
            compression_enabled: bool,
        },
        Negotiated {
            #[pin]
            answer: NegotiatedAnswer,
        },
    }
}

impl<UncompressedAnswer, NegotiatedAnswer, ResponseBody> Future
    for NegotiatedFuture<UncompressedAnswer, NegotiatedAnswer>
where
    UncompressedAnswer: Future<Output = Result<axum::http::Response<ResponseBody>, Infallible>>,
    NegotiatedAnswer:
        Future<Output = Result<axum::http::Response<CompressionBody<ResponseBody>>, Infallible>>,
    ResponseBody: HttpBody<Data = Bytes> + Send + 'static,
    ResponseBody::Error: Into<BoxError> + Send,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, task_context: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            NegotiatedFutureProjection::Uncompressed {
                answer,
                compression_enabled,
            } => {
                let Ok(mut response) = ready!(answer.poll(task_context));
                if *compression_enabled {
                    vary_on_accept_encoding_when_compressible(&mut response);
                }
                Poll::Ready(Ok(response.map(Body::new)))
            }
            NegotiatedFutureProjection::Negotiated { answer } => {
                let Ok(response) = ready!(answer.poll(task_context));
                Poll::Ready(Ok(response.map(Body::new)))
            }
        }
    }
}

/// Adds `Vary: Accept-Encoding` where tower-http's compression would have:
/// to an answer its default predicate would compress, unless the answer is
/// already encoded, partial, or varies on `Accept-Encoding` already.
fn vary_on_accept_encoding_when_compressible<ResponseBody: HttpBody>(
    response: &mut axum::http::Response<ResponseBody>,
) {
    let headers = response.headers();
    if headers.contains_key(header::CONTENT_ENCODING)
        || headers.contains_key(header::CONTENT_RANGE)
        || !DefaultPredicate::new().should_compress(response)
    {
        return;
    }
    let already_varies_on_encoding = headers
        .get_all(header::VARY)
        .iter()
        .any(names_accept_encoding);
    if already_varies_on_encoding {
        return;
    }
    response.headers_mut().append(
        header::VARY,
        HeaderValue::from_static(header::ACCEPT_ENCODING.as_str()),
    );
}

/// Whether a `Vary` value mentions `Accept-Encoding`, matched the way
/// tower-http matches it: anywhere in the value, in any case.
fn names_accept_encoding(vary: &HeaderValue) -> bool {
    let wanted = header::ACCEPT_ENCODING.as_str().as_bytes();
    vary.as_bytes()
        .windows(wanted.len())
        .any(|window| window.eq_ignore_ascii_case(wanted))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::routing::get;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    const LONG_TEXT: &str = "a body long enough for the default predicate to compress it; \
        repeated words compress well, repeated words compress well";

    fn router(compression_enabled: bool) -> Router {
        Router::new()
            .route("/long", get(|| async { LONG_TEXT }))
            .route("/short", get(|| async { "ok" }))
            .route(
                "/varies",
                get(|| async { ([(header::VARY, "origin, Accept-Encoding")], LONG_TEXT) }),
            )
            .layer(NegotiatedCompressionLayer::new(compression_enabled))
    }

    async fn answer(
        router: Router,
        path: &str,
        accept_encoding: Option<&str>,
    ) -> axum::http::Response<Body> {
        let mut request = Request::builder().uri(path);
        if let Some(accept_encoding) = accept_encoding {
            request = request.header(header::ACCEPT_ENCODING, accept_encoding);
        }
        router
            .oneshot(request.body(Body::empty()).unwrap())
            .await
            .unwrap()
    }

    fn vary_values(response: &axum::http::Response<Body>) -> Vec<String> {
        response
            .headers()
            .get_all(header::VARY)
            .iter()
            .map(|value| value.to_str().unwrap().to_owned())
            .collect()
    }

    async fn body_bytes(response: axum::http::Response<Body>) -> Bytes {
        response.into_body().collect().await.unwrap().to_bytes()
    }

    #[tokio::test]
    async fn a_client_that_accepts_gzip_gets_gzip() {
        let response = answer(router(true), "/long", Some("gzip")).await;
        assert_eq!(response.headers()[header::CONTENT_ENCODING], "gzip");
        assert_eq!(vary_values(&response), ["accept-encoding"]);
        let body = body_bytes(response).await;
        assert_eq!(&body[..2], &[0x1f, 0x8b], "gzip magic bytes");
    }

    #[tokio::test]
    async fn a_client_without_accept_encoding_gets_the_plain_body_and_vary() {
        let response = answer(router(true), "/long", None).await;
        assert_eq!(response.headers().get(header::CONTENT_ENCODING), None);
        assert_eq!(vary_values(&response), ["accept-encoding"]);
        assert_eq!(body_bytes(response).await, LONG_TEXT.as_bytes());
    }

    #[tokio::test]
    async fn uncompressed_answers_carry_the_same_vary_as_negotiated_ones() {
        for path in ["/long", "/short", "/varies"] {
            let negotiated = answer(router(true), path, Some("identity")).await;
            let uncompressed = answer(router(true), path, None).await;
            assert_eq!(
                vary_values(&uncompressed),
                vary_values(&negotiated),
                "Vary of {path}"
            );
        }
    }

    #[tokio::test]
    async fn switched_off_compression_sends_plain_bodies_without_vary() {
        let response = answer(router(false), "/long", Some("gzip")).await;
        assert_eq!(response.headers().get(header::CONTENT_ENCODING), None);
        assert!(vary_values(&response).is_empty());
        assert_eq!(body_bytes(response).await, LONG_TEXT.as_bytes());
    }

    #[test]
    fn vary_values_are_searched_for_accept_encoding_in_any_case() {
        for listed in ["Accept-Encoding", "origin, accept-encoding"] {
            assert!(
                names_accept_encoding(&HeaderValue::from_static(listed)),
                "{listed}"
            );
        }
        assert!(!names_accept_encoding(&HeaderValue::from_static("origin")));
    }
}
