//! `/v1/keyspaces`: a tenant's keyspaces: their tier configuration (applied
//! without a restart), version, stats, key listing, bulk operations,
//! invalidation by pattern, prefix or tag, the O(1) flush, and warming.
//! Scopes: `cache:read:<keyspace>`, `cache:write:<keyspace>`, and
//! `cache:admin:<keyspace>` to configure, flush or warm.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use plinth_cache::catalog::KeyspaceRecord;
use plinth_cache::model::etag_of;
use plinth_cache::pattern::validate_pattern;
use plinth_cache::service::{CacheWrite, Consistency};
use plinth_cache::stats::{TierLatencyStats, TierStats};
use plinth_cache::warming::{WarmPlan, WarmStatus, start_warming, warming_status};
use plinth_cache::{CacheKey, Selector, WriteCondition};
use plinth_core::config::{KeyspaceConfig, WarmSpec};
use plinth_core::{Error, HumanDuration};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::extract::{ApiPath, ApiQuery};
use crate::json::ApiJson;
use crate::middleware::auth::Caller;
use crate::problem::{ApiResult, ProblemDocument};
use crate::routes::cache::parse_keyspace;
use crate::routes::pagination::{PageQuery, encode_cursor};
use crate::state::AppState;

/// The most keys one bulk call may name.
const MAX_BULK_ITEMS: usize = 1000;

#[derive(Debug, Serialize, ToSchema)]
pub struct KeyspaceView {
    pub name: String,
    #[schema(value_type = Object)]
    pub config: KeyspaceConfig,
    /// Bumped by every flush; entries of older versions are unreachable.
    pub version: u64,
    /// Unix milliseconds of the last flush (or creation).
    pub version_changed_at_ms: u64,
}

impl From<KeyspaceRecord> for KeyspaceView {
    fn from(record: KeyspaceRecord) -> Self {
        KeyspaceView {
            name: record.name.to_string(),
            config: record.config,
            version: record.version,
            version_changed_at_ms: record.version_changed_at_ms,
        }
    }
}

/// Creates or reconfigures a keyspace.
#[utoipa::path(
    put, path = "/v1/keyspaces/{keyspace}", tag = "cache", security(("bearer" = [])),
    params(("keyspace" = String, Path, description = "Keyspace name")),
    request_body(content = Object, description = "Keyspace configuration: l1, l2, store, default_ttl, max_value_bytes, compression_threshold, encrypt (see docs/CACHE.md)"),
    responses(
        (status = 200, description = "The keyspace", body = KeyspaceView),
        (status = 400, description = "A configuration this node cannot serve", body = ProblemDocument, content_type = "application/problem+json"),
    )
)]
pub async fn put_keyspace(
    State(state): State<AppState>,
    Caller(principal): Caller,
    ApiPath(keyspace): ApiPath<String>,
    ApiJson(config): ApiJson<KeyspaceConfig>,
) -> ApiResult<Json<KeyspaceView>> {
    let keyspace = parse_keyspace(&keyspace)?;
    principal.require("cache", "admin", Some(keyspace.as_str()))?;
    let record = state
        .cache
        .configure(&principal.tenant, &keyspace, config)
        .await?;
    Ok(Json(KeyspaceView::from(record)))
}

