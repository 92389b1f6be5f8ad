//! The event store's schema, and how its values are encoded in columns.
//!
//! Every table is keyed by tenant first, so no query can reach another
//! tenant's rows without naming it:
//!
//! - `plinth_events_log_heads`: one row per tenant, the counter of its
//!   global log (`last_position`) and the last recorded time. Taking this
//!   row is an append's serialisation point (see `postgres.rs`);
//! - `plinth_events_streams`: one row per stream: version, chain head,
//!   retention metadata, deletion state, what scavenging removed and the
//!   anchor hash of what remains. Rows are never deleted, so a tombstone
//!   or a soft-deleted stream's numbering survives scavenging;
//! - `plinth_events_events`: the events, keyed by (tenant, position),
//!   unique by (tenant, stream, revision) and by (tenant, stream, event
//!   id), which makes ids durable for idempotent retries;
//! - `plinth_events_snapshots`: the latest snapshot per stream, apart from
//!   the events.
//!
//! Revisions and positions are signed 64-bit columns (`-1` = none yet);
//! times are unix microseconds; data and metadata are the exact JSON text
//! the hash chain covers. On PostgreSQL stream names use the `C` collation
//! so prefix filters compare bytes, as on SQLite.
//!
//! Version 2 adds persistent subscriptions (see `persistent/mod.rs`):
//!
//! - `plinth_events_groups`: one row per (tenant, group): source, filter,
//!   settings, and the cursors `scanned_before` (every position below was
//!   handed to tracking or is not for the group) and `settled_before`
//!   (every position below is acked, parked or not for the group);
//! - `plinth_events_group_events`: one row per delivered event not yet
//!   acked: `pending`, `leased` (with its consumer and expiry) or
//!   `parked`, with its retry and delivery counts. Acked events have no
//!   row.

use plinth_core::Error;
use plinth_engines::{Migration, MigrationSet};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::chain::hash_from_bytes;
use crate::model::{RecordedEvent, StreamMetadata};
use crate::rules::StreamRecord;
use plinth_core::HumanDuration;

pub static EVENTS_MIGRATIONS: MigrationSet = MigrationSet {
    component: "events",
    migrations: &[
        Migration {
            version: 1,
            name: "log heads, streams, events and snapshots",
            sqlite: SQLITE_V1,
            postgres: POSTGRES_V1,
        },
        Migration {
            version: 2,
            name: "persistent subscription groups and their tracked events",
            sqlite: SQLITE_V2,
            postgres: POSTGRES_V2,
        },
    ],
};

const SQLITE_V1: &str = "
CREATE TABLE plinth_events_log_heads (
    tenant TEXT NOT NULL PRIMARY KEY,
    last_position INTEGER NOT NULL,
    last_recorded_us INTEGER NOT NULL
);

CREATE TABLE plinth_events_streams (
    tenant TEXT NOT NULL,
    stream TEXT NOT NULL,
    last_revision INTEGER NOT NULL,
    last_position INTEGER NOT NULL,
    last_hash BLOB NOT NULL,
    visible_from_revision INTEGER NOT NULL,
    truncate_before INTEGER,
    max_count INTEGER,
    max_age_us INTEGER,
    soft_deleted INTEGER NOT NULL,
    tombstoned INTEGER NOT NULL,
    scavenged_before_revision INTEGER NOT NULL,
    scavenged_anchor_hash BLOB NOT NULL,
    PRIMARY KEY (tenant, stream)
);

CREATE TABLE plinth_events_events (
    tenant TEXT NOT NULL,
    position INTEGER NOT NULL,
    stream TEXT NOT NULL,
    revision INTEGER NOT NULL,
    event_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    schema_version INTEGER NOT NULL,
    data TEXT NOT NULL,
    metadata TEXT NOT NULL,
    recorded_at_us INTEGER NOT NULL,
    hash BLOB NOT NULL,
    PRIMARY KEY (tenant, position)
);
CREATE UNIQUE INDEX plinth_events_by_stream_revision
    ON plinth_events_events (tenant, stream, revision);
