//! The Redis tier: authoritative for keyspaces without a store, and a
//! shared copy (L2) in front of a store otherwise. Every method is correct
//! in both roles; the keyspace layer decides which ones it calls.
//!
//! # Key layout
//!
//! Every Redis key of one keyspace starts with
//! `plinth:cache:{<tenant>:<keyspace>}:`, the braces included:
//!
//! | Redis key | type | holds |
//! |---|---|---|
//! | `plinth:cache:{t:ks}:revision` | string | the keyspace's revision counter (`INCR`) |
//! | `plinth:cache:{t:ks}:<version>:k:<key>` | hash | one entry |
//! | `plinth:cache:{t:ks}:<version>:t:<tag>` | set | keys written with `tag` |
//!
//! An entry hash has the fields `value` (raw bytes), `revision` (decimal),
//! `flags` (decimal bits: 1 compressed, 2 encrypted), `content_type`,
//! `tags` (joined with `,`, which tags cannot contain), `written_at_ms`,
//! `expires_at_ms` (decimal, empty for never) and `tombstone` (`0`/`1`).
//!
//! The layout is unambiguous although keyspace names may contain `:` and
//! keys may contain anything printable: a tenant id has no `:`, so the
//! first `:` inside the braces ends it; a keyspace name has no `}`, so the
//! first `}` ends it; the version is digits; and the key is always the
//! last component, taking the rest of the Redis key. (Without the braces,
//! keyspace `a` at version 1 with key `k:2:k:x` and keyspace `a:1:k:k` at
//! version 2 with key `x` would share one Redis key.) The braces are also a
//! Redis Cluster hash tag, so one keyspace's keys live in one slot and
//! the scripts below, which compute tag-set keys from entry data, stay
//! single-slot.
//!
//! # Expiry and tombstones
//!
//! Entries with an expiry get `PEXPIREAT`, so Redis frees them itself;
//! reads also compare `expires_at_ms` with the caller's `now_ms`, like
//! every tier. A tombstone (a deletion copied from the store) is a hash
//! with `tombstone=1` that lives 60 s, or less if the deleted entry would
//! have expired sooner: long enough to refuse a late fill of an older
//! revision.
//!
//! Tag sets may hold keys whose entry is gone (expired, invalidated by
//! pattern) or was rewritten without the tag. Tag invalidation removes a
//! hash only when its own `tags` field still names the tag, and pops every
//! member it looks at, so stale members are cleaned lazily. A tag set
//! expires with its longest-lived member and is kept forever when a
//! member never expires.
//!
//! # Atomicity
//!
//! Every conditional write is one Lua script (sent by `EVALSHA`, loaded on
//! `NOSCRIPT` by the `redis` crate), so the check and the write cannot
//! interleave with another node's. Scripts never compute with revisions
//! or counters as Lua numbers (doubles, exact only to 2^53): revisions are
//! compared as decimal strings, and counters are added by `HINCRBY`.
//!
//! # Costs
//!
//! `get` is one `HGETALL`, a write one script call. Pattern and prefix
//! invalidation, `list` and `reclaim` walk the keyspace with `SCAN`, so
//! they cost O(Redis keys matching the pattern), not O(result). `list`
//! refuses prefixes holding more than [`LIST_SCAN_LIMIT`] keys with
//! `list_too_large`, because every page would scan them all again.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use plinth_core::{Error, ErrorKind};
use plinth_engines::RedisEngine;
use redis::{FromRedisValue, Script, ScriptInvocation};

use crate::model::TOMBSTONE_LIFETIME_MS;
use crate::model::{
    CacheEntry, CacheKey, KeyspaceScope, Revision, Selector, ValueEncoding, WriteCondition,
    validate_tags,
};
use crate::pattern::{prefix_to_redis_match, to_redis_match};
use crate::tier::{CacheTier, ConditionalOutcome, KeyPage, not_a_counter};

/// How many keys one `SCAN` (or tag batch) looks at per round trip.
const SCAN_PAGE_SIZE: usize = 500;
/// The most keys `list` scans for one prefix before refusing.
pub const LIST_SCAN_LIMIT: usize = 100_000;
/// The `Content-Type` of counters written by `increment`.
const COUNTER_CONTENT_TYPE: &str = "text/plain";

const FLAG_COMPRESSED: u8 = 1;
const FLAG_ENCRYPTED: u8 = 2;

/// Lua helpers shared by every script (prepended to each).
const LUA_PRELUDE: &str = r#"
-- Revisions are compared as decimal strings: as Lua numbers (doubles)
-- they would round above 2^53.
local function decimal_less(left, right)
  if #left ~= #right then
    return #left < #right
  end
  return left < right
end

-- Millisecond instants stay far below 2^53, so doubles are exact here.
local function is_expired(expires_at_ms, now_ms)
  if not expires_at_ms or expires_at_ms == '' then
    return false
  end
  return tonumber(expires_at_ms) <= tonumber(now_ms)
end

