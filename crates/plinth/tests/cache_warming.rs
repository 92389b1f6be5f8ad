//! Black-box tests of cache warming and `plinth cache load`, through the
//! real binary on embedded SQLite: start-up warming of a keyspace the
//! configuration file names, warming on demand by prefix and by key, the
//! specs and keyspaces warming refuses, and loading a JSON-lines file with
//! a malformed and a refused line.
//!
//! A restart empties the node's L1 while the store keeps every value, so
//! the first read after it says, through `X-Cache-Tier`, whether warming
//! filled L1.

mod support;

use std::path::PathBuf;
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use support::{Api, Node, NodeOptions, eventually, free_loopback_port, run_plinth};

/// How long a warming of a few dozen keys may take.
const WARMING_TIMEOUT: Duration = Duration::from_secs(10);

/// A configuration file that warms the `user:` keys of keyspace `users`
/// (L1 in front of the store) at start-up.
const STARTUP_WARMING_CONFIG: &str = r#"
[[cache.keyspaces]]
tenant = "default"
name = "users"
warm = { prefix = "user:", max_keys = 1000 }

[cache.keyspaces.config]
store = "store"
"#;

async fn put_text(api: &Api, keyspace: &str, key: &str, value: &str) {
    let reply = api
        .send(
            api.request(Method::PUT, &format!("/v1/cache/{keyspace}/{key}"))
                .header("content-type", "text/plain")
                .body(value.to_string()),
        )
        .await;
    assert_eq!(reply.status, 204, "PUT {keyspace}/{key}: {}", reply.text());
}

/// The tier that answered an eventual read of the key.
async fn tier_of(api: &Api, keyspace: &str, key: &str) -> String {
    let reply = api.get(&format!("/v1/cache/{keyspace}/{key}")).await;
    assert_eq!(reply.status, 200, "GET {keyspace}/{key}: {}", reply.text());
    reply.header("x-cache-tier").expect("x-cache-tier header")
}

async fn warming_status(api: &Api, keyspace: &str) -> Value {
    let reply = api.get(&format!("/v1/keyspaces/{keyspace}/warm")).await;
    assert_eq!(reply.status, 200, "warming status: {}", reply.text());
    reply.json()
}

/// Polls the warming status until it is neither running nor idle.
async fn finished_warming(api: &Api, keyspace: &str) -> Value {
    let finished = eventually(WARMING_TIMEOUT, || async {
        let state = warming_status(api, keyspace).await["state"].clone();
        state == "done" || state == "failed"
    })
    .await;
    let status = warming_status(api, keyspace).await;
    assert!(
        finished,
        "the warming of {keyspace} did not finish: {status}"
    );
    status
}

async fn start_warming(api: &Api, keyspace: &str, spec: &Value) -> Value {
    let reply = api
        .post_json(&format!("/v1/keyspaces/{keyspace}/warm"), spec)
        .await;
    assert_eq!(reply.status, 202, "start warming: {}", reply.text());
    reply.json()
}

async fn restart(node: &mut Node) {
    let status = node.terminate();
    assert!(status.success(), "the node exited with {status}");
    node.restart().await;
}

fn write_config(directory: &tempfile::TempDir, text: &str) -> PathBuf {
    let path = directory.path().join("plinth.toml");
    std::fs::write(&path, text).expect("write plinth.toml");
    path
}

