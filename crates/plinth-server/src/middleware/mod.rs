//! The middleware every request goes through, one concern per module; the
//! edge runs the per-request steps in one pass.

pub mod auth;
pub mod body_limit;
pub mod compression;
pub mod edge;
pub mod request_context;
pub mod request_metrics;
pub mod security_headers;
pub mod timeout;
