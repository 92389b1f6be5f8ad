//! The conformance suite of persistent subscriptions, run on every backend
//! like the event store's own suite (`crate::conformance`), whose backends
//! and helpers it reuses.

use std::collections::HashSet;
use std::time::Duration;

use plinth_core::{ErrorKind, HumanDuration};

use crate::conformance::{Backend, append, assert_error, events, stream, tenant};
use crate::model::{AllFilter, ExpectedVersion, NewEvent};
use crate::persistent::{GroupDefinition, GroupName, GroupSettings, LeaseRequest, StartFrom};

/// Runs every case below as one `#[tokio::test]` per backend.
macro_rules! persistent_conformance_suite {
    ($backend:ident, $open:ident) => {
        mod $backend {
            persistent_conformance_suite!(@cases $backend, $open;
                groups_are_created_listed_updated_and_deleted,
                leases_and_acks_advance_the_checkpoint,
                competing_consumers_get_disjoint_leases,
                an_expired_lease_is_delivered_again,
                nacks_retry_then_park_after_max_retries,
                parked_events_are_listed_and_replayed,
                status_reports_lag_in_flight_parked_and_retries,
                a_restart_keeps_checkpoint_leases_and_parked_events,
                filters_and_stream_groups_deliver_only_their_events,
                groups_start_at_the_start_the_end_or_a_position,
                max_in_flight_bounds_what_is_leased,
                a_waiting_lease_wakes_on_a_commit_and_an_idle_one_times_out,
                tenants_cannot_see_or_touch_each_others_groups,
                bad_input_is_refused_with_distinct_codes,
            );
        }
    };
    (@cases $backend:ident, $open:ident; $($case:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() {
                let test_name = concat!("groups_", stringify!($backend), "_", stringify!($case));
                let Some(backend) = crate::conformance::$open(test_name).await else {
                    return;
                };
                super::$case(&backend).await;
                backend.store.close().await;
            }
        )+
    };
}

persistent_conformance_suite!(sqlite, open_sqlite);
persistent_conformance_suite!(postgres, open_postgres);

fn group(name: &str) -> GroupName {
    GroupName::parse(name).expect("a valid group name")
}

fn settings(max_retries: u32, max_in_flight: u32) -> GroupSettings {
    GroupSettings {
        max_retries,
        lease_timeout: HumanDuration::from_secs(10),
        max_in_flight,
    }
}

fn on_all(settings: GroupSettings) -> GroupDefinition {
    GroupDefinition {
        settings,
        ..GroupDefinition::default()
    }
}

async fn append_events(backend: &Backend, tenant_id: &str, stream_name: &str, count: u64) {
    append(
        backend,
        tenant_id,
        stream_name,
        ExpectedVersion::Any,
        events(count),
    )
    .await
    .expect("append");
}

async fn create(backend: &Backend, tenant_id: &str, name: &str, definition: GroupDefinition) {
    backend
        .events
        .create_group(&tenant(tenant_id), &group(name), definition)
        .await
        .expect("create group");
}

/// Leases for `consumer` on acme's `name`; the leased positions.
async fn lease(backend: &Backend, name: &str, consumer: &str, limit: usize) -> Vec<u64> {
    backend
        .events
        .lease(
            &tenant("acme"),
            &group(name),
            &LeaseRequest::new(consumer, limit),
        )
        .await
        .expect("lease")
        .events
        .iter()
        .map(|leased| leased.event.position)
        .collect()
}

async fn ack(backend: &Backend, name: &str, positions: &[u64]) -> Option<u64> {
    let outcome = backend
        .events
        .ack(&tenant("acme"), &group(name), positions)
        .await
        .expect("ack");
    assert!(outcome.not_in_flight.is_empty(), "{outcome:?}");
    outcome.checkpoint
}

async fn nack(backend: &Backend, name: &str, positions: &[u64]) -> (Vec<u64>, Vec<u64>) {
    let outcome = backend
        .events
        .nack(&tenant("acme"), &group(name), positions)
        .await
        .expect("nack");
    assert!(outcome.not_in_flight.is_empty(), "{outcome:?}");
    (outcome.retrying, outcome.parked)
}

