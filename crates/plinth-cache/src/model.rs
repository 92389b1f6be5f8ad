//! The cache's vocabulary: where an entry lives (its scope), what an entry
//! holds, its revision and ETag, and the conditions a write may carry.

use bytes::Bytes;
use plinth_core::{Error, ResourceName, TenantId};
use serde::{Deserialize, Serialize};

/// How long a deletion marker (tombstone) keeps older copies and late
/// fills of older values out of a tier, in milliseconds: longer than any
/// fill or copy takes, short enough that markers do not pile up. Every
/// tier and the coherence messages use this one figure.
pub(crate) const TOMBSTONE_LIFETIME_MS: u64 = 60_000;

/// The longest key accepted, in bytes.
pub const MAX_KEY_LENGTH: usize = 512;
/// The most tags one entry may carry.
pub const MAX_TAGS_PER_ENTRY: usize = 32;
/// The longest tag accepted, in bytes.
pub const MAX_TAG_LENGTH: usize = 128;

/// Where entries live: a tenant's keyspace at one version. Bumping the
/// version (a flush) makes every older entry unreachable at once; tiers
/// reclaim them lazily.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct KeyspaceScope {
    pub tenant: TenantId,
    pub keyspace: ResourceName,
    pub version: u64,
}

/// A key inside a keyspace: 1 to 512 bytes of printable ASCII without
/// spaces. Glob characters are allowed in keys but need escaping in
/// patterns.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CacheKey(String);

impl CacheKey {
    pub fn parse(text: &str) -> Result<Self, Error> {
        if text.is_empty() || text.len() > MAX_KEY_LENGTH {
            return Err(Error::invalid_argument(
                "invalid_key",
                format!("a key must be 1 to {MAX_KEY_LENGTH} bytes long"),
            ));
        }
        // `/` would make the key unreachable as one URL path segment.
        if !text
            .bytes()
            .all(|byte| byte.is_ascii_graphic() && byte != b'/')
        {
            return Err(Error::invalid_argument(
                "invalid_key",
                "a key may contain only printable ASCII characters without spaces or `/`",
            ));
        }
        Ok(CacheKey(text.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A monotonically increasing number given to every write by the
/// authoritative tier. Copies in faster tiers are only ever replaced by
/// copies with a higher revision, so a slow cache fill can never bring back
/// an older value. It is also the entry's ETag.
pub type Revision = u64;

/// Formats a revision as a strong ETag.
pub fn etag_of(revision: Revision) -> String {
    format!("\"{revision:x}\"")
}

/// Parses an ETag written by [`etag_of`] (quoted or not, `W/` refused).
pub fn parse_etag(text: &str) -> Result<Revision, Error> {
    let trimmed = text.trim();
    let unquoted = trimmed
        .strip_prefix('"')
        .and_then(|inner| inner.strip_suffix('"'))
        .unwrap_or(trimmed);
    if unquoted.is_empty() || unquoted.len() > 16 {
        return Err(bad_etag());
    }
    u64::from_str_radix(unquoted, 16).map_err(|_| bad_etag())
}

fn bad_etag() -> Error {
    Error::invalid_argument(
        "invalid_etag",
        "If-Match must be an ETag this server returned, like \"1a2b\", or `*` for If-None-Match",
    )
}

/// What is stored for one key, in every tier.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheEntry {
    /// The value as stored: compressed and/or encrypted when `encoding` says so.
    #[serde(with = "serde_bytes_compat")]
    pub value: Bytes,
    pub encoding: ValueEncoding,
    pub content_type: String,
    pub tags: Vec<String>,
    pub revision: Revision,
    /// Unix milliseconds of the write.
    pub written_at_ms: u64,
    /// Unix milliseconds after which the entry is gone; `None` never expires.
    pub expires_at_ms: Option<u64>,
    /// Set for deletion markers left in faster tiers, so an older copy
    /// cannot be filled back in after a delete.
    pub tombstone: bool,
}

impl CacheEntry {
    pub fn is_expired(&self, now_ms: u64) -> bool {
        self.expires_at_ms
            .is_some_and(|expires_at| expires_at <= now_ms)
    }

    pub fn remaining_ttl_ms(&self, now_ms: u64) -> Option<u64> {
        self.expires_at_ms
            .map(|expires_at| expires_at.saturating_sub(now_ms))
    }
}

/// How a stored value is transformed on its way to slower tiers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValueEncoding {
    pub compressed: bool,
    pub encrypted: bool,
}

/// The precondition of a write, from `If-Match` / `If-None-Match`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteCondition {
    /// Write whatever is there.
    Always,
    /// Only when the key does not exist (`If-None-Match: *`).
    Absent,
    /// Only when the current revision is this one (`If-Match`).
    RevisionIs(Revision),
}

impl WriteCondition {
    /// Whether the condition holds given the live entry's revision.
    pub fn holds(self, current: Option<Revision>) -> bool {
        match self {
            WriteCondition::Always => true,
            WriteCondition::Absent => current.is_none(),
            WriteCondition::RevisionIs(expected) => current == Some(expected),
        }
    }
}

/// Which keys a bulk invalidation removes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selector {
    /// A glob where `*` matches any run of characters and `?` one
    /// character; `\` escapes the next character.
    Pattern(String),
    Prefix(String),
    Tag(String),
}

