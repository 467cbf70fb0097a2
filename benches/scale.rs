//! The engine's own cost per object, at scale: a synthetic source of N tiny objects (40-byte
//! keys, 1 to 6 bytes each) into a sink that accepts everything and remembers nothing (its
//! read-back answers from the key), so what is measured is planning, claims, state writes and
//! events — no store, no network. Prints a table: wall time and objects/s for the copy, time
//! to the first chunk in flight, a re-run over the finished job, peak RSS and state bytes per
//! object.
//!
//! `cargo bench --bench scale` (20,000 and 200,000 objects);
//! `BENCH_OBJECTS=1000000 cargo bench --bench scale` for a million.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use blobway::engine::{Command, ControllerConfig, Engine, EngineConfig, Event, StoreFactory};
use blobway::location::Location;
use blobway::state::{JobOptions, StateDb};
use blobway::store::{
    Access, BlockRef, Checksum, Chunk, DestObject, Listed, ObjectInfo, ObjectMeta, ObjectSink,
    ObjectSource, Page, PlannedBlock, SinkLimits, StoreResult, Upload, meta_keys,
};
use bytes::{Bytes, BytesMut};

/// Object `i`: its key (40 bytes under the prefix), size and version (an ETag as S3 gives
/// it: an MD5 in hex, quoted).
fn object(i: u64) -> ObjectInfo {
    ObjectInfo {
        key: format!("src/{:03}/object-{i:010}-of-the-bench.bin", i % 1000),
        size: 1 + i % 6,
        etag: format!(
            "\"{:032x}\"",
            u128::from(i).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835)
        ),
        modified: None,
    }
}

/// The object index a key (source or destination) names.
fn index_of(key: &str) -> u64 {
    key.rsplit("object-")
        .next()
        .and_then(|rest| rest.get(..10))
        .and_then(|digits| digits.parse().ok())
        .unwrap_or(0)
}

/// The objects after `after` (a key, source or destination) in key order, at most `limit`:
/// keys sort by group (`i % 1000`), then by `i`.
fn objects_after(n: u64, after: Option<&str>, limit: usize) -> (Vec<ObjectInfo>, bool) {
    let (mut group, mut next) = match after {
        Some(key) => {
            let i = index_of(key);
            (i % 1000, i + 1000)
        }
        None => (0, 0),
    };
    let mut out = Vec::with_capacity(limit);
    while group < 1000.min(n) {
        if next < n {
            if out.len() == limit {
                return (out, true);
            }
            out.push(object(next));
            next += 1000;
        } else {
            group += 1;
            next = group;
        }
    }
    (out, false)
}

struct Synthetic(u64);

#[async_trait]
impl ObjectSource for Synthetic {
    async fn list(&self, _prefix: &str, _single: bool) -> StoreResult<Vec<ObjectInfo>> {
        let mut all: Vec<ObjectInfo> = (0..self.0).map(object).collect();
        all.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(all)
    }

    async fn read_range(
        &self,
        _key: &str,
        _etag: &str,
        range: Range<u64>,
        _buffer: BytesMut,
    ) -> StoreResult<Chunk> {
        Ok(Chunk {
            data: Bytes::from(vec![7u8; (range.end - range.start) as usize]),
            meta: ObjectMeta::default(),
            source_crc64: None,
            version_id: None,
        })
    }

    async fn list_page(&self, _prefix: &str, _token: Option<String>) -> StoreResult<Page> {
        Ok(Page::default())
    }

    async fn list_after(
        &self,
        _prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Listed> {
        let (objects, more) = objects_after(self.0, after, limit);
        let next = more
            .then(|| objects.last().map(|o| o.key.clone()))
            .flatten();
        Ok(Listed { objects, next })
    }
}

/// What the destination holds of object `copied` once it was copied.
fn copied(copied: ObjectInfo) -> (String, DestObject) {
    let key = format!("dst/{}", copied.key.trim_start_matches("src/"));
    let there = DestObject {
        size: copied.size,
        meta: BTreeMap::from([(meta_keys::SOURCE_ETAG.to_string(), copied.etag)]),
    };
    (key, there)
}

/// Takes everything; its read-back answers what the key says was copied, and once `filled`
/// its listing holds every object (a re-run finds them there).
struct Null {
    objects: u64,
    filled: bool,
}

#[async_trait]
impl ObjectSink for Null {
    fn limits(&self) -> SinkLimits {
        blobway::store::azure::LIMITS
    }

    async fn prepare(&self) -> StoreResult<()> {
        Ok(())
    }

    async fn put_block(&self, _: Upload<'_>, _: BlockRef<'_>, _: Bytes) -> StoreResult<()> {
        Ok(())
    }

    async fn missing_blocks(&self, _: Upload<'_>, _: &[PlannedBlock]) -> StoreResult<Vec<u32>> {
        Ok(Vec::new())
    }

    async fn commit(&self, _: Upload<'_>, _: &[PlannedBlock], _: &ObjectMeta) -> StoreResult<()> {
        Ok(())
    }

    async fn put_whole(
        &self,
        _: Upload<'_>,
        _: Bytes,
        _: Checksum,
        _: &ObjectMeta,
    ) -> StoreResult<()> {
        Ok(())
    }

    async fn head(&self, key: &str) -> StoreResult<Option<DestObject>> {
        let copied = object(index_of(key));
        Ok(Some(DestObject {
            size: copied.size,
            meta: BTreeMap::from([(meta_keys::SOURCE_ETAG.to_string(), copied.etag)]),
        }))
    }

