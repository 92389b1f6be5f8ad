//! `/v1/streams/{stream}`: atomic appends with expected versions, paged
//! reads in both directions and as of a point in time, retention metadata,
//! soft and hard deletion, and snapshots. Scopes: `events:read:<stream>`
//! for reads, `events:write:<stream>` for everything that changes a stream.
//!
//! A hard-deleted stream answers 410 `stream_deleted` to every request,
//! appends included; another tenant's stream answers like a missing one.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use plinth_core::Error;
use plinth_events::{
    AppendRequest, AppendResult, DeleteMode, ExpectedVersion, NewEvent, NewSnapshot, ReadDirection,
    ReadStreamRequest, RecordedEvent, Snapshot, SnapshotAndEvents, StreamInfo, StreamMetadata,
};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::extract::{ApiPath, ApiQuery};
use crate::json::ApiJson;
use crate::middleware::auth::Caller;
use crate::middleware::request_context::current_request_id;
use crate::problem::{ApiResult, AppendProblem, ProblemDocument};
use crate::routes::event_queries::{
    CursorKind, encode_cursor, parse_stream, point_in_time, read_limit, require_stream_scope,
    starting_point,
};
use crate::state::AppState;

fn any_version() -> ExpectedVersion {
    ExpectedVersion::Any
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AppendBody {
    /// `"any"` (default), `"no_stream"`, `"exists"` or the revision of the
    /// stream's last event.
    #[serde(default = "any_version")]
    #[schema(value_type = Object)]
    pub expected_version: ExpectedVersion,
    /// `{ "id"?, "type", "data", "metadata"?, "schema_version"? }` each;
    /// all are written or none.
    #[schema(value_type = Vec<Object>)]
    pub events: Vec<NewEvent>,
}

/// Appends events to a stream, atomically.
#[utoipa::path(
    post, path = "/v1/streams/{stream}", tag = "events", security(("bearer" = [])),
    params(("stream" = String, Path, description = "Stream name")),
    request_body = AppendBody,
    responses(
        (status = 201, description = "`events` (id, revision, position of each), `stream_version`, and `replayed` (true for a retry of an earlier append: nothing was written)", body = Object),
        (status = 400, description = "Empty batch, invalid event type, metadata or duplicate ids", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 409, description = "`wrong_expected_version`; the document carries `current_version`", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 410, description = "The stream was hard-deleted", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 413, description = "Too many events, or an event or the batch too large", body = ProblemDocument, content_type = "application/problem+json"),
    )
)]
pub async fn append_events(
    State(state): State<AppState>,
    Caller(principal): Caller,
    ApiPath(stream): ApiPath<String>,
    ApiJson(body): ApiJson<AppendBody>,
) -> Result<(StatusCode, Json<AppendResult>), AppendProblem> {
    let stream = parse_stream(&stream)?;
    require_stream_scope(&principal, "write", &stream)?;
    let request = AppendRequest {
        expected_version: body.expected_version,
        events: body.events,
        default_correlation_id: current_request_id(),
    };
    let result = state
        .events
        .store
        .append(&principal.tenant, &stream, request)
        .await?;
    if !result.replayed {
        metrics::counter!("plinth_events_appended_total").increment(result.events.len() as u64);
    }
    Ok((StatusCode::CREATED, Json(result)))
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ReadStreamParameters {
    /// `forward` (default) or `backward`.
    #[param(value_type = Option<String>)]
    pub direction: Option<ReadDirection>,
    /// First revision returned (inclusive); default the start (forward) or
    /// the end (backward).
    pub from_revision: Option<u64>,
    /// Events per page (default 100), lowered to `events.max_read_count`.
    pub limit: Option<usize>,
    /// The `next_cursor` of the previous page (instead of from_revision).
    pub cursor: Option<String>,
    /// Only events at or before this global position.
    pub as_of_position: Option<u64>,
    /// Only events recorded at or before this RFC 3339 instant.
    pub as_of_time: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct StreamPage {
    pub stream: String,
    #[schema(value_type = Vec<Object>)]
    pub events: Vec<RecordedEvent>,
    /// Pass as `cursor` (same direction) for the next page; absent at the end.
    pub next_cursor: Option<String>,
    /// The revision of the stream's last event, hidden ones included.
    pub stream_version: Option<u64>,
}

/// Reads a stream's events, a page at a time.
#[utoipa::path(
    get, path = "/v1/streams/{stream}", tag = "events", security(("bearer" = [])),
    params(("stream" = String, Path, description = "Stream name"), ReadStreamParameters),
    responses(
        (status = 200, description = "A page of events", body = StreamPage),
        (status = 400, description = "A bad cursor, limit, revision or point in time", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 404, description = "No such stream (or soft-deleted)", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 410, description = "The stream was hard-deleted", body = ProblemDocument, content_type = "application/problem+json"),
    )
)]
pub async fn read_stream(
    State(state): State<AppState>,
    Caller(principal): Caller,
    ApiPath(stream): ApiPath<String>,
    ApiQuery(parameters): ApiQuery<ReadStreamParameters>,
) -> ApiResult<Json<StreamPage>> {
    let stream = parse_stream(&stream)?;
    require_stream_scope(&principal, "read", &stream)?;
    let direction = parameters.direction.unwrap_or_default();
    let from_revision = starting_point(
        CursorKind::Stream,
        direction,
        parameters.cursor.as_deref(),
        parameters.from_revision,
        "from_revision",
    )?;
    let request = ReadStreamRequest {
        direction,
        from_revision,
        limit: read_limit(parameters.limit, state.events.store.config())?,
        as_of: point_in_time(parameters.as_of_position, parameters.as_of_time.as_deref())?,
    };
    let slice = state
        .events
        .store
        .read_stream(&principal.tenant, &stream, &request)
        .await?;
    Ok(Json(StreamPage {
        stream: stream.to_string(),
        events: slice.events,
        next_cursor: slice
            .next_revision
            .map(|next| encode_cursor(CursorKind::Stream, direction, next)),
        stream_version: slice.stream_version,
    }))
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeleteParameters {
    /// `soft` (default: hides every event; an append re-creates the stream
    /// and continues its numbering) or `hard` (a tombstone, for good).
    #[param(value_type = Option<String>)]
    pub mode: Option<DeleteMode>,
    /// As for appends (default `any`).
    pub expected_version: Option<String>,
}

/// Deletes a stream, softly or for good.
#[utoipa::path(
    delete, path = "/v1/streams/{stream}", tag = "events", security(("bearer" = [])),
    params(("stream" = String, Path, description = "Stream name"), DeleteParameters),
    responses(
        (status = 200, description = "The stream's record after the delete (`status` soft_deleted or tombstoned)", body = Object),
        (status = 404, description = "No such stream", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 409, description = "`wrong_expected_version`", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 410, description = "Already hard-deleted", body = ProblemDocument, content_type = "application/problem+json"),
    )
)]
pub async fn delete_stream(
    State(state): State<AppState>,
    Caller(principal): Caller,
    ApiPath(stream): ApiPath<String>,
    ApiQuery(parameters): ApiQuery<DeleteParameters>,
) -> Result<Json<StreamInfo>, AppendProblem> {
    let stream = parse_stream(&stream)?;
    require_stream_scope(&principal, "write", &stream)?;
    let expected_version = match parameters.expected_version.as_deref() {
        None => ExpectedVersion::Any,
        Some(text) => ExpectedVersion::parse(text)?,
    };
    let info = state
        .events
        .store
        .delete_stream(
            &principal.tenant,
            &stream,
            parameters.mode.unwrap_or(DeleteMode::Soft),
            expected_version,
        )
        .await?;
    Ok(Json(info))
}

