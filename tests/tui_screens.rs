//! Every screen of the TUI, drawn on ratatui's `TestBackend` at 80×24 and at 200×60 after a
//! scripted sequence of engine events, snapshots and key presses, and compared with insta
//! snapshots. The data is fixed (no clocks, no temporary paths), so a snapshot changes only
//! when the screen does. Every drawing is also scanned for cut numbers: each `done/total`
//! standing on the screen must be one of the data's fractions, whole, and each size before a
//! slash must have its size (or `s`) after it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use blobway::engine::snapshot::Snapshot;
use blobway::engine::{Command, Event};
use blobway::state::JobState;
use blobway::store::{ObjectInfo, Page};
use blobway::tui::app::{App, AppOptions, Popup};
use blobway::tui::fixtures::snapshot;
use blobway::tui::view;
use ratatui::Terminal;
use ratatui::backend::TestBackend;
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

const MIB: u64 = 1 << 20;

/// The sizes every screen is drawn at: the least terminal, and a big one.
const SIZES: [(u16, u16); 2] = [(80, 24), (200, 60)];

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
    app.on_event(Event::ConcurrencyChanged {
        limit: 18,
        adaptive: true,
        decision: blobway::engine::Decision::Increase,
        reason: "raised to 18: 3 epochs without a queue".into(),
    });
    app.on_snapshot(Arc::new(snapshot(640)));
    app
}

fn draw(app: &mut App, width: u16, height: u16) -> Terminal<TestBackend> {
    // Messages carry the time they came: fixed here, so the drawing does not change.
    for notice in app.notices.iter_mut().chain(app.controller.as_mut()) {
        notice.at = "12:34:56".into();
    }
    let mut terminal = Terminal::new(TestBackend::new(width, height)).expect("terminal");
    terminal.draw(|frame| view::draw(frame, app)).expect("draw");
    terminal
}

/// Every `done/total` of the data the screens show: the jobs' objects and the listed
/// objects' chunks.
fn fractions(snapshot: &Snapshot) -> Vec<String> {
    let jobs = snapshot.jobs.iter().map(|j| {
        let p = &j.progress;
        format!("{}/{}", p.files_done + p.files_skipped, p.files_total)
    });
    let files = snapshot
        .job_detail
        .iter()
        .flat_map(|d| &d.files)
        .map(|f| match f.chunks_read {
            true => format!("{}/{}", f.chunks_done, f.chunk_count),
            false => format!("?/{}", f.chunk_count),
        });
    jobs.chain(files).collect()
}

