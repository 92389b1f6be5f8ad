//! The conformance suite of the [`CacheService`]: every promise the cache
//! makes to its callers, written once and run against every tier
//! combination the cache issue names:
//!
//! | module | tiers | authoritative |
//! |---|---|---|
//! | `l1_only` | L1 | `l1` |
//! | `l1_sqlite` | L1 + SQLite store | `sqlite` |
//! | `l1_redis` | L1 + Redis | `redis` |
//! | `l1_redis_postgres` | L1 + Redis + PostgreSQL store | `postgres` |
//! | `sqlite_only` | SQLite store | `sqlite` |
//! | `postgres_only` | PostgreSQL store | `postgres` |
//!
//! Each combination is a [`KeyspaceConfig`] applied through
//! [`CacheService::configure`] on a service built, like
//! `plinth_cache::setup::start_cache_service` builds it, from engines the
//! test opens itself: SQLite in a temporary directory, PostgreSQL in a
//! schema of its own, the shared test Redis. `service_conformance_suite!`
//! turns every case into one `#[tokio::test]` per combination. A case that
//! needs an engine whose URL is not set prints that it skipped (plain
//! `cargo test`) or fails (under `scripts/test.sh`), through
//! `plinth_engines::test_support`.
//!
//! Every case works in keyspaces of its own, named after the case with a
//! random suffix, so cases sharing one Redis never see each other's keys.
//! A second [`CacheService`] on the same engines, with its own catalog and
//! L1, stands for another node: that is how cases build stale L1 copies on
//! purpose. Services are built without the Redis pub/sub coherence (tested
//! by the two-node black-box test), so such a stale copy stays until its
//! TTL and only the consistency modes stand between it and the caller.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use plinth_cache::catalog::{KeyspaceCatalog, KeyspaceRecord};
use plinth_cache::clock::now_ms;
use plinth_cache::events::{CacheChange, CacheEvent};
use plinth_cache::keyspace::{
    DurableTierKind, EvictionKind, KeyspaceConfig, L1Config, SharedTierKind, l1_settings,
};
use plinth_cache::l1::L1Tier;
use plinth_cache::redis_tier::RedisCacheTier;
use plinth_cache::service::{
    CacheRead, CacheService, CacheServiceOptions, CacheWrite, Consistency,
};
use plinth_cache::setup::CACHE_MIGRATION_SETS;
use plinth_cache::store_postgres::PostgresCacheStore;
use plinth_cache::store_sqlite::SqliteCacheStore;
use plinth_cache::{
    CacheEntry, CacheKey, CacheTier, KeyPage, KeyspaceScope, Revision, Selector, WriteCondition,
};
use plinth_core::config::{PostgresConfig, SqliteConfig};
use plinth_core::resilience::{BreakerConfig, CircuitBreaker};
use plinth_core::{Error, ErrorKind, HumanDuration, ResourceName, TenantId};
use plinth_engines::test_support::{isolated_postgres_url, postgres_url, redis_url};
use plinth_engines::{PostgresEngine, RedisEngine, SqliteEngine, Store};
use tempfile::TempDir;
use tokio::sync::broadcast;

/// Expands to `mod $module { ... }` with one `#[tokio::test]` per case,
/// each opening a fresh [`Fixture`] for `$combination`.
macro_rules! service_conformance_suite {
    ($module:ident, $combination:expr) => {
        mod $module {
            service_conformance_suite!(@cases $combination;
                ttl_expiry_makes_the_key_absent_and_the_remaining_ttl_decreases,
                default_ttl_of_the_keyspace_applies_to_writes_without_a_ttl,
                stale_if_match_and_create_only_on_an_existing_key_fail,
                delete_with_a_stale_if_match_is_refused_and_the_value_stays,
                invalidate_by_pattern_removes_matches_from_every_tier,
                invalidate_by_prefix_removes_matches_from_every_tier,
                invalidate_by_tag_removes_matches_from_every_tier,
                flush_makes_every_key_unreachable_and_reclaim_removes_old_rows,
                listing_by_prefix_pages_through_live_keys,
                counters_start_from_absent_and_add_up,
                concurrent_increments_from_sixteen_tasks_sum_exactly,
                increment_of_a_non_integer_value_is_not_a_counter,
                an_integer_above_the_compression_threshold_stays_incrementable,
                eventual_reads_answer_from_the_fastest_tier_and_fill_it,
                strong_reads_answer_from_the_authoritative_tier,
                session_reads_never_return_a_copy_older_than_the_token,
                values_content_types_and_tags_round_trip_byte_for_byte,
                values_above_the_compression_threshold_are_stored_compressed,
                encrypted_keyspaces_keep_the_plaintext_out_of_shared_tiers,
                values_over_max_value_bytes_are_refused_and_nothing_is_written,
                change_events_report_every_set_delete_invalidate_and_flush,
                tenants_with_the_same_keyspace_and_key_are_independent,
                copy_tiers_turned_off_and_on_again_never_serve_missed_writes,
            );
        }
    };
    (@cases $combination:expr; $($case:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let Some(fixture) = crate::Fixture::open($combination).await else {
                    return;
                };
                crate::$case(&fixture).await;
            }
        )+
    };
}

service_conformance_suite!(l1_only, crate::Combination::L1Only);
service_conformance_suite!(l1_sqlite, crate::Combination::L1Sqlite);
service_conformance_suite!(l1_redis, crate::Combination::L1Redis);
service_conformance_suite!(l1_redis_postgres, crate::Combination::L1RedisPostgres);
service_conformance_suite!(sqlite_only, crate::Combination::SqliteOnly);
service_conformance_suite!(postgres_only, crate::Combination::PostgresOnly);

/// Timeout of every engine call the test engines make.
const ENGINE_CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// The AES-256 key every service in this suite is built with.
const ENCRYPTION_KEY: [u8; 32] = [0x5a; 32];
/// How long a case waits for a change event before calling it missing.
const EVENT_WAIT: Duration = Duration::from_secs(2);

// ---------------------------------------------------------------------------
// Tier combinations and the fixture that builds them
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Combination {
    L1Only,
    L1Sqlite,
    L1Redis,
    L1RedisPostgres,
    SqliteOnly,
    PostgresOnly,
}

impl Combination {
    fn has_l1(self) -> bool {
        !matches!(self, Combination::SqliteOnly | Combination::PostgresOnly)
    }

    fn uses_redis(self) -> bool {
        matches!(self, Combination::L1Redis | Combination::L1RedisPostgres)
    }

    fn uses_store(self) -> bool {
        !matches!(self, Combination::L1Only | Combination::L1Redis)
    }

    /// The node's durable engine (keyspace catalog, and store tier when the
    /// keyspace uses one) is PostgreSQL rather than SQLite.
    fn runs_on_postgres(self) -> bool {
        matches!(
            self,
            Combination::L1RedisPostgres | Combination::PostgresOnly
        )
    }

    fn store_tier_name(self) -> &'static str {
        if self.runs_on_postgres() {
            "postgres"
        } else {
            "sqlite"
        }
    }

    /// The tier a strong read answers from: the store, else Redis, else L1.
    fn authoritative_tier(self) -> &'static str {
        if self.uses_store() {
            self.store_tier_name()
        } else if self.uses_redis() {
            "redis"
        } else {
            "l1"
        }
    }

    /// The tier an eventual read right after a write answers from.
    fn fastest_tier(self) -> &'static str {
        if self.has_l1() {
            "l1"
        } else {
            self.authoritative_tier()
        }
    }

    /// The fastest tier another node on the same engines shares, or `None`
    /// when every tier is in process (L1 only: another node sees nothing).
    fn fastest_shared_tier(self) -> Option<&'static str> {
        if self.uses_redis() {
            Some("redis")
        } else if self.uses_store() {
            Some(self.store_tier_name())
        } else {
            None
        }
    }

    fn keyspace_config(self) -> KeyspaceConfig {
        KeyspaceConfig {
            l1: self.has_l1().then(test_l1_config),
            l2: if self.uses_redis() {
                SharedTierKind::Redis
            } else {
                SharedTierKind::None
            },
            store: if self.uses_store() {
                DurableTierKind::Store
            } else {
                DurableTierKind::None
            },
            default_ttl: None,
            max_value_bytes: 1024 * 1024,
            compression_threshold: None,
            encrypt: false,
        }
    }
}

