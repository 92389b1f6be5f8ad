//! Every decision of a consumer group, as pure functions over the group's
//! loaded state: which events a lease hands out, what an ack or a nack
//! does, when an expired lease counts a retry and when an event is parked,
//! and how far the checkpoint moves. Backends load the state inside one
//! transaction (SQLite: one writer job; PostgreSQL: with the group's row
//! locked), call [`apply_group_change`] and write back what it changed, so
//! both engines behave identically.

use std::collections::{BTreeMap, BTreeSet};

use crate::model::RecordedEvent;
use crate::persistent::model::{AckOutcome, GroupSettings, NackOutcome, StartFrom};

/// Where a tracked event is. Acked events are not tracked: they are
/// settled and their row is deleted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TrackedState {
    /// Deliverable again (nacked, lease expired or replayed).
    Pending,
    Leased,
    Parked,
}

impl TrackedState {
    pub fn as_column(self) -> &'static str {
        match self {
            TrackedState::Pending => "pending",
            TrackedState::Leased => "leased",
            TrackedState::Parked => "parked",
        }
    }

    pub fn from_column(text: &str) -> Option<Self> {
        match text {
            "pending" => Some(TrackedState::Pending),
            "leased" => Some(TrackedState::Leased),
            "parked" => Some(TrackedState::Parked),
            _ => None,
        }
    }
}

/// One event the group delivered at least once and has not settled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TrackedEvent {
    pub position: u64,
    pub state: TrackedState,
    pub retry_count: u32,
    pub delivery_count: u32,
    pub consumer: Option<String>,
    pub lease_expires_micros: Option<i64>,
}

/// The cursors of a group, as stored in its row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct GroupCursors {
    /// Every position below this was either handed to tracking or is not
    /// for the group.
    pub scanned_before: u64,
    /// Every position below this is settled (acked, parked or not for the
    /// group): the checkpoint is the position before it.
    pub settled_before: u64,
    pub total_retries: u64,
}

/// A group's state as one change sees it: its cursors and every tracked
/// event that is not parked (parked ones are only counted and listed).
pub(crate) struct GroupWork {
    pub settings: GroupSettings,
    pub cursors: GroupCursors,
    pub active: BTreeMap<u64, TrackedEvent>,
    /// Positions whose row must be written (inserted or updated).
    pub changed: BTreeSet<u64>,
    /// Positions whose row must be deleted.
    pub removed: BTreeSet<u64>,
}

/// The events after `scanned_before` a lease may hand out, read in the
/// same transaction.
pub(crate) struct ScannedEvents {
    /// Matching events in position order.
    pub events: Vec<RecordedEvent>,
    /// Where scanning continues when every event above is taken.
    pub scanned_before_after: u64,
}

pub(crate) enum GroupChange {
    Lease {
        consumer: String,
        limit: usize,
        now_micros: i64,
    },
    Ack {
        positions: Vec<u64>,
        now_micros: i64,
    },
    Nack {
        positions: Vec<u64>,
        now_micros: i64,
    },
}

/// One event a lease handed out; new events come with their content.
pub(crate) struct LeasedSlot {
    pub position: u64,
    pub retry_count: u32,
    pub delivery_count: u32,
    pub lease_expires_micros: i64,
    /// `None` for a redelivery: the service reads it by position.
    pub event: Option<RecordedEvent>,
}

pub(crate) enum GroupChangeOutcome {
    Leased {
        slots: Vec<LeasedSlot>,
        /// When the first lease still running runs out: a waiting lease
        /// wakes then, as that event becomes deliverable again.
        next_lease_expiry_micros: Option<i64>,
    },
    Acked(AckOutcome),
    Nacked(NackOutcome),
}

impl GroupWork {
    pub fn new(
        settings: GroupSettings,
        cursors: GroupCursors,
        active: impl IntoIterator<Item = TrackedEvent>,
    ) -> Self {
        GroupWork {
            settings,
            cursors,
            active: active
                .into_iter()
                .map(|tracked| (tracked.position, tracked))
                .collect(),
            changed: BTreeSet::new(),
            removed: BTreeSet::new(),
        }
    }

