//! The real `blobway copy` binary is SIGKILLed at random moments, then run to completion:
//! every destination object ends byte-identical, no object is ever visible before its commit,
//! and the chunks sent again after each kill are no more than the chunks that were in flight
//! when it died (counted from the state file the killed process left behind).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::Path;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Duration;

use blobway::state::{ChunkState, StateDb};
use common::*;
use rand::{Rng, SeedableRng};

const MIB: usize = 1 << 20;

type ChunkKey = (u64, u32, u32);

/// Every chunk's state and attempt count, read from the state file of a dead process.
fn chunks(state: &Path) -> BTreeMap<ChunkKey, (ChunkState, u32)> {
    let mut out = BTreeMap::new();
    if !state.exists() {
        return out;
    }
    let db = StateDb::open(state).expect("the killed process released the state file");
    for job in db.jobs().expect("jobs") {
        let snapshot = db.load_job(job.id).expect("load").expect("job");
        for (file, _, chunks) in snapshot.files {
            for (i, chunk) in chunks.iter().enumerate() {
                out.insert((job.id, file, i as u32), (chunk.state, chunk.attempts));
            }
        }
    }
    out
}

/// Checks what a run sent again against what the previous run left in flight; returns how
/// many chunks were sent again.
fn check_resent(
    before: &BTreeMap<ChunkKey, (ChunkState, u32)>,
    after: &BTreeMap<ChunkKey, (ChunkState, u32)>,
) -> usize {
    let in_flight = before
        .values()
        .filter(|(state, _)| *state == ChunkState::InProgress)
        .count();
    let mut resent = 0;
    for (key, (_, attempts)) in after {
        let Some((old_state, old_attempts)) = before.get(key) else {
            continue;
        };
        if *old_attempts >= 1 && attempts > old_attempts {
            resent += 1;
            assert_eq!(
                *old_state,
                ChunkState::InProgress,
                "chunk {key:?} was sent again although it was {old_state:?} (not in flight) at the kill"
            );
        }
    }
    assert!(
        resent <= in_flight,
        "{resent} chunks were sent again but only {in_flight} were in flight at the kill"
    );
    resent
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_at_random_moments_then_resume_copies_exactly_once() {
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
    let state_dir = tempfile::tempdir().expect("state");
    let state = state_dir.path().join("s.redb");
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

    let mut before = chunks(&state);
    let mut kills = 0;
    let mut total_resent = 0;
    while kills < 6 {
        let mut child = blobway(&state)
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        let stdout = child.stdout.take().expect("stdout");
        let (progress_tx, progress_rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if line.contains("\"chunk_completed\"") {
                    let _ = progress_tx.send(());
                }
            }
        });
        // Kill only once this run has made progress, at a random moment after that.
        let progressed = progress_rx.recv_timeout(Duration::from_secs(60)).is_ok();
        std::thread::sleep(Duration::from_millis(rng.random_range(0..300)));
        let finished = child.try_wait().expect("poll").is_some();
        if finished {
            let status = child.wait().expect("wait");
            reader.join().expect("reader");
            assert!(status.success(), "run ended early with {status}");
            break;
        }
        assert!(progressed, "the run made no progress within 60 s");
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
        reader.join().expect("reader");
        kills += 1;

        let after = chunks(&state);
        let completed = after
            .values()
            .filter(|(s, _)| *s == ChunkState::Completed)
            .count();
        println!("kill {kills}: {completed}/{} chunks completed", after.len());
        total_resent += check_resent(&before, &after);
        // Whatever is visible at the destination was committed, hence complete and identical.
        for (key, data) in azure_contents(&container, "crash/").await {
            assert_eq!(
                md5_hex(&data),
                md5_hex(&sources[&key]),
                "{key} is visible but not identical after kill {kills}"
            );
        }
        before = after;
    }
    assert!(
        kills >= 5,
        "only {kills} kills landed before the copy finished; slow the copy down"
    );

    // `resume` finishes what the killed runs left, without listing the source again.
    let last = run(blobway(&state).args(["resume", "--json"]));
    assert_eq!(last.code, 0, "{}\n{}", last.stdout, last.stderr);
    assert_eq!(last.events_named("job_loaded").len(), 1);
    let jobs = run(blobway(&state).arg("jobs"));
    assert!(jobs.stdout.contains("DONE"), "{}", jobs.stdout);
    assert!(jobs.stdout.contains("7/7"), "{}", jobs.stdout);
    total_resent += check_resent(&before, &chunks(&state));
    let copied = azure_contents(&container, "crash/").await;
    assert_eq!(copied.len(), sources.len());
    for (key, data) in &sources {
        assert_eq!(md5_hex(&copied[key]), md5_hex(data), "{key}");
    }
    println!("{kills} kills, {total_resent} chunks sent again in all");
}