CREATE UNIQUE INDEX plinth_events_by_stream_event_id
    ON plinth_events_events (tenant, stream, event_id);

CREATE TABLE plinth_events_snapshots (
    tenant TEXT NOT NULL,
    stream TEXT NOT NULL,
    revision INTEGER NOT NULL,
    schema_version INTEGER NOT NULL,
    data TEXT NOT NULL,
    recorded_at_us INTEGER NOT NULL,
    PRIMARY KEY (tenant, stream)
);
";

const POSTGRES_V1: &str = r#"
CREATE TABLE plinth_events_log_heads (
    tenant TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    last_position BIGINT NOT NULL,
    last_recorded_us BIGINT NOT NULL
);

CREATE TABLE plinth_events_streams (
    tenant TEXT COLLATE "C" NOT NULL,
    stream TEXT COLLATE "C" NOT NULL,
    last_revision BIGINT NOT NULL,
    last_position BIGINT NOT NULL,
    last_hash BYTEA NOT NULL,
    visible_from_revision BIGINT NOT NULL,
    truncate_before BIGINT,
    max_count BIGINT,
    max_age_us BIGINT,
    soft_deleted BOOLEAN NOT NULL,
    tombstoned BOOLEAN NOT NULL,
    scavenged_before_revision BIGINT NOT NULL,
    scavenged_anchor_hash BYTEA NOT NULL,
    PRIMARY KEY (tenant, stream)
);

CREATE TABLE plinth_events_events (
    tenant TEXT COLLATE "C" NOT NULL,
    position BIGINT NOT NULL,
    stream TEXT COLLATE "C" NOT NULL,
    revision BIGINT NOT NULL,
    event_id TEXT NOT NULL,
    event_type TEXT COLLATE "C" NOT NULL,
    schema_version INTEGER NOT NULL,
    data TEXT NOT NULL,
    metadata TEXT NOT NULL,
    recorded_at_us BIGINT NOT NULL,
    hash BYTEA NOT NULL,
    PRIMARY KEY (tenant, position)
);
CREATE UNIQUE INDEX plinth_events_by_stream_revision
    ON plinth_events_events (tenant, stream, revision);
CREATE UNIQUE INDEX plinth_events_by_stream_event_id
    ON plinth_events_events (tenant, stream, event_id);

CREATE TABLE plinth_events_snapshots (
    tenant TEXT COLLATE "C" NOT NULL,
    stream TEXT COLLATE "C" NOT NULL,
    revision BIGINT NOT NULL,
    schema_version INTEGER NOT NULL,
    data TEXT NOT NULL,
    recorded_at_us BIGINT NOT NULL,
    PRIMARY KEY (tenant, stream)
);
"#;

const SQLITE_V2: &str = "
CREATE TABLE plinth_events_groups (
    tenant TEXT NOT NULL,
    group_name TEXT NOT NULL,
    source_stream TEXT,
    filter_stream_prefix TEXT,
    filter_event_types TEXT NOT NULL,
    start_from TEXT NOT NULL,
    max_retries INTEGER NOT NULL,
    lease_timeout_us INTEGER NOT NULL,
    max_in_flight INTEGER NOT NULL,
    scanned_before INTEGER NOT NULL,
    settled_before INTEGER NOT NULL,
    total_retries INTEGER NOT NULL,
    created_at_us INTEGER NOT NULL,
    PRIMARY KEY (tenant, group_name)
);

CREATE TABLE plinth_events_group_events (
    tenant TEXT NOT NULL,
    group_name TEXT NOT NULL,
    position INTEGER NOT NULL,
    state TEXT NOT NULL,
    retry_count INTEGER NOT NULL,
    delivery_count INTEGER NOT NULL,
    consumer TEXT,
    lease_expires_us INTEGER,
    PRIMARY KEY (tenant, group_name, position)
);
CREATE INDEX plinth_events_group_events_by_state
    ON plinth_events_group_events (tenant, group_name, state, position);
