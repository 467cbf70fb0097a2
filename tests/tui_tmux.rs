//! The real binary in a real terminal: `blobway demo` runs inside tmux, keys are sent with
//! `send-keys` and the screen is read with `capture-pane`, as an operator would use it.
//! Checks: the heat-map is shown; after `P` the status bar reads PAUSED and the completed
//! bytes stop growing; after `R` it reads RUNNING and they grow again; `?` lists the pause and
//! concurrency keys; `q` exits within 5 seconds.
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
        s.contains("RUNNING") && s.contains("1    RUNNING")
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
        s.contains("Keys (any key closes)")
    });
    assert!(help.contains("pause every job"), "{help}");
    assert!(help.contains("resume every job"), "{help}");
    assert!(help.contains("raise the concurrency limit"), "{help}");
    assert!(help.contains("lower the concurrency limit"), "{help}");
    tmux.send("Escape");
    tmux.wait_for("the help to close", Duration::from_secs(5), |s| {
        !s.contains("Keys (any key closes)")
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