/// Validates tags given with a write.
pub fn validate_tags(tags: &[String]) -> Result<(), Error> {
    if tags.len() > MAX_TAGS_PER_ENTRY {
        return Err(Error::invalid_argument(
            "invalid_tags",
            format!("an entry may carry at most {MAX_TAGS_PER_ENTRY} tags"),
        ));
    }
    for tag in tags {
        let acceptable = !tag.is_empty()
            && tag.len() <= MAX_TAG_LENGTH
            && tag
                .bytes()
                .all(|byte| byte.is_ascii_graphic() && byte != b',');
        if !acceptable {
            return Err(Error::invalid_argument(
                "invalid_tags",
                format!(
                    "a tag must be 1 to {MAX_TAG_LENGTH} printable ASCII characters without spaces or commas"
                ),
            ));
        }
    }
    Ok(())
}

/// `Bytes` as a byte string in serde formats that have one (MessagePack).
mod serde_bytes_compat {
    use bytes::Bytes;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Bytes, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(value)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Bytes, D::Error> {
        let buffer = serde_bytes_buffer::deserialize(deserializer)?;
        Ok(Bytes::from(buffer))
    }

    mod serde_bytes_buffer {
        use serde::Deserializer;
        use serde::de::{self, SeqAccess, Visitor};
        use std::fmt;

        struct BufferVisitor;

        impl<'de> Visitor<'de> for BufferVisitor {
            type Value = Vec<u8>;

            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("bytes")
            }

            fn visit_bytes<E: de::Error>(self, value: &[u8]) -> Result<Vec<u8>, E> {
                Ok(value.to_vec())
            }

            fn visit_byte_buf<E: de::Error>(self, value: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(value)
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut sequence: A) -> Result<Vec<u8>, A::Error> {
                let mut buffer = Vec::new();
                while let Some(byte) = sequence.next_element::<u8>()? {
                    buffer.push(byte);
                }
                Ok(buffer)
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(
            deserializer: D,
        ) -> Result<Vec<u8>, D::Error> {
            deserializer.deserialize_byte_buf(BufferVisitor)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags_round_trip_and_reject_garbage() {
        for revision in [0, 1, 255, u64::MAX] {
            assert_eq!(parse_etag(&etag_of(revision)).unwrap(), revision);
        }
        for bad in ["", "\"\"", "W/\"1\"", "\"xyz\"", "\"12345678901234567\""] {
            assert_eq!(parse_etag(bad).unwrap_err().code(), "invalid_etag", "{bad}");
        }
    }

    #[test]
    fn keys_follow_the_documented_rule() {
        assert!(CacheKey::parse("user:42:profile").is_ok());
        assert!(CacheKey::parse(&"k".repeat(512)).is_ok());
        for bad in ["", "has space", "tab\there", "ключ", "a/b"] {
            assert_eq!(
                CacheKey::parse(bad).unwrap_err().code(),
                "invalid_key",
                "{bad}"
            );
        }
        assert_eq!(
            CacheKey::parse(&"k".repeat(513)).unwrap_err().code(),
            "invalid_key"
        );
    }

    #[test]
    fn conditions_hold_as_http_says() {
        assert!(WriteCondition::Always.holds(None));
        assert!(WriteCondition::Absent.holds(None));
        assert!(!WriteCondition::Absent.holds(Some(3)));
        assert!(WriteCondition::RevisionIs(3).holds(Some(3)));
        assert!(!WriteCondition::RevisionIs(3).holds(Some(4)));
        assert!(!WriteCondition::RevisionIs(3).holds(None));
    }
}
