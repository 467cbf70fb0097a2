//! Adaptive concurrency: how many units of work the gate admits, tracking the knee — the
//! smallest limit that still gets the stores' full throughput. Past the knee more work in
//! flight only lengthens the queue: latency grows, throughput does not.
//!
//! The design follows Netflix's Gradient2 (`concurrency-limits`) for the knee and BBR for the
//! baseline, with AIMD kept for errors:
//! - Decisions are taken per epoch of completions (as many as the limit, at least
//!   `min_samples`), not per second: big chunks give few samples.
//! - The no-load cost (milliseconds per MiB, the median of an epoch) is the lowest recently
//!   seen. Each epoch moves the limit to `limit × gradient + √limit / 2`, where `gradient` is
//!   no-load cost over current cost (1 within a 10% tolerance, at least ½). While the stores
//!   keep up the gradient is 1 and the limit climbs by the queue allowance; past the knee the
//!   cost grows with the limit and the gradient pulls it back near the knee.
//! - Until an epoch first shows a queue the limit doubles (BBR's and TCP's start-up): a far
//!   store whose knee is high is reached in a few epochs, not dozens.
//! - The no-load cost is measured (BBR's ProbeRTT) at the start and again when a queue has
//!   been seen for `best_memory` without a break: one epoch at the least limit, then back.
//!   Otherwise it would drift with the stores (a slower store looks like a queue for ever).
//!   An epoch without a queue shows the no-load cost again, so a link kept below its knee is
//!   never measured twice. Only chunks started since the limit last changed judge it.
//! - An error rate above 10% in an epoch halves the limit. A throttling answer (429, 503
//!   SlowDown/ServerBusy) halves it at once, at most once per cool-down. The limit it was cut
//!   from is remembered (CUBIC's W_max): the limit climbs back halfway to just below it each
//!   epoch and holds there for `best_memory`, twice as long each time the same limit is
//!   refused again, instead of climbing into the throttle again and again.
//!
//! Bounded by [min, max]. The operator can switch to manual and set the value. Every change
//! comes with its [`Decision`] and a reason, so a graph can show why it moved. Pure logic over
//! [`tokio::time::Instant`], so tests drive it with paused time.

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
    /// Latency grew without throughput (a queue past the knee): lowered toward the knee.
    Ease,
    /// The no-load latency is re-measured at a lower limit, or the limit is back from it.
    Probe,
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
    /// An epoch is judged with what it has after this long, if it has `min_samples`.
    pub window: Duration,
    /// At most one cut per cool-down.
    pub cooldown: Duration,
    /// Epochs are judged at most this often.
    pub interval: Duration,
    /// How much worse than the no-load cost per MiB still counts as no queue.
    pub margin: f64,
    /// How long a queue may last before the no-load cost is re-measured (at least 40 times
    /// the last measurement's length), and how long a refused limit is held below at first.
    pub best_memory: Duration,
    /// Outcomes an epoch needs at least (it needs as many as the limit otherwise).
    pub min_samples: usize,
    /// The least an increase adds.
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
            margin: 1.1,
            best_memory: Duration::from_secs(60),
            min_samples: 4,
            step: 1,
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
    /// When the chunk started: a chunk started before the limit last changed says nothing
    /// of the new limit.
    started: Instant,
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
    /// The outcomes of the epoch under way.
    samples: VecDeque<Sample>,
    last_cut: Option<Instant>,
    last_judged: Instant,
    /// The no-load cost per MiB, and when it was measured or last seen again.
    best: Option<(f64, Instant)>,
    /// The medians of the latest epochs without a queue: the no-load cost is their least
    /// (never more than the margin above the last measured one), so one lucky epoch does not
    /// set it for ever and epochs near the knee do not raise it step by step.
    quiet: VecDeque<f64>,
    /// The last no-load cost measured at the least limit.
    measured: f64,
    /// While the no-load cost is re-measured: the limit to go back to.
    probing: Option<u32>,
    /// When the limit last changed (none before the first change).
    changed_at: Option<Instant>,
    /// True until an epoch shows a clear queue or the limit is cut: the limit doubles.
    starting: bool,
    /// How long the last measurement of the no-load cost took.
    probe_took: Duration,
    /// The limit last cut from (throttles, errors), when, and for how long it is kept.
    ceiling: Option<Ceiling>,
}

