//! Black-box tests of the HTTP conventions every route shares: request ids,
//! problem documents, security headers, compression, CORS, the OpenAPI
//! document, trace context in the logs, and secrets kept out of the logs.

mod support;

use std::io::Read;

use reqwest::Method;
use serde_json::{Value, json};

use support::{BOOTSTRAP_KEY, Node, NodeOptions, looks_like_uuid};

/// Every route the server serves, with its methods, as `app.rs` mounts them.
const SERVED_ROUTES: &[(&str, &[&str])] = &[
    ("/health/live", &["get"]),
    ("/health/ready", &["get"]),
    ("/health", &["get"]),
    ("/metrics", &["get"]),
    ("/v1/openapi.json", &["get"]),
    ("/v1/whoami", &["get"]),
    ("/v1/keys", &["get", "post"]),
    ("/v1/keys/{key_id}", &["get", "delete"]),
    ("/v1/admin/tenants", &["get", "post"]),
    ("/v1/admin/tenants/{tenant}", &["get", "delete"]),
    ("/v1/admin/tenants/{tenant}/keys", &["get", "post"]),
    ("/v1/admin/tenants/{tenant}/keys/{key_id}", &["delete"]),
    ("/v1/admin/audit", &["get"]),
];

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

#[tokio::test]
async fn request_id_is_echoed_when_sent_and_generated_otherwise() {
    let node = Node::start(NodeOptions::dev()).await;
    let api = node.anonymous();

    let sent = api
        .send(
            api.request(Method::GET, "/v1/whoami")
                .header("x-request-id", "client-chosen-id-42"),
        )
        .await;
    assert_eq!(sent.status, 200);
    assert_eq!(
        sent.header("x-request-id").as_deref(),
        Some("client-chosen-id-42")
    );

    let generated = api.get("/v1/whoami").await;
    let generated_id = generated.header("x-request-id").expect("x-request-id");
    assert!(looks_like_uuid(&generated_id), "{generated_id}");

    let too_long = "r".repeat(300);
    let replaced = api
        .send(
            api.request(Method::GET, "/v1/whoami")
                .header("x-request-id", &too_long),
        )
        .await;
    let replaced_id = replaced.header("x-request-id").expect("x-request-id");
    assert_ne!(replaced_id, too_long);
    assert!(looks_like_uuid(&replaced_id), "{replaced_id}");
}

#[tokio::test]
async fn unknown_route_is_a_problem_document_with_security_headers() {
    let node = Node::start(NodeOptions::dev()).await;
    let reply = node.anonymous().get("/v1/no-such-thing").await;
    let problem = reply.expect_problem(404, "route_not_found");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("/v1/openapi.json")
    );
    for (header, value) in [
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("referrer-policy", "no-referrer"),
    ] {
        assert_eq!(reply.header(header).as_deref(), Some(value), "{header}");
    }
}

#[tokio::test]
async fn security_headers_are_on_successful_answers_too() {
    let node = Node::start(NodeOptions::dev()).await;
    for path in ["/v1/whoami", "/health/live", "/v1/openapi.json"] {
        let reply = node.anonymous().get(path).await;
        assert_eq!(reply.status, 200, "{path}");
        assert_eq!(
            reply.header("x-content-type-options").as_deref(),
            Some("nosniff"),
            "{path}"
        );
        assert_eq!(
            reply.header("x-frame-options").as_deref(),
            Some("DENY"),
            "{path}"
        );
        assert_eq!(
            reply.header("referrer-policy").as_deref(),
            Some("no-referrer"),
            "{path}"
        );
    }
}

#[tokio::test]
async fn wrong_method_on_a_known_route_is_a_405_problem_document() {
    let node = Node::start(NodeOptions::dev()).await;
    let api = node.anonymous();
    let reply = api.send(api.request(Method::PUT, "/v1/whoami")).await;
    assert_eq!(reply.status, 405, "{}", reply.text());
    assert_eq!(
        reply.header("content-type").as_deref(),
        Some("application/problem+json"),
        "a 405 must be a problem document like every other error; body: {:?}",
        reply.text()
    );
    let problem = reply.json();
    assert_eq!(problem["status"], 405);
    assert!(
        problem["code"]
            .as_str()
            .is_some_and(|code| !code.is_empty())
    );
}

