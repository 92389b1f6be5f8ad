//! Assembles the router: routes from every module, the OpenAPI document
//! generated from them, and the middleware stack in a fixed order.

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderName, HeaderValue, Method, header};
use axum::response::{IntoResponse, Response};
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::idempotency::IdempotencyLayer;
use crate::middleware::auth::AuthenticateLayer;
use crate::middleware::compression::NegotiatedCompressionLayer;
use crate::middleware::edge::{EdgeLayer, EdgeLimits};
use crate::middleware::request_context::REQUEST_ID_HEADER;
use crate::problem::ApiError;
use crate::routes::{
    admin, cache, event_log, event_subscriptions, health, keys, keyspaces, streams, whoami,
};
use crate::state::AppState;
use plinth_core::config::ServerConfig;

#[derive(OpenApi)]
#[openapi(
    info(title = "Plinth", description = "The infrastructure layer of a backend, over HTTP/JSON."),
    modifiers(&BearerSecurity),
    tags(
        (name = "health", description = "Liveness, readiness, health details and metrics"),
        (name = "auth", description = "Who the caller is"),
        (name = "keys", description = "A tenant's own API keys"),
        (name = "admin", description = "Tenants, any tenant's keys, the audit log"),
        (name = "cache", description = "Keyspaces and their values across L1, Redis and the store"),
        (name = "events", description = "Event streams, the global log, snapshots and subscriptions"),
    )
)]
struct ApiDocument;

struct BearerSecurity;

impl Modify for BearerSecurity {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("An API key (`plk_...`) or a JWT"))
                    .build(),
            ),
        );
    }
}

/// Routes that need no credential.
fn public_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(health::get_live))
        .routes(routes!(health::get_ready))
        .routes(routes!(health::get_health))
        .routes(routes!(health::get_metrics))
}

/// Routes under `/v1` that need a credential.
fn authenticated_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(whoami::get_whoami))
        .routes(routes!(keys::list_own_keys, keys::create_own_key))
        .routes(routes!(keys::get_own_key, keys::revoke_own_key))
        .routes(routes!(admin::create_tenant, admin::list_tenants))
        .routes(routes!(admin::get_tenant, admin::delete_tenant))
        .routes(routes!(admin::create_tenant_key, admin::list_tenant_keys))
        .routes(routes!(admin::revoke_tenant_key))
        .routes(routes!(admin::list_audit))
        .routes(routes!(
            cache::put_value,
            cache::get_value,
            cache::delete_value
        ))
        .routes(routes!(cache::increment_value))
        .routes(routes!(keyspaces::list_keyspaces))
        .routes(routes!(keyspaces::put_keyspace, keyspaces::get_keyspace))
        .routes(routes!(keyspaces::flush_keyspace))
        .routes(routes!(keyspaces::invalidate_keys))
        .routes(routes!(keyspaces::list_keys))
        .routes(routes!(keyspaces::keyspace_stats))
        .routes(routes!(keyspaces::bulk_get))
        .routes(routes!(keyspaces::bulk_put))
        .routes(routes!(keyspaces::bulk_delete))
        .routes(routes!(
            keyspaces::warm_keyspace,
            keyspaces::get_warming_status
        ))
        .merge(event_routes())
        .merge(crate::routes::event_groups::group_routes())
}

/// The event store's routes.
fn event_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(
            streams::append_events,
            streams::read_stream,
            streams::delete_stream
        ))
        .routes(routes!(
            streams::get_stream_metadata,
            streams::put_stream_metadata
        ))
        .routes(routes!(streams::put_snapshot, streams::get_snapshot))
        .routes(routes!(streams::read_from_snapshot))
        .routes(routes!(event_log::read_log))
        .routes(routes!(event_subscriptions::subscribe_stream_sse))
        .routes(routes!(event_subscriptions::subscribe_log_sse))
        .routes(routes!(event_subscriptions::subscribe_stream_ws))
        .routes(routes!(event_subscriptions::subscribe_log_ws))
        .routes(routes!(event_log::start_scavenge, event_log::get_scavenge))
}

