//! `GET /v1/whoami`: the caller's tenant and scopes. The cheapest
//! authenticated route, and the one `plinth bench http` drives.

use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use crate::middleware::auth::Caller;
use crate::problem::ProblemDocument;

#[derive(Debug, Serialize, ToSchema)]
pub struct WhoAmI {
    pub tenant: String,
    pub scopes: Vec<String>,
    /// The credential, as it appears in the audit log (`key:<id>`, `jwt:<sub>`, `bootstrap`, `dev`).
    pub actor: String,
}

/// Who the server thinks the caller is.
#[utoipa::path(
    get,
    path = "/v1/whoami",
    tag = "auth",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The caller's tenant and scopes", body = WhoAmI),
        (status = 401, description = "Missing or invalid credentials", body = ProblemDocument, content_type = "application/problem+json"),
    )
)]
pub async fn get_whoami(Caller(principal): Caller) -> Json<WhoAmI> {
    Json(WhoAmI {
        tenant: principal.tenant.to_string(),
        scopes: principal.scopes.to_strings(),
        actor: principal.actor.clone(),
    })
}
