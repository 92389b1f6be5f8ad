//! The control plane's schema, and how record fields are encoded in its
//! columns.
//!
//! Both backends store exactly the same values, so the encoding lives here,
//! next to the tables, instead of once per backend:
//!
//! - timestamps are `BIGINT` unix microseconds on both engines (identical
//!   precision and comparison semantics; no time-zone conversions);
//! - scopes are stored space-separated, as in OAuth's `scope` claim;
//! - a stored idempotent response is the JSON of [`StoredResponse`];
//! - on PostgreSQL, identifiers use the `C` collation so that cursor
//!   pagination orders ids byte-wise, exactly as SQLite does.

use plinth_core::{Error, TenantId};
use plinth_engines::{Migration, MigrationSet};
use time::OffsetDateTime;

use crate::scope::ScopeSet;
use crate::store::{
    ApiKeyRecord, AuditEntry, AuditOutcome, IdempotencyBegin, StoredResponse, TenantRecord,
};

pub static CONTROL_MIGRATIONS: MigrationSet = MigrationSet {
    component: "control",
    migrations: &[Migration {
        version: 1,
        name: "tenants, api keys, audit log, idempotency records",
        sqlite: SQLITE_V1,
        postgres: POSTGRES_V1,
    }],
};

// Keys belong to their tenant: deleting the tenant deletes them (a key of a
// deleted tenant must never authenticate again, and a tenant later created
// with the same id must not inherit them). Idempotency records have no
// foreign key because JWT tenants need not exist in `plinth_tenants`.
const SQLITE_V1: &str = "
CREATE TABLE plinth_tenants (
    id TEXT PRIMARY KEY,
    display_name TEXT NOT NULL,
    created_at INTEGER NOT NULL
);

CREATE TABLE plinth_api_keys (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL REFERENCES plinth_tenants (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    scopes TEXT NOT NULL,
    secret_sha256 BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER,
    revoked_at INTEGER
);
CREATE INDEX plinth_api_keys_by_tenant ON plinth_api_keys (tenant, id);

CREATE TABLE plinth_audit_log (
    sequence INTEGER PRIMARY KEY AUTOINCREMENT,
    at INTEGER NOT NULL,
    actor TEXT NOT NULL,
    actor_tenant TEXT,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    outcome TEXT NOT NULL CHECK (outcome IN ('success', 'denied', 'failure')),
    source_address TEXT,
    request_id TEXT,
    detail TEXT NOT NULL
);
CREATE INDEX plinth_audit_log_by_action ON plinth_audit_log (action, sequence);

CREATE TABLE plinth_idempotency (
    tenant TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('in_progress', 'completed')),
    response BLOB,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (tenant, idempotency_key)
);
CREATE INDEX plinth_idempotency_by_expiry ON plinth_idempotency (expires_at);

INSERT INTO plinth_tenants (id, display_name, created_at)
VALUES ('default', 'Default tenant', CAST(unixepoch('subsec') * 1000000 AS INTEGER))
ON CONFLICT (id) DO NOTHING;
";

