//! Scaling of a fleet of workers: one, then three `blobway serve` processes sharing one
//! PostgreSQL state copy the same local files (one of 192 MiB and 32 of 2 MiB, in 1 MiB
//! chunks) to Azurite. Each worker's Azure requests go through a proxy of its own that shapes
//! them as that machine's capped link (`LINK` MiB/s, 20 ms), so the fleet's rate is the sum of
//! its links only if the work spreads — the big file's chunks included. The table gives each
//! fleet's wall time from the ask to DONE, its rate, and the chunks each worker moved.
//!
//! Needs Azurite (`BLOBWAY_TEST_AZURITE`) and a PostgreSQL cluster (`BLOBWAY_BENCH_POSTGRES` or
//! `BLOBWAY_TEST_POSTGRES`, a URL allowed to create databases), as `scripts/bench.sh k`
//! starts them; prints why it skipped otherwise.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/common/proxy.rs"]
mod proxy;

mod common;

use std::io::BufRead;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use blobway::store::simulated::{Link, LinkSettings};

const MIB: f64 = 1024.0 * 1024.0;
/// Each worker's link, MiB/s.
const LINK: f64 = 4.0;
const TOKEN: &str = "bench-fleet-token-5f1c2b9e7d3a4c6e8b0f";
const KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// Pseudo-random bytes (xorshift), so nothing compresses or dedupes.
fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A `blobway serve` worker of the state at `state`, its Azure requests through `proxy`.
struct Worker {
    child: Child,
    url: String,
    _home: tempfile::TempDir,
}

impl Worker {
    fn start(state: &str, name: &str, proxy: &proxy::Proxy) -> Worker {
        let home = tempfile::tempdir().expect("home");
        let mut child = Command::new(env!("CARGO_BIN_EXE_blobway"))
            .args(["serve", "--listen", "127.0.0.1:0", "--concurrency", "8"])
            .env("BLOBWAY_STATE", state)
            .env("BLOBWAY_TOKEN", TOKEN)
            .env("BLOBWAY_WORKER_NAME", name)
            .env("XDG_DATA_HOME", home.path())
            .env(
                "AZURE_STORAGE_CONNECTION_STRING",
                format!(
                    "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={KEY};\
                     BlobEndpoint={}/devstoreaccount1",
                    proxy.url
                ),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("blobway serve");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                let _ = tx.send(line);
            }
        });
        let url = loop {
            let line = rx
                .recv_timeout(Duration::from_secs(30))
                .expect("the worker printed its address");
            if let Some(at) = line.find("http://") {
                break line[at..]
                    .split_whitespace()
                    .next()
                    .expect("url")
                    .to_string();
            }
        };
        Worker {
            child,
            url,
            _home: home,
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `blobway ARGS --json` against the state at `state`: its JSON lines.
fn lines(state: &str, args: &[&str]) -> Vec<serde_json::Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_blobway"))
        .args(args)
        .arg("--json")
        .env("BLOBWAY_STATE", state)
        .env("BLOBWAY_NO_DAEMON", "1")
        .output()
        .expect("blobway");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// One fleet's run: seconds from the ask to DONE, and the chunks each worker moved.
fn run(
    runtime: &tokio::runtime::Runtime,
    cluster: &str,
    azurite: &str,
    source: &Path,
    workers: usize,
) -> (f64, Vec<i64>) {
    let state = common::fresh_database(
        cluster,
        &format!("bench_fleet_{}_{workers}", std::process::id()),
    );
    let origin = azurite.trim_end_matches("/devstoreaccount1").to_string();
    let proxies: Vec<proxy::Proxy> = (0..workers)
        .map(|w| {
            let link = Arc::new(Link::new(LinkSettings {
                seed: w as u64,
                ..LinkSettings::new(LINK * MIB, Duration::from_millis(20))
            }));
            runtime.block_on(proxy::Proxy::start(
                &origin,
                proxy::FaultConfig {
                    shape: Some(link),
                    ..proxy::FaultConfig::none(proxy::Flavor::Azure)
                },
            ))
        })
        .collect();
    let fleet: Vec<Worker> = proxies
        .iter()
        .enumerate()
        .map(|(w, proxy)| Worker::start(&state, &format!("bench-{w}"), proxy))
        .collect();
    let started = Instant::now();
    let asked = runtime.block_on(async {
        reqwest::Client::new()
            .post(format!("{}/v1/jobs", fleet[0].url))
            .bearer_auth(TOKEN)
            .json(&serde_json::json!({
                "source": format!("{}/", source.display()),
                "destinations": [format!("az://bench-fleet-{workers}/")],
                "options": { "chunk_size": 1 << 20 },
            }))
            .send()
            .await
            .expect("ask")
            .status()
    });
    assert_eq!(asked, 202, "the job was not accepted");
    loop {
        let jobs = lines(&state, &["jobs"]);
        match jobs.first().and_then(|j| j["job"]["state"].as_str()) {
            Some("DONE") => break,
            Some("FAILED") | Some("CANCELLED") => panic!("the job ended {jobs:?}"),
            _ => {}
        }
        assert!(
            started.elapsed() < Duration::from_secs(900),
            "the job took too long"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let seconds = started.elapsed().as_secs_f64();
    let moved = lines(&state, &["workers"])
        .iter()
        .map(|w| w["chunks_moved"].as_i64().unwrap_or(0))
        .collect();
    drop(fleet);
    drop(proxies);
    (seconds, moved)
}

fn main() {
    let Ok(azurite) = std::env::var("BLOBWAY_TEST_AZURITE") else {
        println!("skipped: Azurite is not running (scripts/bench.sh k starts it)");
        return;
    };
    let Some(cluster) = std::env::var("BLOBWAY_BENCH_POSTGRES")
        .or_else(|_| std::env::var("BLOBWAY_TEST_POSTGRES"))
        .ok()
    else {
        println!("skipped: no PostgreSQL cluster (set BLOBWAY_BENCH_POSTGRES to a URL)");
        return;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let source = tempfile::tempdir().expect("source");
    let mut total = 0usize;
    let mut files = vec![("big.bin".to_string(), 192usize << 20)];
    files.extend((0..32).map(|i| (format!("small-{i:02}.bin"), 2usize << 20)));
    for (i, (name, size)) in files.iter().enumerate() {
        std::fs::write(source.path().join(name), random_bytes(*size, i as u64 + 1)).expect("write");
        total += size;
    }
    let mib = total as f64 / MIB;
    println!(
        "### a fleet on one PostgreSQL state: {mib:.0} MiB (one file of 192 MiB, 32 of 2 MiB, 1 MiB chunks) → Azurite, each worker behind its own {LINK} MiB/s link"
    );
    println!();
    println!(
        "| workers | seconds (ask to DONE) | MiB/s | × one worker | chunks moved per worker |"
    );
    println!("|---|---|---|---|---|");
    let mut one = None;
    let mut three = None;
    for workers in [1usize, 3] {
        let (seconds, moved) = run(&runtime, &cluster, &azurite, source.path(), workers);
        let rate = mib / seconds;
        let base = *one.get_or_insert(rate);
        if workers == 3 {
            three = Some(rate / base);
        }
        let moved: Vec<String> = moved.iter().map(i64::to_string).collect();
        println!(
            "| {workers} | {seconds:.1} | {rate:.2} | {:.2} | {} |",
            rate / base,
            moved.join(" / ")
        );
    }
    if let Some(ratio) = three {
        println!();
        println!(
            "3 workers ≥ 2.5 × the bytes per second of 1: {ratio:.2} × — {}",
            if ratio >= 2.5 { "met" } else { "not met" }
        );
    }
}
