//! `/v1/subscriptions`: persistent subscriptions (consumer groups). A group
//! keeps its checkpoint on the server and hands a stream's or the global
//! log's events to competing consumers with at-least-once delivery: a
//! consumer leases events, then acks them (done) or nacks them (deliver
//! again); an event out of retries is parked until replayed. See
//! `plinth_events::persistent` for the delivery rules.
//!
//! Scopes cover the streams a group reads, as for reads of them: the
//! stream of a group on one stream, `<prefix>*` for a group on the global
//! log filtered by stream prefix, every stream otherwise.
//! - `events:read` to see and consume a group: status, lease, ack, nack,
//!   list parked events; listing every group needs it for every stream.
//! - `events:write` to create, change or delete a group and to replay its
//!   parked events: these change what consumers are handed, so a key that
//!   only consumes cannot skip or redeliver events for everyone.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use plinth_control::Principal;
use plinth_core::{Error, HumanDuration, TenantId};
use plinth_events::{
    AckOutcome, AllFilter, GroupDefinition, GroupInfo, GroupName, GroupStatus, LeaseBatch,
    LeaseRequest, MAX_LEASE_WAIT, NackOutcome, ParkedEvent, ReplayOutcome,
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::extract::{ApiPath, ApiQuery};
use crate::json::ApiJson;
use crate::middleware::auth::Caller;
use crate::problem::{ApiResult, ProblemDocument};
use crate::routes::event_queries::read_limit;
use crate::routes::pagination::{PageQuery, encode_cursor};
use crate::state::AppState;

/// Every consumer-group route, for `app.rs` to mount with the others.
pub fn group_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_groups))
        .routes(routes!(put_group, get_group_status, delete_group))
        .routes(routes!(lease_events))
        .routes(routes!(ack_events))
        .routes(routes!(nack_events))
        .routes(routes!(list_parked_events))
        .routes(routes!(replay_parked_events))
}

/// `events:<action>` covering every stream a group with this source reads:
/// the same resource a read of that stream or of the filtered log checks.
fn require_group_source_scope(
    principal: &Principal,
    action: &str,
    stream: Option<&str>,
    filter: &AllFilter,
) -> Result<(), Error> {
    let resource = match (stream, filter.stream_prefix.as_deref()) {
        (Some(stream), _) => Some(stream.to_string()),
        (None, Some(prefix)) => Some(format!("{prefix}*")),
        (None, None) => None,
    };
    principal.require("events", action, resource.as_deref())
}

/// The caller's group named `group_text`, once the caller holds
/// `events:<action>` over what it reads; `group_not_found` (404) also for
/// another tenant's group, which the store never looks at.
async fn authorized_group(
    state: &AppState,
    principal: &Principal,
    group_text: &str,
    action: &str,
) -> Result<GroupName, Error> {
    let group = GroupName::parse(group_text)?;
    let info = state.events.store.group(&principal.tenant, &group).await?;
    require_group_source_scope(principal, action, info.stream.as_deref(), &info.filter)?;
    Ok(group)
}

/// Creates a group, or changes the settings of the group of that name.
#[utoipa::path(
    put, path = "/v1/subscriptions/{group}", tag = "events", security(("bearer" = [])),
    params(("group" = String, Path, description = "Group name")),
    request_body(content = Object, description = "`stream` (absent: the global log), `filter` (`stream_prefix`, `event_types`), `start_from` (`\"start\"` (default), `\"end\"` or a global position), `settings` (`max_retries` (10), `lease_timeout` (`\"30s\"`), `max_in_flight` (100)). For an existing group only `settings` may change; the rest must be as created."),
    responses(
        (status = 201, description = "The group was created", body = Object),
        (status = 200, description = "The group's settings were replaced", body = Object),
        (status = 400, description = "A bad group name, settings or filter", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 409, description = "`group_source_changed`: the group exists with another stream, filter or start", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 422, description = "A body that does not fit the shape (bad stream name, unknown field)", body = ProblemDocument, content_type = "application/problem+json"),
    )
)]
pub async fn put_group(
    State(state): State<AppState>,
    Caller(principal): Caller,
    ApiPath(group): ApiPath<String>,
    ApiJson(definition): ApiJson<GroupDefinition>,
) -> ApiResult<Response> {
    let group = GroupName::parse(&group)?;
    let stream = definition.stream.as_ref().map(|stream| stream.as_str());
    require_group_source_scope(&principal, "write", stream, &definition.filter)?;
    let store = &state.events.store;
    match store
        .create_group(&principal.tenant, &group, definition.clone())
        .await
    {
        Ok(created) => Ok((StatusCode::CREATED, Json(created)).into_response()),
        // Trying the create first keeps two racing PUTs of a new group
        // from both failing: the loser updates the winner's group.
        Err(error) if error.code() == "group_exists" => {
            let updated =
                update_existing_group(&state, &principal.tenant, &group, definition).await?;
            Ok(Json(updated).into_response())
        }
        Err(error) => Err(error.into()),
    }
}

