//! The real binary in a real terminal: `blobway demo` runs inside tmux, keys are sent with
//! `send-keys` and the screen is read with `capture-pane`, as an operator would use it.
//! Checks: the heat-map is shown; after `P` the status bar reads PAUSED and the completed
//! bytes stop growing; after `R` it reads RUNNING and they grow again; `?` lists the pause and
//! concurrency keys; `q` exits within 5 seconds. And: five `+` sent at once raise the limit by
//! exactly five; `p` shows PAUSING until the chunks in flight are done, then PAUSED; `*` then
//! `c` on a filtered listing queues exactly the entries the filter shows; `demo --keep` keeps
//! a pause. A copy whose route cannot be planned says so once on a terminal.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::tmux::{Tmux, status_line};

/// Bytes completed, read from the job detail header ("12.00 MiB/376.21 MiB").
fn completed_bytes(screen: &str) -> f64 {
    let header = screen
        .lines()
        .find(|l| l.contains("Job 1 "))
        .unwrap_or_else(|| panic!("no job header:\n{screen}"));
    // "12.00 MiB/376.21 MiB": the number, then the unit glued to the slash.
    let words: Vec<&str> = header.split_whitespace().collect();
    let i = words
        .iter()
        .position(|w| w.contains('/') && w.chars().next().is_some_and(|c| c.is_ascii_alphabetic()))
        .unwrap_or_else(|| panic!("no byte count in {header}"));
    let number: f64 = words[i - 1]
        .parse()
        .unwrap_or_else(|_| panic!("no number in {header}"));
    let unit = words[i].split('/').next().unwrap_or_default();
    let scale = match unit {
        "B" => 1.0,
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        other => panic!("unit {other} in {header}"),
    };
    number * scale
}

#[test]
fn an_operator_pauses_resumes_reads_help_and_quits_in_a_real_terminal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let command = format!(
        "{} --state {}/state.redb demo --dir {} --bandwidth 4MiB; echo BLOBWAY-EXIT-$?; sleep 600",
        env!("CARGO_BIN_EXE_blobway"),
        dir.path().display(),
        dir.path().display()
    );
    let tmux = Tmux::start(&command, 200, 60);
    tmux.wait_for("the jobs screen", Duration::from_secs(60), |s| {
        s.contains("RUNNING") && job_state(s, 1).as_deref() == Some("RUNNING")
    });

    // The job detail with its heat-map.
    tmux.send("Enter");
    tmux.wait_for("the objects", Duration::from_secs(10), |s| {
        s.contains("Objects (8)")
    });
    for _ in 0..5 {
        tmux.send("j");
    }
    let screen = tmux.wait_for("the heat-map", Duration::from_secs(20), |s| {
        s.contains("320 chunks × 1 MiB") && s.contains("per cell · media/keynote-4k.mov")
    });
    assert!(screen.contains("in flight"), "{screen}");

    // Pause: the status bar says PAUSED; once the chunks in flight are done, nothing moves.
    tmux.send("P");
    tmux.wait_for(
        "PAUSED with nothing in flight",
        Duration::from_secs(30),
        |s| {
            let status = status_line(s);
            status.contains("PAUSED") && status.contains("in flight 0 ")
        },
    );
    let before = completed_bytes(&tmux.screen());
    std::thread::sleep(Duration::from_secs(2));
    let screen = tmux.screen();
    assert!(status_line(&screen).contains("PAUSED"), "{screen}");
    assert_eq!(
        completed_bytes(&screen),
        before,
        "bytes moved while paused:\n{screen}"
    );

    // Resume: RUNNING again, and the bytes grow.
    tmux.send("R");
    tmux.wait_for("RUNNING", Duration::from_secs(10), |s| {
        status_line(s).contains("RUNNING")
    });
    tmux.wait_for("the bytes to grow again", Duration::from_secs(20), |s| {
        completed_bytes(s) > before
    });

    // Help lists the pause and concurrency keys.
    tmux.send("?");
    let help = tmux.wait_for("the help", Duration::from_secs(5), |s| {
        s.contains("Keys — ")
    });
    assert!(help.contains("pause every job"), "{help}");
    assert!(help.contains("resume every job"), "{help}");
    assert!(help.contains("raise the concurrency limit"), "{help}");
    assert!(help.contains("lower the concurrency limit"), "{help}");
    tmux.send("Escape");
    tmux.wait_for("the help to close", Duration::from_secs(5), |s| {
        !s.contains("Keys — ")
    });

    // Quit within five seconds, terminal restored, log path printed.
    let asked = Instant::now();
    tmux.send("q");
    let screen = tmux.wait_for("blobway to exit", Duration::from_secs(5), |s| {
        s.contains("BLOBWAY-EXIT-")
    });
    assert!(asked.elapsed() < Duration::from_secs(5));
    assert!(screen.contains("BLOBWAY-EXIT-0"), "{screen}");
    assert!(screen.contains("log: "), "{screen}");
}

/// The state of job `id` in the jobs table: the word after its number at the start of a row.
fn job_state(screen: &str, id: u64) -> Option<String> {
    screen.lines().find_map(|line| {
        let mut words = line.trim_start_matches(['│', ' ']).split_whitespace();
        (words.next() == Some(id.to_string().as_str()))
            .then(|| words.next().map(str::to_string))
            .flatten()
    })
}

/// The concurrency limit the status bar shows ("concurrency 21 manual").
fn limit(screen: &str) -> u32 {
    let status = status_line(screen);
    let words: Vec<&str> = status.split_whitespace().collect();
    let i = words
        .iter()
        .position(|w| *w == "concurrency")
        .unwrap_or_else(|| panic!("no limit in {status}"));
    words[i + 1]
        .parse()
        .unwrap_or_else(|_| panic!("no limit in {status}"))
}

