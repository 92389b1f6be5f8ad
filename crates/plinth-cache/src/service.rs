//! The cache service: reads go through a keyspace's tiers from the fastest
//! (L1, then Redis, then the store) and fill the faster ones on the way
//! back; writes go to the authoritative tier (the store when the keyspace
//! has one, else Redis, else L1) first, then replace or tombstone the
//! copies in the faster tiers.
//!
//! Copies only ever move forward: every write gets a revision from the
//! authoritative tier and a faster tier only accepts a copy with a higher
//! revision than the one it holds, so a slow fill cannot resurrect an older
//! value or a deleted key.
//!
//! When Redis is a copy tier and cannot take a write, the keyspace's L2
//! epoch is bumped in the catalog: every Redis copy of that keyspace becomes
//! unreachable, instead of serving stale values once Redis is back.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use plinth_core::{Error, ErrorKind, ResourceName, TenantId};
use tokio::sync::broadcast;

use crate::catalog::{KeyspaceCatalog, KeyspaceRecord, keyspace_not_found};
use crate::clock::now_ms;
use crate::codec::ValueCodec;
use crate::coherence::{Coherence, CoherenceChange};
use crate::events::{CacheChange, CacheEvent, EVENT_BUS_CAPACITY};
use crate::keyspace::{DurableTierKind, KeyspaceConfig, SharedTierKind, l1_settings};
use crate::l1::L1Tier;
use crate::model::{
    CacheEntry, CacheKey, KeyspaceScope, Revision, Selector, TOMBSTONE_LIFETIME_MS, ValueEncoding,
    WriteCondition,
};
use crate::stats::{KeyspaceStats, StatsRegistry, TierOperation, TierOutcome};
use crate::tier::{CacheTier, ConditionalOutcome, KeyPage};
use crate::warming::WarmingJobs;

/// Redis keys carry `version * L2_EPOCH_SPAN + l2_epoch` as their version,
/// so bumping either makes every older copy unreachable.
const L2_EPOCH_SPAN: u64 = 1 << 20;

/// Which copies a read may be answered from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Consistency {
    /// Any tier.
    Eventual,
    /// The authoritative tier only.
    Strong,
    /// Any copy at least as new as the session's last write (its token).
    Session(Revision),
}

/// A value as a client gets it back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheRead {
    pub entry: CacheEntry,
    /// Which tier answered: `l1`, `redis`, `sqlite` or `postgres`.
    pub tier: &'static str,
}

/// A write as a client sends it.
#[derive(Clone, Debug)]
pub struct CacheWrite {
    pub value: Bytes,
    pub content_type: String,
    /// `None` uses the keyspace's default TTL.
    pub ttl: Option<Duration>,
    pub tags: Vec<String>,
    pub condition: WriteCondition,
}

pub struct CacheServiceOptions {
    /// Configuration of keyspaces created implicitly by a first write.
    pub default_keyspace: KeyspaceConfig,
    /// AES-256 key for keyspaces with `encrypt = true`.
    pub encryption_key: Option<[u8; 32]>,
    /// Keeps other nodes' L1 copies coherent; `None` on a single node
    /// without Redis.
    pub coherence: Option<Arc<Coherence>>,
}

pub struct CacheService {
    catalog: Arc<KeyspaceCatalog>,
    l1: Arc<L1Tier>,
    redis: Option<Arc<dyn CacheTier>>,
    store: Arc<dyn CacheTier>,
    codec: ValueCodec,
    default_keyspace: KeyspaceConfig,
    events: broadcast::Sender<CacheEvent>,
    stats: StatsRegistry,
    coherence: Option<Arc<Coherence>>,
    warming: WarmingJobs,
}

/// One tier as a keyspace uses it.
struct PlannedTier {
    tier: Arc<dyn CacheTier>,
    scope: KeyspaceScope,
    /// Remote tiers hold encoded (compressed/encrypted) values.
    holds_encoded_values: bool,
}

