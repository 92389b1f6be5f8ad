//! The conformance suite every [`CacheTier`] must pass: the in-process L1,
//! Redis and the durable stores.
//!
//! Each case is written once, against the trait, and
//! `tier_conformance_suite!(module_name, factory)` turns every case into
//! one `#[tokio::test]` for the tier the factory builds. A factory is an
//! `async fn() -> Option<TierUnderTest>`; `None` means its engine is not
//! available (plain `cargo test` without the engines: the test prints that
//! it skipped and passes; under `scripts/test.sh` the factory panics
//! instead, through `plinth_engines::test_support`).
//!
//! Every case works in a keyspace of its own, named after the case with a
//! random suffix, so tiers backed by one shared engine (one Redis, one
//! PostgreSQL schema) never see another case's keys.
//!
//! The suite covers what the authoritative tier promises (conditions,
//! revisions, counters) and what every tier promises for copies
//! (`put_if_newer`), so a store or Redis can be checked in both roles.

use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use plinth_core::config::{PostgresConfig, SqliteConfig};
use plinth_core::resilience::{BreakerConfig, CircuitBreaker};
use plinth_core::{Error, ResourceName, TenantId};
use plinth_engines::test_support::{isolated_postgres_url, postgres_url};
use plinth_engines::{PostgresEngine, SqliteEngine, Store};
use tokio::sync::Barrier;

use crate::l1::{EvictionKind, L1Settings, L1Tier};
use crate::migrations::CACHE_MIGRATIONS;
use crate::model::{CacheEntry, CacheKey, KeyspaceScope, Revision, Selector, WriteCondition};
use crate::store_postgres::PostgresCacheStore;
use crate::store_sqlite::SqliteCacheStore;
use crate::tier::{CacheTier, ConditionalOutcome, KeyPage};

/// One tier built for one test, with whatever must outlive it (a temporary
/// directory, an engine) in `_guard`.
pub struct TierUnderTest {
    pub tier: Arc<dyn CacheTier>,
    pub _guard: Box<dyn Any + Send + Sync>,
}

/// Expands to `mod $module { ... }` with one `#[tokio::test]` per case,
/// each building a fresh tier with `$factory` (an
/// `async fn() -> Option<TierUnderTest>`, resolved from the module that
/// invokes the macro).
macro_rules! tier_conformance_suite {
    ($module:ident, $factory:path) => {
        mod $module {
            // Lets a factory be named relative to the invoking module; an
            // absolute path leaves the import unused.
            #[allow(unused_imports)]
            use super::*;

            tier_conformance_suite!(@cases $factory;
                get_of_an_absent_key_is_none,
                put_then_get_round_trips_every_field,
                revisions_strictly_increase_across_writes,
                create_only_fails_when_present_and_reports_the_current_revision,
                revision_conditions_hold_only_for_the_live_revision,
                expired_entries_read_as_absent_and_count_as_absent,
                delete_of_an_absent_key_is_applied,
                delete_with_a_stale_revision_fails,
                delete_then_get_is_none,
                versions_isolate_and_reclaim_removes_older_versions,
                increment_of_an_absent_key_starts_at_zero,
                increment_of_an_existing_counter_keeps_tags_and_expiry,
                increment_of_a_non_integer_is_not_a_counter,
                increment_past_the_integer_range_is_an_overflow,
                put_if_newer_replaces_only_with_a_higher_revision,
                invalidate_by_pattern_matches_globs_and_escapes_sql_wildcards,
                invalidate_by_prefix_treats_sql_wildcards_literally,
                invalidate_by_tag_removes_only_that_tag,
                invalidate_counts_only_live_entries,
                list_pages_through_live_keys_in_byte_order,
                concurrent_conditional_writers_of_one_revision_apply_once,
                concurrent_writers_of_one_key_leave_the_highest_revision,
                tenants_are_isolated,
            );
        }
    };
    (@cases $factory:path; $($case:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() {
                let Some(under_test) = $factory().await else {
                    return;
                };
                $crate::tier_conformance::$case(&under_test.tier).await;
            }
        )+
    };
}

tier_conformance_suite!(l1, open_l1);
tier_conformance_suite!(sqlite, open_sqlite);
tier_conformance_suite!(postgres, open_postgres);
tier_conformance_suite!(redis, open_redis);

const CALL_TIMEOUT: Duration = Duration::from_secs(10);
const MINUTE_MS: u64 = 60_000;

async fn open_l1() -> Option<TierUnderTest> {
    let tier = L1Tier::new(
        L1Settings {
            max_entries: 10_000,
            max_bytes: 64 * 1024 * 1024,
            ttl_cap: Duration::from_secs(3600),
            eviction: EvictionKind::TinyLfu,
        },
        Arc::default(),
    );
    Some(TierUnderTest {
        tier: Arc::new(tier),
        _guard: Box::new(()),
    })
}

async fn open_sqlite() -> Option<TierUnderTest> {
    let directory = tempfile::tempdir().expect("create a temporary directory");
    let breaker = Arc::new(CircuitBreaker::new("sqlite", BreakerConfig::default()));
    let engine = SqliteEngine::open(
        &directory.path().join("cache.db"),
        &SqliteConfig::default(),
        breaker,
        CALL_TIMEOUT,
    )
    .expect("open sqlite");
    let engine = Arc::new(engine);
    Store::Sqlite(Arc::clone(&engine))
        .migrate(&[&CACHE_MIGRATIONS])
        .await
        .expect("apply the cache migrations on sqlite");
    Some(TierUnderTest {
        tier: Arc::new(SqliteCacheStore::new(engine)),
        _guard: Box::new(directory),
    })
}

