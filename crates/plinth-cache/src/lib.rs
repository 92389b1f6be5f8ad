//! The cache and state block: a tenant's keyspaces, each with a tier
//! configuration (an in-process L1, Redis as a shared L2, a durable store),
//! read through the tiers and written to the authoritative one first.
//!
//! Knows nothing of HTTP; the server maps [`plinth_core::Error`]s at the
//! edge.

#[cfg(test)]
#[macro_use]
mod tier_conformance;

pub mod catalog;
pub mod clock;
pub mod codec;
pub mod coherence;
pub mod events;
pub mod keyspace;
pub mod l1;
pub mod latency;
pub mod migrations;
pub mod model;
pub mod pattern;
pub mod redis_tier;
pub mod service;
pub mod setup;
pub mod stats;
pub mod store_postgres;
pub mod store_sqlite;
pub mod tier;
pub mod warming;

pub use model::{
    CacheEntry, CacheKey, KeyspaceScope, Revision, Selector, ValueEncoding, WriteCondition,
};
pub use tier::{CacheTier, ConditionalOutcome, KeyPage};
