//! Integrity verification of a tenant's log: every stream's hash chain,
//! every stream's revisions, and the global log's positions.
//!
//! The stored events are read page by page in position order (hidden ones
//! included: they are still part of the chains until scavenged). For each
//! stream the walk starts at its chain start (the genesis hash, or the
//! anchor hash a scavenge left) and checks that revisions follow one
//! another, that each stored hash is the hash of the event's content
//! chained to the previous one, that the last stored event is the
//! stream's recorded head, and that positions grow with revisions. For the
//! global log it checks positions: without scavenging every position up to
//! the head must be present, and each missing range is reported; after a
//! scavenge, at most as many positions may be missing as scavenges
//! removed events (the removed positions themselves are not kept).
//!
//! Only the log up to the head read at the start is checked, so appends may
//! go on; scavenging may not (the service serialises the two).

use std::collections::HashMap;

use plinth_core::{Error, TenantId};
use serde::Serialize;

use crate::chain::{ChainLink, hash_from_hex};
use crate::model::RecordedEvent;
use crate::rules::StreamRecord;
use crate::service::EventStore;

const PAGE_SIZE: i64 = 1_000;
/// Problems beyond this many are counted, not listed.
const MAX_LISTED_PROBLEMS: usize = 1_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemKind {
    /// A stored hash is not the hash of its event chained to the previous.
    HashMismatch,
    /// A stream skips or repeats revisions.
    RevisionGap,
    /// The stream's record says it has events that are not stored.
    MissingTail,
    /// The last stored event's hash is not the stream's recorded head.
    ChainHeadMismatch,
    /// Positions of the global log are missing.
    PositionGap,
    /// An event's position is not above its predecessor's in the stream.
    PositionOrder,
    /// An event belongs to a stream with no stream record.
    OrphanEvent,
    /// A stored value cannot be read back.
    Unreadable,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct IntegrityProblem {
    pub kind: ProblemKind,
    pub stream: Option<String>,
    pub revision: Option<u64>,
    pub position: Option<u64>,
    pub detail: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    pub tenant: String,
    pub head_position: Option<u64>,
    pub events_checked: u64,
    pub streams_checked: u64,
    /// Events scavenging removed (whose positions may be missing).
    pub events_removed_by_scavenge: u64,
    pub problems: Vec<IntegrityProblem>,
    /// Problems found beyond the listed ones.
    pub unlisted_problems: u64,
}

impl VerifyReport {
    pub fn is_intact(&self) -> bool {
        self.problems.is_empty() && self.unlisted_problems == 0
    }

    fn add(&mut self, problem: IntegrityProblem) {
        if self.problems.len() < MAX_LISTED_PROBLEMS {
            self.problems.push(problem);
        } else {
            self.unlisted_problems += 1;
        }
    }
}

/// Where the walk is in one stream.
struct StreamWalk {
    next_revision: u64,
    previous_hash: [u8; 32],
    previous_position: Option<u64>,
}

/// A range of missing positions, inclusive.
struct PositionGap {
    first: u64,
    last: u64,
}

impl EventStore {
    /// Every tenant whose global log has at least one event, by id: what a
    /// whole-store verify or export walks.
    pub async fn tenants_with_events(&self) -> Result<Vec<TenantId>, Error> {
        let mut tenants = Vec::new();
        for tenant in self.backend.log_tenants().await? {
            tenants.push(TenantId::parse(&tenant)?);
        }
        Ok(tenants)
    }

    /// Checks `tenant`'s chains and global log; see the module docs.
    pub async fn verify(&self, tenant: &TenantId) -> Result<VerifyReport, Error> {
        let _maintenance = self.maintenance.lock().await;
        let head_position = self.backend.head_position(tenant).await?;
        let records: HashMap<String, StreamRecord> = self
            .backend
            .stream_records(tenant)
            .await?
            .into_iter()
            .collect();
        let mut report = VerifyReport {
            tenant: tenant.as_str().to_string(),
            head_position,
            events_checked: 0,
            streams_checked: records.len() as u64,
            events_removed_by_scavenge: records
                .values()
                .map(|record| record.scavenged_before_revision)
                .sum(),
            problems: Vec::new(),
            unlisted_problems: 0,
        };
        let Some(head) = head_position else {
            return Ok(report);
        };
        let mut walks: HashMap<String, StreamWalk> = HashMap::new();
        let mut gaps = Vec::new();
        let mut next_position = 0u64;
        let mut after_position = None;
        'pages: loop {
            let page = self
                .backend
                .stored_events_page(tenant, None, after_position, PAGE_SIZE)
                .await?;
            let Some(last) = page.last() else {
                break;
            };
            after_position = Some(last.position);
            for event in &page {
                if event.position > head {
                    break 'pages;
                }
                if event.position > next_position {
                    gaps.push(PositionGap {
                        first: next_position,
                        last: event.position - 1,
                    });
                }
                next_position = event.position + 1;
                report.events_checked += 1;
                check_event(&mut report, &records, &mut walks, event);
            }
        }
        if next_position <= head {
            gaps.push(PositionGap {
                first: next_position,
                last: head,
            });
        }
        check_stream_heads(&mut report, &records, &walks, head);
        check_position_gaps(&mut report, &gaps);
        Ok(report)
    }
}

