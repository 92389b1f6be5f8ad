//! The conformance suite every event store backend must pass.
//!
//! Each case is written once, against [`EventStore`], and run by
//! `conformance_suite!` on every backend: SQLite in a temporary directory,
//! and PostgreSQL in a fresh schema per test (skipped with a message when
//! `PLINTH_TEST_POSTGRES_URL` is unset, a failure under `scripts/test.sh`).
//! Whatever a caller can observe must be identical on both.

use std::collections::HashSet;
use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use futures::TryStreamExt;
use plinth_core::config::{EventsConfig, PostgresConfig, SqliteConfig};
use plinth_core::resilience::{BreakerConfig, CircuitBreaker};
use plinth_core::{Error, ErrorKind, HumanDuration, TenantId};
use plinth_engines::test_support::{isolated_postgres_url, postgres_url};
use plinth_engines::{PostgresEngine, SqliteEngine, Store, sqlite_failure};
use serde_json::json;
use tempfile::TempDir;
use uuid::Uuid;

use crate::clock::ManualClock;
use crate::export::{ExportLine, ExportRecord};
use crate::migrations::{EVENTS_MIGRATIONS, micros_to_time};
use crate::model::{
    AllFilter, AppendError, AppendRequest, AppendResult, AsOf, DeleteMode, ExpectedVersion,
    NewEvent, NewSnapshot, ReadAllRequest, ReadStreamRequest, StreamMetadata, StreamName,
    StreamStatus,
};
use crate::scavenge::ScavengeProgress;
use crate::service::EventStore;
use crate::verify::ProblemKind;

const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// 2026-01-01T00:00:00Z, where every test's clock starts.
const START_MICROS: i64 = 1_767_225_600_000_000;

/// One migrated backend for one test.
pub(crate) struct Backend {
    pub(crate) store: Store,
    pub(crate) events: EventStore,
    pub(crate) clock: Arc<ManualClock>,
    /// Holds the SQLite database until the test ends.
    _directory: Option<TempDir>,
}

impl Backend {
    /// Another service over the same database, as after a node restart.
    pub(crate) fn restarted(&self) -> EventStore {
        EventStore::new(&self.store, test_config())
            .expect("valid config")
            .with_clock(Arc::clone(&self.clock) as Arc<dyn crate::clock::Clock>)
    }

    /// Runs raw SQL on the backend, to damage what `verify` must catch.
    async fn execute_raw(&self, sql: &'static str) {
        match &self.store {
            Store::Sqlite(engine) => engine
                .write("test_raw_sql", move |connection| {
                    connection.execute_batch(sql).map_err(sqlite_failure)
                })
                .await
                .expect("raw sql on sqlite"),
            Store::Postgres(engine) => {
                engine
                    .execute_cached("test_raw_sql", sql, &[])
                    .await
                    .expect("raw sql on postgres");
            }
        }
    }
}

fn test_config() -> EventsConfig {
    EventsConfig {
        max_events_per_append: 20,
        max_event_bytes: 2_000,
        max_append_bytes: 10_000,
        max_read_count: 50,
        scavenge_batch_size: 3,
        ..EventsConfig::default()
    }
}

