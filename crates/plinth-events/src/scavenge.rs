//! Scavenging: physically removing what retention and deletion already
//! hide from reads, in bounded batches.
//!
//! Each batch is one short transaction on one stream that removes at most
//! `events.scavenge_batch_size` of its oldest hidden events (always a
//! prefix, so the chain of what remains starts at one anchor hash kept in
//! the stream's record) and the stream's snapshot if it is hidden. Appends
//! to other streams never wait on a scavenge, and appends to the same
//! stream wait at most one batch. Progress is published in a
//! [`ScavengeProgress`] the server can read while the job runs (for
//! metrics), and returned as a [`ScavengeReport`] at the end.

use std::sync::atomic::{AtomicU64, Ordering};

use plinth_core::Error;
use serde::Serialize;

use crate::service::EventStore;

/// How many candidate streams one listing query returns.
const STREAMS_PER_PAGE: i64 = 100;

/// Live counters of a running scavenge.
#[derive(Debug, Default)]
pub struct ScavengeProgress {
    streams_examined: AtomicU64,
    events_removed: AtomicU64,
    snapshots_removed: AtomicU64,
    batches: AtomicU64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ScavengeReport {
    pub streams_examined: u64,
    pub events_removed: u64,
    pub snapshots_removed: u64,
    pub batches: u64,
}

impl ScavengeProgress {
    pub fn report(&self) -> ScavengeReport {
        ScavengeReport {
            streams_examined: self.streams_examined.load(Ordering::Relaxed),
            events_removed: self.events_removed.load(Ordering::Relaxed),
            snapshots_removed: self.snapshots_removed.load(Ordering::Relaxed),
            batches: self.batches.load(Ordering::Relaxed),
        }
    }
}

impl EventStore {
    /// Removes every hidden event and snapshot of every tenant. Safe to run
    /// while appends and reads go on; reads see no difference.
    pub async fn scavenge(&self, progress: &ScavengeProgress) -> Result<ScavengeReport, Error> {
        let _maintenance = self.maintenance.lock().await;
        let batch_size = self.config.scavenge_batch_size as i64;
        let mut after = None;
        loop {
            let streams = self
                .backend
                .streams_to_scavenge(after.clone(), STREAMS_PER_PAGE)
                .await?;
            let Some(last) = streams.last().cloned() else {
                break;
            };
            for key in &streams {
                progress.streams_examined.fetch_add(1, Ordering::Relaxed);
                loop {
                    let batch = self
                        .backend
                        .scavenge_stream_batch(key, batch_size, self.clock.now_micros())
                        .await?;
                    progress.batches.fetch_add(1, Ordering::Relaxed);
                    progress
                        .events_removed
                        .fetch_add(batch.events_removed, Ordering::Relaxed);
                    progress
                        .snapshots_removed
                        .fetch_add(batch.snapshots_removed, Ordering::Relaxed);
                    if !batch.may_have_more {
                        break;
                    }
                    // Lets appends queued behind this batch go first.
                    tokio::task::yield_now().await;
                }
            }
            after = Some(last);
        }
        Ok(progress.report())
    }
}
