//! The keyspace catalog: each tenant's keyspaces with their configuration,
//! their version (bumped by a flush) and their L2 epoch (bumped when Redis
//! missed a write, so stale Redis copies become unreachable), kept in the
//! node's durable store so every node shares it.
//!
//! Records are cached in process for [`CATALOG_CACHE_TTL`]; a node that did
//! not make a change sees it within that time (at once when it gets the
//! change over Redis pub/sub).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::RwLock;
use plinth_core::{Error, ResourceName, TenantId};
use plinth_engines::{Migration, MigrationSet, Store, postgres_failure, sqlite_failure};

use crate::clock::now_ms;
use crate::keyspace::KeyspaceConfig;

pub const CATALOG_CACHE_TTL: Duration = Duration::from_secs(1);

pub static CATALOG_MIGRATIONS: MigrationSet = MigrationSet {
    component: "cache_catalog",
    migrations: &[Migration {
        version: 1,
        name: "create the keyspace catalog",
        sqlite: "CREATE TABLE plinth_cache_keyspaces (
            tenant TEXT NOT NULL,
            keyspace TEXT NOT NULL,
            config TEXT NOT NULL,
            version INTEGER NOT NULL,
            l2_epoch INTEGER NOT NULL,
            version_changed_at_ms INTEGER NOT NULL,
            PRIMARY KEY (tenant, keyspace)
        )",
        postgres: "CREATE TABLE plinth_cache_keyspaces (
            tenant TEXT COLLATE \"C\" NOT NULL,
            keyspace TEXT COLLATE \"C\" NOT NULL,
            config TEXT NOT NULL,
            version BIGINT NOT NULL,
            l2_epoch BIGINT NOT NULL,
            version_changed_at_ms BIGINT NOT NULL,
            PRIMARY KEY (tenant, keyspace)
        )",
    }],
};

#[derive(Clone, Debug, PartialEq)]
pub struct KeyspaceRecord {
    pub tenant: TenantId,
    pub name: ResourceName,
    pub config: KeyspaceConfig,
    pub version: u64,
    pub l2_epoch: u64,
    pub version_changed_at_ms: u64,
}

type CatalogIdentity = (TenantId, ResourceName);

pub struct KeyspaceCatalog {
    store: Store,
    cached: RwLock<HashMap<CatalogIdentity, (Option<KeyspaceRecord>, Instant)>>,
}

const SELECT_COLUMNS: &str = "tenant, keyspace, config, version, l2_epoch, version_changed_at_ms";

impl KeyspaceCatalog {
    pub fn new(store: Store) -> Arc<Self> {
        Arc::new(KeyspaceCatalog {
            store,
            cached: RwLock::new(HashMap::new()),
        })
    }

    /// The keyspace, from the in-process copy when it is fresh.
    pub async fn get(
        &self,
        tenant: &TenantId,
        name: &ResourceName,
    ) -> Result<Option<KeyspaceRecord>, Error> {
        let identity = (tenant.clone(), name.clone());
        if let Some((record, loaded_at)) = self.cached.read().get(&identity)
            && loaded_at.elapsed() < CATALOG_CACHE_TTL
        {
            return Ok(record.clone());
        }
        let record = self.load(tenant, name).await?;
        self.remember(identity, record.clone());
        Ok(record)
    }

    /// Drops the in-process copy (another node changed the keyspace).
    pub fn forget(&self, tenant: &TenantId, name: &ResourceName) {
        self.cached.write().remove(&(tenant.clone(), name.clone()));
    }

    fn remember(&self, identity: CatalogIdentity, record: Option<KeyspaceRecord>) {
        let mut cached = self.cached.write();
        // Bounded: tenants can create many keyspaces, the copy is only a cache.
        if cached.len() > 100_000 {
            cached.clear();
        }
        cached.insert(identity, (record, Instant::now()));
    }

