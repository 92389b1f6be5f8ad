//! Health and metrics, outside `/v1` and without authentication, for load
//! balancers, orchestrators and Prometheus.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::health_service::HealthReport;
use crate::state::AppState;

#[derive(Debug, Serialize, ToSchema)]
pub struct Liveness {
    pub status: &'static str,
}

/// The process is alive and serving HTTP. Never touches an engine.
#[utoipa::path(
    get,
    path = "/health/live",
    tag = "health",
    responses((status = 200, description = "Alive", body = Liveness))
)]
pub async fn get_live() -> Json<Liveness> {
    Json(Liveness { status: "alive" })
}

/// 200 when every configured engine answers and the node is not shutting
/// down; 503 otherwise. Cached about a second.
#[utoipa::path(
    get,
    path = "/health/ready",
    tag = "health",
    responses(
        (status = 200, description = "Ready", body = HealthReport),
        (status = 503, description = "An engine is down or the node is draining", body = HealthReport),
    )
)]
pub async fn get_ready(State(state): State<AppState>) -> Response {
    let report = state.health.report().await;
    let status = if report.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(report)).into_response()
}

/// Every dependency's status, latency, breaker state and recent checks.
/// Always 200 while the process serves; read `status` for the verdict.
#[utoipa::path(
    get,
    path = "/health",
    tag = "health",
    responses((status = 200, description = "Detailed health", body = HealthReport))
)]
pub async fn get_health(State(state): State<AppState>) -> Json<HealthReport> {
    Json(state.health.report().await)
}

/// Prometheus text exposition of every metric (see docs/METRICS.md).
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "health",
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain"))
)]
pub async fn get_metrics(State(state): State<AppState>) -> Response {
    let body = state.metrics.render();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}
