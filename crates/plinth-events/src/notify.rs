//! Live notification of commits: subscribers wait on a per-tenant
//! `watch` channel holding the highest position committed through this
//! node, instead of polling the log.
//!
//! A receiver only learns "the log reached at least N"; it then reads the
//! log from where it was. Because positions are gapless and follow commit
//! order, reading up to N after the notification sees every event before
//! N, so notifications may be coalesced or missed without losing events.
//!
//! Across nodes (PostgreSQL) this in-process channel only sees this node's
//! appends. The plan for other nodes' appends: `SELECT pg_notify(
//! 'plinth_events', tenant || ':' || last_position)` inside the append
//! transaction (PostgreSQL delivers notifications at commit, in commit
//! order), and one dedicated `LISTEN plinth_events` connection per node,
//! reconnecting with backoff and, after each reconnect, publishing every
//! tenant's head from `plinth_events_log_heads` so nothing waits on a lost
//! notification. Not built yet: it needs a connection outside the pool,
//! which `plinth-engines` does not hand out today.

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
        sender.send_if_modified(|highest| {
            if highest.is_some_and(|highest| highest >= position) {
                return false;
            }
            *highest = Some(position);
            true
        });
    }
}
