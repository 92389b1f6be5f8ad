//! Consumer groups on the embedded SQLite engine. Every change to a group
//! is one job on SQLite's single writer thread, so changes to one group
//! (and appends) are serialised without any lock of ours, and a lease's
//! scan of the log sees exactly what is committed before it.

use std::sync::Arc;

use async_trait::async_trait;
use plinth_core::{Error, TenantId};
use plinth_engines::{SqliteEngine, sqlite_failure};
use rusqlite::{Connection, OptionalExtension, Row, params};

use crate::migrations::{EVENT_COLUMNS, from_column, to_column};
use crate::model::RecordedEvent;
use crate::persistent::model::{GroupName, GroupSettings};
use crate::persistent::rules::{
    GroupChange, GroupChangeOutcome, GroupWork, ScannedEvents, TrackedState, apply_group_change,
    scan_limit, starting_cursors,
};
use crate::persistent::store::{
    GROUP_COLUMNS, GroupBackend, GroupCounts, GroupRecord, GroupRow, GroupScan, ParkedRow,
    TRACKED_COLUMNS, TrackedRow,
};
use crate::sqlite::collect_events;

pub(crate) struct SqliteGroupBackend {
    engine: Arc<SqliteEngine>,
}

impl SqliteGroupBackend {
    pub fn new(engine: Arc<SqliteEngine>) -> Self {
        SqliteGroupBackend { engine }
    }
}

const UPSERT_GROUP: &str = "INSERT INTO plinth_events_groups
        (tenant, group_name, source_stream, filter_stream_prefix, filter_event_types, start_from,
         max_retries, lease_timeout_us, max_in_flight, scanned_before, settled_before,
         total_retries, created_at_us)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)
     ON CONFLICT (tenant, group_name) DO UPDATE SET
        max_retries = excluded.max_retries,
        lease_timeout_us = excluded.lease_timeout_us,
        max_in_flight = excluded.max_in_flight,
        scanned_before = excluded.scanned_before,
        settled_before = excluded.settled_before,
        total_retries = excluded.total_retries";

const UPSERT_TRACKED: &str = "INSERT INTO plinth_events_group_events
        (tenant, group_name, position, state, retry_count, delivery_count, consumer,
         lease_expires_us)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
     ON CONFLICT (tenant, group_name, position) DO UPDATE SET
        state = excluded.state,
        retry_count = excluded.retry_count,
        delivery_count = excluded.delivery_count,
        consumer = excluded.consumer,
        lease_expires_us = excluded.lease_expires_us";

fn scan_sql() -> String {
    format!(
        "SELECT {EVENT_COLUMNS} FROM plinth_events_events e
         JOIN plinth_events_streams s ON s.tenant = e.tenant AND s.stream = e.stream
         WHERE e.tenant = ?1 AND e.position BETWEEN ?2 AND ?3
           AND e.revision >= s.visible_from_revision
           AND (s.max_age_us IS NULL OR e.recorded_at_us >= ?4 - s.max_age_us)
           AND (?5 IS NULL OR e.stream = ?5)
           AND (?6 IS NULL OR substr(e.stream, 1, length(?6)) = ?6)
           AND (json_array_length(?7) = 0 OR e.event_type IN (SELECT value FROM json_each(?7)))
         ORDER BY e.position LIMIT ?8"
    )
}

// Leases that ran out count as awaiting redelivery before any change
// processes them.
const COUNT_GROUP_EVENTS: &str = "SELECT
        COALESCE(SUM(state = 'leased' AND lease_expires_us > ?3), 0),
        COALESCE(SUM(state = 'pending' OR (state = 'leased' AND lease_expires_us <= ?3)), 0),
        COALESCE(SUM(state = 'parked'), 0),
        COALESCE(SUM(state <> 'parked' AND retry_count > 0), 0)
     FROM plinth_events_group_events WHERE tenant = ?1 AND group_name = ?2";

