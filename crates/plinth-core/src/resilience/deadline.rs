//! Deadlines: a point in time by which work must finish, passed down from a
//! request to every call it makes so that no call outlives its caller's
//! patience.
//!
//! Deadlines use tokio's clock, so tests with paused time run them
//! instantly.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use crate::{Error, ErrorKind, HumanDuration};

/// Stands in for "never" when a timeout is too large to add to the current
/// instant (the same horizon tokio uses for its own far future).
const FAR_FUTURE: Duration = Duration::from_secs(86_400 * 365 * 30);

/// The instant by which some work must be done.
#[derive(Clone, Copy, Debug)]
pub struct Deadline {
    expires_at: Instant,
}

impl Deadline {
    pub fn after(timeout: Duration) -> Self {
        let now = Instant::now();
        let expires_at = now.checked_add(timeout).unwrap_or_else(|| now + FAR_FUTURE);
        Deadline { expires_at }
    }

    pub fn expires_at(&self) -> Instant {
        self.expires_at
    }

    /// Whichever of the two deadlines comes first.
    pub fn earlier(self, other: Deadline) -> Deadline {
        if other.expires_at < self.expires_at {
            return other;
        }
        self
    }

    /// Time left, or zero once expired.
    pub fn remaining(&self) -> Duration {
        self.expires_at.saturating_duration_since(Instant::now())
    }

    pub fn is_expired(&self) -> bool {
        Instant::now() >= self.expires_at
    }

    /// Runs `future` until it finishes or the deadline passes, whichever
    /// comes first; on expiry the future is dropped (cancelled).
    pub async fn run<F: Future>(self, future: F) -> Result<F::Output, DeadlineExceeded> {
        let allowed = self.remaining();
        match tokio::time::timeout_at(self.expires_at, future).await {
            Ok(output) => Ok(output),
            Err(_elapsed) => Err(DeadlineExceeded { after: allowed }),
        }
    }
}

/// Work was cut off at its deadline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("deadline exceeded after {}", rounded_to_millis(*.after))]
pub struct DeadlineExceeded {
    /// How long the work was given before it was cut off.
    pub after: Duration,
}

impl From<DeadlineExceeded> for Error {
    fn from(exceeded: DeadlineExceeded) -> Error {
        Error::new(
            ErrorKind::DeadlineExceeded,
            "deadline_exceeded",
            format!(
                "the request did not finish within {}; allow it more time or ask for less work",
                rounded_to_millis(exceeded.after)
            ),
        )
    }
}

/// Durations in messages read better without nanoseconds (`1s 500ms`, not
/// `1s 499ms 999us 873ns`).
pub(crate) fn rounded_to_millis(duration: Duration) -> HumanDuration {
    let whole_millis = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
    let leftover_nanos = duration.subsec_nanos() % 1_000_000;
    let rounded_millis = if leftover_nanos >= 500_000 {
        whole_millis.saturating_add(1)
    } else {
        whole_millis
    };
    HumanDuration::from_millis(rounded_millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Real time with tiny durations: the crate's tokio has no `test-util`,
    // so time cannot be paused. Nothing asserts on how fast the clock runs.

    #[tokio::test]
    async fn run_returns_output_when_the_future_finishes_in_time() {
        let deadline = Deadline::after(Duration::from_secs(3600));
        let output = deadline
            .run(async {
                tokio::task::yield_now().await;
                7
            })
            .await;
        assert_eq!(output, Ok(7));
    }

    #[tokio::test]
    async fn run_times_out_a_future_that_never_finishes() {
        let timeout = Duration::from_millis(20);
        let deadline = Deadline::after(timeout);
        let exceeded = deadline
            .run(std::future::pending::<()>())
            .await
            .unwrap_err();
        assert!(exceeded.after <= timeout);
        assert!(deadline.is_expired());
        assert_eq!(deadline.remaining(), Duration::ZERO);
    }

    #[tokio::test]
    async fn an_already_expired_deadline_cuts_off_at_once() {
        let deadline = Deadline::after(Duration::ZERO);
        assert!(deadline.is_expired());
        let outcome = deadline.run(std::future::pending::<()>()).await;
        assert_eq!(
            outcome,
            Err(DeadlineExceeded {
                after: Duration::ZERO
            })
        );
    }

    #[tokio::test]
    async fn remaining_counts_down() {
        let timeout = Duration::from_secs(3600);
        let deadline = Deadline::after(timeout);
        assert!(deadline.remaining() <= timeout);
        assert!(!deadline.is_expired());
        let pause = Duration::from_millis(5);
        tokio::time::sleep(pause).await;
        assert!(deadline.remaining() <= timeout - pause);
    }

    #[test]
    fn huge_timeouts_do_not_overflow() {
        let deadline = Deadline::after(Duration::MAX);
        assert!(!deadline.is_expired());
        assert!(deadline.remaining() > Duration::from_secs(86_400 * 365));
    }

    #[test]
    fn earlier_picks_the_first_to_expire() {
        let short = Deadline::after(Duration::from_secs(1));
        let long = Deadline::after(Duration::from_secs(9));
        assert_eq!(short.earlier(long).expires_at(), short.expires_at());
        assert_eq!(long.earlier(short).expires_at(), short.expires_at());
    }

    #[test]
    fn converts_to_a_deadline_exceeded_error() {
        let error = Error::from(DeadlineExceeded {
            after: Duration::from_millis(1500),
        });
        assert_eq!(error.kind(), ErrorKind::DeadlineExceeded);
        assert_eq!(error.code(), "deadline_exceeded");
        assert!(error.detail().contains("1s 500ms"), "{}", error.detail());
        assert_eq!(error.retry_after(), None);
    }

    #[test]
    fn displays_the_time_allowed() {
        let exceeded = DeadlineExceeded {
            after: Duration::from_millis(250),
        };
        assert_eq!(exceeded.to_string(), "deadline exceeded after 250ms");
    }

    #[test]
    fn rounds_messages_to_milliseconds() {
        let almost_two_seconds = Duration::from_nanos(1_999_999_999);
        assert_eq!(rounded_to_millis(almost_two_seconds).to_string(), "2s");
        let just_over_a_second = Duration::from_nanos(1_000_000_001);
        assert_eq!(rounded_to_millis(just_over_a_second).to_string(), "1s");
    }
}
