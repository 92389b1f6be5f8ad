//! The storage port of consumer groups: what a backend must do. As for
//! streams, backends load and write rows and every decision comes from
//! `rules.rs`.

use std::sync::Arc;

use async_trait::async_trait;
use plinth_core::{Error, TenantId};
use plinth_engines::Store;

use crate::model::{AllFilter, RecordedEvent, StreamName};
use crate::persistent::model::{GroupInfo, GroupName, GroupSettings, StartFrom};
use crate::persistent::rules::{GroupChange, GroupChangeOutcome, GroupCursors};

/// A group's row.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct GroupRecord {
    pub stream: Option<StreamName>,
    pub filter: AllFilter,
    pub start_from: StartFrom,
    pub settings: GroupSettings,
    pub cursors: GroupCursors,
    pub created_at_micros: i64,
}

impl GroupRecord {
    pub fn info(&self, group: &GroupName) -> Result<GroupInfo, Error> {
        Ok(GroupInfo {
            group: group.as_str().to_string(),
            stream: self
                .stream
                .as_ref()
                .map(|stream| stream.as_str().to_string()),
            filter: self.filter.clone(),
            start_from: self.start_from,
            settings: self.settings,
            created_at: crate::migrations::micros_to_time(self.created_at_micros)?,
        })
    }
}

/// Counts for a group's status, at `now`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct GroupCounts {
    pub in_flight: u64,
    pub awaiting_redelivery: u64,
    pub parked: u64,
    pub events_retrying: u64,
}

impl GroupCounts {
    /// In-flight, awaiting redelivery, parked, retrying: the order both
    /// backends select them in.
    pub fn from_columns(columns: [i64; 4]) -> Result<Self, Error> {
        let [in_flight, awaiting_redelivery, parked, events_retrying] = columns;
        Ok(GroupCounts {
            in_flight: stored_count(in_flight, "count")?,
            awaiting_redelivery: stored_count(awaiting_redelivery, "count")?,
            parked: stored_count(parked, "count")?,
            events_retrying: stored_count(events_retrying, "count")?,
        })
    }
}

/// A parked event's row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ParkedRow {
    pub position: u64,
    pub retry_count: u32,
}

#[async_trait]
pub(crate) trait GroupBackend: Send + Sync {
    /// Inserts the group; `group_exists` when the name is taken. A group
    /// starting at the end starts after the tenant's head read in the same
    /// transaction.
    async fn create_group(
        &self,
        tenant: &TenantId,
        group: &GroupName,
        record: GroupRecord,
    ) -> Result<GroupRecord, Error>;

    async fn group_record(
        &self,
        tenant: &TenantId,
        group: &GroupName,
    ) -> Result<Option<GroupRecord>, Error>;

    /// Every group of the tenant, by name.
    /// The tenant's groups by name, after `after_name`, at most `limit`.
    async fn group_records(
        &self,
        tenant: &TenantId,
        after_name: Option<String>,
        limit: i64,
    ) -> Result<Vec<(GroupName, GroupRecord)>, Error>;

    async fn update_group_settings(
        &self,
        tenant: &TenantId,
        group: &GroupName,
        settings: GroupSettings,
    ) -> Result<Option<GroupRecord>, Error>;

    /// Deletes the group and everything it tracks; false when absent.
    async fn delete_group(&self, tenant: &TenantId, group: &GroupName) -> Result<bool, Error>;

    /// Loads the group's state, reads new events for a lease, applies the
    /// change (`rules.rs`) and writes back, in one transaction.
    async fn change_group(
        &self,
        tenant: &TenantId,
        group: &GroupName,
        change: GroupChange,
    ) -> Result<Option<GroupChangeOutcome>, Error>;

    async fn group_counts(
        &self,
        tenant: &TenantId,
        group: &GroupName,
        now_micros: i64,
    ) -> Result<GroupCounts, Error>;

    /// Parked events by position, after `after_position`.
    async fn parked_rows(
        &self,
        tenant: &TenantId,
        group: &GroupName,
        after_position: Option<u64>,
        limit: i64,
    ) -> Result<Vec<ParkedRow>, Error>;

    /// Makes parked events deliverable again with their retries reset:
    /// those at `positions`, or the first `limit` when `positions` is empty.
    async fn replay_parked(
        &self,
        tenant: &TenantId,
        group: &GroupName,
        positions: Vec<u64>,
        limit: i64,
    ) -> Result<u64, Error>;

    /// Stored events at these positions (missing ones are left out).
    async fn events_at_positions(
        &self,
        tenant: &TenantId,
        positions: Vec<u64>,
    ) -> Result<Vec<RecordedEvent>, Error>;
}

pub(crate) fn open_group_backend(store: &Store) -> Arc<dyn GroupBackend> {
    match store {
        Store::Sqlite(engine) => Arc::new(crate::persistent::sqlite::SqliteGroupBackend::new(
            Arc::clone(engine),
        )),
        Store::Postgres(engine) => Arc::new(
            crate::persistent::postgres::PostgresGroupBackend::new(Arc::clone(engine)),
        ),
    }
}

/// The columns of a group row, in the order both backends read them.
pub(crate) const GROUP_COLUMNS: &str = "source_stream, filter_stream_prefix, filter_event_types, start_from, max_retries, lease_timeout_us, max_in_flight, scanned_before, settled_before, total_retries, created_at_us";

/// The columns of a tracked event row, in the order both backends read them.
pub(crate) const TRACKED_COLUMNS: &str =
    "position, state, retry_count, delivery_count, consumer, lease_expires_us";

