//! The event store's vocabulary: stream names, expected versions, the
//! events a caller appends, the events a reader gets back, and the
//! requests and answers of every operation. Nothing here touches an
//! engine.
//!
//! Numbering follows KurrentDB: the first event of a stream has revision
//! 0, and a stream's version is the revision of its last event (after
//! three events it is 2). Positions in a tenant's global log start at 0 too.

use std::fmt;

use plinth_core::{Error, ErrorKind, HumanDuration, ResourceName};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;
use time::OffsetDateTime;
use uuid::Uuid;

/// The name of a stream: the same rules as every resource name (1 to 200
/// characters of letters, digits, `-`, `_`, `.`, `:`, `@`, not starting
/// with `.`), so stream names are safe in URLs and log lines as they are.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamName(ResourceName);

impl StreamName {
    pub fn parse(text: &str) -> Result<Self, Error> {
        ResourceName::parse("stream", text).map(StreamName)
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

impl fmt::Display for StreamName {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

impl Serialize for StreamName {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for StreamName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        StreamName::parse(&text).map_err(|error| serde::de::Error::custom(error.detail()))
    }
}

/// What the caller believes about the stream before its append.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpectedVersion {
    /// No check.
    Any,
    /// The stream has no events (or was soft-deleted).
    NoStream,
    /// The stream has at least one event.
    Exists,
    /// The stream's last event has exactly this revision.
    Exact(u64),
}

impl ExpectedVersion {
    /// Parses `any`, `no_stream`, `exists` or a revision (a non-negative
    /// integer), the forms a query string or header carries.
    pub fn parse(text: &str) -> Result<Self, Error> {
        match text {
            "any" => Ok(ExpectedVersion::Any),
            "no_stream" => Ok(ExpectedVersion::NoStream),
            "exists" => Ok(ExpectedVersion::Exists),
            revision => revision
                .parse::<u64>()
                .ok()
                .filter(|parsed| *parsed <= MAX_REVISION)
                .map(ExpectedVersion::Exact)
                .ok_or_else(|| invalid_expected_version(revision)),
        }
    }
}

/// Revisions and positions are stored in signed 64-bit columns.
pub const MAX_REVISION: u64 = i64::MAX as u64;

fn invalid_expected_version(text: &str) -> Error {
    let shown: String = text.chars().take(40).collect();
    Error::invalid_argument(
        "invalid_expected_version",
        format!(
            "expected_version `{}` is invalid: use \"any\", \"no_stream\", \"exists\" or a revision (an integer from 0)",
            shown.escape_debug()
        ),
    )
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpectedVersion::Any => formatter.write_str("any"),
            ExpectedVersion::NoStream => formatter.write_str("no_stream"),
            ExpectedVersion::Exists => formatter.write_str("exists"),
            ExpectedVersion::Exact(revision) => write!(formatter, "{revision}"),
        }
    }
}

impl Serialize for ExpectedVersion {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            ExpectedVersion::Exact(revision) => serializer.serialize_u64(*revision),
            keyword => serializer.collect_str(keyword),
        }
    }
}

/// JSON carries a keyword string or a revision number.
#[derive(Deserialize)]
#[serde(untagged)]
enum ExpectedVersionJson {
    Keyword(String),
    Revision(i128),
    Other(Value),
}

impl<'de> Deserialize<'de> for ExpectedVersion {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let parsed = match ExpectedVersionJson::deserialize(deserializer)? {
            ExpectedVersionJson::Keyword(keyword) => ExpectedVersion::parse(&keyword),
            ExpectedVersionJson::Revision(revision) => {
                ExpectedVersion::parse(&revision.to_string())
            }
            ExpectedVersionJson::Other(other) => ExpectedVersion::parse(&other.to_string()),
        };
        parsed.map_err(|error| serde::de::Error::custom(error.detail()))
    }
}

fn first_schema_version() -> u32 {
    1
}

/// One event as a caller appends it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewEvent {
    /// Makes the append idempotent; generated (UUIDv7) when absent.
    #[serde(default)]
    pub id: Option<Uuid>,
    #[serde(rename = "type")]
    pub event_type: String,
    pub data: Value,
    /// A JSON object; `correlation_id` and `causation_id` in it, when
    /// present, must be strings.
    #[serde(default)]
    pub metadata: Option<Value>,
    #[serde(default = "first_schema_version")]
    pub schema_version: u32,
}

