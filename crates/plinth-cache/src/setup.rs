//! Builds the cache service from a node's engines and configuration.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use plinth_core::config::CacheConfig;
use plinth_core::{Error, ResourceName, TenantId};
use plinth_engines::{Engines, MigrationSet, Store};

use crate::catalog::{CATALOG_MIGRATIONS, KeyspaceCatalog};
use crate::coherence::Coherence;
use crate::keyspace::l1_settings;
use crate::l1::L1Tier;
use crate::migrations::CACHE_MIGRATIONS;
use crate::redis_tier::RedisCacheTier;
use crate::service::{CacheService, CacheServiceOptions};
use crate::stats::KeyspaceMetricLabels;
use crate::store_postgres::PostgresCacheStore;
use crate::store_sqlite::SqliteCacheStore;
use crate::tier::CacheTier;

/// The schema the cache needs in the node's store.
pub static CACHE_MIGRATION_SETS: [&MigrationSet; 2] = [&CATALOG_MIGRATIONS, &CACHE_MIGRATIONS];

/// The cache service on `engines`, with the keyspaces of `config` applied.
pub async fn start_cache_service(
    engines: &Engines,
    config: &CacheConfig,
) -> Result<Arc<CacheService>, Error> {
    let encryption_key = match &config.encryption_key {
        None => None,
        Some(encoded) => Some(decode_encryption_key(encoded.expose())?),
    };
    let store: Arc<dyn CacheTier> = match &engines.store {
        Store::Sqlite(engine) => Arc::new(SqliteCacheStore::new(Arc::clone(engine))),
        Store::Postgres(engine) => Arc::new(PostgresCacheStore::new(Arc::clone(engine))),
    };
    let redis: Option<Arc<dyn CacheTier>> = engines
        .redis
        .as_ref()
        .map(|engine| Arc::new(RedisCacheTier::new(Arc::clone(engine))) as Arc<dyn CacheTier>);
    let default_l1 = config.default_keyspace.l1.clone().unwrap_or_default();
    let catalog = KeyspaceCatalog::new(engines.store.clone());
    let declared_keyspaces = declared_keyspace_identities(config)?;
    let metric_labels = Arc::new(KeyspaceMetricLabels::for_declared_keyspaces(
        declared_keyspaces.iter().cloned(),
    ));
    let l1 = Arc::new(L1Tier::new(l1_settings(&default_l1), metric_labels));
    let coherence = engines.redis.as_ref().map(|redis_engine| {
        Coherence::start(
            Arc::clone(redis_engine),
            Arc::clone(&l1),
            Arc::clone(&catalog),
            config.coherence_fallback_ttl.as_duration(),
        )
    });
    let service = Arc::new(CacheService::new(
        catalog,
        l1,
        redis,
        store,
        CacheServiceOptions {
            default_keyspace: config.default_keyspace.clone(),
            encryption_key,
            coherence,
        },
    ));
    for ((tenant, name), configured) in declared_keyspaces.iter().zip(&config.keyspaces) {
        service
            .configure(tenant, name, configured.config.clone())
            .await?;
    }
    Ok(service)
}

/// The tenant and name of each `[[cache.keyspaces]]` entry, in order.
fn declared_keyspace_identities(
    config: &CacheConfig,
) -> Result<Vec<(TenantId, ResourceName)>, Error> {
    let mut identities = Vec::with_capacity(config.keyspaces.len());
    for configured in &config.keyspaces {
        identities.push((
            TenantId::parse(&configured.tenant)?,
            ResourceName::parse("keyspace", &configured.name)?,
        ));
    }
    Ok(identities)
}

fn decode_encryption_key(encoded: &str) -> Result<[u8; 32], Error> {
    let invalid = || {
        Error::invalid_argument(
            "invalid_config",
            "cache.encryption_key must be base64 of exactly 32 bytes (`head -c 32 /dev/urandom | base64`)",
        )
    };
    let bytes = STANDARD.decode(encoded.trim()).map_err(|_| invalid())?;
    bytes.try_into().map_err(|_| invalid())
}
