//! Consumer groups on PostgreSQL, where many nodes serve one group.
//!
//! Every change to a group runs in one transaction that first locks the
//! group's row (`FOR UPDATE`): changes to one group run one at a time
//! across nodes, so competing consumers always get disjoint leases, while
//! different groups proceed in parallel. A lease reads the tenant's head,
//! then the log up to it: positions are gapless and handed out in commit
//! order (see `crate::postgres`), so a snapshot that sees the head sees
//! every event below it and the scan cursor never skips one.

use std::sync::Arc;

use async_trait::async_trait;
use plinth_core::{Error, TenantId};
use plinth_engines::PostgresEngine;
use plinth_engines::postgres::PooledClient;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Row, Statement, Transaction};

use crate::migrations::{EVENT_COLUMNS, from_column, to_column};
use crate::model::RecordedEvent;
use crate::persistent::model::{GroupName, GroupSettings};
use crate::persistent::rules::{
    GroupChange, GroupChangeOutcome, GroupWork, ScannedEvents, TrackedEvent, TrackedState,
    apply_group_change, scan_limit, starting_cursors,
};
use crate::persistent::store::{
    GROUP_COLUMNS, GroupBackend, GroupCounts, GroupRecord, GroupRow, GroupScan, ParkedRow,
    TRACKED_COLUMNS, TrackedRow,
};
use crate::postgres::recorded_events;

pub(crate) struct PostgresGroupBackend {
    engine: Arc<PostgresEngine>,
}

const INSERT_GROUP: &str = "INSERT INTO plinth_events_groups
        (tenant, group_name, source_stream, filter_stream_prefix, filter_event_types, start_from,
         max_retries, lease_timeout_us, max_in_flight, scanned_before, settled_before,
         total_retries, created_at_us)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
     ON CONFLICT (tenant, group_name) DO NOTHING";

const UPDATE_GROUP: &str = "UPDATE plinth_events_groups SET
        max_retries = $3, lease_timeout_us = $4, max_in_flight = $5,
        scanned_before = $6, settled_before = $7, total_retries = $8
     WHERE tenant = $1 AND group_name = $2";

const UPSERT_TRACKED: &str = "INSERT INTO plinth_events_group_events
        (tenant, group_name, position, state, retry_count, delivery_count, consumer,
         lease_expires_us)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
     ON CONFLICT (tenant, group_name, position) DO UPDATE SET
        state = EXCLUDED.state,
        retry_count = EXCLUDED.retry_count,
        delivery_count = EXCLUDED.delivery_count,
        consumer = EXCLUDED.consumer,
        lease_expires_us = EXCLUDED.lease_expires_us";

const DELETE_TRACKED: &str = "DELETE FROM plinth_events_group_events
     WHERE tenant = $1 AND group_name = $2 AND position = $3";

const HEAD_POSITION: &str = "SELECT last_position FROM plinth_events_log_heads WHERE tenant = $1";

// Leases that ran out count as awaiting redelivery before any change
// processes them.
const COUNT_GROUP_EVENTS: &str = "SELECT
        count(*) FILTER (WHERE state = 'leased' AND lease_expires_us > $3),
        count(*) FILTER (WHERE state = 'pending' OR (state = 'leased' AND lease_expires_us <= $3)),
        count(*) FILTER (WHERE state = 'parked'),
        count(*) FILTER (WHERE state <> 'parked' AND retry_count > 0)
     FROM plinth_events_group_events WHERE tenant = $1 AND group_name = $2";

fn lock_group_sql() -> String {
    format!(
        "SELECT {GROUP_COLUMNS} FROM plinth_events_groups
         WHERE tenant = $1 AND group_name = $2 FOR UPDATE"
    )
}

fn active_rows_sql() -> String {
    format!(
        "SELECT {TRACKED_COLUMNS} FROM plinth_events_group_events
         WHERE tenant = $1 AND group_name = $2 AND state <> 'parked' ORDER BY position"
    )
}

