//! The cache and state block: a tenant's keyspaces, each with a tier
//! configuration (an in-process L1, Redis as a shared L2, a durable store),
//! read through the tiers and written to the authoritative one first.
//!
//! Knows nothing of HTTP; the server maps [`plinth_core::Error`]s at the
//! edge.

pub mod clock;
pub mod l1;
pub mod model;
pub mod pattern;
pub mod tier;

pub use model::{
    CacheEntry, CacheKey, KeyspaceScope, Revision, Selector, ValueEncoding, WriteCondition,
};
pub use tier::{CacheTier, ConditionalOutcome, KeyPage};