/// Fails if a number on `screen` was cut: see the module's doc.
fn assert_no_number_cut(screen: &str, known: &[String], at: &str) {
    let fraction = regex_lite::Regex::new(r#"(^|[\s│"(])(\d+/\d*)"#).expect("regex");
    for found in fraction.captures_iter(screen) {
        let text = &found[2];
        assert!(
            known.iter().any(|k| k == text),
            "{at}: `{text}` is not a whole fraction of the data {known:?}:\n{screen}"
        );
    }
    let size = regex_lite::Regex::new(r"\d+(\.\d+)? (B|KiB|MiB|GiB|TiB)/(\S*)").expect("regex");
    let whole = regex_lite::Regex::new(r"^(s\b|\d+(\.\d+)? (B|KiB|MiB|GiB|TiB))").expect("regex");
    for found in size.captures_iter(screen) {
        let start = found.get(3).map_or(0, |m| m.start());
        let after = &screen[start..];
        assert!(
            whole.is_match(after),
            "{at}: a size is cut after its slash in `{}`:\n{screen}",
            &found[0]
        );
    }
}

/// Draws `app` at both sizes, checks no number is cut, snapshots each as `name_WxH`, and
/// returns the screens (the small one first).
fn screens(name: &str, app: &mut App) -> Vec<String> {
    let known = fractions(&app.snapshot);
    SIZES
        .iter()
        .map(|&(width, height)| {
            let terminal = draw(app, width, height);
            let screen = terminal.backend().to_string();
            assert_no_number_cut(&screen, &known, &format!("{name} at {width}×{height}"));
            insta::assert_snapshot!(format!("{name}_{width}x{height}"), terminal.backend());
            screen
        })
        .collect()
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
    for screen in screens("jobs", &mut app) {
        for fraction in fractions(&app.snapshot).iter().take(4) {
            assert!(screen.contains(fraction.as_str()), "{fraction}:\n{screen}");
        }
        assert!(
            screen.contains("12:34:56 job 1: planned 0 objects"),
            "{screen}"
        );
        assert!(
            screen.contains("raised to 18"),
            "the controller's line: {screen}"
        );
    }
}

/// Attached to one worker of a fleet: the jobs of the whole migration and a workers panel,
/// with why a quarantined worker stepped aside.
#[test]
fn jobs_screen_with_workers() {
    let mut app = new_app();
    let mut snapshot = (*app.snapshot).clone();
    snapshot.workers = blobway::tui::fixtures::workers();
    app.on_snapshot(Arc::new(snapshot));
    let screens = screens("jobs_with_workers", &mut app);
    for screen in &screens {
        assert!(screen.contains("Workers: 2 live of 3"), "{screen}");
        for name in ["worker-1", "worker-2", "worker-3"] {
            assert!(screen.contains(name), "{name}:\n{screen}");
        }
        assert!(screen.contains("quarantined"), "{screen}");
        assert!(screen.contains("expired"), "{screen}");
    }
    let wide = &screens[1];
    assert!(
        wide.contains("(AUTH)"),
        "the reason shows where there is room:\n{wide}"
    );
}

#[test]
fn no_jobs_yet() {
    let mut app = new_app();
    app.on_snapshot(Arc::new(Snapshot {
        limit: 16,
        adaptive: true,
        memory_budget: 1024 * MIB,
        ..Snapshot::default()
    }));
    for screen in screens("no_jobs", &mut app) {
        assert!(screen.contains(" IDLE "), "{screen}");
        assert!(screen.contains("No jobs yet"), "{screen}");
    }
}

#[test]
fn job_detail_with_heatmap_and_graphs() {
    let mut app = detail_app();
    let screens = screens("job_detail", &mut app);
    for screen in &screens {
        for fraction in fractions(&app.snapshot).iter().skip(4) {
            assert!(screen.contains(fraction.as_str()), "{fraction}:\n{screen}");
        }
    }
    assert!(
        screens[1].contains("640 chunks × 8 MiB, 1 per cell · batch-1/keynote-4k.mov"),
        "{}",
        screens[1]
    );
    assert!(screens[0].contains("per cell"), "{}", screens[0]);
}

#[test]
fn job_detail_lists_a_filtered_searched_sorted_page_of_a_big_job() {
    let mut app = new_app();
    app.handle_key(code(KeyCode::Enter));
    app.handle_key(key('s'));
    app.handle_key(key('/'));
    for c in "keynote".chars() {
        app.handle_key(key(c));
    }
    app.handle_key(code(KeyCode::Enter));
    app.handle_key(key('S'));
    // As the engine answers the query: a page of the failed objects matching, from #2,001 of
    // the job's 123,456 failed.
    let mut answer = snapshot(640);
    if let Some(detail) = &mut answer.job_detail {
        detail.query = app.selection().objects;
        detail.query.from = 2000;
        detail.matching = Some(123_456);
    }
    app.on_snapshot(Arc::new(answer));
    let screens = screens("job_detail_filtered", &mut app);
    assert!(
        screens[0].contains("Objects (4 of 123,456 failed)"),
        "{}",
        screens[0]
    );
    assert!(
        screens[0].contains("\"keynote\" · from #2,001 · by state"),
        "{}",
        screens[0]
    );
}

#[test]
fn chunk_inspector() {
    let mut app = detail_app();
    if let Some(detail) = &mut app.detail {
        detail.chunk_cursor = 42;
    }
    app.handle_key(code(KeyCode::Enter));
    assert_eq!(app.selection().chunk, Some(42));
    let screens = screens("chunk_inspector", &mut app);
    for screen in &screens {
        assert!(
            screen.contains("22:27:13.000"),
            "started times in full: {screen}"
        );
    }
}

#[test]
fn help_screen_from_its_top_to_its_end() {
    let mut app = new_app();
    app.handle_key(key('?'));
    let top = screens("help", &mut app);
    assert!(top[1].contains("pause every job"));
    assert!(top[1].contains("raise the concurrency limit"));
    app.handle_key(key('G'));
    let end = screens("help_end", &mut app);
    for screen in &end {
        assert!(
            screen.contains("open a location"),
            "the last binding: {screen}"
        );
    }
    assert!(
        !end[0].contains("show or hide this help"),
        "scrolled at 80×24: {}",
        end[0]
    );
    // Scrolling back up starts at once from the end drawn.
    app.handle_key(key('k'));
    assert!(matches!(app.popup, Some(Popup::Help(n)) if n < u16::MAX - 1));
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

fn bucket_list() -> App {
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
    app
}

fn browser_app() -> App {
    let mut app = bucket_list();
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
                (
                    "logs/gateway-2026-11-30T21:24:02Z-eu-west-1-a.log.gz",
                    180_000,
                ),
            ]),
            next: None,
        }),
    });
    app
}

#[test]
fn bucket_list_with_a_marked_bucket() {
    let mut app = bucket_list();
    app.handle_key(key(' '));
    let screens = screens("bucket_list", &mut app);
    assert!(screens[0].contains("1 marked"), "{}", screens[0]);
    assert!(screens[0].contains("2 entries"), "{}", screens[0]);
}

#[test]
fn browser_screen_with_marks_and_a_range() {
    let mut app = browser_app();
    app.handle_key(key(' '));
    app.handle_key(code(KeyCode::Down));
    app.handle_key(key(' '));
    app.handle_key(key('v'));
    screens("browser", &mut app);
}

#[test]
fn destination_prompt() {
    let mut app = browser_app();
    for _ in 0..4 {
        app.handle_key(code(KeyCode::Down));
    }
    app.handle_key(key(' '));
    app.handle_key(key('c'));
    let screens = screens("destination_prompt", &mut app);
    assert!(
        screens[1].contains("e.g. az://media-prod/keynote-final.mov"),
        "the rule shown: {}",
        screens[1]
    );
}

