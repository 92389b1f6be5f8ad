//! The durable cache store on PostgreSQL.
//!
//! Many nodes may write one key at once, so every write of a key (put,
//! delete, increment, copy) is one transaction that first takes a
//! transaction-scoped advisory lock on the key, then locks its row (if
//! any) with `FOR UPDATE`, checks the condition against the live row, and
//! writes. Holding the key's lock until commit means writers of one key
//! run one at a time, so exactly one of several `If-Match` writers of the
//! same revision wins, and the revision each draws from the global
//! sequence `plinth_cache_revision_seq` follows commit order. The advisory
//! lock also covers the absent case, where there is no row to lock yet.
//!
//! Bulk deletes (invalidation, reclaim) are single statements and take no
//! advisory lock: they only ever remove rows, which row locks order
//! against the writers. Statements are prepared once per connection
//! (`prepare_cached`), before a transaction starts, because the
//! transaction borrows the connection.

use std::sync::Arc;

use async_trait::async_trait;
use plinth_core::Error;
use plinth_engines::PostgresEngine;
use plinth_engines::postgres::PooledClient;
use tokio_postgres::types::{FromSql, ToSql};
use tokio_postgres::{Row, Statement, Transaction};

use crate::migrations::{
    EntryRow, from_column_integer, incremented_counter, optional_to_column_integer,
    prefix_upper_bound, to_column_integer, with_revision,
};
use crate::model::{CacheEntry, CacheKey, KeyspaceScope, Revision, Selector, WriteCondition};
use crate::pattern::to_sql_like;
use crate::tier::{CacheTier, ConditionalOutcome, KeyPage};

type Parameters<'a> = [&'a (dyn ToSql + Sync)];

pub struct PostgresCacheStore {
    engine: Arc<PostgresEngine>,
}

impl PostgresCacheStore {
    pub fn new(engine: Arc<PostgresEngine>) -> Self {
        PostgresCacheStore { engine }
    }

    /// Prepares (or takes from the connection's cache) the statements a
    /// transaction will run, in the order given.
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
}

/// Where one entry lives, as the columns and the advisory lock name it.
struct EntryLocation {
    tenant: String,
    keyspace: String,
    version: i64,
    cache_key: String,
}

impl EntryLocation {
    fn new(scope: &KeyspaceScope, key: &CacheKey) -> Result<Self, Error> {
        Ok(EntryLocation {
            tenant: scope.tenant.as_str().to_string(),
            keyspace: scope.keyspace.as_str().to_string(),
            version: to_column_integer(scope.version, "keyspace version")?,
            cache_key: key.as_str().to_string(),
        })
    }

    /// Tenants and keyspace names cannot contain `/`, and the key comes
    /// last, so no two entries share a lock name.
    fn lock_name(&self) -> String {
        format!(
            "plinth_cache/{}/{}/{}/{}",
            self.tenant, self.keyspace, self.version, self.cache_key
        )
    }
}

/// The revision and expiry of a stored row, enough to check a condition.
struct StoredRevision {
    revision: Revision,
    expires_at_ms: Option<i64>,
}

impl StoredRevision {
    fn is_live_at(&self, now: i64) -> bool {
        self.expires_at_ms
            .is_none_or(|expires_at_ms| expires_at_ms > now)
    }
}

/// The live revision among what is stored, for a write condition: an
/// expired row counts as absent.
fn live_revision(stored: Option<StoredRevision>, now: i64) -> Option<Revision> {
    let stored = stored?;
    if !stored.is_live_at(now) {
        return None;
    }
    Some(stored.revision)
}

const LOCK_KEY: &str = "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))";

const SELECT_LIVE_ENTRY: &str = "SELECT value, compressed, encrypted, content_type, tags, revision, written_at_ms, expires_at_ms
     FROM plinth_cache_entries
     WHERE tenant = $1 AND keyspace = $2 AND version = $3 AND cache_key = $4
       AND (expires_at_ms IS NULL OR expires_at_ms > $5)";

const LOCK_STORED_ENTRY: &str = "SELECT value, compressed, encrypted, content_type, tags, revision, written_at_ms, expires_at_ms
     FROM plinth_cache_entries
     WHERE tenant = $1 AND keyspace = $2 AND version = $3 AND cache_key = $4
     FOR UPDATE";

const LOCK_STORED_REVISION: &str = "SELECT revision, expires_at_ms FROM plinth_cache_entries
     WHERE tenant = $1 AND keyspace = $2 AND version = $3 AND cache_key = $4
     FOR UPDATE";

