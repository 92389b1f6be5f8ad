//! `GET /v1/whoami`: the caller's tenant and scopes. The cheapest
//! authenticated route, and the one `plinth bench http` drives.

use axum::Json;
use axum::response::{IntoResponse, Response};
use plinth_control::ScopeSet;
use serde::Serialize;
use utoipa::ToSchema;

use crate::middleware::auth::Caller;
use crate::problem::ProblemDocument;

// Borrowed from the caller's principal, so answering copies nothing but
// the JSON. (A `///` comment here would become the schema's description.)
#[derive(Debug, Serialize, ToSchema)]
pub struct WhoAmI<'principal> {
    pub tenant: &'principal str,
    #[schema(value_type = Vec<String>)]
    pub scopes: &'principal ScopeSet,
    /// The credential, as it appears in the audit log (`key:<id>`, `jwt:<sub>`, `bootstrap`, `dev`).
    pub actor: &'principal str,
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
pub async fn get_whoami(Caller(principal): Caller) -> Response {
    Json(WhoAmI {
        tenant: principal.tenant.as_str(),
        scopes: &principal.scopes,
        actor: &principal.actor,
    })
    .into_response()
}
