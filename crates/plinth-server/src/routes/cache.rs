//! `/v1/cache/{keyspace}/{key}`: raw values with ETags, TTLs, tags,
//! conditional writes, consistency modes and counters. Scopes:
//! `cache:read:<keyspace>` and `cache:write:<keyspace>`.

use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use plinth_cache::model::{etag_of, parse_etag};
use plinth_cache::service::{CacheWrite, Consistency};
use plinth_cache::{CacheKey, WriteCondition};
use plinth_core::{Error, HumanDuration, ResourceName};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::extract::{ApiPath, ApiQuery};
use crate::json::ApiJson;
use crate::middleware::auth::Caller;
use crate::problem::{ApiResult, ProblemDocument};
use crate::state::AppState;

pub static TAGS_HEADER: HeaderName = HeaderName::from_static("x-cache-tags");
pub static TIER_HEADER: HeaderName = HeaderName::from_static("x-cache-tier");
pub static TTL_HEADER: HeaderName = HeaderName::from_static("x-cache-ttl-ms");
pub static SESSION_HEADER: HeaderName = HeaderName::from_static("x-cache-session");
const DEFAULT_CONTENT_TYPE: &str = "application/octet-stream";

pub fn parse_keyspace(text: &str) -> Result<ResourceName, Error> {
    ResourceName::parse("keyspace", text)
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PutParameters {
    /// Time to live such as `30s`; absent uses the keyspace default.
    pub ttl: Option<String>,
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct GetParameters {
    /// `eventual` (default: any tier), `strong` (the authoritative tier
    /// only) or `session` (read-your-writes with the `X-Cache-Session`
    /// token from your writes).
    pub consistency: Option<String>,
}

fn parse_ttl(text: Option<&str>) -> Result<Option<Duration>, Error> {
    let Some(text) = text else {
        return Ok(None);
    };
    let ttl: HumanDuration = text.parse().map_err(|error: Error| {
        Error::invalid_argument("invalid_ttl", format!("ttl: {}", error.detail()))
    })?;
    if ttl.as_duration().is_zero() {
        return Err(Error::invalid_argument(
            "invalid_ttl",
            "ttl must be above zero",
        ));
    }
    Ok(Some(ttl.as_duration()))
}

fn header_text<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Result<Option<&'a str>, Error> {
    match headers.get(name) {
        None => Ok(None),
        Some(value) => value.to_str().map(Some).map_err(|_| {
            Error::invalid_argument("invalid_header", format!("the {name} header must be ASCII"))
        }),
    }
}

fn write_condition(headers: &HeaderMap) -> Result<WriteCondition, Error> {
    let if_match = header_text(headers, &header::IF_MATCH)?;
    let if_none_match = header_text(headers, &header::IF_NONE_MATCH)?;
    match (if_match, if_none_match) {
        (Some(_), Some(_)) => Err(Error::invalid_argument(
            "invalid_precondition",
            "send either If-Match or If-None-Match, not both",
        )),
        (Some(etag), None) => Ok(WriteCondition::RevisionIs(parse_etag(etag)?)),
        (None, Some("*")) => Ok(WriteCondition::Absent),
        (None, Some(_)) => Err(Error::invalid_argument(
            "invalid_precondition",
            "on writes If-None-Match only accepts `*` (create only)",
        )),
        (None, None) => Ok(WriteCondition::Always),
    }
}

fn parse_tags(headers: &HeaderMap) -> Result<Vec<String>, Error> {
    let Some(text) = header_text(headers, &TAGS_HEADER)? else {
        return Ok(Vec::new());
    };
    let mut tags = Vec::new();
    for tag in text.split(',') {
        let tag = tag.trim();
        if !tag.is_empty() {
            tags.push(tag.to_string());
        }
    }
    Ok(tags)
}

fn parse_consistency(
    parameters: &GetParameters,
    headers: &HeaderMap,
) -> Result<Consistency, Error> {
    match parameters.consistency.as_deref() {
        None | Some("eventual") => Ok(Consistency::Eventual),
        Some("strong") => Ok(Consistency::Strong),
        Some("session") => {
            let Some(token) = header_text(headers, &SESSION_HEADER)? else {
                // A session that wrote nothing has nothing to read back.
                return Ok(Consistency::Session(0));
            };
            let revision = u64::from_str_radix(token.trim(), 16).map_err(|_| {
                Error::invalid_argument(
                    "invalid_session",
                    "X-Cache-Session must be a token this server returned from a write",
                )
            })?;
            Ok(Consistency::Session(revision))
        }
        Some(other) => Err(Error::invalid_argument(
            "invalid_consistency",
            format!(
                "consistency `{}` is unknown; use eventual, strong or session",
                other.chars().take(32).collect::<String>().escape_debug()
            ),
        )),
    }
}

/// RFC 9110: `If-None-Match` holds `*` or a list of ETags.
fn if_none_match_covers(header_value: &str, current_etag: &str) -> bool {
    let trimmed = header_value.trim();
    if trimmed == "*" {
        return true;
    }
    trimmed
        .split(',')
        .any(|candidate| candidate.trim().trim_start_matches("W/") == current_etag)
}

fn write_headers(revision: u64) -> [(HeaderName, HeaderValue); 2] {
    let etag =
        HeaderValue::from_str(&etag_of(revision)).expect("hex ETags are valid header values");
    let session =
        HeaderValue::from_str(&format!("{revision:x}")).expect("hex is a valid header value");
    [(header::ETAG, etag), (SESSION_HEADER.clone(), session)]
}

/// Stores a raw value.
#[utoipa::path(
    put, path = "/v1/cache/{keyspace}/{key}", tag = "cache", security(("bearer" = [])),
    params(
        ("keyspace" = String, Path, description = "Keyspace name"),
        ("key" = String, Path, description = "Key: 1 to 512 printable ASCII characters, no `/`"),
        PutParameters,
        ("If-Match" = Option<String>, Header, description = "Write only if the current ETag is this one"),
        ("If-None-Match" = Option<String>, Header, description = "`*`: write only if the key does not exist"),
        ("X-Cache-Tags" = Option<String>, Header, description = "Comma-separated tags"),
    ),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "The value, any bytes; its Content-Type is kept"),
    responses(
        (status = 204, description = "Stored; `ETag` is the new version, `X-Cache-Session` the read-your-writes token"),
        (status = 412, description = "If-Match or If-None-Match failed", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 413, description = "The value is over the keyspace's max_value_bytes", body = ProblemDocument, content_type = "application/problem+json"),
    )
)]
pub async fn put_value(
    State(state): State<AppState>,
    Caller(principal): Caller,
    ApiPath((keyspace, key)): ApiPath<(String, String)>,
    ApiQuery(parameters): ApiQuery<PutParameters>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let keyspace = parse_keyspace(&keyspace)?;
    principal.require("cache", "write", Some(keyspace.as_str()))?;
    let key = CacheKey::parse(&key)?;
    let content_type = header_text(&headers, &header::CONTENT_TYPE)?
        .unwrap_or(DEFAULT_CONTENT_TYPE)
        .to_string();
    let write = CacheWrite {
        value: body,
        content_type,
        ttl: parse_ttl(parameters.ttl.as_deref())?,
        tags: parse_tags(&headers)?,
        condition: write_condition(&headers)?,
    };
    let revision = state
        .cache
        .put(&principal.tenant, &keyspace, &key, write)
        .await?;
    Ok((StatusCode::NO_CONTENT, write_headers(revision)).into_response())
}

