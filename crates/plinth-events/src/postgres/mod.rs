//! The event store on PostgreSQL, where many nodes append at once.
//!
//! # Gapless global positions in commit order
//!
//! A sequence cannot number the global log: `nextval` is handed out when a
//! transaction asks, not when it commits, so a transaction that takes 7
//! may commit after the one that took 8 (a reader then sees 8 before 7 and
//! skips 7 forever), and a rolled-back transaction leaves a hole. Instead,
//! each tenant's log has one counter row (`plinth_events_log_heads`), and
//! an append's transaction is:
//!
//! 1. make sure the stream's row exists, then lock it (`FOR UPDATE`):
//!    appends to one stream run one at a time, appends to different
//!    streams in parallel;
//! 2. look up the batch's ids, decide (`rules.rs`: expected version,
//!    idempotent replay) and compute the hash chain, all in memory;
//! 3. one statement, as late as possible: advance the counter row
//!    (`INSERT .. ON CONFLICT DO UPDATE .. RETURNING`, which row-locks it),
//!    insert the events at the positions it returned and update the
//!    stream's row;
//! 4. `COMMIT`.
//!
//! The counter row stays locked from step 3 until the commit is visible
//! (PostgreSQL releases row locks after a commit is recorded and visible),
//! so the next appender of the tenant reads the counter only after the
//! previous one committed or rolled back: positions are handed out in
//! commit order, a rollback gives its positions back, and any snapshot
//! sees a prefix of the log. A reader that saw position N has seen every
//! committed event before N. The critical section is one statement plus
//! the commit; everything slow (checks, hashing) happens before it, under
//! the stream's lock only. Locks are always taken streams first (in name
//! order), counter last, so appends cannot deadlock.
//!
//! Since the counter serialises a tenant's commits, a node commits the
//! appends that arrive together as one transaction over several streams
//! (`append_queue.rs` gathers them, `append_group.rs` writes them): one
//! counter advance and one WAL flush for the whole group.
//!
//! The counter is per tenant, not global: tenants never wait on each other,
//! and a tenant's log has no holes left by other tenants (which would also
//! leak their activity).
//!
//! Every statement runs through the engine's guard (breaker and timeout)
//! and is prepared once per connection (`prepare_cached`), before the
//! transaction borrows the connection. Appends, imports and stream changes
//! send `BEGIN` with their first statements and `COMMIT` behind their last
//! one (`PipelinedTransaction`): an append group costs two round trips,
//! and the counter row is never locked across a round trip.

mod append_group;
mod append_queue;
mod commit_signals;

use std::collections::BTreeSet;
use std::sync::{Arc, Weak};

use async_trait::async_trait;
use plinth_core::{Error, TenantId};
use plinth_engines::PostgresEngine;
use plinth_engines::postgres::PooledClient;
use plinth_engines::postgres_transaction::{COMMIT, PipelinedTransaction, ROLLBACK};
use tokio_postgres::types::ToSql;
use tokio_postgres::{GenericClient, Row, Statement};
use uuid::Uuid;

use crate::chain::hash_from_bytes;
use crate::migrations::{
    EVENT_COLUMNS, EventRow, STREAM_COLUMNS, StreamRow, from_column, micros_to_time, to_column,
};
use crate::model::{
    AppendError, AppendResult, ExpectedVersion, RecordedEvent, Snapshot, StreamName,
};
use crate::notify::CommitNotifier;
use crate::rules::{
    ImportPlan, ScavengeCandidate, StreamChange, StreamRecord, apply_stream_change,
    check_snapshot_write, plan_import, removable_prefix, snapshot_is_hidden,
};
use crate::store::{
    EventBackend, ImportOutcome, ImportedEvent, LogEventsQuery, ScavengeBatch, SnapshotWrite,
    StreamEventsQuery, StreamKey,
};
use crate::validation::PreparedEvent;
use append_group::{
    AppendGroupWriter, ENSURE_STREAMS, begin_with_streams_locked, lock_streams_sql,
};
use append_queue::AppendQueue;
use commit_signals::CommitSignals;

type Parameters<'a> = [&'a (dyn ToSql + Sync)];

pub(crate) struct PostgresEventBackend {
    engine: Arc<PostgresEngine>,
    appends: AppendQueue,
    commit_signals: Arc<CommitSignals>,
}

fn lock_stream_sql() -> String {
    format!(
        "SELECT {STREAM_COLUMNS} FROM plinth_events_streams
         WHERE tenant = $1 AND stream = $2 FOR UPDATE"
    )
}

