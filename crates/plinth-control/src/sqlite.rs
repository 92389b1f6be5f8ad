//! The control store on the embedded SQLite engine.
//!
//! Every write is one job on the engine's single writer thread, inside its
//! own savepoint. A job's read-then-write (an idempotency key's lookup and
//! claim, a key's tenant check and insert) therefore never interleaves with
//! another job, and a job that returns an error leaves nothing behind.

use std::sync::Arc;

use async_trait::async_trait;
use plinth_core::{Error, TenantId};
use plinth_engines::{SqliteEngine, sqlite_failure};
use rusqlite::{Connection, OptionalExtension, Params, Row, ToSql, params};
use time::OffsetDateTime;

use crate::migrations::{
    ApiKeyRow, AuditRow, IDEMPOTENCY_COMPLETED, IDEMPOTENCY_IN_PROGRESS, IdempotencyRow, TenantRow,
    encode_stored_response, key_exists, key_not_found, now_at_storage_precision, sql_limit,
    tenant_exists, tenant_not_found, to_unix_micros, truncate_to_micros,
};
use crate::store::{
    ApiKeyRecord, AuditEntry, AuditOutcome, AuditQuery, ControlStore, IdempotencyBegin, NewApiKey,
    NewAuditEntry, StoredResponse, TenantRecord,
};

pub struct SqliteControlStore {
    engine: Arc<SqliteEngine>,
}

impl SqliteControlStore {
    pub fn new(engine: Arc<SqliteEngine>) -> Self {
        SqliteControlStore { engine }
    }
}

const SELECT_TENANT: &str = "SELECT id, display_name, created_at FROM plinth_tenants WHERE id = ?1";

// Every tenant id is non-empty, so the empty string as cursor lists from
// the first tenant on.
const LIST_TENANTS: &str = "SELECT id, display_name, created_at FROM plinth_tenants
     WHERE id > ?1 ORDER BY id LIMIT ?2";

const SELECT_API_KEY: &str =
    "SELECT id, tenant, name, scopes, secret_sha256, created_at, expires_at, revoked_at
     FROM plinth_api_keys WHERE id = ?1";

const LIST_API_KEYS: &str =
    "SELECT id, tenant, name, scopes, secret_sha256, created_at, expires_at, revoked_at
     FROM plinth_api_keys WHERE tenant = ?1 AND id > ?2 ORDER BY id LIMIT ?3";

// COALESCE keeps the first revocation time when a key is revoked again.
const REVOKE_API_KEY: &str = "UPDATE plinth_api_keys SET revoked_at = COALESCE(revoked_at, ?1)
     WHERE id = ?2 AND tenant = ?3
     RETURNING id, tenant, name, scopes, secret_sha256, created_at, expires_at, revoked_at";

const AUDIT_COLUMNS: &str = "sequence, at, actor, actor_tenant, action, target, outcome, source_address, request_id, detail";

const SELECT_IDEMPOTENCY: &str = "SELECT fingerprint, state, response, expires_at
     FROM plinth_idempotency WHERE tenant = ?1 AND idempotency_key = ?2";

// Replaces an expired record, if any: an expired record counts as absent.
const CLAIM_IDEMPOTENCY: &str = "INSERT INTO plinth_idempotency
     (tenant, idempotency_key, fingerprint, state, response, created_at, expires_at)
     VALUES (?1, ?2, ?3, ?4, NULL, ?5, ?6)
     ON CONFLICT (tenant, idempotency_key) DO UPDATE SET
         fingerprint = excluded.fingerprint,
         state = excluded.state,
         response = NULL,
         created_at = excluded.created_at,
         expires_at = excluded.expires_at";

#[async_trait]
impl ControlStore for SqliteControlStore {
    async fn create_tenant(
        &self,
        id: &TenantId,
        display_name: &str,
    ) -> Result<TenantRecord, Error> {
        let record = TenantRecord {
            id: id.clone(),
            display_name: display_name.to_string(),
            created_at: now_at_storage_precision(),
        };
        let new_tenant = record.clone();
        self.engine
            .write("control.create_tenant", move |connection| {
                let inserted = execute(
                    connection,
                    "INSERT INTO plinth_tenants (id, display_name, created_at) VALUES (?1, ?2, ?3)
                     ON CONFLICT (id) DO NOTHING",
                    params![
                        new_tenant.id.as_str(),
                        new_tenant.display_name,
                        to_unix_micros(new_tenant.created_at)
                    ],
                )?;
                if inserted == 0 {
                    return Err(tenant_exists(&new_tenant.id));
                }
                Ok(())
            })
            .await?;
        Ok(record)
    }