fn scan_sql() -> String {
    format!(
        "SELECT {EVENT_COLUMNS} FROM plinth_events_events e
         JOIN plinth_events_streams s ON s.tenant = e.tenant AND s.stream = e.stream
         WHERE e.tenant = $1 AND e.position BETWEEN $2 AND $3
           AND e.revision >= s.visible_from_revision
           AND (s.max_age_us IS NULL OR e.recorded_at_us >= $4::bigint - s.max_age_us)
           AND ($5::text IS NULL OR e.stream = $5::text)
           AND ($6::text IS NULL OR left(e.stream, length($6::text)) = $6::text)
           AND (cardinality($7::text[]) = 0 OR e.event_type = ANY($7::text[]))
         ORDER BY e.position LIMIT $8"
    )
}

fn group_row(row: &Row, first: usize) -> GroupRow {
    GroupRow {
        source_stream: row.get(first),
        filter_stream_prefix: row.get(first + 1),
        filter_event_types: row.get(first + 2),
        start_from: row.get(first + 3),
        max_retries: row.get(first + 4),
        lease_timeout_micros: row.get(first + 5),
        max_in_flight: row.get(first + 6),
        scanned_before: row.get(first + 7),
        settled_before: row.get(first + 8),
        total_retries: row.get(first + 9),
        created_at_micros: row.get(first + 10),
    }
}

fn tracked_row(row: &Row) -> TrackedRow {
    TrackedRow {
        position: row.get(0),
        state: row.get(1),
        retry_count: row.get(2),
        delivery_count: row.get(3),
        consumer: row.get(4),
        lease_expires_micros: row.get(5),
    }
}

/// The statements of one group change, prepared before the transaction
/// borrows the connection.
struct ChangeStatements {
    lock_group: Statement,
    active_rows: Statement,
    head: Statement,
    scan: Statement,
    upsert_tracked: Statement,
    delete_tracked: Statement,
    update_group: Statement,
}

impl PostgresGroupBackend {
    pub fn new(engine: Arc<PostgresEngine>) -> Self {
        PostgresGroupBackend { engine }
    }

    async fn prepare(&self, client: &PooledClient, sql: &str) -> Result<Statement, Error> {
        self.engine
            .run("events_group_prepare", client.prepare_cached(sql))
            .await
    }

    async fn change_statements(&self, client: &PooledClient) -> Result<ChangeStatements, Error> {
        Ok(ChangeStatements {
            lock_group: self.prepare(client, &lock_group_sql()).await?,
            active_rows: self.prepare(client, &active_rows_sql()).await?,
            head: self.prepare(client, HEAD_POSITION).await?,
            scan: self.prepare(client, &scan_sql()).await?,
            upsert_tracked: self.prepare(client, UPSERT_TRACKED).await?,
            delete_tracked: self.prepare(client, DELETE_TRACKED).await?,
            update_group: self.prepare(client, UPDATE_GROUP).await?,
        })
    }

    async fn head_position(&self, tenant: &str) -> Result<Option<u64>, Error> {
        let row = self
            .engine
            .query_opt_cached("events_head_position", HEAD_POSITION, &[&tenant])
            .await?;
        row.map(|row| from_column(row.get(0), "position"))
            .transpose()
    }

    async fn load_active_rows(
        &self,
        transaction: &Transaction<'_>,
        statements: &ChangeStatements,
        tenant: &str,
        group: &str,
    ) -> Result<Vec<TrackedEvent>, Error> {
        let rows = self
            .engine
            .run(
                "events_group_active_rows",
                transaction.query(&statements.active_rows, &[&tenant, &group]),
            )
            .await?;
        let mut active = Vec::with_capacity(rows.len());
        for row in rows {
            active.push(tracked_row(&row).into_tracked()?);
        }
        Ok(active)
    }

