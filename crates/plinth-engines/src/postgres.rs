//! The PostgreSQL engine: a connection pool (deadpool) with a minimum and
//! maximum size, an acquire timeout, recycling with a health check of
//! connections that sat idle, connection lifetime limits,
//! prepared-statement caching, and pool metrics.
//!
//! Callers acquire a client with [`PostgresEngine::acquire`] and run each
//! query or transaction through [`PostgresEngine::run`], so every round
//! trip goes through the breaker and the call timeout.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use deadpool::managed::{self, Metrics, Object, Pool, RecycleResult};
use deadpool_postgres::{ClientWrapper, Manager, ManagerConfig, RecyclingMethod, Runtime};
use plinth_core::config::PostgresConfig;
use plinth_core::resilience::{
    CircuitBreaker, EngineGuard, RetryBudget, RetryBudgetConfig, RetryPolicy, retry,
};
use plinth_core::{Error, HumanDuration};
use tokio_postgres::types::ToSql;
use tokio_postgres::{NoTls, Row};

use crate::health::{HealthProbe, ProbeFailure};

const ENGINE_NAME: &str = "postgres";
/// How often idle connections past their lifetime are replaced.
const MAINTENANCE_PERIOD: Duration = Duration::from_secs(15);
/// A connection taken from the pool within this time of its last use is
/// handed out without a health check (a round trip); one idle for longer
/// is checked first. The idea and the value are HikariCP's.
const VERIFY_CONNECTIONS_IDLE_FOR: Duration = Duration::from_millis(500);

/// A pooled client; dropping it returns the connection to the pool.
pub type PooledClient = Object<IdleVerifyingManager>;
type PoolError = managed::PoolError<tokio_postgres::Error>;

/// deadpool's PostgreSQL manager, with its health check (an empty query)
/// run only on connections that sat idle for
/// [`VERIFY_CONNECTIONS_IDLE_FOR`]. Checking every connection it hands out
/// cost each transaction one more round trip, while a connection used a
/// moment ago is known to be good, and a closed one is caught without a
/// round trip. A connection that breaks anyway fails its call, which the
/// breaker counts like any other failure.
#[derive(Debug)]
pub struct IdleVerifyingManager {
    verifying_manager: Manager,
}

impl managed::Manager for IdleVerifyingManager {
    type Type = ClientWrapper;
    type Error = tokio_postgres::Error;

    async fn create(&self) -> Result<ClientWrapper, tokio_postgres::Error> {
        self.verifying_manager.create().await
    }

    async fn recycle(
        &self,
        client: &mut ClientWrapper,
        metrics: &Metrics,
    ) -> RecycleResult<tokio_postgres::Error> {
        let used_a_moment_ago = metrics.last_used() < VERIFY_CONNECTIONS_IDLE_FOR;
        if used_a_moment_ago && !client.is_closed() {
            return Ok(());
        }
        self.verifying_manager.recycle(client, metrics).await
    }

    fn detach(&self, client: &mut ClientWrapper) {
        self.verifying_manager.detach(client);
    }
}

/// `url` with the session's `search_path` set to `schema`, so everything
/// a connection made with it creates and reads unqualified lives there.
pub fn url_with_search_path(url: &str, schema: &str) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}options=-csearch_path%3D{schema}")
}

/// A connection outside the pool (see [`PostgresEngine::connect_dedicated`]):
/// the caller must poll it for the client to make progress.
pub type DedicatedConnection =
    tokio_postgres::Connection<tokio_postgres::Socket, tokio_postgres::tls::NoTlsStream>;

pub struct PostgresEngine {
    pool: Pool<IdleVerifyingManager>,
    driver_config: tokio_postgres::Config,
    config: PostgresConfig,
    guard: EngineGuard,
    acquire_retry_policy: RetryPolicy,
    retry_budget: RetryBudget,
}

/// Maps a driver error to a Plinth error without leaking connection
/// details. Database-side errors keep their SQLSTATE so blocks can tell a
/// unique violation from an outage.
pub fn postgres_failure(error: tokio_postgres::Error) -> Error {
    if let Some(database_error) = error.as_db_error() {
        return Error::internal(format!(
            "postgres: {} ({})",
            database_error.message(),
            database_error.code().code()
        ));
    }
    Error::unavailable(
        "engine_unavailable",
        format!("postgres: {error}"),
        Duration::from_secs(1),
    )
}

