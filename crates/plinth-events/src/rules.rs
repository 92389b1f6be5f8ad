//! The event store's decisions, as pure functions over a stream's record:
//! whether an append's expected version holds, whether it is a retry of an
//! earlier append, what a stream's metadata and deletion make visible, and
//! how much of a stream a scavenge may remove. Both backends load the same
//! inputs, call these, and write the outcome, so the rules exist once.

use plinth_core::{Error, ErrorKind, HumanDuration};
use uuid::Uuid;

use crate::chain::{ChainLink, GENESIS_HASH};
use crate::model::{
    AppendError, AppendResult, AppendedEvent, DeleteMode, ExpectedVersion, StreamInfo,
    StreamMetadata, StreamName, StreamStatus, VersionConflict,
};
use crate::validation::PreparedEvent;

/// Everything stored about one stream apart from its events.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct StreamRecord {
    /// The last revision ever written; `None` before the first event.
    pub last_revision: Option<u64>,
    pub last_position: Option<u64>,
    /// The hash of the last event (the chain head).
    pub last_hash: [u8; 32],
    pub metadata: StreamMetadata,
    pub soft_deleted: bool,
    pub tombstoned: bool,
    /// Every revision below this was physically removed by a scavenge.
    pub scavenged_before_revision: u64,
    /// The hash of revision `scavenged_before_revision - 1` (the chain
    /// anchor of what remains).
    pub scavenged_anchor_hash: [u8; 32],
}

impl StreamRecord {
    pub fn absent() -> Self {
        StreamRecord {
            last_revision: None,
            last_position: None,
            last_hash: GENESIS_HASH,
            metadata: StreamMetadata::default(),
            soft_deleted: false,
            tombstoned: false,
            scavenged_before_revision: 0,
            scavenged_anchor_hash: GENESIS_HASH,
        }
    }

    fn next_revision(&self) -> u64 {
        self.last_revision.map_or(0, |revision| revision + 1)
    }

    /// The version expected-version checks compare against: a
    /// soft-deleted stream counts as having no events.
    pub fn version_for_expectations(&self) -> Option<u64> {
        if self.soft_deleted {
            return None;
        }
        self.last_revision
    }

    /// The first revision reads may return (events may also be hidden by
    /// age). A tombstone hides everything.
    pub fn visible_from_revision(&self) -> u64 {
        let next_revision = self.next_revision();
        if self.tombstoned {
            return next_revision;
        }
        let truncated_before = self.metadata.truncate_before.unwrap_or(0);
        let beyond_max_count = match self.metadata.max_count {
            Some(max_count) => next_revision.saturating_sub(max_count),
            None => 0,
        };
        truncated_before.max(beyond_max_count)
    }

    /// Events recorded before this (unix microseconds) are hidden by age.
    pub fn oldest_visible_recorded_at(&self, now_micros: i64) -> i64 {
        match self.metadata.max_age {
            Some(max_age) => now_micros.saturating_sub(duration_micros(max_age)),
            None => i64::MIN,
        }
    }

    pub fn status(&self) -> StreamStatus {
        if self.tombstoned {
            StreamStatus::Tombstoned
        } else if self.soft_deleted {
            StreamStatus::SoftDeleted
        } else {
            StreamStatus::Active
        }
    }

    pub fn info(&self, stream: &StreamName) -> StreamInfo {
        StreamInfo {
            stream: stream.as_str().to_string(),
            version: self.last_revision,
            status: self.status(),
            metadata: self.metadata.clone(),
            visible_from_revision: self.visible_from_revision(),
        }
    }

    /// The hash the chain of what is still stored starts from.
    pub fn chain_start_hash(&self) -> [u8; 32] {
        if self.scavenged_before_revision == 0 {
            GENESIS_HASH
        } else {
            self.scavenged_anchor_hash
        }
    }
}

pub(crate) fn duration_micros(duration: HumanDuration) -> i64 {
    i64::try_from(duration.as_duration().as_micros()).unwrap_or(i64::MAX)
}

pub(crate) fn stream_deleted(stream: &StreamName) -> Error {
    Error::not_found(
        "stream_deleted",
        format!("stream `{stream}` was hard-deleted; its name cannot be used again"),
    )
}