local function split_tags(joined_tags)
  local tags = {}
  for tag in string.gmatch(joined_tags, '[^,]+') do
    tags[#tags + 1] = tag
  end
  return tags
end

local function has_tag(joined_tags, wanted_tag)
  for _, tag in ipairs(split_tags(joined_tags)) do
    if tag == wanted_tag then
      return true
    end
  end
  return false
end

local function unindex_tags(tag_key_prefix, cache_key, joined_tags)
  for _, tag in ipairs(split_tags(joined_tags)) do
    redis.call('SREM', tag_key_prefix .. tag, cache_key)
  end
end

local function set_expiry(redis_key, expires_at_ms)
  if expires_at_ms == '' then
    redis.call('PERSIST', redis_key)
  else
    redis.call('PEXPIREAT', redis_key, expires_at_ms)
  end
end

-- A tag set must outlive every member's entry, or tag invalidation would
-- miss them: it takes the longest expiry of its members, and none once a
-- member never expires (GT treats "no expiry" as infinite).
local function index_tags(tag_key_prefix, cache_key, joined_tags, expires_at_ms)
  for _, tag in ipairs(split_tags(joined_tags)) do
    local tag_key = tag_key_prefix .. tag
    local existed = redis.call('EXISTS', tag_key) == 1
    redis.call('SADD', tag_key, cache_key)
    if expires_at_ms == '' then
      redis.call('PERSIST', tag_key)
    elseif existed then
      redis.call('PEXPIREAT', tag_key, expires_at_ms, 'GT')
    else
      redis.call('PEXPIREAT', tag_key, expires_at_ms)
    end
  end
end

-- What a conditional write needs to know of the stored hash. A tombstone
-- or an entry expired at now_ms has no live revision, but its stored
-- revision still bounds the next one.
local function read_entry_state(entry_key, now_ms)
  local stored = redis.call('HMGET', entry_key, 'revision', 'tombstone', 'expires_at_ms', 'tags')
  local state = {
    stored_revision = stored[1],
    live_revision = false,
    expires_at_ms = stored[3] or '',
    tags = stored[4] or '',
  }
  if stored[1] and stored[2] ~= '1' and not is_expired(stored[3], now_ms) then
    state.live_revision = stored[1]
  end
  return state
end

local function condition_holds(mode, expected_revision, live_revision)
  if mode == 'always' then
    return true
  end
  if mode == 'absent' then
    return not live_revision
  end
  return live_revision == expected_revision
end

-- Raising the counter to the key's stored revision first keeps revisions
-- increasing per key even when the counter was lost (evicted, flushed)
-- while entries survived; otherwise an old ETag could match a new write.
local function next_revision(counter_key, stored_revision)
  if stored_revision then
    local counter = redis.call('GET', counter_key)
    if not counter or not decimal_less(stored_revision, counter) then
      redis.call('SET', counter_key, stored_revision)
    end
  end
  redis.call('INCR', counter_key)
  return redis.call('GET', counter_key)
end

-- The entry fields arrive as ARGV[first] .. ARGV[first + 6], in the order
-- the Rust side pushes them (push_entry_arguments).
local function entry_from_arguments(first)
  return {
    value = ARGV[first],
    flags = ARGV[first + 1],
    content_type = ARGV[first + 2],
    tags = ARGV[first + 3],
    written_at_ms = ARGV[first + 4],
    expires_at_ms = ARGV[first + 5],
    tombstone = ARGV[first + 6],
  }
end

local function write_entry(entry_key, revision, entry)
  redis.call('HSET', entry_key,
    'value', entry.value,
    'revision', revision,
    'flags', entry.flags,
    'content_type', entry.content_type,
    'tags', entry.tags,
    'written_at_ms', entry.written_at_ms,
    'expires_at_ms', entry.expires_at_ms,
    'tombstone', entry.tombstone)
  set_expiry(entry_key, entry.expires_at_ms)
end

-- Removes one entry hash and its tag memberships. With required_tag, only
-- when the entry still carries that tag (tag sets may hold stale members).
-- Returns 1 when the removed entry was live at now_ms, else 0.
local function remove_entry(entry_key, cache_key, tag_key_prefix, now_ms, required_tag)
  local stored = redis.call('HMGET', entry_key, 'revision', 'tombstone', 'expires_at_ms', 'tags')
  if not stored[1] then
    return 0
  end
  local joined_tags = stored[4] or ''
  if required_tag and not has_tag(joined_tags, required_tag) then
    return 0
  end
  unindex_tags(tag_key_prefix, cache_key, joined_tags)
  redis.call('UNLINK', entry_key)
  if stored[2] == '1' or is_expired(stored[3], now_ms) then
    return 0
  end
  return 1
end

-- Rust's i64 parsing accepts surrounding whitespace (after trim), a `+`
-- and leading zeros; HINCRBY accepts none of them, so counters are
-- rewritten in canonical form first. Out-of-range digits stay for
-- HINCRBY to refuse.
local function canonical_integer(text)
  local sign, digits = string.match(text, '^%s*([+-]?)(%d+)%s*$')
  if not digits then
    return false
  end
  digits = string.gsub(digits, '^0+', '')
  if digits == '' then
    return '0'
  end
  if sign == '-' then
    return '-' .. digits
  end
  return digits
end
"#;

/// Authoritative conditional put.
///
/// KEYS: entry hash, revision counter. ARGV: cache key, tag key prefix,
/// now_ms, condition (`always`, `absent`, `revision`), expected revision
/// (or empty), then the seven entry fields.
/// Returns `{'applied', revision}` or `{'failed', live revision or ''}`.
const PUT_CONDITIONAL_SCRIPT: &str = r#"
local entry_key, counter_key = KEYS[1], KEYS[2]
local cache_key, tag_key_prefix, now_ms = ARGV[1], ARGV[2], ARGV[3]
local state = read_entry_state(entry_key, now_ms)
if not condition_holds(ARGV[4], ARGV[5], state.live_revision) then
  return { 'failed', state.live_revision or '' }
end
local revision = next_revision(counter_key, state.stored_revision)
local entry = entry_from_arguments(6)
unindex_tags(tag_key_prefix, cache_key, state.tags)
write_entry(entry_key, revision, entry)
index_tags(tag_key_prefix, cache_key, entry.tags, entry.expires_at_ms)
return { 'applied', revision }
"#;

/// Authoritative conditional delete.
///
/// KEYS and the first five ARGV as for the put. Returns
/// `{'applied', revision of the deletion}` or `{'failed', live revision or ''}`.
const DELETE_CONDITIONAL_SCRIPT: &str = r#"
local entry_key, counter_key = KEYS[1], KEYS[2]
local cache_key, tag_key_prefix, now_ms = ARGV[1], ARGV[2], ARGV[3]
local state = read_entry_state(entry_key, now_ms)
if not condition_holds(ARGV[4], ARGV[5], state.live_revision) then
  return { 'failed', state.live_revision or '' }
end
local revision = next_revision(counter_key, state.stored_revision)
unindex_tags(tag_key_prefix, cache_key, state.tags)
redis.call('UNLINK', entry_key)
return { 'applied', revision }
"#;

/// Authoritative increment. A live entry keeps its tags and expiry; an
/// absent, expired or tombstoned one starts at 0 with the given expiry.
///
/// KEYS: entry hash, revision counter. ARGV: cache key, tag key prefix,
/// now_ms, delta, expires_at_ms for a new counter (or empty), the
/// counter's content type.
/// Returns `{'applied', value, revision, tags, expires_at_ms}`,
/// `{'not_a_counter'}` or `{'counter_overflow'}`, the latter two with
/// the entry untouched.
const INCREMENT_SCRIPT: &str = r#"
local entry_key, counter_key = KEYS[1], KEYS[2]
local cache_key, tag_key_prefix, now_ms, delta = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local state = read_entry_state(entry_key, now_ms)
local tags, expires_at_ms, original_value = '', ARGV[5], false
if state.live_revision then
  original_value = redis.call('HGET', entry_key, 'value')
  local canonical_value = canonical_integer(original_value)
  if not canonical_value then
    return { 'not_a_counter' }
  end
  redis.call('HSET', entry_key, 'value', canonical_value)
  tags, expires_at_ms = state.tags, state.expires_at_ms
else
  unindex_tags(tag_key_prefix, cache_key, state.tags)
  redis.call('DEL', entry_key)
  redis.call('HSET', entry_key, 'value', '0')
end
local added = redis.pcall('HINCRBY', entry_key, 'value', delta)
if type(added) == 'table' and added.err then
  -- Only a live counter gets here (0 + delta always fits): put its
  -- value back as it was.
  redis.call('HSET', entry_key, 'value', original_value)
  if string.find(added.err, 'overflow', 1, true) then
    return { 'counter_overflow' }
  end
  return { 'not_a_counter' }
end
local revision = next_revision(counter_key, state.stored_revision)
local entry = {
  value = redis.call('HGET', entry_key, 'value'),
  flags = '0',
  content_type = ARGV[6],
  tags = tags,
  written_at_ms = now_ms,
  expires_at_ms = expires_at_ms,
  tombstone = '0',
}
write_entry(entry_key, revision, entry)
return { 'applied', entry.value, revision, entry.tags, entry.expires_at_ms }
"#;

/// A copy from the authoritative tier: replaces the stored hash (tombstone
/// or not) only when the copy's revision is higher.
///
/// KEYS: entry hash. ARGV: cache key, tag key prefix, revision, the seven
/// entry fields, tombstone lifetime in ms. Returns 1 when written, else 0.
const PUT_IF_NEWER_SCRIPT: &str = r#"
local entry_key = KEYS[1]
local cache_key, tag_key_prefix, revision = ARGV[1], ARGV[2], ARGV[3]
local stored = redis.call('HMGET', entry_key, 'revision', 'tags')
if stored[1] and not decimal_less(stored[1], revision) then
  return 0
end
local entry = entry_from_arguments(4)
unindex_tags(tag_key_prefix, cache_key, stored[2] or '')
write_entry(entry_key, revision, entry)
if entry.tombstone == '1' then
  redis.call('PEXPIRE', entry_key, ARGV[11])
  if entry.expires_at_ms ~= '' then
    redis.call('PEXPIREAT', entry_key, entry.expires_at_ms, 'LT')
  end
  return 1
end
index_tags(tag_key_prefix, cache_key, entry.tags, entry.expires_at_ms)
return 1
"#;

/// Removes the entries found by one `SCAN` page of a pattern or prefix
/// invalidation.
///
/// KEYS: entry hashes. ARGV: entry key prefix, tag key prefix, now_ms.
/// Returns how many live entries went.
const DELETE_ENTRIES_SCRIPT: &str = r#"
local entry_key_prefix, tag_key_prefix, now_ms = ARGV[1], ARGV[2], ARGV[3]
local removed = 0
for _, entry_key in ipairs(KEYS) do
  local cache_key = string.sub(entry_key, #entry_key_prefix + 1)
  removed = removed + remove_entry(entry_key, cache_key, tag_key_prefix, now_ms, false)
end
return removed
"#;

/// One batch of a tag invalidation. Members are popped, not read, so a key
/// written with the tag while the invalidation runs is either popped and
/// removed or stays indexed; the set is never deleted wholesale.
///
/// KEYS: the tag set. ARGV: entry key prefix, tag key prefix, now_ms, tag,
/// batch size. Returns `{live entries removed, members left}`.
const INVALIDATE_TAG_BATCH_SCRIPT: &str = r#"
local tag_key = KEYS[1]
local entry_key_prefix, tag_key_prefix, now_ms, tag = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local members = redis.call('SPOP', tag_key, ARGV[5])
local removed = 0
for _, cache_key in ipairs(members) do
  removed = removed + remove_entry(entry_key_prefix .. cache_key, cache_key, tag_key_prefix, now_ms, tag)
end
return { removed, redis.call('SCARD', tag_key) }
"#;

/// The scripts, hashed once; the `redis` crate sends `EVALSHA` and loads a
/// script on `NOSCRIPT` (after a Redis restart or `SCRIPT FLUSH`).
struct CacheScripts {
    put_conditional: Script,
    delete_conditional: Script,
    increment: Script,
    put_if_newer: Script,
    delete_entries: Script,
    invalidate_tag_batch: Script,
}

impl CacheScripts {
    fn new() -> Self {
        let with_prelude = |body: &str| Script::new(&format!("{LUA_PRELUDE}\n{body}"));
        CacheScripts {
            put_conditional: with_prelude(PUT_CONDITIONAL_SCRIPT),
            delete_conditional: with_prelude(DELETE_CONDITIONAL_SCRIPT),
            increment: with_prelude(INCREMENT_SCRIPT),
            put_if_newer: with_prelude(PUT_IF_NEWER_SCRIPT),
            delete_entries: with_prelude(DELETE_ENTRIES_SCRIPT),
            invalidate_tag_batch: with_prelude(INVALIDATE_TAG_BATCH_SCRIPT),
        }
    }
}

/// The Redis keys of one keyspace at one version (see the module doc).
struct KeyLayout {
    keyspace_prefix: String,
    version: u64,
}

/// What a Redis key under a keyspace prefix is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StoredKeyKind {
    Entry,
    TagIndex,
}

impl KeyLayout {
    fn new(scope: &KeyspaceScope) -> Self {
        KeyLayout {
            keyspace_prefix: format!(
                "plinth:cache:{{{}:{}}}:",
                scope.tenant.as_str(),
                scope.keyspace.as_str()
            ),
            version: scope.version,
        }
    }

    fn revision_counter_key(&self) -> String {
        format!("{}revision", self.keyspace_prefix)
    }

    fn entry_key_prefix(&self) -> String {
        format!("{}{}:k:", self.keyspace_prefix, self.version)
    }

    fn entry_key(&self, key: &CacheKey) -> String {
        format!("{}{}", self.entry_key_prefix(), key.as_str())
    }

    fn tag_key_prefix(&self) -> String {
        format!("{}{}:t:", self.keyspace_prefix, self.version)
    }

    fn tag_key(&self, tag: &str) -> String {
        format!("{}{}", self.tag_key_prefix(), tag)
    }

    /// The version and kind of a Redis key found under this keyspace's
    /// prefix; `None` for the revision counter and anything foreign.
    fn classify(&self, redis_key: &str) -> Option<(u64, StoredKeyKind)> {
        let rest = redis_key.strip_prefix(&self.keyspace_prefix)?;
        let (version_text, rest) = rest.split_once(':')?;
        if version_text.is_empty() || !version_text.bytes().all(|byte| byte.is_ascii_digit()) {
            return None;
        }
        let version = version_text.parse::<u64>().ok()?;
        if rest.starts_with("k:") {
            return Some((version, StoredKeyKind::Entry));
        }
        if rest.starts_with("t:") {
            return Some((version, StoredKeyKind::TagIndex));
        }
        None
    }
}

/// The Redis cache tier of every keyspace that has `redis://` as L2.
pub struct RedisCacheTier {
    engine: Arc<RedisEngine>,
    scripts: CacheScripts,
}

impl RedisCacheTier {
    pub fn new(engine: Arc<RedisEngine>) -> Self {
        RedisCacheTier {
            engine,
            scripts: CacheScripts::new(),
        }
    }

    async fn query<T: FromRedisValue>(
        &self,
        operation: &'static str,
        command: &redis::Cmd,
    ) -> Result<T, Error> {
        let mut connection = self.engine.connection()?;
        self.engine
            .run(operation, command.query_async(&mut connection))
            .await
    }

    async fn query_pipeline<T: FromRedisValue>(
        &self,
        operation: &'static str,
        pipeline: &redis::Pipeline,
    ) -> Result<T, Error> {
        let mut connection = self.engine.connection()?;
        self.engine
            .run(operation, pipeline.query_async(&mut connection))
            .await
    }

    async fn invoke<T: FromRedisValue>(
        &self,
        operation: &'static str,
        invocation: &ScriptInvocation<'_>,
    ) -> Result<T, Error> {
        let mut connection = self.engine.connection()?;
        self.engine
            .run(operation, invocation.invoke_async(&mut connection))
            .await
    }

    /// One `SCAN` page: the next cursor (0 when done) and the keys found.
    async fn scan_page(
        &self,
        operation: &'static str,
        cursor: u64,
        redis_pattern: &str,
    ) -> Result<(u64, Vec<String>), Error> {
        let mut command = redis::cmd("SCAN");
        command
            .arg(cursor)
            .arg("MATCH")
            .arg(redis_pattern)
            .arg("COUNT")
            .arg(SCAN_PAGE_SIZE);
        let (next_cursor, raw_keys): (u64, Vec<Vec<u8>>) = self.query(operation, &command).await?;
        // Keys this tier writes are ASCII; anything else is not ours.
        let keys = raw_keys
            .into_iter()
            .filter_map(|raw_key| String::from_utf8(raw_key).ok())
            .collect();
        Ok((next_cursor, keys))
    }

    /// Removes every entry whose Redis key matches `redis_pattern`. The
    /// loop ends because a full `SCAN` iteration always returns cursor 0;
    /// each page is removed by one script call.
    async fn invalidate_matching(
        &self,
        layout: &KeyLayout,
        redis_pattern: &str,
        now_ms: u64,
    ) -> Result<u64, Error> {
        let mut removed = 0;
        let mut cursor = 0;
        loop {
            let (next_cursor, entry_keys) = self
                .scan_page("cache.invalidate_scan", cursor, redis_pattern)
                .await?;
            if !entry_keys.is_empty() {
                removed += self.delete_entries(layout, &entry_keys, now_ms).await?;
            }
            if next_cursor == 0 {
                return Ok(removed);
            }
            cursor = next_cursor;
        }
    }

    async fn delete_entries(
        &self,
        layout: &KeyLayout,
        entry_keys: &[String],
        now_ms: u64,
    ) -> Result<u64, Error> {
        let mut invocation = self.scripts.delete_entries.prepare_invoke();
        for entry_key in entry_keys {
            invocation.key(entry_key);
        }
        invocation
            .arg(layout.entry_key_prefix())
            .arg(layout.tag_key_prefix())
            .arg(now_ms);
        self.invoke("cache.invalidate", &invocation).await
    }

    /// Pops the tag set batch by batch until it is empty.
    async fn invalidate_tag(
        &self,
        layout: &KeyLayout,
        tag: &str,
        now_ms: u64,
    ) -> Result<u64, Error> {
        let mut removed = 0;
        loop {
            let mut invocation = self.scripts.invalidate_tag_batch.prepare_invoke();
            invocation
                .key(layout.tag_key(tag))
                .arg(layout.entry_key_prefix())
                .arg(layout.tag_key_prefix())
                .arg(now_ms)
                .arg(tag)
                .arg(SCAN_PAGE_SIZE);
            let (batch_removed, members_left): (u64, u64) =
                self.invoke("cache.invalidate_tag", &invocation).await?;
            removed += batch_removed;
            if members_left == 0 {
                return Ok(removed);
            }
        }
    }

    /// Keys under `redis_pattern` that sort after `after`, sorted and
    /// deduplicated (`SCAN` may return a key twice).
    async fn list_candidates(
        &self,
        layout: &KeyLayout,
        redis_pattern: &str,
        after: Option<&str>,
    ) -> Result<Vec<String>, Error> {
        let entry_key_prefix = layout.entry_key_prefix();
        let mut candidates = Vec::new();
        let mut scanned = 0;
        let mut cursor = 0;
        loop {
            let (next_cursor, entry_keys) = self
                .scan_page("cache.list_scan", cursor, redis_pattern)
                .await?;
            scanned += entry_keys.len();
            if scanned > LIST_SCAN_LIMIT {
                return Err(list_too_large());
            }
            for entry_key in entry_keys {
                let Some(cache_key) = entry_key.strip_prefix(entry_key_prefix.as_str()) else {
                    continue;
                };
                if after.is_none_or(|after| cache_key > after) {
                    candidates.push(cache_key.to_string());
                }
            }
            if next_cursor == 0 {
                break;
            }
            cursor = next_cursor;
        }
        candidates.sort_unstable();
        candidates.dedup();
        Ok(candidates)
    }

    /// The first `wanted` live keys of the sorted `candidates`, checked a
    /// page at a time so a small page of a large prefix reads little.
    async fn first_live_keys(
        &self,
        layout: &KeyLayout,
        candidates: &[String],
        wanted: usize,
        now_ms: u64,
    ) -> Result<Vec<String>, Error> {
        let entry_key_prefix = layout.entry_key_prefix();
        let mut live_keys = Vec::new();
        for chunk in candidates.chunks(SCAN_PAGE_SIZE) {
            let mut pipeline = redis::pipe();
            for cache_key in chunk {
                pipeline
                    .cmd("HMGET")
                    .arg(format!("{entry_key_prefix}{cache_key}"))
                    .arg("revision")
                    .arg("tombstone")
                    .arg("expires_at_ms");
            }
            let states: Vec<Vec<Option<String>>> =
                self.query_pipeline("cache.list_check", &pipeline).await?;
            for (cache_key, state) in chunk.iter().zip(states) {
                if stored_state_is_live(&state, now_ms) {
                    live_keys.push(cache_key.clone());
                }
                if live_keys.len() >= wanted {
                    return Ok(live_keys);
                }
            }
        }
        Ok(live_keys)
    }

    /// Unlinks old tag sets and old entries; returns how many entries went
    /// (tag sets are bookkeeping, not entries).
    async fn unlink_stale(
        &self,
        stale_entries: &[String],
        stale_tag_indexes: &[String],
    ) -> Result<u64, Error> {
        if !stale_tag_indexes.is_empty() {
            let mut command = redis::cmd("UNLINK");
            command.arg(stale_tag_indexes);
            let _unlinked_tag_indexes: u64 = self.query("cache.reclaim", &command).await?;
        }
        if stale_entries.is_empty() {
            return Ok(0);
        }
        let mut command = redis::cmd("UNLINK");
        command.arg(stale_entries);
        self.query("cache.reclaim", &command).await
    }
}

#[async_trait]
impl CacheTier for RedisCacheTier {
    fn name(&self) -> &'static str {
        "redis"
    }

    async fn get(
        &self,
        scope: &KeyspaceScope,
        key: &CacheKey,
        now_ms: u64,
    ) -> Result<Option<CacheEntry>, Error> {
        let entry_key = KeyLayout::new(scope).entry_key(key);
        let mut command = redis::cmd("HGETALL");
        command.arg(&entry_key);
        let fields: HashMap<String, Vec<u8>> = self.query("cache.get", &command).await?;
        if fields.is_empty() {
            return Ok(None);
        }
        let entry = entry_from_fields(&entry_key, &fields)?;
        if entry.tombstone || entry.is_expired(now_ms) {
            return Ok(None);
        }
        Ok(Some(entry))
    }

    async fn put_conditional(
        &self,
        scope: &KeyspaceScope,
        key: &CacheKey,
        entry: CacheEntry,
        condition: WriteCondition,
        now_ms: u64,
    ) -> Result<ConditionalOutcome, Error> {
        validate_tags(&entry.tags)?;
        let layout = KeyLayout::new(scope);
        let written = CacheEntry {
            tombstone: false,
            ..entry
        };
        let mut invocation = self.scripts.put_conditional.prepare_invoke();
        push_conditional_arguments(&mut invocation, &layout, key, condition, now_ms);
        push_entry_arguments(&mut invocation, &written);
        let reply: Vec<String> = self.invoke("cache.put_conditional", &invocation).await?;
        parse_conditional_reply(&reply)
    }

    async fn delete_conditional(
        &self,
        scope: &KeyspaceScope,
        key: &CacheKey,
        condition: WriteCondition,
        now_ms: u64,
    ) -> Result<ConditionalOutcome, Error> {
        let layout = KeyLayout::new(scope);
        let mut invocation = self.scripts.delete_conditional.prepare_invoke();
        push_conditional_arguments(&mut invocation, &layout, key, condition, now_ms);
        let reply: Vec<String> = self.invoke("cache.delete_conditional", &invocation).await?;
        parse_conditional_reply(&reply)
    }

    async fn increment(
        &self,
        scope: &KeyspaceScope,
        key: &CacheKey,
        delta: i64,
        ttl_ms: Option<u64>,
        now_ms: u64,
    ) -> Result<(i64, CacheEntry), Error> {
        let layout = KeyLayout::new(scope);
        let new_counter_expires_at = ttl_ms.map(|ttl| now_ms.saturating_add(ttl));
        let mut invocation = self.scripts.increment.prepare_invoke();
        invocation
            .key(layout.entry_key(key))
            .key(layout.revision_counter_key())
            .arg(key.as_str())
            .arg(layout.tag_key_prefix())
            .arg(now_ms)
            .arg(delta)
            .arg(optional_decimal(new_counter_expires_at))
            .arg(COUNTER_CONTENT_TYPE);
        let reply: Vec<String> = self.invoke("cache.increment", &invocation).await?;
        parse_increment_reply(&reply, now_ms)
    }

    async fn put_if_newer(
        &self,
        scope: &KeyspaceScope,
        key: &CacheKey,
        entry: CacheEntry,
    ) -> Result<(), Error> {
        validate_tags(&entry.tags)?;
        let layout = KeyLayout::new(scope);
        let mut invocation = self.scripts.put_if_newer.prepare_invoke();
        invocation
            .key(layout.entry_key(key))
            .arg(key.as_str())
            .arg(layout.tag_key_prefix())
            .arg(entry.revision);
        push_entry_arguments(&mut invocation, &entry);
        invocation.arg(TOMBSTONE_LIFETIME_MS);
        let _written: u64 = self.invoke("cache.put_if_newer", &invocation).await?;
        Ok(())
    }

    async fn invalidate(
        &self,
        scope: &KeyspaceScope,
        selector: &Selector,
        now_ms: u64,
    ) -> Result<u64, Error> {
        let layout = KeyLayout::new(scope);
        match selector {
            Selector::Pattern(pattern) => {
                let redis_pattern = to_redis_match(&layout.entry_key_prefix(), pattern)?;
                self.invalidate_matching(&layout, &redis_pattern, now_ms)
                    .await
            }
            Selector::Prefix(prefix) => {
                let redis_pattern = prefix_to_redis_match(&layout.entry_key_prefix(), prefix);
                self.invalidate_matching(&layout, &redis_pattern, now_ms)
                    .await
            }
            Selector::Tag(tag) => self.invalidate_tag(&layout, tag, now_ms).await,
        }
    }

    async fn list(
        &self,
        scope: &KeyspaceScope,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
        now_ms: u64,
    ) -> Result<KeyPage, Error> {
        let layout = KeyLayout::new(scope);
        let redis_pattern = prefix_to_redis_match(&layout.entry_key_prefix(), prefix);
        let candidates = self.list_candidates(&layout, &redis_pattern, after).await?;
        let wanted = limit.saturating_add(1);
        let keys = self
            .first_live_keys(&layout, &candidates, wanted, now_ms)
            .await?;
        Ok(KeyPage::from_ordered_keys(keys, limit))
    }

    /// Unlinks entry hashes (and tag sets) of versions below
    /// `scope.version`. Expired entries need nothing: Redis removes them at
    /// their `PEXPIREAT`.
    async fn reclaim(
        &self,
        scope: &KeyspaceScope,
        batch: usize,
        _now_ms: u64,
    ) -> Result<u64, Error> {
        let layout = KeyLayout::new(scope);
        let redis_pattern = prefix_to_redis_match(&layout.keyspace_prefix, "");
        let mut reclaimed = 0u64;
        let mut cursor = 0;
        while reclaimed < batch as u64 {
            let (next_cursor, redis_keys) = self
                .scan_page("cache.reclaim_scan", cursor, &redis_pattern)
                .await?;
            let room = batch - reclaimed as usize;
            let (stale_entries, stale_tag_indexes) =
                stale_keys(&layout, redis_keys, scope.version, room);
            reclaimed += self
                .unlink_stale(&stale_entries, &stale_tag_indexes)
                .await?;
            if next_cursor == 0 {
                break;
            }
            cursor = next_cursor;
        }
        Ok(reclaimed)
    }
}