/// A limit the stores refused (a throttle or errors cut the limit from it).
#[derive(Clone, Copy, Debug)]
struct Ceiling {
    limit: u32,
    at: Instant,
    /// How long it is kept: `best_memory`, twice as long each time the stores refuse the
    /// same limit again (up to 16 times).
    memory: Duration,
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
            quiet: VecDeque::new(),
            measured: f64::INFINITY,
            probing: None,
            changed_at: None,
            starting: true,
            probe_took: Duration::ZERO,
            ceiling: None,
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
        // A measurement under way is abandoned with the limit it left.
        if let Some(back) = self.probing.take() {
            self.limit = back;
        }
        self.adaptive = adaptive;
        self.samples.clear();
        self.last_judged = now;
        self.changed_at = Some(now);
    }

    /// The operator sets the limit: the controller goes manual.
    pub fn set_manual(&mut self, limit: u32) -> Change {
        self.adaptive = false;
        self.probing = None;
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
            started: now.checked_sub(outcome.latency).unwrap_or(now),
            failed: outcome.error.is_some(),
            cost: outcome.latency.as_secs_f64() * 1000.0 / mib,
        });
        // A refusal of a chunk started before the last cut was already answered by it.
        let answered = self
            .last_cut
            .is_some_and(|cut| now.checked_sub(outcome.latency).unwrap_or(now) < cut);
        if outcome.error == Some(ErrorClass::Throttled) && !answered && self.may_cut(now) {
            return self.cut(
                now,
                Decision::ThrottleCut,
                "the store is throttling (429/503)".into(),
            );
        }
        None
    }

    /// Judges the epoch once it is complete; `in_flight` says whether the limit is used.
    pub fn tick(&mut self, now: Instant, in_flight: u32) -> Option<Change> {
        if !self.adaptive || now.duration_since(self.last_judged) < self.config.interval {
            return None;
        }
        // Only chunks started at the current limit judge it; outcomes from long ago (a
        // stall, a pause) say nothing of the stores now — long ago for its own length (slow
        // chunks under a low bandwidth cap still make epochs).
        let horizon = self.config.window * 4;
        let changed_at = self.changed_at;
        self.samples.retain(|s| {
            let length = s.at.duration_since(s.started);
            changed_at.is_none_or(|at| s.started >= at)
                && now.duration_since(s.at) <= horizon + length * 4
        });
        let wanted = self.config.min_samples.max(self.limit as usize);
        let waited = self
            .samples
            .front()
            .is_some_and(|s| now.duration_since(s.at) >= self.config.window);
        if self.samples.len() < self.config.min_samples || (self.samples.len() < wanted && !waited)
        {
            return None;
        }
        self.last_judged = now;
        let epoch: Vec<Sample> = self.samples.drain(..).collect();
        let failed = epoch.iter().filter(|s| s.failed).count();
        let error_rate = failed as f64 / epoch.len() as f64;
        if failed > 0
            && let Some(back) = self.probing.take()
        {
            // The measurement met errors: abandoned, not a reason to cut; tried again later.
            self.limit = back;
            self.changed_at = Some(now);
            return Some(Change {
                limit: back,
                decision: Decision::Probe,
                reason: format!("the no-load measurement met errors: back to {back}"),
            });
        }
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
        let mut costs: Vec<f64> = epoch.iter().map(|s| s.cost).collect();
        costs.sort_by(f64::total_cmp);
        let median = costs[costs.len() / 2];
        if let Some(back) = self.probing.take() {
            self.best = Some((median, now));
            self.measured = median;
            self.quiet.clear();
            self.remember_quiet(median);
            self.probe_took = self
                .changed_at
                .map_or(Duration::ZERO, |at| now.duration_since(at));
            self.limit = back;
            self.changed_at = Some(now);
            return Some(Change {
                limit: back,
                decision: Decision::Probe,
                reason: format!(
                    "no-load latency re-measured at {median:.0} ms/MiB: back to {back}"
                ),
            });
        }
        // A measurement costs an epoch at the least limit: it is repeated no more often than
        // forty times its length (long chunks make long epochs).
        let memory = self.config.best_memory.max(self.probe_took * 40);
        let least = self.limit <= self.config.min.max(1);
        let best = match self.best {
            // At the least limit every epoch is a measurement.
            Some(_) if least => {
                self.best = Some((median, now));
                self.measured = median;
                self.quiet.clear();
                self.remember_quiet(median);
                median
            }
            Some((best, at)) if now.duration_since(at) <= memory => {
                if median <= best * self.config.margin {
                    // No queue now: the no-load cost is seen again, and needs no measuring.
                    self.remember_quiet(median);
                    let most = self.measured * self.config.margin;
                    let floor = self.quiet.iter().copied().fold(most, f64::min);
                    self.best = Some((floor, now));
                    floor
                } else {
                    best
                }
            }
            // Never measured, or measured long ago (perhaps with the very queue it is to be
            // measured against): measured at the least limit, for one short epoch.
            _ if self.limit > self.config.min.max(1) => {
                let lower = self.config.min.max(1);
                self.probing = Some(self.limit);
                self.limit = lower;
                self.changed_at = Some(now);
                return Some(Change {
                    limit: lower,
                    decision: Decision::Probe,
                    reason: format!("measuring the no-load latency at {lower}"),
                });
            }
            _ => {
                self.best = Some((median, now));
                self.measured = median;
                self.quiet.clear();
                self.remember_quiet(median);
                median
            }
        };
        self.starting &= median <= best * STARTING_MARGIN;
        let mut target = knee_target(self.limit, best, median, self.config.margin);
        let mut why = "";
        if self.starting {
            target = target.max(self.limit.saturating_mul(2));
            why = ", no queue yet: doubled";
        }
        let ceiling = self
            .ceiling
            .filter(|c| now.duration_since(c.at) <= c.memory)
            .map(|c| c.limit);
        if let Some(ceiling) = ceiling {
            let below = ceiling.saturating_sub(1).max(self.config.min.max(1));
            if self.limit < below {
                if target > self.limit {
                    target = target.max((self.limit + below).div_ceil(2)).min(below);
                    why = ", back toward where it was cut";
                }
            } else {
                target = target.min(self.limit);
            }
        }
        let target = target.clamp(self.config.min.max(1), self.config.max.max(1));
        let used = in_flight + 1 >= self.limit;
        if target > self.limit && used {
            let raised = target.max(self.limit + self.config.step);
            let raised = match ceiling {
                Some(ceiling) => raised.min(ceiling.saturating_sub(1).max(self.limit + 1)),
                None => raised,
            };
            self.limit = raised.min(self.config.max);
            self.changed_at = Some(now);
            return Some(Change {
                limit: self.limit,
                decision: Decision::Increase,
                reason: format!(
                    "no errors, {median:.0} ms/MiB against a no-load {best:.0}{why}: raised to {}",
                    self.limit
                ),
            });
        }
        if target < self.limit {
            self.limit = target;
            self.changed_at = Some(now);
            return Some(Change {
                limit: target,
                decision: Decision::Ease,
                reason: format!(
                    "{median:.0} ms/MiB against a no-load {best:.0}, a queue without more \
                     throughput: eased to {target}"
                ),
            });
        }
        None
    }

    fn remember_quiet(&mut self, median: f64) {
        self.quiet.push_back(median);
        while self.quiet.len() > QUIET_EPOCHS {
            self.quiet.pop_front();
        }
    }

    /// Nothing is judged while something else holds the work back (a bandwidth cap admits
    /// fewer chunks than the limit): what finishes meanwhile is forgotten, and so are chunks
    /// started before now.
    pub fn hold(&mut self, now: Instant) {
        self.samples.clear();
        self.last_judged = now;
        self.changed_at = Some(now);
    }

    fn may_cut(&self, now: Instant) -> bool {
        self.last_cut
            .is_none_or(|at| now.duration_since(at) >= self.config.cooldown)
    }

    fn cut(&mut self, now: Instant, decision: Decision, why: String) -> Option<Change> {
        // A cut during a probe cuts what the probe would have gone back to.
        if let Some(back) = self.probing.take() {
            self.limit = back;
        }
        let halved = (self.limit / 2).max(self.config.min.max(1));
        self.last_cut = Some(now);
        self.starting = false;
        // Refused again at or below a limit refused before (still remembered, or only just
        // forgotten): the lower of the two is kept, twice as long.
        let (limit, memory) = match self.ceiling {
            Some(c) if self.limit <= c.limit && now.duration_since(c.at) <= c.memory * 2 => (
                self.limit.min(c.limit),
                (c.memory * 2).min(self.config.best_memory * 16),
            ),
            _ => (self.limit, self.config.best_memory),
        };
        self.ceiling = Some(Ceiling {
            limit,
            at: now,
            memory,
        });
        self.samples.clear();
        if halved == self.limit {
            return None;
        }
        self.limit = halved;
        self.changed_at = Some(now);
        Some(Change {
            limit: halved,
            decision,
            reason: format!("{why}: halved to {halved}"),
        })
    }
}

