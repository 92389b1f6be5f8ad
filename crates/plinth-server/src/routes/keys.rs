//! API keys: a tenant manages its own under `/v1/keys` (scopes `keys:read`
//! and `keys:write`, and only keys no stronger than the caller's own
//! credential); admins manage any tenant's under `/v1/admin/tenants/{tenant}/keys`.
//! A key's secret is in the creation response and nowhere else.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use plinth_control::{ApiKeyRecord, AuditOutcome, GeneratedApiKey, NewApiKey, Principal, ScopeSet};
use plinth_core::{Error, HumanDuration, TenantId};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;

use crate::audit::RequestOrigin;
use crate::extract::{ApiPath, ApiQuery};
use crate::idempotency::ReplayBody;
use crate::json::ApiJson;
use crate::middleware::auth::Caller;
use crate::problem::{ApiResult, ProblemDocument};
use crate::routes::pagination::{Page, PageQuery, page_from};
use crate::state::AppState;

const MAX_KEY_NAME_LENGTH: usize = 100;
const MAX_KEY_TTL: std::time::Duration = std::time::Duration::from_secs(10 * 365 * 24 * 3600);

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKeyRequest {
    /// A label for humans, 1 to 100 characters.
    pub name: String,
    /// Scopes such as `cache:read` or `events:write:orders-*`.
    pub scopes: Vec<String>,
    /// Lifetime such as `30d`; absent means the key never expires.
    #[schema(value_type = Option<String>, example = "90d")]
    pub ttl: Option<HumanDuration>,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct KeyView {
    pub id: String,
    pub tenant: String,
    pub name: String,
    pub scopes: Vec<String>,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub revoked_at: Option<OffsetDateTime>,
}

impl From<ApiKeyRecord> for KeyView {
    fn from(record: ApiKeyRecord) -> Self {
        KeyView {
            id: record.id,
            tenant: record.tenant.to_string(),
            name: record.name,
            scopes: record.scopes.to_strings(),
            created_at: record.created_at,
            expires_at: record.expires_at,
            revoked_at: record.revoked_at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedKey {
    #[serde(flatten)]
    pub key: KeyView,
    /// The key to send as `Authorization: Bearer <secret>`. Shown only in
    /// this response: store it now. A replay of this request through
    /// `Idempotency-Key` omits it.
    pub secret: Option<String>,
}

/// Lists the caller's own tenant's keys.
#[utoipa::path(
    get, path = "/v1/keys", tag = "keys", security(("bearer" = [])),
    params(PageQuery),
    responses(
        (status = 200, description = "A page of keys", body = Page<KeyView>),
        (status = 403, description = "Needs `keys:read`", body = ProblemDocument, content_type = "application/problem+json"),
    )
)]
pub async fn list_own_keys(
    State(state): State<AppState>,
    Caller(principal): Caller,
    ApiQuery(page): ApiQuery<PageQuery>,
) -> ApiResult<Json<Page<KeyView>>> {
    principal.require("keys", "read", None)?;
    Ok(Json(list_keys_of(&state, &principal.tenant, &page).await?))
}

/// Creates a key in the caller's own tenant, with scopes no wider than the caller's.
#[utoipa::path(
    post, path = "/v1/keys", tag = "keys", security(("bearer" = [])),
    request_body = CreateKeyRequest,
    responses(
        (status = 201, description = "The key, with its secret shown once", body = CreatedKey),
        (status = 403, description = "Needs `keys:write` and scopes covering the new key's", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 422, description = "Body of the wrong shape", body = ProblemDocument, content_type = "application/problem+json"),
    )
)]
pub async fn create_own_key(
    State(state): State<AppState>,
    Caller(principal): Caller,
    origin: RequestOrigin,
    ApiJson(request): ApiJson<CreateKeyRequest>,
) -> ApiResult<Response> {
    principal.require("keys", "write", None)?;
    let tenant = principal.tenant.clone();
    create_key_for(&state, &principal, &tenant, request, &origin).await
}

/// Reads one of the caller's tenant's keys. Another tenant's key is 404.
#[utoipa::path(
    get, path = "/v1/keys/{key_id}", tag = "keys", security(("bearer" = [])),
    params(("key_id" = String, Path, description = "Key id")),
    responses(
        (status = 200, description = "The key (never its secret)", body = KeyView),
        (status = 404, description = "No such key in this tenant", body = ProblemDocument, content_type = "application/problem+json"),
    )
)]
pub async fn get_own_key(
    State(state): State<AppState>,
    Caller(principal): Caller,
    ApiPath(key_id): ApiPath<String>,
) -> ApiResult<Json<KeyView>> {
    principal.require("keys", "read", None)?;
    let record = find_key_of(&state, &principal.tenant, &key_id).await?;
    Ok(Json(KeyView::from(record)))
}

