//! The event store on the embedded SQLite engine.
//!
//! Every write is a job on SQLite's single writer thread, so appends are
//! serialised without any lock of ours: a job reads the stream's record,
//! decides (`rules.rs`), advances the tenant's log head (an explicit
//! counter row, never the rowid) and inserts, inside its own savepoint of
//! the writer's group-commit transaction. Positions are therefore handed
//! out in commit order, and a job that fails rolls back its savepoint,
//! counter included, so no position is ever lost. Readers use the read
//! pool and see whole commits only.

use std::sync::Arc;

use async_trait::async_trait;
use plinth_core::{Error, TenantId};
use plinth_engines::{SqliteEngine, sqlite_failure};
use rusqlite::{Connection, OptionalExtension, Row, params};
use uuid::Uuid;

use crate::chain::hash_from_bytes;
use crate::migrations::{
    EVENT_COLUMNS, EventRow, STREAM_COLUMNS, StreamRow, from_column, micros_to_time, to_column,
};
use crate::model::{
    AppendError, AppendResult, AppendedEvent, ExpectedVersion, RecordedEvent, Snapshot, StreamName,
};
use crate::rules::{
    AppendPlan, ExistingEvent, ImportPlan, ScavengeCandidate, StreamChange, StreamRecord,
    apply_stream_change, check_snapshot_write, plan_append, plan_import, removable_prefix,
    snapshot_is_hidden,
};
use crate::store::{
    EventBackend, ImportOutcome, ImportedEvent, LogEventsQuery, ScavengeBatch, SnapshotWrite,
    StreamEventsQuery, StreamKey,
};
use crate::validation::PreparedEvent;

pub(crate) struct SqliteEventBackend {
    engine: Arc<SqliteEngine>,
}

impl SqliteEventBackend {
    pub fn new(engine: Arc<SqliteEngine>) -> Self {
        SqliteEventBackend { engine }
    }
}

fn select_stream_sql() -> String {
    format!("SELECT {STREAM_COLUMNS} FROM plinth_events_streams WHERE tenant = ?1 AND stream = ?2")
}

const UPSERT_STREAM: &str = "INSERT INTO plinth_events_streams
        (tenant, stream, last_revision, last_position, last_hash, truncate_before, max_count,
         max_age_us, soft_deleted, tombstoned, scavenged_before_revision, scavenged_anchor_hash,
         visible_from_revision)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)
     ON CONFLICT (tenant, stream) DO UPDATE SET
        last_revision = excluded.last_revision,
        last_position = excluded.last_position,
        last_hash = excluded.last_hash,
        truncate_before = excluded.truncate_before,
        max_count = excluded.max_count,
        max_age_us = excluded.max_age_us,
        soft_deleted = excluded.soft_deleted,
        tombstoned = excluded.tombstoned,
        scavenged_before_revision = excluded.scavenged_before_revision,
        scavenged_anchor_hash = excluded.scavenged_anchor_hash,
        visible_from_revision = excluded.visible_from_revision";

const INSERT_EVENT: &str = "INSERT INTO plinth_events_events
        (tenant, position, stream, revision, event_id, event_type, schema_version, data, metadata,
         recorded_at_us, hash)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)";

fn stream_row(row: &Row<'_>) -> rusqlite::Result<StreamRow> {
    Ok(StreamRow {
        last_revision: row.get(0)?,
        last_position: row.get(1)?,
        last_hash: row.get(2)?,
        truncate_before: row.get(3)?,
        max_count: row.get(4)?,
        max_age_micros: row.get(5)?,
        soft_deleted: row.get(6)?,
        tombstoned: row.get(7)?,
        scavenged_before_revision: row.get(8)?,
        scavenged_anchor_hash: row.get(9)?,
        visible_from_revision: 0,
    })
}

fn event_row(row: &Row<'_>) -> rusqlite::Result<EventRow> {
    Ok(EventRow {
        stream: row.get(0)?,
        revision: row.get(1)?,
        position: row.get(2)?,
        event_id: row.get(3)?,
        event_type: row.get(4)?,
        schema_version: row.get(5)?,
        data: row.get(6)?,
        metadata: row.get(7)?,
        recorded_at_micros: row.get(8)?,
        hash: row.get(9)?,
    })
}

