//! Workers sharing one PostgreSQL state (the cluster `scripts/test.sh` starts once per run, a
//! fresh database per test): claims that never overlap, leases judged by the database's
//! clock, the claims of a worker that went coming back, fencing of a worker whose lease ran
//! out, and — end to end — three `blobway serve` processes moving one migration from S3
//! (moto) to Azurite while two of them are killed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use blobway::state::postgres::PgState;
use blobway::state::{ChunkRecord, ChunkState, FileRecord, StateDb, StateError, Write};
use common::postgres::{execute, fresh_database, number};
use common::*;

const LONG: Duration = Duration::from_secs(60);

fn worker(url: &str, name: &str) -> StateDb {
    StateDb::new(PgState::open_worker(url, None, name, LONG).expect("join"))
}

/// Job 1 with `objects` objects of two chunks each, all pending.
fn planned(db: &StateDb, objects: u32) {
    let mut writes = vec![Write::Job(job_record(1))];
    for i in 0..objects {
        let key = format!("p/{i:03}");
        writes.push(Write::File(
            1,
            i,
            FileRecord::new(&key, &key, 16, "\"e\"", 8, 2),
        ));
        writes.push(Write::Chunk(1, i, 0, ChunkRecord::pending()));
        writes.push(Write::Chunk(1, i, 1, ChunkRecord::pending()));
    }
    db.apply(&writes).expect("plan");
}

fn claim(db: &StateDb, max: usize) -> BTreeSet<u32> {
    db.next_under_way(1, None, max, 10_000, &|_| false)
        .expect("claim")
        .objects
        .into_iter()
        .map(|(i, _, _)| i)
        .collect()
}

fn expire(url: &str, name: &str) {
    execute(
        url,
        &format!(
            "UPDATE blobway_workers SET lease_until = clock_timestamp() - interval '1 second' \
             WHERE name = '{name}'"
        ),
    );
}

#[test]
fn workers_claim_apart_and_a_dead_workers_claims_come_back_fenced() {
    let url = fresh_database();
    let a = worker(&url, "a");
    let b = worker(&url, "b");
    planned(&a, 10);
    let of_a = claim(&a, 4);
    assert_eq!(of_a, (0..4).collect(), "a claims the first four");
    let of_b = claim(&b, 100);
    assert_eq!(of_b, (4..10).collect(), "b never gets what a claimed");
    assert!(
        claim(&b, 100).contains(&9),
        "a worker reads its own claims again"
    );
    b.confirm_lease().expect("b's lease is live");
    // a starts a chunk, then stops renewing (a SIGSTOP, a cut cable).
    let mut in_flight = ChunkRecord::pending();
    in_flight.state = ChunkState::InProgress;
    a.apply(&[Write::Chunk(1, 0, 0, in_flight.clone())])
        .expect("a records while its lease is live");
    expire(&url, "a");
    let fenced = a
        .apply(&[Write::Chunk(1, 0, 0, ChunkRecord::pending())])
        .expect_err("a lapsed lease records nothing");
    assert!(matches!(fenced, StateError::Fenced { .. }), "{fenced}");
    assert!(fenced.to_string().contains("worker a's lease"), "{fenced}");
    assert!(
        !a.lease().expect("a worker").holds(),
        "a knows it is fenced"
    );
    assert!(
        a.next_under_way(1, None, 4, 100, &|_| false).is_err(),
        "nor claims"
    );
    let refused = a.confirm_lease().expect_err("nor gives up uploads");
    assert!(matches!(refused, StateError::Fenced { .. }), "{refused}");
    // b gives a's claims back (its heartbeat or start does): the chunk a had in flight is
    // pending again, and b takes the objects.
    b.recover_in_progress().expect("reap");
    assert_eq!(
        b.chunk(1, 0, 0).expect("chunk").map(|c| c.state),
        Some(ChunkState::Pending)
    );
    assert_eq!(claim(&b, 100), (0..10).collect::<BTreeSet<_>>());
    let workers = b.workers().expect("workers").expect("shared");
    let state = |name: &str| {
        workers
            .iter()
            .find(|w| w.name == name)
            .map(|w| (w.state.clone(), w.claimed))
    };
    assert_eq!(state("a"), Some(("expired".into(), 0)));
    assert_eq!(state("b"), Some(("running".into(), 10)));
}

#[test]
fn a_worker_that_leaves_gives_its_claims_back_and_one_that_ends_a_job_lets_go_of_it() {
    let url = fresh_database();
    let a = worker(&url, "a");
    let b = worker(&url, "b");
    planned(&a, 6);
    assert_eq!(claim(&a, 3), (0..3).collect());
    // An object done is nobody's claim any more (a failed one stays its worker's to reopen).
    let mut done = FileRecord::new("p/000", "p/000", 16, "\"e\"", 8, 2);
    done.state = blobway::state::FileState::Done;
    a.apply(&[Write::File(1, 0, done)]).expect("done");
    let owned = "SELECT count(*) FROM blobway_objects WHERE owner IS NOT NULL";
    assert_eq!(number(&url, owned), 2);
    let claimed = |db: &StateDb, name: &str| {
        db.workers()
            .expect("workers")
            .expect("shared")
            .iter()
            .find(|w| w.name == name)
            .map(|w| w.claimed)
    };
    assert_eq!(claimed(&b, "a"), Some(2));
    drop(a);
    assert_eq!(number(&url, owned), 0, "a left: its claims went back");
    assert_eq!(claim(&b, 100), (1..6).collect());
    let workers = b.workers().expect("workers").expect("shared");
    assert_eq!(
        workers
            .iter()
            .find(|w| w.name == "a")
            .map(|w| w.state.as_str()),
        Some("left")
    );
    // b records the job failed (a fatal stop, chunks may still be in flight): it keeps its
    // claims until it lets go, with nothing in flight, when the job ends there.
    let mut failed = job_record(1);
    failed.state = blobway::state::JobState::Failed;
    b.apply(&[Write::Job(failed)]).expect("job failed here");
    assert_eq!(claimed(&b, "b"), Some(5));
    b.apply(&[Write::LetGo(1)]).expect("let go");
    assert_eq!(claimed(&b, "b"), Some(0));
    let c = worker(&url, "c");
    assert_eq!(claim(&c, 100), (1..6).collect());
}

