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
//! - At most [`GROUPS_IN_FLIGHT_PER_TENANT`] groups of a tenant run at once
//!   on a node, each in a task of its own, so a client that disconnects
//!   never cancels the appends of the others (its own append still runs:
//!   it was sent).
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
/// Groups of one tenant written at once by a node. With two, the next
/// group locks its streams while the previous one commits, and its
/// counter statement waits at the database, so the counter row is never
/// idle for a round trip between two commits.
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
/// written. A tenant has an entry exactly while it has a group task.
#[derive(Default)]
struct TenantAppends {
    waiting: VecDeque<PendingAppend>,
    group_tasks: usize,
    /// Streams of the groups being written, which a new group must leave
    /// out.
    streams_in_flight: HashSet<StreamName>,
}

type AppendsByTenant = HashMap<TenantId, TenantAppends>;

pub(crate) struct AppendQueue {
    by_tenant: Arc<Mutex<AppendsByTenant>>,
    writer: Arc<AppendGroupWriter>,
}

impl AppendQueue {
    pub fn new(writer: AppendGroupWriter) -> Self {
        AppendQueue {
            by_tenant: Arc::new(Mutex::new(HashMap::new())),
            writer: Arc::new(writer),
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
        let mut by_tenant = self
            .by_tenant
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
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
        if appends.group_tasks >= GROUPS_IN_FLIGHT_PER_TENANT {
            return Ok(());
        }
        appends.group_tasks += 1;
        drop(by_tenant);
        tokio::spawn(run_groups(
            tenant.clone(),
            Arc::clone(&self.by_tenant),
            Arc::clone(&self.writer),
        ));
        Ok(())
    }
}

/// Writes the tenant's waiting appends group after group, until it finds
/// none it may take; the last task of a tenant with nothing waiting
/// removes the tenant's entry.
async fn run_groups(
    tenant: TenantId,
    by_tenant: Arc<Mutex<AppendsByTenant>>,
    writer: Arc<AppendGroupWriter>,
) {
    loop {
        let Some(group) = next_group(&tenant, &by_tenant) else {
            return;
        };
        let streams: Vec<StreamName> = group.iter().map(|pending| pending.stream.clone()).collect();
        // A task of its own, so that a panic while writing drops only this
        // group's reply channels (its clients get an error) and the tenant's
        // queue keeps moving.
        let written = tokio::spawn(write_group(tenant.clone(), group, Arc::clone(&writer)));
        if let Err(join_error) = written.await {
            tracing::error!(error = %join_error, "an append group's task failed");
        }
        let mut by_tenant = by_tenant.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(appends) = by_tenant.get_mut(&tenant) {
            for stream in &streams {
                appends.streams_in_flight.remove(stream);
            }
        }
    }
}

/// Takes the tenant's next group and marks its streams in flight; `None`
/// (and this task counted out) when no waiting append may go now. An
/// append left waiting then is for a stream in flight, whose group's task
/// takes it next.
fn next_group(tenant: &TenantId, by_tenant: &Mutex<AppendsByTenant>) -> Option<Vec<PendingAppend>> {
    let mut by_tenant = by_tenant.lock().unwrap_or_else(PoisonError::into_inner);
    let appends = by_tenant.get_mut(tenant)?;
    let group = take_group(&mut appends.waiting, &appends.streams_in_flight);
    if group.is_empty() {
        appends.group_tasks -= 1;
        if appends.group_tasks == 0 && appends.waiting.is_empty() {
            by_tenant.remove(tenant);
        }
        return None;
    }
    for pending in &group {
        appends.streams_in_flight.insert(pending.stream.clone());
    }
    Some(group)
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

async fn write_group(tenant: TenantId, group: Vec<PendingAppend>, writer: Arc<AppendGroupWriter>) {
    if group.len() == 1 {
        writer.write_and_reply(&tenant, group).await;
        return;
    }
    let Err((failure, group)) = writer.write(&tenant, group).await else {
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
        writer.write_and_reply(&tenant, vec![pending]).await;
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
