//! Adaptive concurrency: how many units of work the gate admits. Over a sliding window of
//! chunk outcomes — an error rate above 10% halves the limit; any throttling answer (429, 503
//! SlowDown/ServerBusy) halves it at once, at most once per cool-down; no errors and a cost per
//! MiB not worse than the recent best by a margin, while the limit is actually used, raises it
//! by two. Bounded by [min, max]. The operator can switch to manual and set the value. Every
//! change comes with its [`Decision`] and a reason, so a graph can show why it moved.
//!
//! Pure logic over [`tokio::time::Instant`], so tests drive it with paused time.

use std::collections::VecDeque;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::store::ErrorClass;

/// Why the limit changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// The store answered "slow down": halved at once.
    ThrottleCut,
    /// Too many errors in the window: halved.
    ErrorCut,
    /// The stores keep up: raised.
    Increase,
    /// The operator set it.
    Operator,
}

/// A change of the limit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// The new limit.
    pub limit: u32,
    /// Why.
    pub decision: Decision,
    /// Why, in words.
    pub reason: String,
}

/// Tuning of the controller.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ControllerConfig {
    /// Limit at start.
    pub initial: u32,
    /// Never below.
    pub min: u32,
    /// Never above.
    pub max: u32,
    /// Outcomes older than this are forgotten.
    pub window: Duration,
    /// At most one cut per cool-down.
    pub cooldown: Duration,
    /// How often the window is judged.
    pub interval: Duration,
    /// How much worse than the best recent cost per MiB still counts as "keeping up".
    pub margin: f64,
    /// How long a best cost is remembered.
    pub best_memory: Duration,
    /// Outcomes a window needs before it is judged.
    pub min_samples: usize,
    /// How much an increase adds.
    pub step: u32,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        Self {
            initial: 16,
            min: 2,
            max: 64,
            window: Duration::from_secs(5),
            cooldown: Duration::from_secs(3),
            interval: Duration::from_secs(1),
            margin: 1.5,
            best_memory: Duration::from_secs(60),
            min_samples: 4,
            step: 2,
        }
    }
}

/// The outcome of one chunk, as the controller sees it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Outcome {
    /// Bytes moved (0 on failure).
    pub bytes: u64,
    /// How long it took.
    pub latency: Duration,
    /// The error class, if it failed.
    pub error: Option<ErrorClass>,
}

#[derive(Clone, Copy, Debug)]
struct Sample {
    at: Instant,
    failed: bool,
    /// Milliseconds per MiB (small chunks count as one MiB).
    cost: f64,
}

/// The concurrency controller.
#[derive(Clone, Debug)]
pub struct Controller {
    config: ControllerConfig,
    limit: u32,
    adaptive: bool,
    samples: VecDeque<Sample>,
    last_cut: Option<Instant>,
    last_judged: Instant,
    best: Option<(f64, Instant)>,
}

/// The concurrency the operator last chose, kept in the state file so a restarted engine
/// (a daemon after a reboot) keeps it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChosenConcurrency {
    /// The limit when manual.
    pub limit: u32,
    /// True when the adaptive controller decides.
    pub adaptive: bool,
}

impl ChosenConcurrency {
    /// The name it is recorded under.
    pub const SETTING: &'static str = "concurrency";
}

impl Controller {
    /// What the operator's choice is, to record.
    pub fn chosen(&self) -> ChosenConcurrency {
        ChosenConcurrency {
            limit: self.limit,
            adaptive: self.adaptive,
        }
    }

    /// Takes up a choice recorded in an earlier run.
    pub fn restore(&mut self, chosen: ChosenConcurrency, now: Instant) {
        if chosen.adaptive {
            self.set_adaptive(true, now);
        } else {
            self.set_manual(chosen.limit);
        }
    }

    /// A controller starting at `config.initial`, adaptive or fixed.
    pub fn new(config: ControllerConfig, adaptive: bool, now: Instant) -> Self {
        let limit = config.initial.clamp(config.min.max(1), config.max.max(1));
        Self {
            config,
            limit,
            adaptive,
            samples: VecDeque::new(),
            last_cut: None,
            last_judged: now,
            best: None,
        }
    }