/// Replaces the settings of an existing group whose source is the one
/// `definition` names: a PUT describes the whole group, and only its
/// settings can change without invalidating its checkpoint.
async fn update_existing_group(
    state: &AppState,
    tenant: &TenantId,
    group: &GroupName,
    definition: GroupDefinition,
) -> Result<GroupInfo, Error> {
    let store = &state.events.store;
    let existing = store.group(tenant, group).await?;
    let requested_stream = definition.stream.as_ref().map(|stream| stream.as_str());
    let same_source = existing.stream.as_deref() == requested_stream
        && existing.filter == definition.filter
        && existing.start_from == definition.start_from;
    if !same_source {
        return Err(Error::conflict(
            "group_source_changed",
            format!(
                "group `{group}` already reads another stream, filter or start_from (it starts from `{}`); only `settings` can change: delete and re-create the group to read something else",
                existing.start_from
            ),
        ));
    }
    store.update_group(tenant, group, definition.settings).await
}

/// A group, its checkpoint, lag and counts.
#[utoipa::path(
    get, path = "/v1/subscriptions/{group}", tag = "events", security(("bearer" = [])),
    params(("group" = String, Path, description = "Group name")),
    responses(
        (status = 200, description = "`group` (as created, with settings), `head_position`, `checkpoint` (every event at or below it is acked, parked or not for the group), `lag` (positions after the checkpoint), `in_flight`, `awaiting_redelivery`, `parked`, `events_retrying`, `total_retries`", body = Object),
        (status = 404, description = "`group_not_found`", body = ProblemDocument, content_type = "application/problem+json"),
    )
)]
pub async fn get_group_status(
    State(state): State<AppState>,
    Caller(principal): Caller,
    ApiPath(group): ApiPath<String>,
) -> ApiResult<Json<GroupStatus>> {
    let group = authorized_group(&state, &principal, &group, "read").await?;
    let status = state
        .events
        .store
        .group_status(&principal.tenant, &group)
        .await?;
    Ok(Json(status))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct GroupList {
    /// The tenant's groups, by name.
    #[schema(value_type = Vec<Object>)]
    pub items: Vec<GroupInfo>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// Lists the tenant's groups.
#[utoipa::path(
    get, path = "/v1/subscriptions", tag = "events", security(("bearer" = [])),
    params(PageQuery),
    responses(
        (status = 200, description = "A page of the tenant's groups, by name", body = GroupList),
        (status = 400, description = "A bad cursor or limit", body = ProblemDocument, content_type = "application/problem+json"),
    )
)]
pub async fn list_groups(
    State(state): State<AppState>,
    Caller(principal): Caller,
    ApiQuery(page): ApiQuery<PageQuery>,
) -> ApiResult<Json<GroupList>> {
    principal.require("events", "read", None)?;
    let page_size = page.page_size()?;
    let after_name = page.decoded_cursor()?;
    let groups = state
        .events
        .store
        .list_groups(&principal.tenant, after_name.as_deref(), page_size)
        .await?;
    Ok(Json(GroupList {
        items: groups.groups,
        next_cursor: groups.next_after.as_deref().map(encode_cursor),
    }))
}