    /// Creates the keyspace with `config`, or replaces its configuration.
    pub async fn put_config(
        &self,
        tenant: &TenantId,
        name: &ResourceName,
        config: &KeyspaceConfig,
    ) -> Result<KeyspaceRecord, Error> {
        let config_json =
            serde_json::to_string(config).map_err(|error| Error::internal(error.to_string()))?;
        let now = now_ms() as i64;
        let record = match &self.store {
            Store::Sqlite(engine) => {
                let (tenant_text, name_text) = (tenant.to_string(), name.to_string());
                engine
                    .write("cache.catalog_put", move |connection| {
                        connection
                            .execute(
                                "INSERT INTO plinth_cache_keyspaces (tenant, keyspace, config, version, l2_epoch, version_changed_at_ms)
                                 VALUES (?1, ?2, ?3, 1, 0, ?4)
                                 ON CONFLICT (tenant, keyspace) DO UPDATE SET config = excluded.config",
                                rusqlite::params![tenant_text, name_text, config_json, now],
                            )
                            .map_err(sqlite_failure)?;
                        select_sqlite(connection, &tenant_text, &name_text)
                    })
                    .await?
            }
            Store::Postgres(engine) => {
                let client = engine.acquire().await?;
                let statement = engine
                    .run(
                        "cache.catalog_put",
                        client.prepare_cached(
                            "INSERT INTO plinth_cache_keyspaces (tenant, keyspace, config, version, l2_epoch, version_changed_at_ms)
                             VALUES ($1, $2, $3, 1, 0, $4)
                             ON CONFLICT (tenant, keyspace) DO UPDATE SET config = excluded.config
                             RETURNING tenant, keyspace, config, version, l2_epoch, version_changed_at_ms",
                        ),
                    )
                    .await?;
                let row = engine
                    .run(
                        "cache.catalog_put",
                        client.query_one(
                            &statement,
                            &[&tenant.as_str(), &name.as_str(), &config_json, &now],
                        ),
                    )
                    .await?;
                Some(record_from_postgres(&row)?)
            }
        };
        let Some(record) = record else {
            return Err(Error::internal(
                "the keyspace vanished right after it was written",
            ));
        };
        self.remember((tenant.clone(), name.clone()), Some(record.clone()));
        Ok(record)
    }

    /// The keyspace, created with `default_config` when it does not exist.
    pub async fn get_or_create(
        &self,
        tenant: &TenantId,
        name: &ResourceName,
        default_config: &KeyspaceConfig,
    ) -> Result<KeyspaceRecord, Error> {
        if let Some(record) = self.get(tenant, name).await? {
            return Ok(record);
        }
        let config_json = serde_json::to_string(default_config)
            .map_err(|error| Error::internal(error.to_string()))?;
        let now = now_ms() as i64;
        match &self.store {
            Store::Sqlite(engine) => {
                let (tenant_text, name_text) = (tenant.to_string(), name.to_string());
                engine
                    .write("cache.catalog_create", move |connection| {
                        connection
                            .execute(
                                "INSERT INTO plinth_cache_keyspaces (tenant, keyspace, config, version, l2_epoch, version_changed_at_ms)
                                 VALUES (?1, ?2, ?3, 1, 0, ?4) ON CONFLICT (tenant, keyspace) DO NOTHING",
                                rusqlite::params![tenant_text, name_text, config_json, now],
                            )
                            .map_err(sqlite_failure)?;
                        Ok(())
                    })
                    .await?;
            }
            Store::Postgres(engine) => {
                let client = engine.acquire().await?;
                let statement = engine
                    .run(
                        "cache.catalog_create",
                        client.prepare_cached(
                            "INSERT INTO plinth_cache_keyspaces (tenant, keyspace, config, version, l2_epoch, version_changed_at_ms)
                             VALUES ($1, $2, $3, 1, 0, $4) ON CONFLICT (tenant, keyspace) DO NOTHING",
                        ),
                    )
                    .await?;
                engine
                    .run(
                        "cache.catalog_create",
                        client.execute(
                            &statement,
                            &[&tenant.as_str(), &name.as_str(), &config_json, &now],
                        ),
                    )
                    .await?;
            }
        }
        self.forget(tenant, name);
        match self.get(tenant, name).await? {
            Some(record) => Ok(record),
            None => Err(Error::internal(
                "the keyspace vanished right after it was created",
            )),
        }
    }

    /// Bumps the keyspace version (a flush); returns the new record.
    pub async fn bump_version(
        &self,
        tenant: &TenantId,
        name: &ResourceName,
    ) -> Result<KeyspaceRecord, Error> {
        let now = now_ms() as i64;
        self.update_counters(tenant, name, CounterUpdate::Version, now)
            .await
    }

    /// Bumps the L2 epoch: every Redis copy of the keyspace becomes unreachable.
    pub async fn bump_l2_epoch(
        &self,
        tenant: &TenantId,
        name: &ResourceName,
    ) -> Result<KeyspaceRecord, Error> {
        self.update_counters(tenant, name, CounterUpdate::L2Epoch, 1)
            .await
    }

