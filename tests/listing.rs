//! Listing pipelined with transfer: a new job's objects are copied while its source is still
//! listed, the listing's position is recorded with each page, and a listing stopped part-way
//! (the engine killed) resumes from that position on the next start — nothing listed twice,
//! nothing planned twice, everything copied.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use blobway::engine::{
    Command, ControllerConfig, Engine, EngineConfig, Event, RetryPolicy, StoreFactory,
};
use blobway::location::Location;
use blobway::state::{JobOptions, JobState, StateDb};
use blobway::store::local::LocalStore;
use blobway::store::{
    Access, Chunk, Listed, ObjectInfo, ObjectSink, ObjectSource, Page, StoreResult,
};
use bytes::BytesMut;

const OBJECTS: usize = 1000;
const PAGE: usize = 100;

/// A local folder listed a page of `PAGE` at a time; every `after` it is asked from is kept,
/// and once `pages_allowed` pages were given it never answers again (a listing cut short).
struct PagedSource {
    inner: LocalStore,
    asked: Arc<Mutex<Vec<Option<String>>>>,
    pages_allowed: Arc<AtomicUsize>,
    /// This page (counted from 1) comes back empty though it covers its keys, as an S3 page
    /// of folder markers does.
    hollow: Option<usize>,
}

#[async_trait]
impl ObjectSource for PagedSource {
    async fn list(&self, prefix: &str, single: bool) -> StoreResult<Vec<ObjectInfo>> {
        self.inner.list(prefix, single).await
    }

    async fn read_range(
        &self,
        key: &str,
        etag: &str,
        range: Range<u64>,
        buffer: BytesMut,
    ) -> StoreResult<Chunk> {
        self.inner.read_range(key, etag, range, buffer).await
    }

    async fn list_page(&self, prefix: &str, token: Option<String>) -> StoreResult<Page> {
        self.inner.list_page(prefix, token).await
    }

    async fn list_after(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Listed> {
        let given = {
            let mut asked = self.asked.lock().expect("asked");
            asked.push(after.map(str::to_string));
            asked.len()
        };
        if given > self.pages_allowed.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        let mut all = self.inner.list(prefix, false).await?;
        all.sort_by(|a, b| a.key.cmp(&b.key));
        all.retain(|o| after.is_none_or(|after| o.key.as_str() > after));
        let page: Vec<ObjectInfo> = all.iter().take(limit.min(PAGE)).cloned().collect();
        let next = (all.len() > page.len()).then(|| page.last().map(|o| o.key.clone()));
        Ok(Listed {
            objects: if self.hollow == Some(given) {
                Vec::new()
            } else {
                page
            },
            next: next.flatten(),
        })
    }
}

struct Stores {
    asked: Arc<Mutex<Vec<Option<String>>>>,
    pages_allowed: Arc<AtomicUsize>,
    hollow: Option<usize>,
}

#[async_trait]
impl StoreFactory for Stores {
    async fn source(
        &self,
        location: &Location,
        _access: &Access,
    ) -> anyhow::Result<Arc<dyn ObjectSource>> {
        Ok(Arc::new(PagedSource {
            inner: LocalStore::new(&location.container),
            asked: self.asked.clone(),
            pages_allowed: self.pages_allowed.clone(),
            hollow: self.hollow,
        }))
    }

