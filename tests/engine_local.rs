//! The engine through its public API (commands in, events out) between local folders, with a
//! destination that fails on demand: the scheduling rules an operator relies on — resuming a
//! paused job, retrying failed objects after a job ended, a fresh retry budget on every run,
//! one plan per route, chunks that cannot fit the memory budget, re-planning after the
//! destination lost an object, blocks in order for a destination that demands it, and an
//! upload started over when its session is lost.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use blobway::engine::{
    Command, ControllerConfig, Engine, EngineConfig, Event, RetryPolicy, StoreFactory,
};
use blobway::location::Location;
use blobway::state::{JobId, JobOptions, JobState, StateDb};
use blobway::store::local::LocalStore;
use blobway::store::{
    Access, BlockRef, Checksum, DestObject, ErrorClass, ObjectMeta, ObjectSink, ObjectSource,
    PlannedBlock, SinkLimits, StoreError, StoreResult, Upload,
};
use bytes::Bytes;

const MIB: usize = 1 << 20;

/// A local destination whose next `failures` uploads fail with `class`.
struct FlakySink {
    inner: LocalStore,
    failures: Arc<AtomicU32>,
    class: ErrorClass,
}

impl FlakySink {
    fn trip(&self) -> StoreResult<()> {
        let left = self.failures.load(Ordering::SeqCst);
        if left > 0
            && self
                .failures
                .compare_exchange(left, left - 1, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
        {
            return Err(StoreError::new(self.class, Some(500), "injected failure"));
        }
        Ok(())
    }
}

#[async_trait]
impl ObjectSink for FlakySink {
    fn limits(&self) -> SinkLimits {
        self.inner.limits()
    }
    async fn prepare(&self) -> StoreResult<()> {
        self.inner.prepare().await
    }
    async fn put_block(
        &self,
        upload: Upload<'_>,
        block: BlockRef<'_>,
        data: Bytes,
    ) -> StoreResult<()> {
        self.trip()?;
        self.inner.put_block(upload, block, data).await
    }
    async fn missing_blocks(
        &self,
        upload: Upload<'_>,
        blocks: &[PlannedBlock],
    ) -> StoreResult<Vec<u32>> {
        self.inner.missing_blocks(upload, blocks).await
    }
    async fn commit(
        &self,
        upload: Upload<'_>,
        blocks: &[PlannedBlock],
        meta: &ObjectMeta,
    ) -> StoreResult<()> {
        self.inner.commit(upload, blocks, meta).await
    }
    async fn put_whole(
        &self,
        upload: Upload<'_>,
        data: Bytes,
        checksum: Checksum,
        meta: &ObjectMeta,
    ) -> StoreResult<()> {
        self.trip()?;
        self.inner.put_whole(upload, data, checksum, meta).await
    }
    async fn head(&self, key: &str) -> StoreResult<Option<DestObject>> {
        self.inner.head(key).await
    }
    async fn list_existing(&self, prefix: &str) -> StoreResult<BTreeMap<String, DestObject>> {
        self.inner.list_existing(prefix).await
    }
}

/// A local destination with upload sessions, like S3 multipart or GCS resumable uploads:
/// `begin` opens one, blocks go to it, and a session can be lost (expired, aborted by someone
/// else). It may demand blocks in order, one at a time, as GCS does, and it logs every block
/// it receives.
#[derive(Default)]
struct SessionSink {
    inner: Option<LocalStore>,
    sequential: bool,
    /// Sessions alive, and how many were opened.
    sessions: Mutex<(HashSet<String>, u32)>,
    /// Put Blocks that find their session lost, from now on: the next N.
    lose: AtomicU32,
    /// (key, block index) in arrival order.
    arrivals: Mutex<Vec<(String, u32)>>,
    /// Put Blocks in flight per key now, and the most ever seen for one key.
    in_flight: Mutex<(BTreeMap<String, u32>, u32)>,
    /// Commits and whole puts that answer success but make nothing visible: the next N.
    lie: AtomicU32,
    /// Put Blocks that fail (503) by block index: how many more times each fails.
    failing_blocks: Mutex<BTreeMap<u32, u32>>,
    /// Checks of what is staged (`missing_blocks`) that fail (503): the next N.
    failing_checks: AtomicU32,
    /// Sessions given up (`abort`), in order.
    aborted: Mutex<Vec<String>>,
    /// Begins that open a session and then lose their answer: the next N.
    lose_begin_answers: AtomicU32,
    /// Put Blocks that store the block and then lose their answer (503), by block index.
    lost_answers: Mutex<BTreeMap<u32, u32>>,
}

impl SessionSink {
    fn local(&self) -> &LocalStore {
        self.inner.as_ref().expect("root")
    }

