//! Per keyspace and tier: lookups (hits, misses, errors) and the latency of
//! every tier call, for the stats endpoint; the same as Prometheus metrics.
//!
//! Keyspaces are named by tenants at run time, so a `keyspace` label with
//! their names would be unbounded. Prometheus series carry the label
//! `keyspace="<tenant>/<name>"` only for the keyspaces the operator declared
//! in `[[cache.keyspaces]]`; every other keyspace shares `keyspace="other"`.
//! The operator bounds the cardinality by editing the configuration, and the
//! stats endpoint still has exact figures for every keyspace.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use parking_lot::RwLock;
use plinth_core::{ResourceName, TenantId};
use serde::Serialize;

use crate::latency::{LatencyHistogram, LatencySummary};

/// Keyspaces tracked at most; beyond it the registry starts over, since
/// stats are an observation, not data.
const MAX_TRACKED_KEYSPACES: usize = 100_000;
const TIER_NAMES: [&str; 4] = ["l1", "redis", "sqlite", "postgres"];
/// The `keyspace` label of every keyspace not declared in the configuration.
pub const UNDECLARED_KEYSPACE_LABEL: &str = "other";
const LOOKUPS_METRIC: &str = "plinth_cache_lookups_total";
const TIER_DURATION_METRIC: &str = "plinth_cache_tier_duration_seconds";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TierOutcome {
    Hit,
    Miss,
    Error,
}

impl TierOutcome {
    const ALL: [TierOutcome; 3] = [TierOutcome::Hit, TierOutcome::Miss, TierOutcome::Error];

    fn index(self) -> usize {
        self as usize
    }

    fn label(self) -> &'static str {
        match self {
            TierOutcome::Hit => "hit",
            TierOutcome::Miss => "miss",
            TierOutcome::Error => "error",
        }
    }
}

/// What a timed tier call did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TierOperation {
    /// A read of one key (lookups, and the existence check of a delete).
    Get,
    /// A conditional put, delete or increment at the authoritative tier.
    Write,
    /// A copy into a faster tier: a fill after a read, a write's new value
    /// or tombstone, or a warming.
    Copy,
    /// Removal of every key a pattern, prefix or tag selects.
    Invalidate,
}

impl TierOperation {
    const ALL: [TierOperation; 4] = [
        TierOperation::Get,
        TierOperation::Write,
        TierOperation::Copy,
        TierOperation::Invalidate,
    ];

    fn index(self) -> usize {
        self as usize
    }

    pub fn label(self) -> &'static str {
        match self {
            TierOperation::Get => "get",
            TierOperation::Write => "write",
            TierOperation::Copy => "copy",
            TierOperation::Invalidate => "invalidate",
        }
    }
}

/// Which keyspaces get their own `keyspace` label in Prometheus.
#[derive(Debug, Default)]
pub struct KeyspaceMetricLabels {
    declared: HashSet<(TenantId, ResourceName)>,
}

impl KeyspaceMetricLabels {
    /// Labels for the keyspaces of `[[cache.keyspaces]]`.
    pub fn for_declared_keyspaces(
        declared: impl IntoIterator<Item = (TenantId, ResourceName)>,
    ) -> Self {
        KeyspaceMetricLabels {
            declared: declared.into_iter().collect(),
        }
    }

    /// `<tenant>/<name>` for a declared keyspace, else `other`. Neither
    /// tenant ids nor keyspace names contain `/`, so the label is
    /// unambiguous.
    pub fn label_of(&self, tenant: &TenantId, keyspace: &ResourceName) -> String {
        if self.declared.contains(&(tenant.clone(), keyspace.clone())) {
            return format!("{tenant}/{keyspace}");
        }
        UNDECLARED_KEYSPACE_LABEL.to_string()
    }
}

/// One tier's calls, with the Prometheus series they go to.
struct TierLatency {
    local: LatencyHistogram,
    exported: metrics::Histogram,
}

/// One tier of one keyspace. The Prometheus handles are resolved on first
/// use, so a tier or operation a keyspace never used has no series, and
/// the hot path skips building a labelled key on every call.
#[derive(Default)]
struct TierCounters {
    lookups: [AtomicU64; 3],
    lookup_metrics: [OnceLock<metrics::Counter>; 3],
    latencies: [OnceLock<Box<TierLatency>>; 4],
}

/// Every figure of one keyspace on this node.
pub struct KeyspaceStats {
    metric_label: String,
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

/// How long one operation on one tier took, over every call since the node
/// started.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TierLatencyStats {
    pub tier: &'static str,
    pub operation: &'static str,
    #[serde(flatten)]
    pub summary: LatencySummary,
}

impl KeyspaceStats {
    fn new(metric_label: String) -> Self {
        KeyspaceStats {
            metric_label,
            tiers: Default::default(),
        }
    }

    pub fn record_lookup(&self, tier: &'static str, outcome: TierOutcome) {
        let Some(tier_index) = tier_index(tier) else {
            return;
        };
        let tier_counters = &self.tiers[tier_index];
        tier_counters.lookups[outcome.index()].fetch_add(1, Ordering::Relaxed);
        tier_counters.lookup_metrics[outcome.index()]
            .get_or_init(|| {
                metrics::counter!(
                    LOOKUPS_METRIC,
                    "keyspace" => self.metric_label.clone(),
                    "tier" => tier,
                    "result" => outcome.label()
                )
            })
            .increment(1);
    }