// The revision is drawn here, while the key's lock is held.
const UPSERT_WITH_NEXT_REVISION: &str = "INSERT INTO plinth_cache_entries
         (tenant, keyspace, version, cache_key, value, compressed, encrypted, content_type, tags,
          written_at_ms, expires_at_ms, revision)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, nextval('plinth_cache_revision_seq'))
     ON CONFLICT (tenant, keyspace, version, cache_key) DO UPDATE SET
         value = EXCLUDED.value,
         compressed = EXCLUDED.compressed,
         encrypted = EXCLUDED.encrypted,
         content_type = EXCLUDED.content_type,
         tags = EXCLUDED.tags,
         written_at_ms = EXCLUDED.written_at_ms,
         expires_at_ms = EXCLUDED.expires_at_ms,
         revision = EXCLUDED.revision
     RETURNING revision";

const UPSERT_WITH_GIVEN_REVISION: &str = "INSERT INTO plinth_cache_entries
         (tenant, keyspace, version, cache_key, value, compressed, encrypted, content_type, tags,
          written_at_ms, expires_at_ms, revision)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
     ON CONFLICT (tenant, keyspace, version, cache_key) DO UPDATE SET
         value = EXCLUDED.value,
         compressed = EXCLUDED.compressed,
         encrypted = EXCLUDED.encrypted,
         content_type = EXCLUDED.content_type,
         tags = EXCLUDED.tags,
         written_at_ms = EXCLUDED.written_at_ms,
         expires_at_ms = EXCLUDED.expires_at_ms,
         revision = EXCLUDED.revision";

// Removes the tag rows the entry no longer has and adds the new ones; the
// two sets are disjoint, so the statement's two halves never touch the
// same row.
const REPLACE_TAGS: &str = "WITH stale AS (
         DELETE FROM plinth_cache_tags
         WHERE tenant = $1 AND keyspace = $2 AND version = $3 AND cache_key = $4
           AND NOT (tag = ANY ($5::TEXT[]))
     )
     INSERT INTO plinth_cache_tags (tenant, keyspace, version, tag, cache_key)
     SELECT $1, $2, $3, new_tag, $4 FROM unnest($5::TEXT[]) AS new_tag
     ON CONFLICT DO NOTHING";

// Tag rows go with the entry (ON DELETE CASCADE). A delete draws a
// revision like any write, even when there was nothing to delete.
const DELETE_DRAWING_REVISION: &str = "WITH removed AS (
         DELETE FROM plinth_cache_entries
         WHERE tenant = $1 AND keyspace = $2 AND version = $3 AND cache_key = $4
     )
     SELECT nextval('plinth_cache_revision_seq')";

const DELETE_ENTRY: &str = "DELETE FROM plinth_cache_entries
     WHERE tenant = $1 AND keyspace = $2 AND version = $3 AND cache_key = $4";

// Expired rows are swept along but not counted: they were already gone.
const INVALIDATE_BY_PATTERN: &str = r"WITH removed AS (
         DELETE FROM plinth_cache_entries
         WHERE tenant = $1 AND keyspace = $2 AND version = $3 AND cache_key LIKE $4 ESCAPE '\'
         RETURNING expires_at_ms
     )
     SELECT count(*) FROM removed WHERE expires_at_ms IS NULL OR expires_at_ms > $5";

const INVALIDATE_BY_PREFIX: &str = "WITH removed AS (
         DELETE FROM plinth_cache_entries
         WHERE tenant = $1 AND keyspace = $2 AND version = $3
           AND cache_key >= $4 AND cache_key < $5
         RETURNING expires_at_ms
     )
     SELECT count(*) FROM removed WHERE expires_at_ms IS NULL OR expires_at_ms > $6";

const INVALIDATE_BY_TAG: &str = "WITH removed AS (
         DELETE FROM plinth_cache_entries AS entry
         USING plinth_cache_tags AS tag
         WHERE tag.tenant = $1 AND tag.keyspace = $2 AND tag.version = $3 AND tag.tag = $4
           AND entry.tenant = tag.tenant AND entry.keyspace = tag.keyspace
           AND entry.version = tag.version AND entry.cache_key = tag.cache_key
         RETURNING entry.expires_at_ms
     )
     SELECT count(*) FROM removed WHERE expires_at_ms IS NULL OR expires_at_ms > $5";

