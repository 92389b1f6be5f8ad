//! The conformance suite every [`ControlStore`] backend must pass.
//!
//! Each case is written once, against the trait, and run by
//! `conformance_suite!` on every backend: SQLite in a temporary directory,
//! and PostgreSQL in a fresh schema per test (skipped with a message when
//! `PLINTH_TEST_POSTGRES_URL` is unset, a failure under `scripts/test.sh`).
//! Whatever a caller can observe must be identical on both.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use plinth_core::config::{PostgresConfig, SqliteConfig};
use plinth_core::resilience::{BreakerConfig, CircuitBreaker};
use plinth_core::{Error, ErrorKind, TenantId};
use plinth_engines::test_support::{isolated_postgres_url, postgres_url};
use plinth_engines::{PostgresEngine, SqliteEngine, Store};
use tempfile::TempDir;
use time::OffsetDateTime;
use time::macros::datetime;
use tokio::sync::Barrier;

use crate::migrations::CONTROL_MIGRATIONS;
use crate::scope::ScopeSet;
use crate::store::{
    AuditOutcome, AuditQuery, ControlStore, IdempotencyBegin, NewApiKey, NewAuditEntry,
    StoredResponse, open_control_store,
};

const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// One migrated backend for one test.
struct Backend {
    store: Store,
    control: Arc<dyn ControlStore>,
    /// Holds the SQLite database until the test ends.
    _directory: Option<TempDir>,
}

impl Backend {
    fn control(&self) -> &dyn ControlStore {
        self.control.as_ref()
    }
}

async fn open_sqlite(_test_name: &str) -> Option<Backend> {
    let directory = tempfile::tempdir().expect("create a temporary directory");
    let breaker = Arc::new(CircuitBreaker::new("sqlite", BreakerConfig::default()));
    let engine = SqliteEngine::open(
        &directory.path().join("plinth.db"),
        &SqliteConfig::default(),
        breaker,
        CALL_TIMEOUT,
    )
    .expect("open sqlite");
    Some(migrated(Store::Sqlite(Arc::new(engine)), Some(directory)).await)
}

async fn open_postgres(test_name: &str) -> Option<Backend> {
    let base_url = postgres_url(test_name)?;
    let url = isolated_postgres_url(&base_url, test_name).await;
    let breaker = Arc::new(CircuitBreaker::new("postgres", BreakerConfig::default()));
    let engine = PostgresEngine::connect(&url, &PostgresConfig::default(), breaker, CALL_TIMEOUT)
        .await
        .expect("connect to the test postgres");
    Some(migrated(Store::Postgres(engine), None).await)
}

async fn migrated(store: Store, directory: Option<TempDir>) -> Backend {
    store
        .migrate(&[&CONTROL_MIGRATIONS])
        .await
        .expect("apply the control migrations");
    let control = open_control_store(&store);
    Backend {
        store,
        control,
        _directory: directory,
    }
}

/// Runs every case below as one `#[tokio::test]` per backend.
macro_rules! conformance_suite {
    ($backend:ident, $open:ident) => {
        mod $backend {
            conformance_suite!(@cases $backend, $open;
                default_tenant_exists_after_migration,
                migrations_applied_twice_change_nothing,
                creating_an_existing_tenant_is_a_conflict,
                an_absent_tenant_reads_as_none,
                tenants_are_listed_in_id_order_with_a_cursor,
                deleting_a_tenant_takes_its_keys_and_idempotency_records,
                deleting_an_absent_tenant_is_not_found,
                a_key_for_a_missing_tenant_is_not_found,
                a_key_round_trips_every_field,
                a_duplicate_key_id_is_a_conflict,
                keys_are_listed_per_tenant_with_a_cursor,
                revoking_another_tenants_key_is_not_found,
                revoking_twice_keeps_the_first_revocation_time,
                the_audit_log_lists_newest_first_with_filters_and_a_cursor,
                a_completed_idempotent_request_replays_its_response,
                idempotency_keys_are_isolated_per_tenant,
                an_abandoned_idempotency_key_starts_again,
                expired_idempotency_records_count_as_absent_and_are_purged,
                concurrent_begins_of_one_key_start_exactly_once,
            );
        }
    };
    (@cases $backend:ident, $open:ident; $($case:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() {
                let test_name = concat!("control_", stringify!($backend), "_", stringify!($case));
                let Some(backend) = super::$open(test_name).await else {
                    return;
                };
                super::$case(&backend).await;
                backend.store.close().await;
            }
        )+
    };
}