fn test_l1_config() -> L1Config {
    L1Config {
        max_entries: 10_000,
        max_bytes: 64 * 1024 * 1024,
        ttl_cap: HumanDuration::from_secs(3600),
        eviction: EvictionKind::TinyLfu,
    }
}

/// The engines of one case and the service ("this node") on them.
pub struct Fixture {
    combination: Combination,
    tenant: TenantId,
    store: Store,
    store_tier: Arc<dyn CacheTier>,
    redis_engine: Option<Arc<RedisEngine>>,
    redis_tier: Option<Arc<dyn CacheTier>>,
    service: Arc<CacheService>,
    /// Holds the SQLite database of combinations that run on SQLite.
    _directory: Option<TempDir>,
}

impl Fixture {
    /// Opens the engines `combination` needs, or `None` when one of them is
    /// not available (after test_support printed that the case skipped).
    pub async fn open(combination: Combination) -> Option<Fixture> {
        let test_name = format!("cache service conformance ({combination:?})");
        let postgres_base_url = if combination.runs_on_postgres() {
            Some(postgres_url(&test_name)?)
        } else {
            None
        };
        let redis_address = if combination.uses_redis() {
            Some(redis_url(&test_name)?)
        } else {
            None
        };
        let (store, store_tier, directory) = match postgres_base_url {
            Some(base_url) => {
                let (store, tier) = open_postgres_store(&base_url).await;
                (store, tier, None)
            }
            None => {
                let (store, tier, directory) = open_sqlite_store();
                (store, tier, Some(directory))
            }
        };
        store
            .migrate(&CACHE_MIGRATION_SETS)
            .await
            .expect("apply the cache migrations");
        let (redis_engine, redis_tier) = match redis_address {
            Some(address) => {
                let (engine, tier) = open_redis(&address).await;
                (Some(engine), Some(tier))
            }
            None => (None, None),
        };
        let service = build_node(combination, &store, &store_tier, redis_tier.as_ref());
        Some(Fixture {
            combination,
            tenant: TenantId::default_tenant(),
            store,
            store_tier,
            redis_engine,
            redis_tier,
            service,
            _directory: directory,
        })
    }

    /// A second service on the same engines with its own catalog and L1:
    /// another node of the same deployment.
    pub fn another_node(&self) -> Arc<CacheService> {
        build_node(
            self.combination,
            &self.store,
            &self.store_tier,
            self.redis_tier.as_ref(),
        )
    }

    /// A fresh keyspace of this fixture's tenant with the combination's
    /// configuration.
    async fn keyspace(&self, case: &str) -> Space {
        self.keyspace_with(case, |_| {}).await
    }

    /// A fresh keyspace with the combination's configuration as `adjust`
    /// changes it.
    async fn keyspace_with(&self, case: &str, adjust: impl FnOnce(&mut KeyspaceConfig)) -> Space {
        let name = unique_keyspace_name(case);
        self.configured_space(&self.tenant, name, adjust).await
    }

    async fn configured_space(
        &self,
        tenant: &TenantId,
        name: ResourceName,
        adjust: impl FnOnce(&mut KeyspaceConfig),
    ) -> Space {
        let mut config = self.combination.keyspace_config();
        adjust(&mut config);
        self.service
            .configure(tenant, &name, config)
            .await
            .expect("configure the keyspace");
        Space {
            service: Arc::clone(&self.service),
            tenant: tenant.clone(),
            name,
        }
    }

    /// The entry as the store keeps it (compressed, encrypted), or `None`
    /// when the combination has no store or it holds nothing live.
    async fn raw_store_entry(
        &self,
        space: &Space,
        version: u64,
        key: &CacheKey,
    ) -> Option<CacheEntry> {
        if !self.combination.uses_store() {
            return None;
        }
        let scope = KeyspaceScope {
            tenant: space.tenant.clone(),
            keyspace: space.name.clone(),
            version,
        };
        self.store_tier
            .get(&scope, key, now_ms())
            .await
            .expect("read the store directly")
    }

    /// Every Redis entry hash of `key` in the keyspace, whatever its
    /// version, read with the documented key layout
    /// (`plinth:cache:{<tenant>:<keyspace>}:<version>:k:<key>`).
    async fn raw_redis_entries(&self, space: &Space, key: &str) -> Vec<RawRedisEntry> {
        let Some(engine) = &self.redis_engine else {
            return Vec::new();
        };
        let mut connection = engine.connection().expect("a redis connection");
        let pattern = format!(
            "plinth:cache:{{{}:{}}}:*:k:{key}",
            space.tenant.as_str(),
            space.name.as_str()
        );
        let redis_keys: Vec<String> = redis::cmd("KEYS")
            .arg(&pattern)
            .query_async(&mut connection)
            .await
            .expect("KEYS");
        let mut entries = Vec::with_capacity(redis_keys.len());
        for redis_key in redis_keys {
            let fields: HashMap<String, Vec<u8>> = redis::cmd("HGETALL")
                .arg(&redis_key)
                .query_async(&mut connection)
                .await
                .expect("HGETALL");
            if fields.is_empty() {
                continue;
            }
            entries.push(RawRedisEntry { redis_key, fields });
        }
        entries
    }

    /// The raw value of every tier that keeps encoded values (Redis and the
    /// store), with whether each says it is compressed and encrypted.
    async fn raw_encoded_copies(
        &self,
        space: &Space,
        key: &CacheKey,
    ) -> Vec<(&'static str, EncodedCopy)> {
        let mut copies = Vec::new();
        let version = space.record().await.version;
        if let Some(entry) = self.raw_store_entry(space, version, key).await {
            copies.push((
                self.combination.store_tier_name(),
                EncodedCopy {
                    value: entry.value.to_vec(),
                    compressed: entry.encoding.compressed,
                    encrypted: entry.encoding.encrypted,
                },
            ));
        }
        for entry in self.raw_redis_entries(space, key.as_str()).await {
            copies.push(("redis", entry.encoded_copy()));
        }
        let expected =
            usize::from(self.combination.uses_store()) + usize::from(self.combination.uses_redis());
        assert_eq!(
            copies.len(),
            expected,
            "{:?}: every shared tier should hold one copy of `{}`",
            self.combination,
            key.as_str()
        );
        copies
    }
}

/// A cache service on the given engines, as `start_cache_service` builds
/// one, with a catalog and an L1 of its own.
fn build_node(
    combination: Combination,
    store: &Store,
    store_tier: &Arc<dyn CacheTier>,
    redis_tier: Option<&Arc<dyn CacheTier>>,
) -> Arc<CacheService> {
    Arc::new(CacheService::new(
        KeyspaceCatalog::new(store.clone()),
        Arc::new(L1Tier::new(l1_settings(&test_l1_config()), Arc::default())),
        redis_tier.cloned(),
        Arc::clone(store_tier),
        CacheServiceOptions {
            default_keyspace: combination.keyspace_config(),
            encryption_key: Some(ENCRYPTION_KEY),
            // Without coherence another node's L1 copy stays stale until
            // its TTL, which is what the session case builds on purpose.
            coherence: None,
        },
    ))
}

fn open_sqlite_store() -> (Store, Arc<dyn CacheTier>, TempDir) {
    let directory = tempfile::tempdir().expect("create a temporary directory");
    let breaker = Arc::new(CircuitBreaker::new("sqlite", BreakerConfig::default()));
    let engine = SqliteEngine::open(
        &directory.path().join("cache.db"),
        &SqliteConfig::default(),
        breaker,
        ENGINE_CALL_TIMEOUT,
    )
    .expect("open sqlite");
    let engine = Arc::new(engine);
    let tier: Arc<dyn CacheTier> = Arc::new(SqliteCacheStore::new(Arc::clone(&engine)));
    (Store::Sqlite(engine), tier, directory)
}

