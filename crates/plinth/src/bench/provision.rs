//! Prepares a freshly started node for a benchmark through its admin API,
//! as an operator would: a `bench` tenant and an API key for it.

use anyhow::Context;
use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderValue, Method, StatusCode};
use serde_json::{Value, json};

use crate::bench::client::{Endpoint, build_request, send_once};

const BENCH_TENANT: &str = "bench";

/// Creates the tenant and a key with `scopes`, and returns the key's secret.
pub async fn create_bench_api_key(
    plinth_endpoint: &Endpoint,
    bootstrap_admin_key: &str,
    scopes: &[&str],
) -> anyhow::Result<String> {
    post_as_admin(
        plinth_endpoint,
        bootstrap_admin_key,
        "/v1/admin/tenants",
        &json!({ "id": BENCH_TENANT }),
    )
    .await
    .context("creating the bench tenant")?;
    let created_key = post_as_admin(
        plinth_endpoint,
        bootstrap_admin_key,
        &format!("/v1/admin/tenants/{BENCH_TENANT}/keys"),
        &json!({ "name": "bench", "scopes": scopes }),
    )
    .await
    .context("creating the bench API key")?;
    let Some(secret) = created_key.get("secret").and_then(Value::as_str) else {
        anyhow::bail!("the created key carries no secret: {created_key}");
    };
    Ok(secret.to_string())
}

/// POSTs a JSON body with the admin key and expects 201 Created.
async fn post_as_admin(
    endpoint: &Endpoint,
    admin_key: &str,
    path: &str,
    body: &Value,
) -> anyhow::Result<Value> {
    let mut request = build_request(
        Method::POST,
        endpoint,
        path,
        Bytes::from(serde_json::to_vec(body)?),
    )?;
    let headers = request.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(AUTHORIZATION, bearer(admin_key)?);
    let (status, answer) = send_once(endpoint, request).await?;
    if status != StatusCode::CREATED {
        anyhow::bail!(
            "POST {path} answered {status}: {}",
            String::from_utf8_lossy(&answer)
        );
    }
    serde_json::from_slice(&answer).with_context(|| format!("POST {path} answered invalid JSON"))
}

/// The `Authorization` value for a key, marked sensitive so it never shows
/// in debug output.
pub fn bearer(key: &str) -> anyhow::Result<HeaderValue> {
    let mut value = HeaderValue::from_str(&format!("Bearer {key}"))
        .context("the API key is not a valid header value")?;
    value.set_sensitive(true);
    Ok(value)
}