async fn checkpoint(backend: &Backend, name: &str) -> Option<u64> {
    backend
        .events
        .group_status(&tenant("acme"), &group(name))
        .await
        .expect("status")
        .checkpoint
}

async fn groups_are_created_listed_updated_and_deleted(backend: &Backend) {
    let acme = tenant("acme");
    let definition = GroupDefinition {
        stream: Some(stream("orders-1")),
        filter: AllFilter {
            stream_prefix: None,
            event_types: vec!["Placed".to_string()],
        },
        start_from: StartFrom::Position(3),
        settings: settings(4, 7),
    };
    let created = backend
        .events
        .create_group(&acme, &group("billing"), definition.clone())
        .await
        .expect("create");
    assert_eq!(created.group, "billing");
    assert_eq!(created.stream.as_deref(), Some("orders-1"));
    assert_eq!(created.filter, definition.filter);
    assert_eq!(created.start_from, StartFrom::Position(3));
    assert_eq!(created.settings, settings(4, 7));
    assert_error(
        backend
            .events
            .create_group(&acme, &group("billing"), GroupDefinition::default())
            .await,
        ErrorKind::Conflict,
        "group_exists",
    );
    create(backend, "acme", "audit", GroupDefinition::default()).await;
    let names: Vec<String> = backend
        .events
        .list_groups(&acme, None, 100)
        .await
        .expect("list")
        .groups
        .into_iter()
        .map(|info| info.group)
        .collect();
    assert_eq!(names, vec!["audit".to_string(), "billing".to_string()]);
    let mut paged = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = backend
            .events
            .list_groups(&acme, after.as_deref(), 1)
            .await
            .expect("list a page");
        assert!(page.groups.len() <= 1);
        paged.extend(page.groups.into_iter().map(|info| info.group));
        match page.next_after {
            Some(name) => after = Some(name),
            None => break,
        }
    }
    assert_eq!(paged, names, "one group a page, in order");
    let updated = backend
        .events
        .update_group(&acme, &group("billing"), settings(1, 2))
        .await
        .expect("update");
    assert_eq!(updated.settings, settings(1, 2));
    assert_eq!(
        updated.start_from,
        StartFrom::Position(3),
        "the source stays"
    );
    assert_eq!(
        backend
            .events
            .group(&acme, &group("billing"))
            .await
            .expect("read")
            .settings,
        settings(1, 2)
    );
    backend
        .events
        .delete_group(&acme, &group("billing"))
        .await
        .expect("delete");
    assert_error(
        backend.events.group(&acme, &group("billing")).await,
        ErrorKind::NotFound,
        "group_not_found",
    );
    assert_error(
        backend.events.delete_group(&acme, &group("billing")).await,
        ErrorKind::NotFound,
        "group_not_found",
    );
    assert_eq!(
        backend
            .events
            .list_groups(&acme, None, 100)
            .await
            .expect("list")
            .groups
            .len(),
        1
    );
}

async fn leases_and_acks_advance_the_checkpoint(backend: &Backend) {
    append_events(backend, "acme", "orders", 5).await;
    create(backend, "acme", "workers", on_all(settings(3, 100))).await;
    assert_eq!(checkpoint(backend, "workers").await, None);
    assert_eq!(lease(backend, "workers", "c1", 3).await, vec![0, 1, 2]);
    assert_eq!(
        ack(backend, "workers", &[1]).await,
        None,
        "0 is still leased"
    );
    assert_eq!(ack(backend, "workers", &[0]).await, Some(1));
    assert_eq!(ack(backend, "workers", &[2]).await, Some(2));
    assert_eq!(lease(backend, "workers", "c1", 10).await, vec![3, 4]);
    assert_eq!(ack(backend, "workers", &[3, 4]).await, Some(4));
    assert!(lease(backend, "workers", "c1", 10).await.is_empty());
    let again = backend
        .events
        .ack(&tenant("acme"), &group("workers"), &[4, 99])
        .await
        .expect("ack");
    assert_eq!(
        again.not_in_flight,
        vec![4, 99],
        "acks are not counted twice"
    );
    append_events(backend, "acme", "orders", 1).await;
    assert_eq!(lease(backend, "workers", "c1", 10).await, vec![5]);
}

