//! Warming: loading a keyspace's keys from its authoritative tier (the
//! store, else Redis) into its faster tiers (Redis, L1), so that the first
//! reads after a restart are hits.
//!
//! A warming is a background job on this node, started at start-up for the
//! keyspaces the node configuration gives a `warm` spec, or on demand. At
//! most one runs per keyspace; its progress and the keyspace's hit ratio
//! per tier since it started stay readable until the next warming of that
//! keyspace replaces them. Jobs live in memory: each node warms, and
//! reports on, its own L1.
//!
//! A warming selects keys by prefix (listed page by page from the
//! authoritative tier; `all` is the empty prefix) or by name, at most
//! `max_keys` of them, and reads [`WARM_READS_IN_FLIGHT`] at a time. Copies
//! go through `put_if_newer`, so a warming never overwrites a write made
//! while it runs. The first failure of the authoritative tier ends the job
//! as `failed`; a copy tier that cannot take a copy is skipped, as on a read.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::TryStreamExt;
use parking_lot::Mutex;
use plinth_core::config::{WarmSelection, WarmSpec};
use plinth_core::{Error, ResourceName, TenantId};
use serde::Serialize;
use tokio::task::AbortHandle;

use crate::clock::now_ms;
use crate::model::CacheKey;
use crate::service::CacheService;
use crate::stats::TierStats;

/// Keys one warming reads from the authoritative tier at once: enough to
/// hide the store's latency, few enough to leave it to client traffic.
pub const WARM_READS_IN_FLIGHT: usize = 16;
/// Keys listed per page when warming by prefix.
const LIST_PAGE_SIZE: usize = 500;
/// Keyspaces whose last warming is remembered; beyond it finished jobs are
/// forgotten, since a status is an observation, not data.
const MAX_REMEMBERED_JOBS: usize = 10_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WarmState {
    /// No warming of the keyspace ran on this node since it started.
    Idle,
    Running,
    Done,
    Failed,
}

impl WarmState {
    pub fn as_str(self) -> &'static str {
        match self {
            WarmState::Idle => "idle",
            WarmState::Running => "running",
            WarmState::Done => "done",
            WarmState::Failed => "failed",
        }
    }
}

/// A keyspace's last warming on this node.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WarmStatus {
    pub state: WarmState,
    /// Keys selected so far: the keys listed under the prefix, or the keys
    /// given by name.
    pub requested: u64,
    /// Selected keys copied into the faster tiers.
    pub loaded: u64,
    /// Selected keys the authoritative tier did not hold (any more).
    pub missing: u64,
    pub started_at_ms: Option<u64>,
    pub finished_at_ms: Option<u64>,
    pub error: Option<String>,
    /// The keyspace's lookups per tier from the start of the job to its
    /// end, or to now while it runs.
    pub tiers: Vec<TierStats>,
}

impl WarmStatus {
    fn idle() -> Self {
        WarmStatus {
            state: WarmState::Idle,
            requested: 0,
            loaded: 0,
            missing: 0,
            started_at_ms: None,
            finished_at_ms: None,
            error: None,
            tiers: Vec::new(),
        }
    }
}

/// A checked [`WarmSpec`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WarmPlan {
    target: WarmTarget,
    max_keys: usize,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum WarmTarget {
    Prefix(String),
    Keys(Vec<CacheKey>),
}

impl WarmPlan {
    pub fn from_spec(spec: &WarmSpec) -> Result<WarmPlan, Error> {
        let target = match spec.selection()? {
            WarmSelection::Prefix(prefix) => WarmTarget::Prefix(prefix),
            WarmSelection::Keys(texts) => WarmTarget::Keys(parse_given_keys(&texts)?),
        };
        Ok(WarmPlan {
            target,
            max_keys: spec.max_keys,
        })
    }
}

fn parse_given_keys(texts: &[String]) -> Result<Vec<CacheKey>, Error> {
    let mut keys = Vec::with_capacity(texts.len());
    for (index, text) in texts.iter().enumerate() {
        let key = CacheKey::parse(text).map_err(|error| {
            // The index, not the text: an invalid key may be huge or unprintable.
            Error::invalid_argument(
                "invalid_warm_spec",
                format!("keys[{index}] is not a valid key: {}", error.detail()),
            )
        })?;
        keys.push(key);
    }
    Ok(keys)
}