/// How many epochs without a queue the no-load cost is the least of.
const QUIET_EPOCHS: usize = 8;

/// How much worse than the no-load cost ends the start-up: more than the margin, as an epoch
/// at twice the limit may measure the no-load cost's noise.
const STARTING_MARGIN: f64 = 1.25;

/// Gradient2's new limit: `limit × gradient + √limit / 2`, the gradient being the no-load cost
/// `best` over the current `median` (1 while within `margin` of it, never below ½).
pub fn knee_target(limit: u32, best: f64, median: f64, margin: f64) -> u32 {
    let gradient = if median <= 0.0 {
        1.0
    } else {
        (margin * best / median).clamp(0.5, 1.0)
    };
    let queue = (f64::from(limit).sqrt() / 2.0).max(1.0);
    (f64::from(limit) * gradient + queue).floor() as u32
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

    /// One epoch: as many outcomes as the limit (at least 4), then a judgement a second later.
    async fn epoch(c: &mut Controller, outcome: Outcome) -> Option<Change> {
        // The chunks start at this limit and end a latency later.
        tokio::time::advance(outcome.latency).await;
        for _ in 0..c.limit().max(4) {
            c.observe(Instant::now(), outcome);
        }
        tokio::time::advance(Duration::from_secs(1)).await;
        c.tick(Instant::now(), c.limit())
    }

    #[tokio::test(start_paused = true)]
    async fn doubles_until_a_queue_then_climbs_by_the_queue_allowance() {
        let mut c = controller();
        assert_eq!(c.limit(), 16);
        let probe = epoch(&mut c, ok(400)).await.expect("measured first");
        assert_eq!((probe.decision, probe.limit), (Decision::Probe, 2));
        let back = epoch(&mut c, ok(400)).await.expect("back");
        assert_eq!((back.decision, back.limit), (Decision::Probe, 16));
        let doubled = epoch(&mut c, ok(400)).await.expect("doubled");
        assert_eq!((doubled.decision, doubled.limit), (Decision::Increase, 32));
        // Half as fast again per MiB: a queue. 32 × 1.1 × 50 / 75 + √32 / 2.
        let eased = epoch(&mut c, ok(600)).await.expect("eased");
        assert_eq!((eased.decision, eased.limit), (Decision::Ease, 26));
        let raised = epoch(&mut c, ok(400)).await.expect("raised");
        assert_eq!(
            (raised.decision, raised.limit),
            (Decision::Increase, 28),
            "the start-up is over: by √limit / 2"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_start_up_stops_at_the_maximum() {
        let mut c = controller();
        epoch(&mut c, ok(400)).await.expect("probe");
        epoch(&mut c, ok(400)).await.expect("back");
        epoch(&mut c, ok(400)).await.expect("32");
        let top = epoch(&mut c, ok(400)).await.expect("64");
        assert_eq!(top.limit, 64);
        assert_eq!(epoch(&mut c, ok(400)).await, None, "at the maximum");
    }

    #[tokio::test(start_paused = true)]
    async fn after_a_throttle_it_climbs_back_below_that_limit_and_holds_there() {
        let mut c = controller();
        epoch(&mut c, ok(400)).await.expect("probe");
        epoch(&mut c, ok(400)).await.expect("back");
        let cut = c
            .observe(Instant::now(), failed(ErrorClass::Throttled))
            .expect("cut");
        assert_eq!(cut.limit, 8);
        let mut climbed = Vec::new();
        for _ in 0..6 {
            climbed.extend(epoch(&mut c, ok(400)).await.map(|c| c.limit));
        }
        assert_eq!(
            climbed,
            [12, 14, 15],
            "halfway to below 16 each epoch, then held"
        );
        // Once the refusal is a minute old, the limit may try 16 again; refused again, the
        // same limit is kept twice as long.
        tokio::time::advance(Duration::from_secs(55)).await;
        let tried = epoch(&mut c, ok(400)).await.expect("tried again");
        assert_eq!((tried.decision, tried.limit), (Decision::Increase, 16));
        c.observe(Instant::now(), failed(ErrorClass::Throttled))
            .expect("cut again");
        let cut_at = Instant::now();
        for _ in 0..3 {
            epoch(&mut c, ok(400)).await;
        }
        assert_eq!(c.limit(), 15);
        while c.limit() == 15 {
            epoch(&mut c, ok(400)).await;
        }
        let held = cut_at.elapsed();
        assert!(
            (120..125).contains(&held.as_secs()),
            "held for two minutes now: {held:?}"
        );
        assert_eq!(c.limit(), 16);
    }

    #[tokio::test(start_paused = true)]
    async fn the_climb_back_after_a_cut_still_eases_a_queue() {
        let mut c = controller();
        epoch(&mut c, ok(400)).await.expect("probe");
        epoch(&mut c, ok(400)).await.expect("back");
        c.observe(Instant::now(), failed(ErrorClass::Throttled))
            .expect("cut to 8");
        // Twice the no-load cost at 8: a queue, though below where it was cut.
        let eased = epoch(&mut c, ok(800)).await.expect("eased");
        assert_eq!((eased.decision, eased.limit), (Decision::Ease, 5));
    }

    #[tokio::test(start_paused = true)]
    async fn refused_again_at_a_lower_limit_is_held_below_that_twice_as_long() {
        let mut c = controller();
        epoch(&mut c, ok(400)).await.expect("probe");
        epoch(&mut c, ok(400)).await.expect("back");
        c.observe(Instant::now(), failed(ErrorClass::Throttled))
            .expect("cut from 16");
        while c.limit() < 15 {
            epoch(&mut c, ok(400)).await;
        }
        tokio::time::advance(Duration::from_secs(4)).await;
        c.observe(Instant::now(), failed(ErrorClass::Throttled))
            .expect("cut from 15");
        let cut_at = Instant::now();
        while c.limit() < 14 {
            epoch(&mut c, ok(400)).await;
        }
        while c.limit() == 14 {
            epoch(&mut c, ok(400)).await;
        }
        let held = cut_at.elapsed().as_secs();
        assert!((120..125).contains(&held), "held below 15 for {held} s");
    }

    #[tokio::test(start_paused = true)]
    async fn a_refusal_of_a_chunk_started_before_the_last_cut_cuts_no_more() {
        let mut c = controller();
        epoch(&mut c, ok(400)).await.expect("probe");
        epoch(&mut c, ok(400)).await.expect("back");
        c.observe(Instant::now(), failed(ErrorClass::Throttled))
            .expect("cut");
        tokio::time::advance(Duration::from_secs(4)).await;
        // Started 5 s ago, before the cut: already answered.
        let late = Outcome {
            bytes: 0,
            latency: Duration::from_secs(5),
            error: Some(ErrorClass::Throttled),
        };
        assert_eq!(c.observe(Instant::now(), late), None);
        assert_eq!(c.limit(), 8);
        let fresh = c
            .observe(Instant::now(), failed(ErrorClass::Throttled))
            .expect("a new refusal");
        assert_eq!(fresh.limit, 4);
    }

    #[tokio::test(start_paused = true)]
    async fn quiet_epochs_near_the_no_load_cost_do_not_raise_it() {
        let mut c = controller();
        epoch(&mut c, ok(400)).await.expect("probe");
        epoch(&mut c, ok(400)).await.expect("back");
        // 8% worse than measured, epoch after epoch: no queue; then 8% worse than that.
        for cost in [432, 466] {
            for _ in 0..12 {
                epoch(&mut c, ok(cost)).await;
            }
        }
        let best = c.best.map(|(b, _)| b).expect("best");
        assert!(
            best <= 55.0 + 1e-9,
            "{best}: within the margin of the 50 measured"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn held_back_by_something_else_nothing_is_judged() {
        let mut c = controller();
        epoch(&mut c, ok(400)).await.expect("probe");
        epoch(&mut c, ok(400)).await.expect("back");
        for _ in 0..16 {
            c.observe(Instant::now(), ok(4000));
        }
        tokio::time::advance(Duration::from_secs(1)).await;
        c.hold(Instant::now());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(
            c.tick(Instant::now(), 16),
            None,
            "what finished while held is forgotten"
        );
        assert_eq!(c.limit(), 16);
    }

    #[tokio::test(start_paused = true)]
    async fn at_the_least_limit_every_epoch_measures_the_no_load_cost() {
        // The stores became slower: what looks like a queue eases the limit to the least,
        // where the new no-load cost is measured without waiting for the old one to expire.
        let mut c = controller();
        epoch(&mut c, ok(400)).await.expect("probe");
        epoch(&mut c, ok(400)).await.expect("back");
        for _ in 0..5 {
            epoch(&mut c, ok(1600)).await;
        }
        assert_eq!(c.limit(), 2, "eased to the least");
        let raised = epoch(&mut c, ok(1600)).await.expect("raised");
        assert_eq!(c.best.map(|(b, _)| b), Some(200.0), "1600 ms for 8 MiB");
        assert_eq!((raised.decision, raised.limit), (Decision::Increase, 3));
    }

    #[tokio::test(start_paused = true)]
    async fn an_epoch_is_as_many_completions_as_the_limit() {
        let mut c = controller();
        for _ in 0..10 {
            c.observe(Instant::now(), ok(400));
        }
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(c.tick(Instant::now(), 16), None, "10 of 16 completions");
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(
            c.tick(Instant::now(), 16).is_some(),
            "judged after the window"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_measurement_left_or_met_by_errors_goes_back_to_its_limit() {
        let mut c = controller();
        epoch(&mut c, ok(400)).await.expect("probe");
        assert_eq!(c.limit(), 2);
        c.set_adaptive(false, Instant::now());
        assert_eq!(
            c.limit(),
            16,
            "manual keeps the level, not the measurement's"
        );
        c.set_adaptive(true, Instant::now());
        epoch(&mut c, ok(400)).await.expect("probe");
        let back = epoch(&mut c, failed(ErrorClass::Transient))
            .await
            .expect("back");
        assert_eq!((back.decision, back.limit), (Decision::Probe, 16), "no cut");
        assert!(c.best.is_none(), "nothing measured");
    }

    #[tokio::test(start_paused = true)]
    async fn chunks_started_before_a_change_do_not_judge_it() {
        let mut c = controller();
        epoch(&mut c, ok(400)).await.expect("probe");
        // Chunks of the old limit finishing during the measurement are left out of it.
        for _ in 0..16 {
            c.observe(Instant::now(), ok(4000));
        }
        let back = epoch(&mut c, ok(400)).await.expect("back");
        assert_eq!(back.decision, Decision::Probe);
        assert_eq!(c.best.map(|(b, _)| b), Some(50.0), "400 ms for 8 MiB");
    }

    #[tokio::test(start_paused = true)]
    async fn slow_chunks_still_end_an_epoch() {
        // One 16 MiB chunk every 8 s (a 2 MiB/s cap): the measurement at the least limit ends
        // after its four completions, though they span more than the outcomes' horizon.
        let mut c = controller();
        let slow = Outcome {
            bytes: 16 << 20,
            latency: Duration::from_secs(16),
            error: None,
        };
        let mut changes = Vec::new();
        for _ in 0..12 {
            tokio::time::advance(Duration::from_secs(16)).await;
            c.observe(Instant::now(), slow);
            changes.extend(c.tick(Instant::now(), c.limit()));
        }
        let decisions: Vec<(Decision, u32)> =
            changes.iter().map(|c| (c.decision, c.limit)).collect();
        assert_eq!(
            decisions[..2],
            [(Decision::Probe, 2), (Decision::Probe, 16)],
            "{changes:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn does_not_raise_an_unused_limit_and_eases_a_queue() {
        let mut c = controller();
        epoch(&mut c, ok(400)).await.expect("probe");
        epoch(&mut c, ok(400)).await.expect("back");
        for _ in 0..16 {
            c.observe(Instant::now(), ok(400));
        }
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(c.tick(Instant::now(), 3), None, "only 3 of 16 in use");
        let eased = epoch(&mut c, ok(2000)).await.expect("eased");
        assert_eq!(eased.decision, Decision::Ease);
        assert_eq!(eased.limit, 10, "16 × ½ + 2: five times the no-load cost");
    }

    /// A link of `capacity` MiB/s where each chunk in flight gets at most `per_chunk` MiB/s and
    /// pays `rtt`: the knee is `capacity / per_chunk`. Returns each epoch's (limit, MiB/s).
    async fn run_link(capacity: f64, per_chunk: f64, rtt: f64, epochs: usize) -> Vec<(u32, f64)> {
        let mut c = controller();
        let mut seen = Vec::new();
        for _ in 0..epochs {
            let n = f64::from(c.limit());
            let throughput = (n * per_chunk).min(capacity);
            // Little's law: each MiB waits n / throughput seconds, plus the round trip.
            let ms_per_mib = (n / throughput + rtt) * 1000.0;
            let outcome = Outcome {
                bytes: 1 << 20,
                latency: Duration::from_secs_f64(ms_per_mib / 1000.0),
                error: None,
            };
            seen.push((c.limit(), throughput));
            epoch(&mut c, outcome).await;
        }
        seen
    }

    #[tokio::test(start_paused = true)]
    async fn settles_near_the_knee_of_a_full_link() {
        for (per_chunk, knee) in [
            (8.0, 8.0),
            (16.0, 4.0),
            (4.0, 16.0),
            (32.0, 2.0),
            (6.0, 10.7),
        ] {
            let seen = run_link(64.0, per_chunk, 0.02, 120).await;
            let settled = &seen[60..];
            let mean = settled.iter().map(|(l, _)| f64::from(*l)).sum::<f64>() / 60.0;
            let rate = settled.iter().map(|(_, t)| t).sum::<f64>() / 60.0;
            assert!(
                mean <= 1.5 * knee && mean >= 0.9 * knee,
                "knee {knee}: mean limit {mean:.1}: {seen:?}"
            );
            assert!(
                rate >= 0.95 * 64.0,
                "knee {knee}: {rate:.1} MiB/s: {seen:?}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn climbs_where_latency_not_bandwidth_is_the_limit() {
        // 200 ms round trips and ample bandwidth: the knee is above the maximum.
        let seen = run_link(10_000.0, 4.0, 0.2, 60).await;
        assert_eq!(seen.last().map(|(l, _)| *l), Some(64), "{seen:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn the_no_load_latency_is_re_measured_lower_then_the_limit_returns() {
        let mut c = controller();
        epoch(&mut c, ok(400)).await.expect("probe");
        epoch(&mut c, ok(400)).await.expect("back");
        epoch(&mut c, ok(400)).await.expect("raised");
        let before = c.limit();
        tokio::time::advance(Duration::from_secs(61)).await;
        let probe = epoch(&mut c, ok(400)).await.expect("probe");
        assert_eq!((probe.decision, probe.limit), (Decision::Probe, 2));
        let back = epoch(&mut c, ok(300)).await.expect("back");
        assert_eq!((back.decision, back.limit), (Decision::Probe, before));
        // 300 ms for 8 MiB.
        assert_eq!(c.best.map(|(b, _)| b), Some(37.5), "the new no-load cost");
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
        epoch(&mut c, ok(300)).await.expect("probe");
        epoch(&mut c, ok(300)).await.expect("back");
        for _ in 0..3 {
            c.observe(Instant::now(), failed(ErrorClass::Transient));
        }
        tokio::time::advance(Duration::from_secs(30)).await;
        for _ in 0..16 {
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