impl PostgresEngine {
    /// Builds the pool and opens `pool_min_size` connections. Fails when
    /// PostgreSQL cannot be reached at all.
    pub async fn connect(
        url: &str,
        config: &PostgresConfig,
        breaker: Arc<CircuitBreaker>,
        call_timeout: Duration,
    ) -> Result<Arc<Self>, Error> {
        let driver_config: tokio_postgres::Config = url.parse().map_err(|_| {
            Error::invalid_argument(
                "invalid_engine_url",
                "storage.url is not a valid postgres:// URL",
            )
        })?;
        let manager = IdleVerifyingManager {
            verifying_manager: Manager::from_config(
                driver_config.clone(),
                NoTls,
                ManagerConfig {
                    recycling_method: RecyclingMethod::Verified,
                },
            ),
        };
        let acquire_timeout = config.acquire_timeout.as_duration();
        let pool = Pool::builder(manager)
            .max_size(config.pool_max_size.max(1))
            .wait_timeout(Some(acquire_timeout))
            .create_timeout(Some(call_timeout))
            .recycle_timeout(Some(call_timeout))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|build_error| Error::internal(format!("postgres pool: {build_error}")))?;
        let engine = Arc::new(PostgresEngine {
            pool,
            driver_config,
            config: config.clone(),
            guard: EngineGuard::new(breaker, call_timeout),
            acquire_retry_policy: RetryPolicy {
                max_attempts: 3,
                initial_backoff: HumanDuration::from_millis(20),
                max_backoff: HumanDuration::from_millis(200),
                multiplier: 2.0,
            },
            retry_budget: RetryBudgetConfig::default().build(),
        });
        engine.fill_to_minimum().await?;
        engine.publish_gauges();
        spawn_maintenance(Arc::downgrade(&engine));
        Ok(engine)
    }

    pub fn guard(&self) -> &EngineGuard {
        &self.guard
    }

    /// Takes a connection from the pool, waiting at most `acquire_timeout`.
    /// Getting a connection changes nothing, so a failure to open one is
    /// retried with jittered backoff, within the retry budget; an exhausted
    /// pool or an open breaker is not retried.
    pub async fn acquire(&self) -> Result<PooledClient, Error> {
        let started = Instant::now();
        let acquired = retry(
            &self.acquire_retry_policy,
            Some(&self.retry_budget),
            is_worth_retrying,
            |_attempt| self.acquire_once(),
        )
        .await;
        metrics::histogram!("plinth_pool_acquire_duration_seconds", "engine" => ENGINE_NAME)
            .record(started.elapsed().as_secs_f64());
        self.publish_gauges();
        acquired
    }

    async fn acquire_once(&self) -> Result<PooledClient, Error> {
        match self.guard.call("acquire", self.pool.get()).await {
            Ok(client) => Ok(client),
            Err(guarded_error) => Err(guarded_error.into_plinth_error(ENGINE_NAME, pool_failure)),
        }
    }

    /// Runs one query or transaction (any future over a client) through the
    /// breaker and the call timeout.
    pub async fn run<T, F>(&self, operation: &'static str, future: F) -> Result<T, Error>
    where
        F: Future<Output = Result<T, tokio_postgres::Error>>,
    {
        match self.guard.call(operation, future).await {
            Ok(value) => Ok(value),
            Err(guarded_error) => {
                Err(guarded_error.into_plinth_error(ENGINE_NAME, postgres_failure))
            }
        }
    }

    /// Runs one statement on a pooled connection, prepared through the
    /// connection's statement cache; returns how many rows it changed.
    pub async fn execute_cached(
        &self,
        operation: &'static str,
        sql: &str,
        parameters: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, Error> {
        let client = self.acquire().await?;
        self.run(operation, async {
            let statement = client.prepare_cached(sql).await?;
            client.execute(&statement, parameters).await
        })
        .await
    }

    /// Like [`execute_cached`](Self::execute_cached); returns the rows.
    pub async fn query_cached(
        &self,
        operation: &'static str,
        sql: &str,
        parameters: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, Error> {
        let client = self.acquire().await?;
        self.run(operation, async {
            let statement = client.prepare_cached(sql).await?;
            client.query(&statement, parameters).await
        })
        .await
    }

    /// Like [`execute_cached`](Self::execute_cached); returns at most one row.
    pub async fn query_opt_cached(
        &self,
        operation: &'static str,
        sql: &str,
        parameters: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, Error> {
        let client = self.acquire().await?;
        self.run(operation, async {
            let statement = client.prepare_cached(sql).await?;
            client.query_opt(&statement, parameters).await
        })
        .await
    }

    /// Like [`execute_cached`](Self::execute_cached); returns exactly one row.
    pub async fn query_one_cached(
        &self,
        operation: &'static str,
        sql: &str,
        parameters: &[&(dyn ToSql + Sync)],
    ) -> Result<Row, Error> {
        let client = self.acquire().await?;
        self.run(operation, async {
            let statement = client.prepare_cached(sql).await?;
            client.query_one(&statement, parameters).await
        })
        .await
    }

    /// Closes the pool: idle connections are dropped, new acquires fail.
    pub fn close(&self) {
        self.pool.close();
    }

    pub fn is_closed(&self) -> bool {
        self.pool.is_closed()
    }

    /// Opens a connection outside the pool, through the breaker and the
    /// call timeout, for a session that stays open (`LISTEN`). The caller
    /// drives the returned connection (`poll_message`) and drops both
    /// halves to close it.
    pub async fn connect_dedicated(
        &self,
    ) -> Result<(tokio_postgres::Client, DedicatedConnection), Error> {
        self.run("connect_dedicated", self.driver_config.connect(NoTls))
            .await
    }

    async fn fill_to_minimum(&self) -> Result<(), Error> {
        let wanted = self.config.pool_min_size.min(self.config.pool_max_size);
        let mut opened = Vec::with_capacity(wanted);
        while opened.len() < wanted {
            let status = self.pool.status();
            if status.size >= wanted {
                break;
            }
            opened.push(self.acquire().await?);
        }
        Ok(())
    }

    fn retire_old_connections(&self) {
        let max_lifetime = self.config.max_lifetime.as_duration();
        self.pool
            .retain(|_, connection_metrics| connection_metrics.age() < max_lifetime);
    }

    fn publish_gauges(&self) {
        let status = self.pool.status();
        let idle = status.available;
        let in_use = status.size.saturating_sub(idle);
        metrics::gauge!("plinth_pool_connections", "engine" => ENGINE_NAME, "state" => "idle")
            .set(idle as f64);
        metrics::gauge!("plinth_pool_connections", "engine" => ENGINE_NAME, "state" => "in_use")
            .set(in_use as f64);
        metrics::gauge!("plinth_pool_max_connections", "engine" => ENGINE_NAME)
            .set(status.max_size as f64);
        metrics::gauge!("plinth_pool_waiters", "engine" => ENGINE_NAME).set(status.waiting as f64);
    }
}

/// Only a failure to open a connection is worth another try.
fn is_worth_retrying(error: &Error) -> bool {
    error.code() == "engine_unavailable" && !error.detail().contains("breaker")
}

fn pool_failure(pool_error: PoolError) -> Error {
    if matches!(pool_error, managed::PoolError::Timeout(_)) {
        metrics::counter!("plinth_pool_exhausted_total", "engine" => ENGINE_NAME).increment(1);
        return Error::unavailable(
            "engine_pool_exhausted",
            "no postgres connection became free in time",
            Duration::from_secs(1),
        );
    }
    if let managed::PoolError::Backend(backend_error) = pool_error {
        return postgres_failure(backend_error);
    }
    Error::unavailable(
        "engine_unavailable",
        format!("postgres pool: {pool_error}"),
        Duration::from_secs(1),
    )
}

/// Replaces connections past their lifetime and keeps the minimum open.
/// Holds only a weak reference so the task ends when the engine is dropped.
fn spawn_maintenance(engine: std::sync::Weak<PostgresEngine>) {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(MAINTENANCE_PERIOD);
        ticker.tick().await;
        loop {
            ticker.tick().await;
            let Some(engine) = engine.upgrade() else {
                return;
            };
            if engine.pool.is_closed() {
                return;
            }
            engine.retire_old_connections();
            if let Err(fill_error) = engine.fill_to_minimum().await {
                tracing::debug!(error = %fill_error, "postgres pool could not reach its minimum size");
            }
            engine.publish_gauges();
        }
    });
}

#[async_trait]
impl HealthProbe for PostgresEngine {
    fn name(&self) -> &'static str {
        ENGINE_NAME
    }

    fn breaker(&self) -> Arc<CircuitBreaker> {
        Arc::clone(self.guard.breaker())
    }

    async fn probe(&self) -> Result<(), ProbeFailure> {
        let client = match self.acquire().await {
            Ok(client) => client,
            Err(error) => return Err(ProbeFailure(error.detail().to_string())),
        };
        match self
            .run("health_probe", client.simple_query("SELECT 1"))
            .await
        {
            Ok(_) => Ok(()),
            Err(error) => Err(ProbeFailure(error.detail().to_string())),
        }
    }
}
