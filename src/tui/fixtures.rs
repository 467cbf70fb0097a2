//! Fixed sample data for the TUI's snapshot tests and rendering benchmark: no clocks, no
//! temporary paths, so what is drawn from it never changes by itself.

use crate::engine::Decision;
use crate::engine::metrics::{Mark, Point, Series};
use crate::engine::snapshot::{
    ChunkCell, ChunkDetail, FileChunks, FileView, JobDetail, JobView, Snapshot,
};
use crate::state::{
    AttemptRecord, ChunkRecord, ChunkState, ErrorRecord, FileState, JobProgress, JobState,
};
use crate::store::ErrorClass;

const MIB: u64 = 1 << 20;
const T0: i64 = 1_795_300_000_000;

fn job(id: u64, state: JobState, done: u64, total: u64, rate: f64) -> JobView {
    JobView {
        id,
        source: format!("s3://media-prod/batch-{id}/"),
        destination: format!("az://media-prod/batch-{id}/"),
        state,
        progress: JobProgress {
            files_total: 40,
            files_done: done * 40 / total.max(1),
            files_skipped: 0,
            files_failed: u64::from(state == JobState::Failed) * 2,
            bytes_total: total,
            bytes_done: done,
        },
        rate,
        eta_secs: (rate > 0.0).then(|| ((total - done) as f64 / rate) as u64),
        error: (state == JobState::Failed)
            .then(|| "AUTH (HTTP 403): the Azure credentials were rejected".to_string()),
        // A running job copies store to store, as the header shows.
        carried: if state == JobState::Running {
            crate::engine::snapshot::Carried::Server
        } else {
            crate::engine::snapshot::Carried::Client
        },
        in_flight: if state == JobState::Running { 17 } else { 0 },
    }
}

fn series() -> Series {
    let points = (0..180u32)
        .map(|t| {
            let limit = match t {
                0..60 => 16 + t / 10 * 2,
                60..100 => 13 + (t - 60) / 10 * 2,
                _ => 10 + (t - 100) / 20 * 2,
            };
            Point {
                t,
                mib_per_s: 90.0 + f64::from(t % 23) * 2.0,
                p50_ms: 420.0 + f64::from(t % 17) * 9.0,
                p95_ms: 900.0 + f64::from(t % 29) * 21.0,
                limit,
                in_flight: limit.saturating_sub(t % 3),
            }
        })
        .collect();
    Series {
        points,
        marks: vec![
            Mark {
                t: 10,
                decision: Decision::Increase,
            },
            Mark {
                t: 60,
                decision: Decision::ThrottleCut,
            },
            Mark {
                t: 100,
                decision: Decision::ErrorCut,
            },
            Mark {
                t: 120,
                decision: Decision::Probe,
            },
            Mark {
                t: 135,
                decision: Decision::Ease,
            },
            Mark {
                t: 150,
                decision: Decision::Operator,
            },
        ],
    }
}

fn cells(count: u32) -> Vec<ChunkCell> {
    (0..count)
        .map(|i| {
            let (state, attempts) = match i {
                _ if i == 77 => (ChunkState::Failed, 10),
                0..300 if i % 37 == 0 => (ChunkState::Completed, 3),
                0..300 => (ChunkState::Completed, 1),
                300..318 => (ChunkState::InProgress, 1),
                318..330 if i % 4 == 0 => (ChunkState::Pending, 2),
                _ => (ChunkState::Pending, 0),
            };
            ChunkCell { state, attempts }
        })
        .collect()
}

fn error(class: ErrorClass, status: u16, message: &str, at: i64) -> ErrorRecord {
    ErrorRecord {
        class,
        status: Some(status),
        message: message.into(),
        at_ms: at,
    }
}

fn chunk_detail() -> ChunkDetail {
    ChunkDetail {
        job: 1,
        file: 2,
        chunk: 42,
        key: "batch-1/keynote-4k.mov".into(),
        start: 42 * 8 * MIB,
        end: 43 * 8 * MIB,
        block_id: "bw1-ef27948206a3967b-0000000042".into(),
        record: ChunkRecord {
            state: ChunkState::Completed,
            attempts: 3,
            crc64: Some(0xfe39_7ec3_2314_1fba),
            crc_reported: false,
            history: vec![
                AttemptRecord {
                    started_ms: T0,
                    latency_ms: 1212,
                    bytes: 0,
                    error: Some(error(
                        ErrorClass::Throttled,
                        503,
                        "Put Block az://media-prod/batch-1/keynote-4k.mov failed: ServerBusy",
                        T0 + 1212,
                    )),
                },
                AttemptRecord {
                    started_ms: T0 + 2_000,
                    latency_ms: 30_004,
                    bytes: 0,
                    error: Some(error(
                        ErrorClass::Transient,
                        500,
                        "GET s3://media-prod/batch-1/keynote-4k.mov: the body broke off after 3 of 8 MiB",
                        T0 + 32_004,
                    )),
                },
                AttemptRecord {
                    started_ms: T0 + 33_000,
                    latency_ms: 640,
                    bytes: 8 * MIB,
                    error: None,
                },
            ],
        },
    }
}

