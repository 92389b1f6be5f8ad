//! Catch-up subscriptions over Server-Sent Events and WebSocket, to one
//! stream or to the global log with filters (see `event_subscription.rs`
//! for how catch-up turns live without loss or duplication).
//!
//! SSE: each event is `id: <global position>` and `data: <event JSON>`;
//! one `event: caught_up` marks the switch to live; a final `event: end`
//! says why the server ended the subscription. A reconnect with
//! `Last-Event-ID` resumes after that position. Keep-alive comments go out
//! every [`KEEP_ALIVE_INTERVAL`].
//!
//! WebSocket: text frames `{"type":"event","event":{...}}`,
//! `{"type":"caught_up","next_position":N}` and
//! `{"type":"end","code":...,"detail":...}` before a close frame; pings
//! every [`KEEP_ALIVE_INTERVAL`]. Messages from the client are ignored.
//!
//! Scope: `events:read` covering the stream, or the prefix for the log.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::{SinkExt, Stream, StreamExt};
use plinth_control::Principal;
use plinth_core::Error;
use plinth_events::{AllFilter, ReadAllRequest};
use serde::Deserialize;
use serde_json::json;
use utoipa::IntoParams;

use crate::event_subscription::{
    SLOW_CONSUMER_TIMEOUT, Subscription, SubscriptionEnd, SubscriptionItem, SubscriptionNext,
    SubscriptionTarget,
};
use crate::extract::{ApiPath, ApiQuery};
use crate::middleware::auth::Caller;
use crate::problem::{ApiResult, ProblemDocument};
use crate::routes::event_queries::{
    event_type_list, parse_stream, position_after_last_event_id, require_log_scope,
    require_stream_scope,
};
use crate::state::AppState;

/// How often an idle subscription shows it is alive.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(15);

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct StreamSubscriptionParameters {
    /// First global position delivered (default 0: the whole stream);
    /// `Last-Event-ID` wins over it.
    pub from_position: Option<u64>,
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LogSubscriptionParameters {
    /// First global position delivered (default 0: the whole log);
    /// `Last-Event-ID` wins over it.
    pub from_position: Option<u64>,
    /// Only streams whose name starts with this.
    pub stream_prefix: Option<String>,
    /// Only these event types, comma-separated.
    pub event_types: Option<String>,
}

/// Where a subscription starts: after `Last-Event-ID`, else at
/// `from_position`, else at the start of the log.
fn starting_position(headers: &HeaderMap, from_position: Option<u64>) -> Result<u64, Error> {
    match headers.get("last-event-id") {
        Some(value) => {
            let text = value.to_str().map_err(|_| {
                Error::invalid_argument("invalid_last_event_id", "Last-Event-ID must be ASCII")
            })?;
            position_after_last_event_id(text)
        }
        None => Ok(from_position.unwrap_or(0)),
    }
}

fn stream_target(principal: &Principal, stream: &str) -> Result<SubscriptionTarget, Error> {
    let stream = parse_stream(stream)?;
    require_stream_scope(principal, "read", &stream)?;
    Ok(SubscriptionTarget {
        tenant: principal.tenant.clone(),
        stream: Some(stream),
        filter: AllFilter::default(),
    })
}

/// Checks the filter with a one-event read before the response starts, so
/// a bad one is a 400 rather than an `end` event.
async fn log_target(
    state: &AppState,
    principal: &Principal,
    parameters: LogSubscriptionParameters,
) -> Result<SubscriptionTarget, Error> {
    require_log_scope(principal, parameters.stream_prefix.as_deref())?;
    let filter = AllFilter {
        stream_prefix: parameters.stream_prefix,
        event_types: event_type_list(parameters.event_types.as_deref()),
    };
    let probe = ReadAllRequest::forward(1).filter(filter.clone());
    state
        .events
        .store
        .read_all(&principal.tenant, &probe)
        .await?;
    Ok(SubscriptionTarget {
        tenant: principal.tenant.clone(),
        stream: None,
        filter,
    })
}

fn start_subscription(
    state: &AppState,
    target: SubscriptionTarget,
    from_position: u64,
    transport: &'static str,
) -> Subscription {
    Subscription::start(
        &state.events,
        target,
        from_position,
        state.shutdown.clone(),
        transport,
    )
}

/// Subscribes to one stream over Server-Sent Events.
#[utoipa::path(
    get, path = "/v1/streams/{stream}/subscribe", tag = "events", security(("bearer" = [])),
    params(
        ("stream" = String, Path, description = "Stream name"),
        StreamSubscriptionParameters,
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this global position"),
    ),
    responses(
        (status = 200, description = "`text/event-stream`: the stream's events from the position on, then live", body = String, content_type = "text/event-stream"),
        (status = 400, description = "A bad stream name, position or Last-Event-ID", body = ProblemDocument, content_type = "application/problem+json"),
    )
)]
pub async fn subscribe_stream_sse(
    State(state): State<AppState>,
    Caller(principal): Caller,
    ApiPath(stream): ApiPath<String>,
    ApiQuery(parameters): ApiQuery<StreamSubscriptionParameters>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let target = stream_target(&principal, &stream)?;
    let from_position = starting_position(&headers, parameters.from_position)?;
    let subscription = start_subscription(&state, target, from_position, "sse");
    Ok(sse_response(subscription))
}

