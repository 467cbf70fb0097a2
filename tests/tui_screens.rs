//! Every screen of the TUI, drawn on ratatui's `TestBackend` after a scripted sequence of
//! engine events, snapshots and key presses, and compared with insta snapshots. The data is
//! fixed (no clocks, no temporary paths), so a snapshot changes only when the screen does.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use blobway::engine::{Command, Event};
use blobway::state::JobState;
use blobway::store::{ObjectInfo, Page};
use blobway::tui::app::{App, AppOptions};
use blobway::tui::fixtures::snapshot;
use blobway::tui::view;
use ratatui::Terminal;
use ratatui::backend::TestBackend;
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

const MIB: u64 = 1 << 20;

fn key(c: char) -> KeyEvent {
    KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE)
}

fn code(code: KeyCode) -> KeyEvent {
    KeyEvent::new(code, KeyModifiers::NONE)
}

fn new_app() -> App {
    let (mut app, commands) = App::new(AppOptions {
        browse_root: "s3://".into(),
        local_destination: None,
        chunk_size: 64 * MIB,
        attached: true,
    });
    assert!(matches!(commands.as_slice(), [Command::Browse { .. }]));
    app.on_event(Event::JobPlanned {
        job: 1,
        source: "s3://media-prod/batch-1/".into(),
        destination: "az://media-prod/batch-1/".into(),
        summary: Default::default(),
    });
    app.on_snapshot(Arc::new(snapshot(640)));
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
fn job_detail_lists_a_filtered_searched_page_of_a_big_job() {
    let mut app = new_app();
    app.handle_key(code(KeyCode::Enter));
    app.handle_key(code(KeyCode::Char('s')));
    app.handle_key(code(KeyCode::Char('/')));
    for c in "keynote".chars() {
        app.handle_key(code(KeyCode::Char(c)));
    }
    app.handle_key(code(KeyCode::Enter));
    // As the engine answers the query: a page of the failed objects matching, from #2,001 of
    // the job's 123,456 failed.
    let mut answer = snapshot(640);
    if let Some(detail) = &mut answer.job_detail {
        detail.query = app.selection().objects;
        detail.query.from = 2000;
        detail.matching = Some(123_456);
    }
    app.on_snapshot(Arc::new(answer));
    let terminal = draw(&mut app, 160, 48);
    let screen = terminal.backend().to_string();
    assert!(
        screen.contains("Objects (4 of 123,456 failed · \"keynote\" · from #2,001)"),
        "{screen}"
    );
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
fn bandwidth_cap_prompt_shows_the_cap_in_force() {
    let mut app = new_app();
    app.on_snapshot(Arc::new(snapshot(640)));
    app.handle_key(key('B'));
    let terminal = draw(&mut app, 120, 20);
    let screen = terminal.backend().to_string();
    assert!(screen.contains("Bandwidth cap"), "{screen}");
    assert!(screen.contains("cap 120 MiB/s (timetable)"), "{screen}");
    insta::assert_snapshot!(terminal.backend());
}

#[test]
fn cancel_confirmation_and_paused_status() {
    let mut app = new_app();
    let mut paused = snapshot(640);
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

#[test]
fn stop_confirmation_when_attached_to_a_daemon() {
    let mut app = new_app();
    app.on_snapshot(Arc::new(snapshot(640)));
    app.handle_key(key('Q'));
    let terminal = draw(&mut app, 120, 20);
    let screen = terminal.backend().to_string();
    assert!(screen.contains("Stop the daemon?"), "{screen}");
    assert!(
        screen.contains("detach"),
        "the hint says q detaches: {screen}"
    );
    insta::assert_snapshot!(terminal.backend());
}
