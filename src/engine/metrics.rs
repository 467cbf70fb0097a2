//! Rolling measurements for views: per second, the throughput, the p50 and p95 chunk latency,
//! the concurrency limit and the chunks in flight, with the controller's decisions marked —
//! the last five minutes of them — plus the recent transfer rate overall and per job.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::control::Decision;
use crate::state::JobId;

/// Seconds of history kept.
pub const HISTORY_SECONDS: usize = 300;

/// How far back "the current rate" looks.
const RATE_WINDOW: Duration = Duration::from_secs(5);

/// One second of measurements.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Point {
    /// Seconds since the engine started.
    pub t: u32,
    /// Bytes acknowledged in that second, in MiB/s.
    pub mib_per_s: f64,
    /// Median chunk latency of the chunks finished in that second, ms (0 when none).
    pub p50_ms: f64,
    /// 95th percentile chunk latency, ms.
    pub p95_ms: f64,
    /// Concurrency limit at the end of that second.
    pub limit: u32,
    /// Units of work in flight at the end of that second.
    pub in_flight: u32,
}

/// A controller decision, marked on the time axis.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mark {
    /// Seconds since the engine started.
    pub t: u32,
    /// What was decided.
    pub decision: Decision,
}

/// The history a view draws.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Series {
    /// One point per second, oldest first.
    pub points: Vec<Point>,
    /// Decisions within the same span.
    pub marks: Vec<Mark>,
}

/// Accumulates measurements as work finishes.
#[derive(Debug)]
pub struct Metrics {
    start: Instant,
    second: u32,
    bytes: u64,
    latencies: Vec<u64>,
    points: VecDeque<Point>,
    marks: VecDeque<Mark>,
    recent: VecDeque<(Instant, JobId, u64)>,
}

impl Metrics {
    /// Starts measuring at `now`.
    pub fn new(now: Instant) -> Self {
        Self {
            start: now,
            second: 0,
            bytes: 0,
            latencies: Vec::new(),
            points: VecDeque::with_capacity(HISTORY_SECONDS),
            marks: VecDeque::new(),
            recent: VecDeque::new(),
        }
    }

    fn second_of(&self, now: Instant) -> u32 {
        now.duration_since(self.start).as_secs() as u32
    }

    /// A chunk of `job` moved `bytes` in `latency_ms`.
    pub fn chunk_done(&mut self, now: Instant, job: JobId, bytes: u64, latency_ms: u64) {
        self.bytes += bytes;
        self.latencies.push(latency_ms);
        self.recent.push_back((now, job, bytes));
    }

    /// The controller decided something.
    pub fn decision(&mut self, now: Instant, decision: Decision) {
        let t = self.second_of(now);
        self.marks.push_back(Mark { t, decision });
    }

    /// Closes every second that has ended, sampling the gate's `limit` and `in_flight`.
    pub fn roll(&mut self, now: Instant, limit: u32, in_flight: u32) {
        let current = self.second_of(now);
        while self.second < current {
            let (p50, p95) = percentiles(&mut self.latencies);
            self.points.push_back(Point {
                t: self.second,
                mib_per_s: self.bytes as f64 / f64::from(1u32 << 20),
                p50_ms: p50,
                p95_ms: p95,
                limit,
                in_flight,
            });
            self.bytes = 0;
            self.latencies.clear();
            self.second += 1;
            if self.points.len() > HISTORY_SECONDS {
                self.points.pop_front();
            }
        }
        let oldest = self.points.front().map_or(0, |p| p.t);
        while self.marks.front().is_some_and(|m| m.t < oldest) {
            self.marks.pop_front();
        }
        while self
            .recent
            .front()
            .is_some_and(|(at, _, _)| now.duration_since(*at) > RATE_WINDOW)
        {
            self.recent.pop_front();
        }
    }

    /// The history so far.
    pub fn series(&self) -> Series {
        Series {
            points: self.points.iter().copied().collect(),
            marks: self.marks.iter().copied().collect(),
        }
    }

    /// Bytes per second over the last few seconds, overall and per job.
    pub fn rates(&self, now: Instant) -> (f64, BTreeMap<JobId, f64>) {
        let span = now
            .duration_since(self.start)
            .min(RATE_WINDOW)
            .as_secs_f64()
            .max(1.0);
        let mut per_job = BTreeMap::new();
        let mut total = 0u64;
        for (_, job, bytes) in &self.recent {
            total += bytes;
            *per_job.entry(*job).or_insert(0.0) += *bytes as f64 / span;
        }
        (total as f64 / span, per_job)
    }
}

/// p50 and p95 of `values` (sorted in place); zeros when empty.
fn percentiles(values: &mut [u64]) -> (f64, f64) {
    if values.is_empty() {
        return (0.0, 0.0);
    }
    values.sort_unstable();
    let at = |q: f64| values[((values.len() - 1) as f64 * q).round() as usize] as f64;
    (at(0.5), at(0.95))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn rolls_seconds_into_points_with_percentiles() {
        let mut m = Metrics::new(Instant::now());
        for latency in 1..=100 {
            m.chunk_done(Instant::now(), 1, 1 << 20, latency);
        }
        m.decision(Instant::now(), Decision::Increase);
        tokio::time::advance(Duration::from_millis(1500)).await;
        m.roll(Instant::now(), 18, 7);
        let series = m.series();
        assert_eq!(series.points.len(), 1);
        let p = series.points[0];
        assert_eq!((p.t, p.limit, p.in_flight), (0, 18, 7));
        assert!((p.mib_per_s - 100.0).abs() < 1e-9);
        assert_eq!((p.p50_ms, p.p95_ms), (51.0, 95.0));
        assert_eq!(
            series.marks,
            vec![Mark {
                t: 0,
                decision: Decision::Increase
            }]
        );

        tokio::time::advance(Duration::from_secs(3)).await;
        m.roll(Instant::now(), 18, 0);
        assert_eq!(m.series().points.len(), 4, "idle seconds are points too");
        assert_eq!(m.series().points[3].mib_per_s, 0.0);
    }

    #[tokio::test(start_paused = true)]
    async fn rates_cover_the_last_seconds_only() {
        let mut m = Metrics::new(Instant::now());
        tokio::time::advance(Duration::from_secs(10)).await;
        m.chunk_done(Instant::now(), 1, 10 << 20, 5);
        m.chunk_done(Instant::now(), 2, 5 << 20, 5);
        let (total, per_job) = m.rates(Instant::now());
        assert_eq!(total, f64::from(15u32 << 20) / 5.0);
        assert_eq!(per_job[&2], f64::from(5u32 << 20) / 5.0);
        tokio::time::advance(Duration::from_secs(6)).await;
        m.roll(Instant::now(), 4, 0);
        assert_eq!(m.rates(Instant::now()).0, 0.0);
        let long = HISTORY_SECONDS as u64 + 50;
        tokio::time::advance(Duration::from_secs(long)).await;
        m.roll(Instant::now(), 4, 0);
        assert_eq!(m.series().points.len(), HISTORY_SECONDS);
    }
}
