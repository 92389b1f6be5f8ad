//! Black-box tests of authentication, scopes, the audit log and tenant
//! isolation: dev mode, API keys (forged, wrong secret, expired, revoked),
//! JWTs (HS256 and RS256), and a tenant that tries to see, read, revoke or
//! probe another tenant's keys.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::Method;
use serde_json::{Value, json};

use support::{Api, Node, NodeOptions, Reply, eventually, free_loopback_port};

const JWT_SECRET: &str = "black-box-hs256-shared-secret-0123456789abcdef";
const JWT_ISSUER: &str = "https://issuer.example";
const JWT_AUDIENCE: &str = "plinth-tests";
/// `{"alg":"none","typ":"JWT"}`, base64url without padding.
const ALG_NONE_HEADER: &str = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0";

fn assert_unauthenticated(reply: &Reply, detail_fragment: &str) {
    let problem = reply.expect_problem(401, "unauthenticated");
    assert_eq!(
        reply.header("www-authenticate").as_deref(),
        Some("Bearer"),
        "{problem}"
    );
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        detail.contains(detail_fragment),
        "detail `{detail}` should mention `{detail_fragment}`"
    );
}

/// A well-shaped API key that the server never issued.
fn forged_key() -> String {
    "plk_0123456789abcdef_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".to_string()
}

/// A key with the right id but another secret.
fn with_wrong_secret(secret: &str) -> String {
    let (prefix_and_id, _) = secret.rsplit_once('_').expect("plk_<id>_<secret>");
    format!("{prefix_and_id}_WrongSecretWrongSecretWrongSecretWrongSecret0")
}

#[tokio::test]
async fn dev_mode_acts_as_the_default_tenant_without_credentials() {
    let node = Node::start(NodeOptions::dev()).await;
    let reply = node.anonymous().get("/v1/whoami").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let who = reply.json();
    assert_eq!(who["tenant"], "default");
    assert_eq!(who["actor"], "dev");
    assert_eq!(who["scopes"], json!(["admin"]));
    assert!(
        node.logs().contains("AUTH DEV MODE"),
        "dev mode must say so loudly in the log:\n{}",
        node.logs()
    );
}

#[test]
fn dev_mode_refuses_to_listen_beyond_loopback() {
    let directory = tempfile::tempdir().unwrap();
    let listen = format!("0.0.0.0:{}", free_loopback_port());
    let data_dir = directory.path().join("data");
    let output = support::run_plinth(
        directory.path(),
        &[
            "serve",
            "--listen",
            &listen,
            "--data-dir",
            data_dir.to_str().unwrap(),
        ],
        &[],
    );
    assert!(!output.status.success(), "{}", output.all_output());
    assert!(
        output.stderr.contains("dev"),
        "the refusal should say dev mode is the reason: {}",
        output.all_output()
    );
}

#[tokio::test]
async fn enforced_mode_refuses_missing_and_malformed_credentials() {
    let node = Node::start(NodeOptions::enforced()).await;
    let api = node.anonymous();

    assert_unauthenticated(&api.get("/v1/whoami").await, "Authorization");
    for header in ["Basic dXNlcjpwYXNz", "Bearer ", "Bearer", "Token abc"] {
        let reply = api
            .send(
                api.request(Method::GET, "/v1/whoami")
                    .header("authorization", header),
            )
            .await;
        assert_unauthenticated(&reply, "Bearer");
    }
    // Not an API key, and no JWT keys are configured.
    assert_unauthenticated(
        &api.with_token("just-some-opaque-token")
            .get("/v1/whoami")
            .await,
        "not valid",
    );
    // The bootstrap key works.
    let who = node.admin().get("/v1/whoami").await.json();
    assert_eq!(who["actor"], "bootstrap");
    assert_eq!(who["scopes"], json!(["admin"]));
}

