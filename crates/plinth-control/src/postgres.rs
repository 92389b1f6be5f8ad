//! The control store on PostgreSQL.
//!
//! Many nodes may share one database, so nothing here reads a row and then
//! writes based on what it saw in a separate statement without a guard:
//! every check-and-write is a single statement (an upsert, a data-modifying
//! `WITH`, an `UPDATE ... RETURNING`) that PostgreSQL runs atomically, and
//! every statement is prepared once per connection (`prepare_cached`).

use std::sync::Arc;

use async_trait::async_trait;
use plinth_core::{Error, TenantId};
use plinth_engines::PostgresEngine;
use time::OffsetDateTime;
use tokio_postgres::Row;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{FromSql, ToSql};

use crate::migrations::{
    ApiKeyRow, AuditRow, IDEMPOTENCY_COMPLETED, IDEMPOTENCY_IN_PROGRESS, IdempotencyRow, TenantRow,
    encode_stored_response, key_exists, key_not_found, now_at_storage_precision, sql_limit,
    tenant_exists, tenant_not_found, to_unix_micros, truncate_to_micros,
};
use crate::store::{
    ApiKeyRecord, AuditEntry, AuditOutcome, AuditQuery, ControlStore, IdempotencyBegin, NewApiKey,
    NewAuditEntry, StoredResponse, TenantRecord,
};

/// How often `begin_idempotent` retries when the record it collided with
/// vanished or expired before it could be read. Each retry means another
/// request touched the key in between, so running out of attempts is
/// reported as the key being in progress.
const IDEMPOTENCY_CLAIM_ATTEMPTS: usize = 3;

/// What inserting an API key did.
enum ApiKeyInsertion {
    Inserted,
    TenantMissing,
    IdTaken,
}

pub struct PostgresControlStore {
    engine: Arc<PostgresEngine>,
}

impl PostgresControlStore {
    pub fn new(engine: Arc<PostgresEngine>) -> Self {
        PostgresControlStore { engine }
    }

    /// Inserts the key unless its tenant is missing or its id is taken.
    async fn insert_api_key(&self, record: &ApiKeyRecord) -> Result<ApiKeyInsertion, Error> {
        let scopes = record.scopes.to_space_separated();
        let secret_sha256: &[u8] = &record.secret_sha256;
        let created_at = to_unix_micros(record.created_at);
        let expires_at = record.expires_at.map(to_unix_micros);
        let parameters: [&(dyn ToSql + Sync); 7] = [
            &record.id,
            &record.tenant.as_str(),
            &record.name,
            &scopes,
            &secret_sha256,
            &created_at,
            &expires_at,
        ];
        let client = self.engine.acquire().await?;
        let flags = self
            .engine
            .run("control.create_api_key", async {
                let statement = client.prepare_cached(INSERT_API_KEY).await?;
                match client.query_one(&statement, &parameters).await {
                    Ok(row) => Ok(Some(row)),
                    // The tenant was deleted after the statement's snapshot
                    // saw it: the same answer as if it never existed.
                    Err(error) if error.code() == Some(&SqlState::FOREIGN_KEY_VIOLATION) => {
                        Ok(None)
                    }
                    Err(error) => Err(error),
                }
            })
            .await?;
        let Some(flags) = flags else {
            return Ok(ApiKeyInsertion::TenantMissing);
        };
        let tenant_found: bool = column(&flags, 0)?;
        let inserted: bool = column(&flags, 1)?;
        if !tenant_found {
            return Ok(ApiKeyInsertion::TenantMissing);
        }
        if !inserted {
            return Ok(ApiKeyInsertion::IdTaken);
        }
        Ok(ApiKeyInsertion::Inserted)
    }
}

const INSERT_TENANT: &str =
    "INSERT INTO plinth_tenants (id, display_name, created_at) VALUES ($1, $2, $3)
     ON CONFLICT (id) DO NOTHING";

const SELECT_TENANT: &str = "SELECT id, display_name, created_at FROM plinth_tenants WHERE id = $1";

// Every tenant id is non-empty, so the empty string as cursor lists from
// the first tenant on.
const LIST_TENANTS: &str = "SELECT id, display_name, created_at FROM plinth_tenants
     WHERE id > $1 ORDER BY id LIMIT $2";

// Keys go with the tenant (ON DELETE CASCADE). Idempotency records have no
// foreign key, and a tenant created later with the same id must not replay
// this one's responses, so they are deleted with it.
const DELETE_TENANT: &str = "WITH deleted AS (
         DELETE FROM plinth_tenants WHERE id = $1 RETURNING id
     ), forgotten AS (
         DELETE FROM plinth_idempotency WHERE tenant IN (SELECT id FROM deleted)
     )
     SELECT count(*) FROM deleted";

