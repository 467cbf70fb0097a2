//! The browser: buckets or containers, then one level of prefixes and objects at a time, with
//! marks, a filter and sizes. Only the visible rows are drawn, so long listings stay smooth.

use ratatui::Frame;
use ratatui::layout::{Constraint, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Cell, Paragraph, Row, Table, TableState};

use super::{row_style, tail};
use crate::size::human;
use crate::tui::app::App;
use crate::tui::theme;

pub(super) fn draw(frame: &mut Frame, app: &App, area: Rect) {
    let b = &app.browser;
    let visible = b.visible();
    let mut title = vec![
        Span::styled(" Browse ", theme::title()),
        Span::raw(tail(&b.location, 60)),
        Span::raw(format!("  {} entries", visible.len())),
    ];
    if !b.filter.is_empty() {
        title.push(Span::styled(
            format!("  filter: {}", b.filter),
            theme::key(),
        ));
    }
    if !b.marked.is_empty() {
        title.push(Span::styled(
            format!("  {} marked", b.marked.len()),
            theme::key(),
        ));
    }
    if b.loading {
        title.push(Span::styled("  loading…", theme::dim()));
    }
    title.push(Span::raw(" "));
    let hints = Line::from(vec![
        Span::styled(" Enter", theme::key()),
        Span::raw(" open  "),
        Span::styled("Backspace", theme::key()),
        Span::raw(" up  "),
        Span::styled("Space", theme::key()),
        Span::raw(" mark  "),
        Span::styled("/", theme::key()),
        Span::raw(" filter  "),
        Span::styled("c", theme::key()),
        Span::raw(" copy  "),
        Span::styled("g", theme::key()),
        Span::raw(" go to "),
    ]);
    let block = Block::bordered()
        .title(Line::from(title))
        .title_bottom(hints);

    if let Some(error) = &b.error {
        frame.render_widget(
            Paragraph::new(format!(" {error}"))
                .style(theme::error())
                .block(block),
            area,
        );
        return;
    }
    // Only the rows that fit are built: the table sees a window around the cursor.
    let height = area.height.saturating_sub(3).max(1) as usize;
    let first = b.cursor.saturating_sub(height.saturating_sub(1));
    let rows = visible
        .iter()
        .enumerate()
        .skip(first)
        .take(height)
        .map(|(i, entry)| {
            let mark = if b.marked.contains(&entry.location) {
                "✓"
            } else {
                " "
            };
            let modified = entry
                .modified
                .and_then(|secs| time::OffsetDateTime::from_unix_timestamp(secs).ok())
                .map(|t| {
                    format!(
                        "{:04}-{:02}-{:02} {:02}:{:02}",
                        t.year(),
                        u8::from(t.month()),
                        t.day(),
                        t.hour(),
                        t.minute()
                    )
                })
                .unwrap_or_default();
            let name_style = if entry.is_dir() {
                theme::title()
            } else {
                ratatui::style::Style::new()
            };
            Row::new(vec![
                Cell::from(mark).style(theme::key()),
                Cell::from(entry.name.clone()).style(name_style),
                Cell::from(entry.size.map(human).unwrap_or_default()),
                Cell::from(modified),
            ])
            .style(row_style(i == b.cursor))
        });
    let header = Row::new(
        ["", "NAME", "SIZE", "MODIFIED (UTC)"].map(|h| Cell::from(h).style(theme::header())),
    );
    let widths = [
        Constraint::Length(1),
        Constraint::Min(20),
        Constraint::Length(11),
        Constraint::Length(16),
    ];
    let table = Table::new(rows, widths).header(header).block(block);
    let mut state = TableState::default().with_selected(Some(b.cursor - first));
    frame.render_stateful_widget(table, area, &mut state);
}
