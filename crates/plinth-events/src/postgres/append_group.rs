//! One transaction that appends a group of appends of one tenant, each to
//! a different stream (`append_queue.rs` forms the groups).
//!
//! The transaction follows the rules of the module documentation of
//! `postgres`, for many streams at once:
//!
//! 1. `BEGIN`, create the rows of streams that have none, lock every
//!    stream's row, and look up the ids the callers gave: sent together
//!    (one round trip). Rows are created and locked in stream-name order
//!    (byte order: the columns are `COLLATE "C"`), so two nodes' groups
//!    never wait on each other in a cycle;
//! 2. decide each append in memory (`rules.rs`): written, replayed or
//!    refused. The rows this transaction created for streams that end up
//!    with no write are removed again, so a refused append leaves nothing
//!    behind;
//! 3. one statement advances the tenant's counter by the group's event
//!    count, inserts every event at consecutive positions (appends in
//!    group order, events in batch order) and updates the streams' rows;
//! 4. `COMMIT`, sent with the removals of step 2 and the statement of
//!    step 3 (the second round trip), then every append gets its answer.
//!
//! A failed transaction answers nobody: the queue decides what to do.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use plinth_core::{Error, TenantId};
use plinth_engines::PostgresEngine;
use plinth_engines::postgres::PooledClient;
use plinth_engines::postgres_transaction::{COMMIT, PipelinedTransaction, ROLLBACK};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Statement};
use uuid::Uuid;

use crate::chain::GENESIS_HASH;
use crate::migrations::{STREAM_COLUMNS, StreamRow, from_column, to_column};
use crate::model::{AppendError, AppendResult, AppendedEvent};
use crate::postgres::append_queue::{GroupInFlight, PendingAppend, reply_to_all};
use crate::postgres::commit_signals::CommitSignals;
use crate::postgres::{schema_version_column, stream_row};
use crate::rules::{AppendPlan, ExistingEvent, PlannedWrite, StreamRecord, plan_append};

// New streams' rows, so there is a row to lock; returns the streams it
// created. Inserted in byte order, like the locks below: two groups that
// create the same streams wait on each other's inserts in one order.
pub(super) const ENSURE_STREAMS: &str = "INSERT INTO plinth_events_streams
        (tenant, stream, last_revision, last_position, last_hash, visible_from_revision,
         soft_deleted, tombstoned, scavenged_before_revision, scavenged_anchor_hash)
     SELECT $1, new_stream, -1, -1, $3, 0, FALSE, FALSE, 0, $3
     FROM unnest($2::text[]) AS new_stream
     ORDER BY new_stream COLLATE \"C\"
     ON CONFLICT (tenant, stream) DO NOTHING
     RETURNING stream";

/// Locks the named streams' rows one key lookup each, in the order of the
/// `$2` array (the callers sort it by byte order, the order of the columns'
/// `COLLATE "C"`). Returns each row's `ctid` as text: the transaction
/// holds the row locked, so the row stays where it is, and the later
/// statements reach it by that id instead of by another index lookup.
/// When another transaction changed the row first, the lock waits for it
/// and returns the new version and its new `ctid`.
pub(super) fn lock_streams_sql() -> String {
    format!(
        "SELECT locked.* FROM unnest($2::text[]) AS wanted(stream)
         CROSS JOIN LATERAL (
             SELECT ctid::text AS row_id, stream, {STREAM_COLUMNS}
             FROM plinth_events_streams
             WHERE tenant = $1 AND stream = wanted.stream
             FOR UPDATE
         ) AS locked"
    )
}

// One lookup of the unique (tenant, stream, event_id) key per given id.
const EXISTING_IDS: &str = "SELECT given.stream, given.event_id, stored.revision, stored.position
     FROM unnest($2::text[], $3::text[]) AS given(stream, event_id)
     CROSS JOIN LATERAL (
         SELECT revision, position FROM plinth_events_events
         WHERE tenant = $1 AND stream = given.stream AND event_id = given.event_id
         OFFSET 0
     ) AS stored";

// `$1` holds the `ctid`s the lock returned. No other condition: one on
// the tenant would let the planner pick a scan of the tenant's rows.
const FORGET_STREAMS: &str =
    "DELETE FROM plinth_events_streams WHERE ctid = ANY($1::text[]::tid[])";

