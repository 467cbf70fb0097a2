//! Chunk state transitions per second through the state database: one durable commit per
//! transition, against the writer thread that folds every transition queued meanwhile into one
//! durable commit (tags come back only after their commit, so "record after acknowledge"
//! holds). Target: ≥ 50,000 transitions/s batched (the redb file). Each backend gets its rows:
//! the redb file, and PostgreSQL when `BLOBWAY_BENCH_POSTGRES` (or `BLOBWAY_TEST_POSTGRES`)
//! names a cluster (a fresh database is made in it). Prints a table;
//! `cargo bench --bench state_writes`.

mod common;

use std::time::Instant;

use blobway::state::writer::{self, WriteRequest};
use blobway::state::{ChunkRecord, ChunkState, FileRecord, StateDb, Write};
use tokio::sync::mpsc;

const CHUNKS: u32 = 50_000;

fn setup(location: &std::path::Path) -> StateDb {
    let db = StateDb::open(location).expect("open");
    let job = common::bench_job();
    let file = FileRecord::new(
        "big.bin",
        "big.bin",
        u64::from(CHUNKS) << 20,
        "\"e\"",
        1 << 20,
        CHUNKS,
    );
    let mut writes = vec![Write::Job(job), Write::File(1, 0, file)];
    writes.extend((0..CHUNKS).map(|i| Write::Chunk(1, 0, i, ChunkRecord::pending())));
    db.apply(&writes).expect("plan");
    db
}

fn transition(i: u32, state: ChunkState) -> Write {
    let mut chunk = ChunkRecord::pending();
    chunk.state = state;
    chunk.attempts = 1;
    chunk.crc64 = (state == ChunkState::Completed).then_some(u64::from(i));
    Write::Chunk(1, 0, i % CHUNKS, chunk)
}

fn main() {
    println!("| state | how | transitions | seconds | transitions/s |");
    println!("|---|---|---|---|---|");
    let dir = tempfile::tempdir().expect("tempdir");
    let rate = measure("redb file", &setup(&dir.path().join("bench.redb")));
    let cluster = std::env::var("BLOBWAY_BENCH_POSTGRES")
        .or_else(|_| std::env::var("BLOBWAY_TEST_POSTGRES"))
        .ok();
    if let Some(cluster) = cluster {
        let url = common::fresh_database(
            &cluster,
            &format!("bench_state_writes_{}", std::process::id()),
        );
        measure("PostgreSQL (loopback)", &setup(std::path::Path::new(&url)));
    }
    println!();
    println!(
        "target ≥ 50,000 transitions/s batched (redb file): {}",
        if rate >= 50_000.0 { "met" } else { "missed" }
    );
}

/// Prints `db`'s rows; returns its batched rate.
fn measure(label: &str, db: &StateDb) -> f64 {
    let single = 2_000;
    let start = Instant::now();
    for i in 0..single {
        db.apply(&[transition(i, ChunkState::InProgress)])
            .expect("apply");
    }
    let took = start.elapsed().as_secs_f64();
    println!(
        "| {label} | one durable commit per transition | {single} | {took:.2} | {:.0} |",
        f64::from(single) / took
    );

    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let total: u32 = 200_000;
    runtime.block_on(async {
        let (tx, rx) = mpsc::channel(4096);
        let (done_tx, mut done_rx) = mpsc::unbounded_channel();
        let thread = writer::spawn(db.clone(), rx, done_tx, || Ok(()));
        let start = Instant::now();
        let producer = tokio::spawn(async move {
            for i in 0..total {
                // Claim, then completion: two transitions per chunk, as in a transfer.
                let state = if i % 2 == 0 { ChunkState::InProgress } else { ChunkState::Completed };
                tx.send(WriteRequest { writes: vec![transition(i / 2, state)], tag: i })
                    .await
                    .expect("send");
            }
        });
        let mut acknowledged = 0u32;
        let mut commits = 0u32;
        while acknowledged < total {
            let tags = done_rx.recv().await.expect("batch").expect("commit");
            acknowledged += tags.len() as u32;
            commits += 1;
        }
        let took = start.elapsed().as_secs_f64();
        producer.await.expect("producer");
        let _ = thread;
        println!(
            "| {label} | batched by the writer thread ({commits} durable commits) | {total} | {took:.2} | {:.0} |",
            f64::from(total) / took
        );
        f64::from(total) / took
    })
}
