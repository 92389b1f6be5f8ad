//! Black-box tests of the event store's HTTP API: appends with expected
//! versions and idempotent retries, paged reads of streams and of the
//! global log, points in time, snapshots, retention, deletes, catch-up
//! subscriptions over SSE and WebSocket, scopes, tenant isolation, bad
//! input, scavenging, and a kill -9 in the middle of concurrent appends,
//! on SQLite and (under `scripts/test.sh`) PostgreSQL.

mod support;

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use futures::StreamExt;
use reqwest::Method;
use serde_json::{Value, json};
use support::{Api, Node, NodeOptions, Reply};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// How long a test waits for one subscription frame.
const FRAME_TIMEOUT: Duration = Duration::from_secs(10);

fn event(event_type: &str, data: Value) -> Value {
    json!({ "type": event_type, "data": data })
}

async fn append(api: &Api, stream: &str, expected_version: Value, events: Vec<Value>) -> Reply {
    api.post_json(
        &format!("/v1/streams/{stream}"),
        &json!({ "expected_version": expected_version, "events": events }),
    )
    .await
}

/// Appends and asserts 201; returns the answer.
async fn append_ok(api: &Api, stream: &str, expected_version: Value, events: Vec<Value>) -> Value {
    let reply = append(api, stream, expected_version, events).await;
    assert_eq!(reply.status, 201, "append to {stream}: {}", reply.text());
    reply.json()
}

async fn get_ok(api: &Api, path: &str) -> Value {
    let reply = api.get(path).await;
    assert_eq!(reply.status, 200, "GET {path}: {}", reply.text());
    reply.json()
}

async fn put_json(api: &Api, path: &str, body: &Value) -> Reply {
    api.send(api.request(Method::PUT, path).json(body)).await
}

fn revisions(page: &Value) -> Vec<u64> {
    page["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|event| event["revision"].as_u64().expect("revision"))
        .collect()
}

fn positions(page: &Value) -> Vec<u64> {
    page["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|event| event["position"].as_u64().expect("position"))
        .collect()
}

/// Every event of the tenant's log, following cursors.
async fn whole_log(api: &Api) -> Vec<Value> {
    let mut events = Vec::new();
    let mut path = "/v1/all?limit=100".to_string();
    loop {
        let page = get_ok(api, &path).await;
        events.extend(page["events"].as_array().expect("events").iter().cloned());
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/v1/all?limit=100&cursor={cursor}"),
            None => return events,
        }
    }
}

/// One Server-Sent Events frame.
#[derive(Debug, Default)]
struct SseFrame {
    id: Option<String>,
    event: Option<String>,
    data: String,
}

impl SseFrame {
    fn json(&self) -> Value {
        serde_json::from_str(&self.data).expect("SSE data is JSON")
    }
}

/// A streaming SSE response read frame by frame (keep-alive comments
/// skipped).
struct SseReader {
    response: reqwest::Response,
    buffer: String,
}

impl SseReader {
    async fn open(
        node: &Node,
        token: Option<&str>,
        path: &str,
        last_event_id: Option<u64>,
    ) -> Self {
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let mut request = client.get(node.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(last_event_id) = last_event_id {
            request = request.header("Last-Event-ID", last_event_id.to_string());
        }
        let response = request.send().await.expect("open the SSE stream");
        assert_eq!(response.status(), 200, "SSE {path}");
        assert_eq!(
            response.headers()["content-type"].to_str().unwrap(),
            "text/event-stream"
        );
        SseReader {
            response,
            buffer: String::new(),
        }
    }

    /// The next frame, `None` when the server ended the response.
    async fn next_frame(&mut self) -> Option<SseFrame> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let text: String = self.buffer.drain(..end + 2).collect();
                if let Some(frame) = parse_sse_frame(&text) {
                    return Some(frame);
                }
                continue;
            }
            let chunk = tokio::time::timeout(FRAME_TIMEOUT, self.response.chunk())
                .await
                .expect("an SSE frame within the timeout")
                .expect("read the SSE stream")?;
            self.buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }

    /// Events until `count` of them arrived, asserting any other frame is
    /// `caught_up`.
    async fn events(&mut self, count: usize) -> Vec<Value> {
        let mut events = Vec::new();
        while events.len() < count {
            let frame = self.next_frame().await.expect("the stream goes on");
            match frame.event.as_deref() {
                None => {
                    let event = frame.json();
                    assert_eq!(
                        frame.id.as_deref(),
                        Some(event["position"].to_string().as_str()),
                        "the SSE id is the global position"
                    );
                    events.push(event);
                }
                Some("caught_up") => {}
                other => panic!("unexpected SSE frame {other:?}: {}", frame.data),
            }
        }
        events
    }

    async fn expect_caught_up(&mut self) -> u64 {
        let frame = self.next_frame().await.expect("a caught_up frame");
        assert_eq!(frame.event.as_deref(), Some("caught_up"), "{frame:?}");
        frame.json()["next_position"].as_u64().unwrap()
    }
}

fn parse_sse_frame(text: &str) -> Option<SseFrame> {
    let mut frame = SseFrame::default();
    let mut has_field = false;
    for line in text.lines() {
        if let Some(value) = line.strip_prefix("id:") {
            frame.id = Some(value.trim_start().to_string());
            has_field = true;
        } else if let Some(value) = line.strip_prefix("event:") {
            frame.event = Some(value.trim_start().to_string());
            has_field = true;
        } else if let Some(value) = line.strip_prefix("data:") {
            frame.data.push_str(value.trim_start());
            has_field = true;
        }
    }
    has_field.then_some(frame)
}

fn event_positions(events: &[Value]) -> Vec<u64> {
    events
        .iter()
        .map(|event| event["position"].as_u64().unwrap())
        .collect()
}

