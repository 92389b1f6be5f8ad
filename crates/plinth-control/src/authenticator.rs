//! Turns the bearer credential of a request into a [`Principal`]: the
//! tenant it acts for, its scopes, and who it is for the audit log.
//!
//! API key records are cached for [`API_KEY_CACHE_TTL`] so the hot path
//! does not touch the store on every request. A revocation takes effect at
//! once on the node that performed it and within that TTL on other nodes.
//!
//! Principals are shared (`Arc`): the one an API key grants is built when
//! its record is loaded, and those of the bootstrap key and of dev mode when
//! the authenticator is, so authenticating a request neither copies scopes
//! nor formats an actor string.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use plinth_core::config::{AuthConfig, AuthMode};
use plinth_core::{Error, TenantId};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::api_key::{digest_secret, digests_match, parse_presented_key};
use crate::jwt::JwtVerifier;
use crate::scope::ScopeSet;
use crate::store::{ApiKeyRecord, ControlStore};

/// How long a looked-up key record is trusted before it is read again.
pub const API_KEY_CACHE_TTL: Duration = Duration::from_secs(5);
/// Cached key records kept at most; the cache is emptied when it fills, so
/// a flood of unknown key ids cannot grow memory.
const API_KEY_CACHE_CAPACITY: usize = 10_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CredentialKind {
    ApiKey,
    Jwt,
    BootstrapKey,
    /// No credential, accepted because the server runs in dev mode.
    DevMode,
}

/// Who is calling: the tenant every resource name is scoped to, the
/// scopes, and an actor string for the audit log (never a secret).
#[derive(Clone, Debug)]
pub struct Principal {
    pub tenant: TenantId,
    pub scopes: ScopeSet,
    pub actor: String,
    pub kind: CredentialKind,
}

impl Principal {
    /// `PermissionDenied` unless a scope allows the action.
    pub fn require(&self, block: &str, action: &str, resource: Option<&str>) -> Result<(), Error> {
        if self.scopes.allows(block, action, resource) {
            return Ok(());
        }
        let needed = match resource {
            Some(resource) => format!("`{block}:{action}` covering `{resource}`"),
            None => format!("`{block}:{action}`"),
        };
        Err(Error::permission_denied(format!(
            "this credential lacks the scope {needed}"
        )))
    }
}

/// What authentication checks of an API key record, with the principal
/// the key grants.
struct KnownApiKey {
    tenant: TenantId,
    secret_sha256: [u8; 32],
    expires_at: Option<OffsetDateTime>,
    revoked_at: Option<OffsetDateTime>,
    principal: Arc<Principal>,
}

impl KnownApiKey {
    fn from_record(record: ApiKeyRecord) -> KnownApiKey {
        let principal = Principal {
            tenant: record.tenant.clone(),
            scopes: record.scopes,
            actor: format!("key:{}", record.id),
            kind: CredentialKind::ApiKey,
        };
        KnownApiKey {
            tenant: record.tenant,
            secret_sha256: record.secret_sha256,
            expires_at: record.expires_at,
            revoked_at: record.revoked_at,
            principal: Arc::new(principal),
        }
    }
}

struct CachedKey {
    /// `None` when the key id does not exist.
    key: Option<Arc<KnownApiKey>>,
    loaded_at: Instant,
}

pub struct Authenticator {
    store: Arc<dyn ControlStore>,
    jwt: Option<JwtVerifier>,
    bootstrap_key_sha256: Option<[u8; 32]>,
    mode: AuthMode,
    key_cache: Mutex<KeyCache>,
    bootstrap_principal: Arc<Principal>,
    dev_principal: Arc<Principal>,
}

/// Cached key records, and a counter bumped by every forget, so a lookup
/// that raced a revocation does not put the stale record back.
#[derive(Default)]
struct KeyCache {
    records: HashMap<String, CachedKey>,
    forget_generation: u64,
}