    async fn get_tenant(&self, id: &TenantId) -> Result<Option<TenantRecord>, Error> {
        let id = id.as_str().to_string();
        self.engine
            .read("control.get_tenant", move |connection| {
                let row = query_optional(connection, SELECT_TENANT, params![id], tenant_row)?;
                row.map(TenantRow::into_record).transpose()
            })
            .await
    }

    async fn list_tenants(
        &self,
        after_id: Option<&TenantId>,
        limit: usize,
    ) -> Result<Vec<TenantRecord>, Error> {
        let after_id = after_id
            .map(TenantId::as_str)
            .unwrap_or_default()
            .to_string();
        self.engine
            .read("control.list_tenants", move |connection| {
                let rows = query_all(
                    connection,
                    LIST_TENANTS,
                    params![after_id, sql_limit(limit)],
                    tenant_row,
                )?;
                let mut records = Vec::with_capacity(rows.len());
                for row in rows {
                    records.push(row.into_record()?);
                }
                Ok(records)
            })
            .await
    }

    async fn delete_tenant(&self, id: &TenantId) -> Result<(), Error> {
        let id = id.clone();
        self.engine
            .write("control.delete_tenant", move |connection| {
                // Keys go with the tenant (ON DELETE CASCADE). Idempotency
                // records have no foreign key, and a tenant created later
                // with the same id must not replay this one's responses.
                execute(
                    connection,
                    "DELETE FROM plinth_idempotency WHERE tenant = ?1",
                    params![id.as_str()],
                )?;
                let deleted = execute(
                    connection,
                    "DELETE FROM plinth_tenants WHERE id = ?1",
                    params![id.as_str()],
                )?;
                if deleted == 0 {
                    return Err(tenant_not_found(&id));
                }
                Ok(())
            })
            .await
    }

    async fn create_api_key(&self, key: NewApiKey) -> Result<ApiKeyRecord, Error> {
        let record = ApiKeyRecord {
            id: key.id,
            tenant: key.tenant,
            name: key.name,
            scopes: key.scopes,
            secret_sha256: key.secret_sha256,
            created_at: now_at_storage_precision(),
            expires_at: key.expires_at.map(truncate_to_micros),
            revoked_at: None,
        };
        let new_key = record.clone();
        self.engine
            .write("control.create_api_key", move |connection| {
                insert_api_key(connection, &new_key)
            })
            .await?;
        Ok(record)
    }

    async fn get_api_key(&self, id: &str) -> Result<Option<ApiKeyRecord>, Error> {
        let id = id.to_string();
        self.engine
            .read("control.get_api_key", move |connection| {
                let row = query_optional(connection, SELECT_API_KEY, params![id], api_key_row)?;
                row.map(ApiKeyRow::into_record).transpose()
            })
            .await
    }

