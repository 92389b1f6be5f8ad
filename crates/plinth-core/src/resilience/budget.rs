//! A retry budget: caps retries to a fraction of recent calls so that
//! retries cannot multiply load on an engine that is already struggling
//! (a retry storm), while still allowing a trickle of retries when traffic
//! is low.
//!
//! Modelled on Finagle's and linkerd's budgets: every call deposits
//! `ratio` of a retry, every retry withdraws one whole retry, and a reserve
//! of `min_retries_per_second × ttl` retries is always available. Deposits
//! and withdrawals count only for `ttl`, so the budget follows recent
//! traffic and refills by itself.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::HumanDuration;
use crate::resilience::clock::{Clock, SlidingWindow, SystemClock};

/// Balances are kept in millionths of a retry so that fractional ratios
/// add up exactly enough in integer arithmetic.
const UNITS_PER_RETRY: i64 = 1_000_000;

/// Limits retries to a share of recent calls.
pub struct RetryBudget {
    deposit_units: i64,
    reserve_units: i64,
    /// Net deposits minus withdrawals per bucket over the last `ttl`.
    balance_window: Mutex<SlidingWindow<i64>>,
    clock: Arc<dyn Clock>,
}

impl RetryBudget {
    /// `ratio` retries are earned per call (0.2: one retry per five calls);
    /// `min_retries_per_second` are allowed regardless of traffic;
    /// both count over the last `ttl`.
    pub fn new(ratio: f64, min_retries_per_second: u32, ttl: Duration) -> Self {
        Self::with_clock(ratio, min_retries_per_second, ttl, Arc::new(SystemClock))
    }

    pub fn with_clock(
        ratio: f64,
        min_retries_per_second: u32,
        ttl: Duration,
        clock: Arc<dyn Clock>,
    ) -> Self {
        RetryBudget {
            deposit_units: deposit_units_for(ratio),
            reserve_units: reserve_units_for(min_retries_per_second, ttl),
            balance_window: Mutex::new(SlidingWindow::new(ttl)),
            clock,
        }
    }

    /// Records one call (a first attempt), earning `ratio` of a retry.
    pub fn deposit(&self) {
        let now = self.clock.now();
        let mut window = self.balance_window.lock();
        let bucket = window.current_mut(now);
        *bucket = bucket.saturating_add(self.deposit_units);
    }

    /// Spends one retry if the budget has one; `false` means do not retry.
    pub fn try_withdraw(&self) -> bool {
        let now = self.clock.now();
        let mut window = self.balance_window.lock();
        let mut balance = self.reserve_units;
        window.for_each_live(now, |bucket| balance = balance.saturating_add(*bucket));
        if balance < UNITS_PER_RETRY {
            return false;
        }
        let bucket = window.current_mut(now);
        *bucket = bucket.saturating_sub(UNITS_PER_RETRY);
        true
    }
}

impl std::fmt::Debug for RetryBudget {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("RetryBudget")
            .field("deposit_units", &self.deposit_units)
            .field("reserve_units", &self.reserve_units)
            .finish_non_exhaustive()
    }
}

/// A negative or NaN ratio earns nothing; the reserve still applies.
fn deposit_units_for(ratio: f64) -> i64 {
    if ratio.is_nan() || ratio <= 0.0 {
        return 0;
    }
    // Float-to-int `as` saturates, so absurd ratios cannot overflow.
    (ratio * UNITS_PER_RETRY as f64).round() as i64
}

fn reserve_units_for(min_retries_per_second: u32, ttl: Duration) -> i64 {
    let reserve_retries = f64::from(min_retries_per_second) * ttl.as_secs_f64();
    (reserve_retries * UNITS_PER_RETRY as f64).round() as i64
}

/// Retry budget settings as written in configuration.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryBudgetConfig {
    /// Retries earned per call.
    pub ratio: f64,
    /// Retries allowed per second however little traffic there is.
    pub min_retries_per_second: u32,
    /// How long deposits and withdrawals count.
    pub ttl: HumanDuration,
}