    /// The rows to write, in position order.
    pub fn changed_rows(&self) -> impl Iterator<Item = &TrackedEvent> {
        self.changed
            .iter()
            .filter_map(|position| self.active.get(position))
    }

    fn lease_timeout_micros(&self) -> i64 {
        i64::try_from(self.settings.lease_timeout.as_duration().as_micros()).unwrap_or(i64::MAX)
    }

    /// Counts a retry of `position` (nack or expiry): parked when out of
    /// retries, otherwise deliverable again.
    fn retry(&mut self, position: u64) -> TrackedState {
        let max_retries = self.settings.max_retries;
        let Some(tracked) = self.active.get_mut(&position) else {
            return TrackedState::Pending;
        };
        tracked.retry_count = tracked.retry_count.saturating_add(1);
        tracked.state = if tracked.retry_count > max_retries {
            TrackedState::Parked
        } else {
            TrackedState::Pending
        };
        tracked.consumer = None;
        tracked.lease_expires_micros = None;
        self.cursors.total_retries += 1;
        self.changed.insert(position);
        tracked.state
    }

    /// Every lease that ran out by `now_micros` counts a retry.
    fn expire_leases(&mut self, now_micros: i64) {
        let expired: Vec<u64> = self
            .active
            .values()
            .filter(|tracked| {
                tracked.state == TrackedState::Leased
                    && tracked
                        .lease_expires_micros
                        .is_none_or(|expires| expires <= now_micros)
            })
            .map(|tracked| tracked.position)
            .collect();
        for position in expired {
            self.retry(position);
        }
    }

    fn in_flight(&self) -> usize {
        self.active
            .values()
            .filter(|tracked| tracked.state == TrackedState::Leased)
            .count()
    }

    /// Moves the checkpoint past every settled position: up to the lowest
    /// event still to deliver at or above it, or to the scan cursor.
    /// Replayed events below it do not pull it back.
    fn advance_checkpoint(&mut self) {
        let old = self.cursors.settled_before;
        let lowest_unsettled = self
            .active
            .range(old..)
            .find(|(_, tracked)| tracked.state != TrackedState::Parked)
            .map(|(position, _)| *position);
        let settled_before = lowest_unsettled.unwrap_or(self.cursors.scanned_before);
        self.cursors.settled_before = old.max(settled_before.min(self.cursors.scanned_before));
    }

    fn lease(
        &mut self,
        consumer: &str,
        limit: usize,
        now_micros: i64,
        scanned: ScannedEvents,
    ) -> Vec<LeasedSlot> {
        let capacity = (self.settings.max_in_flight as usize).saturating_sub(self.in_flight());
        let wanted = limit.min(capacity);
        let lease_expires_micros = now_micros.saturating_add(self.lease_timeout_micros());
        let redeliveries: Vec<u64> = self
            .active
            .values()
            .filter(|tracked| tracked.state == TrackedState::Pending)
            .map(|tracked| tracked.position)
            .take(wanted)
            .collect();
        let mut slots = Vec::with_capacity(wanted);
        for position in redeliveries {
            slots.push(self.lease_one(position, consumer, lease_expires_micros, None));
        }
        let mut taken_all = true;
        for event in scanned.events {
            if slots.len() >= wanted {
                taken_all = false;
                self.cursors.scanned_before = event.position;
                break;
            }
            let position = event.position;
            self.active.insert(
                position,
                TrackedEvent {
                    position,
                    state: TrackedState::Pending,
                    retry_count: 0,
                    delivery_count: 0,
                    consumer: None,
                    lease_expires_micros: None,
                },
            );
            slots.push(self.lease_one(position, consumer, lease_expires_micros, Some(event)));
        }
        if taken_all {
            self.cursors.scanned_before = self
                .cursors
                .scanned_before
                .max(scanned.scanned_before_after);
        }
        slots
    }

