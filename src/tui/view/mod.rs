//! Drawing: the screen frame (tabs, main area, status bar) and the popups over it. Every
//! function here reads the [`App`] and draws; none of them waits on anything.

mod browser;
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

fn draw_status(frame: &mut Frame, app: &App, area: Rect) {
    let s = &app.snapshot;
    let paused = s.paused();
    let mode = if s.adaptive { "auto" } else { "manual" };
    let mut spans = vec![
        Span::styled(
            if paused { " PAUSED " } else { " RUNNING " },
            theme::global_state(paused),
        ),
        Span::raw(format!(
            "  concurrency {} {mode}  in flight {}  {}/s  mem {}/{}",
            s.limit,
            s.in_flight,
            human(s.rate as u64),
            human(s.bytes_in_flight),
            human(s.memory_budget),
        )),
    ];
    if let Some(cap) = s.cap() {
        spans.push(Span::raw(format!("  {cap}")));
    }
    if let Some(carried) = s.running_carried() {
        spans.push(Span::raw(format!("  {carried}")));
    }
    if let Some(notice) = app.notices.back() {
        spans.push(Span::styled(format!("  │ {notice}"), theme::dim()));
    }
    let hint = Line::from(vec![
        Span::styled("?", theme::key()),
        Span::raw(" help  "),
        Span::styled("q", theme::key()),
        Span::raw(if app.attached() { " detach " } else { " quit " }),
    ]);
    let hint_width = hint.width() as u16;
    let [left, right] =
        Layout::horizontal([Constraint::Min(0), Constraint::Length(hint_width)]).areas(area);
    frame.render_widget(
        Paragraph::new(Line::from(spans)).style(theme::status_bar()),
        left,
    );
    frame.render_widget(Paragraph::new(hint).style(theme::status_bar()), right);
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
    }
}
