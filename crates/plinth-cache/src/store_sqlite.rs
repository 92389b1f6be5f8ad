//! The durable cache store on the embedded SQLite engine.
//!
//! Every write is one job on the engine's single writer thread, inside its
//! own savepoint. A job's read-check-write (a condition against the live
//! entry, then the write and its new revision) therefore never interleaves
//! with another job, and a job that fails leaves nothing behind, not even a
//! consumed revision. Reads run on the reader pool and see every committed
//! write.
//!
//! SQLite's `LIKE` folds ASCII case, so for pattern invalidation it only
//! narrows the candidates; [`glob_matches`] decides, exactly as in L1.
//! Prefixes are index range scans (see [`prefix_upper_bound`]).

use std::sync::Arc;

use async_trait::async_trait;
use plinth_core::Error;
use plinth_engines::{SqliteEngine, sqlite_failure};
use rusqlite::types::Type;
use rusqlite::{Connection, OptionalExtension, Row, params};

use crate::migrations::{
    EntryRow, from_column_integer, incremented_counter, optional_to_column_integer,
    prefix_upper_bound, to_column_integer, with_revision,
};
use crate::model::{CacheEntry, CacheKey, KeyspaceScope, Revision, Selector, WriteCondition};
use crate::pattern::{glob_matches, to_sql_like};
use crate::tier::{CacheTier, ConditionalOutcome, KeyPage};

pub struct SqliteCacheStore {
    engine: Arc<SqliteEngine>,
}

impl SqliteCacheStore {
    pub fn new(engine: Arc<SqliteEngine>) -> Self {
        SqliteCacheStore { engine }
    }
}

/// Where one entry lives, owned so a job can carry it to the writer thread.
struct EntryLocation {
    tenant: String,
    keyspace: String,
    version: i64,
    cache_key: String,
}

impl EntryLocation {
    fn new(scope: &KeyspaceScope, key: &CacheKey) -> Result<Self, Error> {
        Ok(KeyspaceLocation::new(scope)?.entry(key.as_str().to_string()))
    }
}

/// One version of one keyspace, owned for the same reason.
struct KeyspaceLocation {
    tenant: String,
    keyspace: String,
    version: i64,
}

impl KeyspaceLocation {
    fn new(scope: &KeyspaceScope) -> Result<Self, Error> {
        Ok(KeyspaceLocation {
            tenant: scope.tenant.as_str().to_string(),
            keyspace: scope.keyspace.as_str().to_string(),
            version: to_column_integer(scope.version, "keyspace version")?,
        })
    }

    fn entry(&self, cache_key: String) -> EntryLocation {
        EntryLocation {
            tenant: self.tenant.clone(),
            keyspace: self.keyspace.clone(),
            version: self.version,
            cache_key,
        }
    }
}

const SELECT_LIVE_ENTRY: &str = "SELECT value, compressed, encrypted, content_type, tags, revision, written_at_ms, expires_at_ms
     FROM plinth_cache_entries
     WHERE tenant = ?1 AND keyspace = ?2 AND version = ?3 AND cache_key = ?4
       AND (expires_at_ms IS NULL OR expires_at_ms > ?5)";

const SELECT_LIVE_REVISION: &str = "SELECT revision FROM plinth_cache_entries
     WHERE tenant = ?1 AND keyspace = ?2 AND version = ?3 AND cache_key = ?4
       AND (expires_at_ms IS NULL OR expires_at_ms > ?5)";

// Expired rows count too: a copy older than anything this store has held
// for the key is stale whether or not that row has since expired.
const SELECT_STORED_REVISION: &str = "SELECT revision FROM plinth_cache_entries
     WHERE tenant = ?1 AND keyspace = ?2 AND version = ?3 AND cache_key = ?4";

const NEXT_REVISION: &str = "INSERT INTO plinth_cache_revisions (tenant, keyspace, last_revision)
     VALUES (?1, ?2, 1)
     ON CONFLICT (tenant, keyspace) DO UPDATE SET last_revision = last_revision + 1
     RETURNING last_revision";

const UPSERT_ENTRY: &str = "INSERT INTO plinth_cache_entries
         (tenant, keyspace, version, cache_key, value, compressed, encrypted, content_type, tags,
          revision, written_at_ms, expires_at_ms)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)
     ON CONFLICT (tenant, keyspace, version, cache_key) DO UPDATE SET
         value = excluded.value,
         compressed = excluded.compressed,
         encrypted = excluded.encrypted,
         content_type = excluded.content_type,
         tags = excluded.tags,
         revision = excluded.revision,
         written_at_ms = excluded.written_at_ms,
         expires_at_ms = excluded.expires_at_ms";

