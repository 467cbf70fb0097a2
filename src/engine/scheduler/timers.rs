//! Timers: the retries that wait for their time, each naming the job, the object (index
//! and generation) and what it wakes. The scheduler sleeps until the earliest.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use tokio::time::Instant;

use crate::engine::object::Wake;
use crate::state::JobId;

/// A retry waiting for its time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Timer {
    pub at: Instant,
    pub job: JobId,
    pub file: u32,
    pub generation: u64,
    pub wake: Wake,
}

/// The timers set, earliest first.
#[derive(Default)]
pub(super) struct Timers(BinaryHeap<Reverse<Timer>>);

impl Timers {
    pub(super) fn set(&mut self, at: Instant, job: JobId, file: u32, generation: u64, wake: Wake) {
        self.0.push(Reverse(Timer {
            at,
            job,
            file,
            generation,
            wake,
        }));
    }

    /// When the earliest timer goes off.
    pub(super) fn next(&self) -> Option<Instant> {
        self.0.peek().map(|Reverse(t)| t.at)
    }

    /// Takes the earliest timer if it is due at `now`.
    pub(super) fn pop_due(&mut self, now: Instant) -> Option<Timer> {
        if self.next()? > now {
            return None;
        }
        self.0.pop().map(|Reverse(t)| t)
    }

    /// Drops the timers of a job that ended.
    pub(super) fn forget_job(&mut self, job: JobId) {
        self.0.retain(|Reverse(t)| t.job != job);
    }
}
