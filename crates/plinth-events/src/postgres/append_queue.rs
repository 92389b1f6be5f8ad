//! Group commit for appends on PostgreSQL: a node gathers the appends of
//! one tenant that arrive while the tenant's previous transaction runs,
//! and commits them together in one transaction (`append_group.rs`).
//!
//! # Why
//!
//! A tenant's appends serialise on its log counter row, which each
//! transaction holds from its last statement until its commit is visible
//! (see the module documentation of `postgres`). Committed one at a time,
//! every append waits for its own WAL flush and the tenant's append rate
//! is the inverse of one commit's latency, however many clients write.
//! Committed as a group, one flush and one counter advance serve every
//! append that queued during the previous commit.
//!
//! # Rules
//!
//! - A group has two phases: it locks its streams and decides its appends
//!   (one round trip), then writes and commits (one more, the commit's WAL
//!   flush included). The next group of the tenant starts when the
//!   previous one enters its commit phase, with every append that waited
//!   meanwhile: its locks are taken while the previous group commits, and
//!   its counter statement waits at the database, so the counter row is
//!   not left idle between two commits. At most
//!   [`GROUPS_IN_FLIGHT_PER_TENANT`] groups are in flight, and one at a
//!   time is deciding. (Starting a group at every free slot instead made
//!   groups of one append under steady load: each arrival found a slot.)
//! - Each group runs in a task of its own, so a client that disconnects
//!   never cancels the appends of the others (its own append still runs:
//!   it was sent), and a panic while writing drops only that group's
//!   reply channels: its clients get an error and the tenant's queue
//!   keeps moving.
//! - A group holds at most one append per stream, and no append to a
//!   stream of a group still running; such an append waits for a later
//!   group, so appends to one stream keep their arrival order and each is
//!   decided against the stream as the previous one left it.
//! - A group is bounded in appends, events and bytes; the first append
//!   waiting always goes in, whatever its size.
//! - At most [`MAX_WAITING_APPENDS_PER_TENANT`] appends wait per tenant.
//!   When the queue is full an append is refused at once with
//!   `events_overloaded` (503 with `Retry-After`): the client retries
//!   later, and the node's memory stays bounded.
//! - When a group's transaction fails on a database error (a statement
//!   refused, not an outage), its appends are retried one group each, so
//!   one append that PostgreSQL refuses cannot fail the others.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use plinth_core::{Error, ErrorKind, TenantId};
use tokio::sync::oneshot;

use crate::model::{AppendError, AppendResult, ExpectedVersion, StreamName};
use crate::postgres::append_group::AppendGroupWriter;
use crate::validation::PreparedEvent;

/// Appends that may wait for a group, per tenant and node.
pub(crate) const MAX_WAITING_APPENDS_PER_TENANT: usize = 4096;
/// Groups of one tenant written at once by a node: one committing, the
/// next deciding.
const GROUPS_IN_FLIGHT_PER_TENANT: usize = 2;
/// At most this many appends commit in one transaction.
const MAX_APPENDS_PER_GROUP: usize = 256;
/// At most this many events commit in one transaction (unless the first
/// append alone has more).
const MAX_EVENTS_PER_GROUP: usize = 10_000;
/// At most this many bytes of event data and metadata commit in one
/// transaction (unless the first append alone has more).
const MAX_BYTES_PER_GROUP: usize = 16 * 1024 * 1024;

/// One append waiting for its group's transaction.
pub(crate) struct PendingAppend {
    pub stream: StreamName,
    pub expected_version: ExpectedVersion,
    pub events: Vec<PreparedEvent>,
    pub now_micros: i64,
    pub reply: oneshot::Sender<Result<AppendResult, AppendError>>,
}

impl PendingAppend {
    fn payload_bytes(&self) -> usize {
        let mut bytes = 0;
        for event in &self.events {
            bytes += event.data.len() + event.metadata.len();
        }
        bytes
    }
}

/// A tenant's appends on this node: those waiting, and the groups being
/// written. A tenant has an entry while it has appends waiting or groups
/// in flight.
#[derive(Default)]
struct TenantAppends {
    waiting: VecDeque<PendingAppend>,
    groups_in_flight: usize,
    /// A group is locking its streams and deciding its appends.
    group_deciding: bool,
    /// Streams of the groups being written, which a new group must leave
    /// out.
    streams_in_flight: HashSet<StreamName>,
}

type AppendsByTenant = HashMap<TenantId, TenantAppends>;

/// What the queue and its group tasks share.
struct QueueState {
    by_tenant: Mutex<AppendsByTenant>,
    writer: AppendGroupWriter,
}

pub(crate) struct AppendQueue {
    state: Arc<QueueState>,
}

impl AppendQueue {
    pub fn new(writer: AppendGroupWriter) -> Self {
        AppendQueue {
            state: Arc::new(QueueState {
                by_tenant: Mutex::new(HashMap::new()),
                writer,
            }),
        }
    }

