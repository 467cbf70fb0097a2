//! A worker's lease on a shared state database, as the engine sees it: whether this process
//! may still act on what it claimed (commit, abort, record), and the activity its heartbeat
//! reports. The database judges a lease by its own clock; this side only keeps a
//! conservative local view of it (measured on the monotonic clock from before the last renewal
//! was asked), so a process that was stopped or cut off past its lease knows it before it
//! sends anything.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long a lease lasts unless renewed (`BLOBWAY_WORKER_LEASE`, seconds): a worker that
/// stops renewing for this long loses its claims to the others.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(15);

/// The least margin a worker keeps before it acts at a store on a claim.
const MARGIN: Duration = Duration::from_secs(1);

/// One worker's lease: its fencing epoch, how long a renewal lasts and when the last one was
/// asked for, and what its heartbeat reports.
#[derive(Debug)]
pub struct Lease {
    /// The worker's name in the fleet.
    pub name: String,
    /// The fencing token every claim of this worker carries (unique in the database).
    pub epoch: i64,
    /// How long a renewal lasts.
    pub duration: Duration,
    renewed: Mutex<Instant>,
    fenced: AtomicBool,
    in_flight: AtomicU64,
    chunks_moved: AtomicU64,
    bytes_moved: AtomicU64,
    quarantine: Mutex<Option<String>>,
}

/// What a worker reports with each heartbeat.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Activity {
    /// Chunks in flight now.
    pub in_flight: u64,
    /// Chunks moved since the worker joined.
    pub chunks_moved: u64,
    /// Bytes moved since the worker joined.
    pub bytes_moved: u64,
}

impl Lease {
    /// A lease granted at `asked` (when its grant was asked for).
    pub fn new(name: String, epoch: i64, duration: Duration, asked: Instant) -> Self {
        Self {
            name,
            epoch,
            duration,
            renewed: Mutex::new(asked),
            fenced: AtomicBool::new(false),
            in_flight: AtomicU64::new(0),
            chunks_moved: AtomicU64::new(0),
            bytes_moved: AtomicU64::new(0),
            quarantine: Mutex::new(None),
        }
    }

    /// The lease duration `BLOBWAY_WORKER_LEASE` asks for (whole seconds, at least 2), or the
    /// default.
    pub fn duration_from_env() -> Duration {
        std::env::var("BLOBWAY_WORKER_LEASE")
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map_or(DEFAULT_LEASE, |secs| Duration::from_secs(secs.max(2)))
    }

    /// A renewal asked for at `asked` was granted.
    pub fn renewed(&self, asked: Instant) {
        let mut last = self.renewed.lock().unwrap_or_else(|p| p.into_inner());
        if asked > *last {
            *last = asked;
        }
    }

    /// The database refused this lease (it expired and was taken back): nothing more may be
    /// done on its claims.
    pub fn fence(&self) {
        self.fenced.store(true, Ordering::SeqCst);
    }

    /// True once the database refused this lease.
    pub fn is_fenced(&self) -> bool {
        self.fenced.load(Ordering::SeqCst)
    }

    /// True while this worker may act at a store on what it claimed: not fenced, and its last
    /// renewal still has more than a margin to run by this process's own clock.
    pub fn holds(&self) -> bool {
        let last = *self.renewed.lock().unwrap_or_else(|p| p.into_inner());
        holds_at(self.is_fenced(), last.elapsed(), self.duration)
    }

    /// Records what the engine is doing, for the next heartbeat.
    pub fn report(&self, activity: Activity) {
        self.in_flight.store(activity.in_flight, Ordering::Relaxed);
        self.chunks_moved
            .store(activity.chunks_moved, Ordering::Relaxed);
        self.bytes_moved
            .store(activity.bytes_moved, Ordering::Relaxed);
    }