// Inserts only when the tenant exists, and says which of the two checks
// failed. The casts type the parameters, which a SELECT list cannot infer.
const INSERT_API_KEY: &str = "WITH tenant AS (
         SELECT id FROM plinth_tenants WHERE id = $2
     ), inserted AS (
         INSERT INTO plinth_api_keys
             (id, tenant, name, scopes, secret_sha256, created_at, expires_at, revoked_at)
         SELECT $1::TEXT, tenant.id, $3::TEXT, $4::TEXT, $5::BYTEA, $6::BIGINT, $7::BIGINT, NULL
         FROM tenant
         ON CONFLICT (id) DO NOTHING
         RETURNING id
     )
     SELECT EXISTS (SELECT 1 FROM tenant), EXISTS (SELECT 1 FROM inserted)";

const SELECT_API_KEY: &str =
    "SELECT id, tenant, name, scopes, secret_sha256, created_at, expires_at, revoked_at
     FROM plinth_api_keys WHERE id = $1";

const LIST_API_KEYS: &str =
    "SELECT id, tenant, name, scopes, secret_sha256, created_at, expires_at, revoked_at
     FROM plinth_api_keys WHERE tenant = $1 AND id > $2 ORDER BY id LIMIT $3";

// COALESCE keeps the first revocation time when a key is revoked again.
const REVOKE_API_KEY: &str = "UPDATE plinth_api_keys SET revoked_at = COALESCE(revoked_at, $1)
     WHERE id = $2 AND tenant = $3
     RETURNING id, tenant, name, scopes, secret_sha256, created_at, expires_at, revoked_at";

const INSERT_AUDIT: &str = "INSERT INTO plinth_audit_log
         (at, actor, actor_tenant, action, target, outcome, source_address, request_id, detail)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)";

const AUDIT_COLUMNS: &str = "sequence, at, actor, actor_tenant, action, target, outcome, source_address, request_id, detail";

// Inserts a new record, or replaces an expired one (an expired record
// counts as absent); returns a row only when this request got the key.
// The conflicting row is locked while the condition is checked, so of
// concurrent requests exactly one gets it.
const CLAIM_IDEMPOTENCY: &str = "INSERT INTO plinth_idempotency
         (tenant, idempotency_key, fingerprint, state, response, created_at, expires_at)
     VALUES ($1, $2, $3, $4, NULL, $5, $6)
     ON CONFLICT (tenant, idempotency_key) DO UPDATE SET
         fingerprint = EXCLUDED.fingerprint,
         state = EXCLUDED.state,
         response = NULL,
         created_at = EXCLUDED.created_at,
         expires_at = EXCLUDED.expires_at
     WHERE plinth_idempotency.expires_at <= EXCLUDED.created_at
     RETURNING 1";

const SELECT_IDEMPOTENCY: &str = "SELECT fingerprint, state, response, expires_at
     FROM plinth_idempotency WHERE tenant = $1 AND idempotency_key = $2";

const COMPLETE_IDEMPOTENCY: &str = "UPDATE plinth_idempotency SET state = $1, response = $2
     WHERE tenant = $3 AND idempotency_key = $4 AND state = $5";

// A completed record stays: its response must still replay.
const ABANDON_IDEMPOTENCY: &str = "DELETE FROM plinth_idempotency
     WHERE tenant = $1 AND idempotency_key = $2 AND state = $3";

const PURGE_IDEMPOTENCY: &str = "DELETE FROM plinth_idempotency WHERE expires_at <= $1";