/// Deletes a group with its leases and parked events.
#[utoipa::path(
    delete, path = "/v1/subscriptions/{group}", tag = "events", security(("bearer" = [])),
    params(("group" = String, Path, description = "Group name")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "`group_not_found`", body = ProblemDocument, content_type = "application/problem+json"),
    )
)]
pub async fn delete_group(
    State(state): State<AppState>,
    Caller(principal): Caller,
    ApiPath(group): ApiPath<String>,
) -> ApiResult<StatusCode> {
    let group = authorized_group(&state, &principal, &group, "write").await?;
    state
        .events
        .store
        .delete_group(&principal.tenant, &group)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LeaseBody {
    /// Who takes the leases (a resource name such as `worker-1`).
    pub consumer: String,
    /// The most events to lease (default 100), lowered to
    /// `events.max_read_count` and to what `max_in_flight` leaves.
    pub limit: Option<usize>,
    /// How long to wait when no event is deliverable (`"10s"`; default
    /// none, at most 60s), shortened to fit `server.request_timeout`.
    #[schema(value_type = Option<String>)]
    pub wait: Option<HumanDuration>,
}

/// The wait a lease may use: `requested`, shortened to 90% of the request
/// timeout so the answer (perhaps empty) leaves before the server cuts the
/// request off with a 504. A wait beyond the store's limit is passed on
/// unchanged, for the store to refuse it with `invalid_wait`.
fn lease_wait(requested: Duration, request_timeout: Duration) -> Duration {
    if requested > MAX_LEASE_WAIT {
        return requested;
    }
    requested.min(request_timeout * 9 / 10)
}

/// Leases events to a consumer, waiting for one when none is deliverable.
#[utoipa::path(
    post, path = "/v1/subscriptions/{group}/lease", tag = "events", security(("bearer" = [])),
    params(("group" = String, Path, description = "Group name")),
    request_body = LeaseBody,
    responses(
        (status = 200, description = "`events` in position order (possibly none), each `{ event, retry_count, delivery_count, lease_expires_at }`; ack or nack by `event.position`", body = Object),
        (status = 400, description = "A bad consumer name, limit or wait", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 404, description = "`group_not_found`", body = ProblemDocument, content_type = "application/problem+json"),
    )
)]
pub async fn lease_events(
    State(state): State<AppState>,
    Caller(principal): Caller,
    ApiPath(group): ApiPath<String>,
    ApiJson(body): ApiJson<LeaseBody>,
) -> ApiResult<Json<LeaseBatch>> {
    let group = authorized_group(&state, &principal, &group, "read").await?;
    let store = &state.events.store;
    let requested_wait = body.wait.map_or(Duration::ZERO, HumanDuration::as_duration);
    let request = LeaseRequest::new(&body.consumer, read_limit(body.limit, store.config())?).wait(
        lease_wait(
            requested_wait,
            state.config.server.request_timeout.as_duration(),
        ),
    );
    let mut shutdown = state.shutdown.clone();
    let node_shuts_down = async move {
        let _ = shutdown.wait_for(|shutting_down| *shutting_down).await;
    };
    let batch = store
        .lease_until(&principal.tenant, &group, &request, node_shuts_down)
        .await?;
    Ok(Json(batch))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PositionsBody {
    /// Global positions of leased events (`event.position`), 1 to 1000.
    pub positions: Vec<u64>,
}

/// Acks events: done, never delivered again; the checkpoint advances past
/// them once everything before is settled.
#[utoipa::path(
    post, path = "/v1/subscriptions/{group}/ack", tag = "events", security(("bearer" = [])),
    params(("group" = String, Path, description = "Group name")),
    request_body = PositionsBody,
    responses(
        (status = 200, description = "`acked`, `not_in_flight` (positions that were not leased: nothing changed for them), `checkpoint`", body = Object),
        (status = 400, description = "No positions, or more than 1000", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 404, description = "`group_not_found`", body = ProblemDocument, content_type = "application/problem+json"),
    )
)]
pub async fn ack_events(
    State(state): State<AppState>,
    Caller(principal): Caller,
    ApiPath(group): ApiPath<String>,
    ApiJson(body): ApiJson<PositionsBody>,
) -> ApiResult<Json<AckOutcome>> {
    let group = authorized_group(&state, &principal, &group, "read").await?;
    let outcome = state
        .events
        .store
        .ack(&principal.tenant, &group, &body.positions)
        .await?;
    Ok(Json(outcome))
}

