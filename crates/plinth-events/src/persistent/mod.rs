//! Persistent subscriptions (consumer groups): server-side checkpoints and
//! at-least-once delivery of a tenant's events to competing consumers.
//!
//! # Model
//!
//! A group is named per tenant and subscribes to one stream or to the
//! tenant's global log (optionally filtered by stream prefix and event
//! types). It starts at the log's start, its end (what is committed after
//! creation) or an explicit global position. Every position is a global
//! log position, also for a group on one stream.
//!
//! Consumers pull: [`EventStore::lease`] hands out up to `limit` events in
//! global position order, each leased to that consumer until its lease
//! (visibility timeout, `lease_timeout`) runs out. Competing consumers get
//! disjoint leases. A consumer then acks an event (done) or nacks it
//! (deliver again). A nack or an expired lease counts a retry; past
//! `max_retries` retries the event is parked. Parked events can be listed
//! and replayed: replay makes them deliverable again with their retries
//! reset. At most `max_in_flight` events of a group are leased at once.
//!
//! # State
//!
//! A group's row holds two cursors (see `migrations.rs`):
//! `scanned_before` (every position below it entered tracking or is not
//! for the group) and `settled_before` (every position below it is acked,
//! parked or not for the group). The checkpoint is `settled_before - 1`:
//! it advances past contiguous acked and parked events, never past a
//! leased or pending one, and never moves back (a replayed event below it
//! is redelivered without pulling it back). Each delivered event that is
//! not acked has a row: `pending`, `leased` (consumer, expiry) or `parked`;
//! an ack deletes the row. So the tracked set stays small: at most
//! `max_in_flight` leased rows, the pending ones, and the parked ones.
//!
//! # One change, one transaction
//!
//! Every lease, ack and nack is one transaction on the backend: load the
//! group's row and its unparked rows, process expired leases (each counts
//! a retry), apply the change with the pure rules of `rules.rs`, and write
//! back what changed, cursors included. A lease first redelivers pending
//! events (all below the scan cursor, so order holds), then reads new
//! matching events from the scan cursor up to the head. SQLite runs the
//! transaction as one job on its single writer; PostgreSQL locks the
//! group's row first (`FOR UPDATE`), so one group's changes are serialised
//! across nodes while other groups run in parallel. Everything is in the
//! database: a new [`EventStore`] over the same database (a restart, or
//! another node) continues with the same checkpoint, leases and parked
//! events. Expiry is judged with the store's clock at each change; status
//! counts an expired lease as awaiting redelivery before any change
//! processes it.
//!
//! # Waiting
//!
//! A lease with `wait` that finds nothing waits, without polling, for the
//! first of: a commit of the tenant (`EventStore::subscribe`), an ack,
//! nack, replay or settings change on this node (which may free capacity
//! or make events deliverable), the earliest running lease's expiry, or
//! the deadline (or the node's shutdown, with `lease_until`); then it
//! tries once more. Commits on other PostgreSQL
//! nodes reach the tenant's commit watch through commit signals
//! (`postgres/commit_signals.rs`); acks, nacks and replays on other nodes
//! do not, so a lease they would satisfy answers at its deadline.
//!
//! An event removed (scavenged, hard-deleted) after it was tracked cannot
//! be delivered again; a lease settles it as acked instead.

mod model;
mod postgres;
pub(crate) mod rules;
mod sqlite;
pub(crate) mod store;

#[cfg(test)]
mod conformance;

use std::collections::HashMap;
use std::time::Duration;

use plinth_core::{Error, ResourceName, TenantId};

use crate::migrations::micros_to_time;
use crate::model::RecordedEvent;
use crate::service::{EventStore, validate_all_filter};
use rules::{GroupChange, GroupChangeOutcome, GroupCursors, LeasedSlot};
use store::GroupRecord;

pub use model::{
    AckOutcome, GroupDefinition, GroupInfo, GroupName, GroupPage, GroupSettings, GroupStatus,
    LeaseBatch, LeaseRequest, LeasedEvent, MAX_GROUP_IN_FLIGHT, MAX_GROUP_RETRIES,
    MAX_LEASE_TIMEOUT, MAX_LEASE_WAIT, MAX_POSITIONS_PER_CALL, MIN_LEASE_TIMEOUT, NackOutcome,
    ParkedEvent, ParkedPage, ReplayOutcome, StartFrom,
};

pub(crate) fn group_not_found(group: &GroupName) -> Error {
    Error::not_found(
        "group_not_found",
        format!("subscription group `{group}` does not exist"),
    )
}

pub(crate) fn group_exists(group: &GroupName) -> Error {
    Error::conflict(
        "group_exists",
        format!("subscription group `{group}` already exists; update or delete it instead"),
    )
}