    /// Queues the append for one of the tenant's next groups and waits for
    /// its outcome.
    pub async fn append(
        &self,
        tenant: &TenantId,
        stream: &StreamName,
        expected_version: ExpectedVersion,
        events: Vec<PreparedEvent>,
        now_micros: i64,
    ) -> Result<AppendResult, AppendError> {
        let (reply, outcome) = oneshot::channel();
        let pending = PendingAppend {
            stream: stream.clone(),
            expected_version,
            events,
            now_micros,
            reply,
        };
        self.enqueue(tenant, pending)?;
        match outcome.await {
            Ok(result) => result,
            Err(_) => Err(Error::internal(
                "the append's group ended without an answer; whether it was written is unknown",
            )
            .into()),
        }
    }

    fn enqueue(&self, tenant: &TenantId, pending: PendingAppend) -> Result<(), Error> {
        let mut by_tenant = lock(&self.state.by_tenant);
        let appends = by_tenant.entry(tenant.clone()).or_default();
        if appends.waiting.len() >= MAX_WAITING_APPENDS_PER_TENANT {
            return Err(Error::unavailable(
                "events_overloaded",
                format!(
                    "{MAX_WAITING_APPENDS_PER_TENANT} appends are already waiting for this tenant's log; retry later"
                ),
                Duration::from_secs(1),
            ));
        }
        appends.waiting.push_back(pending);
        start_next_group(&self.state, &mut by_tenant, tenant);
        Ok(())
    }
}

fn lock(by_tenant: &Mutex<AppendsByTenant>) -> std::sync::MutexGuard<'_, AppendsByTenant> {
    by_tenant.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Starts the tenant's next group in a task of its own, when no group is
/// deciding, fewer than [`GROUPS_IN_FLIGHT_PER_TENANT`] are in flight and
/// a waiting append may go now (one for a stream in flight waits for its
/// group to end, which calls this again). Forgets a tenant with nothing
/// waiting and nothing in flight.
fn start_next_group(state: &Arc<QueueState>, by_tenant: &mut AppendsByTenant, tenant: &TenantId) {
    let Some(appends) = by_tenant.get_mut(tenant) else {
        return;
    };
    if appends.group_deciding || appends.groups_in_flight >= GROUPS_IN_FLIGHT_PER_TENANT {
        return;
    }
    let group = take_group(&mut appends.waiting, &appends.streams_in_flight);
    if group.is_empty() {
        if appends.groups_in_flight == 0 && appends.waiting.is_empty() {
            by_tenant.remove(tenant);
        }
        return;
    }
    let mut streams = Vec::with_capacity(group.len());
    for pending in &group {
        appends.streams_in_flight.insert(pending.stream.clone());
        streams.push(pending.stream.clone());
    }
    appends.groups_in_flight += 1;
    appends.group_deciding = true;
    let in_flight = GroupInFlight {
        state: Arc::clone(state),
        tenant: tenant.clone(),
        streams,
        deciding: true,
    };
    tokio::spawn(write_group(in_flight, group));
}

/// A group between its start and its end, as the queue tracks it. Its
/// phase changes and its end (also by a panic: this is a drop guard) let
/// the tenant's next group start.
pub(crate) struct GroupInFlight {
    state: Arc<QueueState>,
    tenant: TenantId,
    streams: Vec<StreamName>,
    deciding: bool,
}

impl GroupInFlight {
    /// The group's locks are held and its appends decided: the next group
    /// may start deciding while this one commits.
    pub fn entering_commit_phase(&mut self) {
        if !self.deciding {
            return;
        }
        self.deciding = false;
        let mut by_tenant = lock(&self.state.by_tenant);
        if let Some(appends) = by_tenant.get_mut(&self.tenant) {
            appends.group_deciding = false;
        }
        start_next_group(&self.state, &mut by_tenant, &self.tenant);
    }
}

impl Drop for GroupInFlight {
    fn drop(&mut self) {
        let mut by_tenant = lock(&self.state.by_tenant);
        if let Some(appends) = by_tenant.get_mut(&self.tenant) {
            for stream in &self.streams {
                appends.streams_in_flight.remove(stream);
            }
            appends.groups_in_flight -= 1;
            if self.deciding {
                appends.group_deciding = false;
            }
        }
        start_next_group(&self.state, &mut by_tenant, &self.tenant);
    }
}