/// Nacks events: each counts a retry and is delivered again, or parked
/// once past `max_retries`.
#[utoipa::path(
    post, path = "/v1/subscriptions/{group}/nack", tag = "events", security(("bearer" = [])),
    params(("group" = String, Path, description = "Group name")),
    request_body = PositionsBody,
    responses(
        (status = 200, description = "`retrying`, `parked`, `not_in_flight`", body = Object),
        (status = 400, description = "No positions, or more than 1000", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 404, description = "`group_not_found`", body = ProblemDocument, content_type = "application/problem+json"),
    )
)]
pub async fn nack_events(
    State(state): State<AppState>,
    Caller(principal): Caller,
    ApiPath(group): ApiPath<String>,
    ApiJson(body): ApiJson<PositionsBody>,
) -> ApiResult<Json<NackOutcome>> {
    let group = authorized_group(&state, &principal, &group, "read").await?;
    let outcome = state
        .events
        .store
        .nack(&principal.tenant, &group, &body.positions)
        .await?;
    Ok(Json(outcome))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ParkedList {
    /// `{ event, retry_count }` each, by position.
    #[schema(value_type = Vec<Object>)]
    pub items: Vec<ParkedEvent>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// The position a parked-events cursor resumes after.
fn parked_cursor_position(page: &PageQuery) -> Result<Option<u64>, Error> {
    let Some(text) = page.decoded_cursor()? else {
        return Ok(None);
    };
    text.parse::<u64>().map(Some).map_err(|_| {
        Error::invalid_argument(
            "invalid_cursor",
            "cursor is not one this server handed out; pass `next_cursor` from the previous page",
        )
    })
}

/// The group's parked events, by position, a page at a time.
#[utoipa::path(
    get, path = "/v1/subscriptions/{group}/parked", tag = "events", security(("bearer" = [])),
    params(("group" = String, Path, description = "Group name"), PageQuery),
    responses(
        (status = 200, description = "A page of parked events", body = ParkedList),
        (status = 400, description = "A bad cursor or limit", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 404, description = "`group_not_found`", body = ProblemDocument, content_type = "application/problem+json"),
    )
)]
pub async fn list_parked_events(
    State(state): State<AppState>,
    Caller(principal): Caller,
    ApiPath(group): ApiPath<String>,
    ApiQuery(page): ApiQuery<PageQuery>,
) -> ApiResult<Json<ParkedList>> {
    let group = authorized_group(&state, &principal, &group, "read").await?;
    let page_size = page.page_size()?;
    let after_position = parked_cursor_position(&page)?;
    let parked = state
        .events
        .store
        .parked_events(&principal.tenant, &group, after_position, page_size)
        .await?;
    Ok(Json(ParkedList {
        items: parked.events,
        next_cursor: parked
            .next_position
            .map(|position| encode_cursor(&position.to_string())),
    }))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ReplayBody {
    /// The parked events to replay; empty or absent replays the first
    /// 1000 parked.
    pub positions: Vec<u64>,
}

/// Makes parked events deliverable again, their retries reset.
#[utoipa::path(
    post, path = "/v1/subscriptions/{group}/parked/replay", tag = "events", security(("bearer" = [])),
    params(("group" = String, Path, description = "Group name")),
    request_body = ReplayBody,
    responses(
        (status = 200, description = "`replayed`: how many parked events are deliverable again", body = Object),
        (status = 400, description = "More than 1000 positions", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 404, description = "`group_not_found`", body = ProblemDocument, content_type = "application/problem+json"),
    )
)]
pub async fn replay_parked_events(
    State(state): State<AppState>,
    Caller(principal): Caller,
    ApiPath(group): ApiPath<String>,
    ApiJson(body): ApiJson<ReplayBody>,
) -> ApiResult<Json<ReplayOutcome>> {
    let group = authorized_group(&state, &principal, &group, "write").await?;
    let outcome = state
        .events
        .store
        .replay_parked(&principal.tenant, &group, &body.positions)
        .await?;
    Ok(Json(outcome))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_wait_fits_the_request_timeout_and_an_oversized_one_is_left_to_refuse() {
        let request_timeout = Duration::from_secs(30);
        assert_eq!(
            lease_wait(Duration::from_secs(5), request_timeout),
            Duration::from_secs(5)
        );
        assert_eq!(
            lease_wait(Duration::from_secs(60), request_timeout),
            Duration::from_secs(27)
        );
        assert_eq!(
            lease_wait(Duration::from_secs(61), request_timeout),
            Duration::from_secs(61)
        );
    }
}
