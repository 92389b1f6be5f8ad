//! Keeps the L1 copies of every node coherent through Redis pub/sub.
//!
//! After each write, delete, invalidation, flush or reconfiguration a node
//! publishes what changed on [`COHERENCE_CHANNEL`]; every other node evicts
//! the matching L1 copies (with a tombstone at the write's revision, so a
//! fill already in flight cannot bring the old value back) or reloads the
//! keyspace's catalog record.
//!
//! When the channel is down (Redis unreachable, the subscription dropped, a
//! publish failed, or the outgoing queue full) a node cannot know what it
//! missed, so it empties its L1 and caps the lifetime of new L1 copies at
//! `fallback_ttl` until the channel is back: the subscriber subscribes
//! afresh (a failed publish or a full queue makes it drop a subscription
//! that still looks healthy) and empties L1 once more. Staleness is then bounded
//! by `fallback_ttl` plus the time to notice the drop (immediate when the
//! connection closes, at most the Redis call timeout otherwise).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use plinth_core::resilience::RetryPolicy;
use plinth_core::{HumanDuration, ResourceName, TenantId};
use plinth_engines::RedisEngine;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, mpsc};

use crate::catalog::KeyspaceCatalog;
use crate::l1::L1Tier;
use crate::model::TOMBSTONE_LIFETIME_MS;
use crate::model::{CacheEntry, CacheKey, KeyspaceScope, Revision, Selector, ValueEncoding};
use crate::tier::CacheTier;

pub const COHERENCE_CHANNEL: &str = "plinth:cache:coherence";
/// Outgoing messages waiting for Redis; beyond it a node counts itself as
/// disconnected (it may have failed to tell others about a write).
const OUTGOING_QUEUE_CAPACITY: usize = 10_000;
/// The most messages sent to Redis in one pipeline.
const PUBLISH_BATCH_LIMIT: usize = 256;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CoherenceChange {
    /// A key changed at `revision` (write or delete).
    Key {
        key: String,
        version: u64,
        revision: Revision,
    },
    /// Keys matching a selector went.
    Pattern {
        pattern: String,
        version: u64,
    },
    Prefix {
        prefix: String,
        version: u64,
    },
    Tag {
        tag: String,
        version: u64,
    },
    /// The keyspace's catalog record changed (flush, configuration, epoch).
    Keyspace,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoherenceMessage {
    pub origin: u64,
    pub tenant: String,
    pub keyspace: String,
    pub change: CoherenceChange,
}

pub struct Coherence {
    node_id: u64,
    connected: Arc<AtomicBool>,
    /// Tells the subscriber to drop its subscription and subscribe afresh.
    resubscribe: Arc<Notify>,
    fallback_ttl: Duration,
    outgoing: mpsc::Sender<CoherenceMessage>,
}

impl Coherence {
    /// Starts the publisher and the subscriber. The channel counts as down
    /// until the subscription is established.
    pub fn start(
        redis: Arc<RedisEngine>,
        l1: Arc<L1Tier>,
        catalog: Arc<KeyspaceCatalog>,
        fallback_ttl: Duration,
    ) -> Arc<Self> {
        let node_id = rand::random::<u64>();
        let connected = Arc::new(AtomicBool::new(false));
        let resubscribe = Arc::new(Notify::new());
        let (outgoing, outgoing_queue) = mpsc::channel(OUTGOING_QUEUE_CAPACITY);
        let coherence = Arc::new(Coherence {
            node_id,
            connected: Arc::clone(&connected),
            resubscribe: Arc::clone(&resubscribe),
            fallback_ttl,
            outgoing,
        });
        tokio::spawn(run_publisher(
            Arc::clone(&redis),
            outgoing_queue,
            Arc::clone(&connected),
            Arc::clone(&resubscribe),
            Arc::clone(&l1),
        ));
        // Before the subscriber starts: once subscribed it sets the gauge
        // to 1, which a later 0 from here would overwrite.
        metrics::gauge!("plinth_cache_coherence_up").set(0.0);
        tokio::spawn(run_subscriber(
            redis,
            l1,
            catalog,
            node_id,
            connected,
            resubscribe,
        ));
        coherence
    }

    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::SeqCst)
    }

    /// The longest an L1 copy may live right now: `None` while the channel
    /// is up, `fallback_ttl` while it is down.
    pub fn l1_lifetime_cap(&self) -> Option<Duration> {
        if self.is_connected() {
            return None;
        }
        Some(self.fallback_ttl)
    }

    /// Tells the other nodes; never waits. A full queue means others may
    /// miss this change, so this node behaves as disconnected meanwhile.
    pub fn announce(&self, tenant: &TenantId, keyspace: &ResourceName, change: CoherenceChange) {
        let message = CoherenceMessage {
            origin: self.node_id,
            tenant: tenant.to_string(),
            keyspace: keyspace.to_string(),
            change,
        };
        if self.outgoing.try_send(message).is_err() {
            metrics::counter!("plinth_cache_coherence_dropped_total").increment(1);
            self.connected.store(false, Ordering::SeqCst);
            self.resubscribe.notify_one();
        }
    }
}

