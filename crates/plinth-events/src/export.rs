//! Export and import of a tenant's events (or one stream's) as
//! self-contained lines, one JSON object each when serialised
//! (`serde_json::to_string` per [`ExportLine`]).
//!
//! Events come first, in position order (hidden but not yet scavenged
//! events included, so chains stay whole). An event line carries
//! everything needed to check it on its own: ids, revision, original
//! position, recorded time, the hash of its predecessor and its own hash.
//! After every event come a `stream` line for each stream whose retention
//! or deletion state is not the default, and a `snapshot` line for each
//! stream that has one, so a restore keeps what reads hide and what
//! readers start from.
//!
//! Import re-checks each event's hash, then writes it at its revision with
//! a new position in the target tenant's log, up to
//! [`EVENTS_PER_IMPORT_TRANSACTION`] events per transaction (all of them
//! or none); an event already imported (same id and hash at that
//! revision) is skipped. Stream states and
//! snapshots are applied as they are, so an import can be repeated or
//! resumed after a failure.

use std::collections::HashMap;

use futures::stream::{self, Stream, StreamExt, TryStreamExt};
use plinth_core::{Error, TenantId};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::chain::{ChainLink, hash_from_hex};
use crate::migrations::time_to_micros;
use crate::model::{
    AppendError, DeleteMode, ExpectedVersion, RecordedEvent, StreamMetadata, StreamName,
    StreamStatus,
};
use crate::rules::{StreamChange, StreamRecord};
use crate::service::EventStore;
use crate::store::{ImportOutcome, ImportedEvent, SnapshotWrite};
use crate::validation::{PreparedEvent, validate_event_type};

const EXPORT_PAGE_SIZE: i64 = 500;
/// Events imported per transaction: one commit (one flush) for many
/// events, and a transaction short enough not to hold appends up.
const EVENTS_PER_IMPORT_TRANSACTION: usize = 500;

/// One line of an export.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ExportLine {
    Event(ExportRecord),
    Stream(StreamExport),
    Snapshot(SnapshotExport),
}

/// A stream's retention and deletion state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamExport {
    pub stream: String,
    pub metadata: StreamMetadata,
    pub status: StreamStatus,
}

/// A stream's latest snapshot.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotExport {
    pub stream: String,
    pub revision: u64,
    pub schema_version: u32,
    pub data: Value,
    #[serde(with = "time::serde::rfc3339")]
    pub recorded_at: OffsetDateTime,
}

/// An exported event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportRecord {
    pub stream: String,
    pub revision: u64,
    /// The position in the exporting tenant's log (informational: import
    /// assigns new positions).
    pub position: u64,
    pub id: Uuid,
    #[serde(rename = "type")]
    pub event_type: String,
    pub schema_version: u32,
    pub data: Value,
    pub metadata: Value,
    #[serde(with = "time::serde::rfc3339")]
    pub recorded_at: OffsetDateTime,
    /// Hex hash of the previous event of the stream.
    pub previous_hash: String,
    pub hash: String,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ImportReport {
    /// Events written.
    pub imported: u64,
    /// Events already present (an import repeated or resumed).
    pub skipped: u64,
    /// Stream states applied (retention, deletion).
    pub streams: u64,
    pub snapshots: u64,
}

/// Where an export is.
struct ExportCursor<'a> {
    store: &'a EventStore,
    tenant: TenantId,
    stream: Option<StreamName>,
    after_position: Option<u64>,
    /// The chain start of each stream, loaded with the first page.
    chain_starts: Option<HashMap<String, StreamRecord>>,
    previous_hashes: HashMap<String, [u8; 32]>,
}

impl ExportCursor<'_> {
    async fn next_page(&mut self) -> Result<Option<Vec<ExportRecord>>, Error> {
        if self.chain_starts.is_none() {
            let records = self.store.backend.stream_records(&self.tenant).await?;
            self.chain_starts = Some(records.into_iter().collect());
        }
        let page = self
            .store
            .backend
            .stored_events_page(
                &self.tenant,
                self.stream.as_ref(),
                self.after_position,
                EXPORT_PAGE_SIZE,
            )
            .await?;
        let Some(last) = page.last() else {
            return Ok(None);
        };
        self.after_position = Some(last.position);
        let mut records = Vec::with_capacity(page.len());
        for event in page {
            records.push(self.export_record(event)?);
        }
        Ok(Some(records))
    }

    fn export_record(&mut self, event: RecordedEvent) -> Result<ExportRecord, Error> {
        let previous_hash = match self.previous_hashes.get(&event.stream) {
            Some(hash) => *hash,
            None => self
                .chain_starts
                .as_ref()
                .and_then(|records| records.get(&event.stream))
                .map(StreamRecord::chain_start_hash)
                .ok_or_else(|| {
                    Error::internal(format!("stream `{}` has no record", event.stream))
                })?,
        };
        let hash = hash_from_hex(&event.hash)
            .ok_or_else(|| Error::internal("stored hash is not 32 bytes"))?;
        self.previous_hashes.insert(event.stream.clone(), hash);
        Ok(ExportRecord {
            stream: event.stream,
            revision: event.revision,
            position: event.position,
            id: event.id,
            event_type: event.event_type,
            schema_version: event.schema_version,
            data: event.data,
            metadata: event.metadata,
            recorded_at: event.recorded_at,
            previous_hash: hex::encode(previous_hash),
            hash: event.hash,
        })
    }
}

