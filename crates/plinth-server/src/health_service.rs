//! Health of the node and of every engine it is configured with.
//!
//! Results are cached for `health.cache_ttl` (about a second) and checks
//! never overlap: concurrent health requests wait for the one check in
//! flight and share its answer, so probes from load balancers cannot
//! hammer the engines. Each dependency keeps its last N checks.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use plinth_core::resilience::BreakerSnapshot;
use plinth_engines::HealthProbe;
use serde::Serialize;
use time::OffsetDateTime;
use tokio::sync::Mutex;
use utoipa::ToSchema;

/// A probe that takes longer than this counts as down.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DependencyStatus {
    Up,
    Down,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct CheckRecord {
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub at: OffsetDateTime,
    pub status: DependencyStatus,
    pub latency_ms: f64,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct DependencyHealth {
    /// `sqlite`, `postgres` or `redis`.
    pub name: String,
    pub status: DependencyStatus,
    pub latency_ms: f64,
    /// Why the last check failed; absent when up.
    pub error: Option<String>,
    #[schema(value_type = Object)]
    pub breaker: BreakerSnapshot,
    /// The most recent checks, newest last.
    pub history: Vec<CheckRecord>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NodeStatus {
    /// Every engine answers and the node accepts work.
    Ready,
    /// Some engine is down; the node still answers what it can.
    Degraded,
    /// The node is draining before it exits.
    ShuttingDown,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct HealthReport {
    pub status: NodeStatus,
    pub version: String,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub checked_at: OffsetDateTime,
    pub uptime_seconds: u64,
    pub dependencies: Vec<DependencyHealth>,
}

impl HealthReport {
    pub fn is_ready(&self) -> bool {
        self.status == NodeStatus::Ready
    }
}

struct CachedChecks {
    checked_at: Option<Instant>,
    dependencies: Vec<DependencyHealth>,
    histories: Vec<VecDeque<CheckRecord>>,
}

pub struct HealthService {
    probes: Vec<Arc<dyn HealthProbe>>,
    cache_ttl: Duration,
    history_length: usize,
    started_at: Instant,
    shutting_down: AtomicBool,
    cache: Mutex<CachedChecks>,
}

impl HealthService {
    pub fn new(
        probes: Vec<Arc<dyn HealthProbe>>,
        cache_ttl: Duration,
        history_length: usize,
    ) -> Self {
        let histories = probes.iter().map(|_| VecDeque::new()).collect();
        HealthService {
            probes,
            cache_ttl,
            history_length: history_length.max(1),
            started_at: Instant::now(),
            shutting_down: AtomicBool::new(false),
            cache: Mutex::new(CachedChecks {
                checked_at: None,
                dependencies: Vec::new(),
                histories,
            }),
        }
    }

    /// From now on the node reports itself as shutting down (not ready).
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    pub async fn report(&self) -> HealthReport {
        let mut cache = self.cache.lock().await;
        let fresh = cache
            .checked_at
            .is_some_and(|checked_at| checked_at.elapsed() < self.cache_ttl);
        if !fresh {
            self.check_all(&mut cache).await;
        }
        let all_up = cache
            .dependencies
            .iter()
            .all(|dependency| dependency.status == DependencyStatus::Up);
        let status = if self.is_shutting_down() {
            NodeStatus::ShuttingDown
        } else if all_up {
            NodeStatus::Ready
        } else {
            NodeStatus::Degraded
        };
        HealthReport {
            status,
            version: env!("CARGO_PKG_VERSION").to_string(),
            checked_at: OffsetDateTime::now_utc(),
            uptime_seconds: self.started_at.elapsed().as_secs(),
            dependencies: cache.dependencies.clone(),
        }
    }

    async fn check_all(&self, cache: &mut CachedChecks) {
        let mut pending = Vec::with_capacity(self.probes.len());
        for probe in &self.probes {
            pending.push(check_one(Arc::clone(probe)));
        }
        let results = futures::future::join_all(pending).await;
        let mut dependencies = Vec::with_capacity(results.len());
        for (index, (probe, outcome)) in self.probes.iter().zip(results).enumerate() {
            let history = &mut cache.histories[index];
            history.push_back(CheckRecord {
                at: OffsetDateTime::now_utc(),
                status: outcome.status,
                latency_ms: outcome.latency_ms,
            });
            while history.len() > self.history_length {
                history.pop_front();
            }
            let up_value = if outcome.status == DependencyStatus::Up {
                1.0
            } else {
                0.0
            };
            metrics::gauge!("plinth_dependency_up", "dependency" => probe.name()).set(up_value);
            dependencies.push(DependencyHealth {
                name: probe.name().to_string(),
                status: outcome.status,
                latency_ms: outcome.latency_ms,
                error: outcome.error,
                breaker: probe.breaker().snapshot(),
                history: history.iter().cloned().collect(),
            });
        }
        cache.dependencies = dependencies;
        cache.checked_at = Some(Instant::now());
    }
}

struct ProbeOutcome {
    status: DependencyStatus,
    latency_ms: f64,
    error: Option<String>,
}

async fn check_one(probe: Arc<dyn HealthProbe>) -> ProbeOutcome {
    let started = Instant::now();
    let result = tokio::time::timeout(PROBE_TIMEOUT, probe.probe()).await;
    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    let error = match result {
        Ok(Ok(())) => None,
        Ok(Err(failure)) => Some(failure.0),
        Err(_) => Some(format!(
            "no answer within {}",
            plinth_core::HumanDuration(PROBE_TIMEOUT)
        )),
    };
    let status = if error.is_none() {
        DependencyStatus::Up
    } else {
        DependencyStatus::Down
    };
    ProbeOutcome {
        status,
        latency_ms,
        error,
    }
}