    async fn list_api_keys(
        &self,
        tenant: &TenantId,
        after_id: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ApiKeyRecord>, Error> {
        let tenant = tenant.as_str().to_string();
        // Key ids are never empty, so "" lists from the first key on.
        let after_id = after_id.unwrap_or_default().to_string();
        self.engine
            .read("control.list_api_keys", move |connection| {
                let rows = query_all(
                    connection,
                    LIST_API_KEYS,
                    params![tenant, after_id, sql_limit(limit)],
                    api_key_row,
                )?;
                let mut records = Vec::with_capacity(rows.len());
                for row in rows {
                    records.push(row.into_record()?);
                }
                Ok(records)
            })
            .await
    }

    async fn revoke_api_key(&self, tenant: &TenantId, id: &str) -> Result<ApiKeyRecord, Error> {
        let tenant = tenant.as_str().to_string();
        let id = id.to_string();
        let revoked_at = to_unix_micros(now_at_storage_precision());
        self.engine
            .write("control.revoke_api_key", move |connection| {
                let row = query_optional(
                    connection,
                    REVOKE_API_KEY,
                    params![revoked_at, id, tenant],
                    api_key_row,
                )?;
                let Some(row) = row else {
                    return Err(key_not_found(&id));
                };
                row.into_record()
            })
            .await
    }

    async fn append_audit(&self, entry: NewAuditEntry) -> Result<(), Error> {
        let at = to_unix_micros(now_at_storage_precision());
        self.engine
            .write("control.append_audit", move |connection| {
                execute(
                    connection,
                    "INSERT INTO plinth_audit_log
                         (at, actor, actor_tenant, action, target, outcome, source_address, request_id, detail)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                    params![
                        at,
                        entry.actor,
                        entry.actor_tenant.as_ref().map(TenantId::as_str),
                        entry.action,
                        entry.target,
                        entry.outcome.as_str(),
                        entry.source_address,
                        entry.request_id,
                        entry.detail
                    ],
                )?;
                Ok(())
            })
            .await
    }

    async fn list_audit(&self, query: AuditQuery) -> Result<Vec<AuditEntry>, Error> {
        self.engine
            .read("control.list_audit", move |connection| {
                select_audit(connection, &query)
            })
            .await
    }

    async fn begin_idempotent(
        &self,
        tenant: &TenantId,
        key: &str,
        fingerprint: &str,
        expires_at: OffsetDateTime,
    ) -> Result<IdempotencyBegin, Error> {
        let claim = IdempotencyClaim {
            tenant: tenant.as_str().to_string(),
            key: key.to_string(),
            fingerprint: fingerprint.to_string(),
            now: to_unix_micros(OffsetDateTime::now_utc()),
            expires_at: to_unix_micros(expires_at),
        };
        self.engine
            .write("control.begin_idempotent", move |connection| {
                claim_idempotency_key(connection, &claim)
            })
            .await
    }

    async fn complete_idempotent(
        &self,
        tenant: &TenantId,
        key: &str,
        response: StoredResponse,
    ) -> Result<(), Error> {
        let encoded_response = encode_stored_response(&response)?;
        let tenant = tenant.as_str().to_string();
        let key = key.to_string();
        let completed = self
            .engine
            .write("control.complete_idempotent", move |connection| {
                execute(
                    connection,
                    "UPDATE plinth_idempotency SET state = ?1, response = ?2
                     WHERE tenant = ?3 AND idempotency_key = ?4 AND state = ?5",
                    params![
                        IDEMPOTENCY_COMPLETED,
                        encoded_response,
                        tenant,
                        key,
                        IDEMPOTENCY_IN_PROGRESS
                    ],
                )
            })
            .await?;
        if completed == 0 {
            // The response is already on its way to the client; a missing
            // record only means a retry runs the request again, as after
            // expiry.
            tracing::warn!("an idempotency record was purged or abandoned before it completed");
        }
        Ok(())
    }

    async fn abandon_idempotent(&self, tenant: &TenantId, key: &str) -> Result<(), Error> {
        let tenant = tenant.as_str().to_string();
        let key = key.to_string();
        self.engine
            .write("control.abandon_idempotent", move |connection| {
                // A completed record stays: its response must still replay.
                execute(
                    connection,
                    "DELETE FROM plinth_idempotency
                     WHERE tenant = ?1 AND idempotency_key = ?2 AND state = ?3",
                    params![tenant, key, IDEMPOTENCY_IN_PROGRESS],
                )?;
                Ok(())
            })
            .await
    }

    async fn purge_expired_idempotency(&self, now: OffsetDateTime) -> Result<u64, Error> {
        let now = to_unix_micros(now);
        let deleted = self
            .engine
            .write("control.purge_expired_idempotency", move |connection| {
                execute(
                    connection,
                    "DELETE FROM plinth_idempotency WHERE expires_at <= ?1",
                    params![now],
                )
            })
            .await?;
        Ok(u64::try_from(deleted).unwrap_or(u64::MAX))
    }
}

/// Inserts `key` after checking its tenant exists. Runs on the writer
/// thread, so the tenant cannot disappear between the check and the insert.
fn insert_api_key(connection: &Connection, key: &ApiKeyRecord) -> Result<(), Error> {
    let tenant_exists = query_optional(
        connection,
        "SELECT 1 FROM plinth_tenants WHERE id = ?1",
        params![key.tenant.as_str()],
        |_| Ok(()),
    )?;
    if tenant_exists.is_none() {
        return Err(tenant_not_found(&key.tenant));
    }
    let inserted = execute(
        connection,
        "INSERT INTO plinth_api_keys
             (id, tenant, name, scopes, secret_sha256, created_at, expires_at, revoked_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, NULL)
         ON CONFLICT (id) DO NOTHING",
        params![
            key.id,
            key.tenant.as_str(),
            key.name,
            key.scopes.to_space_separated(),
            &key.secret_sha256[..],
            to_unix_micros(key.created_at),
            key.expires_at.map(to_unix_micros)
        ],
    )?;
    if inserted == 0 {
        return Err(key_exists(&key.id));
    }
    Ok(())
}

/// What `begin_idempotent` needs on the writer thread.
struct IdempotencyClaim {
    tenant: String,
    key: String,
    fingerprint: String,
    now: i64,
    expires_at: i64,
}

fn claim_idempotency_key(
    connection: &Connection,
    claim: &IdempotencyClaim,
) -> Result<IdempotencyBegin, Error> {
    let existing = query_optional(
        connection,
        SELECT_IDEMPOTENCY,
        params![claim.tenant, claim.key],
        idempotency_row,
    )?;
    if let Some(existing) = existing
        && existing.is_live_at(claim.now)
    {
        return existing.answer(&claim.fingerprint);
    }
    execute(
        connection,
        CLAIM_IDEMPOTENCY,
        params![
            claim.tenant,
            claim.key,
            claim.fingerprint,
            IDEMPOTENCY_IN_PROGRESS,
            claim.now,
            claim.expires_at
        ],
    )?;
    Ok(IdempotencyBegin::Started)
}

/// Newest first. Only the filters that are set become conditions, so the
/// action index serves action queries.
fn select_audit(connection: &Connection, query: &AuditQuery) -> Result<Vec<AuditEntry>, Error> {
    let outcome = query.outcome.map(AuditOutcome::as_str);
    let limit = sql_limit(query.limit);
    let mut conditions: Vec<String> = Vec::new();
    let mut parameters: Vec<&dyn ToSql> = Vec::new();
    if let Some(before_sequence) = &query.before_sequence {
        parameters.push(before_sequence);
        conditions.push(format!("sequence < ?{}", parameters.len()));
    }
    if let Some(action) = &query.action {
        parameters.push(action);
        conditions.push(format!("action = ?{}", parameters.len()));
    }
    if let Some(outcome) = &outcome {
        parameters.push(outcome);
        conditions.push(format!("outcome = ?{}", parameters.len()));
    }
    parameters.push(&limit);
    let where_clause = if conditions.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", conditions.join(" AND "))
    };
    let sql = format!(
        "SELECT {AUDIT_COLUMNS} FROM plinth_audit_log{where_clause} ORDER BY sequence DESC LIMIT ?{}",
        parameters.len()
    );
    let rows = query_all(connection, &sql, parameters.as_slice(), audit_row)?;
    let mut entries = Vec::with_capacity(rows.len());
    for row in rows {
        entries.push(row.into_entry()?);
    }
    Ok(entries)
}

