//! Catch-up subscriptions to a tenant's global log (optionally filtered, or
//! narrowed to one stream), shared by the SSE and WebSocket routes.
//!
//! A per-connection pump task reads the log in pages from the starting
//! position until a page comes back short (caught up), then waits on the
//! event store's commit watch (`EventStore::subscribe`) and reads again
//! from the position after the last event it examined. Positions are
//! gapless and handed out in commit order, so reading from there after a
//! notification sees every event once: no loss, no duplicate, whatever
//! notifications were coalesced. The pump also re-reads every
//! [`CROSS_NODE_POLL_INTERVAL`] while idle: other PostgreSQL nodes' commits
//! reach the watch through commit signals, which may be lost.
//!
//! Buffering is bounded: a page of at most [`PAGE_SIZE`] events is read at
//! a time, and at most [`BUFFERED_ITEMS`] items wait for the connection.
//! A consumer that takes nothing for [`SLOW_CONSUMER_TIMEOUT`] while the
//! buffer is full is cut off: the pump stops, the connection gets what was
//! buffered and then an `end` with code `slow_consumer`, and the client
//! resumes from its last position. No lock is held while anything is sent.

use std::sync::Arc;
use std::time::Duration;

use plinth_core::{Error, TenantId};
use plinth_events::{AllFilter, ReadAllRequest, RecordedEvent, StreamName};
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::events_block::EventsBlock;

/// Events read from the log per query.
const PAGE_SIZE: usize = 64;
/// Items that may wait for a slow connection.
const BUFFERED_ITEMS: usize = 64;
/// How long a full buffer may stay full before the subscriber is cut off.
pub const SLOW_CONSUMER_TIMEOUT: Duration = Duration::from_secs(30);
/// How often an idle subscription re-reads the log, in case a commit
/// signal from another node was lost.
const CROSS_NODE_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Whose events a subscription delivers.
#[derive(Clone, Debug)]
pub struct SubscriptionTarget {
    pub tenant: TenantId,
    /// Only this stream's events, when set.
    pub stream: Option<StreamName>,
    pub filter: AllFilter,
}

impl SubscriptionTarget {
    fn wants(&self, event: &RecordedEvent) -> bool {
        self.stream
            .as_ref()
            .is_none_or(|stream| stream.as_str() == event.stream)
    }

    /// The log filter the pump reads with: a stream subscription reads the
    /// events of streams starting with its name and keeps the exact ones.
    fn read_filter(&self) -> AllFilter {
        match &self.stream {
            Some(stream) => AllFilter {
                stream_prefix: Some(stream.as_str().to_string()),
                event_types: self.filter.event_types.clone(),
            },
            None => self.filter.clone(),
        }
    }
}

/// What a subscriber receives, in order.
#[derive(Debug)]
pub enum SubscriptionItem {
    Event(Box<RecordedEvent>),
    /// Every event committed before the subscription caught up was
    /// delivered; what follows is live. Sent once.
    CaughtUp {
        next_position: u64,
    },
}

/// Why a subscription ended: the last thing a subscriber receives.
#[derive(Clone, Debug, Serialize)]
pub struct SubscriptionEnd {
    /// `shutdown`, `slow_consumer` or the code of the error that stopped it.
    pub code: String,
    pub detail: String,
}

impl SubscriptionEnd {
    fn shutdown() -> Self {
        SubscriptionEnd {
            code: "shutdown".to_string(),
            detail: "the server is shutting down; reconnect with Last-Event-ID (or from_position) to resume".to_string(),
        }
    }

    fn slow_consumer() -> Self {
        SubscriptionEnd {
            code: "slow_consumer".to_string(),
            detail: format!(
                "the subscriber took no event for {}s while {BUFFERED_ITEMS} were waiting; reconnect with Last-Event-ID (or from_position) to resume",
                SLOW_CONSUMER_TIMEOUT.as_secs()
            ),
        }
    }

    fn client_gone() -> Self {
        SubscriptionEnd {
            code: "client_gone".to_string(),
            detail: "the subscriber went away".to_string(),
        }
    }

    fn failed(error: &Error) -> Self {
        SubscriptionEnd {
            code: error.code().to_string(),
            detail: format!(
                "{}; reconnect with Last-Event-ID (or from_position) to resume",
                error.detail()
            ),
        }
    }

    /// A bounded label for the ended-subscriptions counter.
    pub fn reason_label(&self) -> &'static str {
        match self.code.as_str() {
            "shutdown" => "shutdown",
            "slow_consumer" => "slow_consumer",
            "client_gone" => "client_gone",
            _ => "error",
        }
    }
}

/// The next thing to hand the subscriber.
pub enum SubscriptionNext {
    Item(SubscriptionItem),
    Ended(SubscriptionEnd),
}

/// One subscriber's subscription; dropping it stops its pump.
pub struct Subscription {
    receiver: mpsc::Receiver<SubscriptionItem>,
    pump: JoinHandle<SubscriptionEnd>,
    shutdown: watch::Receiver<bool>,
    transport: &'static str,
}