async fn open_postgres() -> Option<TierUnderTest> {
    let test_name = "cache_tier_postgres";
    let base_url = postgres_url(test_name)?;
    let url = isolated_postgres_url(&base_url, test_name).await;
    let breaker = Arc::new(CircuitBreaker::new("postgres", BreakerConfig::default()));
    let engine = PostgresEngine::connect(&url, &PostgresConfig::default(), breaker, CALL_TIMEOUT)
        .await
        .expect("connect to the test postgres");
    Store::Postgres(Arc::clone(&engine))
        .migrate(&[&CACHE_MIGRATIONS])
        .await
        .expect("apply the cache migrations on postgres");
    Some(TierUnderTest {
        tier: Arc::new(PostgresCacheStore::new(engine)),
        _guard: Box::new(()),
    })
}

async fn open_redis() -> Option<TierUnderTest> {
    let url = plinth_engines::test_support::redis_url("redis tier conformance")?;
    let engine = plinth_engines::test_support::connected_redis(&url).await;
    let tier = crate::redis_tier::RedisCacheTier::new(Arc::clone(&engine));
    Some(TierUnderTest {
        tier: Arc::new(tier),
        _guard: Box::new(engine),
    })
}

/// A keyspace no other case (or earlier run against a shared engine) uses.
fn fresh_scope(case: &str) -> KeyspaceScope {
    scope_for_tenant(TenantId::default_tenant(), case)
}

fn scope_for_tenant(tenant: TenantId, case: &str) -> KeyspaceScope {
    let keyspace = format!("{case}-{:016x}", rand::random::<u64>());
    KeyspaceScope {
        tenant,
        keyspace: ResourceName::parse("keyspace", &keyspace).expect("a valid keyspace name"),
        version: 1,
    }
}

fn key(text: &str) -> CacheKey {
    CacheKey::parse(text).expect("a valid key")
}

fn tenant(text: &str) -> TenantId {
    TenantId::parse(text).expect("a valid tenant id")
}

/// Entries are written relative to the real clock, because L1 and Redis
/// also expire entries by wall-clock time; cases then move `now_ms`
/// forward to observe expiry without sleeping.
fn start_of_case() -> u64 {
    crate::clock::now_ms()
}

fn text_entry(value: &str, written_at_ms: u64) -> CacheEntry {
    CacheEntry {
        value: Bytes::from(value.to_string()),
        encoding: Default::default(),
        content_type: "text/plain".to_string(),
        tags: Vec::new(),
        revision: 0,
        written_at_ms,
        expires_at_ms: None,
        tombstone: false,
    }
}

fn tagged_entry(value: &str, tags: &[&str], written_at_ms: u64) -> CacheEntry {
    let mut tag_list = Vec::with_capacity(tags.len());
    for tag in tags {
        tag_list.push((*tag).to_string());
    }
    CacheEntry {
        tags: tag_list,
        ..text_entry(value, written_at_ms)
    }
}

/// Writes unconditionally and returns the assigned revision.
async fn put(
    tier: &Arc<dyn CacheTier>,
    scope: &KeyspaceScope,
    key_text: &str,
    entry: CacheEntry,
    now_ms: u64,
) -> Revision {
    let outcome = tier
        .put_conditional(scope, &key(key_text), entry, WriteCondition::Always, now_ms)
        .await
        .expect("put");
    applied_revision(outcome)
}

fn applied_revision(outcome: ConditionalOutcome) -> Revision {
    match outcome {
        ConditionalOutcome::Applied(revision) => revision,
        ConditionalOutcome::PreconditionFailed(current) => {
            panic!("expected the write to apply, the precondition failed at {current:?}")
        }
    }
}

async fn get(
    tier: &Arc<dyn CacheTier>,
    scope: &KeyspaceScope,
    key_text: &str,
    now_ms: u64,
) -> Option<CacheEntry> {
    tier.get(scope, &key(key_text), now_ms).await.expect("get")
}

async fn value_of(
    tier: &Arc<dyn CacheTier>,
    scope: &KeyspaceScope,
    key_text: &str,
    now_ms: u64,
) -> Option<Bytes> {
    get(tier, scope, key_text, now_ms)
        .await
        .map(|entry| entry.value)
}

async fn invalidate(
    tier: &Arc<dyn CacheTier>,
    scope: &KeyspaceScope,
    selector: Selector,
    now_ms: u64,
) -> u64 {
    tier.invalidate(scope, &selector, now_ms)
        .await
        .expect("invalidate")
}

/// Every live key of the scope starting with `prefix`, following the
/// pages; checks each page's shape on the way.
async fn list_all(
    tier: &Arc<dyn CacheTier>,
    scope: &KeyspaceScope,
    prefix: &str,
    page_size: usize,
    now_ms: u64,
) -> Vec<String> {
    let mut keys = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page: KeyPage = tier
            .list(scope, prefix, after.as_deref(), page_size, now_ms)
            .await
            .expect("list");
        assert!(page.keys.len() <= page_size, "a page respects the limit");
        keys.extend(page.keys.iter().cloned());
        let Some(next_after) = page.next_after else {
            return keys;
        };
        assert_eq!(
            Some(&next_after),
            page.keys.last(),
            "the cursor is the page's last key"
        );
        after = Some(next_after);
    }
}

