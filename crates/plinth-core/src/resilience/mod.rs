//! What keeps a failing engine from taking Plinth down with it.
//!
//! - [`EngineGuard`] is the one way every engine call runs: through the
//!   engine's [`CircuitBreaker`], under a timeout or the caller's
//!   [`Deadline`], with its duration and outcome in metrics.
//! - [`CircuitBreaker`] stops calls to an engine that keeps failing and
//!   probes it back to health; its rules live in the clock-free
//!   [`BreakerStateMachine`].
//! - [`retry`] re-runs failed operations with jittered exponential backoff
//!   ([`RetryPolicy`]), limited by a [`RetryBudget`] so that retries cannot
//!   multiply load on an engine that is already struggling.
//! - [`Clock`] lets tests step time by hand ([`ManualClock`]).

mod breaker;
mod budget;
mod clock;
mod deadline;
mod guard;
mod retry;

pub use breaker::{
    Admission, BreakerConfig, BreakerOpenError, BreakerPermit, BreakerSnapshot, BreakerState,
    BreakerStateMachine, CircuitBreaker, Rejected, Transition, WindowTotals,
};
pub use budget::{RetryBudget, RetryBudgetConfig};
pub use clock::{Clock, ManualClock, SystemClock};
pub use deadline::{Deadline, DeadlineExceeded};
pub use guard::{EngineGuard, GuardedCallError};
pub use retry::{RetryPolicy, retry};