/// Appends, reads, conflicts, retries and a live subscription: the core
/// every backend must serve the same way.
async fn core_append_read_and_subscribe(node: &Node) {
    let api = node.anonymous();
    let first = append_ok(
        &api,
        "order-1",
        json!("no_stream"),
        vec![
            event("OrderPlaced", json!({ "total": 10 })),
            event("OrderPaid", json!({ "amount": 10 })),
        ],
    )
    .await;
    assert_eq!(first["stream_version"], 1, "{first}");
    assert_eq!(first["replayed"], false);
    assert_eq!(revisions(&first), vec![0, 1]);
    assert_eq!(positions(&first), vec![0, 1]);

    let conflict = append(
        &api,
        "order-1",
        json!(0),
        vec![event("OrderShipped", json!({}))],
    )
    .await;
    let problem = conflict.expect_problem(409, "wrong_expected_version");
    assert_eq!(problem["current_version"], 1, "{problem}");
    assert_eq!(problem["expected_version"], 0, "{problem}");
    assert_eq!(problem["stream"], "order-1", "{problem}");
    let missing = append(
        &api,
        "order-2",
        json!("exists"),
        vec![event("OrderShipped", json!({}))],
    )
    .await;
    let problem = missing.expect_problem(409, "wrong_expected_version");
    assert_eq!(problem["current_version"], Value::Null, "{problem}");

    // A retry with the same ids returns the original result.
    let id = "0190f3a4-5b6c-7d8e-9f00-112233445566";
    let retried_event = json!({
        "id": id, "type": "OrderShipped", "data": { "carrier": "dhl" },
        "metadata": { "causation_id": "command-7" },
    });
    let request_id = "events-core-append-1";
    let original = api
        .send(
            api.request(Method::POST, "/v1/streams/order-1")
                .header("X-Request-Id", request_id)
                .json(&json!({ "expected_version": 1, "events": [retried_event] })),
        )
        .await;
    assert_eq!(original.status, 201, "{}", original.text());
    let retry = append_ok(&api, "order-1", json!(1), vec![retried_event.clone()]).await;
    assert_eq!(retry["replayed"], true, "{retry}");
    assert_eq!(retry["events"], original.json()["events"]);

    let stream = get_ok(&api, "/v1/streams/order-1").await;
    assert_eq!(revisions(&stream), vec![0, 1, 2]);
    assert_eq!(stream["stream_version"], 2);
    let shipped = &stream["events"][2];
    assert_eq!(shipped["id"], id);
    assert_eq!(shipped["type"], "OrderShipped");
    assert_eq!(shipped["data"], json!({ "carrier": "dhl" }));
    assert_eq!(
        shipped["metadata"]["correlation_id"], request_id,
        "{shipped}"
    );
    assert_eq!(
        shipped["metadata"]["causation_id"], "command-7",
        "{shipped}"
    );
    assert_eq!(shipped["schema_version"], 1);

    let log = get_ok(&api, "/v1/all").await;
    assert_eq!(positions(&log), vec![0, 1, 2]);
    assert_eq!(log["head_position"], 2);

    // Catch up on the three, then see a live append, exactly once each.
    let mut subscription = SseReader::open(node, None, "/v1/streams/order-1/subscribe", None).await;
    let caught_up = subscription.events(3).await;
    assert_eq!(event_positions(&caught_up), vec![0, 1, 2]);
    assert_eq!(subscription.expect_caught_up().await, 3);
    append_ok(
        &api,
        "other-1",
        json!("any"),
        vec![event("Noise", json!({}))],
    )
    .await;
    append_ok(
        &api,
        "order-1",
        json!(2),
        vec![event("OrderDelivered", json!({}))],
    )
    .await;
    let live = subscription.events(1).await;
    assert_eq!(live[0]["stream"], "order-1");
    assert_eq!(live[0]["revision"], 3);
    assert_eq!(live[0]["position"], 4);
}

#[tokio::test]
async fn appends_reads_conflicts_retries_and_a_subscription_on_sqlite() {
    let node = Node::start(NodeOptions::dev()).await;
    core_append_read_and_subscribe(&node).await;
    let metrics = node.anonymous().get("/metrics").await.text();
    assert!(
        metrics.contains("plinth_events_appended_total 5"),
        "appends are counted (the replay is not):\n{metrics}"
    );
}

#[tokio::test]
async fn appends_reads_conflicts_retries_and_a_subscription_on_postgres() {
    let test_name = "appends_reads_conflicts_retries_and_a_subscription_on_postgres";
    let Some(base_url) = support::postgres_base_url(test_name) else {
        return;
    };
    let url = support::isolated_postgres_url(&base_url, "blackbox_events_core").await;
    let node = Node::start(NodeOptions::dev().env("PLINTH_STORAGE__URL", &url)).await;
    core_append_read_and_subscribe(&node).await;
}