impl Authenticator {
    pub fn new(store: Arc<dyn ControlStore>, config: &AuthConfig) -> Result<Self, Error> {
        let bootstrap_key = read_bootstrap_key(config)?;
        Ok(Authenticator {
            store,
            jwt: JwtVerifier::from_config(&config.jwt)?,
            bootstrap_key_sha256: bootstrap_key.map(|key| Sha256::digest(key.as_bytes()).into()),
            mode: config.mode,
            key_cache: Mutex::new(KeyCache::default()),
            bootstrap_principal: Arc::new(admin_principal(
                "bootstrap",
                CredentialKind::BootstrapKey,
            )),
            dev_principal: Arc::new(admin_principal("dev", CredentialKind::DevMode)),
        })
    }

    pub fn mode(&self) -> AuthMode {
        self.mode
    }

    /// Authenticates the raw `Authorization` header value, if any.
    pub async fn authenticate(&self, authorization: Option<&str>) -> Result<Arc<Principal>, Error> {
        match self.authenticate_from_memory(authorization) {
            MemoryAuthentication::Decided(decided) => decided,
            MemoryAuthentication::NeedsKeyRecord {
                key_id,
                secret_part,
            } => {
                let key = self.load_key(key_id).await?;
                check_presented_secret(key.as_deref(), secret_part)
            }
        }
    }

    /// Authenticates with what the node holds in memory: the bootstrap key,
    /// JWT keys, and API key records read in the last
    /// [`API_KEY_CACHE_TTL`]. Only an API key whose record is not at hand
    /// needs [`Authenticator::authenticate`]; every other request is
    /// decided here without waiting, which keeps the HTTP hot path free of
    /// a boxed future.
    pub fn authenticate_from_memory<'header>(
        &self,
        authorization: Option<&'header str>,
    ) -> MemoryAuthentication<'header> {
        let Some(authorization) = authorization else {
            if self.mode == AuthMode::Dev {
                return MemoryAuthentication::Decided(Ok(Arc::clone(&self.dev_principal)));
            }
            return MemoryAuthentication::Decided(Err(Error::unauthenticated(
                "missing credentials: send `Authorization: Bearer <api key or JWT>`",
            )));
        };
        let Some(token) = bearer_token(authorization) else {
            return MemoryAuthentication::Decided(Err(Error::unauthenticated(
                "the Authorization header must read `Bearer <api key or JWT>`",
            )));
        };
        if self.is_bootstrap_key(token) {
            return MemoryAuthentication::Decided(Ok(Arc::clone(&self.bootstrap_principal)));
        }
        if let Some(presented) = parse_presented_key(token) {
            return match self.cached_key(presented.id) {
                Some(key) => MemoryAuthentication::Decided(check_presented_secret(
                    key.as_deref(),
                    presented.secret_part,
                )),
                None => MemoryAuthentication::NeedsKeyRecord {
                    key_id: presented.id,
                    secret_part: presented.secret_part,
                },
            };
        }
        let Some(jwt) = &self.jwt else {
            return MemoryAuthentication::Decided(Err(Error::unauthenticated(
                "the API key is not valid",
            )));
        };
        MemoryAuthentication::Decided(jwt.verify(token).map(|verified| {
            Arc::new(Principal {
                tenant: verified.tenant,
                scopes: verified.scopes,
                actor: format!("jwt:{}", verified.subject),
                kind: CredentialKind::Jwt,
            })
        }))
    }

    /// Drops a cached key so a revocation on this node applies at once.
    pub fn forget_key(&self, key_id: &str) {
        let mut cache = self.key_cache.lock();
        cache.records.remove(key_id);
        cache.forget_generation += 1;
    }

    /// Drops every cached key of a deleted tenant.
    pub fn forget_tenant(&self, tenant: &TenantId) {
        let mut cache = self.key_cache.lock();
        cache.records.retain(|_, cached| match &cached.key {
            Some(key) => &key.tenant != tenant,
            None => true,
        });
        cache.forget_generation += 1;
    }

    fn is_bootstrap_key(&self, token: &str) -> bool {
        let Some(expected) = &self.bootstrap_key_sha256 else {
            return false;
        };
        let presented: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        digests_match(&presented, expected)
    }

    /// The cached record of a key id, when it was read recently enough;
    /// `Some(None)` when the id is known not to exist.
    fn cached_key(&self, key_id: &str) -> Option<Option<Arc<KnownApiKey>>> {
        let cache = self.key_cache.lock();
        let cached = cache.records.get(key_id)?;
        if cached.loaded_at.elapsed() >= API_KEY_CACHE_TTL {
            return None;
        }
        Some(cached.key.clone())
    }

    /// Reads a key record from the store and caches it.
    async fn load_key(&self, key_id: &str) -> Result<Option<Arc<KnownApiKey>>, Error> {
        let generation_before_read = self.key_cache.lock().forget_generation;
        let record = self.store.get_api_key(key_id).await?;
        let key = record.map(|record| Arc::new(KnownApiKey::from_record(record)));
        let mut cache = self.key_cache.lock();
        if cache.forget_generation != generation_before_read {
            // A revocation happened while we read: our copy may predate it.
            return Ok(key);
        }
        if cache.records.len() >= API_KEY_CACHE_CAPACITY {
            cache.records.clear();
        }
        cache.records.insert(
            key_id.to_string(),
            CachedKey {
                key: key.clone(),
                loaded_at: Instant::now(),
            },
        );
        Ok(key)
    }
}