#[tokio::test]
async fn forged_and_wrong_secret_keys_get_the_same_answer() {
    let node = Node::start(NodeOptions::enforced()).await;
    let admin = node.admin();
    admin.create_tenant("alpha").await;
    let key = admin.create_tenant_key("alpha", &["keys:read"]).await;

    let forged = node
        .anonymous()
        .with_token(&forged_key())
        .get("/v1/whoami")
        .await;
    assert_unauthenticated(&forged, "not valid");
    let wrong_secret = node
        .anonymous()
        .with_token(&with_wrong_secret(&key.secret))
        .get("/v1/whoami")
        .await;
    assert_unauthenticated(&wrong_secret, "not valid");
    assert_eq!(
        forged.json()["detail"],
        wrong_secret.json()["detail"],
        "a caller must not learn which key ids exist"
    );

    let who = node
        .anonymous()
        .with_token(&key.secret)
        .get("/v1/whoami")
        .await;
    assert_eq!(who.status, 200, "{}", who.text());
    assert_eq!(who.json()["actor"], format!("key:{}", key.id));
    assert_eq!(who.json()["tenant"], "alpha");
}

#[tokio::test]
async fn expired_keys_are_refused() {
    let node = Node::start(NodeOptions::enforced()).await;
    let admin = node.admin();
    admin.create_tenant("alpha").await;
    let reply = admin
        .post_json(
            "/v1/admin/tenants/alpha/keys",
            &json!({ "name": "short-lived", "scopes": ["keys:read"], "ttl": "1s" }),
        )
        .await;
    assert_eq!(reply.status, 201, "{}", reply.text());
    let created = reply.json();
    assert!(created["expires_at"].is_string(), "{created}");
    let secret = created["secret"].as_str().unwrap().to_string();
    let api = node.anonymous().with_token(&secret);

    let expired = eventually(Duration::from_secs(4), || {
        let api = api.clone();
        async move { api.get("/v1/whoami").await.status == 401 }
    })
    .await;
    assert!(expired, "a key with ttl 1s still works after 4s");
    assert_unauthenticated(&api.get("/v1/whoami").await, "expired");
}

#[tokio::test]
async fn revocation_takes_effect_at_once() {
    let node = Node::start(NodeOptions::enforced()).await;
    let admin = node.admin();
    admin.create_tenant("alpha").await;
    let key = admin
        .create_tenant_key("alpha", &["keys:read", "keys:write"])
        .await;
    let api = node.anonymous().with_token(&key.secret);
    // Warm the node's key cache before revoking.
    assert_eq!(api.get("/v1/whoami").await.status, 200);

    let revoked = admin
        .delete(&format!("/v1/admin/tenants/alpha/keys/{}", key.id))
        .await;
    assert_eq!(revoked.status, 200, "{}", revoked.text());
    assert!(revoked.json()["revoked_at"].is_string());
    assert_unauthenticated(&api.get("/v1/whoami").await, "revoked");
}

#[tokio::test]
async fn a_tenant_revoking_its_own_key_locks_it_out_at_once() {
    let node = Node::start(NodeOptions::enforced()).await;
    let admin = node.admin();
    admin.create_tenant("alpha").await;
    let manager = admin
        .create_tenant_key("alpha", &["keys:read", "keys:write"])
        .await;
    let manager_api = node.anonymous().with_token(&manager.secret);
    let worker = manager_api.create_own_key(&["keys:read"]).await;
    let worker_api = node.anonymous().with_token(&worker.secret);
    assert_eq!(worker_api.get("/v1/keys").await.status, 200);

    let reply = manager_api.delete(&format!("/v1/keys/{}", worker.id)).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_unauthenticated(&worker_api.get("/v1/keys").await, "revoked");
}