async fn competing_consumers_get_disjoint_leases(backend: &Backend) {
    append_events(backend, "acme", "jobs", 20).await;
    append_events(backend, "acme", "jobs", 20).await;
    create(backend, "acme", "pool", on_all(settings(3, 1_000))).await;
    let consumers = (0..4).map(|index| {
        let consumer = format!("consumer-{index}");
        async move {
            let mut mine = Vec::new();
            loop {
                let leased = lease(backend, "pool", &consumer, 3).await;
                if leased.is_empty() {
                    return mine;
                }
                mine.extend(leased);
            }
        }
    });
    let batches = futures::future::join_all(consumers).await;
    let mut seen = HashSet::new();
    for batch in &batches {
        for position in batch {
            assert!(seen.insert(*position), "position {position} leased twice");
        }
    }
    assert_eq!(seen.len(), 40);
    let all: Vec<u64> = seen.into_iter().collect();
    assert_eq!(ack(backend, "pool", &all).await, Some(39));
}

async fn an_expired_lease_is_delivered_again(backend: &Backend) {
    append_events(backend, "acme", "orders", 2).await;
    create(backend, "acme", "slow", on_all(settings(3, 100))).await;
    assert_eq!(lease(backend, "slow", "c1", 1).await, vec![0]);
    assert_eq!(
        lease(backend, "slow", "c2", 1).await,
        vec![1],
        "0 is hidden"
    );
    backend.clock.advance(Duration::from_secs(11));
    let redelivered = backend
        .events
        .lease(
            &tenant("acme"),
            &group("slow"),
            &LeaseRequest::new("c2", 10),
        )
        .await
        .expect("lease");
    let positions: Vec<(u64, u32, u32)> = redelivered
        .events
        .iter()
        .map(|leased| {
            (
                leased.event.position,
                leased.retry_count,
                leased.delivery_count,
            )
        })
        .collect();
    assert_eq!(positions, vec![(0, 1, 2), (1, 1, 2)]);
    assert_eq!(redelivered.events[0].event.stream, "orders");
    let status = backend
        .events
        .group_status(&tenant("acme"), &group("slow"))
        .await
        .expect("status");
    assert_eq!((status.total_retries, status.in_flight), (2, 2));
}

async fn nacks_retry_then_park_after_max_retries(backend: &Backend) {
    append_events(backend, "acme", "orders", 2).await;
    create(backend, "acme", "picky", on_all(settings(2, 100))).await;
    assert_eq!(lease(backend, "picky", "c1", 1).await, vec![0]);
    assert_eq!(nack(backend, "picky", &[0]).await, (vec![0], vec![]));
    assert_eq!(
        lease(backend, "picky", "c1", 1).await,
        vec![0],
        "redelivered first"
    );
    assert_eq!(nack(backend, "picky", &[0]).await, (vec![0], vec![]));
    assert_eq!(lease(backend, "picky", "c1", 1).await, vec![0]);
    assert_eq!(nack(backend, "picky", &[0]).await, (vec![], vec![0]));
    assert_eq!(
        checkpoint(backend, "picky").await,
        Some(0),
        "parked is settled"
    );
    assert_eq!(lease(backend, "picky", "c1", 5).await, vec![1]);
    let not_leased = backend
        .events
        .nack(&tenant("acme"), &group("picky"), &[0])
        .await
        .expect("nack");
    assert_eq!(
        not_leased.not_in_flight,
        vec![0],
        "a parked event is not in flight"
    );
}

async fn park(backend: &Backend, name: &str, positions: &[u64]) {
    for _ in 0..=1 {
        let leased = lease(backend, name, "c1", positions.len()).await;
        assert_eq!(leased, positions);
        nack(backend, name, positions).await;
    }
}