const POSTGRES_V1: &str = r#"
CREATE TABLE plinth_tenants (
    id TEXT COLLATE "C" PRIMARY KEY,
    display_name TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE plinth_api_keys (
    id TEXT COLLATE "C" PRIMARY KEY,
    tenant TEXT COLLATE "C" NOT NULL REFERENCES plinth_tenants (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    scopes TEXT NOT NULL,
    secret_sha256 BYTEA NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT,
    revoked_at BIGINT
);
CREATE INDEX plinth_api_keys_by_tenant ON plinth_api_keys (tenant, id);

CREATE TABLE plinth_audit_log (
    sequence BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at BIGINT NOT NULL,
    actor TEXT NOT NULL,
    actor_tenant TEXT,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    outcome TEXT NOT NULL CHECK (outcome IN ('success', 'denied', 'failure')),
    source_address TEXT,
    request_id TEXT,
    detail TEXT NOT NULL
);
CREATE INDEX plinth_audit_log_by_action ON plinth_audit_log (action, sequence);

CREATE TABLE plinth_idempotency (
    tenant TEXT COLLATE "C" NOT NULL,
    idempotency_key TEXT COLLATE "C" NOT NULL,
    fingerprint TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('in_progress', 'completed')),
    response BYTEA,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (tenant, idempotency_key)
);
CREATE INDEX plinth_idempotency_by_expiry ON plinth_idempotency (expires_at);

INSERT INTO plinth_tenants (id, display_name, created_at)
VALUES ('default', 'Default tenant', (extract(epoch FROM now()) * 1000000)::BIGINT)
ON CONFLICT (id) DO NOTHING;
"#;

/// `plinth_idempotency.state` of a request still running.
pub(crate) const IDEMPOTENCY_IN_PROGRESS: &str = "in_progress";
/// `plinth_idempotency.state` of a request whose response is stored.
pub(crate) const IDEMPOTENCY_COMPLETED: &str = "completed";

/// The stored form of a timestamp. Sub-microsecond digits are dropped.
pub(crate) fn to_unix_micros(at: OffsetDateTime) -> i64 {
    let micros = at.unix_timestamp_nanos() / 1_000;
    // `time` limits years to ±9999, far inside i64 microseconds; saturate
    // rather than fail should that range ever be widened.
    i64::try_from(micros).unwrap_or(if micros < 0 { i64::MIN } else { i64::MAX })
}

pub(crate) fn from_unix_micros(micros: i64) -> Result<OffsetDateTime, Error> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1_000)
        .map_err(|_| Error::internal(format!("stored timestamp {micros} µs is out of range")))
}

pub(crate) fn optional_from_unix_micros(
    micros: Option<i64>,
) -> Result<Option<OffsetDateTime>, Error> {
    match micros {
        None => Ok(None),
        Some(micros) => from_unix_micros(micros).map(Some),
    }
}

/// `at` as it reads back from storage, so a record returned by a write
/// equals the same record read later.
pub(crate) fn truncate_to_micros(at: OffsetDateTime) -> OffsetDateTime {
    let sub_microsecond_nanos = i64::from(at.nanosecond() % 1_000);
    at.to_offset(time::UtcOffset::UTC) - time::Duration::nanoseconds(sub_microsecond_nanos)
}

/// The current time at storage precision.
pub(crate) fn now_at_storage_precision() -> OffsetDateTime {
    truncate_to_micros(OffsetDateTime::now_utc())
}