#[tokio::test]
async fn large_responses_are_gzip_compressed_when_the_client_accepts_it() {
    let node = Node::start(NodeOptions::dev()).await;
    let api = node.anonymous();

    let compressed = api
        .send(
            api.request(Method::GET, "/v1/openapi.json")
                .header("accept-encoding", "gzip"),
        )
        .await;
    assert_eq!(compressed.status, 200);
    assert_eq!(
        compressed.header("content-encoding").as_deref(),
        Some("gzip")
    );
    assert_eq!(&compressed.body[..2], &[0x1f, 0x8b], "gzip magic bytes");

    let plain = api.get("/v1/openapi.json").await;
    assert_eq!(plain.header("content-encoding"), None);
    assert!(plain.body.len() > compressed.body.len());
    // Both answers depend on Accept-Encoding, so both say so to caches.
    assert_eq!(
        compressed.header("vary").as_deref(),
        Some("accept-encoding")
    );
    assert_eq!(plain.header("vary").as_deref(), Some("accept-encoding"));
}

#[tokio::test]
async fn compression_switched_off_in_config_sends_plain_bodies() {
    let node = Node::start(NodeOptions::dev().env("PLINTH_SERVER__COMPRESSION", "false")).await;
    let api = node.anonymous();

    let response = api
        .send(
            api.request(Method::GET, "/v1/openapi.json")
                .header("accept-encoding", "gzip"),
        )
        .await;
    assert_eq!(response.status, 200);
    assert_eq!(response.header("content-encoding"), None);
    assert_eq!(response.header("vary"), None);
    let document: Value = serde_json::from_slice(&response.body).expect("a plain JSON body");
    assert!(document["paths"].is_object());
}

#[tokio::test]
async fn cors_preflight_is_answered_for_configured_origins_only() {
    let node = Node::start(NodeOptions::enforced().env(
        "PLINTH_SERVER__CORS__ALLOWED_ORIGINS",
        r#"["https://app.example"]"#,
    ))
    .await;
    let api = node.anonymous();

    // A preflight carries no credentials, even on an authenticated route.
    let preflight = api
        .send(
            api.request(Method::OPTIONS, "/v1/keys")
                .header("origin", "https://app.example")
                .header("access-control-request-method", "POST")
                .header(
                    "access-control-request-headers",
                    "authorization, content-type, idempotency-key",
                ),
        )
        .await;
    assert!(
        preflight.status == 200 || preflight.status == 204,
        "{}",
        preflight.status
    );
    assert_eq!(
        preflight.header("access-control-allow-origin").as_deref(),
        Some("https://app.example")
    );
    let allowed_methods = preflight
        .header("access-control-allow-methods")
        .unwrap_or_default();
    assert!(allowed_methods.contains("POST"), "{allowed_methods}");
    let allowed_headers = preflight
        .header("access-control-allow-headers")
        .unwrap_or_default()
        .to_ascii_lowercase();
    assert!(
        allowed_headers.contains("authorization") && allowed_headers.contains("idempotency-key"),
        "{allowed_headers}"
    );

    let simple = api
        .send(
            api.request(Method::GET, "/v1/whoami")
                .bearer_auth(BOOTSTRAP_KEY)
                .header("origin", "https://app.example"),
        )
        .await;
    assert_eq!(simple.status, 200);
    assert_eq!(
        simple.header("access-control-allow-origin").as_deref(),
        Some("https://app.example")
    );
    let exposed = simple
        .header("access-control-expose-headers")
        .unwrap_or_default()
        .to_ascii_lowercase();
    assert!(exposed.contains("x-request-id"), "{exposed}");

    let other_origin = api
        .send(
            api.request(Method::OPTIONS, "/v1/keys")
                .header("origin", "https://evil.example")
                .header("access-control-request-method", "POST"),
        )
        .await;
    assert_eq!(other_origin.header("access-control-allow-origin"), None);
}