fn assert_error_code<T: std::fmt::Debug>(result: Result<T, Error>, code: &str) {
    match result {
        Ok(value) => panic!("expected the error `{code}`, got Ok({value:?})"),
        Err(error) => assert_eq!(error.code(), code, "{error}"),
    }
}

pub async fn get_of_an_absent_key_is_none(tier: &Arc<dyn CacheTier>) {
    let scope = fresh_scope("absent");
    assert_eq!(
        get(tier, &scope, "never-written", start_of_case()).await,
        None
    );
}

pub async fn put_then_get_round_trips_every_field(tier: &Arc<dyn CacheTier>) {
    let scope = fresh_scope("round-trip");
    let now = start_of_case();
    // Not UTF-8 on purpose: values are bytes.
    let entry = CacheEntry {
        value: Bytes::from_static(&[0, 159, 146, 150, 255, b'{', b'}']),
        encoding: crate::model::ValueEncoding {
            compressed: true,
            encrypted: true,
        },
        content_type: "application/x-custom; charset=binary".to_string(),
        tags: vec![
            "zeta".to_string(),
            "alpha".to_string(),
            "mid:dle".to_string(),
        ],
        revision: 999_999,
        written_at_ms: now,
        expires_at_ms: Some(now + 10 * MINUTE_MS),
        tombstone: false,
    };
    let revision = put(tier, &scope, "full", entry.clone(), now).await;
    let read = get(tier, &scope, "full", now + 1).await;
    assert_eq!(
        read,
        Some(CacheEntry {
            revision,
            ..entry.clone()
        }),
        "every field reads back, with the revision the tier assigned"
    );

    let plain = text_entry("never expires", now);
    let plain_revision = put(tier, &scope, "plain", plain.clone(), now).await;
    let read = get(tier, &scope, "plain", now + 1).await;
    assert_eq!(
        read,
        Some(CacheEntry {
            revision: plain_revision,
            ..plain
        })
    );
}

pub async fn revisions_strictly_increase_across_writes(tier: &Arc<dyn CacheTier>) {
    let scope = fresh_scope("revisions");
    let now = start_of_case();
    let mut revisions = Vec::new();
    revisions.push(put(tier, &scope, "a", text_entry("1", now), now).await);
    revisions.push(put(tier, &scope, "b", text_entry("1", now), now).await);
    revisions.push(put(tier, &scope, "a", text_entry("2", now), now).await);
    let deleted = tier
        .delete_conditional(&scope, &key("b"), WriteCondition::Always, now)
        .await
        .expect("delete");
    revisions.push(applied_revision(deleted));
    let (_, counter) = tier
        .increment(&scope, &key("c"), 1, None, now)
        .await
        .expect("increment");
    revisions.push(counter.revision);
    revisions.push(put(tier, &scope, "a", text_entry("3", now), now).await);
    for pair in revisions.windows(2) {
        assert!(
            pair[0] < pair[1],
            "revisions must strictly increase: {revisions:?}"
        );
    }
}

pub async fn create_only_fails_when_present_and_reports_the_current_revision(
    tier: &Arc<dyn CacheTier>,
) {
    let scope = fresh_scope("create-only");
    let now = start_of_case();
    let created = tier
        .put_conditional(
            &scope,
            &key("k"),
            text_entry("first", now),
            WriteCondition::Absent,
            now,
        )
        .await
        .expect("create");
    let created_revision = applied_revision(created);
    let again = tier
        .put_conditional(
            &scope,
            &key("k"),
            text_entry("second", now),
            WriteCondition::Absent,
            now,
        )
        .await
        .expect("create again");
    assert_eq!(
        again,
        ConditionalOutcome::PreconditionFailed(Some(created_revision))
    );
    assert_eq!(
        value_of(tier, &scope, "k", now).await,
        Some(Bytes::from("first"))
    );
}

pub async fn revision_conditions_hold_only_for_the_live_revision(tier: &Arc<dyn CacheTier>) {
    let scope = fresh_scope("if-match");
    let now = start_of_case();
    let first = put(tier, &scope, "k", text_entry("first", now), now).await;
    let second = tier
        .put_conditional(
            &scope,
            &key("k"),
            text_entry("second", now),
            WriteCondition::RevisionIs(first),
            now,
        )
        .await
        .expect("matching revision");
    let second = applied_revision(second);
    assert!(second > first);

    let stale = tier
        .put_conditional(
            &scope,
            &key("k"),
            text_entry("stale", now),
            WriteCondition::RevisionIs(first),
            now,
        )
        .await
        .expect("stale revision");
    assert_eq!(stale, ConditionalOutcome::PreconditionFailed(Some(second)));
    assert_eq!(
        value_of(tier, &scope, "k", now).await,
        Some(Bytes::from("second"))
    );

    let on_absent = tier
        .put_conditional(
            &scope,
            &key("missing"),
            text_entry("nope", now),
            WriteCondition::RevisionIs(second),
            now,
        )
        .await
        .expect("revision of an absent key");
    assert_eq!(on_absent, ConditionalOutcome::PreconditionFailed(None));
    assert_eq!(get(tier, &scope, "missing", now).await, None);
}

