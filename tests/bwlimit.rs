//! The bandwidth cap through the engine's public API (commands in, events out), between local
//! folders whose destination records when each block arrives and how many are in flight: the
//! rate holds over ten seconds, a cap starts fewer chunks instead of slowing them, a change
//! takes effect at once and is kept in the state file for the next run. Through the CLI: a
//! 1 MiB/s cap with 16 MiB chunks against Azurite abandons no chunk as stalled, and
//! `set-bwlimit` reaches a running daemon (and a bad timetable is refused with the reason).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use blobway::engine::bwlimit::BwLimit;
use blobway::engine::{Command, ControllerConfig, Engine, EngineConfig, Event, StoreFactory};
use blobway::location::Location;
use blobway::state::{JobOptions, StateDb};
use blobway::store::local::LocalStore;
use blobway::store::{
    Access, BlockRef, Checksum, DestObject, ObjectMeta, ObjectSink, ObjectSource, PlannedBlock,
    SinkLimits, StoreResult, Upload,
};
use bytes::Bytes;

const MIB: u64 = 1 << 20;

/// A local destination that takes `delay` over every block (a link's latency) and records
/// when each arrived and how many were in flight at most.
struct Watched {
    inner: LocalStore,
    delay: Duration,
    in_flight: AtomicU32,
    most: AtomicU32,
    arrivals: Mutex<Vec<(Instant, u64)>>,
}

#[async_trait]
impl ObjectSink for Watched {
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
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(self.delay).await;
        let len = data.len() as u64;
        let result = self.inner.put_block(upload, block, data).await;
        self.arrivals
            .lock()
            .expect("lock")
            .push((Instant::now(), len));
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        result
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
        self.inner.put_whole(upload, data, checksum, meta).await
    }
    async fn head(&self, key: &str) -> StoreResult<Option<DestObject>> {
        self.inner.head(key).await
    }
    async fn list_existing(&self, prefix: &str) -> StoreResult<BTreeMap<String, DestObject>> {
        self.inner.list_existing(prefix).await
    }
}

struct Stores(Arc<Watched>);

#[async_trait]
impl StoreFactory for Stores {
    async fn source(
        &self,
        location: &Location,
        _: &Access,
    ) -> anyhow::Result<Arc<dyn ObjectSource>> {
        Ok(Arc::new(LocalStore::new(&location.container)))
    }
    async fn sink(&self, _: &Location, _: &Access) -> anyhow::Result<Arc<dyn ObjectSink>> {
        Ok(self.0.clone())
    }
}

struct Setup {
    dir: tempfile::TempDir,
    sink: Arc<Watched>,
}

/// A source folder with one file of `size` bytes (sparse: it costs no disk to read) and a
/// destination taking `delay` per block.
fn setup(size: u64, delay: Duration) -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("src")).expect("src");
    std::fs::create_dir_all(dir.path().join("dst")).expect("dst");
    let file = std::fs::File::create(dir.path().join("src/big.bin")).expect("create");
    file.set_len(size).expect("size");
    let sink = Arc::new(Watched {
        inner: LocalStore::new(dir.path().join("dst")),
        delay,
        in_flight: AtomicU32::new(0),
        most: AtomicU32::new(0),
        arrivals: Mutex::new(Vec::new()),
    });
    Setup { dir, sink }
}

/// An engine at a fixed concurrency of 16, with `bwlimit` (none: the recorded one).
fn start(s: &Setup, bwlimit: Option<&str>) -> Engine {
    let db = StateDb::open(&s.dir.path().join("state.redb")).expect("state");
    let config = EngineConfig {
        concurrency: ControllerConfig {
            initial: 16,
            min: 1,
            max: 16,
            ..ControllerConfig::default()
        },
        adaptive: false,
        bwlimit: bwlimit.map(|b| BwLimit::parse(b).expect("bwlimit")),
        ..EngineConfig::default()
    };
    Engine::start(db, config, Arc::new(Stores(s.sink.clone()))).expect("engine")
}

fn enqueue(s: &Setup, chunk_size: u64) -> Command {
    Command::Enqueue {
        source: format!("{}/", s.dir.path().join("src").display()),
        destination: format!("{}/", s.dir.path().join("dst").display()),
        options: JobOptions::with_chunk_size(chunk_size),
    }
}

/// Events until one matches, within `limit`.
async fn until(engine: &mut Engine, limit: Duration, matches: impl Fn(&Event) -> bool) -> Event {
    let wait = async {
        loop {
            match engine.events.recv().await {
                Some(event) if matches(&event) => return event,
                Some(_) => {}
                None => panic!("the engine stopped"),
            }
        }
    };
    tokio::time::timeout(limit, wait).await.expect("in time")
}

async fn stop(engine: Engine) {
    let _ = engine.handle.send(Command::Shutdown).await;
    let Engine {
        mut events, task, ..
    } = engine;
    tokio::spawn(async move { while events.recv().await.is_some() {} });
    task.await.expect("join").expect("engine");
}

