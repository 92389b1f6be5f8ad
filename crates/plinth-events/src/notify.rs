//! Live notification of commits: subscribers wait on a per-tenant
//! `watch` channel holding the highest position committed through this
//! node, instead of polling the log.
//!
//! A receiver only learns "the log reached at least N"; it then reads the
//! log from where it was. Because positions are gapless and follow commit
//! order, reading up to N after the notification sees every event before
//! N, so notifications may be coalesced or missed without losing events.
//!
//! Across nodes (PostgreSQL), `postgres/commit_signals.rs` feeds the
//! commits of other nodes into the same channels.

use std::collections::HashMap;

use parking_lot::Mutex;
use plinth_core::TenantId;
use tokio::sync::watch;

#[derive(Default)]
pub struct CommitNotifier {
    channels: Mutex<HashMap<TenantId, watch::Sender<Option<u64>>>>,
}

impl CommitNotifier {
    /// A receiver of `tenant`'s highest committed position (`None` until
    /// this node sees a commit of the tenant).
    pub fn subscribe(&self, tenant: &TenantId) -> watch::Receiver<Option<u64>> {
        let mut channels = self.channels.lock();
        channels
            .entry(tenant.clone())
            .or_insert_with(|| watch::channel(None).0)
            .subscribe()
    }

    /// Records that `tenant`'s log reached `position`. Appends finish in
    /// any order, so the channel only ever moves forward.
    pub fn committed(&self, tenant: &TenantId, position: u64) {
        let mut channels = self.channels.lock();
        let sender = channels
            .entry(tenant.clone())
            .or_insert_with(|| watch::channel(None).0);
        advance(sender, position);
    }

    /// Like [`committed`](Self::committed), for a tenant this node's
    /// subscribers watch; does nothing for others, so signals about every
    /// tenant of the database do not fill this node's memory.
    pub fn committed_if_watched(&self, tenant: &TenantId, position: u64) {
        let channels = self.channels.lock();
        let Some(sender) = channels.get(tenant) else {
            return;
        };
        advance(sender, position);
    }

    /// The tenants that have a channel on this node.
    pub fn watched_tenants(&self) -> Vec<TenantId> {
        self.channels.lock().keys().cloned().collect()
    }
}

/// Moves the channel to `position` unless it is already there or beyond.
fn advance(sender: &watch::Sender<Option<u64>>, position: u64) {
    sender.send_if_modified(|highest| {
        if highest.is_some_and(|highest| highest >= position) {
            return false;
        }
        *highest = Some(position);
        true
    });
}
