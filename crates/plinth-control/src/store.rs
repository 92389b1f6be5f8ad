//! The control store: the port every control-plane backend implements, and
//! the records it keeps.

use std::sync::Arc;

use async_trait::async_trait;
use plinth_core::{Error, TenantId};
use plinth_engines::Store;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::scope::ScopeSet;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TenantRecord {
    pub id: TenantId,
    pub display_name: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// What is stored for an API key. The secret itself is never stored: only
/// its SHA-256 digest (keys are 256 random bits, so a slow hash adds
/// nothing but latency on every request).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiKeyRecord {
    /// Public identifier, also embedded in the key text.
    pub id: String,
    pub tenant: TenantId,
    pub name: String,
    pub scopes: ScopeSet,
    pub secret_sha256: [u8; 32],
    pub created_at: OffsetDateTime,
    pub expires_at: Option<OffsetDateTime>,
    pub revoked_at: Option<OffsetDateTime>,
}

/// A key about to be stored.
#[derive(Clone, Debug)]
pub struct NewApiKey {
    pub id: String,
    pub tenant: TenantId,
    pub name: String,
    pub scopes: ScopeSet,
    pub secret_sha256: [u8; 32],
    pub expires_at: Option<OffsetDateTime>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditOutcome {
    Success,
    Denied,
    Failure,
}

impl AuditOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            AuditOutcome::Success => "success",
            AuditOutcome::Denied => "denied",
            AuditOutcome::Failure => "failure",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "success" => Some(AuditOutcome::Success),
            "denied" => Some(AuditOutcome::Denied),
            "failure" => Some(AuditOutcome::Failure),
            _ => None,
        }
    }
}

/// An audit record about to be written.
#[derive(Clone, Debug)]
pub struct NewAuditEntry {
    /// Who: a credential reference such as `key:abc123`, `jwt:alice`,
    /// `bootstrap`, `dev`, or `anonymous`.
    pub actor: String,
    /// The tenant of the actor, when known.
    pub actor_tenant: Option<TenantId>,
    /// What: `tenant.create`, `key.create`, `key.revoke`, `auth.failure`, ...
    pub action: String,
    /// On what: a tenant id, a key id, a route.
    pub target: String,
    pub outcome: AuditOutcome,
    /// From where: the client address.
    pub source_address: Option<String>,
    pub request_id: Option<String>,
    /// A short explanation; never a secret.
    pub detail: String,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AuditEntry {
    /// Increases with every entry; also the pagination cursor.
    pub sequence: i64,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    pub actor: String,
    pub actor_tenant: Option<String>,
    pub action: String,
    pub target: String,
    pub outcome: AuditOutcome,
    pub source_address: Option<String>,
    pub request_id: Option<String>,
    pub detail: String,
}

/// Filters for reading the audit log, newest first.
#[derive(Clone, Debug, Default)]
pub struct AuditQuery {
    /// Only entries with a sequence strictly below this (the cursor).
    pub before_sequence: Option<i64>,
    pub action: Option<String>,
    pub outcome: Option<AuditOutcome>,
    pub limit: usize,
}

/// A response kept to answer a repeated `Idempotency-Key`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredResponse {
    pub status: u16,
    /// Headers worth replaying (content type, location, etag).
    pub headers: Vec<(String, String)>,
    #[serde(with = "base64_body")]
    pub body: Vec<u8>,
}

/// Stored bodies are base64 in the JSON record, not arrays of numbers.
mod base64_body {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(body: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&STANDARD.encode(body))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(deserializer)?;
        STANDARD.decode(text).map_err(serde::de::Error::custom)
    }
}

/// What the store says when a request with an idempotency key begins.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IdempotencyBegin {
    /// First time: the caller runs the request, then completes or abandons.
    Started,
    /// The same key is being processed by another request right now.
    InProgress,
    /// The same key and the same request finished before: replay this.
    Completed(StoredResponse),
    /// The same key was used for a different request.
    FingerprintMismatch,
}

/// The control plane's storage port. Every backend passes the same
/// conformance suite (`conformance.rs`).
#[async_trait]
pub trait ControlStore: Send + Sync {
    async fn create_tenant(&self, id: &TenantId, display_name: &str)
    -> Result<TenantRecord, Error>;
    async fn get_tenant(&self, id: &TenantId) -> Result<Option<TenantRecord>, Error>;
    /// Ordered by id, starting after `after_id` (the cursor).
    async fn list_tenants(
        &self,
        after_id: Option<&TenantId>,
        limit: usize,
    ) -> Result<Vec<TenantRecord>, Error>;
    /// Deletes the tenant, its keys and its idempotency records.
    /// `NotFound` when absent.
    async fn delete_tenant(&self, id: &TenantId) -> Result<(), Error>;

    /// `NotFound` when the tenant does not exist.
    async fn create_api_key(&self, key: NewApiKey) -> Result<ApiKeyRecord, Error>;
    async fn get_api_key(&self, id: &str) -> Result<Option<ApiKeyRecord>, Error>;
    /// The tenant's keys, revoked ones included, ordered by id after `after_id`.
    async fn list_api_keys(
        &self,
        tenant: &TenantId,
        after_id: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ApiKeyRecord>, Error>;
    /// Revokes a key of `tenant`. `NotFound` when the key does not exist or
    /// belongs to another tenant (the two are indistinguishable on purpose).
    /// Revoking twice is not an error and keeps the first revocation time.
    async fn revoke_api_key(&self, tenant: &TenantId, id: &str) -> Result<ApiKeyRecord, Error>;

    async fn append_audit(&self, entry: NewAuditEntry) -> Result<(), Error>;
    async fn list_audit(&self, query: AuditQuery) -> Result<Vec<AuditEntry>, Error>;

    async fn begin_idempotent(
        &self,
        tenant: &TenantId,
        key: &str,
        fingerprint: &str,
        expires_at: OffsetDateTime,
    ) -> Result<IdempotencyBegin, Error>;
    async fn complete_idempotent(
        &self,
        tenant: &TenantId,
        key: &str,
        response: StoredResponse,
    ) -> Result<(), Error>;
    /// Forgets an in-progress key (the request failed in a way worth retrying).
    async fn abandon_idempotent(&self, tenant: &TenantId, key: &str) -> Result<(), Error>;
    /// Deletes records expired at `now`; returns how many went.
    async fn purge_expired_idempotency(&self, now: OffsetDateTime) -> Result<u64, Error>;
}

/// The control store on the node's durable store.
pub fn open_control_store(store: &Store) -> Arc<dyn ControlStore> {
    match store {
        Store::Sqlite(engine) => {
            Arc::new(crate::sqlite::SqliteControlStore::new(Arc::clone(engine)))
        }
        Store::Postgres(engine) => Arc::new(crate::postgres::PostgresControlStore::new(
            Arc::clone(engine),
        )),
    }
}