fn validate_definition(definition: &GroupDefinition) -> Result<(), Error> {
    definition.settings.validate()?;
    validate_all_filter(&definition.filter)?;
    if definition.stream.is_some() && definition.filter.stream_prefix.is_some() {
        return Err(Error::invalid_argument(
            "invalid_filter",
            "a group on one stream cannot also filter by stream prefix; give one or the other",
        ));
    }
    if let StartFrom::Position(position) = definition.start_from {
        crate::migrations::to_column(position, "start position")?;
    }
    Ok(())
}

/// An ack, nack or replay names 1 to [`MAX_POSITIONS_PER_CALL`] positions.
fn validate_positions(positions: &[u64]) -> Result<(), Error> {
    if positions.is_empty() {
        return Err(Error::invalid_argument(
            "invalid_positions",
            "name at least one event position",
        ));
    }
    if positions.len() > MAX_POSITIONS_PER_CALL {
        return Err(Error::invalid_argument(
            "invalid_positions",
            format!(
                "{} positions were named; at most {MAX_POSITIONS_PER_CALL} are accepted per call",
                positions.len()
            ),
        ));
    }
    Ok(())
}

fn validate_wait(wait: Duration) -> Result<(), Error> {
    if wait > MAX_LEASE_WAIT {
        return Err(Error::invalid_argument(
            "invalid_wait",
            format!(
                "wait is {}ms; at most {}s is allowed",
                wait.as_millis(),
                MAX_LEASE_WAIT.as_secs()
            ),
        ));
    }
    Ok(())
}

/// What one lease attempt found.
struct LeaseAttempt {
    batch: LeaseBatch,
    next_lease_expiry_micros: Option<i64>,
}

impl EventStore {
    /// Creates a group; `group_exists` when the name is taken.
    pub async fn create_group(
        &self,
        tenant: &TenantId,
        group: &GroupName,
        definition: GroupDefinition,
    ) -> Result<GroupInfo, Error> {
        validate_definition(&definition)?;
        let record = GroupRecord {
            stream: definition.stream,
            filter: definition.filter,
            start_from: definition.start_from,
            settings: definition.settings,
            // Set by the backend from `start_from` and the head it reads.
            cursors: GroupCursors {
                scanned_before: 0,
                settled_before: 0,
                total_retries: 0,
            },
            created_at_micros: self.clock.now_micros(),
        };
        let created = self.groups.create_group(tenant, group, record).await?;
        created.info(group)
    }

    pub async fn group(&self, tenant: &TenantId, group: &GroupName) -> Result<GroupInfo, Error> {
        self.group_record(tenant, group).await?.info(group)
    }

    async fn group_record(
        &self,
        tenant: &TenantId,
        group: &GroupName,
    ) -> Result<GroupRecord, Error> {
        self.groups
            .group_record(tenant, group)
            .await?
            .ok_or_else(|| group_not_found(group))
    }

    /// Every group of the tenant, by name.
    pub async fn list_groups(
        &self,
        tenant: &TenantId,
        after_name: Option<&str>,
        limit: usize,
    ) -> Result<GroupPage, Error> {
        let limit = self.read_limit(limit)?;
        let records = self
            .groups
            .group_records(tenant, after_name.map(str::to_string), limit)
            .await?;
        let full_page = records.len() as i64 == limit;
        let mut groups = Vec::with_capacity(records.len());
        for (name, record) in records {
            groups.push(record.info(&name)?);
        }
        let next_after = match groups.last() {
            Some(last) if full_page => Some(last.group.clone()),
            _ => None,
        };
        Ok(GroupPage { groups, next_after })
    }

    /// Changes how a group delivers. Its source and cursors stay: changing
    /// what a group reads would make its checkpoint meaningless (delete and
    /// re-create it instead). Lower limits apply to the next lease; leases
    /// already granted keep their expiry.
    pub async fn update_group(
        &self,
        tenant: &TenantId,
        group: &GroupName,
        settings: GroupSettings,
    ) -> Result<GroupInfo, Error> {
        settings.validate()?;
        let updated = self
            .groups
            .update_group_settings(tenant, group, settings)
            .await?
            .ok_or_else(|| group_not_found(group))?;
        self.group_activity.notify_waiters();
        updated.info(group)
    }

    /// Deletes a group with its leases and parked events.
    pub async fn delete_group(&self, tenant: &TenantId, group: &GroupName) -> Result<(), Error> {
        if !self.groups.delete_group(tenant, group).await? {
            return Err(group_not_found(group));
        }
        Ok(())
    }

    /// Leases up to `request.limit` events to `request.consumer`, waiting
    /// up to `request.wait` when none is deliverable (see the module docs).
    pub async fn lease(
        &self,
        tenant: &TenantId,
        group: &GroupName,
        request: &LeaseRequest,
    ) -> Result<LeaseBatch, Error> {
        self.lease_until(tenant, group, request, std::future::pending())
            .await
    }

