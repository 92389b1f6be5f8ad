//! Where the event store's "now" comes from: the recorded time of appended
//! events and the age cut-off of `max_age`. Tests substitute a manual clock
//! to exercise retention without sleeping.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

pub trait Clock: Send + Sync {
    /// Unix microseconds.
    fn now_micros(&self) -> i64;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now_micros(&self) -> i64 {
        let since_epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        i64::try_from(since_epoch.as_micros()).unwrap_or(i64::MAX)
    }
}

/// A clock that moves only when told to.
pub struct ManualClock {
    now_micros: AtomicI64,
}

impl ManualClock {
    pub fn starting_at(now_micros: i64) -> Self {
        ManualClock {
            now_micros: AtomicI64::new(now_micros),
        }
    }

    pub fn advance(&self, by: std::time::Duration) {
        let micros = i64::try_from(by.as_micros()).unwrap_or(i64::MAX);
        self.now_micros.fetch_add(micros, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_micros(&self) -> i64 {
        self.now_micros.load(Ordering::SeqCst)
    }
}
