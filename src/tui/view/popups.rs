//! Windows over the screen: the key help (built from the binding table), the chunk inspector,
//! the text prompts and the cancel and stop confirmations.

use ratatui::Frame;
use ratatui::layout::{Constraint, Rect};
use ratatui::style::Style;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Clear, Padding, Paragraph, Wrap};
use tui_input::Input;

use super::columns::{self, Column, Cut};
use crate::size::human;
use crate::tui::app::{App, Popup, counted};
use crate::tui::keys::{BINDINGS, Context};
use crate::tui::theme;

pub(super) fn draw(frame: &mut Frame, app: &mut App) {
    if let Some(Popup::Help(scroll)) = app.popup {
        // The help clamps its scrolling to its length, so scrolling back starts at once.
        app.popup = Some(Popup::Help(help(frame, scroll)));
        return;
    }
    let app = &*app;
    match &app.popup {
        None | Some(Popup::Help(_)) => {}
        Some(Popup::Inspector) => inspector(frame, app),
        Some(Popup::Destination(input)) => {
            let marked = app.browser.marked.len() as u64;
            let title = format!(
                " Copy {} into the folder ",
                counted(marked, "marked entry", "marked entries")
            );
            // The rule, shown on the first entry: each goes into the folder by its name.
            let example = app
                .browser
                .marked
                .iter()
                .next()
                .and_then(|first| first.strip_prefix(&app.browser.location))
                .map(|name| {
                    format!(
                        "e.g. {}   ",
                        crate::tui::app::destination_of(input.value(), name)
                    )
                })
                .unwrap_or_default();
            prompt(
                frame,
                &title,
                input,
                &format!("each by its name, {example}Enter queue   Esc cancel"),
            );
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
            " Open a location ",
            input,
            "s3://bucket/prefix/, az://container/, s3:// or a directory   Tab complete   Enter go   Esc cancel",
        ),
        Some(Popup::BwLimit(input)) => prompt(
            frame,
            " Bandwidth cap ",
            input,
            &format!(
                "now: {}   50MiB/s, off, or Mon-Fri 08:00,50MiB/s 19:00,off (local time)   Enter set   Esc cancel",
                match app.snapshot.bwlimit.as_str() {
                    "" => "off",
                    cap => cap,
                }
            ),
        ),
        Some(Popup::ConfirmCancel(job)) => {
            let view = app.snapshot.jobs.iter().find(|j| j.id == *job);
            let route = view
                .map(|j| format!(" ({} → {})", j.source, j.destination))
                .unwrap_or_default();
            let in_flight = view.map_or(0, |j| j.in_flight);
            let drain = match in_flight {
                0 => String::new(),
                n => format!(
                    " The {} in flight finish first (CANCELLING until then).",
                    counted(u64::from(n), "chunk", "chunks")
                ),
            };
            confirm(
                frame,
                " Cancel ",
                &format!(
                    " Cancel job {job}{route}? No new chunk starts from now on.{drain} Its unfinished objects stay unwritten at the destination."
                ),
                ("cancel the job", "keep it"),
            )
        }
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
    // Wrapped here, so the height always holds the answers' line.
    let mut text: Vec<Line> = wrap(question.trim(), WIDTH as usize - 4)
        .into_iter()
        .map(Line::from)
        .collect();
    text.push(Line::from(vec![
        Span::styled("y", theme::key()),
        Span::raw(format!(" {}    ", answers.0)),
        Span::styled("any other key", theme::key()),
        Span::raw(format!(" {}", answers.1)),
    ]));
    let rows = text.len() as u16 + 2;
    let paragraph = Paragraph::new(text).block(
        Block::bordered()
            .padding(Padding::horizontal(1))
            .title(Span::styled(title.to_string(), theme::error())),
    );
    let area = frame
        .area()
        .centered(Constraint::Length(WIDTH), Constraint::Length(rows));
    frame.render_widget(Clear, area);
    frame.render_widget(paragraph, area);
}

/// Draws the help scrolled down `scroll` lines (at most to its end); returns the scroll
/// drawn. Each binding's words wrap under themselves, right of its keys.
fn help(frame: &mut Frame, scroll: u16) -> u16 {
    const KEYS: usize = 16;
    let width = frame.area().width.min(96);
    let room = (width as usize).saturating_sub(2 + KEYS).max(10);
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
            for (i, part) in wrap(binding.help, room).into_iter().enumerate() {
                let keys = if i == 0 {
                    keys.join(" ")
                } else {
                    String::new()
                };
                lines.push(Line::from(vec![
                    Span::styled(format!("  {keys:<w$}", w = KEYS - 2), theme::key()),
                    Span::raw(part),
                ]));
            }
        }
    }
    let total = lines.len() as u16;
    let height = (total + 2).min(frame.area().height);
    let area = frame
        .area()
        .centered(Constraint::Length(width), Constraint::Length(height));
    let shown = height.saturating_sub(2);
    let scroll = scroll.min(total.saturating_sub(shown));
    let place = if total > shown {
        format!(
            " {}–{} of {} ",
            scroll + 1,
            (scroll + shown).min(total),
            total
        )
    } else {
        String::new()
    };
    frame.render_widget(Clear, area);
    frame.render_widget(
        Paragraph::new(lines).scroll((scroll, 0)).block(
            Block::bordered()
                .title(Span::styled(
                    " Keys — j/k PgUp/PgDn g/G scroll, Esc closes ",
                    theme::title(),
                ))
                .title_bottom(Span::styled(place, theme::dim())),
        ),
        area,
    );
    scroll
}