    async fn scan_new_events(
        &self,
        transaction: &Transaction<'_>,
        statements: &ChangeStatements,
        tenant: &str,
        record: &GroupRecord,
        limit: i64,
        now_micros: i64,
    ) -> Result<ScannedEvents, Error> {
        let head_row = self
            .engine
            .run(
                "events_group_head",
                transaction.query_opt(&statements.head, &[&tenant]),
            )
            .await?;
        let head = head_row
            .map(|row| from_column(row.get(0), "position"))
            .transpose()?;
        let Some(head) = head.filter(|head| *head >= record.cursors.scanned_before) else {
            return Ok(ScannedEvents {
                events: Vec::new(),
                scanned_before_after: record.cursors.scanned_before,
            });
        };
        let scan = GroupScan::new(record, head, now_micros, limit)?;
        let parameters: [&(dyn ToSql + Sync); 8] = [
            &tenant,
            &scan.lowest_position,
            &scan.highest_position,
            &scan.now_micros,
            &scan.stream,
            &scan.stream_prefix,
            &scan.event_types,
            &scan.limit,
        ];
        let rows = self
            .engine
            .run(
                "events_group_scan",
                transaction.query(&statements.scan, &parameters),
            )
            .await?;
        let events = recorded_events(rows)?;
        let scanned_before_after = scan.scanned_before_after(&events, head);
        Ok(ScannedEvents {
            events,
            scanned_before_after,
        })
    }

    async fn write_work(
        &self,
        transaction: &Transaction<'_>,
        statements: &ChangeStatements,
        tenant: &str,
        group: &str,
        work: &GroupWork,
    ) -> Result<(), Error> {
        for tracked in work.changed_rows() {
            let position = to_column(tracked.position, "position")?;
            let retry_count = i64::from(tracked.retry_count);
            let delivery_count = i64::from(tracked.delivery_count);
            let state = tracked.state.as_column();
            let parameters: [&(dyn ToSql + Sync); 8] = [
                &tenant,
                &group,
                &position,
                &state,
                &retry_count,
                &delivery_count,
                &tracked.consumer,
                &tracked.lease_expires_micros,
            ];
            self.engine
                .run(
                    "events_group_upsert_event",
                    transaction.execute(&statements.upsert_tracked, &parameters),
                )
                .await?;
        }
        for position in &work.removed {
            let position = to_column(*position, "position")?;
            self.engine
                .run(
                    "events_group_delete_event",
                    transaction.execute(&statements.delete_tracked, &[&tenant, &group, &position]),
                )
                .await?;
        }
        Ok(())
    }

    async fn write_group(
        &self,
        transaction: &Transaction<'_>,
        statement: &Statement,
        tenant: &str,
        group: &str,
        record: &GroupRecord,
    ) -> Result<(), Error> {
        let row = GroupRow::from_record(record)?;
        let parameters: [&(dyn ToSql + Sync); 8] = [
            &tenant,
            &group,
            &row.max_retries,
            &row.lease_timeout_micros,
            &row.max_in_flight,
            &row.scanned_before,
            &row.settled_before,
            &row.total_retries,
        ];
        self.engine
            .run(
                "events_group_update",
                transaction.execute(statement, &parameters),
            )
            .await?;
        Ok(())
    }
}

#[async_trait]
impl GroupBackend for PostgresGroupBackend {
    async fn create_group(
        &self,
        tenant: &TenantId,
        group: &GroupName,
        record: GroupRecord,
    ) -> Result<GroupRecord, Error> {
        let mut record = record;
        let head = self.head_position(tenant.as_str()).await?;
        record.cursors = starting_cursors(record.start_from, head);
        let row = GroupRow::from_record(&record)?;
        let inserted = self
            .engine
            .execute_cached(
                "events_create_group",
                INSERT_GROUP,
                &[
                    &tenant.as_str(),
                    &group.as_str(),
                    &row.source_stream,
                    &row.filter_stream_prefix,
                    &row.filter_event_types,
                    &row.start_from,
                    &row.max_retries,
                    &row.lease_timeout_micros,
                    &row.max_in_flight,
                    &row.scanned_before,
                    &row.settled_before,
                    &row.total_retries,
                    &row.created_at_micros,
                ],
            )
            .await?;
        if inserted == 0 {
            return Err(crate::persistent::group_exists(group));
        }
        Ok(record)
    }

    async fn group_record(
        &self,
        tenant: &TenantId,
        group: &GroupName,
    ) -> Result<Option<GroupRecord>, Error> {
        let row = self
            .engine
            .query_opt_cached(
                "events_group_record",
                &format!(
                    "SELECT {GROUP_COLUMNS} FROM plinth_events_groups
                     WHERE tenant = $1 AND group_name = $2"
                ),
                &[&tenant.as_str(), &group.as_str()],
            )
            .await?;
        row.map(|row| group_row(&row, 0).into_record()).transpose()
    }

