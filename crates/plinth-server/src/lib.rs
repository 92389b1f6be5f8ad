//! Plinth's HTTP edge: it composes the blocks behind one axum router, with
//! the middleware every route shares (request ids, trace context, metrics,
//! logs, panics, timeouts, body limits, security headers, compression,
//! CORS, authentication, idempotency), health, Prometheus metrics, and the
//! OpenAPI document generated from the route definitions.
//!
//! This is the only crate that knows HTTP: [`problem`] maps
//! [`plinth_core::Error`] to statuses in one place.

mod app;
mod audit;
mod event_subscription;
mod events_block;
mod extract;
mod health_service;
mod idempotency;
mod json;
pub mod log_lines;
mod middleware;
mod observability;
pub mod problem;
mod routes;
mod serve;
mod state;

pub use app::build_router;
pub use observability::{METRICS_DOCUMENTATION, prometheus_handle};
pub use serve::{ServeOptions, all_migration_sets, run_server};
pub use state::AppState;