conformance_suite!(sqlite, open_sqlite);
conformance_suite!(postgres, open_postgres);

fn tenant(id: &str) -> TenantId {
    TenantId::parse(id).expect("a valid tenant id")
}

fn new_key(id: &str, tenant_id: &str) -> NewApiKey {
    NewApiKey {
        id: id.to_string(),
        tenant: tenant(tenant_id),
        name: format!("key {id}"),
        scopes: ScopeSet::parse_all(["cache:read"]).expect("valid scopes"),
        secret_sha256: [42; 32],
        expires_at: None,
    }
}

fn audit_entry(action: &str, outcome: AuditOutcome) -> NewAuditEntry {
    NewAuditEntry {
        actor: "key:abc123".to_string(),
        actor_tenant: Some(tenant("default")),
        action: action.to_string(),
        target: format!("target of {action}"),
        outcome,
        source_address: Some("192.0.2.7".to_string()),
        request_id: Some(format!("request-{action}")),
        detail: format!("{action} happened"),
    }
}

fn response(body: &[u8]) -> StoredResponse {
    StoredResponse {
        status: 201,
        headers: vec![
            ("content-type".to_string(), "application/json".to_string()),
            ("location".to_string(), "/v1/things/1".to_string()),
        ],
        body: body.to_vec(),
    }
}

fn in_one_hour() -> OffsetDateTime {
    OffsetDateTime::now_utc() + time::Duration::hours(1)
}

fn a_minute_ago() -> OffsetDateTime {
    OffsetDateTime::now_utc() - time::Duration::minutes(1)
}

/// `at` rounded down to the microseconds the stores keep.
fn at_microseconds(at: OffsetDateTime) -> OffsetDateTime {
    at - time::Duration::nanoseconds(i64::from(at.nanosecond() % 1_000))
}

fn assert_error<T: Debug>(result: Result<T, Error>, kind: ErrorKind, code: &str) {
    match result {
        Ok(value) => panic!("expected a {kind:?} error `{code}`, got Ok({value:?})"),
        Err(error) => {
            assert_eq!(error.kind(), kind, "{error}");
            assert_eq!(error.code(), code, "{error}");
        }
    }
}

/// Whether a key could still authenticate.
async fn key_is_usable(store: &dyn ControlStore, id: &str) -> bool {
    match store.get_api_key(id).await.expect("get key") {
        None => false,
        Some(key) => key.revoked_at.is_none(),
    }
}

async fn default_tenant_exists_after_migration(backend: &Backend) {
    let default_tenant = backend
        .control()
        .get_tenant(&TenantId::default_tenant())
        .await
        .expect("get tenant")
        .expect("the default tenant is seeded");
    assert_eq!(default_tenant.display_name, "Default tenant");
    assert!(default_tenant.created_at <= OffsetDateTime::now_utc());
}

async fn migrations_applied_twice_change_nothing(backend: &Backend) {
    let reports = backend
        .store
        .migrate(&[&CONTROL_MIGRATIONS])
        .await
        .expect("migrate again");
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0].component, "control");
    assert!(reports[0].newly_applied.is_empty(), "{reports:?}");
    assert_eq!(
        reports[0].already_applied,
        CONTROL_MIGRATIONS.migrations.len()
    );
    let tenants = backend
        .control()
        .list_tenants(None, 10)
        .await
        .expect("list");
    assert_eq!(tenants.len(), 1, "the seed ran once: {tenants:?}");
}

