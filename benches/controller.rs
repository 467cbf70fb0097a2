//! The adaptive concurrency controller against link models, in simulated time: the whole
//! engine (scheduler, gate, memory budget, state file, controller) copies an endless synthetic
//! source into a sink behind `store::simulated::SimulatedLink`, on a tokio runtime whose clock
//! is paused (it jumps from timer to timer), so two minutes of a link take a few seconds and a
//! seed repeats a run exactly. Every model is swept at fixed limits 1–64 and run adaptive, at
//! `--max-memory 1GiB`, each with several seeds. Prints one table per model and a summary: the
//! knee (the smallest fixed limit within 5% of the best throughput), the adaptive run's
//! throughput against the best fixed one, and its time-weighted mean limit against the knee.
//!
//! `cargo bench --bench controller`; `BENCH_SEEDS=5` for more seeds, `BENCH_SECONDS=300` for
//! longer runs, `BENCH_MODELS="full step"` for some models only. The real socket path is
//! `scripts/bench.sh` scenario (h).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use blobway::engine::ControllerConfig;
use blobway::engine::control::{Controller, Outcome};
use blobway::engine::gate::Gate;
use blobway::store::simulated::{LinkSettings, SimulatedLink};
use blobway::store::{
    BlockRef, Checksum, DestObject, ErrorClass, ObjectMeta, ObjectSink, PlannedBlock, SinkLimits,
    StoreResult, Upload,
};
use bytes::Bytes;
use tokio::time::Instant;

const MIB: f64 = 1_048_576.0;
const CHUNK: u64 = 16 << 20;
const MAX_MEMORY: u64 = 1 << 30;
/// How often the scheduler judges the controller.
const TICK: Duration = Duration::from_millis(200);
const FIXED: [u32; 12] = [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64];

/// Takes everything and holds nothing: the link in front of it is what is measured.
struct Null;

#[async_trait]
impl ObjectSink for Null {
    fn limits(&self) -> SinkLimits {
        blobway::store::azure::LIMITS
    }

    async fn prepare(&self) -> StoreResult<()> {
        Ok(())
    }

    async fn put_block(&self, _: Upload<'_>, _: BlockRef<'_>, _: Bytes) -> StoreResult<()> {
        Ok(())
    }

    async fn missing_blocks(&self, _: Upload<'_>, _: &[PlannedBlock]) -> StoreResult<Vec<u32>> {
        Ok(Vec::new())
    }

    async fn commit(&self, _: Upload<'_>, _: &[PlannedBlock], _: &ObjectMeta) -> StoreResult<()> {
        Ok(())
    }

    async fn put_whole(
        &self,
        _: Upload<'_>,
        _: Bytes,
        _: Checksum,
        _: &ObjectMeta,
    ) -> StoreResult<()> {
        Ok(())
    }

    async fn head(&self, _key: &str) -> StoreResult<Option<DestObject>> {
        Ok(None)
    }

    async fn list_existing(&self, _prefix: &str) -> StoreResult<BTreeMap<String, DestObject>> {
        Ok(BTreeMap::new())
    }
}

/// A link model: its settings, and perhaps a new bandwidth from some second on.
#[derive(Clone, Copy)]
struct Model {
    name: &'static str,
    what: &'static str,
    link: LinkSettings,
    step: Option<(f64, f64)>,
}

fn models() -> Vec<Model> {
    let mib = |n: f64| n * MIB;
    let ms = Duration::from_millis;
    vec![
        Model {
            name: "full",
            what: "64 MiB/s, 20 ms, 8 MiB/s per upload",
            link: LinkSettings {
                per_upload: Some(mib(8.0)),
                jitter: 0.5,
                ..LinkSettings::new(mib(64.0), ms(20))
            },
            step: None,
        },
        Model {
            name: "throttle",
            what: "throttles above 6 in flight (503, retry after 0.5 s); 512 MiB/s, 20 ms, 8 MiB/s per upload",
            link: LinkSettings {
                per_upload: Some(mib(8.0)),
                throttle_above: Some(6),
                jitter: 0.5,
                ..LinkSettings::new(mib(512.0), ms(20))
            },
            step: None,
        },
        Model {
            name: "far",
            what: "200 ms, ample bandwidth (1 GiB/s), 4 MiB/s per upload",
            link: LinkSettings {
                per_upload: Some(mib(4.0)),
                jitter: 0.5,
                ..LinkSettings::new(mib(1024.0), ms(200))
            },
            step: None,
        },
        Model {
            name: "step",
            what: "64 MiB/s, then 16 MiB/s from half-time; 20 ms, 8 MiB/s per upload",
            link: LinkSettings {
                per_upload: Some(mib(8.0)),
                jitter: 0.5,
                ..LinkSettings::new(mib(64.0), ms(20))
            },
            step: Some((0.5, mib(16.0))),
        },
    ]
}