#[tokio::test]
async fn reads_page_with_cursors_in_both_directions_and_as_of_a_point_in_time() {
    let node = Node::start(NodeOptions::dev()).await;
    let api = node.anonymous();
    let batch: Vec<Value> = (0..5)
        .map(|index| event("Counted", json!({ "n": index })))
        .collect();
    append_ok(&api, "counter", json!("no_stream"), batch).await;

    let first = get_ok(&api, "/v1/streams/counter?limit=2").await;
    assert_eq!(revisions(&first), vec![0, 1]);
    let cursor = first["next_cursor"].as_str().expect("a next page");
    let second = get_ok(
        &api,
        &format!("/v1/streams/counter?limit=2&cursor={cursor}"),
    )
    .await;
    assert_eq!(revisions(&second), vec![2, 3]);
    let cursor = second["next_cursor"].as_str().expect("a last page");
    let third = get_ok(
        &api,
        &format!("/v1/streams/counter?limit=2&cursor={cursor}"),
    )
    .await;
    assert_eq!(revisions(&third), vec![4]);
    assert_eq!(third["next_cursor"], Value::Null);

    let backward = get_ok(&api, "/v1/streams/counter?direction=backward&limit=3").await;
    assert_eq!(revisions(&backward), vec![4, 3, 2]);
    let cursor = backward["next_cursor"].as_str().unwrap();
    let rest = get_ok(
        &api,
        &format!("/v1/streams/counter?direction=backward&limit=3&cursor={cursor}"),
    )
    .await;
    assert_eq!(revisions(&rest), vec![1, 0]);
    let from = get_ok(
        &api,
        "/v1/streams/counter?direction=backward&from_revision=1",
    )
    .await;
    assert_eq!(revisions(&from), vec![1, 0]);
    let from = get_ok(&api, "/v1/streams/counter?from_revision=3").await;
    assert_eq!(revisions(&from), vec![3, 4]);

    let all_backward = get_ok(&api, "/v1/all?direction=backward&limit=2").await;
    assert_eq!(positions(&all_backward), vec![4, 3]);
    let cursor = all_backward["next_cursor"].as_str().unwrap();
    let all_rest = get_ok(
        &api,
        &format!("/v1/all?direction=backward&limit=10&cursor={cursor}"),
    )
    .await;
    assert_eq!(positions(&all_rest), vec![2, 1, 0]);

    // Point in time, by position and by time.
    let as_of = get_ok(&api, "/v1/streams/counter?as_of_position=2").await;
    assert_eq!(revisions(&as_of), vec![0, 1, 2]);
    let as_of = get_ok(&api, "/v1/all?as_of_position=1").await;
    assert_eq!(positions(&as_of), vec![0, 1]);
    let recorded_at = get_ok(&api, "/v1/streams/counter").await["events"][4]["recorded_at"]
        .as_str()
        .unwrap()
        .to_string();
    tokio::time::sleep(Duration::from_millis(20)).await;
    append_ok(
        &api,
        "counter",
        json!(4),
        vec![event("Counted", json!({ "n": 5 }))],
    )
    .await;
    let encoded = recorded_at.replace('+', "%2B");
    let as_of = get_ok(&api, &format!("/v1/streams/counter?as_of_time={encoded}")).await;
    assert_eq!(
        revisions(&as_of),
        vec![0, 1, 2, 3, 4],
        "as of {recorded_at}"
    );
    let as_of = get_ok(&api, &format!("/v1/all?as_of_time={encoded}")).await;
    assert_eq!(positions(&as_of), vec![0, 1, 2, 3, 4]);
    let now = get_ok(&api, "/v1/streams/counter").await;
    assert_eq!(revisions(&now), vec![0, 1, 2, 3, 4, 5]);
}

#[tokio::test]
async fn the_global_log_filters_by_stream_prefix_and_event_type() {
    let node = Node::start(NodeOptions::dev()).await;
    let api = node.anonymous();
    append_ok(
        &api,
        "order-1",
        json!("any"),
        vec![event("OrderPlaced", json!({}))],
    )
    .await;
    append_ok(
        &api,
        "invoice-1",
        json!("any"),
        vec![event("InvoiceSent", json!({}))],
    )
    .await;
    append_ok(
        &api,
        "order-2",
        json!("any"),
        vec![
            event("OrderPlaced", json!({})),
            event("OrderPaid", json!({})),
        ],
    )
    .await;
    append_ok(
        &api,
        "order-1",
        json!("any"),
        vec![event("OrderPaid", json!({}))],
    )
    .await;

    let orders = get_ok(&api, "/v1/all?stream_prefix=order-").await;
    assert_eq!(positions(&orders), vec![0, 2, 3, 4]);
    let paid = get_ok(&api, "/v1/all?event_types=OrderPaid").await;
    assert_eq!(positions(&paid), vec![3, 4]);
    let both = get_ok(&api, "/v1/all?event_types=OrderPaid,InvoiceSent").await;
    assert_eq!(positions(&both), vec![1, 3, 4]);
    let narrow = get_ok(&api, "/v1/all?stream_prefix=order-1&event_types=OrderPaid").await;
    assert_eq!(positions(&narrow), vec![4]);
    let paged = get_ok(&api, "/v1/all?stream_prefix=order-&limit=3").await;
    assert_eq!(positions(&paged), vec![0, 2, 3]);
    let cursor = paged["next_cursor"].as_str().unwrap();
    let paged = get_ok(
        &api,
        &format!("/v1/all?stream_prefix=order-&limit=3&cursor={cursor}"),
    )
    .await;
    assert_eq!(positions(&paged), vec![4]);

    // A filtered subscription to the log delivers the same events.
    let mut subscription =
        SseReader::open(&node, None, "/v1/all/subscribe?event_types=OrderPaid", None).await;
    assert_eq!(event_positions(&subscription.events(2).await), vec![3, 4]);
    assert_eq!(subscription.expect_caught_up().await, 5);
    append_ok(
        &api,
        "order-3",
        json!("any"),
        vec![
            event("OrderPlaced", json!({})),
            event("OrderPaid", json!({})),
        ],
    )
    .await;
    assert_eq!(event_positions(&subscription.events(1).await), vec![6]);
}

