//! Black-box tests of the cache over HTTP, through the real `plinth` binary:
//! values with their content type, ETag, tier and remaining TTL; TTL
//! expiry; conditional writes and reads; consistency modes and session
//! tokens; counters; keyspace configuration applied without a restart;
//! flush; invalidation; key listing; stats; bulk operations; bad input
//! (each a clear 4xx problem document that changes nothing, checked by
//! reading back); scopes and tenant isolation with enforced auth.
//!
//! Dev-mode nodes run on embedded SQLite without Redis, so the default
//! keyspace tiers are L1 + the SQLite store.

mod support;

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use support::{Api, Node, NodeOptions, Reply};

/// A value with every byte from 0 to 255, zeros included.
fn binary_value() -> Vec<u8> {
    (0..=255u8).chain([0, 0, 255, 0]).collect()
}

async fn put_value(api: &Api, path: &str, body: &[u8], headers: &[(&str, &str)]) -> Reply {
    let mut request = api.request(Method::PUT, path).body(body.to_vec());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    api.send(request).await
}

async fn get_with(api: &Api, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut request = api.request(Method::GET, path);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    api.send(request).await
}

async fn delete_with(api: &Api, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut request = api.request(Method::DELETE, path);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    api.send(request).await
}

async fn put_json(api: &Api, path: &str, body: &Value) -> Reply {
    api.send(api.request(Method::PUT, path).json(body)).await
}

/// Stores `value` and returns the new ETag; panics unless 204.
async fn store_text(api: &Api, keyspace: &str, key: &str, value: &str) -> String {
    let reply = put_value(
        api,
        &format!("/v1/cache/{keyspace}/{key}"),
        value.as_bytes(),
        &[("content-type", "text/plain")],
    )
    .await;
    assert_eq!(reply.status, 204, "PUT {keyspace}/{key}: {}", reply.text());
    reply.header("etag").expect("an ETag")
}

/// The value of a key as text, or `None` on 404; panics on anything else.
async fn read_text(api: &Api, keyspace: &str, key: &str) -> Option<String> {
    let reply = api.get(&format!("/v1/cache/{keyspace}/{key}")).await;
    match reply.status {
        200 => Some(reply.text()),
        404 => {
            reply.expect_problem(404, "key_not_found");
            None
        }
        other => panic!("GET {keyspace}/{key}: {other} {}", reply.text()),
    }
}

/// Every key of a keyspace, following cursors (bounded).
async fn list_keys(api: &Api, keyspace: &str, limit: usize) -> Vec<String> {
    let mut keys = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..100 {
        let mut path = format!("/v1/keyspaces/{keyspace}/keys?limit={limit}");
        if let Some(cursor) = &cursor {
            path.push_str(&format!("&cursor={cursor}"));
        }
        let reply = api.get(&path).await;
        assert_eq!(reply.status, 200, "list {keyspace}: {}", reply.text());
        let page = reply.json();
        let page_keys = page["keys"].as_array().expect("keys");
        assert!(page_keys.len() <= limit, "a page over its limit: {page}");
        keys.extend(
            page_keys
                .iter()
                .map(|key| key.as_str().expect("a key").to_string()),
        );
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => return keys,
        }
    }
    panic!("listing {keyspace} did not end within 100 pages");
}

async fn invalidate(api: &Api, keyspace: &str, selector: &Value) -> u64 {
    let reply = api
        .post_json(&format!("/v1/keyspaces/{keyspace}/invalidate"), selector)
        .await;
    assert_eq!(reply.status, 200, "invalidate {selector}: {}", reply.text());
    reply.json()["removed"].as_u64().expect("removed")
}

async fn keyspace_view(api: &Api, keyspace: &str) -> Value {
    let reply = api.get(&format!("/v1/keyspaces/{keyspace}")).await;
    assert_eq!(
        reply.status,
        200,
        "GET keyspace {keyspace}: {}",
        reply.text()
    );
    reply.json()
}

fn ttl_header_ms(reply: &Reply) -> u64 {
    reply
        .header("x-cache-ttl-ms")
        .expect("an X-Cache-TTL-Ms header")
        .parse()
        .expect("a number of milliseconds")
}