";

const POSTGRES_V2: &str = r#"
CREATE TABLE plinth_events_groups (
    tenant TEXT COLLATE "C" NOT NULL,
    group_name TEXT COLLATE "C" NOT NULL,
    source_stream TEXT COLLATE "C",
    filter_stream_prefix TEXT COLLATE "C",
    filter_event_types TEXT NOT NULL,
    start_from TEXT NOT NULL,
    max_retries BIGINT NOT NULL,
    lease_timeout_us BIGINT NOT NULL,
    max_in_flight BIGINT NOT NULL,
    scanned_before BIGINT NOT NULL,
    settled_before BIGINT NOT NULL,
    total_retries BIGINT NOT NULL,
    created_at_us BIGINT NOT NULL,
    PRIMARY KEY (tenant, group_name)
);

CREATE TABLE plinth_events_group_events (
    tenant TEXT COLLATE "C" NOT NULL,
    group_name TEXT COLLATE "C" NOT NULL,
    position BIGINT NOT NULL,
    state TEXT NOT NULL,
    retry_count BIGINT NOT NULL,
    delivery_count BIGINT NOT NULL,
    consumer TEXT,
    lease_expires_us BIGINT,
    PRIMARY KEY (tenant, group_name, position)
);
CREATE INDEX plinth_events_group_events_by_state
    ON plinth_events_group_events (tenant, group_name, state, position);
"#;

/// The columns of a stream row, in the order `StreamRow` reads them.
pub(crate) const STREAM_COLUMNS: &str = "last_revision, last_position, last_hash, truncate_before, max_count, max_age_us, soft_deleted, tombstoned, scavenged_before_revision, scavenged_anchor_hash";

/// The columns of an event row, in the order `EventRow` reads them.
pub(crate) const EVENT_COLUMNS: &str = "e.stream, e.revision, e.position, e.event_id, e.event_type, e.schema_version, e.data, e.metadata, e.recorded_at_us, e.hash";

pub(crate) fn to_column(value: u64, what: &str) -> Result<i64, Error> {
    i64::try_from(value).map_err(|_| {
        Error::invalid_argument("value_out_of_range", format!("{what} {value} is too large"))
    })
}

/// `None` becomes `-1`, the columns' "none yet".
pub(crate) fn optional_to_column(value: Option<u64>, what: &str) -> Result<i64, Error> {
    match value {
        None => Ok(-1),
        Some(value) => to_column(value, what),
    }
}

pub(crate) fn from_column(value: i64, what: &str) -> Result<u64, Error> {
    u64::try_from(value).map_err(|_| Error::internal(format!("stored {what} {value} is negative")))
}

pub(crate) fn optional_from_column(value: i64, what: &str) -> Result<Option<u64>, Error> {
    if value == -1 {
        return Ok(None);
    }
    from_column(value, what).map(Some)
}

fn nullable_from_column(value: Option<i64>, what: &str) -> Result<Option<u64>, Error> {
    value.map(|value| from_column(value, what)).transpose()
}

fn nullable_to_column(value: Option<u64>, what: &str) -> Result<Option<i64>, Error> {
    value.map(|value| to_column(value, what)).transpose()
}

fn stored_hash(bytes: &[u8], what: &str) -> Result<[u8; 32], Error> {
    hash_from_bytes(bytes).ok_or_else(|| Error::internal(format!("stored {what} is not 32 bytes")))
}

pub(crate) fn micros_to_time(micros: i64) -> Result<OffsetDateTime, Error> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1_000)
        .map_err(|_| Error::internal(format!("stored time {micros} is out of range")))
}

pub(crate) fn time_to_micros(at: OffsetDateTime) -> i64 {
    i64::try_from(at.unix_timestamp_nanos() / 1_000).unwrap_or(i64::MAX)
}