#[tokio::test]
async fn a_keyspace_configured_with_warm_is_warmed_into_l1_after_a_restart() {
    let directory = tempfile::tempdir().expect("create a temporary directory");
    let config_path = write_config(&directory, STARTUP_WARMING_CONFIG);
    let options = NodeOptions::dev()
        .argument("--config")
        .argument(config_path.to_str().expect("a UTF-8 path"));
    let mut node = Node::start_in(directory, options).await;
    let api = node.anonymous();
    for index in 0..20 {
        put_text(&api, "users", &format!("user:{index}"), "profile").await;
    }
    put_text(&api, "users", "session:1", "not warmed").await;

    restart(&mut node).await;
    let api = node.anonymous();
    let status = finished_warming(&api, "users").await;

    assert_eq!(status["state"], "done", "{status}");
    assert_eq!(status["requested"], 20, "{status}");
    assert_eq!(status["loaded"], 20, "{status}");
    assert_eq!(status["missing"], 0, "{status}");
    assert!(status["error"].is_null(), "{status}");
    let started_at = status["started_at_ms"].as_u64().expect("started_at_ms");
    let finished_at = status["finished_at_ms"].as_u64().expect("finished_at_ms");
    assert!(finished_at >= started_at, "{status}");
    assert_eq!(tier_of(&api, "users", "user:7").await, "l1");
    assert_eq!(tier_of(&api, "users", "session:1").await, "sqlite");
}

#[tokio::test]
async fn warming_on_demand_loads_a_prefix_or_named_keys_into_l1() {
    let mut node = Node::start(NodeOptions::dev()).await;
    let api = node.anonymous();
    for index in 0..10 {
        put_text(&api, "catalog", &format!("item:{index}"), "an item").await;
    }
    put_text(&api, "catalog", "misc:1", "a misc").await;
    restart(&mut node).await;
    let api = node.anonymous();
    assert_eq!(warming_status(&api, "catalog").await["state"], "idle");

    let started = start_warming(&api, "catalog", &json!({ "prefix": "item:" })).await;
    assert!(
        started["state"] == "running" || started["state"] == "done",
        "{started}"
    );
    let by_prefix = finished_warming(&api, "catalog").await;
    assert_eq!(
        (
            &by_prefix["state"],
            &by_prefix["loaded"],
            &by_prefix["missing"]
        ),
        (&json!("done"), &json!(10), &json!(0)),
        "{by_prefix}"
    );
    assert!(by_prefix["tiers"].is_array(), "{by_prefix}");
    assert_eq!(tier_of(&api, "catalog", "item:4").await, "l1");
    assert_eq!(tier_of(&api, "catalog", "misc:1").await, "sqlite");

    restart(&mut node).await;
    let api = node.anonymous();
    start_warming(&api, "catalog", &json!({ "keys": ["misc:1", "ghost"] })).await;
    let by_name = finished_warming(&api, "catalog").await;
    assert_eq!(
        (
            &by_name["requested"],
            &by_name["loaded"],
            &by_name["missing"]
        ),
        (&json!(2), &json!(1), &json!(1)),
        "{by_name}"
    );
    assert_eq!(tier_of(&api, "catalog", "misc:1").await, "l1");
    assert_eq!(tier_of(&api, "catalog", "item:4").await, "sqlite");
}

#[tokio::test]
async fn bad_warm_specs_and_keyspaces_with_nothing_to_warm_are_refused() {
    let node = Node::start(NodeOptions::dev()).await;
    let api = node.anonymous();
    put_text(&api, "stored", "a", "value").await;
    for spec in [
        json!({}),
        json!({ "all": false }),
        json!({ "prefix": "a", "all": true }),
        json!({ "prefix": "a", "keys": ["a"] }),
        json!({ "keys": [] }),
        json!({ "keys": ["a", "b"], "max_keys": 1 }),
        json!({ "all": true, "max_keys": 0 }),
        json!({ "all": true, "max_keys": 1_000_001 }),
        json!({ "keys": ["has space"] }),
    ] {
        let reply = api.post_json("/v1/keyspaces/stored/warm", &spec).await;
        reply.expect_problem(400, "invalid_warm_spec");
    }
    let unknown_field = api
        .post_json(
            "/v1/keyspaces/stored/warm",
            &json!({ "prefix": "a", "colour": "red" }),
        )
        .await;
    unknown_field.expect_problem(422, "invalid_body");
    assert_eq!(warming_status(&api, "stored").await["state"], "idle");

    let l1_only = api
        .send(
            api.request(Method::PUT, "/v1/keyspaces/volatile")
                .json(&json!({ "store": "none" })),
        )
        .await;
    assert_eq!(l1_only.status, 200, "{}", l1_only.text());
    api.post_json("/v1/keyspaces/volatile/warm", &json!({ "all": true }))
        .await
        .expect_problem(400, "nothing_to_warm");

    api.post_json("/v1/keyspaces/ghost/warm", &json!({ "all": true }))
        .await
        .expect_problem(404, "keyspace_not_found");
    api.get("/v1/keyspaces/ghost/warm")
        .await
        .expect_problem(404, "keyspace_not_found");
}

