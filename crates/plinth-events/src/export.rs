//! Export and import of events as self-contained records, one JSON object
//! per line when serialised (`serde_json::to_string` per record).
//!
//! A record carries everything needed to check it on its own: ids,
//! revision, original position, recorded time, the hash of its predecessor
//! and its own hash. Export walks the stored events in position order
//! (hidden but not yet scavenged events included, so chains stay whole).
//! Import re-checks each record's hash, then writes it at its revision
//! with a new position in the target tenant's log; a record already
//! imported (same id and hash at that revision) is skipped, so an import
//! can be repeated or resumed after a failure. Stream metadata and
//! snapshots are not exported.

use std::collections::HashMap;

use futures::stream::{self, Stream, StreamExt, TryStreamExt};
use plinth_core::{Error, TenantId};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::chain::{ChainLink, hash_from_hex};
use crate::migrations::time_to_micros;
use crate::model::{RecordedEvent, StreamName};
use crate::rules::StreamRecord;
use crate::service::EventStore;
use crate::store::{ImportOutcome, ImportedEvent};
use crate::validation::{PreparedEvent, validate_event_type};

const EXPORT_PAGE_SIZE: i64 = 500;

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
    pub imported: u64,
    /// Records already present (an import repeated or resumed).
    pub skipped: u64,
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
    /// Every stored event of `tenant` (or of one stream), in position order.
    pub fn export(
        &self,
        tenant: &TenantId,
        stream: Option<StreamName>,
    ) -> impl Stream<Item = Result<ExportRecord, Error>> + Send + '_ {
        let cursor = ExportCursor {
            store: self,
            tenant: tenant.clone(),
            stream,
            after_position: None,
            chain_starts: None,
            previous_hashes: HashMap::new(),
        };
        stream::try_unfold(cursor, |mut cursor| async move {
            let page = cursor.next_page().await?;
            Ok::<_, Error>(page.map(|records| (records, cursor)))
        })
        .map_ok(|records| stream::iter(records.into_iter().map(Ok)))
        .try_flatten()
        .boxed()
    }

    /// Writes exported records into `tenant`, in order, skipping those
    /// already there. Stops at the first record that cannot be imported.
    pub async fn import(
        &self,
        tenant: &TenantId,
        records: impl IntoIterator<Item = ExportRecord>,
    ) -> Result<ImportReport, Error> {
        let mut report = ImportReport::default();
        for record in records {
            let event = checked_import(record)?;
            match self.backend.import_event(tenant, event).await? {
                ImportOutcome::Imported => report.imported += 1,
                ImportOutcome::AlreadyPresent => report.skipped += 1,
            }
        }
        if report.imported > 0
            && let Some(head) = self.backend.head_position(tenant).await?
        {
            self.notify_committed(tenant, head);
        }
        Ok(report)
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