#[tokio::test]
async fn scopes_are_enforced() {
    let node = Node::start(NodeOptions::enforced()).await;
    let admin = node.admin();
    admin.create_tenant("alpha").await;
    let reader = admin.create_tenant_key("alpha", &["keys:read"]).await;
    let reader_api = node.anonymous().with_token(&reader.secret);

    assert_eq!(reader_api.get("/v1/keys").await.status, 200);
    let refused = reader_api
        .post_json(
            "/v1/keys",
            &json!({ "name": "more", "scopes": ["keys:read"] }),
        )
        .await;
    let problem = refused.expect_problem(403, "permission_denied");
    assert!(
        problem["detail"].as_str().unwrap().contains("keys:write"),
        "{problem}"
    );

    // A credential cannot mint a key stronger than itself.
    let writer = admin
        .create_tenant_key("alpha", &["keys:read", "keys:write"])
        .await;
    let writer_api = node.anonymous().with_token(&writer.secret);
    for scopes in [json!(["admin"]), json!(["cache:read"]), json!(["*:*"])] {
        let escalation = writer_api
            .post_json("/v1/keys", &json!({ "name": "escalate", "scopes": scopes }))
            .await;
        escalation.expect_problem(403, "permission_denied");
    }

    // Non-admin keys cannot reach any admin route.
    let everything_but_admin = admin.create_tenant_key("alpha", &["*:*"]).await;
    for api in [
        reader_api.clone(),
        writer_api.clone(),
        node.anonymous().with_token(&everything_but_admin.secret),
    ] {
        for (method, path) in [
            (Method::GET, "/v1/admin/tenants"),
            (Method::GET, "/v1/admin/tenants/alpha"),
            (Method::GET, "/v1/admin/tenants/alpha/keys"),
            (Method::GET, "/v1/admin/audit"),
            (Method::DELETE, "/v1/admin/tenants/alpha"),
        ] {
            let reply = api.send(api.request(method.clone(), path)).await;
            reply.expect_problem(403, "permission_denied");
        }
        let create = api
            .post_json("/v1/admin/tenants", &json!({ "id": "sneaky" }))
            .await;
        create.expect_problem(403, "permission_denied");
    }
    let tenants = admin.get("/v1/admin/tenants").await.json();
    assert!(
        !tenants["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|tenant| tenant["id"] == "sneaky")
    );
    assert_eq!(admin.get("/v1/admin/tenants/alpha").await.status, 200);
}

#[tokio::test]
async fn a_key_secret_is_shown_once() {
    let node = Node::start(NodeOptions::enforced()).await;
    let admin = node.admin();
    admin.create_tenant("alpha").await;
    let manager = admin
        .create_tenant_key("alpha", &["keys:read", "keys:write"])
        .await;
    assert!(manager.secret.starts_with(&format!("plk_{}_", manager.id)));
    let api = node.anonymous().with_token(&manager.secret);

    let one = api.get(&format!("/v1/keys/{}", manager.id)).await;
    assert_eq!(one.status, 200, "{}", one.text());
    let view = one.json();
    assert_eq!(view["id"], manager.id.as_str());
    assert_eq!(view["tenant"], "alpha");
    assert!(view.get("secret").is_none(), "{view}");

    for reply in [
        one,
        api.get("/v1/keys").await,
        admin.get("/v1/admin/tenants/alpha/keys").await,
    ] {
        assert_eq!(reply.status, 200);
        assert!(
            !reply.text().contains(&manager.secret),
            "a key secret was shown again: {}",
            reply.text()
        );
    }
}

/// Audit entries with `action`, newest first.
async fn audit_entries(admin: &Api, action: &str) -> Vec<Value> {
    let reply = admin
        .get(&format!("/v1/admin/audit?action={action}&limit=500"))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply.json()["items"].as_array().unwrap().clone()
}

#[tokio::test]
async fn admin_actions_and_auth_failures_are_audited_and_survive_a_restart() {
    let mut node = Node::start(NodeOptions::enforced()).await;
    let admin = node.admin();

    let tenant_reply = admin
        .send(
            admin
                .request(Method::POST, "/v1/admin/tenants")
                .header("x-request-id", "audit-tenant-create")
                .json(&json!({ "id": "alpha" })),
        )
        .await;
    assert_eq!(tenant_reply.status, 201);
    let key = admin.create_tenant_key("alpha", &["keys:read"]).await;
    let revoke = admin
        .delete(&format!("/v1/admin/tenants/alpha/keys/{}", key.id))
        .await;
    assert_eq!(revoke.status, 200);
    let failure = node
        .anonymous()
        .with_token(&forged_key())
        .send(
            node.anonymous()
                .with_token(&forged_key())
                .request(Method::GET, "/v1/whoami")
                .header("x-request-id", "audit-auth-failure"),
        )
        .await;
    assert_eq!(failure.status, 401);

    let tenant_create = audit_entries(&admin, "tenant.create").await;
    assert_eq!(tenant_create.len(), 1, "{tenant_create:?}");
    let entry = &tenant_create[0];
    assert_eq!(entry["actor"], "bootstrap", "{entry}");
    assert_eq!(entry["target"], "alpha", "{entry}");
    assert_eq!(entry["outcome"], "success", "{entry}");
    assert_eq!(entry["source_address"], "127.0.0.1", "{entry}");
    assert_eq!(entry["request_id"], "audit-tenant-create", "{entry}");
    assert!(entry["at"].is_string(), "{entry}");

    let key_create = audit_entries(&admin, "key.create").await;
    assert_eq!(key_create.len(), 1, "{key_create:?}");
    assert_eq!(key_create[0]["target"], format!("alpha/{}", key.id));
    assert_eq!(key_create[0]["actor"], "bootstrap");
    assert!(key_create[0]["request_id"].is_string());

    let key_revoke = audit_entries(&admin, "key.revoke").await;
    assert_eq!(key_revoke.len(), 1, "{key_revoke:?}");
    assert_eq!(key_revoke[0]["target"], format!("alpha/{}", key.id));
    assert_eq!(
        key_revoke[0]["request_id"],
        revoke.header("x-request-id").unwrap().as_str()
    );

    let failure_recorded = eventually(Duration::from_secs(3), || {
        let admin = admin.clone();
        async move {
            audit_entries(&admin, "auth.failure")
                .await
                .iter()
                .any(|entry| entry["request_id"] == "audit-auth-failure")
        }
    })
    .await;
    assert!(
        failure_recorded,
        "the auth failure was not audited within 3s"
    );
    let failures = audit_entries(&admin, "auth.failure").await;
    let failure_entry = failures
        .iter()
        .find(|entry| entry["request_id"] == "audit-auth-failure")
        .unwrap();
    assert_eq!(failure_entry["outcome"], "denied", "{failure_entry}");
    assert_eq!(failure_entry["actor"], "anonymous", "{failure_entry}");
    assert_eq!(
        failure_entry["source_address"], "127.0.0.1",
        "{failure_entry}"
    );
    assert_eq!(failure_entry["target"], "/v1/whoami", "{failure_entry}");
    let failure_text = failure_entry.to_string();
    assert!(!failure_text.contains(&forged_key()), "{failure_text}");

    let denied_only = admin.get("/v1/admin/audit?outcome=denied").await.json();
    assert!(
        denied_only["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|entry| entry["outcome"] == "denied")
    );

    let exit = node.terminate();
    assert!(exit.success(), "{exit}");
    node.restart().await;
    let admin = node.admin();
    assert_eq!(audit_entries(&admin, "tenant.create").await.len(), 1);
    assert_eq!(audit_entries(&admin, "key.revoke").await.len(), 1);
    assert!(
        audit_entries(&admin, "auth.failure")
            .await
            .iter()
            .any(|entry| entry["request_id"] == "audit-auth-failure")
    );
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims(tenant: &str, subject: &str) -> Value {
    json!({
        "tenant": tenant,
        "scope": "keys:read keys:write",
        "sub": subject,
        "exp": unix_now() + 300,
        "iss": JWT_ISSUER,
        "aud": JWT_AUDIENCE,
    })
}

fn hs256_token(claims: &Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("sign an HS256 token")
}

fn jwt_options() -> NodeOptions {
    NodeOptions::enforced()
        .env("PLINTH_AUTH__JWT__ISSUER", JWT_ISSUER)
        .env("PLINTH_AUTH__JWT__AUDIENCE", JWT_AUDIENCE)
}

#[tokio::test]
async fn hs256_tokens_are_verified() {
    let node = Node::start(jwt_options().env("PLINTH_AUTH__JWT__HS256_SECRET", JWT_SECRET)).await;
    let api = node.anonymous();

    let valid = hs256_token(&claims("alpha", "alice"), JWT_SECRET);
    let reply = api.with_token(&valid).get("/v1/whoami").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let who = reply.json();
    assert_eq!(who["tenant"], "alpha");
    assert_eq!(who["actor"], "jwt:alice");
    assert_eq!(who["scopes"], json!(["keys:read", "keys:write"]));

    let mut expired_claims = claims("alpha", "alice");
    expired_claims["exp"] = json!(unix_now() - 3600);
    let mut wrong_issuer = claims("alpha", "alice");
    wrong_issuer["iss"] = json!("https://other-issuer.example");
    let mut wrong_audience = claims("alpha", "alice");
    wrong_audience["aud"] = json!("someone-else");
    let mut no_tenant = claims("alpha", "alice");
    no_tenant.as_object_mut().unwrap().remove("tenant");
    let mut no_expiry = claims("alpha", "alice");
    no_expiry.as_object_mut().unwrap().remove("exp");
    let mut not_yet_valid = claims("alpha", "alice");
    not_yet_valid["nbf"] = json!(unix_now() + 3600);
    let unsigned = {
        let payload = valid.split('.').nth(1).unwrap();
        format!("{ALG_NONE_HEADER}.{payload}.")
    };
    let cases = [
        (hs256_token(&expired_claims, JWT_SECRET), "expired"),
        (hs256_token(&wrong_issuer, JWT_SECRET), "issuer"),
        (hs256_token(&wrong_audience, JWT_SECRET), "audience"),
        (
            hs256_token(
                &claims("alpha", "alice"),
                "another-secret-entirely-0123456789",
            ),
            "signature",
        ),
        (hs256_token(&no_tenant, JWT_SECRET), "tenant"),
        (hs256_token(&no_expiry, JWT_SECRET), "exp"),
        (hs256_token(&not_yet_valid, JWT_SECRET), "nbf"),
        (unsigned, ""),
    ];
    for (token, detail_fragment) in cases {
        let reply = api.with_token(&token).get("/v1/whoami").await;
        assert_unauthenticated(&reply, detail_fragment);
    }
}

/// A token whose signature is fine but whose scope claim is garbage is a
/// bad credential (401), not a bad request.
#[tokio::test]
async fn a_jwt_with_malformed_scopes_is_unauthenticated() {
    let node = Node::start(jwt_options().env("PLINTH_AUTH__JWT__HS256_SECRET", JWT_SECRET)).await;
    let api = node.anonymous();
    for scope in [json!("Not A Scope"), json!(["keys:read", 7]), json!(42)] {
        let mut bad_scopes = claims("alpha", "mallory");
        bad_scopes["scope"] = scope.clone();
        let token = hs256_token(&bad_scopes, JWT_SECRET);
        let reply = api.with_token(&token).get("/v1/whoami").await;
        assert_unauthenticated(&reply, "scope");
    }
}

/// Runs `openssl ARGS...` in `directory`; `false` when openssl is missing
/// or fails.
fn openssl(directory: &Path, arguments: &[&str]) -> bool {
    Command::new("openssl")
        .current_dir(directory)
        .args(arguments)
        .output()
        .is_ok_and(|output| output.status.success())
}

/// Writes `<name>.private.pem` and `<name>.public.pem`; `false` without openssl.
fn generate_rsa_key_pair(directory: &Path, name: &str) -> bool {
    let private = format!("{name}.private.pem");
    let public = format!("{name}.public.pem");
    openssl(directory, &["genrsa", "-out", &private, "2048"])
        && openssl(
            directory,
            &["rsa", "-in", &private, "-pubout", "-out", &public],
        )
}

fn rs256_token(claims: &Value, private_key_path: &Path) -> String {
    let pem = std::fs::read(private_key_path).expect("read the private key");
    let key = EncodingKey::from_rsa_pem(&pem).expect("parse the private key");
    jsonwebtoken::encode(&Header::new(Algorithm::RS256), claims, &key).expect("sign RS256")
}

#[tokio::test]
async fn rs256_tokens_are_verified_with_the_configured_public_key() {
    let keys = tempfile::tempdir().unwrap();
    if !generate_rsa_key_pair(keys.path(), "trusted")
        || !generate_rsa_key_pair(keys.path(), "untrusted")
    {
        eprintln!(
            "skipping rs256_tokens_are_verified_with_the_configured_public_key: openssl is not usable"
        );
        return;
    }
    let public_key_files = format!(
        r#"["{}"]"#,
        keys.path().join("trusted.public.pem").display()
    );
    let node = Node::start(jwt_options().env(
        "PLINTH_AUTH__JWT__RS256_PUBLIC_KEY_FILES",
        &public_key_files,
    ))
    .await;
    let api = node.anonymous();

    let valid = rs256_token(
        &claims("beta", "robot"),
        &keys.path().join("trusted.private.pem"),
    );
    let reply = api.with_token(&valid).get("/v1/whoami").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["tenant"], "beta");
    assert_eq!(reply.json()["actor"], "jwt:robot");

    let forged = rs256_token(
        &claims("beta", "robot"),
        &keys.path().join("untrusted.private.pem"),
    );
    assert_unauthenticated(
        &api.with_token(&forged).get("/v1/whoami").await,
        "signature",
    );

    // No HS256 secret is configured: an HS256 token is refused.
    let hs256 = hs256_token(&claims("beta", "robot"), JWT_SECRET);
    assert_unauthenticated(&api.with_token(&hs256).get("/v1/whoami").await, "HS256");
}

/// Two tenants, each with a key that manages its own keys.
struct TwoTenants {
    alpha: Api,
    beta: Api,
    alpha_key_id: String,
}

async fn two_tenants(node: &Node) -> TwoTenants {
    let admin = node.admin();
    admin.create_tenant("alpha").await;
    admin.create_tenant("beta").await;
    let alpha = admin
        .create_tenant_key("alpha", &["keys:read", "keys:write"])
        .await;
    let beta = admin
        .create_tenant_key("beta", &["keys:read", "keys:write"])
        .await;
    TwoTenants {
        alpha: node.anonymous().with_token(&alpha.secret),
        beta: node.anonymous().with_token(&beta.secret),
        alpha_key_id: alpha.id,
    }
}

/// A problem document without the parts that differ per request.
fn problem_shape(reply: &Reply) -> (u16, Value, Value, Value, Value) {
    let problem = reply.json();
    (
        reply.status,
        problem["code"].clone(),
        problem["type"].clone(),
        problem["title"].clone(),
        problem["status"].clone(),
    )
}

#[tokio::test]
async fn a_tenant_cannot_see_read_revoke_or_probe_another_tenants_keys() {
    let node = Node::start(NodeOptions::enforced()).await;
    let tenants = two_tenants(&node).await;
    let alpha_worker = tenants.alpha.create_own_key(&["keys:read"]).await;

    // Listing shows only the caller's own tenant.
    let beta_list = tenants.beta.get("/v1/keys").await.json();
    let beta_items = beta_list["items"].as_array().unwrap();
    assert_eq!(beta_items.len(), 1, "{beta_list}");
    assert!(beta_items.iter().all(|key| key["tenant"] == "beta"));
    assert!(!beta_list.to_string().contains(&alpha_worker.id));
    let alpha_list = tenants.alpha.get("/v1/keys").await.json();
    assert_eq!(
        alpha_list["items"].as_array().unwrap().len(),
        2,
        "{alpha_list}"
    );

    // Reading by id: another tenant's key looks exactly like a missing one.
    let other_tenants = tenants
        .beta
        .get(&format!("/v1/keys/{}", alpha_worker.id))
        .await;
    let missing = tenants.beta.get("/v1/keys/0123456789abcdef").await;
    other_tenants.expect_problem(404, "key_not_found");
    missing.expect_problem(404, "key_not_found");
    assert_eq!(problem_shape(&other_tenants), problem_shape(&missing));
    assert_eq!(
        other_tenants.detail().replace(&alpha_worker.id, "ID"),
        missing.detail().replace("0123456789abcdef", "ID")
    );

    // Revoking: the same, and the key keeps working.
    let revoke_other = tenants
        .beta
        .delete(&format!("/v1/keys/{}", alpha_worker.id))
        .await;
    let revoke_missing = tenants.beta.delete("/v1/keys/0123456789abcdef").await;
    revoke_other.expect_problem(404, "key_not_found");
    revoke_missing.expect_problem(404, "key_not_found");
    assert_eq!(problem_shape(&revoke_other), problem_shape(&revoke_missing));
    assert_eq!(
        revoke_other.detail().replace(&alpha_worker.id, "ID"),
        revoke_missing.detail().replace("0123456789abcdef", "ID")
    );
    let still_working = node
        .anonymous()
        .with_token(&alpha_worker.secret)
        .get("/v1/keys")
        .await;
    assert_eq!(still_working.status, 200, "{}", still_working.text());
    let alpha_view = tenants
        .alpha
        .get(&format!("/v1/keys/{}", alpha_worker.id))
        .await
        .json();
    assert!(alpha_view["revoked_at"].is_null(), "{alpha_view}");

    // Admin routes are out of reach.
    for path in [
        "/v1/admin/tenants",
        "/v1/admin/tenants/alpha/keys",
        "/v1/admin/audit",
    ] {
        tenants
            .beta
            .get(path)
            .await
            .expect_problem(403, "permission_denied");
    }
    tenants
        .beta
        .delete(&format!(
            "/v1/admin/tenants/alpha/keys/{}",
            tenants.alpha_key_id
        ))
        .await
        .expect_problem(403, "permission_denied");
    assert_eq!(tenants.alpha.get("/v1/whoami").await.status, 200);
}

#[tokio::test]
async fn the_same_idempotency_key_in_two_tenants_gives_two_results() {
    let node = Node::start(NodeOptions::enforced()).await;
    let tenants = two_tenants(&node).await;
    let body = json!({ "name": "same request", "scopes": ["keys:read"] });
    let post = |api: &Api| {
        api.request(Method::POST, "/v1/keys")
            .header("idempotency-key", "shared-key-1")
            .json(&body)
    };
    let from_alpha = tenants.alpha.send(post(&tenants.alpha)).await;
    let from_beta = tenants.beta.send(post(&tenants.beta)).await;
    assert_eq!(from_alpha.status, 201, "{}", from_alpha.text());
    assert_eq!(from_beta.status, 201, "{}", from_beta.text());
    assert_eq!(from_beta.header("idempotency-replayed"), None);
    let alpha_key = from_alpha.json();
    let beta_key = from_beta.json();
    assert_eq!(alpha_key["tenant"], "alpha");
    assert_eq!(beta_key["tenant"], "beta");
    assert_ne!(alpha_key["id"], beta_key["id"]);
    assert!(beta_key["secret"].is_string());

    // Each tenant's replay is its own.
    let replay_beta = tenants.beta.send(post(&tenants.beta)).await;
    assert_eq!(
        replay_beta.header("idempotency-replayed").as_deref(),
        Some("true")
    );
    assert_eq!(replay_beta.json()["id"], beta_key["id"]);
}

#[tokio::test]
async fn deleting_a_tenant_locks_out_its_keys() {
    let node = Node::start(NodeOptions::enforced()).await;
    let tenants = two_tenants(&node).await;
    assert_eq!(tenants.beta.get("/v1/keys").await.status, 200);
    let deleted = node.admin().delete("/v1/admin/tenants/beta").await;
    assert_eq!(deleted.status, 204, "{}", deleted.text());
    assert_unauthenticated(&tenants.beta.get("/v1/keys").await, "");
    node.admin()
        .get("/v1/admin/tenants/beta")
        .await
        .expect_problem(404, "tenant_not_found");
    assert_eq!(tenants.alpha.get("/v1/keys").await.status, 200);

    // A new tenant with the same id does not bring the old keys back.
    node.admin().create_tenant("beta").await;
    assert_unauthenticated(&tenants.beta.get("/v1/keys").await, "");
}

#[test]
fn bootstrap_key_must_be_long_enough() {
    let directory = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", free_loopback_port());
    let data_dir = directory.path().join("data");
    let output = support::run_plinth(
        directory.path(),
        &[
            "serve",
            "--listen",
            &listen,
            "--data-dir",
            data_dir.to_str().unwrap(),
        ],
        &[
            ("PLINTH_AUTH__MODE", "enforced"),
            ("PLINTH_AUTH__BOOTSTRAP_ADMIN_KEY", "too-short"),
        ],
    );
    assert!(!output.status.success(), "{}", output.all_output());
    assert!(
        output.stderr.contains("24 characters"),
        "{}",
        output.all_output()
    );
    assert!(
        !output.stderr.contains("too-short"),
        "{}",
        output.all_output()
    );
}
