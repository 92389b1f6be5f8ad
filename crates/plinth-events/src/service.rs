//! [`EventStore`]: the event store block as the server (and other blocks)
//! use it. It validates input, applies limits, turns read requests into
//! bounded queries, and publishes commits to subscribers; the backend
//! (`sqlite.rs` or `postgres.rs`) stores.

use std::sync::Arc;

use plinth_core::config::EventsConfig;
use plinth_core::{Error, ResourceName, TenantId};
use plinth_engines::Store;
use tokio::sync::watch;

use crate::clock::{Clock, SystemClock};
use crate::migrations::{time_to_micros, to_column};
use crate::model::{
    AllFilter, AllSlice, AppendError, AppendRequest, AppendResult, AsOf, DeleteMode,
    ExpectedVersion, MAX_REVISION, NewSnapshot, ReadAllRequest, ReadDirection, ReadStreamRequest,
    Snapshot, SnapshotAndEvents, StreamInfo, StreamMetadata, StreamName, StreamSlice,
};
use crate::notify::CommitNotifier;
use crate::persistent::store::{GroupBackend, open_group_backend};
use crate::rules::{
    StreamChange, StreamRecord, snapshot_is_hidden, stream_deleted, stream_not_found,
};
use crate::store::{EventBackend, LogEventsQuery, SnapshotWrite, StreamEventsQuery, open_backend};
use crate::validation::{prepare_append, validate_event_type};

/// The most event types one `read_all` filter may name.
const MAX_FILTER_EVENT_TYPES: usize = 100;

pub struct EventStore {
    pub(crate) backend: Arc<dyn EventBackend>,
    pub(crate) config: EventsConfig,
    pub(crate) clock: Arc<dyn Clock>,
    notifier: Arc<CommitNotifier>,
    /// Scavenge and verify take this, so a node never runs them together
    /// (verify would see a scavenge half done).
    pub(crate) maintenance: tokio::sync::Mutex<()>,
    /// Consumer groups (`persistent/`).
    pub(crate) groups: Arc<dyn GroupBackend>,
    /// Woken by acks, nacks, replays and settings changes, which may make
    /// events deliverable to a waiting lease without any new commit.
    pub(crate) group_activity: tokio::sync::Notify,
}

/// Inclusive bounds a point in time puts on positions and recorded times.
struct PointInTimeBounds {
    highest_position: i64,
    newest_recorded_at_micros: i64,
}

fn point_in_time_bounds(as_of: Option<AsOf>) -> Result<PointInTimeBounds, Error> {
    Ok(match as_of {
        None => PointInTimeBounds {
            highest_position: i64::MAX,
            newest_recorded_at_micros: i64::MAX,
        },
        Some(AsOf::Position(position)) => PointInTimeBounds {
            highest_position: to_column(position, "as-of position")?,
            newest_recorded_at_micros: i64::MAX,
        },
        Some(AsOf::Timestamp(at)) => PointInTimeBounds {
            highest_position: i64::MAX,
            newest_recorded_at_micros: time_to_micros(at),
        },
    })
}

impl EventStore {
    /// The event store on the node's durable store (migrated with
    /// [`crate::EVENTS_MIGRATIONS`]). Inside a Tokio runtime it also
    /// starts exchanging commit signals with other nodes (PostgreSQL);
    /// outside one, subscriptions learn of other nodes' commits by polling.
    pub fn new(store: &Store, config: EventsConfig) -> Result<Self, Error> {
        config.validate()?;
        let backend = open_backend(store);
        let notifier = Arc::new(CommitNotifier::default());
        if tokio::runtime::Handle::try_current().is_ok() {
            backend.start_commit_signals(Arc::downgrade(&notifier));
        }
        Ok(EventStore {
            backend,
            config,
            clock: Arc::new(SystemClock),
            notifier,
            maintenance: tokio::sync::Mutex::new(()),
            groups: open_group_backend(store),
            group_activity: tokio::sync::Notify::new(),
        })
    }