// The serialisation point (see the module documentation of `postgres`).
// The streams' rows are reached by the `ctid`s the lock returned, and by
// nothing else (see `FORGET_STREAMS`).
const APPEND_GROUP_AT_HEAD: &str = "WITH head AS (
        INSERT INTO plinth_events_log_heads AS h (tenant, last_position, last_recorded_us)
        VALUES ($1, $2::bigint - 1, $3::bigint)
        ON CONFLICT (tenant) DO UPDATE SET
            last_position = h.last_position + $2::bigint,
            last_recorded_us = GREATEST(h.last_recorded_us, $3::bigint)
        RETURNING h.last_position - $2::bigint + 1 AS first_position, h.last_recorded_us
     ), inserted AS (
        INSERT INTO plinth_events_events
            (tenant, position, stream, revision, event_id, event_type, schema_version, data,
             metadata, recorded_at_us, hash)
        SELECT $1, head.first_position + batch.ordinal - 1, batch.stream, batch.revision,
               batch.event_id, batch.event_type, batch.schema_version, batch.data,
               batch.metadata, head.last_recorded_us, batch.hash
        FROM head, unnest($4::text[], $5::int8[], $6::text[], $7::text[], $8::int4[],
                          $9::text[], $10::text[], $11::bytea[])
             WITH ORDINALITY AS batch(stream, revision, event_id, event_type, schema_version,
                                      data, metadata, hash, ordinal)
     ), stream_update AS (
        UPDATE plinth_events_streams AS written SET
            last_revision = changed.last_revision,
            last_position = head.first_position + changed.last_offset,
            last_hash = changed.last_hash,
            soft_deleted = FALSE,
            visible_from_revision = changed.visible_from_revision
        FROM head, unnest($12::text[], $13::int8[], $14::int8[], $15::bytea[], $16::int8[])
             AS changed(row_id, last_revision, last_offset, last_hash, visible_from_revision)
        WHERE written.ctid = changed.row_id::tid
     )
     SELECT first_position FROM head";

type Answer = Result<AppendResult, AppendError>;

/// An append the group writes, and where its events go in the group.
struct GroupWrite {
    append_index: usize,
    planned: PlannedWrite,
    /// Offset of its first event among the group's events.
    first_offset: i64,
}

pub(crate) struct AppendGroupWriter {
    engine: Arc<PostgresEngine>,
    commit_signals: Arc<CommitSignals>,
}

impl AppendGroupWriter {
    pub fn new(engine: Arc<PostgresEngine>, commit_signals: Arc<CommitSignals>) -> Self {
        AppendGroupWriter {
            engine,
            commit_signals,
        }
    }

    /// Writes the group and answers every append, with the transaction's
    /// failure when it fails.
    pub async fn write_and_reply(
        &self,
        tenant: &TenantId,
        group: Vec<PendingAppend>,
        in_flight: &mut GroupInFlight,
    ) {
        if let Err((failure, group)) = self.write(tenant, group, in_flight).await {
            reply_to_all(group, &failure);
        }
    }

    /// Writes the group in one transaction and answers every append; when
    /// the transaction fails, answers none and hands the group back.
    pub async fn write(
        &self,
        tenant: &TenantId,
        group: Vec<PendingAppend>,
        in_flight: &mut GroupInFlight,
    ) -> Result<(), (Error, Vec<PendingAppend>)> {
        let answers = match self.run_transaction(tenant, &group, in_flight).await {
            Ok(answers) => answers,
            Err(failure) => return Err((failure, group)),
        };
        for (pending, answer) in group.into_iter().zip(answers) {
            // A client that left no longer waits for its answer.
            let _ = pending.reply.send(answer);
        }
        Ok(())
    }