fn load_stream_record(
    connection: &Connection,
    tenant: &str,
    stream: &str,
) -> Result<Option<StreamRecord>, Error> {
    let row = connection
        .prepare_cached(&select_stream_sql())
        .map_err(sqlite_failure)?
        .query_row(params![tenant, stream], stream_row)
        .optional()
        .map_err(sqlite_failure)?;
    row.map(StreamRow::into_record).transpose()
}

fn write_stream_record(
    connection: &Connection,
    tenant: &str,
    stream: &str,
    record: &StreamRecord,
) -> Result<(), Error> {
    let row = StreamRow::from_record(record)?;
    connection
        .prepare_cached(UPSERT_STREAM)
        .map_err(sqlite_failure)?
        .execute(params![
            tenant,
            stream,
            row.last_revision,
            row.last_position,
            row.last_hash,
            row.truncate_before,
            row.max_count,
            row.max_age_micros,
            row.soft_deleted,
            row.tombstoned,
            row.scavenged_before_revision,
            row.scavenged_anchor_hash,
            row.visible_from_revision,
        ])
        .map_err(sqlite_failure)?;
    Ok(())
}

pub(crate) fn collect_events(
    statement: &mut rusqlite::CachedStatement<'_>,
    parameters: impl rusqlite::Params,
) -> Result<Vec<RecordedEvent>, Error> {
    let rows = statement
        .query_map(parameters, event_row)
        .map_err(sqlite_failure)?;
    let mut events = Vec::new();
    for row in rows {
        events.push(row.map_err(sqlite_failure)?.into_recorded()?);
    }
    Ok(events)
}

/// The stored events of `stream` whose ids the append repeats.
fn existing_events_with_ids(
    connection: &Connection,
    tenant: &str,
    stream: &str,
    events: &[PreparedEvent],
) -> Result<Vec<ExistingEvent>, Error> {
    let mut statement = connection
        .prepare_cached(
            "SELECT revision, position FROM plinth_events_events
             WHERE tenant = ?1 AND stream = ?2 AND event_id = ?3",
        )
        .map_err(sqlite_failure)?;
    let mut existing = Vec::new();
    for event in events.iter().filter(|event| event.id_given_by_caller) {
        let found = statement
            .query_row(params![tenant, stream, event.id.to_string()], |row| {
                Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?))
            })
            .optional()
            .map_err(sqlite_failure)?;
        if let Some((revision, position)) = found {
            existing.push(ExistingEvent {
                id: event.id,
                revision: from_column(revision, "revision")?,
                position: from_column(position, "position")?,
            });
        }
    }
    Ok(existing)
}

/// Advances the tenant's log head by `count`. Returns the first position
/// taken and the recorded time to use: `recorded_at` raised to the head's
/// last recorded time, so times never go backwards along the log.
fn advance_log_head(
    connection: &Connection,
    tenant: &str,
    count: i64,
    recorded_at_micros: i64,
) -> Result<(i64, i64), Error> {
    let head = connection
        .prepare_cached(
            "SELECT last_position, last_recorded_us FROM plinth_events_log_heads WHERE tenant = ?1",
        )
        .map_err(sqlite_failure)?
        .query_row(params![tenant], |row| {
            Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?))
        })
        .optional()
        .map_err(sqlite_failure)?;
    let (last_position, last_recorded) = head.unwrap_or((-1, i64::MIN));
    let recorded_at = recorded_at_micros.max(last_recorded);
    connection
        .prepare_cached(
            "INSERT INTO plinth_events_log_heads (tenant, last_position, last_recorded_us)
             VALUES (?1, ?2, ?3)
             ON CONFLICT (tenant) DO UPDATE SET
                last_position = excluded.last_position,
                last_recorded_us = excluded.last_recorded_us",
        )
        .map_err(sqlite_failure)?
        .execute(params![tenant, last_position + count, recorded_at])
        .map_err(sqlite_failure)?;
    Ok((last_position + 1, recorded_at))
}

struct EventInsert<'a> {
    tenant: &'a str,
    stream: &'a str,
    position: i64,
    revision: i64,
    event: &'a PreparedEvent,
    recorded_at_micros: i64,
    hash: &'a [u8; 32],
}