/// A stream's record: version, status, retention metadata.
#[utoipa::path(
    get, path = "/v1/streams/{stream}/metadata", tag = "events", security(("bearer" = [])),
    params(("stream" = String, Path, description = "Stream name")),
    responses(
        (status = 200, description = "`stream`, `version`, `status` (active, soft_deleted, tombstoned), `metadata` (max_count, max_age, truncate_before), `visible_from_revision`", body = Object),
        (status = 404, description = "The stream was never written", body = ProblemDocument, content_type = "application/problem+json"),
    )
)]
pub async fn get_stream_metadata(
    State(state): State<AppState>,
    Caller(principal): Caller,
    ApiPath(stream): ApiPath<String>,
) -> ApiResult<Json<StreamInfo>> {
    let stream = parse_stream(&stream)?;
    require_stream_scope(&principal, "read", &stream)?;
    let info = state
        .events
        .store
        .stream_info(&principal.tenant, &stream)
        .await?;
    Ok(Json(info))
}

/// Sets a stream's retention; reads hide what it excludes at once.
#[utoipa::path(
    put, path = "/v1/streams/{stream}/metadata", tag = "events", security(("bearer" = [])),
    params(("stream" = String, Path, description = "Stream name")),
    request_body(content = Object, description = "`max_count`, `max_age` (a duration such as `30d`), `truncate_before` (a revision); absent fields are cleared"),
    responses(
        (status = 200, description = "The stream's record", body = Object),
        (status = 400, description = "A setting out of range", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 410, description = "The stream was hard-deleted", body = ProblemDocument, content_type = "application/problem+json"),
    )
)]
pub async fn put_stream_metadata(
    State(state): State<AppState>,
    Caller(principal): Caller,
    ApiPath(stream): ApiPath<String>,
    ApiJson(metadata): ApiJson<StreamMetadata>,
) -> ApiResult<Json<StreamInfo>> {
    let stream = parse_stream(&stream)?;
    require_stream_scope(&principal, "write", &stream)?;
    let info = state
        .events
        .store
        .set_stream_metadata(&principal.tenant, &stream, metadata)
        .await?;
    Ok(Json(info))
}