fn group_row(row: &Row<'_>) -> rusqlite::Result<GroupRow> {
    Ok(GroupRow {
        source_stream: row.get(0)?,
        filter_stream_prefix: row.get(1)?,
        filter_event_types: row.get(2)?,
        start_from: row.get(3)?,
        max_retries: row.get(4)?,
        lease_timeout_micros: row.get(5)?,
        max_in_flight: row.get(6)?,
        scanned_before: row.get(7)?,
        settled_before: row.get(8)?,
        total_retries: row.get(9)?,
        created_at_micros: row.get(10)?,
    })
}

fn tracked_row(row: &Row<'_>) -> rusqlite::Result<TrackedRow> {
    Ok(TrackedRow {
        position: row.get(0)?,
        state: row.get(1)?,
        retry_count: row.get(2)?,
        delivery_count: row.get(3)?,
        consumer: row.get(4)?,
        lease_expires_micros: row.get(5)?,
    })
}

fn load_group(
    connection: &Connection,
    tenant: &str,
    group: &str,
) -> Result<Option<GroupRecord>, Error> {
    let row = connection
        .prepare_cached(&format!(
            "SELECT {GROUP_COLUMNS} FROM plinth_events_groups WHERE tenant = ?1 AND group_name = ?2"
        ))
        .map_err(sqlite_failure)?
        .query_row(params![tenant, group], group_row)
        .optional()
        .map_err(sqlite_failure)?;
    row.map(GroupRow::into_record).transpose()
}

fn write_group(
    connection: &Connection,
    tenant: &str,
    group: &str,
    record: &GroupRecord,
) -> Result<(), Error> {
    let row = GroupRow::from_record(record)?;
    connection
        .prepare_cached(UPSERT_GROUP)
        .map_err(sqlite_failure)?
        .execute(params![
            tenant,
            group,
            row.source_stream,
            row.filter_stream_prefix,
            row.filter_event_types,
            row.start_from,
            row.max_retries,
            row.lease_timeout_micros,
            row.max_in_flight,
            row.scanned_before,
            row.settled_before,
            row.total_retries,
            row.created_at_micros,
        ])
        .map_err(sqlite_failure)?;
    Ok(())
}

fn head_position(connection: &Connection, tenant: &str) -> Result<Option<u64>, Error> {
    let last_position = connection
        .prepare_cached("SELECT last_position FROM plinth_events_log_heads WHERE tenant = ?1")
        .map_err(sqlite_failure)?
        .query_row(params![tenant], |row| row.get::<_, i64>(0))
        .optional()
        .map_err(sqlite_failure)?;
    last_position
        .map(|position| from_column(position, "position"))
        .transpose()
}

fn load_active_rows(
    connection: &Connection,
    tenant: &str,
    group: &str,
) -> Result<Vec<crate::persistent::rules::TrackedEvent>, Error> {
    let mut statement = connection
        .prepare_cached(&format!(
            "SELECT {TRACKED_COLUMNS} FROM plinth_events_group_events
             WHERE tenant = ?1 AND group_name = ?2 AND state <> 'parked' ORDER BY position"
        ))
        .map_err(sqlite_failure)?;
    let rows = statement
        .query_map(params![tenant, group], tracked_row)
        .map_err(sqlite_failure)?;
    let mut active = Vec::new();
    for row in rows {
        active.push(row.map_err(sqlite_failure)?.into_tracked()?);
    }
    Ok(active)
}