/// What [`Authenticator::authenticate_from_memory`] could tell.
pub enum MemoryAuthentication<'header> {
    /// The credential is accepted or refused.
    Decided(Result<Arc<Principal>, Error>),
    /// An API key whose record must be read from the store first.
    NeedsKeyRecord {
        key_id: &'header str,
        secret_part: &'header str,
    },
}

/// Checks a presented API key secret against the key's record (`None`
/// when no key has that id).
fn check_presented_secret(
    key: Option<&KnownApiKey>,
    secret_part: &str,
) -> Result<Arc<Principal>, Error> {
    // One message for "no such key" and "wrong secret", so a caller
    // cannot probe which key ids exist.
    let Some(key) = key else {
        return Err(Error::unauthenticated("the API key is not valid"));
    };
    if !digests_match(&digest_secret(secret_part), &key.secret_sha256) {
        return Err(Error::unauthenticated("the API key is not valid"));
    }
    if key.revoked_at.is_some() {
        return Err(Error::unauthenticated("the API key was revoked"));
    }
    if let Some(expires_at) = key.expires_at
        && expires_at <= OffsetDateTime::now_utc()
    {
        return Err(Error::unauthenticated("the API key has expired"));
    }
    Ok(Arc::clone(&key.principal))
}

/// The principal of the bootstrap key and of dev mode: every scope, in the
/// default tenant.
fn admin_principal(actor: &str, kind: CredentialKind) -> Principal {
    Principal {
        tenant: TenantId::default_tenant(),
        scopes: ScopeSet::admin(),
        actor: actor.to_string(),
        kind,
    }
}

fn bearer_token(authorization: &str) -> Option<&str> {
    let (scheme, token) = authorization.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = token.trim();
    if token.is_empty() {
        return None;
    }
    Some(token)
}

fn read_bootstrap_key(config: &AuthConfig) -> Result<Option<String>, Error> {
    if let Some(key) = &config.bootstrap_admin_key {
        return Ok(Some(validated_bootstrap_key(key.expose().trim())?));
    }
    let Some(path) = &config.bootstrap_admin_key_file else {
        return Ok(None);
    };
    let contents = std::fs::read_to_string(path).map_err(|io_error| {
        Error::invalid_argument(
            "invalid_config",
            format!(
                "cannot read auth.bootstrap_admin_key_file {}: {io_error}",
                path.display()
            ),
        )
    })?;
    let first_line = contents.lines().next().unwrap_or_default().trim();
    Ok(Some(validated_bootstrap_key(first_line)?))
}