impl NewEvent {
    /// An event of `event_type` with `data`, schema version 1, no id.
    pub fn new(event_type: &str, data: Value) -> Self {
        NewEvent {
            id: None,
            event_type: event_type.to_string(),
            data,
            metadata: None,
            schema_version: 1,
        }
    }

    pub fn with_id(mut self, id: Uuid) -> Self {
        self.id = Some(id);
        self
    }

    pub fn with_metadata(mut self, metadata: Value) -> Self {
        self.metadata = Some(metadata);
        self
    }
}

/// An atomic append of a batch of events to one stream.
#[derive(Clone, Debug, PartialEq)]
pub struct AppendRequest {
    pub expected_version: ExpectedVersion,
    pub events: Vec<NewEvent>,
    /// The correlation id of events whose metadata gives none (the server
    /// passes the request id).
    pub default_correlation_id: Option<String>,
}

impl AppendRequest {
    pub fn new(expected_version: ExpectedVersion, events: Vec<NewEvent>) -> Self {
        AppendRequest {
            expected_version,
            events,
            default_correlation_id: None,
        }
    }
}

/// Where one appended event landed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AppendedEvent {
    pub id: Uuid,
    pub revision: u64,
    pub position: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AppendResult {
    pub events: Vec<AppendedEvent>,
    /// The stream's version after the append: the last event's revision.
    pub stream_version: u64,
    /// True when every event was already in the stream at the same place
    /// (a retried append): nothing was written and this is the original
    /// result.
    pub replayed: bool,
}

/// An append whose expected version did not hold.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VersionConflict {
    pub stream: String,
    pub expected_version: ExpectedVersion,
    /// The stream's version now; `None` when it has no events.
    pub current_version: Option<u64>,
}

/// Why an append failed. A version conflict is kept apart from every other
/// failure so the caller can answer with the current version.
#[derive(Clone, Debug)]
pub enum AppendError {
    WrongExpectedVersion(VersionConflict),
    Failed(Error),
}

impl AppendError {
    /// The conflict as a plain error (`wrong_expected_version`, 409).
    pub fn into_error(self) -> Error {
        match self {
            AppendError::Failed(error) => error,
            AppendError::WrongExpectedVersion(conflict) => {
                let current = match conflict.current_version {
                    Some(version) => version.to_string(),
                    None => "no_stream (no events)".to_string(),
                };
                Error::new(
                    ErrorKind::Conflict,
                    "wrong_expected_version",
                    format!(
                        "stream `{}` was expected at version {} but is at {current}",
                        conflict.stream, conflict.expected_version
                    ),
                )
            }
        }
    }
}

impl From<Error> for AppendError {
    fn from(error: Error) -> Self {
        AppendError::Failed(error)
    }
}

impl fmt::Display for AppendError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}", self.clone().into_error())
    }
}

/// One stored event as readers see it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RecordedEvent {
    pub stream: String,
    pub revision: u64,
    pub position: u64,
    pub id: Uuid,
    #[serde(rename = "type")]
    pub event_type: String,
    pub schema_version: u32,
    pub data: Value,
    pub metadata: Value,
    #[serde(with = "time::serde::rfc3339")]
    pub recorded_at: OffsetDateTime,
    /// Hex SHA-256 chaining this event to the previous one of its stream
    /// (see `chain.rs`).
    pub hash: String,
}

impl RecordedEvent {
    pub fn correlation_id(&self) -> Option<&str> {
        self.metadata.get("correlation_id").and_then(Value::as_str)
    }

