//! What every Plinth building block shares: the error type and its stable
//! codes, validated names and tenants, durations as strings, the
//! configuration types, and the resilience primitives (circuit breaker,
//! retry with jittered backoff and a budget, deadlines) that wrap every call
//! to an engine.
//!
//! This crate knows nothing of HTTP or of any engine.

pub mod config;
pub mod duration;
pub mod error;
pub mod names;
pub mod resilience;
pub mod secret;

pub use duration::HumanDuration;
pub use error::{Error, ErrorKind, Result};
pub use names::{ResourceName, TenantId};
pub use secret::Secret;