#[test]
fn every_key_press_counts_pausing_drains_and_a_filtered_listing_is_queued_exactly() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Run twice: the second time with --keep, which must keep the pause the first left.
    let run = |keep: &str| {
        format!(
            "{} --state {}/state.redb demo --dir {} --bandwidth 2MiB {keep}",
            env!("CARGO_BIN_EXE_blobway"),
            dir.path().display(),
            dir.path().display()
        )
    };
    let command = format!(
        "{}; echo FIRST-EXIT-$?; {}; echo BLOBWAY-EXIT-$?; sleep 600",
        run(""),
        run("--keep")
    );
    let tmux = Tmux::start(&command, 200, 60);
    tmux.wait_for("the jobs screen", Duration::from_secs(60), |s| {
        status_line(s).contains("RUNNING") && job_state(s, 1).as_deref() == Some("RUNNING")
    });

    // Manual, then five `+` in one send-keys (well within 200 ms): exactly five more.
    tmux.send("a");
    let screen = tmux.wait_for("manual", Duration::from_secs(10), |s| {
        status_line(s).contains(" manual")
    });
    let before = limit(&screen);
    let started = Instant::now();
    tmux.send_all(&["+", "+", "+", "+", "+"]);
    assert!(
        started.elapsed() < Duration::from_millis(200),
        "sent slowly"
    );
    tmux.wait_for("five more", Duration::from_secs(10), |s| {
        limit(s) == before + 5
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(limit(&tmux.screen()), before + 5, "exactly five more");

    // `p`: PAUSING while the chunks in flight drain, then PAUSED with none left.
    tmux.send("p");
    let pausing = tmux.wait_for("PAUSING", Duration::from_secs(10), |s| {
        status_line(s).contains("PAUSING — ")
    });
    assert_eq!(
        job_state(&pausing, 1).as_deref(),
        Some("PAUSING"),
        "{pausing}"
    );
    tmux.wait_for(
        "PAUSED with nothing in flight",
        Duration::from_secs(60),
        |s| {
            let status = status_line(s);
            status.contains(" PAUSED ") && status.contains("in flight 0 ")
        },
    );

    // The browser: into logs/, filter on "-22", mark all shown, copy into the folder proposed.
    tmux.send("2");
    tmux.wait_for("the listing", Duration::from_secs(10), |s| {
        s.contains("logs/")
    });
    tmux.send("o");
    tmux.wait_for("the go-to prompt", Duration::from_secs(5), |s| {
        s.contains("Open a location")
    });
    tmux.send_literal("logs/");
    tmux.send("Enter");
    tmux.wait_for("the logs", Duration::from_secs(10), |s| {
        s.contains("gateway-2026-11-21.log") && s.contains("gateway-2026-11-22.log")
    });
    tmux.send("/");
    tmux.send_literal("-22");
    tmux.send("Enter");
    tmux.wait_for("the filter", Duration::from_secs(5), |s| {
        s.contains("1 entry") && !s.contains("gateway-2026-11-21.log")
    });
    tmux.send("*");
    tmux.wait_for("the mark", Duration::from_secs(5), |s| {
        s.contains("1 marked")
    });
    tmux.send("c");
    tmux.wait_for("the destination prompt", Duration::from_secs(5), |s| {
        s.contains("Copy 1 marked entry into the folder")
    });
    tmux.send("Enter");
    let screen = tmux.wait_for("the queued job", Duration::from_secs(20), |s| {
        s.contains("queued ") && job_state(s, 2).is_some()
    });
    // The status line and, once it is in, the events pane say so: of the one file shown.
    let queued: Vec<&str> = screen.lines().filter(|l| l.contains("queued ")).collect();
    assert!(!queued.is_empty(), "{screen}");
    assert!(
        queued
            .iter()
            .all(|l| l.contains("logs/gateway-2026-11-22.log")),
        "{screen}"
    );
    assert!(
        job_state(&screen, 3).is_none(),
        "one job queued only: {screen}"
    );
    assert!(!screen.contains("gateway-2026-11-21.log →"), "{screen}");
    tmux.send("q");

    // `demo --keep` (the second run's screen has no "queued" message): the paused job is
    // loaded paused, and stays so.
    let screen = tmux.wait_for("the kept demo", Duration::from_secs(60), |s| {
        job_state(s, 1).is_some() && !s.contains("queued ")
    });
    assert_eq!(job_state(&screen, 1).as_deref(), Some("PAUSED"), "{screen}");
    std::thread::sleep(Duration::from_secs(2));
    let screen = tmux.screen();
    assert_eq!(job_state(&screen, 1).as_deref(), Some("PAUSED"), "{screen}");
    tmux.send("q");
    tmux.wait_for("blobway to exit", Duration::from_secs(10), |s| {
        s.contains("BLOBWAY-EXIT-0")
    });
}

#[test]
fn a_route_that_cannot_be_planned_is_reported_once_on_a_terminal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let command = format!(
        "{} --state {d}/s.redb --no-daemon copy {d}/missing/ {d}/out/; echo BLOBWAY-EXIT-$?; sleep 600",
        env!("CARGO_BIN_EXE_blobway"),
        d = dir.path().display()
    );
    let tmux = Tmux::start(&command, 200, 30);
    let screen = tmux.wait_for("the run to end", Duration::from_secs(30), |s| {
        s.contains("BLOBWAY-EXIT-")
    });
    assert!(screen.contains("BLOBWAY-EXIT-2"), "{screen}");
    assert_eq!(
        screen.matches("cannot list the source").count(),
        1,
        "said once, not again in the summary:\n{screen}"
    );
}