async fn creating_an_existing_tenant_is_a_conflict(backend: &Backend) {
    let store = backend.control();
    let before = at_microseconds(OffsetDateTime::now_utc());
    let created = store
        .create_tenant(&tenant("acme"), "Acme Corp")
        .await
        .expect("create");
    assert_eq!(created.id, tenant("acme"));
    assert_eq!(created.display_name, "Acme Corp");
    assert!(before <= created.created_at && created.created_at <= OffsetDateTime::now_utc());

    let again = store.create_tenant(&tenant("acme"), "Someone else").await;
    assert_error(again, ErrorKind::Conflict, "tenant_exists");
    let stored = store.get_tenant(&tenant("acme")).await.expect("get");
    assert_eq!(stored, Some(created), "the first tenant is untouched");
}

async fn an_absent_tenant_reads_as_none(backend: &Backend) {
    let absent = backend.control().get_tenant(&tenant("nobody")).await;
    assert_eq!(absent.expect("get"), None);
}

async fn tenants_are_listed_in_id_order_with_a_cursor(backend: &Backend) {
    let store = backend.control();
    // Byte order, whatever the database's collation: '-' < '0' < '_' < 'b'.
    for id in ["zulu", "ab", "a_b", "a0", "a-b"] {
        store.create_tenant(&tenant(id), id).await.expect("create");
    }
    let listed_ids = |records: Vec<crate::TenantRecord>| {
        records
            .into_iter()
            .map(|record| record.id.as_str().to_string())
            .collect::<Vec<_>>()
    };

    let first_page = store.list_tenants(None, 4).await.expect("list");
    assert_eq!(listed_ids(first_page), ["a-b", "a0", "a_b", "ab"]);
    let second_page = store
        .list_tenants(Some(&tenant("ab")), 4)
        .await
        .expect("list");
    assert_eq!(listed_ids(second_page), ["default", "zulu"]);
    let past_the_end = store
        .list_tenants(Some(&tenant("zulu")), 4)
        .await
        .expect("list");
    assert!(past_the_end.is_empty());
    let nothing = store.list_tenants(None, 0).await.expect("list");
    assert!(nothing.is_empty());
}

async fn deleting_a_tenant_takes_its_keys_and_idempotency_records(backend: &Backend) {
    let store = backend.control();
    store
        .create_tenant(&tenant("acme"), "Acme")
        .await
        .expect("create");
    store
        .create_tenant(&tenant("other"), "Other")
        .await
        .expect("create");
    store
        .create_api_key(new_key("acme-key", "acme"))
        .await
        .expect("key");
    store
        .create_api_key(new_key("other-key", "other"))
        .await
        .expect("key");
    let started = store
        .begin_idempotent(&tenant("acme"), "idem-1", "fingerprint", in_one_hour())
        .await
        .expect("begin");
    assert_eq!(started, IdempotencyBegin::Started);
    store
        .complete_idempotent(&tenant("acme"), "idem-1", response(b"old"))
        .await
        .expect("complete");

    store.delete_tenant(&tenant("acme")).await.expect("delete");

    assert_eq!(store.get_tenant(&tenant("acme")).await.expect("get"), None);
    assert!(!key_is_usable(store, "acme-key").await);
    assert!(
        key_is_usable(store, "other-key").await,
        "other tenants keep their keys"
    );
    // A tenant later created with the same id inherits nothing.
    store
        .create_tenant(&tenant("acme"), "New Acme")
        .await
        .expect("recreate");
    assert!(!key_is_usable(store, "acme-key").await);
    let replay = store
        .begin_idempotent(&tenant("acme"), "idem-1", "fingerprint", in_one_hour())
        .await
        .expect("begin");
    assert_eq!(replay, IdempotencyBegin::Started);
}

async fn deleting_an_absent_tenant_is_not_found(backend: &Backend) {
    let store = backend.control();
    let absent = store.delete_tenant(&tenant("ghost")).await;
    assert_error(absent, ErrorKind::NotFound, "tenant_not_found");
    store
        .create_tenant(&tenant("once"), "Once")
        .await
        .expect("create");
    store.delete_tenant(&tenant("once")).await.expect("delete");
    let twice = store.delete_tenant(&tenant("once")).await;
    assert_error(twice, ErrorKind::NotFound, "tenant_not_found");
}