fn scan_new_events(
    connection: &Connection,
    tenant: &str,
    record: &GroupRecord,
    limit: i64,
    now_micros: i64,
) -> Result<ScannedEvents, Error> {
    let head = head_position(connection, tenant)?;
    let Some(head) = head.filter(|head| *head >= record.cursors.scanned_before) else {
        return Ok(ScannedEvents {
            events: Vec::new(),
            scanned_before_after: record.cursors.scanned_before,
        });
    };
    let scan = GroupScan::new(record, head, now_micros, limit)?;
    let event_types = serde_json::to_string(&scan.event_types)
        .map_err(|error| Error::internal(format!("encoding event types: {error}")))?;
    let mut statement = connection
        .prepare_cached(&scan_sql())
        .map_err(sqlite_failure)?;
    let events = collect_events(
        &mut statement,
        params![
            tenant,
            scan.lowest_position,
            scan.highest_position,
            scan.now_micros,
            scan.stream,
            scan.stream_prefix,
            event_types,
            scan.limit,
        ],
    )?;
    let scanned_before_after = scan.scanned_before_after(&events, head);
    Ok(ScannedEvents {
        events,
        scanned_before_after,
    })
}

fn write_work(
    connection: &Connection,
    tenant: &str,
    group: &str,
    work: &GroupWork,
) -> Result<(), Error> {
    let mut upsert = connection
        .prepare_cached(UPSERT_TRACKED)
        .map_err(sqlite_failure)?;
    for tracked in work.changed_rows() {
        upsert
            .execute(params![
                tenant,
                group,
                to_column(tracked.position, "position")?,
                tracked.state.as_column(),
                tracked.retry_count,
                tracked.delivery_count,
                tracked.consumer,
                tracked.lease_expires_micros,
            ])
            .map_err(sqlite_failure)?;
    }
    let mut delete = connection
        .prepare_cached(
            "DELETE FROM plinth_events_group_events
             WHERE tenant = ?1 AND group_name = ?2 AND position = ?3",
        )
        .map_err(sqlite_failure)?;
    for position in &work.removed {
        delete
            .execute(params![tenant, group, to_column(*position, "position")?])
            .map_err(sqlite_failure)?;
    }
    Ok(())
}

fn change_group_in_job(
    connection: &Connection,
    tenant: &str,
    group: &str,
    change: GroupChange,
) -> Result<Option<GroupChangeOutcome>, Error> {
    let Some(mut record) = load_group(connection, tenant, group)? else {
        return Ok(None);
    };
    let active = load_active_rows(connection, tenant, group)?;
    let scanned = match &change {
        GroupChange::Lease {
            limit, now_micros, ..
        } => Some(scan_new_events(
            connection,
            tenant,
            &record,
            scan_limit(*limit, &record.settings),
            *now_micros,
        )?),
        _ => None,
    };
    let mut work = GroupWork::new(record.settings, record.cursors, active);
    let outcome = apply_group_change(&mut work, change, scanned);
    write_work(connection, tenant, group, &work)?;
    record.cursors = work.cursors;
    write_group(connection, tenant, group, &record)?;
    Ok(Some(outcome))
}

#[async_trait]
impl GroupBackend for SqliteGroupBackend {
    async fn create_group(
        &self,
        tenant: &TenantId,
        group: &GroupName,
        record: GroupRecord,
    ) -> Result<GroupRecord, Error> {
        let tenant = tenant.as_str().to_string();
        let group = group.clone();
        self.engine
            .write("events_create_group", move |connection| {
                if load_group(connection, &tenant, group.as_str())?.is_some() {
                    return Err(crate::persistent::group_exists(&group));
                }
                let mut record = record;
                let head = head_position(connection, &tenant)?;
                record.cursors = starting_cursors(record.start_from, head);
                write_group(connection, &tenant, group.as_str(), &record)?;
                Ok(record)
            })
            .await
    }

    async fn group_record(
        &self,
        tenant: &TenantId,
        group: &GroupName,
    ) -> Result<Option<GroupRecord>, Error> {
        let tenant = tenant.as_str().to_string();
        let group = group.as_str().to_string();
        self.engine
            .read("events_group_record", move |connection| {
                load_group(connection, &tenant, &group)
            })
            .await
    }

