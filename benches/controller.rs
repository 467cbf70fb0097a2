//! The adaptive concurrency controller against link models, in simulated time: the engine's
//! own controller, gate (count and memory budget) and the scheduler's 200 ms ticks admit 16 MiB
//! chunks across `store::simulated::Link` on a tokio runtime whose clock is paused (it jumps
//! from timer to timer), so ten minutes of a link take a second and a seed repeats a run
//! exactly. (The whole engine cannot run on a paused clock: it writes its state file on a
//! thread of its own, and the clock jumps ahead while that thread works.) Every model is swept
//! at fixed limits 1–64 and run adaptive, at `--max-memory 1GiB`, each with several seeds.
//! Throughput is the bytes the link carried over the run. Prints one table per model and a
//! summary: the knee (the smallest fixed limit within 5% of the best throughput), the adaptive
//! run's throughput against the best fixed one, and its time-weighted mean limit against the
//! knee; for the capacity step, the knee after it and how long the adaptive limit took to come
//! within 1.5× of that knee for good.
//!
//! Then the real socket path, when Azurite runs (`BLOBWAY_TEST_AZURITE`, as `scripts/bench.sh h`
//! sets it): the blobway binary copies local files to Azurite through the tests' HTTP proxy,
//! which shapes every request through the same link model (16 MiB/s, 20 ms, 4 MiB/s per
//! request) — real sockets, real Put Blocks, the whole engine — swept and run adaptive the same
//! way, each run stopped after 40 s. Its throughput is the chunks done over the time from the
//! first chunk started.
//!
//! `cargo bench --bench controller`; `BENCH_SEEDS=5` for more seeds, `BENCH_SECONDS=1800` for
//! longer runs, `BENCH_MODELS="full step socket"` for some models only.

use std::sync::Arc;
use std::time::Duration;

use blobway::engine::ControllerConfig;
use blobway::engine::control::{Controller, Outcome};
use blobway::engine::gate::Gate;
use blobway::store::ErrorClass;
use blobway::store::simulated::{Link, LinkSettings};
use tokio::time::Instant;

#[path = "../tests/common/proxy.rs"]
mod proxy;

const MIB: f64 = 1_048_576.0;
const CHUNK: u64 = 16 << 20;
const MAX_MEMORY: u64 = 1 << 30;
/// How often the scheduler judges the controller.
const TICK: Duration = Duration::from_millis(200);
const FIXED: [u32; 12] = [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64];

/// A link model: its settings, and perhaps a new bandwidth from some second on.
#[derive(Clone, Copy)]
struct Model {
    name: &'static str,
    what: &'static str,
    link: LinkSettings,
    step: Option<(f64, f64)>,
    /// The share of units that are small objects (256 KiB) rather than 16 MiB chunks.
    small: f64,
}