    async fn run_transaction(
        &self,
        tenant_id: &TenantId,
        group: &[PendingAppend],
        in_flight: &mut GroupInFlight,
    ) -> Result<Vec<Answer>, Error> {
        let tenant = tenant_id.as_str();
        let client = self.engine.acquire().await?;
        let statements = self.prepare(&client).await?;
        let transaction = PipelinedTransaction::new(client);
        let client = transaction.client();
        let mut streams: Vec<&str> = group
            .iter()
            .map(|pending| pending.stream.as_str())
            .collect();
        streams.sort_unstable();
        // Pipelined: sent together, run one after the other in this order
        // (a connection runs its statements in the order it received them),
        // so the statements are planned for keyed lookups, the locks see
        // the rows the ensuring statement created, and the ids are looked
        // up under the locks.
        let ((created_streams, locked), existing) = tokio::try_join!(
            begin_with_streams_locked(
                &self.engine,
                client,
                [&statements.ensure, &statements.lock],
                tenant,
                &streams
            ),
            self.existing_ids(client, &statements, tenant, group),
        )?;

        let mut answers: Vec<Option<Answer>> = Vec::with_capacity(group.len());
        let mut writes = Vec::new();
        let mut event_count: i64 = 0;
        for (append_index, pending) in group.iter().enumerate() {
            let Some(record) = locked.records.get(pending.stream.as_str()) else {
                return Err(Error::internal(format!(
                    "the row of stream `{}` was not there to lock",
                    pending.stream
                )));
            };
            let existing_in_stream = existing
                .get(pending.stream.as_str())
                .map(Vec::as_slice)
                .unwrap_or_default();
            let plan = plan_append(
                &pending.stream,
                pending.expected_version,
                record,
                &pending.events,
                existing_in_stream,
            );
            match plan {
                Ok(AppendPlan::Write(planned)) => {
                    writes.push(GroupWrite {
                        append_index,
                        planned,
                        first_offset: event_count,
                    });
                    event_count += pending.events.len() as i64;
                    answers.push(None);
                }
                Ok(AppendPlan::Replay(result)) => answers.push(Some(Ok(result))),
                Err(refused) => answers.push(Some(Err(refused))),
            }
        }

        if writes.is_empty() {
            // Also takes back the rows of streams this transaction created.
            self.engine
                .run("events_append_rollback", client.batch_execute(ROLLBACK))
                .await?;
            transaction.ended();
            return Ok(answers.into_iter().flatten().collect());
        }
        let unwritten_streams = unwritten_created_streams(&created_streams, group, &answers);
        let unwritten_row_ids = locked.row_ids_of(&unwritten_streams)?;
        let written_row_ids = locked.row_ids_of(&written_streams(group, &writes))?;
        in_flight.entering_commit_phase();
        // Pipelined as well, `COMMIT` included: the counter row is locked
        // only while the server runs the last statement and the commit.
        // The server rolls back instead of committing when a statement
        // before the `COMMIT` failed, and `try_join` reports that failure.
        let ((), first_position, ()) = tokio::try_join!(
            self.forget_streams(client, &statements, &unwritten_row_ids),
            self.append_at_head(
                client,
                &statements,
                tenant,
                group,
                &writes,
                &written_row_ids
            ),
            self.engine
                .run("events_append_commit", client.batch_execute(COMMIT)),
        )?;
        transaction.ended();
        let last_position = first_position + event_count - 1;
        self.commit_signals
            .publish(tenant_id, from_column(last_position, "position")?);

        for write in writes {
            let pending = &group[write.append_index];
            let result = written_result(pending, &write, first_position)?;
            answers[write.append_index] = Some(Ok(result));
        }
        let mut complete = Vec::with_capacity(answers.len());
        for answer in answers {
            complete.push(answer.ok_or_else(|| Error::internal("an append was left unanswered"))?);
        }
        Ok(complete)
    }

    async fn prepare(&self, client: &PooledClient) -> Result<GroupStatements, Error> {
        let lock_streams = lock_streams_sql();
        let mut prepared = Vec::with_capacity(5);
        for text in [
            ENSURE_STREAMS,
            lock_streams.as_str(),
            EXISTING_IDS,
            FORGET_STREAMS,
            APPEND_GROUP_AT_HEAD,
        ] {
            prepared.push(
                self.engine
                    .run("events_append_prepare", client.prepare_cached(text))
                    .await?,
            );
        }
        let [ensure, lock, existing_ids, forget, append_at_head]: [Statement; 5] = prepared
            .try_into()
            .map_err(|_| Error::internal("prepared a different number of statements than asked"))?;
        Ok(GroupStatements {
            ensure,
            lock,
            existing_ids,
            forget,
            append_at_head,
        })
    }