impl Default for RetryBudgetConfig {
    fn default() -> Self {
        RetryBudgetConfig {
            ratio: 0.2,
            min_retries_per_second: 10,
            ttl: HumanDuration::from_secs(10),
        }
    }
}

impl RetryBudgetConfig {
    pub fn build(&self) -> RetryBudget {
        RetryBudget::new(
            self.ratio,
            self.min_retries_per_second,
            self.ttl.as_duration(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resilience::clock::ManualClock;

    fn withdrawals_allowed(budget: &RetryBudget) -> u32 {
        let mut allowed = 0;
        while budget.try_withdraw() {
            allowed += 1;
            assert!(allowed <= 1_000_000, "budget never ran out");
        }
        allowed
    }

    fn budget_with_manual_clock(
        ratio: f64,
        min_retries_per_second: u32,
        ttl: Duration,
    ) -> (RetryBudget, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::new());
        let budget = RetryBudget::with_clock(ratio, min_retries_per_second, ttl, clock.clone());
        (budget, clock)
    }

    #[test]
    fn allows_the_minimum_without_any_deposits() {
        let (budget, _clock) = budget_with_manual_clock(0.2, 10, Duration::from_secs(1));
        assert_eq!(withdrawals_allowed(&budget), 10);
    }

    #[test]
    fn reserve_covers_the_whole_ttl() {
        let (budget, _clock) = budget_with_manual_clock(0.2, 10, Duration::from_secs(10));
        assert_eq!(withdrawals_allowed(&budget), 100);
    }

    #[test]
    fn deposits_earn_ratio_retries_beyond_the_minimum() {
        let (budget, _clock) = budget_with_manual_clock(0.2, 10, Duration::from_secs(1));
        for _ in 0..50 {
            budget.deposit();
        }
        assert_eq!(withdrawals_allowed(&budget), 10 + 10);
    }

    #[test]
    fn zero_minimum_allows_only_earned_retries() {
        let (budget, _clock) = budget_with_manual_clock(0.5, 0, Duration::from_secs(10));
        assert!(!budget.try_withdraw());
        budget.deposit();
        assert!(!budget.try_withdraw());
        budget.deposit();
        assert!(budget.try_withdraw());
        assert!(!budget.try_withdraw());
    }

    #[test]
    fn spent_retries_come_back_after_the_ttl() {
        let (budget, clock) = budget_with_manual_clock(0.2, 5, Duration::from_secs(1));
        assert_eq!(withdrawals_allowed(&budget), 5);
        clock.advance(Duration::from_secs(2));
        assert_eq!(withdrawals_allowed(&budget), 5);
    }

    #[test]
    fn deposits_expire_after_the_ttl() {
        let (budget, clock) = budget_with_manual_clock(1.0, 0, Duration::from_secs(1));
        for _ in 0..3 {
            budget.deposit();
        }
        clock.advance(Duration::from_secs(2));
        assert!(!budget.try_withdraw());
    }

    #[test]
    fn nonsense_ratios_earn_nothing() {
        for ratio in [f64::NAN, -1.0, 0.0] {
            let (budget, _clock) = budget_with_manual_clock(ratio, 0, Duration::from_secs(1));
            budget.deposit();
            assert!(!budget.try_withdraw(), "ratio {ratio}");
        }
    }

    #[test]
    fn config_defaults_and_parses() {
        let config: RetryBudgetConfig =
            toml::from_str("ratio = 0.1\nttl = \"5s\"").expect("valid config");
        assert_eq!(config.ratio, 0.1);
        assert_eq!(config.min_retries_per_second, 10);
        assert_eq!(config.ttl, HumanDuration::from_secs(5));
        let budget = RetryBudgetConfig::default().build();
        assert!(budget.try_withdraw());
        assert!(toml::from_str::<RetryBudgetConfig>("rate = 0.1").is_err());
    }
}