/// SQL `LIMIT` values are signed; a limit beyond `i64::MAX` means "all".
pub(crate) fn sql_limit(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

pub(crate) fn tenant_exists(id: &TenantId) -> Error {
    Error::conflict("tenant_exists", format!("tenant `{id}` already exists"))
}

pub(crate) fn tenant_not_found(id: &TenantId) -> Error {
    Error::not_found("tenant_not_found", format!("tenant `{id}` does not exist"))
}

pub(crate) fn key_not_found(id: &str) -> Error {
    let shown: String = id.chars().take(64).collect();
    Error::not_found(
        "key_not_found",
        format!("no key `{}` in this tenant", shown.escape_debug()),
    )
}

pub(crate) fn key_exists(id: &str) -> Error {
    Error::conflict(
        "key_exists",
        format!("an API key with id `{id}` already exists"),
    )
}

/// A tenant id read back from storage. Only validated ids are ever written,
/// so a failure here means the table was edited by hand.
fn stored_tenant_id(text: &str) -> Result<TenantId, Error> {
    TenantId::parse(text).map_err(|error| {
        Error::internal(format!("stored tenant id is invalid: {}", error.detail()))
    })
}

/// The columns of one `plinth_tenants` row.
pub(crate) struct TenantRow {
    pub id: String,
    pub display_name: String,
    pub created_at: i64,
}

impl TenantRow {
    pub fn into_record(self) -> Result<TenantRecord, Error> {
        Ok(TenantRecord {
            id: stored_tenant_id(&self.id)?,
            display_name: self.display_name,
            created_at: from_unix_micros(self.created_at)?,
        })
    }
}

/// The columns of one `plinth_api_keys` row.
pub(crate) struct ApiKeyRow {
    pub id: String,
    pub tenant: String,
    pub name: String,
    pub scopes: String,
    pub secret_sha256: Vec<u8>,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

impl ApiKeyRow {
    pub fn into_record(self) -> Result<ApiKeyRecord, Error> {
        let scopes = ScopeSet::parse_space_separated(&self.scopes).map_err(|error| {
            Error::internal(format!(
                "stored scopes of API key `{}` are invalid: {}",
                self.id,
                error.detail()
            ))
        })?;
        let Ok(secret_sha256) = <[u8; 32]>::try_from(self.secret_sha256.as_slice()) else {
            return Err(Error::internal(format!(
                "stored secret digest of API key `{}` is not 32 bytes long",
                self.id
            )));
        };
        Ok(ApiKeyRecord {
            tenant: stored_tenant_id(&self.tenant)?,
            name: self.name,
            scopes,
            secret_sha256,
            created_at: from_unix_micros(self.created_at)?,
            expires_at: optional_from_unix_micros(self.expires_at)?,
            revoked_at: optional_from_unix_micros(self.revoked_at)?,
            id: self.id,
        })
    }
}

/// The columns of one `plinth_audit_log` row.
pub(crate) struct AuditRow {
    pub sequence: i64,
    pub at: i64,
    pub actor: String,
    pub actor_tenant: Option<String>,
    pub action: String,
    pub target: String,
    pub outcome: String,
    pub source_address: Option<String>,
    pub request_id: Option<String>,
    pub detail: String,
}

impl AuditRow {
    pub fn into_entry(self) -> Result<AuditEntry, Error> {
        let Some(outcome) = AuditOutcome::parse(&self.outcome) else {
            return Err(Error::internal(format!(
                "audit entry {} has an unknown outcome `{}`",
                self.sequence, self.outcome
            )));
        };
        Ok(AuditEntry {
            sequence: self.sequence,
            at: from_unix_micros(self.at)?,
            actor: self.actor,
            actor_tenant: self.actor_tenant,
            action: self.action,
            target: self.target,
            outcome,
            source_address: self.source_address,
            request_id: self.request_id,
            detail: self.detail,
        })
    }
}

pub(crate) fn encode_stored_response(response: &StoredResponse) -> Result<Vec<u8>, Error> {
    serde_json::to_vec(response)
        .map_err(|error| Error::internal(format!("cannot encode an idempotent response: {error}")))
}

fn decode_stored_response(bytes: &[u8]) -> Result<StoredResponse, Error> {
    serde_json::from_slice(bytes).map_err(|error| {
        Error::internal(format!("stored idempotent response is unreadable: {error}"))
    })
}

/// The columns of one `plinth_idempotency` row that decide what a new
/// request with the same key is told.
pub(crate) struct IdempotencyRow {
    pub fingerprint: String,
    pub state: String,
    pub response: Option<Vec<u8>>,
    pub expires_at: i64,
}

impl IdempotencyRow {
    /// An expired record counts as absent, whether or not it was purged yet.
    pub fn is_live_at(&self, now_micros: i64) -> bool {
        self.expires_at > now_micros
    }

    /// The answer to a request with `fingerprint` that found this live record.
    pub fn answer(self, fingerprint: &str) -> Result<IdempotencyBegin, Error> {
        if self.fingerprint != fingerprint {
            return Ok(IdempotencyBegin::FingerprintMismatch);
        }
        if self.state == IDEMPOTENCY_IN_PROGRESS {
            return Ok(IdempotencyBegin::InProgress);
        }
        if self.state != IDEMPOTENCY_COMPLETED {
            return Err(Error::internal(format!(
                "idempotency record has an unknown state `{}`",
                self.state
            )));
        }
        let Some(response) = self.response else {
            return Err(Error::internal(
                "a completed idempotency record has no response",
            ));
        };
        Ok(IdempotencyBegin::Completed(decode_stored_response(
            &response,
        )?))
    }
}