async fn parked_events_are_listed_and_replayed(backend: &Backend) {
    append_events(backend, "acme", "orders", 4).await;
    create(backend, "acme", "dlq", on_all(settings(1, 100))).await;
    assert_eq!(lease(backend, "dlq", "c1", 1).await, vec![0]);
    ack(backend, "dlq", &[0]).await;
    park(backend, "dlq", &[1, 2, 3]).await;
    let acme = tenant("acme");
    let first_page = backend
        .events
        .parked_events(&acme, &group("dlq"), None, 2)
        .await
        .expect("parked");
    let listed: Vec<(u64, u32)> = first_page
        .events
        .iter()
        .map(|parked| (parked.event.position, parked.retry_count))
        .collect();
    assert_eq!(listed, vec![(1, 2), (2, 2)]);
    assert_eq!(first_page.next_position, Some(2));
    let second_page = backend
        .events
        .parked_events(&acme, &group("dlq"), first_page.next_position, 2)
        .await
        .expect("parked");
    assert_eq!(second_page.events.len(), 1);
    assert_eq!(second_page.next_position, None);
    assert_eq!(checkpoint(backend, "dlq").await, Some(3));

    let one = backend
        .events
        .replay_parked(&acme, &group("dlq"), &[2])
        .await
        .expect("replay one");
    assert_eq!(one.replayed, 1);
    let redelivered = backend
        .events
        .lease(&acme, &group("dlq"), &LeaseRequest::new("c1", 10))
        .await
        .expect("lease");
    assert_eq!(redelivered.events.len(), 1);
    assert_eq!(
        (
            redelivered.events[0].event.position,
            redelivered.events[0].retry_count
        ),
        (2, 0),
        "a replay resets retries"
    );
    ack(backend, "dlq", &[2]).await;
    assert_eq!(
        checkpoint(backend, "dlq").await,
        Some(3),
        "never moves back"
    );
    let rest = backend
        .events
        .replay_parked(&acme, &group("dlq"), &[])
        .await
        .expect("replay all");
    assert_eq!(rest.replayed, 2);
    assert_eq!(lease(backend, "dlq", "c1", 10).await, vec![1, 3]);
    let parked = backend
        .events
        .parked_events(&acme, &group("dlq"), None, 10)
        .await
        .expect("parked");
    assert!(parked.events.is_empty());
}

async fn status_reports_lag_in_flight_parked_and_retries(backend: &Backend) {
    create(backend, "acme", "watch", on_all(settings(0, 100))).await;
    let acme = tenant("acme");
    let empty = backend
        .events
        .group_status(&acme, &group("watch"))
        .await
        .expect("status");
    assert_eq!(
        (empty.head_position, empty.checkpoint, empty.lag),
        (None, None, 0)
    );
    append_events(backend, "acme", "orders", 6).await;
    assert_eq!(lease(backend, "watch", "c1", 4).await, vec![0, 1, 2, 3]);
    ack(backend, "watch", &[0]).await;
    nack(backend, "watch", &[1]).await;
    let status = backend
        .events
        .group_status(&acme, &group("watch"))
        .await
        .expect("status");
    assert_eq!(status.head_position, Some(5));
    assert_eq!(status.checkpoint, Some(1));
    assert_eq!(status.lag, 4);
    assert_eq!(status.in_flight, 2);
    assert_eq!(status.awaiting_redelivery, 0);
    assert_eq!(status.parked, 1);
    assert_eq!(status.total_retries, 1);
    backend.clock.advance(Duration::from_secs(11));
    let expired = backend
        .events
        .group_status(&acme, &group("watch"))
        .await
        .expect("status");
    assert_eq!((expired.in_flight, expired.awaiting_redelivery), (0, 2));

    create(backend, "acme", "patient", on_all(settings(5, 100))).await;
    assert_eq!(lease(backend, "patient", "c1", 1).await, vec![0]);
    nack(backend, "patient", &[0]).await;
    let retrying = backend
        .events
        .group_status(&acme, &group("patient"))
        .await
        .expect("status");
    assert_eq!(
        (
            retrying.awaiting_redelivery,
            retrying.events_retrying,
            retrying.lag
        ),
        (1, 1, 6)
    );
}