#[tokio::test]
async fn snapshots_metadata_retention_and_deletes() {
    let node = Node::start(NodeOptions::dev()).await;
    let api = node.anonymous();
    let batch: Vec<Value> = (0..6)
        .map(|index| event("Counted", json!({ "n": index })))
        .collect();
    append_ok(&api, "account-1", json!("no_stream"), batch).await;

    api.get("/v1/streams/account-1/snapshot")
        .await
        .expect_problem(404, "snapshot_not_found");
    let from_nothing = get_ok(&api, "/v1/streams/account-1/from-snapshot").await;
    assert_eq!(from_nothing["snapshot"], Value::Null);
    assert_eq!(revisions(&from_nothing), vec![0, 1, 2, 3, 4, 5]);
    let stored = put_json(
        &api,
        "/v1/streams/account-1/snapshot",
        &json!({ "revision": 3, "data": { "sum": 6 } }),
    )
    .await;
    assert_eq!(stored.status, 204, "{}", stored.text());
    let snapshot = get_ok(&api, "/v1/streams/account-1/snapshot").await;
    assert_eq!(snapshot["revision"], 3);
    assert_eq!(snapshot["data"], json!({ "sum": 6 }));
    let from_snapshot = get_ok(&api, "/v1/streams/account-1/from-snapshot").await;
    assert_eq!(from_snapshot["snapshot"]["revision"], 3);
    assert_eq!(revisions(&from_snapshot), vec![4, 5]);
    put_json(
        &api,
        "/v1/streams/account-1/snapshot",
        &json!({ "revision": 9, "data": {} }),
    )
    .await
    .expect_problem(409, "snapshot_ahead_of_stream");

    // Retention hides at once.
    let info = get_ok(&api, "/v1/streams/account-1/metadata").await;
    assert_eq!(info["version"], 5);
    assert_eq!(info["status"], "active");
    let set = put_json(
        &api,
        "/v1/streams/account-1/metadata",
        &json!({ "max_count": 2 }),
    )
    .await;
    assert_eq!(set.status, 200, "{}", set.text());
    assert_eq!(set.json()["metadata"]["max_count"], 2);
    assert_eq!(
        revisions(&get_ok(&api, "/v1/streams/account-1").await),
        vec![4, 5]
    );
    let set = put_json(
        &api,
        "/v1/streams/account-1/metadata",
        &json!({ "truncate_before": 5, "max_age": "1h" }),
    )
    .await;
    assert_eq!(set.status, 200, "{}", set.text());
    assert_ne!(set.json()["metadata"]["max_age"], Value::Null);
    assert_eq!(
        revisions(&get_ok(&api, "/v1/streams/account-1").await),
        vec![5]
    );

    // Scavenging removes what is hidden, and the metrics show it.
    let started = api.post_json("/v1/admin/events/scavenge", &json!({})).await;
    assert_eq!(started.status, 202, "{}", started.text());
    let finished = support::eventually(Duration::from_secs(10), || async {
        get_ok(&api, "/v1/admin/events/scavenge").await["running"] == false
    })
    .await;
    assert!(finished, "the scavenge finished");
    let status = get_ok(&api, "/v1/admin/events/scavenge").await;
    assert_eq!(status["report"]["events_removed"], 5, "{status}");
    assert_eq!(status["error"], Value::Null);
    let metrics = node.anonymous().get("/metrics").await.text();
    assert!(
        metrics.contains("plinth_events_scavenged_total{kind=\"events\"} 5"),
        "{metrics}"
    );
    assert_eq!(
        revisions(&get_ok(&api, "/v1/streams/account-1").await),
        vec![5]
    );

    // Soft delete hides; an append continues the numbering.
    let deleted = api.delete("/v1/streams/account-1?mode=soft").await;
    assert_eq!(deleted.status, 200, "{}", deleted.text());
    assert_eq!(deleted.json()["status"], "soft_deleted");
    api.get("/v1/streams/account-1")
        .await
        .expect_problem(404, "stream_not_found");
    let again = append_ok(
        &api,
        "account-1",
        json!("no_stream"),
        vec![event("Reopened", json!({}))],
    )
    .await;
    assert_eq!(revisions(&again), vec![6]);

    // Hard delete is for good: 410 to reads and appends.
    api.delete("/v1/streams/account-1?mode=hard&expected_version=3")
        .await
        .expect_problem(409, "wrong_expected_version");
    let deleted = api
        .delete("/v1/streams/account-1?mode=hard&expected_version=6")
        .await;
    assert_eq!(deleted.status, 200, "{}", deleted.text());
    assert_eq!(deleted.json()["status"], "tombstoned");
    append(
        &api,
        "account-1",
        json!("any"),
        vec![event("Zombie", json!({}))],
    )
    .await
    .expect_problem(410, "stream_deleted");
    api.get("/v1/streams/account-1")
        .await
        .expect_problem(410, "stream_deleted");
    api.delete("/v1/streams/account-1?mode=soft")
        .await
        .expect_problem(410, "stream_deleted");
}

#[tokio::test]
async fn a_node_scavenges_by_itself_every_interval() {
    let node = Node::start(NodeOptions::dev().env("PLINTH_EVENTS__SCAVENGE_INTERVAL", "1s")).await;
    let api = node.anonymous();
    let batch: Vec<Value> = (0..4)
        .map(|index| event("Counted", json!({ "n": index })))
        .collect();
    append_ok(&api, "gauge-1", json!("no_stream"), batch).await;
    let set = put_json(
        &api,
        "/v1/streams/gauge-1/metadata",
        &json!({ "max_count": 1 }),
    )
    .await;
    assert_eq!(set.status, 200, "{}", set.text());

    // Counted across scavenges: the one that removed them may be followed
    // by others that find nothing.
    let scavenged = support::eventually(Duration::from_secs(10), || async {
        let metrics = node.anonymous().get("/metrics").await.text();
        metrics.contains("plinth_events_scavenged_total{kind=\"events\"} 3")
    })
    .await;
    assert!(
        scavenged,
        "no periodic scavenge removed the hidden events: {}",
        get_ok(&api, "/v1/admin/events/scavenge").await
    );
    assert_eq!(
        revisions(&get_ok(&api, "/v1/streams/gauge-1").await),
        vec![3]
    );
}