async fn open_postgres_store(base_url: &str) -> (Store, Arc<dyn CacheTier>) {
    let url = isolated_postgres_url(base_url, "cache_service_conformance").await;
    let breaker = Arc::new(CircuitBreaker::new("postgres", BreakerConfig::default()));
    let engine = PostgresEngine::connect(
        &url,
        &PostgresConfig::default(),
        breaker,
        ENGINE_CALL_TIMEOUT,
    )
    .await
    .expect("connect to the test postgres");
    let tier: Arc<dyn CacheTier> = Arc::new(PostgresCacheStore::new(Arc::clone(&engine)));
    (Store::Postgres(engine), tier)
}

async fn open_redis(url: &str) -> (Arc<RedisEngine>, Arc<dyn CacheTier>) {
    let engine = plinth_engines::test_support::connected_redis(url).await;
    let tier: Arc<dyn CacheTier> = Arc::new(RedisCacheTier::new(Arc::clone(&engine)));
    (engine, tier)
}

fn unique_keyspace_name(case: &str) -> ResourceName {
    let name = format!("{case}-{:016x}", rand::random::<u64>());
    ResourceName::parse("keyspace", &name).expect("a valid keyspace name")
}

/// One Redis entry hash, fields as stored.
struct RawRedisEntry {
    redis_key: String,
    fields: HashMap<String, Vec<u8>>,
}

impl RawRedisEntry {
    /// `flags` bits: 1 compressed, 2 encrypted (see `redis_tier`).
    fn encoded_copy(&self) -> EncodedCopy {
        let flags: u8 = self
            .fields
            .get("flags")
            .and_then(|flags| std::str::from_utf8(flags).ok())
            .and_then(|flags| flags.parse().ok())
            .unwrap_or_else(|| panic!("{} has no readable flags field", self.redis_key));
        EncodedCopy {
            value: self.fields.get("value").cloned().unwrap_or_default(),
            compressed: flags & 1 != 0,
            encrypted: flags & 2 != 0,
        }
    }
}

/// A value as a tier that holds encoded values keeps it.
struct EncodedCopy {
    value: Vec<u8>,
    compressed: bool,
    encrypted: bool,
}

// ---------------------------------------------------------------------------
// One keyspace as a case uses it
// ---------------------------------------------------------------------------

/// A keyspace of one tenant, reached through one service (node).
struct Space {
    service: Arc<CacheService>,
    tenant: TenantId,
    name: ResourceName,
}

impl Space {
    /// The same keyspace reached through another node.
    fn on(&self, service: &Arc<CacheService>) -> Space {
        Space {
            service: Arc::clone(service),
            tenant: self.tenant.clone(),
            name: self.name.clone(),
        }
    }

    async fn record(&self) -> KeyspaceRecord {
        self.service
            .keyspace(&self.tenant, &self.name)
            .await
            .expect("read the keyspace record")
    }

    async fn try_put(&self, key: &CacheKey, write: CacheWrite) -> Result<Revision, Error> {
        self.service.put(&self.tenant, &self.name, key, write).await
    }

    async fn put_write(&self, key: &CacheKey, write: CacheWrite) -> Revision {
        self.try_put(key, write)
            .await
            .unwrap_or_else(|error| panic!("put `{}`: {error:?}", key.as_str()))
    }

    async fn put_text(&self, key: &CacheKey, value: &str) -> Revision {
        self.put_write(key, text_write(value)).await
    }

    async fn read(&self, key: &CacheKey, consistency: Consistency) -> Option<CacheRead> {
        self.service
            .get(&self.tenant, &self.name, key, consistency)
            .await
            .unwrap_or_else(|error| panic!("get `{}`: {error:?}", key.as_str()))
    }

    /// The value an eventual read returns, as text.
    async fn eventual_text(&self, key: &CacheKey) -> Option<String> {
        self.read(key, Consistency::Eventual).await.map(read_text)
    }

    /// The value a strong read returns, as text.
    async fn strong_text(&self, key: &CacheKey) -> Option<String> {
        self.read(key, Consistency::Strong).await.map(read_text)
    }

    async fn delete(
        &self,
        key: &CacheKey,
        condition: WriteCondition,
    ) -> Result<Option<Revision>, Error> {
        self.service
            .delete(&self.tenant, &self.name, key, condition)
            .await
    }

    async fn increment(&self, key: &CacheKey, delta: i64) -> Result<(i64, Revision), Error> {
        self.service
            .increment(&self.tenant, &self.name, key, delta, None)
            .await
    }

    async fn invalidate(&self, selector: Selector) -> u64 {
        self.service
            .invalidate(&self.tenant, &self.name, &selector)
            .await
            .unwrap_or_else(|error| panic!("invalidate {selector:?}: {error:?}"))
    }

    async fn list_page(&self, prefix: &str, after: Option<&str>, limit: usize) -> KeyPage {
        self.service
            .list(&self.tenant, &self.name, prefix, after, limit)
            .await
            .unwrap_or_else(|error| panic!("list `{prefix}`: {error:?}"))
    }

    /// Every live key with `prefix`, page by page (bounded).
    async fn list_all(&self, prefix: &str, page_size: usize) -> Vec<String> {
        let mut keys = Vec::new();
        let mut after: Option<String> = None;
        for _ in 0..100 {
            let page = self.list_page(prefix, after.as_deref(), page_size).await;
            assert!(
                page.keys.len() <= page_size,
                "a page over its limit: {page:?}"
            );
            keys.extend(page.keys);
            match page.next_after {
                Some(next) => after = Some(next),
                None => return keys,
            }
        }
        panic!("listing `{prefix}` did not end within 100 pages");
    }
}

fn key(text: &str) -> CacheKey {
    CacheKey::parse(text).expect("a valid key")
}

fn text_write(value: &str) -> CacheWrite {
    CacheWrite {
        value: Bytes::copy_from_slice(value.as_bytes()),
        content_type: "text/plain".to_string(),
        ttl: None,
        tags: Vec::new(),
        condition: WriteCondition::Always,
    }
}

fn tagged_write(value: &str, tags: &[&str]) -> CacheWrite {
    CacheWrite {
        tags: tags.iter().map(|tag| tag.to_string()).collect(),
        ..text_write(value)
    }
}

fn conditional_write(value: &str, condition: WriteCondition) -> CacheWrite {
    CacheWrite {
        condition,
        ..text_write(value)
    }
}

fn read_text(read: CacheRead) -> String {
    String::from_utf8(read.entry.value.to_vec()).expect("a UTF-8 value")
}

fn assert_error<T: std::fmt::Debug>(
    result: Result<T, Error>,
    kind: ErrorKind,
    code: &str,
    context: &str,
) {
    match result {
        Ok(value) => panic!("{context}: expected {code}, got Ok({value:?})"),
        Err(error) => {
            assert_eq!(error.kind(), kind, "{context}: {error:?}");
            assert_eq!(error.code(), code, "{context}: {error:?}");
        }
    }
}

fn assert_precondition_failed<T: std::fmt::Debug>(result: Result<T, Error>, context: &str) {
    assert_error(
        result,
        ErrorKind::PreconditionFailed,
        "precondition_failed",
        context,
    );
}