    /// The stored events, by stream, whose ids the callers gave.
    async fn existing_ids(
        &self,
        client: &Client,
        statements: &GroupStatements,
        tenant: &str,
        group: &[PendingAppend],
    ) -> Result<HashMap<String, Vec<ExistingEvent>>, Error> {
        let mut given_streams = Vec::new();
        let mut given_ids = Vec::new();
        for pending in group {
            for event in &pending.events {
                if event.id_given_by_caller {
                    given_streams.push(pending.stream.as_str());
                    given_ids.push(event.id.to_string());
                }
            }
        }
        if given_ids.is_empty() {
            return Ok(HashMap::new());
        }
        let rows = self
            .engine
            .run(
                "events_existing_ids",
                client.query(
                    &statements.existing_ids,
                    &[&tenant, &given_streams, &given_ids],
                ),
            )
            .await?;
        let mut existing: HashMap<String, Vec<ExistingEvent>> = HashMap::new();
        for row in rows {
            let stream: String = row.get(0);
            let id: String = row.get(1);
            existing.entry(stream).or_default().push(ExistingEvent {
                id: Uuid::parse_str(&id)
                    .map_err(|_| Error::internal("stored event id is not a UUID"))?,
                revision: from_column(row.get(2), "revision")?,
                position: from_column(row.get(3), "position")?,
            });
        }
        Ok(existing)
    }

    /// Removes the rows at `row_ids`, which this transaction created.
    async fn forget_streams(
        &self,
        client: &Client,
        statements: &GroupStatements,
        row_ids: &[&str],
    ) -> Result<(), Error> {
        if row_ids.is_empty() {
            return Ok(());
        }
        self.engine
            .run(
                "events_forget_streams",
                client.execute(&statements.forget, &[&row_ids]),
            )
            .await?;
        Ok(())
    }

    /// Advances the counter, inserts the events and updates the streams'
    /// rows (at `row_ids`, in the order of `writes`) in one statement;
    /// returns the group's first position.
    async fn append_at_head(
        &self,
        client: &Client,
        statements: &GroupStatements,
        tenant: &str,
        group: &[PendingAppend],
        writes: &[GroupWrite],
        row_ids: &[&str],
    ) -> Result<i64, Error> {
        let mut newest_now_micros = i64::MIN;
        for write in writes {
            newest_now_micros = newest_now_micros.max(group[write.append_index].now_micros);
        }
        let events = EventColumns::new(group, writes)?;
        let event_count = events.ids.len() as i64;
        let streams = StreamColumns::new(group, writes, row_ids)?;
        let parameters: [&(dyn ToSql + Sync); 16] = [
            &tenant,
            &event_count,
            &newest_now_micros,
            &events.streams,
            &events.revisions,
            &events.ids,
            &events.types,
            &events.schema_versions,
            &events.data,
            &events.metadata,
            &events.hashes,
            &streams.row_ids,
            &streams.last_revisions,
            &streams.last_offsets,
            &streams.last_hashes,
            &streams.visible_from_revisions,
        ];
        let head = self
            .engine
            .run(
                "events_append_at_head",
                client.query_one(&statements.append_at_head, &parameters),
            )
            .await?;
        Ok(head.get(0))
    }
}

/// Opens a transaction whose statements reach rows by key and keep one
/// plan per statement and connection.
///
/// A prepared statement's plan is made with the statistics of its time.
/// On a young node's tables (empty, or a page or two) a scan looks
/// cheapest, and a kept plan went on scanning every stream of the tenant
/// once the tables had grown (`auto_explain`: 3 to 15 ms per group at
/// 10,000 streams). Planning every run instead cost about a fifth of
/// PostgreSQL's CPU under load. So these transactions turn sequential
/// scans off, and their statements are written so that the only other
/// plans are key lookups: one unique-index lookup per named row (a
/// `LATERAL` join over the array of keys), or the `ctid` of a row the
/// transaction has locked. With no choice left for the statistics to
/// make, the plan is made once (`force_generic_plan`). Appends, imports
/// and stream changes open their transactions so; other statements are
/// not affected.
async fn begin_keyed_transaction(engine: &PostgresEngine, client: &Client) -> Result<(), Error> {
    engine
        .run(
            "events_begin",
            client.batch_execute(
                "BEGIN; SET LOCAL enable_seqscan = off; \
                 SET LOCAL plan_cache_mode = force_generic_plan",
            ),
        )
        .await
}

