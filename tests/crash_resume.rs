//! The real `blobway copy` binary is SIGKILLed at random moments, then run to completion:
//! every destination object ends byte-identical, no object is ever visible before its commit,
//! and the chunks sent again after each kill are no more than the chunks that were in flight
//! when it died (counted from the state file the killed process left behind).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;

use common::crash::kill_then_resume;
use common::*;
use rand::SeedableRng;

const MIB: usize = 1 << 20;

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_at_random_moments_then_resume_copies_exactly_once() {
    let state_dir = tempfile::tempdir().expect("state");
    crash_then_resume(&state_dir.path().join("s.redb")).await;
}

/// The same with the state in PostgreSQL: a killed process's session (and its lock) ends
/// with it, and what it recorded is all there for the next run.
#[tokio::test(flavor = "multi_thread")]
async fn sigkill_at_random_moments_then_resume_copies_exactly_once_with_the_state_in_postgresql() {
    let url = common::postgres::fresh_database();
    crash_then_resume(std::path::Path::new(&url)).await;
}

async fn crash_then_resume(state: &std::path::Path) {
    let seed: u64 = std::env::var("BLOBWAY_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("crash test seed {seed} (set BLOBWAY_CRASH_SEED to replay)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);

    let s3 = s3_client();
    let bucket = new_bucket(&s3).await;
    let container = unique("dst");
    let mut sources = BTreeMap::new();
    sources.insert("crash/large.bin".to_string(), random_bytes(64 * MIB, 1));
    for i in 0..6u64 {
        let size = [0, 10, 4096, MIB, 3 * MIB + 5, 200_000][i as usize];
        sources.insert(format!("crash/small-{i}.dat"), random_bytes(size, 10 + i));
    }
    for (key, data) in &sources {
        put(&s3, &bucket, key, data).await;
    }
    let args = [
        "copy".to_string(),
        format!("s3://{bucket}/crash/"),
        format!("az://{container}/crash/"),
        "--chunk-size".into(),
        "1MiB".into(),
        "--concurrency".into(),
        "3".into(),
        "--json".into(),
    ];

    let container_ref = &container;
    let sources_ref = &sources;
    let crashes = kill_then_resume(
        || blobway(state),
        &args,
        state,
        6,
        0..300,
        &mut rng,
        async |kill| {
            // Whatever is visible at the destination was committed, hence complete and
            // identical.
            for (key, data) in azure_contents(container_ref, "crash/").await {
                assert_eq!(
                    md5_hex(&data),
                    md5_hex(&sources_ref[&key]),
                    "{key} is visible but not identical after kill {kill}"
                );
            }
        },
    )
    .await;
    assert!(
        crashes.kills >= 5,
        "only {} kills landed before the copy finished; slow the copy down",
        crashes.kills
    );
    // `resume` finished what the killed runs left, without listing the source again.
    assert_eq!(crashes.resume.events_named("job_loaded").len(), 1);
    let jobs = run(blobway(state).arg("jobs"));
    assert!(jobs.stdout.contains("DONE"), "{}", jobs.stdout);
    assert!(jobs.stdout.contains("7/7"), "{}", jobs.stdout);
    let copied = azure_contents(&container, "crash/").await;
    assert_eq!(copied.len(), sources.len());
    for (key, data) in &sources {
        assert_eq!(md5_hex(&copied[key]), md5_hex(data), "{key}");
    }
    println!(
        "{} kills, {} chunks sent again in all",
        crashes.kills, crashes.resent
    );
}