// Every key is greater than "", so "" as `after` lists from the start.
const LIST_LIVE_KEYS: &str = "SELECT cache_key FROM plinth_cache_entries
     WHERE tenant = $1 AND keyspace = $2 AND version = $3
       AND cache_key >= $4 AND cache_key < $5 AND cache_key > $6
       AND (expires_at_ms IS NULL OR expires_at_ms > $7)
     ORDER BY cache_key
     LIMIT $8";

// Rows a writer holds are skipped rather than waited for: they are being
// rewritten, and the next reclaim finds them if they are still due.
const RECLAIM: &str = "WITH due AS (
         SELECT tenant, keyspace, version, cache_key FROM plinth_cache_entries
         WHERE tenant = $1 AND keyspace = $2 AND (version < $3 OR expires_at_ms <= $4)
         LIMIT $5
         FOR UPDATE SKIP LOCKED
     ), removed AS (
         DELETE FROM plinth_cache_entries AS entry
         USING due
         WHERE entry.tenant = due.tenant AND entry.keyspace = due.keyspace
           AND entry.version = due.version AND entry.cache_key = due.cache_key
         RETURNING 1
     )
     SELECT count(*) FROM removed";

/// One key's write transaction, after its lock was taken.
struct KeyTransaction<'a> {
    engine: &'a PostgresEngine,
    operation: &'static str,
    transaction: &'a Transaction<'a>,
    location: &'a EntryLocation,
}

impl<'a> KeyTransaction<'a> {
    /// Takes the key's advisory lock, held until the transaction ends.
    async fn lock(
        engine: &'a PostgresEngine,
        operation: &'static str,
        transaction: &'a Transaction<'a>,
        location: &'a EntryLocation,
        lock_statement: &Statement,
    ) -> Result<KeyTransaction<'a>, Error> {
        let lock_name = location.lock_name();
        engine
            .run(
                operation,
                transaction.execute(lock_statement, &[&lock_name]),
            )
            .await?;
        Ok(KeyTransaction {
            engine,
            operation,
            transaction,
            location,
        })
    }

    async fn query_optional(
        &self,
        statement: &Statement,
        parameters: &Parameters<'_>,
    ) -> Result<Option<Row>, Error> {
        self.engine
            .run(
                self.operation,
                self.transaction.query_opt(statement, parameters),
            )
            .await
    }

    async fn query_one(
        &self,
        statement: &Statement,
        parameters: &Parameters<'_>,
    ) -> Result<Row, Error> {
        self.engine
            .run(
                self.operation,
                self.transaction.query_one(statement, parameters),
            )
            .await
    }

    async fn execute(
        &self,
        statement: &Statement,
        parameters: &Parameters<'_>,
    ) -> Result<u64, Error> {
        self.engine
            .run(
                self.operation,
                self.transaction.execute(statement, parameters),
            )
            .await
    }

    /// The stored row's revision and expiry, expired or not, locked.
    async fn stored_revision(
        &self,
        lock_stored_revision: &Statement,
    ) -> Result<Option<StoredRevision>, Error> {
        let location = self.location;
        let row = self
            .query_optional(
                lock_stored_revision,
                &[
                    &location.tenant,
                    &location.keyspace,
                    &location.version,
                    &location.cache_key,
                ],
            )
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        Ok(Some(StoredRevision {
            revision: from_column_integer(column(&row, 0)?, "revision")?,
            expires_at_ms: column(&row, 1)?,
        }))
    }

    /// The stored row, expired or not, locked.
    async fn stored_entry(
        &self,
        lock_stored_entry: &Statement,
    ) -> Result<Option<CacheEntry>, Error> {
        let location = self.location;
        let row = self
            .query_optional(
                lock_stored_entry,
                &[
                    &location.tenant,
                    &location.keyspace,
                    &location.version,
                    &location.cache_key,
                ],
            )
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        entry_row(&row)?.into_entry().map(Some)
    }

    /// Writes the entry with the next revision of the sequence; returns it.
    async fn write_with_next_revision(
        &self,
        upsert_with_next_revision: &Statement,
        entry: &CacheEntry,
    ) -> Result<Revision, Error> {
        let location = self.location;
        let value: &[u8] = &entry.value;
        let written_at_ms = to_column_integer(entry.written_at_ms, "written_at_ms")?;
        let expires_at_ms = optional_to_column_integer(entry.expires_at_ms, "expires_at_ms")?;
        let row = self
            .query_one(
                upsert_with_next_revision,
                &[
                    &location.tenant,
                    &location.keyspace,
                    &location.version,
                    &location.cache_key,
                    &value,
                    &entry.encoding.compressed,
                    &entry.encoding.encrypted,
                    &entry.content_type,
                    &entry.tags,
                    &written_at_ms,
                    &expires_at_ms,
                ],
            )
            .await?;
        from_column_integer(column(&row, 0)?, "revision")
    }

    /// Writes the entry with the revision it carries (a copy).
    async fn write_with_given_revision(
        &self,
        upsert_with_given_revision: &Statement,
        entry: &CacheEntry,
    ) -> Result<(), Error> {
        let location = self.location;
        let value: &[u8] = &entry.value;
        let written_at_ms = to_column_integer(entry.written_at_ms, "written_at_ms")?;
        let expires_at_ms = optional_to_column_integer(entry.expires_at_ms, "expires_at_ms")?;
        let revision = to_column_integer(entry.revision, "revision")?;
        self.execute(
            upsert_with_given_revision,
            &[
                &location.tenant,
                &location.keyspace,
                &location.version,
                &location.cache_key,
                &value,
                &entry.encoding.compressed,
                &entry.encoding.encrypted,
                &entry.content_type,
                &entry.tags,
                &written_at_ms,
                &expires_at_ms,
                &revision,
            ],
        )
        .await?;
        Ok(())
    }

    async fn replace_tags(&self, replace_tags: &Statement, tags: &[String]) -> Result<(), Error> {
        let location = self.location;
        self.execute(
            replace_tags,
            &[
                &location.tenant,
                &location.keyspace,
                &location.version,
                &location.cache_key,
                &tags,
            ],
        )
        .await?;
        Ok(())
    }

    async fn delete_drawing_revision(
        &self,
        delete_drawing_revision: &Statement,
    ) -> Result<Revision, Error> {
        let location = self.location;
        let row = self
            .query_one(
                delete_drawing_revision,
                &[
                    &location.tenant,
                    &location.keyspace,
                    &location.version,
                    &location.cache_key,
                ],
            )
            .await?;
        from_column_integer(column(&row, 0)?, "revision")
    }

    async fn delete(&self, delete_entry: &Statement) -> Result<(), Error> {
        let location = self.location;
        self.execute(
            delete_entry,
            &[
                &location.tenant,
                &location.keyspace,
                &location.version,
                &location.cache_key,
            ],
        )
        .await?;
        Ok(())
    }
}

