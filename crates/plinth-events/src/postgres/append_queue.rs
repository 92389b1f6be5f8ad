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
//! - One group per tenant runs at a time on a node, in a task of its own,
//!   so a client that disconnects never cancels the appends of the others
//!   (its own append still runs: it was sent).
//! - A group holds at most one append per stream; a second append to the
//!   same stream waits for the next group, so appends to one stream keep
//!   their arrival order and each is decided against the stream as the
//!   previous one left it.
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

/// The appends waiting per tenant. A tenant has an entry exactly while a
/// task runs its groups.
#[derive(Default)]
struct WaitingAppends {
    by_tenant: HashMap<TenantId, VecDeque<PendingAppend>>,
}

pub(crate) struct AppendQueue {
    waiting: Arc<Mutex<WaitingAppends>>,
    writer: Arc<AppendGroupWriter>,
}

impl AppendQueue {
    pub fn new(writer: AppendGroupWriter) -> Self {
        AppendQueue {
            waiting: Arc::new(Mutex::new(WaitingAppends::default())),
            writer: Arc::new(writer),
        }
    }

    /// Queues the append for the tenant's next group and waits for its
    /// outcome.
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
        let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(queue) = waiting.by_tenant.get_mut(tenant) {
            if queue.len() >= MAX_WAITING_APPENDS_PER_TENANT {
                return Err(Error::unavailable(
                    "events_overloaded",
                    format!(
                        "{MAX_WAITING_APPENDS_PER_TENANT} appends are already waiting for this tenant's log; retry later"
                    ),
                    Duration::from_secs(1),
                ));
            }
            queue.push_back(pending);
            return Ok(());
        }
        waiting
            .by_tenant
            .insert(tenant.clone(), VecDeque::from([pending]));
        drop(waiting);
        tokio::spawn(run_groups(
            tenant.clone(),
            Arc::clone(&self.waiting),
            Arc::clone(&self.writer),
        ));
        Ok(())
    }
}

/// Commits the tenant's waiting appends group after group until none
/// wait, then removes the tenant's entry.
async fn run_groups(
    tenant: TenantId,
    waiting: Arc<Mutex<WaitingAppends>>,
    writer: Arc<AppendGroupWriter>,
) {
    loop {
        let group = {
            let mut waiting = waiting.lock().unwrap_or_else(PoisonError::into_inner);
            let Some(queue) = waiting.by_tenant.get_mut(&tenant) else {
                return;
            };
            let group = take_group(queue);
            if group.is_empty() {
                waiting.by_tenant.remove(&tenant);
                return;
            }
            group
        };
        // A task of its own, so that a panic while writing drops only this
        // group's reply channels (its clients get an error) and the tenant's
        // queue keeps moving.
        let written = tokio::spawn(write_group(tenant.clone(), group, Arc::clone(&writer)));
        if let Err(join_error) = written.await {
            tracing::error!(error = %join_error, "an append group's task failed");
        }
    }
}

/// Takes the next group off the front of the queue: oldest first, one
/// append per stream, within the group's bounds.
fn take_group(queue: &mut VecDeque<PendingAppend>) -> Vec<PendingAppend> {
    let mut group = Vec::new();
    let mut streams_in_group = HashSet::new();
    let mut events_in_group = 0;
    let mut bytes_in_group = 0;
    let mut left_waiting = VecDeque::with_capacity(queue.len());
    while let Some(pending) = queue.pop_front() {
        let fits = group.is_empty()
            || (group.len() < MAX_APPENDS_PER_GROUP
                && events_in_group + pending.events.len() <= MAX_EVENTS_PER_GROUP
                && bytes_in_group + pending.payload_bytes() <= MAX_BYTES_PER_GROUP
                && !streams_in_group.contains(&pending.stream));
        if !fits {
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
        let group = take_group(&mut queue);
        assert_eq!(streams(&group), ["a", "b", "c"]);
        let rest: Vec<PendingAppend> = queue.into_iter().collect();
        assert_eq!(streams(&rest), ["a", "b"]);
    }

    #[test]
    fn a_group_stops_at_its_event_bound_but_always_takes_the_first_append() {
        let mut queue = VecDeque::from([pending("a", MAX_EVENTS_PER_GROUP + 1), pending("b", 1)]);
        let group = take_group(&mut queue);
        assert_eq!(streams(&group), ["a"]);
        assert_eq!(queue.len(), 1);

        let mut queue = VecDeque::from([
            pending("a", MAX_EVENTS_PER_GROUP - 1),
            pending("b", 2),
            pending("c", 1),
        ]);
        let group = take_group(&mut queue);
        assert_eq!(streams(&group), ["a", "c"]);
    }

    #[test]
    fn a_group_holds_at_most_its_append_bound() {
        let mut queue = VecDeque::new();
        for index in 0..MAX_APPENDS_PER_GROUP + 3 {
            queue.push_back(pending(&format!("s{index}"), 1));
        }
        let group = take_group(&mut queue);
        assert_eq!(group.len(), MAX_APPENDS_PER_GROUP);
        assert_eq!(queue.len(), 3);
    }
}
