//! Black-box tests of persistent subscriptions (consumer groups) over
//! HTTP: creating and changing groups, competing consumers with disjoint
//! leases, acks moving the checkpoint, nacks until an event is parked,
//! listing and replaying parked events, a waiting lease woken by an
//! append or answered at shutdown, status numbers, bad input, scopes and tenant isolation, on
//! SQLite and (under `scripts/test.sh`) PostgreSQL.

mod support;

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};
use support::{Api, Node, NodeOptions, Reply};

const GROUP: &str = "order-workers";

async fn put_group(api: &Api, group: &str, body: &Value) -> Reply {
    api.send(
        api.request(Method::PUT, &format!("/v1/subscriptions/{group}"))
            .json(body),
    )
    .await
}

/// Appends one event per type to `stream`; returns their global positions.
async fn append(api: &Api, stream: &str, event_types: &[&str]) -> Vec<u64> {
    let events: Vec<Value> = event_types
        .iter()
        .map(|event_type| json!({ "type": event_type, "data": {} }))
        .collect();
    let reply = api
        .post_json(
            &format!("/v1/streams/{stream}"),
            &json!({ "events": events }),
        )
        .await;
    assert_eq!(reply.status, 201, "append to {stream}: {}", reply.text());
    reply.json()["events"]
        .as_array()
        .expect("appended events")
        .iter()
        .map(|event| event["position"].as_u64().expect("position"))
        .collect()
}

async fn post_ok(api: &Api, path: &str, body: &Value) -> Value {
    let reply = api.post_json(path, body).await;
    assert_eq!(reply.status, 200, "POST {path}: {}", reply.text());
    reply.json()
}

async fn get_ok(api: &Api, path: &str) -> Value {
    let reply = api.get(path).await;
    assert_eq!(reply.status, 200, "GET {path}: {}", reply.text());
    reply.json()
}

async fn lease(api: &Api, group: &str, consumer: &str, limit: u64) -> Value {
    post_ok(
        api,
        &format!("/v1/subscriptions/{group}/lease"),
        &json!({ "consumer": consumer, "limit": limit }),
    )
    .await
}