fn insert_event(connection: &Connection, insert: EventInsert<'_>) -> Result<(), Error> {
    connection
        .prepare_cached(INSERT_EVENT)
        .map_err(sqlite_failure)?
        .execute(params![
            insert.tenant,
            insert.position,
            insert.stream,
            insert.revision,
            insert.event.id.to_string(),
            insert.event.event_type,
            insert.event.schema_version,
            insert.event.data,
            insert.event.metadata,
            insert.recorded_at_micros,
            insert.hash.as_slice(),
        ])
        .map_err(sqlite_failure)?;
    Ok(())
}

fn append_in_job(
    connection: &Connection,
    tenant: &str,
    stream: &StreamName,
    expected_version: ExpectedVersion,
    events: &[PreparedEvent],
    now_micros: i64,
) -> Result<Result<AppendResult, AppendError>, Error> {
    let record = load_stream_record(connection, tenant, stream.as_str())?
        .unwrap_or_else(StreamRecord::absent);
    let existing = existing_events_with_ids(connection, tenant, stream.as_str(), events)?;
    let planned = match plan_append(stream, expected_version, &record, events, &existing) {
        Err(refused) => return Ok(Err(refused)),
        Ok(AppendPlan::Replay(result)) => return Ok(Ok(result)),
        Ok(AppendPlan::Write(planned)) => planned,
    };
    let (first_position, recorded_at) =
        advance_log_head(connection, tenant, events.len() as i64, now_micros)?;
    let first_revision = to_column(planned.first_revision, "revision")?;
    let mut appended = Vec::with_capacity(events.len());
    for (offset, (event, hash)) in events.iter().zip(&planned.hashes).enumerate() {
        let position = first_position + offset as i64;
        let revision = first_revision + offset as i64;
        insert_event(
            connection,
            EventInsert {
                tenant,
                stream: stream.as_str(),
                position,
                revision,
                event,
                recorded_at_micros: recorded_at,
                hash,
            },
        )?;
        appended.push(AppendedEvent {
            id: event.id,
            revision: from_column(revision, "revision")?,
            position: from_column(position, "position")?,
        });
    }
    let mut record_after = planned.record_after;
    record_after.last_position = appended.last().map(|event| event.position);
    write_stream_record(connection, tenant, stream.as_str(), &record_after)?;
    Ok(Ok(AppendResult {
        stream_version: record_after.last_revision.unwrap_or_default(),
        events: appended,
        replayed: false,
    }))
}

fn read_log_sql(descending: bool) -> String {
    let order = if descending { "DESC" } else { "ASC" };
    format!(
        "SELECT {EVENT_COLUMNS} FROM plinth_events_events e
         JOIN plinth_events_streams s ON s.tenant = e.tenant AND s.stream = e.stream
         WHERE e.tenant = ?1 AND e.position BETWEEN ?2 AND ?3
           AND e.recorded_at_us <= ?4
           AND e.revision >= s.visible_from_revision
           AND (s.max_age_us IS NULL OR e.recorded_at_us >= ?5 - s.max_age_us)
           AND (?6 IS NULL OR substr(e.stream, 1, length(?6)) = ?6)
           AND (json_array_length(?7) = 0 OR e.event_type IN (SELECT value FROM json_each(?7)))
         ORDER BY e.position {order} LIMIT ?8"
    )
}

fn read_stream_sql(descending: bool) -> String {
    let order = if descending { "DESC" } else { "ASC" };
    format!(
        "SELECT {EVENT_COLUMNS} FROM plinth_events_events e
         WHERE e.tenant = ?1 AND e.stream = ?2 AND e.revision BETWEEN ?3 AND ?4
           AND e.position <= ?5 AND e.recorded_at_us BETWEEN ?6 AND ?7
         ORDER BY e.revision {order} LIMIT ?8"
    )
}