/// A stream row as both engines store it.
pub(crate) struct StreamRow {
    pub last_revision: i64,
    pub last_position: i64,
    pub last_hash: Vec<u8>,
    pub truncate_before: Option<i64>,
    pub max_count: Option<i64>,
    pub max_age_micros: Option<i64>,
    pub soft_deleted: bool,
    pub tombstoned: bool,
    pub scavenged_before_revision: i64,
    pub scavenged_anchor_hash: Vec<u8>,
    /// Derived from the rest; stored so `read_all` can filter in SQL.
    pub visible_from_revision: i64,
}

impl StreamRow {
    pub fn from_record(record: &StreamRecord) -> Result<Self, Error> {
        let max_age_micros = record.metadata.max_age.map(crate::rules::duration_micros);
        Ok(StreamRow {
            last_revision: optional_to_column(record.last_revision, "revision")?,
            last_position: optional_to_column(record.last_position, "position")?,
            last_hash: record.last_hash.to_vec(),
            truncate_before: nullable_to_column(
                record.metadata.truncate_before,
                "truncate_before",
            )?,
            max_count: nullable_to_column(record.metadata.max_count, "max_count")?,
            max_age_micros,
            soft_deleted: record.soft_deleted,
            tombstoned: record.tombstoned,
            scavenged_before_revision: to_column(record.scavenged_before_revision, "revision")?,
            scavenged_anchor_hash: record.scavenged_anchor_hash.to_vec(),
            visible_from_revision: to_column(record.visible_from_revision(), "revision")?,
        })
    }

    pub fn into_record(self) -> Result<StreamRecord, Error> {
        let max_age = match self.max_age_micros {
            None => None,
            Some(micros) => Some(HumanDuration(std::time::Duration::from_micros(
                from_column(micros, "max_age")?,
            ))),
        };
        Ok(StreamRecord {
            last_revision: optional_from_column(self.last_revision, "revision")?,
            last_position: optional_from_column(self.last_position, "position")?,
            last_hash: stored_hash(&self.last_hash, "chain head")?,
            metadata: StreamMetadata {
                max_count: nullable_from_column(self.max_count, "max_count")?,
                max_age,
                truncate_before: nullable_from_column(self.truncate_before, "truncate_before")?,
            },
            soft_deleted: self.soft_deleted,
            tombstoned: self.tombstoned,
            scavenged_before_revision: from_column(self.scavenged_before_revision, "revision")?,
            scavenged_anchor_hash: stored_hash(&self.scavenged_anchor_hash, "anchor hash")?,
        })
    }
}

/// An event row as both engines store it.
pub(crate) struct EventRow {
    pub stream: String,
    pub revision: i64,
    pub position: i64,
    pub event_id: String,
    pub event_type: String,
    pub schema_version: i64,
    pub data: String,
    pub metadata: String,
    pub recorded_at_micros: i64,
    pub hash: Vec<u8>,
}

impl EventRow {
    pub fn into_recorded(self) -> Result<RecordedEvent, Error> {
        let id = Uuid::parse_str(&self.event_id).map_err(|_| {
            Error::internal(format!("stored event id `{}` is not a UUID", self.event_id))
        })?;
        let data = serde_json::from_str(&self.data)
            .map_err(|error| Error::internal(format!("stored event data is not JSON: {error}")))?;
        let metadata = serde_json::from_str(&self.metadata).map_err(|error| {
            Error::internal(format!("stored event metadata is not JSON: {error}"))
        })?;
        Ok(RecordedEvent {
            stream: self.stream,
            revision: from_column(self.revision, "revision")?,
            position: from_column(self.position, "position")?,
            id,
            event_type: self.event_type,
            schema_version: u32::try_from(self.schema_version)
                .map_err(|_| Error::internal("stored schema version is out of range"))?,
            data,
            metadata,
            recorded_at: micros_to_time(self.recorded_at_micros)?,
            hash: hex::encode(stored_hash(&self.hash, "event hash")?),
        })
    }
}
