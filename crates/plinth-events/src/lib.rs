//! Plinth's event store block: streams of events with expected-version
//! appends, a gapless per-tenant global log in commit order, reads forward,
//! backward and as of a point in time, snapshots, retention, soft and hard
//! deletion, scavenging, hash chains with verification, export/import and
//! live commit notification, on SQLite and PostgreSQL alike.
//!
//! [`EventStore`] is the block's API; it knows nothing of HTTP. Every
//! failure is a [`plinth_core::Error`] with a stable code, except a version
//! conflict on append, which is an [`AppendError::WrongExpectedVersion`]
//! carrying the stream's current version.
//!
//! Persistent subscriptions (consumer groups, `persistent/`) keep a
//! server-side checkpoint per (tenant, group) and deliver events at least
//! once to competing consumers through leases, acks and nacks, parking
//! what keeps failing.

mod chain;
mod clock;
#[cfg(test)]
mod conformance;
mod export;
mod migrations;
mod model;
mod notify;
mod persistent;
mod postgres;
mod rules;
mod scavenge;
mod service;
mod sqlite;
mod store;
mod validation;
mod verify;

pub use chain::GENESIS_HASH;
pub use clock::{Clock, ManualClock, SystemClock};
pub use export::{ExportLine, ExportRecord, ImportReport, SnapshotExport, StreamExport};
pub use migrations::EVENTS_MIGRATIONS;
pub use model::{
    AllFilter, AllSlice, AppendError, AppendRequest, AppendResult, AppendedEvent, AsOf, DeleteMode,
    ExpectedVersion, MAX_REVISION, NewEvent, NewSnapshot, ReadAllRequest, ReadDirection,
    ReadStreamRequest, RecordedEvent, Snapshot, SnapshotAndEvents, StreamInfo, StreamMetadata,
    StreamName, StreamSlice, StreamStatus, VersionConflict,
};
pub use persistent::{
    AckOutcome, GroupDefinition, GroupInfo, GroupName, GroupPage, GroupSettings, GroupStatus,
    LeaseBatch, LeaseRequest, LeasedEvent, MAX_GROUP_IN_FLIGHT, MAX_GROUP_RETRIES,
    MAX_LEASE_TIMEOUT, MAX_LEASE_WAIT, MAX_POSITIONS_PER_CALL, MIN_LEASE_TIMEOUT, NackOutcome,
    ParkedEvent, ParkedPage, ReplayOutcome, StartFrom,
};
pub use scavenge::{ScavengeProgress, ScavengeReport};
pub use service::EventStore;
pub use verify::{IntegrityProblem, ProblemKind, VerifyReport};