/// Publishes what the queue holds, in order, one pipeline of `PUBLISH`es at
/// a time: one `PUBLISH` per round trip could not keep up with writes from
/// many connections, and a queue that fills up takes the channel down.
async fn run_publisher(
    redis: Arc<RedisEngine>,
    mut queue: mpsc::Receiver<CoherenceMessage>,
    connected: Arc<AtomicBool>,
    resubscribe: Arc<Notify>,
    l1: Arc<L1Tier>,
) {
    let mut batch = Vec::with_capacity(PUBLISH_BATCH_LIMIT);
    while queue.recv_many(&mut batch, PUBLISH_BATCH_LIMIT).await > 0 {
        let published = publish_batch(&redis, &batch).await;
        batch.clear();
        if !published && connected.swap(false, Ordering::SeqCst) {
            tracing::warn!(
                "cache coherence: a change could not be published; capping L1 lifetimes until the channel is back"
            );
            metrics::gauge!("plinth_cache_coherence_up").set(0.0);
            l1.clear_all();
            resubscribe.notify_one();
        }
    }
}

/// Whether Redis took every message of the batch. Messages are published in
/// the batch's order, each as its own `PUBLISH`, so subscribers see exactly
/// what they would have seen one message at a time.
async fn publish_batch(redis: &RedisEngine, messages: &[CoherenceMessage]) -> bool {
    let mut pipeline = redis::pipe();
    for message in messages {
        let Ok(payload) = serde_json::to_vec(message) else {
            continue;
        };
        pipeline
            .cmd("PUBLISH")
            .arg(COHERENCE_CHANNEL)
            .arg(payload)
            .ignore();
    }
    let Ok(mut connection) = redis.connection() else {
        return false;
    };
    redis
        .run(
            "cache.coherence_publish",
            pipeline.query_async::<()>(&mut connection),
        )
        .await
        .is_ok()
}

async fn run_subscriber(
    redis: Arc<RedisEngine>,
    l1: Arc<L1Tier>,
    catalog: Arc<KeyspaceCatalog>,
    node_id: u64,
    connected: Arc<AtomicBool>,
    resubscribe: Arc<Notify>,
) {
    let backoff = RetryPolicy {
        max_attempts: u32::MAX,
        initial_backoff: HumanDuration::from_millis(100),
        max_backoff: HumanDuration::from_secs(2),
        multiplier: 2.0,
    };
    let mut failed_attempts = 0u32;
    loop {
        match subscribe_and_serve(&redis, &l1, &catalog, node_id, &connected, &resubscribe).await {
            Ok(()) => failed_attempts = 0,
            Err(reason) => {
                tracing::debug!(reason, "cache coherence subscription unavailable");
                failed_attempts = failed_attempts.saturating_add(1);
            }
        }
        if connected.swap(false, Ordering::SeqCst) {
            tracing::warn!("cache coherence channel lost; L1 emptied and capped until it is back");
        }
        metrics::gauge!("plinth_cache_coherence_up").set(0.0);
        l1.clear_all();
        let delay = backoff.full_jitter_backoff(failed_attempts, &mut rand::rng());
        tokio::time::sleep(delay).await;
    }
}

/// Serves one subscription until it drops or a resubscription is asked for.
async fn subscribe_and_serve(
    redis: &RedisEngine,
    l1: &Arc<L1Tier>,
    catalog: &KeyspaceCatalog,
    node_id: u64,
    connected: &AtomicBool,
    resubscribe: &Notify,
) -> Result<(), String> {
    let mut pubsub = redis.pubsub().await.map_err(|error| error.to_string())?;
    pubsub
        .subscribe(COHERENCE_CHANNEL)
        .await
        .map_err(|error| error.to_string())?;
    // Whatever was published while we were away is lost: start clean.
    l1.clear_all();
    connected.store(true, Ordering::SeqCst);
    metrics::gauge!("plinth_cache_coherence_up").set(1.0);
    tracing::info!("cache coherence channel up");
    let own_prefix = own_message_prefix(node_id);
    let mut messages = pubsub.into_on_message();
    loop {
        let message = tokio::select! {
            message = messages.next() => message,
            () = resubscribe.notified() => return Ok(()),
        };
        let Some(message) = message else {
            return Ok(());
        };
        let payload = message.get_payload_bytes();
        // Every message also comes back to the node that published it:
        // dropping those unparsed spares a JSON parse per local write.
        if payload.starts_with(&own_prefix) {
            continue;
        }
        let Ok(message) = serde_json::from_slice::<CoherenceMessage>(payload) else {
            continue;
        };
        if message.origin == node_id {
            continue;
        }
        apply(l1, catalog, message).await;
    }
}

