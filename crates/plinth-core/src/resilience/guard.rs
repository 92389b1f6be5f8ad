//! The one way every call to an engine runs: through the engine's circuit
//! breaker, under a timeout, with its outcome and duration recorded.
//!
//! Engine code wraps each call in [`EngineGuard::call`] and turns the
//! result into a [`crate::Error`] with
//! [`GuardedCallError::into_plinth_error`], so breaker rejections and
//! timeouts look the same for every engine.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

use tokio::time::Instant;

use crate::Error;
use crate::resilience::breaker::{BreakerOpenError, BreakerPermit, CircuitBreaker};
use crate::resilience::deadline::{Deadline, DeadlineExceeded, rounded_to_millis};

/// The `Retry-After` suggested when an engine call timed out: long enough
/// not to pile onto a slow engine, short enough for interactive clients.
const TIMEOUT_RETRY_AFTER: Duration = Duration::from_secs(1);

/// Why a guarded call did not produce the engine's answer.
#[derive(Debug, thiserror::Error)]
pub enum GuardedCallError<E> {
    /// The breaker turned the call away without running it.
    #[error(transparent)]
    BreakerOpen(BreakerOpenError),
    /// The engine did not answer within the guard's call timeout; counted
    /// as a breaker failure.
    #[error(transparent)]
    Timeout(DeadlineExceeded),
    /// The caller's own deadline ran out before the call timeout did; not
    /// held against the engine.
    #[error(transparent)]
    DeadlineExceeded(DeadlineExceeded),
    /// The engine answered with an error; counted as a breaker failure.
    #[error(transparent)]
    Engine(E),
}

impl<E> GuardedCallError<E> {
    /// Turns the failure into the crate-wide error: an open breaker and a
    /// timeout become `unavailable` (with `Retry-After`), an expired caller
    /// deadline becomes `deadline_exceeded`, engine errors go through
    /// `map_engine`.
    pub fn into_plinth_error(
        self,
        engine: &'static str,
        map_engine: impl FnOnce(E) -> Error,
    ) -> Error {
        match self {
            GuardedCallError::BreakerOpen(open) => Error::unavailable(
                "engine_unavailable",
                format!(
                    "the {engine} engine is failing and its circuit breaker is open; retry after {}",
                    rounded_to_millis(open.retry_after)
                ),
                open.retry_after,
            ),
            GuardedCallError::Timeout(exceeded) => Error::unavailable(
                "engine_timeout",
                format!(
                    "the {engine} engine did not answer within {}",
                    rounded_to_millis(exceeded.after)
                ),
                TIMEOUT_RETRY_AFTER,
            ),
            GuardedCallError::DeadlineExceeded(exceeded) => Error::from(exceeded),
            GuardedCallError::Engine(engine_error) => map_engine(engine_error),
        }
    }
}

/// A breaker plus a per-call timeout for one engine connection.
#[derive(Clone, Debug)]
pub struct EngineGuard {
    breaker: Arc<CircuitBreaker>,
    call_timeout: Duration,
}

impl EngineGuard {
    pub fn new(breaker: Arc<CircuitBreaker>, call_timeout: Duration) -> Self {
        EngineGuard {
            breaker,
            call_timeout,
        }
    }

    pub fn breaker(&self) -> &Arc<CircuitBreaker> {
        &self.breaker
    }

    pub fn call_timeout(&self) -> Duration {
        self.call_timeout
    }

    /// Runs `future` through the breaker under the call timeout.
    ///
    /// `Err` from the future should mean the engine failed (unreachable,
    /// broken connection); answers such as "not found" belong in `T`, or
    /// they would trip the breaker.
    pub async fn call<T, E, F>(
        &self,
        operation_name: &'static str,
        future: F,
    ) -> Result<T, GuardedCallError<E>>
    where
        F: Future<Output = Result<T, E>>,
    {
        self.call_with_deadline(operation_name, None, future).await
    }