/// Splits one `SCAN` page into entries (at most `room`) and tag sets of
/// versions below `current_version`.
fn stale_keys(
    layout: &KeyLayout,
    redis_keys: Vec<String>,
    current_version: u64,
    room: usize,
) -> (Vec<String>, Vec<String>) {
    let mut stale_entries = Vec::new();
    let mut stale_tag_indexes = Vec::new();
    for redis_key in redis_keys {
        let Some((version, kind)) = layout.classify(&redis_key) else {
            continue;
        };
        if version >= current_version {
            continue;
        }
        match kind {
            StoredKeyKind::Entry if stale_entries.len() < room => stale_entries.push(redis_key),
            StoredKeyKind::Entry => {}
            StoredKeyKind::TagIndex => stale_tag_indexes.push(redis_key),
        }
    }
    (stale_entries, stale_tag_indexes)
}

fn push_conditional_arguments(
    invocation: &mut ScriptInvocation<'_>,
    layout: &KeyLayout,
    key: &CacheKey,
    condition: WriteCondition,
    now_ms: u64,
) {
    let (mode, expected_revision) = match condition {
        WriteCondition::Always => ("always", String::new()),
        WriteCondition::Absent => ("absent", String::new()),
        WriteCondition::RevisionIs(revision) => ("revision", revision.to_string()),
    };
    invocation
        .key(layout.entry_key(key))
        .key(layout.revision_counter_key())
        .arg(key.as_str())
        .arg(layout.tag_key_prefix())
        .arg(now_ms)
        .arg(mode)
        .arg(expected_revision);
}