pub async fn expired_entries_read_as_absent_and_count_as_absent(tier: &Arc<dyn CacheTier>) {
    let scope = fresh_scope("expiry");
    let now = start_of_case();
    let later = now + 2 * MINUTE_MS;
    let short_lived = CacheEntry {
        expires_at_ms: Some(now + MINUTE_MS),
        ..text_entry("short-lived", now)
    };
    let expired_revision = put(tier, &scope, "k", short_lived, now).await;
    assert!(get(tier, &scope, "k", now + MINUTE_MS - 1).await.is_some());
    assert_eq!(
        get(tier, &scope, "k", now + MINUTE_MS).await,
        None,
        "an entry is gone at its expiry instant"
    );

    let stale_match = tier
        .put_conditional(
            &scope,
            &key("k"),
            text_entry("x", later),
            WriteCondition::RevisionIs(expired_revision),
            later,
        )
        .await
        .expect("revision of an expired key");
    assert_eq!(stale_match, ConditionalOutcome::PreconditionFailed(None));
    let stale_delete = tier
        .delete_conditional(
            &scope,
            &key("k"),
            WriteCondition::RevisionIs(expired_revision),
            later,
        )
        .await
        .expect("delete of an expired key");
    assert_eq!(stale_delete, ConditionalOutcome::PreconditionFailed(None));

    let recreated = tier
        .put_conditional(
            &scope,
            &key("k"),
            text_entry("recreated", later),
            WriteCondition::Absent,
            later,
        )
        .await
        .expect("create over an expired key");
    let recreated_revision = applied_revision(recreated);
    assert!(recreated_revision > expired_revision);
    let read = get(tier, &scope, "k", later).await.expect("recreated");
    assert_eq!(read.value, Bytes::from("recreated"));
    assert_eq!(read.expires_at_ms, None);
}

pub async fn delete_of_an_absent_key_is_applied(tier: &Arc<dyn CacheTier>) {
    let scope = fresh_scope("delete-absent");
    let now = start_of_case();
    let outcome = tier
        .delete_conditional(&scope, &key("never-written"), WriteCondition::Always, now)
        .await
        .expect("delete");
    assert!(
        matches!(outcome, ConditionalOutcome::Applied(_)),
        "{outcome:?}"
    );
}

pub async fn delete_with_a_stale_revision_fails(tier: &Arc<dyn CacheTier>) {
    let scope = fresh_scope("delete-stale");
    let now = start_of_case();
    let first = put(tier, &scope, "k", text_entry("first", now), now).await;
    let second = put(tier, &scope, "k", text_entry("second", now), now).await;
    let outcome = tier
        .delete_conditional(&scope, &key("k"), WriteCondition::RevisionIs(first), now)
        .await
        .expect("delete");
    assert_eq!(
        outcome,
        ConditionalOutcome::PreconditionFailed(Some(second))
    );
    assert_eq!(
        value_of(tier, &scope, "k", now).await,
        Some(Bytes::from("second"))
    );
    let on_absent = tier
        .delete_conditional(
            &scope,
            &key("missing"),
            WriteCondition::RevisionIs(first),
            now,
        )
        .await
        .expect("delete");
    assert_eq!(on_absent, ConditionalOutcome::PreconditionFailed(None));
}

pub async fn delete_then_get_is_none(tier: &Arc<dyn CacheTier>) {
    let scope = fresh_scope("delete");
    let now = start_of_case();
    let written = put(tier, &scope, "k", text_entry("v", now), now).await;
    let outcome = tier
        .delete_conditional(&scope, &key("k"), WriteCondition::RevisionIs(written), now)
        .await
        .expect("delete");
    let deleted_revision = applied_revision(outcome);
    assert!(
        deleted_revision > written,
        "a delete draws a revision of its own"
    );
    assert_eq!(get(tier, &scope, "k", now).await, None);
    assert!(list_all(tier, &scope, "", 10, now).await.is_empty());
    let recreated = tier
        .put_conditional(
            &scope,
            &key("k"),
            text_entry("again", now),
            WriteCondition::Absent,
            now,
        )
        .await
        .expect("create after delete");
    assert!(applied_revision(recreated) > deleted_revision);
}

pub async fn versions_isolate_and_reclaim_removes_older_versions(tier: &Arc<dyn CacheTier>) {
    let version_one = fresh_scope("versions");
    let version_two = KeyspaceScope {
        version: 2,
        ..version_one.clone()
    };
    let now = start_of_case();
    for key_text in ["old-1", "old-2", "old-3"] {
        put(tier, &version_one, key_text, text_entry("v1", now), now).await;
    }
    put(tier, &version_two, "new", text_entry("v2", now), now).await;

    assert_eq!(get(tier, &version_two, "old-1", now).await, None);
    assert_eq!(list_all(tier, &version_two, "", 10, now).await, ["new"]);
    assert_eq!(
        invalidate(tier, &version_two, Selector::Prefix("old".to_string()), now).await,
        0,
        "a newer version cannot invalidate an older one's keys"
    );
    assert_eq!(
        value_of(tier, &version_one, "old-1", now).await,
        Some(Bytes::from("v1")),
        "until reclaimed, the old version's entries still exist at that version"
    );

    let mut reclaimed_total = 0;
    let first_batch = tier.reclaim(&version_two, 2, now).await.expect("reclaim");
    assert_eq!(first_batch, 2, "reclaim respects its batch size");
    reclaimed_total += first_batch;
    reclaimed_total += tier.reclaim(&version_two, 2, now).await.expect("reclaim");
    assert_eq!(reclaimed_total, 3);
    assert_eq!(
        tier.reclaim(&version_two, 2, now).await.expect("reclaim"),
        0
    );
    assert!(list_all(tier, &version_one, "", 10, now).await.is_empty());
    assert_eq!(
        value_of(tier, &version_two, "new", now).await,
        Some(Bytes::from("v2")),
        "the current version is untouched"
    );
}