async fn a_restart_keeps_checkpoint_leases_and_parked_events(backend: &Backend) {
    append_events(backend, "acme", "orders", 5).await;
    create(backend, "acme", "durable", on_all(settings(0, 100))).await;
    assert_eq!(lease(backend, "durable", "c1", 3).await, vec![0, 1, 2]);
    ack(backend, "durable", &[0]).await;
    nack(backend, "durable", &[1]).await;
    let restarted = backend.restarted();
    let acme = tenant("acme");
    let status = restarted
        .group_status(&acme, &group("durable"))
        .await
        .expect("status");
    assert_eq!(
        (status.checkpoint, status.in_flight, status.parked),
        (Some(1), 1, 1)
    );
    let next = restarted
        .lease(&acme, &group("durable"), &LeaseRequest::new("c2", 10))
        .await
        .expect("lease");
    let positions: Vec<u64> = next
        .events
        .iter()
        .map(|leased| leased.event.position)
        .collect();
    assert_eq!(positions, vec![3, 4], "2 is still leased to c1");
    let parked = restarted
        .parked_events(&acme, &group("durable"), None, 10)
        .await
        .expect("parked");
    assert_eq!(parked.events[0].event.position, 1);
}

async fn filters_and_stream_groups_deliver_only_their_events(backend: &Backend) {
    for (stream_name, event_type) in [
        ("orders-1", "Placed"),
        ("users-1", "Placed"),
        ("orders-2", "Shipped"),
        ("orders-1", "Shipped"),
        ("orders-2", "Placed"),
    ] {
        append(
            backend,
            "acme",
            stream_name,
            ExpectedVersion::Any,
            vec![NewEvent::new(event_type, serde_json::json!({}))],
        )
        .await
        .expect("append");
    }
    create(
        backend,
        "acme",
        "placed-orders",
        on_all(settings(3, 100)).with_filter(AllFilter {
            stream_prefix: Some("orders-".to_string()),
            event_types: vec!["Placed".to_string()],
        }),
    )
    .await;
    assert_eq!(lease(backend, "placed-orders", "c1", 10).await, vec![0, 4]);
    ack(backend, "placed-orders", &[0, 4]).await;
    assert_eq!(checkpoint(backend, "placed-orders").await, Some(4));
    create(
        backend,
        "acme",
        "order-1",
        GroupDefinition {
            stream: Some(stream("orders-1")),
            ..on_all(settings(3, 100))
        },
    )
    .await;
    assert_eq!(lease(backend, "order-1", "c1", 1).await, vec![0]);
    assert_eq!(lease(backend, "order-1", "c1", 10).await, vec![3]);
    ack(backend, "order-1", &[0]).await;
    assert_eq!(checkpoint(backend, "order-1").await, Some(2), "3 is leased");
}

impl GroupDefinition {
    fn with_filter(mut self, filter: AllFilter) -> Self {
        self.filter = filter;
        self
    }
}

async fn groups_start_at_the_start_the_end_or_a_position(backend: &Backend) {
    append_events(backend, "acme", "orders", 3).await;
    for (name, start_from) in [
        ("from-start", StartFrom::Start),
        ("from-end", StartFrom::End),
        ("from-one", StartFrom::Position(1)),
    ] {
        let definition = GroupDefinition {
            start_from,
            ..on_all(settings(3, 100))
        };
        create(backend, "acme", name, definition).await;
    }
    append_events(backend, "acme", "orders", 1).await;
    assert_eq!(
        lease(backend, "from-start", "c", 10).await,
        vec![0, 1, 2, 3]
    );
    assert_eq!(lease(backend, "from-end", "c", 10).await, vec![3]);
    assert_eq!(lease(backend, "from-one", "c", 10).await, vec![1, 2, 3]);
    assert_eq!(checkpoint(backend, "from-end").await, Some(2));
}

