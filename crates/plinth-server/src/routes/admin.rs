//! `/v1/admin`: tenants, any tenant's keys, and the audit log. Every route
//! needs the `admin` scope, and every change is written to the audit log.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use plinth_control::{AuditEntry, AuditOutcome, AuditQuery, Principal, TenantRecord};
use plinth_core::{Error, TenantId};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::{IntoParams, ToSchema};

use crate::audit::RequestOrigin;
use crate::extract::{ApiPath, ApiQuery};
use crate::json::ApiJson;
use crate::middleware::auth::Caller;
use crate::problem::{ApiResult, ProblemDocument};
use crate::routes::keys::{
    CreateKeyRequest, CreatedKey, KeyView, create_key_for, list_keys_of, revoke_key_of,
};
use crate::routes::pagination::{MAX_PAGE_SIZE, Page, PageQuery, page_from};
use crate::state::AppState;

const MAX_DISPLAY_NAME_LENGTH: usize = 200;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTenantRequest {
    /// 1 to 63 characters of `a-z`, `0-9`, `-`, `_`, starting with a letter or digit.
    pub id: String,
    /// A label for humans; defaults to the id.
    pub display_name: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TenantView {
    pub id: String,
    pub display_name: String,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
}

impl From<TenantRecord> for TenantView {
    fn from(record: TenantRecord) -> Self {
        TenantView {
            id: record.id.to_string(),
            display_name: record.display_name,
            created_at: record.created_at,
        }
    }
}

pub fn require_admin(principal: &Principal) -> Result<(), Error> {
    if principal.scopes.is_admin() {
        return Ok(());
    }
    Err(Error::permission_denied(
        "admin routes need the `admin` scope",
    ))
}

fn parse_tenant_path(tenant: &str) -> Result<TenantId, Error> {
    TenantId::parse(tenant)
}

/// Creates a tenant.
#[utoipa::path(
    post, path = "/v1/admin/tenants", tag = "admin", security(("bearer" = [])),
    request_body = CreateTenantRequest,
    responses(
        (status = 201, description = "Created", body = TenantView),
        (status = 400, description = "Invalid tenant id", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 403, description = "Needs `admin`", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 409, description = "The tenant exists", body = ProblemDocument, content_type = "application/problem+json"),
    )
)]
pub async fn create_tenant(
    State(state): State<AppState>,
    Caller(principal): Caller,
    origin: RequestOrigin,
    ApiJson(request): ApiJson<CreateTenantRequest>,
) -> ApiResult<(StatusCode, Json<TenantView>)> {
    require_admin(&principal)?;
    let tenant = TenantId::parse(&request.id)?;
    let display_name = request.display_name.unwrap_or_else(|| tenant.to_string());
    if display_name.chars().count() > MAX_DISPLAY_NAME_LENGTH
        || display_name.chars().any(char::is_control)
    {
        return Err(Error::invalid_argument(
            "invalid_display_name",
            "display_name must be at most 200 printable characters",
        )
        .into());
    }
    let record = state.control.create_tenant(&tenant, &display_name).await?;
    state
        .audit
        .record_action(
            &principal,
            "tenant.create",
            tenant.as_str(),
            AuditOutcome::Success,
            &origin,
            "",
        )
        .await;
    Ok((StatusCode::CREATED, Json(TenantView::from(record))))
}

/// Lists tenants in id order.
#[utoipa::path(
    get, path = "/v1/admin/tenants", tag = "admin", security(("bearer" = [])),
    params(PageQuery),
    responses((status = 200, description = "A page of tenants", body = Page<TenantView>))
)]
pub async fn list_tenants(
    State(state): State<AppState>,
    Caller(principal): Caller,
    ApiQuery(page): ApiQuery<PageQuery>,
) -> ApiResult<Json<Page<TenantView>>> {
    require_admin(&principal)?;
    let page_size = page.page_size()?;
    let after = match page.decoded_cursor()? {
        Some(text) => Some(TenantId::parse(&text)?),
        None => None,
    };
    let fetched = state
        .control
        .list_tenants(after.as_ref(), page_size + 1)
        .await?;
    Ok(Json(page_from(
        fetched,
        page_size,
        |record| record.id.to_string(),
        TenantView::from,
    )))
}

