//! Starting and stopping a node: checks the configuration is safe to run,
//! connects the engines and migrates them, serves HTTP (and starts the
//! configured cache warmings in the background once it listens), and on
//! shutdown turns readiness to 503 at once, stops accepting connections,
//! drains in-flight requests up to `server.shutdown_timeout`, cancels
//! running warmings, ends event subscriptions, and closes engines.

use std::any::Any;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::response::{IntoResponse, Response};
use plinth_cache::service::CacheService;
use plinth_cache::setup::{CACHE_MIGRATION_SETS, start_cache_service};
use plinth_cache::warming::{WarmPlan, cancel_all_warmings, nothing_to_warm, start_warming};
use plinth_control::{Authenticator, CONTROL_MIGRATIONS, open_control_store};
use plinth_core::config::{AuthMode, CacheConfig, PlinthConfig};
use plinth_core::{Error, ResourceName, TenantId};
use plinth_engines::Engines;
use plinth_events::{EVENTS_MIGRATIONS, EventStore};
use time::OffsetDateTime;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};

use crate::app::build_router;
use crate::audit::AuditLog;
use crate::events_block::EventsBlock;
use crate::health_service::HealthService;
use crate::observability::prometheus_handle;
use crate::problem::ApiError;
use crate::state::{AppServices, AppState};

const IDEMPOTENCY_PURGE_PERIOD: Duration = Duration::from_secs(600);

pub struct ServeOptions {
    pub config: PlinthConfig,
    /// Told the bound address once the node accepts connections.
    pub on_listening: Option<oneshot::Sender<SocketAddr>>,
}

/// Runs a node until `shutdown` completes, then drains and returns.
pub async fn run_server(
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let config = options.config;
    check_safe_to_listen(&config)?;
    let metrics = prometheus_handle();

    let engines = Engines::connect(&config).await?;
    let reports = engines.store.migrate(&all_migration_sets()).await?;
    for report in &reports {
        if !report.newly_applied.is_empty() {
            tracing::info!(component = report.component, versions = ?report.newly_applied, "migrations applied");
        }
    }
    let control = open_control_store(&engines.store);
    let cache = start_cache_service(&engines, &config.cache).await?;
    let startup_warmings = plan_startup_warmings(&cache, &config.cache).await?;
    let events = Arc::new(EventsBlock::new(EventStore::new(
        &engines.store,
        config.events.clone(),
    )?));
    let (shutdown_sender, shutdown_receiver) = watch::channel(false);
    let authenticator = Arc::new(Authenticator::new(Arc::clone(&control), &config.auth)?);
    let health = Arc::new(HealthService::new(
        engines.probes(),
        config.health.cache_ttl.as_duration(),
        config.health.history,
    ));
    let audit = AuditLog::start(Arc::clone(&control));
    let state = AppState::new(AppServices {
        config: Arc::new(config.clone()),
        engines: engines.clone(),
        control: Arc::clone(&control),
        authenticator,
        health: Arc::clone(&health),
        audit,
        metrics,
        cache: Arc::clone(&cache),
        events: Arc::clone(&events),
        shutdown: shutdown_receiver.clone(),
    });
    spawn_idempotency_purge(Arc::clone(&control));
    events.spawn_periodic_scavenge(
        config.events.scavenge_interval.as_duration(),
        shutdown_receiver.clone(),
    );

    let listener = TcpListener::bind(config.server.listen)
        .await
        .map_err(|io_error| {
            Error::invalid_argument(
                "cannot_listen",
                format!("cannot listen on {}: {io_error}", config.server.listen),
            )
        })?;
    let local_address = listener
        .local_addr()
        .map_err(|io_error| Error::internal(io_error.to_string()))?;
    tracing::info!(address = %local_address, store = engines.store.kind().as_str(), "plinth listening");
    if let Some(on_listening) = options.on_listening {
        let _ = on_listening.send(local_address);
    }
    spawn_startup_warmings(Arc::clone(&cache), startup_warmings);

    let (drain_started_sender, drain_started) = oneshot::channel::<()>();
    let health_for_shutdown = Arc::clone(&health);
    let graceful_signal = async move {
        shutdown.await;
        health_for_shutdown.begin_shutdown();
        // Subscriptions would otherwise hold the drain open until its timeout.
        shutdown_sender.send_replace(true);
        tracing::info!("shutdown requested: readiness is now 503, draining in-flight requests");
        let _ = drain_started_sender.send(());
    };
    let router = build_router(state);
    let server = axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(graceful_signal);

    let shutdown_timeout = config.server.shutdown_timeout.as_duration();
    let drain_deadline = async move {
        if drain_started.await.is_err() {
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(shutdown_timeout).await;
    };
    tokio::select! {
        served = server => {
            if let Err(io_error) = served {
                return Err(Error::internal(format!("server failed: {io_error}")));
            }
        }
        () = drain_deadline => {
            tracing::warn!(timeout = %plinth_core::HumanDuration(shutdown_timeout), "in-flight requests did not finish in time; closing them");
        }
    }
    cancel_all_warmings(&cache);
    engines.close().await;
    tracing::info!("plinth stopped");
    Ok(())
}

/// A warming the node configuration asks for at start-up.
struct StartupWarming {
    tenant: TenantId,
    keyspace: ResourceName,
    plan: WarmPlan,
}

/// Checks the `warm` specs of the configured keyspaces before the node
/// listens, so a mistake stops start-up instead of only reaching the log.
async fn plan_startup_warmings(
    cache: &CacheService,
    config: &CacheConfig,
) -> Result<Vec<StartupWarming>, Error> {
    let mut warmings = Vec::new();
    for configured in &config.keyspaces {
        let Some(spec) = &configured.warm else {
            continue;
        };
        let in_config = |error: Error| {
            Error::invalid_argument(
                "invalid_config",
                format!(
                    "cache.keyspaces `{}`: warm: {}",
                    configured.name,
                    error.detail()
                ),
            )
        };
        let tenant = TenantId::parse(&configured.tenant)?;
        let keyspace = ResourceName::parse("keyspace", &configured.name)?;
        let plan = WarmPlan::from_spec(spec).map_err(in_config)?;
        let record = cache.keyspace(&tenant, &keyspace).await?;
        if !cache.is_warmable(record) {
            return Err(in_config(nothing_to_warm(&keyspace)));
        }
        warmings.push(StartupWarming {
            tenant,
            keyspace,
            plan,
        });
    }
    Ok(warmings)
}

/// Starts the configured warmings in the background: serving never waits
/// for them.
fn spawn_startup_warmings(cache: Arc<CacheService>, warmings: Vec<StartupWarming>) {
    if warmings.is_empty() {
        return;
    }
    tokio::spawn(async move {
        for warming in warmings {
            let started =
                start_warming(&cache, &warming.tenant, &warming.keyspace, warming.plan).await;
            if let Err(error) = started {
                tracing::warn!(tenant = %warming.tenant, keyspace = %warming.keyspace, error = %error, "start-up cache warming could not start");
            }
        }
    });
}

/// Every component's schema, in dependency order.
pub fn all_migration_sets() -> Vec<&'static plinth_engines::MigrationSet> {
    let mut sets: Vec<&'static plinth_engines::MigrationSet> = vec![&CONTROL_MIGRATIONS];
    sets.extend(CACHE_MIGRATION_SETS.iter().copied());
    sets.push(&EVENTS_MIGRATIONS);
    sets
}