/// Reads a keyspace's configuration and version.
#[utoipa::path(
    get, path = "/v1/keyspaces/{keyspace}", tag = "cache", security(("bearer" = [])),
    params(("keyspace" = String, Path, description = "Keyspace name")),
    responses(
        (status = 200, description = "The keyspace", body = KeyspaceView),
        (status = 404, description = "No such keyspace", body = ProblemDocument, content_type = "application/problem+json"),
    )
)]
pub async fn get_keyspace(
    State(state): State<AppState>,
    Caller(principal): Caller,
    ApiPath(keyspace): ApiPath<String>,
) -> ApiResult<Json<KeyspaceView>> {
    let keyspace = parse_keyspace(&keyspace)?;
    principal.require("cache", "read", Some(keyspace.as_str()))?;
    Ok(Json(KeyspaceView::from(
        state.cache.keyspace(&principal.tenant, &keyspace).await?,
    )))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct KeyspacePage {
    pub items: Vec<KeyspaceView>,
    pub next_cursor: Option<String>,
}

/// Lists the tenant's keyspaces.
#[utoipa::path(
    get, path = "/v1/keyspaces", tag = "cache", security(("bearer" = [])),
    params(PageQuery),
    responses((status = 200, description = "A page of keyspaces", body = KeyspacePage))
)]
pub async fn list_keyspaces(
    State(state): State<AppState>,
    Caller(principal): Caller,
    ApiQuery(page): ApiQuery<PageQuery>,
) -> ApiResult<Json<KeyspacePage>> {
    principal.require("cache", "read", None)?;
    let page_size = page.page_size()?;
    let after = page.decoded_cursor()?;
    let mut records = state
        .cache
        .list_keyspaces(&principal.tenant, after.as_deref(), page_size + 1)
        .await?;
    let has_more = records.len() > page_size;
    records.truncate(page_size);
    let next_cursor = if has_more {
        records
            .last()
            .map(|record| encode_cursor(record.name.as_str()))
    } else {
        None
    };
    let mut items = Vec::with_capacity(records.len());
    for record in records {
        items.push(KeyspaceView::from(record));
    }
    Ok(Json(KeyspacePage { items, next_cursor }))
}