/// Reads one tenant.
#[utoipa::path(
    get, path = "/v1/admin/tenants/{tenant}", tag = "admin", security(("bearer" = [])),
    params(("tenant" = String, Path, description = "Tenant id")),
    responses(
        (status = 200, description = "The tenant", body = TenantView),
        (status = 404, description = "No such tenant", body = ProblemDocument, content_type = "application/problem+json"),
    )
)]
pub async fn get_tenant(
    State(state): State<AppState>,
    Caller(principal): Caller,
    ApiPath(tenant): ApiPath<String>,
) -> ApiResult<Json<TenantView>> {
    require_admin(&principal)?;
    let tenant = parse_tenant_path(&tenant)?;
    match state.control.get_tenant(&tenant).await? {
        Some(record) => Ok(Json(TenantView::from(record))),
        None => Err(Error::not_found("tenant_not_found", format!("no tenant `{tenant}`")).into()),
    }
}

/// Deletes a tenant and its keys.
#[utoipa::path(
    delete, path = "/v1/admin/tenants/{tenant}", tag = "admin", security(("bearer" = [])),
    params(("tenant" = String, Path, description = "Tenant id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 409, description = "The `default` tenant cannot be deleted", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 404, description = "No such tenant", body = ProblemDocument, content_type = "application/problem+json"),
    )
)]
pub async fn delete_tenant(
    State(state): State<AppState>,
    Caller(principal): Caller,
    origin: RequestOrigin,
    ApiPath(tenant): ApiPath<String>,
) -> ApiResult<StatusCode> {
    require_admin(&principal)?;
    let tenant = parse_tenant_path(&tenant)?;
    if tenant.as_str() == TenantId::DEFAULT {
        return Err(Error::conflict(
            "tenant_protected",
            "the `default` tenant is used by the bootstrap key and dev mode and cannot be deleted",
        )
        .into());
    }
    state.control.delete_tenant(&tenant).await?;
    state.authenticator.forget_tenant(&tenant);
    state
        .audit
        .record_action(
            &principal,
            "tenant.delete",
            tenant.as_str(),
            AuditOutcome::Success,
            &origin,
            "",
        )
        .await;
    Ok(StatusCode::NO_CONTENT)
}

async fn require_tenant_exists(state: &AppState, tenant: &TenantId) -> Result<(), Error> {
    if state.control.get_tenant(tenant).await?.is_some() {
        return Ok(());
    }
    Err(Error::not_found(
        "tenant_not_found",
        format!("no tenant `{tenant}`"),
    ))
}

/// Creates a key for any tenant.
#[utoipa::path(
    post, path = "/v1/admin/tenants/{tenant}/keys", tag = "admin", security(("bearer" = [])),
    params(("tenant" = String, Path, description = "Tenant id")),
    request_body = CreateKeyRequest,
    responses(
        (status = 201, description = "The key, with its secret shown once", body = CreatedKey),
        (status = 404, description = "No such tenant", body = ProblemDocument, content_type = "application/problem+json"),
    )
)]
pub async fn create_tenant_key(
    State(state): State<AppState>,
    Caller(principal): Caller,
    origin: RequestOrigin,
    ApiPath(tenant): ApiPath<String>,
    ApiJson(request): ApiJson<CreateKeyRequest>,
) -> ApiResult<Response> {
    require_admin(&principal)?;
    let tenant = parse_tenant_path(&tenant)?;
    create_key_for(&state, &principal, &tenant, request, &origin).await
}