#[async_trait]
impl CacheTier for PostgresCacheStore {
    fn name(&self) -> &'static str {
        "postgres"
    }

    async fn get(
        &self,
        scope: &KeyspaceScope,
        key: &CacheKey,
        now_ms: u64,
    ) -> Result<Option<CacheEntry>, Error> {
        let location = EntryLocation::new(scope, key)?;
        let now = to_column_integer(now_ms, "now")?;
        let row = self
            .engine
            .query_opt_cached(
                "cache.get",
                SELECT_LIVE_ENTRY,
                &[
                    &location.tenant,
                    &location.keyspace,
                    &location.version,
                    &location.cache_key,
                    &now,
                ],
            )
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        entry_row(&row)?.into_entry().map(Some)
    }

    async fn put_conditional(
        &self,
        scope: &KeyspaceScope,
        key: &CacheKey,
        entry: CacheEntry,
        condition: WriteCondition,
        now_ms: u64,
    ) -> Result<ConditionalOutcome, Error> {
        const OPERATION: &str = "cache.put";
        let location = EntryLocation::new(scope, key)?;
        let now = to_column_integer(now_ms, "now")?;
        let mut client = self.engine.acquire().await?;
        let [lock_key, lock_stored_revision, upsert, replace_tags] = self
            .prepare(
                &client,
                OPERATION,
                [
                    LOCK_KEY,
                    LOCK_STORED_REVISION,
                    UPSERT_WITH_NEXT_REVISION,
                    REPLACE_TAGS,
                ],
            )
            .await?;
        let transaction = self.engine.run(OPERATION, client.transaction()).await?;
        let key_transaction =
            KeyTransaction::lock(&self.engine, OPERATION, &transaction, &location, &lock_key)
                .await?;
        let stored = key_transaction
            .stored_revision(&lock_stored_revision)
            .await?;
        let current = live_revision(stored, now);
        if !condition.holds(current) {
            // Dropping the transaction rolls it back and releases the lock.
            return Ok(ConditionalOutcome::PreconditionFailed(current));
        }
        let revision = key_transaction
            .write_with_next_revision(&upsert, &entry)
            .await?;
        key_transaction
            .replace_tags(&replace_tags, &entry.tags)
            .await?;
        self.engine.run(OPERATION, transaction.commit()).await?;
        Ok(ConditionalOutcome::Applied(revision))
    }

    async fn delete_conditional(
        &self,
        scope: &KeyspaceScope,
        key: &CacheKey,
        condition: WriteCondition,
        now_ms: u64,
    ) -> Result<ConditionalOutcome, Error> {
        const OPERATION: &str = "cache.delete";
        let location = EntryLocation::new(scope, key)?;
        let now = to_column_integer(now_ms, "now")?;
        let mut client = self.engine.acquire().await?;
        let [lock_key, lock_stored_revision, delete_drawing_revision] = self
            .prepare(
                &client,
                OPERATION,
                [LOCK_KEY, LOCK_STORED_REVISION, DELETE_DRAWING_REVISION],
            )
            .await?;
        let transaction = self.engine.run(OPERATION, client.transaction()).await?;
        let key_transaction =
            KeyTransaction::lock(&self.engine, OPERATION, &transaction, &location, &lock_key)
                .await?;
        let stored = key_transaction
            .stored_revision(&lock_stored_revision)
            .await?;
        let current = live_revision(stored, now);
        if !condition.holds(current) {
            return Ok(ConditionalOutcome::PreconditionFailed(current));
        }
        // An expired row goes too: it was already absent.
        let revision = key_transaction
            .delete_drawing_revision(&delete_drawing_revision)
            .await?;
        self.engine.run(OPERATION, transaction.commit()).await?;
        Ok(ConditionalOutcome::Applied(revision))
    }

    async fn increment(
        &self,
        scope: &KeyspaceScope,
        key: &CacheKey,
        delta: i64,
        ttl_ms: Option<u64>,
        now_ms: u64,
    ) -> Result<(i64, CacheEntry), Error> {
        const OPERATION: &str = "cache.increment";
        let location = EntryLocation::new(scope, key)?;
        let mut client = self.engine.acquire().await?;
        let [lock_key, lock_stored_entry, upsert, replace_tags] = self
            .prepare(
                &client,
                OPERATION,
                [
                    LOCK_KEY,
                    LOCK_STORED_ENTRY,
                    UPSERT_WITH_NEXT_REVISION,
                    REPLACE_TAGS,
                ],
            )
            .await?;
        let transaction = self.engine.run(OPERATION, client.transaction()).await?;
        let key_transaction =
            KeyTransaction::lock(&self.engine, OPERATION, &transaction, &location, &lock_key)
                .await?;
        let stored = key_transaction.stored_entry(&lock_stored_entry).await?;
        let current = stored.filter(|entry| !entry.is_expired(now_ms));
        let (new_value, counter) = incremented_counter(current.as_ref(), delta, ttl_ms, now_ms)?;
        let revision = key_transaction
            .write_with_next_revision(&upsert, &counter)
            .await?;
        key_transaction
            .replace_tags(&replace_tags, &counter.tags)
            .await?;
        self.engine.run(OPERATION, transaction.commit()).await?;
        Ok((new_value, with_revision(counter, revision)))
    }

    async fn put_if_newer(
        &self,
        scope: &KeyspaceScope,
        key: &CacheKey,
        entry: CacheEntry,
    ) -> Result<(), Error> {
        const OPERATION: &str = "cache.put_if_newer";
        let location = EntryLocation::new(scope, key)?;
        let mut client = self.engine.acquire().await?;
        let [
            lock_key,
            lock_stored_revision,
            upsert,
            replace_tags,
            delete_entry,
        ] = self
            .prepare(
                &client,
                OPERATION,
                [
                    LOCK_KEY,
                    LOCK_STORED_REVISION,
                    UPSERT_WITH_GIVEN_REVISION,
                    REPLACE_TAGS,
                    DELETE_ENTRY,
                ],
            )
            .await?;
        let transaction = self.engine.run(OPERATION, client.transaction()).await?;
        let key_transaction =
            KeyTransaction::lock(&self.engine, OPERATION, &transaction, &location, &lock_key)
                .await?;
        // Expired rows count too: a copy older than anything this store
        // has held for the key is stale whether or not that row expired.
        let stored = key_transaction
            .stored_revision(&lock_stored_revision)
            .await?;
        if stored.is_some_and(|stored| stored.revision >= entry.revision) {
            return Ok(());
        }
        // The store keeps no tombstones: it is the tier others fill from,
        // so a newer deletion just removes the row.
        if entry.tombstone {
            key_transaction.delete(&delete_entry).await?;
        } else {
            key_transaction
                .write_with_given_revision(&upsert, &entry)
                .await?;
            key_transaction
                .replace_tags(&replace_tags, &entry.tags)
                .await?;
        }
        self.engine.run(OPERATION, transaction.commit()).await?;
        Ok(())
    }

    async fn invalidate(
        &self,
        scope: &KeyspaceScope,
        selector: &Selector,
        now_ms: u64,
    ) -> Result<u64, Error> {
        const OPERATION: &str = "cache.invalidate";
        let tenant = scope.tenant.as_str();
        let keyspace = scope.keyspace.as_str();
        let version = to_column_integer(scope.version, "keyspace version")?;
        let now = to_column_integer(now_ms, "now")?;
        let row = match selector {
            Selector::Pattern(pattern) => {
                let like = to_sql_like(pattern)?;
                self.engine
                    .query_one_cached(
                        OPERATION,
                        INVALIDATE_BY_PATTERN,
                        &[&tenant, &keyspace, &version, &like, &now],
                    )
                    .await?
            }
            Selector::Prefix(prefix) => {
                let upper_bound = prefix_upper_bound(prefix);
                self.engine
                    .query_one_cached(
                        OPERATION,
                        INVALIDATE_BY_PREFIX,
                        &[&tenant, &keyspace, &version, prefix, &upper_bound, &now],
                    )
                    .await?
            }
            Selector::Tag(tag) => {
                self.engine
                    .query_one_cached(
                        OPERATION,
                        INVALIDATE_BY_TAG,
                        &[&tenant, &keyspace, &version, tag, &now],
                    )
                    .await?
            }
        };
        from_column_integer(column(&row, 0)?, "invalidated count")
    }

    async fn list(
        &self,
        scope: &KeyspaceScope,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
        now_ms: u64,
    ) -> Result<KeyPage, Error> {
        let version = to_column_integer(scope.version, "keyspace version")?;
        let now = to_column_integer(now_ms, "now")?;
        let upper_bound = prefix_upper_bound(prefix);
        let after = after.unwrap_or_default();
        // One row more than asked says whether another page follows.
        let fetch = i64::try_from(limit.saturating_add(1)).unwrap_or(i64::MAX);
        let rows = self
            .engine
            .query_cached(
                "cache.list",
                LIST_LIVE_KEYS,
                &[
                    &scope.tenant.as_str(),
                    &scope.keyspace.as_str(),
                    &version,
                    &prefix,
                    &upper_bound,
                    &after,
                    &now,
                    &fetch,
                ],
            )
            .await?;
        let mut keys = Vec::with_capacity(rows.len());
        for row in &rows {
            keys.push(column::<String>(row, 0)?);
        }
        Ok(KeyPage::from_ordered_keys(keys, limit))
    }

    async fn reclaim(
        &self,
        scope: &KeyspaceScope,
        batch: usize,
        now_ms: u64,
    ) -> Result<u64, Error> {
        let version = to_column_integer(scope.version, "keyspace version")?;
        let now = to_column_integer(now_ms, "now")?;
        let batch = i64::try_from(batch).unwrap_or(i64::MAX);
        let row = self
            .engine
            .query_one_cached(
                "cache.reclaim",
                RECLAIM,
                &[
                    &scope.tenant.as_str(),
                    &scope.keyspace.as_str(),
                    &version,
                    &now,
                    &batch,
                ],
            )
            .await?;
        from_column_integer(column(&row, 0)?, "reclaimed count")
    }
}

/// One column of a row. A type mismatch means the schema and this code
/// disagree: a bug, not an outage.
fn column<'row, T: FromSql<'row>>(row: &'row Row, index: usize) -> Result<T, Error> {
    row.try_get(index).map_err(|error| {
        Error::internal(format!(
            "postgres: unexpected value in column {index}: {error}"
        ))
    })
}

fn entry_row(row: &Row) -> Result<EntryRow, Error> {
    Ok(EntryRow {
        value: column(row, 0)?,
        compressed: column(row, 1)?,
        encrypted: column(row, 2)?,
        content_type: column(row, 3)?,
        tags: column(row, 4)?,
        revision: column(row, 5)?,
        written_at_ms: column(row, 6)?,
        expires_at_ms: column(row, 7)?,
    })
}