impl EventStore {
    /// Every stored event of `tenant` (or of one stream), in position
    /// order, then the streams' states and snapshots.
    pub fn export(
        &self,
        tenant: &TenantId,
        stream: Option<StreamName>,
    ) -> impl Stream<Item = Result<ExportLine, Error>> + Send + '_ {
        let cursor = ExportCursor {
            store: self,
            tenant: tenant.clone(),
            stream: stream.clone(),
            after_position: None,
            chain_starts: None,
            previous_hashes: HashMap::new(),
        };
        let events = stream::try_unfold(cursor, |mut cursor| async move {
            let page = cursor.next_page().await?;
            Ok::<_, Error>(page.map(|records| (records, cursor)))
        })
        .map_ok(|records| {
            stream::iter(
                records
                    .into_iter()
                    .map(|record| Ok(ExportLine::Event(record))),
            )
        })
        .try_flatten();
        let tenant = tenant.clone();
        let trailer =
            stream::once(async move { self.export_trailer(&tenant, stream.as_ref()).await })
                .map_ok(|lines| stream::iter(lines.into_iter().map(Ok)))
                .try_flatten();
        events.chain(trailer).boxed()
    }

    /// The stream and snapshot lines that follow the events.
    async fn export_trailer(
        &self,
        tenant: &TenantId,
        only_stream: Option<&StreamName>,
    ) -> Result<Vec<ExportLine>, Error> {
        let mut records = self.backend.stream_records(tenant).await?;
        if let Some(only_stream) = only_stream {
            records.retain(|(name, _)| name == only_stream.as_str());
        }
        let mut lines = Vec::new();
        for (name, record) in records {
            let status = record.status();
            if status != StreamStatus::Active || record.metadata != StreamMetadata::default() {
                lines.push(ExportLine::Stream(StreamExport {
                    stream: name.clone(),
                    metadata: record.metadata.clone(),
                    status,
                }));
            }
            let stream = StreamName::parse(&name)?;
            if let Some(snapshot) = self.backend.read_snapshot(tenant, &stream).await? {
                lines.push(ExportLine::Snapshot(SnapshotExport {
                    stream: name,
                    revision: snapshot.revision,
                    schema_version: snapshot.schema_version,
                    data: snapshot.data,
                    recorded_at: snapshot.recorded_at,
                }));
            }
        }
        Ok(lines)
    }

    /// Writes exported lines into `tenant`, in order, skipping events
    /// already there. Stops at the first line that cannot be imported.
    pub async fn import(
        &self,
        tenant: &TenantId,
        lines: impl IntoIterator<Item = ExportLine>,
    ) -> Result<ImportReport, Error> {
        let mut report = ImportReport::default();
        let mut events = Vec::with_capacity(EVENTS_PER_IMPORT_TRANSACTION);
        for line in lines {
            match line {
                ExportLine::Event(record) => {
                    events.push(checked_import(record)?);
                    if events.len() == EVENTS_PER_IMPORT_TRANSACTION {
                        self.import_event_batch(tenant, std::mem::take(&mut events), &mut report)
                            .await?;
                    }
                }
                ExportLine::Stream(state) => {
                    // A stream's state applies to the events before it.
                    self.import_event_batch(tenant, std::mem::take(&mut events), &mut report)
                        .await?;
                    self.import_stream_state(tenant, state).await?;
                    report.streams += 1;
                }
                ExportLine::Snapshot(snapshot) => {
                    self.import_event_batch(tenant, std::mem::take(&mut events), &mut report)
                        .await?;
                    self.import_snapshot(tenant, snapshot).await?;
                    report.snapshots += 1;
                }
            }
        }
        self.import_event_batch(tenant, events, &mut report).await?;
        if report.imported > 0
            && let Some(head) = self.backend.head_position(tenant).await?
        {
            self.notify_committed(tenant, head);
        }
        Ok(report)
    }
}