/// Revokes one of the caller's tenant's keys. Another tenant's key is 404.
#[utoipa::path(
    delete, path = "/v1/keys/{key_id}", tag = "keys", security(("bearer" = [])),
    params(("key_id" = String, Path, description = "Key id")),
    responses(
        (status = 200, description = "The revoked key", body = KeyView),
        (status = 404, description = "No such key in this tenant", body = ProblemDocument, content_type = "application/problem+json"),
    )
)]
pub async fn revoke_own_key(
    State(state): State<AppState>,
    Caller(principal): Caller,
    origin: RequestOrigin,
    ApiPath(key_id): ApiPath<String>,
) -> ApiResult<Json<KeyView>> {
    principal.require("keys", "write", None)?;
    let tenant = principal.tenant.clone();
    revoke_key_of(&state, &principal, &tenant, &key_id, &origin).await
}

pub async fn list_keys_of(
    state: &AppState,
    tenant: &TenantId,
    page: &PageQuery,
) -> Result<Page<KeyView>, Error> {
    let page_size = page.page_size()?;
    let after_id = page.decoded_cursor()?;
    let fetched = state
        .control
        .list_api_keys(tenant, after_id.as_deref(), page_size + 1)
        .await?;
    Ok(page_from(
        fetched,
        page_size,
        |record| record.id.clone(),
        KeyView::from,
    ))
}

pub async fn find_key_of(
    state: &AppState,
    tenant: &TenantId,
    key_id: &str,
) -> Result<ApiKeyRecord, Error> {
    let record = state.control.get_api_key(key_id).await?;
    match record {
        Some(record) if &record.tenant == tenant => Ok(record),
        // Another tenant's key is reported exactly like a missing one.
        _ => Err(Error::not_found(
            "key_not_found",
            format!("no key `{}` in this tenant", short(key_id)),
        )),
    }
}

pub async fn create_key_for(
    state: &AppState,
    principal: &Principal,
    tenant: &TenantId,
    request: CreateKeyRequest,
    origin: &RequestOrigin,
) -> ApiResult<Response> {
    let name = request.name.trim().to_string();
    if name.is_empty()
        || name.chars().count() > MAX_KEY_NAME_LENGTH
        || name.chars().any(char::is_control)
    {
        return Err(Error::invalid_argument(
            "invalid_key_name",
            "name must be 1 to 100 printable characters",
        )
        .into());
    }
    let scopes = ScopeSet::parse_all(request.scopes.iter().map(String::as_str))?;
    if !principal.scopes.covers(&scopes) {
        return Err(Error::permission_denied(
            "a credential can only create keys whose scopes its own scopes cover",
        )
        .into());
    }
    let expires_at = match request.ttl {
        None => None,
        Some(ttl) => {
            let ttl = ttl.as_duration();
            if ttl.is_zero() || ttl > MAX_KEY_TTL {
                return Err(Error::invalid_argument(
                    "invalid_ttl",
                    "ttl must be between 1s and 3650d",
                )
                .into());
            }
            Some(OffsetDateTime::now_utc() + ttl)
        }
    };
    let generated = GeneratedApiKey::generate();
    let record = state
        .control
        .create_api_key(NewApiKey {
            id: generated.id.clone(),
            tenant: tenant.clone(),
            name,
            scopes,
            secret_sha256: generated.secret_sha256,
            expires_at,
        })
        .await?;
    state
        .audit
        .record_action(
            principal,
            "key.create",
            &format!("{tenant}/{}", record.id),
            AuditOutcome::Success,
            origin,
            "",
        )
        .await;
    let view = KeyView::from(record);
    let replay_body = serde_json::to_vec(&CreatedKey {
        key: view.clone(),
        secret: None,
    })
    .map_err(|error| Error::internal(error.to_string()))?;
    let created = CreatedKey {
        key: view,
        secret: Some(generated.secret.reveal().to_string()),
    };
    let mut response = (StatusCode::CREATED, Json(created)).into_response();
    response
        .extensions_mut()
        .insert(ReplayBody(Bytes::from(replay_body)));
    Ok(response)
}

pub async fn revoke_key_of(
    state: &AppState,
    principal: &Principal,
    tenant: &TenantId,
    key_id: &str,
    origin: &RequestOrigin,
) -> ApiResult<Json<KeyView>> {
    let record = state.control.revoke_api_key(tenant, key_id).await?;
    state.authenticator.forget_key(key_id);
    state
        .audit
        .record_action(
            principal,
            "key.revoke",
            &format!("{tenant}/{key_id}"),
            AuditOutcome::Success,
            origin,
            "",
        )
        .await;
    Ok(Json(KeyView::from(record)))
}

fn short(text: &str) -> String {
    text.chars()
        .take(64)
        .collect::<String>()
        .escape_debug()
        .to_string()
}
