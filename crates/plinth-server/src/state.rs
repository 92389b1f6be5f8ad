//! What every handler can reach: the configuration, the engines, the
//! control plane, health, the audit log and the building blocks.

use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;
use plinth_cache::service::CacheService;
use plinth_control::{Authenticator, ControlStore};
use plinth_core::config::PlinthConfig;
use plinth_engines::Engines;

use crate::audit::AuditLog;
use crate::health_service::HealthService;

#[derive(Clone)]
pub struct AppState {
    pub config: Arc<PlinthConfig>,
    pub engines: Engines,
    pub control: Arc<dyn ControlStore>,
    pub authenticator: Arc<Authenticator>,
    pub health: Arc<HealthService>,
    pub audit: AuditLog,
    pub metrics: PrometheusHandle,
    pub cache: Arc<CacheService>,
}