#[test]
fn a_live_name_elsewhere_is_refused_and_one_of_this_process_is_taken_over() {
    let url = fresh_database();
    let first = worker(&url, "x");
    planned(&first, 2);
    assert_eq!(claim(&first, 1), BTreeSet::from([0]));
    // The same name again from this very process: the old membership is over.
    let second = worker(&url, "x");
    let refused = first
        .apply(&[Write::Chunk(1, 1, 0, ChunkRecord::pending())])
        .expect_err("taken over");
    assert!(matches!(refused, StateError::Fenced { .. }), "{refused}");
    assert_eq!(claim(&second, 10), BTreeSet::from([0, 1]));
    // A live worker of that name on another host is not taken over.
    execute(
        &url,
        "UPDATE blobway_workers SET host = 'elsewhere', machine = 'b00t/pid:[1]' WHERE name = 'x'",
    );
    let err = PgState::open_worker(&url, None, "x", LONG)
        .err()
        .expect("refused");
    assert!(matches!(err, StateError::WorkerInUse { .. }), "{err}");
    assert!(err.to_string().contains("elsewhere"), "{err}");
    assert!(err.to_string().contains("BLOBWAY_WORKER_NAME"), "{err}");
}

#[test]
fn job_ids_and_a_gone_workers_listing_are_taken_by_one_worker_only() {
    let url = fresh_database();
    let a = worker(&url, "a");
    let b = worker(&url, "b");
    let ids: BTreeSet<u64> = [&a, &b, &a, &b]
        .iter()
        .map(|w| w.take_job_id().expect("id"))
        .collect();
    assert_eq!(ids.len(), 4, "never the same ID twice: {ids:?}");
    let listing = blobway::state::index::Listing {
        after: Some("p/010".into()),
        fresh: true,
        summary: serde_json::json!({}),
    };
    a.apply(&[Write::Job(job_record(1)), Write::Listing(1, Some(listing))])
        .expect("a lists");
    assert!(
        !b.take_listing(1).expect("take"),
        "a lives: its listing is its own"
    );
    assert!(a.take_listing(1).expect("take"), "its own listing");
    expire(&url, "a");
    let c = worker(&url, "c");
    assert!(b.take_listing(1).expect("take"), "a is gone: b takes it");
    assert!(!c.take_listing(1).expect("take"), "and only b");
}