    async fn update_counters(
        &self,
        tenant: &TenantId,
        name: &ResourceName,
        update: CounterUpdate,
        value: i64,
    ) -> Result<KeyspaceRecord, Error> {
        let assignment_prefix = update.assignment_prefix();
        let record = match &self.store {
            Store::Sqlite(engine) => {
                let (tenant_text, name_text) = (tenant.to_string(), name.to_string());
                let sql = format!(
                    "UPDATE plinth_cache_keyspaces SET {assignment_prefix}?3 WHERE tenant = ?1 AND keyspace = ?2"
                );
                engine
                    .write("cache.catalog_bump", move |connection| {
                        connection
                            .execute(&sql, rusqlite::params![tenant_text, name_text, value])
                            .map_err(sqlite_failure)?;
                        select_sqlite(connection, &tenant_text, &name_text)
                    })
                    .await?
            }
            Store::Postgres(engine) => {
                let client = engine.acquire().await?;
                let sql = format!(
                    "UPDATE plinth_cache_keyspaces SET {assignment_prefix}$3 WHERE tenant = $1 AND keyspace = $2 RETURNING {SELECT_COLUMNS}"
                );
                let row = engine
                    .run(
                        "cache.catalog_bump",
                        client.query_opt(&sql, &[&tenant.as_str(), &name.as_str(), &value]),
                    )
                    .await?;
                match row {
                    Some(row) => Some(record_from_postgres(&row)?),
                    None => None,
                }
            }
        };
        let Some(record) = record else {
            return Err(keyspace_not_found(name));
        };
        self.remember((tenant.clone(), name.clone()), Some(record.clone()));
        Ok(record)
    }

    /// The tenant's keyspaces in name order, after `after`.
    pub async fn list(
        &self,
        tenant: &TenantId,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<KeyspaceRecord>, Error> {
        let after_text = after.unwrap_or("").to_string();
        let limit = limit as i64;
        match &self.store {
            Store::Sqlite(engine) => {
                let tenant_text = tenant.to_string();
                engine
                    .read("cache.catalog_list", move |connection| {
                        let mut statement = connection
                            .prepare_cached(&format!(
                                "SELECT {SELECT_COLUMNS} FROM plinth_cache_keyspaces WHERE tenant = ?1 AND keyspace > ?2 ORDER BY keyspace LIMIT ?3"
                            ))
                            .map_err(sqlite_failure)?;
                        let mut rows = statement
                            .query(rusqlite::params![tenant_text, after_text, limit])
                            .map_err(sqlite_failure)?;
                        let mut records = Vec::new();
                        while let Some(row) = rows.next().map_err(sqlite_failure)? {
                            records.push(record_from_sqlite(row)?);
                        }
                        Ok(records)
                    })
                    .await
            }
            Store::Postgres(engine) => {
                let client = engine.acquire().await?;
                let sql = format!(
                    "SELECT {SELECT_COLUMNS} FROM plinth_cache_keyspaces WHERE tenant = $1 AND keyspace > $2 ORDER BY keyspace LIMIT $3"
                );
                let rows = engine
                    .run(
                        "cache.catalog_list",
                        client.query(&sql, &[&tenant.as_str(), &after_text, &limit]),
                    )
                    .await?;
                let mut records = Vec::with_capacity(rows.len());
                for row in &rows {
                    records.push(record_from_postgres(row)?);
                }
                Ok(records)
            }
        }
    }

    /// Removes the keyspace from the catalog; `false` when it did not exist.
    pub async fn delete(&self, tenant: &TenantId, name: &ResourceName) -> Result<bool, Error> {
        let deleted = match &self.store {
            Store::Sqlite(engine) => {
                let (tenant_text, name_text) = (tenant.to_string(), name.to_string());
                engine
                    .write("cache.catalog_delete", move |connection| {
                        connection
                            .execute(
                                "DELETE FROM plinth_cache_keyspaces WHERE tenant = ?1 AND keyspace = ?2",
                                rusqlite::params![tenant_text, name_text],
                            )
                            .map_err(sqlite_failure)
                    })
                    .await?
                    > 0
            }
            Store::Postgres(engine) => {
                let client = engine.acquire().await?;
                engine
                    .run(
                        "cache.catalog_delete",
                        client.execute(
                            "DELETE FROM plinth_cache_keyspaces WHERE tenant = $1 AND keyspace = $2",
                            &[&tenant.as_str(), &name.as_str()],
                        ),
                    )
                    .await?
                    > 0
            }
        };
        self.forget(tenant, name);
        Ok(deleted)
    }

    async fn load(
        &self,
        tenant: &TenantId,
        name: &ResourceName,
    ) -> Result<Option<KeyspaceRecord>, Error> {
        match &self.store {
            Store::Sqlite(engine) => {
                let (tenant_text, name_text) = (tenant.to_string(), name.to_string());
                engine
                    .read("cache.catalog_get", move |connection| {
                        select_sqlite(connection, &tenant_text, &name_text)
                    })
                    .await
            }
            Store::Postgres(engine) => {
                let client = engine.acquire().await?;
                let statement = engine
                    .run(
                        "cache.catalog_get",
                        client.prepare_cached(&format!(
                            "SELECT {SELECT_COLUMNS} FROM plinth_cache_keyspaces WHERE tenant = $1 AND keyspace = $2"
                        )),
                    )
                    .await?;
                let row = engine
                    .run(
                        "cache.catalog_get",
                        client.query_opt(&statement, &[&tenant.as_str(), &name.as_str()]),
                    )
                    .await?;
                match row {
                    Some(row) => Ok(Some(record_from_postgres(&row)?)),
                    None => Ok(None),
                }
            }
        }
    }
}

/// The two counters a keyspace has; each SET clause ends with the
/// statement's value parameter.
#[derive(Clone, Copy)]
enum CounterUpdate {
    /// `version + 1`, stamping the change time with the parameter.
    Version,
    /// `l2_epoch + parameter`.
    L2Epoch,
}

impl CounterUpdate {
    fn assignment_prefix(self) -> &'static str {
        match self {
            CounterUpdate::Version => "version = version + 1, version_changed_at_ms = ",
            CounterUpdate::L2Epoch => "l2_epoch = l2_epoch + ",
        }
    }
}

