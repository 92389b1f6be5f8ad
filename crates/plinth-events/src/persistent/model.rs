//! The vocabulary of persistent subscriptions: group names, where a group
//! starts, its settings, and the requests and answers of every operation.
//! Nothing here touches an engine.

use std::fmt;
use std::time::Duration;

use plinth_core::{Error, HumanDuration, ResourceName};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::OffsetDateTime;

use crate::model::{AllFilter, MAX_REVISION, RecordedEvent, StreamName};

/// The most retries a group may allow before parking.
pub const MAX_GROUP_RETRIES: u32 = 1_000;
/// The most events a group may have leased at once.
pub const MAX_GROUP_IN_FLIGHT: u32 = 10_000;
/// The shortest and longest lease (visibility timeout) a group may use.
pub const MIN_LEASE_TIMEOUT: Duration = Duration::from_millis(100);
pub const MAX_LEASE_TIMEOUT: Duration = Duration::from_secs(3_600);
/// The longest a `lease` call may wait for events.
pub const MAX_LEASE_WAIT: Duration = Duration::from_secs(60);
/// The most positions one ack, nack or replay may name.
pub const MAX_POSITIONS_PER_CALL: usize = 1_000;

/// The name of a consumer group: the resource-name rules, so it is safe in
/// URLs and log lines as it is.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupName(ResourceName);

impl GroupName {
    pub fn parse(text: &str) -> Result<Self, Error> {
        ResourceName::parse("group", text).map(GroupName)
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

impl fmt::Display for GroupName {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

impl Serialize for GroupName {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for GroupName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        GroupName::parse(&text).map_err(|error| serde::de::Error::custom(error.detail()))
    }
}

/// Where a new group starts in the tenant's global log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StartFrom {
    /// Every event, from position 0.
    #[default]
    Start,
    /// Only events committed after the group was created.
    End,
    /// Events from this global position on (inclusive), also for a group
    /// on one stream.
    Position(u64),
}

impl StartFrom {
    /// Parses `start`, `end` or a global position.
    pub fn parse(text: &str) -> Result<Self, Error> {
        match text {
            "start" => Ok(StartFrom::Start),
            "end" => Ok(StartFrom::End),
            position => position
                .parse::<u64>()
                .ok()
                .filter(|parsed| *parsed <= MAX_REVISION)
                .map(StartFrom::Position)
                .ok_or_else(|| {
                    let shown: String = position.chars().take(40).collect();
                    Error::invalid_argument(
                        "invalid_start_from",
                        format!(
                            "start_from `{}` is invalid: use \"start\", \"end\" or a global position (an integer from 0)",
                            shown.escape_debug()
                        ),
                    )
                }),
        }
    }
}

impl fmt::Display for StartFrom {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartFrom::Start => formatter.write_str("start"),
            StartFrom::End => formatter.write_str("end"),
            StartFrom::Position(position) => write!(formatter, "{position}"),
        }
    }
}

impl Serialize for StartFrom {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            StartFrom::Position(position) => serializer.serialize_u64(*position),
            keyword => serializer.collect_str(keyword),
        }
    }
}

/// JSON carries a keyword or a position.
#[derive(Deserialize)]
#[serde(untagged)]
enum StartFromJson {
    Keyword(String),
    Position(i128),
    Other(serde_json::Value),
}

impl<'de> Deserialize<'de> for StartFrom {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let parsed = match StartFromJson::deserialize(deserializer)? {
            StartFromJson::Keyword(keyword) => StartFrom::parse(&keyword),
            StartFromJson::Position(position) => StartFrom::parse(&position.to_string()),
            StartFromJson::Other(other) => StartFrom::parse(&other.to_string()),
        };
        parsed.map_err(|error| serde::de::Error::custom(error.detail()))
    }
}

/// How a group delivers; may be changed after creation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GroupSettings {
    /// Nacks and lease expiries an event may have before it is parked: it
    /// is delivered at most `max_retries + 1` times.
    pub max_retries: u32,
    /// How long a lease hides an event from other consumers.
    pub lease_timeout: HumanDuration,
    /// The most events leased (and not yet acked, nacked or expired) at once.
    pub max_in_flight: u32,
}

impl Default for GroupSettings {
    fn default() -> Self {
        GroupSettings {
            max_retries: 10,
            lease_timeout: HumanDuration::from_secs(30),
            max_in_flight: 100,
        }
    }
}