    /// Like [`call`](Self::call), but also stops at the caller's `deadline`
    /// when that comes before the call timeout. Running out of the caller's
    /// time is not the engine's fault, so it frees the breaker permit
    /// without recording a failure.
    pub async fn call_with_deadline<T, E, F>(
        &self,
        operation_name: &'static str,
        deadline: Option<Deadline>,
        future: F,
    ) -> Result<T, GuardedCallError<E>>
    where
        F: Future<Output = Result<T, E>>,
    {
        let started = Instant::now();
        let permit = match self.breaker.try_acquire() {
            Ok(permit) => permit,
            Err(open) => {
                self.record_duration(operation_name, "rejected", started);
                return Err(GuardedCallError::BreakerOpen(open));
            }
        };
        let call_deadline = Deadline::after(self.call_timeout);
        let caller_deadline_comes_first = match deadline {
            Some(caller_deadline) => caller_deadline.expires_at() < call_deadline.expires_at(),
            None => false,
        };
        let effective_deadline = match deadline {
            Some(caller_deadline) => call_deadline.earlier(caller_deadline),
            None => call_deadline,
        };
        // One span per engine call, so traces show where a request's time went.
        let span = tracing::info_span!(
            "engine_call",
            engine = self.breaker.name(),
            operation = operation_name
        );
        let outcome = effective_deadline.run(future.instrument(span)).await;
        self.settle(
            operation_name,
            started,
            permit,
            outcome,
            caller_deadline_comes_first,
        )
    }

    /// Records the outcome on the breaker and in the duration histogram.
    fn settle<T, E>(
        &self,
        operation_name: &'static str,
        started: Instant,
        permit: BreakerPermit<'_>,
        outcome: Result<Result<T, E>, DeadlineExceeded>,
        caller_deadline_comes_first: bool,
    ) -> Result<T, GuardedCallError<E>> {
        match outcome {
            Ok(Ok(value)) => {
                permit.success();
                self.record_duration(operation_name, "ok", started);
                Ok(value)
            }
            Ok(Err(engine_error)) => {
                permit.failure();
                self.record_duration(operation_name, "error", started);
                Err(GuardedCallError::Engine(engine_error))
            }
            Err(exceeded) if caller_deadline_comes_first => {
                drop(permit);
                self.record_duration(operation_name, "timeout", started);
                Err(GuardedCallError::DeadlineExceeded(exceeded))
            }
            Err(exceeded) => {
                permit.failure();
                self.record_duration(operation_name, "timeout", started);
                tracing::warn!(
                    engine = self.breaker.name(),
                    operation = operation_name,
                    timeout_ms = exceeded.after.as_millis() as u64,
                    "engine call timed out"
                );
                Err(GuardedCallError::Timeout(exceeded))
            }
        }
    }