fn same(s: &Setup) {
    let read = |side: &str| std::fs::read(s.dir.path().join(side).join("big.bin")).expect(side);
    assert!(read("src") == read("dst"), "the copy differs");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cap_of_20_mib_per_second_holds_within_ten_percent_over_ten_seconds() {
    let s = setup(256 * MIB, Duration::ZERO);
    let mut engine = start(&s, Some("20MiB/s"));
    engine
        .handle
        .send(enqueue(&s, 4 * MIB))
        .await
        .expect("send");
    until(&mut engine, Duration::from_secs(60), |e| {
        matches!(e, Event::JobFinished { .. })
    })
    .await;
    stop(engine).await;
    same(&s);
    let arrivals = s.sink.arrivals.lock().expect("lock").clone();
    let first = arrivals.first().expect("blocks").0;
    // Ten seconds, from the second second on.
    let (from, to) = (
        first + Duration::from_secs(1),
        first + Duration::from_secs(11),
    );
    let bytes: u64 = arrivals
        .iter()
        .filter(|(at, _)| *at >= from && *at < to)
        .map(|(_, len)| len)
        .sum();
    let rate = bytes as f64 / MIB as f64 / 10.0;
    assert!((18.0..=22.0).contains(&rate), "{rate:.1} MiB/s");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cap_starts_fewer_chunks_rather_than_slowing_them() {
    // Each block takes 200 ms at the destination: unbounded, 16 are in flight at once.
    let open = setup(16 * MIB, Duration::from_millis(200));
    let mut engine = start(&open, Some("off"));
    engine.handle.send(enqueue(&open, MIB)).await.expect("send");
    until(&mut engine, Duration::from_secs(30), |e| {
        matches!(e, Event::JobFinished { .. })
    })
    .await;
    stop(engine).await;
    assert!(open.sink.most.load(Ordering::SeqCst) >= 8, "uncapped");
    // At 4 MiB/s a block of 1 MiB starts every 250 ms: one in flight at a time.
    let capped = setup(6 * MIB, Duration::from_millis(200));
    let started = Instant::now();
    let mut engine = start(&capped, Some("4MiB/s"));
    engine
        .handle
        .send(enqueue(&capped, MIB))
        .await
        .expect("send");
    until(&mut engine, Duration::from_secs(30), |e| {
        matches!(e, Event::JobFinished { .. })
    })
    .await;
    stop(engine).await;
    same(&capped);
    let most = capped.sink.most.load(Ordering::SeqCst);
    assert!(most <= 2, "{most} blocks in flight under the cap");
    assert!(
        started.elapsed() >= Duration::from_millis(1200),
        "6 MiB at 4 MiB/s: {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_change_takes_effect_at_once_and_is_kept_for_the_next_run() {
    let s = setup(24 * MIB, Duration::ZERO);
    let mut engine = start(&s, Some("1MiB/s"));
    engine.handle.send(enqueue(&s, MIB)).await.expect("send");
    // Two blocks at 1 MiB/s, then the cap is lifted to 200 MiB/s.
    until(&mut engine, Duration::from_secs(10), |e| {
        matches!(e, Event::ChunkCompleted { chunk: 1, .. })
    })
    .await;
    let done_before = s.sink.arrivals.lock().expect("lock").len();
    assert!(
        done_before < 6,
        "{done_before} blocks in two seconds at 1 MiB/s"
    );
    let asked = Instant::now();
    engine
        .handle
        .send(Command::SetBwLimit(
            BwLimit::parse("200MiB/s").expect("rate"),
        ))
        .await
        .expect("send");
    let changed = until(&mut engine, Duration::from_secs(2), |e| {
        matches!(e, Event::BwLimitChanged { .. })
    })
    .await;
    assert!(
        matches!(&changed, Event::BwLimitChanged { rate: Some(r), .. } if *r == 200 * MIB),
        "{changed:?}"
    );
    until(&mut engine, Duration::from_secs(10), |e| {
        matches!(e, Event::JobFinished { .. })
    })
    .await;
    // At the old cap the rest would take 20 s and more.
    let took = asked.elapsed();
    assert!(
        took < Duration::from_secs(8),
        "the rest took {took:?} after the change"
    );
    stop(engine).await;
    same(&s);
    // The next engine on this state file, without a cap of its own, keeps it.
    let engine = start(&s, None);
    let mut snapshots = engine.snapshots.clone();
    let kept = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if snapshots.borrow().bwlimit == "200MiB/s" {
                return snapshots.borrow().bw_rate;
            }
            snapshots.changed().await.expect("snapshot");
        }
    })
    .await
    .expect("the recorded cap");
    assert_eq!(kept, Some(200 * MIB));
    stop(engine).await;
}

#[test]
fn a_cap_of_1_mib_per_second_with_16_mib_chunks_abandons_no_chunk_as_stalled() {
    let container = common::unique("bwlimit");
    let src = common::local_files(&[("slow.bin", 17 << 20)]);
    let state = tempfile::tempdir().expect("state");
    let started = Instant::now();
    let run = common::run(
        common::blobway(&state.path().join("state.redb"))
            .args([
                "copy",
                "--json",
                "--bwlimit",
                "1MiB/s",
                "--chunk-size",
                "16MiB",
                "--stall-timeout",
                "2",
            ])
            .arg(format!("{}/", src.path().display()))
            .arg(format!("az://{container}/")),
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.events_named("chunk_retry").is_empty(),
        "a chunk was retried: {}",
        run.stdout
    );
    // Chunks are not slowed to the cap (16 s each at 1 MiB/s): fewer start instead.
    let latencies: Vec<u64> = run
        .events_named("chunk_completed")
        .iter()
        .map(|e| e["latency_ms"].as_u64().expect("latency"))
        .collect();
    assert_eq!(latencies.len(), 2, "{}", run.stdout);
    assert!(
        latencies.iter().all(|ms| *ms < 8_000),
        "chunks slowed to the cap: {latencies:?} ms"
    );
    // The second chunk waited for the first's 16 MiB at 1 MiB/s.
    assert!(
        started.elapsed() >= Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    let data = std::fs::read(src.path().join("slow.bin")).expect("source");
    let copied = tokio::runtime::Runtime::new()
        .expect("runtime")
        .block_on(common::azure_md5(&container, "slow.bin"));
    assert_eq!(copied, Some(common::md5_hex(&data)));
}