    pub fn causation_id(&self) -> Option<&str> {
        self.metadata.get("causation_id").and_then(Value::as_str)
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadDirection {
    #[default]
    Forward,
    Backward,
}

/// A point in time to read as of: only events at or before it are seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AsOf {
    /// Events whose global position is at most this.
    Position(u64),
    /// Events recorded at or before this instant.
    Timestamp(OffsetDateTime),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadStreamRequest {
    pub direction: ReadDirection,
    /// The first revision returned (inclusive); `None` is the start
    /// (forward) or the end (backward).
    pub from_revision: Option<u64>,
    pub limit: usize,
    pub as_of: Option<AsOf>,
}

impl ReadStreamRequest {
    pub fn forward(limit: usize) -> Self {
        ReadStreamRequest {
            direction: ReadDirection::Forward,
            from_revision: None,
            limit,
            as_of: None,
        }
    }

    pub fn backward(limit: usize) -> Self {
        ReadStreamRequest {
            direction: ReadDirection::Backward,
            ..Self::forward(limit)
        }
    }

    pub fn from_revision(mut self, revision: u64) -> Self {
        self.from_revision = Some(revision);
        self
    }

    pub fn as_of(mut self, as_of: AsOf) -> Self {
        self.as_of = Some(as_of);
        self
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StreamSlice {
    pub events: Vec<RecordedEvent>,
    /// Where the next page starts; `None` when this page reached the end.
    pub next_revision: Option<u64>,
    /// The stream's version (last revision), hidden events included.
    pub stream_version: Option<u64>,
}

/// Which events of the global log a read returns.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AllFilter {
    /// Only streams whose name starts with this.
    pub stream_prefix: Option<String>,
    /// Only events of these types; empty means every type.
    pub event_types: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadAllRequest {
    pub direction: ReadDirection,
    /// The first position returned (inclusive); `None` is the start
    /// (forward) or the end (backward).
    pub from_position: Option<u64>,
    pub limit: usize,
    pub filter: AllFilter,
    pub as_of: Option<AsOf>,
}

impl ReadAllRequest {
    pub fn forward(limit: usize) -> Self {
        ReadAllRequest {
            direction: ReadDirection::Forward,
            from_position: None,
            limit,
            filter: AllFilter::default(),
            as_of: None,
        }
    }

    pub fn backward(limit: usize) -> Self {
        ReadAllRequest {
            direction: ReadDirection::Backward,
            ..Self::forward(limit)
        }
    }

    pub fn from_position(mut self, position: u64) -> Self {
        self.from_position = Some(position);
        self
    }

    pub fn filter(mut self, filter: AllFilter) -> Self {
        self.filter = filter;
        self
    }

    pub fn as_of(mut self, as_of: AsOf) -> Self {
        self.as_of = Some(as_of);
        self
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AllSlice {
    pub events: Vec<RecordedEvent>,
    /// Where the next page starts; `None` when this page reached the end
    /// of what is committed.
    pub next_position: Option<u64>,
    /// The tenant's last committed position; `None` when its log is empty.
    pub head_position: Option<u64>,
}

/// Retention settings of a stream. Reads hide what they exclude at once;
/// scavenging removes it later.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamMetadata {
    /// Keep only the last this many events.
    pub max_count: Option<u64>,
    /// Hide events recorded longer ago than this.
    pub max_age: Option<HumanDuration>,
    /// Hide events with a revision below this. Only moves forward: a
    /// lower or absent value in a metadata write keeps the current one.
    pub truncate_before: Option<u64>,
}

/// What a stream is, as seen from its record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamStatus {
    Active,
    /// Soft-deleted: reads find nothing; an append re-creates the stream
    /// and continues its numbering.
    SoftDeleted,
    /// Hard-deleted: a tombstone; appends and reads fail with
    /// `stream_deleted` forever.
    Tombstoned,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StreamInfo {
    pub stream: String,
    /// The last revision ever written, hidden events included.
    pub version: Option<u64>,
    pub status: StreamStatus,
    pub metadata: StreamMetadata,
    /// The first revision reads may return (before age filtering).
    pub visible_from_revision: u64,
}

/// How a stream is deleted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeleteMode {
    Soft,
    Hard,
}

/// A snapshot as a caller stores it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewSnapshot {
    /// The revision of the last event the snapshot folds in.
    pub revision: u64,
    pub data: Value,
    #[serde(default = "first_schema_version")]
    pub schema_version: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Snapshot {
    pub stream: String,
    pub revision: u64,
    pub data: Value,
    pub schema_version: u32,
    #[serde(with = "time::serde::rfc3339")]
    pub recorded_at: OffsetDateTime,
}

/// A stream's latest snapshot and the events after it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SnapshotAndEvents {
    pub snapshot: Option<Snapshot>,
    pub events: Vec<RecordedEvent>,
    pub next_revision: Option<u64>,
    pub stream_version: Option<u64>,
}