/// The tiers of one keyspace in read order; the last is authoritative.
struct TierPlan {
    record: KeyspaceRecord,
    tiers: Vec<PlannedTier>,
    /// Looked up once per request, not once per tier call.
    stats: Arc<KeyspaceStats>,
}

impl TierPlan {
    /// Runs one call to a tier and records how long it took, whatever
    /// its outcome.
    async fn timed<T>(
        &self,
        planned: &PlannedTier,
        operation: TierOperation,
        call: impl Future<Output = T>,
    ) -> T {
        let started = Instant::now();
        let outcome = call.await;
        self.stats
            .record_call(planned.tier.name(), operation, started.elapsed());
        outcome
    }

    fn authoritative(&self) -> &PlannedTier {
        self.tiers
            .last()
            .expect("validated configurations have at least one tier")
    }

    fn copies(&self) -> &[PlannedTier] {
        &self.tiers[..self.tiers.len() - 1]
    }
}

impl CacheService {
    pub fn new(
        catalog: Arc<KeyspaceCatalog>,
        l1: Arc<L1Tier>,
        redis: Option<Arc<dyn CacheTier>>,
        store: Arc<dyn CacheTier>,
        options: CacheServiceOptions,
    ) -> Self {
        let (events, _) = broadcast::channel(EVENT_BUS_CAPACITY);
        let stats = StatsRegistry::new(Arc::clone(l1.metric_labels()));
        CacheService {
            catalog,
            l1,
            redis,
            store,
            codec: ValueCodec::new(options.encryption_key),
            default_keyspace: options.default_keyspace,
            events,
            stats,
            coherence: options.coherence,
            warming: WarmingJobs::default(),
        }
    }

    /// This node's warming jobs (see [`crate::warming`]).
    pub fn warming_jobs(&self) -> &WarmingJobs {
        &self.warming
    }

    /// Change events of every keyspace.
    pub fn subscribe(&self) -> broadcast::Receiver<CacheEvent> {
        self.events.subscribe()
    }

    pub fn stats(&self) -> &StatsRegistry {
        &self.stats
    }

    pub fn l1(&self) -> &Arc<L1Tier> {
        &self.l1
    }

    /// Creates or reconfigures a keyspace; applies at once.
    pub async fn configure(
        &self,
        tenant: &TenantId,
        keyspace: &ResourceName,
        config: KeyspaceConfig,
    ) -> Result<KeyspaceRecord, Error> {
        config.validate(self.redis.is_some(), self.codec.can_encrypt())?;
        let previous = self.catalog.get(tenant, keyspace).await?;
        let mut record = self.catalog.put_config(tenant, keyspace, &config).await?;
        // A copy tier that was off missed writes: its old copies must never
        // be served again.
        match &config.l1 {
            Some(l1) => self.l1.configure(tenant, keyspace, l1_settings(l1)),
            None => self.l1.remove_keyspace(tenant, keyspace),
        }
        let shared_tier_changed = previous
            .as_ref()
            .is_some_and(|previous| previous.config.l2 != config.l2);
        if shared_tier_changed {
            record = self.catalog.bump_l2_epoch(tenant, keyspace).await?;
        }
        self.announce(tenant, keyspace, CoherenceChange::Keyspace);
        Ok(record)
    }

    pub async fn keyspace(
        &self,
        tenant: &TenantId,
        keyspace: &ResourceName,
    ) -> Result<KeyspaceRecord, Error> {
        match self.catalog.get(tenant, keyspace).await? {
            Some(record) => Ok(record),
            None => Err(keyspace_not_found(keyspace)),
        }
    }