    /// The current limit.
    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// True when the controller moves the limit itself.
    pub fn adaptive(&self) -> bool {
        self.adaptive
    }

    /// Switches between adaptive and manual; the limit stays where it is.
    pub fn set_adaptive(&mut self, adaptive: bool, now: Instant) {
        self.adaptive = adaptive;
        self.samples.clear();
        self.last_judged = now;
    }

    /// The operator sets the limit: the controller goes manual.
    pub fn set_manual(&mut self, limit: u32) -> Change {
        self.adaptive = false;
        self.limit = limit.clamp(1, 4096);
        Change {
            limit: self.limit,
            decision: Decision::Operator,
            reason: format!("set to {} by the operator (manual)", self.limit),
        }
    }

    /// Records one chunk's outcome; a throttling answer may cut the limit at once.
    pub fn observe(&mut self, now: Instant, outcome: Outcome) -> Option<Change> {
        if !self.adaptive {
            // Nothing judges them in manual mode: keep none (a multi-day copy sees millions).
            return None;
        }
        let mib = (outcome.bytes as f64 / f64::from(1u32 << 20)).max(1.0);
        self.samples.push_back(Sample {
            at: now,
            failed: outcome.error.is_some(),
            cost: outcome.latency.as_secs_f64() * 1000.0 / mib,
        });
        if outcome.error == Some(ErrorClass::Throttled) && self.adaptive && self.may_cut(now) {
            return self.cut(
                now,
                Decision::ThrottleCut,
                "the store is throttling (429/503)".into(),
            );
        }
        None
    }

    /// Judges the window once per interval; `in_flight` says whether the limit is used.
    pub fn tick(&mut self, now: Instant, in_flight: u32) -> Option<Change> {
        if !self.adaptive || now.duration_since(self.last_judged) < self.config.interval {
            return None;
        }
        self.last_judged = now;
        while self
            .samples
            .front()
            .is_some_and(|s| now.duration_since(s.at) > self.config.window)
        {
            self.samples.pop_front();
        }
        if self.samples.len() < self.config.min_samples {
            return None;
        }
        let failed = self.samples.iter().filter(|s| s.failed).count();
        let error_rate = failed as f64 / self.samples.len() as f64;
        if error_rate > 0.10 {
            if self.may_cut(now) {
                return self.cut(
                    now,
                    Decision::ErrorCut,
                    format!("{:.0}% of recent chunks failed", error_rate * 100.0),
                );
            }
            return None;
        }
        if failed > 0 {
            return None;
        }
        let mut costs: Vec<f64> = self.samples.iter().map(|s| s.cost).collect();
        costs.sort_by(f64::total_cmp);
        let median = costs[costs.len() / 2];
        let best = match self.best {
            Some((best, at))
                if now.duration_since(at) <= self.config.best_memory && best <= median =>
            {
                best
            }
            _ => {
                self.best = Some((median, now));
                median
            }
        };
        let used = in_flight + 1 >= self.limit;
        if used && median <= best * self.config.margin && self.limit < self.config.max {
            self.limit = (self.limit + self.config.step).min(self.config.max);
            return Some(Change {
                limit: self.limit,
                decision: Decision::Increase,
                reason: format!(
                    "no errors, {median:.0} ms/MiB against a best of {best:.0}: raised to {}",
                    self.limit
                ),
            });
        }
        None
    }

    fn may_cut(&self, now: Instant) -> bool {
        self.last_cut
            .is_none_or(|at| now.duration_since(at) >= self.config.cooldown)
    }

