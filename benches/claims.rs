//! Object claims per second through a shared PostgreSQL state: workers (each a `PgState`
//! worker with its own lease, on a thread of its own) claim every object of one job with
//! `next_under_way` in batches of a realistic size, one write transaction per claim, until
//! none is left; every object must be claimed exactly once. Needs a cluster:
//! `BLOBWAY_BENCH_POSTGRES` (or `BLOBWAY_TEST_POSTGRES`), a superuser URL (a fresh database
//! is made per row). Prints a table; `cargo bench --bench claims`.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use blobway::state::postgres::PgState;
use blobway::state::{ChunkRecord, FileRecord, StateDb, Write};

const OBJECTS: u32 = 6_000;
const CHUNKS_PER_OBJECT: u32 = 2;

fn worker(url: &str, name: &str) -> StateDb {
    StateDb::new(PgState::open_worker(url, None, name, Duration::from_secs(60)).expect("join"))
}

fn plan(db: &StateDb) {
    let job = common::bench_job();
    let mut writes = vec![Write::Job(job)];
    for i in 0..OBJECTS {
        let key = format!("o/{i:06}");
        let size = u64::from(CHUNKS_PER_OBJECT) << 20;
        writes.push(Write::File(
            1,
            i,
            FileRecord::new(&key, &key, size, "\"e\"", 1 << 20, CHUNKS_PER_OBJECT),
        ));
        for c in 0..CHUNKS_PER_OBJECT {
            writes.push(Write::Chunk(1, i, c, ChunkRecord::pending()));
        }
    }
    for batch in writes.chunks(5_000) {
        db.apply(batch).expect("plan");
    }
}

/// Claims until nothing is left; returns the objects claimed and the claims made.
fn claim_all(db: &StateDb, batch: usize) -> (Vec<u32>, u32) {
    let mut mine = Vec::new();
    let mut claims = 0;
    let mut cursor = None;
    loop {
        let read = db
            .next_under_way(
                1,
                cursor,
                batch,
                batch * CHUNKS_PER_OBJECT as usize,
                &|_| false,
            )
            .expect("claim");
        claims += 1;
        cursor = read.last;
        mine.extend(read.objects.iter().map(|(i, _, _)| *i));
        if read.exhausted {
            return (mine, claims);
        }
    }
}

fn main() {
    let Some(cluster) = std::env::var("BLOBWAY_BENCH_POSTGRES")
        .or_else(|_| std::env::var("BLOBWAY_TEST_POSTGRES"))
        .ok()
    else {
        println!("no PostgreSQL cluster: set BLOBWAY_BENCH_POSTGRES to a superuser URL");
        return;
    };
    println!("| workers | objects per claim | objects | claims | seconds | objects/s | claims/s |");
    println!("|---|---|---|---|---|---|---|");
    let mut row = 0;
    for workers in [1usize, 3] {
        for batch in [8usize, 64, 256] {
            row += 1;
            let url = common::fresh_database(
                &cluster,
                &format!("bench_claims_{}_{row}", std::process::id()),
            );
            let fleet: Vec<StateDb> = (0..workers)
                .map(|w| worker(&url, &format!("bench-{w}")))
                .collect();
            plan(&fleet[0]);
            let start = Instant::now();
            let results: Vec<(Vec<u32>, u32)> = std::thread::scope(|scope| {
                let handles: Vec<_> = fleet
                    .iter()
                    .map(|db| scope.spawn(move || claim_all(db, batch)))
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().expect("worker"))
                    .collect()
            });
            let took = start.elapsed().as_secs_f64();
            let claimed: Vec<u32> = results.iter().flat_map(|(m, _)| m.clone()).collect();
            let unique: BTreeSet<u32> = claimed.iter().copied().collect();
            assert_eq!(claimed.len(), OBJECTS as usize, "every object claimed once");
            assert_eq!(unique.len(), OBJECTS as usize, "no object claimed twice");
            let claims: u32 = results.iter().map(|(_, c)| c).sum();
            println!(
                "| {workers} | {batch} | {OBJECTS} | {claims} | {took:.2} | {:.0} | {:.0} |",
                f64::from(OBJECTS) / took,
                f64::from(claims) / took
            );
        }
    }
}