/// How every message `node_id` publishes starts: `origin` is the first
/// field serialized, and the comma keeps node 12 from matching node 123.
fn own_message_prefix(node_id: u64) -> Vec<u8> {
    format!("{{\"origin\":{node_id},").into_bytes()
}

async fn apply(l1: &Arc<L1Tier>, catalog: &KeyspaceCatalog, message: CoherenceMessage) {
    let (Ok(tenant), Ok(keyspace)) = (
        TenantId::parse(&message.tenant),
        ResourceName::parse("keyspace", &message.keyspace),
    ) else {
        return;
    };
    let scope_at = |version: u64| KeyspaceScope {
        tenant: tenant.clone(),
        keyspace: keyspace.clone(),
        version,
    };
    let now = crate::clock::now_ms();
    let outcome = match message.change {
        CoherenceChange::Key {
            key,
            version,
            revision,
        } => {
            let Ok(key) = CacheKey::parse(&key) else {
                return;
            };
            let tombstone = CacheEntry {
                value: bytes::Bytes::new(),
                encoding: ValueEncoding::default(),
                content_type: String::new(),
                tags: Vec::new(),
                revision,
                written_at_ms: now,
                expires_at_ms: Some(now + TOMBSTONE_LIFETIME_MS),
                tombstone: true,
            };
            l1.put_if_newer(&scope_at(version), &key, tombstone).await
        }
        CoherenceChange::Pattern { pattern, version } => l1
            .invalidate(&scope_at(version), &Selector::Pattern(pattern), now)
            .await
            .map(|_| ()),
        CoherenceChange::Prefix { prefix, version } => l1
            .invalidate(&scope_at(version), &Selector::Prefix(prefix), now)
            .await
            .map(|_| ()),
        CoherenceChange::Tag { tag, version } => l1
            .invalidate(&scope_at(version), &Selector::Tag(tag), now)
            .await
            .map(|_| ()),
        CoherenceChange::Keyspace => {
            // The tiers may have changed: drop this node's copies too.
            catalog.forget(&tenant, &keyspace);
            l1.remove_keyspace(&tenant, &keyspace);
            Ok(())
        }
    };
    if let Err(error) = outcome {
        tracing::debug!(error = %error, "cache coherence message could not be applied");
    }
}

#[cfg(test)]
mod tests {
    use plinth_engines::test_support::{connected_redis, redis_url};

    use super::*;

    fn key_change(origin: u64, revision: Revision) -> CoherenceMessage {
        CoherenceMessage {
            origin,
            tenant: "acme".to_string(),
            keyspace: "users".to_string(),
            change: CoherenceChange::Key {
                key: format!("key-{revision}"),
                version: 1,
                revision,
            },
        }
    }

    #[test]
    fn a_node_recognises_its_own_messages_by_their_start() {
        let payload = serde_json::to_vec(&key_change(123, 7)).unwrap();
        assert!(payload.starts_with(&own_message_prefix(123)));
        assert!(!payload.starts_with(&own_message_prefix(12)));
        assert!(!payload.starts_with(&own_message_prefix(1234)));
    }

    #[tokio::test]
    async fn batched_publishes_reach_subscribers_complete_and_in_order() {
        let Some(url) = redis_url("coherence batched publishes") else {
            return;
        };
        let redis = connected_redis(&url).await;
        let mut pubsub = redis.pubsub().await.unwrap();
        pubsub.subscribe(COHERENCE_CHANNEL).await.unwrap();
        // Other tests may publish on the channel too: only ours count.
        let origin = rand::random::<u64>();
        let sent: Vec<CoherenceMessage> = (0..PUBLISH_BATCH_LIMIT as u64 + 10)
            .map(|revision| key_change(origin, revision))
            .collect();
        for batch in sent.chunks(PUBLISH_BATCH_LIMIT) {
            assert!(publish_batch(&redis, batch).await);
        }
        let mut messages = pubsub.into_on_message();
        let mut received = Vec::new();
        while received.len() < sent.len() {
            let message = tokio::time::timeout(Duration::from_secs(5), messages.next())
                .await
                .expect("every published message arrives")
                .expect("the subscription stays open");
            let payload = message.get_payload::<String>().unwrap();
            let parsed: CoherenceMessage = serde_json::from_str(&payload).unwrap();
            if parsed.origin == origin {
                received.push(parsed);
            }
        }
        assert_eq!(received, sent);
    }
}