fn select_stream_sql() -> String {
    format!("SELECT {STREAM_COLUMNS} FROM plinth_events_streams WHERE tenant = $1 AND stream = $2")
}

const UPSERT_STREAM: &str = "INSERT INTO plinth_events_streams
        (tenant, stream, last_revision, last_position, last_hash, truncate_before, max_count,
         max_age_us, soft_deleted, tombstoned, scavenged_before_revision, scavenged_anchor_hash,
         visible_from_revision)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
     ON CONFLICT (tenant, stream) DO UPDATE SET
        last_revision = EXCLUDED.last_revision,
        last_position = EXCLUDED.last_position,
        last_hash = EXCLUDED.last_hash,
        truncate_before = EXCLUDED.truncate_before,
        max_count = EXCLUDED.max_count,
        max_age_us = EXCLUDED.max_age_us,
        soft_deleted = EXCLUDED.soft_deleted,
        tombstoned = EXCLUDED.tombstoned,
        scavenged_before_revision = EXCLUDED.scavenged_before_revision,
        scavenged_anchor_hash = EXCLUDED.scavenged_anchor_hash,
        visible_from_revision = EXCLUDED.visible_from_revision";

const ADVANCE_HEAD_BY_ONE: &str =
    "INSERT INTO plinth_events_log_heads AS h (tenant, last_position, last_recorded_us)
     VALUES ($1, 0, $2)
     ON CONFLICT (tenant) DO UPDATE SET
         last_position = h.last_position + 1,
         last_recorded_us = GREATEST(h.last_recorded_us, $2)
     RETURNING h.last_position";

/// The id and hash of the event an import would put at a revision.
pub(super) const EVENT_AT_REVISION: &str = "SELECT event_id, hash FROM plinth_events_events
     WHERE tenant = $1 AND stream = $2 AND revision = $3";

const INSERT_EVENT: &str = "INSERT INTO plinth_events_events
        (tenant, position, stream, revision, event_id, event_type, schema_version, data, metadata,
         recorded_at_us, hash)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)";

fn read_log_sql(descending: bool) -> String {
    let order = if descending { "DESC" } else { "ASC" };
    format!(
        "SELECT {EVENT_COLUMNS} FROM plinth_events_events e
         JOIN plinth_events_streams s ON s.tenant = e.tenant AND s.stream = e.stream
         WHERE e.tenant = $1 AND e.position BETWEEN $2 AND $3
           AND e.recorded_at_us <= $4
           AND e.revision >= s.visible_from_revision
           AND (s.max_age_us IS NULL OR e.recorded_at_us >= $5::bigint - s.max_age_us)
           AND ($6::text IS NULL OR left(e.stream, length($6::text)) = $6::text)
           AND (cardinality($7::text[]) = 0 OR e.event_type = ANY($7::text[]))
         ORDER BY e.position {order} LIMIT $8"
    )
}

fn read_stream_sql(descending: bool) -> String {
    let order = if descending { "DESC" } else { "ASC" };
    format!(
        "SELECT {EVENT_COLUMNS} FROM plinth_events_events e
         WHERE e.tenant = $1 AND e.stream = $2 AND e.revision BETWEEN $3 AND $4
           AND e.position <= $5 AND e.recorded_at_us BETWEEN $6 AND $7
         ORDER BY e.revision {order} LIMIT $8"
    )
}

pub(super) fn stream_row(row: &Row, first: usize) -> StreamRow {
    StreamRow {
        last_revision: row.get(first),
        last_position: row.get(first + 1),
        last_hash: row.get(first + 2),
        truncate_before: row.get(first + 3),
        max_count: row.get(first + 4),
        max_age_micros: row.get(first + 5),
        soft_deleted: row.get(first + 6),
        tombstoned: row.get(first + 7),
        scavenged_before_revision: row.get(first + 8),
        scavenged_anchor_hash: row.get(first + 9),
        visible_from_revision: 0,
    }
}

fn event_row(row: &Row) -> EventRow {
    EventRow {
        stream: row.get(0),
        revision: row.get(1),
        position: row.get(2),
        event_id: row.get(3),
        event_type: row.get(4),
        schema_version: i64::from(row.get::<_, i32>(5)),
        data: row.get(6),
        metadata: row.get(7),
        recorded_at_micros: row.get(8),
        hash: row.get(9),
    }
}