/// A busy engine: four jobs, one of them with an object of `chunks` chunks shown in detail,
/// three minutes of measurements and a chunk that needed three attempts.
/// Three workers sharing the migration: one running, one quarantined, one whose lease ran out.
pub fn workers() -> Vec<crate::state::lease::WorkerRecord> {
    let worker = |name: &str, host: &str, state: &str, age: f64, in_flight, chunks, claimed| {
        crate::state::lease::WorkerRecord {
            name: name.into(),
            host: host.into(),
            pid: 4242,
            version: "0.1.0".into(),
            epoch: 7,
            state: state.into(),
            started: "2026-12-03T08:00:00Z".into(),
            heartbeat: "2026-12-03T12:34:56Z".into(),
            heartbeat_age_s: age,
            in_flight,
            chunks_moved: chunks,
            bytes_moved: chunks * 8 * MIB as i64,
            claimed,
            quarantine: (state == "quarantined").then(|| {
                "job 1: this worker cannot go on with it (AUTH): the key was refused".into()
            }),
        }
    };
    vec![
        worker("worker-1", "vm-a", "running", 1.2, 16, 9_412, 14),
        worker("worker-2", "vm-b", "quarantined", 0.4, 0, 9_388, 0),
        worker("worker-3", "vm-c", "expired", 41.0, 0, 3_120, 0),
    ]
}

pub fn snapshot(chunks: u32) -> Snapshot {
    let files = vec![
        FileView {
            index: 0,
            key: "batch-1/audio.wav".into(),
            size: 300 * MIB,
            state: FileState::Done,
            chunks_done: 38,
            chunks_read: true,
            chunk_count: 38,
            retried: 0,
            error: None,
        },
        FileView {
            index: 1,
            key: "batch-1/cover.jpg".into(),
            size: 180_000,
            state: FileState::Skipped,
            chunks_done: 0,
            chunks_read: true,
            chunk_count: 1,
            retried: 0,
            error: None,
        },
        FileView {
            index: 2,
            key: "batch-1/keynote-4k.mov".into(),
            size: 5_120 * MIB,
            state: FileState::Transferring,
            chunks_done: 299,
            chunks_read: true,
            chunk_count: chunks,
            retried: 12,
            error: None,
        },
        FileView {
            index: 3,
            key: "batch-1/raw/take-07.mxf".into(),
            size: 900 * MIB,
            state: FileState::Failed,
            chunks_done: 3,
            // Listed without its chunks (not selected, not under way).
            chunks_read: false,
            chunk_count: 113,
            retried: 1,
            error: Some("source changed since planning".into()),
        },
    ];
    Snapshot {
        limit: 18,
        adaptive: true,
        bwlimit: "Mon-Fri 08:00,120MiB/s 19:00,off".into(),
        bw_rate: Some(120 * MIB),
        in_flight: 17,
        bytes_in_flight: 136 * MIB,
        memory_budget: 1024 * MIB,
        objects_held: 40,
        objects_held_peak: 64,
        rate: 118.0 * MIB as f64,
        jobs: vec![
            job(
                1,
                JobState::Running,
                2_400 * MIB,
                6_400 * MIB,
                118.0 * MIB as f64,
            ),
            job(2, JobState::Paused, 700 * MIB, 1_000 * MIB, 0.0),
            job(3, JobState::Done, 12_000 * MIB, 12_000 * MIB, 0.0),
            job(4, JobState::Failed, 0, 50 * MIB, 0.0),
        ],
        series: series(),
        workers: Vec::new(),
        viewers: Default::default(),
        job_detail: Some(JobDetail {
            job: 1,
            matching: Some(files.len() as u64),
            files,
            query: Default::default(),
            loading: false,
        }),
        file_chunks: Some(FileChunks {
            job: 1,
            file: 2,
            key: "batch-1/keynote-4k.mov".into(),
            size: 5_120 * MIB,
            chunk_size: 8 * MIB,
            cells: cells(chunks),
        }),
        chunk_detail: Some(chunk_detail()),
    }
}
