//! The port every cache tier implements: the in-process L1, Redis, and the
//! durable stores. One tier is *authoritative* for a keyspace (the store
//! when there is one, else Redis, else L1): it checks write conditions
//! atomically and hands out revisions. The others hold copies, which they
//! replace only with copies of a higher revision.

use async_trait::async_trait;
use plinth_core::Error;

use crate::model::{CacheEntry, CacheKey, KeyspaceScope, Revision, Selector, WriteCondition};

/// The outcome of a conditional write at the authoritative tier.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConditionalOutcome {
    /// Written; the entry now has this revision.
    Applied(Revision),
    /// The condition did not hold; the live entry's revision, if any.
    PreconditionFailed(Option<Revision>),
}

/// A page of keys.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyPage {
    pub keys: Vec<String>,
    /// Continue after this key; `None` on the last page.
    pub next_after: Option<String>,
}

impl KeyPage {
    /// A page from keys already in order: the first `limit` are kept, and a
    /// key beyond them only tells that another page exists.
    pub fn from_ordered_keys(mut keys: Vec<String>, limit: usize) -> Self {
        let has_more = keys.len() > limit;
        keys.truncate(limit);
        let next_after = if has_more { keys.last().cloned() } else { None };
        KeyPage { keys, next_after }
    }
}

#[async_trait]
pub trait CacheTier: Send + Sync {
    /// `l1`, `redis`, `sqlite` or `postgres`: used in stats and headers.
    fn name(&self) -> &'static str;

    /// The live entry, or `None` when absent, expired or a tombstone.
    async fn get(
        &self,
        scope: &KeyspaceScope,
        key: &CacheKey,
        now_ms: u64,
    ) -> Result<Option<CacheEntry>, Error>;

    /// Authoritative write: checks `condition` and assigns the next
    /// revision atomically. `entry.revision` is ignored.
    async fn put_conditional(
        &self,
        scope: &KeyspaceScope,
        key: &CacheKey,
        entry: CacheEntry,
        condition: WriteCondition,
        now_ms: u64,
    ) -> Result<ConditionalOutcome, Error>;

    /// Authoritative delete under `condition`. `Applied` carries the
    /// revision of the deletion (for tombstones in faster tiers); deleting
    /// an absent key with `WriteCondition::Always` is `Applied` too.
    async fn delete_conditional(
        &self,
        scope: &KeyspaceScope,
        key: &CacheKey,
        condition: WriteCondition,
        now_ms: u64,
    ) -> Result<ConditionalOutcome, Error>;

    /// Authoritative atomic increment of an integer value (absent counts as
    /// 0). Fails with `not_a_counter` when the value is not an integer.
    async fn increment(
        &self,
        scope: &KeyspaceScope,
        key: &CacheKey,
        delta: i64,
        ttl_ms: Option<u64>,
        now_ms: u64,
    ) -> Result<(i64, CacheEntry), Error>;

    /// Copy from a slower tier or from a write: replaces the stored copy
    /// only when `entry.revision` is higher (tombstones included).
    async fn put_if_newer(
        &self,
        scope: &KeyspaceScope,
        key: &CacheKey,
        entry: CacheEntry,
    ) -> Result<(), Error>;

    /// Removes every key the selector matches; returns how many went.
    async fn invalidate(
        &self,
        scope: &KeyspaceScope,
        selector: &Selector,
        now_ms: u64,
    ) -> Result<u64, Error>;

    /// Live keys starting with `prefix`, in key order, after `after`.
    async fn list(
        &self,
        scope: &KeyspaceScope,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
        now_ms: u64,
    ) -> Result<KeyPage, Error>;

    /// Physically removes entries of versions below `scope.version` and
    /// expired entries, at most `batch` of them; returns how many went.
    async fn reclaim(&self, scope: &KeyspaceScope, batch: usize, now_ms: u64)
    -> Result<u64, Error>;
}

/// `not_a_counter`, shared by every tier.
pub fn not_a_counter() -> Error {
    Error::conflict(
        "not_a_counter",
        "the value is not an integer, so it cannot be incremented",
    )
}

/// Parses a counter value: ASCII decimal integer.
pub fn parse_counter(value: &[u8]) -> Result<i64, Error> {
    let text = std::str::from_utf8(value).map_err(|_| not_a_counter())?;
    text.trim().parse::<i64>().map_err(|_| not_a_counter())
}
