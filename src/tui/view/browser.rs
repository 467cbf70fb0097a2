//! The browser: buckets or containers, then one level of prefixes and objects at a time, with
//! marks, a filter and sizes. Only the visible rows are drawn, so long listings stay smooth.

use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Paragraph, TableState};

use super::columns::{self, Column, plain};
use super::{row_style, tail};
use crate::size::human;
use crate::tui::app::App;
use crate::tui::app::counted;
use crate::tui::theme;

pub(super) fn draw(frame: &mut Frame, app: &App, area: Rect) {
    let b = &app.browser;
    let visible = b.visible();
    let mut title = vec![
        Span::styled(" Browse ", theme::title()),
        Span::raw(tail(&b.location, 60)),
        Span::raw(format!(
            "  {}",
            counted(visible.len() as u64, "entry", "entries")
        )),
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
    if let Some(anchor) = &b.anchor {
        let name = anchor.strip_prefix(&b.location).unwrap_or(anchor);
        title.push(Span::styled(
            format!("  range from {} (v marks)", tail(name, 24)),
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
        Span::styled("←", theme::key()),
        Span::raw(" up  "),
        Span::styled("Space", theme::key()),
        Span::raw(" mark  "),
        Span::styled("*", theme::key()),
        Span::raw(" all  "),
        Span::styled("v", theme::key()),
        Span::raw(" range  "),
        Span::styled("/", theme::key()),
        Span::raw(" filter  "),
        Span::styled("c", theme::key()),
        Span::raw(" copy  "),
        Span::styled("o", theme::key()),
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
    let window: Vec<(usize, &&crate::tui::app::Entry)> = visible
        .iter()
        .enumerate()
        .skip(first)
        .take(height)
        .collect();
    let columns = vec![
        Column::kept(
            " ",
            window
                .iter()
                .map(|(_, e)| {
                    let mark = if b.marked.contains(&e.location) {
                        "✓"
                    } else {
                        " "
                    };
                    (mark.to_string(), theme::key())
                })
                .collect(),
        ),
        Column::flexible(
            "NAME",
            window
                .iter()
                .map(|(_, e)| {
                    let style = if e.is_dir() {
                        theme::title()
                    } else {
                        ratatui::style::Style::new()
                    };
                    (e.name.clone(), style)
                })
                .collect(),
            12,
        ),
        Column::droppable(
            "SIZE",
            window
                .iter()
                .map(|(_, e)| plain(e.size.map(human).unwrap_or_default()))
                .collect(),
            1,
        ),
        Column::droppable(
            "MODIFIED (UTC)",
            window
                .iter()
                .map(|(_, e)| plain(e.modified.map(modified).unwrap_or_default()))
                .collect(),
            2,
        ),
    ];
    let styles: Vec<ratatui::style::Style> = window
        .iter()
        .map(|(i, _)| row_style(*i == b.cursor))
        .collect();
    let width = block.inner(area).width;
    let table = columns::table(columns, &styles, width).block(block);
    let mut state = TableState::default().with_selected(Some(b.cursor - first));
    frame.render_stateful_widget(table, area, &mut state);
}

/// Unix seconds as `2026-11-30 21:24` (UTC).
fn modified(secs: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(secs)
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
        .unwrap_or_default()
}