pub(crate) fn recorded_events(rows: Vec<Row>) -> Result<Vec<RecordedEvent>, Error> {
    let mut events = Vec::with_capacity(rows.len());
    for row in rows {
        events.push(event_row(&row).into_recorded()?);
    }
    Ok(events)
}

pub(super) fn schema_version_column(schema_version: u32) -> Result<i32, Error> {
    i32::try_from(schema_version).map_err(|_| {
        Error::invalid_argument("invalid_schema_version", "schema_version is too large")
    })
}

impl PostgresEventBackend {
    pub fn new(engine: Arc<PostgresEngine>) -> Self {
        let commit_signals = Arc::new(CommitSignals::default());
        PostgresEventBackend {
            appends: AppendQueue::new(AppendGroupWriter::new(
                Arc::clone(&engine),
                Arc::clone(&commit_signals),
            )),
            commit_signals,
            engine,
        }
    }

    async fn prepare<const COUNT: usize>(
        &self,
        client: &PooledClient,
        operation: &'static str,
        sql: [&str; COUNT],
    ) -> Result<[Statement; COUNT], Error> {
        let mut statements = Vec::with_capacity(COUNT);
        for text in sql {
            statements.push(
                self.engine
                    .run(operation, client.prepare_cached(text))
                    .await?,
            );
        }
        statements
            .try_into()
            .map_err(|_| Error::internal("prepared a different number of statements than asked"))
    }

    async fn write_record(
        &self,
        client: &impl GenericClient,
        upsert: &Statement,
        tenant: &str,
        stream: &str,
        record: &StreamRecord,
    ) -> Result<(), Error> {
        let row = StreamRow::from_record(record)?;
        let parameters: [&(dyn ToSql + Sync); 13] = [
            &tenant,
            &stream,
            &row.last_revision,
            &row.last_position,
            &row.last_hash,
            &row.truncate_before,
            &row.max_count,
            &row.max_age_micros,
            &row.soft_deleted,
            &row.tombstoned,
            &row.scavenged_before_revision,
            &row.scavenged_anchor_hash,
            &row.visible_from_revision,
        ];
        self.engine
            .run("events_write_stream", client.execute(upsert, &parameters))
            .await?;
        Ok(())
    }

    async fn query(
        &self,
        operation: &'static str,
        sql: &str,
        parameters: &Parameters<'_>,
    ) -> Result<Vec<Row>, Error> {
        self.engine.query_cached(operation, sql, parameters).await
    }
}

#[async_trait]
impl EventBackend for PostgresEventBackend {
    async fn append(
        &self,
        tenant: &TenantId,
        stream: &StreamName,
        expected_version: ExpectedVersion,
        events: Vec<PreparedEvent>,
        now_micros: i64,
    ) -> Result<AppendResult, AppendError> {
        self.appends
            .append(tenant, stream, expected_version, events, now_micros)
            .await
    }

    async fn stream_record(
        &self,
        tenant: &TenantId,
        stream: &StreamName,
    ) -> Result<Option<StreamRecord>, Error> {
        let row = self
            .engine
            .query_opt_cached(
                "events_stream_record",
                &select_stream_sql(),
                &[&tenant.as_str(), &stream.as_str()],
            )
            .await?;
        row.map(|row| stream_row(&row, 0).into_record()).transpose()
    }

    async fn change_stream(
        &self,
        tenant: &TenantId,
        stream: &StreamName,
        change: StreamChange,
    ) -> Result<StreamRecord, AppendError> {
        let tenant = tenant.as_str();
        let client = self.engine.acquire().await?;
        let [ensure, lock, upsert] = self
            .prepare(
                &client,
                "events_change_stream_prepare",
                [ENSURE_STREAMS, &lock_streams_sql(), UPSERT_STREAM],
            )
            .await?;
        let transaction = PipelinedTransaction::new(client);
        let client = transaction.client();
        let streams = [stream.as_str()];
        let (_created, mut locked) =
            begin_with_streams_locked(&self.engine, client, [&ensure, &lock], tenant, &streams)
                .await?;
        let record = locked.records.remove(stream.as_str()).ok_or_else(|| {
            Error::internal(format!(
                "the row of stream `{stream}` was not there to lock"
            ))
        })?;
        let changed = match apply_stream_change(stream, &record, &change) {
            Ok(changed) => changed,
            Err(refused) => {
                self.engine
                    .run(
                        "events_change_stream_rollback",
                        client.batch_execute(ROLLBACK),
                    )
                    .await?;
                transaction.ended();
                return Err(refused);
            }
        };
        tokio::try_join!(
            self.write_record(client, &upsert, tenant, stream.as_str(), &changed),
            self.engine
                .run("events_change_stream_commit", client.batch_execute(COMMIT)),
        )?;
        transaction.ended();
        Ok(changed)
    }