pub async fn increment_of_an_absent_key_starts_at_zero(tier: &Arc<dyn CacheTier>) {
    let scope = fresh_scope("incr-absent");
    let now = start_of_case();
    let (value, entry) = tier
        .increment(&scope, &key("hits"), 5, Some(MINUTE_MS), now)
        .await
        .expect("increment");
    assert_eq!(value, 5);
    assert_eq!(entry.value, Bytes::from("5"));
    assert_eq!(entry.content_type, "text/plain");
    assert_eq!(entry.expires_at_ms, Some(now + MINUTE_MS));
    assert_eq!(entry.written_at_ms, now);
    assert!(entry.tags.is_empty());
    assert!(!entry.tombstone);
    assert_eq!(get(tier, &scope, "hits", now).await, Some(entry.clone()));

    let (value, second) = tier
        .increment(&scope, &key("hits"), -7, None, now)
        .await
        .expect("increment");
    assert_eq!(value, -2);
    assert_eq!(second.value, Bytes::from("-2"));
    assert!(second.revision > entry.revision);
}

pub async fn increment_of_an_existing_counter_keeps_tags_and_expiry(tier: &Arc<dyn CacheTier>) {
    let scope = fresh_scope("incr-existing");
    let now = start_of_case();
    let existing = CacheEntry {
        expires_at_ms: Some(now + 10 * MINUTE_MS),
        ..tagged_entry("10", &["counters", "team:a"], now)
    };
    let written = put(tier, &scope, "visits", existing, now).await;
    let (value, entry) = tier
        .increment(&scope, &key("visits"), 32, Some(MINUTE_MS), now + 1)
        .await
        .expect("increment");
    assert_eq!(value, 42);
    assert_eq!(entry.value, Bytes::from("42"));
    assert_eq!(entry.tags, ["counters", "team:a"]);
    assert_eq!(
        entry.expires_at_ms,
        Some(now + 10 * MINUTE_MS),
        "an existing counter keeps its expiry"
    );
    assert!(entry.revision > written);
    assert_eq!(get(tier, &scope, "visits", now + 1).await, Some(entry));
    assert_eq!(
        invalidate(tier, &scope, Selector::Tag("team:a".to_string()), now + 1).await,
        1,
        "the counter is still found by its tag"
    );
}

pub async fn increment_of_a_non_integer_is_not_a_counter(tier: &Arc<dyn CacheTier>) {
    let scope = fresh_scope("incr-text");
    let now = start_of_case();
    let written = put(tier, &scope, "name", text_entry("ada", now), now).await;
    let result = tier.increment(&scope, &key("name"), 1, None, now).await;
    assert_error_code(result, "not_a_counter");
    let unchanged = get(tier, &scope, "name", now).await.expect("still there");
    assert_eq!(unchanged.value, Bytes::from("ada"));
    assert_eq!(unchanged.revision, written);
}

pub async fn increment_past_the_integer_range_is_an_overflow(tier: &Arc<dyn CacheTier>) {
    let scope = fresh_scope("incr-overflow");
    let now = start_of_case();
    let written = put(
        tier,
        &scope,
        "big",
        text_entry(&i64::MAX.to_string(), now),
        now,
    )
    .await;
    let result = tier.increment(&scope, &key("big"), 1, None, now).await;
    assert_error_code(result, "counter_overflow");
    let unchanged = get(tier, &scope, "big", now).await.expect("still there");
    assert_eq!(unchanged.value, Bytes::from(i64::MAX.to_string()));
    assert_eq!(unchanged.revision, written);

    let (value, _) = tier
        .increment(&scope, &key("big"), -1, None, now)
        .await
        .expect("a decrement still fits");
    assert_eq!(value, i64::MAX - 1);
}

pub async fn put_if_newer_replaces_only_with_a_higher_revision(tier: &Arc<dyn CacheTier>) {
    let scope = fresh_scope("if-newer");
    let now = start_of_case();
    let current = put(tier, &scope, "k", text_entry("authoritative", now), now).await;
    let copy = |value: &str, revision: Revision| CacheEntry {
        revision,
        ..text_entry(value, now)
    };
    tier.put_if_newer(&scope, &key("k"), copy("same", current))
        .await
        .expect("put_if_newer");
    if current > 0 {
        tier.put_if_newer(&scope, &key("k"), copy("older", current - 1))
            .await
            .expect("put_if_newer");
    }
    assert_eq!(
        value_of(tier, &scope, "k", now).await,
        Some(Bytes::from("authoritative")),
        "a copy that is not newer is ignored"
    );

    let newer = copy("newer", current + 1_000);
    tier.put_if_newer(&scope, &key("k"), newer.clone())
        .await
        .expect("put_if_newer");
    assert_eq!(get(tier, &scope, "k", now).await, Some(newer));

    let old_tombstone = CacheEntry {
        tombstone: true,
        ..copy("", current + 500)
    };
    tier.put_if_newer(&scope, &key("k"), old_tombstone)
        .await
        .expect("put_if_newer");
    assert_eq!(
        value_of(tier, &scope, "k", now).await,
        Some(Bytes::from("newer")),
        "an older tombstone is ignored"
    );

    let tombstone = CacheEntry {
        tombstone: true,
        ..copy("", current + 2_000)
    };
    tier.put_if_newer(&scope, &key("k"), tombstone)
        .await
        .expect("put_if_newer");
    assert_eq!(get(tier, &scope, "k", now).await, None);
    assert!(list_all(tier, &scope, "", 10, now).await.is_empty());

    let fresh = copy("copied in", 7);
    tier.put_if_newer(&scope, &key("absent"), fresh.clone())
        .await
        .expect("put_if_newer");
    assert_eq!(get(tier, &scope, "absent", now).await, Some(fresh));
}

