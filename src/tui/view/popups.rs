//! Windows over the screen: the key help (built from the binding table), the chunk inspector,
//! the text prompts and the cancel and stop confirmations.

use ratatui::Frame;
use ratatui::layout::{Constraint, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Cell, Clear, Padding, Paragraph, Row, Table, Wrap};
use tui_input::Input;

use crate::size::human;
use crate::tui::app::{App, Popup};
use crate::tui::keys::{BINDINGS, Context};
use crate::tui::theme;

pub(super) fn draw(frame: &mut Frame, app: &App) {
    match &app.popup {
        None => {}
        Some(Popup::Help) => help(frame),
        Some(Popup::Inspector) => inspector(frame, app),
        Some(Popup::Destination(input)) => {
            let title = format!(
                " Copy {} marked entr{} to ",
                app.browser.marked.len(),
                if app.browser.marked.len() == 1 {
                    "y"
                } else {
                    "ies"
                }
            );
            prompt(frame, &title, input, "Enter queue the copy   Esc cancel");
        }
        Some(Popup::Filter(input)) => prompt(frame, " Filter ", input, "Enter keep   Esc clear"),
        Some(Popup::Search(input)) => prompt(
            frame,
            " Search the objects ",
            input,
            "part of a key   Enter search   Esc clear",
        ),
        Some(Popup::GoTo(input)) => prompt(
            frame,
            " Go to ",
            input,
            "s3://bucket/prefix/, az://container/, s3:// or a local directory   Enter go   Esc cancel",
        ),
        Some(Popup::BwLimit(input)) => prompt(
            frame,
            " Bandwidth cap ",
            input,
            "50MiB/s, off, or Mon-Fri 08:00,50MiB/s 19:00,off (local time)   Enter set   Esc cancel",
        ),
        Some(Popup::ConfirmCancel(job)) => confirm(
            frame,
            " Cancel ",
            &format!(" Cancel job {job}? Nothing more is sent for it."),
            ("cancel the job", "keep it"),
        ),
        Some(Popup::ConfirmStop) if app.attached() => confirm(
            frame,
            " Stop the daemon ",
            " Stop the daemon? Its jobs wait until a blobway command starts it again; chunks in flight finish or return to pending.",
            ("stop it", "keep it running"),
        ),
        Some(Popup::ConfirmStop) => confirm(
            frame,
            " Stop ",
            " Stop and quit? Chunks in flight finish or return to pending; `blobway resume` goes on.",
            ("stop", "stay"),
        ),
    }
}

/// Asks a yes-or-no question: `y` does the first of `answers`, any other key the second.
fn confirm(frame: &mut Frame, title: &str, question: &str, answers: (&str, &str)) {
    const WIDTH: u16 = 60;
    let text = vec![
        Line::from(question.trim().to_string()),
        Line::from(vec![
            Span::styled("y", theme::key()),
            Span::raw(format!(" {}    ", answers.0)),
            Span::styled("any other key", theme::key()),
            Span::raw(format!(" {}", answers.1)),
        ]),
    ];
    let paragraph = Paragraph::new(text).wrap(Wrap { trim: true }).block(
        Block::bordered()
            .padding(Padding::horizontal(1))
            .title(Span::styled(title.to_string(), theme::error())),
    );
    let rows = paragraph.line_count(WIDTH) as u16;
    let area = frame
        .area()
        .centered(Constraint::Length(WIDTH), Constraint::Length(rows));
    frame.render_widget(Clear, area);
    frame.render_widget(paragraph, area);
}

fn help(frame: &mut Frame) {
    let mut lines = Vec::new();
    for context in [
        Context::Global,
        Context::Jobs,
        Context::Detail,
        Context::HeatMap,
        Context::Browser,
    ] {
        lines.push(Line::from(Span::styled(context.title(), theme::title())));
        for binding in BINDINGS.iter().filter(|b| b.context == context) {
            let keys: Vec<String> = binding.keys.iter().map(|k| k.label()).collect();
            lines.push(Line::from(vec![
                Span::styled(format!("  {:<12}", keys.join(" ")), theme::key()),
                Span::raw(binding.help),
            ]));
        }
    }
    let height = (lines.len() as u16 + 2).min(frame.area().height);
    let area = frame
        .area()
        .centered(Constraint::Length(92), Constraint::Length(height));
    frame.render_widget(Clear, area);
    frame.render_widget(
        Paragraph::new(lines).block(
            Block::bordered().title(Span::styled(" Keys (any key closes) ", theme::title())),
        ),
        area,
    );
}