    async fn group_records(
        &self,
        tenant: &TenantId,
        after_name: Option<String>,
        limit: i64,
    ) -> Result<Vec<(GroupName, GroupRecord)>, Error> {
        let rows = self
            .engine
            .query_cached(
                "events_group_records",
                &format!(
                    "SELECT group_name, {GROUP_COLUMNS} FROM plinth_events_groups
                     WHERE tenant = $1 AND ($2::text IS NULL OR group_name > $2::text)
                     ORDER BY group_name LIMIT $3"
                ),
                &[&tenant.as_str(), &after_name, &limit],
            )
            .await?;
        let mut records = Vec::with_capacity(rows.len());
        for row in rows {
            let name: String = row.get(0);
            records.push((GroupName::parse(&name)?, group_row(&row, 1).into_record()?));
        }
        Ok(records)
    }

    async fn update_group_settings(
        &self,
        tenant: &TenantId,
        group: &GroupName,
        settings: GroupSettings,
    ) -> Result<Option<GroupRecord>, Error> {
        let lease_timeout_micros =
            i64::try_from(settings.lease_timeout.as_duration().as_micros()).unwrap_or(i64::MAX);
        let updated = self
            .engine
            .execute_cached(
                "events_update_group",
                "UPDATE plinth_events_groups
                 SET max_retries = $3, lease_timeout_us = $4, max_in_flight = $5
                 WHERE tenant = $1 AND group_name = $2",
                &[
                    &tenant.as_str(),
                    &group.as_str(),
                    &i64::from(settings.max_retries),
                    &lease_timeout_micros,
                    &i64::from(settings.max_in_flight),
                ],
            )
            .await?;
        if updated == 0 {
            return Ok(None);
        }
        self.group_record(tenant, group).await
    }

    async fn delete_group(&self, tenant: &TenantId, group: &GroupName) -> Result<bool, Error> {
        let tenant = tenant.as_str();
        let group = group.as_str();
        let mut client = self.engine.acquire().await?;
        let lock_group = self.prepare(&client, &lock_group_sql()).await?;
        let delete_tracked = self
            .prepare(
                &client,
                "DELETE FROM plinth_events_group_events WHERE tenant = $1 AND group_name = $2",
            )
            .await?;
        let delete_group = self
            .prepare(
                &client,
                "DELETE FROM plinth_events_groups WHERE tenant = $1 AND group_name = $2",
            )
            .await?;
        let transaction = self
            .engine
            .run("events_delete_group_begin", client.transaction())
            .await?;
        // Locked first, so a change in progress finishes before its rows go.
        let locked = self
            .engine
            .run(
                "events_delete_group_lock",
                transaction.query_opt(&lock_group, &[&tenant, &group]),
            )
            .await?;
        if locked.is_none() {
            return Ok(false);
        }
        for statement in [&delete_tracked, &delete_group] {
            self.engine
                .run(
                    "events_delete_group",
                    transaction.execute(statement, &[&tenant, &group]),
                )
                .await?;
        }
        self.engine
            .run("events_delete_group_commit", transaction.commit())
            .await?;
        Ok(true)
    }

    async fn change_group(
        &self,
        tenant: &TenantId,
        group: &GroupName,
        change: GroupChange,
    ) -> Result<Option<GroupChangeOutcome>, Error> {
        let tenant = tenant.as_str();
        let group = group.as_str();
        let mut client = self.engine.acquire().await?;
        let statements = self.change_statements(&client).await?;
        let transaction = self
            .engine
            .run("events_group_begin", client.transaction())
            .await?;
        let row = self
            .engine
            .run(
                "events_group_lock",
                transaction.query_opt(&statements.lock_group, &[&tenant, &group]),
            )
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let mut record = group_row(&row, 0).into_record()?;
        let active = self
            .load_active_rows(&transaction, &statements, tenant, group)
            .await?;
        let scanned = match &change {
            GroupChange::Lease {
                limit, now_micros, ..
            } => Some(
                self.scan_new_events(
                    &transaction,
                    &statements,
                    tenant,
                    &record,
                    scan_limit(*limit, &record.settings),
                    *now_micros,
                )
                .await?,
            ),
            _ => None,
        };
        let mut work = GroupWork::new(record.settings, record.cursors, active);
        let outcome = apply_group_change(&mut work, change, scanned);
        self.write_work(&transaction, &statements, tenant, group, &work)
            .await?;
        record.cursors = work.cursors;
        self.write_group(
            &transaction,
            &statements.update_group,
            tenant,
            group,
            &record,
        )
        .await?;
        self.engine
            .run("events_group_commit", transaction.commit())
            .await?;
        Ok(Some(outcome))
    }