    fn cut(&mut self, now: Instant, decision: Decision, why: String) -> Option<Change> {
        let halved = (self.limit / 2).max(self.config.min.max(1));
        self.last_cut = Some(now);
        self.samples.clear();
        if halved == self.limit {
            return None;
        }
        self.limit = halved;
        Some(Change {
            limit: halved,
            decision,
            reason: format!("{why}: halved to {halved}"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(ms: u64) -> Outcome {
        Outcome {
            bytes: 8 << 20,
            latency: Duration::from_millis(ms),
            error: None,
        }
    }

    fn failed(class: ErrorClass) -> Outcome {
        Outcome {
            bytes: 0,
            latency: Duration::from_millis(50),
            error: Some(class),
        }
    }

    fn controller() -> Controller {
        Controller::new(ControllerConfig::default(), true, Instant::now())
    }

    #[tokio::test(start_paused = true)]
    async fn raises_while_the_stores_keep_up() {
        let mut c = controller();
        assert_eq!(c.limit(), 16);
        for _ in 0..5 {
            for _ in 0..10 {
                c.observe(Instant::now(), ok(400));
            }
            tokio::time::advance(Duration::from_secs(1)).await;
            let change = c.tick(Instant::now(), c.limit()).expect("raised");
            assert_eq!(change.decision, Decision::Increase);
        }
        assert_eq!(c.limit(), 26);
    }

    #[tokio::test(start_paused = true)]
    async fn does_not_raise_an_unused_limit_or_a_slowing_store() {
        let mut c = controller();
        for _ in 0..10 {
            c.observe(Instant::now(), ok(400));
        }
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(c.tick(Instant::now(), 3), None, "only 3 of 16 in use");
        for _ in 0..10 {
            c.observe(Instant::now(), ok(2000));
        }
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(
            c.tick(Instant::now(), 16),
            None,
            "cost per MiB far above the best"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_throttle_halves_at_once_but_once_per_cooldown() {
        let mut c = controller();
        let first = c
            .observe(Instant::now(), failed(ErrorClass::Throttled))
            .expect("cut");
        assert_eq!((first.limit, first.decision), (8, Decision::ThrottleCut));
        assert_eq!(
            c.observe(Instant::now(), failed(ErrorClass::Throttled)),
            None
        );
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(
            c.observe(Instant::now(), failed(ErrorClass::Throttled))
                .map(|c| c.limit),
            Some(4)
        );
        for _ in 0..5 {
            tokio::time::advance(Duration::from_secs(3)).await;
            c.observe(Instant::now(), failed(ErrorClass::Throttled));
        }
        assert_eq!(c.limit(), 2, "never below the minimum");
    }

    #[tokio::test(start_paused = true)]
    async fn an_error_rate_over_ten_percent_halves() {
        let mut c = controller();
        for i in 0..20 {
            let outcome = if i % 5 == 0 {
                failed(ErrorClass::Transient)
            } else {
                ok(300)
            };
            c.observe(Instant::now(), outcome);
        }
        tokio::time::advance(Duration::from_secs(1)).await;
        let change = c.tick(Instant::now(), 16).expect("cut");
        assert_eq!((change.limit, change.decision), (8, Decision::ErrorCut));
        assert!(change.reason.contains("20%"), "{}", change.reason);
    }

    #[tokio::test(start_paused = true)]
    async fn old_outcomes_leave_the_window() {
        let mut c = controller();
        for _ in 0..3 {
            c.observe(Instant::now(), failed(ErrorClass::Transient));
        }
        tokio::time::advance(Duration::from_secs(10)).await;
        for _ in 0..10 {
            c.observe(Instant::now(), ok(300));
        }
        let change = c
            .tick(Instant::now(), 16)
            .expect("the old errors are forgotten");
        assert_eq!(change.decision, Decision::Increase);
    }

    #[tokio::test(start_paused = true)]
    async fn manual_mode_holds_still() {
        let mut c = controller();
        let change = c.set_manual(5);
        assert_eq!((change.limit, change.decision), (5, Decision::Operator));
        assert!(!c.adaptive());
        assert_eq!(
            c.observe(Instant::now(), failed(ErrorClass::Throttled)),
            None
        );
        for _ in 0..10 {
            c.observe(Instant::now(), ok(100));
        }
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(c.tick(Instant::now(), 5), None);
        assert_eq!(c.limit(), 5);
        c.set_adaptive(true, Instant::now());
        assert!(c.adaptive());
    }

    #[tokio::test(start_paused = true)]
    async fn manual_mode_keeps_no_samples() {
        // A multi-day copy at a manual limit observes millions of chunks: none is kept.
        let mut c = controller();
        c.set_manual(8);
        for _ in 0..100_000 {
            c.observe(Instant::now(), ok(10));
        }
        assert_eq!(c.samples.len(), 0, "samples kept in manual mode");
    }
}
