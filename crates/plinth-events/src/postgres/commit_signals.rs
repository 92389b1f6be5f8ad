//! Commit signals between nodes: each node tells the others, through
//! PostgreSQL's `NOTIFY`, how far a tenant's log got, so their live
//! subscriptions wake at once instead of at their next poll.
//!
//! A signal only says "the tenant's log reached at least N" (see
//! `notify.rs`); a subscriber then reads the log from where it was. So a
//! lost, late or repeated signal costs latency, never an event: every
//! subscription still polls the log once a second.
//!
//! - **Sending.** After a group commits, the node queues `(tenant, last
//!   position)` for a publisher task (bounded at [`QUEUED_SIGNALS`]; when
//!   full, the signal is dropped and counted in
//!   `plinth_events_commit_signals_dropped_total`). The publisher sends
//!   what queued as one `pg_notify` statement, one signal per tenant, and
//!   then waits out [`SIGNAL_SPACING`] before the next statement: a node
//!   sends at most 200 notifications a second rather than one per commit
//!   (each is a transaction, and wakes every listener), for at most that
//!   much more latency on other nodes.
//!   The notification is not sent inside the append's transaction: a
//!   notifying commit takes a database-wide lock until its WAL flush, which
//!   would make every tenant's commits take turns.
//! - **Receiving.** One connection per node, outside the pool, `LISTEN`s.
//!   After every (re)connection it reads the heads of the tenants this
//!   node's subscribers watch, so nothing waits on a signal sent while it
//!   was away. It reconnects with backoff.
//! - **Channel.** `plinth_events_` and the MD5 of the schema: deployments
//!   (or tests) in different schemas of one database never hear each
//!   other.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use futures::StreamExt;
use plinth_core::{Error, TenantId};
use plinth_engines::PostgresEngine;
use tokio::sync::mpsc;
use tokio_postgres::AsyncMessage;

use crate::notify::CommitNotifier;

/// Signals waiting for the publisher.
const QUEUED_SIGNALS: usize = 1024;
/// The least time between two `pg_notify` statements of a node.
const SIGNAL_SPACING: Duration = Duration::from_millis(5);
/// The most signals one `pg_notify` statement sends.
const SIGNALS_PER_STATEMENT: usize = 256;
const FIRST_RECONNECT_DELAY: Duration = Duration::from_millis(100);
const LONGEST_RECONNECT_DELAY: Duration = Duration::from_secs(10);
/// How often the listener checks that its node still runs.
const LIVENESS_CHECK_PERIOD: Duration = Duration::from_secs(1);

const CHANNEL_NAME: &str = "SELECT 'plinth_events_' || md5(current_schema())";

// A lost signal costs only latency, so its transaction need not wait for
// a WAL flush.
const PUBLISH: &str = "SELECT pg_notify('plinth_events_' || md5(current_schema()), signal)
     FROM (SELECT set_config('synchronous_commit', 'off', true)) AS relaxed,
          unnest($1::text[]) AS signal";

const WATCHED_HEADS: &str = "SELECT tenant, last_position FROM plinth_events_log_heads
     WHERE tenant = ANY($1::text[])";

/// This node's outgoing signals.
#[derive(Default)]
pub(crate) struct CommitSignals {
    outgoing: OnceLock<mpsc::Sender<(TenantId, u64)>>,
}

impl CommitSignals {
    /// Tells other nodes that `tenant`'s log reached `position`.
    pub fn publish(&self, tenant: &TenantId, position: u64) {
        let Some(outgoing) = self.outgoing.get() else {
            return;
        };
        if outgoing.try_send((tenant.clone(), position)).is_err() {
            metrics::counter!("plinth_events_commit_signals_dropped_total").increment(1);
        }
    }

    /// Starts the publisher and the listener (once; later calls do
    /// nothing). Both stop when the engine closes or `notifier` goes.
    pub fn start(&self, engine: &Arc<PostgresEngine>, notifier: Weak<CommitNotifier>) {
        let (sender, receiver) = mpsc::channel(QUEUED_SIGNALS);
        if self.outgoing.set(sender).is_err() {
            return;
        }
        tokio::spawn(publish_signals(Arc::downgrade(engine), receiver));
        tokio::spawn(listen_for_signals(Arc::downgrade(engine), notifier));
    }
}

async fn publish_signals(
    engine: Weak<PostgresEngine>,
    mut receiver: mpsc::Receiver<(TenantId, u64)>,
) {
    let mut queued = Vec::with_capacity(SIGNALS_PER_STATEMENT);
    while receiver.recv_many(&mut queued, SIGNALS_PER_STATEMENT).await > 0 {
        let Some(engine) = engine.upgrade() else {
            return;
        };
        let sent_at = tokio::time::Instant::now();
        let signals = highest_position_per_tenant(queued.drain(..));
        if let Err(failure) = engine
            .query_cached("events_signal_commits", PUBLISH, &[&signals])
            .await
        {
            tracing::debug!(error = %failure, "commit signals not sent; subscribers will poll");
        }
        drop(engine);
        tokio::time::sleep_until(sent_at + SIGNAL_SPACING).await;
    }
}

/// One payload (`tenant position`) per tenant, at its highest position.
fn highest_position_per_tenant(signals: impl Iterator<Item = (TenantId, u64)>) -> Vec<String> {
    let mut highest: HashMap<TenantId, u64> = HashMap::new();
    for (tenant, position) in signals {
        let entry = highest.entry(tenant).or_insert(position);
        *entry = (*entry).max(position);
    }
    highest
        .into_iter()
        .map(|(tenant, position)| format!("{tenant} {position}"))
        .collect()
}