#[tokio::test]
async fn warming_needs_the_admin_scope_of_the_keyspace() {
    let node = Node::start(NodeOptions::enforced()).await;
    let admin = node.admin();
    admin.create_tenant("acme").await;
    let writer = admin
        .create_tenant_key("acme", &["cache:write:orders", "cache:read:orders"])
        .await;
    let writer_api = node.anonymous().with_token(&writer.secret);
    put_text(&writer_api, "orders", "o1", "an order").await;

    writer_api
        .post_json("/v1/keyspaces/orders/warm", &json!({ "all": true }))
        .await
        .expect_problem(403, "permission_denied");
    assert_eq!(warming_status(&writer_api, "orders").await["state"], "idle");

    let owner = admin
        .create_tenant_key("acme", &["cache:admin:orders", "cache:read:orders"])
        .await;
    let owner_api = node.anonymous().with_token(&owner.secret);
    start_warming(&owner_api, "orders", &json!({ "all": true })).await;
    assert_eq!(finished_warming(&owner_api, "orders").await["loaded"], 1);
}

#[test]
fn a_node_whose_configuration_asks_for_an_impossible_warming_refuses_to_start() {
    let directory = tempfile::tempdir().expect("create a temporary directory");
    let cases = [
        (
            "both a prefix and all",
            "warm = { prefix = \"a\", all = true }\n[cache.keyspaces.config]\nstore = \"store\"\n",
            "exactly one of prefix, keys or all",
        ),
        (
            "a keyspace without a store",
            "warm = { all = true }\n[cache.keyspaces.config]\nstore = \"none\"\n",
            "nothing to warm",
        ),
    ];
    for (case, keyspace_tail, expected) in cases {
        let config =
            format!("[[cache.keyspaces]]\ntenant = \"default\"\nname = \"users\"\n{keyspace_tail}");
        let config_path = write_config(&directory, &config);
        let listen = format!("127.0.0.1:{}", free_loopback_port());
        let data_dir = directory.path().join("data");
        let output = run_plinth(
            directory.path(),
            &[
                "serve",
                "--config",
                config_path.to_str().expect("a UTF-8 path"),
                "--listen",
                &listen,
                "--data-dir",
                data_dir.to_str().expect("a UTF-8 path"),
            ],
            &[],
        );
        assert!(!output.status.success(), "{case}: {}", output.all_output());
        assert!(
            output.stderr.contains("cache.keyspaces `users`: warm: ")
                && output.stderr.contains(expected),
            "{case}: {}",
            output.all_output()
        );
    }
}

/// A JSON-lines file: good lines (text, and bytes with a content type, a
/// TTL and tags), a malformed line (3), a blank line (5), and a line the
/// node refuses (6: a key with a space).
const LOAD_FILE: &str = concat!(
    r#"{"key": "greeting", "value": "hello"}"#,
    "\n",
    r#"{"key": "blob", "value_base64": "AAEC/w==", "content_type": "application/x-test", "ttl": "1h", "tags": ["binary"]}"#,
    "\n",
    r#"{"key": "broken", "value": "#,
    "\n",
    r#"{"key": "second", "value": "two"}"#,
    "\n",
    "\n",
    r#"{"key": "has space", "value": "refused"}"#,
    "\n",
    r#"{"key": "last", "value": "bye"}"#,
    "\n",
);