pub(crate) async fn open_sqlite(_test_name: &str) -> Option<Backend> {
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

pub(crate) async fn open_postgres(test_name: &str) -> Option<Backend> {
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
        .migrate(&[&EVENTS_MIGRATIONS])
        .await
        .expect("apply the event store migrations");
    let clock = Arc::new(ManualClock::starting_at(START_MICROS));
    let events = EventStore::new(&store, test_config())
        .expect("valid config")
        .with_clock(Arc::clone(&clock) as Arc<dyn crate::clock::Clock>);
    Backend {
        store,
        events,
        clock,
        _directory: directory,
    }
}

/// Runs every case below as one `#[tokio::test]` per backend.
macro_rules! conformance_suite {
    ($backend:ident, $open:ident) => {
        mod $backend {
            conformance_suite!(@cases $backend, $open;
                appends_number_revisions_from_zero_and_positions_without_gaps,
                expected_versions_are_enforced_and_conflicts_carry_the_current_version,
                a_retried_append_replays_its_result_and_writes_nothing_even_after_a_restart,
                ids_stored_elsewhere_in_the_stream_are_a_conflict,
                bad_input_is_refused_with_distinct_codes_and_writes_nothing,
                metadata_carries_correlation_and_causation_ids,
                stream_reads_page_forward_and_backward_with_cursors,
                global_reads_filter_by_prefix_and_type_in_both_directions,
                point_in_time_reads_see_only_what_was_committed_then,
                snapshots_are_kept_apart_and_refused_beyond_the_stream,
                retention_metadata_hides_events_at_once,
                a_soft_deleted_stream_is_recreated_with_continued_numbering,
                a_hard_deleted_stream_refuses_appends_and_reads,
                scavenge_removes_hidden_events_in_batches_and_chains_still_verify,
                verify_reports_tampering_and_missing_events_precisely,
                export_then_import_round_trips_and_repeats_idempotently,
                export_then_import_keeps_stream_states_and_snapshots,
                tenants_cannot_see_or_touch_each_others_streams,
                subscribers_are_woken_by_commits,
                concurrent_writers_leave_no_gaps_and_readers_never_skip_ahead,
                concurrent_appends_each_get_their_own_answer,
            );
        }
    };
    (@cases $backend:ident, $open:ident; $($case:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() {
                let test_name = concat!("events_", stringify!($backend), "_", stringify!($case));
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

pub(crate) fn tenant(id: &str) -> TenantId {
    TenantId::parse(id).expect("a valid tenant id")
}

pub(crate) fn stream(name: &str) -> StreamName {
    StreamName::parse(name).expect("a valid stream name")
}

fn event(event_type: &str, number: u64) -> NewEvent {
    NewEvent::new(event_type, json!({ "number": number }))
}

pub(crate) fn events(count: u64) -> Vec<NewEvent> {
    (0..count).map(|number| event("Happened", number)).collect()
}

pub(crate) async fn append(
    backend: &Backend,
    tenant_id: &str,
    stream_name: &str,
    expected_version: ExpectedVersion,
    batch: Vec<NewEvent>,
) -> Result<AppendResult, AppendError> {
    backend
        .events
        .append(
            &tenant(tenant_id),
            &stream(stream_name),
            AppendRequest::new(expected_version, batch),
        )
        .await
}

async fn append_ok(
    backend: &Backend,
    stream_name: &str,
    expected_version: ExpectedVersion,
    batch: Vec<NewEvent>,
) -> AppendResult {
    append(backend, "acme", stream_name, expected_version, batch)
        .await
        .expect("append")
}

pub(crate) fn assert_error<T: Debug>(result: Result<T, Error>, kind: ErrorKind, code: &str) {
    match result {
        Ok(value) => panic!("expected a {kind:?} error `{code}`, got Ok({value:?})"),
        Err(error) => {
            assert_eq!(error.kind(), kind, "{error}");
            assert_eq!(error.code(), code, "{error}");
        }
    }
}

fn assert_append_error(result: Result<AppendResult, AppendError>, kind: ErrorKind, code: &str) {
    assert_error(result.map_err(AppendError::into_error), kind, code);
}

async fn revisions(backend: &Backend, tenant_id: &str, stream_name: &str) -> Vec<u64> {
    backend
        .events
        .read_stream(
            &tenant(tenant_id),
            &stream(stream_name),
            &ReadStreamRequest::forward(50),
        )
        .await
        .expect("read stream")
        .events
        .iter()
        .map(|event| event.revision)
        .collect()
}

async fn all_positions(backend: &Backend, tenant_id: &str) -> Vec<u64> {
    backend
        .events
        .read_all(&tenant(tenant_id), &ReadAllRequest::forward(50))
        .await
        .expect("read all")
        .events
        .iter()
        .map(|event| event.position)
        .collect()
}

async fn appends_number_revisions_from_zero_and_positions_without_gaps(backend: &Backend) {
    let first = append_ok(backend, "orders-1", ExpectedVersion::NoStream, events(3)).await;
    let revisions_and_positions: Vec<(u64, u64)> = first
        .events
        .iter()
        .map(|event| (event.revision, event.position))
        .collect();
    assert_eq!(revisions_and_positions, vec![(0, 0), (1, 1), (2, 2)]);
    assert_eq!(first.stream_version, 2);
    assert!(!first.replayed);
    let second = append_ok(backend, "orders-2", ExpectedVersion::Any, events(2)).await;
    assert_eq!(second.events[0].revision, 0);
    assert_eq!(second.events[1].position, 4);
    let third = append_ok(backend, "orders-1", ExpectedVersion::Exact(2), events(1)).await;
    assert_eq!((third.events[0].revision, third.events[0].position), (3, 5));
    assert_eq!(all_positions(backend, "acme").await, vec![0, 1, 2, 3, 4, 5]);

    let read = backend
        .events
        .read_stream(
            &tenant("acme"),
            &stream("orders-1"),
            &ReadStreamRequest::forward(10),
        )
        .await
        .expect("read");
    assert_eq!(read.stream_version, Some(3));
    let stored = &read.events[0];
    assert_eq!(stored.id, first.events[0].id);
    assert_eq!(stored.event_type, "Happened");
    assert_eq!(stored.schema_version, 1);
    assert_eq!(stored.data, json!({ "number": 0 }));
    assert_eq!(stored.recorded_at, micros_to_time(START_MICROS).unwrap());
    assert_eq!(stored.hash.len(), 64);
}

async fn expected_versions_are_enforced_and_conflicts_carry_the_current_version(backend: &Backend) {
    let conflict = |result: Result<AppendResult, AppendError>| match result {
        Err(AppendError::WrongExpectedVersion(conflict)) => conflict.current_version,
        other => panic!("expected a version conflict, got {other:?}"),
    };
    let missing = append(backend, "acme", "s", ExpectedVersion::Exists, events(1)).await;
    assert_eq!(conflict(missing), None);
    let missing = append(backend, "acme", "s", ExpectedVersion::Exact(0), events(1)).await;
    assert_eq!(conflict(missing), None);
    append_ok(backend, "s", ExpectedVersion::NoStream, events(3)).await;
    let again = append(backend, "acme", "s", ExpectedVersion::NoStream, events(1)).await;
    assert_eq!(conflict(again), Some(2));
    let stale = append(backend, "acme", "s", ExpectedVersion::Exact(1), events(1)).await;
    let error = stale.clone().unwrap_err().into_error();
    assert_eq!(conflict(stale), Some(2));
    assert_eq!(error.kind(), ErrorKind::Conflict);
    assert_eq!(error.code(), "wrong_expected_version");
    assert!(error.detail().contains("is at 2"), "{error}");
    append_ok(backend, "s", ExpectedVersion::Exists, events(1)).await;
    append_ok(backend, "s", ExpectedVersion::Exact(3), events(1)).await;
    assert_eq!(revisions(backend, "acme", "s").await, vec![0, 1, 2, 3, 4]);
    assert_eq!(
        all_positions(backend, "acme").await.len(),
        5,
        "refused appends wrote nothing"
    );
}

async fn a_retried_append_replays_its_result_and_writes_nothing_even_after_a_restart(
    backend: &Backend,
) {
    let batch: Vec<NewEvent> = (0..3)
        .map(|number| event("Paid", number).with_id(Uuid::new_v4()))
        .collect();
    append_ok(backend, "pay", ExpectedVersion::NoStream, events(1)).await;
    let original = append_ok(backend, "pay", ExpectedVersion::Exact(0), batch.clone()).await;
    append_ok(backend, "pay", ExpectedVersion::Exact(3), events(1)).await;

    let retried = append_ok(backend, "pay", ExpectedVersion::Exact(0), batch.clone()).await;
    assert!(retried.replayed);
    assert_eq!(retried.events, original.events);
    assert_eq!(retried.stream_version, 3);
    let with_any = append_ok(backend, "pay", ExpectedVersion::Any, batch.clone()).await;
    assert_eq!(with_any.events, original.events);

    let after_restart = backend
        .restarted()
        .append(
            &tenant("acme"),
            &stream("pay"),
            AppendRequest::new(ExpectedVersion::Exact(0), batch),
        )
        .await
        .expect("replayed after a restart");
    assert!(after_restart.replayed);
    assert_eq!(after_restart.events, original.events);
    assert_eq!(revisions(backend, "acme", "pay").await, vec![0, 1, 2, 3, 4]);
    assert_eq!(all_positions(backend, "acme").await, vec![0, 1, 2, 3, 4]);
}

async fn ids_stored_elsewhere_in_the_stream_are_a_conflict(backend: &Backend) {
    let first_id = Uuid::new_v4();
    let second_id = Uuid::new_v4();
    append_ok(
        backend,
        "ids",
        ExpectedVersion::NoStream,
        vec![
            event("A", 0).with_id(first_id),
            event("A", 1).with_id(second_id),
        ],
    )
    .await;
    let wrong_place = append(
        backend,
        "acme",
        "ids",
        ExpectedVersion::Exact(5),
        vec![
            event("A", 0).with_id(first_id),
            event("A", 1).with_id(second_id),
        ],
    )
    .await;
    assert_append_error(wrong_place, ErrorKind::Conflict, "event_id_conflict");
    let partly_new = append(
        backend,
        "acme",
        "ids",
        ExpectedVersion::Any,
        vec![
            event("A", 0).with_id(first_id),
            event("A", 9).with_id(Uuid::new_v4()),
        ],
    )
    .await;
    assert_append_error(partly_new, ErrorKind::Conflict, "event_id_conflict");
    let reordered = append(
        backend,
        "acme",
        "ids",
        ExpectedVersion::Any,
        vec![
            event("A", 1).with_id(second_id),
            event("A", 0).with_id(first_id),
        ],
    )
    .await;
    assert_append_error(reordered, ErrorKind::Conflict, "event_id_conflict");
    let other_stream = append(
        backend,
        "acme",
        "ids-elsewhere",
        ExpectedVersion::NoStream,
        vec![event("A", 0).with_id(first_id)],
    )
    .await;
    assert!(
        other_stream.is_ok(),
        "ids are unique per stream, not per tenant"
    );
    assert_eq!(revisions(backend, "acme", "ids").await, vec![0, 1]);
}

async fn bad_input_is_refused_with_distinct_codes_and_writes_nothing(backend: &Backend) {
    assert_error(
        StreamName::parse("a/b"),
        ErrorKind::InvalidArgument,
        "invalid_name",
    );
    assert_error(
        StreamName::parse(".hidden"),
        ErrorKind::InvalidArgument,
        "invalid_name",
    );
    assert_error(
        StreamName::parse(""),
        ErrorKind::InvalidArgument,
        "invalid_name",
    );
    for malformed in ["-1", "1.5", "anything", "", "99999999999999999999"] {
        assert_error(
            ExpectedVersion::parse(malformed),
            ErrorKind::InvalidArgument,
            "invalid_expected_version",
        );
    }
    assert!(serde_json::from_str::<ExpectedVersion>("-3").is_err());
    assert_eq!(
        serde_json::from_str::<ExpectedVersion>("\"no_stream\"").unwrap(),
        ExpectedVersion::NoStream
    );
    assert_eq!(
        serde_json::from_str::<ExpectedVersion>("7").unwrap(),
        ExpectedVersion::Exact(7)
    );

    let cases: Vec<(Vec<NewEvent>, ErrorKind, &str)> = vec![
        (Vec::new(), ErrorKind::InvalidArgument, "empty_append"),
        (events(21), ErrorKind::PayloadTooLarge, "too_many_events"),
        (
            vec![NewEvent::new("Big", json!("x".repeat(2_100)))],
            ErrorKind::PayloadTooLarge,
            "event_too_large",
        ),
        (
            (0..6)
                .map(|_| NewEvent::new("Big", json!("x".repeat(1_900))))
                .collect(),
            ErrorKind::PayloadTooLarge,
            "append_too_large",
        ),
        (
            {
                let id = Uuid::new_v4();
                vec![event("A", 0).with_id(id), event("A", 1).with_id(id)]
            },
            ErrorKind::InvalidArgument,
            "duplicate_event_id",
        ),
        (
            vec![event("A", 0).with_metadata(json!([1, 2]))],
            ErrorKind::InvalidArgument,
            "invalid_metadata",
        ),
        (
            vec![event("A", 0).with_metadata(json!({ "correlation_id": 5 }))],
            ErrorKind::InvalidArgument,
            "invalid_metadata",
        ),
        (
            vec![event("has space", 0)],
            ErrorKind::InvalidArgument,
            "invalid_event_type",
        ),
        (
            vec![NewEvent {
                schema_version: 0,
                ..event("A", 0)
            }],
            ErrorKind::InvalidArgument,
            "invalid_schema_version",
        ),
    ];
    for (batch, kind, code) in cases {
        let refused = append(backend, "acme", "bad", ExpectedVersion::Any, batch).await;
        assert_append_error(refused, kind, code);
    }
    assert_error(
        backend
            .events
            .read_stream(
                &tenant("acme"),
                &stream("bad"),
                &ReadStreamRequest::forward(10),
            )
            .await,
        ErrorKind::NotFound,
        "stream_not_found",
    );
    assert_error(
        backend
            .events
            .read_stream(
                &tenant("acme"),
                &stream("bad"),
                &ReadStreamRequest::forward(0),
            )
            .await,
        ErrorKind::InvalidArgument,
        "invalid_limit",
    );
    let bad_filter = ReadAllRequest::forward(10).filter(AllFilter {
        stream_prefix: Some("a/".to_string()),
        event_types: Vec::new(),
    });
    assert_error(
        backend.events.read_all(&tenant("acme"), &bad_filter).await,
        ErrorKind::InvalidArgument,
        "invalid_name",
    );
    let head = backend
        .events
        .read_all(&tenant("acme"), &ReadAllRequest::forward(10))
        .await
        .expect("read all");
    assert_eq!(head.head_position, None, "nothing was written");
}

async fn metadata_carries_correlation_and_causation_ids(backend: &Backend) {
    let request = AppendRequest {
        expected_version: ExpectedVersion::Any,
        events: vec![
            event("A", 0),
            event("A", 1).with_metadata(
                json!({ "correlation_id": "own", "causation_id": "cause", "tag": 7 }),
            ),
        ],
        default_correlation_id: Some("request-42".to_string()),
    };
    backend
        .events
        .append(&tenant("acme"), &stream("meta"), request)
        .await
        .expect("append");
    let read = backend
        .events
        .read_stream(
            &tenant("acme"),
            &stream("meta"),
            &ReadStreamRequest::forward(10),
        )
        .await
        .expect("read");
    assert_eq!(read.events[0].correlation_id(), Some("request-42"));
    assert_eq!(read.events[0].causation_id(), None);
    assert_eq!(read.events[1].correlation_id(), Some("own"));
    assert_eq!(read.events[1].causation_id(), Some("cause"));
    assert_eq!(read.events[1].metadata["tag"], json!(7));
}

/// Follows a stream read's cursor to the end and returns every revision seen.
async fn revisions_of_every_page(
    backend: &Backend,
    tenant: &TenantId,
    stream: &StreamName,
    mut request: ReadStreamRequest,
) -> Vec<u64> {
    let mut seen = Vec::new();
    loop {
        let slice = backend
            .events
            .read_stream(tenant, stream, &request)
            .await
            .expect("read");
        seen.extend(slice.events.iter().map(|event| event.revision));
        match slice.next_revision {
            Some(next) => request = request.from_revision(next),
            None => return seen,
        }
    }
}

async fn stream_reads_page_forward_and_backward_with_cursors(backend: &Backend) {
    append_ok(backend, "pages", ExpectedVersion::NoStream, events(7)).await;
    let acme = tenant("acme");
    let pages = stream("pages");
    let seen = revisions_of_every_page(backend, &acme, &pages, ReadStreamRequest::forward(3)).await;
    assert_eq!(seen, vec![0, 1, 2, 3, 4, 5, 6]);

    let seen_backward =
        revisions_of_every_page(backend, &acme, &pages, ReadStreamRequest::backward(3)).await;
    assert_eq!(seen_backward, vec![6, 5, 4, 3, 2, 1, 0]);

    let from_middle = backend
        .events
        .read_stream(
            &acme,
            &pages,
            &ReadStreamRequest::backward(2).from_revision(4),
        )
        .await
        .expect("read");
    let middle: Vec<u64> = from_middle
        .events
        .iter()
        .map(|event| event.revision)
        .collect();
    assert_eq!(middle, vec![4, 3]);
    let capped = backend
        .events
        .read_stream(&acme, &pages, &ReadStreamRequest::forward(10_000))
        .await
        .expect("a limit above the maximum is lowered");
    assert_eq!(capped.events.len(), 7);
}

async fn global_reads_filter_by_prefix_and_type_in_both_directions(backend: &Backend) {
    append_ok(
        backend,
        "order-1",
        ExpectedVersion::Any,
        vec![event("Placed", 0), event("Paid", 1)],
    )
    .await;
    append_ok(
        backend,
        "user-1",
        ExpectedVersion::Any,
        vec![event("Joined", 2)],
    )
    .await;
    append_ok(
        backend,
        "order-2",
        ExpectedVersion::Any,
        vec![event("Placed", 3)],
    )
    .await;
    let acme = tenant("acme");
    let orders = AllFilter {
        stream_prefix: Some("order-".to_string()),
        event_types: Vec::new(),
    };
    let read = backend
        .events
        .read_all(&acme, &ReadAllRequest::forward(10).filter(orders.clone()))
        .await
        .expect("read");
    let positions: Vec<u64> = read.events.iter().map(|event| event.position).collect();
    assert_eq!(positions, vec![0, 1, 3]);
    assert_eq!(read.head_position, Some(3));
    assert_eq!(read.next_position, None);

    let placed = AllFilter {
        stream_prefix: None,
        event_types: vec!["Placed".to_string(), "Joined".to_string()],
    };
    let read = backend
        .events
        .read_all(&acme, &ReadAllRequest::backward(2).filter(placed.clone()))
        .await
        .expect("read");
    let positions: Vec<u64> = read.events.iter().map(|event| event.position).collect();
    assert_eq!(positions, vec![3, 2]);
    assert_eq!(read.next_position, Some(1));
    let rest = backend
        .events
        .read_all(
            &acme,
            &ReadAllRequest::backward(2).from_position(1).filter(placed),
        )
        .await
        .expect("read");
    let positions: Vec<u64> = rest.events.iter().map(|event| event.position).collect();
    assert_eq!(positions, vec![0]);

    let page = backend
        .events
        .read_all(&acme, &ReadAllRequest::forward(2).from_position(1))
        .await
        .expect("read");
    let positions: Vec<u64> = page.events.iter().map(|event| event.position).collect();
    assert_eq!(positions, vec![1, 2]);
    assert_eq!(page.next_position, Some(3));
}

async fn point_in_time_reads_see_only_what_was_committed_then(backend: &Backend) {
    let acme = tenant("acme");
    append_ok(backend, "pit", ExpectedVersion::Any, events(2)).await;
    backend.clock.advance(Duration::from_secs(60));
    let middle = micros_to_time(START_MICROS + 60_000_000).unwrap();
    append_ok(backend, "pit", ExpectedVersion::Any, events(2)).await;
    append_ok(backend, "other", ExpectedVersion::Any, events(1)).await;
    backend.clock.advance(Duration::from_secs(60));
    append_ok(backend, "pit", ExpectedVersion::Any, events(1)).await;

    let as_of_position = backend
        .events
        .read_stream(
            &acme,
            &stream("pit"),
            &ReadStreamRequest::forward(10).as_of(AsOf::Position(2)),
        )
        .await
        .expect("read");
    let seen: Vec<u64> = as_of_position
        .events
        .iter()
        .map(|event| event.revision)
        .collect();
    assert_eq!(seen, vec![0, 1, 2]);
    let as_of_time = backend
        .events
        .read_stream(
            &acme,
            &stream("pit"),
            &ReadStreamRequest::backward(10).as_of(AsOf::Timestamp(middle)),
        )
        .await
        .expect("read");
    let seen: Vec<u64> = as_of_time
        .events
        .iter()
        .map(|event| event.revision)
        .collect();
    assert_eq!(seen, vec![3, 2, 1, 0]);
    let log_as_of_time = backend
        .events
        .read_all(
            &acme,
            &ReadAllRequest::forward(10).as_of(AsOf::Timestamp(middle)),
        )
        .await
        .expect("read");
    let positions: Vec<u64> = log_as_of_time
        .events
        .iter()
        .map(|event| event.position)
        .collect();
    assert_eq!(positions, vec![0, 1, 2, 3, 4]);
    let log_as_of_position = backend
        .events
        .read_all(
            &acme,
            &ReadAllRequest::backward(10).as_of(AsOf::Position(1)),
        )
        .await
        .expect("read");
    let positions: Vec<u64> = log_as_of_position
        .events
        .iter()
        .map(|event| event.position)
        .collect();
    assert_eq!(positions, vec![1, 0]);
}

async fn snapshots_are_kept_apart_and_refused_beyond_the_stream(backend: &Backend) {
    let acme = tenant("acme");
    let account = stream("account-1");
    assert_error(
        backend
            .events
            .save_snapshot(
                &acme,
                &account,
                NewSnapshot {
                    revision: 0,
                    data: json!({}),
                    schema_version: 1,
                },
            )
            .await,
        ErrorKind::NotFound,
        "stream_not_found",
    );
    append_ok(backend, "account-1", ExpectedVersion::NoStream, events(5)).await;
    let none_yet = backend
        .events
        .read_from_snapshot(&acme, &account, 10)
        .await
        .expect("read");
    assert!(none_yet.snapshot.is_none());
    assert_eq!(none_yet.events.len(), 5);
    assert_error(
        backend
            .events
            .save_snapshot(
                &acme,
                &account,
                NewSnapshot {
                    revision: 5,
                    data: json!({}),
                    schema_version: 1,
                },
            )
            .await,
        ErrorKind::Conflict,
        "snapshot_ahead_of_stream",
    );
    backend
        .events
        .save_snapshot(
            &acme,
            &account,
            NewSnapshot {
                revision: 1,
                data: json!({ "balance": 1 }),
                schema_version: 1,
            },
        )
        .await
        .expect("save");
    backend
        .events
        .save_snapshot(
            &acme,
            &account,
            NewSnapshot {
                revision: 3,
                data: json!({ "balance": 3 }),
                schema_version: 2,
            },
        )
        .await
        .expect("replace");
    let latest = backend
        .events
        .read_snapshot(&acme, &account)
        .await
        .expect("read")
        .expect("a snapshot");
    assert_eq!((latest.revision, latest.schema_version), (3, 2));
    assert_eq!(latest.data, json!({ "balance": 3 }));
    let with_events = backend
        .events
        .read_from_snapshot(&acme, &account, 10)
        .await
        .expect("read");
    assert_eq!(
        with_events.snapshot.map(|snapshot| snapshot.revision),
        Some(3)
    );
    let after: Vec<u64> = with_events
        .events
        .iter()
        .map(|event| event.revision)
        .collect();
    assert_eq!(after, vec![4]);
    assert_eq!(
        all_positions(backend, "acme").await.len(),
        5,
        "snapshots are not events"
    );
}

async fn retention_metadata_hides_events_at_once(backend: &Backend) {
    let acme = tenant("acme");
    append_ok(backend, "capped", ExpectedVersion::Any, events(5)).await;
    let info = backend
        .events
        .set_stream_metadata(
            &acme,
            &stream("capped"),
            StreamMetadata {
                max_count: Some(2),
                ..StreamMetadata::default()
            },
        )
        .await
        .expect("set metadata");
    assert_eq!(info.visible_from_revision, 3);
    assert_eq!(revisions(backend, "acme", "capped").await, vec![3, 4]);
    append_ok(backend, "capped", ExpectedVersion::Exact(4), events(1)).await;
    assert_eq!(revisions(backend, "acme", "capped").await, vec![4, 5]);

    append_ok(backend, "truncated", ExpectedVersion::Any, events(4)).await;
    backend
        .events
        .set_stream_metadata(
            &acme,
            &stream("truncated"),
            StreamMetadata {
                truncate_before: Some(3),
                ..StreamMetadata::default()
            },
        )
        .await
        .expect("set metadata");
    assert_eq!(revisions(backend, "acme", "truncated").await, vec![3]);

    append_ok(backend, "aged", ExpectedVersion::Any, events(2)).await;
    backend.clock.advance(Duration::from_secs(120));
    append_ok(backend, "aged", ExpectedVersion::Any, events(1)).await;
    backend
        .events
        .set_stream_metadata(
            &acme,
            &stream("aged"),
            StreamMetadata {
                max_age: Some(HumanDuration::from_secs(60)),
                ..StreamMetadata::default()
            },
        )
        .await
        .expect("set metadata");
    assert_eq!(revisions(backend, "acme", "aged").await, vec![2]);
    let all: Vec<(String, u64)> = backend
        .events
        .read_all(&acme, &ReadAllRequest::forward(50))
        .await
        .expect("read all")
        .events
        .into_iter()
        .map(|event| (event.stream, event.revision))
        .collect();
    assert_eq!(
        all,
        vec![
            ("capped".to_string(), 4),
            ("capped".to_string(), 5),
            ("truncated".to_string(), 3),
            ("aged".to_string(), 2),
        ],
        "the global log hides the same events"
    );
    assert_error(
        backend
            .events
            .set_stream_metadata(
                &acme,
                &stream("aged"),
                StreamMetadata {
                    max_count: Some(0),
                    ..StreamMetadata::default()
                },
            )
            .await,
        ErrorKind::InvalidArgument,
        "invalid_stream_metadata",
    );
}

async fn a_soft_deleted_stream_is_recreated_with_continued_numbering(backend: &Backend) {
    let acme = tenant("acme");
    let cart = stream("cart");
    append_ok(backend, "cart", ExpectedVersion::NoStream, events(3)).await;
    let stale_delete = backend
        .events
        .delete_stream(&acme, &cart, DeleteMode::Soft, ExpectedVersion::Exact(0))
        .await;
    assert!(matches!(
        stale_delete,
        Err(AppendError::WrongExpectedVersion(_))
    ));
    let deleted = backend
        .events
        .delete_stream(&acme, &cart, DeleteMode::Soft, ExpectedVersion::Exact(2))
        .await
        .expect("soft delete");
    assert_eq!(deleted.status, StreamStatus::SoftDeleted);
    assert_error(
        backend
            .events
            .read_stream(&acme, &cart, &ReadStreamRequest::forward(10))
            .await,
        ErrorKind::NotFound,
        "stream_not_found",
    );
    assert!(all_positions(backend, "acme").await.is_empty());
    let metadata_without_truncation = backend
        .events
        .set_stream_metadata(&acme, &cart, StreamMetadata::default())
        .await
        .expect("a metadata write after a soft delete");
    assert_eq!(
        metadata_without_truncation.metadata.truncate_before,
        Some(3)
    );
    assert_error(
        backend
            .events
            .read_stream(&acme, &cart, &ReadStreamRequest::forward(10))
            .await,
        ErrorKind::NotFound,
        "stream_not_found",
    );
    let recreated = append_ok(backend, "cart", ExpectedVersion::NoStream, events(2)).await;
    assert_eq!(recreated.events[0].revision, 3);
    assert_eq!(revisions(backend, "acme", "cart").await, vec![3, 4]);
    let info = backend
        .events
        .stream_info(&acme, &cart)
        .await
        .expect("info");
    assert_eq!(info.status, StreamStatus::Active);
    assert_eq!(info.version, Some(4));
}

async fn a_hard_deleted_stream_refuses_appends_and_reads(backend: &Backend) {
    let acme = tenant("acme");
    let gone = stream("gone");
    append_ok(backend, "gone", ExpectedVersion::NoStream, events(2)).await;
    backend
        .events
        .delete_stream(&acme, &gone, DeleteMode::Hard, ExpectedVersion::Any)
        .await
        .expect("hard delete");
    assert_append_error(
        append(backend, "acme", "gone", ExpectedVersion::Any, events(1)).await,
        ErrorKind::NotFound,
        "stream_deleted",
    );
    assert_append_error(
        append(
            backend,
            "acme",
            "gone",
            ExpectedVersion::NoStream,
            events(1),
        )
        .await,
        ErrorKind::NotFound,
        "stream_deleted",
    );
    assert_error(
        backend
            .events
            .read_stream(&acme, &gone, &ReadStreamRequest::forward(10))
            .await,
        ErrorKind::NotFound,
        "stream_deleted",
    );
    assert_error(
        backend
            .events
            .set_stream_metadata(&acme, &gone, StreamMetadata::default())
            .await,
        ErrorKind::NotFound,
        "stream_deleted",
    );
    let info = backend
        .events
        .stream_info(&acme, &gone)
        .await
        .expect("info");
    assert_eq!(info.status, StreamStatus::Tombstoned);
    assert!(all_positions(backend, "acme").await.is_empty());
}

async fn scavenge_removes_hidden_events_in_batches_and_chains_still_verify(backend: &Backend) {
    let acme = tenant("acme");
    append_ok(backend, "keep", ExpectedVersion::Any, events(2)).await;
    append_ok(backend, "capped", ExpectedVersion::Any, events(8)).await;
    append_ok(backend, "soft", ExpectedVersion::Any, events(2)).await;
    append_ok(backend, "hard", ExpectedVersion::Any, events(2)).await;
    backend
        .events
        .save_snapshot(
            &acme,
            &stream("soft"),
            NewSnapshot {
                revision: 1,
                data: json!({}),
                schema_version: 1,
            },
        )
        .await
        .expect("snapshot");
    backend
        .events
        .set_stream_metadata(
            &acme,
            &stream("capped"),
            StreamMetadata {
                max_count: Some(1),
                ..StreamMetadata::default()
            },
        )
        .await
        .expect("metadata");
    backend
        .events
        .delete_stream(
            &acme,
            &stream("soft"),
            DeleteMode::Soft,
            ExpectedVersion::Any,
        )
        .await
        .expect("soft delete");
    backend
        .events
        .delete_stream(
            &acme,
            &stream("hard"),
            DeleteMode::Hard,
            ExpectedVersion::Any,
        )
        .await
        .expect("hard delete");
    let visible_before = all_positions(backend, "acme").await;

    let progress = ScavengeProgress::default();
    let report = backend.events.scavenge(&progress).await.expect("scavenge");
    assert_eq!(report.events_removed, 7 + 2 + 2);
    assert_eq!(report.snapshots_removed, 1);
    assert!(report.batches >= 4, "batches of 3: {report:?}");
    assert_eq!(progress.report(), report);
    assert_eq!(all_positions(backend, "acme").await, visible_before);
    let stored_events = export_lines(backend, "acme", None)
        .await
        .into_iter()
        .filter(|line| matches!(line, ExportLine::Event(_)))
        .count();
    assert_eq!(stored_events, 2 + 1);

    let verified = backend.events.verify(&acme).await.expect("verify");
    assert!(verified.is_intact(), "{verified:?}");
    assert_eq!(verified.events_removed_by_scavenge, 11);
    assert_eq!(
        backend
            .events
            .scavenge(&ScavengeProgress::default())
            .await
            .expect("again")
            .events_removed,
        0
    );

    let continued = append_ok(backend, "capped", ExpectedVersion::Exact(7), events(1)).await;
    assert_eq!(continued.events[0].revision, 8);
    append_ok(backend, "soft", ExpectedVersion::NoStream, events(1)).await;
    let verified = backend.events.verify(&acme).await.expect("verify");
    assert!(
        verified.is_intact(),
        "chains continue after a scavenge: {verified:?}"
    );
}

/// What a problem is and where: stream, revision, position.
type ProblemLocation = (ProblemKind, Option<String>, Option<u64>, Option<u64>);

async fn verify_reports_tampering_and_missing_events_precisely(backend: &Backend) {
    let acme = tenant("acme");
    append_ok(backend, "ledger", ExpectedVersion::Any, events(4)).await;
    append_ok(backend, "other", ExpectedVersion::Any, events(2)).await;
    let intact = backend.events.verify(&acme).await.expect("verify");
    assert!(intact.is_intact(), "{intact:?}");
    assert_eq!((intact.events_checked, intact.streams_checked), (6, 2));

    backend
        .execute_raw(
            "UPDATE plinth_events_events SET data = '{\"number\":99}'
             WHERE tenant = 'acme' AND stream = 'ledger' AND revision = 1",
        )
        .await;
    backend
        .execute_raw(
            "DELETE FROM plinth_events_events WHERE tenant = 'acme' AND stream = 'other' AND revision = 1",
        )
        .await;
    let report = backend.events.verify(&acme).await.expect("verify");
    let found: Vec<ProblemLocation> = report
        .problems
        .iter()
        .map(|problem| {
            (
                problem.kind,
                problem.stream.clone(),
                problem.revision,
                problem.position,
            )
        })
        .collect();
    assert_eq!(
        found,
        vec![
            (
                ProblemKind::HashMismatch,
                Some("ledger".to_string()),
                Some(1),
                Some(1)
            ),
            (
                ProblemKind::MissingTail,
                Some("other".to_string()),
                Some(1),
                None
            ),
            (ProblemKind::PositionGap, None, None, Some(5)),
        ],
        "{report:?}"
    );
}

fn exported_event(line: &ExportLine) -> &ExportRecord {
    match line {
        ExportLine::Event(record) => record,
        other => panic!("expected an event line, got {other:?}"),
    }
}

async fn export_lines(backend: &Backend, tenant_id: &str, only: Option<&str>) -> Vec<ExportLine> {
    backend
        .events
        .export(&tenant(tenant_id), only.map(stream))
        .try_collect()
        .await
        .expect("export")
}

async fn export_then_import_round_trips_and_repeats_idempotently(backend: &Backend) {
    let copy = tenant("copy");
    append_ok(backend, "a", ExpectedVersion::Any, events(3)).await;
    append_ok(backend, "b", ExpectedVersion::Any, events(2)).await;
    append_ok(backend, "a", ExpectedVersion::Any, events(1)).await;
    let exported = export_lines(backend, "acme", None).await;
    assert_eq!(exported.len(), 6, "only events: {exported:?}");
    let lines: Vec<String> = exported
        .iter()
        .map(|line| serde_json::to_string(line).expect("one JSON line"))
        .collect();
    assert!(lines[0].contains(r#""kind":"event""#), "{}", lines[0]);
    let parsed: Vec<ExportLine> = lines
        .iter()
        .map(|line| serde_json::from_str(line).expect("parse a line"))
        .collect();
    assert_eq!(parsed, exported);

    let report = backend
        .events
        .import(&copy, parsed.clone())
        .await
        .expect("import");
    assert_eq!((report.imported, report.skipped), (6, 0));
    let again = backend
        .events
        .import(&copy, parsed.clone())
        .await
        .expect("import again");
    assert_eq!((again.imported, again.skipped), (0, 6));
    let hashes = |lines: &[ExportLine]| -> Vec<(String, u64, String)> {
        lines
            .iter()
            .map(exported_event)
            .map(|record| (record.stream.clone(), record.revision, record.hash.clone()))
            .collect()
    };
    assert_eq!(
        hashes(&export_lines(backend, "copy", None).await),
        hashes(&exported)
    );
    assert!(
        backend
            .events
            .verify(&copy)
            .await
            .expect("verify")
            .is_intact()
    );
    let continued = append(backend, "copy", "a", ExpectedVersion::Exact(3), events(1))
        .await
        .expect("append");
    assert_eq!(continued.events[0].revision, 4);

    assert_eq!(export_lines(backend, "acme", Some("b")).await.len(), 2);

    let mut altered = exported_event(&parsed[0]).clone();
    altered.data = json!({ "number": 1000 });
    assert_error(
        backend
            .events
            .import(&tenant("third"), vec![ExportLine::Event(altered)])
            .await,
        ErrorKind::InvalidArgument,
        "import_hash_mismatch",
    );
    assert_error(
        backend
            .events
            .import(
                &tenant("fourth"),
                vec![parsed[0].clone(), parsed[2].clone()],
            )
            .await,
        ErrorKind::InvalidArgument,
        "import_out_of_order",
    );
}

/// Retention, deletions and snapshots travel with the events, so a
/// restored tenant reads exactly like the original.
async fn export_then_import_keeps_stream_states_and_snapshots(backend: &Backend) {
    let acme = tenant("acme");
    append_ok(backend, "kept", ExpectedVersion::Any, events(4)).await;
    append_ok(backend, "soft", ExpectedVersion::Any, events(2)).await;
    append_ok(backend, "hard", ExpectedVersion::Any, events(1)).await;
    backend
        .events
        .set_stream_metadata(
            &acme,
            &stream("kept"),
            StreamMetadata {
                max_count: Some(2),
                ..StreamMetadata::default()
            },
        )
        .await
        .expect("metadata");
    backend
        .events
        .save_snapshot(
            &acme,
            &stream("kept"),
            NewSnapshot {
                revision: 3,
                data: json!({ "total": 6 }),
                schema_version: 1,
            },
        )
        .await
        .expect("snapshot");
    for (name, mode) in [("soft", DeleteMode::Soft), ("hard", DeleteMode::Hard)] {
        backend
            .events
            .delete_stream(&acme, &stream(name), mode, ExpectedVersion::Any)
            .await
            .expect("delete");
    }

    let exported = export_lines(backend, "acme", None).await;
    let trailer: Vec<&ExportLine> = exported
        .iter()
        .filter(|line| !matches!(line, ExportLine::Event(_)))
        .collect();
    assert_eq!(
        trailer.len(),
        4,
        "three stream states and one snapshot: {trailer:?}"
    );
    assert!(
        matches!(exported.last(), Some(line) if !matches!(line, ExportLine::Event(_))),
        "events come first"
    );

    let copy = tenant("copy");
    for attempt in 0..2 {
        let report = backend
            .events
            .import(&copy, exported.clone())
            .await
            .expect("import");
        assert_eq!(
            (report.streams, report.snapshots),
            (3, 1),
            "attempt {attempt}"
        );
    }
    for name in ["kept", "soft", "hard"] {
        let original = backend.events.stream_info(&acme, &stream(name)).await;
        let restored = backend.events.stream_info(&copy, &stream(name)).await;
        assert_eq!(
            format!("{restored:?}"),
            format!("{original:?}"),
            "stream {name}"
        );
    }
    assert_eq!(revisions(backend, "copy", "kept").await, vec![2, 3]);
    let snapshot = backend
        .events
        .read_snapshot(&copy, &stream("kept"))
        .await
        .expect("read the snapshot")
        .expect("the snapshot came along");
    assert_eq!(snapshot.revision, 3);
    assert_eq!(snapshot.data, json!({ "total": 6 }));
    assert_append_error(
        append(backend, "copy", "hard", ExpectedVersion::Any, events(1)).await,
        ErrorKind::NotFound,
        "stream_deleted",
    );
    let recreated = append(
        backend,
        "copy",
        "soft",
        ExpectedVersion::NoStream,
        events(1),
    )
    .await
    .expect("a soft-deleted stream is re-created");
    assert_eq!(recreated.events[0].revision, 2);
}

async fn tenants_cannot_see_or_touch_each_others_streams(backend: &Backend) {
    append(
        backend,
        "tenant-a",
        "secret",
        ExpectedVersion::NoStream,
        events(3),
    )
    .await
    .expect("append");
    let tenant_b = tenant("tenant-b");
    let secret = stream("secret");
    assert_error(
        backend
            .events
            .read_stream(&tenant_b, &secret, &ReadStreamRequest::forward(10))
            .await,
        ErrorKind::NotFound,
        "stream_not_found",
    );
    assert_error(
        backend.events.stream_info(&tenant_b, &secret).await,
        ErrorKind::NotFound,
        "stream_not_found",
    );
    let log = backend
        .events
        .read_all(&tenant_b, &ReadAllRequest::forward(10))
        .await
        .expect("read all");
    assert!(log.events.is_empty());
    assert_eq!(
        log.head_position, None,
        "tenant B learns nothing of A's log"
    );
    let own = append(
        backend,
        "tenant-b",
        "secret",
        ExpectedVersion::NoStream,
        events(1),
    )
    .await
    .expect("B's own stream of the same name");
    assert_eq!((own.events[0].revision, own.events[0].position), (0, 0));
    assert_eq!(
        revisions(backend, "tenant-a", "secret").await,
        vec![0, 1, 2]
    );
    let exported: Vec<_> = backend
        .events
        .export(&tenant_b, None)
        .try_collect()
        .await
        .expect("export");
    assert_eq!(exported.len(), 1);
    backend
        .events
        .delete_stream(&tenant_b, &secret, DeleteMode::Hard, ExpectedVersion::Any)
        .await
        .expect("B deletes its own");
    assert_eq!(
        revisions(backend, "tenant-a", "secret").await,
        vec![0, 1, 2]
    );
}

async fn subscribers_are_woken_by_commits(backend: &Backend) {
    let acme = tenant("acme");
    let mut receiver = backend.events.subscribe(&acme);
    assert_eq!(*receiver.borrow(), None);
    let waiter = tokio::spawn(async move {
        receiver.changed().await.expect("a commit");
        *receiver.borrow()
    });
    append_ok(backend, "live", ExpectedVersion::Any, events(3)).await;
    let seen = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("woken")
        .expect("join");
    assert_eq!(seen, Some(2));
    let mut other = backend.events.subscribe(&tenant("other"));
    assert!(!other.has_changed().expect("open"));
    append_ok(backend, "live", ExpectedVersion::Any, events(1)).await;
    assert!(
        !other.has_changed().expect("open"),
        "other tenants are not woken"
    );
    assert_eq!(*backend.events.subscribe(&acme).borrow(), Some(3));
    other.mark_unchanged();
}

const WRITERS: usize = 8;
const APPENDS_PER_WRITER: usize = 25;

async fn concurrent_writers_leave_no_gaps_and_readers_never_skip_ahead(backend: &Backend) {
    let acme = tenant("acme");
    let events_store = &backend.events;
    let mut expected_total = 0u64;
    for writer in 0..WRITERS {
        for append_index in 0..APPENDS_PER_WRITER {
            expected_total += 1 + ((writer + append_index) % 3) as u64;
        }
    }
    let writers = async {
        let mut handles = Vec::new();
        for writer in 0..WRITERS {
            handles.push(async move {
                for append_index in 0..APPENDS_PER_WRITER {
                    let stream_name = format!("busy-{}", (writer * 7 + append_index) % 10);
                    let count = 1 + ((writer + append_index) % 3) as u64;
                    events_store
                        .append(
                            &tenant("acme"),
                            &stream(&stream_name),
                            AppendRequest::new(ExpectedVersion::Any, events(count)),
                        )
                        .await
                        .expect("concurrent append");
                }
            });
        }
        futures::future::join_all(handles).await;
    };
    let reader = async {
        let mut next_position = 0u64;
        let mut pages = 0;
        while next_position < expected_total {
            let page = events_store
                .read_all(
                    &acme,
                    &ReadAllRequest::forward(50).from_position(next_position),
                )
                .await
                .expect("read all");
            for event in &page.events {
                assert_eq!(
                    event.position, next_position,
                    "the reader saw position {} before {next_position}",
                    event.position
                );
                next_position += 1;
            }
            pages += 1;
            tokio::task::yield_now().await;
        }
        (next_position, pages)
    };
    let ((), (read_up_to, pages)) = tokio::join!(writers, reader);
    assert_eq!(read_up_to, expected_total);
    assert!(pages > 1);

    let mut seen_positions = HashSet::new();
    let mut request = ReadAllRequest::forward(50);
    loop {
        let page = events_store
            .read_all(&acme, &request)
            .await
            .expect("read all");
        for event in &page.events {
            assert!(seen_positions.insert(event.position));
        }
        match page.next_position {
            Some(next) => request = request.from_position(next),
            None => break,
        }
    }
    assert_eq!(seen_positions.len() as u64, expected_total);
    assert_eq!(seen_positions.iter().max(), Some(&(expected_total - 1)));
    let verified = events_store.verify(&acme).await.expect("verify");
    assert!(verified.is_intact(), "{verified:?}");
    assert_eq!(verified.events_checked, expected_total);
}

/// Appends that arrive together (and may commit together) are still
/// decided one by one: a refusal or a replay among them changes nothing
/// for the others and leaves nothing behind.
async fn concurrent_appends_each_get_their_own_answer(backend: &Backend) {
    const FRESH_STREAMS: usize = 16;
    const ABSENT_STREAMS: usize = 4;
    const CONTESTANTS: usize = 4;
    let paid: Vec<NewEvent> = (0..2)
        .map(|number| event("Paid", number).with_id(Uuid::new_v4()))
        .collect();
    let original = append_ok(backend, "paid", ExpectedVersion::NoStream, paid.clone()).await;

    let mut fresh = Vec::new();
    for index in 0..FRESH_STREAMS {
        let name = format!("fresh-{index}");
        fresh.push(async move {
            append(backend, "acme", &name, ExpectedVersion::NoStream, events(2)).await
        });
    }
    let mut absent = Vec::new();
    for index in 0..ABSENT_STREAMS {
        let name = format!("absent-{index}");
        absent.push(async move {
            append(backend, "acme", &name, ExpectedVersion::Exists, events(1)).await
        });
    }
    let mut contested = Vec::new();
    for _ in 0..CONTESTANTS {
        contested.push(append(
            backend,
            "acme",
            "contested",
            ExpectedVersion::NoStream,
            events(1),
        ));
    }
    let retried = append(backend, "acme", "paid", ExpectedVersion::NoStream, paid);
    let (fresh, absent, contested, retried) = tokio::join!(
        futures::future::join_all(fresh),
        futures::future::join_all(absent),
        futures::future::join_all(contested),
        retried,
    );

    for result in fresh {
        let appended = result.expect("an append to a new stream");
        assert_eq!(appended.stream_version, 1);
        assert_eq!(appended.events[1].position, appended.events[0].position + 1);
    }
    for (index, result) in absent.into_iter().enumerate() {
        assert_append_error(result, ErrorKind::Conflict, "wrong_expected_version");
        let name = format!("absent-{index}");
        assert_error(
            backend
                .events
                .stream_info(&tenant("acme"), &stream(&name))
                .await,
            ErrorKind::NotFound,
            "stream_not_found",
        );
    }
    let mut winners = 0;
    for result in contested {
        match result {
            Ok(appended) => {
                assert_eq!(appended.stream_version, 0);
                winners += 1;
            }
            Err(refused) => {
                assert_error::<()>(
                    Err(refused.into_error()),
                    ErrorKind::Conflict,
                    "wrong_expected_version",
                );
            }
        }
    }
    assert_eq!(winners, 1);
    let retried = retried.expect("a retried append");
    assert!(retried.replayed);
    assert_eq!(retried.events, original.events);

    let expected_events = 2 + FRESH_STREAMS * 2 + 1;
    let mut positions = Vec::new();
    let mut request = ReadAllRequest::forward(50);
    loop {
        let page = backend
            .events
            .read_all(&tenant("acme"), &request)
            .await
            .expect("read all");
        positions.extend(page.events.iter().map(|event| event.position));
        match page.next_position {
            Some(next) => request = request.from_position(next),
            None => break,
        }
    }
    assert_eq!(positions, (0..expected_events as u64).collect::<Vec<_>>());
    let verified = backend
        .events
        .verify(&tenant("acme"))
        .await
        .expect("verify");
    assert!(verified.is_intact(), "{verified:?}");
}
