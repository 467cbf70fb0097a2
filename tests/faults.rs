//! Real HTTP faults between blobway and the emulators, injected by a proxy: a fifth of all
//! requests failing in every way a network and a store can fail, a store that throttles
//! whenever more than six requests are in flight, and stalled bodies.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::BufRead;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use blobway::store::simulated::{Link, LinkSettings};
use common::proxy::{Fault, FaultConfig, Flavor, Proxy};
use common::*;

const MIB: usize = 1 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fifth_of_all_requests_faulted_on_both_sides_and_every_object_arrives() {
    let s3 = s3_client();
    let bucket = new_bucket(&s3).await;
    let container = unique("dst");
    let mut objects = Vec::new();
    for i in 0..30u64 {
        let size = if i == 7 {
            64 * MIB
        } else {
            [0, 1, 1000, 300_000, 2 * MIB, 5 * MIB + 3][i as usize % 6]
        };
        let key = format!("faulty/obj-{i:02}.bin");
        let data = random_bytes(size, 500 + i);
        put(&s3, &bucket, &key, &data).await;
        objects.push((key, data));
    }
    let s3_proxy = Proxy::start(&emulators().s3, FaultConfig::mixed(Flavor::S3, 0.2, 11)).await;
    let az_proxy = Proxy::start(
        &azurite_origin(),
        FaultConfig::mixed(Flavor::Azure, 0.2, 12),
    )
    .await;

    let state = tempfile::tempdir().expect("state");
    let mut cmd = blobway(&state.path().join("s.redb"));
    cmd.env("AWS_ENDPOINT_URL", &s3_proxy.url)
        .env(
            "AZURE_STORAGE_CONNECTION_STRING",
            azurite_connection_string_at(&az_proxy.url),
        )
        .args([
            "copy",
            &format!("s3://{bucket}/faulty/"),
            &format!("az://{container}/faulty/"),
            "--chunk-size",
            "2MiB",
            "--stall-timeout",
            "2",
            "--json",
        ]);
    let result = run_async(cmd).await;
    assert_eq!(result.code, 0, "{}\n{}", result.stdout, result.stderr);

    let copied = azure_contents(&container, "faulty/").await;
    assert_eq!(copied.len(), 30);
    for (key, data) in &objects {
        assert_eq!(md5_hex(&copied[key]), md5_hex(data), "{key}");
    }
    for (side, proxy) in [("S3", &s3_proxy), ("Azure", &az_proxy)] {
        let requests = proxy
            .stats
            .requests
            .load(std::sync::atomic::Ordering::SeqCst);
        let faults = proxy.stats.timeline().len();
        println!("{side}: {faults} faults in {requests} requests");
        assert!(
            faults as f64 >= requests as f64 * 0.1,
            "{side}: faults were injected"
        );
        for kind in [Fault::Throttle, Fault::ServerError, Fault::ResetBefore] {
            assert!(
                proxy.stats.count(kind) > 0,
                "{side}: no {kind:?} was injected"
            );
        }
    }
    assert!(
        !result.events_named("chunk_retry").is_empty(),
        "the faults were retried"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_store_throttling_above_six_requests_in_flight_is_met_by_the_controller() {
    let names: Vec<String> = (0..8).map(|i| format!("part-{i}.bin")).collect();
    let files: Vec<(&str, usize)> = names.iter().map(|n| (n.as_str(), 24 * MIB)).collect();
    let source = local_files(&files);
    let container = unique("throttle");
    let mut config = FaultConfig::none(Flavor::Azure);
    config.throttle_above = Some(6);
    // A far store, each stream held to 8 MiB/s: a chunk in flight costs 400 ms whatever the
    // machine's load, so more in flight means more throughput up to the throttle, not a queue
    // at a busy emulator (on a loaded two-core machine Azurite's own knee was at 2).
    config.shape = Some(Arc::new(Link::new(LinkSettings {
        per_upload: Some(8.0 * MIB as f64),
        ..LinkSettings::new(1024.0 * MIB as f64, Duration::from_millis(150))
    })));
    let proxy = Proxy::start(&azurite_origin(), config).await;

    let state = tempfile::tempdir().expect("state");
    let mut child = blobway(&state.path().join("s.redb"))
        .env(
            "AZURE_STORAGE_CONNECTION_STRING",
            azurite_connection_string_at(&proxy.url),
        )
        .args([
            "copy",
            &format!("{}/", source.path().display()),
            &format!("az://{container}/"),
            "--chunk-size",
            "2MiB",
            "--json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let started = Instant::now();
    let stdout = child.stdout.take().expect("stdout");
    // Each event with the moment it arrived.
    let events: Arc<Mutex<Vec<(Duration, serde_json::Value)>>> = Arc::default();
    let sink = events.clone();
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if let Ok(event) = serde_json::from_str::<serde_json::Value>(&line) {
                sink.lock()
                    .expect("events")
                    .push((started.elapsed(), event));
            }
        }
    });
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .expect("join")
        .expect("wait");
    reader.join().expect("reader");
    let total = started.elapsed();
    assert!(status.success(), "the copy completes under throttling");
    let events = events.lock().expect("events").clone();

    // The limit over time: 16 at the start, then every change the controller announced.
    let mut changes = vec![(Duration::ZERO, 16.0)];
    for (at, event) in &events {
        if event["event"] == "concurrency_changed" {
            changes.push((*at, event["limit"].as_f64().expect("limit")));
            println!("{at:.1?}: {}", event["reason"]);
        }
    }
    let warm_up = total / 3;
    let mut weighted = 0.0;
    for (i, (at, limit)) in changes.iter().enumerate() {
        let until = changes.get(i + 1).map_or(total, |(next, _)| *next);
        let from = (*at).max(warm_up);
        if until > from {
            weighted += limit * (until - from).as_secs_f64();
        }
    }
    let mean = weighted / (total - warm_up).as_secs_f64();
    println!(
        "mean concurrency limit after warm-up: {mean:.1} over {total:.1?}, {} changes",
        changes.len() - 1
    );
    assert!(
        (3.0..=8.0).contains(&mean),
        "mean limit {mean:.1} outside [3, 8]: {changes:?}"
    );

    // Throttles per MiB delivered, first third against last third of the run.
    let per_mib = |from: Duration, to: Duration| {
        let throttles = proxy
            .stats
            .timeline()
            .iter()
            .filter(|(at, kind)| {
                let t = at.duration_since(started);
                *kind == Fault::Throttle && t >= from && t < to
            })
            .count() as f64;
        let mib: f64 = events
            .iter()
            .filter(|(at, e)| e["event"] == "chunk_completed" && *at >= from && *at < to)
            .map(|(_, e)| e["bytes"].as_f64().unwrap_or(0.0) / MIB as f64)
            .sum();
        throttles / mib.max(1.0)
    };
    let first = per_mib(Duration::ZERO, total / 3);
    let last = per_mib(total * 2 / 3, total);
    println!("503s per MiB: first third {first:.3}, last third {last:.3}");
    assert!(first > 0.0, "the store throttled at first");
    assert!(
        last < first,
        "throttling fell over time: {first:.3} → {last:.3}"
    );

    let copied = azure_contents(&container, "").await;
    assert_eq!(copied.len(), 8);
    for (name, _) in &files {
        let expected = std::fs::read(source.path().join(name)).expect("read");
        assert_eq!(md5_hex(&copied[*name]), md5_hex(&expected), "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stalled_requests_are_abandoned_and_retried() {
    let s3 = s3_client();
    let bucket = new_bucket(&s3).await;
    let container = unique("stall");
    let mut objects = Vec::new();
    for i in 0..6u64 {
        let key = format!("slow/obj-{i}.bin");
        let data = random_bytes(3 * MIB + i as usize, 900 + i);
        put(&s3, &bucket, &key, &data).await;
        objects.push((key, data));
    }
    let stalls = |flavor, seed| FaultConfig {
        seed,
        rate: 0.25,
        mix: vec![(Fault::Stall, 1)],
        stall: Duration::from_secs(120),
        ..FaultConfig::none(flavor)
    };
    let s3_proxy = Proxy::start(&emulators().s3, stalls(Flavor::S3, 21)).await;
    let az_proxy = Proxy::start(&azurite_origin(), stalls(Flavor::Azure, 22)).await;
    let state = tempfile::tempdir().expect("state");
    let mut cmd = blobway(&state.path().join("s.redb"));
    cmd.env("AWS_ENDPOINT_URL", &s3_proxy.url)
        .env(
            "AZURE_STORAGE_CONNECTION_STRING",
            azurite_connection_string_at(&az_proxy.url),
        )
        .args([
            "copy",
            &format!("s3://{bucket}/slow/"),
            &format!("az://{container}/slow/"),
            "--chunk-size",
            "1MiB",
            "--stall-timeout",
            "1",
            "--json",
        ]);
    let result = run_async(cmd).await;
    assert_eq!(result.code, 0, "{}\n{}", result.stdout, result.stderr);
    let stalled = result
        .events_named("chunk_retry")
        .into_iter()
        .filter(|e| {
            e["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .contains("stalled")
        })
        .count();
    assert!(stalled > 0, "stalls were detected and retried");
    assert!(s3_proxy.stats.count(Fault::Stall) > 0 && az_proxy.stats.count(Fault::Stall) > 0);
    let copied = azure_contents(&container, "slow/").await;
    for (key, data) in &objects {
        assert_eq!(md5_hex(&copied[key]), md5_hex(data), "{key}");
    }
}
