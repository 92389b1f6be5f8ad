//! `/v1/all`: a tenant's global log, every stream's events in commit order
//! at gapless positions, filtered by stream prefix and event types, paged
//! in both directions and readable as of a point in time; and
//! `/v1/admin/events/scavenge`, which removes what retention and deletion
//! already hide. Scopes: `events:read` (or one covering the prefix) and
//! `admin`.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use plinth_events::{AllFilter, ReadAllRequest, ReadDirection, RecordedEvent};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::events_block::ScavengeStatus;
use crate::extract::ApiQuery;
use crate::middleware::auth::Caller;
use crate::problem::{ApiResult, ProblemDocument};
use crate::routes::admin::require_admin;
use crate::routes::event_queries::{
    CursorKind, encode_cursor, event_type_list, point_in_time, read_limit, require_log_scope,
    starting_point,
};
use crate::state::AppState;

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ReadLogParameters {
    /// `forward` (default) or `backward`.
    #[param(value_type = Option<String>)]
    pub direction: Option<ReadDirection>,
    /// First position returned (inclusive); default the start (forward)
    /// or the head (backward).
    pub from_position: Option<u64>,
    /// Events per page (default 100), lowered to `events.max_read_count`.
    pub limit: Option<usize>,
    /// The `next_cursor` of the previous page (instead of from_position).
    pub cursor: Option<String>,
    /// Only streams whose name starts with this.
    pub stream_prefix: Option<String>,
    /// Only these event types, comma-separated.
    pub event_types: Option<String>,
    /// Only events at or before this global position.
    pub as_of_position: Option<u64>,
    /// Only events recorded at or before this RFC 3339 instant.
    pub as_of_time: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LogPage {
    #[schema(value_type = Vec<Object>)]
    pub events: Vec<RecordedEvent>,
    /// Pass as `cursor` (same direction) for the next page; absent at the end.
    pub next_cursor: Option<String>,
    /// The tenant's last committed position; absent while its log is empty.
    pub head_position: Option<u64>,
}

/// Reads the tenant's global log, a page at a time.
#[utoipa::path(
    get, path = "/v1/all", tag = "events", security(("bearer" = [])),
    params(ReadLogParameters),
    responses(
        (status = 200, description = "A page of events in position order", body = LogPage),
        (status = 400, description = "A bad cursor, limit, position, filter or point in time", body = ProblemDocument, content_type = "application/problem+json"),
    )
)]
pub async fn read_log(
    State(state): State<AppState>,
    Caller(principal): Caller,
    ApiQuery(parameters): ApiQuery<ReadLogParameters>,
) -> ApiResult<Json<LogPage>> {
    require_log_scope(&principal, parameters.stream_prefix.as_deref())?;
    let direction = parameters.direction.unwrap_or_default();
    let from_position = starting_point(
        CursorKind::Log,
        direction,
        parameters.cursor.as_deref(),
        parameters.from_position,
        "from_position",
    )?;
    let request = ReadAllRequest {
        direction,
        from_position,
        limit: read_limit(parameters.limit, state.events.store.config())?,
        filter: AllFilter {
            stream_prefix: parameters.stream_prefix,
            event_types: event_type_list(parameters.event_types.as_deref()),
        },
        as_of: point_in_time(parameters.as_of_position, parameters.as_of_time.as_deref())?,
    };
    let slice = state
        .events
        .store
        .read_all(&principal.tenant, &request)
        .await?;
    Ok(Json(LogPage {
        events: slice.events,
        next_cursor: slice
            .next_position
            .map(|next| encode_cursor(CursorKind::Log, direction, next)),
        head_position: slice.head_position,
    }))
}

/// Starts a scavenge of every tenant's hidden events on this node.
#[utoipa::path(
    post, path = "/v1/admin/events/scavenge", tag = "admin", security(("bearer" = [])),
    responses(
        (status = 202, description = "Started; follow it with GET", body = ScavengeStatus),
        (status = 409, description = "A scavenge is already running (`scavenge_running`)", body = ProblemDocument, content_type = "application/problem+json"),
    )
)]
pub async fn start_scavenge(
    State(state): State<AppState>,
    Caller(principal): Caller,
) -> ApiResult<(StatusCode, Json<ScavengeStatus>)> {
    require_admin(&principal)?;
    let status = state.events.start_scavenge()?;
    Ok((StatusCode::ACCEPTED, Json(status)))
}

/// The running or last scavenge on this node.
#[utoipa::path(
    get, path = "/v1/admin/events/scavenge", tag = "admin", security(("bearer" = [])),
    responses((status = 200, description = "Whether one runs, and what it removed", body = ScavengeStatus))
)]
pub async fn get_scavenge(
    State(state): State<AppState>,
    Caller(principal): Caller,
) -> ApiResult<Json<ScavengeStatus>> {
    require_admin(&principal)?;
    Ok(Json(state.events.scavenge_status()))
}