    pub fn record_call(&self, tier: &'static str, operation: TierOperation, elapsed: Duration) {
        let Some(tier_index) = tier_index(tier) else {
            return;
        };
        let latency = self.tiers[tier_index].latencies[operation.index()].get_or_init(|| {
            Box::new(TierLatency {
                local: LatencyHistogram::default(),
                exported: metrics::histogram!(
                    TIER_DURATION_METRIC,
                    "keyspace" => self.metric_label.clone(),
                    "tier" => tier,
                    "operation" => operation.label()
                ),
            })
        });
        latency.local.record(elapsed);
        latency.exported.record(elapsed.as_secs_f64());
    }

    /// Lookup counts of the tiers that saw any lookup.
    pub fn lookups(&self) -> Vec<TierStats> {
        let mut snapshot = Vec::new();
        for (tier_index, tier) in TIER_NAMES.iter().enumerate() {
            let count_of = |outcome: TierOutcome| {
                self.tiers[tier_index].lookups[outcome.index()].load(Ordering::Relaxed)
            };
            let [hits, misses, errors] = TierOutcome::ALL.map(count_of);
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

    /// Latency of every tier and operation that saw a call.
    pub fn latencies(&self) -> Vec<TierLatencyStats> {
        let mut snapshot = Vec::new();
        for (tier_index, tier) in TIER_NAMES.iter().enumerate() {
            for operation in TierOperation::ALL {
                let summary = self.tiers[tier_index].latencies[operation.index()]
                    .get()
                    .and_then(|latency| latency.local.summary());
                if let Some(summary) = summary {
                    snapshot.push(TierLatencyStats {
                        tier,
                        operation: operation.label(),
                        summary,
                    });
                }
            }
        }
        snapshot
    }
}

fn tier_index(tier: &str) -> Option<usize> {
    TIER_NAMES.iter().position(|name| *name == tier)
}

pub struct StatsRegistry {
    metric_labels: Arc<KeyspaceMetricLabels>,
    keyspaces: RwLock<HashMap<(TenantId, ResourceName), Arc<KeyspaceStats>>>,
}

impl StatsRegistry {
    pub fn new(metric_labels: Arc<KeyspaceMetricLabels>) -> Self {
        StatsRegistry {
            metric_labels,
            keyspaces: RwLock::new(HashMap::new()),
        }
    }

    /// Per-tier lookup counts of a keyspace, for tiers that saw any lookup.
    pub fn snapshot(&self, tenant: &TenantId, keyspace: &ResourceName) -> Vec<TierStats> {
        self.keyspace(tenant, keyspace).lookups()
    }

    /// The keyspace's figures, created empty on first use.
    pub fn keyspace(&self, tenant: &TenantId, keyspace: &ResourceName) -> Arc<KeyspaceStats> {
        let identity = (tenant.clone(), keyspace.clone());
        if let Some(stats) = self.keyspaces.read().get(&identity) {
            return Arc::clone(stats);
        }
        let metric_label = self.metric_labels.label_of(tenant, keyspace);
        let mut keyspaces = self.keyspaces.write();
        if keyspaces.len() >= MAX_TRACKED_KEYSPACES {
            keyspaces.clear();
        }
        Arc::clone(
            keyspaces
                .entry(identity)
                .or_insert_with(|| Arc::new(KeyspaceStats::new(metric_label))),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant() -> TenantId {
        TenantId::parse("acme").unwrap()
    }

    fn keyspace(name: &str) -> ResourceName {
        ResourceName::parse("keyspace", name).unwrap()
    }

    #[test]
    fn only_declared_keyspaces_get_their_own_label() {
        let labels = KeyspaceMetricLabels::for_declared_keyspaces([(tenant(), keyspace("users"))]);
        assert_eq!(labels.label_of(&tenant(), &keyspace("users")), "acme/users");
        assert_eq!(labels.label_of(&tenant(), &keyspace("carts")), "other");
        let other_tenant = TenantId::parse("globex").unwrap();
        assert_eq!(labels.label_of(&other_tenant, &keyspace("users")), "other");
    }

    #[test]
    fn lookups_and_latencies_are_kept_per_keyspace_and_tier() {
        let registry = StatsRegistry::new(Arc::default());
        let users = registry.keyspace(&tenant(), &keyspace("users"));
        users.record_lookup("l1", TierOutcome::Miss);
        users.record_lookup("sqlite", TierOutcome::Hit);
        users.record_call("l1", TierOperation::Get, Duration::from_micros(1));
        users.record_call("sqlite", TierOperation::Get, Duration::from_micros(300));
        users.record_call("sqlite", TierOperation::Write, Duration::from_micros(900));
        let again = registry.snapshot(&tenant(), &keyspace("users"));
        assert_eq!(again.len(), 2);
        assert_eq!(again[0].tier, "l1");
        assert_eq!(again[0].hit_ratio, Some(0.0));
        assert_eq!(again[1].hit_ratio, Some(1.0));
        let latencies = users.latencies();
        let described: Vec<(&str, &str, u64)> = latencies
            .iter()
            .map(|latency| (latency.tier, latency.operation, latency.summary.calls))
            .collect();
        assert_eq!(
            described,
            vec![
                ("l1", "get", 1),
                ("sqlite", "get", 1),
                ("sqlite", "write", 1)
            ]
        );
        assert!(registry.snapshot(&tenant(), &keyspace("carts")).is_empty());
    }
}