pub async fn invalidate_by_pattern_matches_globs_and_escapes_sql_wildcards(
    tier: &Arc<dyn CacheTier>,
) {
    let scope = fresh_scope("pattern");
    let now = start_of_case();
    let keys = [
        "user:42:a",
        "user:42:b",
        "user:420",
        "user:4",
        "50%off",
        "50xoff",
        "a_b",
        "axb",
        "star*key",
        "starxkey",
    ];
    for key_text in keys {
        put(tier, &scope, key_text, text_entry(key_text, now), now).await;
    }
    let by_pattern = |pattern: &str| Selector::Pattern(pattern.to_string());

    assert_eq!(
        invalidate(tier, &scope, by_pattern("user:42:*"), now).await,
        2
    );
    assert_eq!(get(tier, &scope, "user:42:a", now).await, None);
    assert_eq!(get(tier, &scope, "user:42:b", now).await, None);
    assert!(get(tier, &scope, "user:420", now).await.is_some());

    assert_eq!(
        invalidate(tier, &scope, by_pattern("user:4?0"), now).await,
        1
    );
    assert!(get(tier, &scope, "user:4", now).await.is_some());

    assert_eq!(invalidate(tier, &scope, by_pattern("50%off"), now).await, 1);
    assert!(
        get(tier, &scope, "50xoff", now).await.is_some(),
        "`%` in a pattern is a literal"
    );
    assert_eq!(invalidate(tier, &scope, by_pattern("a_b"), now).await, 1);
    assert!(
        get(tier, &scope, "axb", now).await.is_some(),
        "`_` in a pattern is a literal"
    );
    assert_eq!(
        invalidate(tier, &scope, by_pattern("star\\*key"), now).await,
        1
    );
    assert!(
        get(tier, &scope, "starxkey", now).await.is_some(),
        "an escaped `*` is a literal"
    );
    assert_eq!(
        invalidate(tier, &scope, by_pattern("nothing*"), now).await,
        0
    );
    assert_eq!(
        list_all(tier, &scope, "", 100, now).await,
        ["50xoff", "axb", "starxkey", "user:4"]
    );
}

pub async fn invalidate_by_prefix_treats_sql_wildcards_literally(tier: &Arc<dyn CacheTier>) {
    let scope = fresh_scope("prefix");
    let now = start_of_case();
    for key_text in ["tmp_1", "tmp_2", "tmpx3", "tmp%4", "tmp", "other"] {
        put(tier, &scope, key_text, text_entry(key_text, now), now).await;
    }
    let by_prefix = |prefix: &str| Selector::Prefix(prefix.to_string());
    assert_eq!(invalidate(tier, &scope, by_prefix("tmp_"), now).await, 2);
    assert_eq!(invalidate(tier, &scope, by_prefix("tmp%"), now).await, 1);
    assert_eq!(
        list_all(tier, &scope, "", 100, now).await,
        ["other", "tmp", "tmpx3"]
    );
    assert_eq!(invalidate(tier, &scope, by_prefix("tmp"), now).await, 2);
    assert_eq!(list_all(tier, &scope, "", 100, now).await, ["other"]);
}

pub async fn invalidate_by_tag_removes_only_that_tag(tier: &Arc<dyn CacheTier>) {
    let scope = fresh_scope("tags");
    let now = start_of_case();
    put(
        tier,
        &scope,
        "both",
        tagged_entry("1", &["red", "blue"], now),
        now,
    )
    .await;
    put(
        tier,
        &scope,
        "red-only",
        tagged_entry("2", &["red"], now),
        now,
    )
    .await;
    put(
        tier,
        &scope,
        "blue-only",
        tagged_entry("3", &["blue"], now),
        now,
    )
    .await;
    put(tier, &scope, "untagged", text_entry("4", now), now).await;
    // Rewriting an entry rewrites its tags: `retagged` is no longer blue.
    put(
        tier,
        &scope,
        "retagged",
        tagged_entry("5", &["blue"], now),
        now,
    )
    .await;
    put(
        tier,
        &scope,
        "retagged",
        tagged_entry("6", &["green"], now),
        now,
    )
    .await;

    let by_tag = |tag: &str| Selector::Tag(tag.to_string());
    assert_eq!(invalidate(tier, &scope, by_tag("red"), now).await, 2);
    assert_eq!(get(tier, &scope, "both", now).await, None);
    assert_eq!(get(tier, &scope, "red-only", now).await, None);
    assert_eq!(invalidate(tier, &scope, by_tag("red"), now).await, 0);
    assert_eq!(
        list_all(tier, &scope, "", 100, now).await,
        ["blue-only", "retagged", "untagged"]
    );
    assert_eq!(invalidate(tier, &scope, by_tag("blue"), now).await, 1);
    assert_eq!(invalidate(tier, &scope, by_tag("green"), now).await, 1);
    assert_eq!(list_all(tier, &scope, "", 100, now).await, ["untagged"]);
}