#[tokio::test]
async fn cache_load_writes_the_good_lines_and_names_the_bad_ones() {
    let node = Node::start(NodeOptions::dev()).await;
    let file = node.directory().join("load.jsonl");
    std::fs::write(&file, LOAD_FILE).expect("write the file");
    let base_url = node.base_url();
    let output = run_plinth(
        node.directory(),
        &[
            "cache",
            "load",
            file.to_str().expect("a UTF-8 path"),
            "--keyspace",
            "loaded",
            "--url",
            &base_url,
            "--batch",
            "2",
        ],
        &[],
    );

    assert_eq!(output.status.code(), Some(1), "{}", output.all_output());
    let all_output = output.all_output();
    assert!(all_output.contains("line 3: rejected: "), "{all_output}");
    assert!(
        all_output.contains("line 6: rejected: 400 invalid_key"),
        "{all_output}"
    );
    assert!(!all_output.contains("line 5:"), "{all_output}");
    assert!(
        all_output.contains("7 lines read, 4 written to keyspace `loaded`, 2 rejected"),
        "{all_output}"
    );

    let api = node.anonymous();
    for (key, value) in [("greeting", "hello"), ("second", "two"), ("last", "bye")] {
        let reply = api.get(&format!("/v1/cache/loaded/{key}")).await;
        assert_eq!(reply.status, 200, "{key}: {}", reply.text());
        assert_eq!(reply.text(), value, "{key}");
    }
    let blob = api.get("/v1/cache/loaded/blob").await;
    assert_eq!(blob.status, 200, "{}", blob.text());
    assert_eq!(blob.body, vec![0, 1, 2, 255]);
    assert_eq!(
        blob.header("content-type").as_deref(),
        Some("application/x-test")
    );
    let remaining_ttl: u64 = blob
        .header("x-cache-ttl-ms")
        .expect("a TTL header")
        .parse()
        .expect("a number");
    assert!(
        remaining_ttl > 3_500_000 && remaining_ttl <= 3_600_000,
        "{remaining_ttl}"
    );
    let invalidated = api
        .post_json(
            "/v1/keyspaces/loaded/invalidate",
            &json!({ "tag": "binary" }),
        )
        .await;
    assert_eq!(invalidated.json()["removed"], 1, "{}", invalidated.text());
}

#[tokio::test]
async fn cache_load_takes_its_api_key_from_plinth_api_key() {
    let node = Node::start(NodeOptions::enforced()).await;
    let admin = node.admin();
    admin.create_tenant("acme").await;
    let loader = admin
        .create_tenant_key("acme", &["cache:write:imported", "cache:read:imported"])
        .await;
    let file = node.directory().join("import.jsonl");
    std::fs::write(&file, "{\"key\": \"k1\", \"value\": \"v1\"}\n").expect("write the file");
    let base_url = node.base_url();
    let arguments = [
        "cache",
        "load",
        file.to_str().expect("a UTF-8 path"),
        "--keyspace",
        "imported",
        "--url",
        &base_url,
    ];

    let anonymous = run_plinth(node.directory(), &arguments, &[]);
    assert_eq!(
        anonymous.status.code(),
        Some(1),
        "{}",
        anonymous.all_output()
    );
    assert!(
        anonymous.stderr.contains("401 unauthenticated"),
        "{}",
        anonymous.all_output()
    );

    let authenticated = run_plinth(
        node.directory(),
        &arguments,
        &[("PLINTH_API_KEY", &loader.secret)],
    );
    assert!(
        authenticated.status.success(),
        "{}",
        authenticated.all_output()
    );
    let reply = node
        .anonymous()
        .with_token(&loader.secret)
        .get("/v1/cache/imported/k1")
        .await;
    assert_eq!(reply.text(), "v1");
}
