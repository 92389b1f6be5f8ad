//! Retrying failed operations with capped exponential backoff and full
//! jitter, optionally limited by a [`RetryBudget`].
//!
//! Full jitter (a delay drawn uniformly between zero and the exponential
//! ceiling) spreads retries from many clients apart, so that they do not
//! hit a recovering engine in synchronized waves.

use std::future::Future;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::HumanDuration;
use crate::resilience::budget::RetryBudget;

/// How many times to try and how long to wait in between.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryPolicy {
    /// Attempts in total, the first one included. `0` is treated as `1`:
    /// the operation always runs at least once.
    pub max_attempts: u32,
    /// Ceiling of the delay before the first retry.
    pub initial_backoff: HumanDuration,
    /// No delay is ever longer than this.
    pub max_backoff: HumanDuration,
    /// Growth of the ceiling per retry. Values below `1` (or NaN) are
    /// treated as `1`, so delays never shrink.
    pub multiplier: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            initial_backoff: HumanDuration::from_millis(50),
            max_backoff: HumanDuration::from_secs(2),
            multiplier: 2.0,
        }
    }
}

impl RetryPolicy {
    /// The longest delay before retry number `retry_number` (0 for the first
    /// retry): `min(max_backoff, initial_backoff × multiplier^retry_number)`.
    pub fn backoff_ceiling(&self, retry_number: u32) -> Duration {
        let max_backoff = self.max_backoff.as_duration();
        let initial_backoff = self.initial_backoff.as_duration().min(max_backoff);
        // Zero times an infinite growth factor would be NaN, not zero.
        if initial_backoff.is_zero() {
            return Duration::ZERO;
        }
        // `f64::max` ignores NaN, so a NaN multiplier also becomes 1.
        let multiplier = self.multiplier.max(1.0);
        // Computed in floating point so that huge retry numbers saturate to
        // infinity (and then to max_backoff) instead of overflowing.
        let scaled_nanos =
            initial_backoff.as_nanos() as f64 * multiplier.powf(f64::from(retry_number));
        if !scaled_nanos.is_finite() || scaled_nanos >= max_backoff.as_nanos() as f64 {
            return max_backoff;
        }
        // Above about 2^53 nanoseconds floats lose precision, which could
        // land a hair outside [initial, max]; clamp back into range.
        Duration::from_nanos(scaled_nanos as u64)
            .max(initial_backoff)
            .min(max_backoff)
    }

    /// A delay drawn uniformly from `[0, backoff_ceiling(retry_number)]`
    /// (AWS's "full jitter").
    pub fn full_jitter_backoff(&self, retry_number: u32, rng: &mut impl rand::Rng) -> Duration {
        let ceiling = self.backoff_ceiling(retry_number);
        let ceiling_nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rng.random_range(0..=ceiling_nanos))
    }

    fn attempts_allowed(&self) -> u32 {
        self.max_attempts.max(1)
    }
}

/// Runs `operation` until it succeeds, fails with an error `is_retryable`
/// rejects, runs out of attempts, or the budget refuses a retry; returns the
/// last outcome.
///
/// `operation` receives the attempt number, starting at 0. The call deposits
/// into `budget` once (for the first attempt) and withdraws once per retry.
pub async fn retry<T, E, Op, Fut>(
    policy: &RetryPolicy,
    budget: Option<&RetryBudget>,
    is_retryable: impl Fn(&E) -> bool,
    mut operation: Op,
) -> Result<T, E>
where
    Op: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    if let Some(budget) = budget {
        budget.deposit();
    }
    let mut attempt = 0;
    loop {
        let error = match operation(attempt).await {
            Ok(value) => return Ok(value),
            Err(error) => error,
        };
        if attempt + 1 >= policy.attempts_allowed() {
            return Err(error);
        }
        if !is_retryable(&error) {
            return Err(error);
        }
        if !budget_allows_retry(budget) {
            tracing::debug!(attempt, "retry budget exhausted; not retrying");
            return Err(error);
        }
        // The thread-local generator is not Send, so it must not live
        // across the await below.
        let backoff = policy.full_jitter_backoff(attempt, &mut rand::rng());
        tracing::debug!(
            attempt,
            backoff_ms = backoff.as_millis() as u64,
            "attempt failed; retrying"
        );
        tokio::time::sleep(backoff).await;
        attempt += 1;
    }
}