    pub async fn list_keyspaces(
        &self,
        tenant: &TenantId,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<KeyspaceRecord>, Error> {
        self.catalog.list(tenant, after, limit).await
    }

    pub async fn get(
        &self,
        tenant: &TenantId,
        keyspace: &ResourceName,
        key: &CacheKey,
        consistency: Consistency,
    ) -> Result<Option<CacheRead>, Error> {
        let Some(record) = self.catalog.get(tenant, keyspace).await? else {
            return Ok(None);
        };
        let plan = self.plan(record);
        let now = now_ms();
        let first_tier_index = match consistency {
            Consistency::Strong => plan.tiers.len() - 1,
            Consistency::Eventual | Consistency::Session(_) => 0,
        };
        let authoritative_index = plan.tiers.len() - 1;
        for index in first_tier_index..plan.tiers.len() {
            let planned = &plan.tiers[index];
            let is_authoritative = index == authoritative_index;
            let lookup = plan.timed(
                planned,
                TierOperation::Get,
                planned.tier.get(&planned.scope, key, now),
            );
            let found = match lookup.await {
                Ok(found) => found,
                Err(error) if !is_authoritative => {
                    // A copy tier failing is a miss: the next tier answers.
                    plan.stats
                        .record_lookup(planned.tier.name(), TierOutcome::Error);
                    tracing::debug!(tier = planned.tier.name(), error = %error, "cache copy tier failed on read");
                    continue;
                }
                Err(error) => return Err(error),
            };
            let Some(found) = found else {
                plan.stats
                    .record_lookup(planned.tier.name(), TierOutcome::Miss);
                continue;
            };
            if let Consistency::Session(minimum_revision) = consistency
                && !is_authoritative
                && found.revision < minimum_revision
            {
                // Older than what this session wrote: ask a tier further down.
                plan.stats
                    .record_lookup(planned.tier.name(), TierOutcome::Miss);
                continue;
            }
            plan.stats
                .record_lookup(planned.tier.name(), TierOutcome::Hit);
            let plain = if planned.holds_encoded_values {
                self.codec.decode(found)?
            } else {
                found
            };
            self.fill_faster_tiers(&plan, index, key, &plain).await;
            return Ok(Some(CacheRead {
                entry: plain,
                tier: planned.tier.name(),
            }));
        }
        Ok(None)
    }

    /// Whether warming can do anything for the keyspace: it has a store or
    /// Redis to load from and a faster tier to fill.
    pub fn is_warmable(&self, record: KeyspaceRecord) -> bool {
        let plan = self.plan(record);
        plan.authoritative().holds_encoded_values && !plan.copies().is_empty()
    }

    /// Copies one key from the authoritative tier into every faster tier;
    /// `false` when the key is absent. Each copy goes through
    /// `put_if_newer`, so a write made meanwhile is never overwritten, and
    /// every copy tier is filled even where a faster one already holds the
    /// key. Not counted in the stats: warming is not client traffic.
    pub async fn warm_key(
        &self,
        tenant: &TenantId,
        keyspace: &ResourceName,
        key: &CacheKey,
    ) -> Result<bool, Error> {
        let record = self.keyspace(tenant, keyspace).await?;
        let plan = self.plan(record);
        let authoritative = plan.authoritative();
        let lookup = plan.timed(
            authoritative,
            TierOperation::Get,
            authoritative.tier.get(&authoritative.scope, key, now_ms()),
        );
        let Some(found) = lookup.await? else {
            return Ok(false);
        };
        let plain = if authoritative.holds_encoded_values {
            self.codec.decode(found)?
        } else {
            found
        };
        self.fill_faster_tiers(&plan, plan.tiers.len() - 1, key, &plain)
            .await;
        Ok(true)
    }

    /// Copies a value found in tier `found_at` into every faster tier.
    async fn fill_faster_tiers(
        &self,
        plan: &TierPlan,
        found_at: usize,
        key: &CacheKey,
        plain: &CacheEntry,
    ) {
        for planned in &plan.tiers[..found_at] {
            let copy = match self.entry_for_tier(plan, planned, plain) {
                Ok(copy) => copy,
                Err(error) => {
                    tracing::warn!(error = %error, "cache value could not be encoded for a fill");
                    continue;
                }
            };
            let filled = plan.timed(
                planned,
                TierOperation::Copy,
                planned.tier.put_if_newer(&planned.scope, key, copy),
            );
            if let Err(error) = filled.await {
                tracing::debug!(tier = planned.tier.name(), error = %error, "cache fill failed");
            }
        }
    }

    /// Writes many keys. Every write is checked against the keyspace's
    /// limits before any is applied; the writes are then applied one by one.
    pub async fn put_many(
        &self,
        tenant: &TenantId,
        keyspace: &ResourceName,
        writes: Vec<(CacheKey, CacheWrite)>,
    ) -> Result<Vec<Revision>, Error> {
        let record = self
            .catalog
            .get_or_create(tenant, keyspace, &self.default_keyspace)
            .await?;
        for (_, write) in &writes {
            validate_write(&record.config, write)?;
        }
        let mut revisions = Vec::with_capacity(writes.len());
        for (key, write) in writes {
            revisions.push(self.put(tenant, keyspace, &key, write).await?);
        }
        Ok(revisions)
    }

    pub async fn put(
        &self,
        tenant: &TenantId,
        keyspace: &ResourceName,
        key: &CacheKey,
        write: CacheWrite,
    ) -> Result<Revision, Error> {
        let record = self
            .catalog
            .get_or_create(tenant, keyspace, &self.default_keyspace)
            .await?;
        validate_write(&record.config, &write)?;
        let plan = self.plan(record);
        let now = now_ms();
        let ttl = write
            .ttl
            .or(plan.record.config.default_ttl.map(|ttl| ttl.as_duration()));
        let plain = CacheEntry {
            value: write.value,
            encoding: ValueEncoding::default(),
            content_type: write.content_type,
            tags: write.tags,
            revision: 0,
            written_at_ms: now,
            expires_at_ms: ttl.map(|ttl| now.saturating_add(ttl.as_millis() as u64)),
            tombstone: false,
        };
        let authoritative = plan.authoritative();
        let stored = self.entry_for_tier(&plan, authoritative, &plain)?;
        let written = plan.timed(
            authoritative,
            TierOperation::Write,
            authoritative.tier.put_conditional(
                &authoritative.scope,
                key,
                stored,
                write.condition,
                now,
            ),
        );
        let outcome = written.await?;
        let revision = match outcome {
            ConditionalOutcome::Applied(revision) => revision,
            ConditionalOutcome::PreconditionFailed(current) => {
                return Err(precondition_failed(current));
            }
        };
        let written = CacheEntry { revision, ..plain };
        self.propagate_to_copies(&plan, key, &written).await;
        self.announce_key(&plan, key, revision);
        self.publish(
            tenant,
            keyspace,
            CacheChange::Set {
                key: key.as_str().to_string(),
                revision,
            },
        );
        Ok(revision)
    }

    /// Returns the revision of the deletion, or `None` when the key did not exist.
    pub async fn delete(
        &self,
        tenant: &TenantId,
        keyspace: &ResourceName,
        key: &CacheKey,
        condition: WriteCondition,
    ) -> Result<Option<Revision>, Error> {
        let Some(record) = self.catalog.get(tenant, keyspace).await? else {
            if condition == WriteCondition::Always {
                return Ok(None);
            }
            return Err(precondition_failed(None));
        };
        let plan = self.plan(record);
        let now = now_ms();
        let authoritative = plan.authoritative();
        let existing = plan.timed(
            authoritative,
            TierOperation::Get,
            authoritative.tier.get(&authoritative.scope, key, now),
        );
        let existed = existing.await?.is_some();
        let deleted = plan.timed(
            authoritative,
            TierOperation::Write,
            authoritative
                .tier
                .delete_conditional(&authoritative.scope, key, condition, now),
        );
        let outcome = deleted.await?;
        let revision = match outcome {
            ConditionalOutcome::Applied(revision) => revision,
            ConditionalOutcome::PreconditionFailed(current) => {
                return Err(precondition_failed(current));
            }
        };
        let tombstone = CacheEntry {
            value: Bytes::new(),
            encoding: ValueEncoding::default(),
            content_type: String::new(),
            tags: Vec::new(),
            revision,
            written_at_ms: now,
            expires_at_ms: Some(now.saturating_add(TOMBSTONE_LIFETIME_MS)),
            tombstone: true,
        };
        self.propagate_to_copies(&plan, key, &tombstone).await;
        self.announce_key(&plan, key, revision);
        self.publish(
            tenant,
            keyspace,
            CacheChange::Delete {
                key: key.as_str().to_string(),
                revision,
            },
        );
        Ok(existed.then_some(revision))
    }

    /// Adds `delta` atomically; returns the new value and its revision.
    pub async fn increment(
        &self,
        tenant: &TenantId,
        keyspace: &ResourceName,
        key: &CacheKey,
        delta: i64,
        ttl: Option<Duration>,
    ) -> Result<(i64, Revision), Error> {
        let record = self
            .catalog
            .get_or_create(tenant, keyspace, &self.default_keyspace)
            .await?;
        if record.config.encrypt {
            return Err(Error::invalid_argument(
                "not_a_counter",
                "counters cannot live in an encrypted keyspace; use a keyspace without encryption",
            ));
        }
        let plan = self.plan(record);
        let now = now_ms();
        let ttl_ms = ttl
            .or(plan.record.config.default_ttl.map(|ttl| ttl.as_duration()))
            .map(|ttl| ttl.as_millis() as u64);
        let authoritative = plan.authoritative();
        let incremented = plan.timed(
            authoritative,
            TierOperation::Write,
            authoritative
                .tier
                .increment(&authoritative.scope, key, delta, ttl_ms, now),
        );
        let (value, stored) = incremented.await?;
        let plain = if authoritative.holds_encoded_values {
            self.codec.decode(stored)?
        } else {
            stored
        };
        let revision = plain.revision;
        self.propagate_to_copies(&plan, key, &plain).await;
        self.announce_key(&plan, key, revision);
        self.publish(
            tenant,
            keyspace,
            CacheChange::Set {
                key: key.as_str().to_string(),
                revision,
            },
        );
        Ok((value, revision))
    }

    /// Removes every key the selector matches from every tier; returns how
    /// many keys the authoritative tier held.
    pub async fn invalidate(
        &self,
        tenant: &TenantId,
        keyspace: &ResourceName,
        selector: &Selector,
    ) -> Result<u64, Error> {
        let record = self.keyspace(tenant, keyspace).await?;
        let plan = self.plan(record);
        let now = now_ms();
        let authoritative = plan.authoritative();
        let invalidated = plan.timed(
            authoritative,
            TierOperation::Invalidate,
            authoritative
                .tier
                .invalidate(&authoritative.scope, selector, now),
        );
        let removed = invalidated.await?;
        for planned in plan.copies() {
            let invalidated = plan.timed(
                planned,
                TierOperation::Invalidate,
                planned.tier.invalidate(&planned.scope, selector, now),
            );
            if let Err(error) = invalidated.await {
                self.on_copy_write_failure(&plan, planned, &error).await;
            }
        }
        self.announce(
            tenant,
            keyspace,
            coherence_change_for(selector, plan.record.version),
        );
        self.publish(
            tenant,
            keyspace,
            CacheChange::Invalidate {
                selector: describe_selector(selector),
                removed,
            },
        );
        Ok(removed)
    }

    /// Live keys from the authoritative tier.
    pub async fn list(
        &self,
        tenant: &TenantId,
        keyspace: &ResourceName,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<KeyPage, Error> {
        let record = self.keyspace(tenant, keyspace).await?;
        let plan = self.plan(record);
        let authoritative = plan.authoritative();
        authoritative
            .tier
            .list(&authoritative.scope, prefix, after, limit, now_ms())
            .await
    }

    /// Flushes the keyspace by bumping its version: O(1), every entry is
    /// unreachable at once and reclaimed lazily.
    pub async fn flush(
        &self,
        tenant: &TenantId,
        keyspace: &ResourceName,
    ) -> Result<KeyspaceRecord, Error> {
        self.keyspace(tenant, keyspace).await?;
        let record = self.catalog.bump_version(tenant, keyspace).await?;
        self.announce(tenant, keyspace, CoherenceChange::Keyspace);
        self.publish(
            tenant,
            keyspace,
            CacheChange::Flush {
                version: record.version,
            },
        );
        Ok(record)
    }

    /// Physically removes entries of older versions and expired ones, at
    /// most `batch` per tier; returns how many went.
    pub async fn reclaim(
        &self,
        tenant: &TenantId,
        keyspace: &ResourceName,
        batch: usize,
    ) -> Result<u64, Error> {
        let record = self.keyspace(tenant, keyspace).await?;
        let plan = self.plan(record);
        let now = now_ms();
        let mut reclaimed = 0;
        for planned in &plan.tiers {
            reclaimed += planned.tier.reclaim(&planned.scope, batch, now).await?;
        }
        Ok(reclaimed)
    }

    async fn propagate_to_copies(&self, plan: &TierPlan, key: &CacheKey, plain: &CacheEntry) {
        for planned in plan.copies() {
            let copy = match self.entry_for_tier(plan, planned, plain) {
                Ok(copy) => copy,
                Err(error) => {
                    self.on_copy_write_failure(plan, planned, &error).await;
                    continue;
                }
            };
            let copied = plan.timed(
                planned,
                TierOperation::Copy,
                planned.tier.put_if_newer(&planned.scope, key, copy),
            );
            if let Err(error) = copied.await {
                self.on_copy_write_failure(plan, planned, &error).await;
            }
        }
    }

    /// A copy tier missed a write. L1 copies are local and cannot fail;
    /// Redis copies are cut off by bumping the keyspace's L2 epoch.
    async fn on_copy_write_failure(&self, plan: &TierPlan, planned: &PlannedTier, error: &Error) {
        tracing::warn!(tier = planned.tier.name(), error = %error, "cache copy tier missed a write; cutting off its copies");
        if planned.tier.name() == self.l1.name() {
            return;
        }
        let tenant = &plan.record.tenant;
        let keyspace = &plan.record.name;
        match self.catalog.bump_l2_epoch(tenant, keyspace).await {
            Ok(_) => self.announce(tenant, keyspace, CoherenceChange::Keyspace),
            Err(bump_error) => {
                tracing::error!(error = %bump_error, "the L2 epoch could not be bumped; Redis may serve stale copies until their TTL");
            }
        }
    }

    fn entry_for_tier(
        &self,
        plan: &TierPlan,
        planned: &PlannedTier,
        plain: &CacheEntry,
    ) -> Result<CacheEntry, Error> {
        if !planned.holds_encoded_values {
            return Ok(self.capped_for_l1(plain));
        }
        if plain.tombstone {
            return Ok(plain.clone());
        }
        let config = &plan.record.config;
        self.codec
            .encode(plain, config.compression_threshold, config.encrypt)
    }

    /// While other nodes cannot tell us about their writes, L1 copies live
    /// at most the coherence fallback TTL.
    fn capped_for_l1(&self, plain: &CacheEntry) -> CacheEntry {
        let Some(cap) = self
            .coherence
            .as_ref()
            .and_then(|coherence| coherence.l1_lifetime_cap())
        else {
            return plain.clone();
        };
        let capped_expiry = now_ms().saturating_add(cap.as_millis() as u64);
        let expires_at_ms = match plain.expires_at_ms {
            Some(expires_at) => expires_at.min(capped_expiry),
            None => capped_expiry,
        };
        CacheEntry {
            expires_at_ms: Some(expires_at_ms),
            ..plain.clone()
        }
    }

    fn announce_key(&self, plan: &TierPlan, key: &CacheKey, revision: Revision) {
        self.announce(
            &plan.record.tenant,
            &plan.record.name,
            CoherenceChange::Key {
                key: key.as_str().to_string(),
                version: plan.record.version,
                revision,
            },
        );
    }

    fn announce(&self, tenant: &TenantId, keyspace: &ResourceName, change: CoherenceChange) {
        if let Some(coherence) = &self.coherence {
            coherence.announce(tenant, keyspace, change);
        }
    }

    fn plan(&self, record: KeyspaceRecord) -> TierPlan {
        let mut tiers = Vec::with_capacity(3);
        let base_scope = KeyspaceScope {
            tenant: record.tenant.clone(),
            keyspace: record.name.clone(),
            version: record.version,
        };
        if let Some(l1) = &record.config.l1 {
            self.l1
                .configure(&record.tenant, &record.name, l1_settings(l1));
            tiers.push(PlannedTier {
                tier: Arc::clone(&self.l1) as Arc<dyn CacheTier>,
                scope: base_scope.clone(),
                holds_encoded_values: false,
            });
        }
        if record.config.l2 == SharedTierKind::Redis
            && let Some(redis) = &self.redis
        {
            let l2_version = record
                .version
                .saturating_mul(L2_EPOCH_SPAN)
                .saturating_add(record.l2_epoch % L2_EPOCH_SPAN);
            tiers.push(PlannedTier {
                tier: Arc::clone(redis),
                scope: KeyspaceScope {
                    version: l2_version,
                    ..base_scope.clone()
                },
                holds_encoded_values: true,
            });
        }
        if record.config.store == DurableTierKind::Store {
            tiers.push(PlannedTier {
                tier: Arc::clone(&self.store),
                scope: base_scope,
                holds_encoded_values: true,
            });
        }
        let stats = self.stats.keyspace(&record.tenant, &record.name);
        TierPlan {
            record,
            tiers,
            stats,
        }
    }

    fn publish(&self, tenant: &TenantId, keyspace: &ResourceName, change: CacheChange) {
        // No subscriber is fine: nobody listens yet.
        let _ = self.events.send(CacheEvent {
            tenant: tenant.clone(),
            keyspace: keyspace.clone(),
            change,
        });
    }
}

fn validate_write(config: &KeyspaceConfig, write: &CacheWrite) -> Result<(), Error> {
    if write.value.len() > config.max_value_bytes {
        return Err(Error::new(
            ErrorKind::PayloadTooLarge,
            "value_too_large",
            format!(
                "the value is {} bytes; this keyspace accepts at most {} (max_value_bytes)",
                write.value.len(),
                config.max_value_bytes
            ),
        ));
    }
    crate::model::validate_tags(&write.tags)
}

fn precondition_failed(current: Option<Revision>) -> Error {
    let detail = match current {
        Some(revision) => format!(
            "the precondition failed: the current ETag is {}",
            crate::model::etag_of(revision)
        ),
        None => "the precondition failed: the key does not exist".to_string(),
    };
    Error::new(ErrorKind::PreconditionFailed, "precondition_failed", detail)
}

fn coherence_change_for(selector: &Selector, version: u64) -> CoherenceChange {
    match selector {
        Selector::Pattern(pattern) => CoherenceChange::Pattern {
            pattern: pattern.clone(),
            version,
        },
        Selector::Prefix(prefix) => CoherenceChange::Prefix {
            prefix: prefix.clone(),
            version,
        },
        Selector::Tag(tag) => CoherenceChange::Tag {
            tag: tag.clone(),
            version,
        },
    }
}

fn describe_selector(selector: &Selector) -> String {
    match selector {
        Selector::Pattern(pattern) => format!("pattern:{pattern}"),
        Selector::Prefix(prefix) => format!("prefix:{prefix}"),
        Selector::Tag(tag) => format!("tag:{tag}"),
    }
}