fn execute(connection: &Connection, sql: &str, parameters: impl Params) -> Result<usize, Error> {
    let mut statement = connection.prepare_cached(sql).map_err(sqlite_failure)?;
    statement.execute(parameters).map_err(sqlite_failure)
}

fn query_optional<T>(
    connection: &Connection,
    sql: &str,
    parameters: impl Params,
    map_row: impl FnOnce(&Row<'_>) -> rusqlite::Result<T>,
) -> Result<Option<T>, Error> {
    let mut statement = connection.prepare_cached(sql).map_err(sqlite_failure)?;
    statement
        .query_row(parameters, map_row)
        .optional()
        .map_err(sqlite_failure)
}

fn query_all<T>(
    connection: &Connection,
    sql: &str,
    parameters: impl Params,
    map_row: impl FnMut(&Row<'_>) -> rusqlite::Result<T>,
) -> Result<Vec<T>, Error> {
    let mut statement = connection.prepare_cached(sql).map_err(sqlite_failure)?;
    let rows = statement
        .query_map(parameters, map_row)
        .map_err(sqlite_failure)?;
    let mut collected = Vec::new();
    for row in rows {
        collected.push(row.map_err(sqlite_failure)?);
    }
    Ok(collected)
}

fn tenant_row(row: &Row<'_>) -> rusqlite::Result<TenantRow> {
    Ok(TenantRow {
        id: row.get(0)?,
        display_name: row.get(1)?,
        created_at: row.get(2)?,
    })
}

fn api_key_row(row: &Row<'_>) -> rusqlite::Result<ApiKeyRow> {
    Ok(ApiKeyRow {
        id: row.get(0)?,
        tenant: row.get(1)?,
        name: row.get(2)?,
        scopes: row.get(3)?,
        secret_sha256: row.get(4)?,
        created_at: row.get(5)?,
        expires_at: row.get(6)?,
        revoked_at: row.get(7)?,
    })
}

fn audit_row(row: &Row<'_>) -> rusqlite::Result<AuditRow> {
    Ok(AuditRow {
        sequence: row.get(0)?,
        at: row.get(1)?,
        actor: row.get(2)?,
        actor_tenant: row.get(3)?,
        action: row.get(4)?,
        target: row.get(5)?,
        outcome: row.get(6)?,
        source_address: row.get(7)?,
        request_id: row.get(8)?,
        detail: row.get(9)?,
    })
}

fn idempotency_row(row: &Row<'_>) -> rusqlite::Result<IdempotencyRow> {
    Ok(IdempotencyRow {
        fingerprint: row.get(0)?,
        state: row.get(1)?,
        response: row.get(2)?,
        expires_at: row.get(3)?,
    })
}
