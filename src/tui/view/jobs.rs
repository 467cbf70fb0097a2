//! The jobs list: every job with its state, objects, bytes, rate and time left, and the most
//! recent messages under it.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Cell, Paragraph, Row, Table, TableState};

use super::{bar, duration, row_style, tail};
use crate::size::human;
use crate::tui::app::App;
use crate::tui::theme;

pub(super) fn draw(frame: &mut Frame, app: &App, area: Rect) {
    let notices_height = (app.notices.len() as u16).clamp(1, 6) + 2;
    let [table_area, notices_area] =
        Layout::vertical([Constraint::Min(3), Constraint::Length(notices_height)]).areas(area);

    let header = Row::new(
        [
            "JOB", "STATE", "OBJECTS", "BYTES", "PROGRESS", "RATE", "ETA", "ROUTE",
        ]
        .map(|h| Cell::from(h).style(theme::header())),
    );
    let rows = app.snapshot.jobs.iter().enumerate().map(|(i, job)| {
        let p = &job.progress;
        let objects = format!(
            "{}/{}{}",
            p.files_done + p.files_skipped,
            p.files_total,
            if p.files_failed > 0 {
                format!(" ({} failed)", p.files_failed)
            } else {
                String::new()
            }
        );
        let bytes = format!("{}/{}", human(p.bytes_done), human(p.bytes_total));
        let rate = if job.rate > 0.0 {
            format!("{}/s", human(job.rate as u64))
        } else {
            "-".into()
        };
        let eta = job.eta_secs.map(duration).unwrap_or_else(|| "-".into());
        let route = tail(&format!("{} → {}", job.source, job.destination), 70);
        Row::new(vec![
            Cell::from(job.id.to_string()),
            Cell::from(job.state.name()).style(theme::job_state(job.state)),
            Cell::from(objects),
            Cell::from(bytes),
            Cell::from(bar(p.bytes_done, p.bytes_total, 12)),
            Cell::from(rate),
            Cell::from(eta),
            Cell::from(route),
        ])
        .style(row_style(i == app.jobs_cursor))
    });
    let widths = [
        Constraint::Length(4),
        Constraint::Length(9),
        Constraint::Length(18),
        Constraint::Length(23),
        Constraint::Length(12),
        Constraint::Length(12),
        Constraint::Length(7),
        Constraint::Min(20),
    ];
    let title = Line::from(vec![
        Span::styled(" Jobs ", theme::title()),
        Span::styled("Enter", theme::key()),
        Span::raw(" open  "),
        Span::styled("p/r", theme::key()),
        Span::raw(" pause/resume  "),
        Span::styled("f", theme::key()),
        Span::raw(" retry failed  "),
        Span::styled("x", theme::key()),
        Span::raw(" cancel  "),
        Span::styled("b", theme::key()),
        Span::raw(" browse "),
    ]);
    let mut block = Block::bordered().title(title);
    let selected_error = app
        .snapshot
        .jobs
        .get(app.jobs_cursor)
        .and_then(|j| j.error.as_ref());
    if let Some(error) = selected_error {
        block = block.title_bottom(Span::styled(
            format!(" {} ", tail(error, 150)),
            theme::error(),
        ));
    }
    let table = Table::new(rows, widths).header(header).block(block);
    let mut state = TableState::default().with_selected(Some(app.jobs_cursor));
    frame.render_stateful_widget(table, table_area, &mut state);
    if app.snapshot.jobs.is_empty() {
        let inner = table_area.inner(ratatui::layout::Margin::new(2, 2));
        frame.render_widget(
            Paragraph::new("No jobs yet. Press b to browse a bucket and c to copy, or run `blobway copy SRC DST`.")
                .style(theme::dim()),
            inner,
        );
    }

    let lines: Vec<Line> = app
        .notices
        .iter()
        .rev()
        .take(notices_height as usize - 2)
        .map(|n| Line::from(n.as_str()))
        .collect();
    frame.render_widget(
        Paragraph::new(lines)
            .block(Block::bordered().title(Span::styled(" Messages ", theme::title()))),
        notices_area,
    );
}