const DELETE_TAGS_OF_ENTRY: &str = "DELETE FROM plinth_cache_tags
     WHERE tenant = ?1 AND keyspace = ?2 AND version = ?3 AND cache_key = ?4";

// A tag given twice for one entry is one tag row.
const INSERT_TAG: &str = "INSERT INTO plinth_cache_tags (tenant, keyspace, version, tag, cache_key)
     VALUES (?1, ?2, ?3, ?4, ?5)
     ON CONFLICT DO NOTHING";

// Its tag rows go with it (ON DELETE CASCADE).
const DELETE_ENTRY: &str = "DELETE FROM plinth_cache_entries
     WHERE tenant = ?1 AND keyspace = ?2 AND version = ?3 AND cache_key = ?4";

const SELECT_BY_PATTERN: &str = "SELECT cache_key, expires_at_ms FROM plinth_cache_entries
     WHERE tenant = ?1 AND keyspace = ?2 AND version = ?3 AND cache_key LIKE ?4 ESCAPE '\\'";

const SELECT_BY_PREFIX: &str = "SELECT cache_key, expires_at_ms FROM plinth_cache_entries
     WHERE tenant = ?1 AND keyspace = ?2 AND version = ?3 AND cache_key >= ?4 AND cache_key < ?5";

const SELECT_BY_TAG: &str = "SELECT entry.cache_key, entry.expires_at_ms
     FROM plinth_cache_tags AS tag
     JOIN plinth_cache_entries AS entry
       ON entry.tenant = tag.tenant AND entry.keyspace = tag.keyspace
      AND entry.version = tag.version AND entry.cache_key = tag.cache_key
     WHERE tag.tenant = ?1 AND tag.keyspace = ?2 AND tag.version = ?3 AND tag.tag = ?4";

// Every key is greater than "", so "" as `after` lists from the start.
const LIST_LIVE_KEYS: &str = "SELECT cache_key FROM plinth_cache_entries
     WHERE tenant = ?1 AND keyspace = ?2 AND version = ?3
       AND cache_key >= ?4 AND cache_key < ?5 AND cache_key > ?6
       AND (expires_at_ms IS NULL OR expires_at_ms > ?7)
     ORDER BY cache_key
     LIMIT ?8";

const RECLAIM: &str = "DELETE FROM plinth_cache_entries WHERE rowid IN (
         SELECT rowid FROM plinth_cache_entries
         WHERE tenant = ?1 AND keyspace = ?2 AND (version < ?3 OR expires_at_ms <= ?4)
         LIMIT ?5
     )";