/// The seven entry fields, in the order `entry_from_arguments` reads them.
fn push_entry_arguments(invocation: &mut ScriptInvocation<'_>, entry: &CacheEntry) {
    invocation
        .arg(&entry.value[..])
        .arg(encoding_flags(entry.encoding))
        .arg(&entry.content_type)
        .arg(entry.tags.join(","))
        .arg(entry.written_at_ms)
        .arg(optional_decimal(entry.expires_at_ms))
        .arg(if entry.tombstone { "1" } else { "0" });
}

fn optional_decimal(value: Option<u64>) -> String {
    value.map(|value| value.to_string()).unwrap_or_default()
}

fn encoding_flags(encoding: ValueEncoding) -> u8 {
    let mut flags = 0;
    if encoding.compressed {
        flags |= FLAG_COMPRESSED;
    }
    if encoding.encrypted {
        flags |= FLAG_ENCRYPTED;
    }
    flags
}

fn encoding_from_flags(flags: u8) -> ValueEncoding {
    ValueEncoding {
        compressed: flags & FLAG_COMPRESSED != 0,
        encrypted: flags & FLAG_ENCRYPTED != 0,
    }
}

fn parse_conditional_reply(reply: &[String]) -> Result<ConditionalOutcome, Error> {
    match reply {
        [status, revision] if status == "applied" => {
            Ok(ConditionalOutcome::Applied(parse_revision(revision)?))
        }
        [status, revision] if status == "failed" && revision.is_empty() => {
            Ok(ConditionalOutcome::PreconditionFailed(None))
        }
        [status, revision] if status == "failed" => Ok(ConditionalOutcome::PreconditionFailed(
            Some(parse_revision(revision)?),
        )),
        _ => Err(unexpected_reply(reply)),
    }
}