    fn lease_one(
        &mut self,
        position: u64,
        consumer: &str,
        lease_expires_micros: i64,
        event: Option<RecordedEvent>,
    ) -> LeasedSlot {
        let tracked = self
            .active
            .get_mut(&position)
            .expect("leased positions are tracked");
        tracked.state = TrackedState::Leased;
        tracked.consumer = Some(consumer.to_string());
        tracked.lease_expires_micros = Some(lease_expires_micros);
        tracked.delivery_count = tracked.delivery_count.saturating_add(1);
        self.changed.insert(position);
        LeasedSlot {
            position,
            retry_count: tracked.retry_count,
            delivery_count: tracked.delivery_count,
            lease_expires_micros,
            event,
        }
    }

    fn ack(&mut self, positions: &[u64]) -> AckOutcome {
        let mut outcome = AckOutcome::default();
        for &position in positions {
            let in_flight = self
                .active
                .get(&position)
                .is_some_and(|tracked| tracked.state != TrackedState::Parked);
            if in_flight {
                self.active.remove(&position);
                self.changed.remove(&position);
                self.removed.insert(position);
                outcome.acked.push(position);
            } else {
                outcome.not_in_flight.push(position);
            }
        }
        outcome
    }

    fn nack(&mut self, positions: &[u64]) -> NackOutcome {
        let mut outcome = NackOutcome::default();
        for &position in positions {
            let leased = self
                .active
                .get(&position)
                .is_some_and(|tracked| tracked.state == TrackedState::Leased);
            if !leased {
                outcome.not_in_flight.push(position);
                continue;
            }
            match self.retry(position) {
                TrackedState::Parked => outcome.parked.push(position),
                _ => outcome.retrying.push(position),
            }
        }
        outcome
    }

    fn next_lease_expiry(&self) -> Option<i64> {
        self.active
            .values()
            .filter(|tracked| tracked.state == TrackedState::Leased)
            .filter_map(|tracked| tracked.lease_expires_micros)
            .min()
    }

    /// The checkpoint after this change; `None` before the first position.
    pub fn checkpoint(&self) -> Option<u64> {
        self.cursors.settled_before.checked_sub(1)
    }
}

/// Applies `change` to the group. `scanned` is read by the backend for a
/// lease only. Expired leases are processed first, whatever the change, so
/// every operation sees the same state.
pub(crate) fn apply_group_change(
    work: &mut GroupWork,
    change: GroupChange,
    scanned: Option<ScannedEvents>,
) -> GroupChangeOutcome {
    let now_micros = match &change {
        GroupChange::Lease { now_micros, .. }
        | GroupChange::Ack { now_micros, .. }
        | GroupChange::Nack { now_micros, .. } => *now_micros,
    };
    work.expire_leases(now_micros);
    let outcome = match change {
        GroupChange::Lease {
            consumer,
            limit,
            now_micros,
        } => {
            let scanned = scanned.unwrap_or(ScannedEvents {
                events: Vec::new(),
                scanned_before_after: work.cursors.scanned_before,
            });
            let slots = work.lease(&consumer, limit, now_micros, scanned);
            GroupChangeOutcome::Leased {
                slots,
                next_lease_expiry_micros: work.next_lease_expiry(),
            }
        }
        GroupChange::Ack { positions, .. } => GroupChangeOutcome::Acked(work.ack(&positions)),
        GroupChange::Nack { positions, .. } => GroupChangeOutcome::Nacked(work.nack(&positions)),
    };
    work.advance_checkpoint();
    if let GroupChangeOutcome::Acked(mut acked) = outcome {
        acked.checkpoint = work.checkpoint();
        return GroupChangeOutcome::Acked(acked);
    }
    outcome
}

/// A new group's cursors: both at where it starts (`head` is the tenant's
/// last committed position, read in the creating transaction).
pub(crate) fn starting_cursors(start_from: StartFrom, head: Option<u64>) -> GroupCursors {
    let first_position = match start_from {
        StartFrom::Start => 0,
        StartFrom::End => head.map_or(0, |head| head + 1),
        StartFrom::Position(position) => position,
    };
    GroupCursors {
        scanned_before: first_position,
        settled_before: first_position,
        total_retries: 0,
    }
}