/// A payload back into a tenant and a position; `None` when malformed.
fn parse_signal(payload: &str) -> Option<(TenantId, u64)> {
    let (tenant, position) = payload.split_once(' ')?;
    Some((TenantId::parse(tenant).ok()?, position.parse().ok()?))
}

async fn listen_for_signals(engine: Weak<PostgresEngine>, notifier: Weak<CommitNotifier>) {
    let mut reconnect_delay = FIRST_RECONNECT_DELAY;
    loop {
        let Some(listening_engine) = engine.upgrade() else {
            return;
        };
        if listening_engine.is_closed() || notifier.strong_count() == 0 {
            return;
        }
        match listen_until_disconnected(&listening_engine, &notifier).await {
            Ok(()) => reconnect_delay = FIRST_RECONNECT_DELAY,
            Err(failure) => {
                tracing::debug!(error = %failure, "commit signal listener disconnected");
            }
        }
        drop(listening_engine);
        tokio::time::sleep(reconnect_delay).await;
        reconnect_delay = (reconnect_delay * 2).min(LONGEST_RECONNECT_DELAY);
    }
}

/// One listening session: returns `Ok` when the node stopped, an error
/// when the connection failed or closed.
async fn listen_until_disconnected(
    engine: &PostgresEngine,
    notifier: &Weak<CommitNotifier>,
) -> Result<(), Error> {
    let (client, mut connection) = engine.connect_dedicated().await?;
    let receiving_notifier = notifier.clone();
    let mut receiver = tokio::spawn(async move {
        let mut messages =
            futures::stream::poll_fn(move |context| connection.poll_message(context));
        while let Some(message) = messages.next().await {
            let Ok(AsyncMessage::Notification(notification)) = message else {
                if message.is_err() {
                    return;
                }
                continue;
            };
            let Some(notifier) = receiving_notifier.upgrade() else {
                return;
            };
            if let Some((tenant, position)) = parse_signal(notification.payload()) {
                notifier.committed_if_watched(&tenant, position);
            }
        }
    });
    let subscribed = subscribe_and_catch_up(engine, &client, notifier).await;
    if let Err(failure) = subscribed {
        receiver.abort();
        return Err(failure);
    }
    let mut liveness_check = tokio::time::interval(LIVENESS_CHECK_PERIOD);
    loop {
        tokio::select! {
            _ = &mut receiver => {
                return Err(Error::unavailable(
                    "engine_unavailable",
                    "the commit signal connection closed",
                    FIRST_RECONNECT_DELAY,
                ));
            }
            _ = liveness_check.tick() => {
                if engine.is_closed() || notifier.strong_count() == 0 {
                    receiver.abort();
                    return Ok(());
                }
            }
        }
    }
}

async fn subscribe_and_catch_up(
    engine: &PostgresEngine,
    client: &tokio_postgres::Client,
    notifier: &Weak<CommitNotifier>,
) -> Result<(), Error> {
    let channel: String = engine
        .run("events_signal_channel", client.query_one(CHANNEL_NAME, &[]))
        .await?
        .get(0);
    // The channel is `plinth_events_` and hex digits: safe unquoted.
    engine
        .run(
            "events_signal_listen",
            client.batch_execute(&format!("LISTEN {channel}")),
        )
        .await?;
    let Some(notifier) = notifier.upgrade() else {
        return Ok(());
    };
    let watched: Vec<String> = notifier
        .watched_tenants()
        .iter()
        .map(|tenant| tenant.as_str().to_string())
        .collect();
    if watched.is_empty() {
        return Ok(());
    }
    let heads = engine
        .run(
            "events_signal_catch_up",
            client.query(WATCHED_HEADS, &[&watched]),
        )
        .await?;
    for head in heads {
        let tenant: String = head.get(0);
        let last_position: i64 = head.get(1);
        if let (Ok(tenant), Ok(position)) = (TenantId::parse(&tenant), u64::try_from(last_position))
        {
            notifier.committed_if_watched(&tenant, position);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformance::{events, open_postgres, stream, tenant};
    use crate::model::{AppendRequest, ExpectedVersion};

    #[test]
    fn a_signal_carries_each_tenants_highest_position_and_parses_back() {
        let signals = highest_position_per_tenant(
            [
                (tenant("acme"), 4),
                (tenant("acme"), 9),
                (tenant("acme"), 7),
                (tenant("other"), 1),
            ]
            .into_iter(),
        );
        let mut parsed: Vec<(TenantId, u64)> = signals
            .iter()
            .filter_map(|payload| parse_signal(payload))
            .collect();
        parsed.sort();
        assert_eq!(parsed, [(tenant("acme"), 9), (tenant("other"), 1)]);
        assert_eq!(parse_signal("acme"), None);
        assert_eq!(parse_signal("acme -1"), None);
        assert_eq!(parse_signal("Not A Tenant 3"), None);
    }

    /// Two event stores on one database stand for two nodes: a commit
    /// through one wakes the other's subscribers, which no in-process
    /// channel could do.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_commit_on_one_node_wakes_the_subscribers_of_another() {
        let Some(backend) = open_postgres("events_commit_signals_cross_node").await else {
            return;
        };
        let other_node = backend.restarted();
        let acme = tenant("acme");
        let mut receiver = other_node.subscribe(&acme);
        // Let the listener of the other node connect and LISTEN.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let appended = backend
            .events
            .append(
                &acme,
                &stream("orders"),
                AppendRequest::new(ExpectedVersion::Any, events(3)),
            )
            .await
            .expect("append");
        tokio::time::timeout(Duration::from_secs(5), receiver.changed())
            .await
            .expect("the other node heard of the commit")
            .expect("the other node is running");
        assert_eq!(*receiver.borrow(), Some(appended.events[2].position),);
        backend.store.close().await;
    }
}
