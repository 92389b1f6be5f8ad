//! Where the resilience primitives read the time from, and how they bucket
//! it into sliding windows.
//!
//! Breakers and retry budgets take an [`Arc<dyn Clock>`](Clock) instead of
//! calling [`Instant::now`] so that tests (here and in other crates) can
//! step time by hand with a [`ManualClock`] instead of sleeping.

use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// A source of monotonic time.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Instant;
}

/// The real monotonic clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// A clock that only moves when told to, for deterministic tests.
#[derive(Debug)]
pub struct ManualClock {
    current: Mutex<Instant>,
}

impl ManualClock {
    /// Starts at the real current instant; only [`advance`](Self::advance)
    /// moves it afterwards.
    pub fn new() -> Self {
        ManualClock {
            current: Mutex::new(Instant::now()),
        }
    }

    pub fn advance(&self, by: Duration) {
        let mut current = self.current.lock();
        *current += by;
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        *self.current.lock()
    }
}

/// How many buckets a [`SlidingWindow`] splits its span into. Outcomes leave
/// the window one bucket at a time, so the window effectively covers between
/// nine tenths of its span and all of it.
const WINDOW_BUCKETS: usize = 10;

/// Per-bucket values over the last `span` of time, kept in a fixed ring so
/// that recording is constant time and memory does not grow with traffic.
#[derive(Debug)]
pub(crate) struct SlidingWindow<T> {
    bucket_width_nanos: u128,
    /// Bucket indexes count bucket widths since this instant; it is set by
    /// the first recording because the window is built before any clock
    /// reading is available.
    origin: Option<Instant>,
    buckets: [Bucket<T>; WINDOW_BUCKETS],
}

#[derive(Clone, Copy, Debug, Default)]
struct Bucket<T> {
    index: u64,
    value: T,
}

impl<T: Copy + Default> SlidingWindow<T> {
    pub(crate) fn new(span: Duration) -> Self {
        // A zero span would divide by zero below; one-nanosecond buckets make
        // such a window forget everything almost at once, which is what a
        // zero span asks for.
        let bucket_width_nanos = (span.as_nanos() / WINDOW_BUCKETS as u128).max(1);
        SlidingWindow {
            bucket_width_nanos,
            origin: None,
            buckets: [Bucket::default(); WINDOW_BUCKETS],
        }
    }

    /// The value of the bucket `now` falls in, emptied first if it last held
    /// an older bucket's value.
    pub(crate) fn current_mut(&mut self, now: Instant) -> &mut T {
        let origin = *self.origin.get_or_insert(now);
        let index = self.bucket_index(origin, now);
        let slot = (index % WINDOW_BUCKETS as u64) as usize;
        let bucket = &mut self.buckets[slot];
        if bucket.index != index {
            *bucket = Bucket {
                index,
                value: T::default(),
            };
        }
        &mut bucket.value
    }

    /// Calls `visit` with every bucket value still inside the window at `now`.
    pub(crate) fn for_each_live(&self, now: Instant, mut visit: impl FnMut(&T)) {
        let Some(origin) = self.origin else {
            return;
        };
        let current_index = self.bucket_index(origin, now);
        for bucket in &self.buckets {
            if bucket.index > current_index {
                continue;
            }
            if current_index - bucket.index >= WINDOW_BUCKETS as u64 {
                continue;
            }
            visit(&bucket.value);
        }
    }

    pub(crate) fn clear(&mut self) {
        self.origin = None;
        self.buckets = [Bucket::default(); WINDOW_BUCKETS];
    }

    fn bucket_index(&self, origin: Instant, now: Instant) -> u64 {
        let elapsed_nanos = now.saturating_duration_since(origin).as_nanos();
        let index = elapsed_nanos / self.bucket_width_nanos;
        u64::try_from(index).unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live_sum(window: &SlidingWindow<u64>, now: Instant) -> u64 {
        let mut total = 0;
        window.for_each_live(now, |value| total += value);
        total
    }

    #[test]
    fn manual_clock_moves_only_when_advanced() {
        let clock = ManualClock::new();
        let start = clock.now();
        assert_eq!(clock.now(), start);
        clock.advance(Duration::from_secs(3));
        assert_eq!(clock.now(), start + Duration::from_secs(3));
    }

    #[test]
    fn window_forgets_values_older_than_its_span() {
        let start = Instant::now();
        let mut window = SlidingWindow::<u64>::new(Duration::from_secs(10));
        *window.current_mut(start) += 4;
        *window.current_mut(start + Duration::from_secs(5)) += 1;
        assert_eq!(live_sum(&window, start + Duration::from_secs(5)), 5);
        assert_eq!(live_sum(&window, start + Duration::from_secs(10)), 1);
        assert_eq!(live_sum(&window, start + Duration::from_secs(16)), 0);
    }

    #[test]
    fn window_reuses_a_slot_for_a_newer_bucket() {
        let start = Instant::now();
        let mut window = SlidingWindow::<u64>::new(Duration::from_secs(10));
        *window.current_mut(start) += 7;
        *window.current_mut(start + Duration::from_secs(10)) += 2;
        assert_eq!(live_sum(&window, start + Duration::from_secs(10)), 2);
    }

    #[test]
    fn zero_span_window_does_not_panic() {
        let start = Instant::now();
        let mut window = SlidingWindow::<u64>::new(Duration::ZERO);
        *window.current_mut(start) += 1;
        assert_eq!(live_sum(&window, start), 1);
        assert_eq!(live_sum(&window, start + Duration::from_millis(1)), 0);
    }

    #[test]
    fn cleared_window_is_empty() {
        let start = Instant::now();
        let mut window = SlidingWindow::<u64>::new(Duration::from_secs(10));
        *window.current_mut(start) += 3;
        window.clear();
        assert_eq!(live_sum(&window, start), 0);
    }
}