/// What one run saw.
struct Run {
    /// (seconds since start, bytes the link has carried), every tick.
    carried: Vec<(f64, u64)>,
    /// (seconds since start, limit) of every change, the start's limit first.
    limits: Vec<(f64, u32)>,
    latencies: Vec<u64>,
    throttled: usize,
}

impl Run {
    /// MiB/s the link carried over seconds [from, to).
    fn rate(&self, from: f64, to: f64) -> f64 {
        let at = |t: f64| {
            self.carried
                .iter()
                .take_while(|(at, _)| *at <= t)
                .last()
                .map_or(0, |(_, b)| *b)
        };
        at(to).saturating_sub(at(from)) as f64 / MIB / (to - from)
    }

    /// The time-weighted mean limit over seconds [from, to).
    fn mean_limit(&self, from: f64, to: f64) -> f64 {
        let mut sum = 0.0;
        for (i, (at, limit)) in self.limits.iter().enumerate() {
            let end = self.limits.get(i + 1).map_or(to, |(t, _)| *t).min(to);
            let start = at.max(from);
            if end > start {
                sum += f64::from(*limit) * (end - start);
            }
        }
        sum / (to - from)
    }

    /// The first second from which the limit stays at most `most` until the end.
    fn settled(&self, after: f64, most: f64) -> Option<f64> {
        let last_above = self
            .limits
            .iter()
            .enumerate()
            .filter(|(_, (_, l))| f64::from(*l) > most)
            .map(|(i, _)| self.limits.get(i + 1).map(|(t, _)| *t))
            .next_back();
        match last_above {
            None => Some(after),
            Some(Some(t)) => Some(t.max(after)),
            Some(None) => None,
        }
    }

    fn p50(&self) -> u64 {
        let mut l = self.latencies.clone();
        l.sort_unstable();
        l.get(l.len() / 2).copied().unwrap_or(0)
    }
}

/// Runs `seconds` of simulated time on `model`, at `fixed` or adaptive: chunks are admitted
/// through the engine's gate (count and memory budget) at the controller's limit, cross the
/// link, and report their outcome to the controller, which is judged every tick as the
/// scheduler does.
async fn run(model: &Model, fixed: Option<u32>, seed: u64, seconds: f64) -> Run {
    let link = Arc::new(SimulatedLink::new(
        Arc::new(Null),
        LinkSettings { seed, ..model.link },
    ));
    let defaults = ControllerConfig::default();
    let config = match fixed {
        Some(limit) => ControllerConfig {
            initial: limit,
            min: 1,
            max: limit,
            ..defaults
        },
        None => defaults,
    };
    let started = Instant::now();
    let mut controller = Controller::new(config, fixed.is_none(), started);
    let mut gate = Gate::new(controller.limit(), MAX_MEMORY);
    let (done, mut finished) = tokio::sync::mpsc::unbounded_channel();
    let mut ticks = tokio::time::interval(TICK);
    let mut seen = Run {
        carried: Vec::new(),
        limits: vec![(0.0, controller.limit())],
        latencies: Vec::new(),
        throttled: 0,
    };
    let end = started + Duration::from_secs_f64(seconds);
    let mut step = model
        .step
        .map(|(at, bandwidth)| (started + Duration::from_secs_f64(seconds * at), bandwidth));
    loop {
        while gate.try_admit(CHUNK) {
            let (link, done) = (link.clone(), done.clone());
            tokio::spawn(async move {
                let began = Instant::now();
                let result = link.cross(CHUNK).await;
                let _ = done.send((began.elapsed(), result));
            });
        }
        let change = tokio::select! {
            Some((latency, result)) = finished.recv() => {
                gate.release(CHUNK);
                let error = match result {
                    Ok(()) => {
                        seen.latencies.push(latency.as_millis() as u64);
                        None
                    }
                    Err(e) => {
                        seen.throttled += usize::from(e.class == ErrorClass::Throttled);
                        Some(e.class)
                    }
                };
                let bytes = if error.is_none() { CHUNK } else { 0 };
                controller.observe(Instant::now(), Outcome { bytes, latency, error })
            }
            _ = ticks.tick() => {
                seen.carried.push((started.elapsed().as_secs_f64(), link.carried()));
                controller.tick(Instant::now(), gate.in_flight())
            }
            () = tokio::time::sleep_until(step.map_or(end, |(at, _)| at)), if step.is_some() => {
                if let Some((_, bandwidth)) = step.take() {
                    link.set_bandwidth(bandwidth);
                }
                None
            }
            () = tokio::time::sleep_until(end) => {
                seen.carried.push((seconds, link.carried()));
                break;
            }
        };
        if let Some(change) = change {
            gate.set_limit(change.limit);
            seen.limits
                .push((started.elapsed().as_secs_f64(), change.limit));
        }
    }
    seen
}

