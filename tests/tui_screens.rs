//! Every screen of the TUI, drawn on ratatui's `TestBackend` after a scripted sequence of
//! engine events, snapshots and key presses, and compared with insta snapshots. The data is
//! fixed (no clocks, no temporary paths), so a snapshot changes only when the screen does.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use blobway::engine::Event;
use blobway::engine::metrics::{Mark, Point, Series};
use blobway::engine::snapshot::{
    ChunkCell, ChunkDetail, FileChunks, FileView, JobDetail, JobView, Snapshot,
};
use blobway::engine::{Command, Decision};
use blobway::state::{
    AttemptRecord, ChunkRecord, ChunkState, ErrorRecord, FileState, JobProgress, JobState,
};
use blobway::store::{ErrorClass, ObjectInfo, Page};
use blobway::tui::app::{App, AppOptions};
use blobway::tui::view;
use ratatui::Terminal;
use ratatui::backend::TestBackend;
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

const MIB: u64 = 1 << 20;
const T0: i64 = 1_795_300_000_000;

fn key(c: char) -> KeyEvent {
    KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE)
}

fn code(code: KeyCode) -> KeyEvent {
    KeyEvent::new(code, KeyModifiers::NONE)
}

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
                t: 150,
                decision: Decision::Operator,
            },
        ],
    }
}