    async fn sink(
        &self,
        location: &Location,
        _access: &Access,
    ) -> anyhow::Result<Arc<dyn ObjectSink>> {
        Ok(Arc::new(LocalStore::new(&location.container)))
    }
}

fn engine(db: &StateDb, stores: Arc<Stores>) -> Engine {
    let config = EngineConfig {
        concurrency: ControllerConfig {
            initial: 8,
            ..ControllerConfig::default()
        },
        adaptive: false,
        max_memory: 64 << 20,
        retry: RetryPolicy {
            max_attempts: 3,
            base: Duration::from_millis(1),
            cap: Duration::from_millis(5),
        },
        checksum: Default::default(),
        exit_when_idle: false,
        bwlimit: None,
    };
    Engine::start(db.clone(), config, stores).expect("engine")
}

/// Events until one matches, within 30 s.
async fn until(engine: &mut Engine, what: &str, matches: impl Fn(&Event) -> bool) -> Event {
    let wait = async {
        loop {
            match engine.events.recv().await {
                Some(event) if matches(&event) => return event,
                Some(_) => {}
                None => panic!("the engine stopped before {what}"),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), wait)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

fn key(i: usize) -> String {
    format!("f{i:05}.txt")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_stopped_part_way_resumes_from_its_recorded_position_and_plans_nothing_twice() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (src, dst): (PathBuf, PathBuf) = (dir.path().join("src"), dir.path().join("dst"));
    std::fs::create_dir_all(&src).expect("src");
    for i in 0..OBJECTS {
        std::fs::write(src.join(key(i)), format!("object {i}")).expect("write");
    }
    let db = StateDb::open(&dir.path().join("state.redb")).expect("state");
    let stores = Arc::new(Stores {
        asked: Arc::new(Mutex::new(Vec::new())),
        pages_allowed: Arc::new(AtomicUsize::new(3)),
        hollow: None,
    });

    // The first run lists three pages, then its listing hangs: the objects listed are copied
    // meanwhile (the job runs while it lists).
    let mut first = engine(&db, stores.clone());
    first
        .handle
        .send(Command::Enqueue {
            source: format!("{}/", src.display()),
            destination: format!("{}/", dst.display()),
            options: JobOptions::default(),
        })
        .await
        .expect("enqueue");
    let mut committed = 0;
    while committed < 3 * PAGE {
        until(&mut first, "objects of the listed pages", |e| {
            matches!(e, Event::ObjectCommitted { .. })
        })
        .await;
        committed += 1;
    }
    let job = db.jobs().expect("jobs")[0].id;
    let listing = db
        .listing(job)
        .expect("listing")
        .expect("a listing under way");
    assert_eq!(
        listing.after,
        Some(key(3 * PAGE - 1)),
        "the last key planned"
    );
    assert_eq!(
        db.progress(job).expect("progress").files_total,
        3 * PAGE as u64
    );
    // Killed: nothing more is written.
    first.task.abort();
    let _ = first.task.await;

    // The next start lists on from the recorded key, to the end.
    stores.pages_allowed.store(usize::MAX, Ordering::SeqCst);
    let asked_before = stores.asked.lock().expect("asked").len();
    let mut second = engine(&db, stores.clone());
    second
        .handle
        .send(Command::Load {
            job: None,
            include_paused: false,
        })
        .await
        .expect("resume");
    let finished = until(&mut second, "the job to finish", |e| {
        matches!(e, Event::JobFinished { .. })
    })
    .await;
    let Event::JobFinished {
        state, progress, ..
    } = finished
    else {
        unreachable!()
    };
    assert_eq!(state, JobState::Done);
    assert_eq!(
        progress.files_total, OBJECTS as u64,
        "each object recorded once"
    );
    assert_eq!(progress.files_done, OBJECTS as u64);
    let asked = stores.asked.lock().expect("asked").clone();
    assert_eq!(
        asked[asked_before],
        Some(key(3 * PAGE - 1)),
        "the listing went on from its recorded position"
    );
    assert!(
        !asked[asked_before..].contains(&None),
        "nothing was listed from the start again: {asked:?}"
    );
    assert_eq!(
        db.listing(job).expect("listing"),
        None,
        "the listing is complete"
    );
    for i in 0..OBJECTS {
        assert_eq!(
            std::fs::read_to_string(dst.join(key(i))).expect("copied"),
            format!("object {i}")
        );
    }
    let _ = second.handle.send(Command::Shutdown).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_page_in_the_middle_of_a_listing_does_not_end_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (src, dst): (PathBuf, PathBuf) = (dir.path().join("src"), dir.path().join("dst"));
    std::fs::create_dir_all(&src).expect("src");
    for i in 0..OBJECTS {
        std::fs::write(src.join(key(i)), format!("object {i}")).expect("write");
    }
    let db = StateDb::open(&dir.path().join("state.redb")).expect("state");
    // Page 2 comes back empty (its keys covered, as markers are); page 3 never comes.
    let stores = Arc::new(Stores {
        asked: Arc::new(Mutex::new(Vec::new())),
        pages_allowed: Arc::new(AtomicUsize::new(2)),
        hollow: Some(2),
    });
    let mut run = engine(&db, stores.clone());
    run.handle
        .send(Command::Enqueue {
            source: format!("{}/", src.display()),
            destination: format!("{}/", dst.display()),
            options: JobOptions::default(),
        })
        .await
        .expect("enqueue");
    let mut committed = 0;
    while committed < PAGE {
        until(&mut run, "objects of the first page", |e| {
            matches!(e, Event::ObjectCommitted { .. })
        })
        .await;
        committed += 1;
    }
    let job = db.jobs().expect("jobs")[0].id;
    // The empty page is recorded as covering its keys, and the listing as going on.
    let recorded = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let asked = stores.asked.lock().expect("asked").len();
            match db.listing(job).expect("listing") {
                Some(listing) if asked >= 3 => return Some(listing),
                Some(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                None => return None,
            }
        }
    })
    .await
    .expect("the third page asked for");
    let listing = recorded.expect("still listing after an empty page");
    assert_eq!(
        listing.after,
        Some(key(2 * PAGE - 1)),
        "the key the empty page covered"
    );
    assert_eq!(db.progress(job).expect("progress").files_total, PAGE as u64);
    let asked = stores.asked.lock().expect("asked").clone();
    assert_eq!(
        asked[2],
        Some(key(2 * PAGE - 1)),
        "the next page follows the empty one"
    );
    run.task.abort();
}

/// The real binary, SIGKILLed while it still lists a local folder of 20,000 files (a
/// position is recorded per 1,000), then run again: the listing goes on from the recorded
/// key, every object is recorded once under one index, and the destination is complete.
#[test]
fn sigkill_during_listing_then_a_rerun_lists_on_from_the_recorded_key() {
    use std::io::BufRead;
    use std::process::{Command, Stdio};

    const FILES: usize = 20_000;
    let src = tempfile::tempdir().expect("src");
    for i in 0..FILES {
        let dir = src.path().join(format!("d{:02}", i % 20));
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join(format!("f{i:05}")), (i % 251).to_le_bytes()).expect("file");
    }
    let blobway = |state: &std::path::Path| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_blobway"));
        cmd.env("BLOBWAY_STATE", state)
            .env("BLOBWAY_NO_DAEMON", "1")
            .stdin(Stdio::null())
            .stderr(Stdio::null());
        cmd
    };
    // A kill lands mid-listing when the state file still holds a listing position after it.
    let mut landed = None;
    for attempt in 0..5 {
        let dst = tempfile::tempdir().expect("dst");
        let state_dir = tempfile::tempdir().expect("state");
        let state = state_dir.path().join("s.redb");
        let args = [
            "copy".to_string(),
            format!("file://{}/", src.path().display()),
            format!("file://{}/", dst.path().display()),
            "--json".into(),
        ];
        let mut child = blobway(&state)
            .args(&args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn");
        // Killed at its first copied object: listing and copying overlap.
        let stdout = child.stdout.take().expect("stdout");
        let copied = std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .any(|line| line.contains("\"chunk_completed\""));
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
        assert!(
            copied,
            "attempt {attempt}: nothing was copied before the run ended"
        );
        let db = StateDb::open(&state).expect("state after the kill");
        let job = db.jobs().expect("jobs").remove(0);
        let position = db.listing(job.id).expect("listing").and_then(|l| l.after);
        let recorded = db.progress(job.id).expect("progress").files_total;
        drop(db);
        println!("attempt {attempt}: {recorded} objects recorded, listing at {position:?}");
        if let Some(position) = position {
            assert!(recorded < FILES as u64);
            landed = Some((dst, state_dir, state, args, job.id, position));
            break;
        }
    }
    let (dst, _state_dir, state, args, job, position) =
        landed.expect("no kill landed while the source was still being listed in 5 attempts");

    let rerun = blobway(&state).args(&args).output().expect("rerun");
    assert!(
        rerun.status.success(),
        "{}",
        String::from_utf8_lossy(&rerun.stdout)
    );
    let log =
        std::fs::read_to_string(state.parent().expect("dir").join("blobway.log")).expect("log");
    assert!(
        log.contains(&format!(
            "job {job}: the listing goes on after `{position}`"
        )),
        "the rerun did not go on from `{position}`:\n{log}"
    );
    let db = StateDb::open(&state).expect("state");
    let progress = db.progress(job).expect("progress");
    assert_eq!(
        progress.files_total, FILES as u64,
        "an object was planned twice"
    );
    assert_eq!(progress.files_done, FILES as u64);
    assert_eq!(
        db.next_file_index(job).expect("next index"),
        FILES as u32,
        "an object was given a second index"
    );
    assert_eq!(
        db.job(job).expect("job").expect("job").state,
        JobState::Done
    );
    for i in (0..FILES).step_by(97).chain([FILES - 1]) {
        let rel = format!("d{:02}/f{i:05}", i % 20);
        assert_eq!(
            std::fs::read(dst.path().join(&rel)).expect("copied"),
            (i % 251).to_le_bytes(),
            "{rel}"
        );
    }
    let copied = walkdir_count(dst.path());
    assert_eq!(copied, FILES, "files at the destination");
}

/// Regular files under `dir`, blobway's own staging folder left out.
fn walkdir_count(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry"))
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .map(|e| {
            if e.file_type().expect("type").is_dir() {
                walkdir_count(&e.path())
            } else {
                1
            }
        })
        .sum()
}
