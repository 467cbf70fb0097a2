//! Colours and symbols by role, in one place.

use ratatui::style::{Color, Modifier, Style};

use crate::engine::Decision;
use crate::engine::snapshot::Activity;
use crate::state::{ChunkState, FileState, JobState};

/// Titles and headers.
pub fn title() -> Style {
    Style::new().fg(Color::Cyan).add_modifier(Modifier::BOLD)
}

/// Column headers.
pub fn header() -> Style {
    Style::new().fg(Color::Gray).add_modifier(Modifier::BOLD)
}

/// The line under the cursor.
pub fn selected() -> Style {
    Style::new()
        .bg(Color::DarkGray)
        .add_modifier(Modifier::BOLD)
}

/// Secondary text.
pub fn dim() -> Style {
    Style::new().fg(Color::DarkGray)
}

/// Key names in help and hints.
pub fn key() -> Style {
    Style::new().fg(Color::Yellow).add_modifier(Modifier::BOLD)
}

/// Errors.
pub fn error() -> Style {
    Style::new().fg(Color::Red)
}

/// The status bar.
pub fn status_bar() -> Style {
    Style::new().bg(Color::Rgb(30, 30, 46)).fg(Color::White)
}

/// The global state badge: green when running, yellow when pausing or paused, grey when idle.
pub fn global_state(activity: Activity) -> Style {
    let color = match activity {
        Activity::Running => Color::Green,
        Activity::Idle => Color::Gray,
        Activity::Pausing(_) | Activity::Paused => Color::Yellow,
        Activity::Cancelling(_) => Color::Red,
    };
    Style::new()
        .fg(Color::Black)
        .bg(color)
        .add_modifier(Modifier::BOLD)
}

/// A job state.
pub fn job_state(state: JobState) -> Style {
    Style::new().fg(match state {
        JobState::Queued => Color::Gray,
        JobState::Running => Color::Green,
        JobState::Paused => Color::Yellow,
        JobState::Done => Color::Blue,
        JobState::Failed => Color::Red,
        JobState::Cancelled => Color::DarkGray,
    })
}

/// An object state.
pub fn file_state(state: FileState) -> Style {
    Style::new().fg(match state {
        FileState::Transferring => Color::Cyan,
        FileState::Committing => Color::Magenta,
        FileState::Done => Color::Green,
        FileState::Skipped => Color::Blue,
        FileState::Failed => Color::Red,
    })
}

/// A heat-map cell: its symbol and colour by state, retried chunks shaded by attempts.
pub fn cell(state: ChunkState, attempts: u32) -> (&'static str, Color) {
    match state {
        ChunkState::Pending if attempts == 0 => ("·", Color::DarkGray),
        ChunkState::Pending => ("▒", retry_shade(attempts)),
        ChunkState::InProgress => ("█", Color::Cyan),
        ChunkState::Completed if attempts <= 1 => ("█", Color::Green),
        ChunkState::Completed => ("█", retry_shade(attempts)),
        ChunkState::Failed => ("█", Color::Red),
    }
}

/// Yellow to red as attempts grow.
fn retry_shade(attempts: u32) -> Color {
    match attempts {
        0..=2 => Color::Rgb(200, 220, 60),
        3 => Color::Rgb(240, 180, 40),
        4..=5 => Color::Rgb(245, 130, 30),
        _ => Color::Rgb(230, 80, 40),
    }
}

/// A controller decision on the concurrency graph: symbol and colour.
pub fn decision(decision: Decision) -> (&'static str, Color) {
    match decision {
        Decision::ThrottleCut => ("throttle cut", Color::Red),
        Decision::ErrorCut => ("error cut", Color::Magenta),
        Decision::Increase => ("increase", Color::Green),
        Decision::Operator => ("operator", Color::Yellow),
        Decision::Ease => ("ease", Color::LightRed),
        Decision::Probe => ("probe", Color::White),
    }
}