    fn record_duration(
        &self,
        operation_name: &'static str,
        outcome: &'static str,
        started: Instant,
    ) {
        metrics::histogram!(
            "plinth_engine_call_duration_seconds",
            "engine" => self.breaker.name().to_owned(),
            "operation" => operation_name,
            "outcome" => outcome,
        )
        .record(started.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;
    use crate::ErrorKind;
    use crate::resilience::breaker::metrics_capture::CapturingRecorder;
    use crate::resilience::breaker::{BreakerConfig, BreakerState};
    use crate::resilience::clock::ManualClock;

    // Real time with tiny timeouts: the crate's tokio has no `test-util`, so
    // time cannot be paused. Nothing asserts on how fast the clock runs.
    const SHORT_TIMEOUT: Duration = Duration::from_millis(10);

    #[derive(Debug, thiserror::Error)]
    #[error("engine broke")]
    struct EngineBroke;

    fn guard_with_manual_clock(consecutive_failures: u32) -> (EngineGuard, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::new());
        let config = BreakerConfig {
            consecutive_failures,
            half_open_probes: 1,
            ..BreakerConfig::default()
        };
        let breaker = CircuitBreaker::with_clock("test_engine", config, clock.clone());
        (EngineGuard::new(Arc::new(breaker), SHORT_TIMEOUT), clock)
    }

    async fn never_answers() -> Result<(), EngineBroke> {
        std::future::pending().await
    }

    #[tokio::test]
    async fn passes_the_answer_through() {
        let (guard, _clock) = guard_with_manual_clock(3);
        let answer = guard.call("get", async { Ok::<_, EngineBroke>(42) }).await;
        assert_eq!(answer.ok(), Some(42));
        assert_eq!(guard.breaker().snapshot().calls_in_window, 1);
    }

    #[tokio::test]
    async fn engine_errors_are_returned_and_counted_as_failures() {
        let (guard, _clock) = guard_with_manual_clock(3);
        let outcome = guard.call("get", async { Err::<(), _>(EngineBroke) }).await;
        assert!(matches!(
            outcome,
            Err(GuardedCallError::Engine(EngineBroke))
        ));
        assert_eq!(guard.breaker().snapshot().consecutive_failures, 1);
    }

    #[tokio::test]
    async fn timeouts_count_as_failures_and_open_the_breaker() {
        let (guard, _clock) = guard_with_manual_clock(3);
        for _ in 0..3 {
            let outcome = guard.call("get", never_answers()).await;
            match outcome {
                Err(GuardedCallError::Timeout(exceeded)) => {
                    assert!(exceeded.after <= SHORT_TIMEOUT)
                }
                other => panic!("expected a timeout, got {other:?}"),
            }
        }
        assert_eq!(guard.breaker().state(), BreakerState::Open);
    }

    #[tokio::test]
    async fn rejects_without_running_the_call_while_open() {
        let (guard, _clock) = guard_with_manual_clock(1);
        let _ = guard.call("get", never_answers()).await;
        let polled = AtomicBool::new(false);
        let outcome = guard
            .call("get", async {
                polled.store(true, Ordering::SeqCst);
                Ok::<_, EngineBroke>(())
            })
            .await;
        match outcome {
            Err(GuardedCallError::BreakerOpen(open)) => {
                assert_eq!(open.breaker, "test_engine");
                assert_eq!(open.retry_after, Duration::from_secs(5));
            }
            other => panic!("expected a rejection, got {other:?}"),
        }
        assert!(!polled.load(Ordering::SeqCst));
        assert_eq!(guard.breaker().snapshot().rejected_calls, 1);
    }

    #[tokio::test]
    async fn a_successful_probe_closes_the_breaker_again() {
        let (guard, clock) = guard_with_manual_clock(1);
        let _ = guard.call("get", never_answers()).await;
        clock.advance(Duration::from_secs(5));
        let answer = guard.call("get", async { Ok::<_, EngineBroke>(1) }).await;
        assert_eq!(answer.ok(), Some(1));
        assert_eq!(guard.breaker().state(), BreakerState::Closed);
    }

    #[tokio::test]
    async fn an_earlier_caller_deadline_is_not_held_against_the_engine() {
        let (guard, _clock) = guard_with_manual_clock(1);
        guard
            .call("get", async { Ok::<_, EngineBroke>(()) })
            .await
            .ok();
        let caller_deadline = Deadline::after(Duration::ZERO);
        let outcome = guard
            .call_with_deadline("get", Some(caller_deadline), never_answers())
            .await;
        assert!(matches!(
            outcome,
            Err(GuardedCallError::DeadlineExceeded(_))
        ));
        let snapshot = guard.breaker().snapshot();
        assert_eq!(snapshot.state, BreakerState::Closed);
        assert_eq!(snapshot.consecutive_failures, 0);
        assert_eq!(
            snapshot.calls_in_window, 1,
            "the cut-off call is not counted"
        );
    }

    #[tokio::test]
    async fn a_later_caller_deadline_leaves_the_call_timeout_in_charge() {
        let (guard, _clock) = guard_with_manual_clock(1);
        let caller_deadline = Deadline::after(Duration::from_secs(3600));
        let outcome = guard
            .call_with_deadline("get", Some(caller_deadline), never_answers())
            .await;
        assert!(matches!(outcome, Err(GuardedCallError::Timeout(_))));
        assert_eq!(guard.breaker().state(), BreakerState::Open);
    }

    #[tokio::test]
    async fn an_abandoned_call_frees_its_probe_slot() {
        let (guard, clock) = guard_with_manual_clock(1);
        let _ = guard.call("get", never_answers()).await;
        clock.advance(Duration::from_secs(5));
        {
            let abandoned = std::pin::pin!(guard.call("get", never_answers()));
            // Polling once takes the only probe slot; dropping the call
            // (as a cancelled request would) must give it back.
            let waker = std::task::Waker::noop();
            let mut context = std::task::Context::from_waker(waker);
            assert!(abandoned.poll(&mut context).is_pending());
        }
        let answer = guard.call("get", async { Ok::<_, EngineBroke>(()) }).await;
        assert!(answer.is_ok());
        assert_eq!(guard.breaker().state(), BreakerState::Closed);
    }

    #[test]
    fn breaker_open_maps_to_unavailable_with_its_retry_after() {
        let error = GuardedCallError::<EngineBroke>::BreakerOpen(BreakerOpenError {
            breaker: "postgres".to_owned(),
            retry_after: Duration::from_secs(4),
        })
        .into_plinth_error("postgres", |_| Error::internal("unused"));
        assert_eq!(error.kind(), ErrorKind::Unavailable);
        assert_eq!(error.code(), "engine_unavailable");
        assert_eq!(error.retry_after(), Some(Duration::from_secs(4)));
        assert!(
            error.detail().contains("breaker is open"),
            "{}",
            error.detail()
        );
    }

    #[test]
    fn timeout_maps_to_unavailable_retry_in_a_second() {
        let error = GuardedCallError::<EngineBroke>::Timeout(DeadlineExceeded {
            after: Duration::from_secs(5),
        })
        .into_plinth_error("redis", |_| Error::internal("unused"));
        assert_eq!(error.kind(), ErrorKind::Unavailable);
        assert_eq!(error.code(), "engine_timeout");
        assert_eq!(error.retry_after(), Some(Duration::from_secs(1)));
        assert_eq!(error.detail(), "the redis engine did not answer within 5s");
    }

    #[test]
    fn caller_deadline_maps_to_deadline_exceeded() {
        let error = GuardedCallError::<EngineBroke>::DeadlineExceeded(DeadlineExceeded {
            after: Duration::from_secs(2),
        })
        .into_plinth_error("redis", |_| Error::internal("unused"));
        assert_eq!(error.kind(), ErrorKind::DeadlineExceeded);
        assert_eq!(error.code(), "deadline_exceeded");
    }

    #[test]
    fn engine_errors_go_through_the_mapper() {
        let error = GuardedCallError::Engine(EngineBroke)
            .into_plinth_error("sqlite", |engine_error| {
                Error::internal(engine_error.to_string())
            });
        assert_eq!(error.kind(), ErrorKind::Internal);
        assert_eq!(error.detail(), "engine broke");
    }

    #[test]
    fn guarded_errors_display_their_cause() {
        let engine_error = GuardedCallError::Engine(EngineBroke);
        assert_eq!(engine_error.to_string(), "engine broke");
        let timeout = GuardedCallError::<EngineBroke>::Timeout(DeadlineExceeded {
            after: Duration::from_millis(300),
        });
        assert_eq!(timeout.to_string(), "deadline exceeded after 300ms");
    }

    #[test]
    fn call_durations_are_recorded_per_outcome() {
        let recorder = CapturingRecorder::default();
        metrics::with_local_recorder(&recorder, || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .expect("runtime");
            runtime.block_on(async {
                let (guard, _clock) = guard_with_manual_clock(2);
                guard
                    .call("get", async { Ok::<_, EngineBroke>(()) })
                    .await
                    .ok();
                guard
                    .call("put", async { Err::<(), _>(EngineBroke) })
                    .await
                    .ok();
                guard.call("get", never_answers()).await.ok();
                guard
                    .call("get", async { Ok::<_, EngineBroke>(()) })
                    .await
                    .ok();
            });
        });
        let mut durations = Vec::new();
        for event in recorder.events() {
            if event.starts_with("plinth_engine_call_duration_seconds") {
                durations.push(event);
            }
        }
        let series = "plinth_engine_call_duration_seconds{engine=test_engine";
        assert_eq!(
            durations,
            vec![
                format!("{series},operation=get,outcome=ok}} recorded"),
                format!("{series},operation=put,outcome=error}} recorded"),
                format!("{series},operation=get,outcome=timeout}} recorded"),
                format!("{series},operation=get,outcome=rejected}} recorded"),
            ]
        );
    }

    #[test]
    fn guarded_call_future_is_send() {
        fn assert_send<T: Send>(_: &T) {}
        let (guard, _clock) = guard_with_manual_clock(1);
        let future = guard.call("get", async { Ok::<_, EngineBroke>(()) });
        assert_send(&future);
    }
}
