//! The jobs list: every job with its state, objects, bytes, rate and time left, and the most
//! recent messages under it.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::Style;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Paragraph, TableState};

use super::columns::{self, Column, Cut, plain};
use super::{bar, duration, head, row_style};
use crate::size::human;
use crate::tui::app::App;
use crate::tui::theme;

/// The workers panel: each worker's state, heartbeat, chunks in flight and moved, bytes moved
/// and objects claimed, and why a quarantined one stepped aside.
fn draw_workers(frame: &mut Frame, app: &App, area: Rect) {
    let workers = &app.snapshot.workers;
    let column = |f: &dyn Fn(&crate::state::lease::WorkerRecord) -> (String, Style)| {
        workers.iter().map(f).collect::<Vec<_>>()
    };
    let columns = vec![
        Column::kept("WORKER", column(&|w| plain(w.name.clone()))),
        Column::kept(
            "STATE",
            column(&|w| {
                let style = match w.state.as_str() {
                    "running" => Style::default(),
                    "quarantined" => theme::error(),
                    _ => theme::dim(),
                };
                (w.state.clone(), style)
            }),
        ),
        Column::droppable(
            "HEARTBEAT",
            column(&|w| plain(format!("{:.0} s ago", w.heartbeat_age_s.max(0.0)))),
            3,
        ),
        Column::kept("IN FLIGHT", column(&|w| plain(w.in_flight.to_string()))),
        Column::kept("CHUNKS", column(&|w| plain(w.chunks_moved.to_string()))),
        Column::droppable(
            "BYTES",
            column(&|w| plain(human(u64::try_from(w.bytes_moved).unwrap_or(0)))),
            2,
        ),
        Column::droppable("CLAIMED", column(&|w| plain(w.claimed.to_string())), 4),
        Column::flexible(
            "HOST / WHY",
            column(&|w| plain(w.quarantine.clone().unwrap_or_else(|| w.host.clone()))),
            8,
        ),
    ];
    let styles: Vec<Style> = (0..workers.len()).map(|_| Style::default()).collect();
    let live = workers
        .iter()
        .filter(|w| w.state == "running" || w.state == "quarantined")
        .count();
    let title = Line::from(vec![Span::styled(
        format!(" Workers: {live} live of {} ", workers.len()),
        theme::title(),
    )]);
    let block = Block::bordered().title(title);
    let width = block.inner(area).width;
    frame.render_widget(columns::table(columns, &styles, width).block(block), area);
}

pub(super) fn draw(frame: &mut Frame, app: &App, area: Rect) {
    let notices_height = (app.notices.len() as u16).clamp(1, 6) + 2;
    // With a shared state, the workers of the migration between the jobs and the messages.
    let workers_height = match app.snapshot.workers.len() as u16 {
        0 => 0,
        n => n.min(6) + 3,
    };
    let [table_area, workers_area, notices_area] = Layout::vertical([
        Constraint::Min(3),
        Constraint::Length(workers_height),
        Constraint::Length(notices_height),
    ])
    .areas(area);
    if workers_height > 0 {
        draw_workers(frame, app, workers_area);
    }

    let jobs = &app.snapshot.jobs;
    let column = |f: &dyn Fn(&crate::engine::snapshot::JobView) -> (String, Style)| {
        jobs.iter().map(f).collect::<Vec<_>>()
    };
    let columns = vec![
        Column::kept("JOB", column(&|job| plain(job.id.to_string()))),
        Column::kept(
            "STATE",
            column(&|job| (job.phase().to_string(), theme::job_state(job.state))),
        ),
        Column::kept(
            "OBJECTS",
            column(&|job| {
                let p = &job.progress;
                let failed = match p.files_failed {
                    0 => String::new(),
                    n => format!(" ({n} failed)"),
                };
                plain(format!(
                    "{}/{}{failed}",
                    p.files_done + p.files_skipped,
                    p.files_total
                ))
            }),
        ),
        Column::droppable(
            "BYTES",
            column(&|job| {
                let p = &job.progress;
                plain(format!("{}/{}", human(p.bytes_done), human(p.bytes_total)))
            }),
            2,
        ),
        Column::droppable(
            "PROGRESS",
            column(&|job| plain(bar(job.progress.bytes_done, job.progress.bytes_total, 12))),
            5,
        ),
        Column::droppable(
            "RATE",
            column(&|job| {
                plain(if job.rate > 0.0 {
                    format!("{}/s", human(job.rate as u64))
                } else {
                    "-".into()
                })
            }),
            3,
        )
        .at_least(13),
        Column::droppable(
            "ETA",
            column(&|job| plain(job.eta_secs.map(duration).unwrap_or_else(|| "-".into()))),
            4,
        )
        .at_least(6),
        Column::flexible(
            "ROUTE",
            column(&|job| plain(format!("{} → {}", job.source, job.destination))),
            12,
        )
        .cut(Cut::Middle),
    ];
    let styles: Vec<Style> = (0..jobs.len())
        .map(|i| row_style(i == app.jobs_cursor))
        .collect();
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
            format!(
                " {} ",
                head(error, (table_area.width as usize).saturating_sub(4))
            ),
            theme::error(),
        ));
    }
    let width = block.inner(table_area).width;
    let table = columns::table(columns, &styles, width).block(block);
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
        .map(|n| {
            Line::from(vec![
                Span::styled(format!("{} ", n.at), theme::dim()),
                Span::raw(n.text.as_str()),
            ])
        })
        .collect();
    let mut block = Block::bordered().title(Span::styled(" Messages ", theme::title()));
    if let Some(decision) = &app.controller {
        // The controller's last word has a line of its own: it never pushes messages out.
        let room = (notices_area.width as usize).saturating_sub(14);
        block = block.title_bottom(Span::styled(
            format!(" {} {} ", decision.at, head(&decision.text, room)),
            theme::dim(),
        ));
    }
    // Long messages wrap (the newest first), rather than lose their end.
    frame.render_widget(
        Paragraph::new(lines)
            .wrap(ratatui::widgets::Wrap { trim: false })
            .block(block),
        notices_area,
    );
}