#[async_trait]
impl CacheTier for SqliteCacheStore {
    fn name(&self) -> &'static str {
        "sqlite"
    }

    async fn get(
        &self,
        scope: &KeyspaceScope,
        key: &CacheKey,
        now_ms: u64,
    ) -> Result<Option<CacheEntry>, Error> {
        let location = EntryLocation::new(scope, key)?;
        let now = to_column_integer(now_ms, "now")?;
        self.engine
            .read("cache.get", move |connection| {
                read_live_entry(connection, &location, now)
            })
            .await
    }

    async fn put_conditional(
        &self,
        scope: &KeyspaceScope,
        key: &CacheKey,
        entry: CacheEntry,
        condition: WriteCondition,
        now_ms: u64,
    ) -> Result<ConditionalOutcome, Error> {
        let location = EntryLocation::new(scope, key)?;
        let now = to_column_integer(now_ms, "now")?;
        self.engine
            .write("cache.put", move |connection| {
                let current = read_live_revision(connection, &location, now)?;
                if !condition.holds(current) {
                    return Ok(ConditionalOutcome::PreconditionFailed(current));
                }
                let revision = next_revision(connection, &location)?;
                write_entry(connection, &location, &with_revision(entry, revision))?;
                Ok(ConditionalOutcome::Applied(revision))
            })
            .await
    }

    async fn delete_conditional(
        &self,
        scope: &KeyspaceScope,
        key: &CacheKey,
        condition: WriteCondition,
        now_ms: u64,
    ) -> Result<ConditionalOutcome, Error> {
        let location = EntryLocation::new(scope, key)?;
        let now = to_column_integer(now_ms, "now")?;
        self.engine
            .write("cache.delete", move |connection| {
                let current = read_live_revision(connection, &location, now)?;
                if !condition.holds(current) {
                    return Ok(ConditionalOutcome::PreconditionFailed(current));
                }
                let revision = next_revision(connection, &location)?;
                // An expired row goes too: it was already absent.
                delete_entry(connection, &location)?;
                Ok(ConditionalOutcome::Applied(revision))
            })
            .await
    }

    async fn increment(
        &self,
        scope: &KeyspaceScope,
        key: &CacheKey,
        delta: i64,
        ttl_ms: Option<u64>,
        now_ms: u64,
    ) -> Result<(i64, CacheEntry), Error> {
        let location = EntryLocation::new(scope, key)?;
        let now = to_column_integer(now_ms, "now")?;
        self.engine
            .write("cache.increment", move |connection| {
                let current = read_live_entry(connection, &location, now)?;
                let (new_value, counter) =
                    incremented_counter(current.as_ref(), delta, ttl_ms, now_ms)?;
                let revision = next_revision(connection, &location)?;
                let stored = with_revision(counter, revision);
                write_entry(connection, &location, &stored)?;
                Ok((new_value, stored))
            })
            .await
    }

    async fn put_if_newer(
        &self,
        scope: &KeyspaceScope,
        key: &CacheKey,
        entry: CacheEntry,
    ) -> Result<(), Error> {
        let location = EntryLocation::new(scope, key)?;
        self.engine
            .write("cache.put_if_newer", move |connection| {
                let stored = read_stored_revision(connection, &location)?;
                if stored.is_some_and(|stored_revision| stored_revision >= entry.revision) {
                    return Ok(());
                }
                // The store keeps no tombstones: it is the tier others fill
                // from, so a newer deletion just removes the row.
                if entry.tombstone {
                    return delete_entry(connection, &location);
                }
                write_entry(connection, &location, &entry)
            })
            .await
    }

    async fn invalidate(
        &self,
        scope: &KeyspaceScope,
        selector: &Selector,
        now_ms: u64,
    ) -> Result<u64, Error> {
        let keyspace = KeyspaceLocation::new(scope)?;
        let now = to_column_integer(now_ms, "now")?;
        let selector = selector.clone();
        if let Selector::Pattern(pattern) = &selector {
            // Refuse a malformed pattern before queueing a write job.
            to_sql_like(pattern)?;
        }
        self.engine
            .write("cache.invalidate", move |connection| {
                let candidates = select_candidates(connection, &keyspace, &selector)?;
                let mut live_removed = 0;
                for candidate in candidates {
                    delete_entry(connection, &keyspace.entry(candidate.cache_key))?;
                    // Expired rows are swept along but were already gone.
                    if candidate
                        .expires_at_ms
                        .is_none_or(|expires_at| expires_at > now)
                    {
                        live_removed += 1;
                    }
                }
                Ok(live_removed)
            })
            .await
    }

    async fn list(
        &self,
        scope: &KeyspaceScope,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
        now_ms: u64,
    ) -> Result<KeyPage, Error> {
        let keyspace = KeyspaceLocation::new(scope)?;
        let now = to_column_integer(now_ms, "now")?;
        let prefix = prefix.to_string();
        let after = after.unwrap_or_default().to_string();
        // One row more than asked says whether another page follows.
        let fetch = i64::try_from(limit.saturating_add(1)).unwrap_or(i64::MAX);
        let keys = self
            .engine
            .read("cache.list", move |connection| {
                let upper_bound = prefix_upper_bound(&prefix);
                let mut statement = connection
                    .prepare_cached(LIST_LIVE_KEYS)
                    .map_err(sqlite_failure)?;
                let rows = statement
                    .query_map(
                        params![
                            keyspace.tenant,
                            keyspace.keyspace,
                            keyspace.version,
                            prefix,
                            upper_bound,
                            after,
                            now,
                            fetch
                        ],
                        |row| row.get::<_, String>(0),
                    )
                    .map_err(sqlite_failure)?;
                let mut keys = Vec::new();
                for row in rows {
                    keys.push(row.map_err(sqlite_failure)?);
                }
                Ok(keys)
            })
            .await?;
        Ok(KeyPage::from_ordered_keys(keys, limit))
    }

    async fn reclaim(
        &self,
        scope: &KeyspaceScope,
        batch: usize,
        now_ms: u64,
    ) -> Result<u64, Error> {
        let keyspace = KeyspaceLocation::new(scope)?;
        let now = to_column_integer(now_ms, "now")?;
        // Bounded so one reclaim never holds the single writer for long.
        let batch = i64::try_from(batch).unwrap_or(i64::MAX);
        self.engine
            .write("cache.reclaim", move |connection| {
                let deleted = connection
                    .prepare_cached(RECLAIM)
                    .and_then(|mut statement| {
                        statement.execute(params![
                            keyspace.tenant,
                            keyspace.keyspace,
                            keyspace.version,
                            now,
                            batch
                        ])
                    })
                    .map_err(sqlite_failure)?;
                Ok(deleted as u64)
            })
            .await
    }
}