/// The OpenAPI document of every route, as served at `/v1/openapi.json`.
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    let (_, mut document) = OpenApiRouter::<AppState>::with_openapi(ApiDocument::openapi())
        .merge(public_routes())
        .merge(authenticated_routes())
        .split_for_parts();
    document
        .paths
        .paths
        .insert("/v1/openapi.json".to_string(), openapi_path_item());
    document
}

fn openapi_path_item() -> utoipa::openapi::PathItem {
    use utoipa::openapi::path::{HttpMethod, OperationBuilder};
    use utoipa::openapi::response::ResponseBuilder;
    let operation = OperationBuilder::new()
        .summary(Some("This OpenAPI 3 document"))
        .tag("health")
        .response(
            "200",
            ResponseBuilder::new().description("The document").build(),
        )
        .build();
    utoipa::openapi::PathItem::new(HttpMethod::Get, operation)
}

async fn get_openapi(State(document): State<Arc<String>>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        document.as_str().to_owned(),
    )
        .into_response()
}

/// 404 for unknown paths, as a problem document.
async fn route_not_found() -> ApiError {
    ApiError(plinth_core::Error::not_found(
        "route_not_found",
        "no such route; see /v1/openapi.json for the API",
    ))
}

/// 405 for a known path with the wrong method, as a problem document.
async fn method_not_allowed() -> ApiError {
    ApiError(plinth_core::Error::new(
        plinth_core::ErrorKind::MethodNotAllowed,
        "method_not_allowed",
        "this route does not accept this method; see /v1/openapi.json",
    ))
}

pub fn build_router(state: AppState) -> Router {
    let document_json = Arc::new(
        serde_json::to_string(&openapi_document()).expect("the OpenAPI document serializes"),
    );
    let (public_router, _) = public_routes().split_for_parts();
    let (authenticated_router, _) = authenticated_routes().split_for_parts();
    // One `route_layer` for both: axum boxes each layer call's service and
    // clones every box below it per request, so a stack costs one box.
    let authenticated_router = authenticated_router.route_layer(
        ServiceBuilder::new()
            .layer(AuthenticateLayer::new(state.clone()))
            .layer(IdempotencyLayer::new(state.clone())),
    );
    let openapi_router = Router::new()
        .route("/v1/openapi.json", axum::routing::get(get_openapi))
        .with_state(document_json);

    let router = public_router
        .merge(authenticated_router)
        .with_state(state.clone())
        .merge(openapi_router)
        .fallback(route_not_found)
        .method_not_allowed_fallback(method_not_allowed);
    apply_middleware(router, &state.config.server)
}

/// Wraps a router in the middleware every route shares.
pub fn apply_middleware(mut router: Router, server_config: &ServerConfig) -> Router {
    let limits = EdgeLimits {
        request_timeout: server_config.request_timeout.as_duration(),
        max_body_bytes: server_config.max_body_bytes,
    };
    // The stack is one `layer` call because axum boxes the service of each
    // call and clones every box below it for every request. Within the
    // stack the first layer runs first: the edge, so everything below it
    // (a panic's 500 included) carries the request id. CORS, when set up,
    // sits inside, so its preflight answers are counted and logged too.
    if let Some(cors) = cors_layer(&server_config.cors) {
        router = router.layer(cors);
    }
    router.layer(
        ServiceBuilder::new()
            .layer(EdgeLayer::new(limits))
            .layer(NegotiatedCompressionLayer::new(server_config.compression))
            .layer(CatchPanicLayer::custom(crate::serve::panic_response))
            .layer(DefaultBodyLimit::max(limits.max_body_bytes)),
    )
}