#[async_trait]
impl ControlStore for PostgresControlStore {
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
        let inserted = self
            .engine
            .execute_cached(
                "control.create_tenant",
                INSERT_TENANT,
                &[
                    &id.as_str(),
                    &display_name,
                    &to_unix_micros(record.created_at),
                ],
            )
            .await?;
        if inserted == 0 {
            return Err(tenant_exists(id));
        }
        Ok(record)
    }

    async fn get_tenant(&self, id: &TenantId) -> Result<Option<TenantRecord>, Error> {
        let row = self
            .engine
            .query_opt_cached("control.get_tenant", SELECT_TENANT, &[&id.as_str()])
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        tenant_row(&row)?.into_record().map(Some)
    }

    async fn list_tenants(
        &self,
        after_id: Option<&TenantId>,
        limit: usize,
    ) -> Result<Vec<TenantRecord>, Error> {
        let after_id = after_id.map(TenantId::as_str).unwrap_or_default();
        let rows = self
            .engine
            .query_cached(
                "control.list_tenants",
                LIST_TENANTS,
                &[&after_id, &sql_limit(limit)],
            )
            .await?;
        let mut records = Vec::with_capacity(rows.len());
        for row in &rows {
            records.push(tenant_row(row)?.into_record()?);
        }
        Ok(records)
    }

    async fn delete_tenant(&self, id: &TenantId) -> Result<(), Error> {
        let row = self
            .engine
            .query_opt_cached("control.delete_tenant", DELETE_TENANT, &[&id.as_str()])
            .await?;
        let deleted: i64 = match &row {
            Some(row) => column(row, 0)?,
            None => 0,
        };
        if deleted == 0 {
            return Err(tenant_not_found(id));
        }
        Ok(())
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
        match self.insert_api_key(&record).await? {
            ApiKeyInsertion::Inserted => Ok(record),
            ApiKeyInsertion::TenantMissing => Err(tenant_not_found(&record.tenant)),
            ApiKeyInsertion::IdTaken => Err(key_exists(&record.id)),
        }
    }

    async fn get_api_key(&self, id: &str) -> Result<Option<ApiKeyRecord>, Error> {
        let row = self
            .engine
            .query_opt_cached("control.get_api_key", SELECT_API_KEY, &[&id])
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        api_key_row(&row)?.into_record().map(Some)
    }

    async fn list_api_keys(
        &self,
        tenant: &TenantId,
        after_id: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ApiKeyRecord>, Error> {
        // Key ids are never empty, so "" lists from the first key on.
        let after_id = after_id.unwrap_or_default();
        let rows = self
            .engine
            .query_cached(
                "control.list_api_keys",
                LIST_API_KEYS,
                &[&tenant.as_str(), &after_id, &sql_limit(limit)],
            )
            .await?;
        let mut records = Vec::with_capacity(rows.len());
        for row in &rows {
            records.push(api_key_row(row)?.into_record()?);
        }
        Ok(records)
    }

    async fn revoke_api_key(&self, tenant: &TenantId, id: &str) -> Result<ApiKeyRecord, Error> {
        let revoked_at = to_unix_micros(now_at_storage_precision());
        let row = self
            .engine
            .query_opt_cached(
                "control.revoke_api_key",
                REVOKE_API_KEY,
                &[&revoked_at, &id, &tenant.as_str()],
            )
            .await?;
        let Some(row) = row else {
            return Err(key_not_found(id));
        };
        api_key_row(&row)?.into_record()
    }

    async fn append_audit(&self, entry: NewAuditEntry) -> Result<(), Error> {
        let at = to_unix_micros(now_at_storage_precision());
        let actor_tenant = entry.actor_tenant.as_ref().map(TenantId::as_str);
        self.engine
            .execute_cached(
                "control.append_audit",
                INSERT_AUDIT,
                &[
                    &at,
                    &entry.actor,
                    &actor_tenant,
                    &entry.action,
                    &entry.target,
                    &entry.outcome.as_str(),
                    &entry.source_address,
                    &entry.request_id,
                    &entry.detail,
                ],
            )
            .await?;
        Ok(())
    }

    async fn list_audit(&self, query: AuditQuery) -> Result<Vec<AuditEntry>, Error> {
        let outcome = query.outcome.map(AuditOutcome::as_str);
        let limit = sql_limit(query.limit);
        // Only the filters that are set become conditions, so the action
        // index serves action queries.
        let mut conditions: Vec<String> = Vec::new();
        let mut parameters: Vec<&(dyn ToSql + Sync)> = Vec::new();
        if let Some(before_sequence) = &query.before_sequence {
            parameters.push(before_sequence);
            conditions.push(format!("sequence < ${}", parameters.len()));
        }
        if let Some(action) = &query.action {
            parameters.push(action);
            conditions.push(format!("action = ${}", parameters.len()));
        }
        if let Some(outcome) = &outcome {
            parameters.push(outcome);
            conditions.push(format!("outcome = ${}", parameters.len()));
        }
        parameters.push(&limit);
        let where_clause = if conditions.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", conditions.join(" AND "))
        };
        let sql = format!(
            "SELECT {AUDIT_COLUMNS} FROM plinth_audit_log{where_clause} ORDER BY sequence DESC LIMIT ${}",
            parameters.len()
        );
        let rows = self
            .engine
            .query_cached("control.list_audit", &sql, &parameters)
            .await?;
        let mut entries = Vec::with_capacity(rows.len());
        for row in &rows {
            entries.push(audit_row(row)?.into_entry()?);
        }
        Ok(entries)
    }

    async fn begin_idempotent(
        &self,
        tenant: &TenantId,
        key: &str,
        fingerprint: &str,
        expires_at: OffsetDateTime,
    ) -> Result<IdempotencyBegin, Error> {
        let now = to_unix_micros(OffsetDateTime::now_utc());
        let expires_at = to_unix_micros(expires_at);
        for _ in 0..IDEMPOTENCY_CLAIM_ATTEMPTS {
            let claimed = self
                .engine
                .query_opt_cached(
                    "control.begin_idempotent",
                    CLAIM_IDEMPOTENCY,
                    &[
                        &tenant.as_str(),
                        &key,
                        &fingerprint,
                        &IDEMPOTENCY_IN_PROGRESS,
                        &now,
                        &expires_at,
                    ],
                )
                .await?;
            if claimed.is_some() {
                return Ok(IdempotencyBegin::Started);
            }
            let existing = self
                .engine
                .query_opt_cached(
                    "control.read_idempotent",
                    SELECT_IDEMPOTENCY,
                    &[&tenant.as_str(), &key],
                )
                .await?;
            // Abandoned, purged or expired since the claim failed: claim again.
            let Some(existing) = existing else {
                continue;
            };
            let existing = idempotency_row(&existing)?;
            if existing.is_live_at(now) {
                return existing.answer(fingerprint);
            }
        }
        Ok(IdempotencyBegin::InProgress)
    }

    async fn complete_idempotent(
        &self,
        tenant: &TenantId,
        key: &str,
        response: StoredResponse,
    ) -> Result<(), Error> {
        let encoded_response = encode_stored_response(&response)?;
        let completed = self
            .engine
            .execute_cached(
                "control.complete_idempotent",
                COMPLETE_IDEMPOTENCY,
                &[
                    &IDEMPOTENCY_COMPLETED,
                    &encoded_response,
                    &tenant.as_str(),
                    &key,
                    &IDEMPOTENCY_IN_PROGRESS,
                ],
            )
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
        self.engine
            .execute_cached(
                "control.abandon_idempotent",
                ABANDON_IDEMPOTENCY,
                &[&tenant.as_str(), &key, &IDEMPOTENCY_IN_PROGRESS],
            )
            .await?;
        Ok(())
    }

    async fn purge_expired_idempotency(&self, now: OffsetDateTime) -> Result<u64, Error> {
        self.engine
            .execute_cached(
                "control.purge_expired_idempotency",
                PURGE_IDEMPOTENCY,
                &[&to_unix_micros(now)],
            )
            .await
    }
}

