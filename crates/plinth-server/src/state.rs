//! What every handler can reach: the configuration, the engines, the
//! control plane, health, the audit log, the building blocks, and the
//! node's shutdown signal (long-lived responses such as subscriptions end
//! when it turns true).

use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;
use plinth_cache::service::CacheService;
use plinth_control::{Authenticator, ControlStore};
use plinth_core::config::PlinthConfig;
use plinth_engines::Engines;
use tokio::sync::watch;

use crate::audit::AuditLog;
use crate::events_block::EventsBlock;
use crate::health_service::HealthService;

/// The handlers' view of the node. Cloned for every request by each layer
/// and handler that takes it, so it is one `Arc`: one reference count
/// instead of one per service.
#[derive(Clone)]
pub struct AppState(Arc<AppServices>);

impl AppState {
    pub fn new(services: AppServices) -> AppState {
        AppState(Arc::new(services))
    }
}

impl std::ops::Deref for AppState {
    type Target = AppServices;

    fn deref(&self) -> &AppServices {
        &self.0
    }
}

pub struct AppServices {
    pub config: Arc<PlinthConfig>,
    pub engines: Engines,
    pub control: Arc<dyn ControlStore>,
    pub authenticator: Arc<Authenticator>,
    pub health: Arc<HealthService>,
    pub audit: AuditLog,
    pub metrics: PrometheusHandle,
    pub cache: Arc<CacheService>,
    pub events: Arc<EventsBlock>,
    /// Turns true when the node begins to shut down.
    pub shutdown: watch::Receiver<bool>,
}