/// A small object's size.
const SMALL: u64 = 256 << 10;

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
            small: 0.0,
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
            small: 0.0,
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
            small: 0.0,
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
            small: 0.0,
        },
        Model {
            name: "mixed",
            what: "97% of the units small objects of 256 KiB, 3% chunks of 16 MiB; 64 MiB/s, 50 ms, 8 MiB/s per upload",
            link: LinkSettings {
                per_upload: Some(mib(8.0)),
                jitter: 0.5,
                ..LinkSettings::new(mib(64.0), ms(50))
            },
            step: None,
            small: 0.97,
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
    let link = Arc::new(Link::new(LinkSettings { seed, ..model.link }));
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
    let mut units = 0u64;
    let mut step = model
        .step
        .map(|(at, bandwidth)| (started + Duration::from_secs_f64(seconds * at), bandwidth));
    loop {
        while gate.try_admit(unit_size(units, model.small)) {
            let size = unit_size(units, model.small);
            units += 1;
            let (link, done) = (link.clone(), done.clone());
            tokio::spawn(async move {
                let began = Instant::now();
                let result = link.cross(size).await;
                let _ = done.send((size, began.elapsed(), result));
            });
        }
        let change = tokio::select! {
            Some((size, latency, result)) = finished.recv() => {
                gate.release(size);
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
                let bytes = if error.is_none() { size } else { 0 };
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

/// The size of unit `i`: a small object for a `small` share of them, spread evenly.
fn unit_size(i: u64, small: f64) -> u64 {
    let spread = (i as f64 * 0.618_033_988_75).fract();
    if spread < small { SMALL } else { CHUNK }
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

/// A summary row: model, best fixed MiB/s, knee, adaptive MiB/s, adaptive mean limit, and
/// for a step the knee after it and each seed's seconds to settle.
type Summary = (
    &'static str,
    f64,
    u32,
    f64,
    f64,
    Option<(u32, Vec<Option<f64>>)>,
);

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
        .unwrap_or(600.0);
    let only = std::env::var("BENCH_MODELS").ok();
    let mut summary: Vec<Summary> = Vec::new();
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
    if only
        .as_deref()
        .is_none_or(|o| o.split_whitespace().any(|m| m == "socket"))
    {
        summary.extend(socket(seeds));
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

/// One real copy: local files to Azurite through a shaping proxy.
struct Copied {
    /// MiB/s of chunks done from the first chunk started until the run is stopped.
    rate: f64,
    mean_limit: f64,
    p50: u64,
}

const SOCKET_FILES: usize = 24;
const SOCKET_FILE: usize = 32 << 20;
const SOCKET_CHUNK: &str = "2MiB";
/// How long each copy runs before it is stopped (it would take longer at any limit).
const SOCKET_SECONDS: f64 = 40.0;

/// The blobway binary next to this bench (`cargo bench` builds it in the same profile).
fn binary() -> std::path::PathBuf {
    let mut path = std::env::current_exe().expect("bench path");
    path.pop();
    if path.ends_with("deps") {
        path.pop();
    }
    path.join("blobway")
}

fn copy_through(
    runtime: &tokio::runtime::Runtime,
    azurite: &str,
    source: &std::path::Path,
    fixed: Option<u32>,
    seed: u64,
) -> Copied {
    use std::io::BufRead;
    let origin = azurite.trim_end_matches("/devstoreaccount1").to_string();
    let link = Arc::new(Link::new(LinkSettings {
        per_upload: Some(4.0 * MIB),
        jitter: 0.5,
        seed,
        ..LinkSettings::new(16.0 * MIB, Duration::from_millis(20))
    }));
    let proxy = runtime.block_on(proxy::Proxy::start(
        &origin,
        proxy::FaultConfig {
            shape: Some(link),
            ..proxy::FaultConfig::none(proxy::Flavor::Azure)
        },
    ));
    // Each run's sources are newer than the last copy of them, so every object is copied
    // again (over the last run's) instead of skipped as done.
    let newer = std::time::SystemTime::now();
    for entry in std::fs::read_dir(source).expect("source") {
        let file = std::fs::File::options()
            .write(true)
            .open(entry.expect("entry").path())
            .expect("open");
        file.set_modified(newer).expect("touch");
    }
    let state = tempfile::tempdir().expect("state");
    let mut cmd = std::process::Command::new(binary());
    cmd.env("BLOBWAY_NO_DAEMON", "1")
        .env("BLOBWAY_STATE", state.path().join("state.redb"))
        .env(
            "AZURE_STORAGE_CONNECTION_STRING",
            format!(
                "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=\
                 Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;\
                 BlobEndpoint={}/devstoreaccount1",
                proxy.url
            ),
        )
        .args([
            "copy",
            "--json",
            "--if-exists",
            "overwrite",
            "--chunk-size",
            SOCKET_CHUNK,
            "--max-memory",
            "1GiB",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    if let Some(limit) = fixed {
        cmd.arg(format!("--concurrency={limit}"));
    }
    cmd.arg(format!("{}/", source.display()))
        .arg("az://bench-controller/");
    let started = std::time::Instant::now();
    let mut child = cmd.spawn().expect("blobway");
    let stdout = child.stdout.take().expect("stdout");
    let (lines, heard) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if lines.send((started.elapsed().as_secs_f64(), line)).is_err() {
                break;
            }
        }
    });
    let mut first = None;
    let mut bytes = 0u64;
    let mut limits = vec![(0.0, fixed.unwrap_or(ControllerConfig::default().initial))];
    let mut latencies = Vec::new();
    let end = started + Duration::from_secs_f64(SOCKET_SECONDS);
    while let Ok((at, line)) =
        heard.recv_timeout(end.saturating_duration_since(std::time::Instant::now()))
    {
        let Ok(event) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        match event["event"].as_str() {
            Some("chunk_started") if first.is_none() => first = Some(at),
            Some("chunk_completed") => {
                bytes += event["bytes"].as_u64().unwrap_or(0);
                latencies.push(event["latency_ms"].as_u64().unwrap_or(0));
            }
            Some("concurrency_changed") => {
                let limit = event["limit"].as_u64().unwrap_or(0) as u32;
                limits.push((at, limit));
            }
            Some("job_finished") => panic!("the copy ended before {SOCKET_SECONDS} s"),
            _ => {}
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let first = first.expect("a chunk started");
    let run = Run {
        carried: Vec::new(),
        limits,
        latencies,
        throttled: 0,
    };
    Copied {
        rate: bytes as f64 / MIB / (SOCKET_SECONDS - first),
        mean_limit: run.mean_limit(first, SOCKET_SECONDS),
        p50: run.p50(),
    }
}

/// The real socket path, swept and adaptive; its summary row, if Azurite runs.
fn socket(seeds: u64) -> Option<Summary> {
    let Ok(azurite) = std::env::var("BLOBWAY_TEST_AZURITE") else {
        println!("### socket — skipped: Azurite is not running (scripts/bench.sh h starts it)");
        println!();
        return None;
    };
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let source = tempfile::tempdir().expect("source");
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    for i in 0..SOCKET_FILES {
        let data: Vec<u8> = (0..SOCKET_FILE)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        std::fs::write(source.path().join(format!("file-{i:02}.bin")), data).expect("write");
    }
    println!(
        "### socket — the binary copies local files to Azurite through the test proxy, which shapes requests to 16 MiB/s, 20 ms, 4 MiB/s per request; chunks of {SOCKET_CHUNK}, {SOCKET_SECONDS} s per run"
    );
    println!();
    println!(
        "| limit | MiB/s (mean of {seeds} seeds) | min–max | p50 chunk latency | mean limit |"
    );
    println!("|---|---|---|---|---|");
    let mut fixed_rates = Vec::new();
    let mut row = None;
    for limit in FIXED.map(Some).into_iter().chain([None]) {
        let runs: Vec<Copied> = (1..=seeds)
            .map(|seed| copy_through(&runtime, &azurite, source.path(), limit, seed))
            .collect();
        let rate = mean(runs.iter().map(|r| r.rate));
        let lo = runs.iter().map(|r| r.rate).fold(f64::INFINITY, f64::min);
        let hi = runs.iter().map(|r| r.rate).fold(0.0, f64::max);
        let limit_mean = mean(runs.iter().map(|r| r.mean_limit));
        let p50 = mean(runs.iter().map(|r| r.p50 as f64));
        println!(
            "| {} | {rate:.1} | {lo:.1}–{hi:.1} | {p50:.0} ms | {limit_mean:.1} |",
            limit.map_or("adaptive".into(), |l| l.to_string())
        );
        match limit {
            Some(l) => fixed_rates.push((l, rate)),
            None => {
                let best = fixed_rates.iter().map(|(_, r)| *r).fold(0.0, f64::max);
                let knee = fixed_rates
                    .iter()
                    .find(|(_, r)| *r >= 0.95 * best)
                    .map_or(64, |(l, _)| *l);
                row = Some(("socket", best, knee, rate, limit_mean, None));
            }
        }
    }
    println!();
    row
}