fn leased_positions(batch: &Value) -> Vec<u64> {
    batch["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|leased| leased["event"]["position"].as_u64().expect("position"))
        .collect()
}

/// Appends one event to `orders-1` and creates [`GROUP`] on that stream
/// from its end, so the group has nothing to lease yet.
async fn group_past_one_event(api: &Api) {
    append(api, "orders-1", &["Placed"]).await;
    let created = put_group(
        api,
        GROUP,
        &json!({ "stream": "orders-1", "start_from": "end" }),
    )
    .await;
    assert_eq!(created.status, 201, "{}", created.text());
}

/// A lease that may wait 20 s, in the background: its batch and how long
/// it took.
fn spawn_waiting_lease(api: &Api) -> tokio::task::JoinHandle<(Value, Duration)> {
    let waiting_api = api.clone();
    tokio::spawn(async move {
        let started = Instant::now();
        let batch = post_ok(
            &waiting_api,
            &format!("/v1/subscriptions/{GROUP}/lease"),
            &json!({ "consumer": "worker-a", "wait": "20s" }),
        )
        .await;
        (batch, started.elapsed())
    })
}

async fn status(api: &Api, group: &str) -> Value {
    get_ok(api, &format!("/v1/subscriptions/{group}")).await
}

/// The whole delivery cycle of one group, on whichever engine `node` runs.
async fn competing_consumers_ack_nack_park_and_replay(node: &Node) {
    let api = node.anonymous();
    let definition = json!({
        "filter": { "stream_prefix": "orders-" },
        "settings": { "max_retries": 1, "lease_timeout": "30s", "max_in_flight": 100 }
    });
    let created = put_group(&api, GROUP, &definition).await;
    assert_eq!(created.status, 201, "{}", created.text());
    assert_eq!(created.json()["group"], GROUP);
    assert_eq!(created.json()["start_from"], "start");
    let same_again = put_group(&api, GROUP, &definition).await;
    assert_eq!(same_again.status, 200, "a repeated PUT is an update");

    let mut order_positions =
        append(&api, "orders-1", &["Placed", "Paid", "Packed", "Shipped"]).await;
    let invoice_positions = append(&api, "invoices-1", &["Issued"]).await;
    order_positions.extend(append(&api, "orders-2", &["Placed"]).await);
    assert_eq!(order_positions, vec![0, 1, 2, 3, 5]);
    assert_eq!(invoice_positions, vec![4]);

    // Competing consumers get disjoint leases, in position order, of the
    // group's streams only.
    let first = lease(&api, GROUP, "worker-a", 2).await;
    let second = lease(&api, GROUP, "worker-b", 10).await;
    assert_eq!(leased_positions(&first), vec![0, 1]);
    assert_eq!(leased_positions(&second), vec![2, 3, 5]);
    assert_eq!(first["events"][0]["delivery_count"], 1);
    assert!(first["events"][0]["lease_expires_at"].is_string());
    let nothing_left = lease(&api, GROUP, "worker-c", 10).await;
    assert_eq!(leased_positions(&nothing_left), Vec::<u64>::new());

    let busy = status(&api, GROUP).await;
    assert_eq!(busy["in_flight"], 5, "{busy}");
    assert_eq!(busy["checkpoint"], Value::Null, "{busy}");
    assert_eq!(busy["head_position"], 5, "{busy}");
    assert_eq!(busy["lag"], 6, "{busy}");

    // Acks move the checkpoint past contiguous settled events, including
    // the invoice the group does not read; never past a leased one.
    let acked = post_ok(
        &api,
        &format!("/v1/subscriptions/{GROUP}/ack"),
        &json!({ "positions": [0, 1] }),
    )
    .await;
    assert_eq!(acked["acked"], json!([0, 1]));
    assert_eq!(acked["checkpoint"], 1);
    let acked = post_ok(
        &api,
        &format!("/v1/subscriptions/{GROUP}/ack"),
        &json!({ "positions": [3, 2, 42] }),
    )
    .await;
    assert_eq!(acked["not_in_flight"], json!([42]), "{acked}");
    assert_eq!(acked["checkpoint"], 4, "{acked}");

    // Nacks count retries; past max_retries (1) the event is parked.
    let nacked = post_ok(
        &api,
        &format!("/v1/subscriptions/{GROUP}/nack"),
        &json!({ "positions": [5] }),
    )
    .await;
    assert_eq!(nacked["retrying"], json!([5]), "{nacked}");
    let redelivered = lease(&api, GROUP, "worker-a", 10).await;
    assert_eq!(leased_positions(&redelivered), vec![5]);
    assert_eq!(redelivered["events"][0]["retry_count"], 1);
    assert_eq!(redelivered["events"][0]["delivery_count"], 2);
    let nacked = post_ok(
        &api,
        &format!("/v1/subscriptions/{GROUP}/nack"),
        &json!({ "positions": [5] }),
    )
    .await;
    assert_eq!(nacked["parked"], json!([5]), "{nacked}");

    let settled = status(&api, GROUP).await;
    assert_eq!(settled["parked"], 1, "{settled}");
    assert_eq!(settled["in_flight"], 0, "{settled}");
    assert_eq!(
        settled["checkpoint"], 5,
        "a parked event is settled: {settled}"
    );
    assert_eq!(settled["lag"], 0, "{settled}");
    assert_eq!(settled["total_retries"], 2, "{settled}");

    let parked = get_ok(&api, &format!("/v1/subscriptions/{GROUP}/parked?limit=1")).await;
    assert_eq!(parked["items"][0]["event"]["position"], 5, "{parked}");
    assert_eq!(
        parked["items"][0]["event"]["stream"], "orders-2",
        "{parked}"
    );
    let cursor = parked["next_cursor"]
        .as_str()
        .expect("a full page has a cursor");
    let after = get_ok(
        &api,
        &format!("/v1/subscriptions/{GROUP}/parked?limit=1&cursor={cursor}"),
    )
    .await;
    assert_eq!(after["items"], json!([]), "{after}");
    assert_eq!(after["next_cursor"], Value::Null);

    // A replayed event is delivered again with its retries reset.
    let replayed = post_ok(
        &api,
        &format!("/v1/subscriptions/{GROUP}/parked/replay"),
        &json!({}),
    )
    .await;
    assert_eq!(replayed["replayed"], 1);
    let again = lease(&api, GROUP, "worker-b", 10).await;
    assert_eq!(leased_positions(&again), vec![5]);
    assert_eq!(again["events"][0]["retry_count"], 0);
    post_ok(
        &api,
        &format!("/v1/subscriptions/{GROUP}/ack"),
        &json!({ "positions": [5] }),
    )
    .await;
    let done = status(&api, GROUP).await;
    assert_eq!(
        (
            done["parked"].clone(),
            done["in_flight"].clone(),
            done["checkpoint"].clone()
        ),
        (json!(0), json!(0), json!(5)),
        "{done}"
    );
    let metrics = node.anonymous().get("/metrics").await.text();
    for series in [
        "plinth_events_group_events_parked_total 1",
        "plinth_events_group_events_replayed_total 1",
    ] {
        assert!(metrics.contains(series), "{series} in {metrics}");
    }
    for counter in [
        "plinth_events_group_events_leased_total",
        "plinth_events_group_events_acked_total",
        "plinth_events_group_events_retried_total",
    ] {
        assert!(
            metrics.contains(&format!("{counter} ")),
            "{counter} in {metrics}"
        );
    }

    // Only settings change on an existing group.
    let changed = put_group(
        &api,
        GROUP,
        &json!({ "filter": { "stream_prefix": "orders-" }, "settings": { "max_retries": 5 } }),
    )
    .await;
    assert_eq!(changed.status, 200, "{}", changed.text());
    assert_eq!(changed.json()["settings"]["max_retries"], 5);
    assert_eq!(changed.json()["settings"]["lease_timeout"], "30s");

    let listed = get_ok(&api, "/v1/subscriptions").await;
    assert_eq!(listed["items"][0]["group"], GROUP, "{listed}");

    let deleted = api.delete(&format!("/v1/subscriptions/{GROUP}")).await;
    assert_eq!(deleted.status, 204, "{}", deleted.text());
    api.get(&format!("/v1/subscriptions/{GROUP}"))
        .await
        .expect_problem(404, "group_not_found");
    assert_eq!(get_ok(&api, "/v1/subscriptions").await["items"], json!([]));
}

#[tokio::test]
async fn competing_consumers_ack_nack_park_and_replay_on_sqlite() {
    let node = Node::start(NodeOptions::dev()).await;
    competing_consumers_ack_nack_park_and_replay(&node).await;
}

#[tokio::test]
async fn competing_consumers_ack_nack_park_and_replay_on_postgres() {
    let test_name = "competing_consumers_ack_nack_park_and_replay_on_postgres";
    let Some(base_url) = support::postgres_base_url(test_name) else {
        return;
    };
    let url = support::isolated_postgres_url(&base_url, "blackbox_event_groups").await;
    let node = Node::start(NodeOptions::dev().env("PLINTH_STORAGE__URL", &url)).await;
    competing_consumers_ack_nack_park_and_replay(&node).await;
}

#[tokio::test]
async fn a_waiting_lease_is_answered_when_the_node_shuts_down() {
    let mut node = Node::start(NodeOptions::dev()).await;
    let api = node.anonymous();
    group_past_one_event(&api).await;

    let waiting = spawn_waiting_lease(&api);
    tokio::time::sleep(Duration::from_millis(300)).await;
    node.send_sigterm();
    let (batch, waited) = waiting.await.expect("the waiting lease");
    assert_eq!(leased_positions(&batch), Vec::<u64>::new());
    assert!(
        waited < Duration::from_secs(5),
        "answered at shutdown, not at the end of its wait: {waited:?}"
    );
    let exit = node.wait_for_exit(Duration::from_secs(5));
    assert!(exit.success(), "{exit}");
}

#[tokio::test]
async fn a_waiting_lease_is_answered_by_the_next_append() {
    let node = Node::start(NodeOptions::dev()).await;
    let api = node.anonymous();
    group_past_one_event(&api).await;

    // Nothing after the start: a short wait answers empty at its deadline.
    let started = Instant::now();
    let empty = post_ok(
        &api,
        &format!("/v1/subscriptions/{GROUP}/lease"),
        &json!({ "consumer": "worker-a", "wait": "300ms" }),
    )
    .await;
    assert_eq!(leased_positions(&empty), Vec::<u64>::new());
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "the lease waited"
    );

    let waiting = spawn_waiting_lease(&api);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let appended = append(&api, "orders-1", &["Paid"]).await;
    let (batch, waited) = waiting.await.expect("the waiting lease");
    assert_eq!(leased_positions(&batch), appended);
    assert!(
        waited < Duration::from_secs(10),
        "woken by the append, not the deadline: {waited:?}"
    );
    assert_eq!(status(&api, GROUP).await["in_flight"], 1);
}