fn save_snapshot_in_job(
    connection: &Connection,
    tenant: &str,
    stream: &StreamName,
    snapshot: &SnapshotWrite,
) -> Result<(), Error> {
    let record = load_stream_record(connection, tenant, stream.as_str())?;
    check_snapshot_write(stream, record.as_ref(), snapshot.revision)?;
    connection
        .prepare_cached(
            "INSERT INTO plinth_events_snapshots
                (tenant, stream, revision, schema_version, data, recorded_at_us)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (tenant, stream) DO UPDATE SET
                revision = excluded.revision,
                schema_version = excluded.schema_version,
                data = excluded.data,
                recorded_at_us = excluded.recorded_at_us",
        )
        .map_err(sqlite_failure)?
        .execute(params![
            tenant,
            stream.as_str(),
            to_column(snapshot.revision, "revision")?,
            snapshot.schema_version,
            snapshot.data,
            snapshot.recorded_at_micros,
        ])
        .map_err(sqlite_failure)?;
    Ok(())
}

fn scavenge_in_job(
    connection: &Connection,
    key: &StreamKey,
    batch_size: i64,
    now_micros: i64,
) -> Result<ScavengeBatch, Error> {
    let Some(mut record) = load_stream_record(connection, &key.tenant, &key.stream)? else {
        return Ok(ScavengeBatch::default());
    };
    let start = to_column(record.scavenged_before_revision, "revision")?;
    let mut statement = connection
        .prepare_cached(
            "SELECT revision, hash, recorded_at_us FROM plinth_events_events
             WHERE tenant = ?1 AND stream = ?2 AND revision >= ?3
             ORDER BY revision LIMIT ?4",
        )
        .map_err(sqlite_failure)?;
    let rows = statement
        .query_map(params![key.tenant, key.stream, start, batch_size], |row| {
            Ok((
                row.get::<_, i64>(0)?,
                row.get::<_, Vec<u8>>(1)?,
                row.get::<_, i64>(2)?,
            ))
        })
        .map_err(sqlite_failure)?;
    let mut candidates = Vec::new();
    for row in rows {
        let (revision, hash, recorded_at_micros) = row.map_err(sqlite_failure)?;
        candidates.push(ScavengeCandidate {
            revision: from_column(revision, "revision")?,
            hash: hash_from_bytes(&hash)
                .ok_or_else(|| Error::internal("stored hash is not 32 bytes"))?,
            recorded_at_micros,
        });
    }
    let removable = removable_prefix(&record, &candidates, now_micros);
    let mut batch = ScavengeBatch {
        may_have_more: removable > 0
            && candidates.len() as i64 == batch_size
            && removable == candidates.len(),
        ..ScavengeBatch::default()
    };
    if let Some(last_removed) = removable.checked_sub(1).map(|index| &candidates[index]) {
        batch.events_removed = connection
            .prepare_cached(
                "DELETE FROM plinth_events_events
                 WHERE tenant = ?1 AND stream = ?2 AND revision >= ?3 AND revision <= ?4",
            )
            .map_err(sqlite_failure)?
            .execute(params![
                key.tenant,
                key.stream,
                start,
                to_column(last_removed.revision, "revision")?
            ])
            .map_err(sqlite_failure)? as u64;
        record.scavenged_before_revision = last_removed.revision + 1;
        record.scavenged_anchor_hash = last_removed.hash;
        write_stream_record(connection, &key.tenant, &key.stream, &record)?;
    }
    batch.snapshots_removed = remove_hidden_snapshot(connection, key, &record)?;
    Ok(batch)
}

fn remove_hidden_snapshot(
    connection: &Connection,
    key: &StreamKey,
    record: &StreamRecord,
) -> Result<u64, Error> {
    let snapshot_revision = connection
        .prepare_cached(
            "SELECT revision FROM plinth_events_snapshots WHERE tenant = ?1 AND stream = ?2",
        )
        .map_err(sqlite_failure)?
        .query_row(params![key.tenant, key.stream], |row| row.get::<_, i64>(0))
        .optional()
        .map_err(sqlite_failure)?;
    let Some(snapshot_revision) = snapshot_revision else {
        return Ok(0);
    };
    if !snapshot_is_hidden(record, from_column(snapshot_revision, "revision")?) {
        return Ok(0);
    }
    let removed = connection
        .prepare_cached("DELETE FROM plinth_events_snapshots WHERE tenant = ?1 AND stream = ?2")
        .map_err(sqlite_failure)?
        .execute(params![key.tenant, key.stream])
        .map_err(sqlite_failure)?;
    Ok(removed as u64)
}