fn parse_increment_reply(reply: &[String], now_ms: u64) -> Result<(i64, CacheEntry), Error> {
    match reply {
        [status, value, revision, tags, expires_at_ms] if status == "applied" => {
            let counter = value.parse::<i64>().map_err(|_| unexpected_reply(reply))?;
            let entry = CacheEntry {
                value: Bytes::from(value.clone()),
                encoding: ValueEncoding::default(),
                content_type: COUNTER_CONTENT_TYPE.to_string(),
                tags: split_tags(tags),
                revision: parse_revision(revision)?,
                written_at_ms: now_ms,
                expires_at_ms: parse_optional_decimal(expires_at_ms)
                    .ok_or_else(|| unexpected_reply(reply))?,
                tombstone: false,
            };
            Ok((counter, entry))
        }
        [status] if status == "not_a_counter" => Err(not_a_counter()),
        [status] if status == "counter_overflow" => Err(counter_overflow()),
        _ => Err(unexpected_reply(reply)),
    }
}

fn parse_revision(text: &str) -> Result<Revision, Error> {
    text.parse::<Revision>()
        .map_err(|_| Error::internal(format!("redis returned a malformed revision `{text}`")))
}

/// `""` is `Some(None)` (never expires); garbage is `None`.
fn parse_optional_decimal(text: &str) -> Option<Option<u64>> {
    if text.is_empty() {
        return Some(None);
    }
    text.parse::<u64>().ok().map(Some)
}

