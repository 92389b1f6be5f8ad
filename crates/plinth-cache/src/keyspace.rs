//! Keyspace configuration: which tiers a keyspace uses and their limits.
//! The types live in `plinth_core::config` (configuration is read there);
//! this module turns them into the L1's runtime settings.

pub use plinth_core::config::{
    DurableTierKind, EvictionKind, HARD_MAX_VALUE_BYTES, KeyspaceConfig, L1Config, SharedTierKind,
};

use crate::l1::L1Settings;

pub fn l1_settings(config: &L1Config) -> L1Settings {
    L1Settings {
        max_entries: config.max_entries,
        max_bytes: config.max_bytes,
        ttl_cap: config.ttl_cap.as_duration(),
        eviction: config.eviction,
    }
}