pub(crate) fn stream_not_found(stream: &StreamName) -> Error {
    Error::not_found(
        "stream_not_found",
        format!("stream `{stream}` does not exist"),
    )
}

fn check_expected_version(
    stream: &StreamName,
    expected_version: ExpectedVersion,
    record: &StreamRecord,
) -> Result<(), AppendError> {
    let current_version = record.version_for_expectations();
    let holds = match expected_version {
        ExpectedVersion::Any => true,
        ExpectedVersion::NoStream => current_version.is_none(),
        ExpectedVersion::Exists => current_version.is_some(),
        ExpectedVersion::Exact(revision) => current_version == Some(revision),
    };
    if holds {
        return Ok(());
    }
    Err(AppendError::WrongExpectedVersion(VersionConflict {
        stream: stream.as_str().to_string(),
        expected_version,
        current_version,
    }))
}

/// An event of the stream whose id an append repeats.
#[derive(Clone, Debug)]
pub(crate) struct ExistingEvent {
    pub id: Uuid,
    pub revision: u64,
    pub position: u64,
}

/// What an append does once its stream is locked.
#[derive(Debug)]
pub(crate) enum AppendPlan {
    /// A retry of an earlier append: answer with its result, write nothing.
    Replay(AppendResult),
    Write(PlannedWrite),
}

#[derive(Debug)]
pub(crate) struct PlannedWrite {
    pub first_revision: u64,
    /// One per event, in order.
    pub hashes: Vec<[u8; 32]>,
    /// The stream record after the write, except `last_position`, which
    /// only the global log's counter can tell.
    pub record_after: StreamRecord,
}

/// Decides an append: `existing` are the stored events of the stream whose
/// ids appear in `events`.
pub(crate) fn plan_append(
    stream: &StreamName,
    expected_version: ExpectedVersion,
    record: &StreamRecord,
    events: &[PreparedEvent],
    existing: &[ExistingEvent],
) -> Result<AppendPlan, AppendError> {
    if record.tombstoned {
        return Err(stream_deleted(stream).into());
    }
    if !existing.is_empty() {
        return replay_of_earlier_append(stream, expected_version, events, existing)
            .map(AppendPlan::Replay);
    }
    check_expected_version(stream, expected_version, record)?;
    let first_revision = record.next_revision();
    let mut previous_hash = record.last_hash;
    let mut hashes = Vec::with_capacity(events.len());
    for (offset, event) in events.iter().enumerate() {
        let hash = ChainLink {
            previous_hash: &previous_hash,
            stream: stream.as_str(),
            revision: first_revision + offset as u64,
            event_id: event.id,
            event_type: &event.event_type,
            schema_version: event.schema_version,
            data: &event.data,
            metadata: &event.metadata,
        }
        .hash();
        hashes.push(hash);
        previous_hash = hash;
    }
    let mut record_after = record.clone();
    record_after.last_revision = Some(first_revision + events.len() as u64 - 1);
    record_after.last_hash = previous_hash;
    record_after.soft_deleted = false;
    Ok(AppendPlan::Write(PlannedWrite {
        first_revision,
        hashes,
        record_after,
    }))
}

/// An append whose ids are already stored is a retry when every event is
/// there, in order, where the expected version would have put them.
fn replay_of_earlier_append(
    stream: &StreamName,
    expected_version: ExpectedVersion,
    events: &[PreparedEvent],
    existing: &[ExistingEvent],
) -> Result<AppendResult, AppendError> {
    let mut appended = Vec::with_capacity(events.len());
    for event in events {
        match existing.iter().find(|stored| stored.id == event.id) {
            Some(stored) => appended.push(AppendedEvent {
                id: stored.id,
                revision: stored.revision,
                position: stored.position,
            }),
            None => {
                return Err(ids_elsewhere(
                    stream,
                    existing,
                    "some of the batch's ids are new",
                ));
            }
        }
    }
    let first_revision = appended[0].revision;
    let consecutive = appended
        .iter()
        .enumerate()
        .all(|(offset, event)| event.revision == first_revision + offset as u64);
    if !consecutive {
        return Err(ids_elsewhere(
            stream,
            existing,
            "they are not stored consecutively in this order",
        ));
    }
    let same_place = match expected_version {
        ExpectedVersion::Any | ExpectedVersion::Exists => true,
        ExpectedVersion::NoStream => first_revision == 0,
        ExpectedVersion::Exact(revision) => first_revision == revision + 1,
    };
    if !same_place {
        return Err(ids_elsewhere(
            stream,
            existing,
            &format!("expected version {expected_version} would have put them elsewhere"),
        ));
    }
    let stream_version = first_revision + appended.len() as u64 - 1;
    Ok(AppendResult {
        events: appended,
        stream_version,
        replayed: true,
    })
}