/// Subscribes to the global log over Server-Sent Events.
#[utoipa::path(
    get, path = "/v1/all/subscribe", tag = "events", security(("bearer" = [])),
    params(
        LogSubscriptionParameters,
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this global position"),
    ),
    responses(
        (status = 200, description = "`text/event-stream`: the log's matching events from the position on, then live", body = String, content_type = "text/event-stream"),
        (status = 400, description = "A bad filter, position or Last-Event-ID", body = ProblemDocument, content_type = "application/problem+json"),
    )
)]
pub async fn subscribe_log_sse(
    State(state): State<AppState>,
    Caller(principal): Caller,
    ApiQuery(parameters): ApiQuery<LogSubscriptionParameters>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let from_position = starting_position(&headers, parameters.from_position)?;
    let target = log_target(&state, &principal, parameters).await?;
    let subscription = start_subscription(&state, target, from_position, "sse");
    Ok(sse_response(subscription))
}

fn sse_response(subscription: Subscription) -> Response {
    Sse::new(sse_events(subscription))
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE_INTERVAL))
        .into_response()
}

/// The subscription's items as SSE events, ending after the `end` event.
fn sse_events(subscription: Subscription) -> impl Stream<Item = Result<Event, Infallible>> {
    futures::stream::unfold(Some(subscription), |state| async move {
        let mut subscription = state?;
        match subscription.next().await {
            SubscriptionNext::Item(item) => Some((Ok(sse_event(item)), Some(subscription))),
            SubscriptionNext::Ended(end) => Some((Ok(sse_end_event(&end)), None)),
        }
    })
}

fn sse_event(item: SubscriptionItem) -> Event {
    match item {
        SubscriptionItem::Event(event) => Event::default()
            .id(event.position.to_string())
            .data(serde_json::to_string(&event).unwrap_or_default()),
        SubscriptionItem::CaughtUp { next_position } => Event::default()
            .event("caught_up")
            .data(json!({ "next_position": next_position }).to_string()),
    }
}

fn sse_end_event(end: &SubscriptionEnd) -> Event {
    Event::default()
        .event("end")
        .data(serde_json::to_string(end).unwrap_or_default())
}