#[test]
fn filter_prompt() {
    let mut app = browser_app();
    app.handle_key(key('/'));
    for c in "mov".chars() {
        app.handle_key(key(c));
    }
    let screens = screens("filter_prompt", &mut app);
    assert!(screens[0].contains("1 entry"), "{}", screens[0]);
}

#[test]
fn go_to_prompt() {
    let mut app = browser_app();
    app.handle_key(key('o'));
    let screens = screens("go_to_prompt", &mut app);
    assert!(screens[1].contains("Tab complete"), "{}", screens[1]);
}

#[test]
fn search_prompt() {
    let mut app = new_app();
    app.handle_key(code(KeyCode::Enter));
    app.handle_key(key('/'));
    for c in "take".chars() {
        app.handle_key(key(c));
    }
    screens("search_prompt", &mut app);
}

#[test]
fn bandwidth_cap_prompt_shows_the_cap_in_force() {
    let mut app = new_app();
    app.handle_key(key('B'));
    let screens = screens("bandwidth_cap_prompt", &mut app);
    assert!(screens[1].contains("Bandwidth cap"), "{}", screens[1]);
    assert!(
        screens[1].contains("cap 120 MiB/s (timetable)"),
        "{}",
        screens[1]
    );
}

#[test]
fn cancel_confirmation_names_the_route_and_the_chunks_in_flight() {
    let mut app = new_app();
    app.handle_key(key('x'));
    let screens = screens("cancel_confirmation", &mut app);
    assert!(
        screens[1].contains("s3://media-prod/batch-1/ → az://media-prod/batch-1/"),
        "{}",
        screens[1]
    );
    assert!(screens[1].contains("17 chunks in flight"), "{}", screens[1]);
}

/// The fixture with every running job paused (or cancelled) and `in_flight` chunks still
/// draining.
fn draining(in_flight: u32, cancel: bool) -> Snapshot {
    let mut s = snapshot(640);
    for job in &mut s.jobs {
        if job.state == JobState::Running {
            job.state = if cancel {
                JobState::Cancelled
            } else {
                JobState::Paused
            };
            job.in_flight = in_flight;
            job.rate = 0.0;
            job.eta_secs = None;
        }
    }
    s.in_flight = in_flight;
    s
}

#[test]
fn pausing_then_paused() {
    let mut app = new_app();
    app.on_snapshot(Arc::new(draining(5, false)));
    let pausing = screens("pausing", &mut app);
    assert!(
        pausing[0].contains("PAUSING — 5 in flight"),
        "{}",
        pausing[0]
    );
    app.on_snapshot(Arc::new(draining(0, false)));
    let paused = screens("paused", &mut app);
    assert!(paused[0].contains(" PAUSED "), "{}", paused[0]);
    assert!(!paused[0].contains("PAUSING"), "{}", paused[0]);
}

#[test]
fn cancelling_until_drained() {
    let mut app = new_app();
    app.on_snapshot(Arc::new(draining(3, true)));
    let screens = screens("cancelling", &mut app);
    assert!(screens[1].contains("CANCELLING"), "{}", screens[1]);
}

#[test]
fn stop_confirmation_when_attached_to_a_daemon() {
    let mut app = new_app();
    app.handle_key(key('Q'));
    let screens = screens("stop_confirmation", &mut app);
    assert!(screens[1].contains("Stop the daemon?"), "{}", screens[1]);
    assert!(
        screens[1].contains("detach"),
        "the hint says q detaches: {}",
        screens[1]
    );
}

#[test]
fn the_status_message_never_runs_into_the_help_hint() {
    let mut app = new_app();
    app.on_event(Event::Notice {
        message: "a very long message that goes on and on about what happened to the objects of \
                  job 1 and why they were skipped, far longer than any status bar"
            .into(),
    });
    for (width, height) in SIZES {
        let screen = draw(&mut app, width, height).backend().to_string();
        let status = screen.lines().last().unwrap_or_default();
        let before = status.split("? help").next().unwrap_or_default();
        assert!(before.ends_with(' '), "at {width}: {status}");
        if before.contains('│') {
            assert!(before.trim_end().ends_with('…'), "at {width}: {status}");
        }
    }
}

#[test]
fn the_answer_to_a_key_comes_first_in_the_status_bar_until_the_next_key() {
    let mut app = new_app();
    app.handle_key(key('B'));
    for c in "fast".chars() {
        app.handle_key(key(c));
    }
    app.handle_key(code(KeyCode::Enter));
    let screen = draw(&mut app, 80, 24).backend().to_string();
    let status = screen.lines().last().unwrap_or_default();
    assert!(status.contains("bandwidth cap"), "{status}");
    app.handle_key(code(KeyCode::Esc));
    let screen = draw(&mut app, 80, 24).backend().to_string();
    let status = screen.lines().last().unwrap_or_default();
    assert!(status.contains("concurrency 18"), "{status}");
}