type JobIdentity = (TenantId, ResourceName);

/// The last warming of each keyspace on this node.
#[derive(Default)]
pub struct WarmingJobs {
    jobs: Mutex<HashMap<JobIdentity, Arc<WarmJob>>>,
}

impl WarmingJobs {
    /// Registers a new running job for the keyspace, unless one runs already.
    fn claim(
        &self,
        identity: JobIdentity,
        stats_at_start: Vec<TierStats>,
    ) -> Result<Arc<WarmJob>, Error> {
        let mut jobs = self.jobs.lock();
        if let Some(current) = jobs.get(&identity)
            && current.is_running()
        {
            return Err(Error::conflict(
                "warming_in_progress",
                format!(
                    "keyspace `{}` is being warmed already; start another warming once its status is done or failed",
                    identity.1
                ),
            ));
        }
        if jobs.len() >= MAX_REMEMBERED_JOBS {
            jobs.retain(|_, job| job.is_running());
        }
        let job = Arc::new(WarmJob::new(stats_at_start));
        jobs.insert(identity, Arc::clone(&job));
        Ok(job)
    }

    fn get(&self, identity: &JobIdentity) -> Option<Arc<WarmJob>> {
        self.jobs.lock().get(identity).cloned()
    }

    fn running(&self) -> Vec<(JobIdentity, Arc<WarmJob>)> {
        let jobs = self.jobs.lock();
        let mut running = Vec::new();
        for (identity, job) in jobs.iter() {
            if job.is_running() {
                running.push((identity.clone(), Arc::clone(job)));
            }
        }
        running
    }
}

struct WarmJob {
    started_at_ms: u64,
    stats_at_start: Vec<TierStats>,
    requested: AtomicU64,
    loaded: AtomicU64,
    missing: AtomicU64,
    end: Mutex<Option<JobEnd>>,
    task: Mutex<Option<AbortHandle>>,
}

struct JobEnd {
    finished_at_ms: u64,
    error: Option<String>,
    stats_at_end: Vec<TierStats>,
}

impl WarmJob {
    fn new(stats_at_start: Vec<TierStats>) -> Self {
        WarmJob {
            started_at_ms: now_ms(),
            stats_at_start,
            requested: AtomicU64::new(0),
            loaded: AtomicU64::new(0),
            missing: AtomicU64::new(0),
            end: Mutex::new(None),
            task: Mutex::new(None),
        }
    }

    fn is_running(&self) -> bool {
        self.end.lock().is_none()
    }

    /// Records the end; the first one wins (a cancellation may race the
    /// job's own end).
    fn finish(&self, error: Option<String>, stats_at_end: Vec<TierStats>) {
        let mut end = self.end.lock();
        if end.is_some() {
            return;
        }
        *end = Some(JobEnd {
            finished_at_ms: now_ms(),
            error,
            stats_at_end,
        });
    }

    fn status(&self, stats_now: Vec<TierStats>) -> WarmStatus {
        let end = self.end.lock();
        let (state, finished_at_ms, error, stats_at_close) = match &*end {
            None => (WarmState::Running, None, None, stats_now),
            Some(end) => {
                let state = if end.error.is_some() {
                    WarmState::Failed
                } else {
                    WarmState::Done
                };
                let stats_at_end = end.stats_at_end.clone();
                (
                    state,
                    Some(end.finished_at_ms),
                    end.error.clone(),
                    stats_at_end,
                )
            }
        };
        WarmStatus {
            state,
            requested: self.requested.load(Ordering::Relaxed),
            loaded: self.loaded.load(Ordering::Relaxed),
            missing: self.missing.load(Ordering::Relaxed),
            started_at_ms: Some(self.started_at_ms),
            finished_at_ms,
            error,
            tiers: lookups_between(&self.stats_at_start, stats_at_close),
        }
    }
}