/// Dev mode accepts requests without credentials, so it must never be
/// reachable from another machine.
fn check_safe_to_listen(config: &PlinthConfig) -> Result<(), Error> {
    if config.auth.mode != AuthMode::Dev {
        return Ok(());
    }
    if !config.server.listen.ip().is_loopback() {
        return Err(Error::invalid_argument(
            "unsafe_config",
            format!(
                "refusing to listen on {} with auth.mode = \"dev\" (requests without credentials act as an admin); \
                 set auth.mode = \"enforced\" with a bootstrap admin key or JWT keys, or listen on 127.0.0.1",
                config.server.listen
            ),
        ));
    }
    tracing::warn!(
        "AUTH DEV MODE: requests without credentials act as tenant `default` with every scope; \
         set auth.mode = \"enforced\" before exposing this node"
    );
    Ok(())
}

fn spawn_idempotency_purge(control: Arc<dyn plinth_control::ControlStore>) {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(IDEMPOTENCY_PURGE_PERIOD);
        loop {
            ticker.tick().await;
            match control
                .purge_expired_idempotency(OffsetDateTime::now_utc())
                .await
            {
                Ok(0) => {}
                Ok(purged) => tracing::debug!(purged, "expired idempotency records purged"),
                Err(error) => tracing::warn!(error = %error, "idempotency purge failed"),
            }
        }
    });
}

/// A handler panicked: answer 500 with the request id, log it, keep serving.
pub fn panic_response(panic: Box<dyn Any + Send + 'static>) -> Response {
    let message = if let Some(text) = panic.downcast_ref::<&str>() {
        (*text).to_string()
    } else if let Some(text) = panic.downcast_ref::<String>() {
        text.clone()
    } else {
        "unknown panic".to_string()
    };
    tracing::error!(panic = %message, "handler panicked");
    ApiError(Error::internal(
        "the server hit a bug while handling this request; it was logged with this request id",
    ))
    .into_response()
}