/// Reads a raw value.
#[utoipa::path(
    get, path = "/v1/cache/{keyspace}/{key}", tag = "cache", security(("bearer" = [])),
    params(
        ("keyspace" = String, Path, description = "Keyspace name"),
        ("key" = String, Path, description = "Key"),
        GetParameters,
        ("X-Cache-Session" = Option<String>, Header, description = "Session token from your last write (consistency=session)"),
        ("If-None-Match" = Option<String>, Header, description = "An ETag you hold: 304 when unchanged"),
    ),
    responses(
        (status = 200, description = "The value with its Content-Type, `ETag`, `X-Cache-Tier` (which tier answered) and `X-Cache-TTL-Ms` (remaining, absent when it never expires)", body = Vec<u8>, content_type = "application/octet-stream"),
        (status = 304, description = "Unchanged since the ETag in If-None-Match"),
        (status = 404, description = "Absent or expired", body = ProblemDocument, content_type = "application/problem+json"),
    )
)]
pub async fn get_value(
    State(state): State<AppState>,
    Caller(principal): Caller,
    ApiPath((keyspace, key)): ApiPath<(String, String)>,
    ApiQuery(parameters): ApiQuery<GetParameters>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let keyspace = parse_keyspace(&keyspace)?;
    principal.require("cache", "read", Some(keyspace.as_str()))?;
    let key = CacheKey::parse(&key)?;
    let consistency = parse_consistency(&parameters, &headers)?;
    let Some(read) = state
        .cache
        .get(&principal.tenant, &keyspace, &key, consistency)
        .await?
    else {
        return Err(Error::not_found("key_not_found", "the key is absent or expired").into());
    };
    let etag = etag_of(read.entry.revision);
    if let Some(held) = header_text(&headers, &header::IF_NONE_MATCH)?
        && if_none_match_covers(held, &etag)
    {
        return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response());
    }
    let mut response = (StatusCode::OK, read.entry.value.clone()).into_response();
    let response_headers = response.headers_mut();
    let content_type = HeaderValue::from_str(&read.entry.content_type)
        .unwrap_or(HeaderValue::from_static(DEFAULT_CONTENT_TYPE));
    response_headers.insert(header::CONTENT_TYPE, content_type);
    response_headers.insert(
        header::ETAG,
        HeaderValue::from_str(&etag).expect("hex ETags are valid header values"),
    );
    response_headers.insert(TIER_HEADER.clone(), HeaderValue::from_static(read.tier));
    if let Some(remaining) = read.entry.remaining_ttl_ms(plinth_cache::clock::now_ms()) {
        response_headers.insert(TTL_HEADER.clone(), HeaderValue::from(remaining));
    }
    Ok(response)
}