#[tokio::test]
async fn values_round_trip_with_content_type_etag_tier_and_ttl() {
    let node = Node::start(NodeOptions::dev()).await;
    let api = node.anonymous();
    let path = "/v1/cache/files/blob:1";
    let value = binary_value();
    let written = put_value(
        &api,
        path,
        &value,
        &[("content-type", "application/x-plinth-test")],
    )
    .await;
    assert_eq!(written.status, 204, "{}", written.text());
    assert!(written.body.is_empty());
    let etag = written.header("etag").expect("an ETag");
    assert!(
        etag.starts_with('"') && etag.ends_with('"'),
        "a strong ETag: {etag}"
    );
    assert!(written.header("x-cache-session").is_some());

    let read = api.get(path).await;
    assert_eq!(read.status, 200, "{}", read.text());
    assert_eq!(read.body, value, "the bytes come back as written");
    assert_eq!(
        read.header("content-type").as_deref(),
        Some("application/x-plinth-test")
    );
    assert_eq!(read.header("etag").as_deref(), Some(etag.as_str()));
    assert_eq!(read.header("x-cache-tier").as_deref(), Some("l1"));
    assert_eq!(
        read.header("x-cache-ttl-ms"),
        None,
        "no TTL header for a value that never expires"
    );
    let strong = api.get(&format!("{path}?consistency=strong")).await;
    assert_eq!(strong.status, 200, "{}", strong.text());
    assert_eq!(strong.header("x-cache-tier").as_deref(), Some("sqlite"));
    assert_eq!(strong.body, value);

    let without_type = put_value(&api, "/v1/cache/files/untyped", b"raw", &[]).await;
    assert_eq!(without_type.status, 204, "{}", without_type.text());
    let untyped = api.get("/v1/cache/files/untyped").await;
    assert_eq!(
        untyped.header("content-type").as_deref(),
        Some("application/octet-stream")
    );

    let deleted = api.delete(path).await;
    assert_eq!(deleted.status, 204, "{}", deleted.text());
    api.get(path).await.expect_problem(404, "key_not_found");
    api.delete(path).await.expect_problem(404, "key_not_found");

    // `?ttl=`: the remaining TTL is reported, shrinks, and the key goes.
    let short_lived = "/v1/cache/files/short-lived?ttl=1s";
    let reply = put_value(&api, short_lived, b"soon gone", &[]).await;
    assert_eq!(reply.status, 204, "{}", reply.text());
    let first = api.get("/v1/cache/files/short-lived").await;
    assert_eq!(first.status, 200, "{}", first.text());
    let first_ttl = ttl_header_ms(&first);
    assert!(first_ttl > 0 && first_ttl <= 1000, "{first_ttl} ms");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let second = api
        .get("/v1/cache/files/short-lived?consistency=strong")
        .await;
    let second_ttl = ttl_header_ms(&second);
    assert!(second_ttl < first_ttl, "{first_ttl} then {second_ttl} ms");
    tokio::time::sleep(Duration::from_millis(second_ttl + 50)).await;
    api.get("/v1/cache/files/short-lived")
        .await
        .expect_problem(404, "key_not_found");
    api.get("/v1/cache/files/short-lived?consistency=strong")
        .await
        .expect_problem(404, "key_not_found");
}

#[tokio::test]
async fn conditional_requests_answer_412_or_304_and_keep_the_value() {
    let node = Node::start(NodeOptions::dev()).await;
    let api = node.anonymous();
    let path = "/v1/cache/accounts/acct:7";
    let created = put_value(&api, path, b"v1", &[("if-none-match", "*")]).await;
    assert_eq!(created.status, 204, "{}", created.text());
    let first_etag = created.header("etag").expect("an ETag");
    put_value(&api, path, b"again", &[("if-none-match", "*")])
        .await
        .expect_problem(412, "precondition_failed");

    let updated = put_value(&api, path, b"v2", &[("if-match", &first_etag)]).await;
    assert_eq!(updated.status, 204, "{}", updated.text());
    let second_etag = updated.header("etag").expect("an ETag");
    assert_ne!(second_etag, first_etag);
    put_value(&api, path, b"stale", &[("if-match", &first_etag)])
        .await
        .expect_problem(412, "precondition_failed");
    delete_with(&api, path, &[("if-match", &first_etag)])
        .await
        .expect_problem(412, "precondition_failed");
    put_value(
        &api,
        "/v1/cache/accounts/never",
        b"x",
        &[("if-match", &second_etag)],
    )
    .await
    .expect_problem(412, "precondition_failed");
    assert_eq!(
        read_text(&api, "accounts", "acct:7").await.as_deref(),
        Some("v2")
    );
    assert_eq!(read_text(&api, "accounts", "never").await, None);

    let unchanged = get_with(&api, path, &[("if-none-match", &second_etag)]).await;
    assert_eq!(unchanged.status, 304, "{}", unchanged.text());
    assert!(unchanged.body.is_empty());
    assert_eq!(
        unchanged.header("etag").as_deref(),
        Some(second_etag.as_str())
    );
    let changed = get_with(&api, path, &[("if-none-match", &first_etag)]).await;
    assert_eq!(changed.status, 200, "an old ETag gets the value");
    assert_eq!(changed.text(), "v2");

    let deleted = delete_with(&api, path, &[("if-match", &second_etag)]).await;
    assert_eq!(deleted.status, 204, "{}", deleted.text());
    assert_eq!(read_text(&api, "accounts", "acct:7").await, None);
}