#[tokio::test]
async fn sse_catch_up_turns_live_without_loss_or_duplication_and_resumes_with_last_event_id() {
    const EVENTS_BEFORE: usize = 150;
    const WRITERS: usize = 4;
    const APPENDS_PER_WRITER: usize = 25;
    let node = Node::start(NodeOptions::dev()).await;
    let api = node.anonymous();
    for batch in 0..(EVENTS_BEFORE / 10) {
        let events = (0..10)
            .map(|index| event("Before", json!({ "n": batch * 10 + index })))
            .collect();
        append_ok(&api, &format!("before-{}", batch % 3), json!("any"), events).await;
    }

    // Writers append while the subscription catches up.
    let mut subscription = SseReader::open(&node, None, "/v1/all/subscribe", None).await;
    let mut writers = Vec::new();
    for writer in 0..WRITERS {
        let api = api.clone();
        writers.push(tokio::spawn(async move {
            for append_index in 0..APPENDS_PER_WRITER {
                let events = vec![event(
                    "During",
                    json!({ "writer": writer, "n": append_index }),
                )];
                append_ok(&api, &format!("during-{writer}"), json!("any"), events).await;
            }
        }));
    }
    let total = EVENTS_BEFORE + WRITERS * APPENDS_PER_WRITER;
    let received = subscription.events(total).await;
    for writer in writers {
        writer.await.unwrap();
    }
    let expected: Vec<u64> = (0..total as u64).collect();
    assert_eq!(
        event_positions(&received),
        expected,
        "every event once, in order"
    );

    // A reconnect with Last-Event-ID gets only what came after.
    drop(subscription);
    append_ok(
        &api,
        "after-1",
        json!("any"),
        vec![event("After", json!({})), event("After", json!({}))],
    )
    .await;
    let last_seen = total as u64 - 1;
    let mut resumed = SseReader::open(&node, None, "/v1/all/subscribe", Some(last_seen)).await;
    let resumed_events = resumed.events(2).await;
    assert_eq!(
        event_positions(&resumed_events),
        vec![total as u64, total as u64 + 1]
    );
    assert_eq!(resumed.expect_caught_up().await, total as u64 + 2);

    let metrics = node.anonymous().get("/metrics").await.text();
    assert!(
        metrics.contains("plinth_events_subscriptions_active{transport=\"sse\"}"),
        "{metrics}"
    );
}

#[tokio::test]
async fn subscriptions_end_with_a_reason_when_the_node_shuts_down() {
    let mut node = Node::start(NodeOptions::dev()).await;
    let api = node.anonymous();
    append_ok(
        &api,
        "order-1",
        json!("any"),
        vec![event("OrderPlaced", json!({}))],
    )
    .await;
    let mut subscription =
        SseReader::open(&node, None, "/v1/streams/order-1/subscribe", None).await;
    subscription.events(1).await;
    subscription.expect_caught_up().await;
    node.send_sigterm();
    let frame = subscription.next_frame().await.expect("an end frame");
    assert_eq!(frame.event.as_deref(), Some("end"), "{frame:?}");
    assert_eq!(frame.json()["code"], "shutdown");
    assert!(
        subscription.next_frame().await.is_none(),
        "the response ends"
    );
    let status = node.wait_for_exit(Duration::from_secs(5));
    assert!(status.success(), "{status}");
}

/// The next text message as JSON (pings skipped).
async fn next_text_message<S>(socket: &mut S) -> Value
where
    S: futures::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        let message = tokio::time::timeout(FRAME_TIMEOUT, socket.next())
            .await
            .expect("a WebSocket message in time")
            .expect("the socket stays open")
            .expect("a valid message");
        if let Message::Text(text) = message {
            return serde_json::from_str(&text).unwrap();
        }
    }
}