/// One column of a row. A type mismatch means the schema and this code
/// disagree: a bug, not an outage.
fn column<'row, T: FromSql<'row>>(row: &'row Row, index: usize) -> Result<T, Error> {
    row.try_get(index).map_err(|error| {
        Error::internal(format!(
            "postgres: unexpected value in column {index}: {error}"
        ))
    })
}

fn tenant_row(row: &Row) -> Result<TenantRow, Error> {
    Ok(TenantRow {
        id: column(row, 0)?,
        display_name: column(row, 1)?,
        created_at: column(row, 2)?,
    })
}

fn api_key_row(row: &Row) -> Result<ApiKeyRow, Error> {
    Ok(ApiKeyRow {
        id: column(row, 0)?,
        tenant: column(row, 1)?,
        name: column(row, 2)?,
        scopes: column(row, 3)?,
        secret_sha256: column(row, 4)?,
        created_at: column(row, 5)?,
        expires_at: column(row, 6)?,
        revoked_at: column(row, 7)?,
    })
}

fn audit_row(row: &Row) -> Result<AuditRow, Error> {
    Ok(AuditRow {
        sequence: column(row, 0)?,
        at: column(row, 1)?,
        actor: column(row, 2)?,
        actor_tenant: column(row, 3)?,
        action: column(row, 4)?,
        target: column(row, 5)?,
        outcome: column(row, 6)?,
        source_address: column(row, 7)?,
        request_id: column(row, 8)?,
        detail: column(row, 9)?,
    })
}

fn idempotency_row(row: &Row) -> Result<IdempotencyRow, Error> {
    Ok(IdempotencyRow {
        fingerprint: column(row, 0)?,
        state: column(row, 1)?,
        response: column(row, 2)?,
        expires_at: column(row, 3)?,
    })
}