/// Whether `haystack` contains `needle` anywhere.
fn contains_bytes(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

async fn next_event(events: &mut broadcast::Receiver<CacheEvent>, expected: &str) -> CacheEvent {
    match tokio::time::timeout(EVENT_WAIT, events.recv()).await {
        Ok(Ok(event)) => event,
        Ok(Err(error)) => panic!("the event bus failed while waiting for {expected}: {error}"),
        Err(_) => panic!("no change event within {EVENT_WAIT:?}; expected {expected}"),
    }
}

// ---------------------------------------------------------------------------
// Cases: TTLs
// ---------------------------------------------------------------------------

pub async fn ttl_expiry_makes_the_key_absent_and_the_remaining_ttl_decreases(fixture: &Fixture) {
    let space = fixture.keyspace("ttl-expiry").await;
    let expiring = key("session:1");
    let lasting = key("session:2");
    let ttl = Duration::from_secs(1);
    space
        .put_write(
            &expiring,
            CacheWrite {
                ttl: Some(ttl),
                ..text_write("short-lived")
            },
        )
        .await;
    space.put_text(&lasting, "no ttl").await;

    let eventual = space
        .read(&expiring, Consistency::Eventual)
        .await
        .expect("present right after the write");
    let expires_at_ms = eventual.entry.expires_at_ms.expect("written with a ttl");
    assert_eq!(
        expires_at_ms,
        eventual.entry.written_at_ms + ttl.as_millis() as u64,
        "expiry is the write time plus the ttl"
    );
    let first_remaining = eventual
        .entry
        .remaining_ttl_ms(now_ms())
        .expect("written with a ttl");
    assert!(
        first_remaining > 0 && first_remaining <= 1000,
        "remaining ttl {first_remaining} ms"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    let strong = space
        .read(&expiring, Consistency::Strong)
        .await
        .expect("still present before its ttl");
    assert_eq!(
        strong.entry.expires_at_ms,
        Some(expires_at_ms),
        "every tier keeps the same expiry"
    );
    let second_remaining = strong
        .entry
        .remaining_ttl_ms(now_ms())
        .expect("written with a ttl");
    assert!(
        second_remaining < first_remaining,
        "the remaining ttl decreases: {first_remaining} then {second_remaining} ms"
    );

    let until_expiry = expires_at_ms.saturating_sub(now_ms()) + 30;
    tokio::time::sleep(Duration::from_millis(until_expiry)).await;
    assert!(
        space.read(&expiring, Consistency::Eventual).await.is_none(),
        "eventual read after expiry"
    );
    assert!(
        space.read(&expiring, Consistency::Strong).await.is_none(),
        "strong read after expiry"
    );
    assert!(
        space
            .read(&expiring, Consistency::Session(0))
            .await
            .is_none(),
        "session read after expiry"
    );
    assert_eq!(
        space.list_all("session:", 10).await,
        vec!["session:2".to_string()]
    );
    assert_eq!(
        space.eventual_text(&lasting).await.as_deref(),
        Some("no ttl")
    );
    // An expired key counts as absent for create-only writes.
    space
        .put_write(
            &expiring,
            conditional_write("recreated", WriteCondition::Absent),
        )
        .await;
    assert_eq!(
        space.strong_text(&expiring).await.as_deref(),
        Some("recreated")
    );
}

pub async fn default_ttl_of_the_keyspace_applies_to_writes_without_a_ttl(fixture: &Fixture) {
    let space = fixture
        .keyspace_with("default-ttl", |config| {
            config.default_ttl = Some(HumanDuration::from_secs(60));
        })
        .await;
    let defaulted = key("defaulted");
    let explicit = key("explicit");
    let counter = key("counter");
    space.put_text(&defaulted, "uses the default").await;
    space
        .put_write(
            &explicit,
            CacheWrite {
                ttl: Some(Duration::from_secs(5)),
                ..text_write("own ttl")
            },
        )
        .await;
    space.increment(&counter, 1).await.expect("increment");
    for (checked, expected_ttl_ms) in [(&defaulted, 60_000), (&explicit, 5_000), (&counter, 60_000)]
    {
        for consistency in [Consistency::Eventual, Consistency::Strong] {
            let read = space
                .read(checked, consistency)
                .await
                .unwrap_or_else(|| panic!("`{}` is present", checked.as_str()));
            assert_eq!(
                read.entry.expires_at_ms,
                Some(read.entry.written_at_ms + expected_ttl_ms),
                "`{}` read {consistency:?} from {}",
                checked.as_str(),
                read.tier
            );
        }
    }

    // A reconfigured default applies to the next write, without a restart.
    let mut config = fixture.combination.keyspace_config();
    config.default_ttl = None;
    space
        .service
        .configure(&space.tenant, &space.name, config)
        .await
        .expect("reconfigure");
    let forever = key("forever");
    space.put_text(&forever, "no default any more").await;
    let read = space
        .read(&forever, Consistency::Strong)
        .await
        .expect("present");
    assert_eq!(read.entry.expires_at_ms, None);
}

// ---------------------------------------------------------------------------
// Cases: ETags and conditional writes
// ---------------------------------------------------------------------------

pub async fn stale_if_match_and_create_only_on_an_existing_key_fail(fixture: &Fixture) {
    let space = fixture.keyspace("etag-conflicts").await;
    let profile = key("user:42:profile");
    let first = space
        .put_write(&profile, conditional_write("v1", WriteCondition::Absent))
        .await;
    assert_precondition_failed(
        space
            .try_put(&profile, conditional_write("again", WriteCondition::Absent))
            .await,
        "If-None-Match: * on an existing key",
    );
    let second = space
        .put_write(
            &profile,
            conditional_write("v2", WriteCondition::RevisionIs(first)),
        )
        .await;
    assert!(second > first, "revisions increase: {first} then {second}");
    assert_precondition_failed(
        space
            .try_put(
                &profile,
                conditional_write("stale", WriteCondition::RevisionIs(first)),
            )
            .await,
        "If-Match with the replaced revision",
    );
    let third = space.put_text(&profile, "v3").await;
    assert!(third > second, "revisions increase: {second} then {third}");
    for consistency in [Consistency::Eventual, Consistency::Strong] {
        let read = space.read(&profile, consistency).await.expect("present");
        assert_eq!(read_text(read.clone()), "v3", "{consistency:?}");
        assert_eq!(
            read.entry.revision, third,
            "{consistency:?} from {}",
            read.tier
        );
    }

    let absent = key("user:43:profile");
    assert_precondition_failed(
        space
            .try_put(
                &absent,
                conditional_write("ghost", WriteCondition::RevisionIs(third)),
            )
            .await,
        "If-Match on an absent key",
    );
    assert!(space.read(&absent, Consistency::Strong).await.is_none());
    assert!(space.read(&absent, Consistency::Eventual).await.is_none());
}

pub async fn delete_with_a_stale_if_match_is_refused_and_the_value_stays(fixture: &Fixture) {
    let space = fixture.keyspace("conditional-delete").await;
    let document = key("doc:1");
    let first = space.put_text(&document, "first").await;
    let second = space.put_text(&document, "second").await;
    assert_precondition_failed(
        space
            .delete(&document, WriteCondition::RevisionIs(first))
            .await,
        "delete with a stale If-Match",
    );
    assert_eq!(
        space.eventual_text(&document).await.as_deref(),
        Some("second")
    );
    assert_eq!(
        space.strong_text(&document).await.as_deref(),
        Some("second")
    );

    let deletion = space
        .delete(&document, WriteCondition::RevisionIs(second))
        .await
        .expect("delete with the current ETag")
        .expect("the key existed");
    assert!(deletion > second, "a deletion gets a newer revision");
    assert!(space.read(&document, Consistency::Eventual).await.is_none());
    assert!(space.read(&document, Consistency::Strong).await.is_none());
    assert_eq!(
        space
            .delete(&document, WriteCondition::Always)
            .await
            .expect("delete of an absent key"),
        None,
        "deleting an absent key reports it did not exist"
    );
    assert_precondition_failed(
        space
            .delete(&key("doc:never"), WriteCondition::RevisionIs(second))
            .await,
        "delete of an absent key with If-Match",
    );
    let rewritten = space.put_text(&document, "reborn").await;
    assert!(
        rewritten > deletion,
        "a write after a delete gets a newer revision"
    );
    assert_eq!(
        space.eventual_text(&document).await.as_deref(),
        Some("reborn")
    );
}

// ---------------------------------------------------------------------------
// Cases: invalidation
// ---------------------------------------------------------------------------

/// Writes every key, reads each once (filling L1), invalidates with
/// `selector` and checks that exactly `removed` went, from every tier.
async fn check_invalidation(
    space: &Space,
    writes: &[(&str, &[&str])],
    selector: Selector,
    removed: &[&str],
) {
    for (name, tags) in writes {
        space.put_write(&key(name), tagged_write(name, tags)).await;
        assert_eq!(
            space.eventual_text(&key(name)).await.as_deref(),
            Some(*name)
        );
    }
    let count = space.invalidate(selector.clone()).await;
    assert_eq!(count, removed.len() as u64, "{selector:?} count");
    for (name, _) in writes {
        let expected = (!removed.contains(name)).then(|| name.to_string());
        assert_eq!(
            space.eventual_text(&key(name)).await,
            expected,
            "eventual read of `{name}` after {selector:?} (no L1 copy may survive)"
        );
        assert_eq!(
            space.strong_text(&key(name)).await,
            expected,
            "strong read of `{name}`"
        );
    }
    assert_eq!(
        space.invalidate(selector.clone()).await,
        0,
        "{selector:?} a second time"
    );
}

pub async fn invalidate_by_pattern_removes_matches_from_every_tier(fixture: &Fixture) {
    let space = fixture.keyspace("invalidate-pattern").await;
    check_invalidation(
        &space,
        &[
            ("user:1:name", &[]),
            ("user:1:mail", &[]),
            ("user:10:name", &[]),
            ("user:2:name", &[]),
            ("USER:1:name", &[]),
        ],
        Selector::Pattern("user:1:*".to_string()),
        &["user:1:name", "user:1:mail"],
    )
    .await;
    check_invalidation(
        &space,
        &[("order:a1", &[]), ("order:b1", &[]), ("order:a12", &[])],
        Selector::Pattern("order:?1".to_string()),
        &["order:a1", "order:b1"],
    )
    .await;
}

pub async fn invalidate_by_prefix_removes_matches_from_every_tier(fixture: &Fixture) {
    let space = fixture.keyspace("invalidate-prefix").await;
    check_invalidation(
        &space,
        &[
            ("cart:alice", &[]),
            ("cart:bob", &[]),
            ("cartography", &[]),
            ("carts", &[]),
            ("other:cart:x", &[]),
        ],
        Selector::Prefix("cart:".to_string()),
        &["cart:alice", "cart:bob"],
    )
    .await;
}

pub async fn invalidate_by_tag_removes_matches_from_every_tier(fixture: &Fixture) {
    let space = fixture.keyspace("invalidate-tag").await;
    check_invalidation(
        &space,
        &[
            ("product:1", &["red"]),
            ("product:2", &["red", "blue"]),
            ("product:3", &["blue"]),
            ("product:4", &[]),
            ("product:5", &["reddish"]),
        ],
        Selector::Tag("red".to_string()),
        &["product:1", "product:2"],
    )
    .await;
    assert_eq!(space.invalidate(Selector::Tag("blue".to_string())).await, 1);
    assert!(space.strong_text(&key("product:3")).await.is_none());

    // A key rewritten without the tag is no longer selected by it.
    let retagged = key("product:6");
    space
        .put_write(&retagged, tagged_write("tagged", &["green"]))
        .await;
    space
        .put_write(&retagged, tagged_write("untagged", &[]))
        .await;
    assert_eq!(
        space.invalidate(Selector::Tag("green".to_string())).await,
        0
    );
    assert_eq!(
        space.eventual_text(&retagged).await.as_deref(),
        Some("untagged")
    );
}

// ---------------------------------------------------------------------------
// Cases: versioned flush and listing
// ---------------------------------------------------------------------------

pub async fn flush_makes_every_key_unreachable_and_reclaim_removes_old_rows(fixture: &Fixture) {
    let space = fixture.keyspace("versioned-flush").await;
    let names = ["a", "b", "c"];
    for name in names {
        space
            .put_write(&key(name), tagged_write(name, &["t"]))
            .await;
        assert_eq!(space.eventual_text(&key(name)).await.as_deref(), Some(name));
    }
    let before = space.record().await;
    let flushed_at = now_ms();
    let flushed = space
        .service
        .flush(&space.tenant, &space.name)
        .await
        .expect("flush");
    assert_eq!(
        flushed.version,
        before.version + 1,
        "a flush bumps the version"
    );
    assert!(
        flushed.version_changed_at_ms >= flushed_at,
        "the transition time is recorded"
    );
    assert_eq!(space.record().await.version, flushed.version);
    for name in names {
        for consistency in [
            Consistency::Eventual,
            Consistency::Strong,
            Consistency::Session(0),
        ] {
            assert!(
                space.read(&key(name), consistency).await.is_none(),
                "`{name}` unreachable after the flush ({consistency:?})"
            );
        }
    }
    assert!(
        space.list_all("", 10).await.is_empty(),
        "no key listed after the flush"
    );
    assert_eq!(space.invalidate(Selector::Tag("t".to_string())).await, 0);

    space.put_text(&key("a"), "after the flush").await;
    assert_eq!(
        space.eventual_text(&key("a")).await.as_deref(),
        Some("after the flush")
    );
    assert_eq!(
        space.strong_text(&key("a")).await.as_deref(),
        Some("after the flush")
    );
    assert_eq!(space.list_all("", 10).await, vec!["a".to_string()]);

    let old_row_before_reclaim = fixture
        .raw_store_entry(&space, before.version, &key("b"))
        .await;
    assert_eq!(
        old_row_before_reclaim.is_some(),
        fixture.combination.uses_store(),
        "the store keeps old rows until they are reclaimed"
    );
    let reclaimed = space
        .service
        .reclaim(&space.tenant, &space.name, 100)
        .await
        .expect("reclaim");
    assert!(
        reclaimed >= names.len() as u64,
        "reclaim removed {reclaimed} entries; the authoritative tier alone held {}",
        names.len()
    );
    assert_eq!(
        space
            .service
            .reclaim(&space.tenant, &space.name, 100)
            .await
            .expect("reclaim again"),
        0,
        "nothing of the old version is left"
    );
    assert!(
        fixture
            .raw_store_entry(&space, before.version, &key("b"))
            .await
            .is_none()
    );
    let old_redis_keys: Vec<String> = fixture
        .raw_redis_entries(&space, "b")
        .await
        .into_iter()
        .map(|entry| entry.redis_key)
        .collect();
    assert!(
        old_redis_keys.is_empty(),
        "redis still holds old-version entries: {old_redis_keys:?}"
    );
    assert_eq!(
        space.strong_text(&key("a")).await.as_deref(),
        Some("after the flush")
    );
}

pub async fn listing_by_prefix_pages_through_live_keys(fixture: &Fixture) {
    let space = fixture.keyspace("listing").await;
    for index in 0..8 {
        space.put_text(&key(&format!("item:{index:02}")), "x").await;
    }
    for other in ["itemless", "other:1", "ITEM:09"] {
        space.put_text(&key(other), "x").await;
    }
    space
        .delete(&key("item:03"), WriteCondition::Always)
        .await
        .expect("delete");
    space
        .put_write(
            &key("item:99"),
            CacheWrite {
                ttl: Some(Duration::from_millis(1)),
                ..text_write("expires at once")
            },
        )
        .await;
    tokio::time::sleep(Duration::from_millis(5)).await;

    let expected: Vec<String> = [0, 1, 2, 4, 5, 6, 7]
        .iter()
        .map(|index| format!("item:{index:02}"))
        .collect();
    let first = space.list_page("item:", None, 3).await;
    assert_eq!(first.keys, expected[..3].to_vec());
    let after_first = first.next_after.expect("more pages");
    let second = space.list_page("item:", Some(&after_first), 3).await;
    assert_eq!(second.keys, expected[3..6].to_vec());
    let after_second = second.next_after.expect("a last page");
    let third = space.list_page("item:", Some(&after_second), 3).await;
    assert_eq!(third.keys, expected[6..].to_vec());
    assert_eq!(third.next_after, None, "the last page says so");
    assert_eq!(space.list_all("item:", 2).await, expected);
    let everything = space.list_all("", 4).await;
    let sorted: BTreeSet<&String> = everything.iter().collect();
    assert_eq!(
        everything.len(),
        sorted.len(),
        "no key twice: {everything:?}"
    );
    assert_eq!(everything.len(), expected.len() + 3, "{everything:?}");
    assert!(
        everything.windows(2).all(|pair| pair[0] < pair[1]),
        "byte order: {everything:?}"
    );
    assert!(space.list_all("nothing-here:", 5).await.is_empty());
}

// ---------------------------------------------------------------------------
// Cases: counters
// ---------------------------------------------------------------------------

pub async fn counters_start_from_absent_and_add_up(fixture: &Fixture) {
    let space = fixture.keyspace("counters").await;
    let visits = key("visits");
    let (one, first_revision) = space.increment(&visits, 1).await.expect("increment");
    assert_eq!(one, 1, "an absent counter starts at zero");
    let (two, second_revision) = space.increment(&visits, 1).await.expect("increment");
    assert_eq!(two, 2);
    assert!(second_revision > first_revision);
    assert_eq!(space.increment(&visits, -5).await.expect("decrement").0, -3);
    let (seven, last_revision) = space.increment(&visits, 10).await.expect("increment");
    assert_eq!(seven, 7);
    for consistency in [Consistency::Eventual, Consistency::Strong] {
        let read = space.read(&visits, consistency).await.expect("present");
        assert_eq!(
            read.entry.revision, last_revision,
            "{consistency:?} from {}",
            read.tier
        );
        assert_eq!(read_text(read), "7", "{consistency:?}");
    }

    let written = key("written");
    space.put_text(&written, "41").await;
    assert_eq!(space.increment(&written, 1).await.expect("increment").0, 42);
    assert_eq!(space.strong_text(&written).await.as_deref(), Some("42"));
    assert_error(
        space.increment(&written, i64::MAX).await,
        ErrorKind::Conflict,
        "counter_overflow",
        "an increment past i64::MAX",
    );
    assert_eq!(space.strong_text(&written).await.as_deref(), Some("42"));
}

pub async fn concurrent_increments_from_sixteen_tasks_sum_exactly(fixture: &Fixture) {
    const TASKS: i64 = 16;
    const INCREMENTS_PER_TASK: i64 = 20;
    let space = fixture.keyspace("concurrent-counter").await;
    let counter = key("hits");
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let service = Arc::clone(&space.service);
        let (tenant, name, counter) = (space.tenant.clone(), space.name.clone(), counter.clone());
        tasks.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            for _ in 0..INCREMENTS_PER_TASK {
                let (value, _) = service
                    .increment(&tenant, &name, &counter, 1, None)
                    .await
                    .expect("increment");
                seen.push(value);
            }
            seen
        }));
    }
    let mut values = Vec::new();
    for task in tasks {
        values.extend(task.await.expect("the increment task"));
    }
    values.sort_unstable();
    let total = TASKS * INCREMENTS_PER_TASK;
    assert_eq!(
        values,
        (1..=total).collect::<Vec<i64>>(),
        "every increment saw a distinct value: none lost, none doubled"
    );
    assert_eq!(space.strong_text(&counter).await, Some(total.to_string()));
    assert_eq!(space.eventual_text(&counter).await, Some(total.to_string()));
}