#[test]
fn blobway_workers_lists_the_fleet_and_refuses_a_state_file_with_the_fix() {
    let url = fresh_database();
    let _a = worker(&url, "tabled");
    let out = run(blobway(Path::new(&url)).arg("workers"));
    assert_eq!(out.code, 0, "{}", out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(
        lines[0].starts_with("NAME") && lines[0].contains("CLAIMED"),
        "{}",
        out.stdout
    );
    assert!(
        lines[1].starts_with("tabled") && lines[1].contains("running"),
        "{}",
        out.stdout
    );
    let dir = tempfile::tempdir().expect("dir");
    let file = run(blobway(&dir.path().join("s.redb")).arg("workers"));
    assert_eq!(file.code, 2, "{}", file.stderr);
    assert!(
        file.stderr.contains("workers share a PostgreSQL state"),
        "{}",
        file.stderr
    );
}

#[test]
fn a_lease_lives_while_its_heartbeat_renews_it() {
    let url = fresh_database();
    let short = Duration::from_secs(2);
    let a = StateDb::new(PgState::open_worker(&url, None, "a", short).expect("join"));
    planned(&a, 1);
    std::thread::sleep(Duration::from_secs(5));
    a.apply(&[Write::Chunk(1, 0, 0, ChunkRecord::pending())])
        .expect("renewed past two lease lengths");
    assert!(a.lease().expect("worker").holds());
    let age = a.workers().expect("workers").expect("shared")[0].heartbeat_age_s;
    assert!(age < 2.0, "last heartbeat {age} s ago");
}

#[test]
fn a_database_of_the_first_schema_is_upgraded_by_a_worker_and_refused_to_a_reader() {
    let url = fresh_database();
    drop(worker(&url, "a"));
    execute(
        &url,
        "UPDATE blobway_meta SET value = '1' WHERE name = 'schema'; \
         DROP INDEX blobway_objects_by_owner; ALTER TABLE blobway_objects DROP COLUMN owner; \
         DROP TABLE blobway_workers; DROP SEQUENCE blobway_epochs",
    );
    let err = PgState::open_reader(&url).err().expect("an older schema");
    assert!(err.to_string().contains("older blobway"), "{err}");
    let a = worker(&url, "a");
    planned(&a, 2);
    assert_eq!(claim(&a, 10), BTreeSet::from([0, 1]));
    assert_eq!(
        number(
            &url,
            "SELECT value::bigint FROM blobway_meta WHERE name = 'schema'"
        ),
        blobway::state::postgres::SCHEMA_VERSION
    );
}

/// A `blobway serve` worker of a shared state, killed when dropped.
struct Worker {
    child: Child,
    url: String,
    name: String,
    home: tempfile::TempDir,
    stderr: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

const TOKEN: &str = "tok-9e3b1f7c2a6d4e8f0b5c7a9d1e3f5a7b";

impl Worker {
    fn start(state: &str, name: &str, home: Option<tempfile::TempDir>) -> Worker {
        Worker::start_with(state, name, home, "1M", &[])
    }

    /// A worker capped at `bwlimit`, with `env` set besides.
    fn start_with(
        state: &str,
        name: &str,
        home: Option<tempfile::TempDir>,
        bwlimit: &str,
        env: &[(&str, String)],
    ) -> Worker {
        let home = home.unwrap_or_else(|| tempfile::tempdir().expect("home"));
        let mut cmd = blobway(Path::new(state));
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--bwlimit", bwlimit])
            .args(["--concurrency", "4"])
            .env("BLOBWAY_TOKEN", TOKEN)
            .env("BLOBWAY_WORKER_NAME", name)
            .env("BLOBWAY_WORKER_LEASE", "3")
            .env("XDG_DATA_HOME", home.path())
            .stderr(Stdio::piped());
        for (key, value) in env {
            cmd.env(key, value);
        }
        let mut child = cmd.spawn().expect("serve");
        let stderr = child.stderr.take().unwrap();
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let kept = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                kept.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let url = loop {
            let line = rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .unwrap_or_else(|_| panic!("worker {name} printed no address"));
            if let Some(at) = line.find("http://") {
                break line[at..].split_whitespace().next().unwrap().to_string();
            }
        };
        Worker {
            child,
            url,
            name: name.into(),
            home,
            stderr: lines,
        }
    }

    /// The end of its log (what it did, for a failing test's message).
    fn log_tail(&self) -> String {
        let mut text = String::new();
        for entry in walk(self.home.path()) {
            if entry.extension().is_some_and(|e| e == "log") {
                let log = std::fs::read_to_string(&entry).unwrap_or_default();
                let lines: Vec<&str> = log.lines().filter(|l| !l.contains("NOTICE")).collect();
                text = lines[lines.len().saturating_sub(30)..].join("\n");
            }
        }
        format!("--- {} ---\n{text}", self.name)
    }

    /// The value of the metric line starting `name` in its `/metrics` (-1 when absent).
    async fn gauge(&self, name: &str) -> f64 {
        let text = reqwest::Client::new()
            .get(format!("{}/metrics", self.url))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
            .unwrap_or(-1.0)
    }

    /// Job `id` as its API shows it.
    async fn job(&self, id: u64) -> serde_json::Value {
        let got = reqwest::Client::new()
            .get(format!("{}/v1/jobs/{id}", self.url))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        got.json().await.unwrap()
    }

    fn kill(mut self) -> tempfile::TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::mem::replace(&mut self.home, tempfile::tempdir().expect("home"))
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `count` objects named `<stem>-NN.bin` of `size` bytes each, seeded from `seed` on.
fn alike(stem: &str, count: u64, size: usize, seed: u64) -> Vec<(String, usize, u64)> {
    (0..count)
        .map(|i| (format!("{stem}-{i:02}.bin"), size, seed + i))
        .collect()
}

/// The workers as `blobway workers --json` lists them, by name.
fn fleet(state: &str) -> std::collections::BTreeMap<String, serde_json::Value> {
    let out = run(blobway(Path::new(state)).args(["workers", "--json"]));
    assert_eq!(out.code, 0, "{}", out.stderr);
    out.stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|w| (w["name"].as_str().unwrap().to_string(), w))
        .collect()
}

/// Every file under `dir`.
fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

fn wait_until(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A migration S3 → Azurite for workers to share: its source objects, uploaded.
struct Migration {
    state: String,
    bucket: String,
    prefix: &'static str,
    container: String,
    /// Each object's name under the prefix, and its bytes.
    expected: std::collections::BTreeMap<String, Vec<u8>>,
}

impl Migration {
    /// A fresh state database and bucket holding `objects` (name, size, seed) under `prefix`.
    async fn new(prefix: &'static str, objects: &[(String, usize, u64)]) -> Migration {
        let s3 = s3_client();
        let bucket = new_bucket(&s3).await;
        let mut expected = std::collections::BTreeMap::new();
        for (name, size, seed) in objects {
            let data = random_bytes(*size, *seed);
            put(&s3, &bucket, &format!("{prefix}/{name}"), &data).await;
            expected.insert(name.clone(), data);
        }
        Migration {
            state: fresh_database(),
            bucket,
            prefix,
            container: unique(prefix),
            expected,
        }
    }

    /// Asks `worker` to copy it (1 MiB chunks); the other workers find the job themselves.
    async fn ask(&self, worker: &Worker) {
        let created = reqwest::Client::new()
            .post(format!("{}/v1/jobs", worker.url))
            .bearer_auth(TOKEN)
            .json(&serde_json::json!({
                "source": format!("s3://{}/{}/", self.bucket, self.prefix),
                "destinations": [format!("az://{}/", self.container)],
                "options": { "chunk_size": 1 << 20 },
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(created.status(), 202, "{}", created.text().await.unwrap());
    }

    /// Waits until the job is DONE, then checks every object arrived byte for byte.
    async fn assert_done_whole(&self) {
        wait_until("the job is done", Duration::from_secs(180), || {
            let jobs = recorded_jobs(blobway(Path::new(&self.state)));
            jobs.first().is_some_and(|j| j["state"] == "DONE")
        });
        let copied = azure_contents(&self.container, "").await;
        assert_eq!(copied.len(), self.expected.len());
        for (key, data) in &self.expected {
            assert!(copied.get(key) == Some(data), "{key} differs at Azurite");
        }
    }
}

/// Three workers share one migration S3 → Azurite; one is killed -9 for good mid-run, another
/// killed and started again under its name: every object arrives whole, each worker that
/// lived moved some of it, and nothing is left claimed.
#[tokio::test(flavor = "multi_thread")]
async fn three_workers_share_a_migration_through_kills() {
    let objects: Vec<(String, usize, u64)> = (0..40u64)
        .map(|i| {
            (
                format!("small-{i:02}.bin"),
                100_000 + (i as usize) * 7_919,
                i,
            )
        })
        .chain((0..4u64).map(|i| (format!("big-{i}.bin"), 6 * 1024 * 1024 + 12_345, 100 + i)))
        .collect();
    let m = Migration::new("fleet", &objects).await;
    let state = m.state.clone();
    let w1 = Worker::start(&state, "w1", None);
    let w2 = Worker::start(&state, "w2", None);
    let w3 = Worker::start(&state, "w3", None);
    // The job is asked of one worker; the others find it in the shared state.
    m.ask(&w1).await;
    let moved = |w: &serde_json::Value| w["chunks_moved"].as_i64().unwrap_or(0);
    wait_until("every worker moved a chunk", LONG, || {
        let fleet = fleet(&state);
        ["w1", "w2", "w3"]
            .iter()
            .all(|n| fleet.get(*n).is_some_and(|w| moved(w) > 0))
    });
    // w2 dies for good with claims in hand; w3 dies and comes back under its name.
    let claimed_by_w2 = fleet(&state)["w2"]["claimed"].as_i64().unwrap();
    drop(w2.kill());
    let home = w3.kill();
    let w3 = Worker::start(&state, "w3", Some(home));
    m.assert_done_whole().await;
    let fleet = fleet(&state);
    assert!(
        moved(&fleet["w1"]) > 0 && moved(&fleet["w3"]) > 0,
        "{fleet:?}"
    );
    // Each worker that ended the job let go of what it held; w2's claims were given back.
    wait_until("nothing is left claimed", Duration::from_secs(10), || {
        number(
            &state,
            "SELECT count(*) FROM blobway_objects WHERE owner IS NOT NULL",
        ) == 0
    });
    assert_eq!(fleet["w2"]["state"], "expired", "{fleet:?}");
    eprintln!(
        "w2 held {claimed_by_w2} objects when killed; w1 moved {} chunks, w3 (restarted) {}",
        moved(&fleet["w1"]),
        moved(&fleet["w3"])
    );
    drop((w1, w3));
}

/// The acceptance run: three workers copy 200 objects, one of them 256 MiB in 1 MiB chunks,
/// S3 → Azurite, each worker through its own proxy that counts Put Block requests. One is
/// killed -9 for good once it moved chunks of the big object, another killed and started
/// again: every object arrives whole, the big object's chunks were moved by two workers or
/// more, and a block was stored twice only where a killed worker sent it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_huge_objects_chunks_move_on_every_worker_and_only_killed_workers_blocks_go_twice() {
    const HUGE: usize = 256 << 20;
    let objects: Vec<(String, usize, u64)> = std::iter::once(("huge.bin".to_string(), HUGE, 7))
        .chain((0..189u64).map(|i| (format!("small-{i:03}.bin"), 20_000 + (i as usize) * 211, i)))
        .chain((0..10u64).map(|i| (format!("three-{i}.bin"), 3 * 1024 * 1024 - 5, 300 + i)))
        .collect();
    let m = Migration::new("huge", &objects).await;
    let state = m.state.clone();
    let upstream = azurite_origin();
    // One proxy per worker's life, so every Put Block is known by who sent it.
    let mut lives: Vec<(&str, proxy::Proxy)> = Vec::new();
    for name in ["w1", "w2", "w3"] {
        let proxy = proxy::Proxy::start(&upstream, proxy::FaultConfig::none(proxy::Flavor::Azure));
        lives.push((name, proxy.await));
    }
    let w1 = behind(&state, "w1", None, &lives[0].1);
    let w2 = behind(&state, "w2", None, &lives[1].1);
    let w3 = behind(&state, "w3", None, &lives[2].1);
    m.ask(&w1).await;
    // Successful Put Blocks of the huge object through life `at`'s proxy.
    let huge_blocks = |lives: &Vec<(&str, proxy::Proxy)>, at: usize| {
        put_blocks(&lives[at].1)
            .into_iter()
            .filter(|(path, _)| path.ends_with("/huge.bin"))
            .count()
    };
    let asked = Instant::now();
    // Helpers borrow once the small objects are claimed; the machine may be busy.
    wait_until("w2 moved chunks of the huge object", 3 * LONG, || {
        huge_blocks(&lives, 1) > 0
    });
    drop(w2.kill());
    let w2_killed = asked.elapsed();
    wait_until("w3 moved chunks of the huge object", 3 * LONG, || {
        huge_blocks(&lives, 2) > 0
    });
    let home = w3.kill();
    let w3_killed = asked.elapsed();
    let killed = [1usize, 2];
    let proxy = proxy::Proxy::start(&upstream, proxy::FaultConfig::none(proxy::Flavor::Azure));
    lives.push(("w3", proxy.await));
    let w3 = behind(&state, "w3", Some(home), &lives[3].1);
    m.assert_done_whole().await;
    // Every successful Put Block, by (blob, block ID), with the lives that sent it.
    let mut sent: std::collections::BTreeMap<(String, String), Vec<usize>> = Default::default();
    for (at, (_, proxy)) in lives.iter().enumerate() {
        for block in put_blocks(proxy) {
            sent.entry(block).or_default().push(at);
        }
    }
    let twice: Vec<_> = sent.iter().filter(|(_, by)| by.len() > 1).collect();
    for ((blob, block), by) in &twice {
        assert!(
            by.iter().any(|at| killed.contains(at)),
            "block {block} of {blob} was stored {} times, by lives {by:?}, none of them killed",
            by.len()
        );
    }
    let huge_by: Vec<usize> = (0..lives.len())
        .filter(|at| huge_blocks(&lives, *at) > 0)
        .collect();
    assert!(
        huge_by.len() >= 2,
        "the huge object's chunks moved on one worker only: {huge_by:?}"
    );
    let per_life: Vec<String> = lives
        .iter()
        .enumerate()
        .map(|(at, (name, _))| format!("{name}: {} huge blocks", huge_blocks(&lives, at)))
        .collect();
    eprintln!(
        "{} blocks stored, {} more than once (all sent by a killed worker); {}; w2 killed \
         after {w2_killed:?}, w3 after {w3_killed:?}, done after {:?}",
        sent.len(),
        twice.len(),
        per_life.join(", "),
        asked.elapsed()
    );
    drop((w1, w3));
}

/// A worker capped at 12 MiB/s whose Azure requests go through `proxy`.
fn behind(
    state: &str,
    name: &str,
    home: Option<tempfile::TempDir>,
    proxy: &proxy::Proxy,
) -> Worker {
    let env = [
        (
            "AZURE_STORAGE_CONNECTION_STRING",
            azurite_connection_string_at(&proxy.url),
        ),
        ("BLOBWAY_WORKER_LEASE", "5".to_string()),
        ("BLOBWAY_LOG", "info,blobway::engine=debug".to_string()),
    ];
    Worker::start_with(state, name, home, "12M", &env)
}

/// A worker whose credentials the destination refuses steps aside (quarantined: its claims go
/// back, and it says why in `blobway workers`) instead of failing objects; the other worker
/// finishes the job with no object failed.
#[tokio::test(flavor = "multi_thread")]
async fn a_worker_given_bad_credentials_steps_aside_and_fails_no_object() {
    let objects: Vec<(String, usize, u64)> = (0..12u64)
        .map(|i| (format!("q-{i:02}.bin"), 2 * 1024 * 1024 + 321, 700 + i))
        .chain((0..12u64).map(|i| (format!("s-{i:02}.bin"), 50_000, 800 + i)))
        .collect();
    let m = Migration::new("quarantine", &objects).await;
    let state = m.state.clone();
    let w1 = Worker::start_with(&state, "w1", None, "4M", &[]);
    // The right account, a wrong key: Azurite refuses every request's signature.
    let wrong_key = azurite_connection_string().replace(
        blobway::store::azure::AZURITE_KEY,
        "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXktd3Jvbmcta2V5LXdyb25nLWtleQ==",
    );
    assert_ne!(wrong_key, azurite_connection_string());
    let w2 = Worker::start_with(
        &state,
        "w2",
        None,
        "4M",
        &[("AZURE_STORAGE_CONNECTION_STRING", wrong_key)],
    );
    m.ask(&w1).await;
    wait_until("w2 stepped aside", LONG, || {
        fleet(&state)
            .get("w2")
            .is_some_and(|w| w["state"] == "quarantined")
    });
    let listed = run(blobway(Path::new(&state)).arg("workers"));
    assert!(
        listed.stdout.contains("w2 stepped aside") && listed.stdout.contains("AUTH"),
        "{}",
        listed.stdout
    );
    m.assert_done_whole().await;
    let jobs = run(blobway(Path::new(&state)).args(["jobs", "--json"]));
    let job: serde_json::Value = serde_json::from_str(jobs.stdout.lines().next().unwrap()).unwrap();
    assert_eq!(job["progress"]["files_failed"], 0, "{job}");
    assert_eq!(job["progress"]["files_done"], 24, "{job}");
    assert_eq!(
        number(
            &state,
            "SELECT count(*) FROM blobway_objects WHERE owner IS NOT NULL"
        ),
        0,
        "w2 gave back what it claimed"
    );
    let fleet = fleet(&state);
    assert_eq!(fleet["w2"]["chunks_moved"], 0, "{fleet:?}");
    assert_eq!(fleet["w2"]["state"], "quarantined", "{fleet:?}");
    drop((w1, w2));
}

/// The concurrency and the bandwidth cap set on one worker are obeyed by every worker within
/// a second or two, and a cap on the fleet's chunks in flight is shared out among the live
/// workers.
#[tokio::test(flavor = "multi_thread")]
async fn settings_set_on_one_worker_are_obeyed_by_all_and_the_fleet_cap_is_shared() {
    let state = fresh_database();
    let fleet_cap = [("BLOBWAY_FLEET_MAX_IN_FLIGHT", "5".to_string())];
    let w1 = Worker::start_with(&state, "w1", None, "1M", &fleet_cap);
    let w2 = Worker::start_with(&state, "w2", None, "1M", &[]);
    let api = reqwest::Client::new();
    // Five chunks in flight for the fleet: three for w1, two for w2 (by name).
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let limits = (
            w1.gauge("blobway_concurrency_limit ").await,
            w2.gauge("blobway_concurrency_limit ").await,
        );
        if limits == (3.0, 2.0) {
            break;
        }
        assert!(Instant::now() < deadline, "limits {limits:?}, not (3, 2)");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Lifted: each worker goes back to its own limit.
    execute(
        &state,
        "UPDATE blobway_meta SET value = '' WHERE name = 'setting.fleet_in_flight'",
    );
    let asked = api
        .put(format!("{}/v1/concurrency", w1.url))
        .bearer_auth(TOKEN)
        .json(&serde_json::json!({ "limit": 7 }))
        .send()
        .await
        .unwrap();
    assert_eq!(asked.status(), 202);
    let asked = api
        .put(format!("{}/v1/bwlimit", w2.url))
        .bearer_auth(TOKEN)
        .json(&serde_json::json!({ "bwlimit": "3MiB/s" }))
        .send()
        .await
        .unwrap();
    assert_eq!(asked.status(), 202);
    let asked_at = Instant::now();
    loop {
        let seen = (
            w2.gauge("blobway_concurrency_limit ").await,
            w1.gauge("blobway_bwlimit_bytes_per_second ").await,
        );
        if seen == (7.0, 3.0 * 1024.0 * 1024.0) {
            break;
        }
        assert!(
            asked_at.elapsed() < Duration::from_secs(3),
            "w2's limit and w1's cap after 3 s: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("settings followed after {:?}", asked_at.elapsed());
    // Adaptive: followed as a mode (each worker's limit its own), never echoed back and forth.
    let asked = api
        .put(format!("{}/v1/concurrency", w1.url))
        .bearer_auth(TOKEN)
        .json(&serde_json::json!({ "auto": true }))
        .send()
        .await
        .unwrap();
    assert_eq!(asked.status(), 202);
    let deadline = Instant::now() + Duration::from_secs(5);
    while w2.gauge("blobway_concurrency_adaptive ").await != 1.0 {
        assert!(Instant::now() < deadline, "w2 did not turn adaptive");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let recorded = || {
        number(
            &state,
            "SELECT count(*) FROM blobway_meta WHERE name = 'setting.concurrency' \
             AND value LIKE '%\"adaptive\":true%'",
        )
    };
    let value = |state: &str| {
        common::postgres::text(
            state,
            "SELECT value FROM blobway_meta WHERE name = 'setting.concurrency'",
        )
    };
    assert_eq!(recorded(), 1);
    let first = value(&state);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        value(&state),
        first,
        "the workers echo the setting to each other"
    );
    // Any worker's API and metrics show the whole fleet.
    let listed: Vec<serde_json::Value> = api
        .get(format!("{}/v1/workers", w2.url))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let names: BTreeSet<&str> = listed.iter().filter_map(|w| w["name"].as_str()).collect();
    assert_eq!(names, BTreeSet::from(["w1", "w2"]), "{listed:?}");
    assert_eq!(w1.gauge("blobway_workers{state=\"running\"} ").await, 2.0);
    assert!(
        w1.gauge("blobway_worker_chunks_moved{worker=\"w2\"} ")
            .await
            >= 0.0
    );
    drop((w1, w2));
}

/// A worker given bad credentials with no other worker left to go on (the good one was
/// killed) records the job FAILED with the reason, as a blobway of its own does, rather than
/// step aside forever; no object failed.
#[tokio::test(flavor = "multi_thread")]
async fn a_worker_given_bad_credentials_with_nobody_left_fails_the_job_with_the_reason() {
    let objects = alike("q", 16, 2 * 1024 * 1024 + 99, 1700);
    let m = Migration::new("alone", &objects).await;
    let state = m.state.clone();
    let w1 = Worker::start_with(&state, "w1", None, "1M", &[]);
    let wrong_key = azurite_connection_string().replace(
        blobway::store::azure::AZURITE_KEY,
        "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXktd3Jvbmcta2V5LXdyb25nLWtleQ==",
    );
    let w2 = Worker::start_with(
        &state,
        "w2",
        None,
        "1M",
        &[
            ("AZURE_STORAGE_CONNECTION_STRING", wrong_key),
            ("BLOBWAY_WORKER_QUARANTINE", "2".to_string()),
        ],
    );
    m.ask(&w1).await;
    wait_until("w2 stepped aside", LONG, || {
        fleet(&state)
            .get("w2")
            .is_some_and(|w| w["state"] == "quarantined")
    });
    drop(w1.kill());
    wait_until("the job is recorded FAILED", LONG, || {
        recorded_jobs(blobway(Path::new(&state)))
            .first()
            .is_some_and(|j| j["state"] == "FAILED")
    });
    let job = &recorded_jobs(blobway(Path::new(&state)))[0];
    let error = job["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("AUTH") || error.contains("credential"),
        "{job}"
    );
    let jobs = run(blobway(Path::new(&state)).args(["jobs", "--json"]));
    let line: serde_json::Value =
        serde_json::from_str(jobs.stdout.lines().next().unwrap()).unwrap();
    assert_eq!(line["progress"]["files_failed"], 0, "{line}");
    drop(w2);
}

/// The Put Block requests a proxy forwarded that the store took (201): (blob path, block ID).
fn put_blocks(proxy: &proxy::Proxy) -> Vec<(String, String)> {
    let answered = proxy.stats.answered.lock().unwrap();
    answered
        .iter()
        .filter(|(_, status)| *status == 201)
        .filter_map(|(path, _)| {
            let (blob, query) = path.split_once('?')?;
            let mut pairs = query.split('&');
            pairs.clone().find(|p| *p == "comp=block")?;
            let id = pairs.find_map(|p| p.strip_prefix("blockid="))?;
            Some((blob.to_string(), id.to_string()))
        })
        .collect()
}

/// A worker stopped (SIGSTOP) past its lease and then continued records, commits and gives up
/// nothing: it learns its lease is gone and stops; the others finish every object whole.
#[tokio::test(flavor = "multi_thread")]
async fn a_worker_stopped_past_its_lease_is_fenced() {
    let objects = alike("o", 12, 3 * 1024 * 1024 + 999, 500);
    let m = Migration::new("stop", &objects).await;
    let state = m.state.clone();
    let mut w1 = Worker::start(&state, "w1", None);
    let w2 = Worker::start(&state, "w2", None);
    m.ask(&w1).await;
    wait_until("w1 holds claims", LONG, || {
        fleet(&state)
            .get("w1")
            .is_some_and(|w| w["claimed"].as_i64().unwrap_or(0) > 0)
    });
    let pid = w1.child.id().to_string();
    let signal = |sig: &str| {
        let status = std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .expect("kill");
        assert!(status.success());
    };
    signal("-STOP");
    wait_until("w1's claims went to w2", Duration::from_secs(30), || {
        let fleet = fleet(&state);
        fleet["w1"]["state"] == "expired" && fleet["w1"]["claimed"] == 0
    });
    signal("-CONT");
    // w1 learns at once that it lost its lease, and stops without recording anything.
    let status = {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = w1.child.try_wait().expect("wait") {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "w1 went on after its lease ran out"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    assert!(!status.success());
    let said = w1.stderr.lock().unwrap().join("\n");
    assert!(said.contains("lease"), "{said}");
    assert_eq!(
        fleet(&state)["w1"]["state"],
        "expired",
        "w1 renewed nothing after it was continued"
    );
    m.assert_done_whole().await;
    assert_eq!(w1.name, "w1");
    drop(w2);
}

/// Pause asked of one worker holds every worker within a second (no new chunk starts
/// anywhere), and resume asked of another starts them all again.
#[tokio::test(flavor = "multi_thread")]
async fn pause_on_one_worker_holds_them_all_and_resume_on_another_goes_on() {
    let objects = alike("o", 16, 2 * 1024 * 1024 + 77, 900);
    let m = Migration::new("pause", &objects).await;
    let state = m.state.clone();
    // Not listening (as behind PgBouncer): the count of changes polled each tick suffices.
    let deaf = [("BLOBWAY_STATE_LISTEN", "off".to_string())];
    let w1 = Worker::start_with(&state, "w1", None, "1M", &deaf);
    let w2 = Worker::start_with(&state, "w2", None, "1M", &deaf);
    let api = reqwest::Client::new();
    m.ask(&w1).await;
    let deadline = Instant::now() + LONG;
    loop {
        let fleet = fleet(&state);
        let both = ["w1", "w2"].iter().all(|n| {
            fleet
                .get(*n)
                .is_some_and(|w| w["chunks_moved"].as_i64().unwrap_or(0) > 0)
        });
        if both {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not both workers moved a chunk: {fleet:?}\n{}\n{}",
            w1.log_tail(),
            w2.log_tail()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let asked = api
        .post(format!("{}/v1/jobs/1/pause", w1.url))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert!(asked.status().is_success(), "{}", asked.status());
    let paused_at = Instant::now();
    loop {
        if w2.job(1).await["state"] == "PAUSED" {
            break;
        }
        assert!(
            paused_at.elapsed() < Duration::from_secs(1),
            "w2 still runs the job 1 s after w1 paused it"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Once the chunks in flight are back, nothing more moves anywhere.
    for w in [&w1, &w2] {
        let deadline = Instant::now() + LONG;
        while w.job(1).await["in_flight"].as_u64().unwrap_or(0) > 0 {
            assert!(
                Instant::now() < deadline,
                "chunks in flight never came back"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let done_bytes = || {
        run(blobway(Path::new(&state)).args(["jobs", "--json"]))
            .stdout
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .map(|l| l["progress"]["bytes_done"].as_u64().unwrap_or(0))
            .next()
            .unwrap_or(0)
    };
    let before = done_bytes();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        done_bytes(),
        before,
        "bytes moved while every worker was paused"
    );
    assert!(
        before < m.expected.values().map(|d| d.len() as u64).sum::<u64>(),
        "the job was not over before the pause"
    );
    let resumed = api
        .post(format!("{}/v1/jobs/1/resume", w2.url))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert!(resumed.status().is_success());
    let resumed_at = Instant::now();
    loop {
        let state = w1.job(1).await["state"].clone();
        if state == "RUNNING" || state == "DONE" {
            break;
        }
        assert!(
            resumed_at.elapsed() < Duration::from_secs(1),
            "w1 still paused 1 s after w2 resumed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    m.assert_done_whole().await;
}

/// An operator's terminal attached to one of three workers (the one whose data folder it
/// shares) shows the whole fleet; `P` there stops new chunks on every worker within a
/// second, nothing moves while paused, and `R` there lets the migration finish.
#[tokio::test(flavor = "multi_thread")]
async fn pause_from_one_workers_terminal_stops_new_chunks_on_every_worker_within_a_second() {
    use common::tmux::{Tmux, status_line};
    let objects = alike("t", 24, 2 * 1024 * 1024 + 91, 1200);
    let m = Migration::new("tui-pause", &objects).await;
    let state = m.state.clone();
    let names = ["worker-a", "worker-b", "worker-c"];
    let workers: Vec<Worker> = names
        .iter()
        .map(|n| Worker::start(&state, n, None))
        .collect();
    m.ask(&workers[0]).await;
    wait_until("every worker moved a chunk", LONG, || {
        let fleet = fleet(&state);
        names.iter().all(|n| {
            fleet
                .get(*n)
                .is_some_and(|w| w["chunks_moved"].as_i64().unwrap_or(0) > 0)
        })
    });

    // The terminal finds worker-b: the worker serving this database from its data folder.
    let attached = &workers[1];
    let terminal = Tmux::start(
        &format!(
            "env BLOBWAY_STATE='{state}' XDG_DATA_HOME='{}' '{}'; echo BLOBWAY-EXIT-$?; sleep 30",
            attached.home.path().display(),
            env!("CARGO_BIN_EXE_blobway")
        ),
        160,
        48,
    );
    let wait = Duration::from_secs(20);
    let screen = terminal.wait_for("the job and the whole fleet", wait, |s| {
        s.contains("RUNNING") && names.iter().all(|n| s.contains(n))
    });
    assert!(!screen.contains("BLOBWAY-EXIT-"), "{screen}");

    terminal.send("P");
    let asked = Instant::now();
    let mut paused = vec![false; workers.len()];
    while paused.contains(&false) {
        for (w, done) in workers.iter().zip(paused.iter_mut()) {
            *done = *done || w.job(1).await["state"] == "PAUSED";
        }
        assert!(
            asked.elapsed() < Duration::from_secs(1),
            "1 s after P in the terminal, paused at {:?} of {names:?}",
            paused
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("every worker paused {:?} after P", asked.elapsed());
    terminal.wait_for("PAUSED in the terminal", wait, |s| {
        status_line(s).contains("PAUSED")
    });
    // Paused, a worker starts nothing: its chunks in flight only come back.
    for w in &workers {
        let mut last = u64::MAX;
        let deadline = Instant::now() + LONG;
        loop {
            let now = w.job(1).await["in_flight"].as_u64().unwrap_or(0);
            assert!(now <= last, "{} started a chunk while paused", w.name);
            if now == 0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "chunks in flight never came back"
            );
            last = now;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // Each worker's own count of bytes sent (live; the workers list lags a heartbeat).
    let sent = || async {
        let mut sent = Vec::new();
        for w in &workers {
            sent.push(w.gauge("blobway_transferred_bytes_total ").await as u64);
        }
        sent
    };
    let before = sent().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        sent().await,
        before,
        "bytes moved while every worker was paused"
    );
    assert!(
        before.iter().all(|b| *b > 0),
        "a worker never moved: {before:?}"
    );
    let total: u64 = before.iter().sum();
    let whole: usize = objects.iter().map(|(_, size, _)| size).sum();
    assert!(
        total < whole as u64,
        "the job was over before the pause: {before:?}"
    );

    terminal.send("R");
    terminal.wait_for("RUNNING again in the terminal", wait, |s| {
        status_line(s).contains("RUNNING") || s.contains("DONE")
    });
    m.assert_done_whole().await;
}

/// A job or a setting recorded by one worker is heard by the others at once (NOTIFY), and
/// moves the count of changes they poll as the fallback; other writes move neither.
#[tokio::test(flavor = "multi_thread")]
async fn a_change_recorded_by_one_worker_is_heard_by_the_others_and_counted() {
    let url = fresh_database();
    let (a, b) = tokio::task::spawn_blocking({
        let url = url.clone();
        move || (worker(&url, "a"), worker(&url, "b"))
    })
    .await
    .unwrap();
    let signal = a.change_signal().expect("a worker listens");
    let count = |db: &StateDb| db.changes().expect("read").expect("shared");
    // The listening connection comes up in the background: a first change is heard by then.
    let heard_within = |within: Duration| {
        let signal = signal.clone();
        async move {
            tokio::time::timeout(within, signal.notified())
                .await
                .is_ok()
        }
    };
    let before = count(&a);
    b.apply(&[Write::Setting("bwlimit", "3MiB".into())])
        .expect("b sets");
    assert!(
        heard_within(Duration::from_secs(5)).await,
        "a heard nothing"
    );
    assert_eq!(count(&a), before + 1);
    b.apply(&[Write::Job(job_record(1))])
        .expect("b records a job");
    assert!(
        heard_within(Duration::from_secs(1)).await,
        "a did not hear the job within a second"
    );
    assert_eq!(count(&a), before + 2);
    // A chunk's record is not a change to follow.
    b.apply(&[
        Write::File(1, 0, FileRecord::new("k", "k", 16, "\"e\"", 8, 2)),
        Write::Chunk(1, 0, 0, ChunkRecord::pending()),
    ])
    .expect("b plans");
    assert!(
        !heard_within(Duration::from_millis(500)).await,
        "heard a chunk"
    );
    assert_eq!(count(&a), before + 2);
    // A state file has nobody else to hear from.
    let dir = tempfile::tempdir().unwrap();
    let file = StateDb::open(&dir.path().join("s.redb")).unwrap();
    assert!(file.change_signal().is_none());
    assert_eq!(file.changes().unwrap(), None);
}
