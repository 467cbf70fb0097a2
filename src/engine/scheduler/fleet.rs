//! What a worker of a shared state follows of the fleet: the concurrency and the bandwidth
//! cap an operator set on any worker (recorded as settings, read again when the state's count
//! of changes moves), and, every second, the workers themselves (for views) and its share of
//! an optional cap on the chunks in flight of the whole fleet (`BLOBWAY_FLEET_MAX_IN_FLIGHT`).

use super::*;
use crate::engine::control::ChosenConcurrency;

/// How often a worker reads the workers and its share of the fleet's cap again.
const READ_EVERY: Duration = Duration::from_secs(1);

/// How often a worker reads the jobs and settings again even when the count of changes did
/// not move.
pub(super) const FOLLOW_ANYWAY: Duration = Duration::from_secs(5);

/// The setting that holds the fleet's cap on chunks in flight (a number; absent: none).
pub(super) const FLEET_IN_FLIGHT: &str = "fleet_in_flight";

/// The settings as last read from the shared state: a value differing from these is a change
/// another worker (or this one) made, and is followed.
#[derive(Debug, Default)]
pub(super) struct SeenSettings {
    /// The state's count of changes of jobs and settings all of which this worker followed
    /// (none: to be read again).
    pub(super) changes: Option<u64>,
    /// When they were last all followed.
    pub(super) followed_at: Option<Instant>,
    /// When the workers were last read.
    pub(super) read_at: Option<Instant>,
    pub(super) concurrency: Option<String>,
    pub(super) bwlimit: Option<String>,
    /// This worker's share of the fleet's cap on chunks in flight, if there is one.
    pub(super) share: Option<u32>,
    /// The workers as last read, for views.
    pub(super) workers: Vec<crate::state::lease::WorkerRecord>,
}

/// This worker's share of a fleet cap of `cap` chunks in flight among `live` workers, for the
/// worker `rank`-th in name order: the cap split evenly, the remainder to the first ones, at
/// least one each (so the shares add up to the cap whenever it is not below the workers).
pub(super) fn fleet_share(cap: u32, live: usize, rank: usize) -> u32 {
    let live = u32::try_from(live.max(1)).unwrap_or(u32::MAX);
    let rank = u32::try_from(rank).unwrap_or(u32::MAX);
    let extra = u32::from(rank < cap % live);
    (cap / live + extra).max(1)
}

impl Scheduler {
    /// The settings as recorded when this engine starts: what it already obeys. A worker
    /// asked to cap the fleet records the cap.
    pub(super) fn start_following_settings(&mut self) {
        self.settings.concurrency = self.db.setting(ChosenConcurrency::SETTING).ok().flatten();
        self.settings.bwlimit = self.db.setting(BwLimit::SETTING).ok().flatten();
        if let Ok(asked) = std::env::var("BLOBWAY_FLEET_MAX_IN_FLIGHT") {
            let value = match asked.trim().parse::<u32>() {
                Ok(0) => String::new(),
                Ok(cap) => cap.to_string(),
                Err(_) => {
                    tracing::warn!(
                        "BLOBWAY_FLEET_MAX_IN_FLIGHT={asked} is not a number: the fleet's cap is \
                         left as it is"
                    );
                    return;
                }
            };
            self.persist(vec![Write::Setting(FLEET_IN_FLIGHT, value)], Vec::new());
        }
    }

