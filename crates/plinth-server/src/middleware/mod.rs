//! The middleware every request goes through, one concern per module.

pub mod auth;
pub mod body_limit;
pub mod request_context;
pub mod security_headers;
pub mod timeout;