pub fn keyspace_not_found(name: &ResourceName) -> Error {
    Error::not_found(
        "keyspace_not_found",
        format!("no keyspace `{name}`; write to it or PUT /v1/keyspaces/{name} to create it"),
    )
}

fn select_sqlite(
    connection: &rusqlite::Connection,
    tenant: &str,
    name: &str,
) -> Result<Option<KeyspaceRecord>, Error> {
    let mut statement = connection
        .prepare_cached(&format!(
            "SELECT {SELECT_COLUMNS} FROM plinth_cache_keyspaces WHERE tenant = ?1 AND keyspace = ?2"
        ))
        .map_err(sqlite_failure)?;
    let mut rows = statement
        .query(rusqlite::params![tenant, name])
        .map_err(sqlite_failure)?;
    match rows.next().map_err(sqlite_failure)? {
        Some(row) => Ok(Some(record_from_sqlite(row)?)),
        None => Ok(None),
    }
}

fn record_from_sqlite(row: &rusqlite::Row<'_>) -> Result<KeyspaceRecord, Error> {
    let tenant: String = row.get(0).map_err(sqlite_failure)?;
    let name: String = row.get(1).map_err(sqlite_failure)?;
    let config: String = row.get(2).map_err(sqlite_failure)?;
    let version: i64 = row.get(3).map_err(sqlite_failure)?;
    let l2_epoch: i64 = row.get(4).map_err(sqlite_failure)?;
    let version_changed_at_ms: i64 = row.get(5).map_err(sqlite_failure)?;
    build_record(
        &tenant,
        &name,
        &config,
        version,
        l2_epoch,
        version_changed_at_ms,
    )
}

fn record_from_postgres(row: &tokio_postgres::Row) -> Result<KeyspaceRecord, Error> {
    let tenant: String = row.try_get(0).map_err(postgres_failure)?;
    let name: String = row.try_get(1).map_err(postgres_failure)?;
    let config: String = row.try_get(2).map_err(postgres_failure)?;
    let version: i64 = row.try_get(3).map_err(postgres_failure)?;
    let l2_epoch: i64 = row.try_get(4).map_err(postgres_failure)?;
    let version_changed_at_ms: i64 = row.try_get(5).map_err(postgres_failure)?;
    build_record(
        &tenant,
        &name,
        &config,
        version,
        l2_epoch,
        version_changed_at_ms,
    )
}

fn build_record(
    tenant: &str,
    name: &str,
    config: &str,
    version: i64,
    l2_epoch: i64,
    version_changed_at_ms: i64,
) -> Result<KeyspaceRecord, Error> {
    let config: KeyspaceConfig = serde_json::from_str(config).map_err(|error| {
        Error::internal(format!("stored keyspace config is unreadable: {error}"))
    })?;
    Ok(KeyspaceRecord {
        tenant: TenantId::parse(tenant)?,
        name: ResourceName::parse("keyspace", name)?,
        config,
        version: version as u64,
        l2_epoch: l2_epoch as u64,
        version_changed_at_ms: version_changed_at_ms as u64,
    })
}
