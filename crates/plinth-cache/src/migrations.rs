//! The durable stores' schema, and how an entry is encoded in its columns.
//!
//! Both stores keep exactly the same values, so the encoding lives here,
//! next to the tables, instead of once per backend:
//!
//! - an entry is one row keyed by (tenant, keyspace, version, key); a flush
//!   bumps the version, so older rows are unreachable at once and
//!   [`crate::tier::CacheTier::reclaim`] deletes them in bounded batches;
//! - its tags are kept twice: in the row, in order, to read the entry back,
//!   and in a tag table, one row per (tag, key), for invalidation by tag.
//!   Tag rows belong to their entry (`ON DELETE CASCADE`), so every delete
//!   takes them along;
//! - timestamps are unix milliseconds in signed 64-bit columns;
//! - on PostgreSQL, text key columns use the `C` collation so listing
//!   orders keys byte-wise, exactly as SQLite does, and `LIKE` is
//!   case-sensitive;
//! - revisions come from a per-(tenant, keyspace) counter row on SQLite,
//!   whose single writer serialises every write, and from one sequence on
//!   PostgreSQL, drawn while the writer holds the key's lock.

use bytes::Bytes;
use plinth_core::Error;
use plinth_engines::{Migration, MigrationSet};

use crate::model::{CacheEntry, Revision, ValueEncoding};
use crate::tier::parse_counter;

pub static CACHE_MIGRATIONS: MigrationSet = MigrationSet {
    component: "cache",
    migrations: &[Migration {
        version: 1,
        name: "cache entries, tags and revisions",
        sqlite: SQLITE_V1,
        postgres: POSTGRES_V1,
    }],
};

const SQLITE_V1: &str = "
CREATE TABLE plinth_cache_entries (
    tenant TEXT NOT NULL,
    keyspace TEXT NOT NULL,
    version INTEGER NOT NULL,
    cache_key TEXT NOT NULL,
    value BLOB NOT NULL,
    compressed INTEGER NOT NULL,
    encrypted INTEGER NOT NULL,
    content_type TEXT NOT NULL,
    tags TEXT NOT NULL,
    revision INTEGER NOT NULL,
    written_at_ms INTEGER NOT NULL,
    expires_at_ms INTEGER,
    PRIMARY KEY (tenant, keyspace, version, cache_key)
);
CREATE INDEX plinth_cache_entries_by_expiry
    ON plinth_cache_entries (tenant, keyspace, expires_at_ms);

CREATE TABLE plinth_cache_tags (
    tenant TEXT NOT NULL,
    keyspace TEXT NOT NULL,
    version INTEGER NOT NULL,
    tag TEXT NOT NULL,
    cache_key TEXT NOT NULL,
    PRIMARY KEY (tenant, keyspace, version, tag, cache_key),
    FOREIGN KEY (tenant, keyspace, version, cache_key)
        REFERENCES plinth_cache_entries (tenant, keyspace, version, cache_key)
        ON DELETE CASCADE
);
CREATE INDEX plinth_cache_tags_by_entry
    ON plinth_cache_tags (tenant, keyspace, version, cache_key);

CREATE TABLE plinth_cache_revisions (
    tenant TEXT NOT NULL,
    keyspace TEXT NOT NULL,
    last_revision INTEGER NOT NULL,
    PRIMARY KEY (tenant, keyspace)
);
";

const POSTGRES_V1: &str = r#"
CREATE SEQUENCE plinth_cache_revision_seq;

CREATE TABLE plinth_cache_entries (
    tenant TEXT COLLATE "C" NOT NULL,
    keyspace TEXT COLLATE "C" NOT NULL,
    version BIGINT NOT NULL,
    cache_key TEXT COLLATE "C" NOT NULL,
    value BYTEA NOT NULL,
    compressed BOOLEAN NOT NULL,
    encrypted BOOLEAN NOT NULL,
    content_type TEXT NOT NULL,
    tags TEXT[] NOT NULL,
    revision BIGINT NOT NULL,
    written_at_ms BIGINT NOT NULL,
    expires_at_ms BIGINT,
    PRIMARY KEY (tenant, keyspace, version, cache_key)
);
CREATE INDEX plinth_cache_entries_by_expiry
    ON plinth_cache_entries (tenant, keyspace, expires_at_ms);

CREATE TABLE plinth_cache_tags (
    tenant TEXT COLLATE "C" NOT NULL,
    keyspace TEXT COLLATE "C" NOT NULL,
    version BIGINT NOT NULL,
    tag TEXT COLLATE "C" NOT NULL,
    cache_key TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (tenant, keyspace, version, tag, cache_key),
    FOREIGN KEY (tenant, keyspace, version, cache_key)
        REFERENCES plinth_cache_entries (tenant, keyspace, version, cache_key)
        ON DELETE CASCADE
);
CREATE INDEX plinth_cache_tags_by_entry
    ON plinth_cache_tags (tenant, keyspace, version, cache_key);
"#;

/// The columns of one `plinth_cache_entries` row, as both stores read them.
pub(crate) struct EntryRow {
    pub value: Vec<u8>,
    pub compressed: bool,
    pub encrypted: bool,
    pub content_type: String,
    pub tags: Vec<String>,
    pub revision: i64,
    pub written_at_ms: i64,
    pub expires_at_ms: Option<i64>,
}