/// Stores the stream's snapshot (replacing the previous one).
#[utoipa::path(
    put, path = "/v1/streams/{stream}/snapshot", tag = "events", security(("bearer" = [])),
    params(("stream" = String, Path, description = "Stream name")),
    request_body(content = Object, description = "`revision` (of the last event the snapshot folds in), `data`, `schema_version`?"),
    responses(
        (status = 204, description = "Stored"),
        (status = 400, description = "The revision is beyond the stream's version", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 413, description = "Larger than events.max_append_bytes", body = ProblemDocument, content_type = "application/problem+json"),
    )
)]
pub async fn put_snapshot(
    State(state): State<AppState>,
    Caller(principal): Caller,
    ApiPath(stream): ApiPath<String>,
    ApiJson(snapshot): ApiJson<NewSnapshot>,
) -> ApiResult<Response> {
    let stream = parse_stream(&stream)?;
    require_stream_scope(&principal, "write", &stream)?;
    state
        .events
        .store
        .save_snapshot(&principal.tenant, &stream, snapshot)
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The stream's latest snapshot.
#[utoipa::path(
    get, path = "/v1/streams/{stream}/snapshot", tag = "events", security(("bearer" = [])),
    params(("stream" = String, Path, description = "Stream name")),
    responses(
        (status = 200, description = "`stream`, `revision`, `data`, `schema_version`, `recorded_at`", body = Object),
        (status = 404, description = "No stream, or no visible snapshot (`snapshot_not_found`)", body = ProblemDocument, content_type = "application/problem+json"),
    )
)]
pub async fn get_snapshot(
    State(state): State<AppState>,
    Caller(principal): Caller,
    ApiPath(stream): ApiPath<String>,
) -> ApiResult<Json<Snapshot>> {
    let stream = parse_stream(&stream)?;
    require_stream_scope(&principal, "read", &stream)?;
    let snapshot = state
        .events
        .store
        .read_snapshot(&principal.tenant, &stream)
        .await?;
    snapshot.map(Json).ok_or_else(|| {
        Error::not_found(
            "snapshot_not_found",
            format!(
                "stream `{stream}` has no snapshot (or its snapshot covers events retention hides)"
            ),
        )
        .into()
    })
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct FromSnapshotParameters {
    /// Events after the snapshot (default 100), lowered to `events.max_read_count`.
    pub limit: Option<usize>,
}

/// The latest snapshot and the events after it, in one call.
#[utoipa::path(
    get, path = "/v1/streams/{stream}/from-snapshot", tag = "events", security(("bearer" = [])),
    params(("stream" = String, Path, description = "Stream name"), FromSnapshotParameters),
    responses(
        (status = 200, description = "`snapshot` (or null), `events` after it, `next_revision` (read on with from_revision), `stream_version`", body = Object),
        (status = 404, description = "No such stream", body = ProblemDocument, content_type = "application/problem+json"),
    )
)]
pub async fn read_from_snapshot(
    State(state): State<AppState>,
    Caller(principal): Caller,
    ApiPath(stream): ApiPath<String>,
    ApiQuery(parameters): ApiQuery<FromSnapshotParameters>,
) -> ApiResult<Json<SnapshotAndEvents>> {
    let stream = parse_stream(&stream)?;
    require_stream_scope(&principal, "read", &stream)?;
    let limit = read_limit(parameters.limit, state.events.store.config())?;
    let answer = state
        .events
        .store
        .read_from_snapshot(&principal.tenant, &stream, limit)
        .await?;
    Ok(Json(answer))
}