fn read_live_entry(
    connection: &Connection,
    location: &EntryLocation,
    now: i64,
) -> Result<Option<CacheEntry>, Error> {
    let row = connection
        .prepare_cached(SELECT_LIVE_ENTRY)
        .and_then(|mut statement| {
            statement
                .query_row(
                    params![
                        location.tenant,
                        location.keyspace,
                        location.version,
                        location.cache_key,
                        now
                    ],
                    entry_row,
                )
                .optional()
        })
        .map_err(sqlite_failure)?;
    row.map(EntryRow::into_entry).transpose()
}

fn read_live_revision(
    connection: &Connection,
    location: &EntryLocation,
    now: i64,
) -> Result<Option<Revision>, Error> {
    let revision: Option<i64> = connection
        .prepare_cached(SELECT_LIVE_REVISION)
        .and_then(|mut statement| {
            statement
                .query_row(
                    params![
                        location.tenant,
                        location.keyspace,
                        location.version,
                        location.cache_key,
                        now
                    ],
                    |row| row.get(0),
                )
                .optional()
        })
        .map_err(sqlite_failure)?;
    revision
        .map(|revision| from_column_integer(revision, "revision"))
        .transpose()
}

fn read_stored_revision(
    connection: &Connection,
    location: &EntryLocation,
) -> Result<Option<Revision>, Error> {
    let revision: Option<i64> = connection
        .prepare_cached(SELECT_STORED_REVISION)
        .and_then(|mut statement| {
            statement
                .query_row(
                    params![
                        location.tenant,
                        location.keyspace,
                        location.version,
                        location.cache_key
                    ],
                    |row| row.get(0),
                )
                .optional()
        })
        .map_err(sqlite_failure)?;
    revision
        .map(|revision| from_column_integer(revision, "revision"))
        .transpose()
}

/// Draws the keyspace's next revision. Only ever called inside a write
/// job, which the single writer runs alone, so revisions are handed out in
/// commit order.
fn next_revision(connection: &Connection, location: &EntryLocation) -> Result<Revision, Error> {
    let revision: i64 = connection
        .prepare_cached(NEXT_REVISION)
        .and_then(|mut statement| {
            statement.query_row(params![location.tenant, location.keyspace], |row| {
                row.get(0)
            })
        })
        .map_err(sqlite_failure)?;
    from_column_integer(revision, "revision")
}

/// Writes the entry with its revision, and replaces its tag rows.
fn write_entry(
    connection: &Connection,
    location: &EntryLocation,
    entry: &CacheEntry,
) -> Result<(), Error> {
    let tags = encode_tags(&entry.tags)?;
    let revision = to_column_integer(entry.revision, "revision")?;
    let written_at_ms = to_column_integer(entry.written_at_ms, "written_at_ms")?;
    let expires_at_ms = optional_to_column_integer(entry.expires_at_ms, "expires_at_ms")?;
    connection
        .prepare_cached(UPSERT_ENTRY)
        .and_then(|mut statement| {
            statement.execute(params![
                location.tenant,
                location.keyspace,
                location.version,
                location.cache_key,
                entry.value.as_ref(),
                entry.encoding.compressed,
                entry.encoding.encrypted,
                entry.content_type,
                tags,
                revision,
                written_at_ms,
                expires_at_ms
            ])
        })
        .map_err(sqlite_failure)?;
    replace_tags(connection, location, &entry.tags)
}