/// Starts warming the keyspace in the background; returns the new job's
/// status. Fails with `nothing_to_warm` when the keyspace has no store or
/// Redis to load from or no faster tier to fill, and with
/// `warming_in_progress` while a warming of it runs.
pub async fn start_warming(
    service: &Arc<CacheService>,
    tenant: &TenantId,
    keyspace: &ResourceName,
    plan: WarmPlan,
) -> Result<WarmStatus, Error> {
    let record = service.keyspace(tenant, keyspace).await?;
    if !service.is_warmable(record) {
        return Err(nothing_to_warm(keyspace));
    }
    let identity = (tenant.clone(), keyspace.clone());
    let job = service
        .warming_jobs()
        .claim(identity, service.stats().snapshot(tenant, keyspace))?;
    let task = tokio::spawn(run_job(
        Arc::clone(service),
        tenant.clone(),
        keyspace.clone(),
        plan,
        Arc::clone(&job),
    ));
    *job.task.lock() = Some(task.abort_handle());
    Ok(job.status(service.stats().snapshot(tenant, keyspace)))
}

/// The keyspace's last warming on this node (`idle` when there was none).
pub async fn warming_status(
    service: &CacheService,
    tenant: &TenantId,
    keyspace: &ResourceName,
) -> Result<WarmStatus, Error> {
    service.keyspace(tenant, keyspace).await?;
    let identity = (tenant.clone(), keyspace.clone());
    let Some(job) = service.warming_jobs().get(&identity) else {
        return Ok(WarmStatus::idle());
    };
    Ok(job.status(service.stats().snapshot(tenant, keyspace)))
}

/// Stops every running warming, so none reads from engines that are about
/// to close (the node is shutting down).
pub fn cancel_all_warmings(service: &CacheService) {
    for ((tenant, keyspace), job) in service.warming_jobs().running() {
        if let Some(task) = job.task.lock().take() {
            task.abort();
        }
        job.finish(
            Some("cancelled: the node is shutting down".to_string()),
            service.stats().snapshot(&tenant, &keyspace),
        );
    }
}

pub fn nothing_to_warm(keyspace: &ResourceName) -> Error {
    Error::invalid_argument(
        "nothing_to_warm",
        format!(
            "keyspace `{keyspace}` has nothing to warm: warming loads from the store (store = \"store\") \
             or Redis (l2 = \"redis\") into a faster tier (l1, or Redis above the store)"
        ),
    )
}

async fn run_job(
    service: Arc<CacheService>,
    tenant: TenantId,
    keyspace: ResourceName,
    plan: WarmPlan,
    job: Arc<WarmJob>,
) {
    tracing::info!(tenant = %tenant, keyspace = %keyspace, "cache warming started");
    let outcome = load_selected_keys(&service, &tenant, &keyspace, &plan, &job).await;
    let loaded = job.loaded.load(Ordering::Relaxed);
    let missing = job.missing.load(Ordering::Relaxed);
    let error = match outcome {
        Ok(()) => {
            tracing::info!(tenant = %tenant, keyspace = %keyspace, loaded, missing, "cache warming done");
            None
        }
        Err(error) => {
            tracing::warn!(tenant = %tenant, keyspace = %keyspace, loaded, missing, error = %error, "cache warming failed");
            Some(error.to_string())
        }
    };
    job.finish(error, service.stats().snapshot(&tenant, &keyspace));
}

async fn load_selected_keys(
    service: &CacheService,
    tenant: &TenantId,
    keyspace: &ResourceName,
    plan: &WarmPlan,
    job: &WarmJob,
) -> Result<(), Error> {
    match &plan.target {
        WarmTarget::Keys(keys) => {
            job.requested
                .fetch_add(keys.len() as u64, Ordering::Relaxed);
            warm_keys(service, tenant, keyspace, keys, job).await
        }
        WarmTarget::Prefix(prefix) => {
            warm_prefix(service, tenant, keyspace, prefix, plan.max_keys, job).await
        }
    }
}

/// Lists the keys under `prefix` page by page and warms each page before
/// listing the next, so memory stays bounded by one page.
async fn warm_prefix(
    service: &CacheService,
    tenant: &TenantId,
    keyspace: &ResourceName,
    prefix: &str,
    max_keys: usize,
    job: &WarmJob,
) -> Result<(), Error> {
    let mut remaining = max_keys;
    let mut after: Option<String> = None;
    while remaining > 0 {
        let page = service
            .list(
                tenant,
                keyspace,
                prefix,
                after.as_deref(),
                remaining.min(LIST_PAGE_SIZE),
            )
            .await?;
        let mut keys = Vec::with_capacity(page.keys.len());
        for text in &page.keys {
            keys.push(CacheKey::parse(text)?);
        }
        if keys.is_empty() {
            return Ok(());
        }
        remaining = remaining.saturating_sub(keys.len());
        job.requested
            .fetch_add(keys.len() as u64, Ordering::Relaxed);
        warm_keys(service, tenant, keyspace, &keys, job).await?;
        let Some(next_after) = page.next_after else {
            return Ok(());
        };
        after = Some(next_after);
    }
    Ok(())
}

