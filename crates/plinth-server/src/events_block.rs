//! The event store as the server holds it: the block's [`EventStore`] and
//! the node's single scavenge job. A scavenge runs in the background (it
//! may take longer than any request may); its progress is published to
//! the `plinth_events_scavenge*` metrics while it runs and can be read
//! back through the admin route. Besides the admin route, the node starts
//! one every `events.scavenge_interval`.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use plinth_core::Error;
use plinth_events::{EventStore, ScavengeProgress, ScavengeReport};
use serde::Serialize;
use time::OffsetDateTime;
use tokio::sync::watch;
use utoipa::ToSchema;

/// How often a running scavenge's progress reaches the metrics.
const SCAVENGE_METRICS_PERIOD: Duration = Duration::from_secs(1);

pub struct EventsBlock {
    pub store: EventStore,
    scavenge: Mutex<ScavengeJob>,
}

/// The node's current or last scavenge.
#[derive(Default)]
struct ScavengeJob {
    running: bool,
    started_at: Option<OffsetDateTime>,
    finished_at: Option<OffsetDateTime>,
    progress: Option<Arc<ScavengeProgress>>,
    error: Option<String>,
}

/// What the admin route answers about scavenging on this node.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ScavengeStatus {
    pub running: bool,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>)]
    pub started_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>)]
    pub finished_at: Option<OffsetDateTime>,
    /// Streams examined, events and snapshots removed, batches run: so far
    /// while running, in total once finished.
    #[schema(value_type = Option<Object>)]
    pub report: Option<ScavengeReport>,
    /// Why the last scavenge stopped early, if it did.
    pub error: Option<String>,
}

impl EventsBlock {
    pub fn new(store: EventStore) -> Self {
        EventsBlock {
            store,
            scavenge: Mutex::new(ScavengeJob::default()),
        }
    }

    pub fn scavenge_status(&self) -> ScavengeStatus {
        let job = self.scavenge.lock();
        ScavengeStatus {
            running: job.running,
            started_at: job.started_at,
            finished_at: job.finished_at,
            report: job.progress.as_ref().map(|progress| progress.report()),
            error: job.error.clone(),
        }
    }

    /// Starts a scavenge in the background; `scavenge_running` (409) when
    /// one already runs on this node.
    pub fn start_scavenge(self: &Arc<Self>) -> Result<ScavengeStatus, Error> {
        let progress = Arc::new(ScavengeProgress::default());
        {
            let mut job = self.scavenge.lock();
            if job.running {
                return Err(Error::conflict(
                    "scavenge_running",
                    "a scavenge is already running on this node; follow it with GET /v1/admin/events/scavenge",
                ));
            }
            *job = ScavengeJob {
                running: true,
                started_at: Some(OffsetDateTime::now_utc()),
                finished_at: None,
                progress: Some(Arc::clone(&progress)),
                error: None,
            };
        }
        metrics::gauge!("plinth_events_scavenge_running").set(1.0);
        let block = Arc::clone(self);
        tokio::spawn(async move {
            let outcome = scavenge_publishing_progress(&block.store, &progress).await;
            block.finish_scavenge(outcome);
        });
        Ok(self.scavenge_status())
    }

    /// Starts a scavenge every `interval` until `shutdown` turns true; an
    /// interval that finds one still running (an admin's, or a long one)
    /// lets it be.
    pub fn spawn_periodic_scavenge(
        self: &Arc<Self>,
        interval: Duration,
        mut shutdown: watch::Receiver<bool>,
    ) {
        if interval.is_zero() {
            return;
        }
        let block = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = tokio::time::sleep(interval) => {}
                    _ = shutdown.wait_for(|shutting_down| *shutting_down) => return,
                }
                if block.start_scavenge().is_ok() {
                    tracing::info!("periodic event scavenge started");
                }
            }
        });
    }

    fn finish_scavenge(&self, outcome: Result<ScavengeReport, Error>) {
        let outcome_label = if outcome.is_ok() { "ok" } else { "error" };
        metrics::counter!("plinth_events_scavenge_runs_total", "outcome" => outcome_label)
            .increment(1);
        metrics::gauge!("plinth_events_scavenge_running").set(0.0);
        let mut job = self.scavenge.lock();
        job.running = false;
        job.finished_at = Some(OffsetDateTime::now_utc());
        if let Err(error) = outcome {
            tracing::warn!(error = %error, "event scavenge stopped early");
            job.error = Some(error.detail().to_string());
        }
    }
}

/// Runs the scavenge, adding what it removed to the counters every
/// [`SCAVENGE_METRICS_PERIOD`] and once more at the end.
async fn scavenge_publishing_progress(
    store: &EventStore,
    progress: &ScavengeProgress,
) -> Result<ScavengeReport, Error> {
    let scavenging = store.scavenge(progress);
    tokio::pin!(scavenging);
    let mut published = ScavengeReport::default();
    let mut ticker = tokio::time::interval(SCAVENGE_METRICS_PERIOD);
    let outcome = loop {
        tokio::select! {
            outcome = &mut scavenging => break outcome,
            _ = ticker.tick() => publish_scavenge_progress(&progress.report(), &mut published),
        }
    };
    publish_scavenge_progress(&progress.report(), &mut published);
    outcome
}

/// Adds what `report` counts beyond `published` to the counters.
fn publish_scavenge_progress(report: &ScavengeReport, published: &mut ScavengeReport) {
    let removed = [
        ("events", report.events_removed, published.events_removed),
        (
            "snapshots",
            report.snapshots_removed,
            published.snapshots_removed,
        ),
    ];
    for (kind, now, before) in removed {
        metrics::counter!("plinth_events_scavenged_total", "kind" => kind)
            .increment(now.saturating_sub(before));
    }
    metrics::counter!("plinth_events_scavenge_batches_total")
        .increment(report.batches.saturating_sub(published.batches));
    *published = *report;
}
