//! When to try again: exponential backoff with full jitter, never sooner than a store's
//! `Retry-After`, up to a bounded number of attempts. Only [`ErrorClass::is_retryable`] classes
//! are retried.

use std::future::Future;
use std::time::Duration;

use rand::Rng;

use crate::store::{StoreError, StoreResult};

/// The retry rules of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts per chunk (or commit, or listing) before giving up; at least 1.
    pub max_attempts: u32,
    /// Ceiling of the first backoff.
    pub base: Duration,
    /// Ceiling of any backoff.
    pub cap: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 10,
            base: Duration::from_millis(200),
            cap: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// The few quick retries of the first request to each store: enough to ride out a
    /// hiccup, short enough that a wrong endpoint or credential is reported at once.
    pub fn preflight() -> Self {
        Self {
            max_attempts: 3,
            base: Duration::from_millis(250),
            cap: Duration::from_secs(1),
        }
    }

    /// True when an error after `attempts` attempts deserves another one.
    pub fn should_retry(&self, err: &StoreError, attempts: u32) -> bool {
        err.class.is_retryable() && attempts < self.max_attempts
    }

    /// How long to wait before attempt `attempts + 1`: a uniformly random delay up to
    /// `min(cap, base · 2^(attempts-1))` ("full jitter"), but at least what the store asked
    /// for in `Retry-After`.
    pub fn delay(&self, attempts: u32, retry_after: Option<Duration>) -> Duration {
        let exp = attempts.saturating_sub(1).min(30);
        let ceiling = self.base.saturating_mul(1u32 << exp).min(self.cap);
        let jittered = if ceiling.is_zero() {
            Duration::ZERO
        } else {
            rand::rng().random_range(Duration::ZERO..=ceiling)
        };
        let asked = retry_after
            .unwrap_or_default()
            .min(self.cap.saturating_mul(4));
        jittered.max(asked)
    }

    /// Runs `call` until it succeeds, fails with a class not worth retrying, or runs out of
    /// attempts. For calls outside the chunk pipeline (listing, creating the container).
    pub async fn run<T, F, Fut>(&self, mut call: F) -> StoreResult<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = StoreResult<T>>,
    {
        let mut attempts = 0;
        loop {
            attempts += 1;
            match call().await {
                Ok(value) => return Ok(value),
                Err(err) if self.should_retry(&err, attempts) => {
                    tokio::time::sleep(self.delay(attempts, err.retry_after)).await;
                }
                Err(err) => return Err(err),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ErrorClass;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn backoff_grows_stays_under_the_cap_and_honours_retry_after() {
        let policy = RetryPolicy {
            max_attempts: 5,
            base: Duration::from_millis(100),
            cap: Duration::from_secs(2),
        };
        for attempts in 1..=12 {
            let ceiling = Duration::from_millis(100 * (1 << (attempts - 1).min(5))).min(policy.cap);
            for _ in 0..50 {
                assert!(policy.delay(attempts, None) <= ceiling);
            }
        }
        let waits: Vec<_> = (0..200).map(|_| policy.delay(3, None)).collect();
        assert!(
            waits.iter().any(|d| *d < Duration::from_millis(200)),
            "jitter spreads low"
        );
        assert!(
            waits.iter().any(|d| *d > Duration::from_millis(200)),
            "jitter spreads high"
        );
        assert!(policy.delay(1, Some(Duration::from_secs(3))) >= Duration::from_secs(3));
    }

    #[test]
    fn only_retryable_classes_are_retried_and_only_so_often() {
        let policy = RetryPolicy::default();
        let throttled = StoreError::new(ErrorClass::Throttled, Some(503), "slow down");
        let auth = StoreError::new(ErrorClass::Auth, Some(403), "bad key");
        assert!(policy.should_retry(&throttled, 1));
        assert!(!policy.should_retry(&throttled, policy.max_attempts));
        assert!(!policy.should_retry(&auth, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn run_retries_transient_failures_then_succeeds() {
        let policy = RetryPolicy::default();
        let calls = AtomicU32::new(0);
        let result = policy
            .run(|| async {
                if calls.fetch_add(1, Ordering::SeqCst) < 3 {
                    Err(StoreError::transient("reset"))
                } else {
                    Ok(7)
                }
            })
            .await;
        assert_eq!(result, Ok(7));
        assert_eq!(calls.load(Ordering::SeqCst), 4);

        let fatal = policy
            .run(|| async {
                Err::<(), _>(StoreError::new(ErrorClass::NotFound, Some(404), "gone"))
            })
            .await;
        assert_eq!(fatal.expect_err("fatal").class, ErrorClass::NotFound);
    }
}
