//! A worker's own health on a shared state: whether the failures it sees are its own — the
//! store refuses its credentials or permissions, its disk is full, its network reaches no store
//! — so that it steps aside for a while (quarantine) and its claims go to the other workers,
//! rather than spend the objects' attempt budgets. A pure rule, fed every outcome.

use std::time::Duration;

use crate::store::{ErrorClass, StoreError};

/// Requests in a row that got no answer from any store (a connection refused, reset or timed
/// out) before a worker takes its network for down.
pub(crate) const UNREACHABLE_STREAK: u32 = 8;

/// How long a worker leaves a job to the others once it stepped aside, before it tries again
/// (`BLOBWAY_WORKER_QUARANTINE` in seconds changes it).
pub(crate) const QUARANTINE: Duration = Duration::from_secs(30);

/// [`QUARANTINE`], or what `BLOBWAY_WORKER_QUARANTINE` asks (whole seconds, at least 1).
pub(crate) fn quarantine() -> Duration {
    std::env::var("BLOBWAY_WORKER_QUARANTINE")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(QUARANTINE, |secs| Duration::from_secs(secs.max(1)))
}

/// The outcomes a worker saw lately, as far as its own health goes.
#[derive(Debug, Default)]
pub(crate) struct Health {
    /// Requests in a row that reached no store.
    unreachable: u32,
}

impl Health {
    /// Feeds one request's outcome (`None`: it succeeded). Returns why this worker should step
    /// aside, when its failures are its own.
    pub(crate) fn observe(&mut self, error: Option<&StoreError>) -> Option<String> {
        let Some(err) = error else {
            self.unreachable = 0;
            return None;
        };
        if err.class.stops_job() {
            self.unreachable = 0;
            return Some(format!(
                "this worker cannot go on with it ({}): {}",
                err.class.name(),
                err.message
            ));
        }
        if err.class == ErrorClass::Transient && err.status.is_none() {
            self.unreachable += 1;
            if self.unreachable >= UNREACHABLE_STREAK {
                self.unreachable = 0;
                return Some(format!(
                    "{UNREACHABLE_STREAK} requests in a row reached no store (the last: {})",
                    err.message
                ));
            }
            return None;
        }
        // The store answered: the network reaches it.
        self.unreachable = 0;
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn error(class: ErrorClass, status: Option<u16>) -> StoreError {
        StoreError::new(class, status, "boom")
    }

    #[test]
    fn refused_credentials_or_a_full_disk_step_aside_at_once() {
        for class in [
            ErrorClass::Auth,
            ErrorClass::Permission,
            ErrorClass::Capacity,
        ] {
            let reason = Health::default().observe(Some(&error(class, Some(403))));
            assert!(
                reason.is_some_and(|r| r.contains(class.name())),
                "{class:?}"
            );
        }
    }

    #[test]
    fn a_network_that_reaches_nothing_steps_aside_after_a_streak_an_answer_breaks() {
        let mut health = Health::default();
        let unreachable = error(ErrorClass::Transient, None);
        for _ in 1..UNREACHABLE_STREAK {
            assert_eq!(health.observe(Some(&unreachable)), None);
        }
        // An answer from a store — even an error — shows the network reaches it.
        assert_eq!(
            health.observe(Some(&error(ErrorClass::Throttled, Some(503)))),
            None
        );
        for _ in 1..UNREACHABLE_STREAK {
            assert_eq!(health.observe(Some(&unreachable)), None);
        }
        assert!(health.observe(Some(&unreachable)).is_some());
    }

    #[test]
    fn an_objects_own_failures_never_quarantine() {
        let mut health = Health::default();
        for class in [
            ErrorClass::SourceChanged,
            ErrorClass::NotFound,
            ErrorClass::Invalid,
            ErrorClass::Exists,
            ErrorClass::Damaged,
            ErrorClass::UploadLost,
        ] {
            for _ in 0..(2 * UNREACHABLE_STREAK) {
                assert_eq!(health.observe(Some(&error(class, Some(412)))), None);
            }
        }
    }

    fn outcome() -> impl Strategy<Value = Option<(bool, bool)>> {
        // None: success; Some((answered, fatal)).
        prop_oneof![
            3 => Just(None),
            3 => Just(Some((false, false))),
            2 => Just(Some((true, false))),
            1 => Just(Some((true, true))),
        ]
    }

    proptest! {
        /// A worker steps aside exactly when a fatal error comes, or when the last
        /// `UNREACHABLE_STREAK` outcomes since it last stepped aside all reached no store.
        #[test]
        fn it_steps_aside_only_for_its_own_failures(outcomes in prop::collection::vec(outcome(), 0..200)) {
            let mut health = Health::default();
            let mut streak = 0;
            for o in outcomes {
                let err = o.map(|(answered, fatal)| match (answered, fatal) {
                    (_, true) => error(ErrorClass::Auth, Some(401)),
                    (true, false) => error(ErrorClass::Transient, Some(500)),
                    (false, false) => error(ErrorClass::Transient, None),
                });
                let verdict = health.observe(err.as_ref());
                let expected = match o {
                    Some((_, true)) => { streak = 0; true }
                    Some((false, false)) => {
                        streak += 1;
                        let due = streak == UNREACHABLE_STREAK;
                        if due { streak = 0; }
                        due
                    }
                    _ => { streak = 0; false }
                };
                prop_assert_eq!(verdict.is_some(), expected);
            }
        }
    }
}