    /// With a shared state, once a change is recorded: takes up a concurrency or bandwidth
    /// cap another worker recorded. False when a setting could not be read (it is left as it
    /// was, and read again at the next tick).
    pub(super) fn follow_settings(&mut self, now: Instant) -> bool {
        let Ok(concurrency) = self.db.setting(ChosenConcurrency::SETTING) else {
            return false;
        };
        if concurrency != self.settings.concurrency {
            self.settings.concurrency = concurrency.clone();
            // In adaptive mode each worker's limit is its own: only the mode is followed.
            let current = self.controller.chosen();
            if let Some(chosen) = concurrency
                .as_deref()
                .and_then(|v| serde_json::from_str::<ChosenConcurrency>(v).ok())
                .filter(|c| {
                    c.adaptive != current.adaptive || (!c.adaptive && c.limit != current.limit)
                })
            {
                self.controller.restore(chosen, now);
                let limit = self.controller.limit();
                let mode = if chosen.adaptive {
                    "adaptive"
                } else {
                    "manual"
                };
                // Recorded already: not written back (two workers would echo each other).
                self.apply_change_recorded(
                    Change {
                        limit,
                        decision: crate::engine::control::Decision::Operator,
                        reason: format!("{mode} at {limit}, as set on another worker"),
                    },
                    false,
                );
            }
        }
        let Ok(bwlimit) = self.db.setting(BwLimit::SETTING) else {
            return false;
        };
        if bwlimit != self.settings.bwlimit {
            self.settings.bwlimit = bwlimit.clone();
            if let Some(cap) = bwlimit
                .as_deref()
                .and_then(|v| BwLimit::parse(v).ok())
                .filter(|cap| cap.text() != self.bwlimit.text())
            {
                self.bwlimit = cap;
                self.follow_bwlimit(true);
            }
        }
        true
    }

    /// With a shared state, every [`READ_EVERY`]: the workers, for views, and this worker's
    /// share of the fleet's cap on chunks in flight as workers come and go.
    pub(super) fn follow_workers(&mut self, now: Instant, lease: &crate::state::lease::Lease) {
        if self
            .settings
            .read_at
            .is_some_and(|at| now.duration_since(at) < READ_EVERY)
        {
            return;
        }
        self.settings.read_at = Some(now);
        match self.db.workers() {
            Ok(workers) => self.settings.workers = workers.unwrap_or_default(),
            Err(e) => tracing::debug!("cannot read the workers: {e}"),
        }
        let Ok(share) = self.fleet_share_now(lease) else {
            return;
        };
        if share != self.settings.share {
            self.settings.share = share;
            self.gate.set_limit(self.capped(self.controller.limit()));
            if let Some(share) = share {
                tracing::info!("this worker's share of the fleet's cap: {share} chunks in flight");
            }
        }
    }

    /// This worker's share of the fleet's cap, if one is recorded (an error: it cannot be
    /// read now).
    fn fleet_share_now(
        &self,
        lease: &crate::state::lease::Lease,
    ) -> Result<Option<u32>, crate::state::StateError> {
        let Some(cap) = self
            .db
            .setting(FLEET_IN_FLIGHT)?
            .and_then(|v| v.parse::<u32>().ok())
            .filter(|cap| *cap > 0)
        else {
            return Ok(None);
        };
        let mut live: Vec<String> = self
            .settings
            .workers
            .iter()
            .filter(|w| w.state == "running" || w.state == "quarantined")
            .map(|w| w.name.clone())
            .collect();
        if !live.contains(&lease.name) {
            live.push(lease.name.clone());
        }
        live.sort();
        let rank = live.iter().position(|n| *n == lease.name).unwrap_or(0);
        Ok(Some(fleet_share(cap, live.len(), rank)))
    }

    /// A concurrency `limit` under this worker's share of the fleet's cap.
    pub(super) fn capped(&self, limit: u32) -> u32 {
        self.settings.share.map_or(limit, |share| limit.min(share))
    }
}

#[cfg(test)]
mod tests {
    use super::fleet_share;
    use proptest::prelude::*;

    #[test]
    fn a_cap_is_split_evenly_with_the_remainder_to_the_first() {
        let shares: Vec<u32> = (0..3).map(|rank| fleet_share(32, 3, rank)).collect();
        assert_eq!(shares, vec![11, 11, 10]);
        assert_eq!(fleet_share(2, 3, 2), 1, "every worker keeps one slot");
        assert_eq!(fleet_share(8, 0, 0), 8, "alone when nobody is listed");
    }

    proptest! {
        #[test]
        fn the_shares_add_up_to_the_cap_and_differ_by_one_at_most(cap in 1u32..10_000, live in 1usize..50) {
            let shares: Vec<u32> = (0..live).map(|rank| fleet_share(cap, live, rank)).collect();
            let (min, max) = (shares.iter().copied().min().unwrap_or(0), shares.iter().copied().max().unwrap_or(0));
            prop_assert!(max - min <= 1);
            prop_assert!(min >= 1);
            if cap as usize >= live {
                prop_assert_eq!(shares.iter().sum::<u32>(), cap);
            }
        }
    }
}