pub async fn increment_of_a_non_integer_value_is_not_a_counter(fixture: &Fixture) {
    let space = fixture.keyspace("not-a-counter").await;
    let word = key("word");
    let revision = space.put_text(&word, "twelve").await;
    assert_error(
        space.increment(&word, 1).await,
        ErrorKind::Conflict,
        "not_a_counter",
        "incrementing text",
    );
    let read = space
        .read(&word, Consistency::Strong)
        .await
        .expect("present");
    assert_eq!(read.entry.revision, revision, "the value was not touched");
    assert_eq!(read_text(read), "twelve");
    let binary = key("binary");
    space
        .put_write(
            &binary,
            CacheWrite {
                value: Bytes::from_static(&[0xff, 0x00, 0x31]),
                ..text_write("")
            },
        )
        .await;
    assert_error(
        space.increment(&binary, 1).await,
        ErrorKind::Conflict,
        "not_a_counter",
        "incrementing bytes",
    );
    assert_eq!(
        space
            .read(&binary, Consistency::Eventual)
            .await
            .expect("present")
            .entry
            .value,
        Bytes::from_static(&[0xff, 0x00, 0x31])
    );
}

pub async fn an_integer_above_the_compression_threshold_stays_incrementable(fixture: &Fixture) {
    let space = fixture
        .keyspace_with("compressed-counter", |config| {
            config.compression_threshold = Some(8);
        })
        .await;
    let big = key("big");
    // 10^18 is a plain decimal integer that lz4 shrinks (18 zeros).
    space.put_text(&big, "1000000000000000000").await;
    // Integers are kept uncompressed so the tiers can increment them in place.
    for (tier, copy) in fixture.raw_encoded_copies(&space, &big).await {
        assert!(
            !copy.compressed,
            "{tier}: an integer value was stored compressed"
        );
    }
    let incremented = space.increment(&big, 1).await;
    assert!(
        matches!(incremented, Ok((1_000_000_000_000_000_001, _))),
        "{:?}: incrementing an integer written with a compressed copy gave {incremented:?}",
        fixture.combination
    );
    assert_eq!(
        space.strong_text(&big).await.as_deref(),
        Some("1000000000000000001")
    );
}