#[tokio::test]
async fn get_if_none_match_follows_http_list_and_wildcard_forms() {
    let node = Node::start(NodeOptions::dev()).await;
    let api = node.anonymous();
    let path = "/v1/cache/pages/home";
    let etag = store_text(&api, "pages", "home", "<html>").await;
    let mut not_honoured = Vec::new();
    for held in [format!("\"0\", {etag}"), "*".to_string()] {
        let reply = get_with(&api, path, &[("if-none-match", &held)]).await;
        if reply.status != 304 {
            not_honoured.push(format!("`{held}` got {}", reply.status));
        }
    }
    assert!(
        not_honoured.is_empty(),
        "If-None-Match forms that name the current ETag {etag} must get 304 (RFC 9110 13.1.2): {}",
        not_honoured.join(", ")
    );
}

#[tokio::test]
async fn session_tokens_consistency_modes_and_counters() {
    let node = Node::start(NodeOptions::dev()).await;
    let api = node.anonymous();
    let path = "/v1/cache/sessions/cart:1";
    let written = put_value(&api, path, b"3 items", &[]).await;
    let token = written.header("x-cache-session").expect("a session token");
    let session_read = get_with(
        &api,
        &format!("{path}?consistency=session"),
        &[("x-cache-session", &token)],
    )
    .await;
    assert_eq!(session_read.status, 200, "{}", session_read.text());
    assert_eq!(session_read.text(), "3 items");
    assert_eq!(
        session_read.header("etag"),
        written.header("etag"),
        "the session read returns the session's own write"
    );
    let eventual = api.get(&format!("{path}?consistency=eventual")).await;
    assert_eq!(eventual.header("x-cache-tier").as_deref(), Some("l1"));
    let strong = api.get(&format!("{path}?consistency=strong")).await;
    assert_eq!(strong.header("x-cache-tier").as_deref(), Some("sqlite"));
    get_with(
        &api,
        &format!("{path}?consistency=session"),
        &[("x-cache-session", "not-a-token")],
    )
    .await
    .expect_problem(400, "invalid_session");

    let counter = "/v1/cache/sessions/visits/increment";
    let first = api.post_json(counter, &json!({})).await;
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(first.json()["value"], 1);
    assert!(first.header("etag").is_some());
    assert!(first.header("x-cache-session").is_some());
    let second = api.post_json(counter, &json!({ "by": 41 })).await;
    assert_eq!(second.json()["value"], 42);
    let third = api.post_json(counter, &json!({ "by": -2 })).await;
    assert_eq!(third.json()["value"], 40);
    assert_eq!(
        read_text(&api, "sessions", "visits").await.as_deref(),
        Some("40")
    );
    api.post_json("/v1/cache/sessions/cart:1/increment", &json!({}))
        .await
        .expect_problem(409, "not_a_counter");
    assert_eq!(
        read_text(&api, "sessions", "cart:1").await.as_deref(),
        Some("3 items")
    );

    // A deletion is a write too: its token lets a session read it back.
    let deleted = api.delete(path).await;
    assert_eq!(deleted.status, 204, "{}", deleted.text());
    assert!(
        deleted.header("x-cache-session").is_some(),
        "DELETE should answer with an X-Cache-Session token, as PUT and increment do"
    );
}