    async fn read_stream_events(
        &self,
        tenant: &TenantId,
        stream: &StreamName,
        query: StreamEventsQuery,
    ) -> Result<Vec<RecordedEvent>, Error> {
        let rows = self
            .query(
                "events_read_stream",
                &read_stream_sql(query.descending),
                &[
                    &tenant.as_str(),
                    &stream.as_str(),
                    &query.lowest_revision,
                    &query.highest_revision,
                    &query.highest_position,
                    &query.oldest_recorded_at_micros,
                    &query.newest_recorded_at_micros,
                    &query.limit,
                ],
            )
            .await?;
        recorded_events(rows)
    }

    async fn read_log_events(
        &self,
        tenant: &TenantId,
        query: LogEventsQuery,
    ) -> Result<Vec<RecordedEvent>, Error> {
        let rows = self
            .query(
                "events_read_all",
                &read_log_sql(query.descending),
                &[
                    &tenant.as_str(),
                    &query.lowest_position,
                    &query.highest_position,
                    &query.newest_recorded_at_micros,
                    &query.now_micros,
                    &query.stream_prefix,
                    &query.event_types,
                    &query.limit,
                ],
            )
            .await?;
        recorded_events(rows)
    }

    async fn head_position(&self, tenant: &TenantId) -> Result<Option<u64>, Error> {
        let row = self
            .engine
            .query_opt_cached(
                "events_head_position",
                "SELECT last_position FROM plinth_events_log_heads WHERE tenant = $1",
                &[&tenant.as_str()],
            )
            .await?;
        row.map(|row| from_column(row.get(0), "position"))
            .transpose()
    }

    async fn save_snapshot(
        &self,
        tenant: &TenantId,
        stream: &StreamName,
        snapshot: SnapshotWrite,
    ) -> Result<(), Error> {
        // Checked, then written: a hard delete landing in between leaves a
        // snapshot that reads never reach and the next scavenge removes.
        let record = self.stream_record(tenant, stream).await?;
        check_snapshot_write(stream, record.as_ref(), snapshot.revision)?;
        let revision = to_column(snapshot.revision, "revision")?;
        let schema_version = schema_version_column(snapshot.schema_version)?;
        self.engine
            .execute_cached(
                "events_save_snapshot",
                "INSERT INTO plinth_events_snapshots
                    (tenant, stream, revision, schema_version, data, recorded_at_us)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (tenant, stream) DO UPDATE SET
                    revision = EXCLUDED.revision,
                    schema_version = EXCLUDED.schema_version,
                    data = EXCLUDED.data,
                    recorded_at_us = EXCLUDED.recorded_at_us",
                &[
                    &tenant.as_str(),
                    &stream.as_str(),
                    &revision,
                    &schema_version,
                    &snapshot.data,
                    &snapshot.recorded_at_micros,
                ],
            )
            .await?;
        Ok(())
    }