// ---------------------------------------------------------------------------
// Cases: consistency modes
// ---------------------------------------------------------------------------

pub async fn eventual_reads_answer_from_the_fastest_tier_and_fill_it(fixture: &Fixture) {
    let combination = fixture.combination;
    let space = fixture.keyspace("eventual-reads").await;
    let greeting = key("greeting");
    let revision = space.put_text(&greeting, "hello").await;
    for _ in 0..2 {
        let read = space
            .read(&greeting, Consistency::Eventual)
            .await
            .expect("present");
        assert_eq!(read.tier, combination.fastest_tier(), "{combination:?}");
        assert_eq!(read.entry.revision, revision);
        assert_eq!(read_text(read), "hello");
    }

    // Another node has no copy of its own yet: its first read comes from the
    // fastest shared tier and fills its L1, which answers the next one.
    let Some(shared_tier) = combination.fastest_shared_tier() else {
        let other = space.on(&fixture.another_node());
        assert!(
            other.read(&greeting, Consistency::Eventual).await.is_none(),
            "an L1-only keyspace is private to its node"
        );
        return;
    };
    let other = space.on(&fixture.another_node());
    let first = other
        .read(&greeting, Consistency::Eventual)
        .await
        .expect("present on the other node");
    assert_eq!(first.tier, shared_tier, "{combination:?}");
    assert_eq!(first.entry.revision, revision);
    let second = other
        .read(&greeting, Consistency::Eventual)
        .await
        .expect("present on the other node");
    assert_eq!(
        second.tier,
        combination.fastest_tier(),
        "{combination:?}: filled on the way back"
    );
    assert_eq!(read_text(second), "hello");
}

pub async fn strong_reads_answer_from_the_authoritative_tier(fixture: &Fixture) {
    let combination = fixture.combination;
    let space = fixture.keyspace("strong-reads").await;
    let balance = key("balance");
    let revision = space.put_text(&balance, "100").await;
    assert!(space.read(&balance, Consistency::Eventual).await.is_some());
    for _ in 0..3 {
        let read = space
            .read(&balance, Consistency::Strong)
            .await
            .expect("present");
        assert_eq!(
            read.tier,
            combination.authoritative_tier(),
            "{combination:?}"
        );
        assert_eq!(read.entry.revision, revision);
        assert_eq!(read_text(read), "100");
    }
    assert!(
        space
            .read(&key("absent"), Consistency::Strong)
            .await
            .is_none()
    );
}