#[tokio::test]
async fn keyspace_configuration_flush_invalidation_listing_and_stats() {
    let node = Node::start(NodeOptions::dev()).await;
    let api = node.anonymous();

    // L1 off, applied at once: the next read comes from SQLite.
    let configured = put_json(
        &api,
        "/v1/keyspaces/catalog",
        &json!({ "l1": null, "store": "store" }),
    )
    .await;
    assert_eq!(configured.status, 200, "{}", configured.text());
    assert_eq!(configured.json()["config"]["l1"], Value::Null);
    store_text(&api, "catalog", "sku:1", "lamp").await;
    let read = api.get("/v1/cache/catalog/sku:1").await;
    assert_eq!(read.header("x-cache-tier").as_deref(), Some("sqlite"));
    let l1_back = put_json(&api, "/v1/keyspaces/catalog", &json!({ "store": "store" })).await;
    assert_eq!(l1_back.status, 200, "{}", l1_back.text());
    let filled = api.get("/v1/cache/catalog/sku:1").await;
    assert_eq!(filled.header("x-cache-tier").as_deref(), Some("sqlite"));
    let from_l1 = api.get("/v1/cache/catalog/sku:1").await;
    assert_eq!(from_l1.header("x-cache-tier").as_deref(), Some("l1"));

    // Listing with cursor pagination.
    for index in 2..=7 {
        store_text(&api, "catalog", &format!("sku:{index}"), "item").await;
    }
    store_text(&api, "catalog", "other", "x").await;
    let expected: Vec<String> = (1..=7).map(|index| format!("sku:{index}")).collect();
    let first_page = api
        .get("/v1/keyspaces/catalog/keys?prefix=sku:&limit=3")
        .await;
    assert_eq!(first_page.status, 200, "{}", first_page.text());
    assert_eq!(first_page.json()["keys"], json!(expected[..3]));
    assert!(first_page.json()["next_cursor"].is_string());
    let mut listed = Vec::new();
    for page_size in [1, 3, 500] {
        listed = list_keys(&api, "catalog", page_size).await;
        assert_eq!(listed.len(), 8, "page size {page_size}: {listed:?}");
    }
    assert_eq!(listed[0], "other", "byte order: {listed:?}");
    assert_eq!(listed[1..], expected[..], "byte order: {listed:?}");

    // Stats count lookups per tier.
    let stats = api.get("/v1/keyspaces/catalog/stats").await;
    assert_eq!(stats.status, 200, "{}", stats.text());
    let stats = stats.json();
    assert_eq!(stats["keyspace"], "catalog");
    let tiers = stats["tiers"].as_array().expect("tiers");
    let l1_stats = tiers
        .iter()
        .find(|tier| tier["tier"] == "l1")
        .expect("l1 stats");
    assert!(l1_stats["hits"].as_u64() >= Some(1), "{stats}");
    let sqlite_stats = tiers
        .iter()
        .find(|tier| tier["tier"] == "sqlite")
        .expect("sqlite stats");
    assert!(sqlite_stats["hits"].as_u64() >= Some(2), "{stats}");
    assert!(stats["l1"]["entries"].as_u64() >= Some(1), "{stats}");

    // Invalidation by pattern, prefix and tag returns how many went.
    for (key, tags) in [
        ("user:1:a", "red"),
        ("user:1:b", ""),
        ("user:2:a", "red,blue"),
    ] {
        let reply = put_value(
            &api,
            &format!("/v1/cache/catalog/{key}"),
            b"v",
            &[("x-cache-tags", tags)],
        )
        .await;
        assert_eq!(reply.status, 204, "{}", reply.text());
        assert!(read_text(&api, "catalog", key).await.is_some());
    }
    assert_eq!(
        invalidate(&api, "catalog", &json!({ "pattern": "user:1:*" })).await,
        2
    );
    assert_eq!(read_text(&api, "catalog", "user:1:a").await, None);
    assert_eq!(read_text(&api, "catalog", "user:1:b").await, None);
    assert_eq!(
        invalidate(&api, "catalog", &json!({ "tag": "blue" })).await,
        1
    );
    assert_eq!(read_text(&api, "catalog", "user:2:a").await, None);
    assert_eq!(
        invalidate(&api, "catalog", &json!({ "prefix": "sku:" })).await,
        7
    );
    assert_eq!(
        list_keys(&api, "catalog", 50).await,
        vec!["other".to_string()]
    );

    // Flush: a version bump, every key gone at once, new writes visible.
    let before = keyspace_view(&api, "catalog").await;
    let flushed = api
        .post_json("/v1/keyspaces/catalog/flush", &json!({}))
        .await;
    assert_eq!(flushed.status, 200, "{}", flushed.text());
    let flushed = flushed.json();
    assert_eq!(flushed["version"], before["version"].as_u64().unwrap() + 1);
    assert!(flushed["version_changed_at_ms"].as_u64() >= before["version_changed_at_ms"].as_u64());
    assert_eq!(
        keyspace_view(&api, "catalog").await["version"],
        flushed["version"]
    );
    assert_eq!(read_text(&api, "catalog", "other").await, None);
    assert!(list_keys(&api, "catalog", 50).await.is_empty());
    store_text(&api, "catalog", "fresh", "after the flush").await;
    assert_eq!(
        read_text(&api, "catalog", "fresh").await.as_deref(),
        Some("after the flush")
    );
}