fn split_tags(joined_tags: &str) -> Vec<String> {
    joined_tags
        .split(',')
        .filter(|tag| !tag.is_empty())
        .map(str::to_string)
        .collect()
}

/// Rebuilds an entry from its `HGETALL` fields.
fn entry_from_fields(
    entry_key: &str,
    fields: &HashMap<String, Vec<u8>>,
) -> Result<CacheEntry, Error> {
    let text_field = |name: &'static str| -> Result<&str, Error> {
        let raw = fields
            .get(name)
            .ok_or_else(|| malformed_entry(entry_key, name))?;
        std::str::from_utf8(raw).map_err(|_| malformed_entry(entry_key, name))
    };
    let decimal_field = |name: &'static str| -> Result<u64, Error> {
        text_field(name)?
            .parse::<u64>()
            .map_err(|_| malformed_entry(entry_key, name))
    };
    let value = fields
        .get("value")
        .ok_or_else(|| malformed_entry(entry_key, "value"))?;
    let flags =
        u8::try_from(decimal_field("flags")?).map_err(|_| malformed_entry(entry_key, "flags"))?;
    let expires_at_ms = parse_optional_decimal(text_field("expires_at_ms")?)
        .ok_or_else(|| malformed_entry(entry_key, "expires_at_ms"))?;
    Ok(CacheEntry {
        value: Bytes::copy_from_slice(value),
        encoding: encoding_from_flags(flags),
        content_type: text_field("content_type")?.to_string(),
        tags: split_tags(text_field("tags")?),
        revision: decimal_field("revision")?,
        written_at_ms: decimal_field("written_at_ms")?,
        expires_at_ms,
        tombstone: text_field("tombstone")? == "1",
    })
}

/// Whether an `HMGET revision tombstone expires_at_ms` reply is a live
/// entry at `now_ms`. A hash that vanished since the `SCAN` has no revision.
fn stored_state_is_live(state: &[Option<String>], now_ms: u64) -> bool {
    let [Some(_revision), tombstone, expires_at_ms] = state else {
        return false;
    };
    if tombstone.as_deref() == Some("1") {
        return false;
    }
    let expires_at_ms = expires_at_ms
        .as_deref()
        .and_then(parse_optional_decimal)
        .flatten();
    expires_at_ms.is_none_or(|expires_at_ms| expires_at_ms > now_ms)
}

fn counter_overflow() -> Error {
    Error::conflict(
        "counter_overflow",
        "the increment would overflow a 64-bit integer",
    )
}

fn list_too_large() -> Error {
    Error::new(
        ErrorKind::Unprocessable,
        "list_too_large",
        format!(
            "more than {LIST_SCAN_LIMIT} keys start with this prefix in redis; list with a longer prefix"
        ),
    )
}

fn malformed_entry(entry_key: &str, field: &str) -> Error {
    Error::internal(format!(
        "redis cache entry {entry_key} has a missing or malformed `{field}` field"
    ))
}