fn cells() -> Vec<ChunkCell> {
    (0..640u32)
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

fn snapshot() -> Snapshot {
    let files = vec![
        FileView {
            index: 0,
            key: "batch-1/audio.wav".into(),
            size: 300 * MIB,
            state: FileState::Done,
            chunks_done: 38,
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
            chunk_count: 640,
            retried: 12,
            error: None,
        },
        FileView {
            index: 3,
            key: "batch-1/raw/take-07.mxf".into(),
            size: 900 * MIB,
            state: FileState::Failed,
            chunks_done: 3,
            chunk_count: 113,
            retried: 1,
            error: Some("source changed since planning".into()),
        },
    ];
    Snapshot {
        limit: 18,
        adaptive: true,
        in_flight: 17,
        bytes_in_flight: 136 * MIB,
        memory_budget: 1024 * MIB,
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
        job_detail: Some(JobDetail { job: 1, files }),
        file_chunks: Some(FileChunks {
            job: 1,
            file: 2,
            key: "batch-1/keynote-4k.mov".into(),
            size: 5_120 * MIB,
            chunk_size: 8 * MIB,
            cells: cells(),
        }),
        chunk_detail: Some(chunk_detail()),
    }
}

fn new_app() -> App {
    let (mut app, commands) = App::new(AppOptions {
        browse_root: "s3://".into(),
        local_destination: None,
        chunk_size: 64 * MIB,
    });
    assert!(matches!(commands.as_slice(), [Command::Browse { .. }]));
    app.on_event(Event::JobPlanned {
        job: 1,
        source: "s3://media-prod/batch-1/".into(),
        destination: "az://media-prod/batch-1/".into(),
        summary: Default::default(),
    });
    app.on_snapshot(Arc::new(snapshot()));
    app
}

fn draw(app: &mut App, width: u16, height: u16) -> Terminal<TestBackend> {
    let mut terminal = Terminal::new(TestBackend::new(width, height)).expect("terminal");
    terminal.draw(|frame| view::draw(frame, app)).expect("draw");
    terminal
}

fn detail_app() -> App {
    let mut app = new_app();
    app.handle_key(code(KeyCode::Enter));
    app.handle_key(code(KeyCode::Down));
    app.handle_key(code(KeyCode::Down));
    app.handle_key(code(KeyCode::Tab));
    app
}

#[test]
fn jobs_screen() {
    let mut app = new_app();
    for _ in 0..3 {
        app.handle_key(code(KeyCode::Down));
    }
    insta::assert_snapshot!(draw(&mut app, 140, 24).backend());
}

#[test]
fn job_detail_with_heatmap_and_graphs() {
    let mut app = detail_app();
    let terminal = draw(&mut app, 160, 48);
    let screen = terminal.backend().to_string();
    assert!(
        screen.contains("640 chunks × 8 MiB, 1 per cell · batch-1/keynote-4k.mov"),
        "{screen}"
    );
    insta::assert_snapshot!(terminal.backend());
}

#[test]
fn job_detail_aggregates_chunks_when_the_heatmap_is_small() {
    let mut app = detail_app();
    let terminal = draw(&mut app, 80, 24);
    let screen = terminal.backend().to_string();
    assert!(screen.contains("2 per cell"), "{screen}");
    insta::assert_snapshot!(terminal.backend());
}

#[test]
fn chunk_inspector() {
    let mut app = detail_app();
    draw(&mut app, 160, 48); // lays the heat-map out, so the cursor moves by cells
    for _ in 0..42 {
        app.handle_key(code(KeyCode::Right));
    }
    app.handle_key(code(KeyCode::Enter));
    assert_eq!(app.selection().chunk, Some(42));
    insta::assert_snapshot!(draw(&mut app, 160, 48).backend());
}

#[test]
fn help_screen() {
    let mut app = new_app();
    app.handle_key(key('?'));
    let terminal = draw(&mut app, 120, 50);
    let screen = terminal.backend().to_string();
    assert!(screen.contains("pause every job"));
    assert!(screen.contains("raise the concurrency limit"));
    insta::assert_snapshot!(terminal.backend());
}

fn objects(keys: &[(&str, u64)]) -> Vec<ObjectInfo> {
    keys.iter()
        .map(|(k, size)| ObjectInfo {
            key: k.to_string(),
            size: *size,
            etag: "\"e\"".into(),
            modified: Some(1_795_000_000),
        })
        .collect()
}

fn browser_app() -> App {
    let mut app = new_app();
    app.handle_key(key('b'));
    let request = app.browser.request;
    app.on_event(Event::Listing {
        request,
        location: "s3://".into(),
        page: Ok(Page {
            dirs: vec!["archive-2019".into(), "media-prod".into()],
            objects: vec![],
            next: None,
        }),
    });
    app.handle_key(code(KeyCode::Down));
    let commands = app.handle_key(code(KeyCode::Enter));
    assert!(
        matches!(&commands[0], Command::Browse { location, .. } if location == "s3://media-prod/")
    );
    let request = app.browser.request;
    app.on_event(Event::Listing {
        request,
        location: "s3://media-prod/".into(),
        page: Ok(Page {
            dirs: vec!["batch-1/".into(), "batch-2/".into(), "raw/".into()],
            objects: objects(&[
                ("index.html", 2_048),
                ("keynote-final.mov", 5_368_709_120),
                ("thumb.jpg", 180_000),
            ]),
            next: None,
        }),
    });
    app
}

#[test]
fn browser_screen() {
    let mut app = browser_app();
    app.handle_key(key(' '));
    app.handle_key(code(KeyCode::Down));
    app.handle_key(key(' '));
    insta::assert_snapshot!(draw(&mut app, 110, 20).backend());
}

#[test]
fn destination_prompt() {
    let mut app = browser_app();
    for _ in 0..4 {
        app.handle_key(code(KeyCode::Down));
    }
    app.handle_key(key(' '));
    app.handle_key(key('c'));
    insta::assert_snapshot!(draw(&mut app, 110, 20).backend());
}

#[test]
fn filter_prompt() {
    let mut app = browser_app();
    app.handle_key(key('/'));
    for c in "mov".chars() {
        app.handle_key(key(c));
    }
    insta::assert_snapshot!(draw(&mut app, 110, 20).backend());
}

#[test]
fn cancel_confirmation_and_paused_status() {
    let mut app = new_app();
    let mut paused = snapshot();
    for job in &mut paused.jobs {
        if job.state == JobState::Running {
            job.state = JobState::Paused;
        }
    }
    paused.in_flight = 0;
    app.on_snapshot(Arc::new(paused));
    app.handle_key(key('x'));
    let terminal = draw(&mut app, 120, 20);
    assert!(terminal.backend().to_string().contains("PAUSED"));
    insta::assert_snapshot!(terminal.backend());
}