    async fn read_snapshot(
        &self,
        tenant: &TenantId,
        stream: &StreamName,
    ) -> Result<Option<Snapshot>, Error> {
        let row = self
            .engine
            .query_opt_cached(
                "events_read_snapshot",
                "SELECT revision, schema_version, data, recorded_at_us
                 FROM plinth_events_snapshots WHERE tenant = $1 AND stream = $2",
                &[&tenant.as_str(), &stream.as_str()],
            )
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let data: String = row.get(2);
        Ok(Some(Snapshot {
            stream: stream.as_str().to_string(),
            revision: from_column(row.get(0), "revision")?,
            data: serde_json::from_str(&data).map_err(|error| {
                Error::internal(format!("stored snapshot is not JSON: {error}"))
            })?,
            schema_version: u32::try_from(row.get::<_, i32>(1))
                .map_err(|_| Error::internal("stored schema version is out of range"))?,
            recorded_at: micros_to_time(row.get(3))?,
        }))
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
        let rows = self
            .query(
                "events_streams_to_scavenge",
                "SELECT tenant, stream FROM plinth_events_streams
                 WHERE (tenant, stream) > ($1, $2)
                   AND (visible_from_revision > scavenged_before_revision OR max_age_us IS NOT NULL)
                 ORDER BY tenant, stream LIMIT $3",
                &[&after.tenant, &after.stream, &limit],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|row| StreamKey {
                tenant: row.get(0),
                stream: row.get(1),
            })
            .collect())
    }

    async fn scavenge_stream_batch(
        &self,
        key: &StreamKey,
        batch_size: i64,
        now_micros: i64,
    ) -> Result<ScavengeBatch, Error> {
        let mut client = self.engine.acquire().await?;
        let [lock, candidates_statement, delete_events, upsert, snapshot_revision, delete_snapshot] =
            self.prepare(
                &client,
                "events_scavenge_prepare",
                [
                    &lock_stream_sql(),
                    "SELECT revision, hash, recorded_at_us FROM plinth_events_events
                     WHERE tenant = $1 AND stream = $2 AND revision >= $3
                     ORDER BY revision LIMIT $4",
                    "DELETE FROM plinth_events_events
                     WHERE tenant = $1 AND stream = $2 AND revision >= $3 AND revision <= $4",
                    UPSERT_STREAM,
                    "SELECT revision FROM plinth_events_snapshots WHERE tenant = $1 AND stream = $2",
                    "DELETE FROM plinth_events_snapshots WHERE tenant = $1 AND stream = $2",
                ],
            )
            .await?;
        let transaction = self
            .engine
            .run("events_scavenge_begin", client.transaction())
            .await?;
        let row = self
            .engine
            .run(
                "events_scavenge_lock",
                transaction.query_opt(&lock, &[&key.tenant, &key.stream]),
            )
            .await?;
        let Some(row) = row else {
            return Ok(ScavengeBatch::default());
        };
        let mut record = stream_row(&row, 0).into_record()?;
        let start = to_column(record.scavenged_before_revision, "revision")?;
        let rows = self
            .engine
            .run(
                "events_scavenge_candidates",
                transaction.query(
                    &candidates_statement,
                    &[&key.tenant, &key.stream, &start, &batch_size],
                ),
            )
            .await?;
        let mut candidates = Vec::with_capacity(rows.len());
        for row in &rows {
            let hash: Vec<u8> = row.get(1);
            candidates.push(ScavengeCandidate {
                revision: from_column(row.get(0), "revision")?,
                hash: hash_from_bytes(&hash)
                    .ok_or_else(|| Error::internal("stored hash is not 32 bytes"))?,
                recorded_at_micros: row.get(2),
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
            let last_revision = to_column(last_removed.revision, "revision")?;
            batch.events_removed = self
                .engine
                .run(
                    "events_scavenge_delete",
                    transaction.execute(
                        &delete_events,
                        &[&key.tenant, &key.stream, &start, &last_revision],
                    ),
                )
                .await?;
            record.scavenged_before_revision = last_removed.revision + 1;
            record.scavenged_anchor_hash = last_removed.hash;
            self.write_record(&*transaction, &upsert, &key.tenant, &key.stream, &record)
                .await?;
        }
        let snapshot = self
            .engine
            .run(
                "events_scavenge_snapshot",
                transaction.query_opt(&snapshot_revision, &[&key.tenant, &key.stream]),
            )
            .await?;
        if let Some(snapshot) = snapshot
            && snapshot_is_hidden(&record, from_column(snapshot.get(0), "revision")?)
        {
            batch.snapshots_removed = self
                .engine
                .run(
                    "events_scavenge_delete_snapshot",
                    transaction.execute(&delete_snapshot, &[&key.tenant, &key.stream]),
                )
                .await?;
        }
        self.engine
            .run("events_scavenge_commit", transaction.commit())
            .await?;
        Ok(batch)
    }

    async fn stream_records(
        &self,
        tenant: &TenantId,
    ) -> Result<Vec<(String, StreamRecord)>, Error> {
        let rows = self
            .query(
                "events_stream_records",
                &format!(
                    "SELECT stream, {STREAM_COLUMNS} FROM plinth_events_streams
                     WHERE tenant = $1 ORDER BY stream"
                ),
                &[&tenant.as_str()],
            )
            .await?;
        let mut records = Vec::with_capacity(rows.len());
        for row in rows {
            records.push((row.get(0), stream_row(&row, 1).into_record()?));
        }
        Ok(records)
    }

    async fn stored_events_page(
        &self,
        tenant: &TenantId,
        stream: Option<&StreamName>,
        after_position: Option<u64>,
        limit: i64,
    ) -> Result<Vec<RecordedEvent>, Error> {
        let after = match after_position {
            None => -1,
            Some(position) => to_column(position, "position")?,
        };
        let stream = stream.map(StreamName::as_str);
        let rows = self
            .query(
                "events_stored_page",
                &format!(
                    "SELECT {EVENT_COLUMNS} FROM plinth_events_events e
                     WHERE e.tenant = $1 AND e.position > $2
                       AND ($3::text IS NULL OR e.stream = $3::text)
                     ORDER BY e.position LIMIT $4"
                ),
                &[&tenant.as_str(), &after, &stream, &limit],
            )
            .await?;
        recorded_events(rows)
    }

    async fn import_events(
        &self,
        tenant: &TenantId,
        events: Vec<ImportedEvent>,
    ) -> Result<Vec<ImportOutcome>, Error> {
        let tenant = tenant.as_str();
        let client = self.engine.acquire().await?;
        let lock_sql = lock_streams_sql();
        let [ensure, lock, stored_at, upsert, advance, insert] = self
            .prepare(
                &client,
                "events_import_prepare",
                [
                    ENSURE_STREAMS,
                    &lock_sql,
                    EVENT_AT_REVISION,
                    UPSERT_STREAM,
                    ADVANCE_HEAD_BY_ONE,
                    INSERT_EVENT,
                ],
            )
            .await?;
        let transaction = PipelinedTransaction::new(client);
        let client = transaction.client();
        // Every stream locked up front, in name order, before the counter:
        // the lock order of appends, so an import beside them cannot deadlock.
        let mut streams: Vec<&str> = events.iter().map(|event| event.stream.as_str()).collect();
        streams.sort_unstable();
        streams.dedup();
        let (_created, mut locked) =
            begin_with_streams_locked(&self.engine, client, [&ensure, &lock], tenant, &streams)
                .await?;
        let records = &mut locked.records;
        let mut changed_streams = BTreeSet::new();
        let mut outcomes = Vec::with_capacity(events.len());
        for event in &events {
            let stream = event.stream.as_str();
            let Some(record) = records.get_mut(stream) else {
                return Err(Error::internal(format!(
                    "the row of stream `{stream}` was not there to lock"
                )));
            };
            let revision = to_column(event.revision, "revision")?;
            let stored = self
                .engine
                .run(
                    "events_import_stored",
                    client.query_opt(&stored_at, &[&tenant, &stream, &revision]),
                )
                .await?;
            let stored_at_revision = stored.and_then(|row| {
                let id: String = row.get(0);
                let hash: Vec<u8> = row.get(1);
                Some((Uuid::parse_str(&id).ok()?, hash_from_bytes(&hash)?))
            });
            let mut record_after = match plan_import(record, stored_at_revision, event)? {
                ImportPlan::AlreadyPresent => {
                    outcomes.push(ImportOutcome::AlreadyPresent);
                    continue;
                }
                ImportPlan::Write(record_after) => record_after,
            };
            let position: i64 = self
                .engine
                .run(
                    "events_import_head",
                    client.query_one(&advance, &[&tenant, &event.recorded_at_micros]),
                )
                .await?
                .get(0);
            let event_id = event.prepared.id.to_string();
            let schema_version = schema_version_column(event.prepared.schema_version)?;
            let hash: &[u8] = &event.hash;
            self.engine
                .run(
                    "events_import_insert",
                    client.execute(
                        &insert,
                        &[
                            &tenant,
                            &position,
                            &stream,
                            &revision,
                            &event_id,
                            &event.prepared.event_type,
                            &schema_version,
                            &event.prepared.data,
                            &event.prepared.metadata,
                            &event.recorded_at_micros,
                            &hash,
                        ],
                    ),
                )
                .await?;
            record_after.last_position = Some(from_column(position, "position")?);
            *record = record_after;
            changed_streams.insert(stream);
            outcomes.push(ImportOutcome::Imported);
        }
        for stream in changed_streams {
            self.write_record(client, &upsert, tenant, stream, &records[stream])
                .await?;
        }
        self.engine
            .run("events_import_commit", client.batch_execute(COMMIT))
            .await?;
        transaction.ended();
        Ok(outcomes)
    }

    async fn log_tenants(&self) -> Result<Vec<String>, Error> {
        let rows = self
            .query(
                "events_log_tenants",
                "SELECT tenant FROM plinth_events_log_heads ORDER BY tenant",
                &[],
            )
            .await?;
        Ok(rows.iter().map(|row| row.get(0)).collect())
    }

    fn start_commit_signals(&self, notifier: Weak<CommitNotifier>) {
        self.commit_signals.start(&self.engine, notifier);
    }
}