#[tokio::test]
async fn cors_is_off_by_default() {
    let node = Node::start(NodeOptions::dev()).await;
    let api = node.anonymous();
    let preflight = api
        .send(
            api.request(Method::OPTIONS, "/v1/whoami")
                .header("origin", "https://app.example")
                .header("access-control-request-method", "GET"),
        )
        .await;
    assert_eq!(preflight.header("access-control-allow-origin"), None);
    let simple = api
        .send(
            api.request(Method::GET, "/v1/whoami")
                .header("origin", "https://app.example"),
        )
        .await;
    assert_eq!(simple.status, 200);
    assert_eq!(simple.header("access-control-allow-origin"), None);
}

#[tokio::test]
async fn openapi_document_lists_every_served_route() {
    let node = Node::start(NodeOptions::dev()).await;
    let reply = node.anonymous().get("/v1/openapi.json").await;
    assert_eq!(reply.status, 200);
    assert!(
        reply
            .header("content-type")
            .is_some_and(|content_type| content_type.starts_with("application/json"))
    );
    let document = reply.json();
    let version = document["openapi"].as_str().expect("openapi field");
    assert!(version.starts_with("3."), "{version}");
    let paths = document["paths"].as_object().expect("paths object");
    for (path, methods) in SERVED_ROUTES {
        let item = paths
            .get(*path)
            .unwrap_or_else(|| panic!("{path} is not in the OpenAPI document"));
        for method in *methods {
            assert!(
                item.get(*method).is_some(),
                "{method} {path} is not in the OpenAPI document"
            );
        }
    }
    assert!(
        document["components"]["securitySchemes"]["bearer"].is_object(),
        "bearer security scheme"
    );
}

/// A concrete path for a documented template.
fn concrete_path(template: &str) -> String {
    template
        .replace("{tenant}", "no-such-tenant")
        .replace("{key_id}", "0123456789abcdef")
        .replace("{stream}", "no-such-stream")
}

