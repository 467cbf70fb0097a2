//! SIGKILL-and-resume for the end-to-end tests: runs the real binary, kills it soon after it
//! made progress, checks what the dead process left in its state file against what the next
//! run sends again, and finally lets `blobway resume` finish the work.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashSet};
use std::io::BufRead;
use std::ops::Range;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use blobway::state::{ChunkState, StateDb};
use rand::Rng;

use super::{Run, run};

/// A chunk: (job, file, chunk index).
pub type ChunkKey = (u64, u32, u32);

/// A chunk's state, attempts and the outcomes of its latest attempts.
pub type ChunkSeen = (ChunkState, u32, Vec<String>);

/// Every chunk's state and attempt count, read from the state file of a dead process.
pub fn chunks(state: &Path) -> BTreeMap<ChunkKey, ChunkSeen> {
    let mut out = BTreeMap::new();
    if !blobway::state::StateLocation::parse(state).may_exist() {
        return out;
    }
    let db = StateDb::open(state).expect("the killed process released the state file");
    for job in db.jobs().expect("jobs") {
        let snapshot = db.load_job(job.id).expect("load").expect("job");
        for (file, _, chunks) in snapshot.files {
            for (i, chunk) in chunks.iter().enumerate() {
                let history = chunk.history.iter().map(|a| format!("{a:?}")).collect();
                out.insert(
                    (job.id, file, i as u32),
                    (chunk.state, chunk.attempts, history),
                );
            }
        }
    }
    out
}

/// Checks what a run sent again against what the earlier runs left interrupted: a chunk in
/// flight at the kill, or one a killed run had taken back to pending (it was in flight at an
/// earlier kill) and not sent yet. A completed chunk is sent again only when the destination
/// itself reported it missing (`blocks_missing`), or lost the whole upload (`upload_restarted`),
/// both in `reported`: the engine trusts the store over its records. Returns how many
/// interrupted chunks were sent again.
pub fn check_resent(
    before: &BTreeMap<ChunkKey, ChunkSeen>,
    after: &BTreeMap<ChunkKey, ChunkSeen>,
    reported: &HashSet<ChunkKey>,
) -> usize {
    let interrupted = |(state, attempts, _): &ChunkSeen| {
        *state == ChunkState::InProgress || (*state == ChunkState::Pending && *attempts > 0)
    };
    let in_flight = before.values().filter(|c| interrupted(c)).count();
    let mut resent = 0;
    for (key, (_, attempts, history)) in after {
        let Some(old) = before.get(key) else {
            continue;
        };
        let (old_state, old_attempts, old_history) = old;
        if *old_attempts >= 1 && attempts > old_attempts {
            if !interrupted(old)
                && (reported.contains(key) || reported.contains(&(key.0, key.1, u32::MAX)))
            {
                continue;
            }
            resent += 1;
            assert!(
                interrupted(old),
                "chunk {key:?} was sent again although it was {old_state:?} (not interrupted) at the kill; attempts then: {old_history:?}, now: {history:?}"
            );
        }
    }
    assert!(
        resent <= in_flight,
        "{resent} chunks were sent again but only {in_flight} were interrupted at the kill"
    );
    resent
}

/// The chunks the destination reported missing in a run's JSON lines: those a
/// `blocks_missing` event names, and every chunk (index `u32::MAX`) of an object whose upload
/// the destination lost (`upload_restarted`).
pub fn reported_missing<'a>(lines: impl Iterator<Item = &'a str>) -> HashSet<ChunkKey> {
    let mut out = HashSet::new();
    for line in
        lines.filter(|l| l.contains("\"blocks_missing\"") || l.contains("\"upload_restarted\""))
    {
        let Ok(event) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let (Some(job), Some(file)) = (event["job"].as_u64(), event["file"].as_u64()) else {
            continue;
        };
        if event["event"] == "upload_restarted" {
            out.insert((job, file as u32, u32::MAX));
        }
        for chunk in event["chunks"].as_array().into_iter().flatten() {
            if let Some(chunk) = chunk.as_u64() {
                out.insert((job, file as u32, chunk as u32));
            }
        }
    }
    out
}

/// What [`kill_then_resume`] saw.
pub struct Crashes {
    /// SIGKILLs that landed before the copy finished.
    pub kills: usize,
    /// Chunks sent again after a kill, in all.
    pub resent: usize,
    /// The final `blobway resume --json` run.
    pub resume: Run,
}

/// Runs `make()` with `args` up to `kills` times, each time SIGKILLing it `delay_ms` after its
/// first completed chunk (stopping early when a run finishes on its own), calls `after_kill`
/// after every kill (to check what is visible at the destination), then runs
/// `blobway resume --json` to the end. Every run's resent chunks are checked against what was
/// in flight at the kill before.
pub async fn kill_then_resume(
    make: impl Fn() -> Command,
    args: &[String],
    state: &Path,
    kills: usize,
    delay_ms: Range<u64>,
    rng: &mut impl Rng,
    mut after_kill: impl AsyncFnMut(usize),
) -> Crashes {
    let mut before = chunks(state);
    let mut landed = 0;
    let mut resent = 0;
    let mut reported = HashSet::new();
    while landed < kills {
        let mut child = make()
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        let stdout = child.stdout.take().expect("stdout");
        let (progress_tx, progress_rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut lines = Vec::new();
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if line.contains("\"chunk_completed\"") {
                    let _ = progress_tx.send(());
                }
                lines.push(line);
            }
            reported_missing(lines.iter().map(String::as_str))
        });
        // Kill only once this run has made progress, at a random moment after that.
        let progressed = progress_rx.recv_timeout(Duration::from_secs(60)).is_ok();
        std::thread::sleep(Duration::from_millis(rng.random_range(delay_ms.clone())));
        if child.try_wait().expect("poll").is_some() {
            let status = child.wait().expect("wait");
            reported.extend(reader.join().expect("reader"));
            assert!(status.success(), "run ended early with {status}");
            break;
        }
        assert!(progressed, "the run made no progress within 60 s");
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
        reported.extend(reader.join().expect("reader"));
        landed += 1;

        let after = chunks(state);
        let completed = after
            .values()
            .filter(|(s, _, _)| *s == ChunkState::Completed)
            .count();
        println!(
            "kill {landed}: {completed}/{} chunks completed",
            after.len()
        );
        resent += check_resent(&before, &after, &std::mem::take(&mut reported));
        after_kill(landed).await;
        before = after;
    }
    let resume = run(make().args(["resume", "--json"]));
    assert_eq!(resume.code, 0, "{}\n{}", resume.stdout, resume.stderr);
    reported.extend(reported_missing(resume.stdout.lines()));
    resent += check_resent(&before, &chunks(state), &reported);
    Crashes {
        kills: landed,
        resent,
        resume,
    }
}