#[tokio::test]
async fn bulk_get_put_and_delete() {
    let node = Node::start(NodeOptions::dev()).await;
    let api = node.anonymous();
    let put = api
        .post_json(
            "/v1/keyspaces/bulk/bulk-put",
            &json!({ "items": [
                { "key": "a", "value": "alpha", "content_type": "text/plain" },
                { "key": "b", "value_base64": "AAEC/w==", "tags": ["t"] },
                { "key": "c", "value": "gamma", "ttl": "1m" },
            ]}),
        )
        .await;
    assert_eq!(put.status, 200, "{}", put.text());
    let results = put.json();
    assert_eq!(results.as_array().map(Vec::len), Some(3), "{results}");
    assert_eq!(results[0]["key"], "a");

    let got = api
        .post_json(
            "/v1/keyspaces/bulk/bulk-get",
            &json!({ "keys": ["a", "b", "c", "missing"] }),
        )
        .await;
    assert_eq!(got.status, 200, "{}", got.text());
    let items = got.json();
    assert_eq!(items[0]["found"], true);
    assert_eq!(items[0]["value"], "alpha");
    assert_eq!(items[0]["content_type"], "text/plain");
    assert_eq!(items[0]["etag"], results[0]["etag"]);
    assert_eq!(items[1]["value_base64"], "AAEC/w==");
    assert_eq!(items[1]["value"], Value::Null);
    assert_eq!(items[2]["value"], "gamma");
    assert_eq!(items[3]["found"], false);
    let raw = api.get("/v1/cache/bulk/b").await;
    assert_eq!(raw.body, vec![0, 1, 2, 255]);
    let with_ttl = api.get("/v1/cache/bulk/c").await;
    assert!(ttl_header_ms(&with_ttl) <= 60_000);

    let deleted = api
        .post_json(
            "/v1/keyspaces/bulk/bulk-delete",
            &json!({ "keys": ["a", "b", "missing"] }),
        )
        .await;
    assert_eq!(deleted.status, 200, "{}", deleted.text());
    assert_eq!(deleted.json()["deleted"], 2);
    assert_eq!(list_keys(&api, "bulk", 50).await, vec!["c".to_string()]);
}

/// Sends each bad request and checks its problem document.
async fn expect_problems(cases: Vec<(&str, Reply, u16, &str)>) {
    for (description, reply, status, code) in cases {
        assert_eq!(
            reply.status,
            status,
            "{description}: expected {status} {code}, got {}",
            reply.text()
        );
        reply.expect_problem(status, code);
    }
}