fn ids_elsewhere(stream: &StreamName, existing: &[ExistingEvent], reason: &str) -> AppendError {
    let mut placed: Vec<String> = existing
        .iter()
        .take(5)
        .map(|stored| format!("{} at revision {}", stored.id, stored.revision))
        .collect();
    if existing.len() > placed.len() {
        placed.push("…".to_string());
    }
    AppendError::Failed(Error::conflict(
        "event_id_conflict",
        format!(
            "stream `{stream}` already holds events with ids of this append ({}), but this is not a retry of that append: {reason}; use new ids for new events",
            placed.join(", ")
        ),
    ))
}

/// A change to a stream's record other than an append.
#[derive(Clone, Debug)]
pub(crate) enum StreamChange {
    SetMetadata(StreamMetadata),
    Delete {
        mode: DeleteMode,
        expected_version: ExpectedVersion,
    },
}

/// The record after `change`, or why it is refused.
pub(crate) fn apply_stream_change(
    stream: &StreamName,
    record: &StreamRecord,
    change: &StreamChange,
) -> Result<StreamRecord, AppendError> {
    if record.tombstoned {
        return Err(stream_deleted(stream).into());
    }
    let mut changed = record.clone();
    match change {
        StreamChange::SetMetadata(metadata) => {
            validate_metadata(metadata)?;
            changed.metadata = metadata.clone();
            // Truncation only moves forward: what it hid may already be
            // scavenged, and a soft delete (a truncation) must not be
            // undone by a later metadata write.
            changed.metadata.truncate_before = metadata
                .truncate_before
                .max(record.metadata.truncate_before);
        }
        StreamChange::Delete {
            mode,
            expected_version,
        } => {
            check_expected_version(stream, *expected_version, record)?;
            match mode {
                DeleteMode::Soft => {
                    if record.version_for_expectations().is_none() {
                        return Err(stream_not_found(stream).into());
                    }
                    changed.soft_deleted = true;
                    changed.metadata.truncate_before = Some(record.next_revision());
                }
                DeleteMode::Hard => changed.tombstoned = true,
            }
        }
    }
    Ok(changed)
}

fn validate_metadata(metadata: &StreamMetadata) -> Result<(), Error> {
    if metadata.max_count == Some(0) {
        return Err(Error::invalid_argument(
            "invalid_stream_metadata",
            "max_count must be at least 1 (soft-delete the stream to hide every event)",
        ));
    }
    if let Some(max_age) = metadata.max_age
        && max_age.as_duration().is_zero()
    {
        return Err(Error::invalid_argument(
            "invalid_stream_metadata",
            "max_age must be above zero",
        ));
    }
    Ok(())
}

/// A stored event as a scavenge sees it.
#[derive(Clone, Debug)]
pub(crate) struct ScavengeCandidate {
    pub revision: u64,
    pub hash: [u8; 32],
    pub recorded_at_micros: i64,
}

/// How many of `candidates` (the stream's oldest stored events, in
/// revision order) are hidden and may be removed. Only a prefix is ever
/// removed, so the chain of what remains starts at one anchor.
pub(crate) fn removable_prefix(
    record: &StreamRecord,
    candidates: &[ScavengeCandidate],
    now_micros: i64,
) -> usize {
    let visible_from = record.visible_from_revision();
    let oldest_visible = record.oldest_visible_recorded_at(now_micros);
    let mut removable = 0;
    for candidate in candidates {
        let hidden =
            candidate.revision < visible_from || candidate.recorded_at_micros < oldest_visible;
        if !hidden {
            break;
        }
        removable += 1;
    }
    removable
}