impl GroupSettings {
    pub fn validate(&self) -> Result<(), Error> {
        if self.max_retries > MAX_GROUP_RETRIES {
            return Err(invalid_settings(format!(
                "max_retries is {}; at most {MAX_GROUP_RETRIES} are allowed",
                self.max_retries
            )));
        }
        if self.max_in_flight == 0 || self.max_in_flight > MAX_GROUP_IN_FLIGHT {
            return Err(invalid_settings(format!(
                "max_in_flight is {}; it must be 1 to {MAX_GROUP_IN_FLIGHT}",
                self.max_in_flight
            )));
        }
        let lease_timeout = self.lease_timeout.as_duration();
        if !(MIN_LEASE_TIMEOUT..=MAX_LEASE_TIMEOUT).contains(&lease_timeout) {
            return Err(invalid_settings(format!(
                "lease_timeout is {}; it must be 100ms to 1h",
                self.lease_timeout
            )));
        }
        Ok(())
    }
}

fn invalid_settings(detail: String) -> Error {
    Error::invalid_argument("invalid_group_settings", detail)
}

/// What a group is subscribed to, where it starts and how it delivers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GroupDefinition {
    /// One stream; `None` subscribes to the tenant's global log.
    pub stream: Option<StreamName>,
    /// Event types apply to either source; a stream prefix only to the
    /// global log.
    pub filter: AllFilter,
    pub start_from: StartFrom,
    pub settings: GroupSettings,
}

/// A group as stored.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GroupInfo {
    pub group: String,
    pub stream: Option<String>,
    pub filter: AllFilter,
    pub start_from: StartFrom,
    pub settings: GroupSettings,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// One consumer's pull of events.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseRequest {
    /// Who holds the leases (a resource name), for status and logs.
    pub consumer: String,
    /// The most events to lease; lowered to `events.max_read_count` and to
    /// what the group's `max_in_flight` leaves.
    pub limit: usize,
    /// How long to wait for an event when none is deliverable at once
    /// (at most [`MAX_LEASE_WAIT`]); zero answers at once.
    pub wait: Duration,
}

impl LeaseRequest {
    pub fn new(consumer: &str, limit: usize) -> Self {
        LeaseRequest {
            consumer: consumer.to_string(),
            limit,
            wait: Duration::ZERO,
        }
    }

    pub fn wait(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }
}

/// An event leased to one consumer until `lease_expires_at`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LeasedEvent {
    pub event: RecordedEvent,
    /// Nacks and lease expiries so far.
    pub retry_count: u32,
    /// Deliveries so far, this one included.
    pub delivery_count: u32,
    #[serde(with = "time::serde::rfc3339")]
    pub lease_expires_at: OffsetDateTime,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LeaseBatch {
    /// In global position order.
    pub events: Vec<LeasedEvent>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct AckOutcome {
    pub acked: Vec<u64>,
    /// Positions that were not leased or awaiting redelivery (already
    /// acked, parked, never delivered): nothing changed for them.
    pub not_in_flight: Vec<u64>,
    /// The group's checkpoint after the ack.
    pub checkpoint: Option<u64>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct NackOutcome {
    /// Deliverable again.
    pub retrying: Vec<u64>,
    /// Out of retries.
    pub parked: Vec<u64>,
    /// Positions that were not leased: nothing changed for them.
    pub not_in_flight: Vec<u64>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ParkedEvent {
    pub event: RecordedEvent,
    pub retry_count: u32,
}

/// A page of a tenant's groups, by name.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GroupPage {
    pub groups: Vec<GroupInfo>,
    /// The name the next page starts after; `None` at the end.
    pub next_after: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ParkedPage {
    pub events: Vec<ParkedEvent>,
    /// Where the next page starts; `None` at the end.
    pub next_position: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct ReplayOutcome {
    /// Parked events made deliverable again.
    pub replayed: u64,
}

/// What a group has done and has left to do.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GroupStatus {
    pub group: GroupInfo,
    /// The tenant's last committed position.
    pub head_position: Option<u64>,
    /// Every event at or below this position is acked, parked or not for
    /// the group; `None` before the first.
    pub checkpoint: Option<u64>,
    /// Positions of the log after the checkpoint: `head - checkpoint`.
    pub lag: u64,
    /// Events leased now (leases not expired).
    pub in_flight: u64,
    /// Events nacked, replayed or whose lease expired, to deliver again.
    pub awaiting_redelivery: u64,
    pub parked: u64,
    /// In-flight or waiting events that were retried at least once.
    pub events_retrying: u64,
    /// Every retry the group counted since it was created.
    pub total_retries: u64,
}