fn import_in_job(
    connection: &Connection,
    tenant: &str,
    event: &ImportedEvent,
) -> Result<ImportOutcome, Error> {
    let stream = event.stream.as_str();
    let record =
        load_stream_record(connection, tenant, stream)?.unwrap_or_else(StreamRecord::absent);
    let stored = connection
        .prepare_cached(
            "SELECT event_id, hash FROM plinth_events_events
             WHERE tenant = ?1 AND stream = ?2 AND revision = ?3",
        )
        .map_err(sqlite_failure)?
        .query_row(
            params![tenant, stream, to_column(event.revision, "revision")?],
            |row| Ok((row.get::<_, String>(0)?, row.get::<_, Vec<u8>>(1)?)),
        )
        .optional()
        .map_err(sqlite_failure)?;
    let stored_at_revision =
        stored.and_then(|(id, hash)| Some((Uuid::parse_str(&id).ok()?, hash_from_bytes(&hash)?)));
    let mut record_after = match plan_import(&record, stored_at_revision, event)? {
        ImportPlan::AlreadyPresent => return Ok(ImportOutcome::AlreadyPresent),
        ImportPlan::Write(record_after) => record_after,
    };
    let (position, _) = advance_log_head(connection, tenant, 1, event.recorded_at_micros)?;
    insert_event(
        connection,
        EventInsert {
            tenant,
            stream,
            position,
            revision: to_column(event.revision, "revision")?,
            event: &event.prepared,
            recorded_at_micros: event.recorded_at_micros,
            hash: &event.hash,
        },
    )?;
    record_after.last_position = Some(from_column(position, "position")?);
    write_stream_record(connection, tenant, stream, &record_after)?;
    Ok(ImportOutcome::Imported)
}

#[async_trait]
impl EventBackend for SqliteEventBackend {
    async fn append(
        &self,
        tenant: &TenantId,
        stream: &StreamName,
        expected_version: ExpectedVersion,
        events: Vec<PreparedEvent>,
        now_micros: i64,
    ) -> Result<AppendResult, AppendError> {
        let tenant = tenant.as_str().to_string();
        let stream = stream.clone();
        self.engine
            .write("events_append", move |connection| {
                append_in_job(
                    connection,
                    &tenant,
                    &stream,
                    expected_version,
                    &events,
                    now_micros,
                )
            })
            .await?
    }

    async fn stream_record(
        &self,
        tenant: &TenantId,
        stream: &StreamName,
    ) -> Result<Option<StreamRecord>, Error> {
        let tenant = tenant.as_str().to_string();
        let stream = stream.as_str().to_string();
        self.engine
            .read("events_stream_record", move |connection| {
                load_stream_record(connection, &tenant, &stream)
            })
            .await
    }

    async fn change_stream(
        &self,
        tenant: &TenantId,
        stream: &StreamName,
        change: StreamChange,
    ) -> Result<StreamRecord, AppendError> {
        let tenant = tenant.as_str().to_string();
        let stream = stream.clone();
        self.engine
            .write("events_change_stream", move |connection| {
                let record = load_stream_record(connection, &tenant, stream.as_str())?
                    .unwrap_or_else(StreamRecord::absent);
                let changed = match apply_stream_change(&stream, &record, &change) {
                    Ok(changed) => changed,
                    Err(refused) => return Ok(Err(refused)),
                };
                write_stream_record(connection, &tenant, stream.as_str(), &changed)?;
                Ok(Ok(changed))
            })
            .await?
    }

    async fn read_stream_events(
        &self,
        tenant: &TenantId,
        stream: &StreamName,
        query: StreamEventsQuery,
    ) -> Result<Vec<RecordedEvent>, Error> {
        let tenant = tenant.as_str().to_string();
        let stream = stream.as_str().to_string();
        self.engine
            .read("events_read_stream", move |connection| {
                let mut statement = connection
                    .prepare_cached(&read_stream_sql(query.descending))
                    .map_err(sqlite_failure)?;
                collect_events(
                    &mut statement,
                    params![
                        tenant,
                        stream,
                        query.lowest_revision,
                        query.highest_revision,
                        query.highest_position,
                        query.oldest_recorded_at_micros,
                        query.newest_recorded_at_micros,
                        query.limit,
                    ],
                )
            })
            .await
    }