fn budget_allows_retry(budget: Option<&RetryBudget>) -> bool {
    match budget {
        Some(budget) => budget.try_withdraw(),
        None => true,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;
    use crate::resilience::clock::ManualClock;

    #[derive(Debug, PartialEq, Eq)]
    enum TestError {
        Transient,
        Permanent,
    }

    fn is_transient(error: &TestError) -> bool {
        *error == TestError::Transient
    }

    /// Millisecond backoffs keep the real-time sleeps short (the crate's
    /// tokio has no `test-util`, so time cannot be paused).
    fn policy(max_attempts: u32) -> RetryPolicy {
        RetryPolicy {
            max_attempts,
            initial_backoff: HumanDuration::from_millis(1),
            max_backoff: HumanDuration::from_millis(4),
            multiplier: 2.0,
        }
    }

    /// Runs `retry` with an operation that fails with `error` every time and
    /// returns how many attempts were made.
    async fn attempts_made(
        policy: &RetryPolicy,
        budget: Option<&RetryBudget>,
        error: fn() -> TestError,
    ) -> u32 {
        let attempts = AtomicU32::new(0);
        let outcome: Result<(), TestError> = retry(policy, budget, is_transient, |_attempt| {
            attempts.fetch_add(1, Ordering::SeqCst);
            async move { Err(error()) }
        })
        .await;
        assert!(outcome.is_err());
        attempts.load(Ordering::SeqCst)
    }

    #[tokio::test]
    async fn stops_at_max_attempts() {
        let attempts = attempts_made(&policy(4), None, || TestError::Transient).await;
        assert_eq!(attempts, 4);
    }

    #[tokio::test]
    async fn zero_max_attempts_still_runs_once() {
        let attempts = attempts_made(&policy(0), None, || TestError::Transient).await;
        assert_eq!(attempts, 1);
    }

    #[tokio::test]
    async fn stops_on_a_non_retryable_error() {
        let attempts = attempts_made(&policy(5), None, || TestError::Permanent).await;
        assert_eq!(attempts, 1);
    }

    #[tokio::test]
    async fn returns_the_first_success_and_passes_attempt_numbers() {
        let seen_attempts = parking_lot::Mutex::new(Vec::new());
        let outcome = retry(&policy(5), None, is_transient, |attempt| {
            seen_attempts.lock().push(attempt);
            async move {
                if attempt < 2 {
                    return Err(TestError::Transient);
                }
                Ok(attempt * 10)
            }
        })
        .await;
        assert_eq!(outcome, Ok(20));
        assert_eq!(*seen_attempts.lock(), vec![0, 1, 2]);
    }

    #[tokio::test]
    async fn stops_retrying_when_the_budget_refuses() {
        let clock = Arc::new(ManualClock::new());
        // Two retries of reserve and nothing earned from deposits.
        let budget = RetryBudget::with_clock(0.0, 2, Duration::from_secs(1), clock);
        let first_call = attempts_made(&policy(10), Some(&budget), || TestError::Transient).await;
        assert_eq!(first_call, 3);
        let second_call = attempts_made(&policy(10), Some(&budget), || TestError::Transient).await;
        assert_eq!(second_call, 1);
    }

    #[tokio::test]
    async fn deposits_once_per_call() {
        let clock = Arc::new(ManualClock::new());
        // Each call earns exactly one retry.
        let budget = RetryBudget::with_clock(1.0, 0, Duration::from_secs(10), clock);
        for _ in 0..3 {
            let attempts = attempts_made(&policy(10), Some(&budget), || TestError::Transient).await;
            assert_eq!(attempts, 2);
        }
    }

    #[tokio::test]
    async fn non_retryable_errors_do_not_spend_the_budget() {
        let clock = Arc::new(ManualClock::new());
        let budget = RetryBudget::with_clock(0.0, 1, Duration::from_secs(1), clock);
        attempts_made(&policy(3), Some(&budget), || TestError::Permanent).await;
        assert!(budget.try_withdraw());
    }

    #[test]
    fn retry_future_is_send() {
        fn assert_send<T: Send>(_: &T) {}
        let retry_policy = RetryPolicy::default();
        let future = retry(&retry_policy, None, is_transient, |_attempt| async {
            Err::<(), TestError>(TestError::Transient)
        });
        assert_send(&future);
    }

    #[test]
    fn ceilings_grow_exponentially_up_to_the_maximum() {
        let retry_policy = RetryPolicy::default();
        assert_eq!(retry_policy.backoff_ceiling(0), Duration::from_millis(50));
        assert_eq!(retry_policy.backoff_ceiling(1), Duration::from_millis(100));
        assert_eq!(retry_policy.backoff_ceiling(3), Duration::from_millis(400));
        assert_eq!(retry_policy.backoff_ceiling(6), Duration::from_secs(2));
        assert_eq!(
            retry_policy.backoff_ceiling(u32::MAX),
            Duration::from_secs(2)
        );
    }

    #[test]
    fn zero_initial_backoff_stays_zero() {
        let retry_policy = RetryPolicy {
            initial_backoff: HumanDuration::from_millis(0),
            ..RetryPolicy::default()
        };
        assert_eq!(retry_policy.backoff_ceiling(u32::MAX), Duration::ZERO);
    }

    #[test]
    fn shrinking_or_nan_multipliers_act_as_one() {
        for multiplier in [0.5, -3.0, f64::NAN] {
            let retry_policy = RetryPolicy {
                multiplier,
                ..RetryPolicy::default()
            };
            assert_eq!(
                retry_policy.backoff_ceiling(10),
                Duration::from_millis(50),
                "multiplier {multiplier}"
            );
        }
    }

    #[test]
    fn initial_above_maximum_is_capped() {
        let retry_policy = RetryPolicy {
            initial_backoff: HumanDuration::from_secs(10),
            max_backoff: HumanDuration::from_secs(1),
            ..RetryPolicy::default()
        };
        assert_eq!(retry_policy.backoff_ceiling(0), Duration::from_secs(1));
    }

    #[test]
    fn policy_parses_from_config() {
        let retry_policy: RetryPolicy =
            toml::from_str("max_attempts = 5\ninitial_backoff = \"10ms\"").expect("valid policy");
        assert_eq!(retry_policy.max_attempts, 5);
        assert_eq!(retry_policy.initial_backoff, HumanDuration::from_millis(10));
        assert_eq!(retry_policy.max_backoff, HumanDuration::from_secs(2));
        assert!(toml::from_str::<RetryPolicy>("attempts = 5").is_err());
    }

    fn any_policy() -> impl Strategy<Value = RetryPolicy> {
        (0u64..=10_000, 0u64..=600_000, 1.0f64..=10.0, any::<u32>()).prop_map(
            |(initial_millis, max_millis, multiplier, max_attempts)| RetryPolicy {
                max_attempts,
                initial_backoff: HumanDuration::from_millis(initial_millis),
                max_backoff: HumanDuration::from_millis(max_millis),
                multiplier,
            },
        )
    }

    fn any_retry_number() -> impl Strategy<Value = u32> {
        prop_oneof![0u32..=64, any::<u32>(), Just(u32::MAX)]
    }

    proptest! {
        #[test]
        fn jitter_stays_under_the_ceiling_and_the_ceiling_under_the_maximum(
            retry_policy in any_policy(),
            retry_number in any_retry_number(),
            seed in any::<u64>(),
        ) {
            let mut rng = StdRng::seed_from_u64(seed);
            let ceiling = retry_policy.backoff_ceiling(retry_number);
            let jittered = retry_policy.full_jitter_backoff(retry_number, &mut rng);
            prop_assert!(jittered <= ceiling);
            prop_assert!(ceiling <= retry_policy.max_backoff.as_duration());
        }

        #[test]
        fn ceiling_never_decreases_with_the_retry_number(
            retry_policy in any_policy(),
            retry_number in any_retry_number(),
            step in 1u32..=1_000,
        ) {
            let next_retry_number = retry_number.saturating_add(step);
            let ceiling = retry_policy.backoff_ceiling(retry_number);
            let next_ceiling = retry_policy.backoff_ceiling(next_retry_number);
            prop_assert!(ceiling <= next_ceiling, "{ceiling:?} > {next_ceiling:?}");
        }
    }
}