async fn a_key_for_a_missing_tenant_is_not_found(backend: &Backend) {
    let store = backend.control();
    let orphan = store.create_api_key(new_key("orphan", "ghost")).await;
    assert_error(orphan, ErrorKind::NotFound, "tenant_not_found");
    assert_eq!(store.get_api_key("orphan").await.expect("get"), None);
}

async fn a_key_round_trips_every_field(backend: &Backend) {
    let store = backend.control();
    store
        .create_tenant(&tenant("acme"), "Acme")
        .await
        .expect("create");
    let scopes =
        ScopeSet::parse_all(["cache:read:users-*", "events:write", "*:read"]).expect("scopes");
    let mut secret_sha256 = [0_u8; 32];
    for (index, byte) in secret_sha256.iter_mut().enumerate() {
        *byte = u8::try_from(index * 7 + 1).expect("small");
    }
    let before = at_microseconds(OffsetDateTime::now_utc());
    let created = store
        .create_api_key(NewApiKey {
            id: "k_0123456789abcdef".to_string(),
            tenant: tenant("acme"),
            name: "deploy bot — eu".to_string(),
            scopes: scopes.clone(),
            secret_sha256,
            expires_at: Some(datetime!(2031-02-03 04:05:06.123456789 UTC)),
        })
        .await
        .expect("create key");
    assert_eq!(created.id, "k_0123456789abcdef");
    assert_eq!(created.tenant, tenant("acme"));
    assert_eq!(created.name, "deploy bot — eu");
    assert_eq!(created.scopes, scopes);
    assert_eq!(created.secret_sha256, secret_sha256);
    assert!(before <= created.created_at && created.created_at <= OffsetDateTime::now_utc());
    assert_eq!(
        created.expires_at,
        Some(datetime!(2031-02-03 04:05:06.123456 UTC))
    );
    assert_eq!(created.revoked_at, None);

    let fetched = store.get_api_key("k_0123456789abcdef").await.expect("get");
    assert_eq!(fetched, Some(created));

    let without_expiry = store
        .create_api_key(NewApiKey {
            scopes: ScopeSet::admin(),
            ..new_key("k_admin", "acme")
        })
        .await
        .expect("create key");
    let fetched = store.get_api_key("k_admin").await.expect("get");
    assert_eq!(fetched, Some(without_expiry.clone()));
    assert_eq!(without_expiry.expires_at, None);
    assert!(without_expiry.scopes.is_admin());
    assert_eq!(store.get_api_key("k_missing").await.expect("get"), None);
}

async fn a_duplicate_key_id_is_a_conflict(backend: &Backend) {
    let store = backend.control();
    store
        .create_tenant(&tenant("acme"), "Acme")
        .await
        .expect("create");
    let original = store
        .create_api_key(new_key("dup", "default"))
        .await
        .expect("key");
    let duplicate = store.create_api_key(new_key("dup", "acme")).await;
    assert_error(duplicate, ErrorKind::Conflict, "key_exists");
    assert_eq!(store.get_api_key("dup").await.expect("get"), Some(original));
}

async fn keys_are_listed_per_tenant_with_a_cursor(backend: &Backend) {
    let store = backend.control();
    store
        .create_tenant(&tenant("alpha"), "Alpha")
        .await
        .expect("create");
    store
        .create_tenant(&tenant("bravo"), "Bravo")
        .await
        .expect("create");
    for id in ["k3", "k1", "k2"] {
        store
            .create_api_key(new_key(id, "alpha"))
            .await
            .expect("key");
    }
    let key_ids = |records: Vec<crate::ApiKeyRecord>| {
        records
            .into_iter()
            .map(|record| record.id)
            .collect::<Vec<_>>()
    };

    let bravo_keys = store
        .list_api_keys(&tenant("bravo"), None, 10)
        .await
        .expect("list");
    assert!(bravo_keys.is_empty(), "bravo sees none of alpha's keys");

    let first_page = store
        .list_api_keys(&tenant("alpha"), None, 2)
        .await
        .expect("list");
    assert_eq!(key_ids(first_page), ["k1", "k2"]);
    let second_page = store
        .list_api_keys(&tenant("alpha"), Some("k2"), 2)
        .await
        .expect("list");
    assert_eq!(key_ids(second_page), ["k3"]);
    let past_the_end = store
        .list_api_keys(&tenant("alpha"), Some("k3"), 2)
        .await
        .expect("list");
    assert!(past_the_end.is_empty());

    store
        .create_api_key(new_key("k0", "bravo"))
        .await
        .expect("key");
    store
        .revoke_api_key(&tenant("alpha"), "k1")
        .await
        .expect("revoke");
    let bravo_keys = store
        .list_api_keys(&tenant("bravo"), None, 10)
        .await
        .expect("list");
    assert_eq!(key_ids(bravo_keys), ["k0"]);
    let alpha_keys = store
        .list_api_keys(&tenant("alpha"), None, 10)
        .await
        .expect("list");
    assert_eq!(
        key_ids(alpha_keys),
        ["k1", "k2", "k3"],
        "revoked keys are listed too"
    );
}