/// Lists any tenant's keys.
#[utoipa::path(
    get, path = "/v1/admin/tenants/{tenant}/keys", tag = "admin", security(("bearer" = [])),
    params(("tenant" = String, Path, description = "Tenant id"), PageQuery),
    responses((status = 200, description = "A page of keys", body = Page<KeyView>))
)]
pub async fn list_tenant_keys(
    State(state): State<AppState>,
    Caller(principal): Caller,
    ApiPath(tenant): ApiPath<String>,
    ApiQuery(page): ApiQuery<PageQuery>,
) -> ApiResult<Json<Page<KeyView>>> {
    require_admin(&principal)?;
    let tenant = parse_tenant_path(&tenant)?;
    require_tenant_exists(&state, &tenant).await?;
    Ok(Json(list_keys_of(&state, &tenant, &page).await?))
}

/// Revokes any tenant's key.
#[utoipa::path(
    delete, path = "/v1/admin/tenants/{tenant}/keys/{key_id}", tag = "admin", security(("bearer" = [])),
    params(("tenant" = String, Path, description = "Tenant id"), ("key_id" = String, Path, description = "Key id")),
    responses(
        (status = 200, description = "The revoked key", body = KeyView),
        (status = 404, description = "No such key in that tenant", body = ProblemDocument, content_type = "application/problem+json"),
    )
)]
pub async fn revoke_tenant_key(
    State(state): State<AppState>,
    Caller(principal): Caller,
    origin: RequestOrigin,
    ApiPath((tenant, key_id)): ApiPath<(String, String)>,
) -> ApiResult<Json<KeyView>> {
    require_admin(&principal)?;
    let tenant = parse_tenant_path(&tenant)?;
    revoke_key_of(&state, &principal, &tenant, &key_id, &origin).await
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditParameters {
    /// Only this action (`tenant.create`, `key.revoke`, `auth.failure`, ...).
    pub action: Option<String>,
    /// Only this outcome: `success`, `denied` or `failure`.
    pub outcome: Option<String>,
    /// Items per page, 1 to 500 (default 50).
    pub limit: Option<usize>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// Reads the audit log, newest first.
#[utoipa::path(
    get, path = "/v1/admin/audit", tag = "admin", security(("bearer" = [])),
    params(AuditParameters),
    responses((status = 200, description = "A page of audit entries, newest first", body = Page<Object>))
)]
pub async fn list_audit(
    State(state): State<AppState>,
    Caller(principal): Caller,
    ApiQuery(parameters): ApiQuery<AuditParameters>,
) -> ApiResult<Json<Page<AuditEntry>>> {
    require_admin(&principal)?;
    let page = PageQuery {
        limit: parameters.limit,
        cursor: parameters.cursor,
    };
    let page_size = page.page_size()?;
    let before_sequence = match page.decoded_cursor()? {
        None => None,
        Some(text) => Some(text.parse::<i64>().map_err(|_| {
            Error::invalid_argument("invalid_cursor", "cursor is not one this server handed out")
        })?),
    };
    let outcome = match parameters.outcome.as_deref() {
        None => None,
        Some(text) => Some(AuditOutcome::parse(text).ok_or_else(|| {
            Error::invalid_argument(
                "invalid_outcome",
                "outcome must be `success`, `denied` or `failure`",
            )
        })?),
    };
    let fetched = state
        .control
        .list_audit(AuditQuery {
            before_sequence,
            action: parameters.action,
            outcome,
            limit: (page_size + 1).min(MAX_PAGE_SIZE + 1),
        })
        .await?;
    Ok(Json(page_from(
        fetched,
        page_size,
        |entry| entry.sequence.to_string(),
        |entry| entry,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::pagination::encode_cursor;

    #[test]
    fn cursors_round_trip() {
        let query = PageQuery {
            limit: None,
            cursor: Some(encode_cursor("acme")),
        };
        assert_eq!(query.decoded_cursor().unwrap().as_deref(), Some("acme"));
    }
}