fn replace_tags(
    connection: &Connection,
    location: &EntryLocation,
    tags: &[String],
) -> Result<(), Error> {
    connection
        .prepare_cached(DELETE_TAGS_OF_ENTRY)
        .and_then(|mut statement| {
            statement.execute(params![
                location.tenant,
                location.keyspace,
                location.version,
                location.cache_key
            ])
        })
        .map_err(sqlite_failure)?;
    let mut insert = connection
        .prepare_cached(INSERT_TAG)
        .map_err(sqlite_failure)?;
    for tag in tags {
        insert
            .execute(params![
                location.tenant,
                location.keyspace,
                location.version,
                tag,
                location.cache_key
            ])
            .map_err(sqlite_failure)?;
    }
    Ok(())
}

fn delete_entry(connection: &Connection, location: &EntryLocation) -> Result<(), Error> {
    connection
        .prepare_cached(DELETE_ENTRY)
        .and_then(|mut statement| {
            statement.execute(params![
                location.tenant,
                location.keyspace,
                location.version,
                location.cache_key
            ])
        })
        .map_err(sqlite_failure)?;
    Ok(())
}

/// A row an invalidation may remove.
struct Candidate {
    cache_key: String,
    expires_at_ms: Option<i64>,
}

fn select_candidates(
    connection: &Connection,
    keyspace: &KeyspaceLocation,
    selector: &Selector,
) -> Result<Vec<Candidate>, Error> {
    match selector {
        Selector::Pattern(pattern) => {
            let like = to_sql_like(pattern)?;
            let mut candidates =
                query_candidates(connection, SELECT_BY_PATTERN, keyspace, &like, None)?;
            candidates.retain(|candidate| glob_matches(pattern, &candidate.cache_key));
            Ok(candidates)
        }
        Selector::Prefix(prefix) => {
            let upper_bound = prefix_upper_bound(prefix);
            query_candidates(
                connection,
                SELECT_BY_PREFIX,
                keyspace,
                prefix,
                Some(&upper_bound),
            )
        }
        Selector::Tag(tag) => query_candidates(connection, SELECT_BY_TAG, keyspace, tag, None),
    }
}

/// Runs one of the `SELECT_BY_*` queries: the keyspace's three columns,
/// then the selector's one or two arguments.
fn query_candidates(
    connection: &Connection,
    sql: &str,
    keyspace: &KeyspaceLocation,
    argument: &str,
    second_argument: Option<&str>,
) -> Result<Vec<Candidate>, Error> {
    let mut statement = connection.prepare_cached(sql).map_err(sqlite_failure)?;
    let to_candidate = |row: &Row<'_>| {
        Ok(Candidate {
            cache_key: row.get(0)?,
            expires_at_ms: row.get(1)?,
        })
    };
    let rows = match second_argument {
        None => statement.query_map(
            params![
                keyspace.tenant,
                keyspace.keyspace,
                keyspace.version,
                argument
            ],
            to_candidate,
        ),
        Some(second_argument) => statement.query_map(
            params![
                keyspace.tenant,
                keyspace.keyspace,
                keyspace.version,
                argument,
                second_argument
            ],
            to_candidate,
        ),
    }
    .map_err(sqlite_failure)?;
    let mut candidates = Vec::new();
    for row in rows {
        candidates.push(row.map_err(sqlite_failure)?);
    }
    Ok(candidates)
}

fn entry_row(row: &Row<'_>) -> rusqlite::Result<EntryRow> {
    let tags_json: String = row.get(4)?;
    let tags = decode_tags(&tags_json).map_err(|decode_error| {
        rusqlite::Error::FromSqlConversionFailure(4, Type::Text, Box::new(decode_error))
    })?;
    Ok(EntryRow {
        value: row.get(0)?,
        compressed: row.get(1)?,
        encrypted: row.get(2)?,
        content_type: row.get(3)?,
        tags,
        revision: row.get(5)?,
        written_at_ms: row.get(6)?,
        expires_at_ms: row.get(7)?,
    })
}

/// Tags are a JSON array in the row: it keeps their order, and no tag
/// character can break it.
fn encode_tags(tags: &[String]) -> Result<String, Error> {
    serde_json::to_string(tags)
        .map_err(|encode_error| Error::internal(format!("cannot encode tags: {encode_error}")))
}

fn decode_tags(tags_json: &str) -> Result<Vec<String>, serde_json::Error> {
    serde_json::from_str(tags_json)
}