async fn max_in_flight_bounds_what_is_leased(backend: &Backend) {
    append_events(backend, "acme", "orders", 10).await;
    create(backend, "acme", "narrow", on_all(settings(3, 3))).await;
    assert_eq!(lease(backend, "narrow", "c1", 2).await, vec![0, 1]);
    assert_eq!(lease(backend, "narrow", "c2", 10).await, vec![2]);
    assert!(lease(backend, "narrow", "c3", 10).await.is_empty());
    ack(backend, "narrow", &[1]).await;
    assert_eq!(lease(backend, "narrow", "c3", 10).await, vec![3]);
    // Larger limits are lowered to events.max_read_count (50 in tests).
    create(backend, "acme", "wide", on_all(settings(3, 10_000))).await;
    append_events(backend, "acme", "more", 20).await;
    append_events(backend, "acme", "more", 20).await;
    append_events(backend, "acme", "more", 20).await;
    assert_eq!(lease(backend, "wide", "c1", 500).await.len(), 50);
}

async fn a_waiting_lease_wakes_on_a_commit_and_an_idle_one_times_out(backend: &Backend) {
    create(backend, "acme", "live", on_all(settings(3, 100))).await;
    let acme = tenant("acme");
    let live = group("live");
    let long_wait = LeaseRequest::new("c1", 10).wait(Duration::from_secs(10));
    let waiting = backend.events.lease(&acme, &live, &long_wait);
    let appending = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        append_events(backend, "acme", "orders", 2).await;
    };
    let started = std::time::Instant::now();
    let (leased, ()) = tokio::join!(waiting, appending);
    let positions: Vec<u64> = leased
        .expect("lease")
        .events
        .iter()
        .map(|leased| leased.event.position)
        .collect();
    assert_eq!(positions, vec![0, 1]);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "woken by the commit"
    );
    let started = std::time::Instant::now();
    let idle = backend
        .events
        .lease(
            &acme,
            &group("live"),
            &LeaseRequest::new("c1", 10).wait(Duration::from_millis(200)),
        )
        .await
        .expect("lease");
    assert!(idle.events.is_empty());
    assert!(started.elapsed() >= Duration::from_millis(200));
}

async fn tenants_cannot_see_or_touch_each_others_groups(backend: &Backend) {
    append_events(backend, "tenant-a", "secret", 3).await;
    create(backend, "tenant-a", "shared-name", on_all(settings(3, 100))).await;
    let tenant_b = tenant("tenant-b");
    let name = group("shared-name");
    assert_error(
        backend
            .events
            .lease(&tenant_b, &name, &LeaseRequest::new("c", 10))
            .await,
        ErrorKind::NotFound,
        "group_not_found",
    );
    assert_error(
        backend.events.ack(&tenant_b, &name, &[0]).await,
        ErrorKind::NotFound,
        "group_not_found",
    );
    assert_error(
        backend.events.group_status(&tenant_b, &name).await,
        ErrorKind::NotFound,
        "group_not_found",
    );
    assert!(
        backend
            .events
            .list_groups(&tenant_b, None, 100)
            .await
            .expect("list")
            .groups
            .is_empty()
    );
    create(backend, "tenant-b", "shared-name", on_all(settings(3, 100))).await;
    let leased = backend
        .events
        .lease(&tenant_b, &name, &LeaseRequest::new("c", 10))
        .await
        .expect("lease");
    assert!(leased.events.is_empty(), "B's group sees only B's log");
    let tenant_a = tenant("tenant-a");
    let from_a = backend
        .events
        .lease(&tenant_a, &name, &LeaseRequest::new("c", 10))
        .await
        .expect("lease");
    assert_eq!(from_a.events.len(), 3);
    backend
        .events
        .delete_group(&tenant_b, &name)
        .await
        .expect("delete");
    assert_eq!(
        backend
            .events
            .group_status(&tenant_a, &name)
            .await
            .expect("A's group stays")
            .in_flight,
        3
    );
}