#[tokio::test]
async fn bad_input_gets_a_clear_4xx() {
    let node = Node::start(NodeOptions::dev()).await;
    let api = node.anonymous();
    put_group(&api, ".hidden", &json!({}))
        .await
        .expect_problem(400, "invalid_name");
    let invalid_settings = [
        json!({ "settings": { "max_in_flight": 0 } }),
        json!({ "settings": { "lease_timeout": "1ms" } }),
        json!({ "settings": { "max_retries": 1_000_000 } }),
    ];
    for body in invalid_settings {
        put_group(&api, GROUP, &body)
            .await
            .expect_problem(400, "invalid_group_settings");
    }
    put_group(
        &api,
        GROUP,
        &json!({ "stream": "orders-1", "filter": { "stream_prefix": "orders-" } }),
    )
    .await
    .expect_problem(400, "invalid_filter");
    put_group(&api, GROUP, &json!({ "start_from": "yesterday" }))
        .await
        .expect_problem(422, "invalid_body");
    put_group(&api, GROUP, &json!({ "streams": "orders-1" }))
        .await
        .expect_problem(422, "invalid_body");
    assert_eq!(
        get_ok(&api, "/v1/subscriptions").await["items"],
        json!([]),
        "nothing was created"
    );

    for path in ["", "/parked"] {
        api.get(&format!("/v1/subscriptions/missing{path}"))
            .await
            .expect_problem(404, "group_not_found");
    }
    for (path, body) in [
        ("lease", json!({ "consumer": "worker-a" })),
        ("ack", json!({ "positions": [0] })),
        ("nack", json!({ "positions": [0] })),
        ("parked/replay", json!({})),
    ] {
        api.post_json(&format!("/v1/subscriptions/missing/{path}"), &body)
            .await
            .expect_problem(404, "group_not_found");
    }
    api.delete("/v1/subscriptions/missing")
        .await
        .expect_problem(404, "group_not_found");

    let created = put_group(&api, GROUP, &json!({ "stream": "orders-1" })).await;
    assert_eq!(created.status, 201, "{}", created.text());
    put_group(&api, GROUP, &json!({ "stream": "orders-2" }))
        .await
        .expect_problem(409, "group_source_changed");
    put_group(
        &api,
        GROUP,
        &json!({ "stream": "orders-1", "start_from": "end" }),
    )
    .await
    .expect_problem(409, "group_source_changed");
    let lease_path = format!("/v1/subscriptions/{GROUP}/lease");
    let bad_leases = [
        (json!({ "consumer": "worker a" }), "invalid_name"),
        (
            json!({ "consumer": "worker-a", "limit": 0 }),
            "invalid_limit",
        ),
        (
            json!({ "consumer": "worker-a", "wait": "2m" }),
            "invalid_wait",
        ),
    ];
    for (body, code) in bad_leases {
        api.post_json(&lease_path, &body)
            .await
            .expect_problem(400, code);
    }
    api.post_json(&lease_path, &json!({ "limit": 1 }))
        .await
        .expect_problem(422, "invalid_body");
    api.post_json(
        &format!("/v1/subscriptions/{GROUP}/ack"),
        &json!({ "positions": [] }),
    )
    .await
    .expect_problem(400, "invalid_positions");
    let too_many: Vec<u64> = (0..1001).collect();
    api.post_json(
        &format!("/v1/subscriptions/{GROUP}/nack"),
        &json!({ "positions": too_many }),
    )
    .await
    .expect_problem(400, "invalid_positions");
    api.get(&format!("/v1/subscriptions/{GROUP}/parked?cursor=zz"))
        .await
        .expect_problem(400, "invalid_cursor");
}

