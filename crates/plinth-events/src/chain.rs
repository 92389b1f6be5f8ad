//! The hash chain: every event stores a SHA-256 that covers the hash of the
//! previous event of its stream, so altering, removing or reordering a
//! stored event breaks every hash after it, and `verify` can say where.
//!
//! Canonical encoding (version 1), fed to SHA-256 in this order:
//!
//! | field            | encoding                                         |
//! |------------------|--------------------------------------------------|
//! | domain tag       | the 17 bytes `plinth-events/v1\n`                |
//! | previous hash    | 32 bytes; all zero for revision 0                |
//! | stream name      | u64 big-endian byte length, then UTF-8 bytes     |
//! | revision         | u64 big-endian                                   |
//! | event id         | the UUID's 16 bytes                              |
//! | event type       | u64 big-endian byte length, then UTF-8 bytes     |
//! | schema version   | u32 big-endian                                   |
//! | data             | u64 big-endian byte length, then the stored JSON |
//! | metadata         | u64 big-endian byte length, then the stored JSON |
//!
//! Length prefixes make the encoding unambiguous (no two field lists give
//! the same bytes). Data and metadata are hashed as the exact JSON text
//! stored (compact `serde_json` output), so verification never depends on
//! re-serialising. The tenant and the global position are left out on
//! purpose, so an exported stream imported into another tenant (where it
//! gets new positions) keeps its hashes. The recorded time is left out
//! too: it is assigned at the serialisation point of the append (with the
//! position), after the hashes are computed, to keep that critical section
//! short.
//!
//! Scavenging removes a prefix of a stream; the stream record then keeps
//! the hash of the last removed event (the anchor), so the chain of what
//! remains still verifies from its first event.

use sha2::{Digest, Sha256};
use uuid::Uuid;

/// The hash an event's predecessor has when it is the first of its stream.
pub const GENESIS_HASH: [u8; 32] = [0; 32];

const DOMAIN_TAG: &[u8] = b"plinth-events/v1\n";

/// Everything an event's hash covers.
pub struct ChainLink<'a> {
    pub previous_hash: &'a [u8; 32],
    pub stream: &'a str,
    pub revision: u64,
    pub event_id: Uuid,
    pub event_type: &'a str,
    pub schema_version: u32,
    pub data: &'a str,
    pub metadata: &'a str,
}

impl ChainLink<'_> {
    pub fn hash(&self) -> [u8; 32] {
        let mut hasher = Sha256::new();
        hasher.update(DOMAIN_TAG);
        hasher.update(self.previous_hash);
        update_with_length_prefixed(&mut hasher, self.stream.as_bytes());
        hasher.update(self.revision.to_be_bytes());
        hasher.update(self.event_id.as_bytes());
        update_with_length_prefixed(&mut hasher, self.event_type.as_bytes());
        hasher.update(self.schema_version.to_be_bytes());
        update_with_length_prefixed(&mut hasher, self.data.as_bytes());
        update_with_length_prefixed(&mut hasher, self.metadata.as_bytes());
        hasher.finalize().into()
    }
}

fn update_with_length_prefixed(hasher: &mut Sha256, bytes: &[u8]) {
    hasher.update((bytes.len() as u64).to_be_bytes());
    hasher.update(bytes);
}

/// A 32-byte hash from a stored column or a hex string.
pub fn hash_from_bytes(bytes: &[u8]) -> Option<[u8; 32]> {
    bytes.try_into().ok()
}

pub fn hash_from_hex(text: &str) -> Option<[u8; 32]> {
    let bytes = hex::decode(text).ok()?;
    hash_from_bytes(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link<'a>(previous_hash: &'a [u8; 32], data: &'a str) -> ChainLink<'a> {
        ChainLink {
            previous_hash,
            stream: "orders-1",
            revision: 0,
            event_id: Uuid::nil(),
            event_type: "OrderPlaced",
            schema_version: 1,
            data,
            metadata: "{}",
        }
    }

    #[test]
    fn every_covered_field_changes_the_hash() {
        let base = link(&GENESIS_HASH, r#"{"a":1}"#).hash();
        assert_ne!(base, link(&GENESIS_HASH, r#"{"a":2}"#).hash());
        assert_ne!(base, link(&[1; 32], r#"{"a":1}"#).hash());
        let mut later = link(&GENESIS_HASH, r#"{"a":1}"#);
        later.revision = 1;
        assert_ne!(base, later.hash());
        assert_eq!(base, link(&GENESIS_HASH, r#"{"a":1}"#).hash());
    }

    #[test]
    fn length_prefixes_keep_field_boundaries() {
        let mut first = link(&GENESIS_HASH, "{}");
        first.stream = "ab";
        first.event_type = "c";
        let mut second = link(&GENESIS_HASH, "{}");
        second.stream = "a";
        second.event_type = "bc";
        assert_ne!(first.hash(), second.hash());
    }
}