/// Takes the next group off the front of the queue: oldest first, one
/// append per stream, none for a stream in flight, within the group's
/// bounds.
fn take_group(
    queue: &mut VecDeque<PendingAppend>,
    streams_in_flight: &HashSet<StreamName>,
) -> Vec<PendingAppend> {
    let mut group = Vec::new();
    let mut streams_in_group = HashSet::new();
    let mut events_in_group = 0;
    let mut bytes_in_group = 0;
    let mut left_waiting = VecDeque::with_capacity(queue.len());
    while let Some(pending) = queue.pop_front() {
        let stream_is_free = !streams_in_flight.contains(&pending.stream)
            && !streams_in_group.contains(&pending.stream);
        let within_bounds = group.is_empty()
            || (group.len() < MAX_APPENDS_PER_GROUP
                && events_in_group + pending.events.len() <= MAX_EVENTS_PER_GROUP
                && bytes_in_group + pending.payload_bytes() <= MAX_BYTES_PER_GROUP);
        if !(stream_is_free && within_bounds) {
            left_waiting.push_back(pending);
            continue;
        }
        streams_in_group.insert(pending.stream.clone());
        events_in_group += pending.events.len();
        bytes_in_group += pending.payload_bytes();
        group.push(pending);
    }
    *queue = left_waiting;
    group
}

async fn write_group(mut in_flight: GroupInFlight, group: Vec<PendingAppend>) {
    let state = Arc::clone(&in_flight.state);
    let writer = &state.writer;
    let tenant = in_flight.tenant.clone();
    if group.len() == 1 {
        writer.write_and_reply(&tenant, group, &mut in_flight).await;
        return;
    }
    let Err((failure, group)) = writer.write(&tenant, group, &mut in_flight).await else {
        return;
    };
    if failure.kind() != ErrorKind::Internal {
        reply_to_all(group, &failure);
        return;
    }
    tracing::warn!(
        appends = group.len(),
        error = %failure.detail(),
        "an append group failed in PostgreSQL; retrying its appends one by one"
    );
    for pending in group {
        writer
            .write_and_reply(&tenant, vec![pending], &mut in_flight)
            .await;
    }
}

pub(crate) fn reply_to_all(group: Vec<PendingAppend>, failure: &Error) {
    for pending in group {
        // The client may be gone; its append's outcome is then unknown to
        // it, as with any request it abandons.
        let _ = pending.reply.send(Err(failure.clone().into()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn pending(stream: &str, event_count: usize) -> PendingAppend {
        let (reply, _outcome) = oneshot::channel();
        let mut events = Vec::new();
        for _ in 0..event_count {
            events.push(PreparedEvent {
                id: Uuid::new_v4(),
                id_given_by_caller: false,
                event_type: "t".to_string(),
                schema_version: 1,
                data: "{}".to_string(),
                metadata: "{}".to_string(),
            });
        }
        PendingAppend {
            stream: StreamName::parse(stream).unwrap(),
            expected_version: ExpectedVersion::Any,
            events,
            now_micros: 0,
            reply,
        }
    }

    fn streams(appends: &[PendingAppend]) -> Vec<&str> {
        appends
            .iter()
            .map(|pending| pending.stream.as_str())
            .collect()
    }

    #[test]
    fn a_group_takes_one_append_per_stream_and_leaves_the_rest_in_order() {
        let mut queue = VecDeque::from([
            pending("a", 1),
            pending("b", 1),
            pending("a", 1),
            pending("c", 1),
            pending("b", 1),
        ]);
        let group = take_group(&mut queue, &HashSet::new());
        assert_eq!(streams(&group), ["a", "b", "c"]);
        let rest: Vec<PendingAppend> = queue.into_iter().collect();
        assert_eq!(streams(&rest), ["a", "b"]);
    }

    #[test]
    fn a_group_leaves_out_the_streams_of_groups_still_being_written() {
        let mut queue = VecDeque::from([pending("a", 1), pending("b", 1), pending("c", 1)]);
        let in_flight = HashSet::from([StreamName::parse("a").unwrap()]);
        let group = take_group(&mut queue, &in_flight);
        assert_eq!(streams(&group), ["b", "c"]);
        let rest: Vec<PendingAppend> = queue.into_iter().collect();
        assert_eq!(streams(&rest), ["a"]);
    }

    #[test]
    fn a_group_stops_at_its_event_bound_but_always_takes_the_first_append() {
        let mut queue = VecDeque::from([pending("a", MAX_EVENTS_PER_GROUP + 1), pending("b", 1)]);
        let group = take_group(&mut queue, &HashSet::new());
        assert_eq!(streams(&group), ["a"]);
        assert_eq!(queue.len(), 1);

        let mut queue = VecDeque::from([
            pending("a", MAX_EVENTS_PER_GROUP - 1),
            pending("b", 2),
            pending("c", 1),
        ]);
        let group = take_group(&mut queue, &HashSet::new());
        assert_eq!(streams(&group), ["a", "c"]);
    }

    #[test]
    fn a_group_holds_at_most_its_append_bound() {
        let mut queue = VecDeque::new();
        for index in 0..MAX_APPENDS_PER_GROUP + 3 {
            queue.push_back(pending(&format!("s{index}"), 1));
        }
        let group = take_group(&mut queue, &HashSet::new());
        assert_eq!(group.len(), MAX_APPENDS_PER_GROUP);
        assert_eq!(queue.len(), 3);
    }
}