/// A short bootstrap key is a guessable admin password.
fn validated_bootstrap_key(key: &str) -> Result<String, Error> {
    const MINIMUM_LENGTH: usize = 24;
    if key.len() < MINIMUM_LENGTH {
        return Err(Error::invalid_argument(
            "invalid_config",
            "the bootstrap admin key must be at least 24 characters long",
        ));
    }
    Ok(key.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api_key::GeneratedApiKey;
    use crate::migrations::CONTROL_MIGRATIONS;
    use crate::store::{NewApiKey, open_control_store};
    use plinth_core::config::SqliteConfig;
    use plinth_core::resilience::{BreakerConfig, CircuitBreaker};
    use plinth_engines::{SqliteEngine, Store};

    async fn sqlite_control_store(directory: &tempfile::TempDir) -> Arc<dyn ControlStore> {
        let breaker = Arc::new(CircuitBreaker::new("sqlite", BreakerConfig::default()));
        let engine = SqliteEngine::open(
            &directory.path().join("plinth.db"),
            &SqliteConfig::default(),
            breaker,
            Duration::from_secs(5),
        )
        .expect("open sqlite");
        let store = Store::Sqlite(Arc::new(engine));
        store
            .migrate(&[&CONTROL_MIGRATIONS])
            .await
            .expect("apply the control migrations");
        open_control_store(&store)
    }

    fn is_undecided(decision: &MemoryAuthentication<'_>) -> bool {
        matches!(decision, MemoryAuthentication::NeedsKeyRecord { .. })
    }

    #[tokio::test]
    async fn api_keys_are_decided_from_memory_once_their_record_is_read() {
        let directory = tempfile::tempdir().expect("create a temporary directory");
        let store = sqlite_control_store(&directory).await;
        let generated = GeneratedApiKey::generate();
        store
            .create_api_key(NewApiKey {
                id: generated.id.clone(),
                tenant: TenantId::default_tenant(),
                name: "test key".to_string(),
                scopes: ScopeSet::parse_all(["cache:read"]).expect("valid scopes"),
                secret_sha256: generated.secret_sha256,
                expires_at: None,
            })
            .await
            .expect("create the key");
        let config = AuthConfig {
            mode: AuthMode::Enforced,
            ..AuthConfig::default()
        };
        let authenticator = Authenticator::new(store, &config).expect("an authenticator");
        let header = format!("Bearer {}", generated.secret.reveal());
        let wrong_secret = format!("Bearer plk_{}_{}", generated.id, "x".repeat(43));

        assert!(is_undecided(
            &authenticator.authenticate_from_memory(Some(&header))
        ));
        let principal = authenticator
            .authenticate(Some(&header))
            .await
            .expect("the key authenticates");
        assert_eq!(principal.actor, format!("key:{}", generated.id));

        let MemoryAuthentication::Decided(Ok(from_memory)) =
            authenticator.authenticate_from_memory(Some(&header))
        else {
            panic!("a cached key is decided from memory");
        };
        assert!(Arc::ptr_eq(&from_memory, &principal));
        let MemoryAuthentication::Decided(Err(refusal)) =
            authenticator.authenticate_from_memory(Some(&wrong_secret))
        else {
            panic!("a wrong secret of a cached key is refused from memory");
        };
        assert_eq!(refusal.detail(), "the API key is not valid");

        authenticator.forget_key(&generated.id);
        assert!(is_undecided(
            &authenticator.authenticate_from_memory(Some(&header))
        ));

        for authorization in [None, Some("Basic abc"), Some("Bearer not-a-key")] {
            let decision = authenticator.authenticate_from_memory(authorization);
            assert!(
                matches!(decision, MemoryAuthentication::Decided(Err(_))),
                "{authorization:?} is refused without the store"
            );
        }
    }

    #[test]
    fn bearer_tokens_are_extracted_strictly() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer abc"), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer "), None);
        assert_eq!(bearer_token("Bearerabc"), None);
    }
}