/// Opens a keyed transaction ([`begin_keyed_transaction`]) on `client`,
/// creates the rows of `streams` (sorted) that have none and locks every
/// one, all sent together (one round trip). `statements` are
/// [`ENSURE_STREAMS`] and [`lock_streams_sql`], prepared on `client`.
/// Returns the streams it created and the locked rows.
pub(super) async fn begin_with_streams_locked(
    engine: &PostgresEngine,
    client: &Client,
    [ensure, lock]: [&Statement; 2],
    tenant: &str,
    streams: &[&str],
) -> Result<(HashSet<String>, LockedStreams), Error> {
    // Sent in this order and run in it: the locks see the rows the
    // ensuring statement created.
    let ((), created, locked) = tokio::try_join!(
        begin_keyed_transaction(engine, client),
        ensure_streams(engine, client, ensure, tenant, streams),
        lock_streams(engine, client, lock, tenant, streams),
    )?;
    Ok((created, locked))
}

/// Creates the rows of `streams` (sorted) that have none, with
/// [`ENSURE_STREAMS`]; returns those it created.
async fn ensure_streams(
    engine: &PostgresEngine,
    client: &Client,
    ensure: &Statement,
    tenant: &str,
    streams: &[&str],
) -> Result<HashSet<String>, Error> {
    let genesis: &[u8] = &GENESIS_HASH;
    let rows = engine
        .run(
            "events_ensure_streams",
            client.query(ensure, &[&tenant, &streams, &genesis]),
        )
        .await?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}

/// The rows a transaction locked, by stream name.
pub(super) struct LockedStreams {
    pub records: HashMap<String, StreamRecord>,
    /// Each row's `ctid`, as text.
    row_ids: HashMap<String, String>,
}

impl LockedStreams {
    /// The `ctid`s of `streams`, in the same order.
    fn row_ids_of(&self, streams: &[&str]) -> Result<Vec<&str>, Error> {
        let mut row_ids = Vec::with_capacity(streams.len());
        for stream in streams {
            let Some(row_id) = self.row_ids.get(*stream) else {
                return Err(Error::internal(format!(
                    "the row of stream `{stream}` was not locked"
                )));
            };
            row_ids.push(row_id.as_str());
        }
        Ok(row_ids)
    }
}

/// Locks the rows of `streams` (sorted) in that order, with
/// [`lock_streams_sql`].
async fn lock_streams(
    engine: &PostgresEngine,
    client: &Client,
    lock: &Statement,
    tenant: &str,
    streams: &[&str],
) -> Result<LockedStreams, Error> {
    let rows = engine
        .run(
            "events_lock_streams",
            client.query(lock, &[&tenant, &streams]),
        )
        .await?;
    let mut locked = LockedStreams {
        records: HashMap::with_capacity(rows.len()),
        row_ids: HashMap::with_capacity(rows.len()),
    };
    for row in rows {
        let row_id: String = row.get(0);
        let stream: String = row.get(1);
        locked
            .records
            .insert(stream.clone(), stream_row(&row, 2).into_record()?);
        locked.row_ids.insert(stream, row_id);
    }
    Ok(locked)
}

/// The streams `writes` write to, in the order of `writes`.
fn written_streams<'group>(
    group: &'group [PendingAppend],
    writes: &[GroupWrite],
) -> Vec<&'group str> {
    let mut streams = Vec::with_capacity(writes.len());
    for write in writes {
        streams.push(group[write.append_index].stream.as_str());
    }
    streams
}

/// The streams whose rows this transaction created but whose append was
/// decided without a write (refused or replayed): their rows must go, so
/// such a stream stays absent.
fn unwritten_created_streams<'group>(
    created_streams: &HashSet<String>,
    group: &'group [PendingAppend],
    answers: &[Option<Answer>],
) -> Vec<&'group str> {
    let mut unwritten = Vec::new();
    for (pending, answer) in group.iter().zip(answers) {
        let decided_without_write = answer.is_some();
        if decided_without_write && created_streams.contains(pending.stream.as_str()) {
            unwritten.push(pending.stream.as_str());
        }
    }
    unwritten
}