    async fn group_records(
        &self,
        tenant: &TenantId,
        after_name: Option<String>,
        limit: i64,
    ) -> Result<Vec<(GroupName, GroupRecord)>, Error> {
        let tenant = tenant.as_str().to_string();
        self.engine
            .read("events_group_records", move |connection| {
                let mut statement = connection
                    .prepare_cached(&format!(
                        "SELECT group_name, {GROUP_COLUMNS} FROM plinth_events_groups
                         WHERE tenant = ?1 AND (?2 IS NULL OR group_name > ?2)
                         ORDER BY group_name LIMIT ?3"
                    ))
                    .map_err(sqlite_failure)?;
                let rows = statement
                    .query_map(params![tenant, after_name, limit], |row| {
                        let name: String = row.get(0)?;
                        let columns = GroupRow {
                            source_stream: row.get(1)?,
                            filter_stream_prefix: row.get(2)?,
                            filter_event_types: row.get(3)?,
                            start_from: row.get(4)?,
                            max_retries: row.get(5)?,
                            lease_timeout_micros: row.get(6)?,
                            max_in_flight: row.get(7)?,
                            scanned_before: row.get(8)?,
                            settled_before: row.get(9)?,
                            total_retries: row.get(10)?,
                            created_at_micros: row.get(11)?,
                        };
                        Ok((name, columns))
                    })
                    .map_err(sqlite_failure)?;
                let mut records = Vec::new();
                for row in rows {
                    let (name, columns) = row.map_err(sqlite_failure)?;
                    records.push((GroupName::parse(&name)?, columns.into_record()?));
                }
                Ok(records)
            })
            .await
    }

    async fn update_group_settings(
        &self,
        tenant: &TenantId,
        group: &GroupName,
        settings: GroupSettings,
    ) -> Result<Option<GroupRecord>, Error> {
        let tenant = tenant.as_str().to_string();
        let group = group.as_str().to_string();
        self.engine
            .write("events_update_group", move |connection| {
                let Some(mut record) = load_group(connection, &tenant, &group)? else {
                    return Ok(None);
                };
                record.settings = settings;
                write_group(connection, &tenant, &group, &record)?;
                Ok(Some(record))
            })
            .await
    }

    async fn delete_group(&self, tenant: &TenantId, group: &GroupName) -> Result<bool, Error> {
        let tenant = tenant.as_str().to_string();
        let group = group.as_str().to_string();
        self.engine
            .write("events_delete_group", move |connection| {
                connection
                    .prepare_cached(
                        "DELETE FROM plinth_events_group_events WHERE tenant = ?1 AND group_name = ?2",
                    )
                    .map_err(sqlite_failure)?
                    .execute(params![tenant, group])
                    .map_err(sqlite_failure)?;
                let deleted = connection
                    .prepare_cached(
                        "DELETE FROM plinth_events_groups WHERE tenant = ?1 AND group_name = ?2",
                    )
                    .map_err(sqlite_failure)?
                    .execute(params![tenant, group])
                    .map_err(sqlite_failure)?;
                Ok(deleted > 0)
            })
            .await
    }

    async fn change_group(
        &self,
        tenant: &TenantId,
        group: &GroupName,
        change: GroupChange,
    ) -> Result<Option<GroupChangeOutcome>, Error> {
        let tenant = tenant.as_str().to_string();
        let group = group.as_str().to_string();
        self.engine
            .write("events_change_group", move |connection| {
                change_group_in_job(connection, &tenant, &group, change)
            })
            .await
    }

    async fn group_counts(
        &self,
        tenant: &TenantId,
        group: &GroupName,
        now_micros: i64,
    ) -> Result<GroupCounts, Error> {
        let tenant = tenant.as_str().to_string();
        let group = group.as_str().to_string();
        self.engine
            .read("events_group_counts", move |connection| {
                let counts = connection
                    .prepare_cached(COUNT_GROUP_EVENTS)
                    .map_err(sqlite_failure)?
                    .query_row(params![tenant, group, now_micros], |row| {
                        Ok([
                            row.get::<_, i64>(0)?,
                            row.get::<_, i64>(1)?,
                            row.get::<_, i64>(2)?,
                            row.get::<_, i64>(3)?,
                        ])
                    })
                    .map_err(sqlite_failure)?;
                GroupCounts::from_columns(counts)
            })
            .await
    }