/// `text` in lines of at most `width` characters, broken between words.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.chars().count() + 1 + word.chars().count() > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    lines.push(line);
    lines
}

fn inspector(frame: &mut Frame, app: &App) {
    // Seven tenths of the screen, but on a small one all of it but a line above and below.
    let height = frame.area().height;
    let height = height.saturating_sub(2).min((height * 7 / 10).max(22));
    let area = frame
        .area()
        .centered(Constraint::Percentage(90), Constraint::Length(height));
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
    let first = record.attempts as usize - record.history.len() + 1;
    let mut columns: [Vec<(String, Style)>; 8] = Default::default();
    let mut styles = Vec::new();
    for (i, attempt) in record.history.iter().enumerate() {
        let style = if attempt.error.is_some() {
            theme::error()
        } else {
            Style::new()
        };
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
        let values = [
            (first + i).to_string(),
            clock(attempt.started_ms),
            format!("{} ms", attempt.latency_ms),
            human(attempt.bytes),
            outcome,
            class,
            status,
            message,
        ];
        for (column, value) in columns.iter_mut().zip(values) {
            column.push((value, Style::new()));
        }
        styles.push(style);
    }
    let [
        number,
        started,
        latency,
        bytes,
        outcome,
        class,
        status,
        message,
    ] = columns;
    let columns = vec![
        Column::kept("#", number),
        Column::kept("STARTED (UTC)", started),
        Column::kept("LATENCY", latency),
        Column::droppable("BYTES", bytes, 3),
        Column::kept("OUTCOME", outcome),
        Column::droppable("CLASS", class, 1),
        Column::droppable("HTTP", status, 4),
        Column::flexible("MESSAGE", message, 20).cut(Cut::End),
    ];
    let empty = record.history.is_empty();
    let block = Block::bordered().title(Span::styled(" Attempts ", theme::title()));
    let width = block.inner(attempts_area).width;
    let table = columns::table(columns, &styles, width).block(block);
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
    // The hint wraps between words (on a narrow terminal it takes two or three lines).
    let hints = wrap(hint, width.saturating_sub(2) as usize);
    let area: Rect = frame.area().centered(
        Constraint::Length(width),
        Constraint::Length(3 + hints.len() as u16),
    );
    frame.render_widget(Clear, area);
    let inner_width = area.width.saturating_sub(2) as usize;
    let scroll = input.visual_scroll(inner_width);
    let block = Block::bordered().title(Span::styled(title.to_string(), theme::title()));
    let mut text = vec![Line::from(
        input.value().chars().skip(scroll).collect::<String>(),
    )];
    text.extend(
        hints
            .into_iter()
            .map(|h| Line::from(Span::styled(h, theme::dim()))),
    );
    frame.render_widget(Paragraph::new(text).block(block), area);
    let x = area.x + 1 + (input.visual_cursor().saturating_sub(scroll)) as u16;
    frame.set_cursor_position((x.min(area.right().saturating_sub(2)), area.y + 1));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn help_text_wraps_between_words() {
        assert_eq!(
            wrap("pause every job (no new chunk starts)", 16),
            ["pause every job", "(no new chunk", "starts)"]
        );
        assert_eq!(wrap("short", 16), ["short"]);
    }

    #[test]
    fn clock_shows_utc_time_of_day() {
        assert_eq!(clock(1_700_000_000_123), "22:13:20.123");
    }
}