/// How many new events a lease should read: no more than it can hand out.
pub(crate) fn scan_limit(limit: usize, settings: &GroupSettings) -> i64 {
    limit.min(settings.max_in_flight as usize) as i64
}

#[cfg(test)]
mod tests {
    use super::*;
    use plinth_core::HumanDuration;

    fn settings(max_retries: u32, max_in_flight: u32) -> GroupSettings {
        GroupSettings {
            max_retries,
            lease_timeout: HumanDuration::from_secs(10),
            max_in_flight,
        }
    }

    fn work(settings: GroupSettings) -> GroupWork {
        GroupWork::new(
            settings,
            GroupCursors {
                scanned_before: 0,
                settled_before: 0,
                total_retries: 0,
            },
            Vec::new(),
        )
    }

    fn scanned(positions: &[u64], scanned_before_after: u64) -> ScannedEvents {
        ScannedEvents {
            events: positions.iter().map(|position| event(*position)).collect(),
            scanned_before_after,
        }
    }

    fn event(position: u64) -> RecordedEvent {
        RecordedEvent {
            stream: "s".to_string(),
            revision: position,
            position,
            id: uuid::Uuid::nil(),
            event_type: "T".to_string(),
            schema_version: 1,
            data: serde_json::Value::Null,
            metadata: serde_json::Value::Null,
            recorded_at: time::OffsetDateTime::UNIX_EPOCH,
            hash: String::new(),
        }
    }

    fn lease(work: &mut GroupWork, limit: usize, now: i64, scan: ScannedEvents) -> Vec<u64> {
        let change = GroupChange::Lease {
            consumer: "c".to_string(),
            limit,
            now_micros: now,
        };
        match apply_group_change(work, change, Some(scan)) {
            GroupChangeOutcome::Leased { slots, .. } => {
                slots.iter().map(|slot| slot.position).collect()
            }
            _ => unreachable!(),
        }
    }

    #[test]
    fn in_flight_bounds_a_lease_and_the_scan_cursor_stops_at_the_first_untaken_event() {
        let mut work = work(settings(3, 2));
        assert_eq!(lease(&mut work, 5, 0, scanned(&[1, 4, 6], 9)), vec![1, 4]);
        assert_eq!(work.cursors.scanned_before, 6);
        assert_eq!(
            work.cursors.settled_before, 1,
            "position 0 was filtered out"
        );
        assert!(lease(&mut work, 5, 0, scanned(&[6], 9)).is_empty());
    }

    #[test]
    fn the_checkpoint_passes_acked_and_parked_events_but_not_leased_ones() {
        let mut work = work(settings(0, 10));
        assert_eq!(
            lease(&mut work, 3, 0, scanned(&[0, 1, 2], 3)),
            vec![0, 1, 2]
        );
        let acked = apply_group_change(
            &mut work,
            GroupChange::Ack {
                positions: vec![1],
                now_micros: 0,
            },
            None,
        );
        let GroupChangeOutcome::Acked(acked) = acked else {
            unreachable!()
        };
        assert_eq!(acked.checkpoint, None, "0 is still leased");
        let nacked = apply_group_change(
            &mut work,
            GroupChange::Nack {
                positions: vec![0, 7],
                now_micros: 0,
            },
            None,
        );
        let GroupChangeOutcome::Nacked(nacked) = nacked else {
            unreachable!()
        };
        assert_eq!((nacked.parked, nacked.not_in_flight), (vec![0], vec![7]));
        assert_eq!(work.checkpoint(), Some(1));
        // The lease of 2 expires: with no retries left it is parked too.
        lease(&mut work, 1, 20_000_000, scanned(&[], 3));
        assert_eq!(work.checkpoint(), Some(2));
        assert_eq!(work.cursors.total_retries, 2);
    }
}