    async fn group_counts(
        &self,
        tenant: &TenantId,
        group: &GroupName,
        now_micros: i64,
    ) -> Result<GroupCounts, Error> {
        let row = self
            .engine
            .query_one_cached(
                "events_group_counts",
                COUNT_GROUP_EVENTS,
                &[&tenant.as_str(), &group.as_str(), &now_micros],
            )
            .await?;
        GroupCounts::from_columns([row.get(0), row.get(1), row.get(2), row.get(3)])
    }

    async fn parked_rows(
        &self,
        tenant: &TenantId,
        group: &GroupName,
        after_position: Option<u64>,
        limit: i64,
    ) -> Result<Vec<ParkedRow>, Error> {
        let after = match after_position {
            None => -1,
            Some(position) => to_column(position, "position")?,
        };
        let rows = self
            .engine
            .query_cached(
                "events_parked_rows",
                "SELECT position, retry_count FROM plinth_events_group_events
                 WHERE tenant = $1 AND group_name = $2 AND state = 'parked' AND position > $3
                 ORDER BY position LIMIT $4",
                &[&tenant.as_str(), &group.as_str(), &after, &limit],
            )
            .await?;
        let mut parked = Vec::with_capacity(rows.len());
        for row in rows {
            parked.push(ParkedRow {
                position: from_column(row.get(0), "position")?,
                retry_count: u32::try_from(row.get::<_, i64>(1))
                    .map_err(|_| Error::internal("stored retry count is out of range"))?,
            });
        }
        Ok(parked)
    }

    async fn replay_parked(
        &self,
        tenant: &TenantId,
        group: &GroupName,
        positions: Vec<u64>,
        limit: i64,
    ) -> Result<u64, Error> {
        let mut position_columns = Vec::with_capacity(positions.len());
        for position in positions {
            position_columns.push(to_column(position, "position")?);
        }
        let replayed = self
            .engine
            .execute_cached(
                "events_replay_parked",
                // The group's row is locked first, as in every change.
                "WITH locked AS (
                     SELECT 1 FROM plinth_events_groups
                     WHERE tenant = $1 AND group_name = $2 FOR UPDATE
                 )
                 UPDATE plinth_events_group_events
                 SET state = $5, retry_count = 0, consumer = NULL, lease_expires_us = NULL
                 WHERE EXISTS (SELECT 1 FROM locked)
                   AND tenant = $1 AND group_name = $2 AND position IN (
                     SELECT position FROM plinth_events_group_events
                     WHERE tenant = $1 AND group_name = $2 AND state = 'parked'
                       AND (cardinality($3::bigint[]) = 0 OR position = ANY($3::bigint[]))
                     ORDER BY position LIMIT $4)",
                &[
                    &tenant.as_str(),
                    &group.as_str(),
                    &position_columns,
                    &limit,
                    &TrackedState::Pending.as_column(),
                ],
            )
            .await?;
        Ok(replayed)
    }

    async fn events_at_positions(
        &self,
        tenant: &TenantId,
        positions: Vec<u64>,
    ) -> Result<Vec<RecordedEvent>, Error> {
        let mut position_columns = Vec::with_capacity(positions.len());
        for position in positions {
            position_columns.push(to_column(position, "position")?);
        }
        let rows = self
            .engine
            .query_cached(
                "events_at_positions",
                &format!(
                    "SELECT {EVENT_COLUMNS} FROM plinth_events_events e
                     WHERE e.tenant = $1 AND e.position = ANY($2::bigint[])
                     ORDER BY e.position"
                ),
                &[&tenant.as_str(), &position_columns],
            )
            .await?;
        recorded_events(rows)
    }
}