/// Deletes a key.
#[utoipa::path(
    delete, path = "/v1/cache/{keyspace}/{key}", tag = "cache", security(("bearer" = [])),
    params(
        ("keyspace" = String, Path, description = "Keyspace name"),
        ("key" = String, Path, description = "Key"),
        ("If-Match" = Option<String>, Header, description = "Delete only if the current ETag is this one"),
    ),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "There was no such key", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 412, description = "If-Match failed", body = ProblemDocument, content_type = "application/problem+json"),
    )
)]
pub async fn delete_value(
    State(state): State<AppState>,
    Caller(principal): Caller,
    ApiPath((keyspace, key)): ApiPath<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let keyspace = parse_keyspace(&keyspace)?;
    principal.require("cache", "write", Some(keyspace.as_str()))?;
    let key = CacheKey::parse(&key)?;
    if header_text(&headers, &header::IF_NONE_MATCH)?.is_some() {
        return Err(Error::invalid_argument(
            "invalid_precondition",
            "DELETE accepts If-Match, not If-None-Match",
        )
        .into());
    }
    let condition = write_condition(&headers)?;
    match state
        .cache
        .delete(&principal.tenant, &keyspace, &key, condition)
        .await?
    {
        // The session token lets the client read its own delete back.
        Some(revision) => Ok((StatusCode::NO_CONTENT, write_headers(revision)).into_response()),
        None => Err(Error::not_found("key_not_found", "the key is absent or expired").into()),
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IncrementRequest {
    /// How much to add (may be negative); default 1.
    #[serde(default = "one")]
    pub by: i64,
    /// TTL of a counter created by this call, such as `1m`.
    #[schema(value_type = Option<String>)]
    pub ttl: Option<HumanDuration>,
}

fn one() -> i64 {
    1
}

#[derive(Debug, Serialize, ToSchema)]
pub struct IncrementResponse {
    pub value: i64,
}

/// Adds to an integer counter atomically (absent counts as 0).
#[utoipa::path(
    post, path = "/v1/cache/{keyspace}/{key}/increment", tag = "cache", security(("bearer" = [])),
    params(("keyspace" = String, Path, description = "Keyspace name"), ("key" = String, Path, description = "Key")),
    request_body = IncrementRequest,
    responses(
        (status = 200, description = "The new value", body = IncrementResponse),
        (status = 409, description = "The value is not an integer, or it would overflow", body = ProblemDocument, content_type = "application/problem+json"),
    )
)]
pub async fn increment_value(
    State(state): State<AppState>,
    Caller(principal): Caller,
    ApiPath((keyspace, key)): ApiPath<(String, String)>,
    ApiJson(request): ApiJson<IncrementRequest>,
) -> ApiResult<Response> {
    let keyspace = parse_keyspace(&keyspace)?;
    principal.require("cache", "write", Some(keyspace.as_str()))?;
    let key = CacheKey::parse(&key)?;
    let ttl = match request.ttl {
        Some(ttl) if ttl.as_duration().is_zero() => {
            return Err(Error::invalid_argument("invalid_ttl", "ttl must be above zero").into());
        }
        other => other.map(HumanDuration::as_duration),
    };
    let (value, revision) = state
        .cache
        .increment(&principal.tenant, &keyspace, &key, request.by, ttl)
        .await?;
    Ok((
        StatusCode::OK,
        write_headers(revision),
        Json(IncrementResponse { value }),
    )
        .into_response())
}