pub async fn session_reads_never_return_a_copy_older_than_the_token(fixture: &Fixture) {
    let combination = fixture.combination;
    let space = fixture.keyspace("session-reads").await;
    let profile = key("profile");
    let first = space.put_text(&profile, "v1").await;
    let own = space
        .read(&profile, Consistency::Session(first))
        .await
        .expect("a session reads its own write");
    assert_eq!(own.entry.revision, first);
    assert_eq!(read_text(own), "v1");
    if combination.fastest_shared_tier().is_none() {
        return;
    }

    // This node's L1 now holds v1; another node writes v2 through the
    // shared tiers, leaving that copy stale here.
    assert_eq!(space.eventual_text(&profile).await.as_deref(), Some("v1"));
    let other = space.on(&fixture.another_node());
    let second = other.put_text(&profile, "v2").await;
    assert!(
        second > first,
        "revisions increase across nodes: {first} then {second}"
    );

    let eventual = space
        .read(&profile, Consistency::Eventual)
        .await
        .expect("present");
    if combination.has_l1() {
        // Coherence is off in this suite, so the stale copy is certain.
        assert_eq!(
            (eventual.tier, eventual.entry.revision),
            ("l1", first),
            "this node's L1 still holds v1: the stale copy a session read must skip"
        );
    } else {
        assert_eq!(
            eventual.entry.revision, second,
            "no copy tier, nothing stale"
        );
    }
    let session = space
        .read(&profile, Consistency::Session(second))
        .await
        .expect("present");
    assert!(
        session.entry.revision >= second,
        "{combination:?}: a session read with token {second} returned revision {} from {}",
        session.entry.revision,
        session.tier
    );
    assert_eq!(read_text(session), "v2");
    let strong = space
        .read(&profile, Consistency::Strong)
        .await
        .expect("present");
    assert_eq!(strong.tier, combination.authoritative_tier());
    assert_eq!(strong.entry.revision, second);
    assert_eq!(read_text(strong), "v2");
    // The session read replaced the stale copy on its way back.
    assert_eq!(space.eventual_text(&profile).await.as_deref(), Some("v2"));

    // A deletion on the other node: a session holding its token must not
    // see the value this node still has a copy of.
    let deletion = other
        .delete(&profile, WriteCondition::Always)
        .await
        .expect("delete on the other node")
        .expect("the key existed");
    let after_delete = space.read(&profile, Consistency::Session(deletion)).await;
    assert!(
        after_delete.is_none(),
        "{combination:?}: a session read with the deletion's token {deletion} returned revision {:?}",
        after_delete.map(|read| (read.entry.revision, read.tier))
    );
    assert!(space.read(&profile, Consistency::Strong).await.is_none());
}

// ---------------------------------------------------------------------------
// Cases: values, compression, encryption, limits
// ---------------------------------------------------------------------------

pub async fn values_content_types_and_tags_round_trip_byte_for_byte(fixture: &Fixture) {
    let space = fixture.keyspace("round-trip").await;
    let binary: Vec<u8> = (0..=255u8).chain([0, 0, 0, 255, 0]).collect();
    let cases: [(&str, Vec<u8>, &str, Vec<String>); 3] = [
        (
            "binary",
            binary,
            "application/x-test; charset=binary",
            vec!["a".to_string(), "b:c".to_string()],
        ),
        (
            "text",
            "héllo wörld\n".as_bytes().to_vec(),
            "text/plain; charset=utf-8",
            vec![],
        ),
        ("empty", Vec::new(), "application/octet-stream", vec![]),
    ];
    let other = fixture
        .combination
        .fastest_shared_tier()
        .map(|_| space.on(&fixture.another_node()));
    for (name, value, content_type, tags) in &cases {
        let written = key(name);
        let revision = space
            .put_write(
                &written,
                CacheWrite {
                    value: Bytes::from(value.clone()),
                    content_type: content_type.to_string(),
                    ttl: None,
                    tags: tags.clone(),
                    condition: WriteCondition::Always,
                },
            )
            .await;
        let mut readers = vec![&space];
        readers.extend(other.as_ref());
        for reader in readers {
            for consistency in [Consistency::Eventual, Consistency::Strong] {
                let read = reader
                    .read(&written, consistency)
                    .await
                    .unwrap_or_else(|| panic!("`{name}` present ({consistency:?})"));
                let context = format!("`{name}` {consistency:?} from {}", read.tier);
                assert_eq!(read.entry.value.as_ref(), value.as_slice(), "{context}");
                assert_eq!(read.entry.content_type, *content_type, "{context}");
                assert_eq!(read.entry.tags, *tags, "{context}");
                assert_eq!(read.entry.revision, revision, "{context}");
                assert!(!read.entry.tombstone, "{context}");
            }
        }
    }
}

pub async fn values_above_the_compression_threshold_are_stored_compressed(fixture: &Fixture) {
    let space = fixture
        .keyspace_with("compression", |config| {
            config.compression_threshold = Some(256);
        })
        .await;
    let large = key("large");
    let small = key("small");
    let large_value = "compressible text, ".repeat(1000);
    let small_value = "compressible text, ".repeat(5);
    space.put_text(&large, &large_value).await;
    space.put_text(&small, &small_value).await;
    for consistency in [Consistency::Eventual, Consistency::Strong] {
        assert_eq!(
            space.read(&large, consistency).await.map(read_text),
            Some(large_value.clone())
        );
        assert_eq!(
            space.read(&small, consistency).await.map(read_text),
            Some(small_value.clone())
        );
    }
    if fixture.combination.fastest_shared_tier().is_some() {
        let other = space.on(&fixture.another_node());
        assert_eq!(other.eventual_text(&large).await, Some(large_value.clone()));
    }
    for (tier, copy) in fixture.raw_encoded_copies(&space, &large).await {
        assert!(copy.compressed, "{tier} keeps the large value compressed");
        assert!(!copy.encrypted, "{tier}: not an encrypted keyspace");
        assert!(
            copy.value.len() < large_value.len() / 4,
            "{tier} holds {} bytes for a {}-byte value",
            copy.value.len(),
            large_value.len()
        );
    }
    for (tier, copy) in fixture.raw_encoded_copies(&space, &small).await {
        assert!(!copy.compressed, "{tier}: below the threshold");
        assert_eq!(copy.value, small_value.as_bytes(), "{tier}");
    }
}

pub async fn encrypted_keyspaces_keep_the_plaintext_out_of_shared_tiers(fixture: &Fixture) {
    let space = fixture
        .keyspace_with("encryption", |config| {
            config.encrypt = true;
            config.compression_threshold = Some(512);
        })
        .await;
    let secret_marker = b"TOP-SECRET-launch-code";
    let short_secret = key("short");
    let long_secret = key("long");
    let short_value = [secret_marker.as_slice(), b" 0000"].concat();
    let long_value = secret_marker.repeat(200);
    for (written, value) in [(&short_secret, &short_value), (&long_secret, &long_value)] {
        space
            .put_write(
                written,
                CacheWrite {
                    value: Bytes::from(value.clone()),
                    ..text_write("")
                },
            )
            .await;
        for consistency in [Consistency::Eventual, Consistency::Strong] {
            let read = space.read(written, consistency).await.expect("present");
            assert_eq!(
                read.entry.value.as_ref(),
                value.as_slice(),
                "{consistency:?} from {}",
                read.tier
            );
        }
        if fixture.combination.fastest_shared_tier().is_some() {
            let other = space.on(&fixture.another_node());
            let read = other
                .read(written, Consistency::Eventual)
                .await
                .expect("present");
            assert_eq!(
                read.entry.value.as_ref(),
                value.as_slice(),
                "another node decrypts it"
            );
        }
        for (tier, copy) in fixture.raw_encoded_copies(&space, written).await {
            assert!(copy.encrypted, "{tier} says the value is encrypted");
            assert!(
                !contains_bytes(&copy.value, secret_marker),
                "{tier} holds the plaintext"
            );
        }
    }
    for (tier, copy) in fixture.raw_encoded_copies(&space, &long_secret).await {
        assert!(
            copy.compressed,
            "{tier}: compressed before it was encrypted"
        );
    }
}

