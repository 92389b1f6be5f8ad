//! Black-box tests of `Idempotency-Key` on mutating requests: replays,
//! reuse with another body, secrets kept out of replays, invalid keys.

mod support;

use reqwest::Method;
use serde_json::{Value, json};

use support::{Api, Node, NodeOptions};

async fn post_with_key(api: &Api, path: &str, key: &str, body: &Value) -> support::Reply {
    api.send(
        api.request(Method::POST, path)
            .header("idempotency-key", key)
            .json(body),
    )
    .await
}

async fn tenant_ids(admin: &Api) -> Vec<String> {
    let reply = admin.get("/v1/admin/tenants?limit=500").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply.json()["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|tenant| tenant["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn a_repeated_request_is_replayed_and_runs_once() {
    let node = Node::start(NodeOptions::enforced()).await;
    let admin = node.admin();
    let body = json!({ "id": "gamma", "display_name": "Gamma" });

    let first = post_with_key(&admin, "/v1/admin/tenants", "k1", &body).await;
    assert_eq!(first.status, 201, "{}", first.text());
    assert_eq!(first.header("idempotency-replayed"), None);

    let second = post_with_key(&admin, "/v1/admin/tenants", "k1", &body).await;
    assert_eq!(second.status, 201, "{}", second.text());
    assert_eq!(
        second.header("idempotency-replayed").as_deref(),
        Some("true")
    );
    assert_eq!(second.json(), first.json());
    assert!(
        second
            .header("content-type")
            .is_some_and(|content_type| content_type.starts_with("application/json"))
    );

    let created: Vec<String> = tenant_ids(&admin)
        .await
        .into_iter()
        .filter(|id| id == "gamma")
        .collect();
    assert_eq!(created.len(), 1);
    let audit = admin
        .get("/v1/admin/audit?action=tenant.create")
        .await
        .json();
    assert_eq!(audit["items"].as_array().unwrap().len(), 1, "{audit}");

    // Without the key, the same request is a conflict: it really ran once.
    admin
        .post_json("/v1/admin/tenants", &body)
        .await
        .expect_problem(409, "tenant_exists");
}

#[tokio::test]
async fn the_same_key_with_another_body_is_refused() {
    let node = Node::start(NodeOptions::enforced()).await;
    let admin = node.admin();
    let first = post_with_key(&admin, "/v1/admin/tenants", "k2", &json!({ "id": "delta" })).await;
    assert_eq!(first.status, 201);

    let reused = post_with_key(
        &admin,
        "/v1/admin/tenants",
        "k2",
        &json!({ "id": "epsilon" }),
    )
    .await;
    let problem = reused.expect_problem(422, "idempotency_key_reused");
    assert!(
        problem["detail"].as_str().unwrap().contains("new key"),
        "{problem}"
    );
    assert!(!tenant_ids(&admin).await.contains(&"epsilon".to_string()));
}

#[tokio::test]
async fn a_replayed_key_creation_keeps_the_id_and_omits_the_secret() {
    let node = Node::start(NodeOptions::enforced()).await;
    let admin = node.admin();
    admin.create_tenant("alpha").await;
    let body = json!({ "name": "ci", "scopes": ["keys:read"] });

    let first = post_with_key(
        &admin,
        "/v1/admin/tenants/alpha/keys",
        "key-create-1",
        &body,
    )
    .await;
    assert_eq!(first.status, 201, "{}", first.text());
    let created = first.json();
    let secret = created["secret"].as_str().expect("secret on creation");

    let replay = post_with_key(
        &admin,
        "/v1/admin/tenants/alpha/keys",
        "key-create-1",
        &body,
    )
    .await;
    assert_eq!(replay.status, 201, "{}", replay.text());
    assert_eq!(
        replay.header("idempotency-replayed").as_deref(),
        Some("true")
    );
    let replayed = replay.json();
    assert_eq!(replayed["id"], created["id"]);
    assert_eq!(replayed["tenant"], "alpha");
    assert!(replayed["secret"].is_null(), "{replayed}");
    assert!(!replay.text().contains(secret));

    let keys = admin.get("/v1/admin/tenants/alpha/keys").await.json();
    assert_eq!(keys["items"].as_array().unwrap().len(), 1, "{keys}");
    // The original secret still works: the replay did not mint another key.
    let who = node.anonymous().with_token(secret).get("/v1/whoami").await;
    assert_eq!(who.status, 200);
}

#[tokio::test]
async fn invalid_idempotency_keys_are_refused_and_change_nothing() {
    let node = Node::start(NodeOptions::enforced()).await;
    let admin = node.admin();
    let too_long = "k".repeat(300);
    let reply = post_with_key(
        &admin,
        "/v1/admin/tenants",
        &too_long,
        &json!({ "id": "zeta" }),
    )
    .await;
    let problem = reply.expect_problem(400, "invalid_idempotency_key");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("Idempotency-Key"),
        "{problem}"
    );
    assert!(!tenant_ids(&admin).await.contains(&"zeta".to_string()));
}

#[tokio::test]
async fn a_key_is_replayed_for_a_failed_request_too() {
    let node = Node::start(NodeOptions::enforced()).await;
    let admin = node.admin();
    admin.create_tenant("eta").await;
    let first = post_with_key(
        &admin,
        "/v1/admin/tenants",
        "k-dup",
        &json!({ "id": "eta" }),
    )
    .await;
    first.expect_problem(409, "tenant_exists");
    let second = post_with_key(
        &admin,
        "/v1/admin/tenants",
        "k-dup",
        &json!({ "id": "eta" }),
    )
    .await;
    assert_eq!(second.status, 409);
    assert_eq!(
        second.header("idempotency-replayed").as_deref(),
        Some("true")
    );
    assert_eq!(
        second.header("content-type").as_deref(),
        Some("application/problem+json")
    );
}

#[tokio::test]
async fn concurrent_requests_with_one_key_run_once() {
    const ATTEMPTS: usize = 6;
    let node = Node::start(NodeOptions::enforced()).await;
    let admin = node.admin();
    let mut attempts = tokio::task::JoinSet::new();
    for _ in 0..ATTEMPTS {
        let admin = admin.clone();
        attempts.spawn(async move {
            post_with_key(
                &admin,
                "/v1/admin/tenants",
                "concurrent-1",
                &json!({ "id": "theta" }),
            )
            .await
        });
    }
    let replies = attempts.join_all().await;
    let originals = replies
        .iter()
        .filter(|reply| reply.status == 201 && reply.header("idempotency-replayed").is_none())
        .count();
    assert_eq!(originals, 1, "{replies:?}");
    for reply in &replies {
        let replayed = reply.status == 201;
        let in_progress = reply.status == 409 && reply.json()["code"] == "idempotency_in_progress";
        assert!(
            replayed || in_progress,
            "{}: {}",
            reply.status,
            reply.text()
        );
    }
    let theta_count = tenant_ids(&admin)
        .await
        .iter()
        .filter(|id| *id == "theta")
        .count();
    assert_eq!(theta_count, 1);
}

#[tokio::test]
async fn a_stored_response_survives_a_restart() {
    let mut node = Node::start(NodeOptions::enforced()).await;
    let body = json!({ "id": "iota" });
    let first = post_with_key(&node.admin(), "/v1/admin/tenants", "durable-1", &body).await;
    assert_eq!(first.status, 201);
    let status = node.terminate();
    assert!(status.success(), "{status}");
    node.restart().await;
    let replay = post_with_key(&node.admin(), "/v1/admin/tenants", "durable-1", &body).await;
    assert_eq!(replay.status, 201, "{}", replay.text());
    assert_eq!(
        replay.header("idempotency-replayed").as_deref(),
        Some("true")
    );
    assert_eq!(replay.json(), first.json());
}

/// A replay must not hand a caller the result of something its own
/// credential may not do: the scope check comes before the replay.
#[tokio::test]
async fn a_replay_does_not_bypass_the_scope_check() {
    let node = Node::start(NodeOptions::enforced()).await;
    let admin = node.admin();
    admin.create_tenant("alpha").await;
    let writer = admin
        .create_tenant_key("alpha", &["keys:read", "keys:write"])
        .await;
    let reader = admin.create_tenant_key("alpha", &["keys:read"]).await;
    let body = json!({ "name": "made by the writer", "scopes": ["keys:read"] });

    let writer_api = node.anonymous().with_token(&writer.secret);
    let original = post_with_key(&writer_api, "/v1/keys", "writer-key-1", &body).await;
    assert_eq!(original.status, 201, "{}", original.text());

    // Admin routes: the bootstrap key acts as tenant `default`, so a
    // plain key of that tenant shares its idempotency key space.
    let default_reader = admin.create_tenant_key("default", &["keys:read"]).await;
    let admin_body = json!({ "name": "made by an admin", "scopes": ["admin"] });
    let admin_original = post_with_key(
        &admin,
        "/v1/admin/tenants/alpha/keys",
        "admin-key-1",
        &admin_body,
    )
    .await;
    assert_eq!(admin_original.status, 201, "{}", admin_original.text());
    let default_reader_api = node.anonymous().with_token(&default_reader.secret);
    let admin_replay = post_with_key(
        &default_reader_api,
        "/v1/admin/tenants/alpha/keys",
        "admin-key-1",
        &admin_body,
    )
    .await;
    admin_replay.expect_problem(403, "permission_denied");

    // Tenant routes: a read-only key replays a writer's key creation.
    let reader_api = node.anonymous().with_token(&reader.secret);
    let replay = post_with_key(&reader_api, "/v1/keys", "writer-key-1", &body).await;
    replay.expect_problem(403, "permission_denied");
}
