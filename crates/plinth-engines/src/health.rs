//! How an engine reports whether it can serve calls right now.

use std::sync::Arc;

use async_trait::async_trait;
use plinth_core::resilience::CircuitBreaker;

/// Why a probe failed, in words safe to show (no credentials).
#[derive(Clone, Debug)]
pub struct ProbeFailure(pub String);

/// One engine's liveness check. The health service calls `probe` at most
/// about once a second per engine and caches the answer.
#[async_trait]
pub trait HealthProbe: Send + Sync {
    /// Stable name used in health output and metric labels: `sqlite`,
    /// `postgres`, `redis`.
    fn name(&self) -> &'static str;

    /// The breaker guarding calls to this engine.
    fn breaker(&self) -> Arc<CircuitBreaker>;

    /// A cheap round trip (`SELECT 1`, `PING`).
    async fn probe(&self) -> Result<(), ProbeFailure>;
}