    /// Records why the worker stepped aside from jobs (`None`: it works on every job), for
    /// the next heartbeat.
    pub fn quarantine(&self, reason: Option<String>) {
        *self.quarantine.lock().unwrap_or_else(|p| p.into_inner()) = reason;
    }

    /// Why the worker stepped aside, as last recorded.
    pub fn quarantined(&self) -> Option<String> {
        self.quarantine
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// What the engine last reported.
    pub fn activity(&self) -> Activity {
        Activity {
            in_flight: self.in_flight.load(Ordering::Relaxed),
            chunks_moved: self.chunks_moved.load(Ordering::Relaxed),
            bytes_moved: self.bytes_moved.load(Ordering::Relaxed),
        }
    }
}

/// The rule of [`Lease::holds`]: a lease not fenced, renewed `since` ago, lasting `duration`,
/// holds while more than the margin (a tenth of it, at least [`MARGIN`]) is left.
pub fn holds_at(fenced: bool, since: Duration, duration: Duration) -> bool {
    let margin = (duration / 10).max(MARGIN);
    !fenced && since + margin < duration
}

/// One worker as the fleet's table records it.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct WorkerRecord {
    /// Its name (the host's, or `BLOBWAY_WORKER_NAME`).
    pub name: String,
    /// The host it runs on.
    pub host: String,
    /// Its process ID there.
    pub pid: i64,
    /// The blobway version it runs.
    pub version: String,
    /// Its fencing epoch (a new one each time it joins).
    pub epoch: i64,
    /// `running`, `quarantined` (running, but it stepped aside from jobs: its own
    /// credentials or network failed), `expired` (its lease ran out: its claims went back) or
    /// `left`.
    pub state: String,
    /// Why it stepped aside, while it is quarantined.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quarantine: Option<String>,
    /// When it joined (RFC 3339, the database's clock).
    pub started: String,
    /// Its last heartbeat (RFC 3339, the database's clock).
    pub heartbeat: String,
    /// Seconds since its last heartbeat, by the database's clock.
    pub heartbeat_age_s: f64,
    /// Chunks in flight at its last heartbeat.
    pub in_flight: i64,
    /// Chunks it moved since it joined.
    pub chunks_moved: i64,
    /// Bytes it moved since it joined.
    pub bytes_moved: i64,
    /// Objects it holds claimed now.
    pub claimed: i64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_fresh_lease_holds_and_a_lapsed_or_fenced_one_does_not() {
        let lease = Duration::from_secs(15);
        assert!(holds_at(false, Duration::ZERO, lease));
        assert!(holds_at(false, Duration::from_secs(13), lease));
        assert!(!holds_at(false, Duration::from_millis(13_600), lease));
        assert!(!holds_at(false, Duration::from_secs(60), lease));
        assert!(!holds_at(true, Duration::ZERO, lease));
    }

    #[test]
    fn a_renewal_never_moves_the_lease_back() {
        let start = Instant::now();
        let lease = Lease::new("w".into(), 1, Duration::from_secs(2), start);
        lease.renewed(start + Duration::from_millis(10));
        lease.renewed(start);
        assert_eq!(
            *lease.renewed.lock().unwrap_or_else(|p| p.into_inner()),
            start + Duration::from_millis(10)
        );
        lease.fence();
        assert!(!lease.holds());
    }

    proptest! {
        #[test]
        fn a_lease_holds_only_while_more_than_its_margin_is_left(
            since_ms in 0u64..120_000,
            lease_s in 2u64..120,
            fenced: bool,
        ) {
            let since = Duration::from_millis(since_ms);
            let duration = Duration::from_secs(lease_s);
            let holds = holds_at(fenced, since, duration);
            if holds {
                prop_assert!(!fenced);
                prop_assert!(since + Duration::from_secs(1) < duration);
            }
            if !fenced && since * 10 < duration * 8 && since + Duration::from_secs(1) < duration * 9 / 10 {
                prop_assert!(holds);
            }
        }
    }
}