pub async fn values_over_max_value_bytes_are_refused_and_nothing_is_written(fixture: &Fixture) {
    let space = fixture
        .keyspace_with("max-value-bytes", |config| {
            config.max_value_bytes = 16;
        })
        .await;
    let mut events = space.service.subscribe();
    let existing = key("existing");
    let fresh = key("fresh");
    let revision = space.put_text(&existing, &"x".repeat(16)).await;
    assert_error(
        space.try_put(&existing, text_write(&"y".repeat(17))).await,
        ErrorKind::PayloadTooLarge,
        "value_too_large",
        "overwrite with 17 bytes",
    );
    assert_error(
        space.try_put(&fresh, text_write(&"y".repeat(17))).await,
        ErrorKind::PayloadTooLarge,
        "value_too_large",
        "create with 17 bytes",
    );
    for consistency in [Consistency::Eventual, Consistency::Strong] {
        let read = space.read(&existing, consistency).await.expect("present");
        assert_eq!(read.entry.revision, revision, "{consistency:?}");
        assert_eq!(read_text(read), "x".repeat(16));
        assert!(
            space.read(&fresh, consistency).await.is_none(),
            "{consistency:?}"
        );
    }
    assert_eq!(space.list_all("", 10).await, vec!["existing".to_string()]);
    let only_event = next_event(&mut events, "the accepted write").await;
    assert_eq!(
        only_event.change,
        CacheChange::Set {
            key: "existing".to_string(),
            revision
        }
    );
    assert!(
        matches!(
            events.try_recv(),
            Err(broadcast::error::TryRecvError::Empty)
        ),
        "refused writes emit no event"
    );
}

// ---------------------------------------------------------------------------
// Cases: change events and tenants
// ---------------------------------------------------------------------------

pub async fn change_events_report_every_set_delete_invalidate_and_flush(fixture: &Fixture) {
    let space = fixture.keyspace("change-events").await;
    let mut events = space.service.subscribe();
    let first = key("first");
    let tagged = key("tagged");
    let counter = key("counter");
    let first_revision = space.put_text(&first, "1").await;
    let tagged_revision = space
        .put_write(&tagged, tagged_write("2", &["group"]))
        .await;
    assert_precondition_failed(
        space
            .try_put(&first, conditional_write("refused", WriteCondition::Absent))
            .await,
        "create-only on an existing key",
    );
    let deletion = space
        .delete(&first, WriteCondition::Always)
        .await
        .expect("delete")
        .expect("existed");
    let (_, counter_revision) = space.increment(&counter, 3).await.expect("increment");
    let removed = space.invalidate(Selector::Tag("group".to_string())).await;
    assert_eq!(removed, 1);
    let flushed = space
        .service
        .flush(&space.tenant, &space.name)
        .await
        .expect("flush");

    let expected = [
        CacheChange::Set {
            key: "first".to_string(),
            revision: first_revision,
        },
        CacheChange::Set {
            key: "tagged".to_string(),
            revision: tagged_revision,
        },
        CacheChange::Delete {
            key: "first".to_string(),
            revision: deletion,
        },
        CacheChange::Set {
            key: "counter".to_string(),
            revision: counter_revision,
        },
        CacheChange::Invalidate {
            selector: "tag:group".to_string(),
            removed: 1,
        },
        CacheChange::Flush {
            version: flushed.version,
        },
    ];
    for expected_change in expected {
        let event = next_event(&mut events, &format!("{expected_change:?}")).await;
        assert_eq!(event.tenant, space.tenant);
        assert_eq!(event.keyspace, space.name);
        assert_eq!(event.change, expected_change);
    }
    assert!(
        matches!(
            events.try_recv(),
            Err(broadcast::error::TryRecvError::Empty)
        ),
        "no other event (the refused write emits none)"
    );
}

pub async fn tenants_with_the_same_keyspace_and_key_are_independent(fixture: &Fixture) {
    let alpha = fixture.keyspace("tenant-isolation").await;
    let tenant_b = TenantId::parse("tenant-b").expect("a valid tenant id");
    let beta = fixture
        .configured_space(&tenant_b, alpha.name.clone(), |_| {})
        .await;
    let shared_key = key("shared");
    alpha.put_text(&shared_key, "alpha").await;
    assert!(
        beta.read(&shared_key, Consistency::Eventual)
            .await
            .is_none()
    );
    assert!(beta.read(&shared_key, Consistency::Strong).await.is_none());
    beta.put_text(&shared_key, "beta").await;
    alpha.put_text(&key("only-alpha"), "a").await;
    assert_eq!(
        alpha.eventual_text(&shared_key).await.as_deref(),
        Some("alpha")
    );
    assert_eq!(
        beta.eventual_text(&shared_key).await.as_deref(),
        Some("beta")
    );
    assert_eq!(beta.list_all("", 10).await, vec!["shared".to_string()]);

    assert_eq!(
        alpha.invalidate(Selector::Prefix("sh".to_string())).await,
        1
    );
    assert_eq!(beta.strong_text(&shared_key).await.as_deref(), Some("beta"));
    alpha.put_text(&shared_key, "alpha again").await;
    let beta_version = beta.record().await.version;
    alpha
        .service
        .flush(&alpha.tenant, &alpha.name)
        .await
        .expect("flush alpha");
    assert_eq!(
        beta.record().await.version,
        beta_version,
        "beta's version is its own"
    );
    assert_eq!(
        beta.eventual_text(&shared_key).await.as_deref(),
        Some("beta")
    );
    assert!(alpha.read(&shared_key, Consistency::Strong).await.is_none());
    beta.delete(&shared_key, WriteCondition::Always)
        .await
        .expect("delete in beta");
    alpha
        .put_text(&shared_key, "alpha after beta's delete")
        .await;
    assert!(
        beta.read(&shared_key, Consistency::Eventual)
            .await
            .is_none()
    );
    assert_eq!(
        alpha.eventual_text(&shared_key).await.as_deref(),
        Some("alpha after beta's delete")
    );
}

// ---------------------------------------------------------------------------
// Cases: configuration changes
// ---------------------------------------------------------------------------

/// A copy tier that is switched off stops receiving writes; switched on
/// again, it must not answer with what it held before.
pub async fn copy_tiers_turned_off_and_on_again_never_serve_missed_writes(fixture: &Fixture) {
    let combination = fixture.combination;
    let space = fixture.keyspace("tier-toggle").await;
    let setting = key("setting");
    space.put_text(&setting, "v1").await;
    assert_eq!(space.eventual_text(&setting).await.as_deref(), Some("v1"));

    // Only the authoritative tier: every copy tier is off.
    let mut authoritative_only = combination.keyspace_config();
    if combination.uses_store() {
        authoritative_only.l1 = None;
        authoritative_only.l2 = SharedTierKind::None;
    } else if combination.uses_redis() {
        authoritative_only.l1 = None;
    }
    space
        .service
        .configure(&space.tenant, &space.name, authoritative_only)
        .await
        .expect("turn the copy tiers off");
    let second = space.put_text(&setting, "v2").await;
    space
        .service
        .configure(&space.tenant, &space.name, combination.keyspace_config())
        .await
        .expect("turn the copy tiers on again");

    let mut stale_answers = Vec::new();
    let this_node = space
        .read(&setting, Consistency::Eventual)
        .await
        .expect("present");
    if this_node.entry.revision != second {
        stale_answers.push(format!(
            "this node's {} answered revision {} instead of {second}",
            this_node.tier, this_node.entry.revision
        ));
    }
    if combination.fastest_shared_tier().is_some() {
        let other = space.on(&fixture.another_node());
        let other_node = other
            .read(&setting, Consistency::Eventual)
            .await
            .expect("present");
        if other_node.entry.revision != second {
            stale_answers.push(format!(
                "a fresh node's {} answered revision {} instead of {second}",
                other_node.tier, other_node.entry.revision
            ));
        }
    }
    assert!(
        stale_answers.is_empty(),
        "{combination:?}: eventual reads after the copy tiers came back: {}",
        stale_answers.join("; ")
    );
}