fn check_event(
    report: &mut VerifyReport,
    records: &HashMap<String, StreamRecord>,
    walks: &mut HashMap<String, StreamWalk>,
    event: &RecordedEvent,
) {
    let problem = |kind, detail: String| IntegrityProblem {
        kind,
        stream: Some(event.stream.clone()),
        revision: Some(event.revision),
        position: Some(event.position),
        detail,
    };
    let Some(record) = records.get(&event.stream) else {
        report.add(problem(
            ProblemKind::OrphanEvent,
            "the event's stream has no stream record".to_string(),
        ));
        return;
    };
    let walk = walks
        .entry(event.stream.clone())
        .or_insert_with(|| StreamWalk {
            next_revision: record.scavenged_before_revision,
            previous_hash: record.chain_start_hash(),
            previous_position: None,
        });
    if event.revision != walk.next_revision {
        report.add(problem(
            ProblemKind::RevisionGap,
            format!(
                "expected revision {}, found {}",
                walk.next_revision, event.revision
            ),
        ));
    }
    if walk
        .previous_position
        .is_some_and(|previous| previous >= event.position)
    {
        report.add(problem(
            ProblemKind::PositionOrder,
            "the event's position is not above its predecessor's in the stream".to_string(),
        ));
    }
    let Some(stored_hash) = hash_from_hex(&event.hash) else {
        report.add(problem(
            ProblemKind::Unreadable,
            "the stored hash is not 32 bytes".to_string(),
        ));
        return;
    };
    match recomputed_hash(event, &walk.previous_hash) {
        Ok(computed) if computed == stored_hash => {}
        Ok(_) => report.add(problem(
            ProblemKind::HashMismatch,
            "the stored hash does not match the event's content chained to its predecessor"
                .to_string(),
        )),
        Err(error) => report.add(problem(ProblemKind::Unreadable, error.detail().to_string())),
    }
    // Continue from what is stored, so one bad event is reported once.
    walk.next_revision = event.revision + 1;
    walk.previous_hash = stored_hash;
    walk.previous_position = Some(event.position);
}

/// Stored data and metadata are compact `serde_json` text, which parsing
/// and printing again reproduces byte for byte.
fn recomputed_hash(event: &RecordedEvent, previous_hash: &[u8; 32]) -> Result<[u8; 32], Error> {
    let data = serde_json::to_string(&event.data)
        .map_err(|error| Error::internal(format!("re-encoding data: {error}")))?;
    let metadata = serde_json::to_string(&event.metadata)
        .map_err(|error| Error::internal(format!("re-encoding metadata: {error}")))?;
    Ok(ChainLink {
        previous_hash,
        stream: &event.stream,
        revision: event.revision,
        event_id: event.id,
        event_type: &event.event_type,
        schema_version: event.schema_version,
        data: &data,
        metadata: &metadata,
    }
    .hash())
}

/// Each stream committed up to `head` must end at its recorded head.
fn check_stream_heads(
    report: &mut VerifyReport,
    records: &HashMap<String, StreamRecord>,
    walks: &HashMap<String, StreamWalk>,
    head: u64,
) {
    let mut streams: Vec<&String> = records.keys().collect();
    streams.sort();
    for stream in streams {
        let record = &records[stream];
        let Some(last_revision) = record.last_revision else {
            continue;
        };
        if record
            .last_position
            .is_none_or(|last_position| last_position > head)
        {
            continue;
        }
        let (next_revision, last_hash) = match walks.get(stream) {
            Some(walk) => (walk.next_revision, walk.previous_hash),
            None => (record.scavenged_before_revision, record.chain_start_hash()),
        };
        let problem = |kind, detail: String| IntegrityProblem {
            kind,
            stream: Some(stream.clone()),
            revision: Some(next_revision),
            position: None,
            detail,
        };
        if next_revision != last_revision + 1 {
            report.add(problem(
                ProblemKind::MissingTail,
                format!(
                    "the stream's version is {last_revision} but stored events end before revision {next_revision}"
                ),
            ));
        } else if last_hash != record.last_hash {
            report.add(problem(
                ProblemKind::ChainHeadMismatch,
                "the last stored event's hash is not the stream's recorded chain head".to_string(),
            ));
        }
    }
}

fn check_position_gaps(report: &mut VerifyReport, gaps: &[PositionGap]) {
    let missing: u64 = gaps.iter().map(|gap| gap.last - gap.first + 1).sum();
    if missing <= report.events_removed_by_scavenge {
        return;
    }
    let explained_by_scavenge = report.events_removed_by_scavenge;
    for gap in gaps {
        let detail = if explained_by_scavenge == 0 {
            format!("positions {} to {} are missing", gap.first, gap.last)
        } else {
            format!(
                "positions {} to {} are missing; {missing} positions are missing in all but scavenging removed only {explained_by_scavenge} events",
                gap.first, gap.last
            )
        };
        report.add(IntegrityProblem {
            kind: ProblemKind::PositionGap,
            stream: None,
            revision: None,
            position: Some(gap.first),
            detail,
        });
    }
}