impl Subscription {
    /// Starts delivering `target`'s events from `from_position` on.
    pub fn start(
        events: &Arc<EventsBlock>,
        target: SubscriptionTarget,
        from_position: u64,
        shutdown: watch::Receiver<bool>,
        transport: &'static str,
    ) -> Subscription {
        let (sender, receiver) = mpsc::channel(BUFFERED_ITEMS);
        let commits = events.store.subscribe(&target.tenant);
        let pump = Pump {
            events: Arc::clone(events),
            target,
            next_position: from_position,
            sender,
            commits,
        };
        metrics::gauge!("plinth_events_subscriptions_active", "transport" => transport)
            .increment(1.0);
        Subscription {
            receiver,
            pump: tokio::spawn(pump.run()),
            shutdown,
            transport,
        }
    }

    /// The next item, or why the subscription ended (then do not call
    /// again). Cancel-safe, so it can sit in a `select!`.
    pub async fn next(&mut self) -> SubscriptionNext {
        let received = tokio::select! {
            biased;
            _ = self.shutdown.wait_for(|shutting_down| *shutting_down) => None,
            item = self.receiver.recv() => Some(item),
        };
        let end = match received {
            None => SubscriptionEnd::shutdown(),
            Some(Some(item)) => return SubscriptionNext::Item(item),
            // The pump stopped and everything it buffered was handed out.
            Some(None) => (&mut self.pump).await.unwrap_or_else(|_| SubscriptionEnd {
                code: "internal".to_string(),
                detail: "the subscription stopped unexpectedly; reconnect to resume".to_string(),
            }),
        };
        metrics::counter!("plinth_events_subscriptions_ended_total", "transport" => self.transport, "reason" => end.reason_label())
            .increment(1);
        SubscriptionNext::Ended(end)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.pump.abort();
        metrics::gauge!("plinth_events_subscriptions_active", "transport" => self.transport)
            .decrement(1.0);
    }
}

/// Reads the log and feeds the subscriber's buffer.
struct Pump {
    events: Arc<EventsBlock>,
    target: SubscriptionTarget,
    /// The first position not examined yet.
    next_position: u64,
    sender: mpsc::Sender<SubscriptionItem>,
    commits: watch::Receiver<Option<u64>>,
}

impl Pump {
    async fn run(mut self) -> SubscriptionEnd {
        let mut caught_up_announced = false;
        let mut poll = tokio::time::interval(CROSS_NODE_POLL_INTERVAL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // Marks the current head as seen before reading, so a commit
            // during the read wakes the wait below.
            self.commits.borrow_and_update();
            let caught_up = match self.deliver_one_page().await {
                Ok(caught_up) => caught_up,
                Err(end) => return end,
            };
            if !caught_up {
                continue;
            }
            if !caught_up_announced {
                let announcement = SubscriptionItem::CaughtUp {
                    next_position: self.next_position,
                };
                if let Err(end) = self.deliver(announcement).await {
                    return end;
                }
                caught_up_announced = true;
            }
            poll.reset();
            tokio::select! {
                changed = self.commits.changed() => {
                    if changed.is_err() {
                        return SubscriptionEnd::shutdown();
                    }
                }
                _ = poll.tick() => {}
                () = self.sender.closed() => return SubscriptionEnd::client_gone(),
            }
        }
    }

    /// Reads one page from `next_position` and delivers what the target
    /// wants; `Ok(true)` once the page shows the log is caught up.
    async fn deliver_one_page(&mut self) -> Result<bool, SubscriptionEnd> {
        let request = ReadAllRequest::forward(PAGE_SIZE)
            .from_position(self.next_position)
            .filter(self.target.read_filter());
        let slice = self
            .events
            .store
            .read_all(&self.target.tenant, &request)
            .await
            .map_err(|error| SubscriptionEnd::failed(&error))?;
        let page_was_full = slice.next_position.is_some();
        for event in slice.events {
            let position = event.position;
            if self.target.wants(&event) {
                self.deliver(SubscriptionItem::Event(Box::new(event)))
                    .await?;
            }
            self.next_position = position + 1;
        }
        if page_was_full {
            return Ok(false);
        }
        // Everything up to the head was committed before the read began
        // (positions follow commit order), so a filtered subscription need
        // not examine those positions again.
        if let Some(head) = slice.head_position {
            self.next_position = self.next_position.max(head + 1);
        }
        Ok(true)
    }

    async fn deliver(&self, item: SubscriptionItem) -> Result<(), SubscriptionEnd> {
        match self.sender.send_timeout(item, SLOW_CONSUMER_TIMEOUT).await {
            Ok(()) => Ok(()),
            Err(mpsc::error::SendTimeoutError::Timeout(_)) => Err(SubscriptionEnd::slow_consumer()),
            Err(mpsc::error::SendTimeoutError::Closed(_)) => Err(SubscriptionEnd::client_gone()),
        }
    }
}