async fn warm_keys(
    service: &CacheService,
    tenant: &TenantId,
    keyspace: &ResourceName,
    keys: &[CacheKey],
    job: &WarmJob,
) -> Result<(), Error> {
    futures::stream::iter(keys.iter().map(Ok))
        .try_for_each_concurrent(WARM_READS_IN_FLIGHT, |key| async move {
            let counter = if service.warm_key(tenant, keyspace, key).await? {
                &job.loaded
            } else {
                &job.missing
            };
            counter.fetch_add(1, Ordering::Relaxed);
            Ok(())
        })
        .await
}

/// Lookups per tier between two snapshots of one keyspace's stats.
fn lookups_between(earlier: &[TierStats], later: Vec<TierStats>) -> Vec<TierStats> {
    let mut differences = Vec::with_capacity(later.len());
    for current in later {
        let before = earlier
            .iter()
            .find(|candidate| candidate.tier == current.tier)
            .cloned()
            .unwrap_or_default();
        // Saturating: the registry starts over when it tracks too many keyspaces.
        let hits = current.hits.saturating_sub(before.hits);
        let misses = current.misses.saturating_sub(before.misses);
        let lookups = hits + misses;
        differences.push(TierStats {
            tier: current.tier,
            hits,
            misses,
            errors: current.errors.saturating_sub(before.errors),
            hit_ratio: (lookups > 0).then(|| hits as f64 / lookups as f64),
        });
    }
    differences
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use bytes::Bytes;
    use plinth_core::config::{DurableTierKind, KeyspaceConfig, L1Config, SqliteConfig};
    use plinth_core::resilience::{BreakerConfig, CircuitBreaker};
    use plinth_engines::{SqliteEngine, Store};
    use tempfile::TempDir;

    use super::*;
    use crate::catalog::KeyspaceCatalog;
    use crate::keyspace::l1_settings;
    use crate::l1::L1Tier;
    use crate::model::WriteCondition;
    use crate::service::{CacheServiceOptions, CacheWrite, Consistency};
    use crate::setup::CACHE_MIGRATION_SETS;
    use crate::store_sqlite::SqliteCacheStore;

    /// Two nodes (services with their own L1) on one SQLite store.
    struct TwoNodes {
        writer: Arc<CacheService>,
        fresh: Arc<CacheService>,
        tenant: TenantId,
        _directory: TempDir,
    }

    async fn two_nodes() -> TwoNodes {
        let directory = tempfile::tempdir().expect("create a temporary directory");
        let breaker = Arc::new(CircuitBreaker::new("sqlite", BreakerConfig::default()));
        let engine = Arc::new(
            SqliteEngine::open(
                &directory.path().join("cache.db"),
                &SqliteConfig::default(),
                breaker,
                Duration::from_secs(10),
            )
            .expect("open sqlite"),
        );
        let store = Store::Sqlite(Arc::clone(&engine));
        store
            .migrate(&CACHE_MIGRATION_SETS)
            .await
            .expect("apply the cache migrations");
        let node = || {
            Arc::new(CacheService::new(
                KeyspaceCatalog::new(store.clone()),
                Arc::new(L1Tier::new(
                    l1_settings(&L1Config::default()),
                    Arc::default(),
                )),
                None,
                Arc::new(SqliteCacheStore::new(Arc::clone(&engine))),
                CacheServiceOptions {
                    default_keyspace: KeyspaceConfig::default(),
                    encryption_key: None,
                    coherence: None,
                },
            ))
        };
        TwoNodes {
            writer: node(),
            fresh: node(),
            tenant: TenantId::default_tenant(),
            _directory: directory,
        }
    }

    fn keyspace_name(name: &str) -> ResourceName {
        ResourceName::parse("keyspace", name).expect("a valid keyspace name")
    }

    fn key(text: &str) -> CacheKey {
        CacheKey::parse(text).expect("a valid key")
    }

    fn plan(json: &str) -> WarmPlan {
        let spec: WarmSpec = serde_json::from_str(json).expect("a warm spec");
        WarmPlan::from_spec(&spec).expect("a valid warm spec")
    }

    async fn write(service: &CacheService, tenant: &TenantId, keyspace: &str, key_text: &str) {
        let write = CacheWrite {
            value: Bytes::from(format!("value of {key_text}")),
            content_type: "text/plain".to_string(),
            ttl: None,
            tags: Vec::new(),
            condition: WriteCondition::Always,
        };
        service
            .put(tenant, &keyspace_name(keyspace), &key(key_text), write)
            .await
            .expect("write");
    }

    async fn tier_of(
        service: &CacheService,
        tenant: &TenantId,
        keyspace: &str,
        key_text: &str,
    ) -> &'static str {
        service
            .get(
                tenant,
                &keyspace_name(keyspace),
                &key(key_text),
                Consistency::Eventual,
            )
            .await
            .expect("read")
            .expect("the key exists")
            .tier
    }

    async fn wait_until_finished(
        service: &CacheService,
        tenant: &TenantId,
        keyspace: &str,
    ) -> WarmStatus {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let status = warming_status(service, tenant, &keyspace_name(keyspace))
                .await
                .expect("status");
            if status.state != WarmState::Running {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the warming did not finish: {status:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn warming_by_prefix_fills_the_l1_of_a_fresh_node_from_the_store() {
        let nodes = two_nodes().await;
        for index in 0..30 {
            write(
                &nodes.writer,
                &nodes.tenant,
                "users",
                &format!("user:{index}"),
            )
            .await;
        }
        write(&nodes.writer, &nodes.tenant, "users", "other:1").await;

        let started = start_warming(
            &nodes.fresh,
            &nodes.tenant,
            &keyspace_name("users"),
            plan(r#"{"prefix": "user:"}"#),
        )
        .await
        .expect("start warming");
        assert_eq!(started.state, WarmState::Running);
        let finished = wait_until_finished(&nodes.fresh, &nodes.tenant, "users").await;

        assert_eq!(finished.state, WarmState::Done, "{finished:?}");
        assert_eq!(
            (finished.requested, finished.loaded, finished.missing),
            (30, 30, 0)
        );
        assert!(finished.finished_at_ms >= finished.started_at_ms);
        assert_eq!(
            tier_of(&nodes.fresh, &nodes.tenant, "users", "user:17").await,
            "l1"
        );
        assert_eq!(
            tier_of(&nodes.fresh, &nodes.tenant, "users", "other:1").await,
            "sqlite"
        );
    }

    #[tokio::test]
    async fn warming_stops_at_max_keys() {
        let nodes = two_nodes().await;
        for index in 0..20 {
            write(
                &nodes.writer,
                &nodes.tenant,
                "bounded",
                &format!("k{index:02}"),
            )
            .await;
        }
        start_warming(
            &nodes.fresh,
            &nodes.tenant,
            &keyspace_name("bounded"),
            plan(r#"{"all": true, "max_keys": 5}"#),
        )
        .await
        .expect("start warming");
        let finished = wait_until_finished(&nodes.fresh, &nodes.tenant, "bounded").await;
        assert_eq!(
            (finished.requested, finished.loaded),
            (5, 5),
            "{finished:?}"
        );
        assert_eq!(
            tier_of(&nodes.fresh, &nodes.tenant, "bounded", "k04").await,
            "l1"
        );
        assert_eq!(
            tier_of(&nodes.fresh, &nodes.tenant, "bounded", "k05").await,
            "sqlite"
        );
    }

    #[tokio::test]
    async fn warming_by_name_counts_keys_the_store_does_not_hold_as_missing() {
        let nodes = two_nodes().await;
        write(&nodes.writer, &nodes.tenant, "named", "present").await;
        start_warming(
            &nodes.fresh,
            &nodes.tenant,
            &keyspace_name("named"),
            plan(r#"{"keys": ["present", "absent"]}"#),
        )
        .await
        .expect("start warming");
        let finished = wait_until_finished(&nodes.fresh, &nodes.tenant, "named").await;
        assert_eq!(
            (
                finished.state,
                finished.requested,
                finished.loaded,
                finished.missing
            ),
            (WarmState::Done, 2, 1, 1)
        );
    }

    // A current-thread runtime cannot run the first job before the second
    // start is attempted, so the conflict is certain.
    #[tokio::test(flavor = "current_thread")]
    async fn a_second_warming_is_refused_while_the_first_runs() {
        let nodes = two_nodes().await;
        write(&nodes.writer, &nodes.tenant, "busy", "a").await;
        let keyspace = keyspace_name("busy");
        start_warming(
            &nodes.fresh,
            &nodes.tenant,
            &keyspace,
            plan(r#"{"all": true}"#),
        )
        .await
        .expect("start warming");
        let refused = start_warming(
            &nodes.fresh,
            &nodes.tenant,
            &keyspace,
            plan(r#"{"all": true}"#),
        )
        .await
        .unwrap_err();
        assert_eq!(refused.code(), "warming_in_progress");

        wait_until_finished(&nodes.fresh, &nodes.tenant, "busy").await;
        start_warming(
            &nodes.fresh,
            &nodes.tenant,
            &keyspace,
            plan(r#"{"all": true}"#),
        )
        .await
        .expect("a new warming once the first is done");
    }

    #[tokio::test]
    async fn keyspaces_without_a_tier_to_load_from_or_to_fill_have_nothing_to_warm() {
        let nodes = two_nodes().await;
        let l1_only = KeyspaceConfig {
            store: DurableTierKind::None,
            ..KeyspaceConfig::default()
        };
        let store_only = KeyspaceConfig {
            l1: None,
            ..KeyspaceConfig::default()
        };
        for (name, config) in [("l1-only", l1_only), ("store-only", store_only)] {
            let keyspace = keyspace_name(name);
            nodes
                .fresh
                .configure(&nodes.tenant, &keyspace, config)
                .await
                .expect("configure");
            let refused = start_warming(
                &nodes.fresh,
                &nodes.tenant,
                &keyspace,
                plan(r#"{"all": true}"#),
            )
            .await
            .unwrap_err();
            assert_eq!(refused.code(), "nothing_to_warm", "{name}");
        }
        let unknown = start_warming(
            &nodes.fresh,
            &nodes.tenant,
            &keyspace_name("ghost"),
            plan(r#"{"all": true}"#),
        )
        .await
        .unwrap_err();
        assert_eq!(unknown.code(), "keyspace_not_found");
    }

    #[tokio::test]
    async fn a_keyspace_never_warmed_on_this_node_is_idle() {
        let nodes = two_nodes().await;
        write(&nodes.writer, &nodes.tenant, "quiet", "a").await;
        let status = warming_status(&nodes.fresh, &nodes.tenant, &keyspace_name("quiet"))
            .await
            .expect("status");
        assert_eq!(status, WarmStatus::idle());
    }

    #[test]
    fn invalid_given_keys_are_named_by_their_position() {
        let spec: WarmSpec = serde_json::from_str(r#"{"keys": ["fine", "not fine"]}"#).unwrap();
        let error = WarmPlan::from_spec(&spec).unwrap_err();
        assert_eq!(error.code(), "invalid_warm_spec");
        assert!(error.detail().starts_with("keys[1] "), "{}", error.detail());
    }

    #[test]
    fn the_hit_ratio_of_a_job_counts_only_lookups_since_it_started() {
        let stats = |tier: &'static str, hits: u64, misses: u64| TierStats {
            tier,
            hits,
            misses,
            errors: 0,
            hit_ratio: None,
        };
        let earlier = vec![stats("l1", 10, 90)];
        let later = vec![stats("l1", 40, 100), stats("sqlite", 10, 0)];
        let differences = lookups_between(&earlier, later);
        assert_eq!(differences[0].hits, 30);
        assert_eq!(differences[0].misses, 10);
        assert_eq!(differences[0].hit_ratio, Some(0.75));
        assert_eq!(differences[1].hit_ratio, Some(1.0));
        let unchanged = lookups_between(&earlier, vec![stats("l1", 10, 90)]);
        assert_eq!(unchanged[0].hit_ratio, None);
    }
}