#[tokio::test]
async fn scopes_cover_what_a_group_reads_and_tenants_never_see_each_other() {
    let node = Node::start(NodeOptions::enforced()).await;
    let admin = node.admin();
    admin.create_tenant("acme").await;
    admin.create_tenant("globex").await;
    let owner_key = admin
        .create_tenant_key("acme", &["events:read", "events:write"])
        .await;
    let orders_consumer_key = admin
        .create_tenant_key("acme", &["events:read:orders-*"])
        .await;
    let cache_only_key = admin.create_tenant_key("acme", &["cache:read"]).await;
    let globex_key = admin
        .create_tenant_key("globex", &["events:read", "events:write"])
        .await;
    let owner = node.anonymous().with_token(&owner_key.secret);
    let orders_consumer = node.anonymous().with_token(&orders_consumer_key.secret);
    let cache_only = node.anonymous().with_token(&cache_only_key.secret);
    let globex = node.anonymous().with_token(&globex_key.secret);

    let on_orders = put_group(&owner, "orders", &json!({ "stream": "orders-1" })).await;
    assert_eq!(on_orders.status, 201, "{}", on_orders.text());
    let on_everything = put_group(&owner, "everything", &json!({})).await;
    assert_eq!(on_everything.status, 201, "{}", on_everything.text());
    append(&owner, "orders-1", &["Placed"]).await;

    // A consumer of orders-* may consume the group on orders-1 only, and
    // may not change or replay it.
    let leased = lease(&orders_consumer, "orders", "worker-a", 10).await;
    assert_eq!(leased_positions(&leased), vec![0]);
    post_ok(
        &orders_consumer,
        "/v1/subscriptions/orders/ack",
        &json!({ "positions": [0] }),
    )
    .await;
    assert_eq!(status(&orders_consumer, "orders").await["checkpoint"], 0);
    for denied in [
        put_group(&orders_consumer, "orders", &json!({ "stream": "orders-1" })).await,
        put_group(&orders_consumer, "mine", &json!({ "stream": "orders-9" })).await,
        orders_consumer.delete("/v1/subscriptions/orders").await,
        orders_consumer
            .post_json("/v1/subscriptions/orders/parked/replay", &json!({}))
            .await,
        orders_consumer
            .post_json(
                "/v1/subscriptions/everything/lease",
                &json!({ "consumer": "worker-a" }),
            )
            .await,
        orders_consumer.get("/v1/subscriptions/everything").await,
        orders_consumer.get("/v1/subscriptions").await,
    ] {
        denied.expect_problem(403, "permission_denied");
    }

    // Without events:read nothing of a group is reachable.
    for denied in [
        cache_only
            .post_json(
                "/v1/subscriptions/orders/lease",
                &json!({ "consumer": "worker-a" }),
            )
            .await,
        cache_only
            .post_json("/v1/subscriptions/orders/ack", &json!({ "positions": [0] }))
            .await,
        cache_only.get("/v1/subscriptions/orders").await,
        cache_only.get("/v1/subscriptions/orders/parked").await,
        cache_only.get("/v1/subscriptions").await,
    ] {
        denied.expect_problem(403, "permission_denied");
    }

    // Another tenant: acme's groups do not exist for it, and the same name
    // is its own.
    globex
        .get("/v1/subscriptions/orders")
        .await
        .expect_problem(404, "group_not_found");
    globex
        .post_json(
            "/v1/subscriptions/orders/lease",
            &json!({ "consumer": "worker-a" }),
        )
        .await
        .expect_problem(404, "group_not_found");
    globex
        .delete("/v1/subscriptions/everything")
        .await
        .expect_problem(404, "group_not_found");
    assert_eq!(
        get_ok(&globex, "/v1/subscriptions").await["items"],
        json!([])
    );
    let globex_orders = put_group(&globex, "orders", &json!({ "stream": "orders-1" })).await;
    assert_eq!(globex_orders.status, 201, "{}", globex_orders.text());
    let globex_lease = lease(&globex, "orders", "worker-a", 10).await;
    assert_eq!(
        leased_positions(&globex_lease),
        Vec::<u64>::new(),
        "globex's orders-1 is empty"
    );
    assert_eq!(
        get_ok(&owner, "/v1/subscriptions").await["items"]
            .as_array()
            .map(Vec::len),
        Some(2),
        "acme still has its two groups"
    );
}