struct GroupStatements {
    ensure: Statement,
    lock: Statement,
    existing_ids: Statement,
    forget: Statement,
    append_at_head: Statement,
}

fn written_result(
    pending: &PendingAppend,
    write: &GroupWrite,
    first_position: i64,
) -> Result<AppendResult, Error> {
    let mut appended = Vec::with_capacity(pending.events.len());
    for (offset, event) in pending.events.iter().enumerate() {
        let position = first_position + write.first_offset + offset as i64;
        appended.push(AppendedEvent {
            id: event.id,
            revision: write.planned.first_revision + offset as u64,
            position: from_column(position, "position")?,
        });
    }
    Ok(AppendResult {
        stream_version: write.planned.record_after.last_revision.unwrap_or_default(),
        events: appended,
        replayed: false,
    })
}

/// Every written event of the group, as the arrays the statement unnests.
struct EventColumns<'a> {
    streams: Vec<&'a str>,
    revisions: Vec<i64>,
    ids: Vec<String>,
    types: Vec<&'a str>,
    schema_versions: Vec<i32>,
    data: Vec<&'a str>,
    metadata: Vec<&'a str>,
    hashes: Vec<&'a [u8]>,
}

impl<'a> EventColumns<'a> {
    fn new(group: &'a [PendingAppend], writes: &'a [GroupWrite]) -> Result<Self, Error> {
        let mut columns = EventColumns {
            streams: Vec::new(),
            revisions: Vec::new(),
            ids: Vec::new(),
            types: Vec::new(),
            schema_versions: Vec::new(),
            data: Vec::new(),
            metadata: Vec::new(),
            hashes: Vec::new(),
        };
        for write in writes {
            let pending = &group[write.append_index];
            let first_revision = to_column(write.planned.first_revision, "revision")?;
            for (offset, event) in pending.events.iter().enumerate() {
                columns.streams.push(pending.stream.as_str());
                columns.revisions.push(first_revision + offset as i64);
                columns.ids.push(event.id.to_string());
                columns.types.push(&event.event_type);
                columns
                    .schema_versions
                    .push(schema_version_column(event.schema_version)?);
                columns.data.push(&event.data);
                columns.metadata.push(&event.metadata);
                columns.hashes.push(&write.planned.hashes[offset]);
            }
        }
        Ok(columns)
    }
}

/// Every written stream's row after the group, as the arrays the
/// statement unnests.
struct StreamColumns<'a> {
    row_ids: &'a [&'a str],
    last_revisions: Vec<i64>,
    last_offsets: Vec<i64>,
    last_hashes: Vec<Vec<u8>>,
    visible_from_revisions: Vec<i64>,
}

impl<'a> StreamColumns<'a> {
    fn new(
        group: &[PendingAppend],
        writes: &[GroupWrite],
        row_ids: &'a [&'a str],
    ) -> Result<Self, Error> {
        let mut columns = StreamColumns {
            row_ids,
            last_revisions: Vec::with_capacity(writes.len()),
            last_offsets: Vec::with_capacity(writes.len()),
            last_hashes: Vec::with_capacity(writes.len()),
            visible_from_revisions: Vec::with_capacity(writes.len()),
        };
        for write in writes {
            let pending = &group[write.append_index];
            let row_after = StreamRow::from_record(&write.planned.record_after)?;
            columns.last_revisions.push(row_after.last_revision);
            columns
                .last_offsets
                .push(write.first_offset + pending.events.len() as i64 - 1);
            columns.last_hashes.push(row_after.last_hash);
            columns
                .visible_from_revisions
                .push(row_after.visible_from_revision);
        }
        Ok(columns)
    }
}

#[cfg(test)]
mod tests {
    use plinth_engines::Store;

    use super::*;
    use crate::conformance::open_postgres;

