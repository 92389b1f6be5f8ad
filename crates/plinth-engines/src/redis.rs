//! The Redis engine: one multiplexed connection that reconnects by itself
//! (the `redis` crate's `ConnectionManager`), behind the breaker and call
//! timeout like every other engine.
//!
//! A node may start while Redis is down: the first connection is then
//! retried in the background with jittered backoff, the node reports Redis
//! as unreachable in health, and callers get `engine_unavailable` until it
//! comes up.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::RwLock;
use plinth_core::resilience::{CircuitBreaker, EngineGuard, RetryPolicy};
use plinth_core::{Error, HumanDuration};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::health::{HealthProbe, ProbeFailure};

const ENGINE_NAME: &str = "redis";

pub struct RedisEngine {
    client: redis::Client,
    connection: RwLock<Option<ConnectionManager>>,
    call_timeout: Duration,
    guard: EngineGuard,
}

/// Maps a Redis error to a Plinth error. Connection-level failures are
/// outages (503); anything else is a bug in how we talk to Redis.
pub fn redis_failure(error: redis::RedisError) -> Error {
    if error.is_io_error()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || error.is_timeout()
    {
        return Error::unavailable(
            "engine_unavailable",
            format!("redis: {error}"),
            Duration::from_secs(1),
        );
    }
    Error::internal(format!("redis: {error}"))
}

impl RedisEngine {
    /// Prepares the engine and starts connecting in the background. Only a
    /// malformed URL fails here.
    pub fn start(
        url: &str,
        breaker: Arc<CircuitBreaker>,
        call_timeout: Duration,
    ) -> Result<Arc<Self>, Error> {
        crate::url::validate_redis_url(url)?;
        let client = redis::Client::open(url).map_err(|_| {
            Error::invalid_argument(
                "invalid_engine_url",
                "redis.url is not a valid redis:// URL",
            )
        })?;
        let engine = Arc::new(RedisEngine {
            client,
            connection: RwLock::new(None),
            call_timeout,
            guard: EngineGuard::new(breaker, call_timeout),
        });
        metrics::gauge!("plinth_redis_connected").set(0.0);
        spawn_first_connection(Arc::downgrade(&engine));
        Ok(engine)
    }

    /// Waits until the first connection is up, at most `wait`.
    pub async fn wait_connected(&self, wait: Duration) -> Result<(), Error> {
        let started = tokio::time::Instant::now();
        while started.elapsed() < wait {
            if self.connection.read().is_some() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(not_connected())
    }

    pub fn guard(&self) -> &EngineGuard {
        &self.guard
    }

    /// A handle on the shared connection (cheap to clone). Fails fast while
    /// the first connection has not been made.
    pub fn connection(&self) -> Result<ConnectionManager, Error> {
        match self.connection.read().as_ref() {
            Some(connection) => Ok(connection.clone()),
            None => Err(not_connected()),
        }
    }

    /// Runs one command or pipeline through the breaker and call timeout.
    pub async fn run<T, F>(&self, operation: &'static str, future: F) -> Result<T, Error>
    where
        F: Future<Output = Result<T, redis::RedisError>>,
    {
        match self.guard.call(operation, future).await {
            Ok(value) => Ok(value),
            Err(guarded_error) => Err(guarded_error.into_plinth_error(ENGINE_NAME, redis_failure)),
        }
    }

    /// A dedicated connection for pub/sub (subscriptions cannot share the
    /// multiplexed connection).
    pub async fn pubsub(&self) -> Result<redis::aio::PubSub, Error> {
        self.run("pubsub_connect", self.client.get_async_pubsub())
            .await
    }

    async fn try_connect(&self) -> Result<(), redis::RedisError> {
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.call_timeout))
            .set_response_timeout(Some(self.call_timeout));
        let manager =
            ConnectionManager::new_with_config(self.client.clone(), manager_config).await?;
        *self.connection.write() = Some(manager);
        metrics::gauge!("plinth_redis_connected").set(1.0);
        Ok(())
    }
}

fn not_connected() -> Error {
    Error::unavailable(
        "engine_unavailable",
        "redis is not connected yet",
        Duration::from_secs(1),
    )
}

fn spawn_first_connection(engine: std::sync::Weak<RedisEngine>) {
    tokio::spawn(async move {
        let backoff = RetryPolicy {
            max_attempts: u32::MAX,
            initial_backoff: HumanDuration::from_millis(100),
            max_backoff: HumanDuration::from_secs(5),
            multiplier: 2.0,
        };
        let mut retry_number = 0u32;
        loop {
            let Some(engine) = engine.upgrade() else {
                return;
            };
            match engine.try_connect().await {
                Ok(()) => {
                    tracing::info!("redis connected");
                    return;
                }
                Err(connect_error) => {
                    tracing::warn!(error = %connect_error, retry_number, "redis connection failed, retrying");
                }
            }
            drop(engine);
            let delay = backoff.full_jitter_backoff(retry_number, &mut rand::rng());
            tokio::time::sleep(delay).await;
            retry_number = retry_number.saturating_add(1);
        }
    });
}

#[async_trait]
impl HealthProbe for RedisEngine {
    fn name(&self) -> &'static str {
        ENGINE_NAME
    }

    fn breaker(&self) -> Arc<CircuitBreaker> {
        Arc::clone(self.guard.breaker())
    }

    async fn probe(&self) -> Result<(), ProbeFailure> {
        let mut connection = match self.connection() {
            Ok(connection) => connection,
            Err(error) => return Err(ProbeFailure(error.detail().to_string())),
        };
        let ping_command = redis::cmd("PING");
        let ping = ping_command.query_async::<String>(&mut connection);
        match self.run("health_probe", ping).await {
            Ok(_) => {
                metrics::gauge!("plinth_redis_connected").set(1.0);
                Ok(())
            }
            Err(error) => {
                metrics::gauge!("plinth_redis_connected").set(0.0);
                Err(ProbeFailure(error.detail().to_string()))
            }
        }
    }
}