async fn revoking_another_tenants_key_is_not_found(backend: &Backend) {
    let store = backend.control();
    store
        .create_tenant(&tenant("alpha"), "Alpha")
        .await
        .expect("create");
    store
        .create_tenant(&tenant("bravo"), "Bravo")
        .await
        .expect("create");
    store
        .create_api_key(new_key("alpha-key", "alpha"))
        .await
        .expect("key");

    let wrong_tenant = store.revoke_api_key(&tenant("bravo"), "alpha-key").await;
    assert_error(wrong_tenant, ErrorKind::NotFound, "key_not_found");
    assert!(
        key_is_usable(store, "alpha-key").await,
        "the key stays unrevoked"
    );
    let absent = store.revoke_api_key(&tenant("alpha"), "no-such-key").await;
    assert_error(absent, ErrorKind::NotFound, "key_not_found");
}

async fn revoking_twice_keeps_the_first_revocation_time(backend: &Backend) {
    let store = backend.control();
    let created = store
        .create_api_key(new_key("k", "default"))
        .await
        .expect("key");
    let before = at_microseconds(OffsetDateTime::now_utc());
    let first = store
        .revoke_api_key(&TenantId::default_tenant(), "k")
        .await
        .expect("revoke");
    let first_revoked_at = first.revoked_at.expect("revoked");
    assert!(before <= first_revoked_at && first_revoked_at <= OffsetDateTime::now_utc());
    assert_eq!(
        crate::ApiKeyRecord {
            revoked_at: None,
            ..first.clone()
        },
        created,
        "revoking changes nothing else"
    );

    tokio::time::sleep(Duration::from_millis(5)).await;
    let second = store
        .revoke_api_key(&TenantId::default_tenant(), "k")
        .await
        .expect("revoke again");
    assert_eq!(second.revoked_at, Some(first_revoked_at));
    assert_eq!(store.get_api_key("k").await.expect("get"), Some(first));
}