#[tokio::test]
async fn bad_input_gets_a_clear_4xx_and_changes_nothing() {
    let node = Node::start(NodeOptions::dev()).await;
    let api = node.anonymous();
    let config_before = put_json(
        &api,
        "/v1/keyspaces/strict",
        &json!({ "max_value_bytes": 16, "default_ttl": null }),
    )
    .await;
    assert_eq!(config_before.status, 200, "{}", config_before.text());
    let config_before = keyspace_view(&api, "strict").await;
    let etag = store_text(&api, "strict", "kept", "original").await;
    let long_name = "k".repeat(201);
    let long_key = "k".repeat(513);

    let mut cases = vec![
        (
            "a keyspace name with a space",
            put_value(&api, "/v1/cache/bad%20name/k", b"v", &[]).await,
            400,
            "invalid_name",
        ),
        (
            "a keyspace name of 201 characters",
            put_value(&api, &format!("/v1/cache/{long_name}/k"), b"v", &[]).await,
            400,
            "invalid_name",
        ),
        (
            "configuring a keyspace with an invalid name",
            put_json(&api, "/v1/keyspaces/bad%20name", &json!({})).await,
            400,
            "invalid_name",
        ),
        (
            "a key over 512 bytes",
            put_value(&api, &format!("/v1/cache/strict/{long_key}"), b"v", &[]).await,
            400,
            "invalid_key",
        ),
        (
            "a key with an encoded slash",
            put_value(&api, "/v1/cache/strict/a%2Fb", b"v", &[]).await,
            400,
            "invalid_key",
        ),
        (
            "a value over max_value_bytes",
            put_value(&api, "/v1/cache/strict/big", &[b'x'; 17], &[]).await,
            413,
            "value_too_large",
        ),
        (
            "overwriting with a value over max_value_bytes",
            put_value(&api, "/v1/cache/strict/kept", &[b'x'; 17], &[]).await,
            413,
            "value_too_large",
        ),
        (
            "a ttl that is not a duration",
            put_value(&api, "/v1/cache/strict/k?ttl=soon", b"v", &[]).await,
            400,
            "invalid_ttl",
        ),
        (
            "a zero ttl",
            put_value(&api, "/v1/cache/strict/k?ttl=0s", b"v", &[]).await,
            400,
            "invalid_ttl",
        ),
        (
            "an unknown consistency",
            api.get("/v1/cache/strict/kept?consistency=bogus").await,
            400,
            "invalid_consistency",
        ),
        (
            "an ETag this server never wrote",
            put_value(&api, "/v1/cache/strict/kept", b"v", &[("if-match", "nope")]).await,
            400,
            "invalid_etag",
        ),
        (
            "If-Match and If-None-Match together",
            put_value(
                &api,
                "/v1/cache/strict/kept",
                b"v",
                &[("if-match", &etag), ("if-none-match", "*")],
            )
            .await,
            400,
            "invalid_precondition",
        ),
        (
            "a delete with a bad ETag",
            delete_with(&api, "/v1/cache/strict/kept", &[("if-match", "nope")]).await,
            400,
            "invalid_etag",
        ),
        (
            "an unknown field in a keyspace configuration",
            put_json(
                &api,
                "/v1/keyspaces/strict",
                &json!({ "l1": null, "store": "store", "colour": "blue" }),
            )
            .await,
            422,
            "invalid_body",
        ),
        (
            "a keyspace without any tier",
            put_json(
                &api,
                "/v1/keyspaces/strict",
                &json!({ "l1": null, "l2": "none", "store": "none" }),
            )
            .await,
            400,
            "invalid_keyspace_config",
        ),
        (
            "Redis on a node without Redis",
            put_json(&api, "/v1/keyspaces/strict", &json!({ "l2": "redis" })).await,
            400,
            "invalid_keyspace_config",
        ),
        (
            "a pattern ending in a backslash",
            api.post_json(
                "/v1/keyspaces/strict/invalidate",
                &json!({ "pattern": "bad\\" }),
            )
            .await,
            400,
            "invalid_pattern",
        ),
        (
            "two selectors at once",
            api.post_json(
                "/v1/keyspaces/strict/invalidate",
                &json!({ "pattern": "k*", "prefix": "k" }),
            )
            .await,
            400,
            "invalid_selector",
        ),
        (
            "no selector",
            api.post_json("/v1/keyspaces/strict/invalidate", &json!({}))
                .await,
            400,
            "invalid_selector",
        ),
        (
            "a bulk get of no keys",
            api.post_json("/v1/keyspaces/strict/bulk-get", &json!({ "keys": [] }))
                .await,
            400,
            "invalid_bulk",
        ),
        (
            "a bulk delete of no keys",
            api.post_json("/v1/keyspaces/strict/bulk-delete", &json!({ "keys": [] }))
                .await,
            400,
            "invalid_bulk",
        ),
        (
            "a key listing with limit 0",
            api.get("/v1/keyspaces/strict/keys?limit=0").await,
            400,
            "invalid_limit",
        ),
    ];
    let too_many_items: Vec<Value> = (0..1001)
        .map(|index| json!({ "key": format!("bulk:{index}"), "value": "v" }))
        .collect();
    let too_many_keys: Vec<String> = (0..1001).map(|index| format!("kept{index}")).collect();
    cases.push((
        "a bulk put of 1001 items",
        api.post_json(
            "/v1/keyspaces/strict/bulk-put",
            &json!({ "items": too_many_items }),
        )
        .await,
        400,
        "invalid_bulk",
    ));
    cases.push((
        "a bulk put of no items",
        api.post_json("/v1/keyspaces/strict/bulk-put", &json!({ "items": [] }))
            .await,
        400,
        "invalid_bulk",
    ));
    cases.push((
        "a bulk delete of 1001 keys",
        api.post_json(
            "/v1/keyspaces/strict/bulk-delete",
            &json!({ "keys": too_many_keys }),
        )
        .await,
        400,
        "invalid_bulk",
    ));
    expect_problems(cases).await;
    let unknown_field = put_json(
        &api,
        "/v1/keyspaces/strict",
        &json!({ "store": "store", "colour": "blue" }),
    )
    .await;
    assert!(
        unknown_field.detail().contains("colour"),
        "the detail names the unknown field: {}",
        unknown_field.text()
    );

    // Nothing changed: the keyspace, its one key and its configuration.
    assert_eq!(
        list_keys(&api, "strict", 50).await,
        vec!["kept".to_string()],
        "no refused write left a key behind"
    );
    let kept = api.get("/v1/cache/strict/kept").await;
    assert_eq!(kept.text(), "original");
    assert_eq!(kept.header("etag").as_deref(), Some(etag.as_str()));
    assert_eq!(keyspace_view(&api, "strict").await, config_before);
    let keyspaces = api.get("/v1/keyspaces").await.json();
    let names: Vec<&str> = keyspaces["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|item| item["name"].as_str().expect("a name"))
        .collect();
    assert_eq!(
        names,
        vec!["strict"],
        "no keyspace was created by bad input"
    );
}

#[tokio::test]
async fn scopes_limit_keyspaces_and_tenants_never_see_each_other() {
    let node = Node::start(NodeOptions::enforced()).await;
    let admin = node.admin();
    admin.create_tenant("acme").await;
    admin.create_tenant("globex").await;
    let acme_writer = admin
        .create_tenant_key("acme", &["cache:write:users-*", "cache:read:users-*"])
        .await;
    let acme_reader = admin
        .create_tenant_key("acme", &["cache:read:users-*"])
        .await;
    let globex_key = admin
        .create_tenant_key("globex", &["cache:read", "cache:write", "cache:admin"])
        .await;
    let writer = node.anonymous().with_token(&acme_writer.secret);
    let reader = node.anonymous().with_token(&acme_reader.secret);
    let globex = node.anonymous().with_token(&globex_key.secret);

    store_text(&writer, "users-1", "profile:1", "alice").await;
    put_value(&writer, "/v1/cache/orders/o-1", b"refused", &[])
        .await
        .expect_problem(403, "permission_denied");
    assert_eq!(
        read_text(&reader, "users-1", "profile:1").await.as_deref(),
        Some("alice")
    );
    put_value(&reader, "/v1/cache/users-1/profile:1", b"mallory", &[])
        .await
        .expect_problem(403, "permission_denied");
    reader
        .delete("/v1/cache/users-1/profile:1")
        .await
        .expect_problem(403, "permission_denied");
    reader
        .get("/v1/cache/orders/o-1")
        .await
        .expect_problem(403, "permission_denied");
    reader
        .post_json("/v1/keyspaces/users-1/flush", &json!({}))
        .await
        .expect_problem(403, "permission_denied");
    assert_eq!(
        list_keys(&reader, "users-1", 50).await,
        vec!["profile:1".to_string()]
    );
    assert_eq!(
        read_text(&reader, "users-1", "profile:1").await.as_deref(),
        Some("alice"),
        "refused writes changed nothing"
    );

    // Another tenant: the same names are its own, empty, and it learns
    // nothing of acme's.
    globex
        .get("/v1/cache/users-1/profile:1")
        .await
        .expect_problem(404, "key_not_found");
    globex
        .get("/v1/keyspaces/users-1")
        .await
        .expect_problem(404, "keyspace_not_found");
    globex
        .get("/v1/keyspaces/users-1/keys")
        .await
        .expect_problem(404, "keyspace_not_found");
    let globex_keyspaces = globex.get("/v1/keyspaces").await;
    assert_eq!(globex_keyspaces.status, 200, "{}", globex_keyspaces.text());
    assert_eq!(globex_keyspaces.json()["items"], json!([]));
    globex
        .post_json("/v1/keyspaces/users-1/invalidate", &json!({ "prefix": "" }))
        .await
        .expect_problem(404, "keyspace_not_found");
    store_text(&globex, "users-1", "profile:2", "bob").await;
    assert_eq!(
        list_keys(&globex, "users-1", 50).await,
        vec!["profile:2".to_string()]
    );
    assert_eq!(
        list_keys(&reader, "users-1", 50).await,
        vec!["profile:1".to_string()]
    );
    assert_eq!(read_text(&reader, "users-1", "profile:2").await, None);
    let flushed = globex
        .post_json("/v1/keyspaces/users-1/flush", &json!({}))
        .await;
    assert_eq!(flushed.status, 200, "{}", flushed.text());
    assert_eq!(
        read_text(&reader, "users-1", "profile:1").await.as_deref(),
        Some("alice"),
        "another tenant's flush leaves acme's keyspace alone"
    );
}

#[tokio::test]
async fn bulk_put_with_one_oversized_item_writes_nothing() {
    let node = Node::start(NodeOptions::dev()).await;
    let api = node.anonymous();
    let configured = put_json(
        &api,
        "/v1/keyspaces/small",
        &json!({ "max_value_bytes": 16 }),
    )
    .await;
    assert_eq!(configured.status, 200, "{}", configured.text());
    // The route says every item is checked before any is written.
    api.post_json(
        "/v1/keyspaces/small/bulk-put",
        &json!({ "items": [
            { "key": "first-of-bulk", "value": "fits" },
            { "key": "second-of-bulk", "value": "x".repeat(17) },
        ]}),
    )
    .await
    .expect_problem(413, "value_too_large");
    assert_eq!(
        read_text(&api, "small", "first-of-bulk").await,
        None,
        "a refused bulk put left its first item behind"
    );
    assert!(list_keys(&api, "small", 50).await.is_empty());
}

/// A keyspace declared in the configuration gets its own `keyspace` label;
/// one a tenant created at run time is counted under `other`.
const DECLARED_KEYSPACE_CONFIG: &str = r#"
[[cache.keyspaces]]
tenant = "default"
name = "profiles"

[cache.keyspaces.config]
store = "store"
"#;

/// The value of the first `/metrics` sample whose line starts with `prefix`
/// (metric name and labels, in the order Plinth writes them).
fn sample_value(metrics_text: &str, prefix: &str) -> Option<f64> {
    metrics_text
        .lines()
        .find(|line| line.starts_with(prefix))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

#[tokio::test]
async fn per_keyspace_stats_and_bounded_prometheus_series_after_cache_traffic() {
    let directory = tempfile::tempdir().expect("create a temporary directory");
    let config_path = directory.path().join("plinth.toml");
    std::fs::write(&config_path, DECLARED_KEYSPACE_CONFIG).expect("write plinth.toml");
    let options = NodeOptions::dev()
        .argument("--config")
        .argument(config_path.to_str().expect("a UTF-8 path"));
    let node = Node::start_in(directory, options).await;
    let api = node.anonymous();
    for keyspace in ["profiles", "tenant-made"] {
        store_text(&api, keyspace, "a", "alpha").await;
        store_text(&api, keyspace, "b", "beta").await;
        for _ in 0..3 {
            assert_eq!(
                api.get(&format!("/v1/cache/{keyspace}/a")).await.status,
                200
            );
        }
        assert_eq!(
            api.get(&format!("/v1/cache/{keyspace}/none")).await.status,
            404
        );
    }

    let stats = api.get("/v1/keyspaces/profiles/stats").await.json();
    let latency = stats["latency"].as_array().expect("latency");
    let l1_get = latency
        .iter()
        .find(|entry| entry["tier"] == "l1" && entry["operation"] == "get")
        .unwrap_or_else(|| panic!("no l1 get latency: {stats}"));
    assert_eq!(l1_get["calls"], 4, "{stats}");
    assert!(
        l1_get["p99_us"].as_f64() >= l1_get["p50_us"].as_f64(),
        "{stats}"
    );
    let sqlite_write = latency
        .iter()
        .find(|entry| entry["tier"] == "sqlite" && entry["operation"] == "write")
        .unwrap_or_else(|| panic!("no sqlite write latency: {stats}"));
    assert_eq!(sqlite_write["calls"], 2, "{stats}");
    // "a" and "b": keys, values and the content type "text/plain".
    let expected_bytes = (1 + 5 + 10) + (1 + 4 + 10);
    assert_eq!(stats["l1"]["entries"], 2, "{stats}");
    assert_eq!(stats["l1"]["bytes"], expected_bytes, "{stats}");
    assert_eq!(stats["l1"]["evictions"], 0, "{stats}");
    assert_eq!(stats["l1"]["refusals"], 0, "{stats}");

    let metrics = node.anonymous().get("/metrics").await.text();
    for (keyspace_label, expected_l1_bytes) in [
        ("default/profiles", expected_bytes),
        ("other", expected_bytes),
    ] {
        let labels = format!("{{keyspace=\"{keyspace_label}\"");
        assert_eq!(
            sample_value(&metrics, &format!("plinth_cache_l1_entries{labels}")),
            Some(2.0),
            "{metrics}"
        );
        assert_eq!(
            sample_value(&metrics, &format!("plinth_cache_l1_bytes{labels}")),
            Some(expected_l1_bytes as f64),
            "{metrics}"
        );
        assert_eq!(
            sample_value(
                &metrics,
                &format!("plinth_cache_lookups_total{labels},tier=\"l1\",result=\"hit\"}}")
            ),
            Some(3.0),
            "{metrics}"
        );
        assert_eq!(
            sample_value(
                &metrics,
                &format!(
                    "plinth_cache_tier_duration_seconds_count{labels},tier=\"l1\",operation=\"get\"}}"
                )
            ),
            Some(4.0),
            "{metrics}"
        );
        assert!(
            metrics.contains(&format!(
                "plinth_cache_tier_duration_seconds_bucket{labels},tier=\"sqlite\",operation=\"write\",le=\"0.000001\"}}"
            )),
            "{metrics}"
        );
    }
    assert!(
        !metrics.contains("tenant-made"),
        "a keyspace created at run time must not become a label value: {metrics}"
    );
    assert!(
        metrics.contains("# TYPE plinth_cache_l1_evictions_total counter"),
        "{metrics}"
    );
}