pub async fn invalidate_counts_only_live_entries(tier: &Arc<dyn CacheTier>) {
    let scope = fresh_scope("invalidate-live");
    let now = start_of_case();
    let later = now + 2 * MINUTE_MS;
    let short_lived = CacheEntry {
        expires_at_ms: Some(now + MINUTE_MS),
        ..tagged_entry("gone", &["t"], now)
    };
    put(tier, &scope, "job:expired", short_lived, now).await;
    put(
        tier,
        &scope,
        "job:live",
        tagged_entry("here", &["t"], now),
        now,
    )
    .await;
    assert_eq!(
        invalidate(tier, &scope, Selector::Pattern("job:*".to_string()), later).await,
        1,
        "an expired entry is already gone and is not counted"
    );
    assert_eq!(get(tier, &scope, "job:live", later).await, None);
}

pub async fn list_pages_through_live_keys_in_byte_order(tier: &Arc<dyn CacheTier>) {
    let scope = fresh_scope("list");
    let now = start_of_case();
    let listed_at = now + 2 * MINUTE_MS;
    let live_keys = [
        "item:~", "item:a", "item:B", "item:_", "item:A", "item:10", "item:9", "item:0", "item:Z",
        "item:%",
    ];
    for key_text in live_keys {
        put(tier, &scope, key_text, text_entry(key_text, now), now).await;
    }
    for key_text in ["item", "items", "other:1"] {
        put(tier, &scope, key_text, text_entry(key_text, now), now).await;
    }
    let expiring = CacheEntry {
        expires_at_ms: Some(now + MINUTE_MS),
        ..text_entry("expired", now)
    };
    put(tier, &scope, "item:expired", expiring, now).await;

    let mut expected: Vec<String> = live_keys.iter().map(|key| key.to_string()).collect();
    expected.sort_unstable();
    for page_size in [1, 3, 4, 10, 100] {
        assert_eq!(
            list_all(tier, &scope, "item:", page_size, listed_at).await,
            expected,
            "pages of {page_size}"
        );
    }

    let first_page = tier
        .list(&scope, "item:", None, 3, listed_at)
        .await
        .expect("list");
    assert_eq!(first_page.keys, ["item:%", "item:0", "item:10"]);
    assert_eq!(first_page.next_after.as_deref(), Some("item:10"));
    let exact_last_page = tier
        .list(&scope, "item:", Some("item:a"), 1, listed_at)
        .await
        .expect("list");
    assert_eq!(
        exact_last_page,
        KeyPage {
            keys: vec!["item:~".to_string()],
            next_after: None,
        },
        "the last page has no cursor"
    );
    let from_between = tier
        .list(&scope, "item:", Some("item:C"), 2, listed_at)
        .await
        .expect("list");
    assert_eq!(from_between.keys, ["item:Z", "item:_"]);
    let past_the_end = tier
        .list(&scope, "item:", Some("item:~"), 5, listed_at)
        .await
        .expect("list");
    assert_eq!(past_the_end, KeyPage::default());

    let everything = list_all(tier, &scope, "", 5, now).await;
    assert_eq!(everything.len(), live_keys.len() + 4, "{everything:?}");
}