async fn the_audit_log_lists_newest_first_with_filters_and_a_cursor(backend: &Backend) {
    let store = backend.control();
    let before = at_microseconds(OffsetDateTime::now_utc());
    let appended = [
        ("tenant.create", AuditOutcome::Success),
        ("key.create", AuditOutcome::Success),
        ("auth.failure", AuditOutcome::Denied),
        ("key.revoke", AuditOutcome::Failure),
        ("key.create", AuditOutcome::Denied),
    ];
    for (action, outcome) in appended {
        store
            .append_audit(audit_entry(action, outcome))
            .await
            .expect("append");
    }
    let query = |limit: usize| AuditQuery {
        limit,
        ..AuditQuery::default()
    };

    let everything = store.list_audit(query(100)).await.expect("list");
    let actions: Vec<&str> = everything
        .iter()
        .map(|entry| entry.action.as_str())
        .collect();
    assert_eq!(
        actions,
        [
            "key.create",
            "key.revoke",
            "auth.failure",
            "key.create",
            "tenant.create"
        ]
    );
    for pair in everything.windows(2) {
        assert!(
            pair[0].sequence > pair[1].sequence,
            "newest first: {pair:?}"
        );
    }
    let newest = &everything[0];
    assert!(before <= newest.at && newest.at <= OffsetDateTime::now_utc());
    assert_eq!(newest.actor, "key:abc123");
    assert_eq!(newest.actor_tenant.as_deref(), Some("default"));
    assert_eq!(newest.target, "target of key.create");
    assert_eq!(newest.outcome, AuditOutcome::Denied);
    assert_eq!(newest.source_address.as_deref(), Some("192.0.2.7"));
    assert_eq!(newest.request_id.as_deref(), Some("request-key.create"));
    assert_eq!(newest.detail, "key.create happened");

    let key_creations = store
        .list_audit(AuditQuery {
            action: Some("key.create".to_string()),
            ..query(100)
        })
        .await
        .expect("list");
    let outcomes: Vec<AuditOutcome> = key_creations.iter().map(|entry| entry.outcome).collect();
    assert_eq!(outcomes, [AuditOutcome::Denied, AuditOutcome::Success]);

    let denials = store
        .list_audit(AuditQuery {
            outcome: Some(AuditOutcome::Denied),
            ..query(100)
        })
        .await
        .expect("list");
    let actions: Vec<&str> = denials.iter().map(|entry| entry.action.as_str()).collect();
    assert_eq!(actions, ["key.create", "auth.failure"]);

    let denied_key_creations = store
        .list_audit(AuditQuery {
            action: Some("key.create".to_string()),
            outcome: Some(AuditOutcome::Denied),
            ..query(100)
        })
        .await
        .expect("list");
    assert_eq!(denied_key_creations, everything[..1]);

    // Paging with the cursor visits every entry once, in order.
    let mut paged = Vec::new();
    let mut cursor = None;
    loop {
        let page = store
            .list_audit(AuditQuery {
                before_sequence: cursor,
                ..query(2)
            })
            .await
            .expect("list");
        assert!(page.len() <= 2, "the limit is respected");
        let Some(last) = page.last() else {
            break;
        };
        cursor = Some(last.sequence);
        paged.extend(page);
    }
    assert_eq!(paged, everything);
    assert!(store.list_audit(query(0)).await.expect("list").is_empty());
}

async fn a_completed_idempotent_request_replays_its_response(backend: &Backend) {
    let store = backend.control();
    let default_tenant = TenantId::default_tenant();
    let begin = |fingerprint: &'static str| {
        store.begin_idempotent(&default_tenant, "order-1", fingerprint, in_one_hour())
    };
    assert_eq!(
        begin("fp-1").await.expect("begin"),
        IdempotencyBegin::Started
    );
    assert_eq!(
        begin("fp-1").await.expect("begin"),
        IdempotencyBegin::InProgress
    );

    // Not valid UTF-8 on purpose: bodies are bytes.
    let stored = response(&[0, 159, 146, 150, 255, b'{', b'}']);
    store
        .complete_idempotent(&default_tenant, "order-1", stored.clone())
        .await
        .expect("complete");
    assert_eq!(
        begin("fp-1").await.expect("begin"),
        IdempotencyBegin::Completed(stored)
    );
    assert_eq!(
        begin("fp-2").await.expect("begin"),
        IdempotencyBegin::FingerprintMismatch
    );
}

async fn idempotency_keys_are_isolated_per_tenant(backend: &Backend) {
    let store = backend.control();
    let default_tenant = TenantId::default_tenant();
    let other_tenant = tenant("other");
    let begin = |tenant_id: &TenantId| {
        let tenant_id = tenant_id.clone();
        async move {
            store
                .begin_idempotent(&tenant_id, "shared-key", "fp", in_one_hour())
                .await
                .expect("begin")
        }
    };
    assert_eq!(begin(&default_tenant).await, IdempotencyBegin::Started);
    assert_eq!(begin(&other_tenant).await, IdempotencyBegin::Started);
    store
        .complete_idempotent(&default_tenant, "shared-key", response(b"mine"))
        .await
        .expect("complete");
    assert_eq!(
        begin(&other_tenant).await,
        IdempotencyBegin::InProgress,
        "completing one tenant's key leaves the other's alone"
    );
    assert_eq!(
        begin(&default_tenant).await,
        IdempotencyBegin::Completed(response(b"mine"))
    );
}