/// Runs `run` on a runtime of its own whose clock is paused: it jumps from timer to timer.
fn simulate(model: &Model, fixed: Option<u32>, seed: u64, seconds: f64) -> Run {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("runtime")
        .block_on(run(model, fixed, seed, seconds))
}

fn mean(values: impl Iterator<Item = f64>) -> f64 {
    let v: Vec<f64> = values.collect();
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

fn main() {
    let seeds: u64 = std::env::var("BENCH_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let seconds: f64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300.0);
    let only = std::env::var("BENCH_MODELS").ok();
    let mut summary = Vec::new();
    for model in models() {
        if only
            .as_deref()
            .is_some_and(|o| !o.split_whitespace().any(|m| m == model.name))
        {
            continue;
        }
        println!("### {} — {}", model.name, model.what);
        println!();
        println!(
            "| limit | MiB/s (mean of {seeds} seeds) | min–max | p50 chunk latency | mean limit | throttled |"
        );
        println!("|---|---|---|---|---|---|");
        // Windows judged: the whole run, and for a step the part after it.
        let half = model.step.map(|(at, _)| seconds * at);
        let mut fixed_rates = Vec::new();
        let mut fixed_after = Vec::new();
        for limit in FIXED.map(Some).into_iter().chain([None]) {
            let runs: Vec<Run> = (1..=seeds)
                .map(|seed| simulate(&model, limit, seed, seconds))
                .collect();
            if limit.is_none() && std::env::var_os("BENCH_TRACE").is_some() {
                for r in &runs {
                    let trace: Vec<String> = r
                        .limits
                        .iter()
                        .map(|(t, l)| format!("{t:.0}s:{l}"))
                        .collect();
                    println!("trace: {}", trace.join(" "));
                }
            }
            let rates: Vec<f64> = runs.iter().map(|r| r.rate(0.0, seconds)).collect();
            let rate = mean(rates.iter().copied());
            let lo = rates.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = rates.iter().copied().fold(0.0, f64::max);
            let limit_mean = mean(runs.iter().map(|r| r.mean_limit(0.0, seconds)));
            let p50 = mean(runs.iter().map(|r| r.p50() as f64));
            let throttled = mean(runs.iter().map(|r| r.throttled as f64));
            println!(
                "| {} | {rate:.1} | {lo:.1}–{hi:.1} | {p50:.0} ms | {limit_mean:.1} | {throttled:.0} |",
                limit.map_or("adaptive".into(), |l| l.to_string())
            );
            match limit {
                Some(l) => {
                    fixed_rates.push((l, rate));
                    if let Some(half) = half {
                        let after = mean(runs.iter().map(|r| r.rate(half + 10.0, seconds)));
                        if std::env::var_os("BENCH_TRACE").is_some() {
                            println!("after the step at {l}: {after:.2} MiB/s");
                        }
                        fixed_after.push((l, after));
                    }
                }
                None => {
                    let best = fixed_rates.iter().map(|(_, r)| *r).fold(0.0, f64::max);
                    let knee = fixed_rates
                        .iter()
                        .find(|(_, r)| *r >= 0.95 * best)
                        .map_or(64, |(l, _)| *l);
                    let settle = half.map(|half| {
                        let best_after = fixed_after.iter().map(|(_, r)| *r).fold(0.0, f64::max);
                        let knee_after = fixed_after
                            .iter()
                            .find(|(_, r)| *r >= 0.95 * best_after)
                            .map_or(64, |(l, _)| *l);
                        let times: Vec<Option<f64>> = runs
                            .iter()
                            .map(|r| {
                                r.settled(half, 1.5 * f64::from(knee_after))
                                    .map(|t| t - half)
                            })
                            .collect();
                        (knee_after, times)
                    });
                    summary.push((model.name, best, knee, rate, limit_mean, settle));
                }
            }
        }
        println!();
    }
    println!("### Summary");
    println!();
    println!(
        "| model | best fixed MiB/s | knee | adaptive MiB/s | of best | adaptive mean limit | of knee | after the step |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (name, best, knee, rate, limit, settle) in summary {
        let settle = settle.map_or("—".into(), |(knee_after, times)| {
            let times: Vec<String> = times
                .iter()
                .map(|t| t.map_or("never".into(), |t| format!("{t:.0} s")))
                .collect();
            format!("knee {knee_after}; within 1.5× after {}", times.join(", "))
        });
        println!(
            "| {name} | {best:.1} | {knee} | {rate:.1} | {:.0}% | {limit:.1} | {:.2}× | {settle} |",
            100.0 * rate / best,
            limit / f64::from(knee)
        );
    }
}