async fn bad_input_is_refused_with_distinct_codes(backend: &Backend) {
    let acme = tenant("acme");
    for bad_name in ["", ".hidden", "has space", &"g".repeat(201)] {
        assert_error(
            GroupName::parse(bad_name),
            ErrorKind::InvalidArgument,
            "invalid_name",
        );
    }
    let refused = [
        (settings(MAX_RETRIES_PLUS_ONE, 10), "invalid_group_settings"),
        (settings(3, 0), "invalid_group_settings"),
        (settings(3, 10_001), "invalid_group_settings"),
        (
            GroupSettings {
                lease_timeout: HumanDuration::from_millis(10),
                ..settings(3, 10)
            },
            "invalid_group_settings",
        ),
    ];
    for (bad_settings, code) in refused {
        assert_error(
            backend
                .events
                .create_group(&acme, &group("bad"), on_all(bad_settings))
                .await,
            ErrorKind::InvalidArgument,
            code,
        );
    }
    let both_sources = GroupDefinition {
        stream: Some(stream("orders")),
        filter: AllFilter {
            stream_prefix: Some("orders".to_string()),
            event_types: Vec::new(),
        },
        ..GroupDefinition::default()
    };
    assert_error(
        backend
            .events
            .create_group(&acme, &group("bad"), both_sources)
            .await,
        ErrorKind::InvalidArgument,
        "invalid_filter",
    );
    let bad_type = on_all(settings(3, 10)).with_filter(AllFilter {
        stream_prefix: None,
        event_types: vec!["no spaces".to_string()],
    });
    assert_error(
        backend
            .events
            .create_group(&acme, &group("bad"), bad_type)
            .await,
        ErrorKind::InvalidArgument,
        "invalid_event_type",
    );
    assert!(
        backend
            .events
            .list_groups(&acme, None, 100)
            .await
            .expect("list")
            .groups
            .is_empty()
    );
    assert_error(
        StartFrom::parse("middle"),
        ErrorKind::InvalidArgument,
        "invalid_start_from",
    );

    let missing = group("missing");
    assert_error(
        backend
            .events
            .lease(&acme, &missing, &LeaseRequest::new("c", 1))
            .await,
        ErrorKind::NotFound,
        "group_not_found",
    );
    assert_error(
        backend.events.nack(&acme, &missing, &[1]).await,
        ErrorKind::NotFound,
        "group_not_found",
    );
    assert_error(
        backend
            .events
            .parked_events(&acme, &missing, None, 10)
            .await,
        ErrorKind::NotFound,
        "group_not_found",
    );
    assert_error(
        backend.events.replay_parked(&acme, &missing, &[]).await,
        ErrorKind::NotFound,
        "group_not_found",
    );
    assert_error(
        backend
            .events
            .update_group(&acme, &missing, settings(1, 1))
            .await,
        ErrorKind::NotFound,
        "group_not_found",
    );

    create(backend, "acme", "real", on_all(settings(3, 10))).await;
    let real = group("real");
    assert_error(
        backend
            .events
            .lease(&acme, &real, &LeaseRequest::new("c", 0))
            .await,
        ErrorKind::InvalidArgument,
        "invalid_limit",
    );
    assert_error(
        backend
            .events
            .lease(
                &acme,
                &real,
                &LeaseRequest::new("c", 1).wait(Duration::from_secs(61)),
            )
            .await,
        ErrorKind::InvalidArgument,
        "invalid_wait",
    );
    assert_error(
        backend
            .events
            .lease(&acme, &real, &LeaseRequest::new("bad consumer", 1))
            .await,
        ErrorKind::InvalidArgument,
        "invalid_name",
    );
    assert_error(
        backend.events.ack(&acme, &real, &[]).await,
        ErrorKind::InvalidArgument,
        "invalid_positions",
    );
    assert_error(
        backend.events.nack(&acme, &real, &vec![0; 1_001]).await,
        ErrorKind::InvalidArgument,
        "invalid_positions",
    );
    assert_error(
        backend.events.parked_events(&acme, &real, None, 0).await,
        ErrorKind::InvalidArgument,
        "invalid_limit",
    );
    assert_error(
        backend
            .events
            .update_group(&acme, &real, settings(3, 0))
            .await,
        ErrorKind::InvalidArgument,
        "invalid_group_settings",
    );
}

const MAX_RETRIES_PLUS_ONE: u32 = crate::persistent::MAX_GROUP_RETRIES + 1;
