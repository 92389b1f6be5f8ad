//! Two real nodes sharing Redis and PostgreSQL keep their L1 copies
//! coherent; one node survives a Redis outage by serving from L1 and the
//! store, reports itself degraded, and recovers by itself.

mod support;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use reqwest::Method;
use serde_json::json;
use support::{Api, Node, NodeOptions, eventually, isolated_postgres_url, postgres_base_url};

const COHERENCE_WAIT: Duration = Duration::from_secs(5);

async fn put_text(api: &Api, path: &str, text: &str) -> u16 {
    let reply = api
        .send(
            api.request(Method::PUT, path)
                .header("content-type", "text/plain")
                .body(text.to_string()),
        )
        .await;
    reply.status
}

async fn read_text(api: &Api, path: &str) -> (u16, String, Option<String>) {
    let reply = api.get(path).await;
    (reply.status, reply.text(), reply.header("x-cache-tier"))
}

async fn coherence_up(api: &Api) -> bool {
    let metrics = api.get("/metrics").await.text();
    metrics
        .lines()
        .any(|line| line.starts_with("plinth_cache_coherence_up") && line.ends_with(" 1"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_evict_each_others_l1_copies() {
    let Some(postgres_base) = postgres_base_url("two_nodes_coherence") else {
        return;
    };
    let Some(redis_url) = plinth_engines::test_support::redis_url("two_nodes_coherence") else {
        return;
    };
    let store_url = isolated_postgres_url(&postgres_base, "two_nodes_coherence").await;
    let options = NodeOptions::dev()
        .env("PLINTH_STORAGE__URL", &store_url)
        .env("PLINTH_REDIS__URL", &redis_url);
    let node_a = Node::start(options.clone()).await;
    let node_b = Node::start(options).await;
    let (api_a, api_b) = (node_a.anonymous(), node_b.anonymous());
    assert!(
        eventually(COHERENCE_WAIT, || coherence_up(&api_a)).await,
        "node A never joined the coherence channel"
    );
    assert!(
        eventually(COHERENCE_WAIT, || coherence_up(&api_b)).await,
        "node B never joined the coherence channel"
    );

    let keyspace = format!("shared{}", rand_suffix());
    let configured = api_a
        .send(
            api_a
                .request(Method::PUT, &format!("/v1/keyspaces/{keyspace}"))
                .json(&json!({"l2": "redis", "store": "store"})),
        )
        .await;
    assert_eq!(configured.status, 200, "{}", configured.text());
    let path = format!("/v1/cache/{keyspace}/greeting");

    assert_eq!(put_text(&api_a, &path, "v1").await, 204);
    let (status, body, _) = read_text(&api_b, &path).await;
    assert_eq!((status, body.as_str()), (200, "v1"));
    let (_, _, tier) = read_text(&api_b, &path).await;
    assert_eq!(
        tier.as_deref(),
        Some("l1"),
        "node B should now answer from its L1"
    );

    assert_eq!(put_text(&api_a, &path, "v2").await, 204);
    let saw_v2 = eventually(COHERENCE_WAIT, || async {
        read_text(&api_b, &path).await.1 == "v2"
    })
    .await;
    assert!(saw_v2, "node B kept serving its stale L1 copy");

    let deleted = api_a.delete(&path).await;
    assert_eq!(deleted.status, 204);
    let saw_delete = eventually(COHERENCE_WAIT, || async {
        read_text(&api_b, &path).await.0 == 404
    })
    .await;
    assert!(saw_delete, "node B kept serving a deleted key");

    assert_eq!(put_text(&api_a, &path, "v3").await, 204);
    assert_eq!(read_text(&api_b, &path).await.1, "v3");
    let flushed = api_a
        .post_json(&format!("/v1/keyspaces/{keyspace}/flush"), &json!({}))
        .await;
    assert_eq!(flushed.status, 200);
    let saw_flush = eventually(COHERENCE_WAIT, || async {
        read_text(&api_b, &path).await.0 == 404
    })
    .await;
    assert!(saw_flush, "node B kept serving a flushed key");
}

/// A Redis server this test owns, so it can stop and restart it.
struct OwnedRedis {
    port: u16,
    directory: tempfile::TempDir,
    process: Option<Child>,
}

impl OwnedRedis {
    fn start() -> OwnedRedis {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let mut redis = OwnedRedis {
            port,
            directory: tempfile::tempdir().unwrap(),
            process: None,
        };
        redis.spawn();
        redis
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &self.port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(self.directory.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be on PATH where the test engines run");
        self.process = Some(child);
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.process.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for OwnedRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn ready_status(api: &Api) -> u16 {
    api.get("/health/ready").await.status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_degrades_service_and_recovers() {
    if plinth_engines::test_support::redis_url("redis_outage_blackbox").is_none() {
        return;
    }
    let mut redis = OwnedRedis::start();
    let node = Node::start(
        NodeOptions::dev()
            .env("PLINTH_REDIS__URL", &redis.url())
            .env("PLINTH_ENGINES__CALL_TIMEOUT", "300ms")
            .env("PLINTH_HEALTH__CACHE_TTL", "100ms"),
    )
    .await;
    let api = node.anonymous();
    assert!(
        eventually(COHERENCE_WAIT, || async { ready_status(&api).await == 200 }).await,
        "node never became ready"
    );
    let configured = api
        .send(
            api.request(Method::PUT, "/v1/keyspaces/outage")
                .json(&json!({"l2": "redis", "store": "store"})),
        )
        .await;
    assert_eq!(configured.status, 200, "{}", configured.text());
    assert_eq!(put_text(&api, "/v1/cache/outage/k", "before").await, 204);
    assert_eq!(read_text(&api, "/v1/cache/outage/k").await.1, "before");

    redis.stop();
    assert!(
        eventually(COHERENCE_WAIT, || async { ready_status(&api).await == 503 }).await,
        "readiness should turn 503 without Redis"
    );
    let health = api.get("/health").await.json();
    let redis_health = health["dependencies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|dependency| dependency["name"] == "redis")
        .unwrap()
        .clone();
    assert_eq!(redis_health["status"], "down");

    let (status, body, _) = read_text(&api, "/v1/cache/outage/k").await;
    assert_eq!(
        (status, body.as_str()),
        (200, "before"),
        "reads must still be served from L1 or the store"
    );
    assert_eq!(
        put_text(&api, "/v1/cache/outage/k", "during").await,
        204,
        "writes must still reach the store"
    );
    let (status, body, tier) = read_text(&api, "/v1/cache/outage/k?consistency=strong").await;
    assert_eq!(
        (status, body.as_str(), tier.as_deref()),
        (200, "during", Some("sqlite"))
    );

    redis.spawn();
    assert!(
        eventually(Duration::from_secs(20), || async {
            ready_status(&api).await == 200
        })
        .await,
        "the node should recover by itself once Redis is back"
    );
    assert!(
        eventually(COHERENCE_WAIT, || coherence_up(&api)).await,
        "the coherence channel should come back"
    );
    assert_eq!(read_text(&api, "/v1/cache/outage/k").await.1, "during");
    assert_eq!(put_text(&api, "/v1/cache/outage/k", "after").await, 204);
    assert_eq!(read_text(&api, "/v1/cache/outage/k").await.1, "after");
}

fn rand_suffix() -> u32 {
    std::process::id()
        ^ (std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos())
}
