//! Plinth's control plane: who may call, as which tenant, with which scopes,
//! and the records that must survive the call.
//!
//! - tenants, and API keys (stored hashed, shown once, revocable, optional
//!   expiry), in a [`ControlStore`] with a SQLite and a PostgreSQL backend;
//! - JWT bearer tokens (HS256, RS256 from PEM files or a JWKS file);
//! - scopes with resource-name patterns, and the [`Authenticator`] that
//!   turns a bearer credential into a [`Principal`];
//! - the audit log of admin actions and authentication failures;
//! - idempotency records for `Idempotency-Key` replays.
//!
//! Nothing here knows HTTP: the server maps [`plinth_core::Error`]s to
//! statuses at the edge.

mod api_key;
mod authenticator;
#[cfg(test)]
mod conformance;
mod jwt;
mod migrations;
mod postgres;
mod scope;
mod sqlite;
mod store;

pub use api_key::{ApiKeySecret, GeneratedApiKey};
pub use authenticator::{Authenticator, CredentialKind, MemoryAuthentication, Principal};
pub use jwt::JwtVerifier;
pub use migrations::CONTROL_MIGRATIONS;
pub use scope::{Scope, ScopeSet};
pub use store::{
    ApiKeyRecord, AuditEntry, AuditOutcome, AuditQuery, ControlStore, IdempotencyBegin, NewApiKey,
    NewAuditEntry, StoredResponse, TenantRecord, open_control_store,
};