    /// Replaces the wall clock (tests of retention).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    pub fn config(&self) -> &EventsConfig {
        &self.config
    }

    /// Appends a batch atomically: all events or none.
    pub async fn append(
        &self,
        tenant: &TenantId,
        stream: &StreamName,
        request: AppendRequest,
    ) -> Result<AppendResult, AppendError> {
        let events = prepare_append(&self.config, &request)?;
        let result = self
            .backend
            .append(
                tenant,
                stream,
                request.expected_version,
                events,
                self.clock.now_micros(),
            )
            .await?;
        if let Some(last) = result.events.last() {
            self.notify_committed(tenant, last.position);
        }
        Ok(result)
    }

    pub(crate) fn notify_committed(&self, tenant: &TenantId, position: u64) {
        self.notifier.committed(tenant, position);
    }

    /// A receiver of the tenant's highest committed position, for waiting
    /// on new events (see `notify.rs`).
    pub fn subscribe(&self, tenant: &TenantId) -> watch::Receiver<Option<u64>> {
        self.notifier.subscribe(tenant)
    }

    pub(crate) fn read_limit(&self, limit: usize) -> Result<i64, Error> {
        if limit == 0 {
            return Err(Error::invalid_argument(
                "invalid_limit",
                "limit must be at least 1",
            ));
        }
        Ok(limit.min(self.config.max_read_count) as i64)
    }

    /// The record of a stream reads may see: present, not deleted.
    async fn readable_record(
        &self,
        tenant: &TenantId,
        stream: &StreamName,
    ) -> Result<StreamRecord, Error> {
        let record = self.backend.stream_record(tenant, stream).await?;
        let Some(record) = record else {
            return Err(stream_not_found(stream));
        };
        if record.tombstoned {
            return Err(stream_deleted(stream));
        }
        if record.soft_deleted || record.last_revision.is_none() {
            return Err(stream_not_found(stream));
        }
        Ok(record)
    }

    pub async fn read_stream(
        &self,
        tenant: &TenantId,
        stream: &StreamName,
        request: &ReadStreamRequest,
    ) -> Result<StreamSlice, Error> {
        let limit = self.read_limit(request.limit)?;
        let record = self.readable_record(tenant, stream).await?;
        let bounds = point_in_time_bounds(request.as_of)?;
        let visible_from = to_column(record.visible_from_revision(), "revision")?;
        let last_revision = to_column(record.last_revision.unwrap_or_default(), "revision")?;
        let descending = request.direction == ReadDirection::Backward;
        let (lowest_revision, highest_revision) = match (request.direction, request.from_revision) {
            (ReadDirection::Forward, from) => (
                visible_from.max(to_column(from.unwrap_or(0), "revision")?),
                last_revision,
            ),
            (ReadDirection::Backward, from) => (
                visible_from,
                last_revision.min(to_column(from.unwrap_or(MAX_REVISION), "revision")?),
            ),
        };
        let events = self
            .backend
            .read_stream_events(
                tenant,
                stream,
                StreamEventsQuery {
                    descending,
                    lowest_revision,
                    highest_revision,
                    highest_position: bounds.highest_position,
                    oldest_recorded_at_micros: record
                        .oldest_visible_recorded_at(self.clock.now_micros()),
                    newest_recorded_at_micros: bounds.newest_recorded_at_micros,
                    limit,
                },
            )
            .await?;
        let page_is_full = events.len() as i64 == limit;
        let next_revision = match (page_is_full, events.last()) {
            (true, Some(last)) if descending => last.revision.checked_sub(1),
            (true, Some(last)) => Some(last.revision + 1),
            _ => None,
        };
        Ok(StreamSlice {
            events,
            next_revision,
            stream_version: record.last_revision,
        })
    }

    pub async fn read_all(
        &self,
        tenant: &TenantId,
        request: &ReadAllRequest,
    ) -> Result<AllSlice, Error> {
        let limit = self.read_limit(request.limit)?;
        validate_filter(request)?;
        let bounds = point_in_time_bounds(request.as_of)?;
        let head_position = self.backend.head_position(tenant).await?;
        let Some(head) = head_position else {
            return Ok(AllSlice {
                events: Vec::new(),
                next_position: None,
                head_position,
            });
        };
        let head = to_column(head, "position")?;
        let descending = request.direction == ReadDirection::Backward;
        let (lowest_position, highest_position) = match request.direction {
            ReadDirection::Forward => (
                to_column(request.from_position.unwrap_or(0), "position")?,
                bounds.highest_position,
            ),
            ReadDirection::Backward => {
                let from = match request.from_position {
                    None => head,
                    Some(position) => to_column(position, "position")?,
                };
                (0, from.min(bounds.highest_position))
            }
        };
        let events = self
            .backend
            .read_log_events(
                tenant,
                LogEventsQuery {
                    descending,
                    lowest_position,
                    highest_position,
                    newest_recorded_at_micros: bounds.newest_recorded_at_micros,
                    now_micros: self.clock.now_micros(),
                    stream_prefix: request.filter.stream_prefix.clone(),
                    event_types: request.filter.event_types.clone(),
                    limit,
                },
            )
            .await?;
        let page_is_full = events.len() as i64 == limit;
        let next_position = match (page_is_full, events.last()) {
            (true, Some(last)) if descending => last.position.checked_sub(1),
            (true, Some(last)) => Some(last.position + 1),
            _ => None,
        };
        Ok(AllSlice {
            events,
            next_position,
            head_position,
        })
    }

    /// The stream's record; `stream_not_found` when it was never written.
    pub async fn stream_info(
        &self,
        tenant: &TenantId,
        stream: &StreamName,
    ) -> Result<StreamInfo, Error> {
        match self.backend.stream_record(tenant, stream).await? {
            Some(record) => Ok(record.info(stream)),
            None => Err(stream_not_found(stream)),
        }
    }

    /// Sets retention; reads hide what it excludes at once.
    pub async fn set_stream_metadata(
        &self,
        tenant: &TenantId,
        stream: &StreamName,
        metadata: StreamMetadata,
    ) -> Result<StreamInfo, Error> {
        let record = self
            .backend
            .change_stream(tenant, stream, StreamChange::SetMetadata(metadata))
            .await
            .map_err(AppendError::into_error)?;
        Ok(record.info(stream))
    }

    /// Soft delete hides every event (an append re-creates the stream and
    /// continues its numbering); hard delete leaves a tombstone.
    pub async fn delete_stream(
        &self,
        tenant: &TenantId,
        stream: &StreamName,
        mode: DeleteMode,
        expected_version: ExpectedVersion,
    ) -> Result<StreamInfo, AppendError> {
        let record = self
            .backend
            .change_stream(
                tenant,
                stream,
                StreamChange::Delete {
                    mode,
                    expected_version,
                },
            )
            .await?;
        Ok(record.info(stream))
    }

    /// Replaces the stream's snapshot; refused beyond the stream's version.
    pub async fn save_snapshot(
        &self,
        tenant: &TenantId,
        stream: &StreamName,
        snapshot: NewSnapshot,
    ) -> Result<(), Error> {
        let data = serde_json::to_string(&snapshot.data)
            .map_err(|error| Error::internal(format!("serialising a snapshot: {error}")))?;
        if data.len() > self.config.max_append_bytes {
            return Err(Error::new(
                plinth_core::ErrorKind::PayloadTooLarge,
                "snapshot_too_large",
                format!(
                    "the snapshot has {} bytes; at most {} are accepted",
                    data.len(),
                    self.config.max_append_bytes
                ),
            ));
        }
        self.backend
            .save_snapshot(
                tenant,
                stream,
                SnapshotWrite {
                    revision: snapshot.revision,
                    schema_version: snapshot.schema_version,
                    data,
                    recorded_at_micros: self.clock.now_micros(),
                },
            )
            .await
    }

    /// The stream's latest snapshot, unless it describes hidden events.
    pub async fn read_snapshot(
        &self,
        tenant: &TenantId,
        stream: &StreamName,
    ) -> Result<Option<Snapshot>, Error> {
        let record = self.readable_record(tenant, stream).await?;
        let snapshot = self.backend.read_snapshot(tenant, stream).await?;
        Ok(snapshot.filter(|snapshot| !snapshot_is_hidden(&record, snapshot.revision)))
    }

    /// The latest snapshot and up to `limit` events after it (all visible
    /// events when there is no snapshot).
    pub async fn read_from_snapshot(
        &self,
        tenant: &TenantId,
        stream: &StreamName,
        limit: usize,
    ) -> Result<SnapshotAndEvents, Error> {
        let snapshot = self.read_snapshot(tenant, stream).await?;
        let from_revision = snapshot
            .as_ref()
            .map_or(0, |snapshot| snapshot.revision + 1);
        let slice = self
            .read_stream(
                tenant,
                stream,
                &ReadStreamRequest::forward(limit).from_revision(from_revision),
            )
            .await?;
        Ok(SnapshotAndEvents {
            snapshot,
            events: slice.events,
            next_revision: slice.next_revision,
            stream_version: slice.stream_version,
        })
    }
}

fn validate_filter(request: &ReadAllRequest) -> Result<(), Error> {
    validate_all_filter(&request.filter)
}

pub(crate) fn validate_all_filter(filter: &AllFilter) -> Result<(), Error> {
    if let Some(prefix) = &filter.stream_prefix {
        ResourceName::parse("stream prefix", prefix)?;
    }
    if filter.event_types.len() > MAX_FILTER_EVENT_TYPES {
        return Err(Error::invalid_argument(
            "invalid_filter",
            format!("a filter may name at most {MAX_FILTER_EVENT_TYPES} event types"),
        ));
    }
    for event_type in &filter.event_types {
        validate_event_type(event_type)?;
    }
    Ok(())
}