/// Turns a failed upgrade into a problem document instead of plain text.
fn websocket_upgrade(
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<WebSocketUpgrade, Error> {
    upgrade.map_err(|rejection| {
        Error::invalid_argument(
            "websocket_upgrade_required",
            format!(
                "this route speaks WebSocket only ({}); use the /subscribe route without /ws for Server-Sent Events",
                rejection.body_text()
            ),
        )
    })
}

/// Subscribes to one stream over WebSocket.
#[utoipa::path(
    get, path = "/v1/streams/{stream}/subscribe/ws", tag = "events", security(("bearer" = [])),
    params(
        ("stream" = String, Path, description = "Stream name"),
        StreamSubscriptionParameters,
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this global position"),
    ),
    responses(
        (status = 101, description = "Upgraded: JSON text frames `event`, `caught_up`, `end`"),
        (status = 400, description = "Not a WebSocket upgrade, or a bad stream name or position", body = ProblemDocument, content_type = "application/problem+json"),
    )
)]
pub async fn subscribe_stream_ws(
    State(state): State<AppState>,
    Caller(principal): Caller,
    ApiPath(stream): ApiPath<String>,
    ApiQuery(parameters): ApiQuery<StreamSubscriptionParameters>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> ApiResult<Response> {
    let upgrade = websocket_upgrade(upgrade)?;
    let target = stream_target(&principal, &stream)?;
    let from_position = starting_position(&headers, parameters.from_position)?;
    let subscription = start_subscription(&state, target, from_position, "websocket");
    Ok(upgrade.on_upgrade(move |socket| serve_websocket(socket, subscription)))
}

/// Subscribes to the global log over WebSocket.
#[utoipa::path(
    get, path = "/v1/all/subscribe/ws", tag = "events", security(("bearer" = [])),
    params(
        LogSubscriptionParameters,
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this global position"),
    ),
    responses(
        (status = 101, description = "Upgraded: JSON text frames `event`, `caught_up`, `end`"),
        (status = 400, description = "Not a WebSocket upgrade, or a bad filter or position", body = ProblemDocument, content_type = "application/problem+json"),
    )
)]
pub async fn subscribe_log_ws(
    State(state): State<AppState>,
    Caller(principal): Caller,
    ApiQuery(parameters): ApiQuery<LogSubscriptionParameters>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> ApiResult<Response> {
    let upgrade = websocket_upgrade(upgrade)?;
    let from_position = starting_position(&headers, parameters.from_position)?;
    let target = log_target(&state, &principal, parameters).await?;
    let subscription = start_subscription(&state, target, from_position, "websocket");
    Ok(upgrade.on_upgrade(move |socket| serve_websocket(socket, subscription)))
}

/// Sends the subscription's items until it ends or the client goes away.
async fn serve_websocket(socket: WebSocket, mut subscription: Subscription) {
    let (mut sender, mut receiver) = socket.split();
    let mut keep_alive = tokio::time::interval(KEEP_ALIVE_INTERVAL);
    keep_alive.reset();
    loop {
        let outgoing = tokio::select! {
            next = subscription.next() => next,
            incoming = receiver.next() => match incoming {
                Some(Ok(Message::Close(_)) | Err(_)) | None => return,
                Some(Ok(_)) => continue,
            },
            _ = keep_alive.tick() => {
                if send_within_deadline(&mut sender, Message::Ping(Default::default())).await.is_err() {
                    return;
                }
                continue;
            }
        };
        match outgoing {
            SubscriptionNext::Item(item) => {
                if send_within_deadline(&mut sender, websocket_item(item))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            SubscriptionNext::Ended(end) => {
                let _ = send_within_deadline(&mut sender, websocket_end(&end)).await;
                let close = Message::Close(Some(CloseFrame {
                    code: close_code_for(&end),
                    reason: end.code.clone().into(),
                }));
                let _ = send_within_deadline(&mut sender, close).await;
                return;
            }
        }
    }
}

/// A send that a stuck client cannot hold up for longer than the
/// slow-consumer timeout.
async fn send_within_deadline(
    sender: &mut futures::stream::SplitSink<WebSocket, Message>,
    message: Message,
) -> Result<(), ()> {
    match tokio::time::timeout(SLOW_CONSUMER_TIMEOUT, sender.send(message)).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(()),
    }
}

fn websocket_item(item: SubscriptionItem) -> Message {
    let document = match item {
        SubscriptionItem::Event(event) => json!({ "type": "event", "event": event }),
        SubscriptionItem::CaughtUp { next_position } => {
            json!({ "type": "caught_up", "next_position": next_position })
        }
    };
    Message::Text(document.to_string().into())
}

fn websocket_end(end: &SubscriptionEnd) -> Message {
    let document = json!({ "type": "end", "code": end.code, "detail": end.detail });
    Message::Text(document.to_string().into())
}

fn close_code_for(end: &SubscriptionEnd) -> u16 {
    match end.reason_label() {
        "shutdown" => close_code::AWAY,
        "slow_consumer" => close_code::POLICY,
        _ => close_code::ERROR,
    }
}