fn cors_layer(config: &plinth_core::config::CorsConfig) -> Option<CorsLayer> {
    if config.allowed_origins.is_empty() {
        return None;
    }
    let allow_origin = if config.allowed_origins.iter().any(|origin| origin == "*") {
        AllowOrigin::any()
    } else {
        let mut origins = Vec::new();
        for origin in &config.allowed_origins {
            if let Ok(value) = HeaderValue::from_str(origin) {
                origins.push(value);
            }
        }
        AllowOrigin::list(origins)
    };
    let mut layer = CorsLayer::new()
        .allow_origin(allow_origin)
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
        ])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::IF_MATCH,
            header::IF_NONE_MATCH,
            HeaderName::from_static("idempotency-key"),
            REQUEST_ID_HEADER.clone(),
            HeaderName::from_static("traceparent"),
        ])
        .expose_headers([REQUEST_ID_HEADER.clone(), header::ETAG, header::RETRY_AFTER]);
    if let Some(max_age) = config.max_age {
        layer = layer.max_age(max_age.as_duration());
    }
    Some(layer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    async fn panicking_handler() -> &'static str {
        panic!("handler bug")
    }

    fn test_router() -> Router {
        let router = Router::new()
            .route("/panics", axum::routing::get(panicking_handler))
            .route(
                "/slow",
                axum::routing::get(|| async {
                    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
                    "late"
                }),
            )
            .route("/fine", axum::routing::get(|| async { "fine" }));
        let config = ServerConfig {
            request_timeout: plinth_core::HumanDuration::from_millis(100),
            ..ServerConfig::default()
        };
        apply_middleware(router, &config)
    }

    async fn problem_body(response: axum::response::Response) -> serde_json::Value {
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn a_panicking_handler_becomes_a_500_with_the_request_id() {
        let router = test_router();
        let request = Request::get("/panics")
            .header("x-request-id", "panic-test-1")
            .body(Body::empty())
            .unwrap();
        let response = router.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(response.headers()["x-request-id"], "panic-test-1");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
        let problem = problem_body(response).await;
        assert_eq!(problem["code"], "internal");
        assert_eq!(problem["request_id"], "panic-test-1");

        let after = router
            .oneshot(Request::get("/fine").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(after.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn a_slow_handler_is_cut_off_with_a_504() {
        let response = test_router()
            .oneshot(Request::get("/slow").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
        let problem = problem_body(response).await;
        assert_eq!(problem["code"], "request_timeout");
    }

    #[test]
    fn the_openapi_document_lists_every_route() {
        let document = openapi_document();
        let mut paths: Vec<&str> = document.paths.paths.keys().map(String::as_str).collect();
        paths.sort_unstable();
        assert_eq!(
            paths,
            vec![
                "/health",
                "/health/live",
                "/health/ready",
                "/metrics",
                "/v1/admin/audit",
                "/v1/admin/events/scavenge",
                "/v1/admin/tenants",
                "/v1/admin/tenants/{tenant}",
                "/v1/admin/tenants/{tenant}/keys",
                "/v1/admin/tenants/{tenant}/keys/{key_id}",
                "/v1/all",
                "/v1/all/subscribe",
                "/v1/all/subscribe/ws",
                "/v1/cache/{keyspace}/{key}",
                "/v1/cache/{keyspace}/{key}/increment",
                "/v1/keys",
                "/v1/keys/{key_id}",
                "/v1/keyspaces",
                "/v1/keyspaces/{keyspace}",
                "/v1/keyspaces/{keyspace}/bulk-delete",
                "/v1/keyspaces/{keyspace}/bulk-get",
                "/v1/keyspaces/{keyspace}/bulk-put",
                "/v1/keyspaces/{keyspace}/flush",
                "/v1/keyspaces/{keyspace}/invalidate",
                "/v1/keyspaces/{keyspace}/keys",
                "/v1/keyspaces/{keyspace}/stats",
                "/v1/keyspaces/{keyspace}/warm",
                "/v1/openapi.json",
                "/v1/streams/{stream}",
                "/v1/streams/{stream}/from-snapshot",
                "/v1/streams/{stream}/metadata",
                "/v1/streams/{stream}/snapshot",
                "/v1/streams/{stream}/subscribe",
                "/v1/streams/{stream}/subscribe/ws",
                "/v1/subscriptions",
                "/v1/subscriptions/{group}",
                "/v1/subscriptions/{group}/ack",
                "/v1/subscriptions/{group}/lease",
                "/v1/subscriptions/{group}/nack",
                "/v1/subscriptions/{group}/parked",
                "/v1/subscriptions/{group}/parked/replay",
                "/v1/whoami",
            ]
        );
    }
}
