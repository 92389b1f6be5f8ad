//! What the event store routes share: stream names and scopes over them,
//! read limits, points in time, and the cursors of paged reads. Every
//! parser here refuses bad input with a 400 that names the parameter.
//!
//! Scopes are `events:read[:<pattern>]` and `events:write[:<pattern>]`,
//! where the pattern is a glob over stream names (`events:read:orders-*`).
//! Reading the global log needs a scope covering every stream, or one
//! covering every stream the `stream_prefix` filter can name.

use plinth_control::Principal;
use plinth_core::Error;
use plinth_core::config::EventsConfig;
use plinth_events::{AsOf, ReadDirection, StreamName};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Events per page when the request gives no `limit`.
pub const DEFAULT_READ_LIMIT: usize = 100;

pub fn parse_stream(text: &str) -> Result<StreamName, Error> {
    StreamName::parse(text)
}

/// `events:<action>` covering `stream`.
pub fn require_stream_scope(
    principal: &Principal,
    action: &str,
    stream: &StreamName,
) -> Result<(), Error> {
    principal.require("events", action, Some(stream.as_str()))
}

/// `events:read` covering every stream the global-log read can return:
/// all of them, or those starting with `stream_prefix` (checked as the
/// resource `<prefix>*`, which a pattern covers only when it matches every
/// name with that prefix).
pub fn require_log_scope(principal: &Principal, stream_prefix: Option<&str>) -> Result<(), Error> {
    match stream_prefix {
        None => principal.require("events", "read", None),
        Some(prefix) => principal.require("events", "read", Some(&format!("{prefix}*"))),
    }
}

/// The page size: `requested` (at least 1) lowered to
/// `events.max_read_count`, as the configuration documents; a page cut
/// short that way still carries `next_cursor`.
pub fn read_limit(requested: Option<usize>, config: &EventsConfig) -> Result<usize, Error> {
    match requested {
        Some(0) => Err(Error::invalid_argument(
            "invalid_limit",
            format!(
                "limit must be at least 1 (pages hold at most {}, events.max_read_count)",
                config.max_read_count
            ),
        )),
        Some(limit) => Ok(limit.min(config.max_read_count)),
        None => Ok(DEFAULT_READ_LIMIT.min(config.max_read_count)),
    }
}

/// `as_of_position` or `as_of_time` (RFC 3339), not both.
pub fn point_in_time(
    as_of_position: Option<u64>,
    as_of_time: Option<&str>,
) -> Result<Option<AsOf>, Error> {
    match (as_of_position, as_of_time) {
        (Some(_), Some(_)) => Err(Error::invalid_argument(
            "invalid_as_of",
            "give as_of_position or as_of_time, not both",
        )),
        (Some(position), None) => Ok(Some(AsOf::Position(position))),
        (None, Some(text)) => parse_timestamp(text).map(|at| Some(AsOf::Timestamp(at))),
        (None, None) => Ok(None),
    }
}

fn parse_timestamp(text: &str) -> Result<OffsetDateTime, Error> {
    OffsetDateTime::parse(text, &Rfc3339).map_err(|_| {
        let shown: String = text.chars().take(40).collect();
        Error::invalid_argument(
            "invalid_as_of_time",
            format!(
                "as_of_time `{}` is not an RFC 3339 timestamp such as 2025-01-31T12:00:00Z",
                shown.escape_debug()
            ),
        )
    })
}

/// Which paged read a cursor belongs to: a cursor only resumes the kind of
/// read, in the direction, that handed it out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CursorKind {
    /// Holds the next revision of a stream read.
    Stream,
    /// Holds the next position of a global-log read.
    Log,
}

impl CursorKind {
    fn tag(self) -> &'static str {
        match self {
            CursorKind::Stream => "revision",
            CursorKind::Log => "position",
        }
    }
}

fn direction_tag(direction: ReadDirection) -> &'static str {
    match direction {
        ReadDirection::Forward => "forward",
        ReadDirection::Backward => "backward",
    }
}

/// An opaque cursor for the page that starts at `next`.
pub fn encode_cursor(kind: CursorKind, direction: ReadDirection, next: u64) -> String {
    hex::encode(format!(
        "{}:{}:{next}",
        kind.tag(),
        direction_tag(direction)
    ))
}

/// The revision or position a cursor holds.
pub fn decode_cursor(
    kind: CursorKind,
    direction: ReadDirection,
    cursor: &str,
) -> Result<u64, Error> {
    let invalid = || {
        Error::invalid_argument(
            "invalid_cursor",
            format!(
                "cursor is not one this read handed out; pass `next_cursor` from the previous page, with the same direction ({})",
                direction_tag(direction)
            ),
        )
    };
    let bytes = hex::decode(cursor).map_err(|_| invalid())?;
    let text = String::from_utf8(bytes).map_err(|_| invalid())?;
    let expected_prefix = format!("{}:{}:", kind.tag(), direction_tag(direction));
    text.strip_prefix(&expected_prefix)
        .and_then(|next| next.parse::<u64>().ok())
        .ok_or_else(invalid)
}

/// Where a paged read starts: the cursor's position, or the explicit
/// `from` parameter (named `from_name`), not both.
pub fn starting_point(
    kind: CursorKind,
    direction: ReadDirection,
    cursor: Option<&str>,
    from: Option<u64>,
    from_name: &str,
) -> Result<Option<u64>, Error> {
    match (cursor, from) {
        (Some(_), Some(_)) => Err(Error::invalid_argument(
            "invalid_cursor",
            format!(
                "give cursor or {from_name}, not both: the cursor already says where the next page starts"
            ),
        )),
        (Some(cursor), None) => decode_cursor(kind, direction, cursor).map(Some),
        (None, from) => Ok(from),
    }
}

/// Comma-separated event types (`OrderPlaced,OrderShipped`).
pub fn event_type_list(text: Option<&str>) -> Vec<String> {
    text.map(|text| {
        text.split(',')
            .map(str::trim)
            .filter(|event_type| !event_type.is_empty())
            .map(str::to_string)
            .collect()
    })
    .unwrap_or_default()
}

/// Parses `Last-Event-ID` (the global position of the last event the
/// client got): the subscription resumes after it.
pub fn position_after_last_event_id(text: &str) -> Result<u64, Error> {
    text.trim()
        .parse::<u64>()
        .ok()
        .and_then(|position| position.checked_add(1))
        .ok_or_else(|| {
            let shown: String = text.chars().take(40).collect();
            Error::invalid_argument(
                "invalid_last_event_id",
                format!(
                    "Last-Event-ID `{}` is not an event id this server sent (a global position, an integer from 0)",
                    shown.escape_debug()
                ),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_resume_only_their_own_kind_and_direction() {
        let cursor = encode_cursor(CursorKind::Stream, ReadDirection::Backward, 41);
        assert_eq!(
            decode_cursor(CursorKind::Stream, ReadDirection::Backward, &cursor).unwrap(),
            41
        );
        assert!(decode_cursor(CursorKind::Stream, ReadDirection::Forward, &cursor).is_err());
        assert!(decode_cursor(CursorKind::Log, ReadDirection::Backward, &cursor).is_err());
        assert!(decode_cursor(CursorKind::Log, ReadDirection::Backward, "zz").is_err());
    }

    #[test]
    fn last_event_ids_are_positions() {
        assert_eq!(position_after_last_event_id("7").unwrap(), 8);
        assert!(position_after_last_event_id("-1").is_err());
        assert!(position_after_last_event_id(&u64::MAX.to_string()).is_err());
    }
}