fn unexpected_reply(reply: &[String]) -> Error {
    Error::internal(format!(
        "unexpected reply from a redis cache script: {reply:?}"
    ))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use plinth_core::{ResourceName, TenantId};

    use super::*;
    use crate::pattern::glob_matches;

    fn scope(tenant: &str, keyspace: &str, version: u64) -> KeyspaceScope {
        KeyspaceScope {
            tenant: TenantId::parse(tenant).unwrap(),
            keyspace: ResourceName::parse("keyspace", keyspace).unwrap(),
            version,
        }
    }

    fn key(text: &str) -> CacheKey {
        CacheKey::parse(text).unwrap()
    }

    #[test]
    fn layout_braces_the_keyspace_and_puts_the_key_last() {
        let layout = KeyLayout::new(&scope("acme", "sessions:eu", 3));
        assert_eq!(
            layout.revision_counter_key(),
            "plinth:cache:{acme:sessions:eu}:revision"
        );
        assert_eq!(
            layout.entry_key(&key("user:42:*")),
            "plinth:cache:{acme:sessions:eu}:3:k:user:42:*"
        );
        assert_eq!(
            layout.tag_key("team:a"),
            "plinth:cache:{acme:sessions:eu}:3:t:team:a"
        );
    }

    #[test]
    fn keyspaces_with_separators_in_their_names_never_share_a_redis_key() {
        // Without the braces these two would both be
        // `plinth:cache:t:a:1:k:k:2:k:x`.
        let short = KeyLayout::new(&scope("t", "a", 1)).entry_key(&key("k:2:k:x"));
        let long = KeyLayout::new(&scope("t", "a:1:k:k", 2)).entry_key(&key("x"));
        assert_ne!(short, long);
        let counter_lookalike = KeyLayout::new(&scope("t", "a", 1)).entry_key(&key("revision"));
        assert_ne!(
            counter_lookalike,
            KeyLayout::new(&scope("t", "a", 1)).revision_counter_key()
        );
    }

    #[test]
    fn scan_patterns_stay_inside_their_keyspace_and_version() {
        let layout = KeyLayout::new(&scope("t", "a", 1));
        let whole_keyspace = prefix_to_redis_match(&layout.keyspace_prefix, "");
        let every_entry = prefix_to_redis_match(&layout.entry_key_prefix(), "");
        let neighbours = [
            KeyLayout::new(&scope("t", "a:1", 1)).entry_key(&key("x")),
            KeyLayout::new(&scope("t", "a.b", 1)).entry_key(&key("x")),
            KeyLayout::new(&scope("t2", "a", 1)).entry_key(&key("x")),
            KeyLayout::new(&scope("t", "ab", 1)).entry_key(&key("x")),
        ];
        for neighbour in &neighbours {
            assert!(!glob_matches(&whole_keyspace, neighbour), "{neighbour}");
            assert!(!glob_matches(&every_entry, neighbour), "{neighbour}");
        }
        assert!(glob_matches(&every_entry, &layout.entry_key(&key("x"))));
        assert!(!glob_matches(
            &every_entry,
            &KeyLayout::new(&scope("t", "a", 11)).entry_key(&key("x"))
        ));
        assert!(!glob_matches(&every_entry, &layout.tag_key("x")));
    }

    #[test]
    fn classify_reads_the_version_and_kind_and_skips_the_rest() {
        let layout = KeyLayout::new(&scope("t", "a", 5));
        let older = KeyLayout::new(&scope("t", "a", 4));
        assert_eq!(
            layout.classify(&older.entry_key(&key("k:9:t:x"))),
            Some((4, StoredKeyKind::Entry))
        );
        assert_eq!(
            layout.classify(&older.tag_key("k")),
            Some((4, StoredKeyKind::TagIndex))
        );
        for foreign in [
            layout.revision_counter_key(),
            "plinth:cache:{t:a}:x1:k:y".to_string(),
            "plinth:cache:{t:a}::k:y".to_string(),
            "plinth:cache:{t:a}:7:z:y".to_string(),
            "plinth:cache:{t:ab}:7:k:y".to_string(),
        ] {
            assert_eq!(layout.classify(&foreign), None, "{foreign}");
        }
    }

    #[test]
    fn stale_keys_takes_older_versions_only_and_respects_the_room() {
        let layout = KeyLayout::new(&scope("t", "a", 3));
        let at = |version: u64| KeyLayout::new(&scope("t", "a", version));
        let redis_keys = vec![
            at(1).entry_key(&key("one")),
            at(2).entry_key(&key("two")),
            at(3).entry_key(&key("three")),
            at(1).tag_key("red"),
            at(3).tag_key("red"),
            layout.revision_counter_key(),
        ];
        let (entries, tag_indexes) = stale_keys(&layout, redis_keys, 3, 1);
        assert_eq!(entries, [at(1).entry_key(&key("one"))]);
        assert_eq!(tag_indexes, [at(1).tag_key("red")]);
    }

    #[test]
    fn entries_are_rebuilt_from_their_hash_fields() {
        let mut fields: HashMap<String, Vec<u8>> = HashMap::new();
        for (name, value) in [
            ("value", &[0u8, 255, b','][..]),
            ("revision", b"18446744073709551615"),
            ("flags", b"3"),
            ("content_type", b"application/octet-stream"),
            ("tags", b"b,a:1"),
            ("written_at_ms", b"1700000000000"),
            ("expires_at_ms", b""),
            ("tombstone", b"0"),
        ] {
            fields.insert(name.to_string(), value.to_vec());
        }
        let entry = entry_from_fields("k", &fields).unwrap();
        assert_eq!(
            entry,
            CacheEntry {
                value: Bytes::from_static(&[0, 255, b',']),
                encoding: ValueEncoding {
                    compressed: true,
                    encrypted: true,
                },
                content_type: "application/octet-stream".to_string(),
                tags: vec!["b".to_string(), "a:1".to_string()],
                revision: u64::MAX,
                written_at_ms: 1_700_000_000_000,
                expires_at_ms: None,
                tombstone: false,
            }
        );
        fields.insert("expires_at_ms".to_string(), b"soon".to_vec());
        assert_eq!(
            entry_from_fields("k", &fields).unwrap_err().kind(),
            ErrorKind::Internal
        );
        fields.remove("revision");
        assert!(entry_from_fields("k", &fields).is_err());
    }

    #[test]
    fn encoding_flags_round_trip() {
        for compressed in [false, true] {
            for encrypted in [false, true] {
                let encoding = ValueEncoding {
                    compressed,
                    encrypted,
                };
                assert_eq!(encoding_from_flags(encoding_flags(encoding)), encoding);
            }
        }
    }

    #[test]
    fn script_replies_map_to_outcomes_and_errors() {
        let reply =
            |parts: &[&str]| -> Vec<String> { parts.iter().map(|part| part.to_string()).collect() };
        assert_eq!(
            parse_conditional_reply(&reply(&["applied", "7"])).unwrap(),
            ConditionalOutcome::Applied(7)
        );
        assert_eq!(
            parse_conditional_reply(&reply(&["failed", ""])).unwrap(),
            ConditionalOutcome::PreconditionFailed(None)
        );
        assert_eq!(
            parse_conditional_reply(&reply(&["failed", "9"])).unwrap(),
            ConditionalOutcome::PreconditionFailed(Some(9))
        );
        assert!(parse_conditional_reply(&reply(&["applied"])).is_err());

        let (value, entry) =
            parse_increment_reply(&reply(&["applied", "-3", "12", "a,b", "900"]), 800).unwrap();
        assert_eq!(value, -3);
        assert_eq!(entry.value, Bytes::from("-3"));
        assert_eq!(entry.tags, ["a", "b"]);
        assert_eq!((entry.revision, entry.written_at_ms), (12, 800));
        assert_eq!(entry.expires_at_ms, Some(900));
        assert_eq!(
            parse_increment_reply(&reply(&["not_a_counter"]), 0)
                .unwrap_err()
                .code(),
            "not_a_counter"
        );
        assert_eq!(
            parse_increment_reply(&reply(&["counter_overflow"]), 0)
                .unwrap_err()
                .code(),
            "counter_overflow"
        );
    }

    #[test]
    fn stored_states_are_live_unless_gone_tombstoned_or_expired() {
        let state = |revision: Option<&str>, tombstone: &str, expires_at_ms: &str| {
            vec![
                revision.map(str::to_string),
                Some(tombstone.to_string()),
                Some(expires_at_ms.to_string()),
            ]
        };
        assert!(stored_state_is_live(&state(Some("1"), "0", ""), 100));
        assert!(stored_state_is_live(&state(Some("1"), "0", "101"), 100));
        assert!(!stored_state_is_live(&state(Some("1"), "0", "100"), 100));
        assert!(!stored_state_is_live(&state(Some("1"), "1", ""), 100));
        assert!(!stored_state_is_live(&[None, None, None], 100));
    }

    /// A tier on the test Redis, with the engine for raw commands.
    async fn open_tier(test_name: &str) -> Option<(RedisCacheTier, Arc<RedisEngine>)> {
        let url = plinth_engines::test_support::redis_url(test_name)?;
        let engine = plinth_engines::test_support::connected_redis(&url).await;
        Some((RedisCacheTier::new(Arc::clone(&engine)), engine))
    }

    fn fresh_scope(case: &str) -> KeyspaceScope {
        let keyspace = format!("redis-{case}-{:016x}", rand::random::<u64>());
        scope("default", &keyspace, 1)
    }

    fn entry(value: &str, tags: &[&str], expires_at_ms: Option<u64>) -> CacheEntry {
        CacheEntry {
            value: Bytes::from(value.to_string()),
            encoding: ValueEncoding::default(),
            content_type: "text/plain".to_string(),
            tags: tags.iter().map(|tag| tag.to_string()).collect(),
            revision: 0,
            written_at_ms: crate::clock::now_ms(),
            expires_at_ms,
            tombstone: false,
        }
    }

    async fn put(
        tier: &RedisCacheTier,
        scope: &KeyspaceScope,
        key_text: &str,
        entry: CacheEntry,
    ) -> Revision {
        let outcome = tier
            .put_conditional(
                scope,
                &key(key_text),
                entry,
                WriteCondition::Always,
                crate::clock::now_ms(),
            )
            .await
            .unwrap();
        let ConditionalOutcome::Applied(revision) = outcome else {
            panic!("an unconditional put applies: {outcome:?}");
        };
        revision
    }

    async fn raw<T: FromRedisValue>(engine: &RedisEngine, command: &redis::Cmd) -> T {
        let mut connection = engine.connection().unwrap();
        command.query_async(&mut connection).await.unwrap()
    }

    #[tokio::test]
    async fn a_stale_tag_member_never_removes_a_rewritten_entry() {
        let Some((tier, _engine)) = open_tier("redis_tier_stale_tag_member").await else {
            return;
        };
        let scope = fresh_scope("stale-tag");
        let soon = crate::clock::now_ms() + 50;
        put(&tier, &scope, "k", entry("old", &["red"], Some(soon))).await;
        // Redis drops the hash at its expiry; the red set keeps `k`.
        tokio::time::sleep(Duration::from_millis(150)).await;
        put(&tier, &scope, "k", entry("new", &["blue"], None)).await;
        let now = crate::clock::now_ms();
        let removed = tier
            .invalidate(&scope, &Selector::Tag("red".to_string()), now)
            .await
            .unwrap();
        assert_eq!(removed, 0);
        let survivor = tier.get(&scope, &key("k"), now).await.unwrap().unwrap();
        assert_eq!(survivor.value, Bytes::from("new"));
        let removed = tier
            .invalidate(&scope, &Selector::Tag("blue".to_string()), now)
            .await
            .unwrap();
        assert_eq!(removed, 1);
    }

    #[tokio::test]
    async fn keyspaces_named_like_layout_components_stay_apart() {
        let Some((tier, _engine)) = open_tier("redis_tier_keyspace_separators").await else {
            return;
        };
        let base = fresh_scope("sep");
        let lookalike = scope("default", &format!("{}:1:k:k", base.keyspace.as_str()), 2);
        let now = crate::clock::now_ms();
        put(&tier, &base, "k:2:k:x", entry("base", &[], None)).await;
        put(&tier, &lookalike, "x", entry("lookalike", &[], None)).await;
        let read = tier
            .get(&base, &key("k:2:k:x"), now)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(read.value, Bytes::from("base"));

        let removed = tier
            .invalidate(&base, &Selector::Pattern("*".to_string()), now)
            .await
            .unwrap();
        assert_eq!(removed, 1);
        let newer_base = KeyspaceScope {
            version: 9,
            ..base.clone()
        };
        assert_eq!(tier.reclaim(&newer_base, 100, now).await.unwrap(), 0);
        let read = tier.get(&lookalike, &key("x"), now).await.unwrap().unwrap();
        assert_eq!(read.value, Bytes::from("lookalike"));
    }

    #[tokio::test]
    async fn counters_accept_what_rust_parses_as_an_integer() {
        let Some((tier, _engine)) = open_tier("redis_tier_counter_forms").await else {
            return;
        };
        let scope = fresh_scope("counter-forms");
        let now = crate::clock::now_ms();
        for (stored, expected) in [(" 007 ", 8), ("+5", 6), ("-0", 1), ("-12", -11)] {
            put(&tier, &scope, "c", entry(stored, &[], None)).await;
            let (value, _) = tier
                .increment(&scope, &key("c"), 1, None, now)
                .await
                .unwrap();
            assert_eq!(value, expected, "{stored:?}");
        }
        put(&tier, &scope, "c", entry("99999999999999999999", &[], None)).await;
        let error = tier
            .increment(&scope, &key("c"), 1, None, now)
            .await
            .unwrap_err();
        assert_eq!(error.code(), "not_a_counter");
        let (value, entry) = tier
            .increment(&scope, &key("c2"), i64::MIN, None, now)
            .await
            .unwrap();
        assert_eq!(value, i64::MIN);
        assert_eq!(entry.value, Bytes::from(i64::MIN.to_string()));
    }

    #[tokio::test]
    async fn revisions_keep_rising_when_the_counter_is_lost() {
        let Some((tier, engine)) = open_tier("redis_tier_lost_counter").await else {
            return;
        };
        let scope = fresh_scope("lost-counter");
        let first = put(&tier, &scope, "k", entry("1", &[], None)).await;
        let second = put(&tier, &scope, "k", entry("2", &[], None)).await;
        let mut delete_counter = redis::cmd("DEL");
        delete_counter.arg(KeyLayout::new(&scope).revision_counter_key());
        let _: u64 = raw(&engine, &delete_counter).await;
        let third = put(&tier, &scope, "k", entry("3", &[], None)).await;
        assert!(first < second && second < third, "{first} {second} {third}");
    }

    #[tokio::test]
    async fn a_tombstone_refuses_older_fills_and_expires_by_itself() {
        let Some((tier, engine)) = open_tier("redis_tier_tombstone").await else {
            return;
        };
        let scope = fresh_scope("tombstone");
        let now = crate::clock::now_ms();
        let copy = |value: &str, revision: Revision, tombstone: bool| CacheEntry {
            revision,
            tombstone,
            ..entry(value, &["red"], None)
        };
        tier.put_if_newer(&scope, &key("k"), copy("v", 10, false))
            .await
            .unwrap();
        tier.put_if_newer(&scope, &key("k"), copy("", 11, true))
            .await
            .unwrap();
        tier.put_if_newer(&scope, &key("k"), copy("late", 10, false))
            .await
            .unwrap();
        assert_eq!(tier.get(&scope, &key("k"), now).await.unwrap(), None);
        let entry_key = KeyLayout::new(&scope).entry_key(&key("k"));
        let mut remaining_ttl = redis::cmd("PTTL");
        remaining_ttl.arg(&entry_key);
        let remaining_ms: i64 = raw(&engine, &remaining_ttl).await;
        assert!(
            (1..=TOMBSTONE_LIFETIME_MS as i64).contains(&remaining_ms),
            "{remaining_ms}"
        );
        let mut tag_members = redis::cmd("SCARD");
        tag_members.arg(KeyLayout::new(&scope).tag_key("red"));
        let members: u64 = raw(&engine, &tag_members).await;
        assert_eq!(members, 0, "a tombstone leaves its tags' sets");
        let removed = tier
            .invalidate(&scope, &Selector::Prefix(String::new()), now)
            .await
            .unwrap();
        assert_eq!(removed, 0, "a tombstone is not a live entry");
    }

    #[tokio::test]
    async fn reclaim_also_drops_the_tag_sets_of_older_versions() {
        let Some((tier, engine)) = open_tier("redis_tier_reclaim_tags").await else {
            return;
        };
        let old = fresh_scope("reclaim-tags");
        let new = KeyspaceScope {
            version: 2,
            ..old.clone()
        };
        put(&tier, &old, "k", entry("v", &["red"], None)).await;
        put(&tier, &new, "k", entry("v", &["red"], None)).await;
        let now = crate::clock::now_ms();
        assert_eq!(tier.reclaim(&new, 10, now).await.unwrap(), 1);
        let mut exists = redis::cmd("EXISTS");
        exists
            .arg(KeyLayout::new(&old).tag_key("red"))
            .arg(KeyLayout::new(&new).tag_key("red"));
        let existing: u64 = raw(&engine, &exists).await;
        assert_eq!(existing, 1, "only the current version's tag set is left");
    }
}