    async fn list_existing(&self, _prefix: &str) -> StoreResult<BTreeMap<String, DestObject>> {
        if !self.filled {
            return Ok(BTreeMap::new());
        }
        Ok((0..self.objects).map(|i| copied(object(i))).collect())
    }

    async fn list_existing_page(
        &self,
        _prefix: &str,
        token: Option<String>,
    ) -> StoreResult<(Vec<(String, DestObject)>, Option<String>)> {
        if !self.filled {
            return Ok((Vec::new(), None));
        }
        let (objects, more) = objects_after(self.objects, token.as_deref(), 1000);
        let next = more
            .then(|| objects.last().map(|o| o.key.clone()))
            .flatten();
        Ok((objects.into_iter().map(copied).collect(), next))
    }
}

/// The synthetic source of this many objects, and the sink (filled: by an earlier run).
struct Stores {
    objects: u64,
    filled: bool,
}

#[async_trait]
impl StoreFactory for Stores {
    async fn source(&self, _: &Location, _: &Access) -> anyhow::Result<Arc<dyn ObjectSource>> {
        Ok(Arc::new(Synthetic(self.objects)))
    }

    async fn sink(&self, _: &Location, _: &Access) -> anyhow::Result<Arc<dyn ObjectSink>> {
        Ok(Arc::new(Null {
            objects: self.objects,
            filled: self.filled,
        }))
    }
}

/// Starts the peak resident memory over from what is resident now (Linux: `clear_refs` 5).
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Peak resident memory of this process so far, in MiB.
fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

struct Run {
    wall: Duration,
    first_chunk: Option<Duration>,
}

/// Copies the synthetic route once on `db`, to the end.
async fn copy(db: &StateDb, objects: u64, filled: bool) -> Run {
    let config = EngineConfig {
        concurrency: ControllerConfig {
            initial: 64,
            ..ControllerConfig::default()
        },
        adaptive: false,
        max_memory: 256 << 20,
        ..EngineConfig::default()
    };
    let started = Instant::now();
    let mut engine =
        Engine::start(db.clone(), config, Arc::new(Stores { objects, filled })).expect("engine");
    engine
        .handle
        .send(Command::Enqueue {
            source: "s3://bench/src/".into(),
            destination: "az://bench/dst/".into(),
            options: JobOptions::default(),
        })
        .await
        .expect("enqueue");
    let mut first_chunk = None;
    while let Some(event) = engine.events.recv().await {
        match event {
            Event::ChunkStarted { .. } | Event::ChunkCompleted { .. } if first_chunk.is_none() => {
                first_chunk = Some(started.elapsed());
            }
            Event::JobFinished { .. } | Event::Fatal { .. } => break,
            _ => {}
        }
    }
    let wall = started.elapsed();
    let _ = engine.handle.send(Command::Shutdown).await;
    tokio::spawn(async move { while engine.events.recv().await.is_some() {} });
    let _ = engine.task.await;
    Run { wall, first_chunk }
}

fn main() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let largest: u64 = std::env::var("BENCH_OBJECTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    println!(
        "| objects | copy wall | objects/s | first chunk | re-run (all done) | peak RSS copy | peak RSS re-run | state bytes/object | compacted |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut usage = Vec::new();
    for objects in [20_000, largest] {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("bench.redb");
        let db = StateDb::open(&path).expect("state");
        reset_peak_rss();
        let first = runtime.block_on(copy(&db, objects, false));
        let peak_copy = peak_rss_mib();
        reset_peak_rss();
        let again = runtime.block_on(copy(&db, objects, true));
        let peak_rerun = peak_rss_mib();
        usage.push((objects, db.usage().expect("usage")));
        drop(db);
        let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        // What the records take once the file's free pages are given back.
        let compacted = redb::Database::open(&path)
            .map_err(redb::Error::from)
            .and_then(|mut db| db.compact().map_err(redb::Error::from))
            .ok()
            .and_then(|_| std::fs::metadata(&path).ok())
            .map_or(0, |m| m.len());
        println!(
            "| {objects} | {:.1} s | {:.0} | {} | {:.1} s | {:.0} MiB | {:.0} MiB | {:.0} | {:.0} |",
            first.wall.as_secs_f64(),
            objects as f64 / first.wall.as_secs_f64(),
            first
                .first_chunk
                .map_or("-".into(), |d| format!("{:.2} s", d.as_secs_f64())),
            again.wall.as_secs_f64(),
            peak_copy,
            peak_rerun,
            bytes as f64 / objects as f64,
            compacted as f64 / objects as f64,
        );
    }
    for (objects, tables) in usage {
        println!();
        println!("State file by table, {objects} objects, bytes per object:");
        println!();
        println!("| table | entries | keys and values | overhead (pages, metadata, free space) |");
        println!("|---|---|---|---|");
        for t in tables {
            println!(
                "| {} | {} | {:.0} | {:.0} |",
                t.name,
                t.entries,
                t.stored as f64 / objects as f64,
                t.overhead as f64 / objects as f64,
            );
        }
    }
    println!();
    println!(
        "Peak RSS is the process's high-water mark (VmHWM) over that run alone (reset through \
         /proc/self/clear_refs before it): what is resident then, the state file's cache \
         included."
    );
}