impl EventStore {
    async fn import_event_batch(
        &self,
        tenant: &TenantId,
        events: Vec<ImportedEvent>,
        report: &mut ImportReport,
    ) -> Result<(), Error> {
        if events.is_empty() {
            return Ok(());
        }
        for outcome in self.backend.import_events(tenant, events).await? {
            match outcome {
                ImportOutcome::Imported => report.imported += 1,
                ImportOutcome::AlreadyPresent => report.skipped += 1,
            }
        }
        Ok(())
    }

    /// Gives the stream the exported retention and deletion state. Applying
    /// it twice changes nothing.
    async fn import_stream_state(
        &self,
        tenant: &TenantId,
        state: StreamExport,
    ) -> Result<(), Error> {
        let stream = StreamName::parse(&state.stream)?;
        let current = self
            .backend
            .stream_record(tenant, &stream)
            .await?
            .unwrap_or_else(StreamRecord::absent);
        if current.tombstoned {
            if state.status == StreamStatus::Tombstoned {
                return Ok(());
            }
            return Err(crate::rules::stream_deleted(&stream));
        }
        if current.metadata != state.metadata {
            self.backend
                .change_stream(tenant, &stream, StreamChange::SetMetadata(state.metadata))
                .await
                .map_err(AppendError::into_error)?;
        }
        let deletion = match state.status {
            StreamStatus::Active => None,
            // Already deleted; or every event of it was scavenged before the
            // export, so there is nothing to hide and it stays absent.
            StreamStatus::SoftDeleted
                if current.soft_deleted || current.last_revision.is_none() =>
            {
                None
            }
            StreamStatus::SoftDeleted => Some(DeleteMode::Soft),
            StreamStatus::Tombstoned => Some(DeleteMode::Hard),
        };
        let Some(mode) = deletion else {
            return Ok(());
        };
        self.backend
            .change_stream(
                tenant,
                &stream,
                StreamChange::Delete {
                    mode,
                    expected_version: ExpectedVersion::Any,
                },
            )
            .await
            .map_err(AppendError::into_error)?;
        Ok(())
    }

    async fn import_snapshot(
        &self,
        tenant: &TenantId,
        snapshot: SnapshotExport,
    ) -> Result<(), Error> {
        let stream = StreamName::parse(&snapshot.stream)?;
        let data = serde_json::to_string(&snapshot.data)
            .map_err(|error| Error::internal(format!("encoding an imported snapshot: {error}")))?;
        self.backend
            .save_snapshot(
                tenant,
                &stream,
                SnapshotWrite {
                    revision: snapshot.revision,
                    schema_version: snapshot.schema_version,
                    data,
                    recorded_at_micros: time_to_micros(snapshot.recorded_at),
                },
            )
            .await
    }
}

/// A record whose names, hashes and chain link hold.
fn checked_import(record: ExportRecord) -> Result<ImportedEvent, Error> {
    let stream = StreamName::parse(&record.stream)?;
    validate_event_type(&record.event_type)?;
    let invalid_hash = |field: &str| {
        Error::invalid_argument(
            "import_invalid_record",
            format!(
                "record at revision {} of stream `{stream}`: {field} is not 64 hex digits",
                record.revision
            ),
        )
    };
    let previous_hash =
        hash_from_hex(&record.previous_hash).ok_or_else(|| invalid_hash("previous_hash"))?;
    let hash = hash_from_hex(&record.hash).ok_or_else(|| invalid_hash("hash"))?;
    let data = serde_json::to_string(&record.data)
        .map_err(|error| Error::internal(format!("encoding imported data: {error}")))?;
    let metadata = serde_json::to_string(&record.metadata)
        .map_err(|error| Error::internal(format!("encoding imported metadata: {error}")))?;
    let computed = ChainLink {
        previous_hash: &previous_hash,
        stream: stream.as_str(),
        revision: record.revision,
        event_id: record.id,
        event_type: &record.event_type,
        schema_version: record.schema_version,
        data: &data,
        metadata: &metadata,
    }
    .hash();
    if computed != hash {
        return Err(Error::invalid_argument(
            "import_hash_mismatch",
            format!(
                "record at revision {} of stream `{stream}` does not match its hash: it was altered after export",
                record.revision
            ),
        ));
    }
    Ok(ImportedEvent {
        stream,
        revision: record.revision,
        prepared: PreparedEvent {
            id: record.id,
            id_given_by_caller: true,
            event_type: record.event_type,
            schema_version: record.schema_version,
            data,
            metadata,
        },
        recorded_at_micros: time_to_micros(record.recorded_at),
        previous_hash,
        hash,
    })
}