#[tokio::test]
async fn every_documented_operation_is_served() {
    let node = Node::start(NodeOptions::dev()).await;
    let api = node.anonymous();
    let document = api.get("/v1/openapi.json").await.json();
    let paths = document["paths"].as_object().expect("paths object");
    let mut checked = 0;
    for (template, item) in paths {
        let path = concrete_path(template);
        for method in item.as_object().expect("path item").keys() {
            let method = match method.as_str() {
                "get" => Method::GET,
                "post" => Method::POST,
                "put" => Method::PUT,
                "patch" => Method::PATCH,
                "delete" => Method::DELETE,
                _ => continue,
            };
            let mut request = api.request(method.clone(), &path);
            if method == Method::POST || method == Method::PUT || method == Method::PATCH {
                request = request.json(&json!({}));
            }
            // A subscription streams until the client leaves: check its head only.
            if template.ends_with("/subscribe") {
                let response = request.send().await.expect("open the subscription");
                assert_eq!(response.status(), 200, "{method} {path}");
                checked += 1;
                continue;
            }
            let reply = api.send(request).await;
            assert_ne!(
                reply.status, 405,
                "{method} {path} is documented but not served"
            );
            if reply.status == 404 {
                assert_ne!(
                    reply.json()["code"],
                    "route_not_found",
                    "{method} {path} is documented but not served"
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 17, "only {checked} operations documented");
}

#[tokio::test]
async fn traceparent_is_accepted_and_its_trace_id_is_logged() {
    let node = Node::start(NodeOptions::dev()).await;
    let api = node.anonymous();
    let reply = api
        .send(
            api.request(Method::GET, "/v1/whoami")
                .header("x-request-id", "traced-request-1")
                .header("traceparent", format!("00-{TRACE_ID}-00f067aa0ba902b7-01")),
        )
        .await;
    assert_eq!(reply.status, 200);
    let served = node
        .wait_for_log_record(|record| {
            record["fields"]["message"] == "request served"
                && record["span"]["request_id"] == "traced-request-1"
        })
        .await;
    assert_eq!(served["span"]["trace_id"], TRACE_ID, "{served}");
    assert_eq!(served["span"]["route"], "/v1/whoami", "{served}");
    assert_eq!(served["fields"]["status"], 200, "{served}");
}

#[tokio::test]
async fn logs_are_json_lines_and_each_line_of_a_request_carries_its_id() {
    let node = Node::start(NodeOptions::enforced()).await;
    let api = node.anonymous().with_token("not-a-real-credential");
    let reply = api
        .send(
            api.request(Method::GET, "/v1/whoami")
                .header("x-request-id", "failing-auth-request"),
        )
        .await;
    assert_eq!(reply.status, 401);
    node.wait_for_log_record(|record| {
        record["fields"]["message"] == "request served"
            && record["span"]["request_id"] == "failing-auth-request"
    })
    .await;

    let logs = node.logs();
    for line in logs.lines().filter(|line| !line.trim().is_empty()) {
        assert!(
            serde_json::from_str::<Value>(line).is_ok_and(|value| value.is_object()),
            "a log line is not a JSON object: {line}"
        );
    }
    let auth_failure_lines: Vec<Value> = node
        .log_records()
        .into_iter()
        .filter(|record| record["fields"]["message"] == "authentication failed")
        .collect();
    assert_eq!(auth_failure_lines.len(), 1, "{logs}");
    assert_eq!(
        auth_failure_lines[0]["span"]["request_id"], "failing-auth-request",
        "{logs}"
    );
}

#[tokio::test]
async fn credentials_never_reach_the_log() {
    const JWT_SECRET: &str = "hs256-secret-that-must-not-be-logged-0123456789";
    let node =
        Node::start(NodeOptions::enforced().env("PLINTH_AUTH__JWT__HS256_SECRET", JWT_SECRET))
            .await;
    let admin = node.admin();
    admin.create_tenant("logcheck").await;
    let key = admin
        .create_tenant_key("logcheck", &["keys:read", "keys:write"])
        .await;
    let tenant_api = node.anonymous().with_token(&key.secret);
    assert_eq!(tenant_api.get("/v1/keys").await.status, 200);

    let forged_secret = format!("plk_{}_forgedSecretPartThatMustNotBeLogged", key.id);
    let failing_tokens = [
        forged_secret.as_str(),
        "plk_00112233445566ff_anotherForgedSecretNotToLog",
        "garbage.token.value-not-to-log",
    ];
    for token in failing_tokens {
        let reply = node.anonymous().with_token(token).get("/v1/whoami").await;
        assert_eq!(reply.status, 401, "{token}");
    }
    let basic = node.anonymous();
    let reply = basic
        .send(
            basic
                .request(Method::GET, "/v1/whoami")
                .header("authorization", "Basic dXNlcjpwYXNzd29yZC1ub3QtdG8tbG9n"),
        )
        .await;
    assert_eq!(reply.status, 401);
    node.wait_for_log_record(|record| {
        record["fields"]["message"] == "request served" && record["fields"]["status"] == 401
    })
    .await;

    let logs = node.logs();
    for secret in [
        BOOTSTRAP_KEY,
        JWT_SECRET,
        key.secret.as_str(),
        failing_tokens[0],
        failing_tokens[1],
        failing_tokens[2],
        "dXNlcjpwYXNzd29yZC1ub3QtdG8tbG9n",
    ] {
        assert!(
            !logs.contains(secret),
            "the log contains `{secret}`:\n{logs}"
        );
    }
    assert!(
        !logs.to_ascii_lowercase().contains("\"authorization\""),
        "the log contains an Authorization header field:\n{logs}"
    );
}

#[tokio::test]
async fn a_request_slower_than_the_limit_gets_a_504() {
    let node =
        Node::start(NodeOptions::enforced().env("PLINTH_SERVER__REQUEST_TIMEOUT", "1s")).await;
    let (mut stream, _never_sent) = node.start_half_sent_tenant_creation("slow").await;
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    assert!(response.starts_with("HTTP/1.1 504"), "{response:?}");
    assert!(response.contains("application/problem+json"), "{response}");
    assert!(response.contains("request_timeout"), "{response}");
    let tenants = node.admin().get("/v1/admin/tenants").await.json();
    assert!(!tenants.to_string().contains("slow"), "{tenants}");
}
