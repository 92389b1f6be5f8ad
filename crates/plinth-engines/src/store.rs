//! The set of engines one node runs on, built from the configuration.

use std::sync::Arc;

use plinth_core::Error;
use plinth_core::config::PlinthConfig;
use plinth_core::resilience::CircuitBreaker;

use crate::health::HealthProbe;
use crate::url::{EngineUrl, StoreKind};
use crate::{PostgresEngine, RedisEngine, SqliteEngine};

/// The durable store: embedded SQLite or PostgreSQL. Blocks match on it to
/// pick their backend module.
#[derive(Clone)]
pub enum Store {
    Sqlite(Arc<SqliteEngine>),
    Postgres(Arc<PostgresEngine>),
}

impl Store {
    /// Opens the store named by `storage.url` (SQLite under `data_dir`
    /// when unset).
    pub async fn open(config: &PlinthConfig) -> Result<Self, Error> {
        let url = config
            .storage
            .url
            .as_ref()
            .map(|secret| secret.expose().as_str());
        let engine_url = EngineUrl::parse_store(url, &config.data_dir)?;
        let call_timeout = config.engines.call_timeout.as_duration();
        let breaker = Arc::new(CircuitBreaker::new(
            engine_url.kind().as_str(),
            config.engines.breaker.clone(),
        ));
        match engine_url {
            EngineUrl::Sqlite(path) => {
                let sqlite_config = config.storage.sqlite.clone();
                let engine = tokio::task::spawn_blocking(move || {
                    SqliteEngine::open(&path, &sqlite_config, breaker, call_timeout)
                })
                .await
                .map_err(|join_error| Error::internal(format!("opening sqlite: {join_error}")))??;
                Ok(Store::Sqlite(Arc::new(engine)))
            }
            EngineUrl::Postgres(url) => {
                let engine =
                    PostgresEngine::connect(&url, &config.storage.postgres, breaker, call_timeout)
                        .await?;
                Ok(Store::Postgres(engine))
            }
        }
    }

    pub fn kind(&self) -> StoreKind {
        match self {
            Store::Sqlite(_) => StoreKind::Sqlite,
            Store::Postgres(_) => StoreKind::Postgres,
        }
    }

    pub fn probe(&self) -> Arc<dyn HealthProbe> {
        match self {
            Store::Sqlite(engine) => Arc::clone(engine) as Arc<dyn HealthProbe>,
            Store::Postgres(engine) => Arc::clone(engine) as Arc<dyn HealthProbe>,
        }
    }

    pub async fn close(&self) {
        match self {
            Store::Sqlite(engine) => engine.close().await,
            Store::Postgres(engine) => engine.close(),
        }
    }
}

/// Every engine a node is configured with.
#[derive(Clone)]
pub struct Engines {
    pub store: Store,
    pub redis: Option<Arc<RedisEngine>>,
}

impl Engines {
    pub async fn connect(config: &PlinthConfig) -> Result<Self, Error> {
        let store = Store::open(config).await?;
        let redis = match &config.redis.url {
            None => None,
            Some(url) => {
                let breaker =
                    Arc::new(CircuitBreaker::new("redis", config.engines.breaker.clone()));
                Some(RedisEngine::start(
                    url.expose(),
                    breaker,
                    config.engines.call_timeout.as_duration(),
                )?)
            }
        };
        Ok(Engines { store, redis })
    }

    /// One probe per configured engine, for health and readiness.
    pub fn probes(&self) -> Vec<Arc<dyn HealthProbe>> {
        let mut probes = vec![self.store.probe()];
        if let Some(redis) = &self.redis {
            probes.push(Arc::clone(redis) as Arc<dyn HealthProbe>);
        }
        probes
    }

    pub async fn close(&self) {
        self.store.close().await;
    }
}