/// A snapshot older than what reads show describes hidden events.
pub(crate) fn snapshot_is_hidden(record: &StreamRecord, snapshot_revision: u64) -> bool {
    record.tombstoned || snapshot_revision < record.visible_from_revision()
}

/// Whether a snapshot at `revision` may be stored for the stream whose
/// record is `record` (`None`: never written).
pub(crate) fn check_snapshot_write(
    stream: &StreamName,
    record: Option<&StreamRecord>,
    revision: u64,
) -> Result<(), Error> {
    let Some(record) = record else {
        return Err(stream_not_found(stream));
    };
    if record.tombstoned {
        return Err(stream_deleted(stream));
    }
    if record.version_for_expectations().is_none() {
        return Err(stream_not_found(stream));
    }
    if record
        .last_revision
        .is_none_or(|last_revision| revision > last_revision)
    {
        return Err(snapshot_ahead_of_stream(stream, revision, record));
    }
    Ok(())
}

fn snapshot_ahead_of_stream(stream: &StreamName, revision: u64, record: &StreamRecord) -> Error {
    let version = match record.last_revision {
        Some(last_revision) => format!("version {last_revision}"),
        None => "no events".to_string(),
    };
    Error::new(
        ErrorKind::Conflict,
        "snapshot_ahead_of_stream",
        format!(
            "a snapshot at revision {revision} is beyond stream `{stream}`, which has {version}"
        ),
    )
}

/// What an import does with one exported event once its stream is locked.
#[derive(Debug)]
pub(crate) enum ImportPlan {
    /// The event is already stored (or was, before a scavenge).
    AlreadyPresent,
    /// Write it; the record after, except `last_position`.
    Write(StreamRecord),
}

/// Decides an import: `stored_at_revision` is the id and hash of the
/// stream's event at the imported revision, if one is stored.
pub(crate) fn plan_import(
    record: &StreamRecord,
    stored_at_revision: Option<(Uuid, [u8; 32])>,
    event: &crate::store::ImportedEvent,
) -> Result<ImportPlan, Error> {
    let stream = &event.stream;
    // Checked before the tombstone, so that repeating the import of a
    // stream deleted since (or in the export) skips what it holds.
    if record
        .last_revision
        .is_some_and(|last_revision| event.revision <= last_revision)
    {
        return match stored_at_revision {
            Some((id, hash)) if id == event.prepared.id && hash == event.hash => {
                Ok(ImportPlan::AlreadyPresent)
            }
            None if event.revision < record.scavenged_before_revision => {
                Ok(ImportPlan::AlreadyPresent)
            }
            _ => Err(Error::conflict(
                "import_conflict",
                format!(
                    "stream `{stream}` already has a different event at revision {}",
                    event.revision
                ),
            )),
        };
    }
    if record.tombstoned {
        return Err(stream_deleted(stream));
    }
    let mut record_after = record.clone();
    let starts_fresh_stream_midway = record.last_revision.is_none()
        && record.scavenged_before_revision == 0
        && event.revision > 0;
    if starts_fresh_stream_midway {
        // The export began after a scavenge: what came before is gone
        // there too, and the exported predecessor hash is the anchor.
        record_after.scavenged_before_revision = event.revision;
        record_after.scavenged_anchor_hash = event.previous_hash;
    } else if event.revision != record.next_revision() {
        return Err(Error::invalid_argument(
            "import_out_of_order",
            format!(
                "stream `{stream}` continues at revision {}, but the imported event has revision {}; import a stream's events in order",
                record.next_revision(),
                event.revision
            ),
        ));
    } else if event.previous_hash != record.last_hash {
        return Err(Error::conflict(
            "import_chain_mismatch",
            format!(
                "the imported event at revision {} of stream `{stream}` does not chain to the stored event before it",
                event.revision
            ),
        ));
    }
    record_after.last_revision = Some(event.revision);
    record_after.last_hash = event.hash;
    record_after.soft_deleted = false;
    Ok(ImportPlan::Write(record_after))
}