impl EntryRow {
    pub fn into_entry(self) -> Result<CacheEntry, Error> {
        Ok(CacheEntry {
            value: Bytes::from(self.value),
            encoding: ValueEncoding {
                compressed: self.compressed,
                encrypted: self.encrypted,
            },
            content_type: self.content_type,
            tags: self.tags,
            revision: from_column_integer(self.revision, "revision")?,
            written_at_ms: from_column_integer(self.written_at_ms, "written_at_ms")?,
            expires_at_ms: optional_from_column_integer(self.expires_at_ms, "expires_at_ms")?,
            tombstone: false,
        })
    }
}

/// A revision, version or timestamp as a signed 64-bit column. Values past
/// `i64::MAX` (a revision sequence 9 quintillion writes in, a timestamp
/// 292 million years out) are refused rather than wrapped.
pub(crate) fn to_column_integer(value: u64, what: &str) -> Result<i64, Error> {
    i64::try_from(value).map_err(|_| {
        Error::invalid_argument(
            "value_out_of_range",
            format!("{what} {value} does not fit in a signed 64-bit integer"),
        )
    })
}

pub(crate) fn optional_to_column_integer(
    value: Option<u64>,
    what: &str,
) -> Result<Option<i64>, Error> {
    match value {
        None => Ok(None),
        Some(value) => to_column_integer(value, what).map(Some),
    }
}

/// Only non-negative values are ever written, so a negative one means the
/// table was edited by hand.
pub(crate) fn from_column_integer(value: i64, what: &str) -> Result<u64, Error> {
    u64::try_from(value).map_err(|_| Error::internal(format!("stored {what} {value} is negative")))
}

fn optional_from_column_integer(value: Option<i64>, what: &str) -> Result<Option<u64>, Error> {
    match value {
        None => Ok(None),
        Some(value) => from_column_integer(value, what).map(Some),
    }
}

/// The exclusive upper bound of the keys starting with `prefix`, for an
/// index range scan instead of `LIKE`. Keys are printable ASCII (bytes
/// 0x21 to 0x7E), so every key with the prefix sorts below `prefix` +
/// DEL (0x7F), and every other key at or above `prefix` sorts above it.
pub(crate) fn prefix_upper_bound(prefix: &str) -> String {
    format!("{prefix}\u{7f}")
}

/// What `increment` writes: the live entry's integer plus `delta`, keeping
/// its tags and expiry; an absent (or expired) key counts as 0 and gets
/// `ttl_ms`. The revision is the store's to assign.
pub(crate) fn incremented_counter(
    current: Option<&CacheEntry>,
    delta: i64,
    ttl_ms: Option<u64>,
    now_ms: u64,
) -> Result<(i64, CacheEntry), Error> {
    let (current_value, tags, expires_at_ms) = match current {
        None => (0, Vec::new(), ttl_ms.map(|ttl| now_ms.saturating_add(ttl))),
        Some(entry) => (
            parse_counter(&entry.value)?,
            entry.tags.clone(),
            entry.expires_at_ms,
        ),
    };
    let Some(new_value) = current_value.checked_add(delta) else {
        return Err(Error::conflict(
            "counter_overflow",
            "the increment would overflow a 64-bit integer",
        ));
    };
    let entry = CacheEntry {
        value: Bytes::from(new_value.to_string()),
        encoding: ValueEncoding::default(),
        content_type: "text/plain".to_string(),
        tags,
        revision: 0,
        written_at_ms: now_ms,
        expires_at_ms,
        tombstone: false,
    };
    Ok((new_value, entry))
}

/// The revision an entry carries once stored.
pub(crate) fn with_revision(entry: CacheEntry, revision: Revision) -> CacheEntry {
    CacheEntry {
        revision,
        tombstone: false,
        ..entry
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prefix_bound_separates_keys_with_the_prefix_from_the_rest() {
        let upper = prefix_upper_bound("user:4");
        for inside in ["user:4", "user:4~", "user:42:profile", "user:4!"] {
            assert!(inside >= "user:4" && inside < upper.as_str(), "{inside}");
        }
        for outside in ["user:5", "user:", "user:3~~~", "user;"] {
            assert!(
                !(outside >= "user:4" && outside < upper.as_str()),
                "{outside}"
            );
        }
    }

    #[test]
    fn counters_start_at_zero_and_refuse_overflow() {
        let (value, entry) = incremented_counter(None, 3, Some(1_000), 5_000).unwrap();
        assert_eq!(value, 3);
        assert_eq!(entry.expires_at_ms, Some(6_000));
        assert_eq!(entry.value, Bytes::from("3"));
        let (value, _) = incremented_counter(Some(&entry), -5, None, 5_001).unwrap();
        assert_eq!(value, -2);
        let full = CacheEntry {
            value: Bytes::from(i64::MAX.to_string()),
            ..entry
        };
        let overflow = incremented_counter(Some(&full), 1, None, 5_002).unwrap_err();
        assert_eq!(overflow.code(), "counter_overflow");
    }
}