    /// Whether this commit or whole put is one to lie about.
    fn lies(&self) -> bool {
        let left = self.lie.load(Ordering::SeqCst);
        left > 0
            && self
                .lie
                .compare_exchange(left, left - 1, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
    }

    /// Whether this Put Block of `index` is one to fail.
    fn block_fails(&self, index: u32) -> bool {
        let mut failing = self.failing_blocks.lock().expect("lock");
        match failing.get_mut(&index) {
            Some(left) if *left > 0 => {
                *left -= 1;
                true
            }
            _ => false,
        }
    }

    fn check(&self, upload: Upload<'_>) -> StoreResult<()> {
        let alive = upload
            .session
            .is_some_and(|s| self.sessions.lock().expect("lock").0.contains(s));
        if alive {
            Ok(())
        } else {
            Err(StoreError::new(
                ErrorClass::UploadLost,
                Some(404),
                "no such upload",
            ))
        }
    }
}

#[async_trait]
impl ObjectSink for SessionSink {
    fn limits(&self) -> SinkLimits {
        SinkLimits {
            sequential: self.sequential,
            ..self.local().limits()
        }
    }
    async fn prepare(&self) -> StoreResult<()> {
        self.local().prepare().await
    }
    async fn begin(&self, _upload: Upload<'_>, _meta: &ObjectMeta) -> StoreResult<Option<String>> {
        let mut sessions = self.sessions.lock().expect("lock");
        sessions.1 += 1;
        let session = format!("session-{}", sessions.1);
        sessions.0.insert(session.clone());
        let left = self.lose_begin_answers.load(Ordering::SeqCst);
        if left > 0
            && self
                .lose_begin_answers
                .compare_exchange(left, left - 1, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
        {
            return Err(StoreError::new(
                ErrorClass::Transient,
                None,
                "connection reset (the session was opened)",
            ));
        }
        Ok(Some(session))
    }
    async fn uploads_between(
        &self,
        _key: &str,
        _window: std::ops::Range<i64>,
    ) -> StoreResult<Vec<String>> {
        // One object per test: every open session is that object's.
        Ok(self
            .sessions
            .lock()
            .expect("lock")
            .0
            .iter()
            .cloned()
            .collect())
    }
    async fn put_block(
        &self,
        upload: Upload<'_>,
        block: BlockRef<'_>,
        data: Bytes,
    ) -> StoreResult<()> {
        let left = self.lose.load(Ordering::SeqCst);
        if left > 0
            && self
                .lose
                .compare_exchange(left, left - 1, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
            && let Some(session) = upload.session
        {
            self.sessions.lock().expect("lock").0.remove(session);
        }
        self.check(upload)?;
        if self.block_fails(block.index) {
            return Err(StoreError::new(
                ErrorClass::Transient,
                Some(503),
                "injected block failure",
            ));
        }
        {
            let mut flight = self.in_flight.lock().expect("lock");
            let now = flight.0.entry(upload.key.to_string()).or_default();
            *now += 1;
            let now = *now;
            flight.1 = flight.1.max(now);
        }
        self.arrivals
            .lock()
            .expect("lock")
            .push((upload.key.to_string(), block.index));
        // Long enough for a second block of the same object to overlap, were it allowed.
        tokio::time::sleep(Duration::from_millis(5)).await;
        let mut result = self.local().put_block(upload, block, data).await;
        {
            let mut lost = self.lost_answers.lock().expect("lock");
            if let Some(left) = lost.get_mut(&block.index)
                && *left > 0
                && result.is_ok()
            {
                *left -= 1;
                result = Err(StoreError::new(
                    ErrorClass::Transient,
                    Some(503),
                    "the answer was lost (the block is stored)",
                ));
            }
        }
        *self
            .in_flight
            .lock()
            .expect("lock")
            .0
            .get_mut(upload.key)
            .expect("counted") -= 1;
        result
    }
    async fn missing_blocks(
        &self,
        upload: Upload<'_>,
        blocks: &[PlannedBlock],
    ) -> StoreResult<Vec<u32>> {
        self.check(upload)?;
        let left = self.failing_checks.load(Ordering::SeqCst);
        if left > 0
            && self
                .failing_checks
                .compare_exchange(left, left - 1, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
        {
            return Err(StoreError::new(
                ErrorClass::Transient,
                Some(503),
                "injected check failure",
            ));
        }
        self.local().missing_blocks(upload, blocks).await
    }
    async fn commit(
        &self,
        upload: Upload<'_>,
        blocks: &[PlannedBlock],
        meta: &ObjectMeta,
    ) -> StoreResult<()> {
        self.check(upload)?;
        if self.lies() {
            return Ok(());
        }
        self.local().commit(upload, blocks, meta).await?;
        if let Some(session) = upload.session {
            self.sessions.lock().expect("lock").0.remove(session);
        }
        Ok(())
    }
    async fn abort(&self, upload: Upload<'_>) -> StoreResult<()> {
        if let Some(session) = upload.session {
            self.sessions.lock().expect("lock").0.remove(session);
            self.aborted.lock().expect("lock").push(session.to_string());
        }
        Ok(())
    }
    async fn put_whole(
        &self,
        upload: Upload<'_>,
        data: Bytes,
        checksum: Checksum,
        meta: &ObjectMeta,
    ) -> StoreResult<()> {
        if self.lies() {
            return Ok(());
        }
        self.local().put_whole(upload, data, checksum, meta).await
    }
    async fn head(&self, key: &str) -> StoreResult<Option<DestObject>> {
        self.local().head(key).await
    }
    async fn list_existing(&self, prefix: &str) -> StoreResult<BTreeMap<String, DestObject>> {
        self.local().list_existing(prefix).await
    }
}

struct Stores {
    failures: Arc<AtomicU32>,
    class: ErrorClass,
    sessions: Option<Arc<SessionSink>>,
}

#[async_trait]
impl StoreFactory for Stores {
    async fn source(
        &self,
        location: &Location,
        _access: &Access,
    ) -> anyhow::Result<Arc<dyn ObjectSource>> {
        Ok(Arc::new(LocalStore::new(&location.container)))
    }
    async fn sink(
        &self,
        location: &Location,
        _access: &Access,
    ) -> anyhow::Result<Arc<dyn ObjectSink>> {
        if let Some(sink) = &self.sessions {
            return Ok(sink.clone());
        }
        Ok(Arc::new(FlakySink {
            inner: LocalStore::new(&location.container),
            failures: self.failures.clone(),
            class: self.class,
        }))
    }
}

struct Setup {
    _dir: tempfile::TempDir,
    src: PathBuf,
    dst: PathBuf,
    state: PathBuf,
    failures: Arc<AtomicU32>,
}

fn setup(files: &[(&str, usize)]) -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
    std::fs::create_dir_all(&src).expect("src");
    for (i, (name, size)) in files.iter().enumerate() {
        let data: Vec<u8> = (0..*size).map(|b| (b * 7 + i) as u8).collect();
        std::fs::write(src.join(name), data).expect("write");
    }
    Setup {
        state: dir.path().join("state.redb"),
        src,
        dst,
        _dir: dir,
        failures: Arc::new(AtomicU32::new(0)),
    }
}

fn start(setup: &Setup, class: ErrorClass, max_memory: u64, exit_when_idle: bool) -> Engine {
    start_with(setup, class, max_memory, exit_when_idle, None)
}

fn start_with(
    setup: &Setup,
    class: ErrorClass,
    max_memory: u64,
    exit_when_idle: bool,
    sessions: Option<Arc<SessionSink>>,
) -> Engine {
    let db = StateDb::open(&setup.state).expect("state");
    start_on(db, setup, class, max_memory, exit_when_idle, sessions)
}

/// An engine on `db` (which the test may read too).
fn start_on(
    db: StateDb,
    setup: &Setup,
    class: ErrorClass,
    max_memory: u64,
    exit_when_idle: bool,
    sessions: Option<Arc<SessionSink>>,
) -> Engine {
    let config = EngineConfig {
        concurrency: ControllerConfig {
            initial: 4,
            ..ControllerConfig::default()
        },
        adaptive: false,
        max_memory,
        retry: RetryPolicy {
            max_attempts: 3,
            base: Duration::from_millis(1),
            cap: Duration::from_millis(5),
        },
        checksum: Default::default(),
        exit_when_idle,
        bwlimit: None,
    };
    let stores = Arc::new(Stores {
        failures: setup.failures.clone(),
        class,
        sessions,
    });
    Engine::start(db, config, stores).expect("engine")
}

fn enqueue(setup: &Setup, chunk_size: u64) -> Command {
    Command::Enqueue {
        source: format!("{}/", setup.src.display()),
        destination: format!("{}/", setup.dst.display()),
        options: JobOptions::with_chunk_size(chunk_size),
    }
}

/// Events until one matches, within 20 s.
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
    tokio::time::timeout(Duration::from_secs(20), wait)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

async fn finished(engine: &mut Engine) -> (JobId, JobState) {
    match until(engine, "the job to finish", |e| {
        matches!(e, Event::JobFinished { .. })
    })
    .await
    {
        Event::JobFinished { job, state, .. } => (job, state),
        _ => unreachable!(),
    }
}

async fn stop(engine: Engine) {
    let _ = engine.handle.send(Command::Shutdown).await;
    let Engine {
        mut events, task, ..
    } = engine;
    tokio::spawn(async move { while events.recv().await.is_some() {} });
    task.await.expect("join").expect("engine");
}

/// Plans a job of `s` (every chunk failing, so nothing finishes), pauses it and stops the
/// engine: the state file holds it paused.
async fn paused_in_the_state_file(s: &Setup) -> JobId {
    s.failures.store(1000, Ordering::SeqCst);
    let mut engine = start(s, ErrorClass::Transient, 64 << 20, false);
    engine
        .handle
        .send(enqueue(s, MIB as u64))
        .await
        .expect("send");
    let job = match until(&mut engine, "the plan", |e| {
        matches!(e, Event::JobPlanned { .. })
    })
    .await
    {
        Event::JobPlanned { job, .. } => job,
        _ => unreachable!(),
    };
    engine
        .handle
        .send(Command::Pause(Some(job)))
        .await
        .expect("send");
    until(&mut engine, "the pause", |e| {
        matches!(
            e,
            Event::JobStateChanged {
                state: JobState::Paused,
                ..
            }
        )
    })
    .await;
    stop(engine).await;
    job
}

fn same_files(a: &Path, b: &Path, names: &[&str]) {
    for name in names {
        assert_eq!(
            std::fs::read(a.join(name)).expect("src"),
            std::fs::read(b.join(name)).expect("dst"),
            "{name}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_job_is_retried_from_the_tui_after_it_ended_and_each_run_gets_a_fresh_budget() {
    let s = setup(&[("a.bin", 3 * MIB), ("b.bin", 100)]);
    // Every attempt fails in the first run: the objects fail after 3 attempts each.
    s.failures.store(1000, Ordering::SeqCst);
    let mut engine = start(&s, ErrorClass::Transient, 64 << 20, false);
    engine
        .handle
        .send(enqueue(&s, MIB as u64))
        .await
        .expect("send");
    let (job, state) = finished(&mut engine).await;
    assert_eq!(state, JobState::Failed);

    // The store recovers, except for one more hiccup: the retried chunks' attempt counts are
    // already at the limit, yet one failure does not fail them again.
    s.failures.store(1, Ordering::SeqCst);
    engine
        .handle
        .send(Command::RetryFailed(job))
        .await
        .expect("send");
    let (again, state) = finished(&mut engine).await;
    assert_eq!((again, state), (job, JobState::Done));
    same_files(&s.src, &s.dst, &["a.bin", "b.bin"]);
    stop(engine).await;
}

/// Failed attempts a job of one small object makes against a store that always fails, with
/// the job's own attempt limit (the engine's is 3); and the limit the state file kept.
async fn attempts_spent(max_attempts: Option<u32>) -> (u32, Option<u32>) {
    let s = setup(&[("a.bin", 100)]);
    s.failures.store(1000, Ordering::SeqCst);
    let mut engine = start(&s, ErrorClass::Transient, 64 << 20, true);
    let options = JobOptions {
        max_attempts,
        ..JobOptions::with_chunk_size(MIB as u64)
    };
    engine
        .handle
        .send(Command::Enqueue {
            source: format!("{}/", s.src.display()),
            destination: format!("{}/", s.dst.display()),
            options,
        })
        .await
        .expect("send");
    let (job, state) = finished(&mut engine).await;
    assert_eq!(state, JobState::Failed);
    stop(engine).await;
    let kept = StateDb::open(&s.state)
        .expect("state")
        .job(job)
        .expect("read")
        .expect("the job")
        .options
        .max_attempts;
    (1000 - s.failures.load(Ordering::SeqCst), kept)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_jobs_own_attempt_limit_is_kept_with_it_and_obeyed() {
    let (engines, kept) = attempts_spent(None).await;
    assert_eq!(kept, None);
    let (fewer, kept) = attempts_spent(Some(1)).await;
    assert_eq!(kept, Some(1), "the state file keeps the job's limit");
    let (more, _) = attempts_spent(Some(6)).await;
    assert!(
        fewer < engines && engines < more,
        "attempts follow the job's limit: 1 → {fewer}, the engine's 3 → {engines}, 6 → {more}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_route_is_recorded_before_its_job_is_announced_and_a_refused_one_is_forgotten() {
    let s = setup(&[("a.bin", 100)]);
    let db = StateDb::open(&s.state).expect("state");
    let mut engine = start_on(db.clone(), &s, ErrorClass::Transient, 64 << 20, false, None);
    let (src, dst) = (
        format!("{}/", s.src.display()),
        format!("{}/", s.dst.display()),
    );
    let route = |source: &str, options: JobOptions| Command::Enqueue {
        source: source.to_string(),
        destination: dst.clone(),
        options,
    };
    let queued = |e: &Event| matches!(e, Event::JobQueued { .. });
    let failed = |e: &Event| matches!(e, Event::PlanFailed { .. });

    // A filter that does not parse: announced, then refused and forgotten.
    let bad_filter = JobOptions {
        include: vec!["[".into()],
        ..JobOptions::with_chunk_size(MIB as u64)
    };
    engine
        .handle
        .send(route(&src, bad_filter))
        .await
        .expect("send");
    let Event::JobQueued { job, .. } = until(&mut engine, "queued", queued).await else {
        unreachable!()
    };
    // Refused at once (the filter is checked before any request): the record may be gone
    // already; while it is there, it is unplanned. (The good route below shows a job is
    // recorded by the time it is announced.)
    if let Some(recorded) = db.job(job).expect("read") {
        assert!(!recorded.planned);
    }
    until(&mut engine, "refused", failed).await;
    assert!(
        db.job(job).expect("read").is_none(),
        "the refused route is forgotten"
    );

    // A source that cannot be listed: kept, FAILED, for `resume` to try again.
    let missing = format!("{}/", s.src.join("missing").display());
    let options = JobOptions::with_chunk_size(MIB as u64);
    engine
        .handle
        .send(route(&missing, options.clone()))
        .await
        .expect("send");
    let Event::JobQueued { job, .. } = until(&mut engine, "queued", queued).await else {
        unreachable!()
    };
    until(&mut engine, "the source refused", failed).await;
    let kept = db.job(job).expect("read").expect("kept");
    assert_eq!((kept.state, kept.planned), (JobState::Failed, false));
    assert!(kept.error.is_some());

    // A good route runs under the ID it was announced with.
    engine
        .handle
        .send(route(&src, options))
        .await
        .expect("send");
    let Event::JobQueued { job, .. } = until(&mut engine, "queued", queued).await else {
        unreachable!()
    };
    assert!(
        db.job(job).expect("read").is_some(),
        "recorded when announced"
    );
    let (done, state) = finished(&mut engine).await;
    assert_eq!((done, state), (job, JobState::Done));
    stop(engine).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn resuming_a_named_paused_job_runs_it_to_the_end() {
    let s = setup(&[("a.bin", 2 * MIB)]);
    let job = paused_in_the_state_file(&s).await;

    // `blobway resume JOB`: the job is paused in the state file and named, so it runs.
    s.failures.store(0, Ordering::SeqCst);
    let mut engine = start(&s, ErrorClass::Transient, 64 << 20, true);
    engine
        .handle
        .send(Command::Load {
            job: Some(job),
            include_paused: true,
        })
        .await
        .expect("send");
    assert_eq!(finished(&mut engine).await, (job, JobState::Done));
    same_files(&s.src, &s.dst, &["a.bin"]);
    stop(engine).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_route_queued_twice_is_planned_once() {
    let s = setup(&[("a.bin", 1000)]);
    let mut engine = start(&s, ErrorClass::Transient, 64 << 20, false);
    engine
        .handle
        .send(enqueue(&s, MIB as u64))
        .await
        .expect("send");
    engine
        .handle
        .send(enqueue(&s, MIB as u64))
        .await
        .expect("send");
    let refused = until(&mut engine, "the refusal", |e| {
        matches!(e, Event::PlanFailed { .. })
    })
    .await;
    assert!(
        format!("{refused:?}").contains("already being planned or running"),
        "{refused:?}"
    );
    assert_eq!(finished(&mut engine).await.1, JobState::Done);
    stop(engine).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn chunks_that_cannot_fit_the_memory_budget_fail_their_object_with_advice() {
    let s = setup(&[("big.bin", 3 * MIB), ("small.bin", 1000)]);
    s.failures.store(1000, Ordering::SeqCst);
    let mut engine = start(&s, ErrorClass::Auth, 64 << 20, false);
    engine
        .handle
        .send(enqueue(&s, 2 * MIB as u64))
        .await
        .expect("send");
    // An auth failure stops the job with everything still to do.
    let (job, state) = finished(&mut engine).await;
    assert_eq!(state, JobState::Failed);
    stop(engine).await;

    s.failures.store(0, Ordering::SeqCst);
    let mut engine = start(&s, ErrorClass::Auth, MIB as u64, true);
    engine
        .handle
        .send(Command::Load {
            job: None,
            include_paused: false,
        })
        .await
        .expect("send");
    let failed = until(&mut engine, "the object to fail", |e| {
        matches!(e, Event::ObjectFailed { .. })
    })
    .await;
    assert!(
        format!("{failed:?}").contains("do not fit in --max-memory"),
        "{failed:?}"
    );
    let (again, state) = finished(&mut engine).await;
    assert_eq!(
        (again, state),
        (job, JobState::Failed),
        "the engine finishes instead of waiting"
    );
    same_files(&s.src, &s.dst, &["small.bin"]);
    stop(engine).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_object_lost_at_the_destination_is_planned_afresh_with_new_settings() {
    let s = setup(&[("a.bin", 3 * MIB)]);
    let mut engine = start(&s, ErrorClass::Transient, 64 << 20, true);
    engine
        .handle
        .send(enqueue(&s, MIB as u64))
        .await
        .expect("send");
    assert_eq!(finished(&mut engine).await.1, JobState::Done);
    stop(engine).await;

    std::fs::remove_file(s.dst.join("a.bin")).expect("lose it");
    let mut engine = start(&s, ErrorClass::Transient, 64 << 20, true);
    engine
        .handle
        .send(enqueue(&s, 2 * MIB as u64))
        .await
        .expect("send");
    assert_eq!(finished(&mut engine).await.1, JobState::Done);
    stop(engine).await;
    same_files(&s.src, &s.dst, &["a.bin"]);
    let db = StateDb::open(&s.state).expect("state");
    let snapshot = db
        .load_job(1)
        .expect("the state file reads back")
        .expect("job");
    assert_eq!(
        snapshot.files[0].2.len(),
        2,
        "two chunks of 2 MiB, no stale records"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_destination_that_takes_blocks_in_order_gets_them_one_at_a_time_in_order() {
    let s = setup(&[("a.bin", 5 * MIB + 7), ("b.bin", 3 * MIB), ("c.bin", 10)]);
    let sink = Arc::new(SessionSink {
        inner: Some(LocalStore::new(&s.dst)),
        sequential: true,
        ..Default::default()
    });
    let mut engine = start_with(
        &s,
        ErrorClass::Transient,
        64 << 20,
        true,
        Some(sink.clone()),
    );
    engine
        .handle
        .send(enqueue(&s, MIB as u64))
        .await
        .expect("send");
    assert_eq!(finished(&mut engine).await.1, JobState::Done);
    stop(engine).await;
    same_files(&s.src, &s.dst, &["a.bin", "b.bin", "c.bin"]);
    assert_eq!(
        sink.in_flight.lock().expect("lock").1,
        1,
        "never two blocks of one object at once"
    );
    let arrivals = sink.arrivals.lock().expect("lock").clone();
    for (key, blocks) in [("a.bin", 6), ("b.bin", 3)] {
        let order: Vec<u32> = arrivals
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, i)| *i)
            .collect();
        assert_eq!(order, (0..blocks).collect::<Vec<u32>>(), "{key}");
    }
    // Both multi-block objects were in flight together: order is per object, not global.
    let first_b = arrivals.iter().position(|(k, _)| k == "b.bin").expect("b");
    let last_a = arrivals.iter().rposition(|(k, _)| k == "a.bin").expect("a");
    assert!(
        first_b < last_a,
        "objects were sent one after the other: {arrivals:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upload_whose_session_is_lost_starts_over_and_completes() {
    let s = setup(&[("a.bin", 4 * MIB)]);
    let sink = Arc::new(SessionSink {
        inner: Some(LocalStore::new(&s.dst)),
        ..Default::default()
    });
    // The first block to arrive finds its session gone (and so do those in flight with it).
    sink.lose.store(1, Ordering::SeqCst);
    let mut engine = start_with(
        &s,
        ErrorClass::Transient,
        64 << 20,
        true,
        Some(sink.clone()),
    );
    engine
        .handle
        .send(enqueue(&s, MIB as u64))
        .await
        .expect("send");
    until(&mut engine, "the restart", |e| {
        matches!(e, Event::UploadRestarted { .. })
    })
    .await;
    assert_eq!(finished(&mut engine).await.1, JobState::Done);
    stop(engine).await;
    same_files(&s.src, &s.dst, &["a.bin"]);
    assert_eq!(
        sink.sessions.lock().expect("lock").1,
        2,
        "one session lost, one more opened"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cancelling_a_running_job_gives_up_its_upload_sessions() {
    let s = setup(&[("a.bin", 64 * MIB), ("b.bin", 32 * MIB)]);
    let sink = Arc::new(SessionSink {
        inner: Some(LocalStore::new(&s.dst)),
        ..Default::default()
    });
    let mut engine = start_with(
        &s,
        ErrorClass::Transient,
        64 << 20,
        false,
        Some(sink.clone()),
    );
    engine
        .handle
        .send(enqueue(&s, MIB as u64))
        .await
        .expect("send");
    let job = match until(&mut engine, "a first block", |e| {
        matches!(e, Event::ChunkCompleted { .. })
    })
    .await
    {
        Event::ChunkCompleted { job, .. } => job,
        _ => unreachable!(),
    };
    engine
        .handle
        .send(Command::Cancel(job))
        .await
        .expect("send");
    let (_, state) = finished(&mut engine).await;
    assert_eq!(state, JobState::Cancelled);
    stop(engine).await;
    let sessions = sink.sessions.lock().expect("lock");
    assert!(sessions.1 >= 1, "uploads had begun");
    assert!(
        sessions.0.is_empty(),
        "sessions left open: {:?}",
        sessions.0
    );
    assert!(!s.dst.join("a.bin").exists(), "nothing committed");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_object_is_done_only_once_the_destination_shows_it_after_the_commit() {
    let s = setup(&[("a.bin", 3 * MIB), ("c.bin", 10)]);
    let sink = Arc::new(SessionSink {
        inner: Some(LocalStore::new(&s.dst)),
        ..Default::default()
    });
    // The first commit and the first whole put answer success and make nothing visible.
    sink.lie.store(2, Ordering::SeqCst);
    assert_eq!(run_to_the_end(&s, sink.clone()).await, JobState::Done);
    assert_eq!(sink.lie.load(Ordering::SeqCst), 0, "both lies were told");
    same_files(&s.src, &s.dst, &["a.bin", "c.bin"]);
}

/// Runs one job of `files` through `sink` (1 MiB chunks) to its end, within 20 s.
async fn run_to_the_end(s: &Setup, sink: Arc<SessionSink>) -> JobState {
    let mut engine = start_with(s, ErrorClass::Transient, 64 << 20, true, Some(sink));
    engine
        .handle
        .send(enqueue(s, MIB as u64))
        .await
        .expect("send");
    let (_, state) = finished(&mut engine).await;
    stop(engine).await;
    state
}

#[tokio::test(flavor = "multi_thread")]
async fn a_chunk_of_an_in_order_upload_failing_twice_is_checked_and_sent_again() {
    // Defect 1a: the chunk that failed twice asked for a check of the session, and was put
    // back on no queue; the chunks after it waited for it forever.
    let s = setup(&[("a.bin", 5 * MIB)]);
    let sink = Arc::new(SessionSink {
        inner: Some(LocalStore::new(&s.dst)),
        sequential: true,
        ..Default::default()
    });
    sink.failing_blocks.lock().expect("lock").insert(1, 2);
    assert_eq!(run_to_the_end(&s, sink.clone()).await, JobState::Done);
    same_files(&s.src, &s.dst, &["a.bin"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_check_that_fails_once_is_tried_again() {
    // Defect 1b: the check's retry timer was discarded because not every chunk was complete.
    // (In order, as GCS takes them, the chunk's second failure finds nothing else in flight,
    // so the check is asked for every time.)
    let s = setup(&[("a.bin", 4 * MIB)]);
    let sink = Arc::new(SessionSink {
        inner: Some(LocalStore::new(&s.dst)),
        sequential: true,
        ..Default::default()
    });
    sink.failing_blocks.lock().expect("lock").insert(2, 2);
    sink.failing_checks.store(1, Ordering::SeqCst);
    assert_eq!(run_to_the_end(&s, sink.clone()).await, JobState::Done);
    assert_eq!(
        sink.failing_checks.load(Ordering::SeqCst),
        0,
        "the check failed once"
    );
    same_files(&s.src, &s.dst, &["a.bin"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn many_flaky_chunks_do_not_spend_the_commit_attempts() {
    // Defect 1c: every check spent a commit attempt, so the fourth flaky chunk failed the
    // object with "the destination keeps losing staged blocks".
    let s = setup(&[("a.bin", 10 * MIB)]);
    let sink = Arc::new(SessionSink {
        inner: Some(LocalStore::new(&s.dst)),
        sequential: true,
        ..Default::default()
    });
    {
        let mut failing = sink.failing_blocks.lock().expect("lock");
        for index in 0..10 {
            failing.insert(index, 2);
        }
    }
    assert_eq!(run_to_the_end(&s, sink.clone()).await, JobState::Done);
    same_files(&s.src, &s.dst, &["a.bin"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_chunk_out_of_retries_in_a_live_session_is_sent_again_not_the_whole_object() {
    // Defect 2: one chunk out of retries started the whole upload over (every chunk sent
    // again) although a check had just shown the session alive, and the old session was
    // dropped without being given up.
    let s = setup(&[("a.bin", 4 * MIB)]);
    let sink = Arc::new(SessionSink {
        inner: Some(LocalStore::new(&s.dst)),
        sequential: true,
        ..Default::default()
    });
    // Three failures spend the run's budget of 3 (with a check of the session after the
    // second); the fourth attempt, on a fresh budget in the same session, fails too.
    sink.failing_blocks.lock().expect("lock").insert(2, 4);
    assert_eq!(run_to_the_end(&s, sink.clone()).await, JobState::Done);
    same_files(&s.src, &s.dst, &["a.bin"]);
    let sessions = sink.sessions.lock().expect("lock");
    assert_eq!(sessions.1, 1, "the live session was kept");
    assert!(
        sessions.0.is_empty(),
        "sessions left open: {:?}",
        sessions.0
    );
    let arrivals = sink.arrivals.lock().expect("lock").clone();
    for block in [0, 1, 3] {
        let times = arrivals.iter().filter(|(_, i)| *i == block).count();
        assert_eq!(times, 1, "block {block} sent {times} times: {arrivals:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upload_started_over_gives_up_its_old_session() {
    // Defect 2: the abandoned session (an S3 upload ID: billed parts, if the store had only
    // seemed to lose it) was dropped without an abort.
    let s = setup(&[("a.bin", 4 * MIB)]);
    let sink = Arc::new(SessionSink {
        inner: Some(LocalStore::new(&s.dst)),
        ..Default::default()
    });
    sink.lose.store(1, Ordering::SeqCst);
    assert_eq!(run_to_the_end(&s, sink.clone()).await, JobState::Done);
    same_files(&s.src, &s.dst, &["a.bin"]);
    assert_eq!(
        sink.sessions.lock().expect("lock").1,
        2,
        "started over once"
    );
    let aborted = sink.aborted.lock().expect("lock").clone();
    assert!(
        aborted.contains(&"session-1".to_string()),
        "the abandoned session was not given up: {aborted:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_opened_but_never_recorded_is_found_and_given_up() {
    // Defect 2: the answer to a begin is lost (as when a crash comes between opening a
    // session and recording it): the store holds an upload nobody knows. The next begin
    // looks for it and gives it up.
    let s = setup(&[("a.bin", 4 * MIB)]);
    let sink = Arc::new(SessionSink {
        inner: Some(LocalStore::new(&s.dst)),
        ..Default::default()
    });
    sink.lose_begin_answers.store(1, Ordering::SeqCst);
    assert_eq!(run_to_the_end(&s, sink.clone()).await, JobState::Done);
    same_files(&s.src, &s.dst, &["a.bin"]);
    let sessions = sink.sessions.lock().expect("lock");
    assert_eq!(
        sessions.1, 2,
        "one session lost its answer, one more was opened"
    );
    assert!(
        sessions.0.is_empty(),
        "a session nobody recorded is still open: {:?}",
        sessions.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_chunk_whose_answers_were_lost_is_not_stranded_by_its_check() {
    // The block is stored both times but its answers are lost; the check then finds it
    // there and lists only the chunks after it as missing. The chunk that asked for the check
    // must go again (or count as there): left pending on no queue, its object hung.
    let s = setup(&[("a.bin", 4 * MIB)]);
    let sink = Arc::new(SessionSink {
        inner: Some(LocalStore::new(&s.dst)),
        sequential: true,
        ..Default::default()
    });
    sink.lost_answers.lock().expect("lock").insert(1, 2);
    assert_eq!(run_to_the_end(&s, sink.clone()).await, JobState::Done);
    same_files(&s.src, &s.dst, &["a.bin"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_of_many_objects_is_worked_through_a_bounded_window() {
    let names: Vec<String> = (0..1500).map(|i| format!("f{i:05}.txt")).collect();
    let files: Vec<(&str, usize)> = names.iter().map(|n| (n.as_str(), 3)).collect();
    let s = setup(&files);
    let mut engine = start(&s, ErrorClass::Transient, 64 << 20, false);
    engine
        .handle
        .send(enqueue(&s, MIB as u64))
        .await
        .expect("send");
    let (_, state) = finished(&mut engine).await;
    assert_eq!(state, JobState::Done);
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    same_files(&s.src, &s.dst, &refs);
    // The windows never held more than the concurrency asks for (4 slots: the smallest
    // window, 64 objects), not the job's 1,500.
    // Once it is done, nothing is held.
    let peak = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let (peak, now) = {
                let snapshot = engine.snapshots.borrow_and_update();
                (snapshot.objects_held_peak, snapshot.objects_held)
            };
            if peak > 0 && now == 0 {
                return peak;
            }
            engine.snapshots.changed().await.expect("snapshots");
        }
    })
    .await
    .expect("a snapshot after the job, holding nothing");
    assert!((1..=64).contains(&peak), "held at most {peak} objects");
    stop(engine).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_concurrency_step_counts_however_fast_they_come() {
    let s = setup(&[]);
    let mut engine = start(&s, ErrorClass::Transient, 64 << 20, false);
    // Five steps sent at once, before any snapshot could show the first: the limit (4) rises
    // by five, not by one.
    for _ in 0..5 {
        engine
            .handle
            .send(Command::StepConcurrency(1))
            .await
            .expect("send");
    }
    let limits: Vec<u32> = {
        let mut limits = Vec::new();
        for _ in 0..5 {
            if let Event::ConcurrencyChanged {
                limit, adaptive, ..
            } = until(&mut engine, "a step", |e| {
                matches!(
                    e,
                    Event::ConcurrencyChanged {
                        decision: blobway::engine::Decision::Operator,
                        ..
                    }
                )
            })
            .await
            {
                assert!(!adaptive, "a step switches to manual");
                limits.push(limit);
            }
        }
        limits
    };
    assert_eq!(limits, [5, 6, 7, 8, 9]);
    // Down past the least: stops at 1.
    engine
        .handle
        .send(Command::StepConcurrency(-100))
        .await
        .expect("send");
    let event = until(&mut engine, "the step down", |e| {
        matches!(e, Event::ConcurrencyChanged { .. })
    })
    .await;
    assert!(
        matches!(event, Event::ConcurrencyChanged { limit: 1, .. }),
        "{event:?}"
    );
    stop(engine).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn resume_names_the_paused_jobs_it_leaves_paused() {
    let s = setup(&[("a.bin", 2 * MIB)]);
    let job = paused_in_the_state_file(&s).await;

    // `blobway resume` (no job named): the paused job stays paused, and is named with the
    // command that resumes it.
    let blobway = || {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_blobway"));
        cmd.env("BLOBWAY_STATE", &s.state)
            .env("BLOBWAY_NO_DAEMON", "1")
            .stdin(std::process::Stdio::null());
        cmd
    };
    let out = blobway().arg("resume").output().expect("resume");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "job {job} ({}/ → {}/) stays paused; `blobway resume {job}` resumes it",
            s.src.display(),
            s.dst.display()
        )),
        "{stderr}"
    );
    let jobs = blobway().args(["jobs", "--json"]).output().expect("jobs");
    let jobs = String::from_utf8_lossy(&jobs.stdout);
    assert!(
        jobs.contains("\"PAUSED\"") || jobs.contains("\"paused\""),
        "{jobs}"
    );
}