    async fn read_log_events(
        &self,
        tenant: &TenantId,
        query: LogEventsQuery,
    ) -> Result<Vec<RecordedEvent>, Error> {
        let tenant = tenant.as_str().to_string();
        let event_types = serde_json::to_string(&query.event_types)
            .map_err(|error| Error::internal(format!("encoding event types: {error}")))?;
        self.engine
            .read("events_read_all", move |connection| {
                let mut statement = connection
                    .prepare_cached(&read_log_sql(query.descending))
                    .map_err(sqlite_failure)?;
                collect_events(
                    &mut statement,
                    params![
                        tenant,
                        query.lowest_position,
                        query.highest_position,
                        query.newest_recorded_at_micros,
                        query.now_micros,
                        query.stream_prefix,
                        event_types,
                        query.limit,
                    ],
                )
            })
            .await
    }

    async fn head_position(&self, tenant: &TenantId) -> Result<Option<u64>, Error> {
        let tenant = tenant.as_str().to_string();
        self.engine
            .read("events_head_position", move |connection| {
                let last_position = connection
                    .prepare_cached(
                        "SELECT last_position FROM plinth_events_log_heads WHERE tenant = ?1",
                    )
                    .map_err(sqlite_failure)?
                    .query_row(params![tenant], |row| row.get::<_, i64>(0))
                    .optional()
                    .map_err(sqlite_failure)?;
                last_position
                    .map(|position| from_column(position, "position"))
                    .transpose()
            })
            .await
    }

    async fn save_snapshot(
        &self,
        tenant: &TenantId,
        stream: &StreamName,
        snapshot: SnapshotWrite,
    ) -> Result<(), Error> {
        let tenant = tenant.as_str().to_string();
        let stream = stream.clone();
        self.engine
            .write("events_save_snapshot", move |connection| {
                save_snapshot_in_job(connection, &tenant, &stream, &snapshot)
            })
            .await
    }

    async fn read_snapshot(
        &self,
        tenant: &TenantId,
        stream: &StreamName,
    ) -> Result<Option<Snapshot>, Error> {
        let tenant = tenant.as_str().to_string();
        let stream = stream.as_str().to_string();
        self.engine
            .read("events_read_snapshot", move |connection| {
                let row = connection
                    .prepare_cached(
                        "SELECT revision, schema_version, data, recorded_at_us
                         FROM plinth_events_snapshots WHERE tenant = ?1 AND stream = ?2",
                    )
                    .map_err(sqlite_failure)?
                    .query_row(params![tenant, stream], |row| {
                        Ok((
                            row.get::<_, i64>(0)?,
                            row.get::<_, i64>(1)?,
                            row.get::<_, String>(2)?,
                            row.get::<_, i64>(3)?,
                        ))
                    })
                    .optional()
                    .map_err(sqlite_failure)?;
                let Some((revision, schema_version, data, recorded_at)) = row else {
                    return Ok(None);
                };
                Ok(Some(Snapshot {
                    stream,
                    revision: from_column(revision, "revision")?,
                    data: serde_json::from_str(&data).map_err(|error| {
                        Error::internal(format!("stored snapshot is not JSON: {error}"))
                    })?,
                    schema_version: u32::try_from(schema_version)
                        .map_err(|_| Error::internal("stored schema version is out of range"))?,
                    recorded_at: micros_to_time(recorded_at)?,
                }))
            })
            .await
    }

    async fn streams_to_scavenge(
        &self,
        after: Option<StreamKey>,
        limit: i64,
    ) -> Result<Vec<StreamKey>, Error> {
        let after = after.unwrap_or(StreamKey {
            tenant: String::new(),
            stream: String::new(),
        });
        self.engine
            .read("events_streams_to_scavenge", move |connection| {
                let mut statement = connection
                    .prepare_cached(
                        "SELECT tenant, stream FROM plinth_events_streams
                         WHERE (tenant > ?1 OR (tenant = ?1 AND stream > ?2))
                           AND (visible_from_revision > scavenged_before_revision
                                OR max_age_us IS NOT NULL)
                         ORDER BY tenant, stream LIMIT ?3",
                    )
                    .map_err(sqlite_failure)?;
                let rows = statement
                    .query_map(params![after.tenant, after.stream, limit], |row| {
                        Ok(StreamKey {
                            tenant: row.get(0)?,
                            stream: row.get(1)?,
                        })
                    })
                    .map_err(sqlite_failure)?;
                let mut keys = Vec::new();
                for row in rows {
                    keys.push(row.map_err(sqlite_failure)?);
                }
                Ok(keys)
            })
            .await
    }