async fn an_abandoned_idempotency_key_starts_again(backend: &Backend) {
    let store = backend.control();
    let default_tenant = TenantId::default_tenant();
    let begin = || store.begin_idempotent(&default_tenant, "retry-me", "fp", in_one_hour());
    assert_eq!(begin().await.expect("begin"), IdempotencyBegin::Started);
    store
        .abandon_idempotent(&default_tenant, "retry-me")
        .await
        .expect("abandon");
    assert_eq!(begin().await.expect("begin"), IdempotencyBegin::Started);

    // Abandoning a completed key must not lose its response.
    store
        .complete_idempotent(&default_tenant, "retry-me", response(b"done"))
        .await
        .expect("complete");
    store
        .abandon_idempotent(&default_tenant, "retry-me")
        .await
        .expect("abandon");
    assert_eq!(
        begin().await.expect("begin"),
        IdempotencyBegin::Completed(response(b"done"))
    );
}

async fn expired_idempotency_records_count_as_absent_and_are_purged(backend: &Backend) {
    let store = backend.control();
    let default_tenant = TenantId::default_tenant();
    let begin = |key: &'static str, expires_at: OffsetDateTime| {
        store.begin_idempotent(&default_tenant, key, "fp", expires_at)
    };

    assert_eq!(
        begin("stale", a_minute_ago()).await.expect("begin"),
        IdempotencyBegin::Started
    );
    assert_eq!(
        begin("stale", in_one_hour()).await.expect("begin"),
        IdempotencyBegin::Started
    );
    assert_eq!(
        begin("stale", in_one_hour()).await.expect("begin"),
        IdempotencyBegin::InProgress
    );

    assert_eq!(
        begin("old-1", a_minute_ago()).await.expect("begin"),
        IdempotencyBegin::Started
    );
    store
        .complete_idempotent(&default_tenant, "old-1", response(b"expired"))
        .await
        .expect("complete");
    assert_eq!(
        begin("old-1", a_minute_ago()).await.expect("begin"),
        IdempotencyBegin::Started,
        "an expired response is not replayed"
    );
    assert_eq!(
        begin("old-2", a_minute_ago()).await.expect("begin"),
        IdempotencyBegin::Started
    );
    assert_eq!(
        begin("fresh", in_one_hour()).await.expect("begin"),
        IdempotencyBegin::Started
    );

    let purged = store
        .purge_expired_idempotency(OffsetDateTime::now_utc())
        .await
        .expect("purge");
    assert_eq!(purged, 2, "old-1 and old-2 went");
    assert_eq!(
        begin("fresh", in_one_hour()).await.expect("begin"),
        IdempotencyBegin::InProgress
    );
    assert_eq!(
        begin("stale", in_one_hour()).await.expect("begin"),
        IdempotencyBegin::InProgress
    );
    let purged_again = store
        .purge_expired_idempotency(OffsetDateTime::now_utc())
        .await
        .expect("purge");
    assert_eq!(purged_again, 0);
}

async fn concurrent_begins_of_one_key_start_exactly_once(backend: &Backend) {
    const CONTENDERS: usize = 8;
    let start_line = Arc::new(Barrier::new(CONTENDERS));
    let mut contenders = Vec::with_capacity(CONTENDERS);
    for _ in 0..CONTENDERS {
        let store = Arc::clone(&backend.control);
        let start_line = Arc::clone(&start_line);
        contenders.push(tokio::spawn(async move {
            start_line.wait().await;
            store
                .begin_idempotent(&TenantId::default_tenant(), "race", "fp", in_one_hour())
                .await
        }));
    }
    let mut started = 0;
    let mut in_progress = 0;
    for contender in contenders {
        match contender.await.expect("task").expect("begin") {
            IdempotencyBegin::Started => started += 1,
            IdempotencyBegin::InProgress => in_progress += 1,
            other => panic!("unexpected answer {other:?}"),
        }
    }
    assert_eq!(started, 1);
    assert_eq!(in_progress, CONTENDERS - 1);
}