/// Flushes a keyspace by bumping its version: instant, every entry becomes
/// unreachable at once and is reclaimed lazily.
#[utoipa::path(
    post, path = "/v1/keyspaces/{keyspace}/flush", tag = "cache", security(("bearer" = [])),
    params(("keyspace" = String, Path, description = "Keyspace name")),
    responses((status = 200, description = "The keyspace at its new version", body = KeyspaceView))
)]
pub async fn flush_keyspace(
    State(state): State<AppState>,
    Caller(principal): Caller,
    ApiPath(keyspace): ApiPath<String>,
) -> ApiResult<Json<KeyspaceView>> {
    let keyspace = parse_keyspace(&keyspace)?;
    principal.require("cache", "admin", Some(keyspace.as_str()))?;
    Ok(Json(KeyspaceView::from(
        state.cache.flush(&principal.tenant, &keyspace).await?,
    )))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InvalidateRequest {
    /// A glob: `*` any run, `?` one character, `\` escapes.
    pub pattern: Option<String>,
    pub prefix: Option<String>,
    pub tag: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct InvalidateResponse {
    /// How many keys went.
    pub removed: u64,
}

/// Removes the keys matching a glob pattern, a prefix or a tag.
#[utoipa::path(
    post, path = "/v1/keyspaces/{keyspace}/invalidate", tag = "cache", security(("bearer" = [])),
    params(("keyspace" = String, Path, description = "Keyspace name")),
    request_body = InvalidateRequest,
    responses(
        (status = 200, description = "How many keys went", body = InvalidateResponse),
        (status = 400, description = "Not exactly one of pattern, prefix, tag; or an invalid pattern", body = ProblemDocument, content_type = "application/problem+json"),
    )
)]
pub async fn invalidate_keys(
    State(state): State<AppState>,
    Caller(principal): Caller,
    ApiPath(keyspace): ApiPath<String>,
    ApiJson(request): ApiJson<InvalidateRequest>,
) -> ApiResult<Json<InvalidateResponse>> {
    let keyspace = parse_keyspace(&keyspace)?;
    principal.require("cache", "write", Some(keyspace.as_str()))?;
    let selector = match (request.pattern, request.prefix, request.tag) {
        (Some(pattern), None, None) => {
            validate_pattern(&pattern)?;
            Selector::Pattern(pattern)
        }
        (None, Some(prefix), None) => Selector::Prefix(prefix),
        (None, None, Some(tag)) => {
            plinth_cache::model::validate_tags(std::slice::from_ref(&tag))?;
            Selector::Tag(tag)
        }
        _ => {
            return Err(Error::invalid_argument(
                "invalid_selector",
                "send exactly one of pattern, prefix or tag",
            )
            .into());
        }
    };
    let removed = state
        .cache
        .invalidate(&principal.tenant, &keyspace, &selector)
        .await?;
    Ok(Json(InvalidateResponse { removed }))
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct KeyListParameters {
    /// Only keys starting with this.
    pub prefix: Option<String>,
    /// Items per page, 1 to 500 (default 50).
    pub limit: Option<usize>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct KeyListPage {
    pub keys: Vec<String>,
    pub next_cursor: Option<String>,
}

/// Lists live keys in key order.
#[utoipa::path(
    get, path = "/v1/keyspaces/{keyspace}/keys", tag = "cache", security(("bearer" = [])),
    params(("keyspace" = String, Path, description = "Keyspace name"), KeyListParameters),
    responses((status = 200, description = "A page of keys", body = KeyListPage))
)]
pub async fn list_keys(
    State(state): State<AppState>,
    Caller(principal): Caller,
    ApiPath(keyspace): ApiPath<String>,
    ApiQuery(parameters): ApiQuery<KeyListParameters>,
) -> ApiResult<Json<KeyListPage>> {
    let keyspace = parse_keyspace(&keyspace)?;
    principal.require("cache", "read", Some(keyspace.as_str()))?;
    let page = PageQuery {
        limit: parameters.limit,
        cursor: parameters.cursor,
    };
    let page_size = page.page_size()?;
    let after = page.decoded_cursor()?;
    let prefix = parameters.prefix.unwrap_or_default();
    let listed = state
        .cache
        .list(
            &principal.tenant,
            &keyspace,
            &prefix,
            after.as_deref(),
            page_size,
        )
        .await?;
    Ok(Json(KeyListPage {
        next_cursor: listed.next_after.as_deref().map(encode_cursor),
        keys: listed.keys,
    }))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct KeyspaceStats {
    pub keyspace: String,
    pub version: u64,
    /// Lookups per tier since this node started.
    pub tiers: Vec<TierStatsView>,
    /// Duration of this node's calls to each tier, per operation, since it
    /// started.
    pub latency: Vec<TierLatencyView>,
    /// This node's L1: entries, bytes (exact, what counts against
    /// max_bytes), evictions, expirations, refusals (values not stored
    /// because they would have gone over max_bytes).
    #[schema(value_type = Object)]
    pub l1: plinth_cache::l1::L1Usage,
}

/// Percentiles are the upper bound of a histogram bucket: at most a third
/// above the true value.
#[derive(Debug, Serialize, ToSchema)]
pub struct TierLatencyView {
    pub tier: String,
    /// `get`, `write` (conditional put, delete or increment at the
    /// authoritative tier), `copy` (into a faster tier) or `invalidate`.
    pub operation: String,
    pub calls: u64,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

impl From<TierLatencyStats> for TierLatencyView {
    fn from(stats: TierLatencyStats) -> Self {
        TierLatencyView {
            tier: stats.tier.to_string(),
            operation: stats.operation.to_string(),
            calls: stats.summary.calls,
            mean_us: stats.summary.mean_us,
            p50_us: stats.summary.p50_us,
            p99_us: stats.summary.p99_us,
            p999_us: stats.summary.p999_us,
            max_us: stats.summary.max_us,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TierStatsView {
    pub tier: String,
    pub hits: u64,
    pub misses: u64,
    pub errors: u64,
    pub hit_ratio: Option<f64>,
}

impl From<TierStats> for TierStatsView {
    fn from(stats: TierStats) -> Self {
        TierStatsView {
            tier: stats.tier.to_string(),
            hits: stats.hits,
            misses: stats.misses,
            errors: stats.errors,
            hit_ratio: stats.hit_ratio,
        }
    }
}

/// Hits, misses and hit ratio per tier, tier call latency, and this node's
/// L1 usage.
#[utoipa::path(
    get, path = "/v1/keyspaces/{keyspace}/stats", tag = "cache", security(("bearer" = [])),
    params(("keyspace" = String, Path, description = "Keyspace name")),
    responses((status = 200, description = "Stats", body = KeyspaceStats))
)]
pub async fn keyspace_stats(
    State(state): State<AppState>,
    Caller(principal): Caller,
    ApiPath(keyspace): ApiPath<String>,
) -> ApiResult<Json<KeyspaceStats>> {
    let keyspace = parse_keyspace(&keyspace)?;
    principal.require("cache", "read", Some(keyspace.as_str()))?;
    let record = state.cache.keyspace(&principal.tenant, &keyspace).await?;
    let keyspace_stats = state.cache.stats().keyspace(&principal.tenant, &keyspace);
    let tiers = keyspace_stats
        .lookups()
        .into_iter()
        .map(TierStatsView::from)
        .collect();
    let latency = keyspace_stats
        .latencies()
        .into_iter()
        .map(TierLatencyView::from)
        .collect();
    Ok(Json(KeyspaceStats {
        keyspace: keyspace.to_string(),
        version: record.version,
        tiers,
        latency,
        l1: state.cache.l1().usage(&principal.tenant, &keyspace),
    }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkKeys {
    pub keys: Vec<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BulkGetItem {
    pub key: String,
    pub found: bool,
    /// The value as UTF-8 text when it is valid UTF-8.
    pub value: Option<String>,
    /// The value as base64 when it is not valid UTF-8.
    pub value_base64: Option<String>,
    pub content_type: Option<String>,
    pub etag: Option<String>,
}

fn check_bulk_size(count: usize) -> Result<(), Error> {
    if count == 0 || count > MAX_BULK_ITEMS {
        return Err(Error::invalid_argument(
            "invalid_bulk",
            format!("a bulk call takes 1 to {MAX_BULK_ITEMS} items"),
        ));
    }
    Ok(())
}

fn parse_keys(texts: &[String]) -> Result<Vec<CacheKey>, Error> {
    let mut keys = Vec::with_capacity(texts.len());
    for text in texts {
        keys.push(CacheKey::parse(text)?);
    }
    Ok(keys)
}

/// Reads many keys (eventual consistency).
#[utoipa::path(
    post, path = "/v1/keyspaces/{keyspace}/bulk-get", tag = "cache", security(("bearer" = [])),
    params(("keyspace" = String, Path, description = "Keyspace name")),
    request_body = BulkKeys,
    responses((status = 200, description = "One item per key, in order", body = Vec<BulkGetItem>))
)]
pub async fn bulk_get(
    State(state): State<AppState>,
    Caller(principal): Caller,
    ApiPath(keyspace): ApiPath<String>,
    ApiJson(request): ApiJson<BulkKeys>,
) -> ApiResult<Json<Vec<BulkGetItem>>> {
    let keyspace = parse_keyspace(&keyspace)?;
    principal.require("cache", "read", Some(keyspace.as_str()))?;
    check_bulk_size(request.keys.len())?;
    let keys = parse_keys(&request.keys)?;
    let mut items = Vec::with_capacity(keys.len());
    for key in keys {
        let read = state
            .cache
            .get(&principal.tenant, &keyspace, &key, Consistency::Eventual)
            .await?;
        let item = match read {
            None => BulkGetItem {
                key: key.as_str().to_string(),
                found: false,
                value: None,
                value_base64: None,
                content_type: None,
                etag: None,
            },
            Some(read) => {
                let (value, value_base64) = match std::str::from_utf8(&read.entry.value) {
                    Ok(text) => (Some(text.to_string()), None),
                    Err(_) => (None, Some(STANDARD.encode(&read.entry.value))),
                };
                BulkGetItem {
                    key: key.as_str().to_string(),
                    found: true,
                    value,
                    value_base64,
                    content_type: Some(read.entry.content_type),
                    etag: Some(etag_of(read.entry.revision)),
                }
            }
        };
        items.push(item);
    }
    Ok(Json(items))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkPutItem {
    pub key: String,
    /// The value as text; or use `value_base64` for bytes.
    pub value: Option<String>,
    pub value_base64: Option<String>,
    pub content_type: Option<String>,
    #[schema(value_type = Option<String>)]
    pub ttl: Option<HumanDuration>,
    #[serde(default)]
    pub tags: Vec<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkPutRequest {
    pub items: Vec<BulkPutItem>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BulkPutResult {
    pub key: String,
    pub etag: String,
}

/// Writes many keys. Every item is checked before any is written; writes
/// are then applied one by one (not as one transaction).
#[utoipa::path(
    post, path = "/v1/keyspaces/{keyspace}/bulk-put", tag = "cache", security(("bearer" = [])),
    params(("keyspace" = String, Path, description = "Keyspace name")),
    request_body = BulkPutRequest,
    responses((status = 200, description = "The new ETag of each key, in order", body = Vec<BulkPutResult>))
)]
pub async fn bulk_put(
    State(state): State<AppState>,
    Caller(principal): Caller,
    ApiPath(keyspace): ApiPath<String>,
    ApiJson(request): ApiJson<BulkPutRequest>,
) -> ApiResult<Json<Vec<BulkPutResult>>> {
    let keyspace = parse_keyspace(&keyspace)?;
    principal.require("cache", "write", Some(keyspace.as_str()))?;
    check_bulk_size(request.items.len())?;
    let mut prepared = Vec::with_capacity(request.items.len());
    for item in request.items {
        prepared.push(prepare_bulk_item(item)?);
    }
    let mut keys = Vec::with_capacity(prepared.len());
    for (key, _) in &prepared {
        keys.push(key.as_str().to_string());
    }
    let revisions = state
        .cache
        .put_many(&principal.tenant, &keyspace, prepared)
        .await?;
    let mut results = Vec::with_capacity(keys.len());
    for (key, revision) in keys.into_iter().zip(revisions) {
        results.push(BulkPutResult {
            key,
            etag: etag_of(revision),
        });
    }
    Ok(Json(results))
}

fn prepare_bulk_item(item: BulkPutItem) -> Result<(CacheKey, CacheWrite), Error> {
    let key = CacheKey::parse(&item.key)?;
    let value = match (item.value, item.value_base64) {
        (Some(text), None) => bytes::Bytes::from(text),
        (None, Some(encoded)) => bytes::Bytes::from(STANDARD.decode(encoded).map_err(|_| {
            Error::invalid_argument(
                "invalid_bulk",
                format!("value_base64 of `{}` is not base64", key.as_str()),
            )
        })?),
        _ => {
            return Err(Error::invalid_argument(
                "invalid_bulk",
                format!(
                    "item `{}` needs exactly one of value or value_base64",
                    key.as_str()
                ),
            ));
        }
    };
    if let Some(ttl) = item.ttl
        && ttl.as_duration().is_zero()
    {
        return Err(Error::invalid_argument(
            "invalid_ttl",
            "ttl must be above zero",
        ));
    }
    plinth_cache::model::validate_tags(&item.tags)?;
    Ok((
        key,
        CacheWrite {
            value,
            content_type: item
                .content_type
                .unwrap_or_else(|| "application/octet-stream".to_string()),
            ttl: item.ttl.map(HumanDuration::as_duration),
            tags: item.tags,
            condition: WriteCondition::Always,
        },
    ))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BulkDeleteResponse {
    /// How many of the keys existed.
    pub deleted: u64,
}

/// Deletes many keys.
#[utoipa::path(
    post, path = "/v1/keyspaces/{keyspace}/bulk-delete", tag = "cache", security(("bearer" = [])),
    params(("keyspace" = String, Path, description = "Keyspace name")),
    request_body = BulkKeys,
    responses((status = 200, description = "How many existed", body = BulkDeleteResponse), (status = 400, description = "Invalid keys", body = ProblemDocument, content_type = "application/problem+json"))
)]
pub async fn bulk_delete(
    State(state): State<AppState>,
    Caller(principal): Caller,
    ApiPath(keyspace): ApiPath<String>,
    ApiJson(request): ApiJson<BulkKeys>,
) -> ApiResult<Json<BulkDeleteResponse>> {
    let keyspace = parse_keyspace(&keyspace)?;
    principal.require("cache", "write", Some(keyspace.as_str()))?;
    check_bulk_size(request.keys.len())?;
    let keys = parse_keys(&request.keys)?;
    let mut deleted = 0;
    for key in keys {
        if state
            .cache
            .delete(&principal.tenant, &keyspace, &key, WriteCondition::Always)
            .await?
            .is_some()
        {
            deleted += 1;
        }
    }
    Ok(Json(BulkDeleteResponse { deleted }))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WarmStatusView {
    /// `idle` (no warming of this keyspace on this node since it started),
    /// `running`, `done` or `failed`.
    pub state: String,
    /// Keys selected so far: listed under the prefix, or given by name.
    pub requested: u64,
    /// Selected keys copied into the faster tiers.
    pub loaded: u64,
    /// Selected keys the store (or Redis) did not hold.
    pub missing: u64,
    pub started_at_ms: Option<u64>,
    pub finished_at_ms: Option<u64>,
    /// Why the warming failed.
    pub error: Option<String>,
    /// The keyspace's lookups per tier from the start of the warming to its
    /// end (or to now while it runs), with their hit ratio.
    pub tiers: Vec<TierStatsView>,
}

impl From<WarmStatus> for WarmStatusView {
    fn from(status: WarmStatus) -> Self {
        let mut tiers = Vec::with_capacity(status.tiers.len());
        for stats in status.tiers {
            tiers.push(TierStatsView::from(stats));
        }
        WarmStatusView {
            state: status.state.as_str().to_string(),
            requested: status.requested,
            loaded: status.loaded,
            missing: status.missing,
            started_at_ms: status.started_at_ms,
            finished_at_ms: status.finished_at_ms,
            error: status.error,
            tiers,
        }
    }
}

/// Starts loading keys from the keyspace's store (or Redis) into its faster
/// tiers on this node, in the background.
#[utoipa::path(
    post, path = "/v1/keyspaces/{keyspace}/warm", tag = "cache", security(("bearer" = [])),
    params(("keyspace" = String, Path, description = "Keyspace name")),
    request_body(content = Object, description = "Exactly one of `{\"prefix\": \"user:\"}`, `{\"keys\": [\"a\", \"b\"]}` or `{\"all\": true}`, plus `max_keys` (default 10000, at most 1000000)"),
    responses(
        (status = 202, description = "The warming started; follow it with GET", body = WarmStatusView),
        (status = 400, description = "Not exactly one of prefix, keys, all; max_keys out of bounds; an invalid key; or nothing to warm (no store or Redis to load from, no faster tier to fill)", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 404, description = "No such keyspace", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 409, description = "A warming of this keyspace is running (warming_in_progress)", body = ProblemDocument, content_type = "application/problem+json"),
    )
)]
pub async fn warm_keyspace(
    State(state): State<AppState>,
    Caller(principal): Caller,
    ApiPath(keyspace): ApiPath<String>,
    ApiJson(spec): ApiJson<WarmSpec>,
) -> ApiResult<(StatusCode, Json<WarmStatusView>)> {
    let keyspace = parse_keyspace(&keyspace)?;
    principal.require("cache", "admin", Some(keyspace.as_str()))?;
    let plan = WarmPlan::from_spec(&spec)?;
    let status = start_warming(&state.cache, &principal.tenant, &keyspace, plan).await?;
    Ok((StatusCode::ACCEPTED, Json(WarmStatusView::from(status))))
}

/// The keyspace's last warming on this node: progress, and the hit ratio
/// per tier while it ran.
#[utoipa::path(
    get, path = "/v1/keyspaces/{keyspace}/warm", tag = "cache", security(("bearer" = [])),
    params(("keyspace" = String, Path, description = "Keyspace name")),
    responses(
        (status = 200, description = "The warming status", body = WarmStatusView),
        (status = 404, description = "No such keyspace", body = ProblemDocument, content_type = "application/problem+json"),
    )
)]
pub async fn get_warming_status(
    State(state): State<AppState>,
    Caller(principal): Caller,
    ApiPath(keyspace): ApiPath<String>,
) -> ApiResult<Json<WarmStatusView>> {
    let keyspace = parse_keyspace(&keyspace)?;
    principal.require("cache", "read", Some(keyspace.as_str()))?;
    let status = warming_status(&state.cache, &principal.tenant, &keyspace).await?;
    Ok(Json(WarmStatusView::from(status)))
}