    async fn scavenge_stream_batch(
        &self,
        key: &StreamKey,
        batch_size: i64,
        now_micros: i64,
    ) -> Result<ScavengeBatch, Error> {
        let key = key.clone();
        self.engine
            .write("events_scavenge", move |connection| {
                scavenge_in_job(connection, &key, batch_size, now_micros)
            })
            .await
    }

    async fn stream_records(
        &self,
        tenant: &TenantId,
    ) -> Result<Vec<(String, StreamRecord)>, Error> {
        let tenant = tenant.as_str().to_string();
        self.engine
            .read("events_stream_records", move |connection| {
                let mut statement = connection
                    .prepare_cached(&format!(
                        "SELECT stream, {STREAM_COLUMNS} FROM plinth_events_streams
                         WHERE tenant = ?1 ORDER BY stream"
                    ))
                    .map_err(sqlite_failure)?;
                let rows = statement
                    .query_map(params![tenant], |row| {
                        let stream: String = row.get(0)?;
                        let columns = StreamRow {
                            last_revision: row.get(1)?,
                            last_position: row.get(2)?,
                            last_hash: row.get(3)?,
                            truncate_before: row.get(4)?,
                            max_count: row.get(5)?,
                            max_age_micros: row.get(6)?,
                            soft_deleted: row.get(7)?,
                            tombstoned: row.get(8)?,
                            scavenged_before_revision: row.get(9)?,
                            scavenged_anchor_hash: row.get(10)?,
                            visible_from_revision: 0,
                        };
                        Ok((stream, columns))
                    })
                    .map_err(sqlite_failure)?;
                let mut records = Vec::new();
                for row in rows {
                    let (stream, columns) = row.map_err(sqlite_failure)?;
                    records.push((stream, columns.into_record()?));
                }
                Ok(records)
            })
            .await
    }

    async fn stored_events_page(
        &self,
        tenant: &TenantId,
        stream: Option<&StreamName>,
        after_position: Option<u64>,
        limit: i64,
    ) -> Result<Vec<RecordedEvent>, Error> {
        let tenant = tenant.as_str().to_string();
        let stream = stream.map(|stream| stream.as_str().to_string());
        let after = match after_position {
            None => -1,
            Some(position) => to_column(position, "position")?,
        };
        self.engine
            .read("events_stored_page", move |connection| {
                let mut statement = connection
                    .prepare_cached(&format!(
                        "SELECT {EVENT_COLUMNS} FROM plinth_events_events e
                         WHERE e.tenant = ?1 AND e.position > ?2 AND (?3 IS NULL OR e.stream = ?3)
                         ORDER BY e.position LIMIT ?4"
                    ))
                    .map_err(sqlite_failure)?;
                collect_events(&mut statement, params![tenant, after, stream, limit])
            })
            .await
    }

    async fn import_events(
        &self,
        tenant: &TenantId,
        events: Vec<ImportedEvent>,
    ) -> Result<Vec<ImportOutcome>, Error> {
        let tenant = tenant.as_str().to_string();
        self.engine
            .write("events_import", move |connection| {
                let mut outcomes = Vec::with_capacity(events.len());
                for event in &events {
                    outcomes.push(import_in_job(connection, &tenant, event)?);
                }
                Ok(outcomes)
            })
            .await
    }

    async fn log_tenants(&self) -> Result<Vec<String>, Error> {
        self.engine
            .read("events_log_tenants", move |connection| {
                let mut statement = connection
                    .prepare_cached("SELECT tenant FROM plinth_events_log_heads ORDER BY tenant")
                    .map_err(sqlite_failure)?;
                let rows = statement
                    .query_map([], |row| row.get::<_, String>(0))
                    .map_err(sqlite_failure)?;
                let mut tenants = Vec::new();
                for row in rows {
                    tenants.push(row.map_err(sqlite_failure)?);
                }
                Ok(tenants)
            })
            .await
    }
}