/// A group row as both engines store it.
pub(crate) struct GroupRow {
    pub source_stream: Option<String>,
    pub filter_stream_prefix: Option<String>,
    /// A JSON array of strings.
    pub filter_event_types: String,
    pub start_from: String,
    pub max_retries: i64,
    pub lease_timeout_micros: i64,
    pub max_in_flight: i64,
    pub scanned_before: i64,
    pub settled_before: i64,
    pub total_retries: i64,
    pub created_at_micros: i64,
}

fn stored_count<T: TryFrom<i64>>(value: i64, what: &str) -> Result<T, Error> {
    T::try_from(value)
        .map_err(|_| Error::internal(format!("stored {what} {value} is out of range")))
}

impl GroupRow {
    pub fn from_record(record: &GroupRecord) -> Result<Self, Error> {
        use crate::migrations::to_column;
        Ok(GroupRow {
            source_stream: record
                .stream
                .as_ref()
                .map(|stream| stream.as_str().to_string()),
            filter_stream_prefix: record.filter.stream_prefix.clone(),
            filter_event_types: serde_json::to_string(&record.filter.event_types)
                .map_err(|error| Error::internal(format!("encoding event types: {error}")))?,
            start_from: record.start_from.to_string(),
            max_retries: i64::from(record.settings.max_retries),
            lease_timeout_micros: i64::try_from(
                record.settings.lease_timeout.as_duration().as_micros(),
            )
            .unwrap_or(i64::MAX),
            max_in_flight: i64::from(record.settings.max_in_flight),
            scanned_before: to_column(record.cursors.scanned_before, "position")?,
            settled_before: to_column(record.cursors.settled_before, "position")?,
            total_retries: to_column(record.cursors.total_retries, "retries")?,
            created_at_micros: record.created_at_micros,
        })
    }

    pub fn into_record(self) -> Result<GroupRecord, Error> {
        use crate::migrations::from_column;
        let event_types: Vec<String> = serde_json::from_str(&self.filter_event_types)
            .map_err(|error| Error::internal(format!("stored event types: {error}")))?;
        Ok(GroupRecord {
            stream: self
                .source_stream
                .as_deref()
                .map(StreamName::parse)
                .transpose()?,
            filter: AllFilter {
                stream_prefix: self.filter_stream_prefix,
                event_types,
            },
            start_from: StartFrom::parse(&self.start_from)?,
            settings: GroupSettings {
                max_retries: stored_count(self.max_retries, "max_retries")?,
                lease_timeout: plinth_core::HumanDuration(std::time::Duration::from_micros(
                    from_column(self.lease_timeout_micros, "lease_timeout")?,
                )),
                max_in_flight: stored_count(self.max_in_flight, "max_in_flight")?,
            },
            cursors: GroupCursors {
                scanned_before: from_column(self.scanned_before, "position")?,
                settled_before: from_column(self.settled_before, "position")?,
                total_retries: from_column(self.total_retries, "retries")?,
            },
            created_at_micros: self.created_at_micros,
        })
    }
}

/// A tracked event row as both engines store it.
pub(crate) struct TrackedRow {
    pub position: i64,
    pub state: String,
    pub retry_count: i64,
    pub delivery_count: i64,
    pub consumer: Option<String>,
    pub lease_expires_micros: Option<i64>,
}

impl TrackedRow {
    pub fn into_tracked(self) -> Result<crate::persistent::rules::TrackedEvent, Error> {
        use crate::persistent::rules::{TrackedEvent, TrackedState};
        Ok(TrackedEvent {
            position: crate::migrations::from_column(self.position, "position")?,
            state: TrackedState::from_column(&self.state).ok_or_else(|| {
                Error::internal(format!(
                    "stored group event state `{}` is unknown",
                    self.state
                ))
            })?,
            retry_count: stored_count(self.retry_count, "retry count")?,
            delivery_count: stored_count(self.delivery_count, "delivery count")?,
            consumer: self.consumer,
            lease_expires_micros: self.lease_expires_micros,
        })
    }
}

/// Which new events a lease reads: after the scan cursor, up to the head,
/// matching the group's source; retention and deletion hide events as in
/// `read_all`.
#[derive(Clone, Debug)]
pub(crate) struct GroupScan {
    pub lowest_position: i64,
    pub highest_position: i64,
    pub now_micros: i64,
    pub stream: Option<String>,
    pub stream_prefix: Option<String>,
    pub event_types: Vec<String>,
    pub limit: i64,
}

impl GroupScan {
    pub fn new(
        record: &GroupRecord,
        head: u64,
        now_micros: i64,
        limit: i64,
    ) -> Result<Self, Error> {
        use crate::migrations::to_column;
        Ok(GroupScan {
            lowest_position: to_column(record.cursors.scanned_before, "position")?,
            highest_position: to_column(head, "position")?,
            now_micros,
            stream: record
                .stream
                .as_ref()
                .map(|stream| stream.as_str().to_string()),
            stream_prefix: record.filter.stream_prefix.clone(),
            event_types: record.filter.event_types.clone(),
            limit,
        })
    }

    /// Where the scan cursor goes when every event read is taken: past the
    /// last one when the page was full, past the head otherwise.
    pub fn scanned_before_after(&self, events: &[RecordedEvent], head: u64) -> u64 {
        match events.last() {
            Some(last) if events.len() as i64 == self.limit => last.position + 1,
            _ => head + 1,
        }
    }
}