fn inspector(frame: &mut Frame, app: &App) {
    let area = frame
        .area()
        .centered(Constraint::Percentage(90), Constraint::Percentage(70));
    frame.render_widget(Clear, area);
    let Some(detail) = app.snapshot.chunk_detail.as_ref() else {
        frame.render_widget(
            Paragraph::new(" loading the chunk…").block(Block::bordered().title(" Chunk ")),
            area,
        );
        return;
    };
    let record = &detail.record;
    let [summary_area, attempts_area, error_area] = ratatui::layout::Layout::vertical([
        Constraint::Length(6),
        Constraint::Min(3),
        Constraint::Length(5),
    ])
    .areas(area);
    let summary = vec![
        Line::from(vec![
            Span::styled(" Object  ", theme::header()),
            Span::raw(detail.key.clone()),
        ]),
        Line::from(vec![
            Span::styled(" Bytes   ", theme::header()),
            Span::raw(format!(
                "{}–{} ({})",
                detail.start,
                detail.end.saturating_sub(1),
                human(detail.end - detail.start)
            )),
        ]),
        Line::from(vec![
            Span::styled(" Block   ", theme::header()),
            Span::raw(detail.block_id.clone()),
        ]),
        Line::from(vec![
            Span::styled(" State   ", theme::header()),
            Span::raw(format!(
                "{}, {} attempt(s)",
                record.state.name(),
                record.attempts
            )),
            Span::raw(match record.crc64 {
                Some(crc) => format!(", CRC-64/NVME {crc:016x}"),
                None => String::new(),
            }),
        ]),
    ];
    let title = format!(
        " Chunk {} of object {} (job {}) — Esc closes ",
        detail.chunk, detail.file, detail.job
    );
    frame.render_widget(
        Paragraph::new(summary).block(Block::bordered().title(Span::styled(title, theme::title()))),
        summary_area,
    );
    let rows = record.history.iter().enumerate().map(|(i, attempt)| {
        let number = record.attempts as usize - record.history.len() + i + 1;
        let (outcome, class, status, message) = match &attempt.error {
            None => (
                "ok".to_string(),
                String::new(),
                String::new(),
                String::new(),
            ),
            Some(e) => (
                "failed".to_string(),
                e.class.name().to_string(),
                e.status.map(|s| s.to_string()).unwrap_or_default(),
                e.message.clone(),
            ),
        };
        let style = if attempt.error.is_some() {
            theme::error()
        } else {
            ratatui::style::Style::new()
        };
        Row::new(vec![
            Cell::from(number.to_string()),
            Cell::from(clock(attempt.started_ms)),
            Cell::from(format!("{} ms", attempt.latency_ms)),
            Cell::from(human(attempt.bytes)),
            Cell::from(outcome),
            Cell::from(class),
            Cell::from(status),
            Cell::from(message),
        ])
        .style(style)
    });
    let header = Row::new(
        [
            "#",
            "STARTED (UTC)",
            "LATENCY",
            "BYTES",
            "OUTCOME",
            "CLASS",
            "HTTP",
            "MESSAGE",
        ]
        .map(|h| Cell::from(h).style(theme::header())),
    );
    let widths = [
        Constraint::Length(3),
        Constraint::Length(13),
        Constraint::Length(9),
        Constraint::Length(10),
        Constraint::Length(8),
        Constraint::Length(15),
        Constraint::Length(5),
        Constraint::Min(20),
    ];
    let empty = record.history.is_empty();
    let table = Table::new(rows, widths)
        .header(header)
        .block(Block::bordered().title(Span::styled(" Attempts ", theme::title())));
    frame.render_widget(table, attempts_area);
    let last_error = record
        .history
        .iter()
        .rev()
        .find_map(|a| a.error.as_ref())
        .map(|e| {
            let status = e.status.map(|s| format!(" (HTTP {s})")).unwrap_or_default();
            format!("{}{status}: {}", e.class.name(), e.message)
        })
        .unwrap_or_else(|| "none".into());
    frame.render_widget(
        Paragraph::new(last_error)
            .wrap(Wrap { trim: true })
            .block(Block::bordered().title(Span::styled(" Last error ", theme::title()))),
        error_area,
    );
    if empty {
        let inner = attempts_area.inner(ratatui::layout::Margin::new(2, 2));
        frame.render_widget(
            Paragraph::new("not attempted yet")
                .style(theme::dim())
                .wrap(Wrap { trim: true }),
            inner,
        );
    }
}

/// Milliseconds since the epoch as `HH:MM:SS.mmm` (UTC).
fn clock(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let day = secs.rem_euclid(86_400);
    format!(
        "{:02}:{:02}:{:02}.{millis:03}",
        day / 3600,
        day % 3600 / 60,
        day % 60
    )
}

fn prompt(frame: &mut Frame, title: &str, input: &Input, hint: &str) {
    let width = frame.area().width.saturating_sub(10).clamp(20, 100);
    let area: Rect = frame
        .area()
        .centered(Constraint::Length(width), Constraint::Length(4));
    frame.render_widget(Clear, area);
    let inner_width = area.width.saturating_sub(2) as usize;
    let scroll = input.visual_scroll(inner_width);
    let block = Block::bordered().title(Span::styled(title.to_string(), theme::title()));
    let text = vec![
        Line::from(input.value().chars().skip(scroll).collect::<String>()),
        Line::from(Span::styled(hint.to_string(), theme::dim())),
    ];
    frame.render_widget(Paragraph::new(text).block(block), area);
    let x = area.x + 1 + (input.visual_cursor().saturating_sub(scroll)) as u16;
    frame.set_cursor_position((x.min(area.right().saturating_sub(2)), area.y + 1));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_shows_utc_time_of_day() {
        assert_eq!(clock(1_700_000_000_123), "22:13:20.123");
    }
}
