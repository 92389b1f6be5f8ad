//! Writes the audit log: admin actions durably before the response goes
//! out; authentication failures through a bounded queue, so a flood of bad
//! credentials cannot turn into a flood of synchronous writes. When that
//! queue is full, failures are dropped and counted in
//! `plinth_audit_dropped_total`.

use std::sync::Arc;

use plinth_control::{AuditOutcome, ControlStore, NewAuditEntry, Principal};
use tokio::sync::mpsc;

const AUTH_FAILURE_QUEUE_CAPACITY: usize = 1024;

/// Where a request came from and which request it was.
#[derive(Clone, Debug, Default)]
pub struct RequestOrigin {
    pub source_address: Option<String>,
    pub request_id: Option<String>,
}

#[derive(Clone)]
pub struct AuditLog {
    store: Arc<dyn ControlStore>,
    auth_failures: mpsc::Sender<NewAuditEntry>,
}

impl AuditLog {
    /// Starts the background writer for authentication failures.
    pub fn start(store: Arc<dyn ControlStore>) -> Self {
        let (auth_failures, mut queue) =
            mpsc::channel::<NewAuditEntry>(AUTH_FAILURE_QUEUE_CAPACITY);
        let writer_store = Arc::clone(&store);
        tokio::spawn(async move {
            while let Some(entry) = queue.recv().await {
                if let Err(error) = writer_store.append_audit(entry).await {
                    metrics::counter!("plinth_audit_dropped_total").increment(1);
                    tracing::warn!(error = %error, "audit entry for an auth failure was not written");
                }
            }
        });
        AuditLog {
            store,
            auth_failures,
        }
    }

    /// Records an admin action; waits for the write.
    pub async fn record_action(
        &self,
        principal: &Principal,
        action: &str,
        target: &str,
        outcome: AuditOutcome,
        origin: &RequestOrigin,
        detail: impl Into<String>,
    ) {
        let entry = NewAuditEntry {
            actor: principal.actor.clone(),
            actor_tenant: Some(principal.tenant.clone()),
            action: action.to_string(),
            target: target.to_string(),
            outcome,
            source_address: origin.source_address.clone(),
            request_id: origin.request_id.clone(),
            detail: detail.into(),
        };
        if let Err(error) = self.store.append_audit(entry).await {
            metrics::counter!("plinth_audit_dropped_total").increment(1);
            tracing::error!(error = %error, action, "audit entry was not written");
        }
    }

    /// Records a failed authentication without waiting; dropped (and
    /// counted) when the queue is full.
    pub fn record_auth_failure(&self, route: &str, origin: &RequestOrigin, detail: &str) {
        let entry = NewAuditEntry {
            actor: "anonymous".to_string(),
            actor_tenant: None,
            action: "auth.failure".to_string(),
            target: route.to_string(),
            outcome: AuditOutcome::Denied,
            source_address: origin.source_address.clone(),
            request_id: origin.request_id.clone(),
            detail: detail.to_string(),
        };
        if self.auth_failures.try_send(entry).is_err() {
            metrics::counter!("plinth_audit_dropped_total").increment(1);
        }
    }
}