pub async fn concurrent_conditional_writers_of_one_revision_apply_once(tier: &Arc<dyn CacheTier>) {
    const WRITERS: usize = 8;
    let scope = fresh_scope("race");
    let now = start_of_case();
    let base = put(tier, &scope, "contended", text_entry("base", now), now).await;
    let start_line = Arc::new(Barrier::new(WRITERS));
    let mut writers = Vec::with_capacity(WRITERS);
    for writer in 0..WRITERS {
        let tier = Arc::clone(tier);
        let scope = scope.clone();
        let start_line = Arc::clone(&start_line);
        writers.push(tokio::spawn(async move {
            start_line.wait().await;
            let entry = text_entry(&format!("writer-{writer}"), now);
            let outcome = tier
                .put_conditional(
                    &scope,
                    &key("contended"),
                    entry,
                    WriteCondition::RevisionIs(base),
                    now,
                )
                .await
                .expect("conditional put");
            (writer, outcome)
        }));
    }
    let mut winners = Vec::new();
    let mut losers_saw = Vec::new();
    for writer in writers {
        match writer.await.expect("writer task") {
            (writer, ConditionalOutcome::Applied(revision)) => winners.push((writer, revision)),
            (_, ConditionalOutcome::PreconditionFailed(current)) => losers_saw.push(current),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one writer wins: {winners:?}");
    let (winner, winning_revision) = winners[0];
    for current in losers_saw {
        assert_eq!(current, Some(winning_revision), "losers see the winner");
    }
    let stored = get(tier, &scope, "contended", now).await.expect("stored");
    assert_eq!(stored.revision, winning_revision);
    assert_eq!(stored.value, Bytes::from(format!("writer-{winner}")));
}

pub async fn concurrent_writers_of_one_key_leave_the_highest_revision(tier: &Arc<dyn CacheTier>) {
    const WRITERS: usize = 8;
    let scope = fresh_scope("last-writer");
    let now = start_of_case();
    let start_line = Arc::new(Barrier::new(WRITERS));
    let mut writers = Vec::with_capacity(WRITERS);
    for writer in 0..WRITERS {
        let tier = Arc::clone(tier);
        let scope = scope.clone();
        let start_line = Arc::clone(&start_line);
        writers.push(tokio::spawn(async move {
            start_line.wait().await;
            let entry = text_entry(&format!("writer-{writer}"), now);
            let revision = put(&tier, &scope, "contended", entry, now).await;
            (writer, revision)
        }));
    }
    let mut newest: Option<(usize, Revision)> = None;
    for writer in writers {
        let (writer, revision) = writer.await.expect("writer task");
        if newest.is_none_or(|(_, newest_revision)| revision > newest_revision) {
            newest = Some((writer, revision));
        }
    }
    let (newest_writer, newest_revision) = newest.expect("writers ran");
    // Revisions follow commit order, so the value that stays is the one
    // written with the highest revision.
    let stored = get(tier, &scope, "contended", now).await.expect("stored");
    assert_eq!(stored.revision, newest_revision);
    assert_eq!(stored.value, Bytes::from(format!("writer-{newest_writer}")));
}

/// Stores also reclaim expired rows; L1 and Redis expire entries by
/// themselves, so this is not a case of the suite.
async fn reclaim_removes_expired_rows_and_keeps_live_ones(tier: &Arc<dyn CacheTier>) {
    let scope = fresh_scope("reclaim-expired");
    let now = start_of_case();
    let later = now + 2 * MINUTE_MS;
    for key_text in ["expired-1", "expired-2"] {
        let short_lived = CacheEntry {
            expires_at_ms: Some(now + MINUTE_MS),
            ..tagged_entry("gone", &["t"], now)
        };
        put(tier, &scope, key_text, short_lived, now).await;
    }
    put(tier, &scope, "live", tagged_entry("here", &["t"], now), now).await;
    assert_eq!(tier.reclaim(&scope, 10, later).await.expect("reclaim"), 2);
    assert_eq!(tier.reclaim(&scope, 10, later).await.expect("reclaim"), 0);
    assert_eq!(
        value_of(tier, &scope, "live", later).await,
        Some(Bytes::from("here"))
    );
    assert_eq!(
        invalidate(tier, &scope, Selector::Tag("t".to_string()), later).await,
        1,
        "the reclaimed rows' tags went with them"
    );
}

#[tokio::test]
async fn the_sqlite_store_reclaims_expired_rows() {
    let Some(under_test) = open_sqlite().await else {
        return;
    };
    reclaim_removes_expired_rows_and_keeps_live_ones(&under_test.tier).await;
}

#[tokio::test]
async fn the_postgres_store_reclaims_expired_rows() {
    let Some(under_test) = open_postgres().await else {
        return;
    };
    reclaim_removes_expired_rows_and_keeps_live_ones(&under_test.tier).await;
}

pub async fn tenants_are_isolated(tier: &Arc<dyn CacheTier>) {
    let scope_a = scope_for_tenant(tenant("tenant-a"), "isolation");
    let scope_b = KeyspaceScope {
        tenant: tenant("tenant-b"),
        ..scope_a.clone()
    };
    let now = start_of_case();
    put(
        tier,
        &scope_a,
        "shared",
        tagged_entry("a", &["t"], now),
        now,
    )
    .await;
    let only_a_revision = put(
        tier,
        &scope_a,
        "only-a",
        tagged_entry("a", &["t"], now),
        now,
    )
    .await;
    put(
        tier,
        &scope_b,
        "shared",
        tagged_entry("b", &["t"], now),
        now,
    )
    .await;

    assert_eq!(
        value_of(tier, &scope_a, "shared", now).await,
        Some(Bytes::from("a"))
    );
    assert_eq!(
        value_of(tier, &scope_b, "shared", now).await,
        Some(Bytes::from("b"))
    );
    assert_eq!(get(tier, &scope_b, "only-a", now).await, None);
    assert_eq!(list_all(tier, &scope_b, "", 10, now).await, ["shared"]);

    assert_eq!(
        invalidate(tier, &scope_b, Selector::Tag("t".to_string()), now).await,
        1
    );
    assert_eq!(
        invalidate(tier, &scope_b, Selector::Prefix("only".to_string()), now).await,
        0
    );
    assert_eq!(
        list_all(tier, &scope_a, "", 10, now).await,
        ["only-a", "shared"]
    );
    assert_eq!(
        invalidate(tier, &scope_b, Selector::Pattern("*".to_string()), now).await,
        0
    );
    assert_eq!(
        value_of(tier, &scope_a, "shared", now).await,
        Some(Bytes::from("a"))
    );
    let foreign_delete = tier
        .delete_conditional(
            &scope_b,
            &key("only-a"),
            WriteCondition::RevisionIs(only_a_revision),
            now,
        )
        .await
        .expect("delete");
    assert_eq!(
        foreign_delete,
        ConditionalOutcome::PreconditionFailed(None),
        "another tenant's revision means nothing here"
    );
    assert!(get(tier, &scope_a, "only-a", now).await.is_some());
}
