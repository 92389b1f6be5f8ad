//! Hit and miss counts per keyspace and tier, for the stats endpoint, and
//! the same counts per tier as Prometheus metrics (keyspaces are named by
//! tenants, so they are not metric labels: label cardinality stays bounded).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::RwLock;
use plinth_core::{ResourceName, TenantId};
use serde::Serialize;

/// Keyspaces tracked at most; beyond it the registry starts over, since
/// stats are an observation, not data.
const MAX_TRACKED_KEYSPACES: usize = 100_000;
const TIER_NAMES: [&str; 4] = ["l1", "redis", "sqlite", "postgres"];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TierOutcome {
    Hit,
    Miss,
    Error,
}

#[derive(Debug, Default)]
struct TierCounters {
    hits: AtomicU64,
    misses: AtomicU64,
    errors: AtomicU64,
}

#[derive(Debug, Default)]
struct KeyspaceCounters {
    tiers: [TierCounters; 4],
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct TierStats {
    pub tier: &'static str,
    pub hits: u64,
    pub misses: u64,
    pub errors: u64,
    /// hits / (hits + misses), or `null` before any lookup.
    pub hit_ratio: Option<f64>,
}

#[derive(Default)]
pub struct StatsRegistry {
    keyspaces: RwLock<HashMap<(TenantId, ResourceName), Arc<KeyspaceCounters>>>,
}

impl StatsRegistry {
    pub fn record(
        &self,
        tenant: &TenantId,
        keyspace: &ResourceName,
        tier: &'static str,
        outcome: TierOutcome,
    ) {
        let result_label = match outcome {
            TierOutcome::Hit => "hit",
            TierOutcome::Miss => "miss",
            TierOutcome::Error => "error",
        };
        metrics::counter!("plinth_cache_lookups_total", "tier" => tier, "result" => result_label)
            .increment(1);
        let Some(tier_index) = TIER_NAMES.iter().position(|name| *name == tier) else {
            return;
        };
        let counters = self.counters_of(tenant, keyspace);
        let tier_counters = &counters.tiers[tier_index];
        let counter = match outcome {
            TierOutcome::Hit => &tier_counters.hits,
            TierOutcome::Miss => &tier_counters.misses,
            TierOutcome::Error => &tier_counters.errors,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Per-tier counts of a keyspace, for tiers that saw any lookup.
    pub fn snapshot(&self, tenant: &TenantId, keyspace: &ResourceName) -> Vec<TierStats> {
        let counters = self.counters_of(tenant, keyspace);
        let mut snapshot = Vec::new();
        for (tier_index, tier) in TIER_NAMES.iter().enumerate() {
            let tier_counters = &counters.tiers[tier_index];
            let hits = tier_counters.hits.load(Ordering::Relaxed);
            let misses = tier_counters.misses.load(Ordering::Relaxed);
            let errors = tier_counters.errors.load(Ordering::Relaxed);
            if hits + misses + errors == 0 {
                continue;
            }
            let lookups = hits + misses;
            snapshot.push(TierStats {
                tier,
                hits,
                misses,
                errors,
                hit_ratio: (lookups > 0).then(|| hits as f64 / lookups as f64),
            });
        }
        snapshot
    }

    fn counters_of(&self, tenant: &TenantId, keyspace: &ResourceName) -> Arc<KeyspaceCounters> {
        let identity = (tenant.clone(), keyspace.clone());
        if let Some(counters) = self.keyspaces.read().get(&identity) {
            return Arc::clone(counters);
        }
        let mut keyspaces = self.keyspaces.write();
        if keyspaces.len() >= MAX_TRACKED_KEYSPACES {
            keyspaces.clear();
        }
        Arc::clone(keyspaces.entry(identity).or_default())
    }
}