#[tokio::test]
async fn a_websocket_subscription_catches_up_then_goes_live() {
    let node = Node::start(NodeOptions::dev()).await;
    let api = node.anonymous();
    append_ok(
        &api,
        "cart-1",
        json!("any"),
        vec![
            event("ItemAdded", json!({ "sku": "a" })),
            event("ItemAdded", json!({ "sku": "b" })),
        ],
    )
    .await;
    append_ok(
        &api,
        "cart-2",
        json!("any"),
        vec![event("ItemAdded", json!({ "sku": "c" }))],
    )
    .await;

    let url = format!(
        "ws://{}/v1/streams/cart-1/subscribe/ws?from_position=1",
        node.address()
    );
    let request = url.into_client_request().unwrap();
    let (mut socket, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("WebSocket upgrade");
    let first = next_text_message(&mut socket).await;
    assert_eq!(first["type"], "event", "{first}");
    assert_eq!(first["event"]["position"], 1);
    assert_eq!(first["event"]["data"], json!({ "sku": "b" }));
    let caught_up = next_text_message(&mut socket).await;
    assert_eq!(
        caught_up,
        json!({ "type": "caught_up", "next_position": 3 })
    );
    append_ok(
        &api,
        "cart-2",
        json!("any"),
        vec![event("ItemAdded", json!({}))],
    )
    .await;
    append_ok(
        &api,
        "cart-1",
        json!(1),
        vec![event("CheckedOut", json!({}))],
    )
    .await;
    let live = next_text_message(&mut socket).await;
    assert_eq!(live["event"]["type"], "CheckedOut", "{live}");
    assert_eq!(live["event"]["position"], 4);

    let not_upgraded = api.get("/v1/all/subscribe/ws").await;
    not_upgraded.expect_problem(400, "websocket_upgrade_required");
}

#[tokio::test]
async fn scopes_limit_streams_and_tenants_never_see_each_other() {
    let node = Node::start(NodeOptions::enforced()).await;
    let admin = node.admin();
    admin.create_tenant("acme").await;
    admin.create_tenant("globex").await;
    let writer_key = admin
        .create_tenant_key("acme", &["events:write:orders-*", "events:read:orders-*"])
        .await;
    let reader_key = admin
        .create_tenant_key("acme", &["events:read:orders-*"])
        .await;
    let globex_key = admin
        .create_tenant_key("globex", &["events:read", "events:write"])
        .await;
    let writer = node.anonymous().with_token(&writer_key.secret);
    let reader = node.anonymous().with_token(&reader_key.secret);
    let globex = node.anonymous().with_token(&globex_key.secret);

    append_ok(
        &writer,
        "orders-1",
        json!("no_stream"),
        vec![event("OrderPlaced", json!({ "secret": "acme" }))],
    )
    .await;
    append(
        &writer,
        "invoices-1",
        json!("any"),
        vec![event("InvoiceSent", json!({}))],
    )
    .await
    .expect_problem(403, "permission_denied");
    append(
        &reader,
        "orders-1",
        json!("any"),
        vec![event("OrderPaid", json!({}))],
    )
    .await
    .expect_problem(403, "permission_denied");
    assert_eq!(
        revisions(&get_ok(&reader, "/v1/streams/orders-1").await),
        vec![0]
    );
    reader
        .get("/v1/streams/invoices-1")
        .await
        .expect_problem(403, "permission_denied");
    reader
        .get("/v1/all")
        .await
        .expect_problem(403, "permission_denied");
    assert_eq!(
        positions(&get_ok(&reader, "/v1/all?stream_prefix=orders-").await),
        vec![0]
    );
    reader
        .get("/v1/all?stream_prefix=ord")
        .await
        .expect_problem(403, "permission_denied");
    reader
        .get("/v1/all/subscribe")
        .await
        .expect_problem(403, "permission_denied");
    reader
        .get("/v1/streams/invoices-1/subscribe")
        .await
        .expect_problem(403, "permission_denied");
    reader
        .delete("/v1/streams/orders-1?mode=hard")
        .await
        .expect_problem(403, "permission_denied");
    put_json(
        &reader,
        "/v1/streams/orders-1/metadata",
        &json!({ "max_count": 1 }),
    )
    .await
    .expect_problem(403, "permission_denied");
    put_json(
        &reader,
        "/v1/streams/orders-1/snapshot",
        &json!({ "revision": 0, "data": {} }),
    )
    .await
    .expect_problem(403, "permission_denied");
    writer
        .post_json("/v1/admin/events/scavenge", &json!({}))
        .await
        .expect_problem(403, "permission_denied");
    writer
        .get("/v1/admin/events/scavenge")
        .await
        .expect_problem(403, "permission_denied");

    // Another tenant: the same names are its own and it learns nothing of
    // acme's streams or positions.
    globex
        .get("/v1/streams/orders-1")
        .await
        .expect_problem(404, "stream_not_found");
    globex
        .get("/v1/streams/orders-1/metadata")
        .await
        .expect_problem(404, "stream_not_found");
    globex
        .get("/v1/streams/orders-1/snapshot")
        .await
        .expect_problem(404, "stream_not_found");
    let globex_log = get_ok(&globex, "/v1/all").await;
    assert_eq!(globex_log["events"], json!([]));
    assert_eq!(globex_log["head_position"], Value::Null);
    append(
        &globex,
        "orders-1",
        json!(0),
        vec![event("OrderPaid", json!({}))],
    )
    .await
    .expect_problem(409, "wrong_expected_version");
    let own = append_ok(
        &globex,
        "orders-1",
        json!("no_stream"),
        vec![event("OrderPlaced", json!({ "secret": "globex" }))],
    )
    .await;
    assert_eq!(
        positions(&own),
        vec![0],
        "each tenant's log has its own positions"
    );
    let mut subscription =
        SseReader::open(&node, Some(&globex_key.secret), "/v1/all/subscribe", None).await;
    let seen = subscription.events(1).await;
    assert_eq!(seen[0]["data"], json!({ "secret": "globex" }));
    assert_eq!(subscription.expect_caught_up().await, 1);
    let deleted = globex.delete("/v1/streams/orders-1?mode=hard").await;
    assert_eq!(deleted.status, 200, "{}", deleted.text());
    let acme_stream = get_ok(&reader, "/v1/streams/orders-1").await;
    assert_eq!(
        acme_stream["events"][0]["data"],
        json!({ "secret": "acme" })
    );
    append_ok(
        &writer,
        "orders-1",
        json!(0),
        vec![event("OrderPaid", json!({}))],
    )
    .await;
}

#[tokio::test]
async fn bad_input_gets_a_clear_4xx_and_writes_nothing() {
    let node = Node::start(
        NodeOptions::dev()
            .env("PLINTH_EVENTS__MAX_EVENTS_PER_APPEND", "3")
            .env("PLINTH_EVENTS__MAX_EVENT_BYTES", "1024")
            .env("PLINTH_EVENTS__MAX_APPEND_BYTES", "2048")
            .env("PLINTH_EVENTS__MAX_READ_COUNT", "50"),
    )
    .await;
    let api = node.anonymous();
    append_ok(
        &api,
        "good",
        json!("no_stream"),
        vec![event("Created", json!({})), event("Renamed", json!({}))],
    )
    .await;
    append_ok(
        &api,
        "gone",
        json!("no_stream"),
        vec![event("Created", json!({}))],
    )
    .await;
    let deleted = api.delete("/v1/streams/gone?mode=hard").await;
    assert_eq!(deleted.status, 200, "{}", deleted.text());

    let padding = "x".repeat(900);
    let duplicate_id = "0190f3a4-5b6c-7d8e-9f00-aabbccddeeff";
    let cases: Vec<(&str, Reply, u16, &str)> = vec![
        (
            "bad stream name",
            append(&api, ".hidden", json!("any"), vec![event("A", json!({}))]).await,
            400,
            "invalid_name",
        ),
        (
            "empty batch",
            append(&api, "good", json!("any"), vec![]).await,
            400,
            "empty_append",
        ),
        (
            "too many events",
            append(
                &api,
                "good",
                json!("any"),
                (0..4).map(|_| event("A", json!({}))).collect(),
            )
            .await,
            413,
            "too_many_events",
        ),
        (
            "oversized event",
            append(
                &api,
                "good",
                json!("any"),
                vec![event("A", json!({ "pad": "x".repeat(2000) }))],
            )
            .await,
            413,
            "event_too_large",
        ),
        (
            "oversized batch",
            append(
                &api,
                "good",
                json!("any"),
                (0..3)
                    .map(|_| event("A", json!({ "pad": padding })))
                    .collect(),
            )
            .await,
            413,
            "append_too_large",
        ),
        (
            "malformed expected version",
            append(
                &api,
                "good",
                json!("sometimes"),
                vec![event("A", json!({}))],
            )
            .await,
            422,
            "invalid_body",
        ),
        (
            "negative expected version",
            append(&api, "good", json!(-1), vec![event("A", json!({}))]).await,
            422,
            "invalid_body",
        ),
        (
            "duplicate ids",
            append(
                &api,
                "good",
                json!("any"),
                vec![
                    json!({ "id": duplicate_id, "type": "A", "data": {} }),
                    json!({ "id": duplicate_id, "type": "B", "data": {} }),
                ],
            )
            .await,
            400,
            "duplicate_event_id",
        ),
        (
            "missing type",
            append(&api, "good", json!("any"), vec![json!({ "data": {} })]).await,
            422,
            "invalid_body",
        ),
        (
            "bad event type",
            append(
                &api,
                "good",
                json!("any"),
                vec![event("has space", json!({}))],
            )
            .await,
            400,
            "invalid_event_type",
        ),
        (
            "metadata not an object",
            append(
                &api,
                "good",
                json!("any"),
                vec![json!({ "type": "A", "data": {}, "metadata": [1] })],
            )
            .await,
            400,
            "invalid_metadata",
        ),
        (
            "correlation id not a string",
            append(
                &api,
                "good",
                json!("any"),
                vec![json!({ "type": "A", "data": {}, "metadata": { "correlation_id": 7 } })],
            )
            .await,
            400,
            "invalid_metadata",
        ),
        (
            "schema version 0",
            append(
                &api,
                "good",
                json!("any"),
                vec![json!({ "type": "A", "data": {}, "schema_version": 0 })],
            )
            .await,
            400,
            "invalid_schema_version",
        ),
        (
            "hard-deleted stream",
            append(&api, "gone", json!("any"), vec![event("A", json!({}))]).await,
            410,
            "stream_deleted",
        ),
        (
            "unknown body field",
            api.post_json(
                "/v1/streams/good",
                &json!({ "events": [event("A", json!({}))], "expect": 1 }),
            )
            .await,
            422,
            "invalid_body",
        ),
        (
            "bad cursor",
            api.get("/v1/streams/good?cursor=nonsense").await,
            400,
            "invalid_cursor",
        ),
        (
            "cursor and from_revision",
            api.get("/v1/streams/good?cursor=00&from_revision=1").await,
            400,
            "invalid_cursor",
        ),
        (
            "zero limit",
            api.get("/v1/streams/good?limit=0").await,
            400,
            "invalid_limit",
        ),
        (
            "non-numeric revision",
            api.get("/v1/streams/good?from_revision=first").await,
            400,
            "invalid_query",
        ),
        (
            "negative position",
            api.get("/v1/all?from_position=-1").await,
            400,
            "invalid_query",
        ),
        (
            "unknown direction",
            api.get("/v1/all?direction=sideways").await,
            400,
            "invalid_query",
        ),
        (
            "bad timestamp",
            api.get("/v1/all?as_of_time=yesterday").await,
            400,
            "invalid_as_of_time",
        ),
        (
            "two points in time",
            api.get("/v1/streams/good?as_of_position=1&as_of_time=2025-01-01T00:00:00Z")
                .await,
            400,
            "invalid_as_of",
        ),
        (
            "bad prefix",
            api.get("/v1/all?stream_prefix=.x").await,
            400,
            "invalid_name",
        ),
        (
            "bad event type filter",
            api.get("/v1/all?event_types=a%20b").await,
            400,
            "invalid_event_type",
        ),
        (
            "position out of range",
            api.get("/v1/all?from_position=18446744073709551615").await,
            400,
            "value_out_of_range",
        ),
        (
            "bad Last-Event-ID",
            api.send(
                api.request(Method::GET, "/v1/all/subscribe")
                    .header("Last-Event-ID", "latest"),
            )
            .await,
            400,
            "invalid_last_event_id",
        ),
        (
            "bad subscription filter",
            api.get("/v1/all/subscribe?event_types=a%20b").await,
            400,
            "invalid_event_type",
        ),
        (
            "bad delete mode",
            api.delete("/v1/streams/good?mode=gently").await,
            400,
            "invalid_query",
        ),
        (
            "bad delete expected version",
            api.delete("/v1/streams/good?expected_version=soon").await,
            400,
            "invalid_expected_version",
        ),
        (
            "zero max_count",
            put_json(
                &api,
                "/v1/streams/good/metadata",
                &json!({ "max_count": 0 }),
            )
            .await,
            400,
            "invalid_stream_metadata",
        ),
        (
            "unknown metadata field",
            put_json(&api, "/v1/streams/good/metadata", &json!({ "max_size": 1 })).await,
            422,
            "invalid_body",
        ),
        (
            "missing stream",
            api.get("/v1/streams/never-written").await,
            404,
            "stream_not_found",
        ),
    ];
    for (case, reply, status, code) in &cases {
        let problem = reply.json();
        assert_eq!(reply.status, *status, "{case}: {problem}");
        reply.expect_problem(*status, code);
    }
    // A limit over max_read_count is lowered to it, not refused.
    get_ok(&api, "/v1/all?limit=5000").await;
    let cursor_from_backward =
        get_ok(&api, "/v1/all?direction=backward&limit=1").await["next_cursor"]
            .as_str()
            .unwrap()
            .to_string();
    api.get(&format!("/v1/all?cursor={cursor_from_backward}"))
        .await
        .expect_problem(400, "invalid_cursor");

    let log = whole_log(&api).await;
    assert_eq!(
        log.len(),
        2,
        "only `good`'s events are visible (`gone` was hard-deleted): {log:?}"
    );
    let info = get_ok(&api, "/v1/streams/good/metadata").await;
    assert_eq!(info["version"], 1, "nothing was written: {info}");
    assert_eq!(info["metadata"]["max_count"], Value::Null);
}

/// What a writer got acknowledged: (stream, revision, event id).
type Acknowledged = Vec<(String, u64, String)>;

/// Appends one-event batches to its own stream with exact expected
/// versions until a request fails (the node was killed); returns what was
/// acknowledged.
async fn append_until_failure(api: Api, writer: usize) -> Acknowledged {
    let stream = format!("writer-{writer}");
    let mut acknowledged = Vec::new();
    let mut expected = json!("no_stream");
    let mut counter = 0u64;
    loop {
        let id = format!("0190f3a4-0000-7000-8{writer:03x}-{counter:012x}");
        counter += 1;
        let body = json!({
            "expected_version": expected,
            "events": [{ "id": id, "type": "Written", "data": { "n": counter } }],
        });
        let sent = api
            .request(Method::POST, &format!("/v1/streams/{stream}"))
            .json(&body)
            .send()
            .await;
        let Ok(response) = sent else { break };
        if response.status() != 201 {
            break;
        }
        let Ok(answer) = response.json::<Value>().await else {
            break;
        };
        let revision = answer["events"][0]["revision"].as_u64().unwrap();
        acknowledged.push((stream.clone(), revision, id));
        expected = json!(revision);
    }
    acknowledged
}

async fn kill_during_concurrent_appends_keeps_every_acknowledged_one(options: NodeOptions) {
    const WRITERS: usize = 4;
    let mut node = Node::start(options).await;
    let mut writers = Vec::new();
    for writer in 0..WRITERS {
        writers.push(tokio::spawn(append_until_failure(node.anonymous(), writer)));
    }
    let enough = support::eventually(Duration::from_secs(20), || async {
        node.anonymous()
            .get("/v1/all?direction=backward&limit=1")
            .await
            .json()["head_position"]
            .as_u64()
            .is_some_and(|head| head >= 100)
    })
    .await;
    assert!(enough, "the writers made progress");
    node.kill();
    let mut acknowledged = Vec::new();
    for writer in writers {
        acknowledged.extend(writer.await.unwrap());
    }
    node.restart().await;

    let log = whole_log(&node.anonymous()).await;
    let expected_positions: Vec<u64> = (0..log.len() as u64).collect();
    assert_eq!(event_positions(&log), expected_positions, "no gaps in /all");
    let mut ids = HashSet::new();
    let mut stored = BTreeMap::new();
    for event in &log {
        let id = event["id"].as_str().unwrap().to_string();
        assert!(ids.insert(id.clone()), "event {id} is in the log twice");
        stored.insert(
            id,
            (
                event["stream"].as_str().unwrap().to_string(),
                event["revision"].as_u64().unwrap(),
            ),
        );
    }
    assert!(
        acknowledged.len() >= 90,
        "{} appends acknowledged",
        acknowledged.len()
    );
    for (stream, revision, id) in &acknowledged {
        assert_eq!(
            stored.get(id),
            Some(&(stream.clone(), *revision)),
            "acknowledged event {id} ({stream}@{revision}) survived the kill"
        );
    }
    for writer in 0..WRITERS {
        let stream = format!("writer-{writer}");
        let page = get_ok(
            &node.anonymous(),
            &format!("/v1/streams/{stream}?direction=backward&limit=1"),
        )
        .await;
        let version = page["stream_version"].as_u64().unwrap();
        append_ok(
            &node.anonymous(),
            &stream,
            json!(version),
            vec![event("AfterRestart", json!({}))],
        )
        .await;
    }
}

#[tokio::test]
async fn a_node_killed_during_concurrent_appends_keeps_every_acknowledged_one_on_sqlite() {
    kill_during_concurrent_appends_keeps_every_acknowledged_one(NodeOptions::dev()).await;
}

#[tokio::test]
async fn a_node_killed_during_concurrent_appends_keeps_every_acknowledged_one_on_postgres() {
    let test_name =
        "a_node_killed_during_concurrent_appends_keeps_every_acknowledged_one_on_postgres";
    let Some(base_url) = support::postgres_base_url(test_name) else {
        return;
    };
    let url = support::isolated_postgres_url(&base_url, "blackbox_events_kill").await;
    kill_during_concurrent_appends_keeps_every_acknowledged_one(
        NodeOptions::dev().env("PLINTH_STORAGE__URL", &url),
    )
    .await;
}
