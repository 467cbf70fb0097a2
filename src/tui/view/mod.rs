//! Drawing: the screen frame (tabs, main area, status bar) and the popups over it. Every
//! function here reads the [`App`] and draws; none of them waits on anything.

mod browser;
mod columns;
mod detail;
mod jobs;
mod popups;

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::Style;
use ratatui::text::{Line, Span};
use ratatui::widgets::Paragraph;

use super::app::{App, Screen};
use super::theme;
use crate::engine::snapshot::Activity;
use crate::size::human;

/// Draws the whole screen.
pub fn draw(frame: &mut Frame, app: &mut App) {
    let [tabs, main, status] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(3),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    draw_tabs(frame, app, tabs);
    match app.screen {
        Screen::Jobs => jobs::draw(frame, app, main),
        Screen::Detail => detail::draw(frame, app, main),
        Screen::Browser => browser::draw(frame, app, main),
    }
    draw_status(frame, app, status);
    popups::draw(frame, app);
}

fn draw_tabs(frame: &mut Frame, app: &App, area: Rect) {
    let tab = |label: String, active: bool| {
        let style = if active {
            theme::title().reversed()
        } else {
            theme::dim()
        };
        Span::styled(format!(" {label} "), style)
    };
    let mut spans = vec![
        Span::styled(" blobway ", theme::title()),
        Span::raw(" "),
        tab("1 Jobs".into(), app.screen == Screen::Jobs),
        Span::raw(" "),
        tab("2 Browser".into(), app.screen == Screen::Browser),
    ];
    if let Some(detail) = &app.detail {
        spans.push(Span::raw(" "));
        spans.push(tab(
            format!("Job {}", detail.job),
            app.screen == Screen::Detail,
        ));
    }
    frame.render_widget(Paragraph::new(Line::from(spans)), area);
}

/// The status bar: what the engine does, then as many of its numbers as fit whole, the
/// latest message cut to the room left, and the help hint, never overlapped.
fn draw_status(frame: &mut Frame, app: &App, area: Rect) {
    let s = &app.snapshot;
    let activity = s.activity();
    let mode = if s.adaptive { "auto" } else { "manual" };
    let hint = hint(app);
    let room = (area.width as usize).saturating_sub(hint.width() + 1);
    let mut spans = vec![Span::styled(
        format!(" {} ", activity.label()),
        theme::global_state(activity),
    )];
    let mut parts = vec![format!("concurrency {} {mode}", s.limit)];
    parts.push(format!("in flight {}", s.in_flight));
    if matches!(
        activity,
        Activity::Running | Activity::Pausing(_) | Activity::Cancelling(_)
    ) {
        parts.push(format!("{}/s", human(s.rate as u64)));
    }
    parts.extend(s.cap());
    parts.push(format!(
        "mem {}/{}",
        human(s.bytes_in_flight),
        human(s.memory_budget)
    ));
    parts.extend(s.running_carried().map(str::to_string));
    let mut used = Line::from(spans.clone()).width();
    // The answer to the last key (until the next) comes before the numbers.
    if let Some(answer) = &app.answer {
        spans.push(Span::styled(
            format!("  {}", head(answer, room.saturating_sub(used + 2))),
            theme::key(),
        ));
        parts.clear();
    }
    for part in parts {
        // Whole or not at all: a number is never cut.
        if used + 2 + part.chars().count() > room {
            break;
        }
        used += 2 + part.chars().count();
        spans.push(Span::raw(format!("  {part}")));
    }
    if let Some(notice) = app.notices.back().filter(|_| app.answer.is_none()) {
        let left = room.saturating_sub(used + 4);
        if left >= 8 {
            spans.push(Span::styled(
                format!("  │ {}", head(&notice.text, left)),
                theme::dim(),
            ));
        }
    }
    let hint_width = hint.width() as u16;
    let [left, right] =
        Layout::horizontal([Constraint::Min(0), Constraint::Length(hint_width)]).areas(area);
    frame.render_widget(
        Paragraph::new(Line::from(spans)).style(theme::status_bar()),
        left,
    );
    frame.render_widget(Paragraph::new(hint).style(theme::status_bar()), right);
}

/// The help hint at the end of the status bar.
fn hint(app: &App) -> Line<'static> {
    Line::from(vec![
        Span::styled("?", theme::key()),
        Span::raw(" help  "),
        Span::styled("q", theme::key()),
        Span::raw(if app.attached() { " detach " } else { " quit " }),
    ])
}

/// A text progress bar of `width` cells.
fn bar(done: u64, total: u64, width: usize) -> String {
    let filled = if total == 0 {
        width
    } else {
        ((done as f64 / total as f64) * width as f64).round() as usize
    }
    .min(width);
    format!("{}{}", "█".repeat(filled), "░".repeat(width - filled))
}

/// Seconds as `1h02m`, `3m05s` or `42s`.
fn duration(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m{:02}s", secs / 60, secs % 60),
        _ => format!("{}h{:02}m", secs / 3600, secs % 3600 / 60),
    }
}

/// Cuts `text` to `width` characters, keeping its end (where keys differ).
fn tail(text: &str, width: usize) -> String {
    let count = text.chars().count();
    if count <= width || width < 2 {
        return text.to_string();
    }
    let kept: String = text.chars().skip(count - (width - 1)).collect();
    format!("…{kept}")
}

/// Cuts `text` to `width` characters, keeping its start (for sentences).
fn head(text: &str, width: usize) -> String {
    if text.chars().count() <= width || width < 2 {
        return text.to_string();
    }
    let kept: String = text.chars().take(width - 1).collect();
    format!("{kept}…")
}

/// Lays `items` (each a few spans that belong together) out in lines of `width`, two spaces
/// apart, starting a new line rather than splitting an item.
fn flow(items: Vec<Vec<Span<'static>>>, width: u16) -> Vec<Line<'static>> {
    let mut lines: Vec<Line<'static>> = Vec::new();
    let mut line: Vec<Span<'static>> = Vec::new();
    let mut used = 0;
    for item in items {
        let size: usize = item.iter().map(Span::width).sum();
        let gap = if line.is_empty() { 1 } else { 2 };
        if !line.is_empty() && used + gap + size > width as usize {
            lines.push(Line::from(std::mem::take(&mut line)));
            used = 0;
        }
        let gap = if line.is_empty() { 1 } else { 2 };
        line.push(Span::raw(" ".repeat(gap)));
        line.extend(item);
        used += gap + size;
    }
    if !line.is_empty() {
        lines.push(Line::from(line));
    }
    lines
}

/// A style for a whole row when it is under the cursor.
fn row_style(selected: bool) -> Style {
    if selected {
        theme::selected()
    } else {
        Style::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_formatting_helpers() {
        assert_eq!(bar(1, 4, 8), "██░░░░░░");
        assert_eq!(bar(0, 0, 3), "███");
        assert_eq!(duration(42), "42s");
        assert_eq!(duration(185), "3m05s");
        assert_eq!(duration(7500), "2h05m");
        assert_eq!(tail("photos/2024/holiday.jpg", 10), "…liday.jpg");
        assert_eq!(tail("short", 10), "short");
        assert_eq!(head("job 7: cancelled by the operator", 10), "job 7: ca…");
    }
}
