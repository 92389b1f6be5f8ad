//! The event store's storage port: what a backend (SQLite, PostgreSQL)
//! must do. Backends load and write rows; every decision comes from
//! `rules.rs`, and every backend passes the same conformance suite
//! (`conformance.rs`) through the [`crate::EventStore`] service.

use std::sync::{Arc, Weak};

use async_trait::async_trait;
use plinth_core::{Error, TenantId};
use plinth_engines::Store;

use crate::model::{
    AppendError, AppendResult, ExpectedVersion, RecordedEvent, Snapshot, StreamName,
};
use crate::notify::CommitNotifier;
use crate::rules::{StreamChange, StreamRecord};
use crate::validation::PreparedEvent;

/// Which events of one stream to read; bounds are inclusive and already
/// include what retention hides.
#[derive(Clone, Debug)]
pub(crate) struct StreamEventsQuery {
    pub descending: bool,
    pub lowest_revision: i64,
    pub highest_revision: i64,
    pub highest_position: i64,
    pub oldest_recorded_at_micros: i64,
    pub newest_recorded_at_micros: i64,
    pub limit: i64,
}

/// Which events of a tenant's global log to read. Retention and deletion
/// are applied per stream in the query, against `now_micros`.
#[derive(Clone, Debug)]
pub(crate) struct LogEventsQuery {
    pub descending: bool,
    pub lowest_position: i64,
    pub highest_position: i64,
    pub newest_recorded_at_micros: i64,
    pub now_micros: i64,
    pub stream_prefix: Option<String>,
    pub event_types: Vec<String>,
    pub limit: i64,
}

/// A snapshot ready to store.
#[derive(Clone, Debug)]
pub(crate) struct SnapshotWrite {
    pub revision: u64,
    pub schema_version: u32,
    pub data: String,
    pub recorded_at_micros: i64,
}

/// A stream a scavenge may have work in, across tenants.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct StreamKey {
    pub tenant: String,
    pub stream: String,
}

/// What one scavenge transaction did to one stream.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct ScavengeBatch {
    pub events_removed: u64,
    pub snapshots_removed: u64,
    /// The batch was full: the stream may have more to remove.
    pub may_have_more: bool,
}

/// An exported event to write back, checked against its hash.
#[derive(Clone, Debug)]
pub(crate) struct ImportedEvent {
    pub stream: StreamName,
    pub revision: u64,
    pub prepared: PreparedEvent,
    pub recorded_at_micros: i64,
    pub previous_hash: [u8; 32],
    pub hash: [u8; 32],
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ImportOutcome {
    Imported,
    AlreadyPresent,
}

#[async_trait]
pub(crate) trait EventBackend: Send + Sync {
    /// Appends atomically, or replays an earlier identical append.
    async fn append(
        &self,
        tenant: &TenantId,
        stream: &StreamName,
        expected_version: ExpectedVersion,
        events: Vec<PreparedEvent>,
        now_micros: i64,
    ) -> Result<AppendResult, AppendError>;

    async fn stream_record(
        &self,
        tenant: &TenantId,
        stream: &StreamName,
    ) -> Result<Option<StreamRecord>, Error>;

    /// Applies `change` to the stream's record (created when absent).
    async fn change_stream(
        &self,
        tenant: &TenantId,
        stream: &StreamName,
        change: StreamChange,
    ) -> Result<StreamRecord, AppendError>;

    async fn read_stream_events(
        &self,
        tenant: &TenantId,
        stream: &StreamName,
        query: StreamEventsQuery,
    ) -> Result<Vec<RecordedEvent>, Error>;

    async fn read_log_events(
        &self,
        tenant: &TenantId,
        query: LogEventsQuery,
    ) -> Result<Vec<RecordedEvent>, Error>;

    /// The tenant's last committed position.
    async fn head_position(&self, tenant: &TenantId) -> Result<Option<u64>, Error>;

    /// Replaces the stream's snapshot. Refused beyond the stream's version.
    async fn save_snapshot(
        &self,
        tenant: &TenantId,
        stream: &StreamName,
        snapshot: SnapshotWrite,
    ) -> Result<(), Error>;

    async fn read_snapshot(
        &self,
        tenant: &TenantId,
        stream: &StreamName,
    ) -> Result<Option<Snapshot>, Error>;

    /// Streams (of every tenant) where retention or deletion may hide
    /// stored events, ordered, after `after`.
    async fn streams_to_scavenge(
        &self,
        after: Option<StreamKey>,
        limit: i64,
    ) -> Result<Vec<StreamKey>, Error>;

    /// Removes at most `batch_size` hidden events from the front of one
    /// stream, in one short transaction.
    async fn scavenge_stream_batch(
        &self,
        key: &StreamKey,
        batch_size: i64,
        now_micros: i64,
    ) -> Result<ScavengeBatch, Error>;

    /// Every stream record of the tenant, by name.
    async fn stream_records(&self, tenant: &TenantId)
    -> Result<Vec<(String, StreamRecord)>, Error>;

    /// Stored events (hidden ones included) by position, after
    /// `after_position`, of one stream or of every stream.
    async fn stored_events_page(
        &self,
        tenant: &TenantId,
        stream: Option<&StreamName>,
        after_position: Option<u64>,
        limit: i64,
    ) -> Result<Vec<RecordedEvent>, Error>;

    /// Writes exported events in order, in one transaction: all or none.
    async fn import_events(
        &self,
        tenant: &TenantId,
        events: Vec<ImportedEvent>,
    ) -> Result<Vec<ImportOutcome>, Error>;

    /// Every tenant whose log has an event, by id.
    async fn log_tenants(&self) -> Result<Vec<String>, Error>;

    /// Starts exchanging commit signals with other nodes, feeding theirs
    /// into `notifier` (PostgreSQL; one node has nobody to tell).
    fn start_commit_signals(&self, _notifier: Weak<CommitNotifier>) {}
}

pub(crate) fn open_backend(store: &Store) -> Arc<dyn EventBackend> {
    match store {
        Store::Sqlite(engine) => {
            Arc::new(crate::sqlite::SqliteEventBackend::new(Arc::clone(engine)))
        }
        Store::Postgres(engine) => Arc::new(crate::postgres::PostgresEventBackend::new(
            Arc::clone(engine),
        )),
    }
}
