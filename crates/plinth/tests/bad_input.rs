//! Black-box tests of bad input: malformed, wrong-type, unknown-field,
//! wrong-content-type, oversized and hostile requests each get a clean 4xx
//! problem document that says what to change, and change nothing (checked
//! by listing afterwards).

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use support::{Api, BOOTSTRAP_KEY, Node, NodeOptions, Reply};

/// Bodies above this many bytes are refused by the test node.
const MAX_BODY_BYTES: usize = 1024;

async fn start_node() -> Node {
    Node::start(
        NodeOptions::enforced().env("PLINTH_SERVER__MAX_BODY_BYTES", &MAX_BODY_BYTES.to_string()),
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

async fn assert_only_default_tenant(admin: &Api) {
    assert_eq!(tenant_ids(admin).await, vec!["default".to_string()]);
}

async fn post_raw(api: &Api, path: &str, content_type: Option<&str>, body: Vec<u8>) -> Reply {
    let mut request = api.request(Method::POST, path).body(body);
    if let Some(content_type) = content_type {
        request = request.header("content-type", content_type);
    }
    api.send(request).await
}

fn assert_detail_mentions(problem: &Value, fragment: &str) {
    let detail = problem["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains(fragment),
        "detail `{detail}` should mention `{fragment}`"
    );
}

#[tokio::test]
async fn malformed_json_is_a_400() {
    let node = start_node().await;
    let admin = node.admin();
    for body in [&b"{\"id\": \"alpha\""[..], b"{id: alpha}", b"", b"\xff\xfe"] {
        let reply = post_raw(
            &admin,
            "/v1/admin/tenants",
            Some("application/json"),
            body.to_vec(),
        )
        .await;
        let problem = reply.expect_problem(400, "malformed_json");
        assert_detail_mentions(&problem, "JSON");
    }
    // Nested too deep for any sane client.
    let hostile = format!("{}{}", "[".repeat(500), "]".repeat(500));
    let reply = post_raw(
        &admin,
        "/v1/admin/tenants",
        Some("application/json"),
        hostile.into_bytes(),
    )
    .await;
    assert!(
        reply.status == 400 || reply.status == 422,
        "{}",
        reply.text()
    );
    assert_only_default_tenant(&admin).await;
}

#[tokio::test]
async fn wrong_types_and_missing_fields_are_a_422_naming_the_field() {
    let node = start_node().await;
    let admin = node.admin();
    for (body, field) in [
        (json!({ "id": 5 }), "id"),
        (
            json!({ "id": "alpha", "display_name": ["x"] }),
            "display_name",
        ),
        (json!({ "display_name": "no id" }), "id"),
        (json!(["alpha"]), ""),
    ] {
        let reply = admin.post_json("/v1/admin/tenants", &body).await;
        let problem = reply.expect_problem(422, "invalid_body");
        assert_detail_mentions(&problem, field);
    }
    assert_only_default_tenant(&admin).await;
}

#[tokio::test]
async fn unknown_fields_are_a_422_naming_the_field() {
    let node = start_node().await;
    let admin = node.admin();
    let reply = admin
        .post_json("/v1/admin/tenants", &json!({ "id": "alpha", "bogus": 1 }))
        .await;
    let problem = reply.expect_problem(422, "invalid_body");
    assert_detail_mentions(&problem, "bogus");

    admin.create_tenant("beta").await;
    let reply = admin
        .post_json(
            "/v1/admin/tenants/beta/keys",
            &json!({ "name": "k", "scopes": ["keys:read"], "expires": "1d" }),
        )
        .await;
    let problem = reply.expect_problem(422, "invalid_body");
    assert_detail_mentions(&problem, "expires");
    let keys = admin.get("/v1/admin/tenants/beta/keys").await.json();
    assert_eq!(keys["items"], json!([]));
    assert_eq!(
        tenant_ids(&admin).await,
        vec!["beta".to_string(), "default".to_string()]
    );
}

#[tokio::test]
async fn bodies_that_are_not_json_are_a_415() {
    let node = start_node().await;
    let admin = node.admin();
    let body = br#"{"id":"alpha"}"#.to_vec();
    for content_type in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
    ] {
        let reply = post_raw(&admin, "/v1/admin/tenants", content_type, body.clone()).await;
        let problem = reply.expect_problem(415, "unsupported_media_type");
        assert_detail_mentions(&problem, "application/json");
    }
    assert_only_default_tenant(&admin).await;
}

#[tokio::test]
async fn oversized_bodies_are_a_413() {
    let node = start_node().await;
    let admin = node.admin();
    let body = json!({ "id": "alpha", "display_name": "x".repeat(4096) });
    let reply = admin.post_json("/v1/admin/tenants", &body).await;
    let problem = reply.expect_problem(413, "payload_too_large");
    assert_detail_mentions(&problem, "max_body_bytes");

    // With an Idempotency-Key the body is read by another layer: same answer.
    let reply = admin
        .send(
            admin
                .request(Method::POST, "/v1/admin/tenants")
                .header("idempotency-key", "oversized-1")
                .json(&body),
        )
        .await;
    reply.expect_problem(413, "payload_too_large");
    assert_only_default_tenant(&admin).await;
}

/// Sends a chunked POST (no Content-Length) over a raw connection and
/// returns the status code and the whole response text.
fn post_chunked(node: &Node, path: &str, body: &[u8]) -> (u16, String) {
    let mut stream = TcpStream::connect(node.address()).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream
        .set_write_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {BOOTSTRAP_KEY}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        node.address()
    )
    .into_bytes();
    for chunk in body.chunks(512) {
        request.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        request.extend_from_slice(chunk);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    // The server may answer and close before reading everything.
    let _ = stream.write_all(&request);
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in: {text:?}"));
    (status, text)
}

#[tokio::test]
async fn oversized_chunked_bodies_are_a_413() {
    let node = start_node().await;
    let body = json!({ "id": "alpha", "display_name": "x".repeat(4096) }).to_string();
    let (status, text) = post_chunked(&node, "/v1/admin/tenants", body.as_bytes());
    assert_eq!(status, 413, "{text}");
    assert!(text.contains("payload_too_large"), "{text}");
    assert!(text.contains("application/problem+json"), "{text}");

    // A small chunked body is fine.
    let (status, text) = post_chunked(&node, "/v1/admin/tenants", br#"{"id":"chunky"}"#);
    assert_eq!(status, 201, "{text}");
    assert_eq!(
        tenant_ids(&node.admin()).await,
        vec!["chunky".to_string(), "default".to_string()]
    );
}

#[tokio::test]
async fn invalid_tenant_ids_are_a_400() {
    let node = start_node().await;
    let admin = node.admin();
    let too_long = "a".repeat(64);
    for id in [
        "Bad Name",
        too_long.as_str(),
        "../x",
        "",
        "-leading-dash",
        "tenant\u{0}null",
        "ünïcode",
    ] {
        let reply = admin
            .post_json("/v1/admin/tenants", &json!({ "id": id }))
            .await;
        let problem = reply.expect_problem(400, "invalid_tenant_id");
        assert_detail_mentions(&problem, "tenant id");
    }
    for path in [
        "/v1/admin/tenants/Bad%20Name",
        "/v1/admin/tenants/..%2Fx",
        "/v1/admin/tenants/UPPER/keys",
    ] {
        admin
            .get(path)
            .await
            .expect_problem(400, "invalid_tenant_id");
    }
    let reply = admin
        .post_json(
            "/v1/admin/tenants",
            &json!({ "id": "fine", "display_name": "bad\u{7}bell" }),
        )
        .await;
    reply.expect_problem(400, "invalid_display_name");
    assert_only_default_tenant(&admin).await;
}

#[tokio::test]
async fn invalid_key_requests_are_refused_and_create_nothing() {
    let node = start_node().await;
    let admin = node.admin();
    admin.create_tenant("alpha").await;
    let path = "/v1/admin/tenants/alpha/keys";
    for scopes in [
        json!(["Cache:read"]),
        json!(["cache"]),
        json!([""]),
        json!(["cache:read:a/b"]),
        json!(["keys:read", "not a scope"]),
    ] {
        let reply = admin
            .post_json(path, &json!({ "name": "k", "scopes": scopes }))
            .await;
        reply.expect_problem(400, "invalid_scope");
    }
    for name in ["", "   ", &"n".repeat(101)] {
        let reply = admin
            .post_json(path, &json!({ "name": name, "scopes": ["keys:read"] }))
            .await;
        let problem = reply.expect_problem(400, "invalid_key_name");
        assert_detail_mentions(&problem, "name");
    }
    for ttl in ["soon", "0s", "-1s", "20000d"] {
        let reply = admin
            .post_json(
                path,
                &json!({ "name": "k", "scopes": ["keys:read"], "ttl": ttl }),
            )
            .await;
        assert!(
            reply.status == 400 || reply.status == 422,
            "ttl {ttl}: {}",
            reply.text()
        );
        let problem = reply.json();
        assert_eq!(
            reply.header("content-type").as_deref(),
            Some("application/problem+json")
        );
        assert_detail_mentions(&problem, "ttl");
    }
    let reply = admin
        .post_json(
            "/v1/admin/tenants/nobody/keys",
            &json!({ "name": "k", "scopes": ["keys:read"] }),
        )
        .await;
    reply.expect_problem(404, "tenant_not_found");
    let keys = admin.get(path).await.json();
    assert_eq!(keys["items"], json!([]), "{keys}");
}

#[tokio::test]
async fn duplicate_tenant_is_a_409() {
    let node = start_node().await;
    let admin = node.admin();
    let first = admin.create_tenant("alpha").await;
    let reply = admin
        .post_json(
            "/v1/admin/tenants",
            &json!({ "id": "alpha", "display_name": "Another" }),
        )
        .await;
    let problem = reply.expect_problem(409, "tenant_exists");
    assert_detail_mentions(&problem, "alpha");
    let stored = admin.get("/v1/admin/tenants/alpha").await.json();
    assert_eq!(stored, first);
    admin
        .post_json("/v1/admin/tenants", &json!({ "id": "default" }))
        .await
        .expect_problem(409, "tenant_exists");
}

#[tokio::test]
async fn pagination_walks_every_item_and_bad_parameters_are_a_400() {
    let node = start_node().await;
    let admin = node.admin();
    for tenant in ["t1", "t2", "t3", "t4"] {
        admin.create_tenant(tenant).await;
    }
    let mut seen = Vec::new();
    let mut path = "/v1/admin/tenants?limit=2".to_string();
    for _page in 0..10 {
        let page = admin.get(&path).await.json();
        for tenant in page["items"].as_array().unwrap() {
            seen.push(tenant["id"].as_str().unwrap().to_string());
        }
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/v1/admin/tenants?limit=2&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(seen, ["default", "t1", "t2", "t3", "t4"]);

    for (query, code) in [
        ("limit=0", "invalid_limit"),
        ("limit=100000", "invalid_limit"),
        ("cursor=zz", "invalid_cursor"),
    ] {
        for route in ["/v1/admin/tenants", "/v1/keys", "/v1/admin/audit"] {
            let reply = admin.get(&format!("{route}?{query}")).await;
            let problem = reply.expect_problem(400, code);
            if code == "invalid_limit" {
                assert_detail_mentions(&problem, "limit");
            }
        }
    }
    admin
        .get("/v1/admin/audit?outcome=maybe")
        .await
        .expect_problem(400, "invalid_outcome");
}

#[tokio::test]
async fn unparsable_query_strings_and_paths_are_problem_documents() {
    let node = start_node().await;
    let admin = node.admin();
    for path in [
        "/v1/admin/tenants?limit=abc",
        "/v1/admin/tenants?limit=-1",
        "/v1/keys?bogus=1",
        "/v1/admin/audit?limit=1e3",
        "/v1/admin/tenants/%FF",
        "/v1/keys/%FF%FE",
    ] {
        let reply = admin.get(path).await;
        assert_eq!(reply.status, 400, "{path}: {}", reply.text());
        assert_eq!(
            reply.header("content-type").as_deref(),
            Some("application/problem+json"),
            "{path}: a bad query string or path must be a problem document, got {:?}",
            reply.text()
        );
        let problem = reply.json();
        assert_eq!(problem["status"], 400, "{path}");
        assert!(problem["code"].is_string(), "{path}");
        assert!(problem["request_id"].is_string(), "{path}");
    }
}

#[tokio::test]
async fn a_non_ascii_authorization_header_is_a_401() {
    let node = start_node().await;
    let api = node.anonymous();
    let reply = api
        .send(api.request(Method::GET, "/v1/whoami").header(
            "authorization",
            reqwest::header::HeaderValue::from_bytes(b"Bearer \xff\xfe").unwrap(),
        ))
        .await;
    let problem = reply.expect_problem(401, "unauthenticated");
    assert_detail_mentions(&problem, "ASCII");
}

#[tokio::test]
async fn json_with_a_charset_is_accepted() {
    let node = start_node().await;
    let admin = node.admin();
    let reply = post_raw(
        &admin,
        "/v1/admin/tenants",
        Some("application/json; charset=utf-8"),
        br#"{"id":"charset"}"#.to_vec(),
    )
    .await;
    assert_eq!(reply.status, 201, "{}", reply.text());
}

#[tokio::test]
async fn too_many_scopes_are_refused() {
    let node = start_node().await;
    let admin = node.admin();
    admin.create_tenant("alpha").await;
    let scopes: Vec<String> = (0..65).map(|index| format!("k:r:p{index}")).collect();
    let reply = admin
        .post_json(
            "/v1/admin/tenants/alpha/keys",
            &json!({ "name": "wide", "scopes": scopes }),
        )
        .await;
    let problem = reply.expect_problem(400, "invalid_scope");
    assert_detail_mentions(&problem, "64");
    let keys = admin.get("/v1/admin/tenants/alpha/keys").await.json();
    assert_eq!(keys["items"], json!([]));
}

/// A hostile, very long path parameter is not echoed back whole.
#[tokio::test]
async fn long_key_ids_are_not_echoed_whole() {
    let node = start_node().await;
    let admin = node.admin();
    let long_id = "f".repeat(2000);
    let path = format!("/v1/keys/{long_id}");
    for (method, reply) in [
        ("GET", admin.get(&path).await),
        ("DELETE", admin.delete(&path).await),
    ] {
        let problem = reply.expect_problem(404, "key_not_found");
        let detail = problem["detail"].as_str().unwrap();
        assert!(
            detail.len() < 300,
            "{method}: a {}-character detail echoes the whole id",
            detail.len()
        );
    }
}