    /// Twenty streams and their events: one page each, analyzed. On tables
    /// this small a kept plan would scan them; it must not.
    const SMALL_ANALYZED_TABLES: &str = "
        INSERT INTO plinth_events_streams
            (tenant, stream, last_revision, last_position, last_hash, visible_from_revision,
             soft_deleted, tombstoned, scavenged_before_revision, scavenged_anchor_hash)
        SELECT 'small', 'stream-' || n, 0, n - 1, '\\x00', 0, FALSE, FALSE, 0, '\\x00'
        FROM generate_series(1, 20) AS n;
        INSERT INTO plinth_events_events
            (tenant, position, stream, revision, event_id, event_type, schema_version, data,
             metadata, recorded_at_us, hash)
        SELECT 'small', n - 1, 'stream-' || n, 0, 'id-' || n, 'created', 1, '{}', '{}', 0,
               '\\x00'
        FROM generate_series(1, 20) AS n;
        ANALYZE plinth_events_streams, plinth_events_events;";

    /// Each statement of a keyed transaction that reads or changes existing
    /// rows (the others are inserts, which meet existing rows only through
    /// a unique index), with its parameter types and arguments to explain
    /// it with.
    fn kept_statements() -> Vec<(&'static str, String, &'static str, &'static str)> {
        vec![
            (
                "lock",
                lock_streams_sql(),
                "text, text[]",
                "'small', ARRAY['stream-1', 'stream-2']",
            ),
            (
                "existing ids",
                EXISTING_IDS.to_string(),
                "text, text[], text[]",
                "'small', ARRAY['stream-1'], ARRAY['id-1']",
            ),
            (
                "forget",
                FORGET_STREAMS.to_string(),
                "text[]",
                "ARRAY['(0,1)']",
            ),
            (
                "import's event at revision",
                crate::postgres::EVENT_AT_REVISION.to_string(),
                "text, text, bigint",
                "'small', 'stream-1', 0",
            ),
            (
                "write",
                APPEND_GROUP_AT_HEAD.to_string(),
                "text, bigint, bigint, text[], int8[], text[], text[], int4[], text[], text[], \
                 bytea[], text[], int8[], int8[], bytea[], int8[]",
                "'small', 1, 0, ARRAY['stream-1'], ARRAY[1::int8], ARRAY['id-x'], \
                 ARRAY['created'], ARRAY[1], ARRAY['{}'], ARRAY['{}'], ARRAY['\\x00'::bytea], \
                 ARRAY['(0,1)'], ARRAY[1::int8], ARRAY[0::int8], ARRAY['\\x00'::bytea], \
                 ARRAY[0::int8]",
            ),
        ]
    }

    #[tokio::test]
    async fn kept_plans_reach_rows_by_key_even_when_made_on_small_tables() {
        let Some(backend) = open_postgres("events_postgres_kept_plans").await else {
            return;
        };
        let Store::Postgres(engine) = &backend.store else {
            panic!("open_postgres opens a PostgreSQL store");
        };
        let client = engine.acquire().await.expect("a connection");
        client
            .batch_execute(SMALL_ANALYZED_TABLES)
            .await
            .expect("fill and analyze the tables");
        for (name, sql, parameter_types, arguments) in kept_statements() {
            begin_keyed_transaction(engine, &client)
                .await
                .expect("begin");
            client
                .batch_execute(&format!("PREPARE kept ({parameter_types}) AS {sql}"))
                .await
                .unwrap_or_else(|error| panic!("prepare {name}: {error}"));
            let explained = client
                .simple_query(&format!("EXPLAIN EXECUTE kept ({arguments})"))
                .await
                .unwrap_or_else(|error| panic!("explain {name}: {error}"));
            let mut plan = String::new();
            for message in explained {
                if let tokio_postgres::SimpleQueryMessage::Row(row) = message {
                    plan.push_str(row.get(0).unwrap_or_default());
                    plan.push('\n');
                }
            }
            client
                .batch_execute("ROLLBACK; DEALLOCATE kept")
                .await
                .expect("end the transaction");
            // A sequential scan, or an index scan of the tenant's whole range.
            for scan in [
                "Seq Scan on plinth",
                "Bitmap Heap Scan",
                "Index Cond: (tenant = $1)\n",
            ] {
                assert!(
                    !plan.contains(scan),
                    "the {name} plan scans a table:\n{plan}"
                );
            }
        }
        backend.store.close().await;
    }
}