    /// Like [`lease`](Self::lease), but a wait also ends, with what the
    /// last attempt found (nothing), when `stop` completes: a node shutting
    /// down answers its waiting consumers instead of holding its drain
    /// open. `stop` never interrupts an attempt, so no lease is taken that
    /// the consumer does not receive.
    pub async fn lease_until(
        &self,
        tenant: &TenantId,
        group: &GroupName,
        request: &LeaseRequest,
        stop: impl Future<Output = ()>,
    ) -> Result<LeaseBatch, Error> {
        tokio::pin!(stop);
        ResourceName::parse("consumer", &request.consumer)?;
        let limit = self.read_limit(request.limit)? as usize;
        validate_wait(request.wait)?;
        let deadline = tokio::time::Instant::now() + request.wait;
        let mut commits = self.subscribe(tenant);
        loop {
            // Registered before the attempt, so nothing between the attempt
            // and the wait is missed.
            let activity = self.group_activity.notified();
            tokio::pin!(activity);
            activity.as_mut().enable();
            commits.borrow_and_update();
            let attempt = self
                .lease_once(tenant, group, &request.consumer, limit)
                .await?;
            if !attempt.batch.events.is_empty() || tokio::time::Instant::now() >= deadline {
                return Ok(attempt.batch);
            }
            let wake_at = self.wake_time(deadline, attempt.next_lease_expiry_micros);
            tokio::select! {
                changed = commits.changed() => {
                    if changed.is_err() {
                        return Ok(attempt.batch);
                    }
                }
                () = &mut activity => {}
                () = tokio::time::sleep_until(wake_at) => {}
                () = &mut stop => return Ok(attempt.batch),
            }
        }
    }

    /// The deadline, or earlier when a running lease expires before it.
    fn wake_time(
        &self,
        deadline: tokio::time::Instant,
        next_lease_expiry_micros: Option<i64>,
    ) -> tokio::time::Instant {
        let Some(expiry) = next_lease_expiry_micros else {
            return deadline;
        };
        let until_expiry = u64::try_from(expiry.saturating_sub(self.clock.now_micros()))
            .unwrap_or(0)
            // Expiry is inclusive of its microsecond; wake just after.
            .saturating_add(1);
        deadline.min(tokio::time::Instant::now() + Duration::from_micros(until_expiry))
    }

    async fn lease_once(
        &self,
        tenant: &TenantId,
        group: &GroupName,
        consumer: &str,
        limit: usize,
    ) -> Result<LeaseAttempt, Error> {
        let change = GroupChange::Lease {
            consumer: consumer.to_string(),
            limit,
            now_micros: self.clock.now_micros(),
        };
        let outcome = self
            .groups
            .change_group(tenant, group, change)
            .await?
            .ok_or_else(|| group_not_found(group))?;
        let GroupChangeOutcome::Leased {
            slots,
            next_lease_expiry_micros,
        } = outcome
        else {
            return Err(Error::internal("a lease did not answer with leased events"));
        };
        let events = self.leased_events(tenant, group, slots).await?;
        metrics::counter!("plinth_events_group_events_leased_total").increment(events.len() as u64);
        Ok(LeaseAttempt {
            batch: LeaseBatch { events },
            next_lease_expiry_micros,
        })
    }

    /// The leased slots with their events; redelivered events are read by
    /// position, and those no longer stored are settled.
    async fn leased_events(
        &self,
        tenant: &TenantId,
        group: &GroupName,
        slots: Vec<LeasedSlot>,
    ) -> Result<Vec<LeasedEvent>, Error> {
        let redelivered: Vec<u64> = slots
            .iter()
            .filter(|slot| slot.event.is_none())
            .map(|slot| slot.position)
            .collect();
        let mut stored = self.events_by_position(tenant, redelivered).await?;
        let mut events = Vec::with_capacity(slots.len());
        let mut gone = Vec::new();
        for slot in slots {
            let event = match slot.event {
                Some(event) => event,
                None => match stored.remove(&slot.position) {
                    Some(event) => event,
                    None => {
                        gone.push(slot.position);
                        continue;
                    }
                },
            };
            events.push(LeasedEvent {
                event,
                retry_count: slot.retry_count,
                delivery_count: slot.delivery_count,
                lease_expires_at: micros_to_time(slot.lease_expires_micros)?,
            });
        }
        if !gone.is_empty() {
            self.ack(tenant, group, &gone).await?;
        }
        Ok(events)
    }

    async fn events_by_position(
        &self,
        tenant: &TenantId,
        positions: Vec<u64>,
    ) -> Result<HashMap<u64, RecordedEvent>, Error> {
        if positions.is_empty() {
            return Ok(HashMap::new());
        }
        let events = self.groups.events_at_positions(tenant, positions).await?;
        Ok(events
            .into_iter()
            .map(|event| (event.position, event))
            .collect())
    }