    async fn parked_rows(
        &self,
        tenant: &TenantId,
        group: &GroupName,
        after_position: Option<u64>,
        limit: i64,
    ) -> Result<Vec<ParkedRow>, Error> {
        let tenant = tenant.as_str().to_string();
        let group = group.as_str().to_string();
        let after = match after_position {
            None => -1,
            Some(position) => to_column(position, "position")?,
        };
        self.engine
            .read("events_parked_rows", move |connection| {
                let mut statement = connection
                    .prepare_cached(
                        "SELECT position, retry_count FROM plinth_events_group_events
                         WHERE tenant = ?1 AND group_name = ?2 AND state = 'parked'
                           AND position > ?3
                         ORDER BY position LIMIT ?4",
                    )
                    .map_err(sqlite_failure)?;
                let rows = statement
                    .query_map(params![tenant, group, after, limit], |row| {
                        Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?))
                    })
                    .map_err(sqlite_failure)?;
                let mut parked = Vec::new();
                for row in rows {
                    let (position, retry_count) = row.map_err(sqlite_failure)?;
                    parked.push(ParkedRow {
                        position: from_column(position, "position")?,
                        retry_count: u32::try_from(retry_count)
                            .map_err(|_| Error::internal("stored retry count is out of range"))?,
                    });
                }
                Ok(parked)
            })
            .await
    }

    async fn replay_parked(
        &self,
        tenant: &TenantId,
        group: &GroupName,
        positions: Vec<u64>,
        limit: i64,
    ) -> Result<u64, Error> {
        let tenant = tenant.as_str().to_string();
        let group = group.as_str().to_string();
        let positions = serde_json::to_string(&positions)
            .map_err(|error| Error::internal(format!("encoding positions: {error}")))?;
        self.engine
            .write("events_replay_parked", move |connection| {
                let replayed = connection
                    .prepare_cached(
                        "UPDATE plinth_events_group_events
                         SET state = ?5, retry_count = 0, consumer = NULL, lease_expires_us = NULL
                         WHERE tenant = ?1 AND group_name = ?2 AND position IN (
                             SELECT position FROM plinth_events_group_events
                             WHERE tenant = ?1 AND group_name = ?2 AND state = 'parked'
                               AND (json_array_length(?3) = 0
                                    OR position IN (SELECT value FROM json_each(?3)))
                             ORDER BY position LIMIT ?4)",
                    )
                    .map_err(sqlite_failure)?
                    .execute(params![
                        tenant,
                        group,
                        positions,
                        limit,
                        TrackedState::Pending.as_column()
                    ])
                    .map_err(sqlite_failure)?;
                Ok(replayed as u64)
            })
            .await
    }

    async fn events_at_positions(
        &self,
        tenant: &TenantId,
        positions: Vec<u64>,
    ) -> Result<Vec<RecordedEvent>, Error> {
        let tenant = tenant.as_str().to_string();
        let positions = serde_json::to_string(&positions)
            .map_err(|error| Error::internal(format!("encoding positions: {error}")))?;
        self.engine
            .read("events_at_positions", move |connection| {
                let mut statement = connection
                    .prepare_cached(&format!(
                        "SELECT {EVENT_COLUMNS} FROM plinth_events_events e
                         WHERE e.tenant = ?1 AND e.position IN (SELECT value FROM json_each(?2))
                         ORDER BY e.position"
                    ))
                    .map_err(sqlite_failure)?;
                collect_events(&mut statement, params![tenant, positions])
            })
            .await
    }
}