    /// Settles events (by global position): they are never delivered
    /// again, and the checkpoint moves past them once everything before
    /// is settled.
    pub async fn ack(
        &self,
        tenant: &TenantId,
        group: &GroupName,
        positions: &[u64],
    ) -> Result<AckOutcome, Error> {
        validate_positions(positions)?;
        let change = GroupChange::Ack {
            positions: positions.to_vec(),
            now_micros: self.clock.now_micros(),
        };
        match self.groups.change_group(tenant, group, change).await? {
            None => Err(group_not_found(group)),
            Some(GroupChangeOutcome::Acked(outcome)) => {
                metrics::counter!("plinth_events_group_events_acked_total")
                    .increment(outcome.acked.len() as u64);
                self.group_activity.notify_waiters();
                Ok(outcome)
            }
            Some(_) => Err(Error::internal("an ack did not answer with acked events")),
        }
    }

    /// Gives leased events back for redelivery, counting a retry each;
    /// those out of retries are parked.
    pub async fn nack(
        &self,
        tenant: &TenantId,
        group: &GroupName,
        positions: &[u64],
    ) -> Result<NackOutcome, Error> {
        validate_positions(positions)?;
        let change = GroupChange::Nack {
            positions: positions.to_vec(),
            now_micros: self.clock.now_micros(),
        };
        match self.groups.change_group(tenant, group, change).await? {
            None => Err(group_not_found(group)),
            Some(GroupChangeOutcome::Nacked(outcome)) => {
                metrics::counter!("plinth_events_group_events_retried_total")
                    .increment(outcome.retrying.len() as u64);
                metrics::counter!("plinth_events_group_events_parked_total")
                    .increment(outcome.parked.len() as u64);
                self.group_activity.notify_waiters();
                Ok(outcome)
            }
            Some(_) => Err(Error::internal("a nack did not answer with nacked events")),
        }
    }

    /// Parked events by position, from `after_position` (exclusive).
    pub async fn parked_events(
        &self,
        tenant: &TenantId,
        group: &GroupName,
        after_position: Option<u64>,
        limit: usize,
    ) -> Result<ParkedPage, Error> {
        let limit = self.read_limit(limit)?;
        self.group_record(tenant, group).await?;
        let rows = self
            .groups
            .parked_rows(tenant, group, after_position, limit)
            .await?;
        let next_position = match rows.last() {
            Some(last) if rows.len() as i64 == limit => Some(last.position),
            _ => None,
        };
        let positions = rows.iter().map(|row| row.position).collect();
        let mut stored = self.events_by_position(tenant, positions).await?;
        let mut events = Vec::with_capacity(rows.len());
        for row in rows {
            // A parked event removed since (scavenged) has nothing to show.
            if let Some(event) = stored.remove(&row.position) {
                events.push(ParkedEvent {
                    event,
                    retry_count: row.retry_count,
                });
            }
        }
        Ok(ParkedPage {
            events,
            next_position,
        })
    }

    /// Makes parked events deliverable again, retries reset: those at
    /// `positions`, or up to [`MAX_POSITIONS_PER_CALL`] of them, first
    /// parked position first, when `positions` is empty.
    pub async fn replay_parked(
        &self,
        tenant: &TenantId,
        group: &GroupName,
        positions: &[u64],
    ) -> Result<ReplayOutcome, Error> {
        if !positions.is_empty() {
            validate_positions(positions)?;
        }
        self.group_record(tenant, group).await?;
        let replayed = self
            .groups
            .replay_parked(
                tenant,
                group,
                positions.to_vec(),
                MAX_POSITIONS_PER_CALL as i64,
            )
            .await?;
        metrics::counter!("plinth_events_group_events_replayed_total").increment(replayed);
        self.group_activity.notify_waiters();
        Ok(ReplayOutcome { replayed })
    }

    /// The group's checkpoint, lag and counts.
    pub async fn group_status(
        &self,
        tenant: &TenantId,
        group: &GroupName,
    ) -> Result<GroupStatus, Error> {
        let record = self.group_record(tenant, group).await?;
        let head_position = self.backend.head_position(tenant).await?;
        let counts = self
            .groups
            .group_counts(tenant, group, self.clock.now_micros())
            .await?;
        let settled_before = record.cursors.settled_before;
        Ok(GroupStatus {
            group: record.info(group)?,
            head_position,
            checkpoint: settled_before.checked_sub(1),
            lag: head_position.map_or(0, |head| (head + 1).saturating_sub(settled_before)),
            in_flight: counts.in_flight,
            awaiting_redelivery: counts.awaiting_redelivery,
            parked: counts.parked,
            events_retrying: counts.events_retrying,
            total_retries: record.cursors.total_retries,
        })
    }
}
